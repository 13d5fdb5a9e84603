//! Passages: windows of about `words` whitespace-separated words per document.
//!
//! Two modes ([`Chunking`]): `dpr` cuts windows of exactly `words` words and leaves the rest as a last,
//! shorter window (DPR's `psgs_w100`, for reproducing published corpora), so a 101-word document gives
//! a 1-word passage that matches queries by chance. `balanced` (the default) cuts a document of `W`
//! words into the same number of windows, `ceil(W / words)`, of `W / n` words each (the first `W mod
//! n` get one more): no window is longer than `words`, and none is shorter than half of it unless the
//! whole document is. Folding the tail into the previous window was the other choice; it makes
//! windows up to 1.5 × `words`, past what the embedder reads (256 tokens for MiniLM at 200 words).

/// Byte length of the whitespace character at `b[i..]`, or 0. Same set as `char::is_whitespace`:
/// ASCII `\t \n \x0b \x0c \r` and space, U+0085, U+00A0, U+1680, U+2000–U+200A, U+2028, U+2029,
/// U+202F, U+205F, U+3000.
#[inline(always)]
pub(crate) fn space_at(b: &[u8], i: usize) -> usize {
    let Some(&first) = b.get(i) else { return 0 };
    match first {
        b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' => 1,
        0xC2 => usize::from(matches!(b.get(i + 1), Some(0x85 | 0xA0))) * 2,
        0xE1 => usize::from(b.get(i + 1) == Some(&0x9A) && b.get(i + 2) == Some(&0x80)) * 3,
        0xE2 => {
            let ok = match (b.get(i + 1), b.get(i + 2)) {
                (Some(0x80), Some(&c)) => (0x80..=0x8A).contains(&c) || matches!(c, 0xA8 | 0xA9 | 0xAF),
                (Some(0x81), Some(0x9F)) => true,
                _ => false,
            };
            usize::from(ok) * 3
        }
        0xE3 => usize::from(b.get(i + 1) == Some(&0x80) && b.get(i + 2) == Some(&0x80)) * 3,
        _ => 0,
    }
}

/// Bytes that may start a whitespace character: ASCII whitespace and the lead bytes of the
/// non-ASCII ones.
const fn maybe_space_table() -> [bool; 256] {
    let mut t = [false; 256];
    let bytes = [b' ', b'\t', b'\n', 0x0b, 0x0c, b'\r', 0xC2, 0xE1, 0xE2, 0xE3];
    let mut k = 0;
    while k < bytes.len() {
        t[bytes[k] as usize] = true;
        k += 1;
    }
    t
}
static MAYBE_SPACE: [bool; 256] = maybe_space_table();

/// The whitespace-separated words of `s`: the same words as `str::split_whitespace`, found by
/// scanning bytes (about twice as fast on mostly-ASCII text).
pub fn words(s: &str) -> impl Iterator<Item = &str> {
    let b = s.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        loop {
            if i >= b.len() {
                return None;
            }
            let l = space_at(b, i);
            if l == 0 {
                break;
            }
            i += l;
        }
        let start = i;
        loop {
            while i < b.len() && !MAYBE_SPACE[b[i] as usize] {
                i += 1;
            }
            if i >= b.len() || space_at(b, i) > 0 {
                break;
            }
            i += 1;
        }
        // word boundaries fall on whitespace characters, hence on char boundaries
        Some(&s[start..i])
    })
}

/// How documents are cut into windows (recorded in the corpus manifest's options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Chunking {
    /// Windows of equal size (± 1 word), as many as `dpr` makes: no short tails.
    #[default]
    Balanced,
    /// DPR's exact windows of `words` words; the last one holds what is left.
    Dpr,
}

impl std::str::FromStr for Chunking {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "balanced" => Ok(Chunking::Balanced),
            "dpr" => Ok(Chunking::Dpr),
            _ => Err(format!("unknown chunking {s:?} (balanced, dpr)")),
        }
    }
}

