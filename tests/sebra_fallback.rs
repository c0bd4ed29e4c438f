//! `SebraRun::fall_back`: when the engine that trains the cross-entropy phases fails in the
//! middle of a run (the page's GPU lost), the run drops it and starts the failed phase over
//! on the CPU. The engine here is a test double that trains on the CPU with `ce_step_weighted`
//! and `run::Optimizer` (the same arithmetic as the run's own CPU path) and fails with
//! `GpuFailed` after a chosen number of steps; so whatever phase it fails in, the finished
//! report must equal `run_sebra`'s (a run that never had an engine) bit for bit: the epoch
//! losses, the ranking, tau and every accuracy. The backend line names the phase and the
//! error.

use layerlab::sebra::model::{Net, Params};
use layerlab::sebra::run::{
    ce_step_weighted, net_config, run_sebra, CeEngine, CeWeights, Optimizer, Phase, Quiet, SebraRun,
};
use layerlab::sebra::{data, SebraOptions};
use layerlab::train::EngineFuture;
use layerlab::LabError;
use std::cell::RefCell;
use std::rc::Rc;

fn tiny() -> SebraOptions {
    SebraOptions {
        classes: 2,
        image: 12,
        train_per_class: 100,
        val_per_class: 4,
        test_per_class: 50,
        epochs: 3,
        rank_epochs: 4,
        width: 4,
        batch: 32,
        seed: 5,
        ..SebraOptions::default()
    }
}

/// Trains on the CPU, and fails at its `fail_at`-th step (1-based, over the whole run);
/// `begins` hears the steps taken before each phase's `begin`.
struct Failing {
    opts: SebraOptions,
    net: Option<(Net<f32>, Optimizer, Params<f32>)>,
    losses: Vec<f64>,
    steps: usize,
    fail_at: usize,
    begins: Rc<RefCell<Vec<usize>>>,
}

impl CeEngine for Failing {
    fn describe(&self) -> String {
        "gpu (test double)".into()
    }
    fn begin<'s>(&'s mut self, params: &'s Params<f32>) -> EngineFuture<'s, ()> {
        self.begins.borrow_mut().push(self.steps);
        let cfg = net_config(&self.opts);
        let net = Net {
            cfg,
            params: params.clone(),
        };
        self.net = Some((net, Optimizer::new(&self.opts, &cfg), Params::zeros(&cfg)));
        Box::pin(std::future::ready(Ok(())))
    }
    fn step<'s>(
        &'s mut self,
        x: &'s [f32],
        labels: &'s [u32],
        weights: CeWeights<'s>,
    ) -> EngineFuture<'s, ()> {
        self.steps += 1;
        if self.steps == self.fail_at {
            return Box::pin(std::future::ready(Err(LabError::GpuFailed(
                "device lost (test)".into(),
            ))));
        }
        let (net, opt, grads) = self.net.as_mut().unwrap();
        grads.fill_zero();
        self.losses
            .push(ce_step_weighted(net, grads, x, labels, weights));
        opt.step(&mut net.params, grads);
        Box::pin(std::future::ready(Ok(())))
    }
    fn losses(&mut self) -> EngineFuture<'_, Vec<f64>> {
        Box::pin(std::future::ready(Ok(std::mem::take(&mut self.losses))))
    }
    fn params(&mut self) -> EngineFuture<'_, Params<f32>> {
        let p = self.net.as_ref().unwrap().0.params.clone();
        Box::pin(std::future::ready(Ok(p)))
    }
}

/// The run with the engine failing at step `fail_at`, falling back once: its report as JSON,
/// the phase it fell back in (None if it never failed), and the engine's steps before each
/// phase's `begin`.
fn run_failing(
    opts: &SebraOptions,
    fail_at: usize,
) -> (serde_json::Value, Option<Phase>, Vec<usize>) {
    let data = data::generate(opts).unwrap();
    let begins = Rc::new(RefCell::new(Vec::new()));
    let engine = Failing {
        opts: opts.clone(),
        net: None,
        losses: Vec::new(),
        steps: 0,
        fail_at,
        begins: begins.clone(),
    };
    let mut run = SebraRun::new(opts, &data, 0.0)
        .unwrap()
        .with_ce_engine(Box::new(engine));
    let mut phase = None;
    loop {
        match pollster::block_on(run.step(&Quiet)) {
            Ok(true) => {}
            Ok(false) => break,
            Err(LabError::GpuFailed(msg)) => {
                assert!(phase.is_none(), "a second failure");
                phase = Some(run.fall_back(&msg).unwrap());
                // Only once: a second fall_back has no engine to drop.
                assert!(run.fall_back("again").is_err());
            }
            Err(e) => panic!("{e}"),
        }
    }
    let r = serde_json::to_value(run.finish().unwrap()).unwrap();
    let begins = begins.borrow().clone();
    (r, phase, begins)
}

/// The report's `key`, without the epochs' wall-clock seconds.
fn part(r: &serde_json::Value, key: &str) -> serde_json::Value {
    let mut v = r[key].clone();
    if let Some(epochs) = v.as_array_mut() {
        epochs.iter_mut().for_each(|e| {
            e.as_object_mut().unwrap().remove("seconds");
        });
    }
    v
}

#[test]
fn a_failed_engine_restarts_its_phase_on_the_cpu_and_the_run_equals_a_cpu_run() {
    let opts = tiny();
    let cpu = serde_json::to_value(run_sebra(&opts, &Quiet).unwrap()).unwrap();
    // Without a failure: the engine's steps before ERM, Stage 1 and the oracle began; the
    // engine computes what the CPU does, so the report is the CPU's already.
    let (whole, none, begins) = run_failing(&opts, usize::MAX);
    assert_eq!(none, None);
    assert_eq!(begins.len(), 3, "{begins:?}");
    for key in ["epochs", "ranking", "tau", "accuracy"] {
        assert_eq!(
            part(&whole, key),
            part(&cpu, key),
            "without a failure: {key}"
        );
    }
    let rank_epochs = cpu["ranking"]["epochs"].as_u64().unwrap();
    eprintln!("engine steps before each phase: {begins:?}; Stage 1 epochs {rank_epochs}");
    assert!(rank_epochs >= 2);
    // ERM's first step, ERM's second epoch (7 steps of 32 per epoch of 200 images), Stage 1's
    // third step, and the oracle's fourth.
    for (fail_at, want) in [
        (1, Phase::Erm),
        (10, Phase::Erm),
        (begins[1] + 3, Phase::Rank),
        (begins[2] + 4, Phase::Oracle),
    ] {
        let (r, phase, _) = run_failing(&opts, fail_at);
        assert_eq!(phase, Some(want), "failing at step {fail_at}");
        let backend = r["backend"].as_str().unwrap();
        eprintln!("failing at step {fail_at}: {backend}");
        assert!(backend.contains("(device lost (test))"), "{backend}");
        let head = match want {
            Phase::Erm => "cpu: gpu (test double) failed in erm's training",
            Phase::Rank => "erm training: gpu (test double); then the GPU failed in rank's",
            _ => "erm, rank training: gpu (test double); then the GPU failed in oracle's",
        };
        assert!(backend.starts_with(head), "{backend}");
        for key in ["epochs", "ranking", "tau", "accuracy"] {
            assert_eq!(
                part(&r, key),
                part(&cpu, key),
                "failing at step {fail_at}: {key}"
            );
        }
    }
}
