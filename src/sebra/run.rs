//! One bias-lab run (`run_sebra`): the data from the seed, then four trainings of the same
//! architecture from their own seeded inits, each scored per group on the balanced test split:
//! - ERM: plain cross-entropy for `epochs` epochs (shuffled, every sample once per epoch);
//! - Sebra Stage 1 (ranking): the up-weighted loss on batches drawn only from the selected
//!   samples, and after every epoch deselection at p_critical with rank = epoch
//!   (`ranking::Stage1`), until none is left or `rank_epochs`;
//! - Sebra Stage 2 (mitigation): a fresh model trained for `epochs` epochs on anchor /
//!   positive / negative triples from the ranking (`ranking::PairTable`) with the batch
//!   contrastive loss on the anchors' features plus w x CE on the positives;
//! - the oracle: cross-entropy reweighted by the true groups (each (class, colour, texture)
//!   cell weighs N / (cells x its size)), a reference that uses labels Sebra never sees.
//!
//! As in the authors' code (urbancars_trainers/sebra.py), Stage 2 passes anchors and positives
//! through the backbone together (with gradient), takes the contrastive loss on the anchors'
//! features against the positives' and negatives' features without gradient, and the
//! cross-entropy on the head of the positives' features. The authors take the positives'
//! no-gradient features from a second pass in eval mode; these models have no batch norm or
//! dropout, so those are the same numbers as the gradient pass's, detached.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::data::{self, Group, SebraData, Split};
use super::loss;
use super::metrics::{group_accuracy, GroupAccuracy};
use super::model::{Acts, Net, NetConfig, Params};
use super::ranking::{deselected_counts, epoch_draws, uniform_below, Pair, PairTable, Stage1};
use super::tau::{ranking_tau, RankingTau};
use super::{OptimizerKind, SebraOptions};
use crate::error::Result;
use crate::train::ops::{adamw_update, AdamConfig};
use crate::train::EngineFuture;

/// The phases of a run, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Erm,
    Rank,
    Mitigate,
    Oracle,
}

/// One finished epoch of one phase.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochRecord {
    pub phase: Phase,
    /// 1-based.
    pub epoch: usize,
    /// The phase's epochs at most (Stage 1 may stop earlier).
    pub of: usize,
    /// The mean training loss of the epoch's batches.
    pub loss: f64,
    pub seconds: f64,
}

/// What a page or a CLI hears while a run goes on.
pub trait SebraMonitor {
    fn epoch(&self, _record: &EpochRecord) {}
    /// Stage 1 finished an epoch: what it deselected, per class and group (the ranking as it
    /// forms).
    fn ranked(&self, _epoch: &RankEpoch) {}
    /// True once the user asked to stop: the run stops at the next batch and reports an error.
    fn cancelled(&self) -> bool {
        false
    }
}

/// A monitor that hears nothing.
pub struct Quiet;
impl SebraMonitor for Quiet {}

/// One training sample's place in the ranking.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankedSample {
    pub index: usize,
    pub class: u32,
    pub group: Group,
    /// The epoch it was deselected (1, 2, ...), or epochs run + 1 if never.
    pub rank: u32,
}

/// One Stage 1 epoch: the samples it deselected, counted per class and true group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankEpoch {
    pub epoch: u32,
    /// [class][group order: both aligned, only colour, only texture, none].
    pub deselected: Vec<[u32; 4]>,
    /// Samples still selected after it.
    pub remaining: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankingReport {
    /// Stage 1's epochs run.
    pub epochs: u32,
    pub samples: Vec<RankedSample>,
    pub per_epoch: Vec<RankEpoch>,
    /// Stage 2: anchors per epoch that had a positive (the others are skipped).
    pub pairs_per_epoch: usize,
}

/// Test accuracy per group for each model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accuracies {
    pub erm: GroupAccuracy,
    pub sebra: GroupAccuracy,
    /// Uses the true groups, which Sebra never sees.
    pub oracle: GroupAccuracy,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub data_s: f64,
    pub erm_s: f64,
    pub rank_s: f64,
    pub mitigate_s: f64,
    pub oracle_s: f64,
    pub total_s: f64,
    /// ERM's training images per second (forward + backward + update).
    pub erm_images_per_s: f64,
    pub threads: usize,
}

/// Everything a run measured; the page draws it, the CLI writes it as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SebraReport {
    pub options: SebraOptions,
    pub ranking: RankingReport,
    pub tau: RankingTau,
    pub accuracy: Accuracies,
    /// Every epoch of every phase.
    pub epochs: Vec<EpochRecord>,
    pub timings: Timings,
    /// Where each phase ran, e.g. "cpu" or "erm, rank, oracle training: gpu (adapter); rank's
    /// per-epoch scoring, mitigate, every test scoring: cpu" (`SebraRun::backend`).
    #[serde(default)]
    pub backend: String,
}

/// The per-sample weights of one cross-entropy batch, L = (1/B) sum_i w_i CE_i (the mean
/// divides by B whatever the weights sum to; the weights are constants: no gradient flows
/// through them).
#[derive(Clone, Copy, Debug)]
pub enum CeWeights<'w> {
    /// 1 each: ERM.
    Ones,
    /// The batch's own weights, one per sample: the oracle's group-balanced weights.
    Fixed(&'w [f32]),
    /// Stage 1's up-weights w_i = stopgrad(p_{i,y_i})^beta_inv, from the step's own softmax.
    Up { beta_inv: f64 },
}

