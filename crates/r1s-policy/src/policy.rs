//! [`Policy`]: model + configuration + tokenizer on a device, with batched KV-cache generation
//! (stop strings matched on decoded text, greedy / temperature / top-p with a seed, per-token
//! log-probs) and log-prob scoring of given continuations.

use std::path::Path;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData, activation};

use crate::config::LlamaConfig;
use crate::error::{PolicyError, Result};
use crate::gguf::Gguf;
use crate::load::{GgufWeights, SafetensorsWeights, build_llama};
use crate::model::{KvCache, Llama, Rope, Step};
use crate::tokenizer::TextTokenizer;

/// Why a continuation ended (the core crate's).
pub use r1s_core::Finish as StopReason;
/// Sampling settings (the core crate's, shared with every policy).
pub use r1s_core::GenerateSettings as Sampling;

/// One continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The decoded continuation, cut before the stop string.
    pub text: String,
    /// Every sampled token (the one completing a stop string or the EOS included).
    pub tokens: Vec<u32>,
    /// The model's log-probability of each sampled token (temperature 1, no top-p).
    pub logprobs: Vec<f32>,
    pub stop: StopReason,
}

impl From<Generation> for r1s_core::Completion {
    fn from(g: Generation) -> r1s_core::Completion {
        r1s_core::Completion { text: g.text, finish: g.stop, tokens: g.tokens, logprobs: g.logprobs }
    }
}

/// A loaded policy.
#[derive(Debug)]
pub struct Policy {
    pub model: Llama,
    pub cfg: LlamaConfig,
    pub tokenizer: TextTokenizer,
    /// Whether [`Policy::generate`] prefills identical prompts of a batch once and repeats their
    /// cache rows (true, the default: the rollouts of one GRPO group share their prompt). The
    /// continuations are the same either way, up to float rounding.
    pub share_prefill: bool,
    /// Whether [`r1s_core::Policy::complete_continuous`] batches continuously (true, the default:
    /// [`Policy::generate_continuous`]) or in rounds ([`r1s_core::complete_in_rounds`], each round
    /// one [`Policy::generate`] per settings).
    pub continuous: bool,
    /// Checked before every decode step of [`Policy::generate`] and
    /// [`Policy::generate_continuous`]: once set, they return [`PolicyError::Cancelled`] within one
    /// step (a Ctrl-C stops a long generation in about a token's time, not at its end). None: never.
    pub cancel: Option<std::sync::Arc<r1s_core::Cancel>>,
    /// Packed copies of the weights that decode steps multiply by ([`Policy::set_weights`]); None:
    /// the f32 weights (the default). Prefill, scoring and training always use the f32 weights.
    packed: Option<std::sync::Arc<crate::packed::PackedModel>>,
    rope: Rope,
    device: Device,
}

/// A small deterministic generator (SplitMix64) for sampling.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

pub(crate) fn to_vec(t: Tensor<2>) -> Result<Vec<f32>> {
    t.into_data().try_to_vec::<f32>().map_err(|e| PolicyError::Options(format!("reading a tensor back: {e:?}")))
}

/// log-softmax of one row of logits at `i`.
pub(crate) fn log_prob(row: &[f32], i: usize) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
    row[i] - lse
}

