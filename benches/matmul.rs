//! The linear kernel (shaders/matmul.wgsl) against its CPU twin and candle's matmul, on the
//! product the brief names: x (512, 576) times W^T with W (1536, 576), i.e. a 512 x 576 by
//! 576 x 1536 product (SmolLM2's gate/up projection of 512 tokens), 2 N K O = 0.906 GFLOP.
//!
//! `cargo bench --bench matmul [-- RUNS]`. Prints the best of RUNS (default 5) for each
//! engine, in GFLOP/s, and the ratios; all three are measured in the same run. The GPU is
//! whatever wgpu finds (Mesa's lavapipe on a machine without one), timed two ways: one
//! product with its upload-free dispatch and readback, and 8 products recorded into one
//! submission (the forward pass's case: intermediates stay on the GPU).

mod common;

use candle_core::{Device, Tensor};
use common::best;
use layerlab::compute::forward::Recorder;
use layerlab::compute::{cpu_forward, GpuContext, Matrix};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const N: usize = 512;
const K: usize = 576;
const O: usize = 1536;

fn uniform(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (rng.next_u32() >> 8) as f32 / 16_777_216.0 - 0.5)
        .collect()
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let flop = 2.0 * (N * K * O) as f64;
    let x = uniform(1, N * K);
    let w = uniform(2, O * K);
    let xm = Matrix::new(&x, N, K).unwrap();
    let wm = Matrix::new(&w, O, K).unwrap();

    let twin = best(runs, || {
        std::hint::black_box(cpu_forward::linear(xm, wm, None).unwrap());
    });
    let xt = Tensor::from_vec(x.clone(), (N, K), &Device::Cpu).unwrap();
    let wt = Tensor::from_vec(w.clone(), (O, K), &Device::Cpu).unwrap();
    let candle = best(runs, || {
        std::hint::black_box(xt.matmul(&wt.t().unwrap()).unwrap());
    });

    let gpu = pollster::block_on(GpuContext::new()).expect("no GPU adapter");
    let xg = gpu.upload(xm).unwrap();
    let wg = gpu.upload(wm).unwrap();
    let one = best(runs, || {
        let mut rec = Recorder::new(&gpu).unwrap();
        let y = rec.linear(&xg, &wg, None).unwrap();
        std::hint::black_box(pollster::block_on(rec.read(&y)).unwrap());
    });
    const CHAIN: usize = 8;
    let chained = best(runs, || {
        let mut rec = Recorder::new(&gpu).unwrap();
        let ys: Vec<_> = (0..CHAIN)
            .map(|_| rec.linear(&xg, &wg, None).unwrap())
            .collect();
        std::hint::black_box(pollster::block_on(rec.read(&ys[CHAIN - 1])).unwrap());
    }) / CHAIN as f64;

    let gf = |s: f64| flop / s / 1e9;
    println!(
        "x ({N}, {K}) W ({O}, {K})^T, best of {runs}, {} threads for the CPU:",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "  CPU twin (cpu_forward::linear): {:8.2} ms  {:6.2} GFLOP/s",
        twin * 1e3,
        gf(twin)
    );
    println!(
        "  candle matmul:                  {:8.2} ms  {:6.2} GFLOP/s",
        candle * 1e3,
        gf(candle)
    );
    println!(
        "  GPU {}, one product + readback: {:8.2} ms  {:6.2} GFLOP/s",
        gpu.describe(),
        one * 1e3,
        gf(one)
    );
    println!(
        "  GPU, {CHAIN} products per submission:     {:8.2} ms  {:6.2} GFLOP/s",
        chained * 1e3,
        gf(chained)
    );
    println!(
        "  ratios: GPU (chained) / twin {:.2}, GPU (chained) / candle {:.2}",
        twin / chained,
        candle / chained
    );
}
