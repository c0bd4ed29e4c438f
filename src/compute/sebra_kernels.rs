//! The bias lab's CNN kernels on the GPU: the WGSL twins of `sebra::cnn`'s paired
//! `*_forward` / `*_backward` functions, each a method of the one `Recorder` (so a whole
//! Sebra step can be recorded into one submission, its tensors from the buffer pool).
//! Kernels: shaders/sebra_cnn.wgsl; the weighted cross-entropy of Stage 1 and the oracle
//! (`weighted_xent_rows`, after xent.wgsl's softmax): shaders/sebra_loss.wgsl.
//!
//! Shapes and conventions as the twins' (legend in `sebra::cnn`): maps (B, C, H, W) row-major,
//! a convolution's weight (O, K = C 9), im2col's columns (B, K, P = H W); a backward *adds*
//! into its gradients (the caller zeroes them once per step), except the convolution's dcols,
//! overwritten scratch for `im2col_backward`, as the twin. Every output element is written by
//! one invocation that adds its terms in the twin's order (the weight gradient: each image's
//! term summed over its pixels in order, the bias gradient's in `train::ops::sum8`'s
//! eight-lane order; the images' terms computed in parallel into scratch, then added image by
//! image), so the results are the twins' bits
//! wherever the shader compiler does not fuse a multiply and an add. On lavapipe it does not:
//! tests/kernels_sebra.rs asserts every op bit for bit.

use bytemuck::{Pod, Zeroable};

use super::gpu::Shader;
use super::pool::{DType, GpuTensor};
use super::recorder::{as_u32, flat_grid, Recorder};
use crate::sebra::cnn::ConvDims;
use crate::sebra::model::NetConfig;
use crate::sebra::ModelKind;
use crate::{LabError, Result};

pub const SEBRA_CNN: Shader = Shader {
    name: "sebra_cnn.wgsl",
    source: include_str!("../../shaders/sebra_cnn.wgsl"),
};
pub const SEBRA_LOSS: Shader = Shader {
    name: "sebra_loss.wgsl",
    source: include_str!("../../shaders/sebra_loss.wgsl"),
};

