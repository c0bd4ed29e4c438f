//! `layerlab train`: its arguments, and the files it reads and writes.
//!
//! - `--init FILE`: safetensors with the export's LLaMA names; every tensor the options'
//!   model has must be there with its shape, and nothing else.
//! - `--grads FILE`: from the initial weights, the gradients of the first batch's mean
//!   cross-entropy (before clipping) with the parameter names, the batch as the I64 tensor
//!   `tokens` (batch x (ctx+1)), and the loss as metadata `loss`: how a user checks the lab
//!   against their own framework.
//! - `--batches FILE`: every step's batch (I64 `tokens`, steps x batch x (ctx+1)).
//! - `--out MODEL.safetensors`: the trained weights with LLaMA names, and a config.json
//!   beside it that records the placement (`layerlab.post_ln_blocks`).

use std::path::{Path, PathBuf};

use crate::compute::{BackendInfo, GpuContext};
use crate::experiment::{Experiment, Report, TextSource, TrainResult, TrainSpec};
use crate::io::{FileSource, ModelFile};
use crate::tokenizer::TextTokenizer;
use crate::{LabError, Result};

use super::data::{Corpus, Tokenizer};
use super::export::{hf_config, write_safetensors};
use super::gpu::GpuSteps;
use super::model::{Model, ModelConfig, Weights};
use super::{
    batch_gradients, first_batch, train, train_on, NormPlacement, StepRecord, TrainMonitor,
    TrainOptions, TrainReport,
};

/// Train a Pre-LN, Post-LN or Mix-LN decoder from scratch on a text (CPU, f32).
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Norm placement: pre, post, or mix (the first floor(alpha x layers) blocks Post-LN).
    #[arg(long, default_value = "mix")]
    pub norm: NormPlacement,
    /// Mix-LN's ratio of Post-LN blocks.
    #[arg(long, default_value_t = 0.25)]
    pub alpha: f64,
    #[arg(long, default_value_t = 12)]
    pub layers: usize,
    #[arg(long, default_value_t = 128)]
    pub width: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 4)]
    pub kv_heads: usize,
    #[arg(long, default_value_t = 344)]
    pub ffn: usize,
    #[arg(long, default_value_t = 128)]
    pub ctx: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Fraction of the steps with a linear warm-up (then cosine to 10% of --lr).
    #[arg(long, default_value_t = 0.1)]
    pub warmup: f64,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub clip: f64,
    /// AdamW's decoupled weight decay (0 = Adam, the paper's setting).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validation loss and angular distance every N steps (and after the last).
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    /// Tie the LM head to the embedding (the Mix-LN code's LLaMA configs untie it: with its
    /// embedding init N(0, sqrt(2/5)) a tied head starts at a loss near 80).
    #[arg(long)]
    pub tied: bool,
    /// The training text (UTF-8); the last 10% validates.
    #[arg(long)]
    pub text: PathBuf,
    /// char (the text's characters), or a .gguf / tokenizer.json whose BPE to use.
    #[arg(long, default_value = "char")]
    pub tokenizer: String,
    /// auto (a hardware GPU where one comes up, else the CPU), gpu (the GPU wgpu finds, or
    /// an error) or cpu. --grads is always computed on the CPU.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Fuse each multiply-add of the CPU's matrix products into one FMA: about twice their
    /// speed on FMA CPUs, the same numbers on any thread count, but no longer the page's (nor
    /// a run without --fma's) bit for bit; the report's backend says so.
    #[arg(long)]
    pub fma: bool,
    /// Start from these weights (safetensors, LLaMA names) instead of the seeded init.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Write the initial weights' gradients of the first batch here (safetensors).
    #[arg(long)]
    pub grads: Option<PathBuf>,
    /// Write every step's batch here (safetensors, I64 `tokens` of shape steps x batch x
    /// (ctx+1)), to replay the run in another framework.
    #[arg(long)]
    pub batches: Option<PathBuf>,
    /// Write the report as JSON here ("-" for standard output).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the trained model here (safetensors, LLaMA names; config.json beside it).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl TrainArgs {
    pub fn options(&self) -> TrainOptions {
        TrainOptions {
            layers: self.layers,
            width: self.width,
            heads: self.heads,
            kv_heads: self.kv_heads,
            ffn: self.ffn,
            ctx: self.ctx,
            batch: self.batch,
            steps: self.steps,
            lr: self.lr,
            warmup: self.warmup,
            clip: self.clip,
            weight_decay: self.weight_decay,
            seed: self.seed,
            eval_every: self.eval_every,
            norm: self.norm,
            alpha: self.alpha,
            tied_head: self.tied,
        }
    }
}

