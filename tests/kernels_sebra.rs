//! Parity of the bias lab's CNN kernels (`compute::sebra_kernels`, shaders/sebra_cnn.wgsl)
//! with their CPU twins in `sebra::cnn`, on the GPU wgpu finds (Mesa's lavapipe; a missing
//! adapter fails), on random inputs of awkward sizes (odd channel counts, maps of 7 x 13,
//! 13 x 7, 9 x 11 and 1 x 1, batch 3, 8-value chunks with and without a tail). The twins
//! themselves are checked against finite differences and candle in `sebra::cnn`'s tests.
//!
//! Every backward adds into gradients that start from random values (not zeros), so the
//! accumulation is checked too; the convolution's dcols starts from garbage (it must be
//! overwritten). The kernels add in the twins' order, so every result is compared bit for
//! bit: always for the ops without a multiply-add (im2col, ReLU, the pools' forwards and the
//! max-pool's backward, the bias gradient's sums), on a software adapter (lavapipe) for the
//! rest, which a hardware driver may compile into FMAs (then within 1e-5; see
//! `exact_unless_fused`).

mod common;

use common::{check, exact, gpu, uniform};
use layerlab::compute::sebra_kernels::CeWeighting;
use layerlab::compute::{DType, GpuContext, GpuTensor, Recorder};
use layerlab::sebra::cnn::{self, ConvDims};
use layerlab::sebra::loss;
use layerlab::sebra::model::{Net, NetConfig, Params};
use layerlab::sebra::run::ce_step;
use layerlab::sebra::ModelKind;

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    pollster::block_on(f)
}

/// A result with multiply-adds (the convolution's products, the average pool's backward): the
/// twin's bits on a software adapter (lavapipe, where every one was measured bit-exact: its
/// LLVM does not contract a multiply and an add); a hardware driver may fuse them into FMAs,
/// which WGSL allows, so there within 1e-5 of the tensor's largest value.
fn exact_unless_fused(gpu: &GpuContext, what: &str, got: &[f32], want: &[f32]) {
    if gpu.is_software() {
        exact(what, got, want);
    } else {
        check(what, got, want, 1e-5);
    }
}

fn up(rec: &mut Recorder, v: &[f32], shape: &[usize]) -> GpuTensor {
    rec.upload_f32(v, shape).unwrap()
}

/// The network's parameters on the GPU, and zeroed gradients of the same shapes.
fn upload_params(
    rec: &mut Recorder,
    net: &Net<f32>,
    cfg: &NetConfig,
) -> (Vec<GpuTensor>, Vec<GpuTensor>) {
    let specs = cfg.specs();
    let pg = net
        .params
        .tensors
        .iter()
        .zip(&specs)
        .map(|(t, (_, shape, _))| up(rec, t, shape))
        .collect();
    let gg = specs
        .iter()
        .map(|(_, shape, _)| rec.zeros(shape, DType::F32).unwrap())
        .collect();
    (pg, gg)
}

fn read(rec: &mut Recorder, ts: &[&GpuTensor]) -> Vec<Vec<f32>> {
    run(rec.read_many(ts)).unwrap()
}

/// Awkward convolutions: odd C and O, non-square maps, P with and without a tail of 8,
/// batch 1 and 3, a 1 x 1 map (every tap but the centre in the padding).
const DIMS: [ConvDims; 5] = [
    ConvDims {
        b: 3,
        c: 3,
        o: 5,
        h: 7,
        w: 13,
    },
    ConvDims {
        b: 1,
        c: 1,
        o: 1,
        h: 1,
        w: 1,
    },
    ConvDims {
        b: 2,
        c: 5,
        o: 7,
        h: 13,
        w: 7,
    },
    ConvDims {
        b: 3,
        c: 17,
        o: 9,
        h: 9,
        w: 11,
    },
    ConvDims {
        b: 3,
        c: 7,
        o: 3,
        h: 4,
        w: 2,
    },
];

