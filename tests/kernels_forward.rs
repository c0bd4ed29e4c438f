//! Parity of the forward-pass and Wanda-selection kernels with their CPU twins (and with
//! candle, the CPU forward pass's engine), on the GPU wgpu finds (Mesa's lavapipe in CI),
//! on random inputs of awkward sizes: 1, 7, 33, 127, 257, ..., not multiples of the 64 x 64
//! matmul tile, the 256-invocation workgroups or the attention kernel's 256-key chunks.
//!
//! Tolerances (GPU vs twin; WGSL may fuse multiply-adds, and its exp, sqrt and division are
//! a few ulp):
//! - linear: |y - y'| <= 1e-5 sum_k |x_k w_k| (+|b|) per output, K up to 3001 (also vs
//!   candle's matmul, which sums in another order);
//! - RMSNorm, RoPE, SwiGLU: 2e-6 of the largest |value|; residual add: exact;
//! - attention: 1e-5 of the largest |v|;
//! - Wanda and magnitude masks: exactly `masks::wanda_mask` / `magnitude_mask`, flag for
//!   flag, ties included;
//! - a SmolLM2 block (GPU vs `Llama::block_forward`): 1e-5 of the largest |value|, for the
//!   output and for every input the Observer sees;
//! - losing the device mid-block: `GpuFailed`, never a panic; through `block_forward_on`,
//!   the block redone on the CPU with each Observer call made once.

mod common;

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use common::{candle_rope, gpu, uniform};
use layerlab::compute::forward::{AttentionShape, HeadLayout, Recorder};
use layerlab::compute::{cpu_forward, GpuContext, Matrix};
use layerlab::compute::{Backend, RunControl, Silent};
use layerlab::io::{FileSource, ModelFile};
use layerlab::model::gpu_forward::{batches_forward_on, block_forward_gpu, block_forward_on};
use layerlab::model::llama::{rms_norm, to_vec, Llama, NoObserver, Observer, Rope};
use layerlab::prune::masks::{magnitude_mask, wanda_mask, Pattern};
use layerlab::tokenizer::TextTokenizer;
use layerlab::LabError;

fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0f64, |m, x| m.max(x.abs() as f64))
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()))
}

/// Asserts max |a - b| <= tol * max |b| and returns the relative difference.
fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f64) -> f64 {
    let scale = max_abs(b).max(1e-30);
    let d = max_diff(a, b) / scale;
    assert!(
        d <= tol,
        "{what}: max |diff| / max |value| = {d:.3e} > {tol:.0e}"
    );
    d
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    pollster::block_on(f)
}

/// Runs `kernel` on a fresh recorder and reads its result back.
fn on_gpu(
    gpu: &GpuContext,
    kernel: impl FnOnce(&mut Recorder) -> layerlab::Result<layerlab::compute::gpu::GpuMatrix>,
) -> Vec<f32> {
    let mut rec = Recorder::new(gpu).unwrap();
    let out = kernel(&mut rec).unwrap();
    let v = run(rec.read(&out)).unwrap();
    run(rec.finish()).unwrap();
    v
}

