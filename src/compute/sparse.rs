//! Sparse weight x dense activation product for pruned linear layers, on the CPU.
//!
//! After pruning, a linear weight W (`rows` = out, `cols` = in, row-major) is mostly exact
//! zeros. `SparseRows` keeps W's nonzeros row by row (CSR), and `SparseRows::matmul_t`
//! computes the linear's `y (n, rows) = x (n, cols) W^T` touching only those nonzeros.
//!
//! The kernel works on panels of `PANEL` = 64 tokens. A panel of x is transposed into
//! `xp (cols, width)` (width = the panel's tokens rounded up to 8, zero-padded) so that one
//! input feature k of all the panel's tokens is contiguous; for each output row o, 64
//! accumulators (8 AVX registers) take `acc += W[o][k] * xp[k][..]` for each nonzero
//! (k, W[o][k]) of the row, and land in `yp (rows, width)`, which is transposed back into
//! y's rows for the panel's tokens. Both panels stay in the L2 cache; W's nonzeros are
//! streamed once per panel. Natively the panels, and, when there are too few of them to keep
//! every core busy, blocks of rows within a panel, run on rayon's threads; the browser's
//! wasm runs them one after the other.
//!
//! On x86_64 the inner loop is compiled twice from one generic body: a portable copy (SSE2
//! multiply and add, what every target gets) and an AVX2 + FMA copy chosen at run time when
//! the CPU has both. Each output is a plain f32 sum over the row's nonzeros in column order,
//! so the two copies differ only by the FMA's single rounding.

use crate::{LabError, Result};

/// Tokens per panel: 64 f32 accumulators, 8 AVX registers.
const PANEL: usize = 64;
/// Panel widths are rounded up to this many tokens (one AVX register).
const LANE: usize = 8;
/// Below this many multiply-adds (nonzeros x padded tokens) a product runs on one thread.
#[cfg(not(target_arch = "wasm32"))]
const MIN_PARALLEL_WORK: usize = 1 << 16;
/// Fewest rows a parallel row block gets (when panels alone do not fill the cores).
#[cfg(not(target_arch = "wasm32"))]
const MIN_BLOCK_ROWS: usize = 16;

/// Which copy of the inner loop `SparseRows::matmul_t_with` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, autovectorised for the build's baseline (SSE2 on x86_64; scalar on wasm32).
    Portable,
    /// The same loop compiled for AVX2 with fused multiply-adds (x86_64 CPUs with both).
    Avx2Fma,
}

impl Kernel {
    /// The fastest copy this CPU runs: `Avx2Fma` where available, else `Portable`.
    pub fn best() -> Kernel {
        if Kernel::Avx2Fma.is_available() {
            Kernel::Avx2Fma
        } else {
            Kernel::Portable
        }
    }

    /// Whether this CPU can run the copy.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2Fma => false,
        }
    }
}

/// Column indices of the nonzeros: u16 when every index fits (cols <= 65536), else u32.
#[derive(Clone, Debug)]
enum ColIdx {
    U16(Vec<u16>),
    U32(Vec<u32>),
}

/// A column index type of the CSR.
trait Index: Copy + Send + Sync {
    fn at(self) -> usize;
}

impl Index for u16 {
    #[inline(always)]
    fn at(self) -> usize {
        self as usize
    }
}

impl Index for u32 {
    #[inline(always)]
    fn at(self) -> usize {
        self as usize
    }
}

/// The nonzeros of a `[rows, cols]` row-major f32 matrix, row by row (CSR).
///
/// Invariants (established by `from_dense`, relied on by the kernel): `offsets` has
/// `rows + 1` nondecreasing entries from 0 to nnz; within a row, column indices are strictly
/// increasing and below `cols`; `values` holds no zero.
#[derive(Clone, Debug)]
pub struct SparseRows {
    rows: usize,
    cols: usize,
    offsets: Vec<usize>,
    idx: ColIdx,
    values: Vec<f32>,
}

