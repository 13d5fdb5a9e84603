//! Retrieval for r1s.
//!
//! - [`DenseRetriever`] implements [`r1s_core::Retriever`]: the query-side embedder, a vector index and
//!   the corpus docstore, all opened from an index directory (memory-mapped; nothing is copied).
//! - [`Bm25Retriever`]: a BM25 index ([`r1s_bm25`]) and the docstore; [`HybridRetriever`]: a dense and
//!   a BM25 index of one corpus fused per query (RRF or a weighted sum, [`fuse`]); [`AnyRetriever`]
//!   opens whichever an index directory holds.
//! - [`Batcher`]: dedicated threads that coalesce concurrent requests into one embed + search batch,
//!   behind a bounded queue.
//! - [`server`]: the HTTP server (`r1s serve`) speaking Search-R1's `POST /retrieve` and
//!   R1-Searcher's `POST /queries` byte for byte, plus `GET /health` and `GET /metrics`; [`Live`]:
//!   a retriever replaced while it serves (`r1s serve` re-opens its index on SIGHUP).

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod any;
pub mod batch;
pub mod dense;
pub mod error;
pub mod hybrid;
pub mod json;
pub mod lexical;
pub mod live;
pub mod metrics;
pub mod server;

pub use any::{AnyRetriever, RetrieverOptions, index_kind};
/// HTTP status codes (of the `http` crate axum serves with), for [`ServeConfig::overload_status`].
pub use axum::http::StatusCode;
pub use batch::{BatchConfig, Batcher, Failed, SubmitError};
pub use dense::{DenseOptions, DenseRetriever, find_corpus, query_embedder, resolve_corpus, to_hits};
pub use error::{Result, RetrieveError};
pub use hybrid::{Fusion, HybridManifest, HybridOptions, HybridRetriever, fuse};
pub use lexical::Bm25Retriever;
pub use live::Live;
pub use r1s_core::{Hit, Retriever};
pub use server::{InfoFn, ServeConfig, serve, serve_with_info};
