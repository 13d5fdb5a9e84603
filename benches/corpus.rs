//! Criterion benches of the corpus hot paths on the real enwiki pages of `../shared/data`:
//! the wikitext cleaner (MB/s of wikitext), the chunker (MB/s of clean text) and the XML page reader.
//!
//! `cargo bench --bench corpus`; side-by-side comparisons with wikiextractor and bzip2 live in
//! `tools/bench-ingest`.

use std::io::Read;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use r1s_corpus::dump::{PageReader, PositionKind};

const DUMP: &str = "../shared/data/wiki/enwiki-20250201-first70.xml.bz2";
const WORDS: usize = 100;

fn xml() -> Vec<u8> {
    let path = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join(DUMP);
    let mut out = Vec::new();
    bzip2::read::MultiBzDecoder::new(std::fs::File::open(&path).expect("the shared enwiki dump"))
        .read_to_end(&mut out)
        .expect("decompressing");
    out
}

fn articles(xml: &[u8]) -> Vec<String> {
    PageReader::new(xml, Path::new(DUMP), PositionKind::File, false)
        .map(|p| p.expect("page"))
        .filter(|p| !p.redirect && p.ns == 0)
        .map(|p| p.text)
        .collect()
}

fn benches(c: &mut Criterion) {
    let xml = xml();
    let pages = articles(&xml);
    let wikitext_bytes: usize = pages.iter().map(String::len).sum();

    let mut g = c.benchmark_group("corpus");
    g.throughput(Throughput::Bytes(wikitext_bytes as u64));
    g.bench_function("clean_wikitext", |b| {
        b.iter(|| pages.iter().map(|p| r1s_corpus::wikitext::clean(p).len()).sum::<usize>())
    });

    let clean: Vec<String> = pages.iter().map(|p| r1s_corpus::wikitext::clean(p)).collect();
    let clean_bytes: usize = clean.iter().map(String::len).sum();
    g.throughput(Throughput::Bytes(clean_bytes as u64));
    g.bench_function("chunk_100_words", |b| {
        b.iter(|| clean.iter().map(|t| r1s_corpus::chunk::chunk_words(t, WORDS).len()).sum::<usize>())
    });

    g.throughput(Throughput::Bytes(xml.len() as u64));
    g.bench_function("parse_xml_pages", |b| {
        b.iter(|| PageReader::new(&xml[..], Path::new(DUMP), PositionKind::File, false).count())
    });
    g.finish();
}

criterion_group!(corpus, benches);
criterion_main!(corpus);
