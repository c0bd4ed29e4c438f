//! A training step on the GPU: `model`'s forward and backward and the AdamW update, with the
//! same ops in the same order, recorded through one `Recorder` (`compute::train_kernels`,
//! the WGSL twins of `ops`) into one submission and one small readback per step.
//!
//! Parameters, gradients and Adam's moments live in pool buffers for the whole run (one
//! tensor each, in `Weights::specs` order); activations are taken from the pool each step
//! and go back to it when the step ends, so from the second step on nothing is allocated.
//! The host uploads only the batch (and the embedding backward's grouping of its positions)
//! and reads back only what the charts need: the loss, each block's gradient norm and hidden
//! RMS.
//!
//! Shapes as in `ops`: B, T, N = B T, C, H, KV, D, F, V.

use super::model::{ModelConfig, Placement, Weights};
use super::ops::{self, AdamConfig, AttnDims};
use crate::compute::train_kernels::embedding_index;
use crate::compute::{DType, GpuContext, GpuTensor, Recorder};
use crate::{LabError, Result};

/// What one GPU step reports (the same quantities as the CPU loop's `StepRecord`).
#[derive(Clone, Debug)]
pub struct GpuStep {
    /// Mean cross-entropy over the batch's predicted tokens.
    pub loss: f64,
    /// L2 norm of each block's parameter gradient, before clipping.
    pub grad_norm: Vec<f64>,
    /// RMS of each block's output.
    pub hidden_rms: Vec<f64>,
}

/// One block's parameters (or gradients, or moments) on the GPU.
struct BlockTensors {
    norm1: GpuTensor,
    q: GpuTensor,
    k: GpuTensor,
    v: GpuTensor,
    o: GpuTensor,
    norm2: GpuTensor,
    gate: GpuTensor,
    up: GpuTensor,
    down: GpuTensor,
}

impl BlockTensors {
    fn all(&self) -> [&GpuTensor; 9] {
        [
            &self.norm1,
            &self.q,
            &self.k,
            &self.v,
            &self.o,
            &self.norm2,
            &self.gate,
            &self.up,
            &self.down,
        ]
    }
}

/// All of a model's tensors on the GPU, in `Weights::specs` order.
struct ModelTensors {
    embed: GpuTensor,
    blocks: Vec<BlockTensors>,
    norm: GpuTensor,
    head: Option<GpuTensor>,
}

impl ModelTensors {
    /// Uploads `w` (or zeros of its shapes with `zeros`).
    fn new(rec: &mut Recorder, cfg: &ModelConfig, w: &Weights, zeros: bool) -> Result<Self> {
        let specs = Weights::specs(cfg);
        let mut tensors = Vec::with_capacity(specs.len());
        for (spec, values) in specs.iter().zip(w.tensors()) {
            tensors.push(if zeros {
                rec.zeros(&spec.shape, DType::F32)?
            } else {
                rec.upload_f32(values, &spec.shape)?
            });
        }
        let mut it = tensors.into_iter();
        let mut next = || {
            it.next()
                .ok_or_else(|| LabError::invalid("the weights do not match the model's tensors"))
        };
        let embed = next()?;
        let mut blocks = Vec::with_capacity(cfg.layers);
        for _ in 0..cfg.layers {
            blocks.push(BlockTensors {
                norm1: next()?,
                q: next()?,
                k: next()?,
                v: next()?,
                o: next()?,
                norm2: next()?,
                gate: next()?,
                up: next()?,
                down: next()?,
            });
        }
        let norm = next()?;
        let head = if cfg.tied_head { None } else { Some(next()?) };
        Ok(ModelTensors {
            embed,
            blocks,
            norm,
            head,
        })
    }

    fn all(&self) -> Vec<&GpuTensor> {
        let mut out = vec![&self.embed];
        for b in &self.blocks {
            out.extend(b.all());
        }
        out.push(&self.norm);
        if let Some(h) = &self.head {
            out.push(h);
        }
        out
    }

    fn head(&self) -> &GpuTensor {
        self.head.as_ref().unwrap_or(&self.embed)
    }
}

