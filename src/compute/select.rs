//! Wanda's and magnitude's mask selection on the GPU (shaders/select.wgsl); the CPU twins are
//! `cpu_select::wanda_mask` and `magnitude_mask`, and each pair gives the same mask, flag
//! for flag.
//!
//! W (rows, cols) and sqrt(scaler_row) (cols) go up; the kernel forms each score
//! |W_ij| sqrt_s_j with one f32 multiply and picks, per row, the floor(cols s) lowest (or,
//! N:M, the N lowest of every M consecutive columns), ties to the lower column. The mask
//! comes back packed 32 flags a word.
//!
//! Exactness: an f32 product is correctly rounded on both sides, but WGSL lets a GPU flush
//! subnormals and assume there are no infinities or NaNs. So the GPU only gets inputs where
//! every weight is finite, every nonzero |W| and sqrt_s is normal, sqrt_s has no negative
//! zero, and every product |W| sqrt_s stays within the normal range (checked from the
//! extremes); any other layer (none in a real model) is selected by the CPU twin, with the
//! same result.

use bytemuck::{Pod, Zeroable};

use super::cpu_select::{check_shape, prune_count, sqrt_scaler, Mask, Pattern};
use super::gpu::{GpuContext, Shader};
use super::pool::DType;
use super::recorder::Recorder;
use crate::{LabError, Result};

pub const SELECT: Shader = Shader {
    name: "select.wgsl",
    source: include_str!("../../shaders/select.wgsl"),
};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SelectParams {
    rows: u32,
    cols: u32,
    k: u32,
    n: u32,
    m: u32,
    _pad: [u32; 3],
}

/// True when every score |W_ij| sqrt_s_j is a normal (or zero) f32 computed from normal (or
/// zero) inputs, so the GPU's product equals the CPU's bit for bit.
pub fn gpu_exact(weight: &[f32], sqrt_s: &[f32]) -> bool {
    // (min nonzero, max) of |values|; None if a value is not finite or is subnormal.
    let range = |v: &[f32]| -> Option<(f64, f64)> {
        let mut lo = f64::INFINITY;
        let mut hi = 0f64;
        for &x in v {
            let a = x.abs();
            if !a.is_finite() || (a != 0.0 && !a.is_normal()) {
                return None;
            }
            if a != 0.0 {
                lo = lo.min(a as f64);
                hi = hi.max(a as f64);
            }
        }
        Some((lo, hi))
    };
    if sqrt_s.iter().any(|s| s.is_sign_negative()) {
        return false;
    }
    match (range(weight), range(sqrt_s)) {
        (Some((wl, wh)), Some((sl, sh))) => {
            // All zero on one side: every product is +0.
            if wl.is_infinite() || sl.is_infinite() {
                return true;
            }
            wl * sl >= f32::MIN_POSITIVE as f64 && wh * sh <= f32::MAX as f64
        }
        _ => false,
    }
}

impl GpuContext {
    /// GPU twin of `cpu_select::magnitude_mask`: Wanda's selection with every sqrt_s = 1
    /// (|W| x 1 is |W| exactly), the whole layer as one row when unstructured (one threshold
    /// per layer, ties by flat index, as the twin), each row's groups of M for N:M.
    pub async fn magnitude_mask(
        &self,
        what: &str,
        weight: &[f32],
        rows: usize,
        cols: usize,
        pattern: Pattern,
    ) -> Result<Mask> {
        check_shape(what, weight, rows, cols)?;
        pattern.check(what, cols)?;
        match pattern {
            Pattern::NM { .. } => {
                let ones = vec![1.0f32; cols];
                self.wanda_mask(what, weight, rows, cols, &ones, pattern)
                    .await
            }
            Pattern::Unstructured { .. } => {
                let n = weight.len();
                let ones = vec![1.0f32; n];
                let m = self.wanda_mask(what, weight, 1, n, &ones, pattern).await?;
                Ok(Mask {
                    rows,
                    cols,
                    pruned: m.pruned,
                })
            }
        }
    }

    /// GPU twin of `cpu_select::wanda_mask`: the same checks, errors and mask.
    pub async fn wanda_mask(
        &self,
        what: &str,
        weight: &[f32],
        rows: usize,
        cols: usize,
        scaler_row: &[f32],
        pattern: Pattern,
    ) -> Result<Mask> {
        check_shape(what, weight, rows, cols)?;
        pattern.check(what, cols)?;
        let sqrt_s = sqrt_scaler(what, scaler_row, cols)?;
        let total = rows * cols;
        if total > u32::MAX as usize || !gpu_exact(weight, &sqrt_s) {
            return super::cpu_select::wanda_mask(what, weight, rows, cols, scaler_row, pattern);
        }
        if total == 0 {
            return Ok(Mask::empty(rows, cols));
        }
        if total > self.max_binding_elements() {
            return Err(LabError::invalid(format!(
                "{what}: [{rows}, {cols}] exceeds this GPU's storage binding limit"
            )));
        }
        let (k, n, m, entry, items) = match pattern {
            Pattern::Unstructured { sparsity } => {
                let k = prune_count(cols, sparsity);
                (k, 0, 1, "wanda_unstructured", rows)
            }
            Pattern::NM { n, m } => (0, n, m, "wanda_n_m", total / m),
        };
        if pattern == (Pattern::NM { n: 0, m }) || (entry == "wanda_unstructured" && k == 0) {
            return Ok(Mask::empty(rows, cols));
        }
        let per = if entry == "wanda_unstructured" {
            1
        } else {
            256
        };
        let groups = items.div_ceil(per);
        let gx = groups.min(65535);
        let gy = groups.div_ceil(gx);
        if gy > 65535 {
            return Err(LabError::invalid(format!(
                "{what}: [{rows}, {cols}] is too large for one selection dispatch"
            )));
        }
        let params = SelectParams {
            rows: rows as u32,
            cols: cols as u32,
            k: k as u32,
            n: n as u32,
            m: m as u32,
            _pad: [0; 3],
        };
        self.check()?;
        let w = self.upload_values(weight, &[rows, cols], DType::F32)?;
        let s = self.upload_values(&sqrt_s, &[cols], DType::F32)?;
        let words = total.div_ceil(32);
        let mut rec = Recorder::new(self)?;
        // The flags start at zero: the kernel only sets bits.
        let flags = rec.zeros(&[words], DType::U32)?;
        rec.dispatch(
            &SELECT,
            entry,
            &[&w, &s, &flags],
            &params,
            [gx as u32, gy as u32, 1],
        )?;
        let packed = rec.read_u32(&flags).await?;
        let mut mask = Mask::empty(rows, cols);
        for (i, p) in mask.pruned.iter_mut().enumerate() {
            *p = packed[i / 32] >> (i % 32) & 1 == 1;
        }
        Ok(mask)
    }
}
