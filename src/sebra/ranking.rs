//! Sebra's ranking bookkeeping, as pure functions of the model's per-epoch probabilities
//! (the training itself lives elsewhere). METHODS.md (Sebra) and the authors' code
//! (urbancars_trainers/sebra.py, dataset/urbancars.py) are the spec.
//!
//! Stage 1. Every training sample starts with sampler weight 1. An epoch's batches are drawn
//! only from samples of weight 1 (`epoch_draws`: N draws with replacement, uniform over the
//! selected, as torch's WeightedRandomSampler(weights, N, replacement=True) does with 0/1
//! weights). After the epoch, every sample of weight 1 whose p_{i,y_i} > p_critical gets
//! weight 0 and rank = that epoch (1, 2, ...) (`Stage1::end_epoch`); the comparison is in
//! f32, as torch compares an f32 tensor with a Python float. Stage 1 stops when no sample has
//! weight 1, or at the epoch cap (`Stage1::is_done`). A sample never deselected ranks last:
//! rank = epochs run + 1 (`Stage1::ranks`; the authors' code leaves it at -1, which only
//! happens at the cap). Low rank = high spuriosity.
//!
//! Stage 2. For an anchor of class c and rank r (`PairTable::choose`): the negative is a
//! uniformly random sample of class c with rank r (possibly the anchor itself, as in the
//! authors' code); the positive a uniformly random sample of class c with rank
//! min(r + gap, R), or, where class c has none at that rank, of the first rank above it
//! (up to R) where it has some; with none the anchor is skipped. R is what the authors' code
//! calls the class's max rank: the largest key of the class's rank table, whose keys are every
//! rank present in the training set (`np.unique(ranks)`), so R is the largest rank of any
//! class. (Were R the class's own largest rank, rank R of class c would never be empty and no
//! anchor would ever be skipped.)

use std::collections::BTreeMap;

use rand_chacha::rand_core::RngCore;
use serde::{Deserialize, Serialize};

use super::data::Group;
use crate::error::{LabError, Result};

/// Uniform in [0, n) (n >= 1) by rejection, so that every value is exactly equally likely.
pub fn uniform_below(rng: &mut impl RngCore, n: usize) -> usize {
    let n64 = n as u64;
    // The largest multiple of n that fits in 2^64; draws at or above it are redrawn.
    let zone = u64::MAX - (u64::MAX % n64 + 1) % n64;
    loop {
        let x = rng.next_u64();
        if x <= zone {
            return (x % n64) as usize;
        }
    }
}

/// Stage 1's state: the sampler's 0/1 weights and the epoch each sample left the selection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage1 {
    /// 1 while the sample may be drawn into a batch, 0 once deselected.
    pub weights: Vec<u8>,
    /// The epoch (1, 2, ...) at which each sample was deselected; None while selected.
    pub deselected_at: Vec<Option<u32>>,
    /// Epochs completed so far.
    pub epochs: u32,
}

impl Stage1 {
    /// N training samples, all selected.
    pub fn new(n: usize) -> Self {
        Stage1 {
            weights: vec![1; n],
            deselected_at: vec![None; n],
            epochs: 0,
        }
    }

    /// Samples still selected (weight 1).
    pub fn remaining(&self) -> usize {
        self.weights.iter().filter(|&&w| w == 1).count()
    }

    /// Ends epoch `self.epochs + 1`: `p_true[i]` is p_{i,y_i} (softmax of the logits at the
    /// true class) of every training sample under the model after that epoch. Every selected
    /// sample with p > p_critical is deselected with rank = the epoch. Returns the deselected
    /// indices, increasing.
    pub fn end_epoch(&mut self, p_true: &[f32], p_critical: f64) -> Result<Vec<usize>> {
        if p_true.len() != self.weights.len() {
            return Err(LabError::invalid(format!(
                "Stage 1 expected p_y for {} training samples, found {}",
                self.weights.len(),
                p_true.len()
            )));
        }
        self.epochs += 1;
        // As torch: `Yg > p_critical` compares the f32 tensor with the float cast to f32.
        let threshold = p_critical as f32;
        let mut deselected = Vec::new();
        for (i, &p) in p_true.iter().enumerate() {
            if self.weights[i] == 1 && p > threshold {
                self.weights[i] = 0;
                self.deselected_at[i] = Some(self.epochs);
                deselected.push(i);
            }
        }
        Ok(deselected)
    }

