//! Helpers shared by the workspace's integration tests: the real 14,372-passage R1-Searcher fixture
//! and its MiniLM embeddings, built once into `$R1S_HOME/fixtures/r1-passages-v2`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use r1s_core::{Cancel, Embedder, NoProgress, Side};
use r1s_embed::{EmbedJob, EmbedderConfig, OnnxEmbedder};

pub fn shared(rel: &str) -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join("../shared/data")
        .join(rel)
}

pub fn embedder() -> OnnxEmbedder {
    OnnxEmbedder::load(&EmbedderConfig { threads: 2, ..EmbedderConfig::default() }).expect("MiniLM (run tools/setup)")
}

/// (corpus dir, dir with embeddings.npy + embeddings.json), built once (the tests of this binary run
/// in parallel: one builds it while the others wait).
pub fn fixture(e: &OnnxEmbedder) -> (PathBuf, PathBuf) {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    let root = r1s_core::paths::r1s_home().join("fixtures/r1-passages-v2");
    let corpus = root.join("corpus");
    if !corpus.join("manifest.json").exists() {
        let opts = r1s_corpus::IngestOptions::default();
        r1s_corpus::ingest(&[shared("r1searcher/passages.jsonl")], &corpus, &opts, &NoProgress, &Cancel::new())
            .unwrap();
    }
    let index = root.join("index");
    r1s_embed::embed_corpus(e, &EmbedJob::new(&corpus, &index), &NoProgress, &Cancel::new()).unwrap();
    (corpus, index)
}

/// A fresh index directory `tmp/name` holding the embeddings of `embeddings`.
pub fn index_dir(tmp: &Path, name: &str, embeddings: &Path) -> PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["embeddings.npy", "embeddings.json"] {
        std::fs::copy(embeddings.join(f), dir.join(f)).unwrap();
    }
    dir
}

pub fn queries(e: &OnnxEmbedder) -> Vec<f32> {
    let text = std::fs::read_to_string(shared("r1searcher/eval_set/hotpotqa_500.jsonl")).unwrap();
    let qs: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["question"].as_str().unwrap().to_owned())
        .collect();
    let refs: Vec<&str> = qs.iter().map(String::as_str).collect();
    e.embed(&refs, Side::Query).unwrap()
}

/// The first `n` HotpotQA eval questions.
pub fn questions(n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(shared("r1searcher/eval_set/hotpotqa_500.jsonl")).unwrap();
    text.lines()
        .take(n)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["question"].as_str().unwrap().to_owned())
        .collect()
}
