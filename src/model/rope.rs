//! RoPE's frequencies as transformers computes them (`modeling_rope_utils.py`), read from
//! every convention a checkpoint may use, and the scaled variants the LLaMA family ships.
//!
//! A head of D dims rotates D/2 pairs (i, i + D/2); pair i turns by angle(t, i) = t inv_freq_i
//! at position t, and the tables hold cos and sin of it times an attention factor:
//!
//! ```text
//! default  inv_freq_i = theta^(-2i/D)                                  factor 1
//! linear   inv_freq_i / s                                              (s = "factor")
//! dynamic  theta' = theta ((s T / P) - (s - 1))^(D/(D-2)) when T > P,  P = max positions
//!          else theta (transformers recomputes it for each sequence longer than P)
//! llama3   wavelength w_i = 2 pi / inv_freq_i, L = P0 / low_freq_factor, H = P0 / high_freq_factor
//!          w_i < H: inv_freq_i;  w_i > L: inv_freq_i / s;  else, with
//!          smooth = (P0 / w_i - low_freq_factor) / (high_freq_factor - low_freq_factor),
//!          (1 - smooth) inv_freq_i / s + smooth inv_freq_i
//! yarn     ramp between the dims that turn beta_fast and beta_slow times in P0 positions:
//!          inv_freq_i = interp_i (1 - e_i) + extrap_i e_i, interp = extrap / s,
//!          e_i = 1 - clamp((i - low) / (high - low), 0, 1); cos and sin times the
//!          attention factor (default 0.1 ln s + 1, or from mscale / mscale_all_dim)
//! freqs    llama.cpp's rope_freqs.weight (GGUF of Llama 3.1/3.2): inv_freq_i / f_i
//! ```
//!
//! Config conventions (transformers 4 and 5), all read into one `RopeSpec`:
//! - `rope_theta` at the top level (transformers 4), default 10000;
//! - `rope_scaling: {"type" | "rope_type": ..., "factor": ...}` (transformers 4);
//! - `rope_parameters: {"rope_type": ..., "rope_theta": ..., ...}` (transformers 5).
//!
//! Anything else that changes the angles (an unknown `rope_type`, an unknown key inside the
//! parameters, partial rotary dims) is refused by name, never approximated.

use serde_json::{Map, Value};

use crate::{LabError, Result};

/// How the frequencies are scaled; see the module comment for the formulas.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// transformers' "default".
    None,
    Linear {
        factor: f64,
    },
    Dynamic {
        factor: f64,
        /// P: positions the frequencies are left alone for.
        max_positions: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        /// P0
        original_max_positions: f64,
    },
    Yarn {
        factor: f64,
        /// P0
        original_max_positions: f64,
        beta_fast: f64,
        beta_slow: f64,
        /// Round the ramp's ends to whole dims (transformers' default).
        truncate: bool,
        /// cos and sin are multiplied by it.
        attention_factor: f64,
    },
    /// llama.cpp's `rope_freqs.weight`, D/2 divisors of the frequencies.
    Freqs(Vec<f64>),
}

/// Everything that fixes the RoPE tables of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeSpec {
    pub theta: f64,
    /// D: rotary dims (the head dim; partial rotary embeddings are refused).
    pub dim: usize,
    pub scaling: RopeScaling,
}

impl RopeSpec {
    pub fn plain(theta: f64, dim: usize) -> RopeSpec {
        RopeSpec {
            theta,
            dim,
            scaling: RopeScaling::None,
        }
    }

