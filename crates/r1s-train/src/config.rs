//! `train.toml`: the model, the retriever, the shared training settings and one or more stages.
//!
//! ```toml
//! [model]
//! init = "smollm2"            # GGUF file, Hugging Face directory or r1s checkpoint directory
//! [retriever]
//! index = "indexes/sample"    # or url = "http://host:port/retrieve"
//! [train]
//! out = "runs/demo"
//! train_blocks = 4            # the last K blocks (0: all)
//! lr = 2e-6
//! [train.lora]                # optional: LoRA adapters on those blocks instead of their weights
//! rank = 8
//! alpha = 16
//! [[stage]]
//! name = "stage1"
//! data = "stage_1.jsonl"
//! reward = "stage1"
//! steps = 100
//! ```

use std::path::{Path, PathBuf};

use r1s_agent::Reward;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::loss::{Advantage, KlEstimator, KlPlacement};

/// The projections of a block, by their Hugging Face names (the order of `r1s_policy::adapter::PROJECTION_PATHS`):
/// what `[train.lora] targets` may name.
pub const PROJECTIONS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelConfig,
    #[serde(default)]
    pub retriever: RetrieverConfig,
    #[serde(default)]
    pub train: Settings,
    #[serde(default)]
    pub eval: Option<EvalConfig>,
    #[serde(default, rename = "stage")]
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A GGUF file, a Hugging Face directory, an r1s checkpoint directory, or `smollm2`.
    pub init: PathBuf,
    #[serde(default = "default_device")]
    pub device: String,
    /// The weights rollouts and evaluations decode with: `f32` (the default), `bf16` or `q8_0`
    /// (packed copies, [`r1s_policy::Policy::set_weights`]; device `cpu` only). Scoring and
    /// training keep the f32 weights; each update packs the trained blocks again.
    #[serde(default)]
    pub weights: r1s_policy::WeightFormat,
}

fn default_device() -> String {
    "cpu".into()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrieverConfig {
    /// An r1s index directory (in-process retrieval).
    pub index: Option<PathBuf>,
    /// A retrieval server: `.../retrieve` (Search-R1) or `.../queries` (R1-Searcher).
    pub url: Option<String>,
}

/// Settings shared by all stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where checkpoints, metrics.jsonl and samples go.
    pub out: PathBuf,
    pub seed: u64,
    /// Train the last K blocks and the final norm (0: every block).
    pub train_blocks: usize,
    /// Train LoRA adapters on the projections of those blocks instead of the blocks themselves.
    pub lora: Option<LoraConfig>,
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// Episodes per forward/backward pass.
    pub micro_batch: usize,
    pub clip_eps: f32,
    pub kl_beta: f32,
    pub kl_estimator: KlEstimator,
    pub kl_placement: KlPlacement,
    pub advantage: Advantage,
    /// Passes over each step's episodes.
    pub epochs: usize,
    /// Checkpoint every N steps (and at the end of every stage).
    pub save_every: usize,
    /// Complete checkpoints kept (older ones are deleted after a newer one is written; 0 keeps all).
    pub keep_checkpoints: usize,
    /// `chat` (the model's chat template with the protocol's messages) or `base`.
    pub prompt: String,
    /// `r1-searcher` (default) or `search-r1`: prompts, tags and the loop of every stage that does
    /// not set its own.
    pub protocol: r1s_agent::Protocol,
    /// Longest sequence trained on (prompt + solution, tokens); longer episodes are cut.
    pub max_len: usize,
    /// Rollouts batch continuously (true): an episode's next turn joins the batch as soon as its
    /// retrieval returns, and reuses its cache. False: in rounds, every turn waiting for the slowest
    /// episode.
    pub continuous_batching: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            out: PathBuf::from("runs/train"),
            seed: 1,
            train_blocks: 0,
            lora: None,
            lr: 2e-6,
            betas: [0.9, 0.95],
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            micro_batch: 4,
            clip_eps: 0.2,
            kl_beta: 1e-4,
            kl_estimator: KlEstimator::K1,
            kl_placement: KlPlacement::Reward,
            advantage: Advantage::ReinforceBaseline,
            epochs: 1,
            save_every: 10,
            keep_checkpoints: 2,
            prompt: "chat".into(),
            protocol: r1s_agent::Protocol::R1Searcher,
            max_len: 2048,
            continuous_batching: true,
        }
    }
}

