#!/usr/bin/env python3
"""Writes a Hugging Face GPT-2 (safetensors + config.json) as GGUF the way llama.cpp's
convert_hf_to_gguf.py (class GPT2Model) does, with llama.cpp's own writer (gguf-py's
GGUFWriter), for tests/gpt2_opt_forward.rs:

  general.architecture = gpt2; gpt2.context_length = n_positions, embedding_length = n_embd,
  feed_forward_length = n_inner or 4 n_embd, block_count = n_layer, attention.head_count =
  n_head, attention.layer_norm_epsilon = layer_norm_epsilon; general.file_type = 0 (F32).
  Tensors, float32: token_embd (wte), position_embd (wpe), output_norm (ln_f), output (a copy
  of wte: "GPT2 output is tied to (same as) wte in original model"), and per block N:
  blk.N.attn_norm (ln_1), attn_qkv (attn.c_attn), attn_output (attn.c_proj), ffn_norm (ln_2),
  ffn_up (mlp.c_fc), ffn_down (mlp.c_proj); the Conv1D weights transposed to (out, in); the
  attn.bias / attn.masked_bias buffers dropped.

    gpt2_to_gguf.py MODEL.safetensors CONFIG.json OUT.gguf

Run with .cache/venv/bin/python."""

import json
import re
import sys

import numpy as np
from gguf import GGUFWriter
from safetensors.numpy import load_file

BLOCK = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def main():
    src, config_path, out = sys.argv[1:4]
    c = json.load(open(config_path))
    weights = load_file(src)
    w = GGUFWriter(out, "gpt2")
    w.add_name("tiny-gpt2")
    w.add_context_length(c["n_positions"])
    w.add_embedding_length(c["n_embd"])
    w.add_feed_forward_length(c.get("n_inner") or 4 * c["n_embd"])
    w.add_block_count(c["n_layer"])
    w.add_head_count(c["n_head"])
    w.add_layer_norm_eps(c["layer_norm_epsilon"])
    w.add_file_type(0)
    for name, t in weights.items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        t = t.astype(np.float32)
        if name.endswith(CONV1D):
            t = np.ascontiguousarray(t.T)
        m = re.fullmatch(r"h\.(\d+)\.(.+)\.(weight|bias)", name)
        if m:
            new = f"blk.{m.group(1)}.{BLOCK[m.group(2)]}.{m.group(3)}"
        else:
            new = {"wte.weight": "token_embd.weight", "wpe.weight": "position_embd.weight",
                   "ln_f.weight": "output_norm.weight", "ln_f.bias": "output_norm.bias"}[name]
        w.add_tensor(new, t)
        if new == "token_embd.weight":
            w.add_tensor("output.weight", t.copy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
