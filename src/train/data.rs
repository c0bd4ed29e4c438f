//! Training data: a text, its tokeniser, the 90/10 split and the batches.
//!
//! - Character level (the default): the vocabulary is the sorted set of the text's chars
//!   (Unicode scalar values), id = rank. A char outside it (in a prompt for sampling) is an
//!   error naming it: the model has no embedding for it.
//! - SmolLM2's BPE (or any tokeniser `crate::tokenizer` reads), from a model file.
//! - Split by position: the first 90% of the token ids train, the last 10% validate.
//! - A batch is B windows of T+1 consecutive tokens at seeded random offsets in the train
//!   split: offset = floor(u * (len - T)) with u a 64-bit ChaCha8 draw scaled to [0, 1)
//!   (Lemire's multiply-shift, bias below 2^-40 for any text the lab sees).

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::tokenizer::TextTokenizer;
use crate::{LabError, Result};

/// The largest character vocabulary accepted: more distinct characters than this is not a
/// text a character-level model can learn in a lab run (its head alone would dwarf the model).
pub const MAX_CHAR_VOCAB: usize = 4096;

/// How text becomes ids.
pub enum Tokenizer {
    /// The sorted distinct chars of the training text.
    Char(Vec<char>),
    /// A BPE tokeniser (SmolLM2's from its GGUF, or a tokenizer.json).
    Bpe(Box<TextTokenizer>),
}

impl Tokenizer {
    /// The character vocabulary of `text`.
    pub fn char_level(text: &str) -> Result<Tokenizer> {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        if chars.len() > MAX_CHAR_VOCAB {
            return Err(LabError::invalid(format!(
                "the text has {} distinct characters, more than the {MAX_CHAR_VOCAB} a \
                 character-level vocabulary may hold: use a BPE tokenizer (--tokenizer MODEL.gguf)",
                chars.len()
            )));
        }
        Ok(Tokenizer::Char(chars))
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Char(c) => c.len(),
            Tokenizer::Bpe(t) => t.vocab_size(),
        }
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Char(chars) => text
                .chars()
                .map(|ch| {
                    chars.binary_search(&ch).map(|i| i as u32).map_err(|_| {
                        LabError::invalid(format!(
                            "the character {ch:?} (U+{:04X}) is not in the model's vocabulary \
                             (the characters of its training text)",
                            ch as u32
                        ))
                    })
                })
                .collect(),
            Tokenizer::Bpe(t) => t.encode(text),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Tokenizer::Char(chars) => ids
                .iter()
                .map(|&i| {
                    chars.get(i as usize).copied().ok_or_else(|| {
                        LabError::invalid(format!("token id {i} is outside the vocabulary"))
                    })
                })
                .collect(),
            Tokenizer::Bpe(t) => t.decode(ids),
        }
    }

    /// For reports: "char (65 symbols)" or the BPE's description.
    pub fn describe(&self) -> String {
        match self {
            Tokenizer::Char(c) => format!("char ({} symbols)", c.len()),
            Tokenizer::Bpe(t) => t.describe.clone(),
        }
    }
}

/// A tokenised text split 90/10 by position.
pub struct Corpus {
    pub vocab_size: usize,
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl Corpus {
    /// Splits `ids` at floor(0.9 * len). Both parts must hold a window of ctx+1 tokens.
    pub fn split(ids: Vec<u32>, vocab_size: usize, ctx: usize) -> Result<Corpus> {
        let cut = ids.len() * 9 / 10;
        let (train, val) = (ids[..cut].to_vec(), ids[cut..].to_vec());
        let need = ctx + 1;
        if val.len() < need {
            return Err(LabError::invalid(format!(
                "the text is too short: {} tokens give a validation split (the last 10%) of {} \
                 tokens, and a window needs ctx + 1 = {need}; use a longer text (at least {} \
                 tokens) or a smaller --ctx",
                ids.len(),
                val.len(),
                need * 10
            )));
        }
        Ok(Corpus {
            vocab_size,
            train,
            val,
        })
    }
}

/// Seeded batches of B windows of T+1 tokens from one split.
#[derive(Clone)]
pub struct Batcher {
    rng: ChaCha8Rng,
}

impl Batcher {
    /// The data stream is ChaCha8 stream 1 of `seed` (the init uses stream 0), so changing
    /// the model's size does not change the batches.
    pub fn new(seed: u64) -> Batcher {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(1);
        Batcher { rng }
    }

    /// The next batch (B*(T+1) ids, row-major).
    pub fn next(&mut self, split: &[u32], b: usize, t: usize) -> Vec<u32> {
        let span = (split.len() - t) as u128;
        let mut out = Vec::with_capacity(b * (t + 1));
        for _ in 0..b {
            let off = ((self.rng.next_u64() as u128 * span) >> 64) as usize;
            out.extend_from_slice(&split[off..off + t + 1]);
        }
        out
    }
}

/// Fixed validation windows: `count` windows of T+1 tokens evenly spaced over the split
/// (no randomness, so every evaluation of a run, and every run, sees the same tokens).
pub fn val_windows(split: &[u32], count: usize, t: usize) -> Vec<u32> {
    let span = split.len() - t - 1;
    let mut out = Vec::with_capacity(count * (t + 1));
    for i in 0..count {
        let off = if count > 1 { i * span / (count - 1) } else { 0 };
        out.extend_from_slice(&split[off..off + t + 1]);
    }
    out
}
