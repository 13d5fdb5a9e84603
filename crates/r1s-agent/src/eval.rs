//! Evaluation data and results: R1-Searcher (`{"idx","question","answer"}`) and FlashRAG
//! (`{"id","question","golden_answers"}`) questions in; R1-Searcher-shaped result rows out; the
//! summary table of any results file (R1-Searcher's released ones included).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::metrics::{Scores, score};

/// Errors reading questions or results.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("{}: line {line}: {reason}", path.display())]
    Bad { path: std::path::PathBuf, line: usize, reason: String },
    /// A file with no rows (questions, results, rollouts: `what`), where some are needed.
    #[error("{}: no {what}", path.display())]
    Empty { path: std::path::PathBuf, what: &'static str },
}

/// One question with its gold answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub id: String,
    pub question: String,
    pub answers: Vec<String>,
}

/// A string or a list of strings (gold answers come both ways).
fn strings(v: &serde_json::Value) -> Option<Vec<String>> {
    match v {
        serde_json::Value::String(s) => Some(vec![s.clone()]),
        serde_json::Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_owned)).collect(),
        _ => None,
    }
}

/// The gold answers of a question or result line: `golden_answers` (FlashRAG, Search-R1) when the
/// line has it, else `answer` (R1-Searcher); each a string or a list of strings. `None` when the
/// field it reads is malformed (a `golden_answers` of another type does not fall back to `answer`).
pub fn gold_answers(v: &serde_json::Value) -> Option<Vec<String>> {
    match &v["golden_answers"] {
        serde_json::Value::Null => strings(&v["answer"]),
        g => strings(g),
    }
}

/// The rows of a JSONL file with their line numbers (from 1; blank lines skipped). A line that is not
/// JSON is an error naming it.
pub fn read_rows(path: &Path) -> Result<Vec<(usize, serde_json::Value)>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v = serde_json::from_str(line).map_err(|e| DataError::Bad {
            path: path.into(),
            line: n + 1,
            reason: e.to_string(),
        })?;
        rows.push((n + 1, v));
    }
    Ok(rows)
}

/// Reads questions (R1-Searcher or FlashRAG format), at most `limit`.
pub fn read_questions(path: &Path, limit: Option<usize>) -> Result<Vec<Question>, DataError> {
    let mut out = Vec::new();
    for (line, v) in read_rows(path)? {
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let bad = |reason: &str| DataError::Bad { path: path.into(), line, reason: reason.into() };
        let question = v["question"].as_str().ok_or_else(|| bad("no \"question\" string"))?.to_owned();
        let answers = gold_answers(&v).ok_or_else(|| bad("no \"answer\" or \"golden_answers\""))?;
        let id = match (&v["idx"], &v["id"]) {
            (serde_json::Value::Null, serde_json::Value::Null) => (line - 1).to_string(),
            (serde_json::Value::Null, id) | (id, _) => id.as_str().map_or_else(|| id.to_string(), str::to_owned),
        };
        out.push(Question { id, question, answers });
    }
    Ok(out)
}

/// One row of a results file as the summary reads it.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub pred: &'a str,
    pub golds: &'a [String],
    /// The rollout (`gen_text_store`), when the row has it: searches, recalled facts and format.
    pub sol: Option<&'a str>,
    /// The searches the loop ran, when known (r1s eval's "retrievals"); else counted from `sol`.
    pub searches: Option<usize>,
    /// The prompt, for Search-R1's format check (prompt + rollout).
    pub prompt: &'a str,
    pub reward: Option<f64>,
    pub protocol: crate::Protocol,
    /// The LLM judge's verdict: `None` when the row was not judged, `Some(None)` when it was and no
    /// verdict came (a failed request or an unreadable reply).
    pub judge: Option<Option<bool>>,
}

/// The summary of a results file.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Summary {
    pub n: usize,
    /// Percentages.
    pub em: f64,
    pub cover_em: f64,
    pub cover_em_2: f64,
    pub f1: f64,
    /// RC: external searches per question (rows with a rollout; R1-Searcher++'s `<internal>` steps
    /// do not count), the R1-Searcher++ paper's retrieval count.
    pub mean_retrievals: f64,
    /// Recalled facts (`<internal>` steps) per question.
    pub mean_internal: f64,
    /// Percentage of questions answered with no search.
    pub zero_search: f64,
    /// Percentage of solutions whose format is bad under their protocol (rows with a rollout).
    pub format_bad: f64,
    pub mean_reward: Option<f64>,
    /// LLM-as-judge accuracy, percent of the rows with a verdict (when any row was judged).
    pub judge: Option<f64>,
    /// Judged rows without a verdict (failed or unreadable): counted here, never scored.
    pub unjudged: usize,
}

