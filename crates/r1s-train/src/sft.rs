//! `r1s policy sft`: a supervised cold start on trajectories (R1-Searcher++'s first stage): the
//! negative log-likelihood of the policy's own tokens, retrieved documents masked out exactly as in
//! RL. Lines are r1s trajectories / eval results (`prompt` + `sol`, optional `spans`) or released
//! R1-Searcher outputs (`question` + `gen_text_store`; the prompt is rebuilt).

use std::path::{Path, PathBuf};
use std::time::Instant;

use r1s_agent::Span;
use r1s_core::{Cancel, Progress, Unit};
use r1s_policy::Policy;
use r1s_policy::chat::Template;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::checkpoint::{self, TrainerState};
use crate::episode::{Micro, Sequence, micro_batches, tokenize};
use crate::error::{Result, TrainError};
use crate::loss::nll_loss;
use crate::model::Split;
use crate::optim::{AdamW, AdamWConfig};
use crate::prompt::PromptKind;
use crate::seed::{lora_seed, step_questions};

/// SFT settings (the command's flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftOptions {
    pub data: PathBuf,
    pub init: PathBuf,
    pub out: PathBuf,
    pub device: String,
    pub train_blocks: usize,
    /// LoRA adapters on the trainable blocks instead of their weights.
    #[serde(default)]
    pub lora: Option<crate::config::LoraConfig>,
    pub lr: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub epochs: usize,
    /// Examples per optimizer step.
    pub batch: usize,
    pub micro_batch: usize,
    pub max_len: usize,
    pub save_every: usize,
    /// Complete checkpoints kept (0: all).
    pub keep_checkpoints: usize,
    pub prompt: String,
    /// The protocol of the trajectories (their prompts are rebuilt under it).
    pub protocol: r1s_agent::Protocol,
    pub seed: u64,
}

/// One example: prompt, solution and who wrote which part of the solution.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub prompt: String,
    pub sol: String,
    pub spans: Vec<Span>,
}

/// Reads SFT examples; `prompt` rebuilds prompts of `protocol` for lines that only carry a question.
/// A line naming another `"protocol"` is refused (its tags would be trained under the wrong prompt).
pub fn read_examples(path: &Path, prompt: &PromptKind, protocol: r1s_agent::Protocol) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |reason: String| TrainError::BadLine { path: path.into(), line: i + 1, reason };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        if let Some(p) = v.get("protocol").filter(|p| !p.is_null()) {
            let theirs: r1s_agent::Protocol =
                serde_json::from_value(p.clone()).map_err(|e| bad(format!("protocol: {e}")))?;
            if theirs != protocol {
                let name = |p: r1s_agent::Protocol| serde_json::json!(p).as_str().unwrap_or_default().to_owned();
                return Err(bad(format!(
                    "a {} trajectory; train it with --protocol {} (this run: {})",
                    name(theirs),
                    name(theirs),
                    name(protocol)
                )));
            }
        }
        let sol = v["sol"]
            .as_str()
            .or_else(|| v["gen_text_store"].as_str())
            .ok_or_else(|| bad("no \"sol\" or \"gen_text_store\" string".into()))?
            .to_owned();
        let p = match (v["prompt"].as_str(), v["question"].as_str()) {
            (Some(p), _) => p.to_owned(),
            (None, Some(q)) => prompt.render_with(protocol, q),
            (None, None) => return Err(bad("no \"prompt\" or \"question\" string".into())),
        };
        let spans = match v.get("spans") {
            Some(s) if !s.is_null() => {
                let spans: Vec<Span> = serde_json::from_value(s.clone()).map_err(|e| bad(format!("spans: {e}")))?;
                let covered = spans.windows(2).all(|w| w[0].end == w[1].start)
                    && spans.first().is_none_or(|s| s.start == 0)
                    && spans.last().is_none_or(|s| s.end == sol.len());
                if !covered
                    || spans
                        .iter()
                        .any(|s| s.start > s.end || !sol.is_char_boundary(s.start) || !sol.is_char_boundary(s.end))
                {
                    return Err(bad("spans do not cover the solution in order at character boundaries".into()));
                }
                spans
            }
            _ => protocol.spans_of_text(&sol),
        };
        out.push(Example { prompt: p, sol, spans });
    }
    if out.is_empty() {
        return Err(TrainError::Options(format!("{}: no examples", path.display())));
    }
    Ok(out)
}

