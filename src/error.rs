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
}
