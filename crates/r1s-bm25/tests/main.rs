//! The BM25 index on real data: the analyzer, hand-computed scores, query text that is not syntax,
//! MaxScore against exhaustive scoring (bit for bit) on R1-Searcher's 14,372 passages, resume after a cancel, and
//! refusals of broken directories.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use r1s_bm25::{Bm25Error, Bm25Index, Bm25Params, BuildOptions, analyzer};
use r1s_core::{Cancel, NoProgress, Progress};

fn shared(rel: &str) -> PathBuf {
    // the run's manifest directory first: a test binary reused from another checkout keeps the
    // compile-time path of that checkout
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join("../../../shared/data")
        .join(rel)
}

fn corpus_of(dir: &Path, rows: &[(&str, &str)]) -> PathBuf {
    let src = dir.join("in.jsonl");
    let text: String =
        rows.iter().map(|(id, c)| serde_json::json!({"id": id, "contents": c}).to_string() + "\n").collect();
    std::fs::write(&src, text).unwrap();
    let corpus = dir.join("corpus");
    r1s_corpus::ingest(&[src], &corpus, &Default::default(), &NoProgress, &Cancel::new()).unwrap();
    corpus
}

fn build(corpus: &Path, out: &Path, o: &BuildOptions) -> Bm25Index {
    r1s_bm25::build(corpus, out, o, &NoProgress, &Cancel::new()).unwrap();
    Bm25Index::open(out).unwrap()
}

#[test]
fn analyzer_lowercases_drops_stop_words_and_possessives_and_stems() {
    let mut a = analyzer::english();
    assert_eq!(
        analyzer::terms(&mut a, "The Running Foxes of Obama's garden, and THE dogs’s bones"),
        ["run", "fox", "obama", "garden", "dog", "bone"]
    );
    // not a possessive: a lone "s" elsewhere stays
    assert_eq!(analyzer::terms(&mut a, "vitamin s"), ["vitamin", "s"]);
    // a 41-byte token is dropped, a 40-byte one kept
    let long = "x".repeat(41);
    let keep = "z".repeat(40);
    assert_eq!(analyzer::terms(&mut a, &format!("{long} {keep}")), [keep.as_str()]);
    // numbers and non-ASCII letters are words; punctuation separates
    assert_eq!(analyzer::terms(&mut a, "Ærø (1977–2015): café"), ["ærø", "1977", "2015", "café"]);
    // Han and Hiragana characters are words of their own (UAX #29), Katakana and Hangul runs stay
    assert_eq!(analyzer::terms(&mut a, "北京是中国的首都"), ["北", "京", "是", "中", "国", "的", "首", "都"]);
    assert_eq!(analyzer::terms(&mut a, "Tokyo東京タワー서울"), ["tokyo", "東", "京", "タワー서울"]);
    assert!(analyzer::terms(&mut a, "the of and a to is").is_empty());
    assert!(analyzer::terms(&mut a, "").is_empty());
}

/// Three short passages whose lengths the one-byte norm stores exactly.
fn tiny(dir: &Path) -> Bm25Index {
    let corpus = corpus_of(
        dir,
        &[("a", "apple banana apple"), ("b", "banana cherry"), ("c", "cherry cherry cherry date elderberry fig grape")],
    );
    build(&corpus, &dir.join("bm25"), &BuildOptions { threads: 1, ..Default::default() })
}

