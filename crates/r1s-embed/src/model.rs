//! [`OnnxEmbedder`]: a text encoder run by ONNX Runtime.
//!
//! Texts are tokenised (`tokenizers`, truncated to `max_len`), sorted by token length and cut into
//! batches, so each batch is padded only to its own longest text; results are written back in input
//! order. The session and the input buffers are reused from call to call.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
use r1s_core::{Embedder, Side};
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{EmbedError, Result};
use crate::preset::{Pooling, Preset};

/// Where to run the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// ONNX Runtime's CPU execution provider.
    Cpu,
    /// The CUDA execution provider on this GPU; an error when it cannot be registered.
    Cuda(i32),
    /// CUDA when it can be registered, else CPU (with a warning).
    Auto,
}

impl Device {
    /// Texts per inference batch when none is given: 4 on CPU, where small length-sorted batches pad
    /// least and run fastest; 128 on CUDA.
    pub fn default_batch(self) -> usize {
        if self == Device::Cpu { 4 } else { 128 }
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            "auto" => Ok(Device::Auto),
            _ => match s.strip_prefix("cuda:").and_then(|d| d.parse().ok()) {
                Some(id) => Ok(Device::Cuda(id)),
                None => Err(format!("unknown device {s:?} (cpu, cuda, cuda:N, auto)")),
            },
        }
    }
}

/// How to load an [`OnnxEmbedder`].
#[derive(Debug, Clone)]
pub struct EmbedderConfig {
    /// A directory with `model.onnx` and `tokenizer.json`, or the `.onnx` file itself (the
    /// tokenizer is then looked for beside it). `minilm` means the model fetched by tools/setup.
    pub model: PathBuf,
    /// The preset; `None`: `r1s-embed.json` beside the model, else `minilm`.
    pub preset: Option<Preset>,
    /// Tokens per text (longer texts are truncated).
    pub max_len: usize,
    /// Texts per inference batch.
    pub batch: usize,
    /// Threads in all (0 = all cores; more than the cores are capped at the cores).
    pub threads: usize,
    /// Sessions running batches side by side (0 = auto: one single-threaded session per thread on
    /// CPU, where small matrices scale better across sessions than inside one; one on CUDA).
    pub sessions: usize,
    pub device: Device,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        EmbedderConfig {
            model: PathBuf::from("minilm"),
            preset: None,
            max_len: 256,
            batch: 4,
            threads: 0,
            sessions: 0,
            device: Device::Cpu,
        }
    }
}

/// Resolves `minilm` and directories to (model.onnx, tokenizer.json).
pub fn model_files(model: &Path) -> Result<(PathBuf, PathBuf)> {
    let model = if model == Path::new("minilm") {
        r1s_core::paths::r1s_home().join("models").join("minilm")
    } else {
        model.to_path_buf()
    };
    let (onnx, dir) = if model.is_dir() {
        (model.join("model.onnx"), model.clone())
    } else {
        let dir = model.parent().map(Path::to_path_buf).unwrap_or_default();
        (model.clone(), dir)
    };
    if !onnx.is_file() {
        let hint = if onnx.starts_with(r1s_core::paths::r1s_home()) { " (run tools/setup)" } else { "" };
        return Err(EmbedError::Model { path: onnx, reason: format!("no such model file{hint}") });
    }
    let tokenizer = dir.join("tokenizer.json");
    if !tokenizer.is_file() {
        return Err(EmbedError::Model { path: tokenizer, reason: "no tokenizer.json beside the model".into() });
    }
    Ok((onnx, tokenizer))
}

/// The preset of a model without an explicit one: `r1s-embed.json` beside its files (here: beside
/// `tokenizer_or_model`), else `minilm`.
fn default_preset(tokenizer_or_model: &Path) -> Result<Preset> {
    let dir = tokenizer_or_model.parent().map(Path::to_path_buf).unwrap_or_default();
    Preset::from_model_dir(&dir)?.map_or_else(|| Preset::named("minilm"), Ok)
}

/// The preset `OnnxEmbedder::load` uses for `model` when none is given.
pub fn preset_for(model: &Path) -> Result<Preset> {
    let (onnx, _) = model_files(model)?;
    default_preset(&onnx)
}

/// What the model outputs.
#[derive(Debug, Clone)]
struct Output {
    name: String,
    /// `[batch, dim]` already pooled (else `[batch, seq, dim]` token states).
    pooled: bool,
}

