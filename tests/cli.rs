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
