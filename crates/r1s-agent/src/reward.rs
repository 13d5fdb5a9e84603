//! R1-Searcher's rule-based rewards. `sol` is the text the policy produced after the prompt,
//! retrieved documents included.

use crate::metrics::{cover_em, extract_answer, f1};
use crate::protocol::{BEGIN_DOCS, BEGIN_QUERY, END_DOCS, END_QUERY};

/// Which reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reward {
    /// Paper, stage 1: 0.5 for at least one retrieval + 0.5 for a good format.
    Stage1,
    /// Released Llama stage 1: ±1 cover-EM, +0.5 balanced retrievals (≥ 1), +0.5 think/answer tags.
    Stage1Code,
    /// Paper and released Qwen stage 2: F1 (0 without answer tags) − 2 for a bad format.
    Stage2,
    /// Released Llama stage 2: F1 − 1 when tags are unbalanced, think/answer counts wrong or CJK.
    Stage2Llama,
    /// Search-R1 `qa_em`: 1 when the last answer (of at least two in the sequence) matches exactly.
    #[serde(rename = "searchr1-em")]
    SearchR1Em,
    /// Search-R1 `qa_em` sub-EM: a gold answer is contained in the answer.
    #[serde(rename = "searchr1-subem")]
    SearchR1SubEm,
    /// Search-R1 `qa_em_format` with its defaults (structure 0.2, final format 0.1, retrieval 0.1).
    #[serde(rename = "searchr1-format")]
    SearchR1Format,
    /// Search-R1 `qa_em_format` as v0.3's scripts weight it (0.2, 0.1, retrieval 0).
    #[serde(rename = "searchr1-format-v03")]
    SearchR1FormatV03,
    /// verl's port of Search-R1's EM (`search_r1_like_qa_em.compute_score`), on the response alone:
    /// the last answer of at least one; 1/4 with more than 10 answer tags.
    #[serde(rename = "verl-searchr1-em")]
    VerlSearchR1Em,
    /// verl's port of Search-R1's sub-EM (`search_r1_like_qa_em.compute_score_subem`), on the
    /// response alone.
    #[serde(rename = "verl-searchr1-subem")]
    VerlSearchR1SubEm,
    /// R1-Searcher++: `R_format` (0 / −2) + `R_answer` (cover-EM with at most 10 words: 1 / 0) per
    /// rollout, plus the group reward `min(2σ², η)` for the correct rollout(s) of a question that
    /// searched least ([`crate::plus`]). A group reward: score a question's rollouts together with
    /// [`score_group`].
    #[serde(rename = "r1searcher-plus")]
    R1SearcherPlus,
}

impl Reward {
    /// Search-R1's rewards read the whole sequence, prompt included; R1-Searcher's the rollout.
    pub fn reads_prompt(self) -> bool {
        matches!(self, Reward::SearchR1Em | Reward::SearchR1SubEm | Reward::SearchR1Format | Reward::SearchR1FormatV03)
    }

    /// Every reward's name, as parsed.
    pub const NAMES: &'static str = "stage1, stage1-code, stage2, stage2-llama, searchr1-em, searchr1-subem, \
                                     searchr1-format, searchr1-format-v03, verl-searchr1-em, verl-searchr1-subem, \
                                     r1searcher-plus";

    /// Whether a rollout's reward depends on the other rollouts of its question (score them together
    /// with [`score_group`]).
    pub fn is_group(self) -> bool {
        self == Reward::R1SearcherPlus
    }

    /// The protocol whose tags the reward reads.
    pub fn protocol(self) -> crate::Protocol {
        match self {
            _ if self.reads_prompt() => crate::Protocol::SearchR1,
            Reward::VerlSearchR1Em | Reward::VerlSearchR1SubEm => crate::Protocol::SearchR1,
            Reward::R1SearcherPlus => crate::Protocol::R1SearcherPlus,
            _ => crate::Protocol::R1Searcher,
        }
    }
}

