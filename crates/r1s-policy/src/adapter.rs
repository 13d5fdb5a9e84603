//! PEFT LoRA adapters merged into a loaded model: a directory with `adapter_config.json` and
//! `adapter_model.safetensors`, as PEFT's `save_pretrained` writes it and as r1s checkpoints hold it
//! under `adapter/`.
//!
//! Format (PEFT's `LoraConfig` and `get_peft_model_state_dict`): tensors named
//! `base_model.model.model.layers.{L}.{self_attn|mlp}.{proj}.lora_A.weight` `[r, in]` and
//! `….lora_B.weight` `[out, r]`; each targeted projection becomes `W + s·B·A` (`W` `[out, in]`) with
//! `s = lora_alpha / r`, or `lora_alpha / √r` under `use_rslora`. DoRA, per-module ranks or alphas
//! and adapters of other modules (embeddings, `modules_to_save`) are refused. `fan_in_fan_out: true`
//! is loaded as PEFT loads it on `torch.nn.Linear` targets (every projection of a Llama): PEFT warns
//! that the flag does not apply to `Linear`, sets it to false and merges `B·A` (its
//! `tuners/lora/layer.py`, `Linear.__init__`); r1s warns the same and merges the same weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use serde::Deserialize;

use crate::error::{PolicyError, Result};
use crate::load::{SafetensorsWeights, WeightSource, Weights};
use crate::model::Llama;

/// The fields of `adapter_config.json` that decide the merged weights.
#[derive(Debug, Deserialize)]
struct AdapterConfig {
    #[serde(default)]
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    #[serde(default)]
    rank_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, serde_json::Value>,
}

/// What [`apply`] merged.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The adapter directory.
    pub dir: PathBuf,
    /// LoRA rank `r`.
    pub rank: usize,
    /// The scale `s` of `W + s·B·A`.
    pub scale: f64,
    /// Projections changed (one per `lora_A`/`lora_B` pair).
    pub modules: usize,
    /// The decoder layers those projections are in, ascending.
    pub layers: Vec<usize>,
}

const PREFIX: &str = "base_model.model.model.layers.";
/// A decoder block's projections by their Hugging Face paths inside the block, in the order r1s
/// walks them (q, k, v, o, gate, up, down).
pub const PROJECTION_PATHS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

fn bad(path: &Path, reason: impl Into<String>) -> PolicyError {
    PolicyError::BadFile { path: path.to_path_buf(), offset: None, reason: reason.into() }
}

/// `(layer, projection index, is A)` of a PEFT tensor name, or `None` when it is not a projection's
/// LoRA factor.
fn parse_name(name: &str) -> Option<(usize, usize, bool)> {
    let rest = name.strip_prefix(PREFIX)?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, factor) = rest.rsplit_once(".lora_")?;
    let is_a = match factor {
        "A.weight" => true,
        "B.weight" => false,
        _ => return None,
    };
    let p = PROJECTION_PATHS.iter().position(|p| *p == module)?;
    Some((layer, p, is_a))
}

/// An adapter as read: its scale and, per `(layer, projection index)`, `A` `[r, in]` and `B`
/// `[out, r]` as stored (row-major f32).
#[derive(Debug, Clone)]
pub struct Adapter {
    pub dir: PathBuf,
    pub rank: usize,
    /// `s` of `W + s·B·A`.
    pub scale: f64,
    /// `base_model_name_or_path` of the config, when given.
    pub base_model: Option<String>,
    pub factors: BTreeMap<(usize, usize), (Weights, Weights)>,
}

