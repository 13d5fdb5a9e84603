//! The batched agent loop, under R1-Searcher's protocol (every live episode generates until
//! `<|end_of_query|>`; all their queries go to the retriever in ONE call; documents are spliced in;
//! generation continues) or Search-R1's ([`Protocol`]). The trajectory
//! records which bytes the policy wrote and which came from retrieval, so the RL mask is exact.

use r1s_core::{Finish, GenerateSettings, Policy, Retriever};
use serde::{Deserialize, Serialize};

use crate::metrics::extract_answer;
use crate::protocol::{END_QUERY, extract_query, format_docs, splice};

/// Errors of the loop: the policy's or the retriever's.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("policy: {0}")]
    Policy(Box<dyn std::error::Error + Send + Sync>),
    #[error("retriever: {0}")]
    Retriever(Box<dyn std::error::Error + Send + Sync>),
}

/// Which agent protocol: prompts, tags, how a query is read and documents are written, and the
/// loop's turn rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// R1-Searcher (`<|begin_of_query|>`…`<|end_of_query|>`, `<|begin_of_documents|>` blocks):
    /// [`crate::protocol`].
    #[default]
    R1Searcher,
    /// Search-R1 (`<search>`, `<information>`, `<answer>`): [`crate::searchr1`].
    SearchR1,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Protocol, String> {
        match s {
            "r1-searcher" | "r1searcher" => Ok(Protocol::R1Searcher),
            "search-r1" | "searchr1" => Ok(Protocol::SearchR1),
            other => Err(format!("unknown protocol {other:?} (r1-searcher, search-r1)")),
        }
    }
}

impl Protocol {
    /// Whether the rollout `sol` of `prompt` breaks the protocol's format: R1-Searcher's format rules
    /// on the rollout, or Search-R1's sequence check on prompt + rollout.
    pub fn format_bad(self, prompt: &str, sol: &str) -> bool {
        match self {
            Protocol::R1Searcher => crate::reward::format_problem(sol).is_some(),
            Protocol::SearchR1 => !crate::searchr1::is_valid_sequence(&format!("{prompt}{sol}")),
        }
    }
}

/// Settings of the loop.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopConfig {
    /// The protocol (R1-Searcher unless set).
    pub protocol: Protocol,
    /// Evaluation: stricter query cleaning, give up after `max_turns` turns with "I don't know.".
    pub evaluation: bool,
    /// Documents per query (training 3, evaluation 5).
    pub topk: usize,
    /// Training: after this many retrievals the next continuation is final (no stop string).
    pub max_retrievals: usize,
    /// R1-Searcher evaluation: turns before giving up. Search-R1: turns that may search; one more,
    /// final turn follows (its `max_turns`).
    pub max_turns: usize,
    /// Sampling (the loop sets the stop string).
    pub sampling: GenerateSettings,
}

impl LoopConfig {
    /// R1-Searcher's training settings: temperature 1, top-p 0.95, 512 tokens a turn, k = 3, at most 8
    /// retrievals.
    pub fn training(seed: u64) -> LoopConfig {
        LoopConfig {
            protocol: Protocol::R1Searcher,
            evaluation: false,
            topk: 3,
            max_retrievals: 8,
            max_turns: usize::MAX,
            sampling: GenerateSettings { max_new_tokens: 512, temperature: 1.0, top_p: 0.95, seed, stop: vec![] },
        }
    }

    /// R1-Searcher's evaluation settings: greedy, k = 5, 9 turns.
    pub fn evaluation() -> LoopConfig {
        LoopConfig {
            protocol: Protocol::R1Searcher,
            evaluation: true,
            topk: 5,
            max_retrievals: usize::MAX,
            max_turns: 9,
            sampling: GenerateSettings { max_new_tokens: 512, temperature: 0.0, top_p: 1.0, seed: 0, stop: vec![] },
        }
    }
}

impl LoopConfig {
    /// The evaluation settings of `protocol`: [`LoopConfig::evaluation`] or [`LoopConfig::search_r1`].
    pub fn evaluation_for(protocol: Protocol) -> LoopConfig {
        match protocol {
            Protocol::R1Searcher => LoopConfig::evaluation(),
            Protocol::SearchR1 => LoopConfig::search_r1(),
        }
    }

    /// Search-R1's settings: k = 3, 4 searching turns (v0.3's scripts) then a final one, greedy.
    pub fn search_r1() -> LoopConfig {
        LoopConfig {
            protocol: Protocol::SearchR1,
            evaluation: true,
            topk: 3,
            max_retrievals: usize::MAX,
            max_turns: 4,
            sampling: GenerateSettings { max_new_tokens: 512, temperature: 0.0, top_p: 1.0, seed: 0, stop: vec![] },
        }
    }
}

