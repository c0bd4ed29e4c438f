//! One interface over the causal LMs the pruning lab runs: the LLaMA family (`llama`),
//! GPT-2 and OPT (`gpt2_opt`). The driver, perplexity and export see a `&dyn CausalLm`:
//!
//! ```text
//! ends = load_ends()                       embedding (+ positions), final norm, head
//! x = embed(ends, windows)                 (B,T,C)
//! for l < layers(): w = load_block(l)      one block's weights resident at a time
//!     x = block_forward(w, x, rope, obs)   Observer: each distinct linear input (N, in)
//! logits(ends, x)                          (B,T,V)
//! ```
//!
//! `roles()` names the linears of a block in forward order (what gets pruned, METHODS.md
//! "Which weights are pruned"); `Block::linear(role)` is always (out, in), GPT-2's Conv1D
//! included. `rope(T)` is LLaMA's RoPE table (None for the learned-position families).
//! The GPU block (`gpu_forward::block_forward_on`) is LLaMA-only: callers reach it through
//! `as_llama()` and run GPT-2 and OPT blocks on the CPU.
//!
//! The trait's method names repeat the families' own (`load_block`, `embed`, ...): on a
//! concrete `Llama` the inherent methods (LLaMA types) win, on a `&dyn CausalLm` these do.

use candle_core::Tensor;
use serde_json::Value;

use crate::io::safetensors::F32Tensor;
use crate::io::{ByteSource, ModelFile};
use crate::model::gpt2_opt::{Gpt2Opt, LnBlock};
use crate::model::llama::{to_vec, BlockWeights, Ends, Family, Linear, Llama, Observer, Rope};
use crate::model::{describe, Arch, ModelDesc};
use crate::{LabError, Result};

/// One block's weights, of whichever family.
pub enum Block {
    Llama(Box<BlockWeights>),
    /// GPT-2 or OPT.
    Ln(LnBlock),
}

impl Block {
    pub fn index(&self) -> usize {
        match self {
            Block::Llama(w) => w.index,
            Block::Ln(w) => w.index,
        }
    }

    /// The linear of `role`, weight (out, in).
    pub fn linear(&self, role: &str) -> Option<&Linear> {
        match self {
            Block::Llama(w) => w.linear(role),
            Block::Ln(w) => w.linear(role),
        }
    }

    /// Replaces the weight of `role` with `weight`, (out, in) row-major.
    pub fn set_weight(&mut self, role: &str, weight: Vec<f32>) -> Result<()> {
        match self {
            Block::Llama(w) => w.set_weight(role, weight),
            Block::Ln(w) => w.set_weight(role, weight),
        }
    }
}

/// A causal LM run block by block; see the module comment.
pub trait CausalLm {
    /// The model's name (its file), for messages.
    fn name(&self) -> &str;
    fn desc(&self) -> &ModelDesc;
    fn layers(&self) -> usize;
    fn vocab(&self) -> usize;
    /// The linear roles of every block, in forward order.
    fn roles(&self) -> &'static [&'static str];
    fn load_ends(&self) -> Result<Ends>;
    fn load_block(&self, index: usize) -> Result<Block>;
    /// Tables for windows of `t` tokens: LLaMA's RoPE; None for learned positions.
    fn rope(&self, t: usize) -> Result<Option<Rope>>;
    /// B windows of T ids -> x (B,T,C).
    fn embed(&self, ends: &Ends, windows: &[&[u32]]) -> Result<Tensor>;
    /// One block on x (B,T,C) -> (B,T,C), on the CPU.
    fn block_forward(
        &self,
        w: &Block,
        x: &Tensor,
        rope: Option<&Rope>,
        obs: &mut dyn Observer,
    ) -> Result<Tensor>;
    /// x (B,T,C) -> logits (B,T,V).
    fn logits(&self, ends: &Ends, x: &Tensor) -> Result<Tensor>;
    /// The LLaMA model, for the GPU block path.
    fn as_llama(&self) -> Option<&Llama<'_>>;
    /// Every tensor of the model with Hugging Face names and orientation, in file order,
    /// handed to `sink` one at a time; each block's weights from `block(i)` (the pruned
    /// ones on export), so one block is resident at a time.
    fn export_tensors(
        &self,
        block: &dyn Fn(usize) -> Result<Block>,
        sink: &mut dyn FnMut(F32Tensor<'_>) -> Result<()>,
    ) -> Result<()>;
    /// A Hugging Face config.json for the export.
    fn hf_config(&self) -> Value;
}

