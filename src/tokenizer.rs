//! Text to token ids, for the models the lab evaluates: the tokeniser embedded in a GGUF
//! file's metadata, or a Hugging Face tokenizer.json.
//!
//! Both end in a `tokenizers::Tokenizer` (Hugging Face's Rust crate, the same code as its
//! Python package). From GGUF we build it piece by piece, as the file describes it:
//! - `tokenizer.ggml.model` = "gpt2": byte-level BPE. The model is `tokenizer.ggml.tokens`
//!   (id = index) and `tokenizer.ggml.merges` ("left right", in rank order).
//! - `tokenizer.ggml.pre` names the pre-tokenizer: the regex split applied before BPE. Getting
//!   it wrong changes token counts (and so perplexity) without any error, so an unknown name
//!   is an error, never a fallback. The table in `pre_tokenizer` replicates llama.cpp's
//!   (llama-vocab.cpp) in Hugging Face's terms; "smollm" (SmolLM2) is the one tested against
//!   an independent reference (tests/tokenizer_reference.rs).
//! - Tokens of type control (3) and user-defined (4) are added tokens: found whole in the
//!   text before BPE, as Hugging Face's tokenizer.json lists them in `added_tokens`.
//! - `tokenizer.ggml.add_bos_token` = true prepends `tokenizer.ggml.bos_token_id`; absent or
//!   false adds nothing (llama.cpp's default for "gpt2" tokenisers).
//!
//! A tokenizer.json is loaded as it is; `encode` then applies its own post-processor (the
//! special tokens it adds, e.g. BERT's [CLS] ... [SEP] or LLaMA-2's <s>), as Hugging Face's
//! `encode` does by default.
//!
//! What this module refuses to be: a tokeniser trainer, a SentencePiece ("llama") GGUF
//! tokeniser (not yet: an error says so), or a chat-template renderer.

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::io::{MetaValue, ModelFile};
use crate::{LabError, Result};

/// Llama-3's split regex, as its tokenizer.json has it (llama.cpp: LLAMA3, "llama-bpe").
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama-3's with single digits (llama.cpp: QWEN2, STABLELM2).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokeniser and the one decision `encode` adds to it: whether a BOS token goes first.
pub struct TextTokenizer {
    inner: Tokenizer,
    /// Prepended by `encode` (GGUF `tokenizer.ggml.add_bos_token` = true).
    bos: Option<u32>,
    /// tokenizer.json: `encode` runs the file's post-processor.
    post_process: bool,
    /// Where it came from, for messages: "model.gguf (gpt2 BPE, pre smollm)".
    pub describe: String,
}

/// The pre-tokenizer `tokenizer.ggml.pre` names, and whether BPE ignores merges for a word
/// already in the vocabulary (Llama-3's `ignore_merges`). The groups follow llama.cpp's
/// `llama_vocab::impl::load` regex table; each is Hugging Face's equivalent:
/// - GPT-2: ByteLevel's own regex
///   `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
/// - StarCoder family (smollm, ...): llama.cpp first isolates every `\p{N}`, then the GPT-2
///   regex; Hugging Face: `Digits(individual_digits)` then ByteLevel with its regex.
/// - Llama-3, Qwen2: their split regex (Isolated), then ByteLevel without a regex.
fn pre_tokenizer(pre: &str) -> Option<(PreTokenizerWrapper, bool)> {
    let byte_level = |regex: bool| ByteLevel::new(false, true, regex).into();
    let split = |re: &str| -> Option<PreTokenizerWrapper> {
        Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .ok()
        .map(Into::into)
    };
    let seq = |v: Vec<PreTokenizerWrapper>| Sequence::new(v).into();
    Some(match pre {
        "gpt-2" | "mpt" | "olmo" | "jais" => (byte_level(true), false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (seq(vec![Digits::new(true).into(), byte_level(true)]), false)
        }
        "llama3" | "llama-bpe" | "dbrx" | "smaug-bpe" => {
            (seq(vec![split(LLAMA3_SPLIT)?, byte_level(false)]), true)
        }
        "qwen2" | "stablelm2" | "deepseek-r1-qwen" => {
            (seq(vec![split(QWEN2_SPLIT)?, byte_level(false)]), false)
        }
        _ => return None,
    })
}

fn strings<'a>(
    file: &'a ModelFile,
    key: &str,
    name: &str,
) -> Result<impl Iterator<Item = Result<&'a str>> + 'a> {
    let bad = |msg: String| LabError::BadFile(format!("{name}: {msg}"));
    match file.metadata.get(key) {
        Some(MetaValue::Array(a)) => {
            let key = key.to_string();
            let name = name.to_string();
            Ok(a.iter().enumerate().map(move |(i, v)| {
                v.as_str()
                    .ok_or_else(|| LabError::BadFile(format!("{name}: {key}[{i}] is not a string")))
            }))
        }
        Some(_) => Err(bad(format!("{key} is not an array of strings"))),
        None => Err(bad(format!("the metadata has no {key}"))),
    }
}

