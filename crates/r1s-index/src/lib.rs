//! Vector indexes for r1s, behind [`r1s_core::VectorIndex`]:
//! - [`FlatIndex`]: exact inner product over the memory-mapped `embeddings.npy` (f32 or f16);
//! - [`HnswIndex`] (`hnsw`): r1s's own HNSW graph, links only, memory-mapped; the vectors are read
//!   from the same mapped `embeddings.npy` as the flat index (parallel build, `ef_search` per query);
//! - [`HnswRsIndex`] (`hnsw-rs`): the hnsw_rs crate's graph, for comparison;
//! - [`FaissIndex`] (`faiss`, cargo feature): any FAISS `index_factory` string;
//! - [`MilvusIndex`] (`milvus`, cargo feature): a collection in a Milvus server or cluster; the
//!   directory holds only the manifest ([`milvus`]).
//!
//! `flat` and `hnsw` also come quantized (`--quantize sq8`, [`sq8`]): 8-bit codes per dimension in
//! `codes.sq8`, scanned or walked instead of the vectors, the final candidates re-ranked exactly from
//! the mapped `embeddings.npy`. An `hnsw` build checkpoints to `hnsw.r1s.ckpt` and resumes from it.
//!
//! An index directory holds `embeddings.npy` + `embeddings.json` (from `r1s embed`), the index files
//! and `manifest.json`, written last and atomically: a directory without it is not an index.
//! [`Index::open`] checks the manifest against the files (dims, rows, sizes) before mapping anything.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod distance;
pub mod error;
#[cfg(feature = "faiss")]
pub mod faiss_index;
#[cfg(not(feature = "faiss"))]
#[path = "faiss_disabled.rs"]
pub mod faiss_index;
pub mod flat;
pub mod hnsw;
pub mod hnsw_rs_index;
pub mod milvus;
pub mod plan;
pub mod sq8;

use std::path::{Path, PathBuf};
use std::time::Instant;

use r1s_core::{Cancel, Progress, Scored, VectorIndex};
use serde::{Deserialize, Serialize};

pub use error::{IndexError, Result};
pub use faiss_index::FaissIndex;
pub use flat::{FlatIndex, Matrix, TopK, naive_search};
pub use hnsw::{CHECKPOINT_FILE, Checkpoints, HnswIndex, HnswParams};
pub use hnsw_rs_index::HnswRsIndex;
pub use milvus::{MilvusBuild, MilvusIndex, MilvusIndexType, MilvusParams};
pub use sq8::{CODES_FILE, QuantParams, Quantize, Sq8, Sq8FlatIndex};

/// File names in an index directory.
pub const MANIFEST_FILE: &str = "manifest.json";
pub const EMBEDDINGS_FILE: &str = "embeddings.npy";
pub const EMBEDDINGS_META: &str = "embeddings.json";
pub const FORMAT_VERSION: u32 = 1;

/// Which index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Flat,
    Hnsw,
    #[serde(rename = "hnsw-rs")]
    HnswRs,
    Faiss,
    Milvus,
}

impl Kind {
    const ALL: [Kind; 5] = [Kind::Flat, Kind::Hnsw, Kind::HnswRs, Kind::Faiss, Kind::Milvus];

    /// The name on the command line and in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Flat => "flat",
            Kind::Hnsw => "hnsw",
            Kind::HnswRs => "hnsw-rs",
            Kind::Faiss => "faiss",
            Kind::Milvus => "milvus",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown index kind {s:?} (flat, hnsw, hnsw-rs, faiss, milvus)"))
    }
}

