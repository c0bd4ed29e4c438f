//! Every training kernel's backward against central finite differences of its forward, in
//! f64, on tiny awkward sizes (odd T, GQA with 2 query heads per kv head, N not a multiple of
//! anything). The scalar checked is L = sum(out * R) for a random R, so dout = R.

use layerlab::train::ops::{self, AttnDims};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn randn(seed: u64, n: usize, scale: f64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            (u * 2.0 - 1.0) * scale
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Central differences of `loss` with respect to every entry of `x`, against `analytic`.
fn check(what: &str, x: &[f64], analytic: &[f64], loss: impl Fn(&[f64]) -> f64) {
    const H: f64 = 1e-6;
    assert_eq!(x.len(), analytic.len(), "{what}");
    let mut worst = 0.0f64;
    let scale = analytic.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    for i in 0..x.len() {
        let mut xp = x.to_vec();
        xp[i] += H;
        let mut xm = x.to_vec();
        xm[i] -= H;
        let numeric = (loss(&xp) - loss(&xm)) / (2.0 * H);
        worst = worst.max((numeric - analytic[i]).abs() / scale);
    }
    assert!(worst < 1e-6, "{what}: worst relative error {worst:e}");
}

#[test]
fn matmul_backward_matches_finite_differences() {
    let (n, i, o) = (7, 5, 3);
    let x = randn(1, n * i, 1.0);
    let w = randn(2, o * i, 1.0);
    let r = randn(3, n * o, 1.0);
    let fwd = |x: &[f64], w: &[f64]| {
        let mut y = vec![0.0; n * o];
        ops::matmul_forward(&mut y, x, w, i);
        dot(&y, &r)
    };
    let (mut dx, mut dw) = (vec![0.0; n * i], vec![0.0; o * i]);
    ops::matmul_backward(&mut dx, &mut dw, &r, &x, &w, i);
    check("matmul dinp", &x, &dx, |x| fwd(x, &w));
    check("matmul dweight", &w, &dw, |w| fwd(&x, w));
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let (n, c) = (5, 7);
    let x = randn(4, n * c, 2.0);
    let w = randn(5, c, 1.5);
    let r = randn(6, n * c, 1.0);
    let fwd = |x: &[f64], w: &[f64]| {
        let (mut y, mut s) = (vec![0.0; n * c], vec![0.0; n]);
        ops::rmsnorm_forward(&mut y, &mut s, x, w);
        dot(&y, &r)
    };
    let (mut y, mut rstd) = (vec![0.0; n * c], vec![0.0; n]);
    ops::rmsnorm_forward(&mut y, &mut rstd, &x, &w);
    // The forward itself against its definition: x / sqrt(mean x^2 + 1e-6) * w.
    for row in 0..n {
        let xs = &x[row * c..(row + 1) * c];
        let ms = xs.iter().map(|v| v * v).sum::<f64>() / c as f64;
        for j in 0..c {
            let want = xs[j] / (ms + 1e-6).sqrt() * w[j];
            assert!((y[row * c + j] - want).abs() < 1e-12);
        }
    }
    let (mut dx, mut dw) = (vec![0.0; n * c], vec![0.0; c]);
    ops::rmsnorm_backward(&mut dx, &mut dw, &r, &x, &w, &rstd);
    check("rmsnorm dinp", &x, &dx, |x| fwd(x, &w));
    check("rmsnorm dweight", &w, &dw, |w| fwd(&x, w));
}

#[test]
fn rope_backward_matches_finite_differences_and_rotates_half_split() {
    let (b, t, heads, d) = (2, 5, 3, 6);
    let width = heads * d;
    let n = b * t;
    let x = randn(7, n * width, 1.0);
    let r = randn(8, n * width, 1.0);
    let (cos, sin) = ops::rope_table::<f64>(t, d);
    let fwd = |x: &[f64]| {
        let mut y = vec![0.0; n * width];
        ops::rope_forward(&mut y, x, &cos, &sin, t, d, width);
        dot(&y, &r)
    };
    let mut dx = vec![0.0; n * width];
    ops::rope_backward(&mut dx, &r, &cos, &sin, t, d, width);
    check("rope dinp", &x, &dx, fwd);
    // HF's rotate_half at position p, pair (j, j + D/2), angle p * 10000^(-2j/D).
    let mut y = vec![0.0; n * width];
    ops::rope_forward(&mut y, &x, &cos, &sin, t, d, width);
    let (row, h, j) = (t + 3, 2, 1);
    let pos = row % t;
    let ang = pos as f64 * 10000f64.powf(-((2 * j) as f64) / d as f64);
    let base = row * width + h * d;
    let (x1, x2) = (x[base + j], x[base + j + d / 2]);
    assert!((y[base + j] - (x1 * ang.cos() - x2 * ang.sin())).abs() < 1e-12);
    assert!((y[base + j + d / 2] - (x2 * ang.cos() + x1 * ang.sin())).abs() < 1e-12);
}

#[test]
fn attention_backward_matches_finite_differences_with_gqa() {
    let dims = AttnDims {
        b: 2,
        t: 5,
        heads: 4,
        kv_heads: 2,
        head_dim: 3,
    };
    let n = dims.b * dims.t;
    let (qw, kw) = (dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim);
    let q = randn(9, n * qw, 1.0);
    let k = randn(10, n * kw, 1.0);
    let v = randn(11, n * kw, 1.0);
    let r = randn(12, n * qw, 1.0);
    let fwd = |q: &[f64], k: &[f64], v: &[f64]| {
        let mut y = vec![0.0; n * qw];
        let mut att = vec![0.0; dims.b * dims.heads * dims.t * dims.t];
        ops::attention_forward(&mut y, &mut att, q, k, v, dims);
        dot(&y, &r)
    };
    let mut y = vec![0.0; n * qw];
    let mut att = vec![0.0; dims.b * dims.heads * dims.t * dims.t];
    ops::attention_forward(&mut y, &mut att, &q, &k, &v, dims);
    // Causality: the first position of every sequence sees only itself, so its output is
    // its own value row (query head h reads kv head h / 2).
    for h in 0..dims.heads {
        for j in 0..dims.head_dim {
            let got = y[h * dims.head_dim + j];
            let want = v[(h / 2) * dims.head_dim + j];
            assert!((got - want).abs() < 1e-12);
        }
    }
    let (mut dq, mut dk, mut dv) = (vec![0.0; n * qw], vec![0.0; n * kw], vec![0.0; n * kw]);
    let mut datt = vec![0.0; att.len()];
    ops::attention_backward(
        &mut dq, &mut dk, &mut dv, &mut datt, &r, &att, &q, &k, &v, dims,
    );
    check("attention dq", &q, &dq, |q| fwd(q, &k, &v));
    check("attention dk", &k, &dk, |k| fwd(&q, k, &v));
    check("attention dv", &v, &dv, |v| fwd(&q, &k, v));
}

#[test]
fn swiglu_and_residual_backward_match_finite_differences() {
    let n = 13;
    let g = randn(13, n, 3.0);
    let u = randn(14, n, 2.0);
    let r = randn(15, n, 1.0);
    let fwd = |g: &[f64], u: &[f64]| {
        let mut y = vec![0.0; n];
        ops::swiglu_forward(&mut y, g, u);
        dot(&y, &r)
    };
    let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
    ops::swiglu_backward(&mut dg, &mut du, &r, &g, &u);
    check("swiglu dgate", &g, &dg, |g| fwd(g, &u));
    check("swiglu dup", &u, &du, |u| fwd(&g, u));
    let res = |a: &[f64], b: &[f64]| {
        let mut y = vec![0.0; n];
        ops::residual_forward(&mut y, a, b);
        dot(&y, &r)
    };
    let (mut da, mut db) = (vec![0.0; n], vec![0.0; n]);
    ops::residual_backward(&mut da, &mut db, &r);
    check("residual da", &g, &da, |a| res(a, &u));
    check("residual db", &u, &db, |b| res(&g, b));
}

#[test]
fn embedding_backward_scatter_adds_repeated_tokens() {
    let (v, c) = (6, 4);
    let tokens = [3u32, 1, 3, 5, 3, 0, 1];
    let n = tokens.len();
    let wte = randn(16, v * c, 1.0);
    let r = randn(17, n * c, 1.0);
    let fwd = |w: &[f64]| {
        let mut y = vec![0.0; n * c];
        ops::embedding_forward(&mut y, &tokens, w, c);
        dot(&y, &r)
    };
    let mut dw = vec![0.0; v * c];
    ops::embedding_backward(&mut dw, &r, &tokens, c);
    check("embedding dwte", &wte, &dw, fwd);
}

#[test]
fn lm_head_cross_entropy_matches_finite_differences() {
    let (n, c, v) = (5, 4, 7);
    let x = randn(18, n * c, 1.0);
    let w = randn(19, v * c, 1.5);
    let targets = [0u32, 6, 3, 3, 1];
    let fwd = |x: &[f64], w: &[f64]| {
        let (mut p, mut l) = (vec![0.0; n * v], vec![0.0; n]);
        ops::lm_head_xent_forward(&mut p, &mut l, x, w, &targets, c)
    };
    // The loss against its definition: mean of logsumexp(logits) - logit[target].
    let mut want = 0.0;
    for row in 0..n {
        let logits: Vec<f64> = (0..v)
            .map(|j| dot(&x[row * c..(row + 1) * c], &w[j * c..(j + 1) * c]))
            .collect();
        let lse = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
        want += lse - logits[targets[row] as usize];
    }
    assert!((fwd(&x, &w) - want / n as f64).abs() < 1e-12);
    let (mut p, mut l) = (vec![0.0; n * v], vec![0.0; n]);
    ops::lm_head_xent_forward(&mut p, &mut l, &x, &w, &targets, c);
    let (mut dx, mut dw) = (vec![0.0; n * c], vec![0.0; v * c]);
    ops::lm_head_xent_backward(&mut dx, &mut dw, &mut p, &x, &w, &targets, c);
    check("lm head dxf", &x, &dx, |x| fwd(x, &w));
    check("lm head dweight", &w, &dw, |w| fwd(&x, w));
}

#[test]
fn cosine_schedule_follows_the_mix_ln_formula() {
    // 100 steps, 10% warm-up (W = 10), peak 1e-3: the LambdaLR values of the Mix-LN code's
    // get_cyclical_cosine_schedule_with_min_lr(min_lr_ratio = 0.1), computed by hand.
    let peak = 1e-3;
    assert_eq!(ops::lr_at(0, 100, 0.1, peak), 0.0);
    assert!((ops::lr_at(5, 100, 0.1, peak) - 0.5e-3).abs() < 1e-15);
    assert!((ops::lr_at(10, 100, 0.1, peak) - 1e-3).abs() < 1e-15);
    // Half-way through the decay (step 55 of 10..100): 0.1 + 0.9 * 0.5 = 0.55 of peak.
    assert!((ops::lr_at(55, 100, 0.1, peak) - 0.55e-3).abs() < 1e-15);
    // The last step: progress 89/90, just above the 10% floor.
    let last = 0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * 89.0 / 90.0).cos());
    assert!((ops::lr_at(99, 100, 0.1, peak) - last * peak).abs() < 1e-15);
}

