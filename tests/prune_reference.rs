//! src/prune against an independent numpy reference (tests/reference/prune_reference.py,
//! written from METHODS.md and the authors' code: locuslab/wanda `prune_wanda`, luuyin/OWL
//! `lib/prune_all.py`, IST-DASLab/sparsegpt `fasterprune`, the latter in float64).
//!
//! Tolerances: masks identical (Wanda, magnitude, N:M, SparseGPT); achieved sparsity counted
//! exactly; outlier ratios identical (both count f32 scores against an f64 threshold); OWL
//! allocations within 1e-12; SparseGPT's updated weights within 1e-4 x max |W| (Rust: f32 H
//! and column loop, f64 factorisation; numpy: float64 throughout).

use std::path::PathBuf;
use std::process::Command;

use layerlab::prune::allocation::{owl, owl_nm};
use layerlab::prune::masks::{
    apply_mask, count_zeros, magnitude_mask, prune_count, wanda_mask, Mask, Pattern,
};
use layerlab::prune::outliers::{outlier_sweep, LinearStats};
use layerlab::prune::sparsegpt::{sparsegpt_prune, Hessian, SparseGptOptions};
use serde_json::Value;

/// A linear layer from the reference: name, rows, cols, weights, per-column sums of x^2.
type RefLinear = (String, usize, usize, Vec<f32>, Vec<f32>);

fn reference() -> Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".cache/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh's ensure_python_reference (scripts/test.sh does)",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root.join("tests/reference/prune_reference.py"))
        .output()
        .expect("run the prune reference");
    assert!(
        out.status.success(),
        "the prune reference failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the reference's JSON")
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}
fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}
fn bools(v: &Value) -> Vec<bool> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_bool().unwrap())
        .collect()
}
fn usz(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}
fn pattern(v: &Value) -> Pattern {
    match v.get("sparsity") {
        Some(s) => Pattern::Unstructured {
            sparsity: s.as_f64().unwrap(),
        },
        None => Pattern::NM {
            n: usz(&v["n"]),
            m: usz(&v["m"]),
        },
    }
}

/// Mask identical to the reference, and the achieved sparsity exact after applying it.
fn check_mask(what: &str, pat: Pattern, w: &[f32], mask: &Mask, want: &[bool], per_row: bool) {
    let (rows, cols, got) = (mask.rows, mask.cols, &mask.pruned);
    assert_eq!(got.len(), want.len(), "{what}");
    let diff = got.iter().zip(want).filter(|(a, b)| a != b).count();
    assert_eq!(
        diff, 0,
        "{what}: {diff} mask entries differ from the reference"
    );
    let mut pruned = w.to_vec();
    apply_mask(what, &mut pruned, mask).unwrap();
    // Zeros after pruning = pruned + weights that were already 0 and not pruned.
    let already: usize = w
        .iter()
        .zip(got)
        .filter(|(x, p)| **x == 0.0 && !**p)
        .count();
    assert_eq!(
        count_zeros(&pruned),
        mask.pruned_count() + already,
        "{what}"
    );
    match pat {
        Pattern::Unstructured { sparsity } if per_row => {
            for r in 0..rows {
                assert_eq!(
                    mask.pruned_in_row(r),
                    prune_count(cols, sparsity),
                    "{what}: row {r}"
                );
            }
        }
        Pattern::Unstructured { sparsity } => {
            assert_eq!(
                mask.pruned_count(),
                prune_count(rows * cols, sparsity),
                "{what}"
            )
        }
        Pattern::NM { n, m } => {
            for r in 0..rows {
                for g in 0..cols / m {
                    let k = (0..m).filter(|&j| got[r * cols + g * m + j]).count();
                    assert_eq!(k, n, "{what}: row {r} group {g}");
                }
            }
        }
    }
}

