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
//! Precision: H is accumulated in f32, like the authors'. The factorisation runs in f64
//! (one Cholesky of the reversed H and one triangular inverse, see
//! `upper_cholesky_of_inverse`; 8 cols^2 bytes: 0.5 GB for cols = 8192), then Hinv is stored
//! in f32 and the column loop runs in f32, as the authors' does. The scale of H (2/n with n = tokens, where the authors' n counts
//! sequences) cancels: the mask uses ratios of Hinv's diagonal and the update is
//! `err * Hinv[c, :]` with err divided by Hinv_cc.
//!
//! Differences from the authors' code, on purpose: N:M needs cols and B to be multiples of
//! M (the authors' groups restart at each block and would be cut at its end otherwise); a
//! non-positive-definite H is an error naming the layer, where torch raises its own.
//! Kept on purpose: the unstructured mask prunes `tmp <= thresh`, so each block prunes at
//! least floor(rows B s) + 1 weights (more with ties), even at s = 0.

use crate::compute::cpu_select::{check_shape, mark_lowest, prune_count, Mask, Pattern};
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
        if n == 0 || !x.len().is_multiple_of(n) || x.is_empty() {
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
        Pattern::NM { m, n } if !opts.blocksize.is_multiple_of(m) => {
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
    let hinv = upper_cholesky_of_inverse(a, n).map_err(|_| not_pd())?;

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

/// U, upper triangular with U^T U = H^-1 (torch's `cholesky(cholesky_inverse(cholesky(H)),
/// upper=True)`), from one Cholesky factorisation and one triangular inverse instead of
/// two factorisations, an inverse and a product. With J the reversal permutation
/// (J_ij = [i + j = n - 1]): factor J H J = L L^T (L lower); then H = R R^T with R = J L J
/// upper, so H^-1 = (R^-1)^T R^-1 and U = R^-1 = J L^-1 J. Returned in f32, row-major.
/// Err when H is not positive definite (a pivot that is not a positive finite number).
fn upper_cholesky_of_inverse(h: Vec<f64>, n: usize) -> std::result::Result<Vec<f32>, ()> {
    let rev = |i: usize| n - 1 - i;
    let mut a = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            a[i * n + j] = h[rev(i) * n + rev(j)];
        }
    }
    drop(h);
    cholesky_lower_in_place(&mut a, n)?;
    // L^-1 column by column: x = L^-1 e_j solves L x = e_j by forward substitution,
    // x_i = -(sum_{j<=k<i} L_ik x_k) / L_ii for i > j: contiguous rows of L against x.
    let mut u = vec![0f32; n * n];
    let mut x = vec![0f64; n];
    for j in 0..n {
        x[j] = 1.0 / a[j * n + j];
        for i in j + 1..n {
            x[i] = -dot(&a[i * n + j..i * n + i], &x[j..i]) / a[i * n + i];
        }
        // (L^-1)_ij = x_i lands at U[rev(i), rev(j)], rev(i) <= rev(j): upper.
        for (i, &v) in x.iter().enumerate().skip(j) {
            u[rev(i) * n + rev(j)] = v as f32;
        }
    }
    Ok(u)
}

/// sum_k a_k b_k in f64 with four independent partial sums (which the compiler can keep in
/// SIMD registers; a single running sum is a chain of dependent adds).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// A = L L^T in place (row-oriented Cholesky-Banachiewicz); reads and writes the lower
/// triangle only. Err when a pivot is not a positive finite number.
fn cholesky_lower_in_place(a: &mut [f64], n: usize) -> std::result::Result<(), ()> {
    for i in 0..n {
        for j in 0..=i {
            let (ri, rj) = (i * n, j * n);
            let s = a[ri + j] - dot(&a[ri..ri + j], &a[rj..rj + j]);
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
        // H = [[4, 2], [2, 3]]; H^-1 = [[3, -2], [-2, 4]] / 8 = U^T U, U upper:
        // U_00^2 = 3/8, U_00 U_01 = -2/8, U_01^2 + U_11^2 = 4/8.
        let u = upper_cholesky_of_inverse(vec![4.0, 2.0, 2.0, 3.0], 2).unwrap();
        let (u00, u01, u10, u11) = (u[0] as f64, u[1] as f64, u[2] as f64, u[3] as f64);
        assert_eq!(u10, 0.0);
        assert!(u00 > 0.0 && u11 > 0.0);
        assert!((u00 * u00 - 3.0 / 8.0).abs() < 1e-7);
        assert!((u00 * u01 + 2.0 / 8.0).abs() < 1e-7);
        assert!((u01 * u01 + u11 * u11 - 4.0 / 8.0).abs() < 1e-7);
        // A random SPD 37 x 37 H: U^T U H = I to f32 precision.
        let n = 37;
        let mut rng = 12345u64;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((rng >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        let b: Vec<f64> = (0..n * n).map(|_| next()).collect();
        let mut h = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = (0..n).map(|k| b[i * n + k] * b[j * n + k]).sum::<f64>()
                    + if i == j { 1.0 } else { 0.0 };
            }
        }
        let u = upper_cholesky_of_inverse(h.clone(), n).unwrap();
        for i in 0..n {
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0, "U[{i},{j}] below the diagonal");
            }
        }
        for i in 0..n {
            for j in 0..n {
                // (U^T U H)_ij = sum_k (U^T U)_ik H_kj.
                let v: f64 = (0..n)
                    .map(|k| {
                        let hinv_ik: f64 = (0..n)
                            .map(|m| u[m * n + i] as f64 * u[m * n + k] as f64)
                            .sum();
                        hinv_ik * h[k * n + j]
                    })
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-4, "(H^-1 H)[{i},{j}] = {v}");
            }
        }
        assert!(upper_cholesky_of_inverse(vec![1.0, 2.0, 2.0, 1.0], 2).is_err());
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
