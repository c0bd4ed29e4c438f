//! SparseGPT (Frantar & Alistarh, 2023), as IST-DASLab/sparsegpt `SparseGPT.fasterprune`
//! computes it: prune one linear layer and update its remaining weights to compensate,
//! column by column, using the inverse Hessian of the layer's reconstruction error.
//!
//! Legend: W is (rows = out, cols = in) row-major f32; X is (tokens, cols), the layer's
//! calibration inputs; H is (cols, cols); B = blocksize (128); c a column index.
//!
//! ```text
//! H      = (2/n) sum_tokens x x^T                        f32, n = tokens seen (Hessian)
//! dead   = { i : H_ii = 0 }:  H_ii = 1, W[:, i] = 0
//! H     += percdamp * mean(diag H) * I                   percdamp = 0.01
//! Hinv   = upper Cholesky factor of H^-1                  H^-1 = Hinv^T Hinv
//! for each block of B columns [i1, i2):
//!   unstructured: tmp = W1^2 / diag(Hinv1)^2; thresh = sort(tmp)[floor(rows B s)]; mask = tmp <= thresh
//!   for c in block:
//!     N:M at every c % M == 0: mask the N smallest tmp of W1[:, c..c+M] per row
//!     q = W1[:, c] with masked entries 0;  err = (W1[:, c] - q) / Hinv_cc
//!     W1[:, c..i2] -= err (x) Hinv[c, c..i2];   W[:, c] = q
//!   W[:, i2..] -= Err1 @ Hinv[i1..i2, i2..]
//! ```
//!
//! Precision: H is accumulated in f32, like the authors'. The factorisation (Cholesky,
//! triangular inverse, second Cholesky) runs in f64 in one cols x cols buffer (8 cols^2
//! bytes: 0.5 GB for cols = 8192), then Hinv is stored in f32 and the column loop runs in
//! f32, as the authors' does. The scale of H (2/n with n = tokens, where the authors' n counts
//! sequences) cancels: the mask uses ratios of Hinv's diagonal and the update is
//! `err * Hinv[c, :]` with err divided by Hinv_cc.
//!
//! Differences from the authors' code, on purpose: N:M needs cols and B to be multiples of
//! M (the authors' groups restart at each block and would be cut at its end otherwise); a
//! non-positive-definite H is an error naming the layer, where torch raises its own.
//! Kept on purpose: the unstructured mask prunes `tmp <= thresh`, so each block prunes at
//! least floor(rows B s) + 1 weights (more with ties), even at s = 0.

use super::masks::{check_shape, mark_lowest, prune_count, Mask, Pattern};
use crate::{LabError, Result};

/// H = (2/n) sum x x^T over all calibration tokens seen, accumulated batch by batch as a
/// running mean in f32 (`SparseGPT.add_batch`, with n counting tokens).
#[derive(Clone, Debug)]
pub struct Hessian {
    cols: usize,
    /// (cols, cols) row-major, symmetric.
    h: Vec<f32>,
    tokens: usize,
}

impl Hessian {
    pub fn new(cols: usize) -> Self {
        Hessian {
            cols,
            h: vec![0.0; cols * cols],
            tokens: 0,
        }
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Calibration tokens seen so far.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// (cols, cols) row-major.
    pub fn matrix(&self) -> &[f32] {
        &self.h
    }

    /// Adds the rows of `x`, (tokens, cols) row-major: the `Observer::linear_input` tensor.
    /// `H <- H n/(n+t); n <- n+t; H += y y^T` for each token, y = sqrt(2/n) x.
    pub fn add_batch(&mut self, x: &[f32]) -> Result<()> {
        let n = self.cols;
        if n == 0 || x.len() % n != 0 || x.is_empty() {
            return Err(LabError::invalid(format!(
                "a calibration batch must hold whole rows of {n} inputs; found {} values",
                x.len()
            )));
        }
        let t = x.len() / n;
        let keep = self.tokens as f32 / (self.tokens + t) as f32;
        self.tokens += t;
        let scale = (2.0 / self.tokens as f64).sqrt() as f32;
        for v in self.h.iter_mut() {
            *v *= keep;
        }
        let mut y = vec![0f32; n];
        for row in x.chunks_exact(n) {
            for (yi, &xi) in y.iter_mut().zip(row) {
                *yi = scale * xi;
            }
            // Upper triangle only; mirrored below.
            for i in 0..n {
                let yi = y[i];
                if yi == 0.0 {
                    continue;
                }
                for (h, &yj) in self.h[i * n + i..(i + 1) * n].iter_mut().zip(&y[i..]) {
                    *h += yi * yj;
                }
            }
        }
        for i in 0..n {
            for j in 0..i {
                self.h[i * n + j] = self.h[j * n + i];
            }
        }
        Ok(())
    }
}

/// SparseGPT's knobs, with the authors' defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SparseGptOptions {
    /// Damping added to H's diagonal, as a fraction of its mean (0.01).
    pub percdamp: f64,
    /// Columns updated together before the lazy batch update (128).
    pub blocksize: usize,
}

