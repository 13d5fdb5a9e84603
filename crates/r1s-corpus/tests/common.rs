use std::path::{Path, PathBuf};

use r1s_core::{Cancel, NoProgress};
use r1s_corpus::{Corpus, IngestOptions, IngestReport, Result};

/// `../shared/data` relative to the workspace root.
pub fn shared(rel: &str) -> PathBuf {
    let root = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join("../..");
    let p = root.join("../shared/data").join(rel);
    assert!(p.exists(), "test data {} is missing (expected ../shared/data beside the repository)", p.display());
    p
}

pub fn dump() -> PathBuf {
    shared("wiki/enwiki-20250201-first70.xml.bz2")
}

pub fn run(inputs: &[PathBuf], out: &Path, opts: &IngestOptions) -> Result<IngestReport> {
    r1s_corpus::ingest(inputs, out, opts, &NoProgress, &Cancel::new())
}

pub fn ingest_ok(inputs: &[PathBuf], out: &Path, opts: &IngestOptions) -> Corpus {
    let report = run(inputs, out, opts).unwrap_or_else(|e| panic!("ingest failed: {e}"));
    Corpus::open(&report.out).expect("opening the corpus")
}

pub fn opts() -> IngestOptions {
    IngestOptions { threads: 2, ..IngestOptions::default() }
}

/// Every passage's text, in row order.
pub fn texts(c: &Corpus) -> Vec<(String, String)> {
    c.docstore.iter().map(|p| p.map(|p| (p.title.to_owned(), p.text.to_owned())).expect("row")).collect()
}