fn meta_id(file: &ModelFile, key: &str) -> Option<u32> {
    file.metadata
        .get(key)
        .and_then(MetaValue::as_u64)
        .and_then(|v| u32::try_from(v).ok())
}

impl TextTokenizer {
    /// The tokeniser a GGUF file carries in its metadata; `name` is the file's name, for
    /// messages.
    pub fn from_gguf(file: &ModelFile, name: &str) -> Result<TextTokenizer> {
        let bad = |msg: String| LabError::BadFile(format!("{name}: {msg}"));
        let model = file
            .metadata
            .get("tokenizer.ggml.model")
            .and_then(MetaValue::as_str)
            .ok_or_else(|| bad("the metadata has no tokenizer (tokenizer.ggml.model)".into()))?;
        if model != "gpt2" {
            return Err(bad(format!(
                "tokenizer.ggml.model is '{model}'; LayerLab reads only byte-level BPE \
                 ('gpt2') tokenisers from GGUF so far"
            )));
        }
        let pre = file
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(MetaValue::as_str)
            .unwrap_or("default");
        let (pre_tok, ignore_merges) = pre_tokenizer(pre).ok_or_else(|| {
            bad(format!(
                "unknown pre-tokenizer tokenizer.ggml.pre = '{pre}': LayerLab knows gpt-2, mpt, \
                 olmo, jais, smollm, starcoder, refact, command-r, codeshell, exaone, \
                 minerva-7b, llama3, llama-bpe, dbrx, smaug-bpe, qwen2, stablelm2, \
                 deepseek-r1-qwen; guessing another would silently change the token ids"
            ))
        })?;

        let tokens: Vec<&str> =
            strings(file, "tokenizer.ggml.tokens", name)?.collect::<Result<_>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        if vocab.len() != tokens.len() {
            return Err(bad(format!(
                "tokenizer.ggml.tokens holds {} tokens but only {} distinct ones",
                tokens.len(),
                vocab.len()
            )));
        }
        let mut merges = Vec::new();
        for (i, m) in strings(file, "tokenizer.ggml.merges", name)?.enumerate() {
            let m = m?;
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                bad(format!(
                    "tokenizer.ggml.merges[{i}] = '{m}' is not two tokens separated by a space"
                ))
            })?;
            merges.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| bad(format!("cannot build the BPE tokeniser: {e}")))?;

        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(ByteLevel::default()));

        // Control and user-defined tokens are matched whole, before the pre-tokenizer.
        if let Some(MetaValue::Array(types)) = file.metadata.get("tokenizer.ggml.token_type") {
            let mut special = Vec::new();
            let mut user = Vec::new();
            for (i, t) in types.iter().enumerate() {
                let (Some(kind), Some(tok)) = (t.as_u64(), tokens.get(i)) else {
                    continue;
                };
                match kind {
                    3 => special.push(AddedToken::from(tok.to_string(), true).normalized(false)),
                    4 => user.push(AddedToken::from(tok.to_string(), false).normalized(false)),
                    _ => {}
                }
            }
            let added = inner
                .add_special_tokens(special)
                .and_then(|_| inner.add_tokens(user));
            added.map_err(|e| bad(format!("cannot add the control tokens: {e}")))?;
        }

        let add_bos = matches!(
            file.metadata.get("tokenizer.ggml.add_bos_token"),
            Some(MetaValue::Bool(true))
        );
        let bos = if add_bos {
            let id = meta_id(file, "tokenizer.ggml.bos_token_id").ok_or_else(|| {
                bad("tokenizer.ggml.add_bos_token is true but there is no bos_token_id".into())
            })?;
            if id as usize >= tokens.len() {
                return Err(bad(format!(
                    "tokenizer.ggml.bos_token_id {id} is outside the vocabulary ({} tokens)",
                    tokens.len()
                )));
            }
            Some(id)
        } else {
            None
        };
        Ok(TextTokenizer {
            inner,
            bos,
            post_process: false,
            describe: format!(
                "{name} (gpt2 BPE, pre {pre}, {} tokens, {})",
                tokens.len(),
                if bos.is_some() { "BOS first" } else { "no BOS" }
            ),
        })
    }

    /// A Hugging Face tokenizer.json; `name` is the file's name, for messages.
    pub fn from_json(bytes: &[u8], name: &str) -> Result<TextTokenizer> {
        let inner = Tokenizer::from_bytes(bytes).map_err(|e| {
            LabError::BadFile(format!(
                "{name}: not a tokenizer.json LayerLab can read: {e}"
            ))
        })?;
        Ok(TextTokenizer {
            describe: format!("{name} ({} tokens)", inner.get_vocab_size(true)),
            inner,
            bos: None,
            post_process: true,
        })
    }

    /// Token ids of `text`: the BOS token first when the GGUF metadata asks for it; for a
    /// tokenizer.json, whatever its post-processor adds.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, self.post_process)
            .map_err(|e| LabError::invalid(format!("cannot tokenise the text: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        ids.extend(self.bos);
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| LabError::invalid(format!("cannot decode the token ids: {e}")))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether `encode` puts a BOS token first (GGUF only).
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
}
