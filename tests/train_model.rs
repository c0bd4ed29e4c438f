//! The training core on tiny models: the norm placement of each mode read back from the
//! activations, the init's statistics, a short run whose loss falls below a stated bound,
//! bit-identical numbers with 1 and 2 threads, a run whose engine fails mid-run going on
//! from its checkpoint with the numbers of a run that never failed, and bad options as
//! clear errors.

use layerlab::train::data::{Corpus, Tokenizer, MAX_CHAR_VOCAB};
use layerlab::train::model::{Model, Weights};
use layerlab::train::{
    train, CpuSteps, EngineFuture, NormPlacement, Quiet, StepEngine, StepInput, StepOutput,
    TrainOptions, Trainer,
};
use layerlab::LabError;

/// A small deterministic text with structure to learn (a few sentences cycled with
/// varying counters), ~6k characters.
fn text() -> String {
    let words = [
        "the licensor grants you a license to use the work",
        "you may reproduce and distribute copies of the work",
        "provided that you meet the following conditions",
        "the work is provided on an as is basis without warranties",
    ];
    let mut s = String::new();
    for i in 0..120 {
        s.push_str(words[i % 4]);
        s.push_str(&format!(" section {}.\n", i % 7));
    }
    s
}

fn tiny(norm: NormPlacement) -> TrainOptions {
    TrainOptions {
        layers: 4,
        width: 16,
        heads: 4,
        kv_heads: 2,
        ffn: 24,
        ctx: 12,
        batch: 4,
        steps: 6,
        lr: 3e-3,
        eval_every: 3,
        norm,
        alpha: 0.5,
        ..TrainOptions::default()
    }
}

fn corpus(opts: &TrainOptions) -> Corpus {
    let text = text();
    let tok = Tokenizer::char_level(&text).unwrap();
    Corpus::split(tok.encode(&text).unwrap(), tok.vocab_size(), opts.ctx).unwrap()
}

fn rms_rows(x: &[f32], c: usize) -> Vec<f64> {
    x.chunks(c)
        .map(|r| (r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / c as f64).sqrt())
        .collect()
}

#[test]
fn post_blocks_follow_floor_alpha_times_layers() {
    let mut o = TrainOptions::default();
    assert_eq!(o.post_blocks(), 3, "Mix-LN 0.25 x 12");
    o.layers = 10;
    assert_eq!(o.post_blocks(), 2, "floor(2.5)");
    o.norm = NormPlacement::Pre;
    assert_eq!(o.post_blocks(), 0);
    o.norm = NormPlacement::Post;
    assert_eq!(o.post_blocks(), 10);
}

#[test]
fn norm_placement_is_visible_in_the_activations() {
    // Mix with alpha 0.5 over 4 blocks: blocks 0, 1 Post-LN, blocks 2, 3 Pre-LN. With norm
    // weights 1, an RMSNorm output has RMS sqrt(ms / (ms + 1e-6)) ~ 1 in every row.
    let opts = tiny(NormPlacement::Mix);
    let corpus = corpus(&opts);
    let cfg = opts.model_config(corpus.vocab_size).unwrap();
    assert_eq!(cfg.post_blocks, 2);
    let model = Model {
        weights: Weights::init(&cfg, 0),
        cfg,
    };
    let batch = layerlab::train::first_batch(&corpus, &opts);
    let acts = model.forward(&batch, opts.batch, opts.ctx, None);
    let c = opts.width;
    let unit = |x: &[f32]| rms_rows(x, c).iter().all(|r| (r - 1.0).abs() < 1e-3);
    for l in 0..4 {
        let x = acts.block_input(l);
        let a_in = acts.attention_input(l);
        let h = acts.after_attention(l);
        let out = &acts.blocks[l].out;
        if l < 2 {
            // Post-LN: attention reads x itself; h and out are normalised.
            assert_eq!(
                a_in, x,
                "block {l}: Post-LN attention must read x unnormalised"
            );
            assert!(
                unit(h) && unit(out),
                "block {l}: Post-LN h and out are norm outputs"
            );
        } else {
            // Pre-LN: attention reads norm1(x) = x / sqrt(mean x^2 + 1e-6) (weights 1), and
            // h and out are residual sums, not norm outputs.
            for (row_x, row_a) in x.chunks(c).zip(a_in.chunks(c)) {
                let ms = row_x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / c as f64;
                let r = 1.0 / (ms + 1e-6).sqrt();
                for (xv, av) in row_x.iter().zip(row_a) {
                    assert!(
                        (*xv as f64 * r - *av as f64).abs() < 1e-5,
                        "block {l}: norm1(x)"
                    );
                }
            }
            assert!(
                !unit(h) && !unit(out),
                "block {l}: Pre-LN stream is not normalised"
            );
        }
    }
}

