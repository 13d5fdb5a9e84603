//! The batched agent loop, under R1-Searcher's protocol (an episode generates until
//! `<|end_of_query|>`; the queries of the episodes that stop together go to the retriever in one call;
//! documents are spliced in; generation continues) or Search-R1's ([`Protocol`]). Episodes run
//! through [`Policy::complete_continuous`], so with a continuously batching policy none waits for
//! the slowest. The trajectory
//! records which bytes the policy wrote and which came from retrieval, so the RL mask is exact.

use std::ops::ControlFlow;

use r1s_core::{Completion, Finish, GenerateSettings, Job, Policy, Retriever};
use serde::{Deserialize, Serialize};

use crate::metrics::extract_answer;
use crate::protocol::{BEGIN_QUERY, END_ANSWER, END_QUERY, EVAL_STOPS, extract_query, format_docs, splice};

/// Errors of the loop: the policy's or the retriever's.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("policy: {0}")]
    Policy(Box<dyn std::error::Error + Send + Sync>),
    #[error("retriever: {0}")]
    Retriever(Box<dyn std::error::Error + Send + Sync>),
    /// The caller's `on_end` stopped the run.
    #[error("stopped")]
    Stopped,
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
    /// R1-Searcher++ (`<internal>` recalled facts, `<external>` searches, `<document>` blocks,
    /// R1-Searcher's `<think>`/`<answer>`): [`crate::plus`].
    #[serde(rename = "r1searcher-plus", alias = "r1-searcher-plus")]
    R1SearcherPlus,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Protocol, String> {
        match s {
            "r1-searcher" | "r1searcher" => Ok(Protocol::R1Searcher),
            "search-r1" | "searchr1" => Ok(Protocol::SearchR1),
            "r1searcher-plus" | "r1-searcher-plus" => Ok(Protocol::R1SearcherPlus),
            other => Err(format!("unknown protocol {other:?} ({})", Protocol::NAMES)),
        }
    }
}

impl Protocol {
    /// Every protocol's name, as parsed.
    pub const NAMES: &'static str = "r1-searcher, search-r1, r1searcher-plus";

    /// Whether the rollout `sol` of `prompt` breaks the protocol's format: R1-Searcher's format rules
    /// on the rollout, Search-R1's sequence check on prompt + rollout, or R1-Searcher++'s `R_format`.
    pub fn format_bad(self, prompt: &str, sol: &str) -> bool {
        match self {
            Protocol::R1Searcher => crate::reward::format_problem(sol).is_some(),
            Protocol::SearchR1 => !crate::searchr1::is_valid_sequence(&format!("{prompt}{sol}")),
            Protocol::R1SearcherPlus => crate::plus::format_problem(sol).is_some(),
        }
    }

    /// External searches a rollout made, read from its text (the count RC averages): R1-Searcher's
    /// `<|begin_of_query|>` tags, Search-R1's `<information>` blocks, R1-Searcher++'s `<external>` tags.
    pub fn searches(self, sol: &str) -> usize {
        match self {
            Protocol::R1Searcher => crate::reward::retrievals(sol),
            Protocol::SearchR1 => sol.matches("<information>").count(),
            Protocol::R1SearcherPlus => crate::plus::searches(sol),
        }
    }

    /// Facts recalled without a search (`<internal>` steps; 0 for the other protocols).
    pub fn internal_steps(self, sol: &str) -> usize {
        match self {
            Protocol::R1SearcherPlus => crate::plus::internal_steps(sol),
            _ => 0,
        }
    }

    /// Who wrote which bytes of a rollout known only as text (the documents are the loop's).
    pub fn spans_of_text(self, sol: &str) -> Vec<Span> {
        match self {
            Protocol::R1Searcher => crate::protocol::spans_of_text(sol),
            Protocol::SearchR1 => crate::searchr1::spans_of_text(sol),
            Protocol::R1SearcherPlus => crate::plus::spans_of_text(sol),
        }
    }

    /// The reward a protocol is scored with when none is named: R1-Searcher's `stage2`, Search-R1's
    /// EM, R1-Searcher++'s own.
    pub fn default_reward(self) -> crate::Reward {
        match self {
            Protocol::R1Searcher => crate::Reward::Stage2,
            Protocol::SearchR1 => crate::Reward::SearchR1Em,
            Protocol::R1SearcherPlus => crate::Reward::R1SearcherPlus,
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
    /// Episodes running at once (0: all); the next prompt starts as one ends.
    pub max_live: usize,
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
            max_live: 0,
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
            max_live: 0,
        }
    }
}

