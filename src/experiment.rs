//! The experiment: everything needed to reproduce a view or a run, versioned. One schema
//! drives every face (the TensorFlow Playground `state.ts` idea): the page's link and
//! controls, the CLI (`layerlab run EXPERIMENT.json`, and the flags of `stats`, `prune` and
//! `reduce`, whose defaults are read from here), and the report, which carries the
//! experiment so a result always says what produced it.
//!
//! Version 2, as JSON (the lab spec is flattened next to the version, tagged by `lab`):
//!
//! ```json
//! {"version": 2, "lab": "layers",  "model": {"kind": "url", "url": "models/m.gguf"}, "outlier_k": 5.0, "bins": 64}
//! {"version": 2, "lab": "prune",   "model": {...}, "method": "wanda", "sparsity": 0.5, "nm": null,
//!  "owl": {"hyper_m": 5.0, "lamda": 0.08}, "nsamples": 16, "seqlen": 256, "calib_seed": null,
//!  "batch": 8, "eval": {"seqlen": 256, "max_windows": null, "batch": 8}, "dense_ppl": true,
//!  "outlier_sweep": [1, ..., 10], "calib_text": {"kind": "builtin", "name": "LGPL-2.1"},
//!  "eval_text": {"kind": "builtin", "name": "GPL-3"}}
//! {"version": 2, "lab": "compute", "seed": 7, "rows": 1000, "cols": 333, "outlier_k": 5.0,
//!  "bins": 64, "per_column": true}
//! {"version": 2, "lab": "train", "layers": 12, "width": 128, ..., "norm": "mix", "alpha": 0.25,
//!  "text": {"kind": "builtin", "name": "GPL-3"}, "tokenizer": "char", "runs": ["pre", "post", "mix"]}
//! ```
//!
//! A lab is one variant of [`LabSpec`] whose spec has a `Default` (the defaults the CLI, the
//! page's controls and the link encoder all read) and lives in its own module. The link is
//! the same JSON, flattened by field path (`owl.lamda=0.1`, `model.url=...`), holding only
//! the leaves that differ from the lab's defaults: see [`Experiment::to_query`].
//!
//! Version 1 (`{"version": 1, "lab", "model", "stats", "prune"}`) and its links
//! (`?tab=prune&sparsity=0.7&k=5...`) are upgraded by [`Experiment::parse`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::prune::driver::PruneOptions;
use crate::stats::StatsOptions;
use crate::synth::SynthSpec;
use crate::train::{NormPlacement, TrainOptions, TrainReport};
use crate::{LabError, Result};

/// Bumped when a field changes meaning; readers refuse versions they do not know (and
/// upgrade the ones they do).
pub const EXPERIMENT_VERSION: u32 = 2;

/// The built-in model the page serves beside itself (`models/…`).
pub const BUILTIN_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// License texts served beside the page (texts/NAME) and read by the CLI from
/// /usr/share/common-licenses/NAME on Debian: the pruning lab's built-in texts.
pub const BUILTIN_TEXTS: [&str; 6] = [
    "LGPL-2.1",
    "GPL-3",
    "GPL-2",
    "GFDL-1.3",
    "MPL-2.0",
    "Apache-2.0",
];

/// Where the model comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelSource {
    /// Fetched from a URL (HTTP range requests where the server allows them).
    Url { url: String },
    /// A file the user dropped or picked: a link can only say which file to drop again.
    File { name: String, size: u64 },
    /// A path on the machine running the CLI.
    Path { path: String },
}

impl Default for ModelSource {
    fn default() -> Self {
        ModelSource::Url {
            url: BUILTIN_MODEL.into(),
        }
    }
}

impl ModelSource {
    /// The file's name, for reports and messages.
    pub fn describe(&self) -> String {
        match self {
            ModelSource::Url { url } => url.clone(),
            ModelSource::File { name, .. } => name.clone(),
            ModelSource::Path { path } => path.clone(),
        }
    }
}

/// Where a calibration or evaluation text comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TextSource {
    /// One of the license texts served beside the page (texts/NAME), which are
    /// /usr/share/common-licenses/NAME on Debian: the CLI reads that path.
    Builtin { name: String },
    /// A file the user dropped: a link can only say which file to choose again.
    File { name: String, size: u64 },
    /// A path on the machine running the CLI.
    Path { path: String },
}

impl TextSource {
    pub fn builtin(name: &str) -> Self {
        TextSource::Builtin { name: name.into() }
    }

    pub fn describe(&self) -> String {
        match self {
            TextSource::Builtin { name } | TextSource::File { name, .. } => name.clone(),
            TextSource::Path { path } => path.clone(),
        }
    }
}

/// The layer view: statistics of every tensor and block of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LayersSpec {
    pub model: ModelSource,
    /// Outliers are |w| > outlier_k x mean |w|.
    pub outlier_k: f32,
    /// Histogram bins over [min, max] (1..=256).
    pub bins: u32,
}

impl Default for LayersSpec {
    fn default() -> Self {
        LayersSpec {
            model: ModelSource::default(),
            outlier_k: 5.0,
            bins: 64,
        }
    }
}

