//! Input formats other than XML dumps, and format detection.
//!
//! | format | shape | passages |
//! |---|---|---|
//! | `search-r1-jsonl` | `{"id","contents":"\"Title\"\ntext"}` | kept as given (round-trips byte for byte) |
//! | `flashrag-jsonl` | `{"id","title","text"}` (or `contents`) | kept as given |
//! | `dpr-tsv` | `id\ttext\ttitle`, header line, read as Python's `csv.reader(f, delimiter="\t")` (quoted tabs, newlines, doubled quotes) | kept as given |
//! | `kilt` | `{"wikipedia_id","wikipedia_title","text":[paragraphs]}` | re-chunked |
//! | `wiki-summaries` | `{"key": {"title","extract","description"}, ...}` | re-chunked |

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{CorpusError, IoContext, Location, Result};

/// An input format of `r1s corpus ingest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Decide from the file name and its first bytes.
    Auto,
    /// MediaWiki XML export, `.xml` or `.xml.bz2`.
    WikiXml,
    /// Search-R1 corpus JSONL `{"id","contents"}`.
    SearchR1Jsonl,
    /// FlashRAG corpus JSONL `{"id","title","text"}`.
    FlashragJsonl,
    /// DPR `psgs_w100.tsv`: `id\ttext\ttitle`.
    DprTsv,
    /// KILT knowledge source JSONL.
    Kilt,
    /// The JSON of Wikipedia summaries shipped as the sample corpus.
    WikiSummaries,
}

impl Format {
    /// The name used on the command line and in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::WikiXml => "wiki-xml",
            Format::SearchR1Jsonl => "search-r1-jsonl",
            Format::FlashragJsonl => "flashrag-jsonl",
            Format::DprTsv => "dpr-tsv",
            Format::Kilt => "kilt",
            Format::WikiSummaries => "wiki-summaries",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        [
            Format::Auto,
            Format::WikiXml,
            Format::SearchR1Jsonl,
            Format::FlashragJsonl,
            Format::DprTsv,
            Format::Kilt,
            Format::WikiSummaries,
        ]
        .into_iter()
        .find(|f| f.name() == s)
        .ok_or_else(|| format!("unknown format {s:?}"))
    }
}

/// Decides the format of `path` from its name and first bytes.
pub fn detect(path: &Path) -> Result<Format> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    if name.ends_with(".xml") || name.ends_with(".xml.bz2") || name.ends_with(".bz2") {
        return Ok(Format::WikiXml);
    }
    if name.ends_with(".tsv") || name.ends_with(".tsv.txt") {
        return Ok(Format::DprTsv);
    }
    let mut head = Vec::with_capacity(64 * 1024);
    std::fs::File::open(path).at(path)?.take(64 * 1024).read_to_end(&mut head).at(path)?;
    let text = String::from_utf8_lossy(&head);
    let trimmed = text.trim_start();
    if trimmed.starts_with('<') {
        return Ok(Format::WikiXml);
    }
    let unknown = |reason: &str| CorpusError::UnknownFormat { path: path.to_path_buf(), reason: reason.to_owned() };
    if !trimmed.starts_with('{') {
        return Err(unknown("neither XML nor JSON"));
    }
    let first_line = trimmed.lines().next().unwrap_or("");
    match serde_json::from_str::<serde_json::Value>(first_line) {
        Ok(serde_json::Value::Object(obj)) => {
            let has = |k: &str| obj.contains_key(k);
            if has("wikipedia_title") || obj.get("text").is_some_and(|t| t.is_array()) {
                Ok(Format::Kilt)
            } else if has("title") && has("text") {
                Ok(Format::FlashragJsonl)
            } else if has("contents") {
                Ok(Format::SearchR1Jsonl)
            } else if obj.values().next().is_some_and(|v| v.get("extract").is_some()) {
                Ok(Format::WikiSummaries)
            } else {
                Err(unknown(
                    "a JSON object with none of the known fields (contents, title+text, wikipedia_title, extract)",
                ))
            }
        }
        // the first line is not a whole object: a pretty-printed JSON document
        _ if text.contains("\"extract\"") => Ok(Format::WikiSummaries),
        _ => Err(unknown("JSON that is neither JSONL of a known shape nor a summaries document")),
    }
}

/// What a source yields for the processing stage.
#[derive(Debug)]
pub enum Unit {
    /// A plain-text document to chunk.
    Doc { doc_id: String, title: String, text: String },
    /// A passage kept as given.
    Passage(PassageIn),
    /// A malformed record: fatal unless `--skip-bad`.
    Bad(CorpusError),
}

