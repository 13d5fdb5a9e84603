//! [`Bm25Retriever`]: a BM25 index + the corpus docstore.

use std::path::Path;

use r1s_bm25::{Bm25Index, Bm25Params};
use r1s_core::{Hit, Retriever, Scored};
use r1s_corpus::Corpus;

use crate::dense::to_hits;
use crate::error::{Result, RetrieveError};

/// Lexical retrieval over a BM25 index directory (`r1s index build --kind bm25`). Hit scores are
/// BM25 scores (Lucene's formula, see [`r1s_bm25::score`]): unbounded, comparable within a query only.
#[derive(Debug)]
pub struct Bm25Retriever {
    index: Bm25Index,
    corpus: Corpus,
}

/// Checks that a BM25 index was built from `corpus` (content id and passage count).
pub(crate) fn check_bm25_corpus(index: &Bm25Index, corpus: &Corpus) -> Result<()> {
    let id = corpus.manifest.content_id();
    if index.manifest.corpus_id != id || index.len() != corpus.docstore.len() {
        return Err(RetrieveError::Mismatch(format!(
            "BM25 index {} was built from another corpus than {} (corpus id {} vs {}, {} vs {} passages)",
            index.dir.display(),
            corpus.dir.display(),
            short(&index.manifest.corpus_id),
            short(&id),
            index.len(),
            corpus.docstore.len()
        )));
    }
    Ok(())
}

pub(crate) fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

impl Bm25Retriever {
    /// Opens the BM25 index in `dir` and its corpus (`corpus`, else the one recorded at build time,
    /// found as for dense indexes), with `params` instead of the manifest's k1 / b when given.
    pub fn open(dir: &Path, corpus: Option<&Path>, params: Option<Bm25Params>) -> Result<Bm25Retriever> {
        let mut index = Bm25Index::open(dir)?;
        if let Some(p) = params {
            index.set_params(p)?;
        }
        let corpus_dir = match corpus {
            Some(c) => c.to_path_buf(),
            None => crate::dense::find_corpus(dir, &index.manifest.corpus, &index.manifest.corpus_id)?,
        };
        let corpus = Corpus::open(&corpus_dir)?;
        check_bm25_corpus(&index, &corpus)?;
        Ok(Bm25Retriever { index, corpus })
    }

    /// The BM25 index.
    pub fn index(&self) -> &Bm25Index {
        &self.index
    }

    /// The corpus.
    pub fn corpus(&self) -> &Corpus {
        &self.corpus
    }

    /// The top-`k` `(row, BM25 score)` of each query, without reading the passages.
    pub fn search_scored(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Scored>>> {
        Ok(self.index.search(queries, k)?)
    }
}

impl Retriever for Bm25Retriever {
    type Error = RetrieveError;

    fn retrieve(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>> {
        self.search_scored(queries, k)?.iter().map(|s| to_hits(&self.corpus, s)).collect()
    }
}
