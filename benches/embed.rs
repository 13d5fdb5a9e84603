//! Criterion bench of the ONNX embedder: passages/s against batch size, on the first real passages
//! of `../shared/data/r1searcher/passages.jsonl` (needs tools/setup's model and runtime).
//! `cargo bench --bench embed`; the side-by-side comparison with Python is `tools/bench-embed`.

use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use r1s_core::{Embedder, Side};
use r1s_embed::{EmbedderConfig, OnnxEmbedder};

const PASSAGES: &str = "../shared/data/r1searcher/passages.jsonl";
const N: usize = 64;
const THREADS: usize = 2;
const BATCHES: [usize; 4] = [1, 8, 32, 64];

fn texts() -> Vec<String> {
    let path = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join(PASSAGES);
    std::fs::read_to_string(path)
        .expect("the shared passages")
        .lines()
        .take(N)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["contents"].as_str().unwrap_or("").to_owned()
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut g = c.benchmark_group("embed_minilm_int8");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    for batch in BATCHES {
        let cfg = EmbedderConfig { batch, threads: THREADS, ..EmbedderConfig::default() };
        let e = OnnxEmbedder::load(&cfg).expect("MiniLM (run tools/setup)");
        g.bench_with_input(BenchmarkId::new("batch", batch), &refs, |b, refs| {
            b.iter(|| e.embed(refs, Side::Passage).expect("embedding").len())
        });
    }
    g.finish();
}

criterion_group!(embed, benches);
criterion_main!(embed);
