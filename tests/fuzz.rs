//! Mutation fuzzing of every reader of untrusted bytes: GGUF (directory, tensors, tokenizer
//! metadata), safetensors (policy weights), `.npy` (header and rows), the docstore (`docstore.idx` + `docstore.bin`), index
//! directories (`manifest.json`, `embeddings.npy`, `hnsw.r1s`, `codes.sq8`), the BM25 manifest, and
//! HTTP request bodies of `r1s serve`.
//!
//! Each case takes a real, valid seed, applies one or more mutations (byte flips, truncation, a huge or
//! boundary integer written over a header field, a spliced or repeated chunk, a JSON number replaced by
//! a huge one) and runs the reader to the end (every row, tensor or passage it exposes). Errors are the
//! expected outcome; a panic fails the test, with the seed and case to replay. `R1S_FUZZ_CASES` cases
//! per reader (CI: the default, 1000); `tools/fuzz-readers` runs many more in release mode.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use r1s_core::{Cancel, NoProgress, Retriever, VectorIndex};

mod common;

fn cases() -> usize {
    std::env::var("R1S_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

fn base_seed() -> u64 {
    std::env::var("R1S_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed)
}

/// splitmix64: small, seedable, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// Integers that break size arithmetic.
const NASTY: [u64; 12] = [0, 1, 2, 7, 0x7F, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 1 << 31, 1 << 62, u64::MAX, u64::MAX - 7];

/// One mutation of `bytes`; offsets favour the first 512 bytes, where headers live.
fn mutate_once(bytes: &mut Vec<u8>, rng: &mut Rng) {
    let len = bytes.len();
    let at = |rng: &mut Rng| if rng.below(3) > 0 { rng.below(len.min(512)) } else { rng.below(len) };
    match rng.below(6) {
        0 if len > 0 => {
            for _ in 0..1 + rng.below(8) {
                let i = at(rng);
                bytes[i] ^= 1 << rng.below(8);
            }
        }
        1 => bytes.truncate(rng.below(len + 1)),
        2 if len >= 8 => {
            let v = NASTY[rng.below(NASTY.len())];
            let i = at(rng).min(len - 8);
            if rng.below(2) == 0 {
                bytes[i..i + 8].copy_from_slice(&v.to_le_bytes());
            } else if len >= 4 {
                let i = i.min(len - 4);
                bytes[i..i + 4].copy_from_slice(&(v as u32).to_le_bytes());
            }
        }
        3 if len > 0 => {
            // repeat or splice a chunk
            let (a, n) = (rng.below(len), 1 + rng.below(64));
            let chunk: Vec<u8> = bytes[a..(a + n).min(len)].to_vec();
            let to = at(rng);
            bytes.splice(to..to, chunk);
        }
        4 => {
            // a JSON (or ASCII) number replaced by a huge / negative / fractional one
            let digits: Vec<usize> =
                (0..len).filter(|&i| bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit())).collect();
            if !digits.is_empty() {
                let s = digits[rng.below(digits.len())];
                let e = (s..len).find(|&i| !bytes[i].is_ascii_digit()).unwrap_or(len);
                let repl = [
                    "18446744073709551615",
                    "4294967296",
                    "9223372036854775807",
                    "-1",
                    "0",
                    "1e308",
                    "2.5",
                    "1099511627776",
                ];
                bytes.splice(s..e, repl[rng.below(repl.len())].bytes());
            }
        }
        _ => {
            let i = at(rng);
            bytes.insert(i.min(len), rng.next() as u8);
        }
    }
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        mutate_once(&mut b, rng);
    }
    b
}

/// Runs `cases()` mutated cases; `case` gets a fresh case number and the rng. Counts panics.
fn fuzz(name: &str, mut case: impl FnMut(usize, &mut Rng)) {
    let n = cases();
    let panics = AtomicUsize::new(0);
    let mut first = None;
    let mut rng = Rng(base_seed() ^ name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
    for i in 0..n {
        let before = rng.0;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(i, &mut rng)));
        if r.is_err() {
            panics.fetch_add(1, Ordering::Relaxed);
            first.get_or_insert((i, before));
        }
    }
    eprintln!("fuzz {name}: {n} cases, {} panics", panics.load(Ordering::Relaxed));
    assert!(
        first.is_none(),
        "fuzz {name}: {} panics in {n} cases; first at case {:?} (R1S_FUZZ_SEED={})",
        panics.load(Ordering::Relaxed),
        first,
        base_seed()
    );
}

