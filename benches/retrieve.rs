//! Criterion benches of the retrievers alone (no HTTP) on R1-Searcher's 14,372 passages (the
//! fixture built by `cargo test --test pipeline` or tools/bench-index), with real HotpotQA questions:
//! embed + search + docstore reads for 1 and 32 queries per call, flat and HNSW, and the search +
//! docstore part alone; BM25 (analysis + MaxScore + docstore) and hybrid (HNSW + BM25, RRF) for 1
//! and 32 queries per call. `cargo bench --bench retrieve`.

use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use r1s_core::{Cancel, NoProgress, Retriever};
use r1s_index::{BuildParams, Kind};
use r1s_retrieve::{AnyRetriever, DenseOptions, DenseRetriever, Fusion, RetrieverOptions};

fn index(tmp: &Path, fixture: &Path, kind: Kind) -> DenseRetriever {
    let dir = tmp.join(format!("{kind:?}"));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    for f in ["embeddings.npy", "embeddings.json"] {
        std::fs::copy(fixture.join("index").join(f), dir.join(f))
            .expect("the fixture (run `cargo test --test pipeline` once)");
    }
    r1s_index::build(&dir, kind, &BuildParams::default(), &NoProgress, &Cancel::new()).expect("index build");
    DenseRetriever::open(&dir, &DenseOptions { corpus: Some(fixture.join("corpus")), ..Default::default() })
        .expect("retriever")
}

fn benches(c: &mut Criterion) {
    let fixture = r1s_core::paths::r1s_home().join("fixtures/r1-passages-v2");
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let text = std::fs::read_to_string(
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
            .join("../shared/data/r1searcher/eval_set/hotpotqa_500.jsonl"),
    )
    .expect("hotpotqa_500.jsonl");
    let questions: Vec<String> = text
        .lines()
        .take(32)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("JSON")["question"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    let refs: Vec<&str> = questions.iter().map(String::as_str).collect();
    let mut g = c.benchmark_group("retrieve");
    g.sample_size(20);
    for kind in [Kind::Flat, Kind::Hnsw] {
        let r = index(tmp.path(), &fixture, kind);
        for n in [1usize, 32] {
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new(format!("{kind:?}_k3"), n), &n, |b, &n| {
                b.iter(|| r.retrieve(&refs[..n], 3).expect("retrieve").len())
            });
        }
        let vectors = r.embed_queries(&refs).expect("embed");
        g.throughput(Throughput::Elements(32));
        g.bench_function(format!("{kind:?}_search_and_docstore_32"), |b| {
            b.iter(|| r.search_vectors(&vectors, 3).expect("search").len())
        });
    }
    // lexical and hybrid over the same corpus: the HNSW index above and a BM25 index of the corpus
    let bm25 = tmp.path().join("bm25");
    r1s_bm25::build(&fixture.join("corpus"), &bm25, &Default::default(), &NoProgress, &Cancel::new())
        .expect("bm25 build");
    let hybrid = tmp.path().join("hybrid");
    r1s_retrieve::hybrid::write_manifest(&hybrid, &tmp.path().join("Hnsw"), &bm25, Fusion::default(), 4)
        .expect("hybrid manifest");
    for (name, dir) in [("bm25", &bm25), ("hybrid_rrf", &hybrid)] {
        let o = RetrieverOptions {
            dense: DenseOptions { corpus: Some(fixture.join("corpus")), ..Default::default() },
            ..Default::default()
        };
        let r = AnyRetriever::open(dir, &o).expect("retriever");
        for n in [1usize, 32] {
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new(format!("{name}_k10"), n), &n, |b, &n| {
                b.iter(|| r.retrieve(&refs[..n], 10).expect("retrieve").len())
            });
        }
    }
    g.finish();
}

criterion_group!(retrieve, benches);
criterion_main!(retrieve);