impl LayersSpec {
    /// The statistics options of the view (whole tensors: no per-column statistics).
    pub fn stats_options(&self) -> StatsOptions {
        StatsOptions {
            outlier_k: self.outlier_k,
            bins: self.bins,
            per_column: false,
        }
    }
}

/// The pruning lab: the run's options (flattened) and its two texts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PruneSpec {
    pub model: ModelSource,
    #[serde(flatten)]
    pub options: PruneOptions,
    pub calib_text: TextSource,
    /// The perplexity text; None: no perplexity (`layerlab prune` without `--eval`).
    pub eval_text: Option<TextSource>,
}

impl Default for PruneSpec {
    fn default() -> Self {
        PruneSpec {
            model: ModelSource::default(),
            options: PruneOptions::default(),
            calib_text: TextSource::builtin("LGPL-2.1"),
            eval_text: Some(TextSource::builtin("GPL-3")),
        }
    }
}

/// The compute check: statistics of a seeded synthetic matrix (`layerlab reduce`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ComputeSpec {
    #[serde(flatten)]
    pub synth: SynthSpec,
    #[serde(flatten)]
    pub stats: StatsOptions,
}

/// The training lab (Mix-LN): the options of a run (flattened, as `layerlab train` takes
/// them), its text and tokenizer, and which norm placements to train, one after another
/// with everything else the same (the same seed: the same init and batches).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainSpec {
    #[serde(flatten)]
    pub options: TrainOptions,
    /// The training text; its last 10% validates.
    pub text: TextSource,
    /// "char" (the text's characters; the page's only tokenizer for now), or, on the CLI, a
    /// .gguf model or tokenizer.json whose BPE to use.
    pub tokenizer: String,
    /// The placements to train in turn (Mix-LN's with `alpha`); empty: the one in `norm`.
    pub runs: Vec<NormPlacement>,
}

impl Default for TrainSpec {
    fn default() -> Self {
        TrainSpec {
            options: TrainOptions::default(),
            text: TextSource::builtin("GPL-3"),
            tokenizer: "char".into(),
            runs: Vec::new(),
        }
    }
}

impl TrainSpec {
    /// The placements this experiment trains, in order.
    pub fn placements(&self) -> Vec<NormPlacement> {
        if self.runs.is_empty() {
            vec![self.options.norm]
        } else {
            self.runs.clone()
        }
    }

    /// The options of the run with placement `norm`.
    pub fn options_for(&self, norm: NormPlacement) -> TrainOptions {
        TrainOptions {
            norm,
            ..self.options.clone()
        }
    }
}

/// The training lab's result, the same on the page and in the CLI (`layerlab train --json`,
/// `layerlab run`): the text and tokenizer it read, where it ran, and one report per
/// placement, in the experiment's order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainResult {
    pub text: String,
    pub tokenizer: String,
    pub backend: crate::compute::BackendInfo,
    pub runs: Vec<TrainReport>,
}

/// The bias lab (Sebra): every option of the run, flattened (they are all it needs: the data
/// come from the seed).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SebraSpec {
    #[serde(flatten)]
    pub options: crate::sebra::SebraOptions,
}

/// Which lab, and its whole specification. Adding a lab is adding a variant here (and its
/// line in [`LabSpec::defaults`]).
// One experiment per run or link: the variants' sizes do not matter, so none is boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "lab", rename_all = "lowercase")]
pub enum LabSpec {
    /// Per-layer statistics of a model's weights.
    Layers(LayersSpec),
    /// Pruning (magnitude, Wanda, SparseGPT; uniform or OWL) with perplexity.
    Prune(PruneSpec),
    /// Statistics of a seeded synthetic matrix: the page's backend against the CLI's.
    Compute(ComputeSpec),
    /// Training Pre-LN, Post-LN and Mix-LN decoders, with per-layer diagnostics.
    Train(TrainSpec),
    /// Sebra's spuriosity ranking and debiasing on seeded biased images.
    Sebra(SebraSpec),
}

impl LabSpec {
    /// Every lab at its defaults, in the page's tab order.
    pub fn defaults() -> Vec<LabSpec> {
        vec![
            LabSpec::Layers(LayersSpec::default()),
            LabSpec::Prune(PruneSpec::default()),
            LabSpec::Compute(ComputeSpec::default()),
            LabSpec::Train(TrainSpec::default()),
            LabSpec::Sebra(SebraSpec::default()),
        ]
    }