/// Progress on standard error: one line per step, the validation loss where evaluated.
struct StderrProgress;

impl TrainMonitor for StderrProgress {
    fn step(&self, r: &StepRecord, of: usize) {
        let val = r
            .val_loss
            .map_or(String::new(), |v| format!("  val {v:.4}"));
        eprintln!(
            "step {:>5}/{of}  lr {:.2e}  loss {:.4}{val}",
            r.step + 1,
            r.lr,
            r.loss
        );
    }
}

/// The files a training run reads and writes beside its experiment.
#[derive(Default)]
pub struct TrainFiles {
    pub init: Option<PathBuf>,
    pub grads: Option<PathBuf>,
    pub batches: Option<PathBuf>,
    pub out: Option<PathBuf>,
}

/// `layerlab train`: the flags become a training experiment (one run), run as `layerlab
/// run` runs it; the report is the same.
pub fn run(args: &TrainArgs) -> Result<()> {
    super::use_fma(args.fma)?;
    let gpu = choose_gpu(&args.backend)?;
    let spec = TrainSpec {
        options: args.options(),
        text: TextSource::Path {
            path: args.text.display().to_string(),
        },
        tokenizer: args.tokenizer.clone(),
        runs: Vec::new(),
    };
    let files = TrainFiles {
        init: args.init.clone(),
        grads: args.grads.clone(),
        batches: args.batches.clone(),
        out: args.out.clone(),
    };
    let result = run_spec(&spec, &args.text, &files, gpu.as_ref())?;
    if let Some(p) = &args.json {
        write_report(
            p,
            &Report {
                experiment: Experiment::train(spec),
                result: result.clone(),
            },
        )?;
    }
    eprint!("{}", summaries(&result));
    Ok(())
}

/// The GPU `layerlab train` trains on: for `gpu` the one wgpu finds (or an error), for `auto`
/// a hardware one where it comes up. On a software adapter (Mesa's lavapipe, SwiftShader)
/// auto keeps the CPU path, the reference that is the same bit for bit on any thread count;
/// the GPU path agrees with it within f32 rounding (tests/train_cli.rs, tests/train_gpu.rs).
pub fn choose_gpu(backend: &str) -> Result<Option<GpuContext>> {
    let gpu = match backend {
        "cpu" => None,
        "gpu" => Some(pollster::block_on(GpuContext::new())?),
        "auto" => match pollster::block_on(GpuContext::new()) {
            Ok(g) if !g.is_software() => Some(g),
            Ok(g) => {
                eprintln!(
                    "backend: CPU ({} is a software adapter; --backend gpu uses it)",
                    g.describe()
                );
                None
            }
            Err(e) => {
                eprintln!("backend: CPU (no GPU: {e})");
                None
            }
        },
        other => {
            return Err(LabError::invalid(format!(
                "unknown backend '{other}': use auto, gpu or cpu"
            )))
        }
    };
    if let Some(g) = &gpu {
        eprintln!("backend: GPU, {}", g.describe());
    }
    Ok(gpu)
}

/// The summary of every run, one paragraph each.
pub fn summaries(result: &TrainResult) -> String {
    result
        .runs
        .iter()
        .map(|r| format!("{}\n", summary(r, &result.tokenizer)))
        .collect()
}

