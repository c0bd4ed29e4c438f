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

use super::gemm::{gemm_acc, gemm_set, Lhs, Out, Rhs};
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
        exp_f32(self)
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

/// e^x for f32 from multiplies, adds and bit operations only (Cephes' expf): x = n ln2 + r
/// with n an integer and |r| <= ln2/2, e^r by its degree-7 polynomial, times 2^n. Every
/// operation is IEEE-exact as written, so WebAssembly and every x86-64 give the same bits,
/// and a loop of it vectorises (libm's expf is a branchy scalar call). Within 2 ulp of the
/// true value where the result is a normal float (tests/train_ops.rs checks it against
/// f64). Below about -87.3 the result is subnormal and flushes toward 0 less exactly;
/// above about 88.72 it is infinite; NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts: n * LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer (ties to even).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-103.98, 88.73);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 5e-1;
    let e = (p * (r * r) + r) + 1.0;
    // 2^n as two normal factors (n is in [-150, 128]).
    let n = n as i32;
    let half = n >> 1;
    let pow2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    (e * pow2(half)) * pow2(n - half)
}

/// Runs `f` inside a function compiled for AVX2 where the CPU has it (x86-64, detected once at
/// run time), else as built (baseline SSE2; simd128 in wasm). Pass `f` as
/// `#[inline(always)] || ...`: a closure left out of line compiles without AVX2. The loops `f`
/// inlines (attention's softmax, `sum8`) then work on 8 lanes at a time instead of 4; the
/// matrix products choose their own tile in `gemm`. The bits stay the same: the same operations in the same order, since Rust never fuses a
/// multiply and an add into an FMA on its own, so the page, the CLI and any CPU agree.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// sum_i a_i * b_i with 8 running partial sums (a fixed order the compiler can vectorise),
/// added pairwise at the end.
#[inline(always)]
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
#[inline(always)]
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
#[inline(always)]
fn combine8<F: Real>(acc: &[F; 8], tail: F) -> F {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
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

/// Rows of the output per task in the matmuls: a multiple of every register tile's height.
const ROWS_PER_TASK: usize = 32;

/// out (N,O) = inp (N,I) . weight (O,I)^T: the weight transposed once (I,O), then each output
/// summed over i in order from zero by `gemm::gemm_acc`. One task per 32 rows of out.
pub fn matmul_forward<F: Real>(out: &mut [F], inp: &[F], weight: &[F], in_dim: usize) {
    let o_dim = weight.len() / in_dim;
    let wt = transpose(weight, o_dim, in_dim);
    out.par_chunks_mut(ROWS_PER_TASK * o_dim)
        .zip(inp.par_chunks(ROWS_PER_TASK * in_dim))
        .for_each(|(y, x)| {
            let a = Lhs {
                data: x,
                rs: in_dim,
                cs: 1,
            };
            let b = Rhs {
                data: &wt,
                ld: o_dim,
            };
            gemm_set(Out::rows_of(y, o_dim), a, b, in_dim);
        });
}

/// m (rows, cols) -> its transpose (cols, rows).
pub(crate) fn transpose<F: Real>(m: &[F], rows: usize, cols: usize) -> Vec<F> {
    let mut t = vec![F::ZERO; m.len()];
    for (r, row) in m.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}

/// dinp (N,I) += dout (N,O) . weight (O,I);  dweight (O,I) += dout^T . inp.
/// Each output element adds its terms in index order (o for dinp, n for dweight) onto its
/// current value (`gemm::gemm_acc`). One task per 32 rows of dinp, and of dweight (so
/// that each block of `inp` a task reads serves 4 row tiles while in cache).
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
    dinp.par_chunks_mut(ROWS_PER_TASK * in_dim)
        .zip(dout.par_chunks(ROWS_PER_TASK * o_dim))
        .for_each(|(dx, dy)| {
            let a = Lhs {
                data: dy,
                rs: o_dim,
                cs: 1,
            };
            let b = Rhs {
                data: weight,
                ld: in_dim,
            };
            gemm_acc(Out::rows_of(dx, in_dim), a, b, o_dim);
        });
    // dweight[o][i] += sum_r dout[r][o] * inp[r][i]
    let n = dout.len() / o_dim;
    dweight
        .par_chunks_mut(ROWS_PER_TASK * in_dim)
        .enumerate()
        .for_each(|(task, dw)| {
            let a = Lhs {
                data: &dout[ROWS_PER_TASK * task..],
                rs: 1,
                cs: o_dim,
            };
            let b = Rhs {
                data: inp,
                ld: in_dim,
            };
            gemm_acc(Out::rows_of(dw, in_dim), a, b, n);
        });
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

/// Rows per causal block in attention's products: row block [i0, i0 + ATT_BLOCK) needs keys
/// 0..i0 + ATT_BLOCK only. The skipped terms are exact zeros (probabilities and their
/// gradients above the diagonal), so skipping them keeps every element's bits.
const ATT_BLOCK: usize = 32;

/// The causal row blocks of a T x T score matrix: (first row, rows, keys the rows can see).
fn causal_blocks(t: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..t)
        .step_by(ATT_BLOCK)
        .map(move |i0| (i0, ATT_BLOCK.min(t - i0), t.min(i0 + ATT_BLOCK)))
}