#[test]
fn prune_algorithms_match_the_numpy_reference() {
    let r = reference();

    for (i, c) in r["wanda"].as_array().unwrap().iter().enumerate() {
        let (rows, cols) = (usz(&c["rows"]), usz(&c["cols"]));
        let (w, s, pat) = (f32s(&c["w"]), f32s(&c["s"]), pattern(&c["pattern"]));
        let what = format!("wanda case {i} ({rows}x{cols}, {pat:?})");
        let m = wanda_mask(&what, &w, rows, cols, &s, pat).unwrap();
        check_mask(&what, pat, &w, &m, &bools(&c["mask"]), true);
    }

    for (i, c) in r["magnitude"].as_array().unwrap().iter().enumerate() {
        let (rows, cols) = (usz(&c["rows"]), usz(&c["cols"]));
        let (w, pat) = (f32s(&c["w"]), pattern(&c["pattern"]));
        let what = format!("magnitude case {i} ({rows}x{cols}, {pat:?})");
        let m = magnitude_mask(&what, &w, rows, cols, pat).unwrap();
        check_mask(&what, pat, &w, &m, &bools(&c["mask"]), false);
    }

    for c in r["outliers"].as_array().unwrap() {
        let lins: Vec<RefLinear> = c["linears"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().unwrap().to_string(),
                    usz(&l["rows"]),
                    usz(&l["cols"]),
                    f32s(&l["w"]),
                    f32s(&l["s"]),
                )
            })
            .collect();
        let stats: Vec<LinearStats> = lins
            .iter()
            .map(|(name, rows, cols, w, s)| LinearStats {
                name,
                weight: w,
                rows: *rows,
                cols: *cols,
                scaler_row: s,
            })
            .collect();
        let ms = f64s(&c["ms"]);
        let got = outlier_sweep(&stats, &ms).unwrap();
        let want_block = f64s(&c["block"]);
        for (k, g) in got.iter().enumerate() {
            assert!(
                (g.block - want_block[k]).abs() < 1e-12,
                "D at M = {}: {} vs {}",
                ms[k],
                g.block,
                want_block[k]
            );
            let want = f64s(&c["per_linear"][k]);
            for (j, (name, d)) in g.per_linear.iter().enumerate() {
                assert!(
                    (d - want[j]).abs() < 1e-12,
                    "{name} at M = {}: {d} vs {}",
                    ms[k],
                    want[j]
                );
            }
        }
    }

    for c in r["owl"].as_array().unwrap() {
        let (lod, s, lambda) = (
            f64s(&c["lod"]),
            c["s"].as_f64().unwrap(),
            c["lambda"].as_f64().unwrap(),
        );
        let a = owl(&lod, s, lambda).unwrap();
        let want = f64s(&c["sparsity"]);
        for (l, (g, w)) in a.sparsity.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() < 1e-12,
                "OWL S={s} lambda={lambda} block {l}: {g} vs {w}"
            );
        }
        let mean = a.sparsity.iter().sum::<f64>() / a.sparsity.len() as f64;
        let clamped = want.contains(&0.01);
        if clamped {
            // The clamp after the centring lifts the mean above S, and says so.
            assert!(mean > s + 1e-3, "clamped mean {mean} vs S {s}");
            assert_eq!(a.notices.len(), 1, "{:?}", a.notices);
        } else {
            assert!((mean - s).abs() < 1e-12, "mean sparsity {mean} vs S {s}");
            assert!(a.notices.is_empty(), "{:?}", a.notices);
        }
    }

    for (i, c) in r["owl_nm"].as_array().unwrap().iter().enumerate() {
        let lod = f64s(&c["lod"]);
        let a = owl_nm(
            &lod,
            usz(&c["n"]),
            usz(&c["m"]),
            c["lambda"].as_f64().unwrap(),
        )
        .unwrap();
        let want: Vec<usize> = c["per_block"].as_array().unwrap().iter().map(usz).collect();
        assert_eq!(a.n, want, "OWL N:M case {i}");
        if i == 0 {
            // README: 5:8, lambda = 2, Hyper_m = 6 -> N_l in {4, 5, 6}.
            let mut seen = a.n.clone();
            seen.sort();
            seen.dedup();
            assert_eq!(seen, vec![4, 5, 6]);
        }
    }

    for (i, c) in r["sparsegpt"].as_array().unwrap().iter().enumerate() {
        let (rows, cols, bs) = (usz(&c["rows"]), usz(&c["cols"]), usz(&c["blocksize"]));
        let (mut w, x, pat) = (f32s(&c["w"]), f32s(&c["x"]), pattern(&c["pattern"]));
        let what = format!("sparsegpt case {i} ({rows}x{cols}, {pat:?}, blocksize {bs})");
        let max_w = w.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        // Two batches: the running mean must give the same H as one sum.
        let mut h = Hessian::new(cols);
        let split = (x.len() / cols / 3) * cols;
        h.add_batch(&x[..split]).unwrap();
        h.add_batch(&x[split..]).unwrap();
        let opts = SparseGptOptions {
            percdamp: 0.01,
            blocksize: bs,
        };
        let rep = sparsegpt_prune(&what, &mut w, rows, cols, &h, pat, &opts).unwrap();
        let dead: Vec<usize> = c["dead"].as_array().unwrap().iter().map(usz).collect();
        assert_eq!(rep.dead_inputs, dead, "{what}");
        let want_mask = bools(&c["mask"]);
        let diff = rep
            .mask
            .pruned
            .iter()
            .zip(&want_mask)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(diff, 0, "{what}: {diff} mask entries differ");
        let want = f64s(&c["w_out"]);
        let worst = w
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0f64, f64::max);
        eprintln!("{what}: max |dW| / max |W| = {:.2e}", worst / max_w);
        assert!(
            worst <= 1e-4 * max_w,
            "{what}: max |dW| {worst} > 1e-4 x {max_w}"
        );
        for (k, (&p, &v)) in rep.mask.pruned.iter().zip(&w).enumerate() {
            if p || dead.contains(&(k % cols)) {
                assert_eq!(v, 0.0, "{what}: weight {k} should be 0");
            }
        }
        if let Pattern::NM { n, m } = pat {
            for r in 0..rows {
                for g in 0..cols / m {
                    let k = (0..m)
                        .filter(|&j| rep.mask.pruned[r * cols + g * m + j])
                        .count();
                    assert_eq!(k, n, "{what}: row {r} group {g}");
                }
            }
        }
    }
}

#[test]
fn n_m_needs_whole_groups() {
    let w = vec![1.0f32; 64 * 130];
    let s = vec![1.0f32; 130];
    let e = wanda_mask(
        "model.layers.0.mlp.down_proj",
        &w,
        64,
        130,
        &s,
        Pattern::NM { n: 2, m: 4 },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("model.layers.0.mlp.down_proj") && e.contains("130"),
        "{e}"
    );
}
