//! Exact inner-product search straight from a memory-mapped `embeddings.npy` (no copy).
//!
//! Rows are scanned in blocks, in parallel (rayon): each block's scores for all queries come from
//! one matrix product (`matrixmultiply::sgemm`, with runtime AVX/FMA dispatch), then each query
//! keeps its top-k with a small heap; per-block results are merged at the end. f16 matrices are
//! converted block by block.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use r1s_core::npy::{Dtype, NpyHeader};
use r1s_core::{Scored, VectorIndex};
use rayon::prelude::*;

use crate::error::{IndexError, Result};

/// A memory-mapped `[rows, dim]` matrix from a `.npy` file. Clones share one mapping (an index
/// with a graph or codes and its exact twin map `embeddings.npy` once) and one cached
/// [`crate::sq8::fingerprint`].
#[derive(Debug, Clone)]
pub struct Matrix {
    map: Arc<memmap2::Mmap>,
    header: NpyHeader,
    path: PathBuf,
    pub(crate) fingerprint: Arc<OnceLock<u64>>,
}

impl Matrix {
    /// Maps `path` after checking its header and size.
    pub fn open(path: &Path) -> Result<Matrix> {
        let header = NpyHeader::read(path).map_err(|e| IndexError::bad(path, e.to_string()))?;
        let file = std::fs::File::open(path).map_err(|e| IndexError::io(path, e))?;
        let len = file.metadata().map_err(|e| IndexError::io(path, e))?.len();
        if len != header.file_len() {
            return Err(IndexError::bad(
                path,
                format!(
                    "{len} bytes, but a [{}, {}] {:?} matrix needs {}: truncated or corrupt",
                    header.rows,
                    header.cols,
                    header.dtype,
                    header.file_len()
                ),
            ));
        }
        if header.data_offset % 4 != 0 {
            return Err(IndexError::bad(path, "matrix data is not 4-byte aligned"));
        }
        // SAFETY: the file is only read; its size was checked above. Rewriting it while mapped is a
        // misuse (r1s writes new files and renames them into place).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| IndexError::io(path, e))?;
        Ok(Matrix { map: Arc::new(map), header, path: path.to_path_buf(), fingerprint: Arc::default() })
    }

    pub fn rows(&self) -> u64 {
        self.header.rows
    }

    pub fn dim(&self) -> usize {
        self.header.cols as usize
    }

    pub fn dtype(&self) -> Dtype {
        self.header.dtype
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tells the kernel that rows will be read at random (`madvise(MADV_RANDOM)`): no read-ahead and
    /// no fault-around, so that re-ranking a few rows maps (and keeps resident) those rows' pages
    /// only, not the 64 KiB around each. A hint: errors are ignored. It applies to every clone (one
    /// mapping): an exact scan through a clone then reads without read-ahead.
    pub fn advise_random(&self) {
        #[cfg(unix)]
        let _ = self.map.advise(memmap2::Advice::Random);
    }

    /// The `.npy` header (shape, dtype, data offset).
    pub fn header(&self) -> &NpyHeader {
        &self.header
    }

    fn data(&self) -> &[u8] {
        &self.map[self.header.data_offset as usize..]
    }

    /// Rows `start..end` as f32 (borrowed for f32 files, converted into `buf` for f16).
    pub fn block<'a>(&'a self, start: u64, end: u64, buf: &'a mut Vec<f32>) -> &'a [f32] {
        let d = self.dim();
        let (s, e) = (start as usize * d, end as usize * d);
        match self.header.dtype {
            Dtype::F32 => bytemuck::cast_slice(&self.data()[s * 4..e * 4]),
            Dtype::F16 => {
                let raw: &[u8] = &self.data()[s * 2..e * 2];
                buf.clear();
                buf.extend(raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()));
                buf
            }
        }
    }

    /// All rows, borrowed from the map: f32 values or f16 bit patterns.
    pub(crate) fn raw(&self) -> Raw<'_> {
        match self.header.dtype {
            Dtype::F32 => Raw::F32(bytemuck::cast_slice(self.data())),
            Dtype::F16 => Raw::F16(bytemuck::cast_slice(self.data())),
        }
    }

    /// One row as f32.
    pub fn row(&self, r: u64) -> Vec<f32> {
        let mut buf = Vec::new();
        self.block(r, r + 1, &mut buf).to_vec()
    }
}

/// The data of a [`Matrix`], row-major.
pub(crate) enum Raw<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
}

/// A score with a total order (NaN sorts lowest), smallest first in a `BinaryHeap` of `Reverse`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Hit(f32, u64);

impl Eq for Hit {}
impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Hit {
    fn cmp(&self, other: &Self) -> Ordering {
        // higher score first; ties: lower row first
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

/// Keeps the `k` best hits seen.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    /// a max-heap of `Hit` ordered worst-on-top (see `Ord`)
    heap: BinaryHeap<Hit>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        TopK { k, heap: BinaryHeap::with_capacity(k + 1) }
    }

    #[inline]
    pub fn push(&mut self, score: f32, row: u64) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Hit(score, row));
        } else if let Some(worst) = self.heap.peek()
            && Hit(score, row) < *worst
        {
            self.heap.pop();
            self.heap.push(Hit(score, row));
        }
    }

    /// The worst score kept, once `k` are kept.
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.heap.len() < self.k { f32::NEG_INFINITY } else { self.heap.peek().map_or(f32::NEG_INFINITY, |h| h.0) }
    }

    pub fn merge(&mut self, other: TopK) {
        for h in other.heap {
            self.push(h.0, h.1);
        }
    }

    /// Best first.
    pub fn into_sorted(self) -> Vec<Scored> {
        let mut v: Vec<Hit> = self.heap.into_vec();
        v.sort();
        v.into_iter().map(|h| (h.1, h.0)).collect()
    }
}

