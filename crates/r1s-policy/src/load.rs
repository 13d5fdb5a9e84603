//! Weights in, weights out: GGUF files and Hugging Face directories (`config.json`, one or several
//! `*.safetensors`, `tokenizer.json`) → [`Llama`]; [`save_safetensors`] writes HF names back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use half::{bf16, f16};

use crate::config::LlamaConfig;
use crate::error::{PolicyError, Result};
use crate::gguf::Gguf;
use crate::model::{Block, Llama};

/// A tensor as f32 values and its shape, outermost first.
pub type Weights = (Vec<f32>, Vec<usize>);

/// Where weights come from, by Hugging Face tensor name; matrices as stored (`[out, in]`).
pub trait WeightSource {
    /// The tensor, or `None` when absent.
    fn get(&self, hf_name: &str) -> Result<Option<Weights>>;
    /// The file or directory, for messages.
    fn path(&self) -> &Path;
}

/// A GGUF file seen through HF names (llama.cpp's names mapped; Llama Q/K rows un-permuted).
#[derive(Debug)]
pub struct GgufWeights<'a> {
    pub gguf: &'a Gguf,
    pub cfg: &'a LlamaConfig,
}

fn gguf_name(hf: &str) -> Option<String> {
    if hf == "model.embed_tokens.weight" {
        return Some("token_embd.weight".into());
    }
    if hf == "model.norm.weight" {
        return Some("output_norm.weight".into());
    }
    if hf == "lm_head.weight" {
        return Some("output.weight".into());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, name) = rest.split_once('.')?;
    let g = match name {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}"))
}

/// Undoes llama.cpp's permutation of Q/K rows: within each head, GGUF row `2j + s` holds HF row
/// `s * hd/2 + j` (`[out, in]` row-major).
fn unpermute(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let hd = rows / heads;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for j in 0..hd / 2 {
            for s in 0..2 {
                let src = (h * hd + 2 * j + s) * cols;
                let dst = (h * hd + s * hd / 2 + j) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

impl WeightSource for GgufWeights<'_> {
    fn get(&self, hf_name: &str) -> Result<Option<Weights>> {
        let Some(name) = gguf_name(hf_name) else { return Ok(None) };
        if !self.gguf.tensors.contains_key(&name) {
            return Ok(None);
        }
        let (mut w, shape) = self.gguf.tensor_f32(&name)?;
        if self.cfg.model_type == "llama" && shape.len() == 2 {
            if name.ends_with("attn_q.weight") {
                w = unpermute(&w, self.cfg.num_attention_heads, shape[1]);
            } else if name.ends_with("attn_k.weight") {
                w = unpermute(&w, self.cfg.kv_heads(), shape[1]);
            }
        }
        Ok(Some((w, shape)))
    }

    fn path(&self) -> &Path {
        self.gguf.path()
    }
}

/// One or several safetensors files (a sharded checkpoint's index is not needed: every file is read).
#[derive(Debug)]
pub struct SafetensorsWeights {
    dir: PathBuf,
    maps: Vec<(PathBuf, memmap2::Mmap)>,
}

impl SafetensorsWeights {
    /// Maps every `*.safetensors` file of `dir`.
    pub fn open(dir: &Path) -> Result<SafetensorsWeights> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| PolicyError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(PolicyError::Config { path: dir.into(), reason: "no *.safetensors file".into() });
        }
        SafetensorsWeights::open_files(dir, files)
    }

    /// Maps `files` (named in messages by `dir`, the model's directory).
    pub fn open_files(dir: &Path, files: Vec<PathBuf>) -> Result<SafetensorsWeights> {
        let mut maps = Vec::new();
        for f in files {
            let file = std::fs::File::open(&f).map_err(|e| PolicyError::io(&f, e))?;
            // SAFETY: read-only map of a checkpoint that is not modified while loading.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| PolicyError::io(&f, e))?;
            parse(&f, &map)?;
            maps.push((f, map));
        }
        Ok(SafetensorsWeights { dir: dir.into(), maps })
    }
}

/// The safetensors file `map` (read from `path`, named in the error).
fn parse<'a>(path: &Path, map: &'a [u8]) -> Result<safetensors::SafeTensors<'a>> {
    safetensors::SafeTensors::deserialize(map).map_err(|e| PolicyError::BadFile {
        path: path.to_path_buf(),
        offset: None,
        reason: format!("not a valid safetensors file: {e}"),
    })
}

impl SafetensorsWeights {
    /// Every tensor name, file by file in name order.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (path, map) in &self.maps {
            let st = parse(path, map)?;
            let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
            names.sort();
            out.extend(names);
        }
        Ok(out)
    }
}

impl WeightSource for SafetensorsWeights {
    fn get(&self, hf_name: &str) -> Result<Option<Weights>> {
        for (path, map) in &self.maps {
            let st = parse(path, map)?;
            let Ok(view) = st.tensor(hf_name) else { continue };
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => {
                    data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
                }
                safetensors::Dtype::F16 => {
                    data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
                }
                safetensors::Dtype::BF16 => {
                    data.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
                }
                other => {
                    return Err(PolicyError::BadFile {
                        path: path.clone(),
                        offset: None,
                        reason: format!("tensor {hf_name:?} is {other:?}; r1s reads F32, F16 and BF16"),
                    });
                }
            };
            return Ok(Some((values, view.shape().to_vec())));
        }
        Ok(None)
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

struct Builder<'a> {
    src: &'a dyn WeightSource,
    device: &'a Device,
}

