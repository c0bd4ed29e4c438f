//! The layer view's numbers: statistics of every tensor of a model, and of every block's
//! linear weights pooled together (the weights OWL and Wanda prune), read one block at a
//! time so only one block's weights are ever resident.

use serde::{Deserialize, Serialize};

use super::{group_stats, Histogram, StatsOptions, TensorStats};
use crate::compute::{Backend, BackendInfo, RunControl};
use crate::io::{ByteSource, Format, ModelFile, TensorInfo};
use crate::model::{Arch, Hyper, ModelDesc};
use crate::Result;

/// The statistics the view draws for one tensor or one block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub mean: f64,
    pub std: f64,
    pub mean_abs: f64,
    pub max_abs: f64,
    /// Pearson kurtosis E[(w - mean)^4] / var^2 (3 for a Gaussian); None for zero variance.
    pub kurtosis: Option<f64>,
    /// Fraction of |w| above outlier_k x mean |w|.
    pub outlier_fraction: f64,
    pub histogram: Histogram,
}

impl From<TensorStats> for Summary {
    fn from(s: TensorStats) -> Self {
        Summary {
            mean: s.mean,
            std: s.std,
            mean_abs: s.mean_abs,
            max_abs: s.max_abs,
            kurtosis: s.kurtosis,
            outlier_fraction: s.outlier_fraction,
            histogram: s.histogram,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// As in the file.
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    pub params: u64,
    /// The block it belongs to, if any.
    pub block: Option<usize>,
    /// Its part: a linear's role (q, k, ..., down), "norm", "embedding", "head", ...
    pub role: Option<String>,
    /// Absent when the tensor is listed but not analysed (integer dtypes, unsupported
    /// quants); flattened, so a tensor's JSON reads {name, shape, mean_abs, std, ...}.
    #[serde(flatten)]
    pub stats: Option<Summary>,
    pub skipped: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockEntry {
    pub index: usize,
    /// Roles of the block's linear layers, in order.
    pub linears: Vec<String>,
    /// Parameters of the block's linear layers.
    pub params: u64,
    /// Statistics of all the block's linear weights pooled together (flattened).
    #[serde(flatten)]
    pub stats: Option<Summary>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub file: String,
    pub format: Format,
    pub arch: Arch,
    pub arch_name: String,
    pub hyper: Hyper,
    pub blocks: usize,
    pub tensors: usize,
    pub params: u64,
    pub notice: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    pub model: ModelInfo,
    pub options: StatsOptions,
    pub tensors: Vec<TensorEntry>,
    pub blocks: Vec<BlockEntry>,
    pub backend: BackendInfo,
    /// Things the user should know: GPU fallback, skipped tensors.
    pub notices: Vec<String>,
}

pub fn model_info(file_name: &str, file: &ModelFile, desc: &ModelDesc) -> ModelInfo {
    ModelInfo {
        file: file_name.to_string(),
        format: file.format,
        arch: desc.arch,
        arch_name: desc.arch_name.clone(),
        hyper: desc.hyper.clone(),
        blocks: desc.blocks.len(),
        tensors: file.tensors.len(),
        params: file
            .tensors
            .iter()
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum(),
        notice: desc.notice.clone(),
    }
}

/// Passes cancellation and yields through, keeps a tensor's own chunk progress quiet: the
/// model run reports progress per tensor.
struct Quiet<'a>(&'a dyn RunControl);

impl RunControl for Quiet<'_> {
    fn progress(&self, _: &str, _: u64, _: u64) {}
    fn cancelled(&self) -> bool {
        self.0.cancelled()
    }
    fn yield_now(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
        self.0.yield_now()
    }
}

/// A tensor with where it sits in the model: (block, role, the tensor).
type Placed<'a> = (Option<usize>, Option<String>, &'a TensorInfo);

/// Where each tensor sits in the model: (block, role).
fn placement(desc: &ModelDesc, name: &str) -> (Option<usize>, Option<String>) {
    for b in &desc.blocks {
        if let Some(l) = b.linears.iter().find(|l| l.tensor == name) {
            return (Some(b.index), Some(l.role.clone()));
        }
        if b.linears.iter().any(|l| l.bias.as_deref() == Some(name)) {
            return (Some(b.index), Some("bias".into()));
        }
        if b.norms.iter().any(|n| n == name) {
            return (Some(b.index), Some("norm".into()));
        }
        if b.other.iter().any(|n| n == name) {
            return (Some(b.index), None);
        }
    }
    let role = if desc.embedding.as_deref() == Some(name) {
        Some("embedding")
    } else if desc.final_norm.as_deref() == Some(name) {
        Some("final norm")
    } else if desc.head.as_deref() == Some(name) {
        Some("head")
    } else {
        None
    };
    (None, role.map(String::from))
}