/// LoRA (Hu et al. 2021) on the trainable blocks: each targeted projection `W` (`[in, out]`) runs as
/// `W + (alpha / rank) · A · B` with `A` `[in, rank]` and `B` `[rank, out]` trained and `W` frozen;
/// `B` starts at zero, so training starts from the model as loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// Projections by their Hugging Face names (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`,
    /// `up_proj`, `down_proj`).
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> LoraConfig {
        LoraConfig { rank: 8, alpha: 16.0, targets: PROJECTIONS.iter().map(|p| p.to_string()).collect() }
    }
}

impl LoraConfig {
    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn check(&self) -> std::result::Result<(), String> {
        if self.rank == 0 || !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(format!("lora: rank must be ≥ 1 and alpha > 0 (rank {}, alpha {})", self.rank, self.alpha));
        }
        if self.targets.is_empty() {
            return Err("lora.targets is empty".into());
        }
        if let Some(t) = self.targets.iter().find(|t| !PROJECTIONS.contains(&t.as_str())) {
            return Err(format!("lora.targets: {t:?} is not one of {}", PROJECTIONS.join(", ")));
        }
        Ok(())
    }
}

/// Held-out evaluation during training (greedy; the evaluation loop of the stage's protocol).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    pub data: PathBuf,
    #[serde(default = "default_eval_limit")]
    pub limit: usize,
    /// Evaluate every N steps (and before the first and after the last step of every stage).
    #[serde(default = "default_eval_every")]
    pub every: usize,
    #[serde(default = "default_eval_topk")]
    pub topk: usize,
    #[serde(default = "default_max_new")]
    pub max_new_tokens: usize,
}

fn default_eval_limit() -> usize {
    32
}
fn default_eval_every() -> usize {
    10
}
fn default_eval_topk() -> usize {
    5
}
fn default_max_new() -> usize {
    512
}

/// One stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: String,
    /// Questions (R1-Searcher or FlashRAG JSONL).
    pub data: PathBuf,
    pub reward: Reward,
    pub steps: usize,
    /// Prompts per step (the rollout batch).
    #[serde(default = "d_prompts")]
    pub prompts_per_step: usize,
    /// Rollouts per prompt (the group).
    #[serde(default = "d_rollouts")]
    pub rollouts_per_prompt: usize,
    /// Episodes per optimizer step (0: all of the step's episodes).
    #[serde(default)]
    pub train_batch: usize,
    #[serde(default = "d_temperature")]
    pub temperature: f32,
    #[serde(default = "d_top_p")]
    pub top_p: f32,
    #[serde(default = "default_max_new")]
    pub max_new_tokens: usize,
    #[serde(default = "d_retrievals")]
    pub max_retrievals: usize,
    #[serde(default = "d_topk")]
    pub topk: usize,
    /// Overrides `train.lr` for this stage.
    #[serde(default)]
    pub lr: Option<f64>,
    /// Overrides `train.advantage` for this stage.
    #[serde(default)]
    pub advantage: Option<Advantage>,
    /// Overrides `train.kl_beta` for this stage.
    #[serde(default)]
    pub kl_beta: Option<f32>,
    /// Overrides `train.protocol` for this stage. Under `search-r1`, `max_retrievals` is the number of
    /// turns that may search (Search-R1's `max_turns`); a final turn follows.
    #[serde(default)]
    pub protocol: Option<r1s_agent::Protocol>,
    /// The group reward of a group-level reward (`r1searcher-plus`): η, σ's ddof, ties
    /// (`[stage.group]`; defaults η = 2, ddof 0, every tied rollout).
    #[serde(default)]
    pub group: r1s_agent::plus::GroupReward,
    /// R1-Searcher++'s memorisation during RL (`[stage.memorize]`; off when absent).
    #[serde(default)]
    pub memorize: Option<crate::memorize::Memorize>,
}