#[test]
fn im2col_forward_and_backward_match_twin_exactly() {
    let gpu = gpu();
    for (i, &d) in DIMS.iter().enumerate() {
        let s = 100 + 10 * i as u64;
        let (k, p) = (d.taps(), d.pixels());
        let x = uniform(s, d.b * d.c * p, -1.0, 1.0);
        let dcols = uniform(s + 1, d.b * k * p, -1.0, 1.0);
        let dx0 = uniform(s + 2, x.len(), -0.5, 0.5);

        let mut cols = vec![0f32; d.b * k * p];
        cnn::im2col_forward(&mut cols, &x, d);
        let mut dx = dx0.clone();
        cnn::im2col_backward(&mut dx, &dcols, d);

        let mut rec = Recorder::new(&gpu).unwrap();
        let xg = up(&mut rec, &x, &[d.b, d.c, d.h, d.w]);
        let cg = rec.im2col_forward(&xg, d).unwrap();
        let dcg = up(&mut rec, &dcols, &[d.b, k, p]);
        let dxg = up(&mut rec, &dx0, &[d.b, d.c, d.h, d.w]);
        rec.im2col_backward(&dxg, &dcg, d).unwrap();
        let got = read(&mut rec, &[&cg, &dxg]);
        exact(&format!("im2col forward {d:?}"), &got[0], &cols);
        exact(&format!("im2col backward {d:?}"), &got[1], &dx);
    }
}

#[test]
fn conv3x3_forward_and_backward_match_twin_exactly() {
    let gpu = gpu();
    for (i, &d) in DIMS.iter().enumerate() {
        let s = 200 + 10 * i as u64;
        let (k, p) = (d.taps(), d.pixels());
        let x = uniform(s, d.b * d.c * p, -1.0, 1.0);
        let wt = uniform(s + 1, d.o * k, -0.5, 0.5);
        let bias = uniform(s + 2, d.o, -0.5, 0.5);
        let dout = uniform(s + 3, d.b * d.o * p, -1.0, 1.0);
        let dw0 = uniform(s + 4, d.o * k, -0.5, 0.5);
        let db0 = uniform(s + 5, d.o, -0.5, 0.5);
        let dx0 = uniform(s + 6, x.len(), -0.5, 0.5);
        let garbage = uniform(s + 7, d.b * k * p, 3.0, 4.0);

        let mut cols = vec![0f32; d.b * k * p];
        cnn::im2col_forward(&mut cols, &x, d);
        let mut out = vec![0f32; d.b * d.o * p];
        cnn::conv3x3_forward(&mut out, &cols, &wt, &bias, d);
        let (mut dw, mut db, mut dcols, mut dx) =
            (dw0.clone(), db0.clone(), garbage.clone(), dx0.clone());
        cnn::conv3x3_backward(&mut dcols, &mut dw, &mut db, &dout, &cols, &wt, d);
        cnn::im2col_backward(&mut dx, &dcols, d);

        let mut rec = Recorder::new(&gpu).unwrap();
        let xg = up(&mut rec, &x, &[d.b, d.c, d.h, d.w]);
        let wg = up(&mut rec, &wt, &[d.o, k]);
        let bg = up(&mut rec, &bias, &[d.o]);
        let cg = rec.im2col_forward(&xg, d).unwrap();
        let og = rec.conv3x3_forward(&cg, &wg, &bg, d).unwrap();
        let dog = up(&mut rec, &dout, &[d.b, d.o, d.h, d.w]);
        let dwg = up(&mut rec, &dw0, &[d.o, k]);
        let dbg = up(&mut rec, &db0, &[d.o]);
        let dcg = up(&mut rec, &garbage, &[d.b, k, p]);
        let dxg = up(&mut rec, &dx0, &[d.b, d.c, d.h, d.w]);
        rec.conv3x3_backward(&dcg, &dwg, &dbg, &dog, &cg, &wg, d)
            .unwrap();
        rec.im2col_backward(&dxg, &dcg, d).unwrap();
        let got = read(&mut rec, &[&og, &dwg, &dbg, &dcg, &dxg]);
        exact_unless_fused(&gpu, &format!("conv forward {d:?}"), &got[0], &out);
        exact_unless_fused(&gpu, &format!("conv dweight {d:?}"), &got[1], &dw);
        exact(&format!("conv dbias {d:?}"), &got[2], &db);
        exact_unless_fused(&gpu, &format!("conv dcols {d:?}"), &got[3], &dcols);
        exact_unless_fused(&gpu, &format!("conv dinp {d:?}"), &got[4], &dx);
    }
}

/// Values on a grid of 1/4 in [-2, 2]: exact zeros for ReLU and ties for the max-pool (the
/// first of equal maxima wins).
fn coarse(seed: u64, n: usize) -> Vec<f32> {
    uniform(seed, n, -2.0, 2.0)
        .into_iter()
        .map(|v| (v * 4.0).round() / 4.0)
        .collect()
}

