//! Wikitext → plain text.
//!
//! A two-pass scanner, linear in the input:
//!
//! 1. [`Pairing`] walks the text once and finds which template openers (`{{`, `{{{`) and table
//!    openers (`{|` at a line start) have a matching closer. Openers without one are ignored by
//!    pass 2, so an unclosed `{{` drops two characters instead of the rest of the article.
//! 2. [`Scanner`] walks the text again and writes plain text: templates, tables, comments, refs and
//!    other content-free tags are skipped; `[[target|anchor]]` becomes `anchor`; file, category and
//!    interlanguage links vanish; headings become paragraph boundaries (and reference-like sections
//!    such as "References" or "External links" are dropped); bold/italics are stripped.
//!
//! Both passes share the same tokenisation of everything that can hide a brace (comments and tags),
//! so they pair the same tokens. Afterwards HTML entities are decoded, any markup that could still
//! remain (`{{ }} [[ ]] ''' <ref |-`) is swept away, and whitespace is normalised line by line.
//!
//! Every search that looks ahead (for `-->`, `</ref>`, `>`) is either bounded or cached, so the
//! total work stays linear even on adversarial input (see the `linear_time` tests).

use memchr::memmem;

use crate::chunk::space_at;

/// Section titles (lower case) whose whole section is dropped: lists of references and links,
/// useless as retrieval passages.
const DROPPED_SECTIONS: &[&str] = &[
    "references",
    "external links",
    "see also",
    "further reading",
    "notes",
    "footnotes",
    "citations",
    "bibliography",
    "sources",
    "works cited",
    "notes and references",
    "references and notes",
    "explanatory notes",
    "general and cited sources",
    "cited sources",
    "general references",
    "gallery",
];

/// Tags whose whole element (content included) is dropped.
const DROP_CONTENT_TAGS: &[&str] = &[
    "ref",
    "references",
    "math",
    "chem",
    "ce",
    "score",
    "timeline",
    "gallery",
    "graph",
    "mapframe",
    "maplink",
    "templatedata",
    "templatestyles",
    "syntaxhighlight",
    "source",
    "includeonly",
    "imagemap",
    "hiero",
    "inputbox",
    "categorytree",
    "indicator",
    "charinsert",
    "langconvert",
];

/// Tags whose content is kept verbatim, without interpreting any markup inside.
const RAW_TAGS: &[&str] = &["nowiki", "pre"];

/// Tags that are dropped while their content is kept (HTML formatting and similar).
const KEEP_CONTENT_TAGS: &[&str] = &[
    "abbr",
    "b",
    "bdi",
    "bdo",
    "big",
    "blockquote",
    "br",
    "caption",
    "center",
    "cite",
    "code",
    "dd",
    "del",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "font",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "ins",
    "kbd",
    "li",
    "mark",
    "noinclude",
    "ol",
    "onlyinclude",
    "p",
    "poem",
    "q",
    "rb",
    "rp",
    "rt",
    "rtc",
    "ruby",
    "s",
    "samp",
    "section",
    "small",
    "span",
    "strike",
    "strong",
    "sub",
    "sup",
    "table",
    "td",
    "th",
    "time",
    "tr",
    "tt",
    "u",
    "ul",
    "var",
    "wbr",
];

/// Namespaces whose links are dropped entirely (with their caption).
const DROPPED_LINK_NAMESPACES: &[&str] = &["file", "image", "category", "media"];

/// Sister-project prefixes: `[[wikt:word]]` shows as "word".
const INTERWIKI_PREFIXES: &[&str] = &[
    "wikt",
    "wiktionary",
    "wikisource",
    "s",
    "commons",
    "meta",
    "q",
    "wikiquote",
    "b",
    "wikibooks",
    "n",
    "wikinews",
    "species",
    "d",
    "wikidata",
    "v",
    "wikiversity",
    "voy",
    "mw",
    "w",
];

/// Links nested deeper than this are treated as text (bounds the work on pathological nesting).
const MAX_LINK_DEPTH: usize = 8;
/// A tag's `>` must appear within this many bytes of its `<`.
const MAX_TAG_LEN: usize = 1024;

/// Cleans one article's wikitext into plain text: one paragraph per line, no markup.
pub fn clean(wikitext: &str) -> String {
    let src = wikitext.as_bytes();
    let pairing = Pairing::compute(src);
    let raw = Scanner::new(src, pairing).run();
    // The scanner cuts only at ASCII bytes, so the output is valid UTF-8.
    let text = String::from_utf8(raw).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    let text = if text.contains('&') { html_escape::decode_html_entities(&text).into_owned() } else { text };
    let text = sweep_residue(&text);
    tidy_lines(&text)
}

