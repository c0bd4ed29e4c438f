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
use super::model::{Net, NetConfig, Params};
use super::ranking::{deselected_counts, epoch_draws, uniform_below, PairTable, Stage1};
use super::tau::{ranking_tau, RankingTau};
use super::{OptimizerKind, SebraOptions};
use crate::error::Result;
use crate::train::ops::{adamw_update, AdamConfig};

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
    let b = labels.len();
    let k = net.cfg.classes;
    let acts = net.backbone_forward(x, b);
    let logits = net.head_forward(&acts.features);
    let probs = loss::softmax(&logits, k);
    let w: Vec<f32> = match (weights, beta_inv) {
        (_, Some(bi)) => loss::upweights(&probs, labels, bi),
        (Some(w), None) => w.to_vec(),
        (None, None) => vec![1.0; b],
    };
    let value = loss::weighted_ce_forward(&logits, labels, &w);
    let mut dlogits = vec![0f32; b * k];
    loss::weighted_ce_backward(&mut dlogits, &probs, labels, &w, 1.0);
    let mut dfeat = vec![0f32; acts.features.len()];
    net.head_backward(grads, &mut dfeat, &dlogits, &acts.features);
    net.backbone_backward(grads, &acts, &dfeat);
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

struct Trainer<'a> {
    opts: &'a SebraOptions,
    data: &'a SebraData,
    monitor: &'a dyn SebraMonitor,
    epochs: Vec<EpochRecord>,
}

impl Trainer<'_> {
    fn record(
        &mut self,
        phase: Phase,
        epoch: usize,
        of: usize,
        loss: f64,
        started: web_time::Instant,
    ) {
        let r = EpochRecord {
            phase,
            epoch,
            of,
            loss,
            seconds: started.elapsed().as_secs_f64(),
        };
        self.monitor.epoch(&r);
        self.epochs.push(r);
    }

    /// Cross-entropy training (ERM, or the oracle with weights) for `epochs` shuffled epochs.
    fn train_ce(&mut self, phase: Phase, seed: u64, weights: Option<&[f32]>) -> Result<Net<f32>> {
        let cfg = net_config(self.opts);
        let mut net = Net::<f32>::new(cfg, derived_seed(self.opts.seed, seed));
        let mut opt = Optimizer::new(self.opts, &cfg);
        let mut grads = Params::zeros(&cfg);
        let mut rng = ChaCha8Rng::seed_from_u64(derived_seed(self.opts.seed, seed + 100));
        let data = self.data;
        let train = &data.train;
        for epoch in 1..=self.opts.epochs {
            let started = web_time::Instant::now();
            let order = shuffled(train.len(), &mut rng);
            let (mut sum, mut batches) = (0.0, 0);
            for idx in order.chunks(self.opts.batch) {
                if self.monitor.cancelled() {
                    return Err(cancelled_error());
                }
                let x = gather(train, idx);
                let labels: Vec<u32> = idx.iter().map(|&i| train.labels[i]).collect();
                let w: Option<Vec<f32>> = weights.map(|w| idx.iter().map(|&i| w[i]).collect());
                grads.fill_zero();
                sum += ce_step(&net, &mut grads, &x, &labels, w.as_deref(), None);
                batches += 1;
                opt.step(&mut net.params, &grads);
            }
            self.record(
                phase,
                epoch,
                self.opts.epochs,
                sum / batches as f64,
                started,
            );
        }
        Ok(net)
    }

    /// Stage 1: returns the ranks and the per-epoch deselection counts.
    fn rank(&mut self) -> Result<(Vec<u32>, Vec<RankEpoch>)> {
        let opts = self.opts;
        let cfg = net_config(opts);
        let mut net = Net::<f32>::new(cfg, derived_seed(opts.seed, SEED_RANK));
        let mut opt = Optimizer::new(opts, &cfg);
        let mut grads = Params::zeros(&cfg);
        let mut rng = ChaCha8Rng::seed_from_u64(derived_seed(opts.seed, SEED_RANK + 100));
        let data = self.data;
        let train = &data.train;
        let groups = train.groups();
        let mut stage = Stage1::new(train.len());
        let mut per_epoch = Vec::new();
        let cap = opts.rank_epochs as u32;
        while !stage.is_done(cap) {
            let started = web_time::Instant::now();
            let draws = epoch_draws(&stage.weights, &mut rng);
            let (mut sum, mut batches) = (0.0, 0);
            for idx in draws.chunks(opts.batch) {
                if self.monitor.cancelled() {
                    return Err(cancelled_error());
                }
                let x = gather(train, idx);
                let labels: Vec<u32> = idx.iter().map(|&i| train.labels[i]).collect();
                grads.fill_zero();
                sum += ce_step(&net, &mut grads, &x, &labels, None, Some(opts.beta_inv));
                batches += 1;
                opt.step(&mut net.params, &grads);
            }
            let (_, p_true) = net.predict(
                &train.images,
                train.len(),
                256,
                Some(train.labels.as_slice()),
            );
            let deselected = stage.end_epoch(&p_true, opts.p_critical)?;
            let counts = deselected_counts(&deselected, &train.labels, &groups, opts.classes);
            let rec = RankEpoch {
                epoch: stage.epochs,
                deselected: counts,
                remaining: stage.remaining(),
            };
            self.monitor.ranked(&rec);
            per_epoch.push(rec);
            self.record(
                Phase::Rank,
                stage.epochs as usize,
                opts.rank_epochs,
                sum / batches.max(1) as f64,
                started,
            );
        }
        Ok((stage.ranks(), per_epoch))
    }

    /// Stage 2 from the ranks; returns the model and the number of anchors with a pair.
    fn mitigate(&mut self, ranks: &[u32]) -> Result<(Net<f32>, usize)> {
        let opts = self.opts;
        let cfg = net_config(opts);
        let mut net = Net::<f32>::new(cfg, derived_seed(opts.seed, SEED_MITIGATE));
        let mut opt = Optimizer::new(opts, &cfg);
        let mut grads = Params::zeros(&cfg);
        let mut rng = ChaCha8Rng::seed_from_u64(derived_seed(opts.seed, SEED_MITIGATE + 100));
        let data = self.data;
        let train = &data.train;
        let table = PairTable::new(&train.labels, ranks, opts.classes)?;
        let mut pairs_per_epoch = 0;
        for epoch in 1..=opts.epochs {
            let started = web_time::Instant::now();
            let pairs = table.epoch(opts.gap, &mut rng);
            pairs_per_epoch = pairs.len();
            let (mut sum, mut batches) = (0.0, 0);
            for chunk in pairs.chunks(opts.batch) {
                if self.monitor.cancelled() {
                    return Err(cancelled_error());
                }
                let pick = |f: fn(&super::ranking::Pair) -> usize| -> Vec<usize> {
                    chunk.iter().map(f).collect()
                };
                let (a, p, n) = (
                    pick(|q| q.anchor),
                    pick(|q| q.positive),
                    pick(|q| q.negative),
                );
                let labels: Vec<u32> = p.iter().map(|&i| train.labels[i]).collect();
                grads.fill_zero();
                let (total, _, _) = contrastive_step(
                    &net,
                    &mut grads,
                    &gather(train, &a),
                    &gather(train, &p),
                    &gather(train, &n),
                    &labels,
                    opts.tau,
                    opts.ce_weight,
                );
                sum += total;
                batches += 1;
                opt.step(&mut net.params, &grads);
            }
            self.record(
                Phase::Mitigate,
                epoch,
                opts.epochs,
                sum / batches.max(1) as f64,
                started,
            );
        }
        Ok((net, pairs_per_epoch))
    }

    fn score(&self, net: &Net<f32>) -> Result<GroupAccuracy> {
        let test = &self.data.test;
        let (pred, _) = net.predict(&test.images, test.len(), 256, None);
        group_accuracy(
            &pred,
            &test.labels,
            &test.cue1,
            &test.cue2,
            self.opts.classes,
            self.opts.bias,
        )
    }
}

