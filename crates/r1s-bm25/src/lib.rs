//! Lexical retrieval for r1s: a BM25 index of a corpus, on tantivy.
//!
//! - [`build`]: indexes each passage's Search-R1 `contents` (`"Title"\ntext`, as pyserini indexes
//!   its `contents` field) with the English [`analyzer`], on several threads, with progress,
//!   committing every `checkpoint_every` passages so that an interrupted build resumes; the segments
//!   are merged into one at the end.
//! - [`Bm25Index`]: opens a finished index (memory-mapped by tantivy) and answers batches of text
//!   queries with the top-k `(row, BM25 score)` ([`score`] has the formula and the pruning).
//!
//! Directory layout: `tantivy/` (tantivy's files) and `manifest.json`, written last and atomically
//! (a directory without it is not an index). While building, tantivy's files live in
//! `tantivy.part/`, renamed when complete.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod analyzer;
pub mod error;
pub mod score;

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tantivy::columnar::Column;
use tantivy::schema::{FAST, Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument};

use r1s_core::{Cancel, Progress, Scored, Unit};
use r1s_corpus::Corpus;

pub use error::{Bm25Error, Result};
pub use score::Bm25Params;

/// `format` of a BM25 index manifest.
pub const FORMAT: &str = "r1s-bm25";
/// Version of the layout below `FORMAT`.
pub const FORMAT_VERSION: u32 = 1;
/// `kind` of a BM25 index manifest (as dense manifests say `flat`, `hnsw`, …).
pub const KIND: &str = "bm25";
/// The manifest, written last.
pub const MANIFEST_FILE: &str = "manifest.json";
/// tantivy's directory inside a finished index.
pub const TANTIVY_DIR: &str = "tantivy";
/// tantivy's directory while building.
pub const PART_DIR: &str = "tantivy.part";

const BODY: &str = "contents";
const ROW: &str = "row";

/// `manifest.json` of a BM25 index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bm25Manifest {
    pub format: String,
    pub format_version: u32,
    pub r1s_version: String,
    /// Always [`KIND`].
    pub kind: String,
    /// The k1 / b the index was built for (queries may override them: scoring happens at query time).
    pub params: Bm25Params,
    /// The analyzer's name ([`analyzer::ANALYZER`]).
    pub analyzer: String,
    /// Passages indexed (= corpus rows).
    pub rows: u64,
    /// Index terms over all passages.
    pub tokens: u64,
    /// Distinct index terms.
    pub terms: u64,
    /// The corpus directory as given at build time, and its content id.
    pub corpus: String,
    pub corpus_id: String,
    /// tantivy's version that wrote the files.
    pub tantivy: String,
    pub build_seconds: f64,
}

/// How [`build`] runs.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildOptions {
    /// Recorded in the manifest as the default scoring parameters.
    pub params: Bm25Params,
    /// Indexing threads (0: all cores).
    pub threads: usize,
    /// tantivy's in-memory buffer per indexing thread, in MiB (15..=4000); more means fewer, larger
    /// segments before the final merge.
    pub heap_mib_per_thread: usize,
    /// Passages between two commits (the resume points).
    pub checkpoint_every: u64,
    /// Continue a build that an interruption left in `tantivy.part/` (else start over).
    pub resume: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            params: Bm25Params::default(),
            threads: 0,
            heap_mib_per_thread: 128,
            checkpoint_every: 1_000_000,
            resume: true,
        }
    }
}

/// What a commit records, so that a rerun knows where to resume and whether it may.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    corpus_id: String,
    analyzer: String,
    rows_done: u64,
}

fn schema() -> (Schema, Field, Field) {
    let mut b = Schema::builder();
    let indexing = TextFieldIndexing::default()
        .set_tokenizer(analyzer::ANALYZER)
        .set_index_option(IndexRecordOption::WithFreqs)
        .set_fieldnorms(true);
    let body = b.add_text_field(BODY, TextOptions::default().set_indexing_options(indexing));
    let row = b.add_u64_field(ROW, FAST);
    (b.build(), body, row)
}

