//! Which engine runs the work, and how a run reports progress and hears "cancel".
//!
//! `Backend` holds the GPU context when one came up, or the reason it did not. When the GPU
//! fails mid-run, the caller disables it here with the reason, finishes on the CPU and
//! tells the user; later runs stay on the CPU.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use super::GpuContext;
use crate::{LabError, Result};

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The GPU where it comes up, else the CPU.
    #[default]
    Auto,
    /// The GPU or an error.
    Gpu,
    /// The CPU twins only.
    Cpu,
}

impl std::str::FromStr for BackendChoice {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "gpu" => Ok(BackendChoice::Gpu),
            "cpu" => Ok(BackendChoice::Cpu),
            _ => Err(LabError::invalid(format!(
                "unknown backend '{s}': use auto, gpu or cpu"
            ))),
        }
    }
}

/// What the page's backend line and the reports say.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// "gpu" or "cpu".
    pub kind: String,
    /// The adapter ("SwiftShader Device (Subzero) (WebGPU)") or "CPU (WebAssembly)".
    pub name: String,
    /// Why the CPU is used, when it is.
    pub reason: Option<String>,
}

pub struct Backend {
    gpu: RefCell<Option<GpuContext>>,
    cpu_reason: RefCell<Option<String>>,
}

/// "CPU (native)", "CPU (WebAssembly)", or in the page's threaded build "CPU (WebAssembly,
/// N threads)" (its rayon pool of Web Workers).
pub fn cpu_name() -> String {
    if cfg!(all(target_arch = "wasm32", target_feature = "atomics")) {
        format!(
            "CPU (WebAssembly, {} threads)",
            rayon::current_num_threads()
        )
    } else if cfg!(target_arch = "wasm32") {
        "CPU (WebAssembly)".into()
    } else if crate::train::fma_in_use() {
        "CPU (native, fused multiply-add: --fma, not the page's bits)".into()
    } else {
        "CPU (native)".into()
    }
}

impl Backend {
    /// Brings up the engine the user chose. `Auto` never fails: without a GPU it keeps the
    /// reason and runs on the CPU.
    pub async fn new(choice: BackendChoice) -> Result<Backend> {
        match choice {
            BackendChoice::Cpu => Ok(Backend::cpu("the CPU was chosen")),
            BackendChoice::Gpu => Ok(Backend::with_gpu(GpuContext::new().await?)),
            BackendChoice::Auto => match GpuContext::new().await {
                Ok(gpu) => Ok(Backend::auto_from(gpu)),
                Err(e) => Ok(Backend::cpu(e.to_string())),
            },
        }
    }

    /// `Auto`'s rule for an adapter that came up: a software renderer (lavapipe, SwiftShader)
    /// runs the kernels on this same CPU, slower than the CPU twins, so the CPU is used and
    /// the reason says how to force the GPU path.
    pub fn auto_from(gpu: GpuContext) -> Backend {
        if gpu.is_software() {
            Backend::cpu(format!(
                "the only GPU adapter, {}, is a software renderer, slower than the CPU path \
                 (to use it anyway: --backend gpu, or ?backend=gpu in the page)",
                gpu.describe()
            ))
        } else {
            Backend::with_gpu(gpu)
        }
    }

    pub fn with_gpu(gpu: GpuContext) -> Backend {
        Backend {
            gpu: RefCell::new(Some(gpu)),
            cpu_reason: RefCell::new(None),
        }
    }

    pub fn cpu(reason: impl Into<String>) -> Backend {
        Backend {
            gpu: RefCell::new(None),
            cpu_reason: RefCell::new(Some(reason.into())),
        }
    }

    /// The GPU context, if the GPU is (still) in use.
    pub fn gpu(&self) -> Option<GpuContext> {
        self.gpu.borrow().clone()
    }

    /// Stops using the GPU after a failure; `reason` is shown on the backend line.
    pub fn disable_gpu(&self, reason: impl Into<String>) {
        self.gpu.borrow_mut().take();
        *self.cpu_reason.borrow_mut() = Some(reason.into());
    }

    /// After a GPU failure (`msg`) in the middle of a run: stops using the GPU (the backend
    /// line says why) and returns the notice the run reports once it has finished on the
    /// CPU; `during` says where, e.g. "in block 3".
    pub fn gpu_failed(&self, msg: &str, during: &str) -> String {
        self.gpu_failed_then(msg, during, "the run finished on the CPU")
    }

    /// `gpu_failed` for a run that is not over yet: `then` says what happens next, e.g. "the
    /// run went on on the CPU".
    pub fn gpu_failed_then(&self, msg: &str, during: &str, then: &str) -> String {
        self.disable_gpu(format!("the GPU failed during a run: {msg}"));
        format!("The GPU failed {during} ({msg}); {then}.")
    }

    pub fn info(&self) -> BackendInfo {
        match &*self.gpu.borrow() {
            Some(gpu) => BackendInfo {
                kind: "gpu".into(),
                name: gpu.describe(),
                reason: None,
            },
            None => BackendInfo {
                kind: "cpu".into(),
                name: cpu_name(),
                reason: self.cpu_reason.borrow().clone(),
            },
        }
    }
}

/// How a long run talks to whoever started it: progress out, cancellation in.
pub trait RunControl {
    /// `done` of `total` steps of `stage` are finished.
    fn progress(&self, stage: &str, done: u64, total: u64);
    /// True once the user has asked to stop.
    fn cancelled(&self) -> bool;
    /// Lets the host handle pending events (in the browser: the worker's message queue, so
    /// that a "cancel" can arrive) before the next step.
    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + '_>> {
        Box::pin(std::future::ready(()))
    }
    /// The measurements of one step of `stage` (a training step's loss, its gradient norm
    /// per block…), for the page's live charts: named numbers and small arrays. Hosts that
    /// draw nothing ignore them.
    fn metrics(&self, _stage: &str, _step: u64, _values: &[(&str, Metric)]) {}
}

/// One named measurement of a step: a number, or a small array (one value per block).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Metric {
    Number(f64),
    Series(Vec<f64>),
}

/// Between two steps of a run: yield to the host, then stop if cancelled.
pub async fn checkpoint(ctl: &dyn RunControl) -> Result<()> {
    ctl.yield_now().await;
    if ctl.cancelled() {
        Err(LabError::Cancelled)
    } else {
        Ok(())
    }
}

/// A run nobody watches (tests, benchmarks).
pub struct Silent;

impl RunControl for Silent {
    fn progress(&self, _: &str, _: u64, _: u64) {}
    fn cancelled(&self) -> bool {
        false
    }
}
