//! The GPU side of the transformer forward pass: linear, RMSNorm, RoPE, causal attention,
//! SwiGLU and the residual add, each a WGSL kernel whose CPU twin is in `cpu_forward`.
//!
//! Shapes (as in `model::llama`): B windows of T tokens, N = B T rows, C hidden, H query
//! heads, KV key/value heads, D head dim, F FFN width. Every tensor is a `GpuTensor` (f32,
//! row-major; the kernels view it as `[rows, cols]`, rows = all dims but the last); q, k, v
//! and the attention output are token-major `(N, heads D)` = (B, T, heads, D), the layout
//! the linear layers write, so no transpose is ever needed on the GPU.
//!
//! Each kernel is a method of the one `Recorder` (`compute::recorder`), which records it
//! into the current command buffer with its output from the buffer pool; nothing is
//! submitted until a result is read back, and errors come back from that submission as
//! `LabError::GpuFailed`.

use bytemuck::{Pod, Zeroable};

use super::gpu::{GpuMatrix, Shader};
use super::pool::DType;
pub use super::recorder::Recorder;
use super::recorder::{as_u32, flat_grid};
use crate::{LabError, Result};

pub const MATMUL: Shader = Shader {
    name: "matmul.wgsl",
    source: include_str!("../../shaders/matmul.wgsl"),
};
pub const NORM: Shader = Shader {
    name: "norm.wgsl",
    source: include_str!("../../shaders/norm.wgsl"),
};
pub const NLL: Shader = Shader {
    name: "nll.wgsl",
    source: include_str!("../../shaders/nll.wgsl"),
};
pub const ROPE: Shader = Shader {
    name: "rope.wgsl",
    source: include_str!("../../shaders/rope.wgsl"),
};
pub const ATTENTION: Shader = Shader {
    name: "attention.wgsl",
    source: include_str!("../../shaders/attention.wgsl"),
};
pub const ELEMENTWISE: Shader = Shader {
    name: "elementwise.wgsl",
    source: include_str!("../../shaders/elementwise.wgsl"),
};

/// Edge of the output tile one matmul workgroup computes (`TILE` in matmul.wgsl).
const MATMUL_TILE: usize = 64;
/// Invocations per workgroup of the flat (elementwise, RoPE) and per-row kernels.
const WG: usize = 256;
/// Most workgroups along one dispatch dimension (WebGPU's default limit).
const MAX_GROUPS: usize = 65535;
/// Largest head dim the attention kernel takes (4 output dims per invocation, 64 of them).
pub const MAX_HEAD_DIM: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LinearParams {
    n: u32,
    k: u32,
    o: u32,
    /// bit 0: add the bias; bit 1: accumulate into y.
    flags: u32,
    x_row: u32,
    x_k: u32,
    w_row: u32,
    w_k: u32,
}

/// One operand of `Recorder::matmul_strided`: element (r, k) of the logical matrix sits at
/// `r row + k inner` in `t` (a transpose is only other strides).
#[derive(Clone, Copy)]
pub struct MatmulOperand<'t> {
    pub t: &'t GpuMatrix,
    pub row: usize,
    pub inner: usize,
}

impl<'t> MatmulOperand<'t> {
    /// `t` (rows, K) row-major as it is.
    pub fn plain(t: &'t GpuMatrix) -> Self {
        MatmulOperand {
            t,
            row: t.cols(),
            inner: 1,
        }
    }

    /// `t^T`: a (K, rows) tensor read as (rows, K).
    pub fn transposed(t: &'t GpuMatrix) -> Self {
        MatmulOperand {
            t,
            row: 1,
            inner: t.cols(),
        }
    }

