//! The sequential pruning driver: a whole causal LM (LLaMA family, GPT-2, OPT; see
//! `model::causal`) pruned block by block
//! (METHODS.md "Sequential block processing"), with OWL's allocation, the dense model's
//! outlier distribution for the page's charts, perplexity before and after, and the pruned
//! weights for export.
//!
//! Legend: L = blocks, B = calibration windows (`nsamples`), T = tokens per window
//! (`seqlen`), C = hidden width, N = B T rows of a linear's input, S = target sparsity.
//!
//! ```text
//! windows    B windows of T tokens from the calibration text (consecutive, or seeded random)
//! dense pass x = embed(windows); for l < L: stats_l = ScalerRows of block l's inputs on x,
//!            D_l = outlier ratio(dense W_l, stats_l, M); x = block_l(x)          (dense)
//! allocation s_l = OWL(D, S, lambda) | OWL N:M(D, N, M, lambda) | S for every block
//! prune pass x = embed(windows); for l < L:
//!              stats = ScalerRow (Wanda) | Hessian (SparseGPT) of block l's inputs on x
//!              prune the block's linears at s_l with those statistics
//!              (LLaMA q,k,v,o,gate,up,down; GPT-2 c_attn,c_proj,c_fc,mlp_c_proj;
//!              OPT q,k,v,out,fc1,fc2)
//!              x = block_l(x) with the PRUNED weights      (error carries to block l + 1)
//! evaluate   perplexity(dense), perplexity(pruned weights swapped in)
//! ```
//!
//! Linears that share an input share one statistic (LLaMA q,k,v and gate,up; OPT q,k,v):
//! `Observer::linear_input` hands each distinct input once, with the roles that read it.
//! GPT-2's Conv1D weights are (out, in) here like every other linear (transposed on load
//! and back on export), so "row" means output row for every family. Forward passes of
//! LLaMA blocks run on the backend's GPU where there is one; GPT-2 and OPT blocks on the
//! CPU. Only one block's file weights are resident at a time; of the pruned model only which
//! weights are zero is kept (one bit each, plus SparseGPT's updated values: `PrunedLinear`),
//! and its blocks are rebuilt from the file when evaluated or exported. Magnitude pruning needs no
//! activations, so its prune pass reads and prunes the weights without any forward.
//!
//! The whole file is plain Rust for every target: no threads or files; the clock is
//! `web_time` (performance.now() in the browser).

use std::collections::BTreeMap;

use candle_core::Tensor;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use web_time::Instant;

use super::allocation;
use super::masks::{apply_mask, magnitude_mask, wanda_mask, Pattern, ScalerRow};
use super::outliers::{outlier_sweep, LinearStats};
use super::sparsegpt::{sparsegpt_prune, Hessian, SparseGptOptions};
use crate::compute::backend::checkpoint;
use crate::compute::{Backend, RunControl};
use crate::error::candle_failed::pruning as ce;
use crate::eval::{perplexity_with, PplOptions, PplReport, Weights};
use crate::io::safetensors::write_f32_with;
use crate::model::causal::{batches_forward_on_any, block_forward_on_any, Block, CausalLm};
use crate::model::llama::{to_vec, Ends, Observer, Rope};
use crate::{LabError, Result};

/// Which score decides what is pruned (METHODS.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// |W|, one threshold per linear layer.
    Magnitude,
    /// |W| sqrt(scaler_row), compared within each output row.
    Wanda,
    /// SparseGPT's mask and weight update from the inverse Hessian.
    SparseGpt,
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Magnitude => "magnitude",
            Method::Wanda => "wanda",
            Method::SparseGpt => "sparsegpt",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "magnitude" => Ok(Method::Magnitude),
            "wanda" => Ok(Method::Wanda),
            "sparsegpt" => Ok(Method::SparseGpt),
            _ => Err(LabError::invalid(format!(
                "unknown pruning method '{s}': use magnitude, wanda or sparsegpt"
            ))),
        }
    }
}

/// OWL's two knobs (METHODS.md OWL).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OwlOptions {
    /// M (`Hyper_m`): a score is an outlier above M x its block's mean score (README runs: 5).
    pub hyper_m: f64,
    /// lambda: the spread of the block sparsities, S +- lambda (paper: 0.08). With N:M, the
    /// spread of N_l before rounding.
    pub lamda: f64,
}

impl Default for OwlOptions {
    fn default() -> Self {
        OwlOptions {
            hyper_m: 5.0,
            lamda: 0.08,
        }
    }
}

/// Everything a pruning run needs besides the model and the texts; it goes into the
/// Experiment (the page's URL) and is echoed in the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PruneOptions {
    pub method: Method,
    /// S, the mean fraction of each block's linear weights that is zeroed, in [0, 1).
    /// Ignored when `nm` is set (the sparsity is then N/M).
    pub sparsity: f64,
    /// N:M: zero N of every M consecutive input weights of each row (N < M).
    pub nm: Option<(usize, usize)>,
    /// OWL's non-uniform allocation; None = every block at S (or N:M).
    pub owl: Option<OwlOptions>,
    /// B: calibration windows (the papers: 128 windows of C4; the lab's default is 16).
    pub nsamples: usize,
    /// T: tokens per calibration window (the papers: 2048).
    pub seqlen: usize,
    /// None: consecutive windows from the start of the calibration text (reproducible);
    /// Some(seed): windows starting at ChaCha8-seeded random offsets, as Wanda draws C4.
    pub calib_seed: Option<u64>,
    /// Calibration windows that pass through a block together.
    pub batch: usize,
    /// The perplexity evaluation (seqlen, max_windows, batch).
    pub eval: PplOptions,
    /// Also evaluate the dense model (the "before" number).
    pub dense_ppl: bool,
    /// The M values of the outlier sweep the page charts (D_l at each M).
    pub outlier_sweep: Vec<f64>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            method: Method::Wanda,
            sparsity: 0.5,
            nm: None,
            owl: None,
            nsamples: 16,
            seqlen: 256,
            calib_seed: None,
            batch: 8,
            eval: PplOptions::default(),
            dense_ppl: true,
            outlier_sweep: (1..=10).map(f64::from).collect(),
        }
    }
}

