//! GPT-2 and OPT in the pruning lab, against an independent reference:
//! tests/reference/gpt2_opt_forward.py, numpy in float64 with transformers' maths, reading
//! the same safetensors files with the `safetensors` package.
//!
//! No GPT-2/OPT checkpoint is on this machine, so each test writes a tiny seeded random
//! model with Hugging Face names and a config.json into a temp dir: 2 blocks, hidden 48,
//! 4 heads, FFN 192, vocabulary 97. GPT-2 uses the hub's un-prefixed names (`h.0.attn.c_attn`,
//! Conv1D weights (in, out), the `attn.bias` mask buffer, tied head); OPT the
//! `model.decoder.` names with its own `lm_head.weight`.
//!
//! Checked, for each family:
//! - logits of one 12-token window: max |diff| < 1e-4 (measured ~1e-6), same argmax;
//! - the Observer's inputs: every distinct linear input of every block, (N, in), within 1e-4
//!   of numpy's (GPT-2: c_attn, c_proj, c_fc, mlp_c_proj; OPT: q,k,v shared, out, fc1, fc2);
//! - perplexity of 4 windows of 16 in batches of 3: within 1e-5 relative, each window's NLL;
//! - OWL-Wanda through `prune_model` at 50%: the export read by Python's `safetensors` has
//!   exactly the Hugging Face names and shapes transformers expects (GPT-2 Conv1D (in, out)),
//!   every output of every pruned linear has exactly floor(in x s_l) zeros, and numpy's
//!   perplexity of the exported file equals the run's pruned perplexity (1e-5 relative);
//! - the refused layouts (OPT-350m's projections, post-LN) are errors naming the key;
//! - GPT-2 as GGUF (tests/reference/gpt2_to_gguf.py: gguf-py's writer, llama.cpp's layout):
//!   logits and perplexity against numpy on the safetensors it came from, the same OWL-Wanda
//!   run as the safetensors model, an export with Hugging Face names that numpy reads back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Tensor;
use layerlab::compute::Silent;
use layerlab::eval::{perplexity, PplOptions};
use layerlab::io::safetensors::{write_f32, F32Tensor};
use layerlab::io::{FileSource, ModelFile};
use layerlab::model::causal::load_causal_lm;
use layerlab::model::gpt2_opt::Gpt2Opt;
use layerlab::model::llama::{to_vec, Observer};
use layerlab::prune::driver::{
    export_safetensors, hf_config, prune_model, Method, OwlOptions, PruneOptions,
};
use serde_json::{json, Value};

mod common;

const C: usize = 48;
const F: usize = 192;
const V: usize = 97;
const LAYERS: usize = 2;
const POSITIONS: usize = 32;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Family {
    Gpt2,
    Opt,
}