impl LoopConfig {
    /// The evaluation settings of `protocol`: [`LoopConfig::evaluation`] or [`LoopConfig::search_r1`].
    pub fn evaluation_for(protocol: Protocol) -> LoopConfig {
        match protocol {
            Protocol::R1Searcher => LoopConfig::evaluation(),
            Protocol::SearchR1 => LoopConfig::search_r1(),
            // R1-Searcher's evaluation loop (greedy, k = 5, at most 8 searches: the 9th turn gives up)
            Protocol::R1SearcherPlus => LoopConfig { protocol, ..LoopConfig::evaluation() },
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
            max_live: 0,
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
    /// Why the episode ended. R1-Searcher's evaluation uses its script's names: `finished` (a turn
    /// stopped at `</answer>` after an `<answer>`), `many_retrieve` (a search at the last turn),
    /// `query_inst_error` (an empty query), `shot_down` (any other end of a turn: the token budget,
    /// EOS, `<|im_end|>`, `<|endoftext|>`, a stop without its opening tag). Training and
    /// R1-Searcher++: `finished` (EOS or token cap), `empty_query`, `gave_up`, `max_searches`;
    /// Search-R1: `finished`, `max_turns`.
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
    run_streaming(policy, retriever, prompts, cfg, &mut |_, _| ControlFlow::Continue(()))
}

/// [`run`], calling `on_end(i, trajectory)` as episode `i` ends; [`ControlFlow::Break`] stops the
/// run ([`AgentError::Stopped`]).
///
/// The episodes go to [`Policy::complete_continuous`] as jobs keyed by their index: at most
/// `cfg.max_live` at once (all when 0), the next prompt starting as an episode ends. When some of
/// the running episodes stop (a search, an answer), the searches among them go to the retriever in
/// one call and their next turns are handed back at once, so that, with a policy that batches
/// continuously, they join the episodes still generating instead of waiting for them. Under
/// R1-Searcher's protocol a turn stops at `<|end_of_query|>`; the query is read, the documents are
/// spliced in and the episode goes on; an episode out of retrievals continues without the stop
/// string (its last turn). Search-R1's turns are described at [`search_r1_turn`].
pub fn run_streaming<P: Policy, R: Retriever>(
    policy: &P,
    retriever: &R,
    prompts: &[String],
    cfg: &LoopConfig,
    on_end: &mut dyn FnMut(usize, &Trajectory) -> ControlFlow<()>,
) -> Result<Vec<Trajectory>, AgentError> {
    let n = prompts.len();
    let mut eps: Vec<Trajectory> = prompts.iter().map(|p| Trajectory::new(p)).collect();
    let mut started = if cfg.max_live == 0 { n } else { cfg.max_live.min(n) };
    let job = |i: usize, ep: &Trajectory| {
        let stop = match cfg.protocol {
            Protocol::SearchR1 => crate::searchr1::STOPS.iter().map(|s| s.to_string()).collect(),
            // R1-Searcher's evaluation stops at these four (evaluation/eval_search_loacl.py)
            Protocol::R1Searcher if cfg.evaluation => EVAL_STOPS.iter().map(|s| s.to_string()).collect(),
            // out of retrievals: the last turn, without the stop string
            Protocol::R1Searcher if ep.queries.len() >= cfg.max_retrievals => vec![],
            Protocol::R1Searcher => vec![END_QUERY.to_owned()],
            // R1-Searcher++ always stops at </external>, so the policy never writes a document
            // block itself; a search past the limit ends the episode (r1_searcher_turn)
            Protocol::R1SearcherPlus => vec![crate::plus::EXTERNAL_CLOSE.to_owned()],
        };
        Job { key: i, context: ep.text(), settings: GenerateSettings { stop, ..cfg.sampling.clone() } }
    };
    let first: Vec<Job> = (0..started).map(|i| job(i, &eps[i])).collect();
    let mut failed: Option<AgentError> = None;
    policy
        .complete_continuous(first, &mut |finished| {
            let mut searches: Vec<(usize, String, String)> = Vec::new();
            let mut next: Vec<usize> = Vec::new();
            let mut ended = Vec::new();
            for (i, c) in finished {
                // this turn's number, from 1
                let turn = eps[i].turn_finishes.len() + 1;
                let after = match cfg.protocol {
                    Protocol::R1Searcher if cfg.evaluation => r1_searcher_eval_turn(&mut eps[i], c, turn, cfg),
                    Protocol::R1Searcher | Protocol::R1SearcherPlus => r1_searcher_turn(&mut eps[i], c, turn, cfg),
                    Protocol::SearchR1 => search_r1_turn(&mut eps[i], c, turn, cfg),
                };
                match after {
                    After::End => ended.push(i),
                    After::Continue => next.push(i),
                    After::Search { query, text } => searches.push((i, query, text)),
                }
            }
            if !searches.is_empty() {
                let queries: Vec<&str> = searches.iter().map(|(_, q, _)| q.as_str()).collect();
                let hits = match retriever.retrieve(&queries, cfg.topk) {
                    Ok(h) => h,
                    Err(e) => {
                        failed = Some(AgentError::Retriever(Box::new(e)));
                        return ControlFlow::Break(());
                    }
                };
                for ((i, query, text), hits) in searches.into_iter().zip(hits) {
                    let docs: Vec<&str> = hits.iter().map(|h| h.contents.as_str()).collect();
                    let ep = &mut eps[i];
                    match cfg.protocol {
                        Protocol::R1Searcher | Protocol::R1SearcherPlus => {
                            let splice =
                                if cfg.protocol == Protocol::R1Searcher { splice } else { crate::plus::splice };
                            let (mine, retrieved) = splice(&text, &format_docs(&docs));
                            ep.push(Source::Policy, &mine);
                            ep.push(Source::Retrieval, &retrieved);
                        }
                        Protocol::SearchR1 => {
                            let info = crate::searchr1::information(&crate::searchr1::format_docs(&docs));
                            ep.push(Source::Retrieval, &info);
                        }
                    }
                    ep.queries.push(query);
                    ep.retrieved.push(hits.into_iter().map(|h| h.id).collect());
                    next.push(i);
                }
            }
            for &i in &ended {
                if on_end(i, &eps[i]).is_break() {
                    failed = Some(AgentError::Stopped);
                    return ControlFlow::Break(());
                }
                // the next prompt takes the ended episode's place
                if started < n {
                    next.push(started);
                    started += 1;
                }
            }
            next.sort_unstable();
            ControlFlow::Continue(next.into_iter().map(|i| job(i, &eps[i])).collect())
        })
        .map_err(|e| AgentError::Policy(Box::new(e)))?;
    match failed {
        Some(e) => Err(e),
        None => Ok(eps),
    }
}

/// What an episode does after a turn.
enum After {
    /// It is over.
    End,
    /// It generates again (Search-R1 after an invalid action).
    Continue,
    /// It searches for `query`; `text` is the turn's text (R1-Searcher splices the documents into it).
    Search { query: String, text: String },
}

/// Records how turn `c` ended in `ep`, moving its sampled tokens there.
fn record(ep: &mut Trajectory, c: &mut Completion) {
    ep.turn_finishes.push(c.finish.clone());
    ep.turn_tokens.push(std::mem::take(&mut c.tokens));
    ep.turn_logprobs.push(std::mem::take(&mut c.logprobs));
}

/// A turn under Search-R1's protocol (`LLMGenerationManager.run_llm_loop`): the turn generates until
/// `</search>` or `</answer>` (kept); its first `<search>`/`<answer>` block is its action: an answer
/// ends the episode, a search appends the documents as [`crate::searchr1::information`], anything
/// else appends [`crate::searchr1::INVALID_ACTION`]. After `max_turns` turns that may search comes
/// one final turn, whose action ends the episode. The appended observations are not the policy's
/// ([`Source::Retrieval`]).
///
/// One difference, by design: Search-R1 generates each turn to its token budget and then cuts the
/// text after the first `</search>` (else the first `</answer>`); here generation stops at the first
/// of the two, so a turn that answers before it would search ends at the answer (the action is the
/// same: the first block). Search-R1 also cuts each observation to `max_obs_length` tokens and the
/// context's start to `max_prompt_length`; here both stay whole.
fn search_r1_turn(ep: &mut Trajectory, mut c: Completion, turn: usize, cfg: &LoopConfig) -> After {
    use crate::searchr1::{Action, INVALID_ACTION, action};
    record(ep, &mut c);
    let text = match &c.finish {
        Finish::Stop(s) => format!("{}{s}", c.text),
        _ => c.text,
    };
    ep.push(Source::Policy, &text);
    match action(&text) {
        Action::Answer(a) => {
            ep.pred = a;
            ep.stop_reason_final = "finished".into();
            After::End
        }
        _ if turn > cfg.max_turns => {
            ep.stop_reason_final = "max_turns".into();
            After::End
        }
        Action::Search(query) => After::Search { query, text: String::new() },
        Action::Invalid => {
            ep.push(Source::Retrieval, INVALID_ACTION);
            After::Continue
        }
    }
}

/// A turn of R1-Searcher's evaluation, as its `evaluation/eval_search_loacl.py` decides it: generation
/// stops at [`EVAL_STOPS`]; a turn that stopped at `</answer>` and wrote `<answer>` finishes the row,
/// its answer the turn's text after its last `<answer>` (not stripped); a turn that stopped at
/// `<|end_of_query|>` and wrote `<|begin_of_query|>` searches for its query (cleaned with `"`, `'`,
/// `...` removed and tabs made spaces; empty → `query_inst_error`), unless it is turn `max_turns`
/// (`many_retrieve`: the script's tenth generation is discarded whatever it holds, so a search at the
/// ninth gives up; its documents are never read, so they are not fetched here); any other end is
/// `shot_down`. A row that does not finish is answered "I don't know.". The text kept is the turn's
/// with the stop string that ended it; a search's is spliced as in training ([`splice`]).
fn r1_searcher_eval_turn(ep: &mut Trajectory, mut c: Completion, turn: usize, cfg: &LoopConfig) -> After {
    record(ep, &mut c);
    let stop = match &c.finish {
        Finish::Stop(s) => s.as_str(),
        _ => "",
    };
    let (reason, pred) = if stop == END_ANSWER && c.text.contains("<answer>") {
        let pred = c.text.rsplit("<answer>").next().unwrap_or_default().to_owned();
        ("finished", pred)
    } else if stop == END_QUERY && c.text.contains(BEGIN_QUERY) {
        let raw = c.text.rsplit(BEGIN_QUERY).next().unwrap_or_default();
        // the script searches when its cleaning leaves anything, whitespace included
        if crate::protocol::eval_query_chars(raw).is_empty() {
            ("query_inst_error", IDK.to_owned())
        } else if turn >= cfg.max_turns {
            ("many_retrieve", IDK.to_owned())
        } else {
            return After::Search { query: crate::protocol::clean_query(raw, true), text: c.text };
        }
    } else {
        ("shot_down", IDK.to_owned())
    };
    ep.push(Source::Policy, &format!("{}{stop}", c.text));
    ep.stop_reason_final = reason.into();
    ep.pred = pred;
    After::End
}

/// The answer R1-Searcher's evaluation gives a row that did not finish.
const IDK: &str = "I don't know.";

/// A turn under R1-Searcher's protocol: a turn that stopped at `<|end_of_query|>` searches for its
/// query (an empty one ends the episode; in evaluation, a query at turn `max_turns` gives up with
/// "I don't know."); any other end finishes the episode. R1-Searcher++'s turns are the same with
/// `</external>` and its `<external>` query ([`crate::plus::extract_query`]); an `<internal>` step
/// is text the turn goes on writing. Unlike R1-Searcher's, its last turn keeps the stop string: a
/// search past `max_retrievals` ends the episode (`max_searches`, the `<external>` left open, which
/// its format check refuses) instead of letting the policy write the documents itself.
fn r1_searcher_turn(ep: &mut Trajectory, mut c: Completion, turn: usize, cfg: &LoopConfig) -> After {
    record(ep, &mut c);
    let plus = cfg.protocol == Protocol::R1SearcherPlus;
    let stop = if plus { crate::plus::EXTERNAL_CLOSE } else { END_QUERY };
    let asked = matches!(&c.finish, Finish::Stop(s) if s == stop);
    let query = match (asked, plus) {
        (false, _) => None,
        (true, true) => crate::plus::extract_query(&c.text, cfg.evaluation),
        (true, false) => extract_query(&c.text, cfg.evaluation),
    };
    let reason = match query {
        Some(q) if q.is_empty() => "empty_query",
        Some(_) if cfg.evaluation && turn >= cfg.max_turns => {
            ep.push(Source::Policy, &c.text);
            ep.stop_reason_final = "gave_up".into();
            ep.pred = "I don't know.".into();
            return After::End;
        }
        Some(_) if plus && ep.queries.len() >= cfg.max_retrievals => "max_searches",
        Some(query) => return After::Search { query, text: c.text },
        None => "finished",
    };
    ep.stop_reason_final = reason.into();
    ep.push(Source::Policy, &c.text);
    ep.pred = extract_answer(&ep.sol);
    After::End
}
