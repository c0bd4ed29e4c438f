//! The bias lab's losses, each a forward that returns the loss and a backward that gives its
//! gradient (METHODS.md, Sebra; the authors' loss/upweighted_training_loss.py and
//! loss/contrastive_loss.py).
//!
//! - Weighted cross-entropy, L = (1/B) sum_i w_i CE(logits_i, y_i), the weights treated as
//!   constants: w = 1 is ERM; w_i = stopgrad(p_{i,y_i})^(1/beta) is Stage 1's up-weighted
//!   loss (`upweights`); the oracle's group-balanced weights are another choice of w.
//! - Stage 2's batch contrastive loss on features: with s(a,b) the cosine similarity,
//!   e_pos_i = exp(s(f_i, fp_i)/tau), e_neg_i = exp(s(f_i, fn_i)/tau) (fp, fn constants),
//!   loss_i = -log(e_pos_i / (sum_j e_neg_j + sum_j e_pos_j)), L = mean_i loss_i
//!   = -(1/B) sum_i s_pos_i/tau + log Z, Z = sum_j (e_pos_j + e_neg_j). Note Z sums over the
//!   whole batch, as the authors' code does (`exp_neg.sum(0)`, `exp_pos.sum(0)`).
//!
//! Shape legend: B = batch, K = classes, D = feature dim.

use crate::train::ops::Real;

/// The softmax of one row of logits, max-shifted.
pub fn softmax_row<F: Real>(row: &[F]) -> Vec<F> {
    let mut max = row[0];
    row.iter().for_each(|&v| {
        if v > max {
            max = v
        }
    });
    let mut e: Vec<F> = row.iter().map(|&v| (v - max).exp()).collect();
    let mut sum = F::ZERO;
    e.iter().for_each(|&v| sum += v);
    let inv = F::ONE / sum;
    e.iter_mut().for_each(|v| *v *= inv);
    e
}

/// probs (B,K) = softmax(logits) per row.
pub fn softmax<F: Real>(logits: &[F], k: usize) -> Vec<F> {
    logits.chunks(k).flat_map(softmax_row).collect()
}

/// Stage 1's weights w_i = p_{i,y_i}^(1/beta) from the batch's probabilities (constants: no
/// gradient flows through them).
pub fn upweights<F: Real>(probs: &[F], labels: &[u32], beta_inv: f64) -> Vec<F> {
    let k = probs.len() / labels.len();
    labels
        .iter()
        .enumerate()
        .map(|(i, &y)| F::of(libm::pow(probs[i * k + y as usize].to_f64(), beta_inv)))
        .collect()
}

/// L = (1/B) sum_i w_i * -log p_{i,y_i} (summed in f64), with probs = softmax(logits)
/// computed as log-sum-exp for small p.
pub fn weighted_ce_forward<F: Real>(logits: &[F], labels: &[u32], weights: &[F]) -> f64 {
    let b = labels.len();
    let k = logits.len() / b;
    let mut total = 0.0;
    for (i, row) in logits.chunks(k).enumerate() {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.to_f64()));
        let lse = max + libm::log(row.iter().map(|v| libm::exp(v.to_f64() - max)).sum::<f64>());
        total += weights[i].to_f64() * (lse - row[labels[i] as usize].to_f64());
    }
    total / b as f64
}

/// dlogits (B,K) += scale * w_i * (p_i - onehot(y_i)) / B.
pub fn weighted_ce_backward<F: Real>(
    dlogits: &mut [F],
    probs: &[F],
    labels: &[u32],
    weights: &[F],
    scale: f64,
) {
    let b = labels.len();
    let k = probs.len() / b;
    let inv = F::of(scale / b as f64);
    for i in 0..b {
        let c = weights[i] * inv;
        for j in 0..k {
            let onehot = if j == labels[i] as usize {
                F::ONE
            } else {
                F::ZERO
            };
            dlogits[i * k + j] += c * (probs[i * k + j] - onehot);
        }
    }
}

