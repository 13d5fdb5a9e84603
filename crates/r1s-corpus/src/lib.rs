//! Corpus ingestion for r1s.
//!
//! Turns Wikipedia dumps (`.xml`, `.xml.bz2`, single- or multistream) and the corpus formats users
//! already have (Search-R1 / FlashRAG JSONL, DPR TSV, KILT, Wikipedia summaries) into a corpus
//! directory: `passages.parquet` (zstd), a memory-mapped docstore (any passage by row in O(1)) and
//! `manifest.json`.
//!
//! ```no_run
//! use r1s_corpus::{ingest, IngestOptions, Corpus};
//! let opts = IngestOptions::default();
//! let report = ingest(&["enwiki.xml.bz2".into()], "corpora/enwiki".as_ref(), &opts,
//!                     &r1s_core::NoProgress, &r1s_core::Cancel::new())?;
//! let corpus = Corpus::open(&report.out)?;
//! println!("{}", corpus.docstore.get(0)?.text);
//! # Ok::<(), r1s_corpus::CorpusError>(())
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod chunk;
pub use chunk::Chunking;
pub mod dump;
pub mod error;
pub mod formats;
pub mod ingest;
pub mod store;
pub mod templates;
pub mod wikitext;

pub use error::{CorpusError, Location, Result};
pub use formats::Format;
pub use ingest::{IngestOptions, IngestReport, ingest};
pub use store::{Corpus, Docstore, Manifest, PassageRef};
