//! Helpers shared by the integration tests.
#![allow(dead_code)]

use layerlab::compute::GpuContext;
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