/// What one block's forward keeps for its backward, as `model::BlockActs`.
struct BlockActs {
    x: GpuTensor,
    a_in: GpuTensor,
    rstd1: GpuTensor,
    q: GpuTensor,
    k: GpuTensor,
    v: GpuTensor,
    att: GpuTensor,
    y: GpuTensor,
    r1: GpuTensor,
    h: GpuTensor,
    m_in: GpuTensor,
    rstd2: GpuTensor,
    gate: GpuTensor,
    up: GpuTensor,
    act: GpuTensor,
    r2: GpuTensor,
    out: GpuTensor,
}

/// The model's parameters, gradients and AdamW state on the GPU, stepped by `step`.
pub struct GpuTrainer<'a> {
    ctx: &'a GpuContext,
    cfg: ModelConfig,
    params: ModelTensors,
    grads: ModelTensors,
    m: ModelTensors,
    v: ModelTensors,
    adam: AdamConfig,
    /// Optimizer steps taken (Adam's t).
    steps: u64,
    /// RoPE tables (T, D/2) for the T they were made for.
    rope: Option<(usize, GpuTensor, GpuTensor)>,
}

impl<'a> GpuTrainer<'a> {
    /// Uploads `weights` and zeroes the gradients and moments.
    pub async fn new(
        ctx: &'a GpuContext,
        cfg: &ModelConfig,
        weights: &Weights,
        adam: AdamConfig,
    ) -> Result<GpuTrainer<'a>> {
        if weights.count() != Weights::zeros(cfg).count() {
            return Err(LabError::invalid(
                "the weights do not have the model's sizes",
            ));
        }
        if cfg.heads == 0 || cfg.kv_heads == 0 || !cfg.width.is_multiple_of(cfg.heads) {
            return Err(LabError::invalid(format!(
                "a width of {} does not split into {} heads",
                cfg.width, cfg.heads
            )));
        }
        let mut rec = Recorder::new(ctx)?;
        let params = ModelTensors::new(&mut rec, cfg, weights, false)?;
        let grads = ModelTensors::new(&mut rec, cfg, weights, true)?;
        let m = ModelTensors::new(&mut rec, cfg, weights, true)?;
        let v = ModelTensors::new(&mut rec, cfg, weights, true)?;
        rec.finish().await?;
        Ok(GpuTrainer {
            ctx,
            cfg: cfg.clone(),
            params,
            grads,
            m,
            v,
            adam,
            steps: 0,
            rope: None,
        })
    }

    /// One training step on `batch` (B rows of T + 1 ids): forward, backward, the global
    /// clip at `clip` (0 = off) and AdamW at `lr`, recorded into one submission; reads back
    /// the loss, the per-block gradient norms and hidden RMS. With `update` false the
    /// optimizer is skipped (the gradients stay for `gradients`).
    pub async fn step(
        &mut self,
        batch: &[u32],
        b: usize,
        t: usize,
        lr: f64,
        clip: f64,
        update: bool,
    ) -> Result<GpuStep> {
        let cfg = self.cfg.clone();
        if batch.len() != b * (t + 1) || b == 0 || t == 0 {
            return Err(LabError::invalid(format!(
                "a batch of {b} rows of {} ids needs {} ids, found {}",
                t + 1,
                b * (t + 1),
                batch.len()
            )));
        }
        let n = b * t;
        let mut tokens = Vec::with_capacity(n);
        let mut targets = Vec::with_capacity(n);
        for row in batch.chunks(t + 1) {
            tokens.extend_from_slice(&row[..t]);
            targets.extend_from_slice(&row[1..]);
        }
        let index = embedding_index(&tokens, cfg.vocab)?;
        if let Some(&bad) = targets.iter().find(|&&x| x as usize >= cfg.vocab) {
            return Err(LabError::invalid(format!(
                "target {bad} is outside the vocabulary of {}",
                cfg.vocab
            )));
        }
        let hd = cfg.head_dim();
        if self.rope.as_ref().is_none_or(|r| r.0 != t) {
            let (cos, sin) = ops::rope_table::<f32>(t, hd);
            let mut rec = Recorder::new(self.ctx)?;
            let c = rec.upload_f32(&cos, &[t, hd / 2])?;
            let s = rec.upload_f32(&sin, &[t, hd / 2])?;
            rec.finish().await?;
            self.rope = Some((t, c, s));
        }
        let (cos, sin) = match &self.rope {
            Some((_, c, s)) => (c.clone(), s.clone()),
            None => return Err(LabError::invalid("RoPE tables missing")),
        };
        let d = StepDims {
            n,
            c: cfg.width,
            kvw: cfg.kv_width(),
            attn: AttnDims {
                b,
                t,
                heads: cfg.heads,
                kv_heads: cfg.kv_heads,
                head_dim: hd,
            },
            cos,
            sin,
        };
        let layers = cfg.layers;

        let mut rec = Recorder::new(self.ctx)?;
        let tok_g = rec.upload_u32(&tokens, &[n])?;
        let tgt_g = rec.upload_u32(&targets, &[n])?;
        let index_g = rec.upload_u32(&index, &[index.len()])?;
        for g in self.grads.all() {
            rec.zero(g)?;
        }

        // Forward.
        let p = &self.params;
        let embedded = rec.embedding_forward(&tok_g, &p.embed)?;
        let mut acts: Vec<BlockActs> = Vec::with_capacity(layers);
        for (l, w) in p.blocks.iter().enumerate() {
            let x = acts.last().map_or(&embedded, |a| &a.out).clone();
            acts.push(block_forward(&mut rec, cfg.placement(l), w, &d, x)?);
        }
        let last = acts.last().map_or(&embedded, |a| &a.out).clone();
        let (xf, rstd_f) = rec.rmsnorm_forward(&last, &p.norm)?;
        let dxf = rec.zeros(&[n, d.c], DType::F32)?;
        let dhead = self.grads.head.as_ref().unwrap_or(&self.grads.embed);
        let xent = rec.lm_head_xent(&xf, p.head(), &tgt_g, Some((&dxf, dhead)))?;

        // Backward.
        let mut dstream = rec.zeros(&[n, d.c], DType::F32)?;
        rec.rmsnorm_backward(&dstream, &self.grads.norm, &dxf, &last, &p.norm, &rstd_f)?;
        for l in (0..layers).rev() {
            let dx = rec.zeros(&[n, d.c], DType::F32)?;
            block_backward(
                &mut rec,
                cfg.placement(l),
                &p.blocks[l],
                &self.grads.blocks[l],
                &acts[l],
                &d,
                &dstream,
                &dx,
            )?;
            dstream = dx;
        }
        rec.embedding_backward(&self.grads.embed, &dstream, &index_g)?;

        // Diagnostics: per-block gradient sums of squares (slots 0..L, slot L the rest of
        // the parameters, for the global clip) and hidden sums of squares.
        let grad_sums = rec.output(&[layers + 1], DType::F32)?;
        for (l, g) in self.grads.blocks.iter().enumerate() {
            for (i, t) in g.all().into_iter().enumerate() {
                rec.sum_squares_into(t, &grad_sums, l, i > 0)?;
            }
        }
        let mut rest = vec![&self.grads.embed, &self.grads.norm];
        if let Some(h) = &self.grads.head {
            rest.push(h);
        }
        for (i, t) in rest.into_iter().enumerate() {
            rec.sum_squares_into(t, &grad_sums, layers, i > 0)?;
        }
        let hidden_sums = rec.output(&[layers.max(1)], DType::F32)?;
        for (l, a) in acts.iter().enumerate() {
            rec.sum_squares_into(&a.out, &hidden_sums, l, false)?;
        }
        drop(acts);

        if update {
            self.steps += 1;
            let scale = rec.clip_scale(&grad_sums, clip as f32)?;
            let (ps, gs, ms, vs) = (
                self.params.all(),
                self.grads.all(),
                self.m.all(),
                self.v.all(),
            );
            for i in 0..ps.len() {
                rec.adamw(
                    ps[i], gs[i], ms[i], vs[i], &scale, lr, self.steps, &self.adam,
                )?;
            }
        }
        let got = rec
            .read_many(&[&xent.mean, &grad_sums, &hidden_sums])
            .await?;
        rec.finish().await?;
        let nc = (n * d.c) as f64;
        Ok(GpuStep {
            loss: got[0][0] as f64,
            grad_norm: got[1][..layers]
                .iter()
                .map(|&s| (s as f64).sqrt())
                .collect(),
            hidden_rms: got[2][..layers]
                .iter()
                .map(|&s| (s as f64 / nc).sqrt())
                .collect(),
        })
    }

    /// Reads the parameters back.
    pub async fn weights(&self) -> Result<Weights> {
        self.read(&self.params).await
    }

    /// Reads Adam's first and second moments back (m, v).
    pub async fn moments(&self) -> Result<(Weights, Weights)> {
        Ok((self.read(&self.m).await?, self.read(&self.v).await?))
    }

    /// Reads the last step's gradients back (before clipping).
    pub async fn gradients(&self) -> Result<Weights> {
        self.read(&self.grads).await
    }

    async fn read(&self, t: &ModelTensors) -> Result<Weights> {
        let mut rec = Recorder::new(self.ctx)?;
        let values = rec.read_many(&t.all()).await?;
        rec.finish().await?;
        let mut w = Weights::zeros(&self.cfg);
        for (dst, src) in w.tensors_mut().into_iter().zip(values) {
            *dst = src;
        }
        Ok(w)
    }
}