impl PruneOptions {
    /// The M at which the report's outlier ratios are given: OWL's, else 5.
    pub fn outlier_m(&self) -> f64 {
        self.owl.unwrap_or_default().hyper_m
    }

    /// Checks every option; the messages say which one and what is allowed.
    pub fn check(&self) -> Result<()> {
        if self.nm.is_none() && !(0.0..1.0).contains(&self.sparsity) {
            return Err(LabError::invalid(format!(
                "the sparsity must be in [0, 1); found {}",
                self.sparsity
            )));
        }
        if let Some((n, m)) = self.nm {
            if m == 0 || n >= m {
                return Err(LabError::invalid(format!(
                    "N:M sparsity zeroes N of every M weights and needs 0 <= N < M; found {n}:{m}"
                )));
            }
        }
        if let Some(o) = &self.owl {
            if !(o.hyper_m.is_finite() && o.hyper_m > 0.0) {
                return Err(LabError::invalid(format!(
                    "OWL's M (--hyper-m) must be a finite number > 0; found {}",
                    o.hyper_m
                )));
            }
            if !(o.lamda.is_finite() && o.lamda >= 0.0) {
                return Err(LabError::invalid(format!(
                    "OWL's lambda (--lamda) must be a finite number >= 0; found {}",
                    o.lamda
                )));
            }
        }
        if self.nsamples == 0 {
            return Err(LabError::invalid(
                "pruning needs at least one calibration window (nsamples >= 1)",
            ));
        }
        if self.seqlen < 1 {
            return Err(LabError::invalid(
                "a calibration window needs at least one token (seqlen >= 1)",
            ));
        }
        if let Some(m) = self
            .outlier_sweep
            .iter()
            .find(|m| !(m.is_finite() && **m > 0.0))
        {
            return Err(LabError::invalid(format!(
                "every M of the outlier sweep must be a finite number > 0; found {m}"
            )));
        }
        Ok(())
    }
}

/// One pruned linear layer, kept compactly: which weights are zero after pruning (one bit
/// each) and, for SparseGPT, which also updates the weights it keeps, the kept values.
/// Wanda and magnitude keep the file's values, so a pruned 135M model costs 13 MB of bits
/// instead of 425 MB of f32; the weights themselves are rebuilt from the file block by block
/// (`PruneRun::block_weights`).
#[derive(Clone, Debug)]
pub struct PrunedLinear {
    /// The family's role: q, k, v, o, gate, up, down (LLaMA); c_attn, c_proj, c_fc,
    /// mlp_c_proj (GPT-2); q, k, v, out, fc1, fc2 (OPT).
    pub role: String,
    /// The file's tensor name ("blk.3.attn_q.weight").
    pub tensor: String,
    pub rows: usize,
    pub cols: usize,
    /// Bit j (word j / 64, bit j % 64) is set when weight j of the (out, in) row-major
    /// matrix, Hugging Face row order (GGUF q/k un-permuted), is zero after pruning.
    zero: Vec<u64>,
    /// SparseGPT: the values of the weights whose bit is clear, in row-major order. None:
    /// they are the file's.
    kept: Option<Vec<f32>>,
}

impl PrunedLinear {
    /// From the pruned weight; `file_values` says whether the weights it keeps are the
    /// file's unchanged (Wanda, magnitude) or updated (SparseGPT).
    pub fn new(
        role: &str,
        tensor: &str,
        rows: usize,
        cols: usize,
        weight: &[f32],
        file_values: bool,
    ) -> Result<Self> {
        if weight.len() != rows * cols {
            return Err(LabError::invalid(format!(
                "{tensor}: {} pruned weights for a {rows} x {cols} linear",
                weight.len()
            )));
        }
        let mut zero = vec![0u64; weight.len().div_ceil(64)];
        for (j, w) in weight.iter().enumerate() {
            if *w == 0.0 {
                zero[j / 64] |= 1 << (j % 64);
            }
        }
        let kept = (!file_values).then(|| weight.iter().copied().filter(|w| *w != 0.0).collect());
        Ok(PrunedLinear {
            role: role.to_string(),
            tensor: tensor.to_string(),
            rows,
            cols,
            zero,
            kept,
        })
    }

    /// Whether weight `j` (row-major) is zero after pruning (false past the end).
    pub fn is_zero(&self, j: usize) -> bool {
        j < self.rows * self.cols
            && self
                .zero
                .get(j / 64)
                .is_some_and(|w| w >> (j % 64) & 1 == 1)
    }

