//! The forward passes of GPT-2 and OPT on the CPU, in f32, block by block: the pruning
//! lab's calibration and evaluation pass for the two LayerNorm families, as `llama` is for
//! the RMSNorm one. Both are pre-LN decoders with learned absolute positions, multi-head
//! attention with biases and a two-layer MLP; they differ in four places, marked below.
//!
//! Shapes as in `llama`: B windows, T tokens, C hidden, H heads, D = C / H, F FFN width,
//! V vocabulary, P rows of the position table; N = B T rows when a linear sees every token.
//!
//! ```text
//! x = wte[ids] + wpe[t + off]             off = 0 (GPT-2), 2 (OPT: fairseq's padding offset)
//! for each block:                                             pre-LN, residual
//!     h = LN(x; ln1)                  LN(x) = (x - mean_c x) / sqrt(var_c x + eps) * w + b
//!     q, k, v = GPT-2: split(h Wattn^T + battn)   (one fused (3C, C) linear, "c_attn")
//!               OPT:   h Wq^T + bq, h Wk^T + bk, h Wv^T + bv
//!     a = softmax(q k^T / sqrt(D) + causal) v                (B,H,T,D) -> (N, C)
//!     x = x + a Wo^T + bo                                     GPT-2 attn.c_proj, OPT out_proj
//!     h = LN(x; ln2)
//!     x = x + act(h W1^T + b1) W2^T + b2     act: GPT-2 gelu_new (tanh), OPT ReLU
//! logits = LN(x; final) Whead^T                               Whead = wte (tied)
//! ```
//!
//! GPT-2 keeps its linears in `Conv1D` modules whose weights are stored (in, out); they are
//! transposed on load, so every `Linear` here is (out, in) like LLaMA's and the pruning code
//! (rows = outputs) needs no special case; the export transposes them back.
//!
//! The Observer sees one input per distinct linear input, (N, in): GPT-2 c_attn, c_proj,
//! c_fc, mlp_c_proj; OPT q,k,v (shared), out, fc1, fc2.
//!
//! What this module refuses: OPT-350m's layout (`do_layer_norm_before` false, post-LN, and
//! `project_in`/`project_out` with `word_embed_proj_dim` != hidden), GPT-2's optional
//! attention variants (`scale_attn_by_inverse_layer_idx`, unscaled attention), other
//! activations, and GPT-2 from GGUF (llama.cpp stores its tensors in another layout).

use candle_core::{Device, Tensor, D};
use serde_json::{json, Value};

use crate::error::candle_failed::forward as ce;
use crate::io::safetensors::F32Tensor;
use crate::io::{ByteSource, Format, MetaValue, ModelFile};
use crate::model::llama::{causal_attend, to_vec, Ends, Linear, Observer};
use crate::model::{describe, Arch, ModelDesc};
use crate::{LabError, Result};

/// The MLP's nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): GPT-2's "gelu_new".
    GeluTanh,
    /// 0.5 x (1 + erf(x / sqrt 2)): "gelu".
    GeluErf,
    /// max(x, 0): OPT.
    Relu,
}

impl Activation {
    fn from_name(name: &str) -> Option<Activation> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "gelu" => Some(Activation::GeluErf),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }

    /// The config.json name.
    pub fn name(&self) -> &'static str {
        match self {
            Activation::GeluTanh => "gelu_new",
            Activation::GeluErf => "gelu",
            Activation::Relu => "relu",
        }
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::GeluTanh => x.gelu(),
            Activation::GeluErf => x.gelu_erf(),
            Activation::Relu => x.relu(),
        }
        .map_err(ce)
    }
}

