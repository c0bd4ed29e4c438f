//! Architectures: which tensors of a model file make up which transformer block, and the
//! model's size (hidden width, layers, heads, ...).
//!
//! The lab works block by block (METHODS.md): a block is the unit OWL allocates sparsity to
//! and the unit of the sequential forward pass, and its linears are what get pruned. So
//! `describe` sorts every tensor of the file into the embedding, the blocks (linears by
//! role, norms, anything else), the final norm and the LM head; what fits nowhere is listed
//! in `unassigned`, never dropped.
//!
//! The architecture comes from the file's metadata (GGUF `general.architecture`) or the
//! Hugging Face config.json (`model_type`, `architectures`) when present, from the tensor
//! names otherwise. Each architecture has a naming dialect per format:
//!
//! | family | Hugging Face block tensors                      | GGUF block tensors      |
//! |--------|-------------------------------------------------|-------------------------|
//! | llama  | model.layers.N.self_attn.q_proj, mlp.gate_proj  | blk.N.attn_q, ffn_gate  |
//! | gpt2   | [transformer.]h.N.attn.c_attn, mlp.c_fc          | blk.N.attn_qkv, ffn_up  |
//! | opt    | [model.]decoder.layers.N.self_attn.q_proj, fc1   |                         |
//! | bert   | [bert.]encoder.layer.N.attention.self.query      | blk.N.attn_q, ffn_up    |

pub mod causal;
pub mod gpt2_opt;
pub mod gpu_forward;
pub mod llama;
pub mod llama_config;
pub mod rope;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::io::{MetaValue, ModelFile};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Gpt2,
    Opt,
    Bert,
    Unknown,
}

/// The model's size, as far as the metadata, the config or the tensor shapes tell.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    pub hidden: Option<usize>,
    pub layers: Option<usize>,
    pub heads: Option<usize>,
    pub kv_heads: Option<usize>,
    pub ffn: Option<usize>,
    pub vocab: Option<usize>,
    pub context: Option<usize>,
}

/// One linear layer of a block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearDesc {
    /// llama: q,k,v,o,gate,up,down; opt: q,k,v,out,fc1,fc2;
    /// gpt2: c_attn,c_proj,c_fc,mlp_c_proj; bert: query,key,value,attn_out,intermediate,output.
    pub role: String,
    /// The weight tensor's name.
    pub tensor: String,
    /// GPT-2's Conv1D stores its weight as [in, out] instead of [out, in].
    pub transposed: bool,
    pub bias: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockDesc {
    pub index: usize,
    pub linears: Vec<LinearDesc>,
    /// Norm weights and biases.
    pub norms: Vec<String>,
    /// Tensors of the block that are neither (rotary tables, q/k norms, ...).
    pub other: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelDesc {
    pub arch: Arch,
    /// As the file or config names it: "llama" (general.architecture), "bert" (model_type),
    /// "BertModel" (architectures), or the family guessed from tensor names.
    pub arch_name: String,
    pub hyper: Hyper,
    pub embedding: Option<String>,
    /// Sorted by index.
    pub blocks: Vec<BlockDesc>,
    pub final_norm: Option<String>,
    pub head: Option<String>,
    /// Tensors in no block and not the embedding, final norm or head.
    pub unassigned: Vec<String>,
    /// Something the user should know (unknown architecture, tied head).
    pub notice: Option<String>,
}

/// How one architecture names its tensors in one format.
struct Dialect {
    arch: Arch,
    /// Block tensors are `<prefix><index>.<suffix>`.
    block_prefixes: &'static [&'static str],
    /// (role, stem, transposed): the weight is `<stem>.weight`, the bias `<stem>.bias`.
    linears: &'static [(&'static str, &'static str, bool)],
    /// Norm stems: `<stem>.weight` and `<stem>.bias`.
    norms: &'static [&'static str],
    embedding: &'static [&'static str],
    final_norm: &'static [&'static str],
    head: &'static [&'static str],
}