    /// Weights that are zero after pruning.
    pub fn zeros(&self) -> usize {
        self.zero.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The pruned weight, (rows, cols) row-major, from the file's dense `weight` (the same
    /// orientation, as `CausalLm::load_block` gives it).
    pub fn apply(&self, weight: &mut [f32]) -> Result<()> {
        if weight.len() != self.rows * self.cols {
            return Err(LabError::invalid(format!(
                "{}: {} weights for a {} x {} linear",
                self.tensor,
                weight.len(),
                self.rows,
                self.cols
            )));
        }
        let mut kept = self.kept.as_deref().map(|k| k.iter());
        for (j, w) in weight.iter_mut().enumerate() {
            if self.is_zero(j) {
                *w = 0.0;
            } else if let Some(k) = kept.as_mut() {
                *w = *k.next().ok_or_else(|| {
                    LabError::invalid(format!("{}: too few kept weights", self.tensor))
                })?;
            }
        }
        Ok(())
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        self.zero.len() * 8 + self.kept.as_ref().map_or(0, |k| k.len() * 4)
    }
}

#[derive(Clone, Debug)]
pub struct PrunedBlock {
    pub index: usize,
    pub linears: Vec<PrunedLinear>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearReport {
    pub role: String,
    pub tensor: String,
    pub rows: usize,
    pub cols: usize,
    /// Exact zeros in the pruned weight / rows cols.
    pub achieved_sparsity: f64,
    /// Percentage of this linear's dense Wanda scores above M x its own mean score.
    pub outlier_ratio: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockReport {
    pub index: usize,
    /// D_l (percent) on the dense model at M = `PruneReport::outlier_m`.
    pub outlier_ratio: f64,
    /// The sparsity allocated to the block (N_l / M for N:M).
    pub sparsity: f64,
    /// N:M only: the N this block zeroes of every M.
    pub nm_n: Option<usize>,
    /// Exact zeros over all the block's linear weights.
    pub achieved_sparsity: f64,
    pub linears: Vec<LinearReport>,
}

/// D_l at several M, for the chart of how the outlier distribution depends on M.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutlierSweep {
    pub m: Vec<f64>,
    /// `blocks[l][k]`: D_l (percent) at M = m[k].
    pub blocks: Vec<Vec<f64>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerplexitySummary {
    pub dense: Option<f64>,
    pub pruned: f64,
    pub windows: usize,
    pub seqlen: usize,
    pub predicted_tokens: usize,
    pub text_tokens: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationSummary {
    /// Tokens of the whole calibration text.
    pub text_tokens: usize,
    pub windows: usize,
    pub seqlen: usize,
    /// Where each window starts in the token ids.
    pub starts: Vec<usize>,
}

/// Seconds per stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub dense_pass: f64,
    pub prune: f64,
    pub perplexity_dense: Option<f64>,
    pub perplexity_pruned: Option<f64>,
    pub total: f64,
}

/// What the CLI's JSON holds and the page draws.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneReport {
    pub options: PruneOptions,
    /// The M of every `outlier_ratio` below.
    pub outlier_m: f64,
    pub blocks: Vec<BlockReport>,
    pub outlier_sweep: OutlierSweep,
    /// The uniform allocation (S for every block), for comparison with OWL's.
    pub allocation_uniform: Vec<f64>,
    /// None when no evaluation text was given.
    pub perplexity: Option<PerplexitySummary>,
    /// Exact zeros over every pruned linear weight.
    pub achieved_sparsity: f64,
    pub pruned_weights: usize,
    pub linear_weights: usize,
    pub calibration: CalibrationSummary,
    /// What the allocation had to do (clamps, uniform fallback, N:M rounding).
    pub notices: Vec<String>,
    pub timings: Timings,
}

/// The report plus the pruned weights, for evaluation and export.
pub struct PruneRun {
    pub report: PruneReport,
    pub blocks: Vec<PrunedBlock>,
}

impl PruneRun {
    /// Block `index` as the pruned model has it: norms from the file, linears pruned.
    pub fn block_weights(&self, model: &dyn CausalLm, index: usize) -> Result<Block> {
        let mut w = model.load_block(index)?;
        let pruned = self
            .blocks
            .get(index)
            .ok_or_else(|| LabError::invalid(format!("the pruning run has no block {index}")))?;
        for lin in &pruned.linears {
            let dense = w.linear(&lin.role).ok_or_else(|| {
                LabError::invalid(format!("block {index} has no '{}' linear", lin.role))
            })?;
            let mut weight = to_vec(&dense.weight)?;
            lin.apply(&mut weight)?;
            w.set_weight(&lin.role, weight)?;
        }
        Ok(w)
    }

    /// Perplexity of the pruned model (eval.rs's computation, pruned blocks swapped in).
    pub async fn perplexity(
        &self,
        model: &dyn CausalLm,
        ids: &[u32],
        opts: &PplOptions,
        ctl: &dyn RunControl,
    ) -> Result<PplReport> {
        let cpu = Backend::cpu("the CPU was asked for");
        self.perplexity_on(&cpu, model, ids, opts, ctl).await
    }

    /// `perplexity` on `backend` (its GPU where there is one).
    pub async fn perplexity_on(
        &self,
        backend: &Backend,
        model: &dyn CausalLm,
        ids: &[u32],
        opts: &PplOptions,
        ctl: &dyn RunControl,
    ) -> Result<PplReport> {
        let ends = model.load_ends()?;
        self.perplexity_with_ends(backend, model, &ends, ids, opts, ctl)
            .await
    }

