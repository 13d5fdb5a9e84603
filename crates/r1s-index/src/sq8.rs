//! SQ8: per-dimension 8-bit scalar quantization of the embedding matrix, as FAISS's
//! `ScalarQuantizer::QT_8bit` (min/max per dimension, 256 uniform levels).
//!
//! Dimension `j` is trained on a sample of rows (every row up to [`TRAIN_SAMPLE`], an even stride
//! beyond) for its range `[min_j, max_j]`; a value `x` is stored as `c = round((x − min_j) / step_j)`
//! clamped to `0..=255`, with `step_j = (max_j − min_j) / 255`, and read back as `min_j + c · step_j`
//! (error at most `step_j / 2` inside the trained range). An inner product with a query `q` is then
//! `⟨q, min⟩ + Σ_j (q_j · step_j) · c_j`: the first term and the scaled query are computed once per
//! query ([`Sq8::prepare`]) and the scan runs [`crate::distance::dot_u8`] over the codes, a quarter of
//! the f32 bytes.
//!
//! Layout of `codes.sq8` (little-endian): a 64-byte header — magic `R1SSQ8\0\1`, rows (u64),
//! dim (u32), 4 zero bytes, data offset (u64), the source matrix's length in bytes (u64) and
//! [`fingerprint`] (u64), the number of rows trained on (u64), 8 zero bytes — then `min[dim]` and
//! `step[dim]` (f32), zero padding to the data offset (a multiple of 64), then `rows × dim` codes,
//! row-major. The file is memory-mapped; every size in it is checked against the file length and
//! the manifest before anything is read.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use r1s_core::npy::Dtype;
use r1s_core::{Cancel, Progress, Scored, Unit};
use rayon::prelude::*;

use crate::distance::{dot, dot_f16};
use crate::error::{IndexError, Result};
use crate::flat::{Matrix, Raw};

/// The codes file in an index directory.
pub const CODES_FILE: &str = "codes.sq8";
/// Rows trained on at most (an even stride over the matrix beyond this).
pub const TRAIN_SAMPLE: u64 = 100_000;
const MAGIC: [u8; 8] = *b"R1SSQ8\0\x01";
const HEADER: usize = 64;
/// Bytes of the f32 matrix read per encoding step.
const ENCODE_BLOCK_BYTES: u64 = 16 << 20;

/// Which quantization an index stores its vectors with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantize {
    /// The f32/f16 `embeddings.npy` itself.
    #[default]
    None,
    /// 8-bit codes per dimension (`codes.sq8`), re-ranked from `embeddings.npy`.
    Sq8,
}

impl std::str::FromStr for Quantize {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Quantize::None),
            "sq8" => Ok(Quantize::Sq8),
            _ => Err(format!("unknown quantization {s:?} (none, sq8)")),
        }
    }
}

/// The quantization settings of an index, stored in its manifest's `params` (absent in manifests
/// written before SQ8: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuantParams {
    #[serde(default)]
    pub quantize: Quantize,
    /// Re-rank the candidates exactly from `embeddings.npy` (off: scores from the codes).
    #[serde(default = "yes")]
    pub rerank: bool,
    /// Flat SQ8: candidates re-ranked per query, as a multiple of k.
    #[serde(default = "four")]
    pub rerank_factor: usize,
    /// HNSW SQ8: re-rank only the best `n` of the `ef` candidates by code score (at least k);
    /// `None` re-ranks all of them. Fewer re-ranked rows touch fewer pages of `embeddings.npy`
    /// (the search-run memory) at some recall (docs/scale.md measures the trade-off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerank_top: Option<usize>,
}

fn yes() -> bool {
    true
}
fn four() -> usize {
    4
}

impl QuantParams {
    /// These settings for an index walked over `codes` (SQ8) or over the vectors (none).
    pub fn over(self, codes: Option<&Sq8>) -> QuantParams {
        QuantParams { quantize: if codes.is_some() { Quantize::Sq8 } else { Quantize::None }, ..self }
    }
}

impl Default for QuantParams {
    fn default() -> Self {
        QuantParams { quantize: Quantize::None, rerank: true, rerank_factor: 4, rerank_top: None }
    }
}

