//! Weighted Kendall tau as `scipy.stats.weightedtau(x, y)` computes it with its defaults
//! (Vigna, WWW 2015): the additive hyperbolic weigher, and rank=True, the mean of the values
//! ranked by (x, y) and by (y, x). Sebra's ranking quality is this tau, per class, between
//! each sample's Sebra rank and its true group order, averaged over the classes
//! (ranking_eval_ours.py).
//!
//! One ranked pass, `weighted_ranked_tau(x, y)` (scipy's `_weightedrankedtau(x, y, None,
//! None, True)`): order the n elements by x, ties by y, remaining ties by index, all
//! increasing; the element in position n-1-k of that order has rank k (the largest x comes
//! first) and weight w = 1/(k+1). A pair weighs w_i + w_j. With
//! - tot = the weight of all pairs = (n-1) sum w,
//! - u, v = the weight of the pairs tied in x, resp. in y, and t of those tied in both,
//! - d = the weight of the discordant pairs ((x_i - x_j)(y_i - y_j) < 0),
//!
//! tau = (tot - u - v + t - 2 d) / sqrt(tot - u) / sqrt(tot - v), clipped to [-1, 1]; NaN when
//! x or y is constant (or empty). d comes from a merge sort by y of the (x, y)-ordered
//! elements (Knight's algorithm, weighted): O(n log n). NaN scores count as the smallest,
//! equal to each other, as in scipy.

use std::cmp::Ordering;

use crate::error::{LabError, Result};

/// scipy's total order on scores: NaN below everything and equal to itself.
fn cmp_scores(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

fn same(a: f64, b: f64) -> bool {
    cmp_scores(a, b) == Ordering::Equal
}

/// `scipy.stats.weightedtau(x, y).statistic`: the mean of the weighted tau ranked by
/// (x, y) and by (y, x). NaN when x or y is constant or empty; an error when the lengths
/// differ.
pub fn weighted_tau(x: &[f64], y: &[f64]) -> Result<f64> {
    if x.len() != y.len() {
        return Err(LabError::invalid(format!(
            "weighted tau needs two score lists of one length; found {} and {}",
            x.len(),
            y.len()
        )));
    }
    if x.is_empty() {
        return Ok(f64::NAN);
    }
    Ok((weighted_ranked_tau(x, y) + weighted_ranked_tau(y, x)) / 2.0)
}

/// The weight of the pairs tied in `key` among consecutive runs of `order`: each run of
/// equal keys with weight sum s and length m adds s (m - 1). Also returns whether more
/// than one run was found (the key is not constant).
fn tied_weight(order: &[usize], w: &[f64], tied: impl Fn(usize, usize) -> bool) -> (f64, bool) {
    let (mut total, mut first, mut s) = (0.0, 0usize, w[order[0]]);
    let mut runs = 1;
    for (i, &next) in order.iter().enumerate().skip(1) {
        if !tied(order[first], next) {
            total += s * (i - first - 1) as f64;
            first = i;
            s = 0.0;
            runs += 1;
        }
        s += w[next];
    }
    total += s * (order.len() - first - 1) as f64;
    (total, runs > 1)
}

/// One pass of scipy's `_weightedrankedtau` with rank=None (see the module comment).
pub fn weighted_ranked_tau(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len();
    if n == 0 || n != y.len() {
        return f64::NAN;
    }
    // Increasing by x, then y, then index (a stable sort, as numpy's lexsort).
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| cmp_scores(x[a], x[b]).then(cmp_scores(y[a], y[b])));
    let mut w = vec![0.0; n];
    for (pos, &i) in order.iter().enumerate() {
        w[i] = 1.0 / ((n - 1 - pos) as f64 + 1.0);
    }
    let (t, _) = tied_weight(&order, &w, |a, b| same(x[a], x[b]) && same(y[a], y[b]));
    let (u, x_varies) = tied_weight(&order, &w, |a, b| same(x[a], x[b]));
    if !x_varies {
        return f64::NAN;
    }
    let mut scratch = vec![0usize; n];
    let d = discordant_weight(&mut order, &mut scratch, &w, y);
    // `order` is now increasing in y.
    let (v, y_varies) = tied_weight(&order, &w, |a, b| same(y[a], y[b]));
    if !y_varies {
        return f64::NAN;
    }
    let total_w: f64 = order.iter().map(|&i| w[i]).sum();
    let tot = total_w * (n - 1) as f64;
    let tau = ((tot - (v + u - t)) - 2.0 * d) / (tot - u).sqrt() / (tot - v).sqrt();
    tau.clamp(-1.0, 1.0)
}

