"""scipy.stats.weightedtau with its defaults on the cases tests/sebra_reference.rs writes.

Usage: sebra_tau.py CASES.json  ->  {"tau": [statistic or null (NaN), ...]} on stdout.
CASES.json: {"cases": [{"x": [...], "y": [...]}, ...]}; a null score stands for NaN.
"""
import json
import sys

import numpy as np
from scipy import stats


def scores(values):
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)["cases"]
    out = []
    for case in cases:
        tau = float(stats.weightedtau(scores(case["x"]), scores(case["y"])).statistic)
        out.append(None if np.isnan(tau) else tau)
    json.dump({"tau": out}, sys.stdout)


if __name__ == "__main__":
    main()