/// Who wrote a part of a trajectory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Policy,
    Retrieval,
}

/// A byte range of [`Trajectory::sol`] and who wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub source: Source,
    pub start: usize,
    pub end: usize,
}

/// One episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    pub prompt: String,
    /// Everything after the prompt: the policy's text and the spliced documents.
    pub sol: String,
    /// Consecutive spans covering `sol`.
    pub spans: Vec<Span>,
    pub queries: Vec<String>,
    /// Ids of the passages retrieved for each query.
    pub retrieved: Vec<Vec<String>>,
    /// How each turn's generation ended.
    pub turn_finishes: Vec<Finish>,
    /// `finished` (EOS or token cap after the answer), `empty_query`, `gave_up`.
    pub stop_reason_final: String,
    /// The extracted answer (`I don't know.` when the evaluation gave up).
    pub pred: String,
    /// Sampled tokens and their log-probs per turn (when the policy exposes them).
    pub turn_tokens: Vec<Vec<u32>>,
    pub turn_logprobs: Vec<Vec<f32>>,
}

impl Trajectory {
    fn new(prompt: &str) -> Trajectory {
        Trajectory {
            prompt: prompt.to_owned(),
            sol: String::new(),
            spans: Vec::new(),
            queries: Vec::new(),
            retrieved: Vec::new(),
            turn_finishes: Vec::new(),
            stop_reason_final: String::new(),
            pred: String::new(),
            turn_tokens: Vec::new(),
            turn_logprobs: Vec::new(),
        }
    }

    fn push(&mut self, source: Source, text: &str) {
        if text.is_empty() {
            return;
        }
        let start = self.sol.len();
        self.sol.push_str(text);
        match self.spans.last_mut() {
            Some(last) if last.source == source && last.end == start => last.end = self.sol.len(),
            _ => self.spans.push(Span { source, start, end: self.sol.len() }),
        }
    }

    /// The prompt and the solution: the context of the next turn.
    pub fn text(&self) -> String {
        format!("{}{}", self.prompt, self.sol)
    }
}

/// Runs one episode per prompt to the end, batching generation and retrieval across episodes, under
/// `cfg.protocol`.
pub fn run<P: Policy, R: Retriever>(
    policy: &P,
    retriever: &R,
    prompts: &[String],
    cfg: &LoopConfig,
) -> Result<Vec<Trajectory>, AgentError> {
    match cfg.protocol {
        Protocol::R1Searcher => run_r1_searcher(policy, retriever, prompts, cfg),
        Protocol::SearchR1 => run_search_r1(policy, retriever, prompts, cfg),
    }
}

/// Search-R1's loop (`LLMGenerationManager.run_llm_loop`): for `max_turns` turns every live episode
/// generates until `</search>` or `</answer>` (kept); its first `<search>`/`<answer>` block is its
/// action: an answer ends the episode, a search appends the documents as
/// [`crate::searchr1::information`], anything else appends [`crate::searchr1::INVALID_ACTION`]. The
/// queries of a turn go to the retriever in one call. Then one final turn without searching. The
/// appended observations are not the policy's ([`Source::Retrieval`]).
///
/// One difference, by design: Search-R1 generates each turn to its token budget and then cuts the
/// text after the first `</search>` (else the first `</answer>`); here generation stops at the first
/// of the two, so a turn that answers before it would search ends at the answer (the action is the
/// same: the first block). Search-R1 also cuts each observation to `max_obs_length` tokens and the
/// context's start to `max_prompt_length`; here both stay whole.
fn run_search_r1<P: Policy, R: Retriever>(
    policy: &P,
    retriever: &R,
    prompts: &[String],
    cfg: &LoopConfig,
) -> Result<Vec<Trajectory>, AgentError> {
    use crate::searchr1::{Action, INVALID_ACTION, STOPS, action, format_docs, information};
    let mut eps: Vec<Trajectory> = prompts.iter().map(|p| Trajectory::new(p)).collect();
    let mut live: Vec<usize> = (0..eps.len()).collect();
    let mut turn = 0;
    while !live.is_empty() {
        let last = turn >= cfg.max_turns;
        turn += 1;
        let contexts: Vec<String> = live.iter().map(|&i| eps[i].text()).collect();
        let settings = GenerateSettings { stop: STOPS.iter().map(|s| s.to_string()).collect(), ..cfg.sampling.clone() };
        let out = policy.complete(&contexts, &settings).map_err(|e| AgentError::Policy(Box::new(e)))?;
        let mut pending: Vec<(usize, String)> = Vec::new();
        let mut still = Vec::new();
        for (&i, c) in live.iter().zip(out) {
            let ep = &mut eps[i];
            let text = match &c.finish {
                Finish::Stop(s) => format!("{}{s}", c.text),
                _ => c.text.clone(),
            };
            ep.turn_finishes.push(c.finish.clone());
            ep.turn_tokens.push(c.tokens);
            ep.turn_logprobs.push(c.logprobs);
            ep.push(Source::Policy, &text);
            match action(&text) {
                Action::Answer(a) => {
                    ep.pred = a;
                    ep.stop_reason_final = "finished".into();
                }
                _ if last => ep.stop_reason_final = "max_turns".into(),
                Action::Search(q) => {
                    pending.push((i, q));
                    still.push(i);
                }
                Action::Invalid => {
                    ep.push(Source::Retrieval, INVALID_ACTION);
                    still.push(i);
                }
            }
        }
        if !pending.is_empty() {
            let queries: Vec<&str> = pending.iter().map(|(_, q)| q.as_str()).collect();
            let hits = retriever.retrieve(&queries, cfg.topk).map_err(|e| AgentError::Retriever(Box::new(e)))?;
            for ((i, q), hits) in pending.into_iter().zip(hits) {
                let docs: Vec<&str> = hits.iter().map(|h| h.contents.as_str()).collect();
                let ep = &mut eps[i];
                ep.push(Source::Retrieval, &information(&format_docs(&docs)));
                ep.queries.push(q);
                ep.retrieved.push(hits.into_iter().map(|h| h.id).collect());
            }
        }
        live = still;
    }
    Ok(eps)
}

