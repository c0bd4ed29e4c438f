//! CPU twins of the forward-pass kernels (`forward`): the same maths on plain slices, the
//! reference the parity tests hold the WGSL against. Only that: nothing in the lab runs
//! them. A forward pass without a GPU (or after the GPU failed) is candle's
//! (`model::llama`, with `attention` and `sparse`), written for speed rather than to copy a
//! kernel's order of reduction. Shapes as in `forward`: row-major
//! `Matrix`es, q/k/v/attention token-major (N, heads D) = (B, T, heads, D).
//!
//! Where a kernel's order of reduction is cheap to copy, the twin copies it (the matmul's
//! k = 0..K sum, RMSNorm's 256 strided partials and tree fold), so the two differ only by
//! fused multiply-adds and by WGSL's looser `exp`, `sqrt` and division.
//!
//! The slice-based twins (`rope`, `causal_attention`, ...) trust their shapes, as the
//! kernels' wrappers check them: a slice shorter than its shape says panics.

use super::forward::{AttentionShape, HeadLayout};
use super::Matrix;
use crate::{LabError, Result};

/// Twin of `matmul.wgsl::linear`: y (N, O) = x (N, K) W (O, K)^T (+ b), each output one f32
/// sum over k in order, then the bias.
pub fn linear(x: Matrix, w: Matrix, bias: Option<&[f32]>) -> Result<Vec<f32>> {
    if x.cols != w.cols || bias.is_some_and(|b| b.len() != w.rows) {
        return Err(LabError::invalid(format!(
            "linear: x is [{}, {}], W [{}, {}] and the bias has {:?} values; x and W need \
             the same columns, the bias one value per row of W",
            x.rows,
            x.cols,
            w.rows,
            w.cols,
            bias.map(<[f32]>::len)
        )));
    }
    let (k, o) = (x.cols, w.rows);
    let mut y = vec![0f32; x.rows * o];
    let row = |(xr, yr): (&[f32], &mut [f32])| {
        // Four outputs at a time: four independent sums, each still in k order.
        let mut j = 0;
        while j + 4 <= o {
            let ws: [&[f32]; 4] = std::array::from_fn(|l| &w.data[(j + l) * k..(j + l + 1) * k]);
            let mut acc = [0f32; 4];
            for (i, &xv) in xr.iter().enumerate() {
                for l in 0..4 {
                    acc[l] += xv * ws[l][i];
                }
            }
            yr[j..j + 4].copy_from_slice(&acc);
            j += 4;
        }
        for (jj, out) in yr.iter_mut().enumerate().skip(j) {
            let wr = &w.data[jj * k..(jj + 1) * k];
            let mut acc = 0f32;
            for (a, b) in xr.iter().zip(wr) {
                acc += a * b;
            }
            *out = acc;
        }
        if let Some(b) = bias {
            for (out, b) in yr.iter_mut().zip(b) {
                *out += b;
            }
        }
    };
    if o == 0 || k == 0 {
        // No products: the bias alone (or nothing).
        if let Some(b) = bias.filter(|_| o > 0) {
            y.chunks_exact_mut(o)
                .for_each(|r| r.copy_from_slice(&b[..o]));
        }
        return Ok(y);
    }
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    {
        use rayon::prelude::*;
        x.data.par_chunks(k).zip(y.par_chunks_mut(o)).for_each(row);
    }
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    x.data.chunks(k).zip(y.chunks_mut(o)).for_each(row);
    Ok(y)
}

/// A workgroup's 256 partials folded as the kernels fold them: offsets 128, 64, ..., 1, each
/// `partial[i] = op(partial[i], partial[i + half])`; the result is `partial[0]`.
fn tree_fold(partial: &mut [f32; 256], op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut half = partial.len() / 2;
    while half > 0 {
        for i in 0..half {
            partial[i] = op(partial[i], partial[i + half]);
        }
        half /= 2;
    }
    partial[0]
}

/// Twin of `norm.wgsl::rms_norm`: per row, 256 partial sums of x^2 (partial i takes
/// columns i, i + 256, ...), folded as a tree; y = (x r) w with r = 1 / sqrt(sum / C + eps).
pub fn rms_norm(x: Matrix, w: &[f32], eps: f32) -> Vec<f32> {
    const WG: usize = 256;
    let inv_c = 1.0 / x.cols as f32;
    let mut y = Vec::with_capacity(x.data.len());
    for row in x.data.chunks_exact(x.cols.max(1)) {
        let mut partial = [0f32; WG];
        for (j, &v) in row.iter().enumerate() {
            partial[j % WG] += v * v;
        }
        let r = 1.0 / (tree_fold(&mut partial, |a, b| a + b) * inv_c + eps).sqrt();
        y.extend(row.iter().zip(w).map(|(&v, &g)| (v * r) * g));
    }
    y
}

