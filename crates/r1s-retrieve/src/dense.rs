//! [`DenseRetriever`]: query embedder + vector index + docstore.

use std::path::{Path, PathBuf};

use r1s_core::{Embedder, Hit, Retriever, Scored, Side, VectorIndex};
use r1s_corpus::Corpus;
use r1s_embed::{Device, EmbedderConfig, OnnxEmbedder, Preset};
use r1s_index::{IndexError, IndexManifest, OpenIndex, OpenOptions};

use crate::error::{Result, RetrieveError};

/// How to open a [`DenseRetriever`]; the defaults take everything from the index manifest.
#[derive(Debug, Clone, Default)]
pub struct DenseOptions {
    /// The corpus directory (default: the one recorded in the index manifest).
    pub corpus: Option<PathBuf>,
    /// Another copy of the embedding model (default: the one recorded in the manifest).
    pub model: Option<PathBuf>,
    /// Embedder threads in all (0 = all cores).
    pub threads: usize,
    /// Embedder sessions (0 = auto).
    pub sessions: usize,
    /// Texts per inference batch (default: 4 on CPU, 128 on CUDA).
    pub batch: Option<usize>,
    /// Where the query embedder runs.
    pub device: Option<Device>,
    /// HNSW / FAISS-HNSW `ef_search`, Milvus `ef` or `nprobe` (default: the manifest's).
    pub ef_search: Option<usize>,
    /// Milvus: another endpoint of the cluster than the manifest's URI.
    pub milvus_uri: Option<String>,
    /// Milvus: the deadline of one search in milliseconds, instead of the manifest's.
    pub milvus_timeout_ms: Option<u64>,
}

/// The query-side embedder the index was built with: model, preset and max length from the
/// manifest (the model path may be overridden).
pub fn query_embedder(m: &IndexManifest, o: &DenseOptions) -> Result<OnnxEmbedder> {
    let e = &m.embedder;
    let preset: Preset = serde_json::from_value(e["preset"].clone()).map_err(|err| {
        RetrieveError::Mismatch(format!("the index manifest's embedder preset is not readable: {err}"))
    })?;
    let model = match &o.model {
        Some(p) => p.clone(),
        None => PathBuf::from(e["model"].as_str().unwrap_or("minilm")),
    };
    let device = o.device.unwrap_or(Device::Cpu);
    Ok(OnnxEmbedder::load(&EmbedderConfig {
        model,
        preset: Some(preset),
        max_len: e["max_len"].as_u64().unwrap_or(256) as usize,
        batch: o.batch.unwrap_or(device.default_batch()),
        threads: o.threads,
        sessions: o.sessions,
        device,
    })?)
}

/// Finds the corpus of an index (see [`find_corpus`]).
pub fn resolve_corpus(index_dir: &Path, m: &IndexManifest) -> Result<PathBuf> {
    find_corpus(index_dir, &m.corpus, &m.corpus_id)
}

