//! The training lab's core: Pre-LN, Post-LN and Mix-LN decoders trained from scratch on the
//! CPU, with the diagnostics the Mix-LN paper plots. This plain-Rust path is the reference
//! the GPU kernels are checked against, and the CLI's `layerlab train`.
//!
//! - `ops`: the paired `*_forward` / `*_backward` kernels (deterministic whatever the
//!   thread count).
//! - `model`: the decoder, its init, forward and backward; the norm placement per block.
//! - `gpu`: the same training step on the GPU (`compute::train_kernels`), state resident in
//!   pool buffers.
//! - `data`: tokenisers (character level or BPE), the 90/10 split, seeded batches.
//! - `sample`: seeded text generation from a trained model.
//! - `export`: the trained model as safetensors + config.json (the CLI's --out, the page's
//!   download).
//! - `cli` (native only): `layerlab train`'s arguments and files (--init, --grads, --out).
//!
//! What it refuses to be: an autodiff engine, a general trainer (one model family, one
//! optimizer), or fast at scale; it is the lab's ground truth.

#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
pub mod data;
pub mod export;
pub(crate) mod gemm;
pub use gemm::{fma_available, fma_in_use, use_fma};
pub mod gpu;
pub mod model;
pub mod ops;
pub mod sample;

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::{LabError, Result};
use data::{val_windows, Batcher, Corpus};
use model::{Model, ModelConfig, Weights};
use ops::AdamConfig;

/// Where the norms sit in every block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormPlacement {
    /// Every block Pre-LN.
    Pre,
    /// Every block Post-LN.
    Post,
    /// The first floor(alpha * L) blocks Post-LN, the rest Pre-LN.
    Mix,
}

impl std::str::FromStr for NormPlacement {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "pre" => Ok(NormPlacement::Pre),
            "post" => Ok(NormPlacement::Post),
            "mix" => Ok(NormPlacement::Mix),
            _ => Err(format!(
                "unknown norm placement '{s}': use pre, post or mix"
            )),
        }
    }
}

/// One training run's settings. The defaults are the 12 x 128 preset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainOptions {
    /// Transformer blocks (L).
    pub layers: usize,
    /// Hidden width (C).
    pub width: usize,
    /// Query heads (H); width % heads == 0 and the head dim even (RoPE rotates pairs).
    pub heads: usize,
    /// Key/value heads (KV); heads % kv_heads == 0 (GQA).
    pub kv_heads: usize,
    /// SwiGLU hidden width (F).
    pub ffn: usize,
    /// Context length (T): each window holds ctx + 1 tokens.
    pub ctx: usize,
    /// Windows per step (B).
    pub batch: usize,
    /// Optimizer steps.
    pub steps: usize,
    /// Peak learning rate (Adam).
    pub lr: f64,
    /// Fraction of the steps spent warming up linearly.
    pub warmup: f64,
    /// Global gradient-norm clip; 0 = off.
    pub clip: f64,
    /// Decoupled weight decay (AdamW); 0 = Adam, as the paper.
    pub weight_decay: f64,
    /// Seeds the init (ChaCha8 stream 0) and the batches (stream 1).
    pub seed: u64,
    /// Validation loss and angular distance every this many steps (and after the last).
    pub eval_every: usize,
    pub norm: NormPlacement,
    /// Mix-LN's ratio: the first floor(alpha * layers) blocks are Post-LN (with norm = mix).
    pub alpha: f64,
    /// The LM head shares the embedding matrix.
    pub tied_head: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            layers: 12,
            width: 128,
            heads: 4,
            kv_heads: 4,
            ffn: 344,
            ctx: 128,
            batch: 16,
            steps: 300,
            lr: 1e-3,
            warmup: 0.1,
            clip: 0.0,
            weight_decay: 0.0,
            seed: 0,
            eval_every: 50,
            norm: NormPlacement::Mix,
            alpha: 0.25,
            tied_head: false,
        }
    }
}

/// A run on the CPU (every core natively; the page's WebAssembly threads), and why.
pub fn cpu_backend_info(reason: &str) -> crate::compute::BackendInfo {
    crate::compute::BackendInfo {
        kind: "cpu".into(),
        name: crate::compute::backend::cpu_name(),
        reason: Some(reason.into()),
    }
}