/// `manifest.json` of an index directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexManifest {
    pub format: String,
    pub format_version: u32,
    pub r1s_version: String,
    pub kind: Kind,
    /// Kind-specific parameters (HNSW: m, ef_construction, ef_search).
    pub params: serde_json::Value,
    pub dim: usize,
    pub metric: String,
    pub rows: u64,
    pub dtype: r1s_core::npy::Dtype,
    /// Embedder model path, its sha256 and preset, as recorded by `r1s embed`.
    pub embedder: serde_json::Value,
    /// The corpus directory and its content id (`r1s_corpus::Manifest::content_id`: the sha256 of
    /// its manifest without the creation time).
    pub corpus: String,
    pub corpus_id: String,
    pub build_seconds: f64,
    /// [`sq8::fingerprint`] of the `embeddings.npy` indexed, hex (absent in indexes built before
    /// r1s recorded it: such an index is never taken as up to date by [`up_to_date`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings_fingerprint: Option<String>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| IndexError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| IndexError::bad(path, format!("invalid: {e}")))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    r1s_core::fsutil::write_atomic(path, bytes).map_err(|e| IndexError::io(path, e))
}

/// An opened index of any kind.
#[derive(Debug)]
pub enum Index {
    Flat(FlatIndex),
    /// Flat over SQ8 codes, re-ranked from `flat`'s vectors.
    FlatSq8 {
        index: Sq8FlatIndex,
        flat: FlatIndex,
    },
    Hnsw {
        graph: HnswIndex,
        flat: FlatIndex,
    },
    HnswRs {
        graph: HnswRsIndex,
        flat: FlatIndex,
    },
    Faiss {
        index: FaissIndex,
        flat: FlatIndex,
    },
    /// A Milvus collection (no local vectors).
    Milvus(Box<MilvusIndex>),
}

/// Parameters of `build`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildParams {
    pub hnsw: HnswParams,
    /// FAISS `index_factory` string.
    pub faiss_factory: String,
    /// FAISS HNSW `efSearch` (set when the factory has HNSW).
    pub faiss_ef_search: usize,
    /// Quantization of `flat` and `hnsw` (others: none only).
    pub quant: QuantParams,
    /// `hnsw`: inserts between two durable checkpoints of the graph build.
    pub checkpoint_every: u64,
    /// `hnsw`: also checkpoint once this much build time has passed since the last checkpoint.
    /// Each checkpoint writes the whole graph (at 21M rows and M 32, 5.3 GiB), so a fixed count of
    /// inserts costs ever more as the rows grow; a time bounds both the work a crash loses and the
    /// share of the build spent writing.
    pub checkpoint_interval: Option<std::time::Duration>,
    /// `hnsw`: continue from a checkpoint of an interrupted build with the same settings (else
    /// start over).
    pub resume: bool,
    /// `milvus`: the server, collection and index.
    pub milvus: MilvusBuild,
}

/// The default time between two checkpoints of an hnsw build: at most this much work is lost.
pub const DEFAULT_CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

impl Default for BuildParams {
    fn default() -> Self {
        BuildParams {
            hnsw: HnswParams::default(),
            faiss_factory: "HNSW32".into(),
            faiss_ef_search: 64,
            quant: QuantParams::default(),
            checkpoint_every: u64::MAX,
            checkpoint_interval: Some(DEFAULT_CHECKPOINT_INTERVAL),
            resume: true,
            milvus: MilvusBuild::default(),
        }
    }
}

