//! The Search-R1 protocol (PeterGriffinJin/Search-R1), byte for byte: the prompt of
//! `scripts/data_process/nq_search.py`, the actions and observations of
//! `search_r1/llm_agent/generation.py` (see [`crate::agent`] for the loop), and the rule-based rewards
//! of `verl/utils/reward_score/qa_em.py` and `qa_em_format.py`, computed on the whole sequence: the
//! prompt and the rollout.
//!
//! Rewards:
//! - The answer is the content (stripped) of the LAST `<answer>…</answer>` block of the sequence, and
//!   there is none when the sequence holds fewer than two such blocks (the prompt's example
//!   `<answer> Beijing </answer>` is one).
//! - Answers compare after `normalize_answer`: lower-case, ASCII punctuation deleted, the words a / an
//!   / the replaced by a space, whitespace collapsed. EM: equal to a gold answer; sub-EM: a gold answer
//!   is a substring.
//! - A sequence is valid when, after the first `<|im_start|>assistant` and the whitespace after it,
//!   the tags think / search / information / answer are balanced and follow
//!   `think → (search → information → think)* → answer` with only whitespace between tags.
//! - Retrieval is correct when a normalised gold answer is a substring of a normalised
//!   `<information>` block.
//!
//! Values equal those of that Python code on `../shared/data/searchr1/reward_cases.jsonl` (the tests).
//! One known gap: Python's `\w` (for the article rule: `str.isalnum()` or `_`) and Rust's
//! `char::is_alphanumeric` differ on characters with the Other_Alphabetic property (combining vowel
//! signs of Indic scripts, circled letters such as `ⓐ`), so an article glued to one of them can be
//! kept here and dropped there.

/// The instruction before the question (`make_prefix`, template `base`).
pub const INSTRUCTION: &str = "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you get new information. After reasoning, if you find you lack some knowledge, you can call a search engine by <search> query </search> and it will return the top searched results between <information> and </information>. You can search as many times as your want. If you find no further external knowledge needed, you can directly provide the answer inside <answer> and </answer>, without detailed illustrations. For example, <answer> Beijing </answer>. Question: ";

/// The observation after a turn that neither searched nor answered.
pub const INVALID_ACTION: &str = "\nMy previous action is invalid. If I want to search, I should put the query between <search> and </search>. If I want to give the final answer, I should put the answer between <answer> and </answer>. Let me try again.\n";

/// Generation stops at the first of these (the turn keeps it).
pub const STOPS: [&str; 2] = ["</search>", "</answer>"];

/// The user message for `question`: the instruction, the question stripped with `?` appended when it
/// does not end with one, and a newline.
pub fn user_message(question: &str) -> String {
    let q = question.trim();
    let mark = if q.ends_with('?') { "" } else { "?" };
    format!("{INSTRUCTION}{q}{mark}\n")
}

/// What a turn did: the first `<(search|answer)>(.*?)</\1>` of it (content stripped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Search(String),
    Answer(String),
    Invalid,
}

/// The action of a turn's text (`postprocess_predictions`).
pub fn action(turn: &str) -> Action {
    let mut best: Option<(usize, Action)> = None;
    for (tag, make) in [("search", Action::Search as fn(String) -> Action), ("answer", Action::Answer)] {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        // the first opening tag with a closing one after it
        let mut from = 0;
        while let Some(i) = turn[from..].find(&open) {
            let start = from + i;
            let body = start + open.len();
            if let Some(e) = turn[body..].find(&close) {
                if best.as_ref().is_none_or(|(b, _)| start < *b) {
                    best = Some((start, make(py_strip(&turn[body..body + e]).to_owned())));
                }
                break;
            }
            from = body;
        }
    }
    best.map_or(Action::Invalid, |(_, a)| a)
}

/// The documents as `_passages2string` writes them: `Doc {i}(Title: {first line}) {the other
/// lines}\n` per hit, 1-based.
pub fn format_docs<S: AsRef<str>>(contents: &[S]) -> String {
    let mut out = String::new();
    for (i, c) in contents.iter().enumerate() {
        let c = c.as_ref();
        let (title, text) = c.split_once('\n').unwrap_or((c, ""));
        out.push_str(&format!("Doc {}(Title: {title}) {text}\n", i + 1));
    }
    out
}

/// The observation after a search: `\n\n<information>{docs, stripped}</information>\n\n`.
pub fn information(docs: &str) -> String {
    format!("\n\n<information>{}</information>\n\n", py_strip(docs))
}

