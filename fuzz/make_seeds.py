#!/usr/bin/env python3
"""Writes the small seed inputs for the fuzz targets (fuzz/seeds/<target>/*), a few hundred
bytes each: valid files of every tensor type the readers handle, so the fuzzer starts from
inputs that get past the headers. Standard library only; rerun to regenerate."""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    os.makedirs(os.path.join(HERE, "seeds", target), exist_ok=True)
    with open(os.path.join(HERE, "seeds", target, name), "wb") as f:
        f.write(data)


def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf(kvs, tensors, version=3, alignment=32):
    """kvs: list of (key, type id, packed value); tensors: (name, dims innermost first, ggml type, raw)."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for key, ty, val in kvs:
        out += gstr(key) + struct.pack("<I", ty) + val
    offsets, data = [], b""
    for _, _, _, raw in tensors:
        data += b"\0" * (-len(data) % alignment)
        offsets.append(len(data))
        data += raw
    for (name, dims, ty, _), off in zip(tensors, offsets):
        out += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ty, off)
    out += b"\0" * (-len(out) % alignment)
    return out + data


f32 = lambda xs: b"".join(struct.pack("<f", x) for x in xs)
f16 = lambda xs: b"".join(struct.pack("<e", x) for x in xs)
bf16 = lambda xs: b"".join(struct.pack("<f", x)[2:] for x in xs)

write("safetensors", "f32_f16_bf16", safetensors([
    ("a.weight", "F32", [2, 3], f32([1, -2, 3, -4, 5, -6])),
    ("b.weight", "F16", [4], f16([0.5, -1, 2, 65504])),
    ("c.weight", "BF16", [2, 2], bf16([1, 2, -3, 1e30])),
    ("ids", "I64", [2], struct.pack("<qq", 7, -1)),
    ("mask", "BOOL", [3], b"\x01\x00\x01"),
], {"format": "pt"}))
write("safetensors", "empty_tensor", safetensors([("e", "F32", [0, 4], b""), ("s", "F32", [], f32([3]))]))

# One block of each quant: the scale fields hold small f16 values so values stay finite.
blocks = {
    2: (32, struct.pack("<e", 0.5) + bytes(range(16))),                       # Q4_0
    3: (32, struct.pack("<ee", 0.5, -1) + bytes(range(16))),                   # Q4_1
    6: (32, struct.pack("<e", 0.25) + b"\x0f\xf0\x55\xaa" + bytes(range(16))),  # Q5_0
    7: (32, struct.pack("<ee", 0.25, 1) + b"\x0f\xf0\x55\xaa" + bytes(range(16))),  # Q5_1
    8: (32, struct.pack("<e", 0.125) + bytes((i * 7) % 256 for i in range(32))),  # Q8_0
    12: (256, struct.pack("<ee", 0.5, 0.1) + bytes(range(1, 13)) + bytes((i * 3) % 256 for i in range(128))),  # Q4_K
    13: (256, struct.pack("<ee", 0.5, 0.1) + bytes(range(1, 13)) + bytes(32) + bytes((i * 5) % 256 for i in range(128))),  # Q5_K
    14: (256, bytes((i * 11) % 256 for i in range(128)) + bytes((i * 13) % 256 for i in range(64)) + bytes(range(16)) + struct.pack("<e", 0.01)),  # Q6_K
}
meta = [
    ("general.architecture", 8, gstr("llama")),
    ("general.alignment", 4, struct.pack("<I", 32)),
    ("llama.block_count", 4, struct.pack("<I", 1)),
    ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2) + gstr("a") + gstr("b")),
    ("nested", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 5, 2) + struct.pack("<ii", -1, 2)),
    ("f", 6, struct.pack("<f", 1.5)),
    ("b", 7, b"\x01"),
]
write("gguf", "plain", gguf(meta, [
    ("blk.0.attn_norm.weight", [4], 0, f32([1, 2, 3, 4])),
    ("blk.0.attn_q.weight", [2, 2], 1, f16([1, -1, 0.5, 2])),
    ("token_embd.weight", [2, 1], 30, bf16([1, -2])),
    ("odd", [3], 42, b"\0" * 12),
]))
for ty, (block, raw) in blocks.items():
    write("gguf", f"quant_{ty}", gguf(meta[:2], [("blk.0.ffn_up.weight", [block, 1], ty, raw)]))
write("gguf", "v2_no_alignment", gguf([("general.name", 8, gstr("x"))], [("w", [1], 0, f32([2]))], version=2))
