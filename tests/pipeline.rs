//! The search pipeline end to end on real data: R1-Searcher's 14,372 passages → corpus → MiniLM
//! embeddings → flat and HNSW indexes, queried with the HotpotQA eval questions.
//!
//! The embeddings take a few minutes on 2 cores; they are built once into
//! `$R1S_HOME/fixtures/r1-passages-v2` (resumably) and reused by later runs.

mod common;

use common::*;
use r1s_core::{Cancel, NoProgress, VectorIndex};
use r1s_index::{BuildParams, IndexError, Kind, OpenIndex};

#[test]
fn hnsw_recall_save_load_and_checks_on_real_embeddings() {
    let e = embedder();
    let (corpus, embeddings) = fixture(&e);
    let tmp = tempfile::tempdir().unwrap();
    let dir = index_dir(tmp.path(), "index", &embeddings);
    let q = queries(&e);

    // flat
    let m = r1s_index::build(&dir, Kind::Flat, &BuildParams::default(), &NoProgress, &Cancel::new()).unwrap();
    assert_eq!((m.rows, m.dim), (14_372, 384));
    let flat = OpenIndex::open(&dir).unwrap();
    let corpus_id = r1s_corpus::Corpus::open(&corpus).unwrap().manifest.content_id();
    flat.check_corpus(&corpus_id).unwrap();
    let exact = flat.search(&q, 10).unwrap();
    // the evidence is in this corpus: most questions find a passage with a high score
    assert!(exact.iter().filter(|h| h[0].1 > 0.5).count() > 400);

    // hnsw, default parameters
    r1s_index::build(&dir, Kind::Hnsw, &BuildParams::default(), &NoProgress, &Cancel::new()).unwrap();
    let hnsw = OpenIndex::open(&dir).unwrap();
    let approx = hnsw.search(&q, 10).unwrap();
    let recall = r1s_index::recall_at_k(&exact, &approx, 10);
    eprintln!("hnsw recall@10 vs flat on 500 HotpotQA questions: {recall:.4}");
    assert!(recall >= 0.95, "recall@10 {recall}");

    // save → load → same results
    let again = OpenIndex::open(&dir).unwrap().search(&q, 10).unwrap();
    assert_eq!(approx, again);

    // the hnsw_rs graph, same parameters: the same recall floor, and its files replace r1s's graph
    r1s_index::build(&dir, Kind::HnswRs, &BuildParams::default(), &NoProgress, &Cancel::new()).unwrap();
    assert!(!dir.join(r1s_index::hnsw::GRAPH_FILE).exists());
    let rs = OpenIndex::open(&dir).unwrap();
    assert!(matches!(rs.index, r1s_index::Index::HnswRs { .. }));
    let rs_recall = r1s_index::recall_at_k(&exact, &rs.search(&q, 10).unwrap(), 10);
    eprintln!("hnsw-rs recall@10 vs flat: {rs_recall:.4}");
    assert!(rs_recall >= 0.95, "hnsw-rs recall@10 {rs_recall}");
    // an `hnsw` directory written before r1s had its own graph (hnsw_rs files) still opens
    let mpath = dir.join("manifest.json");
    let manifest = std::fs::read_to_string(&mpath).unwrap();
    std::fs::write(&mpath, manifest.replace("\"hnsw-rs\"", "\"hnsw\"")).unwrap();
    assert!(matches!(OpenIndex::open(&dir).unwrap().index, r1s_index::Index::HnswRs { .. }));

    // FAISS HNSW32 (efSearch 64), written by FAISS itself: same recall floor, reload gives the same hits
    r1s_index::build(&dir, Kind::Faiss, &BuildParams::default(), &NoProgress, &Cancel::new()).unwrap();
    let faiss = OpenIndex::open(&dir).unwrap();
    let fx = faiss.search(&q, 10).unwrap();
    let frecall = r1s_index::recall_at_k(&exact, &fx, 10);
    eprintln!("faiss HNSW32 recall@10 vs flat: {frecall:.4}");
    assert!(frecall >= 0.95, "faiss recall@10 {frecall}");
    assert_eq!(OpenIndex::open(&dir).unwrap().search(&q, 10).unwrap(), fx);
    let exact_faiss = index_dir(tmp.path(), "faiss-flat", &embeddings);
    let p = BuildParams { faiss_factory: "Flat".into(), ..BuildParams::default() };
    r1s_index::build(&exact_faiss, Kind::Faiss, &p, &NoProgress, &Cancel::new()).unwrap();
    let ff = OpenIndex::open(&exact_faiss).unwrap().search(&q, 10).unwrap();
    assert!(r1s_index::recall_at_k(&exact, &ff, 10) > 0.999, "FAISS Flat and r1s flat disagree");
    // back to the HNSW directory for the checks below
    r1s_index::build(&dir, Kind::Hnsw, &BuildParams::default(), &NoProgress, &Cancel::new()).unwrap();

    // another corpus is refused
    let other = tmp.path().join("other");
    r1s_corpus::ingest(
        &[shared("kilt/kilt_knowledgesource_sample100.jsonl")],
        &other,
        &Default::default(),
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    let other_id = r1s_corpus::Corpus::open(&other).unwrap().manifest.content_id();
    assert!(matches!(hnsw.check_corpus(&other_id), Err(IndexError::Mismatch(_))));
    drop((flat, hnsw));

    // a truncated graph or embeddings file is an error, never a crash
    let graph = dir.join(r1s_index::hnsw::GRAPH_FILE);
    let bytes = std::fs::read(&graph).unwrap();
    std::fs::write(&graph, &bytes[..bytes.len() / 3]).unwrap();
    let err = OpenIndex::open(&dir).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    std::fs::write(&graph, &bytes).unwrap();
    let npy = dir.join("embeddings.npy");
    let f = std::fs::OpenOptions::new().write(true).open(&npy).unwrap();
    f.set_len(f.metadata().unwrap().len() - 4).unwrap();
    let err = OpenIndex::open(&dir).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

/// SQ8 on the real MiniLM vectors: HNSW walked over the codes and re-ranked from the f32 vectors
/// keeps recall@10 ≥ 0.95 at the default efSearch, within 0.01 of the f32 graph; flat SQ8 + re-rank
/// finds the exact top 10.
#[test]
fn sq8_recall_on_real_embeddings() {
    use r1s_index::{QuantParams, Quantize};
    let e = embedder();
    let (_, embeddings) = fixture(&e);
    let tmp = tempfile::tempdir().unwrap();
    let q = queries(&e);
    let dir = index_dir(tmp.path(), "sq8", &embeddings);
    let exact = r1s_index::FlatIndex::open(&dir.join("embeddings.npy")).unwrap().search(&q, 10).unwrap();
    let sq8 = BuildParams {
        quant: QuantParams { quantize: Quantize::Sq8, ..QuantParams::default() },
        ..BuildParams::default()
    };
    r1s_index::build(&dir, Kind::Hnsw, &BuildParams::default(), &NoProgress, &Cancel::new()).unwrap();
    let f32_recall = r1s_index::recall_at_k(&exact, &OpenIndex::open(&dir).unwrap().search(&q, 10).unwrap(), 10);
    r1s_index::build(&dir, Kind::Hnsw, &sq8, &NoProgress, &Cancel::new()).unwrap();
    let mut idx = OpenIndex::open(&dir).unwrap();
    let recall = r1s_index::recall_at_k(&exact, &idx.search(&q, 10).unwrap(), 10);
    idx.set_rerank(false);
    let codes_only = r1s_index::recall_at_k(&exact, &idx.search(&q, 10).unwrap(), 10);
    eprintln!("real 14k: hnsw f32 {f32_recall:.4}, sq8 + re-rank {recall:.4}, sq8 codes only {codes_only:.4}");
    assert!(recall >= 0.95, "sq8 + re-rank recall@10 {recall}");
    assert!(recall >= f32_recall - 0.01, "sq8 {recall} vs f32 {f32_recall}");
    r1s_index::build(&dir, Kind::Flat, &sq8, &NoProgress, &Cancel::new()).unwrap();
    let flat = r1s_index::recall_at_k(&exact, &OpenIndex::open(&dir).unwrap().search(&q, 10).unwrap(), 10);
    eprintln!("real 14k: flat sq8 x4 + re-rank {flat:.4}");
    assert!(flat >= 0.999, "flat sq8 + re-rank recall@10 {flat}");
}
