//! Tests of the flat index against brute force, and of bad index files.

use std::path::Path;

use proptest::prelude::*;
use r1s_core::VectorIndex;
use r1s_core::npy::{Dtype, NpyHeader};
use r1s_index::{FlatIndex, IndexError, naive_search};

fn write_npy(path: &Path, dtype: Dtype, rows: usize, dim: usize, data: &[f32]) {
    let mut bytes = NpyHeader::new(dtype, rows as u64, dim as u64).to_bytes();
    match dtype {
        Dtype::F32 => bytes.extend(data.iter().flat_map(|x| x.to_le_bytes())),
        Dtype::F16 => bytes.extend(data.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes())),
    }
    std::fs::write(path, bytes).unwrap();
}

fn matrix(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
    // a small LCG: deterministic, no extra dependency
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..rows * dim)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

fn same(a: &[Vec<(u64, f32)>], b: &[Vec<(u64, f32)>]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len());
        // scores agree position by position; rows too, except that near-equal scores may swap
        let xs: Vec<f32> = x.iter().map(|h| h.1).collect();
        let ys: Vec<f32> = y.iter().map(|h| h.1).collect();
        assert!(xs.iter().zip(&ys).all(|(p, q)| (p - q).abs() < 1e-4));
        let xr: std::collections::HashSet<u64> = x.iter().map(|h| h.0).collect();
        let yr: std::collections::HashSet<u64> = y.iter().map(|h| h.0).collect();
        let common = xr.intersection(&yr).count();
        assert!(common + 1 >= xr.len(), "rows differ beyond a tie at the boundary: {x:?} vs {y:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn flat_equals_brute_force(rows in 1usize..3000, dim in 1usize..40, nq in 1usize..20, k in 0usize..15, seed in any::<u64>()) {
        let dir = tempfile::tempdir().unwrap();
        let data = matrix(rows, dim, seed);
        let path = dir.path().join("e.npy");
        write_npy(&path, Dtype::F32, rows, dim, &data);
        let idx = FlatIndex::open(&path).unwrap();
        let q = matrix(nq, dim, seed ^ 0xabcdef);
        let got = idx.search(&q, k).unwrap();
        let want = naive_search(&data, dim, &q, k);
        same(&got, &want);
        for hits in &got {
            prop_assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1));
            prop_assert_eq!(hits.len(), k.min(rows));
        }
    }
}

/// One to three queries are scanned in blocks split across threads: every row of every block is
/// scored, f32 and f16; and a query's hits are the same, bit for bit, alone or in any batch (a
/// server batches concurrent requests).
#[test]
fn few_queries_over_many_blocks_equal_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let (rows, dim) = (70_003, 37);
    let data = matrix(rows, dim, 11);
    for (dtype, name) in [(Dtype::F32, "f32.npy"), (Dtype::F16, "f16.npy")] {
        let path = dir.path().join(name);
        write_npy(&path, dtype, rows, dim, &data);
        let searched: Vec<f32> = match dtype {
            Dtype::F16 => data.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
            _ => data.clone(),
        };
        let idx = FlatIndex::open(&path).unwrap();
        for nq in 1..=3 {
            let q = matrix(nq, dim, 12 + nq as u64);
            same(&idx.search(&q, 25).unwrap(), &naive_search(&searched, dim, &q, 25));
        }
        let batch = matrix(40, dim, 99);
        let together = idx.search(&batch, 10).unwrap();
        for (i, q) in batch.chunks_exact(dim).enumerate() {
            assert_eq!(idx.search(q, 10).unwrap()[0], together[i], "query {i} alone vs in a batch of 40");
        }
    }
}

#[test]
fn f16_storage_searches_the_rounded_values() {
    let dir = tempfile::tempdir().unwrap();
    let (rows, dim) = (5000, 64);
    let data = matrix(rows, dim, 7);
    let path = dir.path().join("e.npy");
    write_npy(&path, Dtype::F16, rows, dim, &data);
    let rounded: Vec<f32> = data.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
    let q = matrix(10, dim, 8);
    let idx = FlatIndex::open(&path).unwrap();
    same(&idx.search(&q, 10).unwrap(), &naive_search(&rounded, dim, &q, 10));
}

#[test]
fn truncated_and_corrupt_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.npy");
    write_npy(&path, Dtype::F32, 100, 8, &matrix(100, 8, 1));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = FlatIndex::open(&path).unwrap_err();
    assert!(matches!(err, IndexError::BadFile { .. }) && err.to_string().contains("truncated"), "{err}");
    std::fs::write(&path, b"not numpy at all").unwrap();
    assert!(matches!(FlatIndex::open(&path).unwrap_err(), IndexError::BadFile { .. }));
    let idx = {
        write_npy(&path, Dtype::F32, 100, 8, &matrix(100, 8, 1));
        FlatIndex::open(&path).unwrap()
    };
    assert!(matches!(idx.search(&[1.0; 7], 3), Err(IndexError::WrongDimension { .. })));
    let missing = r1s_index::OpenIndex::open(dir.path()).unwrap_err();
    assert!(missing.to_string().contains("not a finished index"), "{missing}");
}

