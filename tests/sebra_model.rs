//! The bias lab's models and losses: every parameter gradient of the whole model (CNN and
//! MLP) under each loss (ERM's cross-entropy, Stage 1's up-weighted loss, the oracle's
//! weighted cross-entropy, Stage 2's contrastive + w x CE) against
//! - central finite differences in f64 on tiny sizes (the stop-gradients held fixed: Stage 1's
//!   weights and Stage 2's positive and negative features are computed once, at the base
//!   point, as the authors' `detach()` / `no_grad` makes them constants), and
//! - PyTorch in f32 (tests/reference/sebra_torch.py, written from METHODS.md) from the same
//!   weights and batch.
//!
//! Plus: the same bits with 1 and 2 threads, and the optimizers against torch's update rule.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use layerlab::io::safetensors::{write_tensors, TensorValues, TypedTensor};
use layerlab::io::{FileSource, ModelFile};
use layerlab::sebra::loss;
use layerlab::sebra::model::{Net, NetConfig, Params};
use layerlab::sebra::run::{ce_step, contrastive_step, Optimizer};
use layerlab::sebra::{ModelKind, OptimizerKind, SebraOptions};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n)
        .map(|_| lo + (hi - lo) * ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64))
        .collect()
}

/// One batch: anchors, positives, negatives (B,3,S,S), labels of the anchors and of the
/// positives, per-sample weights.
struct Batch {
    x: Vec<f64>,
    xp: Vec<f64>,
    xn: Vec<f64>,
    y: Vec<u32>,
    yp: Vec<u32>,
    w: Vec<f64>,
}

fn batch(cfg: &NetConfig, b: usize, seed: u64) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = b * cfg.input_len();
    let k = cfg.classes as u64;
    let labels = |rng: &mut ChaCha8Rng| -> Vec<u32> {
        (0..b).map(|_| (rng.next_u64() % k) as u32).collect()
    };
    Batch {
        x: uniform(&mut rng, n, 0.0, 1.0),
        xp: uniform(&mut rng, n, 0.0, 1.0),
        xn: uniform(&mut rng, n, 0.0, 1.0),
        y: labels(&mut rng),
        yp: labels(&mut rng),
        w: uniform(&mut rng, b, 0.2, 3.0),
    }
}

const BETA_INV: f64 = 0.7;
const TAU: f64 = 0.5;
const CE_WEIGHT: f64 = 0.5;

#[derive(Clone, Copy, Debug)]
enum Loss {
    Erm,
    Up,
    Weighted,
    Contrastive,
}

const LOSSES: [Loss; 4] = [Loss::Erm, Loss::Up, Loss::Weighted, Loss::Contrastive];

fn name(l: Loss) -> &'static str {
    match l {
        Loss::Erm => "erm",
        Loss::Up => "up",
        Loss::Weighted => "weighted",
        Loss::Contrastive => "contrastive",
    }
}

/// The constants a loss holds fixed, computed at the base weights.
struct Frozen {
    up: Vec<f64>,
    fp: Vec<f64>,
    fneg: Vec<f64>,
}

fn frozen(net: &Net<f64>, bt: &Batch) -> Frozen {
    let b = bt.y.len();
    let logits = net.head_forward(&net.backbone_forward(&bt.x, b).features);
    let probs = loss::softmax(&logits, net.cfg.classes);
    Frozen {
        up: loss::upweights(&probs, &bt.y, BETA_INV),
        fp: net.backbone_forward(&bt.xp, b).features,
        fneg: net.backbone_forward(&bt.xn, b).features,
    }
}

/// The loss at `net`'s weights, the stop-gradient constants taken from `fz`.
fn loss_value(net: &Net<f64>, bt: &Batch, fz: &Frozen, l: Loss) -> f64 {
    let b = bt.y.len();
    let d = net.cfg.feature_dim();
    let ce = |x: &[f64], y: &[u32], w: &[f64]| {
        let logits = net.head_forward(&net.backbone_forward(x, b).features);
        loss::weighted_ce_forward(&logits, y, w)
    };
    match l {
        Loss::Erm => ce(&bt.x, &bt.y, &vec![1.0; b]),
        Loss::Up => ce(&bt.x, &bt.y, &fz.up),
        Loss::Weighted => ce(&bt.x, &bt.y, &bt.w),
        Loss::Contrastive => {
            let fa = net.backbone_forward(&bt.x, b).features;
            let (con, _) = loss::contrastive_forward(&fa, &fz.fp, &fz.fneg, d, TAU);
            con + CE_WEIGHT * ce(&bt.xp, &bt.yp, &vec![1.0; b])
        }
    }
}