/// Markup that must never survive cleaning (used by the sweep and by tests).
pub const RESIDUE: &[&str] = &["{{", "}}", "[[", "]]", "'''", "<ref", "|-"];

/// Replaces any leftover markup token by a space. Replacing (not deleting) means no new token can
/// form from the pieces around a removed one, so one pass suffices.
fn sweep_residue(s: &str) -> String {
    let b = s.as_bytes();
    let needs = RESIDUE.iter().any(|p| memmem::find(b, p.as_bytes()).is_some())
        || memmem::find(b, b"<REF").is_some()
        || memmem::find(b, b"<Ref").is_some();
    if !needs {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        let hit = RESIDUE
            .iter()
            .map(|p| p.as_bytes())
            .find(|p| rest.len() >= p.len() && rest[..p.len()].eq_ignore_ascii_case(p));
        match hit {
            Some(p) => {
                out.push(' ');
                i += p.len();
            }
            None => {
                // advance one UTF-8 character
                let ch_len = utf8_len(b[i]);
                out.push_str(&s[i..i + ch_len]);
                i += ch_len;
            }
        }
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

/// Collapses whitespace in each line, tidies what removed templates leave behind ("( )", " ,"),
/// and drops empty lines.
fn tidy_lines(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut line = String::with_capacity(256);
    for raw_line in s.split('\n') {
        if needs_tidy(raw_line.as_bytes()) {
            tidy_line(raw_line, &mut line);
        } else {
            line.clear();
            line.push_str(raw_line);
        }
        if line.contains("()") {
            // brackets emptied by dropped templates: remove them and tidy again
            let again = line.replace("()", "");
            tidy_line(&again, &mut line);
        }
        if line.is_empty() || line.bytes().all(|c| c.is_ascii_punctuation()) {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&line);
    }
    out
}

/// Bytes after which `needs_tidy` looks closer.
const fn tidy_table() -> [bool; 256] {
    let mut t = [false; 256];
    let bytes = [b' ', b'\t', b'\n', 0x0b, 0x0c, b'\r', 0xC2, 0xE1, 0xE2, 0xE3, b'(', b',', b';'];
    let mut k = 0;
    while k < bytes.len() {
        t[bytes[k] as usize] = true;
        k += 1;
    }
    t
}
static TIDY_SPECIAL: [bool; 256] = tidy_table();

/// Whether [`tidy_line`] could change `b` (conservative: `true` when unsure). Most lines of clean
/// prose need nothing, and this byte scan is much cheaper than rebuilding them word by word.
fn needs_tidy(b: &[u8]) -> bool {
    let Some(&last) = b.last() else { return false };
    if last.is_ascii_whitespace() || last >= 0x80 || b[0].is_ascii_whitespace() {
        return true;
    }
    let mut i = 0;
    loop {
        while i < b.len() && !TIDY_SPECIAL[b[i] as usize] {
            i += 1;
        }
        if i >= b.len() {
            return false;
        }
        let next = b.get(i + 1).copied().unwrap_or(b'x');
        let suspicious = match b[i] {
            b' ' => matches!(next, b' ' | b',' | b';' | b')' | b'.' | b':') || space_at(b, i + 1) > 0,
            b'(' => matches!(next, b' ' | b')' | b',' | b';') || space_at(b, i + 1) > 0,
            b',' | b';' => next == b')',
            0xC2 | 0xE1 | 0xE2 | 0xE3 => space_at(b, i) > 0,
            _ => true, // other ASCII whitespace
        };
        if suspicious {
            return true;
        }
        i += 1;
    }
}

/// Rebuilds `raw` into `line` with single spaces, punctuation attached to the word before it and
/// no space after an opening bracket.
fn tidy_line(raw: &str, line: &mut String) {
    line.clear();
    for w in crate::chunk::words(raw) {
        let w = if line.ends_with('(') { w.trim_start_matches([',', ';']) } else { w };
        if w.is_empty() {
            continue;
        }
        let b = w.as_bytes();
        let attach = line.ends_with('(')
            || matches!(b[0], b',' | b';' | b')')
            || (matches!(b[0], b'.' | b':') && b.iter().all(u8::is_ascii_punctuation));
        if b[0] == b')' && line.ends_with([',', ';']) {
            line.pop();
        }
        if !line.is_empty() && !attach {
            line.push(' ');
        }
        line.push_str(w);
    }
}

// ------------------------------------------------------------------------------------------------
// Shared tokenisation of `<`

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TagClass {
    Drop,
    Raw,
    Keep,
}

fn classify_tag(name: &[u8]) -> Option<(TagClass, usize)> {
    let lower = |list: &[&str]| list.iter().position(|t| t.as_bytes().eq_ignore_ascii_case(name));
    if let Some(k) = lower(DROP_CONTENT_TAGS) {
        return Some((TagClass::Drop, k));
    }
    if let Some(k) = lower(RAW_TAGS) {
        return Some((TagClass::Raw, DROP_CONTENT_TAGS.len() + k));
    }
    lower(KEEP_CONTENT_TAGS).map(|k| (TagClass::Keep, usize::MAX - k))
}

/// What a `<` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Angle {
    /// `<!-- ... -->`, or an unclosed comment running to the end.
    Comment { end: usize },
    /// An element dropped whole (content included).
    Drop { end: usize },
    /// An element whose content (`start..stop`) is kept verbatim.
    Raw { start: usize, stop: usize, end: usize },
    /// A formatting tag: dropped, content kept. `br` turns into a space.
    Tag { end: usize, space: bool },
    /// Not markup: a literal `<`.
    Text,
}

/// Remembers the last search for each element's closing tag, so repeated searches for a closer
/// that does not exist (or that lies further on) never rescan the same bytes.
#[derive(Debug, Default)]
struct CloseCache {
    /// per tag index: (searched from, found at)
    entries: Vec<Option<(usize, Option<usize>)>>,
}

impl CloseCache {
    fn find(&mut self, src: &[u8], from: usize, key: usize, name: &[u8]) -> Option<usize> {
        if self.entries.len() <= key {
            self.entries.resize(key + 1, None);
        }
        if let Some((searched_from, found)) = self.entries[key]
            && from >= searched_from
        {
            match found {
                None => return None,
                Some(f) if f >= from => return Some(f),
                Some(_) => {}
            }
        }
        let mut needle = Vec::with_capacity(name.len() + 2);
        needle.extend_from_slice(b"</");
        needle.extend(name.iter().map(u8::to_ascii_lowercase));
        let found = find_ci(&src[from..], &needle).map(|p| p + from);
        self.entries[key] = Some((from, found));
        found
    }
}

/// ASCII case-insensitive search for a lower-case needle whose first byte is not a letter.
fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut at = 0;
    while let Some(p) = memchr::memchr(first, &hay[at..]) {
        let s = at + p;
        if hay.len() - s >= needle.len() && hay[s..s + needle.len()].eq_ignore_ascii_case(needle) {
            return Some(s);
        }
        at = s + 1;
    }
    None
}