impl Builder<'_> {
    fn tensor(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let (w, shape) = self.src.get(name)?.ok_or_else(|| PolicyError::BadFile {
            path: self.src.path().to_path_buf(),
            offset: None,
            reason: format!("no tensor {name:?}"),
        })?;
        if shape != expected {
            return Err(PolicyError::Shape {
                path: self.src.path().to_path_buf(),
                name: name.into(),
                got: shape,
                expected: expected.to_vec(),
            });
        }
        Ok(w)
    }

    fn vector(&self, name: &str, n: usize) -> Result<Param<Tensor<1>>> {
        let w = self.tensor(name, &[n])?;
        Ok(Param::from_tensor(Tensor::from_data(TensorData::new(w, [n]), self.device)))
    }

    /// A `[out, in]` matrix as a burn `Linear` (`[in, out]`), with its bias when `bias`.
    fn linear(&self, name: &str, input: usize, output: usize, bias: bool) -> Result<Linear> {
        let w = self.tensor(&format!("{name}.weight"), &[output, input])?;
        let mut t = vec![0f32; w.len()];
        for o in 0..output {
            for i in 0..input {
                t[i * output + o] = w[o * input + i];
            }
        }
        let weight = Param::from_tensor(Tensor::from_data(TensorData::new(t, [input, output]), self.device));
        let bias = if bias { Some(self.vector(&format!("{name}.bias"), output)?) } else { None };
        Ok(Linear { weight, bias })
    }
}

/// Builds the decoder from `src` on `device`, checking every shape against `cfg`.
pub fn build_llama(cfg: &LlamaConfig, src: &dyn WeightSource, device: &Device) -> Result<Llama> {
    let b = Builder { src, device };
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q_out, kv_out) = (cfg.num_attention_heads * cfg.head_dim(), cfg.kv_heads() * cfg.head_dim());
    let embed = b.tensor("model.embed_tokens.weight", &[v, h])?;
    let embed = Param::from_tensor(Tensor::from_data(TensorData::new(embed, [v, h]), device));
    let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let p = |n: &str| format!("model.layers.{l}.{n}");
        let bias = cfg.qkv_bias();
        blocks.push(Block {
            attn_norm: b.vector(&p("input_layernorm.weight"), h)?,
            q: b.linear(&p("self_attn.q_proj"), h, q_out, bias)?,
            k: b.linear(&p("self_attn.k_proj"), h, kv_out, bias)?,
            v: b.linear(&p("self_attn.v_proj"), h, kv_out, bias)?,
            o: b.linear(&p("self_attn.o_proj"), q_out, h, false)?,
            mlp_norm: b.vector(&p("post_attention_layernorm.weight"), h)?,
            gate: b.linear(&p("mlp.gate_proj"), h, i, false)?,
            up: b.linear(&p("mlp.up_proj"), h, i, false)?,
            down: b.linear(&p("mlp.down_proj"), i, h, false)?,
        });
    }
    let lm_head = if cfg.tie_word_embeddings { None } else { Some(b.linear("lm_head", h, v, false)?) };
    Ok(Llama { embed, blocks, norm: b.vector("model.norm.weight", h)?, lm_head })
}

/// Every weight of `model` under its Hugging Face name, as f32 `[out, in]` matrices and vectors.
pub fn hf_tensors(model: &Llama) -> Result<BTreeMap<String, Weights>> {
    let mut out = BTreeMap::new();
    let data = |t: Tensor<2>| -> Result<Weights> {
        let shape = t.dims().to_vec();
        let v = t.into_data().try_to_vec::<f32>().map_err(|e| PolicyError::Options(format!("{e:?}")))?;
        Ok((v, shape))
    };
    let vec1 = |t: Tensor<1>| -> Result<Weights> {
        let n = t.dims()[0];
        Ok((t.into_data().try_to_vec::<f32>().map_err(|e| PolicyError::Options(format!("{e:?}")))?, vec![n]))
    };
    let mut linear = |name: String, l: &Linear| -> Result<()> {
        out.insert(format!("{name}.weight"), data(l.weight.val().transpose())?);
        if let Some(bias) = &l.bias {
            out.insert(format!("{name}.bias"), vec1(bias.val())?);
        }
        Ok(())
    };
    for (l, blk) in model.blocks.iter().enumerate() {
        let p = |n: &str| format!("model.layers.{l}.{n}");
        linear(p("self_attn.q_proj"), &blk.q)?;
        linear(p("self_attn.k_proj"), &blk.k)?;
        linear(p("self_attn.v_proj"), &blk.v)?;
        linear(p("self_attn.o_proj"), &blk.o)?;
        linear(p("mlp.gate_proj"), &blk.gate)?;
        linear(p("mlp.up_proj"), &blk.up)?;
        linear(p("mlp.down_proj"), &blk.down)?;
    }
    if let Some(head) = &model.lm_head {
        linear("lm_head".into(), head)?;
    }
    for (l, blk) in model.blocks.iter().enumerate() {
        out.insert(format!("model.layers.{l}.input_layernorm.weight"), vec1(blk.attn_norm.val())?);
        out.insert(format!("model.layers.{l}.post_attention_layernorm.weight"), vec1(blk.mlp_norm.val())?);
    }
    out.insert("model.embed_tokens.weight".into(), data(model.embed.val())?);
    out.insert("model.norm.weight".into(), vec1(model.norm.val())?);
    Ok(out)
}