/// Runs the cross-entropy phases' training batches (ERM, Stage 1, the oracle) somewhere other
/// than `ce_step` on this thread (the GPU: `sebra::gpu`): the same batches, the same init, the
/// same optimizer; its steps may finish later, the losses and the weights are read back at
/// the epochs' ends. Each phase starts it afresh with `begin`. Every call returns a future
/// (`train::EngineFuture`, as the training lab's `StepEngine`): the CLI awaits it with
/// `pollster`, the page inside its worker.
pub trait CeEngine {
    /// Where it trains, for the report's backend line ("gpu (adapter)").
    fn describe(&self) -> String;
    /// Starts a phase: takes its initial parameters (before its first step) and a fresh
    /// optimizer state.
    fn begin<'s>(&'s mut self, params: &'s Params<f32>) -> EngineFuture<'s, ()>;
    /// One step: the weighted cross-entropy's gradient (`ce_step`), then the optimizer.
    fn step<'s>(
        &'s mut self,
        x: &'s [f32],
        labels: &'s [u32],
        weights: CeWeights<'s>,
    ) -> EngineFuture<'s, ()>;
    /// The losses of the steps since the last call, in order.
    fn losses(&mut self) -> EngineFuture<'_, Vec<f64>>;
    /// The parameters as trained so far.
    fn params(&mut self) -> EngineFuture<'_, Params<f32>>;
}

/// A phase's name in the report's backend line and the page's progress ("erm", "rank", ...).
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Erm => "erm",
        Phase::Rank => "rank",
        Phase::Mitigate => "mitigate",
        Phase::Oracle => "oracle",
    }
}

/// A seed per purpose from the run's seed (SplitMix64 of seed + tag).
pub fn derived_seed(seed: u64, tag: u64) -> u64 {
    let mut z = seed.wrapping_add(tag.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const SEED_ERM: u64 = 1;
const SEED_RANK: u64 = 2;
const SEED_MITIGATE: u64 = 3;
const SEED_ORACLE: u64 = 4;

/// The architecture the options ask for.
pub fn net_config(opts: &SebraOptions) -> NetConfig {
    NetConfig {
        kind: opts.model,
        classes: opts.classes,
        image: opts.image,
        width: opts.width,
    }
}

/// SGD with momentum or Adam over a `Params<f32>`, as torch.optim computes them.
pub struct Optimizer {
    kind: OptimizerKind,
    lr: f64,
    momentum: f32,
    m: Params<f32>,
    v: Params<f32>,
    t: u64,
}

impl Optimizer {
    pub fn new(opts: &SebraOptions, cfg: &NetConfig) -> Self {
        Optimizer {
            kind: opts.optimizer,
            lr: opts.lr,
            momentum: opts.momentum as f32,
            m: Params::zeros(cfg),
            v: Params::zeros(cfg),
            t: 0,
        }
    }

    /// The optimizer's state: Adam's (m, v), or SGD's (momentum buffer, unused zeros).
    pub fn moments(&self) -> (&Params<f32>, &Params<f32>) {
        (&self.m, &self.v)
    }

    /// One update of `params` from `grads`. SGD: buf = momentum * buf + g (buf = g at the
    /// first step), p -= lr * buf. Adam: the training core's `adamw_update` without decay.
    pub fn step(&mut self, params: &mut Params<f32>, grads: &Params<f32>) {
        self.t += 1;
        for (i, (p, g)) in params.tensors.iter_mut().zip(&grads.tensors).enumerate() {
            match self.kind {
                OptimizerKind::Adam => adamw_update(
                    p,
                    g,
                    &mut self.m.tensors[i],
                    &mut self.v.tensors[i],
                    self.lr,
                    self.t,
                    &AdamConfig::default(),
                ),
                OptimizerKind::Sgd => {
                    let (lr, mu, first) = (self.lr as f32, self.momentum, self.t == 1);
                    for ((pj, &gj), bj) in p.iter_mut().zip(g).zip(self.m.tensors[i].iter_mut()) {
                        *bj = if first { gj } else { mu * *bj + gj };
                        *pj -= lr * *bj;
                    }
                }
            }
        }
    }
}

/// The images of `indices`, stacked (B, 3, S, S).
pub fn gather(split: &Split, indices: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(indices.len() * split.image(0).len());
    indices
        .iter()
        .for_each(|&i| out.extend_from_slice(split.image(i)));
    out
}

fn shuffled(n: usize, rng: &mut impl RngCore) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, uniform_below(rng, i + 1));
    }
    order
}

/// The gradient of the weighted cross-entropy of one batch at `net`; returns the loss.
/// `weights`: None = 1 each (ERM), Some(w) the per-sample weights, or Stage 1's up-weights
/// when `beta_inv` is given.
pub fn ce_step(
    net: &Net<f32>,
    grads: &mut Params<f32>,
    x: &[f32],
    labels: &[u32],
    weights: Option<&[f32]>,
    beta_inv: Option<f64>,
) -> f64 {
    let weights = match (weights, beta_inv) {
        (_, Some(beta_inv)) => CeWeights::Up { beta_inv },
        (Some(w), None) => CeWeights::Fixed(w),
        (None, None) => CeWeights::Ones,
    };
    ce_step_weighted(net, grads, x, labels, weights)
}

/// `ce_step` with the weights as `CeWeights`.
pub fn ce_step_weighted(
    net: &Net<f32>,
    grads: &mut Params<f32>,
    x: &[f32],
    labels: &[u32],
    weights: CeWeights,
) -> f64 {
    ce_step_in(&mut Acts::default(), net, grads, x, labels, weights)
}

