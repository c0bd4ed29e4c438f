#!/usr/bin/env python3
"""Independent reference for tests/gpt2_opt_forward.rs: GPT-2 and OPT forward passes in
numpy, float64, on a Hugging Face safetensors file (read by the `safetensors` package) and
its config.json, with the maths of transformers' modeling_gpt2.py / modeling_opt.py:

  GPT-2: x = wte[ids] + wpe[t]; per block: h = ln_1(x); qkv = h @ c_attn.W + b (Conv1D:
         W is (in, out)); x += c_proj(attn(q, k, v)) with scores q k^T / sqrt(D);
         x += mlp.c_proj(gelu_new(c_fc(ln_2(x)))); logits = ln_f(x) @ wte^T.
  OPT:   x = embed_tokens[ids] + embed_positions[t + 2]; per block (do_layer_norm_before):
         h = self_attn_layer_norm(x); q = (h Wq^T + bq) * D^-0.5, k, v likewise;
         x += out_proj(softmax(q k^T + causal) v); x += fc2(relu(fc1(final_layer_norm(x))));
         logits = final_layer_norm(x) @ (lm_head or embed_tokens)^T.
  LayerNorm: (x - mean) / sqrt(var + eps) * w + b (biased var); GPT-2 eps from
  layer_norm_epsilon, OPT 1e-5. gelu_new = 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))).

The family is told by the tensor names (wte / decoder.embed_tokens), with or without the
`transformer.` / `model.` prefix, so the same code reruns LayerLab's export.

    gpt2_opt_forward.py forward MODEL.safetensors CONFIG.json IDS
        IDS comma-separated (one window). JSON: logits (T,V) and, per block, the input
        (T, in) of each distinct linear input, keyed by role ("c_attn", "q", ...).
    gpt2_opt_forward.py ppl MODEL.safetensors CONFIG.json IDS SEQLEN
        Consecutive windows of SEQLEN of IDS, remainder dropped, each alone; JSON: ppl,
        nll per window, predicted tokens.
    gpt2_opt_forward.py tensors MODEL.safetensors
        JSON: every tensor's name and shape, the metadata, and per linear weight the count
        of exact zeros per output (GPT-2 Conv1D: per column of (in, out); else per row).

Run with .cache/venv/bin/python."""

import json
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file


