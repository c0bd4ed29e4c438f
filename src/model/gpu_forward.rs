//! One LLaMA-family block on the GPU: what `Llama::block_forward` computes, with the
//! kernels of `compute::forward`, the intermediates kept on the GPU in pool buffers.
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
//! `block_forward_recorded` records a block into a caller's `Recorder` and returns all of
//! these as `BlockActivations`, still on the GPU: chained through `blocks_forward_recorded`
//! a whole forward pass runs with no readback per block, and a backward pass can read the
//! activations it needs. The only readbacks are the ones asked for: the four linear inputs
//! an Observer wants (the pruning lab's statistics) and the block's output. A lost device or
//! a validation error surfaces at the next readback as `LabError::GpuFailed`.

use candle_core::{Device, Tensor};

use super::llama::{
    to_vec, BlockWeights, Ends, Linear, Llama, LlamaConfig, NoObserver, Observer, Rope,
};
use crate::compute::backend::checkpoint;
use crate::compute::forward::{AttentionShape, HeadLayout, Recorder};
use crate::compute::gpu::{GpuMatrix, GpuTensor};
use crate::compute::RunControl;
use crate::compute::{GpuContext, Matrix};
use crate::error::candle_failed::gpu_forward as ce;
use crate::{LabError, Result};

/// A tensor's values as an `[rows, cols]` matrix on the GPU.
fn upload(ctx: &GpuContext, t: &Tensor, rows: usize, cols: usize) -> Result<GpuMatrix> {
    let v = to_vec(t)?;
    ctx.upload(Matrix::new(&v, rows, cols)?)
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

/// The RoPE tables, (T, D) each, on the GPU.
pub struct GpuRope {
    pub t: usize,
    pub d: usize,
    pub cos: GpuTensor,
    pub sin: GpuTensor,
}

impl GpuRope {
    pub fn upload(ctx: &GpuContext, rope: &Rope) -> Result<GpuRope> {
        Ok(GpuRope {
            t: rope.t,
            d: rope.d,
            cos: ctx.upload(Matrix::new(&rope.cos, rope.t, rope.d)?)?,
            sin: ctx.upload(Matrix::new(&rope.sin, rope.t, rope.d)?)?,
        })
    }
}

/// One block's forward activations, left on the GPU in pool buffers: what a backward pass
/// reads (llm.c keeps the same list). N = B T rows, token-major.
pub struct BlockActivations {
    /// (N, C): the block's input, the residual stream.
    pub x: GpuTensor,
    /// (N, C): rms_norm(x, attn_norm), the input of Wq, Wk, Wv.
    pub h: GpuTensor,
    /// (N, H D), (N, KV D), (N, KV D): after RoPE.
    pub q: GpuTensor,
    pub k: GpuTensor,
    pub v: GpuTensor,
    /// (N, H D): the attention output, the input of Wo.
    pub a: GpuTensor,
    /// (N, C): x + a Wo^T.
    pub x1: GpuTensor,
    /// (N, C): rms_norm(x1, ffn_norm), the input of Wgate and Wup.
    pub h2: GpuTensor,
    /// (N, F): h2 Wgate^T and h2 Wup^T.
    pub gate: GpuTensor,
    pub up: GpuTensor,
    /// (N, F): silu(gate) up, the input of Wdown.
    pub m: GpuTensor,
    /// (N, C): x1 + m Wdown^T, the block's output; None where the down projection was skipped
    /// (an Observer that wanted only the inputs).
    pub out: Option<GpuTensor>,
}

/// Records one Pre-LN LLaMA block into `rec`: x (B T, C) -> its activations, all left on the
/// GPU. Nothing is read back (no submission) unless `obs` wants the linears' inputs; then
/// each is read where the CPU block shows it, and `obs.linear_input` gets it. The down
/// projection is skipped for an Observer that does not want the output, as on the CPU.
/// Blocks chained through `out` run a whole forward pass with no readback per block.
#[allow(clippy::too_many_arguments)]
pub async fn block_forward_recorded(
    rec: &mut Recorder<'_>,
    c: &LlamaConfig,
    w: &GpuBlock,
    x: GpuTensor,
    batch: usize,
    t: usize,
    rope: &GpuRope,
    obs: &mut dyn Observer,
) -> Result<BlockActivations> {
    let (b, cc) = (batch, c.hidden);
    let n = b * t;
    if x.dims() != [n, cc] {
        return Err(LabError::invalid(format!(
            "block {}: the input is {:?}; B {b} windows of T {t} tokens of width {cc} need \
             [{n}, {cc}]",
            w.index,
            x.dims()
        )));
    }
    let (nh, nkv, d) = (c.heads, c.kv_heads, c.head_dim);
    if rope.t < t || rope.d != d {
        return Err(LabError::invalid(format!(
            "block {}: the RoPE tables are ({}, {}); T = {t} tokens of head dim {d} need \
             ({t}, {d})",
            w.index, rope.t, rope.d
        )));
    }
    let i = w.index;
    let eps = c.rms_eps as f32;
    let cpu = Device::Cpu;
    let tensor = |v: Vec<f32>, cols: usize| Tensor::from_vec(v, (n, cols), &cpu).map_err(ce);
    let linear = |rec: &mut Recorder, x: &GpuTensor, l: &GpuLinear| {
        rec.linear(x, &l.weight, l.bias.as_ref())
    };
    // The linears' inputs are read back only for an Observer that wants them.
    let inputs = obs.wants_inputs();

    // Attention: h = x + attn(rms_norm(x)) (Pre-LN).
    let h = rec.rms_norm(&x, &w.attn_norm, eps)?;
    if inputs {
        obs.linear_input(i, &["q", "k", "v"], &tensor(rec.read(&h).await?, cc)?)?;
    }
    let mut q = linear(rec, &h, &w.q)?;
    let mut k = linear(rec, &h, &w.k)?;
    let v = linear(rec, &h, &w.v)?;
    if let Some((q_norm, k_norm)) = &w.qk_norm {
        // Qwen3: the same RMSNorm kernel over each head's D values, (N, heads D) viewed as
        // (N heads, D) rows of the same buffer, then viewed back as (N, heads D).
        let n = b * t;
        q = rec
            .rms_norm(&q.reshape(&[n * nh, d])?, q_norm, eps)?
            .reshape(&[n, nh * d])?;
        k = rec
            .rms_norm(&k.reshape(&[n * nkv, d])?, k_norm, eps)?
            .reshape(&[n, nkv * d])?;
    }
    rec.rope(
        &q,
        HeadLayout::token_major(b, nh, t, d),
        &rope.cos,
        &rope.sin,
    )?;
    rec.rope(
        &k,
        HeadLayout::token_major(b, nkv, t, d),
        &rope.cos,
        &rope.sin,
    )?;
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
    let attn_out = linear(rec, &a, &w.o)?;
    let x1 = rec.residual_add(&x, &attn_out)?;

    // MLP (SwiGLU): out = x1 + mlp(rms_norm(x1)).
    let h2 = rec.rms_norm(&x1, &w.ffn_norm, eps)?;
    if inputs {
        obs.linear_input(i, &["gate", "up"], &tensor(rec.read(&h2).await?, cc)?)?;
    }
    let gate = linear(rec, &h2, &w.gate)?;
    let up = linear(rec, &h2, &w.up)?;
    let m = rec.swiglu(&gate, &up)?;
    if inputs {
        obs.linear_input(i, &["down"], &tensor(rec.read(&m).await?, c.ffn)?)?;
    }
    let out = if obs.wants_output() {
        let mlp_out = linear(rec, &m, &w.down)?;
        Some(rec.residual_add(&x1, &mlp_out)?)
    } else {
        None
    };
    Ok(BlockActivations {
        x,
        h,
        q,
        k,
        v,
        a,
        x1,
        h2,
        gate,
        up,
        m,
        out,
    })
}

/// A forward pass through `blocks` in order, x (B T, C) in, recorded into `rec` with no
/// readback: every block's activations stay on the GPU (for a backward pass), and the last
/// block's `out` is the result. Read back what is wanted afterwards, in one submission.
pub async fn blocks_forward_recorded(
    rec: &mut Recorder<'_>,
    c: &LlamaConfig,
    blocks: &[GpuBlock],
    x: GpuTensor,
    batch: usize,
    t: usize,
    rope: &GpuRope,
) -> Result<Vec<BlockActivations>> {
    let mut acts: Vec<BlockActivations> = Vec::with_capacity(blocks.len());
    let mut input = x;
    for w in blocks {
        let a = block_forward_recorded(rec, c, w, input, batch, t, rope, &mut NoObserver).await?;
        input = a
            .out
            .clone()
            .ok_or_else(|| LabError::invalid("a block without output in a forward pass"))?;
        acts.push(a);
    }
    Ok(acts)
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
    if rope.t < t || rope.d != c.head_dim {
        return Err(LabError::invalid(format!(
            "block {}: the RoPE tables are ({}, {}); T = {t} tokens of head dim {} need \
             ({t}, {})",
            w.index, rope.t, rope.d, c.head_dim, c.head_dim
        )));
    }
    let mut rec = Recorder::new(ctx)?;
    let xs = rec.upload(Matrix::new(&to_vec(x)?, b * t, cc)?)?;
    let rope_gpu = GpuRope::upload(ctx, rope)?;
    let acts = block_forward_recorded(&mut rec, c, w, xs, b, t, &rope_gpu, obs).await?;
    let Some(x2) = acts.out else {
        // As the CPU block: the down projection's input was the last thing wanted; the
        // input comes back unchanged.
        rec.finish().await?;
        return Ok(x.clone());
    };
    let out = Tensor::from_vec(rec.read(&x2).await?, (b, t, cc), &Device::Cpu).map_err(ce)?;
    rec.finish().await?;
    obs.block_output(w.index, &out)?;
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
