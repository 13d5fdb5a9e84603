//! The R1-Searcher++ protocol (arXiv 2505.17005): the policy recalls a fact it knows inside
//! `<internal> … </internal>` (plain text it wrote, trained on) or searches with
//! `<external> query </external>`, after which the loop splices the documents in as
//! `<document> … </document>` (not the policy's: masked out of every loss, the KL and the
//! normalisation, tags included). Its rewards (`R_format`, `R_answer`, the group reward) and the
//! deterministic rewriter of its memorisation step live here too.
//!
//! What the paper fixes and what r1s chose (`../shared/design/r1-searcher-plus.md`):
//! - The tags `<internal>`, `<external>`, `<document>` and the stop at `</external>` are the paper's.
//! - Prompt, answer wrapper and document formatting are not published. r1s takes the nearest primary
//!   reference, R1-Searcher's chat prompt for instruct models (its system message, the question as the
//!   user turn, then `<think>`; answers in `<think> … </think>\n\n<answer> … </answer>`), with the
//!   query and document tags replaced and one sentence added: known facts may be recalled in
//!   `<internal>`. The `\n\n` of the quoted example are two newline characters (what R1-Searcher's
//!   Python strings evaluate to).
//! - The loop splices as R1-Searcher does: `turn.strip() + "</external>\n\n"` is the policy's,
//!   `"<document>\n" + docs + "</document>\n\n"` the retriever's, with docs `(1)doc\n(2)doc\n…`
//!   ([`crate::protocol::format_docs`]).

use crate::metrics::{cover_em, extract_answer};

/// Recalling a fact: the policy's own text between these.
pub const INTERNAL_OPEN: &str = "<internal>";
pub const INTERNAL_CLOSE: &str = "</internal>";
/// Searching: the query between these; generation stops at the closing tag.
pub const EXTERNAL_OPEN: &str = "<external>";
pub const EXTERNAL_CLOSE: &str = "</external>";
/// The retrieved documents, spliced in by the loop.
pub const DOC_OPEN: &str = "<document>";
pub const DOC_CLOSE: &str = "</document>";

/// The chat models' system message: R1-Searcher's, with `<external>` / `<document>` for its query and
/// document tags and a sentence on `<internal>`.
pub const SYSTEM_PROMPT: &str = "You are a helpful assistant.
Given a question, you should answer it by first thinking about the reasoning process in the mind and then providing the final answer.
The output format of reasoning process and final answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., \"<think> reasoning process here </think>

<answer> final answer here </answer>\".
During the thinking process, **you can recall knowledge you are sure of** with the format of \"<internal> known fact </internal>\", and **you can perform searching for uncertain knowledge** if necessary with the format of \"<external> search query (only list keywords, such as **\"keyword_1 keyword_2 ...\"**) </external>\". **A query must involve only a single triple**.
Then, the search system will provide you with the retrieval information with the format of \"<document> ...search results... </document>\".";

/// The base-model prompt before `User:{question}`: R1-Searcher's base prompt, changed as
/// [`SYSTEM_PROMPT`] is.
pub const BASE_PROMPT_HEAD: &str = "The User asks a question, and the Assistant solves it.
The Assistant first thinks about the reasoning process in the mind and then provides the User with the final answer.
The output format of reasoning process and final answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., \"<think> reasoning process here </think>

<answer> final answer here </answer>\".
During the thinking process, **the Assistant can recall knowledge it is sure of** with the format of \"<internal> known fact </internal>\", and **the Assistant can perform searching** for uncertain knowledge if necessary with the format of \"<external> search query (only list keywords, such as **\"keyword_1 keyword_2 ...\"**) </external>\". **A query must involve only a single triple**.
Then, the search system will provide the Assistant with the retrieval information with the format of \"<document> ...search results... </document>\".

";

/// The base-model prompt for `question`: it ends with `Assistant: <think>` (as R1-Searcher's, so
/// the reward server finds the question the same way).
pub fn base_prompt(question: &str) -> String {
    format!("{BASE_PROMPT_HEAD}User:{question}\nAssistant: <think>")
}

