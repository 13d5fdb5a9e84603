//! `r1s policy train`: stages of RL steps. A step samples prompts, runs `rollouts_per_prompt`
//! episodes of each through the agent loop (the policy and the retriever for real), scores them
//! with the stage's reward, and optimises ([`crate::rl::optimize`]). Metrics go to
//! `OUT/metrics.jsonl` (one line per step and per evaluation), every episode to
//! `OUT/rollouts.jsonl`, checkpoints to `OUT/checkpoints/step-N`. `--resume` continues from the
//! newest checkpoint exactly: data order and sampling derive from `(seed, step)`.

use std::time::Instant;

use r1s_agent::{LoopConfig, Question, Trajectory, read_questions};
use r1s_core::{Cancel, Finish, Progress, Retriever, Unit};
use r1s_policy::Policy;
use r1s_policy::chat::Template;
use serde_json::json;

pub use crate::seed::{lora_seed, mix, step_questions, unit};

use crate::checkpoint::{self, TrainerState, append, truncate_after};
use crate::config::{Stage, TrainConfig};
use crate::episode::{Sequence, tokenize};
use crate::error::{Result, TrainError};
use crate::model::Split;
use crate::optim::{AdamW, AdamWConfig};
use crate::prompt::PromptKind;
use crate::rl::{Episode, MemorySet, RlSettings, optimize_with_memory};

/// Rollout statistics of a set of trajectories (the format judged by `protocol`'s rules): RC (`rc`,
/// external searches per rollout; also `retrievals`), the share with at least one (`retrieval_rate`)
/// and with none (`zero_search`), recalled facts per rollout (`internal`), format and answers.
pub fn rollout_stats(
    trajs: &[Trajectory],
    questions: &[&Question],
    protocol: r1s_agent::Protocol,
) -> serde_json::Value {
    let n = trajs.len().max(1) as f64;
    let mut f1 = 0.0;
    let mut em = 0.0;
    let mut cover = 0.0;
    for (t, q) in trajs.iter().zip(questions) {
        let s = r1s_agent::metrics::score(&t.pred, &q.answers);
        f1 += s.f1;
        em += s.em;
        cover += s.cover_em;
    }
    let rc = trajs.iter().map(|t| t.queries.len()).sum::<usize>() as f64 / n;
    json!({
        "retrieval_rate": trajs.iter().filter(|t| !t.queries.is_empty()).count() as f64 / n,
        "retrievals": rc,
        "rc": rc,
        "zero_search": trajs.iter().filter(|t| t.queries.is_empty()).count() as f64 / n,
        "internal": trajs.iter().map(|t| protocol.internal_steps(&t.sol)).sum::<usize>() as f64 / n,
        "format_bad": trajs.iter().filter(|t| protocol.format_bad(&t.prompt, &t.sol)).count() as f64 / n,
        "f1": f1 / n,
        "em": em / n,
        "cover_em": cover / n,
    })
}

/// A retriever that adds the seconds its calls take (the rollouts' time spent waiting for
/// documents, during which the continuous batch does not decode: what overlapping retrieval with
/// decoding could save at most).
struct Timed<'a, R> {
    inner: &'a R,
    seconds: std::sync::Mutex<f64>,
}

impl<R: Retriever> Retriever for Timed<'_, R> {
    type Error = R::Error;
    fn retrieve(&self, queries: &[&str], k: usize) -> std::result::Result<Vec<Vec<r1s_core::Hit>>, R::Error> {
        let t = Instant::now();
        let hits = self.inner.retrieve(queries, k);
        *self.seconds.lock().unwrap_or_else(std::sync::PoisonError::into_inner) += t.elapsed().as_secs_f64();
        hits
    }
}

/// Runs `policy` over `prompts`, `batch` episodes at a time (the next starting as one ends).
pub fn rollouts<R: Retriever>(
    policy: &Policy,
    retriever: &R,
    prompts: &[String],
    cfg: &LoopConfig,
    batch: usize,
) -> Result<Vec<Trajectory>> {
    let cfg = LoopConfig { max_live: batch.max(1), ..cfg.clone() };
    Ok(r1s_agent::run(policy, retriever, prompts, &cfg)?)
}

/// The model of a model rewriter ([`crate::memorize::Rewriter::Model`]).
enum RewriterModel {
    Local(Box<Policy>),
    Http(r1s_agent::HttpPolicy),
}

