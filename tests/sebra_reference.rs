//! src/sebra against independent references: `scipy.stats.weightedtau`
//! (tests/reference/sebra_tau.py) and a numpy reimplementation of Sebra's ranking bookkeeping
//! written from METHODS.md (tests/reference/sebra_ranking.py), handed the same seeded
//! per-epoch probabilities through a file.
//!
//! Tolerances: tau within 1e-12 (the same sums in another order); the ranking bookkeeping
//! (weights after every epoch, ranks, epochs run, per-epoch counts, positive ranks) exactly.
//! Stage 2's seeded random choices cannot match numpy's stream; their properties are checked
//! exhaustively instead, against the reference's positive ranks.

use std::path::{Path, PathBuf};
use std::process::Command;

use layerlab::sebra::ranking::{deselected_counts, PairTable, Stage1};
use layerlab::sebra::tau::weighted_tau;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("layerlab-sebra-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs a tests/reference script on `input` (written to a file) and parses its JSON.
fn reference(script: &str, input: &Value, dir: &Path) -> Value {
    let python = root().join(".cache/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh's ensure_python_reference (scripts/test.sh does)",
        python.display()
    );
    let path = dir.join("input.json");
    std::fs::write(&path, serde_json::to_vec(input).unwrap()).unwrap();
    let out = Command::new(&python)
        .arg(root().join("tests/reference").join(script))
        .arg(&path)
        .output()
        .expect("cannot start the Python reference");
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{script}: no JSON: {e}"))
}

fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Scores as JSON, NaN as null (the script reads null back as NaN).
fn scores_json(v: &[f64]) -> Value {
    Value::Array(
        v.iter()
            .map(|&x| if x.is_nan() { Value::Null } else { json!(x) })
            .collect(),
    )
}

#[test]
fn weighted_tau_matches_scipy_on_random_and_tied_inputs() {
    let mut rng = ChaCha8Rng::seed_from_u64(2025);
    let mut cases: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    // Continuous scores, no ties.
    for n in [2, 3, 10, 1000] {
        let x = (0..n).map(|_| unit(&mut rng)).collect();
        let y = (0..n).map(|_| unit(&mut rng)).collect();
        cases.push((x, y));
    }
    // Many ties: a few levels each.
    for (n, lx, ly) in [(500, 4, 4), (400, 2, 30), (300, 7, 3), (64, 3, 3)] {
        let x = (0..n).map(|_| (rng.next_u32() % lx) as f64).collect();
        let y = (0..n).map(|_| (rng.next_u32() % ly) as f64).collect();
        cases.push((x, y));
    }
    // Sebra's case: ranks 1..=31 against groups 0..3 that they mostly follow.
    let y: Vec<f64> = (0..800).map(|_| (rng.next_u32() % 4) as f64).collect();
    let x: Vec<f64> = y
        .iter()
        .map(|g| (1 + (*g as u32 * 7 + rng.next_u32() % 10).min(30)) as f64)
        .collect();
    cases.push((x.clone(), y.clone()));
    // Anticorrelated, negative scores, NaN (the smallest score), constant (NaN).
    cases.push((x.iter().map(|v| -v).collect(), y.clone()));
    let mut with_nan = x.clone();
    with_nan[3] = f64::NAN;
    with_nan[17] = f64::NAN;
    cases.push((with_nan, y));
    cases.push((vec![1.0, 2.0, 3.0], vec![5.0, 5.0, 5.0]));

    let input = json!({"cases": cases.iter().map(|(x, y)| json!({
        "x": scores_json(x), "y": scores_json(y)})).collect::<Vec<_>>()});
    let out = reference("sebra_tau.py", &input, &scratch("tau"));
    let expected = out["tau"].as_array().unwrap();
    assert_eq!(expected.len(), cases.len());
    for (i, ((x, y), want)) in cases.iter().zip(expected).enumerate() {
        let got = weighted_tau(x, y).unwrap();
        match want.as_f64() {
            None => assert!(got.is_nan(), "case {i}: scipy NaN, ours {got}"),
            Some(w) => assert!(
                (got - w).abs() < 1e-12,
                "case {i} (n {}): scipy {w}, ours {got}",
                x.len()
            ),
        }
    }
}

/// A small training set: labels i mod K, random groups, and per-epoch p_y that grow at a
/// per-class speed (class 0 is learnt fastest), so classes end with different largest ranks
/// and Stage 2 meets both the fallback and the skip. Some p are exactly p_critical.
fn ranking_case(seed: u64, n: usize, classes: usize, cap: usize, p_critical: f64) -> Value {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
    let groups: Vec<u32> = (0..n).map(|_| rng.next_u32() % 4).collect();
    let p: Vec<Vec<f32>> = (0..cap)
        .map(|_| {
            (0..n)
                .map(|i| {
                    if rng.next_u32() % 16 == 0 {
                        return p_critical as f32;
                    }
                    let speed = 0.3 + labels[i] as f64 * 0.8;
                    unit(&mut rng).powf(speed) as f32
                })
                .collect()
        })
        .collect();
    json!({"labels": labels, "groups": groups, "classes": classes, "p": p,
           "p_critical": p_critical, "cap": cap, "gap": 3})
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Runs Stage 1 and the positive ranks in Rust on `case`, as the reference does.
fn check_against_reference(case: &Value, tag: &str) -> (Vec<u32>, Vec<u32>, Vec<Option<u32>>) {
    let out = reference("sebra_ranking.py", case, &scratch(tag));
    let labels = u32s(&case["labels"]);
    let groups: Vec<_> = u32s(&case["groups"])
        .into_iter()
        .map(|g| layerlab::sebra::data::Group::ALL[g as usize])
        .collect();
    let classes = case["classes"].as_u64().unwrap() as usize;
    let cap = case["cap"].as_u64().unwrap() as u32;
    let p_critical = case["p_critical"].as_f64().unwrap();
    let gap = case["gap"].as_u64().unwrap() as u32;
    let p: Vec<Vec<f32>> = case["p"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();

    let mut stage1 = Stage1::new(labels.len());
    let (mut weights, mut counts) = (Vec::new(), Vec::new());
    while !stage1.is_done(cap) {
        let leaving = stage1
            .end_epoch(&p[stage1.epochs as usize], p_critical)
            .unwrap();
        weights.push(
            stage1
                .weights
                .iter()
                .map(|&w| u32::from(w))
                .collect::<Vec<_>>(),
        );
        counts.push(deselected_counts(&leaving, &labels, &groups, classes));
    }
    assert_eq!(
        u64::from(stage1.epochs),
        out["epochs_run"].as_u64().unwrap(),
        "{tag}: epochs run"
    );
    let ref_weights: Vec<Vec<u32>> = out["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect();
    assert_eq!(weights, ref_weights, "{tag}: weights after each epoch");
    let ref_counts: Vec<Vec<Vec<u32>>> = out["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_array().unwrap().iter().map(u32s).collect())
        .collect();
    let counts: Vec<Vec<Vec<u32>>> = counts
        .iter()
        .map(|e| e.iter().map(|c| c.to_vec()).collect())
        .collect();
    assert_eq!(counts, ref_counts, "{tag}: deselected per class and group");
    let ranks = stage1.ranks();
    assert_eq!(ranks, u32s(&out["ranks"]), "{tag}: ranks");

    let table = PairTable::new(&labels, &ranks, classes).unwrap();
    assert_eq!(
        u64::from(table.max_rank()),
        out["max_rank"].as_u64().unwrap()
    );
    let ref_pos: Vec<Option<u32>> = out["positive_rank"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().map(|r| r as u32))
        .collect();
    for (i, want) in ref_pos.iter().enumerate() {
        assert_eq!(
            table.positive_rank(labels[i], ranks[i], gap),
            *want,
            "{tag}: anchor {i}"
        );
    }
    (labels, ranks, ref_pos)
}

#[test]
fn stage1_and_positive_ranks_match_the_numpy_reference() {
    // Runs until no sample is left (before the cap of 60).
    let (_, ranks, pos) = check_against_reference(&ranking_case(7, 300, 3, 60, 0.75), "empties");
    assert!(ranks.iter().all(|&r| r <= 60));
    let skipped = pos.iter().filter(|p| p.is_none()).count();
    assert!(skipped > 0, "the case should exercise the skip");
    // Stops at the cap with samples left: they rank cap + 1.
    let (_, ranks, _) = check_against_reference(&ranking_case(8, 200, 4, 4, 0.8), "cap");
    assert!(ranks.contains(&5), "some sample should outlast the cap");
}

/// Stage 2's seeded choices, every anchor of a small case under many seeds: the negative is
/// of the anchor's class and rank; the positive of its class and of the reference's positive
/// rank; the skipped anchors (and only they) get none; and every candidate is drawn.
#[test]
fn stage2_choices_follow_the_ranks_exhaustively() {
    let case = ranking_case(9, 60, 3, 30, 0.75);
    let (labels, ranks, ref_pos) = check_against_reference(&case, "pairs");
    let table = PairTable::new(&labels, &ranks, 3).unwrap();
    let gap = case["gap"].as_u64().unwrap() as u32;
    let n = labels.len();
    let mut fallback_seen = false;
    for anchor in 0..n {
        let (c, r) = (labels[anchor], ranks[anchor]);
        let target = (r + gap).min(table.max_rank());
        if ref_pos[anchor].is_some_and(|p| p != target) {
            fallback_seen = true;
        }
        let mut negatives = std::collections::BTreeSet::new();
        let mut positives = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let pair = table.choose(anchor, gap, &mut rng);
            let Some(want) = ref_pos[anchor] else {
                assert!(pair.is_none(), "anchor {anchor} should be skipped");
                continue;
            };
            let pair =
                pair.unwrap_or_else(|| panic!("anchor {anchor} skipped, expected rank {want}"));
            assert_eq!(pair.anchor, anchor);
            assert_eq!((labels[pair.negative], ranks[pair.negative]), (c, r));
            assert_eq!((labels[pair.positive], ranks[pair.positive]), (c, want));
            negatives.insert(pair.negative);
            positives.insert(pair.positive);
        }
        if let Some(want) = ref_pos[anchor] {
            let same: Vec<usize> = (0..n)
                .filter(|&j| labels[j] == c && ranks[j] == r)
                .collect();
            let pool: Vec<usize> = (0..n)
                .filter(|&j| labels[j] == c && ranks[j] == want)
                .collect();
            // Pools here hold at most a handful: 200 draws miss one with odds below 1e-15.
            if same.len() <= 6 {
                assert_eq!(
                    negatives.into_iter().collect::<Vec<_>>(),
                    same,
                    "anchor {anchor}"
                );
            }
            if pool.len() <= 6 {
                assert_eq!(
                    positives.into_iter().collect::<Vec<_>>(),
                    pool,
                    "anchor {anchor}"
                );
            }
        }
    }
    assert!(
        fallback_seen,
        "the case should exercise the fallback above min(r + gap, R)"
    );
    // One epoch: every anchor that is not skipped, once, in some order.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let epoch = table.epoch(gap, &mut rng);
    let mut anchors: Vec<usize> = epoch.iter().map(|p| p.anchor).collect();
    assert_ne!(anchors, {
        let mut s = anchors.clone();
        s.sort();
        s
    });
    anchors.sort();
    let kept: Vec<usize> = (0..n).filter(|&i| ref_pos[i].is_some()).collect();
    assert_eq!(anchors, kept);
}
