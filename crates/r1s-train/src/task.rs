//! A small search task built from any corpus, to check on a CPU that training teaches a policy to
//! search: "Which Wikipedia article is described as: "…"?" where the description is the opening
//! sentence of an article's first passage with the title blanked out, and the answer is the title.
//! Retrieval with the description finds the article; its title then sits in the first line of the
//! retrieved passage. Also writes cold-start SFT trajectories through the real retriever: some
//! search and copy the title of the first document, some answer directly (under R1-Searcher++'s
//! protocol: from an `<internal>` step that recalls the described sentence).

use r1s_agent::protocol::{BEGIN_QUERY, format_docs, splice};
use r1s_agent::{Protocol, Source, Span, plus, searchr1};
use r1s_core::{Passage, Retriever};
use serde_json::json;

use crate::error::{Result, TrainError};
pub use crate::seed::shuffle;
use crate::seed::unit;

/// One question of the task.
#[derive(Debug, Clone, PartialEq)]
pub struct TitleQuestion {
    pub id: String,
    pub question: String,
    pub title: String,
    /// The description with the blank, used for the SFT queries.
    pub description: String,
}

/// The opening sentence of `text` (at most `max_words` words), with `title` blanked out.
pub fn describe(title: &str, text: &str, max_words: usize) -> Option<String> {
    let mut words = Vec::new();
    for w in text.split_whitespace() {
        words.push(w);
        if (words.len() >= 8 && w.ends_with('.') && !w.ends_with("..")) || words.len() >= max_words {
            break;
        }
    }
    if words.len() < 8 {
        return None;
    }
    let sentence = words.join(" ");
    let blanked = replace_ci(&sentence, title, "___");
    let blanked = blanked.trim_end_matches('.').to_owned();
    (blanked.split_whitespace().count() >= 6).then_some(blanked)
}

/// Replaces every ASCII-case-insensitive occurrence of `pat` in `s`.
fn replace_ci(s: &str, pat: &str, with: &str) -> String {
    if pat.is_empty() {
        return s.to_owned();
    }
    let (ls, lp) = (s.to_ascii_lowercase(), pat.to_ascii_lowercase());
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    while let Some(i) = ls[at..].find(&lp) {
        out.push_str(&s[at..at + i]);
        out.push_str(with);
        at += i + lp.len();
    }
    out.push_str(&s[at..]);
    out
}

/// Questions from the first passage of each document whose title is short (≤ `max_title_words`).
pub fn title_questions(passages: impl IntoIterator<Item = Passage>, max_title_words: usize) -> Vec<TitleQuestion> {
    let mut out = Vec::new();
    for p in passages {
        let first = p.id.ends_with("_0") || p.doc_id.is_empty();
        let tw = p.title.split_whitespace().count();
        if !first || tw == 0 || tw > max_title_words || p.title.contains('"') {
            continue;
        }
        if let Some(d) = describe(&p.title, &p.text, 30) {
            out.push(TitleQuestion {
                id: p.id.clone(),
                question: format!("Which Wikipedia article is described as: \"{d}\"?"),
                title: p.title.clone(),
                description: d,
            });
        }
    }
    out
}

/// The cold-start query for a description: its own words without the blank. On the sample corpus
/// this puts the described article first for ~81% of questions (its first 6 content words: ~68%),
/// and copying a span of the question is what a small model learns fastest.
pub fn description_query(description: &str) -> String {
    description.replace("___", " ").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The JSONL line of a question (R1-Searcher's format).
pub fn question_line(q: &TitleQuestion) -> serde_json::Value {
    json!({ "idx": q.id, "question": q.question, "answer": q.title })
}

/// Cold-start trajectories for `qs` under `protocol`: a share `search_share` search (the query is
/// [`description_query`], documents come from `retriever`, then the first document's title is named
/// and answered; kept only when that is the gold title), the others answer directly. Lines
/// `{"question", "sol", "spans", "answer", "search", "protocol"}`; `spans` says which bytes are the
/// retrieved documents.
///
/// A search starts with the query itself and the text after the documents names the title it
/// copies. A first version ("I need to find the article this describes." then six keywords, "The
/// first document is the article described.") taught neither the query nor the copy, and RL turned
/// that sentence itself into the query.
pub fn sft_lines<R: Retriever>(
    qs: &[TitleQuestion],
    retriever: &R,
    topk: usize,
    search_share: f64,
    seed: u64,
    protocol: Protocol,
) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for (i, q) in qs.iter().enumerate() {
        let u = unit(seed, i as u64);
        let (sol, spans, search) = if u < search_share {
            let query = description_query(&q.description);
            let hits = retriever
                .retrieve(&[query.as_str()], topk)
                .map_err(|e| TrainError::Options(format!("retrieving {query:?}: {e}")))?;
            let Some(hits) = hits.into_iter().next() else { continue };
            if hits.first().is_none_or(|h| h.title != q.title) {
                continue;
            }
            let docs: Vec<&str> = hits.iter().map(|h| h.contents.as_str()).collect();
            let (mine, retrieved, rest) = match protocol {
                Protocol::R1Searcher => {
                    let (mine, retrieved) = splice(&format!("{BEGIN_QUERY} {query}"), &format_docs(&docs));
                    let rest =
                        format!(" The first document is \"{}\". </think>\n\n<answer> {} </answer>", q.title, q.title);
                    (mine, retrieved, rest)
                }
                Protocol::R1SearcherPlus => {
                    let (mine, retrieved) =
                        plus::splice(&format!("{} {query}", plus::EXTERNAL_OPEN), &format_docs(&docs));
                    let rest =
                        format!(" The first document is \"{}\". </think>\n\n<answer> {} </answer>", q.title, q.title);
                    (mine, retrieved, rest)
                }
                Protocol::SearchR1 => {
                    let mine = format!("<think> I need to find the article. </think>\n<search> {query} </search>");
                    let retrieved = searchr1::information(&searchr1::format_docs(&docs));
                    let rest = format!(
                        "<think> The first document is \"{}\". </think>\n<answer> {} </answer>",
                        q.title, q.title
                    );
                    (mine, retrieved, rest)
                }
            };
            let (a, b) = (mine.len(), mine.len() + retrieved.len());
            let sol = format!("{mine}{retrieved}{rest}");
            let spans = vec![
                Span { source: Source::Policy, start: 0, end: a },
                Span { source: Source::Retrieval, start: a, end: b },
                Span { source: Source::Policy, start: b, end: sol.len() },
            ];
            (sol, spans, true)
        } else {
            let sol = match protocol {
                Protocol::R1Searcher => format!(
                    " The description matches the article {}. </think>\n\n<answer> {} </answer>",
                    q.title, q.title
                ),
                Protocol::SearchR1 => format!(
                    "<think> The description matches the article {}. </think>\n<answer> {} </answer>",
                    q.title, q.title
                ),
                // the fact recalled: the description's sentence with the title in place
                Protocol::R1SearcherPlus => format!(
                    " {} {} {} So the article is {}. </think>\n\n<answer> {} </answer>",
                    plus::INTERNAL_OPEN,
                    q.description.replace("___", &q.title),
                    plus::INTERNAL_CLOSE,
                    q.title,
                    q.title
                ),
            };
            let spans = vec![Span { source: Source::Policy, start: 0, end: sol.len() }];
            (sol, spans, false)
        };
        out.push(json!({
            "question": q.question, "answer": q.title, "sol": sol, "spans": spans, "search": search,
            "protocol": protocol,
        }));
    }
    Ok(out)
}
