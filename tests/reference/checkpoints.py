#!/usr/bin/env python3
"""Independent reference for tests/checkpoints.rs: tiny seeded LLaMA-family checkpoints that
transformers itself writes (save_pretrained), one per config convention and RoPE type, and
transformers' own logits and perplexity on them.

    checkpoints.py smollm2 GGUF IDS OUT_DIR SEQLEN CONFIGS
        SmolLM2's real weights under the RoPE configs named (see smollm2()).

    checkpoints.py OUT_DIR
        For every case below: OUT_DIR/<case>/model.safetensors and config.json (config.json
        rewritten into the transformers 4 convention for the t4_* cases, then read back by
        transformers, so the numbers are those of the file as written), logits.f32 (T, V) of
        one window of IDS, and in manifest.json the ids, the perplexity windows and
        transformers' perplexity. Then GGUF copies of some cases (gguf-py's writer, laid out
        as llama.cpp's convert_hf_to_gguf.py lays them out: q/k rows permuted for "llama",
        rope_freqs.weight for llama3 scaling) with the same expected logits.

Run with .cache/venv-torch/bin/python (scripts/setup.sh: ensure_torch_reference)."""

import json
import math
import os
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

torch.set_grad_enabled(False)
torch.set_num_threads(1)

V, C, H, KV, F, LAYERS = 96, 64, 4, 2, 80, 2
T = 24           # logits window
PPL_T = 20       # perplexity windows
PPL_WINDOWS = 3
MAX_POS = 16     # max_position_embeddings: dynamic scaling grows past it

BASE = dict(vocab_size=V, hidden_size=C, num_attention_heads=H, num_key_value_heads=KV,
            intermediate_size=F, num_hidden_layers=LAYERS, rms_norm_eps=1e-5,
            max_position_embeddings=MAX_POS, tie_word_embeddings=True)

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8}
YARN = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8}

# name: (model_type, extra config, how config.json is written, dtype)
#   t5: as transformers 5 saves it (rope_parameters); t4: rewritten with top-level rope_theta
#   and rope_scaling {"type": ...}; t4r: the same with {"rope_type": ...}.
CASES = {
    "t4_theta": ("llama", dict(rope_parameters={"rope_type": "default", "rope_theta": 50000.0}), "t4", None),
    "t4_linear_type": ("llama", dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}), "t4", None),
    "t4_llama3_rope_type": ("llama", dict(rope_parameters=dict(LLAMA3, rope_theta=500000.0)), "t4r", None),
    "t5_default": ("llama", dict(rope_parameters={"rope_type": "default", "rope_theta": 100000.0}), "t5", None),
    "t5_linear": ("llama", dict(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}), "t5", None),
    "t5_dynamic": ("llama", dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}), "t5", None),
    "t5_llama3": ("llama", dict(rope_parameters=dict(LLAMA3, rope_theta=500000.0)), "t5", None),
    "t5_yarn": ("llama", dict(rope_parameters=dict(YARN, rope_theta=10000.0)), "t5", None),
    "t5_yarn_mscale": ("llama", dict(rope_parameters=dict(YARN, rope_theta=10000.0, mscale=0.8, mscale_all_dim=0.5,
                                                          beta_fast=16.0, beta_slow=2.0)), "t5", None),
    "qwen2_bias": ("qwen2", dict(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), "t5", None),
    "qwen3": ("qwen3", dict(head_dim=24, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), "t5", None),
    "qwen3_bias_yarn": ("qwen3", dict(head_dim=16, attention_bias=True, rope_parameters=dict(YARN, rope_theta=10000.0)), "t5", None),
    "mistral": ("mistral", dict(sliding_window=64, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), "t5", None),
    "llama_head_dim": ("llama", dict(head_dim=24, attention_bias=True, mlp_bias=True), "t5", None),
    "llama_bf16": ("llama", dict(), "t5", torch.bfloat16),
    "llama_untied": ("llama", dict(tie_word_embeddings=False), "t5", None),
}


def seeded_model(model_type, extra, seed):
    cfg = transformers.AutoConfig.for_model(model_type, **dict(BASE, **extra))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    # Weights of a trained model's size, norms around 1: an error in any of them shows.
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if "norm" in name:
            p.copy_(1.0 + 0.3 * noise)
        else:
            p.copy_(0.15 * noise)
    return model.eval()


