//! The bias lab's classifiers on the CPU: a small CNN (the default) and an MLP, each a
//! backbone that maps an image to its feature vector f and a linear head f -> logits. Stage 2's
//! contrastive loss reads f, so the backbone and the head are separate calls.
//!
//! Shape legend: B = batch, S = image side, C = 3 channels, W = `width`, D = feature dim,
//! K = classes.
//! - CNN: x (B,3,S,S) -> [conv3x3 (pad 1) -> ReLU -> maxpool 2x2] with W, 2W, 4W channels
//!   (S -> S/2 -> S/4 -> S/8, each rounded down) -> global average pool -> f (B, D = 4W)
//!   -> head (K, D) + bias -> logits (B,K).
//! - MLP: x flattened (B, 3*S*S) -> linear (8W) -> ReLU -> linear (8W) -> ReLU -> f (B, D = 8W)
//!   -> head -> logits.
//!
//! Parameters are named as a PyTorch module would name them (`conv1.weight` (O,C,3,3),
//! `conv1.bias`, ..., `fc1.weight` (out,in), `head.weight` (K,D), `head.bias`), initialised as
//! PyTorch's defaults for Conv2d and Linear (weight and bias both U(-1/sqrt(fan_in),
//! 1/sqrt(fan_in)), kaiming_uniform with a = sqrt(5)) from a seeded ChaCha8. The backward
//! passes *add* into the gradients (the ops' convention): zero them once per step.
//!
//! Generic over f32 (training) and f64 (the finite-difference checks). Every op writes each
//! output from one task in a fixed order, so results do not depend on the thread count.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::cnn::{self, ConvDims};
use super::data::CHANNELS;
use super::ModelKind;
use crate::train::ops::{self, Real};

/// The architecture: which model, its width, the input side and the classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub kind: ModelKind,
    /// K.
    pub classes: usize,
    /// S.
    pub image: usize,
    /// W: the first convolution's channels (the CNN doubles it twice), or 1/8 of the MLP's
    /// hidden width.
    pub width: usize,
}

impl NetConfig {
    /// D, the feature dimension.
    pub fn feature_dim(&self) -> usize {
        match self.kind {
            ModelKind::Cnn => 4 * self.width,
            ModelKind::Mlp => 8 * self.width,
        }
    }

    /// Input values per image, 3*S*S.
    pub fn input_len(&self) -> usize {
        CHANNELS * self.image * self.image
    }

    /// The CNN's three convolutions as (input channels, output channels, map side).
    pub fn convs(&self) -> [(usize, usize, usize); 3] {
        let (w, s) = (self.width, self.image);
        [(CHANNELS, w, s), (w, 2 * w, s / 2), (2 * w, 4 * w, s / 4)]
    }

    /// Every parameter tensor, in order: its name, its shape, and its fan-in (for the init).
    pub fn specs(&self) -> Vec<(String, Vec<usize>, usize)> {
        let mut out = Vec::new();
        match self.kind {
            ModelKind::Cnn => {
                for (i, (c, o, _)) in self.convs().into_iter().enumerate() {
                    out.push((format!("conv{}.weight", i + 1), vec![o, c, 3, 3], c * 9));
                    out.push((format!("conv{}.bias", i + 1), vec![o], c * 9));
                }
            }
            ModelKind::Mlp => {
                let h = 8 * self.width;
                out.push((
                    "fc1.weight".into(),
                    vec![h, self.input_len()],
                    self.input_len(),
                ));
                out.push(("fc1.bias".into(), vec![h], self.input_len()));
                out.push(("fc2.weight".into(), vec![h, h], h));
                out.push(("fc2.bias".into(), vec![h], h));
            }
        }
        let d = self.feature_dim();
        out.push(("head.weight".into(), vec![self.classes, d], d));
        out.push(("head.bias".into(), vec![self.classes], d));
        out
    }
}

/// The parameters (or their gradients, or an optimizer's moments): one flat vector per
/// tensor, in `NetConfig::specs` order.
#[derive(Clone, Debug, PartialEq)]
pub struct Params<F> {
    pub tensors: Vec<Vec<F>>,
}

impl<F: Real> Params<F> {
    pub fn zeros(cfg: &NetConfig) -> Self {
        Params {
            tensors: cfg
                .specs()
                .iter()
                .map(|(_, shape, _)| vec![F::ZERO; shape.iter().product()])
                .collect(),
        }
    }

