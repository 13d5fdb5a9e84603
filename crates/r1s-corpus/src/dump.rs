//! MediaWiki XML export dumps (schema 0.10 / 0.11): `.xml`, `.xml.bz2`, single- or multistream.
//!
//! [`PageReader`] streams `<page>` elements out of any `BufRead` (never the whole dump in memory).
//! For `.bz2` input the decompression runs on its own thread ([`spawn_decompressor`]); for
//! multistream dumps [`stream_offsets`] finds the independent bz2 streams (from the
//! `-multistream-index.txt.bz2` file, or by scanning for stream headers) so that streams can be
//! decompressed and parsed in parallel.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use quick_xml::events::Event;

use crate::error::{CorpusError, IoContext, Location, Result};

/// One `<page>` of a dump, before cleaning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WikiPage {
    /// `<id>` of the page.
    pub id: u64,
    /// `<ns>` namespace number (0 = articles).
    pub ns: i64,
    /// `<title>`.
    pub title: String,
    /// Whether the page has a `<redirect>` element or its text starts with `#REDIRECT`.
    pub redirect: bool,
    /// Wikitext of the (last) revision, XML-unescaped.
    pub text: String,
}

/// How byte positions of the XML stream map to a [`Location`] in the input file.
#[derive(Debug, Clone, Copy)]
pub enum PositionKind {
    /// The XML is the file itself.
    File,
    /// The XML is the decompressed content of the file.
    Decompressed,
    /// The XML is one bz2 stream, starting at this offset of the file.
    Stream(u64),
}

impl PositionKind {
    fn locate(self, pos: u64) -> Location {
        match self {
            PositionKind::File => Location::Byte(pos),
            PositionKind::Decompressed => Location::DecompressedByte(pos),
            PositionKind::Stream(stream_offset) => Location::Stream { stream_offset, byte: pos },
        }
    }
}

/// Streams the pages of a MediaWiki XML export.
pub struct PageReader<R: BufRead> {
    reader: quick_xml::Reader<R>,
    path: PathBuf,
    kind: PositionKind,
    buf: Vec<u8>,
    field: Vec<u8>,
    done: bool,
    fragment: bool,
}

impl<R: BufRead> std::fmt::Debug for PageReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageReader").field("path", &self.path).finish_non_exhaustive()
    }
}

impl<R: BufRead> PageReader<R> {
    /// A reader of a whole document (`fragment = false`) or of a multistream fragment, which may
    /// begin or end inside the `<mediawiki>` root element.
    pub fn new(input: R, path: &Path, kind: PositionKind, fragment: bool) -> Self {
        let mut reader = quick_xml::Reader::from_reader(input);
        let cfg = reader.config_mut();
        cfg.check_end_names = !fragment;
        cfg.trim_text(false);
        cfg.expand_empty_elements = false;
        PageReader {
            reader,
            path: path.to_path_buf(),
            kind,
            buf: Vec::with_capacity(1 << 16),
            field: Vec::new(),
            done: false,
            fragment,
        }
    }

    fn pos(&self) -> u64 {
        self.reader.buffer_position()
    }

    fn xml_error(&self, e: quick_xml::Error) -> CorpusError {
        match &e {
            // the position of an I/O error is how far the parser got
            quick_xml::Error::Io(io) => {
                CorpusError::bad(&self.path, self.kind.locate(self.pos()), format!("cannot read: {io}"))
            }
            other => CorpusError::bad(
                &self.path,
                self.kind.locate(self.reader.error_position()),
                format!("malformed XML: {other}"),
            ),
        }
    }

    fn bad(&self, at: u64, message: impl Into<String>) -> CorpusError {
        CorpusError::bad(&self.path, self.kind.locate(at), message)
    }

    /// Reads the content of the element just opened (named `name`) as unescaped text.
    fn leaf_text(&mut self, name: &[u8]) -> Result<String> {
        let start = self.pos();
        let mut field = std::mem::take(&mut self.field);
        field.clear();
        let res = self.collect_leaf(name, &mut field);
        let text = res.and_then(|()| xml_unescape(&field).map_err(|(off, msg)| self.bad(start + off as u64, msg)));
        self.field = field;
        text
    }

