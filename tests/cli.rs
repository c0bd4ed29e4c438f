//! The CLI as a user meets it: --help, --version, and errors as sentences (no panics, no
//! backtraces) for bad input; the JSON output against the statistics computed in-process
//! on the CPU twins.

use std::process::Command;

fn layerlab(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_layerlab"))
        .args(args)
        .output()
        .expect("run layerlab");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn help_and_version() {
    let (code, out, _) = layerlab(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("reduce") && out.contains("backend"), "{out}");
    let (code, out, _) = layerlab(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("layerlab {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn user_errors_are_sentences_not_panics() {
    for (args, expect, status) in [
        (
            &["reduce", "--bins", "0"][..],
            "error: a histogram needs between 1 and 256 bins, not 0",
            1,
        ),
        (
            &["reduce", "--backend", "tpu"][..],
            "unknown backend 'tpu': use auto, gpu or cpu",
            2,
        ),
        (&["reduce", "--rows", "ten"][..], "invalid value 'ten'", 2),
        (
            &[
                "reduce",
                "--rows",
                "3",
                "--cols",
                "3",
                "--json",
                "/nonexistent/dir/x.json",
            ][..],
            "error: cannot write /nonexistent/dir/x.json",
            1,
        ),
        (
            &["frobnicate"][..],
            "unrecognized subcommand 'frobnicate'",
            2,
        ),
    ] {
        let (code, _, err) = layerlab(args);
        assert_eq!(code, status, "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("stack backtrace"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn reduce_json_matches_the_library() {
    use layerlab::compute::{Backend, Matrix, Silent};
    use layerlab::stats::{tensor_stats, StatsOptions, StatsRun};
    use layerlab::synth::{weights, SynthSpec};

    let (code, out, err) = layerlab(&[
        "reduce",
        "--seed",
        "4",
        "--rows",
        "123",
        "--cols",
        "45",
        "--k",
        "3",
        "--bins",
        "16",
        "--backend",
        "cpu",
        "--json",
        "-",
    ]);
    assert_eq!(code, 0, "{err}");
    let run: StatsRun = serde_json::from_str(&out).unwrap();
    let data = weights(SynthSpec {
        seed: 4,
        rows: 123,
        cols: 45,
    });
    let opts = StatsOptions {
        outlier_k: 3.0,
        bins: 16,
        per_column: true,
    };
    let direct = pollster::block_on(tensor_stats(
        &Backend::cpu("x"),
        Matrix::new(&data, 123, 45).unwrap(),
        &opts,
        &Silent,
    ))
    .unwrap();
    assert_eq!(run.stats, direct.stats);
    assert_eq!(run.backend.kind, "cpu");
}

fn minilm() -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/models/all-minilm-l6-v2/model.safetensors");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh's ensure_models",
        p.display()
    );
    p
}

/// `layerlab stats --json` on MiniLM against gguf-py/safetensors + numpy float64
/// (tests/reference/model_stats.py): every tensor's JSON has name, shape, mean_abs, std,
/// max_abs and kurtosis, and the blocks are the six BERT layers.
#[test]
fn stats_json_matches_the_python_reference() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = minilm();
    let (code, out, err) = layerlab(&[
        "stats",
        model.to_str().unwrap(),
        "--backend",
        "cpu",
        "--json",
        "-",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let python = root.join(".cache/venv/bin/python");
    assert!(
        python.is_file(),
        "the Python reference venv is missing: run scripts/setup.sh's ensure_python_reference"
    );
    let reference = Command::new(python)
        .args([
            root.join("tests/reference/model_stats.py")
                .to_str()
                .unwrap(),
            "safetensors",
            model.to_str().unwrap(),
        ])
        .output()
        .expect("run the Python reference");
    assert!(
        reference.status.success(),
        "{}",
        String::from_utf8_lossy(&reference.stderr)
    );
    let reference: serde_json::Value = serde_json::from_slice(&reference.stdout).unwrap();
    let reference: Vec<&serde_json::Value> = match &reference {
        serde_json::Value::Array(v) => v.iter().collect(),
        serde_json::Value::Object(o) => o
            .get("tensors")
            .and_then(|t| t.as_array())
            .map(|v| v.iter().collect())
            .unwrap_or_default(),
        _ => panic!("unexpected reference output"),
    };
    assert!(
        reference.len() > 100,
        "the reference lists {} tensors",
        reference.len()
    );
    let tensors = report["tensors"].as_array().unwrap();
    for want in reference {
        let name = want["name"].as_str().unwrap();
        let got = tensors
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from the CLI report"));
        assert_eq!(got["shape"], want["shape"], "{name}: shape");
        for (key, tol) in [
            ("mean_abs", 1e-6),
            ("std", 1e-6),
            ("max_abs", 1e-7),
            ("kurtosis", 1e-5),
        ] {
            // Zero variance: numpy's kurtosis is NaN (null), LayerLab's is null.
            let Some(w) = want[key].as_f64() else {
                assert!(
                    got[key].is_null(),
                    "{name}.{key}: CLI {} vs numpy undefined",
                    got[key]
                );
                continue;
            };
            let g = got[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}.{key}: CLI {} vs numpy {w}", got[key]));
            assert!(
                (g - w).abs() <= tol * w.abs().max(1e-12),
                "{name}.{key}: CLI {g} vs numpy {w}"
            );
        }
    }
    let blocks = report["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 6);
    assert_eq!(report["model"]["arch"], "bert");
    // Block params: q, k, v, attention output (384x384 each), intermediate and output (384x1536).
    assert_eq!(blocks[0]["params"], 4 * 384 * 384 + 2 * 384 * 1536);
}

#[test]
fn stats_errors_are_sentences() {
    let dir = std::env::temp_dir().join(format!("layerlab-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("notes.gguf");
    std::fs::write(&text, "not a model at all").unwrap();
    let truncated = dir.join("cut.safetensors");
    let bytes = std::fs::read(minilm()).unwrap();
    std::fs::write(&truncated, &bytes[..4096]).unwrap();
    let empty_dir = dir.join("empty");
    std::fs::create_dir_all(&empty_dir).unwrap();
    for (path, expect) in [
        (text.clone(), "notes.gguf: not a model file"),
        (truncated.clone(), "cut.safetensors: "),
        (empty_dir.clone(), "holds no .gguf or .safetensors file"),
        (dir.join("missing.gguf"), "cannot open"),
    ] {
        let (code, _, err) = layerlab(&["stats", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{path:?}: {err}");
        assert!(err.contains(expect), "{path:?}: {err}");
        assert!(!err.contains("panicked"), "{path:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn fixture(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// `layerlab run` on the compute check's experiment, given three ways (a v2 JSON file, a
/// page link, and the report `reduce --json` wrote), gives the statistics computed
/// in-process on the CPU twins for that matrix, and each report carries its experiment.
#[test]
fn run_reruns_an_experiment_a_link_and_a_report() {
    use layerlab::compute::{Backend, Matrix, Silent};
    use layerlab::stats::{tensor_stats, StatsOptions, StatsRun};
    use layerlab::synth::{weights, SynthSpec};

    let dir = std::env::temp_dir().join(format!("layerlab-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let experiment = dir.join("compute.json");
    std::fs::write(
        &experiment,
        r#"{"version": 2, "lab": "compute", "seed": 5, "rows": 77, "cols": 31, "bins": 16}"#,
    )
    .unwrap();
    let direct = pollster::block_on(tensor_stats(
        &Backend::cpu("x"),
        Matrix::new(
            &weights(SynthSpec {
                seed: 5,
                rows: 77,
                cols: 31,
            }),
            77,
            31,
        )
        .unwrap(),
        &StatsOptions {
            outlier_k: 5.0,
            bins: 16,
            per_column: true,
        },
        &Silent,
    ))
    .unwrap();
    let report_path = dir.join("report.json");
    let link = "http://localhost:8080/?v=2&lab=compute&bins=16&cols=31&rows=77&seed=5";
    let (code, _, err) = layerlab(&[
        "reduce",
        "--seed",
        "5",
        "--rows",
        "77",
        "--cols",
        "31",
        "--bins",
        "16",
        "--backend",
        "cpu",
        "--json",
        report_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    for source in [
        experiment.to_str().unwrap(),
        link,
        report_path.to_str().unwrap(),
    ] {
        let (code, out, err) = layerlab(&["run", source, "--backend", "cpu", "--json", "-"]);
        assert_eq!(code, 0, "{source}: {err}");
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        let run: StatsRun = serde_json::from_value(report.clone()).unwrap();
        assert_eq!(run.stats, direct.stats, "{source}");
        assert_eq!(report["experiment"]["version"], 2, "{source}");
        assert_eq!(report["experiment"]["lab"], "compute", "{source}");
        assert_eq!(report["experiment"]["rows"], 77, "{source}");
        assert_eq!(report["experiment"]["per_column"], true, "{source}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Version-1 experiments, reports and links still open: they are upgraded to version 2
/// (`--dry-run` prints what would run), and a v1 page report reruns with --model.
#[test]
fn version_1_experiments_reports_and_links_open() {
    let (code, out, err) = layerlab(&["run", &fixture("experiment-v1-prune.json"), "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(e["version"], 2);
    assert_eq!(e["lab"], "prune");
    assert_eq!(e["sparsity"], 0.7);
    assert_eq!(e["owl"], serde_json::json!({"hyper_m": 5.0, "lamda": 0.08}));
    assert_eq!(e["eval"]["max_windows"], 2);
    assert_eq!(
        e["calib_text"],
        serde_json::json!({"kind": "builtin", "name": "LGPL-2.1"})
    );
    assert!(e.get("stats").is_none() && e.get("prune").is_none(), "{e}");

    // The v1 link of the same experiment, as the old page wrote it.
    let (code, out, err) = layerlab(&[
        "run",
        "http://localhost:8080/?tab=prune&method=wanda&sparsity=0.7&nm=&owl=1&m=5&lamda=0.08\
         &nsamples=2&seqlen=32&seed=&eval_seqlen=32&eval_windows=2&dense=1&calib=LGPL-2.1&eval=GPL-3",
        "--dry-run",
    ]);
    assert_eq!(code, 0, "{err}");
    let from_link: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(from_link, e);

    // A v1 layer-view report from the page, rerun on the file it names: the statistics of
    // `layerlab stats` with the report's k and bins.
    let model = minilm();
    let (code, out, err) = layerlab(&[
        "run",
        &fixture("report-v1-layers.json"),
        "--model",
        model.to_str().unwrap(),
        "--backend",
        "cpu",
        "--json",
        "-",
    ]);
    assert_eq!(code, 0, "{err}");
    let rerun: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (code, out, err) = layerlab(&[
        "stats",
        model.to_str().unwrap(),
        "--k",
        "3",
        "--bins",
        "32",
        "--backend",
        "cpu",
        "--json",
        "-",
    ]);
    assert_eq!(code, 0, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rerun["options"]["outlier_k"], 3.0);
    assert_eq!(rerun["options"]["bins"], 32);
    assert_eq!(rerun["tensors"], stats["tensors"]);
    assert_eq!(rerun["blocks"], stats["blocks"]);
    assert_eq!(rerun["experiment"], stats["experiment"]);
    assert_eq!(rerun["experiment"]["version"], 2);
}

#[test]
fn run_errors_are_sentences() {
    let dir = std::env::temp_dir().join(format!("layerlab-run-err-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let future = dir.join("future.json");
    std::fs::write(&future, r#"{"version": 9, "lab": "layers"}"#).unwrap();
    let report = fixture("report-v1-layers.json");
    let prune = fixture("experiment-v1-prune.json");
    for (args, expect) in [
        (
            vec!["run", future.to_str().unwrap()],
            "experiment version 9 is not supported",
        ),
        (
            vec!["run", &report],
            "the experiment's model is the file model.safetensors, dropped on the page: give it with --model PATH",
        ),
        (
            vec!["run", &prune],
            "the experiment's model is the URL models/SmolLM2-135M-Instruct.Q4_1.gguf: give the file with --model PATH",
        ),
        (
            vec!["run", "?v=2&lab=prune&sparsity=lots", "--dry-run"],
            "link parameter sparsity: expected a number, found 'lots'",
        ),
        (vec!["run", "nothing-here.json"], "cannot read nothing-here.json"),
    ] {
        let (code, _, err) = layerlab(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
