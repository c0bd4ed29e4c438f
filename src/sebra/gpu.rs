//! The bias lab's CNN trained on the GPU: a cross-entropy step (zero the gradients, the CNN's
//! forward, the (weighted) mean cross-entropy and backward, the optimizer's update) recorded
//! through one `Recorder` into one submission, with the parameters, gradients and optimizer
//! state resident in pool buffers for a whole phase (one tensor each, in `NetConfig::specs`
//! order). The loss is ERM's plain mean, the oracle's with fixed per-sample weights, or Stage
//! 1's up-weighted loss with w_i = stopgrad(p_{i,y_i})^(1/beta) from the step's own softmax on
//! the GPU (`run::CeWeights`, as `run::ce_step`: L = (1/B) sum_i w_i CE_i).
//!
//! The ops are `Recorder::cnn_weighted_loss_backward` (the WGSL twins of `sebra::model`'s CNN
//! and of `sebra::loss`'s weighted cross-entropy), then
//! Adam through the training core's `Recorder::adamw` (the same f32 arithmetic as
//! `train::ops::adamw_update`, which `run::Optimizer` calls for Adam: torch's bias correction,
//! eps 1e-8, here with weight decay 0 and a clip scale of exactly 1) or SGD with momentum
//! through `Recorder::sgd_momentum` (the twin of `run::Optimizer`'s SGD).
//!
//! No step waits for the GPU: each step copies its mean loss into a slot of a resident log
//! and is submitted without a readback; `losses` reads the log back (one readback for all the
//! steps since the last call, e.g. once per epoch). Only when the log is full (`LOSS_LOG`
//! steps without a `losses`) does a step read it back before going on.
//!
//! `GpuCeEngine` is `run::CeEngine` over a `GpuCnnTrainer`, a fresh one per phase:
//! `layerlab sebra --backend gpu` (and the page's Bias tab on a GPU backend) trains the batches of ERM, Stage 1 and the oracle with it and
//! the rest (Stage 1's per-epoch scoring pass, Stage 2, every test scoring) on the CPU, and
//! the report's `backend` says so. Checked against the CPU path in tests/sebra_gpu.rs.

use super::model::{NetConfig, Params};
use super::run::CeWeights;
use super::{ModelKind, OptimizerKind, SebraOptions};
use crate::compute::recorder::RecorderStats;
use crate::compute::sebra_kernels::CeWeighting;
use crate::compute::{DType, GpuContext, GpuTensor, Recorder};
use crate::train::ops::AdamConfig;
use crate::train::EngineFuture;
use crate::{LabError, Result};

/// Steps whose losses the resident log holds before a step has to read it back.
pub const LOSS_LOG: usize = 1024;

/// The CNN's parameters, gradients and optimizer state on the GPU, stepped by `step`.
pub struct GpuCnnTrainer<'a> {
    ctx: &'a GpuContext,
    cfg: NetConfig,
    optimizer: OptimizerKind,
    lr: f64,
    momentum: f32,
    params: Vec<GpuTensor>,
    grads: Vec<GpuTensor>,
    /// Adam's first moment, or SGD's momentum buffer.
    m: Vec<GpuTensor>,
    /// Adam's second moment (unused by SGD).
    v: Vec<GpuTensor>,
    /// [1] = 1.0: `adamw`'s gradient scale (no clipping).
    one: GpuTensor,
    /// Optimizer steps taken (Adam's t).
    steps: u64,
    /// (capacity): each step's mean cross-entropy, `logged` of them not yet read back.
    log: GpuTensor,
    logged: usize,
    capacity: usize,
    /// Losses read back from a full log, not yet returned by `losses`.
    read: Vec<f64>,
    /// The last step's recorder counts, taken just before its one submission.
    last: RecorderStats,
    /// The last step's per-sample weights (B), resident; None after an ERM step.
    last_weights: Option<GpuTensor>,
}

fn upload_all(rec: &mut Recorder, cfg: &NetConfig, p: &Params<f32>) -> Result<Vec<GpuTensor>> {
    cfg.specs()
        .iter()
        .zip(&p.tensors)
        .map(|((_, shape, _), t)| rec.upload_f32(t, shape))
        .collect()
}

fn zeros_all(rec: &mut Recorder, cfg: &NetConfig) -> Result<Vec<GpuTensor>> {
    cfg.specs()
        .iter()
        .map(|(_, shape, _)| rec.zeros(shape, DType::F32))
        .collect()
}