/// Exact inner-product index over a mapped matrix.
#[derive(Debug)]
pub struct FlatIndex {
    matrix: Matrix,
}

/// Rows per block: enough to amortise the matrix product, small enough for the cache.
const BLOCK_FLOATS: usize = 1 << 21;

/// Below this many queries the rows are split into more, smaller blocks, so that one query keeps
/// every thread busy (a single block of up to 65,536 rows ran on one thread). Every query's scores
/// come from the same matrix product whatever the batch: a per-query kernel for small batches was
/// tried and withdrawn, because a query's scores then differed in the last bits with the batch it
/// landed in (`r1s serve` batches concurrent requests, and answers the same request identically).
const FEW_QUERIES: usize = 4;

impl FlatIndex {
    pub fn open(embeddings: &Path) -> Result<FlatIndex> {
        Ok(FlatIndex { matrix: Matrix::open(embeddings)? })
    }

    pub fn matrix(&self) -> &Matrix {
        &self.matrix
    }
}

impl VectorIndex for FlatIndex {
    type Error = IndexError;

    fn dim(&self) -> usize {
        self.matrix.dim()
    }

    fn len(&self) -> u64 {
        self.matrix.rows()
    }

    fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Scored>>> {
        scan(&self.matrix, queries, k)
    }
}

/// Row blocks as f32, for the exact scan: the matrix itself, or SQ8 codes decoded.
pub(crate) trait Blocks: Sync {
    fn rows(&self) -> u64;
    fn dim(&self) -> usize;
    /// Rows `start..end` as f32, row-major (borrowed, or converted into `buf`).
    fn block<'a>(&'a self, start: u64, end: u64, buf: &'a mut Vec<f32>) -> &'a [f32];
}

impl Blocks for Matrix {
    fn rows(&self) -> u64 {
        Matrix::rows(self)
    }
    fn dim(&self) -> usize {
        Matrix::dim(self)
    }
    fn block<'a>(&'a self, start: u64, end: u64, buf: &'a mut Vec<f32>) -> &'a [f32] {
        Matrix::block(self, start, end, buf)
    }
}

/// The top `k` rows of `blocks` by inner product for each query of row-major `queries`, best first.
/// Blocks are scanned in parallel; each block's scores for all queries come from one matrix product.
pub(crate) fn scan<B: Blocks>(blocks: &B, queries: &[f32], k: usize) -> Result<Vec<Vec<Scored>>> {
    let d = blocks.dim();
    let nq = crate::error::query_rows(queries, d)?;
    let rows = blocks.rows();
    if nq == 0 || rows == 0 {
        return Ok(vec![Vec::new(); nq]);
    }
    // never more hits than rows (a huge k must not size the heaps)
    let k = k.min(usize::try_from(rows).unwrap_or(usize::MAX));
    let block_rows = if nq < FEW_QUERIES {
        rows.div_ceil(4 * rayon::current_num_threads() as u64).clamp(4096, 65_536)
    } else {
        (BLOCK_FLOATS / nq.max(1)).clamp(256, 65_536) as u64
    };
    let ids: Vec<u64> = (0..rows.div_ceil(block_rows)).collect();
    let partial: Vec<Vec<TopK>> = ids
        .par_iter()
        .map_init(
            || (Vec::<f32>::new(), Vec::<f32>::new()),
            |(conv, scores), &b| {
                let start = b * block_rows;
                let end = (start + block_rows).min(rows);
                let n = (end - start) as usize;
                let block = blocks.block(start, end, conv);
                scores.clear();
                scores.resize(nq * n, 0.0);
                // scores[nq, n] = queries[nq, d] · block[n, d]ᵀ
                // SAFETY: the pointers and strides describe the live slices above exactly:
                // queries is nq×d row-major, block is n×d row-major (read as d×n via strides),
                // scores is nq×n row-major.
                unsafe {
                    matrixmultiply::sgemm(
                        nq,
                        d,
                        n,
                        1.0,
                        queries.as_ptr(),
                        d as isize,
                        1,
                        block.as_ptr(),
                        1,
                        d as isize,
                        0.0,
                        scores.as_mut_ptr(),
                        n as isize,
                        1,
                    );
                }
                scores
                    .chunks_exact(n)
                    .map(|row_scores| {
                        let mut top = TopK::new(k);
                        for (j, &s) in row_scores.iter().enumerate() {
                            if s >= top.threshold() {
                                top.push(s, start + j as u64);
                            }
                        }
                        top
                    })
                    .collect()
            },
        )
        .collect();
    let mut merged: Vec<TopK> = (0..nq).map(|_| TopK::new(k)).collect();
    for block in partial {
        for (q, top) in block.into_iter().enumerate() {
            merged[q].merge(top);
        }
    }
    Ok(merged.into_iter().map(TopK::into_sorted).collect())
}

/// Brute force, one dot product at a time: the reference the optimised search is tested against.
pub fn naive_search(matrix: &[f32], dim: usize, queries: &[f32], k: usize) -> Vec<Vec<Scored>> {
    queries
        .chunks_exact(dim)
        .map(|q| {
            let mut all: Vec<Scored> = matrix
                .chunks_exact(dim)
                .enumerate()
                .map(|(r, v)| (r as u64, v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>()))
                .collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            all.truncate(k);
            all
        })
        .collect()
}
