//! The forward pass of the LLaMA family (LLaMA, SmolLM2, Qwen2, ...) on the CPU, in f32,
//! block by block: the calibration and evaluation pass of the pruning lab.
//!
//! Shapes: B = windows in the batch, T = tokens per window, C = hidden width, H = query
//! heads, KV = key/value heads (H / KV queries share one, "grouped-query"), D = head dim
//! (C = H D), F = FFN width, V = vocabulary. N = B T rows when a linear sees every token.
//!
//! ```text
//! x = embed[ids]                                             (B,T,C)
//! for each block:                                          pre-norm, residual
//!     h = rmsnorm(x) * attn_norm        rmsnorm(x) = x / sqrt(mean_c x^2 + eps)
//!     q, k, v = h Wq^T (+bq), h Wk^T (+bk), h Wv^T (+bv)    (B,H,T,D), (B,KV,T,D) x2
//!     q, k = rope(q), rope(k)                               half-split ("neox") rotation
//!     a = softmax(q k^T / sqrt(D) + causal) v                (B,H,T,D), head h reads kv h/(H/KV)
//!     x = x + a Wo^T
//!     h = rmsnorm(x) * ffn_norm
//!     x = x + (silu(h Wgate^T) * (h Wup^T)) Wdown^T          SwiGLU
//! logits = (rmsnorm(x) * output_norm) Whead^T                 (B,T,V), Whead = embed if tied
//! ```
//!
//! RoPE and GGUF: llama.cpp's converter permutes the rows of attn_q and attn_k of "llama"
//! models so that its interleaved RoPE (pairs (2i, 2i+1)) equals Hugging Face's half-split
//! one (pairs (i, i + D/2)). We undo that permutation on load, as transformers' GGUF loader
//! does, so one RoPE (half-split, HF's `rotate_half`) serves GGUF and safetensors alike.
//! Qwen2 GGUFs are not permuted (llama.cpp runs them with its neox RoPE).
//!
//! Weights are read one block at a time (`load_block`) and dropped after use: a caller that
//! runs many windows passes them through block i together (`block_forward` on a (B,T,C)
//! batch), so only one block's weights are ever resident. `Observer` sees the input of each
//! linear of block i (the pruning lab's per-linear statistics) and each block's output.
//!
//! Qwen3 adds `q = rmsnorm_D(q) * q_norm`, `k = rmsnorm_D(k) * k_norm` per head before RoPE.
//! RoPE's frequencies (theta, linear / dynamic / llama3 / yarn scaling, llama.cpp's
//! rope_freqs) are `model::rope`'s; which checkpoint conventions are read, and what is
//! refused, is `model::llama_config`.
//!
//! What this module refuses to be: a generator (no KV cache, no sampling), a trainer (no
//! backward), or fast (candle's CPU matmul, nothing fused). Partial rotary embeddings and
//! windows longer than a sliding window are refused with an error, not approximated.

use candle_core::{DType as CDType, Device, Tensor, D};
use serde_json::Value;

use crate::compute::attention;
use crate::compute::forward::AttentionShape;
use crate::compute::sparse::SparseRows;
use crate::error::candle_failed::forward as ce;
use crate::io::{ByteSource, ModelFile};
use crate::model::rope::{RopeScaling, RopeSpec};
use crate::model::{describe, ModelDesc};
use crate::{LabError, Result};

pub use super::llama_config::{Family, LlamaConfig};

/// y = x W^T + b for x (N, in), W (out, in).
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// W's nonzeros, when pruning left at least `SPARSE_FROM` of it zero: the CPU forward
    /// then multiplies only those (`compute::sparse`). The GPU forward uses `weight`.
    pub sparse: Option<SparseRows>,
}

