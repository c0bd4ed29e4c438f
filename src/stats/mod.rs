//! Tensor statistics for the layer view: shape, mean, std, mean |w|, max |w|, kurtosis
//! (Pearson: E[(w - mean)^4] / var^2, 3 for a Gaussian), the fraction of |w| above
//! k x mean |w|, and a histogram, for a whole tensor and (optionally) for every column.
//!
//! Two passes over the tensor, each a stream of chunks (one storage binding at most):
//!   1. moments (sum, sum of squares, sum |w|, min, max)  -> mean, mean |w|, range
//!   2. central moments about the mean, outliers above the threshold, histogram
//!
//! Chunks stay resident on the GPU between the passes when the tensor is small enough.

pub mod model;

use serde::{Deserialize, Serialize};

use crate::compute::backend::checkpoint;
use crate::compute::gpu::GpuMatrix;
use crate::compute::{
    cpu, Backend, BackendInfo, Bins, Central, GpuContext, Matrix, Moments, RunControl,
};
use crate::{LabError, Result};

/// Values per chunk: bounds memory per step and sets how often progress and cancel are seen.
const CHUNK_ELEMS: usize = 1 << 22;
/// Keep chunks on the GPU between the two passes up to this many values (256 MiB).
const KEEP_RESIDENT_ELEMS: usize = 1 << 26;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatsOptions {
    /// Outliers are |w| > outlier_k x mean |w| (OWL's M).
    pub outlier_k: f32,
    /// Histogram bins over [min, max].
    pub bins: u32,
    /// Also compute every statistic per column (input feature).
    pub per_column: bool,
}

impl Default for StatsOptions {
    fn default() -> Self {
        StatsOptions {
            outlier_k: 5.0,
            bins: 64,
            per_column: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub lo: f32,
    pub hi: f32,
    pub counts: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorStats {
    pub rows: usize,
    pub cols: usize,
    pub count: u64,
    pub sum: f64,
    pub sum_sq: f64,
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    pub mean_abs: f64,
    pub max_abs: f64,
    pub min: f32,
    pub max: f32,
    /// Fourth central moment E[(w - mean)^4].
    pub m4: f64,
    /// Pearson kurtosis m4 / var^2; None when the variance is 0.
    pub kurtosis: Option<f64>,
    pub outlier_k: f32,
    pub outlier_threshold: f32,
    pub outlier_count: u64,
    pub outlier_fraction: f64,
    pub histogram: Histogram,
    pub columns: Option<ColumnStats>,
}

/// Per-column statistics; the histograms share the tensor's bins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnStats {
    pub sum: Vec<f64>,
    /// Sum of squares per column: Wanda's per-input-feature statistic.
    pub sum_sq: Vec<f64>,
    pub mean: Vec<f64>,
    pub mean_abs: Vec<f64>,
    pub min: Vec<f32>,
    pub max: Vec<f32>,
    pub kurtosis: Vec<Option<f64>>,
    /// The fraction of this column's values that are outliers of the tensor: |w| >
    /// outlier_k x (the tensor's mean |w|), the tensor's `outlier_threshold`. An "outlier
    /// feature" is a column that is large everywhere, so it is counted against the whole
    /// tensor; against its own mean |w| such a column would have no outliers at all.
    pub outlier_fraction: Vec<f64>,
    pub histogram: Vec<Vec<u64>>,
}

/// Statistics plus where they were computed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsRun {
    pub stats: TensorStats,
    pub backend: BackendInfo,
    /// Set when the GPU failed and the run finished on the CPU.
    pub notice: Option<String>,
}

/// Computes the statistics on the backend's GPU, or its CPU; if the GPU fails mid-run the
/// run starts over on the CPU, the GPU is disabled and the notice says so.
pub async fn tensor_stats(
    backend: &Backend,
    m: Matrix<'_>,
    opts: &StatsOptions,
    ctl: &dyn RunControl,
) -> Result<StatsRun> {
    let (stats, notice) = with_fallback(backend, async |engine: &Engine<'_>| {
        run(engine, m, opts, ctl).await
    })
    .await?;
    Ok(StatsRun {
        stats,
        backend: backend.info(),
        notice,
    })
}