impl SparseRows {
    /// The entries of `weight` (`[rows, cols]` row-major) that are not 0.0: -0.0 counts as
    /// zero, NaNs and subnormals are kept. Fails when `weight` does not hold rows x cols
    /// values.
    pub fn from_dense(weight: &[f32], rows: usize, cols: usize) -> Result<SparseRows> {
        let m = super::Matrix::new(weight, rows, cols)?;
        let idx = if cols <= 1 << 16 {
            ColIdx::U16(Vec::new())
        } else {
            ColIdx::U32(Vec::new())
        };
        let mut s = SparseRows {
            rows,
            cols,
            offsets: Vec::with_capacity(rows + 1),
            idx,
            values: Vec::new(),
        };
        s.offsets.push(0);
        if cols > 0 {
            for row in m.data.chunks_exact(cols) {
                match &mut s.idx {
                    ColIdx::U16(v) => push_row(row, v, &mut s.values, |k| k as u16),
                    ColIdx::U32(v) => push_row(row, v, &mut s.values, |k| k as u32),
                }
                s.offsets.push(s.values.len());
            }
        } else {
            s.offsets.resize(rows + 1, 0);
        }
        s.values.shrink_to_fit();
        match &mut s.idx {
            ColIdx::U16(v) => v.shrink_to_fit(),
            ColIdx::U32(v) => v.shrink_to_fit(),
        }
        Ok(s)
    }

    /// Rows of W (the linear's outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns of W (the linear's inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Stored nonzeros.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// nnz / (rows x cols); 0 for an empty matrix.
    pub fn density(&self) -> f64 {
        let all = self.rows as f64 * self.cols as f64;
        if all > 0.0 {
            self.nnz() as f64 / all
        } else {
            0.0
        }
    }

    /// Heap bytes held (row offsets, column indices, values).
    pub fn bytes(&self) -> usize {
        let idx = match &self.idx {
            ColIdx::U16(v) => v.capacity() * std::mem::size_of::<u16>(),
            ColIdx::U32(v) => v.capacity() * std::mem::size_of::<u32>(),
        };
        self.offsets.capacity() * std::mem::size_of::<usize>()
            + idx
            + self.values.capacity() * std::mem::size_of::<f32>()
    }

    /// `y (n, rows) = x (n, cols) W^T`, row-major: `y[t][o] = sum_k W[o][k] x[t][k]`, with the
    /// fastest kernel this CPU runs. Fails when `x` does not hold n x cols values.
    pub fn matmul_t(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        self.matmul_t_with(x, n, Kernel::best())
    }

    /// `matmul_t` with the given copy of the inner loop (the tests compare the two); fails
    /// when the CPU cannot run it.
    pub fn matmul_t_with(&self, x: &[f32], n: usize, kernel: Kernel) -> Result<Vec<f32>> {
        if !kernel.is_available() {
            return Err(LabError::invalid(format!(
                "the {kernel:?} sparse kernel needs a CPU feature this one lacks"
            )));
        }
        super::Matrix::new(x, n, self.cols)?;
        let out = n.checked_mul(self.rows).ok_or_else(|| {
            LabError::invalid(format!(
                "a [{n}, {}] product has too many values",
                self.rows
            ))
        })?;
        let mut y = vec![0f32; out];
        if out == 0 || self.nnz() == 0 {
            return Ok(y);
        }
        let plan = Plan::new(self, n);
        for_each_panel(
            &mut y,
            PANEL * self.rows,
            plan.parallel,
            |scratch, p, yc| self.panel(x, n, p, yc, scratch, &plan, kernel),
        );
        Ok(y)
    }

    /// Panel `p` of the product: tokens `p PANEL ..` (as many as `yc`, their rows of y, holds).
    #[allow(clippy::too_many_arguments)]
    fn panel(
        &self,
        x: &[f32],
        n: usize,
        p: usize,
        yc: &mut [f32],
        scratch: &mut Scratch,
        plan: &Plan,
        kernel: Kernel,
    ) {
        let (rows, cols) = (self.rows, self.cols);
        let t0 = p * PANEL;
        let count = (n - t0).min(PANEL);
        let width = count.div_ceil(LANE) * LANE;
        let Scratch { xp, yp } = scratch;
        pack(&x[t0 * cols..(t0 + count) * cols], count, cols, width, xp);
        yp.clear();
        yp.resize(rows * width, 0.0);
        let xp = &xp[..];
        for_each_block(yp, plan.block_rows * width, plan.parallel, |b, yb| {
            let r0 = b * plan.block_rows;
            let r1 = r0 + yb.len() / width;
            self.rows_kernel(r0, r1, xp, width, yb, kernel);
        });
        unpack(yp, rows, width, count, yc);
    }

