"""Independent numpy reference for src/prune (tests/prune_reference.rs runs it).

Written from METHODS.md and the authors' code, not from the Rust: locuslab/wanda
`prune_wanda` (stable sort per row, first int(cols * s) indices; N:M per group of M),
luuyin/OWL `lib/prune_all.py` (`check_outlier_mean`, the allocation in `prune_wanda_outlier`
and `prune_wanda_outlier_structure`), IST-DASLab/sparsegpt `SparseGPT.fasterprune`
(here in float64, with numpy's Cholesky and inverse).

Inputs are float32 values drawn here (seeded) and written out with the expected results as
JSON on stdout; every float32 is exact in JSON's float64.
"""

import json
import sys

import numpy as np

rng = np.random.default_rng(20240611)


def f32(a):
    return np.asarray(a, dtype=np.float32)


def tolist(a):
    return np.asarray(a).astype(np.float64).ravel().tolist()


def weights(rows, cols, ties):
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    if ties:
        # Few distinct magnitudes, both signs: many exact ties in |W| and in scores.
        w = f32(np.round(w * 2) / 2)
    return w


def scaler_row(cols, ties):
    s = (rng.random(cols) * 4).astype(np.float32)
    if ties:
        s = f32(np.round(s))
        s[::7] = 1.0
    return s


# ---- Wanda -----------------------------------------------------------------------------
def wanda_scores(w, s):
    return np.abs(w) * np.sqrt(s).reshape(1, -1)  # float32, as torch does


def row_unstructured(scores, sparsity):
    rows, cols = scores.shape
    mask = np.zeros_like(scores, dtype=bool)
    k = int(cols * sparsity)
    idx = np.argsort(scores, axis=1, kind="stable")[:, :k]
    np.put_along_axis(mask, idx, True, axis=1)
    return mask


def row_nm(scores, n, m):
    rows, cols = scores.shape
    mask = np.zeros_like(scores, dtype=bool)
    for ii in range(0, cols, m):
        tmp = scores[:, ii : ii + m]
        idx = np.argsort(tmp, axis=1, kind="stable")[:, :n]
        np.put_along_axis(mask[:, ii : ii + m], idx, True, axis=1)
    return mask


def magnitude_unstructured(w, sparsity):
    # The lab's definition (METHODS.md + the brief): exactly int(numel * s) smallest |W|,
    # ties by flat index (the authors' code prunes |W| <= sort(|W|)[k], at least k + 1).
    a = np.abs(w).ravel()
    k = int(a.size * sparsity)
    mask = np.zeros(a.size, dtype=bool)
    mask[np.argsort(a, kind="stable")[:k]] = True
    return mask.reshape(w.shape)


# ---- OWL -------------------------------------------------------------------------------
def check_outlier_mean(scores_flat, threshold):
    mean = scores_flat.astype(np.float64).mean()
    return float((scores_flat.astype(np.float64) > mean * threshold).sum()) / scores_flat.size * 100


def owl_allocation(lod, s, lam):
    r = np.array(lod, dtype=np.float64)
    r = (r - r.min()) * (1 / (r.max() - r.min()) * lam * 2)
    r = r - np.mean(r) + (1 - s)
    out = []
    for x in r:
        sp = 1 - x
        if sp <= 0:
            sp = 0.01
        out.append(sp)
    return out


def owl_nm(lod, n, lam):
    r = np.array(lod, dtype=np.float64)
    r = (r - r.min()) * (1 / (r.max() - r.min()) * lam)
    r = r - np.mean(r)
    r = np.round(r)
    return [int(n - x) for x in r]


# ---- SparseGPT -------------------------------------------------------------------------
def sparsegpt(w, x, sparsity, prunen, prunem, blocksize, percdamp=0.01):
    W = w.astype(np.float64).copy()
    rows, cols = W.shape
    X = x.astype(np.float64)
    H = 2.0 / X.shape[0] * X.T @ X
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * np.mean(np.diag(H))
    H[np.arange(cols), np.arange(cols)] += damp
    L = np.linalg.cholesky(H)
    Hi = np.linalg.inv(L).T @ np.linalg.inv(L)  # cholesky_inverse
    Hinv = np.linalg.cholesky(Hi).T  # upper
    mask = np.zeros_like(W, dtype=bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1**2 / (np.diag(Hinv1).reshape((1, -1))) ** 2
            thresh = np.sort(tmp.ravel())[int(tmp.size * sparsity)]
            mask1 = tmp <= thresh
        else:
            mask1 = np.zeros_like(W1, dtype=bool)
        for i in range(count):
            w_ = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i : i + prunem] ** 2 / (np.diag(Hinv1)[i : i + prunem].reshape((1, -1))) ** 2
                idx = np.argsort(tmp, axis=1, kind="stable")[:, :prunen]
                np.put_along_axis(mask1[:, i : i + prunem], idx, True, axis=1)
            q = w_.copy()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w_ - q) / d
            W1[:, i:] -= np.outer(err1, Hinv1[i, i:])
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W, mask, H