/// Unit vectors around a few hundred centres: neighbourhoods like real embeddings have.
fn clustered(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
    let centres = matrix(200, dim, seed ^ 0x5eed);
    let noise = matrix(rows, dim, seed);
    let mut out = Vec::with_capacity(rows * dim);
    for (r, n) in noise.chunks_exact(dim).enumerate() {
        let c = &centres[(r * 7919 % 200) * dim..][..dim];
        let v: Vec<f32> = c.iter().zip(n).map(|(a, b)| a + 0.5 * b).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.extend(v.iter().map(|x| x / norm));
    }
    out
}

fn graph_dir(dtype: Dtype, rows: usize, dim: usize, seed: u64) -> (tempfile::TempDir, Vec<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let data = clustered(rows, dim, seed);
    write_npy(&dir.path().join("embeddings.npy"), dtype, rows, dim, &data);
    (dir, data)
}

#[test]
fn hnsw_graph_recall_dump_load_and_bad_files() {
    use r1s_core::{Cancel, NoProgress};
    use r1s_index::{HnswIndex, HnswParams, Matrix, recall_at_k};
    let (rows, dim) = (6000, 48);
    for dtype in [Dtype::F32, Dtype::F16] {
        let (dir, data) = graph_dir(dtype, rows, dim, 3);
        let npy = dir.path().join("embeddings.npy");
        let matrix = Matrix::open(&npy).unwrap();
        let params = HnswParams { m: 16, ef_construction: 100, ef_search: 64 };
        let g = HnswIndex::build(&matrix, params, &NoProgress, &Cancel::new()).unwrap();
        let q = clustered(300, dim, 99);
        let exact = FlatIndex::open(&npy).unwrap().search(&q, 10).unwrap();
        let got = g.search(&q, 10).unwrap();
        let recall = recall_at_k(&exact, &got, 10);
        eprintln!("{dtype:?}: recall@10 {recall:.4}, top level {}", g.top_level());
        assert!(recall >= 0.95, "{dtype:?} recall@10 {recall}");
        // scores are the true inner products, best first
        let rounded: Vec<f32> = match dtype {
            Dtype::F32 => data.clone(),
            Dtype::F16 => data.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
        };
        for (hits, qv) in got.iter().zip(q.chunks_exact(dim)) {
            assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1));
            for &(r, s) in hits {
                let want: f32 = rounded[r as usize * dim..][..dim].iter().zip(qv).map(|(a, b)| a * b).sum();
                assert!((s - want).abs() < 1e-4, "row {r}: {s} vs {want}");
            }
        }
        // a larger ef finds at least as much
        assert!(recall_at_k(&exact, &g.search_ef(&q, 10, 200).unwrap(), 10) >= recall - 1e-9);
        // dump → load: the same hits
        g.dump(dir.path()).unwrap();
        let loaded = HnswIndex::load(dir.path(), &npy, dim, rows as u64, params).unwrap();
        assert_eq!(loaded.search(&q, 10).unwrap(), got);
        // a graph over other rows, a truncated or a foreign file: errors, never a crash
        let err = HnswIndex::load(dir.path(), &npy, dim, rows as u64 + 1, params).unwrap_err();
        assert!(matches!(err, IndexError::Mismatch(_)), "{err}");
        let file = dir.path().join(r1s_index::hnsw::GRAPH_FILE);
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 8]).unwrap();
        let err = HnswIndex::load(dir.path(), &npy, dim, rows as u64, params).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        std::fs::write(&file, vec![7u8; bytes.len()]).unwrap();
        let err = HnswIndex::load(dir.path(), &npy, dim, rows as u64, params).unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
        // garbage links after a valid header: searches stay in bounds
        let mut scrambled = bytes.clone();
        for (i, b) in scrambled.iter_mut().enumerate().skip(64) {
            *b = (i as u8).wrapping_mul(151);
        }
        std::fs::write(&file, &scrambled).unwrap();
        let junk = HnswIndex::load(dir.path(), &npy, dim, rows as u64, params).unwrap();
        assert_eq!(junk.search(&q, 10).unwrap().len(), 300);
    }
}

#[test]
fn hnsw_graph_edge_cases() {
    use r1s_core::{Cancel, NoProgress};
    use r1s_index::{HnswIndex, HnswParams, Matrix};
    for rows in [1, 2, 5] {
        let (dir, _) = graph_dir(Dtype::F32, rows, 8, 1);
        let m = Matrix::open(&dir.path().join("embeddings.npy")).unwrap();
        let g = HnswIndex::build(&m, HnswParams::default(), &NoProgress, &Cancel::new()).unwrap();
        let hits = g.search(&clustered(3, 8, 2), 10).unwrap();
        assert!(hits.iter().all(|h| h.len() == rows), "{rows} rows: {hits:?}");
        assert!(g.search(&[0.0; 8], 0).unwrap()[0].is_empty());
        assert!(matches!(g.search(&[0.0; 7], 1), Err(IndexError::WrongDimension { .. })));
    }
    // one thread: the same graph, byte for byte (levels come from a fixed seed)
    let (dir, _) = graph_dir(Dtype::F32, 3000, 16, 4);
    let m = Matrix::open(&dir.path().join("embeddings.npy")).unwrap();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let graph_bytes = |sub: &str| {
        let g = one.install(|| HnswIndex::build(&m, HnswParams::default(), &NoProgress, &Cancel::new())).unwrap();
        let out = dir.path().join(sub);
        std::fs::create_dir_all(&out).unwrap();
        g.dump(&out).unwrap();
        std::fs::read(out.join(r1s_index::hnsw::GRAPH_FILE)).unwrap()
    };
    assert_eq!(graph_bytes("a"), graph_bytes("b"));
    let bad = HnswParams { m: 1, ..HnswParams::default() };
    assert!(matches!(HnswIndex::build(&m, bad, &NoProgress, &Cancel::new()), Err(IndexError::Options(_))));
}

