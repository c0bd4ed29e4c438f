//! Parity of the training kernels (`compute::train_kernels`, shaders/{embedding,
//! rmsnorm_train, swiglu_backward, rope_train, attention_train, xent, optimizer}.wgsl, and the
//! matmul's strided backward) with their CPU twins in `train::ops`, on the GPU wgpu finds
//! (Mesa's lavapipe in CI; a missing adapter fails), on random inputs of awkward sizes
//! (N = B T = 37 or 39, C = 20, odd head dims, GQA, vocabularies not multiples of anything).
//! The twins themselves are checked against finite differences in tests/train_ops.rs.
//!
//! Every backward adds into gradients that start from random values (not zeros), so the
//! accumulation is checked too. Tolerances are relative, f32, `max |gpu - twin| / max |twin|`
//! per tensor (WGSL may fuse multiply-adds and its exp, log and sqrt are a few ulp from libm);
//! each test prints what it measured:
//! - embedding forward, embedding backward (the same adds in the same order), residual add and
//!   its backward: exact, bit for bit;
//! - RMSNorm out, rstd: 2e-6; dx, dweight: 1e-5;
//! - matmul forward and both backward products: 1e-5;
//! - SwiGLU forward: 2e-6, backward: 1e-5; RoPE forward and backward: 2e-6;
//! - attention out, probabilities: 1e-5; dq, dk, dv: 1e-5;
//! - LM head + cross-entropy: per-token losses, mean loss, probabilities, dxf, dhead: 1e-5;
//! - sums of squares (f32 on the GPU against the twin's f64): 1e-5; clip scale: 1e-6;
//! - AdamW, 3 steps with clipping: m, v: 1e-5; the parameters: 1e-3 of the largest change
//!   (f32 parameters near 1 resolve a change of 1e-3 to about 1e-4 of itself).

mod common;

use common::{check, exact, gpu, uniform};
use layerlab::compute::train_kernels::embedding_index;
use layerlab::compute::{DType, GpuTensor, Recorder};
use layerlab::train::ops::{self, AdamConfig, AttnDims};

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    pollster::block_on(f)
}

fn up(rec: &mut Recorder, v: &[f32], shape: &[usize]) -> GpuTensor {
    rec.upload_f32(v, shape).unwrap()
}

fn read(rec: &mut Recorder, ts: &[&GpuTensor]) -> Vec<Vec<f32>> {
    run(rec.read_many(ts)).unwrap()
}

/// Token ids in 0..v from a seed, with repeats; id `v - 1` never appears when `v > 2` (a
/// vocabulary row without positions).
fn tokens(seed: u64, n: usize, v: usize) -> Vec<u32> {
    let hi = if v > 2 { v - 1 } else { v };
    uniform(seed, n, 0.0, hi as f32)
        .into_iter()
        .map(|x| (x as u32).min(hi as u32 - 1))
        .collect()
}

// ---------------------------------------------------------------------------------------
// (a) embedding, RMSNorm, residual

#[test]
fn embedding_forward_and_backward_match_twin_exactly() {
    let gpu = gpu();
    for (i, &(n, v, c)) in [(37, 11, 20), (1, 1, 1), (1001, 300, 13), (39, 67, 257)]
        .iter()
        .enumerate()
    {
        let s = 100 + 10 * i as u64;
        let toks = tokens(s, n, v);
        let wte = uniform(s + 1, v * c, -1.0, 1.0);
        let dout = uniform(s + 2, n * c, -1.0, 1.0);
        let dwte0 = uniform(s + 3, v * c, -0.5, 0.5);

        let mut out = vec![0f32; n * c];
        ops::embedding_forward(&mut out, &toks, &wte, c);
        let mut dwte = dwte0.clone();
        ops::embedding_backward(&mut dwte, &dout, &toks, c);

        let mut rec = Recorder::new(&gpu).unwrap();
        let tg = rec.upload_u32(&toks, &[n]).unwrap();
        let wg = up(&mut rec, &wte, &[v, c]);
        let og = rec.embedding_forward(&tg, &wg).unwrap();
        let index = embedding_index(&toks, v).unwrap();
        let ig = rec.upload_u32(&index, &[index.len()]).unwrap();
        let dg = up(&mut rec, &dout, &[n, c]);
        let dwg = up(&mut rec, &dwte0, &[v, c]);
        rec.embedding_backward(&dwg, &dg, &ig).unwrap();
        let got = read(&mut rec, &[&og, &dwg]);
        exact(
            &format!("embedding forward N {n} V {v} C {c}"),
            &got[0],
            &out,
        );
        exact(
            &format!("embedding backward N {n} V {v} C {c}"),
            &got[1],
            &dwte,
        );
    }
    assert!(embedding_index(&[0, 3], 3).is_err());
}