/// Statistics of every analysable tensor and every block. Blocks are read in order, one at
/// a time; `ctl` hears progress per tensor and can cancel between tensors.
pub async fn model_stats(
    backend: &Backend,
    src: &dyn ByteSource,
    file: &ModelFile,
    desc: &ModelDesc,
    opts: &StatsOptions,
    ctl: &dyn RunControl,
) -> Result<ModelReport> {
    let opts = StatsOptions {
        per_column: false,
        ..opts.clone()
    };
    let quiet = Quiet(ctl);
    let mut notices: Vec<String> = Vec::new();
    let note = |notices: &mut Vec<String>, n: Option<String>| {
        if let Some(n) = n {
            if !notices.contains(&n) {
                notices.push(n);
            }
        }
    };
    // Tensors grouped by block, in block order, then everything outside the blocks.
    let mut order: Vec<Placed> = file
        .tensors
        .iter()
        .map(|t| {
            let (block, role) = placement(desc, &t.name);
            (block, role, t)
        })
        .collect();
    order.sort_by_key(|(b, _, _)| b.map_or(usize::MAX, |b| b));
    let total = order.len() as u64;

    // Groups: each block's tensors together (read, then measured in two passes, so only one
    // block's weights are resident), and every tensor outside the blocks on its own.
    let mut groups: Vec<(Option<usize>, Vec<&Placed>)> = Vec::new();
    for placed in &order {
        match groups.last_mut() {
            Some((b, members)) if b.is_some() && *b == placed.0 => members.push(placed),
            _ => groups.push((placed.0, vec![placed])),
        }
    }

    let mut tensors = Vec::with_capacity(order.len());
    let mut blocks = Vec::with_capacity(desc.blocks.len());
    let mut done = 0u64;
    for (block, members) in groups {
        let mut entries = Vec::with_capacity(members.len());
        let mut data: Vec<Vec<f32>> = Vec::new();
        let mut linear: Vec<bool> = Vec::new();
        for (_, role, t) in members {
            let mut entry = TensorEntry {
                name: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype.name(),
                params: t.shape.iter().product::<usize>() as u64,
                block,
                role: role.clone(),
                stats: None,
                skipped: None,
            };
            if t.dtype.analysable() {
                data.push(file.read_f32(src, t)?);
                linear.push(
                    block.is_some()
                        && !matches!(role.as_deref(), None | Some("norm") | Some("bias")),
                );
            } else {
                entry.skipped = Some(format!(
                    "{} tensors are listed, not analysed",
                    t.dtype.name()
                ));
            }
            entries.push(entry);
        }
        let inputs: Vec<(&[f32], bool)> = data
            .iter()
            .map(|d| d.as_slice())
            .zip(linear.iter().copied())
            .collect();
        let run = group_stats(backend, &inputs, &opts, &quiet).await?;
        note(&mut notices, run.notice);
        let mut analysed = run.tensors.into_iter();
        for entry in &mut entries {
            if entry.skipped.is_none() {
                entry.stats = analysed.next().map(Summary::from);
            }
        }
        if let Some(b) = block {
            let params = inputs
                .iter()
                .filter(|(_, l)| *l)
                .map(|(d, _)| d.len() as u64)
                .sum();
            blocks.push(BlockEntry {
                index: b,
                linears: roles(desc, b),
                params,
                stats: run.pooled.map(Summary::from),
            });
        }
        done += entries.len() as u64;
        if let Some(last) = entries.last() {
            ctl.progress(&last.name, done, total);
        }
        tensors.extend(entries);
    }
    // Blocks with no tensors read (never expected, but keep one entry per described block).
    for b in &desc.blocks {
        if !blocks.iter().any(|e: &BlockEntry| e.index == b.index) {
            blocks.push(BlockEntry {
                index: b.index,
                linears: roles(desc, b.index),
                params: 0,
                stats: None,
            });
        }
    }
    blocks.sort_by_key(|b| b.index);
    let skipped = tensors.iter().filter(|t| t.skipped.is_some()).count();
    if skipped > 0 {
        notices.push(format!(
            "{skipped} tensors have types that are listed but not analysed"
        ));
    }
    Ok(ModelReport {
        model: model_info(&src.name(), file, desc),
        options: opts,
        tensors,
        blocks,
        backend: backend.info(),
        notices,
    })
}

fn roles(desc: &ModelDesc, index: usize) -> Vec<String> {
    desc.blocks
        .iter()
        .find(|b| b.index == index)
        .map(|b| b.linears.iter().map(|l| l.role.clone()).collect())
        .unwrap_or_default()
}