impl Stage {
    /// The stage's protocol: its own, else the run's.
    pub fn protocol(&self, train: &Settings) -> r1s_agent::Protocol {
        self.protocol.unwrap_or(train.protocol)
    }
}

fn d_prompts() -> usize {
    64
}
fn d_rollouts() -> usize {
    16
}
fn d_temperature() -> f32 {
    1.0
}
fn d_top_p() -> f32 {
    0.95
}
fn d_retrievals() -> usize {
    8
}
fn d_topk() -> usize {
    3
}

impl TrainConfig {
    /// Whether some stage has a KL term (and so needs the reference model).
    pub fn uses_kl(&self) -> bool {
        self.stages.iter().any(|s| s.kl_beta.unwrap_or(self.train.kl_beta) > 0.0)
    }

    /// Reads and checks a config file. Relative paths in it are taken from the current directory,
    /// as on the command line.
    pub fn read(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let cfg: TrainConfig =
            toml::from_str(&text).map_err(|e| TrainError::Config { path: path.into(), reason: e.to_string() })?;
        cfg.check().map_err(|reason| TrainError::Config { path: path.into(), reason })?;
        Ok(cfg)
    }

    /// Consistency checks.
    pub fn check(&self) -> std::result::Result<(), String> {
        let t = &self.train;
        if self.stages.is_empty() {
            return Err("no [[stage]]".into());
        }
        if t.lr.is_nan() || t.lr <= 0.0 || t.micro_batch == 0 || t.epochs == 0 || t.max_len < 2 {
            return Err("train.lr must be > 0; micro_batch, epochs ≥ 1; max_len ≥ 2".into());
        }
        if !["chat", "base"].contains(&t.prompt.as_str()) {
            return Err(format!("train.prompt is {:?} (chat, base)", t.prompt));
        }
        if let Some(l) = &t.lora {
            l.check()?;
        }
        if !self.model.weights.runs_on(&self.model.device) {
            return Err(format!(
                "model.weights = {:?} runs on model.device = \"cpu\" only (its kernels run on the host), not {:?}",
                self.model.weights.to_string(),
                self.model.device
            ));
        }
        if self.retriever.index.is_some() == self.retriever.url.is_some() {
            return Err("[retriever] needs exactly one of index, url".into());
        }
        for s in &self.stages {
            if s.reward.protocol() != s.protocol(t) {
                log::warn!(
                    "stage {:?}: reward {} is another protocol's than the stage's ({}); its tags will not match",
                    s.name,
                    serde_json::json!(s.reward),
                    serde_json::json!(s.protocol(t))
                );
            }
            s.group.check().map_err(|e| format!("stage {:?}: {e}", s.name))?;
            if let Some(m) = &s.memorize {
                m.check().map_err(|e| format!("stage {:?}: memorize: {e}", s.name))?;
                if s.protocol(t) != r1s_agent::Protocol::R1SearcherPlus {
                    return Err(format!(
                        "stage {:?}: memorize rewrites searches into <internal> steps: it needs protocol \
                         \"r1searcher-plus\"",
                        s.name
                    ));
                }
            }
            if s.kl_beta.is_some_and(|b| b.is_nan() || b < 0.0) {
                return Err(format!("stage {:?}: kl_beta must be ≥ 0", s.name));
            }
            if s.steps == 0 || s.prompts_per_step == 0 || s.rollouts_per_prompt == 0 || s.topk == 0 {
                return Err(format!(
                    "stage {:?}: steps, prompts_per_step, rollouts_per_prompt, topk must be ≥ 1",
                    s.name
                ));
            }
        }
        Ok(())
    }
}