/// Validation windows per evaluation: this many batches of `batch` windows.
pub const VAL_BATCHES: usize = 4;

/// The largest (N x V) probability buffer the CPU path allocates: 2^27 floats (512 MiB).
pub const MAX_LOGITS: usize = 1 << 27;

impl TrainOptions {
    /// Number of Post-LN blocks this placement gives.
    pub fn post_blocks(&self) -> usize {
        match self.norm {
            NormPlacement::Pre => 0,
            NormPlacement::Post => self.layers,
            NormPlacement::Mix => (self.alpha * self.layers as f64).floor() as usize,
        }
    }

    /// The model these options describe for a vocabulary, after checking the sizes.
    pub fn model_config(&self, vocab: usize) -> Result<ModelConfig> {
        let bad = |m: String| Err(LabError::invalid(m));
        if self.layers == 0 || self.width == 0 || self.ffn == 0 || self.ctx == 0 {
            return bad("layers, width, ffn and ctx must all be at least 1".into());
        }
        if self.batch == 0 {
            return bad("batch must be at least 1".into());
        }
        if self.heads == 0 || !self.width.is_multiple_of(self.heads) {
            return bad(format!(
                "width {} is not a multiple of heads {}",
                self.width, self.heads
            ));
        }
        if !(self.width / self.heads).is_multiple_of(2) {
            return bad(format!(
                "the head dim width/heads = {} must be even (RoPE rotates pairs)",
                self.width / self.heads
            ));
        }
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "heads {} is not a multiple of kv_heads {}",
                self.heads, self.kv_heads
            ));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return bad(format!("alpha must lie in [0, 1], not {}", self.alpha));
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return bad(format!("warmup must lie in [0, 1), not {}", self.warmup));
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) || self.clip.is_nan() || self.clip < 0.0 {
            return bad("lr and clip must be finite and not negative".into());
        }
        if self.eval_every == 0 {
            return bad("eval_every must be at least 1".into());
        }
        if vocab == 0 {
            return bad("the vocabulary is empty".into());
        }
        if vocab > u32::MAX as usize || (self.batch * self.ctx).saturating_mul(vocab) > MAX_LOGITS {
            return bad(format!(
                "the vocabulary ({vocab} tokens) is too large for batch x ctx = {}: the LM \
                 head's probabilities would need {} floats, more than the {MAX_LOGITS} the \
                 CPU path allows; use the character tokenizer or a smaller batch or ctx",
                self.batch * self.ctx,
                (self.batch * self.ctx).saturating_mul(vocab)
            ));
        }
        Ok(ModelConfig {
            vocab,
            layers: self.layers,
            width: self.width,
            heads: self.heads,
            kv_heads: self.kv_heads,
            ffn: self.ffn,
            post_blocks: self.post_blocks(),
            tied_head: self.tied_head,
        })
    }
}

/// One optimizer step's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 0-based.
    pub step: usize,
    /// The learning rate this step used.
    pub lr: f64,
    /// Mean cross-entropy of the step's batch, before the update.
    pub loss: f64,
    /// L2 norm of each block's parameter gradient (before clipping), one per block.
    pub grad_norm: Vec<f64>,
    /// RMS of each block's output over the step's batch, one per block.
    pub hidden_rms: Vec<f64>,
    /// Validation loss after this step's update, where evaluated.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f64>,
}

/// The angular distance matrix of one evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AngularDistance {
    /// The step after whose update it was measured.
    pub step: usize,
    /// `matrix[l][n-1]` = mean over validation windows of arccos(cos(s_l, s_{l+n})) / pi for
    /// the last token's states, s_0 the embedding output and s_l block l's output
    /// (l in 0..L, n in 1..=L); null where l + n > L.
    pub matrix: Vec<Vec<Option<f64>>>,
}

/// Validation loss with one block skipped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerRemoval {
    pub block: usize,
    pub loss: f64,
    /// loss - the full model's validation loss.
    pub increase: f64,
}

/// Wall-clock seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub total_s: f64,
    pub train_s: f64,
    pub eval_s: f64,
}