def main():
    out = {"wanda": [], "magnitude": [], "outliers": [], "owl": [], "owl_nm": [], "sparsegpt": []}

    for rows, cols, ties, pattern in [
        (37, 64, True, {"sparsity": 0.5}),
        (37, 64, True, {"sparsity": 0.7}),
        (37, 64, False, {"sparsity": 0.0}),
        (37, 64, True, {"sparsity": 0.999}),
        (64, 130, True, {"sparsity": 0.5}),
        (64, 130, False, {"sparsity": 0.3}),
        (37, 64, True, {"n": 2, "m": 4}),
        (64, 136, True, {"n": 2, "m": 4}),
        (64, 136, True, {"n": 4, "m": 8}),
        (5, 1, False, {"sparsity": 0.5}),
    ]:
        w = weights(rows, cols, ties)
        s = scaler_row(cols, ties)
        sc = wanda_scores(w, s)
        mask = row_unstructured(sc, pattern["sparsity"]) if "sparsity" in pattern else row_nm(sc, pattern["n"], pattern["m"])
        out["wanda"].append({"rows": rows, "cols": cols, "w": tolist(w), "s": tolist(s), "pattern": pattern, "mask": mask.ravel().tolist()})

        if "sparsity" in pattern:
            mmask = magnitude_unstructured(w, pattern["sparsity"])
        else:
            mmask = row_nm(np.abs(w), pattern["n"], pattern["m"])
        out["magnitude"].append({"rows": rows, "cols": cols, "w": tolist(w), "pattern": pattern, "mask": mmask.ravel().tolist()})

    # One block of three linears (awkward sizes), ties included.
    shapes = [(37, 64), (64, 37), (20, 64)]
    lins = []
    for i, (r, c) in enumerate(shapes):
        lins.append((f"lin{i}", weights(r, c, i == 1), scaler_row(c, i == 1)))
    ms = [1.0, 3.0, 5.0, 6.0]
    flat = np.concatenate([wanda_scores(w, s).ravel() for _, w, s in lins])
    out["outliers"].append(
        {
            "linears": [{"name": n, "rows": w.shape[0], "cols": w.shape[1], "w": tolist(w), "s": tolist(s)} for n, w, s in lins],
            "ms": ms,
            "block": [check_outlier_mean(flat, m) for m in ms],
            "per_linear": [[check_outlier_mean(wanda_scores(w, s).ravel(), m) for _, w, s in lins] for m in ms],
        }
    )

    lod_random = (rng.random(12) * 10).tolist()
    for lod, s, lam in [
        (lod_random, 0.7, 0.08),
        (lod_random, 0.5, 0.2),
        ([3.0, 1.0, 7.5, 2.25, 7.5], 0.6, 0.08),
        (lod_random, 0.05, 0.08),  # clamp: S < 2 lambda - mean(d) for the top blocks
    ]:
        out["owl"].append({"lod": lod, "s": s, "lambda": lam, "sparsity": owl_allocation(lod, s, lam)})

    # README: 5:8, lambda = 2, Hyper_m = 6 -> N_l in {4, 5, 6}: a U-shaped LOD whose scaled
    # d spans [0, 2] with mean 1.
    readme_lod = [9.0, 5.0, 3.0, 1.0, 1.0, 3.0, 5.0, 9.0]
    for lod, n, m, lam in [(readme_lod, 5, 8, 2.0), (lod_random, 2, 4, 1.0), (lod_random, 4, 8, 3.0)]:
        out["owl_nm"].append({"lod": lod, "n": n, "m": m, "lambda": lam, "per_block": owl_nm(lod, n, lam)})

    for rows, cols, tokens, dead, pattern, bs in [
        (37, 70, 200, [3, 40], {"sparsity": 0.5}, 32),
        (64, 130, 300, [0, 129], {"sparsity": 0.6}, 128),
        (64, 130, 300, [], {"sparsity": 0.2}, 32),
        (64, 136, 300, [5], {"n": 2, "m": 4}, 32),
        (64, 136, 300, [7, 8], {"n": 4, "m": 8}, 128),
        (37, 64, 40, [], {"sparsity": 0.5}, 128),  # tokens < cols: H singular, damping saves it
    ]:
        w = weights(rows, cols, True)
        x = rng.standard_normal((tokens, cols)).astype(np.float32)
        x[:, dead] = 0
        sp = pattern.get("sparsity", 0.0)
        W, mask, H = sparsegpt(w, x, sp, pattern.get("n", 0), pattern.get("m", 0), bs)
        out["sparsegpt"].append(
            {"rows": rows, "cols": cols, "w": tolist(w), "x": tolist(x), "pattern": pattern, "blocksize": bs,
             "dead": dead, "w_out": tolist(W), "mask": mask.ravel().tolist()}
        )

    json.dump(out, sys.stdout)


main()
