#!/usr/bin/env python3
"""Independent reference for tests/prune_driver.rs: sequential OWL-Wanda on a GGUF LLaMA
model, in numpy float64, written from METHODS.md and the authors' code (locuslab/wanda
`prune_wanda`, luuyin/OWL `prune_wanda_outlier`), on the forward pass of llama_forward.py.

    prune_driver.py owl GGUF CALIB_IDS EVAL_IDS NSAMPLES SEQLEN SPARSITY HYPER_M LAMDA MASK_BLOCKS OUT_DIR

CALIB_IDS / EVAL_IDS: files of comma-separated token ids (the whole texts, tokenised).
Calibration: NSAMPLES consecutive windows of SEQLEN tokens from the start. Evaluation:
consecutive windows of SEQLEN tokens of EVAL_IDS (pass only the ones to score).

  1. Dense pass (OWL's first loop): per block, the inputs of its linears on the dense model;
     scaler_j = mean over windows of sum over tokens x_j^2; scores A = |W| sqrt(scaler);
     D_l = 100 * #{A > M mean(A)} / #A over the block's 7 linears flattened together
     (also per linear against its own mean, and for M = 1..10, the sweep). The dense
     perplexity on the evaluation windows is carried through the same loop.
  2. OWL allocation: d = (D - min) / (max - min) * 2 lambda; s_l = 1 - (d - mean d + 1 - S).
  3. Sequential Wanda for the first MASK_BLOCKS blocks: inputs through the already-pruned
     prefix; each row zeroes its int(cols s_l) lowest scores (stable argsort); the block's
     output is recomputed with the pruned weights. Masks go to OUT_DIR/mask_{i}_{role}.bin
     (np.packbits of the (rows, cols) boolean mask, row-major, True = pruned).
     (Not all blocks: f32 and f64 activations make near-tied scores fall differently from
     about block 10 on, and each difference moves every later block's statistics, so masks
     of late blocks and the pruned perplexity of two implementations legitimately diverge.)

    prune_driver.py export GGUF EXPORT EVAL_IDS SEQLEN

Reads an exported pruned model (safetensors, Hugging Face LLaMA names) with the
`safetensors` package: its names and shapes, its metadata, the zeros of every linear, the
largest difference between its non-zero linear weights, norms and embedding and the GGUF's
(q/k un-permuted: the export is in Hugging Face row order), and the perplexity of the
exported model on the evaluation windows, in float64 with this file's forward pass.

JSON on stdout. Run with .cache/venv/bin/python."""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_forward import Model, ends, lin, rms, rope  # noqa: E402

ROLES = ["q", "k", "v", "o", "gate", "up", "down"]
GGUF_NAMES = {
    "q": "attn_q",
    "k": "attn_k",
    "v": "attn_v",
    "o": "attn_output",
    "gate": "ffn_gate",
    "up": "ffn_up",
    "down": "ffn_down",
}


def load_block(m, i):
    p = f"blk.{i}."
    w = {
        "q": m.qk(p + "attn_q.weight", m.heads),
        "k": m.qk(p + "attn_k.weight", m.kv_heads),
    }
    for r in ["v", "o", "gate", "up", "down"]:
        w[r] = m.w(p + GGUF_NAMES[r] + ".weight")
    w["n1"], w["n2"] = m.w(p + "attn_norm.weight"), m.w(p + "ffn_norm.weight")
    return w


