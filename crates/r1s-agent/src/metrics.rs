//! R1-Searcher's answer metrics: normalisation, exact match, token F1 (with the yes/no/noanswer
//! rule), cover-EM (the paper's ACC_R) and cover-EM-2, each the maximum over the gold answers.

use std::collections::HashMap;

/// Punctuation replaced by a space: ASCII punctuation plus ‘ ’ ´ (and backticks, already ASCII).
fn is_punct(c: char) -> bool {
    c.is_ascii_punctuation() || matches!(c, '\u{2018}' | '\u{2019}' | '\u{00b4}')
}

/// `"True"` → `yes`, `"False"` → `no` (as the released evaluation does before normalising; only the
/// exact strings: `" False "` is left alone, which the published figures depend on).
fn map_bool(s: &str) -> &str {
    match s {
        "True" => "yes",
        "False" => "no",
        _ => s,
    }
}

/// Lower-case, `_` and punctuation → space, drop the words a / an / the, collapse whitespace.
pub fn normalize(s: &str) -> String {
    let lowered: String =
        map_bool(s).to_lowercase().chars().map(|c| if c == '_' || is_punct(c) { ' ' } else { c }).collect();
    let words: Vec<&str> = lowered.split_whitespace().filter(|w| !matches!(*w, "a" | "an" | "the")).collect();
    words.join(" ")
}

/// Normalised strings are equal.
pub fn exact_match(pred: &str, gold: &str) -> bool {
    normalize(pred) == normalize(gold)
}

/// Token-multiset F1 of the normalised strings; 0 when either side is yes / no / noanswer and
/// they differ.
pub fn f1(pred: &str, gold: &str) -> f64 {
    let (p, g) = (normalize(pred), normalize(gold));
    let special = ["yes", "no", "noanswer"];
    if (special.contains(&p.as_str()) || special.contains(&g.as_str())) && p != g {
        return 0.0;
    }
    let pt: Vec<&str> = p.split_whitespace().collect();
    let gt: Vec<&str> = g.split_whitespace().collect();
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &gt {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0i64;
    for t in &pt {
        if let Some(c) = counts.get_mut(t)
            && *c > 0
        {
            *c -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / pt.len() as f64;
    let recall = same as f64 / gt.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Every token of the normalised gold occurs among the normalised prediction's tokens.
pub fn cover_em(pred: &str, gold: &str) -> bool {
    let p = normalize(pred);
    let pt: std::collections::HashSet<&str> = p.split_whitespace().collect();
    let g = normalize(gold);
    let gt: Vec<&str> = g.split_whitespace().collect();
    !gt.is_empty() && gt.iter().all(|t| pt.contains(t))
}

/// The normalised gold tokens appear contiguously in the prediction, or the gold string is a
/// substring of it.
pub fn cover_em_2(pred: &str, gold: &str) -> bool {
    let (p, g) = (normalize(pred), normalize(gold));
    if g.is_empty() {
        return false;
    }
    if p.contains(&g) {
        return true;
    }
    let pt: Vec<&str> = p.split_whitespace().collect();
    let gt: Vec<&str> = g.split_whitespace().collect();
    pt.windows(gt.len()).any(|w| w == gt.as_slice())
}

/// All metrics of one prediction, each the maximum over `golds`.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Scores {
    pub em: f64,
    pub cover_em: f64,
    pub cover_em_2: f64,
    pub f1: f64,
}

/// Scores `pred` against every gold answer and keeps the best of each metric.
pub fn score(pred: &str, golds: &[String]) -> Scores {
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    golds.iter().fold(Scores::default(), |s, g| Scores {
        em: s.em.max(b(exact_match(pred, g))),
        cover_em: s.cover_em.max(b(cover_em(pred, g))),
        cover_em_2: s.cover_em_2.max(b(cover_em_2(pred, g))),
        f1: s.f1.max(f1(pred, g)),
    })
}

/// R1-Searcher's answer extraction: the text between the last `<answer>` and the next `</answer>`,
/// trimmed.
pub fn extract_answer(text: &str) -> String {
    let after = text.rsplit("<answer>").next().unwrap_or(text);
    after.split("</answer>").next().unwrap_or(after).trim().to_owned()
}