#[test]
fn linear_matches_cpu_twin_and_candle() {
    let gpu = gpu();
    // (N, K, O)
    let shapes = [
        (1, 1, 1),
        (7, 33, 5),
        (33, 127, 257),
        (127, 257, 33),
        (65, 64, 63),
        (257, 1000, 129),
        (66, 576, 1536),
        (3, 3001, 70),
    ];
    let mut worst = (0f64, 0f64);
    for (i, &(n, k, o)) in shapes.iter().enumerate() {
        let x = uniform(10 + i as u64, n * k, -1.0, 1.0);
        let w = uniform(20 + i as u64, o * k, -0.5, 0.5);
        let b = uniform(30 + i as u64, o, -2.0, 2.0);
        let (xm, wm) = (
            Matrix::new(&x, n, k).unwrap(),
            Matrix::new(&w, o, k).unwrap(),
        );
        let abs_x: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let abs_w: Vec<f32> = w.iter().map(|v| v.abs()).collect();
        let scale = cpu_forward::linear(
            Matrix::new(&abs_x, n, k).unwrap(),
            Matrix::new(&abs_w, o, k).unwrap(),
            None,
        )
        .unwrap();
        let candle = {
            let xt = Tensor::from_vec(x.clone(), (n, k), &Device::Cpu).unwrap();
            let wt = Tensor::from_vec(w.clone(), (o, k), &Device::Cpu).unwrap();
            let bt = Tensor::from_vec(b.clone(), o, &Device::Cpu).unwrap();
            let y = xt.matmul(&wt.t().unwrap()).unwrap();
            to_vec(&y.broadcast_add(&bt).unwrap()).unwrap()
        };
        for with_bias in [false, true] {
            let bias = with_bias.then_some(&b[..]);
            let twin = cpu_forward::linear(xm, wm, bias).unwrap();
            let got = on_gpu(&gpu, |rec| {
                let xg = rec.upload(xm)?;
                let wg = rec.upload(wm)?;
                let bg = rec.upload(Matrix::new(&b, 1, o)?)?;
                rec.linear(&xg, &wg, with_bias.then_some(&bg))
            });
            assert_eq!(got.len(), n * o);
            for j in 0..n * o {
                let s = scale[j] as f64
                    + if with_bias {
                        b[j % o].abs() as f64
                    } else {
                        0.0
                    };
                let s = s.max(1e-30);
                let e_twin = (got[j] as f64 - twin[j] as f64).abs() / s;
                assert!(
                    e_twin <= 1e-5,
                    "[{n}, {k}] x [{o}, {k}]^T, bias {with_bias}: y[{}, {}] gpu {} twin {}",
                    j / o,
                    j % o,
                    got[j],
                    twin[j]
                );
                worst.0 = worst.0.max(e_twin);
                if with_bias {
                    let e_candle = (got[j] as f64 - candle[j] as f64).abs() / s;
                    assert!(
                        e_candle <= 1e-5,
                        "[{n}, {k}] x [{o}, {k}]^T: y[{}, {}] gpu {} candle {}",
                        j / o,
                        j % o,
                        got[j],
                        candle[j]
                    );
                    worst.1 = worst.1.max(e_candle);
                }
            }
        }
    }
    eprintln!(
        "linear: worst |diff| / sum|x w|: {:.2e} vs the twin, {:.2e} vs candle",
        worst.0, worst.1
    );
}

#[test]
fn rms_norm_matches_cpu_twin_and_candle() {
    let gpu = gpu();
    for (i, &(rows, cols)) in [(1, 1), (7, 33), (33, 576), (5, 1000), (3, 257), (300, 64)]
        .iter()
        .enumerate()
    {
        let x = uniform(40 + i as u64, rows * cols, -3.0, 3.0);
        let w = uniform(50 + i as u64, cols, 0.5, 1.5);
        let eps = 1e-5f32;
        let xm = Matrix::new(&x, rows, cols).unwrap();
        let twin = cpu_forward::rms_norm(xm, &w, eps);
        let got = on_gpu(&gpu, |rec| {
            let xg = rec.upload(xm)?;
            let wg = rec.upload(Matrix::new(&w, 1, cols)?)?;
            rec.rms_norm(&xg, &wg, eps)
        });
        let what = format!("rms_norm [{rows}, {cols}]");
        assert_close(&what, &got, &twin, 2e-6);
        let candle = rms_norm(
            &Tensor::from_vec(x.clone(), (rows, cols), &Device::Cpu).unwrap(),
            &Tensor::from_vec(w.clone(), cols, &Device::Cpu).unwrap(),
            eps as f64,
        )
        .unwrap();
        assert_close(
            &format!("{what} vs candle"),
            &got,
            &to_vec(&candle).unwrap(),
            2e-6,
        );
    }
}

#[test]
fn token_nll_matches_cpu_twin_and_an_f64_reference() {
    let gpu = gpu();
    for (i, &(rows, cols)) in [(1, 1), (1, 5), (37, 1000), (3, 257), (4, 49_159), (300, 64)]
        .iter()
        .enumerate()
    {
        // Logits spread like a real LM head's (|x| up to ~30), one row far above the rest.
        let mut x = uniform(60 + i as u64, rows * cols, -30.0, 30.0);
        x[cols / 2] += 50.0;
        let targets: Vec<u32> = uniform(70 + i as u64, rows, 0.0, cols as f32)
            .iter()
            .map(|&t| (t as u32).min(cols as u32 - 1))
            .collect();
        let xm = Matrix::new(&x, rows, cols).unwrap();
        let twin = cpu_forward::token_nll(xm, &targets).unwrap();
        let got = on_gpu(&gpu, |rec| {
            let xg = rec.upload(xm)?;
            let t: Vec<f32> = targets.iter().map(|&t| t as f32).collect();
            let tg = rec.upload(Matrix::new(&t, rows, 1)?)?;
            rec.token_nll(&xg, &tg)
        });
        let what = format!("token_nll [{rows}, {cols}]");
        // f64: log(sum exp(x)) - x[t], as a softmax cross-entropy is defined.
        let reference: Vec<f32> = x
            .chunks_exact(cols)
            .zip(&targets)
            .map(|(row, &t)| {
                let m = row.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
                let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
                (m + s.ln() - row[t as usize] as f64) as f32
            })
            .collect();
        for (a, b, name) in [
            (&got, &twin, "GPU vs twin"),
            (&twin, &reference, "twin vs f64"),
        ] {
            for (k, (u, v)) in a.iter().zip(b.iter()).enumerate() {
                assert!(
                    (u - v).abs() <= 1e-5 * v.abs().max(1.0) * 4.0,
                    "{what} row {k}: {name}: {u} vs {v}"
                );
            }
        }
    }
    // A target outside the row is refused by the twin, and the kernel's shapes are checked.
    let xm = Matrix::new(&[0.0; 6], 2, 3).unwrap();
    assert!(cpu_forward::token_nll(xm, &[0, 3]).is_none());
    let mut rec = Recorder::new(&gpu).unwrap();
    let xg = rec.upload(xm).unwrap();
    let tg = rec.upload(Matrix::new(&[0.0], 1, 1).unwrap()).unwrap();
    assert!(rec.token_nll(&xg, &tg).is_err());
}

