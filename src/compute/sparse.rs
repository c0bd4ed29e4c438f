//! Sparse weight x dense activation product for pruned linear layers, on the CPU.
//!
//! After pruning, a linear weight W (`rows` = out, `cols` = in, row-major) is mostly exact
//! zeros. `SparseRows` keeps W's nonzeros, and `SparseRows::matmul_t` computes the linear's
//! `y (n, rows) = x (n, cols) W^T` touching only those nonzeros.
//!
//! Storage: a CSR per block of `KB` = 64 columns (row by row within a block, blocks one
//! after the other), column indices relative to their block in one byte, values in f32:
//! 5 bytes per nonzero plus 4 per (block, row).
//!
//! Kernel: the tokens go by panels of `PANEL` = 64. A panel of x is transposed into
//! `xp (cols, width)` (width = the panel's tokens rounded up to 8, zero-padded) so that one
//! input feature of all the panel's tokens is contiguous. For each column block (its slice
//! of `xp`, 64 x 64 x 4 bytes = 16 KiB, stays in L1) and each output row o, 64 accumulators
//! (8 AVX registers) start from `yp[o]` (from zero in the first block) and take
//! `acc += W[o][k] xp[k][..]` for the row's nonzeros in the block; `yp (rows, width)` is
//! finally transposed into y's rows for the panel's tokens. Both panels start on a cache
//! line, so that no 32-byte load straddles two. Natively the panels, and, when there are too few of them to keep every
//! core busy, blocks of rows within a panel, run on rayon's threads (natively, and in the page's
//! threaded wasm); the single-threaded wasm runs them one after the other.
//!
//! On x86_64 the kernel is compiled twice from one body: a portable copy (SSE2 on x86_64;
//! what every target gets, scalar on wasm32 without simd128) and an AVX2 copy chosen at run
//! time when the CPU has it (its panel transposes also use AVX shuffles). Each output is a
//! plain f32 sum, `acc + w x` (a multiply, then an add: no fused multiply-add), over the
//! row's nonzeros in column order, so both copies, and the browser's wasm, give the same
//! bits: the page and the CLI prune on identical sparse products. (FMA was measured: the
//! kernel waits on loads, not on arithmetic, and FMA gained ~5% while making every pruned
//! forward differ from the page's.)

use crate::{LabError, Result};

/// Tokens per panel: 64 f32 accumulators, 8 AVX registers.
const PANEL: usize = 64;
/// Panel widths are rounded up to this many tokens (one AVX register).
const LANE: usize = 8;
/// Below this many multiply-adds (nonzeros x padded tokens) a product runs on one thread.
#[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
const MIN_PARALLEL_WORK: usize = 1 << 16;
/// Fewest rows a parallel row block gets (when panels alone do not fill the cores).
#[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
const MIN_BLOCK_ROWS: usize = 16;

/// Which copy of the inner loop `SparseRows::matmul_t_with` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, autovectorised for the build's baseline (SSE2 on x86_64; scalar on wasm32).
    Portable,
    /// The same loop compiled for AVX2 (x86_64 CPUs with it): the same bits, 8 lanes.
    Avx2,
}

impl Kernel {
    /// The fastest copy this CPU runs: `Avx2` where available, else `Portable`.
    pub fn best() -> Kernel {
        if Kernel::Avx2.is_available() {
            Kernel::Avx2
        } else {
            Kernel::Portable
        }
    }

    /// Whether this CPU can run the copy.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 => false,
        }
    }
}

/// Columns per block of the blocked CSR. A panel's slice of a block, 64 columns x 64 tokens
/// x 4 bytes = 16 KiB, stays in the L1 cache while the nonzeros of every row in those
/// columns go by (unblocked, the whole panel streams from L2 for each row).
const KB: usize = 64;

/// The nonzeros of a `[rows, cols]` row-major f32 matrix, row by row within blocks of `KB`
/// columns (a CSR per column block, blocks one after the other).
///
/// Invariants (established by `from_dense`, relied on by the kernel): `starts` has
/// `blocks x rows + 1` nondecreasing entries from 0 to nnz, the nonzeros of column block b,
/// row o being `starts[b rows + o] .. starts[b rows + o + 1]`; within one of those, the
/// columns (`col_in_block`, relative to the block's first column) are strictly increasing
/// and inside the block; `values` holds no zero.
#[derive(Clone, Debug)]
pub struct SparseRows {
    rows: usize,
    cols: usize,
    starts: Vec<u32>,
    col_in_block: Vec<u8>,
    values: Vec<f32>,
}

