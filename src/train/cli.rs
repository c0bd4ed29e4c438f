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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::compute::GpuContext;
use crate::io::safetensors::{write_f32, F32Tensor};
use crate::io::{FileSource, ModelFile};
use crate::tokenizer::TextTokenizer;
use crate::{LabError, Result};

use super::data::{Corpus, Tokenizer};
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

/// `layerlab train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    // The GPU when asked for, or for auto when a hardware one comes up. On a software adapter
    // (Mesa's lavapipe, SwiftShader) auto keeps the CPU path, the reference that is the same
    // bit for bit on any thread count; the GPU path agrees with it only within f32 rounding
    // (tests/train_cli.rs). Speed on lavapipe was not measured on an idle machine.
    let gpu = match args.backend.as_str() {
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
    let opts = args.options();
    let text = std::fs::read_to_string(&args.text)
        .map_err(|e| LabError::Io(format!("cannot read {}: {e}", args.text.display())))?;
    let tokenizer = load_tokenizer(&args.tokenizer, &text)?;
    let ids = tokenizer.encode(&text)?;
    let corpus = Corpus::split(ids, tokenizer.vocab_size(), opts.ctx)?;
    let cfg = opts.model_config(corpus.vocab_size)?;
    let init = match &args.init {
        Some(p) => Some(read_weights(p, &cfg)?),
        None => None,
    };
    if let Some(path) = &args.grads {
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
    if let Some(path) = &args.batches {
        write_batches(path, &corpus, &opts)?;
    }
    let run = match &gpu {
        Some(g) => train_on(&corpus, &opts, init, &StderrProgress, &mut GpuSteps::new(g))?,
        None => train(&corpus, &opts, init, &StderrProgress)?,
    };
    let r = &run.report;
    if let Some(out) = &args.out {
        write_model(out, &run.model, &opts, &tokenizer)?;
    }
    if let Some(p) = &args.json {
        write_report(p, r)?;
    }
    eprintln!("{}", summary(r, &tokenizer.describe()));
    Ok(())
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

fn load_tokenizer(choice: &str, text: &str) -> Result<Tokenizer> {
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
    let specs = Weights::specs(&model.cfg);
    let tensors: Vec<F32Tensor> = specs
        .iter()
        .zip(model.weights.tensors())
        .map(|(s, t)| F32Tensor {
            name: s.name.clone(),
            shape: s.shape.clone(),
            data: std::borrow::Cow::Borrowed(t),
        })
        .collect();
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut w = create(path)?;
    write_f32(&mut w, &tensors, &meta)?;
    finish(w, path)?;
    let config = hf_config(&model.cfg, opts, tok);
    let config_path = path.with_file_name("config.json");
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| LabError::invalid(format!("cannot encode config.json: {e}")))?;
    std::fs::write(&config_path, text)
        .map_err(|e| LabError::Io(format!("cannot write {}: {e}", config_path.display())))
}

/// A Hugging Face LlamaConfig for the model, plus `layerlab`: the placement (the first
/// `post_ln_blocks` blocks are Post-LN) and, for a character model, its vocabulary.
pub fn hf_config(cfg: &ModelConfig, opts: &TrainOptions, tok: &Tokenizer) -> serde_json::Value {
    let chars = match tok {
        Tokenizer::Char(c) => Some(c.iter().collect::<String>()),
        Tokenizer::Bpe(_) => None,
    };
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.width,
        "intermediate_size": cfg.ffn,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "vocab_size": cfg.vocab,
        "max_position_embeddings": opts.ctx,
        "rms_norm_eps": super::ops::RMS_EPS,
        "rope_theta": super::ops::ROPE_THETA,
        "hidden_act": "silu",
        "tie_word_embeddings": cfg.tied_head,
        "torch_dtype": "float32",
        "layerlab": {
            "norm": opts.norm,
            "alpha": opts.alpha,
            "post_ln_blocks": cfg.post_blocks,
            "char_vocab": chars,
        },
    })
}

fn write_report(path: &Path, r: &TrainReport) -> Result<()> {
    let text = serde_json::to_string_pretty(r)
        .map_err(|e| LabError::invalid(format!("cannot encode the report: {e}")))?;
    if path.as_os_str() == "-" {
        println!("{text}");
        return Ok(());
    }
    std::fs::write(path, text)
        .map_err(|e| LabError::Io(format!("cannot write {}: {e}", path.display())))
}
