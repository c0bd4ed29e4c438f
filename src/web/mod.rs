//! The page's face of the core (wasm32 only): the API the Web Worker calls. The worker owns
//! the one `Lab`; the page only sends requests and draws replies (see www/src/worker.ts).
//! All platform code (wasm-bindgen, js-sys, web-sys) lives in this module.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::compute::{Backend, GpuContext, Matrix, RunControl};
use crate::stats::{tensor_stats, StatsOptions};
use crate::synth::{weights, SynthSpec};

/// Most values the page's compute check accepts (1 GiB of f32 would not leave room for
/// anything else in wasm's 4 GiB).
const MAX_SYNTH_VALUES: usize = 64 << 20;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// The compute check's request: a seeded synthetic matrix and the statistics options.
#[derive(Serialize, Deserialize)]
struct ReduceRequest {
    #[serde(flatten)]
    synth: SynthSpec,
    #[serde(flatten)]
    options: StatsOptions,
}

fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsValue> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| JsValue::from_str(&format!("cannot hand the result to the page: {e}")))
}

fn has_navigator_gpu() -> bool {
    let global = js_sys::global();
    let Ok(navigator) = js_sys::Reflect::get(&global, &"navigator".into()) else {
        return false;
    };
    js_sys::Reflect::get(&navigator, &"gpu".into())
        .map(|g| !g.is_undefined() && !g.is_null())
        .unwrap_or(false)
}

/// Progress out through a JS callback, cancel in through a flag the worker sets.
struct WebControl<'a> {
    cancel: &'a Cell<bool>,
    on_progress: &'a js_sys::Function,
}

impl RunControl for WebControl<'_> {
    fn progress(&self, stage: &str, done: u64, total: u64) {
        let _ = self.on_progress.call3(
            &JsValue::NULL,
            &JsValue::from_str(stage),
            &JsValue::from_f64(done as f64),
            &JsValue::from_f64(total as f64),
        );
    }

    fn cancelled(&self) -> bool {
        self.cancel.get()
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + '_>> {
        Box::pin(async {
            // A zero-delay timer: the worker's queued messages ("cancel") run first.
            let promise = js_sys::Promise::new(&mut |resolve, _reject| {
                let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
                let _ = scope.set_timeout_with_callback(&resolve);
            });
            let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
        })
    }
}

/// The lab's heavy state, owned by the worker.
#[wasm_bindgen]
pub struct Lab {
    backend: Backend,
    cancel: Rc<Cell<bool>>,
}

#[wasm_bindgen]
impl Lab {
    /// Brings up the compute backend: WebGPU when allowed and present, else the CPU with the
    /// reason (no navigator.gpu, adapter refused, device refused). `adapter_name` names the
    /// adapter when the browser hides its description (vendor and architecture).
    pub async fn create(allow_gpu: bool, adapter_name: String) -> Lab {
        let backend = if !allow_gpu {
            Backend::cpu("WebGPU was switched off for this page (?backend=cpu)")
        } else if !has_navigator_gpu() {
            Backend::cpu("this browser has no WebGPU (navigator.gpu is missing)")
        } else {
            match GpuContext::new().await {
                Ok(mut gpu) => {
                    gpu.name_if_unnamed(&adapter_name);
                    Backend::with_gpu(gpu)
                }
                Err(e) => Backend::cpu(e.to_string()),
            }
        };
        Lab {
            backend,
            cancel: Rc::new(Cell::new(false)),
        }
    }

    /// `{kind, name, reason}` for the page's backend line.
    pub fn backend(&self) -> Result<JsValue, JsValue> {
        to_js(&self.backend.info())
    }

    /// Statistics of a seeded synthetic matrix (the compute check); `on_progress(stage,
    /// done, total)` is called between steps. Resolves to the same JSON as
    /// `layerlab reduce --json`.
    pub async fn reduce(
        &self,
        request: JsValue,
        on_progress: js_sys::Function,
    ) -> Result<JsValue, JsValue> {
        let req: ReduceRequest = serde_wasm_bindgen::from_value(request)
            .map_err(|e| JsValue::from_str(&format!("bad compute-check request: {e}")))?;
        let n = req.synth.rows.saturating_mul(req.synth.cols);
        if n > MAX_SYNTH_VALUES {
            return Err(JsValue::from_str(&format!(
                "a [{}, {}] matrix is too big for the page: at most {MAX_SYNTH_VALUES} values",
                req.synth.rows, req.synth.cols
            )));
        }
        self.cancel.set(false);
        let data = weights(req.synth);
        let m = Matrix::new(&data, req.synth.rows, req.synth.cols)
            .map_err(|e| JsValue::from_str(&e.to_string()))?;
        let ctl = WebControl {
            cancel: &self.cancel,
            on_progress: &on_progress,
        };
        let run = tensor_stats(&self.backend, m, &req.options, &ctl)
            .await
            .map_err(|e| JsValue::from_str(&e.to_string()))?;
        to_js(&run)
    }

    /// Asks the run in progress to stop at its next step.
    pub fn cancel(&self) {
        self.cancel.set(true);
    }

    /// Destroys the GPU device, as a driver reset would; the next run finishes on the CPU.
    /// Returns false when no GPU is in use.
    pub fn lose_device(&self) -> bool {
        match self.backend.gpu() {
            Some(gpu) => {
                gpu.destroy();
                true
            }
            None => false,
        }
    }
}
