//! `layerlab`: the lab's command-line face. Same core as the page; output is JSON the page
//! can open. Errors are printed as sentences and give exit status 1 (2 for bad usage).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use layerlab::compute::RunControl;
use layerlab::compute::{Backend, BackendChoice, Matrix, Silent};
use layerlab::eval::{perplexity, PplOptions, PplReport};
use layerlab::experiment::{
    ComputeSpec, Experiment, LabSpec, LayersSpec, ModelSource, PruneResult, PruneSpec, Report,
    TextSource, TrainResult, TrainSpec,
};
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
    /// Rerun any experiment: a JSON experiment, a report the page or the CLI wrote (the
    /// experiment inside it), or a page link. Writes the same report as the page. A model
    /// the page read from a URL or a dropped file is given with --model; built-in texts are
    /// /usr/share/common-licenses/NAME.
    Run {
        /// experiment.json, report.json, or a link ('http://…/?v=2&lab=prune&…').
        experiment: String,
        /// The model file (instead of the experiment's URL or dropped file).
        #[arg(long)]
        model: Option<PathBuf>,
        /// The calibration text (instead of the experiment's).
        #[arg(long)]
        calib: Option<PathBuf>,
        /// The evaluation text (instead of the experiment's).
        #[arg(long)]
        eval: Option<PathBuf>,
        /// The training text (instead of the experiment's; training experiments).
        #[arg(long)]
        text: Option<PathBuf>,
        #[arg(long, default_value = "auto")]
        backend: BackendChoice,
        /// Write a pruned model here as safetensors (pruning experiments), or the trained
        /// model with its config.json beside it (training experiments of one run).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write the report as JSON to this file ("-" for standard output).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Print the experiment as it was read (JSON, upgraded to the current version) and
        /// stop without running it.
        #[arg(long)]
        dry_run: bool,
    },
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
        #[arg(long, default_value_t = LayersSpec::default().outlier_k)]
        k: f32,
        /// Histogram bins (1..=256).
        #[arg(long, default_value_t = LayersSpec::default().bins)]
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
        #[arg(long, default_value_t = PplOptions::default().seqlen)]
        seqlen: usize,
        /// Score only the first N windows.
        #[arg(long)]
        max_windows: Option<usize>,
        /// Windows that pass through a block together.
        #[arg(long, default_value_t = PplOptions::default().batch)]
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
        #[arg(long, default_value_t = OwlOptions::default().hyper_m)]
        hyper_m: f64,
        /// OWL's lambda: block sparsities spread over S +- lambda.
        #[arg(long, default_value_t = OwlOptions::default().lamda)]
        lamda: f64,
        /// The calibration text (UTF-8).
        #[arg(long)]
        calib: PathBuf,
        /// The evaluation text (UTF-8); without it, no perplexity.
        #[arg(long)]
        eval: Option<PathBuf>,
        /// Calibration windows.
        #[arg(long, default_value_t = PruneOptions::default().nsamples)]
        nsamples: usize,
        /// Tokens per calibration window (and per evaluation window, unless --eval-seqlen).
        #[arg(long, default_value_t = PruneOptions::default().seqlen)]
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
        #[arg(long, default_value_t = PruneOptions::default().batch)]
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
    /// Sebra on seeded biased shape images: ERM, the spuriosity ranking (Stage 1), the
    /// debiased model (Stage 2) and a group-balanced oracle, scored per group, with the
    /// ranking's weighted Kendall tau.
    Sebra(layerlab::sebra::cli::SebraArgs),
    /// Statistics of a seeded synthetic weight matrix: the reduction the page's compute
    /// check runs, so both can be compared number for number.
    Reduce {
        #[arg(long, default_value_t = ComputeSpec::default().synth.seed)]
        seed: u64,
        #[arg(long, default_value_t = ComputeSpec::default().synth.rows)]
        rows: usize,
        #[arg(long, default_value_t = ComputeSpec::default().synth.cols)]
        cols: usize,
        /// Outliers are |w| > k x mean |w|.
        #[arg(long, default_value_t = ComputeSpec::default().stats.outlier_k)]
        k: f32,
        /// Histogram bins (1..=256).
        #[arg(long, default_value_t = ComputeSpec::default().stats.bins)]
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

/// Each subcommand in three stages: build the Experiment (from flags, or read it), run it
/// (`run_experiment`, the same for every face), write the report (`emit`).
async fn run(cli: Cli) -> Result<()> {
    let started = std::time::Instant::now();
    let (experiment, files, output) = match cli.command {
        // `layerlab train` builds its experiment from its flags and runs it through the same
        // runner as `layerlab run` (layerlab::train::cli::run_spec); it also writes the files
        // only a single run has (--init, --grads, --batches).
        Command::Train(args) => return layerlab::train::cli::run(&args),
        Command::Sebra(args) => return layerlab::sebra::cli::run(&args),
        Command::Backend { backend } => {
            let b = Backend::new(backend).await?;
            let info = b.info();
            println!("{}", info.name);
            if let Some(reason) = info.reason {
                println!("reason: {reason}");
            }
            return Ok(());
        }
        Command::Ppl {
            model,
            eval,
            seqlen,
            max_windows,
            batch,
            json,
        } => {
            let opts = PplOptions {
                seqlen,
                max_windows,
                batch,
            };
            return run_ppl(&model, &eval, &opts, json.as_deref()).await;
        }
        Command::Run {
            experiment,
            model,
            calib,
            eval,
            text,
            backend,
            out,
            json,
            dry_run,
        } => {
            let experiment = read_experiment(&experiment)?;
            if dry_run {
                println!("{}", experiment.to_json());
                return Ok(());
            }
            let files = RunFiles {
                model,
                config: None,
                calib,
                eval,
                text,
                out,
            };
            (experiment, files, Output { backend, json })
        }
        Command::Stats {
            model,
            config,
            k,
            bins,
            backend,
            json,
        } => {
            let experiment = Experiment::layers(LayersSpec {
                model: path_source(&model),
                outlier_k: k,
                bins,
            });
            let files = RunFiles {
                model: Some(model),
                config,
                ..RunFiles::default()
            };
            (experiment, files, Output { backend, json })
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
            let flags = PruneFlags {
                method,
                sparsity,
                nm,
                owl,
                hyper_m,
                lamda,
                nsamples,
                seqlen,
                eval_seqlen,
                calib_seed,
                max_eval_windows,
                batch,
                no_dense,
            };
            let experiment = Experiment::prune(PruneSpec {
                model: path_source(&model),
                options: flags.options()?,
                calib_text: text_source(&calib),
                eval_text: eval.as_deref().map(text_source),
            });
            let files = RunFiles {
                model: Some(model),
                calib: Some(calib),
                eval,
                out,
                ..RunFiles::default()
            };
            (experiment, files, Output { backend, json })
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
            let experiment = Experiment::compute(ComputeSpec {
                synth: SynthSpec { seed, rows, cols },
                stats: StatsOptions {
                    outlier_k: k,
                    bins,
                    per_column: !no_columns,
                },
            });
            (experiment, RunFiles::default(), Output { backend, json })
        }
    };
    let b = Backend::new(output.backend).await?;
    let done = run_experiment(&b, experiment, &files).await?;
    emit(&done, output.json.as_deref())?;
    if let Some(p) = &files.out {
        eprintln!("pruned model written to {}", p.display());
    }
    eprintln!("done in {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Where a run's report goes, and on which backend it runs.
struct Output {
    backend: BackendChoice,
    json: Option<PathBuf>,
}

/// The files a run reads and writes: the experiment names its sources, and these paths
/// stand in for the ones a CLI cannot read (a URL, a file dropped on the page) or override
/// them.
#[derive(Default)]
struct RunFiles {
    model: Option<PathBuf>,
    config: Option<PathBuf>,
    calib: Option<PathBuf>,
    eval: Option<PathBuf>,
    /// The training text.
    text: Option<PathBuf>,
    /// Where the pruned or trained model goes (safetensors), if anywhere.
    out: Option<PathBuf>,
}

/// The flags of `layerlab prune`, before they become the experiment's options.
struct PruneFlags {
    method: Method,
    sparsity: Option<f64>,
    nm: Option<String>,
    owl: bool,
    hyper_m: f64,
    lamda: f64,
    nsamples: usize,
    seqlen: usize,
    eval_seqlen: Option<usize>,
    calib_seed: Option<u64>,
    max_eval_windows: Option<usize>,
    batch: usize,
    no_dense: bool,
}

impl PruneFlags {
    fn options(self) -> Result<PruneOptions> {
        let nm = self.nm.as_deref().map(parse_nm).transpose()?;
        let sparsity = match (self.sparsity, nm) {
            (Some(_), Some(_)) => {
                return Err(LabError::invalid(
                    "give either --sparsity or --nm, not both (N:M sets the sparsity to N/M)",
                ))
            }
            (Some(s), None) => s,
            (None, Some((n, m))) => n as f64 / m as f64,
            (None, None) => {
                return Err(LabError::invalid(
                    "say how much to prune: --sparsity S (in [0, 1)) or --nm N:M",
                ))
            }
        };
        let owl_default = OwlOptions::default();
        if !self.owl && (self.hyper_m != owl_default.hyper_m || self.lamda != owl_default.lamda) {
            return Err(LabError::invalid(
                "--hyper-m and --lamda are OWL's: add --owl (or leave them out)",
            ));
        }
        let opts = PruneOptions {
            method: self.method,
            sparsity,
            nm,
            owl: self.owl.then_some(OwlOptions {
                hyper_m: self.hyper_m,
                lamda: self.lamda,
            }),
            nsamples: self.nsamples,
            seqlen: self.seqlen,
            calib_seed: self.calib_seed,
            batch: self.batch,
            eval: PplOptions {
                seqlen: self.eval_seqlen.unwrap_or(self.seqlen),
                max_windows: self.max_eval_windows,
                batch: self.batch,
            },
            dense_ppl: !self.no_dense,
            ..PruneOptions::default()
        };
        opts.check()?;
        Ok(opts)
    }
}

fn path_source(p: &Path) -> ModelSource {
    ModelSource::Path {
        path: p.display().to_string(),
    }
}

fn text_source(p: &Path) -> TextSource {
    TextSource::Path {
        path: p.display().to_string(),
    }
}

/// `layerlab run`'s argument: a JSON file (an experiment or a report holding one), or a
/// link (`'http://…/?v=2&lab=prune&…'`).
fn read_experiment(arg: &str) -> Result<Experiment> {
    let path = Path::new(arg);
    if path.is_file() {
        let text = read_text(path)?;
        Experiment::parse(&text).map_err(|e| LabError::invalid(format!("{arg}: {e}")))
    } else if arg.contains('?') || arg.contains('=') {
        Experiment::parse(arg)
    } else {
        Err(LabError::Io(format!(
            "cannot read {arg}: no such file (give an experiment or report .json, or a link)"
        )))
    }
}

/// The model file a run reads: --model, else the experiment's path. A URL or a file
/// dropped on the page has to be given with --model.
fn model_path(source: &ModelSource, files: &RunFiles) -> Result<PathBuf> {
    if let Some(p) = &files.model {
        return Ok(p.clone());
    }
    match source {
        ModelSource::Path { path } => Ok(PathBuf::from(path)),
        ModelSource::Url { url } => Err(LabError::invalid(format!(
            "the experiment's model is the URL {url}: give the file with --model PATH"
        ))),
        ModelSource::File { name, .. } => Err(LabError::invalid(format!(
            "the experiment's model is the file {name}, dropped on the page: give it with --model PATH"
        ))),
    }
}

/// A text a run reads: the flag's path, else the experiment's (a built-in text is Debian's
/// /usr/share/common-licenses/NAME, as the page serves it).
fn text_path(source: &TextSource, flag: Option<&Path>, what: &str) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    match source {
        TextSource::Builtin { name } => Ok(Path::new("/usr/share/common-licenses").join(name)),
        TextSource::Path { path } => Ok(PathBuf::from(path)),
        TextSource::File { name, .. } => Err(LabError::invalid(format!(
            "the experiment's {what} text is the file {name}, chosen on the page: give it with --{what} PATH"
        ))),
    }
}

/// A finished run: its report, as the page writes it too, and its summary for a person.
// One per run: the variants' sizes do not matter, so none is boxed.
#[allow(clippy::large_enum_variant)]
enum RunReport {
    Layers(Report<ModelReport>),
    Prune(Report<PruneResult>),
    Compute(Report<StatsRun>),
    Train(Report<TrainResult>),
    Sebra(Report<layerlab::sebra::run::SebraReport>),
}

/// The one runner of every face's experiment. The report's experiment names the files
/// actually read.
async fn run_experiment(
    b: &Backend,
    experiment: Experiment,
    files: &RunFiles,
) -> Result<RunReport> {
    Ok(match experiment.lab {
        LabSpec::Layers(spec) => RunReport::Layers(run_layers(b, spec, files).await?),
        LabSpec::Prune(spec) => RunReport::Prune(run_prune(b, spec, files).await?),
        LabSpec::Compute(spec) => RunReport::Compute(run_compute(b, spec).await?),
        LabSpec::Train(spec) => RunReport::Train(run_train(spec, files)?),
        // `layerlab run` trains the bias lab on the CPU whatever the backend: the reference the
        // page's runs are checked against (`layerlab sebra --backend gpu` trains on the GPU).
        LabSpec::Sebra(spec) => RunReport::Sebra(layerlab::sebra::cli::run_spec(
            spec,
            &layerlab::sebra::cli::StderrProgress,
        )?),
    })
}

/// A training experiment: every placement it lists, on the CPU (as the page trains), the
/// report `layerlab train --json` writes. A text dropped on the page is given with --text.
fn run_train(mut spec: TrainSpec, files: &RunFiles) -> Result<Report<TrainResult>> {
    let text = match (&files.text, &spec.text) {
        (None, TextSource::File { name, .. }) => {
            return Err(LabError::invalid(format!(
                "the experiment's training text is the file {name}, chosen on the page: give it with --text PATH"
            )))
        }
        (flag, source) => text_path(source, flag.as_deref(), "text")?,
    };
    let train_files = layerlab::train::cli::TrainFiles {
        out: files.out.clone(),
        ..Default::default()
    };
    let result = layerlab::train::cli::run_spec(&spec, &text, &train_files, None)?;
    if files.text.is_some() || matches!(spec.text, TextSource::File { .. }) {
        spec.text = text_source(&text);
    }
    Ok(Report {
        experiment: Experiment::train(spec),
        result,
    })
}

async fn run_layers(
    b: &Backend,
    mut spec: LayersSpec,
    files: &RunFiles,
) -> Result<Report<ModelReport>> {
    let model = model_path(&spec.model, files)?;
    let (path, config_path) = resolve_model(&model, files.config.clone())?;
    let config = config_path.as_deref().map(read_config).transpose()?;
    let src = FileSource::open(&path)?;
    let file = ModelFile::open(&src)?;
    let desc = describe(&file, config.as_ref());
    let result = model_stats(b, &src, &file, &desc, &spec.stats_options(), &Silent).await?;
    spec.model = path_source(&path);
    Ok(Report {
        experiment: Experiment::layers(spec),
        result,
    })
}

async fn run_prune(
    b: &Backend,
    mut spec: PruneSpec,
    files: &RunFiles,
) -> Result<Report<PruneResult>> {
    spec.options.check()?;
    let model = model_path(&spec.model, files)?;
    let calib = text_path(&spec.calib_text, files.calib.as_deref(), "calib")?;
    let eval = match &spec.eval_text {
        Some(t) => Some(text_path(t, files.eval.as_deref(), "eval")?),
        None => files.eval.clone(),
    };
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
    let run = prune_model_on(
        b,
        lm.as_ref(),
        &calib_ids,
        eval_ids.as_deref(),
        &spec.options,
        &Progress,
    )
    .await?;
    // The report names the files read; built-in texts keep their names.
    spec.model = path_source(&path);
    if files.calib.is_some() || matches!(spec.calib_text, TextSource::File { .. }) {
        spec.calib_text = text_source(&calib);
    }
    if let Some(e) = &eval {
        if files.eval.is_some() || !matches!(spec.eval_text, Some(TextSource::Builtin { .. })) {
            spec.eval_text = Some(text_source(e));
        }
    }
    let experiment = Experiment::prune(spec);
    if let Some(out_path) = &files.out {
        let extra = serde_json::json!({ "experiment": experiment });
        let f = std::fs::File::create(out_path)
            .map_err(|e| LabError::Io(format!("cannot create {}: {e}", out_path.display())))?;
        let mut w = std::io::BufWriter::new(f);
        export_safetensors(lm.as_ref(), &run, &extra, &mut w)?;
        if file.format == Format::Gguf {
            let cfg = out_path.with_file_name("config.json");
            write_json(&cfg, &hf_config(lm.as_ref()))?;
        }
    }
    Ok(Report {
        experiment,
        result: PruneResult {
            model: path.display().to_string(),
            calib: calib.display().to_string(),
            eval: eval.as_ref().map(|p| p.display().to_string()),
            tokenizer: tokenizer.describe.clone(),
            report: run.report,
            backend: b.info(),
        },
    })
}

async fn run_compute(b: &Backend, spec: ComputeSpec) -> Result<Report<StatsRun>> {
    let data = weights(spec.synth);
    let m = Matrix::new(&data, spec.synth.rows, spec.synth.cols)?;
    let result = tensor_stats(b, m, &spec.stats, &Silent).await?;
    Ok(Report {
        experiment: Experiment::compute(spec),
        result,
    })
}

/// Writes the report as JSON where asked, and the summary: on standard output, unless the
/// JSON goes there (then the pruning summary goes to standard error; the statistics'
/// summaries are left out whenever JSON is written, as before).
fn emit(done: &RunReport, json: Option<&Path>) -> Result<()> {
    let json_to_stdout = json.is_some_and(|p| p.as_os_str() == "-");
    match done {
        RunReport::Layers(r) => match json {
            Some(p) => write_json(p, r)?,
            None => print_model_summary(&r.result),
        },
        RunReport::Compute(r) => match json {
            Some(p) => write_json(p, r)?,
            None => print_summary(&r.result),
        },
        RunReport::Train(r) => {
            if let Some(p) = json {
                write_json(p, r)?;
            }
            let summary = layerlab::train::cli::summaries(&r.result);
            if json_to_stdout {
                eprint!("{summary}");
            } else {
                print!("{summary}");
            }
        }
        RunReport::Sebra(r) => {
            if let Some(p) = json {
                write_json(p, r)?;
            }
            eprintln!("{}", layerlab::sebra::cli::summary(&r.result));
        }
        RunReport::Prune(r) => {
            if let Some(p) = json {
                write_json(p, r)?;
            }
            let summary = prune_summary(&r.result.report);
            if json_to_stdout {
                eprint!("{summary}");
            } else {
                print!("{summary}");
            }
        }
    }
    Ok(())
}

async fn run_ppl(model: &Path, eval: &Path, opts: &PplOptions, json: Option<&Path>) -> Result<()> {
    let started = std::time::Instant::now();
    let text = read_text(eval)?;
    let OpenedLm {
        path,
        src,
        file,
        config,
        tokenizer,
    } = open_for_forward(model)?;
    let lm = load_causal_lm(&src, &file, config.as_ref())?;
    let ids = tokenizer.encode(&text)?;
    let report = perplexity(lm.as_ref(), &ids, opts, &Progress).await?;
    let out = PplOutput {
        model: path.display().to_string(),
        eval: eval.display().to_string(),
        tokenizer: tokenizer.describe.clone(),
        report,
    };
    // With --json - the JSON alone goes to standard output, the summary to stderr.
    let to_stdout = json.is_none_or(|p| p.as_os_str() != "-");
    if let Some(p) = json {
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

/// What `layerlab ppl --json` writes.
#[derive(serde::Serialize)]
struct PplOutput {
    model: String,
    eval: String,
    tokenizer: String,
    #[serde(flatten)]
    report: PplReport,
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
    // A model the forward pass would refuse is refused before the tokeniser is asked for.
    if let Some(refusal) = layerlab::model::causal::llama_forward_refusal(
        &file,
        config.as_ref(),
        &path.display().to_string(),
    ) {
        return Err(LabError::invalid(refusal));
    }
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

fn write_json<T: serde::Serialize>(path: &Path, out: &T) -> Result<()> {
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