/// Sizes of one step and its RoPE tables.
struct StepDims {
    n: usize,
    c: usize,
    kvw: usize,
    attn: AttnDims,
    cos: GpuTensor,
    sin: GpuTensor,
}

/// attn(a_in) -> (out (N,C), q, k, v, att, y), as `model::attn_forward`.
fn attn_forward(
    rec: &mut Recorder,
    w: &BlockTensors,
    d: &StepDims,
    a_in: &GpuTensor,
) -> Result<[GpuTensor; 6]> {
    let (t, hd) = (d.attn.t, d.attn.head_dim);
    let q_pre = rec.linear(a_in, &w.q, None)?;
    let q = rec.rope_forward(&q_pre, &d.cos, &d.sin, t, hd)?;
    let k_pre = rec.linear(a_in, &w.k, None)?;
    let k = rec.rope_forward(&k_pre, &d.cos, &d.sin, t, hd)?;
    let v = rec.linear(a_in, &w.v, None)?;
    let (y, att) = rec.attention_forward(&q, &k, &v, d.attn)?;
    let out = rec.linear(&y, &w.o, None)?;
    Ok([out, q, k, v, att, y])
}

/// Backward of `attn_forward`: dout (N,C) -> da_in (+=), weight gradients (+=).
fn attn_backward(
    rec: &mut Recorder,
    w: &BlockTensors,
    g: &BlockTensors,
    a: &BlockActs,
    d: &StepDims,
    dout: &GpuTensor,
    da_in: &GpuTensor,
) -> Result<()> {
    let (n, c, kvw, t, hd) = (d.n, d.c, d.kvw, d.attn.t, d.attn.head_dim);
    let dy = rec.zeros(&[n, c], DType::F32)?;
    rec.matmul_backward(&dy, &g.o, dout, &a.y, &w.o)?;
    let dq = rec.zeros(&[n, c], DType::F32)?;
    let dk = rec.zeros(&[n, kvw], DType::F32)?;
    let dv = rec.zeros(&[n, kvw], DType::F32)?;
    rec.attention_backward(&dq, &dk, &dv, &dy, &a.att, &a.q, &a.k, &a.v, d.attn)?;
    rec.matmul_backward(da_in, &g.v, &dv, &a.a_in, &w.v)?;
    let dk_pre = rec.zeros(&[n, kvw], DType::F32)?;
    rec.rope_backward(&dk_pre, &dk, &d.cos, &d.sin, t, hd)?;
    rec.matmul_backward(da_in, &g.k, &dk_pre, &a.a_in, &w.k)?;
    let dq_pre = rec.zeros(&[n, c], DType::F32)?;
    rec.rope_backward(&dq_pre, &dq, &d.cos, &d.sin, t, hd)?;
    rec.matmul_backward(da_in, &g.q, &dq_pre, &a.a_in, &w.q)
}

