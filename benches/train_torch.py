"""PyTorch eager baseline for benches/train.sh: the training lab's decoder (the same model as
tests/reference/train_torch.py, whose definitions it imports) in float32 on the CPU, trained
with torch.optim.Adam on random batches of the same shape, on the same number of threads.
Prints the training tokens per second of STEPS steps after WARMUP untimed ones.

Usage: train_torch.py --layers L --width C --heads H --kv-heads KV --ffn F --vocab V
         --post-blocks P --ctx T --batch B --steps STEPS [--warmup-steps 2] [--threads N]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "reference"))
import torch  # noqa: E402
import train_torch as ref  # noqa: E402

torch.set_default_dtype(torch.float32)
_tables = {}


def rope32(x, t):
    # The reference builds its tables in float64 (it is the float64 oracle); here they are
    # float32 and cached, as any float32 trainer would have them.
    d = x.shape[-1]
    if (t, d) not in _tables:
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        f = torch.outer(torch.arange(t, dtype=torch.float64), inv)
        emb = torch.cat((f, f), dim=-1)
        _tables[(t, d)] = (emb.cos().float(), emb.sin().float())
    cos, sin = _tables[(t, d)]
    return x * cos + ref.rotate_half(x) * sin


ref.rope = rope32


def main():
    ap = argparse.ArgumentParser()
    for k in ["layers", "width", "heads", "kv_heads", "ffn", "vocab", "post_blocks", "ctx",
              "batch", "steps"]:
        ap.add_argument("--" + k.replace("_", "-"), dest=k, type=int, required=True)
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    a.untied = True
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    W = {}
    for name, shape in ref.names(a):
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            W[name] = torch.ones(shape)
        elif name == "model.embed_tokens.weight":
            W[name] = torch.randn(shape, generator=g) * (2 / 5) ** 0.5
        else:
            W[name] = torch.randn(shape, generator=g) * 0.02
        W[name].requires_grad_(True)
    opt = torch.optim.Adam(list(W.values()), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    batches = torch.randint(0, a.vocab, (a.warmup_steps + a.steps, a.batch, a.ctx + 1), generator=g)
    losses = []
    for s in range(a.warmup_steps + a.steps):
        if s == a.warmup_steps:
            t0 = time.perf_counter()
        opt.zero_grad()
        loss = ref.loss_of(W, batches[s], a)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    dt = time.perf_counter() - t0
    print(json.dumps({"tokens_per_s": a.steps * a.batch * a.ctx / dt, "seconds": dt,
                      "threads": a.threads, "first_loss": losses[0],
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