#[test]
fn hnsw_rs_dumps_name_the_distance_old_indexes_were_written_with() {
    // hnsw_rs refuses a dump whose recorded distance type path differs; `hnsw` directories written
    // before r1s had its own graph recorded this one
    assert_eq!(std::any::type_name::<r1s_index::hnsw::DistIp>(), "r1s_index::hnsw::DistIp");
}

/// An index directory `dir` holding `data` as embeddings.npy + a minimal embeddings.json.
fn vectors_dir(dir: &Path, dtype: Dtype, rows: usize, dim: usize, data: &[f32]) {
    std::fs::create_dir_all(dir).unwrap();
    write_npy(&dir.join("embeddings.npy"), dtype, rows, dim, data);
    let meta = serde_json::json!({"rows": rows, "dim": dim, "model": "test", "corpus": "", "corpus_id": "test"});
    std::fs::write(dir.join("embeddings.json"), meta.to_string()).unwrap();
}

#[test]
fn sq8_codes_round_trip_within_half_a_step() {
    use r1s_core::{Cancel, NoProgress};
    use r1s_index::{Matrix, Sq8, sq8};
    let (rows, dim) = (3000, 37);
    let dir = tempfile::tempdir().unwrap();
    let mut data = matrix(rows, dim, 11);
    data[5] = 0.0; // a dimension need not be centred
    for dtype in [Dtype::F32, Dtype::F16] {
        let npy = dir.path().join("e.npy");
        write_npy(&npy, dtype, rows, dim, &data);
        let m = Matrix::open(&npy).unwrap();
        let path = dir.path().join(sq8::CODES_FILE);
        sq8::encode_file(&m, &path, &NoProgress, &Cancel::new()).unwrap();
        let codes = Sq8::open(&path, rows as u64, dim).unwrap();
        assert!(codes.made_from(&m).unwrap());
        let (min, step) = codes.ranges();
        let mut row = Vec::new();
        for r in 0..rows {
            codes.decode(r as u64, &mut row);
            let want = m.row(r as u64);
            for j in 0..dim {
                assert!((row[j] - want[j]).abs() <= step[j] / 2.0 + 1e-6, "row {r} dim {j}: {} vs {}", row[j], want[j]);
                assert!(row[j] >= min[j] - 1e-6);
            }
        }
        // the prepared inner product equals the inner product with the decoded row
        let q = matrix(1, dim, 5);
        let mut scaled = Vec::new();
        let bias = codes.prepare(&q, &mut scaled);
        codes.decode(7, &mut row);
        let c = &codes.codes()[7 * dim..8 * dim];
        let fast = bias + r1s_index::distance::dot_u8(&scaled, c);
        let slow: f32 = row.iter().zip(&q).map(|(a, b)| a * b).sum();
        assert!((fast - slow).abs() < 1e-4, "{fast} vs {slow}");
        // a constant dimension and values outside the trained range still encode
        assert_eq!(sq8::encode_value(3.0, 3.0, 0.0), 0);
        assert_eq!(sq8::encode_value(9.0, 0.0, 0.01), 255);
        assert_eq!(sq8::encode_value(-9.0, 0.0, 0.01), 0);
        assert_eq!(sq8::encode_value(f32::NAN, 0.0, 0.01), 0);
    }
}

