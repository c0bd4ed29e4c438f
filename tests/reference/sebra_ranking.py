"""Sebra's ranking bookkeeping in numpy, written from ../shared/METHODS.md (Sebra) and the
authors' code (urbancars_trainers/sebra.py `update_rank`, dataset/urbancars.py
`__getitem__`), independently of src/sebra/ranking.rs, for tests/sebra_reference.rs.

Usage: sebra_ranking.py CASE.json -> JSON on stdout.
CASE.json: {"labels": [N], "groups": [N] (0..3), "classes": K, "p": [[N] per epoch]
            (p_{i,y_i} after each epoch, f32 values), "p_critical": float, "cap": int,
            "gap": int}
Output: {"epochs_run": E, "weights": [[N] after each epoch], "ranks": [N],
         "counts": [[[4] per class] per epoch], "max_rank": R,
         "positive_rank": [N] (null = anchor skipped)}
"""
import json
import sys

import numpy as np


def stage1(labels, groups, classes, p, p_critical, cap):
    n = len(labels)
    weights = np.ones(n, dtype=np.int64)
    rank = np.full(n, -1, dtype=np.int64)
    history, counts = [], []
    epoch = 0
    # The authors loop over epochs 1..cap; an epoch with no sample of weight 1 cannot draw a
    # batch (torch's sampler raises), which ends the loop.
    while epoch < cap and weights.sum() > 0:
        epoch += 1
        # torch compares the f32 probabilities with the float cast to f32.
        above = p[epoch - 1].astype(np.float32) > np.float32(p_critical)
        leaving = (weights == 1) & above
        weights = np.clip(weights - above.astype(np.int64), 0, 1)
        rank[leaving] = epoch
        history.append(weights.tolist())
        per_class = np.zeros((classes, 4), dtype=np.int64)
        np.add.at(per_class, (labels[leaving], groups[leaving]), 1)
        counts.append(per_class.tolist())
    # Never deselected: ranked last, one past the last epoch run.
    rank[rank == -1] = epoch + 1
    return epoch, history, rank, counts


def positive_ranks(labels, rank, gap):
    # The authors' table has, for every class, a key per rank present anywhere in the
    # training set; max_rank is its largest key.
    max_rank = int(rank.max())
    out = []
    for i in range(len(labels)):
        c, r = labels[i], rank[i]
        target = min(r + gap, max_rank)
        found = None
        for candidate in range(target, max_rank + 1):
            if np.any((labels == c) & (rank == candidate)):
                found = candidate
                break
        out.append(found)
    return max_rank, out


def main():
    with open(sys.argv[1]) as f:
        case = json.load(f)
    labels = np.asarray(case["labels"], dtype=np.int64)
    groups = np.asarray(case["groups"], dtype=np.int64)
    p = np.asarray(case["p"], dtype=np.float64)
    epochs, history, rank, counts = stage1(
        labels, groups, case["classes"], p, case["p_critical"], case["cap"]
    )
    max_rank, positive = positive_ranks(labels, rank, case["gap"])
    json.dump(
        {
            "epochs_run": epochs,
            "weights": history,
            "ranks": rank.tolist(),
            "counts": counts,
            "max_rank": max_rank,
            "positive_rank": positive,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
