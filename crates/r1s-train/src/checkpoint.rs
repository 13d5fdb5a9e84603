//! Checkpoints: a directory that is at once a Hugging Face model directory (`model.safetensors`
//! with HF names, `config.json`, `tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json`: `r1s` and Python tools load it as a model) and the trainer's state
//! (`optimizer.safetensors` with AdamW's moments, `reference.safetensors` with the reference
//! model's trainable part, `trainer.json` with the step, stage, seed and configuration).
//! With LoRA, `model.safetensors` holds the adapters merged in; the adapters themselves are in
//! `adapter/` (`adapter_model.safetensors` + `adapter_config.json`: PEFT's names, layout and config,
//! for the frozen top in `reference.safetensors`, i.e. the model the run or stage started from).
//! Written to `NAME.part` and renamed when complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use r1s_policy::Policy;
use serde::{Deserialize, Serialize};

use crate::config::LoraConfig;
use crate::error::{Result, TrainError};
use crate::model::{Lora, ParamMut, Split, Top};
use crate::optim::{AdamW, Moments};

/// The subdirectory of a checkpoint with the LoRA adapters (PEFT's `adapter_config.json` and
/// `adapter_model.safetensors`).
pub const ADAPTER_DIR: &str = "adapter";

/// The trainer's position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps of the whole run so far (RL: one per step and train batch; SFT: per batch).
    pub global_step: usize,
    /// The stage being run and the steps of it done.
    pub stage: usize,
    pub stage_step: usize,
    /// Every random choice of step `s` derives from `(seed, s)`: this is the whole RNG state.
    pub seed: u64,
    /// Trainable blocks (the split must match on resume).
    pub train_blocks: usize,
    /// LoRA settings (must match on resume).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// The configuration that produced it (TOML or SFT flags as JSON).
    pub config: serde_json::Value,
}

impl TrainerState {
    /// Whether checkpoint `dir` (whose state this is) was trained with the same split as asked now.
    pub fn check_split(&self, dir: &Path, train_blocks: usize, lora: Option<&LoraConfig>) -> Result<()> {
        if self.train_blocks != train_blocks || self.lora.as_ref() != lora {
            return Err(ck_err(dir, "train_blocks or lora differ from the run's settings"));
        }
        Ok(())
    }
}

fn ck_err(path: &Path, reason: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint { path: path.to_path_buf(), reason: reason.to_string() }
}

/// Named flat tensors with their shapes.
type Named = Vec<(String, Vec<f32>, Vec<usize>)>;
/// Tensors by name and the file's metadata.
type Loaded = (BTreeMap<String, Vec<f32>>, BTreeMap<String, String>);

fn write_tensors(path: &Path, tensors: Named, meta: BTreeMap<String, String>) -> Result<()> {
    let data = r1s_policy::load::f32_safetensors(tensors, meta).map_err(|e| ck_err(path, e))?;
    std::fs::write(path, data).map_err(|e| TrainError::io(path, e))
}

fn read_tensors(path: &Path) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| ck_err(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| ck_err(path, e))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(ck_err(path, format!("{name} is {:?}, not F32", view.dtype())));
        }
        let v: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        out.insert(name, v);
    }
    Ok((out, meta.metadata().clone().unwrap_or_default().into_iter().collect()))
}

fn vec1(v: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

fn write_json<T: Serialize + ?Sized>(p: &Path, v: &T) -> Result<()> {
    std::fs::write(p, serde_json::to_vec_pretty(v).map_err(|e| ck_err(p, e))?).map_err(|e| TrainError::io(p, e))
}

/// Writes the model files of `policy` into `dir` (a loadable Hugging Face directory).
pub fn save_model(policy: &Policy, dir: &Path) -> Result<()> {
    r1s_policy::load::save_safetensors(&policy.model, &dir.join("model.safetensors"))?;
    let mut cfg = serde_json::to_value(&policy.cfg).map_err(|e| ck_err(dir, e))?;
    let qwen = policy.model.blocks.first().is_some_and(|b| b.q.bias.is_some());
    cfg["architectures"] = serde_json::json!([if qwen { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }]);
    cfg["model_type"] = serde_json::json!(if qwen { "qwen2" } else { "llama" });
    cfg["torch_dtype"] = serde_json::json!("float32");
    let tok = &policy.tokenizer;
    let name = |id: Option<u32>| id.and_then(|i| tok.inner.id_to_token(i));
    cfg["bos_token_id"] = serde_json::json!(tok.bos);
    cfg["eos_token_id"] = serde_json::json!(tok.eos);
    write_json(&dir.join("config.json"), &cfg)?;
    write_json(
        &dir.join("generation_config.json"),
        &serde_json::json!({ "eos_token_id": tok.eos, "bos_token_id": tok.bos }),
    )?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &serde_json::json!({
            "bos_token": name(tok.bos),
            "eos_token": name(tok.eos.first().copied()),
            "pad_token": name(tok.pad),
            "add_bos_token": tok.add_bos,
            "chat_template": tok.chat_template,
        }),
    )?;
    let tp = dir.join("tokenizer.json");
    tok.inner.save(&tp, false).map_err(|e| ck_err(&tp, e))?;
    Ok(())
}