fn register(index: &Index) {
    index.tokenizers().register(analyzer::ANALYZER, analyzer::english());
}

/// The manifest of `dir` when it is a finished BM25 index that [`build`] of `corpus_dir` with `o`
/// would make again (same corpus content id, analyzer and k1 / b) and that opens; `None` otherwise.
///
/// Errors: [`Bm25Error::Corpus`] when `corpus_dir` cannot be read.
pub fn up_to_date(dir: &Path, corpus_dir: &Path, o: &BuildOptions) -> Result<Option<Bm25Manifest>> {
    let Ok(index) = Bm25Index::open(dir) else {
        return Ok(None);
    };
    let corpus_id = r1s_corpus::Manifest::read(corpus_dir)?.content_id();
    let m = index.manifest;
    Ok((m.corpus_id == corpus_id && m.analyzer == analyzer::ANALYZER && m.params == o.params).then_some(m))
}

/// Builds the BM25 index of the corpus in `corpus_dir` into `out` (see the crate docs for the
/// layout). Returns the manifest it wrote.
///
/// Errors: [`Bm25Error::Options`] for out-of-range parameters, [`Bm25Error::Corpus`] for an
/// unreadable corpus, [`Bm25Error::Cancelled`] after a cancel (the last commit is kept, and the same
/// call resumes from it), `Io` / `Tantivy` naming the path that failed.
pub fn build(
    corpus_dir: &Path,
    out: &Path,
    o: &BuildOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Bm25Manifest> {
    o.params.validate().map_err(Bm25Error::Options)?;
    if !(15..=4000).contains(&o.heap_mib_per_thread) {
        return Err(Bm25Error::Options(format!(
            "the indexing memory per thread must be 15..=4000 MiB (got {})",
            o.heap_mib_per_thread
        )));
    }
    let started = Instant::now();
    let corpus = Corpus::open(corpus_dir)?;
    let corpus_id = corpus.manifest.content_id();
    let rows = corpus.docstore.len();
    std::fs::create_dir_all(out).map_err(|e| Bm25Error::io(out, e))?;
    // from here on the directory is not a finished index until the new manifest is written
    let manifest_path = out.join(MANIFEST_FILE);
    remove_if_exists(&manifest_path)?;
    let part = out.join(PART_DIR);
    let (index, mut done) = open_part(&part, &corpus_id, o.resume)?;
    let (_, body, row_field) = schema();
    let threads = if o.threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { o.threads };
    // tantivy wants at least 15 MB per thread and fewer than 4 GB
    let threads = threads.clamp(1, 64);
    let mut writer: IndexWriter<TantivyDocument> = index
        .writer_with_num_threads(threads, threads * (o.heap_mib_per_thread << 20))
        .map_err(Bm25Error::tantivy(&part))?;
    // one merge of every segment at the end, none in the background meanwhile
    writer.set_merge_policy(Box::new(tantivy::indexer::NoMergePolicy));
    let commit = |writer: &mut IndexWriter<TantivyDocument>, rows_done: u64| -> Result<()> {
        let cp = Checkpoint { corpus_id: corpus_id.clone(), analyzer: analyzer::ANALYZER.into(), rows_done };
        let mut prepared = writer.prepare_commit().map_err(Bm25Error::tantivy(&part))?;
        prepared.set_payload(&serde_json::to_string(&cp).unwrap_or_default());
        prepared.commit().map_err(Bm25Error::tantivy(&part))?;
        Ok(())
    };
    progress.start("bm25 index", Some(rows), Unit::Items);
    progress.advance(done);
    if done > 0 {
        log::info!("{}: resuming the BM25 build at passage {done} of {rows}", part.display());
    }
    let mut since_commit = 0u64;
    while done < rows {
        if cancel.is_cancelled() {
            commit(&mut writer, done)?;
            return Err(Bm25Error::Cancelled);
        }
        let end = (done + 1024).min(rows);
        for r in done..end {
            let p = corpus.docstore.get(r)?;
            let mut doc = TantivyDocument::new();
            doc.add_text(body, p.contents());
            doc.add_u64(row_field, r);
            writer.add_document(doc).map_err(Bm25Error::tantivy(&part))?;
        }
        progress.advance(end - done);
        since_commit += end - done;
        done = end;
        if since_commit >= o.checkpoint_every.max(1) && done < rows {
            commit(&mut writer, done)?;
            since_commit = 0;
        }
    }
    commit(&mut writer, done)?;
    progress.finish(&format!("{rows} passages indexed"));
    let segments = index.searchable_segment_ids().map_err(Bm25Error::tantivy(&part))?;
    if segments.len() > 1 {
        progress.start("bm25 merge", None, Unit::Items);
        writer.merge(&segments).wait().map_err(Bm25Error::tantivy(&part))?;
        progress.finish(&format!("{} segments merged into one", segments.len()));
    }
    writer.wait_merging_threads().map_err(Bm25Error::tantivy(&part))?;
    drop(index);
    let final_dir = out.join(TANTIVY_DIR);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| Bm25Error::io(&final_dir, e))?;
    }
    std::fs::rename(&part, &final_dir).map_err(|e| Bm25Error::io(&final_dir, e))?;
    let opened = Bm25Index::open_tantivy(&final_dir)?;
    let searcher = opened.1.searcher();
    let tokens = total_tokens(&searcher, body).map_err(Bm25Error::tantivy(&final_dir))?;
    let terms = searcher
        .segment_readers()
        .iter()
        .map(|s| s.inverted_index(body).map(|ii| ii.terms().num_terms() as u64))
        .sum::<tantivy::Result<u64>>()
        .map_err(Bm25Error::tantivy(&final_dir))?;
    if searcher.num_docs() != rows {
        return Err(Bm25Error::bad(&final_dir, format!("holds {} passages, the corpus {rows}", searcher.num_docs())));
    }
    let manifest = Bm25Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        r1s_version: r1s_core::VERSION.into(),
        kind: KIND.into(),
        params: o.params,
        analyzer: analyzer::ANALYZER.into(),
        rows,
        tokens,
        terms,
        // relative to the index: every spelling of the corpus records the same path
        corpus: r1s_core::paths::relative_to(corpus_dir, out).display().to_string(),
        corpus_id,
        tantivy: tantivy::version_string().into(),
        build_seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Bm25Error::io(&manifest_path, e.into()))?;
    r1s_core::fsutil::write_atomic(&manifest_path, &json).map_err(|e| Bm25Error::io(&manifest_path, e))?;
    Ok(manifest)
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Bm25Error::io(path, e)),
        _ => Ok(()),
    }
}