    /// The stop rule: no sample left to draw, or `cap` epochs run.
    pub fn is_done(&self, cap: u32) -> bool {
        self.epochs >= cap || self.remaining() == 0
    }

    /// The rank of every sample: the epoch it was deselected at, or
    /// `never_deselected_rank(epochs)` for one still selected.
    pub fn ranks(&self) -> Vec<u32> {
        let last = never_deselected_rank(self.epochs);
        self.deselected_at
            .iter()
            .map(|r| r.unwrap_or(last))
            .collect()
    }
}

/// The rank of a sample Stage 1 never deselected: after all `epochs_run` ranks, i.e. the
/// least spurious.
pub fn never_deselected_rank(epochs_run: u32) -> u32 {
    epochs_run + 1
}

/// One Stage 1 epoch's draws: N sample indices with replacement, uniform over the samples of
/// weight 1 (empty when none is left). Batches are consecutive runs of `batch` of them.
pub fn epoch_draws(weights: &[u8], rng: &mut impl RngCore) -> Vec<usize> {
    let selected: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] == 1).collect();
    if selected.is_empty() {
        return Vec::new();
    }
    (0..weights.len())
        .map(|_| selected[uniform_below(rng, selected.len())])
        .collect()
}

/// How many of the `deselected` samples fall in each (class, group): the ranking chart's
/// bars for one epoch. `[class][group.order()]`.
pub fn deselected_counts(
    deselected: &[usize],
    labels: &[u32],
    groups: &[Group],
    classes: usize,
) -> Vec<[u32; 4]> {
    let mut counts = vec![[0u32; 4]; classes];
    for &i in deselected {
        counts[labels[i] as usize][groups[i].order() as usize] += 1;
    }
    counts
}

/// One Stage 2 example: the anchor, its positive and its negative (training indices).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    pub anchor: usize,
    pub positive: usize,
    pub negative: usize,
}

/// Stage 2's lookup: per class, the training samples of each rank.
#[derive(Clone, Debug)]
pub struct PairTable {
    labels: Vec<u32>,
    ranks: Vec<u32>,
    /// [class] -> rank -> indices of that class and rank (increasing).
    by_rank: Vec<BTreeMap<u32, Vec<usize>>>,
    /// R: the largest rank present in the training set (see the module comment).
    max_rank: u32,
}

impl PairTable {
    /// `labels` in [0, classes) and `ranks` (from `Stage1::ranks`) of every training sample.
    pub fn new(labels: &[u32], ranks: &[u32], classes: usize) -> Result<Self> {
        if labels.len() != ranks.len() || labels.is_empty() {
            return Err(LabError::invalid(format!(
                "Stage 2 needs one rank per training sample: {} labels, {} ranks",
                labels.len(),
                ranks.len()
            )));
        }
        let mut by_rank = vec![BTreeMap::<u32, Vec<usize>>::new(); classes];
        for (i, (&c, &r)) in labels.iter().zip(ranks).enumerate() {
            let Some(table) = by_rank.get_mut(c as usize) else {
                return Err(LabError::invalid(format!(
                    "training sample {i} has label {c}, outside the {classes} classes"
                )));
            };
            table.entry(r).or_default().push(i);
        }
        Ok(PairTable {
            labels: labels.to_vec(),
            ranks: ranks.to_vec(),
            by_rank,
            max_rank: ranks.iter().copied().max().unwrap_or(0),
        })
    }

    /// R, the cap on a positive's rank.
    pub fn max_rank(&self) -> u32 {
        self.max_rank
    }

    /// The samples of `class` with `rank` (empty if none).
    pub fn samples(&self, class: u32, rank: u32) -> &[usize] {
        self.by_rank
            .get(class as usize)
            .and_then(|t| t.get(&rank))
            .map_or(&[], |v| v.as_slice())
    }

