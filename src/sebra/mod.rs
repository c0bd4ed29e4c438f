//! The bias lab: Sebra's self-guided spuriosity ranking (Kappiyath et al., ICLR 2025), on
//! biased images generated from a seed. METHODS.md (Sebra) is the spec.
//!
//! The modules:
//! - `data`: the seeded generator of biased shape images (the class is a shape, cue 1 the
//!   foreground colour, cue 2 the background texture) and its safetensors export;
//! - `ranking`: Stage 1's bookkeeping (0/1 sampler weights, deselection at p_critical with
//!   rank = epoch, the stop rule, the never-deselected rank) and Stage 2's choice of each
//!   anchor's positive and negative, all as pure functions of per-epoch probabilities;
//! - `tau`: `scipy.stats.weightedtau` with its defaults, and the per-class ranking score;
//! - `metrics`: per-group accuracy, worst group, in-distribution accuracy and the per-cue gaps
//!   as UrbanCars reports them;
//! - `cnn`: the CNN's CPU ops (3x3 convolution as im2col + matmul, ReLU, 2x2 max-pooling,
//!   global average pooling), paired forward/backward;
//! - `model`: the CNN (the default) and the MLP, backbone and head, seeded init, CPU
//!   forward/backward;
//! - `loss`: weighted cross-entropy (ERM, Stage 1's up-weighting, the oracle) and Stage 2's
//!   batch contrastive loss;
//! - `gpu`: the CNN's cross-entropy training step on the GPU (ERM's plain loss, Stage 1's
//!   up-weighted one, the oracle's weighted one; parameters, gradients and optimizer state
//!   resident, one submission per step);
//! - `run`: `run_sebra` (ERM, Stage 1, Stage 2, the oracle, the scores) and its report;
//! - `cli`: `layerlab sebra`.
//!
//! Shapes: N = samples, K = classes (= values of each cue), C = 3 channels, S = image side.

#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
pub mod cnn;
pub mod data;
pub mod gpu;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod ranking;
pub mod run;
pub mod tau;

use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};

/// The most classes the lab draws: eight shapes, eight colours and eight textures, each
/// telling one class (or one cue value) apart from every other.
pub const MAX_CLASSES: usize = 8;
/// The smallest image side on which the smallest shape (radius 0.22 S) still spans a few
/// pixels; the largest one the page's memory holds comfortably.
pub const MIN_IMAGE: usize = 12;
pub const MAX_IMAGE: usize = 64;
/// Fewest training images per class: below this a class has no bias-conflicting samples to
/// rank at the default ratios, and nothing to learn from.
pub const MIN_TRAIN_PER_CLASS: usize = 16;
/// All three splits together may take at most this many bytes of f32 pixels.
pub const MAX_DATA_BYTES: usize = 1 << 30;

/// The model Sebra and ERM train.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Three 3x3 convolutions with ReLU and 2x2 max-pooling, global average pooling, a linear
    /// head (issue 13, part 2).
    #[default]
    Cnn,
    /// A multi-layer perceptron on the flattened pixels.
    Mlp,
}

/// The optimizer of every stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// torch.optim.Adam (betas 0.9, 0.999, eps 1e-8, no weight decay): the training core's.
    #[default]
    Adam,
    /// torch.optim.SGD with momentum (dampening 0, no Nesterov, no weight decay).
    Sgd,
}

/// Everything a bias-lab run needs; it goes into the Experiment (the page's URL) and is
/// echoed in the report. The defaults are the issue's CLI defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SebraOptions {
    /// K: classes; each class is a shape and owns one colour and one texture.
    pub classes: usize,
    /// S: images are 3 x S x S.
    pub image: usize,
    /// Training images per class (the training split has K x this many).
    pub train_per_class: usize,
    /// Validation and test images per class (balanced splits: each cue agrees with the
    /// class with probability 1/K).
    pub val_per_class: usize,
    pub test_per_class: usize,
    /// (rho_1, rho_2): the probability that the colour, resp. the texture, agrees with the
    /// class in a training image; each in [1/K, 1].
    pub bias: (f64, f64),
    /// Standard deviation of the pixel noise added to every channel (then clamped to [0, 1]).
    pub noise: f64,
    pub model: ModelKind,
    /// W: the CNN's first convolution has W channels, then 2W and 4W (the feature vector);
    /// the MLP's two hidden layers have 8W units.
    pub width: usize,
    pub optimizer: OptimizerKind,
    /// SGD's momentum (unused by Adam).
    pub momentum: f64,
    /// Epochs of ERM and of Stage 2.
    pub epochs: usize,
    /// Stage 1's cap on ranking epochs (it stops earlier when every sample is deselected).
    pub rank_epochs: usize,
    /// 1/beta: the exponent of the up-weighting stopgrad(p_y)^(1/beta).
    pub beta_inv: f64,
    /// A selected sample whose p_y exceeds this after an epoch is deselected.
    pub p_critical: f64,
    /// Stage 2: the positive's rank is the anchor's rank + gap (capped, see `ranking`).
    pub gap: u32,
    /// Stage 2: the contrastive loss's temperature.
    pub tau: f64,
    /// Stage 2: w, the weight of the cross-entropy on the positives.
    pub ce_weight: f64,
    /// Learning rate and batch size of every stage (the default lr is Adam's usual 1e-3).
    pub lr: f64,
    pub batch: usize,
    pub seed: u64,
}