    async fn perplexity_with_ends(
        &self,
        backend: &Backend,
        model: &dyn CausalLm,
        ends: &Ends,
        ids: &[u32],
        opts: &PplOptions,
        ctl: &dyn RunControl,
    ) -> Result<PplReport> {
        let blocks = |i| self.block_weights(model, i);
        let weights = Weights {
            ends,
            blocks: &blocks,
        };
        perplexity_with(
            backend,
            model,
            weights,
            ids,
            opts,
            ctl,
            "perplexity (pruned)",
        )
        .await
    }
}

/// The calibration windows' start offsets in `ids`: B consecutive windows from the start,
/// or B starts drawn uniformly from [0, len - T) with ChaCha8 (Wanda's
/// `random.randint(0, len - seqlen - 1)`; here `floor(u64 x range / 2^64)`).
pub fn calibration_starts(
    text_tokens: usize,
    nsamples: usize,
    seqlen: usize,
    seed: Option<u64>,
) -> Result<Vec<usize>> {
    match seed {
        None => {
            let need = nsamples.saturating_mul(seqlen);
            if text_tokens < need {
                return Err(LabError::invalid(format!(
                    "the calibration text has {text_tokens} tokens; {nsamples} windows of \
                     {seqlen} need {need} (use a longer text, fewer or shorter windows)"
                )));
            }
            Ok((0..nsamples).map(|w| w * seqlen).collect())
        }
        Some(seed) => {
            if text_tokens <= seqlen {
                return Err(LabError::invalid(format!(
                    "the calibration text has {text_tokens} tokens; random windows of {seqlen} \
                     need more than {seqlen}"
                )));
            }
            let range = (text_tokens - seqlen) as u128;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            Ok((0..nsamples)
                .map(|_| ((rng.next_u64() as u128 * range) >> 64) as usize)
                .collect())
        }
    }
}

/// Which statistic the prune pass collects for each distinct linear input.
enum Stat {
    Scaler(ScalerRow),
    Hessian(Hessian),
}

/// Collects one statistic per distinct input of a block, keyed by the roles that read it
/// (as `Observer::linear_input` names them: LLaMA q,k,v | o | gate,up | down).
struct Collector {
    stats: Vec<(Vec<String>, Stat)>,
    hessian: bool,
    /// Windows in the batch now running (Wanda's running mean counts windows).
    windows: usize,
    /// Whether the block's output is used (`Observer::wants_output`).
    output: bool,
}

impl Collector {
    fn new(hessian: bool, output: bool) -> Self {
        Collector {
            stats: Vec::new(),
            hessian,
            windows: 0,
            output,
        }
    }
    fn stat(&self, role: &str) -> Option<&Stat> {
        self.stats
            .iter()
            .find(|(roles, _)| roles.iter().any(|r| r == role))
            .map(|(_, s)| s)
    }
    fn scaler(&self, role: &str) -> Result<&[f32]> {
        match self.stat(role) {
            Some(Stat::Scaler(s)) => Ok(&s.scaler_row),
            _ => Err(LabError::invalid(format!(
                "no activation statistics were collected for the '{role}' linear"
            ))),
        }
    }
    fn hessian(&self, role: &str) -> Result<&Hessian> {
        match self.stat(role) {
            Some(Stat::Hessian(h)) => Ok(h),
            _ => Err(LabError::invalid(format!(
                "no Hessian was collected for the '{role}' linear"
            ))),
        }
    }
}

impl Observer for Collector {
    fn linear_input(&mut self, _block: usize, roles: &[&str], x: &Tensor) -> Result<()> {
        let cols = x.dim(1).map_err(ce)?;
        let data = to_vec(x)?;
        let k = match self.stats.iter().position(|(r, _)| r == roles) {
            Some(k) => k,
            None => {
                let stat = if self.hessian {
                    Stat::Hessian(Hessian::new(cols))
                } else {
                    Stat::Scaler(ScalerRow::new(cols))
                };
                self.stats
                    .push((roles.iter().map(|r| r.to_string()).collect(), stat));
                self.stats.len() - 1
            }
        };
        match &mut self.stats[k].1 {
            Stat::Scaler(s) => s.add_batch(&data, self.windows),
            Stat::Hessian(h) => h.add_batch(&data),
        }
    }
    fn wants_output(&self) -> bool {
        self.output
    }
}

/// The dense outlier ratios of one block: its linears' weights with their scaler rows.
fn block_outliers(
    w: &Block,
    roles: &[&str],
    names: &[String],
    stats: &Collector,
    ms: &[f64],
) -> Result<Vec<super::outliers::OutlierRatios>> {
    let mut weights = Vec::with_capacity(roles.len());
    for role in roles {
        let lin = w.linear(role).ok_or_else(|| {
            LabError::invalid(format!("block {} has no '{role}' linear", w.index()))
        })?;
        let (rows, cols) = lin.weight.dims2().map_err(ce)?;
        weights.push((to_vec(&lin.weight)?, rows, cols));
    }
    let mut linears = Vec::with_capacity(roles.len());
    for (k, role) in roles.iter().enumerate() {
        linears.push(LinearStats {
            name: &names[k],
            weight: &weights[k].0,
            rows: weights[k].1,
            cols: weights[k].2,
            scaler_row: stats.scaler(role)?,
        });
    }
    outlier_sweep(&linears, ms)
}

/// Prunes every linear block of `model` with `opts` (see the module comment), then
/// evaluates the dense (if `opts.dense_ppl`) and pruned model on `eval_ids`.
/// `calib_ids` and `eval_ids` are the token ids of the whole texts.
pub async fn prune_model(
    model: &dyn CausalLm,
    calib_ids: &[u32],
    eval_ids: Option<&[u32]>,
    opts: &PruneOptions,
    ctl: &dyn RunControl,
) -> Result<PruneRun> {
    let cpu = Backend::cpu("the CPU was asked for");
    prune_model_on(&cpu, model, calib_ids, eval_ids, opts, ctl).await
}

/// Wanda's mask (with `scaler`) or magnitude's (None) on `backend`'s GPU where there is one
/// (the same mask as the CPU's, see `compute::select`), else on the CPU; a GPU failure
/// finishes on the CPU and says so.
async fn mask_on(
    backend: &Backend,
    what: &str,
    weight: &[f32],
    (rows, cols): (usize, usize),
    scaler: Option<&[f32]>,
    pattern: Pattern,
) -> Result<(super::masks::Mask, Option<String>)> {
    let mut notice = None;
    if let Some(gpu) = backend.gpu() {
        let on_gpu = match scaler {
            Some(s) => gpu.wanda_mask(what, weight, rows, cols, s, pattern).await,
            None => gpu.magnitude_mask(what, weight, rows, cols, pattern).await,
        };
        match on_gpu {
            Err(LabError::GpuFailed(msg)) => {
                notice = Some(backend.gpu_failed(&msg, &format!("while masking {what}")));
            }
            other => return other.map(|m| (m, None)),
        }
    }
    let mask = match scaler {
        Some(s) => wanda_mask(what, weight, rows, cols, s, pattern)?,
        None => magnitude_mask(what, weight, rows, cols, pattern)?,
    };
    Ok((mask, notice))
}

/// `prune_model` with the forward passes and Wanda's and magnitude's selection on `backend`: its GPU where
/// it has one (WebGPU in the browser, Vulkan natively), else the CPU. Same numbers up to
/// f32 rounding (the kernels' parity tests), same report.
///
/// The stages of the module comment, in order: `Driver::dense_pass`, `allocate`,
/// `Driver::prune_pass` (each block's linears by `Driver::prune_block`), then
/// `Driver::evaluate` where there is an evaluation text.
pub async fn prune_model_on(
    backend: &Backend,
    model: &dyn CausalLm,
    calib_ids: &[u32],
    eval_ids: Option<&[u32]>,
    opts: &PruneOptions,
    ctl: &dyn RunControl,
) -> Result<PruneRun> {
    prune_model_reusing(backend, model, calib_ids, eval_ids, opts, ctl, None).await
}

/// `prune_model_on`, given the dense perplexity of this model on these `eval_ids` with these
/// `opts.eval` settings when it was already measured (the page keeps its last one): a run
/// with `dense_ppl` then reports it instead of measuring it again (the dense model does not
/// change between runs), with a notice, and no dense-perplexity timing.
pub async fn prune_model_reusing(
    backend: &Backend,
    model: &dyn CausalLm,
    calib_ids: &[u32],
    eval_ids: Option<&[u32]>,
    opts: &PruneOptions,
    ctl: &dyn RunControl,
    known_dense_ppl: Option<f64>,
) -> Result<PruneRun> {
    let started = Instant::now();
    opts.check()?;
    let layers = model.layers();
    let starts = calibration_starts(calib_ids.len(), opts.nsamples, opts.seqlen, opts.calib_seed)?;
    let mut driver = Driver {
        backend,
        model,
        opts,
        ctl,
        windows: starts
            .iter()
            .map(|&s| &calib_ids[s..s + opts.seqlen])
            .collect(),
        ends: model.load_ends()?,
        rope: model.rope(opts.seqlen)?,
        gpu_notices: Vec::new(),
        known_dense_ppl,
    };

    let dense = driver.dense_pass().await?;
    let dense_pass_s = started.elapsed().as_secs_f64();
    let allocation = allocate(opts, layers, &dense.block)?;
    let prune_started = Instant::now();
    let pruned = driver.prune_pass(&allocation, &dense).await?;
    let prune_s = prune_started.elapsed().as_secs_f64();

    let uniform_s = match opts.nm {
        Some((n, m)) => n as f64 / m as f64,
        None => opts.sparsity,
    };
    let mut run = PruneRun {
        report: PruneReport {
            options: opts.clone(),
            outlier_m: opts.outlier_m(),
            blocks: pruned.reports,
            outlier_sweep: OutlierSweep {
                m: opts.outlier_sweep.clone(),
                blocks: dense.sweep,
            },
            allocation_uniform: vec![uniform_s; layers],
            perplexity: None,
            achieved_sparsity: pruned.zeros as f64 / pruned.weights.max(1) as f64,
            pruned_weights: pruned.zeros,
            linear_weights: pruned.weights,
            calibration: CalibrationSummary {
                text_tokens: calib_ids.len(),
                windows: opts.nsamples,
                seqlen: opts.seqlen,
                starts,
            },
            notices: allocation.notices,
            timings: Timings {
                dense_pass: dense_pass_s,
                prune: prune_s,
                ..Timings::default()
            },
        },
        blocks: pruned.blocks,
    };
    if let Some(ids) = eval_ids {
        driver.evaluate(&mut run, ids).await?;
    }
    for n in driver.gpu_notices {
        if !run.report.notices.contains(&n) {
            run.report.notices.push(n);
        }
    }
    run.report.timings.total = started.elapsed().as_secs_f64();
    Ok(run)
}

/// What every stage of one pruning run reads (the model, the options, the B calibration
/// windows of T tokens, the model's ends and RoPE tables), and the notices of GPU failures
/// the stages collect (each time the work finished on the CPU), in the order they came.
struct Driver<'a> {
    backend: &'a Backend,
    model: &'a dyn CausalLm,
    opts: &'a PruneOptions,
    ctl: &'a dyn RunControl,
    windows: Vec<&'a [u32]>,
    ends: Ends,
    rope: Option<Rope>,
    gpu_notices: Vec<String>,
    /// The dense perplexity on the evaluation text, when already measured.
    known_dense_ppl: Option<f64>,
}

/// The dense model's outlier distribution: what the allocation and the report need of it.
struct DenseOutliers {
    /// D_l (percent) at the report's M, per block.
    block: Vec<f64>,
    /// `linear[l][k]`: D of block l's linear k (the model's `roles()` order) at that M.
    linear: Vec<Vec<f64>>,
    /// `sweep[l][k]`: D_l at the k-th M of `PruneOptions::outlier_sweep`.
    sweep: Vec<Vec<f64>>,
}

/// Sparsity (and for N:M, N) per block, with what the allocation had to do.
struct BlockAllocation {
    /// s_l (N_l / M for N:M).
    sparsity: Vec<f64>,
    /// N:M only: N_l.
    n: Option<Vec<usize>>,
    notices: Vec<String>,
}

/// The pruned model and its report, summed over every block.
struct PrunedBlocks {
    blocks: Vec<PrunedBlock>,
    reports: Vec<BlockReport>,
    /// Exact zeros over every pruned linear weight, and the number of those weights.
    zeros: usize,
    weights: usize,
}

/// One block's pruned linears, their reports, and the block's zeros and weights.
struct PrunedLinears {
    linears: Vec<PrunedLinear>,
    reports: Vec<LinearReport>,
    zeros: usize,
    weights: usize,
}

/// The allocation stage: s_l = OWL(D, S, lambda) | OWL N:M(D, N, M, lambda) | S (or N:M) for
/// every one of `layers` blocks, from the dense outlier ratios D.
fn allocate(opts: &PruneOptions, layers: usize, dense_block: &[f64]) -> Result<BlockAllocation> {
    let mut notices = Vec::new();
    let (sparsity, n) = match (opts.nm, &opts.owl) {
        (None, None) => (allocation::uniform(layers, opts.sparsity)?, None),
        (None, Some(o)) => {
            let a = allocation::owl(dense_block, opts.sparsity, o.lamda)?;
            notices.extend(a.notices);
            (a.sparsity, None)
        }
        (Some((n, m)), owl) => {
            let ns = match owl {
                Some(o) => {
                    let a = allocation::owl_nm(dense_block, n, m, o.lamda)?;
                    notices.extend(a.notices);
                    a.n
                }
                None => vec![n; layers],
            };
            (ns.iter().map(|&k| k as f64 / m as f64).collect(), Some(ns))
        }
    };
    Ok(BlockAllocation {
        sparsity,
        n,
        notices,
    })
}

impl BlockAllocation {
    /// What block `l`'s linears zero.
    fn pattern(&self, l: usize, nm: Option<(usize, usize)>) -> Pattern {
        match (&self.n, nm) {
            (Some(ns), Some((_, m))) => Pattern::NM { n: ns[l], m },
            _ => Pattern::Unstructured {
                sparsity: self.sparsity[l],
            },
        }
    }
}

impl Driver<'_> {
    /// The calibration windows embedded, `batch` windows per tensor: x (b, T, C) each.
    fn embed(&self) -> Result<Vec<Tensor>> {
        self.windows
            .chunks(self.opts.batch.max(1))
            .map(|c| self.model.embed(&self.ends, c))
            .collect()
    }

