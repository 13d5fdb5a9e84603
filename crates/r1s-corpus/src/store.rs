//! The corpus directory: `passages.parquet`, the docstore and `manifest.json`.
//!
//! Docstore (random access to any passage in O(1) without touching Parquet):
//! - `docstore.idx`: magic `R1SDOCS\0`, u32 version, u32 reserved, u64 count, then count+1 u64
//!   offsets into `docstore.bin` (little endian).
//! - `docstore.bin`: per passage `[u8 flags][u32 id][u32 doc_id][u32 title][u32 contents if flag 1]`
//!   lengths, then those strings, then the text up to the next record.
//!
//! A corpus is written into a hidden temporary directory next to its destination and renamed into
//! place when complete, so an interrupted run never leaves a directory that looks finished.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{StringBuilder, UInt32Builder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use crate::error::{CorpusError, IoContext, Result};
use crate::formats::PassageIn;

/// File names inside a corpus directory.
pub const PASSAGES_FILE: &str = "passages.parquet";
pub const DOCSTORE_INDEX: &str = "docstore.idx";
pub const DOCSTORE_DATA: &str = "docstore.bin";
pub const MANIFEST_FILE: &str = "manifest.json";

/// Version of the corpus directory format.
pub const FORMAT_VERSION: u32 = 1;
const DOCSTORE_MAGIC: &[u8; 8] = b"R1SDOCS\0";
const DOCSTORE_HEADER: usize = 24;
/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 64 * 1024;
const BATCH_ROWS: usize = 8 * 1024;

/// The Arrow schema of `passages.parquet`.
pub fn passages_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("row", DataType::UInt64, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("doc_id", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("chunk", DataType::UInt32, false),
        Field::new("contents", DataType::Utf8, true),
    ]))
}

/// One input file as recorded in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InputInfo {
    pub path: String,
    pub format: String,
    pub bytes: u64,
    /// sha256 of the file as stored (absent when checksums were turned off).
    pub sha256: Option<String>,
}

/// Counts of an ingest run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    /// Passages written.
    pub passages: u64,
    /// Documents that gave at least one passage.
    pub documents: u64,
    /// Wiki pages read (all namespaces).
    pub pages_seen: u64,
    /// Skipped documents by reason.
    pub skipped: std::collections::BTreeMap<String, u64>,
    /// Malformed records skipped under `--skip-bad`.
    pub bad_records: u64,
    /// Bytes of passage text.
    pub text_bytes: u64,
}

/// `manifest.json` of a corpus directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub r1s_version: String,
    pub created_unix: u64,
    pub inputs: Vec<InputInfo>,
    pub options: serde_json::Value,
    pub counts: Counts,
    pub files: serde_json::Value,
}

impl Manifest {
    /// The corpus's identity: sha256 of this manifest without its creation time, so that ingesting the
    /// same inputs with the same options again gives the same id (embeddings and indexes record it).
    pub fn content_id(&self) -> String {
        let mut m = self.clone();
        m.created_unix = 0;
        r1s_core::fsutil::sha256_hex(&serde_json::to_vec(&m).unwrap_or_default())
    }

    /// Reads and checks the manifest of corpus `dir`.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).at(&path)?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| CorpusError::BadCorpus {
            path: path.clone(),
            reason: format!("manifest is not valid: {e}"),
        })?;
        if m.format != "r1s-corpus" || m.format_version != FORMAT_VERSION {
            return Err(CorpusError::BadCorpus {
                path,
                reason: format!(
                    "format {} v{} (this r1s reads r1s-corpus v{FORMAT_VERSION})",
                    m.format, m.format_version
                ),
            });
        }
        Ok(m)
    }
}

