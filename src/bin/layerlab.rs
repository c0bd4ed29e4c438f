//! `layerlab`: the lab's command-line face. Same core as the page; output is JSON the page
//! can open. Errors are printed as sentences and give exit status 1 (2 for bad usage).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use layerlab::compute::RunControl;
use layerlab::compute::{Backend, BackendChoice, Matrix, Silent};
use layerlab::eval::{perplexity, PplOptions, PplReport};
use layerlab::experiment::{Experiment, ModelSource};
use layerlab::io::{FileSource, Format, ModelFile};
use layerlab::model::describe;
use layerlab::model::llama::Llama;
use layerlab::stats::model::{model_stats, ModelReport};
use layerlab::stats::{tensor_stats, StatsOptions, StatsRun};
use layerlab::synth::{weights, SynthSpec};
use layerlab::tokenizer::TextTokenizer;
use layerlab::{LabError, Result};

#[derive(Parser)]
#[command(
    name = "layerlab",
    version,
    about = "LayerLab: look inside transformers layer by layer (OWL, Mix-LN, Sebra).",
    long_about = "LayerLab: look inside transformers layer by layer.\n\nThe same Rust core as \
                  the browser lab, for scripts, bigger models and benchmarks. Computes on the \
                  GPU through Vulkan when one is present (Mesa's lavapipe counts), else on the CPU."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show which compute backend this machine gives the lab, and why.
    Backend {
        /// auto (GPU if present, else CPU), gpu (fail without one) or cpu.
        #[arg(long, default_value = "auto")]
        backend: BackendChoice,
    },
    /// Statistics of every tensor and every block of a model (safetensors or GGUF): shape,
    /// parameters, mean |w|, std, max |w|, kurtosis, outlier fraction, histogram.
    Stats {
        /// A .gguf or .safetensors file, or a folder holding one (with config.json).
        model: PathBuf,
        /// The model's Hugging Face config.json (default: the one beside the model).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Outliers are |w| > k x mean |w|.
        #[arg(long, default_value_t = 5.0)]
        k: f32,
        /// Histogram bins (1..=256).
        #[arg(long, default_value_t = 64)]
        bins: u32,
        #[arg(long, default_value = "auto")]
        backend: BackendChoice,
        /// Write the full report as JSON to this file ("-" for standard output).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Perplexity of a LLaMA-family model on a text (CPU, f32): the text is tokenised once
    /// and cut into consecutive windows of --seqlen tokens (remainder dropped), each scored
    /// on its own; ppl = exp(total NLL / predicted tokens). BOS only where the model's
    /// tokeniser asks for it (GGUF tokenizer.ggml.add_bos_token).
    Ppl {
        /// A .gguf file (tokeniser from its metadata), or a .safetensors model with
        /// config.json and tokenizer.json beside it (or a folder holding them).
        model: PathBuf,
        /// The evaluation text (UTF-8).
        #[arg(long)]
        eval: PathBuf,
        /// Tokens per window.
        #[arg(long, default_value_t = 256)]
        seqlen: usize,
        /// Score only the first N windows.
        #[arg(long)]
        max_windows: Option<usize>,
        /// Windows that pass through a block together.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Write the report as JSON to this file ("-" for standard output).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Statistics of a seeded synthetic weight matrix: the reduction the page's compute
    /// check runs, so both can be compared number for number.
    Reduce {
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long, default_value_t = 1000)]
        rows: usize,
        #[arg(long, default_value_t = 333)]
        cols: usize,
        /// Outliers are |w| > k x mean |w|.
        #[arg(long, default_value_t = 5.0)]
        k: f32,
        /// Histogram bins (1..=256).
        #[arg(long, default_value_t = 64)]
        bins: u32,
        /// Skip the per-column statistics.
        #[arg(long)]
        no_columns: bool,
        #[arg(long, default_value = "auto")]
        backend: BackendChoice,
        /// Write the full result as JSON to this file ("-" for standard output).
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match pollster::block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Backend { backend } => {
            let b = Backend::new(backend).await?;
            let info = b.info();
            println!("{}", info.name);
            if let Some(reason) = info.reason {
                println!("reason: {reason}");
            }
            Ok(())
        }
        Command::Stats {
            model,
            config,
            k,
            bins,
            backend,
            json,
        } => {
            let started = std::time::Instant::now();
            let (path, config_path) = resolve_model(&model, config)?;
            let config = match &config_path {
                Some(p) => Some(read_config(p)?),
                None => None,
            };
            let src = FileSource::open(&path)?;
            let file = ModelFile::open(&src)?;
            let desc = describe(&file, config.as_ref());
            let opts = StatsOptions {
                outlier_k: k,
                bins,
                per_column: false,
            };
            let b = Backend::new(backend).await?;
            let mut report = model_stats(&b, &src, &file, &desc, &opts, &Silent).await?;
            report.experiment = Some(Experiment::layers(
                ModelSource::Path {
                    path: path.display().to_string(),
                },
                opts,
            ));
            match json {
                Some(out) => write_json(&out, &report)?,
                None => print_model_summary(&report),
            }
            eprintln!("done in {:.2} s", started.elapsed().as_secs_f64());
            Ok(())
        }
        Command::Ppl {
            model,
            eval,
            seqlen,
            max_windows,
            batch,
            json,
        } => {
            let started = std::time::Instant::now();
            let (path, config_path) = resolve_model(&model, None)?;
            let text = std::fs::read_to_string(&eval)
                .map_err(|e| LabError::Io(format!("cannot read {}: {e}", eval.display())))?;
            let src = FileSource::open(&path)?;
            let file = ModelFile::open(&src)?;
            let config = match (&file.format, &config_path) {
                (Format::Safetensors, Some(p)) => Some(read_config(p)?),
                _ => None,
            };
            let tokenizer = match file.format {
                Format::Gguf => TextTokenizer::from_gguf(&file, &path.display().to_string())?,
                Format::Safetensors => {
                    let tj = path.with_file_name("tokenizer.json");
                    let bytes = std::fs::read(&tj).map_err(|e| {
                        LabError::Io(format!(
                            "{}: a safetensors model needs tokenizer.json beside it: {e}",
                            tj.display()
                        ))
                    })?;
                    TextTokenizer::from_json(&bytes, &tj.display().to_string())?
                }
            };
            let llama = Llama::new(&src, &file, config.as_ref())?;
            let ids = tokenizer.encode(&text)?;
            let opts = PplOptions {
                seqlen,
                max_windows,
                batch,
            };
            let report = perplexity(&llama, &ids, &opts, &Progress).await?;
            let out = PplOutput {
                model: path.display().to_string(),
                eval: eval.display().to_string(),
                tokenizer: tokenizer.describe.clone(),
                report,
            };
            // With --json - the JSON alone goes to standard output, the summary to stderr.
            let to_stdout = json.as_ref().is_none_or(|p| p.as_os_str() != "-");
            if let Some(p) = &json {
                write_json(p, &out)?;
            }
            let r = &out.report;
            let summary = format!(
                "perplexity  {:.4}\ntokens      {} in the text, {} windows of {} ({} predicted, \
                 {} dropped)\ntokenizer   {}",
                r.perplexity,
                r.text_tokens,
                r.windows,
                r.seqlen,
                r.predicted_tokens,
                r.text_tokens - r.windows * r.seqlen,
                out.tokenizer
            );
            if to_stdout {
                println!("{summary}");
            } else {
                eprintln!("{summary}");
            }
            eprintln!("done in {:.2} s", started.elapsed().as_secs_f64());
            Ok(())
        }
        Command::Reduce {
            seed,
            rows,
            cols,
            k,
            bins,
            no_columns,
            backend,
            json,
        } => {
            let spec = SynthSpec { seed, rows, cols };
            let data = weights(spec);
            let m = Matrix::new(&data, rows, cols)?;
            let opts = StatsOptions {
                outlier_k: k,
                bins,
                per_column: !no_columns,
            };
            let b = Backend::new(backend).await?;
            let out = tensor_stats(&b, m, &opts, &Silent).await?;
            match json {
                Some(path) => write_json(&path, &out)?,
                None => print_summary(&out),
            }
            Ok(())
        }
    }
}

