//! Errors of the index crate.

use std::path::{Path, PathBuf};

/// Errors of building, loading and searching indexes.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A file is missing, truncated, corrupt or inconsistent with the manifest.
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    /// Vectors of the wrong dimension.
    #[error("wrong vector dimension: expected {expected}, got {got}")]
    WrongDimension { expected: usize, got: usize },
    /// The index was built from another corpus or embedder than the one given.
    #[error("{0}")]
    Mismatch(String),
    #[error("{0}")]
    Options(String),
    #[error("cancelled")]
    Cancelled,
    /// A remote index (Milvus) did not answer in time or is not ready: a later attempt may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// A remote index refused a request.
    #[error("{0}")]
    Backend(String),
}

impl IndexError {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        IndexError::Io { path: path.as_ref().to_path_buf(), source }
    }
    pub(crate) fn bad(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        IndexError::BadFile { path: path.as_ref().to_path_buf(), reason: reason.into() }
    }
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;

/// Number of queries in row-major `queries` of dimension `dim`; an error when `dim` is 0 or does
/// not divide the length.
pub(crate) fn query_rows(queries: &[f32], dim: usize) -> Result<usize> {
    if dim == 0 || !queries.len().is_multiple_of(dim) {
        return Err(IndexError::WrongDimension { expected: dim, got: queries.len() % dim.max(1) });
    }
    Ok(queries.len() / dim)
}
