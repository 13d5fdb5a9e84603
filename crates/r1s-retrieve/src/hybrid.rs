//! Hybrid retrieval: a dense and a BM25 index of the same corpus, fused per query.
//!
//! A hybrid index directory holds only `manifest.json` ([`HybridManifest`]) naming its two parts,
//! by default the subdirectories `dense/` and `bm25/` that `r1s index build --kind hybrid` builds
//! (or any existing pair, `--dense DIR --bm25 DIR`). Each side fetches `depth × k` candidates, then
//! [`fuse`] ranks their union.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use r1s_bm25::{Bm25Index, Bm25Params};
use r1s_core::{Hit, Retriever, Scored};
use r1s_corpus::Corpus;

use crate::dense::{DenseOptions, DenseRetriever, to_hits};
use crate::error::{Result, RetrieveError};
use crate::lexical::{check_bm25_corpus, short};

/// `format` of a hybrid manifest.
pub const FORMAT: &str = "r1s-hybrid";
/// Version of the hybrid manifest.
pub const FORMAT_VERSION: u32 = 1;
/// `kind` of a hybrid manifest.
pub const KIND: &str = "hybrid";
/// Candidates each side fetches, as a multiple of k, unless told otherwise.
pub const DEFAULT_DEPTH: usize = 4;

/// How two ranked lists become one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Fusion {
    /// Reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009):
    /// `score(d) = Σ_lists 1 / (k + rank(d))`, ranks from 1, nothing for a list that misses `d`.
    /// `k = 60` in the paper.
    Rrf {
        #[serde(serialize_with = "r1s_bm25::score::short_f32")]
        k: f32,
    },
    /// A weighted sum of per-query min-max normalised scores:
    /// `score(d) = weight · norm_dense(d) + (1 − weight) · norm_bm25(d)`, where
    /// `norm(s) = (s − min) / (max − min)` over that list's candidates (1 when they all tie) and 0
    /// for a list that misses `d`.
    Linear {
        #[serde(serialize_with = "r1s_bm25::score::short_f32")]
        weight: f32,
    },
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::Rrf { k: 60.0 }
    }
}

impl Fusion {
    /// Checks the parameter: RRF k finite and ≥ 0, linear weight in [0, 1].
    pub fn validate(&self) -> Result<()> {
        match *self {
            Fusion::Rrf { k } if !(k.is_finite() && k >= 0.0) => {
                Err(RetrieveError::Options(format!("the RRF k must be a finite number >= 0 (got {k})")))
            }
            Fusion::Linear { weight } if !(0.0..=1.0).contains(&weight) => Err(RetrieveError::Options(format!(
                "the dense weight of linear fusion must be in [0, 1] (got {weight})"
            ))),
            _ => Ok(()),
        }
    }

    /// `rrf` or `linear`.
    pub fn name(&self) -> &'static str {
        match self {
            Fusion::Rrf { .. } => "rrf",
            Fusion::Linear { .. } => "linear",
        }
    }
}

/// Fuses one query's dense and BM25 candidates (each best first) into the top `k`, best first;
/// ties go to the lower row. Hit scores are the fused scores.
pub fn fuse(f: Fusion, dense: &[Scored], bm25: &[Scored], k: usize) -> Vec<Scored> {
    let mut sums: std::collections::HashMap<u64, f32> =
        std::collections::HashMap::with_capacity(dense.len() + bm25.len());
    let mut add = |row: u64, s: f32| *sums.entry(row).or_default() += s;
    match f {
        Fusion::Rrf { k: rk } => {
            for list in [dense, bm25] {
                for (rank, &(row, _)) in list.iter().enumerate() {
                    add(row, 1.0 / (rk + (rank + 1) as f32));
                }
            }
        }
        Fusion::Linear { weight } => {
            for (list, w) in [(dense, weight), (bm25, 1.0 - weight)] {
                let (lo, hi) =
                    list.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &(_, s)| (lo.min(s), hi.max(s)));
                for &(row, s) in list {
                    let norm = if hi > lo { (s - lo) / (hi - lo) } else { 1.0 };
                    add(row, w * norm);
                }
            }
        }
    }
    let mut fused: Vec<Scored> = sums.into_iter().collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    fused.truncate(k);
    fused
}

/// `manifest.json` of a hybrid index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HybridManifest {
    pub format: String,
    pub format_version: u32,
    pub r1s_version: String,
    /// Always [`KIND`].
    pub kind: String,
    /// The dense index directory: relative to the hybrid directory, or absolute.
    pub dense: String,
    /// The BM25 index directory: relative to the hybrid directory, or absolute.
    pub bm25: String,
    /// The default fusion.
    pub fusion: Fusion,
    /// Candidates each side fetches, as a multiple of k.
    pub depth: usize,
    /// Passages, and the corpus both parts were built from.
    pub rows: u64,
    pub corpus: String,
    pub corpus_id: String,
}