/// A passage as it goes into the corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassageIn {
    pub id: String,
    pub doc_id: String,
    pub title: String,
    pub text: String,
    /// Position of the passage in its document.
    pub chunk: u32,
    /// Original Search-R1 `contents`, when `"title"\ntext` does not reproduce it byte for byte.
    pub contents: Option<String>,
}

/// Splits Search-R1 `contents` into (title, text, original-if-not-reproducible).
pub fn split_contents(contents: &str) -> (String, String, Option<String>) {
    let (title, text) = match contents.split_once('\n') {
        Some((first, rest)) => {
            let t = first.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(first);
            (t.to_owned(), rest.to_owned())
        }
        None => (String::new(), contents.to_owned()),
    };
    let raw = (r1s_core::search_r1_contents(&title, &text) != contents).then(|| contents.to_owned());
    (title, text, raw)
}

/// Ids may be strings or numbers in the wild.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Id {
    S(String),
    N(serde_json::Number),
}

impl Id {
    fn into_string(self) -> String {
        match self {
            Id::S(s) => s,
            Id::N(n) => n.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct SearchR1Line {
    id: Option<Id>,
    contents: String,
}

#[derive(Debug, Deserialize)]
struct FlashragLine {
    id: Option<Id>,
    title: Option<String>,
    text: Option<String>,
    contents: Option<String>,
}

#[derive(Debug, Deserialize)]
struct KiltLine {
    #[serde(rename = "_id")]
    underscore_id: Option<Id>,
    wikipedia_id: Option<Id>,
    wikipedia_title: String,
    text: Vec<String>,
}

/// Joins KILT paragraphs into article text: drops the title paragraph and `Section::::` headings,
/// strips `BULLET::::` markers.
pub fn kilt_text(title: &str, paragraphs: &[String]) -> String {
    let mut out = String::new();
    for (k, p) in paragraphs.iter().enumerate() {
        let p = p.trim();
        if p.is_empty() || (k == 0 && p == title.trim()) || p.starts_with("Section::::") {
            continue;
        }
        let p = match p.strip_prefix("BULLET::::") {
            Some(rest) => rest.trim_start_matches(['-', ' ']),
            None => p,
        };
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(p);
    }
    out
}

/// A position in a TSV file: the byte, its line, and whether the byte before was a `\r`.
#[derive(Debug, Clone, Copy)]
struct LineCount {
    at: u64,
    line: u64,
    after_cr: bool,
}

impl Default for LineCount {
    fn default() -> Self {
        LineCount { at: 0, line: 1, after_cr: false }
    }
}

/// Reads a line-oriented input (JSONL or TSV) record by record.
pub struct LineSource {
    reader: Box<dyn BufRead + Send>,
    /// DPR TSV: the csv crate's reader over the file (records may span lines).
    tsv: Option<csv::Reader<Box<dyn BufRead + Send>>>,
    record: csv::ByteRecord,
    /// TSV records read so far.
    tsv_records: u64,
    /// Where [`LineSource::tsv_locate`] stopped.
    line_count: LineCount,
    path: PathBuf,
    format: Format,
    line_no: u64,
    buf: Vec<u8>,
    seq: u64,
    done: bool,
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for LineSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineSource").field("path", &self.path).field("line", &self.line_no).finish_non_exhaustive()
    }
}

impl LineSource {
    /// Opens `path` as `format` (one of the JSONL/TSV formats).
    pub fn open(path: &Path, format: Format) -> Result<Self> {
        let file = std::fs::File::open(path).at(path)?;
        let buffered: Box<dyn BufRead + Send> = Box::new(BufReader::with_capacity(1 << 20, file));
        // DPR TSV goes to the csv reader (records may span lines), the other formats line by line
        let (reader, tsv): (Box<dyn BufRead + Send>, _) = if format == Format::DprTsv {
            // Python's csv "excel" dialect with a tab: `"` quotes, `""` inside quotes is `"`, a `"`
            // inside an unquoted field is a character, rows may differ in length
            let csv = csv::ReaderBuilder::new()
                .delimiter(b'\t')
                .has_headers(false)
                .flexible(true)
                .quoting(true)
                .double_quote(true)
                .from_reader(buffered);
            (Box::new(std::io::empty()), Some(csv))
        } else {
            (buffered, None)
        };
        Ok(LineSource {
            tsv,
            record: csv::ByteRecord::new(),
            tsv_records: 0,
            line_count: LineCount::default(),
            reader,
            path: path.to_path_buf(),
            format,
            line_no: 0,
            buf: Vec::new(),
            seq: 0,
            done: false,
            bytes: Default::default(),
        })
    }

    /// A counter of the bytes consumed so far (for progress).
    pub fn bytes_read(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.bytes.clone()
    }

    fn bad(&mut self, message: impl Into<String>) -> Unit {
        let at = match self.record.position().map(|p| p.byte()) {
            Some(byte) if self.tsv.is_some() => {
                let (line, byte) = self.tsv_locate(byte);
                Location::Record { line, byte }
            }
            _ => Location::Line(self.line_no),
        };
        Unit::Bad(CorpusError::bad(&self.path, at, message))
    }

    /// The 1-based line and the byte offset in the file of the TSV record the csv reader places at
    /// `csv_byte` (after a `\r\n` the csv crate points at its `\n`; the record starts after it).
    /// Lines count `\r\n`, `\r` and `\n` as Python's universal newlines do. Reads forward from the
    /// previous call (errors come in file order), so that all calls together read the file once.
    fn tsv_locate(&mut self, csv_byte: u64) -> (u64, u64) {
        use std::io::{Seek, SeekFrom};
        if csv_byte < self.line_count.at {
            self.line_count = LineCount::default();
        }
        let c = &mut self.line_count;
        let Ok(mut f) = std::fs::File::open(&self.path) else { return (0, csv_byte) };
        if f.seek(SeekFrom::Start(c.at)).is_err() {
            return (0, csv_byte);
        }
        let mut r = BufReader::new(f);
        let mut buf = [0u8; 1 << 16];
        'read: loop {
            let n = match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for &b in &buf[..n] {
                if c.at >= csv_byte && !(b == b'\n' && c.after_cr) {
                    break 'read;
                }
                c.at += 1;
                match b {
                    b'\n' if c.after_cr => c.after_cr = false,
                    b'\n' => c.line += 1,
                    b'\r' => {
                        c.line += 1;
                        c.after_cr = true;
                    }
                    _ => c.after_cr = false,
                }
            }
        }
        (c.line, c.at)
    }

    /// The next TSV record, as Python's csv module reads it: the header and blank lines skipped,
    /// fields decoded as UTF-8, at least three (id, text, title; more are ignored, as DPR's reader does).
    fn next_tsv(&mut self) -> Option<Unit> {
        loop {
            let rdr = self.tsv.as_mut()?;
            match rdr.read_byte_record(&mut self.record) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    self.tsv = None;
                    let e = match e.into_kind() {
                        csv::ErrorKind::Io(io) => io,
                        other => std::io::Error::other(format!("{other:?}")),
                    };
                    return Some(Unit::Bad(CorpusError::io(&self.path, e)));
                }
            }
            self.bytes.store(rdr.position().byte(), std::sync::atomic::Ordering::Relaxed);
            self.tsv_records += 1;
            let r = &self.record;
            // blank lines give no record; a row of only whitespace is a 1-field record (an error below)
            if r.is_empty() {
                continue;
            }
            // DPR's header: the first record, `id` first
            if self.tsv_records == 1 && r.get(0) == Some(b"id") {
                continue;
            }
            if r.len() < 3 {
                let n = r.len();
                return Some(self.bad(format!("expected 3 tab-separated fields (id, text, title), found {n}")));
            }
            let mut fields = Vec::with_capacity(3);
            let mut invalid = None;
            for (k, f) in r.iter().take(3).enumerate() {
                match std::str::from_utf8(f) {
                    Ok(s) => fields.push(s.to_owned()),
                    Err(e) => {
                        invalid = Some(format!("invalid UTF-8 at byte {} of field {}", e.valid_up_to(), k + 1));
                        break;
                    }
                }
            }
            if let Some(why) = invalid {
                return Some(self.bad(why));
            }
            let title = fields.pop().unwrap_or_default();
            let text = fields.pop().unwrap_or_default();
            let id = fields.pop().unwrap_or_default();
            self.seq += 1;
            return Some(Unit::Passage(PassageIn { id, doc_id: String::new(), title, text, chunk: 0, contents: None }));
        }
    }

    fn next_id(&mut self, given: Option<Id>) -> String {
        let id = given.map(Id::into_string).unwrap_or_else(|| self.seq.to_string());
        self.seq += 1;
        id
    }

    fn parse(&mut self, line: &str) -> Unit {
        match self.format {
            Format::SearchR1Jsonl => match serde_json::from_str::<SearchR1Line>(line) {
                Ok(r) => {
                    let (title, text, contents) = split_contents(&r.contents);
                    let id = self.next_id(r.id);
                    Unit::Passage(PassageIn { id, doc_id: String::new(), title, text, chunk: 0, contents })
                }
                Err(e) => self.bad(format!("not a Search-R1 record {{\"id\",\"contents\"}}: {e}")),
            },
            Format::FlashragJsonl => match serde_json::from_str::<FlashragLine>(line) {
                Ok(r) => {
                    let (title, text, contents) = match (r.title, r.text, r.contents) {
                        (title, Some(text), _) => (title.unwrap_or_default(), text, None),
                        (_, None, Some(c)) => split_contents(&c),
                        _ => {
                            return self.bad("FlashRAG record has neither \"text\" nor \"contents\"");
                        }
                    };
                    let id = self.next_id(r.id);
                    Unit::Passage(PassageIn { id, doc_id: String::new(), title, text, chunk: 0, contents })
                }
                Err(e) => self.bad(format!("not a FlashRAG record {{\"id\",\"title\",\"text\"}}: {e}")),
            },
            Format::Kilt => match serde_json::from_str::<KiltLine>(line) {
                Ok(r) => {
                    let text = kilt_text(&r.wikipedia_title, &r.text);
                    let doc_id = r.wikipedia_id.or(r.underscore_id).map(Id::into_string).unwrap_or_else(|| {
                        let s = self.seq.to_string();
                        self.seq += 1;
                        s
                    });
                    Unit::Doc { doc_id, title: r.wikipedia_title, text }
                }
                Err(e) => self.bad(format!("not a KILT record {{\"wikipedia_title\",\"text\":[...]}}: {e}")),
            },
            other => self.bad(format!("{other} is not a line format")),
        }
    }
}

