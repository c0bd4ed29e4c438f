//! The pruning driver on the GPU (lavapipe here: a missing adapter fails the test) against
//! the same driver on the CPU, whose numbers tests/prune_driver.rs checks against numpy.
//!
//! OWL-Wanda at 70% on SmolLM2, 1 calibration window of 16 tokens, 1 evaluation window of
//! 16. The GPU runs every block's forward pass (tiled matmul, RMSNorm, RoPE, attention,
//! SwiGLU) and Wanda's selection; the kernels match their CPU twins to ~1e-6 (see
//! tests/kernels_forward.rs), so:
//! - the dense outlier ratios and OWL's allocation agree to 1e-3 / 1e-4;
//! - block 0's masks are identical (the same inputs up to rounding, and ties broken the same);
//! - later blocks may part at near-ties, which the sequential pruning carries on: fewer than
//!   5% of all mask entries differ; the dense perplexities agree within 1e-3, and so do the
//!   CPU run's pruned model's on both backends; the two runs' pruned perplexities (15
//!   predicted tokens, near-tied masks chosen differently) within 2x;
//! - the GPU stayed in use (no failure, no notice).

use std::path::PathBuf;

use layerlab::compute::{Backend, BackendChoice, Silent};
use layerlab::eval::PplOptions;
use layerlab::io::{FileSource, ModelFile};
use layerlab::model::llama::Llama;
use layerlab::prune::driver::{prune_model_on, Method, OwlOptions, PruneOptions};
use layerlab::tokenizer::TextTokenizer;

const SMOLLM2: &str = ".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

#[test]
fn owl_wanda_on_the_gpu_matches_the_cpu() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(SMOLLM2);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup.sh's ensure_models",
        path.display()
    );
    let src = FileSource::open(&path).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let model = Llama::new(&src, &file, None).unwrap();
    let tok = TextTokenizer::from_gguf(&file, "smollm2").unwrap();
    let calib = tok
        .encode(&std::fs::read_to_string("/usr/share/common-licenses/LGPL-2.1").unwrap())
        .unwrap();
    let eval = tok
        .encode(&std::fs::read_to_string("/usr/share/common-licenses/GPL-3").unwrap())
        .unwrap();
    let opts = PruneOptions {
        method: Method::Wanda,
        sparsity: 0.7,
        owl: Some(OwlOptions::default()),
        nsamples: 1,
        seqlen: 16,
        eval: PplOptions {
            seqlen: 16,
            max_windows: Some(1),
            batch: 1,
        },
        ..PruneOptions::default()
    };
    let gpu = pollster::block_on(Backend::new(BackendChoice::Gpu))
        .expect("a GPU adapter (lavapipe: apt install mesa-vulkan-drivers)");
    let cpu = Backend::cpu("the test asked for the CPU");
    let on_gpu = pollster::block_on(prune_model_on(
        &gpu,
        &model,
        &calib,
        Some(&eval),
        &opts,
        &Silent,
    ))
    .unwrap();
    assert_eq!(
        gpu.info().kind,
        "gpu",
        "the GPU was dropped: {:?}",
        on_gpu.report.notices
    );
    assert!(
        on_gpu.report.notices.iter().all(|n| !n.contains("GPU")),
        "{:?}",
        on_gpu.report.notices
    );
    let on_cpu = pollster::block_on(prune_model_on(
        &cpu,
        &model,
        &calib,
        Some(&eval),
        &opts,
        &Silent,
    ))
    .unwrap();
    let (g, c) = (&on_gpu.report, &on_cpu.report);
    assert_eq!(g.blocks.len(), 30);
    for (a, b) in g.blocks.iter().zip(&c.blocks) {
        assert!(
            (a.outlier_ratio - b.outlier_ratio).abs() <= 1e-3 * b.outlier_ratio.max(1.0),
            "block {}: D {} vs {}",
            a.index,
            a.outlier_ratio,
            b.outlier_ratio
        );
        assert!((a.sparsity - b.sparsity).abs() < 1e-4, "block {}", a.index);
    }
    let mean = g.blocks.iter().map(|b| b.sparsity).sum::<f64>() / 30.0;
    assert!((mean - 0.7).abs() < 1e-9, "mean allocated sparsity {mean}");

    let mut differ = 0usize;
    let mut total = 0usize;
    for (bg, bc) in on_gpu.blocks.iter().zip(&on_cpu.blocks) {
        for (lg, lc) in bg.linears.iter().zip(&bc.linears) {
            let n = lg.rows * lg.cols;
            let d = (0..n).filter(|&j| lg.is_zero(j) != lc.is_zero(j)).count();
            if bg.index == 0 {
                assert_eq!(d, 0, "{}: masks differ from the CPU's", lg.tensor);
            }
            differ += d;
            total += n;
        }
    }
    assert!(
        differ * 20 < total,
        "{differ} of {total} mask entries differ"
    );

    let (pg, pc) = (
        g.perplexity.as_ref().unwrap(),
        c.perplexity.as_ref().unwrap(),
    );
    let (dg, dc) = (pg.dense.unwrap(), pc.dense.unwrap());
    assert!((dg - dc).abs() <= 1e-3 * dc, "dense ppl {dg} vs {dc}");
    // The same pruned model (the CPU run's masks) evaluated on the GPU: the forward kernels'
    // parity, with the mask choice taken out.
    let same_masks =
        pollster::block_on(on_cpu.perplexity_on(&gpu, &model, &eval, &opts.eval, &Silent)).unwrap();
    assert!(
        (same_masks.perplexity - pc.pruned).abs() <= 1e-3 * pc.pruned,
        "the CPU run's pruned model: ppl {} on the GPU vs {} on the CPU",
        same_masks.perplexity,
        pc.pruned
    );
    // The two runs' own masks part at near-ties, and over 15 predicted tokens of a 70%-pruned
    // model that moves the perplexity a lot: measured 1789 (CPU) vs 2133 (an H200 through
    // Vulkan), 1.19x; PyTorch's own CPU and CUDA runs of the benchmark experiment gave 495 vs
    // 744 (BENCHMARKS.md). So only the order of magnitude is asserted here.
    let ratio = pg.pruned / pc.pruned;
    assert!(
        (0.5..=2.0).contains(&ratio),
        "pruned ppl {} (GPU run) vs {} (CPU run)",
        pg.pruned,
        pc.pruned
    );
    assert!(pg.pruned > dg);
}