/// The fraction of zeros from which a pruned linear runs through `SparseRows` on the CPU:
/// below it candle's dense product is as fast (`cargo bench --bench sparse`).
pub const SPARSE_FROM: f64 = 0.4;

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Linear {
        Linear {
            weight,
            bias,
            sparse: None,
        }
    }

    /// Replaces W with `weight`, (out, in) row-major, the shape of the weight it replaces
    /// (`what` names it in errors); a weight mostly zero also gets its sparse form.
    pub fn set_weight(&mut self, what: &str, weight: Vec<f32>) -> Result<()> {
        let (rows, cols) = self.weight.dims2().map_err(ce)?;
        if rows * cols != weight.len() {
            return Err(LabError::invalid(format!(
                "{what}: expected a weight of shape [{rows}, {cols}], found {} values",
                weight.len()
            )));
        }
        let zeros = weight.iter().filter(|w| **w == 0.0).count();
        self.sparse = if zeros as f64 >= SPARSE_FROM * weight.len().max(1) as f64 {
            Some(SparseRows::from_dense(&weight, rows, cols)?)
        } else {
            None
        };
        self.weight = Tensor::from_vec(weight, (rows, cols), &Device::Cpu).map_err(ce)?;
        Ok(())
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.sparse {
            Some(sparse) => {
                let (n, _) = x.dims2().map_err(ce)?;
                let y = sparse.matmul_t(&to_vec(x)?, n)?;
                Tensor::from_vec(y, (n, sparse.rows()), &Device::Cpu).map_err(ce)?
            }
            None => matmul_t(x, &self.weight)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b).map_err(ce),
            None => Ok(y),
        }
    }
}

/// x (N, K) times w (O, K) transposed: (N, O), candle's matmul. Natively candle's gemm runs on
/// every core by itself; in the page's threaded wasm it sees one thread (it cannot count the
/// browser's), so the rows are split across rayon's Web Workers here, each block of rows its
/// own product (every output element is the same dot product either way).
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let wt = w.t().map_err(ce)?;
    #[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
    {
        /// Fewest rows a thread's block gets: below this, one product on one thread.
        const MIN_ROWS: usize = 32;
        let (n, _) = x.dims2().map_err(ce)?;
        let threads = rayon::current_num_threads();
        if threads > 1 && n >= 2 * MIN_ROWS {
            use rayon::prelude::*;
            let rows = n.div_ceil(threads).max(MIN_ROWS);
            let parts = (0..n.div_ceil(rows))
                .into_par_iter()
                .map(|i| {
                    let len = rows.min(n - i * rows);
                    x.narrow(0, i * rows, len)?.matmul(&wt)
                })
                .collect::<candle_core::Result<Vec<_>>>()
                .map_err(ce)?;
            return Tensor::cat(&parts, 0).map_err(ce);
        }
    }
    x.matmul(&wt).map_err(ce)
}

/// One block's weights, resident while the block runs.
pub struct BlockWeights {
    pub index: usize,
    pub attn_norm: Tensor,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub ffn_norm: Tensor,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    /// Qwen3's per-head RMSNorm weights of q and k, (D) each; None for the other families.
    pub qk_norm: Option<(Tensor, Tensor)>,
}

