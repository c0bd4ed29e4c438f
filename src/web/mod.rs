//! The page's face of the core (wasm32 only): the API the Web Worker calls. The worker owns
//! the one `Lab`; the page only sends requests and draws replies (see www/src/worker.ts).
//! All platform code (wasm-bindgen, js-sys, web-sys) lives in this module.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::compute::{cpu, Backend, BackendChoice, Bins, GpuContext, Matrix, Metric, RunControl};
use crate::experiment::{
    Experiment, LabSpec, PruneResult, Report, TrainResult, BUILTIN_MODEL, BUILTIN_TEXTS,
    EXPERIMENT_VERSION,
};
use crate::io::{ByteSource, Format, ModelFile};
use crate::model::causal::{load_causal_lm, CausalLm};
use crate::model::llama::to_vec;
use crate::model::{describe, ModelDesc};
use crate::prune::driver::{export_safetensors, hf_config, prune_model_reusing, PruneRun};
use crate::sebra::gpu::GpuCeEngine;
use crate::stats::model::{model_info, model_stats};
use crate::stats::tensor_stats;
use crate::stats::Histogram;
use crate::synth::weights;
use crate::tokenizer::TextTokenizer;
use crate::train::data::{Corpus, Tokenizer};
use crate::train::export::{hf_config as hf_config_train, write_safetensors};
use crate::train::gpu::GpuSteps;
use crate::train::sample::sample;
use crate::train::{CpuSteps, NormPlacement, Quiet, StepEngine, StepRecord, TrainOptions, Trainer};
use crate::LabError;
use futures_channel::oneshot;

/// Most values the page's compute check accepts (1 GiB of f32 would not leave room for
/// anything else in wasm's 4 GiB).
const MAX_SYNTH_VALUES: usize = 64 << 20;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// What the page needs before it draws its controls: every lab's default experiment (the
/// one place defaults are defined is Rust), the built-in model and texts, and the version.
#[wasm_bindgen]
pub fn lab_defaults() -> Result<JsValue, JsValue> {
    #[derive(Serialize)]
    struct Defaults {
        version: u32,
        experiments: Vec<Experiment>,
        builtin_model: &'static str,
        builtin_texts: &'static [&'static str],
        owl: crate::prune::driver::OwlOptions,
    }
    to_js(&Defaults {
        version: EXPERIMENT_VERSION,
        experiments: LabSpec::defaults()
            .into_iter()
            .map(Experiment::from)
            .collect(),
        builtin_model: BUILTIN_MODEL,
        builtin_texts: &BUILTIN_TEXTS,
        owl: crate::prune::driver::OwlOptions::default(),
    })
}

/// Reads the page's address (or any link) into `{experiment, view}` (`view`: the pairs
/// that ride along, `view.*` and `backend`), upgrading version-1 links; the same reader as
/// `layerlab run LINK`.
#[wasm_bindgen]
pub fn experiment_from_link(link: String) -> Result<JsValue, JsValue> {
    let (experiment, view) = Experiment::from_link(&link).map_err(to_js_err)?;
    #[derive(Serialize)]
    struct Read {
        experiment: Experiment,
        view: Vec<(String, String)>,
    }
    to_js(&Read { experiment, view })
}

/// An experiment from the page (JSON text), through the one parser every face uses.
fn parse_experiment(json: &str) -> Result<Experiment, JsValue> {
    Experiment::parse(json).map_err(|e| JsValue::from_str(&format!("bad experiment: {e}")))
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

/// Progress out through a JS callback, `on_progress(stage, done, total, metrics?)`; cancel
/// in through a flag the worker sets.
struct WebControl<'a> {
    cancel: &'a Cell<bool>,
    on_progress: &'a js_sys::Function,
    /// The last (done, total), which a step's metrics are sent with.
    last: Cell<(u64, u64)>,
}

impl<'a> WebControl<'a> {
    fn new(cancel: &'a Cell<bool>, on_progress: &'a js_sys::Function) -> Self {
        WebControl {
            cancel,
            on_progress,
            last: Cell::new((0, 0)),
        }
    }
}

impl RunControl for WebControl<'_> {
    fn progress(&self, stage: &str, done: u64, total: u64) {
        self.last.set((done, total));
        let _ = self.on_progress.call3(
            &JsValue::NULL,
            &JsValue::from_str(stage),
            &JsValue::from_f64(done as f64),
            &JsValue::from_f64(total as f64),
        );
    }

    fn metrics(&self, stage: &str, step: u64, values: &[(&str, Metric)]) {
        #[derive(Serialize)]
        struct StepMetrics<'v> {
            step: u64,
            values: std::collections::BTreeMap<&'v str, &'v Metric>,
        }
        let metrics = StepMetrics {
            step,
            values: values.iter().map(|(k, v)| (*k, v)).collect(),
        };
        let Ok(metrics) = to_js(&metrics) else {
            return;
        };
        let (done, total) = self.last.get();
        let args = js_sys::Array::of4(
            &JsValue::from_str(stage),
            &JsValue::from_f64(done as f64),
            &JsValue::from_f64(total as f64),
            &metrics,
        );
        let _ = self.on_progress.apply(&JsValue::NULL, &args);
    }

    fn cancelled(&self) -> bool {
        self.cancel.get()
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + '_>> {
        Box::pin(yield_to_worker())
    }
}