    /// The D/2 inverse frequencies for sequences of `seq_len` tokens, and the factor cos and
    /// sin are multiplied by.
    pub fn inv_freq(&self, seq_len: usize) -> (Vec<f64>, f64) {
        let d = self.dim;
        let base = |theta: f64| -> Vec<f64> {
            (0..d / 2)
                .map(|i| 1.0 / theta.powf(2.0 * i as f64 / d as f64))
                .collect()
        };
        match &self.scaling {
            RopeScaling::None => (base(self.theta), 1.0),
            RopeScaling::Linear { factor } => {
                (base(self.theta).iter().map(|f| f / factor).collect(), 1.0)
            }
            RopeScaling::Dynamic {
                factor,
                max_positions,
            } => {
                let t = seq_len as f64;
                let theta = if t > *max_positions {
                    self.theta
                        * ((factor * t / max_positions) - (factor - 1.0))
                            .powf(d as f64 / (d as f64 - 2.0))
                } else {
                    self.theta
                };
                (base(theta), 1.0)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            } => {
                let low_wavelen = original_max_positions / low_freq_factor;
                let high_wavelen = original_max_positions / high_freq_factor;
                let f = base(self.theta)
                    .into_iter()
                    .map(|inv| {
                        let wavelen = 2.0 * std::f64::consts::PI / inv;
                        if wavelen > low_wavelen {
                            inv / factor
                        } else if wavelen < high_wavelen {
                            inv
                        } else {
                            let smooth = (original_max_positions / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * inv / factor + smooth * inv
                        }
                    })
                    .collect();
                (f, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max_positions,
                beta_fast,
                beta_slow,
                truncate,
                attention_factor,
            } => {
                let theta = self.theta;
                let dims = d as f64;
                // The dim whose pair turns `rotations` times in P0 positions.
                let correction_dim = |rotations: f64| {
                    dims * (original_max_positions / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * theta.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(dims - 1.0));
                if low == high {
                    high += 0.001;
                }
                let f = base(theta)
                    .into_iter()
                    .enumerate()
                    .map(|(i, extrap)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let e = 1.0 - ramp;
                        (extrap / factor) * (1.0 - e) + extrap * e
                    })
                    .collect();
                (f, *attention_factor)
            }
            RopeScaling::Freqs(div) => (
                base(self.theta)
                    .iter()
                    .zip(div)
                    .map(|(f, s)| f / s)
                    .collect(),
                1.0,
            ),
        }
    }

    /// Reads a Hugging Face config.json: `rope_parameters` (transformers 5) or `rope_theta`
    /// with `rope_scaling` (transformers 4). `dim` is the head dim.
    pub fn from_hf_config(c: &Value, dim: usize) -> Result<RopeSpec> {
        let bad = |msg: String| LabError::invalid(format!("config.json: {msg}"));
        // transformers 5 writes rope_parameters; 4 wrote rope_scaling (null for none). Both
        // present: refused unless they agree (transformers 5 would take rope_scaling).
        let (params, key) = match (object(c, "rope_parameters")?, object(c, "rope_scaling")?) {
            (Some(p), Some(s)) if !same_scaling(p, s) => {
                return Err(bad(format!(
                    "rope_parameters {} and rope_scaling {} disagree; LayerLab will not \
                     choose between them",
                    Value::Object(p.clone()),
                    Value::Object(s.clone())
                )))
            }
            (Some(p), _) => (Some(p), "rope_parameters"),
            (None, Some(s)) => (Some(s), "rope_scaling"),
            (None, None) => (None, ""),
        };
        if let Some(p) = c.get("partial_rotary_factor").filter(|v| !v.is_null()) {
            if p.as_f64() != Some(1.0) {
                return Err(bad(format!(
                    "partial_rotary_factor {p}: partial rotary embeddings are not supported \
                     (LayerLab rotates every dim of a head, as LLaMA, Mistral and Qwen do)"
                )));
            }
        }
        let top_theta = number(c, "rope_theta", "config.json")?;
        let Some(p) = params else {
            return Ok(RopeSpec::plain(top_theta.unwrap_or(10000.0), dim));
        };
        let theta = match (number_in(p, "rope_theta", key)?, top_theta) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad(format!(
                    "{key}.rope_theta {a} and rope_theta {b} disagree"
                )))
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => 10000.0,
        };
        let max_positions = number(c, "max_position_embeddings", "config.json")?;
        let spec = scaling_from_params(p, key, max_positions)?;
        Ok(RopeSpec {
            theta,
            dim,
            scaling: spec,
        })
    }
}

/// The rope types LayerLab computes, for messages.
pub const SUPPORTED_ROPE_TYPES: &str = "default, linear, dynamic, llama3 and yarn";

fn object<'a>(c: &'a Value, key: &str) -> Result<Option<&'a Map<String, Value>>> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(LabError::invalid(format!(
            "config.json: {key} is {other}, expected an object"
        ))),
    }
}

fn number(c: &Value, key: &str, what: &str) -> Result<Option<f64>> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| LabError::invalid(format!("{what}: {key} is {v}, expected a number"))),
    }
}

fn number_in(p: &Map<String, Value>, key: &str, within: &str) -> Result<Option<f64>> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            LabError::invalid(format!(
                "config.json: {within}.{key} is {v}, expected a number"
            ))
        }),
    }
}