    /// The lab's name: the JSON tag, the link's `lab` and the page's tab.
    pub fn name(&self) -> &'static str {
        match self {
            LabSpec::Layers(_) => "layers",
            LabSpec::Prune(_) => "prune",
            LabSpec::Compute(_) => "compute",
            LabSpec::Train(_) => "train",
            LabSpec::Sebra(_) => "sebra",
        }
    }

    /// The named lab at its defaults.
    pub fn default_for(name: &str) -> Result<LabSpec> {
        Self::defaults()
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                let names: Vec<_> = Self::defaults().iter().map(|s| s.name()).collect();
                LabError::invalid(format!(
                    "unknown lab '{name}': this LayerLab has {}",
                    names.join(", ")
                ))
            })
    }

    /// The model the lab reads, for the labs that read one.
    pub fn model(&self) -> Option<&ModelSource> {
        match self {
            LabSpec::Layers(s) => Some(&s.model),
            LabSpec::Prune(s) => Some(&s.model),
            LabSpec::Compute(_) | LabSpec::Train(_) | LabSpec::Sebra(_) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    pub version: u32,
    #[serde(flatten)]
    pub lab: LabSpec,
}

/// What every run writes: the experiment that produced it and the lab's result, whose
/// fields sit beside it. The page's download and the CLI's `--json` are this one type.
#[derive(Clone, Debug, Serialize)]
pub struct Report<R> {
    pub experiment: Experiment,
    #[serde(flatten)]
    pub result: R,
}

/// The pruning lab's result, the same on the page and in the CLI: the driver's report with
/// the names of the model and texts, the tokeniser and the backend.
#[derive(Clone, Debug, Serialize)]
pub struct PruneResult {
    pub model: String,
    pub calib: String,
    pub eval: Option<String>,
    pub tokenizer: String,
    #[serde(flatten)]
    pub report: crate::prune::driver::PruneReport,
    pub backend: crate::compute::BackendInfo,
}

impl From<LabSpec> for Experiment {
    fn from(lab: LabSpec) -> Self {
        Experiment {
            version: EXPERIMENT_VERSION,
            lab,
        }
    }
}

fn invalid(msg: impl Into<String>) -> LabError {
    LabError::invalid(msg)
}

impl Experiment {
    pub fn layers(spec: LayersSpec) -> Self {
        LabSpec::Layers(spec).into()
    }

    pub fn prune(spec: PruneSpec) -> Self {
        LabSpec::Prune(spec).into()
    }

    pub fn compute(spec: ComputeSpec) -> Self {
        LabSpec::Compute(spec).into()
    }

    pub fn train(spec: TrainSpec) -> Self {
        LabSpec::Train(spec).into()
    }

    pub fn sebra(spec: SebraSpec) -> Self {
        LabSpec::Sebra(spec).into()
    }

    /// Every face's one reader: an experiment as JSON (version 2, or version 1 upgraded), a
    /// report holding one (`{"experiment": …}`, as the page and the CLI write them), or a
    /// link (`?v=2&lab=prune&…`, a whole address, or a version-1 link). Unknown versions,
    /// labs and link parameters are refused with a message naming them.
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim();
        if t.starts_with('{') {
            let value: Value = serde_json::from_str(t)
                .map_err(|e| invalid(format!("not a LayerLab experiment or report: {e}")))?;
            Self::from_value(value)
        } else {
            Self::from_link(t).map(|(e, _)| e)
        }
    }

    /// [`Experiment::parse`] for JSON already parsed (the page hands its experiment over
    /// this way).
    pub fn from_value(value: Value) -> Result<Self> {
        let Value::Object(mut obj) = value else {
            return Err(invalid(
                "not a LayerLab experiment: expected a JSON object with \"version\" and \"lab\"",
            ));
        };
        // A report: the experiment that produced it is inside.
        if !obj.contains_key("version") {
            if let Some(inner) = obj.remove("experiment") {
                if inner.is_null() {
                    return Err(invalid("this report does not say which experiment made it"));
                }
                return Self::from_value(inner);
            }
        }
        let version = match obj.get("version") {
            Some(v) => v.as_u64().ok_or_else(|| {
                invalid(format!(
                    "experiment version {v} is not a version: expected a whole number"
                ))
            })?,
            None => return Err(invalid(
                "not a LayerLab experiment: it has no \"version\" (nor an \"experiment\" inside)",
            )),
        };
        let obj = match version {
            1 => upgrade_v1(obj)?,
            2 => obj,
            v => {
                return Err(invalid(format!(
                    "experiment version {v} is not supported by this LayerLab (it reads versions 1 and {EXPERIMENT_VERSION})"
                )))
            }
        };
        let lab = obj
            .get("lab")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("the experiment does not say which lab (\"lab\")"))?
            .to_string();
        LabSpec::default_for(&lab)?;
        let e: Experiment = serde_json::from_value(Value::Object(obj))
            .map_err(|err| invalid(format!("not a valid {lab} experiment: {err}")))?;
        Ok(e)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The link's query (without `?`): `v=2`, then `lab` unless it is the layer view, then
    /// every leaf of the spec that differs from the lab's defaults as `path=value`, paths
    /// in alphabetical order (as serde_json's maps keep them; the page sorts the same way). A value is its JSON text (`0.7`, `true`, `null`, `[2,4]`), except
    /// that a string is written bare unless it would read back as something else.
    pub fn to_query(&self) -> String {
        let defaults = LabSpec::default_for(self.lab.name())
            .map(|d| spec_value(&d))
            .unwrap_or(Value::Null);
        let mut pairs = vec![("v".to_string(), EXPERIMENT_VERSION.to_string())];
        if self.lab.name() != "layers" {
            pairs.push(("lab".into(), self.lab.name().into()));
        }
        diff_leaves(&spec_value(&self.lab), &defaults, "", &mut pairs);
        encode_pairs(&pairs)
    }

    /// Reads a link (an address or its query, with or without `?`) into the experiment and
    /// the page's view parameters that ride along (`view.*`, `backend`), which the
    /// experiment does not hold. Version-1 links (no `v`) are upgraded.
    pub fn from_link(link: &str) -> Result<(Self, Vec<(String, String)>)> {
        let query = match link.split_once('?') {
            Some((_, q)) => q,
            None if link.contains('=') || link.is_empty() => link,
            None => {
                return Err(invalid(format!(
                    "'{link}' is neither an experiment (JSON), a report, nor a link with a query (?v=2&lab=…)"
                )))
            }
        };
        let query = query.split('#').next().unwrap_or("");
        let pairs = decode_pairs(query)?;
        let (mut exp, mut extra) = (Vec::new(), Vec::new());
        for (k, v) in pairs {
            if k == "backend" || k.starts_with("view.") {
                extra.push((k, v));
            } else {
                exp.push((k, v));
            }
        }
        let version = exp.iter().find(|(k, _)| k == "v").map(|(_, v)| v.clone());
        let e = match version.as_deref() {
            Some("2") => from_query_v2(&exp)?,
            Some(v) => {
                return Err(invalid(format!(
                    "this link is experiment version {v}, which this LayerLab does not read (it reads versions 1 and {EXPERIMENT_VERSION})"
                )))
            }
            None if exp.is_empty() => Experiment::layers(LayersSpec::default()),
            None => {
                let (e, view) = upgrade_v1_link(&exp)?;
                extra.extend(view);
                e
            }
        };
        Ok((e, extra))
    }
}

