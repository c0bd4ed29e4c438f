//! One LLaMA-family block on the GPU: what `Llama::block_forward` computes, with the
//! kernels of `compute::forward`, the intermediates kept on the GPU.
//!
//! Shapes as in `llama`: x (B,T,C), N = B T. Every linear reads and writes (N, features)
//! row-major, so q (N, H D), k and v (N, KV D) are token-major (B,T,heads,D); RoPE rotates
//! them in place in that layout and attention writes (N, H D), the heads side by side as
//! Wo expects. Nothing is transposed.
//!
//! ```text
//! h = rms_norm(x, attn_norm)                          -> read back: Observer (q, k, v)
//! q, k, v = linear(h, Wq|Wk|Wv); rope(q), rope(k)       (Qwen3: per-head rms_norm first)
//! a = causal_attention(q, k, v)                       -> read back: Observer (o)
//! x1 = x + linear(a, Wo)
//! h2 = rms_norm(x1, ffn_norm)                         -> read back: Observer (gate, up)
//! m = swiglu(linear(h2, Wgate), linear(h2, Wup))      -> read back: Observer (down)
//! x2 = x1 + linear(m, Wdown)                          -> read back: Observer, the result
//! ```
//!
//! The only readbacks are the four linear inputs the Observer sees (the pruning lab's
//! statistics; none for an Observer that does not want them) and the block's output (none
//! for one that does not want it: then the down projection is skipped, as on the CPU). A
//! lost device or a validation error surfaces at the next readback as `LabError::GpuFailed`.

use candle_core::{Device, Tensor};

use super::llama::{to_vec, BlockWeights, Ends, Linear, Llama, NoObserver, Observer, Rope};
use crate::compute::backend::checkpoint;
use crate::compute::forward::{AttentionShape, HeadLayout, Recorder};
use crate::compute::gpu::GpuMatrix;
use crate::compute::RunControl;
use crate::compute::{GpuContext, Matrix};
use crate::{LabError, Result};

fn ce(e: candle_core::Error) -> LabError {
    LabError::invalid(format!("the GPU forward pass failed: {e}"))
}

/// A tensor's values as an `[rows, cols]` matrix on the GPU.
fn upload(ctx: &GpuContext, t: &Tensor, rows: usize, cols: usize) -> Result<GpuMatrix> {
    let v = to_vec(t)?;
    ctx.upload(Matrix::new(&v, rows, cols)?)
}

/// The same buffer as a (rows, cols) matrix of the same length.
fn per_head(m: &GpuMatrix, rows: usize, cols: usize) -> GpuMatrix {
    debug_assert_eq!(m.len(), rows * cols);
    GpuMatrix {
        buffer: m.buffer.clone(),
        rows,
        cols,
    }
}

/// One linear layer's weight (out, in) and bias (out) on the GPU.
pub struct GpuLinear {
    pub weight: GpuMatrix,
    pub bias: Option<GpuMatrix>,
}

impl GpuLinear {
    pub fn upload(ctx: &GpuContext, l: &Linear) -> Result<GpuLinear> {
        let (out, inp) = l.weight.dims2().map_err(ce)?;
        let bias = match &l.bias {
            Some(b) => Some(upload(ctx, b, 1, out)?),
            None => None,
        };
        Ok(GpuLinear {
            weight: upload(ctx, &l.weight, out, inp)?,
            bias,
        })
    }
}

/// One block's weights resident on the GPU (uploaded once, usable for many batches).
pub struct GpuBlock {
    pub index: usize,
    pub attn_norm: GpuMatrix,
    pub q: GpuLinear,
    pub k: GpuLinear,
    pub v: GpuLinear,
    pub o: GpuLinear,
    pub ffn_norm: GpuMatrix,
    pub gate: GpuLinear,
    pub up: GpuLinear,
    pub down: GpuLinear,
    /// Qwen3's q_norm and k_norm weights, (1, D) each.
    pub qk_norm: Option<(GpuMatrix, GpuMatrix)>,
}

