#!/usr/bin/env python3
"""Independent reference for tests/tokenizer_reference.rs: token ids of texts under the
tokeniser a GGUF file carries, computed three ways that share no code with LayerLab:

- "bpe": a plain-Python byte-level BPE (OpenAI's GPT-2 encoder.py algorithm: bytes to
  unicode, then repeatedly merge the lowest-ranked adjacent pair) after llama.cpp's
  pre-tokenizer for `tokenizer.ggml.pre` = "smollm" (llama-vocab.cpp: first isolate every
  \\p{N}, then the GPT-2 regex; text no regex matches stays a piece of its own, as in
  llama.cpp's unicode_regex_split), with control tokens (token_type 3) matched whole first.
  Vocabulary, merges and types are read with gguf-py (llama.cpp's Python package).
- "hf_gguf": Hugging Face's `tokenizers` (Python) with a tokenizer.json this script builds
  from the same metadata, as SmolLM2's own tokenizer.json is made: BPE, pre-tokenizer
  Sequence[Digits(individual_digits), ByteLevel(add_prefix_space=False)], the control
  tokens as special added tokens. The JSON is written to OUT_JSON for LayerLab's
  tokenizer.json loader.
- "minilm": `tokenizers` loading MINILM_JSON (all-MiniLM-L6-v2's WordPiece tokenizer.json),
  encode(add_special_tokens=True).

    tokenizer_ids.py GGUF MINILM_JSON OUT_JSON < texts.json  -> JSON on stdout

No BOS is added unless tokenizer.ggml.add_bos_token is true ("add_bos" in the output).
Run with .cache/venv/bin/python (scripts/setup.sh: ensure_python_reference)."""

import json
import sys

import regex
from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

# llama.cpp's regex list for LLAMA_VOCAB_PRE_TYPE_SMOLLM (and STARCODER, REFACT, ...).
SMOLLM_REGEXES = [
    r"\p{N}",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
]


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def bytes_to_unicode():
    """GPT-2's map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def regex_split(pieces, pattern):
    """Split every piece at the matches of pattern; matches and the text between them are
    all kept (llama.cpp's unicode_regex_split)."""
    out = []
    for p in pieces:
        pos = 0
        for m in regex.finditer(pattern, p):
            if m.start() > pos:
                out.append(p[pos : m.start()])
            out.append(m.group(0))
            pos = m.end()
        if pos < len(p):
            out.append(p[pos:])
    return out


class PlainBpe:
    def __init__(self, tokens, merges, special):
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        self.byte_map = bytes_to_unicode()
        self.special = sorted(special, key=len, reverse=True)
        self.cache = {}

    def bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            pairs = [(r, i) for r, i in pairs if r is not None]
            if not pairs:
                break
            best = min(pairs)[0]
            merged = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and self.ranks.get((parts[i], parts[i + 1])) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.ids[p] for p in parts]
        self.cache[word] = ids
        return ids

    def encode_plain(self, text):
        ids = []
        for piece in regex_split(regex_split([text], SMOLLM_REGEXES[0]), SMOLLM_REGEXES[1]):
            word = "".join(self.byte_map[b] for b in piece.encode("utf-8"))
            ids.extend(self.bpe(word))
        return ids

    def encode(self, text):
        if not self.special:
            return self.encode_plain(text)
        pat = "|".join(regex.escape(s) for s in self.special)
        ids = []
        pos = 0
        for m in regex.finditer(pat, text):
            ids.extend(self.encode_plain(text[pos : m.start()]))
            ids.append(self.ids[m.group(0)])
            pos = m.end()
        ids.extend(self.encode_plain(text[pos:]))
        return ids


def main():
    gguf_path, minilm_json, out_json = sys.argv[1:4]
    texts = json.load(sys.stdin)
    r = GGUFReader(gguf_path)
    model = field(r, "tokenizer.ggml.model")
    pre = field(r, "tokenizer.ggml.pre")
    if model != "gpt2" or pre != "smollm":
        sys.exit(f"this reference knows only gpt2 BPE with pre 'smollm', not {model}/{pre}")
    tokens = field(r, "tokenizer.ggml.tokens")
    merges = field(r, "tokenizer.ggml.merges")
    types = field(r, "tokenizer.ggml.token_type")
    add_bos = bool(field(r, "tokenizer.ggml.add_bos_token") or False)
    bos = [field(r, "tokenizer.ggml.bos_token_id")] if add_bos else []
    special = [t for t, k in zip(tokens, types) if k == 3]

    plain = PlainBpe(tokens, merges, special)

    hf = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ", 1)) for m in merges]))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    hf.save(out_json)

    minilm = Tokenizer.from_file(minilm_json)
    json.dump(
        {
            "add_bos": add_bos,
            "bpe": [bos + plain.encode(t) for t in texts],
            "hf_gguf": [bos + hf.encode(t, add_special_tokens=False).ids for t in texts],
            "minilm": [minilm.encode(t, add_special_tokens=True).ids for t in texts],
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
