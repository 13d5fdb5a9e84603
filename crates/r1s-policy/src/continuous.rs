//! Continuous batching ([`Policy::generate_continuous`]): sequences join and leave one running batch
//! at any decode step, instead of every call waiting for its slowest sequence.
//!
//! - When sequences end (EOS, a stop string, the token budget), the caller hears of them at once and
//!   may hand back new work (the next turn of an episode after retrieval, the next prompt); it is
//!   prefilled and joins the batch before the next decode step, while the other rows keep their
//!   caches.
//! - **Prefix caching:** a request whose `key` names a sequence that ended at the same step reuses
//!   that sequence's cache for the longest common prefix of their token ids, so the next turn of an
//!   episode prefills only its new tokens (the retrieved documents), not the prompt and the turns
//!   before. Ids are compared, not text: the caller tokenizes the whole new context, and the result
//!   is what a prefill of it from scratch gives, up to float rounding.
//! - **One random stream per request**, seeded from the request's seed, key and how many requests of
//!   that key came before, so what a row samples does not depend on which rows share its batch.
//!
//! The batch's cache is one `[b, nkv, T, hd]` tensor per layer. Each row has a mask over the `T`
//! columns (true: not one of its keys): rows are left-aligned by padding, and the columns of tokens
//! a reused sequence does not share with its next request stay in place, masked. The row's real
//! columns, in order, hold its `ctx` (the token ids fed so far, at positions `0..ctx.len()`).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::Instant;

use burn::tensor::Tensor;

use crate::error::{PolicyError, Result};
use crate::model::{KvCache, Step};
use crate::policy::{Generation, Policy, Rng, Sampling, StopReason, log_prob, sample, to_vec};

/// One piece of work for [`Policy::generate_continuous`].
#[derive(Debug, Clone)]
pub struct Request {
    /// The caller's name for the sequence (e.g. an episode). A request may reuse the cache of a
    /// sequence of the same key that ended at the step it was handed back.
    pub key: usize,
    /// Token ids to continue (not empty).
    pub prompt: Vec<u32>,
    /// Sampling, stop strings and token budget of this request; its random stream is seeded by
    /// `sampling.seed`, `key` and the number of earlier requests of `key` ([`stream_seed`]), unless
    /// `stream` names it.
    pub sampling: Sampling,
    /// The seed of this request's random stream when the caller chooses it (a server: from the
    /// client's seed and the choice's index, so that one seeded request samples the same whatever
    /// else runs); `None`: derived from the seed, key and count ([`stream_seed`]).
    pub stream: Option<u64>,
    /// Set by the caller when it no longer wants this sequence (a server's client went away): the
    /// sequence is dropped at the next step, and `done` never sees it. `None`: runs to its end.
    pub cancel: Option<std::sync::Arc<r1s_core::Cancel>>,
}

/// What a [`Policy::generate_continuous`] run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContinuousStats {
    /// Requests served.
    pub requests: usize,
    /// Decode steps (each feeds one token of every live row).
    pub steps: usize,
    /// Tokens sampled.
    pub decoded: usize,
    /// Prompt tokens run through the model (after sharing identical prompts and reusing caches).
    pub prefilled: usize,
    /// Prompt tokens whose keys and values came from a reused cache.
    pub reused: usize,
    /// The largest number of rows decoded together.
    pub peak_rows: usize,
    /// Seconds spent prefilling, and in all.
    pub prefill_seconds: f64,
    pub seconds: f64,
}