/// Who wrote which bytes of a Search-R1 rollout without recorded spans: the `<information>` blocks
/// with their surrounding blank lines ([`information`]) and the invalid-action text are the loop's,
/// the rest the policy's. Consecutive spans covering `sol`.
pub fn spans_of_text(sol: &str) -> Vec<crate::Span> {
    use crate::{Source, Span};
    let mut spans: Vec<Span> = Vec::new();
    let mut push = |source: Source, start: usize, end: usize| {
        if start == end {
            return;
        }
        match spans.last_mut() {
            Some(last) if last.source == source => last.end = end,
            _ => spans.push(Span { source, start, end }),
        }
    };
    let mut pos = 0;
    loop {
        let info = sol[pos..].find("\n\n<information>").and_then(|i| {
            let start = pos + i;
            let close = sol[start..].find("</information>\n\n")?;
            Some((start, start + close + "</information>\n\n".len()))
        });
        let invalid = sol[pos..].find(INVALID_ACTION).map(|i| (pos + i, pos + i + INVALID_ACTION.len()));
        let next = match (info, invalid) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        let Some((start, end)) = next else { break };
        push(Source::Policy, pos, start);
        push(Source::Retrieval, start, end);
        pos = end;
    }
    push(Source::Policy, pos, sol.len());
    spans
}

/// Weights of the format-aware EM (`qa_em_format.compute_score_em`): `structure` for a valid
/// sequence, `final_format` for an invalid one that answered wrongly, `retrieval` added when a valid
/// sequence retrieved a gold answer.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FormatWeights {
    pub structure: f64,
    pub final_format: f64,
    pub retrieval: f64,
}

impl FormatWeights {
    /// The defaults of `compute_score_em` in `qa_em_format.py`: 0.2 / 0.1 / 0.1.
    pub const DEFAULT: FormatWeights = FormatWeights { structure: 0.2, final_format: 0.1, retrieval: 0.1 };
    /// What Search-R1 v0.3's training scripts pass: 0.2 / 0.1 / 0.
    pub const V03: FormatWeights = FormatWeights { structure: 0.2, final_format: 0.1, retrieval: 0.0 };
}

/// Python's `str.isspace` (what `strip()` and `split()` use): Unicode White_Space plus the four
/// information separators U+001C–U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `\w` on `str`: letters, digits and `_`.
fn is_py_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `normalize_answer` of Search-R1 (SQuAD's): lower-case, ASCII punctuation deleted, every word
/// `a` / `an` / `the` (a maximal run of word characters) replaced by a space, whitespace collapsed
/// to single spaces.
pub fn normalize_answer(s: &str) -> String {
    let no_punct: String = s.to_lowercase().chars().filter(|c| !c.is_ascii_punctuation()).collect();
    // \b(a|an|the)\b: a maximal run of word characters that is one of the three
    let mut spaced = String::with_capacity(no_punct.len());
    let mut run_start: Option<usize> = None;
    let flush = |out: &mut String, run: &str| {
        if matches!(run, "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(run);
        }
    };
    for (i, c) in no_punct.char_indices() {
        if is_py_word(c) {
            run_start.get_or_insert(i);
            continue;
        }
        if let Some(s0) = run_start.take() {
            flush(&mut spaced, &no_punct[s0..i]);
        }
        spaced.push(c);
    }
    if let Some(s0) = run_start {
        flush(&mut spaced, &no_punct[s0..]);
    }
    spaced.split(is_py_space).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

/// The contents of every `<{tag}>…</{tag}>` block (Python's non-overlapping lazy `finditer` with
/// DOTALL), unstripped.
fn blocks<'a>(text: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(s) = text[pos..].find(&open) {
        let start = pos + s + open.len();
        let Some(e) = text[start..].find(&close) else { break };
        out.push(&text[start..start + e]);
        pos = start + e + close.len();
    }
    out
}

/// The answer of `extract_solution`: the last `<answer>` block's content, stripped, or `None` when
/// the sequence holds fewer than two blocks.
pub fn extract_answer(sequence: &str) -> Option<&str> {
    let b = blocks(sequence, "answer");
    if b.len() <= 1 {
        return None;
    }
    b.last().map(|a| py_strip(a))
}

