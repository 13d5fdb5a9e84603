//! [`Live`]: a retriever that can be replaced while it serves (a zero-downtime index swap).
//!
//! Each call runs whole on the retriever that was current when it started: a batch in flight
//! finishes on the old index (whose files stay mapped until its last call returns, even after the
//! directory was swapped and the old files removed), and every call that starts after
//! [`Live::replace`] uses the new one. Answers therefore switch from the old index to the new one at
//! one point, never mixing the two within a batch.
//!
//! [`compatible`] says whether a newly opened retriever may replace the current one: the same
//! corpus (content id), the same family (dense, bm25, hybrid) and, for dense parts, the same query
//! embedder (model sha256, preset) and dimension. Otherwise the hits' rows, ids or scores would
//! change meaning under a running trainer.

use std::sync::{Arc, RwLock};

use r1s_core::{BackendHealth, Hit, Retriever};

use crate::any::AnyRetriever;
use crate::dense::DenseRetriever;

/// A retriever behind a swappable reference; see the module docs.
#[derive(Debug)]
pub struct Live<R> {
    current: RwLock<Arc<R>>,
}

impl<R> Live<R> {
    pub fn new(r: R) -> Live<R> {
        Live { current: RwLock::new(Arc::new(r)) }
    }

    /// The retriever current now (calls keep the one they started with).
    pub fn current(&self) -> Arc<R> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes `r` the current retriever and returns the previous one (dropped, and its files
    /// unmapped, once the calls still running on it return).
    pub fn replace(&self, r: R) -> Arc<R> {
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *cur, Arc::new(r))
    }
}

impl<R: Retriever> Retriever for Live<R> {
    type Error = R::Error;

    fn retrieve(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>, R::Error> {
        self.current().retrieve(queries, k)
    }

    fn is_unavailable(err: &R::Error) -> bool {
        R::is_unavailable(err)
    }

    fn backend(&self, timeout: std::time::Duration) -> Option<BackendHealth> {
        self.current().backend(timeout)
    }
}

/// What a swap compares: `(family, corpus content id, [(model sha256, preset, dim)] of the dense
/// parts)`.
fn identity(r: &AnyRetriever) -> (&'static str, String, Vec<(String, String, usize)>) {
    let dense = |d: &DenseRetriever| {
        let m = &d.index().manifest;
        (m.embedder["model_sha256"].as_str().unwrap_or_default().to_owned(), m.embedder["preset"].to_string(), m.dim)
    };
    let (family, parts) = match r {
        AnyRetriever::Dense(d) => ("dense", vec![dense(d)]),
        AnyRetriever::Bm25(_) => ("bm25", vec![]),
        AnyRetriever::Hybrid(h) => ("hybrid", vec![dense(h.dense())]),
    };
    (family, r.corpus().manifest.content_id(), parts)
}

/// `Ok` when `new` may replace `old` behind a [`Live`] (see the module docs), else why not.
pub fn compatible(old: &AnyRetriever, new: &AnyRetriever) -> Result<(), String> {
    let (a, b) = (identity(old), identity(new));
    let short = |s: &str| s.chars().take(12).collect::<String>();
    if a.0 != b.0 {
        return Err(format!("the new index is a {} index, the one serving a {} index", b.0, a.0));
    }
    if a.1 != b.1 {
        return Err(format!(
            "the new index was built from another corpus (content id {} vs {})",
            short(&b.1),
            short(&a.1)
        ));
    }
    if a.2 != b.2 {
        let show = |p: &[(String, String, usize)]| {
            p.iter().map(|(m, pr, d)| format!("model {} preset {pr} dim {d}", short(m))).collect::<Vec<_>>().join(", ")
        };
        return Err(format!("the new index has another query embedder ({} vs {})", show(&b.2), show(&a.2)));
    }
    Ok(())
}

/// The identity of the index in `dir` that `/health` shows: the first 16 hex digits of a SHA-256
/// over its `manifest.json` (and, for a hybrid, its parts' manifests), and the manifest's
/// modification time (when the build finished), in Unix seconds.
pub fn index_id(dir: &std::path::Path) -> (String, Option<u64>) {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let manifest = dir.join(r1s_index::MANIFEST_FILE);
    h.update(std::fs::read(&manifest).unwrap_or_default());
    if let Ok(m) = crate::hybrid::HybridManifest::read(dir) {
        for part in [&m.dense, &m.bm25] {
            let p = crate::hybrid::HybridManifest::part(dir, part).join(r1s_index::MANIFEST_FILE);
            h.update(std::fs::read(p).unwrap_or_default());
        }
    }
    let id = h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    let built = std::fs::metadata(&manifest)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    (id, built)
}
