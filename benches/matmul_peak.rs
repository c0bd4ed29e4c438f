//! Benchmark: candle's CPU f32 matmul, which every linear of the LLaMA forward runs
//! (`Linear::forward`: y (N, out) = x (N, in) @ W^T, W^T a transposed view of W (out, in)),
//! on the shapes of `layerlab prune` on SmolLM2-135M (C = 576, F = 1536, KV width 192,
//! V = 49152; N = B T = 8 windows x 256 tokens = 2048 rows per block call; the LM head runs
//! one window, 256 rows, at a time), in GFLOP/s (2 N in out / seconds, best of R) against
//! this machine's theoretical f32 peak.
//!
//! Peak = cores x GHz x f32 FLOP per cycle per core, read from /proc/cpuinfo:
//! cores = logical CPUs online (std::thread::available_parallelism); GHz = the "cpu MHz"
//! line (on a VM this is the TSC/base clock; boost may be higher); FLOP/cycle = FMA units x
//! lanes x 2: AVX-512F on AMD family 25 (Zen 4) = 2 x 256-bit FMA pipes (512-bit ops are
//! double-pumped) = 2 x 8 x 2 = 32; AVX-512F elsewhere (Intel server cores) = 2 x 16 x 2 = 64;
//! AVX2 + FMA = 2 x 8 x 2 = 32; otherwise SSE = 2 x 4 x 1 (add + mul ports) = 8.
//!
//! The "cpu MHz" of a VM can be the base clock while the cores run boosted (seen here: 2.60
//! GHz reported, candle's matmul at 118% of that "peak"), so the peak is also measured: one
//! thread per core runs a register-only loop of independent AVX2 fused multiply-adds (12
//! accumulators, more than FMA latency x pipes, nothing read from memory), which no matmul
//! can beat. The percentages are of the larger of the two.
//!
//!     cargo bench --bench matmul_peak [-- ROUNDS]      (run on demand; benches/prune.sh runs it)
use std::time::Instant;

use candle_core::{Device, Tensor};

/// (name, N rows, in, out) of each distinct linear shape of one forward.
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("q, o      2048x576 @ 576x576", 2048, 576, 576),
    ("k, v      2048x576 @ 576x192", 2048, 576, 192),
    ("gate, up  2048x576 @ 576x1536", 2048, 576, 1536),
    ("down      2048x1536 @ 1536x576", 2048, 1536, 576),
    ("lm head   256x576 @ 576x49152", 256, 576, 49152),
];

struct Peak {
    cores: usize,
    ghz: f64,
    flop_per_cycle: f64,
    how: String,
}

fn peak() -> Peak {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let flags: Vec<String> = field("flags")
        .split_whitespace()
        .map(String::from)
        .collect();
    let has = |f: &str| flags.iter().any(|x| x == f);
    let vendor = field("vendor_id");
    let family: u32 = field("cpu family").parse().unwrap_or(0);
    let ghz = field("cpu MHz").parse::<f64>().unwrap_or(0.0) / 1000.0;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (flop_per_cycle, how) = if has("avx512f") && vendor == "AuthenticAMD" && family == 25 {
        (32.0, "AVX-512F on AMD family 25 (Zen 4): 2 FMA pipes x 8 f32 lanes (256-bit, 512-bit ops double-pumped) x 2 FLOP")
    } else if has("avx512f") {
        (64.0, "AVX-512F: 2 FMA units x 16 f32 lanes x 2 FLOP")
    } else if has("avx2") && has("fma") {
        (32.0, "AVX2 + FMA: 2 FMA units x 8 f32 lanes x 2 FLOP")
    } else {
        (8.0, "SSE: 4 f32 lanes x (1 add + 1 mul)")
    };
    Peak {
        cores,
        ghz,
        flop_per_cycle,
        how: format!(
            "{} {} family {family}, \"{}\": {how}",
            vendor,
            field("model name"),
            flags
                .iter()
                .filter(|f| ["avx2", "fma", "avx512f"].contains(&f.as_str()))
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

/// A seeded (rows, cols) f32 tensor of small values (xorshift; no rand dependency).
fn filled(rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..rows * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    Tensor::from_vec(data, (rows, cols), &Device::Cpu).expect("a (rows, cols) tensor")
}

/// FLOP/s of `iters` rounds of 12 independent 8-lane FMAs on registers, on one thread.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_loop(iters: u64) -> f64 {
    use std::arch::x86_64::{_mm256_fmadd_ps, _mm256_set1_ps, _mm256_storeu_ps};
    let t = Instant::now();
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    let mut out = [0f32; 8];
    for r in acc {
        // SAFETY: `out` holds 8 f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), r) };
        std::hint::black_box(out);
    }
    (iters * 12 * 8 * 2) as f64 / t.elapsed().as_secs_f64()
}

/// The measured f32 peak in GFLOP/s: `fma_loop` on every core at once, best of 3. None
/// without AVX2 + FMA.
fn measured_peak(cores: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        let once = || -> f64 {
            std::thread::scope(|s| {
                let threads: Vec<_> = (0..cores)
                    // SAFETY: AVX2 and FMA were seen above.
                    .map(|_| s.spawn(|| unsafe { fma_loop(50_000_000) }))
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap_or(0.0)).sum()
            })
        };
        return Some((0..3).map(|_| once()).fold(0.0, f64::max) / 1e9);
    }
    let _ = cores;
    None
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let p = peak();
    let theoretical = p.cores as f64 * p.ghz * p.flop_per_cycle;
    println!(
        "theoretical f32 peak: {} cores x {:.2} GHz x {} FLOP/cycle = {:.0} GFLOP/s",
        p.cores, p.ghz, p.flop_per_cycle, theoretical
    );
    println!("  ({})", p.how);
    let measured = measured_peak(p.cores);
    if let Some(m) = measured {
        println!(
            "measured f32 peak: {m:.0} GFLOP/s (AVX2 FMAs on registers, {} threads; = {:.2} GHz \
             x {} FLOP/cycle x {} cores)",
            p.cores,
            m / (p.flop_per_cycle * p.cores as f64),
            p.flop_per_cycle,
            p.cores
        );
    }
    let peak_gflops = measured.unwrap_or(0.0).max(theoretical);
    println!("candle-core CPU f32 matmul, x @ W^T (W^T a transposed view), best of {rounds}:");
    let mut total_flop = 0.0;
    let mut total_s = 0.0;
    for &(name, n, inp, out) in SHAPES {
        let x = filled(n, inp, 1);
        let w = filled(out, inp, 2);
        let wt = w.t().expect("a 2-d view");
        let _ = x.matmul(&wt).expect("matmul"); // warm-up: page in, spin up the pool
        let mut best = f64::INFINITY;
        for _ in 0..rounds {
            let t = Instant::now();
            let y = x.matmul(&wt).expect("matmul");
            std::hint::black_box(&y);
            best = best.min(t.elapsed().as_secs_f64());
        }
        let flop = 2.0 * (n * inp * out) as f64;
        total_flop += flop;
        total_s += best;
        println!(
            "  {name:32} {:8.2} ms {:7.1} GFLOP/s  {:5.1}% of peak",
            best * 1e3,
            flop / best / 1e9,
            flop / best / 1e9 / peak_gflops * 100.0
        );
    }
    println!(
        "  {:32} {:8.2} ms {:7.1} GFLOP/s  {:5.1}% of peak (target: 50%)",
        "all shapes together",
        total_s * 1e3,
        total_flop / total_s / 1e9,
        total_flop / total_s / 1e9 / peak_gflops * 100.0
    );
}