impl Default for SparseGptOptions {
    fn default() -> Self {
        SparseGptOptions {
            percdamp: 0.01,
            blocksize: 128,
        }
    }
}

/// What SparseGPT did to one layer.
#[derive(Clone, Debug)]
pub struct SparseGptReport {
    /// The weights the algorithm zeroed (dead inputs' columns are zero too, masked or not).
    pub mask: Mask,
    /// Input columns that calibration never excited (H_ii = 0); their weights were zeroed.
    pub dead_inputs: Vec<usize>,
    /// The authors' `error`: sum over pruned weights of (w - q)^2 / Hinv_cc^2 / 2.
    pub loss: f64,
}

/// Prunes `weight` (rows, cols) in place with SparseGPT and updates its other weights.
/// `what` names the layer in messages. Unstructured sparsity must be in [0, 1).
pub fn sparsegpt_prune(
    what: &str,
    weight: &mut [f32],
    rows: usize,
    cols: usize,
    hessian: &Hessian,
    pattern: Pattern,
    opts: &SparseGptOptions,
) -> Result<SparseGptReport> {
    check_shape(what, weight, rows, cols)?;
    pattern.check(what, cols)?;
    if hessian.cols != cols {
        return Err(LabError::invalid(format!(
            "{what}: the Hessian is {0}x{0}; the layer has {cols} input columns",
            hessian.cols
        )));
    }
    if hessian.tokens == 0 {
        return Err(LabError::invalid(format!(
            "{what}: SparseGPT needs calibration data; the Hessian has seen no tokens"
        )));
    }
    if !(opts.percdamp.is_finite() && opts.percdamp >= 0.0) {
        return Err(LabError::invalid(format!(
            "percdamp must be a finite number >= 0; found {}",
            opts.percdamp
        )));
    }
    if opts.blocksize == 0 {
        return Err(LabError::invalid(
            "SparseGPT's blocksize must be at least 1",
        ));
    }
    match pattern {
        Pattern::Unstructured { sparsity } if sparsity >= 1.0 => {
            return Err(LabError::invalid(format!(
                "{what}: SparseGPT's sparsity must be below 1; found {sparsity}"
            )));
        }
        Pattern::NM { m, n } if opts.blocksize % m != 0 => {
            return Err(LabError::invalid(format!(
                "{what}: {n}:{m} sparsity needs SparseGPT's blocksize ({}) to be a multiple \
                 of {m}",
                opts.blocksize
            )));
        }
        _ => {}
    }
    if let Some(i) = weight.iter().position(|w| !w.is_finite()) {
        return Err(LabError::invalid(format!(
            "{what}: weight [{}, {}] is {}; expected a finite number",
            i / cols,
            i % cols,
            weight[i]
        )));
    }
    let n = cols;
    if rows == 0 || n == 0 {
        return Ok(SparseGptReport {
            mask: Mask::empty(rows, cols),
            dead_inputs: Vec::new(),
            loss: 0.0,
        });
    }

    // H in f64, dead inputs, damping.
    let mut a: Vec<f64> = hessian.h.iter().map(|&v| v as f64).collect();
    let mut dead_inputs = Vec::new();
    for i in 0..n {
        if hessian.h[i * n + i] == 0.0 {
            a[i * n + i] = 1.0;
            dead_inputs.push(i);
            for r in 0..rows {
                weight[r * n + i] = 0.0;
            }
        }
    }
    let damp = opts.percdamp * (0..n).map(|i| a[i * n + i]).sum::<f64>() / n as f64;
    for i in 0..n {
        a[i * n + i] += damp;
    }
    let not_pd = || {
        LabError::invalid(format!(
            "the Hessian of {what} is not positive definite: add damping (percdamp, now {}) \
             or calibration data",
            opts.percdamp
        ))
    };
    cholesky_lower_in_place(&mut a, n).map_err(|_| not_pd())?;
    invert_lower_in_place(&mut a, n);
    gram_of_lower_in_place(&mut a, n);
    cholesky_lower_in_place(&mut a, n).map_err(|_| not_pd())?;
    // Hinv = L2^T, upper.
    let mut hinv = vec![0f32; n * n];
    for i in 0..n {
        for j in i..n {
            hinv[i * n + j] = a[j * n + i] as f32;
        }
    }
    drop(a);

    let bs = opts.blocksize;
    let mut mask = Mask::empty(rows, cols);
    let mut loss = 0f64;
    let mut w1 = vec![0f32; rows * bs.min(n)];
    let mut err1 = vec![0f32; rows * bs.min(n)];
    let mut block_mask = vec![false; rows * bs.min(n)];
    let mut tmp = vec![0f32; rows * bs.min(n)];
    let mut idx = Vec::new();
    for i1 in (0..n).step_by(bs) {
        let i2 = (i1 + bs).min(n);
        let count = i2 - i1;
        let w1 = &mut w1[..rows * count];
        let err1 = &mut err1[..rows * count];
        let block_mask = &mut block_mask[..rows * count];
        let tmp = &mut tmp[..rows * count];
        for r in 0..rows {
            w1[r * count..(r + 1) * count].copy_from_slice(&weight[r * n + i1..r * n + i2]);
        }
        block_mask.fill(false);
        // tmp = w^2 / Hinv_cc^2 on the block as it stands after earlier blocks' updates.
        for r in 0..rows {
            for c in 0..count {
                let d = hinv[(i1 + c) * n + i1 + c];
                let w = w1[r * count + c];
                tmp[r * count + c] = (w * w) / (d * d);
            }
        }
        if let Pattern::Unstructured { sparsity } = pattern {
            let k = prune_count(tmp.len(), sparsity);
            let mut sorted = tmp.to_vec();
            let (_, &mut thresh, _) = sorted.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
            for (p, &t) in block_mask.iter_mut().zip(tmp.iter()) {
                *p = t <= thresh;
            }
        }
        for i in 0..count {
            let c = i1 + i;
            let d = hinv[c * n + c];
            if let Pattern::NM { n: pn, m } = pattern {
                if i % m == 0 {
                    for r in 0..rows {
                        let row = &mut tmp[r * count + i..r * count + i + m];
                        for (k, t) in row.iter_mut().enumerate() {
                            let dk = hinv[(c + k) * n + c + k];
                            let w = w1[r * count + i + k];
                            *t = (w * w) / (dk * dk);
                        }
                        mark_lowest(
                            row,
                            pn,
                            &mut idx,
                            &mut block_mask[r * count + i..r * count + i + m],
                        );
                    }
                }
            }
            let hrow = &hinv[c * n + i1 + i..c * n + i2];
            for r in 0..rows {
                let w = w1[r * count + i];
                let q = if block_mask[r * count + i] { 0.0 } else { w };
                weight[r * n + c] = q;
                let e = (w - q) / d;
                loss += (e as f64) * (e as f64) / 2.0;
                err1[r * count + i] = e;
                if e != 0.0 {
                    for (wj, &h) in w1[r * count + i..(r + 1) * count].iter_mut().zip(hrow) {
                        *wj -= e * h;
                    }
                }
            }
        }
        for r in 0..rows {
            for c in 0..count {
                mask.pruned[r * n + i1 + c] = block_mask[r * count + c];
            }
        }
        // The lazy batch update: W[:, i2..] -= Err1 @ Hinv[i1..i2, i2..].
        if i2 < n {
            for r in 0..rows {
                let wrest = &mut weight[r * n + i2..(r + 1) * n];
                for k in 0..count {
                    let e = err1[r * count + k];
                    if e == 0.0 {
                        continue;
                    }
                    let hrow = &hinv[(i1 + k) * n + i2..(i1 + k + 1) * n];
                    for (wj, &h) in wrest.iter_mut().zip(hrow) {
                        *wj -= e * h;
                    }
                }
            }
        }
    }
    Ok(SparseGptReport {
        mask,
        dead_inputs,
        loss,
    })
}