/// torch.nn.CosineSimilarity's eps: each norm is clamped below at it.
pub const COSINE_EPS: f64 = 1e-8;

/// What the contrastive backward needs.
pub struct ContrastiveCache<F> {
    /// cos(f_i, fp_i), cos(f_i, fn_i) (B each).
    cos_pos: Vec<F>,
    cos_neg: Vec<F>,
    /// e_pos_i / Z, e_neg_i / Z.
    w_pos: Vec<F>,
    w_neg: Vec<F>,
    norm_f: Vec<F>,
    norm_p: Vec<F>,
    norm_n: Vec<F>,
}

fn dot<F: Real>(a: &[F], b: &[F]) -> F {
    let mut acc = F::ZERO;
    a.iter().zip(b).for_each(|(&x, &y)| acc += x * y);
    acc
}

fn norm<F: Real>(a: &[F]) -> F {
    let n = dot(a, a).sqrt();
    let eps = F::of(COSINE_EPS);
    if n > eps {
        n
    } else {
        eps
    }
}

/// The contrastive loss of anchors f (B,D) against positives fp and negatives fn (B,D).
pub fn contrastive_forward<F: Real>(
    f: &[F],
    fp: &[F],
    fneg: &[F],
    d: usize,
    tau: f64,
) -> (f64, ContrastiveCache<F>) {
    let b = f.len() / d;
    let rows = |x: &[F]| x.chunks(d).map(norm).collect::<Vec<F>>();
    let (norm_f, norm_p, norm_n) = (rows(f), rows(fp), rows(fneg));
    let cos = |other: &[F], norms: &[F]| -> Vec<F> {
        (0..b)
            .map(|i| {
                dot(&f[i * d..(i + 1) * d], &other[i * d..(i + 1) * d]) / (norm_f[i] * norms[i])
            })
            .collect()
    };
    let (cos_pos, cos_neg) = (cos(fp, &norm_p), cos(fneg, &norm_n));
    // log Z with the max shifted out, in f64.
    let scaled: Vec<f64> = cos_pos
        .iter()
        .chain(&cos_neg)
        .map(|c| c.to_f64() / tau)
        .collect();
    let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = scaled.iter().map(|s| libm::exp(s - max)).sum();
    let log_z = max + libm::log(z);
    let mean_pos = scaled[..b].iter().sum::<f64>() / b as f64;
    let w: Vec<F> = scaled.iter().map(|s| F::of(libm::exp(s - log_z))).collect();
    let cache = ContrastiveCache {
        cos_pos,
        cos_neg,
        w_pos: w[..b].to_vec(),
        w_neg: w[b..].to_vec(),
        norm_f,
        norm_p,
        norm_n,
    };
    (log_z - mean_pos, cache)
}

/// df (B,D) += scale * dL/df. With dL/ds_pos_i = (w_pos_i - 1/B)/tau, dL/ds_neg_i =
/// w_neg_i/tau (s = cosine), and d cos(f,g)/df = g/(|f||g|) - cos f/|f|^2.
#[allow(clippy::too_many_arguments)]
pub fn contrastive_backward<F: Real>(
    df: &mut [F],
    cache: &ContrastiveCache<F>,
    f: &[F],
    fp: &[F],
    fneg: &[F],
    d: usize,
    tau: f64,
    scale: f64,
) {
    let b = f.len() / d;
    let inv_tau = F::of(scale / tau);
    let inv_b = F::ONE / F::of(b as f64);
    for i in 0..b {
        let gp = (cache.w_pos[i] - inv_b) * inv_tau;
        let gn = cache.w_neg[i] * inv_tau;
        let nf = cache.norm_f[i];
        let (ap, an) = (gp / (nf * cache.norm_p[i]), gn / (nf * cache.norm_n[i]));
        let self_coef = (gp * cache.cos_pos[i] + gn * cache.cos_neg[i]) / (nf * nf);
        for j in 0..d {
            let idx = i * d + j;
            df[idx] += ap * fp[idx] + an * fneg[idx] - self_coef * f[idx];
        }
    }
}