    /// Rows `r0..r1` of a panel, `yb (r1 - r0, width)`, with the chosen copy of the loop.
    fn rows_kernel(
        &self,
        r0: usize,
        r1: usize,
        xp: &[f32],
        width: usize,
        yb: &mut [f32],
        kernel: Kernel,
    ) {
        let off = &self.offsets[r0..=r1];
        let v = &self.values[..];
        match (&self.idx, kernel) {
            #[cfg(target_arch = "x86_64")]
            (ColIdx::U16(i), Kernel::Avx2Fma) => {
                // SAFETY: `Kernel::Avx2Fma` is only used once `is_available` has seen AVX2
                // and FMA on this CPU (checked at the top of `matmul_t_with`).
                unsafe { rows_avx2_fma(off, i, v, xp, width, yb) }
            }
            #[cfg(target_arch = "x86_64")]
            (ColIdx::U32(i), Kernel::Avx2Fma) => {
                // SAFETY: as above.
                unsafe { rows_avx2_fma(off, i, v, xp, width, yb) }
            }
            (ColIdx::U16(i), _) => rows_portable(off, i, v, xp, width, yb),
            (ColIdx::U32(i), _) => rows_portable(off, i, v, xp, width, yb),
        }
    }
}

/// Appends the nonzeros of one dense row.
fn push_row<I>(row: &[f32], idx: &mut Vec<I>, values: &mut Vec<f32>, cast: impl Fn(usize) -> I) {
    for (k, &w) in row.iter().enumerate() {
        if w != 0.0 {
            idx.push(cast(k));
            values.push(w);
        }
    }
}

/// How a product is split across threads.
struct Plan {
    /// Whether to use rayon at all (natively, for products big enough to pay for it).
    parallel: bool,
    /// Rows per block within a panel (all rows unless panels alone do not fill the cores).
    block_rows: usize,
}

impl Plan {
    #[cfg(not(target_arch = "wasm32"))]
    fn new(s: &SparseRows, n: usize) -> Plan {
        let panels = n.div_ceil(PANEL);
        let work = s.nnz().saturating_mul(panels * PANEL);
        let threads = rayon::current_num_threads();
        let parallel = threads > 1 && work >= MIN_PARALLEL_WORK;
        let mut block_rows = s.rows;
        if parallel && panels < 2 * threads {
            // A few tasks per thread, so that uneven rows still balance.
            let blocks = (4 * threads).div_ceil(panels);
            block_rows = s.rows.div_ceil(blocks).max(MIN_BLOCK_ROWS);
        }
        Plan {
            parallel,
            block_rows: block_rows.max(1),
        }
    }

    #[cfg(target_arch = "wasm32")]
    fn new(s: &SparseRows, _n: usize) -> Plan {
        Plan {
            parallel: false,
            block_rows: s.rows.max(1),
        }
    }
}

/// A thread's panel buffers, reused from panel to panel.
#[derive(Default)]
struct Scratch {
    xp: Vec<f32>,
    yp: Vec<f32>,
}

/// `f(scratch, p, chunk)` for each `chunk` of `y` (`len` values each; the last may be
/// shorter), on rayon's threads when `parallel`.
fn for_each_panel(
    y: &mut [f32],
    len: usize,
    parallel: bool,
    f: impl Fn(&mut Scratch, usize, &mut [f32]) + Sync + Send,
) {
    #[cfg(not(target_arch = "wasm32"))]
    if parallel {
        use rayon::prelude::*;
        y.par_chunks_mut(len)
            .enumerate()
            .for_each_init(Scratch::default, |s, (p, c)| f(s, p, c));
        return;
    }
    let _ = parallel;
    let mut s = Scratch::default();
    for (p, c) in y.chunks_mut(len).enumerate() {
        f(&mut s, p, c);
    }
}