impl GpuBlock {
    pub fn upload(ctx: &GpuContext, w: &BlockWeights) -> Result<GpuBlock> {
        let norm = |t: &Tensor| -> Result<GpuMatrix> {
            let c = t.elem_count();
            upload(ctx, t, 1, c)
        };
        Ok(GpuBlock {
            index: w.index,
            attn_norm: norm(&w.attn_norm)?,
            q: GpuLinear::upload(ctx, &w.q)?,
            k: GpuLinear::upload(ctx, &w.k)?,
            v: GpuLinear::upload(ctx, &w.v)?,
            o: GpuLinear::upload(ctx, &w.o)?,
            ffn_norm: norm(&w.ffn_norm)?,
            gate: GpuLinear::upload(ctx, &w.gate)?,
            up: GpuLinear::upload(ctx, &w.up)?,
            down: GpuLinear::upload(ctx, &w.down)?,
            qk_norm: match &w.qk_norm {
                Some((q, k)) => Some((norm(q)?, norm(k)?)),
                None => None,
            },
        })
    }
}

/// `Llama::block_forward` on the GPU: x (B,T,C) -> (B,T,C), the same Observer calls with
/// the same (N, in) inputs. Uploads the block's weights first; see `block_forward_resident`
/// to reuse them.
pub async fn block_forward_gpu(
    ctx: &GpuContext,
    model: &Llama<'_>,
    w: &BlockWeights,
    x: &Tensor,
    rope: &Rope,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    let block = GpuBlock::upload(ctx, w)?;
    block_forward_resident(ctx, model, &block, x, rope, obs).await
}

/// `block_forward_gpu` with the weights already on the GPU.
pub async fn block_forward_resident(
    ctx: &GpuContext,
    model: &Llama<'_>,
    w: &GpuBlock,
    x: &Tensor,
    rope: &Rope,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    let c = &model.config;
    let (b, t, cc) = x.dims3().map_err(ce)?;
    if cc != c.hidden {
        return Err(LabError::invalid(format!(
            "block {}: the input is (B,T,{cc}); the model's hidden width is {}",
            w.index, c.hidden
        )));
    }
    let (nh, nkv, d) = (c.heads, c.kv_heads, c.head_dim);
    let n = b * t;
    let (rope_t, rope_d) = (rope.t, rope.d);
    if rope_t < t || rope_d != d {
        return Err(LabError::invalid(format!(
            "block {}: the RoPE tables are ({rope_t}, {rope_d}); T = {t} tokens of head \
             dim {d} need ({t}, {d})",
            w.index
        )));
    }
    let i = w.index;
    let eps = c.rms_eps as f32;
    let cpu = Device::Cpu;
    let tensor = |v: Vec<f32>, cols: usize| Tensor::from_vec(v, (n, cols), &cpu).map_err(ce);

    let mut rec = Recorder::new(ctx)?;
    let xs = rec.upload(Matrix::new(&to_vec(x)?, n, cc)?)?;
    let cos = rec.upload(Matrix::new(&rope.cos, rope_t, d)?)?;
    let sin = rec.upload(Matrix::new(&rope.sin, rope_t, d)?)?;
    let linear = |rec: &mut Recorder, x: &GpuMatrix, l: &GpuLinear| {
        rec.linear(x, &l.weight, l.bias.as_ref())
    };

    // The linears' inputs are read back only for an Observer that wants them.
    let inputs = obs.wants_inputs();

    // Attention.
    let h = rec.rms_norm(&xs, &w.attn_norm, eps)?;
    if inputs {
        obs.linear_input(i, &["q", "k", "v"], &tensor(rec.read(&h).await?, cc)?)?;
    }
    let mut q = linear(&mut rec, &h, &w.q)?;
    let mut k = linear(&mut rec, &h, &w.k)?;
    let v = linear(&mut rec, &h, &w.v)?;
    if let Some((q_norm, k_norm)) = &w.qk_norm {
        // Qwen3: the same RMSNorm kernel over each head's D values, (N, heads D) read as
        // (N heads, D) rows of the same buffer, written back as (N, heads D).
        q = per_head(
            &rec.rms_norm(&per_head(&q, n * nh, d), q_norm, eps)?,
            n,
            nh * d,
        );
        k = per_head(
            &rec.rms_norm(&per_head(&k, n * nkv, d), k_norm, eps)?,
            n,
            nkv * d,
        );
    }
    rec.rope(&q, HeadLayout::token_major(b, nh, t, d), &cos, &sin)?;
    rec.rope(&k, HeadLayout::token_major(b, nkv, t, d), &cos, &sin)?;
    let shape = AttentionShape {
        batch: b,
        t,
        heads: nh,
        kv_heads: nkv,
        d,
    };
    let a = rec.causal_attention(&q, &k, &v, shape)?;
    if inputs {
        obs.linear_input(i, &["o"], &tensor(rec.read(&a).await?, nh * d)?)?;
    }
    let attn_out = linear(&mut rec, &a, &w.o)?;
    let x1 = rec.residual_add(&xs, &attn_out)?;

    // MLP (SwiGLU).
    let h2 = rec.rms_norm(&x1, &w.ffn_norm, eps)?;
    if inputs {
        obs.linear_input(i, &["gate", "up"], &tensor(rec.read(&h2).await?, cc)?)?;
    }
    let g = linear(&mut rec, &h2, &w.gate)?;
    let u = linear(&mut rec, &h2, &w.up)?;
    let m = rec.swiglu(&g, &u)?;
    if inputs {
        obs.linear_input(i, &["down"], &tensor(rec.read(&m).await?, c.ffn)?)?;
    }
    if !obs.wants_output() {
        // As the CPU block: the down projection's input was the last thing wanted; the
        // input comes back unchanged.
        rec.finish().await?;
        return Ok(x.clone());
    }
    let mlp_out = linear(&mut rec, &m, &w.down)?;
    let x2 = rec.residual_add(&x1, &mlp_out)?;
    let out = Tensor::from_vec(rec.read(&x2).await?, (b, t, cc), &cpu).map_err(ce)?;
    rec.finish().await?;
    obs.block_output(i, &out)?;
    Ok(out)
}

