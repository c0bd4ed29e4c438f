//! The training kernels on the CPU: paired `*_forward` / `*_backward` functions in llm.c's
//! style, one per op, each a plain loop that maps to one WGSL kernel later.
//!
//! Shape legend (fixed once, every comment below speaks in it):
//! - B = batch, T = sequence length (ctx), N = B*T rows, C = channels (width),
//! - H = query heads, KV = key/value heads (H % KV == 0, GQA: query head h reads kv head
//!   h / (H/KV)), D = head dim = C/H, F = FFN width, V = vocabulary.
//!
//! Conventions:
//! - Every tensor is a row-major slice; a linear's weight is (out, in), as Hugging Face's.
//! - A backward *adds* into its input and weight gradients (`+=`), as llm.c's, so a tensor
//!   used twice (a residual stream, a tied embedding) collects both contributions; callers
//!   zero the gradients once per step.
//! - Determinism whatever the thread count: every output element is written by exactly one
//!   task, as one sequential loop in a fixed order; rayon only decides which task runs where.
//!   Reductions across rows (weight gradients, sums of squares) are either column-parallel
//!   with a sequential row loop, or split into fixed-size chunks summed in chunk order. No
//!   float atomics anywhere, so the same bits come out with 1, 2 or 16 threads.
//! - Transcendentals come from `libm` (pure Rust): the same bits on every target, where the
//!   platform's libm (glibc natively, Rust's port in wasm) may differ in the last bit.
//!
//! Generic over f32 (the lab) and f64 (the finite-difference checks in the tests).