/// What a run reports (the CLI's --json, the page's download).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub options: TrainOptions,
    pub vocab_size: usize,
    pub params: usize,
    pub steps: Vec<StepRecord>,
    pub angular_distance: Vec<AngularDistance>,
    /// After training (empty when the run was cancelled).
    pub layer_removal: Vec<LayerRemoval>,
    /// Training tokens (B*T per step) per second of training time.
    pub tokens_per_s: f64,
    pub timings: Timings,
    /// The run was stopped before its last step (the page's Stop): `steps` holds the steps
    /// taken, and there is no layer removal.
    #[serde(default)]
    pub stopped: bool,
}

/// Hears about a run as it goes, and may stop it.
pub trait TrainMonitor {
    /// A step finished (`of` steps in all).
    fn step(&self, _record: &StepRecord, _of: usize) {}
    /// An evaluation finished.
    fn eval(&self, _angular: &AngularDistance) {}
    /// True once the user asked to stop: the run returns what it trained so far.
    fn cancelled(&self) -> bool {
        false
    }
}

/// A monitor that hears nothing.
pub struct Quiet;
impl TrainMonitor for Quiet {}

/// A finished (or stopped) run: its report and the trained model.
pub struct TrainRun {
    pub report: TrainReport,
    pub model: Model,
    pub cancelled: bool,
}

/// Gradient of the mean loss of one batch (B rows of T+1 ids) at the model's weights.
pub fn batch_gradients(model: &Model, batch: &[u32], b: usize, t: usize) -> (f64, Weights) {
    let mut acts = model.forward(batch, b, t, None);
    let mut grads = Weights::zeros(&model.cfg);
    model.backward(&mut acts, &mut grads);
    (acts.loss, grads)
}

/// The first batch a run with these options trains on.
pub fn first_batch(corpus: &Corpus, opts: &TrainOptions) -> Vec<u32> {
    Batcher::new(opts.seed).next(&corpus.train, opts.batch, opts.ctx)
}

/// L2 norm of each block's gradient (its nine tensors together).
pub fn block_grad_norms(grads: &Weights) -> Vec<f64> {
    grads
        .blocks
        .iter()
        .map(|b| {
            [
                &b.norm1, &b.q, &b.k, &b.v, &b.o, &b.norm2, &b.gate, &b.up, &b.down,
            ]
            .iter()
            .map(|t| ops::sum_squares(t))
            .sum::<f64>()
            .sqrt()
        })
        .collect()
}

/// Mean validation loss over the fixed validation windows, optionally skipping one block: the
/// plain definition, which `layer_removal_losses` reproduces with less work (checked below).
#[cfg(test)]
fn val_loss(model: &Model, val: &[u32], b: usize, t: usize, skip: Option<usize>) -> f64 {
    let per = b * (t + 1);
    let batches: Vec<&[u32]> = val.chunks(per).collect();
    batches
        .iter()
        .map(|w| model.forward(w, b, t, skip).loss)
        .sum::<f64>()
        / batches.len() as f64
}

/// The mean validation loss of the full model and, per block, with that block skipped (each
/// `val_loss(.., Some(block))`, the same bits): one full forward per validation window, whose
/// block outputs start every skipped run, so a run recomputes only the blocks after its skip
/// (about half the work of a forward per block).
fn layer_removal_losses(model: &Model, val: &[u32], b: usize, t: usize) -> (f64, Vec<f64>) {
    let per = b * (t + 1);
    let layers = model.cfg.layers;
    let (mut full, mut without) = (0.0f64, vec![0.0f64; layers]);
    let mut windows = 0usize;
    for w in val.chunks(per) {
        let acts = model.forward(w, b, t, None);
        full += acts.loss;
        for (block, sum) in without.iter_mut().enumerate() {
            *sum += model.loss_without(&acts, block);
        }
        windows += 1;
    }
    let n = windows as f64;
    (full / n, without.into_iter().map(|s| s / n).collect())
}

/// Validation loss and the angular distance matrix.
fn evaluate(model: &Model, val: &[u32], b: usize, t: usize, step: usize) -> (f64, AngularDistance) {
    let per = b * (t + 1);
    let layers = model.cfg.layers;
    let c = model.cfg.width;
    let mut loss = 0.0;
    let mut sums = vec![vec![0.0f64; layers]; layers];
    let mut windows = 0usize;
    let chunks: Vec<&[u32]> = val.chunks(per).collect();
    for w in &chunks {
        let acts = model.forward(w, b, t, None);
        loss += acts.loss;
        for row in 0..b {
            let at = (row * t + t - 1) * c;
            let state = |l: usize| last_token_state(&acts, l, at, c);
            for (l, row) in sums.iter_mut().enumerate() {
                for n in 1..=layers - l {
                    row[n - 1] += angular(state(l), state(l + n));
                }
            }
            windows += 1;
        }
    }
    let matrix = (0..layers)
        .map(|l| {
            (1..=layers)
                .map(|n| (l + n <= layers).then(|| sums[l][n - 1] / windows as f64))
                .collect()
        })
        .collect();
    (loss / chunks.len() as f64, AngularDistance { step, matrix })
}