    /// The rank an anchor of `class` and `rank` takes its positive from: min(rank + gap, R),
    /// or the first rank above it (up to R) where the class has samples; None = skipped.
    pub fn positive_rank(&self, class: u32, rank: u32, gap: u32) -> Option<u32> {
        let target = rank.saturating_add(gap).min(self.max_rank);
        (target..=self.max_rank).find(|&r| !self.samples(class, r).is_empty())
    }

    /// Anchor `anchor`'s negative and positive, drawn from `rng` (negative first, as the
    /// authors' code draws them); None when the anchor is skipped.
    pub fn choose(&self, anchor: usize, gap: u32, rng: &mut impl RngCore) -> Option<Pair> {
        let (class, rank) = (self.labels[anchor], self.ranks[anchor]);
        let same = self.samples(class, rank);
        let negative = same[uniform_below(rng, same.len())];
        let pool = self.samples(class, self.positive_rank(class, rank, gap)?);
        let positive = pool[uniform_below(rng, pool.len())];
        Some(Pair {
            anchor,
            positive,
            negative,
        })
    }

    /// One Stage 2 epoch: every training sample once as an anchor, in a random order (the
    /// authors' shuffled DataLoader), with its pair; skipped anchors are left out.
    pub fn epoch(&self, gap: u32, rng: &mut impl RngCore) -> Vec<Pair> {
        let mut order: Vec<usize> = (0..self.labels.len()).collect();
        // Fisher-Yates.
        for i in (1..order.len()).rev() {
            order.swap(i, uniform_below(rng, i + 1));
        }
        order
            .into_iter()
            .filter_map(|a| self.choose(a, gap, rng))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn uniform_below_hits_every_value_about_equally() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[uniform_below(&mut rng, 7)] += 1;
        }
        // Binomial(70000, 1/7): sd 92.6; 5 sd either side.
        for c in counts {
            assert!((c as i64 - 10_000).abs() < 463, "{counts:?}");
        }
        assert_eq!(uniform_below(&mut rng, 1), 0);
    }

    #[test]
    fn epoch_draws_only_selected_samples() {
        let weights = [1u8, 0, 0, 1, 0, 1, 0, 0, 0, 0];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seen = [0u32; 10];
        for _ in 0..300 {
            let draws = epoch_draws(&weights, &mut rng);
            assert_eq!(draws.len(), 10);
            draws.iter().for_each(|&i| seen[i] += 1);
        }
        for (i, &s) in seen.iter().enumerate() {
            // 3000 draws over 3 samples: 1000 each, sd 25.8.
            if weights[i] == 1 {
                assert!((s as i64 - 1000).abs() < 130, "{seen:?}");
            } else {
                assert_eq!(s, 0, "{seen:?}");
            }
        }
        assert!(epoch_draws(&[0, 0], &mut rng).is_empty());
    }

    #[test]
    fn a_hand_worked_stage1_and_its_pairs() {
        // Five samples; p_y after epochs 1, 2, 3.
        let mut s = Stage1::new(5);
        assert_eq!(
            s.end_epoch(&[0.9, 0.75, 0.2, 0.1, 0.8], 0.75).unwrap(),
            vec![0, 4]
        );
        // 0.75 is not above p_critical; a deselected sample stays out whatever its p.
        assert_eq!(
            s.end_epoch(&[0.1, 0.76, 0.3, 0.1, 0.1], 0.75).unwrap(),
            vec![1]
        );
        assert!(!s.is_done(3));
        assert_eq!(
            s.end_epoch(&[0.0, 0.0, 0.99, 0.5, 0.0], 0.75).unwrap(),
            vec![2]
        );
        assert!(s.is_done(3) && !s.is_done(4));
        assert_eq!(s.ranks(), vec![1, 2, 3, 4, 1]);
        assert!(s.end_epoch(&[0.0], 0.75).is_err());
        // p_critical 0.8: f32(0.8) is not above itself.
        let mut t = Stage1::new(1);
        assert!(t.end_epoch(&[0.8], 0.8).unwrap().is_empty());
    }
}
