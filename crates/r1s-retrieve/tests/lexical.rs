//! BM25 and hybrid retrieval over the same fixture corpus as the dense tests: fusion arithmetic on
//! hand-computed cases, opening by kind, corpus checks, and both HTTP APIs byte for byte.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use r1s_core::{Cancel, NoProgress, Retriever};
use r1s_retrieve::{
    AnyRetriever, Bm25Retriever, Fusion, HybridOptions, RetrieveError, RetrieverOptions, ServeConfig, fuse,
};

use super::{EVAN_MORRIS_DOC, HANDMADE, Server, client, fixture, post, runtime};

#[test]
fn fusion_arithmetic_matches_hand_computed_cases() {
    let dense = [(1, 0.9), (2, 0.8), (3, 0.7)];
    let bm25 = [(3, 12.0), (4, 10.0)];
    // RRF, k = 60: 1/61, 1/62, 1/63 + 1/61, 1/62; rows 2 and 4 tie, the lower row first
    let got = fuse(Fusion::Rrf { k: 60.0 }, &dense, &bm25, 10);
    let want = [(3, 1.0 / 63.0 + 1.0 / 61.0), (1, 1.0 / 61.0), (2, 1.0 / 62.0), (4, 1.0 / 62.0)];
    assert_eq!(got.iter().map(|h| h.0).collect::<Vec<_>>(), want.iter().map(|h| h.0).collect::<Vec<_>>());
    for (g, w) in got.iter().zip(&want) {
        assert!((f64::from(g.1) - w.1).abs() < 1e-7, "{got:?}");
    }
    assert_eq!(fuse(Fusion::Rrf { k: 60.0 }, &dense, &bm25, 2).len(), 2);
    // RRF, k = 0: 1/rank
    let got = fuse(Fusion::Rrf { k: 0.0 }, &dense, &bm25, 10);
    assert_eq!(got[0], (3, 1.0 + 1.0 / 3.0));
    // linear, weight 0.5: dense min-max 1, 0.5, 0; bm25 1, 0 → row 1 0.5, row 2 0.25, row 3 0.5, row 4 0
    let got = fuse(Fusion::Linear { weight: 0.5 }, &dense, &bm25, 10);
    assert_eq!(got.iter().map(|h| h.0).collect::<Vec<_>>(), [1, 3, 2, 4]);
    for (g, w) in got.iter().zip([0.5, 0.5, 0.25, 0.0]) {
        assert!((g.1 - w).abs() < 1e-6, "{got:?}");
    }
    // weight 1: the dense order; weight 0: the bm25 order first, dense-only rows at 0 after
    let got = fuse(Fusion::Linear { weight: 1.0 }, &dense, &bm25, 3);
    assert_eq!(got.iter().map(|h| h.0).collect::<Vec<_>>(), [1, 2, 3]);
    let got = fuse(Fusion::Linear { weight: 0.0 }, &dense, &bm25, 2);
    assert_eq!(got.iter().map(|h| h.0).collect::<Vec<_>>(), [3, 1]);
    // a one-hit list normalises to 1; empty lists fuse to nothing
    let got = fuse(Fusion::Linear { weight: 0.25 }, &[(7, -3.0)], &[], 5);
    assert_eq!(got, [(7, 0.25)]);
    assert!(fuse(Fusion::Rrf { k: 60.0 }, &[], &[], 5).is_empty());
    assert!(Fusion::Rrf { k: -1.0 }.validate().is_err());
    assert!(Fusion::Linear { weight: 1.5 }.validate().is_err());
    assert!(Fusion::Linear { weight: f32::NAN }.validate().is_err());
}

/// (bm25 dir, hybrid dir over the flat index and it), built once.
fn lexical_fixture() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static F: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let f = fixture();
        let dir = tempfile::tempdir().unwrap();
        let bm25 = dir.path().join("bm25");
        r1s_bm25::build(&f.corpus, &bm25, &Default::default(), &NoProgress, &Cancel::new()).unwrap();
        let hybrid = dir.path().join("hybrid");
        let m = r1s_retrieve::hybrid::write_manifest(&hybrid, &f.flat, &bm25, Fusion::default(), 4).unwrap();
        assert_eq!(m.rows, 404);
        (dir, bm25, hybrid)
    })
}

fn open_any(dir: &Path, o: &RetrieverOptions) -> AnyRetriever {
    let mut o = o.clone();
    o.dense.threads = 2;
    AnyRetriever::open(dir, &o).unwrap()
}