/// s_l at flat offset `at`: the embedding output for l = 0, block l-1's output after.
fn last_token_state(acts: &model::Activations, l: usize, at: usize, c: usize) -> &[f32] {
    if l == 0 {
        &acts.embedded[at..at + c]
    } else {
        &acts.blocks[l - 1].out[at..at + c]
    }
}

/// arccos(cos(a, b)) / pi in [0, 1], in f64 (cos clamped to [-1, 1]).
pub fn angular(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64, *y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    let cos = if aa > 0.0 && bb > 0.0 {
        (ab / (aa.sqrt() * bb.sqrt())).clamp(-1.0, 1.0)
    } else {
        1.0
    };
    libm::acos(cos) / std::f64::consts::PI
}

/// What one engine step reports (before the update's effect).
pub struct StepOutput {
    pub loss: f64,
    pub grad_norm: Vec<f64>,
    pub hidden_rms: Vec<f64>,
}

/// One optimizer step's inputs, drawn by the `Trainer` (the one source of the batches and
/// the schedule, whichever engine computes the step).
pub struct StepInput {
    /// 0-based.
    pub step: usize,
    /// The schedule's learning rate for this step.
    pub lr: f64,
    /// B rows of T + 1 ids.
    pub batch: Vec<u32>,
}

/// An engine's answer, later: the CPU's is ready at once, the GPU's when its readback lands
/// (awaited in the browser's worker, `pollster::block_on` natively).
pub type EngineFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + 'a>>;

/// Where a run's training steps are computed: `CpuSteps` (the reference, `ops` on the
/// CPU) or `gpu::GpuSteps` (the same step on the GPU). Evaluation (validation loss, angular
/// distance, layer removal) always runs on the CPU model, which `sync` brings up to date.
pub trait StepEngine {
    /// The run starts from `model` with Adam(W) `adam` (called before the first step).
    fn begin<'a>(&'a mut self, model: &'a Model, adam: AdamConfig) -> EngineFuture<'a, ()>;
    /// Forward and backward on `input.batch` (B rows of T + 1 ids), the global clip at
    /// `clip` (0 = off) and one AdamW update at `input.lr`.
    fn step<'a>(
        &'a mut self,
        model: &'a mut Model,
        input: &'a StepInput,
        b: usize,
        t: usize,
        clip: f64,
    ) -> EngineFuture<'a, StepOutput>;
    /// Makes `model.weights` the engine's current parameters.
    fn sync<'a>(&'a mut self, model: &'a mut Model) -> EngineFuture<'a, ()>;
    /// True for an engine whose state lives off the CPU and can be lost (a GPU device): the
    /// trainer then keeps the weights and Adam's moments (`moments`) at every evaluation, to
    /// go on on the CPU from there if the engine fails (`Trainer::fall_back`).
    fn can_lose_state(&self) -> bool {
        false
    }
    /// Adam's first and second moments (m, v) as they are now (asked only where
    /// `can_lose_state`).
    fn moments(&mut self) -> EngineFuture<'_, (Weights, Weights)> {
        Box::pin(std::future::ready(Err(LabError::invalid(
            "this engine keeps no moments to read",
        ))))
    }
}

/// The CPU step: `model`'s forward and backward, then `ops::adamw_update` per tensor.
#[derive(Default)]
pub struct CpuSteps {
    m: Option<Weights>,
    v: Option<Weights>,
    adam: AdamConfig,
    /// The last step's activations and gradients, whose buffers the next step reuses (fresh
    /// ones every step cost a fifth of the step in page faults).
    acts: Option<model::Activations>,
    grads: Option<Weights>,
}