/// `f(b, block)` for each block of `yp` (`len` values each), on rayon's threads when
/// `parallel` and there is more than one block.
fn for_each_block(
    yp: &mut [f32],
    len: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    #[cfg(not(target_arch = "wasm32"))]
    if parallel && yp.len() > len {
        use rayon::prelude::*;
        yp.par_chunks_mut(len)
            .enumerate()
            .for_each(|(b, c)| f(b, c));
        return;
    }
    let _ = parallel;
    for (b, c) in yp.chunks_mut(len).enumerate() {
        f(b, c);
    }
}

/// Columns (features) per block of the panel transposes: 64 destination lines in L1.
const TILE: usize = 64;

/// `xp (cols, width) = xs (count, cols)^T`, tokens `count..width` zero.
fn pack(xs: &[f32], count: usize, cols: usize, width: usize, xp: &mut Vec<f32>) {
    xp.clear();
    xp.resize(cols * width, 0.0);
    for k0 in (0..cols).step_by(TILE) {
        let k1 = (k0 + TILE).min(cols);
        for (t, xrow) in xs.chunks_exact(cols).take(count).enumerate() {
            for (k, &v) in (k0..k1).zip(&xrow[k0..k1]) {
                xp[k * width + t] = v;
            }
        }
    }
}

/// `yc (count, rows) = yp (rows, width)^T` for the first `count` tokens.
fn unpack(yp: &[f32], rows: usize, width: usize, count: usize, yc: &mut [f32]) {
    for o0 in (0..rows).step_by(TILE) {
        let o1 = (o0 + TILE).min(rows);
        for (t, yrow) in yc.chunks_exact_mut(rows).take(count).enumerate() {
            for (o, dst) in (o0..o1).zip(&mut yrow[o0..o1]) {
                *dst = yp[o * width + t];
            }
        }
    }
}

/// The portable copy of the loop.
fn rows_portable<I: Index>(
    off: &[usize],
    idx: &[I],
    val: &[f32],
    xp: &[f32],
    width: usize,
    yb: &mut [f32],
) {
    rows_body::<I, false>(off, idx, val, xp, width, yb);
}

/// The AVX2 + FMA copy of the loop.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2_fma<I: Index>(
    off: &[usize],
    idx: &[I],
    val: &[f32],
    xp: &[f32],
    width: usize,
    yb: &mut [f32],
) {
    rows_body::<I, true>(off, idx, val, xp, width, yb);
}

/// `yb[r][..width] = sum over the nonzeros (k, w) of row r: w xp[k][..width]`, for the rows
/// whose nonzeros `off` delimits. `width` is a multiple of `LANE` up to `PANEL`: it is done in
/// chunks of 64, 32, 16 and 8 tokens, each with its accumulators in registers.
#[inline(always)]
fn rows_body<I: Index, const FMA: bool>(
    off: &[usize],
    idx: &[I],
    val: &[f32],
    xp: &[f32],
    width: usize,
    yb: &mut [f32],
) {
    for (r, out) in yb.chunks_exact_mut(width).enumerate() {
        let (a, b) = (off[r], off[r + 1]);
        let (ri, rv) = (&idx[a..b], &val[a..b]);
        let mut c0 = 0;
        while width - c0 >= 64 {
            chunk::<I, 64, FMA>(ri, rv, xp, width, c0, &mut out[c0..c0 + 64]);
            c0 += 64;
        }
        if width - c0 >= 32 {
            chunk::<I, 32, FMA>(ri, rv, xp, width, c0, &mut out[c0..c0 + 32]);
            c0 += 32;
        }
        if width - c0 >= 16 {
            chunk::<I, 16, FMA>(ri, rv, xp, width, c0, &mut out[c0..c0 + 16]);
            c0 += 16;
        }
        if width - c0 >= 8 {
            chunk::<I, 8, FMA>(ri, rv, xp, width, c0, &mut out[c0..c0 + 8]);
        }
    }
}