/// A directory being written: removed on drop unless committed.
#[derive(Debug)]
pub struct StagingDir {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl StagingDir {
    /// Prepares a hidden temporary directory next to `dest`. Fails if `dest` exists and `!force`.
    ///
    /// `force` replaces a corpus (or an empty directory), never anything else: a directory holding
    /// other files (an index, the user's own) or a file is refused either way, since the commit
    /// removes what `dest` held.
    pub fn create(dest: &Path, force: bool) -> Result<StagingDir> {
        if dest.exists() && !force {
            return Err(CorpusError::OutputExists { path: dest.to_path_buf() });
        }
        if dest.exists() {
            let is_corpus = dest.join(MANIFEST_FILE).is_file() && dest.join(DOCSTORE_INDEX).is_file();
            let is_empty = std::fs::read_dir(dest).is_ok_and(|mut d| d.next().is_none());
            if !is_corpus && !is_empty {
                return Err(CorpusError::OutputNotCorpus { path: dest.to_path_buf() });
            }
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).at(&parent)?;
        let name = dest
            .file_name()
            .ok_or_else(|| CorpusError::Options(format!("{}: not a directory name", dest.display())))?
            .to_string_lossy()
            .into_owned();
        // leftovers of interrupted runs into the same destination: only those whose process is gone
        // (another ingest into it may be running: its directory is not ours to remove)
        let prefix = format!(".{name}.tmp-");
        if let Ok(entries) = std::fs::read_dir(&parent) {
            for e in entries.flatten() {
                let file_name = e.file_name().to_string_lossy().into_owned();
                let Some(rest) = file_name.strip_prefix(&prefix) else { continue };
                let pid = rest.split(['-', '.']).next().and_then(|p| p.parse::<u32>().ok());
                if pid.is_some_and(|p| !process_alive(p)) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        // unique per process and call: two writers of one destination never share a directory
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = parent.join(format!("{prefix}{}-{n}", std::process::id()));
        std::fs::create_dir(&tmp).at(&tmp)?;
        Ok(StagingDir { tmp, dest: dest.to_path_buf(), committed: false })
    }

    /// The temporary directory to write into.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Moves the finished directory into place (replacing an existing one).
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.dest.exists() {
            let mut old = self.tmp.clone().into_os_string();
            old.push(".old");
            let old = PathBuf::from(old);
            std::fs::rename(&self.dest, &old).at(&self.dest)?;
            std::fs::rename(&self.tmp, &self.dest).at(&self.dest)?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&self.tmp, &self.dest).at(&self.dest)?;
        }
        self.committed = true;
        Ok(self.dest.clone())
    }
}

/// Whether process `pid` is running (Linux: `/proc/PID`; elsewhere assumed running, so nothing
/// is removed).
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Writes passages to Parquet and the docstore, in row order.
pub struct CorpusWriter {
    dir: PathBuf,
    parquet: ArrowWriter<File>,
    idx: BufWriter<File>,
    bin: BufWriter<File>,
    offset: u64,
    rows: u64,
    text_bytes: u64,
    cols: Columns,
}

impl std::fmt::Debug for CorpusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorpusWriter").field("dir", &self.dir).field("rows", &self.rows).finish_non_exhaustive()
    }
}

struct Columns {
    row: UInt64Builder,
    id: StringBuilder,
    doc_id: StringBuilder,
    title: StringBuilder,
    text: StringBuilder,
    chunk: UInt32Builder,
    contents: StringBuilder,
    len: usize,
}

impl Columns {
    fn new() -> Self {
        Columns {
            row: UInt64Builder::with_capacity(BATCH_ROWS),
            id: StringBuilder::new(),
            doc_id: StringBuilder::new(),
            title: StringBuilder::new(),
            text: StringBuilder::new(),
            chunk: UInt32Builder::with_capacity(BATCH_ROWS),
            contents: StringBuilder::new(),
            len: 0,
        }
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        self.len = 0;
        vec![
            Arc::new(self.row.finish()),
            Arc::new(self.id.finish()),
            Arc::new(self.doc_id.finish()),
            Arc::new(self.title.finish()),
            Arc::new(self.text.finish()),
            Arc::new(self.chunk.finish()),
            Arc::new(self.contents.finish()),
        ]
    }
}