#[test]
fn rope_matches_cpu_twin_in_both_layouts() {
    let gpu = gpu();
    for (i, &(b, h, t, d)) in [(1, 1, 1, 2), (2, 3, 33, 64), (1, 1, 7, 2), (3, 5, 17, 128)]
        .iter()
        .enumerate()
    {
        let rope = Rope::new(t, d, 100000.0).unwrap();
        let (cos, sin) = (&rope.cos, &rope.sin);
        let x = uniform(60 + i as u64, b * h * t * d, -2.0, 2.0);
        for layout in [
            HeadLayout::heads_major(b, h, t, d),
            HeadLayout::token_major(b, h, t, d),
        ] {
            let mut twin = x.clone();
            cpu_forward::rope(&mut twin, layout, cos, sin);
            let got = on_gpu(&gpu, |rec| {
                let xg = rec.upload(Matrix::new(&x, b * t, h * d)?)?;
                let cg = rec.upload(Matrix::new(cos, t, d)?)?;
                let sg = rec.upload(Matrix::new(sin, t, d)?)?;
                rec.rope(&xg, layout, &cg, &sg)?;
                Ok(xg)
            });
            assert_close(&format!("rope {layout:?}"), &got, &twin, 2e-6);
        }
        // The twin on (B,H,T,D) is the CPU forward pass's RoPE.
        let mut twin = x.clone();
        cpu_forward::rope(&mut twin, HeadLayout::heads_major(b, h, t, d), cos, sin);
        let xt = Tensor::from_vec(x.clone(), (b, h, t, d), &Device::Cpu).unwrap();
        let candle = to_vec(&candle_rope(&xt, &rope)).unwrap();
        assert_close("rope twin vs candle", &twin, &candle, 1e-6);
    }
}

#[test]
fn causal_attention_matches_cpu_twin() {
    let gpu = gpu();
    // (B, T, H, KV, D); T = 257 and 300 cross the kernel's 256-key chunk.
    let shapes = [
        (1, 1, 1, 1, 1),
        (2, 33, 9, 3, 64),
        (1, 7, 4, 1, 16),
        (1, 257, 2, 2, 8),
        (3, 5, 6, 2, 128),
        (1, 300, 2, 1, 256),
    ];
    for (i, &(batch, t, heads, kv_heads, d)) in shapes.iter().enumerate() {
        let s = AttentionShape {
            batch,
            t,
            heads,
            kv_heads,
            d,
        };
        let n = batch * t;
        let q = uniform(70 + i as u64, n * heads * d, -2.0, 2.0);
        let k = uniform(80 + i as u64, n * kv_heads * d, -2.0, 2.0);
        let v = uniform(90 + i as u64, n * kv_heads * d, -1.0, 1.0);
        let twin = cpu_forward::causal_attention(&q, &k, &v, s);
        let got = on_gpu(&gpu, |rec| {
            let qg = rec.upload(Matrix::new(&q, n, heads * d)?)?;
            let kg = rec.upload(Matrix::new(&k, n, kv_heads * d)?)?;
            let vg = rec.upload(Matrix::new(&v, n, kv_heads * d)?)?;
            rec.causal_attention(&qg, &kg, &vg, s)
        });
        let scale = max_abs(&v);
        let diff = max_diff(&got, &twin) / scale;
        assert!(diff <= 1e-5, "attention {s:?}: {diff:.3e} of max |v|");
    }
}