/// A = L L^T in place (row-oriented Cholesky-Banachiewicz); reads and writes the lower
/// triangle only. Err when a pivot is not a positive finite number.
fn cholesky_lower_in_place(a: &mut [f64], n: usize) -> std::result::Result<(), ()> {
    for i in 0..n {
        for j in 0..=i {
            let (ri, rj) = (i * n, j * n);
            let dot: f64 = (0..j).map(|k| a[ri + k] * a[rj + k]).sum();
            let s = a[ri + j] - dot;
            if i == j {
                if !(s > 0.0 && s.is_finite()) {
                    return Err(());
                }
                a[ri + i] = s.sqrt();
            } else {
                a[ri + j] = s / a[rj + j];
            }
        }
    }
    Ok(())
}

/// L -> L^-1 in place on the lower triangle, column by column:
/// `M_jj = 1/L_jj`, `M_ij = -(sum_{k=j}^{i-1} L_ik M_kj) / L_ii` for i > j. Column j reads
/// L in columns >= j (not yet overwritten) and M in column j (already written).
fn invert_lower_in_place(a: &mut [f64], n: usize) {
    for j in 0..n {
        a[j * n + j] = 1.0 / a[j * n + j];
        for i in j + 1..n {
            let s: f64 = (j..i).map(|k| a[i * n + k] * a[k * n + j]).sum();
            a[i * n + j] = -s / a[i * n + i];
        }
    }
}

