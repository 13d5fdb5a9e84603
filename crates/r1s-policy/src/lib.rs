//! The policy model of r1s: a Llama-family decoder (Llama, SmolLM2, Qwen2) on burn, loaded from
//! GGUF (dequantised to f32) or Hugging Face safetensors, with batched KV-cache generation and
//! log-prob scoring for the RL trainer.
//!
//! CPU runs on burn's `flex` backend (`Device::flex()`); the `cuda` feature adds burn's CUDA
//! backend ([`device`]).

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod adapter;
pub mod chat;
pub mod config;
pub mod continuous;
pub mod error;
pub mod gguf;
pub mod load;
pub mod model;
pub mod policy;
pub mod tokenizer;

pub use config::LlamaConfig;
pub use continuous::{ContinuousStats, Request};
pub use error::{PolicyError, Result};
pub use model::{Block, KvCache, Llama, LoraBeside, Rope, Step, run_blocks, run_blocks_lora};
pub use policy::{Generation, Policy, Sampling, StopReason};
pub use tokenizer::TextTokenizer;

/// The device for `name`: `cpu` (burn's flex backend), `cuda` / `cuda:N` (the `cuda` feature).
pub fn device(name: &str) -> Result<burn::tensor::Device> {
    match name {
        "cpu" | "flex" => Ok(burn::tensor::Device::flex()),
        n if n == "cuda" || n.starts_with("cuda:") => cuda(n),
        other => Err(PolicyError::Options(format!("unknown device {other:?} (cpu, cuda, cuda:N)"))),
    }
}

#[cfg(feature = "cuda")]
fn cuda(name: &str) -> Result<burn::tensor::Device> {
    let index: usize = match name.strip_prefix("cuda:") {
        Some(i) => i.parse().map_err(|_| PolicyError::Options(format!("bad CUDA device {name:?}")))?,
        None => 0,
    };
    Ok(burn::tensor::Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(name: &str) -> Result<burn::tensor::Device> {
    Err(PolicyError::Device {
        device: name.into(),
        reason: "this r1s was built without the `cuda` feature (cargo build --features cuda, on a machine where burn's CUDA backend builds)".into(),
    })
}