struct AngleReader {
    cache: CloseCache,
    comment_end_cache: Option<(usize, Option<usize>)>,
}

impl AngleReader {
    fn new() -> Self {
        AngleReader { cache: CloseCache::default(), comment_end_cache: None }
    }

    /// Classifies the `<` at `i`.
    fn read(&mut self, src: &[u8], i: usize) -> Angle {
        let rest = &src[i..];
        if rest.starts_with(b"<!--") {
            let from = i + 4;
            let found = match self.comment_end_cache {
                Some((f, res)) if from >= f && res.is_none_or(|r| r >= from) => res,
                _ => {
                    let r = memmem::find(&src[from..], b"-->").map(|p| p + from);
                    self.comment_end_cache = Some((from, r));
                    r
                }
            };
            return Angle::Comment { end: found.map_or(src.len(), |p| p + 3) };
        }
        let mut j = i + 1;
        let closing = src.get(j) == Some(&b'/');
        if closing {
            j += 1;
        }
        let name_start = j;
        while j < src.len() && src[j].is_ascii_alphanumeric() {
            j += 1;
        }
        if j == name_start || !src[name_start].is_ascii_alphabetic() {
            return Angle::Text;
        }
        let name = &src[name_start..j];
        match src.get(j) {
            Some(b' ' | b'\t' | b'\n' | b'>' | b'/') => {}
            _ => return Angle::Text,
        }
        let Some((class, key)) = classify_tag(name) else {
            return Angle::Text;
        };
        // the tag ends at the next `>`, and no `<` may come first: MediaWiki never lets a tag's
        // attributes cross a `<` (prose such as `p<q does not … << and >>` stays text)
        let limit = (j + MAX_TAG_LEN).min(src.len());
        let gt = match memchr::memchr2(b'>', b'<', &src[j..limit]).map(|p| p + j) {
            Some(p) if src[p] == b'>' => p,
            _ => return Angle::Text,
        };
        let tag_end = gt + 1;
        let self_closing = gt > 0 && src[gt - 1] == b'/';
        match class {
            TagClass::Keep => Angle::Tag { end: tag_end, space: name.eq_ignore_ascii_case(b"br") },
            TagClass::Drop | TagClass::Raw if closing || self_closing => Angle::Drop { end: tag_end },
            TagClass::Drop | TagClass::Raw => match self.cache.find(src, tag_end, key, name) {
                Some(close) => {
                    // `</name` ends at its `>`, unless a `<` comes first (then right after the name)
                    let limit = (close + 2 + MAX_TAG_LEN).min(src.len());
                    let after = close + 2 + name.len();
                    let end = match memchr::memchr2(b'>', b'<', &src[after.min(limit)..limit]) {
                        Some(p) if src[after + p] == b'>' => after + p + 1,
                        _ => after,
                    };
                    if class == TagClass::Drop {
                        Angle::Drop { end }
                    } else {
                        Angle::Raw { start: tag_end, stop: close, end }
                    }
                }
                // an unclosed element: drop the tag alone
                None => Angle::Drop { end: tag_end },
            },
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Brace tokens

/// Template openers in a run of `n` (≥ 2) `{` starting at `i`: (position, width) pairs. An odd run
/// starts with a `{{{` (template parameter), the rest are `{{`.
fn open_tokens(i: usize, n: usize) -> impl Iterator<Item = (usize, u8)> {
    let first = if n % 2 == 1 { 3 } else { 2 };
    let count = if n % 2 == 1 { 1 + (n - 3) / 2 } else { n / 2 };
    (0..count).map(move |k| if k == 0 { (i, first as u8) } else { (i + first + 2 * (k - 1), 2) })
}

/// Consumes a run of `m` `}` against the stack of open widths; returns what is left of the run.
fn close_tokens(stack: &mut Vec<u8>, mut m: usize) -> usize {
    while m >= 2 {
        match stack.last() {
            Some(3) if m >= 3 => m -= 3,
            Some(_) => m -= 2,
            None => break,
        }
        stack.pop();
    }
    m
}

fn run_len(src: &[u8], i: usize, c: u8) -> usize {
    src[i..].iter().take_while(|&&b| b == c).count()
}

/// Whether only spaces, tabs or colons stand between the last line break and `i`.
fn at_line_start(src: &[u8], i: usize) -> bool {
    let mut j = i;
    while j > 0 {
        match src[j - 1] {
            b'\n' => return true,
            b' ' | b'\t' | b':' => j -= 1,
            _ => return false,
        }
    }
    true
}

/// Where a `|}` table closer starts on the line beginning at `i` (after spaces), if any.
fn table_close_at(src: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    while j < src.len() && matches!(src[j], b' ' | b'\t') {
        j += 1;
    }
    src[j..].starts_with(b"|}").then_some(j)
}

/// Caches the position of the next line break, so that finding the next special byte never
/// rescans a long line (which would be quadratic in the number of braces on it).
#[derive(Debug, Default)]
struct NextNewline {
    /// Position of the next `\n` at or after `from`, or `None` when there is none.
    found: Option<Option<usize>>,
    from: usize,
}

/// The next `{`, `}`, `<` or line break at or after `i` (what matters inside skipped markup).
fn next_special(src: &[u8], i: usize, nl: &mut NextNewline) -> Option<usize> {
    let newline = match nl.found {
        Some(None) if i >= nl.from => None,
        Some(Some(p)) if p >= i && i >= nl.from => Some(p),
        _ => {
            let p = memchr::memchr(b'\n', &src[i..]).map(|p| p + i);
            *nl = NextNewline { found: Some(p), from: i };
            p
        }
    };
    let limit = newline.unwrap_or(src.len());
    match memchr::memchr3(b'{', b'}', b'<', &src[i..limit]) {
        Some(p) => Some(i + p),
        None => newline,
    }
}

/// Pass 1: which openers have no closer.
#[derive(Debug, Default)]
struct Pairing {
    /// Positions of template openers without a closer, ascending.
    unmatched_braces: Vec<usize>,
    /// Positions of `{|` table openers without a `|}`, ascending.
    unmatched_tables: Vec<usize>,
}

impl Pairing {
    fn compute(src: &[u8]) -> Pairing {
        let mut braces: Vec<(usize, u8)> = Vec::new();
        let mut widths: Vec<u8> = Vec::new();
        let mut tables: Vec<usize> = Vec::new();
        let mut angles = AngleReader::new();
        let mut i = 0;
        if let Some(j) = table_close_at(src, 0) {
            tables.pop();
            i = j + 2;
        }
        let mut next_nl = NextNewline::default();
        while i < src.len() {
            let Some(p) = next_special(src, i, &mut next_nl) else { break };
            i = p;
            match src[i] {
                b'{' => {
                    let n = run_len(src, i, b'{');
                    if n == 1 {
                        if src.get(i + 1) == Some(&b'|') && at_line_start(src, i) {
                            tables.push(i);
                            i += 2;
                        } else {
                            i += 1;
                        }
                    } else {
                        for (pos, w) in open_tokens(i, n) {
                            braces.push((pos, w));
                            widths.push(w);
                        }
                        i += n;
                    }
                }
                b'}' => {
                    let m = run_len(src, i, b'}');
                    let before = widths.len();
                    close_tokens(&mut widths, m);
                    braces.truncate(braces.len() - (before - widths.len()));
                    i += m;
                }
                b'<' => {
                    i = match angles.read(src, i) {
                        Angle::Comment { end } | Angle::Drop { end } | Angle::Tag { end, .. } => end,
                        Angle::Raw { end, .. } => end,
                        Angle::Text => i + 1,
                    };
                }
                _ => {
                    // '\n'
                    i += 1;
                    if let Some(j) = table_close_at(src, i) {
                        tables.pop();
                        i = j + 2;
                    }
                }
            }
        }
        Pairing { unmatched_braces: braces.into_iter().map(|(p, _)| p).collect(), unmatched_tables: tables }
    }
}

// ------------------------------------------------------------------------------------------------
// Pass 2

#[derive(Debug, Clone, Copy)]
enum Frame {
    /// `[[`: output position where the link's text starts.
    Link { mark: usize },
    /// `[url label]`: the label is being written.
    Ext,
}

/// Bytes that end a run of plain text in pass 2.
const fn special_table() -> [bool; 256] {
    let mut t = [false; 256];
    let specials = b"{}[]<'\n_";
    let mut k = 0;
    while k < specials.len() {
        t[specials[k] as usize] = true;
        k += 1;
    }
    t
}
static SPECIAL: [bool; 256] = special_table();

struct Scanner<'a> {
    src: &'a [u8],
    out: Vec<u8>,
    pairing: Pairing,
    brace_cursor: usize,
    table_cursor: usize,
    templates: Vec<u8>,
    tables: usize,
    frames: Vec<Frame>,
    angles: AngleReader,
    next_nl: NextNewline,
    /// An open heading: (output mark, level).
    heading: Option<(usize, usize)>,
    /// A dropped section in progress: (output mark, level).
    dropping: Option<(usize, usize)>,
    /// Where the current source line begins (a line of only whitespace ends a paragraph).
    line_begin: usize,
    /// Where the content of the outermost open template starts (after its `{{`), when it is a
    /// template (not a `{{{parameter}}}`) outside tables: rendered at its close if it is a content
    /// template ([`crate::templates::render`]).
    template_start: Option<usize>,
}

impl<'a> Scanner<'a> {
    fn new(src: &'a [u8], pairing: Pairing) -> Self {
        Scanner {
            src,
            out: Vec::with_capacity(src.len() / 2),
            pairing,
            brace_cursor: 0,
            table_cursor: 0,
            templates: Vec::new(),
            tables: 0,
            frames: Vec::new(),
            angles: AngleReader::new(),
            next_nl: NextNewline::default(),
            heading: None,
            dropping: None,
            line_begin: 0,
            template_start: None,
        }
    }

    fn suppressed(&self) -> bool {
        !self.templates.is_empty() || self.tables > 0
    }

    fn run(mut self) -> Vec<u8> {
        let src = self.src;
        let mut i = self.line_start(0);
        while i < src.len() {
            if self.suppressed() {
                let Some(p) = next_special(src, i, &mut self.next_nl) else { break };
                i = p;
            } else {
                let start = i;
                while i < src.len() && !SPECIAL[src[i] as usize] {
                    i += 1;
                }
                self.out.extend_from_slice(&src[start..i]);
                if i >= src.len() {
                    break;
                }
            }
            i = self.special(i);
        }
        if self.heading.is_some() {
            self.end_heading();
        }
        if let Some((mark, _)) = self.dropping.take() {
            self.out.truncate(mark);
        }
        self.out
    }

    fn emit(&mut self, b: &[u8]) {
        if !self.suppressed() {
            self.out.extend_from_slice(b);
        }
    }

    /// Handles the special byte at `i`; returns the next position.
    fn special(&mut self, i: usize) -> usize {
        let src = self.src;
        match src[i] {
            b'{' => {
                let n = run_len(src, i, b'{');
                if n == 1 {
                    if src.get(i + 1) == Some(&b'|') && at_line_start(src, i) {
                        if self.pairing.unmatched_tables.get(self.table_cursor) == Some(&i) {
                            self.table_cursor += 1;
                        } else {
                            self.tables += 1;
                        }
                        return i + 2;
                    }
                    self.emit(b"{");
                    return i + 1;
                }
                for (pos, w) in open_tokens(i, n) {
                    if self.pairing.unmatched_braces.get(self.brace_cursor) == Some(&pos) {
                        self.brace_cursor += 1;
                    } else {
                        if self.templates.is_empty() {
                            self.template_start = (w == 2 && self.tables == 0).then_some(pos + 2);
                        }
                        self.templates.push(w);
                    }
                }
                i + n
            }
            b'}' => {
                let m = run_len(src, i, b'}');
                let open = !self.templates.is_empty();
                let left = if m == 1 { 1 } else { close_tokens(&mut self.templates, m) };
                if open && self.templates.is_empty() {
                    // the outermost template closed with the last two braces this run consumed
                    let end = (i + m - left).saturating_sub(2);
                    if let Some(start) = self.template_start.take()
                        && start <= end
                        && self.tables == 0
                        && let Some(text) = crate::templates::render(&src[start..end])
                    {
                        self.out.extend_from_slice(text.as_bytes());
                    }
                }
                if left == 1 {
                    self.emit(b"}");
                }
                i + m
            }
            b'<' => match self.angles.read(src, i) {
                Angle::Comment { end } | Angle::Drop { end } => end,
                Angle::Raw { start, stop, end } => {
                    self.emit(&src[start..stop]);
                    end
                }
                Angle::Tag { end, space } => {
                    if space {
                        self.emit(b" ");
                    }
                    end
                }
                Angle::Text => {
                    self.emit(b"<");
                    i + 1
                }
            },
            b'\n' => self.newline(i),
            b'[' => self.open_bracket(i),
            b']' => self.close_bracket(i),
            b'\'' => {
                let k = run_len(src, i, b'\'');
                match k {
                    1 => self.emit(b"'"),
                    4 => self.emit(b"'"),
                    _ => {}
                }
                i + k
            }
            _ => {
                // '_': magic words such as __NOTOC__
                if src[i..].starts_with(b"__") {
                    let mut j = i + 2;
                    while j < src.len() && src[j].is_ascii_uppercase() {
                        j += 1;
                    }
                    if j > i + 2 && src[j..].starts_with(b"__") {
                        return j + 2;
                    }
                }
                self.emit(b"_");
                i + 1
            }
        }
    }

    fn newline(&mut self, i: usize) -> usize {
        if self.heading.is_some() {
            self.end_heading();
        }
        if !self.suppressed() {
            while matches!(self.frames.last(), Some(Frame::Ext)) {
                self.frames.pop();
            }
            if self.src[self.line_begin..i].trim_ascii().is_empty() {
                // a blank line ends a paragraph: links do not span paragraphs
                self.frames.clear();
            }
            self.out.push(b'\n');
        }
        self.line_begin = i + 1;
        self.line_start(i + 1)
    }

    /// Line-start constructs: table closers, headings, list markers, horizontal rules.
    fn line_start(&mut self, i: usize) -> usize {
        let src = self.src;
        if let Some(j) = table_close_at(src, i) {
            if self.tables > 0 {
                self.tables -= 1;
            }
            return j + 2;
        }
        if self.suppressed() || i >= src.len() {
            return i;
        }
        match src[i] {
            b'=' => {
                let r = run_len(src, i, b'=');
                let line_end = memchr::memchr(b'\n', &src[i..]).map_or(src.len(), |p| p + i);
                let line = src[i + r..line_end].trim_ascii_end();
                if line.ends_with(b"=") {
                    if let Some((mark, level)) = self.dropping
                        && r <= level
                    {
                        self.out.truncate(mark);
                        self.dropping = None;
                    }
                    self.frames.clear();
                    self.heading = Some((self.out.len(), r));
                }
                i + r
            }
            b'*' | b'#' | b':' | b';' => {
                let mut j = i;
                while j < src.len() && matches!(src[j], b'*' | b'#' | b':' | b';') {
                    j += 1;
                }
                // `:{|` is an indented table: leave the `{|` for the brace handler
                j
            }
            b'-' if src[i..].starts_with(b"----") => i + run_len(src, i, b'-'),
            _ => i,
        }
    }

    fn end_heading(&mut self) {
        let Some((mark, level)) = self.heading.take() else {
            return;
        };
        let text = &self.out[mark.min(self.out.len())..];
        let title = text.trim_ascii();
        let trailing = title.iter().rev().take_while(|&&b| b == b'=').count();
        let title = title[..title.len() - trailing].trim_ascii();
        let drop = std::str::from_utf8(title)
            .map(|t| {
                let t = t.trim_end_matches(':').trim().to_lowercase();
                DROPPED_SECTIONS.contains(&t.as_str())
            })
            .unwrap_or(false);
        self.out.truncate(mark.min(self.out.len()));
        self.frames.clear();
        if drop && self.dropping.is_none() {
            self.dropping = Some((self.out.len(), level.min(trailing.max(1))));
        }
    }

    fn open_bracket(&mut self, i: usize) -> usize {
        let src = self.src;
        if src.get(i + 1) == Some(&b'[') {
            let depth = self.frames.iter().filter(|f| matches!(f, Frame::Link { .. })).count();
            if depth < MAX_LINK_DEPTH {
                self.frames.push(Frame::Link { mark: self.out.len() });
            }
            return i + 2;
        }
        if is_url_start(&src[i + 1..]) {
            let mut j = i + 1;
            while j < src.len() && !matches!(src[j], b' ' | b'\t' | b']' | b'\n' | b'<' | b'{' | b'}' | b'[' | b'"') {
                j += 1;
            }
            return match src.get(j) {
                Some(b' ' | b'\t') => {
                    self.frames.push(Frame::Ext);
                    j + 1
                }
                Some(b']') => j + 1,
                _ => j,
            };
        }
        self.emit(b"[");
        i + 1
    }

    fn close_bracket(&mut self, i: usize) -> usize {
        match self.frames.last() {
            Some(Frame::Ext) => {
                self.frames.pop();
                i + 1
            }
            Some(&Frame::Link { mark }) if self.src.get(i + 1) == Some(&b']') => {
                self.frames.pop();
                self.resolve_link(mark);
                i + 2
            }
            _ if self.src.get(i + 1) == Some(&b']') => i + 2,
            _ => {
                self.emit(b"]");
                i + 1
            }
        }
    }

    /// Replaces `target|anchor` written since `mark` by what the link displays.
    fn resolve_link(&mut self, mark: usize) {
        let mark = mark.min(self.out.len());
        let inner = &self.out[mark..];
        let pipe = memchr::memchr(b'|', inner);
        let target = &inner[..pipe.unwrap_or(inner.len())];
        let t = target.trim_ascii();
        let (colon, t) = match t.strip_prefix(b":") {
            Some(rest) => (true, rest.trim_ascii()),
            None => (false, t),
        };
        let ns_end = memchr::memchr(b':', t);
        let ns = ns_end.map(|e| t[..e].trim_ascii());
        if !colon && let Some(ns) = ns {
            if DROPPED_LINK_NAMESPACES.iter().any(|d| d.as_bytes().eq_ignore_ascii_case(ns)) {
                self.out.truncate(mark);
                return;
            }
            if pipe.is_none() && is_language_code(ns) {
                self.out.truncate(mark);
                return;
            }
        }
        // the displayed text, as a range of `inner`
        let base = inner.as_ptr() as usize;
        let range_of = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let shown = match pipe {
            Some(p) if !inner[p + 1..].trim_ascii().is_empty() => (p + 1)..inner.len(),
            Some(_) => range_of(pipe_trick(strip_interwiki(t))),
            None => {
                let t = strip_interwiki(t);
                range_of(t.strip_prefix(b"#").unwrap_or(t))
            }
        };
        let len = shown.len();
        self.out.copy_within(mark + shown.start..mark + shown.end, mark);
        self.out.truncate(mark + len);
    }
}

fn is_url_start(s: &[u8]) -> bool {
    const SCHEMES: &[&[u8]] = &[b"http://", b"https://", b"ftp://", b"//", b"mailto:", b"irc://", b"news:"];
    SCHEMES.iter().any(|p| s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p))
}

/// `de`, `zh-yue`, `simple`: an interlanguage prefix (lower case only, as written in articles).
fn is_language_code(ns: &[u8]) -> bool {
    if ns == b"simple" {
        return true;
    }
    let mut parts = ns.split(|&b| b == b'-');
    let Some(first) = parts.next() else {
        return false;
    };
    (2..=3).contains(&first.len())
        && first.iter().all(u8::is_ascii_lowercase)
        && parts.all(|p| !p.is_empty() && p.iter().all(u8::is_ascii_lowercase))
}

fn strip_interwiki(t: &[u8]) -> &[u8] {
    if let Some(e) = memchr::memchr(b':', t) {
        let prefix = &t[..e];
        if INTERWIKI_PREFIXES.iter().any(|p| p.as_bytes().eq_ignore_ascii_case(prefix)) {
            return t[e + 1..].trim_ascii();
        }
    }
    t
}

/// MediaWiki's pipe trick: `[[Foo (bar)|]]` shows "Foo", `[[Help:Foo|]]` shows "Foo".
fn pipe_trick(t: &[u8]) -> &[u8] {
    let t = match memchr::memchr(b':', t) {
        Some(e) => &t[e + 1..],
        None => t,
    };
    let t = match memchr::memchr(b'(', t) {
        Some(p) if p > 0 => &t[..p],
        _ => match memchr::memchr(b',', t) {
            Some(p) if p > 0 => &t[..p],
            _ => t,
        },
    };
    t.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_templates_and_formatting() {
        let s = "'''Anarchism''' is a [[political philosophy]] and [[Political movement|movement]]{{sfn|X|2000}} that.";
        assert_eq!(clean(s), "Anarchism is a political philosophy and movement that.");
    }

    #[test]
    fn nested_templates_tables_refs_comments() {
        let s = "{{Infobox|a={{b|{{c}}}}|d=[[e]]}}\nText<ref name=x>{{cite|y}}</ref> more<ref name=z/>.<!-- hidden -->\n{|\n|-\n| cell\n|}\nEnd.";
        assert_eq!(clean(s), "Text more.\nEnd.");
    }

    #[test]
    fn files_categories_interlanguage_vanish() {
        let s = "[[File:A.jpg|thumb|A [[caption]] here]]Body [[Category:X]][[de:Anarchismus]] [[:Category:Y|cat]] [[wikt:word]].";
        assert_eq!(clean(s), "Body cat word.");
    }

    #[test]
    fn headings_become_boundaries_and_reference_sections_drop() {
        let s = "Intro.\n== History ==\nPast.\n=== Early ===\nEarly.\n== References ==\n* ref one\n=== Sub ===\nstill refs\n== Legacy ==\nLater.";
        assert_eq!(clean(s), "Intro.\nPast.\nEarly.\nLater.");
    }

    #[test]
    fn unclosed_markup_does_not_swallow_the_article() {
        assert_eq!(
            clean("A {{unclosed template and [[unclosed link\n\nNext paragraph."),
            "A unclosed template and unclosed link\nNext paragraph."
        );
        assert_eq!(clean("x <ref>never closed\ny"), "x never closed\ny");
    }

    #[test]
    fn prose_less_than_is_not_a_tag() {
        // issue #16: `<q` (a known tag name) used to open a tag running across `<<` to the `>>`
        let prose = "The relation a ≤ b allows equality, while p<q does not. The pair << and >> denotes much less and much greater.";
        assert_eq!(clean(prose), prose);
        for text in ["3<5 and 7>2", "a <-> b", "p<q <b>"] {
            assert!(clean(text).starts_with(&text[..text.find('<').unwrap_or(0) + 2]), "{text:?} → {:?}", clean(text));
        }
        // real tags still go, and a closing tag cut short by a `<` ends right after its name
        assert_eq!(clean("a <b>bold</b> and <span class=\"x\">kept</span> text"), "a bold and kept text");
        assert_eq!(clean("a <ref>note</ref <b>x</b> tail"), "a x tail");
    }

    #[test]
    fn entities_and_external_links() {
        let s = "A&nbsp;&ndash;&amp; B [http://example.com label text] [https://x.org] C";
        assert_eq!(clean(s), "A –& B label text C");
    }

    proptest::proptest! {
        #[test]
        fn lines_that_need_no_tidying_are_left_alone(s in "[a-z(),;.: \t\u{a0}\u{2013}\u{2009}é]{0,40}") {
            let mut line = String::new();
            tidy_line(&s, &mut line);
            if !needs_tidy(s.as_bytes()) {
                proptest::prop_assert_eq!(line, s);
            }
        }
    }

    /// Dropping every template left gaps where the page shows facts ("At, the state has…").
    #[test]
    fn content_templates_leave_no_gap() {
        assert_eq!(clean("At {{convert|1300|mi|km}}, the state has a coast."), "At 1300 mi, the state has a coast.");
        assert_eq!(
            clean("The hill rises to {{convert|93|m|ft}} above the sea."),
            "The hill rises to 93 m above the sea."
        );
        assert_eq!(
            clean("'''Tokyo Tower''' ({{nihongo|Tokyo Tower|東京タワー|Tōkyō tawā}}) opened {{circa|1958}}."),
            "Tokyo Tower (Tokyo Tower (東京タワー, Tōkyō tawā)) opened c. 1958."
        );
        assert_eq!(clean("Born {{birth date|1961|8|4}} in {{lang|haw|Honolulu}}."), "Born August 4, 1961 in Honolulu.");
        assert_eq!(
            clean("A {{frac|1|2}} share, {{height|m=1.85}} tall, {{sortname|John|Smith}}."),
            "A 1/2 share, 1.85 m tall, John Smith."
        );
        // layout, citations, nested templates and templates in tables stay dropped
        assert_eq!(clean("Text.{{sfn|X|2000}} {{Infobox|a={{convert|1|km}}}}More."), "Text. More.");
        assert_eq!(clean("{|\n| {{convert|5|km}}\n|}\nAfter."), "After.");
    }

    #[test]
    fn pipe_trick_and_params() {
        assert_eq!(clean("[[Foo (bar)|]] and {{{1}}} x"), "Foo and x");
    }
}
