//! `r1s corpus ingest`: inputs → filtered, cleaned, chunked passages → corpus directory.
//!
//! Pipeline for a single-stream dump: a decompressor thread (bz2) → a parser thread (XML pages, in
//! batches) → the cleaning/chunking stage on a rayon pool (`--threads`) → the writer on the calling
//! thread, in input order. For a multistream dump the bz2 streams are decompressed, parsed and
//! cleaned in parallel, window by window, and written in order. Memory stays bounded by the channel
//! capacities and the window size, whatever the dump size.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde::Serialize;

use r1s_core::{Cancel, Progress, Unit as ProgressUnit};

use crate::dump::{self, Counting, PageReader, PositionKind, WikiPage};
use crate::error::{CorpusError, IoContext, Result};
use crate::formats::{self, Format, LineSource, PassageIn, Unit};
use crate::store::{CorpusWriter, Counts, InputInfo, Manifest, StagingDir};

/// Options of an ingest run.
#[derive(Debug, Clone, Serialize)]
pub struct IngestOptions {
    /// Input format (`Auto` decides per file).
    pub format: Format,
    /// Words per passage.
    pub words: usize,
    /// How documents are cut into windows of about `words` words.
    pub chunking: crate::chunk::Chunking,
    /// Worker threads (0 = all cores). A setting of the run, not of the corpus: not recorded in the
    /// manifest, so that it never changes the corpus's content id.
    #[serde(skip)]
    pub threads: usize,
    /// `-multistream-index.txt.bz2` of a multistream dump.
    pub multistream_index: Option<PathBuf>,
    /// Keep redirect pages.
    pub keep_redirects: bool,
    /// Keep disambiguation pages.
    pub keep_disambiguation: bool,
    /// Keep "List of", "Lists of", "Index of", "Outline of" pages.
    pub keep_lists: bool,
    /// Skip malformed records of line formats instead of failing (they are counted).
    pub skip_bad: bool,
    /// Replace an existing output directory (a corpus or an empty directory). Not recorded, as
    /// `threads`: re-ingesting the same inputs with `--force` gives the same content id.
    #[serde(skip)]
    pub force: bool,
    /// Record sha256 of every input in the manifest.
    pub checksums: bool,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            format: Format::Auto,
            words: 100,
            chunking: crate::chunk::Chunking::Balanced,
            threads: 0,
            multistream_index: None,
            keep_redirects: false,
            keep_disambiguation: false,
            keep_lists: false,
            skip_bad: false,
            force: false,
            checksums: true,
        }
    }
}

/// What an ingest run did.
#[derive(Debug, Clone)]
pub struct IngestReport {
    pub out: PathBuf,
    pub manifest: Manifest,
    pub seconds: f64,
    pub input_bytes: u64,
}

/// Why a document was skipped (manifest keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    Namespace,
    Redirect,
    Disambiguation,
    List,
    Empty,
}

impl Skip {
    fn key(self) -> &'static str {
        match self {
            Skip::Namespace => "non_article_namespace",
            Skip::Redirect => "redirect",
            Skip::Disambiguation => "disambiguation",
            Skip::List => "list_index_outline",
            Skip::Empty => "empty_after_cleaning",
        }
    }
}

/// The result of processing one unit.
enum Processed {
    Passages { passages: Vec<PassageIn>, page: bool },
    Skipped { reason: Skip, page: bool },
    Bad(CorpusError),
}