/// A fresh directory for one test's files.
fn temp_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("gpt2_opt_{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes the tiny model of `family` as model.safetensors + config.json into `dir`.
fn write_model(family: Family, dir: &Path, config: Value) {
    let mut seed = 100;
    let mut tensors: Vec<F32Tensor> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, lo: f32, hi: f32| {
        seed += 1;
        let n = shape.iter().product();
        tensors.push(F32Tensor {
            name,
            shape,
            data: common::uniform(seed, n, lo, hi).into(),
        });
    };
    let w = 0.15;
    match family {
        Family::Gpt2 => {
            add("wte.weight".into(), vec![V, C], -0.3, 0.3);
            add("wpe.weight".into(), vec![POSITIONS, C], -0.5, 0.5);
            for i in 0..LAYERS {
                let p = format!("h.{i}");
                add(format!("{p}.ln_1.weight"), vec![C], 0.8, 1.2);
                add(format!("{p}.ln_1.bias"), vec![C], -0.1, 0.1);
                // The causal-mask buffer old GPT-2 checkpoints carry: not a weight.
                add(
                    format!("{p}.attn.bias"),
                    vec![1, 1, POSITIONS, POSITIONS],
                    0.0,
                    1.0,
                );
                // Conv1D: (in, out).
                add(format!("{p}.attn.c_attn.weight"), vec![C, 3 * C], -w, w);
                add(format!("{p}.attn.c_attn.bias"), vec![3 * C], -0.1, 0.1);
                add(format!("{p}.attn.c_proj.weight"), vec![C, C], -w, w);
                add(format!("{p}.attn.c_proj.bias"), vec![C], -0.1, 0.1);
                add(format!("{p}.ln_2.weight"), vec![C], 0.8, 1.2);
                add(format!("{p}.ln_2.bias"), vec![C], -0.1, 0.1);
                add(format!("{p}.mlp.c_fc.weight"), vec![C, F], -w, w);
                add(format!("{p}.mlp.c_fc.bias"), vec![F], -0.1, 0.1);
                add(format!("{p}.mlp.c_proj.weight"), vec![F, C], -w, w);
                add(format!("{p}.mlp.c_proj.bias"), vec![C], -0.1, 0.1);
            }
            add("ln_f.weight".into(), vec![C], 0.8, 1.2);
            add("ln_f.bias".into(), vec![C], -0.1, 0.1);
        }
        Family::Opt => {
            let d = "model.decoder";
            add(format!("{d}.embed_tokens.weight"), vec![V, C], -1.0, 1.0);
            add(
                format!("{d}.embed_positions.weight"),
                vec![POSITIONS + 2, C],
                -0.5,
                0.5,
            );
            for i in 0..LAYERS {
                let p = format!("{d}.layers.{i}");
                for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    add(format!("{p}.self_attn.{proj}.weight"), vec![C, C], -w, w);
                    add(format!("{p}.self_attn.{proj}.bias"), vec![C], -0.1, 0.1);
                }
                add(
                    format!("{p}.self_attn_layer_norm.weight"),
                    vec![C],
                    0.8,
                    1.2,
                );
                add(format!("{p}.self_attn_layer_norm.bias"), vec![C], -0.1, 0.1);
                add(format!("{p}.fc1.weight"), vec![F, C], -w, w);
                add(format!("{p}.fc1.bias"), vec![F], -0.1, 0.1);
                add(format!("{p}.fc2.weight"), vec![C, F], -w, w);
                add(format!("{p}.fc2.bias"), vec![C], -0.1, 0.1);
                add(format!("{p}.final_layer_norm.weight"), vec![C], 0.8, 1.2);
                add(format!("{p}.final_layer_norm.bias"), vec![C], -0.1, 0.1);
            }
            add(format!("{d}.final_layer_norm.weight"), vec![C], 0.8, 1.2);
            add(format!("{d}.final_layer_norm.bias"), vec![C], -0.1, 0.1);
            add("lm_head.weight".into(), vec![V, C], -0.5, 0.5);
        }
    }
    let mut f = std::fs::File::create(dir.join("model.safetensors")).unwrap();
    write_f32(&mut f, &tensors, &BTreeMap::new()).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

fn config(family: Family) -> Value {
    match family {
        Family::Gpt2 => json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_embd": C, "n_layer": LAYERS, "n_head": 4, "n_inner": null,
            "n_positions": POSITIONS, "vocab_size": V,
            "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
        }),
        Family::Opt => json!({
            "architectures": ["OPTForCausalLM"],
            "model_type": "opt",
            "hidden_size": C, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
            "ffn_dim": F, "max_position_embeddings": POSITIONS, "vocab_size": V,
            "do_layer_norm_before": true, "word_embed_proj_dim": C,
            "activation_function": "relu", "tie_word_embeddings": false,
        }),
    }
}

/// A tiny model's directory, written now.
fn model_dir(family: Family, test: &str) -> PathBuf {
    let dir = temp_dir(&format!("{family:?}_{test}"));
    write_model(family, &dir, config(family));
    dir
}

fn ids(seed: u64, n: usize) -> Vec<u32> {
    common::uniform(seed, n, 0.0, V as f32)
        .into_iter()
        .map(|x| (x as u32).min(V as u32 - 1))
        .collect()
}

