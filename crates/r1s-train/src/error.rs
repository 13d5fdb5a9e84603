//! Errors of training.

use std::path::PathBuf;

/// Everything training can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Policy(#[from] r1s_policy::PolicyError),
    #[error(transparent)]
    Agent(#[from] r1s_agent::AgentError),
    #[error(transparent)]
    Data(#[from] r1s_agent::eval::DataError),
    #[error(transparent)]
    Prompt(#[from] r1s_agent::prompt::UnknownPrompt),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },
    #[error("{}: line {line}: {reason}", path.display())]
    BadLine { path: PathBuf, line: usize, reason: String },
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },
    #[error("{0}")]
    Options(String),
    #[error("plot: {0}")]
    Plot(String),
    #[error("cancelled")]
    Cancelled,
}

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> TrainError {
        TrainError::Io { path: path.into(), source }
    }
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
