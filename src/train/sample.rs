//! Text from a trained model, so a student sees what a loss means: seeded sampling of the
//! next token, one token at a time, from the model's logits at a temperature.
//!
//! Each new token runs the whole forward over the last `ctx` tokens (no KV cache: the lab's
//! models are small, and this keeps one forward, the training one, as the only forward).
//! logits_j = xf . head_j (f64 accumulation over the final norm's output); temperature 0
//! takes the argmax; otherwise p_j ∝ exp((logit_j - max) / temperature), and the draw is
//! u in [0, 1) from ChaCha8 (`seed`, stream 2) walked along the cumulative sum.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::model::Model;
use crate::{LabError, Result};

/// `length` tokens that follow `prompt` (ids), drawn from `model` with a context of at most
/// `ctx` tokens. An empty prompt starts from token 0.
pub fn sample(
    model: &Model,
    prompt: &[u32],
    length: usize,
    temperature: f64,
    seed: u64,
    ctx: usize,
) -> Result<Vec<u32>> {
    let vocab = model.cfg.vocab;
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(LabError::invalid(format!(
            "temperature must be a number >= 0, not {temperature}"
        )));
    }
    if ctx == 0 {
        return Err(LabError::invalid("the context must hold at least 1 token"));
    }
    if let Some(&bad) = prompt.iter().find(|&&id| id as usize >= vocab) {
        return Err(LabError::invalid(format!(
            "token id {bad} is outside the vocabulary of {vocab} tokens"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(2);
    let mut ids: Vec<u32> = if prompt.is_empty() {
        vec![0]
    } else {
        prompt.to_vec()
    };
    let head = model.weights.head.as_ref().unwrap_or(&model.weights.embed);
    let c = model.cfg.width;
    let mut out = Vec::with_capacity(length);
    let mut logits = vec![0.0f64; vocab];
    for _ in 0..length {
        let window = &ids[ids.len().saturating_sub(ctx)..];
        let t = window.len();
        // The forward wants T+1 ids per row (inputs and targets): the target is a dummy.
        let mut row = window.to_vec();
        row.push(0);
        let acts = model.forward(&row, 1, t, None);
        let x = acts.final_state(t - 1);
        for (j, l) in logits.iter_mut().enumerate() {
            let w = &head[j * c..(j + 1) * c];
            *l = x.iter().zip(w).map(|(a, b)| *a as f64 * *b as f64).sum();
        }
        let next = pick(&logits, temperature, &mut rng);
        ids.push(next);
        out.push(next);
    }
    Ok(out)
}

/// The argmax at temperature 0 (the first of equals), else a draw from the softmax of
/// logits / temperature.
fn pick(logits: &[f64], temperature: f64, rng: &mut ChaCha8Rng) -> u32 {
    let (argmax, max) =
        logits
            .iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            });
    if temperature == 0.0 {
        return argmax as u32;
    }
    let weights: Vec<f64> = logits
        .iter()
        .map(|l| libm::exp((l - max) / temperature))
        .collect();
    let total: f64 = weights.iter().sum();
    // u in [0, 1) with 53 random bits.
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        if u < acc {
            return i as u32;
        }
    }
    argmax as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_zero_is_the_argmax_and_draws_follow_the_softmax() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(pick(&[0.1, 3.0, 2.9], 0.0, &mut rng), 1);
        // Logits ln(1), ln(3): p = 1/4, 3/4 at temperature 1; at 2 (sqrt): 1/(1+sqrt 3).
        let logits = [0.0, 3f64.ln()];
        for (temp, p0) in [(1.0, 0.25), (2.0, 1.0 / (1.0 + 3f64.sqrt()))] {
            let n = 40_000;
            let zeros = (0..n)
                .filter(|_| pick(&logits, temp, &mut rng) == 0)
                .count();
            let freq = zeros as f64 / n as f64;
            // 5 standard deviations of a binomial frequency.
            let sd = (p0 * (1.0 - p0) / n as f64).sqrt();
            assert!((freq - p0).abs() < 5.0 * sd, "T {temp}: {freq} vs {p0}");
        }
    }
}
