//! One RL optimisation on a step's episodes: experience (old and reference log-probs, per-token
//! KL, advantages) and then PPO-clip updates in micro-batches with gradient accumulation.

use burn::tensor::{Tensor, TensorData};

use crate::episode::{Micro, Sequence, micro_batches, to_vec};
use crate::error::{Result, TrainError};
use crate::loss::{self, Advantage, KlEstimator, KlPlacement};
use crate::model::Split;
use crate::optim::AdamW;

/// One episode ready for training.
#[derive(Debug, Clone)]
pub struct Episode {
    /// Its prompt group (rollouts of the same question).
    pub group: usize,
    pub reward: f64,
    pub seq: Sequence,
    /// The sampler's log-probs of the first `len` actions of `seq` (in order), where the rollout
    /// exposed them and its sampled tokens are those actions ([`sampled_logprobs`]); only measured
    /// ([`StepStats::mismatch`]), the loss uses the old log-probs recomputed here.
    pub sampled: Option<Vec<f32>>,
}

/// The sampler's log-probs aligned to `seq`'s actions: the longest common prefix of the action
/// tokens and the `sampled` tokens (a turn's tokens one after another; a sequence cut at
/// `max_len`, an EOS appended or a retokenized span end it early), with their `logprobs`. `None`
/// when nothing is aligned or the sampler gave no log-probs.
pub fn sampled_logprobs(seq: &Sequence, sampled: &[u32], logprobs: &[f32]) -> Option<Vec<f32>> {
    if sampled.len() != logprobs.len() {
        return None;
    }
    let n = seq.actions.iter().zip(sampled).take_while(|&(&p, &t)| seq.tokens.get(p) == Some(&t)).count();
    (n > 0).then(|| logprobs[..n].to_vec())
}

/// How far the sampler's log-probs of the actions are from the trainer's (the old log-probs, f32),
/// over the tokens [`sampled_logprobs`] aligned: the gap between a rollout engine and the trainer
/// (packed weights, other kernels) that makes PPO's first ratio `π_θ / π_sampler` differ from 1.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Mismatch {
    /// Aligned action tokens, and episodes with any.
    pub tokens: usize,
    pub episodes: usize,
    /// Mean of `log π_sampler − log π_trainer`: the k1 estimate of KL(sampler ‖ trainer) (the
    /// tokens were drawn from the sampler), in nats per token.
    pub kl: f64,
    /// Mean, least and greatest per-token importance ratio `π_trainer / π_sampler`.
    pub ratio_mean: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
}

impl Mismatch {
    /// The mismatch of `old` (`[episode][action]`) against `sampled` (`[episode]`, a prefix of its
    /// actions each); `None` when no token is aligned.
    pub fn measure(old: &[Vec<f32>], sampled: &[Option<&[f32]>]) -> Option<Mismatch> {
        let mut m = Mismatch { ratio_min: f64::INFINITY, ratio_max: f64::NEG_INFINITY, ..Mismatch::default() };
        for (o, s) in old.iter().zip(sampled) {
            let Some(s) = s else { continue };
            let mut any = false;
            for (&a, &b) in o.iter().zip(s.iter()) {
                let d = f64::from(a) - f64::from(b);
                let r = d.exp();
                m.kl -= d;
                m.ratio_mean += r;
                m.ratio_min = m.ratio_min.min(r);
                m.ratio_max = m.ratio_max.max(r);
                m.tokens += 1;
                any = true;
            }
            m.episodes += usize::from(any);
        }
        (m.tokens > 0).then(|| Mismatch { kl: m.kl / m.tokens as f64, ratio_mean: m.ratio_mean / m.tokens as f64, ..m })
    }
}

/// The loss settings of a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RlSettings {
    pub advantage: Advantage,
    pub clip_eps: f32,
    pub kl_beta: f32,
    pub kl_estimator: KlEstimator,
    pub kl_placement: KlPlacement,
    pub micro_batch: usize,
    /// Episodes per optimizer step (0: all).
    pub train_batch: usize,
    pub epochs: usize,
}

/// What a step measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepStats {
    /// Mean loss over optimizer steps (each the train batch's loss).
    pub loss: f64,
    /// Masked mean of the KL estimate (old vs reference) over action tokens.
    pub kl: f64,
    /// Masked mean entropy of the policy over its action tokens (at rollout time).
    pub entropy: f64,
    /// Fraction of action tokens whose clipped branch was taken.
    pub clip_frac: f64,
    /// Mean global gradient norm (before clipping).
    pub grad_norm: f64,
    pub optimizer_steps: usize,
    /// Action tokens and all tokens of the step's sequences.
    pub action_tokens: usize,
    pub tokens: usize,
    /// The memorisation term: paths trained on, their tokens, and `L_M`, their NLL per token
    /// (mean over optimizer steps, before the weight μ).
    pub mem_paths: usize,
    pub mem_tokens: usize,
    pub mem_nll: f64,
    /// The sampler's log-probs against the old ones, where episodes carried them.
    pub mismatch: Option<Mismatch>,
}

