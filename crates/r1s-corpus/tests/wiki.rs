//! The real 70-page enwiki dump.

use std::collections::BTreeSet;
use std::io::Write;

use arrow_array::{Array, StringArray, UInt64Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use r1s_corpus::wikitext::RESIDUE;

use crate::common::*;

const ARTICLES: [&str; 6] = ["A", "Abraham Lincoln", "Achilles", "Alabama", "Albedo", "Anarchism"];

#[test]
fn kept_pages_are_the_real_articles() {
    let dir = tempfile::tempdir().unwrap();
    let c = ingest_ok(&[dump()], &dir.path().join("wiki"), &opts());
    let counts = &c.manifest.counts;
    assert_eq!(counts.pages_seen, 70);
    assert_eq!(counts.documents, 6);
    assert_eq!(counts.skipped.get("redirect"), Some(&64));
    let titles: BTreeSet<String> = texts(&c).into_iter().map(|(t, _)| t).collect();
    assert_eq!(titles, ARTICLES.iter().map(|s| s.to_string()).collect());
    assert_eq!(c.manifest.inputs[0].format, "wiki-xml");
    assert_eq!(c.manifest.inputs[0].sha256.as_deref().map(str::len), Some(64));
}

#[test]
fn anarchism_first_sentence_and_no_residue() {
    let dir = tempfile::tempdir().unwrap();
    let c = ingest_ok(&[dump()], &dir.path().join("wiki"), &opts());
    let first = c.docstore.get(0).unwrap();
    assert_eq!(first.title, "Anarchism");
    assert_eq!(first.id, "12_0");
    assert!(
        first.text.starts_with(
            "Anarchism is a political philosophy and movement that is against all forms of authority and seeks to \
             abolish the institutions it claims maintain unnecessary coercion and hierarchy, typically including the \
             state and capitalism."
        ),
        "{}",
        first.text
    );
    for p in c.docstore.iter() {
        let p = p.unwrap();
        for r in RESIDUE {
            assert!(!p.text.contains(r), "markup {r:?} left in {} row {}: {}", p.title, p.row, p.text);
        }
        for junk in ["thumb|", "px|", "<!--", "&nbsp;", "&lt;", "__TOC__", "Category:", "File:"] {
            assert!(!p.text.contains(junk), "{junk:?} left in {} row {}: {}", p.title, p.row, p.text);
        }
        let words = p.text.split_whitespace().count();
        assert!((1..=100).contains(&words), "row {} has {words} words", p.row);
    }
    // reference sections are dropped: no passage starts a list of citations
    assert!(!texts(&c).iter().any(|(_, t)| t.contains("Retrieved ") && t.contains("ISBN")));
}

#[test]
fn parquet_matches_docstore() {
    let dir = tempfile::tempdir().unwrap();
    let c = ingest_ok(&[dump()], &dir.path().join("wiki"), &opts());
    let f = std::fs::File::open(c.dir.join("passages.parquet")).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
    let mut n = 0u64;
    for batch in reader {
        let batch = batch.unwrap();
        let rows = batch.column_by_name("row").unwrap().as_any().downcast_ref::<UInt64Array>().unwrap().clone();
        let text = batch.column_by_name("text").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
        let title = batch.column_by_name("title").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
        let contents = batch.column_by_name("contents").unwrap();
        for k in 0..batch.num_rows() {
            assert_eq!(rows.value(k), n);
            let p = c.docstore.get(n).unwrap();
            assert_eq!(text.value(k), p.text);
            assert_eq!(title.value(k), p.title);
            assert!(contents.is_null(k));
            n += 1;
        }
    }
    assert_eq!(n, c.docstore.len());
}

#[test]
fn options_keep_redirects_and_word_count() {
    let dir = tempfile::tempdir().unwrap();
    let o = r1s_corpus::IngestOptions { keep_redirects: true, words: 50, ..opts() };
    let c = ingest_ok(&[dump()], &dir.path().join("wiki"), &o);
    assert_eq!(c.manifest.counts.documents, 70);
    assert!(c.docstore.iter().all(|p| p.unwrap().text.split_whitespace().count() <= 50));
}

/// Builds a multistream dump (one bz2 stream per 10 pages, header and footer in their own streams,
/// like Wikimedia's) and its index, from the real single-stream dump.
fn make_multistream(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::io::Read;
    let mut xml = String::new();
    bzip2::read::MultiBzDecoder::new(std::fs::File::open(dump()).unwrap()).read_to_string(&mut xml).unwrap();
    let first = xml.find("<page>").unwrap();
    let last = xml.rfind("</page>").unwrap() + "</page>".len();
    let mut parts = vec![xml[..first].to_owned()];
    let pages: Vec<&str> = xml[first..last].split_inclusive("</page>").collect();
    for group in pages.chunks(10) {
        parts.push(group.concat());
    }
    parts.push(xml[last..].to_owned());
    let out = dir.join("multi.xml.bz2");
    let mut file = std::fs::File::create(&out).unwrap();
    let mut index = String::new();
    let mut offset = 0u64;
    for (k, part) in parts.iter().enumerate() {
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
        enc.write_all(part.as_bytes()).unwrap();
        let bytes = enc.finish().unwrap();
        if k > 0 && k < parts.len() - 1 {
            index.push_str(&format!("{offset}:{k}:Title {k}\n"));
        }
        file.write_all(&bytes).unwrap();
        offset += bytes.len() as u64;
    }
    let ix = dir.join("multi-index.txt.bz2");
    let mut enc = bzip2::write::BzEncoder::new(std::fs::File::create(&ix).unwrap(), bzip2::Compression::fast());
    enc.write_all(index.as_bytes()).unwrap();
    enc.finish().unwrap();
    (out, ix)
}

#[test]
fn multistream_parallel_equals_single_stream() {
    let dir = tempfile::tempdir().unwrap();
    let single = ingest_ok(&[dump()], &dir.path().join("single"), &opts());
    let (multi, index) = make_multistream(dir.path());
    let scanned = ingest_ok(std::slice::from_ref(&multi), &dir.path().join("scanned"), &opts());
    let o = r1s_corpus::IngestOptions { multistream_index: Some(index), ..opts() };
    let indexed = ingest_ok(&[multi], &dir.path().join("indexed"), &o);
    assert_eq!(texts(&single), texts(&scanned));
    assert_eq!(texts(&single), texts(&indexed));
    assert_eq!(scanned.manifest.counts.skipped, single.manifest.counts.skipped);
}

#[test]
fn uncompressed_xml_equals_bz2() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let mut xml = Vec::new();
    bzip2::read::MultiBzDecoder::new(std::fs::File::open(dump()).unwrap()).read_to_end(&mut xml).unwrap();
    let plain = dir.path().join("dump.xml");
    std::fs::write(&plain, &xml).unwrap();
    let a = ingest_ok(&[dump()], &dir.path().join("a"), &opts());
    let b = ingest_ok(&[plain], &dir.path().join("b"), &r1s_corpus::IngestOptions { threads: 1, ..opts() });
    assert_eq!(texts(&a), texts(&b));
}