#[test]
fn rmsnorm_forward_and_backward_match_twin() {
    let gpu = gpu();
    for (i, &(n, c)) in [(37, 20), (1, 1), (5, 257), (130, 300), (39, 576)]
        .iter()
        .enumerate()
    {
        let s = 200 + 10 * i as u64;
        let x = uniform(s, n * c, -3.0, 3.0);
        let w = uniform(s + 1, c, 0.5, 1.5);
        let dout = uniform(s + 2, n * c, -1.0, 1.0);
        let dx0 = uniform(s + 3, n * c, -0.5, 0.5);
        let dw0 = uniform(s + 4, c, -0.5, 0.5);

        let (mut out, mut rstd) = (vec![0f32; n * c], vec![0f32; n]);
        ops::rmsnorm_forward(&mut out, &mut rstd, &x, &w);
        let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
        ops::rmsnorm_backward(&mut dx, &mut dw, &dout, &x, &w, &rstd);

        let mut rec = Recorder::new(&gpu).unwrap();
        let xg = up(&mut rec, &x, &[n, c]);
        let wg = up(&mut rec, &w, &[c]);
        let (og, rg) = rec.rmsnorm_forward(&xg, &wg).unwrap();
        let dg = up(&mut rec, &dout, &[n, c]);
        let dxg = up(&mut rec, &dx0, &[n, c]);
        let dwg = up(&mut rec, &dw0, &[c]);
        rec.rmsnorm_backward(&dxg, &dwg, &dg, &xg, &wg, &rg)
            .unwrap();
        let got = read(&mut rec, &[&og, &rg, &dxg, &dwg]);
        let what = format!("rmsnorm [{n}, {c}]");
        check(&format!("{what} out"), &got[0], &out, 2e-6);
        check(&format!("{what} rstd"), &got[1], &rstd, 2e-6);
        check(&format!("{what} dx"), &got[2], &dx, 1e-5);
        check(&format!("{what} dweight"), &got[3], &dw, 1e-5);
    }
}

#[test]
fn residual_forward_and_backward_match_twin_exactly() {
    let gpu = gpu();
    let n = 37 * 20;
    let (a, b) = (uniform(301, n, -2.0, 2.0), uniform(302, n, -2.0, 2.0));
    let dout = uniform(303, n, -1.0, 1.0);
    let (da0, db0) = (uniform(304, n, -1.0, 1.0), uniform(305, n, -1.0, 1.0));
    let mut out = vec![0f32; n];
    ops::residual_forward(&mut out, &a, &b);
    let (mut da, mut db) = (da0.clone(), db0.clone());
    ops::residual_backward(&mut da, &mut db, &dout);

    let mut rec = Recorder::new(&gpu).unwrap();
    let (ag, bg) = (up(&mut rec, &a, &[37, 20]), up(&mut rec, &b, &[37, 20]));
    let og = rec.residual_add(&ag, &bg).unwrap();
    let dg = up(&mut rec, &dout, &[37, 20]);
    let (dag, dbg) = (up(&mut rec, &da0, &[37, 20]), up(&mut rec, &db0, &[37, 20]));
    rec.residual_backward(&dag, &dbg, &dg).unwrap();
    let got = read(&mut rec, &[&og, &dag, &dbg]);
    exact("residual forward", &got[0], &out);
    exact("residual backward da", &got[1], &da);
    exact("residual backward db", &got[2], &db);
}

// ---------------------------------------------------------------------------------------
// (b) matmul