/// Ties a codes file, a build checkpoint, a Milvus collection or a manifest to the embeddings they
/// came from: the first 8 bytes (little-endian) of a SHA-256 over the file's length and the
/// SHA-256 digests of its consecutive 64 MiB chunks — the whole file, header included, so any
/// change of any byte changes it. Chunks are hashed in parallel (rayon) through plain reads, not
/// the map (a pass over a matrix larger than RAM must not grow the resident set); the value is
/// cached in `m` and its clones. Cost: one read of the file (a few seconds per GB on 2 cores).
pub fn fingerprint(m: &Matrix) -> Result<u64> {
    if let Some(&f) = m.fingerprint.get() {
        return Ok(f);
    }
    use rayon::prelude::*;
    use sha2::Digest;
    const CHUNK: u64 = 64 << 20;
    let path = m.path();
    let file = File::open(path).map_err(|e| IndexError::io(path, e))?;
    let len = file.metadata().map_err(|e| IndexError::io(path, e))?.len();
    let digests = (0..len.div_ceil(CHUNK))
        .into_par_iter()
        .map(|k| {
            let start = k * CHUNK;
            let mut buf = vec![0u8; (len - start).min(CHUNK) as usize];
            file.read_exact_at(&mut buf, start).map_err(|e| IndexError::io(path, e))?;
            Ok(sha2::Sha256::digest(&buf))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut h = sha2::Sha256::new();
    h.update(len.to_le_bytes());
    for d in &digests {
        h.update(d);
    }
    let top = h.finalize();
    let mut word = [0u8; 8];
    word.copy_from_slice(&top[..8]);
    let f = u64::from_le_bytes(word);
    let _ = m.fingerprint.set(f);
    Ok(f)
}

/// Reads rows `start..end` of `m` as f32 through plain reads (not the map: a pass over a matrix
/// larger than RAM must not grow the process's resident set).
pub(crate) fn read_rows(
    m: &Matrix,
    file: &File,
    start: u64,
    end: u64,
    bytes: &mut Vec<u8>,
    out: &mut Vec<f32>,
) -> Result<()> {
    let h = m.header();
    let row = h.row_bytes();
    let len = ((end - start) * row) as usize;
    bytes.resize(len, 0);
    file.read_exact_at(bytes, h.data_offset + start * row).map_err(|e| IndexError::io(m.path(), e))?;
    out.clear();
    match h.dtype {
        Dtype::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        Dtype::F16 => out.extend(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())),
    }
    Ok(())
}

/// Trains the per-dimension ranges on a sample of `m`'s rows: `(min, step)`.
pub fn train(m: &Matrix) -> Result<(Vec<f32>, Vec<f32>, u64)> {
    let (rows, dim) = (m.rows(), m.dim());
    let file = File::open(m.path()).map_err(|e| IndexError::io(m.path(), e))?;
    let sample = rows.min(TRAIN_SAMPLE);
    let mut lo = vec![f32::INFINITY; dim];
    let mut hi = vec![f32::NEG_INFINITY; dim];
    let (mut bytes, mut v) = (Vec::new(), Vec::new());
    let mut fold = |v: &[f32]| {
        for r in v.chunks_exact(dim) {
            for ((l, h), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(r) {
                if x.is_finite() {
                    *l = l.min(x);
                    *h = h.max(x);
                }
            }
        }
    };
    if sample == rows {
        let step = (ENCODE_BLOCK_BYTES / m.header().row_bytes().max(1)).max(1);
        let mut start = 0;
        while start < rows {
            let end = (start + step).min(rows);
            read_rows(m, &file, start, end, &mut bytes, &mut v)?;
            fold(&v);
            start = end;
        }
    } else {
        for i in 0..sample {
            // an even stride; u128 keeps i × rows exact for any u64 sizes
            let r = (u128::from(i) * u128::from(rows) / u128::from(sample)) as u64;
            read_rows(m, &file, r, r + 1, &mut bytes, &mut v)?;
            fold(&v);
        }
    }
    let mut step = vec![0f32; dim];
    for j in 0..dim {
        if lo[j] > hi[j] {
            // no finite value seen (no rows): an all-zero range
            lo[j] = 0.0;
            hi[j] = 0.0;
        }
        step[j] = (hi[j] - lo[j]) / 255.0;
    }
    Ok((lo, step, sample))
}

/// The code of `x` in a dimension with range start `min` and step `step`.
#[inline]
pub fn encode_value(x: f32, min: f32, step: f32) -> u8 {
    if step > 0.0 && x.is_finite() { ((x - min) / step).round().clamp(0.0, 255.0) as u8 } else { 0 }
}

/// Rounds `n` up to a multiple of 64.
fn align64(n: u64) -> Option<u64> {
    n.checked_add(63).map(|x| x / 64 * 64)
}

/// The data offset of a codes file over `dim` dimensions.
fn data_offset(dim: usize) -> Option<u64> {
    align64((HEADER as u64).checked_add((dim as u64).checked_mul(8)?)?)
}

/// Trains on `m` and writes its codes to `path` (through `path.part`, renamed when complete).
/// Reads the matrix once more, in blocks, encoding each block in parallel on the current rayon pool.
pub fn encode_file(m: &Matrix, path: &Path, progress: &dyn Progress, cancel: &Cancel) -> Result<()> {
    let (rows, dim) = (m.rows(), m.dim());
    let (min, step, sample) = train(m)?;
    let data_at = data_offset(dim).ok_or_else(|| IndexError::Options(format!("dimension {dim} too large")))?;
    let mut header = Vec::with_capacity(data_at as usize);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&rows.to_le_bytes());
    header.extend_from_slice(&(dim as u32).to_le_bytes());
    header.extend_from_slice(&[0; 4]);
    header.extend_from_slice(&data_at.to_le_bytes());
    let src_len = m.header().file_len();
    header.extend_from_slice(&src_len.to_le_bytes());
    header.extend_from_slice(&fingerprint(m)?.to_le_bytes());
    header.extend_from_slice(&sample.to_le_bytes());
    header.extend_from_slice(&[0; 8]);
    header.extend(min.iter().chain(&step).flat_map(|x| x.to_le_bytes()));
    header.resize(data_at as usize, 0);

    let tmp = path.with_extension("sq8.part");
    let file = File::open(m.path()).map_err(|e| IndexError::io(m.path(), e))?;
    let out = File::create(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
    w.write_all(&header).map_err(|e| IndexError::io(&tmp, e))?;
    progress.start("sq8 encode", Some(rows), Unit::Items);
    let block = (ENCODE_BLOCK_BYTES / m.header().row_bytes().max(1)).max(1);
    let (mut bytes, mut v, mut codes) = (Vec::new(), Vec::new(), Vec::new());
    let mut start = 0;
    while start < rows {
        if cancel.is_cancelled() {
            drop(w);
            let _ = std::fs::remove_file(&tmp);
            return Err(IndexError::Cancelled);
        }
        let end = (start + block).min(rows);
        read_rows(m, &file, start, end, &mut bytes, &mut v)?;
        codes.resize(v.len(), 0u8);
        codes.par_chunks_mut(dim.max(1)).zip(v.par_chunks(dim.max(1))).for_each(|(c, x)| {
            for j in 0..x.len() {
                c[j] = encode_value(x[j], min[j], step[j]);
            }
        });
        w.write_all(&codes).map_err(|e| IndexError::io(&tmp, e))?;
        progress.advance(end - start);
        start = end;
    }
    let out = w.into_inner().map_err(|e| IndexError::io(&tmp, e.into_error()))?;
    out.sync_all().map_err(|e| IndexError::io(&tmp, e))?;
    drop(out);
    std::fs::rename(&tmp, path).map_err(|e| IndexError::io(path, e))?;
    progress.finish(&format!("{rows} vectors encoded to 8 bits ({sample} trained on)"));
    Ok(())
}

/// A memory-mapped `codes.sq8`.
pub struct Sq8 {
    map: memmap2::Mmap,
    rows: u64,
    dim: usize,
    min: Vec<f32>,
    step: Vec<f32>,
    data_at: usize,
    source: (u64, u64),
    path: PathBuf,
}

impl std::fmt::Debug for Sq8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sq8").field("path", &self.path).field("rows", &self.rows).field("dim", &self.dim).finish()
    }
}

