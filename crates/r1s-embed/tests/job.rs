//! `embed_corpus`: row order, resume after an interruption, f16, and errors.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use r1s_core::npy::{Dtype, NpyHeader};
use r1s_core::{Cancel, Embedder, NoProgress, Progress, Side, Unit};
use r1s_embed::{EmbedError, EmbedJob, EmbedderConfig, OnnxEmbedder, embed_corpus};

use crate::common::*;

/// A small real corpus: 150 HotpotQA questions as Search-R1 passages (short, so embedding is quick).
fn small_corpus(dir: &Path) -> PathBuf {
    let questions = std::fs::read_to_string(shared("r1searcher/eval_set/hotpotqa_500.jsonl")).unwrap();
    let mut jsonl = String::new();
    for (k, line) in questions.lines().take(150).enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let contents = format!("\"Q{k}\"\n{}", v["question"].as_str().unwrap());
        jsonl.push_str(&serde_json::json!({"id": k.to_string(), "contents": contents}).to_string());
        jsonl.push('\n');
    }
    let src = dir.join("q.jsonl");
    std::fs::write(&src, jsonl).unwrap();
    let out = dir.join("corpus");
    let opts = r1s_corpus::IngestOptions::default();
    r1s_corpus::ingest(&[src], &out, &opts, &NoProgress, &Cancel::new()).unwrap();
    out
}

fn rows_f32(path: &Path) -> (NpyHeader, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let h = NpyHeader::parse(&bytes).unwrap();
    assert_eq!(bytes.len() as u64, h.file_len());
    let data = &bytes[h.data_offset as usize..];
    let v = match h.dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
    };
    (h, v)
}

#[test]
fn rows_are_in_corpus_order() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = small_corpus(dir.path());
    let out = dir.path().join("index");
    let job = EmbedJob { chunk_rows: 64, ..EmbedJob::new(&corpus, &out) };
    let report = embed_corpus(minilm(), &job, &NoProgress, &Cancel::new()).unwrap();
    assert_eq!((report.rows, report.embedded), (150, 150));
    let (h, v) = rows_f32(&report.path);
    assert_eq!((h.rows, h.cols, h.dtype), (150, 384, Dtype::F32));
    let c = r1s_corpus::Corpus::open(&corpus).unwrap();
    for row in [0u64, 1, 63, 64, 100, 149] {
        let text = c.docstore.get(row).unwrap().contents();
        let single = minilm().embed(&[&text], Side::Passage).unwrap();
        let got = &v[row as usize * 384..(row as usize + 1) * 384];
        let d = got.iter().zip(&single).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d < 1e-5, "row {row}: max abs {d}");
    }
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("embeddings.json")).unwrap()).unwrap();
    assert_eq!(meta["dim"], 384);
    assert_eq!(meta["preset"]["name"], "minilm");
    // a rerun with the same settings does nothing
    let again = embed_corpus(minilm(), &job, &NoProgress, &Cancel::new()).unwrap();
    assert_eq!(again.embedded, 0);
}

/// Cancels the job once `after` passages are done (a simulated kill mid-run).
struct KillAfter<'a> {
    done: AtomicU64,
    after: u64,
    cancel: &'a Cancel,
}

impl Progress for KillAfter<'_> {
    fn start(&self, _: &str, _: Option<u64>, _: Unit) {}
    fn advance(&self, n: u64) {
        if self.done.fetch_add(n, Ordering::Relaxed) + n >= self.after {
            self.cancel.cancel();
        }
    }
}