/// V (lower) -> the lower triangle of V^T V, which is H^-1 when V = L^-1:
/// `(V^T V)_ij = sum_{k >= i} V_ki V_kj` for i >= j. V^T is first copied to the upper
/// triangle so every sum is a dot product of two contiguous rows of V^T.
fn gram_of_lower_in_place(a: &mut [f64], n: usize) {
    for i in 0..n {
        for k in i + 1..n {
            a[i * n + k] = a[k * n + i];
        }
    }
    // Row i of V^T: a[i][i..n]. The diagonal is shared, so its results wait in `diag`.
    let mut diag = vec![0f64; n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (i..n).map(|k| a[i * n + k] * a[j * n + k]).sum();
            if i == j {
                diag[i] = s;
            } else {
                a[i * n + j] = s;
            }
        }
    }
    for i in 0..n {
        a[i * n + i] = diag[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hessian_of(x: &[f32], cols: usize) -> Hessian {
        let mut h = Hessian::new(cols);
        h.add_batch(x).unwrap();
        h
    }

    #[test]
    fn factorisation_gives_the_upper_cholesky_factor_of_the_inverse() {
        // H = [[4, 2], [2, 3]]; H^-1 = [[3, -2], [-2, 4]] / 8.
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        cholesky_lower_in_place(&mut a, 2).unwrap();
        invert_lower_in_place(&mut a, 2);
        gram_of_lower_in_place(&mut a, 2);
        assert!((a[0] - 3.0 / 8.0).abs() < 1e-15);
        assert!((a[2] + 2.0 / 8.0).abs() < 1e-15);
        assert!((a[3] - 4.0 / 8.0).abs() < 1e-15);
        cholesky_lower_in_place(&mut a, 2).unwrap();
        // U = L2^T with U^T U = H^-1.
        let (u00, u01, u11) = (a[0], a[2], a[3]);
        assert!((u00 * u00 - 3.0 / 8.0).abs() < 1e-15);
        assert!((u00 * u01 + 2.0 / 8.0).abs() < 1e-15);
        assert!((u01 * u01 + u11 * u11 - 4.0 / 8.0).abs() < 1e-15);
    }

    #[test]
    fn identity_hessian_is_magnitude_pruning_without_updates() {
        // Tokens e_0..e_3: H = (2/4) I, no off-diagonal terms, nothing to propagate.
        let x = [
            1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0,
        ];
        let h = hessian_of(&x, 4);
        assert_eq!(h.tokens(), 4);
        assert!((h.matrix()[0] - 0.5).abs() < 1e-6);
        let mut w = vec![1.0, -4.0, 3.0, 2.0, 5.0, 6.0, -0.5, 7.0];
        let r = sparsegpt_prune(
            "t",
            &mut w,
            2,
            4,
            &h,
            Pattern::Unstructured { sparsity: 0.25 },
            &SparseGptOptions::default(),
        )
        .unwrap();
        // k = floor(8 * 0.25) = 2: thresh = sorted(w^2)[2] = 4 -> prunes |w| <= 2, that is
        // k + 1 = 3 weights (the authors' `<=`).
        assert_eq!(w, vec![0.0, -4.0, 3.0, 0.0, 5.0, 6.0, 0.0, 7.0]);
        assert_eq!(r.mask.pruned_count(), 3);
        assert!(r.dead_inputs.is_empty());
    }

    #[test]
    fn dead_inputs_zero_their_column() {
        // Input 2 never fires.
        let x = [1.0, 0.5, 0.0, 0.2, 1.0, 0.0, 0.3, -0.7, 0.0];
        let h = hessian_of(&x, 3);
        let mut w = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let r = sparsegpt_prune(
            "t",
            &mut w,
            2,
            3,
            &h,
            Pattern::NM { n: 0, m: 1 },
            &SparseGptOptions::default(),
        )
        .unwrap();
        assert_eq!(r.dead_inputs, vec![2]);
        assert_eq!((w[2], w[5]), (0.0, 0.0));
        assert_eq!(r.mask.pruned_count(), 0);
        assert_eq!(&w[..2], &[1.0, 2.0]);
    }

    #[test]
    fn one_column_layer() {
        let h = hessian_of(&[2.0, 1.0], 1);
        let mut w = vec![3.0, -1.0, 2.0];
        sparsegpt_prune(
            "t",
            &mut w,
            3,
            1,
            &h,
            Pattern::Unstructured { sparsity: 0.5 },
            &SparseGptOptions::default(),
        )
        .unwrap();
        // k = 1, thresh = 2nd smallest w^2 = 4 -> |w| <= 2 pruned.
        assert_eq!(w, vec![3.0, 0.0, 0.0]);
    }

    #[test]
    fn bad_arguments_and_singular_hessians_are_errors() {
        let opts = SparseGptOptions::default();
        let u = Pattern::Unstructured { sparsity: 0.5 };
        let empty = Hessian::new(2);
        let mut w = vec![1.0; 4];
        assert!(sparsegpt_prune("t", &mut w, 2, 2, &empty, u, &opts).is_err());
        let h = hessian_of(&[1.0, 1.0], 2);
        assert!(sparsegpt_prune("t", &mut w, 2, 3, &h, u, &opts).is_err());
        assert!(sparsegpt_prune("t", &mut w, 1, 4, &h, u, &opts).is_err());
        let one = Pattern::Unstructured { sparsity: 1.0 };
        assert!(sparsegpt_prune("t", &mut w, 2, 2, &h, one, &opts).is_err());
        let bad_bs = SparseGptOptions {
            blocksize: 3,
            ..opts
        };
        let nm = Pattern::NM { n: 1, m: 2 };
        assert!(sparsegpt_prune("t", &mut w, 2, 2, &h, nm, &bad_bs).is_err());
        let zero_bs = SparseGptOptions {
            blocksize: 0,
            ..opts
        };
        assert!(sparsegpt_prune("t", &mut w, 2, 2, &h, u, &zero_bs).is_err());
        // One token [1, 1]: H = 2 [[1, 1], [1, 1]] is singular; without damping it fails.
        let no_damp = SparseGptOptions {
            percdamp: 0.0,
            ..opts
        };
        let e = sparsegpt_prune(
            "model.layers.0.self_attn.q_proj",
            &mut w,
            2,
            2,
            &h,
            u,
            &no_damp,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("model.layers.0.self_attn.q_proj") && e.contains("percdamp"),
            "{e}"
        );
        // With the default damping it works.
        sparsegpt_prune("t", &mut w, 2, 2, &h, u, &opts).unwrap();
        let mut nan = vec![f32::NAN, 1.0, 1.0, 1.0];
        assert!(sparsegpt_prune("t", &mut nan, 2, 2, &h, u, &opts).is_err());
        assert!(Hessian::new(2).add_batch(&[1.0]).is_err());
    }

    #[test]
    fn sparsity_zero_still_prunes_each_blocks_minimum_as_the_authors_code_does() {
        let h = hessian_of(&[1.0, 0.5, 0.2, 1.0], 2);
        let mut w = vec![1.0, 2.0, 3.0, 4.0];
        let r = sparsegpt_prune(
            "t",
            &mut w,
            2,
            2,
            &h,
            Pattern::Unstructured { sparsity: 0.0 },
            &SparseGptOptions::default(),
        )
        .unwrap();
        assert_eq!(r.mask.pruned_count(), 1);
    }
}