impl Summary {
    /// Accumulates rows.
    pub fn of<'a>(rows: impl IntoIterator<Item = Row<'a>>) -> Summary {
        let (mut s, mut sol_rows, mut bad, mut rewards, mut nrew) = (Scores::default(), 0usize, 0usize, 0.0, 0usize);
        let (mut n, mut retr, mut internal, mut zero) = (0, 0usize, 0usize, 0usize);
        let (mut judged, mut correct, mut unjudged) = (0usize, 0usize, 0usize);
        for row in rows {
            let x = score(row.pred, row.golds);
            s.em += x.em;
            s.cover_em += x.cover_em;
            s.cover_em_2 += x.cover_em_2;
            s.f1 += x.f1;
            if let Some(sol) = row.sol {
                sol_rows += 1;
                let searched = row.searches.unwrap_or_else(|| row.protocol.searches(sol));
                retr += searched;
                zero += usize::from(searched == 0);
                internal += row.protocol.internal_steps(sol);
                bad += usize::from(row.protocol.format_bad(row.prompt, sol));
            }
            if let Some(r) = row.reward {
                rewards += r;
                nrew += 1;
            }
            match row.judge {
                Some(Some(v)) => {
                    judged += 1;
                    correct += usize::from(v);
                }
                Some(None) => unjudged += 1,
                None => {}
            }
            n += 1;
        }
        let pct = |x: f64| 100.0 * x / n.max(1) as f64;
        let per_sol = |x: usize| x as f64 / sol_rows.max(1) as f64;
        Summary {
            n,
            em: pct(s.em),
            cover_em: pct(s.cover_em),
            cover_em_2: pct(s.cover_em_2),
            f1: pct(s.f1),
            mean_retrievals: per_sol(retr),
            mean_internal: per_sol(internal),
            zero_search: 100.0 * per_sol(zero),
            format_bad: 100.0 * per_sol(bad),
            mean_reward: (nrew > 0).then(|| rewards / nrew as f64),
            judge: (judged + unjudged > 0).then(|| 100.0 * correct as f64 / judged.max(1) as f64),
            unjudged,
        }
    }

    /// A two-line table (RC: external searches per question; `internal`: recalled facts per
    /// question; `no-search`: share answered without searching; `judge`: LLM-as-judge accuracy, the
    /// rows left without a verdict named after it).
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:>6} {:>6} {:>9} {:>10} {:>6} {:>6} {:>9} {:>10} {:>11}",
            "n", "EM", "cover-EM", "cover-EM-2", "F1", "RC", "internal", "no-search", "format-bad"
        );
        if self.mean_reward.is_some() {
            s.push_str(&format!(" {:>7}", "reward"));
        }
        if self.judge.is_some() {
            s.push_str(&format!(" {:>6}", "judge"));
        }
        s.push('\n');
        s.push_str(&format!(
            "{:>6} {:>6.1} {:>9.1} {:>10.1} {:>6.1} {:>6.2} {:>9.2} {:>9.1}% {:>10.1}%",
            self.n,
            self.em,
            self.cover_em,
            self.cover_em_2,
            self.f1,
            self.mean_retrievals,
            self.mean_internal,
            self.zero_search,
            self.format_bad
        ));
        if let Some(r) = self.mean_reward {
            s.push_str(&format!(" {r:>7.3}"));
        }
        if let Some(j) = self.judge {
            s.push_str(&format!(" {j:>6.1}"));
            if self.unjudged > 0 {
                s.push_str(&format!(" ({} without a verdict)", self.unjudged));
            }
        }
        s
    }
}

/// Scores a results file: `pred_ans` against `answer` (string or list) or `golden_answers`;
/// `gen_text_store` for searches (r1s eval's `retrievals` when the row has it: the searches the loop
/// ran), recalled facts and format under the row's `protocol` (r1s eval writes it; R1-Searcher's
/// released files have none: R1-Searcher's); `reward` when present; the judge's verdicts when the rows
/// carry them ([`row_verdict`]).
pub fn score_file(path: &Path) -> Result<Summary, DataError> {
    let rows = read_rows(path)?;
    if rows.is_empty() {
        return Err(DataError::Empty { path: path.into(), what: "result rows" });
    }
    score_rows(path, &rows)
}

/// [`score_file`] on rows already read (`path` names them in errors).
pub fn score_rows(path: &Path, rows: &[(usize, serde_json::Value)]) -> Result<Summary, DataError> {
    Ok(Summary::of(parse_rows(path, rows)?.iter().map(ResultRow::row)))
}

/// A results row as the summary reads it, parsed from its JSON (its strings borrowed): see
/// [`parse_rows`] and [`ResultRow::row`].
#[derive(Debug, Clone)]
pub struct ResultRow<'a> {
    pred: &'a str,
    golds: Vec<String>,
    sol: Option<&'a str>,
    reward: Option<f64>,
    protocol: crate::Protocol,
    prompt: &'a str,
    searches: Option<usize>,
    judge: Option<Option<bool>>,
}

impl ResultRow<'_> {
    /// The [`Row`] that [`Summary::of`] and [`PassAtK::of`] read.
    pub fn row(&self) -> Row<'_> {
        Row {
            pred: self.pred,
            golds: &self.golds,
            sol: self.sol,
            searches: self.searches,
            prompt: self.prompt,
            reward: self.reward,
            protocol: self.protocol,
            judge: self.judge,
        }
    }
}