/// Sorts `order` by y (stably, by merging) and returns the weight of the pairs it had to
/// exchange: those with i before j in `order` and y_i > y_j, each weighing w_i + w_j.
fn discordant_weight(order: &mut [usize], scratch: &mut [usize], w: &[f64], y: &[f64]) -> f64 {
    let len = order.len();
    if len < 2 {
        return 0.0;
    }
    let mid = len / 2;
    let mut d = discordant_weight(&mut order[..mid], &mut scratch[..mid], w, y)
        + discordant_weight(&mut order[mid..], &mut scratch[mid..], w, y);
    // Weight of the left half's elements not yet merged.
    let mut left_weight: f64 = order[..mid].iter().map(|&i| w[i]).sum();
    let (mut a, mut b, mut k) = (0, mid, 0);
    while a < mid && b < len {
        if cmp_scores(y[order[a]], y[order[b]]) != Ordering::Greater {
            left_weight -= w[order[a]];
            scratch[k] = order[a];
            a += 1;
        } else {
            // order[b] jumps over the (mid - a) left elements still waiting, each pair
            // weighing w_b + w_left.
            d += w[order[b]] * (mid - a) as f64 + left_weight;
            scratch[k] = order[b];
            b += 1;
        }
        k += 1;
    }
    scratch[k..k + mid - a].copy_from_slice(&order[a..mid]);
    let merged = k + mid - a;
    order[..merged].copy_from_slice(&scratch[..merged]);
    d
}

/// Sebra's ranking quality: per class, `weighted_tau` of the Sebra ranks of that class's
/// training samples against their true group orders (0 = both cues aligned .. 3 = none);
/// and the mean over the classes (NaN if any class's tau is NaN, as the authors' plain mean).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RankingTau {
    pub per_class: Vec<f64>,
    pub mean: f64,
}

