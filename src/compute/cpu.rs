//! CPU twins of the WGSL reduction kernels: same inputs, same outputs, plain Rust.
//!
//! Like the GPU, the whole-tensor twins add f32 partials: each block of `BLOCK` values is
//! summed in `LANES` independent f32 lanes (which the compiler turns into SIMD), and the
//! block sums are added in f64. A lane adds at most BLOCK / LANES = 64 values, so the
//! partials keep ~1e-7 relative accuracy while the loop runs at memory speed.

use super::{Bins, Central, Matrix, Moments};

const LANES: usize = 8;
const BLOCK: usize = 512;

/// Values per parallel piece (512 KiB, cache-sized): tensors are cut into pieces of this size, reduced on all
/// cores, and the pieces' results merged in order (so the result does not depend on
/// scheduling).
#[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
const PIECE: usize = 1 << 17;

/// `f` over pieces of `data` in parallel, the results in order (natively and in the page's
/// threaded wasm), or `f(data)`.
fn pieces<T: Send>(data: &[f32], f: impl Fn(&[f32]) -> T + Sync + Send) -> Vec<T> {
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    if data.len() > PIECE {
        use rayon::prelude::*;
        return data.par_chunks(PIECE).map(f).collect();
    }
    vec![f(data)]
}

/// Twin of `moments.wgsl::tensor_moments`.
pub fn tensor_moments(data: &[f32]) -> Moments {
    let mut m = Moments::EMPTY;
    for p in pieces(data, moments_serial) {
        m.merge(&p);
    }
    m
}

fn moments_serial(data: &[f32]) -> Moments {
    let mut m = Moments::EMPTY;
    for block in data.chunks(BLOCK) {
        let mut s = [0f32; LANES];
        let mut sq = [0f32; LANES];
        let mut sa = [0f32; LANES];
        let mut lo = [f32::MAX; LANES];
        let mut hi = [f32::MIN; LANES];
        let mut lanes = block.chunks_exact(LANES);
        simd::moments(&mut lanes, &mut s, &mut sq, &mut sa, &mut lo, &mut hi);
        for &x in lanes.remainder() {
            s[0] += x;
            sq[0] += x * x;
            sa[0] += x.abs();
            lo[0] = lo[0].min(x);
            hi[0] = hi[0].max(x);
        }
        for l in 0..LANES {
            m.sum += s[l] as f64;
            m.sum_sq += sq[l] as f64;
            m.sum_abs += sa[l] as f64;
            m.min = m.min.min(lo[l]);
            m.max = m.max.max(hi[l]);
        }
    }
    m.count = data.len() as u64;
    m
}

/// Twin of `moments.wgsl::column_moments`: one `Moments` per column.
pub fn column_moments(m: Matrix) -> Vec<Moments> {
    let mut out = vec![Moments::EMPTY; m.cols];
    for row in m.data.chunks_exact(m.cols.max(1)) {
        for (acc, &x) in out.iter_mut().zip(row) {
            let v = x as f64;
            acc.sum += v;
            acc.sum_sq += v * v;
            acc.sum_abs += v.abs();
            acc.min = acc.min.min(x);
            acc.max = acc.max.max(x);
        }
    }
    for acc in &mut out {
        acc.count = m.rows as u64;
    }
    out
}

#[inline]
fn central_step(acc: &mut Central, x: f32, mean: f32, threshold: f32) {
    // d in f32 as on the GPU, so both twins measure from the same centre.
    let d = (x - mean) as f64;
    let d2 = d * d;
    acc.m2 += d2;
    acc.m4 += d2 * d2;
    acc.above += (x.abs() > threshold) as u64;
}

/// Twin of `central.wgsl::tensor_central`: f32 lanes per block, f64 across blocks.
pub fn tensor_central(data: &[f32], mean: f32, threshold: f32) -> Central {
    let mut c = Central::default();
    for p in pieces(data, |d| central_serial(d, mean, threshold)) {
        c.merge(&p);
    }
    c
}