/// The manifest `params` of a kind that takes quantization: its own fields and the [`QuantParams`]
/// side by side (`{}` plus nothing for an unquantized flat index, as before SQ8).
fn with_quant(own: serde_json::Value, q: &QuantParams) -> serde_json::Value {
    let mut v = match own {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    if q.quantize != Quantize::None
        && let Ok(serde_json::Value::Object(qm)) = serde_json::to_value(q)
    {
        v.extend(qm);
    }
    serde_json::Value::Object(v)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FaissParams {
    factory: String,
    ef_search: usize,
}

/// An index directory opened with its manifest.
#[derive(Debug)]
pub struct OpenIndex {
    pub dir: PathBuf,
    pub manifest: IndexManifest,
    pub index: Index,
}

/// How to open an index directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// `milvus`: another endpoint of the same cluster than the manifest's `uri` (e.g. a load
    /// balancer in front of several proxies).
    pub milvus_uri: Option<String>,
    /// `milvus`: the deadline of one call in milliseconds, instead of the manifest's.
    pub milvus_timeout_ms: Option<u64>,
}

impl OpenIndex {
    /// Opens index directory `dir`, checking files against the manifest.
    pub fn open(dir: &Path) -> Result<OpenIndex> {
        OpenIndex::open_with(dir, &OpenOptions::default())
    }

    /// [`OpenIndex::open`] with options. A `milvus` index connects to its server here and checks
    /// the collection: [`IndexError::Unavailable`] when it does not answer.
    pub fn open_with(dir: &Path, o: &OpenOptions) -> Result<OpenIndex> {
        let mpath = dir.join(MANIFEST_FILE);
        if !mpath.exists() {
            return Err(IndexError::bad(dir, "no manifest.json: not a finished index (run `r1s index build`)"));
        }
        let manifest: IndexManifest = read_json(&mpath)?;
        if manifest.format != "r1s-index" || manifest.format_version != FORMAT_VERSION {
            return Err(IndexError::bad(
                &mpath,
                format!(
                    "format {} v{}, expected r1s-index v{FORMAT_VERSION}",
                    manifest.format, manifest.format_version
                ),
            ));
        }
        if manifest.kind == Kind::Milvus {
            let mut params: MilvusParams = serde_json::from_value(manifest.params.clone())
                .map_err(|e| IndexError::bad(&mpath, format!("bad milvus params: {e}")))?;
            if let Some(uri) = &o.milvus_uri {
                params.uri = uri.clone();
            }
            if let Some(t) = o.milvus_timeout_ms {
                params.timeout_ms = t;
            }
            params.validate()?;
            let identity = milvus::Identity::of_manifest(&manifest);
            let index = MilvusIndex::open(params, manifest.dim, manifest.rows, identity.as_ref())?;
            return Ok(OpenIndex { dir: dir.to_path_buf(), manifest, index: Index::Milvus(Box::new(index)) });
        }
        let flat = FlatIndex::open(&dir.join(EMBEDDINGS_FILE))?;
        if flat.dim() != manifest.dim || flat.len() != manifest.rows {
            return Err(IndexError::Mismatch(format!(
                "{}: embeddings are [{}, {}], the manifest says [{}, {}]",
                dir.display(),
                flat.len(),
                flat.dim(),
                manifest.rows,
                manifest.dim
            )));
        }
        let quant: QuantParams = serde_json::from_value(manifest.params.clone())
            .map_err(|e| IndexError::bad(&mpath, format!("bad quantization params: {e}")))?;
        let codes = match quant.quantize {
            Quantize::Sq8 => Some(Sq8::open(&dir.join(CODES_FILE), manifest.rows, manifest.dim)?),
            Quantize::None => None,
        };
        let index = match manifest.kind {
            Kind::Flat => match codes {
                Some(codes) => {
                    let index = Sq8FlatIndex::new(codes, flat.matrix().clone(), quant)?;
                    Index::FlatSq8 { index, flat }
                }
                None => Index::Flat(flat),
            },
            Kind::Hnsw | Kind::HnswRs => {
                let params: HnswParams = serde_json::from_value(manifest.params.clone())
                    .map_err(|e| IndexError::bad(&mpath, format!("bad hnsw params: {e}")))?;
                // an `hnsw` directory from before r1s had its own graph holds hnsw_rs files
                let legacy = !dir.join(hnsw::GRAPH_FILE).exists() && dir.join(hnsw_rs_index::FILES[0]).exists();
                if manifest.kind == Kind::HnswRs || legacy {
                    Index::HnswRs { graph: HnswRsIndex::load(dir, manifest.dim, manifest.rows, params)?, flat }
                } else {
                    // the graph's vectors and the exact twin: one mapping of embeddings.npy
                    let graph = HnswIndex::load_over(dir, flat.matrix().clone(), manifest.rows, params, codes, quant)?;
                    Index::Hnsw { graph, flat }
                }
            }
            Kind::Faiss => {
                let params: FaissParams = serde_json::from_value(manifest.params.clone())
                    .map_err(|e| IndexError::bad(&mpath, format!("bad faiss params: {e}")))?;
                let index = FaissIndex::load(dir, manifest.dim, manifest.rows)?;
                if params.factory.contains("HNSW") {
                    index.set_parameter("efSearch", params.ef_search as f64)?;
                }
                Index::Faiss { index, flat }
            }
            Kind::Milvus => unreachable!("opened above"),
        };
        Ok(OpenIndex { dir: dir.to_path_buf(), manifest, index })
    }

    /// Fails unless the index was built from the corpus with content id `corpus_id`
    /// (`r1s_corpus::Manifest::content_id`; this crate does not read corpora itself).
    pub fn check_corpus(&self, corpus_id: &str) -> Result<()> {
        if corpus_id != self.manifest.corpus_id {
            return Err(IndexError::Mismatch(format!(
                "index {} was built from another corpus than the one given (corpus id {} vs {})",
                self.dir.display(),
                &corpus_id[..corpus_id.len().min(12)],
                &self.manifest.corpus_id[..self.manifest.corpus_id.len().min(12)]
            )));
        }
        Ok(())
    }

    /// Sets how many of an HNSW SQ8 search's `ef` candidates are re-ranked exactly (see
    /// [`QuantParams::rerank_top`]; `None`: all); other kinds ignore it.
    pub fn set_rerank_top(&mut self, n: Option<usize>) {
        if let Index::Hnsw { graph, .. } = &mut self.index {
            graph.quant.rerank_top = n;
        }
    }

    /// Sets the search-time `ef` of an HNSW or FAISS HNSW index, `ef` or `nprobe` of a Milvus one
    /// (other kinds ignore it).
    pub fn set_ef_search(&mut self, ef: usize) -> Result<()> {
        if ef == 0 {
            return Err(IndexError::Options("ef_search must be at least 1".into()));
        }
        match &mut self.index {
            Index::Hnsw { graph, .. } => graph.params.ef_search = ef,
            Index::HnswRs { graph, .. } => graph.params.ef_search = ef,
            Index::Faiss { index, .. } => {
                if self.manifest.params["factory"].as_str().is_some_and(|f| f.contains("HNSW")) {
                    index.set_parameter("efSearch", ef as f64)?;
                }
            }
            Index::Milvus(index) => index.set_ef_search(ef),
            Index::Flat(_) | Index::FlatSq8 { .. } => {}
        }
        Ok(())
    }

    /// Turns exact re-ranking of an SQ8 index on or off (other kinds ignore it).
    pub fn set_rerank(&mut self, on: bool) {
        match &mut self.index {
            Index::Hnsw { graph, .. } => graph.quant.rerank = on,
            Index::FlatSq8 { index, .. } => index.quant.rerank = on,
            _ => {}
        }
    }

    /// The files of this index mapped into the process, with their mapped and resident bytes
    /// (Linux; `None` elsewhere).
    pub fn memory(&self) -> Option<Vec<r1s_core::mem::MappedFile>> {
        r1s_core::mem::mapped_under(&self.dir)
    }

    /// The exact index over the same vectors (for recall measurements); `None` for a Milvus
    /// index, whose vectors are not here.
    pub fn flat(&self) -> Option<&FlatIndex> {
        match &self.index {
            Index::Flat(f) => Some(f),
            Index::Hnsw { flat, .. }
            | Index::HnswRs { flat, .. }
            | Index::Faiss { flat, .. }
            | Index::FlatSq8 { flat, .. } => Some(flat),
            Index::Milvus(_) => None,
        }
    }

    /// The Milvus endpoint in use (the manifest's or the one given at open), for a Milvus index.
    pub fn milvus_uri(&self) -> Option<&str> {
        match &self.index {
            Index::Milvus(m) => Some(&m.params.uri),
            _ => None,
        }
    }

    /// Whether the remote part of the index (Milvus) answers within `timeout`: `None` for a local
    /// index, else `Ok` or why not.
    pub fn backend_health(&self, timeout: std::time::Duration) -> Option<Result<()>> {
        match &self.index {
            Index::Milvus(m) => Some(m.health(timeout).map(|_| ())),
            _ => None,
        }
    }
}

impl VectorIndex for OpenIndex {
    type Error = IndexError;
    fn dim(&self) -> usize {
        self.manifest.dim
    }
    fn len(&self) -> u64 {
        self.manifest.rows
    }
    fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Scored>>> {
        match &self.index {
            Index::Flat(f) => f.search(queries, k),
            Index::FlatSq8 { index, .. } => index.search(queries, k),
            Index::Hnsw { graph, .. } => graph.search(queries, k),
            Index::HnswRs { graph, .. } => graph.search(queries, k),
            Index::Faiss { index, .. } => index.search(queries, k),
            Index::Milvus(index) => index.search(queries, k),
        }
    }
}

/// The manifest `params` that [`build`] records for `kind` built with `p` (`None` for Milvus, whose
/// parameters come back from the server).
fn planned_params(kind: Kind, p: &BuildParams) -> Option<serde_json::Value> {
    Some(match kind {
        Kind::Flat => with_quant(serde_json::json!({}), &p.quant),
        Kind::Hnsw => with_quant(serde_json::to_value(p.hnsw).unwrap_or_default(), &p.quant),
        Kind::HnswRs => serde_json::to_value(p.hnsw).unwrap_or_default(),
        Kind::Faiss => {
            serde_json::to_value(FaissParams { factory: p.faiss_factory.clone(), ef_search: p.faiss_ef_search })
                .unwrap_or_default()
        }
        Kind::Milvus => return None,
    })
}

/// Parameters of the manifest that steer only searching (HNSW and FAISS `ef_search`, SQ8
/// re-ranking): a finished index takes new values without a rebuild ([`Current::Retuned`]).
pub const SEARCH_TIME_PARAMS: &[&str] = &["ef_search", "rerank", "rerank_factor", "rerank_top"];

/// What [`up_to_date`] found in a finished index.
#[derive(Debug, Clone)]
pub enum Current {
    /// The index is what the build would make: nothing to do.
    Same(IndexManifest),
    /// The index is what the build would make but for [`SEARCH_TIME_PARAMS`]: `to` is the index's
    /// manifest `from` with the build's values, for [`write_manifest`] (no file but the manifest
    /// changes).
    Retuned { from: Box<IndexManifest>, to: IndexManifest },
}

impl Current {
    /// The manifest the index has once this is applied.
    pub fn manifest(&self) -> &IndexManifest {
        match self {
            Current::Same(m) | Current::Retuned { to: m, .. } => m,
        }
    }

    /// The search-time settings that change, as `(name, from, to)`.
    pub fn changes(&self) -> Vec<(&'static str, serde_json::Value, serde_json::Value)> {
        let Current::Retuned { from, to } = self else { return Vec::new() };
        SEARCH_TIME_PARAMS
            .iter()
            .filter_map(|k| {
                let (a, b) = (from.params.get(*k).cloned(), to.params.get(*k).cloned());
                (a != b).then(|| (*k, a.unwrap_or(serde_json::Value::Null), b.unwrap_or(serde_json::Value::Null)))
            })
            .collect()
    }
}

/// `params` without its [`SEARCH_TIME_PARAMS`].
fn built_part(params: &serde_json::Value) -> serde_json::Value {
    let mut p = params.clone();
    if let Some(m) = p.as_object_mut() {
        m.retain(|k, _| !SEARCH_TIME_PARAMS.contains(&k.as_str()));
    }
    p
}

/// Replaces the manifest of the finished index in `dir` atomically (a reader sees the old one or
/// the new one), e.g. with [`Current::Retuned`]'s.
///
/// Errors: I/O on `dir`.
pub fn write_manifest(dir: &Path, m: &IndexManifest) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let json = serde_json::to_vec_pretty(m).map_err(|e| IndexError::io(&path, e.into()))?;
    write_atomic(&path, &json)
}

