//! Which weights of one linear layer a mask prunes: magnitude, Wanda (unstructured per row,
//! N:M), on the CPU. This is the CPU twin of `select` (the GPU's selection, which falls back
//! to it for layers it cannot select exactly) and what a run without a GPU uses; the pruning
//! code reaches it through `prune::masks`.
//!
//! Legend: W is (rows = out, cols = in), row-major f32, as the model stores `weight`;
//! `scaler_row` is (cols) and holds, per input column j, the mean over calibration windows
//! of the sum over that window's tokens of x_j^2 (Wanda's `scaler_row`, see
//! `prune::masks::ScalerRow`). A [`Mask`] has one flag per weight, true = pruned.
//!
//! ```text
//! magnitude      score |W_ij|; one comparison group: the whole layer; zero k = floor(rows cols s)
//! Wanda          score |W_ij| sqrt(scaler_row_j); group: each row; zero k = floor(cols s) per row
//! N:M            same scores; group: each row's M consecutive input columns; zero the N lowest
//! ```
//!
//! Every selection is exact: the k lowest scores, ties broken by the lower (flat or column)
//! index, as a stable ascending sort (`torch.sort(stable=True)`, `np.argsort(kind="stable")`)
//! would do. Where this differs from the authors' code it is said at the function.

use crate::{LabError, Result};

/// Which weights of a comparison group are pruned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pattern {
    /// Zero floor(group size x sparsity) weights, sparsity in [0, 1].
    Unstructured { sparsity: f64 },
    /// In every M consecutive input columns of a row, zero the N lowest (0 <= N <= M).
    NM { n: usize, m: usize },
}

