//! The readers and the architecture description on the real test models, against an
//! independent reference: tests/reference/model_stats.py reads the same files with gguf-py
//! (llama.cpp's Python package: its own GGUF parser and dequantisers) and safetensors'
//! numpy loader, and computes every statistic in float64 with numpy.
//!
//! Models: SmolLM2-135M-Instruct (GGUF, Q4_1 + Q8_0 + F32) and all-MiniLM-L6-v2
//! (safetensors F32 + I64), fetched by scripts/setup.sh (ensure_models) into .cache/models;
//! the reference runs in .cache/venv (ensure_python_reference). A missing model or venv is a
//! failure, never a skip.
//!
//! Tolerances (reference in f64, LayerLab accumulating f32 values in its own order):
//! - shapes, counts and the set of analysable tensors: exact;
//! - mean: 1e-5 relative to mean |w| (the mean itself may be ~0); std, mean |w|, max |w|:
//!   1e-5 relative; kurtosis: 1e-4 relative;
//! - outlier counts (|w| > 5 mean |w|): exact, except for values within 1e-5 of the
//!   threshold, where f32 and f64 may decide differently (the reference counts them);
//! - 16 sampled values per tensor (row-major positions): 1e-6 relative to the tensor's
//!   max |w| (both sides dequantise the same blocks in f32).
//!
//! The CPU backend checks every tensor of both models. The GPU backend (the WGSL kernels, on
//! lavapipe in CI) checks all of MiniLM and SmolLM2's blocks 0 and 29, its final norm and
//! its embedding: the same kernels run on every tensor, and the full model on a software
//! GPU would add minutes to CI.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use layerlab::compute::{Backend, Matrix, Silent};
use layerlab::io::{FileSource, ModelFile};
use layerlab::model::{describe, Arch};
use layerlab::stats::{tensor_stats, StatsOptions};
use serde_json::Value;

const SMOLLM2: &str = ".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const MINILM: &str = ".cache/models/all-minilm-l6-v2/model.safetensors";
const MINILM_CONFIG: &str = ".cache/models/all-minilm-l6-v2/config.json";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model(rel: &str) -> PathBuf {
    let p = root().join(rel);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh's ensure_models (scripts/test.sh does)",
        p.display()
    );
    p
}

fn open(rel: &str) -> (FileSource, ModelFile) {
    let src = FileSource::open(&model(rel)).unwrap();
    let file = ModelFile::open(&src).unwrap();
    (src, file)
}

/// The reference statistics for one model, by tensor name (computed once per test binary).
fn reference(kind: &'static str, rel: &'static str) -> &'static BTreeMap<String, Value> {
    static CACHE: OnceLock<
        std::sync::Mutex<BTreeMap<&'static str, &'static BTreeMap<String, Value>>>,
    > = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut guard = cache.lock().unwrap();
    if let Some(r) = guard.get(rel) {
        return r;
    }
    let python = root().join(".cache/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh's ensure_python_reference",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root().join("tests/reference/model_stats.py"))
        .arg(kind)
        .arg(model(rel))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "model_stats.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let map: BTreeMap<String, Value> = json["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t.clone()))
        .collect();
    let leaked: &'static BTreeMap<String, Value> = Box::leak(Box::new(map));
    guard.insert(rel, leaked);
    leaked
}

fn close(what: &str, got: f64, want: f64, scale: f64, tol: f64) {
    let err = (got - want).abs() / scale.abs().max(1e-30);
    assert!(
        err <= tol,
        "{what}: LayerLab {got}, reference {want} (relative error {err:e} > {tol:e})"
    );
}