impl Sq8 {
    /// Maps `path`, checking it holds codes for `[rows, dim]`; every header field is checked against
    /// the expected shape and the file's length first.
    pub fn open(path: &Path, rows: u64, dim: usize) -> Result<Sq8> {
        let bad = |r: String| IndexError::bad(path, r);
        let file = File::open(path).map_err(|e| IndexError::io(path, e))?;
        let len = file.metadata().map_err(|e| IndexError::io(path, e))?.len();
        let mut head = [0u8; HEADER];
        if len < HEADER as u64 {
            return Err(bad(format!("{len} bytes: truncated (no header)")));
        }
        file.read_exact_at(&mut head, 0).map_err(|e| IndexError::io(path, e))?;
        if head[..8] != MAGIC {
            return Err(bad("not an r1s SQ8 codes file (bad magic)".into()));
        }
        let u64_at = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().unwrap_or([0; 8]));
        let (r, d) = (u64_at(8), u64::from(u32::from_le_bytes([head[16], head[17], head[18], head[19]])));
        if r != rows || d != dim as u64 {
            return Err(IndexError::Mismatch(format!(
                "{}: codes for [{r}, {d}], the index holds [{rows}, {dim}]",
                path.display()
            )));
        }
        let data_at = u64_at(24);
        if Some(data_at) != data_offset(dim) {
            return Err(bad(format!("corrupt header (data offset {data_at})")));
        }
        let want = rows.checked_mul(dim as u64).and_then(|n| n.checked_add(data_at));
        if want != Some(len) {
            return Err(bad(format!(
                "{len} bytes, [{rows}, {dim}] codes need {}: truncated or corrupt",
                want.map_or_else(|| "more than 2^64".into(), |w| w.to_string())
            )));
        }
        let data_at = usize::try_from(data_at).map_err(|_| bad("data offset beyond the address space".into()))?;
        // SAFETY: the file is only read and its length was checked above; r1s never rewrites a codes
        // file in place (a rebuild writes a new file and renames it).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| IndexError::io(path, e))?;
        let floats: Vec<f32> = map[HEADER..HEADER + 8 * dim]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let (min, step) = floats.split_at(dim);
        if min.iter().chain(step).any(|x| !x.is_finite()) || step.iter().any(|&s| s < 0.0) {
            return Err(bad("corrupt ranges (a non-finite minimum or a negative step)".into()));
        }
        Ok(Sq8 {
            rows,
            dim,
            min: min.to_vec(),
            step: step.to_vec(),
            data_at,
            source: (u64_at(32), u64_at(40)),
            map,
            path: path.to_path_buf(),
        })
    }

    /// Whether these codes were made from `m` (its length and [`fingerprint`]).
    pub fn made_from(&self, m: &Matrix) -> Result<bool> {
        Ok(self.source == (m.header().file_len(), fingerprint(m)?))
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All codes, row-major.
    #[inline]
    pub fn codes(&self) -> &[u8] {
        &self.map[self.data_at..]
    }

    /// The per-dimension range starts and steps.
    pub fn ranges(&self) -> (&[f32], &[f32]) {
        (&self.min, &self.step)
    }

    /// The codes of row `i`.
    #[inline]
    pub fn row(&self, i: u64) -> &[u8] {
        let d = self.dim;
        &self.codes()[i as usize * d..(i as usize + 1) * d]
    }

    /// Fails unless these codes are over `[rows, dim]`.
    pub fn check_shape(&self, rows: u64, dim: usize) -> Result<()> {
        if self.rows != rows || self.dim != dim {
            return Err(IndexError::Mismatch(format!(
                "{}: codes for [{}, {}], the vectors are [{rows}, {dim}]",
                self.path.display(),
                self.rows,
                self.dim
            )));
        }
        Ok(())
    }

    /// `q ⊙ step` into `out`, and `⟨q, min⟩`: with them, `⟨q, decode(c)⟩ = bias + dot_u8(out, c)`.
    pub fn prepare(&self, q: &[f32], out: &mut Vec<f32>) -> f32 {
        out.clear();
        out.extend(q.iter().zip(&self.step).map(|(a, s)| a * s));
        dot(q, &self.min)
    }

    /// The decoded values of a row of codes, appended to `out`: `min + c · step` per dimension.
    fn decode_into(&self, codes: &[u8], out: &mut Vec<f32>) {
        out.extend(codes.iter().zip(self.min.iter().zip(&self.step)).map(|(&c, (m, s))| m + f32::from(c) * s));
    }

    /// Row `i` decoded into `out`.
    pub fn decode(&self, i: u64, out: &mut Vec<f32>) {
        out.clear();
        self.decode_into(self.row(i), out);
    }

    /// Row `i` decoded and prepared as a query ([`Sq8::prepare`] of [`Sq8::decode`], the same
    /// arithmetic) in one allocation: the scaled row and its bias.
    pub fn prepared_row(&self, i: u64) -> (Vec<f32>, f32) {
        let mut x = Vec::with_capacity(self.dim);
        self.decode_into(self.row(i), &mut x);
        let bias = dot(&x, &self.min);
        x.iter_mut().zip(&self.step).for_each(|(v, s)| *v *= s);
        (x, bias)
    }
}