/// mlp(m_in) = down(silu(gate m_in) * up m_in) -> (out, gate, up, act).
fn mlp_forward(rec: &mut Recorder, w: &BlockTensors, m_in: &GpuTensor) -> Result<[GpuTensor; 4]> {
    let gate = rec.linear(m_in, &w.gate, None)?;
    let up = rec.linear(m_in, &w.up, None)?;
    let act = rec.swiglu(&gate, &up)?;
    let out = rec.linear(&act, &w.down, None)?;
    Ok([out, gate, up, act])
}

fn mlp_backward(
    rec: &mut Recorder,
    w: &BlockTensors,
    g: &BlockTensors,
    a: &BlockActs,
    dout: &GpuTensor,
    dm_in: &GpuTensor,
) -> Result<()> {
    let dact = rec.zeros(a.act.dims(), DType::F32)?;
    rec.matmul_backward(&dact, &g.down, dout, &a.act, &w.down)?;
    let dgate = rec.zeros(a.act.dims(), DType::F32)?;
    let dup = rec.zeros(a.act.dims(), DType::F32)?;
    rec.swiglu_backward(&dgate, &dup, &dact, &a.gate, &a.up)?;
    rec.matmul_backward(dm_in, &g.gate, &dgate, &a.m_in, &w.gate)?;
    rec.matmul_backward(dm_in, &g.up, &dup, &a.m_in, &w.up)
}

