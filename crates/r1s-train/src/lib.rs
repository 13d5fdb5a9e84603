//! Two-stage outcome-based RL for search agents (R1-Searcher) on burn, and SFT cold starts.
//!
//! - [`loss`]: advantages (REINFORCE++ baseline, GRPO), γ = 1 returns with a per-token KL penalty,
//!   whitening, masked means, PPO-clip, KL estimators.
//! - [`model`]: the policy split into a frozen prefix and a trainable top (the last K blocks).
//! - [`optim`]: AdamW with global-norm clipping and checkpointable state.
//! - [`episode`]: trajectories → token ids + the policy's own positions (documents masked out).
//! - [`rl`]: experience and PPO updates of one step; [`trainer`]: stages, checkpoints, metrics.
//! - [`memorize`]: R1-Searcher++'s memorisation set (rollouts that searched, rewritten into
//!   `<internal>`-only paths) and its settings.
//! - [`reject`]: cold-start trajectories by rejection sampling (well-formed and correct rollouts).
//! - [`sft`]: supervised cold start on trajectories; [`plot`]: curves of a metrics file.

pub mod checkpoint;
pub mod config;
pub mod episode;
pub mod error;
pub mod loss;
pub mod memorize;
pub mod model;
pub mod optim;
pub mod param;
pub mod plot;
pub mod prompt;
pub mod reject;
pub mod rl;
pub mod seed;
pub mod sft;
pub mod task;
pub mod trainer;

pub use config::TrainConfig;
pub use error::{Result, TrainError};