/// The query of a turn that stopped at `</external>`: the text after the last `<external>`, cleaned
/// as R1-Searcher cleans its queries ([`crate::protocol::extract_query`]). `None` when the turn has no
/// `<external>`.
pub fn extract_query(turn: &str, evaluation: bool) -> Option<String> {
    let at = turn.rfind(EXTERNAL_OPEN)?;
    Some(crate::protocol::clean_query(&turn[at + EXTERNAL_OPEN.len()..], evaluation))
}

/// What the loop appends after a turn that searched: the policy's part
/// (`turn.strip() + "</external>\n\n"`) and the retrieved part (`"<document>\n" + docs +
/// "</document>\n\n"`).
pub fn splice(turn: &str, docs_body: &str) -> (String, String) {
    (format!("{}{EXTERNAL_CLOSE}\n\n", turn.trim()), format!("{DOC_OPEN}\n{docs_body}{DOC_CLOSE}\n\n"))
}

/// The policy's own text of a rollout: everything but the spliced document blocks.
fn own_text(sol: &str) -> String {
    spans_of_text(sol).iter().filter(|s| s.source == crate::Source::Policy).map(|s| &sol[s.start..s.end]).collect()
}

/// External searches of a rollout: the `<external>` tags the policy wrote (not those a retrieved
/// document may hold).
pub fn searches(sol: &str) -> usize {
    own_text(sol).matches(EXTERNAL_OPEN).count()
}

/// Recalled facts of a rollout: the `<internal>` tags the policy wrote.
pub fn internal_steps(sol: &str) -> usize {
    own_text(sol).matches(INTERNAL_OPEN).count()
}

/// One part of a well-formed rollout's reasoning (byte ranges of `sol`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Plain reasoning text.
    Text(std::ops::Range<usize>),
    /// `<internal>…</internal>`: the whole block and its content.
    Internal { block: std::ops::Range<usize>, content: std::ops::Range<usize> },
    /// `<external>q</external>\n\n<document>\n…</document>\n\n`: the whole block, the query's
    /// content and the documents' body.
    External { block: std::ops::Range<usize>, query: std::ops::Range<usize>, docs: std::ops::Range<usize> },
}

const TAGS: [&str; 6] = [INTERNAL_OPEN, INTERNAL_CLOSE, EXTERNAL_OPEN, EXTERNAL_CLOSE, DOC_OPEN, DOC_CLOSE];

/// The first protocol tag in `s[from..]`: (position, tag). Reads only up to that tag, so a walk
/// over all tags of a text is linear in its length (the reward server scores untrusted texts).
fn next_tag(s: &str, from: usize) -> Option<(usize, &'static str)> {
    let mut i = from;
    while let Some(off) = s[i..].find('<') {
        let at = i + off;
        if let Some(t) = TAGS.iter().find(|t| s[at..].starts_with(**t)) {
            return Some((at, t));
        }
        // `<` is one byte: the next character starts right after it
        i = at + 1;
    }
    None
}

/// The reasoning (everything before `</think>`) of `sol` parsed into steps, or why it is malformed:
/// an `<internal>` or `<external>` block unclosed or holding another tag, an empty query, a search
/// not followed by exactly `\n\n<document>\n`, unterminated documents, or a tag outside any block
/// (a closing tag alone, or documents the policy wrote itself).
pub fn parse_steps(sol: &str) -> Result<Vec<Step>, &'static str> {
    let end = sol.find("</think>").unwrap_or(sol.len());
    let think = &sol[..end];
    let mut steps = Vec::new();
    let mut pos = 0;
    while let Some((at, tag)) = next_tag(think, pos) {
        if at > pos {
            steps.push(Step::Text(pos..at));
        }
        let close = match tag {
            INTERNAL_OPEN => INTERNAL_CLOSE,
            EXTERNAL_OPEN => EXTERNAL_CLOSE,
            DOC_OPEN | DOC_CLOSE => return Err("documents not spliced by the search system (model-written)"),
            _ => return Err("a closing tag without its opening tag"),
        };
        let body = at + tag.len();
        let Some((cat, ctag)) = next_tag(think, body) else { return Err("a block is not closed") };
        if ctag != close {
            return Err(if tag == INTERNAL_OPEN {
                "an <internal> block holds another tag or is not closed"
            } else {
                "an <external> query holds another tag or is not closed"
            });
        }
        let after = cat + close.len();
        if tag == INTERNAL_OPEN {
            steps.push(Step::Internal { block: at..after, content: body..cat });
            pos = after;
            continue;
        }
        if think[body..cat].trim().is_empty() {
            return Err("an empty <external> query");
        }
        let open = format!("\n\n{DOC_OPEN}\n");
        if !think[after..].starts_with(&open) {
            return Err("a search is not followed by the search system's documents");
        }
        let docs = after + open.len();
        let close_docs = format!("{DOC_CLOSE}\n\n");
        let Some(d) = think[docs..].find(&close_docs) else { return Err("documents are not closed") };
        let docs_end = docs + d;
        let block_end = docs_end + close_docs.len();
        steps.push(Step::External { block: at..block_end, query: body..cat, docs: docs..docs_end });
        pos = block_end;
    }
    if pos < think.len() {
        steps.push(Step::Text(pos..think.len()));
    }
    Ok(steps)
}