/// What the finished index in `dir` is to a build of `kind` with `p` over the
/// matrix `embeddings` (with its `embeddings.json` beside it): [`Current::Same`] when the build would
/// make it again — same kind and parameters, the same embedder and corpus, embeddings of the same
/// shape, dtype and [`sq8::fingerprint`], and an index that opens — and [`Current::Retuned`] when
/// only [`SEARCH_TIME_PARAMS`] differ. `None` otherwise — always for Milvus (its state is the
/// server's) and for indexes built before manifests recorded the fingerprint. Reads the whole
/// `embeddings.npy` once (the fingerprint) when everything else matches.
///
/// Errors: only when `embeddings` cannot be read.
pub fn up_to_date(dir: &Path, embeddings: &Path, kind: Kind, p: &BuildParams) -> Result<Option<Current>> {
    let Ok(old) = read_json::<IndexManifest>(&dir.join(MANIFEST_FILE)) else {
        return Ok(None);
    };
    let Some(params) = planned_params(kind, p) else {
        return Ok(None);
    };
    let meta: serde_json::Value = match embeddings.parent() {
        Some(d) => read_json(&d.join(EMBEDDINGS_META)).unwrap_or_default(),
        None => serde_json::Value::Null,
    };
    let same_source = old.embedder["model_sha256"] == meta["model_sha256"]
        && old.embedder["preset"] == meta["preset"]
        // embeddings written by another tool may not name a corpus: build records ""
        && meta["corpus_id"].as_str().unwrap_or_default() == old.corpus_id;
    if old.kind != kind
        || built_part(&old.params) != built_part(&params)
        || !same_source
        || old.embeddings_fingerprint.is_none()
    {
        return Ok(None);
    }
    let matrix = Matrix::open(embeddings)?;
    if (matrix.rows(), matrix.dim(), matrix.dtype()) != (old.rows, old.dim, old.dtype)
        || old.embeddings_fingerprint != Some(format!("{:016x}", sq8::fingerprint(&matrix)?))
    {
        return Ok(None);
    }
    if OpenIndex::open(dir).is_err() {
        return Ok(None);
    }
    Ok(Some(if old.params == params {
        Current::Same(old)
    } else {
        Current::Retuned { to: IndexManifest { params, ..old.clone() }, from: Box::new(old) }
    }))
}