/// The trainer.
pub struct Trainer<'a, R> {
    pub cfg: TrainConfig,
    pub split: Split,
    pub opt: AdamW,
    pub state: TrainerState,
    pub prompt: PromptKind,
    retriever: &'a R,
    progress: &'a dyn Progress,
    cancel: &'a Cancel,
    /// Episodes generated in one batch.
    pub generate_batch: usize,
    /// The memorisation rewriter's model, loaded when a stage first needs it.
    rewriter: Option<RewriterModel>,
}

impl<R> std::fmt::Debug for Trainer<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").field("state", &self.state).finish_non_exhaustive()
    }
}

fn adamw(cfg: &TrainConfig, lr: f64) -> AdamWConfig {
    let t = &cfg.train;
    AdamWConfig {
        lr,
        beta1: t.betas[0],
        beta2: t.betas[1],
        eps: t.eps,
        weight_decay: t.weight_decay,
        max_grad_norm: t.max_grad_norm,
    }
}

impl<'a, R: Retriever> Trainer<'a, R> {
    /// Loads the model (or, with `resume`, the newest checkpoint under `train.out`).
    pub fn new(
        cfg: TrainConfig,
        resume: bool,
        retriever: &'a R,
        progress: &'a dyn Progress,
        cancel: &'a Cancel,
    ) -> Result<Trainer<'a, R>> {
        let device = r1s_policy::device(&cfg.model.device)?;
        let out = cfg.train.out.clone();
        std::fs::create_dir_all(&out).map_err(|e| TrainError::io(&out, e))?;
        let from = if resume { checkpoint::latest(&out)? } else { None };
        if resume && from.is_none() {
            log::warn!("no checkpoint under {}; starting from {}", out.display(), cfg.model.init.display());
        }
        let with_ref = cfg.uses_kl();
        let t = cfg.train.clone();
        let lr0 = cfg.stages[0].lr.unwrap_or(cfg.train.lr);
        let (mut split, opt, state) = match &from {
            Some(dir) => {
                let state = checkpoint::read_state(dir)?;
                state.check_split(dir, t.train_blocks, t.lora.as_ref())?;
                if state.seed != t.seed {
                    return Err(TrainError::Checkpoint {
                        path: dir.clone(),
                        reason: "the seed differs from the configuration".into(),
                    });
                }
                let split = checkpoint::load_split(
                    dir,
                    &device,
                    t.train_blocks,
                    with_ref,
                    t.lora.as_ref(),
                    lora_seed(t.seed, state.stage),
                )?;
                let mut opt = AdamW::new(adamw(&cfg, lr0));
                checkpoint::load_optimizer(dir, &mut opt, &device)?;
                for f in ["metrics.jsonl", "rollouts.jsonl"] {
                    truncate_after(&out.join(f), state.global_step)?;
                }
                (split, opt, state)
            }
            None => {
                let policy = Policy::load(&cfg.model.init, &device)?;
                let split = Split::new(policy, t.train_blocks, with_ref, t.lora.as_ref(), lora_seed(t.seed, 0))?;
                let state = TrainerState {
                    global_step: 0,
                    stage: 0,
                    stage_step: 0,
                    seed: cfg.train.seed,
                    train_blocks: cfg.train.train_blocks,
                    lora: t.lora.clone(),
                    config: serde_json::to_value(&cfg).unwrap_or_default(),
                };
                for f in ["metrics.jsonl", "rollouts.jsonl"] {
                    let p = out.join(f);
                    if p.exists() {
                        std::fs::remove_file(&p).map_err(|e| TrainError::io(&p, e))?;
                    }
                }
                (split, AdamW::new(adamw(&cfg, lr0)), state)
            }
        };
        // rollouts and evaluations decode with these weights; scoring and training keep f32, and
        // every update packs the trained blocks again (Split::sync)
        split.policy.set_weights(cfg.model.weights)?;
        let template = Template::detect(split.policy.tokenizer.chat_template.as_deref());
        split.policy.continuous = cfg.train.continuous_batching;
        let prompt = PromptKind::parse(&cfg.train.prompt, template)?;
        Ok(Trainer { cfg, split, opt, state, prompt, retriever, progress, cancel, generate_batch: 32, rewriter: None })
    }

    fn save(&self) -> Result<()> {
        let dir = checkpoint::dir_for(&self.cfg.train.out, self.state.global_step);
        checkpoint::save(&dir, &self.split, &self.opt, &self.state)?;
        log::info!("checkpoint {}", dir.display());
        checkpoint::prune(&self.cfg.train.out, self.cfg.train.keep_checkpoints)
    }

    /// Greedy evaluation on the held-out questions under `stage`'s protocol (R1-Searcher's
    /// evaluation loop, or Search-R1's with the stage's searching turns).
    pub fn evaluate(&self, stage: &Stage) -> Result<Option<serde_json::Value>> {
        let Some(e) = &self.cfg.eval else { return Ok(None) };
        let qs = read_questions(&e.data, Some(e.limit))?;
        let protocol = stage.protocol(&self.cfg.train);
        let prompts: Vec<String> = qs.iter().map(|q| self.prompt.render_with(protocol, &q.question)).collect();
        let mut lc = LoopConfig::evaluation_for(protocol);
        if protocol == r1s_agent::Protocol::SearchR1 {
            lc.max_turns = stage.max_retrievals;
        }
        lc.topk = e.topk;
        lc.sampling.max_new_tokens = e.max_new_tokens;
        let t = Instant::now();
        let trajs = rollouts(&self.split.policy, self.retriever, &prompts, &lc, self.generate_batch)?;
        let refs: Vec<&Question> = qs.iter().collect();
        let mut row = rollout_stats(&trajs, &refs, protocol);
        row["kind"] = json!("eval");
        row["n"] = json!(qs.len());
        row["eval_s"] = json!(t.elapsed().as_secs_f64());
        Ok(Some(row))
    }

    fn log_eval(&self, stage: &Stage) -> Result<()> {
        if let Some(mut row) = self.evaluate(stage)? {
            row["stage"] = json!(stage.name);
            row["step"] = json!(self.state.global_step);
            log::info!("eval at step {}: {row}", self.state.global_step);
            append(&self.cfg.train.out.join("metrics.jsonl"), &row)?;
        }
        Ok(())
    }

    /// One RL step of `stage` on its questions; returns the metrics line.
    pub fn step(&mut self, stage: &Stage, questions: &[Question]) -> Result<serde_json::Value> {
        let t0 = Instant::now();
        let s = self.state.global_step;
        let picks = step_questions(
            questions.len(),
            mix(self.state.seed, self.state.stage as u64),
            self.state.stage_step,
            stage.prompts_per_step,
        );
        let mut prompts = Vec::new();
        let mut qrefs = Vec::new();
        let mut groups = Vec::new();
        let protocol = stage.protocol(&self.cfg.train);
        for (g, &qi) in picks.iter().enumerate() {
            let p = self.prompt.render_with(protocol, &questions[qi].question);
            for _ in 0..stage.rollouts_per_prompt {
                prompts.push(p.clone());
                qrefs.push(&questions[qi]);
                groups.push(g);
            }
        }
        let mut lc = LoopConfig::training(mix(self.state.seed, 1_000_003 + s as u64));
        lc.topk = stage.topk;
        lc.max_retrievals = stage.max_retrievals;
        lc.protocol = protocol;
        if protocol == r1s_agent::Protocol::SearchR1 {
            lc.max_turns = stage.max_retrievals;
        }
        lc.sampling.temperature = stage.temperature;
        lc.sampling.top_p = stage.top_p;
        lc.sampling.max_new_tokens = stage.max_new_tokens;
        let timed = Timed { inner: self.retriever, seconds: std::sync::Mutex::new(0.0) };
        let trajs = rollouts(&self.split.policy, &timed, &prompts, &lc, self.generate_batch)?;
        let rollout_s = t0.elapsed().as_secs_f64();
        let retrieval_s = timed.seconds.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.cancel.is_cancelled() {
            return Err(TrainError::Cancelled);
        }
        // the group-level reward step: each prompt's rollouts scored together
        let mut rewards = vec![0.0; trajs.len()];
        for members in r1s_agent::reward::group_indices(groups.iter().map(Some)) {
            let first = members[0];
            let rollouts: Vec<(&str, &str)> =
                members.iter().map(|&i| (trajs[i].prompt.as_str(), trajs[i].sol.as_str())).collect();
            let scored = r1s_agent::reward::score_group(stage.reward, &stage.group, &rollouts, &qrefs[first].answers);
            for (&i, r) in members.iter().zip(scored) {
                rewards[i] = r;
            }
        }
        let memory = self.memory_set(stage, &trajs, &qrefs)?;
        let tok = &self.split.policy.tokenizer;
        let eos = tok.eos.first().copied();
        let mut episodes = Vec::with_capacity(trajs.len());
        for ((t, &reward), &g) in trajs.iter().zip(&rewards).zip(&groups) {
            let ended_eos = matches!(t.turn_finishes.last(), Some(Finish::Eos));
            let seq: Sequence =
                tokenize(tok, &t.prompt, &t.sol, &t.spans, eos.filter(|_| ended_eos), self.cfg.train.max_len)?;
            let sampled = crate::rl::sampled_logprobs(&seq, &t.turn_tokens.concat(), &t.turn_logprobs.concat());
            episodes.push(Episode { group: g, reward, seq, sampled });
        }
        let settings = RlSettings {
            advantage: stage.advantage.unwrap_or(self.cfg.train.advantage),
            clip_eps: self.cfg.train.clip_eps,
            kl_beta: stage.kl_beta.unwrap_or(self.cfg.train.kl_beta),
            kl_estimator: self.cfg.train.kl_estimator,
            kl_placement: self.cfg.train.kl_placement,
            micro_batch: self.cfg.train.micro_batch,
            train_batch: stage.train_batch,
            epochs: self.cfg.train.epochs,
        };
        self.opt.cfg.lr = stage.lr.unwrap_or(self.cfg.train.lr);
        let t1 = Instant::now();
        let stats = optimize_with_memory(&mut self.split, &mut self.opt, &episodes, &memory.0, &settings)?;
        let train_s = t1.elapsed().as_secs_f64();
        self.state.global_step += 1;
        self.state.stage_step += 1;
        let n = rewards.len() as f64;
        let mean = rewards.iter().sum::<f64>() / n;
        let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
        let gen_tokens: usize = trajs.iter().flat_map(|t| &t.turn_tokens).map(Vec::len).sum();
        let step_s = t0.elapsed().as_secs_f64();
        let mut row = rollout_stats(&trajs, &qrefs, protocol);
        let mut extra = json!({
            "kind": "step", "stage": stage.name, "step": self.state.global_step, "stage_step": self.state.stage_step,
            "episodes": trajs.len(), "reward_mean": mean, "reward_std": std,
            "loss": stats.loss, "kl": stats.kl, "entropy": stats.entropy, "clip_frac": stats.clip_frac,
            "grad_norm": stats.grad_norm, "lr": self.opt.cfg.lr, "optimizer_steps": stats.optimizer_steps,
            "action_tokens": stats.action_tokens, "tokens": stats.tokens, "gen_tokens": gen_tokens,
            "gen_tokens_per_s": gen_tokens as f64 / rollout_s.max(1e-9),
            "tokens_per_s": stats.tokens as f64 / step_s.max(1e-9),
            "rollout_s": rollout_s, "retrieval_s": retrieval_s, "train_s": train_s, "step_s": step_s,
        });
        if let Some(m) = stats.mismatch {
            // the rollouts' log-probs (packed weights: --weights) against the trainer's f32 ones
            extra["rollout_kl"] = json!(m.kl);
            extra["rollout_ratio_mean"] = json!(m.ratio_mean);
            extra["rollout_ratio_min"] = json!(m.ratio_min);
            extra["rollout_ratio_max"] = json!(m.ratio_max);
            extra["rollout_aligned_tokens"] = json!(m.tokens);
        }
        if stage.memorize.is_some() {
            extra["mem_candidates"] = json!(memory.1);
            extra["mem_paths"] = json!(stats.mem_paths);
            extra["mem_tokens"] = json!(stats.mem_tokens);
            extra["mem_nll"] = json!(stats.mem_nll);
        }
        if let (Some(r), Some(e)) = (row.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
        let out = &self.cfg.train.out;
        append(&out.join("metrics.jsonl"), &row)?;
        for ((t, q), (&g, &r)) in trajs.iter().zip(&qrefs).zip(groups.iter().zip(&rewards)) {
            let line = json!({
                "step": self.state.global_step, "group": g, "id": q.id, "question": q.question, "answer": q.answers,
                "reward": r, "pred": t.pred, "queries": t.queries, "searches": t.queries.len(),
                "sol": t.sol, "stop_reason_final": t.stop_reason_final,
            });
            append(&out.join("rollouts.jsonl"), &line)?;
        }
        Ok(row)
    }

    /// The memorisation set of a step's rollouts under `stage.memorize` (empty without it), and how
    /// many rollouts were offered to the rewriter (correct, well-formed, searched).
    fn memory_set(&mut self, stage: &Stage, trajs: &[Trajectory], qs: &[&Question]) -> Result<(MemorySet, usize)> {
        use crate::memorize::{
            Candidate, Rewriter, collect_paths, model_prompt, retrieved_documents, rewrite_with_model,
        };
        let Some(m) = &stage.memorize else { return Ok((MemorySet::default(), 0)) };
        let candidates: Vec<Candidate<'_>> = trajs
            .iter()
            .zip(qs)
            .map(|(t, q)| Candidate { prompt: &t.prompt, question: &q.question, sol: &t.sol, golds: &q.answers })
            .filter(Candidate::eligible)
            .collect();
        let paths = match m.rewriter {
            Rewriter::Rule => crate::memorize::rule_paths(&candidates, m.max_paths),
            Rewriter::Model => {
                if self.rewriter.is_none() {
                    self.rewriter = Some(match m.model.as_deref() {
                        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                            let served = m.served_model.as_deref().unwrap_or("default");
                            RewriterModel::Http(r1s_agent::HttpPolicy::new(url, served))
                        }
                        other => {
                            let path = other.map_or_else(|| self.cfg.model.init.clone(), std::path::PathBuf::from);
                            let device = r1s_policy::device(&self.cfg.model.device)?;
                            let mut p = Policy::load(&path, &device)?;
                            p.set_weights(self.cfg.model.weights)?;
                            RewriterModel::Local(Box::new(p))
                        }
                    });
                }
                let contexts: Vec<String> = candidates
                    .iter()
                    .map(|c| {
                        let gold = c.golds.first().map_or("", String::as_str);
                        let ask = model_prompt(c.question, &retrieved_documents(c.sol), gold);
                        self.prompt.render_with(r1s_agent::Protocol::R1SearcherPlus, &ask)
                    })
                    .collect();
                let rewritten = match &self.rewriter {
                    Some(RewriterModel::Local(p)) => {
                        rewrite_with_model(p.as_ref(), &contexts, &candidates, m.max_new_tokens)?
                    }
                    Some(RewriterModel::Http(p)) => rewrite_with_model(p, &contexts, &candidates, m.max_new_tokens)?,
                    None => Vec::new(),
                };
                collect_paths(&candidates, rewritten, m.max_paths)
            }
        };
        let tok = &self.split.policy.tokenizer;
        let eos = tok.eos.first().copied();
        let seqs = paths
            .iter()
            .map(|p| {
                let spans = [r1s_agent::Span { source: r1s_agent::Source::Policy, start: 0, end: p.sol.len() }];
                tokenize(tok, &p.prompt, &p.sol, &spans, eos, self.cfg.train.max_len)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((MemorySet { seqs, mu: m.mu as f32 }, candidates.len()))
    }

    /// Runs the remaining stages; `on_step` sees every metrics line.
    pub fn run(&mut self, on_step: &mut dyn FnMut(&serde_json::Value)) -> Result<()> {
        let stages = self.cfg.stages.clone();
        while self.state.stage < stages.len() {
            let stage = &stages[self.state.stage];
            let questions = read_questions(&stage.data, None)?;
            if questions.is_empty() {
                return Err(TrainError::Options(format!(
                    "stage {:?}: {} has no questions",
                    stage.name,
                    stage.data.display()
                )));
            }
            if self.state.stage_step == 0 {
                // each stage starts from the previous one's result, which is its reference
                if self.state.stage > 0 {
                    self.split.rebase(lora_seed(self.cfg.train.seed, self.state.stage), &mut self.opt)?;
                }
                // the previous stage's last evaluation already measured this model
                if self.state.global_step == 0 {
                    self.log_eval(stage)?;
                }
            }
            self.progress.start(&stage.name, Some(stage.steps as u64), Unit::Items);
            self.progress.advance(self.state.stage_step as u64);
            let every = self.cfg.eval.as_ref().map_or(0, |e| e.every);
            while self.state.stage_step < stage.steps {
                if self.cancel.is_cancelled() {
                    return Err(TrainError::Cancelled);
                }
                let row = self.step(stage, &questions)?;
                on_step(&row);
                self.progress.advance(1);
                let done = self.state.stage_step == stage.steps;
                if every > 0 && (done || self.state.stage_step.is_multiple_of(every)) {
                    self.log_eval(stage)?;
                }
                let save_every = self.cfg.train.save_every;
                if done {
                    // the checkpoint at the end of a stage says: next stage, step 0
                    self.state.stage += 1;
                    self.state.stage_step = 0;
                    self.save()?;
                    break;
                }
                if save_every > 0 && self.state.global_step.is_multiple_of(save_every) {
                    self.save()?;
                }
            }
            self.progress.finish(&format!("{} done", stage.name));
        }
        Ok(())
    }
}