/// Reusable inference state, behind a mutex (ONNX Runtime sessions run with `&mut`).
struct Work {
    session: Session,
    ids: Vec<i64>,
    mask: Vec<i64>,
    types: Vec<i64>,
}

/// A text encoder run by ONNX Runtime.
pub struct OnnxEmbedder {
    /// One per session; batches are spread over them.
    work: Vec<Mutex<Work>>,
    tokenizer: Tokenizer,
    preset: Preset,
    dim: usize,
    token_type_ids: bool,
    output: Output,
    batch: usize,
    max_len: usize,
    model_path: PathBuf,
    device: String,
}

impl std::fmt::Debug for OnnxEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxEmbedder")
            .field("model", &self.model_path)
            .field("preset", &self.preset.name)
            .field("dim", &self.dim)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

fn is_int64_tensor(t: &ValueType) -> bool {
    matches!(t, ValueType::Tensor { ty: TensorElementType::Int64, .. })
}

fn rank(t: &ValueType) -> Option<usize> {
    match t {
        ValueType::Tensor { shape, .. } => Some(shape.len()),
        _ => None,
    }
}

impl OnnxEmbedder {
    /// Loads the model and tokenizer and checks the model's signature with a probe inference.
    pub fn load(cfg: &EmbedderConfig) -> Result<OnnxEmbedder> {
        let (onnx, tok_path) = model_files(&cfg.model)?;
        let preset = match &cfg.preset {
            Some(p) => p.clone(),
            None => default_preset(&tok_path)?,
        };
        if cfg.max_len < 2 || cfg.batch == 0 {
            return Err(EmbedError::Options("--max-len must be at least 2 and --batch at least 1".into()));
        }
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| EmbedError::Model { path: tok_path.clone(), reason: format!("not a tokenizer.json: {e}") })?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: cfg.max_len, ..TruncationParams::default() }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;

        let env = crate::runtime::environment()?;
        // more threads than cores gain nothing, and each CPU session holds its own copy of the
        // model's working memory (~90 MiB for MiniLM): a mistyped count must not exhaust the RAM
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = if cfg.threads == 0 { cores } else { cfg.threads.min(cores) };
        if cfg.threads > cores {
            log::warn!("{} embedder threads asked for, {cores} cores: using {cores}", cfg.threads);
        }
        let sessions = match (cfg.sessions, cfg.device) {
            (0, Device::Cpu) => threads,
            (0, _) => 1,
            (n, _) => n,
        };
        let per_session = (threads / sessions).max(1);
        let mut extra = Vec::with_capacity(sessions.saturating_sub(1));
        for _ in 1..sessions {
            extra.push(build_session(env, &onnx, cfg, per_session)?.0);
        }
        let (session, device) = build_session(env, &onnx, cfg, per_session)?;
        let sig = |reason: String| EmbedError::Signature { path: onnx.clone(), reason };
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for required in ["input_ids", "attention_mask"] {
            if !names.contains(&required) {
                return Err(sig(format!("no input {required:?} (inputs: {names:?})")));
            }
        }
        for i in session.inputs() {
            match i.name() {
                "input_ids" | "attention_mask" | "token_type_ids" => {
                    if !is_int64_tensor(i.dtype()) {
                        return Err(sig(format!("input {:?} must be an int64 tensor, is {:?}", i.name(), i.dtype())));
                    }
                }
                other => return Err(sig(format!("unexpected input {other:?} (inputs: {names:?})"))),
            }
        }
        let token_type_ids = names.contains(&"token_type_ids");
        let outputs: Vec<(String, Option<usize>)> =
            session.outputs().iter().map(|o| (o.name().to_owned(), rank(o.dtype()))).collect();
        let output = ["last_hidden_state", "token_embeddings"]
            .iter()
            .find_map(|n| outputs.iter().find(|(name, r)| name == n && *r == Some(3)))
            .or_else(|| outputs.iter().find(|(_, r)| *r == Some(3)))
            .map(|(name, _)| Output { name: name.clone(), pooled: false })
            .or_else(|| {
                outputs
                    .iter()
                    .find(|(name, r)| *r == Some(2) && (name == "sentence_embedding" || name == "embeddings"))
                    .map(|(name, _)| Output { name: name.clone(), pooled: true })
            })
            .ok_or_else(|| {
                sig(format!("no [batch, seq, dim] or pooled [batch, dim] float output (outputs: {outputs:?})"))
            })?;

        let mut e = OnnxEmbedder {
            work: std::iter::once(session)
                .chain(extra)
                .map(|session| Mutex::new(Work { session, ids: Vec::new(), mask: Vec::new(), types: Vec::new() }))
                .collect(),
            tokenizer,
            preset,
            dim: 0,
            token_type_ids,
            output,
            batch: cfg.batch,
            max_len: cfg.max_len,
            model_path: onnx.clone(),
            device,
        };
        // the probe: learns the dimension and proves the model runs
        let probe = e.run_batch(0, &[&[101, 102]]).map_err(|err| sig(format!("probe inference failed: {err}")))?;
        e.dim = probe.len();
        if e.dim == 0 {
            return Err(sig("the model returned an empty vector".into()));
        }
        Ok(e)
    }

    /// The preset in use.
    pub fn preset(&self) -> &Preset {
        &self.preset
    }

    /// The model file.
    pub fn model_path(&self) -> &Path {
        &self.model_path
    }

    /// The execution provider in use (`cpu` or `cuda:N`).
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Token ids of `text` as the model sees it on `side` (special tokens included, truncated).
    pub fn token_ids(&self, text: &str, side: Side) -> Result<Vec<u32>> {
        let t = self.preset.prefixed(text, side);
        let enc = self.tokenizer.encode(t.as_ref(), true).map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Maximum tokens per text.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Runs one padded batch of token id sequences; returns `[rows, dim]` pooled (and normalised)
    /// vectors.
    fn run_batch(&self, session: usize, seqs: &[&[u32]]) -> Result<Vec<f32>> {
        let rows = seqs.len();
        let len = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut guard =
            self.work[session].lock().map_err(|_| EmbedError::Inference("a previous inference panicked".into()))?;
        let work = &mut *guard;
        for buf in [&mut work.ids, &mut work.mask, &mut work.types] {
            buf.clear();
            buf.resize(rows * len, 0);
        }
        for (r, s) in seqs.iter().enumerate() {
            for (k, &id) in s.iter().enumerate() {
                work.ids[r * len + k] = i64::from(id);
                work.mask[r * len + k] = 1;
            }
        }
        let shape = [rows, len];
        let ids = TensorRef::from_array_view((shape, &work.ids[..]))?;
        let mask = TensorRef::from_array_view((shape, &work.mask[..]))?;
        let mut inputs = ort::inputs!["input_ids" => ids, "attention_mask" => mask];
        if self.token_type_ids {
            inputs.push(("token_type_ids".into(), TensorRef::from_array_view((shape, &work.types[..]))?.into()));
        }
        let outputs = work.session.run(inputs)?;
        let value = outputs
            .get(&self.output.name)
            .ok_or_else(|| EmbedError::Inference(format!("output {:?} missing", self.output.name)))?;
        let (oshape, data) = value.try_extract_tensor::<f32>()?;
        let dims: Vec<usize> = oshape.iter().map(|&d| d as usize).collect();
        let mut out;
        if self.output.pooled {
            if dims.len() != 2 || dims[0] != rows {
                return Err(EmbedError::Inference(format!("output shape {dims:?}, expected [{rows}, dim]")));
            }
            out = data.to_vec();
        } else {
            if dims.len() != 3 || dims[0] != rows || dims[1] != len {
                return Err(EmbedError::Inference(format!("output shape {dims:?}, expected [{rows}, {len}, dim]")));
            }
            let d = dims[2];
            out = vec![0f32; rows * d];
            for (r, s) in seqs.iter().enumerate() {
                let dst = &mut out[r * d..(r + 1) * d];
                let states = &data[r * len * d..(r + 1) * len * d];
                match self.preset.pooling {
                    Pooling::Cls => dst.copy_from_slice(&states[..d]),
                    Pooling::Mean => {
                        let n = s.len().max(1);
                        for tok in states.chunks_exact(d).take(n) {
                            for (a, &b) in dst.iter_mut().zip(tok) {
                                *a += b;
                            }
                        }
                        let inv = 1.0 / n as f32;
                        dst.iter_mut().for_each(|a| *a *= inv);
                    }
                }
            }
        }
        if self.preset.normalize {
            let d = out.len() / rows.max(1);
            for row in out.chunks_exact_mut(d.max(1)) {
                let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|x| *x /= norm);
            }
        }
        Ok(out)
    }

    /// Embeds already-tokenised sequences, length-bucketed, results in input order.
    pub fn embed_tokens(&self, seqs: &[Vec<u32>]) -> Result<Vec<f32>> {
        self.embed_tokens_observed(seqs, &mut |_| true)
    }

    /// [`Self::embed_tokens`], calling `after_batch(rows)` after each batch; returning `false` from it
    /// stops with [`EmbedError::Cancelled`].
    pub fn embed_tokens_observed(
        &self,
        seqs: &[Vec<u32>],
        after_batch: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<f32>> {
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let batches: Vec<&[usize]> = order.chunks(self.batch).collect();
        let mut out = vec![0f32; seqs.len() * self.dim];
        let next = std::sync::atomic::AtomicUsize::new(0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<Vec<f32>>)>();
        let workers = self.work.len().min(batches.len());
        std::thread::scope(|scope| -> Result<()> {
            for session in 0..workers {
                let (tx, next, stop, batches) = (tx.clone(), &next, &stop, &batches);
                scope.spawn(move || {
                    let mut batch: Vec<&[u32]> = Vec::with_capacity(self.batch);
                    loop {
                        let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if b >= batches.len() || stop.load(std::sync::atomic::Ordering::Relaxed) {
                            return;
                        }
                        batch.clear();
                        batch.extend(batches[b].iter().map(|&i| seqs[i].as_slice()));
                        if tx.send((b, self.run_batch(session, &batch))).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(tx);
            let halt = |e| {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                Err(e)
            };
            for (b, vecs) in rx.iter() {
                let group = batches[b];
                let vecs = match vecs {
                    Ok(v) if v.len() == group.len() * self.dim => v,
                    Ok(v) => {
                        return halt(EmbedError::Inference(format!(
                            "the model returned {} values for {} texts of dimension {}",
                            v.len(),
                            group.len(),
                            self.dim
                        )));
                    }
                    Err(e) => return halt(e),
                };
                for (k, &i) in group.iter().enumerate() {
                    out[i * self.dim..(i + 1) * self.dim].copy_from_slice(&vecs[k * self.dim..(k + 1) * self.dim]);
                }
                if !after_batch(group.len()) {
                    return halt(EmbedError::Cancelled);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Tokenises `texts` for `side` (in parallel).
    pub fn tokenize(&self, texts: &[&str], side: Side) -> Result<Vec<Vec<u32>>> {
        let prefixed: Vec<String> = texts.iter().map(|t| self.preset.prefixed(t, side).into_owned()).collect();
        let encs = self.tokenizer.encode_batch(prefixed, true).map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }
}

impl Embedder for OnnxEmbedder {
    type Error = EmbedError;

    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&self, texts: &[&str], side: Side) -> Result<Vec<f32>> {
        let seqs = self.tokenize(texts, side)?;
        self.embed_tokens(&seqs)
    }
}

fn build_session(
    env: &ort::environment::Environment,
    onnx: &Path,
    cfg: &EmbedderConfig,
    threads: usize,
) -> Result<(Session, String)> {
    let fail = |e: &dyn std::fmt::Display| EmbedError::Model { path: onnx.to_path_buf(), reason: e.to_string() };
    let builder = Session::builder(env).map_err(|e| fail(&e))?;
    let mut builder = builder.with_intra_threads(threads).map_err(|e| fail(&e))?;
    let device = match cfg.device {
        Device::Cpu => "cpu".to_owned(),
        Device::Cuda(id) => {
            builder =
                cuda(builder, id).map_err(|reason| EmbedError::Device { device: format!("cuda:{id}"), reason })?;
            format!("cuda:{id}")
        }
        Device::Auto => match cuda(builder.clone(), 0) {
            Ok(b) => {
                builder = b;
                "cuda:0".to_owned()
            }
            Err(reason) => {
                log::warn!("CUDA unavailable ({reason}); running on CPU");
                "cpu".to_owned()
            }
        },
    };
    let session = builder.commit_from_file(onnx).map_err(|e| fail(&format!("cannot load the ONNX model: {e}")))?;
    Ok((session, device))
}

#[cfg(feature = "cuda")]
fn cuda(
    builder: ort::session::builder::SessionBuilder,
    id: i32,
) -> std::result::Result<ort::session::builder::SessionBuilder, String> {
    let ep = ort::ep::CUDA::default().with_device_id(id).build().error_on_failure();
    builder
        .with_execution_providers([ep])
        .map_err(|e| format!("ONNX Runtime could not register the CUDA execution provider: {e}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda(
    _: ort::session::builder::SessionBuilder,
    _: i32,
) -> std::result::Result<ort::session::builder::SessionBuilder, String> {
    Err("this r1s was built without the `cuda` feature (cargo build --features cuda)".into())
}
