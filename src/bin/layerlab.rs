//! `layerlab`: the lab's command-line face. Same core as the page; output is JSON the page
//! can open. Errors are printed as sentences and give exit status 1 (2 for bad usage).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use layerlab::compute::RunControl;
use layerlab::compute::{Backend, BackendChoice, BackendInfo, Matrix, Silent};
use layerlab::eval::{perplexity, PplOptions, PplReport};
use layerlab::experiment::{Experiment, ModelSource, PruneSpec, TextSource};
use layerlab::io::{FileSource, Format, ModelFile};
use layerlab::model::causal::load_causal_lm;
use layerlab::model::describe;
use layerlab::prune::driver::{
    export_safetensors, hf_config, prune_model_on, Method, OwlOptions, PruneOptions, PruneReport,
};
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
    /// Perplexity of a LLaMA-family, GPT-2 or OPT model on a text (CPU, f32; GPT-2 as GGUF or
    /// as safetensors with config.json, OPT as safetensors with config.json): the text is tokenised once and cut into consecutive windows of --seqlen tokens (remainder dropped), each scored
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
    /// Prune every linear layer of a LLaMA-family, GPT-2 or OPT model block by block
    /// (magnitude, Wanda or SparseGPT, optionally with OWL's per-block sparsity), then compare perplexities.
    /// Calibration: --nsamples windows of --seqlen tokens from the start of --calib (or at
    /// seeded random offsets). Evaluation as `ppl` (consecutive windows, each alone).
    Prune {
        /// A .gguf file, or a .safetensors model with config.json and tokenizer.json beside
        /// it (or a folder holding them).
        model: PathBuf,
        /// magnitude, wanda or sparsegpt.
        #[arg(long)]
        method: Method,
        /// Target (mean) sparsity in [0, 1); not with --nm.
        #[arg(long)]
        sparsity: Option<f64>,
        /// N:M sparsity, e.g. 2:4: zero N of every M consecutive input weights of each row.
        #[arg(long)]
        nm: Option<String>,
        /// OWL: allocate per-block sparsity from the dense model's outlier ratios.
        #[arg(long)]
        owl: bool,
        /// OWL's M: outliers are scores above M x the block's mean score (with --owl; the
        /// outlier ratios are reported at M = 5 without it).
        #[arg(long, default_value_t = 5.0)]
        hyper_m: f64,
        /// OWL's lambda: block sparsities spread over S +- lambda.
        #[arg(long, default_value_t = 0.08)]
        lamda: f64,
        /// The calibration text (UTF-8).
        #[arg(long)]
        calib: PathBuf,
        /// The evaluation text (UTF-8); without it, no perplexity.
        #[arg(long)]
        eval: Option<PathBuf>,
        /// Calibration windows.
        #[arg(long, default_value_t = 16)]
        nsamples: usize,
        /// Tokens per calibration window (and per evaluation window, unless --eval-seqlen).
        #[arg(long, default_value_t = 256)]
        seqlen: usize,
        /// Tokens per evaluation window (default: --seqlen).
        #[arg(long)]
        eval_seqlen: Option<usize>,
        /// Draw the calibration windows at random offsets with this seed (default:
        /// consecutive windows from the start).
        #[arg(long)]
        calib_seed: Option<u64>,
        /// Score only the first N evaluation windows.
        #[arg(long)]
        max_eval_windows: Option<usize>,
        /// Windows that pass through a block together.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Skip the dense model's perplexity.
        #[arg(long)]
        no_dense: bool,
        /// Write the pruned model here as safetensors (F32, Hugging Face names); for a GGUF
        /// model a config.json is written beside it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where the forward passes and Wanda's and magnitude's selection run: auto (a real GPU, else the
        /// CPU), gpu (even a software one) or cpu.
        #[arg(long, default_value = "auto")]
        backend: BackendChoice,
        /// Write the report as JSON to this file ("-" for standard output).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Train a Pre-LN, Post-LN or Mix-LN decoder from scratch on a text, with per-layer
    /// diagnostics (gradient norms, hidden-state RMS, angular distance, layer removal).
    Train(layerlab::train::cli::TrainArgs),
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
        Command::Train(args) => layerlab::train::cli::run(&args),
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
            let text = read_text(&eval)?;
            let OpenedLm {
                path,
                src,
                file,
                config,
                tokenizer,
            } = open_for_forward(&model)?;
            let lm = load_causal_lm(&src, &file, config.as_ref())?;
            let ids = tokenizer.encode(&text)?;
            let opts = PplOptions {
                seqlen,
                max_windows,
                batch,
            };
            let report = perplexity(lm.as_ref(), &ids, &opts, &Progress).await?;
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
        Command::Prune {
            model,
            method,
            sparsity,
            nm,
            owl,
            hyper_m,
            lamda,
            calib,
            eval,
            nsamples,
            seqlen,
            eval_seqlen,
            calib_seed,
            max_eval_windows,
            batch,
            no_dense,
            out,
            backend,
            json,
        } => {
            let started = std::time::Instant::now();
            let nm = nm.as_deref().map(parse_nm).transpose()?;
            let sparsity =
                match (sparsity, nm) {
                    (Some(_), Some(_)) => return Err(LabError::invalid(
                        "give either --sparsity or --nm, not both (N:M sets the sparsity to N/M)",
                    )),
                    (Some(s), None) => s,
                    (None, Some((n, m))) => n as f64 / m as f64,
                    (None, None) => {
                        return Err(LabError::invalid(
                            "say how much to prune: --sparsity S (in [0, 1)) or --nm N:M",
                        ))
                    }
                };
            let opts = PruneOptions {
                method,
                sparsity,
                nm,
                owl: owl.then_some(OwlOptions { hyper_m, lamda }),
                nsamples,
                seqlen,
                calib_seed,
                batch,
                eval: PplOptions {
                    seqlen: eval_seqlen.unwrap_or(seqlen),
                    max_windows: max_eval_windows,
                    batch,
                },
                dense_ppl: !no_dense,
                ..PruneOptions::default()
            };
            if !owl && (hyper_m != 5.0 || lamda != 0.08) {
                return Err(LabError::invalid(
                    "--hyper-m and --lamda are OWL's: add --owl (or leave them out)",
                ));
            }
            opts.check()?;
            let calib_text = read_text(&calib)?;
            let eval_text = eval.as_deref().map(read_text).transpose()?;
            let OpenedLm {
                path,
                src,
                file,
                config,
                tokenizer,
            } = open_for_forward(&model)?;
            let lm = load_causal_lm(&src, &file, config.as_ref())?;
            let calib_ids = tokenizer.encode(&calib_text)?;
            let eval_ids = eval_text
                .as_deref()
                .map(|t| tokenizer.encode(t))
                .transpose()?;
            let b = Backend::new(backend).await?;
            let run = prune_model_on(
                &b,
                lm.as_ref(),
                &calib_ids,
                eval_ids.as_deref(),
                &opts,
                &Progress,
            )
            .await?;
            let text = |p: &Path| TextSource::Path {
                path: p.display().to_string(),
            };
            let experiment = Experiment::prune(
                ModelSource::Path {
                    path: path.display().to_string(),
                },
                PruneSpec {
                    options: opts.clone(),
                    calib_text: text(&calib),
                    eval_text: eval.as_deref().map_or(
                        TextSource::Path {
                            path: String::new(),
                        },
                        text,
                    ),
                },
            );
            let output = PruneOutput {
                experiment,
                model: path.display().to_string(),
                calib: calib.display().to_string(),
                eval: eval.as_ref().map(|p| p.display().to_string()),
                tokenizer: tokenizer.describe.clone(),
                report: run.report.clone(),
                backend: b.info(),
            };
            if let Some(out_path) = &out {
                let extra = serde_json::json!({ "experiment": output.experiment });
                let f = std::fs::File::create(out_path).map_err(|e| {
                    LabError::Io(format!("cannot create {}: {e}", out_path.display()))
                })?;
                let mut w = std::io::BufWriter::new(f);
                export_safetensors(lm.as_ref(), &run, &extra, &mut w)?;
                if file.format == Format::Gguf {
                    let cfg = out_path.with_file_name("config.json");
                    write_json(&cfg, &hf_config(lm.as_ref()))?;
                }
            }
            let to_stdout = json.as_ref().is_none_or(|p| p.as_os_str() != "-");
            if let Some(p) = &json {
                write_json(p, &output)?;
            }
            let summary = prune_summary(&output.report);
            if to_stdout {
                print!("{summary}");
            } else {
                eprint!("{summary}");
            }
            if let Some(p) = &out {
                eprintln!("pruned model written to {}", p.display());
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

/// What `layerlab prune --json` writes (the page's report has the same fields).
#[derive(serde::Serialize)]
struct PruneOutput {
    experiment: Experiment,
    model: String,
    calib: String,
    eval: Option<String>,
    tokenizer: String,
    #[serde(flatten)]
    report: PruneReport,
    backend: BackendInfo,
}

/// "N:M" -> (N, M), 0 <= N < M.
fn parse_nm(s: &str) -> Result<(usize, usize)> {
    let bad = || {
        LabError::invalid(format!(
            "--nm {s}: expected N:M with whole numbers 0 <= N < M, e.g. 2:4"
        ))
    };
    let (n, m) = s.split_once(':').ok_or_else(bad)?;
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    let m: usize = m.trim().parse().map_err(|_| bad())?;
    if m == 0 || n >= m {
        return Err(LabError::invalid(format!(
            "--nm {s}: N (the weights zeroed in each group of M) must be below M"
        )));
    }
    Ok((n, m))
}

/// The model's tokeniser: GGUF metadata, or tokenizer.json beside a safetensors file.
/// A model opened for the forward pass: the file, its header, the config.json beside a
/// safetensors file, and the tokeniser (GGUF metadata or tokenizer.json).
struct OpenedLm {
    path: PathBuf,
    src: FileSource,
    file: ModelFile,
    config: Option<serde_json::Value>,
    tokenizer: TextTokenizer,
}

fn open_for_forward(model: &Path) -> Result<OpenedLm> {
    let (path, config_path) = resolve_model(model, None)?;
    let src = FileSource::open(&path)?;
    let file = ModelFile::open(&src)?;
    let config = match (&file.format, &config_path) {
        (Format::Safetensors, Some(p)) => Some(read_config(p)?),
        _ => None,
    };
    let tokenizer = load_tokenizer(&file, &path)?;
    Ok(OpenedLm {
        path,
        src,
        file,
        config,
        tokenizer,
    })
}

fn load_tokenizer(file: &ModelFile, path: &Path) -> Result<TextTokenizer> {
    match file.format {
        Format::Gguf => TextTokenizer::from_gguf(file, &path.display().to_string()),
        Format::Safetensors => {
            let tj = path.with_file_name("tokenizer.json");
            let bytes = std::fs::read(&tj).map_err(|e| {
                LabError::Io(format!(
                    "{}: a safetensors model needs tokenizer.json beside it: {e}",
                    tj.display()
                ))
            })?;
            TextTokenizer::from_json(&bytes, &tj.display().to_string())
        }
    }
}

/// The per-block table, perplexities and timings of a pruning run.
fn prune_summary(r: &PruneReport) -> String {
    use std::fmt::Write as _;
    let o = &r.options;
    let mut s = String::new();
    let pattern = match o.nm {
        Some((n, m)) => format!("{n}:{m}"),
        None => format!("{:.4} unstructured", o.sparsity),
    };
    let _ = writeln!(
        s,
        "method      {}{} at {pattern}",
        if o.owl.is_some() { "OWL-" } else { "" },
        o.method.name()
    );
    let _ = writeln!(
        s,
        "calibration {} windows of {} tokens ({} in the text)",
        r.calibration.windows, r.calibration.seqlen, r.calibration.text_tokens
    );
    for n in &r.notices {
        let _ = writeln!(s, "notice      {n}");
    }
    let _ = writeln!(
        s,
        "\n{:>5} {:>12} {:>10} {:>10}",
        "block",
        format!("outl.% M={}", r.outlier_m),
        "sparsity",
        "achieved"
    );
    for b in &r.blocks {
        let _ = writeln!(
            s,
            "{:>5} {:>12.4} {:>10.4} {:>10.4}",
            b.index, b.outlier_ratio, b.sparsity, b.achieved_sparsity
        );
    }
    let _ = writeln!(
        s,
        "\nachieved    {:.6} ({} of {} linear weights are zero)",
        r.achieved_sparsity, r.pruned_weights, r.linear_weights
    );
    if let Some(p) = &r.perplexity {
        if let Some(d) = p.dense {
            let _ = writeln!(s, "ppl dense   {d:.4}");
        }
        let _ = writeln!(
            s,
            "ppl pruned  {:.4}  ({} windows of {}, {} predicted tokens)",
            p.pruned, p.windows, p.seqlen, p.predicted_tokens
        );
    }
    let t = &r.timings;
    let _ = write!(
        s,
        "time        dense pass {:.2} s, prune {:.2} s",
        t.dense_pass, t.prune
    );
    if let Some(d) = t.perplexity_dense {
        let _ = write!(s, ", ppl dense {d:.2} s");
    }
    if let Some(d) = t.perplexity_pruned {
        let _ = write!(s, ", ppl pruned {d:.2} s");
    }
    let _ = writeln!(s, ", total {:.2} s", t.total);
    s
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

/// A UTF-8 text file, or an error naming it.
fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| LabError::Io(format!("cannot read {}: {e}", path.display())))
}

fn read_config(path: &Path) -> Result<serde_json::Value> {
    let text = read_text(path)?;
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
