//! The model the lab trains: a LLaMA-style decoder as in the Mix-LN code
//! (pixeli99/MixLN peft_pretraining/modeling_llama.py), with its forward and backward passes
//! built from `ops`' paired kernels.
//!
//! token embedding -> L blocks -> final RMSNorm (always) -> LM head (tied or untied).
//! Each block is attention (RoPE, causal, GQA) and a SwiGLU MLP, with its two RMSNorms
//! placed after the residual adds (Post-LN) or before the sublayers (Pre-LN); Mix-LN makes
//! the first floor(alpha * L) blocks Post-LN and the rest Pre-LN.
//!
//! Shapes as in `ops` (B, T, N = B*T, C, H, KV, D, F, V).

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::ops::{self, AttnDims};

/// Where a block's two norms sit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// `h = norm1(x + attn(x))`, `out = norm2(h + mlp(h))`.
    Post,
    /// `h = x + attn(norm1(x))`, `out = h + mlp(norm2(h))`.
    Pre,
}

/// The model's sizes and norm placement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab: usize,
    pub layers: usize,
    pub width: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    /// The first `post_blocks` blocks are Post-LN, the rest Pre-LN.
    pub post_blocks: usize,
    pub tied_head: bool,
}

impl ModelConfig {
    pub fn placement(&self, block: usize) -> Placement {
        if block < self.post_blocks {
            Placement::Post
        } else {
            Placement::Pre
        }
    }
    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim()
    }
}

/// One block's weights; linears are (out, in).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockWeights {
    /// `input_layernorm` (C): before attention (Pre) or after the attention add (Post).
    pub norm1: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub o: Vec<f32>,
    /// `post_attention_layernorm` (C): before the MLP (Pre) or after the MLP add (Post).
    pub norm2: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

/// All parameters (or their gradients, or Adam's moments: the same shapes).
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    /// (V, C)
    pub embed: Vec<f32>,
    pub blocks: Vec<BlockWeights>,
    /// Final RMSNorm (C).
    pub norm: Vec<f32>,
    /// (V, C) when untied; the tied head is `embed`.
    pub head: Option<Vec<f32>>,
}