use rayon::prelude::*;
use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// The float the kernels run in: f32 for training, f64 for gradient checks.
pub trait Real:
    Copy
    + Send
    + Sync
    + Debug
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    fn of(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn of(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn exp(self) -> Self {
        libm::expf(self)
    }
    fn sqrt(self) -> Self {
        libm::sqrtf(self)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn of(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        libm::exp(self)
    }
    fn sqrt(self) -> Self {
        libm::sqrt(self)
    }
}

/// sum_i a_i * b_i with 8 running partial sums (a fixed order the compiler can vectorise),
/// added pairwise at the end.
#[inline]
pub(crate) fn dot<F: Real>(a: &[F], b: &[F]) -> F {
    let mut acc = [F::ZERO; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut tail = F::ZERO;
    for (x, y) in ar.iter().zip(br) {
        tail += *x * *y;
    }
    combine8(&acc, tail)
}

/// The sum of `x` in `dot`'s order: eight interleaved partial sums, added as `dot` adds them.
pub(crate) fn sum8<F: Real>(x: &[F]) -> F {
    let mut acc = [F::ZERO; 8];
    let chunks = x.chunks_exact(8);
    let mut tail = F::ZERO;
    chunks.remainder().iter().for_each(|&v| tail += v);
    for c in chunks {
        for j in 0..8 {
            acc[j] += c[j];
        }
    }
    combine8(&acc, tail)
}

/// `dot`'s closing order for its eight partial sums and the tail.
#[inline]
fn combine8<F: Real>(acc: &[F; 8], tail: F) -> F {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// y += a * x, elementwise.
#[inline]
fn axpy<F: Real>(y: &mut [F], a: F, x: &[F]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * *xi;
    }
}

// ---------------------------------------------------------------------------------------
// Embedding

/// out (N,C) = wte (V,C) [tokens (N)]. Token ids are checked against V by the caller.
pub fn embedding_forward<F: Real>(out: &mut [F], tokens: &[u32], wte: &[F], c: usize) {
    out.par_chunks_mut(c)
        .zip(tokens.par_iter())
        .for_each(|(row, &tok)| {
            let t = tok as usize;
            row.copy_from_slice(&wte[t * c..(t + 1) * c]);
        });
}

/// dwte (V,C) += scatter of dout (N,C) by tokens. Deterministic without atomics: the
/// positions are grouped by token (a counting sort, in position order), then each vocabulary
/// row sums its positions' gradients in that order, one task per row.
pub fn embedding_backward<F: Real>(dwte: &mut [F], dout: &[F], tokens: &[u32], c: usize) {
    let v = dwte.len() / c;
    let mut start = vec![0usize; v + 1];
    for &t in tokens {
        start[t as usize + 1] += 1;
    }
    for i in 0..v {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut positions = vec![0usize; tokens.len()];
    for (n, &t) in tokens.iter().enumerate() {
        positions[fill[t as usize]] = n;
        fill[t as usize] += 1;
    }
    dwte.par_chunks_mut(c).enumerate().for_each(|(tok, row)| {
        for &n in &positions[start[tok]..start[tok + 1]] {
            for (r, d) in row.iter_mut().zip(&dout[n * c..(n + 1) * c]) {
                *r += *d;
            }
        }
    });
}

// ---------------------------------------------------------------------------------------
// RMSNorm: out = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps)  (HF LlamaRMSNorm)

pub const RMS_EPS: f64 = 1e-6;

/// out (N,C), rstd (N) cached for the backward, from inp (N,C) and weight (C).
pub fn rmsnorm_forward<F: Real>(out: &mut [F], rstd: &mut [F], inp: &[F], weight: &[F]) {
    let c = weight.len();
    let eps = F::of(RMS_EPS);
    out.par_chunks_mut(c)
        .zip(rstd.par_iter_mut())
        .zip(inp.par_chunks(c))
        .for_each(|((o, r), x)| {
            let ms = dot(x, x) / F::of(c as f64);
            let s = F::ONE / (ms + eps).sqrt();
            *r = s;
            for ((oi, xi), wi) in o.iter_mut().zip(x).zip(weight) {
                *oi = *xi * s * *wi;
            }
        });
}

/// With g = dout * w: dinp += rstd * (g - x * rstd^2 * mean(g * x));
/// dweight += sum over rows of dout * x * rstd (column-parallel, rows in order).
pub fn rmsnorm_backward<F: Real>(
    dinp: &mut [F],
    dweight: &mut [F],
    dout: &[F],
    inp: &[F],
    weight: &[F],
    rstd: &[F],
) {
    let c = weight.len();
    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c))
        .zip(inp.par_chunks(c))
        .zip(rstd.par_iter())
        .for_each(|(((dx, dy), x), &s)| {
            let mut gx = F::ZERO;
            for ((d, xi), w) in dy.iter().zip(x).zip(weight) {
                gx += *d * *w * *xi;
            }
            let k = gx / F::of(c as f64) * s * s;
            for (((dxi, d), xi), w) in dx.iter_mut().zip(dy).zip(x).zip(weight) {
                *dxi += s * (*d * *w - *xi * k);
            }
        });
    let n = rstd.len();
    dweight.par_iter_mut().enumerate().for_each(|(j, dw)| {
        let mut acc = F::ZERO;
        for r in 0..n {
            acc += dout[r * c + j] * inp[r * c + j] * rstd[r];
        }
        *dw += acc;
    });
}

// ---------------------------------------------------------------------------------------
// Linear (matmul): out = inp W^T, weight (O,I) as Hugging Face stores it

/// out (N,O) = inp (N,I) . weight (O,I)^T. One task per 4 rows of out; within it, 2 x 2
/// register tiles (rows n, n+1 against weight rows o, o+1), each output still summed in
/// exactly `dot`'s order, so the tiling changes the speed, not the bits.
pub fn matmul_forward<F: Real>(out: &mut [F], inp: &[F], weight: &[F], in_dim: usize) {
    let o_dim = weight.len() / in_dim;
    out.par_chunks_mut(4 * o_dim)
        .zip(inp.par_chunks(4 * in_dim))
        .for_each(|(y, x)| {
            let rows = x.len() / in_dim;
            let mut n = 0;
            while n + 2 <= rows {
                let (x0, x1) = (
                    &x[n * in_dim..(n + 1) * in_dim],
                    &x[(n + 1) * in_dim..(n + 2) * in_dim],
                );
                let mut o = 0;
                while o + 2 <= o_dim {
                    let (w0, w1) = (
                        &weight[o * in_dim..(o + 1) * in_dim],
                        &weight[(o + 1) * in_dim..(o + 2) * in_dim],
                    );
                    let [a, b, c, d] = dot_2x2(x0, x1, w0, w1);
                    y[n * o_dim + o] = a;
                    y[n * o_dim + o + 1] = b;
                    y[(n + 1) * o_dim + o] = c;
                    y[(n + 1) * o_dim + o + 1] = d;
                    o += 2;
                }
                if o < o_dim {
                    let w0 = &weight[o * in_dim..(o + 1) * in_dim];
                    y[n * o_dim + o] = dot(x0, w0);
                    y[(n + 1) * o_dim + o] = dot(x1, w0);
                }
                n += 2;
            }
            if n < rows {
                let x0 = &x[n * in_dim..(n + 1) * in_dim];
                for (o, yo) in y[n * o_dim..(n + 1) * o_dim].iter_mut().enumerate() {
                    *yo = dot(x0, &weight[o * in_dim..(o + 1) * in_dim]);
                }
            }
        });
}

/// `dot` of (x0, w0), (x0, w1), (x1, w0), (x1, w1) at once: four sets of 8 partial sums,
/// each accumulated and combined in `dot`'s order (the same bits as four `dot` calls), with
/// each loaded chunk used twice.
#[inline]
fn dot_2x2<F: Real>(x0: &[F], x1: &[F], w0: &[F], w1: &[F]) -> [F; 4] {
    let mut acc = [[F::ZERO; 8]; 4];
    let k8 = x0.len() / 8 * 8;
    for k in (0..k8).step_by(8) {
        let (a, b) = (&x0[k..k + 8], &x1[k..k + 8]);
        let (u, v) = (&w0[k..k + 8], &w1[k..k + 8]);
        for j in 0..8 {
            acc[0][j] += a[j] * u[j];
            acc[1][j] += a[j] * v[j];
            acc[2][j] += b[j] * u[j];
            acc[3][j] += b[j] * v[j];
        }
    }
    let pairs = [(x0, w0), (x0, w1), (x1, w0), (x1, w1)];
    let mut out = [F::ZERO; 4];
    for (i, (a, (x, w))) in acc.iter().zip(pairs).enumerate() {
        let mut tail = F::ZERO;
        for (p, q) in x[k8..].iter().zip(&w[k8..]) {
            tail += *p * *q;
        }
        out[i] = combine8(a, tail);
    }
    out
}

/// dinp (N,I) += dout (N,O) . weight (O,I);  dweight (O,I) += dout^T . inp.
/// Each output element adds its terms in index order (o for dinp, n for dweight), starting
/// from its current value, as a plain `axpy` loop would; the tiles (4 rows x 8 columns held
/// in registers through the whole reduction) change the speed, not the bits. One task per 4
/// rows of dinp, and per 4 rows of dweight.
pub fn matmul_backward<F: Real>(
    dinp: &mut [F],
    dweight: &mut [F],
    dout: &[F],
    inp: &[F],
    weight: &[F],
    in_dim: usize,
) {
    let o_dim = weight.len() / in_dim;
    // dinp[r][i] += sum_o dout[r][o] * weight[o][i]
    dinp.par_chunks_mut(4 * in_dim)
        .zip(dout.par_chunks(4 * o_dim))
        .for_each(|(dx, dy)| {
            let rows = dx.len() / in_dim;
            outer_accumulate(
                dx,
                rows,
                in_dim,
                o_dim,
                |r, o| dy[r * o_dim + o],
                |o| &weight[o * in_dim..(o + 1) * in_dim],
            );
        });
    // dweight[o][i] += sum_r dout[r][o] * inp[r][i]
    let n = dout.len() / o_dim;
    dweight
        .par_chunks_mut(4 * in_dim)
        .enumerate()
        .for_each(|(task, dw)| {
            let o0 = 4 * task;
            let rows = dw.len() / in_dim;
            outer_accumulate(
                dw,
                rows,
                in_dim,
                n,
                |oo, r| dout[r * o_dim + o0 + oo],
                |r| &inp[r * in_dim..(r + 1) * in_dim],
            );
        });
}

/// acc (rows <= 4, cols) += sum over k in 0..depth, in order, of coef(row, k) * vec(k)[..]:
/// per 8-column strip, the rows' partial values stay in registers through the k loop.
#[inline]
fn outer_accumulate<'a, F: Real>(
    acc: &mut [F],
    rows: usize,
    cols: usize,
    depth: usize,
    coef: impl Fn(usize, usize) -> F,
    vec: impl Fn(usize) -> &'a [F],
) {
    let c8 = cols / 8 * 8;
    if rows == 4 {
        for i0 in (0..c8).step_by(8) {
            let mut t = [[F::ZERO; 8]; 4];
            for (r, tr) in t.iter_mut().enumerate() {
                tr.copy_from_slice(&acc[r * cols + i0..r * cols + i0 + 8]);
            }
            for k in 0..depth {
                let v = &vec(k)[i0..i0 + 8];
                let c = [coef(0, k), coef(1, k), coef(2, k), coef(3, k)];
                for (tr, &cr) in t.iter_mut().zip(&c) {
                    for j in 0..8 {
                        tr[j] += cr * v[j];
                    }
                }
            }
            for (r, tr) in t.iter().enumerate() {
                acc[r * cols + i0..r * cols + i0 + 8].copy_from_slice(tr);
            }
        }
    }
    // The columns past the last full strip, and every column of a short task.
    let from = if rows == 4 { c8 } else { 0 };
    for r in 0..rows {
        let row = &mut acc[r * cols + from..(r + 1) * cols];
        for k in 0..depth {
            axpy(row, coef(r, k), &vec(k)[from..]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// RoPE, Hugging Face LLaMA's half-split form ("neox"): within each head, the pair
// (x[d], x[d + D/2]) is rotated by angle pos * theta^(-2d/D), theta = 10000.

pub const ROPE_THETA: f64 = 10_000.0;

/// cos and sin tables (T, D/2), computed in f64 (libm) and rounded once.
pub fn rope_table<F: Real>(t: usize, head_dim: usize) -> (Vec<F>, Vec<F>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for pos in 0..t {
        for d in 0..half {
            let inv_freq = 1.0 / libm::pow(ROPE_THETA, (2 * d) as f64 / head_dim as f64);
            let a = pos as f64 * inv_freq;
            cos.push(F::of(libm::cos(a)));
            sin.push(F::of(libm::sin(a)));
        }
    }
    (cos, sin)
}

/// out (N, heads*D) = rotate(inp (N, heads*D)) at each row's position n % T:
/// out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin (x1 = x[..D/2], x2 = x[D/2..]).
pub fn rope_forward<F: Real>(
    out: &mut [F],
    inp: &[F],
    cos: &[F],
    sin: &[F],
    t: usize,
    head_dim: usize,
    width: usize,
) {
    rope_apply(out, inp, cos, sin, t, head_dim, width, false);
}

/// dinp += R^T dout: dx1 = d1 cos + d2 sin, dx2 = d2 cos - d1 sin.
pub fn rope_backward<F: Real>(
    dinp: &mut [F],
    dout: &[F],
    cos: &[F],
    sin: &[F],
    t: usize,
    head_dim: usize,
    width: usize,
) {
    rope_apply(dinp, dout, cos, sin, t, head_dim, width, true);
}

#[allow(clippy::too_many_arguments)]
fn rope_apply<F: Real>(
    out: &mut [F],
    inp: &[F],
    cos: &[F],
    sin: &[F],
    t: usize,
    head_dim: usize,
    width: usize,
    backward: bool,
) {
    let half = head_dim / 2;
    out.par_chunks_mut(width)
        .zip(inp.par_chunks(width))
        .enumerate()
        .for_each(|(n, (o, x))| {
            let pos = n % t;
            let (c, s) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
            for (oh, xh) in o.chunks_mut(head_dim).zip(x.chunks(head_dim)) {
                for d in 0..half {
                    let (x1, x2) = (xh[d], xh[d + half]);
                    if backward {
                        oh[d] += x1 * c[d] + x2 * s[d];
                        oh[d + half] += x2 * c[d] - x1 * s[d];
                    } else {
                        oh[d] = x1 * c[d] - x2 * s[d];
                        oh[d + half] = x2 * c[d] + x1 * s[d];
                    }
                }
            }
        });
}

// ---------------------------------------------------------------------------------------
// Causal self-attention with GQA. q (N, H*D), k and v (N, KV*D), all after RoPE;
// att (B,H,T,T) holds the softmax probabilities (row t, columns t2 <= t; the rest 0).

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub b: usize,
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttnDims {
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// att[b,h,t,:] = softmax_{t2<=t}(q[b,t,h] . k[b,t2,h/G] / sqrt(D));
/// out[b,t,h] = sum_t2 att[b,h,t,t2] v[b,t2,h/G]. One task per (b,h) for att, per row for out.
pub fn attention_forward<F: Real>(
    out: &mut [F],
    att: &mut [F],
    q: &[F],
    k: &[F],
    v: &[F],
    dims: AttnDims,
) {
    let AttnDims {
        t,
        heads,
        kv_heads,
        head_dim: d,
        ..
    } = dims;
    let g = dims.group();
    let (qw, kw) = (heads * d, kv_heads * d);
    let scale = F::ONE / F::of(d as f64).sqrt();
    att.par_chunks_mut(t * t).enumerate().for_each(|(bh, a)| {
        let (b, h) = (bh / heads, bh % heads);
        let kh = h / g;
        for ti in 0..t {
            let qrow = &q[(b * t + ti) * qw + h * d..][..d];
            let arow = &mut a[ti * t..(ti + 1) * t];
            let mut max = F::of(f64::NEG_INFINITY);
            for t2 in 0..=ti {
                let s = dot(qrow, &k[(b * t + t2) * kw + kh * d..][..d]) * scale;
                arow[t2] = s;
                if s > max {
                    max = s;
                }
            }
            let mut sum = F::ZERO;
            for a2 in arow[..=ti].iter_mut() {
                *a2 = (*a2 - max).exp();
                sum += *a2;
            }
            let inv = F::ONE / sum;
            for a2 in arow[..=ti].iter_mut() {
                *a2 *= inv;
            }
            for a2 in arow[ti + 1..].iter_mut() {
                *a2 = F::ZERO;
            }
        }
    });
    out.par_chunks_mut(qw).enumerate().for_each(|(n, o)| {
        let (b, ti) = (n / t, n % t);
        o.fill(F::ZERO);
        for h in 0..heads {
            let kh = h / g;
            let arow = &att[((b * heads + h) * t + ti) * t..][..t];
            let oh = &mut o[h * d..(h + 1) * d];
            for (t2, &p) in arow[..=ti].iter().enumerate() {
                axpy(oh, p, &v[(b * t + t2) * kw + kh * d..][..d]);
            }
        }
    });
}

/// Backward of `attention_forward`, with datt a (B,H,T,T) scratch buffer:
/// dp[t,t2] = dout[t] . v[t2]; ds = p * (dp - sum_t2 p*dp) (softmax), scaled by 1/sqrt(D);
/// dq[t] += sum_t2 ds[t,t2] k[t2]; dk[t2] += sum_{h in group} sum_t ds[t,t2] q[t];
/// dv[t2] += sum_{h in group} sum_t p[t,t2] dout[t]. One task per (b,h) for ds, per row for
/// dq, dk and dv (the group's heads and the rows t in a fixed order).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<F: Real>(
    dq: &mut [F],
    dk: &mut [F],
    dv: &mut [F],
    datt: &mut [F],
    dout: &[F],
    att: &[F],
    q: &[F],
    k: &[F],
    v: &[F],
    dims: AttnDims,
) {
    let AttnDims {
        t,
        heads,
        kv_heads,
        head_dim: d,
        ..
    } = dims;
    let g = dims.group();
    let (qw, kw) = (heads * d, kv_heads * d);
    let scale = F::ONE / F::of(d as f64).sqrt();
    datt.par_chunks_mut(t * t).enumerate().for_each(|(bh, ds)| {
        let (b, h) = (bh / heads, bh % heads);
        let kh = h / g;
        for ti in 0..t {
            let dorow = &dout[(b * t + ti) * qw + h * d..][..d];
            let prow = &att[(bh * t + ti) * t..][..t];
            let srow = &mut ds[ti * t..(ti + 1) * t];
            let mut pdp = F::ZERO;
            for t2 in 0..=ti {
                let dp = dot(dorow, &v[(b * t + t2) * kw + kh * d..][..d]);
                srow[t2] = dp;
                pdp += prow[t2] * dp;
            }
            for t2 in 0..=ti {
                srow[t2] = prow[t2] * (srow[t2] - pdp) * scale;
            }
            for s in srow[ti + 1..].iter_mut() {
                *s = F::ZERO;
            }
        }
    });
    let datt = &*datt;
    dq.par_chunks_mut(qw).enumerate().for_each(|(n, dqr)| {
        let (b, ti) = (n / t, n % t);
        for h in 0..heads {
            let kh = h / g;
            let srow = &datt[((b * heads + h) * t + ti) * t..][..t];
            let dqh = &mut dqr[h * d..(h + 1) * d];
            for (t2, &s) in srow[..=ti].iter().enumerate() {
                axpy(dqh, s, &k[(b * t + t2) * kw + kh * d..][..d]);
            }
        }
    });
    dk.par_chunks_mut(kw)
        .zip(dv.par_chunks_mut(kw))
        .enumerate()
        .for_each(|(n, (dkr, dvr))| {
            let (b, t2) = (n / t, n % t);
            for kh in 0..kv_heads {
                let dkh = &mut dkr[kh * d..(kh + 1) * d];
                let dvh = &mut dvr[kh * d..(kh + 1) * d];
                for h in kh * g..(kh + 1) * g {
                    for ti in t2..t {
                        let idx = ((b * heads + h) * t + ti) * t + t2;
                        let row = (b * t + ti) * qw + h * d;
                        axpy(dkh, datt[idx], &q[row..row + d]);
                        axpy(dvh, att[idx], &dout[row..row + d]);
                    }
                }
            }
        });
}

// ---------------------------------------------------------------------------------------
// SwiGLU: out = silu(gate) * up, silu(x) = x * sigmoid(x)

fn sigmoid<F: Real>(x: F) -> F {
    F::ONE / (F::ONE + (-x).exp())
}

/// out (N,F) = silu(gate) * up.
pub fn swiglu_forward<F: Real>(out: &mut [F], gate: &[F], up: &[F]) {
    out.par_iter_mut()
        .zip(gate.par_iter().zip(up.par_iter()))
        .for_each(|(o, (&g, &u))| *o = g * sigmoid(g) * u);
}

/// dgate += dout * up * sig(g) * (1 + g (1 - sig(g))); dup += dout * silu(g).
pub fn swiglu_backward<F: Real>(dgate: &mut [F], dup: &mut [F], dout: &[F], gate: &[F], up: &[F]) {
    dgate
        .par_iter_mut()
        .zip(dup.par_iter_mut())
        .zip(dout.par_iter().zip(gate.par_iter().zip(up.par_iter())))
        .for_each(|((dg, du), (&d, (&g, &u)))| {
            let s = sigmoid(g);
            *dg += d * u * s * (F::ONE + g * (F::ONE - s));
            *du += d * g * s;
        });
}

// ---------------------------------------------------------------------------------------
// Residual: out = a + b

pub fn residual_forward<F: Real>(out: &mut [F], a: &[F], b: &[F]) {
    out.par_iter_mut()
        .zip(a.par_iter().zip(b.par_iter()))
        .for_each(|(o, (&x, &y))| *o = x + y);
}

/// da += dout; db += dout.
pub fn residual_backward<F: Real>(da: &mut [F], db: &mut [F], dout: &[F]) {
    da.par_iter_mut()
        .zip(db.par_iter_mut())
        .zip(dout.par_iter())
        .for_each(|((a, b), &d)| {
            *a += d;
            *b += d;
        });
}

/// dst += src, elementwise (a residual backward with one side only).
pub fn add_inplace<F: Real>(dst: &mut [F], src: &[F]) {
    dst.par_iter_mut()
        .zip(src.par_iter())
        .for_each(|(a, &b)| *a += b);
}

// ---------------------------------------------------------------------------------------
// LM head fused with softmax and cross-entropy

/// probs (N,V) = softmax(xf (N,C) . head (V,C)^T) row by row; losses (N) = -log probs[target].
/// Returns the mean over the N predicted tokens (summed in f64, rows in order).
pub fn lm_head_xent_forward<F: Real>(
    probs: &mut [F],
    losses: &mut [F],
    xf: &[F],
    head: &[F],
    targets: &[u32],
    c: usize,
) -> f64 {
    let v = head.len() / c;
    probs
        .par_chunks_mut(v)
        .zip(losses.par_iter_mut())
        .zip(xf.par_chunks(c).zip(targets.par_iter()))
        .for_each(|((p, loss), (x, &tgt))| {
            let mut max = F::of(f64::NEG_INFINITY);
            for (j, pj) in p.iter_mut().enumerate() {
                *pj = dot(x, &head[j * c..(j + 1) * c]);
                if *pj > max {
                    max = *pj;
                }
            }
            // -log p[tgt] = log(sum_j exp(l_j - max)) - (l_tgt - max), exact for tiny p.
            let shifted_target = (p[tgt as usize] - max).to_f64();
            let mut sum = F::ZERO;
            for pj in p.iter_mut() {
                *pj = (*pj - max).exp();
                sum += *pj;
            }
            let inv = F::ONE / sum;
            for pj in p.iter_mut() {
                *pj *= inv;
            }
            *loss = F::of(libm::log(sum.to_f64()) - shifted_target);
        });
    losses.iter().map(|l| l.to_f64()).sum::<f64>() / losses.len() as f64
}

/// With dlogits = (probs - onehot(target)) / N (written over probs):
/// dxf += dlogits . head; dhead += dlogits^T . xf.
pub fn lm_head_xent_backward<F: Real>(
    dxf: &mut [F],
    dhead: &mut [F],
    probs: &mut [F],
    xf: &[F],
    head: &[F],
    targets: &[u32],
    c: usize,
) {
    let v = head.len() / c;
    let inv_n = F::ONE / F::of(targets.len() as f64);
    probs
        .par_chunks_mut(v)
        .zip(targets.par_iter())
        .for_each(|(p, &tgt)| {
            p[tgt as usize] -= F::ONE;
            for pj in p.iter_mut() {
                *pj *= inv_n;
            }
        });
    matmul_backward(dxf, dhead, probs, xf, head, c);
}

// ---------------------------------------------------------------------------------------
// Reductions and the optimizer

/// sum of x^2 in f64: fixed chunks of 4096 summed each in order, then the chunks in order,
/// so the result does not depend on the thread count.
pub fn sum_squares<F: Real>(x: &[F]) -> f64 {
    let parts: Vec<f64> = x
        .par_chunks(4096)
        .map(|ch| ch.iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>())
        .collect();
    parts.iter().sum()
}

/// x *= a.
pub fn scale_inplace<F: Real>(x: &mut [F], a: F) {
    x.par_iter_mut().for_each(|v| *v *= a);
}

/// Adam(W) hyper-parameters, torch.optim.Adam / AdamW's defaults.
#[derive(Clone, Copy, Debug)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled (AdamW) weight decay; 0 = plain Adam, the Mix-LN paper's setting.
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// One AdamW update at step `t` (1-based), as torch.optim.AdamW computes it:
/// p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
/// p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    lr: f64,
    t: u64,
    cfg: &AdamConfig,
) {
    let bc1 = 1.0 - libm::pow(cfg.beta1, t as f64);
    let bc2 = 1.0 - libm::pow(cfg.beta2, t as f64);
    let step_size = (lr / bc1) as f32;
    let bc2_sqrt = libm::sqrt(bc2) as f32;
    let (b1, b2, eps) = (cfg.beta1 as f32, cfg.beta2 as f32, cfg.eps as f32);
    let decay = (1.0 - lr * cfg.weight_decay) as f32;
    params
        .par_iter_mut()
        .zip(grads.par_iter())
        .zip(m.par_iter_mut().zip(v.par_iter_mut()))
        .for_each(|((p, &g), (mi, vi))| {
            if cfg.weight_decay != 0.0 {
                *p *= decay;
            }
            *mi = b1 * *mi + (1.0 - b1) * g;
            *vi = b2 * *vi + (1.0 - b2) * g * g;
            let denom = libm::sqrtf(*vi) / bc2_sqrt + eps;
            *p -= step_size * *mi / denom;
        });
}

/// The learning rate at step `step` (0-based) of `steps`, as the Mix-LN code's scheduler
/// (peft_pretraining training_utils, `get_scheculer(scheduler_type="cosine", min_lr_ratio=0.1)`,
/// a LambdaLR stepped after each optimizer step), with W = floor(warmup * steps):
/// - step < W: peak * step / max(1, W)  (so the very first step has lr 0, as there);
/// - else: peak * (0.1 + 0.9 * 0.5 * (1 + cos(pi * (step - W) / max(1, steps - W)))).
pub fn lr_at(step: usize, steps: usize, warmup: f64, peak: f64) -> f64 {
    const MIN_LR_RATIO: f64 = 0.1;
    let w = (warmup * steps as f64).floor() as usize;
    if step < w {
        return peak * step as f64 / w.max(1) as f64;
    }
    let progress = (step - w) as f64 / (steps.saturating_sub(w)).max(1) as f64;
    let cosine = 0.5 * (1.0 + libm::cos(std::f64::consts::PI * progress));
    peak * (MIN_LR_RATIO + (1.0 - MIN_LR_RATIO) * cosine)
}