impl CorpusWriter {
    /// Starts writing a corpus into `dir` (a staging directory).
    pub fn create(dir: &Path) -> Result<CorpusWriter> {
        let ppath = dir.join(PASSAGES_FILE);
        let file = File::create(&ppath).at(&ppath)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(1).map_err(|e| CorpusError::Parquet { path: ppath.clone(), source: e })?,
            ))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_created_by(format!("r1s {}", r1s_core::VERSION));
        // unique long strings: dictionaries and min/max statistics would cost time and buy nothing
        let props = ["id", "text", "contents"].into_iter().fold(props, |p, col| {
            p.set_column_dictionary_enabled(ColumnPath::from(col), false)
                .set_column_statistics_enabled(ColumnPath::from(col), EnabledStatistics::None)
        });
        let props = props.build();
        let parquet = ArrowWriter::try_new(file, passages_schema(), Some(props))
            .map_err(|e| CorpusError::Parquet { path: ppath.clone(), source: e })?;
        let ipath = dir.join(DOCSTORE_INDEX);
        let mut idx = BufWriter::with_capacity(1 << 20, File::create(&ipath).at(&ipath)?);
        idx.write_all(&[0u8; DOCSTORE_HEADER]).at(&ipath)?;
        idx.write_all(&0u64.to_le_bytes()).at(&ipath)?;
        let bpath = dir.join(DOCSTORE_DATA);
        let bin = BufWriter::with_capacity(1 << 20, File::create(&bpath).at(&bpath)?);
        Ok(CorpusWriter {
            dir: dir.to_path_buf(),
            parquet,
            idx,
            bin,
            offset: 0,
            rows: 0,
            text_bytes: 0,
            cols: Columns::new(),
        })
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes of passage text written so far.
    pub fn text_bytes(&self) -> u64 {
        self.text_bytes
    }

    /// Appends one passage as the next row.
    pub fn push(&mut self, p: &PassageIn) -> Result<()> {
        let c = &mut self.cols;
        c.row.append_value(self.rows);
        c.id.append_value(&p.id);
        c.doc_id.append_value(&p.doc_id);
        c.title.append_value(&p.title);
        c.text.append_value(&p.text);
        c.chunk.append_value(p.chunk);
        c.contents.append_option(p.contents.as_deref());
        c.len += 1;

        // one docstore record, written at once; paths are built only on error
        let fields: [&str; 3] = [&p.id, &p.doc_id, &p.title];
        let mut head = [0u8; 17];
        head[0] = u8::from(p.contents.is_some());
        let mut head_len = 1;
        for s in fields.iter().copied().chain(p.contents.as_deref()) {
            let len = u32::try_from(s.len()).map_err(|_| {
                CorpusError::Options(format!("{}: a field of 4 GiB or more", self.dir.join(DOCSTORE_DATA).display()))
            })?;
            head[head_len..head_len + 4].copy_from_slice(&len.to_le_bytes());
            head_len += 4;
        }
        let parts = std::iter::once(&head[..head_len])
            .chain(fields.iter().map(|s| s.as_bytes()))
            .chain(p.contents.as_deref().map(str::as_bytes))
            .chain(std::iter::once(p.text.as_bytes()));
        let mut rec = 0;
        for part in parts {
            self.bin.write_all(part).map_err(|e| CorpusError::io(self.dir.join(DOCSTORE_DATA), e))?;
            rec += part.len();
        }
        self.offset += rec as u64;
        self.idx
            .write_all(&self.offset.to_le_bytes())
            .map_err(|e| CorpusError::io(self.dir.join(DOCSTORE_INDEX), e))?;
        self.rows += 1;
        self.text_bytes += p.text.len() as u64;
        if self.cols.len >= BATCH_ROWS {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<()> {
        if self.cols.len == 0 {
            return Ok(());
        }
        let ppath = self.dir.join(PASSAGES_FILE);
        let batch = RecordBatch::try_new(passages_schema(), self.cols.finish())
            .map_err(|e| CorpusError::Parquet { path: ppath.clone(), source: e.into() })?;
        self.parquet.write(&batch).map_err(|e| CorpusError::Parquet { path: ppath, source: e })
    }

    /// Flushes everything and writes `manifest.json`.
    pub fn finish(mut self, manifest: &Manifest) -> Result<()> {
        self.flush_batch()?;
        let ppath = self.dir.join(PASSAGES_FILE);
        self.parquet.close().map_err(|e| CorpusError::Parquet { path: ppath, source: e })?;
        let bpath = self.dir.join(DOCSTORE_DATA);
        let bin = self.bin.into_inner().map_err(|e| CorpusError::io(&bpath, e.into_error()))?;
        bin.sync_all().at(&bpath)?;
        let ipath = self.dir.join(DOCSTORE_INDEX);
        let mut idx = self.idx.into_inner().map_err(|e| CorpusError::io(&ipath, e.into_error()))?;
        idx.seek(SeekFrom::Start(0)).at(&ipath)?;
        let mut header = Vec::with_capacity(DOCSTORE_HEADER);
        header.extend_from_slice(DOCSTORE_MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&self.rows.to_le_bytes());
        idx.write_all(&header).at(&ipath)?;
        idx.sync_all().at(&ipath)?;
        let mpath = self.dir.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| CorpusError::io(&mpath, e.into()))?;
        std::fs::write(&mpath, json).at(&mpath)?;
        Ok(())
    }
}