/// A tensor's export name (LLaMA's, as Hugging Face writes them) and shape.
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl Weights {
    /// Every tensor's name and shape, in the file order the lab writes and initialises.
    pub fn specs(cfg: &ModelConfig) -> Vec<TensorSpec> {
        let (c, f, kvw) = (cfg.width, cfg.ffn, cfg.kv_width());
        let spec = |name: String, shape: Vec<usize>| TensorSpec { name, shape };
        let mut out = vec![spec("model.embed_tokens.weight".into(), vec![cfg.vocab, c])];
        for i in 0..cfg.layers {
            let p = format!("model.layers.{i}.");
            out.push(spec(format!("{p}input_layernorm.weight"), vec![c]));
            out.push(spec(format!("{p}self_attn.q_proj.weight"), vec![c, c]));
            out.push(spec(format!("{p}self_attn.k_proj.weight"), vec![kvw, c]));
            out.push(spec(format!("{p}self_attn.v_proj.weight"), vec![kvw, c]));
            out.push(spec(format!("{p}self_attn.o_proj.weight"), vec![c, c]));
            out.push(spec(format!("{p}post_attention_layernorm.weight"), vec![c]));
            out.push(spec(format!("{p}mlp.gate_proj.weight"), vec![f, c]));
            out.push(spec(format!("{p}mlp.up_proj.weight"), vec![f, c]));
            out.push(spec(format!("{p}mlp.down_proj.weight"), vec![c, f]));
        }
        out.push(spec("model.norm.weight".into(), vec![c]));
        if !cfg.tied_head {
            out.push(spec("lm_head.weight".into(), vec![cfg.vocab, c]));
        }
        out
    }

    /// All zeros, in the model's shapes (gradients, Adam's moments).
    pub fn zeros(cfg: &ModelConfig) -> Weights {
        let mut specs = Weights::specs(cfg).into_iter();
        let mut next = || {
            let s = specs.next().map_or(0, |s| s.shape.iter().product());
            vec![0.0f32; s]
        };
        let embed = next();
        let blocks = (0..cfg.layers)
            .map(|_| BlockWeights {
                norm1: next(),
                q: next(),
                k: next(),
                v: next(),
                o: next(),
                norm2: next(),
                gate: next(),
                up: next(),
                down: next(),
            })
            .collect();
        let norm = next();
        let head = (!cfg.tied_head).then(&mut next);
        Weights {
            embed,
            blocks,
            norm,
            head,
        }
    }

    /// The tensors in `specs` order.
    pub fn tensors(&self) -> Vec<&[f32]> {
        let mut out: Vec<&[f32]> = vec![self.embed.as_slice()];
        for b in &self.blocks {
            out.extend(
                [
                    &b.norm1, &b.q, &b.k, &b.v, &b.o, &b.norm2, &b.gate, &b.up, &b.down,
                ]
                .map(|t| t.as_slice()),
            );
        }
        out.push(self.norm.as_slice());
        if let Some(h) = &self.head {
            out.push(h.as_slice());
        }
        out
    }

    pub fn tensors_mut(&mut self) -> Vec<&mut Vec<f32>> {
        let mut out = vec![&mut self.embed];
        for b in &mut self.blocks {
            out.extend([
                &mut b.norm1,
                &mut b.q,
                &mut b.k,
                &mut b.v,
                &mut b.o,
                &mut b.norm2,
                &mut b.gate,
                &mut b.up,
                &mut b.down,
            ]);
        }
        out.push(&mut self.norm);
        if let Some(h) = &mut self.head {
            out.push(h);
        }
        out
    }

    /// Number of parameters (the tied head counted once).
    pub fn count(&self) -> usize {
        self.tensors().iter().map(|t| t.len()).sum()
    }

    /// The Mix-LN code's init (`_init_weights`): linears N(0, 0.02), embedding N(0, sqrt(2/5)),
    /// norm weights 1. One ChaCha8 stream from `seed`, tensors in `specs` order, row-major;
    /// normals by Box-Muller on 53-bit uniforms with libm, so every target gets the same bits.
    pub fn init(cfg: &ModelConfig, seed: u64) -> Weights {
        let mut w = Weights::zeros(cfg);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let names = Weights::specs(cfg);
        for (t, spec) in w.tensors_mut().into_iter().zip(names) {
            if spec.shape.len() == 1 {
                t.fill(1.0);
            } else {
                let std = if spec.name == "model.embed_tokens.weight" {
                    (2.0f64 / 5.0).sqrt()
                } else {
                    0.02
                };
                for x in t.iter_mut() {
                    *x = (normal(&mut rng) * std) as f32;
                }
            }
        }
        w
    }
}

/// A standard normal from two 53-bit uniforms (Box-Muller, cosine branch).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u = |r: &mut ChaCha8Rng| ((r.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let (u1, u2) = (u(rng), u(rng));
    libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(2.0 * std::f64::consts::PI * u2)
}

/// What one block's forward keeps for its backward ((N,C) unless stated).
#[derive(Default)]
pub struct BlockActs {
    /// The block's input.
    x: Vec<f32>,
    /// The attention's input: norm1(x) (Pre) or x (Post).
    a_in: Vec<f32>,
    rstd1: Vec<f32>,
    /// After RoPE: q (N, H*D), k (N, KV*D); v (N, KV*D).
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Softmax probabilities (B,H,T,T).
    att: Vec<f32>,
    /// Attention output before o_proj (N, H*D).
    y: Vec<f32>,
    /// x + attn: the residual sum (Post: norm1's input; Pre: equals h).
    r1: Vec<f32>,
    /// The stream between the sublayers.
    h: Vec<f32>,
    /// The MLP's input: norm2(h) (Pre) or h (Post).
    m_in: Vec<f32>,
    rstd2: Vec<f32>,
    /// (N,F)
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
    /// h + mlp (Post: norm2's input).
    r2: Vec<f32>,
    /// The block's output.
    pub out: Vec<f32>,
}