/// The analytic gradient through the lab's training steps, generic in the float.
fn analytic<F: layerlab::train::ops::Real>(net: &Net<F>, bt: &Batch, l: Loss) -> (f64, Params<F>) {
    let cv = |v: &[f64]| v.iter().map(|&x| F::of(x)).collect::<Vec<F>>();
    let b = bt.y.len();
    let d = net.cfg.feature_dim();
    let k = net.cfg.classes;
    let mut grads = Params::zeros(&net.cfg);
    let (x, xp, xn) = (cv(&bt.x), cv(&bt.xp), cv(&bt.xn));
    let value = match l {
        Loss::Contrastive => {
            // contrastive_step is f32 only; the same computation, spelled out generically.
            let neg = net.backbone_forward(&xn, b).features;
            let mut both = x.clone();
            both.extend_from_slice(&xp);
            let acts = net.backbone_forward(&both, 2 * b);
            let (fa, fp) = acts.features.split_at(b * d);
            let (con, cache) = loss::contrastive_forward(fa, fp, &neg, d, TAU);
            let logits = net.head_forward(fp);
            let probs = loss::softmax(&logits, k);
            let ones = vec![F::ONE; b];
            let ce = loss::weighted_ce_forward(&logits, &bt.yp, &ones);
            let mut dfeat = vec![F::ZERO; 2 * b * d];
            let (dfa, dfp) = dfeat.split_at_mut(b * d);
            loss::contrastive_backward(dfa, &cache, fa, fp, &neg, d, TAU, 1.0);
            let mut dlogits = vec![F::ZERO; b * k];
            loss::weighted_ce_backward(&mut dlogits, &probs, &bt.yp, &ones, CE_WEIGHT);
            net.head_backward(&mut grads, dfp, &dlogits, fp);
            net.backbone_backward(&mut grads, &acts, &dfeat);
            con + CE_WEIGHT * ce
        }
        _ => {
            let acts = net.backbone_forward(&x, b);
            let logits = net.head_forward(&acts.features);
            let probs = loss::softmax(&logits, k);
            let w: Vec<F> = match l {
                Loss::Erm => vec![F::ONE; b],
                Loss::Up => loss::upweights(&probs, &bt.y, BETA_INV),
                _ => cv(&bt.w),
            };
            let v = loss::weighted_ce_forward(&logits, &bt.y, &w);
            let mut dlogits = vec![F::ZERO; b * k];
            loss::weighted_ce_backward(&mut dlogits, &probs, &bt.y, &w, 1.0);
            let mut dfeat = vec![F::ZERO; acts.features.len()];
            net.head_backward(&mut grads, &mut dfeat, &dlogits, &acts.features);
            net.backbone_backward(&mut grads, &acts, &dfeat);
            v
        }
    };
    (value, grads)
}

fn tiny(kind: ModelKind) -> NetConfig {
    NetConfig {
        kind,
        classes: 3,
        image: 12,
        width: if kind == ModelKind::Cnn { 2 } else { 1 },
    }
}

#[test]
fn whole_model_gradients_match_finite_differences_in_f64() {
    for kind in [ModelKind::Cnn, ModelKind::Mlp] {
        let cfg = tiny(kind);
        let mut net = Net::<f64>::new(cfg, 11);
        // Larger weights than the init, so that every ReLU path carries gradient.
        for t in net.params.tensors.iter_mut() {
            t.iter_mut().for_each(|v| *v *= 3.0);
        }
        let bt = batch(&cfg, 3, 12);
        let fz = frozen(&net, &bt);
        let specs = cfg.specs();
        for l in LOSSES {
            let (value, grads) = analytic(&net, &bt, l);
            assert!((value - loss_value(&net, &bt, &fz, l)).abs() < 1e-12);
            let mut checked = 0;
            let mut worst: f64 = 0.0;
            for (ti, (tname, _, _)) in specs.iter().enumerate() {
                let len = net.params.tensors[ti].len();
                // Every weight of the CNN; a spread of the MLP's first layer.
                let stride = if len > 500 { 37 } else { 1 };
                for j in (0..len).step_by(stride) {
                    let eps = 1e-6;
                    let orig = net.params.tensors[ti][j];
                    net.params.tensors[ti][j] = orig + eps;
                    let up = loss_value(&net, &bt, &fz, l);
                    net.params.tensors[ti][j] = orig - eps;
                    let down = loss_value(&net, &bt, &fz, l);
                    net.params.tensors[ti][j] = orig;
                    let numeric = (up - down) / (2.0 * eps);
                    let a = grads.tensors[ti][j];
                    let err = (a - numeric).abs() / (1e-4 + numeric.abs());
                    worst = worst.max(err);
                    assert!(
                        (a - numeric).abs() <= 1e-6 * (1.0 + numeric.abs()),
                        "{kind:?} {} {tname}[{j}]: analytic {a}, numeric {numeric}",
                        name(l)
                    );
                    checked += 1;
                }
            }
            eprintln!(
                "{kind:?} {}: {checked} weights, worst relative error {worst:.2e}",
                name(l)
            );
        }
    }
}