/// Bytes of the files a build of `kind` over `matrix` still writes into `dir` at its peak, from the
/// file layouts of [`plan::plan`]: the SQ8 codes (none when a file of their size is there to be kept
/// by a resumed build), and for hnsw the graph twice when the build may checkpoint (more than
/// `checkpoint_every` rows, or any `checkpoint_interval`: the last checkpoint stays until the next
/// one, or the graph itself, is complete) less a checkpoint already there. Other kinds: 0 (not
/// estimated).
pub fn disk_needed(dir: &Path, kind: Kind, matrix: &Matrix, p: &BuildParams) -> u64 {
    let sq8 = p.quant.quantize == Quantize::Sq8;
    if !(kind == Kind::Hnsw || kind == Kind::Flat && sq8) {
        return 0;
    }
    let sized = plan::plan(&plan::PlanInput {
        rows: matrix.rows(),
        dim: matrix.dim(),
        dtype: matrix.dtype(),
        kind,
        quantize: p.quant.quantize,
        m: p.hnsw.m,
        ef_construction: p.hnsw.ef_construction,
        passage_bytes: 0,
        threads: 1,
    });
    let len = |name: &str| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
    let codes = if sq8 && !(p.resume && len(CODES_FILE) == sized.codes_bytes) { sized.codes_bytes } else { 0 };
    let copies = if matrix.rows() > p.checkpoint_every.max(1) || p.checkpoint_interval.is_some() { 2 } else { 1 };
    let ckpt = if p.resume { len(CHECKPOINT_FILE) } else { 0 };
    codes + (sized.graph_bytes.saturating_mul(copies)).saturating_sub(ckpt)
}