#[test]
fn matmul_forward_and_backward_match_twin() {
    let gpu = gpu();
    // (N, I, O)
    for (i, &(n, in_dim, o)) in [
        (37, 20, 33),
        (1, 1, 1),
        (65, 64, 63),
        (130, 257, 70),
        (7, 3, 129),
        (39, 128, 344),
    ]
    .iter()
    .enumerate()
    {
        let s = 400 + 10 * i as u64;
        let x = uniform(s, n * in_dim, -1.0, 1.0);
        let w = uniform(s + 1, o * in_dim, -0.5, 0.5);
        let dout = uniform(s + 2, n * o, -1.0, 1.0);
        let dx0 = uniform(s + 3, n * in_dim, -0.5, 0.5);
        let dw0 = uniform(s + 4, o * in_dim, -0.5, 0.5);
        let mut y = vec![0f32; n * o];
        ops::matmul_forward(&mut y, &x, &w, in_dim);
        let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
        ops::matmul_backward(&mut dx, &mut dw, &dout, &x, &w, in_dim);

        let mut rec = Recorder::new(&gpu).unwrap();
        let xg = up(&mut rec, &x, &[n, in_dim]);
        let wg = up(&mut rec, &w, &[o, in_dim]);
        let yg = rec.linear(&xg, &wg, None).unwrap();
        let dg = up(&mut rec, &dout, &[n, o]);
        let dxg = up(&mut rec, &dx0, &[n, in_dim]);
        let dwg = up(&mut rec, &dw0, &[o, in_dim]);
        rec.matmul_backward(&dxg, &dwg, &dg, &xg, &wg).unwrap();
        let got = read(&mut rec, &[&yg, &dxg, &dwg]);
        let what = format!("matmul N {n} I {in_dim} O {o}");
        check(&format!("{what} forward"), &got[0], &y, 1e-5);
        check(&format!("{what} dinp"), &got[1], &dx, 1e-5);
        check(&format!("{what} dweight"), &got[2], &dw, 1e-5);
    }
}

// ---------------------------------------------------------------------------------------
// (c) SwiGLU, RoPE

#[test]
fn swiglu_forward_and_backward_match_twin() {
    let gpu = gpu();
    for (i, &(n, f)) in [(37, 33), (1, 1), (39, 344)].iter().enumerate() {
        let s = 500 + 10 * i as u64;
        let len = n * f;
        let gate = uniform(s, len, -6.0, 6.0);
        let upv = uniform(s + 1, len, -2.0, 2.0);
        let dout = uniform(s + 2, len, -1.0, 1.0);
        let dg0 = uniform(s + 3, len, -0.5, 0.5);
        let du0 = uniform(s + 4, len, -0.5, 0.5);
        let mut out = vec![0f32; len];
        ops::swiglu_forward(&mut out, &gate, &upv);
        let (mut dg, mut du) = (dg0.clone(), du0.clone());
        ops::swiglu_backward(&mut dg, &mut du, &dout, &gate, &upv);

        let mut rec = Recorder::new(&gpu).unwrap();
        let gg = up(&mut rec, &gate, &[n, f]);
        let ug = up(&mut rec, &upv, &[n, f]);
        let og = rec.swiglu(&gg, &ug).unwrap();
        let dog = up(&mut rec, &dout, &[n, f]);
        let dgg = up(&mut rec, &dg0, &[n, f]);
        let dug = up(&mut rec, &du0, &[n, f]);
        rec.swiglu_backward(&dgg, &dug, &dog, &gg, &ug).unwrap();
        let got = read(&mut rec, &[&og, &dgg, &dug]);
        let what = format!("swiglu [{n}, {f}]");
        check(&format!("{what} forward"), &got[0], &out, 2e-6);
        check(&format!("{what} dgate"), &got[1], &dg, 1e-5);
        check(&format!("{what} dup"), &got[2], &du, 1e-5);
    }
}