impl BlockWeights {
    /// The linear roles of a LLaMA block, in the order the forward pass meets them.
    pub const ROLES: [&'static str; 7] = ["q", "k", "v", "o", "gate", "up", "down"];

    /// The linear of `role` (one of [`BlockWeights::ROLES`]).
    pub fn linear(&self, role: &str) -> Option<&Linear> {
        match role {
            "q" => Some(&self.q),
            "k" => Some(&self.k),
            "v" => Some(&self.v),
            "o" => Some(&self.o),
            "gate" => Some(&self.gate),
            "up" => Some(&self.up),
            "down" => Some(&self.down),
            _ => None,
        }
    }

    /// Replaces the weight of `role` with `weight`, (out, in) row-major in Hugging Face row
    /// order (q/k un-permuted), the shape of the weight it replaces: how a pruned model runs.
    pub fn set_weight(&mut self, role: &str, weight: Vec<f32>) -> Result<()> {
        let index = self.index;
        let lin = match role {
            "q" => &mut self.q,
            "k" => &mut self.k,
            "v" => &mut self.v,
            "o" => &mut self.o,
            "gate" => &mut self.gate,
            "up" => &mut self.up,
            "down" => &mut self.down,
            _ => {
                return Err(LabError::invalid(format!(
                    "block {index} has no '{role}' linear (LLaMA: q, k, v, o, gate, up, down)"
                )))
            }
        };
        lin.set_weight(&format!("block {index} {role}"), weight)
    }
}

/// The embedding, final norm and LM head: what the first and last step need. Shared by
/// every family (`model::causal`): LLaMA leaves the two learned-position fields `None`.
pub struct Ends {
    /// (V, C)
    pub embed: Tensor,
    /// (C,)
    pub final_norm: Tensor,
    /// (V, C); the embedding itself when the head is tied.
    pub head: Tensor,
    /// GPT-2 `wpe`, OPT `embed_positions`: (P, C), learned absolute positions.
    pub positions: Option<Tensor>,
    /// LayerNorm's bias of the final norm (GPT-2 `ln_f.bias`, OPT `final_layer_norm.bias`).
    pub final_norm_bias: Option<Tensor>,
}

/// Sees what flows through the blocks; the pruning lab's statistics hook. `x` is (N, in),
/// one row per token of every window; q,k,v share one input, as do gate and up.
pub trait Observer {
    fn linear_input(&mut self, _block: usize, _roles: &[&str], _x: &Tensor) -> Result<()> {
        Ok(())
    }
    /// The residual stream after the block, (B,T,C).
    fn block_output(&mut self, _block: usize, _x: &Tensor) -> Result<()> {
        Ok(())
    }
    /// False when only the linear inputs matter (the pruning pass's statistics, whose block
    /// output is recomputed with the pruned weights): a CPU block then stops after its last
    /// linear input, skipping the last linear (a quarter of a LLaMA block's multiply-adds),
    /// and returns its input unchanged; so does the GPU block.
    fn wants_output(&self) -> bool {
        true
    }
    /// False when `linear_input` ignores what it is given (perplexity, the pruned blocks'
    /// outputs): the GPU block then reads none of the linears' inputs back, only the block's
    /// output (each readback waits for the GPU and copies (N, in) floats to the CPU).
    fn wants_inputs(&self) -> bool {
        true
    }
}

/// Watches nothing.
pub struct NoObserver;
impl Observer for NoObserver {
    fn wants_inputs(&self) -> bool {
        false
    }
}

/// cos and sin of the RoPE angles for positions 0..T: (T, D) row-major, each half the same.
/// angle(t, i) = t * inv_freq_i, i < D/2, inv_freq as `model::rope` says (theta^(-2i/D)
/// unscaled), computed in f64; both tables times the attention factor (YaRN's, else 1).
/// Applied by the CPU forward's attention (`compute::attention`) and the GPU's RoPE kernel,
/// so both honour the same scaling.
pub struct Rope {
    /// T: positions.
    pub t: usize,
    /// D: the head dim.
    pub d: usize,
    /// (T, D)
    pub cos: Vec<f32>,
    /// (T, D)
    pub sin: Vec<f32>,
}

impl Rope {
    /// Unscaled RoPE of base `theta`.
    pub fn new(t: usize, head_dim: usize, theta: f64) -> Result<Rope> {
        Rope::with_spec(t, &RopeSpec::plain(theta, head_dim))
    }