impl Chunking {
    /// The size of each window of a document of `total` words: window `k` holds `size(k)` words.
    pub fn sizes(self, total: usize, per_window: usize) -> impl Fn(usize) -> usize {
        let per_window = per_window.max(1);
        let (base, extra) = match self {
            Chunking::Dpr => (per_window, 0),
            Chunking::Balanced => {
                let n = total.div_ceil(per_window).max(1);
                ((total / n).max(1), total % n)
            }
        };
        move |k| base + usize::from(k < extra)
    }
}

/// Splits `text` into windows of at most `words` words, each joined by single spaces. The last
/// window may be shorter; an empty text gives no window.
pub fn chunk_words(text: &str, per_window: usize) -> Vec<String> {
    let per_window = per_window.max(1);
    chunk_words_sized(text, per_window, |_| per_window)
}

/// [`chunk_words`] in a [`Chunking`] mode.
pub fn chunk_words_in(text: &str, per_window: usize, mode: Chunking) -> Vec<String> {
    match mode {
        Chunking::Dpr => chunk_words(text, per_window),
        Chunking::Balanced => chunk_words_sized(text, per_window, mode.sizes(words(text).count(), per_window)),
    }
}

/// Windows of `size(k)` words for window `k`.
fn chunk_words_sized(text: &str, per_window: usize, size: impl Fn(usize) -> usize) -> Vec<String> {
    let b = text.as_bytes();
    let n = b.len();
    let mut out = Vec::with_capacity(n / (per_window * 6) + 1);
    let skip_space = |mut i: usize| {
        while i < n {
            match space_at(b, i) {
                0 => break,
                l => i += l,
            }
        }
        i
    };
    let mut i = skip_space(0);
    while i < n {
        // one window: `per_window` words from `start`; `simple` while every gap is one ' ' or '\n'
        let per_window = size(out.len()).max(1);
        let start = i;
        let mut end = i;
        let mut simple = true;
        for k in 0..per_window {
            // the word
            loop {
                while i < n && !MAYBE_SPACE[b[i] as usize] {
                    i += 1;
                }
                if i >= n || space_at(b, i) > 0 {
                    break;
                }
                i += 1;
            }
            end = i;
            // the gap
            let gap = i;
            i = skip_space(i);
            if k + 1 < per_window && i < n && (i - gap != 1 || !matches!(b[gap], b' ' | b'\n')) {
                simple = false;
            }
            if i >= n {
                break;
            }
        }
        // window boundaries fall on whitespace characters, hence on char boundaries
        let slice = &text[start..end];
        out.push(if simple { slice.replace('\n', " ") } else { words(slice).collect::<Vec<_>>().join(" ") });
    }
    out
}

/// [`chunk_words`] for text whose words are already separated by exactly one `' '` or `'\n'`, with no
/// whitespace at either end and no other whitespace character (what [`crate::wikitext::clean`]
/// returns): windows are found by counting separators with a vectorised search.
pub fn chunk_normalized(text: &str, per_window: usize) -> Vec<String> {
    let per_window = per_window.max(1);
    chunk_normalized_sized(text, per_window, |_| per_window)
}

/// [`chunk_normalized`] in a [`Chunking`] mode.
pub fn chunk_normalized_in(text: &str, per_window: usize, mode: Chunking) -> Vec<String> {
    match mode {
        Chunking::Dpr => chunk_normalized(text, per_window),
        Chunking::Balanced => {
            let total =
                if text.is_empty() { 0 } else { memchr::memchr2_iter(b' ', b'\n', text.as_bytes()).count() + 1 };
            chunk_normalized_sized(text, per_window, mode.sizes(total, per_window))
        }
    }
}