/// Why a rollout breaks the protocol's format (`R_format` = −2), or `None`: `Assistant` /
/// `assistant` written (a chat turn leaking), `<think>` written or `</think>` not there exactly once,
/// `<answer>` / `</answer>` not there exactly once each and after `</think>` (these counts read the
/// policy's text, not the spliced documents, unlike R1-Searcher's), a protocol tag after
/// `</think>` (in the answer), or reasoning that [`parse_steps`] refuses.
pub fn format_problem(sol: &str) -> Option<&'static str> {
    // the counts read the policy's own text: a retrieved document may say "assistant"
    let own = own_text(sol);
    if own.contains("Assistant") || own.contains("assistant") {
        return Some("\"Assistant\" occurs");
    }
    if own.matches("<think>").count() != 0 || own.matches("</think>").count() != 1 {
        return Some("<think> occurs or </think> is not there exactly once");
    }
    if own.matches("<answer>").count() != 1 || own.matches("</answer>").count() != 1 {
        return Some("<answer> / </answer> not there exactly once each");
    }
    let think_end = sol.find("</think>").unwrap_or(0);
    let (Some(a), Some(b)) = (sol.find("<answer>"), sol.find("</answer>")) else {
        return Some("no answer");
    };
    if a < think_end || b < a {
        return Some("the answer is not after </think>");
    }
    if next_tag(sol, think_end).is_some() {
        return Some("a protocol tag after </think>");
    }
    parse_steps(sol).err()
}

/// `R_answer`'s two conditions: the rollout has an answer block, its answer (R1-Searcher's
/// extraction) covers a gold answer (cover-EM, R1-Searcher's normalisation) and has at most 10
/// whitespace-separated words (so that a list of candidates cannot game cover-EM).
pub fn answer_correct(sol: &str, golds: &[String]) -> bool {
    if !(sol.contains("<answer>") && sol.contains("</answer>")) {
        return false;
    }
    let pred = extract_answer(sol);
    pred.split_whitespace().count() <= 10 && golds.iter().any(|g| cover_em(&pred, g))
}

/// The per-rollout part of R1-Searcher++'s reward: `R_format` (0 well-formed, −2 not) + `R_answer`
/// (1 when [`answer_correct`], else 0). The group reward is added by [`GroupReward::bonuses`].
pub fn reward(sol: &str, golds: &[String]) -> f64 {
    let format = if format_problem(sol).is_some() { -2.0 } else { 0.0 };
    format + if answer_correct(sol, golds) { 1.0 } else { 0.0 }
}

/// Which of the correct rollouts at the fewest searches earn the group reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ties {
    /// Every one of them (the default: the paper speaks of "the correct rollout(s)").
    #[default]
    All,
    /// Only the first in the group's order.
    First,
}

/// R1-Searcher++'s group reward (the internal-knowledge incentive): among a question's rollouts that
/// are correct (well-formed and `R_answer` = 1), with `t_i` their external searches and `σ` the
/// standard deviation of those counts, the correct rollout(s) with the fewest searches earn
/// `min(2σ², η)`; all others 0. With fewer than two correct rollouts, or `σ = 0` (all searched
/// equally), nobody does. Sources: the paper's figure for the inputs, two secondary write-ups for
/// η = 2, one for `2σ²`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupReward {
    /// The cap η (2).
    pub eta: f64,
    /// Delta degrees of freedom of σ²: Σ(t − mean)² / (n − ddof); 0 (population variance, the
    /// default) or 1 (sample variance).
    pub ddof: u32,
    pub ties: Ties,
}

