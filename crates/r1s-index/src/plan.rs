//! Sizing an index before building it: RAM and disk for the vectors, the SQ8 codes, the HNSW graph
//! and the passage store, and the graph build's time, for any rows × dim (`r1s index plan`).
//!
//! Sizes come from the file layouts (exact up to the graph's random levels, whose expected count is
//! used); build times from the scaling measured by `tools/bench-scale` (see [`BUILD_SECONDS`]).

use r1s_core::npy::Dtype;
use serde::Serialize;

use crate::Kind;
use crate::sq8::Quantize;

/// Seconds of one HNSW insert on one thread of the machine `tools/bench-scale` ran on, at M 32,
/// efConstruction 100 and 384 dimensions, as `a + b · log2(rows)`: (f32 vectors, SQ8 codes). A
/// build of `rows` on `t` threads takes about `rows × (a + b·log2 rows) × (dim/384) × (efC/100) /
/// t`. Least-squares fit to 2-thread builds of the 384-dim proxy set (2 cores of an AMD EPYC,
/// 2026-11-29): f32 11.0 / 35.6 / 123.5 s and SQ8 7.4 / 24.1 / 80.8 s at 100k / 300k / 1M rows
/// (the fit gives 11.1 / 35.2 / 124.2 and 7.5 / 23.5 / 81.8). Beyond 1M rows it extrapolates, and
/// vectors that do not fit in RAM (f32) make it optimistic.
pub const BUILD_SECONDS: [(f64, f64); 2] = [(8.723e-5, 8.087e-6), (8.309e-5, 4.037e-6)];

/// What to size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanInput {
    pub rows: u64,
    pub dim: usize,
    /// Storage type of `embeddings.npy`.
    pub dtype: Dtype,
    pub kind: Kind,
    pub quantize: Quantize,
    /// HNSW links per node (twice as many at level 0).
    pub m: usize,
    pub ef_construction: usize,
    /// Mean bytes of a passage's text with its title (the sample corpus: about 600 for 100 words).
    pub passage_bytes: u64,
    pub threads: usize,
}

/// Bytes and seconds of one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Plan {
    /// `embeddings.npy`.
    pub vectors_bytes: u64,
    /// `codes.sq8` (0 unquantized).
    pub codes_bytes: u64,
    /// `hnsw.r1s` (0 for flat), with the expected upper-level lists.
    pub graph_bytes: u64,
    /// The passage store: the docstore's text and offsets plus `passages.parquet` (zstd, about
    /// 0.45 of the text).
    pub docstore_bytes: u64,
    /// Everything on disk.
    pub disk_bytes: u64,
    /// What a server keeps resident to search at full speed: the graph and what it is walked over
    /// (the vectors, or the codes); re-ranked rows and passages come from the page cache per hit.
    pub serve_ram_bytes: u64,
    /// Peak memory of the build: the graph as it is built and what it is walked over, plus a block
    /// of the encoding pass for SQ8.
    pub build_ram_bytes: u64,
    /// Expected graph build time (encoding and embedding not included); 0 for flat.
    pub build_seconds: f64,
}

/// Expected words of an HNSW graph file of `rows` at `m` (see [`crate::hnsw`]): the header, levels
/// and upper-list offsets, `rows × (2M + 1)` level-0 words, and `(M + 1)` words per upper level, of
/// which a node has `1 / (M − 1)` on average (levels are geometric with ratio `1/M`).
pub fn graph_words(rows: u64, m: usize) -> f64 {
    let (n, m) = (rows as f64, m.max(2) as f64);
    16.0 + 2.0 * n + n * (2.0 * m + 1.0) + n * (m + 1.0) / (m - 1.0)
}

