//! Pruning masks: Wanda's calibration statistic ([`ScalerRow`]), and applying and counting
//! masks. Which weights a mask prunes (magnitude, Wanda, N:M) is chosen by
//! `compute::cpu_select` (the CPU twin) or `compute::select` (the GPU's), re-exported here
//! with the types they share, so that the pruning code and the compute layer each depend
//! only in one direction (prune -> compute).
//!
//! Legend: W is (rows = out, cols = in), row-major f32, as the model stores `weight`;
//! `scaler_row` is (cols) and holds, per input column j, the mean over calibration windows
//! of the sum over that window's tokens of x_j^2 (Wanda's `scaler_row`). A [`Mask`] has
//! one flag per weight, true = pruned.

pub use crate::compute::cpu_select::{
    check_shape, magnitude_mask, prune_count, row_mask, wanda_mask, wanda_scores, Mask, Pattern,
};
use crate::{LabError, Result};

/// Wanda's per-column activation statistic, accumulated one batch of windows at a time as
/// locuslab/wanda's `WrappedGPT.add_batch` does (a running mean over windows, in f32):
///
/// ```text
/// scaler_row <- scaler_row * n / (n + b);  n <- n + b;  scaler_row_j += sum_tokens x_j^2 / n
/// ```
///
/// so that after all windows `scaler_row_j = (1/n_windows) sum_windows sum_tokens x_j^2`.
#[derive(Clone, Debug)]
pub struct ScalerRow {
    pub scaler_row: Vec<f32>,
    /// Windows seen so far.
    pub windows: usize,
}

impl ScalerRow {
    pub fn new(cols: usize) -> Self {
        ScalerRow {
            scaler_row: vec![0.0; cols],
            windows: 0,
        }
    }

    /// Adds `windows` calibration windows whose tokens are the rows of `x`, (tokens, cols)
    /// row-major (the `Observer::linear_input` tensor of one batch, flattened).
    pub fn add_batch(&mut self, x: &[f32], windows: usize) -> Result<()> {
        let cols = self.scaler_row.len();
        if cols == 0 || !x.len().is_multiple_of(cols) || windows == 0 {
            return Err(LabError::invalid(format!(
                "a calibration batch of {windows} window(s) must hold whole rows of {cols} \
                 inputs; found {} values",
                x.len()
            )));
        }
        let mut sq = vec![0f32; cols];
        for row in x.chunks_exact(cols) {
            for (s, &v) in sq.iter_mut().zip(row) {
                *s += v * v;
            }
        }
        let old = self.windows as f32;
        self.windows += windows;
        let n = self.windows as f32;
        for (acc, s) in self.scaler_row.iter_mut().zip(sq) {
            *acc = *acc * (old / n) + s / n;
        }
        Ok(())
    }
}

/// Zeroes the pruned weights of `weight` (rows, cols) in place.
pub fn apply_mask(what: &str, weight: &mut [f32], mask: &Mask) -> Result<()> {
    check_shape(what, weight, mask.rows, mask.cols)?;
    for (w, &p) in weight.iter_mut().zip(&mask.pruned) {
        if p {
            *w = 0.0;
        }
    }
    Ok(())
}

/// Number of weights that are exactly zero (either sign), the achieved sparsity's numerator.
pub fn count_zeros(weight: &[f32]) -> usize {
    weight.iter().filter(|&&w| w == 0.0).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaler_row_is_the_mean_over_windows_of_the_sum_of_squares() {
        let mut acc = ScalerRow::new(2);
        acc.add_batch(&[1.0, 2.0, 3.0, 0.0], 1).unwrap(); // window 1: [10, 4]
        acc.add_batch(&[2.0, 2.0], 1).unwrap(); // window 2: [4, 4]
        assert_eq!(acc.scaler_row, vec![7.0, 4.0]);
        assert!(acc.add_batch(&[1.0], 1).is_err());
        assert!(acc.add_batch(&[1.0, 1.0], 0).is_err());
    }

    #[test]
    fn apply_and_count() {
        let mut w = [1.0, 2.0, 0.0, 4.0];
        let m = magnitude_mask("t", &w, 2, 2, Pattern::Unstructured { sparsity: 0.5 }).unwrap();
        apply_mask("t", &mut w, &m).unwrap();
        assert_eq!(w, [0.0, 2.0, 0.0, 4.0]);
        assert_eq!(count_zeros(&w), 2);
        let mut w2 = [1.0; 4];
        assert!(apply_mask("t", &mut w2, &Mask::empty(2, 3)).is_err());
    }
}