/// Compares LayerLab's statistics of the named tensors with the reference, on `backend`.
fn check_stats(
    backend: &Backend,
    src: &FileSource,
    file: &ModelFile,
    reference: &BTreeMap<String, Value>,
    names: &[String],
) {
    let opts = StatsOptions {
        per_column: false,
        ..StatsOptions::default()
    };
    for name in names {
        let r = &reference[name];
        let t = file.tensor(name).unwrap();
        let want_shape: Vec<usize> = serde_json::from_value(r["shape"].clone()).unwrap();
        assert_eq!(t.shape, want_shape, "{name}: shape");
        let values = file.read_f32(src, t).unwrap();
        assert_eq!(
            values.len() as u64,
            r["count"].as_u64().unwrap(),
            "{name}: count"
        );

        let f = |k: &str| r[k].as_f64().unwrap();
        let max_abs = f("max_abs");
        for s in r["samples"].as_array().unwrap() {
            let (i, v) = (s[0].as_u64().unwrap() as usize, s[1].as_f64().unwrap());
            close(&format!("{name}[{i}]"), values[i] as f64, v, max_abs, 1e-6);
        }

        // Matrices are [rows, cols]; vectors one row; higher ranks fold into rows.
        let cols = *t.shape.last().unwrap_or(&1);
        let rows = values.len() / cols.max(1);
        let m = Matrix::new(&values, rows, cols).unwrap();
        let run = pollster::block_on(tensor_stats(backend, m, &opts, &Silent)).unwrap();
        assert_eq!(run.notice, None, "{name}: the backend fell back");
        let s = run.stats;
        assert_eq!(s.count, r["count"].as_u64().unwrap(), "{name}: count");
        close(
            &format!("{name}: mean"),
            s.mean,
            f("mean"),
            f("mean_abs"),
            1e-5,
        );
        close(&format!("{name}: std"), s.std, f("std"), f("std"), 1e-5);
        close(
            &format!("{name}: mean_abs"),
            s.mean_abs,
            f("mean_abs"),
            f("mean_abs"),
            1e-5,
        );
        close(
            &format!("{name}: max_abs"),
            s.max_abs,
            max_abs,
            max_abs,
            1e-5,
        );
        match (s.kurtosis, r["kurtosis"].as_f64()) {
            (Some(k), Some(want)) => close(&format!("{name}: kurtosis"), k, want, want, 1e-4),
            (k, want) => assert_eq!(k, want, "{name}: kurtosis"),
        }
        let want = r["outlier_count"].as_u64().unwrap();
        let near = r["outliers_near"].as_u64().unwrap();
        assert!(
            s.outlier_count.abs_diff(want) <= near,
            "{name}: {} outliers, reference {want} ({near} values at the threshold)",
            s.outlier_count
        );
    }
}

/// Every analysable tensor of the file, checked to be exactly the reference's list.
fn analysable(file: &ModelFile, reference: &BTreeMap<String, Value>) -> Vec<String> {
    let ours: Vec<String> = file
        .tensors
        .iter()
        .filter(|t| t.dtype.analysable())
        .map(|t| t.name.clone())
        .collect();
    let mut sorted = ours.clone();
    sorted.sort();
    let theirs: Vec<String> = reference.keys().cloned().collect();
    assert_eq!(
        sorted, theirs,
        "analysable tensors differ from the reference's"
    );
    ours
}

fn gpu_backend() -> Backend {
    Backend::with_gpu(common::gpu())
}

#[test]
fn smollm2_gguf_architecture() {
    let (_, file) = open(SMOLLM2);
    assert_eq!(file.tensors.len(), 272);
    let d = describe(&file, None);
    assert_eq!(d.arch, Arch::Llama);
    assert_eq!(d.arch_name, "llama");
    assert_eq!(d.hyper.hidden, Some(576));
    assert_eq!(d.hyper.layers, Some(30));
    assert_eq!(d.hyper.heads, Some(9));
    assert_eq!(d.hyper.kv_heads, Some(3));
    assert_eq!(d.hyper.vocab, Some(49152));
    assert_eq!(d.hyper.ffn, Some(1536));
    assert_eq!(d.hyper.context, Some(8192));
    assert_eq!(d.embedding.as_deref(), Some("token_embd.weight"));
    assert_eq!(
        file.tensor("token_embd.weight").unwrap().shape,
        [49152, 576]
    );
    assert_eq!(d.final_norm.as_deref(), Some("output_norm.weight"));
    // SmolLM2 ties its head to the embedding: there is no output.weight.
    assert_eq!(d.head, None);
    assert!(
        d.notice.as_deref().unwrap().contains("tied LM head"),
        "{:?}",
        d.notice
    );
    assert!(d.unassigned.is_empty(), "{:?}", d.unassigned);

    assert_eq!(d.blocks.len(), 30);
    let want = [
        ("q", [576, 576]),
        ("k", [192, 576]),
        ("v", [192, 576]),
        ("o", [576, 576]),
        ("gate", [1536, 576]),
        ("up", [1536, 576]),
        ("down", [576, 1536]),
    ];
    for (i, b) in d.blocks.iter().enumerate() {
        assert_eq!(b.index, i);
        assert_eq!(b.linears.len(), 7, "block {i}");
        for (l, (role, shape)) in b.linears.iter().zip(want) {
            assert_eq!(l.role, role);
            assert!(!l.transposed);
            assert_eq!(l.bias, None);
            assert_eq!(file.tensor(&l.tensor).unwrap().shape, shape, "{}", l.tensor);
        }
        assert_eq!(b.linears[0].tensor, format!("blk.{i}.attn_q.weight"));
        assert_eq!(
            b.norms,
            [
                format!("blk.{i}.attn_norm.weight"),
                format!("blk.{i}.ffn_norm.weight")
            ]
        );
        assert!(b.other.is_empty());
    }
}