#[test]
fn relu_forward_and_backward_match_twin_exactly() {
    let gpu = gpu();
    for (i, &n) in [1usize, 255, 257, 3 * 5 * 7 * 13].iter().enumerate() {
        let s = 300 + 10 * i as u64;
        let x = coarse(s, n);
        let dout = uniform(s + 1, n, -1.0, 1.0);
        let dx0 = uniform(s + 2, n, -0.5, 0.5);
        let mut out = vec![0f32; n];
        cnn::relu_forward(&mut out, &x);
        let mut dx = dx0.clone();
        cnn::relu_backward(&mut dx, &dout, &x);

        let mut rec = Recorder::new(&gpu).unwrap();
        let xg = up(&mut rec, &x, &[n]);
        let og = rec.relu_forward(&xg).unwrap();
        let dog = up(&mut rec, &dout, &[n]);
        let dxg = up(&mut rec, &dx0, &[n]);
        rec.relu_backward(&dxg, &dog, &xg).unwrap();
        let got = read(&mut rec, &[&og, &dxg]);
        exact(&format!("relu forward {n}"), &got[0], &out);
        exact(&format!("relu backward {n}"), &got[1], &dx);
    }
}

#[test]
fn pools_forward_and_backward_match_twin_exactly() {
    let gpu = gpu();
    // (planes, h, w): odd sizes drop a row and a column. (A map that pools to nothing, h or
    // w of 1, is not tested: the twin panics there, rayon refusing chunks of 0.)
    for (i, &(planes, h, w)) in [(15, 7, 13), (1, 2, 2), (21, 13, 7), (4, 3, 3), (9, 8, 6)]
        .iter()
        .enumerate()
    {
        let s = 400 + 10 * i as u64;
        let (ho, wo) = (h / 2, w / 2);
        let x = coarse(s, planes * h * w);
        let dout = uniform(s + 1, planes * ho * wo, -1.0, 1.0);
        let dx0 = uniform(s + 2, x.len(), -0.5, 0.5);
        let (mut out, mut am) = (vec![0f32; planes * ho * wo], vec![0u32; planes * ho * wo]);
        cnn::maxpool2_forward(&mut out, &mut am, &x, h, w);
        let mut dx = dx0.clone();
        cnn::maxpool2_backward(&mut dx, &dout, &am, h, w);

        let xs = uniform(s + 3, planes * h * w, -1.0, 1.0);
        let gdout = uniform(s + 4, planes, -1.0, 1.0);
        let mut gap = vec![0f32; planes];
        cnn::avgpool_forward(&mut gap, &xs, h * w);
        let mut gdx = dx0.clone();
        cnn::avgpool_backward(&mut gdx, &gdout, h * w);

        let mut rec = Recorder::new(&gpu).unwrap();
        let xg = up(&mut rec, &x, &[planes, h, w]);
        let (og, amg) = rec.maxpool2_forward(&xg, h, w).unwrap();
        let dog = up(&mut rec, &dout, &[planes, ho, wo]);
        let dxg = up(&mut rec, &dx0, &[planes, h, w]);
        rec.maxpool2_backward(&dxg, &dog, &amg, h, w).unwrap();
        let xsg = up(&mut rec, &xs, &[planes, h * w]);
        let gapg = rec.avgpool_forward(&xsg, h * w).unwrap();
        let gdog = up(&mut rec, &gdout, &[planes]);
        let gdxg = up(&mut rec, &dx0, &[planes, h, w]);
        rec.avgpool_backward(&gdxg, &gdog, h * w).unwrap();
        let got = read(&mut rec, &[&og, &dxg, &gapg, &gdxg]);
        let what = format!("{planes} planes of {h} x {w}");
        exact(&format!("maxpool forward {what}"), &got[0], &out);
        if !am.is_empty() {
            assert_eq!(run(rec.read_u32(&amg)).unwrap(), am, "argmax {what}");
        }
        exact(&format!("maxpool backward {what}"), &got[1], &dx);
        exact(&format!("avgpool forward {what}"), &got[2], &gap);
        exact_unless_fused(&gpu, &format!("avgpool backward {what}"), &got[3], &gdx);
    }
}

