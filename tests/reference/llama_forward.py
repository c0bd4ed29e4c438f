#!/usr/bin/env python3
"""Independent reference for tests/llama_forward.rs: a LLaMA-family forward pass in numpy,
float64, on a GGUF file read and dequantised by gguf-py (llama.cpp's Python package).

The maths is Hugging Face transformers' LlamaForCausalLM, written out:
  x = embed[ids]; per block: x += o(attn(rope(q(n1(x))), rope(k(n1(x))), v(n1(x))));
  x += down(silu(gate(n2(x))) * up(n2(x))); logits = head(norm(x)); n(x) = x / sqrt(mean
  x^2 + eps) * w; causal grouped-query attention; RoPE half-split (rotate_half) with
  inv_freq = 1 / theta^(2i/D); the tied head is token_embd.
  GGUF "llama" q/k rows are un-permuted as transformers' GGUF loader does
  (reverse_permute_weights: reshape (heads, D/2, 2, in), swap axes 1 and 2).

    llama_forward.py logits GGUF IDS HIDDEN_AFTER OUT_DIR
        IDS comma-separated token ids (one window); writes OUT_DIR/logits.f32 (T,V) and
        OUT_DIR/hidden.f32 (T,C), the residual stream after block HIDDEN_AFTER (0-based),
        both raw little-endian float32 (computed in float64); JSON summary on stdout.
    llama_forward.py ppl GGUF TEXT SEQLEN MAX_WINDOWS
        Perplexity as METHODS.md says: tokenise TEXT once (tokenizer_ids.py's plain BPE,
        BOS only if tokenizer.ggml.add_bos_token), consecutive windows of SEQLEN tokens,
        remainder dropped, at most MAX_WINDOWS (0: all), each window alone; ppl =
        exp(sum NLL / predicted tokens), SEQLEN - 1 predicted per window. JSON on stdout.

Run with .cache/venv/bin/python (scripts/setup.sh: ensure_python_reference)."""

import json
import os
import sys

import numpy as np
import gguf
from gguf import GGUFReader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tokenizer_ids import PlainBpe, field  # noqa: E402


