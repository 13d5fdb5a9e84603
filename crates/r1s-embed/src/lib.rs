//! Text embeddings for r1s with ONNX Runtime.
//!
//! [`OnnxEmbedder`] implements [`r1s_core::Embedder`]: a transformer encoder exported to ONNX, its
//! `tokenizer.json`, and a pooling [`Preset`] (`minilm`, `bge`, `e5`, or `r1s-embed.json` beside the
//! model). [`embed_corpus`] embeds a whole corpus directory into `embeddings.npy`, incrementally and
//! resumably.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod error;
pub mod job;
pub mod model;
pub mod preset;
pub mod runtime;

pub use error::{EmbedError, Result};

pub use job::{EmbedJob, EmbedReport, EmbeddingsMeta, embed_corpus};
pub use model::{Device, EmbedderConfig, OnnxEmbedder};

pub use preset::{Pooling, Preset};
pub use r1s_core::npy::Dtype;
