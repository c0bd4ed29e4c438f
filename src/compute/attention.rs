//! The CPU forward pass's attention for the LLaMA family: RoPE, causal grouped-query
//! attention and the heads' concatenation in one pass over the projections' own layout.
//!
//! ```text
//! q (N, H D), k, v (N, KV D)      N = B T rows, as the linears give them (token-major)
//! q, k <- RoPE(q, k)               x cos + rotate_half(x) sin, per head, position t of its window
//! for each window b, head h (kv head h / (H / KV)), position t:
//!     p_j = (q_t . k_j) / sqrt(D)           j <= t only: nothing above the diagonal is formed
//!     a_t = sum_j softmax(p)_j v_j          max subtracted first
//! a (N, H D)                        heads side by side, as Wo expects
//! ```
//!
//! The tensor version (candle ops: transposes to (B,H,T,D), RoPE as narrow/cat/mul, the
//! kv heads repeated, a full (B,H,T,T) score tensor, an additive -inf mask, a softmax of four
//! passes) wrote and reread every intermediate and computed the half of the scores the mask
//! throws away: half of a SmolLM2 block's time went there. This is one pass per (window,
//! head), in parallel natively and in the threaded wasm (rayon), one after the other in the
//! single-threaded wasm.
//!
//! Sums: a dot product is 8 interleaved partial sums (lane i % 8) added pairwise at the end,
//! multiplies and adds (no fused multiply-add), so every target, the CLI and the page, gets
//! the same bits. The result differs from the tensor version only by that order
//! (`tests/attention.rs`: the candle implementation, on awkward sizes).

use std::borrow::Cow;

use super::forward::AttentionShape;
use crate::{LabError, Result};

/// `a` (B T, H D) from the projections q (B T, H D), k and v (B T, KV D); `cos`, `sin` are
/// the RoPE tables (T, D) (`model::llama::Rope`), None for no rotary embedding.
pub fn causal_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    rope: Option<(&[f32], &[f32])>,
    s: AttentionShape,
) -> Result<Vec<f32>> {
    s.check()?;
    let (t_len, d, nh, nkv) = (s.t, s.d, s.heads, s.kv_heads);
    let n = s.batch * t_len;
    let sizes_ok = q.len() == n * nh * d
        && k.len() == n * nkv * d
        && v.len() == n * nkv * d
        && rope.is_none_or(|(c, si)| c.len() == t_len * d && si.len() == t_len * d)
        && (rope.is_none() || d % 2 == 0);
    if !sizes_ok {
        return Err(LabError::invalid(format!(
            "attention: q, k, v of {}, {}, {} values (and RoPE tables) do not fit {s:?}",
            q.len(),
            k.len(),
            v.len()
        )));
    }
    let (q, k): (Cow<[f32]>, Cow<[f32]>) = match rope {
        Some((cos, sin)) => (
            rotate(q, nh, d, t_len, cos, sin).into(),
            rotate(k, nkv, d, t_len, cos, sin).into(),
        ),
        None => (q.into(), k.into()),
    };
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    let group = nh / nkv;
    // One (T, D) output per (window, head), then scattered into the heads-side-by-side rows.
    let head = |bh: usize| -> Vec<f32> {
        let (b, h) = (bh / nh, bh % nh);
        let kvh = h / group;
        // This head's rows, contiguous (T, D): the inner loops then run over plain slices.
        let gather = |x: &[f32], width: usize, head: usize| -> Vec<f32> {
            (0..t_len)
                .flat_map(|j| {
                    let at = ((b * t_len + j) * width + head) * d;
                    x[at..at + d].iter().copied()
                })
                .collect()
        };
        let (qh, kh, vh) = (gather(&q, nh, h), gather(&k, nkv, kvh), gather(v, nkv, kvh));
        let mut out = vec![0f32; t_len * d];
        head_kernel(&qh, &kh, &vh, d, scale, &mut out);
        out
    };
    let heads = s.batch * nh;
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    let per_head: Vec<Vec<f32>> = {
        use rayon::prelude::*;
        (0..heads).into_par_iter().map(head).collect()
    };
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    let per_head: Vec<Vec<f32>> = (0..heads).map(head).collect();
    let mut a = vec![0f32; n * nh * d];
    for (bh, out) in per_head.iter().enumerate() {
        let (b, h) = (bh / nh, bh % nh);
        for (t, o) in out.chunks_exact(d).enumerate() {
            let at = ((b * t_len + t) * nh + h) * d;
            a[at..at + d].copy_from_slice(o);
        }
    }
    Ok(a)
}

/// One head: `out` (T, D) = causal softmax(q k^T scale) v for q, k, v (T, D) contiguous.
fn head_kernel(q: &[f32], k: &[f32], v: &[f32], d: usize, scale: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above), the copy's only requirement.
        unsafe { head_avx2(q, k, v, d, scale, out) };
        return;
    }
    head_body(q, k, v, d, scale, out, dot);
}

/// `head_body` with `dot_avx2`: the same operations in the same order (8-lane sums, no
/// fused multiply-add), so the same bits, in 8-wide registers.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn head_avx2(q: &[f32], k: &[f32], v: &[f32], d: usize, scale: f32, out: &mut [f32]) {
    // SAFETY: this function runs only where the CPU has AVX2.
    head_body(q, k, v, d, scale, out, |a, b| unsafe { dot_avx2(a, b) });
}