/// The memorisation set of a step (R1-Searcher++): sequences whose every token after the prompt is
/// the policy's, trained with `μ · NLL` beside the RL loss.
#[derive(Debug, Clone, Default)]
pub struct MemorySet {
    pub seqs: Vec<Sequence>,
    /// μ (0 or no sequences: no term).
    pub mu: f32,
}

fn tensor1(v: &[f32], device: &burn::tensor::Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

/// Experience and optimisation for `episodes`. Leaves the plain model equal to the trained top.
pub fn optimize(split: &mut Split, opt: &mut AdamW, episodes: &[Episode], s: &RlSettings) -> Result<StepStats> {
    optimize_with_memory(split, opt, episodes, &MemorySet::default(), s)
}

/// [`optimize`] with R1-Searcher++'s memorisation term: each optimizer step's loss is
/// `L = −J_batch + μ · NLL(T_b)`, where the memorisation paths are dealt round-robin to the train
/// batches (`T_b`: path `j` goes to batch `j mod batches`) and `NLL(T_b)` is the mean negative
/// log-likelihood over all their action tokens ([`crate::loss::memory_loss`]).
pub fn optimize_with_memory(
    split: &mut Split,
    opt: &mut AdamW,
    episodes: &[Episode],
    memory: &MemorySet,
    s: &RlSettings,
) -> Result<StepStats> {
    let n = episodes.len();
    if n == 0 {
        return Err(TrainError::Options("a step with no episodes".into()));
    }
    let use_ref = s.kl_beta > 0.0;
    if use_ref && split.reference.is_none() {
        return Err(TrainError::Options("a KL term needs the reference model".into()));
    }
    let seqs: Vec<Sequence> = episodes.iter().map(|e| e.seq.clone()).collect();
    let tb = if s.train_batch == 0 { n } else { s.train_batch.min(n) };
    let batches: Vec<Vec<usize>> = (0..n).collect::<Vec<_>>().chunks(tb).map(<[usize]>::to_vec).collect();

    // experience: frozen prefix once, old and reference log-probs
    let plain = split.plain_top();
    let mut micros: Vec<(usize, Micro)> = Vec::new();
    for (bi, members) in batches.iter().enumerate() {
        for mb in micro_batches(&seqs, members, s.micro_batch) {
            let mut m = Micro::new(split, &seqs, mb)?;
            (m.old, m.entropy) = m.score_plain(split, &plain, true)?;
            if let Some(r) = split.reference.as_ref().filter(|_| use_ref) {
                m.reference = m.score_plain(split, r, false)?.0;
            }
            micros.push((bi, m));
        }
    }
    // the memorisation paths: frozen prefix once, dealt to the batches
    let use_mem = memory.mu > 0.0 && !memory.seqs.is_empty();
    let mut mem_micros: Vec<(usize, Micro, f32)> = Vec::new();
    if use_mem {
        let nb = batches.len();
        for bi in 0..nb {
            let members: Vec<usize> = (bi..memory.seqs.len()).step_by(nb).collect();
            let tokens: usize = members.iter().map(|&j| memory.seqs[j].actions.len()).sum();
            if tokens == 0 {
                continue;
            }
            for mb in micro_batches(&memory.seqs, &members, s.micro_batch) {
                mem_micros.push((bi, Micro::new(split, &memory.seqs, mb)?, tokens as f32));
            }
        }
    }
    let ms: Vec<&Micro> = micros.iter().map(|(_, m)| m).collect();
    let gather = |f: &dyn Fn(&Micro) -> &Vec<f32>| {
        let mut rows = vec![Vec::new(); n];
        for m in &ms {
            for (&r, &v) in m.owner.iter().zip(f(m)) {
                rows[m.episodes[r]].push(v);
            }
        }
        rows
    };
    let old = gather(&|m| &m.old);
    let reference = if use_ref { gather(&|m| &m.reference) } else { vec![Vec::new(); n] };
    let entropy = gather(&|m| &m.entropy);
    let kl_rows: Vec<Vec<f32>> = old
        .iter()
        .zip(&reference)
        .map(|(o, r)| o.iter().zip(r).map(|(&a, &b)| loss::kl(s.kl_estimator, a, b)).collect())
        .collect();

    // advantages
    let rewards: Vec<f64> = episodes.iter().map(|e| e.reward).collect();
    let groups: Vec<usize> = episodes.iter().map(|e| e.group).collect();
    let shaped = loss::baseline(s.advantage, &rewards, &groups);
    let mut adv: Vec<Vec<f32>> = shaped
        .iter()
        .zip(&kl_rows)
        .zip(&old)
        .map(|((&r, kl), o)| {
            let penalty: Vec<f32> = if use_ref && s.kl_placement == KlPlacement::Reward {
                kl.iter().map(|k| k * s.kl_beta).collect()
            } else {
                Vec::new()
            };
            loss::returns(r, &penalty, o.len())
        })
        .collect();
    if s.advantage == Advantage::ReinforceBaseline {
        loss::whiten(&mut adv);
    }
    let mut batch_size = vec![0usize; n];
    for members in &batches {
        for &i in members {
            batch_size[i] = members.len();
        }
    }
    for (_, m) in &mut micros {
        let mut cursor = vec![0usize; m.episodes.len()];
        m.adv = Vec::with_capacity(m.rows.len());
        m.weight = Vec::with_capacity(m.rows.len());
        for &r in &m.owner {
            let e = m.episodes[r];
            m.adv.push(adv[e][cursor[r]]);
            cursor[r] += 1;
            m.weight.push(1.0 / (old[e].len() as f32 * batch_size[e] as f32));
        }
    }

    // optimisation
    let mut stats = StepStats {
        kl: loss::masked_mean(&kl_rows),
        entropy: loss::masked_mean(&entropy),
        action_tokens: old.iter().map(Vec::len).sum(),
        tokens: seqs.iter().map(|q| q.tokens.len()).sum(),
        mem_paths: if use_mem { memory.seqs.len() } else { 0 },
        mem_tokens: if use_mem { memory.seqs.iter().map(|q| q.actions.len()).sum() } else { 0 },
        mismatch: Mismatch::measure(&old, &episodes.iter().map(|e| e.sampled.as_deref()).collect::<Vec<_>>()),
        ..StepStats::default()
    };
    let mut mem_steps = 0usize;
    let (mut clipped, mut counted) = (0usize, 0usize);
    let dev = split.ad.clone();
    for _ in 0..s.epochs {
        for bi in 0..batches.len() {
            let mut batch_loss = 0.0;
            for (_, m) in micros.iter().filter(|(b, _)| *b == bi) {
                if m.rows.is_empty() {
                    continue;
                }
                let (logp, _) = split.score_trained(m.boundary.clone(), &m.step, &m.rows, &m.targets, false)?;
                let values = to_vec(logp.clone().detach())?;
                for ((&lp, &o), &a) in values.iter().zip(&m.old).zip(&m.adv) {
                    clipped += usize::from(loss::ppo_token(lp, o, a, s.clip_eps).1);
                    counted += 1;
                }
                let kl_term =
                    (use_ref && s.kl_placement == KlPlacement::Loss).then(|| (tensor1(&m.reference, &dev), s.kl_beta));
                let l = loss::ppo_loss(
                    logp,
                    tensor1(&m.old, &dev),
                    tensor1(&m.adv, &dev),
                    tensor1(&m.weight, &dev),
                    s.clip_eps,
                    kl_term,
                );
                batch_loss += f64::from(l.clone().inner().into_scalar::<f32>());
                let grads = l.backward();
                opt.accumulate(split.params_mut(), &grads);
            }
            let mut batch_nll = None;
            for (_, m, tokens) in mem_micros.iter().filter(|(b, m, _)| *b == bi && !m.rows.is_empty()) {
                let (logp, _) = split.score_trained(m.boundary.clone(), &m.step, &m.rows, &m.targets, false)?;
                let l = loss::memory_loss(logp, *tokens, memory.mu);
                let v = f64::from(l.clone().inner().into_scalar::<f32>());
                batch_loss += v;
                *batch_nll.get_or_insert(0.0) += v / f64::from(memory.mu);
                let grads = l.backward();
                opt.accumulate(split.params_mut(), &grads);
            }
            if let Some(nll) = batch_nll {
                stats.mem_nll += nll;
                mem_steps += 1;
            }
            let info = opt.step(split.params_mut(), &dev);
            stats.loss += batch_loss;
            stats.grad_norm += info.grad_norm;
            stats.optimizer_steps += 1;
        }
    }
    split.sync()?;
    let k = stats.optimizer_steps.max(1) as f64;
    stats.loss /= k;
    stats.grad_norm /= k;
    stats.clip_frac = if counted == 0 { 0.0 } else { clipped as f64 / counted as f64 };
    stats.mem_nll /= mem_steps.max(1) as f64;
    Ok(stats)
}
