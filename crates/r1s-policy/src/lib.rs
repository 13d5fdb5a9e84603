//! The policy model of r1s: a Llama-family decoder (Llama, SmolLM2, Qwen2) on burn, loaded from
//! GGUF (dequantised to f32) or Hugging Face safetensors, with batched KV-cache generation and
//! log-prob scoring for the RL trainer.
//!
//! CPU runs on burn's `flex` backend (`Device::flex()`); the `cuda` feature adds burn's CUDA
//! backend and the `tch` feature burn's LibTorch backend on CPU or CUDA ([`device`]).

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod adapter;
/// Chat templates (they live in `r1s_core`, where the agent's prompts reach them too).
pub use r1s_core::chat;
pub mod config;
pub mod continuous;
pub mod decode;
pub mod error;
pub mod gguf;
pub mod load;
pub mod model;
pub mod packed;
pub mod policy;
pub mod serve;
pub mod tokenizer;

pub use config::LlamaConfig;
pub use continuous::{ContinuousStats, Request};
pub use error::{PolicyError, Result};
pub use model::{Block, KvCache, Llama, LoraBeside, Rope, Step, run_blocks, run_blocks_lora};
pub use packed::{PackedModel, WeightFormat};
pub use policy::{Generation, Policy, Sampling, StopReason};
pub use tokenizer::TextTokenizer;

/// The device for `name`:
/// - `cpu` (or `flex`): burn's flex backend, the default;
/// - `cuda` / `cuda:N`: burn's CUDA backend (the `cuda` feature);
/// - `tch-cpu`, `tch-cuda` / `tch-cuda:N`: burn's LibTorch backend (the `tch` feature) on the CPU or
///   the N-th CUDA device. On `tch-cpu`, torch's intra-op threads are set to the current rayon pool's
///   size, so that `-j` means the same on both CPU backends.
///
/// Errors: [`PolicyError::Options`] for an unknown name or a bad index; [`PolicyError::Device`] when
/// this build lacks the backend's feature, or (`tch-cuda`) when libtorch sees no such CUDA device.
pub fn device(name: &str) -> Result<burn::tensor::Device> {
    match name {
        "cpu" | "flex" => Ok(burn::tensor::Device::flex()),
        n if n == "cuda" || n.starts_with("cuda:") => cuda(cuda_index(n, "cuda")?),
        "tch-cpu" => tch(None),
        n if n == "tch-cuda" || n.starts_with("tch-cuda:") => tch(Some(cuda_index(n, "tch-cuda")?)),
        other => Err(PolicyError::Options(format!(
            "unknown device {other:?} (cpu, cuda, cuda:N, tch-cpu, tch-cuda, tch-cuda:N)"
        ))),
    }
}

/// The N of `prefix:N` (0 for a bare `prefix`).
fn cuda_index(name: &str, prefix: &str) -> Result<usize> {
    match name.strip_prefix(prefix).and_then(|rest| rest.strip_prefix(':')) {
        Some(i) => i.parse().map_err(|_| PolicyError::Options(format!("bad CUDA device index in {name:?}"))),
        None => Ok(0),
    }
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Result<burn::tensor::Device> {
    Ok(burn::tensor::Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(index: usize) -> Result<burn::tensor::Device> {
    Err(PolicyError::Device {
        device: format!("cuda:{index}"),
        reason: "this r1s was built without the `cuda` feature (cargo build --features cuda, on a machine where burn's CUDA backend builds)".into(),
    })
}

// burn 0.22 marks its LibTorch backend deprecated (in favour of CubeCL backends, whose CUDA build
// cannot run offline here): it is used on purpose, as the GPU path that builds from PyPI's torch.
#[cfg(feature = "tch")]
#[allow(deprecated)]
fn tch(cuda: Option<usize>) -> Result<burn::tensor::Device> {
    match cuda {
        None => {
            let threads = i32::try_from(rayon::current_num_threads()).unwrap_or(i32::MAX);
            ::tch::set_num_threads(threads);
            Ok(burn::tensor::Device::libtorch())
        }
        Some(index) => {
            // libtorch would abort the process on a missing device; ask first
            let found = usize::try_from(::tch::Cuda::device_count()).unwrap_or(0);
            if index >= found {
                return Err(PolicyError::Device {
                    device: format!("tch-cuda:{index}"),
                    reason: format!(
                        "libtorch sees {found} CUDA device(s) (cuda available: {})",
                        ::tch::Cuda::is_available()
                    ),
                });
            }
            Ok(burn::tensor::Device::libtorch_cuda(index))
        }
    }
}

#[cfg(not(feature = "tch"))]
fn tch(cuda: Option<usize>) -> Result<burn::tensor::Device> {
    Err(PolicyError::Device {
        device: cuda.map_or_else(|| "tch-cpu".to_string(), |i| format!("tch-cuda:{i}")),
        reason: "this r1s was built without the `tch` feature (tools/setup --tch, then tools/tch cargo build --release -p r1s-cli --features tch)".into(),
    })
}