impl HybridManifest {
    /// Reads and checks `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<HybridManifest> {
        let path = dir.join(r1s_index::MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|e| {
            RetrieveError::Options(format!("{}: {e} (build it with `r1s index build --kind hybrid`)", path.display()))
        })?;
        let m: HybridManifest = serde_json::from_slice(&bytes)
            .map_err(|e| RetrieveError::Mismatch(format!("{}: not a hybrid index manifest: {e}", path.display())))?;
        if m.format != FORMAT || m.kind != KIND || m.format_version != FORMAT_VERSION {
            return Err(RetrieveError::Mismatch(format!(
                "{}: format {:?} v{} kind {:?}, expected {FORMAT} v{FORMAT_VERSION}",
                path.display(),
                m.format,
                m.format_version,
                m.kind
            )));
        }
        m.fusion.validate()?;
        if m.depth == 0 {
            return Err(RetrieveError::Mismatch(format!("{}: depth 0", path.display())));
        }
        Ok(m)
    }

    /// The directory of a part, as recorded (`dense` or `bm25`), resolved against `dir`.
    pub fn part(dir: &Path, recorded: &str) -> PathBuf {
        let p = Path::new(recorded);
        if p.is_absolute() { p.to_path_buf() } else { dir.join(p) }
    }
}

/// How `dir` names `part`: a path relative to `dir` (`dense`, `../sample-bm25`), so that the tree
/// holding both can move; absolute when they share no ancestor but the root.
fn recorded_path(dir: &Path, part: &Path) -> String {
    use std::path::Component;
    let abs = |p: &Path| {
        let a = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        a.components().filter(|c| !matches!(c, Component::CurDir)).collect::<PathBuf>()
    };
    let (d, p) = (abs(dir), abs(part));
    let common = d.components().zip(p.components()).take_while(|(a, b)| a == b).count();
    let only_root = d.components().take(common).all(|c| matches!(c, Component::RootDir | Component::Prefix(_)));
    if only_root || d.components().skip(common).any(|c| matches!(c, Component::ParentDir)) {
        return p.display().to_string();
    }
    let mut rel = PathBuf::new();
    for _ in d.components().skip(common) {
        rel.push("..");
    }
    rel.extend(p.components().skip(common));
    rel.display().to_string()
}

/// Writes the hybrid manifest of `dir` over the finished dense index `dense` and BM25 index `bm25`,
/// after checking that both were built from the same corpus (content id and rows). Written
/// atomically, last.
pub fn write_manifest(dir: &Path, dense: &Path, bm25: &Path, fusion: Fusion, depth: usize) -> Result<HybridManifest> {
    fusion.validate()?;
    if depth == 0 {
        return Err(RetrieveError::Options("the fusion depth must be at least 1 (× k)".into()));
    }
    let dpath = dense.join(r1s_index::MANIFEST_FILE);
    let dm: r1s_index::IndexManifest = std::fs::read(&dpath)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| RetrieveError::Mismatch(format!("{}: not a finished dense index", dense.display())))?;
    let bm = Bm25Index::open(bm25)?;
    if dm.corpus_id != bm.manifest.corpus_id || dm.rows != bm.len() {
        return Err(RetrieveError::Mismatch(format!(
            "the dense index {} and the BM25 index {} were built from different corpora (corpus id {} vs {}, {} vs {} passages)",
            dense.display(),
            bm25.display(),
            short(&dm.corpus_id),
            short(&bm.manifest.corpus_id),
            dm.rows,
            bm.len()
        )));
    }
    // the directory first: the corpus is recorded relative to it
    std::fs::create_dir_all(dir).map_err(|e| RetrieveError::Options(format!("creating {}: {e}", dir.display())))?;
    let m = HybridManifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        r1s_version: r1s_core::VERSION.into(),
        kind: KIND.into(),
        dense: recorded_path(dir, dense),
        bm25: recorded_path(dir, bm25),
        fusion,
        depth,
        rows: dm.rows,
        // relative to this directory, as the parts record theirs relative to theirs
        corpus: crate::dense::find_corpus(bm25, &bm.manifest.corpus, &bm.manifest.corpus_id).map_or_else(
            |_| bm.manifest.corpus.clone(),
            |c| r1s_core::paths::relative_to(&c, dir).display().to_string(),
        ),
        corpus_id: dm.corpus_id,
    };
    let path = dir.join(r1s_index::MANIFEST_FILE);
    let json = serde_json::to_vec_pretty(&m).map_err(|e| RetrieveError::Options(e.to_string()))?;
    std::fs::create_dir_all(dir)
        .and_then(|()| r1s_core::fsutil::write_atomic(&path, &json))
        .map_err(|e| RetrieveError::Options(format!("writing {}: {e}", path.display())))?;
    Ok(m)
}

