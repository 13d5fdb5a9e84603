//! Other input formats: KILT, Search-R1 (round trip), FlashRAG, DPR TSV, the sample summaries.

use std::io::BufRead;

use r1s_corpus::{Format, IngestOptions};

use crate::common::*;

#[test]
fn kilt_sample() {
    let dir = tempfile::tempdir().unwrap();
    let src = shared("kilt/kilt_knowledgesource_sample100.jsonl");
    let c = ingest_ok(&[src], &dir.path().join("kilt"), &opts());
    assert_eq!(c.manifest.inputs[0].format, "kilt");
    // the "sample100" file holds 99 pages
    assert_eq!(c.manifest.counts.documents, 99);
    let all = texts(&c);
    assert!(all.iter().all(|(_, t)| !t.contains("Section::::") && !t.contains("BULLET::::")));
    let first = c.docstore.get(0).unwrap();
    assert_eq!(first.title, "A");
    assert!(first.text.starts_with("A (named , plural \"As\""), "{}", first.text);
    assert!(all.iter().all(|(_, t)| t.split_whitespace().count() <= 100));
}

#[test]
fn search_r1_round_trip_is_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let src = shared("r1searcher/passages.jsonl");
    let c = ingest_ok(std::slice::from_ref(&src), &dir.path().join("r1"), &opts());
    assert_eq!(c.manifest.inputs[0].format, "search-r1-jsonl");
    assert_eq!(c.docstore.len(), 14_372);
    let mut out = Vec::new();
    assert_eq!(c.export_search_r1(&mut out).unwrap(), 14_372);
    let original = std::io::BufReader::new(std::fs::File::open(&src).unwrap());
    let mut n = 0;
    for (a, b) in original.lines().zip(out.split(|&b| b == b'\n')) {
        let a: serde_json::Value = serde_json::from_str(&a.unwrap()).unwrap();
        let b: serde_json::Value = serde_json::from_slice(b).unwrap();
        assert_eq!(a["id"], b["id"]);
        assert_eq!(a["contents"].as_str().unwrap().as_bytes(), b["contents"].as_str().unwrap().as_bytes());
        n += 1;
    }
    assert_eq!(n, 14_372);
}

#[test]
fn search_r1_titles_are_split() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("c.jsonl");
    std::fs::write(&src, "{\"id\": \"7\", \"contents\": \"\\\"Paris\\\"\\nParis is the capital of France.\"}\n{\"id\": 8, \"contents\": \"no title here\"}\n").unwrap();
    let c = ingest_ok(&[src], &dir.path().join("c"), &opts());
    let p = c.docstore.get(0).unwrap();
    assert_eq!((p.id, p.title, p.text, p.raw_contents), ("7", "Paris", "Paris is the capital of France.", None));
    let q = c.docstore.get(1).unwrap();
    assert_eq!((q.id, q.title, q.text), ("8", "", "no title here"));
}

#[test]
fn flashrag_and_dpr_tsv() {
    let dir = tempfile::tempdir().unwrap();
    let fr = dir.path().join("flash.jsonl");
    std::fs::write(&fr, "{\"id\": \"1\", \"title\": \"Alpha\", \"text\": \"alpha text\"}\n\n{\"id\": \"2\", \"title\": \"Beta\", \"text\": \"beta text\"}\n").unwrap();
    let c = ingest_ok(&[fr], &dir.path().join("fr"), &opts());
    assert_eq!(c.manifest.inputs[0].format, "flashrag-jsonl");
    assert_eq!(texts(&c), vec![("Alpha".into(), "alpha text".into()), ("Beta".into(), "beta text".into())]);

    let tsv = dir.path().join("psgs_w100.tsv");
    std::fs::write(
        &tsv,
        "id\ttext\ttitle\n1\t\"Aaron Aaron ( or ; \"\"Ahärôn\"\") is a prophet\"\tAaron\n2\tplain text\tB\n",
    )
    .unwrap();
    let c = ingest_ok(&[tsv], &dir.path().join("tsv"), &opts());
    assert_eq!(c.manifest.inputs[0].format, "dpr-tsv");
    let p = c.docstore.get(0).unwrap();
    assert_eq!((p.id, p.title, p.text), ("1", "Aaron", "Aaron Aaron ( or ; \"Ahärôn\") is a prophet"));
    assert_eq!(c.docstore.len(), 2);
}

#[test]
fn several_inputs_make_one_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = [dump(), shared("kilt/kilt_knowledgesource_sample100.jsonl")];
    let c = ingest_ok(&inputs, &dir.path().join("both"), &opts());
    assert_eq!(c.manifest.inputs.len(), 2);
    assert_eq!(c.manifest.counts.documents, 6 + 99);
}

#[test]
fn sample_summaries_when_fetched() {
    let src = r1s_core::paths::sample_corpus();
    if !src.exists() {
        eprintln!("skipping: {} not fetched (run tools/setup)", src.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let o = IngestOptions { format: Format::WikiSummaries, ..opts() };
    let c = ingest_ok(std::slice::from_ref(&src), &dir.path().join("sum"), &o);
    assert_eq!(c.manifest.counts.documents, 10_033);
    assert_eq!(c.docstore.len(), 12_324);
    // the short tails DPR windows leave (#16): 304 passages under 5 words, 626 under 10; balanced
    // windows leave 0 and 3 (three whole summaries), from the same number of passages
    let short = |c: &r1s_corpus::Corpus, n: usize| {
        c.docstore.iter().filter(|p| p.as_ref().unwrap().text.split_whitespace().count() < n).count()
    };
    assert_eq!((short(&c, 5), short(&c, 10)), (0, 3));
    let dpr = ingest_ok(&[src], &dir.path().join("dpr"), &IngestOptions { chunking: r1s_corpus::Chunking::Dpr, ..o });
    assert_eq!(dpr.docstore.len(), 12_324);
    assert_eq!((short(&dpr, 5), short(&dpr, 10)), (304, 626));
}

/// 100-word DPR windows left short tails (304 passages under 5 words in the sample corpus, and
/// "Tasmania: capital city." ranked first for "capital of Australia"). Balanced windows, the default,
/// leave no passage under half the window unless its whole document is; `dpr` keeps DPR's windows;
/// the manifest records the mode.
#[test]
fn short_tail_passages_are_balanced_away() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = [dump(), shared("kilt/kilt_knowledgesource_sample100.jsonl")];
    let short_tails = |c: &r1s_corpus::Corpus| {
        let mut per_doc: std::collections::HashMap<String, Vec<usize>> = Default::default();
        for p in c.docstore.iter() {
            let p = p.unwrap();
            per_doc.entry(p.doc_id.to_owned()).or_default().push(p.text.split_whitespace().count());
        }
        per_doc.values().filter(|w| w.len() > 1).flatten().filter(|&&n| n < 50).count()
    };
    let balanced = ingest_ok(&inputs, &dir.path().join("balanced"), &opts());
    let dpr =
        ingest_ok(&inputs, &dir.path().join("dpr"), &IngestOptions { chunking: r1s_corpus::Chunking::Dpr, ..opts() });
    assert_eq!(balanced.manifest.options["chunking"], "balanced");
    assert_eq!(dpr.manifest.options["chunking"], "dpr");
    // the same number of windows, the same words
    assert_eq!(balanced.docstore.len(), dpr.docstore.len());
    assert!(short_tails(&dpr) >= 40, "dpr tails: {}", short_tails(&dpr));
    assert_eq!(short_tails(&balanced), 0);
    assert_ne!(balanced.manifest.content_id(), dpr.manifest.content_id());
}