/// R1-Searcher's loop (the module docs).
fn run_r1_searcher<P: Policy, R: Retriever>(
    policy: &P,
    retriever: &R,
    prompts: &[String],
    cfg: &LoopConfig,
) -> Result<Vec<Trajectory>, AgentError> {
    let mut eps: Vec<Trajectory> = prompts.iter().map(|p| Trajectory::new(p)).collect();
    let mut live: Vec<usize> = (0..eps.len()).collect();
    let mut turn = 0;
    while !live.is_empty() {
        turn += 1;
        // episodes out of retrievals continue without the stop string (their last turn)
        let (last, asking): (Vec<usize>, Vec<usize>) =
            live.iter().partition(|&&i| eps[i].queries.len() >= cfg.max_retrievals);
        let mut completions = Vec::new();
        for (group, stop) in [(asking, vec![END_QUERY.to_owned()]), (last, vec![])] {
            if group.is_empty() {
                continue;
            }
            let contexts: Vec<String> = group.iter().map(|&i| eps[i].text()).collect();
            let settings = GenerateSettings { stop, ..cfg.sampling.clone() };
            let out = policy.complete(&contexts, &settings).map_err(|e| AgentError::Policy(Box::new(e)))?;
            completions.extend(group.into_iter().zip(out));
        }
        let mut pending: Vec<(usize, String, String)> = Vec::new();
        let mut still = Vec::new();
        for (i, c) in completions {
            let ep = &mut eps[i];
            ep.turn_finishes.push(c.finish.clone());
            ep.turn_tokens.push(c.tokens);
            ep.turn_logprobs.push(c.logprobs);
            let asked = matches!(&c.finish, Finish::Stop(s) if s == END_QUERY);
            let query = if asked { extract_query(&c.text, cfg.evaluation) } else { None };
            match query {
                Some(q) if q.is_empty() => {
                    ep.push(Source::Policy, &c.text);
                    ep.stop_reason_final = "empty_query".into();
                }
                Some(_) if cfg.evaluation && turn >= cfg.max_turns => {
                    ep.push(Source::Policy, &c.text);
                    ep.stop_reason_final = "gave_up".into();
                    ep.pred = "I don't know.".into();
                    continue;
                }
                Some(q) => {
                    pending.push((i, q, c.text));
                    still.push(i);
                    continue;
                }
                None => {
                    ep.push(Source::Policy, &c.text);
                    ep.stop_reason_final = "finished".into();
                }
            }
            ep.pred = extract_answer(&ep.sol);
        }
        if !pending.is_empty() {
            let queries: Vec<&str> = pending.iter().map(|(_, q, _)| q.as_str()).collect();
            let hits = retriever.retrieve(&queries, cfg.topk).map_err(|e| AgentError::Retriever(Box::new(e)))?;
            for ((i, q, turn_text), hits) in pending.into_iter().zip(hits) {
                let docs: Vec<&str> = hits.iter().map(|h| h.contents.as_str()).collect();
                let (mine, retrieved) = splice(&turn_text, &format_docs(&docs));
                let ep = &mut eps[i];
                ep.push(Source::Policy, &mine);
                ep.push(Source::Retrieval, &retrieved);
                ep.queries.push(q);
                ep.retrieved.push(hits.into_iter().map(|h| h.id).collect());
            }
        }
        live = still;
    }
    Ok(eps)
}