/// An error (I/O, `StorageFull`, naming `dir`) when the file system of `dir` has fewer than `need`
/// bytes available: a build refuses at its start what it would otherwise fail at after hours.
fn check_disk(dir: &Path, need: u64, what: &str) -> Result<()> {
    let free = match fs4::available_space(dir) {
        Ok(free) => free,
        Err(_) => return Ok(()), // not knowable here: the writes report it
    };
    if need <= free {
        return Ok(());
    }
    let size = r1s_core::mem::binary_size;
    Err(IndexError::io(
        dir,
        std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!(
                "the build writes about {} more here at its peak ({what}) and {} are available: free disk space or build elsewhere (--out)",
                size(need),
                size(free)
            ),
        ),
    ))
}

/// Builds an index of `kind` in `dir`, over the `embeddings.npy` already there (from `r1s embed`).
pub fn build(
    dir: &Path,
    kind: Kind,
    p: &BuildParams,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<IndexManifest> {
    let started = Instant::now();
    let meta: serde_json::Value = read_json(&dir.join(EMBEDDINGS_META))?;
    let matrix = Matrix::open(&dir.join(EMBEDDINGS_FILE))?;
    if meta["rows"].as_u64() != Some(matrix.rows()) || meta["dim"].as_u64() != Some(matrix.dim() as u64) {
        return Err(IndexError::Mismatch(format!(
            "{}: embeddings.json does not describe embeddings.npy",
            dir.display()
        )));
    }
    // the old manifest goes first: a half-rebuilt directory must not look finished
    let mpath = dir.join(MANIFEST_FILE);
    if mpath.exists() {
        std::fs::remove_file(&mpath).map_err(|e| IndexError::io(&mpath, e))?;
    }
    let sq8 = p.quant.quantize == Quantize::Sq8;
    if sq8 && !matches!(kind, Kind::Flat | Kind::Hnsw) {
        return Err(IndexError::Options(format!("--quantize sq8 is for the flat and hnsw kinds, not {}", kind.name())));
    }
    // index files of the other kinds would be stale: they go too
    let mut own: Vec<&str> = match kind {
        Kind::Flat => vec![],
        Kind::Hnsw => vec![hnsw::GRAPH_FILE, CHECKPOINT_FILE],
        Kind::HnswRs => hnsw_rs_index::FILES.to_vec(),
        Kind::Faiss => vec![faiss_index::FILE],
        Kind::Milvus => vec![milvus::STATE_FILE],
    };
    if sq8 {
        own.push(CODES_FILE);
    }
    if !p.resume {
        own.retain(|f| *f != CHECKPOINT_FILE && *f != milvus::STATE_FILE);
    }
    let files = [hnsw::GRAPH_FILE, faiss_index::FILE, CODES_FILE, CHECKPOINT_FILE, milvus::STATE_FILE];
    for name in files.iter().chain(&hnsw_rs_index::FILES) {
        let path = dir.join(name);
        if !own.contains(name) && path.exists() {
            std::fs::remove_file(&path).map_err(|e| IndexError::io(&path, e))?;
        }
    }
    let what = if kind == Kind::Hnsw {
        "the SQ8 codes and the graph, twice while it is checkpointed"
    } else {
        "the SQ8 codes"
    };
    check_disk(dir, disk_needed(dir, kind, &matrix, p), what)?;
    // SQ8 codes: kept from an interrupted build when they were made from these embeddings
    let codes = if sq8 {
        let path = dir.join(CODES_FILE);
        // (kept only when resuming: `--no-resume` re-encodes, which also repairs a damaged file)
        let kept = match Sq8::open(&path, matrix.rows(), matrix.dim()) {
            Ok(c) if p.resume && c.made_from(&matrix)? => Some(c),
            _ => None,
        };
        match kept {
            Some(c) => {
                log::info!("{}: made from these embeddings, kept", path.display());
                Some(c)
            }
            None => {
                sq8::encode_file(&matrix, &path, progress, cancel)?;
                Some(Sq8::open(&path, matrix.rows(), matrix.dim())?)
            }
        }
    } else {
        None
    };
    let params = match kind {
        Kind::Flat => planned_params(kind, p).unwrap_or_default(),
        Kind::Hnsw => {
            let ckpt = Checkpoints {
                path: Some(dir.join(CHECKPOINT_FILE)),
                every: p.checkpoint_every,
                interval: p.checkpoint_interval,
            };
            let graph = HnswIndex::build_with(&matrix, p.hnsw, codes, p.quant, &ckpt, progress, cancel)?;
            graph.dump(dir)?;
            let path = dir.join(CHECKPOINT_FILE);
            if path.exists() {
                std::fs::remove_file(&path).map_err(|e| IndexError::io(&path, e))?;
            }
            planned_params(kind, p).unwrap_or_default()
        }
        Kind::HnswRs => {
            let graph = HnswRsIndex::build(&matrix, p.hnsw, progress, cancel)?;
            graph.dump(dir)?;
            planned_params(kind, p).unwrap_or_default()
        }
        Kind::Faiss => {
            let index = FaissIndex::build(&matrix, &p.faiss_factory, progress, cancel)?;
            index.write(dir)?;
            planned_params(kind, p).unwrap_or_default()
        }
        Kind::Milvus => {
            let identity = milvus::Identity {
                r1s: "r1s-index".into(),
                corpus_id: meta["corpus_id"].as_str().unwrap_or_default().to_owned(),
                model_sha256: meta["model_sha256"].as_str().unwrap_or_default().to_owned(),
                rows: matrix.rows(),
                dim: matrix.dim(),
                embeddings: format!("{:016x}", sq8::fingerprint(&matrix)?),
            };
            let b = MilvusBuild { fresh: p.milvus.fresh || !p.resume, ..p.milvus.clone() };
            milvus::build(dir, &matrix, identity, &b, progress, cancel)?
        }
    };
    let manifest = IndexManifest {
        format: "r1s-index".into(),
        format_version: FORMAT_VERSION,
        r1s_version: r1s_core::VERSION.into(),
        kind,
        params,
        dim: matrix.dim(),
        metric: "inner_product".into(),
        rows: matrix.rows(),
        dtype: matrix.dtype(),
        embedder: serde_json::json!({
            "model": meta["model"], "model_sha256": meta["model_sha256"], "preset": meta["preset"], "max_len": meta["max_len"],
        }),
        corpus: meta["corpus"].as_str().unwrap_or_default().to_owned(),
        corpus_id: meta["corpus_id"].as_str().unwrap_or_default().to_owned(),
        build_seconds: started.elapsed().as_secs_f64(),
        embeddings_fingerprint: Some(format!("{:016x}", sq8::fingerprint(&matrix)?)),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| IndexError::io(&mpath, e.into()))?;
    write_atomic(&mpath, &json)?;
    Ok(manifest)
}

/// Recall@k of `approx` against `exact` (fraction of the exact top-k found), averaged over queries.
pub fn recall_at_k(exact: &[Vec<Scored>], approx: &[Vec<Scored>], k: usize) -> f64 {
    let mut total = 0.0;
    for (e, a) in exact.iter().zip(approx) {
        let truth: std::collections::HashSet<u64> = e.iter().take(k).map(|h| h.0).collect();
        if truth.is_empty() {
            total += 1.0;
            continue;
        }
        let found = a.iter().take(k).filter(|h| truth.contains(&h.0)).count();
        total += found as f64 / truth.len() as f64;
    }
    total / exact.len().max(1) as f64
}