/// A timer of `ms` milliseconds (a paused run's wait between looks at Resume and Stop).
async fn sleep_in_worker(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
        let _ = scope.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

/// A zero-delay timer: the worker's queued messages ("cancel") run first.
async fn yield_to_worker() {
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
        let _ = scope.set_timeout_with_callback(&resolve);
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

/// `on_progress(stage, done, total, metrics)` with `metrics` any serialisable value.
fn post_progress<T: Serialize>(
    on_progress: &js_sys::Function,
    stage: &str,
    done: usize,
    total: usize,
    metrics: &T,
) {
    let Ok(metrics) = to_js(metrics) else {
        return;
    };
    let args = js_sys::Array::of4(
        &JsValue::from_str(stage),
        &JsValue::from_f64(done as f64),
        &JsValue::from_f64(total as f64),
        &metrics,
    );
    let _ = on_progress.apply(&JsValue::NULL, &args);
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

/// An opened model: its source, its parsed header, its architecture, and the companions
/// the user gave with it (config.json, tokenizer.json).
struct OpenModel {
    source: JsSource,
    file: ModelFile,
    desc: ModelDesc,
    config: Option<serde_json::Value>,
    tokenizer_json: Option<String>,
}

impl OpenModel {
    /// The model for the forward pass: LLaMA family, GPT-2 or OPT, as the file declares.
    fn causal_lm(&self) -> crate::Result<Box<dyn CausalLm + '_>> {
        load_causal_lm(&self.source, &self.file, self.config.as_ref())
    }

    fn tokenizer(&self) -> crate::Result<TextTokenizer> {
        match (&self.tokenizer_json, self.file.format) {
            (Some(json), _) => TextTokenizer::from_json(json.as_bytes(), "tokenizer.json"),
            (None, Format::Gguf) => TextTokenizer::from_gguf(&self.file, &self.source.name),
            (None, Format::Safetensors) => Err(LabError::invalid(format!(
                "{}: a safetensors model needs its tokenizer.json: open the model's folder, or \
                 the model file together with tokenizer.json and config.json",
                self.source.name
            ))),
        }
    }
}

/// The last pruning run: the pruned weights stay here for the download and the histograms.
struct LastRun {
    model: Rc<OpenModel>,
    run: PruneRun,
    experiment: Experiment,
}

/// The last training run's model, kept for Sample and Download until the next run.
struct Trained {
    model: crate::train::model::Model,
    tokenizer: Tokenizer,
    options: TrainOptions,
}

/// Most characters one Sample generates (each runs a whole forward over the context).
const MAX_SAMPLE: usize = 4000;

/// What a Sample asks for.
#[derive(Clone)]
struct SampleAsk {
    prompt: String,
    length: usize,
    temperature: f64,
    seed: u64,
}

/// A Sample asked while a run trains: the run answers it between two steps.
struct SampleRequest {
    ask: SampleAsk,
    reply: oneshot::Sender<Result<String, String>>,
}

/// The text `model` writes after the prompt (its own seeded stream: the run's batches and
/// weights are untouched).
fn sample_text(
    model: &crate::train::model::Model,
    tokenizer: &Tokenizer,
    ctx: usize,
    ask: &SampleAsk,
) -> crate::Result<String> {
    let ids = tokenizer.encode(&ask.prompt)?;
    let out = sample(model, &ids, ask.length, ask.temperature, ask.seed, ctx)?;
    tokenizer.decode(&out)
}

/// While a training run is in progress: Sample asks the run. When the run ends (finished,
/// stopped or failed), Samples it has not answered are dropped, and answered from the model
/// it left (or refused when there is none).
struct LiveRun<'a>(&'a Lab);

impl<'a> LiveRun<'a> {
    fn start(lab: &'a Lab) -> Self {
        lab.training.set(true);
        LiveRun(lab)
    }
}

impl Drop for LiveRun<'_> {
    fn drop(&mut self) {
        self.0.training.set(false);
        self.0.samples.borrow_mut().clear();
    }
}

/// A training step's metrics, as the page's charts take them.
#[derive(Serialize)]
struct TrainMetrics<T> {
    step: usize,
    values: T,
}

/// The lab's heavy state, owned by the worker.
#[wasm_bindgen]
pub struct Lab {
    backend: Backend,
    cancel: Rc<Cell<bool>>,
    model: std::cell::RefCell<Option<Rc<OpenModel>>>,
    last_run: std::cell::RefCell<Option<LastRun>>,
    /// The last dense perplexity measured, and what it depends on: a later run on the same
    /// model, text and evaluation settings reuses it.
    dense_ppl: std::cell::RefCell<Option<DensePpl>>,
    trained: std::cell::RefCell<Option<Trained>>,
    /// Pause: the training run in progress holds after its current step while true.
    paused: Cell<bool>,
    /// True while a training run is in progress (Sample then asks the run).
    training: Cell<bool>,
    /// Samples asked during the run in progress, answered between its steps.
    samples: std::cell::RefCell<Vec<SampleRequest>>,
    /// The bias lab's last generated data, keyed by the options it depends on.
    sebra_data: std::cell::RefCell<Option<(String, Rc<crate::sebra::data::SebraData>)>>,
}

