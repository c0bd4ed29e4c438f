//! The training kernels on the GPU: the WGSL twins of `train::ops`' paired `*_forward` /
//! `*_backward` functions, each a method of the one `Recorder` (so a whole training step can
//! be recorded into one submission, its tensors taken from the context's buffer pool).
//!
//! Shapes as in `train::ops`: B = batch, T = sequence length, N = B T rows, C channels,
//! H query heads, KV key/value heads, D head dim, F FFN width, V vocabulary. Every tensor is
//! a row-major f32 `GpuTensor` (token ids u32); linears' weights are (out, in).
//!
//! Conventions, as the twins':
//! - a backward *adds* into its gradients (`+=`): the caller zeroes them once per step;
//! - every output element is written by exactly one invocation that sums its terms in a fixed
//!   order, so there are no float atomics and every run gives the same bits (the embedding's
//!   scatter-add walks a host-built grouping of positions by token; weight gradients and
//!   norms are reductions in a fixed order);
//! - transcendentals (exp, log, sqrt) are WGSL's, a few ulp from the twins' libm, so the
//!   parity tests (tests/kernels_train.rs) compare within stated relative tolerances.
//!
//! Kernels reused from the forward pass: `linear` / `matmul_strided` (matmul.wgsl, also the
//! three products of a linear's backward), `swiglu` and `residual_add` (elementwise.wgsl),
//! `accumulate` (buffer_ops.wgsl, the residual's backward).

use bytemuck::{Pod, Zeroable};

use super::forward::{MatmulOperand, NormParams};
use super::gpu::Shader;
use super::pool::{DType, GpuTensor};
use super::recorder::{as_u32, flat_grid, Arg, Recorder};
use crate::train::ops::{AdamConfig, AttnDims, RMS_EPS};
use crate::{LabError, Result};

pub const EMBEDDING: Shader = Shader {
    name: "embedding.wgsl",
    source: include_str!("../../shaders/embedding.wgsl"),
};
pub const RMSNORM_TRAIN: Shader = Shader {
    name: "rmsnorm_train.wgsl",
    source: include_str!("../../shaders/rmsnorm_train.wgsl"),
};
pub const SWIGLU_BACKWARD: Shader = Shader {
    name: "swiglu_backward.wgsl",
    source: include_str!("../../shaders/swiglu_backward.wgsl"),
};
pub const ROPE_TRAIN: Shader = Shader {
    name: "rope_train.wgsl",
    source: include_str!("../../shaders/rope_train.wgsl"),
};
pub const ATTENTION_TRAIN: Shader = Shader {
    name: "attention_train.wgsl",
    source: include_str!("../../shaders/attention_train.wgsl"),
};
pub const XENT: Shader = Shader {
    name: "xent.wgsl",
    source: include_str!("../../shaders/xent.wgsl"),
};
pub const OPTIMIZER: Shader = Shader {
    name: "optimizer.wgsl",
    source: include_str!("../../shaders/optimizer.wgsl"),
};