/// Finds the corpus an index was built from. `recorded` is the corpus path its manifest holds:
/// relative to the index directory (what r1s records), or, from older builds, relative to the
/// directory the build ran in. Tried in order: `recorded` under the index directory, under each of
/// its ancestors, then as given (absolute, or from the working directory). The first of those that
/// is a corpus with content id `corpus_id` wins (any corpus when `corpus_id` is empty), so that a
/// `corpora/x` of the working directory never shadows the one next to the index.
///
/// Errors: [`RetrieveError::CorpusNotFound`] when none is a corpus; [`RetrieveError::Mismatch`] when
/// corpora were found but none has the recorded content id.
pub fn find_corpus(index_dir: &Path, recorded: &str, corpus_id: &str) -> Result<PathBuf> {
    let recorded_str = recorded;
    let recorded = Path::new(recorded_str);
    let mut tried = Vec::new();
    if recorded.is_relative() {
        let abs = std::path::absolute(index_dir).unwrap_or_else(|_| index_dir.to_path_buf());
        tried.extend(abs.ancestors().map(|a| a.join(recorded)));
    }
    tried.push(recorded.to_path_buf());
    let corpora: Vec<&PathBuf> = tried.iter().filter(|p| p.join(r1s_corpus::store::MANIFEST_FILE).is_file()).collect();
    let id_of = |p: &Path| r1s_corpus::Manifest::read(p).map(|m| m.content_id()).ok();
    if let Some(found) = corpora.iter().find(|p| corpus_id.is_empty() || id_of(p).as_deref() == Some(corpus_id)) {
        return Ok((*found).clone());
    }
    if let Some(other) = corpora.first() {
        return Err(RetrieveError::Mismatch(format!(
            "index {} was built from corpus {recorded_str} (corpus id {}); {} is another corpus (corpus id {}): \
             give the right one with --corpus",
            index_dir.display(),
            &corpus_id[..corpus_id.len().min(12)],
            other.display(),
            id_of(other).map_or_else(|| "unreadable".to_owned(), |id| id[..id.len().min(12)].to_owned())
        )));
    }
    Err(RetrieveError::CorpusNotFound {
        index: index_dir.to_path_buf(),
        corpus: recorded_str.to_owned(),
        tried: tried.iter().take(4).map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

/// Dense retrieval over an index directory: embeds queries, searches the index, reads the hits'
/// passages from the memory-mapped docstore.
#[derive(Debug)]
pub struct DenseRetriever {
    embedder: OnnxEmbedder,
    index: OpenIndex,
    corpus: Corpus,
}

impl DenseRetriever {
    /// Opens the index in `index_dir`, its corpus and its query embedder, and checks that they belong
    /// together (corpus content id, rows, dimension).
    pub fn open(index_dir: &Path, o: &DenseOptions) -> Result<DenseRetriever> {
        let mut index = OpenIndex::open_with(
            index_dir,
            &OpenOptions { milvus_uri: o.milvus_uri.clone(), milvus_timeout_ms: o.milvus_timeout_ms },
        )?;
        if let Some(ef) = o.ef_search {
            index.set_ef_search(ef)?;
        }
        let corpus_dir = match &o.corpus {
            Some(c) => c.clone(),
            None => resolve_corpus(index_dir, &index.manifest)?,
        };
        let corpus = Corpus::open(&corpus_dir)?;
        let embedder = query_embedder(&index.manifest, o)?;
        DenseRetriever::from_parts(embedder, index, corpus)
    }

    /// Puts opened parts together, checking that they belong together.
    pub fn from_parts(embedder: OnnxEmbedder, index: OpenIndex, corpus: Corpus) -> Result<DenseRetriever> {
        index.check_corpus(&corpus.manifest.content_id())?;
        if corpus.docstore.len() != index.manifest.rows {
            return Err(RetrieveError::Mismatch(format!(
                "index {} has {} rows, corpus {} has {} passages",
                index.dir.display(),
                index.manifest.rows,
                corpus.dir.display(),
                corpus.docstore.len()
            )));
        }
        if embedder.dim() != index.manifest.dim {
            return Err(RetrieveError::Mismatch(format!(
                "the embedder {} gives {}-dimensional vectors, index {} holds {}",
                embedder.model_path().display(),
                embedder.dim(),
                index.dir.display(),
                index.manifest.dim
            )));
        }
        Ok(DenseRetriever { embedder, index, corpus })
    }

    /// The vector index.
    pub fn index(&self) -> &OpenIndex {
        &self.index
    }

    /// The corpus.
    pub fn corpus(&self) -> &Corpus {
        &self.corpus
    }

    /// The query embedder.
    pub fn embedder(&self) -> &OnnxEmbedder {
        &self.embedder
    }

    /// Embeds `queries` on the query side: `[n, dim]` row-major.
    pub fn embed_queries(&self, queries: &[&str]) -> Result<Vec<f32>> {
        Ok(self.embedder.embed(queries, Side::Query)?)
    }

    /// The top-`k` passages for each row of `vectors` (`[n, dim]` query vectors).
    pub fn search_vectors(&self, vectors: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
        let scored = self.index.search(vectors, k)?;
        scored.iter().map(|hits| to_hits(&self.corpus, hits)).collect()
    }

    /// The top-`k` `(row, inner product)` for each query, without reading the passages.
    pub fn search_scored(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Scored>>> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        if k == 0 {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        Ok(self.index.search(&self.embed_queries(queries)?, k)?)
    }
}

/// The passages of `scored` hits, read from the corpus docstore.
pub fn to_hits(corpus: &Corpus, scored: &[Scored]) -> Result<Vec<Hit>> {
    scored
        .iter()
        .map(|&(row, score)| {
            let p = corpus.docstore.get(row)?;
            Ok(Hit { row, id: p.id.to_owned(), score, title: p.title.to_owned(), contents: p.contents() })
        })
        .collect()
}

impl Retriever for DenseRetriever {
    type Error = RetrieveError;

    fn is_unavailable(err: &RetrieveError) -> bool {
        matches!(err, RetrieveError::Index(IndexError::Unavailable(_)))
    }

    fn backend(&self, timeout: std::time::Duration) -> Option<r1s_core::BackendHealth> {
        let checked = self.index.backend_health(timeout)?;
        let p = &self.index.manifest.params;
        Some(r1s_core::BackendHealth {
            kind: self.index.manifest.kind.name().into(),
            target: format!(
                "{} collection {}",
                self.index.milvus_uri().unwrap_or_default(),
                p["collection"].as_str().unwrap_or_default()
            ),
            up: checked.is_ok(),
            error: checked.err().map(|e| e.to_string()),
        })
    }

    fn retrieve(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        if k == 0 {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        let vectors = self.embed_queries(queries)?;
        self.search_vectors(&vectors, k)
    }
}
