//! DPR-style passages: windows of `words` whitespace-separated words.

/// Splits `text` into windows of at most `words` words, each joined by single spaces. The last
/// window may be shorter; an empty text gives no window.
pub fn chunk_words(text: &str, words: usize) -> Vec<String> {
    let words = words.max(1);
    let mut out = Vec::with_capacity(text.len() / (words * 6) + 1);
    let mut cur = String::new();
    let mut n = 0;
    for w in text.split_whitespace() {
        if n == words {
            out.push(std::mem::take(&mut cur));
            n = 0;
        }
        if n > 0 {
            cur.push(' ');
        } else {
            cur.reserve(words * 7);
        }
        cur.push_str(w);
        n += 1;
    }
    if n > 0 {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        assert_eq!(chunk_words("a b  c\nd e", 2), vec!["a b", "c d", "e"]);
        assert_eq!(chunk_words("   ", 100), Vec::<String>::new());
        assert_eq!(chunk_words("a b", 2), vec!["a b"]);
    }
}
