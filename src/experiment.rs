//! The experiment: everything needed to reproduce a view or a run, versioned. The page keeps
//! it in the URL (a shareable link), the CLI builds it from flags, the tests from fixtures;
//! the report carries it, so a result always says what produced it.

use serde::{Deserialize, Serialize};

use crate::prune::driver::PruneOptions;
use crate::stats::StatsOptions;

/// Bumped when a field changes meaning; readers refuse versions they do not know.
pub const EXPERIMENT_VERSION: u32 = 1;

/// Where the model comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelSource {
    /// Fetched from a URL (HTTP range requests where the server allows them).
    Url { url: String },
    /// A file the user dropped or picked: a link can only say which file to drop again.
    File { name: String, size: u64 },
    /// A path on the machine running the CLI.
    Path { path: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabKind {
    /// Per-layer statistics of a model's weights.
    Layers,
    /// Prune a model (magnitude, Wanda, SparseGPT, OWL) and compare perplexities.
    Prune,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    pub version: u32,
    pub lab: LabKind,
    pub model: ModelSource,
    pub stats: StatsOptions,
    /// The pruning run's settings (lab "prune"); absent in links of the other labs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<PruneOptions>,
}

impl Experiment {
    pub fn layers(model: ModelSource, stats: StatsOptions) -> Self {
        Experiment {
            version: EXPERIMENT_VERSION,
            lab: LabKind::Layers,
            model,
            stats,
            prune: None,
        }
    }

    /// A pruning run's experiment: the model and every option of the run.
    pub fn prune(model: ModelSource, prune: PruneOptions) -> Self {
        Experiment {
            version: EXPERIMENT_VERSION,
            lab: LabKind::Prune,
            model,
            stats: StatsOptions::default(),
            prune: Some(prune),
        }
    }

    /// Parses an experiment, refusing versions this build does not know.
    pub fn from_json(text: &str) -> crate::Result<Self> {
        let e: Experiment = serde_json::from_str(text)
            .map_err(|err| crate::LabError::invalid(format!("not a LayerLab experiment: {err}")))?;
        if e.version != EXPERIMENT_VERSION {
            return Err(crate::LabError::invalid(format!(
                "experiment version {} is not supported by this LayerLab (it reads version {EXPERIMENT_VERSION})",
                e.version
            )));
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_versions() {
        let e = Experiment::layers(
            ModelSource::Url {
                url: "models/m.gguf".into(),
            },
            StatsOptions::default(),
        );
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains(r#""kind":"url""#), "{text}");
        assert_eq!(Experiment::from_json(&text).unwrap(), e);
        assert!(!text.contains("prune"), "{text}");
        let p = Experiment::prune(
            ModelSource::Path {
                path: "m.gguf".into(),
            },
            PruneOptions::default(),
        );
        let ptext = serde_json::to_string(&p).unwrap();
        assert!(ptext.contains(r#""lab":"prune""#), "{ptext}");
        assert_eq!(Experiment::from_json(&ptext).unwrap(), p);
        let future = text.replace(r#""version":1"#, r#""version":99"#);
        assert!(Experiment::from_json(&future)
            .unwrap_err()
            .to_string()
            .contains("version 99"));
        assert!(Experiment::from_json("{}")
            .unwrap_err()
            .to_string()
            .contains("not a LayerLab experiment"));
    }
}
