//! The R1-Searcher protocol, byte for byte (prompts, tags, query extraction, document splicing).
//! Source: `../shared/design/protocols.md` §1 (R1-Searcher's paper and released code).

/// Tags the policy writes and the loop splices (plain text, not special tokens).
pub const BEGIN_QUERY: &str = "<|begin_of_query|>";
pub const END_QUERY: &str = "<|end_of_query|>";
pub const BEGIN_DOCS: &str = "<|begin_of_documents|>";
pub const END_DOCS: &str = "<|end_of_documents|>";

/// The base-model prompt before the question. The quoted output format's `\n\n` are two newline
/// characters: R1-Searcher's prompts are non-raw Python strings (`prompts_dataset.py`), so python3
/// reads the escapes; `tests/fixtures/r1searcher_prompts.json` holds python3's bytes.
pub const BASE_PROMPT_HEAD: &str = "The User asks a question, and the Assistant solves it.
The Assistant first thinks about the reasoning process in the mind and then provides the User with the final answer.
The output format of reasoning process and final answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., \"<think> reasoning process here </think>\n\n<answer> final answer here </answer>\".
During the thinking process, **the Assistant can perform searching** for uncertain knowledge if necessary with the format of \"<|begin_of_query|> search query (only list keywords, such as **\"keyword_1 keyword_2 ...\"**)<|end_of_query|>\". **A query must involve only a single triple**.
Then, the search system will provide the Assistant with the retrieval information with the format of \"<|begin_of_documents|> ...search results... <|end_of_documents|>\".

";

/// The chat models' system message.
pub const SYSTEM_PROMPT: &str = "You are a helpful assistant.
Given a question, you should answer it by first thinking about the reasoning process in the mind and then providing the final answer.
The output format of reasoning process and final answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., \"<think> reasoning process here </think>\n\n<answer> final answer here </answer>\".
During the thinking process, **you can perform searching for uncertain knowledge** if necessary with the format of \"<|begin_of_query|> search query (only list keywords, such as **\"keyword_1 keyword_2 ...\"**)<|end_of_query|>\". **A query must involve only a single triple**.
Then, the search system will provide you with the retrieval information with the format of \"<|begin_of_documents|> ...search results... <|end_of_documents|>\".";

/// The base-model (training) prompt for `question`: it ends with `Assistant: <think>`.
pub fn base_prompt(question: &str) -> String {
    format!("{BASE_PROMPT_HEAD}User:{question}\nAssistant: <think>")
}

/// Cleans the query of a turn that stopped at `<|end_of_query|>`: the text after the last
/// `<|begin_of_query|>` with `"` removed, trimmed, inner whitespace collapsed; for evaluation also
/// without `'`, tabs and `...`. `None` when the turn has no `<|begin_of_query|>`.
pub fn extract_query(turn: &str, evaluation: bool) -> Option<String> {
    let at = turn.rfind(BEGIN_QUERY)?;
    Some(clean_query(&turn[at + BEGIN_QUERY.len()..], evaluation))
}

/// R1-Searcher's query cleaning: `"` removed, trimmed, inner whitespace collapsed; for evaluation
/// also without `'`, tabs and `...` ([`eval_query_chars`]).
pub fn clean_query(raw: &str, evaluation: bool) -> String {
    let q = if evaluation { eval_query_chars(raw) } else { raw.replace('"', "") };
    q.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The replacements of R1-Searcher's evaluation script, in its order: `"` and `'` removed, tabs
/// made spaces, `...` removed. The script searches when the result is not empty (whitespace counts).
pub fn eval_query_chars(raw: &str) -> String {
    raw.replace(['"', '\''], "").replace('\t', " ").replace("...", "")
}

/// `</answer>`.
pub const END_ANSWER: &str = "</answer>";

/// The stop strings of R1-Searcher's evaluation (`evaluation/eval_search_loacl.py`'s `stop_tokens`):
/// Qwen's two end tokens as text, the end of a query and the end of an answer. Its training stops at
/// `<|end_of_query|>` only.
pub const EVAL_STOPS: [&str; 4] = ["<|im_end|>", "<|endoftext|>", END_QUERY, END_ANSWER];

/// Strips a leading corpus index (`^\d+\s+`) from a retrieved document.
fn strip_index(doc: &str) -> &str {
    let digits = doc.len() - doc.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return doc;
    }
    let rest = &doc[digits..];
    let trimmed = rest.trim_start();
    if trimmed.len() == rest.len() { doc } else { trimmed }
}

/// The documents block's body: `(1)doc\n(2)doc\n…`, or `None` when nothing came back.
pub fn format_docs<S: AsRef<str>>(docs: &[S]) -> String {
    if docs.is_empty() {
        return "None".into();
    }
    let mut s = String::new();
    for (j, d) in docs.iter().enumerate() {
        s.push_str(&format!("({}){}\n", j + 1, strip_index(d.as_ref())));
    }
    s
}

/// What the loop appends after a turn that asked a query: the policy's part
/// (`turn.strip() + "<|end_of_query|>\n\n"`) and the retrieved part
/// (`"<|begin_of_documents|>\n" + docs + "<|end_of_documents|>\n\n"`).
pub fn splice(turn: &str, docs_body: &str) -> (String, String) {
    (format!("{}{END_QUERY}\n\n", turn.trim()), format!("{BEGIN_DOCS}\n{docs_body}{END_DOCS}\n\n"))
}

/// The spans of `sol` when only its text is known: document blocks (from `<|begin_of_documents|>\n`
/// through `<|end_of_documents|>\n\n`, or to the end when unterminated) are retrieval, the rest
/// policy.
pub fn spans_of_text(sol: &str) -> Vec<crate::Span> {
    let open = format!("{BEGIN_DOCS}\n");
    let close = format!("{END_DOCS}\n\n");
    let mut spans = Vec::new();
    let mut at = 0;
    let mut push = |source, start, end| {
        if end > start {
            spans.push(crate::Span { source, start, end });
        }
    };
    while let Some(i) = sol[at..].find(&open) {
        let start = at + i;
        let end = sol[start..].find(&close).map_or(sol.len(), |j| start + j + close.len());
        push(crate::Source::Policy, at, start);
        push(crate::Source::Retrieval, start, end);
        at = end;
    }
    push(crate::Source::Policy, at, sol.len());
    spans
}