pub fn ranking_tau(
    labels: &[u32],
    ranks: &[u32],
    group_orders: &[u32],
    classes: usize,
) -> Result<RankingTau> {
    if labels.len() != ranks.len() || labels.len() != group_orders.len() {
        return Err(LabError::invalid(format!(
            "ranking tau needs one rank and one group per sample: {} labels, {} ranks, {} groups",
            labels.len(),
            ranks.len(),
            group_orders.len()
        )));
    }
    let per_class = (0..classes as u32)
        .map(|c| {
            let (r, g): (Vec<f64>, Vec<f64>) = (0..labels.len())
                .filter(|&i| labels[i] == c)
                .map(|i| (f64::from(ranks[i]), f64::from(group_orders[i])))
                .unzip();
            weighted_tau(&r, &g)
        })
        .collect::<Result<Vec<f64>>>()?;
    let mean = per_class.iter().sum::<f64>() / classes as f64;
    Ok(RankingTau { per_class, mean })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The definition pair by pair, O(n^2): an independent check of the merge sort and the
    /// tie sums (the scipy comparison is in tests/sebra_reference.rs).
    fn ranked_tau_by_pairs(x: &[f64], y: &[f64]) -> f64 {
        let n = x.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| cmp_scores(x[a], x[b]).then(cmp_scores(y[a], y[b])));
        let mut w = vec![0.0; n];
        for (pos, &i) in order.iter().enumerate() {
            w[i] = 1.0 / (n - pos) as f64;
        }
        let (mut tot, mut u, mut v, mut t, mut d) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for i in 0..n {
            for j in i + 1..n {
                let pw = w[i] + w[j];
                tot += pw;
                let (cx, cy) = (cmp_scores(x[i], x[j]), cmp_scores(y[i], y[j]));
                if cx == Ordering::Equal {
                    u += pw;
                }
                if cy == Ordering::Equal {
                    v += pw;
                }
                if cx == Ordering::Equal && cy == Ordering::Equal {
                    t += pw;
                }
                if cx != Ordering::Equal && cy != Ordering::Equal && cx != cy {
                    d += pw;
                }
            }
        }
        ((tot - u - v + t - 2.0 * d) / (tot - u).sqrt() / (tot - v).sqrt()).clamp(-1.0, 1.0)
    }

    #[test]
    fn merge_sort_matches_the_pairwise_definition_with_and_without_ties() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (n, levels) in [
            (2, 2),
            (7, 3),
            (50, 1000),
            (50, 4),
            (257, 5),
            (300, 1 << 20),
        ] {
            for _ in 0..5 {
                let mut draw = || (rng.next_u32() % levels) as f64;
                let x: Vec<f64> = (0..n).map(|_| draw()).collect();
                let y: Vec<f64> = (0..n).map(|_| draw()).collect();
                let (fast, slow) = (weighted_ranked_tau(&x, &y), ranked_tau_by_pairs(&x, &y));
                if slow.is_nan() {
                    continue;
                }
                assert!((fast - slow).abs() < 1e-12, "n {n}: {fast} vs {slow}");
            }
        }
    }

    /// Ranks that follow the groups exactly score 1 in every class, reversed ranks -1, and a
    /// class whose ranks are all equal NaN (as does the mean then).
    #[test]
    fn ranking_tau_per_class() {
        let labels = [0, 1, 0, 1, 0, 1, 0, 1];
        let groups = [0, 3, 1, 2, 2, 1, 3, 0];
        let follow: Vec<u32> = groups.iter().map(|g| 2 * g + 1).collect();
        let t = ranking_tau(&labels, &follow, &groups, 2).unwrap();
        assert!(
            t.per_class.iter().all(|&v| (v - 1.0).abs() < 1e-15),
            "{t:?}"
        );
        let reverse: Vec<u32> = groups.iter().map(|g| 10 - g).collect();
        let t = ranking_tau(&labels, &reverse, &groups, 2).unwrap();
        assert!((t.mean + 1.0).abs() < 1e-15, "{t:?}");
        let flat = [5, 1, 5, 2, 5, 3, 5, 4];
        let t = ranking_tau(&labels, &flat, &groups, 2).unwrap();
        assert!(t.per_class[0].is_nan() && (t.per_class[1] + 1.0).abs() < 1e-15);
        assert!(t.mean.is_nan());
        assert!(ranking_tau(&labels, &flat[..3], &groups, 2).is_err());
    }

    /// scipy's own docstring example: weightedtau([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]).
    #[test]
    fn scipy_docstring_example() {
        let x = [12.0, 2.0, 1.0, 12.0, 2.0];
        let y = [1.0, 4.0, 7.0, 1.0, 0.0];
        let tau = weighted_tau(&x, &y).unwrap();
        assert!((tau - -0.566_949_681_536_827_2).abs() < 1e-15, "{tau}");
        // NaN is the smallest score: replacing the 0 by NaN changes nothing.
        let y_nan = [1.0, 4.0, 7.0, 1.0, f64::NAN];
        assert!((weighted_tau(&x, &y_nan).unwrap() - tau).abs() < 1e-15);
        assert!(weighted_tau(&[1.0, 1.0], &[1.0, 2.0]).unwrap().is_nan());
        assert!(weighted_tau(&[], &[]).unwrap().is_nan());
        assert!(weighted_tau(&[1.0], &[1.0, 2.0]).is_err());
    }
}
