//! How much of each transformer block to prune: uniform, OWL, and OWL with N:M.
//!
//! Legend: L = number of blocks, S = target (mean) sparsity in [0, 1), D_l = the layerwise
//! outlier distribution of block l (a percentage, see `outliers`), lambda = OWL's spread.
//!
//! OWL (luuyin/OWL `lib/prune_all.py`, `prune_wanda_outlier`), in the order the code does it:
//!
//! ```text
//! d_l        = (D_l - min D) * ((1 / (max D - min D)) * lambda * 2)     d in [0, 2 lambda]
//! density_l  = (d_l - mean(d)) + (1 - S)                                 mean density = 1 - S
//! sparsity_l = 1 - density_l;  if sparsity_l <= 0 { sparsity_l = 0.01 }  (clamp AFTER centring)
//! ```
//!
//! The clamp sits after the centring, in the pruning loop, exactly as in the authors' code;
//! it is therefore not re-centred. Before the clamp the mean sparsity is exactly S (up to
//! rounding). `sparsity_l = S - (d_l - mean d)`, so the clamp fires only when a block's
//! `d_l - mean(d) >= S`; it is impossible when `S > 2 lambda` (since `d_l - mean d <= 2 lambda`).
//! When it fires, every clamped block is pruned more than the formula says, and the mean
//! rises to `S + sum_clamped (0.01 - sparsity_l) / L`. `owl` reports that in a notice.
//!
//! The other end, `sparsity_l >= 1`, is not handled by the authors' code (Wanda would zero
//! whole rows, magnitude would index past the end); here it is an error that says to lower
//! lambda or S.
//!
//! All D_l equal (including a single block) divides 0 by 0: the authors' code yields NaN for
//! every block. Here the allocation falls back to uniform S and says so in a notice.

use crate::{LabError, Result};

/// Sparsity per block plus sentences about what the allocation had to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    /// sparsity_l, one per block, each in (0, 1).
    pub sparsity: Vec<f64>,
    /// Things the user should know: uniform fallback, clamped blocks, mean moved off S.
    pub notices: Vec<String>,
}

/// N:M per block for OWL N:M: block l zeroes `n[l]` weights of every group of `m`.
#[derive(Clone, Debug, PartialEq)]
pub struct NmAllocation {
    pub n: Vec<usize>,
    pub m: usize,
    pub notices: Vec<String>,
}

fn check_target(s: f64) -> Result<()> {
    if !(0.0..1.0).contains(&s) {
        return Err(LabError::invalid(format!(
            "the target sparsity must be in [0, 1); found {s}"
        )));
    }
    Ok(())
}

fn check_lod(lod: &[f64], lambda: f64) -> Result<()> {
    if lod.is_empty() {
        return Err(LabError::invalid(
            "OWL needs the outlier distribution of at least one block; found none",
        ));
    }
    if let Some((l, d)) = lod.iter().enumerate().find(|(_, d)| !d.is_finite()) {
        return Err(LabError::invalid(format!(
            "the outlier ratio of block {l} is {d}; expected a finite percentage"
        )));
    }
    if !(lambda.is_finite() && lambda >= 0.0) {
        return Err(LabError::invalid(format!(
            "OWL's lambda must be a finite number >= 0; found {lambda}"
        )));
    }
    Ok(())
}