/// verl's port of `qa_em` (`verl/utils/reward_score/search_r1_like_qa_em.py`, what verl's
/// `default_compute_score` gives Search-R1's datasets), which is handed the response alone: the
/// last `<answer>` block of at least one, stripped; EM scores 1, or 1/4 when the response holds more
/// than 10 `<answer>` or more than 10 `</answer>` tags; otherwise 0.
pub fn score_verl_em(response: &str, golds: &[String]) -> f64 {
    match blocks(response, "answer").last() {
        Some(a) if em(py_strip(a), golds) => {
            let many = response.matches("<answer>").count() > 10 || response.matches("</answer>").count() > 10;
            if many { 0.25 } else { 1.0 }
        }
        _ => 0.0,
    }
}

/// verl's port of `qa_em`'s sub-EM (`compute_score_subem` there): the last `<answer>` block of at
/// least one contains a gold answer (normalised): 1, else 0.
pub fn score_verl_subem(response: &str, golds: &[String]) -> f64 {
    match blocks(response, "answer").last() {
        Some(a) if subem(py_strip(a), golds) => 1.0,
        _ => 0.0,
    }
}

/// `em_check`: the normalised answer equals a normalised gold answer.
pub fn em(answer: &str, golds: &[String]) -> bool {
    let a = normalize_answer(answer);
    golds.iter().any(|g| normalize_answer(g) == a)
}

/// `subem_check`: a normalised gold answer is a substring of the normalised answer.
pub fn subem(answer: &str, golds: &[String]) -> bool {
    let a = normalize_answer(answer);
    golds.iter().any(|g| a.contains(&normalize_answer(g)))
}

const TAGS: [&str; 8] =
    ["<think>", "</think>", "<search>", "</search>", "<information>", "</information>", "<answer>", "</answer>"];

/// `is_valid_sequence` of `qa_em_format.py`; `Err` holds its reason.
pub fn validate_sequence(text: &str) -> Result<(), String> {
    let Some(at) = text.find("<|im_start|>assistant") else {
        return Err("Missing assistant marker".into());
    };
    let content = text[at + "<|im_start|>assistant".len()..].trim_start_matches(is_py_space);
    for tag in ["think", "search", "information", "answer"] {
        let (o, c) = (content.matches(&format!("<{tag}>")).count(), content.matches(&format!("</{tag}>")).count());
        if o != c {
            return Err(format!("Mismatch in {tag} tags: {o} opening vs {c} closing tags"));
        }
    }
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum S {
        Start,
        InThink,
        AfterThink,
        InSearch,
        AfterSearch,
        InInformation,
        Information,
        InAnswer,
        End,
    }
    let mut state = S::Start;
    let mut rest = content;
    loop {
        // the next tag and the text before it: one pass over the `<`s (linear in the text)
        let mut next = None;
        let mut from = 0;
        while let Some(i) = rest[from..].find('<') {
            let at = from + i;
            if let Some(t) = TAGS.iter().find(|t| rest[at..].starts_with(**t)) {
                next = Some((at, *t));
                break;
            }
            from = at + 1;
        }
        let (text_part, tag) = match next {
            Some((i, t)) => (&rest[..i], Some(t)),
            None => (rest, None),
        };
        if !py_strip(text_part).is_empty() {
            match state {
                S::InThink | S::InSearch | S::InInformation | S::InAnswer => {}
                S::Start | S::AfterThink | S::AfterSearch | S::Information => {
                    return Err(format!(
                        "Unexpected content '{}' between tags (state: {state:?})",
                        py_strip(text_part)
                    ));
                }
                S::End => return Err(format!("Unexpected content in state {state:?}")),
            }
        }
        let Some(tag) = tag else { break };
        state = match (tag, state) {
            ("<think>", S::Start | S::Information) => S::InThink,
            ("</think>", S::InThink) => S::AfterThink,
            ("<search>", S::AfterThink) => S::InSearch,
            ("</search>", S::InSearch) => S::AfterSearch,
            ("<information>", S::AfterSearch) => S::InInformation,
            ("</information>", S::InInformation) => S::Information,
            ("<answer>", S::AfterThink) => S::InAnswer,
            ("</answer>", S::InAnswer) => S::End,
            _ => return Err(format!("Unexpected tag {tag} in state {state:?}")),
        };
        rest = &rest[text_part.len() + tag.len()..];
    }
    if state != S::End {
        return Err(format!("Incomplete sequence, ended in state {state:?}"));
    }
    Ok(())
}

/// `is_valid_sequence(text)[0]`.
pub fn is_valid_sequence(text: &str) -> bool {
    validate_sequence(text).is_ok()
}

/// `is_retrieval_correct`: a normalised gold answer is a substring of a normalised, stripped
/// `<information>` block.
pub fn retrieval_correct(text: &str, golds: &[String]) -> bool {
    blocks(text, "information").iter().any(|b| {
        let seq = normalize_answer(py_strip(b));
        golds.iter().any(|g| seq.contains(&normalize_answer(g)))
    })
}