impl std::str::FromStr for Reward {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stage1" => Ok(Reward::Stage1),
            "stage1-code" => Ok(Reward::Stage1Code),
            "stage2" => Ok(Reward::Stage2),
            "stage2-llama" => Ok(Reward::Stage2Llama),
            "searchr1-em" => Ok(Reward::SearchR1Em),
            "searchr1-subem" => Ok(Reward::SearchR1SubEm),
            "searchr1-format" => Ok(Reward::SearchR1Format),
            "searchr1-format-v03" => Ok(Reward::SearchR1FormatV03),
            "verl-searchr1-em" => Ok(Reward::VerlSearchR1Em),
            "verl-searchr1-subem" => Ok(Reward::VerlSearchR1SubEm),
            "r1searcher-plus" | "r1-searcher-plus" => Ok(Reward::R1SearcherPlus),
            _ => Err(format!("unknown reward {s:?} ({})", Reward::NAMES)),
        }
    }
}

fn count(s: &str, pat: &str) -> usize {
    s.matches(pat).count()
}

/// The retrieval tags are balanced: the counts of the query and document tags (with and without
/// their newlines, and `<|begin_of_documents|>\n(1)`) are all equal. Returns that count.
pub fn retrieval_tags_balanced(sol: &str) -> Option<usize> {
    let counts = [
        count(sol, &format!("{BEGIN_DOCS}\n")),
        count(sol, &format!("{END_DOCS}\n\n")),
        count(sol, BEGIN_QUERY),
        count(sol, END_QUERY),
        count(sol, BEGIN_DOCS),
        count(sol, END_DOCS),
        count(sol, &format!("{BEGIN_DOCS}\n(1)")),
    ];
    counts.iter().all(|&c| c == counts[0]).then_some(counts[0])
}

/// `<think>` absent, `</think>` exactly once, `<answer>` and `</answer>` exactly once each.
pub fn think_answer_tags_ok(sol: &str) -> bool {
    count(sol, "<think>") == 0
        && count(sol, "</think>") == 1
        && count(sol, "<answer>") == 1
        && count(sol, "</answer>") == 1
}