def layer_norm(x, w, b, eps):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def attention(q, k, v, heads, scale_scores):
    """q, k, v (T, C) -> (T, C); causal; scores scaled by 1/sqrt(D) when scale_scores."""
    t, c = q.shape
    d = c // heads
    split = lambda y: y.reshape(t, heads, d).transpose(1, 0, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    s = q @ k.transpose(0, 2, 1)
    if scale_scores:
        s = s / np.sqrt(d)
    s = s + np.triu(np.full((t, t), -np.inf), 1)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p = p / p.sum(-1, keepdims=True)
    return (p @ v).transpose(1, 0, 2).reshape(t, c)


class Model:
    def __init__(self, path, config_path):
        self.w = {k: v.astype(np.float64) for k, v in load_file(path).items()}
        with open(config_path) as f:
            self.c = json.load(f)
        names = self.w.keys()
        if any(n.endswith("wte.weight") for n in names):
            self.family = "gpt2"
            self.pre = "transformer." if "transformer.wte.weight" in names else ""
            self.heads = self.c["n_head"]
            self.layers = self.c["n_layer"]
            self.eps = self.c.get("layer_norm_epsilon", 1e-5)
        else:
            self.family = "opt"
            self.pre = "model.decoder." if "model.decoder.embed_tokens.weight" in names else "decoder."
            self.heads = self.c["num_attention_heads"]
            self.layers = self.c["num_hidden_layers"]
            self.eps = 1e-5

    def g(self, name):
        return self.w[self.pre + name]

    def forward(self, ids, record=None):
        t = len(ids)
        if self.family == "gpt2":
            x = self.g("wte.weight")[ids] + self.g("wpe.weight")[:t]
        else:
            x = self.g("embed_tokens.weight")[ids] + self.g("embed_positions.weight")[2 : t + 2]
        for i in range(self.layers):
            rec = {} if record is not None else None
            x = self.block(i, x, rec)
            if record is not None:
                record.append(rec)
        if self.family == "gpt2":
            h = layer_norm(x, self.g("ln_f.weight"), self.g("ln_f.bias"), self.eps)
            head = self.g("wte.weight")
        else:
            h = layer_norm(x, self.g("final_layer_norm.weight"), self.g("final_layer_norm.bias"), self.eps)
            head = self.w["lm_head.weight"] if "lm_head.weight" in self.w else self.g("embed_tokens.weight")
        return h @ head.T

    def block(self, i, x, rec):
        def keep(role, y):
            if rec is not None:
                rec[role] = y.tolist()

        if self.family == "gpt2":
            p = f"h.{i}."
            conv = lambda n, y: y @ self.g(p + n + ".weight") + self.g(p + n + ".bias")  # noqa: E731
            h = layer_norm(x, self.g(p + "ln_1.weight"), self.g(p + "ln_1.bias"), self.eps)
            keep("c_attn", h)
            q, k, v = np.split(conv("attn.c_attn", h), 3, axis=-1)
            a = attention(q, k, v, self.heads, True)
            keep("c_proj", a)
            x = x + conv("attn.c_proj", a)
            h = layer_norm(x, self.g(p + "ln_2.weight"), self.g(p + "ln_2.bias"), self.eps)
            keep("c_fc", h)
            m = gelu_new(conv("mlp.c_fc", h))
            keep("mlp_c_proj", m)
            return x + conv("mlp.c_proj", m)
        p = f"layers.{i}."
        lin = lambda n, y: y @ self.g(p + n + ".weight").T + self.g(p + n + ".bias")  # noqa: E731
        h = layer_norm(x, self.g(p + "self_attn_layer_norm.weight"), self.g(p + "self_attn_layer_norm.bias"), self.eps)
        keep("q", h)
        d = x.shape[1] // self.heads
        q = lin("self_attn.q_proj", h) * d**-0.5
        k = lin("self_attn.k_proj", h)
        v = lin("self_attn.v_proj", h)
        a = attention(q, k, v, self.heads, False)
        keep("out", a)
        x = x + lin("self_attn.out_proj", a)
        h = layer_norm(x, self.g(p + "final_layer_norm.weight"), self.g(p + "final_layer_norm.bias"), self.eps)
        keep("fc1", h)
        m = np.maximum(lin("fc1", h), 0.0)
        keep("fc2", m)
        return x + lin("fc2", m)


def nll(logits, ids):
    z = logits[:-1]
    m = z.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[:, 0]
    return float((lse - z[np.arange(len(ids) - 1), ids[1:]]).sum())


def main():
    cmd = sys.argv[1]
    if cmd == "forward":
        model = Model(sys.argv[2], sys.argv[3])
        ids = [int(s) for s in sys.argv[4].split(",")]
        record = []
        logits = model.forward(ids, record)
        print(json.dumps({"family": model.family, "logits": logits.tolist(), "inputs": record}))
    elif cmd == "ppl":
        model = Model(sys.argv[2], sys.argv[3])
        ids = [int(s) for s in sys.argv[4].split(",")]
        seqlen = int(sys.argv[5])
        wins = [ids[w * seqlen : (w + 1) * seqlen] for w in range(len(ids) // seqlen)]
        window_nll = [nll(model.forward(w), np.array(w)) for w in wins]
        predicted = len(wins) * (seqlen - 1)
        print(json.dumps({
            "ppl": float(np.exp(sum(window_nll) / predicted)),
            "window_nll": window_nll,
            "predicted_tokens": predicted,
        }))
    elif cmd == "tensors":
        path = sys.argv[2]
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata()
        w = load_file(path)
        zeros = {}
        for name, t in w.items():
            if t.ndim != 2 or not name.endswith(".weight") or "embed" in name or name.endswith(("wte.weight", "wpe.weight", "lm_head.weight")):
                continue
            conv1d = ".attn.c_" in name or ".mlp.c_" in name
            per_output = (t == 0).sum(axis=0) if conv1d else (t == 0).sum(axis=1)
            zeros[name] = [int(z) for z in per_output]
        print(json.dumps({
            "shapes": {k: list(v.shape) for k, v in w.items()},
            "dtypes": sorted({str(v.dtype) for v in w.values()}),
            "metadata": meta,
            "zeros_per_output": zeros,
        }))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