#[test]
fn rope_forward_and_backward_match_twin() {
    let gpu = gpu();
    // (B, T, heads, D): D = 6 has an odd half; 2 x 1 x 2 the smallest.
    for (i, &(b, t, heads, d)) in [(3, 13, 3, 6), (1, 37, 4, 10), (1, 1, 1, 2), (2, 64, 2, 32)]
        .iter()
        .enumerate()
    {
        let s = 600 + 10 * i as u64;
        let (n, width) = (b * t, heads * d);
        let x = uniform(s, n * width, -2.0, 2.0);
        let dout = uniform(s + 1, n * width, -1.0, 1.0);
        let dx0 = uniform(s + 2, n * width, -0.5, 0.5);
        let (cos, sin) = ops::rope_table::<f32>(t, d);
        let mut out = vec![0f32; n * width];
        ops::rope_forward(&mut out, &x, &cos, &sin, t, d, width);
        let mut dx = dx0.clone();
        ops::rope_backward(&mut dx, &dout, &cos, &sin, t, d, width);

        let mut rec = Recorder::new(&gpu).unwrap();
        let xg = up(&mut rec, &x, &[n, width]);
        let cg = up(&mut rec, &cos, &[t, d / 2]);
        let sg = up(&mut rec, &sin, &[t, d / 2]);
        let og = rec.rope_forward(&xg, &cg, &sg, t, d).unwrap();
        let dog = up(&mut rec, &dout, &[n, width]);
        let dxg = up(&mut rec, &dx0, &[n, width]);
        rec.rope_backward(&dxg, &dog, &cg, &sg, t, d).unwrap();
        let got = read(&mut rec, &[&og, &dxg]);
        let what = format!("rope B {b} T {t} heads {heads} D {d}");
        check(&format!("{what} forward"), &got[0], &out, 2e-6);
        check(&format!("{what} backward"), &got[1], &dx, 2e-6);
    }
}

// ---------------------------------------------------------------------------------------
// (d) attention

#[test]
fn attention_forward_and_backward_match_twin() {
    let gpu = gpu();
    for (i, &(b, t, heads, kv_heads, head_dim)) in [
        (3, 13, 4, 2, 5),
        (1, 37, 3, 1, 7),
        (1, 1, 1, 1, 1),
        (2, 70, 4, 4, 32),
    ]
    .iter()
    .enumerate()
    {
        let s = 700 + 10 * i as u64;
        let dims = AttnDims {
            b,
            t,
            heads,
            kv_heads,
            head_dim,
        };
        let n = b * t;
        let (qw, kw) = (heads * head_dim, kv_heads * head_dim);
        let q = uniform(s, n * qw, -1.5, 1.5);
        let k = uniform(s + 1, n * kw, -1.5, 1.5);
        let v = uniform(s + 2, n * kw, -1.0, 1.0);
        let dout = uniform(s + 3, n * qw, -1.0, 1.0);
        let dq0 = uniform(s + 4, n * qw, -0.1, 0.1);
        let dk0 = uniform(s + 5, n * kw, -0.1, 0.1);
        let dv0 = uniform(s + 6, n * kw, -0.1, 0.1);
        let (mut out, mut att) = (vec![0f32; n * qw], vec![0f32; b * heads * t * t]);
        ops::attention_forward(&mut out, &mut att, &q, &k, &v, dims);
        let (mut dq, mut dk, mut dv) = (dq0.clone(), dk0.clone(), dv0.clone());
        let mut datt = vec![0f32; att.len()];
        ops::attention_backward(
            &mut dq, &mut dk, &mut dv, &mut datt, &dout, &att, &q, &k, &v, dims,
        );

        let mut rec = Recorder::new(&gpu).unwrap();
        let qg = up(&mut rec, &q, &[n, qw]);
        let kg = up(&mut rec, &k, &[n, kw]);
        let vg = up(&mut rec, &v, &[n, kw]);
        let (og, ag) = rec.attention_forward(&qg, &kg, &vg, dims).unwrap();
        let dog = up(&mut rec, &dout, &[n, qw]);
        let dqg = up(&mut rec, &dq0, &[n, qw]);
        let dkg = up(&mut rec, &dk0, &[n, kw]);
        let dvg = up(&mut rec, &dv0, &[n, kw]);
        rec.attention_backward(&dqg, &dkg, &dvg, &dog, &ag, &qg, &kg, &vg, dims)
            .unwrap();
        let got = read(&mut rec, &[&og, &ag, &dqg, &dkg, &dvg]);
        let what = format!("attention B {b} T {t} H {heads} KV {kv_heads} D {head_dim}");
        check(&format!("{what} out"), &got[0], &out, 1e-5);
        check(&format!("{what} probabilities"), &got[1], &att, 1e-5);
        check(&format!("{what} dq"), &got[2], &dq, 1e-5);
        check(&format!("{what} dk"), &got[3], &dk, 1e-5);
        check(&format!("{what} dv"), &got[4], &dv, 1e-5);
    }
}

