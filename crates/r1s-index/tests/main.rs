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