#[test]
fn bm25_and_hybrid_indexes_open_by_kind_and_find_passages_byte_for_byte() {
    let f = fixture();
    let (_, bm25_dir, hybrid_dir) = lexical_fixture();
    let bm25 = open_any(bm25_dir, &Default::default());
    let hybrid = open_any(hybrid_dir, &Default::default());
    assert_eq!((bm25.kind().as_str(), hybrid.kind().as_str()), ("bm25", "hybrid"));
    assert_eq!(open_any(&f.flat, &Default::default()).kind(), "flat");
    for r in [&bm25, &hybrid] {
        for (id, contents) in HANDMADE {
            let contents = contents.replace("\\\"", "\"").replace("\\\\", "\\");
            let hits = r.retrieve(&[contents.as_str()], 3).unwrap();
            assert_eq!(hits[0][0].id, id, "{}", r.kind());
            assert_eq!(hits[0][0].contents, contents);
        }
        // query text is text: nothing fails to parse, nothing matches nothing
        let odd = ["\"Evan Morris\" AND (Genentech OR Roche)", "lobby*", "Morris~2", "title:Ærø", "", "the of and"];
        let got = r.retrieve(&odd, 3).unwrap();
        assert_eq!(got.len(), odd.len());
        assert_eq!(got[0][0].id, "0");
        assert!(r.retrieve(&["x"], 0).unwrap()[0].is_empty());
        assert!(r.retrieve(&[], 3).unwrap().is_empty());
    }
    // an empty or stop-word-only query: no BM25 hits
    let got = bm25.retrieve(&["", "the of and", "?!"], 5).unwrap();
    assert!(got.iter().all(Vec::is_empty), "{got:?}");
    // hybrid: a blank query follows the rule of every query (RRF of the dense list and an empty BM25
    // list is the dense list, scored 1/(60 + rank)), as a stop-word-only one does
    let dense = open_any(&f.flat, &Default::default());
    for q in ["", "the of and"] {
        let (h, d) = (hybrid.retrieve(&[q], 3).unwrap().remove(0), dense.retrieve(&[q], 3).unwrap().remove(0));
        assert_eq!(h.iter().map(|x| x.row).collect::<Vec<_>>(), d.iter().map(|x| x.row).collect::<Vec<_>>(), "{q:?}");
        for (rank, x) in h.iter().enumerate() {
            assert!((x.score - 1.0 / (61.0 + rank as f32)).abs() < 1e-6, "{q:?}: {x:?}");
        }
    }
    // hybrid scores are fused scores; query-time overrides are applied and checked
    let h = hybrid.retrieve(&["Evan Morris lobbyist Genentech"], 3).unwrap().remove(0);
    assert!((h[0].score - 2.0 / 61.0).abs() < 1e-6, "top of both lists: {:?}", h[0].score);
    let o = RetrieverOptions {
        hybrid: HybridOptions { fusion: Some(Fusion::Linear { weight: 0.5 }), depth: Some(2), bm25: None },
        ..Default::default()
    };
    let lin = open_any(hybrid_dir, &o).retrieve(&["Evan Morris lobbyist Genentech"], 3).unwrap().remove(0);
    assert!((lin[0].score - 1.0).abs() < 1e-6, "{lin:?}");
    let bad = RetrieverOptions {
        hybrid: HybridOptions { fusion: Some(Fusion::Rrf { k: -2.0 }), ..Default::default() },
        ..Default::default()
    };
    assert!(matches!(AnyRetriever::open(hybrid_dir, &bad), Err(RetrieveError::Options(_))));
    // fusion settings on a dense index, ef on a bm25 index: refused, not ignored
    let dense_with_fusion = RetrieverOptions { hybrid: bad.hybrid.clone(), ..Default::default() };
    assert!(AnyRetriever::open(&f.flat, &dense_with_fusion).is_err());
    let mut with_ef = RetrieverOptions::default();
    with_ef.dense.ef_search = Some(10);
    assert!(AnyRetriever::open(bm25_dir, &with_ef).is_err());
    // k1 / b at query time change BM25 scores
    let mut k1 = RetrieverOptions::default();
    k1.bm25 = Some(r1s_bm25::Bm25Params { k1: 2.0, b: 0.9 });
    let a = bm25.retrieve(&["Genentech Roche Washington"], 1).unwrap().remove(0);
    let b = open_any(bm25_dir, &k1).retrieve(&["Genentech Roche Washington"], 1).unwrap().remove(0);
    assert_ne!(a[0].score, b[0].score);
}

