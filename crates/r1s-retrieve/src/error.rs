//! Errors of the retrieval crate.

use std::path::PathBuf;

/// Errors of opening and querying a retriever.
#[derive(Debug, thiserror::Error)]
pub enum RetrieveError {
    #[error(transparent)]
    Index(#[from] r1s_index::IndexError),
    #[error(transparent)]
    Embed(#[from] r1s_embed::EmbedError),
    #[error(transparent)]
    Corpus(#[from] r1s_corpus::CorpusError),
    #[error(transparent)]
    Bm25(#[from] r1s_bm25::Bm25Error),
    /// The corpus an index was built from cannot be found.
    #[error("{}: the corpus {corpus:?} it was built from is not found (tried {tried}); pass its directory with --corpus", index.display())]
    CorpusNotFound { index: PathBuf, corpus: String, tried: String },
    /// The index, corpus and embedder do not belong together.
    #[error("{0}")]
    Mismatch(String),
    #[error("{0}")]
    Options(String),
}

pub type Result<T, E = RetrieveError> = std::result::Result<T, E>;