/// Observer calls held back until the GPU block has finished, so that a block that fails
/// half-way on the GPU and is redone on the CPU shows each input to the real Observer once.
struct HeldCalls {
    /// (roles, x) of each linear_input; the block output comes from the return value.
    inputs: Vec<(Vec<String>, Tensor)>,
    /// The real Observer's wishes.
    wants_inputs: bool,
    wants_output: bool,
}

impl HeldCalls {
    fn for_observer(obs: &dyn Observer) -> HeldCalls {
        HeldCalls {
            inputs: Vec::new(),
            wants_inputs: obs.wants_inputs(),
            wants_output: obs.wants_output(),
        }
    }
}

impl Observer for HeldCalls {
    fn linear_input(&mut self, _block: usize, roles: &[&str], x: &Tensor) -> Result<()> {
        self.inputs
            .push((roles.iter().map(|r| r.to_string()).collect(), x.clone()));
        Ok(())
    }
    fn wants_inputs(&self) -> bool {
        self.wants_inputs
    }
    fn wants_output(&self) -> bool {
        self.wants_output
    }
}

/// A LLaMA-family model's final RMSNorm and LM head on the GPU, for perplexity: the logits
/// of a window's positions are formed and reduced there (nll.wgsl), and only one negative
/// log-likelihood per position is read back, where the CPU forms (rows, V) logits.
pub struct GpuHead {
    norm: GpuMatrix,
    head: GpuMatrix,
    eps: f32,
    hidden: usize,
    /// Positions per dispatch, so that (rows, V) logits stay within 64 MiB.
    rows: usize,
}

impl GpuHead {
    pub fn upload(ctx: &GpuContext, model: &Llama<'_>, ends: &Ends) -> Result<GpuHead> {
        let c = &model.config;
        Ok(GpuHead {
            norm: upload(ctx, &ends.final_norm, 1, c.hidden)?,
            head: upload(ctx, &ends.head, c.vocab, c.hidden)?,
            eps: c.rms_eps as f32,
            hidden: c.hidden,
            rows: ((64 << 20) / (4 * c.vocab.max(1))).max(1),
        })
    }