/// A passage read from the docstore, borrowing the mapped file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassageRef<'a> {
    pub row: u64,
    pub id: &'a str,
    pub doc_id: &'a str,
    pub title: &'a str,
    pub text: &'a str,
    /// Original Search-R1 contents when `"title"\ntext` does not reproduce them.
    pub raw_contents: Option<&'a str>,
}

impl PassageRef<'_> {
    /// Search-R1 `contents`: the original when kept, else `"title"\ntext`.
    pub fn contents(&self) -> String {
        match self.raw_contents {
            Some(c) => c.to_owned(),
            None => r1s_core::search_r1_contents(self.title, self.text),
        }
    }

    /// An owned [`r1s_core::Passage`].
    pub fn to_passage(&self) -> r1s_core::Passage {
        r1s_core::Passage {
            row: self.row,
            id: self.id.to_owned(),
            doc_id: self.doc_id.to_owned(),
            title: self.title.to_owned(),
            text: self.text.to_owned(),
        }
    }
}

/// Memory-mapped docstore: any passage by row in O(1).
#[derive(Debug)]
pub struct Docstore {
    idx: memmap2::Mmap,
    bin: memmap2::Mmap,
    rows: u64,
    path: PathBuf,
}

fn map(path: &Path) -> Result<memmap2::Mmap> {
    let f = File::open(path).at(path)?;
    // SAFETY: corpus files are written once and renamed into place; r1s never modifies them while
    // mapped. Another process truncating them would be a misuse we cannot guard against.
    unsafe { memmap2::Mmap::map(&f) }.at(path)
}

impl Docstore {
    /// Opens the docstore of corpus `dir`.
    pub fn open(dir: &Path) -> Result<Docstore> {
        let ipath = dir.join(DOCSTORE_INDEX);
        let idx = map(&ipath)?;
        let bin = map(&dir.join(DOCSTORE_DATA))?;
        let bad = |reason: String| CorpusError::BadCorpus { path: ipath.clone(), reason };
        if idx.len() < DOCSTORE_HEADER + 8 || &idx[..8] != DOCSTORE_MAGIC {
            return Err(bad("not a docstore index".into()));
        }
        let version = u32::from_le_bytes(idx[8..12].try_into().unwrap_or_default());
        if version != FORMAT_VERSION {
            return Err(bad(format!("docstore version {version}, expected {FORMAT_VERSION}")));
        }
        let rows = u64::from_le_bytes(idx[16..24].try_into().unwrap_or_default());
        // the row count comes from the file: its index size is computed checked
        let expect =
            rows.checked_add(1).and_then(|r| r.checked_mul(8)).and_then(|b| b.checked_add(DOCSTORE_HEADER as u64));
        if expect != Some(idx.len() as u64) {
            return Err(bad(format!(
                "index has {} bytes, expected {} for {rows} rows",
                idx.len(),
                expect.map_or_else(|| "more than 2^64".to_owned(), |e| e.to_string())
            )));
        }
        let ds = Docstore { idx, bin, rows, path: dir.to_path_buf() };
        if ds.offset(rows) != ds.bin.len() as u64 {
            return Err(bad(format!("data file has {} bytes, index says {}", ds.bin.len(), ds.offset(rows))));
        }
        Ok(ds)
    }

    /// Number of passages.
    pub fn len(&self) -> u64 {
        self.rows
    }

