//! The CPU's matrix product for training, in one fixed order:
//! `c[i][j] += sum_k a(i, k) * b[k][j]`, every element adding its terms one at a time, in
//! `k` order, onto its current value, each product rounded before it is added (never fused
//! into an FMA: WebAssembly has no deterministic FMA, and the page must give the CLI's bits).
//!
//! Because the order is fixed per element, how the work is cut does not change a bit: the
//! register tile (8 rows x 32 columns with AVX-512, 4 x 16 with AVX2, 4 x 8 elsewhere, which
//! is 4-lane simd128 in the page), the depth blocks (the tile is stored and reloaded, which
//! is exact), and the thread split over rows all give the same result. So the native CLI with
//! AVX-512, the page in WebAssembly and an old CPU agree bit for bit, which the browser tests
//! check (the page against `layerlab run`), and `tests` below checks against a plain loop.
//!
//! One opt-in exception, for the CLI only: `use_fma(true)` (`--fma`) fuses each multiply and
//! add into one FMA (the same order, one rounding per term instead of two). It is the same
//! bits on any thread count again, but no longer the page's bits, and the reports say so
//! (`backend::cpu_name`). On Intel cores a multiply and an add each take an FMA unit, so the
//! fused tile does twice the work per cycle.
//!
//! The speed comes from the tile: per step of `k`, one row of `b` (two or four vectors) and a
//! broadcast per row of `a` feed 8 x 2 (or 4 x 2) independent multiply-adds held in
//! registers through the whole depth block, so the loop is bound by the multiply and add
//! units rather than by loads and stores.

use super::ops::Real;
#[cfg(target_arch = "x86_64")]
use std::any::TypeId;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the f32 products fuse their multiply-adds (`use_fma`). Off by default: the page's
/// bits.
static FUSED: AtomicBool = AtomicBool::new(false);

/// Whether this CPU can run the fused tiles (AVX-512F, or AVX2 with FMA).
pub fn fma_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            || (std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Turns fused multiply-adds in every f32 matrix product of this process on or off (the
/// CLI's `--fma`: faster, but the numbers are no longer the page's bit for bit). Refused on a
/// CPU without FMA, where it would change nothing. (f64 products, the tests' reference, are
/// never fused.)
pub fn use_fma(on: bool) -> crate::Result<()> {
    if on && !fma_available() {
        return Err(crate::LabError::invalid(
            "--fma: this CPU has no fused multiply-add (AVX-512F, or AVX2 with FMA)",
        ));
    }
    FUSED.store(on, Ordering::Relaxed);
    Ok(())
}

/// Whether `use_fma` is on.
pub fn fma_in_use() -> bool {
    FUSED.load(Ordering::Relaxed)
}

/// The left operand: `a(i, k) = data[i * rs + k * cs]` (a row-major matrix has `cs = 1`, its
/// transpose `rs = 1`).
#[derive(Clone, Copy)]
pub(crate) struct Lhs<'a, F> {
    pub data: &'a [F],
    pub rs: usize,
    pub cs: usize,
}

impl<'a, F> Lhs<'a, F> {
    /// A row-major `rows x depth` matrix in `data`, or (`transposed`) the transpose of a
    /// row-major `depth x rows` one.
    #[cfg(test)]
    fn dense(data: &'a [F], rows: usize, depth: usize, transposed: bool) -> Self {
        if transposed {
            Lhs {
                data,
                rs: 1,
                cs: rows,
            }
        } else {
            Lhs {
                data,
                rs: depth,
                cs: 1,
            }
        }
    }
}

/// The right operand: `b[k][j] = data[k * ld + j]`.
#[derive(Clone, Copy)]
pub(crate) struct Rhs<'a, F> {
    pub data: &'a [F],
    pub ld: usize,
}

/// The output: `c[i][j] = data[i * ld + j]`, `rows` x `cols`.
pub(crate) struct Out<'a, F> {
    pub data: &'a mut [F],
    pub ld: usize,
    pub rows: usize,
    pub cols: usize,
}