fn top_tensors(top: &mut Top, first: usize) -> Result<Named> {
    top.params_mut(first)
        .into_iter()
        .map(|(name, p)| {
            let v = crate::episode::to_vec(p.flat())?;
            let n = v.len();
            Ok((name, v, vec![n]))
        })
        .collect()
}

/// PEFT's layout of the adapters: `lora_A.weight` `[rank, in]`, `lora_B.weight` `[out, rank]` (the
/// transposes of r1s's).
fn adapter_tensors(lora: &mut Lora, first: usize) -> Result<Named> {
    lora.params_mut(first)
        .into_iter()
        .map(|(name, p)| {
            let ParamMut::Matrix(m) = p else { unreachable!("adapters are matrices") };
            let [a, b] = m.val().dims();
            let v = crate::episode::to_vec(m.val().inner().transpose().reshape([a * b]))?;
            Ok((name, v, vec![b, a]))
        })
        .collect()
}

/// Saves a checkpoint of `split` in `dir` (atomically: `dir.part` renamed).
pub fn save(dir: &Path, split: &Split, opt: &AdamW, state: &TrainerState) -> Result<()> {
    let part = dir.with_extension("part");
    if part.exists() {
        std::fs::remove_dir_all(&part).map_err(|e| TrainError::io(&part, e))?;
    }
    std::fs::create_dir_all(&part).map_err(|e| TrainError::io(&part, e))?;
    save_model(&split.policy, &part)?;
    let mut tensors = Vec::new();
    for (name, m) in &opt.state {
        let (mv, vv) = (crate::episode::to_vec(m.m.clone())?, crate::episode::to_vec(m.v.clone())?);
        let n = mv.len();
        tensors.push((format!("{name}.exp_avg"), mv, vec![n]));
        tensors.push((format!("{name}.exp_avg_sq"), vv, vec![n]));
    }
    let meta = BTreeMap::from([("step".to_owned(), opt.t.to_string())]);
    write_tensors(&part.join("optimizer.safetensors"), tensors, meta)?;
    // with LoRA the frozen top is the adapters' base and equals the reference
    let base = if split.lora.is_some() { Some(split.top.valid()) } else { split.reference.clone() };
    if let Some(mut r) = base {
        write_tensors(&part.join("reference.safetensors"), top_tensors(&mut r, split.first)?, BTreeMap::new())?;
    }
    if let Some(l) = &split.lora {
        let layers = split.policy.model.blocks.len();
        // in a subdirectory: transformers loads an adapter it finds beside model.safetensors on
        // top of it, which would apply the already merged adapters twice
        let adapter = part.join(ADAPTER_DIR);
        std::fs::create_dir_all(&adapter).map_err(|e| TrainError::io(&adapter, e))?;
        write_json(
            &adapter.join("adapter_config.json"),
            &serde_json::json!({
                "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": l.cfg.rank, "lora_alpha": l.cfg.alpha,
                "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": false, "inference_mode": true,
                "target_modules": l.cfg.targets, "layers_to_transform": (split.first..layers).collect::<Vec<_>>(),
                "base_model_name_or_path": null,
            }),
        )?;
        let tensors = adapter_tensors(&mut l.clone(), split.first)?;
        write_tensors(&adapter.join("adapter_model.safetensors"), tensors, BTreeMap::new())?;
    }
    write_json(&part.join("trainer.json"), state)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    std::fs::rename(&part, dir).map_err(|e| TrainError::io(dir, e))
}

/// The trainer state of checkpoint `dir`.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let p = dir.join("trainer.json");
    let bytes = std::fs::read(&p).map_err(|e| TrainError::io(&p, e))?;
    serde_json::from_slice(&bytes).map_err(|e| ck_err(&p, e))
}

/// Loads AdamW's moments and step count from checkpoint `dir` into `opt`.
pub fn load_optimizer(dir: &Path, opt: &mut AdamW, device: &Device) -> Result<()> {
    let p = dir.join("optimizer.safetensors");
    let (tensors, meta) = read_tensors(&p)?;
    opt.t = meta.get("step").and_then(|s| s.parse().ok()).ok_or_else(|| ck_err(&p, "no step in the metadata"))?;
    opt.state.clear();
    let mut names: Vec<&String> = tensors.keys().filter(|k| k.ends_with(".exp_avg")).collect();
    names.sort();
    for k in names {
        let base = k.trim_end_matches(".exp_avg").to_owned();
        let v =
            tensors.get(&format!("{base}.exp_avg_sq")).ok_or_else(|| ck_err(&p, format!("{base}: no exp_avg_sq")))?;
        opt.state.insert(base, Moments { m: vec1(tensors[k].clone(), device), v: vec1(v.clone(), device) });
    }
    Ok(())
}

