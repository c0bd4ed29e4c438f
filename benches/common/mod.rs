//! Helpers shared by the Rust benchmarks (a folder, so Cargo does not take it for a bench).

use std::time::Instant;

/// Best wall time of `runs` calls of `f`, in seconds (after one warm-up call).
pub fn best(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
