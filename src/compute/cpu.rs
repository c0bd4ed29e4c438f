//! CPU twins of the WGSL reduction kernels: same inputs, same outputs, plain Rust.
//! Accumulation is in f64 (the GPU adds f32 partials), so the twin is also the more
//! accurate reference that the parity tests hold the kernels to.

use super::{Bins, Central, Matrix, Moments};

/// Twin of `moments.wgsl::tensor_moments`.
pub fn tensor_moments(data: &[f32]) -> Moments {
    let mut m = Moments::EMPTY;
    for &x in data {
        let v = x as f64;
        m.sum += v;
        m.sum_sq += v * v;
        m.sum_abs += v.abs();
        m.min = m.min.min(x);
        m.max = m.max.max(x);
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

/// Twin of `central.wgsl::tensor_central`.
pub fn tensor_central(data: &[f32], mean: f32, threshold: f32) -> Central {
    let mut c = Central::default();
    for &x in data {
        central_step(&mut c, x, mean, threshold);
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
    for &x in data {
        counts[bins.bin_of(x)] += 1;
    }
    counts
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