    /// Block `l`'s linears' tensor names in the file, in the model's `roles()` order.
    fn linear_names(&self, l: usize) -> Result<Vec<String>> {
        let b = &self.model.desc().blocks[l];
        self.model
            .roles()
            .iter()
            .map(|role| {
                b.linears
                    .iter()
                    .find(|lin| lin.role == *role)
                    .map(|lin| lin.tensor.clone())
                    .ok_or_else(|| {
                        LabError::BadFile(format!(
                            "{}: block {l} has no '{role}' linear",
                            self.model.name()
                        ))
                    })
            })
            .collect()
    }

    /// One block on the backend (see `block_forward_on_any`); a GPU failure's notice is kept.
    async fn forward(&mut self, w: &Block, x: &Tensor, obs: &mut dyn Observer) -> Result<Tensor> {
        let (out, notice) =
            block_forward_on_any(self.backend, self.model, w, x, self.rope.as_ref(), obs).await?;
        self.gpu_notices.extend(notice);
        Ok(out)
    }

    /// The dense pass: x = embed(windows); for each block l, the ScalerRows of its inputs on
    /// x give D_l at the report's M and at every M of the sweep; x = block_l(x), dense.
    async fn dense_pass(&mut self) -> Result<DenseOutliers> {
        let (model, ctl) = (self.model, self.ctl);
        let layers = model.layers();
        let mut ms = self.opts.outlier_sweep.clone();
        ms.push(self.opts.outlier_m());
        let mut xs = self.embed()?;
        let mut dense = DenseOutliers {
            block: Vec::with_capacity(layers),
            linear: Vec::with_capacity(layers),
            sweep: Vec::with_capacity(layers),
        };
        ctl.progress("dense pass", 0, layers as u64);
        for i in 0..layers {
            checkpoint(ctl).await?;
            let w = model.load_block(i)?;
            let mut stats = Collector::new(false, true);
            for x in xs.iter_mut() {
                checkpoint(ctl).await?;
                stats.windows = x.dim(0).map_err(ce)?;
                *x = self.forward(&w, x, &mut stats).await?;
            }
            let names = self.linear_names(i)?;
            let ratios = block_outliers(&w, model.roles(), &names, &stats, &ms)?;
            let at_m = ratios.last().expect("M is in the sweep");
            dense.block.push(at_m.block);
            dense
                .linear
                .push(at_m.per_linear.iter().map(|(_, d)| *d).collect());
            dense.sweep.push(
                ratios[..self.opts.outlier_sweep.len()]
                    .iter()
                    .map(|r| r.block)
                    .collect(),
            );
            ctl.progress("dense pass", i as u64 + 1, layers as u64);
        }
        Ok(dense)
    }