/// Picks a token from one row of logits.
pub(crate) fn sample(row: &[f32], s: &Sampling, rng: &mut Rng) -> u32 {
    if s.temperature <= 0.0 {
        let mut best = 0;
        for (i, &x) in row.iter().enumerate() {
            if x > row[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<(usize, f32)> =
        row.iter().enumerate().map(|(i, &x)| (i, ((x - max) / s.temperature).exp())).collect();
    let total: f32 = p.iter().map(|x| x.1).sum();
    p.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0.0;
    let mut n = 0;
    for (_, w) in &p {
        kept += w / total;
        n += 1;
        if kept >= s.top_p {
            break;
        }
    }
    let mass: f32 = p[..n].iter().map(|x| x.1).sum();
    let mut u = rng.next_f32() * mass;
    for &(i, w) in &p[..n] {
        if u < w {
            return i as u32;
        }
        u -= w;
    }
    p[n - 1].0 as u32
}

impl Policy {
    /// Loads a model: a `.gguf` file, or a Hugging Face directory (config.json, *.safetensors,
    /// tokenizer.json). `smollm2` means the GGUF fetched by tools/setup.
    pub fn load(model: &Path, device: &Device) -> Result<Policy> {
        let model = if model == Path::new("smollm2") {
            r1s_core::paths::r1s_home().join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        } else {
            model.to_path_buf()
        };
        if model.is_dir() {
            not_a_model_dir(&model)?;
            let cpath = model.join("config.json");
            let bytes = std::fs::read(&cpath).map_err(|e| PolicyError::io(&cpath, e))?;
            let cfg: LlamaConfig = serde_json::from_slice(&bytes)
                .map_err(|e| PolicyError::Config { path: cpath.clone(), reason: e.to_string() })?;
            cfg.validate().map_err(|reason| PolicyError::Config { path: cpath, reason })?;
            let weights = SafetensorsWeights::open(&model)?;
            let llama = build_llama(&cfg, &weights, device)?;
            let tokenizer = TextTokenizer::from_hf_dir(&model)?;
            return Ok(Policy::new(llama, cfg, tokenizer, device));
        }
        if !model.exists() {
            return Err(PolicyError::io(&model, std::io::Error::from(std::io::ErrorKind::NotFound)));
        }
        let g = Gguf::open(&model)?;
        let cfg = LlamaConfig::from_gguf(&g)?;
        let llama = build_llama(&cfg, &GgufWeights { gguf: &g, cfg: &cfg }, device)?;
        let tokenizer = TextTokenizer::from_gguf(&g)?;
        Ok(Policy::new(llama, cfg, tokenizer, device))
    }

    /// Merges the PEFT LoRA adapter in `dir` into the weights (`W += s·B·A`; see [`crate::adapter`]),
    /// and packs them again when decode steps use packed copies.
    pub fn apply_adapter(&mut self, dir: &Path) -> Result<crate::adapter::Merged> {
        let merged = crate::adapter::apply(&mut self.model, dir)?;
        self.repack()?;
        Ok(merged)
    }

    /// Which weights decode steps multiply by: the model's f32 weights (the default), or bf16 /
    /// Q8_0 copies packed from them now (see [`crate::packed`]: 2 or 1.125 bytes per weight, about
    /// 269 or 151 MB more for SmolLM2-135M). Prefill, [`Policy::logits`] and
    /// [`Policy::token_logprobs`] keep the f32 weights; the log-probabilities of sampled tokens
    /// ([`Generation::logprobs`]) come from the packed decode steps.
    ///
    /// # Errors
    /// [`PolicyError::Options`] for a packed format on a device other than the CPU's flex backend
    /// (the kernels run on the host).
    pub fn set_weights(&mut self, fmt: crate::packed::WeightFormat) -> Result<()> {
        if fmt != crate::packed::WeightFormat::F32 && self.device != Device::flex() {
            return Err(PolicyError::Options(format!(
                "weights {fmt} run on the CPU device (cpu) only; this policy is on {:?}",
                self.device
            )));
        }
        self.packed = crate::packed::PackedModel::pack(&self.model, &self.cfg, fmt)?.map(std::sync::Arc::new);
        Ok(())
    }

    /// The weights decode steps multiply by.
    pub fn weights(&self) -> crate::packed::WeightFormat {
        self.packed.as_ref().map_or(crate::packed::WeightFormat::F32, |p| p.format())
    }

    /// Packs the f32 weights again in the current format (after they changed).
    pub fn repack(&mut self) -> Result<()> {
        match self.weights() {
            crate::packed::WeightFormat::F32 => Ok(()),
            fmt => self.set_weights(fmt),
        }
    }

    /// Packs blocks `from..` and the final norm again after a training update changed only them
    /// (see [`crate::packed::PackedModel::repack_blocks`]); nothing with f32 weights. Cheaper than
    /// [`Policy::repack`] by the frozen blocks and the LM head (the largest matrix).
    ///
    /// # Errors
    /// `from` past the model's blocks; reading a weight back.
    pub fn repack_blocks(&mut self, from: usize) -> Result<()> {
        match &mut self.packed {
            None => Ok(()),
            Some(p) => std::sync::Arc::make_mut(p).repack_blocks(&self.model, from),
        }
    }

    /// Logits `[v]` of the last token of `ids` as generation computes them: `ids[..n-1]` prefilled,
    /// then one decode step by the weights of [`Policy::weights`]. For checking a weight format
    /// against f32 references ([`Policy::logits`] runs every position as a prefill, in f32).
    ///
    /// # Errors
    /// [`PolicyError::Options`] for fewer than 2 tokens or more than the model's positions.
    pub fn decode_logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let n = ids.len();
        if n < 2 || n > self.rope.max_positions() {
            return Err(PolicyError::Options(format!(
                "decode_logits takes 2 to {} tokens, not {n}",
                self.rope.max_positions()
            )));
        }
        let (mut cache, _, _, _) = self.prefill(&[ids[..n - 1].to_vec()])?;
        to_vec(self.decode_step(&ids[n - 1..], &[n - 1], None, &mut cache)?)
    }

    /// Logits `[b, v]` of one decode step: the rows' tokens `ids` at `positions`, appended to
    /// `cache`; `key_pad` (`[b][T + 1]` for the `T` cached positions and the new one, true = not one
    /// of the row's keys) or `None` when no key is masked. With packed weights
    /// ([`Policy::set_weights`]) the step runs on the host ([`crate::decode`]) and the cache stays
    /// there; otherwise through the model on its device.
    ///
    /// # Errors
    /// Shapes that disagree, a position past the model's, reading tensors back.
    pub(crate) fn decode_step(
        &self,
        ids: &[u32],
        positions: &[usize],
        key_pad: Option<&[bool]>,
        cache: &mut KvCache,
    ) -> Result<Tensor<2>> {
        let b = ids.len();
        let ids_t = self.ints(ids.iter().map(|&x| i64::from(x)).collect(), [b, 1]);
        let vocab = self.cfg.vocab_size;
        let Some(packed) = self.packed.as_deref() else {
            let tt = cache.len() + 1;
            let step = Step {
                positions: self.ints(positions.iter().map(|&p| p as i64).collect(), [b, 1]),
                pad: key_pad.map(|p| (self.bools(p.to_vec(), [b, tt]), self.bools(vec![false; b], [b, 1]))),
            };
            let hidden = self.model.hidden(&self.cfg, &self.rope, ids_t, &step, Some(cache));
            return Ok(self.model.logits(hidden).reshape([b, vocab]));
        };
        let host = match &mut cache.host {
            Some(h) => h,
            None => {
                let host = crate::decode::HostKv::from_tensors(cache.tensors(), 64)?;
                cache.layers = Vec::new();
                cache.host.insert(host)
            }
        };
        let x = to_vec(self.model.embed.val().select(0, ids_t.reshape([b])))?;
        let logits = crate::decode::step(packed, &self.rope, x, positions, key_pad, host)?;
        Ok(Tensor::from_data(TensorData::new(logits, [b, vocab]), &self.device))
    }

    /// Puts the parts together.
    pub fn new(model: Llama, cfg: LlamaConfig, tokenizer: TextTokenizer, device: &Device) -> Policy {
        let rope = Rope::new(&cfg, cfg.max_position_embeddings.max(1), device);
        Policy {
            model,
            cfg,
            tokenizer,
            share_prefill: true,
            continuous: true,
            cancel: None,
            packed: None,
            rope,
            device: device.clone(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub(crate) fn ints(&self, v: Vec<i64>, shape: [usize; 2]) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(v, shape), &self.device)
    }

    pub(crate) fn bools(&self, v: Vec<bool>, shape: [usize; 2]) -> Tensor<2, Bool> {
        Tensor::from_data(TensorData::new(v, shape), &self.device)
    }

    /// Logits `[b, t, v]` of left-padded batch `seqs` (all positions), without a cache.
    pub fn logits(&self, seqs: &[Vec<u32>]) -> Result<Tensor<3>> {
        let (ids, step) = self.left_padded(seqs, 0)?;
        let hidden = self.model.hidden(&self.cfg, &self.rope, ids, &step, None);
        Ok(self.model.logits(hidden))
    }

    /// Left-pads `seqs` to one length; positions count from each sequence's first real token.
    /// `cached` extra key columns (all real) precede them.
    pub(crate) fn left_padded(&self, seqs: &[Vec<u32>], cached: usize) -> Result<(Tensor<2, Int>, Step)> {
        let b = seqs.len();
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
        if b == 0 || t == 0 {
            return Err(PolicyError::Options("empty batch or empty prompt".into()));
        }
        if t > self.rope.max_positions() {
            return Err(PolicyError::Options(format!(
                "{t} tokens exceed the model's {} positions",
                self.rope.max_positions()
            )));
        }
        let pad_id = i64::from(self.tokenizer.pad.or(self.tokenizer.eos.first().copied()).unwrap_or(0));
        let (mut ids, mut pos, mut pad) =
            (Vec::with_capacity(b * t), Vec::with_capacity(b * t), Vec::with_capacity(b * t));
        for s in seqs {
            let p = t - s.len();
            ids.extend(std::iter::repeat_n(pad_id, p).chain(s.iter().map(|&x| i64::from(x))));
            pos.extend((0..t).map(|i| i.saturating_sub(p) as i64));
            pad.extend((0..t).map(|i| i < p));
        }
        let any_pad = pad.iter().any(|&x| x);
        let pad = any_pad.then(|| {
            let mut keys = Vec::with_capacity(b * (cached + t));
            for row in pad.chunks(t) {
                keys.extend(std::iter::repeat_n(false, cached).chain(row.iter().copied()));
            }
            (self.bools(keys, [b, cached + t]), self.bools(pad.clone(), [b, t]))
        });
        Ok((self.ints(ids, [b, t]), Step { positions: self.ints(pos, [b, t]), pad }))
    }

    /// [`PolicyError::Cancelled`] once [`Policy::cancel`] is set.
    pub(crate) fn check_cancel(&self) -> Result<()> {
        match &self.cancel {
            Some(c) if c.is_cancelled() => Err(PolicyError::Cancelled),
            _ => Ok(()),
        }
    }

    /// Generates a continuation of each prompt (token ids), all in one batch with a KV cache;
    /// finished sequences leave the batch.
    pub fn generate(&self, prompts: &[Vec<u32>], s: &Sampling) -> Result<Vec<Generation>> {
        self.generate_streaming(prompts, s, &mut |_, _| {})
    }

    /// [`Self::generate`], calling `on_text(sequence, new_text)` as text becomes final (text that
    /// could still turn out to start a stop string is held back until it cannot).
    pub fn generate_streaming(
        &self,
        prompts: &[Vec<u32>],
        s: &Sampling,
        on_text: &mut dyn FnMut(usize, &str),
    ) -> Result<Vec<Generation>> {
        let mut shown = vec![0usize; prompts.len()];
        let hold = s.stop.iter().map(String::len).max().unwrap_or(1).saturating_sub(1);
        let mut emit = |seq: usize, text: &str, done: bool| {
            let mut upto = if done { text.len() } else { text.len().saturating_sub(hold) };
            while !text.is_char_boundary(upto) {
                upto -= 1;
            }
            // a partial UTF-8 sequence decodes as U+FFFD until its last byte arrives
            if !done && text[..upto].ends_with('\u{FFFD}') {
                upto -= '\u{FFFD}'.len_utf8();
            }
            if upto > shown[seq] {
                on_text(seq, &text[shown[seq]..upto]);
                shown[seq] = upto;
            }
        };
        self.generate_inner(prompts, s, &mut emit)
    }

    fn generate_inner(
        &self,
        prompts: &[Vec<u32>],
        s: &Sampling,
        emit: &mut dyn FnMut(usize, &str, bool),
    ) -> Result<Vec<Generation>> {
        let n = prompts.len();
        let mut out: Vec<Generation> = (0..n)
            .map(|_| Generation {
                text: String::new(),
                tokens: Vec::new(),
                logprobs: Vec::new(),
                stop: StopReason::Length,
            })
            .collect();
        if n == 0 {
            return Ok(out);
        }
        let mut rng = Rng::new(s.seed);
        let started = std::time::Instant::now();
        let (mut cache, mut last, t0, _) = self.prefill(prompts)?;
        let b = prompts.len();
        let prefilled = started.elapsed();
        let mut decoded = 0usize;
        // per live row: its sequence index, its next position, its key padding so far
        let mut live: Vec<usize> = (0..n).collect();
        let mut next_pos: Vec<usize> = prompts.iter().map(Vec::len).collect();
        let mut key_pad: Vec<Vec<bool>> = prompts.iter().map(|p| (0..t0).map(|i| i < t0 - p.len()).collect()).collect();
        let max_new = s.max_new_tokens.min(self.rope.max_positions().saturating_sub(t0));
        for step in 0..max_new {
            self.check_cancel()?;
            let rows = to_vec(last.clone())?;
            let vsz = self.cfg.vocab_size;
            let mut chosen = Vec::with_capacity(live.len());
            let mut keep = Vec::with_capacity(live.len());
            for (r, &seq) in live.iter().enumerate() {
                let row = &rows[r * vsz..(r + 1) * vsz];
                let tok = sample(row, s, &mut rng);
                let g = &mut out[seq];
                let goes_on = self.accept(g, tok, log_prob(row, tok as usize), &s.stop)?;
                emit(seq, &g.text, !goes_on);
                if !goes_on {
                    continue;
                }
                keep.push(r);
                chosen.push(tok);
            }
            decoded += live.len();
            if keep.is_empty() {
                log::debug!(
                    "generate: prefill {b}×{t0} tokens {:.2}s, then {decoded} tokens in {} steps {:.2}s",
                    prefilled.as_secs_f64(),
                    step + 1,
                    (started.elapsed() - prefilled).as_secs_f64()
                );
                return Ok(out);
            }
            if keep.len() < live.len() {
                cache.retain_rows(&keep);
                live = keep.iter().map(|&r| live[r]).collect();
                next_pos = keep.iter().map(|&r| next_pos[r]).collect();
                key_pad = keep.iter().map(|&r| std::mem::take(&mut key_pad[r])).collect();
            }
            if step + 1 == max_new {
                break;
            }
            for kp in &mut key_pad {
                kp.push(false);
            }
            let any_pad = key_pad.iter().flatten().any(|&x| x);
            let mask = any_pad.then(|| key_pad.concat());
            last = self.decode_step(&chosen, &next_pos, mask.as_deref(), &mut cache)?;
            for p in &mut next_pos {
                *p += 1;
            }
        }
        for &seq in &live {
            emit(seq, &out[seq].text, true);
        }
        log::debug!(
            "generate: prefill {b}×{t0} tokens {:.2}s, then {decoded} tokens in {max_new} steps {:.2}s",
            prefilled.as_secs_f64(),
            (started.elapsed() - prefilled).as_secs_f64()
        );
        Ok(out)
    }

    /// Runs left-padded `prompts` through the model: their cache `[n, nkv, t0, hd]` per layer, the
    /// logits of their last tokens `[n, vocab]`, and the padded width `t0` (row `i` is left-padded by
    /// `t0 - prompts[i].len()` columns), and the number of prompt tokens run. With
    /// [`Policy::share_prefill`], identical prompts (the rollouts of one GRPO group) run once and
    /// their rows are repeated.
    pub(crate) fn prefill(&self, prompts: &[Vec<u32>]) -> Result<(KvCache, Tensor<2>, usize, usize)> {
        let n = prompts.len();
        let mut unique: Vec<Vec<u32>> = Vec::new();
        let mut row_of: Vec<usize> = Vec::with_capacity(n);
        let mut seen: std::collections::HashMap<&[u32], usize> = std::collections::HashMap::new();
        for p in prompts {
            let row = match seen.get(p.as_slice()) {
                Some(&row) if self.share_prefill => row,
                _ => {
                    unique.push(p.clone());
                    seen.insert(p, unique.len() - 1);
                    unique.len() - 1
                }
            };
            row_of.push(row);
        }
        let (ids, step) = self.left_padded(&unique, 0)?;
        let t0 = ids.dims()[1];
        let mut cache = KvCache::default();
        let hidden = self.model.hidden(&self.cfg, &self.rope, ids, &step, Some(&mut cache));
        let [b, t, _] = hidden.dims();
        let mut last = self.model.logits(hidden.narrow(1, t - 1, 1)).reshape([b, self.cfg.vocab_size]);
        if unique.len() < n {
            cache.retain_rows(&row_of);
            let rows = row_of.iter().map(|&r| r as i64).collect();
            last = last.select(0, Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &self.device));
        }
        let run = unique.iter().map(Vec::len).sum();
        Ok((cache, last, t0, run))
    }

    /// Appends the sampled `tok` (log-prob `logp`) to `g` and decodes its text; whether the sequence
    /// goes on: false at an EOS token (`g.stop` = EOS, the text without it) or once the text holds one
    /// of `stops` (`g.stop` = that string, the text cut before its first occurrence).
    pub(crate) fn accept(&self, g: &mut Generation, tok: u32, logp: f32, stops: &[String]) -> Result<bool> {
        g.tokens.push(tok);
        g.logprobs.push(logp);
        if self.tokenizer.eos.contains(&tok) {
            g.stop = StopReason::Eos;
            g.text = self.tokenizer.decode(&g.tokens[..g.tokens.len() - 1])?;
            return Ok(false);
        }
        let text = self.tokenizer.decode(&g.tokens)?;
        if let Some((at, stop)) = stops.iter().filter_map(|st| text.find(st.as_str()).map(|i| (i, st))).min() {
            g.text = text[..at].to_owned();
            g.stop = StopReason::Stop(stop.clone());
            return Ok(false);
        }
        g.text = text;
        Ok(true)
    }

    /// Right-padded ids `[b, t]` of `seqs` and their positions (clamped at each sequence's last
    /// token). Causal attention keeps real tokens from seeing the padding after them, so no mask is
    /// needed; outputs at padded positions are meaningless.
    pub fn right_padded(&self, seqs: &[Vec<u32>]) -> Result<(Tensor<2, Int>, Step)> {
        let b = seqs.len();
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
        if b == 0 || t == 0 {
            return Err(PolicyError::Options("empty batch or empty sequence".into()));
        }
        if t > self.rope.max_positions() {
            return Err(PolicyError::Options(format!(
                "{t} tokens exceed the model's {} positions",
                self.rope.max_positions()
            )));
        }
        let (mut ids, mut pos) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
        for s in seqs {
            ids.extend(s.iter().map(|&x| i64::from(x)).chain(std::iter::repeat_n(0, t - s.len())));
            pos.extend((0..t as i64).map(|i| i.min(s.len() as i64 - 1).max(0)));
        }
        Ok((self.ints(ids, [b, t]), Step { positions: self.ints(pos, [b, t]), pad: None }))
    }

    /// The rotary tables.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// Log-probabilities `[b, max_len - 1]` of each token of `seqs` given the tokens before it
    /// (right-padded; padded positions are 0). With an autodiff device the result carries gradients.
    pub fn token_logprobs(&self, seqs: &[Vec<u32>]) -> Result<Tensor<2>> {
        let b = seqs.len();
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
        if b == 0 || t < 2 {
            return Err(PolicyError::Options("scoring needs sequences of at least two tokens".into()));
        }
        let (ids_t, step) = self.right_padded(seqs)?;
        let valid: Vec<f32> =
            seqs.iter().flat_map(|s| (1..t).map(move |i| if i < s.len() { 1f32 } else { 0f32 })).collect();
        let hidden = self.model.hidden(&self.cfg, &self.rope, ids_t.clone(), &step, None);
        let logits = self.model.logits(hidden.narrow(1, 0, t - 1));
        let logp = activation::log_softmax(logits, 2);
        let targets = ids_t.narrow(1, 1, t - 1).unsqueeze_dim::<3>(2);
        let picked = logp.gather(2, targets).reshape([b, t - 1]);
        let mask = Tensor::<2>::from_data(TensorData::new(valid, [b, t - 1]), &self.device);
        Ok(picked * mask)
    }
}

impl r1s_core::Policy for Policy {
    type Error = PolicyError;

    fn complete(&self, contexts: &[String], s: &Sampling) -> Result<Vec<r1s_core::Completion>> {
        let prompts = contexts.iter().map(|c| self.tokenizer.encode(c)).collect::<Result<Vec<_>>>()?;
        Ok(self.generate(&prompts, s)?.into_iter().map(r1s_core::Completion::from).collect())
    }

    /// [`Policy::generate_continuous`] over the jobs' contexts (tokenized whole), or rounds of
    /// [`Policy::generate`] when [`Policy::continuous`] is off.
    fn complete_continuous(
        &self,
        jobs: Vec<r1s_core::Job>,
        done: &mut dyn FnMut(r1s_core::Finished) -> std::ops::ControlFlow<(), Vec<r1s_core::Job>>,
    ) -> Result<()> {
        if !self.continuous {
            return r1s_core::complete_in_rounds(self, jobs, done);
        }
        let requests = |jobs: Vec<r1s_core::Job>| -> Result<Vec<crate::Request>> {
            jobs.into_iter()
                .map(|j| {
                    Ok(crate::Request {
                        key: j.key,
                        prompt: self.tokenizer.encode(&j.context)?,
                        sampling: j.settings,
                        stream: None,
                        cancel: None,
                    })
                })
                .collect()
        };
        let mut failed = None;
        let first = requests(jobs)?;
        self.generate_continuous(first, &mut |ended| {
            let ended = ended.into_iter().map(|(k, g)| (k, r1s_core::Completion::from(g))).collect();
            let next = match done(ended) {
                std::ops::ControlFlow::Continue(next) => next,
                std::ops::ControlFlow::Break(()) => return std::ops::ControlFlow::Break(()),
            };
            match requests(next) {
                Ok(r) => std::ops::ControlFlow::Continue(r),
                Err(e) => {
                    failed = Some(e);
                    std::ops::ControlFlow::Break(())
                }
            }
        })?;
        failed.map_or(Ok(()), Err)
    }
}

/// An error naming what `dir` is when it is not a Hugging Face model directory: a LoRA adapter, an
/// r1s training run, a directory holding a .gguf file, or something else.
fn not_a_model_dir(dir: &Path) -> Result<()> {
    if dir.join("config.json").is_file() {
        return Ok(());
    }
    let reason = if dir.join("adapter_config.json").is_file() {
        "a LoRA adapter, not a model: give the base model as the model and this directory as --adapter".to_owned()
    } else if dir.join("adapter").join("adapter_config.json").is_file() && dir.join("model.safetensors").is_file() {
        "an r1s checkpoint without config.json (incomplete or damaged)".to_owned()
    } else if dir.join("checkpoints").is_dir() {
        let newest = std::fs::read_dir(dir.join("checkpoints"))
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("config.json").is_file())
            .max();
        match newest {
            Some(p) => format!("a training run, not a model: its checkpoints are models, e.g. {}", p.display()),
            None => "a training run without a complete checkpoint yet".to_owned(),
        }
    } else {
        let gguf = std::fs::read_dir(dir)
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
            .min();
        match gguf {
            Some(p) => format!("no config.json here; to load the GGUF file give its path: {}", p.display()),
            None => "not a model directory: a Hugging Face model has config.json, *.safetensors and \
                     tokenizer.json (or give a .gguf file, or `smollm2`)"
                .to_owned(),
        }
    };
    Err(PolicyError::Config { path: dir.to_path_buf(), reason })
}
