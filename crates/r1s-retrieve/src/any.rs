//! [`AnyRetriever`]: whichever retriever an index directory holds (dense, BM25 or hybrid), chosen
//! by its manifest's `kind`.

use std::path::Path;

use r1s_bm25::Bm25Params;
use r1s_core::{Hit, Retriever};
use r1s_corpus::Corpus;

use crate::dense::{DenseOptions, DenseRetriever};
use crate::error::{Result, RetrieveError};
use crate::hybrid::{HybridOptions, HybridRetriever};
use crate::lexical::Bm25Retriever;

/// How to open any retriever: the dense options (also a hybrid's dense part) and the lexical and
/// fusion settings (the manifest's where `None`).
#[derive(Debug, Clone, Default)]
pub struct RetrieverOptions {
    pub dense: DenseOptions,
    /// BM25 k1 / b at query time.
    pub bm25: Option<Bm25Params>,
    /// Hybrid: fusion and depth.
    pub hybrid: HybridOptions,
}

/// The retriever of an index directory of any kind.
#[derive(Debug)]
pub enum AnyRetriever {
    Dense(Box<DenseRetriever>),
    Bm25(Box<Bm25Retriever>),
    Hybrid(Box<HybridRetriever>),
}

/// The `kind` in `dir/manifest.json` (`flat`, `hnsw`, …, `bm25`, `hybrid`), if readable.
pub fn index_kind(dir: &Path) -> Option<String> {
    let bytes = std::fs::read(dir.join(r1s_index::MANIFEST_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["kind"].as_str().map(str::to_owned)
}

impl AnyRetriever {
    /// Opens the index in `dir` with the retriever its manifest's kind calls for.
    pub fn open(dir: &Path, o: &RetrieverOptions) -> Result<AnyRetriever> {
        let kind = index_kind(dir);
        if kind.is_none() && dir.join(r1s_corpus::store::DOCSTORE_INDEX).is_file() {
            return Err(RetrieveError::Options(format!(
                "{0} is a corpus directory, not an index: build one with `r1s index build {0} --out indexes/NAME` \
                 (--kind hnsw, flat, bm25 or hybrid)",
                dir.display()
            )));
        }
        match kind.as_deref() {
            Some(r1s_bm25::KIND) => {
                if o.dense.ef_search.is_some() {
                    return Err(RetrieveError::Options(format!(
                        "{}: --ef is a setting of dense indexes, this is a BM25 index",
                        dir.display()
                    )));
                }
                if o.hybrid != HybridOptions::default() {
                    return Err(RetrieveError::Options(format!(
                        "{}: fusion settings (--fusion, --rrf-k, --weight, --depth) apply to hybrid indexes, this is a BM25 index",
                        dir.display()
                    )));
                }
                Ok(AnyRetriever::Bm25(Box::new(Bm25Retriever::open(dir, o.dense.corpus.as_deref(), o.bm25)?)))
            }
            Some(crate::hybrid::KIND) => {
                let h = HybridOptions { bm25: o.bm25.or(o.hybrid.bm25), ..o.hybrid.clone() };
                Ok(AnyRetriever::Hybrid(Box::new(HybridRetriever::open(dir, &o.dense, &h)?)))
            }
            _ => {
                if o.bm25.is_some() || o.hybrid != HybridOptions::default() {
                    return Err(RetrieveError::Options(format!(
                        "{}: BM25 and fusion settings apply to bm25 and hybrid indexes, this is a dense index",
                        dir.display()
                    )));
                }
                Ok(AnyRetriever::Dense(Box::new(DenseRetriever::open(dir, &o.dense)?)))
            }
        }
    }

    /// The corpus the passages come from.
    pub fn corpus(&self) -> &Corpus {
        match self {
            AnyRetriever::Dense(r) => r.corpus(),
            AnyRetriever::Bm25(r) => r.corpus(),
            AnyRetriever::Hybrid(r) => r.corpus(),
        }
    }

    /// The kind, as its manifest names it.
    pub fn kind(&self) -> String {
        match self {
            AnyRetriever::Dense(r) => r.index().manifest.kind.name().to_owned(),
            AnyRetriever::Bm25(_) => r1s_bm25::KIND.to_owned(),
            AnyRetriever::Hybrid(_) => crate::hybrid::KIND.to_owned(),
        }
    }

    /// What the server shows at `/health` and prints at start-up: index, kind, rows, corpus, and
    /// the kind's own settings (model, k1/b, fusion).
    pub fn describe(&self) -> serde_json::Value {
        let dense_info = |r: &DenseRetriever| {
            let m = &r.index().manifest;
            serde_json::json!({
                "index": r.index().dir.display().to_string(),
                "kind": m.kind,
                "rows": m.rows,
                "dim": m.dim,
                "model": r.embedder().model_path().display().to_string(),
                "preset": r.embedder().preset().name,
            })
        };
        let bm25_info = |i: &r1s_bm25::Bm25Index| {
            serde_json::json!({
                "index": i.dir.display().to_string(),
                "kind": r1s_bm25::KIND,
                "rows": i.len(),
                "k1": i.params().k1,
                "b": i.params().b,
                "analyzer": i.manifest.analyzer,
            })
        };
        let mut v = match self {
            AnyRetriever::Dense(r) => dense_info(r),
            AnyRetriever::Bm25(r) => bm25_info(r.index()),
            AnyRetriever::Hybrid(h) => serde_json::json!({
                "index": h.dir.display().to_string(),
                "kind": crate::hybrid::KIND,
                "rows": h.manifest.rows,
                "fusion": h.fusion(),
                "depth": h.depth(),
                "dense": dense_info(h.dense()),
                "bm25": bm25_info(h.bm25()),
            }),
        };
        v["corpus"] = self.corpus().dir.display().to_string().into();
        v
    }
}

impl Retriever for AnyRetriever {
    type Error = RetrieveError;

    fn is_unavailable(err: &RetrieveError) -> bool {
        DenseRetriever::is_unavailable(err)
    }

    fn backend(&self, timeout: std::time::Duration) -> Option<r1s_core::BackendHealth> {
        match self {
            AnyRetriever::Dense(r) => r.backend(timeout),
            AnyRetriever::Bm25(_) => None,
            AnyRetriever::Hybrid(r) => r.backend(timeout),
        }
    }

    fn retrieve(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>> {
        match self {
            AnyRetriever::Dense(r) => r.retrieve(queries, k),
            AnyRetriever::Bm25(r) => r.retrieve(queries, k),
            AnyRetriever::Hybrid(r) => r.retrieve(queries, k),
        }
    }
}