/// The spec as JSON without its `lab` tag.
fn spec_value(spec: &LabSpec) -> Value {
    let mut v = serde_json::to_value(spec).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        o.remove("lab");
    }
    v
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Objects whose `kind` differs (a file instead of a URL) are new things: all their leaves
/// are written, as are those of an object whose default is not an object (OWL switched on).
fn diff_leaves(value: &Value, default: &Value, path: &str, out: &mut Vec<(String, String)>) {
    if value == default {
        return;
    }
    match (value, default) {
        (Value::Object(v), Value::Object(d)) if v.get("kind") == d.get("kind") => {
            for (k, x) in v {
                diff_leaves(x, d.get(k).unwrap_or(&Value::Null), &join(path, k), out);
            }
        }
        (Value::Object(v), _) => {
            for (k, x) in v {
                all_leaves(x, &join(path, k), out);
            }
        }
        _ => out.push((path.to_string(), encode_value(value))),
    }
}

fn all_leaves(value: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(o) if !o.is_empty() => {
            for (k, x) in o {
                all_leaves(x, &join(path, k), out);
            }
        }
        _ => out.push((path.to_string(), encode_value(value))),
    }
}

fn encode_value(v: &Value) -> String {
    match v {
        Value::String(s) if serde_json::from_str::<Value>(s).is_err() => s.clone(),
        other => other.to_string(),
    }
}

fn decode_value(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

/// application/x-www-form-urlencoded, as URLSearchParams writes it.
fn encode_pairs(pairs: &[(String, String)]) -> String {
    fn enc(s: &str) -> String {
        let mut out = String::new();
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn decode_pairs(query: &str) -> Result<Vec<(String, String)>> {
    fn dec(s: &str) -> Result<String> {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                    let b = u8::from_str_radix(hex, 16).map_err(|_| {
                        invalid(format!("link: '{s}' has a bad %-escape ('%{hex}')"))
                    })?;
                    out.push(b);
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).map_err(|_| invalid(format!("link: '{s}' is not UTF-8")))
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((dec(k)?, dec(v)?))
        })
        .collect()
}

/// The kind of JSON value, for messages.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "true or false",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Sets `path` (dotted) in `root` to `value`. A `kind` that changes resets its object (a
/// file has no URL); a leaf must have its default's type where the default has one.
fn set_path(root: &mut Value, path: &str, value: Value, key: &str) -> Result<()> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut at = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if at.is_null() {
            *at = Value::Object(Map::new());
        }
        let Value::Object(obj) = at else {
            return Err(invalid(format!(
                "link parameter {key}: {} is not a group of settings",
                parts[..i].join(".")
            )));
        };
        if last {
            let known = obj.get(*part);
            if *part == "kind" {
                if known != Some(&value) {
                    obj.clear();
                    obj.insert("kind".into(), value);
                }
                return Ok(());
            }
            if let Some(d) = known {
                let same = std::mem::discriminant(d) == std::mem::discriminant(&value);
                if !d.is_null() && !value.is_null() && !same {
                    return Err(invalid(format!(
                        "link parameter {key}: expected {}, found '{}'",
                        json_kind(d),
                        encode_value(&value)
                    )));
                }
            }
            obj.insert((*part).to_string(), value);
            return Ok(());
        }
        at = obj.entry((*part).to_string()).or_insert(Value::Null);
    }
    Ok(())
}

