//! What a LLaMA-family checkpoint says about its forward pass, read the way transformers
//! (config.json) and llama.cpp (GGUF metadata) read it, and checked against the tensors the
//! file holds. What LayerLab does not compute is refused here, by name, before a number is
//! produced; nothing is approximated or ignored.
//!
//! | family (HF model_type / GGUF arch) | q,k,v,o bias           | MLP bias  | q/k norm | sliding window            |
//! |------------------------------------|------------------------|-----------|----------|---------------------------|
//! | llama (LLaMA 1-3.x, SmolLM, TinyLlama) | attention_bias      | mlp_bias  | no       | none                      |
//! | mistral (GGUF: llama)              | none                   | none      | no       | sliding_window (if set)   |
//! | qwen2 (Qwen2, Qwen2.5)             | q,k,v always, o never  | none      | no       | if use_sliding_window     |
//! | qwen3                              | attention_bias         | none      | per head | if use_sliding_window     |
//!
//! Head dim D: `head_dim` when given (Qwen3 defaults to 128, as transformers does), else
//! hidden / heads; GGUF `<arch>.attention.key_length` (= value_length). RoPE: `model::rope`.
//! A sliding window is honoured by refusing windows longer than it (within it, attention is
//! the plain causal one).

use serde_json::Value;

use crate::io::{Format, MetaValue, ModelFile};
use crate::model::rope::{RopeScaling, RopeSpec, SUPPORTED_ROPE_TYPES};
use crate::model::{Arch, ModelDesc};
use crate::{LabError, Result};

/// The LLaMA-family variants the forward pass computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Family {
    /// transformers' model_type.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }

    /// transformers' class.
    pub fn hf_class(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// What the pruning lab runs, for messages.
pub const SUPPORTED_FAMILIES: &str = "LLaMA-family checkpoints of model_type llama (LLaMA \
    1/2/3.x, SmolLM, TinyLlama), mistral, qwen2 (Qwen2, Qwen2.5) and qwen3 (GGUF: llama, \
    qwen2, qwen3), GPT-2 and OPT";

/// The sizes and constants of the forward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub family: Family,
    /// C
    pub hidden: usize,
    pub layers: usize,
    /// H
    pub heads: usize,
    /// KV
    pub kv_heads: usize,
    /// D: `head_dim` / GGUF key_length, else C / H.
    pub head_dim: usize,
    /// F
    pub ffn: usize,
    /// V
    pub vocab: usize,
    /// RMSNorm's eps (GGUF `<arch>.attention.layer_norm_rms_epsilon`, HF `rms_norm_eps`).
    pub rms_eps: f64,
    /// The whole RoPE (`model::rope`): its base theta (GGUF `<arch>.rope.freq_base`, HF
    /// `rope_parameters.rope_theta` or `rope_theta`; 10000 when absent, the default of both
    /// llama.cpp and transformers), dims and scaling.
    pub rope: RopeSpec,
    /// GGUF "llama": attn_q/attn_k rows are in llama.cpp's interleaved order, undone on load.
    pub unpermute_qk: bool,
    /// Qwen3: RMSNorm over each head's D values of q and k (weights (D)), before RoPE.
    pub qk_norm: bool,
    /// Biases of q, k, v, o the file must hold (None: optional, GGUF llama).
    pub attn_bias: [Option<bool>; 4],
    /// Biases of gate, up, down (llama's mlp_bias).
    pub mlp_bias: bool,
    /// The head is the embedding (tie_word_embeddings; GGUF: no output.weight).
    pub tied_head: bool,
    /// Positions attention may look back; a window longer than this is refused.
    pub sliding_window: Option<usize>,
    /// Where each size comes from, for shape errors.
    pub source: ShapeSource,
}

/// The config fields (or GGUF keys) the expected shapes come from.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeSource {
    pub hidden: String,
    pub heads: String,
    pub kv_heads: String,
    pub head_dim: String,
    pub ffn: String,
    pub vocab: String,
}