/// Sizes one configuration.
pub fn plan(p: &PlanInput) -> Plan {
    let n = p.rows as f64;
    let vectors = n * p.dim as f64 * p.dtype.size() as f64 + 128.0;
    let codes = if p.quantize == Quantize::Sq8 { n * p.dim as f64 + 64.0 + 8.0 * p.dim as f64 } else { 0.0 };
    let hnsw = p.kind == Kind::Hnsw;
    let graph = if hnsw { 4.0 * graph_words(p.rows, p.m) } else { 0.0 };
    let docstore = n * (p.passage_bytes as f64 * 1.45 + 8.0);
    let walked = if p.quantize == Quantize::Sq8 { codes } else { vectors };
    // flat has no build beyond the SQ8 encoding, which holds a 16 MiB block and its codes
    let build_ram =
        if hnsw { graph + walked } else { 0.0 } + if p.quantize == Quantize::Sq8 { 32.0 * 1048576.0 } else { 0.0 };
    let build_seconds = if hnsw && p.rows > 1 {
        let (a, b) = BUILD_SECONDS[usize::from(p.quantize == Quantize::Sq8)];
        let per = (a + b * n.log2()).max(0.0);
        n * per * (p.dim as f64 / 384.0) * (p.ef_construction as f64 / 100.0) / p.threads.max(1) as f64
    } else {
        0.0
    };
    Plan {
        vectors_bytes: vectors as u64,
        codes_bytes: codes as u64,
        graph_bytes: graph as u64,
        docstore_bytes: docstore as u64,
        disk_bytes: (vectors + codes + graph + docstore) as u64,
        serve_ram_bytes: (graph + walked) as u64,
        build_ram_bytes: build_ram as u64,
        build_seconds,
    }
}

/// The configurations `r1s index plan` compares: flat and HNSW over f32 and f16 vectors, and over SQ8
/// codes re-ranked from f32 or f16 vectors (`sq8/f16`).
pub fn candidates(base: &PlanInput) -> Vec<(String, PlanInput)> {
    let mut out = Vec::new();
    for kind in [Kind::Flat, Kind::Hnsw] {
        for (name, dtype, quantize) in [
            ("f32", Dtype::F32, Quantize::None),
            ("f16", Dtype::F16, Quantize::None),
            ("sq8/f32", Dtype::F32, Quantize::Sq8),
            ("sq8/f16", Dtype::F16, Quantize::Sq8),
        ] {
            let label = match kind {
                Kind::Hnsw => format!("hnsw M{} {name}", base.m),
                _ => format!("flat {name}"),
            };
            out.push((label, PlanInput { kind, dtype, quantize, ..*base }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HNSW M 32 / efConstruction 100 over f32 vectors (the configuration tools/bench-scale measured).
    fn hnsw_f32(rows: u64, dim: usize, threads: usize) -> PlanInput {
        PlanInput {
            rows,
            dim,
            dtype: Dtype::F32,
            kind: Kind::Hnsw,
            quantize: Quantize::None,
            m: 32,
            ef_construction: 100,
            passage_bytes: 600,
            threads,
        }
    }

    #[test]
    fn graph_words_match_a_built_layout_on_average() {
        // 1M rows at M 32: 16 + 2n + 65n + 33n/31 words
        let w = graph_words(1_000_000, 32);
        assert!((w - (16.0 + 67e6 + 33e6 / 31.0)).abs() < 1.0);
    }

    #[test]
    fn build_times_reproduce_the_measured_million_row_builds() {
        let base = hnsw_f32(1_000_000, 384, 2);
        for (quantize, measured) in [(Quantize::None, 123.5), (Quantize::Sq8, 80.8)] {
            let got = plan(&PlanInput { quantize, ..base }).build_seconds;
            assert!((got / measured - 1.0).abs() < 0.05, "{quantize:?}: {got:.1} s vs {measured} s measured");
        }
        assert_eq!(plan(&PlanInput { kind: Kind::Flat, ..base }).build_seconds, 0.0);
    }

    #[test]
    fn sq8_serves_in_about_a_quarter_of_the_f32_vectors() {
        let base = hnsw_f32(21_015_324, 768, 16);
        let f32 = plan(&base);
        let sq8 = plan(&PlanInput { quantize: Quantize::Sq8, ..base });
        assert_eq!(f32.vectors_bytes / 1_000_000_000, 64); // the 64.6 GB users report
        assert!(sq8.serve_ram_bytes < f32.serve_ram_bytes / 2);
        assert_eq!(sq8.codes_bytes, (21_015_324u64 * 768) + 64 + 8 * 768);
    }
}
