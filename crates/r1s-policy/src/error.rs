//! Errors of the policy crate.

use std::path::{Path, PathBuf};

/// Errors of loading and running a policy model.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A model file is truncated, corrupt, or holds something r1s cannot read.
    #[error("{}{}: {reason}", path.display(), offset.map(|o| format!(" (byte {o})")).unwrap_or_default())]
    BadFile { path: PathBuf, offset: Option<u64>, reason: String },
    /// Weights do not have the shapes the configuration implies.
    #[error("{}: tensor {name:?} has shape {got:?}, expected {expected:?}", path.display())]
    Shape { path: PathBuf, name: String, got: Vec<usize>, expected: Vec<usize> },
    /// The model's configuration is missing something or is not supported.
    #[error("{}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Options(String),
    /// The requested device is not available in this build or on this machine.
    #[error("device {device}: {reason}")]
    Device { device: String, reason: String },
    #[error("cancelled")]
    Cancelled,
}

impl PolicyError {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        PolicyError::Io { path: path.as_ref().to_path_buf(), source }
    }
}

pub type Result<T, E = PolicyError> = std::result::Result<T, E>;