/// Parses results rows (line number, JSON): `pred_ans` against `answer` (string or list) or
/// `golden_answers`; `gen_text_store`, `retrievals`, `prompt`, `reward` and `protocol` when present
/// (R1-Searcher's when absent); the judge's verdict ([`row_verdict`]). A row without a `pred_ans`
/// string or gold answers, or with an unknown protocol, is an error naming `path` and its line.
pub fn parse_rows<'a>(path: &Path, rows: &'a [(usize, serde_json::Value)]) -> Result<Vec<ResultRow<'a>>, DataError> {
    let mut parsed = Vec::with_capacity(rows.len());
    for (line, v) in rows {
        let bad = |reason: &str| DataError::Bad { path: path.into(), line: *line, reason: reason.into() };
        let pred = v["pred_ans"].as_str().ok_or_else(|| bad("no \"pred_ans\" string"))?;
        let golds = strings(&v["answer"])
            .or_else(|| strings(&v["golden_answers"]))
            .ok_or_else(|| bad("no \"answer\" or \"golden_answers\""))?;
        let protocol = match &v["protocol"] {
            serde_json::Value::Null => crate::Protocol::R1Searcher,
            p => serde_json::from_value(p.clone()).map_err(|e| bad(&format!("protocol: {e}")))?,
        };
        parsed.push(ResultRow {
            pred,
            golds,
            sol: v["gen_text_store"].as_str(),
            reward: v["reward"].as_f64(),
            protocol,
            prompt: v["prompt"].as_str().unwrap_or(""),
            searches: v["retrievals"].as_u64().map(|n| n as usize),
            judge: row_verdict(v),
        });
    }
    Ok(parsed)
}

/// A result row's judge verdict: r1s's when the row was judged by r1s (it has a `judge` field: true,
/// false, or null for no verdict), else R1-Searcher's `gpt4o_output` reply; `None` when the row was not
/// judged. A row r1s judged is read by its own verdict only, whatever `gpt4o_output` it carries.
pub fn row_verdict(v: &serde_json::Value) -> Option<Option<bool>> {
    if let Some(judge) = v.get("judge") {
        return Some(judge.as_bool());
    }
    match &v["gpt4o_output"] {
        serde_json::Value::Null => None,
        reply => Some(reply.as_str().and_then(crate::judge::parse_verdict)),
    }
}

/// Pass@k: the share of questions (percent) that at least one of their k samples gets right.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct PassAtK {
    /// Samples per question.
    pub k: usize,
    /// Questions.
    pub n: usize,
    pub em: f64,
    pub cover_em: f64,
    pub cover_em_2: f64,
    /// The best sample's F1, averaged over questions.
    pub f1: f64,
    /// Questions with a sample the judge found correct (when the rows were judged).
    pub judge: Option<f64>,
}

impl PassAtK {
    /// Pass@k of questions given as the rows of their samples (`samples[i]` holds question `i`'s; each
    /// a [`Row`] as [`Summary::of`] reads it). The Avg@k figures are [`Summary::of`] over all rows.
    pub fn of(samples: &[Vec<Row<'_>>]) -> PassAtK {
        let mut p =
            PassAtK { k: samples.iter().map(Vec::len).max().unwrap_or(0), n: samples.len(), ..Default::default() };
        let (mut judged, mut judge_hits) = (0usize, 0usize);
        for rows in samples {
            let best = rows.iter().map(|r| score(r.pred, r.golds)).fold(Scores::default(), |a, x| Scores {
                em: a.em.max(x.em),
                cover_em: a.cover_em.max(x.cover_em),
                cover_em_2: a.cover_em_2.max(x.cover_em_2),
                f1: a.f1.max(x.f1),
            });
            p.em += best.em;
            p.cover_em += best.cover_em;
            p.cover_em_2 += best.cover_em_2;
            p.f1 += best.f1;
            if rows.iter().any(|r| r.judge.is_some()) {
                judged += 1;
                judge_hits += usize::from(rows.iter().any(|r| r.judge == Some(Some(true))));
            }
        }
        let pct = |x: f64| 100.0 * x / p.n.max(1) as f64;
        (p.em, p.cover_em, p.cover_em_2, p.f1) = (pct(p.em), pct(p.cover_em), pct(p.cover_em_2), pct(p.f1));
        p.judge = (judged > 0).then(|| 100.0 * judge_hits as f64 / judged as f64);
        p
    }

    /// One line: `pass@k` and the figures under the table's headings.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{:>6} {:>6.1} {:>9.1} {:>10.1} {:>6.1}",
            format!("pass@{}", self.k),
            self.em,
            self.cover_em,
            self.cover_em_2,
            self.f1
        );
        if let Some(j) = self.judge {
            s.push_str(&format!("  judge {j:.1}"));
        }
        s
    }
}