#[test]
fn swiglu_and_residual_add_match_cpu_twin() {
    let gpu = gpu();
    for (i, &len) in [1usize, 7, 257, 100_003].iter().enumerate() {
        let a = uniform(100 + i as u64, len, -8.0, 8.0);
        let b = uniform(110 + i as u64, len, -2.0, 2.0);
        let am = Matrix::new(&a, 1, len).unwrap();
        let bm = Matrix::new(&b, 1, len).unwrap();
        let got = on_gpu(&gpu, |rec| {
            let (ag, bg) = (rec.upload(am)?, rec.upload(bm)?);
            rec.swiglu(&ag, &bg)
        });
        assert_close(
            &format!("swiglu [{len}]"),
            &got,
            &cpu_forward::swiglu(&a, &b),
            2e-6,
        );
        let got = on_gpu(&gpu, |rec| {
            let (ag, bg) = (rec.upload(am)?, rec.upload(bm)?);
            rec.residual_add(&ag, &bg)
        });
        assert_eq!(
            got,
            cpu_forward::residual_add(&a, &b),
            "residual_add [{len}]"
        );
    }
}

/// Weights rounded to a few levels (many ties) and statistics with zeros (ties at score 0).
fn tied(seed: u64, n: usize, levels: f32) -> Vec<f32> {
    uniform(seed, n, -1.0, 1.0)
        .into_iter()
        .map(|v| (v * levels).round() / levels)
        .collect()
}

#[test]
fn wanda_masks_equal_the_cpu_masks_exactly() {
    let gpu = gpu();
    let shapes = [
        (1, 1),
        (7, 33),
        (33, 128),
        (127, 257),
        (257, 576),
        (3, 3000),
        (40, 1536),
    ];
    let mut checked = 0;
    for (i, &(rows, cols)) in shapes.iter().enumerate() {
        let seed = 200 + 10 * i as u64;
        let plain = uniform(seed, rows * cols, -1.0, 1.0);
        let quantised = tied(seed + 1, rows * cols, 4.0);
        let stat = uniform(seed + 2, cols, 0.0, 50.0);
        let mut stat_ties: Vec<f32> = tied(seed + 3, cols, 2.0)
            .iter()
            .map(|v| v.abs() * 4.0)
            .collect();
        stat_ties.iter_mut().step_by(3).for_each(|s| *s = 0.0);
        let ones = vec![1.0f32; cols];
        let mut patterns = vec![
            Pattern::Unstructured { sparsity: 0.0 },
            Pattern::Unstructured { sparsity: 0.1 },
            Pattern::Unstructured { sparsity: 0.5 },
            Pattern::Unstructured { sparsity: 0.7 },
            Pattern::Unstructured { sparsity: 0.999 },
            Pattern::Unstructured { sparsity: 1.0 },
            Pattern::NM { n: 1, m: 1 },
        ];
        for (n, m) in [(2, 4), (4, 8), (0, 4), (3, 3)] {
            if cols % m == 0 {
                patterns.push(Pattern::NM { n, m });
            }
        }
        for (wname, w) in [("uniform", &plain), ("quantised", &quantised)] {
            for (sname, s) in [
                ("random", &stat),
                ("tied with zeros", &stat_ties),
                ("ones", &ones),
            ] {
                for &p in &patterns {
                    let what = format!("[{rows}, {cols}] {wname} weights, {sname} stats, {p:?}");
                    let want = wanda_mask(&what, w, rows, cols, s, p).unwrap();
                    let got = run(gpu.wanda_mask(&what, w, rows, cols, s, p)).unwrap();
                    assert!(got == want, "{what}: GPU and CPU masks differ");
                    checked += 1;
                }
            }
        }
    }
    // Subnormal weights go to the CPU twin (see compute::select): still the same mask.
    let mut w = uniform(300, 7 * 33, -1.0, 1.0);
    w[5] = 1e-40;
    let s = uniform(301, 33, 0.0, 2.0);
    let p = Pattern::Unstructured { sparsity: 0.5 };
    assert_eq!(
        run(gpu.wanda_mask("t", &w, 7, 33, &s, p)).unwrap(),
        wanda_mask("t", &w, 7, 33, &s, p).unwrap()
    );
    // The twin's errors, word for word.
    let e = run(gpu.wanda_mask("blk.0.ffn_up", &w, 7, 32, &s, p)).unwrap_err();
    assert!(e.to_string().contains("blk.0.ffn_up"), "{e}");
    eprintln!("wanda: {checked} GPU masks equal to the CPU's");
}

