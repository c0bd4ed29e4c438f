//! OWL's layerwise outlier distribution (LOD): how many Wanda scores of a block stand far
//! above the block's mean score.
//!
//! ```text
//! A_ij  = |W_ij| sqrt(scaler_row_j)              every linear of block l (LLaMA: q,k,v,o,gate,up,down)
//! D_l   = 100 * #{A > M * mean(A)} / #A          all the block's scores flattened together
//! ```
//!
//! One value per block, not per linear (luuyin/OWL `check_outlier_mean` on the `torch.cat` of
//! the block's flattened scores). It must be measured on the DENSE model, with the same
//! calibration statistics Wanda uses (`masks::ScalerRow`, taken in OWL's first sequential
//! pass), before any block is pruned; the resulting `D` feeds `allocation::owl`.
//!
//! The mean is taken in f64 and the comparison `A > M * mean` in f64 (the authors' torch
//! code takes the mean in f32); only a score within f32 rounding of the threshold can be
//! counted differently. Scores are recomputed on the fly, never stored: a LLaMA-7B block has
//! 202M weights.

use crate::compute::cpu_select::{check_shape, sqrt_scaler};
use crate::{LabError, Result};

/// One linear layer of a block with its calibration statistic.
#[derive(Clone, Copy, Debug)]
pub struct LinearStats<'a> {
    /// The tensor's name, for messages and reports ("model.layers.3.mlp.up_proj").
    pub name: &'a str,
    /// (rows = out, cols = in), row-major.
    pub weight: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    /// (cols): mean over windows of the per-window sum of x_j^2 (`masks::ScalerRow`).
    pub scaler_row: &'a [f32],
}

/// D for one value of M: the block's and each linear's (each against its own mean).
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierRatios {
    /// The multiple of the mean score above which a score is an outlier (`Hyper_m`).
    pub m: f64,
    /// D_l: percentage of the block's scores above M x the block's mean score.
    pub block: f64,
    /// (name, percentage of that linear's scores above M x that linear's mean score).
    pub per_linear: Vec<(String, f64)>,
}

fn check_m(m: f64) -> Result<()> {
    if !(m.is_finite() && m > 0.0) {
        return Err(LabError::invalid(format!(
            "the outlier multiple M must be a finite number > 0; found {m}"
        )));
    }
    Ok(())
}

/// Calls `f(score)` for every Wanda score of `lin`, in row-major order.
fn for_each_score(lin: &LinearStats, sqrt_s: &[f32], mut f: impl FnMut(f32)) {
    for row in lin.weight.chunks_exact(lin.cols.max(1)) {
        for (w, s) in row.iter().zip(sqrt_s) {
            f(w.abs() * s);
        }
    }
}