    /// PyTorch's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for every tensor, from
    /// one ChaCha8 stream in `specs` order.
    pub fn init(cfg: &NetConfig, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Params {
            tensors: cfg
                .specs()
                .iter()
                .map(|(_, shape, fan_in)| {
                    let bound = 1.0 / (*fan_in as f64).sqrt();
                    (0..shape.iter().product::<usize>())
                        .map(|_| {
                            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                            F::of((2.0 * u - 1.0) * bound)
                        })
                        .collect()
                })
                .collect(),
        }
    }

    pub fn fill_zero(&mut self) {
        self.tensors.iter_mut().for_each(|t| t.fill(F::ZERO));
    }

    pub fn len(&self) -> usize {
        self.tensors.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the backbone's forward keeps for its backward, for one batch.
#[derive(Default)]
pub struct Acts<F> {
    pub b: usize,
    /// Per layer: the layer's input (B, ...), kept for the weight gradient; for a
    /// convolution its im2col taps instead.
    inputs: Vec<Vec<F>>,
    /// Per layer: the pre-activation (B, ...), for ReLU's backward.
    pre: Vec<Vec<F>>,
    /// Per CNN layer: the pool's winners.
    argmax: Vec<Vec<u32>>,
    /// The last pooled map (B, 4W, P3) for the global average pool's backward.
    last_pool_pixels: usize,
    /// f (B, D).
    pub features: Vec<F>,
    /// Buffers a reused `Acts` keeps (`Net::backbone_forward_into`): per CNN layer the ReLU's
    /// output and the pooled map, and the backward's temporaries.
    post: Vec<Vec<F>>,
    pooled: Vec<Vec<F>>,
    back: std::cell::RefCell<BackScratch<F>>,
}

/// The backbone backward's temporaries (one of each, refitted per layer).
#[derive(Default)]
struct BackScratch<F> {
    terms: Vec<F>,
    dcur: Vec<F>,
    dpost: Vec<F>,
    dpre: Vec<F>,
    dcols: Vec<F>,
}

/// `v` with length `n`, its contents left as they are (the caller overwrites every element).
fn fit<T: Copy + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() != n {
        v.clear();
        v.resize(n, T::default());
    }
}

/// `v` with length `n`, all zeros (a gradient a backward adds into).
fn zeroed<T: Copy + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    v.clear();
    v.resize(n, T::default());
    v
}

/// out (B,O) = inp (B,I) . weight (O,I)^T + bias (O).
pub fn linear_forward<F: Real>(out: &mut [F], inp: &[F], weight: &[F], bias: &[F]) {
    let o = bias.len();
    let in_dim = weight.len() / o;
    ops::matmul_forward(out, inp, weight, in_dim);
    out.par_chunks_mut(o)
        .for_each(|row| row.iter_mut().zip(bias).for_each(|(y, &b)| *y += b));
}

/// dinp += dout . weight; dweight += dout^T . inp; dbias += the column sums of dout (one task
/// per column, rows in order).
pub fn linear_backward<F: Real>(
    dinp: &mut [F],
    dweight: &mut [F],
    dbias: &mut [F],
    dout: &[F],
    inp: &[F],
    weight: &[F],
) {
    let o = dbias.len();
    let in_dim = weight.len() / o;
    ops::matmul_backward(dinp, dweight, dout, inp, weight, in_dim);
    let rows = dout.len() / o;
    dbias.par_iter_mut().enumerate().for_each(|(j, db)| {
        let mut acc = F::ZERO;
        for r in 0..rows {
            acc += dout[r * o + j];
        }
        *db += acc;
    });
}

/// A classifier: its architecture and its parameters.
#[derive(Clone, Debug)]
pub struct Net<F> {
    pub cfg: NetConfig,
    pub params: Params<F>,
}

impl<F: Real> Net<F> {
    pub fn new(cfg: NetConfig, seed: u64) -> Self {
        Net {
            cfg,
            params: Params::init(&cfg, seed),
        }
    }

    fn head_index(&self) -> usize {
        self.params.tensors.len() - 2
    }

