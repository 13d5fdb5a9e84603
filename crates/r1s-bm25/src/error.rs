//! Errors of the BM25 crate.

use std::path::{Path, PathBuf};

/// Errors of building, opening and searching a BM25 index.
#[derive(Debug, thiserror::Error)]
pub enum Bm25Error {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// An index directory that is not a finished, consistent BM25 index.
    #[error("{}: {reason}", path.display())]
    BadIndex { path: PathBuf, reason: String },
    /// tantivy refused an operation on the index in `path`.
    #[error("{}: tantivy: {source}", path.display())]
    Tantivy { path: PathBuf, source: tantivy::TantivyError },
    /// Reading the corpus failed.
    #[error(transparent)]
    Corpus(#[from] r1s_corpus::CorpusError),
    /// A parameter out of range (k1, b, threads, memory).
    #[error("{0}")]
    Options(String),
    /// The job was cancelled (Ctrl-C); committed progress is kept for a resume.
    #[error("cancelled")]
    Cancelled,
}

impl Bm25Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Bm25Error {
        Bm25Error::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn bad(path: &Path, reason: impl Into<String>) -> Bm25Error {
        Bm25Error::BadIndex { path: path.to_path_buf(), reason: reason.into() }
    }

    pub(crate) fn tantivy(path: &Path) -> impl FnOnce(tantivy::TantivyError) -> Bm25Error + '_ {
        move |source| Bm25Error::Tantivy { path: path.to_path_buf(), source }
    }
}

/// Result of this crate.
pub type Result<T, E = Bm25Error> = std::result::Result<T, E>;
