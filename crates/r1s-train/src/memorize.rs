//! R1-Searcher++'s memorisation during RL: from a step's correct rollouts that searched, build
//! reasoning paths that use only `<internal>` steps (a rewriter turns each search and its documents
//! into recalled facts), keep those still well-formed with a correct answer, and train on them with
//! `μ · NLL` beside the RL loss ([`crate::rl::optimize_with_memory`]). The paper does not publish its
//! rewriter; r1s has two:
//! - `rule` ([`r1s_agent::plus::rewrite_internal`]): each `<external>` query and its documents become
//!   `<internal> {the document sentence that carries the answer} </internal>`; the policy's own text
//!   stays. Deterministic, free, and exact about what was retrieved.
//! - `model`: a model is prompted with the question, the retrieved documents, the gold answer and a
//!   demonstration of the `<internal>` form, and writes the path itself (greedy); by default the run's
//!   initial model (the frozen cold start), or any OpenAI-compatible completions server.

use r1s_agent::plus::{
    DOC_CLOSE, DOC_OPEN, Step, answer_correct, format_problem, parse_steps, rewrite_internal, searches,
};
use r1s_core::{GenerateSettings, Policy};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Which rewriter builds the internal-only paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rewriter {
    /// [`r1s_agent::plus::rewrite_internal`].
    #[default]
    Rule,
    /// A prompted model ([`model_prompt`]).
    Model,
}

/// `[stage.memorize]`: the memorisation term of R1-Searcher++'s RL loss, `L = −J + μ·NLL(T)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Memorize {
    /// μ, the weight of the paths' NLL (the paper's 0.1).
    pub mu: f64,
    pub rewriter: Rewriter,
    /// For `rewriter = "model"`: a GGUF file, a Hugging Face or r1s checkpoint directory, `smollm2`,
    /// or the URL of an OpenAI-compatible completions server; absent: the run's `model.init`.
    pub model: Option<String>,
    /// The `model` name sent to a completions server (`model` a URL); "default" unless set.
    pub served_model: Option<String>,
    /// Tokens the model rewriter may write per path.
    pub max_new_tokens: usize,
    /// Most paths trained on per step (0: all that were kept), in rollout order.
    pub max_paths: usize,
}

impl Default for Memorize {
    fn default() -> Memorize {
        Memorize {
            mu: 0.1,
            rewriter: Rewriter::Rule,
            model: None,
            served_model: None,
            max_new_tokens: 256,
            max_paths: 0,
        }
    }
}

impl Memorize {
    pub fn check(&self) -> std::result::Result<(), String> {
        if !self.mu.is_finite() || self.mu < 0.0 {
            return Err(format!("mu must be finite and ≥ 0 (it is {})", self.mu));
        }
        if self.rewriter == Rewriter::Model && self.max_new_tokens == 0 {
            return Err("max_new_tokens must be ≥ 1 for the model rewriter".into());
        }
        if self.rewriter == Rewriter::Rule && (self.model.is_some() || self.served_model.is_some()) {
            return Err("model is the model rewriter's: set rewriter = \"model\" or drop it".into());
        }
        Ok(())
    }
}

/// One rollout offered to the rewriter.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub prompt: &'a str,
    pub question: &'a str,
    pub sol: &'a str,
    pub golds: &'a [String],
}

impl Candidate<'_> {
    /// A rollout is rewritten when it is well-formed, its answer is correct and it searched.
    pub fn eligible(&self) -> bool {
        searches(self.sol) > 0 && format_problem(self.sol).is_none() && answer_correct(self.sol, self.golds)
    }
}

/// A kept path: the rollout's prompt and a solution with `<internal>` steps only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub prompt: String,
    pub sol: String,
}

/// Whether a rewritten solution is kept: well-formed, no search, a correct answer.
pub fn keep(sol: &str, golds: &[String]) -> bool {
    format_problem(sol).is_none() && searches(sol) == 0 && answer_correct(sol, golds)
}

/// The documents each search of a well-formed rollout brought, in order.
pub fn retrieved_documents(sol: &str) -> Vec<&str> {
    parse_steps(sol)
        .map(|steps| {
            steps
                .into_iter()
                .filter_map(|s| match s {
                    Step::External { docs, .. } => Some(&sol[docs]),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The user message the model rewriter answers: the question, the documents the rollout retrieved,
/// the gold answer, and a demonstration of a path that recalls instead of searching. The rewriter's
/// reply continues after `<think>` as a rollout would.
pub fn model_prompt(question: &str, documents: &[&str], gold: &str) -> String {
    let mut docs = String::new();
    for d in documents {
        docs.push_str(&format!("{DOC_OPEN}\n{d}{DOC_CLOSE}\n"));
    }
    format!(
        "Write the reasoning for the question below as if you already knew the facts in the documents: \
         recall each fact you need inside <internal> </internal>, do not search, and end with the answer.\n\
         Example: <think> <internal> Paris is the capital and largest city of France. </internal> The capital \
         of France is Paris. </think>\n\n<answer> Paris </answer>\n\n\
         Question: {question}\nDocuments:\n{docs}Answer: {gold}"
    )
}

/// The model rewriter: one greedy completion per candidate of `contexts` (each a rendered
/// [`model_prompt`] ending in `<think>`), kept when [`keep`] accepts it.
pub fn rewrite_with_model<P: Policy>(
    policy: &P,
    contexts: &[String],
    candidates: &[Candidate<'_>],
    max_new_tokens: usize,
) -> Result<Vec<Option<String>>> {
    if contexts.is_empty() {
        return Ok(Vec::new());
    }
    let settings = GenerateSettings { max_new_tokens, temperature: 0.0, top_p: 1.0, seed: 0, stop: vec![] };
    let done = policy
        .complete(contexts, &settings)
        .map_err(|e| TrainError::Options(format!("the memorisation rewriter model: {e}")))?;
    Ok(done.into_iter().zip(candidates).map(|(c, cand)| keep(&c.text, cand.golds).then_some(c.text)).collect())
}

/// The rule rewriter over `candidates`: the kept paths, at most `max_paths` (0: all), without
/// repeats.
pub fn rule_paths(candidates: &[Candidate<'_>], max_paths: usize) -> Vec<Path> {
    let rewritten = candidates.iter().map(|c| if c.eligible() { rewrite_internal(c.sol, c.golds) } else { None });
    collect_paths(candidates, rewritten, max_paths)
}

/// The kept paths of `rewritten` (one entry per candidate), at most `max_paths` (0: all), without
/// repeats.
pub fn collect_paths(
    candidates: &[Candidate<'_>],
    rewritten: impl IntoIterator<Item = Option<String>>,
    max_paths: usize,
) -> Vec<Path> {
    let mut out: Vec<Path> = Vec::new();
    for (c, r) in candidates.iter().zip(rewritten) {
        let Some(sol) = r else { continue };
        if max_paths > 0 && out.len() >= max_paths {
            break;
        }
        if !out.iter().any(|p| p.prompt == c.prompt && p.sol == sol) {
            out.push(Path { prompt: c.prompt.to_owned(), sol });
        }
    }
    out
}