#[test]
fn resume_after_interruption_gives_the_identical_file() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = small_corpus(dir.path());
    let whole = EmbedJob { chunk_rows: 32, ..EmbedJob::new(&corpus, dir.path().join("whole")) };
    let reference = embed_corpus(minilm(), &whole, &NoProgress, &Cancel::new()).unwrap();

    let job = EmbedJob { chunk_rows: 32, ..EmbedJob::new(&corpus, dir.path().join("resumed")) };
    let cancel = Cancel::new();
    let killer = KillAfter { done: AtomicU64::new(0), after: 100, cancel: &cancel };
    let err = embed_corpus(minilm(), &job, &killer, &cancel).unwrap_err();
    assert!(matches!(err, EmbedError::Cancelled), "{err}");
    assert!(!job.out.join("embeddings.npy").exists(), "an interrupted run must not look finished");
    let partial = job.out.join("embeddings.npy.partial");
    assert!(partial.exists());

    // damage the last complete chunk: the resume must notice and redo it
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.out.join("embeddings.state.json")).unwrap()).unwrap();
    let chunks = state["chunk_sha256"].as_array().unwrap().len();
    assert!(chunks >= 2, "{chunks}");
    let mut bytes = std::fs::read(&partial).unwrap();
    let h = NpyHeader::parse(&bytes).unwrap();
    let at = h.data_offset as usize + (chunks - 1) * 32 * 384 * 4 + 7;
    bytes[at] ^= 0x55;
    bytes.extend_from_slice(&[1, 2, 3]); // a torn write after the last chunk
    std::fs::write(&partial, &bytes).unwrap();

    let resumed = embed_corpus(minilm(), &job, &NoProgress, &Cancel::new()).unwrap();
    assert_eq!(resumed.resumed_from, (chunks as u64 - 1) * 32);
    assert_eq!(std::fs::read(&resumed.path).unwrap(), std::fs::read(&reference.path).unwrap());
    assert!(!job.out.join("embeddings.state.json").exists());
}