impl LlamaConfig {
    /// Says where the expected shape of a block tensor of `role` comes from.
    pub fn shape_origin(&self, role: &str) -> String {
        let s = &self.source;
        match role {
            "q" => format!("[{} x {}, {}]", s.heads, s.head_dim, s.hidden),
            "k" | "v" => format!("[{} x {}, {}]", s.kv_heads, s.head_dim, s.hidden),
            "o" => format!("[{}, {} x {}]", s.hidden, s.heads, s.head_dim),
            "gate" | "up" => format!("[{}, {}]", s.ffn, s.hidden),
            "down" => format!("[{}, {}]", s.hidden, s.ffn),
            "q_norm" | "k_norm" => format!("[{}]", s.head_dim),
            "embedding" | "head" => format!("[{}, {}]", s.vocab, s.hidden),
            _ => format!("[{}]", s.hidden),
        }
    }

    /// From a file's metadata (GGUF) or its config.json (safetensors).
    pub fn new(
        file: &ModelFile,
        desc: &ModelDesc,
        config: Option<&Value>,
        name: &str,
    ) -> Result<LlamaConfig> {
        let bad = |msg: String| LabError::BadFile(format!("{name}: {msg}"));
        if desc.arch != Arch::Llama {
            return Err(bad(format!(
                "the forward pass runs {SUPPORTED_FAMILIES}; this is '{}'",
                desc.arch_name
            )));
        }
        match file.format {
            Format::Gguf => from_gguf(file, desc, name),
            Format::Safetensors => {
                let c = config.ok_or_else(|| {
                    bad("a safetensors model needs its config.json for the forward pass".into())
                })?;
                from_hf(c, desc, name)
            }
        }
    }
}

/// `n` > 0 or an error naming `what`.
fn positive(v: Option<usize>, what: &str, name: &str) -> Result<usize> {
    v.filter(|&n| n > 0)
        .ok_or_else(|| LabError::BadFile(format!("{name}: the model does not say its {what}")))
}

fn check_sizes(
    name: &str,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    s: &ShapeSource,
) -> Result<()> {
    let bad = |msg: String| LabError::BadFile(format!("{name}: {msg}"));
    if !heads.is_multiple_of(kv_heads) {
        return Err(bad(format!(
            "{} {heads} is not a multiple of {} {kv_heads}",
            s.heads, s.kv_heads
        )));
    }
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(bad(format!(
            "{} {head_dim} is odd or zero; RoPE needs pairs",
            s.head_dim
        )));
    }
    if hidden == 0 {
        return Err(bad(format!("{} is 0", s.hidden)));
    }
    Ok(())
}