    /// Checks that `rows` x `k` elements at these strides lie inside the tensor.
    fn check(&self, what: &str, rows: usize, k: usize) -> Result<()> {
        if rows == 0 || k == 0 {
            return Ok(());
        }
        let last = (rows - 1) * self.row + (k - 1) * self.inner;
        if last >= self.t.len() {
            return Err(LabError::invalid(format!(
                "matmul: {what} read as [{rows}, {k}] with strides ({}, {}) overruns its {} values",
                self.row,
                self.inner,
                self.t.len()
            )));
        }
        as_u32("matmul index", last)?;
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RowsParams {
    rows: u32,
    cols: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct NormParams {
    pub(super) rows: u32,
    pub(super) cols: u32,
    pub(super) inv_c: f32,
    pub(super) eps: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RopeParams {
    batch: u32,
    heads: u32,
    t: u32,
    d: u32,
    stride_b: u32,
    stride_h: u32,
    stride_t: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttentionParams {
    t: u32,
    heads: u32,
    kv_heads: u32,
    d: u32,
    scale: f32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct FlatParams {
    len: u32,
    _pad: [u32; 3],
}

/// Where element (b, h, t, d) of a (B, heads, T, D) tensor sits: b stride_b + h stride_h +
/// t stride_t + d.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLayout {
    pub batch: usize,
    pub heads: usize,
    pub t: usize,
    pub d: usize,
    pub stride_b: usize,
    pub stride_h: usize,
    pub stride_t: usize,
}

impl HeadLayout {
    /// Contiguous (B, heads, T, D).
    pub fn heads_major(batch: usize, heads: usize, t: usize, d: usize) -> Self {
        HeadLayout {
            batch,
            heads,
            t,
            d,
            stride_b: heads * t * d,
            stride_h: t * d,
            stride_t: d,
        }
    }

    /// (B, T, heads, D): the output of a linear layer, (N, heads D).
    pub fn token_major(batch: usize, heads: usize, t: usize, d: usize) -> Self {
        HeadLayout {
            batch,
            heads,
            t,
            d,
            stride_b: t * heads * d,
            stride_h: d,
            stride_t: heads * d,
        }
    }

    /// Values a tensor with this layout spans.
    pub fn len(&self) -> usize {
        self.batch * self.heads * self.t * self.d
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flat offset of (b, h, t, 0).
    #[inline]
    pub fn at(&self, b: usize, h: usize, t: usize) -> usize {
        b * self.stride_b + h * self.stride_h + t * self.stride_t
    }
}

/// The sizes of one causal attention call: B windows of T tokens, H query heads reading
/// KV key/value heads (H a multiple of KV), head dim D.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub d: usize,
}

impl AttentionShape {
    pub fn check(&self) -> Result<()> {
        let s = self;
        if s.batch == 0 || s.t == 0 || s.heads == 0 || s.kv_heads == 0 || s.d == 0 {
            return Err(LabError::invalid(format!(
                "attention needs non-zero sizes; found B {} T {} H {} KV {} D {}",
                s.batch, s.t, s.heads, s.kv_heads, s.d
            )));
        }
        if !s.heads.is_multiple_of(s.kv_heads) {
            return Err(LabError::invalid(format!(
                "{} query heads cannot share {} key/value heads evenly",
                s.heads, s.kv_heads
            )));
        }
        if s.d > MAX_HEAD_DIM {
            return Err(LabError::invalid(format!(
                "the attention kernel takes head dims up to {MAX_HEAD_DIM}; found {}",
                s.d
            )));
        }
        if s.t > MAX_GROUPS || s.heads > MAX_GROUPS || s.batch > MAX_GROUPS {
            return Err(LabError::invalid(format!(
                "attention over B {} T {} H {} is too large for one dispatch",
                s.batch, s.t, s.heads
            )));
        }
        Ok(())
    }
}

impl Recorder<'_> {
    /// y = x W^T (+ b): x (N, K), W (O, K), b (O) -> y (N, O). Kernel: matmul.wgsl.
    pub fn linear(
        &mut self,
        x: &GpuMatrix,
        w: &GpuMatrix,
        bias: Option<&GpuMatrix>,
    ) -> Result<GpuMatrix> {
        if x.cols() != w.cols() {
            return Err(LabError::invalid(format!(
                "linear: x is [{}, {}] but W is [{}, {}]; their columns must agree",
                x.rows(),
                x.cols(),
                w.rows(),
                w.cols()
            )));
        }
        if let Some(b) = bias {
            if b.len() != w.rows() {
                return Err(LabError::invalid(format!(
                    "linear: the bias has {} values for {} outputs",
                    b.len(),
                    w.rows()
                )));
            }
        }
        let mut shape = x.dims().to_vec();
        match shape.last_mut() {
            Some(last) => *last = w.rows(),
            None => shape.push(w.rows()),
        }
        let y = self.output(&shape, DType::F32)?;
        self.matmul_strided(
            &y,
            MatmulOperand::plain(x),
            MatmulOperand::plain(w),
            bias,
            (x.rows(), x.cols(), w.rows()),
            false,
        )?;
        Ok(y)
    }

    /// y (N, O) = x W^T (+ b), or y += x W^T when `accumulate`, with x (N, K) and W (O, K)
    /// read through strides, so the training backward's dX = dY W (W read transposed) and
    /// dW = dY^T X (both read transposed) run on the linear layer's kernel without a
    /// transpose copy. `nko` = (N, K, O). Kernel: matmul.wgsl.
    pub fn matmul_strided(
        &mut self,
        y: &GpuMatrix,
        x: MatmulOperand,
        w: MatmulOperand,
        bias: Option<&GpuMatrix>,
        nko: (usize, usize, usize),
        accumulate: bool,
    ) -> Result<()> {
        let (n, k, o) = nko;
        x.check("x", n, k)?;
        w.check("W", o, k)?;
        if y.len() != n * o {
            return Err(LabError::invalid(format!(
                "matmul: the output has {} values, expected [{n}, {o}]",
                y.len()
            )));
        }
        let (gx, gy) = (
            o.div_ceil(MATMUL_TILE).max(1),
            n.div_ceil(MATMUL_TILE).max(1),
        );
        if gx > MAX_GROUPS || gy > MAX_GROUPS {
            return Err(LabError::invalid(format!(
                "matmul: [{n}, {k}] x [{o}, {k}]^T is too large for one dispatch"
            )));
        }
        if y.is_empty() {
            return Ok(());
        }
        let p = LinearParams {
            n: as_u32("matmul rows", n)?,
            k: as_u32("matmul inner dim", k)?,
            o: as_u32("matmul outputs", o)?,
            flags: bias.is_some() as u32 | (accumulate as u32) << 1,
            x_row: as_u32("matmul stride", x.row)?,
            x_k: as_u32("matmul stride", x.inner)?,
            w_row: as_u32("matmul stride", w.row)?,
            w_k: as_u32("matmul stride", w.inner)?,
        };
        as_u32("matmul values", y.len())?;
        let dummy = self.dummy()?;
        let b = bias.unwrap_or(&dummy);
        self.dispatch(
            &MATMUL,
            "linear",
            &[x.t, w.t, b, y],
            &p,
            [gx as u32, gy as u32, 1],
        )
    }

    /// Each row of x (rows, C) -> x / sqrt(mean(x^2) + eps) * w, w (C). Kernel: norm.wgsl.
    pub fn rms_norm(&mut self, x: &GpuMatrix, w: &GpuMatrix, eps: f32) -> Result<GpuMatrix> {
        if w.len() != x.cols() {
            return Err(LabError::invalid(format!(
                "rms_norm: {} weights for rows of {}",
                w.len(),
                x.cols()
            )));
        }
        let y = self.output(x.dims(), DType::F32)?;
        let p = NormParams {
            rows: as_u32("rms_norm rows", x.rows())?,
            cols: as_u32("rms_norm width", x.cols())?,
            inv_c: 1.0 / x.cols() as f32,
            eps,
        };
        if !y.is_empty() {
            let groups = flat_grid(x.rows(), 1)?;
            self.dispatch(&NORM, "rms_norm", &[x, w, &y], &p, groups)?;
        }
        Ok(y)
    }

    /// Each row's negative log-likelihood of its target, (rows, 1): log-sum-exp of the row
    /// of logits minus the target's logit; `targets` (rows, 1) holds token ids as f32.
    /// Kernel: nll.wgsl.
    pub fn token_nll(&mut self, logits: &GpuMatrix, targets: &GpuMatrix) -> Result<GpuMatrix> {
        if targets.len() != logits.rows() || logits.cols() == 0 || logits.cols() > 1 << 24 {
            return Err(LabError::invalid(format!(
                "token_nll: {} targets for {} rows of {} logits",
                targets.len(),
                logits.rows(),
                logits.cols()
            )));
        }
        let y = self.output(&[logits.rows(), 1], DType::F32)?;
        let p = RowsParams {
            rows: as_u32("token_nll rows", logits.rows())?,
            cols: as_u32("token_nll width", logits.cols())?,
        };
        if !y.is_empty() {
            let groups = flat_grid(logits.rows(), 1)?;
            self.dispatch(&NLL, "token_nll", &[logits, targets, &y], &p, groups)?;
        }
        Ok(y)
    }

    /// Rotates x in place (half-split RoPE); `cos`, `sin` are (T, D) tables from the host.
    /// Kernel: rope.wgsl.
    pub fn rope(
        &mut self,
        x: &GpuMatrix,
        layout: HeadLayout,
        cos: &GpuMatrix,
        sin: &GpuMatrix,
    ) -> Result<()> {
        let l = layout;
        if !l.d.is_multiple_of(2) {
            return Err(LabError::invalid(format!(
                "rope: head dim {} is odd; RoPE needs pairs",
                l.d
            )));
        }
        let table = l.t * l.d;
        if cos.len() < table || sin.len() < table {
            return Err(LabError::invalid(format!(
                "rope: the tables cover {} positions, the tensor has {}",
                cos.len().min(sin.len()) / l.d.max(1),
                l.t
            )));
        }
        let last = if l.is_empty() {
            0
        } else {
            l.at(l.batch - 1, l.heads - 1, l.t - 1) + l.d
        };
        if last > x.len() {
            return Err(LabError::invalid(format!(
                "rope: the layout {l:?} reaches value {last} of a tensor of {}",
                x.len()
            )));
        }
        let pairs = l.len() / 2;
        if pairs == 0 {
            return Ok(());
        }
        let p = RopeParams {
            batch: as_u32("rope batch", l.batch)?,
            heads: as_u32("rope heads", l.heads)?,
            t: as_u32("rope tokens", l.t)?,
            d: as_u32("rope head dim", l.d)?,
            stride_b: as_u32("rope stride", l.stride_b)?,
            stride_h: as_u32("rope stride", l.stride_h)?,
            stride_t: as_u32("rope stride", l.stride_t)?,
            _pad: 0,
        };
        as_u32("rope values", last)?;
        let groups = flat_grid(pairs, WG)?;
        self.dispatch(&ROPE, "rope", &[x, cos, sin], &p, groups)
    }

    /// Causal grouped-query attention: q (N, H D), k and v (N, KV D), token-major ->
    /// a (N, H D). Kernel: attention.wgsl.
    pub fn causal_attention(
        &mut self,
        q: &GpuMatrix,
        k: &GpuMatrix,
        v: &GpuMatrix,
        s: AttentionShape,
    ) -> Result<GpuMatrix> {
        s.check()?;
        let n = s.batch * s.t;
        let want = |m: &GpuMatrix, heads: usize, what: &str| -> Result<()> {
            if m.len() != n * heads * s.d {
                return Err(LabError::invalid(format!(
                    "attention: {what} is [{}, {}], expected [{n}, {}]",
                    m.rows(),
                    m.cols(),
                    heads * s.d
                )));
            }
            Ok(())
        };
        want(q, s.heads, "q")?;
        want(k, s.kv_heads, "k")?;
        want(v, s.kv_heads, "v")?;
        as_u32("attention values", q.len())?;
        let a = self.output(&[n, s.heads * s.d], DType::F32)?;
        let p = AttentionParams {
            t: s.t as u32,
            heads: s.heads as u32,
            kv_heads: s.kv_heads as u32,
            d: s.d as u32,
            scale: (1.0 / (s.d as f64).sqrt()) as f32,
            _pad: [0; 3],
        };
        self.dispatch(
            &ATTENTION,
            "causal_attention",
            &[q, k, v, &a],
            &p,
            [s.t as u32, s.heads as u32, s.batch as u32],
        )?;
        Ok(a)
    }

    fn elementwise(
        &mut self,
        entry: &'static str,
        a: &GpuMatrix,
        b: &GpuMatrix,
    ) -> Result<GpuMatrix> {
        if a.dims() != b.dims() {
            return Err(LabError::invalid(format!(
                "{entry}: shapes {:?} and {:?} differ",
                a.dims(),
                b.dims()
            )));
        }
        let out = self.output(a.dims(), DType::F32)?;
        if !out.is_empty() {
            let p = FlatParams {
                len: as_u32(entry, a.len())?,
                _pad: [0; 3],
            };
            let groups = flat_grid(a.len(), WG)?;
            self.dispatch(&ELEMENTWISE, entry, &[a, b, &out], &p, groups)?;
        }
        Ok(out)
    }

    /// silu(g) * u, elementwise (the SwiGLU FFN's hidden state).
    pub fn swiglu(&mut self, g: &GpuMatrix, u: &GpuMatrix) -> Result<GpuMatrix> {
        self.elementwise("swiglu", g, u)
    }

    /// a + b, elementwise (the residual stream).
    pub fn residual_add(&mut self, a: &GpuMatrix, b: &GpuMatrix) -> Result<GpuMatrix> {
        self.elementwise("residual_add", a, b)
    }
}
