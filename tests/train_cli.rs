//! `layerlab train` against an independent PyTorch implementation (tests/reference/
//! train_torch.py, float64) from the same weights and batches: the gradients of the first
//! batch (--init / --grads) for each placement, and the losses of a few Adam steps
//! (--batches / --json). Plus the CLI's errors for bad input, and `--backend gpu` (the WGSL
//! training step, on lavapipe in CI) against `--backend cpu`.
//!
//! The reference runs in the repository's .cache/venv-torch (scripts/setup.sh); a missing
//! venv is a failure that says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use layerlab::io::safetensors::{write_f32, F32Tensor};
use layerlab::io::{FileSource, ModelFile};
use layerlab::train::data::Tokenizer;
use layerlab::train::model::Weights;
use layerlab::train::{NormPlacement, TrainOptions, TrainReport};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("layerlab-train-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn layerlab(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_layerlab"))
        .args(args)
        .output()
        .expect("run layerlab");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn text() -> String {
    let mut s = String::new();
    for i in 0..60 {
        s.push_str(&format!(
            "Permission is hereby granted, free of charge, to any person {i}; "
        ));
        s.push_str("THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY.\n");
    }
    s
}

/// Random weights for `opts` (not the lab's init: larger, norm weights away from 1, so that
/// every path carries gradient), written with the export's names.
fn write_init(path: &Path, opts: &TrainOptions, vocab: usize, seed: u64) {
    let cfg = opts.model_config(vocab).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut u = || ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32;
    let tensors: Vec<F32Tensor> = Weights::specs(&cfg)
        .into_iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            let data: Vec<f32> = if s.shape.len() == 1 {
                (0..n).map(|_| 1.0 + 0.3 * u()).collect()
            } else if s.name.contains("embed") {
                (0..n).map(|_| 1.5 * u()).collect()
            } else {
                (0..n).map(|_| 0.3 * u()).collect()
            };
            F32Tensor {
                name: s.name,
                shape: s.shape,
                data: data.into(),
            }
        })
        .collect();
    let mut f = std::fs::File::create(path).unwrap();
    write_f32(&mut f, &tensors, &BTreeMap::new()).unwrap();
}

fn read_all(path: &Path) -> (BTreeMap<String, Vec<f32>>, Option<String>) {
    let src = FileSource::open(path).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let mut out = BTreeMap::new();
    for t in &file.tensors {
        if t.name != "tokens" {
            out.insert(t.name.clone(), file.read_f32(&src, t).unwrap());
        }
    }
    let loss = file
        .metadata
        .get("loss")
        .and_then(|v| v.as_str())
        .map(String::from);
    (out, loss)
}

fn size_args(o: &TrainOptions) -> Vec<String> {
    let mut a: Vec<String> = [
        ("--layers", o.layers),
        ("--width", o.width),
        ("--heads", o.heads),
        ("--kv-heads", o.kv_heads),
        ("--ffn", o.ffn),
    ]
    .iter()
    .flat_map(|(k, v)| [k.to_string(), v.to_string()])
    .collect();
    if o.tied_head {
        a.push("--tied".into());
    }
    a
}

fn torch_python() -> PathBuf {
    let python = root().join(".cache/venv-torch/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh (it installs the PyTorch venv the training \
         reference needs)",
        python.display()
    );
    python
}