/// Everything a forward pass keeps: per block activations, the final norm and the head's
/// probabilities; and the backward's scratch. `Model::forward_into` reuses the buffers of the
/// last pass.
#[derive(Default)]
pub struct Activations {
    pub b: usize,
    pub t: usize,
    pub tokens: Vec<u32>,
    pub targets: Vec<u32>,
    /// The embedding output (N,C).
    pub embedded: Vec<f32>,
    pub blocks: Vec<BlockActs>,
    xf: Vec<f32>,
    rstd_f: Vec<f32>,
    /// (N,V): softmax probabilities after the forward; dlogits after the backward.
    probs: Vec<f32>,
    losses: Vec<f32>,
    pub loss: f64,
    scratch: Scratch,
}

/// The backward's temporaries, kept from step to step.
#[derive(Default)]
struct Scratch {
    /// The forward's: a sublayer's output (N,C) and the attention's q and k before RoPE.
    sub: Vec<f32>,
    tmp: Vec<f32>,
    dxf: Vec<f32>,
    dstream: Vec<f32>,
    dx: Vec<f32>,
    /// Per block: the gradients at the sublayers' seams (N,C) ...
    d1: Vec<f32>,
    d2: Vec<f32>,
    d3: Vec<f32>,
    /// ... inside the attention ...
    dy: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    datt: Vec<f32>,
    dk_pre: Vec<f32>,
    dq_pre: Vec<f32>,
    /// ... and inside the MLP (N,F).
    dact: Vec<f32>,
    dgate: Vec<f32>,
    dup: Vec<f32>,
}

/// Sizes of one forward: the model and the batch.
struct Dims {
    n: usize,
    c: usize,
    f: usize,
    kvw: usize,
    attn: AttnDims,
}

fn dims(cfg: &ModelConfig, b: usize, t: usize) -> Dims {
    Dims {
        n: b * t,
        c: cfg.width,
        f: cfg.ffn,
        kvw: cfg.kv_width(),
        attn: AttnDims {
            b,
            t,
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
            head_dim: cfg.head_dim(),
        },
    }
}

/// `v`'s buffer, leaving an empty one (to lend a scratch buffer while the rest is borrowed).
fn take(v: &mut Vec<f32>) -> Vec<f32> {
    std::mem::take(v)
}

/// `v` with length `n`, its contents left as they are (the caller overwrites every element).
fn fit(v: &mut Vec<f32>, n: usize) {
    if v.len() != n {
        v.clear();
        v.resize(n, 0.0);
    }
}

/// `v` with length `n`, all zeros (a gradient the backward adds into).
fn zeroed(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.clear();
    v.resize(n, 0.0);
    v
}

/// attn(x_in) -> out (N,C), keeping q, k, v, att and y.
fn attn_forward(
    w: &BlockWeights,
    a: &mut BlockActs,
    d: &Dims,
    rope: &(Vec<f32>, Vec<f32>),
    out: &mut [f32],
    tmp: &mut Vec<f32>,
) {
    let (n, c, kvw, hd, t) = (d.n, d.c, d.kvw, d.attn.head_dim, d.attn.t);
    fit(tmp, n * c);
    ops::matmul_forward(tmp, &a.a_in, &w.q, c);
    fit(&mut a.q, n * c);
    ops::rope_forward(&mut a.q, tmp, &rope.0, &rope.1, t, hd, c);
    let tmp = &mut tmp[..n * kvw];
    ops::matmul_forward(tmp, &a.a_in, &w.k, c);
    fit(&mut a.k, n * kvw);
    ops::rope_forward(&mut a.k, tmp, &rope.0, &rope.1, t, hd, kvw);
    fit(&mut a.v, n * kvw);
    ops::matmul_forward(&mut a.v, &a.a_in, &w.v, c);
    fit(&mut a.att, d.attn.b * d.attn.heads * t * t);
    fit(&mut a.y, n * c);
    ops::attention_forward(&mut a.y, &mut a.att, &a.q, &a.k, &a.v, d.attn);
    ops::matmul_forward(out, &a.y, &w.o, c);
}

