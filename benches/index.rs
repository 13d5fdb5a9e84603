//! Criterion benches of the indexes on the real MiniLM vectors of R1-Searcher's 14,372 passages
//! (the fixture built by `cargo test --test pipeline` or tools/bench-index) with 200 of those
//! vectors as queries: flat queries/s, build time and queries/s at several ef values of r1s's HNSW
//! graph (over the f32 vectors and over SQ8 codes with exact re-ranking) and of the hnsw_rs one, and
//! the SQ8 kernels against the f32 ones, with recall@10 printed. `cargo bench --bench index`.

use r1s_core::{Cancel, NoProgress, VectorIndex};
use r1s_index::{Checkpoints, FlatIndex, HnswIndex, HnswParams, HnswRsIndex, Matrix, QuantParams, Sq8, sq8};

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
    // SQ8 codes in a temporary directory, and the graph walked over them
    let tmp = tempfile::tempdir().expect("tempdir");
    let codes_path = tmp.path().join(sq8::CODES_FILE);
    sq8::encode_file(&matrix, &codes_path, &NoProgress, &Cancel::new()).expect("encode");
    let open_codes = || Sq8::open(&codes_path, matrix.rows(), matrix.dim()).expect("codes");
    let codes = open_codes();
    let sq8_build = |c: Sq8| {
        HnswIndex::build_with(
            &matrix,
            params,
            Some(c),
            QuantParams::default(),
            &Checkpoints::default(),
            &NoProgress,
            &Cancel::new(),
        )
        .expect("build")
    };
    g.throughput(Throughput::Elements(matrix.rows()));
    g.bench_function("hnsw_sq8_build_m32_efc200", |b| b.iter(|| sq8_build(open_codes()).len()));
    let hnsw_sq8 = sq8_build(open_codes());
    // the kernels: one query against every row, f32 `dot4` vs SQ8 `dot4_u8`
    let d = matrix.dim();
    let mut rows_f32 = Vec::new();
    let rows_f32 = matrix.block(0, 4096, &mut rows_f32).to_vec();
    let mut scaled = Vec::new();
    let bias = codes.prepare(&q[..d], &mut scaled);
    g.throughput(Throughput::Elements(4096));
    g.bench_function("kernel_dot4_f32_4096_rows", |b| {
        b.iter(|| {
            rows_f32
                .chunks_exact(4 * d)
                .map(|r| {
                    r1s_index::distance::dot4(&q[..d], [&r[..d], &r[d..2 * d], &r[2 * d..3 * d], &r[3 * d..]])
                        .into_iter()
                        .sum::<f32>()
                })
                .sum::<f32>()
        })
    });
    let rows_u8 = &codes.codes()[..4096 * d];
    g.bench_function("kernel_dot4_sq8_4096_rows", |b| {
        b.iter(|| {
            bias + rows_u8
                .chunks_exact(4 * d)
                .map(|r| {
                    r1s_index::distance::dot4_u8(&scaled, [&r[..d], &r[d..2 * d], &r[2 * d..3 * d], &r[3 * d..]])
                        .into_iter()
                        .sum::<f32>()
                })
                .sum::<f32>()
        })
    });
    let hnsw_rs = HnswRsIndex::build(&matrix, params, &NoProgress, &Cancel::new()).expect("build");
    g.throughput(Throughput::Elements(QUERIES));
    for ef in EFS {
        let approx = hnsw.search_ef(&q, K, ef).expect("search");
        let approx_rs = hnsw_rs.search_ef(&q, K, ef).expect("search");
        let approx_sq8 = hnsw_sq8.search_ef(&q, K, ef).expect("search");
        eprintln!(
            "ef={ef}: recall@{K} hnsw {:.4}, hnsw sq8 + re-rank {:.4}, hnsw-rs {:.4}",
            r1s_index::recall_at_k(&exact, &approx, K),
            r1s_index::recall_at_k(&exact, &approx_sq8, K),
            r1s_index::recall_at_k(&exact, &approx_rs, K)
        );
        g.bench_with_input(BenchmarkId::new("hnsw_sq8_search_ef", ef), &ef, |b, &ef| {
            b.iter(|| hnsw_sq8.search_ef(&q, K, ef).expect("search").len())
        });
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