/// `ce_step_weighted` with the buffers of `acts` (the last step's) reused.
fn ce_step_in(
    acts: &mut Acts<f32>,
    net: &Net<f32>,
    grads: &mut Params<f32>,
    x: &[f32],
    labels: &[u32],
    weights: CeWeights,
) -> f64 {
    let b = labels.len();
    let k = net.cfg.classes;
    net.backbone_forward_into(x, b, acts);
    let acts = &*acts;
    let logits = net.head_forward(&acts.features);
    let probs = loss::softmax(&logits, k);
    let w: Vec<f32> = match weights {
        CeWeights::Up { beta_inv } => loss::upweights(&probs, labels, beta_inv),
        CeWeights::Fixed(w) => w.to_vec(),
        CeWeights::Ones => vec![1.0; b],
    };
    let value = loss::weighted_ce_forward(&logits, labels, &w);
    let mut dlogits = vec![0f32; b * k];
    loss::weighted_ce_backward(&mut dlogits, &probs, labels, &w, 1.0);
    let mut dfeat = vec![0f32; acts.features.len()];
    net.head_backward(grads, &mut dfeat, &dlogits, &acts.features);
    net.backbone_backward(grads, acts, &dfeat);
    value
}

/// Stage 2's gradient for one batch of triples (anchors, positives, negatives, the
/// positives' labels); returns (total, contrastive, cross-entropy).
#[allow(clippy::too_many_arguments)]
pub fn contrastive_step(
    net: &Net<f32>,
    grads: &mut Params<f32>,
    anchors: &[f32],
    positives: &[f32],
    negatives: &[f32],
    labels: &[u32],
    tau: f64,
    ce_weight: f64,
) -> (f64, f64, f64) {
    let b = labels.len();
    let (k, d) = (net.cfg.classes, net.cfg.feature_dim());
    let neg = net.backbone_forward(negatives, b).features;
    let mut both = anchors.to_vec();
    both.extend_from_slice(positives);
    let acts = net.backbone_forward(&both, 2 * b);
    let (fa, fp) = acts.features.split_at(b * d);
    let (con, cache) = loss::contrastive_forward(fa, fp, &neg, d, tau);
    let logits = net.head_forward(fp);
    let probs = loss::softmax(&logits, k);
    let ones = vec![1f32; b];
    let ce = loss::weighted_ce_forward(&logits, labels, &ones);
    let mut dfeat = vec![0f32; 2 * b * d];
    let (dfa, dfp) = dfeat.split_at_mut(b * d);
    loss::contrastive_backward(dfa, &cache, fa, fp, &neg, d, tau, 1.0);
    let mut dlogits = vec![0f32; b * k];
    loss::weighted_ce_backward(&mut dlogits, &probs, labels, &ones, ce_weight);
    net.head_backward(grads, dfp, &dlogits, fp);
    net.backbone_backward(grads, &acts, &dfeat);
    (con + ce_weight * ce, con, ce)
}

fn cancelled_error() -> crate::LabError {
    crate::LabError::invalid("the run was cancelled")
}

/// The oracle's per-sample weights: N / (cells x the size of the sample's (class, colour,
/// texture) cell), over the non-empty cells. The cells are UrbanCars' groups (class x cue
/// values); balancing them makes each cue independent of the class in the weighted data.
/// (Balancing the four alignment groups instead would not: with K > 2 an unbiased training
/// set has (K-1)^2 times more "none aligned" samples than "both aligned" ones, and equal
/// weights per alignment group would bias the data towards the cues.)
pub fn group_balanced_weights(train: &Split, classes: usize) -> Vec<f32> {
    let k = classes;
    let cell = |i: usize| {
        (train.labels[i] as usize * k + train.cue1[i] as usize) * k + train.cue2[i] as usize
    };
    let mut counts = vec![0usize; k * k * k];
    (0..train.len()).for_each(|i| counts[cell(i)] += 1);
    let cells = counts.iter().filter(|&&c| c > 0).count();
    let n = train.len() as f64;
    (0..train.len())
        .map(|i| (n / (cells as f64 * counts[cell(i)] as f64)) as f32)
        .collect()
}

/// Work units for the progress estimate: one image through a forward pass. A training
/// image costs about three (forward, backward of the activations and of the weights).
const TRAIN_COST: f64 = 3.0;
/// A Stage 2 pair: anchor and positive trained, the negative forward only.
const PAIR_COST: f64 = 2.0 * TRAIN_COST + 1.0;
/// Images per forward chunk of an evaluation pass (Stage 1's p_y, the test scores): one
/// chunk per `SebraRun::step`, the same chunks as one `Net::predict` over the whole split.
const EVAL_CHUNK: usize = 256;

/// One phase's model in training: its optimizer, its batch order and the epoch in progress.
struct Training {
    net: Net<f32>,
    opt: Optimizer,
    grads: Params<f32>,
    rng: ChaCha8Rng,
    /// Epochs started; while `open`, `epoch` is the one in progress (1-based).
    epoch: usize,
    open: bool,
    /// The epoch's samples in batch order (ERM, Stage 1, the oracle) ...
    order: Vec<usize>,
    /// ... or its Stage 2 triples.
    pairs: Vec<Pair>,
    /// The next batch starts here in `order` / `pairs`.
    next: usize,
    loss_sum: f64,
    batches: usize,
    /// Seconds spent inside `SebraRun::step` on this epoch.
    seconds: f64,
    /// The CPU steps' activations, whose buffers the next step reuses.
    acts: Acts<f32>,
}