/// Shapes that do not fit are errors, not out-of-bounds reads.
#[test]
fn mismatched_shapes_are_errors() {
    let gpu = gpu();
    let d = DIMS[0];
    let mut rec = Recorder::new(&gpu).unwrap();
    let x = rec.zeros(&[d.b, d.c, d.h, d.w + 1], DType::F32).unwrap();
    assert!(rec.im2col_forward(&x, d).is_err());
    let cols = rec.zeros(&[d.b, d.taps(), d.pixels()], DType::F32).unwrap();
    let wt = rec.zeros(&[d.o, d.taps()], DType::F32).unwrap();
    let bias = rec.zeros(&[d.o + 1], DType::F32).unwrap();
    assert!(rec.conv3x3_forward(&cols, &wt, &bias, d).is_err());
    assert!(rec.maxpool2_forward(&x, 5, 5).is_err());
    let u = rec.zeros(&[d.h, d.w], DType::U32).unwrap();
    assert!(rec.relu_forward(&x).is_ok());
    assert!(rec.avgpool_forward(&u, d.w).is_err());
}

/// The whole CNN (three conv-ReLU-pool blocks, global average pool, linear head, mean
/// cross-entropy) forward and backward in one recording against `sebra::model`'s CPU net
/// (itself checked against PyTorch in tests/sebra_model.rs), at the lab's default size and at
/// an awkward one (S = 21: maps 21 -> 10 -> 5 -> 2, odd widths, K = 3, B = 3).
///
/// The backbone's forward is the twins' own sequence of bit-exact kernels, so the features
/// are compared bit for bit (on lavapipe, see `exact_unless_fused`); from the head on the GPU differs in rounding (the head's
/// product sums k in order where the CPU's `matmul_forward` keeps 8 partial sums; WGSL's exp
/// and log are a few ulp from libm; the CPU loss is summed in f64), which the backward
/// carries into every gradient: loss, logits' gradient and all gradients within 1e-5 of the
/// tensor's largest value.
#[test]
fn whole_cnn_loss_and_gradients_match_cpu_model() {
    let gpu = gpu();
    let configs = [
        (
            NetConfig {
                kind: ModelKind::Cnn,
                classes: 4,
                image: 24,
                width: 16,
            },
            4,
        ),
        (
            NetConfig {
                kind: ModelKind::Cnn,
                classes: 3,
                image: 21,
                width: 5,
            },
            3,
        ),
    ];
    for (i, &(cfg, b)) in configs.iter().enumerate() {
        let s = 500 + 10 * i as u64;
        let net = Net::<f32>::new(cfg, s);
        let x = uniform(s + 1, b * cfg.input_len(), 0.0, 1.0);
        let labels: Vec<u32> = (0..b).map(|r| ((r * 7 + i) % cfg.classes) as u32).collect();

        let acts = net.backbone_forward(&x, b);
        let logits = net.head_forward(&acts.features);
        let ones = vec![1f32; b];
        let cpu_loss = loss::weighted_ce_forward(&logits, &labels, &ones);
        let probs = loss::softmax(&logits, cfg.classes);
        let mut dlogits = vec![0f32; logits.len()];
        loss::weighted_ce_backward(&mut dlogits, &probs, &labels, &ones, 1.0);
        let mut grads = Params::<f32>::zeros(&cfg);
        let mut dfeat = vec![0f32; acts.features.len()];
        net.head_backward(&mut grads, &mut dfeat, &dlogits, &acts.features);
        net.backbone_backward(&mut grads, &acts, &dfeat);

        let mut rec = Recorder::new(&gpu).unwrap();
        let (pg, gg) = upload_params(&mut rec, &net, &cfg);
        let xg = up(&mut rec, &x, &[b, 3, cfg.image, cfg.image]);
        let lg = rec.upload_u32(&labels, &[b]).unwrap();
        let step = rec.cnn_loss_backward(&cfg, &pg, &gg, &xg, &lg).unwrap();
        let mut outs = vec![&step.loss, &step.features, &step.dlogits];
        outs.extend(gg.iter());
        let got = read(&mut rec, &outs);

        let what = format!("S {} W {} K {} B {b}", cfg.image, cfg.width, cfg.classes);
        let loss_diff = (got[0][0] as f64 - cpu_loss).abs() / cpu_loss.abs();
        assert!(
            loss_diff <= 1e-5,
            "{what} loss: gpu {} cpu {cpu_loss} ({loss_diff:.2e})",
            got[0][0]
        );
        eprintln!("{what} loss: {loss_diff:.2e} (tolerance 1e-5)");
        exact_unless_fused(&gpu, &format!("{what} features"), &got[1], &acts.features);
        check(&format!("{what} dlogits"), &got[2], &dlogits, 1e-5);
        for ((name, _, _), (g, want)) in cfg.specs().iter().zip(got[3..].iter().zip(&grads.tensors))
        {
            check(&format!("{what} d{name}"), g, want, 1e-5);
        }
    }
}