#[test]
fn minilm_safetensors_architecture() {
    let (_, file) = open(MINILM);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(model(MINILM_CONFIG)).unwrap()).unwrap();
    for cfg in [Some(&config), None] {
        let d = describe(&file, cfg);
        assert_eq!(d.arch, Arch::Bert, "config given: {}", cfg.is_some());
        assert_eq!(d.blocks.len(), 6);
        assert_eq!(d.hyper.hidden, Some(384));
        assert_eq!(d.hyper.layers, Some(6));
        assert_eq!(d.hyper.vocab, Some(30522));
        assert_eq!(d.hyper.ffn, Some(1536));
        assert_eq!(
            d.embedding.as_deref(),
            Some("embeddings.word_embeddings.weight")
        );
        for (i, b) in d.blocks.iter().enumerate() {
            let roles: Vec<&str> = b.linears.iter().map(|l| l.role.as_str()).collect();
            assert_eq!(
                roles,
                [
                    "query",
                    "key",
                    "value",
                    "attn_out",
                    "intermediate",
                    "output"
                ]
            );
            let p = format!("encoder.layer.{i}.");
            assert_eq!(
                b.linears[0].tensor,
                format!("{p}attention.self.query.weight")
            );
            assert_eq!(
                b.linears[0].bias.as_deref(),
                Some(format!("{p}attention.self.query.bias").as_str())
            );
            let shape = |n: &str| file.tensor(n).unwrap().shape.clone();
            assert_eq!(shape(&b.linears[4].tensor), [1536, 384]);
            assert_eq!(shape(&b.linears[5].tensor), [384, 1536]);
            assert_eq!(b.norms.len(), 4);
            assert!(b.other.is_empty(), "{:?}", b.other);
        }
        // Position and token-type embeddings, their norm, the position ids and the pooler
        // belong to no block.
        assert!(d
            .unassigned
            .contains(&"embeddings.position_ids".to_string()));
        assert!(d.unassigned.contains(&"pooler.dense.weight".to_string()));
    }
    let d = describe(&file, Some(&config));
    assert_eq!(d.arch_name, "bert");
    assert_eq!(d.hyper.heads, Some(12));
    assert_eq!(d.hyper.context, Some(512));
}

#[test]
fn smollm2_stats_cpu_every_tensor() {
    let (src, file) = open(SMOLLM2);
    let r = reference("gguf", SMOLLM2);
    let names = analysable(&file, r);
    assert_eq!(names.len(), 272);
    check_stats(&Backend::cpu("test"), &src, &file, r, &names);
}

#[test]
fn minilm_stats_cpu_every_tensor() {
    let (src, file) = open(MINILM);
    let r = reference("safetensors", MINILM);
    let names = analysable(&file, r);
    assert_eq!(names.len(), 103);
    check_stats(&Backend::cpu("test"), &src, &file, r, &names);
}

#[test]
fn smollm2_stats_gpu_subset() {
    let (src, file) = open(SMOLLM2);
    let r = reference("gguf", SMOLLM2);
    let names: Vec<String> = analysable(&file, r)
        .into_iter()
        .filter(|n| {
            n.starts_with("blk.0.")
                || n.starts_with("blk.29.")
                || n == "output_norm.weight"
                || n == "token_embd.weight"
        })
        .collect();
    assert_eq!(names.len(), 2 * 9 + 2);
    check_stats(&gpu_backend(), &src, &file, r, &names);
}

#[test]
fn minilm_stats_gpu_every_tensor() {
    let (src, file) = open(MINILM);
    let r = reference("safetensors", MINILM);
    let names = analysable(&file, r);
    check_stats(&gpu_backend(), &src, &file, r, &names);
}
