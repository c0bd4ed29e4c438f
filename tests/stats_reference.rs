//! The statistics pipeline against independent references: candle-core computing the same
//! quantities in f64 with its own tensor ops, closed forms for known distributions, and
//! histograms of evenly spread values whose counts are known exactly. Both engines (the
//! WGSL kernels on lavapipe and the CPU twins) are checked, plus the GPU-loss fallback and
//! cancellation.

mod common;

use std::cell::Cell;

use candle_core::{Device, Tensor};
use common::{gpu, rel, uniform};
use layerlab::compute::{Backend, Matrix, RunControl, Silent};
use layerlab::stats::{tensor_stats, StatsOptions, TensorStats};
use layerlab::synth::{weights, SynthSpec};
use layerlab::LabError;

fn stats(
    backend: &Backend,
    data: &[f32],
    rows: usize,
    cols: usize,
    opts: &StatsOptions,
) -> TensorStats {
    let m = Matrix::new(data, rows, cols).unwrap();
    let engine = backend.info().kind;
    let run = pollster::block_on(tensor_stats(backend, m, opts, &Silent)).unwrap();
    // A GPU that failed would have handed the run to the CPU twins (which also pass every
    // check below): the GPU leg must really have run on the GPU.
    assert_eq!(run.notice, None, "the {engine} run fell back");
    assert_eq!(run.backend.kind, engine, "the {engine} run fell back");
    run.stats
}

fn backends() -> Vec<(&'static str, Backend)> {
    vec![
        ("gpu", Backend::with_gpu(gpu())),
        ("cpu", Backend::cpu("test")),
    ]
}