#[test]
fn sq8_codes_files_that_are_truncated_or_corrupt_are_errors() {
    use r1s_core::{Cancel, NoProgress};
    use r1s_index::{Matrix, Sq8, sq8};
    let (rows, dim) = (500, 16);
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("e.npy");
    write_npy(&npy, Dtype::F32, rows, dim, &matrix(rows, dim, 2));
    let path = dir.path().join(sq8::CODES_FILE);
    sq8::encode_file(&Matrix::open(&npy).unwrap(), &path, &NoProgress, &Cancel::new()).unwrap();
    let good = std::fs::read(&path).unwrap();
    let open = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        Sq8::open(&path, rows as u64, dim).map(|_| ())
    };
    open(&good).unwrap();
    // every truncation, and a file one byte too long
    for cut in [0, 10, 63, 64, 100, good.len() - 1] {
        let err = open(&good[..cut]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "cut {cut}: {err}");
    }
    let mut long = good.clone();
    long.push(0);
    assert!(open(&long).is_err());
    // header fields mutated: rows, dim, data offset (huge values included), magic, ranges
    for (at, value) in [(8usize, u64::MAX), (8, 1 << 62), (16, u64::from(u32::MAX)), (24, u64::MAX), (24, 0), (0, 7)] {
        let mut bad = good.clone();
        let width = if at == 16 { 4 } else { 8 };
        bad[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        assert!(open(&bad).is_err(), "field at {at} = {value}");
    }
    let mut nan = good.clone();
    nan[64..68].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(open(&nan).unwrap_err().to_string().contains("ranges"));
    let mut neg = good.clone();
    neg[64 + 4 * dim..68 + 4 * dim].copy_from_slice(&(-1.0f32).to_le_bytes());
    assert!(open(&neg).is_err());
    // seeded random byte flips never panic
    let mut s = 0x1234_5678u64;
    for _ in 0..300 {
        let mut bad = good.clone();
        for _ in 0..4 {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let i = (s >> 33) as usize % 200.min(bad.len());
            bad[i] ^= (s >> 17) as u8 | 1;
        }
        let _ = open(&bad);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Flat SQ8 + re-rank returns the exact top-k whenever the re-ranked depth covers every row whose
    /// exact score is within twice the quantization error bound of the k-th best.
    #[test]
    fn flat_sq8_with_rerank_equals_exact(rows in 1usize..1500, dim in 1usize..33, k in 1usize..10, seed in any::<u64>()) {
        use r1s_core::{Cancel, NoProgress};
        use r1s_index::{Matrix, QuantParams, Quantize, Sq8, Sq8FlatIndex, sq8};
        let dir = tempfile::tempdir().unwrap();
        let data = matrix(rows, dim, seed);
        let npy = dir.path().join("e.npy");
        write_npy(&npy, Dtype::F32, rows, dim, &data);
        let m = Matrix::open(&npy).unwrap();
        let path = dir.path().join(sq8::CODES_FILE);
        sq8::encode_file(&m, &path, &NoProgress, &Cancel::new()).unwrap();
        let codes = Sq8::open(&path, rows as u64, dim).unwrap();
        let step = codes.ranges().1.to_vec();
        let q = matrix(4, dim, seed ^ 0x77);
        let exact = naive_search(&data, dim, &q, rows);
        // the depth: rows within 2ε of the k-th exact score, ε = Σ|q_j|·step_j/2 (+ rounding slack)
        let mut depth = k;
        for (qv, all) in q.chunks_exact(dim).zip(&exact) {
            let eps: f32 = qv.iter().zip(&step).map(|(a, s)| a.abs() * s / 2.0).sum::<f32>() + 1e-4;
            let kth = all[k.min(rows) - 1].1;
            depth = depth.max(all.iter().filter(|h| h.1 >= kth - 2.0 * eps).count());
        }
        let quant = QuantParams { quantize: Quantize::Sq8, rerank: true, rerank_factor: depth.div_ceil(k), rerank_top: None };
        let idx = Sq8FlatIndex::new(codes, Matrix::open(&npy).unwrap(), quant).unwrap();
        let got = idx.search(&q, k).unwrap();
        let want: Vec<Vec<(u64, f32)>> = exact.iter().map(|h| h[..k.min(rows)].to_vec()).collect();
        same(&got, &want);
        for hits in &got {
            prop_assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1));
        }
    }
}