/// The head slice (T, D) of rows b*T.. of x (N, width) at column `col`, transposed to (D, T).
fn head_transposed<F: Real>(
    x: &[F],
    width: usize,
    row0: usize,
    col: usize,
    t: usize,
    d: usize,
) -> Vec<F> {
    let mut out = vec![F::ZERO; d * t];
    for t2 in 0..t {
        for (dd, &v) in x[(row0 + t2) * width + col..][..d].iter().enumerate() {
            out[dd * t + t2] = v;
        }
    }
    out
}

/// rows (T, T) of (b, h) = x_h (T, D) . y_h^T over the causal blocks (the entries right of
/// each row block's last key are left as they are: callers overwrite them): x at (row0, xcol) in an (N, xw) matrix, y likewise.
#[allow(clippy::too_many_arguments)]
fn causal_scores<F: Real>(
    rows: &mut [F],
    x: &[F],
    xw: usize,
    xcol: usize,
    y: &[F],
    yw: usize,
    ycol: usize,
    row0: usize,
    t: usize,
    d: usize,
) {
    let yt = head_transposed(y, yw, row0, ycol, t, d);
    for (i0, r, keys) in causal_blocks(t) {
        let out = Out {
            data: &mut rows[i0 * t..],
            ld: t,
            rows: r,
            cols: keys,
        };
        let lhs = Lhs {
            data: &x[(row0 + i0) * xw + xcol..],
            rs: xw,
            cs: 1,
        };
        gemm_set(out, lhs, Rhs { data: &yt, ld: t }, d);
    }
}

/// Row `ti` of causal attention: scale the scores 0..=ti, softmax them, zero the rest. The
/// exponentials in one loop (it vectorises), their sum in index order in another.
#[inline(always)]
fn softmax_causal_row<F: Real>(row: &mut [F], ti: usize, scale: F) {
    let mut max = F::of(f64::NEG_INFINITY);
    for s in row[..=ti].iter_mut() {
        *s *= scale;
        if *s > max {
            max = *s;
        }
    }
    for a in row[..=ti].iter_mut() {
        *a = (*a - max).exp();
    }
    let mut sum = F::ZERO;
    for &a in row[..=ti].iter() {
        sum += a;
    }
    let inv = F::ONE / sum;
    for a in row[..=ti].iter_mut() {
        *a *= inv;
    }
    row[ti + 1..].fill(F::ZERO);
}

/// att[b,h,t,:] = softmax_{t2<=t}(q[b,t,h] . k[b,t2,h/G] / sqrt(D));
/// out[b,t,h] = sum_t2 att[b,h,t,t2] v[b,t2,h/G]. Every dot product and every output adds
/// its terms in order (`gemm::gemm_acc`). One task per (b,h) for att, per b for out.
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
        causal_scores(a, q, qw, h * d, k, kw, (h / g) * d, b * t, t, d);
        wide(
            #[inline(always)]
            || {
                for ti in 0..t {
                    softmax_causal_row(&mut a[ti * t..(ti + 1) * t], ti, scale);
                }
            },
        );
    });
    let att = &*att;
    out.par_chunks_mut(t * qw).enumerate().for_each(|(b, o)| {
        for h in 0..heads {
            let base = (b * heads + h) * t * t;
            let vh = Rhs {
                data: &v[b * t * kw + (h / g) * d..],
                ld: kw,
            };
            for (i0, r, keys) in causal_blocks(t) {
                let oh = Out {
                    data: &mut o[i0 * qw + h * d..],
                    ld: qw,
                    rows: r,
                    cols: d,
                };
                let p = Lhs {
                    data: &att[base + i0 * t..],
                    rs: t,
                    cs: 1,
                };
                gemm_set(oh, p, vh, keys);
            }
        }
    });
}

