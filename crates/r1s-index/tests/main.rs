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
