"""Independent PyTorch reference for the training lab (tests/train_reference.rs).

Written from ../shared/METHODS.md (Mix-LN) and Hugging Face LLaMA's definitions, not from the
Rust code: a LLaMA-style decoder whose first `post_blocks` blocks are Post-LN
(h = norm1(x + attn(x)); out = norm2(h + mlp(h))) and the rest Pre-LN
(h = x + attn(norm1(x)); out = h + mlp(norm2(h))), final RMSNorm always, eps 1e-6,
RoPE in HF's rotate_half form (theta 10000), causal SDPA with GQA (kv head j serves query
heads j*G..(j+1)*G-1, HF's repeat_kv), SwiGLU, tied or untied LM head, mean cross-entropy.
Runs in float64 so that its numbers are the reference for the lab's float32.

Usage: train_torch.py --jobs JOBS.json (a list of objects with the options below, as keys with
underscores; one process for several models, as importing torch is the slow part), or
       train_torch.py --init W.safetensors --batch G.safetensors --grads-out R.safetensors
         [--batches B.safetensors --losses-out L.json --lr LR --warmup F] <sizes>
- the loss and gradients of G's `tokens` (B, T+1) at W, written with the parameter names
  and the loss in the metadata;
- with --batches: Adam (torch.optim.Adam, betas 0.9/0.999, eps 1e-8, no weight decay) with
  the Mix-LN cosine schedule (10% of peak floor, linear warm-up) over B's `tokens`
  (steps, B, T+1) from W, and the per-step losses (before each update) as JSON.
"""

import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

torch.set_default_dtype(torch.float64)


def names(a):
    out = [("model.embed_tokens.weight", (a.vocab, a.width))]
    kvw = a.kv_heads * (a.width // a.heads)
    for i in range(a.layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (a.width,)),
            (p + "self_attn.q_proj.weight", (a.width, a.width)),
            (p + "self_attn.k_proj.weight", (kvw, a.width)),
            (p + "self_attn.v_proj.weight", (kvw, a.width)),
            (p + "self_attn.o_proj.weight", (a.width, a.width)),
            (p + "post_attention_layernorm.weight", (a.width,)),
            (p + "mlp.gate_proj.weight", (a.ffn, a.width)),
            (p + "mlp.up_proj.weight", (a.ffn, a.width)),
            (p + "mlp.down_proj.weight", (a.width, a.ffn)),
        ]
    out.append(("model.norm.weight", (a.width,)))
    if a.untied:
        out.append(("lm_head.weight", (a.vocab, a.width)))
    return out


def rms_norm(x, w, eps=1e-6):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope(x, t):
    # x: (B, heads, T, D)
    d = x.shape[-1]
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    freqs = torch.outer(torch.arange(t, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return x * emb.cos() + rotate_half(x) * emb.sin()


def attention(x, W, p, a):
    b, t, c = x.shape
    d = c // a.heads
    q = (x @ W[p + "self_attn.q_proj.weight"].T).view(b, t, a.heads, d).transpose(1, 2)
    k = (x @ W[p + "self_attn.k_proj.weight"].T).view(b, t, a.kv_heads, d).transpose(1, 2)
    v = (x @ W[p + "self_attn.v_proj.weight"].T).view(b, t, a.kv_heads, d).transpose(1, 2)
    q, k = rope(q, t), rope(k, t)
    g = a.heads // a.kv_heads
    k = k.repeat_interleave(g, dim=1)
    v = v.repeat_interleave(g, dim=1)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    y = y.transpose(1, 2).reshape(b, t, c)
    return y @ W[p + "self_attn.o_proj.weight"].T


def mlp(x, W, p):
    gate = x @ W[p + "mlp.gate_proj.weight"].T
    up = x @ W[p + "mlp.up_proj.weight"].T
    return (F.silu(gate) * up) @ W[p + "mlp.down_proj.weight"].T


def loss_of(W, tokens, a):
    inp, tgt = tokens[:, :-1], tokens[:, 1:]
    x = W["model.embed_tokens.weight"][inp]
    for i in range(a.layers):
        p = f"model.layers.{i}."
        n1, n2 = W[p + "input_layernorm.weight"], W[p + "post_attention_layernorm.weight"]
        if i < a.post_blocks:
            h = rms_norm(x + attention(x, W, p, a), n1)
            x = rms_norm(h + mlp(h, W, p), n2)
        else:
            h = x + attention(rms_norm(x, n1), W, p, a)
            x = h + mlp(rms_norm(h, n2), W, p)
    x = rms_norm(x, W["model.norm.weight"])
    head = W["lm_head.weight"] if a.untied else W["model.embed_tokens.weight"]
    logits = x @ head.T
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))


def load(path):
    return {k: v.to(torch.float64).requires_grad_(True) for k, v in load_file(path).items()}


def lr_at(step, steps, warmup, peak):
    w = int(math.floor(warmup * steps))
    if step < w:
        return peak * step / max(1, w)
    progress = (step - w) / max(1, steps - w)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def parse(argv):
    ap = argparse.ArgumentParser()
    for k in ["layers", "width", "heads", "kv_heads", "ffn", "vocab", "post_blocks"]:
        ap.add_argument("--" + k.replace("_", "-"), dest=k, type=int, required=True)
    ap.add_argument("--untied", action="store_true")
    ap.add_argument("--init", required=True)
    ap.add_argument("--batch", required=True)
    ap.add_argument("--grads-out", required=True)
    ap.add_argument("--batches")
    ap.add_argument("--losses-out")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=float, default=0.1)
    return ap.parse_args(argv)


def run(a):
    W = load(a.init)
    expected = dict(names(a))
    assert set(W) == set(expected), f"tensors {sorted(set(W) ^ set(expected))}"
    tokens = load_file(a.batch)["tokens"].long()
    loss = loss_of(W, tokens, a)
    loss.backward()
    grads = {k: v.grad.to(torch.float32).contiguous() for k, v in W.items()}
    save_file(grads, a.grads_out, metadata={"loss": repr(loss.item())})

    if a.batches:
        W = load(a.init)
        batches = load_file(a.batches)["tokens"].long()
        steps = batches.shape[0]
        opt = torch.optim.Adam(list(W.values()), lr=a.lr, betas=(0.9, 0.999), eps=1e-8)
        losses = []
        for s in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(s, steps, a.warmup, a.lr)
            opt.zero_grad()
            loss = loss_of(W, batches[s], a)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        with open(a.losses_out, "w") as f:
            json.dump({"losses": losses}, f)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--jobs":
        with open(sys.argv[2]) as f:
            jobs = json.load(f)
        for job in jobs:
            argv = []
            for k, v in job.items():
                flag = "--" + k.replace("_", "-")
                if v is True:
                    argv.append(flag)
                elif v is not False and v is not None:
                    argv += [flag, str(v)]
            run(parse(argv))
    else:
        run(parse(sys.argv[1:]))


if __name__ == "__main__":
    main()