/// The part index to build into, and the passages it already holds (0 unless resuming).
fn open_part(part: &Path, corpus_id: &str, resume: bool) -> Result<(Index, u64)> {
    if part.join("meta.json").is_file() && resume {
        let index = Index::open_in_dir(part).map_err(Bm25Error::tantivy(part))?;
        register(&index);
        let meta = index.load_metas().map_err(Bm25Error::tantivy(part))?;
        let cp: Option<Checkpoint> = meta.payload.as_deref().and_then(|p| serde_json::from_str(p).ok());
        match cp {
            Some(cp) if cp.corpus_id == corpus_id && cp.analyzer == analyzer::ANALYZER && meta.schema == schema().0 => {
                let held: u64 = meta.segments.iter().map(|s| u64::from(s.num_docs())).sum();
                if held == cp.rows_done {
                    return Ok((index, cp.rows_done));
                }
                log::warn!(
                    "{}: the last commit holds {held} passages, not {}: starting over",
                    part.display(),
                    cp.rows_done
                );
            }
            _ => log::warn!("{}: an unfinished build of another corpus or analyzer: starting over", part.display()),
        }
    }
    if part.exists() {
        std::fs::remove_dir_all(part).map_err(|e| Bm25Error::io(part, e))?;
    }
    std::fs::create_dir_all(part).map_err(|e| Bm25Error::io(part, e))?;
    let index = Index::create_in_dir(part, schema().0).map_err(Bm25Error::tantivy(part))?;
    register(&index);
    Ok((index, 0))
}

