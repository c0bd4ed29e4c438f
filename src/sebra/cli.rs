//! `layerlab sebra`: its arguments, the progress it prints and the files it writes.
//!
//! - `--save-data FILE`: the generated splits as safetensors (`{train,val,test}.images` f32
//!   N x 3 x S x S; `.labels`, `.cue1`, `.cue2` i64), to check the lab with another framework.
//! - `--json REPORT`: the report as `layerlab run` writes it too: the `experiment` (the options,
//!   which `layerlab run REPORT` reruns) beside the `SebraReport`'s fields ("-" for standard
//!   output).

use std::path::PathBuf;

use super::gpu::GpuCeEngine;
use super::run::{run_sebra, EpochRecord, Phase, RankEpoch, SebraMonitor, SebraReport, SebraRun};
use super::{data, ModelKind, OptimizerKind, SebraOptions};
use crate::compute::GpuContext;
use crate::experiment::{Experiment, Report, SebraSpec};
use crate::{LabError, Result};

fn parse_bias(s: &str) -> std::result::Result<(f64, f64), String> {
    let parts: Vec<&str> = s.split(',').collect();
    let num = |p: &str| {
        p.trim()
            .parse::<f64>()
            .map_err(|_| format!("'{p}' is not a number"))
    };
    match parts.as_slice() {
        [a] => num(a).map(|x| (x, x)),
        [a, b] => Ok((num(a)?, num(b)?)),
        _ => Err(format!(
            "expected RHO or RHO1,RHO2 (the colour's and the texture's bias ratios), found '{s}'"
        )),
    }
}

/// Sebra on seeded biased shape images: ERM, the spuriosity ranking, the debiased model
/// and the group-balanced oracle, scored per group (CPU, f32).
#[derive(clap::Args, Debug)]
pub struct SebraArgs {
    /// K: classes (shapes), 2..=8.
    #[arg(long, default_value_t = SebraOptions::default().classes)]
    pub classes: usize,
    /// S: images are 3 x S x S.
    #[arg(long, default_value_t = SebraOptions::default().image)]
    pub image: usize,
    #[arg(long, default_value_t = SebraOptions::default().train_per_class)]
    pub train_per_class: usize,
    #[arg(long, default_value_t = SebraOptions::default().val_per_class)]
    pub val_per_class: usize,
    #[arg(long, default_value_t = SebraOptions::default().test_per_class)]
    pub test_per_class: usize,
    /// rho_1,rho_2: how often the colour, resp. the texture, agrees with the class in
    /// training (one number sets both); each in [1/K, 1].
    #[arg(long, default_value = "0.95,0.95", value_parser = parse_bias)]
    pub bias: (f64, f64),
    #[arg(long, default_value_t = SebraOptions::default().noise)]
    pub noise: f64,
    /// cnn or mlp.
    #[arg(long, default_value = "cnn")]
    pub model: String,
    /// W: the CNN's channels are W, 2W, 4W; the MLP's hidden width 8W.
    #[arg(long, default_value_t = SebraOptions::default().width)]
    pub width: usize,
    /// adam or sgd (with --momentum).
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    #[arg(long, default_value_t = SebraOptions::default().momentum)]
    pub momentum: f64,
    /// Epochs of ERM, Stage 2 and the oracle.
    #[arg(long, default_value_t = SebraOptions::default().epochs)]
    pub epochs: usize,
    /// Stage 1's cap on ranking epochs.
    #[arg(long, default_value_t = SebraOptions::default().rank_epochs)]
    pub rank_epochs: usize,
    /// 1/beta, the up-weighting exponent.
    #[arg(long, default_value_t = SebraOptions::default().beta_inv)]
    pub beta_inv: f64,
    #[arg(long, default_value_t = SebraOptions::default().p_critical)]
    pub p_critical: f64,
    #[arg(long, default_value_t = SebraOptions::default().gap)]
    pub gap: u32,
    /// Stage 2's contrastive temperature.
    #[arg(long, default_value_t = SebraOptions::default().tau)]
    pub tau: f64,
    /// Stage 2's weight of the cross-entropy on the positives.
    #[arg(long, default_value_t = SebraOptions::default().ce_weight)]
    pub ce_weight: f64,
    #[arg(long, default_value_t = SebraOptions::default().lr)]
    pub lr: f64,
    #[arg(long, default_value_t = SebraOptions::default().batch)]
    pub batch: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto (the CPU, for now), gpu (the training batches of ERM, Stage 1 and the oracle on
    /// the GPU; Stage 1's per-epoch scoring, Stage 2 and every test scoring on the CPU; the
    /// report's `backend` says so) or cpu.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Fuse each multiply-add of the CPU's matrix products (the convolutions) into one FMA:
    /// faster on FMA CPUs, the same numbers on any thread count, but no longer the page's (nor
    /// a run without --fma's) bit for bit; the report's backend says so.
    #[arg(long)]
    pub fma: bool,
    /// Write the generated splits here (safetensors).
    #[arg(long)]
    pub save_data: Option<PathBuf>,
    /// Write the report as JSON here ("-" for standard output).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl SebraArgs {
    pub fn options(&self) -> Result<SebraOptions> {
        let model = match self.model.as_str() {
            "cnn" => ModelKind::Cnn,
            "mlp" => ModelKind::Mlp,
            other => {
                return Err(LabError::invalid(format!(
                    "unknown --model '{other}': use cnn or mlp"
                )))
            }
        };
        let optimizer = match self.optimizer.as_str() {
            "adam" => OptimizerKind::Adam,
            "sgd" => OptimizerKind::Sgd,
            other => {
                return Err(LabError::invalid(format!(
                    "unknown --optimizer '{other}': use adam or sgd"
                )))
            }
        };
        let o = SebraOptions {
            classes: self.classes,
            image: self.image,
            train_per_class: self.train_per_class,
            val_per_class: self.val_per_class,
            test_per_class: self.test_per_class,
            bias: self.bias,
            noise: self.noise,
            model,
            width: self.width,
            optimizer,
            momentum: self.momentum,
            epochs: self.epochs,
            rank_epochs: self.rank_epochs,
            beta_inv: self.beta_inv,
            p_critical: self.p_critical,
            gap: self.gap,
            tau: self.tau,
            ce_weight: self.ce_weight,
            lr: self.lr,
            batch: self.batch,
            seed: self.seed,
        };
        o.check()?;
        Ok(o)
    }
}

/// Progress on standard error: one line per epoch, and what each ranking epoch deselected.
pub struct StderrProgress;

impl SebraMonitor for StderrProgress {
    fn epoch(&self, r: &EpochRecord) {
        let phase = match r.phase {
            Phase::Erm => "erm",
            Phase::Rank => "rank",
            Phase::Mitigate => "sebra",
            Phase::Oracle => "oracle",
        };
        eprintln!(
            "{phase:>6} epoch {:>3}/{}  loss {:.4}  {:.1}s",
            r.epoch, r.of, r.loss, r.seconds
        );
    }

