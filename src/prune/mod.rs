//! Pruning algorithms on one linear layer at a time, plain Rust on f32 slices (every target,
//! wasm32 included: no files, threads or clocks).
//!
//! Shapes: a weight is (rows = out, cols = in), row-major, as `nn.Linear.weight` and the
//! model files store it (GPT-2's transposed Conv1D weights must be transposed first).
//!
//! - `masks`: magnitude, Wanda (unstructured per row, N:M; chosen by `compute::cpu_select`
//!   or on the GPU by `compute::select`, re-exported here), applying and counting masks,
//!   and `ScalerRow`, Wanda's calibration statistic (mean over windows of sum_tokens x_j^2).
//! - `sparsegpt`: `Hessian` (2/n sum x x^T over tokens) and the SparseGPT column loop.
//! - `outliers`: OWL's layerwise outlier distribution D_l from the dense model's Wanda scores.
//! - `allocation`: sparsity per block: uniform, OWL, OWL N:M.
//!
//! How a driver wires them (METHODS.md "Sequential block processing"): for OWL, one pass
//! over the DENSE model collects each block's `ScalerRow`s (q,k,v share one input, gate/up
//! another), `outliers::block_outlier_ratio` turns them into D_l, `allocation::owl` into
//! sparsity_l. Then blocks are pruned in order, each with statistics from a forward pass
//! through the already-pruned earlier blocks: `masks::wanda_mask` + `apply_mask`, or
//! `sparsegpt::sparsegpt_prune` with a `Hessian` per distinct input. Embeddings, the LM head
//! and norms are never pruned. `driver` does exactly this for a whole LLaMA-family model
//! (`prune_model`), evaluates it and exports it (`export_safetensors`).

pub mod allocation;
pub mod driver;
pub mod masks;
pub mod outliers;
pub mod sparsegpt;