impl Lab {
    /// The bias lab's data for `opts`: the kept data when they came from the same options,
    /// else generated now (the previous data go first: two need not fit at once).
    fn sebra_data_for(
        &self,
        opts: &crate::sebra::SebraOptions,
    ) -> Result<Rc<crate::sebra::data::SebraData>, JsValue> {
        let o = opts;
        let key = serde_json::json!([
            o.classes,
            o.image,
            o.train_per_class,
            o.val_per_class,
            o.test_per_class,
            o.bias,
            o.noise,
            o.seed
        ])
        .to_string();
        if let Some((k, d)) = self.sebra_data.borrow().as_ref() {
            if *k == key {
                return Ok(d.clone());
            }
        }
        *self.sebra_data.borrow_mut() = None;
        let data = Rc::new(crate::sebra::data::generate(opts).map_err(to_js_err)?);
        *self.sebra_data.borrow_mut() = Some((key, data.clone()));
        Ok(data)
    }
}

/// A measured dense perplexity and what it was measured on.
struct DensePpl {
    model: Rc<OpenModel>,
    eval_text: String,
    eval: String,
    perplexity: f64,
}

/// A `Write` that hands what is written to JavaScript in pieces of `PART` bytes.
struct JsParts {
    buf: Vec<u8>,
    parts: js_sys::Array,
}

impl JsParts {
    const PART: usize = 8 << 20;

    fn hand_over(&mut self) {
        if !self.buf.is_empty() {
            self.parts
                .push(&js_sys::Uint8Array::from(self.buf.as_slice()).into());
            self.buf.clear();
        }
    }
}