/// Runs a training experiment on the text at `text_path`: each placement of `spec` in turn
/// (the same init seed and batches), with the files `files` asks for (`--out` only with a
/// single run: one model per file), on `gpu` where given (else the CPU).
pub fn run_spec(
    spec: &TrainSpec,
    text_path: &Path,
    files: &TrainFiles,
    gpu: Option<&GpuContext>,
) -> Result<TrainResult> {
    let placements = spec.placements();
    if placements.len() > 1
        && (files.out.is_some() || files.grads.is_some() || files.init.is_some())
    {
        return Err(LabError::invalid(format!(
            "this experiment trains {} placements: --out, --grads and --init take a single run \
             (runs: [\"mix\"], or none and norm)",
            placements.len()
        )));
    }
    let text = std::fs::read_to_string(text_path)
        .map_err(|e| LabError::Io(format!("cannot read {}: {e}", text_path.display())))?;
    let tokenizer = load_tokenizer(&spec.tokenizer, &text)?;
    let ids = tokenizer.encode(&text)?;
    let mut runs = Vec::with_capacity(placements.len());
    for norm in placements {
        let opts = spec.options_for(norm);
        let corpus = Corpus::split(ids.clone(), tokenizer.vocab_size(), opts.ctx)?;
        let cfg = opts.model_config(corpus.vocab_size)?;
        let init = match &files.init {
            Some(p) => Some(read_weights(p, &cfg)?),
            None => None,
        };
        if let Some(path) = &files.grads {
            let weights = init
                .clone()
                .unwrap_or_else(|| Weights::init(&cfg, opts.seed));
            let model = Model {
                cfg: cfg.clone(),
                weights,
            };
            let batch = first_batch(&corpus, &opts);
            let (loss, grads) = batch_gradients(&model, &batch, opts.batch, opts.ctx);
            write_grads(path, &cfg, &grads, &batch, opts.batch, opts.ctx, loss)?;
            eprintln!(
                "first batch loss {loss:.6}; gradients in {}",
                path.display()
            );
        }
        if let Some(path) = &files.batches {
            write_batches(path, &corpus, &opts)?;
        }
        let run = match gpu {
            Some(g) => train_on(
                &corpus,
                &opts,
                init,
                &StderrProgress,
                Box::new(GpuSteps::new(g)),
            )?,
            None => train(&corpus, &opts, init, &StderrProgress)?,
        };
        if let Some(out) = &files.out {
            write_model(out, &run.model, &opts, &tokenizer)?;
        }
        runs.push(run.report);
    }
    Ok(TrainResult {
        text: text_path.display().to_string(),
        tokenizer: tokenizer.describe(),
        backend: match gpu {
            Some(g) => BackendInfo {
                kind: "gpu".into(),
                name: g.describe(),
                reason: None,
            },
            None => super::cpu_backend_info(
                "chosen by --backend (auto keeps the CPU without a hardware GPU); layerlab run \
                 trains on the CPU, as the page does",
            ),
        },
        runs,
    })
}

fn summary(r: &TrainReport, tokenizer: &str) -> String {
    let last = r.steps.last();
    let val = r
        .steps
        .iter()
        .rev()
        .find_map(|s| s.val_loss)
        .map_or("-".into(), |v| format!("{v:.4}"));
    format!(
        "{} blocks ({} Post-LN), {} parameters, vocabulary {} ({tokenizer})\n\
         steps {}  last train loss {}  val loss {val}  {:.0} tokens/s  {:.1} s",
        r.options.layers,
        r.options.post_blocks(),
        r.params,
        r.vocab_size,
        r.steps.len(),
        last.map_or("-".into(), |s| format!("{:.4}", s.loss)),
        r.tokens_per_s,
        r.timings.total_s
    )
}

/// "char", or a .gguf / tokenizer.json path whose BPE to use.
pub fn load_tokenizer(choice: &str, text: &str) -> Result<Tokenizer> {
    if choice == "char" {
        return Tokenizer::char_level(text);
    }
    let path = Path::new(choice);
    if choice.ends_with(".json") {
        let bytes = std::fs::read(path)
            .map_err(|e| LabError::Io(format!("cannot read {}: {e}", path.display())))?;
        return Ok(Tokenizer::Bpe(Box::new(TextTokenizer::from_json(
            &bytes, choice,
        )?)));
    }
    if choice.ends_with(".gguf") {
        let src = FileSource::open(path)?;
        let file = ModelFile::open(&src)?;
        return Ok(Tokenizer::Bpe(Box::new(TextTokenizer::from_gguf(
            &file, choice,
        )?)));
    }
    Err(LabError::invalid(format!(
        "--tokenizer {choice}: use char, a .gguf model or a tokenizer.json"
    )))
}

fn describe_model(cfg: &ModelConfig) -> String {
    format!(
        "layers {}, width {}, heads {}, kv_heads {}, ffn {}, vocabulary {}, {} head",
        cfg.layers,
        cfg.width,
        cfg.heads,
        cfg.kv_heads,
        cfg.ffn,
        cfg.vocab,
        if cfg.tied_head { "tied" } else { "untied" }
    )
}

/// Reads `--init`: every tensor of `cfg`'s model by its LLaMA name, with its shape; a missing
/// tensor, a wrong shape or a tensor the model does not have is an error naming it.
pub fn read_weights(path: &Path, cfg: &ModelConfig) -> Result<Weights> {
    let src = FileSource::open(path)?;
    let file = ModelFile::open(&src)?;
    let name = path.display();
    let specs = Weights::specs(cfg);
    for t in &file.tensors {
        if !specs.iter().any(|s| s.name == t.name) {
            return Err(LabError::BadFile(format!(
                "{name}: tensor {} is not part of the model these options describe ({})",
                t.name,
                describe_model(cfg)
            )));
        }
    }
    let mut w = Weights::zeros(cfg);
    for (dst, spec) in w.tensors_mut().into_iter().zip(&specs) {
        let t = file.tensor(&spec.name).ok_or_else(|| {
            LabError::BadFile(format!(
                "{name}: tensor {} is missing (expected shape {:?} for {})",
                spec.name,
                spec.shape,
                describe_model(cfg)
            ))
        })?;
        if t.shape != spec.shape {
            return Err(LabError::BadFile(format!(
                "{name}: tensor {}: expected shape {:?}, found {:?} (options: {})",
                spec.name,
                spec.shape,
                t.shape,
                describe_model(cfg)
            )));
        }
        *dst = file.read_f32(&src, t)?;
    }
    Ok(w)
}