impl SparseRows {
    /// The entries of `weight` (`[rows, cols]` row-major) that are not 0.0: -0.0 counts as
    /// zero, NaNs and subnormals are kept. Fails when `weight` does not hold rows x cols
    /// values, or holds more than 2^32 - 1 nonzeros.
    pub fn from_dense(weight: &[f32], rows: usize, cols: usize) -> Result<SparseRows> {
        let m = super::Matrix::new(weight, rows, cols)?;
        let nnz = m.data.iter().filter(|&&w| w != 0.0).count();
        if u32::try_from(nnz).is_err() {
            return Err(LabError::invalid(format!(
                "a sparse matrix holds at most 2^32 - 1 nonzeros, not {nnz}"
            )));
        }
        let blocks = cols.div_ceil(KB);
        let mut starts = Vec::with_capacity(blocks * rows + 1);
        let mut col_in_block = Vec::with_capacity(nnz);
        let mut values = Vec::with_capacity(nnz);
        starts.push(0);
        for k0 in (0..cols).step_by(KB) {
            let k1 = cols.min(k0 + KB);
            for row in m.data.chunks_exact(cols) {
                for (k, &w) in row[k0..k1].iter().enumerate() {
                    if w != 0.0 {
                        col_in_block.push(k as u8);
                        values.push(w);
                    }
                }
                // At most nnz, checked above.
                starts.push(values.len() as u32);
            }
        }
        Ok(SparseRows {
            rows,
            cols,
            starts,
            col_in_block,
            values,
        })
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

    /// Heap bytes held (block starts, column indices, values).
    pub fn bytes(&self) -> usize {
        self.starts.capacity() * std::mem::size_of::<u32>()
            + self.col_in_block.capacity()
            + self.values.capacity() * std::mem::size_of::<f32>()
    }

    /// `y (n, rows) = x (n, cols) W^T`, row-major: `y[t][o] = sum_k W[o][k] x[t][k]`, with the
    /// fastest kernel this CPU runs. Fails when `x` does not hold n x cols values.
    pub fn matmul_t(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        self.check_x(x, n)?;
        let mut y = vec![0f32; self.out_len(n)?];
        self.matmul_t_with(x, n, &mut y, Kernel::best())?;
        Ok(y)
    }

    /// `matmul_t` into a buffer of n x rows values (every value is overwritten), which a
    /// caller can reuse from call to call.
    pub fn matmul_t_into(&self, x: &[f32], n: usize, y: &mut [f32]) -> Result<()> {
        self.matmul_t_with(x, n, y, Kernel::best())
    }

    /// `matmul_t_into` with the given copy of the inner loop (the tests compare the two);
    /// fails when the CPU cannot run it, or when `x` or `y` has the wrong length.
    pub fn matmul_t_with(&self, x: &[f32], n: usize, y: &mut [f32], kernel: Kernel) -> Result<()> {
        if !kernel.is_available() {
            return Err(LabError::invalid(format!(
                "the {kernel:?} sparse kernel needs a CPU feature this one lacks"
            )));
        }
        self.check_x(x, n)?;
        let out = self.out_len(n)?;
        if y.len() != out {
            return Err(LabError::invalid(format!(
                "a [{n}, {}] product needs {out} values, found {}",
                self.rows,
                y.len()
            )));
        }
        if out == 0 {
            return Ok(());
        }
        if self.nnz() == 0 {
            y.fill(0.0);
            return Ok(());
        }
        let plan = Plan::new(self, n);
        for_each_panel(y, PANEL * self.rows, plan.parallel, |scratch, p, yc| {
            self.panel(x, n, p, yc, scratch, &plan, kernel)
        });
        Ok(())
    }

    /// Whether `x` holds n x cols values.
    fn check_x(&self, x: &[f32], n: usize) -> Result<()> {
        super::Matrix::new(x, n, self.cols).map(|_| ())
    }

    /// n x rows, the length of a product's output.
    fn out_len(&self, n: usize) -> Result<usize> {
        n.checked_mul(self.rows).ok_or_else(|| {
            LabError::invalid(format!(
                "a [{n}, {}] product has too many values",
                self.rows
            ))
        })
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
        let xp = aligned(&mut scratch.xp, cols * width);
        pack(
            &x[t0 * cols..(t0 + count) * cols],
            count,
            cols,
            width,
            xp,
            kernel,
        );
        let xp = &xp[..];
        // Written by the first column block (zeros where it holds no nonzero), then added to.
        let yp = aligned(&mut scratch.yp, rows * width);
        for_each_block(yp, plan.block_rows * width, plan.parallel, |b, yb| {
            self.rows_kernel(b * plan.block_rows, xp, width, yb, kernel);
        });
        unpack(yp, rows, width, count, yc, kernel);
    }

    /// Rows `r0..` of a panel, `yb (rows, width)`, with the chosen copy of the loop.
    fn rows_kernel(&self, r0: usize, xp: &[f32], width: usize, yb: &mut [f32], kernel: Kernel) {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                // SAFETY: `Kernel::Avx2` only gets here once `is_available` has seen AVX2 on
                // this CPU (checked at the top of `matmul_t_with`).
                unsafe { rows_avx2(self, r0, xp, width, yb) }
            }
            _ => rows_portable(self, r0, xp, width, yb),
        }
    }
}