impl std::io::Write for JsParts {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= Self::PART {
            self.hand_over();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.hand_over();
        Ok(())
    }
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
            last_run: Default::default(),
            dense_ppl: Default::default(),
            trained: Default::default(),
            paused: Cell::new(false),
            training: Cell::new(false),
            samples: Default::default(),
            sebra_data: Default::default(),
        }
    }

    /// `{kind, name, reason}` for the page's backend line.
    pub fn backend(&self) -> Result<JsValue, JsValue> {
        to_js(&self.backend.info())
    }

    /// Statistics of a seeded synthetic matrix: the compute check's experiment (JSON);
    /// `on_progress(stage, done, total)` is called between steps. Resolves to the same
    /// report as `layerlab reduce --json` and `layerlab run`.
    pub async fn reduce(
        &self,
        experiment: String,
        on_progress: js_sys::Function,
    ) -> Result<JsValue, JsValue> {
        let experiment = parse_experiment(&experiment)?;
        let LabSpec::Compute(spec) = &experiment.lab else {
            return Err(JsValue::from_str(
                "the compute check needs a compute experiment",
            ));
        };
        let n = spec.synth.rows.saturating_mul(spec.synth.cols);
        if n > MAX_SYNTH_VALUES {
            return Err(JsValue::from_str(&format!(
                "a [{}, {}] matrix is too big for the page: at most {MAX_SYNTH_VALUES} values",
                spec.synth.rows, spec.synth.cols
            )));
        }
        self.cancel.set(false);
        let data = weights(spec.synth);
        let m = Matrix::new(&data, spec.synth.rows, spec.synth.cols)
            .map_err(|e| JsValue::from_str(&e.to_string()))?;
        let ctl = WebControl::new(&self.cancel, &on_progress);
        let result = tensor_stats(&self.backend, m, &spec.stats, &ctl)
            .await
            .map_err(|e| JsValue::from_str(&e.to_string()))?;
        to_js(&Report { experiment, result })
    }

    /// Opens a model (reads its header only) and makes it current; on any error the
    /// previous model stays. `config_json` and `tokenizer_json` are the Hugging Face
    /// config.json and tokenizer.json, if the user gave them. Resolves to the model's
    /// summary and architecture.
    pub fn open_model(
        &self,
        source: JsValue,
        config_json: Option<String>,
        tokenizer_json: Option<String>,
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
        let mut info = model_info(&source.name, &file, &desc);
        // The layer view opens any model; a LLaMA-family model the forward pass would refuse
        // (an unknown rope_type, a tensor it does not use, ...) says so now, by name.
        if let Some(refusal) =
            crate::model::causal::llama_forward_refusal(&file, config.as_ref(), &source.name)
        {
            info.notice = Some(match info.notice {
                Some(n) => format!("{n} {refusal}"),
                None => refusal,
            });
        }
        let out = to_js(&Opened {
            info,
            desc: &desc,
            tensors: &file.tensors,
        })?;
        // A dense perplexity belongs to the model it was measured on.
        *self.dense_ppl.borrow_mut() = None;
        *self.model.borrow_mut() = Some(Rc::new(OpenModel {
            source,
            file,
            desc,
            config,
            tokenizer_json,
        }));
        Ok(out)
    }

    fn current_model(&self) -> Result<Rc<OpenModel>, JsValue> {
        self.model
            .borrow()
            .clone()
            .ok_or_else(|| JsValue::from_str("no model is open"))
    }

    /// Prunes the current model as the pruning experiment (JSON) says, calibrating on
    /// `calib` and measuring perplexity on `eval` (the texts themselves); `on_progress(stage,
    /// done, total)` follows the run. Resolves to the report, the same type as `layerlab
    /// prune --json` and `layerlab run` write; the pruned weights stay for `pruned_model`
    /// and `prune_histograms` until the next run.
    pub async fn prune(
        &self,
        experiment: String,
        calib: String,
        eval: String,
        on_progress: js_sys::Function,
    ) -> Result<JsValue, JsValue> {
        let experiment = parse_experiment(&experiment)?;
        let LabSpec::Prune(spec) = experiment.lab.clone() else {
            return Err(JsValue::from_str(
                "the pruning lab needs a prune experiment",
            ));
        };
        let model = self.current_model()?;
        // The previous run's weights go first: two pruned models need not fit at once.
        *self.last_run.borrow_mut() = None;
        self.cancel.set(false);
        let ctl = WebControl::new(&self.cancel, &on_progress);
        let (run, tokenizer) = {
            let lm = model.causal_lm().map_err(to_js_err)?;
            let tok = model.tokenizer().map_err(to_js_err)?;
            let calib_ids = tok.encode(&calib).map_err(to_js_err)?;
            let eval_ids = tok.encode(&eval).map_err(to_js_err)?;
            let eval_key = serde_json::to_string(&spec.options.eval)
                .map_err(|e| JsValue::from_str(&e.to_string()))?;
            let known = self.dense_ppl.borrow().as_ref().and_then(|d| {
                (Rc::ptr_eq(&d.model, &model) && d.eval_text == eval && d.eval == eval_key)
                    .then_some(d.perplexity)
            });
            let run = prune_model_reusing(
                &self.backend,
                lm.as_ref(),
                &calib_ids,
                Some(&eval_ids),
                &spec.options,
                &ctl,
                known,
            )
            .await
            .map_err(to_js_err)?;
            if let Some(perplexity) = run.report.perplexity.as_ref().and_then(|p| p.dense) {
                *self.dense_ppl.borrow_mut() = Some(DensePpl {
                    model: model.clone(),
                    eval_text: eval,
                    eval: eval_key,
                    perplexity,
                });
            }
            (run, tok.describe.clone())
        };
        let out = to_js(&Report {
            experiment: experiment.clone(),
            result: PruneResult {
                model: model.source.name.clone(),
                calib: spec.calib_text.describe(),
                eval: spec.eval_text.as_ref().map(|t| t.describe()),
                tokenizer,
                report: run.report.clone(),
                backend: self.backend.info(),
            },
        })?;
        *self.last_run.borrow_mut() = Some(LastRun {
            model,
            run,
            experiment,
        });
        Ok(out)
    }

    /// The last run's pruned model as safetensors with Hugging Face names, in pieces of
    /// about 8 MB (`parts`, an array of Uint8Array for a Blob: the file is written one block
    /// at a time and never held whole in wasm memory), and the config.json transformers
    /// needs for a GGUF source (null for safetensors, whose own config.json stays valid):
    /// `{parts, config, name}`.
    pub fn pruned_model(&self) -> Result<JsValue, JsValue> {
        let last = self.last_run.borrow();
        let last = last
            .as_ref()
            .ok_or_else(|| JsValue::from_str("run a pruning experiment first"))?;
        let lm = last.model.causal_lm().map_err(to_js_err)?;
        let extra = serde_json::json!({ "experiment": last.experiment });
        let mut parts = JsParts {
            buf: Vec::with_capacity(JsParts::PART),
            parts: js_sys::Array::new(),
        };
        export_safetensors(lm.as_ref(), &last.run, &extra, &mut parts).map_err(to_js_err)?;
        let config = (last.model.file.format == Format::Gguf)
            .then(|| serde_json::to_string_pretty(&hf_config(lm.as_ref())).unwrap_or_default());
        let o = &last.run.report.options;
        let stem = last
            .model
            .source
            .name
            .trim_end_matches(".gguf")
            .trim_end_matches(".safetensors")
            .to_string();
        let what = match o.nm {
            Some((n, m)) => format!("{n}of{m}"),
            None => format!("{}pct", (o.sparsity * 100.0).round()),
        };
        let owl = if o.owl.is_some() { "owl-" } else { "" };
        let name = format!("{stem}-{owl}{}-{what}.safetensors", o.method.name());
        let result = js_sys::Object::new();
        let set = |k: &str, v: &JsValue| js_sys::Reflect::set(&result, &k.into(), v);
        set("parts", &parts.parts.into())?;
        set(
            "config",
            &config.map_or(JsValue::NULL, |c| JsValue::from_str(&c)),
        )?;
        set("name", &JsValue::from_str(&name))?;
        Ok(result.into())
    }

    /// Histograms of one pruned linear before (the file's weights) and after pruning, over
    /// the same `bins` bins spanning both: `{before, after}`.
    pub fn prune_histograms(&self, tensor: String, bins: u32) -> Result<JsValue, JsValue> {
        let last = self.last_run.borrow();
        let last = last
            .as_ref()
            .ok_or_else(|| JsValue::from_str("run a pruning experiment first"))?;
        let (index, lin) = last
            .run
            .blocks
            .iter()
            .find_map(|b| {
                b.linears
                    .iter()
                    .find(|l| l.tensor == tensor)
                    .map(|l| (b.index, l))
            })
            .ok_or_else(|| JsValue::from_str(&format!("{tensor} was not pruned in this run")))?;
        // The run keeps only which weights became zero: the block is read from the file and
        // the pruned linear rebuilt from it (one block, ~14 MB for a 135M model).
        let lm = last.model.causal_lm().map_err(to_js_err)?;
        let block = lm.load_block(index).map_err(to_js_err)?;
        let dense = block
            .linear(&lin.role)
            .ok_or_else(|| JsValue::from_str(&format!("{tensor} is not in block {index}")))?;
        let before = to_vec(&dense.weight).map_err(to_js_err)?;
        let mut after = before.clone();
        lin.apply(&mut after).map_err(to_js_err)?;
        let (lo, hi) = before
            .iter()
            .chain(after.iter())
            .filter(|x| x.is_finite())
            .fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let b = Bins::new(lo, hi, bins).map_err(to_js_err)?;
        let histogram = |data: &[f32]| Histogram {
            lo,
            hi,
            counts: cpu::tensor_histogram(data, &b),
        };
        #[derive(Serialize)]
        struct Pair {
            before: Histogram,
            after: Histogram,
        }
        to_js(&Pair {
            before: histogram(&before),
            after: histogram(&after),
        })
    }

    /// Statistics of every tensor and block of the current model. `experiment` is the
    /// page's Experiment (its stats options are used and it is echoed in the report);
    /// `on_progress(tensor, done, total)` follows the tensors.
    pub async fn model_stats(
        &self,
        experiment: String,
        on_progress: js_sys::Function,
    ) -> Result<JsValue, JsValue> {
        let experiment = parse_experiment(&experiment)?;
        let LabSpec::Layers(spec) = &experiment.lab else {
            return Err(JsValue::from_str(
                "the layer view needs a layers experiment",
            ));
        };
        let model = self
            .model
            .borrow()
            .clone()
            .ok_or_else(|| JsValue::from_str("no model is open"))?;
        self.cancel.set(false);
        let ctl = WebControl::new(&self.cancel, &on_progress);
        let result = model_stats(
            &self.backend,
            &model.source,
            &model.file,
            &model.desc,
            &spec.stats_options(),
            &ctl,
        )
        .await
        .map_err(to_js_err)?;
        to_js(&Report { experiment, result })
    }

    /// Trains the placement `norm` ("pre", "post" or "mix") of the training experiment (JSON)
    /// on `text` (the text itself), one step at a time, yielding to the worker between
    /// steps: on the GPU where the page's backend is one (`GpuSteps`, each step awaited),
    /// else on the CPU. Every step posts `on_progress("train", step + 1, steps, {step,
    /// values: {loss, lr, grad_norm, hidden_rms, val_loss?, tokens_per_s}})`, every
    /// evaluation `on_progress("train", step + 1, steps, {step, values: {angular}})`.
    /// `cancel` is Stop: the run ends after the step in progress and is kept (`stopped:
    /// true`, no layer removal). `train_pause(true)` holds the run after the step in progress
    /// (`on_progress("paused", steps done, steps)`) until `train_pause(false)`; Samples asked
    /// meanwhile (`train_sample`) are answered between steps from the current weights.
    /// If the GPU fails mid-run, the run goes back to its last evaluation (weights and Adam's
    /// moments), posts `{step, values: {rewind: steps kept, notice}}` and goes on on the CPU;
    /// the report's `backend` says so. Resolves to the report `layerlab run` writes for this
    /// experiment, with this one run in `runs`; the model stays for `train_sample` and
    /// `train_export`.
    pub async fn train(
        &self,
        experiment: String,
        norm: String,
        text: String,
        on_progress: js_sys::Function,
    ) -> Result<JsValue, JsValue> {
        let experiment = parse_experiment(&experiment)?;
        let LabSpec::Train(spec) = &experiment.lab else {
            return Err(JsValue::from_str(
                "the training lab needs a train experiment",
            ));
        };
        if spec.tokenizer != "char" {
            return Err(JsValue::from_str(&format!(
                "the page trains with the character tokenizer (char) only, not '{}': run a BPE \
                 tokenizer with layerlab train --tokenizer MODEL",
                spec.tokenizer
            )));
        }
        let norm: NormPlacement = norm.parse().map_err(|e: String| JsValue::from_str(&e))?;
        let opts = spec.options_for(norm);
        // The previous model goes first: two need not fit at once.
        *self.trained.borrow_mut() = None;
        self.cancel.set(false);
        let tokenizer = Tokenizer::char_level(&text).map_err(to_js_err)?;
        let ids = tokenizer.encode(&text).map_err(to_js_err)?;
        let corpus = Corpus::split(ids, tokenizer.vocab_size(), opts.ctx).map_err(to_js_err)?;
        let gpu = self.backend.gpu();
        let engine: Box<dyn StepEngine + '_> = match &gpu {
            Some(g) => Box::new(GpuSteps::new(g)),
            None => Box::new(CpuSteps::default()),
        };
        let mut trainer = Trainer::with_engine(&corpus, &opts, None, engine).map_err(to_js_err)?;
        drop(corpus);
        let _live = LiveRun::start(self);
        let mut stopped = false;
        // (steps done when the GPU failed, steps kept, the failure)
        let mut gpu_failure: Option<(usize, usize, String)> = None;
        loop {
            let ran = self
                .train_steps(&mut trainer, &tokenizer, &on_progress, &mut stopped)
                .await;
            // The model for the evaluations after the run, Sample and the download.
            let ran = match ran {
                Ok(()) => trainer.sync().await,
                Err(e) => Err(e),
            };
            match ran {
                Ok(()) => break,
                Err(LabError::GpuFailed(msg)) if gpu.is_some() && gpu_failure.is_none() => {
                    let at = trainer.steps_done();
                    let kept = trainer.fall_back().map_err(to_js_err)?;
                    // The backend's notice, worded for a run that goes on from a saved state.
                    let notice = self.backend.gpu_failed_then(
                        &msg,
                        &format!("after step {at} of {}", opts.steps),
                        "the run went on on the CPU",
                    );
                    let notice = if kept == 0 {
                        format!(
                            "{notice} It started again from the initial weights (no evaluation \
                             had saved the GPU's state yet)."
                        )
                    } else {
                        format!(
                            "{notice} It went on from the weights and Adam moments saved at step \
                             {kept}."
                        )
                    };
                    #[derive(Serialize)]
                    struct Rewind<'a> {
                        rewind: usize,
                        notice: &'a str,
                    }
                    post_progress(
                        &on_progress,
                        "train",
                        kept,
                        opts.steps,
                        &TrainMetrics {
                            step: kept,
                            values: Rewind {
                                rewind: kept,
                                notice: &notice,
                            },
                        },
                    );
                    gpu_failure = Some((at, kept, msg));
                }
                Err(e) => return Err(to_js_err(e)),
            }
        }
        if !stopped && opts.layers > 0 {
            // The layer-removal pass: one validation pass per block.
            post_progress(
                &on_progress,
                "layer removal",
                0,
                1,
                &serde_json::Value::Null,
            );
            yield_to_worker().await;
        }
        let run = trainer.report(stopped, &Quiet);
        let backend = match (&gpu, &gpu_failure) {
            (Some(g), None) => crate::compute::BackendInfo {
                kind: "gpu".into(),
                name: g.describe(),
                reason: None,
            },
            (Some(g), Some((at, kept, msg))) => crate::train::cpu_backend_info(&if *kept == 0 {
                format!(
                    "the GPU ({}) failed after step {at} ({msg}), before the first evaluation: \
                     the run started again on the CPU",
                    g.describe()
                )
            } else {
                format!(
                    "the GPU ({}) failed after step {at} ({msg}): steps 1 to {kept} were \
                     trained on it, and the rest on the CPU from the weights and Adam moments \
                     after step {kept}",
                    g.describe()
                )
            }),
            (None, _) => self.backend.info(),
        };
        let result = TrainResult {
            text: spec.text.describe(),
            tokenizer: tokenizer.describe(),
            backend,
            runs: vec![run.report],
        };
        let out = to_js(&Report {
            experiment: experiment.clone(),
            result,
        })?;
        *self.trained.borrow_mut() = Some(Trained {
            model: run.model,
            tokenizer,
            options: opts,
        });
        Ok(out)
    }

    /// `train`'s steps until the last or a Stop, with Pause and the Samples asked between
    /// them; a GPU failure comes back as `GpuFailed` for `train` to fall back on the CPU.
    async fn train_steps(
        &self,
        trainer: &mut Trainer<'_>,
        tokenizer: &Tokenizer,
        on_progress: &js_sys::Function,
        stopped: &mut bool,
    ) -> crate::Result<()> {
        #[derive(Serialize)]
        struct StepValues<'a> {
            #[serde(flatten)]
            record: &'a StepRecord,
            tokens_per_s: f64,
        }
        #[derive(Serialize)]
        struct EvalValues<'a> {
            angular: &'a [Vec<Option<f64>>],
        }
        let of = trainer.options().steps;
        while !trainer.done() {
            yield_to_worker().await;
            self.serve_samples(trainer, tokenizer).await?;
            if self.paused.get() && !self.cancel.get() {
                let done = trainer.steps_done();
                post_progress(on_progress, "paused", done, of, &serde_json::Value::Null);
                while self.paused.get() && !self.cancel.get() {
                    sleep_in_worker(100).await;
                    self.serve_samples(trainer, tokenizer).await?;
                }
                post_progress(on_progress, "train", done, of, &serde_json::Value::Null);
            }
            if self.cancel.get() {
                *stopped = true;
                break;
            }
            trainer.step(&Quiet).await?;
            let Some(record) = trainer.records().last() else {
                continue;
            };
            let step = record.step;
            if record.val_loss.is_some() {
                if let Some(a) = trainer.angular_distance().last() {
                    let values = EvalValues { angular: &a.matrix };
                    post_progress(
                        on_progress,
                        "train",
                        step + 1,
                        of,
                        &TrainMetrics { step, values },
                    );
                }
            }
            let values = StepValues {
                record,
                tokens_per_s: trainer.tokens_per_s(),
            };
            post_progress(
                on_progress,
                "train",
                step + 1,
                of,
                &TrainMetrics { step, values },
            );
        }
        Ok(())
    }

    /// Answers the Samples asked while the run trains, from its current weights (read back
    /// from the GPU first where it trains there). Sampling has its own seeded stream and
    /// reads the weights only: the run's numbers stay the same.
    async fn serve_samples(
        &self,
        trainer: &mut Trainer<'_>,
        tokenizer: &Tokenizer,
    ) -> crate::Result<()> {
        if self.samples.borrow().is_empty() {
            return Ok(());
        }
        trainer.sync().await?;
        let requests = std::mem::take(&mut *self.samples.borrow_mut());
        let ctx = trainer.options().ctx;
        for r in requests {
            let text =
                sample_text(trainer.model(), tokenizer, ctx, &r.ask).map_err(|e| e.to_string());
            let _ = r.reply.send(text);
        }
        Ok(())
    }

    /// Holds the training run in progress after its current step (`paused` true), or lets
    /// it go on. A held run still hears Stop and answers Sample.
    pub fn train_pause(&self, paused: bool) {
        self.paused.set(paused);
    }

    /// `length` characters that the model writes after `prompt`, at `temperature` (0:
    /// always the likeliest), seeded by `seed` (a whole number): during a run from its
    /// current weights (answered between its steps), else from the last trained model.
    pub async fn train_sample(
        &self,
        prompt: String,
        length: u32,
        temperature: f64,
        seed: f64,
    ) -> Result<String, JsValue> {
        if !(seed >= 0.0 && seed.fract() == 0.0 && seed < 9.007e15) {
            return Err(JsValue::from_str(&format!(
                "the seed must be a whole number >= 0, not {seed}"
            )));
        }
        let length = length as usize;
        if length > MAX_SAMPLE {
            return Err(JsValue::from_str(&format!(
                "at most {MAX_SAMPLE} characters at a time, not {length}"
            )));
        }
        let ask = SampleAsk {
            prompt,
            length,
            temperature,
            seed: seed as u64,
        };
        if self.training.get() {
            let (reply, answer) = oneshot::channel();
            self.samples.borrow_mut().push(SampleRequest {
                ask: ask.clone(),
                reply,
            });
            // A run that ends first drops the request: its model is then the trained one.
            if let Ok(text) = answer.await {
                return text.map_err(|e| JsValue::from_str(&e));
            }
        }
        let trained = self.trained.borrow();
        let t = trained
            .as_ref()
            .ok_or_else(|| JsValue::from_str("train a model first"))?;
        sample_text(&t.model, &t.tokenizer, t.options.ctx, &ask).map_err(to_js_err)
    }

    /// The last trained model as safetensors (LLaMA names, F32) and its config.json (which
    /// records the placement and the character vocabulary): `{model, config, name}`.
    pub fn train_export(&self) -> Result<JsValue, JsValue> {
        let trained = self.trained.borrow();
        let t = trained
            .as_ref()
            .ok_or_else(|| JsValue::from_str("train a model first"))?;
        let mut bytes = Vec::new();
        write_safetensors(&mut bytes, &t.model).map_err(to_js_err)?;
        let config =
            serde_json::to_string_pretty(&hf_config_train(&t.model.cfg, &t.options, &t.tokenizer))
                .unwrap_or_default();
        let o = &t.options;
        let name = format!(
            "layerlab-{}-{}x{}.safetensors",
            serde_json::to_value(o.norm)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            o.layers,
            o.width
        );
        let result = js_sys::Object::new();
        let set = |k: &str, v: &JsValue| js_sys::Reflect::set(&result, &k.into(), v);
        set("model", &js_sys::Uint8Array::from(bytes.as_slice()).into())?;
        set("config", &JsValue::from_str(&config))?;
        set("name", &JsValue::from_str(&name))?;
        Ok(result.into())
    }

    /// Runs the bias-lab experiment (JSON): the data from the seed, then ERM, Sebra's Stage 1
    /// (ranking) and Stage 2, the oracle, each scored on the test split, one batch (or one
    /// 256-image evaluation chunk) per `SebraRun::step`, yielding to the worker at least every
    /// ~30 ms. Where the page's backend is a GPU one (the training tab's rule: `Lab::create`),
    /// the training batches of ERM, Stage 1 and the oracle run on it (`GpuCeEngine`, each
    /// step awaited; the rest on the CPU); if the GPU fails mid-run, the phase it was training
    /// starts over on the CPU (`SebraRun::fall_back`), a progress post `{step, values:
    /// {restart: phase, notice}}` says so (the page drops that phase's points), and the
    /// report's `backend` names where each phase ran. Progress: `on_progress(phase, done, 1000, {step, values})` with
    /// `done` the run's estimated fraction in thousandths (it never goes back; an ETA can be
    /// drawn from it), and `values`: `fraction`, `epoch`, `of`, `scoring` (0/1), and when an
    /// epoch ended `loss`; when a ranking epoch ended `rank_epoch`, `remaining` and
    /// `deselected` ([class][group: both, colour only, texture only, none]). `cancel` ends the
    /// run with "the run was cancelled". Resolves to the report `layerlab run` writes for
    /// this experiment. The data stay for `sebra_images`.
    pub async fn sebra(
        &self,
        experiment: String,
        on_progress: js_sys::Function,
    ) -> Result<JsValue, JsValue> {
        use crate::sebra::run::{EpochRecord, Phase, RankEpoch, SebraMonitor, SebraRun};
        let experiment = parse_experiment(&experiment)?;
        let LabSpec::Sebra(spec) = &experiment.lab else {
            return Err(JsValue::from_str("the bias lab needs a sebra experiment"));
        };
        let opts = spec.options.clone();
        opts.check().map_err(to_js_err)?;
        self.cancel.set(false);
        post_progress(&on_progress, "data", 0, 1000, &serde_json::Value::Null);
        yield_to_worker().await;
        let started = web_time::Instant::now();
        let data = self.sebra_data_for(&opts)?;
        let data_s = started.elapsed().as_secs_f64();

        /// What the steps since the last post finished.
        struct Heard<'c> {
            cancel: &'c Cell<bool>,
            epoch: std::cell::RefCell<Option<EpochRecord>>,
            ranked: std::cell::RefCell<Option<RankEpoch>>,
        }
        impl SebraMonitor for Heard<'_> {
            fn epoch(&self, r: &EpochRecord) {
                *self.epoch.borrow_mut() = Some(r.clone());
            }
            fn ranked(&self, e: &RankEpoch) {
                *self.ranked.borrow_mut() = Some(e.clone());
            }
            fn cancelled(&self) -> bool {
                self.cancel.get()
            }
        }
        let heard = Heard {
            cancel: &self.cancel,
            epoch: Default::default(),
            ranked: Default::default(),
        };
        let gpu = self.backend.gpu();
        let mut run = SebraRun::new(&opts, &data, data_s).map_err(to_js_err)?;
        if let Some(g) = &gpu {
            run = run.with_ce_engine(Box::new(GpuCeEngine::new(g, &opts).map_err(to_js_err)?));
        }
        let mut steps = 0usize;
        let mut last_yield = web_time::Instant::now();
        loop {
            let more = match run.step(&heard).await {
                Ok(more) => more,
                Err(LabError::GpuFailed(msg)) if gpu.is_some() => {
                    // Once only: after fall_back the run has no engine left to fail.
                    let phase = run.fall_back(&msg).map_err(to_js_err)?;
                    let name = crate::sebra::run::phase_name(phase);
                    let notice = self
                        .backend
                        .gpu_failed(&msg, &format!("in {name}'s training"))
                        .replace(
                            "the run finished on the CPU",
                            &format!("{name} started again on the CPU, and the run went on there"),
                        );
                    heard.epoch.borrow_mut().take();
                    heard.ranked.borrow_mut().take();
                    let p = run.progress();
                    let metrics = serde_json::json!({
                        "step": steps,
                        "values": { "restart": name, "notice": notice, "fraction": p.fraction },
                    });
                    let done = (p.fraction * 1000.0).floor() as usize;
                    post_progress(&on_progress, name, done, 1000, &metrics);
                    continue;
                }
                Err(e) => return Err(to_js_err(e)),
            };
            steps += 1;
            let epoch = heard.epoch.borrow_mut().take();
            let ranked = heard.ranked.borrow_mut().take();
            let due = last_yield.elapsed().as_secs_f64() >= 0.03;
            if !(more && epoch.is_none() && ranked.is_none() && !due) {
                let p = run.progress();
                let mut values = serde_json::json!({
                    "fraction": p.fraction,
                    "epoch": p.epoch,
                    "of": p.of,
                    "scoring": u8::from(p.scoring),
                });
                if let Some(r) = &epoch {
                    values["loss"] = serde_json::json!(r.loss);
                    values["epoch"] = serde_json::json!(r.epoch);
                    values["of"] = serde_json::json!(r.of);
                }
                if let Some(e) = &ranked {
                    values["rank_epoch"] = serde_json::json!(e.epoch);
                    values["remaining"] = serde_json::json!(e.remaining);
                    values["deselected"] = serde_json::json!(e.deselected);
                }
                let phase = match epoch.as_ref().map_or(p.phase, |r| r.phase) {
                    Phase::Erm => "erm",
                    Phase::Rank => "rank",
                    Phase::Mitigate => "mitigate",
                    Phase::Oracle => "oracle",
                };
                let metrics = serde_json::json!({ "step": steps, "values": values });
                let done = (p.fraction * 1000.0).floor() as usize;
                post_progress(&on_progress, phase, done, 1000, &metrics);
            }
            if !more {
                break;
            }
            if due {
                yield_to_worker().await;
                last_yield = web_time::Instant::now();
            }
        }
        let result = run.finish().map_err(to_js_err)?;
        to_js(&Report {
            experiment: Experiment::sebra(spec.clone()),
            result,
        })
    }

    /// Pixels of generated training images of the bias-lab experiment (JSON): the data of
    /// the last run when they came from the same options, else generated (and kept) now.
    /// `{side, classes, labels, groups, rgba}`: every training sample's class and group (0
    /// both cues aligned, 1 only the colour, 2 only the texture, 3 none), and `indices`'
    /// images as S x S RGBA, one after another (a Uint8Array for an ImageData).
    pub fn sebra_images(&self, experiment: String, indices: Vec<u32>) -> Result<JsValue, JsValue> {
        let experiment = parse_experiment(&experiment)?;
        let LabSpec::Sebra(spec) = &experiment.lab else {
            return Err(JsValue::from_str("the bias lab needs a sebra experiment"));
        };
        let data = self.sebra_data_for(&spec.options)?;
        let train = &data.train;
        let side = train.side;
        let plane = side * side;
        let mut rgba = Vec::with_capacity(indices.len() * plane * 4);
        for &i in &indices {
            let i = i as usize;
            if i >= train.len() {
                return Err(JsValue::from_str(&format!(
                    "there is no training image {i}: the split has {}",
                    train.len()
                )));
            }
            let img = train.image(i);
            for p in 0..plane {
                for c in 0..3 {
                    rgba.push((img[c * plane + p].clamp(0.0, 1.0) * 255.0).round() as u8);
                }
                rgba.push(255);
            }
        }
        #[derive(Serialize)]
        struct Images {
            side: usize,
            classes: usize,
            labels: Vec<u32>,
            groups: Vec<u32>,
        }
        let out = to_js(&Images {
            side,
            classes: spec.options.classes,
            labels: train.labels.clone(),
            groups: train.groups().iter().map(|g| g.order()).collect(),
        })?;
        js_sys::Reflect::set(
            &out,
            &"rgba".into(),
            &js_sys::Uint8Array::from(rgba.as_slice()).into(),
        )?;
        Ok(out)
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