    /// Whether the corpus has no passage.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    fn offset(&self, k: u64) -> u64 {
        let at = DOCSTORE_HEADER + 8 * k as usize;
        u64::from_le_bytes(self.idx[at..at + 8].try_into().unwrap_or_default())
    }

    /// The passage at `row`.
    pub fn get(&self, row: u64) -> Result<PassageRef<'_>> {
        if row >= self.rows {
            return Err(CorpusError::RowOutOfRange { row, rows: self.rows });
        }
        let (start, end) = (self.offset(row) as usize, self.offset(row + 1) as usize);
        let corrupt = || CorpusError::BadCorpus {
            path: self.path.join(DOCSTORE_DATA),
            reason: format!("record of row {row} at byte {start} is corrupt"),
        };
        let rec = self.bin.get(start..end).ok_or_else(corrupt)?;
        let flags = *rec.first().ok_or_else(corrupt)?;
        let nlen = if flags & 1 == 1 { 4 } else { 3 };
        let mut lens = [0usize; 4];
        for (k, l) in lens.iter_mut().enumerate().take(nlen) {
            let b = rec.get(1 + 4 * k..5 + 4 * k).ok_or_else(corrupt)?;
            *l = u32::from_le_bytes(b.try_into().map_err(|_| corrupt())?) as usize;
        }
        let mut pos = 1 + 4 * nlen;
        let mut take = |n: usize| -> Result<&str> {
            let b = rec.get(pos..pos + n).ok_or_else(corrupt)?;
            pos += n;
            std::str::from_utf8(b).map_err(|_| corrupt())
        };
        let id = take(lens[0])?;
        let doc_id = take(lens[1])?;
        let title = take(lens[2])?;
        let raw_contents = if nlen == 4 { Some(take(lens[3])?) } else { None };
        let text = std::str::from_utf8(rec.get(pos..).ok_or_else(corrupt)?).map_err(|_| corrupt())?;
        Ok(PassageRef { row, id, doc_id, title, text, raw_contents })
    }

    /// All passages in row order.
    pub fn iter(&self) -> impl Iterator<Item = Result<PassageRef<'_>>> + '_ {
        (0..self.rows).map(move |r| self.get(r))
    }
}

/// An opened corpus directory.
#[derive(Debug)]
pub struct Corpus {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub docstore: Docstore,
}

impl Corpus {
    /// Opens corpus `dir` (manifest and docstore; Parquet is not read).
    pub fn open(dir: &Path) -> Result<Corpus> {
        if !dir.join(MANIFEST_FILE).exists() {
            return Err(CorpusError::BadCorpus {
                path: dir.to_path_buf(),
                reason: format!("no {MANIFEST_FILE} (not a finished corpus directory)"),
            });
        }
        // an index directory given where a corpus is expected: say so, and where its corpus is
        if !dir.join(DOCSTORE_INDEX).exists()
            && let Some(v) = std::fs::read(dir.join(MANIFEST_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            && let Some(kind) = v["kind"].as_str()
        {
            return Err(CorpusError::BadCorpus {
                path: dir.to_path_buf(),
                reason: format!(
                    "this is a {kind} index directory, not a corpus{}",
                    v["corpus"]
                        .as_str()
                        .filter(|c| !c.is_empty())
                        .map(|c| format!(" (its corpus is {c})"))
                        .unwrap_or_default()
                ),
            });
        }
        let manifest = Manifest::read(dir)?;
        let docstore = Docstore::open(dir)?;
        if docstore.len() != manifest.counts.passages {
            return Err(CorpusError::BadCorpus {
                path: dir.to_path_buf(),
                reason: format!(
                    "manifest counts {} passages, docstore holds {}",
                    manifest.counts.passages,
                    docstore.len()
                ),
            });
        }
        Ok(Corpus { dir: dir.to_path_buf(), manifest, docstore })
    }

    /// Writes the corpus as Search-R1 JSONL `{"id","contents"}` (the original `contents` where the
    /// input was Search-R1 JSONL).
    pub fn export_search_r1(&self, out: &mut dyn Write) -> Result<u64> {
        #[derive(Serialize)]
        struct Line<'a> {
            id: &'a str,
            contents: &'a str,
        }
        let mut n = 0;
        let mut line = Vec::with_capacity(4096);
        for p in self.docstore.iter() {
            let p = p?;
            let contents = p.contents();
            line.clear();
            serde_json::to_writer(&mut line, &Line { id: p.id, contents: &contents })
                .map_err(|e| CorpusError::io("<export>", e.into()))?;
            line.push(b'\n');
            out.write_all(&line).map_err(|e| CorpusError::io("<export>", e))?;
            n += 1;
        }
        out.flush().map_err(|e| CorpusError::io("<export>", e))?;
        Ok(n)
    }
}