/// The outlier ratios of one block for each M in `ms` (a sweep; OWL uses one M, default 5
/// in the README runs). Two passes over the weights: sums, then counts.
pub fn outlier_sweep(linears: &[LinearStats], ms: &[f64]) -> Result<Vec<OutlierRatios>> {
    if linears.is_empty() {
        return Err(LabError::invalid(
            "the outlier distribution needs at least one linear layer in the block",
        ));
    }
    for &m in ms {
        check_m(m)?;
    }
    let mut sqrt_s = Vec::with_capacity(linears.len());
    let mut sums = Vec::with_capacity(linears.len());
    for lin in linears {
        check_shape(lin.name, lin.weight, lin.rows, lin.cols)?;
        let s = sqrt_scaler(lin.name, lin.scaler_row, lin.cols)?;
        let mut sum = 0f64;
        for_each_score(lin, &s, |a| sum += a as f64);
        sums.push(sum);
        sqrt_s.push(s);
    }
    let total: usize = linears.iter().map(|l| l.weight.len()).sum();
    if total == 0 {
        return Err(LabError::invalid(
            "the block's linear layers hold no weights",
        ));
    }
    let block_mean = sums.iter().sum::<f64>() / total as f64;

    // counts[i][k]: scores of linear i above ms[k] x the block mean / its own mean. The Ms
    // are visited in ascending order, so a score stops at the first threshold it does not
    // pass (all later ones are higher): most scores test one or two thresholds, not all.
    let mut order: Vec<usize> = (0..ms.len()).collect();
    order.sort_by(|&a, &b| ms[a].total_cmp(&ms[b]));
    let mut above_block = vec![0usize; ms.len()];
    let mut per_linear = vec![vec![0f64; ms.len()]; linears.len()];
    for (i, lin) in linears.iter().enumerate() {
        let n = lin.weight.len();
        let own_mean = if n == 0 { 0.0 } else { sums[i] / n as f64 };
        let block_thr: Vec<f64> = order.iter().map(|&k| ms[k] * block_mean).collect();
        let own_thr: Vec<f64> = order.iter().map(|&k| ms[k] * own_mean).collect();
        // Counts in ascending-M order.
        let mut block_sorted = vec![0usize; ms.len()];
        let mut own = vec![0usize; ms.len()];
        for_each_score(lin, &sqrt_s[i], |a| {
            let a = a as f64;
            for (c, t) in block_sorted.iter_mut().zip(&block_thr) {
                if a > *t {
                    *c += 1;
                } else {
                    break;
                }
            }
            for (c, t) in own.iter_mut().zip(&own_thr) {
                if a > *t {
                    *c += 1;
                } else {
                    break;
                }
            }
        });
        for (j, &k) in order.iter().enumerate() {
            above_block[k] += block_sorted[j];
            per_linear[i][k] = if n == 0 {
                0.0
            } else {
                own[j] as f64 / n as f64 * 100.0
            };
        }
    }
    Ok(ms
        .iter()
        .enumerate()
        .map(|(k, &m)| OutlierRatios {
            m,
            block: above_block[k] as f64 / total as f64 * 100.0,
            per_linear: linears
                .iter()
                .zip(&per_linear)
                .map(|(l, d)| (l.name.to_string(), d[k]))
                .collect(),
        })
        .collect())
}

/// D_l for one M: the percentage of the block's Wanda scores above M x their mean.
pub fn block_outlier_ratio(linears: &[LinearStats], m: f64) -> Result<f64> {
    Ok(outlier_sweep(linears, &[m])?[0].block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_against_the_block_mean_and_each_linears_own() {
        // Linear a: scores 1,1,1,9 (mean 3); linear b: scores 2,2 (mean 2). Block mean 16/6.
        let a = LinearStats {
            name: "a",
            weight: &[1.0, 1.0, 1.0, 9.0],
            rows: 2,
            cols: 2,
            scaler_row: &[1.0, 1.0],
        };
        let b = LinearStats {
            name: "b",
            weight: &[1.0, -1.0],
            rows: 1,
            cols: 2,
            scaler_row: &[4.0, 4.0],
        };
        let r = outlier_sweep(&[a, b], &[1.0, 3.0]).unwrap();
        // M = 1: block threshold 2.67 -> only 9; a: > 3 -> 9; b: > 2 -> none.
        assert!((r[0].block - 100.0 / 6.0).abs() < 1e-12);
        assert!((r[0].per_linear[0].1 - 25.0).abs() < 1e-12);
        assert_eq!(r[0].per_linear[1].1, 0.0);
        // M = 3: threshold 8 -> 9 still counts; a: > 9 -> none.
        assert!((r[1].block - 100.0 / 6.0).abs() < 1e-12);
        assert_eq!(r[1].per_linear[0].1, 0.0);
        assert_eq!(block_outlier_ratio(&[b], 1.0).unwrap(), 0.0);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let a = LinearStats {
            name: "a",
            weight: &[1.0, 2.0],
            rows: 1,
            cols: 2,
            scaler_row: &[1.0],
        };
        assert!(block_outlier_ratio(&[a], 5.0).is_err());
        assert!(block_outlier_ratio(&[], 5.0).is_err());
        let a = LinearStats {
            scaler_row: &[1.0, 1.0],
            ..a
        };
        assert!(block_outlier_ratio(&[a], 0.0).is_err());
        assert!(block_outlier_ratio(&[a], f64::NAN).is_err());
    }
}
