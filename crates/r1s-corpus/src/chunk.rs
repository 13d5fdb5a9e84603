//! DPR-style passages: windows of `words` whitespace-separated words.

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

/// Splits `text` into windows of at most `words` words, each joined by single spaces. The last
/// window may be shorter; an empty text gives no window.
pub fn chunk_words(text: &str, per_window: usize) -> Vec<String> {
    let per_window = per_window.max(1);
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
    let mut out = Vec::with_capacity(text.len() / (per_window * 6) + 1);
    if text.is_empty() {
        return out;
    }
    let mut start = 0;
    let mut seps = 0;
    for at in memchr::memchr2_iter(b' ', b'\n', text.as_bytes()) {
        seps += 1;
        if seps == per_window {
            out.push(text[start..at].replace('\n', " "));
            start = at + 1;
            seps = 0;
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

    #[test]
    fn windows() {
        assert_eq!(chunk_words("a b  c\nd e", 2), vec!["a b", "c d", "e"]);
        assert_eq!(chunk_words("   ", 100), Vec::<String>::new());
        assert_eq!(chunk_words("a b", 2), vec!["a b"]);
    }
}