    /// The prune pass: x = embed(windows); for each block l, its statistics (ScalerRow for
    /// Wanda, Hessian for SparseGPT) on x, its linears pruned with them at s_l, then x =
    /// block_l(x) with the PRUNED weights, so the error carries to block l + 1. Magnitude
    /// needs no activations and runs no forward.
    async fn prune_pass(
        &mut self,
        allocation: &BlockAllocation,
        dense: &DenseOutliers,
    ) -> Result<PrunedBlocks> {
        let (model, ctl, method) = (self.model, self.ctl, self.opts.method);
        let layers = model.layers();
        let needs_activations = method != Method::Magnitude;
        let mut xs = if needs_activations {
            self.embed()?
        } else {
            Vec::new()
        };
        let mut out = PrunedBlocks {
            blocks: Vec::with_capacity(layers),
            reports: Vec::with_capacity(layers),
            zeros: 0,
            weights: 0,
        };
        ctl.progress("prune", 0, layers as u64);
        for i in 0..layers {
            checkpoint(ctl).await?;
            let mut w = model.load_block(i)?;
            let mut stats = Collector::new(method == Method::SparseGpt, false);
            if needs_activations {
                for x in xs.iter() {
                    checkpoint(ctl).await?;
                    stats.windows = x.dim(0).map_err(ce)?;
                    // Only the statistics matter here; the block's output is recomputed
                    // below with the pruned weights.
                    self.forward(&w, x, &mut stats).await?;
                }
            }
            let pattern = allocation.pattern(i, self.opts.nm);
            let linears = self
                .prune_block(i, &mut w, &stats, pattern, &dense.linear[i])
                .await?;
            drop(stats);
            if needs_activations && i + 1 < layers {
                let rope = self.rope.as_ref();
                let notices =
                    batches_forward_on_any(self.backend, model, &w, &mut xs, rope, ctl).await?;
                self.gpu_notices.extend(notices);
            }
            out.zeros += linears.zeros;
            out.weights += linears.weights;
            out.reports.push(BlockReport {
                index: i,
                outlier_ratio: dense.block[i],
                sparsity: allocation.sparsity[i],
                nm_n: allocation.n.as_ref().map(|ns| ns[i]),
                achieved_sparsity: linears.zeros as f64 / linears.weights.max(1) as f64,
                linears: linears.reports,
            });
            out.blocks.push(PrunedBlock {
                index: i,
                linears: linears.linears,
            });
            ctl.progress("prune", i as u64 + 1, layers as u64);
        }
        Ok(out)
    }