// ---------------------------------------------------------------------------------------
// (e) LM head + cross-entropy, norms, clipping, AdamW

#[test]
fn lm_head_xent_matches_twin() {
    let gpu = gpu();
    for (i, &(n, c, v)) in [(37, 20, 67), (1, 1, 1), (39, 128, 1000), (5, 33, 4099)]
        .iter()
        .enumerate()
    {
        let s = 800 + 10 * i as u64;
        let xf = uniform(s, n * c, -2.0, 2.0);
        let head = uniform(s + 1, v * c, -0.5, 0.5);
        let targets = tokens(s + 2, n, v.max(3))
            .iter()
            .map(|&t| t % v as u32)
            .collect::<Vec<_>>();
        let dxf0 = uniform(s + 3, n * c, -0.1, 0.1);
        let dh0 = uniform(s + 4, v * c, -0.1, 0.1);
        let (mut probs, mut losses) = (vec![0f32; n * v], vec![0f32; n]);
        let mean = ops::lm_head_xent_forward(&mut probs, &mut losses, &xf, &head, &targets, c);
        let probs_fwd = probs.clone();
        let (mut dxf, mut dh) = (dxf0.clone(), dh0.clone());
        ops::lm_head_xent_backward(&mut dxf, &mut dh, &mut probs, &xf, &head, &targets, c);

        let mut rec = Recorder::new(&gpu).unwrap();
        let xg = up(&mut rec, &xf, &[n, c]);
        let hg = up(&mut rec, &head, &[v, c]);
        let tg = rec.upload_u32(&targets, &[n]).unwrap();
        let dxg = up(&mut rec, &dxf0, &[n, c]);
        let dhg = up(&mut rec, &dh0, &[v, c]);
        let x = rec.lm_head_xent(&xg, &hg, &tg, Some((&dxg, &dhg))).unwrap();
        let got = read(&mut rec, &[&x.losses, &x.mean, &x.logits, &dxg, &dhg]);
        let what = format!("lm head xent N {n} C {c} V {v}");
        check(&format!("{what} losses"), &got[0], &losses, 1e-5);
        check(&format!("{what} mean"), &got[1], &[mean as f32], 1e-5);
        check(&format!("{what} dlogits"), &got[2], &probs, 1e-5);
        check(&format!("{what} dxf"), &got[3], &dxf, 1e-5);
        check(&format!("{what} dhead"), &got[4], &dh, 1e-5);

        // Forward only: the probabilities.
        let x = rec.lm_head_xent(&xg, &hg, &tg, None).unwrap();
        let got = read(&mut rec, &[&x.losses, &x.logits]);
        check(
            &format!("{what} losses (forward only)"),
            &got[0],
            &losses,
            1e-5,
        );
        check(&format!("{what} probabilities"), &got[1], &probs_fwd, 1e-5);
    }
}

