//! Compute layer: the reduction kernels (`gpu`, `cpu`), the forward-pass kernels
//! (`forward`, `cpu_forward`) and Wanda's and magnitude's mask selection (`select`,
//! `cpu_select`), on the GPU (wgpu: WebGPU in the browser, Vulkan natively) and on the CPU;
//! the CPU forward pass's fused attention (`attention`) and sparse linear (`sparse`); the
//! training kernels (`train_kernels`), whose CPU twins are `train::ops`.
//!
//! Every kernel exists twice with the same signature: a WGSL entry point in `shaders/`
//! recorded through the one `recorder::Recorder` into tensors from the context's buffer pool
//! (`pool`), and its CPU twin, the reference the parity tests compare against. The twins in
//! `cpu` (statistics) and `cpu_select` (masks) are also what a run without a GPU computes
//! with. `cpu_forward`'s are only the reference (tests and `benches/matmul.rs`; nothing in
//! the lab runs them): a forward pass without a GPU runs in candle (`model::llama`,
//! `model::gpt2_opt`) with `attention` and `sparse`, the faster CPU code, which
//! tests/attention.rs and tests/sparse.rs check against their own references. Shapes: a
//! tensor is a flat `&[f32]`,
//! viewed as `[rows, cols]` row-major (`Matrix`); a vector is `[1, n]`.
//!
//! `Backend` picks the GPU when it comes up and falls back to the CPU, with the reason,
//! when it does not or when it fails mid-run.

pub mod attention;
pub mod backend;
pub mod cpu;
pub mod cpu_forward;
pub mod cpu_select;
pub mod forward;
pub mod gpu;
pub mod pool;
pub mod recorder;
pub mod sebra_kernels;
pub mod select;
pub mod sparse;
pub mod train_kernels;

pub use backend::{Backend, BackendChoice, BackendInfo, Metric, RunControl, Silent};
pub use gpu::GpuContext;
pub use pool::{BufferPool, DType, GpuTensor, PoolStats};
pub use recorder::Recorder;

use serde::{Deserialize, Serialize};

/// A row-major `[rows, cols]` view of some f32 data.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
}

impl<'a> Matrix<'a> {
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> crate::Result<Self> {
        match rows.checked_mul(cols) {
            Some(n) if n == data.len() => Ok(Matrix { data, rows, cols }),
            _ => Err(crate::LabError::invalid(format!(
                "a [{rows}, {cols}] matrix needs {} values, found {}",
                rows as u128 * cols as u128,
                data.len()
            ))),
        }
    }

    /// Rows `r0..r1` as a matrix of their own.
    pub fn rows(&self, r0: usize, r1: usize) -> Matrix<'a> {
        Matrix {
            data: &self.data[r0 * self.cols..r1 * self.cols],
            rows: r1 - r0,
            cols: self.cols,
        }
    }
}

/// First-pass moments of a set of values (a tensor, or one column).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    pub count: u64,
    pub sum: f64,
    pub sum_sq: f64,
    pub sum_abs: f64,
    pub min: f32,
    pub max: f32,
}

impl Moments {
    pub const EMPTY: Moments = Moments {
        count: 0,
        sum: 0.0,
        sum_sq: 0.0,
        sum_abs: 0.0,
        min: f32::MAX,
        max: f32::MIN,
    };

    pub fn merge(&mut self, o: &Moments) {
        self.count += o.count;
        self.sum += o.sum;
        self.sum_sq += o.sum_sq;
        self.sum_abs += o.sum_abs;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.count.max(1) as f64
    }

    pub fn mean_abs(&self) -> f64 {
        self.sum_abs / self.count.max(1) as f64
    }
}

/// Second-pass sums about a given centre: `m2 = sum d^2`, `m4 = sum d^4` with `d = x - mean`,
/// and `above = #{|x| > threshold}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Central {
    pub m2: f64,
    pub m4: f64,
    pub above: u64,
}

impl Central {
    pub fn merge(&mut self, o: &Central) {
        self.m2 += o.m2;
        self.m4 += o.m4;
        self.above += o.above;
    }
}

/// Bin layout shared by both twins: `bin(x) = clamp(floor((x - lo) * scale), 0, bins - 1)`
/// evaluated in f32, exactly as in `shaders/histogram.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bins {
    pub lo: f32,
    pub hi: f32,
    pub scale: f32,
    pub bins: u32,
}

/// Most bins a histogram kernel accepts (its workgroup-local counters).
pub const MAX_BINS: u32 = 256;

impl Bins {
    /// `bins` equal bins over `[lo, hi]`; a degenerate range puts everything in bin 0.
    pub fn new(lo: f32, hi: f32, bins: u32) -> crate::Result<Bins> {
        if bins == 0 || bins > MAX_BINS {
            return Err(crate::LabError::invalid(format!(
                "a histogram needs between 1 and {MAX_BINS} bins, not {bins}"
            )));
        }
        let width = hi - lo;
        let scale = if width > 0.0 && width.is_finite() {
            bins as f32 / width
        } else {
            0.0
        };
        Ok(Bins {
            lo,
            hi,
            scale,
            bins,
        })
    }

    /// `clamp(floor(t), 0, bins - 1)`, computed as truncation after the clamp: the same
    /// bin for every t (NaN included, which lands in bin 0), without a libm `floorf` call.
    #[inline]
    pub fn bin_of(&self, x: f32) -> usize {
        let t = (x - self.lo) * self.scale;
        t.clamp(0.0, (self.bins - 1) as f32) as usize
    }
}