/// The per-sample weights w_i of the CNN's loss L = (1/B) sum_i w_i CE_i (as `run::ce_step`'s:
/// the mean divides by B, whatever the weights sum to; the weights are constants).
#[derive(Clone, Copy)]
pub enum CeWeighting<'t> {
    /// 1 each: ERM's plain mean cross-entropy.
    Ones,
    /// Given, (B) f32: the oracle's group-balanced weights.
    Fixed(&'t GpuTensor),
    /// Stage 1's up-weights stopgrad(p_{i,y_i})^beta_inv from the step's own softmax.
    Up { beta_inv: f64 },
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct WeightedXentParams {
    rows: u32,
    cols: u32,
    inv_n: f32,
    mode: u32,
    beta_inv: f32,
    _pad: [u32; 3],
}

/// Invocations per workgroup.
const WG: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CnnParams {
    batch: u32,
    chans: u32,
    outs: u32,
    h: u32,
    w: u32,
    len: u32,
    inv: f32,
    _pad: u32,
}

fn want_len(what: &str, t: &GpuTensor, len: usize, dtype: DType) -> Result<()> {
    if t.len() != len || t.dtype() != dtype {
        return Err(LabError::invalid(format!(
            "{what}: a {:?} tensor of shape {:?} where {len} {dtype:?} values were expected",
            t.dtype(),
            t.dims(),
        )));
    }
    Ok(())
}

/// The parameters of a convolution's dispatch writing `len` values; checks that every index
/// the kernels compute fits in u32.
fn conv_params(d: ConvDims, len: usize) -> Result<CnnParams> {
    if d.b == 0 || d.c == 0 || d.o == 0 || d.h == 0 || d.w == 0 {
        return Err(LabError::invalid(format!(
            "a convolution needs non-zero sizes: {d:?}"
        )));
    }
    let p = d.pixels();
    as_u32("convolution columns", d.b * d.taps() * p)?;
    as_u32("convolution outputs", d.b * d.o * p)?;
    as_u32(
        "convolution weight-gradient terms",
        d.b * d.o * (d.taps() + 1),
    )?;
    Ok(CnnParams {
        batch: d.b as u32,
        chans: d.c as u32,
        outs: d.o as u32,
        h: d.h as u32,
        w: d.w as u32,
        len: as_u32("convolution values", len)?,
        inv: 0.0,
        _pad: 0,
    })
}

/// The parameters of a flat or pooling dispatch over `planes` planes of h x w writing `len`.
fn plane_params(planes: usize, h: usize, w: usize, len: usize, inv: f32) -> Result<CnnParams> {
    as_u32("feature map values", planes * h * w)?;
    Ok(CnnParams {
        batch: as_u32("planes", planes)?,
        chans: 0,
        outs: 0,
        h: h as u32,
        w: w as u32,
        len: as_u32("values", len)?,
        inv,
        _pad: 0,
    })
}

/// The number of h x w planes in `t`, an error unless it holds a whole number of them.
fn planes(what: &str, t: &GpuTensor, h: usize, w: usize) -> Result<usize> {
    if h == 0 || w == 0 || !t.len().is_multiple_of(h * w) || t.dtype() != DType::F32 {
        return Err(LabError::invalid(format!(
            "{what}: a {:?} tensor of shape {:?} is not f32 planes of {h} x {w}",
            t.dtype(),
            t.dims()
        )));
    }
    Ok(t.len() / (h * w))
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SgdParams {
    len: u32,
    lr: f32,
    momentum: f32,
    first: u32,
}

impl Recorder<'_> {
    /// One SGD-with-momentum update (torch.optim.SGD, dampening 0, no Nesterov, no weight
    /// decay), the same f32 arithmetic as `sebra::run::Optimizer`'s: buf = g at the `first`
    /// step, else momentum buf + g; params -= lr buf.
    pub fn sgd_momentum(
        &mut self,
        params: &GpuTensor,
        grads: &GpuTensor,
        buf: &GpuTensor,
        lr: f32,
        momentum: f32,
        first: bool,
    ) -> Result<()> {
        let n = params.len();
        want_len("sgd params", params, n, DType::F32)?;
        want_len("sgd grads", grads, n, DType::F32)?;
        want_len("sgd momentum buffer", buf, n, DType::F32)?;
        if n == 0 {
            return Ok(());
        }
        let p = SgdParams {
            len: as_u32("sgd values", n)?,
            lr,
            momentum,
            first: first as u32,
        };
        self.dispatch(
            &SEBRA_CNN,
            "sgd_momentum",
            &[params, grads, buf],
            &p,
            flat_grid(n, WG)?,
        )
    }

    /// cols (B, K, P) of inp (B, C, H, W), zero padding 1 (`sebra::cnn::im2col_forward`).
    pub fn im2col_forward(&mut self, inp: &GpuTensor, d: ConvDims) -> Result<GpuTensor> {
        want_len("im2col input", inp, d.b * d.c * d.pixels(), DType::F32)?;
        let len = d.b * d.taps() * d.pixels();
        let p = conv_params(d, len)?;
        let cols = self.output(&[d.b, d.taps(), d.pixels()], DType::F32)?;
        self.dispatch(
            &SEBRA_CNN,
            "im2col_forward",
            &[inp, &cols],
            &p,
            flat_grid(len, WG)?,
        )?;
        Ok(cols)
    }

    /// dinp (B, C, H, W) += im2col's transpose applied to dcols (B, K, P).
    pub fn im2col_backward(
        &mut self,
        dinp: &GpuTensor,
        dcols: &GpuTensor,
        d: ConvDims,
    ) -> Result<()> {
        let len = d.b * d.c * d.pixels();
        want_len("im2col backward dinp", dinp, len, DType::F32)?;
        want_len(
            "im2col backward dcols",
            dcols,
            d.b * d.taps() * d.pixels(),
            DType::F32,
        )?;
        let p = conv_params(d, len)?;
        self.dispatch(
            &SEBRA_CNN,
            "im2col_backward",
            &[dcols, dinp],
            &p,
            flat_grid(len, WG)?,
        )
    }

    /// out (B, O, H, W) = weight (O, K) . cols[b] (K, P) + bias (O), per image.
    pub fn conv3x3_forward(
        &mut self,
        cols: &GpuTensor,
        weight: &GpuTensor,
        bias: &GpuTensor,
        d: ConvDims,
    ) -> Result<GpuTensor> {
        want_len(
            "conv columns",
            cols,
            d.b * d.taps() * d.pixels(),
            DType::F32,
        )?;
        want_len("conv weight", weight, d.o * d.taps(), DType::F32)?;
        want_len("conv bias", bias, d.o, DType::F32)?;
        let len = d.b * d.o * d.pixels();
        let p = conv_params(d, len)?;
        let out = self.output(&[d.b, d.o, d.h, d.w], DType::F32)?;
        self.dispatch(
            &SEBRA_CNN,
            "conv_forward",
            &[cols, weight, bias, &out],
            &p,
            flat_grid(len, WG)?,
        )?;
        Ok(out)
    }

    /// Given dout (B, O, H, W): dweight (O, K) += sum_b dout[b] . cols[b]^T, dbias (O) +=
    /// sum_b,p dout, and dcols (B, K, P) = weight^T . dout[b] (overwritten).
    #[allow(clippy::too_many_arguments)]
    pub fn conv3x3_backward(
        &mut self,
        dcols: &GpuTensor,
        dweight: &GpuTensor,
        dbias: &GpuTensor,
        dout: &GpuTensor,
        cols: &GpuTensor,
        weight: &GpuTensor,
        d: ConvDims,
    ) -> Result<()> {
        let (k, pix) = (d.taps(), d.pixels());
        want_len("conv backward dcols", dcols, d.b * k * pix, DType::F32)?;
        want_len("conv backward cols", cols, d.b * k * pix, DType::F32)?;
        want_len("conv backward dweight", dweight, d.o * k, DType::F32)?;
        want_len("conv backward weight", weight, d.o * k, DType::F32)?;
        want_len("conv backward dbias", dbias, d.o, DType::F32)?;
        want_len("conv backward dout", dout, d.b * d.o * pix, DType::F32)?;
        // The images' terms in parallel, then summed over the images in order (the twin's).
        let rows = d.o * (k + 1);
        let terms = self.output(&[d.b, rows], DType::F32)?;
        let p = conv_params(d, d.b * rows)?;
        self.dispatch(
            &SEBRA_CNN,
            "conv_wgrad_terms",
            &[dout, cols, &terms],
            &p,
            flat_grid(d.b * rows, WG)?,
        )?;
        let p = conv_params(d, rows)?;
        self.dispatch(
            &SEBRA_CNN,
            "conv_wgrad_reduce",
            &[&terms, dweight, dbias],
            &p,
            flat_grid(rows, WG)?,
        )?;
        let p = conv_params(d, d.b * k * pix)?;
        self.dispatch(
            &SEBRA_CNN,
            "conv_dcols",
            &[dout, weight, dcols],
            &p,
            flat_grid(d.b * k * pix, WG)?,
        )
    }

    /// out = max(inp, 0), elementwise, the shape of inp.
    pub fn relu_forward(&mut self, inp: &GpuTensor) -> Result<GpuTensor> {
        want_len("relu input", inp, inp.len(), DType::F32)?;
        let out = self.output(inp.dims(), DType::F32)?;
        if inp.is_empty() {
            return Ok(out);
        }
        let p = plane_params(1, inp.len(), 1, inp.len(), 0.0)?;
        self.dispatch(
            &SEBRA_CNN,
            "relu_forward",
            &[inp, &out],
            &p,
            flat_grid(inp.len(), WG)?,
        )?;
        Ok(out)
    }

    /// dinp += dout where inp > 0.
    pub fn relu_backward(
        &mut self,
        dinp: &GpuTensor,
        dout: &GpuTensor,
        inp: &GpuTensor,
    ) -> Result<()> {
        let n = inp.len();
        want_len("relu backward input", inp, n, DType::F32)?;
        want_len("relu backward dinp", dinp, n, DType::F32)?;
        want_len("relu backward dout", dout, n, DType::F32)?;
        if n == 0 {
            return Ok(());
        }
        let p = plane_params(1, n, 1, n, 0.0)?;
        self.dispatch(
            &SEBRA_CNN,
            "relu_backward",
            &[dout, inp, dinp],
            &p,
            flat_grid(n, WG)?,
        )
    }

    /// 2x2 max-pooling, stride 2, of inp's planes of h x w: (out (planes, h/2, w/2), argmax
    /// (u32, the same count): each winner's index within its input plane).
    pub fn maxpool2_forward(
        &mut self,
        inp: &GpuTensor,
        h: usize,
        w: usize,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let n = planes("maxpool input", inp, h, w)?;
        let len = n * (h / 2) * (w / 2);
        let out = self.output(&[n, h / 2, w / 2], DType::F32)?;
        let argmax = self.output(&[n, h / 2, w / 2], DType::U32)?;
        if len == 0 {
            return Ok((out, argmax));
        }
        let p = plane_params(n, h, w, len, 0.0)?;
        self.dispatch(
            &SEBRA_CNN,
            "maxpool2_forward",
            &[inp, &out, &argmax],
            &p,
            flat_grid(len, WG)?,
        )?;
        Ok((out, argmax))
    }

    /// dinp (planes, h, w) += dout routed to each window's winner.
    pub fn maxpool2_backward(
        &mut self,
        dinp: &GpuTensor,
        dout: &GpuTensor,
        argmax: &GpuTensor,
        h: usize,
        w: usize,
    ) -> Result<()> {
        let n = planes("maxpool backward dinp", dinp, h, w)?;
        let len = n * (h / 2) * (w / 2);
        want_len("maxpool backward dout", dout, len, DType::F32)?;
        want_len("maxpool backward argmax", argmax, len, DType::U32)?;
        if len == 0 {
            return Ok(());
        }
        let p = plane_params(n, h, w, len, 0.0)?;
        self.dispatch(
            &SEBRA_CNN,
            "maxpool2_backward",
            &[dout, argmax, dinp],
            &p,
            flat_grid(len, WG)?,
        )
    }

    /// Global average pooling: out (planes) = the mean of each plane of `p` pixels.
    pub fn avgpool_forward(&mut self, inp: &GpuTensor, p: usize) -> Result<GpuTensor> {
        let n = planes("avgpool input", inp, p, 1)?;
        let out = self.output(&[n], DType::F32)?;
        if n == 0 {
            return Ok(out);
        }
        let params = plane_params(n, p, 1, n, (1.0 / p as f64) as f32)?;
        self.dispatch(
            &SEBRA_CNN,
            "avgpool_forward",
            &[inp, &out],
            &params,
            flat_grid(n, WG)?,
        )?;
        Ok(out)
    }

    /// dinp (planes, p) += dout / p.
    pub fn avgpool_backward(&mut self, dinp: &GpuTensor, dout: &GpuTensor, p: usize) -> Result<()> {
        let n = planes("avgpool backward dinp", dinp, p, 1)?;
        want_len("avgpool backward dout", dout, n, DType::F32)?;
        if n == 0 {
            return Ok(());
        }
        let params = plane_params(n, p, 1, n * p, (1.0 / p as f64) as f32)?;
        self.dispatch(
            &SEBRA_CNN,
            "avgpool_backward",
            &[dout, dinp],
            &params,
            flat_grid(n * p, WG)?,
        )
    }

    /// dbias (O) += the column sums of dout (N, O), each column's rows in order (a linear
    /// layer's bias gradient, as `sebra::model::linear_backward`).
    pub fn bias_backward(&mut self, dbias: &GpuTensor, dout: &GpuTensor) -> Result<()> {
        let (n, o) = dout.shape();
        want_len("bias backward dbias", dbias, o, DType::F32)?;
        want_len("bias backward dout", dout, n * o, DType::F32)?;
        if o == 0 {
            return Ok(());
        }
        as_u32("bias backward values", n * o)?;
        let p = CnnParams {
            batch: n as u32,
            chans: 0,
            outs: o as u32,
            h: 0,
            w: 0,
            len: o as u32,
            inv: 0.0,
            _pad: 0,
        };
        self.dispatch(
            &SEBRA_CNN,
            "col_sums",
            &[dout, dbias],
            &p,
            flat_grid(o, WG)?,
        )
    }

    /// The weighted cross-entropy after the softmax (sebra_loss.wgsl; the twins
    /// `sebra::loss::upweights`, `weighted_ce_forward`'s terms, `weighted_ce_backward`):
    /// `probs` (B, K) = softmax (`xent_rows` without backward) becomes dlogits =
    /// (w_i / B) (p - onehot); `ce` (B) = -log p[label]. `weighting`: `Fixed(w)` reads w, `Up`
    /// computes w_i = p_{i,y_i}^beta_inv into a new tensor. Returns (w_i ce_i (B), the weights
    /// (B)); the loss is `loss_mean` of the first.
    pub fn weighted_xent_rows(
        &mut self,
        probs: &GpuTensor,
        labels: &GpuTensor,
        ce: &GpuTensor,
        weighting: CeWeighting,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let (b, k) = probs.shape();
        if b == 0 || k == 0 {
            return Err(LabError::invalid(format!(
                "weighted cross-entropy: {b} rows of {k} probabilities"
            )));
        }
        want_len("weighted cross-entropy labels", labels, b, DType::U32)?;
        want_len("weighted cross-entropy losses", ce, b, DType::F32)?;
        as_u32("weighted cross-entropy values", b * k)?;
        let (weights, mode, beta_inv) = match weighting {
            CeWeighting::Fixed(w) => {
                want_len("weighted cross-entropy weights", w, b, DType::F32)?;
                (w.clone(), 0, 0.0)
            }
            CeWeighting::Up { beta_inv } => {
                if !(beta_inv.is_finite() && beta_inv > 0.0) {
                    return Err(LabError::invalid(format!(
                        "up-weighted cross-entropy: 1/beta must be positive, found {beta_inv}"
                    )));
                }
                (self.output(&[b], DType::F32)?, 1, beta_inv as f32)
            }
            CeWeighting::Ones => {
                return Err(LabError::invalid(
                    "weighted cross-entropy: no weights given (plain cross-entropy is \
                     xent_logits)",
                ))
            }
        };
        let wce = self.output(&[b], DType::F32)?;
        let p = WeightedXentParams {
            rows: b as u32,
            cols: k as u32,
            inv_n: (1.0 / b as f64) as f32,
            mode,
            beta_inv,
            _pad: [0; 3],
        };
        self.dispatch(
            &SEBRA_LOSS,
            "weighted_xent_rows",
            &[probs, labels, ce, &weights, &wce],
            &p,
            flat_grid(b, WG)?,
        )?;
        Ok((wce, weights))
    }

    /// The CNN classifier (`sebra::model`, `ModelKind::Cnn`) on one batch, forward and
    /// backward in this one recording, with the plain (unweighted) mean cross-entropy:
    /// x (B, 3, S, S), labels (B) u32, `params` and `grads` in `NetConfig::specs` order
    /// (convolution weights (O, C, 3, 3) or (O, K), the head's (K, D)); the gradients are
    /// *added* into `grads` (zero them first), as `Net::head_backward` and
    /// `Net::backbone_backward` do.
    pub fn cnn_loss_backward(
        &mut self,
        cfg: &NetConfig,
        params: &[GpuTensor],
        grads: &[GpuTensor],
        x: &GpuTensor,
        labels: &GpuTensor,
    ) -> Result<CnnStep> {
        self.cnn_weighted_loss_backward(cfg, params, grads, x, labels, CeWeighting::Ones)
    }

    /// `cnn_loss_backward` with per-sample weights: L = (1/B) sum_i w_i CE_i, the twin of
    /// `run::ce_step` with its weights (`Ones`: the plain mean, through xent.wgsl's fused
    /// backward as before; `Fixed` / `Up`: the softmax, then `weighted_xent_rows`).
    pub fn cnn_weighted_loss_backward(
        &mut self,
        cfg: &NetConfig,
        params: &[GpuTensor],
        grads: &[GpuTensor],
        x: &GpuTensor,
        labels: &GpuTensor,
        weighting: CeWeighting,
    ) -> Result<CnnStep> {
        let specs = cfg.specs();
        if cfg.kind != ModelKind::Cnn || params.len() != specs.len() || grads.len() != specs.len() {
            return Err(LabError::invalid(format!(
                "cnn step: a {:?} model with {} parameter and {} gradient tensors (expected \
                 the CNN's {})",
                cfg.kind,
                params.len(),
                grads.len(),
                specs.len()
            )));
        }
        for ((name, shape, _), (p, g)) in specs.iter().zip(params.iter().zip(grads)) {
            let n = shape.iter().product();
            want_len(name, p, n, DType::F32)?;
            want_len(&format!("{name} gradient"), g, n, DType::F32)?;
        }
        let b = labels.len();
        want_len("cnn step input", x, b * cfg.input_len(), DType::F32)?;
        let (k, dim) = (cfg.classes, cfg.feature_dim());
        let convs = cfg.convs();

        // Forward: [conv -> ReLU -> max-pool] x 3, global average pool, head, cross-entropy.
        let mut cur = x.clone();
        let mut kept = Vec::with_capacity(3);
        for (l, &(c, o, s)) in convs.iter().enumerate() {
            let d = ConvDims {
                b,
                c,
                o,
                h: s,
                w: s,
            };
            let cols = self.im2col_forward(&cur, d)?;
            let pre = self.conv3x3_forward(&cols, &params[2 * l], &params[2 * l + 1], d)?;
            let post = self.relu_forward(&pre)?;
            let (pooled, argmax) = self.maxpool2_forward(&post, s, s)?;
            kept.push((d, cols, pre, argmax));
            cur = pooled;
        }
        let s3 = cfg.image / 8;
        let features = self.avgpool_forward(&cur, s3 * s3)?.reshape(&[b, dim])?;
        let head = params[6].reshape(&[k, dim])?;
        let logits = self.linear(&features, &head, Some(&params[7]))?;
        let (losses, loss, weights) = match weighting {
            CeWeighting::Ones => {
                let (losses, loss) = self.xent_logits(&logits, labels, true)?;
                (losses, loss, None)
            }
            CeWeighting::Fixed(_) | CeWeighting::Up { .. } => {
                let ce = self.xent_rows(&logits, labels, false)?;
                let (wce, w) = self.weighted_xent_rows(&logits, labels, &ce, weighting)?;
                (ce, self.loss_mean(&wce)?, Some(w))
            }
        };

        // Backward (logits now hold dlogits).
        let dfeatures = self.zeros(&[b, dim], DType::F32)?;
        let dhead = grads[6].reshape(&[k, dim])?;
        self.matmul_backward(&dfeatures, &dhead, &logits, &features, &head)?;
        self.bias_backward(&grads[7], &logits)?;
        let mut dcur = self.zeros(&[b * dim, s3 * s3], DType::F32)?;
        self.avgpool_backward(&dcur, &dfeatures, s3 * s3)?;
        for (l, (d, cols, pre, argmax)) in kept.iter().enumerate().rev() {
            let dpost = self.zeros(&[d.b, d.o, d.h, d.w], DType::F32)?;
            self.maxpool2_backward(&dpost, &dcur, argmax, d.h, d.w)?;
            let dpre = self.zeros(&[d.b, d.o, d.h, d.w], DType::F32)?;
            self.relu_backward(&dpre, &dpost, pre)?;
            let dcols = self.output(&[d.b, d.taps(), d.pixels()], DType::F32)?;
            self.conv3x3_backward(
                &dcols,
                &grads[2 * l],
                &grads[2 * l + 1],
                &dpre,
                cols,
                &params[2 * l],
                *d,
            )?;
            if l > 0 {
                dcur = self.zeros(&[d.b, d.c, d.h, d.w], DType::F32)?;
                self.im2col_backward(&dcur, &dcols, *d)?;
            }
        }
        Ok(CnnStep {
            loss,
            losses,
            weights,
            dlogits: logits,
            features,
        })
    }
}

/// What `Recorder::cnn_loss_backward` leaves on the GPU besides the gradients.
pub struct CnnStep {
    /// [1]: the (weighted) mean cross-entropy, (1/B) sum_i w_i CE_i.
    pub loss: GpuTensor,
    /// (B): each image's -log p[label], unweighted.
    pub losses: GpuTensor,
    /// (B): the weights w_i (the given ones, or Stage 1's up-weights); None for `Ones`.
    pub weights: Option<GpuTensor>,
    /// (B, K): dloss/dlogits = w_i (p - onehot) / B.
    pub dlogits: GpuTensor,
    /// (B, D): the backbone's features.
    pub features: GpuTensor,
}