    /// Gathers the raw (still escaped) character data of a leaf element up to its end tag.
    fn collect_leaf(&mut self, name: &[u8], field: &mut Vec<u8>) -> Result<()> {
        loop {
            self.buf.clear();
            match self.reader.read_event_into(&mut self.buf) {
                Err(e) => return Err(self.xml_error(e)),
                Ok(Event::Text(t)) => field.extend_from_slice(t.as_ref()),
                Ok(Event::GeneralRef(r)) => {
                    field.push(b'&');
                    field.extend_from_slice(r.as_ref());
                    field.push(b';');
                }
                Ok(Event::CData(c)) => {
                    for &b in c.as_ref() {
                        match b {
                            b'&' => field.extend_from_slice(b"&amp;"),
                            _ => field.push(b),
                        }
                    }
                }
                Ok(Event::End(e)) if e.local_name().as_ref() == name => return Ok(()),
                Ok(Event::Start(e)) => {
                    let inner = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                    return Err(self
                        .bad(self.pos(), format!("unexpected <{inner}> inside <{}>", String::from_utf8_lossy(name))));
                }
                Ok(Event::Eof) => {
                    return Err(self.bad(
                        self.pos(),
                        format!("input ends inside <{}> (truncated dump?)", String::from_utf8_lossy(name)),
                    ));
                }
                Ok(_) => {}
            }
        }
    }

    /// The next page, `None` at the end of the input.
    pub fn next_page(&mut self) -> Result<Option<WikiPage>> {
        if self.done {
            return Ok(None);
        }
        let mut page: Option<(WikiPage, u64)> = None;
        let mut in_revision = false;
        loop {
            self.buf.clear();
            let ev = match self.reader.read_event_into(&mut self.buf) {
                Ok(ev) => ev,
                // the last stream of a multistream dump closes the root opened in the first
                Err(quick_xml::Error::IllFormed(quick_xml::errors::IllFormedError::UnmatchedEndTag(name)))
                    if self.fragment && name == "mediawiki" && page.is_none() =>
                {
                    self.done = true;
                    return Ok(None);
                }
                Err(e) => return Err(self.xml_error(e)),
            };
            match ev {
                Event::Start(e) => {
                    let name = e.local_name().as_ref().to_vec();
                    match (name.as_slice(), page.is_some()) {
                        (b"page", false) => page = Some((WikiPage::default(), self.pos())),
                        (b"page", true) => return Err(self.bad(self.pos(), "<page> inside <page>")),
                        (b"revision", true) => in_revision = true,
                        (b"title", true) if !in_revision => {
                            let t = self.leaf_text(b"title")?;
                            if let Some((p, _)) = page.as_mut() {
                                p.title = t;
                            }
                        }
                        (b"ns", true) if !in_revision => {
                            let at = self.pos();
                            let t = self.leaf_text(b"ns")?;
                            let ns =
                                t.trim().parse().map_err(|_| self.bad(at, format!("<ns> is not a number: {t:?}")))?;
                            if let Some((p, _)) = page.as_mut() {
                                p.ns = ns;
                            }
                        }
                        (b"id", true) if !in_revision => {
                            let at = self.pos();
                            let t = self.leaf_text(b"id")?;
                            let id =
                                t.trim().parse().map_err(|_| self.bad(at, format!("<id> is not a number: {t:?}")))?;
                            if let Some((p, _)) = page.as_mut() {
                                p.id = id;
                            }
                        }
                        (b"redirect", true) => {
                            if let Some((p, _)) = page.as_mut() {
                                p.redirect = true;
                            }
                        }
                        (b"text", true) => {
                            let t = self.leaf_text(b"text")?;
                            if let Some((p, _)) = page.as_mut() {
                                p.text = t;
                            }
                        }
                        _ => {}
                    }
                }
                Event::Empty(e) => {
                    if e.local_name().as_ref() == b"redirect"
                        && let Some((p, _)) = page.as_mut()
                    {
                        p.redirect = true;
                    }
                }
                Event::End(e) => match e.local_name().as_ref() {
                    b"revision" => in_revision = false,
                    b"page" => {
                        if let Some((mut p, _)) = page.take() {
                            if !p.redirect && is_redirect_text(&p.text) {
                                p.redirect = true;
                            }
                            return Ok(Some(p));
                        }
                    }
                    _ => {}
                },
                Event::Eof => {
                    self.done = true;
                    if let Some((p, start)) = page {
                        return Err(
                            self.bad(start, format!("input ends inside <page> {:?} (truncated dump?)", p.title))
                        );
                    }
                    return Ok(None);
                }
                _ => {}
            }
        }
    }
}

