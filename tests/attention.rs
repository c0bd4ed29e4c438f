//! The CPU forward pass's fused attention (`compute::attention`) against an independent
//! implementation in candle tensor ops (heads transposed out, RoPE by narrow/cat, kv heads
//! repeated, the full score matrix, an additive -inf mask, softmax, then the heads back side
//! by side), in f32, on seeded random inputs of awkward sizes.
//!
//! Also the CPU twins of the attention and SwiGLU kernels (`compute::cpu_forward`), the
//! references the WGSL kernels' parity tests hold the GPU against, against the same candle
//! ops in f64 (attention) and candle's `silu` in f64 (SwiGLU), so that the twins are not
//! checked only against the kernels they stand in for.

mod common;

use candle_core::{DType, Device, Tensor, D};
use common::{candle_rope, uniform};
use layerlab::compute::attention::causal_attention;
use layerlab::compute::cpu_forward;
use layerlab::compute::forward::AttentionShape;
use layerlab::model::llama::Rope;

/// (B T, heads D) -> (B, heads, T, D).
fn heads(x: &[f32], s: AttentionShape, n: usize) -> Tensor {
    Tensor::from_vec(x.to_vec(), (s.batch, s.t, n, s.d), &Device::Cpu)
        .and_then(|x| x.transpose(1, 2))
        .and_then(|x| x.contiguous())
        .unwrap()
}

/// Attention in candle ops, in `dtype` after RoPE (which stays f32, as its tables are).
fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    with_rope: Option<&Rope>,
    s: AttentionShape,
    dtype: DType,
) -> Vec<f64> {
    let (mut qt, mut kt) = (heads(q, s, s.heads), heads(k, s, s.kv_heads));
    let vt = heads(v, s, s.kv_heads);
    if let Some(r) = with_rope {
        qt = candle_rope(&qt, r);
        kt = candle_rope(&kt, r);
    }
    let to = |x: Tensor| x.to_dtype(dtype).unwrap();
    let (qt, kt, vt) = (to(qt), to(kt), to(vt));
    let rep = s.heads / s.kv_heads;
    let repeat = |x: Tensor| {
        x.unsqueeze(2)
            .and_then(|x| x.expand((s.batch, s.kv_heads, rep, s.t, s.d)))
            .and_then(|x| x.reshape((s.batch, s.heads, s.t, s.d)))
            .unwrap()
    };
    let (kt, vt) = (repeat(kt), repeat(vt));
    let scores = qt
        .matmul(&kt.t().unwrap())
        .and_then(|x| x.affine(1.0 / (s.d as f64).sqrt(), 0.0))
        .unwrap();
    let mask: Vec<f32> = (0..s.t * s.t)
        .map(|p| {
            if p % s.t > p / s.t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let mask = to(Tensor::from_vec(mask, (s.t, s.t), &Device::Cpu).unwrap());
    let scores = scores.broadcast_add(&mask).unwrap();
    let m = scores.max_keepdim(D::Minus1).unwrap();
    let e = scores.broadcast_sub(&m).and_then(|x| x.exp()).unwrap();
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
    p.matmul(&vt)
        .and_then(|a| a.transpose(1, 2))
        .and_then(|a| a.flatten_all())
        .and_then(|a| a.to_dtype(DType::F64))
        .and_then(|a| a.to_vec1::<f64>())
        .unwrap()
}

/// (B, T, H, KV, D): one of everything, odd head widths, grouped kv heads, T up to 256.
const SHAPES: [(usize, usize, usize, usize, usize); 5] = [
    (1, 1, 1, 1, 2),
    (1, 7, 3, 1, 6),
    (2, 33, 9, 3, 64),
    (3, 65, 4, 2, 10),
    (1, 256, 9, 3, 64),
];

/// Shape `i` of `SHAPES` and its seeded q, k in [-2, 2) and v in [-1, 1).
fn case(i: usize) -> (AttentionShape, [Vec<f32>; 3]) {
    let (batch, t, heads, kv_heads, d) = SHAPES[i];
    let s = AttentionShape {
        batch,
        t,
        heads,
        kv_heads,
        d,
    };
    let seed = 10 * i as u64;
    let q = uniform(seed, batch * t * heads * d, -2.0, 2.0);
    let k = uniform(seed + 1, batch * t * kv_heads * d, -2.0, 2.0);
    let v = uniform(seed + 2, batch * t * kv_heads * d, -1.0, 1.0);
    (s, [q, k, v])
}

/// max |got - want|, the f32 values taken exactly into f64.
fn max_diff(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0f64, f64::max)
}

#[test]
fn fused_attention_matches_candle_ops() {
    let mut checked = 0;
    for i in 0..SHAPES.len() {
        let (s, [q, k, v]) = case(i);
        let r = Rope::new(s.t, s.d, 10000.0).unwrap();
        for with_rope in [false, true] {
            let tables = with_rope.then_some((r.cos.as_slice(), r.sin.as_slice()));
            let got = causal_attention(&q, &k, &v, tables, s).unwrap();
            let want = reference(&q, &k, &v, with_rope.then_some(&r), s, DType::F32);
            let worst = max_diff(&got, &want);
            // Outputs are convex combinations of v (|v| <= 1): f32 rounding only.
            assert!(worst < 2e-6, "{s:?} rope {with_rope}: max |diff| {worst}");
            checked += 1;
        }
    }
    assert_eq!(checked, 10);
}

/// `cpu_forward::causal_attention`, the WGSL kernel's twin (no RoPE: the kernel takes q and
/// k already rotated), against the candle ops in f64.
#[test]
fn attention_twin_matches_candle_ops_in_f64() {
    for i in 0..SHAPES.len() {
        let (s, [q, k, v]) = case(i);
        let got = cpu_forward::causal_attention(&q, &k, &v, s);
        let worst = max_diff(&got, &reference(&q, &k, &v, None, s, DType::F64));
        // Convex combinations of v (|v| <= 1) again: the twin's f32 rounding only.
        assert!(worst < 2e-6, "{s:?}: max |twin - f64| {worst:e}");
    }
}

#[test]
fn swiglu_twin_matches_candle_silu_in_f64() {
    for (i, &len) in [1usize, 7, 257, 100_003].iter().enumerate() {
        let g = uniform(300 + i as u64, len, -20.0, 20.0);
        let u = uniform(310 + i as u64, len, -2.0, 2.0);
        let got = cpu_forward::swiglu(&g, &u);
        let f64s = |v: &[f32]| {
            let v: Vec<f64> = v.iter().map(|&x| x as f64).collect();
            Tensor::from_vec(v, len, &Device::Cpu).unwrap()
        };
        // silu(g) u = g / (1 + exp(-g)) u, in f64.
        let want = (f64s(&g).silu().unwrap() * f64s(&u))
            .and_then(|y| y.to_vec1::<f64>())
            .unwrap();
        for (j, (&a, &b)) in got.iter().zip(&want).enumerate() {
            // A product and a quotient of f32 values: a few ulp of the value itself.
            let err = (a as f64 - b).abs();
            assert!(
                err <= 1e-6 * b.abs(),
                "swiglu [{len}] at {j}: g {} u {}: twin {a}, f64 {b}",
                g[j],
                u[j]
            );
        }
    }
}
