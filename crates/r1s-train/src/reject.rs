//! Cold-start data by rejection sampling (R1-Searcher++'s stage 1: "sample tag-format responses, keep
//! only well-formed and correct ones"): a policy answers each question several times through the agent
//! loop with the real retriever, and the rollouts that pass the protocol's format check with a correct
//! answer are kept as SFT trajectories. Under R1-Searcher++'s protocol they mix `<internal>` recalls and
//! `<external>` searches as the policy wrote them.

use r1s_agent::{LoopConfig, Protocol, Question, Trajectory};
use r1s_core::{Policy, Retriever};
use serde_json::json;

use crate::error::Result;
use crate::prompt::PromptKind;

/// How rollouts are sampled and kept.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectOptions {
    pub protocol: Protocol,
    /// Rollouts per question.
    pub samples: usize,
    /// Rollouts kept per question (distinct solutions, first sampled first; 0: all).
    pub keep_per_question: usize,
    /// The loop's settings: sampling, top-k, searches, episodes at once.
    pub loop_cfg: LoopConfig,
}

/// Whether a rollout is kept: well-formed under `protocol` and correct (R1-Searcher++: `R_answer` = 1;
/// the others: cover-EM of the extracted answer against a gold answer, with an answer present).
pub fn accepted(protocol: Protocol, t: &Trajectory, golds: &[String]) -> bool {
    if protocol.format_bad(&t.prompt, &t.sol) {
        return false;
    }
    match protocol {
        Protocol::R1SearcherPlus => r1s_agent::plus::answer_correct(&t.sol, golds),
        _ => !t.pred.is_empty() && golds.iter().any(|g| r1s_agent::metrics::cover_em(&t.pred, g)),
    }
}

/// What a run kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RejectStats {
    pub rollouts: usize,
    pub kept: usize,
    /// Questions with at least one kept rollout.
    pub questions_kept: usize,
    /// Kept rollouts that searched at least once / that recalled at least one fact.
    pub kept_searching: usize,
    pub kept_recalling: usize,
}

/// Samples `o.samples` rollouts of every question and returns the kept ones as SFT lines
/// (`{"question", "answer", "prompt", "sol", "spans", "protocol", "search", "searches", "internal"}`,
/// what `r1s policy sft` reads), in question order.
pub fn rejection_sample<P: Policy, R: Retriever>(
    policy: &P,
    retriever: &R,
    questions: &[Question],
    prompt: &PromptKind,
    o: &RejectOptions,
) -> Result<(Vec<serde_json::Value>, RejectStats)> {
    let samples = o.samples.max(1);
    let mut prompts = Vec::with_capacity(questions.len() * samples);
    for q in questions {
        let p = prompt.render_with(o.protocol, &q.question);
        prompts.extend(std::iter::repeat_n(p, samples));
    }
    let cfg = LoopConfig { protocol: o.protocol, ..o.loop_cfg.clone() };
    let trajs = r1s_agent::run(policy, retriever, &prompts, &cfg)?;
    let mut stats = RejectStats { rollouts: trajs.len(), ..RejectStats::default() };
    let mut lines = Vec::new();
    for (q, group) in questions.iter().zip(trajs.chunks(samples)) {
        let mut kept: Vec<&Trajectory> = Vec::new();
        for t in group {
            if o.keep_per_question > 0 && kept.len() >= o.keep_per_question {
                break;
            }
            if accepted(o.protocol, t, &q.answers) && !kept.iter().any(|k| k.sol == t.sol) {
                kept.push(t);
            }
        }
        stats.questions_kept += usize::from(!kept.is_empty());
        for t in kept {
            let (searches, internal) = (t.queries.len(), o.protocol.internal_steps(&t.sol));
            stats.kept += 1;
            stats.kept_searching += usize::from(searches > 0);
            stats.kept_recalling += usize::from(internal > 0);
            let answer = if q.answers.len() == 1 { json!(q.answers[0]) } else { json!(q.answers) };
            lines.push(json!({
                "question": q.question, "answer": answer, "prompt": t.prompt, "sol": t.sol, "spans": t.spans,
                "protocol": o.protocol, "search": searches > 0, "searches": searches, "internal": internal,
            }));
        }
    }
    Ok((lines, stats))
}