fn wrong_block(model: &str, family: &str) -> LabError {
    LabError::invalid(format!(
        "{model}: a block of another family was passed to this {family} model"
    ))
}

impl CausalLm for Llama<'_> {
    fn name(&self) -> &str {
        Llama::name(self)
    }
    fn desc(&self) -> &ModelDesc {
        &self.desc
    }
    fn layers(&self) -> usize {
        self.config.layers
    }
    fn vocab(&self) -> usize {
        self.config.vocab
    }
    fn roles(&self) -> &'static [&'static str] {
        &BlockWeights::ROLES
    }
    fn load_ends(&self) -> Result<Ends> {
        Llama::load_ends(self)
    }
    fn load_block(&self, index: usize) -> Result<Block> {
        Llama::load_block(self, index).map(|w| Block::Llama(Box::new(w)))
    }
    fn rope(&self, t: usize) -> Result<Option<Rope>> {
        Llama::rope(self, t).map(Some)
    }
    fn embed(&self, ends: &Ends, windows: &[&[u32]]) -> Result<Tensor> {
        Llama::embed(self, ends, windows)
    }
    fn block_forward(
        &self,
        w: &Block,
        x: &Tensor,
        rope: Option<&Rope>,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        let Block::Llama(w) = w else {
            return Err(wrong_block(Llama::name(self), "LLaMA"));
        };
        let rope = rope.ok_or_else(|| LabError::invalid("a LLaMA block needs its RoPE tables"))?;
        Llama::block_forward(self, w, x, rope, obs)
    }
    fn logits(&self, ends: &Ends, x: &Tensor) -> Result<Tensor> {
        Llama::logits(self, ends, x)
    }
    fn as_llama(&self) -> Option<&Llama<'_>> {
        Some(self)
    }

    /// Hugging Face LLaMA names, all F32:
    ///
    /// ```text
    /// model.embed_tokens.weight                                (V, C)
    /// model.layers.{i}.input_layernorm.weight                  (C)
    /// model.layers.{i}.self_attn.{q,k,v,o}_proj.weight (+.bias where the model has one)
    /// model.layers.{i}.post_attention_layernorm.weight         (C)
    /// model.layers.{i}.mlp.{gate,up,down}_proj.weight
    /// model.norm.weight                                        (C)
    /// lm_head.weight                                           (V, C), only when not tied
    /// ```
    ///
    /// q/k rows are in Hugging Face's order (GGUF's llama.cpp permutation undone).
    fn export_tensors(
        &self,
        block: &dyn Fn(usize) -> Result<Block>,
        sink: &mut dyn FnMut(F32Tensor<'_>) -> Result<()>,
    ) -> Result<()> {
        let ends = Llama::load_ends(self)?;
        let c = &self.config;
        let t = |name: String, shape: Vec<usize>, data: Vec<f32>| F32Tensor {
            name,
            shape,
            data: data.into(),
        };
        sink(t(
            "model.embed_tokens.weight".into(),
            vec![c.vocab, c.hidden],
            to_vec(&ends.embed)?,
        ))?;
        for i in 0..c.layers {
            let Block::Llama(w) = block(i)? else {
                return Err(wrong_block(Llama::name(self), "LLaMA"));
            };
            let p = format!("model.layers.{i}");
            sink(t(
                format!("{p}.input_layernorm.weight"),
                vec![c.hidden],
                to_vec(&w.attn_norm)?,
            ))?;
            if let Some((q_norm, k_norm)) = &w.qk_norm {
                for (which, norm) in [("q_norm", q_norm), ("k_norm", k_norm)] {
                    sink(t(
                        format!("{p}.self_attn.{which}.weight"),
                        vec![c.head_dim],
                        to_vec(norm)?,
                    ))?;
                }
            }
            for role in BlockWeights::ROLES {
                if role == "gate" {
                    sink(t(
                        format!("{p}.post_attention_layernorm.weight"),
                        vec![c.hidden],
                        to_vec(&w.ffn_norm)?,
                    ))?;
                }
                let lin = w.linear(role).expect("a LLaMA role");
                let stem = format!("{p}.{}", hf_llama_linear(role));
                sink(t(
                    format!("{stem}.weight"),
                    lin.weight.dims().to_vec(),
                    to_vec(&lin.weight)?,
                ))?;
                if let Some(b) = &lin.bias {
                    sink(t(format!("{stem}.bias"), b.dims().to_vec(), to_vec(b)?))?;
                }
            }
        }
        sink(t(
            "model.norm.weight".into(),
            vec![c.hidden],
            to_vec(&ends.final_norm)?,
        ))?;
        if self.desc.head.is_some() {
            sink(t(
                "lm_head.weight".into(),
                vec![c.vocab, c.hidden],
                to_vec(&ends.head)?,
            ))?;
        }
        Ok(())
    }

    /// From the model's own sizes: what transformers needs to load a GGUF source's export.
    fn hf_config(&self) -> Value {
        let c = &self.config;
        let (arch, model_type) = (c.family.hf_class(), c.family.model_type());
        let has_bias = self.desc.blocks.first().is_some_and(|b| {
            b.linears
                .iter()
                .any(|l| matches!(l.role.as_str(), "q" | "k" | "v") && l.bias.is_some())
        });
        let mut v = serde_json::json!({
            "architectures": [arch],
            "model_type": model_type,
            "hidden_size": c.hidden,
            "intermediate_size": c.ffn,
            "num_attention_heads": c.heads,
            "num_key_value_heads": c.kv_heads,
            "num_hidden_layers": c.layers,
            "head_dim": c.head_dim,
            "vocab_size": c.vocab,
            "rms_norm_eps": c.rms_eps,
            "rope_theta": c.rope.theta,
            "rope_scaling": crate::model::rope::hf_rope_scaling(&c.rope),
            "hidden_act": "silu",
            "tie_word_embeddings": self.desc.head.is_none(),
            "torch_dtype": "float32",
        });
        if let Some(w) = c.sliding_window {
            v["sliding_window"] = serde_json::json!(w);
            if matches!(c.family, Family::Qwen2 | Family::Qwen3) {
                v["use_sliding_window"] = serde_json::json!(true);
            }
        }
        if c.family == Family::Qwen3 {
            v["attention_bias"] = serde_json::json!(has_bias);
        }
        if model_type == "llama" {
            v["attention_bias"] = serde_json::json!(has_bias);
            v["mlp_bias"] = serde_json::json!(c.mlp_bias);
        }
        if let Some(ctx) = self.desc.hyper.context {
            v["max_position_embeddings"] = serde_json::json!(ctx);
        }
        v
    }
}

