//! The bias lab end to end: on a small seeded benchmark, Sebra's ranking recovers the true
//! groups (mean weighted tau > 0.5) and the debiased model's worst-group test accuracy beats
//! ERM's; and `layerlab sebra`'s errors for bad input, and its report.
//!
//! The benchmark is the defaults (bias 0.95/0.95, 4 classes, every hyper-parameter of both
//! stages) on smaller images and fewer of them, so that it runs in about a minute in the debug
//! profile: S = 16, 250 training images per class, 12 epochs. Its numbers are printed.

mod common;

use common::layerlab;
use layerlab::sebra::run::{run_sebra, Quiet};
use layerlab::sebra::SebraOptions;

fn benchmark() -> SebraOptions {
    SebraOptions {
        image: 16,
        train_per_class: 250,
        val_per_class: 16,
        test_per_class: 250,
        epochs: 12,
        width: 8,
        ..SebraOptions::default()
    }
}

#[test]
fn sebra_ranks_the_groups_and_beats_erm_on_the_worst_group() {
    let r = run_sebra(&benchmark(), &Quiet).unwrap();
    let (erm, sebra, oracle) = (&r.accuracy.erm, &r.accuracy.sebra, &r.accuracy.oracle);
    eprintln!(
        "tau {:?} mean {:.4}; ranking epochs {}; worst group: erm {:.4} sebra {:.4} oracle \
         {:.4}; per group erm {:?} sebra {:?} oracle {:?}; {:.1}s",
        r.tau.per_class,
        r.tau.mean,
        r.ranking.epochs,
        erm.worst_group,
        sebra.worst_group,
        oracle.worst_group,
        erm.per_group,
        sebra.per_group,
        oracle.per_group,
        r.timings.total_s
    );
    assert!(r.tau.mean > 0.5, "mean tau {}", r.tau.mean);
    assert!(
        sebra.worst_group > erm.worst_group,
        "worst-group accuracy: sebra {} <= erm {}",
        sebra.worst_group,
        erm.worst_group
    );
    // The report's bookkeeping: every training sample ranked, the per-epoch counts add up.
    let n = 4 * 250;
    assert_eq!(r.ranking.samples.len(), n);
    let deselected: u32 = r
        .ranking
        .per_epoch
        .iter()
        .flat_map(|e| e.deselected.iter().flatten())
        .sum();
    let last = r.ranking.epochs + 1;
    let never = r.ranking.samples.iter().filter(|s| s.rank == last).count();
    assert_eq!(deselected as usize + never, n);
}

#[test]
fn bad_input_is_a_clear_error() {
    for (args, words) in [
        (
            vec!["--bias", "0.2,0.95"],
            "rho_1 (colour) must be in [1/K, 1] = [0.2500, 1]",
        ),
        (
            vec!["--bias", "0.9,1.5"],
            "rho_2 (texture) must be in [1/K, 1]",
        ),
        (vec!["--bias", "a,b"], "'a' is not a number"),
        (
            vec!["--train-per-class", "5"],
            "train_per_class must be at least 16",
        ),
        (vec!["--image", "200"], "image must be between 12 and 64"),
        (vec!["--classes", "12"], "classes must be between 2 and 8"),
        (
            vec!["--batch", "100000"],
            "batch must be between 1 and the 4000 training images",
        ),
        (vec!["--model", "vit"], "unknown --model 'vit'"),
        (
            vec!["--backend", "gpu", "--model", "mlp"],
            "GPU training is built for the CNN only",
        ),
    ] {
        let mut a = vec!["sebra"];
        a.extend(&args);
        let (code, _, err) = layerlab(&a);
        assert_ne!(code, 0, "{args:?} should fail");
        assert!(err.contains(words), "{args:?}: {err}");
    }
}

/// A tiny run through the CLI and through `layerlab run` of the report's experiment: the
/// same numbers (the lab's promise: same experiment, same report).
#[test]
fn cli_report_and_layerlab_run_agree() {
    let dir = std::env::temp_dir().join(format!("layerlab-sebra-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("r.json");
    let data = dir.join("d.safetensors");
    let tiny = [
        "sebra",
        "--classes",
        "2",
        "--image",
        "12",
        "--train-per-class",
        "32",
        "--val-per-class",
        "4",
        "--test-per-class",
        "8",
        "--epochs",
        "2",
        "--rank-epochs",
        "3",
        "--width",
        "2",
        "--batch",
        "16",
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--seed",
        "3",
    ];
    let mut a = tiny.to_vec();
    a.extend([
        "--json",
        report.to_str().unwrap(),
        "--save-data",
        data.to_str().unwrap(),
    ]);
    let (code, _, err) = layerlab(&a);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&report).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["experiment"]["lab"], "sebra");
    assert_eq!(r["experiment"]["optimizer"], "sgd");
    assert_eq!(r["ranking"]["samples"].as_array().unwrap().len(), 64);
    for m in ["erm", "sebra", "oracle"] {
        assert!(r["accuracy"][m]["worst_group"].is_number(), "{m}");
    }
    assert!(std::fs::metadata(&data).unwrap().len() > 64 * 3 * 144 * 4);

    let (code, out, err) = layerlab(&["run", report.to_str().unwrap(), "--json", "-"]);
    assert_eq!(code, 0, "{err}");
    let again: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again["experiment"], r["experiment"]);
    assert_eq!(again["tau"], r["tau"]);
    assert_eq!(again["accuracy"], r["accuracy"]);
    assert_eq!(again["ranking"], r["ranking"]);
}

/// A bias-lab link reads into the experiment it names (the array-valued bias included), and
/// an experiment with a bad option is refused by `layerlab run` with the option's message.
#[test]
fn links_and_layerlab_run_read_the_bias_lab() {
    let (code, out, err) = layerlab(&[
        "run",
        "?v=2&lab=sebra&bias=[0.99,0.9]&model=mlp&seed=4",
        "--dry-run",
    ]);
    assert_eq!(code, 0, "{err}");
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(e["lab"], "sebra");
    assert_eq!(e["bias"], serde_json::json!([0.99, 0.9]));
    assert_eq!(e["model"], "mlp");
    assert_eq!(e["seed"], 4);
    assert_eq!(e["gap"], 5);
    let (code, _, err) = layerlab(&["run", "?v=2&lab=sebra&bias=[0.1,0.9]"]);
    assert_ne!(code, 0);
    assert!(err.contains("rho_1 (colour) must be in [1/K, 1]"), "{err}");
}