/// `out[..W] = sum over (k, w) in (ri, rv): w xp[k width + c0 ..][..W]`, W accumulators.
#[inline(always)]
fn chunk<I: Index, const W: usize, const FMA: bool>(
    ri: &[I],
    rv: &[f32],
    xp: &[f32],
    width: usize,
    c0: usize,
    out: &mut [f32],
) {
    let mut acc = [0f32; W];
    for (&k, &w) in ri.iter().zip(rv) {
        let s = k.at() * width + c0;
        let xs: &[f32; W] = xp[s..].first_chunk().expect("column index below cols");
        for i in 0..W {
            acc[i] = if FMA {
                w.mul_add(xs[i], acc[i])
            } else {
                acc[i] + w * xs[i]
            };
        }
    }
    out.copy_from_slice(&acc);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_dense_keeps_exact_nonzeros() {
        let w = [
            0.0,
            -0.0,
            1.0,
            f32::NAN,
            f32::MIN_POSITIVE / 4.0, // subnormal: not zero
            -2.5,
        ];
        let s = SparseRows::from_dense(&w, 2, 3).unwrap();
        assert_eq!((s.rows(), s.cols(), s.nnz()), (2, 3, 4));
        assert_eq!(s.offsets, vec![0, 1, 4]);
        assert!(matches!(&s.idx, ColIdx::U16(i) if i == &[2, 0, 1, 2]));
        assert!((s.density() - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(s.bytes(), 3 * 8 + 4 * 2 + 4 * 4);
    }

    #[test]
    fn wide_rows_use_u32_indices() {
        let cols = (1 << 16) + 1;
        let mut w = vec![0f32; 2 * cols];
        w[cols - 1] = 3.0;
        w[2 * cols - 1] = 4.0;
        let s = SparseRows::from_dense(&w, 2, cols).unwrap();
        assert!(matches!(&s.idx, ColIdx::U32(i) if i == &[65536, 65536]));
        let x: Vec<f32> = (0..cols).map(|k| k as f32 / cols as f32).collect();
        let y = s.matmul_t(&x, 1).unwrap();
        let last = 65536.0 / cols as f32;
        assert_eq!(y, vec![3.0 * last, 4.0 * last]);
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert!(SparseRows::from_dense(&[1.0; 5], 2, 3).is_err());
        assert!(SparseRows::from_dense(&[1.0; 5], usize::MAX, 2).is_err());
        let s = SparseRows::from_dense(&[1.0; 6], 2, 3).unwrap();
        assert!(s.matmul_t(&[1.0; 5], 2).is_err());
        assert!(s.matmul_t(&[1.0; 7], 2).is_err());
        assert!(s.matmul_t(&[], usize::MAX).is_err());
        assert_eq!(s.matmul_t(&[], 0).unwrap(), Vec::<f32>::new());
    }

    #[test]
    fn empty_shapes() {
        let s = SparseRows::from_dense(&[], 3, 0).unwrap();
        assert_eq!((s.nnz(), s.density()), (0, 0.0));
        assert_eq!(s.matmul_t(&[], 2).unwrap(), vec![0.0; 6]);
        let s = SparseRows::from_dense(&[], 0, 4).unwrap();
        assert_eq!(s.matmul_t(&[1.0; 8], 2).unwrap(), Vec::<f32>::new());
    }

    #[test]
    fn small_product_by_hand() {
        // W = [[1, 0, 2], [0, 0, 0], [0, -1, 0]], x = [[1, 2, 3], [4, 5, 6]].
        let w = [1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0];
        let s = SparseRows::from_dense(&w, 3, 3).unwrap();
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        for k in [Kernel::Portable, Kernel::Avx2Fma] {
            if k.is_available() {
                let y = s.matmul_t_with(&x, 2, k).unwrap();
                assert_eq!(y, vec![7.0, 0.0, -2.0, 16.0, 0.0, -5.0], "{k:?}");
            }
        }
    }
}