/// One block forward, x (N,C) -> acts.out, as `model::block_forward`.
fn block_forward(
    rec: &mut Recorder,
    placement: Placement,
    w: &BlockTensors,
    d: &StepDims,
    x: GpuTensor,
) -> Result<BlockActs> {
    match placement {
        // Post-LN: h = norm1(x + attn(x)); out = norm2(h + mlp(h))
        Placement::Post => {
            let a_in = x.clone();
            let [sub, q, k, v, att, y] = attn_forward(rec, w, d, &a_in)?;
            let r1 = rec.residual_add(&x, &sub)?;
            let (h, rstd1) = rec.rmsnorm_forward(&r1, &w.norm1)?;
            let m_in = h.clone();
            let [sub, gate, up, act] = mlp_forward(rec, w, &m_in)?;
            let r2 = rec.residual_add(&h, &sub)?;
            let (out, rstd2) = rec.rmsnorm_forward(&r2, &w.norm2)?;
            Ok(BlockActs {
                x,
                a_in,
                rstd1,
                q,
                k,
                v,
                att,
                y,
                r1,
                h,
                m_in,
                rstd2,
                gate,
                up,
                act,
                r2,
                out,
            })
        }
        // Pre-LN: h = x + attn(norm1(x)); out = h + mlp(norm2(h))
        Placement::Pre => {
            let (a_in, rstd1) = rec.rmsnorm_forward(&x, &w.norm1)?;
            let [sub, q, k, v, att, y] = attn_forward(rec, w, d, &a_in)?;
            let r1 = rec.residual_add(&x, &sub)?;
            let h = r1.clone();
            let (m_in, rstd2) = rec.rmsnorm_forward(&h, &w.norm2)?;
            let [sub, gate, up, act] = mlp_forward(rec, w, &m_in)?;
            let r2 = rec.residual_add(&h, &sub)?;
            let out = r2.clone();
            Ok(BlockActs {
                x,
                a_in,
                rstd1,
                q,
                k,
                v,
                att,
                y,
                r1,
                h,
                m_in,
                rstd2,
                gate,
                up,
                act,
                r2,
                out,
            })
        }
    }
}