    /// The backbone on x (B, 3, S, S): the feature vectors and what the backward needs.
    pub fn backbone_forward(&self, x: &[F], b: usize) -> Acts<F> {
        let mut acts = Acts::default();
        self.backbone_forward_into(x, b, &mut acts);
        acts
    }

    /// `backbone_forward` into `acts`, reusing its buffers (a training loop's every step).
    pub fn backbone_forward_into(&self, x: &[F], b: usize, acts: &mut Acts<F>) {
        let t = &self.params.tensors;
        acts.b = b;
        match self.cfg.kind {
            ModelKind::Cnn => {
                let convs = self.cfg.convs();
                for v in [
                    &mut acts.inputs,
                    &mut acts.pre,
                    &mut acts.post,
                    &mut acts.pooled,
                ] {
                    v.resize_with(convs.len(), Vec::new);
                }
                acts.argmax.resize_with(convs.len(), Vec::new);
                for (l, (c, o, s)) in convs.into_iter().enumerate() {
                    let d = ConvDims {
                        b,
                        c,
                        o,
                        h: s,
                        w: s,
                    };
                    let (done, rest) = acts.pooled.split_at_mut(l);
                    let cur: &[F] = if l == 0 { x } else { &done[l - 1] };
                    let cols = &mut acts.inputs[l];
                    fit(cols, b * d.taps() * d.pixels());
                    cnn::im2col_forward(cols, cur, d);
                    let pre = &mut acts.pre[l];
                    fit(pre, b * o * d.pixels());
                    cnn::conv3x3_forward(pre, cols, &t[2 * l], &t[2 * l + 1], d);
                    let post = &mut acts.post[l];
                    fit(post, pre.len());
                    cnn::relu_forward(post, pre);
                    let so = s / 2;
                    let pooled = &mut rest[0];
                    fit(pooled, b * o * so * so);
                    fit(&mut acts.argmax[l], pooled.len());
                    cnn::maxpool2_forward(pooled, &mut acts.argmax[l], post, s, s);
                }
                let s3 = self.cfg.image / 8;
                acts.last_pool_pixels = s3 * s3;
                fit(&mut acts.features, b * self.cfg.feature_dim());
                let last = acts.pooled.last().expect("three convolutions");
                cnn::avgpool_forward(&mut acts.features, last, s3 * s3);
            }
            ModelKind::Mlp => {
                let h = 8 * self.cfg.width;
                let mut cur = x.to_vec();
                (acts.inputs, acts.pre) = (Vec::new(), Vec::new());
                for l in 0..2 {
                    let mut pre = vec![F::ZERO; b * h];
                    linear_forward(&mut pre, &cur, &t[2 * l], &t[2 * l + 1]);
                    let mut post = vec![F::ZERO; b * h];
                    cnn::relu_forward(&mut post, &pre);
                    acts.inputs.push(cur);
                    acts.pre.push(pre);
                    cur = post;
                }
                acts.features = cur;
            }
        }
    }

    /// logits (B,K) = head(f).
    pub fn head_forward(&self, features: &[F]) -> Vec<F> {
        let hi = self.head_index();
        let t = &self.params.tensors;
        let b = features.len() / self.cfg.feature_dim();
        let mut logits = vec![F::ZERO; b * self.cfg.classes];
        linear_forward(&mut logits, features, &t[hi], &t[hi + 1]);
        logits
    }

    /// dfeatures (B,D) += dlogits . head; the head's gradients += as `linear_backward`.
    pub fn head_backward(
        &self,
        grads: &mut Params<F>,
        dfeatures: &mut [F],
        dlogits: &[F],
        features: &[F],
    ) {
        let hi = self.head_index();
        let (gw, gb) = grads.tensors[hi..].split_at_mut(1);
        linear_backward(
            dfeatures,
            &mut gw[0],
            &mut gb[0],
            dlogits,
            features,
            &self.params.tensors[hi],
        );
    }