impl CpuSteps {
    /// A CPU engine that goes on from Adam's moments `m` and `v` (a GPU run's checkpoint).
    pub fn resume(m: Weights, v: Weights, adam: AdamConfig) -> CpuSteps {
        CpuSteps {
            m: Some(m),
            v: Some(v),
            adam,
            acts: None,
            grads: None,
        }
    }

    fn step_now(
        &mut self,
        model: &mut Model,
        input: &StepInput,
        b: usize,
        t: usize,
        clip: f64,
    ) -> Result<StepOutput> {
        let (Some(m), Some(v)) = (self.m.as_mut(), self.v.as_mut()) else {
            return Err(LabError::invalid("a CPU step before begin"));
        };
        let acts = self.acts.get_or_insert_with(Default::default);
        model.forward_into(acts, &input.batch, b, t, None);
        let grads = self.grads.get_or_insert_with(|| Weights::zeros(&model.cfg));
        grads.tensors_mut().into_iter().for_each(|g| g.fill(0.0));
        model.backward(acts, grads);
        let hidden_rms = acts
            .blocks
            .iter()
            .map(|a| (ops::sum_squares(&a.out) / a.out.len() as f64).sqrt())
            .collect();
        let loss = acts.loss;
        let grad_norm = block_grad_norms(grads);
        if clip > 0.0 {
            // torch.nn.utils.clip_grad_norm_: scale by clip / (total + 1e-6) when below 1.
            let total = grads
                .tensors()
                .iter()
                .map(|g| ops::sum_squares(g))
                .sum::<f64>()
                .sqrt();
            let coef = clip / (total + 1e-6);
            if coef < 1.0 {
                for g in grads.tensors_mut() {
                    ops::scale_inplace(g, coef as f32);
                }
            }
        }
        for ((p, g), (mi, vi)) in model
            .weights
            .tensors_mut()
            .into_iter()
            .zip(grads.tensors())
            .zip(m.tensors_mut().into_iter().zip(v.tensors_mut()))
        {
            ops::adamw_update(p, g, mi, vi, input.lr, input.step as u64 + 1, &self.adam);
        }
        Ok(StepOutput {
            loss,
            grad_norm,
            hidden_rms,
        })
    }
}

impl StepEngine for CpuSteps {
    fn begin<'a>(&'a mut self, model: &'a Model, adam: AdamConfig) -> EngineFuture<'a, ()> {
        self.m = Some(Weights::zeros(&model.cfg));
        self.v = Some(Weights::zeros(&model.cfg));
        self.adam = adam;
        (self.acts, self.grads) = (None, None);
        Box::pin(std::future::ready(Ok(())))
    }

    fn step<'a>(
        &'a mut self,
        model: &'a mut Model,
        input: &'a StepInput,
        b: usize,
        t: usize,
        clip: f64,
    ) -> EngineFuture<'a, StepOutput> {
        Box::pin(std::future::ready(self.step_now(model, input, b, t, clip)))
    }

    fn sync<'a>(&'a mut self, _model: &'a mut Model) -> EngineFuture<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Its moments, for a test engine that wraps it (the CPU itself never asks).
    fn moments(&mut self) -> EngineFuture<'_, (Weights, Weights)> {
        Box::pin(std::future::ready(match (&self.m, &self.v) {
            (Some(m), Some(v)) => Ok((m.clone(), v.clone())),
            _ => Err(LabError::invalid("CPU moments before begin")),
        }))
    }
}

/// What a run can go back to when its engine fails: everything `Trainer::step` changes,
/// as it was after `steps` steps (0: the start).
struct Checkpoint {
    steps: usize,
    weights: Weights,
    /// Adam's moments; None = zeros (the start).
    moments: Option<(Weights, Weights)>,
    batcher: Batcher,
    evaluations: usize,
    train_s: f64,
    eval_s: f64,
    last_val: Option<f64>,
}

/// A run in progress, one optimizer step at a time: what `train` loops over, and what the
/// page drives between its yields to the worker's event loop (so Stop, Pause and Sample are
/// heard between steps). Owns a copy of its data, so it outlives the corpus it was made
/// from. It draws every step's batch and learning rate, keeps the records and evaluates on
/// the CPU model; the steps themselves are computed by a `StepEngine` (the CPU's, or the
/// GPU's, awaited).
pub struct Trainer<'e> {
    opts: TrainOptions,
    cfg: ModelConfig,
    model: Model,
    train_ids: Vec<u32>,
    val: Vec<u32>,
    batcher: Batcher,
    engine: Box<dyn StepEngine + 'e>,
    adam: AdamConfig,
    begun: bool,
    /// Where a fallible engine's run goes back to (`fall_back`); None for the CPU's.
    checkpoint: Option<Checkpoint>,
    steps: Vec<StepRecord>,
    angular_distance: Vec<AngularDistance>,
    train_s: f64,
    eval_s: f64,
    last_val: Option<f64>,
    started: web_time::Instant,
}

