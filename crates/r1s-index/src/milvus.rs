//! Milvus as an index backend (`--kind milvus`): the vectors live in a collection of a Milvus server
//! or cluster, the index directory holds only `manifest.json`.
//!
//! The collection has two fields: `row` (Int64 primary key, the corpus row) and `embedding`
//! (FloatVector of the embeddings' dimension), searched by inner product (metric `IP`). Passages are
//! not stored in Milvus: a serving node reads them from the corpus docstore, memory-mapped, so only
//! the hits' pages are touched (Milvus 2.3 query nodes hold every loaded scalar field in RAM: the
//! texts of 21M passages would add about 13 GB per replica). The collection's description records
//! where its vectors came from ([`Identity`]: corpus id, embedder, rows, dim, a fingerprint of
//! `embeddings.npy`), so a build into a collection holding other vectors is refused, and a rerun
//! into the same one resumes.
//!
//! Building ([`build`]): create the collection, insert `embeddings.npy` in batches (read with
//! `pread`, not mapped), recording after each batch the rows inserted in `milvus.insert.json`; flush;
//! create the index (HNSW, IVF_FLAT, IVF_SQ8 or FLAT); load the collection; check the row count. An
//! interrupted insert resumes at the recorded row after deleting whatever of the next batch had
//! reached the server, so no row is inserted twice.
//!
//! Searching ([`MilvusIndex`]): one gRPC `Search` per batch of queries (at most [`MAX_NQ`]), with
//! `ef` (HNSW) or `nprobe` (IVF) from the manifest or [`MilvusIndex::set_ef_search`], a deadline per
//! call and retries with back-off on transient failures (connection refused or reset, deadline
//! exceeded, gRPC `UNAVAILABLE`). When the deadline passes, the error is
//! [`IndexError::Unavailable`]: servers answer it with 503 and `Retry-After`.
//!
//! The SDK (milvus-sdk-rust, tonic) is async; [`MilvusIndex`] owns a small tokio runtime and blocks
//! the calling thread on it, so it is a plain synchronous [`VectorIndex`].

use serde::{Deserialize, Serialize};

#[cfg(feature = "milvus")]
mod client;
#[cfg(not(feature = "milvus"))]
#[path = "milvus/disabled.rs"]
mod client;

pub use client::{MilvusIndex, build, drop_collection};

/// The file recording how far an interrupted insert got (removed when the build finishes).
pub const STATE_FILE: &str = "milvus.insert.json";
/// Most queries in one `Search` call (Milvus's `nq` limit is 16384; smaller calls keep messages
/// small and let retries redo less).
pub const MAX_NQ: usize = 1024;
/// Milvus's largest `topk`.
pub const MAX_TOPK: usize = 16384;
/// The primary-key field: the corpus row.
pub const PK_FIELD: &str = "row";
/// The vector field.
pub const VECTOR_FIELD: &str = "embedding";

/// Which Milvus index to build over the collection's vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MilvusIndexType {
    #[serde(rename = "HNSW")]
    Hnsw,
    #[serde(rename = "IVF_FLAT")]
    IvfFlat,
    #[serde(rename = "IVF_SQ8")]
    IvfSq8,
    #[serde(rename = "FLAT")]
    Flat,
}

impl MilvusIndexType {
    const ALL: [MilvusIndexType; 4] =
        [MilvusIndexType::Hnsw, MilvusIndexType::IvfFlat, MilvusIndexType::IvfSq8, MilvusIndexType::Flat];

    /// Milvus's name of the index type.
    pub fn name(self) -> &'static str {
        match self {
            MilvusIndexType::Hnsw => "HNSW",
            MilvusIndexType::IvfFlat => "IVF_FLAT",
            MilvusIndexType::IvfSq8 => "IVF_SQ8",
            MilvusIndexType::Flat => "FLAT",
        }
    }
}

impl std::str::FromStr for MilvusIndexType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        MilvusIndexType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown Milvus index {s:?} (HNSW, IVF_FLAT, IVF_SQ8, FLAT)"))
    }
}

/// Where the collection is and how it is indexed and searched: the manifest's `params` of a
/// `milvus` index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilvusParams {
    /// gRPC endpoint of the Milvus proxy, e.g. `http://127.0.0.1:19530`.
    pub uri: String,
    pub collection: String,
    pub index_type: MilvusIndexType,
    /// HNSW: links per node (`M`).
    pub m: usize,
    /// HNSW: candidates while building (`efConstruction`).
    pub ef_construction: usize,
    /// HNSW: candidates while searching (`ef`; raised to `k` when smaller, as Milvus requires).
    pub ef_search: usize,
    /// IVF: clusters (`nlist`).
    pub nlist: usize,
    /// IVF: clusters probed per query (`nprobe`).
    pub nprobe: usize,
    /// Deadline of one search or insert call, retries included, in milliseconds.
    pub timeout_ms: u64,
    /// Attempts after the first failed one (transient failures only).
    pub retries: u32,
}