    /// Prunes block `i`'s linears in `w` in place with `pattern`: Wanda's or magnitude's mask (on
    /// the GPU where there is one) or SparseGPT's update, from the block's statistics;
    /// `dense_linear` holds each linear's dense D for its report.
    async fn prune_block(
        &mut self,
        i: usize,
        w: &mut Block,
        stats: &Collector,
        pattern: Pattern,
        dense_linear: &[f64],
    ) -> Result<PrunedLinears> {
        let (method, model) = (self.opts.method, self.model);
        let roles = model.roles();
        let names = self.linear_names(i)?;
        let mut out = PrunedLinears {
            linears: Vec::with_capacity(roles.len()),
            reports: Vec::with_capacity(roles.len()),
            zeros: 0,
            weights: 0,
        };
        for (k, role) in roles.iter().enumerate() {
            let lin = w
                .linear(role)
                .ok_or_else(|| LabError::invalid(format!("block {i} has no '{role}' linear")))?;
            let (rows, cols) = lin.weight.dims2().map_err(ce)?;
            let mut weight = to_vec(&lin.weight)?;
            let what = &names[k];
            match method {
                Method::Magnitude | Method::Wanda => {
                    let scaler = match method {
                        Method::Wanda => Some(stats.scaler(role)?),
                        _ => None,
                    };
                    let shape = (rows, cols);
                    let (mask, notice) =
                        mask_on(self.backend, what, &weight, shape, scaler, pattern).await?;
                    self.gpu_notices.extend(notice);
                    apply_mask(what, &mut weight, &mask)?;
                }
                Method::SparseGpt => {
                    sparsegpt_prune(
                        what,
                        &mut weight,
                        rows,
                        cols,
                        stats.hessian(role)?,
                        pattern,
                        &SparseGptOptions::default(),
                    )?;
                }
            }
            let pl =
                PrunedLinear::new(role, what, rows, cols, &weight, method != Method::SparseGpt)?;
            // Its bits are the exact zeros (either sign) of the pruned weight.
            let zeros = pl.zeros();
            out.zeros += zeros;
            out.weights += weight.len();
            out.reports.push(LinearReport {
                role: role.to_string(),
                tensor: what.clone(),
                rows,
                cols,
                achieved_sparsity: zeros as f64 / weight.len().max(1) as f64,
                outlier_ratio: dense_linear[k],
            });
            out.linears.push(pl);
            w.set_weight(role, weight)?;
        }
        Ok(out)
    }

    /// The evaluation: perplexity of the dense model (when `dense_ppl`) and of the pruned
    /// one on `ids`, with their timings, into `run`'s report.
    async fn evaluate(&mut self, run: &mut PruneRun, ids: &[u32]) -> Result<()> {
        let (backend, model, opts, ctl) = (self.backend, self.model, self.opts, self.ctl);
        let dense = if let (true, Some(ppl)) = (opts.dense_ppl, self.known_dense_ppl) {
            run.report.notices.push(format!(
                "The dense perplexity ({ppl:.3}) was measured by an earlier run on the same \
                 model, text and evaluation settings, and reused."
            ));
            Some(ppl)
        } else if opts.dense_ppl {
            let t = Instant::now();
            let blocks = |i| model.load_block(i);
            let weights = Weights {
                ends: &self.ends,
                blocks: &blocks,
            };
            let r = perplexity_with(
                backend,
                model,
                weights,
                ids,
                &opts.eval,
                ctl,
                "perplexity (dense)",
            )
            .await?;
            run.report.timings.perplexity_dense = Some(t.elapsed().as_secs_f64());
            self.gpu_notices.extend(r.notices);
            Some(r.perplexity)
        } else {
            None
        };
        let t = Instant::now();
        let r = run
            .perplexity_with_ends(backend, model, &self.ends, ids, &opts.eval, ctl)
            .await?;
        self.gpu_notices.extend(r.notices);
        run.report.timings.perplexity_pruned = Some(t.elapsed().as_secs_f64());
        run.report.perplexity = Some(PerplexitySummary {
            dense,
            pruned: r.perplexity,
            windows: r.windows,
            seqlen: r.seqlen,
            predicted_tokens: r.predicted_tokens,
            text_tokens: r.text_tokens,
        });
        Ok(())
    }
}

