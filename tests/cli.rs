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