const DIALECTS: &[Dialect] = &[
    Dialect {
        arch: Arch::Llama,
        block_prefixes: &["blk."],
        linears: &[
            ("q", "attn_q", false),
            ("k", "attn_k", false),
            ("v", "attn_v", false),
            ("o", "attn_output", false),
            ("gate", "ffn_gate", false),
            ("up", "ffn_up", false),
            ("down", "ffn_down", false),
        ],
        norms: &["attn_norm", "ffn_norm"],
        embedding: &["token_embd.weight"],
        final_norm: &["output_norm.weight"],
        head: &["output.weight"],
    },
    Dialect {
        arch: Arch::Llama,
        block_prefixes: &["model.layers.", "layers."],
        linears: &[
            ("q", "self_attn.q_proj", false),
            ("k", "self_attn.k_proj", false),
            ("v", "self_attn.v_proj", false),
            ("o", "self_attn.o_proj", false),
            ("gate", "mlp.gate_proj", false),
            ("up", "mlp.up_proj", false),
            ("down", "mlp.down_proj", false),
        ],
        norms: &["input_layernorm", "post_attention_layernorm"],
        embedding: &["model.embed_tokens.weight", "embed_tokens.weight"],
        final_norm: &["model.norm.weight", "norm.weight"],
        head: &["lm_head.weight"],
    },
    Dialect {
        arch: Arch::Gpt2,
        block_prefixes: &["transformer.h.", "h."],
        linears: &[
            ("c_attn", "attn.c_attn", true),
            ("c_proj", "attn.c_proj", true),
            ("c_fc", "mlp.c_fc", true),
            ("mlp_c_proj", "mlp.c_proj", true),
        ],
        norms: &["ln_1", "ln_2"],
        embedding: &["transformer.wte.weight", "wte.weight"],
        final_norm: &["transformer.ln_f.weight", "ln_f.weight"],
        head: &["lm_head.weight"],
    },
    Dialect {
        arch: Arch::Gpt2,
        block_prefixes: &["blk."],
        linears: &[
            ("c_attn", "attn_qkv", false),
            ("c_proj", "attn_output", false),
            ("c_fc", "ffn_up", false),
            ("mlp_c_proj", "ffn_down", false),
        ],
        norms: &["attn_norm", "ffn_norm"],
        embedding: &["token_embd.weight"],
        final_norm: &["output_norm.weight"],
        head: &["output.weight"],
    },
    Dialect {
        arch: Arch::Opt,
        block_prefixes: &["model.decoder.layers.", "decoder.layers."],
        linears: &[
            ("q", "self_attn.q_proj", false),
            ("k", "self_attn.k_proj", false),
            ("v", "self_attn.v_proj", false),
            ("out", "self_attn.out_proj", false),
            ("fc1", "fc1", false),
            ("fc2", "fc2", false),
        ],
        norms: &["self_attn_layer_norm", "final_layer_norm"],
        embedding: &[
            "model.decoder.embed_tokens.weight",
            "decoder.embed_tokens.weight",
        ],
        final_norm: &[
            "model.decoder.final_layer_norm.weight",
            "decoder.final_layer_norm.weight",
        ],
        head: &["lm_head.weight"],
    },
    Dialect {
        arch: Arch::Bert,
        block_prefixes: &["bert.encoder.layer.", "encoder.layer."],
        linears: &[
            ("query", "attention.self.query", false),
            ("key", "attention.self.key", false),
            ("value", "attention.self.value", false),
            ("attn_out", "attention.output.dense", false),
            ("intermediate", "intermediate.dense", false),
            ("output", "output.dense", false),
        ],
        norms: &["attention.output.LayerNorm", "output.LayerNorm"],
        embedding: &[
            "bert.embeddings.word_embeddings.weight",
            "embeddings.word_embeddings.weight",
        ],
        final_norm: &[],
        head: &[],
    },
    Dialect {
        arch: Arch::Bert,
        block_prefixes: &["blk."],
        linears: &[
            ("query", "attn_q", false),
            ("key", "attn_k", false),
            ("value", "attn_v", false),
            ("attn_out", "attn_output", false),
            ("intermediate", "ffn_up", false),
            ("output", "ffn_down", false),
        ],
        norms: &["attn_output_norm", "layer_output_norm"],
        embedding: &["token_embd.weight"],
        final_norm: &[],
        head: &[],
    },
];

/// The family an architecture name belongs to ("qwen2", "MistralForCausalLM", "BertModel").
fn arch_of(name: &str) -> Arch {
    let n = name.to_ascii_lowercase();
    let llama = [
        "llama",
        "mistral",
        "qwen2",
        "qwen",
        "smollm",
        "tinyllama",
        "granite",
        "olmo",
        "phi3",
    ];
    if llama.iter().any(|l| n.starts_with(l)) {
        Arch::Llama
    } else if n.starts_with("gpt2") {
        Arch::Gpt2
    } else if n.starts_with("opt") {
        Arch::Opt
    } else if n.starts_with("bert") {
        Arch::Bert
    } else {
        Arch::Unknown
    }
}