impl<R: BufRead> Iterator for PageReader<R> {
    type Item = Result<WikiPage>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.next_page() {
            Ok(Some(p)) => Some(Ok(p)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

fn is_redirect_text(text: &str) -> bool {
    let t = text.trim_start().as_bytes();
    t.len() >= 9 && t[..9].eq_ignore_ascii_case(b"#redirect")
}

/// Unescapes XML character data: the five predefined entities and numeric references. Returns the
/// offset and a message on invalid UTF-8 or a malformed reference.
pub fn xml_unescape(raw: &[u8]) -> std::result::Result<String, (usize, String)> {
    let invalid = |e: std::str::Utf8Error, base: usize| (base + e.valid_up_to(), "invalid UTF-8".to_owned());
    let Some(first) = memchr::memchr(b'&', raw) else {
        return std::str::from_utf8(raw).map(str::to_owned).map_err(|e| invalid(e, 0));
    };
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    let mut amp = Some(first);
    while let Some(a) = amp {
        out.push_str(std::str::from_utf8(&raw[i..a]).map_err(|e| invalid(e, i))?);
        let Some(semi) = raw[a..].iter().take(12).position(|&b| b == b';').map(|p| p + a) else {
            return Err((a, "'&' not followed by an entity reference".to_owned()));
        };
        let name = &raw[a + 1..semi];
        match name {
            b"lt" => out.push('<'),
            b"gt" => out.push('>'),
            b"amp" => out.push('&'),
            b"quot" => out.push('"'),
            b"apos" => out.push('\''),
            _ if name.first() == Some(&b'#') => {
                let digits = std::str::from_utf8(&name[1..]).unwrap_or("");
                let code = match digits.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16),
                    None => digits.parse(),
                };
                match code.ok().and_then(char::from_u32) {
                    Some(c) => out.push(c),
                    None => {
                        return Err((a, format!("bad character reference &{};", String::from_utf8_lossy(name))));
                    }
                }
            }
            _ => {
                return Err((a, format!("unknown entity &{};", String::from_utf8_lossy(name))));
            }
        }
        i = semi + 1;
        amp = memchr::memchr(b'&', &raw[i..]).map(|p| p + i);
    }
    out.push_str(std::str::from_utf8(&raw[i..]).map_err(|e| invalid(e, i))?);
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// bz2

/// Size of the blocks the decompressor thread hands to the parser.
const BLOCK: usize = 1 << 20;

/// A `Read` over blocks produced by another thread. An `Err` block ends the stream with that error.
#[derive(Debug)]
pub struct ChannelReader {
    rx: crossbeam_channel::Receiver<std::io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(block)) => {
                    self.cur = block;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Starts a thread that decompresses `input` (all bz2 streams, one after another) and returns a
/// reader of the decompressed bytes. A truncated or corrupt bz2 input ends the reader with an error.
pub fn spawn_decompressor<R: Read + Send + 'static>(input: R) -> ChannelReader {
    let (tx, rx) = crossbeam_channel::bounded::<std::io::Result<Vec<u8>>>(8);
    std::thread::Builder::new()
        .name("r1s-bz2".into())
        .spawn(move || {
            let consumed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let counted = Counting { inner: input, count: consumed.clone() };
            let mut dec = bzip2::read::MultiBzDecoder::new(counted);
            loop {
                let mut block = vec![0u8; BLOCK];
                let mut filled = 0;
                let res = loop {
                    match dec.read(&mut block[filled..]) {
                        Ok(0) => break Ok(true),
                        Ok(n) => {
                            filled += n;
                            if filled == block.len() {
                                break Ok(false);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                block.truncate(filled);
                match res {
                    Ok(eof) => {
                        if !block.is_empty() && tx.send(Ok(block)).is_err() {
                            return;
                        }
                        if eof {
                            return;
                        }
                    }
                    Err(e) => {
                        if !block.is_empty() {
                            let _ = tx.send(Ok(block));
                        }
                        let e = bz2_error(e);
                        let e = std::io::Error::new(
                            e.kind(),
                            format!(
                                "{e}, near compressed byte {}",
                                consumed.load(std::sync::atomic::Ordering::Relaxed)
                            ),
                        );
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        })
        .expect("spawning a thread");
    ChannelReader { rx, cur: Vec::new(), pos: 0 }
}

/// Counts the bytes read through it (shared with whoever holds the counter).
pub(crate) struct Counting<R> {
    pub(crate) inner: R,
    pub(crate) count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

fn bz2_error(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        std::io::Error::new(e.kind(), "bz2 data ends early (truncated file?)")
    } else {
        std::io::Error::new(e.kind(), format!("bz2 data is corrupt: {e}"))
    }
}

/// Decompresses one complete bz2 stream held in memory.
pub fn decompress_stream(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() * 5);
    let mut dec = bzip2::read::BzDecoder::new(data);
    dec.read_to_end(&mut out).map_err(bz2_error)?;
    Ok(out)
}

/// The byte ranges of the bz2 streams of a multistream dump.
///
/// With `index` (the dump's `-multistream-index.txt.bz2`, lines `offset:page_id:title`) the offsets
/// come from it; otherwise the file is scanned for stream headers (`BZh[1-9]` followed by the block
/// magic `1AY&SY`). Returns the ranges in file order; a single range means a single-stream file.
pub fn stream_offsets(data: &[u8], path: &Path, index: Option<&Path>) -> Result<Vec<std::ops::Range<usize>>> {
    let mut starts: Vec<usize> = match index {
        Some(ix) => read_multistream_index(ix)?,
        None => {
            let finder = memchr::memmem::Finder::new(b"1AY&SY");
            finder
                .find_iter(data)
                .filter(|&p| p >= 4 && &data[p - 4..p - 1] == b"BZh" && (b'1'..=b'9').contains(&data[p - 1]))
                .map(|p| p - 4)
                .collect()
        }
    };
    starts.sort_unstable();
    starts.dedup();
    if starts.first() != Some(&0) {
        starts.insert(0, 0);
    }
    if let Some(&bad) = starts.iter().find(|&&s| s >= data.len() && s > 0) {
        return Err(CorpusError::bad(
            path,
            Location::Byte(bad as u64),
            "multistream index points past the end of the dump",
        ));
    }
    let mut ranges = Vec::with_capacity(starts.len());
    for (k, &s) in starts.iter().enumerate() {
        let e = starts.get(k + 1).copied().unwrap_or(data.len());
        ranges.push(s..e);
    }
    Ok(ranges)
}

fn read_multistream_index(ix: &Path) -> Result<Vec<usize>> {
    let file = std::fs::File::open(ix).at(ix)?;
    let is_bz2 = ix.extension().is_some_and(|e| e == "bz2");
    let reader: Box<dyn BufRead> = if is_bz2 {
        Box::new(std::io::BufReader::new(bzip2::read::MultiBzDecoder::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut offsets = Vec::new();
    let mut last = None;
    for (n, line) in reader.split(b'\n').enumerate() {
        let line = line.map_err(|e| CorpusError::bad(ix, Location::Line(n as u64 + 1), format!("cannot read: {e}")))?;
        if line.is_empty() {
            continue;
        }
        let field = line.split(|&b| b == b':').next().unwrap_or(&[]);
        let off: usize = std::str::from_utf8(field)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| CorpusError::bad(ix, Location::Line(n as u64 + 1), "expected `offset:page_id:title`"))?;
        if last != Some(off) {
            offsets.push(off);
            last = Some(off);
        }
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape() {
        assert_eq!(xml_unescape(b"a &lt;ref&gt; &amp;nbsp; &#233;&#x41;").unwrap(), "a <ref> &nbsp; éA");
        assert_eq!(xml_unescape(b"ok \xff").unwrap_err().0, 3);
        assert!(xml_unescape(b"a & b").is_err());
    }

    #[test]
    fn pages_from_fragment() {
        let xml = b"<page><title>A &amp; B</title><ns>0</ns><id>7</id><revision><id>99</id><text bytes=\"3\">x&lt;y</text></revision></page>\n<page><title>R</title><ns>0</ns><id>8</id><redirect title=\"A\"/><revision><text>#REDIRECT [[A]]</text></revision></page></mediawiki>";
        let mut r = PageReader::new(&xml[..], Path::new("t.xml"), PositionKind::File, true);
        let a = r.next_page().unwrap().unwrap();
        assert_eq!((a.id, a.ns, a.title.as_str(), a.text.as_str(), a.redirect), (7, 0, "A & B", "x<y", false));
        let b = r.next_page().unwrap().unwrap();
        assert!(b.redirect);
        assert!(r.next_page().unwrap().is_none());
    }
}