impl Training {
    fn new(opts: &SebraOptions, tag: u64) -> Box<Self> {
        let cfg = net_config(opts);
        Box::new(Training {
            net: Net::<f32>::new(cfg, derived_seed(opts.seed, tag)),
            opt: Optimizer::new(opts, &cfg),
            grads: Params::zeros(&cfg),
            rng: ChaCha8Rng::seed_from_u64(derived_seed(opts.seed, tag + 100)),
            epoch: 0,
            open: false,
            order: Vec::new(),
            pairs: Vec::new(),
            next: 0,
            loss_sum: 0.0,
            batches: 0,
            seconds: 0.0,
            acts: Acts::default(),
        })
    }

    fn begin_epoch(&mut self) {
        self.epoch += 1;
        self.open = true;
        self.next = 0;
        self.loss_sum = 0.0;
        self.batches = 0;
        self.seconds = 0.0;
    }

    /// The next batch of `order` (`batch` samples, fewer at the end), moving past it.
    fn next_samples(&mut self, batch: usize) -> Vec<usize> {
        let end = (self.next + batch).min(self.order.len());
        let idx = self.order[self.next..end].to_vec();
        self.next = end;
        idx
    }

    /// The epoch's mean batch loss (0 for an epoch without batches).
    fn mean_loss(&self) -> f64 {
        self.loss_sum / self.batches.max(1) as f64
    }

    /// Items left in the epoch in progress (0 when none is).
    fn left(&self, items: usize) -> usize {
        if self.open {
            items.saturating_sub(self.next)
        } else {
            0
        }
    }
}

/// An evaluation pass over a split in progress: predictions (and p_y), chunk by chunk.
#[derive(Default)]
struct Evaluation {
    next: usize,
    pred: Vec<u32>,
    p_true: Vec<f32>,
}

impl Evaluation {
    /// The next chunk of `net.predict` over `split`; returns the images it took.
    fn chunk(&mut self, net: &Net<f32>, split: &Split, with_p: bool) -> usize {
        let per = net.cfg.input_len();
        let (start, b) = (self.next, EVAL_CHUNK.min(split.len() - self.next));
        let labels = with_p.then(|| &split.labels[start..start + b]);
        let (pred, p) = net.predict(
            &split.images[start * per..(start + b) * per],
            b,
            EVAL_CHUNK,
            labels,
        );
        self.pred.extend(pred);
        self.p_true.extend(p);
        self.next += b;
        b
    }

    fn finished(&self, split: &Split) -> bool {
        self.next >= split.len()
    }
}

/// Where a run stands.
enum Stage {
    Erm(Box<Training>),
    /// Stage 1; `eval` is the pass over the training set that ends an epoch, once the
    /// epoch's batches have run.
    Rank {
        t: Box<Training>,
        stage: Stage1,
        eval: Option<Evaluation>,
    },
    Mitigate {
        t: Box<Training>,
        table: PairTable,
    },
    Oracle {
        t: Box<Training>,
        weights: Vec<f32>,
    },
    /// `phase`'s trained model scored on the test split.
    Score {
        phase: Phase,
        t: Box<Training>,
        eval: Evaluation,
    },
    Done,
}

/// Where a run stands, for a progress line: the phase, its epoch (1-based) of at most `of`,
/// and the fraction of the whole run's work done so far. The fraction is an estimate that
/// never goes back: it counts Stage 1 at its cap until it stops, and Stage 2 with one pair
/// per training image until the ranking says how many anchors have a pair.
#[derive(Clone, Debug, Serialize)]
pub struct RunProgress {
    pub phase: Phase,
    /// True while the phase's model is scored on the test split.
    pub scoring: bool,
    pub epoch: usize,
    pub of: usize,
    pub fraction: f64,
}

/// A bias-lab run that advances one batch (or one evaluation chunk of `EVAL_CHUNK` images)
/// per `step`, so that a page can yield, draw and cancel between steps: ERM, Stage 1,
/// Stage 2 and the oracle, each scored on the test split; then `finish` gives the report.
/// `run_sebra_on` loops over it; the numbers do not depend on how the steps are spaced.
pub struct SebraRun<'a> {
    opts: SebraOptions,
    data: &'a SebraData,
    groups: Vec<Group>,
    stage: Stage,
    epochs: Vec<EpochRecord>,
    timings: Timings,
    erm: Option<GroupAccuracy>,
    sebra: Option<GroupAccuracy>,
    oracle: Option<GroupAccuracy>,
    ranks: Vec<u32>,
    per_epoch: Vec<RankEpoch>,
    pairs_per_epoch: Option<usize>,
    /// Work done (forward-pass images; see `TRAIN_COST`), and the largest fraction so far.
    work_done: f64,
    fraction: f64,
    /// The last step's phase and whether it scored.
    last: (Phase, bool),
    /// Seconds inside `step`, all of it.
    busy_s: f64,
    /// The cross-entropy phases' training batches (ERM, Stage 1, the oracle) run here instead
    /// of on the CPU (`with_ce_engine`).
    engine: Option<Box<dyn CeEngine + 'a>>,
    /// The engine's description, kept after `fall_back` dropped it.
    engine_name: Option<String>,
    /// The phase the engine failed in and its error, after `fall_back`.
    failed: Option<(Phase, String)>,
    /// `work_done` when the current cross-entropy phase began (for `fall_back`).
    phase_work: f64,
}