impl<'a, F> Out<'a, F> {
    /// A contiguous row-major `rows x cols` matrix (its length divided by `cols` rows).
    pub fn rows_of(data: &'a mut [F], cols: usize) -> Self {
        let rows = data.len().checked_div(cols).unwrap_or(0);
        Out {
            data,
            ld: cols,
            rows,
            cols,
        }
    }
}

/// Depth block: the tile is stored back to `c` and reloaded every `KC` steps of `k`, so the
/// block of `b` a strip reads (KC x 32 floats, 32 KiB) stays in the L1 cache while every row
/// group of the task passes over it.
#[cfg(target_arch = "x86_64")]
const KC: usize = 256;

/// `c (rows x cols) += a (rows x depth) . b (depth x cols)`, serially (callers split the rows
/// among threads). Every element's terms are added in `k` order onto its current value, so the
/// tiling below changes the speed, not the bits.
pub(crate) fn gemm_acc<F: Real>(c: Out<F>, a: Lhs<F>, b: Rhs<F>, depth: usize) {
    gemm(c, a, b, depth, false, fma_in_use())
}

/// `c (rows x cols) = a (rows x depth) . b (depth x cols)`: `gemm_acc` onto zeros, without
/// reading what `c` held (the same bits as zeroing `c` first).
pub(crate) fn gemm_set<F: Real>(c: Out<F>, a: Lhs<F>, b: Rhs<F>, depth: usize) {
    gemm(c, a, b, depth, true, fma_in_use())
}

/// `fused` takes effect only where `use_fma` would accept it (f32 on an FMA CPU).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn gemm<F: Real>(c: Out<F>, a: Lhs<F>, b: Rhs<F>, depth: usize, fresh: bool, fused: bool) {
    let (rows, cols) = (c.rows, c.cols);
    if fresh && depth == 0 {
        for r in 0..rows {
            c.data[r * c.ld..r * c.ld + cols].fill(F::ZERO);
        }
    }
    if rows == 0 || cols == 0 || depth == 0 {
        return;
    }
    assert!(
        c.ld >= cols && (rows - 1) * c.ld + cols <= c.data.len(),
        "gemm: c is too short"
    );
    assert!(
        (rows - 1) * a.rs + (depth - 1) * a.cs < a.data.len(),
        "gemm: a is too short"
    );
    assert!(
        b.ld >= cols && (depth - 1) * b.ld + cols <= b.data.len(),
        "gemm: b is too short"
    );
    #[cfg(target_arch = "x86_64")]
    if TypeId::of::<F>() == TypeId::of::<f32>() {
        // SAFETY: F is f32 (checked just above), so these are the same slices retyped.
        let (c32, a32, b32) = unsafe {
            (
                &mut *(c.data as *mut [F] as *mut [f32]),
                &*(a.data as *const [F] as *const [f32]),
                &*(b.data as *const [F] as *const [f32]),
            )
        };
        let c32 = Out {
            data: c32,
            ld: c.ld,
            rows,
            cols,
        };
        let (a32, b32) = (
            Lhs {
                data: a32,
                rs: a.rs,
                cs: a.cs,
            },
            Rhs {
                data: b32,
                ld: b.ld,
            },
        );
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (which implies FMA); the bounds were asserted above.
            unsafe {
                if fused {
                    x86::gemm_avx512_fma(c32, a32, b32, depth, fresh)
                } else {
                    x86::gemm_avx512(c32, a32, b32, depth, fresh)
                }
            };
            return;
        }
        if fused
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA; the bounds were asserted above.
            unsafe { x86::gemm_avx2_fma(c32, a32, b32, depth, fresh) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2; the bounds were asserted above.
            unsafe { x86::gemm_avx2(c32, a32, b32, depth, fresh) };
            return;
        }
    }
    if fresh {
        for r in 0..rows {
            c.data[r * c.ld..r * c.ld + cols].fill(F::ZERO);
        }
    }
    generic(c.data, c.ld, [0, rows], [0, cols], a, b, [0, depth]);
}