/// A CJK character (U+4E00–U+9FFF) outside the document blocks (`<|begin_of_documents|>` through the
/// next `<|end_of_documents|>`; an unclosed one is no block).
pub fn cjk_outside_documents(sol: &str) -> bool {
    let mut rest = sol;
    let mut outside = String::new();
    while let Some(start) = rest.find(BEGIN_DOCS) {
        outside.push_str(&rest[..start]);
        match rest[start..].find(END_DOCS) {
            Some(end) => rest = &rest[start + end + END_DOCS.len()..],
            // an unclosed block is not removed (R1-Searcher's servers use a non-greedy regex for
            // whole blocks): the text after its opening tag is checked too
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    outside.push_str(rest);
    outside.chars().any(|c| ('\u{4E00}'..='\u{9FFF}').contains(&c))
}

/// Why a solution's format is bad (the first rule it breaks), or `None` when it is good.
pub fn format_problem(sol: &str) -> Option<&'static str> {
    if retrieval_tags_balanced(sol).is_none() {
        return Some("retrieval tags unbalanced");
    }
    if sol.contains("Assistant") || sol.contains("assistant") {
        return Some("\"Assistant\" occurs");
    }
    if count(sol, "<think>") != 0 || count(sol, "</think>") != 1 {
        return Some("<think> occurs or </think> is not there exactly once");
    }
    if count(sol, "<answer>") != 1 || count(sol, "</answer>") != 1 {
        return Some("<answer> / </answer> not there exactly once each");
    }
    let answer = extract_answer(sol);
    if answer.contains("begin_of_query") || answer.contains("begin_of_documents") {
        return Some("the answer contains a query or documents");
    }
    if answer.split_whitespace().count() > 10 {
        return Some("the answer has more than 10 words");
    }
    if cjk_outside_documents(sol) {
        return Some("CJK characters outside the documents");
    }
    None
}

/// Retrievals made: the number of `<|begin_of_query|>` tags.
pub fn retrievals(sol: &str) -> usize {
    count(sol, BEGIN_QUERY)
}

/// The reward of the rollout `sol` of `prompt` against the gold answers: Search-R1's rewards score
/// `prompt + sol` (as its code scores the decoded sequence), R1-Searcher's `sol` alone.
pub fn reward_of(kind: Reward, prompt: &str, sol: &str, golds: &[String]) -> f64 {
    use crate::searchr1 as s;
    if kind.reads_prompt() {
        let sequence = format!("{prompt}{sol}");
        return match kind {
            Reward::SearchR1Em => s::score_em(&sequence, golds),
            Reward::SearchR1SubEm => s::score_subem(&sequence, golds),
            Reward::SearchR1FormatV03 => s::score_format_em(&sequence, golds, s::FormatWeights::V03),
            _ => s::score_format_em(&sequence, golds, s::FormatWeights::DEFAULT),
        };
    }
    reward(kind, sol, golds)
}

/// The reward of `sol` against the gold answers (for Search-R1's rewards `sol` is the whole
/// sequence; see [`reward_of`]).
pub fn reward(kind: Reward, sol: &str, golds: &[String]) -> f64 {
    let has_answer = count(sol, "<answer>") >= 1 && count(sol, "</answer>") >= 1;
    let best_f1 = || golds.iter().map(|g| f1(&extract_answer(sol), g)).fold(0.0, f64::max);
    match kind {
        Reward::Stage1 => {
            let searched = if retrievals(sol) >= 1 { 0.5 } else { 0.0 };
            let format = if format_problem(sol).is_none() { 0.5 } else { 0.0 };
            searched + format
        }
        Reward::Stage1Code => {
            let correct = has_answer && golds.iter().any(|g| cover_em(&extract_answer(sol), g));
            let mut r = if correct { 1.0 } else { -1.0 };
            if retrieval_tags_balanced(sol).is_some_and(|n| n >= 1) {
                r += 0.5;
            }
            if think_answer_tags_ok(sol) {
                r += 0.5;
            }
            r
        }
        Reward::Stage2 => {
            let f = if has_answer { best_f1() } else { 0.0 };
            f - if format_problem(sol).is_some() { 2.0 } else { 0.0 }
        }
        Reward::Stage2Llama => {
            let f = if has_answer { best_f1() } else { 0.0 };
            let bad =
                retrieval_tags_balanced(sol).is_none() || !think_answer_tags_ok(sol) || cjk_outside_documents(sol);
            f - if bad { 1.0 } else { 0.0 }
        }
        Reward::SearchR1Em | Reward::SearchR1SubEm | Reward::SearchR1Format | Reward::SearchR1FormatV03 => {
            reward_of(kind, "", sol, golds)
        }
        Reward::VerlSearchR1Em => crate::searchr1::score_verl_em(sol, golds),
        Reward::VerlSearchR1SubEm => crate::searchr1::score_verl_subem(sol, golds),
        // the per-rollout part; the group bonus needs the group (score_group)
        Reward::R1SearcherPlus => crate::plus::reward(sol, golds),
    }
}

/// Indices grouped by key, groups in order of their first index; a `None` key is a group of its
/// own. What every caller of [`score_group`] groups its rollouts with.
pub fn group_indices<K: Eq + std::hash::Hash>(keys: impl IntoIterator<Item = Option<K>>) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_key: std::collections::HashMap<K, usize> = std::collections::HashMap::new();
    for (i, key) in keys.into_iter().enumerate() {
        match key {
            Some(k) => {
                let g = *by_key.entry(k).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[g].push(i);
            }
            None => groups.push(vec![i]),
        }
    }
    groups
}

/// The group-level reward step: the rewards of one question's rollouts (`(prompt, sol)` each),
/// scored together. A per-rollout reward is [`reward_of`] each; R1-Searcher++'s adds its group
/// reward ([`crate::plus::GroupReward`]). A trainer calls this once per prompt group, a reward file
/// or server once per question.
pub fn score_group(
    kind: Reward,
    group: &crate::plus::GroupReward,
    rollouts: &[(&str, &str)],
    golds: &[String],
) -> Vec<f64> {
    if kind == Reward::R1SearcherPlus {
        let sols: Vec<&str> = rollouts.iter().map(|(_, s)| *s).collect();
        return crate::plus::group_rewards(&sols, golds, group);
    }
    rollouts.iter().map(|(p, s)| reward_of(kind, p, s, golds)).collect()
}