/// config.json, as transformers 4 and 5 read it for the four families.
fn from_hf(c: &Value, desc: &ModelDesc, name: &str) -> Result<LlamaConfig> {
    let bad = |msg: String| LabError::BadFile(format!("{name}: config.json: {msg}"));
    let model_type = c.get("model_type").and_then(Value::as_str);
    let class = c
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str);
    let family = match (model_type, class) {
        (Some("llama"), _) | (None, Some("LlamaForCausalLM")) => Family::Llama,
        (Some("mistral"), _) | (None, Some("MistralForCausalLM")) => Family::Mistral,
        (Some("qwen2"), _) | (None, Some("Qwen2ForCausalLM")) => Family::Qwen2,
        (Some("qwen3"), _) | (None, Some("Qwen3ForCausalLM")) => Family::Qwen3,
        (Some(other), _) => {
            return Err(bad(format!(
                "model_type '{other}' is not one the forward pass computes; it runs \
                 {SUPPORTED_FAMILIES}"
            )))
        }
        (None, other) => {
            return Err(bad(format!(
                "no model_type, and architectures[0] is {}; the forward pass runs \
                 {SUPPORTED_FAMILIES}",
                other.unwrap_or("absent")
            )))
        }
    };
    if let Some(class) = class {
        if class != family.hf_class() {
            return Err(bad(format!(
                "architectures[0] '{class}' is not {} (the forward pass computes the causal \
                 LM, logits over the vocabulary)",
                family.hf_class()
            )));
        }
    }
    // Keys that would change the maths and that LayerLab does not compute.
    let act = c
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("silu");
    if act != "silu" {
        return Err(bad(format!(
            "hidden_act '{act}': the forward pass computes SwiGLU with silu only"
        )));
    }
    for key in [
        "quantization_config",
        "num_experts",
        "num_local_experts",
        "logits_scaling",
        "embedding_multiplier",
        "residual_multiplier",
        "attention_multiplier",
        "attn_logit_softcapping",
        "final_logit_softcapping",
    ] {
        if c.get(key).is_some_and(|v| !v.is_null()) {
            return Err(bad(format!(
                "'{key}' changes the forward pass and is not computed by LayerLab (it runs \
                 {SUPPORTED_FAMILIES} as transformers computes them)"
            )));
        }
    }
    let usize_of = |key: &str| -> Result<Option<usize>> {
        match c.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|u| usize::try_from(u).ok())
                .map(Some)
                .ok_or_else(|| bad(format!("{key} is {v}, expected a whole number"))),
        }
    };
    let bool_of = |key: &str, default: bool| -> Result<bool> {
        match c.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(bad(format!("{key} is {v}, expected true or false"))),
        }
    };
    let h = &desc.hyper;
    let hidden = positive(usize_of("hidden_size")?.or(h.hidden), "hidden_size", name)?;
    let heads = positive(
        usize_of("num_attention_heads")?,
        "num_attention_heads",
        name,
    )?;
    let kv_heads = positive(
        usize_of("num_key_value_heads")?.or(Some(heads)),
        "num_key_value_heads",
        name,
    )?;
    let layers = positive(
        usize_of("num_hidden_layers")?.or(h.layers),
        "num_hidden_layers",
        name,
    )?;
    let ffn = positive(
        usize_of("intermediate_size")?.or(h.ffn),
        "intermediate_size",
        name,
    )?;
    let vocab = positive(usize_of("vocab_size")?.or(h.vocab), "vocab_size", name)?;
    let (head_dim, head_dim_src) = match (usize_of("head_dim")?, family) {
        (Some(d), _) => (d, "head_dim".to_string()),
        // transformers' Qwen3Config defaults head_dim to 128, not hidden / heads.
        (None, Family::Qwen3) => (128, "head_dim (Qwen3's default, 128)".to_string()),
        (None, _) => {
            if hidden % heads != 0 {
                return Err(bad(format!(
                    "hidden_size {hidden} is not a multiple of num_attention_heads {heads}, \
                     and there is no head_dim"
                )));
            }
            (
                hidden / heads,
                "head_dim (hidden_size / num_attention_heads)".to_string(),
            )
        }
    };
    let source = ShapeSource {
        hidden: "hidden_size".into(),
        heads: "num_attention_heads".into(),
        kv_heads: "num_key_value_heads".into(),
        head_dim: head_dim_src,
        ffn: "intermediate_size".into(),
        vocab: "vocab_size".into(),
    };
    check_sizes(name, hidden, heads, kv_heads, head_dim, &source)?;
    let rms_eps = c
        .get("rms_norm_eps")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad("no rms_norm_eps".into()))?;
    let mut rope = RopeSpec::from_hf_config(c, head_dim)
        .map_err(|e| LabError::BadFile(format!("{name}: {e}")))?;
    // transformers 5: a top-level original_max_position_embeddings (Phi-3 style) wins for
    // llama3 and yarn.
    if let Some(p) = usize_of("original_max_position_embeddings")? {
        match &mut rope.scaling {
            RopeScaling::Llama3 {
                original_max_positions,
                ..
            }
            | RopeScaling::Yarn {
                original_max_positions,
                ..
            } => *original_max_positions = p as f64,
            _ => {}
        }
    }
    let attention_bias = bool_of("attention_bias", false)?;
    let attn_bias = match family {
        Family::Llama | Family::Qwen3 => [Some(attention_bias); 4],
        Family::Mistral => [Some(false); 4],
        Family::Qwen2 => [Some(true), Some(true), Some(true), Some(false)],
    };
    // transformers' Mistral and Qwen2 ignore attention_bias: their biases are fixed.
    let mlp_bias = bool_of("mlp_bias", false)?;
    if mlp_bias && family != Family::Llama {
        return Err(bad(format!(
            "mlp_bias true: transformers' {} has no MLP biases",
            family.hf_class()
        )));
    }
    let sliding_window = match family {
        Family::Llama => None,
        Family::Mistral => usize_of("sliding_window")?,
        Family::Qwen2 | Family::Qwen3 => {
            if bool_of("use_sliding_window", false)? {
                usize_of("sliding_window")?
            } else {
                None
            }
        }
    };
    Ok(LlamaConfig {
        family,
        hidden,
        layers,
        heads,
        kv_heads,
        head_dim,
        ffn,
        vocab,
        rms_eps,
        rope,
        unpermute_qk: false,
        qk_norm: family == Family::Qwen3,
        attn_bias,
        mlp_bias,
        tied_head: bool_of("tie_word_embeddings", false)?,
        sliding_window,
        source,
    })
}