/// Backward of `attn_forward`: dout (N,C) -> d a_in (+=), weight gradients (+=).
#[allow(clippy::too_many_arguments)]
fn attn_backward(
    w: &BlockWeights,
    g: &mut BlockWeights,
    a: &BlockActs,
    d: &Dims,
    rope: &(Vec<f32>, Vec<f32>),
    dout: &[f32],
    da_in: &mut [f32],
    s: &mut Scratch,
) {
    let (n, c, kvw, hd, t) = (d.n, d.c, d.kvw, d.attn.head_dim, d.attn.t);
    let dy = zeroed(&mut s.dy, n * c);
    ops::matmul_backward(dy, &mut g.o, dout, &a.y, &w.o, c);
    let dq = zeroed(&mut s.dq, n * c);
    let dk = zeroed(&mut s.dk, n * kvw);
    let dv = zeroed(&mut s.dv, n * kvw);
    fit(&mut s.datt, a.att.len());
    ops::attention_backward(
        dq,
        dk,
        dv,
        &mut s.datt,
        dy,
        &a.att,
        &a.q,
        &a.k,
        &a.v,
        d.attn,
    );
    ops::matmul_backward(da_in, &mut g.v, dv, &a.a_in, &w.v, c);
    let dk_pre = zeroed(&mut s.dk_pre, n * kvw);
    ops::rope_backward(dk_pre, dk, &rope.0, &rope.1, t, hd, kvw);
    ops::matmul_backward(da_in, &mut g.k, dk_pre, &a.a_in, &w.k, c);
    let dq_pre = zeroed(&mut s.dq_pre, n * c);
    ops::rope_backward(dq_pre, dq, &rope.0, &rope.1, t, hd, c);
    ops::matmul_backward(da_in, &mut g.q, dq_pre, &a.a_in, &w.q, c);
}

/// mlp(m_in) = down(silu(gate m_in) * up m_in) -> out (N,C).
fn mlp_forward(w: &BlockWeights, a: &mut BlockActs, d: &Dims, out: &mut [f32]) {
    let (n, c, f) = (d.n, d.c, d.f);
    fit(&mut a.gate, n * f);
    fit(&mut a.up, n * f);
    fit(&mut a.act, n * f);
    ops::matmul_forward(&mut a.gate, &a.m_in, &w.gate, c);
    ops::matmul_forward(&mut a.up, &a.m_in, &w.up, c);
    ops::swiglu_forward(&mut a.act, &a.gate, &a.up);
    ops::matmul_forward(out, &a.act, &w.down, f);
}

fn mlp_backward(
    w: &BlockWeights,
    g: &mut BlockWeights,
    a: &BlockActs,
    d: &Dims,
    dout: &[f32],
    dm_in: &mut [f32],
    s: &mut Scratch,
) {
    let (n, c, f) = (d.n, d.c, d.f);
    let dact = zeroed(&mut s.dact, n * f);
    ops::matmul_backward(dact, &mut g.down, dout, &a.act, &w.down, f);
    let dgate = zeroed(&mut s.dgate, n * f);
    let dup = zeroed(&mut s.dup, n * f);
    ops::swiglu_backward(dgate, dup, dact, &a.gate, &a.up);
    ops::matmul_backward(dm_in, &mut g.gate, dgate, &a.m_in, &w.gate, c);
    ops::matmul_backward(dm_in, &mut g.up, dup, &a.m_in, &w.up, c);
}