fn scalar(t: Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

/// Every statistic, recomputed with candle-core in f64.
fn check_against_candle(what: &str, s: &TensorStats, data: &[f32], rows: usize, cols: usize) {
    let t = Tensor::from_vec(
        data.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        (rows, cols),
        &Device::Cpu,
    )
    .unwrap();
    let mean = scalar(t.mean_all().unwrap());
    let centred = (&t - mean).unwrap();
    let var = scalar(centred.sqr().unwrap().mean_all().unwrap());
    let m4 = scalar(centred.powf(4.0).unwrap().mean_all().unwrap());
    let abs = t.abs().unwrap();
    let mean_abs = scalar(abs.mean_all().unwrap());
    let max_abs = scalar(abs.max_all().unwrap());
    let above = scalar(
        abs.gt(s.outlier_threshold as f64)
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .sum_all()
            .unwrap(),
    );

    assert!(
        rel(s.mean, mean, mean_abs) < 1e-5,
        "{what}: mean {} vs {mean}",
        s.mean
    );
    assert!(
        rel(s.std, var.sqrt(), var.sqrt()) < 1e-5,
        "{what}: std {} vs {}",
        s.std,
        var.sqrt()
    );
    assert!(
        rel(s.mean_abs, mean_abs, mean_abs) < 1e-5,
        "{what}: mean_abs"
    );
    assert_eq!(s.max_abs, max_abs, "{what}: max_abs");
    assert!(rel(s.m4, m4, m4) < 1e-4, "{what}: m4 {} vs {m4}", s.m4);
    let k = m4 / (var * var);
    assert!(
        rel(s.kurtosis.unwrap(), k, k) < 1e-4,
        "{what}: kurtosis {:?} vs {k}",
        s.kurtosis
    );
    assert!(
        rel(
            s.outlier_threshold as f64,
            s.outlier_k as f64 * mean_abs,
            mean_abs
        ) < 1e-5,
        "{what}: threshold"
    );
    assert_eq!(s.outlier_count as f64, above, "{what}: outliers");

    let c = s.columns.as_ref().expect("per-column statistics");
    let col_sum_sq = t.sqr().unwrap().sum(0).unwrap().to_vec1::<f64>().unwrap();
    let col_mean = t.mean(0).unwrap().to_vec1::<f64>().unwrap();
    let col_mean_abs = abs.mean(0).unwrap().to_vec1::<f64>().unwrap();
    let col_centred = t.broadcast_sub(&t.mean_keepdim(0).unwrap()).unwrap();
    let col_var = col_centred
        .sqr()
        .unwrap()
        .mean(0)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let col_m4 = col_centred
        .powf(4.0)
        .unwrap()
        .mean(0)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    // A column's outliers are the tensor's: |w| above the tensor's threshold. Counted
    // exactly: the fraction times the rows is the count.
    let col_above = abs
        .gt(s.outlier_threshold as f64)
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .sum(0)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    for j in 0..cols {
        assert_eq!(
            (c.outlier_fraction[j] * rows as f64).round(),
            col_above[j],
            "{what}: column {j} outliers"
        );
        assert!(
            rel(c.sum_sq[j], col_sum_sq[j], col_sum_sq[j]) < 1e-5,
            "{what}: column {j} sum_sq"
        );
        assert!(
            rel(c.mean[j], col_mean[j], col_mean_abs[j]) < 1e-5,
            "{what}: column {j} mean"
        );
        assert!(
            rel(c.mean_abs[j], col_mean_abs[j], col_mean_abs[j]) < 1e-5,
            "{what}: column {j} mean_abs"
        );
        if col_var[j] > 0.0 {
            let kj = col_m4[j] / (col_var[j] * col_var[j]);
            assert!(
                rel(c.kurtosis[j].unwrap(), kj, kj) < 1e-3,
                "{what}: column {j} kurtosis {:?} vs {kj}",
                c.kurtosis[j]
            );
        }
    }
    assert_eq!(
        s.histogram.counts.iter().sum::<u64>(),
        (rows * cols) as u64,
        "{what}: histogram total"
    );
}

#[test]
fn statistics_match_candle_on_both_engines() {
    let cases: Vec<(&str, Vec<f32>, usize, usize)> = vec![
        (
            "synthetic weights [1000, 333]",
            weights(SynthSpec {
                seed: 3,
                rows: 1000,
                cols: 333,
            }),
            1000,
            333,
        ),
        (
            "uniform [-1, 2) [77, 1031]",
            uniform(4, 77 * 1031, -1.0, 2.0),
            77,
            1031,
        ),
        // More than one chunk (4 Mi values): the two passes stream.
        (
            "synthetic weights [4500, 1000]",
            weights(SynthSpec {
                seed: 5,
                rows: 4500,
                cols: 1000,
            }),
            4500,
            1000,
        ),
    ];
    for (engine, backend) in backends() {
        for (name, data, rows, cols) in &cases {
            let s = stats(&backend, data, *rows, *cols, &StatsOptions::default());
            check_against_candle(&format!("{engine}: {name}"), &s, data, *rows, *cols);
        }
    }
}

/// The compute check's planted outlier features (every 97th column, scaled x6) are the
/// columns with the most outliers, as the page's "Columns with the most outliers" lists
/// them: counted against the tensor's threshold, each holds far more outliers than any
/// other column.
#[test]
fn planted_outlier_columns_have_the_most_outliers() {
    let (rows, cols) = (1000, 333);
    let data = weights(SynthSpec {
        seed: 7,
        rows,
        cols,
    });
    let planted: Vec<usize> = (0..cols)
        .filter(|&j| layerlab::synth::is_outlier_column(j))
        .collect();
    assert_eq!(planted, [3, 100, 197, 294]);
    for (engine, backend) in backends() {
        let s = stats(&backend, &data, rows, cols, &StatsOptions::default());
        let f = &s
            .columns
            .as_ref()
            .expect("per-column statistics")
            .outlier_fraction;
        let mut order: Vec<usize> = (0..cols).collect();
        order.sort_by(|&a, &b| f[b].total_cmp(&f[a]));
        let mut first: Vec<usize> = order[..planted.len()].to_vec();
        first.sort();
        assert_eq!(first, planted, "{engine}: fractions {:?}", &order[..8]);
        let weakest_planted = planted.iter().map(|&j| f[j]).fold(1.0, f64::min);
        let strongest_other = f[order[planted.len()]];
        assert!(
            weakest_planted > 0.2 && strongest_other < 0.05,
            "{engine}: planted {weakest_planted}, others up to {strongest_other}"
        );
    }
}

#[test]
fn kurtosis_matches_closed_forms() {
    // Discrete uniform on 0..n-1: excess kurtosis -6(n^2+1) / (5(n^2-1)).
    let n = 1000usize;
    let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let nf = n as f64;
    let expected = 3.0 - 6.0 * (nf * nf + 1.0) / (5.0 * (nf * nf - 1.0));
    // Two points, +1 and -1 in equal numbers: kurtosis exactly 1.
    let two: Vec<f32> = (0..4096)
        .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    for (engine, backend) in backends() {
        let s = stats(&backend, &data, 1, n, &StatsOptions::default());
        assert!(
            rel(s.kurtosis.unwrap(), expected, expected) < 1e-5,
            "{engine}: {:?} vs {expected}",
            s.kurtosis
        );
        let s = stats(&backend, &two, 64, 64, &StatsOptions::default());
        assert!(
            (s.kurtosis.unwrap() - 1.0).abs() < 1e-6,
            "{engine}: two-point kurtosis {:?}",
            s.kurtosis
        );
        assert_eq!(s.outlier_count, 0);
        // Constant values: zero variance, kurtosis undefined rather than NaN.
        let s = stats(&backend, &[0.5; 300], 30, 10, &StatsOptions::default());
        assert_eq!(s.kurtosis, None);
        assert_eq!(s.std, 0.0);
    }
}

#[test]
fn histogram_counts_of_evenly_spread_values() {
    // Values k/8 for k in 0..64*8, plus the value 64: over [0, 64] with 64 bins, every bin
    // holds 8 values and the maximum joins the last bin.
    let mut data: Vec<f32> = (0..64 * 8).map(|k| k as f32 / 8.0).collect();
    data.push(64.0);
    let mut expected = vec![8u64; 64];
    expected[63] += 1;
    let opts = StatsOptions {
        bins: 64,
        ..Default::default()
    };
    for (engine, backend) in backends() {
        let s = stats(&backend, &data, 1, data.len(), &opts);
        assert_eq!(s.histogram.counts, expected, "{engine}");
        assert_eq!((s.histogram.lo, s.histogram.hi), (0.0, 64.0));
    }
}

#[test]
fn losing_the_gpu_mid_run_finishes_on_the_cpu() {
    let gpu = gpu();
    let backend = Backend::with_gpu(gpu.clone());
    let data = weights(SynthSpec {
        seed: 8,
        rows: 300,
        cols: 200,
    });
    let m = Matrix::new(&data, 300, 200).unwrap();
    gpu.destroy();
    let run =
        pollster::block_on(tensor_stats(&backend, m, &StatsOptions::default(), &Silent)).unwrap();
    let notice = run.notice.expect("a notice saying the GPU failed");
    assert!(notice.contains("finished on the CPU"), "{notice}");
    assert_eq!(run.backend.kind, "cpu");
    assert!(run.backend.reason.unwrap().contains("GPU failed"));
    let cpu_only = stats(
        &Backend::cpu("reference"),
        &data,
        300,
        200,
        &StatsOptions::default(),
    );
    assert_eq!(run.stats, cpu_only);
}

struct CancelAfter {
    steps: Cell<u64>,
    limit: u64,
}

impl RunControl for CancelAfter {
    fn progress(&self, _: &str, done: u64, _: u64) {
        self.steps.set(done);
    }
    fn cancelled(&self) -> bool {
        self.steps.get() >= self.limit
    }
}

#[test]
fn a_cancelled_run_stops_between_steps() {
    let data = weights(SynthSpec {
        seed: 9,
        rows: 9000,
        cols: 1000,
    });
    let m = Matrix::new(&data, 9000, 1000).unwrap();
    for (engine, backend) in backends() {
        let ctl = CancelAfter {
            steps: Cell::new(0),
            limit: 1,
        };
        let r = pollster::block_on(tensor_stats(&backend, m, &StatsOptions::default(), &ctl));
        assert!(
            matches!(r, Err(LabError::Cancelled)),
            "{engine}: {:?}",
            r.map(|_| ())
        );
        assert_eq!(ctl.steps.get(), 1, "{engine}: stopped after the first step");
    }
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let backend = Backend::cpu("test");
    let data = vec![1.0f32; 10];
    assert!(Matrix::new(&data, 3, 4)
        .unwrap_err()
        .to_string()
        .contains("needs 12 values, found 10"));
    let m = Matrix::new(&data, 2, 5).unwrap();
    for (opts, msg) in [
        (
            StatsOptions {
                bins: 0,
                ..Default::default()
            },
            "between 1 and 256 bins",
        ),
        (
            StatsOptions {
                bins: 1000,
                ..Default::default()
            },
            "between 1 and 256 bins",
        ),
        (
            StatsOptions {
                outlier_k: f32::NAN,
                ..Default::default()
            },
            "outlier multiple",
        ),
    ] {
        let e = pollster::block_on(tensor_stats(&backend, m, &opts, &Silent)).unwrap_err();
        assert!(e.to_string().contains(msg), "{e}");
    }
    // An empty tensor is valid and has zero counts.
    let s = stats(&backend, &[], 0, 5, &StatsOptions::default());
    assert_eq!(s.count, 0);
}