/// The sizes and constants of a GPT-2 or OPT forward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpt2OptConfig {
    /// `Arch::Gpt2` or `Arch::Opt`.
    pub arch: Arch,
    /// C
    pub hidden: usize,
    pub layers: usize,
    /// H
    pub heads: usize,
    /// D = C / H
    pub head_dim: usize,
    /// F
    pub ffn: usize,
    /// V
    pub vocab: usize,
    /// P: rows of the position table (GPT-2 `n_positions`; OPT `max_position_embeddings`
    /// + 2). A window may have at most P - `position_offset` tokens.
    pub positions: usize,
    /// Token t reads position row t + offset: 0 for GPT-2, 2 for OPT.
    pub position_offset: usize,
    /// LayerNorm's eps: GPT-2 `layer_norm_epsilon` (default 1e-5); OPT 1e-5 (nn.LayerNorm's).
    pub eps: f64,
    pub activation: Activation,
}

/// y = LN(x) = (x - mean) / sqrt(var + eps) * weight + bias over the last dim (var biased).
pub struct LayerNorm {
    /// (C,)
    pub weight: Tensor,
    /// (C,)
    pub bias: Tensor,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1).map_err(ce)?;
        let xc = x.broadcast_sub(&mean).map_err(ce)?;
        let var = xc.sqr().map_err(ce)?.mean_keepdim(D::Minus1).map_err(ce)?;
        let inv = (var + eps)
            .map_err(ce)?
            .sqrt()
            .map_err(ce)?
            .recip()
            .map_err(ce)?;
        xc.broadcast_mul(&inv)
            .and_then(|y| y.broadcast_mul(&self.weight))
            .and_then(|y| y.broadcast_add(&self.bias))
            .map_err(ce)
    }
}

/// One GPT-2 or OPT block's weights, resident while the block runs. Every linear is
/// (out, in), GPT-2's Conv1D weights included (transposed on load).
pub struct LnBlock {
    pub index: usize,
    /// GPT-2 `ln_1`, OPT `self_attn_layer_norm`.
    pub attn_norm: LayerNorm,
    /// GPT-2 `ln_2`, OPT `final_layer_norm` (of the block).
    pub ffn_norm: LayerNorm,
    /// (role, linear) in the order of the family's roles.
    pub linears: Vec<(&'static str, Linear)>,
}

impl LnBlock {
    pub fn linear(&self, role: &str) -> Option<&Linear> {
        self.linears
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, l)| l)
    }

    /// Replaces the weight of `role` with `weight`, (out, in) row-major.
    pub fn set_weight(&mut self, role: &str, weight: Vec<f32>) -> Result<()> {
        let index = self.index;
        let lin = self
            .linears
            .iter_mut()
            .find(|(r, _)| *r == role)
            .map(|(_, l)| l)
            .ok_or_else(|| LabError::invalid(format!("block {index} has no '{role}' linear")))?;
        lin.set_weight(&format!("block {index} {role}"), weight)
    }
}

/// GPT-2's linear roles, in forward order.
pub const GPT2_ROLES: [&str; 4] = ["c_attn", "c_proj", "c_fc", "mlp_c_proj"];
/// OPT's linear roles, in forward order.
pub const OPT_ROLES: [&str; 6] = ["q", "k", "v", "out", "fc1", "fc2"];

/// A GPT-2 or OPT model whose weights stay in the file until a block needs them.
pub struct Gpt2Opt<'a> {
    src: &'a dyn ByteSource,
    file: &'a ModelFile,
    pub desc: ModelDesc,
    pub config: Gpt2OptConfig,
    name: String,
}

/// A config.json number (or its default); an error when present but not a number.
fn conf_f64(c: &Value, key: &str, default: f64, name: &str) -> Result<f64> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_f64().ok_or_else(|| {
            LabError::BadFile(format!("{name}: config.json's {key} is not a number: {v}"))
        }),
    }
}

fn conf_bool(c: &Value, key: &str, default: bool) -> Option<bool> {
    match c.get(key) {
        None | Some(Value::Null) => Some(default),
        Some(v) => v.as_bool(),
    }
}