// ---------------------------------------------------------------- GGUF

fn gguf_string(g: &mut Vec<u8>, s: &str) {
    g.extend((s.len() as u64).to_le_bytes());
    g.extend(s.as_bytes());
}

/// A small GGUF v3 with metadata of most value types (strings, arrays of strings and ints, floats,
/// bools, u64) and tensors of several quantisations.
fn gguf_seed() -> Vec<u8> {
    let mut g = Vec::new();
    g.extend(b"GGUF");
    g.extend(3u32.to_le_bytes());
    let tensors: [(&str, &[u64], u32, usize); 4] = [
        ("token_embd.weight", &[4, 4], 0, 64),    // F32
        ("output_norm.weight", &[8], 1, 16),      // F16
        ("blk.0.attn_q.weight", &[32, 2], 8, 68), // Q8_0: 2 blocks of 34 bytes
        ("blk.0.ffn_up.weight", &[256], 12, 144), // Q4_K: 1 block of 144 bytes
    ];
    g.extend((tensors.len() as u64).to_le_bytes());
    g.extend(7u64.to_le_bytes()); // metadata entries
    gguf_string(&mut g, "general.architecture");
    g.extend(8u32.to_le_bytes());
    gguf_string(&mut g, "llama");
    gguf_string(&mut g, "general.alignment");
    g.extend(4u32.to_le_bytes());
    g.extend(32u32.to_le_bytes());
    gguf_string(&mut g, "tokenizer.ggml.tokens");
    g.extend(9u32.to_le_bytes());
    g.extend(8u32.to_le_bytes());
    g.extend(4u64.to_le_bytes());
    for t in ["<s>", "a", "b", "ab"] {
        gguf_string(&mut g, t);
    }
    gguf_string(&mut g, "tokenizer.ggml.token_type");
    g.extend(9u32.to_le_bytes());
    g.extend(5u32.to_le_bytes());
    g.extend(4u64.to_le_bytes());
    for t in [3i32, 1, 1, 1] {
        g.extend(t.to_le_bytes());
    }
    gguf_string(&mut g, "llama.rope.freq_base");
    g.extend(6u32.to_le_bytes());
    g.extend(10000f32.to_le_bytes());
    gguf_string(&mut g, "tokenizer.ggml.add_bos_token");
    g.extend(7u32.to_le_bytes());
    g.push(1);
    gguf_string(&mut g, "llama.context_length");
    g.extend(10u32.to_le_bytes());
    g.extend(2048u64.to_le_bytes());
    let mut offset = 0u64;
    for (name, dims, ty, bytes) in tensors {
        gguf_string(&mut g, name);
        g.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            g.extend(d.to_le_bytes());
        }
        g.extend(ty.to_le_bytes());
        g.extend(offset.to_le_bytes());
        offset += (bytes as u64).div_ceil(32) * 32;
    }
    g.resize(g.len().div_ceil(32) * 32, 0);
    let data_len = offset as usize;
    let mut rng = Rng(7);
    g.extend((0..data_len).map(|_| (rng.next() % 7) as u8)); // small values: finite f16 scales
    g
}

#[test]
fn fuzz_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = gguf_seed();
    let ok = tmp.path().join("seed.gguf");
    std::fs::write(&ok, &seed).unwrap();
    let g = r1s_policy::gguf::Gguf::open(&ok).expect("the seed is a valid GGUF");
    assert_eq!(g.tensors.len(), 4);
    // the head of a real model too (its metadata: vocabulary, merges), truncated inside
    let real = r1s_core::paths::r1s_home().join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let real_head: Option<Vec<u8>> = std::fs::read(&real).ok().map(|b| b[..b.len().min(1 << 16)].to_vec());
    fuzz("gguf", |i, rng| {
        let from: &[u8] = match &real_head {
            Some(h) if i % 4 == 3 => h,
            _ => &seed,
        };
        let bytes = mutate(from, rng);
        let path = tmp.path().join("case.gguf");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(g) = r1s_policy::gguf::Gguf::open(&path) {
            let names: Vec<String> = g.tensors.keys().cloned().collect();
            for n in names {
                let _ = g.tensor_f32(&n);
            }
            let _ = r1s_policy::tokenizer::TextTokenizer::from_gguf(&g);
        }
    });
}