/// Invocations per workgroup of the flat kernels.
const WG: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct EmbeddingParams {
    rows: u32,
    cols: u32,
    vocab: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct FlatParams {
    len: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RopeParams {
    rows: u32,
    t: u32,
    d: u32,
    width: u32,
    backward: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttParams {
    batch: u32,
    t: u32,
    heads: u32,
    kv_heads: u32,
    d: u32,
    scale: f32,
    accumulate: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct XentParams {
    rows: u32,
    cols: u32,
    inv_n: f32,
    mode: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SumParams {
    len: u32,
    offset: u32,
    slot: u32,
    accumulate: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ClipParams {
    count: u32,
    clip: f32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AdamParams {
    len: u32,
    step_size: f32,
    bc2_sqrt: f32,
    b1: f32,
    b2: f32,
    one_minus_b1: f32,
    one_minus_b2: f32,
    eps: f32,
    decay: f32,
    decay_on: u32,
    _pad: [u32; 2],
}

/// The embedding backward's grouping of a batch's positions by token, the CPU side of its
/// deterministic scatter-add: `[starts (V + 1), positions (N)]`, positions of each token in
/// increasing order (a counting sort, as `train::ops::embedding_backward` groups them). The
/// batch comes from the host every step, so building it here is O(N + V) with no GPU
/// atomics. An id outside the vocabulary is an error naming it.
pub fn embedding_index(tokens: &[u32], vocab: usize) -> Result<Vec<u32>> {
    let mut start = vec![0u32; vocab + 1];
    for (n, &t) in tokens.iter().enumerate() {
        if t as usize >= vocab {
            return Err(LabError::invalid(format!(
                "token {t} at position {n} is outside the vocabulary of {vocab}"
            )));
        }
        start[t as usize + 1] += 1;
    }
    for i in 0..vocab {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut out = start;
    out.resize(vocab + 1 + tokens.len(), 0);
    for (n, &t) in tokens.iter().enumerate() {
        let at = &mut fill[t as usize];
        out[vocab + 1 + *at as usize] = as_u32("embedding position", n)?;
        *at += 1;
    }
    Ok(out)
}

/// What `Recorder::lm_head_xent` leaves on the GPU.
pub struct XentOutput {
    /// (N): each predicted token's -log p[target].
    pub losses: GpuTensor,
    /// [1]: the mean of `losses` (the training loss).
    pub mean: GpuTensor,
    /// (N, V): the probabilities (forward only) or dlogits = (p - onehot) / N (backward).
    pub logits: GpuTensor,
}

fn same_len(what: &str, a: &GpuTensor, b: &GpuTensor) -> Result<()> {
    if a.len() != b.len() {
        return Err(LabError::invalid(format!(
            "{what}: shapes {:?} and {:?} differ in size",
            a.dims(),
            b.dims()
        )));
    }
    Ok(())
}

fn want_len(what: &str, t: &GpuTensor, len: usize) -> Result<()> {
    if t.len() != len {
        return Err(LabError::invalid(format!(
            "{what}: a tensor of shape {:?} has {} values, expected {len}",
            t.dims(),
            t.len()
        )));
    }
    Ok(())
}

/// Checks an attention call's sizes and returns N = B T.
fn attn_rows(dims: &AttnDims) -> Result<usize> {
    let d = dims;
    if d.b == 0 || d.t == 0 || d.heads == 0 || d.kv_heads == 0 || d.head_dim == 0 {
        return Err(LabError::invalid(format!(
            "attention needs non-zero sizes: {d:?}"
        )));
    }
    if !d.heads.is_multiple_of(d.kv_heads) {
        return Err(LabError::invalid(format!(
            "{} query heads cannot share {} key/value heads evenly",
            d.heads, d.kv_heads
        )));
    }
    as_u32("attention scores", d.b * d.heads * d.t * d.t)?;
    Ok(d.b * d.t)
}

fn att_params(dims: &AttnDims, scale: f32, accumulate: bool) -> AttParams {
    AttParams {
        batch: dims.b as u32,
        t: dims.t as u32,
        heads: dims.heads as u32,
        kv_heads: dims.kv_heads as u32,
        d: dims.head_dim as u32,
        scale,
        accumulate: accumulate as u32,
        _pad: 0,
    }
}

impl Recorder<'_> {
    // -----------------------------------------------------------------------------------
    // Embedding

    /// out (N, C) = wte (V, C) [tokens (N)], tokens a u32 tensor. Kernel: embedding.wgsl.
    pub fn embedding_forward(&mut self, tokens: &GpuTensor, wte: &GpuTensor) -> Result<GpuTensor> {
        if tokens.dtype() != DType::U32 {
            return Err(LabError::invalid(
                "embedding: the token ids must be a u32 tensor",
            ));
        }
        let (v, c) = wte.shape();
        let n = tokens.len();
        let out = self.output(&[n, c], DType::F32)?;
        if out.is_empty() {
            return Ok(out);
        }
        let p = EmbeddingParams {
            rows: as_u32("embedding rows", n)?,
            cols: as_u32("embedding width", c)?,
            vocab: as_u32("embedding vocabulary", v)?,
            _pad: 0,
        };
        as_u32("embedding values", n * c)?;
        let groups = flat_grid(n * c, WG)?;
        self.dispatch(
            &EMBEDDING,
            "embedding_forward",
            &[tokens, wte, &out],
            &p,
            groups,
        )?;
        Ok(out)
    }

    /// dwte (V, C) += the scatter of dout (N, C) by token, deterministic: `index` is
    /// `embedding_index(tokens, V)` uploaded as u32. Kernel: embedding.wgsl.
    pub fn embedding_backward(
        &mut self,
        dwte: &GpuTensor,
        dout: &GpuTensor,
        index: &GpuTensor,
    ) -> Result<()> {
        let (v, c) = dwte.shape();
        let n = dout.rows();
        if dout.cols() != c || index.len() != v + 1 + n || index.dtype() != DType::U32 {
            return Err(LabError::invalid(format!(
                "embedding backward: dwte {:?}, dout {:?} and an index of {} ids do not fit \
                 (expected [{v}, C], [N, C] and V + 1 + N)",
                dwte.dims(),
                dout.dims(),
                index.len()
            )));
        }
        if dwte.is_empty() {
            return Ok(());
        }
        let p = EmbeddingParams {
            rows: as_u32("embedding rows", n)?,
            cols: as_u32("embedding width", c)?,
            vocab: as_u32("embedding vocabulary", v)?,
            _pad: 0,
        };
        as_u32("embedding values", n.max(v) * c)?;
        let groups = flat_grid(v * c, WG)?;
        self.dispatch(
            &EMBEDDING,
            "embedding_backward",
            &[index, dout, dwte],
            &p,
            groups,
        )
    }

    // -----------------------------------------------------------------------------------
    // RMSNorm (eps = train::ops::RMS_EPS)

    /// out (N, C) = x rstd w and rstd (N) = 1 / sqrt(mean(x^2) + eps), kept for the
    /// backward. Kernel: rmsnorm_train.wgsl.
    pub fn rmsnorm_forward(
        &mut self,
        x: &GpuTensor,
        w: &GpuTensor,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let (n, c) = x.shape();
        want_len("rmsnorm weight", w, c)?;
        let out = self.output(x.dims(), DType::F32)?;
        let rstd = self.output(&[n], DType::F32)?;
        if out.is_empty() {
            return Ok((out, rstd));
        }
        let p = norm_params(n, c)?;
        let groups = flat_grid(n, 1)?;
        self.dispatch(
            &RMSNORM_TRAIN,
            "rmsnorm_forward",
            &[x, w, &out, &rstd],
            &p,
            groups,
        )?;
        Ok((out, rstd))
    }

    /// dx += rstd (dout w - x rstd^2 mean(dout w x)); dw += sum over rows, in order, of
    /// dout x rstd. Kernel: rmsnorm_train.wgsl (`rmsnorm_backward`, `rmsnorm_weight_grad`).
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_backward(
        &mut self,
        dx: &GpuTensor,
        dw: &GpuTensor,
        dout: &GpuTensor,
        x: &GpuTensor,
        w: &GpuTensor,
        rstd: &GpuTensor,
    ) -> Result<()> {
        let (n, c) = x.shape();
        want_len("rmsnorm weight", w, c)?;
        want_len("rmsnorm weight gradient", dw, c)?;
        want_len("rmsnorm rstd", rstd, n)?;
        same_len("rmsnorm backward dx", dx, x)?;
        same_len("rmsnorm backward dout", dout, x)?;
        if x.is_empty() {
            return Ok(());
        }
        let p = norm_params(n, c)?;
        self.dispatch(
            &RMSNORM_TRAIN,
            "rmsnorm_backward",
            &[dout, x, w, rstd, dx],
            &p,
            flat_grid(n, 1)?,
        )?;
        self.dispatch(
            &RMSNORM_TRAIN,
            "rmsnorm_weight_grad",
            &[dout, x, rstd, dw],
            &p,
            flat_grid(c, WG)?,
        )
    }

    // -----------------------------------------------------------------------------------
    // Residual: the forward is `residual_add`

    /// da += dout; db += dout (buffer_ops.wgsl `accumulate`, scale 1: exact adds).
    pub fn residual_backward(
        &mut self,
        da: &GpuTensor,
        db: &GpuTensor,
        dout: &GpuTensor,
    ) -> Result<()> {
        self.accumulate(da, dout, 1.0)?;
        self.accumulate(db, dout, 1.0)
    }

    // -----------------------------------------------------------------------------------
    // Linear (matmul.wgsl): the forward is `linear(inp, weight, None)`

    /// dinp (N, I) += dout (N, O) weight (O, I); dweight (O, I) += dout^T inp (N, I):
    /// the linear layer's kernel with transposed strides and accumulation.
    pub fn matmul_backward(
        &mut self,
        dinp: &GpuTensor,
        dweight: &GpuTensor,
        dout: &GpuTensor,
        inp: &GpuTensor,
        weight: &GpuTensor,
    ) -> Result<()> {
        let (o, i) = weight.shape();
        let n = inp.rows();
        if inp.cols() != i || dout.len() != n * o {
            return Err(LabError::invalid(format!(
                "matmul backward: inp {:?}, weight {:?} and dout {:?} do not fit",
                inp.dims(),
                weight.dims(),
                dout.dims()
            )));
        }
        same_len("matmul backward dinp", dinp, inp)?;
        same_len("matmul backward dweight", dweight, weight)?;
        // dX (N, I) = dY (N, O) . (W^T as (I, O))^T
        self.matmul_strided(
            dinp,
            MatmulOperand {
                t: dout,
                row: o,
                inner: 1,
            },
            MatmulOperand {
                t: weight,
                row: 1,
                inner: i,
            },
            None,
            (n, o, i),
            true,
        )?;
        // dW (O, I) = (dY^T as (O, N)) . (X^T as (I, N))^T
        self.matmul_strided(
            dweight,
            MatmulOperand {
                t: dout,
                row: 1,
                inner: o,
            },
            MatmulOperand {
                t: inp,
                row: 1,
                inner: i,
            },
            None,
            (o, n, i),
            true,
        )
    }

    // -----------------------------------------------------------------------------------
    // SwiGLU: the forward is `swiglu(gate, up)`

    /// dgate += dout up s (1 + g (1 - s)); dup += dout g s, s = sigmoid(gate).
    /// Kernel: swiglu_backward.wgsl.
    pub fn swiglu_backward(
        &mut self,
        dgate: &GpuTensor,
        dup: &GpuTensor,
        dout: &GpuTensor,
        gate: &GpuTensor,
        up: &GpuTensor,
    ) -> Result<()> {
        for (what, t) in [("dgate", dgate), ("dup", dup), ("gate", gate), ("up", up)] {
            same_len(&format!("swiglu backward {what}"), t, dout)?;
        }
        if dout.is_empty() {
            return Ok(());
        }
        let p = FlatParams {
            len: as_u32("swiglu values", dout.len())?,
            _pad: [0; 3],
        };
        self.dispatch(
            &SWIGLU_BACKWARD,
            "swiglu_backward",
            &[dout, gate, up, dgate, dup],
            &p,
            flat_grid(dout.len(), WG)?,
        )
    }

    // -----------------------------------------------------------------------------------
    // RoPE, out of place; cos and sin are `train::ops::rope_table`'s (T, D/2) tables

    /// out (N, heads D) = the rotation of inp at each row's position n % T.
    /// Kernel: rope_train.wgsl.
    pub fn rope_forward(
        &mut self,
        inp: &GpuTensor,
        cos: &GpuTensor,
        sin: &GpuTensor,
        t: usize,
        head_dim: usize,
    ) -> Result<GpuTensor> {
        let out = self.output(inp.dims(), DType::F32)?;
        self.rope_rows(&out, inp, cos, sin, t, head_dim, false)?;
        Ok(out)
    }

    /// dinp += R^T dout. Kernel: rope_train.wgsl.
    pub fn rope_backward(
        &mut self,
        dinp: &GpuTensor,
        dout: &GpuTensor,
        cos: &GpuTensor,
        sin: &GpuTensor,
        t: usize,
        head_dim: usize,
    ) -> Result<()> {
        same_len("rope backward", dinp, dout)?;
        self.rope_rows(dinp, dout, cos, sin, t, head_dim, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn rope_rows(
        &mut self,
        out: &GpuTensor,
        inp: &GpuTensor,
        cos: &GpuTensor,
        sin: &GpuTensor,
        t: usize,
        head_dim: usize,
        backward: bool,
    ) -> Result<()> {
        let (n, width) = inp.shape();
        if head_dim == 0 || !head_dim.is_multiple_of(2) || width % head_dim != 0 || t == 0 {
            return Err(LabError::invalid(format!(
                "rope: rows of {width} in heads of {head_dim} (even) at T = {t} do not fit"
            )));
        }
        let table = t * head_dim / 2;
        if cos.len() < table || sin.len() < table {
            return Err(LabError::invalid(format!(
                "rope: the tables hold {} values, T = {t} positions need {table}",
                cos.len().min(sin.len())
            )));
        }
        if inp.is_empty() {
            return Ok(());
        }
        let p = RopeParams {
            rows: as_u32("rope rows", n)?,
            t: as_u32("rope tokens", t)?,
            d: as_u32("rope head dim", head_dim)?,
            width: as_u32("rope width", width)?,
            backward: backward as u32,
            _pad: [0; 3],
        };
        as_u32("rope values", inp.len())?;
        self.dispatch(
            &ROPE_TRAIN,
            "rope_rows",
            &[inp, cos, sin, out],
            &p,
            flat_grid(inp.len() / 2, WG)?,
        )
    }

    // -----------------------------------------------------------------------------------
    // Causal attention with GQA (attention_train.wgsl)

    /// (out (N, H D), att (B, H, T, T)) from q (N, H D), k and v (N, KV D), after RoPE.
    pub fn attention_forward(
        &mut self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        dims: AttnDims,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let n = attn_rows(&dims)?;
        let d = dims.head_dim;
        want_len("attention q", q, n * dims.heads * d)?;
        want_len("attention k", k, n * dims.kv_heads * d)?;
        want_len("attention v", v, n * dims.kv_heads * d)?;
        let att = self.output(&[dims.b, dims.heads, dims.t, dims.t], DType::F32)?;
        let out = self.output(&[n, dims.heads * d], DType::F32)?;
        let scale = (1.0 / (d as f64).sqrt()) as f32;
        self.att_dots(&att, q, k, &dims, scale)?;
        self.dispatch(
            &ATTENTION_TRAIN,
            "att_softmax",
            &[&att],
            &att_params(&dims, 1.0, false),
            flat_grid(dims.b * dims.heads * dims.t, WG)?,
        )?;
        self.att_mix(&out, &att, v, &dims, false)?;
        Ok((out, att))
    }

    /// dq, dk, dv += the gradients of `attention_forward` given dout (N, H D) and its att.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        &mut self,
        dq: &GpuTensor,
        dk: &GpuTensor,
        dv: &GpuTensor,
        dout: &GpuTensor,
        att: &GpuTensor,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        dims: AttnDims,
    ) -> Result<()> {
        let n = attn_rows(&dims)?;
        let d = dims.head_dim;
        for (what, t) in [("q", q), ("dq", dq), ("dout", dout)] {
            want_len(&format!("attention backward {what}"), t, n * dims.heads * d)?;
        }
        for (what, t) in [("k", k), ("v", v), ("dk", dk), ("dv", dv)] {
            want_len(
                &format!("attention backward {what}"),
                t,
                n * dims.kv_heads * d,
            )?;
        }
        want_len(
            "attention backward att",
            att,
            dims.b * dims.heads * dims.t * dims.t,
        )?;
        let datt = self.output(att.dims(), DType::F32)?;
        self.att_dots(&datt, dout, v, &dims, 1.0)?;
        let scale = (1.0 / (d as f64).sqrt()) as f32;
        self.dispatch(
            &ATTENTION_TRAIN,
            "att_softmax_backward",
            &[att, &datt],
            &att_params(&dims, scale, false),
            flat_grid(dims.b * dims.heads * dims.t, WG)?,
        )?;
        self.att_mix(dq, &datt, k, &dims, true)?;
        self.dispatch(
            &ATTENTION_TRAIN,
            "att_dkdv",
            &[&datt, att, q, dout, dk, dv],
            &att_params(&dims, 1.0, false),
            flat_grid(n * dims.kv_heads * d, WG)?,
        )
    }

    fn att_dots(
        &mut self,
        out: &GpuTensor,
        a: &GpuTensor,
        kv: &GpuTensor,
        dims: &AttnDims,
        scale: f32,
    ) -> Result<()> {
        self.dispatch(
            &ATTENTION_TRAIN,
            "att_dots",
            &[a, kv, out],
            &att_params(dims, scale, false),
            flat_grid(out.len(), WG)?,
        )
    }

    fn att_mix(
        &mut self,
        out: &GpuTensor,
        w: &GpuTensor,
        kv: &GpuTensor,
        dims: &AttnDims,
        accumulate: bool,
    ) -> Result<()> {
        as_u32("attention values", out.len())?;
        self.dispatch(
            &ATTENTION_TRAIN,
            "att_mix",
            &[w, kv, out],
            &att_params(dims, 1.0, accumulate),
            flat_grid(out.len(), WG)?,
        )
    }

    // -----------------------------------------------------------------------------------
    // LM head fused with softmax and cross-entropy (matmul.wgsl, xent.wgsl)

    /// The LM head's loss and, with `backward`, its gradients, in one recording:
    /// logits = xf (N, C) head (V, C)^T; losses (N) = -log softmax(logits)[target]. With
    /// `backward` = Some((dxf, dhead)): dlogits = (p - onehot) / N, dxf += dlogits head,
    /// dhead += dlogits^T xf.
    pub fn lm_head_xent(
        &mut self,
        xf: &GpuTensor,
        head: &GpuTensor,
        targets: &GpuTensor,
        backward: Option<(&GpuTensor, &GpuTensor)>,
    ) -> Result<XentOutput> {
        let (n, _) = xf.shape();
        let (v, _) = head.shape();
        if targets.len() != n || targets.dtype() != DType::U32 || n == 0 || v == 0 {
            return Err(LabError::invalid(format!(
                "lm head: {} u32 targets for {n} rows of {v} logits",
                targets.len()
            )));
        }
        let logits = self.linear(xf, head, None)?;
        let (losses, mean) = self.xent_logits(&logits, targets, backward.is_some())?;
        if let Some((dxf, dhead)) = backward {
            self.matmul_backward(dxf, dhead, &logits, xf, head)?;
        }
        Ok(XentOutput {
            losses,
            mean,
            logits,
        })
    }

    /// Softmax cross-entropy of logits (N, V) already computed, against u32 targets (N):
    /// (losses (N) = -log p[target], mean [1]); the logits are overwritten with the
    /// probabilities, or with `backward` by dlogits = (p - onehot) / N. Kernel: xent.wgsl
    /// (the part of `lm_head_xent` after the head's product): `xent_rows`, then `loss_mean`.
    pub fn xent_logits(
        &mut self,
        logits: &GpuTensor,
        targets: &GpuTensor,
        backward: bool,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let losses = self.xent_rows(logits, targets, backward)?;
        let mean = self.loss_mean(&losses)?;
        Ok((losses, mean))
    }

    /// `xent_logits` without the mean: losses (N) = -log p[target], the logits overwritten
    /// with p, or with `backward` by (p - onehot) / N.
    pub fn xent_rows(
        &mut self,
        logits: &GpuTensor,
        targets: &GpuTensor,
        backward: bool,
    ) -> Result<GpuTensor> {
        let (n, v) = logits.shape();
        if targets.len() != n || targets.dtype() != DType::U32 || n == 0 || v == 0 {
            return Err(LabError::invalid(format!(
                "cross-entropy: {} u32 targets for {n} rows of {v} logits",
                targets.len()
            )));
        }
        let losses = self.output(&[n], DType::F32)?;
        let p = XentParams {
            rows: as_u32("xent rows", n)?,
            cols: as_u32("xent vocabulary", v)?,
            inv_n: (1.0 / n as f64) as f32,
            mode: backward as u32,
        };
        self.dispatch(
            &XENT,
            "xent_rows",
            &[logits, targets, &losses],
            &p,
            flat_grid(n, 1)?,
        )?;
        Ok(losses)
    }

    /// [1] = (1/N) sum of losses (N), one workgroup adding in a fixed order (xent.wgsl
    /// `loss_mean`).
    pub fn loss_mean(&mut self, losses: &GpuTensor) -> Result<GpuTensor> {
        let n = losses.len();
        if n == 0 || losses.dtype() != DType::F32 {
            return Err(LabError::invalid(format!(
                "loss mean: {n} {:?} losses (expected at least one f32)",
                losses.dtype()
            )));
        }
        let p = XentParams {
            rows: as_u32("loss mean rows", n)?,
            cols: 1,
            inv_n: (1.0 / n as f64) as f32,
            mode: 0,
        };
        let mean = self.output(&[1], DType::F32)?;
        self.dispatch(&XENT, "loss_mean", &[losses, &mean], &p, [1, 1, 1])?;
        Ok(mean)
    }

    // -----------------------------------------------------------------------------------
    // Norms, clipping, AdamW (optimizer.wgsl)

    /// sums[slot] = sum of x^2 (or += with `accumulate`), one workgroup in a fixed order; a
    /// block's gradient norm is sqrt of the slot all its tensors were added into.
    pub fn sum_squares_into(
        &mut self,
        x: &GpuTensor,
        sums: &GpuTensor,
        slot: usize,
        accumulate: bool,
    ) -> Result<()> {
        if slot >= sums.len() {
            return Err(LabError::invalid(format!(
                "sum of squares: slot {slot} of {} slots",
                sums.len()
            )));
        }
        // The whole buffers are bound with element offsets, so x and sums may be views at
        // any offset (a block's tensors inside one gradient buffer).
        let p = SumParams {
            len: as_u32("sum of squares", x.len())?,
            offset: as_u32("sum of squares offset", x.offset())?,
            slot: as_u32("sum of squares slot", sums.offset() + slot)?,
            accumulate: accumulate as u32,
        };
        let (whole_x, whole_s) = (
            x.whole_buffer((x.buffer().size() / 4) as usize),
            sums.whole_buffer((sums.buffer().size() / 4) as usize),
        );
        self.dispatch_args(
            &OPTIMIZER,
            "sum_squares",
            &[Arg::Tensor(&whole_x), Arg::Tensor(&whole_s), Arg::Params],
            &p,
            [1, 1, 1],
        )
    }

    /// A [1] tensor holding the gradient scale of a global-norm clip at `clip` (torch's
    /// clip_grad_norm_: clip / (total + 1e-6) where below 1, else 1; 1 when clip <= 0),
    /// total = sqrt of the sum of all of `sums` (every parameter's sum of squares).
    pub fn clip_scale(&mut self, sums: &GpuTensor, clip: f32) -> Result<GpuTensor> {
        let scale = self.output(&[1], DType::F32)?;
        let p = ClipParams {
            count: as_u32("clip slots", sums.len())?,
            clip,
            _pad: [0; 2],
        };
        self.dispatch(&OPTIMIZER, "clip_scale", &[sums, &scale], &p, [1, 1, 1])?;
        Ok(scale)
    }

    /// One AdamW update at step `step` (1-based) with learning rate `lr` (the schedule's,
    /// `train::ops::lr_at`), gradients multiplied by `scale` [1] first (the clip):
    /// the same f32 arithmetic as `train::ops::adamw_update`.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        &mut self,
        params: &GpuTensor,
        grads: &GpuTensor,
        m: &GpuTensor,
        v: &GpuTensor,
        scale: &GpuTensor,
        lr: f64,
        step: u64,
        cfg: &AdamConfig,
    ) -> Result<()> {
        for (what, t) in [("grads", grads), ("m", m), ("v", v)] {
            same_len(&format!("adamw {what}"), t, params)?;
        }
        want_len("adamw scale", scale, 1)?;
        if params.is_empty() {
            return Ok(());
        }
        let bc1 = 1.0 - libm::pow(cfg.beta1, step as f64);
        let bc2 = 1.0 - libm::pow(cfg.beta2, step as f64);
        let (b1, b2) = (cfg.beta1 as f32, cfg.beta2 as f32);
        let p = AdamParams {
            len: as_u32("adamw values", params.len())?,
            step_size: (lr / bc1) as f32,
            bc2_sqrt: libm::sqrt(bc2) as f32,
            b1,
            b2,
            one_minus_b1: 1.0 - b1,
            one_minus_b2: 1.0 - b2,
            eps: cfg.eps as f32,
            decay: (1.0 - lr * cfg.weight_decay) as f32,
            decay_on: (cfg.weight_decay != 0.0) as u32,
            _pad: [0; 2],
        };
        self.dispatch(
            &OPTIMIZER,
            "adamw",
            &[params, grads, m, v, scale],
            &p,
            flat_grid(params.len(), WG)?,
        )
    }
}

fn norm_params(n: usize, c: usize) -> Result<NormParams> {
    as_u32("rmsnorm values", n * c)?;
    Ok(NormParams {
        rows: as_u32("rmsnorm rows", n)?,
        cols: as_u32("rmsnorm width", c)?,
        inv_c: (1.0 / c as f64) as f32,
        eps: RMS_EPS as f32,
    })
}