#[test]
fn gradients_and_adam_steps_match_pytorch_for_every_placement() {
    let python = torch_python();
    let dir = scratch("torch");
    let text_path = dir.join("text.txt");
    std::fs::write(&text_path, text()).unwrap();
    let vocab = Tokenizer::char_level(&text()).unwrap().vocab_size();
    let mut jobs = Vec::new();
    let mut cases = Vec::new();
    // The last case trains with --fma (fused multiply-adds in the CPU's matrix products): a
    // different rounding, the same tolerances against PyTorch (where the CPU has FMA; without
    // it --fma is refused).
    for (norm, tied, fma) in [
        (NormPlacement::Pre, true, false),
        (NormPlacement::Post, false, false),
        (NormPlacement::Mix, true, false),
        (NormPlacement::Mix, true, true),
    ]
    .into_iter()
    .filter(|&(_, _, fma)| !fma || layerlab::train::fma_available())
    {
        let opts = TrainOptions {
            layers: 3,
            width: 16,
            heads: 4,
            kv_heads: 2,
            ffn: 20,
            ctx: 7,
            batch: 3,
            steps: 5,
            lr: 1e-2,
            warmup: 0.2,
            norm,
            alpha: 0.5,
            tied_head: tied,
            ..TrainOptions::default()
        };
        let tag = format!("{norm:?}{}", if fma { "-fma" } else { "" });
        let init = dir.join(format!("{tag}-init.safetensors"));
        let grads = dir.join(format!("{tag}-grads.safetensors"));
        let batches = dir.join(format!("{tag}-batches.safetensors"));
        let report = dir.join(format!("{tag}-report.json"));
        let ref_grads = dir.join(format!("{tag}-ref.safetensors"));
        let ref_losses = dir.join(format!("{tag}-ref.json"));
        write_init(&init, &opts, vocab, 11);
        let norm_name = format!("{norm:?}").to_lowercase();
        let mut args: Vec<String> = vec![
            "train".into(),
            "--norm".into(),
            norm_name,
            "--alpha".into(),
            "0.5".into(),
            "--ctx".into(),
            "7".into(),
            "--batch".into(),
            "3".into(),
            "--steps".into(),
            "5".into(),
            "--lr".into(),
            "1e-2".into(),
            "--warmup".into(),
            "0.2".into(),
            "--backend".into(),
            "cpu".into(),
            "--text".into(),
            text_path.display().to_string(),
        ];
        args.extend(size_args(&opts));
        if fma {
            args.push("--fma".into());
        }
        for (flag, p) in [
            ("--init", &init),
            ("--grads", &grads),
            ("--batches", &batches),
            ("--json", &report),
        ] {
            args.push(flag.into());
            args.push(p.display().to_string());
        }
        let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let (code, err) = layerlab(&argv);
        assert_eq!(code, 0, "{err}");

        jobs.push(serde_json::json!({
            "layers": opts.layers,
            "width": opts.width,
            "heads": opts.heads,
            "kv_heads": opts.kv_heads,
            "ffn": opts.ffn,
            "vocab": vocab,
            "post_blocks": opts.post_blocks(),
            "untied": !tied,
            "init": init,
            "batch": grads,
            "grads_out": ref_grads,
            "batches": batches,
            "losses_out": ref_losses,
            "lr": 1e-2,
            "warmup": 0.2,
        }));
        cases.push((tag, grads, report, ref_grads, ref_losses));
    }
    // One PyTorch process for the three models (importing torch is the slow part).
    let jobs_path = dir.join("jobs.json");
    std::fs::write(&jobs_path, serde_json::to_vec(&jobs).unwrap()).unwrap();
    let out = Command::new(&python)
        .arg(root().join("tests/reference/train_torch.py"))
        .arg("--jobs")
        .arg(&jobs_path)
        .output()
        .expect("run the PyTorch reference");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (tag, grads, report, ref_grads, ref_losses) in cases {
        // Gradients: every tensor within 2e-4 of the tensor's largest reference entry
        // (float32 against float64).
        let (ours, our_loss) = read_all(&grads);
        let (theirs, their_loss) = read_all(&ref_grads);
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{tag}"
        );
        for (name, r) in &theirs {
            let o = &ours[name];
            let scale = r.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let worst = o
                .iter()
                .zip(r)
                .map(|(a, b)| (a - b).abs() / scale)
                .fold(0.0f32, f32::max);
            assert!(worst < 2e-4, "{tag} {name}: relative error {worst:e}");
        }
        let (ol, tl): (f64, f64) = (
            our_loss.unwrap().parse().unwrap(),
            their_loss.unwrap().parse().unwrap(),
        );
        assert!((ol - tl).abs() < 1e-5 * tl, "{tag}: loss {ol} vs {tl}");

        // Five Adam steps on the same batches: the losses agree to 1e-4 relative.
        // The report is `layerlab run`'s: the experiment, then one report per run.
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(r["experiment"]["lab"], "train");
        assert_eq!(r["runs"].as_array().unwrap().len(), 1);
        let backend = r["backend"]["name"].as_str().unwrap();
        assert_eq!(
            backend.contains("fused multiply-add"),
            tag.ends_with("-fma"),
            "{tag}: {backend}"
        );
        let r: TrainReport = serde_json::from_value(r["runs"][0].clone()).unwrap();
        let refl: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&ref_losses).unwrap()).unwrap();
        let refl: Vec<f64> = refl["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(r.steps.len(), refl.len());
        assert!((r.steps[0].loss - tl).abs() < 1e-5 * tl);
        for (s, want) in r.steps.iter().zip(&refl) {
            assert!(
                (s.loss - want).abs() < 1e-4 * want,
                "{tag} step {}: loss {} vs PyTorch {want}",
                s.step,
                s.loss
            );
        }
    }
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = scratch("errors");
    let short = dir.join("short.txt");
    std::fs::write(&short, "abcabcabcabc abc").unwrap();
    let (code, err) = layerlab(&["train", "--text", short.to_str().unwrap(), "--steps", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains("error: the text is too short"), "{err}");

    let text_path = dir.join("text.txt");
    std::fs::write(&text_path, text()).unwrap();
    let vocab = Tokenizer::char_level(&text()).unwrap().vocab_size();
    // An --init file of another model (4 layers, where the options say 2).
    let other = TrainOptions {
        layers: 4,
        width: 16,
        heads: 4,
        kv_heads: 4,
        ffn: 20,
        tied_head: true,
        ..TrainOptions::default()
    };
    let init = dir.join("other.safetensors");
    write_init(&init, &other, vocab, 3);
    let base = [
        "train",
        "--text",
        text_path.to_str().unwrap(),
        "--ffn",
        "20",
        "--ctx",
        "8",
        "--batch",
        "2",
        "--steps",
        "0",
        "--init",
        init.to_str().unwrap(),
    ];
    let (code, err) =
        layerlab(&[&base[..], &["--layers", "2", "--width", "16", "--tied"]].concat());
    assert_eq!(code, 1);
    assert!(
        err.contains("tensor model.layers.2.input_layernorm.weight is not part of the model"),
        "{err}"
    );
    // The same file read as a wider model: the first tensor's shape is wrong.
    let (code, err) =
        layerlab(&[&base[..], &["--layers", "4", "--width", "32", "--tied"]].concat());
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "tensor model.embed_tokens.weight: expected shape [{vocab}, 32], found [{vocab}, 16]"
        )),
        "{err}"
    );
    // The file is a tied model's: read as an untied one (the default), it misses lm_head.weight.
    let (code, err) = layerlab(&[&base[..], &["--layers", "4", "--width", "16"]].concat());
    assert_eq!(code, 1);
    assert!(err.contains("tensor lm_head.weight is missing"), "{err}");
    // An unknown backend.
    let (code, err) = layerlab(
        &[
            &base[..],
            &[
                "--layers",
                "4",
                "--width",
                "16",
                "--tied",
                "--backend",
                "tpu",
            ],
        ]
        .concat(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("unknown backend 'tpu'"), "{err}");
    // Too many distinct characters.
    let wide = dir.join("wide.txt");
    let s: String = (0..6000u32)
        .filter_map(|i| char::from_u32(0x4E00 + i))
        .collect();
    std::fs::write(&wide, s.repeat(2)).unwrap();
    let (code, err) = layerlab(&["train", "--text", wide.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("distinct characters"), "{err}");
}

#[test]
fn out_writes_llama_names_and_the_placement() {
    let dir = scratch("out");
    let text_path = dir.join("text.txt");
    std::fs::write(&text_path, text()).unwrap();
    let out = dir.join("model.safetensors");
    let (code, err) = layerlab(&[
        "train",
        "--text",
        text_path.to_str().unwrap(),
        "--layers",
        "4",
        "--width",
        "8",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--ffn",
        "12",
        "--ctx",
        "8",
        "--batch",
        "2",
        "--steps",
        "2",
        "--norm",
        "mix",
        "--alpha",
        "0.5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (tensors, _) = read_all(&out);
    assert_eq!(tensors.len(), 1 + 4 * 9 + 1 + 1, "untied: lm_head too");
    assert_eq!(
        tensors["lm_head.weight"].len(),
        tensors["model.embed_tokens.weight"].len()
    );
    assert_eq!(
        tensors["model.layers.3.self_attn.k_proj.weight"].len(),
        4 * 8
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["layerlab"]["post_ln_blocks"], 2);
    assert_eq!(config["num_key_value_heads"], 1);
    assert_eq!(config["tie_word_embeddings"], false);
}

#[test]
fn bpe_tokenizer_trains_on_the_ids_an_independent_tokenizer_gives() {
    // SmolLM2's BPE from its GGUF: the first batch (written by --grads) must be windows of the
    // ids that Hugging Face's `tokenizers` gives for the same text (tests/reference/
    // tokenizer_ids.py builds it from the GGUF's vocabulary and merges with gguf-py), taken
    // from the first 90% of them; the vocabulary is SmolLM2's published 49152; and at the
    // init (untied head N(0, 0.02), width 16) the logits are near 0, so the first loss is
    // within 0.05 of ln 49152 = 10.80.
    let model = root().join(".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        model.is_file(),
        "{} is missing: run scripts/setup.sh's ensure_models (scripts/test.sh does)",
        model.display()
    );
    let dir = scratch("bpe");
    let text: String = std::fs::read_to_string("/usr/share/common-licenses/MPL-2.0")
        .unwrap()
        .chars()
        .take(4000)
        .collect();
    let text_path = dir.join("text.txt");
    std::fs::write(&text_path, &text).unwrap();
    let (grads, report) = (dir.join("grads.safetensors"), dir.join("report.json"));
    let (code, err) = layerlab(&[
        "train",
        "--text",
        text_path.to_str().unwrap(),
        "--tokenizer",
        model.to_str().unwrap(),
        "--layers",
        "1",
        "--width",
        "16",
        "--heads",
        "2",
        "--kv-heads",
        "2",
        "--ffn",
        "16",
        "--ctx",
        "16",
        "--batch",
        "3",
        "--steps",
        "0",
        "--grads",
        grads.to_str().unwrap(),
        "--json",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["runs"][0]["vocab_size"], 49152);
    let (_, loss) = read_all(&grads);
    let loss: f64 = loss.expect("loss in the metadata").parse().unwrap();
    assert!((loss - 49152f64.ln()).abs() < 0.05, "first loss {loss}");

    let python = root().join(".cache/venv/bin/python");
    let script = "import json, sys\n\
                  from safetensors.numpy import load_file\n\
                  print(json.dumps(load_file(sys.argv[1])['tokens'].tolist()))\n";
    let out = Command::new(&python)
        .args(["-c", script, grads.to_str().unwrap()])
        .output()
        .expect("run the Python reference");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let batch: Vec<Vec<u32>> = serde_json::from_slice(&out.stdout).unwrap();
    let mut child = Command::new(&python)
        .arg(root().join("tests/reference/tokenizer_ids.py"))
        .arg(&model)
        .arg(root().join(".cache/models/all-minilm-l6-v2/tokenizer.json"))
        .arg(dir.join("smollm2-tokenizer.json"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tests/reference/tokenizer_ids.py");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(&[&text]).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u32> = v["hf_gguf"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let train = &ids[..ids.len() * 9 / 10];
    assert_eq!(batch.len(), 3);
    for row in &batch {
        assert_eq!(row.len(), 17);
        assert!(
            train.windows(17).any(|w| w == &row[..]),
            "the window {row:?} is not in the reference ids of the training split"
        );
    }
}

/// `layerlab run` of a training experiment with several placements trains each in turn,
/// as `layerlab train --norm` does one, with a dropped text given by --text; what it cannot
/// do (a dropped text without --text, --out with several runs) is refused by name.
#[test]
fn run_trains_every_placement_of_the_experiment_as_train_does() {
    let dir = scratch("run");
    let text_path = dir.join("text.txt");
    std::fs::write(&text_path, text()).unwrap();
    let link = "?v=2&lab=train&layers=2&width=16&heads=2&kv_heads=2&ffn=24&ctx=16&batch=2\
                &steps=3&eval_every=2&alpha=0.5&runs=%5B%22pre%22%2C%22mix%22%5D\
                &text.kind=file&text.name=text.txt&text.size=9";
    let (code, err) = layerlab(&["run", link]);
    assert_eq!(code, 1);
    assert!(
        err.contains("the experiment's training text is the file text.txt, chosen on the page: give it with --text PATH"),
        "{err}"
    );
    let out = dir.join("m.safetensors");
    let (code, err) = layerlab(&[
        "run",
        link,
        "--text",
        text_path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("trains 2 placements: --out"), "{err}");

    let report = dir.join("run.json");
    let (code, err) = layerlab(&[
        "run",
        link,
        "--text",
        text_path.to_str().unwrap(),
        "--json",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["experiment"]["runs"], serde_json::json!(["pre", "mix"]));
    assert_eq!(
        r["experiment"]["text"],
        serde_json::json!({"kind": "path", "path": text_path.display().to_string()})
    );
    let runs: Vec<TrainReport> = serde_json::from_value(r["runs"].clone()).unwrap();
    assert_eq!(runs.len(), 2);
    for (run, norm) in runs.iter().zip(["pre", "mix"]) {
        let single = dir.join(format!("{norm}.json"));
        let (code, err) = layerlab(&[
            "train",
            "--norm",
            norm,
            "--alpha",
            "0.5",
            "--layers",
            "2",
            "--width",
            "16",
            "--heads",
            "2",
            "--kv-heads",
            "2",
            "--ffn",
            "24",
            "--ctx",
            "16",
            "--batch",
            "2",
            "--steps",
            "3",
            "--eval-every",
            "2",
            "--text",
            text_path.to_str().unwrap(),
            "--json",
            single.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&single).unwrap()).unwrap();
        let s: TrainReport = serde_json::from_value(s["runs"][0].clone()).unwrap();
        assert_eq!(run.options, s.options);
        assert_eq!(run.steps, s.steps, "{norm}");
        assert_eq!(run.layer_removal, s.layer_removal, "{norm}");
        assert!(!run.stopped);
    }
    assert_eq!(runs[1].options.post_blocks(), 1);
    assert_ne!(runs[0].steps[0].loss, runs[1].steps[0].loss);
}

/// `--backend gpu` trains like `--backend cpu`: the same batches, and per step the loss
/// within 1e-4 (relative) and every block's gradient norm and hidden RMS within 1e-3; the
/// validation losses and the layer-removal losses within 1e-4. (One step agrees to ~1e-7,
/// tests/train_gpu.rs; Adam's steps let rounding differences grow slowly.)
#[test]
fn gpu_backend_trains_like_the_cpu() {
    let dir = scratch("gpu");
    let text_path = dir.join("text.txt");
    std::fs::write(&text_path, text()).unwrap();
    let mut reports = Vec::new();
    for backend in ["cpu", "gpu"] {
        let report = dir.join(format!("{backend}.json"));
        let (code, err) = layerlab(&[
            "train",
            "--norm",
            "mix",
            "--alpha",
            "0.34",
            "--layers",
            "3",
            "--width",
            "16",
            "--heads",
            "2",
            "--kv-heads",
            "1",
            "--ffn",
            "24",
            "--ctx",
            "9",
            "--batch",
            "3",
            "--steps",
            "6",
            "--lr",
            "1e-3",
            "--warmup",
            "0.2",
            "--clip",
            "1.0",
            "--eval-every",
            "3",
            "--backend",
            backend,
            "--text",
            text_path.to_str().unwrap(),
            "--json",
            report.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "--backend {backend}: {err}");
        if backend == "gpu" {
            assert!(err.contains("backend: GPU"), "{err}");
        }
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        let r: TrainReport = serde_json::from_value(r["runs"][0].clone()).unwrap();
        reports.push(r);
    }
    let (cpu, gpu) = (&reports[0], &reports[1]);
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-12);
    assert_eq!(cpu.steps.len(), gpu.steps.len());
    let mut worst = [0f64; 4];
    for (c, g) in cpu.steps.iter().zip(&gpu.steps) {
        assert_eq!(c.lr, g.lr);
        worst[0] = worst[0].max(rel(g.loss, c.loss));
        for (a, b) in g.grad_norm.iter().zip(&c.grad_norm) {
            worst[1] = worst[1].max(rel(*a, *b));
        }
        for (a, b) in g.hidden_rms.iter().zip(&c.hidden_rms) {
            worst[1] = worst[1].max(rel(*a, *b));
        }
        assert_eq!(c.val_loss.is_some(), g.val_loss.is_some());
        if let (Some(a), Some(b)) = (g.val_loss, c.val_loss) {
            worst[2] = worst[2].max(rel(a, b));
        }
    }
    for (a, b) in gpu.layer_removal.iter().zip(&cpu.layer_removal) {
        worst[3] = worst[3].max(rel(a.loss, b.loss));
    }
    eprintln!(
        "gpu vs cpu: loss {:.1e}, grad norms and hidden rms {:.1e}, val loss {:.1e}, \
         layer removal {:.1e}",
        worst[0], worst[1], worst[2], worst[3]
    );
    assert!(worst[0] <= 1e-4, "loss {:.3e}", worst[0]);
    assert!(worst[1] <= 1e-3, "grad norm / hidden rms {:.3e}", worst[1]);
    assert!(worst[2] <= 1e-4, "val loss {:.3e}", worst[2]);
    assert!(worst[3] <= 1e-4, "layer removal {:.3e}", worst[3]);
}

#[test]
fn fma_gives_the_same_bits_on_one_and_two_threads_and_is_close_to_the_exact_run() {
    if !layerlab::train::fma_available() {
        let (code, err) = layerlab(&["train", "--fma", "--steps", "1"]);
        assert!(code != 0 && err.contains("no fused multiply-add"), "{err}");
        return;
    }
    let dir = scratch("fma");
    let text_path = dir.join("text.txt");
    std::fs::write(&text_path, text()).unwrap();
    // 3 x 20 = 60 rows: two row tasks of the matrix products, so two threads split them.
    let run = |threads: &str, fma: bool| {
        let json = dir.join(format!("fma-{threads}-{fma}.json"));
        let mut args = vec![
            "train",
            "--layers",
            "2",
            "--width",
            "32",
            "--heads",
            "4",
            "--kv-heads",
            "2",
            "--ffn",
            "40",
            "--ctx",
            "20",
            "--batch",
            "3",
            "--steps",
            "6",
            "--eval-every",
            "3",
            "--backend",
            "cpu",
            "--text",
        ];
        let (t, j) = (text_path.display().to_string(), json.display().to_string());
        args.extend([t.as_str(), "--json", j.as_str()]);
        if fma {
            args.push("--fma");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_layerlab"))
            .args(&args)
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .expect("run layerlab");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let r: TrainReport = serde_json::from_value(r["runs"][0].clone()).unwrap();
        r.steps
    };
    let (one, two, exact) = (run("1", true), run("2", true), run("2", false));
    let bits = |s: &[layerlab::train::StepRecord]| {
        serde_json::to_string(
            &s.iter()
                .map(|s| (s.loss, s.val_loss, &s.grad_norm, &s.hidden_rms))
                .collect::<Vec<_>>(),
        )
        .unwrap()
    };
    assert_eq!(bits(&one), bits(&two), "--fma: one thread against two");
    assert_ne!(bits(&one), bits(&exact), "--fma changed no bit");
    for (f, e) in one.iter().zip(&exact) {
        assert!(
            (f.loss - e.loss).abs() < 1e-4 * e.loss,
            "step {}: --fma loss {} against {}",
            f.step,
            f.loss,
            e.loss
        );
    }
}