/// `d_l = (D_l - min D) * ((1 / (max D - min D)) * spread)`, in the authors' operation order;
/// None when all D_l are equal (max - min = 0).
fn scaled(lod: &[f64], spread: f64) -> Option<Vec<f64>> {
    let min = lod.iter().copied().fold(f64::INFINITY, f64::min);
    let max = lod.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max - min == 0.0 {
        return None;
    }
    let k = (1.0 / (max - min)) * spread;
    Some(lod.iter().map(|&d| (d - min) * k).collect())
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The same sparsity S for each of `n_blocks` blocks.
pub fn uniform(n_blocks: usize, s: f64) -> Result<Vec<f64>> {
    check_target(s)?;
    if n_blocks == 0 {
        return Err(LabError::invalid(
            "a model with no blocks has nothing to prune",
        ));
    }
    Ok(vec![s; n_blocks])
}

/// OWL's non-uniform sparsity (METHODS.md OWL step 2). `lod[l]` is D_l of the dense model
/// (one value per block, computed with `outliers::block_outlier_ratio` on Wanda scores);
/// `s` the target mean sparsity; `lambda` the spread (paper default 0.08).
pub fn owl(lod: &[f64], s: f64, lambda: f64) -> Result<Allocation> {
    check_target(s)?;
    check_lod(lod, lambda)?;
    let mut notices = Vec::new();
    let Some(d) = scaled(lod, lambda * 2.0) else {
        notices.push(format!(
            "every block has the same outlier ratio ({}%), so OWL has nothing to spread \
             (the authors' code would divide by zero): every block gets the uniform sparsity {s}",
            lod[0]
        ));
        return Ok(Allocation {
            sparsity: vec![s; lod.len()],
            notices,
        });
    };
    let mean_d = mean(&d);
    let mut sparsity = Vec::with_capacity(d.len());
    let mut clamped = Vec::new();
    for (l, &dl) in d.iter().enumerate() {
        let density = dl - mean_d + (1.0 - s);
        let sl = 1.0 - density;
        if sl >= 1.0 {
            return Err(LabError::invalid(format!(
                "OWL gives block {l} a sparsity of {sl:.4} (>= 1: the whole block would be \
                 pruned); lower lambda ({lambda}) or the target sparsity ({s})"
            )));
        }
        if sl <= 0.0 {
            clamped.push(l);
            sparsity.push(0.01);
        } else {
            sparsity.push(sl);
        }
    }
    if !clamped.is_empty() {
        notices.push(format!(
            "OWL's formula gave block(s) {clamped:?} a sparsity <= 0; as in the authors' code \
             they are pruned at 0.01 instead, so the mean sparsity is {:.6}, not {s}",
            mean(&sparsity)
        ));
    }
    Ok(Allocation { sparsity, notices })
}

/// OWL with N:M (METHODS.md OWL step 4, `prune_wanda_outlier_structure`): `d` scaled to
/// [0, lambda] (not 2 lambda), centred on its mean, rounded half to even (numpy's
/// `np.round`), and block l zeroes `N_l = n - d_l` of every `m`. The mean of N_l is not
/// preserved in general (a notice says so). N_l outside [0, m] is an error. (The authors'
/// `_special` variant, which turns a rounded 1 into 2, is not implemented.)
pub fn owl_nm(lod: &[f64], n: usize, m: usize, lambda: f64) -> Result<NmAllocation> {
    check_lod(lod, lambda)?;
    if m == 0 || n > m {
        return Err(LabError::invalid(format!(
            "N:M sparsity needs 0 <= N <= M and M >= 1; found {n}:{m}"
        )));
    }
    let mut notices = Vec::new();
    let Some(d) = scaled(lod, lambda) else {
        notices.push(format!(
            "every block has the same outlier ratio ({}%), so OWL has nothing to spread \
             (the authors' code would divide by zero): every block gets {n}:{m}",
            lod[0]
        ));
        return Ok(NmAllocation {
            n: vec![n; lod.len()],
            m,
            notices,
        });
    };
    let mean_d = mean(&d);
    let mut per_block = Vec::with_capacity(d.len());
    for (l, &dl) in d.iter().enumerate() {
        let nl = n as f64 - (dl - mean_d).round_ties_even();
        if !(0.0..=m as f64).contains(&nl) {
            return Err(LabError::invalid(format!(
                "OWL N:M gives block {l} {nl}:{m}, outside 0..={m}; lower lambda ({lambda})"
            )));
        }
        per_block.push(nl as usize);
    }
    let mean_n = per_block.iter().sum::<usize>() as f64 / per_block.len() as f64;
    if mean_n != n as f64 {
        notices.push(format!(
            "OWL N:M rounds each block's N, so the blocks zero {mean_n:.4} of every {m} on \
             average, not {n}"
        ));
    }
    Ok(NmAllocation {
        n: per_block,
        m,
        notices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_arguments_are_errors() {
        assert!(uniform(0, 0.5).is_err());
        assert!(uniform(3, 1.0).is_err());
        assert!(uniform(3, -0.1).is_err());
        assert!(owl(&[], 0.5, 0.08).is_err());
        assert!(owl(&[1.0, 2.0], 1.0, 0.08).is_err());
        assert!(owl(&[1.0, 2.0], f64::NAN, 0.08).is_err());
        assert!(owl(&[1.0, 2.0], 0.5, -0.1).is_err());
        assert!(owl(&[1.0, f64::NAN], 0.5, 0.1).is_err());
        assert!(owl_nm(&[1.0, 2.0], 5, 4, 1.0).is_err());
        assert!(owl_nm(&[1.0, 2.0], 0, 0, 1.0).is_err());
        assert!(owl_nm(&[], 2, 4, 1.0).is_err());
    }

    #[test]
    fn all_equal_lod_is_uniform_with_a_notice() {
        let a = owl(&[3.0, 3.0, 3.0], 0.7, 0.08).unwrap();
        assert_eq!(a.sparsity, vec![0.7; 3]);
        assert_eq!(a.notices.len(), 1);
        let a = owl(&[3.0], 0.7, 0.08).unwrap();
        assert_eq!(a.sparsity, vec![0.7]);
        let b = owl_nm(&[1.0, 1.0], 2, 4, 2.0).unwrap();
        assert_eq!(b.n, vec![2, 2]);
        assert_eq!(b.notices.len(), 1);
    }

    #[test]
    fn more_outliers_get_less_sparsity_and_the_mean_is_s() {
        let a = owl(&[1.0, 4.0, 2.0, 3.0], 0.5, 0.08).unwrap();
        assert!(a.notices.is_empty());
        assert!((a.sparsity.iter().sum::<f64>() / 4.0 - 0.5).abs() < 1e-15);
        assert!(a.sparsity[1] < a.sparsity[3] && a.sparsity[3] < a.sparsity[2]);
        assert!((a.sparsity[0] - a.sparsity[1] - 0.16).abs() < 1e-15);
    }

    #[test]
    fn zero_lambda_and_zero_sparsity() {
        let a = owl(&[1.0, 2.0, 3.0], 0.6, 0.0).unwrap();
        for s in a.sparsity {
            assert!((s - 0.6).abs() < 1e-15);
        }
        // S = 0: the block with more outliers would get -0.08 -> 0.01.
        let a = owl(&[1.0, 3.0], 0.0, 0.08).unwrap();
        assert!((a.sparsity[0] - 0.08).abs() < 1e-15);
        assert_eq!(a.sparsity[1], 0.01);
        assert_eq!(a.notices.len(), 1);
    }

    #[test]
    fn sparsity_at_or_above_one_is_an_error() {
        // S + mean(d) >= 1 for the block with the fewest outliers.
        assert!(owl(&[0.0, 10.0, 10.0], 0.9, 0.2).is_err());
    }

    /// OWL N:M (METHODS.md step 4) worked by hand: d = (D - min) / (max - min) lambda,
    /// centred, rounded half to even; N_l = N - round(d_l - mean d).
    #[test]
    fn owl_nm_matches_hand_arithmetic() {
        // D = [0, 1, 2, 3], lambda 3: d = [0, 1, 2, 3], mean 1.5, centred [-1.5, -0.5, 0.5,
        // 1.5], rounded half to even [-2, -0, 0, 2]; N = 2 - that = [4, 2, 2, 0], mean 2.
        let a = owl_nm(&[0.0, 1.0, 2.0, 3.0], 2, 4, 3.0).unwrap();
        assert_eq!(a.n, vec![4, 2, 2, 0]);
        assert!(a.notices.is_empty(), "{:?}", a.notices);
        // D = [1, 2, 4], lambda 2: d = [0, 2/3, 2], mean 8/9, centred [-8/9, -2/9, 10/9],
        // rounded [-1, 0, 1]; N = [3, 2, 1], mean 2.
        let a = owl_nm(&[1.0, 2.0, 4.0], 2, 4, 2.0).unwrap();
        assert_eq!(a.n, vec![3, 2, 1]);
        assert!(a.notices.is_empty(), "{:?}", a.notices);
        // D = [0, 1, 4], lambda 4: d = [0, 1, 4], mean 5/3, centred [-5/3, -2/3, 7/3],
        // rounded [-2, -1, 2]; N = [4, 3, 0], mean 7/3 != 2: a notice says so.
        let a = owl_nm(&[0.0, 1.0, 4.0], 2, 4, 4.0).unwrap();
        assert_eq!(a.n, vec![4, 3, 0]);
        assert_eq!(a.notices.len(), 1, "{:?}", a.notices);
        assert!(a.notices[0].contains("2.3333"), "{}", a.notices[0]);
    }

    #[test]
    fn nm_out_of_range_is_an_error() {
        assert!(owl_nm(&[0.0, 10.0], 1, 4, 4.0).is_err());
    }
}