fn torch_python() -> PathBuf {
    let python = root().join(".cache/venv-torch/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh (it installs the PyTorch venv)",
        python.display()
    );
    python
}

fn write_file(path: &Path, tensors: &[TypedTensor]) {
    let mut f = std::fs::File::create(path).unwrap();
    write_tensors(&mut f, tensors, &BTreeMap::new()).unwrap();
}

fn read_all(path: &Path) -> (BTreeMap<String, Vec<f32>>, String) {
    let src = FileSource::open(path).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let mut out = BTreeMap::new();
    for t in &file.tensors {
        out.insert(t.name.clone(), file.read_f32(&src, t).unwrap());
    }
    let losses = file.metadata["losses"].as_str().unwrap().to_string();
    (out, losses)
}

#[test]
fn f32_gradients_match_pytorch() {
    let python = torch_python();
    let dir = std::env::temp_dir().join(format!("layerlab-sebra-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for kind in [ModelKind::Cnn, ModelKind::Mlp] {
        // Awkward sizes: S = 20 pools to 10, 5, 2 (dropping a row and a column); B = 5.
        let cfg = NetConfig {
            kind,
            classes: 4,
            image: 20,
            width: 3,
        };
        let net = Net::<f32>::new(cfg, 21);
        let bt = batch(&cfg, 5, 22);
        let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let i = |v: &[u32]| v.iter().map(|&x| i64::from(x)).collect::<Vec<i64>>();
        let shape = vec![5, 3, cfg.image, cfg.image];
        let wpath = dir.join(format!("{kind:?}-w.safetensors"));
        let specs = cfg.specs();
        let wt: Vec<TypedTensor> = specs
            .iter()
            .zip(&net.params.tensors)
            .map(|((n, s, _), v)| TypedTensor {
                name: n.clone(),
                shape: s.clone(),
                values: TensorValues::F32(v),
            })
            .collect();
        write_file(&wpath, &wt);
        let (x, xp, xn, w) = (f(&bt.x), f(&bt.xp), f(&bt.xn), f(&bt.w));
        let (y, yp) = (i(&bt.y), i(&bt.yp));
        let bpath = dir.join(format!("{kind:?}-b.safetensors"));
        let t = |name: &str, shape: Vec<usize>, values| TypedTensor {
            name: name.into(),
            shape,
            values,
        };
        write_file(
            &bpath,
            &[
                t("anchors", shape.clone(), TensorValues::F32(&x)),
                t("positives", shape.clone(), TensorValues::F32(&xp)),
                t("negatives", shape.clone(), TensorValues::F32(&xn)),
                t("labels", vec![5], TensorValues::I64(&y)),
                t("pos_labels", vec![5], TensorValues::I64(&yp)),
                t("weights", vec![5], TensorValues::F32(&w)),
            ],
        );
        let gpath = dir.join(format!("{kind:?}-g.safetensors"));
        let model = if kind == ModelKind::Cnn { "cnn" } else { "mlp" };
        let out = Command::new(&python)
            .arg(root().join("tests/reference/sebra_torch.py"))
            .args(["--weights", wpath.to_str().unwrap()])
            .args(["--batch", bpath.to_str().unwrap()])
            .args(["--out", gpath.to_str().unwrap()])
            .args(["--model", model])
            .args(["--width", &cfg.width.to_string()])
            .args(["--classes", &cfg.classes.to_string()])
            .args(["--image", &cfg.image.to_string()])
            .args(["--beta-inv", &BETA_INV.to_string()])
            .args(["--tau", &TAU.to_string()])
            .args(["--ce-weight", &CE_WEIGHT.to_string()])
            .output()
            .expect("run sebra_torch.py");
        assert!(
            out.status.success(),
            "sebra_torch.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (want, losses) = read_all(&gpath);
        let losses: BTreeMap<String, f64> = serde_json::from_str(&losses).unwrap();
        for l in LOSSES {
            let (value, grads) = if matches!(l, Loss::Erm | Loss::Up | Loss::Weighted) {
                let mut g = Params::zeros(&cfg);
                let w32 = w.clone();
                let v = ce_step(
                    &net,
                    &mut g,
                    &x,
                    &bt.y,
                    matches!(l, Loss::Weighted).then_some(&w32[..]),
                    matches!(l, Loss::Up).then_some(BETA_INV),
                );
                (v, g)
            } else {
                let mut g = Params::zeros(&cfg);
                let (v, _, _) =
                    contrastive_step(&net, &mut g, &x, &xp, &xn, &bt.yp, TAU, CE_WEIGHT);
                (v, g)
            };
            let torch_loss = losses[name(l)];
            assert!(
                (value - torch_loss).abs() <= 1e-5 * (1.0 + torch_loss.abs()),
                "{kind:?} {}: loss {value} vs torch {torch_loss}",
                name(l)
            );
            let mut worst: f64 = 0.0;
            for ((tname, _, _), g) in specs.iter().zip(&grads.tensors) {
                let r = &want[&format!("{}.{tname}", name(l))];
                let scale = r.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                for (j, (&a, &b)) in g.iter().zip(r).enumerate() {
                    let err = (a as f64 - b as f64).abs() / (scale + 1e-6);
                    worst = worst.max(err);
                    assert!(
                        err <= 1e-4,
                        "{kind:?} {} {tname}[{j}]: {a} vs torch {b} (tensor max {scale})",
                        name(l)
                    );
                }
            }
            eprintln!(
                "{kind:?} {}: loss {value:.6} (torch {torch_loss:.6}), worst gradient error \
                 {worst:.2e} of each tensor's max",
                name(l)
            );
        }
    }
}

#[test]
fn same_bits_with_one_and_two_threads() {
    let cfg = NetConfig {
        kind: ModelKind::Cnn,
        classes: 4,
        image: 16,
        width: 4,
    };
    let net = Net::<f32>::new(cfg, 31);
    let bt = batch(&cfg, 6, 32);
    let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let (x, xp, xn) = (f(&bt.x), f(&bt.xp), f(&bt.xn));
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut g = Params::zeros(&cfg);
            ce_step(&net, &mut g, &x, &bt.y, None, Some(BETA_INV));
            contrastive_step(&net, &mut g, &x, &xp, &xn, &bt.yp, TAU, CE_WEIGHT);
            g
        })
    };
    let (one, two) = (run(1), run(2));
    for (a, b) in one.tensors.iter().zip(&two.tensors) {
        assert!(a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()));
    }
}