#[test]
fn magnitude_masks_equal_the_cpu_masks_exactly() {
    let gpu = gpu();
    let mut checked = 0;
    for (i, &(rows, cols)) in [(1, 1), (3, 8), (7, 33), (17, 257), (64, 576)]
        .iter()
        .enumerate()
    {
        let seed = 400 + 10 * i as u64;
        let plain = uniform(seed, rows * cols, -1.0, 1.0);
        // Few distinct values: the layer-wide threshold falls inside a run of ties.
        let quantised = tied(seed + 1, rows * cols, 3.0);
        let mut patterns: Vec<Pattern> = [0.0, 0.1, 0.5, 0.7, 0.999, 1.0]
            .iter()
            .map(|&sparsity| Pattern::Unstructured { sparsity })
            .collect();
        for (n, m) in [(2, 4), (4, 8), (1, 1)] {
            if cols % m == 0 {
                patterns.push(Pattern::NM { n, m });
            }
        }
        for (wname, w) in [("uniform", &plain), ("quantised", &quantised)] {
            for &p in &patterns {
                let what = format!("[{rows}, {cols}] {wname} weights, {p:?}");
                let want = magnitude_mask(&what, w, rows, cols, p).unwrap();
                let got = run(gpu.magnitude_mask(&what, w, rows, cols, p)).unwrap();
                assert!(got == want, "{what}: GPU and CPU masks differ");
                checked += 1;
            }
        }
    }
    let e = run(gpu.magnitude_mask("blk.0.ffn_up", &[1.0; 6], 2, 3, Pattern::NM { n: 2, m: 4 }))
        .unwrap_err();
    assert!(e.to_string().contains("blk.0.ffn_up"), "{e}");
    eprintln!("magnitude: {checked} GPU masks equal to the CPU's");
}

const SMOLLM2: &str = ".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const GPL3: &str = "/usr/share/common-licenses/GPL-3";

fn model_path() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(SMOLLM2);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh's ensure_models (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Every Observer call, in order: (block, roles, dims, values).
#[derive(Default)]
struct Record {
    calls: Vec<(usize, String, Vec<usize>, Vec<f32>)>,
}

impl Observer for Record {
    fn linear_input(&mut self, block: usize, roles: &[&str], x: &Tensor) -> layerlab::Result<()> {
        self.calls
            .push((block, roles.join(","), x.dims().to_vec(), to_vec(x)?));
        Ok(())
    }
    fn block_output(&mut self, block: usize, x: &Tensor) -> layerlab::Result<()> {
        self.calls
            .push((block, "output".into(), x.dims().to_vec(), to_vec(x)?));
        Ok(())
    }
}

#[test]
fn smollm2_blocks_match_the_cpu_forward_pass() {
    let gpu = gpu();
    let path = model_path();
    let src = FileSource::open(&path).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let tok = TextTokenizer::from_gguf(&file, "smollm2").unwrap();
    let text = std::fs::read_to_string(GPL3).expect("GPL-3 missing (Debian's base-files)");
    let ids = tok.encode(&text).unwrap();
    let windows: Vec<&[u32]> = vec![&ids[..33], &ids[33..66]];
    let model = Llama::new(&src, &file, None).unwrap();
    let ends = model.load_ends().unwrap();
    let mut x = model.embed(&ends, &windows).unwrap();
    let rope = Rope::new(33, model.config.head_dim, model.config.rope.theta).unwrap();
    for block in 0..2 {
        let w = model.load_block(block).unwrap();
        let mut cpu_obs = Record::default();
        let mut gpu_obs = Record::default();
        let want = model.block_forward(&w, &x, &rope, &mut cpu_obs).unwrap();
        let got = run(block_forward_gpu(&gpu, &model, &w, &x, &rope, &mut gpu_obs)).unwrap();
        assert_eq!(got.dims(), want.dims());
        let d = assert_close(
            &format!("block {block} output"),
            &to_vec(&got).unwrap(),
            &to_vec(&want).unwrap(),
            1e-5,
        );
        assert_eq!(cpu_obs.calls.len(), 5);
        assert_eq!(gpu_obs.calls.len(), 5);
        let mut worst = 0f64;
        for (c, g) in cpu_obs.calls.iter().zip(&gpu_obs.calls) {
            assert_eq!((c.0, &c.1, &c.2), (g.0, &g.1, &g.2), "observer call");
            let what = format!("block {block} observer input of {}", c.1);
            worst = worst.max(assert_close(&what, &g.3, &c.3, 1e-5));
        }
        eprintln!(
            "SmolLM2 block {block}, 2 windows of 33 tokens: output max |diff| {d:.2e} of max \
             |value| {:.1}; observer inputs within {worst:.2e}",
            max_abs(&to_vec(&want).unwrap())
        );
        // An Observer that wants no inputs (perplexity) gets the same output without the
        // readbacks; one that wants only the inputs (the prune pass's statistics) gets the
        // same four inputs and its input back, as from the CPU block.
        let quiet = run(block_forward_gpu(
            &gpu,
            &model,
            &w,
            &x,
            &rope,
            &mut NoObserver,
        ))
        .unwrap();
        assert_eq!(to_vec(&quiet).unwrap(), to_vec(&got).unwrap());
        let mut only = InputsOnly(Record::default());
        let back = run(block_forward_gpu(&gpu, &model, &w, &x, &rope, &mut only)).unwrap();
        assert_eq!(to_vec(&back).unwrap(), to_vec(&x).unwrap());
        assert_eq!(only.0.calls, gpu_obs.calls[..4]);
        let mut cpu_only = InputsOnly(Record::default());
        model.block_forward(&w, &x, &rope, &mut cpu_only).unwrap();
        assert_eq!(cpu_only.0.calls.len(), 4);
        x = want;
    }
}