#[test]
fn hnsw_sq8_walks_codes_and_reranks_exactly() {
    use r1s_core::{Cancel, NoProgress};
    use r1s_index::{BuildParams, HnswParams, Index, Kind, OpenIndex, QuantParams, Quantize, recall_at_k};
    let (rows, dim) = (6000, 48);
    let tmp = tempfile::tempdir().unwrap();
    let data = clustered(rows, dim, 3);
    let q = clustered(300, dim, 99);
    let dir = tmp.path().join("sq8");
    vectors_dir(&dir, Dtype::F32, rows, dim, &data);
    let exact = FlatIndex::open(&dir.join("embeddings.npy")).unwrap().search(&q, 10).unwrap();
    let p = BuildParams {
        hnsw: HnswParams { m: 16, ef_construction: 100, ef_search: 64 },
        quant: QuantParams { quantize: Quantize::Sq8, ..QuantParams::default() },
        ..BuildParams::default()
    };
    let m = r1s_index::build(&dir, Kind::Hnsw, &p, &NoProgress, &Cancel::new()).unwrap();
    assert_eq!(m.params["quantize"], "sq8");
    assert!(dir.join(r1s_index::CODES_FILE).exists() && !dir.join(r1s_index::CHECKPOINT_FILE).exists());
    let mut idx = OpenIndex::open(&dir).unwrap();
    assert!(matches!(&idx.index, Index::Hnsw { graph, .. } if graph.codes().is_some()));
    let got = idx.search(&q, 10).unwrap();
    let recall = recall_at_k(&exact, &got, 10);
    eprintln!("hnsw sq8 + re-rank recall@10 {recall:.4}");
    assert!(recall >= 0.95, "recall@10 {recall}");
    // re-ranked scores are the exact inner products, best first
    for (hits, qv) in got.iter().zip(q.chunks_exact(dim)) {
        assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1));
        for &(r, s) in hits {
            let want: f32 = data[r as usize * dim..][..dim].iter().zip(qv).map(|(a, b)| a * b).sum();
            assert!((s - want).abs() < 1e-4, "row {r}: {s} vs {want}");
        }
    }
    // --rerank-top: all ef candidates (or more) is the default; only the k best by code score
    // re-ranked is a re-ordering of the codes' own top k, exact scores, at a recall between the two
    idx.set_rerank_top(Some(usize::MAX));
    assert_eq!(idx.search(&q, 10).unwrap(), got);
    idx.set_rerank_top(Some(10));
    let few = idx.search(&q, 10).unwrap();
    idx.set_rerank(false);
    let coarse = idx.search(&q, 10).unwrap();
    for ((f, c), qv) in few.iter().zip(&coarse).zip(q.chunks_exact(dim)) {
        let mut fr: Vec<u64> = f.iter().map(|h| h.0).collect();
        let mut cr: Vec<u64> = c.iter().map(|h| h.0).collect();
        fr.sort_unstable();
        cr.sort_unstable();
        assert_eq!(fr, cr);
        for &(r, s) in f {
            let want: f32 = data[r as usize * dim..][..dim].iter().zip(qv).map(|(a, b)| a * b).sum();
            assert!((s - want).abs() < 1e-4, "row {r}: {s} vs {want}");
        }
    }
    idx.set_rerank(true);
    idx.set_rerank_top(None);
    assert_eq!(idx.search(&q, 10).unwrap(), got);
    // without re-ranking: code scores, close to the exact ones
    idx.set_rerank(false);
    let coarse = idx.search(&q, 10).unwrap();
    assert!(recall_at_k(&exact, &coarse, 10) > 0.8);
    // flat sq8 in the same directory: the HNSW graph goes, the codes stay
    let pf = BuildParams {
        quant: QuantParams { quantize: Quantize::Sq8, ..QuantParams::default() },
        ..BuildParams::default()
    };
    r1s_index::build(&dir, Kind::Flat, &pf, &NoProgress, &Cancel::new()).unwrap();
    assert!(!dir.join(r1s_index::hnsw::GRAPH_FILE).exists());
    let flat = OpenIndex::open(&dir).unwrap();
    assert!(matches!(flat.index, Index::FlatSq8 { .. }));
    assert!(recall_at_k(&exact, &flat.search(&q, 10).unwrap(), 10) >= 0.99);
    // a k far beyond the rows (times the re-rank factor) returns every row, sized by the rows
    assert_eq!(flat.search(&q[..dim], 1_000_000_000).unwrap()[0].len(), rows);
    // mapped and resident bytes of the index's files are visible
    // embeddings.npy is mapped once, shared by the codes' re-ranking and the exact twin (#36)
    drop(idx); // (mappings are counted per process)
    let npy_len = std::fs::metadata(dir.join("embeddings.npy")).unwrap().len();
    let once = |idx: &OpenIndex| {
        let mem = idx.memory().unwrap();
        let e = mem.iter().find(|f| f.path.ends_with("embeddings.npy")).expect("embeddings.npy mapped");
        assert!(e.mapped_bytes >= npy_len && e.mapped_bytes < npy_len + 8192, "mapped twice? {mem:?} vs {npy_len}");
    };
    once(&flat);
    let hnsw_dir = dir.with_extension("hnsw");
    std::fs::create_dir_all(&hnsw_dir).unwrap();
    for f in ["embeddings.npy", "embeddings.json"] {
        std::fs::copy(dir.join(f), hnsw_dir.join(f)).unwrap();
    }
    r1s_index::build(&hnsw_dir, Kind::Hnsw, &pf, &NoProgress, &Cancel::new()).unwrap();
    once(&OpenIndex::open(&hnsw_dir).unwrap());
    std::fs::remove_dir_all(&hnsw_dir).unwrap();
    // damaged codes are kept by a resuming rebuild (same embeddings) but re-encoded by --no-resume
    drop(flat);
    let codes_path = dir.join(r1s_index::CODES_FILE);
    let mut bytes = std::fs::read(&codes_path).unwrap();
    bytes[64 + 4 * dim..64 + 8 * dim].fill(0); // every step 0: all rows decode to the minimum
    std::fs::write(&codes_path, &bytes).unwrap();
    let fresh = BuildParams { resume: false, ..pf.clone() };
    r1s_index::build(&dir, Kind::Flat, &fresh, &NoProgress, &Cancel::new()).unwrap();
    assert!(recall_at_k(&exact, &OpenIndex::open(&dir).unwrap().search(&q, 10).unwrap(), 10) >= 0.99);
    // an unquantized rebuild drops the codes; quantization is refused for other kinds
    r1s_index::build(&dir, Kind::Flat, &BuildParams::default(), &NoProgress, &Cancel::new()).unwrap();
    assert!(!dir.join(r1s_index::CODES_FILE).exists());
    let err = r1s_index::build(&dir, Kind::HnswRs, &pf, &NoProgress, &Cancel::new()).unwrap_err();
    assert!(matches!(err, IndexError::Options(_)), "{err}");
}

/// Cancels its job once `after` items of the graph build have been reported.
struct CancelAfter<'a> {
    cancel: &'a r1s_core::Cancel,
    after: u64,
    seen: std::sync::atomic::AtomicU64,
}

impl r1s_core::Progress for CancelAfter<'_> {
    fn start(&self, stage: &str, _: Option<u64>, _: r1s_core::Unit) {
        // other stages (the SQ8 encoding) do not count
        let from = if stage == "hnsw build" { 0 } else { u64::MAX / 2 };
        self.seen.store(from, std::sync::atomic::Ordering::Relaxed);
    }
    fn advance(&self, delta: u64) {
        let before = self.seen.fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
        if before < u64::MAX / 2 && before + delta >= self.after {
            self.cancel.cancel();
        }
    }
}