/// Backward of `attention_forward`, with datt a (B,H,T,T) scratch buffer:
/// dp[t,t2] = dout[t] . v[t2]; ds = p * (dp - sum_t2 p*dp) (softmax), scaled by 1/sqrt(D);
/// dq[t] += sum_t2 ds[t,t2] k[t2]; dk[t2] += sum_{h in group} sum_t ds[t,t2] q[t];
/// dv[t2] += sum_{h in group} sum_t p[t,t2] dout[t]. One task per (b,h) for ds, per b for
/// dq, dk and dv (the group's heads, then the rows t, in a fixed order).
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
        causal_scores(ds, dout, qw, h * d, v, kw, (h / g) * d, b * t, t, d);
        for ti in 0..t {
            let prow = &att[(bh * t + ti) * t..][..t];
            let srow = &mut ds[ti * t..(ti + 1) * t];
            let mut pdp = F::ZERO;
            for (&p, &dp) in prow[..=ti].iter().zip(&srow[..=ti]) {
                pdp += p * dp;
            }
            for (s, &p) in srow[..=ti].iter_mut().zip(&prow[..=ti]) {
                *s = p * (*s - pdp) * scale;
            }
            for s in srow[ti + 1..].iter_mut() {
                *s = F::ZERO;
            }
        }
    });
    let datt = &*datt;
    dq.par_chunks_mut(t * qw).enumerate().for_each(|(b, dqb)| {
        for h in 0..heads {
            let base = (b * heads + h) * t * t;
            let kh = Rhs {
                data: &k[b * t * kw + (h / g) * d..],
                ld: kw,
            };
            for (i0, r, keys) in causal_blocks(t) {
                let out = Out {
                    data: &mut dqb[i0 * qw + h * d..],
                    ld: qw,
                    rows: r,
                    cols: d,
                };
                let s = Lhs {
                    data: &datt[base + i0 * t..],
                    rs: t,
                    cs: 1,
                };
                gemm_acc(out, s, kh, keys);
            }
        }
    });
    // Key/value row t2 gathers the query rows t >= t2: rows [i0, i0 + r) start at t = i0
    // (the terms t < i0 are exact zeros for all of them).
    dk.par_chunks_mut(t * kw)
        .zip(dv.par_chunks_mut(t * kw))
        .enumerate()
        .for_each(|(b, (dkb, dvb))| {
            for kh in 0..kv_heads {
                for h in kh * g..(kh + 1) * g {
                    let base = (b * heads + h) * t * t;
                    for (i0, r, _) in causal_blocks(t) {
                        // dk += ds^T . q, dv += p^T . dout, over the query rows t >= i0.
                        for (dst, m, x) in [(&mut *dkb, datt, q), (&mut *dvb, att, dout)] {
                            let out = Out {
                                data: &mut dst[i0 * kw + kh * d..],
                                ld: kw,
                                rows: r,
                                cols: d,
                            };
                            let transposed = Lhs {
                                data: &m[base + i0 * t + i0..],
                                rs: 1,
                                cs: t,
                            };
                            let from_i0 = Rhs {
                                data: &x[(b * t + i0) * qw + h * d..],
                                ld: qw,
                            };
                            gemm_acc(out, transposed, from_i0, t - i0);
                        }
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
    let head_t = transpose(head, v, c);
    probs
        .par_chunks_mut(ROWS_PER_TASK * v)
        .zip(losses.par_chunks_mut(ROWS_PER_TASK))
        .zip(
            xf.par_chunks(ROWS_PER_TASK * c)
                .zip(targets.par_chunks(ROWS_PER_TASK)),
        )
        .for_each(|((pb, lb), (xb, tb))| {
            // The logits, each summed over the channels in order from zero.
            let x = Lhs {
                data: xb,
                rs: c,
                cs: 1,
            };
            let b = Rhs {
                data: &head_t,
                ld: v,
            };
            gemm_set(Out::rows_of(pb, v), x, b, c);
            for ((p, loss), &tgt) in pb.chunks_exact_mut(v).zip(lb.iter_mut()).zip(tb) {
                let mut max = F::of(f64::NEG_INFINITY);
                for &pj in p.iter() {
                    if pj > max {
                        max = pj;
                    }
                }
                // -log p[tgt] = log(sum_j exp(l_j - max)) - (l_tgt - max), exact for tiny p.
                let shifted_target = (p[tgt as usize] - max).to_f64();
                for pj in p.iter_mut() {
                    *pj = (*pj - max).exp();
                }
                let mut sum = F::ZERO;
                for &pj in p.iter() {
                    sum += pj;
                }
                let inv = F::ONE / sum;
                for pj in p.iter_mut() {
                    *pj *= inv;
                }
                *loss = F::of(libm::log(sum.to_f64()) - shifted_target);
            }
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