/// Exact scores of `ids` for query `q` from the mapped matrix, best first (ties: lower row), the top
/// `k` kept.
pub(crate) fn rerank(m: &Matrix, q: &[f32], ids: impl Iterator<Item = u64>, k: usize) -> Vec<Scored> {
    let d = m.dim();
    let mut out: Vec<Scored> = match m.raw() {
        Raw::F32(v) => ids.map(|i| (i, dot(q, &v[i as usize * d..(i as usize + 1) * d]))).collect(),
        Raw::F16(v) => ids.map(|i| (i, dot_f16(q, &v[i as usize * d..(i as usize + 1) * d]))).collect(),
    };
    out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out.truncate(k);
    out
}

impl crate::flat::Blocks for Sq8 {
    fn rows(&self) -> u64 {
        self.rows
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn block<'a>(&'a self, start: u64, end: u64, buf: &'a mut Vec<f32>) -> &'a [f32] {
        let d = self.dim;
        let codes = &self.codes()[start as usize * d..end as usize * d];
        buf.clear();
        buf.reserve(codes.len());
        for row in codes.chunks_exact(d.max(1)) {
            self.decode_into(row, buf);
        }
        buf
    }
}

/// Flat search over SQ8 codes: every row scored from its codes, the best `rerank_factor × k` per
/// query re-ranked exactly from the mapped `embeddings.npy` (or, without re-ranking, the best `k` by
/// their code scores).
#[derive(Debug)]
pub struct Sq8FlatIndex {
    codes: Sq8,
    matrix: Matrix,
    pub quant: QuantParams,
}

impl Sq8FlatIndex {
    /// Maps `codes` over the rows of `matrix`.
    pub fn new(codes: Sq8, matrix: Matrix, quant: QuantParams) -> Result<Sq8FlatIndex> {
        codes.check_shape(matrix.rows(), matrix.dim())?;
        matrix.advise_random();
        Ok(Sq8FlatIndex { codes, matrix, quant })
    }

    pub fn codes(&self) -> &Sq8 {
        &self.codes
    }
}

impl r1s_core::VectorIndex for Sq8FlatIndex {
    type Error = IndexError;
    fn dim(&self) -> usize {
        self.codes.dim()
    }
    fn len(&self) -> u64 {
        self.codes.rows()
    }
    fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Scored>>> {
        if !self.quant.rerank {
            return crate::flat::scan(&self.codes, queries, k);
        }
        let rows = usize::try_from(self.codes.rows()).unwrap_or(usize::MAX);
        let k = k.min(rows);
        let wide = k.saturating_mul(self.quant.rerank_factor.max(1)).min(rows);
        let coarse = crate::flat::scan(&self.codes, queries, wide)?;
        let d = self.dim();
        Ok(coarse
            .par_iter()
            .zip(queries.par_chunks_exact(d.max(1)))
            .map(|(hits, q)| rerank(&self.matrix, q, hits.iter().map(|h| h.0), k))
            .collect())
    }
}