/// How a product is split across threads.
struct Plan {
    /// Whether to use rayon at all (natively and in the threaded wasm, for products big enough
    /// to pay for it).
    parallel: bool,
    /// Rows per block within a panel (all rows unless panels alone do not fill the cores).
    block_rows: usize,
}

impl Plan {
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
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

    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    fn new(s: &SparseRows, _n: usize) -> Plan {
        Plan {
            parallel: false,
            block_rows: s.rows.max(1),
        }
    }
}

/// `len` values of `buf` (grown as needed; contents unspecified) starting on a 64-byte cache
/// line boundary where the allocator allows, so that the kernel's 32-byte loads of a panel
/// row never straddle two lines. With the allocator's 16-byte alignment, half of them did,
/// and the product ran 25-30% slower.
fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    const SLACK: usize = 64 / std::mem::size_of::<f32>();
    if buf.len() < len + SLACK {
        buf.resize(len + SLACK, 0.0);
    }
    // `align_offset` may decline (usize::MAX): then any start is correct, only slower.
    let off = buf.as_ptr().align_offset(64);
    let off = if off < SLACK { off } else { 0 };
    &mut buf[off..off + len]
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
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
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
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
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

/// `xp (cols, width) = xs (count, cols)^T`, tokens `count..width` zero.
fn pack(xs: &[f32], count: usize, cols: usize, width: usize, xp: &mut [f32], kernel: Kernel) {
    // Every (k, t < count) is overwritten; only the padding needs zeros.
    transpose(xs, cols, count, cols, xp, width, kernel);
    if count < width {
        for row in xp.chunks_exact_mut(width) {
            row[count..].fill(0.0);
        }
    }
}

/// `yc (count, rows) = yp (rows, width)^T` for the first `count` tokens.
fn unpack(yp: &[f32], rows: usize, width: usize, count: usize, yc: &mut [f32], kernel: Kernel) {
    transpose(yp, width, rows, count, yc, rows, kernel);
}

/// `dst[j ds + i] = src[i ss + j]` for `i < nr`, `j < nc`, with the chosen copy.
fn transpose(
    src: &[f32],
    ss: usize,
    nr: usize,
    nc: usize,
    dst: &mut [f32],
    ds: usize,
    kernel: Kernel,
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            // SAFETY: as in `SparseRows::rows_kernel`, AVX2 was seen on this CPU.
            unsafe { transpose_avx2(src, ss, nr, nc, dst, ds) }
        }
        _ => transpose_body(src, ss, nr, nc, dst, ds),
    }
}