def block(m, w, xs, inputs=None):
    """xs: list of (T,C) windows -> outputs; the linears see every window's tokens at once
    (N = B T rows), attention runs per window. `inputs` (dict role -> list) collects the
    input of every distinct linear input, per window."""
    H, KV, D = m.heads, m.kv_heads, m.head_dim
    T = xs[0].shape[0]
    x = np.concatenate(xs)
    h = rms(x, w["n1"], m.eps)
    q, k, v = lin(h, w["q"]), lin(h, w["k"]), lin(h, w["v"])
    att = []
    for b in range(len(xs)):
        r = slice(b * T, (b + 1) * T)
        qb = q[r].reshape(T, H, D).transpose(1, 0, 2)
        kb = k[r].reshape(T, KV, D).transpose(1, 0, 2)
        vb = v[r].reshape(T, KV, D).transpose(1, 0, 2)
        qb, kb = rope(qb, m.theta), rope(kb, m.theta)
        kb = np.repeat(kb, H // KV, axis=0)
        vb = np.repeat(vb, H // KV, axis=0)
        s = qb @ kb.transpose(0, 2, 1) / np.sqrt(D)
        s = s + np.triu(np.full((T, T), -np.inf), 1)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        att.append((s @ vb).transpose(1, 0, 2).reshape(T, H * D))
    a = np.concatenate(att)
    x = x + lin(a, w["o"])
    h2 = rms(x, w["n2"], m.eps)
    g = lin(h2, w["gate"])
    mid = g / (1.0 + np.exp(-g)) * lin(h2, w["up"])
    x = x + lin(mid, w["down"])
    if inputs is not None:
        for role, inp in (("q", h), ("o", a), ("gate", h2), ("down", mid)):
            inputs.setdefault(role, []).extend(np.split(inp, len(xs)))
    return np.split(x, len(xs))


def group(role):
    return {"q": "q", "k": "q", "v": "q", "o": "o", "gate": "gate", "up": "gate"}.get(role, "down")


def scalers(inputs):
    """Wanda's scaler_row: mean over windows of the per-window sum of x_j^2."""
    return {g: np.mean([(x * x).sum(0) for x in xs], axis=0) for g, xs in inputs.items()}


def scores(w, sc, role):
    return np.abs(w[role]) * np.sqrt(sc[group(role)])[None, :]


def nll(m, x, win, norm, head):
    logits = rms(x, norm, m.eps) @ head.T
    mx = logits.max(-1, keepdims=True)
    lse = (mx[:, 0] + np.log(np.exp(logits - mx).sum(-1)))[:-1]
    return float((lse - logits[np.arange(len(win) - 1), win[1:]]).sum())


def owl(argv):
    path, calib_path, eval_path = argv[0:3]
    nsamples, seqlen = int(argv[3]), int(argv[4])
    sparsity, hyper_m, lamda = float(argv[5]), float(argv[6]), float(argv[7])
    mask_blocks, out_dir = int(argv[8]), argv[9]
    calib, ev = read_ids(calib_path), read_ids(eval_path)
    m = Model(path)
    embed, norm, head = ends(m)
    cal_w = [np.array(calib[w * seqlen : (w + 1) * seqlen]) for w in range(nsamples)]
    ev_w = [np.array(ev[w * seqlen : (w + 1) * seqlen]) for w in range(len(ev) // seqlen)]
    sweep_m = [float(k) for k in range(1, 11)]

    # 1. Dense pass, dense perplexity carried along.
    xs = [embed[w] for w in cal_w]
    ed = [embed[w] for w in ev_w]
    lod, lod_linear, sweep = [], [], []
    for i in range(m.layers):
        w = load_block(m, i)
        inputs = {}
        xs = block(m, w, xs, inputs)
        ed = block(m, w, ed)
        sc = scalers(inputs)
        a = [scores(w, sc, r).ravel() for r in ROLES]
        flat = np.concatenate(a)
        mean = flat.mean()
        lod.append(float((flat > hyper_m * mean).sum()) / flat.size * 100)
        lod_linear.append([float((x > hyper_m * x.mean()).sum()) / x.size * 100 for x in a])
        sweep.append([float((flat > k * mean).sum()) / flat.size * 100 for k in sweep_m])
    predicted = len(ev_w) * (seqlen - 1)
    dense = sum(nll(m, x, win, norm, head) for x, win in zip(ed, ev_w))

    # 2. OWL allocation.
    r = np.array(lod)
    r = (r - r.min()) * (1 / (r.max() - r.min()) * lamda * 2)
    r = r - np.mean(r) + (1 - sparsity)
    alloc = [float(1 - x) if 1 - x > 0 else 0.01 for x in r]

    # 3. Sequential Wanda on the first blocks.
    os.makedirs(out_dir, exist_ok=True)
    xs = [embed[w] for w in cal_w]
    for i in range(mask_blocks):
        w = load_block(m, i)
        inputs = {}
        block(m, w, xs, inputs)
        sc = scalers(inputs)
        for role in ROLES:
            s = scores(w, sc, role)
            k = int(s.shape[1] * alloc[i])
            idx = np.argsort(s, axis=1, kind="stable")[:, :k]
            mask = np.zeros_like(s, dtype=bool)
            np.put_along_axis(mask, idx, True, axis=1)
            w[role] = np.where(mask, 0.0, w[role])
            np.packbits(mask.ravel()).tofile(os.path.join(out_dir, f"mask_{i}_{role}.bin"))
        xs = block(m, w, xs)
    json.dump(
        {
            "lod": lod,
            "lod_linear": lod_linear,
            "sweep_m": sweep_m,
            "sweep": sweep,
            "allocation": alloc,
            "windows": len(ev_w),
            "predicted": predicted,
            "ppl_dense": float(np.exp(dense / predicted)),
        },
        sys.stdout,
    )


def export(argv):
    from safetensors import safe_open

    path, export_path, eval_path, seqlen = argv[0], argv[1], argv[2], int(argv[3])
    m = Model(path)
    ev = read_ids(eval_path)
    ev_w = [np.array(ev[w * seqlen : (w + 1) * seqlen]) for w in range(len(ev) // seqlen)]
    hf = {
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "up": "mlp.up_proj",
        "down": "mlp.down_proj",
    }
    with safe_open(export_path, framework="numpy") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    dtypes = sorted({str(a.dtype) for a in t.values()})
    embed = t["model.embed_tokens.weight"].astype(np.float64)
    norm = t["model.norm.weight"].astype(np.float64)
    head = t["lm_head.weight"].astype(np.float64) if "lm_head.weight" in t else embed
    gguf_embed, gguf_norm, _ = ends(m)
    max_diff = max(
        float(np.abs(embed - gguf_embed).max()), float(np.abs(norm - gguf_norm).max())
    )
    zeros = {}
    ed = [embed[w] for w in ev_w]
    for i in range(m.layers):
        p = f"model.layers.{i}."
        g = load_block(m, i)
        w = {"n1": t[p + "input_layernorm.weight"], "n2": t[p + "post_attention_layernorm.weight"]}
        max_diff = max(max_diff, float(np.abs(w["n1"] - g["n1"]).max()))
        max_diff = max(max_diff, float(np.abs(w["n2"] - g["n2"]).max()))
        for role, stem in hf.items():
            a = t[p + stem + ".weight"].astype(np.float64)
            nz = a != 0
            max_diff = max(max_diff, float(np.abs(a[nz] - g[role][nz]).max()))
            zeros[f"{p}{stem}.weight"] = int((~nz).sum())
            w[role] = a
        w = {k: v.astype(np.float64) for k, v in w.items()}
        ed = block(m, w, ed)
    predicted = len(ev_w) * (seqlen - 1)
    total = sum(nll(m, x, win, norm, head) for x, win in zip(ed, ev_w))
    json.dump(
        {
            "metadata": meta,
            "shapes": {k: list(a.shape) for k, a in t.items()},
            "dtypes": dtypes,
            "zeros": zeros,
            "max_diff_from_gguf": max_diff,
            "windows": len(ev_w),
            "perplexity": float(np.exp(total / predicted)),
        },
        sys.stdout,
    )


def read_ids(p):
    return [int(t) for t in open(p).read().split(",")]


def main():
    mode = sys.argv[1]
    if mode == "owl":
        owl(sys.argv[2:])
    elif mode == "export":
        export(sys.argv[2:])
    else:
        sys.exit(f"unknown mode {mode}: owl or export")


if __name__ == "__main__":
    main()