impl<'a> Gpt2Opt<'a> {
    /// `config` is the Hugging Face config.json beside the safetensors file (required).
    pub fn new(
        src: &'a dyn ByteSource,
        file: &'a ModelFile,
        config: Option<&Value>,
    ) -> Result<Gpt2Opt<'a>> {
        let name = src.name();
        let desc = describe(file, config);
        let bad = |msg: String| LabError::BadFile(format!("{name}: {msg}"));
        let arch = desc.arch;
        let family = match arch {
            Arch::Gpt2 => "GPT-2",
            Arch::Opt => "OPT",
            _ => {
                return Err(bad(format!(
                    "this forward pass runs GPT-2 and OPT models; this is '{}'",
                    desc.arch_name
                )))
            }
        };
        let gguf = file.format == Format::Gguf;
        if gguf && arch != Arch::Gpt2 {
            return Err(bad(format!(
                "{family} is read from Hugging Face safetensors (with config.json); llama.cpp's \
                 GGUF has no {family} layout"
            )));
        }
        // A GGUF GPT-2 (llama.cpp's `gpt2`: blk.N.attn_qkv, ffn_up, position_embd, ...)
        // carries its sizes and eps in its metadata and needs no config.json.
        let c = match config {
            Some(c) => c,
            None if gguf => &Value::Null,
            None => {
                return Err(bad(format!(
                    "a {family} safetensors model needs its config.json for the forward pass"
                )))
            }
        };
        let h = &desc.hyper;
        let need = |v: Option<usize>, what: &str| {
            v.filter(|&n| n > 0)
                .ok_or_else(|| bad(format!("the model does not say its {what}")))
        };
        let hidden = need(h.hidden, "hidden width")?;
        let heads = need(h.heads, "number of attention heads")?;
        let layers = need(h.layers, "number of blocks")?;
        let ffn = need(h.ffn, "FFN width")?;
        let vocab = need(h.vocab, "vocabulary size")?;
        if hidden % heads != 0 {
            return Err(bad(format!(
                "hidden width {hidden} is not a multiple of the {heads} attention heads"
            )));
        }
        let act_name = |default: &str| -> String {
            c.get("activation_function")
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_string()
        };
        let (eps, act, offset) = match arch {
            Arch::Gpt2 if gguf => {
                // llama.cpp's GPT-2 graph: LayerNorm with the metadata's eps, GELU in its
                // tanh form (ggml_gelu), i.e. gelu_new.
                let eps = match file.metadata.get("gpt2.attention.layer_norm_epsilon") {
                    Some(MetaValue::Float(v)) if *v > 0.0 && v.is_finite() => *v,
                    Some(v) => {
                        return Err(bad(format!(
                            "gpt2.attention.layer_norm_epsilon is {v:?}, not a positive number"
                        )))
                    }
                    None => 1e-5,
                };
                (eps, "gelu_new".to_string(), 0)
            }
            Arch::Gpt2 => {
                if conf_bool(c, "scale_attn_weights", true) != Some(true)
                    || conf_bool(c, "scale_attn_by_inverse_layer_idx", false) != Some(false)
                {
                    return Err(bad(
                        "config.json asks for a GPT-2 attention variant (scale_attn_weights \
                         false or scale_attn_by_inverse_layer_idx true) that is not supported"
                            .into(),
                    ));
                }
                let eps = conf_f64(c, "layer_norm_epsilon", 1e-5, &name)?;
                (eps, act_name("gelu_new"), 0)
            }
            _ => {
                if conf_bool(c, "do_layer_norm_before", true) != Some(true) {
                    return Err(bad(
                        "config.json has do_layer_norm_before false (OPT-350m's post-LN \
                         layout), which is not supported"
                            .into(),
                    ));
                }
                let proj = c
                    .get("word_embed_proj_dim")
                    .and_then(Value::as_u64)
                    .map_or(hidden, |v| v as usize);
                let has_proj = file.tensors.iter().any(|t| {
                    t.name.contains("decoder.project_in") || t.name.contains("decoder.project_out")
                });
                if proj != hidden || has_proj {
                    return Err(bad(format!(
                        "word_embed_proj_dim {proj} differs from hidden_size {hidden} (OPT-350m's \
                         project_in/project_out), which is not supported"
                    )));
                }
                if conf_bool(c, "layer_norm_elementwise_affine", true) != Some(true) {
                    return Err(bad(
                        "config.json has layer_norm_elementwise_affine false, which is not \
                         supported"
                            .into(),
                    ));
                }
                (1e-5, act_name("relu"), 2)
            }
        };
        let activation = Activation::from_name(&act).ok_or_else(|| {
            bad(format!(
                "activation_function '{act}' is not supported (gelu_new, gelu, relu)"
            ))
        })?;
        if desc.blocks.len() != layers {
            return Err(bad(format!(
                "the config says {layers} blocks, the file has tensors for {}",
                desc.blocks.len()
            )));
        }
        let mut model = Gpt2Opt {
            src,
            file,
            desc,
            config: Gpt2OptConfig {
                arch,
                hidden,
                layers,
                heads,
                head_dim: hidden / heads,
                ffn,
                vocab,
                positions: 0,
                position_offset: offset,
                eps,
                activation,
            },
            name,
        };
        let pos = model.positions_tensor()?;
        let t = model.file.tensor(&pos).expect("found by name");
        if t.shape.len() != 2 || t.shape[1] != hidden || t.shape[0] <= offset {
            return Err(model.bad(format!(
                "{pos}: expected shape [positions, {hidden}], found {:?}",
                t.shape
            )));
        }
        model.config.positions = t.shape[0];
        Ok(model)
    }

    fn bad(&self, msg: String) -> LabError {
        LabError::BadFile(format!("{}: {msg}", self.name))
    }

    /// The model's name (its file), for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the position table: `[transformer.]wpe.weight`,
    /// `[model.]decoder.embed_positions.weight`.
    fn positions_tensor(&self) -> Result<String> {
        let candidates: &[&str] = match self.config.arch {
            Arch::Gpt2 => &[
                "transformer.wpe.weight",
                "wpe.weight",
                "position_embd.weight",
            ],
            _ => &[
                "model.decoder.embed_positions.weight",
                "decoder.embed_positions.weight",
            ],
        };
        candidates
            .iter()
            .find(|n| self.file.tensor(n).is_some())
            .map(|n| n.to_string())
            .ok_or_else(|| {
                self.bad(format!(
                    "no position embedding (looked for {})",
                    candidates.join(", ")
                ))
            })
    }

    /// The family's linear roles, in forward order.
    pub fn roles(&self) -> &'static [&'static str] {
        match self.config.arch {
            Arch::Gpt2 => &GPT2_ROLES,
            _ => &OPT_ROLES,
        }
    }

    fn read(&self, tensor: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self
            .file
            .tensor(tensor)
            .ok_or_else(|| self.bad(format!("tensor {tensor} is missing")))?;
        if t.shape != shape {
            return Err(self.bad(format!(
                "{tensor}: expected shape {shape:?}, found {:?}",
                t.shape
            )));
        }
        self.file.read_f32(self.src, t)
    }

    fn tensor(&self, tensor: &str, shape: &[usize]) -> Result<Tensor> {
        let data = self.read(tensor, shape)?;
        Tensor::from_vec(data, shape, &Device::Cpu).map_err(ce)
    }

    /// (out, in) and, for GPT-2's Conv1D, the file's (in, out) transposed.
    fn linear(&self, block: usize, role: &str, out: usize, inp: usize) -> Result<Linear> {
        let l = self.desc.blocks[block]
            .linears
            .iter()
            .find(|l| l.role == role)
            .ok_or_else(|| self.bad(format!("block {block} has no '{role}' linear")))?;
        let weight = if l.transposed {
            let w = self.tensor(&l.tensor, &[inp, out])?;
            w.t().and_then(|w| w.contiguous()).map_err(ce)?
        } else {
            self.tensor(&l.tensor, &[out, inp])?
        };
        let bias = match &l.bias {
            Some(b) => Some(self.tensor(b, &[out])?),
            None => None,
        };
        Ok(Linear::new(weight, bias))
    }

    /// A LayerNorm's weight and bias from the tensor name of its weight.
    fn layer_norm(&self, weight: &str) -> Result<LayerNorm> {
        let c = self.config.hidden;
        let bias = weight
            .strip_suffix(".weight")
            .map(|s| format!("{s}.bias"))
            .unwrap_or_default();
        Ok(LayerNorm {
            weight: self.tensor(weight, &[c])?,
            bias: self.tensor(&bias, &[c])?,
        })
    }

    /// Block `index`'s weights, read from the file now.
    pub fn load_block(&self, index: usize) -> Result<LnBlock> {
        let c = &self.config;
        let (cc, f) = (c.hidden, c.ffn);
        let b = self.desc.blocks.get(index).ok_or_else(|| {
            LabError::invalid(format!(
                "{}: there is no block {index} ({} blocks)",
                self.name,
                self.desc.blocks.len()
            ))
        })?;
        let stems: [&str; 2] = match c.arch {
            Arch::Gpt2 if self.file.format == Format::Gguf => {
                [".attn_norm.weight", ".ffn_norm.weight"]
            }
            Arch::Gpt2 => [".ln_1.weight", ".ln_2.weight"],
            _ => [".self_attn_layer_norm.weight", ".final_layer_norm.weight"],
        };
        let norm = |which: usize| -> Result<LayerNorm> {
            let name = b
                .norms
                .iter()
                .find(|n| n.ends_with(stems[which]))
                .ok_or_else(|| {
                    self.bad(format!(
                        "block {index} has no {} LayerNorm",
                        ["attention", "MLP"][which]
                    ))
                })?;
            self.layer_norm(name)
        };
        let shapes: Vec<(&'static str, usize, usize)> = match c.arch {
            Arch::Gpt2 => vec![
                ("c_attn", 3 * cc, cc),
                ("c_proj", cc, cc),
                ("c_fc", f, cc),
                ("mlp_c_proj", cc, f),
            ],
            _ => vec![
                ("q", cc, cc),
                ("k", cc, cc),
                ("v", cc, cc),
                ("out", cc, cc),
                ("fc1", f, cc),
                ("fc2", cc, f),
            ],
        };
        let mut linears = Vec::with_capacity(shapes.len());
        for (role, out, inp) in shapes {
            linears.push((role, self.linear(index, role, out, inp)?));
        }
        Ok(LnBlock {
            index,
            attn_norm: norm(0)?,
            ffn_norm: norm(1)?,
            linears,
        })
    }

    /// The token and position embeddings, the final LayerNorm and the head (the token
    /// embedding when tied).
    pub fn load_ends(&self) -> Result<Ends> {
        let c = &self.config;
        let missing = |what: &str| self.bad(format!("no {what} tensor"));
        let embed_name = self
            .desc
            .embedding
            .as_deref()
            .ok_or_else(|| missing("token embedding"))?;
        let embed = self.tensor(embed_name, &[c.vocab, c.hidden])?;
        let norm_name = self
            .desc
            .final_norm
            .as_deref()
            .ok_or_else(|| missing("final LayerNorm"))?;
        let norm = self.layer_norm(norm_name)?;
        let head = match &self.desc.head {
            Some(h) => self.tensor(h, &[c.vocab, c.hidden])?,
            None => embed.clone(),
        };
        let positions = self.tensor(&self.positions_tensor()?, &[c.positions, c.hidden])?;
        Ok(Ends {
            embed,
            final_norm: norm.weight,
            head,
            positions: Some(positions),
            final_norm_bias: Some(norm.bias),
        })
    }

    /// ids: B windows of T tokens each -> x (B,T,C) = wte[ids] + wpe[t + offset].
    pub fn embed(&self, ends: &Ends, windows: &[&[u32]]) -> Result<Tensor> {
        let c = &self.config;
        let b = windows.len();
        let t = windows.first().map_or(0, |w| w.len());
        if b == 0 || t == 0 || windows.iter().any(|w| w.len() != t) {
            return Err(LabError::invalid(
                "the forward pass needs one or more windows of the same, non-zero length",
            ));
        }
        if t + c.position_offset > c.positions {
            return Err(LabError::invalid(format!(
                "{}: windows of {t} tokens are longer than the model's {} positions",
                self.name,
                c.positions - c.position_offset
            )));
        }
        let mut flat = Vec::with_capacity(b * t);
        for w in windows {
            for &id in *w {
                if id as usize >= c.vocab {
                    return Err(LabError::invalid(format!(
                        "token id {id} is outside the vocabulary ({} tokens)",
                        c.vocab
                    )));
                }
                flat.push(id);
            }
        }
        let ids = Tensor::from_vec(flat, b * t, &Device::Cpu).map_err(ce)?;
        let tokens = ends
            .embed
            .embedding(&ids)
            .and_then(|x| x.reshape((b, t, c.hidden)))
            .map_err(ce)?;
        let table = ends
            .positions
            .as_ref()
            .ok_or_else(|| LabError::invalid("the position embedding was not loaded"))?;
        let pos = table.narrow(0, c.position_offset, t).map_err(ce)?;
        tokens.broadcast_add(&pos).map_err(ce)
    }

    /// One block on x (B,T,C) -> (B,T,C).
    pub fn block_forward(&self, w: &LnBlock, x: &Tensor, obs: &mut dyn Observer) -> Result<Tensor> {
        let c = &self.config;
        let input = x;
        let (b, t, cc) = x.dims3().map_err(ce)?;
        let (nh, d) = (c.heads, c.head_dim);
        let i = w.index;
        let lin = |role: &str| {
            w.linear(role)
                .ok_or_else(|| LabError::invalid(format!("block {i} has no '{role}' linear")))
        };

        // Attention: h = LN(x) (N,C); q, k, v (N,C) each.
        let h = w
            .attn_norm
            .forward(x, c.eps)?
            .reshape((b * t, cc))
            .map_err(ce)?;
        let (q, k, v, out_role) = if c.arch == Arch::Gpt2 {
            obs.linear_input(i, &["c_attn"], &h)?;
            let qkv = lin("c_attn")?.forward(&h)?;
            let part = |p: usize| qkv.narrow(1, p * cc, cc).map_err(ce);
            (part(0)?, part(1)?, part(2)?, "c_proj")
        } else {
            obs.linear_input(i, &["q", "k", "v"], &h)?;
            (
                lin("q")?.forward(&h)?,
                lin("k")?.forward(&h)?,
                lin("v")?.forward(&h)?,
                "out",
            )
        };
        let heads = |y: Tensor| -> Result<Tensor> {
            y.reshape((b, t, nh, d))
                .and_then(|y| y.transpose(1, 2))
                .and_then(|y| y.contiguous())
                .map_err(ce)
        };
        let scale = 1.0 / (d as f64).sqrt();
        // GPT-2 divides the scores by sqrt(D); OPT scales q by D^-0.5 before q k^T.
        let (q, k, v) = (heads(q)?, heads(k)?, heads(v)?);
        let scores = if c.arch == Arch::Gpt2 {
            q.matmul(&k.t().map_err(ce)?)
                .and_then(|s| s.affine(scale, 0.0))
                .map_err(ce)?
        } else {
            q.affine(scale, 0.0)
                .and_then(|q| q.matmul(&k.t()?))
                .map_err(ce)?
        };
        let a = causal_attend(&scores, &v)?
            .transpose(1, 2)
            .and_then(|a| a.reshape((b * t, cc)))
            .map_err(ce)?;
        obs.linear_input(i, &[out_role], &a)?;
        let x = (x + lin(out_role)?
            .forward(&a)?
            .reshape((b, t, cc))
            .map_err(ce)?)
        .map_err(ce)?;

        // MLP: x + W2 act(W1 LN(x) + b1) + b2; (N,F) inside.
        let (up, down) = if c.arch == Arch::Gpt2 {
            ("c_fc", "mlp_c_proj")
        } else {
            ("fc1", "fc2")
        };
        let h = w
            .ffn_norm
            .forward(&x, c.eps)?
            .reshape((b * t, cc))
            .map_err(ce)?;
        obs.linear_input(i, &[up], &h)?;
        let m = c.activation.apply(&lin(up)?.forward(&h)?)?;
        obs.linear_input(i, &[down], &m)?;
        if !obs.wants_output() {
            return Ok(input.clone());
        }
        let x = (x + lin(down)?.forward(&m)?.reshape((b, t, cc)).map_err(ce)?).map_err(ce)?;
        obs.block_output(i, &x)?;
        Ok(x)
    }

    /// x (B,T,C) -> logits (B,T,V) = LN(x; final) Whead^T.
    pub fn logits(&self, ends: &Ends, x: &Tensor) -> Result<Tensor> {
        let (b, t, cc) = x.dims3().map_err(ce)?;
        let bias = ends
            .final_norm_bias
            .clone()
            .ok_or_else(|| LabError::invalid("the final LayerNorm's bias was not loaded"))?;
        let norm = LayerNorm {
            weight: ends.final_norm.clone(),
            bias,
        };
        let h = norm
            .forward(x, self.config.eps)?
            .reshape((b * t, cc))
            .map_err(ce)?;
        super::llama::matmul_t(&h, &ends.head)?
            .reshape((b, t, self.config.vocab))
            .map_err(ce)
    }

    /// The whole model on B windows of T tokens: logits (B,T,V). Reads every block once.
    pub fn forward(&self, windows: &[&[u32]], obs: &mut dyn Observer) -> Result<Tensor> {
        let ends = self.load_ends()?;
        let mut x = self.embed(&ends, windows)?;
        for i in 0..self.config.layers {
            let w = self.load_block(i)?;
            x = self.block_forward(&w, &x, obs)?;
        }
        self.logits(&ends, &x)
    }

    /// The model with Hugging Face names, F32, in the orientation transformers expects
    /// (GPT-2's Conv1D weights back to (in, out)), each block from `block(i)`:
    ///
    /// ```text
    /// GPT-2                                         OPT
    /// transformer.wte.weight (V,C)                  model.decoder.embed_tokens.weight (V,C)
    /// transformer.wpe.weight (P,C)                  model.decoder.embed_positions.weight (P,C)
    /// transformer.h.{i}.ln_1.{weight,bias}          model.decoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight,bias}
    /// transformer.h.{i}.attn.c_attn (C,3C)          model.decoder.layers.{i}.self_attn_layer_norm.{weight,bias}
    /// transformer.h.{i}.attn.c_proj (C,C)           model.decoder.layers.{i}.fc1 (F,C), fc2 (C,F)
    /// transformer.h.{i}.ln_2.{weight,bias}          model.decoder.layers.{i}.final_layer_norm.{weight,bias}
    /// transformer.h.{i}.mlp.c_fc (C,F), c_proj (F,C)
    /// transformer.ln_f.{weight,bias}                model.decoder.final_layer_norm.{weight,bias}
    /// lm_head.weight (V,C), only when the source has its own (not tied)
    /// ```
    pub fn export_tensors(
        &self,
        block: &dyn Fn(usize) -> Result<LnBlock>,
        sink: &mut dyn FnMut(F32Tensor<'_>) -> Result<()>,
    ) -> Result<()> {
        let c = &self.config;
        let ends = self.load_ends()?;
        let mut push = |name: String, t: &Tensor| -> Result<()> {
            sink(F32Tensor {
                name,
                shape: t.dims().to_vec(),
                data: to_vec(t)?.into(),
            })
        };
        let gpt2 = c.arch == Arch::Gpt2;
        let positions = ends
            .positions
            .as_ref()
            .ok_or_else(|| LabError::invalid("the position embedding was not loaded"))?;
        let (top, layer) = if gpt2 {
            push("transformer.wte.weight".into(), &ends.embed)?;
            push("transformer.wpe.weight".into(), positions)?;
            ("transformer", "transformer.h")
        } else {
            push("model.decoder.embed_tokens.weight".into(), &ends.embed)?;
            push("model.decoder.embed_positions.weight".into(), positions)?;
            ("model.decoder", "model.decoder.layers")
        };
        for i in 0..c.layers {
            let w = block(i)?;
            let p = format!("{layer}.{i}");
            let norm_names = if gpt2 {
                ["ln_1", "ln_2"]
            } else {
                ["self_attn_layer_norm", "final_layer_norm"]
            };
            for (k, (role, lin)) in w.linears.iter().enumerate() {
                // The attention norm before the first linear, the MLP norm before the MLP.
                let before = match (gpt2, k) {
                    (_, 0) => Some((norm_names[0], &w.attn_norm)),
                    (true, 2) | (false, 4) => Some((norm_names[1], &w.ffn_norm)),
                    _ => None,
                };
                if let Some((n, norm)) = before {
                    push(format!("{p}.{n}.weight"), &norm.weight)?;
                    push(format!("{p}.{n}.bias"), &norm.bias)?;
                }
                let stem = match *role {
                    "c_attn" => "attn.c_attn",
                    "c_proj" => "attn.c_proj",
                    "c_fc" => "mlp.c_fc",
                    "mlp_c_proj" => "mlp.c_proj",
                    "q" => "self_attn.q_proj",
                    "k" => "self_attn.k_proj",
                    "v" => "self_attn.v_proj",
                    "out" => "self_attn.out_proj",
                    other => other,
                };
                let weight = if gpt2 {
                    lin.weight.t().and_then(|t| t.contiguous()).map_err(ce)?
                } else {
                    lin.weight.clone()
                };
                push(format!("{p}.{stem}.weight"), &weight)?;
                if let Some(b) = &lin.bias {
                    push(format!("{p}.{stem}.bias"), b)?;
                }
            }
        }
        let norm_stem = if gpt2 { "ln_f" } else { "final_layer_norm" };
        push(format!("{top}.{norm_stem}.weight"), &ends.final_norm)?;
        if let Some(b) = &ends.final_norm_bias {
            push(format!("{top}.{norm_stem}.bias"), b)?;
        }
        if self.desc.head.is_some() {
            push("lm_head.weight".into(), &ends.head)?;
        }
        Ok(())
    }

    /// A Hugging Face config.json for the exported model (GPT2LMHeadModel or
    /// OPTForCausalLM), from the model's own sizes.
    pub fn hf_config(&self) -> Value {
        let c = &self.config;
        let tied = self.desc.head.is_none();
        if c.arch == Arch::Gpt2 {
            json!({
                "architectures": ["GPT2LMHeadModel"],
                "model_type": "gpt2",
                "n_embd": c.hidden,
                "n_layer": c.layers,
                "n_head": c.heads,
                "n_inner": c.ffn,
                "n_positions": c.positions,
                "n_ctx": c.positions,
                "vocab_size": c.vocab,
                "layer_norm_epsilon": c.eps,
                "activation_function": c.activation.name(),
                "tie_word_embeddings": tied,
                "torch_dtype": "float32",
            })
        } else {
            json!({
                "architectures": ["OPTForCausalLM"],
                "model_type": "opt",
                "hidden_size": c.hidden,
                "word_embed_proj_dim": c.hidden,
                "num_hidden_layers": c.layers,
                "num_attention_heads": c.heads,
                "ffn_dim": c.ffn,
                "max_position_embeddings": c.positions - c.position_offset,
                "vocab_size": c.vocab,
                "do_layer_norm_before": true,
                "activation_function": c.activation.name(),
                "enable_bias": true,
                "layer_norm_elementwise_affine": true,
                "tie_word_embeddings": tied,
                "torch_dtype": "float32",
            })
        }
    }
}