    /// The tables of `spec` for windows of `t` tokens (dynamic scaling depends on T).
    pub fn with_spec(t: usize, spec: &RopeSpec) -> Result<Rope> {
        let head_dim = spec.dim;
        let half = head_dim / 2;
        let (inv_freq, attention_factor) = spec.inv_freq(t);
        if half == 0 || inv_freq.len() != half {
            return Err(LabError::invalid(format!(
                "RoPE: {} frequencies for a head dim of {head_dim}",
                inv_freq.len()
            )));
        }
        let mut cos = Vec::with_capacity(t * head_dim);
        let mut sin = Vec::with_capacity(t * head_dim);
        for pos in 0..t {
            for j in 0..head_dim {
                let angle = pos as f64 * inv_freq[j % half];
                cos.push((angle.cos() * attention_factor) as f32);
                sin.push((angle.sin() * attention_factor) as f32);
            }
        }
        Ok(Rope {
            t,
            d: head_dim,
            cos,
            sin,
        })
    }
}

/// x (..., C) -> x / sqrt(mean(x^2) + eps) * w.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr().map_err(ce)?.mean_keepdim(D::Minus1).map_err(ce)?;
    let inv = (ms + eps)
        .map_err(ce)?
        .sqrt()
        .map_err(ce)?
        .recip()
        .map_err(ce)?;
    x.broadcast_mul(&inv)
        .map_err(ce)?
        .broadcast_mul(w)
        .map_err(ce)
}

/// softmax(scores + causal mask) v, where the mask is -inf above the diagonal (position t
/// attends to positions <= t only): scores (B,H,T,T), v (B,H,T,D) -> (B,H,T,D).
pub(crate) fn causal_attend(scores: &Tensor, v: &Tensor) -> Result<Tensor> {
    let t = scores.dim(D::Minus1).map_err(ce)?;
    let mask: Vec<f32> = (0..t * t)
        .map(|p| {
            if p % t > p / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).map_err(ce)?;
    softmax_last(&scores.broadcast_add(&mask).map_err(ce)?)?
        .matmul(v)
        .map_err(ce)
}

/// Softmax over the last dim, max subtracted first.
fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1).map_err(ce)?;
    let e = x.broadcast_sub(&m).map_err(ce)?.exp().map_err(ce)?;
    let s = e.sum_keepdim(D::Minus1).map_err(ce)?;
    e.broadcast_div(&s).map_err(ce)
}

/// A LLaMA-family model whose weights stay in the file until a block needs them.
pub struct Llama<'a> {
    src: &'a dyn ByteSource,
    file: &'a ModelFile,
    pub desc: ModelDesc,
    pub config: LlamaConfig,
    name: String,
}