// ---------------------------------------------------------------- safetensors

#[test]
fn fuzz_safetensors() {
    use r1s_policy::load::{SafetensorsWeights, WeightSource};
    let tmp = tempfile::tempdir().unwrap();
    let tensors = vec![
        ("model.embed_tokens.weight".to_owned(), (0..16).map(|i| i as f32 / 8.0).collect(), vec![4, 4]),
        ("model.norm.weight".to_owned(), vec![1.0; 8], vec![8]),
        ("lm_head.weight".to_owned(), vec![0.5; 12], vec![3, 4]),
    ];
    let meta = [("format".to_owned(), "pt".to_owned())].into_iter().collect();
    let seed = r1s_policy::load::f32_safetensors(tensors, meta).unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), &seed).unwrap();
    let w = SafetensorsWeights::open(&dir).expect("the seed is a valid safetensors file");
    assert_eq!(w.get("lm_head.weight").unwrap().unwrap().1, [3, 4]);
    fuzz("safetensors", |_, rng| {
        std::fs::write(dir.join("model.safetensors"), mutate(&seed, rng)).unwrap();
        if let Ok(w) = SafetensorsWeights::open(&dir) {
            for name in ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "absent"] {
                if let Ok(Some((values, shape))) = w.get(name) {
                    // what a loader does next: compare the shape's product with the values
                    let _ = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) == Some(values.len());
                }
            }
        }
    });
}

// ---------------------------------------------------------------- .npy

#[test]
fn fuzz_npy() {
    use r1s_core::npy::{Dtype, NpyHeader};
    let tmp = tempfile::tempdir().unwrap();
    let mut seeds = Vec::new();
    for (dtype, size) in [(Dtype::F32, 4usize), (Dtype::F16, 2)] {
        let mut b = NpyHeader::new(dtype, 10, 8).to_bytes();
        b.extend((0..10 * 8 * size).map(|i| (i % 251) as u8 & 0x3F));
        seeds.push(b);
    }
    fuzz("npy", |i, rng| {
        let bytes = mutate(&seeds[i % seeds.len()], rng);
        let _ = NpyHeader::parse(&bytes);
        let path = tmp.path().join("case.npy");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(m) = r1s_index::Matrix::open(&path) {
            let mut buf = Vec::new();
            let _ = m.block(0, m.rows(), &mut buf).len();
        }
        if let Ok(f) = r1s_index::FlatIndex::open(&path) {
            let q = vec![0.5f32; f.dim()];
            let _ = f.search(&q, 3);
        }
    });
}

// ---------------------------------------------------------------- docstore

/// A corpus of the first `n` R1-Searcher passages in `dir/corpus`.
fn small_corpus(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(common::shared("r1searcher/passages.jsonl")).unwrap();
    let src = dir.join("p.jsonl");
    std::fs::write(&src, text.lines().take(n).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let corpus = dir.join("corpus");
    r1s_corpus::ingest(&[src], &corpus, &Default::default(), &NoProgress, &Cancel::new()).unwrap();
    corpus
}

/// Copies the files of `from` into a fresh `to`, replacing `name` by `bytes`.
fn with_file(from: &Path, to: &Path, name: &str, bytes: &[u8]) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    std::fs::write(to.join(name), bytes).unwrap();
}

#[test]
fn fuzz_docstore() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path(), 30);
    let files = ["docstore.idx", "docstore.bin"];
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(corpus.join(f)).unwrap()).collect();
    let case_dir = tmp.path().join("case");
    fuzz("docstore", |i, rng| {
        let which = i % files.len();
        with_file(&corpus, &case_dir, files[which], &mutate(&seeds[which], rng));
        if let Ok(d) = r1s_corpus::Docstore::open(&case_dir) {
            for p in d.iter().flatten() {
                let _ = p.contents();
            }
            let _ = d.get(u64::MAX);
        }
    });
}