/// Reads the PEFT LoRA adapter in `dir`, checking its settings and that every factor pairs up with
/// rank `r`.
///
/// Errors: `Io` when a file is missing, `Config` for settings r1s does not merge (or `dir` being a
/// checkpoint whose adapter is in `adapter/`), `BadFile` for a tensor that is not a projection's
/// factor, has no partner, or does not have rank `r`.
pub fn read(dir: &Path) -> Result<Adapter> {
    let cpath = dir.join("adapter_config.json");
    if !cpath.is_file() && dir.join("adapter").join("adapter_config.json").is_file() {
        return Err(PolicyError::Config {
            path: dir.to_path_buf(),
            reason: format!("an r1s checkpoint: its adapter is {}", dir.join("adapter").display()),
        });
    }
    if dir.is_dir() && !cpath.exists() {
        return Err(PolicyError::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not a PEFT LoRA adapter directory (no adapter_config.json; an adapter is adapter_config.json \
                 + adapter_model.safetensors, as `policy train --lora-rank` writes under checkpoints/step-N/adapter)",
            ),
        ));
    }
    let bytes = std::fs::read(&cpath).map_err(|e| PolicyError::io(&cpath, e))?;
    let cfg: AdapterConfig = serde_json::from_slice(&bytes)
        .map_err(|e| PolicyError::Config { path: cpath.clone(), reason: format!("not a PEFT adapter config: {e}") })?;
    let refuse = |reason: String| PolicyError::Config { path: cpath.clone(), reason };
    if let Some(t) = cfg.peft_type.as_deref().filter(|t| *t != "LORA") {
        return Err(refuse(format!("peft_type {t:?}: r1s merges LORA adapters")));
    }
    if cfg.r == 0 || !cfg.lora_alpha.is_finite() {
        return Err(refuse(format!("r {} and lora_alpha {} do not make a LoRA scale", cfg.r, cfg.lora_alpha)));
    }
    if cfg.use_dora {
        return Err(refuse("use_dora: DoRA adapters are not merged by r1s".into()));
    }
    if cfg.fan_in_fan_out {
        log::warn!(
            "{}: fan_in_fan_out is true, but the targets are Linear layers: read as false (as PEFT does)",
            cpath.display()
        );
    }
    if !cfg.rank_pattern.is_empty() || !cfg.alpha_pattern.is_empty() {
        return Err(refuse("rank_pattern / alpha_pattern: r1s merges adapters with one rank and alpha".into()));
    }
    let scale = if cfg.use_rslora { cfg.lora_alpha / (cfg.r as f64).sqrt() } else { cfg.lora_alpha / cfg.r as f64 };
    let wpath = dir.join("adapter_model.safetensors");
    if !wpath.is_file() {
        return Err(PolicyError::io(&wpath, std::io::Error::from(std::io::ErrorKind::NotFound)));
    }
    let weights = SafetensorsWeights::open_files(dir, vec![wpath.clone()])?;
    let mut names: BTreeMap<(usize, usize), [Option<String>; 2]> = BTreeMap::new();
    for name in weights.names()? {
        let (layer, p, is_a) = parse_name(&name).ok_or_else(|| {
            bad(&wpath, format!("tensor {name:?} is not a LoRA factor of a decoder projection (lora_A / lora_B)"))
        })?;
        names.entry((layer, p)).or_default()[usize::from(!is_a)] = Some(name);
    }
    if names.is_empty() {
        return Err(bad(&wpath, "no LoRA tensors"));
    }
    let r = cfg.r;
    let mut factors = BTreeMap::new();
    for ((layer, p), [a_name, b_name]) in names {
        let (Some(a_name), Some(b_name)) = (a_name, b_name) else {
            return Err(bad(
                &wpath,
                format!("layer {layer} {}: lora_A and lora_B must both be present", PROJECTION_PATHS[p]),
            ));
        };
        let get = |name: &str| -> Result<Weights> {
            weights.get(name)?.ok_or_else(|| bad(&wpath, format!("no tensor {name:?}")))
        };
        let (a, b) = (get(&a_name)?, get(&b_name)?);
        if a.1.len() != 2 || b.1.len() != 2 || a.1[0] != r || b.1[1] != r {
            return Err(bad(
                &wpath,
                format!("{a_name} {:?} and {b_name} {:?} are not [r, in] and [out, r] with r = {r}", a.1, b.1),
            ));
        }
        factors.insert((layer, p), (a, b));
    }
    Ok(Adapter { dir: dir.to_path_buf(), rank: r, scale, base_model: cfg.base_model_name_or_path, factors })
}

