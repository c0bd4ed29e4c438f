//! Seeded synthetic tensors, bit-identical on every target (wasm32 and native), so that the
//! page, the CLI and the tests can be handed "the same input" as just a seed and a shape.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A synthetic weight matrix, described by its seed and shape.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SynthSpec {
    pub seed: u64,
    pub rows: usize,
    pub cols: usize,
}

/// The compute check's matrix: 1000 x 333 (not a multiple of any workgroup), seed 7.
impl Default for SynthSpec {
    fn default() -> Self {
        SynthSpec {
            seed: 7,
            rows: 1000,
            cols: 333,
        }
    }
}

/// Columns that carry "outlier features" (scaled x6), as LLM activations and weights do.
pub fn is_outlier_column(col: usize) -> bool {
    col % 97 == 3
}

/// A `[rows, cols]` row-major matrix that looks like a weight matrix: roughly N(0, 0.02^2)
/// (Irwin-Hall: the sum of 4 uniforms, centred and scaled), one value in 1024 scaled x20
/// (heavy tails, so kurtosis is well above 3), and every outlier column scaled x6.
///
/// Only exact integer-to-float conversions, additions and multiplications are used (no
/// transcendental functions, whose last bits differ between libms), so every target
/// produces the same bits.
pub fn weights(spec: SynthSpec) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let n = spec.rows * spec.cols;
    let mut out = Vec::with_capacity(n);
    const INV_2_16: f32 = 1.0 / 65_536.0;
    // Var of a sum of 4 U(0,1) is 1/3; 0.0346 = 0.02 * sqrt(3), rounded.
    const SCALE: f32 = 0.0346;
    for i in 0..n {
        let (a, b) = (rng.next_u32(), rng.next_u32());
        let s = (a >> 16) as f32 + (a & 0xffff) as f32 + (b >> 16) as f32 + (b & 0xffff) as f32;
        let mut x = (s * INV_2_16 - 2.0) * SCALE;
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