/// The Hugging Face name of a LLaMA linear role.
fn hf_llama_linear(role: &str) -> &'static str {
    match role {
        "q" => "self_attn.q_proj",
        "k" => "self_attn.k_proj",
        "v" => "self_attn.v_proj",
        "o" => "self_attn.o_proj",
        "gate" => "mlp.gate_proj",
        "up" => "mlp.up_proj",
        _ => "mlp.down_proj",
    }
}

impl CausalLm for Gpt2Opt<'_> {
    fn name(&self) -> &str {
        Gpt2Opt::name(self)
    }
    fn desc(&self) -> &ModelDesc {
        &self.desc
    }
    fn layers(&self) -> usize {
        self.config.layers
    }
    fn vocab(&self) -> usize {
        self.config.vocab
    }
    fn roles(&self) -> &'static [&'static str] {
        Gpt2Opt::roles(self)
    }
    fn load_ends(&self) -> Result<Ends> {
        Gpt2Opt::load_ends(self)
    }
    fn load_block(&self, index: usize) -> Result<Block> {
        Gpt2Opt::load_block(self, index).map(Block::Ln)
    }
    fn rope(&self, _t: usize) -> Result<Option<Rope>> {
        Ok(None)
    }
    fn embed(&self, ends: &Ends, windows: &[&[u32]]) -> Result<Tensor> {
        Gpt2Opt::embed(self, ends, windows)
    }
    fn block_forward(
        &self,
        w: &Block,
        x: &Tensor,
        _rope: Option<&Rope>,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        let Block::Ln(w) = w else {
            return Err(wrong_block(Gpt2Opt::name(self), "GPT-2/OPT"));
        };
        Gpt2Opt::block_forward(self, w, x, obs)
    }
    fn logits(&self, ends: &Ends, x: &Tensor) -> Result<Tensor> {
        Gpt2Opt::logits(self, ends, x)
    }
    fn as_llama(&self) -> Option<&Llama<'_>> {
        None
    }
    fn export_tensors(
        &self,
        block: &dyn Fn(usize) -> Result<Block>,
        sink: &mut dyn FnMut(F32Tensor<'_>) -> Result<()>,
    ) -> Result<()> {
        let name = Gpt2Opt::name(self).to_string();
        Gpt2Opt::export_tensors(
            self,
            &|i| match block(i)? {
                Block::Ln(w) => Ok(w),
                Block::Llama(_) => Err(wrong_block(&name, "GPT-2/OPT")),
            },
            sink,
        )
    }
    fn hf_config(&self) -> Value {
        Gpt2Opt::hf_config(self)
    }
}

