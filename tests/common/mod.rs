//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{Device, Tensor, D};
use layerlab::compute::GpuContext;
use layerlab::model::llama::Rope;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The GPU the kernel tests run on (lavapipe in CI). A missing adapter fails the test: the
/// WGSL kernels must be exercised, never skipped.
pub fn gpu() -> GpuContext {
    match pollster::block_on(GpuContext::new()) {
        Ok(g) => g,
        Err(e) => panic!("no GPU adapter for the kernel tests (install mesa-vulkan-drivers): {e}"),
    }
}

/// Uniform values in [lo, hi) from a seed.
pub fn uniform(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| lo + (hi - lo) * ((rng.next_u32() >> 8) as f32 / 16_777_216.0))
        .collect()
}

/// Relative difference, measured against `scale` where the value itself may be near 0.
pub fn rel(a: f64, b: f64, scale: f64) -> f64 {
    (a - b).abs() / scale.abs().max(1e-30)
}

/// RoPE in candle tensor ops, an independent reference for the kernels: x (B, heads, T, D)
/// -> x cos + rotate_half(x) sin, rotate_half(x) = [-x2, x1] for the halves of D.
pub fn candle_rope(x: &Tensor, rope: &Rope) -> Tensor {
    let table = |v: &[f32]| Tensor::from_vec(v.to_vec(), (rope.t, rope.d), &Device::Cpu).unwrap();
    let (cos, sin) = (table(&rope.cos), table(&rope.sin));
    let half = x.dim(D::Minus1).unwrap() / 2;
    let x1 = x.narrow(D::Minus1, 0, half).unwrap();
    let x2 = x.narrow(D::Minus1, half, half).unwrap();
    let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
    (x.broadcast_mul(&cos).unwrap() + rotated.broadcast_mul(&sin).unwrap()).unwrap()
}

/// max |a - b| / max |b| (b the twin), asserted <= tol; returns the measured value.
pub fn check(what: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want
        .iter()
        .fold(0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-30);
    let mut worst = 0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}[{i}] = {g}");
        worst = worst.max((*g as f64 - *w as f64).abs() / scale);
    }
    assert!(
        worst <= tol,
        "{what}: max |gpu - twin| / max |twin| = {worst:.3e} > {tol:.0e}"
    );
    eprintln!("{what}: {worst:.2e} (tolerance {tol:.0e})");
    worst
}

pub fn exact(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: gpu {g} twin {w}");
    }
}

/// Runs the CLI: (exit code, stdout, stderr).
pub fn layerlab(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_layerlab"))
        .args(args)
        .output()
        .expect("run layerlab");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}