#[test]
fn an_interrupted_graph_build_resumes_to_the_same_graph() {
    use r1s_core::{Cancel, NoProgress};
    use r1s_index::{BuildParams, HnswParams, Kind, OpenIndex, QuantParams, Quantize, recall_at_k};
    let (rows, dim) = (5000, 24);
    let data = clustered(rows, dim, 8);
    let q = clustered(200, dim, 42);
    let tmp = tempfile::tempdir().unwrap();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    for quantize in [Quantize::None, Quantize::Sq8] {
        let p = BuildParams {
            hnsw: HnswParams { m: 12, ef_construction: 60, ef_search: 64 },
            quant: QuantParams { quantize, ..QuantParams::default() },
            checkpoint_every: 1500,
            ..BuildParams::default()
        };
        let whole = tmp.path().join(format!("whole-{quantize:?}"));
        vectors_dir(&whole, Dtype::F32, rows, dim, &data);
        one.install(|| r1s_index::build(&whole, Kind::Hnsw, &p, &NoProgress, &Cancel::new())).unwrap();
        // cancelled after the second chunk: a checkpoint and no manifest are left
        let cut = tmp.path().join(format!("cut-{quantize:?}"));
        vectors_dir(&cut, Dtype::F32, rows, dim, &data);
        let cancel = Cancel::new();
        let stop = CancelAfter { cancel: &cancel, after: 2500, seen: Default::default() };
        let err = one.install(|| r1s_index::build(&cut, Kind::Hnsw, &p, &stop, &cancel)).unwrap_err();
        assert!(matches!(err, IndexError::Cancelled), "{err}");
        assert!(cut.join(r1s_index::CHECKPOINT_FILE).exists());
        assert!(!cut.join("manifest.json").exists() && !cut.join(r1s_index::hnsw::GRAPH_FILE).exists());
        // the rerun continues from it, to the very same graph
        one.install(|| r1s_index::build(&cut, Kind::Hnsw, &p, &NoProgress, &Cancel::new())).unwrap();
        assert!(!cut.join(r1s_index::CHECKPOINT_FILE).exists());
        let graph = |d: &Path| std::fs::read(d.join(r1s_index::hnsw::GRAPH_FILE)).unwrap();
        assert!(graph(&whole) == graph(&cut), "{quantize:?}: the resumed graph differs");
        let exact = FlatIndex::open(&cut.join("embeddings.npy")).unwrap().search(&q, 10).unwrap();
        let recall = recall_at_k(&exact, &OpenIndex::open(&cut).unwrap().search(&q, 10).unwrap(), 10);
        assert!(recall >= 0.95, "{quantize:?}: recall@10 {recall}");
    }
    // a checkpoint for other settings, or a corrupt one, is not resumed: the build starts over
    let dir = tmp.path().join("stale");
    vectors_dir(&dir, Dtype::F32, rows, dim, &data);
    let p = BuildParams {
        hnsw: HnswParams { m: 12, ef_construction: 60, ef_search: 64 },
        checkpoint_every: 1500,
        ..BuildParams::default()
    };
    let cancel = Cancel::new();
    let stop = CancelAfter { cancel: &cancel, after: 2500, seen: Default::default() };
    assert!(one.install(|| r1s_index::build(&dir, Kind::Hnsw, &p, &stop, &cancel)).is_err());
    let ckpt = dir.join(r1s_index::CHECKPOINT_FILE);
    let saved = std::fs::read(&ckpt).unwrap();
    let other = BuildParams { hnsw: HnswParams { m: 10, ..p.hnsw }, ..p.clone() };
    one.install(|| r1s_index::build(&dir, Kind::Hnsw, &other, &NoProgress, &Cancel::new())).unwrap();
    for (at, byte) in [(200usize, 0xffu8), (saved.len() - 3, 1), (20, 0x7f)] {
        let mut bad = saved.clone();
        bad[at] ^= byte;
        std::fs::write(&ckpt, &bad).unwrap();
        one.install(|| r1s_index::build(&dir, Kind::Hnsw, &p, &NoProgress, &Cancel::new())).unwrap();
        let exact = FlatIndex::open(&dir.join("embeddings.npy")).unwrap().search(&q, 10).unwrap();
        let recall = recall_at_k(&exact, &OpenIndex::open(&dir).unwrap().search(&q, 10).unwrap(), 10);
        assert!(recall >= 0.95, "after a corrupt checkpoint (byte {at}): recall@10 {recall}");
    }
    // a count of inserted nodes that the lists contradict (all rows "inserted" half-way through)
    let mut bad = saved.clone();
    bad[48..52].copy_from_slice(&(rows as u32).to_le_bytes());
    std::fs::write(&ckpt, &bad).unwrap();
    one.install(|| r1s_index::build(&dir, Kind::Hnsw, &p, &NoProgress, &Cancel::new())).unwrap();
    let exact = FlatIndex::open(&dir.join("embeddings.npy")).unwrap().search(&q, 10).unwrap();
    let recall = recall_at_k(&exact, &OpenIndex::open(&dir).unwrap().search(&q, 10).unwrap(), 10);
    assert!(recall >= 0.95, "after a checkpoint claiming every node: recall@10 {recall}");
    std::fs::write(&ckpt, &saved[..saved.len() / 2]).unwrap();
    one.install(|| r1s_index::build(&dir, Kind::Hnsw, &p, &NoProgress, &Cancel::new())).unwrap();
}

