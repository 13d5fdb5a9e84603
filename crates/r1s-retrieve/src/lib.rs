//! Retrieval for r1s.
//!
//! - [`DenseRetriever`] implements [`r1s_core::Retriever`]: the query-side embedder, a vector index and
//!   the corpus docstore, all opened from an index directory (memory-mapped; nothing is copied).
//! - [`Batcher`]: dedicated threads that coalesce concurrent requests into one embed + search batch,
//!   behind a bounded queue.
//! - [`server`]: the HTTP server (`r1s serve`) speaking Search-R1's `POST /retrieve` and
//!   R1-Searcher's `POST /queries` byte for byte, plus `GET /health` and `GET /metrics`.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod batch;
pub mod dense;
pub mod error;
pub mod json;
pub mod metrics;
pub mod server;

pub use batch::{BatchConfig, Batcher, Failed, SubmitError};
pub use dense::{DenseOptions, DenseRetriever, query_embedder, resolve_corpus};
pub use error::{Result, RetrieveError};
pub use r1s_core::{Hit, Retriever};
pub use server::{ServeConfig, serve};