fn total_tokens(searcher: &Searcher, body: Field) -> tantivy::Result<u64> {
    searcher.segment_readers().iter().map(|s| Ok(s.inverted_index(body)?.total_num_tokens())).sum()
}

/// A finished BM25 index, opened for search (tantivy maps its files; nothing is loaded).
pub struct Bm25Index {
    /// The index directory.
    pub dir: PathBuf,
    pub manifest: Bm25Manifest,
    params: Bm25Params,
    searcher: Searcher,
    _reader: IndexReader,
    body: Field,
    /// The `row` column of each segment, in the searcher's segment order.
    rows: Vec<Column<u64>>,
    /// The analyzer, built once (its stop-word set and stemmer); cloned per query.
    analyzer: tantivy::tokenizer::TextAnalyzer,
    avgdl: f32,
}

impl std::fmt::Debug for Bm25Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bm25Index").field("dir", &self.dir).field("rows", &self.manifest.rows).finish_non_exhaustive()
    }
}

/// Whether `dir` holds a BM25 index manifest (finished or not checked further).
pub fn is_bm25_dir(dir: &Path) -> bool {
    std::fs::read(dir.join(MANIFEST_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["kind"] == KIND)
}

impl Bm25Index {
    /// Opens the index in `dir` and checks it against its manifest (format, analyzer, rows).
    ///
    /// Errors: `BadIndex` for a missing or unreadable manifest, another format or a passage count
    /// that differs from the manifest's; `Tantivy` when tantivy cannot open its files.
    pub fn open(dir: &Path) -> Result<Bm25Index> {
        let mpath = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&mpath).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Bm25Error::bad(
                dir,
                "no manifest.json: not a finished index (build it with `r1s index build --kind bm25`)",
            ),
            _ => Bm25Error::io(&mpath, e),
        })?;
        let manifest: Bm25Manifest =
            serde_json::from_slice(&bytes).map_err(|e| Bm25Error::bad(&mpath, format!("not a BM25 manifest: {e}")))?;
        if manifest.format != FORMAT || manifest.kind != KIND {
            return Err(Bm25Error::bad(
                &mpath,
                format!("format {:?} kind {:?}, not a BM25 index", manifest.format, manifest.kind),
            ));
        }
        if manifest.format_version != FORMAT_VERSION || manifest.analyzer != analyzer::ANALYZER {
            return Err(Bm25Error::bad(
                &mpath,
                format!(
                    "format version {} with analyzer {:?}; this r1s reads version {FORMAT_VERSION} with {:?}: rebuild the index",
                    manifest.format_version,
                    manifest.analyzer,
                    analyzer::ANALYZER
                ),
            ));
        }
        manifest.params.validate().map_err(|e| Bm25Error::bad(&mpath, e))?;
        let tdir = dir.join(TANTIVY_DIR);
        let (_, reader) = Bm25Index::open_tantivy(&tdir)?;
        let searcher = reader.searcher();
        if searcher.num_docs() != manifest.rows {
            return Err(Bm25Error::bad(
                &tdir,
                format!("holds {} passages, the manifest says {}", searcher.num_docs(), manifest.rows),
            ));
        }
        let (schema, body, _) = schema();
        if searcher.schema() != &schema {
            return Err(Bm25Error::bad(&tdir, "another schema than r1s's (contents, row)"));
        }
        let rows = searcher
            .segment_readers()
            .iter()
            .map(|s| s.fast_fields().u64(ROW))
            .collect::<tantivy::Result<Vec<_>>>()
            .map_err(Bm25Error::tantivy(&tdir))?;
        let tokens = total_tokens(&searcher, body).map_err(Bm25Error::tantivy(&tdir))?;
        let avgdl = if manifest.rows == 0 { 1.0 } else { (tokens as f64 / manifest.rows as f64) as f32 };
        Ok(Bm25Index {
            dir: dir.to_path_buf(),
            params: manifest.params,
            manifest,
            searcher,
            _reader: reader,
            body,
            rows,
            analyzer: analyzer::english(),
            avgdl,
        })
    }

    fn open_tantivy(tdir: &Path) -> Result<(Index, IndexReader)> {
        let index = Index::open_in_dir(tdir).map_err(Bm25Error::tantivy(tdir))?;
        register(&index);
        let reader =
            index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(Bm25Error::tantivy(tdir))?;
        Ok((index, reader))
    }

    /// The scoring parameters in use.
    pub fn params(&self) -> Bm25Params {
        self.params
    }

    /// Scores with other k1 / b than the manifest's (scoring happens at query time; the index does
    /// not change). Errors: `Options` when out of range.
    pub fn set_params(&mut self, p: Bm25Params) -> Result<()> {
        p.validate().map_err(Bm25Error::Options)?;
        self.params = p;
        Ok(())
    }

    /// Number of passages.
    pub fn len(&self) -> u64 {
        self.manifest.rows
    }

    /// Whether the index holds no passage.
    pub fn is_empty(&self) -> bool {
        self.manifest.rows == 0
    }

    /// Mean passage length in index terms.
    pub fn avgdl(&self) -> f32 {
        self.avgdl
    }

    /// The index terms of `text` (the analyzer the index was built with).
    pub fn analyze(&self, text: &str) -> Vec<String> {
        analyzer::terms(&mut self.analyzer.clone(), text)
    }

    /// The top-`k` `(row, BM25 score)` for each query, best first (ties: lower row first). A query
    /// with no index term (empty, punctuation, stop words only) gets an empty list. Queries of a
    /// batch run in parallel on rayon's pool.
    pub fn search(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Scored>>> {
        if queries.len() <= 1 {
            return queries.iter().map(|q| self.search_one(q, k)).collect();
        }
        queries.par_iter().map(|q| self.search_one(q, k)).collect()
    }

    fn tantivy_err(&self, source: tantivy::TantivyError) -> Bm25Error {
        Bm25Error::Tantivy { path: self.dir.join(TANTIVY_DIR), source }
    }

    /// A query's weighted terms and the length normalisers of the current k1 / b: what both the
    /// pruned and the exhaustive scoring start from.
    fn prepare(&self, query: &str) -> Result<(Vec<score::WeightedTerm>, [f32; 256])> {
        let terms = self.analyze(query);
        let weighted = score::weigh(&self.searcher, self.body, &terms).map_err(|e| self.tantivy_err(e))?;
        Ok((weighted, score::length_norms(self.params, self.avgdl)))
    }

    fn search_one(&self, query: &str, k: usize) -> Result<Vec<Scored>> {
        // more hits than passages is every passage: the heap is sized by what can be found, never
        // by an untrusted k
        let k = k.min(usize::try_from(self.len()).unwrap_or(usize::MAX));
        if k == 0 {
            return Ok(Vec::new());
        }
        let (weighted, norms) = self.prepare(query)?;
        if weighted.is_empty() {
            return Ok(Vec::new());
        }
        let mut top = score::TopKHandle::new(k);
        for (segment, rows) in self.searcher.segment_readers().iter().zip(&self.rows) {
            let row_of = |doc| rows.first(doc);
            score::score_segment(segment, self.body, &weighted, &norms, &row_of, &mut top)
                .map_err(|e| self.tantivy_err(e))?;
        }
        Ok(top.into_sorted())
    }

    /// Every document's score for `query` without pruning, best first: the reference MaxScore is
    /// tested against (slow on large indexes).
    pub fn search_exhaustive(&self, query: &str, k: usize) -> Result<Vec<Scored>> {
        let (weighted, norms) = self.prepare(query)?;
        let mut all = Vec::new();
        for (segment, rows) in self.searcher.segment_readers().iter().zip(&self.rows) {
            let row_of = |doc| rows.first(doc);
            all.extend(
                score::score_all(segment, self.body, &weighted, &norms, &row_of).map_err(|e| self.tantivy_err(e))?,
            );
        }
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        Ok(all)
    }
}