#[test]
fn init_is_the_mix_ln_codes_and_seeded() {
    let mut opts = tiny(NormPlacement::Pre);
    opts.width = 64;
    opts.ffn = 96;
    let cfg = opts.model_config(200).unwrap();
    let w = Weights::init(&cfg, 7);
    let std = |x: &[f32]| {
        let n = x.len() as f64;
        let m = x.iter().map(|v| *v as f64).sum::<f64>() / n;
        (x.iter().map(|v| (*v as f64 - m).powi(2)).sum::<f64>() / n).sqrt()
    };
    let emb = std(&w.embed);
    assert!(
        (emb / (2.0f64 / 5.0).sqrt() - 1.0).abs() < 0.03,
        "embedding std {emb}"
    );
    for b in &w.blocks {
        for t in [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down] {
            let s = std(t);
            assert!((s / 0.02 - 1.0).abs() < 0.06, "linear std {s}");
        }
        assert!(b.norm1.iter().chain(&b.norm2).all(|v| *v == 1.0));
    }
    assert!(w.norm.iter().all(|v| *v == 1.0));
    assert_eq!(w, Weights::init(&cfg, 7));
    assert_ne!(w.embed, Weights::init(&cfg, 8).embed);
}

#[test]
fn a_short_run_learns_the_text() {
    // 4 x 32 Pre-LN model, 150 steps of 4 x 16 characters: the validation loss must end
    // below 2.2 nats (measured 1.905; the first batch's loss is 8.5, ln V = 3.47).
    let mut opts = tiny(NormPlacement::Pre);
    opts.width = 32;
    opts.ffn = 64;
    opts.ctx = 16;
    opts.steps = 150;
    opts.eval_every = 150;
    opts.lr = 1e-2;
    let corpus = corpus(&opts);
    let run = train(&corpus, &opts, None, &Quiet).unwrap();
    let r = &run.report;
    let first = r.steps[0].loss;
    let val = r.steps.last().and_then(|s| s.val_loss).unwrap();
    let ln_v = (corpus.vocab_size as f64).ln();
    // The tied head reads the N(0, 2/5) embedding: the first loss is well above ln V.
    assert!(first > ln_v, "initial loss {first} vs ln V {ln_v}");
    assert!(val < 2.2, "validation loss after 150 steps: {val}");
    assert_eq!(r.layer_removal.len(), 4);
    assert_eq!(r.angular_distance.len(), 1);
    let ad = &r.angular_distance[0].matrix;
    assert_eq!(ad.len(), 4);
    assert!(ad[0]
        .iter()
        .take(4)
        .all(|v| v.is_some_and(|d| (0.0..=1.0).contains(&d))));
    assert!(ad[3][1].is_none(), "l + n > L has no entry");
}

#[test]
fn same_bits_with_one_and_two_threads() {
    let opts = tiny(NormPlacement::Mix);
    let corpus = corpus(&opts);
    let run_with = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| train(&corpus, &opts, None, &Quiet).unwrap())
    };
    let (a, b) = (run_with(1), run_with(2));
    let mut ra = a.report.clone();
    let mut rb = b.report.clone();
    ra.timings = Default::default();
    rb.timings = Default::default();
    ra.tokens_per_s = 0.0;
    rb.tokens_per_s = 0.0;
    assert_eq!(
        serde_json::to_string(&ra).unwrap(),
        serde_json::to_string(&rb).unwrap()
    );
    assert_eq!(a.model.weights, b.model.weights);
}