/// Runs an ingest of `inputs` into corpus directory `out`.
pub fn ingest(
    inputs: &[PathBuf],
    out: &Path,
    opts: &IngestOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<IngestReport> {
    if inputs.is_empty() {
        return Err(CorpusError::Options("no input given".into()));
    }
    if opts.words == 0 {
        return Err(CorpusError::Options("--words must be at least 1".into()));
    }
    let started = Instant::now();
    let mut formats_found = Vec::with_capacity(inputs.len());
    for path in inputs {
        if !path.exists() {
            return Err(CorpusError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such input file")));
        }
        if !path.is_file() {
            return Err(CorpusError::Options(format!(
                "{}: not a regular file (a directory, pipe or device): an ingest reads its inputs more than \
                 once (format detection, checksum, byte progress); write the stream to a file first",
                path.display()
            )));
        }
        let f = if opts.format == Format::Auto { formats::detect(path)? } else { opts.format };
        formats_found.push(f);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .thread_name(|i| format!("r1s-ingest-{i}"))
        .build()
        .map_err(|e| CorpusError::Options(format!("cannot start {} threads: {e}", opts.threads)))?;

    let staging = StagingDir::create(out, opts.force)?;
    let mut writer = CorpusWriter::create(staging.path())?;
    let mut state = RunState { counts: Counts::default(), opts, progress, cancel, bad_shown: 0 };

    // checksums run beside the ingest, on their own thread
    let checksum_handles: Vec<_> = inputs
        .iter()
        .map(|p| {
            let p = p.clone();
            let enabled = opts.checksums;
            std::thread::spawn(move || if enabled { sha256_file(&p).map(Some) } else { Ok(None) })
        })
        .collect();

    let mut input_bytes = 0;
    for (path, &format) in inputs.iter().zip(&formats_found) {
        let size = std::fs::metadata(path).at(path)?.len();
        input_bytes += size;
        let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        progress.start(&format!("ingest {name}"), Some(size), ProgressUnit::Bytes);
        match format {
            Format::WikiXml => ingest_dump(path, &pool, &mut writer, &mut state)?,
            Format::WikiSummaries => {
                let units = formats::read_summaries(path)?;
                progress.advance(size);
                ingest_units(units.into_iter(), &pool, &mut writer, &mut state, || {})?;
            }
            Format::Auto => unreachable!("formats are resolved above"),
            line_format => {
                let src = LineSource::open(path, line_format)?;
                let bytes = src.bytes_read();
                let mut reported = 0;
                ingest_units(src, &pool, &mut writer, &mut state, || {
                    let now = bytes.load(Ordering::Relaxed);
                    progress.advance(now - reported);
                    reported = now;
                })?;
            }
        }
        progress.finish(&format!("{} passages so far", writer.rows()));
    }

    let mut infos = Vec::with_capacity(inputs.len());
    for ((path, format), handle) in inputs.iter().zip(&formats_found).zip(checksum_handles) {
        let sha256 = handle.join().map_err(|_| CorpusError::Options("checksum thread panicked".into()))??;
        let bytes = std::fs::metadata(path).at(path)?.len();
        infos.push(InputInfo { path: path.display().to_string(), format: format.name().to_owned(), bytes, sha256 });
    }
    let mut counts = state.counts;
    counts.passages = writer.rows();
    counts.text_bytes = writer.text_bytes();
    let manifest = Manifest {
        format: "r1s-corpus".into(),
        format_version: crate::store::FORMAT_VERSION,
        r1s_version: r1s_core::VERSION.into(),
        created_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        inputs: infos,
        options: serde_json::to_value(opts).unwrap_or(serde_json::Value::Null),
        counts,
        files: serde_json::json!({
            "passages": crate::store::PASSAGES_FILE,
            "docstore_index": crate::store::DOCSTORE_INDEX,
            "docstore_data": crate::store::DOCSTORE_DATA,
        }),
    };
    if cancel.is_cancelled() {
        return Err(CorpusError::Cancelled);
    }
    writer.finish(&manifest)?;
    let out = staging.commit()?;
    Ok(IngestReport { out, manifest, seconds: started.elapsed().as_secs_f64(), input_bytes })
}

struct RunState<'a> {
    counts: Counts,
    opts: &'a IngestOptions,
    progress: &'a dyn Progress,
    cancel: &'a Cancel,
    bad_shown: u32,
}

impl RunState<'_> {
    fn write(&mut self, processed: Vec<Processed>, writer: &mut CorpusWriter) -> Result<()> {
        if self.cancel.is_cancelled() {
            return Err(CorpusError::Cancelled);
        }
        let mut pages = 0;
        for p in processed {
            match p {
                Processed::Passages { passages, page } => {
                    pages += u64::from(page);
                    self.counts.documents += 1;
                    for passage in &passages {
                        writer.push(passage)?;
                    }
                }
                Processed::Skipped { reason, page } => {
                    pages += u64::from(page);
                    *self.counts.skipped.entry(reason.key().to_owned()).or_default() += 1;
                }
                Processed::Bad(e) => {
                    if !self.opts.skip_bad {
                        return Err(e);
                    }
                    self.counts.bad_records += 1;
                    if self.bad_shown < 10 {
                        self.bad_shown += 1;
                        log::warn!("skipped: {e}");
                    }
                }
            }
        }
        self.counts.pages_seen += pages;
        self.progress.items(pages);
        Ok(())
    }
}

/// Processes units in batches on the pool and writes them in order.
fn ingest_units(
    units: impl Iterator<Item = Unit>,
    pool: &rayon::ThreadPool,
    writer: &mut CorpusWriter,
    state: &mut RunState<'_>,
    mut after_batch: impl FnMut(),
) -> Result<()> {
    let mut units = units.peekable();
    while units.peek().is_some() {
        let batch: Vec<Unit> = units.by_ref().take(UNIT_BATCH).collect();
        let opts = state.opts;
        let processed = pool.install(|| batch.into_par_iter().map(|u| process(u, opts)).collect::<Vec<_>>());
        state.write(processed, writer)?;
        after_batch();
    }
    Ok(())
}

const UNIT_BATCH: usize = 2048;

fn process(unit: Unit, opts: &IngestOptions) -> Processed {
    match unit {
        Unit::Doc { doc_id, title, text } => chunked(&doc_id, &title, &text, opts, false),
        Unit::Passage(p) => Processed::Passages { passages: vec![p], page: false },
        Unit::Bad(e) => Processed::Bad(e),
    }
}

fn chunked(doc_id: &str, title: &str, text: &str, opts: &IngestOptions, page: bool) -> Processed {
    passages(doc_id, title, crate::chunk::chunk_words_in(text, opts.words, opts.chunking), page)
}

fn passages(doc_id: &str, title: &str, chunks: Vec<String>, page: bool) -> Processed {
    if chunks.is_empty() {
        return Processed::Skipped { reason: Skip::Empty, page };
    }
    let passages = chunks
        .into_iter()
        .enumerate()
        .map(|(k, text)| PassageIn {
            id: format!("{doc_id}_{k}"),
            doc_id: doc_id.to_owned(),
            title: title.to_owned(),
            text,
            chunk: k as u32,
            contents: None,
        })
        .collect();
    Processed::Passages { passages, page }
}

fn skip_reason(page: &WikiPage, keep_redirects: bool, keep_disambiguation: bool, keep_lists: bool) -> Option<Skip> {
    if page.ns != 0 {
        return Some(Skip::Namespace);
    }
    if page.redirect && !keep_redirects {
        return Some(Skip::Redirect);
    }
    if !keep_lists && ["List of ", "Lists of ", "Index of ", "Outline of "].iter().any(|p| page.title.starts_with(p)) {
        return Some(Skip::List);
    }
    if !keep_disambiguation && is_disambiguation(&page.title, &page.text) {
        return Some(Skip::Disambiguation);
    }
    None
}

fn process_page(page: WikiPage, opts: &IngestOptions) -> Processed {
    if let Some(reason) = skip_reason(&page, opts.keep_redirects, opts.keep_disambiguation, opts.keep_lists) {
        return Processed::Skipped { reason, page: true };
    }
    let text = crate::wikitext::clean(&page.text);
    // clean() normalises whitespace, so the separator-counting chunker applies
    let chunks = crate::chunk::chunk_normalized_in(&text, opts.words, opts.chunking);
    passages(&page.id.to_string(), &page.title, chunks, true)
}

/// A disambiguation page: title "(disambiguation)" or a disambiguation template
/// (`{{disambiguation}}`, `{{disambig}}`, `{{dab}}`, `{{hndis}}`, `{{geodis}}`, `{{... disambiguation}}`).
pub fn is_disambiguation(title: &str, text: &str) -> bool {
    if title.ends_with("(disambiguation)") {
        return true;
    }
    let b = text.as_bytes();
    let finder = memchr::memmem::Finder::new(b"{{");
    for at in finder.find_iter(b) {
        let rest = &b[at + 2..];
        let end = rest.iter().take(64).position(|&c| c == b'|' || c == b'}').unwrap_or(rest.len().min(64));
        let name = String::from_utf8_lossy(&rest[..end]).trim().to_lowercase().replace('_', " ");
        if matches!(
            name.as_str(),
            "disambiguation"
                | "disambig"
                | "dab"
                | "disamb"
                | "dis"
                | "hndis"
                | "geodis"
                | "numberdis"
                | "mathdab"
                | "letter-numbercombdisambig"
        ) || name.ends_with(" disambiguation")
        {
            return true;
        }
    }
    false
}

// ------------------------------------------------------------------------------------------------
// dumps

const PAGE_BATCH: usize = 64;
const PAGE_BATCH_BYTES: usize = 8 << 20;

fn ingest_dump(
    path: &Path,
    pool: &rayon::ThreadPool,
    writer: &mut CorpusWriter,
    state: &mut RunState<'_>,
) -> Result<()> {
    let is_bz2 = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("bz2"));
    if is_bz2 {
        let file = std::fs::File::open(path).at(path)?;
        // SAFETY: the dump is only read; see store::map for the same reasoning.
        let data = unsafe { memmap2::Mmap::map(&file) }.at(path)?;
        let ranges = dump::stream_offsets(&data, path, state.opts.multistream_index.as_deref())?;
        if ranges.len() > 1 {
            log::info!("{}: multistream dump, {} bz2 streams: decompressing in parallel", path.display(), ranges.len());
            return ingest_multistream(path, &data, &ranges, pool, writer, state);
        }
    }
    let file = std::fs::File::open(path).at(path)?;
    let count = Arc::new(AtomicU64::new(0));
    let counted = Counting { inner: file, count: count.clone() };
    let (reader, kind): (Box<dyn std::io::BufRead + Send>, _) = if is_bz2 {
        (Box::new(BufReader::with_capacity(1 << 20, dump::spawn_decompressor(counted))), PositionKind::Decompressed)
    } else {
        // uncompressed XML is read through a memory map: no read() copies through the kernel
        // SAFETY: the dump is only read; see store::map for the same reasoning.
        let map = unsafe { memmap2::Mmap::map(&counted.inner) }.at(path)?;
        let mapped = Counting { inner: std::io::Cursor::new(map), count: count.clone() };
        (Box::new(BufReader::with_capacity(1 << 20, mapped)), PositionKind::File)
    };

    // parser thread → batches of pages
    let (tx, rx) = crossbeam_channel::bounded::<Result<Vec<WikiPage>>>(4);
    let path_owned = path.to_path_buf();
    let parser = std::thread::Builder::new()
        .name("r1s-xml".into())
        .spawn(move || {
            let mut pages = PageReader::new(reader, &path_owned, kind, false);
            let mut batch = Vec::with_capacity(PAGE_BATCH);
            let mut bytes = 0;
            loop {
                match pages.next_page() {
                    Ok(Some(p)) => {
                        bytes += p.text.len();
                        batch.push(p);
                        if batch.len() >= PAGE_BATCH || bytes >= PAGE_BATCH_BYTES {
                            bytes = 0;
                            if tx.send(Ok(std::mem::take(&mut batch))).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {
                        if !batch.is_empty() {
                            let _ = tx.send(Ok(batch));
                        }
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        })
        .map_err(|e| CorpusError::Options(format!("cannot start the parser thread: {e}")))?;

    let mut reported = 0;
    let result = (|| {
        for batch in rx.iter() {
            let batch = batch?;
            let processed =
                pool.install(|| batch.into_par_iter().map(|p| process_page(p, state.opts)).collect::<Vec<_>>());
            state.write(processed, writer)?;
            let now = count.load(Ordering::Relaxed);
            state.progress.advance(now - reported);
            reported = now;
        }
        Ok(())
    })();
    drop(rx);
    let _ = parser.join();
    result
}

fn ingest_multistream(
    path: &Path,
    data: &[u8],
    ranges: &[std::ops::Range<usize>],
    pool: &rayon::ThreadPool,
    writer: &mut CorpusWriter,
    state: &mut RunState<'_>,
) -> Result<()> {
    let window = pool.current_num_threads() * 4;
    let opts = state.opts;
    for group in ranges.chunks(window) {
        let results: Vec<Result<Vec<Processed>>> = pool.install(|| {
            group
                .par_iter()
                .map(|r| {
                    let xml = dump::decompress_stream(&data[r.clone()]).map_err(|e| {
                        CorpusError::bad(path, crate::error::Location::Byte(r.start as u64), format!("bz2 stream: {e}"))
                    })?;
                    let reader = PageReader::new(&xml[..], path, PositionKind::Stream(r.start as u64), true);
                    reader.map(|p| p.map(|p| process_page(p, opts))).collect::<Result<Vec<_>>>()
                })
                .collect()
        });
        for (r, res) in group.iter().zip(results) {
            state.write(res?, writer)?;
            state.progress.advance(r.len() as u64);
        }
    }
    Ok(())
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    r1s_core::fsutil::sha256_file(path).at(path)
}