#[test]
fn indexes_of_another_corpus_are_refused() {
    let f = fixture();
    let (_, bm25_dir, _) = lexical_fixture();
    let tmp = tempfile::tempdir().unwrap();
    let lines: String =
        std::fs::read_to_string(&f.corpus_file).unwrap().lines().take(20).map(|l| format!("{l}\n")).collect();
    let file = tmp.path().join("c.jsonl");
    std::fs::write(&file, lines).unwrap();
    let other = tmp.path().join("other");
    r1s_corpus::ingest(&[file], &other, &Default::default(), &NoProgress, &Cancel::new()).unwrap();
    let other_bm25 = tmp.path().join("other-bm25");
    r1s_bm25::build(&other, &other_bm25, &Default::default(), &NoProgress, &Cancel::new()).unwrap();
    let err = r1s_retrieve::hybrid::write_manifest(&tmp.path().join("h"), &f.flat, &other_bm25, Fusion::default(), 4)
        .unwrap_err();
    assert!(err.to_string().contains("different corpora"), "{err}");
    assert!(!tmp.path().join("h/manifest.json").exists());
    let err = Bm25Retriever::open(bm25_dir, Some(&other), None).unwrap_err();
    assert!(err.to_string().contains("another corpus"), "{err}");
    // a hybrid manifest edited to pair the dense index with the other corpus's bm25 index
    let (_, _, hybrid_dir) = lexical_fixture();
    let edited = tmp.path().join("edited");
    std::fs::create_dir_all(&edited).unwrap();
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hybrid_dir.join("manifest.json")).unwrap()).unwrap();
    v["dense"] = f.flat.display().to_string().into();
    v["bm25"] = other_bm25.display().to_string().into();
    std::fs::write(edited.join("manifest.json"), v.to_string()).unwrap();
    let err = AnyRetriever::open(&edited, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("another corpus"), "{err}");
}

#[test]
fn bm25_and_hybrid_serve_both_apis_byte_for_byte() {
    let (_, bm25_dir, hybrid_dir) = lexical_fixture();
    for dir in [bm25_dir, hybrid_dir] {
        let r = Arc::new(open_any(dir, &Default::default()));
        let q = "Evan Morris lobbyist Genentech";
        let direct = r.retrieve(&[q], 3).unwrap().remove(0);
        let server = Server::start(r.clone(), ServeConfig::default());
        let c = client();
        runtime().block_on(async {
            let url = format!("{}/retrieve", server.url);
            let (status, headers, body) = post(&c, &url, format!("{{\"queries\": [\"{q}\"], \"topk\": 1}}")).await;
            assert_eq!(status, 200);
            assert_eq!(headers["content-type"], "application/json");
            assert_eq!(String::from_utf8(body).unwrap(), format!("{{\"result\":[[{EVAN_MORRIS_DOC}]]}}"));
            let (_, _, body) =
                post(&c, &url, format!("{{\"queries\": [\"{q}\"], \"topk\": 1, \"return_scores\": true}}")).await;
            let body = String::from_utf8(body).unwrap();
            let prefix = format!("{{\"result\":[[{{\"document\":{EVAN_MORRIS_DOC},\"score\":");
            assert!(body.starts_with(&prefix), "{body}");
            let score = body[prefix.len()..].strip_suffix("}]]}").unwrap();
            assert_eq!(score.parse::<f64>().unwrap(), f64::from(direct[0].score));
            // an empty and a syntax-looking query are answered, not 500
            let (status, _, body) = post(&c, &url, "{\"queries\": [\"\", \"(a OR b) AND c*\"], \"topk\": 2}").await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            let url = format!("{}/queries", server.url);
            let (status, _, body) = post(&c, &url, "{\"queries\": [\"Ærø ferry Svendborg\"], \"k\": 1}").await;
            assert_eq!(status, 200);
            assert_eq!(
                String::from_utf8(body).unwrap(),
                "{\"answers\":[[\"\\\"\\u00c6r\\u00f8 \\\"Kommune\\\"\\\"\\n\\u00c6r\\u00f8 is a Danish island municipality; its ferry crosses to Svendborg \\ud83d\\udea2 daily.\"]],\"queries\":[\"\\u00c6r\\u00f8 ferry Svendborg\"]}\n"
            );
        });
        server.shutdown().unwrap();
    }
}
