//! English analysis, the same for passages and queries.
//!
//! The chain follows Lucene's `EnglishAnalyzer` (what pyserini, and so Search-R1's BM25 retriever,
//! indexes with), built from tantivy's components:
//!
//! 1. split on every character that is not alphanumeric (tantivy's `SimpleTokenizer`; Lucene's
//!    `StandardTokenizer` follows UAX #29 word breaks, which also splits on punctuation but keeps
//!    `U.S.`-style and apostrophe words together);
//! 2. drop the `s` of an English possessive (`Obama's` → `obama`, as Lucene's
//!    `EnglishPossessiveFilter`; also after `’`), and make each Han ideograph and Hiragana character
//!    a token of its own (as UAX #29 and Lucene's `StandardTokenizer` do: `北京是` → `北`, `京`, `是`);
//! 3. drop tokens longer than 40 bytes (no useful word is; they are base64, URLs, DNA);
//! 4. lower-case;
//! 5. drop Lucene's 33 English stop words (`a`, `an`, `and`, … `with`: `ENGLISH_STOP_WORDS_SET`,
//!    which tantivy ships);
//! 6. stem with Snowball English (Porter2, as PyStemmer in bm25s; Lucene's `PorterStemFilter` is
//!    the older Porter algorithm, which differs on a few suffixes).
//!
//! Nothing in a query is syntax: quotes, colons, parentheses, `AND`, `*`, `~` are separators or
//! ordinary words, so no query fails to parse.

use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenStream, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
    Token, TokenStream, Tokenizer,
};

/// The name under which the analyzer is registered in an index (recorded in the manifest).
pub const ANALYZER: &str = "r1s_en_v1";

/// Tokens longer than this many bytes are dropped.
pub const MAX_TOKEN_BYTES: usize = 40;

/// The analyzer of [`ANALYZER`]: text in, index terms out.
pub fn english() -> TextAnalyzer {
    TextAnalyzer::builder(PossessiveTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES + 1))
        .filter(LowerCaser)
        .filter(english_stop_words())
        .filter(Stemmer::new(Language::English))
        .build()
}

fn english_stop_words() -> StopWordFilter {
    // tantivy is built with its `stopwords` feature, which provides the English list
    StopWordFilter::new(Language::English).unwrap_or_else(|| StopWordFilter::remove(Vec::<String>::new()))
}

/// The terms of `text` in order, repeated as often as they occur.
pub fn terms(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stream = analyzer.token_stream(text);
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    out
}

/// `SimpleTokenizer` without the `s` token that follows an apostrophe (an English possessive).
#[derive(Clone, Default)]
pub struct PossessiveTokenizer {
    inner: SimpleTokenizer,
}

impl std::fmt::Debug for PossessiveTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PossessiveTokenizer")
    }
}

/// The token stream of [`PossessiveTokenizer`].
pub struct PossessiveStream<'a> {
    inner: SimpleTokenStream<'a>,
    text: &'a str,
    /// Pieces of a split CJK token still to give, last first.
    pending: Vec<Token>,
    /// The piece given now, when not the inner stream's own token.
    piece: Option<Token>,
}

impl std::fmt::Debug for PossessiveStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PossessiveStream").finish_non_exhaustive()
    }
}

impl Tokenizer for PossessiveTokenizer {
    type TokenStream<'a> = PossessiveStream<'a>;
    fn token_stream<'a>(&'a mut self, text: &'a str) -> PossessiveStream<'a> {
        PossessiveStream { inner: self.inner.token_stream(text), text, pending: Vec::new(), piece: None }
    }
}

/// A character UAX #29 makes a word of its own: Han ideographs (with the extensions and the
/// compatibility block) and Hiragana.
fn is_lone_word(c: char) -> bool {
    matches!(u32::from(c), 0x3040..=0x309F | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x3134F)
}

impl PossessiveStream<'_> {
    fn is_possessive_s(&self) -> bool {
        let t = self.inner.token();
        (t.text == "s" || t.text == "S")
            && self
                .text
                .get(..t.offset_from)
                .and_then(|before| before.chars().next_back())
                .is_some_and(|c| matches!(c, '\'' | '\u{2019}' | '\u{FF07}'))
    }

    /// Splits the inner token into runs of ordinary characters and single CJK characters.
    fn split(&mut self) {
        let t = self.inner.token();
        let mut pieces = Vec::new();
        let mut run_start: Option<usize> = None;
        let piece = |from: usize, to: usize| Token {
            offset_from: t.offset_from + from,
            offset_to: t.offset_from + to,
            position: t.position,
            text: t.text[from..to].to_owned(),
            position_length: 1,
        };
        for (i, c) in t.text.char_indices() {
            if is_lone_word(c) {
                if let Some(s) = run_start.take() {
                    pieces.push(piece(s, i));
                }
                pieces.push(piece(i, i + c.len_utf8()));
            } else if run_start.is_none() {
                run_start = Some(i);
            }
        }
        if let Some(s) = run_start {
            pieces.push(piece(s, t.text.len()));
        }
        pieces.reverse();
        self.pending = pieces;
    }
}

impl TokenStream for PossessiveStream<'_> {
    fn advance(&mut self) -> bool {
        loop {
            if let Some(p) = self.pending.pop() {
                self.piece = Some(p);
                return true;
            }
            self.piece = None;
            if !self.inner.advance() {
                return false;
            }
            if self.is_possessive_s() {
                continue;
            }
            if self.inner.token().text.chars().any(is_lone_word) {
                self.split();
                continue;
            }
            return true;
        }
    }
    fn token(&self) -> &Token {
        self.piece.as_ref().unwrap_or_else(|| self.inner.token())
    }
    fn token_mut(&mut self) -> &mut Token {
        match &mut self.piece {
            Some(p) => p,
            None => self.inner.token_mut(),
        }
    }
}
