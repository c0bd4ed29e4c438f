#!/usr/bin/env python3
"""Baseline for benches/stats.sh: the statistics `layerlab stats` computes, done with
llama.cpp's gguf-py (reading and dequantising) and numpy, the way a researcher would script
it. Per tensor: mean, std, mean |w|, max |w|, Pearson kurtosis, fraction of |w| above
k * mean |w|, and a 64-bin histogram over [min, max]; per block, the same over all the
block's linear weights pooled. Prints the number of tensors and blocks analysed.

    stats_numpy.py MODEL.gguf [k]
"""
import re
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

ANALYSABLE = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"}
LINEAR = re.compile(r"^blk\.(\d+)\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$")


def summary(w, k, bins=64):
    w = w.astype(np.float64, copy=False).ravel()
    a = np.abs(w)
    mean = w.mean()
    d = w - mean
    d2 = d * d
    var = d2.mean()
    m4 = (d2 * d2).mean()
    mean_abs = a.mean()
    hist, _ = np.histogram(w, bins=bins, range=(w.min(), w.max()))
    return {
        "mean": mean,
        "std": np.sqrt(var),
        "mean_abs": mean_abs,
        "max_abs": a.max(),
        "kurtosis": m4 / (var * var) if var > 0 else None,
        "outlier_fraction": (a > k * mean_abs).mean(),
        "histogram": hist,
    }


def main():
    path = sys.argv[1]
    k = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    reader = GGUFReader(path)
    tensors, blocks = {}, {}
    for t in reader.tensors:
        if t.tensor_type.name not in ANALYSABLE:
            continue
        w = dequantize(t.data, t.tensor_type)
        tensors[t.name] = summary(w, k)
        m = LINEAR.match(t.name)
        if m:
            blocks.setdefault(int(m.group(1)), []).append(w.ravel())
    pooled = {b: summary(np.concatenate(ws), k) for b, ws in blocks.items()}
    print(f"{len(tensors)} tensors, {len(pooled)} blocks")


if __name__ == "__main__":
    main()