/// The child side of [`a_graph_build_killed_mid_way_resumes`]: builds the index in the directory
/// named by R1S_KILL_TEST_DIR, slowly enough to be killed (does nothing in a normal run).
#[test]
fn child_build_for_the_kill_test() {
    use r1s_core::{Cancel, NoProgress};
    use r1s_index::{BuildParams, HnswParams, Kind};
    let Some(dir) = std::env::var_os("R1S_KILL_TEST_DIR") else { return };
    let p = BuildParams {
        hnsw: HnswParams { m: 16, ef_construction: 400, ef_search: 64 },
        checkpoint_every: 2000,
        ..BuildParams::default()
    };
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    one.install(|| r1s_index::build(Path::new(&dir), Kind::Hnsw, &p, &NoProgress, &Cancel::new())).unwrap();
}

#[test]
fn a_graph_build_killed_mid_way_resumes() {
    use r1s_core::Cancel;
    use r1s_index::{BuildParams, HnswParams, Kind, OpenIndex, recall_at_k};
    let (rows, dim) = (20_000, 32);
    let data = clustered(rows, dim, 21);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("killed");
    vectors_dir(&dir, Dtype::F32, rows, dim, &data);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_build_for_the_kill_test", "--nocapture", "--test-threads", "1"])
        .env("R1S_KILL_TEST_DIR", &dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = dir.join(r1s_index::CHECKPOINT_FILE);
    let started = std::time::Instant::now();
    while !ckpt.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the child build ended before its first checkpoint");
        assert!(started.elapsed().as_secs() < 120, "no checkpoint after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!dir.join("manifest.json").exists(), "a killed build must not look finished");
    let p = BuildParams {
        hnsw: HnswParams { m: 16, ef_construction: 400, ef_search: 64 },
        checkpoint_every: 2000,
        ..BuildParams::default()
    };
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let seen = std::sync::atomic::AtomicU64::new(0);
    struct Count<'a>(&'a std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64);
    impl r1s_core::Progress for Count<'_> {
        fn advance(&self, d: u64) {
            // the first report is where the build starts
            if self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                self.0.store(d, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    one.install(|| r1s_index::build(&dir, Kind::Hnsw, &p, &Count(&seen, Default::default()), &Cancel::new())).unwrap();
    let resumed_at = seen.load(std::sync::atomic::Ordering::Relaxed);
    assert!(resumed_at >= 2000, "the rerun started at node {resumed_at}, not from the checkpoint");
    let q = clustered(200, dim, 5);
    let exact = FlatIndex::open(&dir.join("embeddings.npy")).unwrap().search(&q, 10).unwrap();
    let recall = recall_at_k(&exact, &OpenIndex::open(&dir).unwrap().search(&q, 10).unwrap(), 10);
    assert!(recall >= 0.95, "recall@10 {recall} after a resumed build");
}

/// #36: the embeddings' fingerprint reads the whole file (a change in the middle, past the first
/// and last 64 KiB, is seen), and `up_to_date` takes a finished index as built only for the same
/// kind, parameters and embeddings.
#[test]
fn fingerprint_covers_the_whole_file_and_up_to_date_sees_every_change() {
    use r1s_core::{Cancel, NoProgress};
    use r1s_index::{BuildParams, HnswParams, Kind, Matrix, sq8};
    let (rows, dim) = (2000, 64); // 512 KB of f32: the middle is past both 64 KiB ends
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("idx");
    let data = matrix(rows, dim, 3);
    vectors_dir(&dir, Dtype::F32, rows, dim, &data);
    let npy = dir.join("embeddings.npy");
    let before = sq8::fingerprint(&Matrix::open(&npy).unwrap()).unwrap();
    let p = BuildParams::default();
    let built = r1s_index::build(&dir, Kind::Hnsw, &p, &NoProgress, &Cancel::new()).unwrap();
    assert_eq!(built.embeddings_fingerprint, Some(format!("{before:016x}")));
    let up = r1s_index::up_to_date(&dir, &npy, Kind::Hnsw, &p).unwrap();
    assert!(matches!(&up, Some(r1s_index::Current::Same(m)) if m.params == built.params), "{up:?}");
    // a search-time setting alone: the same graph, a manifest to rewrite
    let ef = BuildParams { hnsw: HnswParams { ef_search: 128, ..p.hnsw }, ..p.clone() };
    match r1s_index::up_to_date(&dir, &npy, Kind::Hnsw, &ef).unwrap() {
        Some(current @ r1s_index::Current::Retuned { .. }) => {
            assert_eq!(current.changes(), vec![("ef_search", serde_json::json!(64), serde_json::json!(128))]);
            let m = current.manifest().clone();
            assert_eq!(m.params["ef_search"], 128);
            assert_eq!(m.params["m"], built.params["m"]);
            let graph = std::fs::read(dir.join(r1s_index::hnsw::GRAPH_FILE)).unwrap();
            r1s_index::write_manifest(&dir, &m).unwrap();
            let opened = r1s_index::OpenIndex::open(&dir).unwrap();
            assert_eq!(opened.manifest.params["ef_search"], 128);
            assert_eq!(std::fs::read(dir.join(r1s_index::hnsw::GRAPH_FILE)).unwrap(), graph);
            assert!(matches!(
                r1s_index::up_to_date(&dir, &npy, Kind::Hnsw, &ef).unwrap(),
                Some(r1s_index::Current::Same(_))
            ));
            r1s_index::write_manifest(&dir, &built).unwrap();
        }
        other => panic!("an ef_search change should retune, not {other:?}"),
    }
    // another kind or another parameter: not up to date
    assert!(r1s_index::up_to_date(&dir, &npy, Kind::Flat, &p).unwrap().is_none());
    let m16 = BuildParams { hnsw: HnswParams { m: 16, ..p.hnsw }, ..p.clone() };
    assert!(r1s_index::up_to_date(&dir, &npy, Kind::Hnsw, &m16).unwrap().is_none());
    // one float in the middle of the file changed, same size
    let mut bytes = std::fs::read(&npy).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let changed = dir.join("changed.npy");
    std::fs::write(&changed, &bytes).unwrap();
    let after = sq8::fingerprint(&Matrix::open(&changed).unwrap()).unwrap();
    assert_ne!(before, after, "a change in the middle went unseen");
    std::fs::rename(&changed, &npy).unwrap();
    assert!(r1s_index::up_to_date(&dir, &npy, Kind::Hnsw, &p).unwrap().is_none());
    // a damaged graph: not up to date either
    let rebuilt = r1s_index::build(&dir, Kind::Hnsw, &p, &NoProgress, &Cancel::new()).unwrap();
    assert_eq!(rebuilt.embeddings_fingerprint, Some(format!("{after:016x}")));
    let graph = dir.join(r1s_index::hnsw::GRAPH_FILE);
    let g = std::fs::read(&graph).unwrap();
    std::fs::write(&graph, &g[..g.len() - 4]).unwrap();
    assert!(r1s_index::up_to_date(&dir, &npy, Kind::Hnsw, &p).unwrap().is_none());
}

/// What a build says it needs on disk (`disk_needed`) is what it writes: the SQ8 codes and, while it
/// checkpoints, the graph twice; and a build that cannot fit refuses at its start (StorageFull,
/// naming the directory) instead of failing hours later.
#[test]
fn a_build_sizes_its_disk_and_refuses_what_cannot_fit() {
    use r1s_core::{Cancel, NoProgress};
    use r1s_index::{BuildParams, HnswParams, Kind, Matrix, QuantParams, Quantize, disk_needed};
    let (rows, dim) = (3000, 16);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    vectors_dir(&dir, Dtype::F32, rows, dim, &clustered(rows, dim, 5));
    let p = BuildParams {
        hnsw: HnswParams { m: 12, ef_construction: 40, ef_search: 32 },
        quant: QuantParams { quantize: Quantize::Sq8, ..QuantParams::default() },
        ..BuildParams::default()
    };
    let m = Matrix::open(&dir.join("embeddings.npy")).unwrap();
    let codes = (rows * dim + 64 + 8 * dim) as u64;
    let graph = (r1s_index::plan::graph_words(rows as u64, 12) * 4.0) as u64;
    assert_eq!(disk_needed(&dir, Kind::Hnsw, &m, &p), codes + 2 * graph, "checkpointed by time: two graphs");
    let never = BuildParams { checkpoint_every: u64::MAX, checkpoint_interval: None, ..p.clone() };
    assert_eq!(disk_needed(&dir, Kind::Hnsw, &m, &never), codes + graph);
    assert_eq!(disk_needed(&dir, Kind::Flat, &m, &never), codes);
    assert_eq!(disk_needed(&dir, Kind::Flat, &m, &BuildParams::default()), 0);
    r1s_index::build(&dir, Kind::Hnsw, &p, &NoProgress, &Cancel::new()).unwrap();
    let len = |f: &str| std::fs::metadata(dir.join(f)).unwrap().len();
    assert_eq!(len(r1s_index::CODES_FILE), codes);
    // the graph's upper levels are random: its size is the expectation's within a few percent
    let got = len(r1s_index::hnsw::GRAPH_FILE) as f64;
    assert!((got / graph as f64 - 1.0).abs() < 0.03, "graph {got} bytes, expected about {graph}");
    // codes a resumed build keeps are not counted again
    assert_eq!(disk_needed(&dir, Kind::Hnsw, &m, &never), graph);

    // vectors whose codes alone exceed the free space (a sparse file: nothing is written): refused
    // at once, before any encoding
    let free = fs4::available_space(tmp.path()).unwrap();
    let big = tmp.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    let (rows, dim) = (free / 1024 + 1024, 1024u64);
    let header = NpyHeader::new(Dtype::F16, rows, dim).to_bytes();
    let f = std::fs::File::create(big.join("embeddings.npy")).unwrap();
    if f.set_len(header.len() as u64 + rows * dim * 2).is_err() {
        return; // a file system without sparse files this large: the first part above still ran
    }
    std::io::Write::write_all(&mut &f, &header).unwrap();
    let meta = serde_json::json!({"rows": rows, "dim": dim, "model": "test", "corpus": "", "corpus_id": "test"});
    std::fs::write(big.join("embeddings.json"), meta.to_string()).unwrap();
    let err = r1s_index::build(&big, Kind::Flat, &p, &NoProgress, &Cancel::new()).unwrap_err();
    match &err {
        IndexError::Io { path, source } => {
            assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{err}");
            assert_eq!(path, &big);
            assert!(err.to_string().contains("are available") && err.to_string().contains("(the SQ8 codes)"), "{err}");
        }
        other => panic!("not a StorageFull error: {other}"),
    }
    assert!(!big.join(r1s_index::CODES_FILE).exists());
}
