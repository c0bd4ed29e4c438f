//! A trained model as files: safetensors with LLaMA names (F32) and a Hugging Face
//! config.json that records the placement. `layerlab train --out` and the page's download
//! both write through here.

use std::collections::BTreeMap;

use crate::io::safetensors::{write_f32, F32Tensor};
use crate::Result;

use super::data::Tokenizer;
use super::model::{Model, ModelConfig, Weights};
use super::TrainOptions;

/// The model's weights as safetensors (LLaMA names, F32), metadata `{"format": "pt"}`.
pub fn write_safetensors(out: &mut dyn std::io::Write, model: &Model) -> Result<()> {
    let specs = Weights::specs(&model.cfg);
    let tensors: Vec<F32Tensor> = specs
        .iter()
        .zip(model.weights.tensors())
        .map(|(s, t)| F32Tensor {
            name: s.name.clone(),
            shape: s.shape.clone(),
            data: std::borrow::Cow::Borrowed(t),
        })
        .collect();
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_f32(out, &tensors, &meta)
}

/// A Hugging Face LlamaConfig for the model, plus `layerlab`: the placement (the first
/// `post_ln_blocks` blocks are Post-LN) and, for a character model, its vocabulary.
pub fn hf_config(cfg: &ModelConfig, opts: &TrainOptions, tok: &Tokenizer) -> serde_json::Value {
    let chars = match tok {
        Tokenizer::Char(c) => Some(c.iter().collect::<String>()),
        Tokenizer::Bpe(_) => None,
    };
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.width,
        "intermediate_size": cfg.ffn,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "vocab_size": cfg.vocab,
        "max_position_embeddings": opts.ctx,
        "rms_norm_eps": super::ops::RMS_EPS,
        "rope_theta": super::ops::ROPE_THETA,
        "hidden_act": "silu",
        "tie_word_embeddings": cfg.tied_head,
        "torch_dtype": "float32",
        "layerlab": {
            "norm": opts.norm,
            "alpha": opts.alpha,
            "post_ln_blocks": cfg.post_blocks,
            "char_vocab": chars,
        },
    })
}