// ---------------------------------------------------------------- index directories

#[test]
fn fuzz_index_dirs() {
    use r1s_core::npy::{Dtype, NpyHeader};
    let tmp = tempfile::tempdir().unwrap();
    let (rows, dim) = (300usize, 8usize);
    let mut rng = Rng(11);
    let data: Vec<f32> = (0..rows * dim).map(|_| (rng.next() % 2000) as f32 / 1000.0 - 1.0).collect();
    let mut npy = NpyHeader::new(Dtype::F32, rows as u64, dim as u64).to_bytes();
    npy.extend(data.iter().flat_map(|x| x.to_le_bytes()));
    let meta = serde_json::json!({"rows": rows, "dim": dim, "model": "test", "corpus": "", "corpus_id": "test"});
    let mut dirs = Vec::new();
    for (name, kind, quant) in [
        ("flat", r1s_index::Kind::Flat, r1s_index::Quantize::None),
        ("hnsw", r1s_index::Kind::Hnsw, r1s_index::Quantize::None),
        ("hnsw-sq8", r1s_index::Kind::Hnsw, r1s_index::Quantize::Sq8),
        ("flat-sq8", r1s_index::Kind::Flat, r1s_index::Quantize::Sq8),
    ] {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("embeddings.npy"), &npy).unwrap();
        std::fs::write(d.join("embeddings.json"), meta.to_string()).unwrap();
        let p = r1s_index::BuildParams {
            hnsw: r1s_index::HnswParams { m: 8, ef_construction: 32, ef_search: 16 },
            quant: r1s_index::QuantParams { quantize: quant, ..Default::default() },
            ..Default::default()
        };
        r1s_index::build(&d, kind, &p, &NoProgress, &Cancel::new()).unwrap();
        let files: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f != "embeddings.json" && !f.ends_with(".tmp"))
            .collect();
        dirs.push((d, files));
    }
    let case_dir = tmp.path().join("case");
    fuzz("index", |i, rng| {
        let (dir, files) = &dirs[i % dirs.len()];
        let name = &files[rng.below(files.len())];
        let seed = std::fs::read(dir.join(name)).unwrap();
        with_file(dir, &case_dir, name, &mutate(&seed, rng));
        if let Ok(idx) = r1s_index::OpenIndex::open(&case_dir) {
            let d = idx.manifest.dim.min(1 << 16);
            let _ = idx.search(&vec![0.25f32; d], 5);
            let _ = idx.search(&vec![0.25f32; d * 3], 400);
        }
    });
}

// ---------------------------------------------------------------- BM25 manifest

#[test]
fn fuzz_bm25_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path(), 40);
    let dir = tmp.path().join("bm25");
    r1s_bm25::build(&corpus, &dir, &Default::default(), &NoProgress, &Cancel::new()).unwrap();
    let seed = std::fs::read(dir.join("manifest.json")).unwrap();
    fuzz("bm25-manifest", |_, rng| {
        std::fs::write(dir.join("manifest.json"), mutate(&seed, rng)).unwrap();
        if let Ok(idx) = r1s_bm25::Bm25Index::open(&dir) {
            let _ = idx.search(&["Evan Morris lobbyist", ""], 5);
        }
    });
}

// ---------------------------------------------------------------- HTTP bodies