/// The seed of the random stream of the `nth` (0-based) request of `key` under `seed`.
pub fn stream_seed(seed: u64, key: usize, nth: usize) -> u64 {
    let mut r = Rng::new(seed ^ (key as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let a = r.next_u64();
    let mut r = Rng::new(a ^ (nth as u64).wrapping_mul(0xAEF1_7502_108E_F2D9));
    r.next_u64()
}

/// A live sequence.
struct Row {
    key: usize,
    sampling: Sampling,
    rng: Rng,
    out: Generation,
    /// The ids whose keys and values are in the row's cache, at positions `0..ctx.len()`.
    ctx: Vec<u32>,
    /// Most tokens it may sample (its budget, within the model's positions).
    max_new: usize,
    cancel: Option<std::sync::Arc<r1s_core::Cancel>>,
}

/// Whether the caller cancelled a request or row ([`Request::cancel`]).
fn cancelled(cancel: &Option<std::sync::Arc<r1s_core::Cancel>>) -> bool {
    cancel.as_ref().is_some_and(|c| c.is_cancelled())
}

/// Rows with their cache and masks (module docs) and the logits `[rows, vocab]` of their next token.
struct Part {
    rows: Vec<Row>,
    cache: KvCache,
    mask: Vec<Vec<bool>>,
    logits: Option<Tensor<2>>,
}

impl Part {
    fn empty() -> Part {
        Part { rows: Vec::new(), cache: KvCache::default(), mask: Vec::new(), logits: None }
    }

    fn width(&self) -> usize {
        self.mask.first().map_or(0, Vec::len)
    }
}

impl Policy {
    /// Generates for `requests` and all that `done` hands back, in one continuously refilled batch
    /// (module docs). `done` is called at each decode step where sequences ended, with their keys
    /// and generations (in batch order), and returns the requests to add
    /// ([`ControlFlow::Continue`]) or stops the run ([`ControlFlow::Break`]). Returns when no
    /// sequence is left.
    ///
    /// Errors: an empty prompt, or one longer than the model's positions; reading tensors back.
    pub fn generate_continuous(
        &self,
        requests: Vec<Request>,
        done: &mut dyn FnMut(Vec<(usize, Generation)>) -> ControlFlow<(), Vec<Request>>,
    ) -> Result<ContinuousStats> {
        self.generate_continuous_polled(requests, done, &mut Vec::new)
    }

    /// [`Policy::generate_continuous`] that also takes the requests `poll` returns before every step
    /// (a server's arrivals): they join the batch at the next step, not when a sequence ends. Returns
    /// when no sequence is left (a caller that waits for arrivals calls it again).
    pub fn generate_continuous_polled(
        &self,
        requests: Vec<Request>,
        done: &mut dyn FnMut(Vec<(usize, Generation)>) -> ControlFlow<(), Vec<Request>>,
        poll: &mut dyn FnMut() -> Vec<Request>,
    ) -> Result<ContinuousStats> {
        let started = Instant::now();
        let mut stats = ContinuousStats::default();
        let mut nth: HashMap<usize, usize> = HashMap::new();
        let mut batch = Part::empty();
        let mut pending = requests;
        // the rows of `batch` that ended at the last step, and which of them has which key
        let mut ended: Vec<usize> = Vec::new();
        let mut ended_key: HashMap<usize, usize> = HashMap::new();
        loop {
            self.check_cancel()?;
            pending.extend(poll());
            pending.retain(|r| !cancelled(&r.cancel));
            // the new requests reuse the cache of the ended row of their key, or are prefilled afresh
            let t = Instant::now();
            let mut finished: Vec<(usize, Generation)> = Vec::new();
            let mut fresh: Vec<Row> = Vec::new();
            let mut reuse: Vec<(usize, usize, Row)> = Vec::new();
            for r in pending.drain(..) {
                let row = self.row_for(r, &mut nth)?;
                stats.requests += 1;
                if row.max_new == 0 {
                    // the context is full: nothing to generate
                    finished.push((row.key, row.out));
                    continue;
                }
                // keep one new id to feed: its logits give the first token
                let common = ended_key
                    .remove(&row.key)
                    .map(|i| (i, common_prefix(&batch.rows[i].ctx, &row.ctx).min(row.ctx.len() - 1)));
                match common {
                    Some((i, common)) if common > 0 => reuse.push((i, common, row)),
                    _ => fresh.push(row),
                }
            }
            let reused = if reuse.is_empty() { None } else { Some(self.prefill_reused(&batch, reuse, &mut stats)?) };
            let fresh = if fresh.is_empty() { None } else { Some(self.prefill_fresh(fresh, &mut stats)?) };
            stats.prefill_seconds += t.elapsed().as_secs_f64();
            // the rows that go on feed the token they sampled (the callers' cancelled rows drop out)
            let keep: Vec<usize> =
                (0..batch.rows.len()).filter(|&i| !ended.contains(&i) && !cancelled(&batch.rows[i].cancel)).collect();
            ended.clear();
            ended_key.clear();
            batch = self.narrow(batch, &keep);
            if !batch.rows.is_empty() {
                self.decode(&mut batch)?;
                stats.steps += 1;
            }
            batch = merge(self, [Some(batch), reused, fresh].into_iter().flatten().collect());
            trim(&mut batch);
            stats.peak_rows = stats.peak_rows.max(batch.rows.len());
            // one token for every row
            if let Some(logits) = batch.logits.take() {
                let logits = to_vec(logits)?;
                let vocab = self.cfg.vocab_size;
                for (i, row) in batch.rows.iter_mut().enumerate() {
                    let l = &logits[i * vocab..(i + 1) * vocab];
                    let tok = sample(l, &row.sampling, &mut row.rng);
                    stats.decoded += 1;
                    let goes_on = self.accept(&mut row.out, tok, log_prob(l, tok as usize), &row.sampling.stop)?;
                    if goes_on && row.out.tokens.len() < row.max_new {
                        continue;
                    }
                    if goes_on {
                        row.out.stop = StopReason::Length;
                    }
                    ended.push(i);
                    ended_key.insert(row.key, i);
                    finished.push((row.key, row.out.clone()));
                }
            }
            if finished.is_empty() {
                if batch.rows.is_empty() {
                    break;
                }
                continue;
            }
            match done(finished) {
                ControlFlow::Continue(next) => pending = next,
                ControlFlow::Break(()) => break,
            }
        }
        stats.seconds = started.elapsed().as_secs_f64();
        log::debug!(
            "generate (continuous): {} requests, {} tokens in {} steps (at most {} rows), prefill {} tokens \
             ({} reused) {:.2}s, {:.2}s in all",
            stats.requests,
            stats.decoded,
            stats.steps,
            stats.peak_rows,
            stats.prefilled,
            stats.reused,
            stats.prefill_seconds,
            stats.seconds
        );
        Ok(stats)
    }

    fn row_for(&self, r: Request, nth: &mut HashMap<usize, usize>) -> Result<Row> {
        let max_pos = self.rope().max_positions();
        if r.prompt.is_empty() || r.prompt.len() > max_pos {
            return Err(PolicyError::Options(format!(
                "a prompt of {} tokens (the model takes 1 to {max_pos})",
                r.prompt.len()
            )));
        }
        let n = nth.entry(r.key).or_insert(0);
        let rng = Rng::new(r.stream.unwrap_or_else(|| stream_seed(r.sampling.seed, r.key, *n)));
        *n += 1;
        let max_new = r.sampling.max_new_tokens.min(max_pos - r.prompt.len());
        Ok(Row {
            key: r.key,
            rng,
            out: Generation { text: String::new(), tokens: Vec::new(), logprobs: Vec::new(), stop: StopReason::Length },
            ctx: r.prompt,
            max_new,
            sampling: r.sampling,
            cancel: r.cancel,
        })
    }

    /// Prefills rows without a cache (identical prompts once, as [`Policy::generate`] does).
    fn prefill_fresh(&self, rows: Vec<Row>, stats: &mut ContinuousStats) -> Result<Part> {
        let prompts: Vec<Vec<u32>> = rows.iter().map(|r| r.ctx.clone()).collect();
        let (cache, logits, t0, run) = self.prefill(&prompts)?;
        stats.prefilled += run;
        let mask = prompts.iter().map(|p| (0..t0).map(|c| c < t0 - p.len()).collect()).collect();
        Ok(Part { rows, cache, mask, logits: Some(logits) })
    }

    /// Prefills rows that reuse row `i` of `from` for their first `common` ids: `(i, common, row)`.
    fn prefill_reused(
        &self,
        from: &Part,
        items: Vec<(usize, usize, Row)>,
        stats: &mut ContinuousStats,
    ) -> Result<Part> {
        let idx: Vec<usize> = items.iter().map(|(i, ..)| *i).collect();
        let mut cache = from.cache.clone();
        cache.retain_rows(&idx);
        let t = items.iter().map(|(_, c, row)| row.ctx.len() - c).max().unwrap_or(0);
        let width = from.width();
        let (b, mut ids, mut pos, mut keys, mut queries) =
            (items.len(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut rows = Vec::with_capacity(b);
        let mut mask = Vec::with_capacity(b);
        for (i, common, row) in items {
            // mask the columns of the old ids past the common prefix (the last real ones)
            let mut m = from.mask[i].clone();
            let mut stale = from.rows[i].ctx.len() - common;
            for c in (0..width).rev() {
                if stale == 0 {
                    break;
                }
                if !m[c] {
                    m[c] = true;
                    stale -= 1;
                }
            }
            let new = &row.ctx[common..];
            let pad = t - new.len();
            stats.prefilled += new.len();
            stats.reused += common;
            ids.extend(std::iter::repeat_n(0i64, pad).chain(new.iter().map(|&x| i64::from(x))));
            pos.extend((0..t).map(|j| (common + j).saturating_sub(pad) as i64));
            m.extend((0..t).map(|j| j < pad));
            keys.extend_from_slice(&m);
            queries.extend((0..t).map(|j| j < pad));
            mask.push(m);
            rows.push(row);
        }
        let step = Step {
            positions: self.ints(pos, [b, t]),
            pad: Some((self.bools(keys, [b, width + t]), self.bools(queries, [b, t]))),
        };
        let hidden = self.model.hidden(&self.cfg, self.rope(), self.ints(ids, [b, t]), &step, Some(&mut cache));
        let logits = self.model.logits(hidden.narrow(1, t - 1, 1)).reshape([b, self.cfg.vocab_size]);
        Ok(Part { rows, cache, mask, logits: Some(logits) })
    }

    /// Keeps the rows `keep` of `part` (their logits are dropped: they were sampled).
    fn narrow(&self, mut part: Part, keep: &[usize]) -> Part {
        part.logits = None;
        if keep.len() == part.rows.len() {
            return part;
        }
        if keep.is_empty() {
            return Part::empty();
        }
        part.cache.retain_rows(keep);
        let mut rows: Vec<Option<Row>> = part.rows.into_iter().map(Some).collect();
        let mut masks: Vec<Option<Vec<bool>>> = part.mask.into_iter().map(Some).collect();
        part.rows = keep.iter().filter_map(|&i| rows[i].take()).collect();
        part.mask = keep.iter().filter_map(|&i| masks[i].take()).collect();
        part
    }

    /// Feeds every row's last sampled token: one decode step.
    fn decode(&self, part: &mut Part) -> Result<()> {
        let b = part.rows.len();
        let mut ids = Vec::with_capacity(b);
        let mut pos = Vec::with_capacity(b);
        for row in &mut part.rows {
            let tok = *row.out.tokens.last().ok_or_else(|| PolicyError::Options("a row without a token".into()))?;
            pos.push(row.ctx.len());
            row.ctx.push(tok);
            ids.push(tok);
        }
        for m in &mut part.mask {
            m.push(false);
        }
        let any = part.mask.iter().flatten().any(|&x| x);
        let mask = any.then(|| part.mask.concat());
        part.logits = Some(self.decode_step(&ids, &pos, mask.as_deref(), &mut part.cache)?);
        Ok(())
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Stacks parts into one batch, left-padding the narrower caches with masked zero columns.
fn merge(policy: &Policy, parts: Vec<Part>) -> Part {
    let mut parts: Vec<Part> = parts.into_iter().filter(|p| !p.rows.is_empty()).collect();
    if parts.len() <= 1 {
        return parts.into_iter().next().unwrap_or_else(Part::empty);
    }
    let width = parts.iter().map(Part::width).max().unwrap_or(0);
    let layers = parts.iter_mut().map(|p| p.cache.tensors().len()).max().unwrap_or(0);
    let mut out = Part::empty();
    let mut keys: Vec<Vec<Tensor<4>>> = vec![Vec::new(); layers];
    let mut values: Vec<Vec<Tensor<4>>> = vec![Vec::new(); layers];
    let mut logits = Vec::new();
    for p in parts {
        let pad = width - p.width();
        for (l, layer) in p.cache.layers.into_iter().enumerate() {
            if let Some((k, v)) = layer {
                let (k, v) = if pad == 0 {
                    (k, v)
                } else {
                    let [b, h, _, d] = k.dims();
                    let z = Tensor::<4>::zeros([b, h, pad, d], policy.device());
                    (Tensor::cat(vec![z.clone(), k], 2), Tensor::cat(vec![z, v], 2))
                };
                keys[l].push(k);
                values[l].push(v);
            }
        }
        out.mask.extend(p.mask.into_iter().map(|m| std::iter::repeat_n(true, pad).chain(m).collect()));
        out.rows.extend(p.rows);
        logits.extend(p.logits);
    }
    out.cache.layers =
        keys.into_iter().zip(values).map(|(k, v)| Some((Tensor::cat(k, 0), Tensor::cat(v, 0)))).collect();
    out.logits = Some(Tensor::cat(logits, 0));
    out
}

/// Drops leading columns that are no row's keys.
fn trim(part: &mut Part) {
    let first = part.mask.iter().map(|m| m.iter().position(|&x| !x).unwrap_or(m.len())).min().unwrap_or(0);
    if first == 0 {
        return;
    }
    part.cache.drop_front(first);
    for m in &mut part.mask {
        m.drain(..first);
    }
}