/// The `<arch>.` keys LayerLab reads or knows not to change the maths.
const GGUF_KNOWN: &[&str] = &[
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "vocab_size",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.layer_norm_rms_epsilon",
    "attention.key_length",
    "attention.value_length",
    "attention.sliding_window",
    "rope.dimension_count",
    "rope.freq_base",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scaling.original_context_length",
    "rope.scaling.finetuned",
];

/// GGUF metadata, as llama.cpp reads it for "llama", "qwen2" and "qwen3".
fn from_gguf(file: &ModelFile, desc: &ModelDesc, name: &str) -> Result<LlamaConfig> {
    let bad = |msg: String| LabError::BadFile(format!("{name}: {msg}"));
    let arch = desc.arch_name.as_str();
    let family = match arch {
        "llama" => Family::Llama,
        "qwen2" => Family::Qwen2,
        "qwen3" => Family::Qwen3,
        other => {
            return Err(bad(format!(
                "general.architecture '{other}': the forward pass runs {SUPPORTED_FAMILIES}"
            )))
        }
    };
    let prefix = format!("{arch}.");
    if let Some(key) = file
        .metadata
        .keys()
        .filter_map(|k| k.strip_prefix(&prefix))
        .find(|k| !GGUF_KNOWN.contains(k))
    {
        return Err(bad(format!(
            "the metadata key {arch}.{key} is not one LayerLab computes (it reads {})",
            GGUF_KNOWN
                .iter()
                .map(|k| format!("{arch}.{k}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let f = |key: &str| match file.metadata.get(&format!("{arch}.{key}")) {
        Some(MetaValue::Float(v)) => Some(*v),
        Some(v) => v.as_u64().map(|u| u as f64),
        None => None,
    };
    let u = |key: &str| f(key).map(|v| v as usize);
    let h = &desc.hyper;
    let hidden = positive(h.hidden, &format!("{arch}.embedding_length"), name)?;
    let heads = positive(h.heads, &format!("{arch}.attention.head_count"), name)?;
    let kv_heads = positive(h.kv_heads, &format!("{arch}.attention.head_count_kv"), name)?;
    let layers = positive(h.layers, &format!("{arch}.block_count"), name)?;
    let ffn = positive(h.ffn, &format!("{arch}.feed_forward_length"), name)?;
    let vocab = positive(h.vocab, "vocabulary size", name)?;
    let (head_dim, head_dim_src) = match u("attention.key_length") {
        Some(d) => (d, format!("{arch}.attention.key_length")),
        None => {
            if hidden % heads != 0 {
                return Err(bad(format!(
                    "{arch}.embedding_length {hidden} is not a multiple of \
                     {arch}.attention.head_count {heads}, and there is no \
                     {arch}.attention.key_length"
                )));
            }
            (
                hidden / heads,
                format!("head dim ({arch}.embedding_length / {arch}.attention.head_count)"),
            )
        }
    };
    if let Some(v) = u("attention.value_length") {
        if v != head_dim {
            return Err(bad(format!(
                "{arch}.attention.value_length {v} differs from the key length {head_dim}: \
                 not supported"
            )));
        }
    }
    let source = ShapeSource {
        hidden: format!("{arch}.embedding_length"),
        heads: format!("{arch}.attention.head_count"),
        kv_heads: format!("{arch}.attention.head_count_kv"),
        head_dim: head_dim_src,
        ffn: format!("{arch}.feed_forward_length"),
        vocab: "the vocabulary size".into(),
    };
    check_sizes(name, hidden, heads, kv_heads, head_dim, &source)?;
    let rms_eps = f("attention.layer_norm_rms_epsilon").ok_or_else(|| {
        bad(format!(
            "the metadata has no {arch}.attention.layer_norm_rms_epsilon"
        ))
    })?;
    if let Some(dims) = u("rope.dimension_count") {
        if dims != head_dim {
            return Err(bad(format!(
                "{arch}.rope.dimension_count is {dims}, the head dim {head_dim}: partial \
                 rotary embeddings are not supported"
            )));
        }
    }
    let theta = f("rope.freq_base").unwrap_or(10000.0);
    let scaling_type = match file.metadata.get(&format!("{arch}.rope.scaling.type")) {
        None => "none".to_string(),
        Some(v) => v
            .as_str()
            .ok_or_else(|| bad(format!("{arch}.rope.scaling.type is not a string")))?
            .to_string(),
    };
    let factor = || {
        f("rope.scaling.factor").ok_or_else(|| {
            bad(format!(
                "{arch}.rope.scaling.type {scaling_type} needs {arch}.rope.scaling.factor"
            ))
        })
    };
    let mut scaling = match scaling_type.as_str() {
        "none" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "yarn" => {
            // llama.cpp's YaRN with its defaults (beta_fast 32, beta_slow 1, ramp ends
            // rounded, attention factor 0.1 ln s + 1) is transformers' yarn.
            let factor = factor()?;
            let original = f("rope.scaling.original_context_length").ok_or_else(|| {
                bad(format!(
                    "{arch}.rope.scaling.type yarn needs {arch}.rope.scaling.original_context_length"
                ))
            })?;
            RopeScaling::Yarn {
                factor,
                original_max_positions: original,
                beta_fast: 32.0,
                beta_slow: 1.0,
                truncate: true,
                attention_factor: if factor <= 1.0 {
                    1.0
                } else {
                    0.1 * factor.ln() + 1.0
                },
            }
        }
        other => {
            return Err(bad(format!(
                "{arch}.rope.scaling.type '{other}' is not supported; LayerLab computes none, \
                 linear and yarn from GGUF metadata, llama3 from rope_freqs.weight (and \
                 {SUPPORTED_ROPE_TYPES} from config.json)"
            )))
        }
    };
    if let Some(t) = file.tensor("rope_freqs.weight") {
        if scaling != RopeScaling::None {
            return Err(bad(format!(
                "rope_freqs.weight and {arch}.rope.scaling.type {scaling_type} together: \
                 not supported"
            )));
        }
        if t.shape != [head_dim / 2] {
            return Err(bad(format!(
                "rope_freqs.weight: expected shape [{}] (half the head dim, {}), found {:?}",
                head_dim / 2,
                source.head_dim,
                t.shape
            )));
        }
        scaling = RopeScaling::Freqs(Vec::new()); // filled by Llama::new, which reads tensors
    }
    let (attn_bias, unpermute_qk) = match family {
        // llama.cpp loads the llama biases when present.
        Family::Llama => ([None; 4], true),
        Family::Qwen2 => ([Some(true), Some(true), Some(true), Some(false)], false),
        _ => ([Some(false); 4], false),
    };
    Ok(LlamaConfig {
        family,
        hidden,
        layers,
        heads,
        kv_heads,
        head_dim,
        ffn,
        vocab,
        rms_eps,
        rope: RopeSpec {
            theta,
            dim: head_dim,
            scaling,
        },
        unpermute_qk,
        qk_norm: family == Family::Qwen3,
        attn_bias,
        mlp_bias: false,
        tied_head: desc.head.is_none(),
        sliding_window: u("attention.sliding_window"),
        source,
    })
}

/// Every tensor of the file must be one the forward pass uses, and every one it needs must
/// be there: an extra tensor (q_norm in a Qwen2, a bias the config does not announce) means
/// the checkpoint is not what the config says, and is refused by name.
pub fn check_tensors(
    file: &ModelFile,
    desc: &ModelDesc,
    c: &LlamaConfig,
    name: &str,
) -> Result<()> {
    let family = c.family.hf_class();
    let gguf = file.format == Format::Gguf;
    let extra = |t: &str, why: &str| {
        LabError::BadFile(format!(
            "{name}: the file holds {t}, which the {family} forward pass does not use \
             ({why}); LayerLab refuses the model rather than ignore a tensor"
        ))
    };
    let missing = |what: &str| LabError::BadFile(format!("{name}: no {what} tensor"));
    if desc.embedding.is_none() {
        return Err(missing("token embedding"));
    }
    if desc.final_norm.is_none() {
        return Err(missing("final norm"));
    }
    match (&desc.head, c.tied_head) {
        (Some(h), true) => {
            return Err(extra(
                h,
                "config.json ties the head to the embedding, tie_word_embeddings: true",
            ))
        }
        (None, false) => {
            return Err(LabError::BadFile(format!(
                "{name}: config.json says tie_word_embeddings: false, but the file has no \
                 lm_head.weight"
            )))
        }
        _ => {}
    }
    for t in &desc.unassigned {
        let rope_freqs = gguf && t == "rope_freqs.weight" && c.family == Family::Llama;
        if !rope_freqs {
            return Err(extra(
                t,
                "it belongs to no block, embedding, final norm or head",
            ));
        }
    }
    for b in &desc.blocks {
        for l in &b.linears {
            let want = match l.role.as_str() {
                "q" => c.attn_bias[0],
                "k" => c.attn_bias[1],
                "v" => c.attn_bias[2],
                "o" => c.attn_bias[3],
                _ => Some(c.mlp_bias),
            };
            let origin = if gguf {
                format!("{} GGUF", c.family.model_type())
            } else {
                match (c.family, l.role.as_str()) {
                    (Family::Llama | Family::Qwen3, "q" | "k" | "v" | "o") => {
                        "config.json attention_bias".to_string()
                    }
                    (Family::Llama, _) => "config.json mlp_bias".to_string(),
                    _ => family.to_string(),
                }
            };
            match (&l.bias, want) {
                (Some(bias), Some(false)) => {
                    return Err(extra(bias, &format!("no {} bias, by {origin}", l.role)))
                }
                (None, Some(true)) => {
                    return Err(LabError::BadFile(format!(
                        "{name}: {} has no bias, but {origin} says the {} linear has one",
                        l.tensor, l.role
                    )))
                }
                _ => {}
            }
        }
        if let Some(t) = b.norms.iter().find(|n| n.ends_with(".bias")) {
            return Err(extra(t, "RMSNorm has no bias"));
        }
        for t in &b.other {
            let qk = [
                ".self_attn.q_norm.weight",
                ".self_attn.k_norm.weight",
                ".attn_q_norm.weight",
                ".attn_k_norm.weight",
            ]
            .iter()
            .any(|s| t.ends_with(s));
            // Old LLaMA conversions saved the RoPE buffer; transformers recomputes it too.
            let inv_freq = !gguf && t.ends_with(".self_attn.rotary_emb.inv_freq");
            if qk && !c.qk_norm {
                return Err(extra(
                    t,
                    "q/k norms belong to Qwen3; is the model_type / architecture right?",
                ));
            }
            if !qk && !inv_freq {
                return Err(extra(t, "not a weight of a LLaMA-family block"));
            }
        }
    }
    Ok(())
}
