//! `layerlab`: the lab's command-line face. Same core as the page; output is JSON the page
//! can open. Errors are printed as sentences and give exit status 1 (2 for bad usage).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use layerlab::compute::{Backend, BackendChoice, Matrix, Silent};
use layerlab::stats::{tensor_stats, StatsOptions, StatsRun};
use layerlab::synth::{weights, SynthSpec};
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

fn write_json(path: &PathBuf, out: &StatsRun) -> Result<()> {
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