/// Three SmolLM2 blocks recorded back to back with every activation left on the GPU (what a
/// backward pass needs), then all of them read back in one submission, against the CPU
/// blocks' Observer inputs and outputs: nothing was read back between blocks.
#[test]
fn smollm2_blocks_keep_their_activations_on_the_gpu_with_one_readback() {
    use layerlab::compute::Recorder;
    use layerlab::model::gpu_forward::{blocks_forward_recorded, GpuBlock, GpuRope};
    let gpu = gpu();
    let path = model_path();
    let src = FileSource::open(&path).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let tok = TextTokenizer::from_gguf(&file, "smollm2").unwrap();
    let text = std::fs::read_to_string(GPL3).expect("GPL-3 missing (Debian's base-files)");
    let ids = tok.encode(&text).unwrap();
    let windows: Vec<&[u32]> = vec![&ids[100..117], &ids[200..217]];
    let (b, t) = (2, 17);
    let model = Llama::new(&src, &file, None).unwrap();
    let c = &model.config;
    let ends = model.load_ends().unwrap();
    let x = model.embed(&ends, &windows).unwrap();
    let rope = Rope::new(t, c.head_dim, c.rope.theta).unwrap();

    // The CPU blocks, recording every Observer call.
    let mut want = Vec::new();
    let mut cpu_x = x.clone();
    let mut blocks = Vec::new();
    for i in 0..3 {
        let w = model.load_block(i).unwrap();
        let mut obs = Record::default();
        cpu_x = model.block_forward(&w, &cpu_x, &rope, &mut obs).unwrap();
        want.push(obs.calls);
        blocks.push(GpuBlock::upload(&gpu, &w).unwrap());
    }

    let mut rec = Recorder::new(&gpu).unwrap();
    let xs = rec
        .upload_f32(&to_vec(&x).unwrap(), &[b * t, c.hidden])
        .unwrap();
    let rope_gpu = GpuRope::upload(&gpu, &rope).unwrap();
    let acts = run(blocks_forward_recorded(
        &mut rec, c, &blocks, xs, b, t, &rope_gpu,
    ))
    .unwrap();
    assert_eq!(
        rec.stats().submissions,
        0,
        "a block submitted work before the readback"
    );
    let mut chosen = Vec::new();
    for a in &acts {
        chosen.extend([&a.h, &a.a, &a.h2, &a.m, a.out.as_ref().unwrap()]);
    }
    let got = run(rec.read_many(&chosen)).unwrap();
    assert_eq!((rec.stats().submissions, rec.stats().readbacks), (1, 1));
    let mut worst = 0f64;
    for (i, calls) in want.iter().enumerate() {
        assert_eq!(calls.len(), 5);
        for (j, call) in calls.iter().enumerate() {
            let what = format!("block {i} {}", call.1);
            // Errors compound through the blocks: 1e-5 of the largest value per block.
            worst = worst.max(assert_close(
                &what,
                &got[5 * i + j],
                &call.3,
                1e-5 * (i + 1) as f64,
            ));
        }
    }
    assert_close(
        "the last block's output",
        &got[14],
        &to_vec(&cpu_x).unwrap(),
        3e-5,
    );
    eprintln!(
        "3 SmolLM2 blocks, one submission: activations within {worst:.2e} of the CPU's; pool {:?}",
        gpu.pool_stats()
    );
}