/// Logits (B, K) in [-8, 8], and in every seventh row the label's logit 120 below the
/// others: p[label] underflows to 0 on both sides (w = 0 there, as pow(0, 1/beta) is).
fn awkward_logits(seed: u64, b: usize, k: usize) -> (Vec<f32>, Vec<u32>) {
    let mut logits = uniform(seed, b * k, -8.0, 8.0);
    let labels: Vec<u32> = (0..b).map(|r| ((r * 5 + r / 3) % k) as u32).collect();
    if k > 1 {
        for r in (3..b).step_by(7) {
            let row = &mut logits[r * k..(r + 1) * k];
            row.iter_mut().for_each(|v| *v = 40.0);
            row[labels[r] as usize] = -80.0;
        }
    }
    (logits, labels)
}

/// The weighted cross-entropy after the softmax (sebra_loss.wgsl, after xent.wgsl's softmax
/// and with its loss_mean) against its twins in `sebra::loss` (`softmax`, `upweights`,
/// `weighted_ce_forward`, `weighted_ce_backward`; themselves checked against PyTorch and
/// finite differences in tests/sebra_model.rs), with fixed weights (the oracle's) and Stage
/// 1's up-weights, on sizes that are not multiples of the workgroup (B 1, 7, 257, 300; K 1,
/// 2, 3, 13), with rows whose p[label] underflows to 0.
///
/// Tolerances: the softmax's exp and the weights' pow are WGSL's (a few ulp from libm; the CPU
/// takes the pow in f64), the mean is summed in f32 against the CPU's f64: weights and dlogits
/// within 1e-5 of the tensor's largest value, the loss within 1e-5 relative. Fixed weights
/// come back as given, bit for bit.
#[test]
fn weighted_cross_entropy_matches_twins() {
    let gpu = gpu();
    let beta_inv = 0.7;
    for (i, &(b, k)) in [(1usize, 2usize), (7, 3), (257, 13), (300, 2), (5, 1)]
        .iter()
        .enumerate()
    {
        let s = 600 + 10 * i as u64;
        let (logits, labels) = awkward_logits(s, b, k);
        let fixed = uniform(s + 1, b, 0.1, 5.0);
        let probs = loss::softmax(&logits, k);
        for upweighted in [false, true] {
            let w = if upweighted {
                loss::upweights(&probs, &labels, beta_inv)
            } else {
                fixed.clone()
            };
            let want_loss = loss::weighted_ce_forward(&logits, &labels, &w);
            let mut dlogits = vec![0f32; b * k];
            loss::weighted_ce_backward(&mut dlogits, &probs, &labels, &w, 1.0);

            let mut rec = Recorder::new(&gpu).unwrap();
            let lg = up(&mut rec, &logits, &[b, k]);
            let yg = rec.upload_u32(&labels, &[b]).unwrap();
            let fg = up(&mut rec, &fixed, &[b]);
            let ce = rec.xent_rows(&lg, &yg, false).unwrap();
            let weighting = if upweighted {
                CeWeighting::Up { beta_inv }
            } else {
                CeWeighting::Fixed(&fg)
            };
            let (wce, wg) = rec.weighted_xent_rows(&lg, &yg, &ce, weighting).unwrap();
            let mean = rec.loss_mean(&wce).unwrap();
            let got = read(&mut rec, &[&lg, &wg, &mean]);

            let what = format!(
                "B {b} K {k} {}",
                if upweighted { "up-weighted" } else { "fixed" }
            );
            if upweighted {
                check(&format!("{what} weights"), &got[1], &w, 1e-5);
                let zeros = (3..b).step_by(7).filter(|_| k > 1).count();
                let got_zeros = got[1].iter().filter(|&&v| v == 0.0).count();
                assert_eq!(got_zeros, zeros, "{what}: weights of underflowed p[label]");
            } else {
                exact(&format!("{what} weights"), &got[1], &fixed);
            }
            check(&format!("{what} dlogits"), &got[0], &dlogits, 1e-5);
            let d = (got[2][0] as f64 - want_loss).abs() / want_loss.abs().max(1e-30);
            eprintln!(
                "{what} loss: gpu {} cpu {want_loss} ({d:.2e}, tolerance 1e-5)",
                got[2][0]
            );
            assert!(
                d <= 1e-5 || (want_loss == 0.0 && got[2][0] == 0.0),
                "{what} loss"
            );
        }
    }
}