impl<'a> GpuCnnTrainer<'a> {
    /// Uploads `params` (the CNN of `opts`) and zeroes the gradients and the optimizer state;
    /// the optimizer, its learning rate and momentum are `opts`'.
    pub async fn new(
        ctx: &'a GpuContext,
        opts: &SebraOptions,
        params: &Params<f32>,
    ) -> Result<GpuCnnTrainer<'a>> {
        Self::with_loss_log(ctx, opts, params, LOSS_LOG).await
    }

    /// `new` with a loss log of `capacity` steps (at least 1) instead of `LOSS_LOG`.
    pub async fn with_loss_log(
        ctx: &'a GpuContext,
        opts: &SebraOptions,
        params: &Params<f32>,
        capacity: usize,
    ) -> Result<GpuCnnTrainer<'a>> {
        let capacity = capacity.max(1);
        let cfg = super::run::net_config(opts);
        if cfg.kind != ModelKind::Cnn {
            return Err(LabError::invalid(
                "GPU training is built for the CNN only (--model cnn)",
            ));
        }
        let specs = cfg.specs();
        if params.tensors.len() != specs.len()
            || specs
                .iter()
                .zip(&params.tensors)
                .any(|((_, shape, _), t)| t.len() != shape.iter().product::<usize>())
        {
            return Err(LabError::invalid(
                "the parameters do not have the CNN's sizes",
            ));
        }
        let mut rec = Recorder::new(ctx)?;
        let p = upload_all(&mut rec, &cfg, params)?;
        let grads = zeros_all(&mut rec, &cfg)?;
        let m = zeros_all(&mut rec, &cfg)?;
        let v = match opts.optimizer {
            OptimizerKind::Adam => zeros_all(&mut rec, &cfg)?,
            OptimizerKind::Sgd => Vec::new(),
        };
        let one = rec.upload_f32(&[1.0], &[1])?;
        let log = rec.zeros(&[capacity], DType::F32)?;
        rec.finish().await?;
        Ok(GpuCnnTrainer {
            ctx,
            cfg,
            optimizer: opts.optimizer,
            lr: opts.lr,
            momentum: opts.momentum as f32,
            params: p,
            grads,
            m,
            v,
            one,
            steps: 0,
            log,
            logged: 0,
            capacity,
            read: Vec::new(),
            last: RecorderStats::default(),
            last_weights: None,
        })
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// What the last step recorded, counted just before its submission: its dispatches, and
    /// no submission or readback before that one (the whole step is one submission).
    pub fn last_step_stats(&self) -> RecorderStats {
        self.last
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One ERM step on `x` (B, 3, S, S) with `labels` (B): zero the gradients, the mean
    /// cross-entropy's gradient, the optimizer's update, recorded into one submission that
    /// is not waited for (the loss goes to the log; see `losses`).
    pub async fn step(&mut self, x: &[f32], labels: &[u32]) -> Result<()> {
        self.step_weighted(x, labels, CeWeights::Ones).await
    }

    /// `step` with per-sample weights: `Fixed` (B values, uploaded with the batch) or Stage
    /// 1's `Up`, computed on the GPU from the step's softmax (`last_weights` reads them).
    pub async fn step_weighted(
        &mut self,
        x: &[f32],
        labels: &[u32],
        weights: CeWeights<'_>,
    ) -> Result<()> {
        let b = labels.len();
        let (k, s) = (self.cfg.classes, self.cfg.image);
        if b == 0 || x.len() != b * self.cfg.input_len() {
            return Err(LabError::invalid(format!(
                "a batch of {b} images of 3 x {s} x {s} needs {} values, found {}",
                b * self.cfg.input_len(),
                x.len()
            )));
        }
        if let Some(&bad) = labels.iter().find(|&&y| y as usize >= k) {
            return Err(LabError::invalid(format!(
                "label {bad} is outside the {k} classes"
            )));
        }
        match weights {
            CeWeights::Fixed(w) if w.len() != b => {
                return Err(LabError::invalid(format!(
                    "a batch of {b} images with {} per-sample weights",
                    w.len()
                )))
            }
            CeWeights::Fixed(w) if w.iter().any(|v| !v.is_finite()) => {
                return Err(LabError::invalid("a per-sample weight is not finite"))
            }
            CeWeights::Up { beta_inv } if !(beta_inv.is_finite() && beta_inv > 0.0) => {
                return Err(LabError::invalid(format!(
                    "1/beta must be a positive number; found {beta_inv}"
                )))
            }
            _ => {}
        }
        if self.logged == self.capacity {
            let mut rec = Recorder::new(self.ctx)?;
            let got = rec.read(&self.log).await?;
            rec.finish().await?;
            self.read.extend(got.iter().map(|&l| l as f64));
            self.logged = 0;
        }
        let mut rec = Recorder::new(self.ctx)?;
        let xg = rec.upload_f32(x, &[b, 3, s, s])?;
        let yg = rec.upload_u32(labels, &[b])?;
        for g in &self.grads {
            rec.zero(g)?;
        }
        let fixed = match weights {
            CeWeights::Fixed(w) => Some(rec.upload_f32(w, &[b])?),
            _ => None,
        };
        let weighting = match (weights, &fixed) {
            (CeWeights::Up { beta_inv }, _) => CeWeighting::Up { beta_inv },
            (_, Some(w)) => CeWeighting::Fixed(w),
            _ => CeWeighting::Ones,
        };
        let out = rec.cnn_weighted_loss_backward(
            &self.cfg,
            &self.params,
            &self.grads,
            &xg,
            &yg,
            weighting,
        )?;
        rec.copy_rows(&out.loss, 0, 1, &self.log, self.logged, 1, 1, 1)?;
        self.last_weights = out.weights.clone();
        drop(out);
        self.steps += 1;
        let first = self.steps == 1;
        for i in 0..self.params.len() {
            let (p, g, m) = (&self.params[i], &self.grads[i], &self.m[i]);
            match self.optimizer {
                OptimizerKind::Adam => rec.adamw(
                    p,
                    g,
                    m,
                    &self.v[i],
                    &self.one,
                    self.lr,
                    self.steps,
                    &AdamConfig::default(),
                )?,
                OptimizerKind::Sgd => {
                    rec.sgd_momentum(p, g, m, self.lr as f32, self.momentum, first)?
                }
            }
        }
        self.last = rec.stats();
        rec.finish().await?;
        self.logged += 1;
        Ok(())
    }

    /// The mean loss of every step since the last call, in order (one readback).
    pub async fn losses(&mut self) -> Result<Vec<f64>> {
        let mut out = std::mem::take(&mut self.read);
        if self.logged > 0 {
            let mut rec = Recorder::new(self.ctx)?;
            let got = rec.read(&self.log).await?;
            rec.finish().await?;
            out.extend(got[..self.logged].iter().map(|&l| l as f64));
            self.logged = 0;
        }
        Ok(out)
    }

    /// Reads the last step's per-sample weights back (None after an ERM step or before any).
    pub async fn last_weights(&self) -> Result<Option<Vec<f32>>> {
        let Some(w) = &self.last_weights else {
            return Ok(None);
        };
        let mut rec = Recorder::new(self.ctx)?;
        let got = rec.read(w).await?;
        rec.finish().await?;
        Ok(Some(got))
    }

    /// Reads the parameters back.
    pub async fn params(&self) -> Result<Params<f32>> {
        self.read_all(&self.params).await
    }

    /// Reads the last step's gradients back.
    pub async fn gradients(&self) -> Result<Params<f32>> {
        self.read_all(&self.grads).await
    }

    /// Reads the optimizer state back: Adam's (m, v), or SGD's (momentum buffer, zeros).
    pub async fn moments(&self) -> Result<(Params<f32>, Params<f32>)> {
        let m = self.read_all(&self.m).await?;
        let v = match self.optimizer {
            OptimizerKind::Adam => self.read_all(&self.v).await?,
            OptimizerKind::Sgd => Params::zeros(&self.cfg),
        };
        Ok((m, v))
    }

    async fn read_all(&self, ts: &[GpuTensor]) -> Result<Params<f32>> {
        let mut rec = Recorder::new(self.ctx)?;
        let refs: Vec<&GpuTensor> = ts.iter().collect();
        let tensors = rec.read_many(&refs).await?;
        rec.finish().await?;
        Ok(Params { tensors })
    }
}

