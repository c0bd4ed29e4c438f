//! Parity of every WGSL reduction kernel with its CPU twin, on the GPU wgpu finds (Mesa's
//! lavapipe in CI), on random inputs of awkward sizes: not multiples of the workgroup
//! sizes (256, 64), single rows and columns, and lengths far beyond one workgroup and beyond
//! the grid-stride kernels' 1024 x 256 invocations.
//!
//! Tolerances: the GPU adds f32 partials, the twin f64, so sums agree to a relative 2e-5
//! (sums near 0 are measured against the sum of |x|), fourth moments to 1e-4. Minima,
//! maxima, threshold counts and histogram bins are evaluated with the same f32 operations
//! on both sides and must agree exactly.

mod common;

use common::{gpu, rel, uniform};
use layerlab::compute::{cpu, Bins, Central, GpuContext, Matrix, Moments};
use layerlab::synth::{weights, SynthSpec};

const SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (1, 257),
    (3, 1000),
    (257, 65),
    (1000, 333),
    (4099, 17),
    (70_001, 3),
    (1, 1_000_003),
];

fn inputs() -> Vec<(String, Vec<f32>, usize, usize)> {
    let mut v = Vec::new();
    for (i, &(rows, cols)) in SHAPES.iter().enumerate() {
        v.push((
            format!("synthetic weights [{rows}, {cols}]"),
            weights(SynthSpec {
                seed: i as u64,
                rows,
                cols,
            }),
            rows,
            cols,
        ));
    }
    v.push((
        "uniform [-3, 5) [513, 129]".into(),
        uniform(99, 513 * 129, -3.0, 5.0),
        513,
        129,
    ));
    v.push(("constant [300, 7]".into(), vec![0.25; 2100], 300, 7));
    v.push((
        "large values [2000, 31]".into(),
        uniform(5, 62_000, 1e3, 4e3),
        2000,
        31,
    ));
    v
}

fn assert_moments(what: &str, g: &Moments, c: &Moments) {
    assert_eq!(g.count, c.count, "{what}: count");
    assert!(
        rel(g.sum, c.sum, c.sum_abs) < 2e-5,
        "{what}: sum gpu {} cpu {}",
        g.sum,
        c.sum
    );
    assert!(
        rel(g.sum_sq, c.sum_sq, c.sum_sq) < 2e-5,
        "{what}: sum_sq gpu {} cpu {}",
        g.sum_sq,
        c.sum_sq
    );
    assert!(
        rel(g.sum_abs, c.sum_abs, c.sum_abs) < 2e-5,
        "{what}: sum_abs gpu {} cpu {}",
        g.sum_abs,
        c.sum_abs
    );
    assert_eq!(g.min, c.min, "{what}: min");
    assert_eq!(g.max, c.max, "{what}: max");
}

fn assert_central(what: &str, g: &Central, c: &Central) {
    assert!(
        rel(g.m2, c.m2, c.m2) < 2e-5,
        "{what}: m2 gpu {} cpu {}",
        g.m2,
        c.m2
    );
    assert!(
        rel(g.m4, c.m4, c.m4) < 1e-4,
        "{what}: m4 gpu {} cpu {}",
        g.m4,
        c.m4
    );
    assert_eq!(g.above, c.above, "{what}: count above threshold");
}

/// One test body for each kernel family: GPU kernel vs CPU twin on every input.
fn for_each_input(
    gpu: &GpuContext,
    mut check: impl FnMut(&str, Matrix, &layerlab::compute::gpu::GpuMatrix),
) {
    for (name, data, rows, cols) in inputs() {
        let m = Matrix::new(&data, rows, cols).unwrap();
        let resident = gpu.upload(m).unwrap();
        check(&name, m, &resident);
    }
}

#[test]
fn moments_kernels_match_cpu_twin() {
    let gpu = gpu();
    for_each_input(&gpu, |name, m, t| {
        let g = pollster::block_on(gpu.tensor_moments(t)).unwrap();
        assert_moments(name, &g, &cpu::tensor_moments(m.data));
        let gc = pollster::block_on(gpu.column_moments(t)).unwrap();
        let cc = cpu::column_moments(m);
        assert_eq!(gc.len(), m.cols);
        for (j, (g, c)) in gc.iter().zip(&cc).enumerate() {
            assert_moments(&format!("{name}, column {j}"), g, c);
        }
    });
}

#[test]
fn central_kernels_match_cpu_twin() {
    let gpu = gpu();
    for_each_input(&gpu, |name, m, t| {
        let mo = cpu::tensor_moments(m.data);
        let (mean, thr) = (mo.mean() as f32, 3.0 * mo.mean_abs() as f32);
        let g = pollster::block_on(gpu.tensor_central(t, mean, thr)).unwrap();
        assert_central(name, &g, &cpu::tensor_central(m.data, mean, thr));
        let centre: Vec<[f32; 2]> = cpu::column_moments(m)
            .iter()
            .map(|c| [c.mean() as f32, 2.5 * c.mean_abs() as f32])
            .collect();
        let gc = pollster::block_on(gpu.column_central(t, &centre)).unwrap();
        let cc = cpu::column_central(m, &centre);
        for (j, (g, c)) in gc.iter().zip(&cc).enumerate() {
            assert_central(&format!("{name}, column {j}"), g, c);
        }
    });
}

#[test]
fn histogram_kernels_match_cpu_twin() {
    let gpu = gpu();
    for_each_input(&gpu, |name, m, t| {
        let mo = cpu::tensor_moments(m.data);
        for nbins in [1u32, 7, 64, 256] {
            let bins = Bins::new(mo.min, mo.max, nbins).unwrap();
            let g = pollster::block_on(gpu.tensor_histogram(t, &bins)).unwrap();
            assert_eq!(
                g,
                cpu::tensor_histogram(m.data, &bins),
                "{name}: {nbins} bins"
            );
            assert_eq!(g.iter().sum::<u64>(), m.data.len() as u64);
            let gc = pollster::block_on(gpu.column_histogram(t, &bins)).unwrap();
            assert_eq!(
                gc,
                cpu::column_histogram(m, &bins),
                "{name}: per-column, {nbins} bins"
            );
        }
    });
}