fn joined(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// Runs tests/reference/gpt2_opt_forward.py with `args`; its JSON output.
fn reference(args: &[&str]) -> Value {
    let python = root().join(".cache/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh's ensure_python_reference",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root().join("tests/reference/gpt2_opt_forward.py"))
        .args(args)
        .output()
        .expect("cannot start the Python reference");
    assert!(
        out.status.success(),
        "tests/reference/gpt2_opt_forward.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the reference printed no JSON")
}

fn flat(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

/// One Observer call: (block, roles, dims, values).
type Input = (usize, Vec<String>, Vec<usize>, Vec<f32>);

/// Every Observer call.
#[derive(Default)]
struct Capture {
    inputs: Vec<Input>,
}

impl Observer for Capture {
    fn linear_input(&mut self, block: usize, roles: &[&str], x: &Tensor) -> layerlab::Result<()> {
        self.inputs.push((
            block,
            roles.iter().map(|r| r.to_string()).collect(),
            x.dims().to_vec(),
            to_vec(x)?,
        ));
        Ok(())
    }
}

fn check_forward(family: Family) {
    let dir = model_dir(family, "forward");
    let path = dir.join("model.safetensors");
    let src = FileSource::open(&path).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let cfg = config(family);
    let model = Gpt2Opt::new(&src, &file, Some(&cfg)).unwrap();
    let window = ids(7, 12);
    let mut cap = Capture::default();
    let logits = to_vec(&model.forward(&[&window], &mut cap).unwrap()).unwrap();

    let want = reference(&[
        "forward",
        path.to_str().unwrap(),
        dir.join("config.json").to_str().unwrap(),
        &joined(&window),
    ]);
    let want_logits = flat(&want["logits"]);
    let d = max_abs_diff(&logits, &want_logits);
    assert!(d < 1e-4, "{family:?} logits differ from numpy by {d:e}");
    let argmax = |v: &[f64]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    for t in 0..12 {
        let ours: Vec<f64> = logits[t * V..(t + 1) * V]
            .iter()
            .map(|&x| x as f64)
            .collect();
        assert_eq!(
            argmax(&ours),
            argmax(&want_logits[t * V..(t + 1) * V]),
            "{family:?} argmax at position {t}"
        );
    }
    eprintln!("{family:?}: logits max |diff| {d:e}");

    // The Observer: one call per distinct input, (N, in), in forward order.
    let groups: Vec<(&[&str], usize)> = match family {
        Family::Gpt2 => vec![
            (&["c_attn"], C),
            (&["c_proj"], C),
            (&["c_fc"], C),
            (&["mlp_c_proj"], F),
        ],
        Family::Opt => vec![
            (&["q", "k", "v"], C),
            (&["out"], C),
            (&["fc1"], C),
            (&["fc2"], F),
        ],
    };
    assert_eq!(cap.inputs.len(), LAYERS * groups.len());
    let mut worst: f64 = 0.0;
    for (k, (block, roles, dims, x)) in cap.inputs.iter().enumerate() {
        let (want_roles, cols) = &groups[k % groups.len()];
        assert_eq!(*block, k / groups.len());
        assert_eq!(roles, want_roles);
        assert_eq!(dims, &vec![12, *cols]);
        let d = max_abs_diff(x, &flat(&want["inputs"][block][&roles[0]]));
        assert!(
            d < 1e-4,
            "{family:?} block {block} {roles:?} input differs by {d:e}"
        );
        worst = worst.max(d);
    }
    eprintln!("{family:?}: observer inputs max |diff| {worst:e}");
}

#[test]
fn gpt2_logits_and_observer_inputs_match_numpy() {
    check_forward(Family::Gpt2);
}

#[test]
fn opt_logits_and_observer_inputs_match_numpy() {
    check_forward(Family::Opt);
}

fn numpy_ppl(model: &Path, config: &Path, ids: &[u32], seqlen: usize) -> Value {
    reference(&[
        "ppl",
        model.to_str().unwrap(),
        config.to_str().unwrap(),
        &joined(ids),
        &seqlen.to_string(),
    ])
}

fn check_perplexity(family: Family) {
    let dir = model_dir(family, "ppl");
    let path = dir.join("model.safetensors");
    let src = FileSource::open(&path).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let cfg = config(family);
    let model = load_causal_lm(&src, &file, Some(&cfg)).unwrap();
    assert_eq!(
        model.roles().len(),
        if family == Family::Gpt2 { 4 } else { 6 }
    );
    // 4 windows of 16 and 5 tokens dropped, in batches of 3 (a full and a partial batch).
    let text = ids(11, 69);
    let opts = PplOptions {
        seqlen: 16,
        max_windows: None,
        batch: 3,
    };
    let got = pollster::block_on(perplexity(model.as_ref(), &text, &opts, &Silent)).unwrap();
    let want = numpy_ppl(&path, &dir.join("config.json"), &text, 16);
    let want_ppl = want["ppl"].as_f64().unwrap();
    let rel = (got.perplexity - want_ppl).abs() / want_ppl;
    assert!(
        rel < 1e-5,
        "{family:?} ppl {} vs numpy {want_ppl}",
        got.perplexity
    );
    assert_eq!(got.predicted_tokens, 60);
    assert_eq!(got.windows, 4);
    for (a, b) in got
        .window_nll
        .iter()
        .zip(want["window_nll"].as_array().unwrap())
    {
        let b = b.as_f64().unwrap();
        assert!(
            (a - b).abs() < 1e-5 * b.abs(),
            "{family:?} window NLL {a} vs {b}"
        );
    }
    eprintln!(
        "{family:?}: ppl {} vs numpy {want_ppl} (rel {rel:e})",
        got.perplexity
    );

    // A window longer than the position table is an error, not a wrong answer.
    let long = ids(12, 40);
    let e = pollster::block_on(perplexity(
        model.as_ref(),
        &long,
        &PplOptions {
            seqlen: 40,
            max_windows: None,
            batch: 1,
        },
        &Silent,
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("longer than the model's 32 positions"), "{e}");
}

#[test]
fn gpt2_perplexity_matches_numpy() {
    check_perplexity(Family::Gpt2);
}

#[test]
fn opt_perplexity_matches_numpy() {
    check_perplexity(Family::Opt);
}

/// The tensors transformers' GPT2LMHeadModel / OPTForCausalLM expect, with their shapes.
fn expected_export(family: Family) -> BTreeMap<String, Vec<usize>> {
    let mut m = BTreeMap::new();
    let mut add = |n: String, s: &[usize]| {
        m.insert(n, s.to_vec());
    };
    match family {
        Family::Gpt2 => {
            add("transformer.wte.weight".into(), &[V, C]);
            add("transformer.wpe.weight".into(), &[POSITIONS, C]);
            for i in 0..LAYERS {
                let p = format!("transformer.h.{i}");
                for n in ["ln_1", "ln_2"] {
                    add(format!("{p}.{n}.weight"), &[C]);
                    add(format!("{p}.{n}.bias"), &[C]);
                }
                add(format!("{p}.attn.c_attn.weight"), &[C, 3 * C]);
                add(format!("{p}.attn.c_attn.bias"), &[3 * C]);
                add(format!("{p}.attn.c_proj.weight"), &[C, C]);
                add(format!("{p}.attn.c_proj.bias"), &[C]);
                add(format!("{p}.mlp.c_fc.weight"), &[C, F]);
                add(format!("{p}.mlp.c_fc.bias"), &[F]);
                add(format!("{p}.mlp.c_proj.weight"), &[F, C]);
                add(format!("{p}.mlp.c_proj.bias"), &[C]);
            }
            add("transformer.ln_f.weight".into(), &[C]);
            add("transformer.ln_f.bias".into(), &[C]);
        }
        Family::Opt => {
            let d = "model.decoder";
            add(format!("{d}.embed_tokens.weight"), &[V, C]);
            add(format!("{d}.embed_positions.weight"), &[POSITIONS + 2, C]);
            for i in 0..LAYERS {
                let p = format!("{d}.layers.{i}");
                for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    add(format!("{p}.self_attn.{proj}.weight"), &[C, C]);
                    add(format!("{p}.self_attn.{proj}.bias"), &[C]);
                }
                for n in ["self_attn_layer_norm", "final_layer_norm"] {
                    add(format!("{p}.{n}.weight"), &[C]);
                    add(format!("{p}.{n}.bias"), &[C]);
                }
                add(format!("{p}.fc1.weight"), &[F, C]);
                add(format!("{p}.fc1.bias"), &[F]);
                add(format!("{p}.fc2.weight"), &[C, F]);
                add(format!("{p}.fc2.bias"), &[C]);
            }
            add(format!("{d}.final_layer_norm.weight"), &[C]);
            add(format!("{d}.final_layer_norm.bias"), &[C]);
            add("lm_head.weight".into(), &[V, C]);
        }
    }
    m
}

/// The OWL-Wanda experiment the export tests run: calibration ids, evaluation ids, options
/// (50%, M = 3, 4 windows of 16 in batches of 3, evaluation in windows of 16).
fn owl_wanda_experiment() -> (Vec<u32>, Vec<u32>, PruneOptions) {
    let opts = PruneOptions {
        method: Method::Wanda,
        sparsity: 0.5,
        owl: Some(OwlOptions {
            hyper_m: 3.0,
            lamda: 0.08,
        }),
        nsamples: 4,
        seqlen: 16,
        batch: 3,
        eval: PplOptions {
            seqlen: 16,
            max_windows: None,
            batch: 2,
        },
        ..PruneOptions::default()
    };
    (ids(21, 64), ids(22, 48), opts)
}

/// `owl_wanda_experiment` through `prune_model` on `model`.
fn owl_wanda(model: &dyn layerlab::model::causal::CausalLm) -> layerlab::prune::driver::PruneRun {
    let (calib, eval, opts) = owl_wanda_experiment();
    pollster::block_on(prune_model(model, &calib, Some(&eval), &opts, &Silent)).unwrap()
}

fn check_owl_wanda_export(family: Family) {
    let dir = model_dir(family, "prune");
    let path = dir.join("model.safetensors");
    let config_path = dir.join("config.json");
    let src = FileSource::open(&path).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let cfg = config(family);
    let model = load_causal_lm(&src, &file, Some(&cfg)).unwrap();
    let (_, eval, opts) = owl_wanda_experiment();
    let run = owl_wanda(model.as_ref());
    let r = &run.report;
    assert_eq!(r.blocks.len(), LAYERS);
    let mean: f64 = r.blocks.iter().map(|b| b.sparsity).sum::<f64>() / LAYERS as f64;
    assert!(
        (mean - 0.5).abs() < 1e-12,
        "OWL keeps the mean sparsity: {mean}"
    );
    let roles: Vec<&str> = r.blocks[0]
        .linears
        .iter()
        .map(|l| l.role.as_str())
        .collect();
    match family {
        Family::Gpt2 => assert_eq!(roles, ["c_attn", "c_proj", "c_fc", "mlp_c_proj"]),
        Family::Opt => assert_eq!(roles, ["q", "k", "v", "out", "fc1", "fc2"]),
    }

    let export = dir.join("pruned.safetensors");
    let mut out = std::fs::File::create(&export).unwrap();
    export_safetensors(model.as_ref(), &run, &json!({"test": "gpt2_opt"}), &mut out).unwrap();
    drop(out);
    let got = reference(&["tensors", export.to_str().unwrap()]);
    let shapes: BTreeMap<String, Vec<usize>> =
        serde_json::from_value(got["shapes"].clone()).unwrap();
    assert_eq!(
        shapes,
        expected_export(family),
        "{family:?} export names/shapes"
    );
    assert_eq!(got["dtypes"], json!(["float32"]));
    assert_eq!(got["metadata"]["format"], "pt");

    // Every output of every pruned linear zeroes exactly floor(in x s_l) weights.
    let zeros: BTreeMap<String, Vec<usize>> =
        serde_json::from_value(got["zeros_per_output"].clone()).unwrap();
    let mut checked = 0;
    for (block, pb) in r.blocks.iter().zip(&run.blocks) {
        for (lr, pl) in block.linears.iter().zip(&pb.linears) {
            let hf = export_name(family, pb.index, &pl.role);
            let per_output = zeros
                .get(&hf)
                .unwrap_or_else(|| panic!("{hf} missing from the export"));
            let k = (pl.cols as f64 * block.sparsity).floor() as usize;
            assert_eq!(per_output.len(), pl.rows, "{hf}");
            assert!(
                per_output.iter().all(|&z| z == k),
                "{hf}: {per_output:?} != {k}"
            );
            assert!((lr.achieved_sparsity - k as f64 / pl.cols as f64).abs() < 1e-12);
            checked += 1;
        }
    }
    assert_eq!(checked, LAYERS * roles.len());

    // numpy on the exported file (with the source's config.json) gives the run's pruned
    // perplexity; numpy on the source gives its dense one.
    let ppl = r.perplexity.as_ref().unwrap();
    let pruned = numpy_ppl(&export, &config_path, &eval, 16)["ppl"]
        .as_f64()
        .unwrap();
    let dense = numpy_ppl(&path, &config_path, &eval, 16)["ppl"]
        .as_f64()
        .unwrap();
    assert!(
        (ppl.pruned - pruned).abs() < 1e-5 * pruned,
        "{family:?} pruned ppl {} vs numpy on the export {pruned}",
        ppl.pruned
    );
    let d = ppl.dense.unwrap();
    assert!(
        (d - dense).abs() < 1e-5 * dense,
        "{family:?} dense {d} vs {dense}"
    );
    assert!(ppl.pruned != d);
    eprintln!(
        "{family:?}: block sparsities {:?}, ppl dense {d} (numpy {dense}), pruned {} (numpy \
         on the export {pruned})",
        r.blocks.iter().map(|b| b.sparsity).collect::<Vec<_>>(),
        ppl.pruned
    );

    // hf_config describes the export well enough for LayerLab to load it again.
    let cfg2 = hf_config(model.as_ref());
    let src2 = FileSource::open(&export).unwrap();
    let file2 = ModelFile::open(&src2).unwrap();
    let again = load_causal_lm(&src2, &file2, Some(&cfg2)).unwrap();
    let p2 = pollster::block_on(perplexity(again.as_ref(), &eval, &opts.eval, &Silent)).unwrap();
    // Same weights, summed in another order: the run multiplies its pruned linears through
    // the sparse kernel (kept weights only), the reloaded export densely.
    assert!(
        (p2.perplexity - ppl.pruned).abs() < 1e-6 * ppl.pruned,
        "{family:?}: the reloaded export's perplexity {} vs the run's {}",
        p2.perplexity,
        ppl.pruned
    );
}

fn export_name(family: Family, i: usize, role: &str) -> String {
    match family {
        Family::Gpt2 => {
            let stem = match role {
                "c_attn" => "attn.c_attn",
                "c_proj" => "attn.c_proj",
                "c_fc" => "mlp.c_fc",
                _ => "mlp.c_proj",
            };
            format!("transformer.h.{i}.{stem}.weight")
        }
        Family::Opt => {
            let stem = match role {
                "fc1" | "fc2" => role.to_string(),
                r => format!("self_attn.{r}_proj"),
            };
            format!("model.decoder.layers.{i}.{stem}.weight")
        }
    }
}

#[test]
fn gpt2_owl_wanda_export_reads_back_in_python() {
    check_owl_wanda_export(Family::Gpt2);
}

#[test]
fn opt_owl_wanda_export_reads_back_in_python() {
    check_owl_wanda_export(Family::Opt);
}

#[test]
fn refused_layouts_are_errors_that_say_why() {
    let open = |cfg: Value, test: &str| -> String {
        let dir = temp_dir(&format!("refuse_{test}"));
        write_model(Family::Opt, &dir, cfg.clone());
        let src = FileSource::open(&dir.join("model.safetensors")).unwrap();
        let file = ModelFile::open(&src).unwrap();
        let e = match load_causal_lm(&src, &file, Some(&cfg)) {
            Ok(_) => panic!("{test}: accepted"),
            Err(e) => e.to_string(),
        };
        e
    };
    let mut c = config(Family::Opt);
    c["word_embed_proj_dim"] = json!(32);
    let e = open(c, "proj");
    assert!(
        e.contains("word_embed_proj_dim 32 differs from hidden_size 48"),
        "{e}"
    );
    let mut c = config(Family::Opt);
    c["do_layer_norm_before"] = json!(false);
    let e = open(c, "postln");
    assert!(e.contains("do_layer_norm_before false"), "{e}");
    let mut c = config(Family::Opt);
    c["activation_function"] = json!("silu");
    let e = open(c, "act");
    assert!(
        e.contains("activation_function 'silu' is not supported"),
        "{e}"
    );
    // A tensor of the wrong shape names itself.
    let mut c = config(Family::Opt);
    c["ffn_dim"] = json!(100);
    let dir = temp_dir("refuse_shape");
    write_model(Family::Opt, &dir, c.clone());
    let src = FileSource::open(&dir.join("model.safetensors")).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let model = load_causal_lm(&src, &file, Some(&c)).unwrap();
    let e = match model.load_block(0) {
        Ok(_) => panic!("a wrong FFN width was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("model.decoder.layers.0.fc1.weight: expected shape [100, 48], found [192, 48]"),
        "{e}"
    );
}

/// The tiny GPT-2 of `dir` written as GGUF by tests/reference/gpt2_to_gguf.py (gguf-py's
/// GGUFWriter, laid out as llama.cpp's convert_hf_to_gguf.py lays out GPT-2).
fn gguf_of(dir: &Path) -> PathBuf {
    let python = root().join(".cache/venv/bin/python");
    let out = dir.join("model.gguf");
    let run = Command::new(&python)
        .arg(root().join("tests/reference/gpt2_to_gguf.py"))
        .arg(dir.join("model.safetensors"))
        .arg(dir.join("config.json"))
        .arg(&out)
        .output()
        .expect("cannot start the Python converter");
    assert!(
        run.status.success(),
        "gpt2_to_gguf.py failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

/// A GGUF GPT-2 (llama.cpp's names, (out, in) weights, sizes and eps in the metadata, no
/// config.json): logits and perplexity against numpy on the safetensors it was converted
/// from; OWL-Wanda on it gives the safetensors model's run, and its export has Hugging Face
/// names (plus `lm_head.weight`, as llama.cpp's GPT-2 carries `output.weight`) that numpy
/// reads back to the run's pruned perplexity.
#[test]
fn gpt2_from_gguf_matches_numpy_and_exports_hugging_face_names() {
    let dir = model_dir(Family::Gpt2, "gguf");
    let st = dir.join("model.safetensors");
    let config_path = dir.join("config.json");
    let gg = gguf_of(&dir);
    let src = FileSource::open(&gg).unwrap();
    let file = ModelFile::open(&src).unwrap();

    let g = Gpt2Opt::new(&src, &file, None).unwrap();
    let window = ids(7, 12);
    let logits = to_vec(&g.forward(&[&window], &mut Capture::default()).unwrap()).unwrap();
    let want = reference(&[
        "forward",
        st.to_str().unwrap(),
        config_path.to_str().unwrap(),
        &joined(&window),
    ]);
    let d = max_abs_diff(&logits, &flat(&want["logits"]));
    assert!(d < 1e-4, "GGUF GPT-2 logits differ from numpy by {d:e}");

    let model = load_causal_lm(&src, &file, None).unwrap();
    let text = ids(11, 69);
    let opts = PplOptions {
        seqlen: 16,
        max_windows: None,
        batch: 3,
    };
    let got = pollster::block_on(perplexity(model.as_ref(), &text, &opts, &Silent)).unwrap();
    let want_ppl = numpy_ppl(&st, &config_path, &text, 16)["ppl"]
        .as_f64()
        .unwrap();
    assert!(
        (got.perplexity - want_ppl).abs() < 1e-5 * want_ppl,
        "GGUF GPT-2 ppl {} vs numpy {want_ppl}",
        got.perplexity
    );

    let (_, eval, _) = owl_wanda_experiment();
    let run = owl_wanda(model.as_ref());
    let st_src = FileSource::open(&st).unwrap();
    let st_file = ModelFile::open(&st_src).unwrap();
    let cfg = config(Family::Gpt2);
    let st_model = load_causal_lm(&st_src, &st_file, Some(&cfg)).unwrap();
    let st_run = owl_wanda(st_model.as_ref());
    let (p, q) = (
        run.report.perplexity.as_ref().unwrap(),
        st_run.report.perplexity.as_ref().unwrap(),
    );
    assert!(
        (p.pruned - q.pruned).abs() <= 1e-9 * q.pruned,
        "pruned ppl {} (GGUF) vs {} (safetensors)",
        p.pruned,
        q.pruned
    );
    for (a, b) in run.report.blocks.iter().zip(&st_run.report.blocks) {
        assert!((a.sparsity - b.sparsity).abs() < 1e-12, "block {}", a.index);
        assert!((a.outlier_ratio - b.outlier_ratio).abs() < 1e-9);
    }

    let export = dir.join("pruned.safetensors");
    let mut out = std::fs::File::create(&export).unwrap();
    export_safetensors(model.as_ref(), &run, &json!({"test": "gguf"}), &mut out).unwrap();
    drop(out);
    let got = reference(&["tensors", export.to_str().unwrap()]);
    let shapes: BTreeMap<String, Vec<usize>> =
        serde_json::from_value(got["shapes"].clone()).unwrap();
    let mut expected = expected_export(Family::Gpt2);
    expected.insert("lm_head.weight".into(), vec![V, C]);
    assert_eq!(shapes, expected, "GGUF GPT-2 export names/shapes");
    let exported_config = dir.join("pruned-config.json");
    std::fs::write(&exported_config, hf_config(model.as_ref()).to_string()).unwrap();
    let pruned = numpy_ppl(&export, &exported_config, &eval, 16)["ppl"]
        .as_f64()
        .unwrap();
    assert!(
        (p.pruned - pruned).abs() < 1e-5 * pruned,
        "pruned ppl {} vs numpy on the export {pruned}",
        p.pruned
    );
    eprintln!(
        "GGUF GPT-2: logits max |diff| {d:e}; pruned ppl {} (numpy on the export {pruned})",
        p.pruned
    );
}
