//! Criterion benches of the indexes on the real MiniLM vectors of R1-Searcher's 14,372 passages
//! (the fixture built by `cargo test --test pipeline` or tools/bench-index) with 200 of those
//! vectors as queries: flat queries/s, build time and queries/s at several ef values of r1s's HNSW
//! graph and of the hnsw_rs one, with recall@10 printed. `cargo bench --bench index`.

use r1s_core::{Cancel, NoProgress, VectorIndex};
use r1s_index::{FlatIndex, HnswIndex, HnswParams, HnswRsIndex, Matrix};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const QUERIES: u64 = 200;
const K: usize = 10;
const EFS: [usize; 3] = [16, 32, 64];

fn benches(c: &mut Criterion) {
    let path = r1s_core::paths::r1s_home().join("fixtures/r1-passages-v2/index/embeddings.npy");
    let matrix = Matrix::open(&path).expect("the fixture (run `cargo test --test pipeline` once)");
    let flat = FlatIndex::open(&path).expect("flat");
    // queries: every 71st passage vector (they are unit vectors of the same model)
    let mut q = Vec::new();
    for i in 0..QUERIES {
        q.extend(matrix.row(i * 71 % matrix.rows()));
    }
    let exact = flat.search(&q, K).expect("flat search");

    let mut g = c.benchmark_group("index");
    g.sample_size(10);
    g.throughput(Throughput::Elements(QUERIES));
    g.bench_function("flat_search", |b| b.iter(|| flat.search(&q, K).expect("search").len()));
    let params = HnswParams::default();
    g.throughput(Throughput::Elements(matrix.rows()));
    g.bench_function("hnsw_build_m32_efc200", |b| {
        b.iter(|| HnswIndex::build(&matrix, params, &NoProgress, &Cancel::new()).expect("build").len())
    });
    g.bench_function("hnsw_rs_build_m32_efc200", |b| {
        b.iter(|| HnswRsIndex::build(&matrix, params, &NoProgress, &Cancel::new()).expect("build").len())
    });
    let hnsw = HnswIndex::build(&matrix, params, &NoProgress, &Cancel::new()).expect("build");
    let hnsw_rs = HnswRsIndex::build(&matrix, params, &NoProgress, &Cancel::new()).expect("build");
    g.throughput(Throughput::Elements(QUERIES));
    for ef in EFS {
        let approx = hnsw.search_ef(&q, K, ef).expect("search");
        let approx_rs = hnsw_rs.search_ef(&q, K, ef).expect("search");
        eprintln!(
            "ef={ef}: recall@{K} hnsw {:.4}, hnsw-rs {:.4}",
            r1s_index::recall_at_k(&exact, &approx, K),
            r1s_index::recall_at_k(&exact, &approx_rs, K)
        );
        g.bench_with_input(BenchmarkId::new("hnsw_search_ef", ef), &ef, |b, &ef| {
            b.iter(|| hnsw.search_ef(&q, K, ef).expect("search").len())
        });
        g.bench_with_input(BenchmarkId::new("hnsw_rs_search_ef", ef), &ef, |b, &ef| {
            b.iter(|| hnsw_rs.search_ef(&q, K, ef).expect("search").len())
        });
    }
    g.finish();
}

criterion_group!(index, benches);
criterion_main!(index);
