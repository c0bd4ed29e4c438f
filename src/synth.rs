//! Seeded synthetic tensors, bit-identical on every target (wasm32 and native), so that the
//! page, the CLI and the tests can be handed "the same input" as just a seed and a shape.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A synthetic weight matrix, described by its seed and shape.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SynthSpec {
    pub seed: u64,
    pub rows: usize,
    pub cols: usize,
}

/// Columns that carry "outlier features" (scaled x6), as LLM activations and weights do.
pub fn is_outlier_column(col: usize) -> bool {
    col % 97 == 3
}

/// A `[rows, cols]` row-major matrix that looks like a weight matrix: roughly N(0, 0.02^2)
/// (Irwin-Hall: the sum of 12 uniforms minus 6), one value in 1024 scaled x20 (heavy tails,
/// so kurtosis is well above 3), and every outlier column scaled x6.
///
/// Only exact integer-to-float conversions, additions and multiplications are used (no
/// transcendental functions, whose last bits differ between libms), so every target
/// produces the same bits.
pub fn weights(spec: SynthSpec) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let n = spec.rows * spec.cols;
    let mut out = Vec::with_capacity(n);
    const INV_2_24: f32 = 1.0 / 16_777_216.0;
    for i in 0..n {
        let mut s = 0.0f32;
        for _ in 0..12 {
            s += (rng.next_u32() >> 8) as f32 * INV_2_24;
        }
        let mut x = (s - 6.0) * 0.02;
        if rng.next_u32() & 1023 == 0 {
            x *= 20.0;
        }
        if is_outlier_column(i % spec.cols.max(1)) {
            x *= 6.0;
        }
        out.push(x);
    }
    out
}
