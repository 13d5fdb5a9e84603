//! Pooling presets: how token states become one vector, and what each side's text is prefixed with.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EmbedError, IoContext, Result};

/// File next to a model that describes its preset (JSON, fields of [`Preset`]).
pub const PRESET_FILE: &str = "r1s-embed.json";

/// How the per-token hidden states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over the tokens of the attention mask.
    Mean,
    /// The first (`[CLS]`) token.
    Cls,
}

/// A model's embedding recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preset {
    /// Name recorded in manifests.
    pub name: String,
    pub pooling: Pooling,
    /// L2-normalise the pooled vector.
    #[serde(default = "yes")]
    pub normalize: bool,
    /// Prepended to queries.
    #[serde(default)]
    pub query_prefix: String,
    /// Prepended to passages.
    #[serde(default)]
    pub passage_prefix: String,
}

fn yes() -> bool {
    true
}

impl Preset {
    /// A named preset: `minilm` (mean, L2), `bge` (CLS, L2, BGE's query instruction),
    /// `e5` (mean, L2, `query: ` / `passage: `).
    pub fn named(name: &str) -> Result<Preset> {
        let p = |pooling, q: &str, d: &str| Preset {
            name: name.to_owned(),
            pooling,
            normalize: true,
            query_prefix: q.to_owned(),
            passage_prefix: d.to_owned(),
        };
        Ok(match name {
            "minilm" => p(Pooling::Mean, "", ""),
            "bge" => p(Pooling::Cls, "Represent this sentence for searching relevant passages: ", ""),
            "e5" => p(Pooling::Mean, "query: ", "passage: "),
            other => {
                return Err(EmbedError::Options(format!("unknown preset {other:?} (known: minilm, bge, e5)")));
            }
        })
    }

    /// The preset described by `r1s-embed.json` in `model_dir`, if there is one.
    pub fn from_model_dir(model_dir: &Path) -> Result<Option<Preset>> {
        let path = model_dir.join(PRESET_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).at(&path)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| EmbedError::BadFile { path, reason: format!("not a preset: {e}") })
    }

    /// The text given to the model for `text` on `side`.
    pub fn prefixed<'a>(&self, text: &'a str, side: r1s_core::Side) -> std::borrow::Cow<'a, str> {
        let prefix = match side {
            r1s_core::Side::Query => &self.query_prefix,
            r1s_core::Side::Passage => &self.passage_prefix,
        };
        if prefix.is_empty() {
            std::borrow::Cow::Borrowed(text)
        } else {
            std::borrow::Cow::Owned(format!("{prefix}{text}"))
        }
    }
}