class Model:
    def __init__(self, path):
        self.r = GGUFReader(path)
        self.tensors = {t.name: t for t in self.r.tensors}
        arch = field(self.r, "general.architecture")
        self.arch = arch
        self.heads = int(field(self.r, f"{arch}.attention.head_count"))
        self.kv_heads = int(field(self.r, f"{arch}.attention.head_count_kv"))
        self.hidden = int(field(self.r, f"{arch}.embedding_length"))
        self.layers = int(field(self.r, f"{arch}.block_count"))
        self.eps = float(field(self.r, f"{arch}.attention.layer_norm_rms_epsilon"))
        theta = field(self.r, f"{arch}.rope.freq_base")
        self.theta = float(theta) if theta is not None else 10000.0
        self.head_dim = self.hidden // self.heads

    def w(self, name):
        t = self.tensors[name]
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        return np.asarray(a, dtype=np.float64).reshape([int(s) for s in reversed(t.shape)])

    def qk(self, name, n_head):
        w = self.w(name)
        if self.arch != "llama":
            return w
        dim = w.shape[0] // n_head // 2
        return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)

    def bias(self, name):
        return self.w(name) if name in self.tensors else None


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, theta):
    """x (heads, T, D) -> HF apply_rotary_pos_emb."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.arange(x.shape[1], dtype=np.float64)[:, None] * inv[None, :]
    emb = np.concatenate([ang, ang], -1)
    half = d // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * np.cos(emb) + rot * np.sin(emb)


def lin(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


def block(m, i, xs):
    """xs: list of (T,C) windows -> the same after block i (weights read once)."""
    p = f"blk.{i}."
    n1, n2 = m.w(p + "attn_norm.weight"), m.w(p + "ffn_norm.weight")
    wq, wk = m.qk(p + "attn_q.weight", m.heads), m.qk(p + "attn_k.weight", m.kv_heads)
    bq, bk = m.bias(p + "attn_q.bias"), m.bias(p + "attn_k.bias")
    if m.arch == "llama":
        assert bq is None and bk is None
    wv, bv = m.w(p + "attn_v.weight"), m.bias(p + "attn_v.bias")
    wo = m.w(p + "attn_output.weight")
    wg, wu, wd = m.w(p + "ffn_gate.weight"), m.w(p + "ffn_up.weight"), m.w(p + "ffn_down.weight")
    H, KV, D = m.heads, m.kv_heads, m.head_dim
    out = []
    for x in xs:
        T = x.shape[0]
        h = rms(x, n1, m.eps)
        q = lin(h, wq, bq).reshape(T, H, D).transpose(1, 0, 2)
        k = lin(h, wk, bk).reshape(T, KV, D).transpose(1, 0, 2)
        v = lin(h, wv, bv).reshape(T, KV, D).transpose(1, 0, 2)
        q, k = rope(q, m.theta), rope(k, m.theta)
        k = np.repeat(k, H // KV, axis=0)
        v = np.repeat(v, H // KV, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(D)
        s = s + np.triu(np.full((T, T), -np.inf), 1)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(T, H * D)
        x = x + lin(a, wo)
        h = rms(x, n2, m.eps)
        g = lin(h, wg)
        x = x + lin(g / (1.0 + np.exp(-g)) * lin(h, wu), wd)
        out.append(x)
    return out


def ends(m):
    embed = m.w("token_embd.weight")
    head = m.w("output.weight") if "output.weight" in m.tensors else embed
    return embed, m.w("output_norm.weight"), head


def cmd_logits(path, ids, hidden_after, out_dir):
    m = Model(path)
    embed, norm, head = ends(m)
    xs = [embed[np.array(ids)]]
    hidden = None
    for i in range(m.layers):
        xs = block(m, i, xs)
        if i == hidden_after:
            hidden = xs[0]
    logits = rms(xs[0], norm, m.eps) @ head.T
    os.makedirs(out_dir, exist_ok=True)
    logits.astype("<f4").tofile(os.path.join(out_dir, "logits.f32"))
    hidden.astype("<f4").tofile(os.path.join(out_dir, "hidden.f32"))
    json.dump(
        {
            "tokens": len(ids),
            "vocab": int(logits.shape[1]),
            "hidden": int(hidden.shape[1]),
            "argmax": [int(a) for a in logits.argmax(-1)],
            "max_abs_logit": float(np.abs(logits).max()),
        },
        sys.stdout,
    )


def cmd_ppl(path, text_path, seqlen, max_windows):
    m = Model(path)
    tokens = field(m.r, "tokenizer.ggml.tokens")
    types = field(m.r, "tokenizer.ggml.token_type")
    special = [t for t, k in zip(tokens, types) if k == 3]
    bpe = PlainBpe(tokens, field(m.r, "tokenizer.ggml.merges"), special)
    add_bos = bool(field(m.r, "tokenizer.ggml.add_bos_token") or False)
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    ids = ([field(m.r, "tokenizer.ggml.bos_token_id")] if add_bos else []) + bpe.encode(text)
    n = len(ids) // seqlen
    if max_windows > 0:
        n = min(n, max_windows)
    windows = [np.array(ids[w * seqlen : (w + 1) * seqlen]) for w in range(n)]
    embed, norm, head = ends(m)
    xs = [embed[w] for w in windows]
    for i in range(m.layers):
        xs = block(m, i, xs)
    nll = []
    for w, x in zip(windows, xs):
        logits = rms(x, norm, m.eps) @ head.T
        mx = logits.max(-1, keepdims=True)
        lse = (mx[:, 0] + np.log(np.exp(logits - mx).sum(-1)))[:-1]
        nll.append(float((lse - logits[np.arange(seqlen - 1), w[1:]]).sum()))
    total = sum(nll)
    predicted = n * (seqlen - 1)
    json.dump(
        {
            "tokens": len(ids),
            "add_bos": add_bos,
            "windows": n,
            "predicted": predicted,
            "nll": total,
            "window_nll": nll,
            "perplexity": float(np.exp(total / predicted)),
        },
        sys.stdout,
    )


def main():
    mode = sys.argv[1]
    if mode == "logits":
        path, ids, hidden_after, out_dir = sys.argv[2:6]
        cmd_logits(path, [int(i) for i in ids.split(",")], int(hidden_after), out_dir)
    elif mode == "ppl":
        path, text, seqlen, max_windows = sys.argv[2:6]
        cmd_ppl(path, text, int(seqlen), int(max_windows))
    else:
        sys.exit(f"unknown mode {mode}: logits or ppl")


if __name__ == "__main__":
    main()
