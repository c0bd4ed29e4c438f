#!/usr/bin/env python3
"""Baseline for benches/prune.sh: OWL-Wanda on a LLaMA-family GGUF model with PyTorch +
transformers on the CPU in float32, written the way the authors' code does it (luuyin/OWL
lib/prune_all.py `prune_wanda_outlier`, locuslab/wanda lib/layerwrapper.py `WrappedGPT`),
on the experiment `layerlab prune` runs (METHODS.md):

    model      LlamaForCausalLM.from_pretrained(dir, gguf_file=...) (the gguf package
               dequantises to float32; q/k rows un-permuted by transformers), tokenizer from
               the same GGUF
    windows    NSAMPLES consecutive windows of SEQLEN tokens from the start of CALIB
    dense pass per block: forward hooks on every nn.Linear accumulate scaler_row (Wanda's
               running mean of ||x_j||^2 over windows); D_l = % of the block's Wanda scores
               |W| sqrt(scaler_row), all 7 linears flattened together, above M x their mean
    allocation d = (D - min D) / (max D - min D) 2 lambda; density_l = d_l - mean d + 1 - S
    prune pass per block, inputs through the already-pruned prefix: hooks again, then each
               row zeroes its int(cols s_l) lowest scores (stable sort), then the block's
               output is recomputed with the pruned weights
    evaluate   perplexity on EVAL: consecutive SEQLEN-token windows, each alone,
               exp(total NLL / predicted tokens), before and after pruning

Differences from the authors' scripts, none of which changes a number: windows go through a
block BATCH at a time as in the CLI (the authors' loop runs one window at a time; the
running mean of scaler_row counts windows either way); the dense pass runs each block once
(the authors' code runs the same dense forward twice); the perplexity divides by the
predicted tokens, SEQLEN - 1 per window (the authors' eval divides by SEQLEN).

Prints the perplexities and seconds per stage; writes a JSON summary with --json. With
--compare CLI_JSON (what `layerlab prune --json` wrote for the same experiment) it also
prints how far the two agree.

    prune_torch.py MODEL.gguf --calib CALIB --eval EVAL [--sparsity 0.7] [--hyper-m 5]
        [--lamda 0.08] [--nsamples 16] [--seqlen 256] [--batch 8] [--json OUT] [--compare CLI_JSON]

Run with .cache/venv-torch/bin/python (benches/prune.sh installs it).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from gguf import GGUFReader
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, LlamaForCausalLM


class WrappedLinear:
    """Wanda's WrappedGPT: the running mean over windows of ||x_j||^2 for one nn.Linear's
    input columns j. add_batch sees (B, T, C) inputs, B windows at a time."""

    def __init__(self, layer):
        self.layer = layer
        self.scaler_row = torch.zeros(layer.weight.shape[1], dtype=torch.float32, device=layer.weight.device)
        self.nsamples = 0

    def add_batch(self, inp):
        windows = inp.shape[0] if inp.dim() == 3 else 1
        inp = inp.reshape(-1, inp.shape[-1]).t().float()  # (C, B T)
        self.scaler_row *= self.nsamples / (self.nsamples + windows)
        self.nsamples += windows
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples


def gguf_pre_tokenizer(path):
    """The pre-tokenizer the GGUF names (tokenizer.ggml.pre), or None."""
    field = GGUFReader(path).fields.get("tokenizer.ggml.pre")
    return bytes(field.parts[field.data[0]]).decode() if field else None


def load_tokenizer(folder, name):
    """The GGUF's tokenizer through transformers. transformers' GGUF converter gives every
    gpt2-BPE model plain ByteLevel pre-tokenization and ignores tokenizer.ggml.pre; for
    SmolLM ("smollm": digits one by one, then ByteLevel, as SmolLM2's tokenizer.json and
    llama.cpp do) that yields 5885 tokens of LGPL-2.1 instead of 5865, so set it here."""
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    pre = gguf_pre_tokenizer(os.path.join(folder, name))
    if pre == "smollm":
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        )
    elif pre not in (None, "default", "gpt-2"):
        print(f"warning: tokenizer.ggml.pre = {pre!r}: transformers' ByteLevel default is used", file=sys.stderr)
    return tokenizer


def find_linears(block):
    """name -> nn.Linear inside one decoder block (q,k,v,o,gate,up,down for LLaMA)."""
    return {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}


def block_stats(block, xs, run_block):
    """Runs every batch of xs through `block` with hooks on its linears; returns
    (name -> WrappedLinear, the block's outputs)."""
    linears = find_linears(block)
    wrapped = {n: WrappedLinear(m) for n, m in linears.items()}
    handles = [
        m.register_forward_hook(lambda _m, inp, _out, w=wrapped[n]: w.add_batch(inp[0].data))
        for n, m in linears.items()
    ]
    outs = [run_block(block, x) for x in xs]
    for h in handles:
        h.remove()
    return wrapped, outs


def wanda_scores(linears, wrapped):
    """name -> |W| sqrt(scaler_row), (rows, cols)."""
    return {
        n: torch.abs(m.weight.data) * torch.sqrt(wrapped[n].scaler_row.reshape(1, -1))
        for n, m in linears.items()
    }


def outlier_ratio(scores, hyper_m):
    """OWL's check_outlier_mean on the block's scores flattened together: the percentage
    above M x their mean."""
    flat = torch.cat([s.flatten() for s in scores])
    return float((flat > flat.mean() * hyper_m).sum().item()) / flat.numel() * 100


def owl_allocation(ratios, sparsity, lamda):
    """Block sparsities from the outlier ratios D_l (METHODS.md OWL step 2)."""
    d = np.array(ratios)
    d = (d - d.min()) * (1 / (d.max() - d.min()) * lamda * 2)
    density = d - np.mean(d) + (1 - sparsity)
    return [s if s > 0 else 0.01 for s in (1 - density)]


@torch.no_grad()
def perplexity(model, ids, seqlen, batch, device):
    """exp(total NLL / predicted tokens) over consecutive seqlen-token windows, each alone."""
    windows = len(ids) // seqlen
    enc = torch.tensor(ids[: windows * seqlen], dtype=torch.long, device=device).reshape(windows, seqlen)
    nll = 0.0
    for i in range(0, windows, batch):
        x = enc[i : i + batch]
        logits = model(x).logits  # (B, T, V)
        loss = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1), reduction="sum"
        )
        nll += loss.item()
    predicted = windows * (seqlen - 1)
    return math.exp(nll / predicted), windows, predicted


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--calib", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--hyper-m", type=float, default=5.0)
    ap.add_argument("--lamda", type=float, default=0.08)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda where torch has a GPU (same steps, float32)")
    ap.add_argument("--json")
    ap.add_argument("--compare")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    times = {}
    started = time.perf_counter()

    # Model and tokenizer from the GGUF (transformers dequantises with the gguf package).
    t = time.perf_counter()
    folder, name = os.path.split(os.path.abspath(args.model))
    tokenizer = load_tokenizer(folder, name)
    model = LlamaForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, attn_implementation="sdpa")
    model.to(args.device).eval()
    model.config.use_cache = False
    times["load"] = time.perf_counter() - t

    t = time.perf_counter()
    calib_ids = tokenizer(open(args.calib, encoding="utf-8").read(), add_special_tokens=False)["input_ids"]
    eval_ids = tokenizer(open(args.eval, encoding="utf-8").read(), add_special_tokens=False)["input_ids"]
    need = args.nsamples * args.seqlen
    if len(calib_ids) < need:
        sys.exit(f"{args.calib}: {len(calib_ids)} tokens; {args.nsamples} windows of {args.seqlen} need {need}")
    windows = torch.tensor(calib_ids[:need], dtype=torch.long, device=args.device).reshape(args.nsamples, args.seqlen)
    times["tokenise"] = time.perf_counter() - t

    t = time.perf_counter()
    ppl_dense, eval_windows, predicted = perplexity(model, eval_ids, args.seqlen, args.batch, args.device)
    times["perplexity_dense"] = time.perf_counter() - t

    # The decoder blocks are called one at a time, as prepare_calibration_input's Catcher
    # sets up: the embeddings of the windows, and RoPE's (cos, sin) for positions 0..T-1.
    # attention_mask=None makes the SDPA attention causal.
    inner = model.model
    positions = torch.arange(args.seqlen, device=args.device).unsqueeze(0)
    rope = inner.rotary_emb(inner.embed_tokens(windows[:1]), positions)

    def run_block(block, x):
        out = block(x, attention_mask=None, position_ids=positions, position_embeddings=rope)
        return out[0] if isinstance(out, tuple) else out

    def embedded():
        return [inner.embed_tokens(windows[i : i + args.batch]) for i in range(0, args.nsamples, args.batch)]

    # Dense pass: the outlier ratio D_l of every block on the dense model.
    t = time.perf_counter()
    xs = embedded()
    ratios = []
    for block in inner.layers:
        wrapped, xs = block_stats(block, xs, run_block)
        ratios.append(outlier_ratio(wanda_scores(find_linears(block), wrapped).values(), args.hyper_m))
    times["dense_pass"] = time.perf_counter() - t

    block_sparsity = owl_allocation(ratios, args.sparsity, args.lamda)

    # Prune pass: Wanda per row at the block's sparsity, through the pruned prefix.
    t = time.perf_counter()
    xs = embedded()
    achieved = []
    for i, block in enumerate(inner.layers):
        wrapped, _ = block_stats(block, xs, run_block)
        linears = find_linears(block)
        zeros = total = 0
        for n, score in wanda_scores(linears, wrapped).items():
            mask = torch.zeros_like(score, dtype=torch.bool)
            order = torch.sort(score, dim=-1, stable=True)[1]
            mask.scatter_(1, order[:, : int(score.shape[1] * block_sparsity[i])], True)
            linears[n].weight.data[mask] = 0
            zeros += int((linears[n].weight.data == 0).sum())
            total += score.numel()
        achieved.append(zeros / total)
        xs = [run_block(block, x) for x in xs]
    times["prune"] = time.perf_counter() - t

    t = time.perf_counter()
    ppl_pruned, _, _ = perplexity(model, eval_ids, args.seqlen, args.batch, args.device)
    times["perplexity_pruned"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - started

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"torch {torch.__version__}, transformers LlamaForCausalLM, {torch.get_num_threads()} threads, float32 on {where}")
    print(f"calibration {len(calib_ids)} tokens, {args.nsamples} x {args.seqlen}; evaluation {len(eval_ids)} tokens, {eval_windows} windows")
    print(f"outlier ratio D_l (M = {args.hyper_m:g}): " + " ".join(f"{r:.3f}" for r in ratios))
    print("block sparsity: " + " ".join(f"{s:.4f}" for s in block_sparsity))
    print(f"ppl dense  {ppl_dense:.4f}")
    print(f"ppl pruned {ppl_pruned:.4f}")
    print("time " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
    summary = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "options": vars(args),
        "calib_tokens": len(calib_ids),
        "eval_tokens": len(eval_ids),
        "eval_windows": eval_windows,
        "predicted_tokens": predicted,
        "outlier_ratio": ratios,
        "block_sparsity": block_sparsity,
        "achieved_sparsity": achieved,
        "perplexity": {"dense": ppl_dense, "pruned": ppl_pruned},
        "timings": times,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    if args.compare:
        compare(summary, json.load(open(args.compare)))


def compare(ours, cli):
    """How far this baseline and `layerlab prune --json` agree on the same experiment."""
    rel = lambda a, b: (a - b) / b * 100  # noqa: E731
    p = cli["perplexity"]
    print(f"vs layerlab: calibration tokens {ours['calib_tokens']} vs {cli['calibration']['text_tokens']}, "
          f"evaluation tokens {ours['eval_tokens']} vs {p['text_tokens']}")
    d_ratio = max(abs(a - b["outlier_ratio"]) for a, b in zip(ours["outlier_ratio"], cli["blocks"]))
    d_alloc = max(abs(a - b["sparsity"]) for a, b in zip(ours["block_sparsity"], cli["blocks"]))
    print(f"vs layerlab: outlier ratios differ by at most {d_ratio:.2e} (percentage points), "
          f"block sparsities by at most {d_alloc:.2e}")
    print(f"vs layerlab: ppl dense {ours['perplexity']['dense']:.4f} vs {p['dense']:.4f} "
          f"({rel(ours['perplexity']['dense'], p['dense']):+.3f}%), "
          f"pruned {ours['perplexity']['pruned']:.4f} vs {p['pruned']:.4f} "
          f"({rel(ours['perplexity']['pruned'], p['pruned']):+.2f}%)")


if __name__ == "__main__":
    main()