/// The whole run: data, ERM, Sebra's two stages, the oracle, and the scores.
pub fn run_sebra(opts: &SebraOptions, monitor: &dyn SebraMonitor) -> Result<SebraReport> {
    let total = web_time::Instant::now();
    let data = data::generate(opts)?;
    run_sebra_on(opts, &data, monitor, total.elapsed().as_secs_f64())
}

/// `run_sebra` on data already generated (`data_s`: the seconds that took).
pub fn run_sebra_on(
    opts: &SebraOptions,
    data: &SebraData,
    monitor: &dyn SebraMonitor,
    data_s: f64,
) -> Result<SebraReport> {
    opts.check()?;
    let total = web_time::Instant::now();
    let mut t = Trainer {
        opts,
        data,
        monitor,
        epochs: Vec::new(),
    };
    let mut timings = Timings {
        data_s,
        threads: rayon::current_num_threads(),
        ..Timings::default()
    };

    let clock = web_time::Instant::now();
    let erm = t.train_ce(Phase::Erm, SEED_ERM, None)?;
    timings.erm_s = clock.elapsed().as_secs_f64();
    timings.erm_images_per_s = (opts.epochs * data.train.len()) as f64 / timings.erm_s;
    let erm_acc = t.score(&erm)?;

    let clock = web_time::Instant::now();
    let (ranks, per_epoch) = t.rank()?;
    timings.rank_s = clock.elapsed().as_secs_f64();

    let clock = web_time::Instant::now();
    let (sebra, pairs_per_epoch) = t.mitigate(&ranks)?;
    timings.mitigate_s = clock.elapsed().as_secs_f64();
    let sebra_acc = t.score(&sebra)?;

    let clock = web_time::Instant::now();
    let weights = group_balanced_weights(&data.train, opts.classes);
    let oracle = t.train_ce(Phase::Oracle, SEED_ORACLE, Some(&weights))?;
    timings.oracle_s = clock.elapsed().as_secs_f64();
    let oracle_acc = t.score(&oracle)?;

    let train = &data.train;
    let groups = train.groups();
    let orders: Vec<u32> = groups.iter().map(|g| g.order()).collect();
    let tau = ranking_tau(&train.labels, &ranks, &orders, opts.classes)?;
    let samples = (0..train.len())
        .map(|i| RankedSample {
            index: i,
            class: train.labels[i],
            group: groups[i],
            rank: ranks[i],
        })
        .collect();
    timings.total_s = data_s + total.elapsed().as_secs_f64();
    Ok(SebraReport {
        options: opts.clone(),
        ranking: RankingReport {
            epochs: per_epoch.len() as u32,
            samples,
            per_epoch,
            pairs_per_epoch,
        },
        tau,
        accuracy: Accuracies {
            erm: erm_acc,
            sebra: sebra_acc,
            oracle: oracle_acc,
        },
        epochs: t.epochs,
        timings,
    })
}