fn central_serial(data: &[f32], mean: f32, threshold: f32) -> Central {
    let mut c = Central::default();
    for block in data.chunks(BLOCK) {
        let mut m2 = [0f32; LANES];
        let mut m4 = [0f32; LANES];
        let mut above = [0u32; LANES];
        let mut lanes = block.chunks_exact(LANES);
        simd::central(&mut lanes, mean, threshold, &mut m2, &mut m4, &mut above);
        for &x in lanes.remainder() {
            let d = x - mean;
            let d2 = d * d;
            m2[0] += d2;
            m4[0] += d2 * d2;
            above[0] += (x.abs() > threshold) as u32;
        }
        for l in 0..LANES {
            c.m2 += m2[l] as f64;
            c.m4 += m4[l] as f64;
            c.above += above[l] as u64;
        }
    }
    c
}

/// Twin of `central.wgsl::column_central`; `centre[c] = (mean, threshold)` of column c.
pub fn column_central(m: Matrix, centre: &[[f32; 2]]) -> Vec<Central> {
    let mut out = vec![Central::default(); m.cols];
    for row in m.data.chunks_exact(m.cols.max(1)) {
        for ((acc, &x), c) in out.iter_mut().zip(row).zip(centre) {
            central_step(acc, x, c[0], c[1]);
        }
    }
    out
}

/// Twin of `histogram.wgsl::tensor_histogram`.
pub fn tensor_histogram(data: &[f32], bins: &Bins) -> Vec<u64> {
    let mut counts = vec![0u64; bins.bins as usize];
    for p in pieces(data, |d| histogram_serial(d, bins)) {
        counts.iter_mut().zip(&p).for_each(|(a, b)| *a += *b as u64);
    }
    counts
}

fn histogram_serial(data: &[f32], bins: &Bins) -> Vec<u32> {
    // Bins of LANES values at a time (SIMD, the same f32 expression as `Bins::bin_of`),
    // then one sub-histogram per lane: most weights fall in a few central bins, and
    // consecutive increments of one counter would wait on each other.
    let nb = bins.bins as usize;
    let top = (bins.bins - 1) as f32;
    let mut sub = vec![0u32; LANES * nb];
    let mut lanes = data.chunks_exact(LANES);
    let mut idx = [0i32; LANES];
    for c in &mut lanes {
        simd::bin_indices(c, bins.lo, bins.scale, top, &mut idx);
        for (l, &i) in idx.iter().enumerate() {
            sub[l * nb + i as usize] += 1;
        }
    }
    for &x in lanes.remainder() {
        sub[bins.bin_of(x)] += 1;
    }
    (0..nb)
        .map(|b| (0..LANES).map(|l| sub[l * nb + b]).sum())
        .collect()
}

/// Twin of `histogram.wgsl::column_histogram`: `counts[col * bins + bin]`.
pub fn column_histogram(m: Matrix, bins: &Bins) -> Vec<u64> {
    let nb = bins.bins as usize;
    let mut counts = vec![0u64; m.cols * nb];
    for row in m.data.chunks_exact(m.cols.max(1)) {
        for (c, &x) in row.iter().enumerate() {
            counts[c * nb + bins.bin_of(x)] += 1;
        }
    }
    counts
}

/// A second pass's result from one centre: central sums and histogram counts.
pub type SecondPass = (Central, Vec<u64>);

/// A centre for `central_histograms`: the mean, the outlier threshold, the bins.
#[derive(Clone, Copy, Debug)]
pub struct Centre {
    pub mean: f32,
    pub threshold: f32,
    pub bins: Bins,
}

/// `tensor_central` and `tensor_histogram` from centre `a` and, optionally, centre `b`, in
/// one traversal of the data: the same sums as calling the twins separately, for the price
/// of one read. (An optimisation of the CPU path; the GPU runs the two kernels.)
pub fn central_histograms(
    data: &[f32],
    a: &Centre,
    b: Option<&Centre>,
) -> (SecondPass, Option<SecondPass>) {
    let mut ca = Central::default();
    let mut ha = vec![0u64; a.bins.bins as usize];
    let mut cb = Central::default();
    let mut hb = vec![0u64; b.map_or(0, |b| b.bins.bins as usize)];
    for ((pa, pha), pb) in pieces(data, |d| fused_serial(d, a, b)) {
        ca.merge(&pa);
        ha.iter_mut().zip(&pha).for_each(|(x, y)| *x += *y as u64);
        if let Some((c, h)) = pb {
            cb.merge(&c);
            hb.iter_mut().zip(&h).for_each(|(x, y)| *x += *y as u64);
        }
    }
    ((ca, ha), b.map(|_| (cb, hb)))
}

