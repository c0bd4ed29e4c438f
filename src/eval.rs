//! Evaluation: perplexity of a causal LM (LLaMA family, GPT-2, OPT: `model::causal`) on a
//! text, as METHODS.md defines it.
//!
//! ```text
//! ids = tokenise(text)                        once; BOS first only if the tokeniser says so
//! windows w = ids[w L .. (w+1) L], w < W      W = floor(len / L), remainder dropped
//! NLL_w = sum_{t < L-1} -log softmax(logits_w[t])[ids_w[t+1]]    each window alone
//! ppl = exp(sum_w NLL_w / (W (L - 1)))        L - 1 predicted tokens per window
//! ```
//!
//! Windows run through the model block by block, in batches of `batch` windows (each
//! block's weights read once for all of them, `CausalLm::block_forward` on (B,T,C)); logits are
//! formed 64 positions of one window at a time (the largest tensor is (64,V)). Between blocks and between
//! windows the run reports progress and stops when cancelled.
//!
//! What this module refuses to be: a sliding-window (strided) perplexity, or one that
//! silently shrinks the window when the text is short: that is an error saying how many
//! tokens the text has and how many one window needs.

use candle_core::{Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::compute::backend::checkpoint;
use crate::compute::{Backend, RunControl};
use crate::error::candle_failed::perplexity as ce;
use crate::model::causal::{batches_forward_on_any, Block, CausalLm};
use crate::model::gpu_forward::GpuHead;
use crate::model::llama::{to_vec, Ends};
use crate::{LabError, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PplOptions {
    /// L: tokens per window.
    pub seqlen: usize,
    /// Score only the first N windows (None: all).
    pub max_windows: Option<usize>,
    /// Windows that go through a block together: more reads the weights fewer times, at
    /// the cost of B x T x C activations (and B x H x T x T attention scores).
    pub batch: usize,
}

impl Default for PplOptions {
    fn default() -> Self {
        PplOptions {
            seqlen: 256,
            max_windows: None,
            batch: 8,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PplReport {
    pub perplexity: f64,
    /// Sum of the NLL (nats) over every predicted token.
    pub nll: f64,
    /// W (L - 1).
    pub predicted_tokens: usize,
    /// Tokens of the whole text (BOS included when added).
    pub text_tokens: usize,
    pub windows: usize,
    pub seqlen: usize,
    /// NLL of each window.
    pub window_nll: Vec<f64>,
    /// Things the user should know (a GPU that failed mid-run, and the CPU finished).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
}

/// Positions whose logits are formed at once (each row is one (1, V) softmax: the result does
/// not depend on it).
const LOGIT_ROWS: usize = 64;

/// The NLL of `next` (one token per row) after a window's final residuals `rows` (1, L, C),
/// on the CPU: logits are formed LOGIT_ROWS positions at a time ((rows, V) instead of
/// (L, V): 12.6 MB instead of 50 for SmolLM2).
fn cpu_window_nll(model: &dyn CausalLm, ends: &Ends, rows: &Tensor, next: &[u32]) -> Result<f64> {
    let mut nll = 0f64;
    for from in (0..next.len()).step_by(LOGIT_ROWS) {
        let n = LOGIT_ROWS.min(next.len() - from);
        let xb = rows.narrow(1, from, n).map_err(ce)?;
        let logits = model.logits(ends, &xb)?.squeeze(0).map_err(ce)?;
        let lse = logits.log_sum_exp(D::Minus1).map_err(ce)?;
        let targets =
            Tensor::from_vec(next[from..from + n].to_vec(), (n, 1), &Device::Cpu).map_err(ce)?;
        let picked = logits
            .gather(&targets, D::Minus1)
            .and_then(|p| p.squeeze(1))
            .map_err(ce)?;
        let lse: Vec<f32> = lse.to_vec1().map_err(ce)?;
        let picked: Vec<f32> = picked.to_vec1().map_err(ce)?;
        nll += lse
            .iter()
            .zip(&picked)
            .map(|(a, p)| *a as f64 - *p as f64)
            .sum::<f64>();
    }
    Ok(nll)
}

/// The windows METHODS.md takes from `ids`; an error when not even one fits.
pub fn windows(ids: &[u32], seqlen: usize, max_windows: Option<usize>) -> Result<Vec<&[u32]>> {
    if seqlen < 2 {
        return Err(LabError::invalid(format!(
            "a window of {seqlen} token(s) predicts nothing; use at least 2"
        )));
    }
    if ids.len() < seqlen {
        return Err(LabError::invalid(format!(
            "the evaluation text has {} tokens; one window needs {seqlen}",
            ids.len()
        )));
    }
    let n = (ids.len() / seqlen).min(max_windows.unwrap_or(usize::MAX));
    if n == 0 {
        return Err(LabError::invalid("--max-windows 0 leaves nothing to score"));
    }
    Ok(ids.chunks_exact(seqlen).take(n).collect())
}

/// Perplexity of `model` on the token ids of a text.
pub async fn perplexity(
    model: &dyn CausalLm,
    ids: &[u32],
    opts: &PplOptions,
    ctl: &dyn RunControl,
) -> Result<PplReport> {
    let cpu = Backend::cpu("the CPU was asked for");
    let ends = model.load_ends()?;
    let blocks = |i| model.load_block(i);
    let weights = Weights {
        ends: &ends,
        blocks: &blocks,
    };
    perplexity_with(&cpu, model, weights, ids, opts, ctl, "perplexity").await
}

/// The weights a perplexity run uses: `ends` (`model.load_ends()`, the caller's, so it can
/// share them) and each block's from `blocks(i)`: the file's (`load_block`), or the pruned
/// model's (`prune::driver`, which swaps in pruned linears).
pub struct Weights<'a> {
    pub ends: &'a Ends,
    pub blocks: &'a dyn Fn(usize) -> Result<Block>,
}

/// Perplexity with `weights`. Progress is reported as `stage`. The
/// blocks of a LLaMA-family model run on `backend`'s GPU when it has one, each block's
/// weights uploaded once for all the batches (`batches_forward_on`: a GPU failure finishes
/// the run on the CPU, with a notice), and so do its final norm and LM head, reduced there
/// to one NLL per position (`GpuHead`, nll.wgsl); GPT-2 and OPT run on the CPU.
pub async fn perplexity_with(
    backend: &Backend,
    model: &dyn CausalLm,
    weights: Weights<'_>,
    ids: &[u32],
    opts: &PplOptions,
    ctl: &dyn RunControl,
    stage: &str,
) -> Result<PplReport> {
    let Weights { ends, blocks } = weights;
    let wins = windows(ids, opts.seqlen, opts.max_windows)?;
    let layers = model.layers();
    // Progress: one step per block (all windows through it), then one per window's logits.
    let total = (layers + wins.len()) as u64;
    let rope = model.rope(opts.seqlen)?;
    let mut window_nll = Vec::with_capacity(wins.len());
    let mut notices = Vec::new();
    ctl.progress(stage, 0, total);
    // Block by block over every batch: each block's weights are read (and a pruned block
    // rebuilt) once, not once per batch; the residual stream of all W windows is held
    // (W T C f32: 17 MB for 29 windows of 256 on SmolLM2).
    let batches: Vec<&[&[u32]]> = wins.chunks(opts.batch.max(1)).collect();
    let mut xs = batches
        .iter()
        .map(|b| model.embed(ends, b))
        .collect::<Result<Vec<_>>>()?;
    for i in 0..layers {
        checkpoint(ctl).await?;
        let w = blocks(i)?;
        notices
            .extend(batches_forward_on_any(backend, model, &w, &mut xs, rope.as_ref(), ctl).await?);
        ctl.progress(stage, i as u64 + 1, total);
    }
    // The LM head: on the GPU for a LLaMA-family model when the backend has one (only the
    // NLLs come back); on the CPU otherwise, or if the head does not fit or the GPU fails.
    let mut gpu_head = match (backend.gpu(), model.as_llama()) {
        (Some(gpu), Some(llama)) => match GpuHead::upload(&gpu, llama, ends) {
            Ok(head) => Some((gpu, head)),
            Err(LabError::GpuFailed(msg)) => {
                notices.push(backend.gpu_failed(&msg, "loading the LM head"));
                None
            }
            // Too large for one of this GPU's buffers: the CPU forms the logits.
            Err(_) => None,
        },
        _ => None,
    };
    for (batch, x) in batches.iter().zip(&xs) {
        for (b, win) in batch.iter().enumerate() {
            checkpoint(ctl).await?;
            let l = opts.seqlen - 1;
            // Window b's final residuals, positions 0..l (position t predicts token t + 1).
            let rows = x
                .narrow(0, b, 1)
                .and_then(|x| x.narrow(1, 0, l))
                .map_err(ce)?;
            let mut on_gpu = None;
            if let Some((gpu, head)) = &gpu_head {
                match head.nll(gpu, &to_vec(&rows)?, &win[1..]).await {
                    Ok(v) => on_gpu = Some(v.iter().map(|&n| n as f64).sum()),
                    Err(LabError::GpuFailed(msg)) => {
                        notices.push(backend.gpu_failed(&msg, "in the LM head"));
                        gpu_head = None;
                    }
                    // A limit of this GPU (a dispatch too large, ...): the CPU forms the
                    // logits from here on; the run goes on.
                    Err(e) => {
                        notices.push(format!("the LM head runs on the CPU: {e}"));
                        gpu_head = None;
                    }
                }
            }
            let nll = match on_gpu {
                Some(nll) => nll,
                None => cpu_window_nll(model, ends, &rows, &win[1..])?,
            };
            window_nll.push(nll);
            ctl.progress(stage, (layers + window_nll.len()) as u64, total);
        }
    }
    let nll: f64 = window_nll.iter().sum();
    let predicted = wins.len() * (opts.seqlen - 1);
    Ok(PplReport {
        perplexity: (nll / predicted as f64).exp(),
        nll,
        predicted_tokens: predicted,
        text_tokens: ids.len(),
        windows: wins.len(),
        seqlen: opts.seqlen,
        window_nll,
        notices,
    })
}