/// `run::CeEngine` on the GPU, for the CLI (awaited with `pollster`) and the page (awaited in
/// its worker): the training batches of ERM, Stage 1 and the oracle through a
/// `GpuCnnTrainer`, a fresh one per phase (`begin`); everything else of the run on the CPU.
pub struct GpuCeEngine<'a> {
    ctx: &'a GpuContext,
    opts: SebraOptions,
    trainer: Option<GpuCnnTrainer<'a>>,
}

impl<'a> GpuCeEngine<'a> {
    /// An engine for the run of `opts` (its CNN, optimizer, learning rate and momentum).
    pub fn new(ctx: &'a GpuContext, opts: &SebraOptions) -> Result<Self> {
        if opts.model != ModelKind::Cnn {
            return Err(LabError::invalid(
                "GPU training is built for the CNN only: use --model cnn or --backend cpu",
            ));
        }
        Ok(GpuCeEngine {
            ctx,
            opts: opts.clone(),
            trainer: None,
        })
    }

    fn trainer(&mut self) -> Result<&mut GpuCnnTrainer<'a>> {
        self.trainer
            .as_mut()
            .ok_or_else(|| LabError::invalid("a GPU training step before begin"))
    }
}

impl super::run::CeEngine for GpuCeEngine<'_> {
    fn describe(&self) -> String {
        format!("gpu ({})", self.ctx.describe())
    }

    fn begin<'s>(&'s mut self, params: &'s Params<f32>) -> EngineFuture<'s, ()> {
        Box::pin(async move {
            // The previous phase's trainer (and its pool buffers) goes first.
            self.trainer = None;
            self.trainer = Some(GpuCnnTrainer::new(self.ctx, &self.opts, params).await?);
            Ok(())
        })
    }

    fn step<'s>(
        &'s mut self,
        x: &'s [f32],
        labels: &'s [u32],
        weights: CeWeights<'s>,
    ) -> EngineFuture<'s, ()> {
        Box::pin(async move { self.trainer()?.step_weighted(x, labels, weights).await })
    }

    fn losses(&mut self) -> EngineFuture<'_, Vec<f64>> {
        Box::pin(async move { self.trainer()?.losses().await })
    }

    fn params(&mut self) -> EngineFuture<'_, Params<f32>> {
        Box::pin(async move { self.trainer()?.params().await })
    }
}
