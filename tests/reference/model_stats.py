#!/usr/bin/env python3
"""Independent reference for tests/model_reference.rs: per-tensor weight statistics of a
real model file, read and dequantised by gguf-py (llama.cpp's own Python package) or
safetensors' numpy loader, computed by numpy in float64.

    model_stats.py gguf PATH | model_stats.py safetensors PATH   -> JSON on stdout

For every tensor LayerLab can analyse (F32, F16, BF16 and the dequantised GGUF quants):
name, dtype, shape (row-major, outermost first), count, mean, std (population), mean_abs,
max_abs, kurtosis = E[(w - mean)^4] / var^2, outlier_count / outlier_fraction of
|w| > 5 * mean|w|, samples (index, value) at 16 evenly spaced positions, and outliers_near: how many |w| lie within a relative 1e-5 of that
threshold (where f32 and f64 arithmetic may decide differently).
Run with .cache/venv/bin/python (scripts/setup.sh: ensure_python_reference)."""

import json
import sys

import numpy as np

OUTLIER_K = 5.0
ANALYSABLE_GGUF = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"}


def stats(name, dtype, w):
    w = np.asarray(w, dtype=np.float64)
    a = np.abs(w)
    mean = w.mean()
    mean_abs = a.mean()
    d = w - mean
    var = (d * d).mean()
    m4 = (d ** 4).mean()
    thr = OUTLIER_K * mean_abs
    out = int((a > thr).sum())
    return {
        "name": name,
        "dtype": dtype,
        "shape": [int(s) for s in w.shape],
        "count": int(w.size),
        "mean": float(mean),
        "std": float(np.sqrt(var)),
        "mean_abs": float(mean_abs),
        "max_abs": float(a.max()) if w.size else 0.0,
        "kurtosis": float(m4 / var ** 2) if var > 0 else None,
        "outlier_count": out,
        "outlier_fraction": out / w.size if w.size else 0.0,
        "outliers_near": int((np.abs(a - thr) <= 1e-5 * thr).sum()),
        # 16 values at evenly spaced row-major positions: checks layout and dequantisation
        # value by value, not only in aggregate.
        "samples": [[int(i), float(w.flat[i])] for i in sorted({k * w.size // 16 for k in range(16)})] if w.size else [],
    }


def gguf_stats(path):
    import gguf

    reader = gguf.GGUFReader(path)
    out = []
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind not in ANALYSABLE_GGUF:
            continue
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        # gguf-py's shape is innermost first; the row-major shape is its reverse.
        w = np.asarray(w).reshape([int(s) for s in reversed(t.shape)])
        out.append(stats(t.name, kind, w))
    return out


def safetensors_stats(path):
    from safetensors.numpy import load_file

    out = []
    for name, w in load_file(path).items():
        kind = {np.dtype("float32"): "F32", np.dtype("float16"): "F16"}.get(w.dtype)
        if kind is None:
            continue  # bf16 has no numpy dtype; integer tensors are not analysed
        out.append(stats(name, kind, w))
    return out


def main():
    kind, path = sys.argv[1], sys.argv[2]
    tensors = gguf_stats(path) if kind == "gguf" else safetensors_stats(path)
    json.dump({"file": path, "tensors": tensors}, sys.stdout)


if __name__ == "__main__":
    main()