fn chunk_normalized_sized(text: &str, per_window: usize, size: impl Fn(usize) -> usize) -> Vec<String> {
    let mut out = Vec::with_capacity(text.len() / (per_window.max(1) * 6) + 1);
    if text.is_empty() {
        return out;
    }
    let mut start = 0;
    let mut seps = 0;
    let mut want = size(0).max(1);
    for at in memchr::memchr2_iter(b' ', b'\n', text.as_bytes()) {
        seps += 1;
        if seps == want {
            out.push(text[start..at].replace('\n', " "));
            start = at + 1;
            seps = 0;
            want = size(out.len()).max(1);
        }
    }
    if start < text.len() {
        out.push(text[start..].replace('\n', " "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_match_split_whitespace() {
        let all_spaces: String = (0..=0x3000u32).filter_map(char::from_u32).filter(|c| c.is_whitespace()).collect();
        for s in [
            "",
            "  a  b\tc\n",
            "x\u{a0}y\u{3000}z\u{2009}w",
            "é ü\u{85}日本 語",
            "\u{200b}zero-width",
            "\u{2030}\u{205e}\u{205f}x\u{180e}",
            &all_spaces,
            &format!("a{all_spaces}b"),
        ] {
            assert_eq!(words(s).collect::<Vec<_>>(), s.split_whitespace().collect::<Vec<_>>(), "{s:?}");
        }
    }

    #[test]
    fn same_as_joining_words() {
        let text = "a b\nc  d\te\u{a0}f g\n\nh i j k";
        for n in 1..6 {
            let words: Vec<&str> = text.split_whitespace().collect();
            let expect: Vec<String> = words.chunks(n).map(|c| c.join(" ")).collect();
            assert_eq!(chunk_words(text, n), expect, "{n}");
        }
    }

    proptest::proptest! {
        #[test]
        fn normalized_fast_path_equals_the_general_one(
            words in proptest::collection::vec("[a-zé日0-9,.()]{1,8}", 0..300),
            seps in proptest::collection::vec(proptest::bool::ANY, 300),
            n in 1usize..120,
        ) {
            let mut text = String::new();
            for (k, w) in words.iter().enumerate() {
                if k > 0 {
                    text.push(if seps[k] { '\n' } else { ' ' });
                }
                text.push_str(w);
            }
            proptest::prop_assert_eq!(chunk_normalized(&text, n), chunk_words(&text, n));
        }
    }

    /// 100-word windows left 1-word tails (`capital city.` ranked first for "capital of Australia"):
    /// balanced windows are never shorter than half the window unless the document is.
    #[test]
    fn balanced_windows_leave_no_short_tail() {
        let doc = |n: usize| (0..n).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
        for (total, per) in
            [(101, 100), (150, 100), (199, 100), (200, 100), (201, 100), (1234, 100), (7, 100), (5, 2), (1, 1)]
        {
            let text = doc(total);
            for got in
                [chunk_words_in(&text, per, Chunking::Balanced), chunk_normalized_in(&text, per, Chunking::Balanced)]
            {
                let sizes: Vec<usize> = got.iter().map(|w| w.split(' ').count()).collect();
                assert_eq!(sizes.iter().sum::<usize>(), total, "{total}/{per}");
                assert_eq!(sizes.len(), total.div_ceil(per), "{total}/{per}: as many windows as dpr");
                assert!(
                    sizes.iter().all(|&s| s <= per && (s * 2 >= per || sizes.len() == 1)),
                    "{total}/{per}: {sizes:?}"
                );
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
                assert_eq!(got.join(" "), text);
            }
            assert_eq!(chunk_words_in(&text, per, Chunking::Dpr), chunk_words(&text, per));
        }
        assert_eq!(chunk_words_in("a b c d e", 4, Chunking::Balanced), vec!["a b c", "d e"]);
        assert_eq!(chunk_words_in("a b c d e", 4, Chunking::Dpr), vec!["a b c d", "e"]);
        assert!(chunk_normalized_in("", 4, Chunking::Balanced).is_empty());
    }

    #[test]
    fn windows() {
        assert_eq!(chunk_words("a b  c\nd e", 2), vec!["a b", "c d", "e"]);
        assert_eq!(chunk_words("   ", 100), Vec::<String>::new());
        assert_eq!(chunk_words("a b", 2), vec!["a b"]);
    }
}