#[inline(always)]
fn head_body(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: usize,
    scale: f32,
    out: &mut [f32],
    dot: impl Fn(&[f32], &[f32]) -> f32,
) {
    let t_len = out.len() / d;
    let mut p = vec![0f32; t_len];
    for (t, (qr, o)) in q.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
        let p = &mut p[..=t];
        let mut m = f32::NEG_INFINITY;
        for (pj, kr) in p.iter_mut().zip(k.chunks_exact(d)) {
            *pj = dot(qr, kr) * scale;
            m = m.max(*pj);
        }
        let mut sum = 0f32;
        for pj in p.iter_mut() {
            *pj = (*pj - m).exp();
            sum += *pj;
        }
        for (&pj, vr) in p.iter().zip(v.chunks_exact(d)) {
            let w = pj / sum;
            for (o, &x) in o.iter_mut().zip(vr) {
                *o += w * x;
            }
        }
    }
}

/// `dot` in AVX registers: lane l of the accumulator is `dot`'s partial sum l, and the fold
/// adds the same pairs in the same order.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::{
        _mm256_add_ps, _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_loadu_ps,
        _mm256_mul_ps, _mm256_setzero_ps, _mm256_storeu_ps, _mm_add_ps, _mm_cvtss_f32, _mm_hadd_ps,
    };
    let n = a.len().min(b.len());
    let whole = n - n % 8;
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i < whole {
        // SAFETY: i + 8 <= whole <= both lengths.
        let (x, y) = unsafe {
            (
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
            )
        };
        acc = _mm256_add_ps(acc, _mm256_mul_ps(x, y));
        i += 8;
    }
    if whole < n {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        for (l, (x, y)) in a[whole..n].iter().zip(&b[whole..n]).enumerate() {
            lanes[l] += x * y;
        }
        // SAFETY: as above.
        acc = unsafe { _mm256_loadu_ps(lanes.as_ptr()) };
    }
    // (a0 + a4, a1 + a5, a2 + a6, a3 + a7), then ((s0 + s1) + (s2 + s3)).
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
    let h = _mm_hadd_ps(s, s);
    _mm_cvtss_f32(_mm_hadd_ps(h, h))
}

/// RoPE on x (B T, heads D): x cos + rotate_half(x) sin, rotate_half(x) = [-x2, x1] for the
/// halves of each head, at each row's position in its window.
fn rotate(x: &[f32], heads: usize, d: usize, t_len: usize, cos: &[f32], sin: &[f32]) -> Vec<f32> {
    let half = d / 2;
    let mut out = vec![0f32; x.len()];
    for (r, (xr, or)) in x
        .chunks_exact(heads * d)
        .zip(out.chunks_exact_mut(heads * d))
        .enumerate()
    {
        let t = r % t_len;
        let (c, s) = (&cos[t * d..][..d], &sin[t * d..][..d]);
        for (xh, oh) in xr.chunks_exact(d).zip(or.chunks_exact_mut(d)) {
            for j in 0..d {
                let rot = if j < half {
                    -xh[j + half]
                } else {
                    xh[j - half]
                };
                oh[j] = xh[j] * c[j] + rot * s[j];
            }
        }
    }
    out
}

/// sum_i a_i b_i as 8 interleaved partial sums (lane i % 8; the tail in lanes 0..), folded
/// pairwise: vectorisable, and the same bits on every target.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        let (x, y): (&[f32; 8], &[f32; 8]) = match (x.try_into(), y.try_into()) {
            (Ok(x), Ok(y)) => (x, y),
            _ => unreachable!("chunks_exact(8) gives 8 values"),
        };
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_position_returns_its_value_and_two_mix_by_softmax() {
        // T = 1: softmax of one score is 1, so a = v.
        let s = AttentionShape {
            batch: 1,
            t: 1,
            heads: 2,
            kv_heads: 1,
            d: 2,
        };
        let a = causal_attention(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0], &[7.0, 8.0], None, s).unwrap();
        assert_eq!(a, vec![7.0, 8.0, 7.0, 8.0]);
        // T = 2, one head, D = 1: position 1 weighs v0, v1 by softmax(q1 k0, q1 k1).
        let s = AttentionShape {
            batch: 1,
            t: 2,
            heads: 1,
            kv_heads: 1,
            d: 1,
        };
        let a = causal_attention(&[0.5, 1.0], &[1.0, 3.0], &[10.0, 20.0], None, s).unwrap();
        let (e0, e1) = (1f64.exp(), 3f64.exp());
        let want = (10.0 * e0 + 20.0 * e1) / (e0 + e1);
        assert_eq!(a[0], 10.0);
        assert!((a[1] as f64 - want).abs() < 1e-5, "{} vs {want}", a[1]);
    }

    #[test]
    fn the_avx2_dot_gives_the_portable_bits() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            for n in [0, 1, 7, 8, 9, 63, 64, 65, 130] {
                let a: Vec<f32> = (0..n)
                    .map(|i| ((i * 37 % 17) as f32 - 8.3) * 0.37)
                    .collect();
                let b: Vec<f32> = (0..n).map(|i| ((i * 11 % 13) as f32 - 6.1) * 1.9).collect();
                // SAFETY: AVX2 was seen above.
                let fast = unsafe { dot_avx2(&a, &b) };
                assert_eq!(fast.to_bits(), dot(&a, &b).to_bits(), "n = {n}");
                let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
                assert!(
                    (fast as f64 - exact).abs() <= 1e-5 * (1.0 + exact.abs()),
                    "n = {n}"
                );
            }
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        let s = AttentionShape {
            batch: 1,
            t: 2,
            heads: 2,
            kv_heads: 1,
            d: 2,
        };
        assert!(causal_attention(&[0.0; 7], &[0.0; 4], &[0.0; 4], None, s).is_err());
        let c = [1.0; 3];
        assert!(causal_attention(&[0.0; 8], &[0.0; 4], &[0.0; 4], Some((&c, &c)), s).is_err());
    }
}