impl Default for GroupReward {
    fn default() -> GroupReward {
        GroupReward { eta: 2.0, ddof: 0, ties: Ties::All }
    }
}

impl GroupReward {
    /// The bonus of each rollout of one group, from whether it is correct and its external
    /// searches (equal lengths).
    pub fn bonuses(&self, correct: &[bool], searches: &[usize]) -> Vec<f64> {
        let mut out = vec![0.0; correct.len()];
        let counts: Vec<f64> = correct.iter().zip(searches).filter(|(c, _)| **c).map(|(_, &t)| t as f64).collect();
        let n = counts.len();
        if n < 2 || n <= self.ddof as usize {
            return out;
        }
        let mean = counts.iter().sum::<f64>() / n as f64;
        let var = counts.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / (n - self.ddof as usize) as f64;
        let bonus = (2.0 * var).min(self.eta);
        if bonus <= 0.0 {
            return out;
        }
        let fewest = correct.iter().zip(searches).filter(|(c, _)| **c).map(|(_, &t)| t).min().unwrap_or(0);
        for (i, (&c, &t)) in correct.iter().zip(searches).enumerate() {
            if c && t == fewest {
                out[i] = bonus;
                if self.ties == Ties::First {
                    break;
                }
            }
        }
        out
    }

    /// Checks η ≥ 0 and finite, ddof 0 or 1.
    pub fn check(&self) -> Result<(), String> {
        if !self.eta.is_finite() || self.eta < 0.0 || self.ddof > 1 {
            return Err(format!(
                "group reward: eta must be finite and ≥ 0, ddof 0 or 1 (eta {}, ddof {})",
                self.eta, self.ddof
            ));
        }
        Ok(())
    }
}

/// The rewards of one question's rollouts scored together: [`reward`] + the group bonus.
pub fn group_rewards(sols: &[&str], golds: &[String], group: &GroupReward) -> Vec<f64> {
    let correct: Vec<bool> = sols.iter().map(|s| format_problem(s).is_none() && answer_correct(s, golds)).collect();
    let searches: Vec<usize> = sols.iter().map(|s| searches(s)).collect();
    let bonus = group.bonuses(&correct, &searches);
    sols.iter().zip(bonus).map(|(s, b)| reward(s, golds) + b).collect()
}

/// Who wrote which bytes of a rollout known only as text: each `<document>\n…</document>\n\n` block
/// that follows `</external>\n\n` is the loop's (to the end when unterminated), the rest the policy's.
pub fn spans_of_text(sol: &str) -> Vec<crate::Span> {
    use crate::{Source, Span};
    let open = format!("{EXTERNAL_CLOSE}\n\n{DOC_OPEN}\n");
    let close = format!("{DOC_CLOSE}\n\n");
    let mut spans = Vec::new();
    let mut at = 0;
    while let Some(i) = sol[at..].find(&open) {
        let start = at + i + EXTERNAL_CLOSE.len() + 2;
        let end = sol[start..].find(&close).map_or(sol.len(), |j| start + j + close.len());
        spans.push(Span { source: Source::Policy, start: at, end: start });
        spans.push(Span { source: Source::Retrieval, start, end });
        at = end;
    }
    if at < sol.len() || spans.is_empty() {
        spans.push(Span { source: Source::Policy, start: at, end: sol.len() });
    }
    spans.retain(|s| s.end > s.start);
    spans
}

/// The sentences of a document's text: split after `.`, `!` or `?` followed by whitespace.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let b = text.as_bytes();
    for i in 0..b.len() {
        if matches!(b[i], b'.' | b'!' | b'?') && b.get(i + 1).is_some_and(u8::is_ascii_whitespace) {
            let s = text[start..=i].trim();
            if !s.is_empty() {
                out.push(s);
            }
            start = i + 1;
        }
    }
    let s = text[start..].trim();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