/// The portable tile, 4 rows x 8 columns held through the depth loop (4-lane simd128 in the
/// page), over rows `r`, columns `j` and depth `k` (half-open ranges). Also the edges of the
/// SIMD paths (the last rows and columns that fill no whole tile).
#[inline(always)]
fn generic<F: Real>(
    c: &mut [F],
    ldc: usize,
    r: [usize; 2],
    j: [usize; 2],
    a: Lhs<F>,
    b: Rhs<F>,
    k: [usize; 2],
) {
    let av = |i: usize, kk: usize| a.data[i * a.rs + kk * a.cs];
    let mut i = r[0];
    while i < r[1] {
        let rr = (r[1] - i).min(4);
        let mut j0 = j[0];
        if rr == 4 {
            while j0 + 8 <= j[1] {
                let mut t = [[F::ZERO; 8]; 4];
                for (q, tq) in t.iter_mut().enumerate() {
                    tq.copy_from_slice(&c[(i + q) * ldc + j0..][..8]);
                }
                for kk in k[0]..k[1] {
                    let v = &b.data[kk * b.ld + j0..][..8];
                    let s = [av(i, kk), av(i + 1, kk), av(i + 2, kk), av(i + 3, kk)];
                    for (tq, &sq) in t.iter_mut().zip(&s) {
                        for l in 0..8 {
                            tq[l] += sq * v[l];
                        }
                    }
                }
                for (q, tq) in t.iter().enumerate() {
                    c[(i + q) * ldc + j0..][..8].copy_from_slice(tq);
                }
                j0 += 8;
            }
        }
        // The columns past the last full strip, and every column of a short row group.
        for q in i..i + rr {
            let row = &mut c[q * ldc + j0..q * ldc + j[1]];
            for kk in k[0]..k[1] {
                let s = av(q, kk);
                for (y, &x) in row.iter_mut().zip(&b.data[kk * b.ld + j0..]) {
                    *y += s * x;
                }
            }
        }
        i += rr;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Lhs, Out, Rhs, KC};
    use std::arch::x86_64::*;

    /// One driver per vector width. Tiles of up to 8 rows x 2 vectors of `$lanes` columns;
    /// the last strip of columns masks its lanes past `cols` (masked lanes are neither read
    /// nor written), and the last rows take a shorter tile, so no element needs another path.
    macro_rules! gemm_simd {
        ($name:ident, $tile:ident, $feat:literal, $vec:ty, $mask:ty, $lanes:expr, $mr:expr,
         $mask_of:expr, $load:expr, $store:expr, $set1:ident, $madd:expr) => {
            /// # Safety
            /// The CPU has the target feature; the operands satisfy `gemm_acc`'s asserts.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $name(
                c: Out<f32>,
                a: Lhs<f32>,
                b: Rhs<f32>,
                depth: usize,
                fresh: bool,
            ) {
                const NR: usize = 2 * $lanes;
                let (rows, cols, ldc) = (c.rows, c.cols, c.ld);
                let cp = c.data.as_mut_ptr();
                let mut k0 = 0;
                while k0 < depth {
                    let k1 = (k0 + KC).min(depth);
                    for j in (0..cols).step_by(NR) {
                        let w = (cols - j).min(NR);
                        let m = [$mask_of(w.min($lanes)), $mask_of(w.saturating_sub($lanes))];
                        let bp = b.data.as_ptr().add(j);
                        let mut i = 0;
                        while i < rows {
                            let at = cp.add(i * ldc + j);
                            // The first depth block of a fresh product starts from zeros.
                            let k = [k0, k1, (fresh && k0 == 0) as usize];
                            i += match rows - i {
                                r if r >= $mr => {
                                    $tile::<$mr>(at, ldc, &a, i, bp, b.ld, k, m);
                                    $mr
                                }
                                r if r >= 4 => {
                                    $tile::<4>(at, ldc, &a, i, bp, b.ld, k, m);
                                    4
                                }
                                r if r >= 2 => {
                                    $tile::<2>(at, ldc, &a, i, bp, b.ld, k, m);
                                    2
                                }
                                _ => {
                                    $tile::<1>(at, ldc, &a, i, bp, b.ld, k, m);
                                    1
                                }
                            };
                        }
                    }
                    k0 = k1;
                }
            }

            /// The register tile: rows i..i+R, 2 vectors of columns at `cp`/`bp` (lanes
            /// outside `m` untouched), depth k[0]..k[1], each lane's terms added in k order
            /// onto its value in `c`, or onto zero when k[2] is 1.
            #[target_feature(enable = $feat)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn $tile<const R: usize>(
                cp: *mut f32,
                ldc: usize,
                a: &Lhs<f32>,
                i: usize,
                bp: *const f32,
                ldb: usize,
                k: [usize; 3],
                m: [$mask; 2],
            ) {
                let mut acc: [[$vec; 2]; R] = [[$set1(0.0); 2]; R];
                if k[2] == 0 {
                    for (r, t) in acc.iter_mut().enumerate() {
                        t[0] = $load(cp.add(r * ldc), m[0]);
                        t[1] = $load(cp.add(r * ldc + $lanes), m[1]);
                    }
                }
                let ap = a.data.as_ptr();
                for kk in k[0]..k[1] {
                    let b0 = $load(bp.add(kk * ldb), m[0]);
                    let b1 = $load(bp.add(kk * ldb + $lanes), m[1]);
                    let arow = ap.add(i * a.rs + kk * a.cs);
                    for (r, t) in acc.iter_mut().enumerate() {
                        let ar = $set1(*arow.add(r * a.rs));
                        t[0] = $madd(t[0], ar, b0);
                        t[1] = $madd(t[1], ar, b1);
                    }
                }
                for (r, t) in acc.iter().enumerate() {
                    $store(cp.add(r * ldc), m[0], t[0]);
                    $store(cp.add(r * ldc + $lanes), m[1], t[1]);
                }
            }
        };
    }

    /// The first `n` of 16 lanes.
    #[inline(always)]
    fn mask16(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// The first `n` of 8 lanes (all bits set in a lane's i32 selects it).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mask8(n: usize) -> __m256i {
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), idx)
    }

    gemm_simd!(
        gemm_avx512,
        tile_avx512,
        "avx512f",
        __m512,
        __mmask16,
        16,
        8,
        mask16,
        |p, m| _mm512_maskz_loadu_ps(m, p),
        |p, m, v| _mm512_mask_storeu_ps(p, m, v),
        _mm512_set1_ps,
        |t, a, b| _mm512_add_ps(t, _mm512_mul_ps(a, b))
    );
    gemm_simd!(
        gemm_avx512_fma,
        tile_avx512_fma,
        "avx512f,fma",
        __m512,
        __mmask16,
        16,
        8,
        mask16,
        |p, m| _mm512_maskz_loadu_ps(m, p),
        |p, m, v| _mm512_mask_storeu_ps(p, m, v),
        _mm512_set1_ps,
        |t, a, b| _mm512_fmadd_ps(a, b, t)
    );
    gemm_simd!(
        gemm_avx2,
        tile_avx2,
        "avx2",
        __m256,
        __m256i,
        8,
        4,
        mask8,
        |p, m| _mm256_maskload_ps(p, m),
        |p, m, v| _mm256_maskstore_ps(p, m, v),
        _mm256_set1_ps,
        |t, a, b| _mm256_add_ps(t, _mm256_mul_ps(a, b))
    );
    gemm_simd!(
        gemm_avx2_fma,
        tile_avx2_fma,
        "avx2,fma",
        __m256,
        __m256i,
        8,
        4,
        mask8,
        |p, m| _mm256_maskload_ps(p, m),
        |p, m, v| _mm256_maskstore_ps(p, m, v),
        _mm256_set1_ps,
        |t, a, b| _mm256_fmadd_ps(a, b, t)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The plain loop the tiles must equal bit for bit (`fused`: each term added with one
    /// rounding, `f32::mul_add`, which is IEEE fusedMultiplyAdd, not the FMA instruction).
    fn reference(
        c: &mut [f32],
        ldc: usize,
        cols: usize,
        a: Lhs<f32>,
        b: Rhs<f32>,
        depth: usize,
        fused: bool,
    ) {
        let rows = (c.len() + ldc - cols) / ldc;
        for i in 0..rows {
            for j in 0..cols {
                let mut v = c[i * ldc + j];
                for k in 0..depth {
                    let (x, y) = (a.data[i * a.rs + k * a.cs], b.data[k * b.ld + j]);
                    v = if fused { x.mul_add(y, v) } else { v + x * y };
                }
                c[i * ldc + j] = v;
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    type Kernel = unsafe fn(Out<f32>, Lhs<f32>, Rhs<f32>, usize, bool);

    /// Every x86 kernel this CPU can run, by name, with whether it fuses (the dispatch in
    /// `gemm` picks one, so the others are called here directly).
    #[cfg(target_arch = "x86_64")]
    fn x86_kernels() -> Vec<(&'static str, bool, Kernel)> {
        let mut v: Vec<(&str, bool, Kernel)> = Vec::new();
        if std::arch::is_x86_feature_detected!("avx512f") {
            v.push(("avx512", false, x86::gemm_avx512));
            v.push(("avx512 fma", true, x86::gemm_avx512_fma));
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            v.push(("avx2", false, x86::gemm_avx2));
            if std::arch::is_x86_feature_detected!("fma") {
                v.push(("avx2 fma", true, x86::gemm_avx2_fma));
            }
        }
        v
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn every_x86_kernel_fused_or_not_gives_its_plain_loops_bits() {
        let kernels = x86_kernels();
        assert!(
            kernels.iter().any(|k| k.1),
            "this x86 CPU has no FMA kernel to test"
        );
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for &(rows, cols, depth, extra, transposed) in &[
            (1, 1, 1, 0, false),
            (9, 33, 257, 2, false),
            (13, 37, 300, 3, true),
            (5, 7, 3, 0, false),
        ] {
            let ld = cols + extra;
            let mut gen = |n: usize| {
                (0..n)
                    .map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0)
                    .collect::<Vec<_>>()
            };
            let (data, bd, c0) = (gen(rows * depth), gen(depth * ld), gen(rows * ld));
            let a = Lhs::dense(&data, rows, depth, transposed);
            let b = Rhs { data: &bd, ld };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let mut plain = c0.clone();
            reference(&mut plain, ld, cols, a, b, depth, false);
            let mut fused = c0.clone();
            reference(&mut fused, ld, cols, a, b, depth, true);
            // The two differ at these depths (else this would not tell a fused kernel from a
            // plain one).
            if depth > 100 {
                assert_ne!(
                    bits(&plain),
                    bits(&fused),
                    "rows {rows} cols {cols} depth {depth}"
                );
            }
            for &(name, fma, kernel) in &kernels {
                for fresh in [false, true] {
                    let mut got = if fresh {
                        vec![f32::NAN; c0.len()]
                    } else {
                        c0.clone()
                    };
                    let mut want = if fresh {
                        vec![0.0; c0.len()]
                    } else {
                        c0.clone()
                    };
                    reference(&mut want, ld, cols, a, b, depth, fma);
                    if fresh {
                        // Only the rows x cols elements are written.
                        for r in 0..rows {
                            for j in cols..ld {
                                want[r * ld + j] = f32::NAN;
                            }
                        }
                    }
                    let out = Out {
                        data: &mut got,
                        ld,
                        rows,
                        cols,
                    };
                    // SAFETY: x86_kernels lists only what this CPU runs; sizes as asserted.
                    unsafe { kernel(out, a, b, depth, fresh) };
                    assert_eq!(
                        bits(&want),
                        bits(&got),
                        "{name}, fresh {fresh}, rows {rows} cols {cols} depth {depth}"
                    );
                }
            }
            // And the dispatch with `fused` picks a fused kernel.
            if fma_available() {
                let mut got = c0.clone();
                gemm(
                    Out {
                        data: &mut got,
                        ld,
                        rows,
                        cols,
                    },
                    a,
                    b,
                    depth,
                    false,
                    true,
                );
                assert_eq!(bits(&fused), bits(&got), "dispatch, fused");
            }
        }
    }

    #[test]
    fn every_tile_and_edge_gives_the_plain_loops_bits() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        // Awkward sizes: edges in rows and columns, depth across a KC block, wider strides
        // for b and c, and the transposed left operand (rs = 1) the weight gradient uses.
        for &(rows, cols, depth, extra, transposed) in &[
            (1, 1, 1, 0, false),
            (8, 32, 7, 0, false),
            (13, 37, 300, 3, false),
            (17, 70, 513, 0, true),
            (4, 16, 256, 0, true),
            (33, 129, 40, 1, false),
        ] {
            let ld = cols + extra;
            let mut gen = |n: usize| {
                (0..n)
                    .map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0)
                    .collect::<Vec<_>>()
            };
            let (data, bd, c0) = (gen(rows * depth), gen(depth * ld), gen(rows * ld));
            let a = Lhs::dense(&data, rows, depth, transposed);
            let b = Rhs { data: &bd, ld };
            let (mut want, mut got) = (c0.clone(), c0.clone());
            reference(&mut want, ld, cols, a, b, depth, false);
            let out = Out {
                data: &mut got,
                ld,
                rows,
                cols,
            };
            gemm_acc(out, a, b, depth);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&want),
                bits(&got),
                "rows {rows} cols {cols} depth {depth} transposed {transposed}"
            );
            // gemm_set equals gemm_acc onto zeros, whatever c held.
            let (mut zeroed, mut set) = (vec![0.0f32; c0.len()], c0.clone());
            gemm_acc(
                Out {
                    data: &mut zeroed,
                    ld,
                    rows,
                    cols,
                },
                a,
                b,
                depth,
            );
            gemm_set(
                Out {
                    data: &mut set,
                    ld,
                    rows,
                    cols,
                },
                a,
                b,
                depth,
            );
            for r in 0..rows {
                let row = r * ld..r * ld + cols;
                assert_eq!(
                    bits(&zeroed[row.clone()]),
                    bits(&set[row]),
                    "gemm_set, rows {rows} cols {cols} depth {depth}"
                );
            }
            // And the portable tile (the page's) gives the same bits as the SIMD one.
            let mut port = c0.clone();
            generic(&mut port, ld, [0, rows], [0, cols], a, b, [0, depth]);
            assert_eq!(
                bits(&port),
                bits(&got),
                "portable tile, rows {rows} cols {cols} depth {depth}"
            );
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// Multiply-adds per second of the shapes a 12 x 128 training step runs (not a test of
    /// anything: `cargo test --release --lib gemm_speed -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn gemm_speed() {
        for &(rows, cols, depth, tr) in &[
            (32, 128, 128, false),
            (32, 344, 128, false),
            (32, 128, 344, false),
            (8, 128, 2048, true),
            (8, 344, 2048, true),
            (32, 32, 128, false),
            (32, 128, 32, false),
        ] {
            let a = vec![0.5f32; rows * depth];
            let b = vec![0.25f32; depth * cols];
            let mut c = vec![0.0f32; rows * cols];
            let lhs = Lhs::dense(&a, rows, depth, tr);
            let reps = (2e9 / (rows * cols * depth) as f64) as usize + 1;
            for fused in [false, fma_available()] {
                let t0 = std::time::Instant::now();
                for _ in 0..reps {
                    let out = Out::rows_of(&mut c, cols);
                    gemm(out, lhs, Rhs { data: &b, ld: cols }, depth, false, fused);
                }
                let s = t0.elapsed().as_secs_f64();
                println!(
                    "rows {rows:4} cols {cols:4} depth {depth:5} {}{}: {:.1} G multiply-adds/s",
                    if tr { "a^T" } else { "a  " },
                    if fused { " fma" } else { "    " },
                    (reps * rows * cols * depth) as f64 / s / 1e9
                );
            }
        }
    }
}