    fn ranked(&self, e: &RankEpoch) {
        let mut by_group = [0u32; 4];
        e.deselected
            .iter()
            .for_each(|c| (0..4).for_each(|g| by_group[g] += c[g]));
        eprintln!(
            "  rank {:>3}: deselected {:?} (both, colour-only, texture-only, none aligned); \
             {} left",
            e.epoch, by_group, e.remaining
        );
    }
}

/// A short summary of the report on standard error.
pub fn summary(r: &SebraReport) -> String {
    let mut s = format!(
        "ranking: {} epochs, tau per class {:?}, mean {:.4}\n",
        r.ranking.epochs,
        r.tau
            .per_class
            .iter()
            .map(|t| format!("{t:.3}"))
            .collect::<Vec<_>>(),
        r.tau.mean
    );
    s.push_str("test accuracy  both  colour  texture  none | worst  I.D.  overall\n");
    for (name, a) in [
        ("erm", &r.accuracy.erm),
        ("sebra", &r.accuracy.sebra),
        ("oracle", &r.accuracy.oracle),
    ] {
        let g = a.per_group;
        s.push_str(&format!(
            "{name:>7}       {:.3}  {:.3}   {:.3}    {:.3} | {:.3}  {:.3}  {:.3}\n",
            g[0], g[1], g[2], g[3], a.worst_group, a.in_distribution, a.overall
        ));
    }
    s.push_str(&format!(
        "ERM training: {:.0} images/s on {} threads; total {:.1}s\nbackend: {}",
        r.timings.erm_images_per_s, r.timings.threads, r.timings.total_s, r.backend
    ));
    s
}

/// `layerlab run` of a bias-lab experiment.
pub fn run_spec(spec: SebraSpec, monitor: &dyn SebraMonitor) -> Result<Report<SebraReport>> {
    let result = run_sebra(&spec.options, monitor)?;
    Ok(Report {
        experiment: Experiment::sebra(spec),
        result,
    })
}

/// `layerlab sebra`.
pub fn run(args: &SebraArgs) -> Result<()> {
    let opts = args.options()?;
    crate::train::use_fma(args.fma)?;
    let gpu = match args.backend.as_str() {
        "cpu" => None,
        "auto" => {
            eprintln!(
                "backend: CPU (auto; --backend gpu trains the batches of ERM, Stage 1 and the \
                 oracle on the GPU; Stage 2 and the scoring passes are CPU-only so far)"
            );
            None
        }
        "gpu" if opts.model != ModelKind::Cnn => {
            return Err(LabError::invalid(
                "the bias lab's GPU training is built for the CNN only: use --model cnn or \
                 --backend cpu",
            ))
        }
        "gpu" => Some(pollster::block_on(GpuContext::new())?),
        other => {
            return Err(LabError::invalid(format!(
                "unknown backend '{other}': use auto, gpu or cpu"
            )))
        }
    };
    let started = web_time::Instant::now();
    let data = data::generate(&opts)?;
    let data_s = started.elapsed().as_secs_f64();
    if let Some(path) = &args.save_data {
        let mut f = std::fs::File::create(path)
            .map_err(|e| LabError::Io(format!("cannot create {}: {e}", path.display())))?;
        data::save_safetensors(&data, &opts, &mut f)?;
        eprintln!("data: {}", path.display());
    }
    let mut run = SebraRun::new(&opts, &data, data_s)?;
    if let Some(ctx) = &gpu {
        run = run.with_ce_engine(Box::new(GpuCeEngine::new(ctx, &opts)?));
    }
    eprintln!("backend: {}", run.backend());
    while pollster::block_on(run.step(&StderrProgress))? {}
    let mut result = run.finish()?;
    if args.fma {
        result.backend += "; CPU matrix products with fused multiply-add (--fma: not the page's \
                           bits)";
    }
    eprintln!("{}", summary(&result));
    if let Some(path) = &args.json {
        let report = Report {
            experiment: Experiment::sebra(SebraSpec { options: opts }),
            result,
        };
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| LabError::invalid(format!("cannot encode the report: {e}")))?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text)
                .map_err(|e| LabError::Io(format!("cannot write {}: {e}", path.display())))?;
        }
    }
    Ok(())
}