#[allow(clippy::type_complexity)]
fn fused_serial(
    data: &[f32],
    a: &Centre,
    b: Option<&Centre>,
) -> ((Central, Vec<u32>), Option<(Central, Vec<u32>)>) {
    let ha = histogram_serial(data, &a.bins);
    let ca = central_serial(data, a.mean, a.threshold);
    let two = b.map(|b| {
        (
            central_serial(data, b.mean, b.threshold),
            histogram_serial(data, &b.bins),
        )
    });
    ((ca, ha), two)
}

/// The inner loops of the twins, LANES = 8 values at a time: value i of a block always goes
/// to lane i % 8 and every lane does the same f32 operations in the same order, so the
/// SSE2 version (x86-64, where LLVM left these loops scalar) and the portable one give
/// bit-identical results. NaN behaves as in the scalar code: min/max skip it (the SSE
/// min/max return their second operand when either is NaN), sums carry it, comparisons
/// are false, and its bin is 0.
mod simd {
    use super::LANES;
    use std::slice::ChunksExact;

    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn load2(c: &[f32]) -> (__m128, __m128) {
        debug_assert_eq!(c.len(), LANES);
        // SAFETY: `c` holds 8 f32 (chunks_exact(LANES)); unaligned loads; SSE2 is part of
        // x86-64.
        unsafe { (_mm_loadu_ps(c.as_ptr()), _mm_loadu_ps(c.as_ptr().add(4))) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn store2(a: __m128, b: __m128, out: &mut [f32; LANES]) {
        // SAFETY: `out` holds 8 f32.
        unsafe {
            _mm_storeu_ps(out.as_mut_ptr(), a);
            _mm_storeu_ps(out.as_mut_ptr().add(4), b);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn get2(v: &[f32; LANES]) -> (__m128, __m128) {
        load2(v)
    }

    /// s += x, sq += x x, sa += |x|, lo = min(lo, x), hi = max(hi, x), lane by lane.
    #[cfg(target_arch = "x86_64")]
    pub fn moments(
        lanes: &mut ChunksExact<f32>,
        s: &mut [f32; LANES],
        sq: &mut [f32; LANES],
        sa: &mut [f32; LANES],
        lo: &mut [f32; LANES],
        hi: &mut [f32; LANES],
    ) {
        // SAFETY: SSE2 intrinsics on registers only (loads/stores in the helpers above).
        unsafe {
            let sign = _mm_set1_ps(-0.0);
            let (mut s0, mut s1) = get2(s);
            let (mut q0, mut q1) = get2(sq);
            let (mut a0, mut a1) = get2(sa);
            let (mut l0, mut l1) = get2(lo);
            let (mut h0, mut h1) = get2(hi);
            for c in lanes {
                let (x0, x1) = load2(c);
                s0 = _mm_add_ps(s0, x0);
                s1 = _mm_add_ps(s1, x1);
                q0 = _mm_add_ps(q0, _mm_mul_ps(x0, x0));
                q1 = _mm_add_ps(q1, _mm_mul_ps(x1, x1));
                a0 = _mm_add_ps(a0, _mm_andnot_ps(sign, x0));
                a1 = _mm_add_ps(a1, _mm_andnot_ps(sign, x1));
                l0 = _mm_min_ps(x0, l0);
                l1 = _mm_min_ps(x1, l1);
                h0 = _mm_max_ps(x0, h0);
                h1 = _mm_max_ps(x1, h1);
            }
            store2(s0, s1, s);
            store2(q0, q1, sq);
            store2(a0, a1, sa);
            store2(l0, l1, lo);
            store2(h0, h1, hi);
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn moments(
        lanes: &mut ChunksExact<f32>,
        s: &mut [f32; LANES],
        sq: &mut [f32; LANES],
        sa: &mut [f32; LANES],
        lo: &mut [f32; LANES],
        hi: &mut [f32; LANES],
    ) {
        for c in lanes {
            for l in 0..LANES {
                let x = c[l];
                s[l] += x;
                sq[l] += x * x;
                sa[l] += x.abs();
                lo[l] = lo[l].min(x);
                hi[l] = hi[l].max(x);
            }
        }
    }

    /// d = x - mean: m2 += d d, m4 += (d d)^2, above += |x| > threshold, lane by lane.
    #[cfg(target_arch = "x86_64")]
    pub fn central(
        lanes: &mut ChunksExact<f32>,
        mean: f32,
        threshold: f32,
        m2: &mut [f32; LANES],
        m4: &mut [f32; LANES],
        above: &mut [u32; LANES],
    ) {
        // SAFETY: SSE2 intrinsics; `above` holds 8 u32 (two unaligned 128-bit loads/stores).
        unsafe {
            let sign = _mm_set1_ps(-0.0);
            let mv = _mm_set1_ps(mean);
            let tv = _mm_set1_ps(threshold);
            let (mut p0, mut p1) = get2(m2);
            let (mut f0, mut f1) = get2(m4);
            let ap = above.as_mut_ptr() as *mut __m128i;
            let (mut c0, mut c1) = (_mm_loadu_si128(ap), _mm_loadu_si128(ap.add(1)));
            for c in lanes {
                let (x0, x1) = load2(c);
                let d0 = _mm_sub_ps(x0, mv);
                let d1 = _mm_sub_ps(x1, mv);
                let e0 = _mm_mul_ps(d0, d0);
                let e1 = _mm_mul_ps(d1, d1);
                p0 = _mm_add_ps(p0, e0);
                p1 = _mm_add_ps(p1, e1);
                f0 = _mm_add_ps(f0, _mm_mul_ps(e0, e0));
                f1 = _mm_add_ps(f1, _mm_mul_ps(e1, e1));
                // A true comparison is all ones = -1 as i32: subtracting it counts one.
                let g0 = _mm_cmpgt_ps(_mm_andnot_ps(sign, x0), tv);
                let g1 = _mm_cmpgt_ps(_mm_andnot_ps(sign, x1), tv);
                c0 = _mm_sub_epi32(c0, _mm_castps_si128(g0));
                c1 = _mm_sub_epi32(c1, _mm_castps_si128(g1));
            }
            store2(p0, p1, m2);
            store2(f0, f1, m4);
            _mm_storeu_si128(ap, c0);
            _mm_storeu_si128(ap.add(1), c1);
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn central(
        lanes: &mut ChunksExact<f32>,
        mean: f32,
        threshold: f32,
        m2: &mut [f32; LANES],
        m4: &mut [f32; LANES],
        above: &mut [u32; LANES],
    ) {
        for c in lanes {
            for l in 0..LANES {
                let x = c[l];
                let d = x - mean;
                let d2 = d * d;
                m2[l] += d2;
                m4[l] += d2 * d2;
                above[l] += (x.abs() > threshold) as u32;
            }
        }
    }

    /// idx[l] = bin of c[l]: truncate(min(max((x - lo) scale, 0), top)); NaN -> 0.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    pub fn bin_indices(c: &[f32], lo: f32, scale: f32, top: f32, idx: &mut [i32; LANES]) {
        // SAFETY: SSE2 intrinsics; `idx` holds 8 i32. max(t, 0) returns 0 for a NaN t.
        unsafe {
            let (x0, x1) = load2(c);
            let (lv, sv, zero, tv) = (
                _mm_set1_ps(lo),
                _mm_set1_ps(scale),
                _mm_setzero_ps(),
                _mm_set1_ps(top),
            );
            let t0 = _mm_min_ps(_mm_max_ps(_mm_mul_ps(_mm_sub_ps(x0, lv), sv), zero), tv);
            let t1 = _mm_min_ps(_mm_max_ps(_mm_mul_ps(_mm_sub_ps(x1, lv), sv), zero), tv);
            let ip = idx.as_mut_ptr() as *mut __m128i;
            _mm_storeu_si128(ip, _mm_cvttps_epi32(t0));
            _mm_storeu_si128(ip.add(1), _mm_cvttps_epi32(t1));
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    #[inline]
    pub fn bin_indices(c: &[f32], lo: f32, scale: f32, top: f32, idx: &mut [i32; LANES]) {
        for l in 0..LANES {
            let t = ((c[l] - lo) * scale).max(0.0).min(top);
            // SAFETY: `max` maps NaN to 0, so t is finite and in [0, top]: it fits i32.
            idx[l] = unsafe { t.to_int_unchecked::<i32>() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lane-by-lane scalar loop the SIMD versions replace (value i of a block -> lane
    /// i % LANES): the results must be bit-identical, NaN and infinities included.
    fn scalar_lanes(data: &[f32], threshold: f32) -> ([f32; 40], [u32; 8]) {
        let (mut s, mut sq, mut sa) = ([0f32; 8], [0f32; 8], [0f32; 8]);
        let (mut lo, mut hi) = ([f32::MAX; 8], [f32::MIN; 8]);
        let mut above = [0u32; 8];
        for c in data.chunks_exact(LANES) {
            for l in 0..LANES {
                let x = c[l];
                s[l] += x;
                sq[l] += x * x;
                sa[l] += x.abs();
                lo[l] = lo[l].min(x);
                hi[l] = hi[l].max(x);
                above[l] += (x.abs() > threshold) as u32;
            }
        }
        let mut all = [0f32; 40];
        for (i, v) in [s, sq, sa, lo, hi].iter().enumerate() {
            all[i * 8..i * 8 + 8].copy_from_slice(v);
        }
        (all, above)
    }

    #[test]
    fn simd_lanes_equal_the_scalar_loop_bit_for_bit() {
        let mut data: Vec<f32> = (0..BLOCK)
            .map(|i| ((i * 7919 % 1013) as f32 - 500.0) * 1e-3)
            .collect();
        data[3] = f32::NAN;
        data[17] = f32::INFINITY;
        data[40] = -7.5;
        let (want, want_above) = scalar_lanes(&data, 0.3);
        let (mut s, mut sq, mut sa) = ([0f32; 8], [0f32; 8], [0f32; 8]);
        let (mut lo, mut hi) = ([f32::MAX; 8], [f32::MIN; 8]);
        simd::moments(
            &mut data.chunks_exact(LANES),
            &mut s,
            &mut sq,
            &mut sa,
            &mut lo,
            &mut hi,
        );
        let got: Vec<u32> = [s, sq, sa, lo, hi]
            .iter()
            .flatten()
            .map(|v| v.to_bits())
            .collect();
        let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want);

        let (mut m2, mut m4, mut above) = ([0f32; 8], [0f32; 8], [0u32; 8]);
        simd::central(
            &mut data.chunks_exact(LANES),
            0.01,
            0.3,
            &mut m2,
            &mut m4,
            &mut above,
        );
        assert_eq!(above, want_above);
        // m2/m4 against the plain expression, lane 5 (no NaN there: 3 % 8 = 3, 17 % 8 = 1).
        let (mut p2, mut p4) = (0f32, 0f32);
        for c in data.chunks_exact(LANES) {
            let d = c[5] - 0.01;
            p2 += d * d;
            p4 += d * d * (d * d);
        }
        assert_eq!(
            (m2[5].to_bits(), m4[5].to_bits()),
            (p2.to_bits(), p4.to_bits())
        );
        assert!(m2[3].is_nan() && m2[1].is_infinite());

        let bins = Bins::new(-0.5, 0.5, 10).unwrap();
        let mut idx = [0i32; LANES];
        for c in data.chunks_exact(LANES) {
            simd::bin_indices(c, bins.lo, bins.scale, 9.0, &mut idx);
            for l in 0..LANES {
                assert_eq!(idx[l] as usize, bins.bin_of(c[l]), "value {}", c[l]);
            }
        }
    }
}