impl Trainer<'static> {
    /// A run whose steps are computed on the CPU (the reference, the same bits on any thread
    /// count).
    pub fn new(corpus: &Corpus, opts: &TrainOptions, init: Option<Weights>) -> Result<Self> {
        Trainer::with_engine(corpus, opts, init, Box::new(CpuSteps::default()))
    }
}

impl<'e> Trainer<'e> {
    /// Checks the options against the corpus and sets up the model (from `init`, or the
    /// seeded init) and the fixed validation windows; the engine begins at the first step.
    pub fn with_engine(
        corpus: &Corpus,
        opts: &TrainOptions,
        init: Option<Weights>,
        engine: Box<dyn StepEngine + 'e>,
    ) -> Result<Trainer<'e>> {
        let started = web_time::Instant::now();
        let cfg = opts.model_config(corpus.vocab_size)?;
        let (b, t) = (opts.batch, opts.ctx);
        if corpus.train.len() <= t || corpus.val.len() <= t {
            return Err(LabError::invalid(format!(
                "the text is too short for ctx {t}: each split needs at least ctx + 1 = {} tokens \
                 (train {}, validation {})",
                t + 1,
                corpus.train.len(),
                corpus.val.len()
            )));
        }
        if let Some(&bad) = corpus
            .train
            .iter()
            .chain(&corpus.val)
            .find(|&&id| id as usize >= cfg.vocab)
        {
            return Err(LabError::invalid(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                cfg.vocab
            )));
        }
        let weights = match init {
            Some(w) => w,
            None => Weights::init(&cfg, opts.seed),
        };
        let model = Model {
            cfg: cfg.clone(),
            weights,
        };
        let batcher = Batcher::new(opts.seed);
        // The start is where a fallible engine's run goes back to before its first evaluation.
        let checkpoint = engine.can_lose_state().then(|| Checkpoint {
            steps: 0,
            weights: model.weights.clone(),
            moments: None,
            batcher: batcher.clone(),
            evaluations: 0,
            train_s: 0.0,
            eval_s: 0.0,
            last_val: None,
        });
        Ok(Trainer {
            opts: opts.clone(),
            model,
            train_ids: corpus.train.clone(),
            val: val_windows(&corpus.val, VAL_BATCHES * b, t),
            batcher,
            engine,
            adam: AdamConfig {
                weight_decay: opts.weight_decay,
                ..AdamConfig::default()
            },
            begun: false,
            checkpoint,
            cfg,
            steps: Vec::with_capacity(opts.steps),
            angular_distance: Vec::new(),
            train_s: 0.0,
            eval_s: 0.0,
            last_val: None,
            started,
        })
    }

    /// Steps taken so far.
    pub fn steps_done(&self) -> usize {
        self.steps.len()
    }

    /// True once every step of the options has run.
    pub fn done(&self) -> bool {
        self.steps.len() >= self.opts.steps
    }

    /// The options of this run.
    pub fn options(&self) -> &TrainOptions {
        &self.opts
    }

    /// The model as trained so far on the CPU engine; a GPU engine's weights reach it at each
    /// evaluation, at `sync` and at `finish`.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Every step's record so far (the last one is the step just taken).
    pub fn records(&self) -> &[StepRecord] {
        &self.steps
    }

    /// Every angular-distance evaluation so far.
    pub fn angular_distance(&self) -> &[AngularDistance] {
        &self.angular_distance
    }

    /// Training tokens (B*T per step) per second of training time so far.
    pub fn tokens_per_s(&self) -> f64 {
        if self.train_s > 0.0 {
            (self.steps.len() * self.opts.batch * self.opts.ctx) as f64 / self.train_s
        } else {
            0.0
        }
    }

    /// One optimizer step (and the evaluation due after it), reported to `monitor`. After an
    /// error the run is good only for `fall_back` (a failed GPU engine's run goes on on the
    /// CPU from its last checkpoint).
    pub async fn step(&mut self, monitor: &dyn TrainMonitor) -> Result<()> {
        let (b, t, clip) = (self.opts.batch, self.opts.ctx, self.opts.clip);
        let t0 = web_time::Instant::now();
        if !self.begun {
            self.engine.begin(&self.model, self.adam).await?;
            self.begun = true;
        }
        let step = self.steps.len();
        let input = StepInput {
            step,
            lr: ops::lr_at(step, self.opts.steps, self.opts.warmup, self.opts.lr),
            batch: self.batcher.next(&self.train_ids, b, t),
        };
        let StepOutput {
            loss,
            grad_norm,
            hidden_rms,
        } = self
            .engine
            .step(&mut self.model, &input, b, t, clip)
            .await?;
        self.train_s += t0.elapsed().as_secs_f64();
        self.steps.push(StepRecord {
            step,
            lr: input.lr,
            loss,
            grad_norm,
            hidden_rms,
            val_loss: None,
        });
        if (step + 1).is_multiple_of(self.opts.eval_every) || step + 1 == self.opts.steps {
            let t1 = web_time::Instant::now();
            self.engine.sync(&mut self.model).await?;
            let moments = if self.engine.can_lose_state() {
                Some(self.engine.moments().await?)
            } else {
                None
            };
            let (loss, ang) = evaluate(&self.model, &self.val, b, t, step);
            self.eval_s += t1.elapsed().as_secs_f64();
            self.last_val = Some(loss);
            if let Some(r) = self.steps.last_mut() {
                r.val_loss = Some(loss);
            }
            monitor.eval(&ang);
            self.angular_distance.push(ang);
            if moments.is_some() {
                self.checkpoint = Some(self.checkpoint_now(moments));
            }
        }
        if let Some(r) = self.steps.last() {
            monitor.step(r, self.opts.steps);
        }
        Ok(())
    }

    fn checkpoint_now(&self, moments: Option<(Weights, Weights)>) -> Checkpoint {
        Checkpoint {
            steps: self.steps.len(),
            weights: self.model.weights.clone(),
            moments,
            batcher: self.batcher.clone(),
            evaluations: self.angular_distance.len(),
            train_s: self.train_s,
            eval_s: self.eval_s,
            last_val: self.last_val,
        }
    }

    /// After the engine failed (a lost GPU device): the run goes back to its last
    /// checkpoint (the weights, Adam's moments and the batch stream after the last
    /// evaluation, or the start) and goes on on the CPU. Returns the number of steps kept;
    /// the records after them are dropped (their steps are taken again, on the CPU).
    pub fn fall_back(&mut self) -> Result<usize> {
        let Some(cp) = self.checkpoint.take() else {
            return Err(LabError::invalid(
                "this run's engine keeps no checkpoint to go back to",
            ));
        };
        let (m, v) = cp.moments.unwrap_or_else(|| {
            let z = Weights::zeros(&self.cfg);
            (z.clone(), z)
        });
        self.model.weights = cp.weights;
        self.batcher = cp.batcher;
        self.steps.truncate(cp.steps);
        self.angular_distance.truncate(cp.evaluations);
        self.train_s = cp.train_s;
        self.eval_s = cp.eval_s;
        self.last_val = cp.last_val;
        self.engine = Box::new(CpuSteps::resume(m, v, self.adam));
        self.begun = true;
        Ok(cp.steps)
    }

    /// Brings the CPU model up to date with the engine's weights (for a sample, or before
    /// `finish`).
    pub async fn sync(&mut self) -> Result<()> {
        if self.begun {
            self.engine.sync(&mut self.model).await?;
        }
        Ok(())
    }

    /// Ends the run: after every step, the layer-removal diagnostic (and, for a run of
    /// zero steps, one evaluation of the initial model); after a Stop (`stopped`), the steps
    /// taken so far, without them.
    pub async fn finish(mut self, stopped: bool, monitor: &dyn TrainMonitor) -> Result<TrainRun> {
        self.sync().await?;
        Ok(self.report(stopped, monitor))
    }

    /// `finish` on a model already synced (`sync`).
    pub fn report(self, stopped: bool, monitor: &dyn TrainMonitor) -> TrainRun {
        let Trainer {
            opts,
            cfg,
            model,
            val,
            steps,
            mut angular_distance,
            train_s,
            mut eval_s,
            mut last_val,
            started,
            ..
        } = self;
        let (b, t) = (opts.batch, opts.ctx);
        let t1 = web_time::Instant::now();
        if steps.is_empty() && !stopped {
            let (loss, ang) = evaluate(&model, &val, b, t, 0);
            last_val = Some(loss);
            monitor.eval(&ang);
            angular_distance.push(ang);
        }
        let mut layer_removal = Vec::new();
        if !stopped {
            let (full, without) = layer_removal_losses(&model, &val, b, t);
            let full = last_val.unwrap_or(full);
            for (block, loss) in without.into_iter().enumerate() {
                layer_removal.push(LayerRemoval {
                    block,
                    loss,
                    increase: loss - full,
                });
            }
        }
        eval_s += t1.elapsed().as_secs_f64();
        let trained_tokens = (steps.len() * b * t) as f64;
        let report = TrainReport {
            options: opts,
            vocab_size: cfg.vocab,
            params: model.weights.count(),
            steps,
            angular_distance,
            layer_removal,
            tokens_per_s: if train_s > 0.0 {
                trained_tokens / train_s
            } else {
                0.0
            },
            timings: Timings {
                total_s: started.elapsed().as_secs_f64(),
                train_s,
                eval_s,
            },
            stopped,
        };
        TrainRun {
            report,
            model,
            cancelled: stopped,
        }
    }
}