#[test]
fn scores_equal_the_hand_computed_lucene_formula() {
    let dir = tempfile::tempdir().unwrap();
    let mut idx = tiny(dir.path());
    assert_eq!(idx.len(), 3);
    // the corpus stores "" titles: the contents are the text itself, 3 + 2 + 7 = 12 terms
    assert!((idx.avgdl() - 4.0).abs() < 1e-6, "avgdl {}", idx.avgdl());
    let n = 3.0f64;
    let idf = |df: f64| (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
    let part = |k1: f64, b: f64, tf: f64, len: f64| tf / (tf + k1 * (1.0 - b + b * len / 4.0));
    for (k1, b) in [(0.9, 0.4), (1.2, 0.75), (0.0, 0.0), (2.0, 1.0)] {
        idx.set_params(Bm25Params { k1: k1 as f32, b: b as f32 }).unwrap();
        let hits = idx.search(&["banana cherry"], 10).unwrap().remove(0);
        let a = idf(2.0) * part(k1, b, 1.0, 3.0);
        let bb = idf(2.0) * part(k1, b, 1.0, 2.0) + idf(2.0) * part(k1, b, 1.0, 2.0);
        let c = idf(2.0) * part(k1, b, 3.0, 7.0);
        let mut want = vec![(0u64, a), (1, bb), (2, c)];
        want.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        assert_eq!(hits.len(), 3);
        for ((row, score), (wrow, wscore)) in hits.iter().zip(&want) {
            assert_eq!(row, wrow, "k1 {k1} b {b}: {hits:?} vs {want:?}");
            assert!((f64::from(*score) - wscore).abs() < 1e-5, "k1 {k1} b {b}: {score} vs {wscore}");
        }
    }
    // a repeated query term counts twice (pyserini's bag of words)
    idx.set_params(Bm25Params::default()).unwrap();
    let once = idx.search(&["apple"], 1).unwrap().remove(0);
    let twice = idx.search(&["apple apple"], 1).unwrap().remove(0);
    assert!((twice[0].1 - 2.0 * once[0].1).abs() < 1e-5);
    assert!(idx.set_params(Bm25Params { k1: -1.0, b: 0.5 }).is_err());
    assert!(idx.set_params(Bm25Params { k1: 1.0, b: 1.5 }).is_err());
    assert!(idx.set_params(Bm25Params { k1: f32::NAN, b: 0.5 }).is_err());
}

#[test]
fn query_text_is_never_syntax() {
    let dir = tempfile::tempdir().unwrap();
    let idx = tiny(dir.path());
    let odd = [
        "\"banana\"",
        "title:cherry",
        "(apple OR banana) AND NOT fig",
        "cherr*",
        "cherry~2",
        "banana^10",
        "[a TO z]",
        "\\",
        "\u{0}",
        "",
        "   ",
        "the and of",
        "?!:;",
    ];
    let got = idx.search(&odd, 5).unwrap();
    assert_eq!(got.len(), odd.len());
    assert_eq!(got[0][0].0, 1, "quotes are separators");
    assert_eq!(got[1][0].0, 2, "title:cherry is two words");
    for (q, hits) in odd.iter().zip(&got).skip(9) {
        assert!(hits.is_empty(), "{q:?} has no index term: {hits:?}");
    }
    assert!(idx.search(&["banana"], 0).unwrap()[0].is_empty());
    // a k far beyond the passages (from a request or a Python caller) finds every match, sized by
    // the passages, never allocating k
    let all = idx.search(&["banana"], 10).unwrap().remove(0);
    for huge in [1usize << 40, usize::MAX] {
        assert_eq!(idx.search(&["banana"], huge).unwrap()[0], all);
    }
    assert!(idx.search(&[], 5).unwrap().is_empty());
}

fn r1_corpus() -> PathBuf {
    let corpus = r1s_core::paths::r1s_home().join("fixtures/r1-passages-v2/corpus");
    if !corpus.join("manifest.json").exists() {
        static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _g = ONE.lock().unwrap_or_else(|p| p.into_inner());
        if !corpus.join("manifest.json").exists() {
            r1s_corpus::ingest(
                &[shared("r1searcher/passages.jsonl")],
                &corpus,
                &Default::default(),
                &NoProgress,
                &Cancel::new(),
            )
            .unwrap();
        }
    }
    corpus
}

fn questions(set: &str) -> Vec<String> {
    std::fs::read_to_string(shared(&format!("r1searcher/eval_set/{set}.jsonl")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["question"].as_str().unwrap().to_owned())
        .collect()
}

/// The same rows with the same scores, bit for bit (every score sums its terms in one fixed order).
fn same_ranking(q: &str, got: &[(u64, f32)], want: &[(u64, f32)]) {
    assert_eq!(got, want, "{q}");
}

/// Cancels once `after` passages were reported.
struct CancelAfter<'a> {
    seen: AtomicU64,
    after: u64,
    cancel: &'a Cancel,
}

impl Progress for CancelAfter<'_> {
    fn advance(&self, d: u64) {
        if self.seen.fetch_add(d, Ordering::SeqCst) + d >= self.after {
            self.cancel.cancel();
        }
    }
}

