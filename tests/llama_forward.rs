//! The LLaMA-family forward pass and perplexity on SmolLM2-135M-Instruct (GGUF Q4_1)
//! against an independent reference: tests/reference/llama_forward.py, numpy in float64 on
//! weights read and dequantised by gguf-py, with transformers' maths (q/k un-permuted as its
//! GGUF loader does, half-split RoPE) and its own plain-Python BPE tokeniser.
//!
//! Tolerances (LayerLab in f32 through 30 blocks, the reference in f64):
//! - logits of a 24-token window: max |diff| < 1e-3 over all 24 x 49152 logits (|logit| up
//!   to ~38; measured 7e-5), and the same argmax at every position;
//! - hidden state after block 2: max |diff| < 1e-5 of its max |value| (~840; measured 1e-6);
//! - perplexity of Apache-2.0 (8 windows of 256 tokens): within 0.5% (measured 4e-6), the
//!   same token count and windows, each window's NLL within 0.5%;
//! - the CLI (`layerlab ppl --json`) on 2 windows of 32 tokens: within 0.5%.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Tensor;
use layerlab::compute::{RunControl, Silent};
use layerlab::eval::{perplexity, windows, PplOptions};
use layerlab::io::{FileSource, ModelFile};
use layerlab::model::llama::{to_vec, Llama, Observer};
use layerlab::tokenizer::TextTokenizer;
use layerlab::LabError;
use serde_json::Value;