/// One block backward: dout (N,C) -> dx (+=), gradients into `g` (+=), as
/// `model::block_backward`.
#[allow(clippy::too_many_arguments)]
fn block_backward(
    rec: &mut Recorder,
    placement: Placement,
    w: &BlockTensors,
    g: &BlockTensors,
    a: &BlockActs,
    d: &StepDims,
    dout: &GpuTensor,
    dx: &GpuTensor,
) -> Result<()> {
    let nc = [d.n, d.c];
    match placement {
        Placement::Post => {
            // out = norm2(r2), r2 = h + mlp(h)
            let dr2 = rec.zeros(&nc, DType::F32)?;
            rec.rmsnorm_backward(&dr2, &g.norm2, dout, &a.r2, &w.norm2, &a.rstd2)?;
            let dh = rec.output(&nc, DType::F32)?;
            rec.copy(&dr2, &dh)?;
            mlp_backward(rec, w, g, a, &dr2, &dh)?;
            // h = norm1(r1), r1 = x + attn(x)
            let dr1 = rec.zeros(&nc, DType::F32)?;
            rec.rmsnorm_backward(&dr1, &g.norm1, &dh, &a.r1, &w.norm1, &a.rstd1)?;
            rec.accumulate(dx, &dr1, 1.0)?;
            attn_backward(rec, w, g, a, d, &dr1, dx)
        }
        Placement::Pre => {
            // out = h + mlp(norm2(h))
            let dh = rec.output(&nc, DType::F32)?;
            rec.copy(dout, &dh)?;
            let dm_in = rec.zeros(&nc, DType::F32)?;
            mlp_backward(rec, w, g, a, dout, &dm_in)?;
            rec.rmsnorm_backward(&dh, &g.norm2, &dm_in, &a.h, &w.norm2, &a.rstd2)?;
            // h = x + attn(norm1(x))
            rec.accumulate(dx, &dh, 1.0)?;
            let da_in = rec.zeros(&nc, DType::F32)?;
            attn_backward(rec, w, g, a, d, &dh, &da_in)?;
            rec.rmsnorm_backward(dx, &g.norm1, &da_in, &a.x, &w.norm1, &a.rstd1)
        }
    }
}

/// The GPU's `StepEngine`: each step recorded and submitted by a `GpuTrainer` and awaited
/// (natively under `pollster::block_on`, in the browser's worker by its event loop).
pub struct GpuSteps<'a> {
    ctx: &'a GpuContext,
    trainer: Option<GpuTrainer<'a>>,
}

impl<'a> GpuSteps<'a> {
    pub fn new(ctx: &'a GpuContext) -> Self {
        GpuSteps { ctx, trainer: None }
    }
}

fn before_begin() -> LabError {
    LabError::invalid("a GPU step before begin")
}

impl<'a> super::StepEngine for GpuSteps<'a> {
    fn begin<'b>(
        &'b mut self,
        model: &'b super::Model,
        adam: AdamConfig,
    ) -> super::EngineFuture<'b, ()> {
        Box::pin(async move {
            self.trainer = Some(GpuTrainer::new(self.ctx, &model.cfg, &model.weights, adam).await?);
            Ok(())
        })
    }

    fn step<'b>(
        &'b mut self,
        _model: &'b mut super::Model,
        input: &'b super::StepInput,
        b: usize,
        t: usize,
        clip: f64,
    ) -> super::EngineFuture<'b, super::StepOutput> {
        Box::pin(async move {
            let trainer = self.trainer.as_mut().ok_or_else(before_begin)?;
            let s = trainer
                .step(&input.batch, b, t, input.lr, clip, true)
                .await?;
            Ok(super::StepOutput {
                loss: s.loss,
                grad_norm: s.grad_norm,
                hidden_rms: s.hidden_rms,
            })
        })
    }

    fn sync<'b>(&'b mut self, model: &'b mut super::Model) -> super::EngineFuture<'b, ()> {
        Box::pin(async move {
            let trainer = self.trainer.as_ref().ok_or_else(before_begin)?;
            model.weights = trainer.weights().await?;
            Ok(())
        })
    }

    fn can_lose_state(&self) -> bool {
        true
    }

    fn moments(&mut self) -> super::EngineFuture<'_, (Weights, Weights)> {
        Box::pin(async move {
            self.trainer
                .as_ref()
                .ok_or_else(before_begin)?
                .moments()
                .await
        })
    }
}