impl<'a> SebraRun<'a> {
    /// A run of `opts` on `data`, which must have been generated from the same options
    /// (`data_s`: the seconds that took, for the timings).
    pub fn new(opts: &SebraOptions, data: &'a SebraData, data_s: f64) -> Result<Self> {
        opts.check()?;
        let (n, t) = (
            opts.classes * opts.train_per_class,
            opts.classes * opts.test_per_class,
        );
        if data.train.len() != n || data.test.len() != t {
            return Err(crate::LabError::invalid(format!(
                "the data do not match the options: {} training and {} test images, expected \
                 {n} and {t}",
                data.train.len(),
                data.test.len()
            )));
        }
        Ok(SebraRun {
            opts: opts.clone(),
            data,
            groups: data.train.groups(),
            stage: Stage::Erm(Training::new(opts, SEED_ERM)),
            epochs: Vec::new(),
            timings: Timings {
                data_s,
                threads: rayon::current_num_threads(),
                ..Timings::default()
            },
            erm: None,
            sebra: None,
            oracle: None,
            ranks: Vec::new(),
            per_epoch: Vec::new(),
            pairs_per_epoch: None,
            work_done: 0.0,
            fraction: 0.0,
            last: (Phase::Erm, false),
            busy_s: 0.0,
            engine: None,
            engine_name: None,
            failed: None,
            phase_work: 0.0,
        })
    }

    /// The training batches of ERM, Stage 1 and the oracle on `engine` (each phase from its
    /// own init and a fresh optimizer state, as on the CPU); Stage 1's per-epoch scoring
    /// pass, Stage 2 and every test scoring stay on the CPU, with the weights read back.
    pub fn with_ce_engine(mut self, engine: Box<dyn CeEngine + 'a>) -> Self {
        self.engine_name = Some(engine.describe());
        self.engine = Some(engine);
        self
    }

    /// Where each phase runs, for the report.
    pub fn backend(&self) -> String {
        let Some(name) = &self.engine_name else {
            return "cpu".into();
        };
        let Some((phase, msg)) = &self.failed else {
            return format!(
                "erm, rank, oracle training: {name}; rank's per-epoch scoring, mitigate, every \
                 test scoring: cpu"
            );
        };
        let p = phase_name(*phase);
        let before: Vec<&str> = [Phase::Erm, Phase::Rank]
            .into_iter()
            .filter(|q| (*q as u8) < (*phase as u8))
            .map(phase_name)
            .collect();
        if before.is_empty() {
            format!(
                "cpu: {name} failed in {p}'s training ({msg}); the run started again on the \
                 CPU"
            )
        } else {
            format!(
                "{} training: {name}; then the GPU failed in {p}'s training ({msg}): {p} \
                 started again on the CPU, and everything else ran on the CPU",
                before.join(", ")
            )
        }
    }

    /// After the engine failed in the middle of a step (`step`'s error, e.g. `GpuFailed`):
    /// drops the engine and starts the cross-entropy phase it was training (ERM, Stage 1 or
    /// the oracle) over on the CPU, from that phase's own seeded init and batch order, so that
    /// it and every later phase compute what a CPU run computes; the phases before it keep
    /// what the engine trained. The phase's epoch records (and Stage 1's deselections) so far
    /// are dropped: the monitor hears them again. Returns the phase. An error if there is no
    /// engine or the run was not in one of those phases.
    pub fn fall_back(&mut self, error: &str) -> Result<Phase> {
        let phase = self.last.0;
        if self.engine.is_none() || self.last.1 || phase == Phase::Mitigate {
            return Err(crate::LabError::invalid(
                "nothing to fall back from: the run was not training on an engine",
            ));
        }
        self.engine = None;
        self.failed = Some((phase, error.to_string()));
        self.epochs.retain(|r| r.phase != phase);
        self.work_done = self.phase_work;
        let opts = &self.opts;
        self.stage = match phase {
            Phase::Erm => {
                self.timings.erm_s = 0.0;
                Stage::Erm(Training::new(opts, SEED_ERM))
            }
            Phase::Rank => {
                self.timings.rank_s = 0.0;
                self.per_epoch.clear();
                Stage::Rank {
                    t: Training::new(opts, SEED_RANK),
                    stage: Stage1::new(self.data.train.len()),
                    eval: None,
                }
            }
            _ => {
                self.timings.oracle_s = 0.0;
                Stage::Oracle {
                    t: Training::new(opts, SEED_ORACLE),
                    weights: group_balanced_weights(&self.data.train, opts.classes),
                }
            }
        };
        Ok(phase)
    }

    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// One batch, or one evaluation chunk; the monitor hears every finished epoch (and
    /// Stage 1's deselections). Ok(true) while there is more to do. Cancelled (the monitor
    /// says so) before the step: an error, "the run was cancelled".
    pub async fn step(&mut self, monitor: &dyn SebraMonitor) -> Result<bool> {
        if self.is_done() {
            return Ok(false);
        }
        if monitor.cancelled() {
            return Err(cancelled_error());
        }
        let clock = web_time::Instant::now();
        let phase = match &self.stage {
            Stage::Erm(_) => Some(Phase::Erm),
            Stage::Rank { .. } => Some(Phase::Rank),
            Stage::Mitigate { .. } => Some(Phase::Mitigate),
            Stage::Oracle { .. } => Some(Phase::Oracle),
            _ => None,
        };
        let stage = std::mem::replace(&mut self.stage, Stage::Done);
        let result = self.advance(stage, monitor, &clock).await;
        let dt = clock.elapsed().as_secs_f64();
        self.busy_s += dt;
        match phase {
            Some(Phase::Erm) => self.timings.erm_s += dt,
            Some(Phase::Rank) => self.timings.rank_s += dt,
            Some(Phase::Mitigate) => self.timings.mitigate_s += dt,
            Some(Phase::Oracle) => self.timings.oracle_s += dt,
            None => {}
        }
        result?;
        Ok(!self.is_done())
    }