/// The documents of a `(1)doc\n(2)doc\n…` body: (title, text) of each; the title is a document's
/// first line without quotes (empty for a one-line document).
fn documents(body: &str) -> Vec<(String, String)> {
    let mut docs: Vec<String> = Vec::new();
    for line in body.split('\n') {
        let numbered = line.strip_prefix('(').and_then(|r| {
            let d = r.find(')')?;
            (d > 0
                && r[..d].bytes().all(|c| c.is_ascii_digit())
                && r[..d].parse::<usize>().ok() == Some(docs.len() + 1))
            .then(|| &r[d + 1..])
        });
        match (numbered, docs.last_mut()) {
            (Some(rest), _) => docs.push(rest.to_owned()),
            (None, Some(last)) => {
                last.push('\n');
                last.push_str(line);
            }
            (None, None) => {}
        }
    }
    docs.into_iter()
        .map(|d| {
            let d = d.trim_end().to_owned();
            match d.split_once('\n') {
                Some((t, rest)) => (t.trim().trim_matches('"').to_owned(), rest.trim().to_owned()),
                None => (String::new(), d),
            }
        })
        .collect()
}

/// The fact a search brought, as one sentence of its documents (each read with its document's
/// title): among the sentences that cover a gold answer (cover-EM over the title and the sentence),
/// the one sharing most words with the query (the first of equals); when none covers one, the one
/// sharing most words with the query; `None` when no sentence does either (a search that brought
/// nothing the question needs). Written `{title}: {sentence}` (the sentence alone when it already
/// names the title, or the document has none). The flag says whether it covers a gold answer.
pub fn fact_of(query: &str, docs_body: &str, golds: &[String]) -> Option<(String, bool)> {
    use crate::metrics::normalize;
    let q: std::collections::HashSet<String> = normalize(query).split_whitespace().map(str::to_owned).collect();
    let mut best: Option<(bool, usize, String)> = None;
    for (title, text) in documents(docs_body) {
        for s in sentences(&text) {
            let s = s.replace('\n', " ");
            let with_title = if title.is_empty() || s.contains(&title) { s.clone() } else { format!("{title}: {s}") };
            let covers = golds.iter().any(|g| cover_em(&with_title, g));
            let overlap = normalize(&with_title).split_whitespace().filter(|w| q.contains(*w)).count();
            let better = match &best {
                None => true,
                Some((c, o, _)) => (covers && !c) || (covers == *c && overlap > *o),
            };
            if better {
                best = Some((covers, overlap, with_title));
            }
        }
    }
    best.filter(|(covers, overlap, _)| *covers || *overlap > 0).map(|(covers, _, s)| (s, covers))
}

/// The deterministic rewriter of the memorisation step: the rollout `sol` with every search (its
/// `<external>` query and the documents) replaced by `<internal> {fact} </internal>`, the fact
/// being [`fact_of`] its documents. The text the policy wrote around it stays. `None` when `sol` is
/// malformed or searched nothing, when a search brought no sentence that shares a word with its
/// query or covers a gold answer, when no fact of the path covers a gold answer (the recalled facts
/// must carry the answer, not only the unchanged answer line), or when the rewritten path is not
/// well-formed with a correct answer (what the memorisation set keeps).
pub fn rewrite_internal(sol: &str, golds: &[String]) -> Option<String> {
    if format_problem(sol).is_some() {
        return None;
    }
    let steps = parse_steps(sol).ok()?;
    let mut out = String::with_capacity(sol.len());
    let mut last = 0;
    let (mut searched, mut carries) = (false, false);
    for s in &steps {
        if let Step::External { block, query, docs } = s {
            let (fact, covers) = fact_of(&sol[query.clone()], &sol[docs.clone()], golds)?;
            carries |= covers;
            out.push_str(&sol[last..block.start]);
            out.push_str(&format!("{INTERNAL_OPEN} {} {INTERNAL_CLOSE}\n\n", fact.trim()));
            last = block.end;
            searched = true;
        }
    }
    out.push_str(&sol[last..]);
    (searched && carries && format_problem(&out).is_none() && searches(&out) == 0 && answer_correct(&out, golds))
        .then_some(out)
}