#[test]
fn maxscore_equals_exhaustive_scoring_and_a_resumed_build_equals_a_fresh_one() {
    let corpus = r1_corpus();
    let dir = tempfile::tempdir().unwrap();
    let fresh = build(&corpus, &dir.path().join("fresh"), &BuildOptions { threads: 2, ..Default::default() });
    assert_eq!(fresh.len(), 14_372);
    // one thread, small buffers: another segment layout before the merge, the same results
    let one = build(
        &corpus,
        &dir.path().join("one"),
        &BuildOptions { threads: 1, heap_mib_per_thread: 15, ..Default::default() },
    );
    let qs: Vec<String> = ["hotpotqa_500", "2wiki_500", "musique_500", "bamboogle"]
        .iter()
        .flat_map(|s| questions(s).into_iter().take(40))
        .collect();
    let refs: Vec<&str> = qs.iter().map(String::as_str).collect();
    assert_eq!(one.search(&refs, 10).unwrap(), fresh.search(&refs, 10).unwrap());
    for k in [1, 10] {
        let fast = fresh.search(&refs, k).unwrap();
        for (q, hits) in refs.iter().zip(&fast) {
            same_ranking(q, hits, &fresh.search_exhaustive(q, k).unwrap());
        }
    }
    // a title finds its passage
    let hit = &fresh.search(&["Evan Morris lobbyist Genentech"], 1).unwrap()[0];
    assert!(!hit.is_empty());

    // interrupted after ~3000 passages with commits every 1000, then resumed
    let out = dir.path().join("resumed");
    let cancel = Cancel::new();
    let o = BuildOptions { threads: 2, checkpoint_every: 1000, ..Default::default() };
    let p = CancelAfter { seen: AtomicU64::new(0), after: 3000, cancel: &cancel };
    let err = r1s_bm25::build(&corpus, &out, &o, &p, &cancel).unwrap_err();
    assert!(matches!(err, Bm25Error::Cancelled), "{err}");
    assert!(!out.join("manifest.json").exists(), "an interrupted build must not look finished");
    assert!(Bm25Index::open(&out).is_err());
    let counted = AtomicU64::new(0);
    struct Count<'a>(&'a AtomicU64);
    impl Progress for Count<'_> {
        fn start(&self, _: &str, _: Option<u64>, _: r1s_core::Unit) {
            self.0.store(0, Ordering::SeqCst);
        }
        fn advance(&self, d: u64) {
            self.0.fetch_add(d, Ordering::SeqCst);
        }
    }
    r1s_bm25::build(&corpus, &out, &o, &Count(&counted), &Cancel::new()).unwrap();
    let resumed = Bm25Index::open(&out).unwrap();
    assert!(!out.join(r1s_bm25::PART_DIR).exists());
    assert_eq!(resumed.len(), fresh.len());
    assert_eq!(resumed.manifest.tokens, fresh.manifest.tokens);
    let (a, b) = (resumed.search(&refs, 10).unwrap(), fresh.search(&refs, 10).unwrap());
    for ((q, x), y) in refs.iter().zip(&a).zip(&b) {
        same_ranking(q, x, y);
    }
}

#[test]
fn broken_directories_are_refused_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let idx = tiny(dir.path());
    let root = idx.dir.clone();
    drop(idx);
    let err = Bm25Index::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("no manifest.json"), "{err}");
    let m = root.join("manifest.json");
    let good = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, good.replace("\"rows\": 3", "\"rows\": 4")).unwrap();
    let err = Bm25Index::open(&root).unwrap_err().to_string();
    assert!(err.contains("holds 3 passages, the manifest says 4"), "{err}");
    std::fs::write(&m, good.replace("r1s_en_v1", "r1s_en_v0")).unwrap();
    let err = Bm25Index::open(&root).unwrap_err().to_string();
    assert!(err.contains("rebuild"), "{err}");
    std::fs::write(&m, "{").unwrap();
    let err = Bm25Index::open(&root).unwrap_err().to_string();
    assert!(err.contains("not a BM25 manifest") && err.contains("manifest.json"), "{err}");
    let e = r1s_bm25::build(
        Path::new("/nonexistent"),
        &dir.path().join("x"),
        &BuildOptions { params: Bm25Params { k1: 1.0, b: 2.0 }, ..Default::default() },
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap_err();
    assert!(matches!(e, Bm25Error::Options(_)), "{e}");
}