    /// One step from `stage`; leaves the next stage in `self.stage`.
    async fn advance(
        &mut self,
        stage: Stage,
        monitor: &dyn SebraMonitor,
        clock: &web_time::Instant,
    ) -> Result<()> {
        let (epochs, cap) = (self.opts.epochs, self.opts.rank_epochs);
        let data = self.data;
        let train = &data.train;
        self.stage = match stage {
            Stage::Erm(mut t) => {
                self.last = (Phase::Erm, false);
                if !t.open {
                    self.begin_phase(&t).await?;
                    t.begin_epoch();
                    t.order = shuffled(train.len(), &mut t.rng);
                }
                self.ce_batch(&mut t, CeWeights::Ones).await?;
                if t.next >= t.order.len() {
                    let last = t.epoch == epochs;
                    self.engine_epoch_end(&mut t, last).await?;
                }
                if self.end_ce_epoch(&mut t, Phase::Erm, monitor, clock) && t.epoch == epochs {
                    self.timings.erm_images_per_s =
                        (epochs * train.len()) as f64 / self.timings.erm_s.max(1e-9);
                    self.score(Phase::Erm, t)
                } else {
                    Stage::Erm(t)
                }
            }
            Stage::Rank {
                mut t,
                stage,
                eval: None,
            } => {
                self.last = (Phase::Rank, false);
                if !t.open {
                    self.begin_phase(&t).await?;
                    t.begin_epoch();
                    t.order = epoch_draws(&stage.weights, &mut t.rng);
                }
                if t.next < t.order.len() {
                    let beta_inv = self.opts.beta_inv;
                    self.ce_batch(&mut t, CeWeights::Up { beta_inv }).await?;
                }
                let eval = (t.next >= t.order.len()).then(Evaluation::default);
                if eval.is_some() {
                    // The scoring pass after the epoch runs on the CPU, on the weights so far.
                    self.engine_epoch_end(&mut t, true).await?;
                }
                t.seconds += clock.elapsed().as_secs_f64();
                Stage::Rank { t, stage, eval }
            }
            Stage::Rank {
                mut t,
                mut stage,
                eval: Some(mut e),
            } => {
                self.work_done += e.chunk(&t.net, train, true) as f64;
                if !e.finished(train) {
                    t.seconds += clock.elapsed().as_secs_f64();
                    return self.put(Stage::Rank {
                        t,
                        stage,
                        eval: Some(e),
                    });
                }
                let opts = &self.opts;
                let deselected = stage.end_epoch(&e.p_true, opts.p_critical)?;
                let counts =
                    deselected_counts(&deselected, &train.labels, &self.groups, opts.classes);
                let rec = RankEpoch {
                    epoch: stage.epochs,
                    deselected: counts,
                    remaining: stage.remaining(),
                };
                monitor.ranked(&rec);
                self.per_epoch.push(rec);
                t.open = false;
                t.seconds += clock.elapsed().as_secs_f64();
                self.record(
                    monitor,
                    Phase::Rank,
                    stage.epochs as usize,
                    cap,
                    t.mean_loss(),
                    t.seconds,
                );
                if stage.is_done(cap as u32) {
                    self.ranks = stage.ranks();
                    let table = PairTable::new(&train.labels, &self.ranks, self.opts.classes)?;
                    Stage::Mitigate {
                        t: Training::new(&self.opts, SEED_MITIGATE),
                        table,
                    }
                } else {
                    Stage::Rank {
                        t,
                        stage,
                        eval: None,
                    }
                }
            }
            Stage::Mitigate { mut t, table } => {
                self.last = (Phase::Mitigate, false);
                if !t.open {
                    t.begin_epoch();
                    t.pairs = table.epoch(self.opts.gap, &mut t.rng);
                    self.pairs_per_epoch = Some(t.pairs.len());
                }
                if t.next < t.pairs.len() {
                    self.pair_batch(&mut t);
                }
                t.seconds += clock.elapsed().as_secs_f64();
                if t.next >= t.pairs.len() {
                    t.open = false;
                    self.record(
                        monitor,
                        Phase::Mitigate,
                        t.epoch,
                        epochs,
                        t.mean_loss(),
                        t.seconds,
                    );
                }
                if !t.open && t.epoch == epochs {
                    self.score(Phase::Mitigate, t)
                } else {
                    Stage::Mitigate { t, table }
                }
            }
            Stage::Oracle { mut t, weights } => {
                self.last = (Phase::Oracle, false);
                if !t.open {
                    self.begin_phase(&t).await?;
                    t.begin_epoch();
                    t.order = shuffled(train.len(), &mut t.rng);
                }
                self.ce_batch(&mut t, CeWeights::Fixed(&weights)).await?;
                if t.next >= t.order.len() {
                    let last = t.epoch == epochs;
                    self.engine_epoch_end(&mut t, last).await?;
                }
                if self.end_ce_epoch(&mut t, Phase::Oracle, monitor, clock) && t.epoch == epochs {
                    self.score(Phase::Oracle, t)
                } else {
                    Stage::Oracle { t, weights }
                }
            }
            Stage::Score { phase, t, mut eval } => {
                self.last = (phase, true);
                let test = &data.test;
                self.work_done += eval.chunk(&t.net, test, false) as f64;
                if !eval.finished(test) {
                    return self.put(Stage::Score { phase, t, eval });
                }
                let acc = group_accuracy(
                    &eval.pred,
                    &test.labels,
                    &test.cue1,
                    &test.cue2,
                    self.opts.classes,
                    self.opts.bias,
                )?;
                match phase {
                    Phase::Erm => {
                        self.erm = Some(acc);
                        Stage::Rank {
                            t: Training::new(&self.opts, SEED_RANK),
                            stage: Stage1::new(train.len()),
                            eval: None,
                        }
                    }
                    Phase::Mitigate => {
                        self.sebra = Some(acc);
                        Stage::Oracle {
                            t: Training::new(&self.opts, SEED_ORACLE),
                            weights: group_balanced_weights(train, self.opts.classes),
                        }
                    }
                    _ => {
                        self.oracle = Some(acc);
                        Stage::Done
                    }
                }
            }
            Stage::Done => Stage::Done,
        };
        Ok(())
    }