/// One block forward: x (N,C) -> a.out (N,C). The placement is the whole difference
/// between the three models the lab compares.
fn block_forward(
    placement: Placement,
    w: &BlockWeights,
    a: &mut BlockActs,
    d: &Dims,
    rope: &(Vec<f32>, Vec<f32>),
    x: &[f32],
    s: &mut Scratch,
) {
    let nc = d.n * d.c;
    a.x.clear();
    a.x.extend_from_slice(x);
    for v in [
        &mut a.a_in,
        &mut a.r1,
        &mut a.h,
        &mut a.m_in,
        &mut a.r2,
        &mut a.out,
    ] {
        fit(v, nc);
    }
    fit(&mut a.rstd1, d.n);
    fit(&mut a.rstd2, d.n);
    fit(&mut s.sub, nc);
    let sub = &mut s.sub;
    match placement {
        // Post-LN: h = norm1(x + attn(x)); out = norm2(h + mlp(h))
        Placement::Post => {
            a.a_in.copy_from_slice(x);
            attn_forward(w, a, d, rope, sub, &mut s.tmp);
            ops::residual_forward(&mut a.r1, x, sub);
            ops::rmsnorm_forward(&mut a.h, &mut a.rstd1, &a.r1, &w.norm1);
            a.m_in.copy_from_slice(&a.h);
            mlp_forward(w, a, d, sub);
            ops::residual_forward(&mut a.r2, &a.h, sub);
            ops::rmsnorm_forward(&mut a.out, &mut a.rstd2, &a.r2, &w.norm2);
        }
        // Pre-LN: h = x + attn(norm1(x)); out = h + mlp(norm2(h))
        Placement::Pre => {
            ops::rmsnorm_forward(&mut a.a_in, &mut a.rstd1, x, &w.norm1);
            attn_forward(w, a, d, rope, sub, &mut s.tmp);
            ops::residual_forward(&mut a.r1, x, sub);
            a.h.copy_from_slice(&a.r1);
            ops::rmsnorm_forward(&mut a.m_in, &mut a.rstd2, &a.h, &w.norm2);
            mlp_forward(w, a, d, sub);
            ops::residual_forward(&mut a.r2, &a.h, sub);
            a.out.copy_from_slice(&a.r2);
        }
    }
}

/// One block backward: dout (N,C) -> dx (N,C, +=), gradients into `g` (+=).
#[allow(clippy::too_many_arguments)]
fn block_backward(
    placement: Placement,
    w: &BlockWeights,
    g: &mut BlockWeights,
    a: &BlockActs,
    d: &Dims,
    rope: &(Vec<f32>, Vec<f32>),
    dout: &[f32],
    dx: &mut [f32],
    s: &mut Scratch,
) {
    let nc = d.n * d.c;
    let (mut d1, mut d2, mut d3) = (take(&mut s.d1), take(&mut s.d2), take(&mut s.d3));
    match placement {
        Placement::Post => {
            // out = norm2(r2), r2 = h + mlp(h)
            let dr2 = zeroed(&mut d1, nc);
            ops::rmsnorm_backward(dr2, &mut g.norm2, dout, &a.r2, &w.norm2, &a.rstd2);
            fit(&mut d2, nc);
            d2.copy_from_slice(dr2);
            let dh = &mut d2;
            mlp_backward(w, g, a, d, dr2, dh, s);
            // h = norm1(r1), r1 = x + attn(x)
            let dr1 = zeroed(&mut d3, nc);
            ops::rmsnorm_backward(dr1, &mut g.norm1, dh, &a.r1, &w.norm1, &a.rstd1);
            ops::add_inplace(dx, dr1);
            attn_backward(w, g, a, d, rope, dr1, dx, s);
        }
        Placement::Pre => {
            // out = h + mlp(norm2(h))
            fit(&mut d1, nc);
            d1.copy_from_slice(dout);
            let dh = &mut d1;
            let dm_in = zeroed(&mut d2, nc);
            mlp_backward(w, g, a, d, dout, dm_in, s);
            ops::rmsnorm_backward(dh, &mut g.norm2, dm_in, &a.h, &w.norm2, &a.rstd2);
            // h = x + attn(norm1(x))
            ops::add_inplace(dx, dh);
            let da_in = zeroed(&mut d3, nc);
            attn_backward(w, g, a, d, rope, dh, da_in, s);
            ops::rmsnorm_backward(dx, &mut g.norm1, da_in, &a.x, &w.norm1, &a.rstd1);
        }
    }
    (s.d1, s.d2, s.d3) = (d1, d2, d3);
}