/// One ranked list of `(row, score)` per query.
pub type Ranked = Vec<Vec<Scored>>;

/// Dense + BM25 retrieval of one corpus, fused per query.
#[derive(Debug)]
pub struct HybridRetriever {
    /// The hybrid directory.
    pub dir: PathBuf,
    pub manifest: HybridManifest,
    dense: DenseRetriever,
    bm25: Bm25Index,
    fusion: Fusion,
    depth: usize,
}

/// Query-time settings of a hybrid retriever (the manifest's where `None`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HybridOptions {
    pub fusion: Option<Fusion>,
    /// Candidates per side as a multiple of k.
    pub depth: Option<usize>,
    /// BM25 k1 / b.
    pub bm25: Option<Bm25Params>,
}

impl HybridRetriever {
    /// Opens the hybrid index in `dir`: its dense part with `dense` options (corpus, model, threads,
    /// ef), its BM25 part, and checks that they share the corpus.
    pub fn open(dir: &Path, dense: &DenseOptions, o: &HybridOptions) -> Result<HybridRetriever> {
        let manifest = HybridManifest::read(dir)?;
        let dense_r = DenseRetriever::open(&HybridManifest::part(dir, &manifest.dense), dense)?;
        let mut bm25 = Bm25Index::open(&HybridManifest::part(dir, &manifest.bm25))?;
        if let Some(p) = o.bm25 {
            bm25.set_params(p)?;
        }
        check_bm25_corpus(&bm25, dense_r.corpus())?;
        let fusion = o.fusion.unwrap_or(manifest.fusion);
        fusion.validate()?;
        let depth = o.depth.unwrap_or(manifest.depth);
        if depth == 0 {
            return Err(RetrieveError::Options("the fusion depth must be at least 1 (× k)".into()));
        }
        Ok(HybridRetriever { dir: dir.to_path_buf(), manifest, dense: dense_r, bm25, fusion, depth })
    }

    /// The dense part.
    pub fn dense(&self) -> &DenseRetriever {
        &self.dense
    }

    /// The BM25 part.
    pub fn bm25(&self) -> &Bm25Index {
        &self.bm25
    }

    /// The corpus.
    pub fn corpus(&self) -> &Corpus {
        self.dense.corpus()
    }

    /// The fusion in use.
    pub fn fusion(&self) -> Fusion {
        self.fusion
    }

    /// Candidates per side as a multiple of k.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Each side's candidates for each query, `depth` of each: (dense, bm25). The two sides run
    /// at the same time.
    pub fn candidates(&self, queries: &[&str], depth: usize) -> Result<(Ranked, Ranked)> {
        let (dense, bm25) = std::thread::scope(|s| {
            let lexical = s.spawn(|| self.bm25.search(queries, depth));
            let dense = self.dense.search_scored(queries, depth);
            (dense, lexical.join())
        });
        let bm25 = bm25.map_err(|_| RetrieveError::Options("the BM25 search panicked".into()))??;
        Ok((dense?, bm25))
    }

    /// The fused top-`k` `(row, fused score)` of each query.
    pub fn search_scored(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Scored>>> {
        self.search_scored_with(queries, k, self.fusion)
    }

    /// [`search_scored`](Self::search_scored) with another fusion than the configured one.
    pub fn search_scored_with(&self, queries: &[&str], k: usize, fusion: Fusion) -> Result<Vec<Vec<Scored>>> {
        if k == 0 || queries.is_empty() {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        // every query the same way, a blank one too: fused with an empty BM25 list, RRF of the dense
        // list alone is that list (scores 1/(k + rank)), as for a stop-word-only query
        let (dense, bm25) = self.candidates(queries, k.saturating_mul(self.depth))?;
        Ok(dense.iter().zip(&bm25).map(|(d, b)| fuse(fusion, d, b, k)).collect())
    }
}

impl Retriever for HybridRetriever {
    type Error = RetrieveError;

    fn is_unavailable(err: &RetrieveError) -> bool {
        DenseRetriever::is_unavailable(err)
    }

    fn backend(&self, timeout: std::time::Duration) -> Option<r1s_core::BackendHealth> {
        self.dense.backend(timeout)
    }

    fn retrieve(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>> {
        self.search_scored(queries, k)?.iter().map(|s| to_hits(self.corpus(), s)).collect()
    }
}
