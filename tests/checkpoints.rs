//! Real checkpoint conventions against transformers itself: tests/reference/checkpoints.py
//! builds tiny seeded LLaMA-family models with transformers 5 (`save_pretrained`), one per
//! config convention and RoPE type (transformers 4's rope_theta / rope_scaling with "type" or
//! "rope_type", transformers 5's rope_parameters; default, linear, dynamic, llama3, yarn with
//! and without mscale), Qwen2 with its biases, Qwen3 (q/k norms, head_dim apart from
//! hidden / heads), Mistral, an explicit head_dim with attention and MLP biases, bf16
//! weights and an untied head, and writes transformers' logits and perplexities. LayerLab
//! reads the same files and must give the same numbers; and it must refuse, by name, what
//! it does not compute.
//!
//! Tolerances (both sides in f32, different summation orders, 2 blocks):
//! - logits of a 24-token window (V = 96): |diff| <= 1e-4 (|logit| up to ~10);
//! - perplexity of 3 windows of 20 tokens: 1e-5 relative, and each window's NLL.
//!
//! The reference runs in .cache/venv-torch (scripts/setup.sh's ensure_torch_reference,
//! which scripts/test.sh calls); a missing venv fails the test, never skips it.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use layerlab::compute::Silent;
use layerlab::eval::{perplexity, PplOptions};
use layerlab::io::{FileSource, ModelFile};
use layerlab::model::causal::{llama_forward_refusal, load_causal_lm};
use layerlab::model::llama::{to_vec, Llama, NoObserver};
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the reference once per test binary; its manifest.
fn manifest() -> &'static Value {
    static M: OnceLock<Value> = OnceLock::new();
    M.get_or_init(|| {
        let python = root().join(".cache/venv-torch/bin/python");
        assert!(
            python.is_file(),
            "{} is missing: run scripts/setup.sh's ensure_torch_reference (scripts/test.sh \
             does) to install PyTorch and transformers, the reference of this test",
            python.display()
        );
        let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("checkpoints");
        let out = Command::new(&python)
            .arg(root().join("tests/reference/checkpoints.py"))
            .arg(&out_dir)
            .output()
            .expect("cannot start the Python reference");
        assert!(
            out.status.success(),
            "tests/reference/checkpoints.py failed (rerun scripts/setup.sh's \
             ensure_torch_reference if a package is missing):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(out_dir.join("manifest.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

fn ids(key: &str) -> Vec<u32> {
    manifest()[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn case_dir(name: &str) -> PathBuf {
    PathBuf::from(manifest()["cases"][name]["dir"].as_str().unwrap())
}

fn config(name: &str) -> Value {
    let text = std::fs::read_to_string(case_dir(name).join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn open(name: &str) -> (FileSource, ModelFile) {
    let src = FileSource::open(&case_dir(name).join("model.safetensors")).unwrap();
    let file = ModelFile::open(&src).unwrap();
    (src, file)
}

fn reference_logits(name: &str) -> Vec<f32> {
    std::fs::read(case_dir(name).join("logits.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// LayerLab's logits and perplexity on `file` with `config` against transformers' on `name`.
fn check(name: &str, src: &FileSource, file: &ModelFile, config: Option<&Value>) {
    let model = Llama::new(src, file, config).unwrap_or_else(|e| panic!("{name}: {e}"));
    let window = ids("ids");
    let logits = to_vec(&model.forward(&[&window], &mut NoObserver).unwrap()).unwrap();
    let want = reference_logits(name);
    assert_eq!(logits.len(), want.len(), "{name}: logits");
    let worst = logits
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .fold(0.0, f64::max);
    assert!(worst <= 1e-4, "{name}: logits differ by up to {worst:e}");

    let lm = load_causal_lm(src, file, config).unwrap();
    let opts = PplOptions {
        seqlen: manifest()["ppl_seqlen"].as_u64().unwrap() as usize,
        max_windows: None,
        batch: 2,
    };
    let ours =
        pollster::block_on(perplexity(lm.as_ref(), &ids("ppl_ids"), &opts, &Silent)).unwrap();
    let r = &manifest()["cases"][name];
    let want_ppl = r["perplexity"].as_f64().unwrap();
    let rel = (ours.perplexity - want_ppl).abs() / want_ppl;
    assert!(
        rel <= 1e-5,
        "{name}: perplexity {} against transformers' {want_ppl} (relative {rel:e})",
        ours.perplexity
    );
    for (w, (a, b)) in ours
        .window_nll
        .iter()
        .zip(r["window_nll"].as_array().unwrap())
        .enumerate()
    {
        let b = b.as_f64().unwrap();
        assert!(
            (a - b).abs() <= 1e-5 * b.abs(),
            "{name}: window {w} NLL {a} against {b}"
        );
    }
    eprintln!(
        "{name}: logits within {worst:.1e}, perplexity {:.6} vs transformers {want_ppl:.6}",
        ours.perplexity
    );
}

#[test]
fn every_config_convention_matches_transformers() {
    let cases: Vec<String> = manifest()["cases"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(
        cases.len() >= 16,
        "the reference wrote {} cases",
        cases.len()
    );
    for name in &cases {
        let (src, file) = open(name);
        check(name, &src, &file, Some(&config(name)));
    }
}

/// GGUF copies written as llama.cpp's converter writes them (q/k rows permuted for "llama",
/// `<arch>.rope.freq_base`, `rope.scaling.type/factor/original_context_length`,
/// `rope_freqs.weight` for llama3, `attention.key_length` for Qwen3's head dim, attn_q_norm
/// and attn_k_norm): the same logits and perplexity as transformers on the original.
#[test]
fn gguf_metadata_conventions_match_transformers() {
    let ggufs = manifest()["gguf"].as_object().unwrap();
    assert!(ggufs.len() >= 7);
    for (name, g) in ggufs {
        let src = FileSource::open(std::path::Path::new(g["path"].as_str().unwrap())).unwrap();
        let file = ModelFile::open(&src).unwrap();
        let case = g["case"].as_str().unwrap();
        if name == "gguf_llama_mlp_bias" {
            let e = Llama::new(&src, &file, None)
                .err()
                .expect("MLP biases accepted");
            assert_says(&e.to_string(), &["blk.0.ffn_gate.bias", "no gate bias"]);
            continue;
        }
        eprint!("{name} as ");
        check(case, &src, &file, None);
    }
}

/// The error of loading case `name`'s file with `config`.
fn refusal(name: &str, config: &Value) -> String {
    let (src, file) = open(name);
    match Llama::new(&src, &file, Some(config)) {
        Ok(model) => match model.rope(24) {
            Ok(_) => panic!("{name}: {config} was accepted"),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

fn assert_says(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "the error '{msg}' does not say '{p}'");
    }
}

#[test]
fn what_is_not_computed_is_refused_by_name() {
    // An unknown rope_type, in either convention.
    let mut c = config("t5_default");
    c["rope_parameters"]["rope_type"] = json!("longrope");
    assert_says(
        &refusal("t5_default", &c),
        &[
            "rope_type 'longrope'",
            "default, linear, dynamic, llama3 and yarn",
        ],
    );
    let mut c = config("t4_linear_type");
    c["rope_scaling"]["type"] = json!("su");
    assert_says(&refusal("t4_linear_type", &c), &["rope_type 'su'"]);
    // A parameter the rope type does not read.
    let mut c = config("t5_llama3");
    c["rope_parameters"]["mrope_section"] = json!([2, 2]);
    assert_says(&refusal("t5_llama3", &c), &["'mrope_section'", "llama3"]);
    // Partial rotary embeddings.
    let mut c = config("t5_default");
    c["partial_rotary_factor"] = json!(0.5);
    assert_says(&refusal("t5_default", &c), &["partial_rotary_factor"]);
    // An extra tensor: Qwen3's q/k norms under a llama config.
    let mut c = config("qwen3");
    c["model_type"] = json!("llama");
    c["architectures"] = json!(["LlamaForCausalLM"]);
    assert_says(
        &refusal("qwen3", &c),
        &["model.layers.0.self_attn.", "_norm.weight", "Qwen3"],
    );
    // A bias the config does not announce.
    let mut c = config("llama_head_dim");
    c["attention_bias"] = json!(false);
    assert_says(
        &refusal("llama_head_dim", &c),
        &["self_attn.q_proj.bias", "attention_bias"],
    );
    // An unsupported architecture.
    let mut c = config("t5_default");
    c["model_type"] = json!("granite");
    c["architectures"] = json!(["GraniteForCausalLM"]);
    assert_says(&refusal("t5_default", &c), &["'granite'", "qwen3"]);
    // The same sentence, up front, for a view that opens any model (statistics).
    let (src, file) = open("t5_default");
    let notice = llama_forward_refusal(&file, Some(&c), "m").expect("granite accepted");
    assert_says(
        &notice,
        &["the pruning lab cannot run this model", "'granite'"],
    );
    assert_eq!(
        llama_forward_refusal(&file, Some(&config("t5_default")), "m"),
        None
    );
    drop(src);
    // A key that changes the maths.
    let mut c = config("t5_default");
    c["hidden_act"] = json!("gelu");
    assert_says(&refusal("t5_default", &c), &["hidden_act 'gelu'"]);
    // A sliding window shorter than the window asked for.
    let mut c = config("mistral");
    c["sliding_window"] = json!(8);
    assert_says(&refusal("mistral", &c), &["sliding window (8)"]);
    // A shape says which config field it comes from.
    let mut c = config("qwen3");
    c["head_dim"] = json!(16);
    let (src, file) = open("qwen3");
    let model = Llama::new(&src, &file, Some(&c)).unwrap();
    let e = model
        .load_block(0)
        .err()
        .expect("a wrong head_dim was accepted");
    assert_says(
        &e.to_string(),
        &[
            "q_proj.weight",
            "num_attention_heads x head_dim",
            "[64, 64]",
        ],
    );
    // Qwen3 without head_dim takes transformers' default, 128: not this file's.
    let mut c = config("qwen3");
    c.as_object_mut().unwrap().remove("head_dim");
    let model = Llama::new(&src, &file, Some(&c)).unwrap();
    assert_says(
        &model.load_block(0).err().unwrap().to_string(),
        &["Qwen3's default, 128"],
    );
}

/// Qwen3's per-head q/k norms on the GPU (the RMSNorm kernel over (N heads, D) rows) against
/// the CPU block, with yarn's scaled tables: every Observer input and the output.
#[test]
fn qwen3_block_on_the_gpu_matches_the_cpu() {
    use layerlab::model::gpu_forward::block_forward_gpu;
    let gpu = common::gpu();
    for name in ["qwen3", "qwen3_bias_yarn"] {
        let (src, file) = open(name);
        let c = config(name);
        let model = Llama::new(&src, &file, Some(&c)).unwrap();
        let ends = model.load_ends().unwrap();
        let window = ids("ids");
        let x = model.embed(&ends, &[&window[..], &window[..]]).unwrap();
        let rope = model.rope(window.len()).unwrap();
        let w = model.load_block(0).unwrap();
        let want = to_vec(&model.block_forward(&w, &x, &rope, &mut NoObserver).unwrap()).unwrap();
        let got = to_vec(
            &pollster::block_on(block_forward_gpu(
                &gpu,
                &model,
                &w,
                &x,
                &rope,
                &mut NoObserver,
            ))
            .unwrap(),
        )
        .unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .fold(0.0, f64::max);
        assert!(
            worst <= 1e-5 * scale,
            "{name}: the GPU block differs from the CPU by {worst:e} (scale {scale})"
        );
    }
}

const SMOLLM2: &str = ".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const MPL: &str = "/usr/share/common-licenses/MPL-2.0";

/// The real SmolLM2-135M weights (the built-in GGUF, dequantised by transformers and saved
/// as transformers 5 saves it) under RoPE configs where a wrong theta or an ignored scaling
/// shows: transformers 5's rope_parameters with theta 1e5 (the 28.92 against 33.58
/// with theta 10000) and Llama 3.x's llama3 scaling; the GGUF itself too. 4 windows of 128
/// tokens of MPL-2.0: perplexity within 1e-5 relative of transformers'. (The other scaled
/// types run on the real weights in `layerlab ppl` as well; on CI's 2 cores each config
/// costs ~10 s, so the tiny checkpoints above cover them.)
#[test]
fn smollm2_real_weights_match_transformers() {
    use layerlab::tokenizer::TextTokenizer;
    let gguf = root().join(SMOLLM2);
    assert!(
        gguf.is_file(),
        "{} is missing: run scripts/setup.sh's ensure_models (scripts/test.sh does)",
        gguf.display()
    );
    let python = root().join(".cache/venv-torch/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh's ensure_torch_reference",
        python.display()
    );
    let src = FileSource::open(&gguf).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let tok = TextTokenizer::from_gguf(&file, "smollm2").unwrap();
    let text = std::fs::read_to_string(MPL).expect("MPL-2.0 missing (Debian's base-files)");
    let seqlen = 128;
    let ids: Vec<u32> = tok.encode(&text).unwrap()[..4 * seqlen].to_vec();
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("smollm2");
    std::fs::create_dir_all(&out_dir).unwrap();
    let ids_path = out_dir.join("ids.txt");
    let lines: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    std::fs::write(&ids_path, lines.join("\n")).unwrap();
    let out = Command::new(&python)
        .arg(root().join("tests/reference/checkpoints.py"))
        .arg("smollm2")
        .arg(&gguf)
        .arg(&ids_path)
        .arg(&out_dir)
        .arg(seqlen.to_string())
        .arg("t5_theta,t5_llama3")
        .output()
        .expect("cannot start the Python reference");
    assert!(
        out.status.success(),
        "checkpoints.py smollm2 failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let opts = PplOptions {
        seqlen,
        max_windows: None,
        batch: 4,
    };
    let ppl = |src: &FileSource, file: &ModelFile, config: Option<&Value>| {
        let lm = load_causal_lm(src, file, config).unwrap();
        pollster::block_on(perplexity(lm.as_ref(), &ids, &opts, &Silent))
            .unwrap()
            .perplexity
    };
    let mut checks = vec![("gguf".to_string(), "t5_theta", ppl(&src, &file, None))];
    for name in ["t5_theta", "t5_llama3"] {
        let dir = PathBuf::from(r[name]["dir"].as_str().unwrap());
        let s = FileSource::open(&dir.join("model.safetensors")).unwrap();
        let f = ModelFile::open(&s).unwrap();
        let c: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        checks.push((name.to_string(), name, ppl(&s, &f, Some(&c))));
    }
    for (what, name, ours) in checks {
        let want = r[name]["perplexity"].as_f64().unwrap();
        let rel = (ours - want).abs() / want;
        eprintln!("SmolLM2 {what}: {ours:.6} vs transformers {want:.6} ({rel:.1e})");
        assert!(rel <= 1e-5, "SmolLM2 {what}: {ours} vs transformers {want}");
    }
    // The scaling changes the number: a reader that ignored it could not pass.
    let (a, b) = (
        r["t5_theta"]["perplexity"].as_f64().unwrap(),
        r["t5_llama3"]["perplexity"].as_f64().unwrap(),
    );
    assert!(
        (a - b).abs() > 0.05 * a,
        "llama3 scaling changed nothing: {a} vs {b}"
    );
}