/// rope_parameters and rope_scaling say the same (transformers 5 checkpoints may carry both).
fn same_scaling(p: &Map<String, Value>, s: &Map<String, Value>) -> bool {
    let kind = |m: &Map<String, Value>| {
        m.get("rope_type")
            .or_else(|| m.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string()
    };
    kind(p) == kind(s)
        && s.iter()
            .filter(|(k, _)| !matches!(k.as_str(), "type" | "rope_type"))
            .all(|(k, v)| p.get(k) == Some(v))
}

/// The scaling of a rope_parameters / rope_scaling object.
fn scaling_from_params(
    p: &Map<String, Value>,
    key: &str,
    max_positions: Option<f64>,
) -> Result<RopeScaling> {
    let bad = |msg: String| LabError::invalid(format!("config.json: {key}: {msg}"));
    if let Some((k, _)) = p.iter().find(|(_, v)| v.is_object()) {
        return Err(bad(format!(
            "per-layer-type RoPE parameters ('{k}') are not supported"
        )));
    }
    let kind = match (p.get("rope_type"), p.get("type")) {
        (Some(a), Some(b)) if a != b => {
            return Err(bad(format!("rope_type {a} and type {b} disagree")))
        }
        (Some(v), _) | (None, Some(v)) => v
            .as_str()
            .ok_or_else(|| bad(format!("rope_type is {v}, expected a string")))?,
        (None, None) => "default",
    };
    // Keys each type reads; any other key would change the maths in a way not computed here.
    let allowed: &[&str] = match kind {
        "default" => &[],
        "linear" => &["factor"],
        "dynamic" => &["factor"],
        "llama3" => &[
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ],
        "yarn" => &[
            "factor",
            "original_max_position_embeddings",
            "attention_factor",
            "beta_fast",
            "beta_slow",
            "mscale",
            "mscale_all_dim",
            "truncate",
        ],
        other => {
            return Err(bad(format!(
                "rope_type '{other}' is not supported; LayerLab computes the RoPE types \
                 {SUPPORTED_ROPE_TYPES}"
            )))
        }
    };
    if let Some(k) = p.keys().find(|k| {
        !matches!(k.as_str(), "rope_type" | "type" | "rope_theta") && !allowed.contains(&k.as_str())
    }) {
        return Err(bad(format!(
            "'{k}' is not a parameter LayerLab knows for rope_type '{kind}' (it reads {}); \
             refusing rather than ignoring it",
            if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            }
        )));
    }
    let num = |k: &str| number_in(p, k, key);
    let need = |k: &str| -> Result<f64> {
        num(k)?.ok_or_else(|| bad(format!("rope_type '{kind}' needs '{k}'")))
    };
    let max_positions = || {
        max_positions
            .ok_or_else(|| bad(format!("rope_type '{kind}' needs max_position_embeddings")))
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: need("factor")?,
        },
        // transformers 5 scales by max_position_embeddings (the key "original_..." is not
        // read for dynamic).
        "dynamic" => RopeScaling::Dynamic {
            factor: need("factor")?,
            max_positions: max_positions()?,
        },
        // Without original_max_position_embeddings, transformers 5 uses max_position_embeddings.
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_positions: match num("original_max_position_embeddings")? {
                Some(p) => p,
                None => max_positions()?,
            },
        },
        _ => {
            // yarn
            let original = match num("original_max_position_embeddings")? {
                Some(p) => p,
                None => max_positions()?,
            };
            // transformers 5: no factor means max_position_embeddings / original.
            let factor = match num("factor")? {
                Some(f) => f,
                None => max_positions()? / original,
            };
            let mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention_factor = match num("attention_factor")? {
                Some(a) => a,
                None => match (num("mscale")?, num("mscale_all_dim")?) {
                    (Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                        mscale(factor, m) / mscale(factor, all)
                    }
                    _ => mscale(factor, 1.0),
                },
            };
            let truncate = match p.get("truncate") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(v) => return Err(bad(format!("truncate is {v}, expected true or false"))),
            };
            RopeScaling::Yarn {
                factor,
                original_max_positions: original,
                beta_fast: num("beta_fast")?.unwrap_or(32.0),
                beta_slow: num("beta_slow")?.unwrap_or(1.0),
                truncate,
                attention_factor,
            }
        }
    })
}

/// The transformers 4 `rope_scaling` object of `spec` (null when unscaled), for an export's
/// config.json; transformers 5 reads it too. llama.cpp's rope_freqs divisors have no
/// transformers equivalent: they are written under a rope_type transformers refuses, so the
/// export cannot load silently with other frequencies.
pub fn hf_rope_scaling(spec: &RopeSpec) -> Value {
    use serde_json::json;
    match &spec.scaling {
        RopeScaling::None => Value::Null,
        RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
        RopeScaling::Dynamic { factor, .. } => json!({"rope_type": "dynamic", "factor": factor}),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_positions,
        } => json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": *original_max_positions as u64,
        }),
        RopeScaling::Yarn {
            factor,
            original_max_positions,
            beta_fast,
            beta_slow,
            truncate,
            attention_factor,
        } => json!({
            "rope_type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": *original_max_positions as u64,
            "beta_fast": beta_fast,
            "beta_slow": beta_slow,
            "truncate": truncate,
            "attention_factor": attention_factor,
        }),
        RopeScaling::Freqs(div) => json!({"rope_type": "gguf_rope_freqs", "rope_freqs": div}),
    }
}