    fn put(&mut self, stage: Stage) -> Result<()> {
        self.stage = stage;
        Ok(())
    }

    /// The stage that scores `t`'s model, the last of `phase`.
    fn score(&self, phase: Phase, t: Box<Training>) -> Stage {
        Stage::Score {
            phase,
            t,
            eval: Evaluation::default(),
        }
    }

    /// One cross-entropy batch of `t`'s epoch: `Fixed` weights are per training sample (the
    /// batch's are picked out). On the engine when there is one (its loss is read at the
    /// epoch's end, `engine_epoch_end`), else here with `ce_step`.
    async fn ce_batch(&mut self, t: &mut Training, weights: CeWeights<'_>) -> Result<()> {
        let train = &self.data.train;
        let idx = t.next_samples(self.opts.batch);
        let x = gather(train, &idx);
        let labels: Vec<u32> = idx.iter().map(|&i| train.labels[i]).collect();
        let picked: Vec<f32>;
        let weights = match weights {
            CeWeights::Fixed(w) => {
                picked = idx.iter().map(|&i| w[i]).collect();
                CeWeights::Fixed(&picked)
            }
            other => other,
        };
        match self.engine.as_mut() {
            Some(e) => e.step(&x, &labels, weights).await?,
            None => {
                t.grads.fill_zero();
                t.loss_sum += ce_step_in(&mut t.acts, &t.net, &mut t.grads, &x, &labels, weights);
                t.opt.step(&mut t.net.params, &t.grads);
            }
        }
        t.batches += 1;
        self.work_done += TRAIN_COST * idx.len() as f64;
        Ok(())
    }

    /// Before a cross-entropy phase's first epoch: the engine (if any) takes the phase's init
    /// and starts a fresh optimizer state.
    async fn begin_phase(&mut self, t: &Training) -> Result<()> {
        if t.epoch == 0 {
            self.phase_work = self.work_done;
        }
        if let (0, Some(e)) = (t.epoch, self.engine.as_mut()) {
            e.begin(&t.net.params).await?;
        }
        Ok(())
    }

    /// After an epoch's last batch on the engine (nothing without one): the epoch's loss sum,
    /// and with `read_params` the weights it has trained, for a scoring pass on the CPU.
    async fn engine_epoch_end(&mut self, t: &mut Training, read_params: bool) -> Result<()> {
        if let Some(e) = self.engine.as_mut() {
            t.loss_sum = e.losses().await?.iter().sum();
            if read_params {
                t.net.params = e.params().await?;
            }
        }
        Ok(())
    }

    /// One Stage 2 batch of triples.
    fn pair_batch(&mut self, t: &mut Training) {
        let train = &self.data.train;
        let end = (t.next + self.opts.batch).min(t.pairs.len());
        let chunk = &t.pairs[t.next..end];
        let pick = |f: fn(&Pair) -> usize| -> Vec<usize> { chunk.iter().map(f).collect() };
        let (a, p, n) = (
            pick(|q| q.anchor),
            pick(|q| q.positive),
            pick(|q| q.negative),
        );
        let labels: Vec<u32> = p.iter().map(|&i| train.labels[i]).collect();
        t.grads.fill_zero();
        let (total, _, _) = contrastive_step(
            &t.net,
            &mut t.grads,
            &gather(train, &a),
            &gather(train, &p),
            &gather(train, &n),
            &labels,
            self.opts.tau,
            self.opts.ce_weight,
        );
        t.loss_sum += total;
        t.batches += 1;
        t.opt.step(&mut t.net.params, &t.grads);
        self.work_done += PAIR_COST * chunk.len() as f64;
        t.next = end;
    }

    /// After a cross-entropy batch: closes and records the epoch when it was its last
    /// batch; returns whether it did.
    fn end_ce_epoch(
        &mut self,
        t: &mut Training,
        phase: Phase,
        monitor: &dyn SebraMonitor,
        clock: &web_time::Instant,
    ) -> bool {
        t.seconds += clock.elapsed().as_secs_f64();
        if t.next < t.order.len() {
            return false;
        }
        t.open = false;
        let (epoch, of) = (t.epoch, self.opts.epochs);
        self.record(monitor, phase, epoch, of, t.mean_loss(), t.seconds);
        true
    }

    fn record(
        &mut self,
        monitor: &dyn SebraMonitor,
        phase: Phase,
        epoch: usize,
        of: usize,
        loss: f64,
        seconds: f64,
    ) {
        let r = EpochRecord {
            phase,
            epoch,
            of,
            loss,
            seconds,
        };
        monitor.epoch(&r);
        self.epochs.push(r);
    }