/// torch.optim.SGD(momentum) and Adam's first steps, from their documented update rules.
#[test]
fn optimizers_follow_torchs_update_rules() {
    let cfg = NetConfig {
        kind: ModelKind::Mlp,
        classes: 2,
        image: 12,
        width: 1,
    };
    let mut params = Params::<f32>::zeros(&cfg);
    params.tensors[3][0] = 1.0;
    let mut g = Params::<f32>::zeros(&cfg);
    let opts = SebraOptions {
        optimizer: OptimizerKind::Sgd,
        lr: 0.1,
        momentum: 0.9,
        ..SebraOptions::default()
    };
    let mut sgd = Optimizer::new(&opts, &cfg);
    // p = 1; g = 2 then 4: buf = 2, p = 0.8; buf = 0.9*2 + 4 = 5.8, p = 0.8 - 0.58 = 0.22.
    g.tensors[3][0] = 2.0;
    sgd.step(&mut params, &g);
    g.tensors[3][0] = 4.0;
    sgd.step(&mut params, &g);
    assert!(
        (params.tensors[3][0] - 0.22).abs() < 1e-6,
        "{}",
        params.tensors[3][0]
    );

    let mut params = Params::<f32>::zeros(&cfg);
    let mut adam = Optimizer::new(
        &SebraOptions {
            lr: 0.01,
            ..SebraOptions::default()
        },
        &cfg,
    );
    // Adam's first step moves every weight with a non-zero gradient by lr * sign(g).
    g.tensors[3][0] = -3.0;
    adam.step(&mut params, &g);
    assert!(
        (params.tensors[3][0] - 0.01).abs() < 1e-6,
        "{}",
        params.tensors[3][0]
    );
}
