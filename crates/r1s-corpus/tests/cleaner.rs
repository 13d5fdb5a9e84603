//! Property tests of the wikitext cleaner: no panic, no markup residue, linear time.

use proptest::prelude::*;
use r1s_corpus::wikitext::{RESIDUE, clean};

/// Fragments that exercise every construct, alone or broken.
const PIECES: &[&str] = &[
    "{{",
    "}}",
    "{{{",
    "}}}",
    "[[",
    "]]",
    "[",
    "]",
    "{|",
    "|}",
    "|-",
    "|",
    "<ref>",
    "</ref>",
    "<ref name=a/>",
    "<!--",
    "-->",
    "<nowiki>",
    "</nowiki>",
    "<pre>",
    "</pre>",
    "<br>",
    "<span>",
    "'''",
    "''",
    "'",
    "\n",
    "\n\n",
    "== H ==",
    "\n== References ==\n",
    "\n* ",
    "\n# ",
    ":",
    "&amp;",
    "&lt;ref&gt;",
    "&#91;&#91;",
    "&nbsp;",
    "File:",
    "Category:",
    "de:",
    "http://x.org ",
    "__TOC__",
    "=",
    "word ",
    "Ünïcödé ",
    "日本 ",
    "x",
    " ",
];

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..200).prop_map(|v| v.concat())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000)
}

fn assert_clean(out: &str) {
    for r in RESIDUE {
        assert!(!out.contains(r), "residue {r:?} in {out:?}");
    }
    assert!(!out.contains("\n\n") && !out.starts_with('\n') && !out.ends_with('\n'));
}

proptest! {
    // PROPTEST_CASES raises the count for long fuzzing runs (tools/fuzz-cleaner)
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn markup_soup_never_panics_or_leaves_residue(s in soup()) {
        assert_clean(&clean(&s));
    }

    #[test]
    fn arbitrary_text_never_panics(s in any::<String>()) {
        assert_clean(&clean(&s));
    }

    #[test]
    fn plain_words_survive(words in prop::collection::vec("[a-zA-Z0-9]{1,12}", 1..50)) {
        let s = words.join(" ");
        prop_assert_eq!(clean(&s), s);
    }

    #[test]
    fn piped_links_show_their_anchor(target in "[A-Z][a-z]{1,10}", anchor in "[a-z]{1,10}") {
        prop_assert_eq!(clean(&format!("x [[{target}|{anchor}]] y")), format!("x {anchor} y"));
    }
}

/// Pathological nesting of 1 MB: a quadratic cleaner would take hours here; a linear one takes
/// milliseconds. (No timing assertion: the test harness would simply hang.)
#[test]
fn linear_time_on_nested_and_unclosed_input() {
    let n = 1 << 17;
    for piece in ["{{", "[[", "<ref>", "<!--", "{|\n", "[[a|", "{{{", "[http://x ", "<nowiki>", "== a\n"] {
        let s = piece.repeat(n / piece.len().max(1)) + "tail";
        let out = clean(&s);
        assert_clean(&out);
    }
    let nested = "[[a ".repeat(n / 4) + &"]]".repeat(n / 4);
    assert_clean(&clean(&nested));
    let balanced = "{{a|".repeat(n / 4) + &"}}".repeat(n / 4) + " end";
    assert_eq!(clean(&balanced), "end");
}

#[test]
fn wikiextractor_like_output_on_a_real_lead() {
    let s = "{{Short description|Political philosophy}}\n{{Use dmy dates|date=October 2024}}\n'''Anarchism''' is a [[political philosophy]] and [[Political movement|movement]] that is against all forms of authority.<ref>{{cite book |last=McLaughlin |year=2007 |page=59}}</ref><!-- note -->\n\n[[File:X.jpg|thumb|A [[caption]].]]\n== Etymology ==\nThe word ''anarchism'' is composed from the word ''anarchy'' and the suffix ''-ism''.{{sfn|Bates|2017}}";
    assert_eq!(
        clean(s),
        "Anarchism is a political philosophy and movement that is against all forms of authority.\nThe word anarchism is composed from the word anarchy and the suffix -ism."
    );
}