def to_t4(path, rope_key):
    """Rewrites config.json the transformers 4 way: top-level rope_theta, rope_scaling."""
    cpath = os.path.join(path, "config.json")
    with open(cpath) as f:
        c = json.load(f)
    params = dict(c.pop("rope_parameters"))
    # transformers 4 configs seldom state head_dim: leave it to hidden_size / heads.
    if c.get("head_dim") == c["hidden_size"] // c["num_attention_heads"]:
        del c["head_dim"]
    c["rope_theta"] = params.pop("rope_theta")
    kind = params.pop("rope_type")
    c["rope_scaling"] = None if kind == "default" else dict(params, **{rope_key: kind})
    with open(cpath, "w") as f:
        json.dump(c, f, indent=2)


def nll_windows(model, ids):
    out = []
    for w in range(PPL_WINDOWS):
        x = torch.tensor([ids[w * PPL_T:(w + 1) * PPL_T]])
        logits = model(x).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        out.append(float(-logp[torch.arange(PPL_T - 1), x[0, 1:]].sum()))
    return out


# GGUF copies (name: case): the HF case's weights as llama.cpp's converter writes them, so
# their expected logits are the case's.
GGUF_CASES = {
    "gguf_llama": "t5_default",
    "gguf_llama_untied": "llama_untied",
    # MLP biases: LayerLab refuses them in a GGUF (tests/checkpoints.rs checks the error).
    "gguf_llama_mlp_bias": "llama_head_dim",
    "gguf_linear": "t5_linear",
    "gguf_yarn": "t5_yarn",
    "gguf_llama3_freqs": "t5_llama3",
    "gguf_qwen2": "qwen2_bias",
    "gguf_qwen3": "qwen3",
}

GGUF_BLOCK = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
}


