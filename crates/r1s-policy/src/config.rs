//! The decoder's configuration, mirroring Hugging Face `config.json` (Llama, Qwen2, SmolLM2).

use serde::{Deserialize, Serialize};

use crate::error::{PolicyError, Result};
use crate::gguf::{Gguf, Value};

/// Llama 3's RoPE frequency scaling (`rope_scaling` with `rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    pub factor: f64,
    #[serde(default = "one")]
    pub low_freq_factor: f64,
    #[serde(default = "four")]
    pub high_freq_factor: f64,
    #[serde(default = "eight_k")]
    pub original_max_position_embeddings: usize,
}

fn one() -> f64 {
    1.0
}
fn four() -> f64 {
    4.0
}
fn eight_k() -> usize {
    8192
}

/// Configuration of a Llama-family decoder (names as in HF `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `llama` or `qwen2` (Qwen2 has biases on the q, k and v projections).
    #[serde(default = "llama")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "theta")]
    pub rope_theta: f64,
    #[serde(default, deserialize_with = "rope_scaling")]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v (Qwen2); absent in Llama's config, implied by `model_type: qwen2`.
    #[serde(default)]
    pub attention_bias: Option<bool>,
}

fn llama() -> String {
    "llama".into()
}
fn eps() -> f64 {
    1e-5
}
fn theta() -> f64 {
    10_000.0
}
fn max_pos() -> usize {
    2048
}

/// Only Llama-3-style scaling is supported; other kinds (linear, dynamic, yarn) are rejected at
/// validation, so they are kept as an impossible factor here.
fn rope_scaling<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<RopeScaling>, D::Error> {
    let v: Option<serde_json::Value> = Option::deserialize(d)?;
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(None) };
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).unwrap_or("");
    if kind != "llama3" {
        return Err(serde::de::Error::custom(format!(
            "rope_scaling of type {kind:?} is not supported (only \"llama3\")"
        )));
    }
    serde_json::from_value(v).map(Some).map_err(serde::de::Error::custom)
}

impl LlamaConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn qkv_bias(&self) -> bool {
        self.attention_bias.unwrap_or(self.model_type == "qwen2")
    }

    /// Checks the numbers fit together.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0
            || self.kv_heads() == 0
            || !self.num_attention_heads.is_multiple_of(self.kv_heads())
        {
            return Err(format!(
                "{} attention heads cannot share {} key/value heads",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if !self.head_dim().is_multiple_of(2) || self.head_dim() == 0 {
            return Err(format!("head dimension {} must be even", self.head_dim()));
        }
        if !["llama", "qwen2", "mistral"].contains(&self.model_type.as_str()) {
            return Err(format!("model type {:?} is not a Llama-family decoder r1s runs", self.model_type));
        }
        Ok(())
    }

    /// Reads the configuration from GGUF metadata (`{arch}.*` keys).
    pub fn from_gguf(g: &Gguf) -> Result<LlamaConfig> {
        let bad = |reason: String| PolicyError::Config { path: g.path().to_path_buf(), reason };
        let arch = g.get("general.architecture").and_then(Value::as_str).unwrap_or("").to_owned();
        if arch != "llama" && arch != "qwen2" {
            return Err(bad(format!("architecture {arch:?}: r1s runs llama and qwen2 models")));
        }
        let num = |key: &str| -> Result<u64> {
            g.get(&format!("{arch}.{key}")).and_then(Value::as_u64).ok_or_else(|| bad(format!("no {arch}.{key}")))
        };
        let float = |key: &str| g.get(&format!("{arch}.{key}")).and_then(Value::as_f64);
        let vocab = match g.get(&format!("{arch}.vocab_size")).and_then(Value::as_u64) {
            Some(v) => v as usize,
            None => g.info("token_embd.weight")?.shape[0],
        };
        if g.tensors.contains_key("rope_freqs.weight") {
            return Err(bad(
                "this GGUF scales RoPE frequencies (rope_freqs.weight, Llama 3.1 style), which r1s does not read from GGUF yet: use the Hugging Face directory (its rope_scaling is supported)".into(),
            ));
        }
        let heads = num("attention.head_count")? as usize;
        let hidden = num("embedding_length")? as usize;
        let head_dim = g.get(&format!("{arch}.attention.key_length")).and_then(Value::as_u64).map(|v| v as usize);
        let cfg = LlamaConfig {
            model_type: arch.clone(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: num("feed_forward_length")? as usize,
            num_hidden_layers: num("block_count")? as usize,
            num_attention_heads: heads,
            num_key_value_heads: Some(num("attention.head_count_kv").unwrap_or(heads as u64) as usize),
            head_dim,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling: None,
            max_position_embeddings: num("context_length").unwrap_or(2048) as usize,
            tie_word_embeddings: !g.tensors.contains_key("output.weight"),
            attention_bias: Some(g.tensors.contains_key("blk.0.attn_q.bias")),
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }
}