/// What `layerlab ppl --json` writes.
#[derive(serde::Serialize)]
struct PplOutput {
    model: String,
    eval: String,
    tokenizer: String,
    #[serde(flatten)]
    report: PplReport,
}

/// Progress of a long run on standard error.
struct Progress;

impl RunControl for Progress {
    fn progress(&self, stage: &str, done: u64, total: u64) {
        eprint!("\r{stage}: {done}/{total}");
        if done == total {
            eprintln!();
        }
    }
    fn cancelled(&self) -> bool {
        false
    }
}

fn write_json<T: serde::Serialize>(path: &PathBuf, out: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(out).map_err(|e| LabError::Io(e.to_string()))?;
    if path.as_os_str() == "-" {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}")
            .map_err(|e| LabError::Io(format!("cannot write to standard output: {e}")))
    } else {
        std::fs::write(path, text + "\n")
            .map_err(|e| LabError::Io(format!("cannot write {}: {e}", path.display())))
    }
}

fn print_summary(out: &StatsRun) {
    let s = &out.stats;
    println!("backend     {}", out.backend.name);
    if let Some(n) = &out.notice {
        println!("notice      {n}");
    }
    println!("shape       [{}, {}]", s.rows, s.cols);
    println!("mean        {:.6e}", s.mean);
    println!("std         {:.6e}", s.std);
    println!("mean |w|    {:.6e}", s.mean_abs);
    println!("max |w|     {:.6e}", s.max_abs);
    match s.kurtosis {
        Some(k) => println!("kurtosis    {k:.4}"),
        None => println!("kurtosis    undefined (zero variance)"),
    }
    println!(
        "outliers    {} of {} ({:.4}%) above {} x mean |w| = {:.4e}",
        s.outlier_count,
        s.count,
        100.0 * s.outlier_fraction,
        s.outlier_k,
        s.outlier_threshold
    );
}