impl Default for SebraOptions {
    fn default() -> Self {
        SebraOptions {
            classes: 4,
            image: 24,
            train_per_class: 1000,
            val_per_class: 250,
            test_per_class: 500,
            bias: (0.95, 0.95),
            noise: 0.05,
            model: ModelKind::Cnn,
            width: 16,
            optimizer: OptimizerKind::Adam,
            momentum: 0.9,
            epochs: 20,
            rank_epochs: 30,
            beta_inv: 0.7,
            p_critical: 0.75,
            gap: 5,
            tau: 0.05,
            ce_weight: 0.5,
            lr: 1e-3,
            batch: 64,
            seed: 0,
        }
    }
}

impl SebraOptions {
    /// Checks every option; the messages say which one, what was found and what is allowed.
    pub fn check(&self) -> Result<()> {
        let k = self.classes;
        if !(2..=MAX_CLASSES).contains(&k) {
            return Err(LabError::invalid(format!(
                "classes must be between 2 and {MAX_CLASSES} (there are {MAX_CLASSES} shapes, \
                 colours and textures, one of each per class); found {k}"
            )));
        }
        if !(MIN_IMAGE..=MAX_IMAGE).contains(&self.image) {
            return Err(LabError::invalid(format!(
                "image must be between {MIN_IMAGE} and {MAX_IMAGE} pixels: below {MIN_IMAGE} \
                 the smallest shape is too few pixels to tell apart; found {}",
                self.image
            )));
        }
        let lo = 1.0 / k as f64;
        for (name, rho) in [
            ("rho_1 (colour)", self.bias.0),
            ("rho_2 (texture)", self.bias.1),
        ] {
            // 1/K is the unbiased ratio; below it a cue would point away from its class.
            if !(lo..=1.0).contains(&rho) {
                return Err(LabError::invalid(format!(
                    "the bias ratio {name} must be in [1/K, 1] = [{lo:.4}, 1] for K = {k} \
                     classes; found {rho}"
                )));
            }
        }
        if self.train_per_class < MIN_TRAIN_PER_CLASS {
            return Err(LabError::invalid(format!(
                "train_per_class must be at least {MIN_TRAIN_PER_CLASS} images per class; \
                 found {}",
                self.train_per_class
            )));
        }
        // A balanced split's rarest group (both cues agree) holds 1/K^2 of each class.
        for (name, n) in [
            ("val_per_class", self.val_per_class),
            ("test_per_class", self.test_per_class),
        ] {
            if n < k * k {
                return Err(LabError::invalid(format!(
                    "{name} must be at least K^2 = {} images per class for K = {k}, so that \
                     every group of the balanced split is expected to appear; found {n}",
                    k * k
                )));
            }
        }
        let images = k
            .checked_mul(self.train_per_class + self.val_per_class + self.test_per_class)
            .and_then(|n| n.checked_mul(3 * self.image * self.image * 4));
        match images {
            Some(bytes) if bytes <= MAX_DATA_BYTES => {}
            _ => {
                return Err(LabError::invalid(format!(
                    "the three splits ({k} classes x {} + {} + {} images of 3 x {} x {}) do \
                     not fit in {} MiB of f32 pixels; use fewer or smaller images",
                    self.train_per_class,
                    self.val_per_class,
                    self.test_per_class,
                    self.image,
                    self.image,
                    MAX_DATA_BYTES >> 20
                )))
            }
        }
        if !(0.0..=0.5).contains(&self.noise) {
            return Err(LabError::invalid(format!(
                "noise must be in [0, 0.5] (a standard deviation on pixels in [0, 1]); found {}",
                self.noise
            )));
        }
        for (name, n) in [("epochs", self.epochs), ("rank_epochs", self.rank_epochs)] {
            if !(1..=10_000).contains(&n) {
                return Err(LabError::invalid(format!(
                    "{name} must be between 1 and 10000; found {n}"
                )));
            }
        }
        if !(1..=64).contains(&self.width) {
            return Err(LabError::invalid(format!(
                "width must be between 1 and 64 (the CNN's first convolution's channels); \
                 found {}",
                self.width
            )));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(LabError::invalid(format!(
                "momentum must be in [0, 1); found {}",
                self.momentum
            )));
        }
        if !(self.beta_inv.is_finite() && self.beta_inv > 0.0) {
            return Err(LabError::invalid(format!(
                "beta_inv (1/beta) must be a positive number; found {}",
                self.beta_inv
            )));
        }
        if !(self.p_critical > 0.0 && self.p_critical < 1.0) {
            return Err(LabError::invalid(format!(
                "p_critical must be in (0, 1); found {}",
                self.p_critical
            )));
        }
        if self.gap == 0 {
            return Err(LabError::invalid(
                "gap must be at least 1 (the positive is gap ranks less spurious than its anchor)",
            ));
        }
        if !(self.tau.is_finite() && self.tau > 0.0) {
            return Err(LabError::invalid(format!(
                "tau (the contrastive temperature) must be a positive number; found {}",
                self.tau
            )));
        }
        if !(self.ce_weight.is_finite() && self.ce_weight >= 0.0) {
            return Err(LabError::invalid(format!(
                "ce_weight must be a number >= 0; found {}",
                self.ce_weight
            )));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(LabError::invalid(format!(
                "lr must be a positive number; found {}",
                self.lr
            )));
        }
        let train = k * self.train_per_class;
        if self.batch == 0 || self.batch > train {
            return Err(LabError::invalid(format!(
                "batch must be between 1 and the {train} training images; found {}",
                self.batch
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(o: SebraOptions, words: &str) {
        let e = o.check().expect_err(words).to_string();
        assert!(e.contains(words), "{e}");
    }

    #[test]
    fn defaults_pass_and_bad_options_are_named() {
        SebraOptions::default().check().unwrap();
        let d = SebraOptions::default;
        refused(
            SebraOptions {
                bias: (0.2, 0.95),
                ..d()
            },
            "rho_1 (colour) must be in [1/K, 1] = [0.2500, 1]",
        );
        refused(
            SebraOptions {
                bias: (0.95, 1.01),
                ..d()
            },
            "rho_2 (texture)",
        );
        refused(
            SebraOptions {
                bias: (f64::NAN, 0.95),
                ..d()
            },
            "rho_1",
        );
        // 1/K itself is the unbiased data set, allowed; so is 1 (every cue agrees).
        SebraOptions {
            bias: (0.25, 1.0),
            ..d()
        }
        .check()
        .unwrap();
        refused(
            SebraOptions { classes: 9, ..d() },
            "classes must be between 2 and 8",
        );
        refused(
            SebraOptions { classes: 1, ..d() },
            "classes must be between 2 and 8",
        );
        refused(
            SebraOptions { image: 8, ..d() },
            "image must be between 12 and 64",
        );
        refused(
            SebraOptions {
                train_per_class: 3,
                ..d()
            },
            "train_per_class must be at least 16",
        );
        refused(
            SebraOptions {
                test_per_class: 15,
                ..d()
            },
            "test_per_class must be at least K^2 = 16",
        );
        refused(
            SebraOptions {
                image: 64,
                train_per_class: 100_000,
                ..d()
            },
            "do not fit in 1024 MiB",
        );
        refused(
            SebraOptions {
                p_critical: 1.0,
                ..d()
            },
            "p_critical must be in (0, 1)",
        );
        refused(SebraOptions { gap: 0, ..d() }, "gap must be at least 1");
        refused(
            SebraOptions { batch: 4001, ..d() },
            "batch must be between 1 and the 4000",
        );
        refused(
            SebraOptions {
                rank_epochs: 0,
                ..d()
            },
            "rank_epochs must be between 1",
        );
    }

    #[test]
    fn options_round_trip_through_json_with_defaults_filled_in() {
        let o: SebraOptions =
            serde_json::from_str(r#"{"bias":[0.99,0.9],"model":"mlp","seed":7}"#).unwrap();
        assert_eq!(o.bias, (0.99, 0.9));
        assert_eq!(o.model, ModelKind::Mlp);
        assert_eq!(o.classes, 4);
        let back: SebraOptions = serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
        assert_eq!(back, o);
    }
}
