//! From text to training sequences: token ids and the positions the policy wrote (its own text;
//! retrieved documents are not its actions), grouped into micro-batches with the frozen prefix's
//! output cached.

use r1s_agent::{Source, Span};
use r1s_policy::{Step, TextTokenizer};

use crate::error::{Result, TrainError};
use crate::model::{Split, Top};

/// One training sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub tokens: Vec<u32>,
    /// Positions `p ≥ 1` whose token the policy wrote (predicted from position `p − 1`).
    pub actions: Vec<usize>,
}

/// R1-Searcher's spans of a rollout known only as text (kept here for callers of r1s-train).
pub use r1s_agent::protocol::spans_of_text;

/// Tokenizes `prompt` and each span of `sol` separately (so that every token belongs to exactly
/// one span), appends `eos` as the policy's last action when the episode ended on it, and cuts the
/// sequence at `max_len` tokens.
pub fn tokenize(
    tok: &TextTokenizer,
    prompt: &str,
    sol: &str,
    spans: &[Span],
    eos: Option<u32>,
    max_len: usize,
) -> Result<Sequence> {
    let mut tokens = tok.encode(prompt)?;
    let mut actions = Vec::new();
    for s in spans {
        let text = sol.get(s.start..s.end).ok_or_else(|| {
            TrainError::Options(format!("span {}..{} is not inside the {}-byte solution", s.start, s.end, sol.len()))
        })?;
        let ids = tok.encode_continuation(text)?;
        if s.source == Source::Policy {
            actions.extend(tokens.len()..tokens.len() + ids.len());
        }
        tokens.extend(ids);
    }
    if let Some(e) = eos {
        actions.push(tokens.len());
        tokens.push(e);
    }
    if tokens.len() > max_len {
        tokens.truncate(max_len);
        actions.retain(|&p| p < max_len);
    }
    actions.retain(|&p| p >= 1);
    Ok(Sequence { tokens, actions })
}

/// A micro-batch: sequences scored together, with what training needs per action token.
#[derive(Debug)]
pub struct Micro {
    /// Indices of its episodes in the step's episode list.
    pub episodes: Vec<usize>,
    /// Flat row (`batch_row * t + position − 1`) and target token of each action.
    pub rows: Vec<i64>,
    pub targets: Vec<i64>,
    /// The micro-batch row of each action.
    pub owner: Vec<usize>,
    /// The frozen prefix's output and the step (positions), computed once.
    pub boundary: burn::tensor::Tensor<3>,
    pub step: Step,
    /// Per action token: log-prob at rollout time, under the reference model, advantage, and its
    /// weight in the masked mean.
    pub old: Vec<f32>,
    pub reference: Vec<f32>,
    pub entropy: Vec<f32>,
    pub adv: Vec<f32>,
    pub weight: Vec<f32>,
}

impl Micro {
    /// Runs the frozen prefix over `episodes` of `seqs` and indexes their actions.
    pub fn new(split: &Split, seqs: &[Sequence], episodes: Vec<usize>) -> Result<Micro> {
        let batch: Vec<Vec<u32>> = episodes.iter().map(|&i| seqs[i].tokens.clone()).collect();
        let t = batch.iter().map(Vec::len).max().unwrap_or(0);
        let (mut rows, mut targets, mut owner) = (Vec::new(), Vec::new(), Vec::new());
        for (r, &i) in episodes.iter().enumerate() {
            for &p in &seqs[i].actions {
                rows.push((r * t + p - 1) as i64);
                targets.push(i64::from(seqs[i].tokens[p]));
                owner.push(r);
            }
        }
        let (boundary, step) = split.boundary(&batch)?;
        Ok(Micro {
            episodes,
            rows,
            targets,
            owner,
            boundary,
            step,
            old: Vec::new(),
            reference: Vec::new(),
            entropy: Vec::new(),
            adv: Vec::new(),
            weight: Vec::new(),
        })
    }

    /// Log-probs (and entropies) of the actions under `top`, without a graph.
    pub fn score_plain(&self, split: &Split, top: &Top, entropy: bool) -> Result<(Vec<f32>, Vec<f32>)> {
        if self.rows.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let (lp, ent) = split.score(top, self.boundary.clone(), &self.step, &self.rows, &self.targets, entropy)?;
        let ent = match ent {
            Some(e) => to_vec(e)?,
            None => Vec::new(),
        };
        Ok((to_vec(lp)?, ent))
    }
}

/// A tensor's values.
pub fn to_vec(t: burn::tensor::Tensor<1>) -> Result<Vec<f32>> {
    t.inner().into_data().try_to_vec::<f32>().map_err(|e| TrainError::Options(format!("reading a tensor back: {e:?}")))
}

/// Splits episode indices into micro-batches of similar lengths (sorted by length, so that little
/// is padding), keeping the order deterministic.
pub fn micro_batches(seqs: &[Sequence], members: &[usize], size: usize) -> Vec<Vec<usize>> {
    let mut order = members.to_vec();
    order.sort_by_key(|&i| (seqs[i].tokens.len(), i));
    order.chunks(size.max(1)).map(<[usize]>::to_vec).collect()
}