/// The resume state is input read from disk: mutated state files (extra chunk hashes, huge numbers,
/// flipped and cut bytes) must end in a clear error or a correct resume, never a panic. A state
/// claiming more chunks than the rows make once underflowed the remaining-rows count.
#[test]
fn mutated_resume_states_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = small_corpus(dir.path());
    let whole = EmbedJob { chunk_rows: 32, ..EmbedJob::new(&corpus, dir.path().join("whole")) };
    let reference = std::fs::read(embed_corpus(minilm(), &whole, &NoProgress, &Cancel::new()).unwrap().path).unwrap();
    let job = EmbedJob { chunk_rows: 32, ..EmbedJob::new(&corpus, dir.path().join("m")) };
    let cancel = Cancel::new();
    let killer = KillAfter { done: AtomicU64::new(0), after: 100, cancel: &cancel };
    assert!(embed_corpus(minilm(), &job, &killer, &cancel).is_err());
    let keep = dir.path().join("keep");
    std::fs::create_dir_all(&keep).unwrap();
    for f in ["embeddings.npy.partial", "embeddings.state.json"] {
        std::fs::copy(job.out.join(f), keep.join(f)).unwrap();
    }
    let state = std::fs::read_to_string(keep.join("embeddings.state.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&state).unwrap();
    let hash = v["chunk_sha256"][0].as_str().unwrap().to_owned();
    let mut cases: Vec<String> = Vec::new();
    let mut many = v.clone();
    many["chunk_sha256"] = serde_json::Value::Array(vec![hash.clone().into(); 10_000]);
    cases.push(many.to_string());
    for huge in ["18446744073709551615", "4294967296", "0"] {
        cases.push(state.replacen("32", huge, 1));
        cases.push(state.replacen("150", huge, 1));
    }
    cases.push(state[..state.len() / 2].to_owned());
    cases.push(state.replace(&hash, &"0".repeat(64)));
    cases.push(
        String::from_utf8_lossy(&state.bytes().map(|b| if b == b'1' { b'9' } else { b }).collect::<Vec<_>>())
            .into_owned(),
    );
    for (i, case) in cases.iter().enumerate() {
        for f in ["embeddings.npy.partial", "embeddings.state.json"] {
            std::fs::copy(keep.join(f), job.out.join(f)).unwrap();
        }
        std::fs::write(job.out.join("embeddings.state.json"), case).unwrap();
        let _ = std::fs::remove_file(job.out.join("embeddings.npy"));
        match embed_corpus(minilm(), &job, &NoProgress, &Cancel::new()) {
            Ok(r) => {
                assert_eq!(std::fs::read(&r.path).unwrap(), reference, "case {i}: a resume must give the same file")
            }
            Err(e) => assert!(!e.to_string().is_empty(), "case {i}"),
        }
    }
}

#[test]
fn other_settings_do_not_resume_silently() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = small_corpus(dir.path());
    let job = EmbedJob { chunk_rows: 32, limit: Some(40), ..EmbedJob::new(&corpus, dir.path().join("i")) };
    embed_corpus(minilm(), &job, &NoProgress, &Cancel::new()).unwrap();
    let f16 = EmbedJob { dtype: Dtype::F16, ..job.clone() };
    let err = embed_corpus(minilm(), &f16, &NoProgress, &Cancel::new()).unwrap_err();
    assert!(err.to_string().contains("--restart"), "{err}");
    let f16 = EmbedJob { restart: true, ..f16 };
    let r = embed_corpus(minilm(), &f16, &NoProgress, &Cancel::new()).unwrap();
    let (h, v16) = rows_f32(&r.path);
    assert_eq!((h.dtype, h.rows), (Dtype::F16, 40));
    let c = r1s_corpus::Corpus::open(&corpus).unwrap();
    let text = c.docstore.get(39).unwrap().contents();
    let v = minilm().embed(&[&text], Side::Passage).unwrap();
    let d = v.iter().zip(&v16[39 * 384..]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(d < 1e-3, "{d}");
}

#[test]
fn bad_model_and_wrong_signature_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EmbedderConfig { model: dir.path().join("nope"), ..EmbedderConfig::default() };
    let err = OnnxEmbedder::load(&cfg).unwrap_err();
    assert!(matches!(err, EmbedError::Model { .. }) && err.to_string().contains("no such model file"), "{err}");

    // a real ONNX model that is not a text encoder (onnxruntime's mul_1.onnx: one float input "X")
    let mul = r1s_core::paths::r1s_home().join("models/ort-test/mul_1.onnx");
    let tok = r1s_core::paths::r1s_home().join("models/minilm/tokenizer.json");
    std::fs::copy(&mul, dir.path().join("model.onnx")).unwrap();
    std::fs::copy(&tok, dir.path().join("tokenizer.json")).unwrap();
    minilm(); // the runtime is loaded
    let cfg = EmbedderConfig { model: dir.path().to_path_buf(), ..EmbedderConfig::default() };
    let err = OnnxEmbedder::load(&cfg).unwrap_err();
    assert!(matches!(err, EmbedError::Signature { .. }), "{err}");
    assert!(err.to_string().contains("input_ids"), "{err}");
}

#[test]
fn presets_prefix_and_pool() {
    let e5 = r1s_embed::Preset::named("e5").unwrap();
    assert_eq!(e5.prefixed("x", Side::Query), "query: x");
    assert_eq!(e5.prefixed("x", Side::Passage), "passage: x");
    let bge = r1s_embed::Preset::named("bge").unwrap();
    assert_eq!(bge.pooling, r1s_embed::Pooling::Cls);
    assert!(bge.prefixed("x", Side::Query).starts_with("Represent this sentence for searching relevant passages: "));
    assert!(r1s_embed::Preset::named("nope").is_err());
    // the same model with CLS pooling gives another (still unit) vector
    let cfg = EmbedderConfig { preset: Some(bge.clone()), ..EmbedderConfig::default() };
    let cls = OnnxEmbedder::load(&cfg).unwrap();
    let a = cls.embed(&["Albedo is reflectivity."], Side::Passage).unwrap();
    let b = minilm().embed(&["Albedo is reflectivity."], Side::Passage).unwrap();
    assert!((a.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4);
    assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3));
}