/// A model path: a file, or a folder holding exactly one .gguf or .safetensors file. The
/// config is the one given, else config.json beside the model when there is one.
fn resolve_model(model: &Path, config: Option<PathBuf>) -> Result<(PathBuf, Option<PathBuf>)> {
    let path = if model.is_dir() {
        let entries = std::fs::read_dir(model)
            .map_err(|e| LabError::Io(format!("cannot list {}: {e}", model.display())))?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|x| x.to_str()),
                    Some("gguf" | "safetensors")
                )
            })
            .collect();
        found.sort();
        match found.len() {
            1 => found.remove(0),
            0 => {
                return Err(LabError::invalid(format!(
                    "{} holds no .gguf or .safetensors file",
                    model.display()
                )))
            }
            _ => {
                return Err(LabError::invalid(format!(
                    "{} holds several model files ({}); name one (sharded checkpoints are not supported yet)",
                    model.display(),
                    found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                )))
            }
        }
    } else {
        model.to_path_buf()
    };
    let config = config.or_else(|| {
        let beside = path.parent().map(|d| d.join("config.json"))?;
        beside.is_file().then_some(beside)
    });
    Ok((path, config))
}

fn read_config(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LabError::Io(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| LabError::BadFile(format!("{}: not valid JSON: {e}", path.display())))
}

fn print_model_summary(r: &ModelReport) {
    let m = &r.model;
    println!("model       {} ({:?}, {})", m.file, m.format, m.arch_name);
    println!("backend     {}", r.backend.name);
    println!(
        "tensors     {}, {} parameters, {} blocks",
        m.tensors, m.params, m.blocks
    );
    for n in m.notice.iter().chain(&r.notices) {
        println!("notice      {n}");
    }
    println!();
    println!(
        "{:>5} {:>10} {:>11} {:>11} {:>11} {:>10} {:>9}",
        "block", "params", "mean |w|", "std", "max |w|", "kurtosis", "outl. %"
    );
    for b in &r.blocks {
        if let Some(s) = &b.stats {
            println!(
                "{:>5} {:>10} {:>11.4e} {:>11.4e} {:>11.4e} {:>10.3} {:>9.4}",
                b.index,
                b.params,
                s.mean_abs,
                s.std,
                s.max_abs,
                s.kurtosis.unwrap_or(f64::NAN),
                100.0 * s.outlier_fraction
            );
        }
    }
}