/// Writes the pruned model as one safetensors file with the family's Hugging Face names,
/// all F32 (`CausalLm::export_tensors`: LLaMA `model.layers.{i}...`, GPT-2
/// `transformer.h.{i}...` with its Conv1D weights back in (in, out), OPT
/// `model.decoder.layers.{i}...`); the LM head only when the source has its own.
///
/// The `__metadata__` holds `format: pt` (transformers refuses files without it) and, under
/// `layerlab`, `extra` (e.g. the experiment) as JSON. For transformers to load the folder it
/// also needs a config.json: [`hf_config`] gives one.
pub fn export_safetensors(
    model: &dyn CausalLm,
    run: &PruneRun,
    extra: &Value,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    let blocks = |i| run.block_weights(model, i);
    let meta = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("layerlab".to_string(), extra.to_string()),
    ]);
    // Twice through the model (header, then data): one block in memory at a time.
    write_f32_with(out, &meta, &|sink| model.export_tensors(&blocks, sink))
}

/// A Hugging Face config.json for the exported model, from the model's own sizes: what
/// transformers needs to load a GGUF source's export (a safetensors source has its own
/// config.json, which stays valid: only weights changed).
pub fn hf_config(model: &dyn CausalLm) -> Value {
    model.hf_config()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_and_seeded_windows() {
        assert_eq!(
            calibration_starts(100, 3, 10, None).unwrap(),
            vec![0, 10, 20]
        );
        let e = calibration_starts(25, 3, 10, None).unwrap_err().to_string();
        assert!(e.contains("has 25 tokens; 3 windows of 10 need 30"), "{e}");
        let a = calibration_starts(100, 5, 10, Some(7)).unwrap();
        assert_eq!(a, calibration_starts(100, 5, 10, Some(7)).unwrap());
        assert!(a.iter().all(|&s| s < 90));
        assert_ne!(a, calibration_starts(100, 5, 10, Some(8)).unwrap());
        assert!(calibration_starts(10, 1, 10, Some(1)).is_err());
    }

    #[test]
    fn pruned_linears_rebuild_the_pruned_weights() {
        // 3 x 43: words straddle rows; the file holds an exact zero that is kept.
        let file: Vec<f32> = (0..129).map(|j| (j as f32 - 61.0) * 0.25).collect();
        assert_eq!(file[61], 0.0);
        let mut pruned = file.clone();
        for j in (0..129).step_by(3) {
            pruned[j] = 0.0;
        }
        // Wanda / magnitude: the kept weights are the file's.
        let masked = PrunedLinear::new("q", "t", 3, 43, &pruned, true).unwrap();
        let mut w = file.clone();
        masked.apply(&mut w).unwrap();
        assert_eq!(w, pruned);
        assert_eq!(masked.zeros(), pruned.iter().filter(|w| **w == 0.0).count());
        assert_eq!(masked.zeros(), 44);
        assert!(masked.is_zero(0) && masked.is_zero(61) && !masked.is_zero(1));
        assert!(!masked.is_zero(129) && !masked.is_zero(usize::MAX));
        // SparseGPT: the kept weights changed too.
        let updated: Vec<f32> = pruned
            .iter()
            .map(|w| if *w == 0.0 { 0.0 } else { w * 1.5 + 0.125 })
            .collect();
        let sgpt = PrunedLinear::new("q", "t", 3, 43, &updated, false).unwrap();
        let mut w = file.clone();
        sgpt.apply(&mut w).unwrap();
        assert_eq!(w, updated);
        assert!(sgpt.bytes() < updated.len() * 4);
        // Wrong sizes are errors.
        assert!(PrunedLinear::new("q", "t", 3, 42, &pruned, true).is_err());
        assert!(masked.apply(&mut [0.0; 128]).is_err());
    }

    #[test]
    fn options_are_checked() {
        let ok = PruneOptions::default();
        assert!(ok.check().is_ok());
        let bad = |o: PruneOptions| o.check().unwrap_err().to_string();
        assert!(bad(PruneOptions {
            sparsity: 1.0,
            ..ok.clone()
        })
        .contains("[0, 1)"));
        assert!(bad(PruneOptions {
            nm: Some((5, 4)),
            ..ok.clone()
        })
        .contains("5:4"));
        assert!(bad(PruneOptions {
            nsamples: 0,
            ..ok.clone()
        })
        .contains("nsamples"));
        assert_eq!("SparseGPT".parse::<Method>().unwrap(), Method::SparseGpt);
        assert!("obs"
            .parse::<Method>()
            .unwrap_err()
            .to_string()
            .contains("unknown pruning method 'obs'"));
        let json = serde_json::to_string(&ok).unwrap();
        let back: PruneOptions = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ok);
        let partial: PruneOptions = serde_json::from_str(r#"{"method":"sparsegpt"}"#).unwrap();
        assert_eq!(partial.nsamples, 16);
    }
}