    /// The backbone's parameter gradients += those of sum(dfeatures * f).
    pub fn backbone_backward(&self, grads: &mut Params<F>, acts: &Acts<F>, dfeatures: &[F]) {
        let t = &self.params.tensors;
        let b = acts.b;
        match self.cfg.kind {
            ModelKind::Cnn => {
                let convs = self.cfg.convs();
                let p3 = acts.last_pool_pixels;
                let mut guard = acts.back.borrow_mut();
                let BackScratch {
                    terms,
                    dcur,
                    dpost,
                    dpre,
                    dcols,
                } = &mut *guard;
                cnn::avgpool_backward(zeroed(dcur, b * convs[2].1 * p3), dfeatures, p3);
                for l in (0..3).rev() {
                    let (c, o, s) = convs[l];
                    let d = ConvDims {
                        b,
                        c,
                        o,
                        h: s,
                        w: s,
                    };
                    let dpost = zeroed(dpost, b * o * s * s);
                    cnn::maxpool2_backward(dpost, dcur, &acts.argmax[l], s, s);
                    let dpre = zeroed(dpre, dpost.len());
                    cnn::relu_backward(dpre, dpost, &acts.pre[l]);
                    // Overwritten by the convolution's backward (scratch for im2col's).
                    fit(dcols, b * d.taps() * d.pixels());
                    let (gw, gb) = grads.tensors[2 * l..].split_at_mut(1);
                    cnn::conv3x3_backward_in(
                        terms,
                        dcols,
                        &mut gw[0],
                        &mut gb[0],
                        dpre,
                        &acts.inputs[l],
                        &t[2 * l],
                        d,
                    );
                    if l > 0 {
                        cnn::im2col_backward(zeroed(dcur, b * c * s * s), dcols, d);
                    }
                }
            }
            ModelKind::Mlp => {
                let mut dpost = dfeatures.to_vec();
                for l in (0..2).rev() {
                    let mut dpre = vec![F::ZERO; dpost.len()];
                    cnn::relu_backward(&mut dpre, &dpost, &acts.pre[l]);
                    let inp = &acts.inputs[l];
                    // The first layer's input gradient (the pixels') is not needed.
                    let mut dinp = vec![F::ZERO; if l > 0 { inp.len() } else { 0 }];
                    let (gw, gb) = grads.tensors[2 * l..].split_at_mut(1);
                    if l > 0 {
                        linear_backward(&mut dinp, &mut gw[0], &mut gb[0], &dpre, inp, &t[2 * l]);
                    } else {
                        let o = gb[0].len();
                        let in_dim = t[0].len() / o;
                        weight_grad_only(&mut gw[0], &mut gb[0], &dpre, inp, in_dim);
                    }
                    dpost = dinp;
                }
            }
        }
    }

    /// Predicted classes (argmax of the logits, the first of ties) of `n` images, in chunks
    /// of `chunk`; and, when `labels` is given, each image's softmax probability of its label.
    pub fn predict(
        &self,
        x: &[F],
        n: usize,
        chunk: usize,
        labels: Option<&[u32]>,
    ) -> (Vec<u32>, Vec<F>) {
        let per = self.cfg.input_len();
        let k = self.cfg.classes;
        let mut pred = Vec::with_capacity(n);
        let mut p_true = Vec::new();
        let mut acts = Acts::default();
        for start in (0..n).step_by(chunk.max(1)) {
            let b = chunk.min(n - start);
            self.backbone_forward_into(&x[start * per..(start + b) * per], b, &mut acts);
            let logits = self.head_forward(&acts.features);
            for (r, row) in logits.chunks(k).enumerate() {
                let mut best = 0;
                for j in 1..k {
                    if row[j] > row[best] {
                        best = j;
                    }
                }
                pred.push(best as u32);
                if let Some(labels) = labels {
                    let probs = super::loss::softmax_row(row);
                    p_true.push(probs[labels[start + r] as usize]);
                }
            }
        }
        (pred, p_true)
    }
}

/// dweight (O,I) += dout^T . inp, dbias += column sums: a linear's backward without dinp.
fn weight_grad_only<F: Real>(
    dweight: &mut [F],
    dbias: &mut [F],
    dout: &[F],
    inp: &[F],
    in_dim: usize,
) {
    let o = dbias.len();
    let rows = dout.len() / o;
    dweight
        .par_chunks_mut(in_dim)
        .zip(dbias.par_iter_mut())
        .enumerate()
        .for_each(|(j, (dw, db))| {
            let mut acc = F::ZERO;
            for r in 0..rows {
                let g = dout[r * o + j];
                acc += g;
                for (w, &x) in dw.iter_mut().zip(&inp[r * in_dim..(r + 1) * in_dim]) {
                    *w += g * x;
                }
            }
            *db += acc;
        });
}