/// The model: its configuration, weights and RoPE tables.
pub struct Model {
    pub cfg: ModelConfig,
    pub weights: Weights,
}

impl Model {
    /// Forward over `batch` (B rows of T+1 tokens): inputs are the first T of each row,
    /// targets the last T. `skip` leaves one block out (its input passes through unchanged),
    /// for the layer-removal diagnostic. Returns the activations and the mean loss.
    pub fn forward(&self, batch: &[u32], b: usize, t: usize, skip: Option<usize>) -> Activations {
        let mut acts = Activations::default();
        self.forward_into(&mut acts, batch, b, t, skip);
        acts
    }

    /// `forward` into `acts`, reusing its buffers (the training loop's every step).
    pub fn forward_into(
        &self,
        acts: &mut Activations,
        batch: &[u32],
        b: usize,
        t: usize,
        skip: Option<usize>,
    ) {
        let cfg = &self.cfg;
        let d = dims(cfg, b, t);
        (acts.b, acts.t) = (b, t);
        acts.tokens.clear();
        acts.targets.clear();
        for row in batch.chunks(t + 1) {
            acts.tokens.extend_from_slice(&row[..t]);
            acts.targets.extend_from_slice(&row[1..]);
        }
        let rope = ops::rope_table::<f32>(t, cfg.head_dim());
        fit(&mut acts.embedded, d.n * d.c);
        ops::embedding_forward(&mut acts.embedded, &acts.tokens, &self.weights.embed, d.c);
        acts.blocks.resize_with(cfg.layers, BlockActs::default);
        for (l, w) in self.weights.blocks.iter().enumerate() {
            let (before, rest) = acts.blocks.split_at_mut(l);
            let x = before.last().map_or(&acts.embedded, |p| &p.out);
            let a = &mut rest[0];
            if skip == Some(l) {
                a.out.clear();
                a.out.extend_from_slice(x);
            } else {
                block_forward(cfg.placement(l), w, a, &d, &rope, x, &mut acts.scratch);
            }
        }
        let last = acts.blocks.last().map_or(&acts.embedded, |p| &p.out);
        fit(&mut acts.xf, d.n * d.c);
        fit(&mut acts.rstd_f, d.n);
        ops::rmsnorm_forward(&mut acts.xf, &mut acts.rstd_f, last, &self.weights.norm);
        let head = self.weights.head.as_ref().unwrap_or(&self.weights.embed);
        fit(&mut acts.probs, d.n * cfg.vocab);
        fit(&mut acts.losses, d.n);
        acts.loss = ops::lm_head_xent_forward(
            &mut acts.probs,
            &mut acts.losses,
            &acts.xf,
            head,
            &acts.targets,
            d.c,
        );
    }