#[test]
fn weighted_cross_entropy_rejects_bad_weights() {
    let gpu = gpu();
    let mut rec = Recorder::new(&gpu).unwrap();
    let lg = rec.zeros(&[4, 3], DType::F32).unwrap();
    let yg = rec.zeros(&[4], DType::U32).unwrap();
    let ce = rec.zeros(&[4], DType::F32).unwrap();
    let short = rec.zeros(&[3], DType::F32).unwrap();
    let bad = |r: layerlab::Result<(GpuTensor, GpuTensor)>| r.err().unwrap().to_string();
    let e = bad(rec.weighted_xent_rows(&lg, &yg, &ce, CeWeighting::Fixed(&short)));
    assert!(e.contains("weights"), "{e}");
    let e = bad(rec.weighted_xent_rows(&lg, &yg, &ce, CeWeighting::Up { beta_inv: 0.0 }));
    assert!(e.contains("1/beta"), "{e}");
    let e = bad(rec.weighted_xent_rows(&lg, &yg, &ce, CeWeighting::Ones));
    assert!(e.contains("no weights"), "{e}");
    let e = bad(rec.weighted_xent_rows(&lg, &ce, &ce, CeWeighting::Up { beta_inv: 0.7 }));
    assert!(e.contains("labels"), "{e}");
}

/// The whole CNN with the oracle's fixed weights and with Stage 1's up-weights, forward and
/// backward in one recording, against the CPU path `run::ce_step` (checked against PyTorch
/// and finite differences in tests/sebra_model.rs) at an awkward size (S 21, W 5, K 3, B 7):
/// the loss within 1e-5 relative, the weights and every gradient within 1e-5 of the tensor's
/// largest value (the head's rounding, WGSL's exp and pow; see the plain loss's test above).
#[test]
fn whole_cnn_weighted_losses_match_cpu_model() {
    let gpu = gpu();
    let cfg = NetConfig {
        kind: ModelKind::Cnn,
        classes: 3,
        image: 21,
        width: 5,
    };
    let b = 7;
    let s = 700;
    let net = Net::<f32>::new(cfg, s);
    let x = uniform(s + 1, b * cfg.input_len(), 0.0, 1.0);
    let labels: Vec<u32> = (0..b).map(|r| ((r * 2 + 1) % cfg.classes) as u32).collect();
    let fixed = uniform(s + 2, b, 0.1, 5.0);
    let beta_inv = 0.7;
    for upweighted in [false, true] {
        let mut grads = Params::<f32>::zeros(&cfg);
        let cpu_loss = if upweighted {
            ce_step(&net, &mut grads, &x, &labels, None, Some(beta_inv))
        } else {
            ce_step(&net, &mut grads, &x, &labels, Some(&fixed), None)
        };
        let probs = loss::softmax(&net.head_forward(&net.backbone_forward(&x, b).features), 3);
        let cpu_w = if upweighted {
            loss::upweights(&probs, &labels, beta_inv)
        } else {
            fixed.clone()
        };

        let mut rec = Recorder::new(&gpu).unwrap();
        let (pg, gg) = upload_params(&mut rec, &net, &cfg);
        let xg = up(&mut rec, &x, &[b, 3, cfg.image, cfg.image]);
        let lg = rec.upload_u32(&labels, &[b]).unwrap();
        let fg = up(&mut rec, &fixed, &[b]);
        let weighting = if upweighted {
            CeWeighting::Up { beta_inv }
        } else {
            CeWeighting::Fixed(&fg)
        };
        let step = rec
            .cnn_weighted_loss_backward(&cfg, &pg, &gg, &xg, &lg, weighting)
            .unwrap();
        let wg = step.weights.as_ref().expect("the step's weights");
        let mut outs = vec![&step.loss, wg];
        outs.extend(gg.iter());
        let got = read(&mut rec, &outs);

        let what = if upweighted {
            "up-weighted"
        } else {
            "fixed weights"
        };
        let d = (got[0][0] as f64 - cpu_loss).abs() / cpu_loss.abs();
        eprintln!(
            "{what} loss: gpu {} cpu {cpu_loss} ({d:.2e}, tolerance 1e-5)",
            got[0][0]
        );
        assert!(d <= 1e-5, "{what} loss");
        check(&format!("{what} weights"), &got[1], &cpu_w, 1e-5);
        for ((name, _, _), (g, want)) in cfg.specs().iter().zip(got[2..].iter().zip(&grads.tensors))
        {
            check(&format!("{what} d{name}"), g, want, 1e-5);
        }
    }
}