    /// -log p(targets[r] | position r) for each row r of `x` ((rows, C) final residuals).
    pub async fn nll(&self, ctx: &GpuContext, x: &[f32], targets: &[u32]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(targets.len());
        for (xs, ts) in x
            .chunks(self.rows * self.hidden)
            .zip(targets.chunks(self.rows))
        {
            let mut rec = Recorder::new(ctx)?;
            let xg = rec.upload(Matrix::new(xs, ts.len(), self.hidden)?)?;
            let h = rec.rms_norm(&xg, &self.norm, self.eps)?;
            let logits = rec.linear(&h, &self.head, None)?;
            let t: Vec<f32> = ts.iter().map(|&t| t as f32).collect();
            let tg = rec.upload(Matrix::new(&t, ts.len(), 1)?)?;
            let nll = rec.token_nll(&logits, &tg)?;
            out.extend(rec.read(&nll).await?);
            rec.finish().await?;
        }
        Ok(out)
    }
}

/// Every batch of `xs` through one LLaMA-family block, each output replacing its input, for
/// callers with no Observer (perplexity, the pruned blocks' outputs): on the backend's GPU
/// the block's weights are uploaded once for all the batches, else the CPU runs them. If the
/// GPU fails, the GPU is disabled on `backend` (as in `block_forward_on`), the batches not yet
/// done run on the CPU, and the returned notice says so.
pub async fn batches_forward_on(
    backend: &crate::compute::Backend,
    model: &Llama<'_>,
    w: &BlockWeights,
    xs: &mut [Tensor],
    rope: &Rope,
    ctl: &dyn RunControl,
) -> Result<Option<String>> {
    let mut notice = None;
    let mut done = 0;
    if let Some(gpu) = backend.gpu() {
        let on_gpu: Result<()> = async {
            let block = GpuBlock::upload(&gpu, w)?;
            for x in xs.iter_mut() {
                checkpoint(ctl).await?;
                *x = block_forward_resident(&gpu, model, &block, x, rope, &mut NoObserver).await?;
                done += 1;
            }
            Ok(())
        }
        .await;
        match on_gpu {
            Ok(()) => return Ok(None),
            Err(LabError::GpuFailed(msg)) => {
                notice = Some(backend.gpu_failed(&msg, &format!("in block {}", w.index)));
            }
            Err(e) => return Err(e),
        }
    }
    for x in xs[done..].iter_mut() {
        checkpoint(ctl).await?;
        *x = model.block_forward(w, x, rope, &mut NoObserver)?;
    }
    Ok(notice)
}

/// One LLaMA-family block on the backend's GPU, or its CPU: `Llama::block_forward`'s
/// result and Observer calls either way. (GPT-2 and OPT have no GPU block: callers go
/// through `causal::block_forward_on_any`, which runs them on the CPU.) If the GPU fails mid-block (device lost, validation or memory error),
/// the GPU is disabled on `backend` (its line says why), the block is redone on the CPU and
/// the returned notice says so; the Observer sees only the finished block's calls.
pub async fn block_forward_on(
    backend: &crate::compute::Backend,
    model: &Llama<'_>,
    w: &BlockWeights,
    x: &Tensor,
    rope: &Rope,
    obs: &mut dyn Observer,
) -> Result<(Tensor, Option<String>)> {
    let mut notice = None;
    if let Some(gpu) = backend.gpu() {
        let mut held = HeldCalls::for_observer(obs);
        match block_forward_gpu(&gpu, model, w, x, rope, &mut held).await {
            Ok(out) => {
                for (roles, t) in &held.inputs {
                    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
                    obs.linear_input(w.index, &roles, t)?;
                }
                if held.wants_output {
                    obs.block_output(w.index, &out)?;
                }
                return Ok((out, None));
            }
            Err(LabError::GpuFailed(msg)) => {
                notice = Some(backend.gpu_failed(&msg, &format!("in block {}", w.index)));
            }
            Err(e) => return Err(e),
        }
    }
    let out = model.block_forward(w, x, rope, obs)?;
    Ok((out, notice))
}