/// Runs `work` on the backend's GPU, or its CPU; if the GPU fails mid-run the work starts
/// over on the CPU, the GPU is disabled (the backend line says why) and the notice tells the
/// user.
async fn with_fallback<T>(
    backend: &Backend,
    work: impl AsyncFn(&Engine<'_>) -> Result<T>,
) -> Result<(T, Option<String>)> {
    let mut notice = None;
    if let Some(gpu) = backend.gpu() {
        match work(&Engine::Gpu(&gpu)).await {
            Ok(out) => return Ok((out, None)),
            Err(LabError::GpuFailed(msg)) => {
                notice = Some(backend.gpu_failed(&msg, "during the run"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok((work(&Engine::Cpu).await?, notice))
}

/// The engine one run uses; every method dispatches to a kernel and its twin.
enum Engine<'g> {
    Cpu,
    Gpu(&'g GpuContext),
}

enum Resident<'a> {
    Cpu(Matrix<'a>),
    Gpu(GpuMatrix),
}

impl Engine<'_> {
    fn max_chunk(&self) -> usize {
        match self {
            Engine::Cpu => CHUNK_ELEMS,
            Engine::Gpu(g) => CHUNK_ELEMS.min(g.max_binding_elements()),
        }
    }

    fn resident<'a>(&self, m: Matrix<'a>) -> Result<Resident<'a>> {
        Ok(match self {
            Engine::Cpu => Resident::Cpu(m),
            Engine::Gpu(g) => Resident::Gpu(g.upload(m)?),
        })
    }

    async fn moments(&self, r: &Resident<'_>, per_column: bool) -> Result<(Moments, Vec<Moments>)> {
        Ok(match (self, r) {
            (Engine::Gpu(g), Resident::Gpu(t)) => {
                let cols = if per_column {
                    g.column_moments(t).await?
                } else {
                    vec![]
                };
                (g.tensor_moments(t).await?, cols)
            }
            (_, Resident::Cpu(m)) => {
                let cols = if per_column {
                    cpu::column_moments(*m)
                } else {
                    vec![]
                };
                (cpu::tensor_moments(m.data), cols)
            }
            _ => unreachable!("a chunk is resident where its engine runs"),
        })
    }

    #[allow(clippy::type_complexity)]
    async fn second_pass(
        &self,
        r: &Resident<'_>,
        mean: f32,
        threshold: f32,
        bins: &Bins,
        centres: Option<&[[f32; 2]]>,
    ) -> Result<(Central, Vec<u64>, Vec<Central>, Vec<u64>)> {
        Ok(match (self, r) {
            (Engine::Gpu(g), Resident::Gpu(t)) => {
                let (cc, ch) = match centres {
                    Some(c) => (
                        g.column_central(t, c).await?,
                        g.column_histogram(t, bins).await?,
                    ),
                    None => (vec![], vec![]),
                };
                (
                    g.tensor_central(t, mean, threshold).await?,
                    g.tensor_histogram(t, bins).await?,
                    cc,
                    ch,
                )
            }
            (_, Resident::Cpu(m)) => {
                let (cc, ch) = match centres {
                    Some(c) => (cpu::column_central(*m, c), cpu::column_histogram(*m, bins)),
                    None => (vec![], vec![]),
                };
                (
                    cpu::tensor_central(m.data, mean, threshold),
                    cpu::tensor_histogram(m.data, bins),
                    cc,
                    ch,
                )
            }
            _ => unreachable!("a chunk is resident where its engine runs"),
        })
    }
}

/// The statistics from a tensor's first-pass moments and second-pass central sums.
#[allow(clippy::too_many_arguments)]
fn finish(
    rows: usize,
    cols: usize,
    total: &Moments,
    central: &Central,
    threshold: f32,
    bins: Bins,
    hist: Vec<u64>,
    opts: &StatsOptions,
    columns: Option<ColumnStats>,
) -> TensorStats {
    let n = total.count;
    let nf = n.max(1) as f64;
    TensorStats {
        rows,
        cols,
        count: n,
        sum: total.sum,
        sum_sq: total.sum_sq,
        mean: total.mean(),
        std: (central.m2 / nf).sqrt(),
        mean_abs: total.mean_abs(),
        max_abs: if n == 0 {
            0.0
        } else {
            total.min.abs().max(total.max.abs()) as f64
        },
        min: if n == 0 { 0.0 } else { total.min },
        max: if n == 0 { 0.0 } else { total.max },
        m4: central.m4 / nf,
        kurtosis: kurtosis(central.m2, central.m4, n),
        outlier_k: opts.outlier_k,
        outlier_threshold: threshold,
        outlier_count: central.above,
        outlier_fraction: central.above as f64 / nf,
        histogram: Histogram {
            lo: bins.lo,
            hi: bins.hi,
            counts: hist,
        },
        columns,
    }
}

/// Where a second pass measures from: the mean, the outlier threshold, the bins.
#[derive(Clone, Copy)]
struct Centre {
    mean: f32,
    threshold: f32,
    bins: Bins,
}

impl Centre {
    fn of(m: &Moments, opts: &StatsOptions) -> Result<Centre> {
        let bins = if m.count == 0 {
            Bins::new(0.0, 0.0, opts.bins)?
        } else {
            Bins::new(m.min, m.max, opts.bins)?
        };
        Ok(Centre {
            mean: m.mean() as f32,
            threshold: opts.outlier_k * m.mean_abs() as f32,
            bins,
        })
    }
}

fn check_options(opts: &StatsOptions) -> Result<()> {
    if !(opts.outlier_k.is_finite() && opts.outlier_k >= 0.0) {
        return Err(LabError::invalid(format!(
            "the outlier multiple k must be a number >= 0, not {}",
            opts.outlier_k
        )));
    }
    Bins::new(0.0, 1.0, opts.bins)?;
    Ok(())
}

/// Statistics of a group of tensors (a block), each on its own and, for the members marked
/// `true`, all of them pooled, in two passes over each tensor: pass 1 gives every tensor's
/// moments and, merged, the pool's; pass 2 measures each tensor from its own centre and, for
/// pool members, from the pool's centre in the same traversal (on the CPU; the GPU runs its
/// second-pass kernels once per centre). No pooled copy is ever made.
pub async fn group_stats(
    backend: &Backend,
    members: &[(&[f32], bool)],
    opts: &StatsOptions,
    ctl: &dyn RunControl,
) -> Result<GroupRun> {
    let opts = StatsOptions {
        per_column: false,
        ..opts.clone()
    };
    let ((tensors, pooled), notice) = with_fallback(backend, async |engine: &Engine<'_>| {
        run_group(engine, members, &opts, ctl).await
    })
    .await?;
    Ok(GroupRun {
        tensors,
        pooled,
        notice,
    })
}

/// `group_stats`' result: one entry per member, the pool (None when no member is pooled).
pub struct GroupRun {
    pub tensors: Vec<TensorStats>,
    pub pooled: Option<TensorStats>,
    pub notice: Option<String>,
}

async fn run_group(
    engine: &Engine<'_>,
    members: &[(&[f32], bool)],
    opts: &StatsOptions,
    ctl: &dyn RunControl,
) -> Result<(Vec<TensorStats>, Option<TensorStats>)> {
    check_options(opts)?;
    let max_chunk = engine.max_chunk();
    let total_len: usize = members.iter().map(|(d, _)| d.len()).sum();
    let keep = total_len <= KEEP_RESIDENT_ELEMS;
    // Each tensor is streamed as one column in chunks of whole rows (see `as_column`).
    let chunks = |d: &'_ [f32]| -> Vec<(usize, usize)> {
        (0..d.len())
            .step_by(max_chunk.max(1))
            .map(|a| (a, (a + max_chunk).min(d.len())))
            .collect()
    };

    // Pass 1: moments of every tensor; the pool's by merging.
    let mut moments = Vec::with_capacity(members.len());
    let mut resident: Vec<Vec<Resident>> = Vec::new();
    let mut pool = Moments::EMPTY;
    for (data, pooled) in members {
        checkpoint(ctl).await?;
        let mut m = Moments::EMPTY;
        let mut kept = Vec::new();
        for c in chunks(data) {
            let r = engine.resident(column(data, c))?;
            m.merge(&engine.moments(&r, false).await?.0);
            if keep {
                kept.push(r);
            }
        }
        m.count = data.len() as u64;
        if *pooled {
            pool.merge(&m);
        }
        moments.push(m);
        resident.push(kept);
    }
    let any_pooled = members.iter().any(|(_, p)| *p);
    let pool_centre = Centre::of(&pool, opts)?;

    // Pass 2: central sums, outliers and histograms, from each tensor's centre and the pool's.
    let mut out = Vec::with_capacity(members.len());
    let mut pool_central = Central::default();
    let mut pool_hist = vec![0u64; opts.bins as usize];
    for (i, (data, pooled)) in members.iter().enumerate() {
        checkpoint(ctl).await?;
        let own = Centre::of(&moments[i], opts)?;
        let mut central = Central::default();
        let mut hist = vec![0u64; opts.bins as usize];
        for (j, c) in chunks(data).into_iter().enumerate() {
            let fresh;
            let r = if keep {
                &resident[i][j]
            } else {
                fresh = engine.resident(column(data, c))?;
                &fresh
            };
            let (mine, theirs) = engine
                .second_pass_two(r, &own, pooled.then_some(&pool_centre))
                .await?;
            central.merge(&mine.0);
            hist.iter_mut().zip(&mine.1).for_each(|(a, b)| *a += b);
            if let Some((c, h)) = theirs {
                pool_central.merge(&c);
                pool_hist.iter_mut().zip(&h).for_each(|(a, b)| *a += b);
            }
        }
        resident[i].clear();
        out.push(finish(
            data.len(),
            1,
            &moments[i],
            &central,
            own.threshold,
            own.bins,
            hist,
            opts,
            None,
        ));
    }
    let pooled = any_pooled.then(|| {
        finish(
            pool.count as usize,
            1,
            &pool,
            &pool_central,
            pool_centre.threshold,
            pool_centre.bins,
            pool_hist,
            opts,
            None,
        )
    });
    Ok((out, pooled))
}

impl Engine<'_> {
    /// The second pass from one or two centres: on the CPU in one traversal, on the GPU one
    /// kernel run per centre.
    async fn second_pass_two(
        &self,
        r: &Resident<'_>,
        a: &Centre,
        b: Option<&Centre>,
    ) -> Result<(cpu::SecondPass, Option<cpu::SecondPass>)> {
        Ok(match (self, r) {
            (Engine::Gpu(g), Resident::Gpu(t)) => {
                let one = (
                    g.tensor_central(t, a.mean, a.threshold).await?,
                    g.tensor_histogram(t, &a.bins).await?,
                );
                let two = match b {
                    Some(b) => Some((
                        g.tensor_central(t, b.mean, b.threshold).await?,
                        g.tensor_histogram(t, &b.bins).await?,
                    )),
                    None => None,
                };
                (one, two)
            }
            (_, Resident::Cpu(m)) => {
                let to = |c: &Centre| cpu::Centre {
                    mean: c.mean,
                    threshold: c.threshold,
                    bins: c.bins,
                };
                let mut res = cpu::central_histograms(m.data, &to(a), b.map(to).as_ref());
                let two = res.1.take();
                (res.0, two)
            }
            _ => unreachable!("a chunk is resident where its engine runs"),
        })
    }
}