impl<'a> Llama<'a> {
    /// `config` is the Hugging Face config.json of a safetensors model (GGUF: None).
    pub fn new(
        src: &'a dyn ByteSource,
        file: &'a ModelFile,
        config: Option<&Value>,
    ) -> Result<Llama<'a>> {
        let name = src.name();
        let desc = describe(file, config);
        let mut config = LlamaConfig::new(file, &desc, config, &name)?;
        if desc.blocks.len() != config.layers {
            return Err(LabError::BadFile(format!(
                "{name}: the metadata says {} blocks, the file has tensors for {}",
                config.layers,
                desc.blocks.len()
            )));
        }
        crate::model::llama_config::check_tensors(file, &desc, &config, &name)?;
        if let RopeScaling::Freqs(div) = &mut config.rope.scaling {
            // llama.cpp's rope_freqs.weight (Llama 3.1/3.2 GGUF): a divisor per frequency.
            let t = file.tensor("rope_freqs.weight").ok_or_else(|| {
                LabError::BadFile(format!("{name}: tensor rope_freqs.weight is missing"))
            })?;
            let v = file.read_f32(src, t)?;
            if let Some(bad) = v.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                return Err(LabError::BadFile(format!(
                    "{name}: rope_freqs.weight holds {bad}; its divisors must be positive"
                )));
            }
            *div = v.into_iter().map(f64::from).collect();
        }
        Ok(Llama {
            src,
            file,
            desc,
            config,
            name,
        })
    }

    /// The RoPE tables for windows of `t` tokens, with the model's scaling; a window longer
    /// than the model's sliding window is refused (attention would then differ).
    pub fn rope(&self, t: usize) -> Result<Rope> {
        if let Some(w) = self.config.sliding_window {
            if t > w {
                return Err(LabError::invalid(format!(
                    "{}: windows of {t} tokens are longer than the model's sliding window \
                     ({w}); LayerLab computes full causal attention only, so use a window of at \
                     most {w} tokens",
                    self.name
                )));
            }
        }
        Rope::with_spec(t, &self.config.rope)
    }

    /// The model's name (its file), for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A tensor as f32, checked against the shape the config implies (`role` says which
    /// config fields that shape comes from, for the error).
    fn read(&self, tensor: &str, shape: &[usize], role: &str) -> Result<Vec<f32>> {
        let t = self.file.tensor(tensor).ok_or_else(|| {
            LabError::BadFile(format!("{}: tensor {tensor} is missing", self.name))
        })?;
        if t.shape != shape {
            return Err(LabError::BadFile(format!(
                "{}: {tensor}: expected shape {shape:?} ({}), found {:?}",
                self.name,
                self.config.shape_origin(role),
                t.shape
            )));
        }
        self.file.read_f32(self.src, t)
    }

    fn tensor(&self, tensor: &str, shape: &[usize], role: &str) -> Result<Tensor> {
        let data = self.read(tensor, shape, role)?;
        Tensor::from_vec(data, shape, &Device::Cpu).map_err(ce)
    }

    /// Undoes llama.cpp's q/k row permutation within each head: GGUF row 2i + s of a head is
    /// Hugging Face row s D/2 + i (s = 0, 1; i < D/2). `cols` = 1 for a bias.
    fn unpermute(&self, data: Vec<f32>, cols: usize) -> Vec<f32> {
        let d = self.config.head_dim;
        let half = d / 2;
        let mut out = vec![0f32; data.len()];
        for (src, dst) in data
            .chunks_exact(d * cols)
            .zip(out.chunks_exact_mut(d * cols))
        {
            for i in 0..half {
                for s in 0..2 {
                    let from = (2 * i + s) * cols;
                    let to = (s * half + i) * cols;
                    dst[to..to + cols].copy_from_slice(&src[from..from + cols]);
                }
            }
        }
        out
    }

    fn linear(&self, block: usize, role: &str, out: usize, inp: usize) -> Result<Linear> {
        let b = &self.desc.blocks[block];
        let l = b.linears.iter().find(|l| l.role == role).ok_or_else(|| {
            LabError::BadFile(format!(
                "{}: block {block} has no '{role}' linear",
                self.name
            ))
        })?;
        let permuted = self.config.unpermute_qk && (role == "q" || role == "k");
        let mut w = self.read(&l.tensor, &[out, inp], role)?;
        if permuted {
            w = self.unpermute(w, inp);
        }
        let weight = Tensor::from_vec(w, (out, inp), &Device::Cpu).map_err(ce)?;
        let bias = match &l.bias {
            Some(name) => {
                let mut b = self.read(name, &[out], role)?;
                if permuted {
                    b = self.unpermute(b, 1);
                }
                Some(Tensor::from_vec(b, out, &Device::Cpu).map_err(ce)?)
            }
            None => None,
        };
        Ok(Linear::new(weight, bias))
    }

    /// Block `index`'s weights, read from the file now.
    pub fn load_block(&self, index: usize) -> Result<BlockWeights> {
        let c = &self.config;
        let (cc, qd, kvd, f) = (
            c.hidden,
            c.heads * c.head_dim,
            c.kv_heads * c.head_dim,
            c.ffn,
        );
        let b = self.desc.blocks.get(index).ok_or_else(|| {
            LabError::invalid(format!(
                "{}: there is no block {index} ({} blocks)",
                self.name,
                self.desc.blocks.len()
            ))
        })?;
        let norm = |which: usize| -> Result<Tensor> {
            let stems = [
                ["attn_norm", "input_layernorm"],
                ["ffn_norm", "post_attention"],
            ];
            let name = b
                .norms
                .iter()
                .find(|n| n.ends_with(".weight") && stems[which].iter().any(|s| n.contains(s)))
                .ok_or_else(|| {
                    LabError::BadFile(format!(
                        "{}: block {index} has no {} norm",
                        self.name,
                        ["attention", "FFN"][which]
                    ))
                })?;
            self.tensor(name, &[cc], "norm")
        };
        // The linears first: a wrong head dim shows on q_proj, the clearest place.
        let (q, k, v, o) = (
            self.linear(index, "q", qd, cc)?,
            self.linear(index, "k", kvd, cc)?,
            self.linear(index, "v", kvd, cc)?,
            self.linear(index, "o", cc, qd)?,
        );
        // Qwen3's q_norm / k_norm (HF) or attn_q_norm / attn_k_norm (GGUF), (D) each.
        let qk_norm = if c.qk_norm {
            let find = |which: &str| -> Result<Tensor> {
                let name = b
                    .other
                    .iter()
                    .find(|n| {
                        n.ends_with(&format!(".{which}.weight"))
                            || n.ends_with(&format!(".attn_{which}.weight"))
                    })
                    .ok_or_else(|| {
                        LabError::BadFile(format!(
                            "{}: block {index} has no {which} tensor (Qwen3 normalises q and k \
                             per head)",
                            self.name
                        ))
                    })?;
                self.tensor(name, &[c.head_dim], which)
            };
            Some((find("q_norm")?, find("k_norm")?))
        } else {
            None
        };
        Ok(BlockWeights {
            index,
            attn_norm: norm(0)?,
            q,
            k,
            v,
            o,
            ffn_norm: norm(1)?,
            gate: self.linear(index, "gate", f, cc)?,
            up: self.linear(index, "up", f, cc)?,
            down: self.linear(index, "down", cc, f)?,
            qk_norm,
        })
    }

    /// The embedding, the final norm and the head (the embedding when tied).
    pub fn load_ends(&self) -> Result<Ends> {
        let c = &self.config;
        let missing = |what: &str| LabError::BadFile(format!("{}: no {what} tensor", self.name));
        let embed_name = self
            .desc
            .embedding
            .as_deref()
            .ok_or_else(|| missing("token embedding"))?;
        let embed = self.tensor(embed_name, &[c.vocab, c.hidden], "embedding")?;
        let norm_name = self
            .desc
            .final_norm
            .as_deref()
            .ok_or_else(|| missing("final norm"))?;
        let final_norm = self.tensor(norm_name, &[c.hidden], "norm")?;
        // check_tensors made sure the file has a head exactly when it is not tied.
        let head = match (&self.desc.head, c.tied_head) {
            (Some(h), false) => self.tensor(h, &[c.vocab, c.hidden], "head")?,
            _ => embed.clone(),
        };
        Ok(Ends {
            embed,
            final_norm,
            head,
            positions: None,
            final_norm_bias: None,
        })
    }

    /// ids: B windows of T tokens each -> x (B,T,C).
    pub fn embed(&self, ends: &Ends, windows: &[&[u32]]) -> Result<Tensor> {
        let b = windows.len();
        let t = windows.first().map_or(0, |w| w.len());
        if b == 0 || t == 0 || windows.iter().any(|w| w.len() != t) {
            return Err(LabError::invalid(
                "the forward pass needs one or more windows of the same, non-zero length",
            ));
        }
        let mut flat = Vec::with_capacity(b * t);
        for w in windows {
            for &id in *w {
                if id as usize >= self.config.vocab {
                    return Err(LabError::invalid(format!(
                        "token id {id} is outside the vocabulary ({} tokens)",
                        self.config.vocab
                    )));
                }
                flat.push(id);
            }
        }
        let ids = Tensor::from_vec(flat, b * t, &Device::Cpu).map_err(ce)?;
        let x = ends.embed.embedding(&ids).map_err(ce)?;
        x.reshape((b, t, self.config.hidden)).map_err(ce)
    }

    /// One block on x (B,T,C) -> (B,T,C); `rope` must cover T positions.
    pub fn block_forward(
        &self,
        w: &BlockWeights,
        x: &Tensor,
        rope: &Rope,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, t, cc) = x.dims3().map_err(ce)?;
        let input = x;
        let (nh, nkv, d) = (c.heads, c.kv_heads, c.head_dim);
        let i = w.index;

        // Attention: h = rmsnorm(x) (N,C); q (B,H,T,D); k, v (B,KV,T,D).
        let h = rms_norm(x, &w.attn_norm, c.rms_eps)?
            .reshape((b * t, cc))
            .map_err(ce)?;
        obs.linear_input(i, &["q", "k", "v"], &h)?;
        // RoPE, causal grouped-query attention and the heads side by side: one pass
        // (compute::attention), a (N, H D) as Wo expects.
        let shape = AttentionShape {
            batch: b,
            t,
            heads: nh,
            kv_heads: nkv,
            d,
        };
        let (mut q, mut k) = (w.q.forward(&h)?, w.k.forward(&h)?);
        if let Some((q_norm, k_norm)) = &w.qk_norm {
            // Qwen3: RMSNorm over each head's D values, (N, heads D) seen as (N heads, D).
            let per_head = |x: &Tensor, heads: usize, norm: &Tensor| -> Result<Tensor> {
                rms_norm(&x.reshape((b * t * heads, d)).map_err(ce)?, norm, c.rms_eps)?
                    .reshape((b * t, heads * d))
                    .map_err(ce)
            };
            q = per_head(&q, nh, q_norm)?;
            k = per_head(&k, nkv, k_norm)?;
        }
        let a = attention::causal_attention(
            &to_vec(&q)?,
            &to_vec(&k)?,
            &to_vec(&w.v.forward(&h)?)?,
            Some((&rope.cos, &rope.sin)),
            shape,
        )?;
        let a = Tensor::from_vec(a, (b * t, nh * d), &Device::Cpu).map_err(ce)?;
        obs.linear_input(i, &["o"], &a)?;
        let x = (x + w.o.forward(&a)?.reshape((b, t, cc)).map_err(ce)?).map_err(ce)?;

        // MLP (SwiGLU): x + down(silu(gate(h)) * up(h)), h = rmsnorm(x) (N,C); (N,F) inside.
        let h = rms_norm(&x, &w.ffn_norm, c.rms_eps)?
            .reshape((b * t, cc))
            .map_err(ce)?;
        obs.linear_input(i, &["gate", "up"], &h)?;
        let g = w.gate.forward(&h)?.silu().map_err(ce)?;
        let m = (g * w.up.forward(&h)?).map_err(ce)?;
        obs.linear_input(i, &["down"], &m)?;
        if !obs.wants_output() {
            return Ok(input.clone());
        }
        let x = (x + w.down.forward(&m)?.reshape((b, t, cc)).map_err(ce)?).map_err(ce)?;
        obs.block_output(i, &x)?;
        Ok(x)
    }

    /// x (B,T,C) -> logits (B,T,V).
    pub fn logits(&self, ends: &Ends, x: &Tensor) -> Result<Tensor> {
        let (b, t, cc) = x.dims3().map_err(ce)?;
        let h = rms_norm(x, &ends.final_norm, self.config.rms_eps)?
            .reshape((b * t, cc))
            .map_err(ce)?;
        matmul_t(&h, &ends.head)?
            .reshape((b, t, self.config.vocab))
            .map_err(ce)
    }

    /// The whole model on B windows of T tokens: logits (B,T,V). Reads every block once.
    pub fn forward(&self, windows: &[&[u32]], obs: &mut dyn Observer) -> Result<Tensor> {
        let ends = self.load_ends()?;
        let mut x = self.embed(&ends, windows)?;
        let rope = self.rope(windows[0].len())?;
        for i in 0..self.config.layers {
            let w = self.load_block(i)?;
            x = self.block_forward(&w, &x, &rope, obs)?;
        }
        self.logits(&ends, &x)
    }
}

/// Logits as plain f32, row-major (B,T,V).
pub fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(CDType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(ce)
}