/// Records the linear inputs only, and says it does not want the block's output.
struct InputsOnly(Record);

impl Observer for InputsOnly {
    fn linear_input(&mut self, block: usize, roles: &[&str], x: &Tensor) -> layerlab::Result<()> {
        self.0.linear_input(block, roles, x)
    }
    fn wants_output(&self) -> bool {
        false
    }
}

/// Loses the device when the first linear input is observed, as a driver reset would.
struct LoseDevice {
    gpu: GpuContext,
}

impl Observer for LoseDevice {
    fn linear_input(&mut self, _: usize, _: &[&str], _: &Tensor) -> layerlab::Result<()> {
        self.gpu.destroy();
        Ok(())
    }
}

#[test]
fn losing_the_device_mid_block_is_an_error_not_a_panic() {
    let gpu = gpu();
    let path = model_path();
    let src = FileSource::open(&path).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let model = Llama::new(&src, &file, None).unwrap();
    let ends = model.load_ends().unwrap();
    let ids: Vec<u32> = (0..7).map(|i| 100 + 37 * i).collect();
    let x = model.embed(&ends, &[&ids]).unwrap();
    let rope = Rope::new(7, model.config.head_dim, model.config.rope.theta).unwrap();
    let w = model.load_block(0).unwrap();
    let mut obs = LoseDevice { gpu: gpu.clone() };
    match run(block_forward_gpu(&gpu, &model, &w, &x, &rope, &mut obs)) {
        Err(LabError::GpuFailed(msg)) => assert!(msg.contains("lost"), "{msg}"),
        other => panic!(
            "expected GpuFailed, got {:?}",
            other.map(|t| t.dims().to_vec())
        ),
    }
    // Later calls fail the same way.
    let e = run(gpu.wanda_mask(
        "t",
        &[1.0; 4],
        2,
        2,
        &[1.0; 2],
        Pattern::Unstructured { sparsity: 0.5 },
    ));
    assert!(matches!(e, Err(LabError::GpuFailed(_))), "{e:?}");
}

#[test]
fn a_block_whose_gpu_is_lost_is_redone_on_the_cpu() {
    let gpu = gpu();
    let path = model_path();
    let src = FileSource::open(&path).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let model = Llama::new(&src, &file, None).unwrap();
    let ends = model.load_ends().unwrap();
    let ids: Vec<u32> = (0..9).map(|i| 200 + 41 * i).collect();
    let x = model.embed(&ends, &[&ids]).unwrap();
    let rope = Rope::new(9, model.config.head_dim, model.config.rope.theta).unwrap();
    let w = model.load_block(0).unwrap();
    let mut want_obs = Record::default();
    let want = model.block_forward(&w, &x, &rope, &mut want_obs).unwrap();

    // A healthy GPU: the Observer sees the GPU's calls once the block is done.
    let backend = Backend::with_gpu(gpu.clone());
    let mut obs = Record::default();
    let (out, notice) = run(block_forward_on(&backend, &model, &w, &x, &rope, &mut obs)).unwrap();
    assert!(notice.is_none());
    assert_close(
        "GPU block",
        &to_vec(&out).unwrap(),
        &to_vec(&want).unwrap(),
        1e-5,
    );
    assert_eq!(obs.calls.len(), 5);

    // A lost GPU: the block is redone on the CPU, each Observer call made once.
    gpu.destroy();
    let mut obs = Record::default();
    let (out, notice) = run(block_forward_on(&backend, &model, &w, &x, &rope, &mut obs)).unwrap();
    assert!(notice.unwrap().contains("finished on the CPU"));
    assert_eq!(backend.info().kind, "cpu");
    assert_eq!(to_vec(&out).unwrap(), to_vec(&want).unwrap());
    assert_eq!(obs.calls, want_obs.calls);
}

/// Destroys the GPU at the `at`-th checkpoint (the batch loop asks before each batch).
struct LoseAt {
    gpu: GpuContext,
    at: usize,
    seen: std::cell::Cell<usize>,
}

impl RunControl for LoseAt {
    fn progress(&self, _: &str, _: u64, _: u64) {}
    fn cancelled(&self) -> bool {
        self.seen.set(self.seen.get() + 1);
        if self.seen.get() == self.at {
            self.gpu.destroy();
        }
        false
    }
}