/// `transpose_body` for AVX2: its 8 x 8 tiles in registers (8 loads, the usual unpack /
/// shuffle / 128-bit permute sequence, 8 stores), the edges as in `transpose_body`. The
/// compiler does not find this shuffle sequence in the portable code, whose tiles go through
/// memory one value at a time (a seventh of the product's time on SmolLM2's shapes).
///
/// # Safety
/// The CPU must support AVX2 (the intrinsics' only requirement: loads and stores go through
/// bounds-checked slices and `bytemuck` casts).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_avx2(src: &[f32], ss: usize, nr: usize, nc: usize, dst: &mut [f32], ds: usize) {
    use std::arch::x86_64::{
        __m256, _mm256_permute2f128_ps, _mm256_setzero_ps, _mm256_shuffle_ps, _mm256_unpackhi_ps,
        _mm256_unpacklo_ps,
    };
    let (fr, fc) = (nr / 8 * 8, nc / 8 * 8);
    for i0 in (0..fr).step_by(8) {
        for j0 in (0..fc).step_by(8) {
            let mut r = [_mm256_setzero_ps(); 8];
            for (i, ri) in r.iter_mut().enumerate() {
                let row: [f32; 8] = *src[(i0 + i) * ss + j0..].first_chunk().expect("inside src");
                *ri = bytemuck::cast(row);
            }
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let c: [__m256; 8] = [
                _mm256_permute2f128_ps::<0x20>(s0, s4),
                _mm256_permute2f128_ps::<0x20>(s1, s5),
                _mm256_permute2f128_ps::<0x20>(s2, s6),
                _mm256_permute2f128_ps::<0x20>(s3, s7),
                _mm256_permute2f128_ps::<0x31>(s0, s4),
                _mm256_permute2f128_ps::<0x31>(s1, s5),
                _mm256_permute2f128_ps::<0x31>(s2, s6),
                _mm256_permute2f128_ps::<0x31>(s3, s7),
            ];
            for (j, cj) in c.into_iter().enumerate() {
                let col: [f32; 8] = bytemuck::cast(cj);
                dst[(j0 + j) * ds + i0..][..8].copy_from_slice(&col);
            }
        }
    }
    transpose_edges(src, ss, nr, nc, dst, ds);
}

/// `dst[j ds + i] = src[i ss + j]` for `i < nr`, `j < nc`: 8 x 8 tiles, then the edges.
#[inline(always)]
fn transpose_body(src: &[f32], ss: usize, nr: usize, nc: usize, dst: &mut [f32], ds: usize) {
    let (fr, fc) = (nr / 8 * 8, nc / 8 * 8);
    for i0 in (0..fr).step_by(8) {
        for j0 in (0..fc).step_by(8) {
            for j in 0..8 {
                for i in 0..8 {
                    dst[(j0 + j) * ds + i0 + i] = src[(i0 + i) * ss + j0 + j];
                }
            }
        }
    }
    transpose_edges(src, ss, nr, nc, dst, ds);
}

/// The part of a transpose outside its full 8 x 8 tiles, one value at a time.
#[inline(always)]
fn transpose_edges(src: &[f32], ss: usize, nr: usize, nc: usize, dst: &mut [f32], ds: usize) {
    let (fr, fc) = (nr / 8 * 8, nc / 8 * 8);
    for i in 0..nr {
        for j in if i < fr { fc } else { 0 }..nc {
            dst[j * ds + i] = src[i * ss + j];
        }
    }
}

/// The portable copy of the loop.
fn rows_portable(s: &SparseRows, r0: usize, xp: &[f32], width: usize, yb: &mut [f32]) {
    rows_body(s, r0, xp, width, yb);
}

/// The AVX2 copy of the loop.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2(s: &SparseRows, r0: usize, xp: &[f32], width: usize, yb: &mut [f32]) {
    rows_body(s, r0, xp, width, yb);
}

