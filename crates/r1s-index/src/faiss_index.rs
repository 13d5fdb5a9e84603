//! FAISS indexes (any `index_factory` string: `Flat`, `HNSW32`, `IVF4096,PQ64`, …) through the
//! `faiss` crate's static build. Files are written with FAISS's own `write_index`, so Python's
//! `faiss.read_index` opens them.

use std::path::Path;
use std::sync::Mutex;

use faiss::{Idx, Index as _, MetricType};
use r1s_core::{Cancel, Progress, Scored, Unit, VectorIndex};

use crate::error::{IndexError, Result};
use crate::flat::Matrix;

/// The FAISS index file in an index directory.
pub const FILE: &str = "faiss.index";
/// Rows used to train indexes that need training (IVF, PQ, …).
const TRAIN_ROWS: u64 = 262_144;

/// A FAISS index; searches are serialised (FAISS parallelises inside each batch with OpenMP).
pub struct FaissIndex {
    inner: Mutex<faiss::index::IndexImpl>,
    dim: usize,
    rows: u64,
}

impl std::fmt::Debug for FaissIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaissIndex").field("dim", &self.dim).field("rows", &self.rows).finish_non_exhaustive()
    }
}

fn ferr(e: faiss::error::Error) -> IndexError {
    IndexError::Options(format!("faiss: {e}"))
}

impl FaissIndex {
    /// Builds `factory` (inner-product metric) over every row of `matrix`, training first if needed.
    pub fn build(matrix: &Matrix, factory: &str, progress: &dyn Progress, cancel: &Cancel) -> Result<FaissIndex> {
        let dim = matrix.dim();
        let mut idx = faiss::index_factory(dim as u32, factory, MetricType::InnerProduct)
            .map_err(|e| IndexError::Options(format!("faiss index_factory({factory:?}): {e}")))?;
        let rows = matrix.rows();
        let mut buf = Vec::new();
        if !idx.is_trained() {
            let n = rows.min(TRAIN_ROWS);
            log::info!("training {factory} on {n} vectors");
            idx.train(matrix.block(0, n, &mut buf)).map_err(ferr)?;
        }
        progress.start("faiss add", Some(rows), Unit::Items);
        const CHUNK: u64 = 16_384;
        let mut start = 0;
        while start < rows {
            if cancel.is_cancelled() {
                return Err(IndexError::Cancelled);
            }
            let end = (start + CHUNK).min(rows);
            idx.add(matrix.block(start, end, &mut buf)).map_err(ferr)?;
            progress.advance(end - start);
            start = end;
        }
        progress.finish(&format!("{rows} vectors in FAISS {factory}"));
        Ok(FaissIndex { inner: Mutex::new(idx), dim, rows })
    }

    /// Writes `faiss.index` into `dir` (through a temporary name).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join(format!("{FILE}.tmp"));
        let final_path = dir.join(FILE);
        let guard = self.inner.lock().map_err(|_| IndexError::Options("faiss index lock poisoned".into()))?;
        faiss::write_index(&*guard, tmp.to_string_lossy())
            .map_err(|e| IndexError::bad(&tmp, format!("faiss write_index: {e}")))?;
        std::fs::rename(&tmp, &final_path).map_err(|e| IndexError::io(&final_path, e))
    }

    /// Reads `faiss.index` from `dir`, checking its dimension and size.
    pub fn load(dir: &Path, dim: usize, rows: u64) -> Result<FaissIndex> {
        let path = dir.join(FILE);
        let len = std::fs::metadata(&path).map_err(|e| IndexError::io(&path, e))?.len();
        if len == 0 {
            return Err(IndexError::bad(&path, "empty file"));
        }
        let idx = faiss::read_index(path.to_string_lossy())
            .map_err(|e| IndexError::bad(&path, format!("faiss read_index: {e}")))?;
        if idx.d() as usize != dim || idx.ntotal() != rows {
            return Err(IndexError::Mismatch(format!(
                "{}: FAISS index is [{}, {}], the manifest says [{rows}, {dim}]",
                path.display(),
                idx.ntotal(),
                idx.d()
            )));
        }
        Ok(FaissIndex { inner: Mutex::new(idx), dim, rows })
    }

    /// Sets a FAISS search parameter (`efSearch` for HNSW, `nprobe` for IVF).
    pub fn set_parameter(&self, name: &str, value: f64) -> Result<()> {
        let guard = self.inner.lock().map_err(|_| IndexError::Options("faiss index lock poisoned".into()))?;
        let ps = faiss::index::autotune::ParameterSpace::new().map_err(ferr)?;
        ps.set_index_parameter(&*guard, name, value).map_err(ferr)
    }
}

impl VectorIndex for FaissIndex {
    type Error = IndexError;
    fn dim(&self) -> usize {
        self.dim
    }
    fn len(&self) -> u64 {
        self.rows
    }
    fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Scored>>> {
        let nq = crate::error::query_rows(queries, self.dim)?;
        if nq == 0 || k == 0 {
            return Ok(vec![Vec::new(); nq]);
        }
        let mut guard = self.inner.lock().map_err(|_| IndexError::Options("faiss index lock poisoned".into()))?;
        let r = guard.search(queries, k).map_err(ferr)?;
        Ok(r.labels
            .chunks_exact(k)
            .zip(r.distances.chunks_exact(k))
            .map(|(ls, ds)| ls.iter().zip(ds).filter_map(|(l, &d): (&Idx, &f32)| l.get().map(|row| (row, d))).collect())
            .collect())
    }
}