fn from_query_v2(pairs: &[(String, String)]) -> Result<Experiment> {
    let lab = pairs
        .iter()
        .find(|(k, _)| k == "lab")
        .map_or("layers", |(_, v)| v.as_str());
    let default = LabSpec::default_for(lab)?;
    let mut spec = spec_value(&default);
    let fields: Vec<&(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "v" && k != "lab")
        .collect();
    // Kinds first: a `model.kind=file` resets the model before its name and size land.
    type Pairs<'a> = Vec<&'a (String, String)>;
    let (kinds, rest): (Pairs, Pairs) = fields.into_iter().partition(|(k, _)| k.ends_with("kind"));
    for (k, v) in kinds.into_iter().chain(rest) {
        let top = k.split('.').next().unwrap_or("");
        let known = spec.get(top).is_some();
        if !known {
            let names: Vec<String> = spec
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            return Err(invalid(format!(
                "unknown link parameter '{k}' for the {lab} lab (it has {})",
                names.join(", ")
            )));
        }
        set_path(&mut spec, k, decode_value(v), k)?;
    }
    if let Value::Object(o) = &mut spec {
        o.insert("lab".into(), Value::String(lab.into()));
    }
    let lab_spec: LabSpec = serde_json::from_value(spec)
        .map_err(|e| invalid(format!("this link is not a valid {lab} experiment: {e}")))?;
    Ok(lab_spec.into())
}

/// Version 1 had `stats` beside every lab and the pruning options under `prune`.
fn upgrade_v1(mut obj: Map<String, Value>) -> Result<Map<String, Value>> {
    let lab = obj
        .get("lab")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let model = obj.remove("model").unwrap_or(Value::Null);
    let mut out = match lab.as_str() {
        "layers" => {
            let stats = obj.remove("stats").unwrap_or(Value::Null);
            let mut o = Map::new();
            for key in ["outlier_k", "bins"] {
                if let Some(v) = stats.get(key) {
                    o.insert(key.into(), v.clone());
                }
            }
            o
        }
        "prune" => match obj.remove("prune") {
            Some(Value::Object(mut p)) => {
                // Version 1's CLI wrote an empty path for "no evaluation text".
                if p.get("eval_text") == Some(&serde_json::json!({"kind": "path", "path": ""})) {
                    p.insert("eval_text".into(), Value::Null);
                }
                p
            }
            _ => {
                return Err(invalid(
                    "this version-1 pruning experiment has no pruning options (\"prune\")",
                ))
            }
        },
        other => {
            return Err(invalid(format!(
                "version-1 experiments are layers or prune, not '{other}'"
            )))
        }
    };
    out.insert("model".into(), model);
    out.insert("lab".into(), Value::String(lab));
    out.insert("version".into(), Value::from(EXPERIMENT_VERSION));
    Ok(out)
}