    /// The mean loss of `acts`' batch with block `skip` left out, as `forward(.., Some(skip))`
    /// gives it, bit for bit: the blocks before `skip` see the same inputs as in `acts` (a
    /// forward without skip), so their outputs are reused and only the blocks after it run.
    pub fn loss_without(&self, acts: &Activations, skip: usize) -> f64 {
        let cfg = &self.cfg;
        let d = dims(cfg, acts.b, acts.t);
        let rope = ops::rope_table::<f32>(acts.t, cfg.head_dim());
        let mut x = if skip == 0 {
            acts.embedded.clone()
        } else {
            acts.blocks[skip - 1].out.clone()
        };
        let mut scratch = Scratch::default();
        let mut a = BlockActs::default();
        for (l, w) in self.weights.blocks.iter().enumerate().skip(skip + 1) {
            block_forward(cfg.placement(l), w, &mut a, &d, &rope, &x, &mut scratch);
            std::mem::swap(&mut x, &mut a.out);
        }
        let mut xf = vec![0.0f32; d.n * d.c];
        let mut rstd_f = vec![0.0f32; d.n];
        ops::rmsnorm_forward(&mut xf, &mut rstd_f, &x, &self.weights.norm);
        let head = self.weights.head.as_ref().unwrap_or(&self.weights.embed);
        let mut probs = vec![0.0f32; d.n * cfg.vocab];
        let mut losses = vec![0.0f32; d.n];
        ops::lm_head_xent_forward(&mut probs, &mut losses, &xf, head, &acts.targets, d.c)
    }

    /// Gradients of the mean loss of `acts` (a forward without `skip`) into `grads` (+=).
    pub fn backward(&self, acts: &mut Activations, grads: &mut Weights) {
        let cfg = &self.cfg;
        let d = dims(cfg, acts.b, acts.t);
        let nc = d.n * d.c;
        let rope = ops::rope_table::<f32>(acts.t, cfg.head_dim());
        let s = &mut acts.scratch;
        let dxf = zeroed(&mut s.dxf, nc);
        let head = self.weights.head.as_ref().unwrap_or(&self.weights.embed);
        {
            let dhead = match grads.head.as_mut() {
                Some(h) => h,
                None => &mut grads.embed,
            };
            ops::lm_head_xent_backward(
                dxf,
                dhead,
                &mut acts.probs,
                &acts.xf,
                head,
                &acts.targets,
                d.c,
            );
        }
        let last = acts.blocks.last().map_or(&acts.embedded, |p| &p.out);
        let (mut dstream, mut dx) = (take(&mut s.dstream), take(&mut s.dx));
        ops::rmsnorm_backward(
            zeroed(&mut dstream, nc),
            &mut grads.norm,
            &s.dxf,
            last,
            &self.weights.norm,
            &acts.rstd_f,
        );
        for l in (0..cfg.layers).rev() {
            block_backward(
                cfg.placement(l),
                &self.weights.blocks[l],
                &mut grads.blocks[l],
                &acts.blocks[l],
                &d,
                &rope,
                &dstream,
                zeroed(&mut dx, nc),
                s,
            );
            std::mem::swap(&mut dstream, &mut dx);
        }
        ops::embedding_backward(&mut grads.embed, &dstream, &acts.tokens, d.c);
        (s.dstream, s.dx) = (dstream, dx);
    }
}

/// The per-token losses of the last forward (N), for tests and diagnostics.
impl Activations {
    pub fn token_losses(&self) -> &[f32] {
        &self.losses
    }
    /// Position i's state after the final norm (C): what the LM head reads.
    pub fn final_state(&self, i: usize) -> &[f32] {
        let c = self.xf.len() / self.losses.len().max(1);
        &self.xf[i * c..(i + 1) * c]
    }
    /// Block l's input (N,C) (the embedding output for l = 0).
    pub fn block_input(&self, l: usize) -> &[f32] {
        &self.blocks[l].x
    }
    /// Which of its inputs a block's norm1 normalised: true when `norm1` sits before the
    /// attention (Pre-LN), checked from the activations rather than from the configuration.
    pub fn attention_input(&self, l: usize) -> &[f32] {
        &self.blocks[l].a_in
    }
    /// The stream after the attention sublayer (h).
    pub fn after_attention(&self, l: usize) -> &[f32] {
        &self.blocks[l].h
    }
}
