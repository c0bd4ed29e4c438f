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

use crate::compute::{Backend, BackendChoice, GpuContext, Matrix, RunControl};
use crate::experiment::Experiment;
use crate::io::{ByteSource, ModelFile};
use crate::model::{describe, ModelDesc};
use crate::stats::model::{model_info, model_stats};
use crate::stats::{tensor_stats, StatsOptions};
use crate::synth::{weights, SynthSpec};
use crate::LabError;

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

/// A file the worker can read synchronously: `{ name, size, read(offset, length) }` where
/// `read` returns a Uint8Array (FileReaderSync on File.slice, or a sync range request).
struct JsSource {
    name: String,
    size: u64,
    object: JsValue,
    read: js_sys::Function,
}

impl JsSource {
    fn from_js(object: JsValue) -> Result<Self, JsValue> {
        let get = |key: &str| js_sys::Reflect::get(&object, &key.into());
        let name = get("name")?.as_string().unwrap_or_else(|| "model".into());
        let size = get("size")?
            .as_f64()
            .filter(|s| *s >= 0.0 && s.fract() == 0.0)
            .ok_or_else(|| JsValue::from_str(&format!("{name}: the file's size is unknown")))?;
        let read = get("read")?.dyn_into::<js_sys::Function>().map_err(|_| {
            JsValue::from_str("a model source needs a read(offset, length) function")
        })?;
        Ok(JsSource {
            name,
            size: size as u64,
            object,
            read,
        })
    }
}

impl ByteSource for JsSource {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn len(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
        crate::io::check_range(&self.name, self.size, offset, buf.len() as u64)?;
        let bytes = self
            .read
            .call2(
                &self.object,
                &JsValue::from_f64(offset as f64),
                &JsValue::from_f64(buf.len() as f64),
            )
            .map_err(|e| LabError::Io(format!("cannot read {}: {}", self.name, js_message(&e))))?;
        let array = bytes.dyn_into::<js_sys::Uint8Array>().map_err(|_| {
            LabError::Io(format!(
                "cannot read {}: the reader returned no bytes",
                self.name
            ))
        })?;
        if array.length() as usize != buf.len() {
            return Err(LabError::Io(format!(
                "cannot read {}: asked for {} bytes at {offset}, got {}",
                self.name,
                buf.len(),
                array.length()
            )));
        }
        array.copy_to(buf);
        Ok(())
    }
}

fn js_message(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

fn to_js_err(e: LabError) -> JsValue {
    JsValue::from_str(&e.to_string())
}

/// An opened model: its source, its parsed header, its architecture.
struct OpenModel {
    source: JsSource,
    file: ModelFile,
    desc: ModelDesc,
}

/// The lab's heavy state, owned by the worker.
#[wasm_bindgen]
pub struct Lab {
    backend: Backend,
    cancel: Rc<Cell<bool>>,
    model: std::cell::RefCell<Option<Rc<OpenModel>>>,
}

#[wasm_bindgen]
impl Lab {
    /// Brings up the compute backend the page asks for (`choice`: "auto", "gpu" or "cpu",
    /// from the URL's `backend`): WebGPU when allowed and present, else the CPU with the
    /// reason (switched off, no navigator.gpu, no adapter, a software adapter under "auto").
    /// `adapter_name` names the adapter when the browser hides its description.
    pub async fn create(choice: String, adapter_name: String) -> Lab {
        let choice: BackendChoice = choice.parse().unwrap_or_default();
        let backend = if choice == BackendChoice::Cpu {
            Backend::cpu("WebGPU was switched off for this page (?backend=cpu)")
        } else if !has_navigator_gpu() {
            Backend::cpu("this browser has no WebGPU (navigator.gpu is missing)")
        } else {
            match GpuContext::new().await {
                Ok(mut gpu) => {
                    gpu.name_if_unnamed(&adapter_name);
                    if choice == BackendChoice::Gpu {
                        Backend::with_gpu(gpu)
                    } else {
                        Backend::auto_from(gpu)
                    }
                }
                Err(e) => Backend::cpu(e.to_string()),
            }
        };
        Lab {
            backend,
            cancel: Rc::new(Cell::new(false)),
            model: Default::default(),
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

    /// Opens a model (reads its header only) and makes it current; on any error the
    /// previous model stays. `config_json` is the Hugging Face config.json, if the user gave
    /// one. Resolves to the model's summary and architecture.
    pub fn open_model(
        &self,
        source: JsValue,
        config_json: Option<String>,
    ) -> Result<JsValue, JsValue> {
        let source = JsSource::from_js(source)?;
        let config =
            match config_json {
                Some(text) => Some(serde_json::from_str::<serde_json::Value>(&text).map_err(
                    |e| JsValue::from_str(&format!("config.json is not valid JSON: {e}")),
                )?),
                None => None,
            };
        let file = ModelFile::open(&source).map_err(to_js_err)?;
        let desc = describe(&file, config.as_ref());
        #[derive(Serialize)]
        struct Opened<'a> {
            info: crate::stats::model::ModelInfo,
            desc: &'a ModelDesc,
            tensors: &'a [crate::io::TensorInfo],
        }
        let out = to_js(&Opened {
            info: model_info(&source.name, &file, &desc),
            desc: &desc,
            tensors: &file.tensors,
        })?;
        *self.model.borrow_mut() = Some(Rc::new(OpenModel { source, file, desc }));
        Ok(out)
    }

    /// Statistics of every tensor and block of the current model. `experiment` is the
    /// page's Experiment (its stats options are used and it is echoed in the report);
    /// `on_progress(tensor, done, total)` follows the tensors.
    pub async fn model_stats(
        &self,
        experiment: JsValue,
        on_progress: js_sys::Function,
    ) -> Result<JsValue, JsValue> {
        let experiment: Experiment = serde_wasm_bindgen::from_value(experiment)
            .map_err(|e| JsValue::from_str(&format!("bad experiment: {e}")))?;
        let model = self
            .model
            .borrow()
            .clone()
            .ok_or_else(|| JsValue::from_str("no model is open"))?;
        self.cancel.set(false);
        let ctl = WebControl {
            cancel: &self.cancel,
            on_progress: &on_progress,
        };
        let mut report = model_stats(
            &self.backend,
            &model.source,
            &model.file,
            &model.desc,
            &experiment.stats,
            &ctl,
        )
        .await
        .map_err(to_js_err)?;
        report.experiment = Some(experiment);
        to_js(&report)
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