#[test]
fn batches_on_one_upload_match_the_cpu_and_survive_losing_the_gpu() {
    let gpu = gpu();
    let path = model_path();
    let src = FileSource::open(&path).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let model = Llama::new(&src, &file, None).unwrap();
    let ends = model.load_ends().unwrap();
    let batch = |k: u32| -> Tensor {
        let a: Vec<u32> = (0..9).map(|i| 100 + 37 * i + k).collect();
        let b: Vec<u32> = (0..9).map(|i| 900 + 53 * i + k).collect();
        model.embed(&ends, &[&a, &b]).unwrap()
    };
    let rope = Rope::new(9, model.config.head_dim, model.config.rope.theta).unwrap();
    let w = model.load_block(1).unwrap();
    let inputs: Vec<Tensor> = (0..3).map(batch).collect();
    let want: Vec<Vec<f32>> = inputs
        .iter()
        .map(|x| to_vec(&model.block_forward(&w, x, &rope, &mut NoObserver).unwrap()).unwrap())
        .collect();

    // A healthy GPU: all three batches on it, each within 1e-5 of the CPU block.
    let backend = Backend::with_gpu(gpu.clone());
    let mut xs = inputs.clone();
    let notice = run(batches_forward_on(
        &backend, &model, &w, &mut xs, &rope, &Silent,
    ))
    .unwrap();
    assert!(notice.is_none());
    for (k, (x, want)) in xs.iter().zip(&want).enumerate() {
        assert_close(&format!("batch {k}"), &to_vec(x).unwrap(), want, 1e-5);
    }

    // The GPU lost before the second batch: the first stays the GPU's, the other two are
    // the CPU's exactly, and the backend says so.
    let fresh = common::gpu();
    let backend = Backend::with_gpu(fresh.clone());
    let ctl = LoseAt {
        gpu: fresh,
        at: 2,
        seen: Default::default(),
    };
    let mut xs = inputs.clone();
    let notice = run(batches_forward_on(
        &backend, &model, &w, &mut xs, &rope, &ctl,
    ))
    .unwrap();
    assert!(notice.unwrap().contains("finished on the CPU"));
    assert_eq!(backend.info().kind, "cpu");
    assert_close("batch 0", &to_vec(&xs[0]).unwrap(), &want[0], 1e-5);
    assert_eq!(to_vec(&xs[1]).unwrap(), want[1]);
    assert_eq!(to_vec(&xs[2]).unwrap(), want[2]);
}

/// Perplexity with the blocks and the LM head on the GPU (the head's logits reduced there by
/// nll.wgsl) against the CPU: 3 windows of 20 tokens of GPL-3 through SmolLM2.
#[test]
fn perplexity_on_the_gpu_matches_the_cpu() {
    use layerlab::eval::{perplexity_with, PplOptions, Weights};
    use layerlab::model::causal::CausalLm;
    let path = model_path();
    let src = FileSource::open(&path).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let tok = TextTokenizer::from_gguf(&file, "smollm2").unwrap();
    let text = std::fs::read_to_string(GPL3).expect("GPL-3 missing (Debian's base-files)");
    let ids = tok.encode(&text).unwrap();
    let model = Llama::new(&src, &file, None).unwrap();
    let lm: &dyn CausalLm = &model;
    let ends = lm.load_ends().unwrap();
    let blocks = |i| lm.load_block(i);
    let opts = PplOptions {
        seqlen: 20,
        max_windows: Some(3),
        batch: 2,
    };
    let on = |backend: &Backend| {
        let weights = Weights {
            ends: &ends,
            blocks: &blocks,
        };
        run(perplexity_with(
            backend, lm, weights, &ids, &opts, &Silent, "ppl",
        ))
        .unwrap()
    };
    let cpu = on(&Backend::cpu("the CPU was asked for"));
    let backend = Backend::with_gpu(gpu());
    let got = on(&backend);
    assert_eq!(backend.info().kind, "gpu", "{:?}", got.notices);
    assert!(got.notices.is_empty(), "{:?}", got.notices);
    assert_eq!(got.window_nll.len(), 3);
    for (g, c) in got.window_nll.iter().zip(&cpu.window_nll) {
        assert!(
            (g - c).abs() < 1e-5 * c.abs(),
            "window NLL {g} (GPU) vs {c} (CPU)"
        );
    }
    let rel = (got.perplexity - cpu.perplexity).abs() / cpu.perplexity;
    assert!(
        rel < 1e-5,
        "ppl {} (GPU) vs {} (CPU)",
        got.perplexity,
        cpu.perplexity
    );
    eprintln!(
        "SmolLM2 ppl on 3 x 20 tokens: GPU {} vs CPU {} (rel {rel:.1e})",
        got.perplexity, cpu.perplexity
    );
}