/// Trains a model on `corpus` with `opts` from `init` (or the seeded init), reporting each
/// step to `monitor`. Deterministic: the same options and corpus give the same bits on any
/// thread count.
#[cfg(not(target_arch = "wasm32"))]
pub fn train(
    corpus: &Corpus,
    opts: &TrainOptions,
    init: Option<Weights>,
    monitor: &dyn TrainMonitor,
) -> Result<TrainRun> {
    train_on(corpus, opts, init, monitor, Box::new(CpuSteps::default()))
}

/// `train` with the steps computed by `engine`, each awaited in turn (natively: the CPU's
/// are ready at once, the GPU's after its readback).
#[cfg(not(target_arch = "wasm32"))]
pub fn train_on<'e>(
    corpus: &Corpus,
    opts: &TrainOptions,
    init: Option<Weights>,
    monitor: &dyn TrainMonitor,
    engine: Box<dyn StepEngine + 'e>,
) -> Result<TrainRun> {
    let mut trainer = Trainer::with_engine(corpus, opts, init, engine)?;
    while !trainer.done() {
        if monitor.cancelled() {
            return pollster::block_on(trainer.finish(true, monitor));
        }
        pollster::block_on(trainer.step(monitor))?;
    }
    pollster::block_on(trainer.finish(false, monitor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::model::{ModelConfig, Weights};

    /// The layer-removal pass that reuses the full forward's block outputs gives exactly the
    /// losses of a forward that skips each block (`val_loss`), for every placement mix, a tied
    /// and an untied head, and a last validation window of whole rows.
    #[test]
    fn layer_removal_reusing_the_prefix_equals_skipping_each_block() {
        for (post_blocks, tied_head) in [(0, true), (2, false), (5, true)] {
            let cfg = ModelConfig {
                vocab: 23,
                layers: 5,
                width: 16,
                heads: 2,
                kv_heads: 1,
                ffn: 40,
                post_blocks,
                tied_head,
            };
            let model = Model {
                weights: Weights::init(&cfg, 7 + post_blocks as u64),
                cfg,
            };
            let (b, t) = (3, 9);
            let val: Vec<u32> = (0..3 * b * (t + 1))
                .map(|i| ((i * 7 + i / 5) % 23) as u32)
                .collect();
            let (full, without) = layer_removal_losses(&model, &val, b, t);
            assert_eq!(full.to_bits(), val_loss(&model, &val, b, t, None).to_bits());
            for (block, loss) in without.iter().enumerate() {
                let want = val_loss(&model, &val, b, t, Some(block));
                assert_eq!(
                    loss.to_bits(),
                    want.to_bits(),
                    "block {block}: {loss} vs {want}"
                );
                assert!(
                    (loss - full).abs() > 1e-6,
                    "skipping block {block} changed nothing"
                );
            }
        }
    }
}