const SMOLLM2: &str = ".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const APACHE: &str = "/usr/share/common-licenses/Apache-2.0";
const GPL3: &str = "/usr/share/common-licenses/GPL-3";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_path() -> PathBuf {
    let p = root().join(SMOLLM2);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh's ensure_models (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Runs tests/reference/llama_forward.py with `args`; its JSON output.
fn reference(args: &[&str]) -> Value {
    let python = root().join(".cache/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh's ensure_python_reference (scripts/test.sh does)",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root().join("tests/reference/llama_forward.py"))
        .args(args)
        .output()
        .expect("cannot start the Python reference");
    assert!(
        out.status.success(),
        "tests/reference/llama_forward.py {args:?} failed (rerun scripts/setup.sh's \
         ensure_python_reference if a package is missing):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the reference printed no JSON")
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max)
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// Keeps block 2's output and checks that every linear of every block shows its input.
struct Capture {
    hidden: Option<Vec<f32>>,
    seen: Vec<(usize, String, Vec<usize>)>,
}

impl Observer for Capture {
    fn linear_input(&mut self, block: usize, roles: &[&str], x: &Tensor) -> layerlab::Result<()> {
        for r in roles {
            self.seen.push((block, r.to_string(), x.dims().to_vec()));
        }
        Ok(())
    }
    fn block_output(&mut self, block: usize, x: &Tensor) -> layerlab::Result<()> {
        if block == 2 {
            self.hidden = Some(to_vec(x)?);
        }
        Ok(())
    }
}

#[test]
fn logits_and_hidden_state_match_numpy() {
    let path = model_path();
    let src = FileSource::open(&path).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let tok = TextTokenizer::from_gguf(&file, "smollm2").unwrap();
    let text = std::fs::read_to_string(GPL3).expect("GPL-3 missing (Debian's base-files)");
    let ids: Vec<u32> = tok.encode(&text).unwrap()[..24].to_vec();
    let model = Llama::new(&src, &file, None).unwrap();
    let c = &model.config;
    assert_eq!(
        (c.hidden, c.layers, c.heads, c.kv_heads, c.head_dim, c.ffn, c.vocab),
        (576, 30, 9, 3, 64, 1536, 49152)
    );
    assert_eq!(c.rope.theta, 100000.0);
    assert!(c.unpermute_qk);

    let mut cap = Capture {
        hidden: None,
        seen: Vec::new(),
    };
    let logits = to_vec(&model.forward(&[&ids], &mut cap).unwrap()).unwrap();

    // Every linear of every block, with its input (N = 24 rows, in features).
    assert_eq!(cap.seen.len(), 30 * 7);
    for (block, role, dims) in &cap.seen {
        let inp = match role.as_str() {
            "down" => 1536,
            _ => 576,
        };
        assert_eq!(dims, &vec![24, inp], "block {block} {role}");
    }

    let dir = std::env::temp_dir().join(format!("layerlab-fwd-{}", std::process::id()));
    let id_list: Vec<String> = ids.iter().map(u32::to_string).collect();
    let summary = reference(&[
        "logits",
        path.to_str().unwrap(),
        &id_list.join(","),
        "2",
        dir.to_str().unwrap(),
    ]);
    let ref_logits = read_f32(&dir.join("logits.f32"));
    let ref_hidden = read_f32(&dir.join("hidden.f32"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(ref_logits.len(), 24 * 49152);

    let hidden = cap.hidden.unwrap();
    let hidden_scale = ref_hidden.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let hidden_diff = max_abs_diff(&hidden, &ref_hidden);
    let logit_diff = max_abs_diff(&logits, &ref_logits);
    eprintln!(
        "logits: max |diff| {logit_diff:.3e} (max |logit| {}); hidden after block 2: max |diff| \
         {hidden_diff:.3e} of max |h| {hidden_scale:.3}",
        summary["max_abs_logit"]
    );
    assert!(
        hidden_diff < 1e-5 * hidden_scale,
        "hidden after block 2: {hidden_diff}"
    );
    assert!(logit_diff < 1e-3, "logits: max |diff| {logit_diff}");
    for t in 0..24 {
        let ours = argmax(&logits[t * 49152..(t + 1) * 49152]);
        let theirs = summary["argmax"][t].as_u64().unwrap() as usize;
        assert_eq!(ours, theirs, "argmax at position {t}");
    }
}

#[test]
fn perplexity_of_apache_license_matches_numpy() {
    let path = model_path();
    let src = FileSource::open(&path).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let tok = TextTokenizer::from_gguf(&file, "smollm2").unwrap();
    let text = std::fs::read_to_string(APACHE).expect("Apache-2.0 missing (Debian's base-files)");
    let ids = tok.encode(&text).unwrap();
    let model = Llama::new(&src, &file, None).unwrap();
    let opts = PplOptions::default();
    let ours = pollster::block_on(perplexity(&model, &ids, &opts, &Silent)).unwrap();
    let theirs = reference(&["ppl", path.to_str().unwrap(), APACHE, "256", "0"]);
    let ref_ppl = theirs["perplexity"].as_f64().unwrap();
    eprintln!(
        "Apache-2.0, seqlen 256: perplexity {:.6} (reference {ref_ppl:.6}), {} tokens, {} windows",
        ours.perplexity, ours.text_tokens, ours.windows
    );
    assert_eq!(ours.text_tokens as u64, theirs["tokens"].as_u64().unwrap());
    assert_eq!(ours.windows as u64, theirs["windows"].as_u64().unwrap());
    assert_eq!(
        ours.predicted_tokens as u64,
        theirs["predicted"].as_u64().unwrap()
    );
    assert!(ours.windows >= 2, "the test should span several windows");
    for (w, (a, b)) in ours
        .window_nll
        .iter()
        .zip(theirs["window_nll"].as_array().unwrap())
        .enumerate()
    {
        let b = b.as_f64().unwrap();
        assert!((a - b).abs() < 5e-3 * b, "window {w}: NLL {a} vs {b}");
    }
    let rel = (ours.perplexity - ref_ppl).abs() / ref_ppl;
    assert!(rel < 5e-3, "perplexity {} vs {ref_ppl}", ours.perplexity);
}

#[test]
fn cli_ppl_matches_numpy_on_short_windows() {
    let path = model_path();
    let out = Command::new(env!("CARGO_BIN_EXE_layerlab"))
        .args(["ppl", path.to_str().unwrap(), "--eval", GPL3])
        .args(["--seqlen", "32", "--max-windows", "2", "--json", "-"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With --json - standard output is the JSON alone; the summary goes to stderr.
    let ours: Value = serde_json::from_str(&stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 windows of 32"), "{stderr}");
    let theirs = reference(&["ppl", path.to_str().unwrap(), GPL3, "32", "2"]);
    assert_eq!(ours["text_tokens"], theirs["tokens"]);
    assert_eq!(ours["windows"], 2);
    assert_eq!(ours["predicted_tokens"], 62);
    let (a, b) = (
        ours["perplexity"].as_f64().unwrap(),
        theirs["perplexity"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 5e-3 * b, "CLI perplexity {a} vs {b}");
}

#[test]
fn short_text_is_an_error_saying_how_many_tokens() {
    let ids = [1u32, 2, 3, 4, 5];
    let msg = windows(&ids, 256, None).err().unwrap().to_string();
    assert_eq!(
        msg,
        "the evaluation text has 5 tokens; one window needs 256"
    );
    assert_eq!(windows(&ids, 2, None).unwrap().len(), 2);
    assert_eq!(windows(&ids, 2, Some(1)).unwrap(), vec![&[1u32, 2][..]]);

    let dir = std::env::temp_dir().join(format!("layerlab-short-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let short = dir.join("short.txt");
    std::fs::write(&short, "Too short.").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_layerlab"))
        .args(["ppl", model_path().to_str().unwrap(), "--eval"])
        .arg(&short)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the evaluation text has 3 tokens; one window needs 256"),
        "{err}"
    );
}

/// Cancels as soon as the run reports its first progress.
struct CancelAtOnce(Cell<bool>);

impl RunControl for CancelAtOnce {
    fn progress(&self, _: &str, _: u64, _: u64) {
        self.0.set(true);
    }
    fn cancelled(&self) -> bool {
        self.0.get()
    }
}

#[test]
fn cancel_stops_the_run() {
    let path = model_path();
    let src = FileSource::open(&path).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let model = Llama::new(&src, &file, None).unwrap();
    let ids: Vec<u32> = (0..64).collect();
    let opts = PplOptions {
        seqlen: 32,
        ..PplOptions::default()
    };
    let ctl = CancelAtOnce(Cell::new(false));
    let r = pollster::block_on(perplexity(&model, &ids, &opts, &ctl));
    assert!(matches!(r, Err(LabError::Cancelled)), "{:?}", r.err());
}