/// Merges the LoRA adapter in `dir` into `model`'s projections (`W += s·B·A`). Called repeatedly,
/// adapters add up (the order changes only rounding).
///
/// Errors: those of [`read`], and `Shape` when a factor does not fit the model (another base model,
/// or a layer past its last).
pub fn apply(model: &mut Llama, dir: &Path) -> Result<Merged> {
    let ad = read(dir)?;
    let wpath = dir.join("adapter_model.safetensors");
    // every factor is checked against the model before any weight changes
    for (&(layer, p), (a, b)) in &ad.factors {
        let Some([input, output]) = model.blocks.get(layer).map(|b| b.projection(p).weight.val().dims()) else {
            return Err(bad(
                &wpath,
                format!("an adapter of layer {layer}; the model has {} layers", model.blocks.len()),
            ));
        };
        for (f, got, expected) in [("A", &a.1, vec![ad.rank, input]), ("B", &b.1, vec![output, ad.rank])] {
            if *got != expected {
                return Err(PolicyError::Shape {
                    path: wpath.clone(),
                    name: format!("{PREFIX}{layer}.{}.lora_{f}.weight", PROJECTION_PATHS[p]),
                    got: got.clone(),
                    expected,
                });
            }
        }
    }
    for (&(layer, p), (a, b)) in &ad.factors {
        let linear = model.blocks[layer].projection_mut(p);
        let device = linear.weight.val().device();
        let [input, output] = linear.weight.val().dims();
        let at = Tensor::<2>::from_data(TensorData::new(a.0.clone(), [ad.rank, input]), &device);
        let bt = Tensor::<2>::from_data(TensorData::new(b.0.clone(), [output, ad.rank]), &device);
        // burn's weight is [in, out]: W += s·Aᵀ·Bᵀ
        let delta = at.transpose().matmul(bt.transpose()).mul_scalar(ad.scale);
        linear.weight = Param::initialized(linear.weight.id, linear.weight.val() + delta);
    }
    let mut layers: Vec<usize> = ad.factors.keys().map(|(l, _)| *l).collect();
    layers.dedup();
    Ok(Merged { dir: ad.dir, rank: ad.rank, scale: ad.scale, modules: ad.factors.len(), layers })
}

/// How [`stack`] stores the factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDtype {
    F32,
    F16,
    Bf16,
}

impl std::str::FromStr for StoreDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<StoreDtype, String> {
        match s {
            "f32" | "float32" => Ok(StoreDtype::F32),
            "f16" | "float16" => Ok(StoreDtype::F16),
            "bf16" | "bfloat16" => Ok(StoreDtype::Bf16),
            other => Err(format!("unknown dtype {other:?} (f32, f16, bf16)")),
        }
    }
}