/// Runs SFT (resuming from the newest checkpoint under `out` when `resume`); `on_step` sees every
/// metrics line (also appended to `out/metrics.jsonl`).
pub fn sft(
    o: &SftOptions,
    resume: bool,
    progress: &dyn Progress,
    cancel: &Cancel,
    on_step: &mut dyn FnMut(&serde_json::Value),
) -> Result<PathBuf> {
    let device = r1s_policy::device(&o.device)?;
    std::fs::create_dir_all(&o.out).map_err(|e| TrainError::io(&o.out, e))?;
    let from = if resume { checkpoint::latest(&o.out)? } else { None };
    let adam = AdamWConfig {
        lr: o.lr,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: o.weight_decay,
        max_grad_norm: o.max_grad_norm,
    };
    let mut opt = AdamW::new(adam);
    let metrics = o.out.join("metrics.jsonl");
    let (mut split, mut state) = match &from {
        Some(dir) => {
            let state = checkpoint::read_state(dir)?;
            checkpoint::load_optimizer(dir, &mut opt, &device)?;
            // a resumed run replays the steps after the checkpoint
            checkpoint::truncate_after(&metrics, state.global_step)?;
            state.check_split(dir, o.train_blocks, o.lora.as_ref())?;
            let seed = lora_seed(o.seed, 0);
            (checkpoint::load_split(dir, &device, o.train_blocks, false, o.lora.as_ref(), seed)?, state)
        }
        None => {
            if metrics.exists() {
                std::fs::remove_file(&metrics).map_err(|e| TrainError::io(&metrics, e))?;
            }
            let state = TrainerState {
                global_step: 0,
                stage: 0,
                stage_step: 0,
                seed: o.seed,
                train_blocks: o.train_blocks,
                lora: o.lora.clone(),
                config: serde_json::to_value(o).unwrap_or_default(),
            };
            let seed = lora_seed(o.seed, 0);
            (Split::new(Policy::load(&o.init, &device)?, o.train_blocks, false, o.lora.as_ref(), seed)?, state)
        }
    };
    let template = Template::detect(split.policy.tokenizer.chat_template.as_deref());
    let kind = PromptKind::parse(&o.prompt, template)?;
    let examples = read_examples(&o.data, &kind, o.protocol)?;
    let tok = split.policy.tokenizer.clone();
    let eos = tok.eos.first().copied();
    let batch = o.batch.max(1);
    let steps = (examples.len() * o.epochs).div_ceil(batch);
    progress.start("sft", Some(steps as u64), Unit::Items);
    progress.advance(state.global_step as u64);
    let mut last = from.unwrap_or_default();
    while state.global_step < steps {
        if cancel.is_cancelled() {
            return Err(TrainError::Cancelled);
        }
        let t0 = Instant::now();
        let picks = step_questions(examples.len(), o.seed, state.global_step, batch);
        let seqs: Vec<Sequence> = picks
            .iter()
            .map(|&i| {
                let e = &examples[i];
                tokenize(&tok, &e.prompt, &e.sol, &e.spans, eos, o.max_len)
            })
            .collect::<Result<_>>()?;
        let members: Vec<usize> = (0..seqs.len()).collect();
        let mut loss_sum = 0.0;
        let mut nll_tokens = 0.0;
        let mut action_tokens = 0usize;
        for mb in micro_batches(&seqs, &members, o.micro_batch) {
            let m = Micro::new(&split, &seqs, mb)?;
            if m.rows.is_empty() {
                continue;
            }
            let weight: Vec<f32> =
                m.owner.iter().map(|&r| 1.0 / (seqs[m.episodes[r]].actions.len() as f32 * seqs.len() as f32)).collect();
            let (logp, _) = split.score_trained(m.boundary.clone(), &m.step, &m.rows, &m.targets, false)?;
            let lp = crate::episode::to_vec(logp.clone().detach())?;
            nll_tokens -= lp.iter().map(|&x| f64::from(x)).sum::<f64>();
            action_tokens += lp.len();
            let n = weight.len();
            let w = burn::tensor::Tensor::<1>::from_data(burn::tensor::TensorData::new(weight, [n]), &split.ad);
            let l = nll_loss(logp, w);
            loss_sum += f64::from(l.clone().inner().into_scalar::<f32>());
            let grads = l.backward();
            opt.accumulate(split.params_mut(), &grads);
        }
        let ad = split.ad.clone();
        let info = opt.step(split.params_mut(), &ad);
        split.sync()?;
        state.global_step += 1;
        let dt = t0.elapsed().as_secs_f64();
        let row = json!({
            "kind": "sft", "stage": "sft", "step": state.global_step, "loss": loss_sum,
            "token_nll": nll_tokens / action_tokens.max(1) as f64, "grad_norm": info.grad_norm,
            "action_tokens": action_tokens, "tokens": seqs.iter().map(|s| s.tokens.len()).sum::<usize>(),
            "lr": o.lr, "step_s": dt,
        });
        checkpoint::append(&metrics, &row)?;
        on_step(&row);
        progress.advance(1);
        if state.global_step == steps || (o.save_every > 0 && state.global_step.is_multiple_of(o.save_every)) {
            last = checkpoint::dir_for(&o.out, state.global_step);
            checkpoint::save(&last, &split, &opt, &state)?;
            checkpoint::prune(&o.out, o.keep_checkpoints)?;
        }
    }
    progress.finish("sft done");
    Ok(last)
}
