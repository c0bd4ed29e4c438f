//! The sparse linear product (`compute::sparse::SparseRows::matmul_t`) against candle's
//! dense `x.matmul(&w.t())` on the same x and the same zeroed W, on SmolLM2-135M's linear
//! shapes (576->576 q/o, 576->192 k/v, 576->1536 gate/up, 1536->576 down) at N = 2048 tokens
//! (8 windows x 256, one block call of `layerlab prune`), for two prunings: 30% of the weights
//! kept at random (unstructured) and 2:4 (2 kept in every 4 consecutive inputs).
//!
//! `cargo bench --bench sparse [-- RUNS]`. Best of RUNS (default 5) after a warm-up, each
//! engine measured in the same run. GFLOP/s counts 2 N nnz for the sparse kernels (the work
//! they do) and 2 N in out for the dense product; "vs dense" is dense time / sparse time.
//! "into" is `matmul_t_into` writing into a reused buffer (no fresh pages to fault in: the
//! others allocate their output on every call). The portable column is the same kernel
//! without AVX2 (SSE2 here; what wasm32 runs, without SIMD), allocating its output.

mod common;

use candle_core::{Device, Tensor};
use common::best;
use layerlab::compute::sparse::{Kernel, SparseRows};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const N: usize = 2048;

/// (name, in, out) of each distinct linear shape of one SmolLM2-135M block.
const SHAPES: &[(&str, usize, usize)] = &[
    ("q, o     576->576", 576, 576),
    ("k, v     576->192", 576, 192),
    ("gate, up 576->1536", 576, 1536),
    ("down     1536->576", 1536, 576),
];

fn unit(rng: &mut ChaCha8Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 / 8_388_608.0 - 1.0
}

/// A (out, in) weight: uniform values, then zeroed to `density` at random (`two_four` false)
/// or to 2 of every 4 consecutive inputs.
fn weight(seed: u64, out: usize, inp: usize, density: f64, two_four: bool) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w: Vec<f32> = (0..out * inp).map(|_| unit(&mut rng)).collect();
    if two_four {
        for g in w.chunks_exact_mut(4) {
            let a = rng.next_u32() as usize % 4;
            let b = (a + 1 + rng.next_u32() as usize % 3) % 4;
            for (j, v) in g.iter_mut().enumerate() {
                if j != a && j != b {
                    *v = 0.0;
                }
            }
        }
    } else {
        for v in &mut w {
            if (rng.next_u32() as f64) >= density * 4_294_967_296.0 {
                *v = 0.0;
            }
        }
    }
    w
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    println!(
        "x ({N}, in) W^T, best of {runs}, {} threads, sparse kernel {:?}, load average {} at start",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        Kernel::best(),
        load_average()
    );
    println!(
        "| shape | pruning | density | sparse ms | sparse GFLOP/s (nnz) | into ms | portable ms | dense ms | dense GFLOP/s | dense / sparse |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut seed = 0;
    for &(two_four, label) in &[(false, "30% unstructured"), (true, "2:4")] {
        for &(name, inp, out) in SHAPES {
            seed += 1;
            let w = weight(seed, out, inp, 0.3, two_four);
            let mut rng = ChaCha8Rng::seed_from_u64(1000 + seed);
            let x: Vec<f32> = (0..N * inp).map(|_| unit(&mut rng)).collect();
            let s = SparseRows::from_dense(&w, out, inp).unwrap();

            let sparse = best(runs, || {
                std::hint::black_box(s.matmul_t(&x, N).unwrap());
            });
            let mut y = vec![0f32; N * out];
            let into = best(runs, || {
                s.matmul_t_into(&x, N, &mut y).unwrap();
                std::hint::black_box(&y);
            });
            // Allocating its output like matmul_t and candle.
            let portable = best(runs, || {
                let mut y = vec![0f32; N * out];
                s.matmul_t_with(&x, N, &mut y, Kernel::Portable).unwrap();
                std::hint::black_box(y);
            });
            let xt = Tensor::from_vec(x.clone(), (N, inp), &Device::Cpu).unwrap();
            let wt = Tensor::from_vec(w.clone(), (out, inp), &Device::Cpu).unwrap();
            let dense = best(runs, || {
                std::hint::black_box(xt.matmul(&wt.t().unwrap()).unwrap());
            });

            // The two agree (a mismatch would make the timings meaningless).
            let ys = s.matmul_t(&x, N).unwrap();
            let yd: Vec<f32> = xt
                .matmul(&wt.t().unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let worst = ys
                .iter()
                .zip(&yd)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-3,
                "{name} {label}: sparse and dense differ by {worst}"
            );

            let nnz_flop = 2.0 * N as f64 * s.nnz() as f64;
            let dense_flop = 2.0 * (N * inp * out) as f64;
            println!(
                "| {name} | {label} | {:.3} | {:.2} | {:.1} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2}x |",
                s.density(),
                sparse * 1e3,
                nnz_flop / sparse / 1e9,
                into * 1e3,
                portable * 1e3,
                dense * 1e3,
                dense_flop / dense / 1e9,
                dense / sparse
            );
        }
    }
    println!("load average {} at the end", load_average());
}