fn create(path: &Path) -> Result<std::io::BufWriter<std::fs::File>> {
    let f = std::fs::File::create(path)
        .map_err(|e| LabError::Io(format!("cannot create {}: {e}", path.display())))?;
    Ok(std::io::BufWriter::new(f))
}

fn finish(mut w: std::io::BufWriter<std::fs::File>, path: &Path) -> Result<()> {
    use std::io::Write;
    w.flush()
        .map_err(|e| LabError::Io(format!("cannot write {}: {e}", path.display())))
}

/// A safetensors file of F32 tensors and one I64 tensor (token ids), with string metadata,
/// through the shared writer (`io::safetensors::write_tensors`).
fn write_with_tokens(
    path: &Path,
    floats: &[(String, Vec<usize>, &[f32])],
    tokens: (&str, Vec<usize>, &[u32]),
    metadata: &[(&str, String)],
) -> Result<()> {
    use crate::io::safetensors::{write_tensors, TensorValues, TypedTensor};
    let ids: Vec<i64> = tokens.2.iter().map(|&v| i64::from(v)).collect();
    let mut tensors: Vec<TypedTensor> = floats
        .iter()
        .map(|(name, shape, data)| TypedTensor {
            name: name.clone(),
            shape: shape.clone(),
            values: TensorValues::F32(data),
        })
        .collect();
    tensors.push(TypedTensor {
        name: tokens.0.into(),
        shape: tokens.1,
        values: TensorValues::I64(&ids),
    });
    let meta = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let mut w = create(path)?;
    write_tensors(&mut w, &tensors, &meta)?;
    finish(w, path)
}

/// `--grads`: gradients by parameter name, the batch as `tokens` (B, T+1), metadata
/// {format: pt, loss}.
fn write_grads(
    path: &Path,
    cfg: &ModelConfig,
    grads: &Weights,
    batch: &[u32],
    b: usize,
    t: usize,
    loss: f64,
) -> Result<()> {
    let floats: Vec<(String, Vec<usize>, &[f32])> = Weights::specs(cfg)
        .into_iter()
        .zip(grads.tensors())
        .map(|(s, g)| (s.name, s.shape, g))
        .collect();
    write_with_tokens(
        path,
        &floats,
        ("tokens", vec![b, t + 1], batch),
        &[("format", "pt".into()), ("loss", format!("{loss:.9e}"))],
    )
}

/// `--batches`: every step's batch, as a run with these options draws them, as `tokens`
/// (steps, B, T+1): what another framework needs to replay the run.
fn write_batches(path: &Path, corpus: &Corpus, opts: &TrainOptions) -> Result<()> {
    let mut batcher = super::data::Batcher::new(opts.seed);
    let mut all = Vec::with_capacity(opts.steps * opts.batch * (opts.ctx + 1));
    for _ in 0..opts.steps {
        all.extend(batcher.next(&corpus.train, opts.batch, opts.ctx));
    }
    write_with_tokens(
        path,
        &[],
        ("tokens", vec![opts.steps, opts.batch, opts.ctx + 1], &all),
        &[("format", "pt".into())],
    )
}

/// The trained model as safetensors (LLaMA names) and a config.json beside it.
fn write_model(path: &Path, model: &Model, opts: &TrainOptions, tok: &Tokenizer) -> Result<()> {
    let mut w = create(path)?;
    write_safetensors(&mut w, model)?;
    finish(w, path)?;
    let config = hf_config(&model.cfg, opts, tok);
    let config_path = path.with_file_name("config.json");
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| LabError::invalid(format!("cannot encode config.json: {e}")))?;
    std::fs::write(&config_path, text)
        .map_err(|e| LabError::Io(format!("cannot write {}: {e}", config_path.display())))
}

fn write_report(path: &Path, r: &Report<TrainResult>) -> Result<()> {
    let text = serde_json::to_string_pretty(r)
        .map_err(|e| LabError::invalid(format!("cannot encode the report: {e}")))?;
    if path.as_os_str() == "-" {
        println!("{text}");
        return Ok(());
    }
    std::fs::write(path, text)
        .map_err(|e| LabError::Io(format!("cannot write {}: {e}", path.display())))
}