impl Default for MilvusParams {
    fn default() -> Self {
        MilvusParams {
            uri: "http://127.0.0.1:19530".into(),
            collection: "r1s".into(),
            index_type: MilvusIndexType::Hnsw,
            m: 32,
            ef_construction: 200,
            ef_search: 64,
            nlist: 1024,
            nprobe: 16,
            timeout_ms: 10_000,
            retries: 3,
        }
    }
}

impl MilvusParams {
    /// Refuses values Milvus would reject only after a build had released the collection and
    /// dropped its index (ranges of Milvus 2.3: HNSW `M` 2..=2048, IVF `nlist` 1..=65536), and
    /// URIs the gRPC client cannot use.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::IndexError::Options(m));
        let host = self.uri.strip_prefix("http://").or_else(|| self.uri.strip_prefix("https://"));
        match host {
            Some(h) if !h.is_empty() && !h.starts_with('/') && !h.trim_end_matches('/').contains('/') => {}
            _ => {
                return bad(format!(
                    "--milvus-uri {:?}: expected http://HOST:PORT (e.g. http://127.0.0.1:19530)",
                    self.uri
                ));
            }
        }
        if self.timeout_ms == 0 {
            return bad("--milvus-timeout-ms must be at least 1".into());
        }
        match self.index_type {
            MilvusIndexType::Hnsw => {
                if !(2..=2048).contains(&self.m) {
                    return bad(format!("--m {}: Milvus's HNSW takes 2..=2048", self.m));
                }
                if self.ef_construction == 0 || self.ef_search == 0 {
                    return bad("--ef-construction and --ef-search must be at least 1".into());
                }
            }
            MilvusIndexType::IvfFlat | MilvusIndexType::IvfSq8 => {
                if !(1..=65536).contains(&self.nlist) {
                    return bad(format!("--nlist {}: Milvus's IVF indexes take 1..=65536", self.nlist));
                }
                if self.nprobe == 0 || self.nprobe > self.nlist {
                    return bad(format!("--nprobe {}: 1..=nlist ({})", self.nprobe, self.nlist));
                }
            }
            MilvusIndexType::Flat => {}
        }
        Ok(())
    }
}

/// Settings of a build that are not recorded in the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilvusBuild {
    pub params: MilvusParams,
    /// Drop a collection of the same name that holds other vectors (else the build is refused).
    pub replace: bool,
    /// Rows per insert call (0: as many as fit in 16 MiB of f32).
    pub batch_rows: usize,
    /// Insert every row again even into a collection of these same vectors (`--no-resume`).
    pub fresh: bool,
}

/// What the collection's vectors were made from (its description, as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub r1s: String,
    pub corpus_id: String,
    pub model_sha256: String,
    pub rows: u64,
    pub dim: usize,
    /// [`crate::sq8::fingerprint`] of `embeddings.npy`, hex.
    pub embeddings: String,
}

impl Identity {
    /// The identity recorded in a `milvus` manifest's `params.identity` (`None` when absent).
    pub fn of_manifest(m: &crate::IndexManifest) -> Option<Identity> {
        serde_json::from_value(m.params.get("identity")?.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_milvus_would_reject_late_are_refused_first() {
        let ok = MilvusParams::default();
        assert!(ok.validate().is_ok());
        let ivf = MilvusParams { index_type: MilvusIndexType::IvfFlat, ..MilvusParams::default() };
        assert!(ivf.validate().is_ok());
        for bad in [
            MilvusParams { nlist: 0, ..ivf.clone() },
            MilvusParams { nlist: 65537, ..ivf.clone() },
            MilvusParams { nprobe: 0, ..ivf.clone() },
            MilvusParams { nprobe: 2000, ..ivf.clone() },
            MilvusParams { m: 0, ..ok.clone() },
            MilvusParams { m: 4096, ..ok.clone() },
            MilvusParams { ef_search: 0, ..ok.clone() },
            MilvusParams { timeout_ms: 0, ..ok.clone() },
            MilvusParams { uri: "127.0.0.1:19530".into(), ..ok.clone() },
            MilvusParams { uri: String::new(), ..ok.clone() },
            MilvusParams { uri: "http://".into(), ..ok.clone() },
            MilvusParams { uri: "http://127.0.0.1:19530/some/path".into(), ..ok.clone() },
        ] {
            assert!(matches!(bad.validate(), Err(crate::IndexError::Options(_))), "{bad:?}");
        }
        // a FLAT index has no parameters to check
        assert!(MilvusParams { index_type: MilvusIndexType::Flat, nlist: 0, m: 0, ..ok }.validate().is_ok());
    }
}
