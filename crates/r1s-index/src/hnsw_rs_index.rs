//! The `hnsw-rs` kind: approximate search with the `hnsw_rs` crate (parallel insertion, `M` and
//! `ef_construction` at build, `ef_search` per query), dumped next to the embeddings and reloaded.
//! Kept beside r1s's own graph ([`crate::hnsw`]) for comparison and for indexes built before it;
//! hnsw_rs keeps its own copy of every vector in memory and in its data file.

use std::path::Path;

use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::hnswio::HnswIo;
use r1s_core::{Cancel, Progress, Scored, Unit, VectorIndex};
use rayon::prelude::*;

use crate::error::{IndexError, Result};
use crate::flat::Matrix;
use crate::hnsw::{DistIp, HnswParams};

/// The basename of the dumped graph files (`hnsw.hnsw.graph`, `hnsw.hnsw.data`).
pub const BASENAME: &str = "hnsw";
/// The files hnsw_rs writes under that basename.
pub const FILES: [&str; 2] = ["hnsw.hnsw.graph", "hnsw.hnsw.data"];

/// An HNSW graph over the rows of a matrix.
pub struct HnswRsIndex {
    hnsw: Hnsw<'static, f32, DistIp>,
    dim: usize,
    rows: u64,
    pub params: HnswParams,
}

impl std::fmt::Debug for HnswRsIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswRsIndex").field("rows", &self.rows).field("params", &self.params).finish_non_exhaustive()
    }
}

impl HnswRsIndex {
    /// Builds the graph over every row of `matrix`, inserting in parallel.
    pub fn build(matrix: &Matrix, params: HnswParams, progress: &dyn Progress, cancel: &Cancel) -> Result<HnswRsIndex> {
        params.check()?;
        let rows = matrix.rows();
        let hnsw = Hnsw::new(params.m, rows as usize, 16, params.ef_construction.max(params.m), DistIp);
        progress.start("hnsw build", Some(rows), Unit::Items);
        const CHUNK: u64 = 4096;
        let mut buf = Vec::new();
        let mut start = 0;
        while start < rows {
            if cancel.is_cancelled() {
                return Err(IndexError::Cancelled);
            }
            let end = (start + CHUNK).min(rows);
            let block = matrix.block(start, end, &mut buf);
            let items: Vec<(&[f32], usize)> =
                block.chunks_exact(matrix.dim()).enumerate().map(|(j, v)| (v, (start as usize) + j)).collect();
            items.par_iter().for_each(|&item| hnsw.insert_slice(item));
            progress.advance(end - start);
            start = end;
        }
        progress.finish(&format!("{rows} vectors linked (M {}, efC {})", params.m, params.ef_construction));
        let mut hnsw = hnsw;
        hnsw.set_searching_mode(true);
        Ok(HnswRsIndex { hnsw, dim: matrix.dim(), rows, params })
    }

    /// Writes the graph into `dir` (files `hnsw.hnsw.graph` and `hnsw.hnsw.data`).
    pub fn dump(&self, dir: &Path) -> Result<()> {
        let used =
            self.hnsw.file_dump(dir, BASENAME).map_err(|e| IndexError::bad(dir, format!("hnsw dump failed: {e}")))?;
        if used != BASENAME {
            // hnsw_rs picks another basename when the files exist: move them over ours
            for ext in ["hnsw.graph", "hnsw.data"] {
                let from = dir.join(format!("{used}.{ext}"));
                std::fs::rename(&from, dir.join(format!("{BASENAME}.{ext}"))).map_err(|e| IndexError::io(&from, e))?;
            }
        }
        Ok(())
    }

    /// Reloads a dumped graph, checking it against the expected size.
    pub fn load(dir: &Path, dim: usize, rows: u64, params: HnswParams) -> Result<HnswRsIndex> {
        for name in FILES {
            let p = dir.join(name);
            let len = std::fs::metadata(&p).map_err(|e| IndexError::io(&p, e))?.len();
            if len == 0 {
                return Err(IndexError::bad(&p, "empty file"));
            }
        }
        // hnsw_rs's loaded graph borrows its loader for as long as it lives; the index lives as long
        // as the process that searches it, so the (small) loader is leaked deliberately.
        let io: &'static HnswIo = Box::leak(Box::new(HnswIo::new(dir, BASENAME)));
        let loaded =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| io.load_hnsw_with_dist::<f32, DistIp>(DistIp)));
        let mut hnsw = match loaded {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                return Err(IndexError::bad(dir.join(FILES[0]), format!("cannot load the graph: {e}")));
            }
            Err(_) => return Err(IndexError::bad(dir.join(FILES[0]), "corrupt graph (the loader panicked)")),
        };
        if hnsw.get_nb_point() as u64 != rows {
            return Err(IndexError::Mismatch(format!(
                "{}: the graph holds {} points, the manifest says {rows}",
                dir.display(),
                hnsw.get_nb_point()
            )));
        }
        hnsw.set_searching_mode(true);
        Ok(HnswRsIndex { hnsw, dim, rows, params })
    }

    /// Search with an explicit `ef`.
    pub fn search_ef(&self, queries: &[f32], k: usize, ef: usize) -> Result<Vec<Vec<Scored>>> {
        crate::error::query_rows(queries, self.dim)?;
        let ef = ef.max(k);
        Ok(queries
            .par_chunks_exact(self.dim)
            .map(|q| self.hnsw.search(q, k, ef).into_iter().map(|n| (n.d_id as u64, 1.0 - n.distance)).collect())
            .collect())
    }
}

impl VectorIndex for HnswRsIndex {
    type Error = IndexError;
    fn dim(&self) -> usize {
        self.dim
    }
    fn len(&self) -> u64 {
        self.rows
    }
    fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Scored>>> {
        self.search_ef(queries, k, self.params.ef_search)
    }
}