#[test]
fn bad_options_are_clear_errors() {
    // Fewer than ctx + 1 tokens in the validation split.
    let err = Corpus::split((0..50).collect(), 50, 12).err().unwrap();
    assert!(err.to_string().contains("too short"), "{err}");
    // Too many distinct characters for a character vocabulary.
    let wide: String = (0..MAX_CHAR_VOCAB as u32 + 10)
        .filter_map(|i| char::from_u32(0x4E00 + i))
        .collect();
    let err = Tokenizer::char_level(&wide).err().unwrap();
    assert!(err.to_string().contains("distinct characters"), "{err}");
    // A BPE-sized vocabulary with a batch whose probabilities do not fit.
    let o = TrainOptions {
        batch: 512,
        ctx: 2048,
        ..TrainOptions::default()
    };
    let err = o.model_config(49152).err().unwrap();
    assert!(err.to_string().contains("too large"), "{err}");
    let o = TrainOptions {
        heads: 5,
        ..TrainOptions::default()
    };
    let err = o.model_config(60).err().unwrap();
    assert!(err.to_string().contains("not a multiple of heads"), "{err}");
    // A character the vocabulary lacks.
    let tok = Tokenizer::char_level("abc").unwrap();
    let err = tok.encode("abd").err().unwrap();
    assert!(err.to_string().contains("'d'"), "{err}");
}

/// The CPU engine dressed as a GPU: its state "can be lost" (so the trainer keeps
/// checkpoints), and it fails once, as a lost device does, at step `fail_step` or at the sync
/// of the evaluation after step `fail_sync`.
struct Flaky {
    cpu: CpuSteps,
    fail_step: Option<usize>,
    fail_sync: Option<usize>,
    /// Steps this engine has computed (the step the next sync follows).
    last: usize,
}

fn lost() -> LabError {
    LabError::GpuFailed("the GPU device was lost: destroyed (test)".into())
}

impl StepEngine for Flaky {
    fn begin<'a>(
        &'a mut self,
        model: &'a Model,
        adam: layerlab::train::ops::AdamConfig,
    ) -> EngineFuture<'a, ()> {
        self.cpu.begin(model, adam)
    }

    fn step<'a>(
        &'a mut self,
        model: &'a mut Model,
        input: &'a StepInput,
        b: usize,
        t: usize,
        clip: f64,
    ) -> EngineFuture<'a, StepOutput> {
        if self.fail_step.take_if(|s| *s == input.step).is_some() {
            return Box::pin(std::future::ready(Err(lost())));
        }
        self.last = input.step;
        self.cpu.step(model, input, b, t, clip)
    }

    fn sync<'a>(&'a mut self, model: &'a mut Model) -> EngineFuture<'a, ()> {
        if self.fail_sync.take_if(|s| *s == self.last).is_some() {
            return Box::pin(std::future::ready(Err(lost())));
        }
        self.cpu.sync(model)
    }

    fn can_lose_state(&self) -> bool {
        true
    }

    fn moments(&mut self) -> EngineFuture<'_, (Weights, Weights)> {
        self.cpu.moments()
    }
}

#[test]
fn a_failed_engine_goes_on_from_its_checkpoint_with_the_same_numbers() {
    // 9 steps evaluated after steps 3, 6 and 9 (0-based 2, 5, 8); clipping on, so the
    // restored moments, batch stream and schedule all have to be right.
    let mut opts = tiny(NormPlacement::Mix);
    opts.steps = 9;
    opts.clip = 0.5;
    let corpus = corpus(&opts);
    let reference = train(&corpus, &opts, None, &Quiet).unwrap();
    let clean = |mut r: layerlab::train::TrainReport| {
        r.timings = Default::default();
        r.tokens_per_s = 0.0;
        serde_json::to_string(&r).unwrap()
    };
    // (fail at step, fail at the sync after step, the steps the fall-back keeps)
    for (fail_step, fail_sync, kept) in [
        (Some(1), None, 0),
        (Some(4), None, 3),
        (Some(8), None, 6),
        (None, Some(5), 3),
        (None, Some(8), 6),
    ] {
        let engine = Flaky {
            cpu: CpuSteps::default(),
            fail_step,
            fail_sync,
            last: 0,
        };
        let mut trainer = Trainer::with_engine(&corpus, &opts, None, Box::new(engine)).unwrap();
        let mut fell_back = Vec::new();
        while !trainer.done() {
            match pollster::block_on(trainer.step(&Quiet)) {
                Ok(()) => {}
                Err(LabError::GpuFailed(_)) => fell_back.push(trainer.fall_back().unwrap()),
                Err(e) => panic!("{e}"),
            }
        }
        let run = pollster::block_on(trainer.finish(false, &Quiet)).unwrap();
        let what = format!("failing at step {fail_step:?} / sync {fail_sync:?}");
        assert_eq!(fell_back, vec![kept], "{what}");
        assert_eq!(run.report.steps.len(), 9, "{what}");
        assert_eq!(clean(run.report), clean(reference.report.clone()), "{what}");
        assert_eq!(run.model.weights, reference.model.weights, "{what}");
    }
}