/// Writes one PEFT adapter equal to the adapters in `dirs` applied together (each trained on top of
/// the previous ones, e.g. an SFT cold start then RL stages whose adapters were merged at each stage
/// boundary): rank `R = Σ rᵢ`, `A = [A₁; A₂; …]` `[R, in]`, `B = [s₁·B₁, s₂·B₂, …]` `[out, R]` and
/// `lora_alpha = R` (scale 1), so `B·A = Σ sᵢ·Bᵢ·Aᵢ` exactly up to the storage dtype. The
/// adapters must cover the same projections. Written to `out` atomically (`out.part` renamed); an
/// existing `out` that is neither empty nor an adapter directory, or that is one of `dirs`, is refused.
pub fn stack(dirs: &[PathBuf], out: &Path, dtype: StoreDtype) -> Result<Merged> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    };
    if let Some(d) = dirs.iter().find(|d| same(d, out)) {
        return Err(PolicyError::Options(format!(
            "--out {} is one of the adapters stacked; give a new directory",
            d.display()
        )));
    }
    let adapters = dirs.iter().map(|d| read(d)).collect::<Result<Vec<_>>>()?;
    let Some(first) = adapters.first() else {
        return Err(PolicyError::Options("no adapter to stack".into()));
    };
    for ad in &adapters[1..] {
        if ad.factors.keys().ne(first.factors.keys()) {
            return Err(PolicyError::Options(format!(
                "{} and {} adapt different projections; r1s stacks adapters of the same projections",
                first.dir.display(),
                ad.dir.display()
            )));
        }
    }
    let rank = adapters
        .iter()
        .try_fold(0usize, |r, a| r.checked_add(a.rank))
        .ok_or_else(|| PolicyError::Options("the adapters' ranks overflow".into()))?;
    // never replace something that is not an adapter
    if out.exists() && !out.join("adapter_config.json").is_file() {
        let empty = std::fs::read_dir(out).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !empty {
            return Err(PolicyError::Options(format!(
                "{} exists and is not an adapter directory; give a new --out",
                out.display()
            )));
        }
    }
    let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> = Vec::new();
    for (&(layer, p), (a0, b0)) in &first.factors {
        let (input, output) = (a0.1[1], b0.1[0]);
        let name = format!("{PREFIX}{layer}.{}", PROJECTION_PATHS[p]);
        let mut a_all = Vec::with_capacity(rank * input);
        let mut b_all = vec![0f32; output * rank];
        let mut col = 0;
        for ad in &adapters {
            let (a, b) = &ad.factors[&(layer, p)];
            if a.1[1] != input || b.1[0] != output {
                return Err(PolicyError::Shape {
                    path: ad.dir.join("adapter_model.safetensors"),
                    name: format!("{name}.lora_A.weight"),
                    got: vec![a.1[1], b.1[0]],
                    expected: vec![input, output],
                });
            }
            a_all.extend_from_slice(&a.0);
            for o in 0..output {
                for k in 0..ad.rank {
                    b_all[o * rank + col + k] = (ad.scale * f64::from(b.0[o * ad.rank + k])) as f32;
                }
            }
            col += ad.rank;
        }
        tensors.push((format!("{name}.lora_A.weight"), a_all, vec![rank, input]));
        tensors.push((format!("{name}.lora_B.weight"), b_all, vec![output, rank]));
    }
    let mut targets: Vec<&str> =
        first.factors.keys().map(|(_, p)| PROJECTION_PATHS[*p].rsplit('.').next().unwrap_or_default()).collect();
    targets.sort_unstable();
    targets.dedup();
    let mut layers: Vec<usize> = first.factors.keys().map(|(l, _)| *l).collect();
    layers.dedup();
    let config = serde_json::json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank,
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": false, "inference_mode": true,
        "target_modules": targets, "layers_to_transform": layers,
        "base_model_name_or_path": first.base_model,
    });
    let data = crate::load::safetensors_bytes(tensors, dtype).map_err(PolicyError::Options)?;
    let mut part_name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    part_name.push(".part");
    let part = out.with_file_name(part_name);
    if part.exists() {
        std::fs::remove_dir_all(&part).map_err(|e| PolicyError::io(&part, e))?;
    }
    std::fs::create_dir_all(&part).map_err(|e| PolicyError::io(&part, e))?;
    let cfg_bytes = serde_json::to_vec_pretty(&config).map_err(|e| PolicyError::Options(e.to_string()))?;
    std::fs::write(part.join("adapter_config.json"), cfg_bytes).map_err(|e| PolicyError::io(&part, e))?;
    std::fs::write(part.join("adapter_model.safetensors"), data).map_err(|e| PolicyError::io(&part, e))?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| PolicyError::io(out, e))?;
    }
    std::fs::rename(&part, out).map_err(|e| PolicyError::io(out, e))?;
    Ok(Merged { dir: out.to_path_buf(), rank, scale: 1.0, modules: first.factors.len(), layers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_names_parse() {
        assert_eq!(parse_name("base_model.model.model.layers.22.self_attn.q_proj.lora_A.weight"), Some((22, 0, true)));
        assert_eq!(parse_name("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"), Some((0, 6, false)));
        assert_eq!(parse_name("base_model.model.model.layers.0.mlp.down_proj.lora_B.default.weight"), None);
        assert_eq!(parse_name("base_model.model.model.embed_tokens.lora_embedding_A"), None);
        assert_eq!(parse_name("base_model.model.model.layers.x.mlp.up_proj.lora_A.weight"), None);
        assert_eq!(parse_name("base_model.model.model.layers.1.mlp.act.lora_A.weight"), None);
    }
}