/// Twin of `nll.wgsl::token_nll`: per row of logits (rows, C), the maxima of the 256
/// strided columns folded as a tree, then the sums of exp(x - max) likewise; nll =
/// (max + ln(sum)) - x[target]. Targets are token ids, one per row; None if one is outside
/// the row.
pub fn token_nll(logits: Matrix, targets: &[u32]) -> Option<Vec<f32>> {
    const WG: usize = 256;
    if targets.len() != logits.rows || logits.cols == 0 {
        return None;
    }
    let mut nll = Vec::with_capacity(logits.rows);
    for (row, &t) in logits.data.chunks_exact(logits.cols).zip(targets) {
        let picked = *row.get(t as usize)?;
        let mut partial = [-3.402823e38f32; WG];
        for (j, &v) in row.iter().enumerate() {
            partial[j % WG] = partial[j % WG].max(v);
        }
        let m = tree_fold(&mut partial, f32::max);
        let mut partial = [0f32; WG];
        for (j, &v) in row.iter().enumerate() {
            partial[j % WG] += (v - m).exp();
        }
        nll.push((m + tree_fold(&mut partial, |a, b| a + b).ln()) - picked);
    }
    Some(nll)
}

/// Twin of `rope.wgsl::rope`: half-split rotation in place; cos, sin (T, D).
pub fn rope(x: &mut [f32], l: HeadLayout, cos: &[f32], sin: &[f32]) {
    let half = l.d / 2;
    for b in 0..l.batch {
        for h in 0..l.heads {
            for t in 0..l.t {
                let at = l.at(b, h, t);
                let row = t * l.d;
                for i in 0..half {
                    let (x1, x2) = (x[at + i], x[at + i + half]);
                    x[at + i] = x1 * cos[row + i] + (-x2) * sin[row + i];
                    x[at + i + half] = x2 * cos[row + i + half] + x1 * sin[row + i + half];
                }
            }
        }
    }
}

/// Twin of `attention.wgsl::causal_attention`, written as the textbook (and candle) does it:
/// s_j = (q . k_j) / sqrt(D) for j <= t, p = exp(s - max s) / sum exp(s - max s), a = sum_j
/// p_j v_j; query head h reads key/value head h / (H / KV). q (N, H D), k, v (N, KV D).
pub fn causal_attention(q: &[f32], k: &[f32], v: &[f32], s: AttentionShape) -> Vec<f32> {
    let (t_len, d) = (s.t, s.d);
    let group = s.heads / s.kv_heads;
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    let mut a = vec![0f32; s.batch * t_len * s.heads * d];
    let mut p = vec![0f32; t_len];
    for b in 0..s.batch {
        for h in 0..s.heads {
            let kvh = h / group;
            let kv_at = |j: usize| ((b * t_len + j) * s.kv_heads + kvh) * d;
            for t in 0..t_len {
                let q_at = ((b * t_len + t) * s.heads + h) * d;
                let qr = &q[q_at..q_at + d];
                for (j, pj) in p.iter_mut().enumerate().take(t + 1) {
                    let kr = &k[kv_at(j)..kv_at(j) + d];
                    let mut dot = 0f32;
                    for (x, y) in qr.iter().zip(kr) {
                        dot += x * y;
                    }
                    *pj = dot * scale;
                }
                let m = p[..=t].iter().fold(f32::MIN, |m, &x| m.max(x));
                let mut sum = 0f32;
                for pj in &mut p[..=t] {
                    *pj = (*pj - m).exp();
                    sum += *pj;
                }
                let out = &mut a[q_at..q_at + d];
                for (j, &pj) in p[..=t].iter().enumerate() {
                    let pj = pj / sum;
                    let vr = &v[kv_at(j)..kv_at(j) + d];
                    for (o, &vv) in out.iter_mut().zip(vr) {
                        *o += pj * vv;
                    }
                }
            }
        }
    }
    a
}

/// Twin of `elementwise.wgsl::swiglu`: silu(g) u = g / (1 + exp(-g)) u.
pub fn swiglu(g: &[f32], u: &[f32]) -> Vec<f32> {
    g.iter()
        .zip(u)
        .map(|(&g, &u)| (g / ((-g).exp() + 1.0)) * u)
        .collect()
}

/// Twin of `elementwise.wgsl::residual_add`.
pub fn residual_add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// Twin of `buffer_ops.wgsl::fill`: x[i] = value.
pub fn fill(x: &mut [f32], value: f32) {
    x.fill(value);
}

/// Twin of `buffer_ops.wgsl::copy_rows`: for r < rows, c < cols,
/// dst[dst_start + r dst_stride + c] = src[src_start + r src_stride + c].
#[allow(clippy::too_many_arguments)]
pub fn copy_rows(
    src: &[f32],
    src_start: usize,
    src_stride: usize,
    dst: &mut [f32],
    dst_start: usize,
    dst_stride: usize,
    rows: usize,
    cols: usize,
) {
    for r in 0..rows {
        let s = src_start + r * src_stride;
        let d = dst_start + r * dst_stride;
        dst[d..d + cols].copy_from_slice(&src[s..s + cols]);
    }
}

/// Twin of `buffer_ops.wgsl::accumulate`: acc[i] += scale b[i], one f32 product and one f32
/// add (the kernel may fuse them into one rounding).
pub fn accumulate(acc: &mut [f32], b: &[f32], scale: f32) {
    for (a, &v) in acc.iter_mut().zip(b) {
        *a += scale * v;
    }
}