/// `<prefix><index>.<suffix>` -> (index, suffix).
fn split_block<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix(prefix)?;
    let (index, suffix) = rest.split_once('.')?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((index.parse().ok()?, suffix))
}

/// How many of the tensors this dialect recognises as block linears.
fn matches(d: &Dialect, names: &[&str]) -> usize {
    names
        .iter()
        .filter(|n| {
            d.block_prefixes.iter().any(|p| {
                split_block(n, p).is_some_and(|(_, s)| {
                    d.linears
                        .iter()
                        .any(|(_, stem, _)| s.strip_prefix(stem) == Some(".weight"))
                })
            })
        })
        .count()
}

pub fn describe(file: &ModelFile, config: Option<&Value>) -> ModelDesc {
    let names: Vec<&str> = file.tensors.iter().map(|t| t.name.as_str()).collect();
    let meta_arch = file
        .metadata
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .map(str::to_string);
    let config_arch = config.and_then(|c| {
        c.get("model_type")
            .and_then(Value::as_str)
            .or_else(|| {
                c.get("architectures")
                    .and_then(|a| a.get(0))
                    .and_then(Value::as_str)
            })
            .map(str::to_string)
    });
    let declared = meta_arch.or(config_arch);

    // The dialect that names the most block linears, among those of the declared family
    // when there is one.
    let declared_arch = declared.as_deref().map(arch_of);
    let best = DIALECTS
        .iter()
        .filter(|d| match declared_arch {
            Some(Arch::Unknown) | None => true,
            Some(a) => d.arch == a,
        })
        .map(|d| (matches(d, &names), d))
        .filter(|(n, _)| *n > 0)
        .max_by_key(|(n, _)| *n)
        .map(|(_, d)| d);

    let (arch, arch_name) = match (&declared, declared_arch, best) {
        (Some(name), Some(a), _) if a != Arch::Unknown => (a, name.clone()),
        (_, _, Some(d)) => (d.arch, format!("{:?}", d.arch).to_lowercase()),
        (Some(name), _, None) => (Arch::Unknown, name.clone()),
        (None, _, None) => (Arch::Unknown, "unknown".to_string()),
    };

    let mut desc = ModelDesc {
        arch,
        arch_name,
        hyper: Hyper::default(),
        embedding: None,
        blocks: Vec::new(),
        final_norm: None,
        head: None,
        unassigned: Vec::new(),
        notice: None,
    };
    let present: BTreeSet<&str> = names.iter().copied().collect();
    let mut assigned: BTreeSet<&str> = BTreeSet::new();
    match best {
        Some(d) if arch != Arch::Unknown => {
            assign(d, &names, &present, &mut assigned, &mut desc);
            if desc.head.is_none() && !d.head.is_empty() {
                if let Some(e) = &desc.embedding {
                    desc.notice = Some(format!(
                        "tied LM head: the file has no separate head tensor, the embedding \
                         {e} serves as the head"
                    ));
                }
            }
        }
        _ => {
            desc.notice = Some(match &declared {
                Some(n) if arch != Arch::Unknown => format!(
                    "architecture {n}, but its tensor names are not the usual ones: \
                     per-tensor statistics only"
                ),
                Some(n) => format!("unknown architecture {n}: per-tensor statistics only"),
                None => "unknown architecture: per-tensor statistics only".to_string(),
            });
        }
    }
    desc.unassigned = names
        .iter()
        .filter(|n| !assigned.contains(*n))
        .map(|n| n.to_string())
        .collect();
    desc.hyper = hyper(file, config, &desc);
    desc
}