impl Pattern {
    /// Checks the pattern against a layer with `cols` input columns; `what` names the layer.
    pub fn check(&self, what: &str, cols: usize) -> Result<()> {
        match *self {
            Pattern::Unstructured { sparsity } => {
                if !(0.0..=1.0).contains(&sparsity) {
                    return Err(LabError::invalid(format!(
                        "{what}: the sparsity must be in [0, 1]; found {sparsity}"
                    )));
                }
            }
            Pattern::NM { n, m } => {
                if m == 0 || n > m {
                    return Err(LabError::invalid(format!(
                        "{what}: N:M sparsity needs 0 <= N <= M and M >= 1; found {n}:{m}"
                    )));
                }
                if !cols.is_multiple_of(m) {
                    return Err(LabError::invalid(format!(
                        "{what}: {n}:{m} sparsity needs the input columns ({cols}) to be a \
                         multiple of {m}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// One flag per weight of a (rows, cols) layer, true = pruned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    pub rows: usize,
    pub cols: usize,
    pub pruned: Vec<bool>,
}

impl Mask {
    pub fn empty(rows: usize, cols: usize) -> Self {
        Mask {
            rows,
            cols,
            pruned: vec![false; rows * cols],
        }
    }
    /// Number of pruned weights.
    pub fn pruned_count(&self) -> usize {
        self.pruned.iter().filter(|&&p| p).count()
    }
    /// Number of pruned weights in row `r`.
    pub fn pruned_in_row(&self, r: usize) -> usize {
        self.pruned[r * self.cols..(r + 1) * self.cols]
            .iter()
            .filter(|&&p| p)
            .count()
    }
    /// Fraction of pruned weights (0 for an empty layer).
    pub fn sparsity(&self) -> f64 {
        if self.pruned.is_empty() {
            0.0
        } else {
            self.pruned_count() as f64 / self.pruned.len() as f64
        }
    }
}

/// Checks that `weight` holds rows x cols values; `what` names the layer in the message.
pub fn check_shape(what: &str, weight: &[f32], rows: usize, cols: usize) -> Result<()> {
    if rows.checked_mul(cols) != Some(weight.len()) {
        return Err(LabError::invalid(format!(
            "{what}: expected a weight of shape [{rows}, {cols}] ({} values), found {} values",
            rows.saturating_mul(cols),
            weight.len()
        )));
    }
    Ok(())
}

/// `k` = floor(n * s) as the authors compute it (`int(n * s)` on a Python float).
pub fn prune_count(n: usize, s: f64) -> usize {
    ((n as f64 * s).floor() as usize).min(n)
}

/// Wanda scores `A_ij = |W_ij| * sqrt(scaler_row_j)` (f32), (rows, cols).
pub fn wanda_scores(
    what: &str,
    weight: &[f32],
    rows: usize,
    cols: usize,
    scaler_row: &[f32],
) -> Result<Vec<f32>> {
    check_shape(what, weight, rows, cols)?;
    let sqrt_s = sqrt_scaler(what, scaler_row, cols)?;
    let mut out = Vec::with_capacity(weight.len());
    for row in weight.chunks_exact(cols.max(1)) {
        out.extend(row.iter().zip(&sqrt_s).map(|(w, s)| w.abs() * s));
    }
    Ok(out)
}

/// sqrt(scaler_row_j), after checking its length and that it is a valid statistic.
pub(crate) fn sqrt_scaler(what: &str, scaler_row: &[f32], cols: usize) -> Result<Vec<f32>> {
    if scaler_row.len() != cols {
        return Err(LabError::invalid(format!(
            "{what}: expected {cols} activation statistics (one per input column), found {}",
            scaler_row.len()
        )));
    }
    if let Some(j) = scaler_row
        .iter()
        .position(|s| !(s.is_finite() && *s >= 0.0))
    {
        return Err(LabError::invalid(format!(
            "{what}: the activation statistic of input {j} is {}; expected a finite sum of \
             squares >= 0",
            scaler_row[j]
        )));
    }
    Ok(scaler_row.iter().map(|s| s.sqrt()).collect())
}

/// Marks the `k` lowest of `scores[idx]` (ties: lower index first) in `pruned`.
/// `idx` is scratch space, overwritten.
pub(crate) fn mark_lowest(scores: &[f32], k: usize, idx: &mut Vec<u32>, pruned: &mut [bool]) {
    if k == 0 {
        return;
    }
    idx.clear();
    idx.extend(0..scores.len() as u32);
    if k < scores.len() {
        // The composite key (score, index) makes every key distinct, so the k smallest are
        // one well-defined set: a stable sort's first k.
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            scores[a as usize]
                .total_cmp(&scores[b as usize])
                .then(a.cmp(&b))
        });
    }
    for &i in &idx[..k] {
        pruned[i as usize] = true;
    }
}

/// A per-row mask from (rows, cols) `scores`: unstructured (floor(cols s) lowest per row)
/// or N:M (N lowest in each M consecutive columns). Ties: lower column first.
pub fn row_mask(
    what: &str,
    scores: &[f32],
    rows: usize,
    cols: usize,
    pattern: Pattern,
) -> Result<Mask> {
    check_shape(what, scores, rows, cols)?;
    pattern.check(what, cols)?;
    check_u32(what, cols)?;
    let mut mask = Mask::empty(rows, cols);
    let mut idx = Vec::new();
    for (row_scores, row_mask) in scores
        .chunks_exact(cols.max(1))
        .zip(mask.pruned.chunks_exact_mut(cols.max(1)))
    {
        match pattern {
            Pattern::Unstructured { sparsity } => {
                mark_lowest(row_scores, prune_count(cols, sparsity), &mut idx, row_mask)
            }
            Pattern::NM { n, m } => {
                for (g, gm) in row_scores.chunks_exact(m).zip(row_mask.chunks_exact_mut(m)) {
                    mark_lowest(g, n, &mut idx, gm);
                }
            }
        }
    }
    Ok(mask)
}

fn check_u32(what: &str, n: usize) -> Result<()> {
    if n > u32::MAX as usize {
        return Err(LabError::invalid(format!(
            "{what}: {n} weights in one comparison group; at most {} are supported",
            u32::MAX
        )));
    }
    Ok(())
}

/// Wanda (METHODS.md): scores `|W_ij| sqrt(scaler_row_j)`, compared within each output row
/// (unstructured) or each row's groups of M (N:M). Matches locuslab/wanda `prune_wanda`
/// (`torch.sort(W_metric, dim=-1, stable=True)` and the first `int(cols * s)` indices);
/// for N:M `torch.topk(largest=False)` leaves ties unspecified, here the lower column wins.
pub fn wanda_mask(
    what: &str,
    weight: &[f32],
    rows: usize,
    cols: usize,
    scaler_row: &[f32],
    pattern: Pattern,
) -> Result<Mask> {
    let scores = wanda_scores(what, weight, rows, cols, scaler_row)?;
    row_mask(what, &scores, rows, cols, pattern)
}

/// Magnitude pruning. Unstructured: one comparison group over the whole layer; exactly
/// k = floor(rows cols s) weights with the smallest |W| are zeroed, ties by flat index.
/// N:M: the N smallest |W| of every M consecutive columns of each row.
///
/// The authors' code (wanda/OWL `prune_magnitude`) instead takes `thresh =
/// sort(|W|)[int(numel s)]` and prunes `|W| <= thresh`: at least one weight more than k,
/// plus every weight tied with the threshold (and an index error at k = numel). The lab
/// prunes exactly k so the achieved sparsity is the one asked for.
pub fn magnitude_mask(
    what: &str,
    weight: &[f32],
    rows: usize,
    cols: usize,
    pattern: Pattern,
) -> Result<Mask> {
    check_shape(what, weight, rows, cols)?;
    let abs: Vec<f32> = weight.iter().map(|w| w.abs()).collect();
    match pattern {
        Pattern::NM { .. } => row_mask(what, &abs, rows, cols, pattern),
        Pattern::Unstructured { sparsity } => {
            pattern.check(what, cols)?;
            check_u32(what, abs.len())?;
            let mut mask = Mask::empty(rows, cols);
            let k = prune_count(abs.len(), sparsity);
            mark_lowest(&abs, k, &mut Vec::new(), &mut mask.pruned);
            Ok(mask)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparsity_zero_prunes_nothing_and_one_prunes_everything() {
        let w = [1.0, -2.0, 3.0, 0.5, 0.25, -4.0];
        let s = [1.0, 4.0, 9.0];
        let u = |s| Pattern::Unstructured { sparsity: s };
        assert_eq!(
            wanda_mask("t", &w, 2, 3, &s, u(0.0))
                .unwrap()
                .pruned_count(),
            0
        );
        assert_eq!(
            magnitude_mask("t", &w, 2, 3, u(0.0))
                .unwrap()
                .pruned_count(),
            0
        );
        assert_eq!(
            wanda_mask("t", &w, 2, 3, &s, u(1.0))
                .unwrap()
                .pruned_count(),
            6
        );
        assert_eq!(
            magnitude_mask("t", &w, 2, 3, u(1.0))
                .unwrap()
                .pruned_count(),
            6
        );
        // 0.999: floor(3 * 0.999) = 2 per row; floor(6 * 0.999) = 5 in the layer.
        assert_eq!(
            wanda_mask("t", &w, 2, 3, &s, u(0.999))
                .unwrap()
                .pruned_count(),
            4
        );
        assert_eq!(
            magnitude_mask("t", &w, 2, 3, u(0.999))
                .unwrap()
                .pruned_count(),
            5
        );
    }

    #[test]
    fn wanda_scores_and_ties() {
        // Row 0 scores: 1*1, 2*2, 3*3 ... row 1: all equal -> the lowest columns go first.
        let w = [1.0, 1.0, 1.0, 2.0, 1.0, 0.5];
        let s = [1.0, 1.0, 1.0];
        let m = wanda_mask("t", &w, 2, 3, &s, Pattern::Unstructured { sparsity: 0.67 }).unwrap();
        assert_eq!(m.pruned, vec![true, true, false, false, true, true]);
        let m = wanda_mask("t", &w, 2, 3, &s, Pattern::Unstructured { sparsity: 0.34 }).unwrap();
        assert_eq!(m.pruned, vec![true, false, false, false, false, true]);
    }

    #[test]
    fn one_column_layers() {
        let w = [3.0, -1.0, 2.0];
        let m = wanda_mask(
            "t",
            &w,
            3,
            1,
            &[2.0],
            Pattern::Unstructured { sparsity: 0.9 },
        )
        .unwrap();
        assert_eq!(m.pruned_count(), 0);
        let m = magnitude_mask("t", &w, 3, 1, Pattern::Unstructured { sparsity: 0.5 }).unwrap();
        assert_eq!(m.pruned, vec![false, true, false]);
        let m = wanda_mask("t", &w, 3, 1, &[2.0], Pattern::NM { n: 1, m: 1 }).unwrap();
        assert_eq!(m.pruned_count(), 3);
    }

    #[test]
    fn n_m_groups() {
        let w = [4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let m = magnitude_mask("t", &w, 1, 8, Pattern::NM { n: 2, m: 4 }).unwrap();
        assert_eq!(
            m.pruned,
            vec![false, false, true, true, true, true, false, false]
        );
    }

    #[test]
    fn bad_arguments_are_errors() {
        let w = [1.0; 6];
        let s = [1.0; 3];
        let u = |s| Pattern::Unstructured { sparsity: s };
        assert!(wanda_mask("t", &w, 2, 2, &s, u(0.5)).is_err());
        assert!(wanda_mask("t", &w, 2, 3, &s[..2], u(0.5)).is_err());
        assert!(wanda_mask("t", &w, 2, 3, &[1.0, -1.0, 1.0], u(0.5)).is_err());
        assert!(wanda_mask("t", &w, 2, 3, &[1.0, f32::NAN, 1.0], u(0.5)).is_err());
        assert!(wanda_mask("t", &w, 2, 3, &s, u(1.5)).is_err());
        assert!(wanda_mask("t", &w, 2, 3, &s, u(f64::NAN)).is_err());
        assert!(magnitude_mask("t", &w, 2, 3, Pattern::NM { n: 2, m: 4 }).is_err());
        assert!(magnitude_mask("t", &w, 2, 3, Pattern::NM { n: 4, m: 3 }).is_err());
        assert!(magnitude_mask("t", &w, 2, 3, Pattern::NM { n: 0, m: 0 }).is_err());
        let e = wanda_mask("model.layers.0.mlp.up_proj", &w, 3, 3, &s, u(0.5)).unwrap_err();
        assert!(e.to_string().contains("model.layers.0.mlp.up_proj"));
    }
}
