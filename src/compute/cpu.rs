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
#[cfg(not(target_arch = "wasm32"))]
const PIECE: usize = 1 << 17;

/// `f` over pieces of `data` in parallel, the results in order (natively), or `f(data)`.
fn pieces<T: Send>(data: &[f32], f: impl Fn(&[f32]) -> T + Sync + Send) -> Vec<T> {
    #[cfg(not(target_arch = "wasm32"))]
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
        for c in &mut lanes {
            for l in 0..LANES {
                let x = c[l];
                s[l] += x;
                sq[l] += x * x;
                sa[l] += x.abs();
                lo[l] = lo[l].min(x);
                hi[l] = hi[l].max(x);
            }
        }
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
        for ch in &mut lanes {
            for l in 0..LANES {
                let x = ch[l];
                let d = x - mean;
                let d2 = d * d;
                m2[l] += d2;
                m4[l] += d2 * d2;
                above[l] += (x.abs() > threshold) as u32;
            }
        }
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
    // Bins of LANES values at a time (the compiler vectorises this part: same f32 expression
    // as `Bins::bin_of`), then one sub-histogram per lane: most weights fall in a few
    // central bins, and consecutive increments of one counter would wait on each other.
    let nb = bins.bins as usize;
    let top = (bins.bins - 1) as f32;
    let mut sub = vec![0u32; LANES * nb];
    let mut lanes = data.chunks_exact(LANES);
    let mut idx = [0i32; LANES];
    for c in &mut lanes {
        // max/min rather than clamp (NaN -> 0 either way) and i32, so the loop is SIMD.
        for l in 0..LANES {
            idx[l] = ((c[l] - bins.lo) * bins.scale).max(0.0).min(top) as i32;
        }
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