/// Sorts the tensors into the dialect's embedding, blocks, final norm and head.
fn assign<'a>(
    d: &Dialect,
    names: &[&'a str],
    present: &BTreeSet<&str>,
    assigned: &mut BTreeSet<&'a str>,
    desc: &mut ModelDesc,
) {
    let first = |candidates: &[&str]| {
        candidates
            .iter()
            .find(|c| present.contains(**c))
            .map(|c| c.to_string())
    };
    desc.embedding = first(d.embedding);
    desc.final_norm = first(d.final_norm);
    desc.head = first(d.head);
    for n in names {
        let is_top = [&desc.embedding, &desc.final_norm, &desc.head]
            .iter()
            .any(|t| t.as_deref() == Some(*n));
        if is_top {
            assigned.insert(n);
        }
    }

    // Block tensors by index, each with its suffix.
    let mut blocks: BTreeMap<usize, Vec<(&'a str, &'a str)>> = BTreeMap::new();
    for n in names {
        if let Some((i, suffix)) = d.block_prefixes.iter().find_map(|p| split_block(n, p)) {
            blocks.entry(i).or_default().push((n, suffix));
            assigned.insert(n);
        }
    }
    for (index, tensors) in blocks {
        let find = |suffix: String| {
            tensors
                .iter()
                .find(|(_, s)| *s == suffix)
                .map(|(n, _)| n.to_string())
        };
        let mut linears = Vec::new();
        let mut used: BTreeSet<String> = BTreeSet::new();
        for (role, stem, transposed) in d.linears {
            if let Some(tensor) = find(format!("{stem}.weight")) {
                let bias = find(format!("{stem}.bias"));
                used.insert(tensor.clone());
                if let Some(b) = &bias {
                    used.insert(b.clone());
                }
                linears.push(LinearDesc {
                    role: role.to_string(),
                    tensor,
                    transposed: *transposed,
                    bias,
                });
            }
        }
        let mut norms = Vec::new();
        for stem in d.norms {
            for part in ["weight", "bias"] {
                if let Some(t) = find(format!("{stem}.{part}")) {
                    used.insert(t.clone());
                    norms.push(t);
                }
            }
        }
        let other = tensors
            .iter()
            .filter(|(n, _)| !used.contains(*n))
            .map(|(n, _)| n.to_string())
            .collect();
        desc.blocks.push(BlockDesc {
            index,
            linears,
            norms,
            other,
        });
    }
}

/// Sizes: GGUF metadata first, then config.json, then what the tensor shapes show.
fn hyper(file: &ModelFile, config: Option<&Value>, desc: &ModelDesc) -> Hyper {
    let meta = |key: &str| -> Option<usize> {
        file.metadata
            .get(&format!("{}.{key}", desc.arch_name))
            .and_then(MetaValue::as_u64)
            .and_then(|v| usize::try_from(v).ok())
    };
    let conf = |keys: &[&str]| -> Option<usize> {
        let c = config?;
        keys.iter().find_map(|k| {
            c.get(k)
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
        })
    };
    let shape = |name: &Option<String>| {
        name.as_deref()
            .and_then(|n| file.tensor(n))
            .map(|t| t.shape.clone())
    };
    let embedding_shape = shape(&desc.embedding);
    let tokens = file
        .metadata
        .get("tokenizer.ggml.tokens")
        .and_then(|v| match v {
            MetaValue::Array(a) => Some(a.len()),
            _ => None,
        });
    // The FFN width is the output size of the first FFN linear (gate/up/fc1/c_fc/intermediate).
    let ffn_from_shapes = desc.blocks.first().and_then(|b| {
        b.linears
            .iter()
            .find(|l| ["up", "fc1", "c_fc", "intermediate"].contains(&l.role.as_str()))
            .and_then(|l| {
                let s = file.tensor(&l.tensor)?.shape.clone();
                if l.transposed {
                    s.get(1).copied()
                } else {
                    s.first().copied()
                }
            })
    });

    let heads = meta("attention.head_count").or(conf(&["num_attention_heads", "n_head"]));
    Hyper {
        hidden: meta("embedding_length")
            .or(conf(&["hidden_size", "n_embd", "d_model"]))
            .or(embedding_shape.as_ref().and_then(|s| s.get(1).copied())),
        layers: meta("block_count")
            .or(conf(&["num_hidden_layers", "n_layer"]))
            .or((!desc.blocks.is_empty()).then_some(desc.blocks.len())),
        heads,
        kv_heads: meta("attention.head_count_kv")
            .or(conf(&["num_key_value_heads"]))
            .or(heads),
        ffn: meta("feed_forward_length")
            .or(conf(&["intermediate_size", "ffn_dim", "n_inner"]))
            .or(ffn_from_shapes),
        vocab: meta("vocab_size")
            .or(tokens)
            .or(conf(&["vocab_size"]))
            .or(embedding_shape.as_ref().and_then(|s| s.first().copied())),
        context: meta("context_length").or(conf(&["max_position_embeddings", "n_positions"])),
    }
}