/// `qa_em.compute_score_em` (format_score 0, score 1): 1 for an exact match, else 0.
pub fn score_em(sequence: &str, golds: &[String]) -> f64 {
    match extract_answer(sequence) {
        Some(a) if em(a, golds) => 1.0,
        _ => 0.0,
    }
}

/// `qa_em.compute_score_subem` (format_score 0, score 1).
pub fn score_subem(sequence: &str, golds: &[String]) -> f64 {
    match extract_answer(sequence) {
        Some(a) if subem(a, golds) => 1.0,
        _ => 0.0,
    }
}

/// `qa_em_format.compute_score_em` with weights `w` (score 1, format_score 0):
///
/// | answer | valid | invalid |
/// |---|---|---|
/// | none | s (+ r when retrieval is correct) | 0 |
/// | EM | 1 | 1 − s |
/// | wrong | s (+ r) | f |
pub fn score_format_em(sequence: &str, golds: &[String], w: FormatWeights) -> f64 {
    let valid = is_valid_sequence(sequence);
    let with_retrieval = || if retrieval_correct(sequence, golds) { w.structure + w.retrieval } else { w.structure };
    match extract_answer(sequence) {
        None if valid => with_retrieval(),
        None => 0.0,
        Some(a) if em(a, golds) => {
            if valid {
                1.0
            } else {
                1.0 - w.structure
            }
        }
        Some(_) if valid => with_retrieval(),
        Some(_) => w.final_format,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_deletes_punctuation_before_articles() {
        assert_eq!(normalize_answer("The  U.S.A."), "usa");
        assert_eq!(normalize_answer("a-n apple"), "apple");
        assert_eq!(normalize_answer("bathe an Anthem"), "bathe anthem");
        assert_eq!(normalize_answer("Théâtre\u{1f}de la Ville"), "théâtre de la ville");
        assert_eq!(normalize_answer("_the_"), "");
        assert_eq!(normalize_answer("αthe the²"), "αthe the²");
    }

    #[test]
    fn actions_docs_and_prompts_are_search_r1s() {
        assert_eq!(
            action("<think> a </think>\n<search> capital of France </search>"),
            Action::Search("capital of France".into())
        );
        assert_eq!(action("<answer> Paris </answer><search>x</search>"), Action::Answer("Paris".into()));
        assert_eq!(action("<search> open <answer> a </answer>"), Action::Answer("a".into()));
        assert_eq!(action("<search>\n q \n</search>"), Action::Search("q".into()));
        assert_eq!(action("I think it is Paris."), Action::Invalid);
        assert_eq!(
            format_docs(&["\"Paris\"\nParis is the capital.\nMore.", "No newline"]),
            "Doc 1(Title: \"Paris\") Paris is the capital.\nMore.\nDoc 2(Title: No newline) \n"
        );
        assert_eq!(information("Doc 1(Title: t) x\n"), "\n\n<information>Doc 1(Title: t) x</information>\n\n");
        assert!(user_message(" who wrote hamlet ").ends_with("Question: who wrote hamlet?\n"));
        assert!(user_message("Who wrote Hamlet?").ends_with("Question: Who wrote Hamlet?\n"));
    }

    #[test]
    fn spans_of_a_rollout_mark_the_loops_text() {
        let info = information("Doc 1(Title: t) x\n");
        let sol = format!("<think> a </think>{INVALID_ACTION}<search> q </search>{info}<answer> b </answer>");
        let spans = spans_of_text(&sol);
        let parts: Vec<(crate::Source, &str)> = spans.iter().map(|s| (s.source, &sol[s.start..s.end])).collect();
        use crate::Source::{Policy, Retrieval};
        assert_eq!(
            parts,
            vec![
                (Policy, "<think> a </think>"),
                (Retrieval, INVALID_ACTION),
                (Policy, "<search> q </search>"),
                (Retrieval, info.as_str()),
                (Policy, "<answer> b </answer>")
            ]
        );
        assert_eq!(spans_of_text(""), vec![]);
    }

    #[test]
    fn blocks_are_lazy_and_non_overlapping() {
        let t = "<answer>x</answer><answer> y <answer>z</answer></answer>";
        assert_eq!(blocks(t, "answer"), vec!["x", " y <answer>z"]);
        assert_eq!(extract_answer(t), Some("y <answer>z"));
        assert_eq!(extract_answer("<answer>only</answer>"), None);
    }
}
