//! The tokenizer of a model: from a Hugging Face `tokenizer.json`, or rebuilt from GGUF metadata
//! (`tokenizer.ggml.*`: gpt2-style byte-level BPE tokens and merges, token types, special ids, the
//! pre-tokenizer name and the chat template).

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::{PolicyError, Result};
use crate::gguf::{Gguf, Value};

/// Llama 3's pre-tokenizer regex (`llama-bpe` in GGUF).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's (digits one by one).
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer with the model's special tokens.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    pub inner: Tokenizer,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    pub pad: Option<u32>,
    /// Prepend `bos` when encoding a prompt.
    pub add_bos: bool,
    /// The Jinja chat template shipped with the model, if any (used to pick a [`crate::chat::Template`]).
    pub chat_template: Option<String>,
}

impl TextTokenizer {
    /// Rebuilds the tokenizer stored in a GGUF file.
    pub fn from_gguf(g: &Gguf) -> Result<TextTokenizer> {
        let bad = |reason: String| PolicyError::Config { path: g.path().to_path_buf(), reason };
        let model = g.get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or("");
        if model != "gpt2" {
            return Err(bad(format!(
                "tokenizer.ggml.model is {model:?}; r1s rebuilds byte-level BPE (\"gpt2\") tokenizers from GGUF — use the model's tokenizer.json"
            )));
        }
        let strings = |key: &str| -> Result<Vec<&str>> {
            let arr = g.get(key).and_then(Value::as_array).ok_or_else(|| bad(format!("no {key}")))?;
            arr.iter().map(|v| v.as_str().ok_or_else(|| bad(format!("{key} holds a non-string")))).collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| bad(format!("merge {m:?} is not two tokens")))
            })
            .collect::<Result<_>>()?;
        let types: Vec<u64> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| ((*t).to_owned(), i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| PolicyError::Tokenizer(format!("building the BPE model: {e}")))?;
        let mut tk = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        let pre = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
        let split = |pattern: &str| -> Result<PreTokenizerWrapper> {
            Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
                .map(PreTokenizerWrapper::Split)
                .map_err(|e| PolicyError::Tokenizer(e.to_string()))
        };
        let no_regex = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false));
        let pre_tokenizer = match pre {
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]),
            "llama-bpe" | "llama3" => Sequence::new(vec![split(LLAMA3_SPLIT)?, no_regex]),
            "qwen2" => Sequence::new(vec![split(QWEN2_SPLIT)?, no_regex]),
            "default" | "gpt-2" | "gpt2" => Sequence::new(vec![byte_level.into()]),
            other => {
                log::warn!("unknown GGUF pre-tokenizer {other:?}: using GPT-2's byte-level splitting");
                Sequence::new(vec![byte_level.into()])
            }
        };
        tk.with_pre_tokenizer(Some(pre_tokenizer));
        tk.with_decoder(Some(ByteLevel::default()));
        // control (3) and user-defined (4) tokens are matched whole, before BPE
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(s, t)| AddedToken::from(*s, *t == 3))
            .collect();
        tk.add_special_tokens(&special);
        let id = |key: &str| g.get(key).and_then(Value::as_u64).map(|v| v as u32);
        let eos: Vec<u32> =
            id("tokenizer.ggml.eos_token_id").into_iter().chain(id("tokenizer.ggml.eot_token_id")).collect();
        Ok(TextTokenizer {
            inner: tk,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos,
            pad: id("tokenizer.ggml.padding_token_id"),
            add_bos: g.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false),
            chat_template: g.get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_owned),
        })
    }

    /// Loads a Hugging Face `tokenizer.json` (and, beside it, `tokenizer_config.json` for the chat
    /// template and BOS handling, `generation_config.json` / `config.json` for EOS ids).
    pub fn from_hf_dir(dir: &Path) -> Result<TextTokenizer> {
        let path = dir.join("tokenizer.json");
        let inner =
            Tokenizer::from_file(&path).map_err(|e| PolicyError::Tokenizer(format!("{}: {e}", path.display())))?;
        let read = |name: &str| -> serde_json::Value {
            std::fs::read(dir.join(name)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
        };
        let (tc, gen_cfg, cfg) = (read("tokenizer_config.json"), read("generation_config.json"), read("config.json"));
        let token_id = |v: &serde_json::Value| -> Option<u32> {
            let s = v.as_str().or_else(|| v["content"].as_str())?;
            inner.token_to_id(s)
        };
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            match v {
                serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
                other => other.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            }
        };
        let mut eos = ids(&gen_cfg["eos_token_id"]);
        if eos.is_empty() {
            eos = ids(&cfg["eos_token_id"]);
        }
        if eos.is_empty() {
            eos.extend(token_id(&tc["eos_token"]));
        }
        Ok(TextTokenizer {
            bos: token_id(&tc["bos_token"]).or_else(|| cfg["bos_token_id"].as_u64().map(|x| x as u32)),
            eos,
            pad: token_id(&tc["pad_token"]),
            add_bos: tc["add_bos_token"].as_bool().unwrap_or(false),
            chat_template: tc["chat_template"].as_str().map(str::to_owned),
            inner,
        })
    }

    /// Token ids of `text` (special tokens in the text are recognised; BOS prepended when the model
    /// asks for it).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| PolicyError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids of `text` as a continuation (never a BOS).
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| PolicyError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids` (special tokens included, so that stop strings and tags survive).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| PolicyError::Tokenizer(e.to_string()))
    }

    /// Vocabulary size (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