/// Values `a..b` of a tensor as one column.
fn column(d: &[f32], (a, b): (usize, usize)) -> Matrix<'_> {
    Matrix {
        data: &d[a..b],
        rows: b - a,
        cols: 1,
    }
}

fn kurtosis(m2: f64, m4: f64, n: u64) -> Option<f64> {
    let var = m2 / n as f64;
    (var > 0.0).then(|| (m4 / n as f64) / (var * var))
}

async fn run(
    engine: &Engine<'_>,
    m: Matrix<'_>,
    opts: &StatsOptions,
    ctl: &dyn RunControl,
) -> Result<TensorStats> {
    check_options(opts)?;
    let max_chunk = engine.max_chunk();
    if m.cols > max_chunk {
        return Err(LabError::invalid(format!(
            "a row of {} values is longer than one chunk ({max_chunk} values) on this backend",
            m.cols
        )));
    }
    let rows_per_chunk = (max_chunk / m.cols.max(1)).max(1);
    let chunks: Vec<(usize, usize)> = (0..m.rows)
        .step_by(rows_per_chunk)
        .map(|r0| (r0, (r0 + rows_per_chunk).min(m.rows)))
        .collect();
    let keep = m.data.len() <= KEEP_RESIDENT_ELEMS;
    let steps = 2 * chunks.len() as u64;

    // Pass 1: moments.
    let mut total = Moments::EMPTY;
    let mut columns = vec![Moments::EMPTY; if opts.per_column { m.cols } else { 0 }];
    let mut resident = Vec::new();
    for (i, &(r0, r1)) in chunks.iter().enumerate() {
        checkpoint(ctl).await?;
        let r = engine.resident(m.rows(r0, r1))?;
        let (t, cols) = engine.moments(&r, opts.per_column).await?;
        total.merge(&t);
        for (acc, c) in columns.iter_mut().zip(&cols) {
            acc.merge(c);
        }
        if keep {
            resident.push(r);
        }
        ctl.progress("moments", i as u64 + 1, steps);
    }
    let n = total.count;
    let mean = total.mean() as f32;
    let threshold = opts.outlier_k * total.mean_abs() as f32;
    let bins = if n == 0 {
        Bins::new(0.0, 0.0, opts.bins)?
    } else {
        Bins::new(total.min, total.max, opts.bins)?
    };
    // Each column's central moments from its own mean; its outliers against the tensor's
    // threshold (see ColumnStats::outlier_fraction).
    let centres: Vec<[f32; 2]> = columns
        .iter()
        .map(|c| [c.mean() as f32, threshold])
        .collect();

    // Pass 2: central moments, outliers, histograms.
    let mut central = Central::default();
    let mut hist = vec![0u64; opts.bins as usize];
    let mut col_central = vec![Central::default(); columns.len()];
    let mut col_hist = vec![0u64; columns.len() * opts.bins as usize];
    for (i, &(r0, r1)) in chunks.iter().enumerate() {
        checkpoint(ctl).await?;
        let fresh;
        let r = if keep {
            &resident[i]
        } else {
            fresh = engine.resident(m.rows(r0, r1))?;
            &fresh
        };
        let (c, h, cc, ch) = engine
            .second_pass(
                r,
                mean,
                threshold,
                &bins,
                opts.per_column.then_some(&centres[..]),
            )
            .await?;
        central.merge(&c);
        hist.iter_mut().zip(&h).for_each(|(a, b)| *a += b);
        col_central
            .iter_mut()
            .zip(&cc)
            .for_each(|(a, b)| a.merge(b));
        col_hist.iter_mut().zip(&ch).for_each(|(a, b)| *a += b);
        ctl.progress(
            "central moments and histograms",
            chunks.len() as u64 + i as u64 + 1,
            steps,
        );
    }

    let columns = opts.per_column.then(|| ColumnStats {
        sum: columns.iter().map(|c| c.sum).collect(),
        sum_sq: columns.iter().map(|c| c.sum_sq).collect(),
        mean: columns.iter().map(|c| c.mean()).collect(),
        mean_abs: columns.iter().map(|c| c.mean_abs()).collect(),
        min: columns.iter().map(|c| c.min).collect(),
        max: columns.iter().map(|c| c.max).collect(),
        kurtosis: col_central
            .iter()
            .map(|c| kurtosis(c.m2, c.m4, m.rows as u64))
            .collect(),
        outlier_fraction: col_central
            .iter()
            .map(|c| c.above as f64 / m.rows.max(1) as f64)
            .collect(),
        histogram: col_hist
            .chunks(opts.bins as usize)
            .map(|h| h.to_vec())
            .collect(),
    });
    Ok(finish(
        m.rows, m.cols, &total, &central, threshold, bins, hist, opts, columns,
    ))
}