/// The split saved in checkpoint `dir`: its model, reference and, with LoRA, frozen top and adapters.
pub fn load_split(
    dir: &Path,
    device: &Device,
    train_blocks: usize,
    with_reference: bool,
    lora: Option<&LoraConfig>,
    seed: u64,
) -> Result<Split> {
    let mut split = Split::new(Policy::load(dir, device)?, train_blocks, with_reference, lora, seed)?;
    if split.lora.is_none() {
        if let Some(r) = split.reference.as_mut() {
            load_reference(dir, r, split.first, device)?;
        }
        return Ok(split);
    }
    let mut base = split.top.valid();
    load_reference(dir, &mut base, split.first, device)?;
    split.top = base.clone().fork(&split.ad).no_grad();
    if split.reference.is_some() {
        split.reference = Some(base);
    }
    let p = dir.join(ADAPTER_DIR).join("adapter_model.safetensors");
    let (tensors, _) = read_tensors(&p)?;
    let ad = split.ad.clone();
    for (name, mut param) in split.params_mut() {
        let ParamMut::Matrix(m) = &param else { unreachable!("adapters are matrices") };
        let [a, b] = m.val().dims();
        let v = tensors.get(&name).ok_or_else(|| ck_err(&p, format!("no {name}")))?;
        if v.len() != a * b {
            return Err(ck_err(&p, format!("{name} has {} values, the adapter {}", v.len(), a * b)));
        }
        let t = Tensor::<2>::from_data(TensorData::new(v.clone(), [b, a]), device).transpose().reshape([a * b]);
        param.set(t, &ad);
    }
    split.sync()?;
    Ok(split)
}

/// Loads the reference top of checkpoint `dir` into `top` (same split).
pub fn load_reference(dir: &Path, top: &mut Top, first: usize, device: &Device) -> Result<()> {
    let p = dir.join("reference.safetensors");
    let (tensors, _) = read_tensors(&p)?;
    for (name, mut param) in top.params_mut(first) {
        let v = tensors.get(&name).ok_or_else(|| ck_err(&p, format!("no {name}")))?;
        if v.len() != param.numel() {
            return Err(ck_err(&p, format!("{name} has {} values, the model {}", v.len(), param.numel())));
        }
        let t = vec1(v.clone(), device);
        match &mut param {
            ParamMut::Matrix(m) => {
                let dims = m.val().dims();
                **m = burn::module::Param::initialized(m.id, t.reshape(dims));
            }
            ParamMut::Vector(m) => **m = burn::module::Param::initialized(m.id, t),
        }
    }
    Ok(())
}

/// Complete checkpoints under `out/checkpoints`, oldest first, with their steps.
pub fn list(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let dir = out.join("checkpoints");
    let rd = match std::fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(&dir, e)),
    };
    let mut found = Vec::new();
    for e in rd {
        let e = e.map_err(|e| TrainError::io(&dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix("step-").and_then(|s| s.parse::<usize>().ok()) else { continue };
        if e.path().join("trainer.json").exists() {
            found.push((n, e.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Deletes all but the newest `keep` complete checkpoints (0 keeps all).
pub fn prune(out: &Path, keep: usize) -> Result<()> {
    let all = list(out)?;
    if keep == 0 || all.len() <= keep {
        return Ok(());
    }
    for (_, p) in &all[..all.len() - keep] {
        std::fs::remove_dir_all(p).map_err(|e| TrainError::io(p, e))?;
    }
    Ok(())
}

/// The newest complete checkpoint under `out/checkpoints` (`step-NNNNNN`, no `.part`).
pub fn latest(out: &Path) -> Result<Option<PathBuf>> {
    Ok(list(out)?.pop().map(|(_, p)| p))
}

/// `out/checkpoints/step-NNNNNN`.
pub fn dir_for(out: &Path, step: usize) -> PathBuf {
    out.join("checkpoints").join(format!("step-{step:06}"))
}

/// Appends one JSON line to a metrics or rollouts file.
pub(crate) fn append(path: &Path, line: &serde_json::Value) -> Result<()> {
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| TrainError::io(path, e))?;
    use std::io::Write;
    writeln!(f, "{line}").map_err(|e| TrainError::io(path, e))
}

/// Keeps the lines of a JSONL file whose `step` is at most `step` (a resumed run replays the rest).
pub(crate) fn truncate_after(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, kept).map_err(|e| TrainError::io(path, e))
}