/// The model of whichever family the file and config.json declare (`describe`): LLaMA
/// family, GPT-2 or OPT; any other architecture is an error naming it.
pub fn load_causal_lm<'a>(
    src: &'a dyn ByteSource,
    file: &'a ModelFile,
    config: Option<&Value>,
) -> Result<Box<dyn CausalLm + 'a>> {
    match describe(file, config).arch {
        Arch::Gpt2 | Arch::Opt => Ok(Box::new(Gpt2Opt::new(src, file, config)?)),
        // Llama::new names the architecture when it is not one it runs.
        _ => Ok(Box::new(Llama::new(src, file, config)?)),
    }
}

/// `batches_forward_on` for any family: every batch of `xs` through block `w` with no
/// Observer (LLaMA blocks on the backend's GPU with the weights uploaded once; GPT-2 and OPT
/// on the CPU); a GPU failure's notice is returned.
pub async fn batches_forward_on_any(
    backend: &crate::compute::Backend,
    model: &dyn CausalLm,
    w: &Block,
    xs: &mut [Tensor],
    rope: Option<&Rope>,
    ctl: &dyn crate::compute::RunControl,
) -> Result<Option<String>> {
    if let (Some(llama), Block::Llama(bw), Some(rope)) = (model.as_llama(), w, rope) {
        return crate::model::gpu_forward::batches_forward_on(backend, llama, bw, xs, rope, ctl)
            .await;
    }
    for x in xs.iter_mut() {
        crate::compute::backend::checkpoint(ctl).await?;
        *x = model.block_forward(w, x, rope, &mut crate::model::llama::NoObserver)?;
    }
    Ok(None)
}

/// One block of any family on `backend`: LLaMA blocks through `block_forward_on` (the
/// backend's GPU where it has one; a GPU failure finishes on the CPU and the notice says
/// so); GPT-2 and OPT blocks always on the CPU (there is no GPU block for them yet).
pub async fn block_forward_on_any(
    backend: &crate::compute::Backend,
    model: &dyn CausalLm,
    w: &Block,
    x: &Tensor,
    rope: Option<&Rope>,
    obs: &mut dyn Observer,
) -> Result<(Tensor, Option<String>)> {
    if let (Some(llama), Block::Llama(bw), Some(rope)) = (model.as_llama(), w, rope) {
        return crate::model::gpu_forward::block_forward_on(backend, llama, bw, x, rope, obs).await;
    }
    Ok((model.block_forward(w, x, rope, obs)?, None))
}

/// Why the pruning lab cannot run this LLaMA-family model (None when it can, or when the
/// model is of another family, whose loader says why itself): the checks `Llama::new` makes
/// before reading a weight, for a view that opens any model (statistics) and wants to say
/// up front that the forward pass will refuse it.
pub fn llama_forward_refusal(
    file: &ModelFile,
    config: Option<&Value>,
    name: &str,
) -> Option<String> {
    let desc = describe(file, config);
    if desc.arch != Arch::Llama {
        return None;
    }
    let check = || -> Result<()> {
        let c = crate::model::llama::LlamaConfig::new(file, &desc, config, name)?;
        crate::model::llama_config::check_tensors(file, &desc, &c, name)
    };
    check()
        .err()
        .map(|e| format!("the pruning lab cannot run this model: {e}"))
}