/// Version-1 links held every tab's settings in one flat namespace (`tab`, the layer view's
/// `model`/`file`/`size`/`k`/`bins`/`stat`/`tensor`, the pruning tab's `method`…`eval`, the
/// compute check's `rows`/`cols`/`seed`/`ck`/`cbins`/`per_column`); the tab's experiment is
/// kept, and the layer view's `stat` and `tensor` become `view.stat` and `view.tensor`.
fn upgrade_v1_link(pairs: &[(String, String)]) -> Result<(Experiment, Vec<(String, String)>)> {
    let get = |k: &str| {
        pairs
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let num = |k: &str| -> Result<Option<f64>> {
        match get(k) {
            None | Some("") => Ok(None),
            Some(v) => v.trim().parse::<f64>().map(Some).map_err(|_| {
                invalid(format!(
                    "link parameter {k}: expected a number, found '{v}'"
                ))
            }),
        }
    };
    let whole = |k: &str| -> Result<Option<u64>> {
        match num(k)? {
            Some(x) if x >= 0.0 && x.fract() == 0.0 => Ok(Some(x as u64)),
            Some(x) => Err(invalid(format!(
                "link parameter {k}: expected a whole number >= 0, found {x}"
            ))),
            None => Ok(None),
        }
    };
    let model = match (get("file"), get("model")) {
        (Some(name), _) => ModelSource::File {
            name: name.into(),
            size: whole("size")?.unwrap_or(0),
        },
        (None, Some(url)) => ModelSource::Url { url: url.into() },
        (None, None) => ModelSource::default(),
    };
    let mut view = Vec::new();
    for key in ["stat", "tensor"] {
        if let Some(v) = get(key) {
            view.push((format!("view.{key}"), v.to_string()));
        }
    }
    let tab = get("tab").unwrap_or("layers");
    let e = match tab {
        "layers" => {
            let d = LayersSpec::default();
            Experiment::layers(LayersSpec {
                model,
                outlier_k: num("k")?.map_or(d.outlier_k, |x| x as f32),
                bins: whole("bins")?.map_or(d.bins, |x| x as u32),
            })
        }
        "compute" => {
            let d = ComputeSpec::default();
            Experiment::compute(ComputeSpec {
                synth: SynthSpec {
                    seed: whole("seed")?.unwrap_or(d.synth.seed),
                    rows: whole("rows")?.map_or(d.synth.rows, |x| x as usize),
                    cols: whole("cols")?.map_or(d.synth.cols, |x| x as usize),
                },
                stats: StatsOptions {
                    outlier_k: num("ck")?.map_or(d.stats.outlier_k, |x| x as f32),
                    bins: whole("cbins")?.map_or(d.stats.bins, |x| x as u32),
                    per_column: get("per_column").map_or(d.stats.per_column, |v| v != "0"),
                },
            })
        }
        "prune" => {
            let d = PruneSpec::default();
            let mut o = d.options.clone();
            if let Some(m) = get("method") {
                o.method = m.parse()?;
            }
            if let Some(s) = num("sparsity")? {
                o.sparsity = s;
            }
            o.nm = match get("nm") {
                None | Some("") => None,
                Some(nm) => {
                    let bad = || {
                        invalid(format!(
                            "link parameter nm: expected N:M such as 2:4, found '{nm}'"
                        ))
                    };
                    let (n, m) = nm.split_once(':').ok_or_else(bad)?;
                    Some((n.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?))
                }
            };
            if let Some(n) = o.nm {
                o.sparsity = n.0 as f64 / n.1 as f64;
            }
            let owl = crate::prune::driver::OwlOptions::default();
            o.owl = (get("owl") == Some("1")).then_some(crate::prune::driver::OwlOptions {
                hyper_m: num("m")?.unwrap_or(owl.hyper_m),
                lamda: num("lamda")?.unwrap_or(owl.lamda),
            });
            if let Some(n) = whole("nsamples")? {
                o.nsamples = n as usize;
            }
            if let Some(n) = whole("seqlen")? {
                o.seqlen = n as usize;
            }
            o.calib_seed = whole("seed")?;
            if let Some(n) = whole("eval_seqlen")? {
                o.eval.seqlen = n as usize;
            }
            o.eval.max_windows = whole("eval_windows")?.map(|n| n as usize);
            if let Some(dense) = get("dense") {
                o.dense_ppl = dense == "1";
            }
            let text = |key: &str, default: TextSource| match get(key) {
                None => default,
                Some(name) if BUILTIN_TEXTS.contains(&name) => TextSource::builtin(name),
                Some(name) => TextSource::File {
                    name: name.into(),
                    size: 0,
                },
            };
            Experiment::prune(PruneSpec {
                model,
                options: o,
                calib_text: text("calib", d.calib_text),
                eval_text: Some(text("eval", TextSource::builtin("GPL-3"))),
            })
        }
        other => {
            return Err(invalid(format!(
                "link parameter tab: unknown tab '{other}' (layers, prune or compute)"
            )))
        }
    };
    Ok((e, view))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::driver::{Method, OwlOptions};

    fn prune_example() -> Experiment {
        Experiment::prune(PruneSpec {
            model: ModelSource::File {
                name: "model 1.safetensors".into(),
                size: 90868376,
            },
            options: PruneOptions {
                method: Method::SparseGpt,
                sparsity: 0.7,
                nm: Some((2, 4)),
                owl: Some(OwlOptions {
                    hyper_m: 7.0,
                    lamda: 0.08,
                }),
                calib_seed: Some(3),
                ..PruneOptions::default()
            },
            calib_text: TextSource::builtin("GPL-2"),
            eval_text: Some(TextSource::File {
                name: "true".into(),
                size: 9,
            }),
        })
    }

    fn train_example() -> Experiment {
        Experiment::train(TrainSpec {
            options: TrainOptions {
                layers: 4,
                width: 32,
                heads: 2,
                kv_heads: 1,
                ffn: 64,
                ctx: 32,
                batch: 4,
                steps: 20,
                lr: 3e-3,
                seed: 7,
                eval_every: 10,
                norm: NormPlacement::Post,
                alpha: 0.5,
                ..TrainOptions::default()
            },
            text: TextSource::File {
                name: "my notes.txt".into(),
                size: 12345,
            },
            tokenizer: "char".into(),
            runs: vec![NormPlacement::Pre, NormPlacement::Post, NormPlacement::Mix],
        })
    }

    #[test]
    fn json_round_trips_and_refuses_unknown_versions() {
        for e in [
            Experiment::layers(LayersSpec::default()),
            prune_example(),
            Experiment::compute(ComputeSpec::default()),
            Experiment::train(TrainSpec::default()),
            train_example(),
        ] {
            let text = serde_json::to_string(&e).unwrap();
            assert!(text.starts_with(r#"{"version":2,"lab":""#), "{text}");
            assert_eq!(Experiment::parse(&text).unwrap(), e);
            let future = text.replace(r#""version":2"#, r#""version":99"#);
            let err = Experiment::parse(&future).unwrap_err().to_string();
            assert!(err.contains("version 99"), "{err}");
        }
        let err = Experiment::parse("{}").unwrap_err().to_string();
        assert!(err.contains("no \"version\""), "{err}");
        let err = Experiment::parse(r#"{"version":2,"lab":"bake"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown lab 'bake'"), "{err}");
        // A field of the wrong type names it.
        let err = Experiment::parse(r#"{"version":2,"lab":"prune","sparsity":"lots"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid prune experiment"), "{err}");
    }

    #[test]
    fn missing_fields_take_the_defaults() {
        let e = Experiment::parse(r#"{"version":2,"lab":"prune","sparsity":0.6}"#).unwrap();
        let LabSpec::Prune(p) = e.lab else {
            panic!("not prune")
        };
        assert_eq!(p.options.sparsity, 0.6);
        assert_eq!(p.options.nsamples, 16);
        assert_eq!(p.calib_text, TextSource::builtin("LGPL-2.1"));
        assert_eq!(p.model, ModelSource::default());
    }

    #[test]
    fn a_train_experiment_lists_its_placements() {
        let d = TrainSpec::default();
        assert_eq!(d.placements(), vec![NormPlacement::Mix]);
        assert_eq!(d.options, TrainOptions::default());
        assert_eq!(d.text, TextSource::builtin("GPL-3"));
        let LabSpec::Train(t) = train_example().lab else {
            panic!("not train")
        };
        assert_eq!(
            t.placements(),
            vec![NormPlacement::Pre, NormPlacement::Post, NormPlacement::Mix]
        );
        let pre = t.options_for(NormPlacement::Pre);
        assert_eq!(pre.norm, NormPlacement::Pre);
        assert_eq!((pre.layers, pre.alpha, pre.seed), (4, 0.5, 7));
        // Missing fields take the defaults, as in `layerlab train`.
        let e = Experiment::parse(r#"{"version":2,"lab":"train","steps":5,"norm":"pre"}"#).unwrap();
        let LabSpec::Train(t) = e.lab else {
            panic!("not train")
        };
        assert_eq!(t.options.steps, 5);
        assert_eq!(t.placements(), vec![NormPlacement::Pre]);
        assert_eq!(t.options.width, 128);
        assert_eq!(t.tokenizer, "char");
    }

    #[test]
    fn a_report_opens_as_its_experiment() {
        let e = prune_example();
        let report = serde_json::json!({ "experiment": e, "blocks": [], "backend": {} });
        assert_eq!(Experiment::parse(&report.to_string()).unwrap(), e);
        let err = Experiment::parse(r#"{"experiment": null, "blocks": []}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not say which experiment"), "{err}");
    }

    #[test]
    fn links_round_trip_for_every_lab_and_hold_only_changes() {
        // Every lab at its defaults: the link is just the version and the lab.
        for d in LabSpec::defaults() {
            let e = Experiment::from(d.clone());
            let q = e.to_query();
            let expect = if d.name() == "layers" {
                "v=2".to_string()
            } else {
                format!("v=2&lab={}", d.name())
            };
            assert_eq!(q, expect);
            assert_eq!(Experiment::from_link(&q).unwrap().0, e);
        }
        let layers = Experiment::layers(LayersSpec {
            model: ModelSource::Url {
                url: "https://example.org/a b/model.safetensors?x=1".into(),
            },
            outlier_k: 3.0,
            bins: 32,
        });
        let q = layers.to_query();
        assert_eq!(
            q,
            "v=2&bins=32&model.url=https%3A%2F%2Fexample.org%2Fa+b%2Fmodel.safetensors%3Fx%3D1&outlier_k=3.0"
        );
        assert_eq!(Experiment::from_link(&q).unwrap().0, layers);
        let p = prune_example();
        let q = p.to_query();
        assert_eq!(
            q,
            "v=2&lab=prune&calib_seed=3&calib_text.name=GPL-2\
             &eval_text.kind=file&eval_text.name=%22true%22&eval_text.size=9&method=sparsegpt\
             &model.kind=file&model.name=model+1.safetensors&model.size=90868376\
             &nm=%5B2%2C4%5D&owl.hyper_m=7.0&owl.lamda=0.08&sparsity=0.7"
        );
        let (back, view) = Experiment::from_link(&format!(
            "http://localhost:8080/?{q}&view.stat=kurtosis&backend=cpu"
        ))
        .unwrap();
        assert_eq!(back, p);
        assert_eq!(
            view,
            vec![
                ("view.stat".to_string(), "kurtosis".to_string()),
                ("backend".into(), "cpu".into())
            ]
        );
        let c = Experiment::compute(ComputeSpec {
            synth: SynthSpec {
                seed: 11,
                rows: 517,
                cols: 301,
            },
            stats: StatsOptions {
                per_column: false,
                ..StatsOptions::default()
            },
        });
        let q = c.to_query();
        assert_eq!(
            q,
            "v=2&lab=compute&cols=301&per_column=false&rows=517&seed=11"
        );
        assert_eq!(Experiment::from_link(&q).unwrap().0, c);
        let t = train_example();
        let q = t.to_query();
        assert_eq!(
            q,
            "v=2&lab=train&alpha=0.5&batch=4&ctx=32&eval_every=10&ffn=64&heads=2&kv_heads=1\
             &layers=4&lr=0.003&norm=post&runs=%5B%22pre%22%2C%22post%22%2C%22mix%22%5D&seed=7\
             &steps=20&text.kind=file&text.name=my+notes.txt&text.size=12345&width=32"
        );
        assert_eq!(Experiment::from_link(&q).unwrap().0, t);
        // One placement, as the page's Run writes it: only what differs from the defaults.
        let one = Experiment::train(TrainSpec {
            runs: vec![NormPlacement::Pre],
            ..TrainSpec::default()
        });
        let q = one.to_query();
        assert_eq!(q, "v=2&lab=train&runs=%5B%22pre%22%5D");
        assert_eq!(Experiment::from_link(&q).unwrap().0, one);
        // Switching OWL off again and a null where the default has a value.
        let mut off = PruneSpec::default();
        off.options.dense_ppl = false;
        off.options.eval.max_windows = Some(2);
        let e = Experiment::prune(off);
        let q = e.to_query();
        assert_eq!(q, "v=2&lab=prune&dense_ppl=false&eval.max_windows=2");
        assert_eq!(Experiment::parse(&format!("?{q}")).unwrap(), e);
    }

    #[test]
    fn bad_links_say_what_is_wrong() {
        for (link, expect) in [
            ("?v=3&lab=prune", "experiment version 3"),
            ("?v=2&lab=bake", "unknown lab 'bake'"),
            (
                "?v=2&lab=prune&seed=3",
                "unknown link parameter 'seed' for the prune lab",
            ),
            (
                "?v=2&lab=compute&rows=ten",
                "link parameter rows: expected a number, found 'ten'",
            ),
            ("?v=2&lab=prune&owl.lamda=0.1", "missing field `hyper_m`"),
            ("?v=2&bins=%zz", "bad %-escape"),
            (
                "?v=2&lab=train&runs=%5B%22side%22%5D",
                "unknown variant `side`",
            ),
            (
                "?v=2&lab=train&steps=many",
                "link parameter steps: expected a number",
            ),
            ("model.gguf", "neither an experiment"),
        ] {
            let err = Experiment::parse(link).unwrap_err().to_string();
            assert!(err.contains(expect), "{link}: {err}");
        }
    }

    #[test]
    fn version_1_experiments_and_links_upgrade() {
        let v1_layers = r#"{"version":1,"lab":"layers","model":{"kind":"url","url":"models/SmolLM2-135M-Instruct.Q4_1.gguf"},"stats":{"outlier_k":3.0,"bins":32,"per_column":false}}"#;
        let e = Experiment::parse(v1_layers).unwrap();
        let want = Experiment::layers(LayersSpec {
            outlier_k: 3.0,
            bins: 32,
            ..LayersSpec::default()
        });
        assert_eq!(e, want);
        // The v1 link of the same view (the page wrote k, bins, stat and tensor).
        let (e, view) = Experiment::from_link(
            "?k=3&bins=32&stat=outlier_fraction&tensor=blk.0.attn_q.weight&tab=layers",
        )
        .unwrap();
        assert_eq!(e, want);
        assert_eq!(view[0], ("view.stat".into(), "outlier_fraction".into()));
        assert_eq!(
            view[1],
            ("view.tensor".into(), "blk.0.attn_q.weight".into())
        );

        let (e, _) = Experiment::from_link(
            "?tab=prune&method=wanda&sparsity=0.7&nm=&owl=1&m=5&lamda=0.08&nsamples=2&seqlen=32\
             &seed=&eval_seqlen=32&eval_windows=2&dense=1&calib=LGPL-2.1&eval=my.txt\
             &file=model.safetensors&size=12&k=3",
        )
        .unwrap();
        let mut o = PruneOptions {
            owl: Some(OwlOptions::default()),
            sparsity: 0.7,
            nsamples: 2,
            seqlen: 32,
            ..PruneOptions::default()
        };
        o.eval.seqlen = 32;
        o.eval.max_windows = Some(2);
        let want = Experiment::prune(PruneSpec {
            model: ModelSource::File {
                name: "model.safetensors".into(),
                size: 12,
            },
            options: o,
            calib_text: TextSource::builtin("LGPL-2.1"),
            eval_text: Some(TextSource::File {
                name: "my.txt".into(),
                size: 0,
            }),
        });
        assert_eq!(e, want);
        let (e, _) = Experiment::from_link(
            "?tab=compute&seed=11&rows=517&cols=301&ck=4&cbins=32&per_column=0&k=9",
        )
        .unwrap();
        assert_eq!(
            e,
            Experiment::compute(ComputeSpec {
                synth: SynthSpec {
                    seed: 11,
                    rows: 517,
                    cols: 301
                },
                stats: StatsOptions {
                    outlier_k: 4.0,
                    bins: 32,
                    per_column: false
                },
            })
        );
        let err = Experiment::parse("?tab=prune&nm=2-4")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected N:M such as 2:4, found '2-4'"),
            "{err}"
        );
    }
}
