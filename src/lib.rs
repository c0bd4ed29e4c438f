//! LayerLab: look inside transformers layer by layer.
//!
//! One Rust core with three faces: the page (this crate compiled to wasm32 and run in a Web
//! Worker, see `web`), the `layerlab` CLI (`src/bin/layerlab.rs`) and the tests. Everything
//! outside `web` is plain Rust that compiles for both targets.
//!
//! Module map:
//! - `compute`: the wgpu context (WebGPU in the browser, Vulkan natively), the WGSL kernels
//!   and their CPU twins, and the backend that falls back to the CPU when the GPU fails.
//! - `stats`: tensor statistics (moments, kurtosis, outlier counts, histograms) built on the
//!   reduction kernels; `stats::model`, the same for every tensor and block of a model.
//! - `synth`: seeded synthetic tensors, identical on every target.
//! - `io`: byte sources (native files, memory, browser files and URLs) and model readers.
//! - `model`: architectures: which tensors form which block, and the model's sizes;
//!   `model::llama`, the LLaMA-family forward pass on the CPU, block by block;
//!   `model::gpt2_opt`, GPT-2's and OPT's, the same way; `model::causal`, the one
//!   interface (`CausalLm`) the pruning driver, perplexity and export use for all three;
//!   `model::gpu_forward`, a LLaMA block on the GPU (`compute::forward`'s kernels).
//! - `tokenizer`: text to token ids, from a GGUF file's metadata or a tokenizer.json.
//! - `prune`: magnitude, Wanda, SparseGPT and OWL on one layer or block at a time.
//! - `sebra`: the bias lab: biased shape images, Sebra's ranking bookkeeping, weighted tau.
//! - `eval`: perplexity (consecutive windows, each alone) through the block-wise forward.
//! - `experiment`: the versioned Experiment (one spec variant per lab) that links, the CLI
//!   (`layerlab run`) and reports share, its link encoding, and the Report envelope.
//! - `train`: Pre-/Post-/Mix-LN decoders trained on the CPU (paired forward/backward kernels,
//!   Adam, the paper's diagnostics); the reference the GPU training is checked against.
//! - `error`: the one error type; every message is a sentence a user can act on.

pub mod compute;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod io;
pub mod model;
pub mod prune;
pub mod sebra;
pub mod stats;
pub mod synth;
pub mod tokenizer;
pub mod train;

#[cfg(target_arch = "wasm32")]
pub mod web;

/// The threaded page build's `initThreadPool(n)`: starts rayon's pool of n Web Workers on the
/// shared wasm memory (the page's worker calls it before anything else).
#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
pub use wasm_bindgen_rayon::init_thread_pool;

pub use error::{LabError, Result};