#[test]
fn sum_squares_and_clip_scale_match_twin() {
    let gpu = gpu();
    let sizes = [1usize, 1000, 100_003, 37 * 20];
    let xs: Vec<Vec<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| uniform(900 + i as u64, n, -1.0, 1.0))
        .collect();
    // Slots: 0 = tensors 0 and 1 together, 1 = tensor 2, 2 = tensor 3 read as a view at an
    // odd offset inside a bigger buffer.
    let twin = [
        ops::sum_squares(&xs[0]) + ops::sum_squares(&xs[1]),
        ops::sum_squares(&xs[2]),
        ops::sum_squares(&xs[3]),
    ];
    let mut rec = Recorder::new(&gpu).unwrap();
    let sums = rec.zeros(&[3], DType::F32).unwrap();
    let g0 = up(&mut rec, &xs[0], &[sizes[0]]);
    let g1 = up(&mut rec, &xs[1], &[sizes[1]]);
    let g2 = up(&mut rec, &xs[2], &[sizes[2]]);
    let mut padded = vec![7.0f32; 3];
    padded.extend_from_slice(&xs[3]);
    padded.extend_from_slice(&[9.0; 5]);
    let big = up(&mut rec, &padded, &[padded.len()]);
    let g3 = big.view(3, &[37, 20]).unwrap();
    rec.sum_squares_into(&g0, &sums, 0, false).unwrap();
    rec.sum_squares_into(&g1, &sums, 0, true).unwrap();
    rec.sum_squares_into(&g2, &sums, 1, false).unwrap();
    rec.sum_squares_into(&g3, &sums, 2, false).unwrap();
    let total: f64 = twin.iter().sum();
    let mut scales = Vec::new();
    let clips = [0.0f32, 1.0, 10.0, 1000.0];
    for &clip in &clips {
        scales.push(rec.clip_scale(&sums, clip).unwrap());
    }
    let mut want_scales = Vec::new();
    for &clip in &clips {
        let coef = clip as f64 / (total.sqrt() + 1e-6);
        want_scales.push(if clip > 0.0 && coef < 1.0 {
            coef as f32
        } else {
            1.0
        });
    }
    let mut all = vec![&sums];
    all.extend(scales.iter());
    let got = read(&mut rec, &all);
    for s in 0..3 {
        check(
            &format!("sum of squares slot {s}"),
            &got[0][s..s + 1],
            &[twin[s] as f32],
            1e-5,
        );
    }
    for (j, &clip) in clips.iter().enumerate() {
        check(
            &format!("clip scale at {clip}"),
            &got[1 + j],
            &want_scales[j..j + 1],
            1e-6,
        );
    }
}

#[test]
fn adamw_matches_twin_over_three_steps() {
    let gpu = gpu();
    let n = 100_003;
    let p0 = uniform(1000, n, -1.0, 1.0);
    for (cfg, clip) in [
        (AdamConfig::default(), 0.0f64),
        (
            AdamConfig {
                weight_decay: 0.1,
                ..AdamConfig::default()
            },
            5.0,
        ),
    ] {
        let (mut p, mut m, mut v) = (p0.clone(), vec![0f32; n], vec![0f32; n]);
        let mut rec = Recorder::new(&gpu).unwrap();
        let pg = up(&mut rec, &p0, &[n]);
        let mg = rec.zeros(&[n], DType::F32).unwrap();
        let vg = rec.zeros(&[n], DType::F32).unwrap();
        let sums = rec.output(&[1], DType::F32).unwrap();
        for step in 1..=3u64 {
            let lr = ops::lr_at(step as usize, 10, 0.1, 1e-3);
            let g = uniform(1000 + step, n, -2.0, 2.0);
            // The twin: clip as train::train does, then the update.
            let mut gs = g.clone();
            let total = ops::sum_squares(&gs).sqrt();
            let coef = clip / (total + 1e-6);
            if clip > 0.0 && coef < 1.0 {
                ops::scale_inplace(&mut gs, coef as f32);
            }
            ops::adamw_update(&mut p, &gs, &mut m, &mut v, lr, step, &cfg);

            let gg = up(&mut rec, &g, &[n]);
            rec.sum_squares_into(&gg, &sums, 0, false).unwrap();
            let scale = rec.clip_scale(&sums, clip as f32).unwrap();
            rec.adamw(&pg, &gg, &mg, &vg, &scale, lr, step, &cfg)
                .unwrap();
            let got = read(&mut rec, &[&pg, &mg, &vg]);
            let what = format!("adamw wd {} clip {clip} step {step}", cfg.weight_decay);
            check(&format!("{what} m"), &got[1], &m, 1e-5);
            check(&format!("{what} v"), &got[2], &v, 1e-5);
            // The parameters, against the size of their change (f32 parameters near 1 hold
            // a change of ~1e-3 to about 1e-4 of itself: 1 ulp of 1 is 1.2e-7).
            let change = p
                .iter()
                .zip(&p0)
                .fold(0f64, |mx, (a, b)| mx.max((*a as f64 - *b as f64).abs()));
            let worst = got[0]
                .iter()
                .zip(&p)
                .fold(0f64, |mx, (a, b)| mx.max((*a as f64 - *b as f64).abs()))
                / change;
            assert!(
                worst <= 1e-3,
                "{what} parameters: {worst:.3e} of the change"
            );
            eprintln!("{what} parameters: {worst:.2e} of the largest change (tolerance 1e-3)");
        }
    }
}