/// `ops::exp_f32` (the f32 kernels' e^x: multiplies and adds only, the same bits in the page
/// and the CLI) against e^x in f64 rounded once: within 2 ulp wherever the result is a normal
/// float, on a dense sweep and at the edges; 0 far below, infinity above, NaN kept.
#[test]
fn exp_f32_is_within_two_ulp_of_the_true_value() {
    let ulp_err = |x: f32| {
        let got = ops::exp_f32(x);
        let want = (x as f64).exp();
        let ulp = {
            let w = want as f32;
            (f32::from_bits(w.to_bits() + 1) - w) as f64
        };
        (got as f64 - want).abs() / ulp
    };
    let mut worst = (0.0f64, 0.0f32);
    let mut x = -87.0f32;
    while x < 88.7 {
        let e = ulp_err(x);
        if e > worst.0 {
            worst = (e, x);
        }
        x += 0.000_731; // about 240,000 points, not aligned with ln 2
    }
    for x in [
        0.0f32,
        -0.0,
        1e-30,
        -1e-30,
        1.0,
        -1.0,
        0.5 * std::f32::consts::LN_2,
        88.0,
        -87.0,
    ] {
        let e = ulp_err(x);
        if e > worst.0 {
            worst = (e, x);
        }
    }
    println!("exp_f32: worst {:.3} ulp at x = {}", worst.0, worst.1);
    assert!(
        worst.0 <= 2.0,
        "exp_f32 is {} ulp off at x = {}",
        worst.0,
        worst.1
    );
    assert_eq!(ops::exp_f32(0.0), 1.0);
    assert_eq!(ops::exp_f32(-200.0), 0.0);
    assert_eq!(ops::exp_f32(f32::NEG_INFINITY), 0.0);
    assert_eq!(ops::exp_f32(100.0), f32::INFINITY);
    assert_eq!(ops::exp_f32(f32::INFINITY), f32::INFINITY);
    assert!(ops::exp_f32(f32::NAN).is_nan());
    // Subnormal results: close to the true value in absolute terms.
    for x in [-88.0f32, -95.0, -103.0] {
        let (got, want) = (ops::exp_f32(x) as f64, (x as f64).exp());
        assert!(
            (got - want).abs() <= 2.0 * 1.4e-45,
            "exp_f32({x}) = {got}, want {want}"
        );
    }
}