def llama_permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute: HF half-split rows -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_freqs(p, theta, dim):
    """convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors: one divisor per frequency."""
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    low_wavelen = p["original_max_position_embeddings"] / p["low_freq_factor"]
    high_wavelen = p["original_max_position_embeddings"] / p["high_freq_factor"]
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(p["factor"])
        else:
            smooth = (p["original_max_position_embeddings"] / wavelen - p["low_freq_factor"]) / (
                p["high_freq_factor"] - p["low_freq_factor"])
            out.append(1 / ((1 - smooth) / p["factor"] + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(case_dir, out):
    from gguf import GGUFWriter
    from safetensors.numpy import load_file
    import re
    with open(os.path.join(case_dir, "config.json")) as f:
        c = json.load(f)
    arch = c["model_type"]
    d = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    rope = c["rope_parameters"]
    w = GGUFWriter(out, arch)
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_rope_dimension_count(d)
    w.add_vocab_size(c["vocab_size"])
    if d != c["hidden_size"] // c["num_attention_heads"]:
        w.add_key_length(d)
        w.add_value_length(d)
    if rope["rope_type"] in ("linear", "yarn"):
        from gguf import RopeScalingType
        w.add_rope_scaling_type(RopeScalingType(rope["rope_type"]))
        w.add_rope_scaling_factor(rope["factor"])
        if rope["rope_type"] == "yarn":
            w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    w.add_file_type(0)
    if rope["rope_type"] == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_freqs(rope, rope["rope_theta"], d))
    for name, t in load_file(os.path.join(case_dir, "model.safetensors")).items():
        t = t.astype(np.float32)
        if name == "model.embed_tokens.weight":
            new = "token_embd.weight"
        elif name == "model.norm.weight":
            new = "output_norm.weight"
        elif name == "lm_head.weight":
            new = "output.weight"
        else:
            m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
            stem = m.group(2)
            if arch == "llama" and stem == "self_attn.q_proj":
                t = llama_permute(t, c["num_attention_heads"])
            if arch == "llama" and stem == "self_attn.k_proj":
                t = llama_permute(t, c["num_key_value_heads"])
            new = f"blk.{m.group(1)}.{GGUF_BLOCK[stem]}.{m.group(3)}"
        w.add_tensor(new, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(11)
    ids = [int(i) for i in rng.integers(0, V, T)]
    ppl_ids = [int(i) for i in rng.integers(0, V, PPL_T * PPL_WINDOWS)]
    manifest = {"ids": ids, "ppl_ids": ppl_ids, "ppl_seqlen": PPL_T, "cases": {},
                "transformers": transformers.__version__, "torch": torch.__version__}
    for seed, (name, (model_type, extra, convention, dtype)) in enumerate(sorted(CASES.items())):
        path = os.path.join(out_dir, name)
        model = seeded_model(model_type, extra, 100 + seed)
        if dtype is not None:
            model = model.to(dtype)
        model.save_pretrained(path)
        if convention in ("t4", "t4r"):
            to_t4(path, "type" if convention == "t4" else "rope_type")
        # The reference is the checkpoint as written, read back, in float32.
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
        logits.astype("<f4").tofile(os.path.join(path, "logits.f32"))
        # dynamic scaling is stateful in transformers (the frequencies of the longest
        # sequence seen so far stay): a fresh model scores the windows, as each window of a
        # perplexity run is scored alone.
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        nll = nll_windows(model, ppl_ids)
        manifest["cases"][name] = {
            "dir": path,
            "window_nll": nll,
            "perplexity": math.exp(sum(nll) / (PPL_WINDOWS * (PPL_T - 1))),
        }
    manifest["gguf"] = {}
    for name, case in GGUF_CASES.items():
        path = os.path.join(out_dir, name + ".gguf")
        write_gguf(os.path.join(out_dir, case), path)
        manifest["gguf"][name] = {"path": path, "case": case}
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(json.dumps({"cases": len(manifest["cases"]), "out": out_dir}))


# The real SmolLM2-135M weights under RoPE configs they were not trained with: where a wrong
# theta or an ignored scaling shows in the perplexity (the issue's 33.58 against 28.92).
SMOLLM2_ROPE = {
    "t5_theta": {"rope_type": "default", "rope_theta": 100000.0},
    "t5_llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64, "rope_theta": 100000.0},
    "t5_yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 100000.0},
    "t5_dynamic": {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 100000.0},
    "t5_linear": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
}


def smollm2(gguf_path, ids_path, out_dir, seqlen, configs):
    """SmolLM2 as transformers reads the GGUF (dequantised to float32), saved once with
    save_pretrained; one folder per RoPE config (config.json as transformers 5 writes it;
    max_position_embeddings 64 for dynamic, so that it acts on 128-token windows), and
    transformers' perplexity of the ids in IDS (one per line) in windows of SEQLEN."""
    base = os.path.join(out_dir, "base")
    if not os.path.exists(os.path.join(base, "model.safetensors")):
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path), dtype=torch.float32)
        # transformers will not save_pretrained a model it read from GGUF: a fresh model of
        # the same config takes its (dequantised) weights and is saved instead.
        config = model.config
        for key in ("quantization_config", "_name_or_path"):
            if hasattr(config, key):
                delattr(config, key)
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(model.state_dict())
        fresh.save_pretrained(base)
    with open(os.path.join(base, "config.json")) as f:
        config = json.load(f)
    with open(ids_path) as f:
        ids = [int(line) for line in f if line.strip()]
    windows = len(ids) // seqlen
    out = {}
    for name in configs:
        path = os.path.join(out_dir, name)
        os.makedirs(path, exist_ok=True)
        c = dict(config, rope_parameters=SMOLLM2_ROPE[name])
        if name == "t5_dynamic":
            c["max_position_embeddings"] = 64
        c.pop("rope_theta", None)
        c.pop("rope_scaling", None)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(c, f, indent=2)
        link = os.path.join(path, "model.safetensors")
        if not os.path.exists(link):
            os.symlink(os.path.join(base, "model.safetensors"), link)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        nll = []
        for w in range(windows):
            x = torch.tensor([ids[w * seqlen:(w + 1) * seqlen]])
            logp = torch.log_softmax(model(x).logits[0].double(), -1)
            nll.append(float(-logp[torch.arange(seqlen - 1), x[0, 1:]].sum()))
        out[name] = {"dir": path, "window_nll": nll,
                     "perplexity": math.exp(sum(nll) / (windows * (seqlen - 1)))}
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "smollm2":
        smollm2(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6].split(","))
    else:
        main(sys.argv[1])
