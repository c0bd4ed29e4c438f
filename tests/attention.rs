//! The CPU forward pass's fused attention (`compute::attention`) against an independent
//! implementation in candle tensor ops (heads transposed out, RoPE by narrow/cat, kv heads
//! repeated, the full score matrix, an additive -inf mask, softmax, then the heads back side
//! by side), in f32, on seeded random inputs of awkward sizes.

mod common;

use candle_core::{Device, Tensor, D};
use common::{candle_rope, uniform};
use layerlab::compute::attention::causal_attention;
use layerlab::compute::forward::AttentionShape;
use layerlab::model::llama::Rope;

/// (B T, heads D) -> (B, heads, T, D).
fn heads(x: &[f32], s: AttentionShape, n: usize) -> Tensor {
    Tensor::from_vec(x.to_vec(), (s.batch, s.t, n, s.d), &Device::Cpu)
        .and_then(|x| x.transpose(1, 2))
        .and_then(|x| x.contiguous())
        .unwrap()
}

fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    with_rope: Option<&Rope>,
    s: AttentionShape,
) -> Vec<f32> {
    let (mut qt, mut kt) = (heads(q, s, s.heads), heads(k, s, s.kv_heads));
    let vt = heads(v, s, s.kv_heads);
    if let Some(r) = with_rope {
        qt = candle_rope(&qt, r);
        kt = candle_rope(&kt, r);
    }
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
    let mask = Tensor::from_vec(mask, (s.t, s.t), &Device::Cpu).unwrap();
    let scores = scores.broadcast_add(&mask).unwrap();
    let m = scores.max_keepdim(D::Minus1).unwrap();
    let e = scores.broadcast_sub(&m).and_then(|x| x.exp()).unwrap();
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
    p.matmul(&vt)
        .and_then(|a| a.transpose(1, 2))
        .and_then(|a| a.flatten_all())
        .and_then(|a| a.to_vec1::<f32>())
        .unwrap()
}

#[test]
fn fused_attention_matches_candle_ops() {
    let mut checked = 0;
    for (i, &(batch, t, heads, kv_heads, d)) in [
        (1, 1, 1, 1, 2),
        (1, 7, 3, 1, 6),
        (2, 33, 9, 3, 64),
        (3, 65, 4, 2, 10),
        (1, 256, 9, 3, 64),
    ]
    .iter()
    .enumerate()
    {
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
        let r = Rope::new(t, d, 10000.0).unwrap();
        for with_rope in [false, true] {
            let tables = with_rope.then_some((r.cos.as_slice(), r.sin.as_slice()));
            let got = causal_attention(&q, &k, &v, tables, s).unwrap();
            let want = reference(&q, &k, &v, with_rope.then_some(&r), s);
            assert_eq!(got.len(), want.len());
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // Outputs are convex combinations of v (|v| <= 1): f32 rounding only.
            assert!(worst < 2e-6, "{s:?} rope {with_rope}: max |diff| {worst}");
            checked += 1;
        }
    }
    assert_eq!(checked, 10);
}
