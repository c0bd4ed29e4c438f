//! The lab's error type. Messages are sentences for the person at the keyboard: they say
//! what was expected, what was found, and where possible what to do about it.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LabError {
    /// The user asked for something that does not make sense (bad shape, bad option).
    #[error("{0}")]
    Invalid(String),
    /// No GPU could be used; the message says why (no adapter, device refused, ...).
    #[error("{0}")]
    GpuUnavailable(String),
    /// The GPU failed while running (device lost, out of memory, validation error).
    #[error("the GPU failed during the run: {0}")]
    GpuFailed(String),
    /// The user cancelled the run.
    #[error("the run was cancelled")]
    Cancelled,
    #[error("{0}")]
    Io(String),
    /// A file that is not what it claims: truncated, corrupt, hostile or unsupported. The
    /// message starts with the file's name and says what was expected and found.
    #[error("{0}")]
    BadFile(String),
}

pub type Result<T> = std::result::Result<T, LabError>;

impl LabError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        LabError::Invalid(msg.into())
    }

    /// A candle tensor op that failed while `stage` ran: "{stage} failed: {candle's message}".
    /// Shapes are checked before candle sees them, so this is a bug or a failed allocation;
    /// the stage says where, which candle's own message ("unexpected rank") does not.
    pub fn candle(stage: &str, e: candle_core::Error) -> Self {
        LabError::invalid(format!("{stage} failed: {e}"))
    }
}

/// [`LabError::candle`] for each stage that runs candle ops, as `map_err` arguments: a module
/// imports its stage's as `ce` and writes `op.map_err(ce)?`.
pub(crate) mod candle_failed {
    use super::LabError;

    /// A model's forward pass on the CPU (`model::llama`, `model::gpt2_opt`).
    pub fn forward(e: candle_core::Error) -> LabError {
        LabError::candle("the forward pass", e)
    }

    /// The forward pass on the GPU (`model::gpu_forward`).
    pub fn gpu_forward(e: candle_core::Error) -> LabError {
        LabError::candle("the GPU forward pass", e)
    }

    /// The pruning driver's passes (`prune::driver`).
    pub fn pruning(e: candle_core::Error) -> LabError {
        LabError::candle("the pruning pass", e)
    }

    /// Perplexity (`eval`).
    pub fn perplexity(e: candle_core::Error) -> LabError {
        LabError::candle("the perplexity computation", e)
    }
}

#[cfg(test)]
mod tests {
    use super::candle_failed;

    /// Each stage's message, word for word as the five copies of `ce` wrote it before.
    #[test]
    fn candle_errors_name_their_stage() {
        let e = || candle_core::Error::Msg("unexpected rank".into());
        let cases = [
            (candle_failed::forward(e()), "the forward pass"),
            (candle_failed::gpu_forward(e()), "the GPU forward pass"),
            (candle_failed::pruning(e()), "the pruning pass"),
            (candle_failed::perplexity(e()), "the perplexity computation"),
        ];
        for (err, stage) in cases {
            assert_eq!(err.to_string(), format!("{stage} failed: unexpected rank"));
        }
    }
}