impl Iterator for LineSource {
    type Item = Unit;
    fn next(&mut self) -> Option<Unit> {
        if self.format == Format::DprTsv {
            return self.next_tsv();
        }
        loop {
            if self.done {
                return None;
            }
            self.buf.clear();
            let n = match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(n) => n,
                Err(e) => {
                    self.done = true;
                    return Some(Unit::Bad(CorpusError::io(&self.path, e)));
                }
            };
            if n == 0 {
                self.done = true;
                return None;
            }
            self.bytes.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            self.line_no += 1;
            let mut raw = std::mem::take(&mut self.buf);
            while matches!(raw.last(), Some(b'\n' | b'\r')) {
                raw.pop();
            }
            let unit = match std::str::from_utf8(&raw) {
                Err(e) => Some(self.bad(format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()))),
                Ok(line) if line.trim().is_empty() => None,
                Ok(line) => Some(self.parse(line)),
            };
            self.buf = raw;
            if unit.is_some() {
                return unit;
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct Summary {
    title: Option<String>,
    extract: Option<String>,
}

/// Reads the wiki-summaries JSON document (one object keyed by title) into documents.
pub fn read_summaries(path: &Path) -> Result<Vec<Unit>> {
    let bytes = std::fs::read(path).at(path)?;
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes).map_err(|e| {
        CorpusError::bad(path, Location::Line(e.line() as u64), format!("not a JSON object of summaries: {e}"))
    })?;
    let mut units = Vec::with_capacity(map.len());
    for (key, value) in map {
        let unit = match serde_json::from_value::<Summary>(value) {
            Ok(Summary { title, extract: Some(extract) }) => {
                Unit::Doc { doc_id: key.clone(), title: title.unwrap_or_else(|| key.clone()), text: extract }
            }
            Ok(_) => Unit::Bad(CorpusError::bad(path, Location::Key(key), "summary has no \"extract\"")),
            Err(e) => Unit::Bad(CorpusError::bad(path, Location::Key(key), format!("not a summary object: {e}"))),
        };
        units.push(unit);
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_split_round_trips() {
        for c in ["\"T\"\nbody", "no title at all", "T\nbody", "\"A \"q\" B\"\nx\ny", ""] {
            let (t, x, raw) = split_contents(c);
            let back = raw.unwrap_or_else(|| r1s_core::search_r1_contents(&t, &x));
            assert_eq!(back, c);
        }
        assert_eq!(split_contents("\"T\"\nbody"), ("T".into(), "body".into(), None));
    }

    #[test]
    fn kilt_join() {
        let p: Vec<String> =
            ["A\n", "First.\n", "Section::::History.\n", "BULLET::::- item\n"].iter().map(|s| s.to_string()).collect();
        assert_eq!(kilt_text("A", &p), "First.\nitem");
    }
}