/// `yb[r][..width] = sum over the nonzeros (k, w) of row r0 + r: w xp[k][..width]`, one column
/// block after the other (each block's slice of `xp` stays in L1 while the rows go by).
/// `width` is a multiple of `LANE` up to `PANEL`: it is done in chunks of 64, 32, 16 and 8
/// tokens, each with its accumulators in registers.
#[inline(always)]
fn rows_body(s: &SparseRows, r0: usize, xp: &[f32], width: usize, yb: &mut [f32]) {
    for (b, k0) in (0..s.cols).step_by(KB).enumerate() {
        let xb = &xp[k0 * width..s.cols.min(k0 + KB) * width];
        let st = &s.starts[b * s.rows + r0..];
        let first = b == 0;
        for (r, out) in yb.chunks_exact_mut(width).enumerate() {
            let (a, e) = (st[r] as usize, st[r + 1] as usize);
            if a == e {
                if first {
                    out.fill(0.0);
                }
                continue;
            }
            let (ri, rv) = (&s.col_in_block[a..e], &s.values[a..e]);
            let mut c0 = 0;
            while width - c0 >= 64 {
                chunk::<64>(ri, rv, xb, width, &mut out[c0..c0 + 64], c0, first);
                c0 += 64;
            }
            if width - c0 >= 32 {
                chunk::<32>(ri, rv, xb, width, &mut out[c0..c0 + 32], c0, first);
                c0 += 32;
            }
            if width - c0 >= 16 {
                chunk::<16>(ri, rv, xb, width, &mut out[c0..c0 + 16], c0, first);
                c0 += 16;
            }
            if width - c0 >= 8 {
                chunk::<8>(ri, rv, xb, width, &mut out[c0..c0 + 8], c0, first);
            }
        }
    }
}

/// `out[..W] += sum over (k, w) in (ri, rv): w xb[k width + c0 ..][..W]`, in W accumulators
/// (`=` for the first column block: `out` is not initialised before).
#[inline(always)]
fn chunk<const W: usize>(
    ri: &[u8],
    rv: &[f32],
    xb: &[f32],
    width: usize,
    out: &mut [f32],
    c0: usize,
    first: bool,
) {
    let mut acc = [0f32; W];
    if !first {
        acc.copy_from_slice(out);
    }
    for (&k, &w) in ri.iter().zip(rv) {
        let xs: &[f32; W] = xb[k as usize * width + c0..]
            .first_chunk()
            .expect("column inside the block");
        for i in 0..W {
            acc[i] += w * xs[i];
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
        assert_eq!(s.starts, vec![0, 1, 4]);
        assert_eq!(s.col_in_block, vec![2, 0, 1, 2]);
        assert!((s.density() - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(s.bytes(), 3 * 4 + 4 + 4 * 4);
    }

    #[test]
    fn column_blocks() {
        // 2 x 130: three blocks (64, 64, 2 columns); row 0 has columns 0, 63, 64, 129,
        // row 1 only column 100.
        let cols = 130;
        let mut w = vec![0f32; 2 * cols];
        for (i, k) in [0, 63, 64, 129].into_iter().enumerate() {
            w[k] = i as f32 + 1.0;
        }
        w[cols + 100] = 5.0;
        let s = SparseRows::from_dense(&w, 2, cols).unwrap();
        // (block, row) order: (0,0) (0,1) (1,0) (1,1) (2,0) (2,1).
        assert_eq!(s.starts, vec![0, 2, 2, 3, 4, 5, 5]);
        assert_eq!(s.col_in_block, vec![0, 63, 0, 36, 1]);
        assert_eq!(s.values, vec![1.0, 2.0, 3.0, 5.0, 4.0]);
        let x: Vec<f32> = (0..cols).map(|k| k as f32).collect();
        let y = s.matmul_t(&x, 1).unwrap();
        assert_eq!(y, vec![63.0 * 2.0 + 64.0 * 3.0 + 129.0 * 4.0, 500.0]);
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
        let mut y = [0f32; 5];
        assert!(s.matmul_t_into(&[1.0; 6], 2, &mut y).is_err());
        let mut y = [9f32; 4];
        s.matmul_t_into(&[1.0; 6], 2, &mut y).unwrap();
        assert_eq!(y, [3.0; 4]);
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
        for k in [Kernel::Portable, Kernel::Avx2] {
            if k.is_available() {
                let mut y = [f32::NAN; 6];
                s.matmul_t_with(&x, 2, &mut y, k).unwrap();
                assert_eq!(y, [7.0, 0.0, -2.0, 16.0, 0.0, -5.0], "{k:?}");
            }
        }
    }
}