#[test]
fn fuzz_http_bodies() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path(), 40);
    let dir = tmp.path().join("bm25");
    r1s_bm25::build(&corpus, &dir, &Default::default(), &NoProgress, &Cancel::new()).unwrap();
    let r = std::sync::Arc::new(r1s_retrieve::AnyRetriever::open(&dir, &Default::default()).unwrap());
    assert!(!r.retrieve(&["Evan Morris"], 1).unwrap().is_empty());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg =
        r1s_retrieve::ServeConfig { max_topk: 50, max_queries: 64, max_body_bytes: 1 << 16, ..Default::default() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(r1s_retrieve::serve(r, listener, cfg, serde_json::json!({}), async {
        let _ = stopped.await;
    }));
    let seeds: [(&str, &str); 4] = [
        ("/retrieve", r#"{"queries": ["Evan Morris", "capital of Australia"], "topk": 3, "return_scores": true}"#),
        ("/retrieve", r#"{"queries": ["a"], "topk": null}"#),
        ("/queries", r#"{"queries": ["Evan Morris"], "k": 2}"#),
        ("/queries", r#"{"queries": ["x", "y", "z"]}"#),
    ];
    let client = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(30)).build().unwrap();
    let server_errors = AtomicUsize::new(0);
    fuzz("http", |i, rng| {
        let (path, body) = seeds[i % seeds.len()];
        let bytes = mutate(body.as_bytes(), rng);
        let status =
            client.post(format!("{url}{path}")).body(bytes.clone()).send().expect("the server answers").status();
        if status.is_server_error() {
            server_errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("5xx {status} for {path} {:?}", String::from_utf8_lossy(&bytes));
        }
    });
    assert_eq!(server_errors.load(Ordering::Relaxed), 0, "bad bodies are 4xx, never 5xx");
    let _ = stop.send(());
    rt.block_on(server).unwrap().unwrap();
}

// ---------------------------------------------------------------- what the fuzzing found

/// Found by `fuzz_docstore`: a row count near 2^64 in `docstore.idx` overflowed the expected index
/// size (a panic in debug builds, a wrapped size in release ones).
#[test]
fn docstore_row_count_near_2_pow_64_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path(), 5);
    let mut idx = std::fs::read(corpus.join("docstore.idx")).unwrap();
    for rows in [u64::MAX, u64::MAX / 8, 1 << 61] {
        idx[16..24].copy_from_slice(&rows.to_le_bytes());
        std::fs::write(corpus.join("docstore.idx"), &idx).unwrap();
        let err = r1s_corpus::Docstore::open(&corpus).unwrap_err().to_string();
        assert!(err.contains("docstore.idx") && err.contains("expected"), "{rows}: {err}");
    }
}

/// Found by `fuzz_index_dirs`: a huge upper-level length (words 9-10) in the `hnsw.r1s` header
/// overflowed the layout's size and the error message's byte count; a huge M is refused too.
#[test]
fn hnsw_header_sizes_past_2_pow_64_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hnsw");
    std::fs::create_dir_all(&dir).unwrap();
    let (rows, dim) = (50usize, 4usize);
    let mut npy = r1s_core::npy::NpyHeader::new(r1s_core::npy::Dtype::F32, rows as u64, dim as u64).to_bytes();
    npy.extend((0..rows * dim).flat_map(|i| ((i % 13) as f32 - 6.0).to_le_bytes()));
    std::fs::write(dir.join("embeddings.npy"), npy).unwrap();
    let meta = serde_json::json!({"rows": rows, "dim": dim, "model": "test", "corpus": "", "corpus_id": "test"});
    std::fs::write(dir.join("embeddings.json"), meta.to_string()).unwrap();
    r1s_index::build(&dir, r1s_index::Kind::Hnsw, &Default::default(), &NoProgress, &Cancel::new()).unwrap();
    let mut graph = std::fs::read(dir.join("hnsw.r1s")).unwrap();
    let good = graph.clone();
    // words 9 and 10: the upper-level length, low and high halves
    for upper in [u64::MAX, u64::MAX / 4 + 1, 1 << 62] {
        graph[36..40].copy_from_slice(&(upper as u32).to_le_bytes());
        graph[40..44].copy_from_slice(&((upper >> 32) as u32).to_le_bytes());
        std::fs::write(dir.join("hnsw.r1s"), &graph).unwrap();
        let err = r1s_index::OpenIndex::open(&dir).unwrap_err().to_string();
        assert!(err.contains("hnsw.r1s") && err.contains("truncated or corrupt"), "upper {upper}: {err}");
    }
    // words 5 and 6: M and 2M
    let mut graph = good;
    for m in [1u32 << 31, u32::MAX / 2] {
        graph[20..24].copy_from_slice(&m.to_le_bytes());
        graph[24..28].copy_from_slice(&(m.wrapping_mul(2)).to_le_bytes());
        std::fs::write(dir.join("hnsw.r1s"), &graph).unwrap();
        let err = r1s_index::OpenIndex::open(&dir).unwrap_err().to_string();
        assert!(err.contains("hnsw.r1s"), "M {m}: {err}");
    }
}