    /// Work still to do, in forward-pass images, as far as it is known (see `RunProgress`).
    fn work_left(&self) -> f64 {
        let o = &self.opts;
        let (n, test) = (self.data.train.len(), self.data.test.len());
        let (n_f, test_f, e) = (n as f64, test as f64, o.epochs);
        let ce = |epochs_left: usize| TRAIN_COST * n_f * epochs_left as f64;
        let pairs = self.pairs_per_epoch.unwrap_or(n) as f64;
        let rank_full = (TRAIN_COST + 1.0) * n_f * o.rank_epochs as f64;
        let mitigate_full = PAIR_COST * pairs * e as f64 + test_f;
        let oracle_full = ce(e) + test_f;
        match &self.stage {
            Stage::Erm(t) => {
                TRAIN_COST * t.left(n) as f64
                    + ce(e - t.epoch)
                    + test_f
                    + rank_full
                    + mitigate_full
                    + oracle_full
            }
            Stage::Rank { t, stage, eval } => {
                let current = match eval {
                    Some(ev) => (n - ev.next) as f64,
                    None if t.open => TRAIN_COST * t.left(t.order.len()) as f64 + n_f,
                    None => 0.0,
                };
                let started = stage.epochs as usize + usize::from(t.open);
                let full = o.rank_epochs.saturating_sub(started) as f64;
                current + full * (TRAIN_COST + 1.0) * n_f + mitigate_full + oracle_full
            }
            Stage::Mitigate { t, .. } => {
                PAIR_COST * t.left(t.pairs.len()) as f64
                    + PAIR_COST * pairs * (e - t.epoch) as f64
                    + test_f
                    + oracle_full
            }
            Stage::Oracle { t, .. } => TRAIN_COST * t.left(n) as f64 + ce(e - t.epoch) + test_f,
            Stage::Score { phase, eval, .. } => {
                let rest = match phase {
                    Phase::Erm => rank_full + mitigate_full + oracle_full,
                    Phase::Mitigate => oracle_full,
                    _ => 0.0,
                };
                (test - eval.next) as f64 + rest
            }
            Stage::Done => 0.0,
        }
    }

    /// Where the run stands (see `RunProgress`).
    pub fn progress(&mut self) -> RunProgress {
        let left = self.work_left();
        let f = if self.is_done() {
            1.0
        } else {
            self.work_done / (self.work_done + left).max(1.0)
        };
        self.fraction = self.fraction.max(f.min(1.0));
        let (phase, scoring) = self.last;
        let (epoch, of) = match &self.stage {
            Stage::Erm(t) | Stage::Oracle { t, .. } => (t.epoch, self.opts.epochs),
            Stage::Mitigate { t, .. } => (t.epoch, self.opts.epochs),
            Stage::Rank { t, .. } => (t.epoch, self.opts.rank_epochs),
            Stage::Score { t, phase, .. } => (
                t.epoch,
                if *phase == Phase::Rank {
                    self.opts.rank_epochs
                } else {
                    self.opts.epochs
                },
            ),
            Stage::Done => (self.opts.epochs, self.opts.epochs),
        };
        RunProgress {
            phase,
            scoring,
            epoch,
            of,
            fraction: self.fraction,
        }
    }

    /// Every epoch record so far.
    pub fn epoch_records(&self) -> &[EpochRecord] {
        &self.epochs
    }

    /// The report, once every step has run.
    pub fn finish(self) -> Result<SebraReport> {
        let backend = self.backend();
        let (Some(erm), Some(sebra), Some(oracle)) = (self.erm, self.sebra, self.oracle) else {
            return Err(crate::LabError::invalid(
                "the bias-lab run has not finished: its report is not complete",
            ));
        };
        let opts = self.opts;
        let train = &self.data.train;
        let orders: Vec<u32> = self.groups.iter().map(|g| g.order()).collect();
        let tau = ranking_tau(&train.labels, &self.ranks, &orders, opts.classes)?;
        let samples = (0..train.len())
            .map(|i| RankedSample {
                index: i,
                class: train.labels[i],
                group: self.groups[i],
                rank: self.ranks[i],
            })
            .collect();
        let mut timings = self.timings;
        timings.total_s = timings.data_s + self.busy_s;
        Ok(SebraReport {
            options: opts,
            ranking: RankingReport {
                epochs: self.per_epoch.len() as u32,
                samples,
                per_epoch: self.per_epoch,
                pairs_per_epoch: self.pairs_per_epoch.unwrap_or(0),
            },
            tau,
            accuracy: Accuracies { erm, sebra, oracle },
            epochs: self.epochs,
            timings,
            backend,
        })
    }
}

/// The whole run: data, ERM, Sebra's two stages, the oracle, and the scores.
pub fn run_sebra(opts: &SebraOptions, monitor: &dyn SebraMonitor) -> Result<SebraReport> {
    opts.check()?;
    let total = web_time::Instant::now();
    let data = data::generate(opts)?;
    run_sebra_on(opts, &data, monitor, total.elapsed().as_secs_f64())
}

/// `run_sebra` on data already generated (`data_s`: the seconds that took): `SebraRun`'s
/// steps, one after another.
pub fn run_sebra_on(
    opts: &SebraOptions,
    data: &SebraData,
    monitor: &dyn SebraMonitor,
    data_s: f64,
) -> Result<SebraReport> {
    let mut run = SebraRun::new(opts, data, data_s)?;
    while ready_now(run.step(monitor))? {}
    run.finish()
}

/// The output of a future that is ready at its first poll: a run without an engine (every
/// step on this thread) never waits on anything.
fn ready_now<T>(fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => Err(crate::LabError::invalid(
            "a CPU step of the bias lab waited on something: run it with an executor",
        )),
    }
}