/// Writes `model` as one f32 safetensors file with Hugging Face names (atomically).
pub fn save_safetensors(model: &Llama, path: &Path) -> Result<()> {
    let tensors = hf_tensors(model)?.into_iter().map(|(k, (v, s))| (k, v, s)).collect();
    let data = f32_safetensors(tensors, BTreeMap::new()).map_err(PolicyError::Options)?;
    r1s_core::fsutil::write_atomic(path, &data).map_err(|e| PolicyError::io(path, e))
}

/// The bytes of a safetensors file holding f32 `(name, values, shape)` tensors and `meta`; the error
/// says which tensor does not fit its shape.
pub fn f32_safetensors(
    tensors: Vec<(String, Vec<f32>, Vec<usize>)>,
    meta: BTreeMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    serialize(tensors, meta, crate::adapter::StoreDtype::F32)
}

/// The bytes of a safetensors file holding `(name, values, shape)` tensors stored as `dtype`.
pub fn safetensors_bytes(
    tensors: Vec<(String, Vec<f32>, Vec<usize>)>,
    dtype: crate::adapter::StoreDtype,
) -> std::result::Result<Vec<u8>, String> {
    serialize(tensors, BTreeMap::new(), dtype)
}

fn serialize(
    tensors: Vec<(String, Vec<f32>, Vec<usize>)>,
    meta: BTreeMap<String, String>,
    dtype: crate::adapter::StoreDtype,
) -> std::result::Result<Vec<u8>, String> {
    use crate::adapter::StoreDtype as D;
    let st_dtype = match dtype {
        D::F32 => safetensors::Dtype::F32,
        D::F16 => safetensors::Dtype::F16,
        D::Bf16 => safetensors::Dtype::BF16,
    };
    let encode = |v: Vec<f32>| -> Vec<u8> {
        match dtype {
            D::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            D::F16 => v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect(),
            D::Bf16 => v.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect(),
        }
    };
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors.into_iter().map(|(k, v, s)| (k, encode(v), s)).collect();
    let views = bytes
        .iter()
        .map(|(k, b, s)| {
            safetensors::tensor::TensorView::new(st_dtype, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| format!("tensor {k}: {e}"))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let meta = (!meta.is_empty()).then(|| meta.into_iter().collect());
    safetensors::serialize(views, meta).map_err(|e| format!("serialising safetensors: {e}"))
}

/// Deterministic small random weights (uniform ±0.2, norms near 1) for every tensor `cfg` needs:
/// a model to start from scratch, or a tiny stand-in in tests and benchmarks.
#[derive(Debug, Clone)]
pub struct RandomWeights {
    pub cfg: LlamaConfig,
    pub seed: u64,
}

impl WeightSource for RandomWeights {
    fn get(&self, name: &str) -> Result<Option<Weights>> {
        let c = &self.cfg;
        let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (q, kv) = (c.num_attention_heads * c.head_dim(), c.kv_heads() * c.head_dim());
        let leaf = name.rsplit_once("layers.").map_or(name, |(_, r)| r.split_once('.').map_or(r, |x| x.1));
        let shape: Vec<usize> = match leaf {
            "model.embed_tokens.weight" | "lm_head.weight" => vec![v, h],
            "model.norm.weight" | "input_layernorm.weight" | "post_attention_layernorm.weight" => vec![h],
            "self_attn.q_proj.weight" => vec![q, h],
            "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kv, h],
            "self_attn.q_proj.bias" => vec![q],
            "self_attn.k_proj.bias" | "self_attn.v_proj.bias" => vec![kv],
            "self_attn.o_proj.weight" => vec![h, q],
            "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![i, h],
            "mlp.down_proj.weight" => vec![h, i],
            _ => return Ok(None),
        };
        // FNV-1a of the name, mixed with the seed
        let seed = name
            .bytes()
            .fold(1469598103934665603u64 ^ self.seed, |a, b| (a ^ u64::from(b)).wrapping_mul(1099511628211));
        let mut rng = crate::policy::Rng::new(seed);
        let n: usize = shape.iter().product();
        let norm = name.ends_with("norm.weight");
        let values = (0..n)
            .map(|_| if norm { 1.0 + 0.1 * (rng.next_f32() - 0.5) } else { 0.4 * (rng.next_f32() - 0.5) })
            .collect();
        Ok(Some((values, shape)))
    }

    fn path(&self) -> &Path {
        Path::new("(random weights)")
    }
}
