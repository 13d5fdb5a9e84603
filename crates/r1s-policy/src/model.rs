//! A Llama-family decoder on burn: token embedding, pre-norm blocks of grouped-query attention with
//! rotary positions and a SwiGLU MLP, final RMSNorm, tied or separate LM head, and a KV cache.
//!
//! Shapes: `b` batch, `t` new positions, `T` all cached positions, `h` hidden size, `nh`/`nkv` query
//! and key/value heads, `hd` head dimension, `v` vocabulary. Weights are stored as Hugging Face
//! does, except that linear weights are `[in, out]` (burn's row layout); RoPE is rotate-half (HF
//! layout; GGUF's permuted Llama Q/K rows are restored at load).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::module::{attention, attention_fallback};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData, activation};

use crate::config::LlamaConfig;

/// One decoder block.
#[derive(Module, Debug)]
pub struct Block {
    /// `[h]`
    pub attn_norm: Param<Tensor<1>>,
    /// `[h, nh*hd]` (+ bias for Qwen2)
    pub q: Linear,
    /// `[h, nkv*hd]`
    pub k: Linear,
    /// `[h, nkv*hd]`
    pub v: Linear,
    /// `[nh*hd, h]`
    pub o: Linear,
    /// `[h]`
    pub mlp_norm: Param<Tensor<1>>,
    /// `[h, i]`
    pub gate: Linear,
    /// `[h, i]`
    pub up: Linear,
    /// `[i, h]`
    pub down: Linear,
}

impl Block {
    /// Projection `p` in [`crate::adapter::PROJECTION_PATHS`] order (q, k, v, o, gate, up, down).
    pub fn projection(&self, p: usize) -> &Linear {
        [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down][p]
    }

    /// [`Block::projection`], mutable.
    pub fn projection_mut(&mut self, p: usize) -> &mut Linear {
        match p {
            0 => &mut self.q,
            1 => &mut self.k,
            2 => &mut self.v,
            3 => &mut self.o,
            4 => &mut self.gate,
            5 => &mut self.up,
            _ => &mut self.down,
        }
    }
}

/// The decoder.
#[derive(Module, Debug)]
pub struct Llama {
    /// `[v, h]`
    pub embed: Param<Tensor<2>>,
    pub blocks: Vec<Block>,
    /// `[h]`
    pub norm: Param<Tensor<1>>,
    /// `[h, v]`; `None`: tied to `embed`.
    pub lm_head: Option<Linear>,
}

/// Cached keys and values: per layer `[b, nkv, T, hd]` tensors on the model's device, or — after a
/// host decode step of packed weights ([`crate::decode`]) — host buffers grown in place. Each
/// operation that needs the tensors moves a host cache back first (one copy), so decode steps
/// append without copying and joins, prefills and training see tensors.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    pub(crate) host: Option<crate::decode::HostKv>,
}

impl KvCache {
    /// Cached positions.
    pub fn len(&self) -> usize {
        match &self.host {
            Some(h) => h.len(),
            None => self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.dims()[2]),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the batch rows `rows`, in that order (finished sequences leave the batch; a repeated
    /// index copies a row).
    ///
    /// # Panics
    /// When a row is out of range.
    pub fn retain_rows(&mut self, rows: &[usize]) {
        if let Some(h) = &mut self.host {
            h.retain_rows(rows);
            return;
        }
        let Some(device) = self.layers.iter().flatten().next().map(|(k, _)| k.device()) else {
            return;
        };
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(idx, [rows.len()]), &device);
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.clone().select(0, rows.clone());
            *v = v.clone().select(0, rows.clone());
        }
    }

    /// Drops the first `n` positions of every row.
    pub fn drop_front(&mut self, n: usize) {
        if let Some(h) = &mut self.host {
            h.drop_front(n);
            return;
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            let t = k.dims()[2];
            *k = k.clone().narrow(2, n, t - n);
            *v = v.clone().narrow(2, n, t - n);
        }
    }

    /// The per-layer tensors, moving a host cache back to the device first.
    pub(crate) fn tensors(&mut self) -> &mut Vec<Option<(Tensor<4>, Tensor<4>)>> {
        if let Some(h) = self.host.take() {
            self.layers = h.into_tensors();
        }
        &mut self.layers
    }
}

/// Rotary tables: `cos`, `sin` of `[max_pos, hd/2]`, on the device and on the host (for the host
/// decode steps of [`crate::decode`]).
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor<2>,
    sin: Tensor<2>,
    host: std::sync::Arc<(Vec<f32>, Vec<f32>)>,
}

impl Rope {
    /// Frequencies `theta^(-2i/hd)`, with Llama 3 scaling when configured.
    pub fn new(cfg: &LlamaConfig, max_pos: usize, device: &Device) -> Rope {
        let hd = cfg.head_dim();
        let mut inv: Vec<f64> = (0..hd / 2).map(|i| cfg.rope_theta.powf(-(2.0 * i as f64) / hd as f64)).collect();
        if let Some(s) = cfg.rope_scaling {
            let old = s.original_max_position_embeddings as f64;
            let (low_wl, high_wl) = (old / s.low_freq_factor, old / s.high_freq_factor);
            for f in &mut inv {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                if wavelen > low_wl {
                    *f /= s.factor;
                } else if wavelen >= high_wl {
                    let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                    *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                }
            }
        }
        let mut cos = Vec::with_capacity(max_pos * hd / 2);
        let mut sin = Vec::with_capacity(max_pos * hd / 2);
        for p in 0..max_pos {
            for f in &inv {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let t = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [max_pos, hd / 2]), device);
        Rope { cos: t(&cos), sin: t(&sin), host: std::sync::Arc::new((cos, sin)) }
    }

    /// `(cos, sin)` at `pos`, `hd/2` values each, from the host copy.
    ///
    /// # Panics
    /// When `pos >= max_positions()`.
    pub(crate) fn host_at(&self, pos: usize) -> (&[f32], &[f32]) {
        let half = self.cos.dims()[1];
        (&self.host.0[pos * half..][..half], &self.host.1[pos * half..][..half])
    }

    /// Largest position + 1.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// `(cos, sin)` for `positions` `[b, t]`, as `[b, 1, t, hd]` (both halves).
    fn at(&self, positions: &Tensor<2, Int>) -> (Tensor<4>, Tensor<4>) {
        let [b, t] = positions.dims();
        let flat = positions.clone().reshape([b * t]);
        let half = self.cos.dims()[1];
        let pick = |table: &Tensor<2>| {
            let x = table.clone().select(0, flat.clone()).reshape([b, 1, t, half]);
            Tensor::cat(vec![x.clone(), x], 3)
        };
        (pick(&self.cos), pick(&self.sin))
    }
}

/// `x * cos + rotate_half(x) * sin` on `[b, heads, t, hd]`.
fn rotate(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let hd = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, hd / 2);
    let x2 = x.clone().narrow(3, hd / 2, hd / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// burn flex threads a matmul only from this many multiply-adds (its `PARALLEL_THRESHOLD`), and
/// never a single-row one (gemm's gemv path).
const FLEX_THREADED_FROM: usize = 192 * 192 * 192;

/// Below this many multiply-adds a product is not worth handing to other threads.
const SPLIT_FROM: usize = 1 << 16;

/// `x @ weight (+ bias)` of `x` `[..., in]` with `weight` `[in, out]` (burn's layout): burn's
/// linear, except that a product the backend would run on one thread is split by output columns
/// across the rayon pool (see [`matmul_threaded`]; on flex only). Decoding is made of such products:
/// every projection and the LM head at batch 1, the q/k/v/o ones at batch 16.
pub fn linear<const D: usize>(l: &Linear, x: Tensor<D>) -> Tensor<D> {
    let dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let w = l.weight.val();
    let d_out = w.dims()[1];
    if !(on_flex(&x) && on_flex(&w) && worth_splitting(rows, d_in, d_out)) {
        return l.forward(x);
    }
    let y = matmul_threaded(x.reshape([rows, d_in]), w, l.bias.as_ref().map(Param::val));
    let mut out = dims;
    out[D - 1] = d_out;
    y.reshape(out)
}

/// Whether `t` is on burn's flex CPU device itself (not autodiff over it, not a GPU): where the
/// column split and grouped-head attention apply. Both operands are checked: the trainer feeds plain
/// hidden states (the frozen prefix's) into autodiff blocks.
fn on_flex<const D: usize>(t: &Tensor<D>) -> bool {
    let d = t.device();
    !d.is_autodiff() && d == Device::flex()
}

/// Whether `t` lives on burn's LibTorch backend (the `tch` feature), with or without autodiff.
/// burn-tch 0.22 hands burn's attention straight to torch's `scaled_dot_product_attention`, which
/// reads a boolean mask the other way round (true = attend, where burn's true = masked) and aligns
/// the causal mask at the top-left corner (a decode step's one query would see only the first key):
/// there the model uses burn's reference attention (`attention_fallback`) instead.
#[cfg(feature = "tch")]
fn on_libtorch<const D: usize>(t: &Tensor<D>) -> bool {
    matches!(t.device().without_autodiff().as_dispatch(), burn::backend::DispatchDevice::LibTorch(_))
}

#[cfg(not(feature = "tch"))]
fn on_libtorch<const D: usize>(_: &Tensor<D>) -> bool {
    false
}

/// Column slices of a split product. Fixed, not the thread count: the slices' shapes decide gemm's
/// blocking and so the rounding, and sampled generation must not change with `-j`.
const SLICES: usize = 4;

/// Whether `[rows, k] @ [k, n]` runs faster split by columns across the rayon pool than as one
/// flex matmul. It does not depend on the pool's size (see [`SLICES`]).
fn worth_splitting(rows: usize, k: usize, n: usize) -> bool {
    let macs = rows.saturating_mul(k).saturating_mul(n);
    n >= 128 && macs >= SPLIT_FROM && (rows == 1 || macs < FLEX_THREADED_FROM)
}

/// `x @ w (+ bias)` of `x` `[m, k]` and `w` `[k, n]` (any strides): when
/// [`worth_splitting`], the columns of `w` are cut into [`SLICES`] slices, each slice's product runs
/// as one single-threaded backend matmul on a rayon thread, and the parts are joined. Each output
/// element is still one dot product over `k`, so the result agrees with the unsplit product's to
/// rounding (tested to 1e-6 relative), and is the same bit for bit whatever the number of threads
/// (tested). On other devices: one matmul.
pub fn matmul_threaded(x: Tensor<2>, w: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    let [m, k] = x.dims();
    let n = w.dims()[1];
    let y = if on_flex(&x) && on_flex(&w) && worth_splitting(m, k, n) {
        // slices of a multiple of 16 columns (one AVX-512 register of f32)
        let width = n.div_ceil(SLICES).next_multiple_of(16);
        let slices: Vec<(usize, usize)> = (0..n).step_by(width).map(|start| (start, width.min(n - start))).collect();
        let outs: Vec<Tensor<2>> = {
            use rayon::prelude::*;
            slices.par_iter().map(|&(start, len)| x.clone().matmul(w.clone().narrow(1, start, len))).collect()
        };
        Tensor::cat(outs, 1)
    } else {
        x.matmul(w)
    };
    match bias {
        Some(b) => y + b.reshape([1, n]),
        None => y,
    }
}

/// RMSNorm over the last dimension of `[b, t, h]`.
pub fn rms_norm(x: Tensor<3>, w: &Param<Tensor<1>>, eps: f64) -> Tensor<3> {
    let h = x.dims()[2];
    let inv = (x.clone().powf_scalar(2.0).mean_dim(2) + eps).sqrt().recip();
    x * inv * w.val().reshape([1, 1, h])
}

/// `[b, nkv, T, hd]` → `[b, nkv*rep, T, hd]` (each key/value head serves `rep` query heads).
fn repeat_kv(x: Tensor<4>, rep: usize) -> Tensor<4> {
    if rep == 1 {
        return x;
    }
    let [b, nkv, t, hd] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, nkv, rep, t, hd]).reshape([b, nkv * rep, t, hd])
}

/// Runs `blocks` (the model's blocks `first..first + blocks.len()`) over `x` `[b, t, h]`: the whole
/// stack, or a part of it (the RL trainer runs a frozen prefix once and trains the rest).
pub fn run_blocks(
    blocks: &[Block],
    first: usize,
    cfg: &LlamaConfig,
    rope: &Rope,
    x: Tensor<3>,
    step: &Step,
    cache: Option<&mut KvCache>,
) -> Tensor<3> {
    run(blocks, first, cfg, rope, x, step, cache, None)
}

/// One projection's LoRA factors: `A` `[in, r]`, `B` `[r, out]`.
pub type Factors = (Tensor<2>, Tensor<2>);

/// LoRA factors that run beside frozen projections: `y = x·W + s·(x·A)·B` (Hu et al. 2021, as PEFT
/// runs them), so that training `A` and `B` takes no gradient of `W` (merging `W + s·A·B` first
/// would: a full `[in, out]` product per projection in every backward pass).
#[derive(Debug, Clone)]
pub struct LoraBeside {
    /// `s` (alpha / rank, or alpha / √rank for rsLoRA).
    pub scale: f64,
    /// Per block, per projection in [`crate::adapter::PROJECTION_PATHS`] order: `A` `[in, r]` and
    /// `B` `[r, out]`, or `None` where the projection has no adapter.
    pub blocks: Vec<Vec<Option<Factors>>>,
}

/// [`run_blocks`] with `lora.blocks[i]` beside `blocks[i]`'s projections (no cache: training).
pub fn run_blocks_lora(
    blocks: &[Block],
    first: usize,
    cfg: &LlamaConfig,
    rope: &Rope,
    x: Tensor<3>,
    step: &Step,
    lora: &LoraBeside,
) -> Tensor<3> {
    run(blocks, first, cfg, rope, x, step, None, Some(lora))
}

#[allow(clippy::too_many_arguments)]
fn run(
    blocks: &[Block],
    first: usize,
    cfg: &LlamaConfig,
    rope: &Rope,
    mut x: Tensor<3>,
    step: &Step,
    mut cache: Option<&mut KvCache>,
    lora: Option<&LoraBeside>,
) -> Tensor<3> {
    let [b, t, _] = x.dims();
    let cos_sin = rope.at(&step.positions);
    let mask = step.pad.as_ref().map(|(keys, queries)| {
        let tt = keys.dims()[1];
        let nh = cfg.num_attention_heads;
        let k = keys.clone().unsqueeze_dim::<3>(1).unsqueeze_dim::<4>(1).expand([b, nh, t, tt]);
        let q = queries.clone().bool_not().unsqueeze_dim::<3>(1).unsqueeze_dim::<4>(3).expand([b, nh, t, tt]);
        k.bool_and(q)
    });
    if let Some(c) = cache.as_deref_mut()
        && c.tensors().len() < first + blocks.len()
    {
        c.layers.resize(first + blocks.len(), None);
    }
    for (i, block) in blocks.iter().enumerate() {
        let slot = cache.as_deref_mut().map(|c| &mut c.layers[first + i]);
        let beside = lora.and_then(|l| l.blocks.get(i).map(|ads| (ads.as_slice(), l.scale)));
        x = block.forward(cfg, x, &cos_sin, mask.as_ref(), slot, beside);
    }
    x
}

/// What one forward pass needs besides the tokens.
#[derive(Debug, Clone)]
pub struct Step {
    /// Position of each new token `[b, t]`.
    pub positions: Tensor<2, Int>,
    /// Padding among all keys (cached + new) `[b, T]`, true = padding; and among the new queries
    /// `[b, t]`. Padded queries attend to everything before them (their output is unused), so that
    /// no softmax row is empty.
    pub pad: Option<(Tensor<2, Bool>, Tensor<2, Bool>)>,
}

impl Block {
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        cfg: &LlamaConfig,
        x: Tensor<3>,
        cos_sin: &(Tensor<4>, Tensor<4>),
        mask: Option<&Tensor<4, Bool>>,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
        lora: Option<(&[Option<Factors>], f64)>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        // projection `p` of `h`, with its adapter beside it when there is one
        let proj = |p: usize, h: Tensor<3>| {
            let y = linear(self.projection(p), h.clone());
            match lora.and_then(|(ads, s)| ads.get(p).and_then(Option::as_ref).map(|ab| (ab, s))) {
                Some(((a, bb), s)) => {
                    let [bsz, tt, d] = h.dims();
                    let low = h.reshape([bsz * tt, d]).matmul(a.clone()).matmul(bb.clone()) * s;
                    let out = low.dims()[1];
                    y + low.reshape([bsz, tt, out])
                }
                None => y,
            }
        };
        let h = rms_norm(x.clone(), &self.attn_norm, cfg.rms_norm_eps);
        let q = proj(0, h.clone()).reshape([b, t, nh, hd]).swap_dims(1, 2);
        let k = proj(1, h.clone()).reshape([b, t, nkv, hd]).swap_dims(1, 2);
        let v = proj(2, h).reshape([b, t, nkv, hd]).swap_dims(1, 2);
        let q = rotate(q, &cos_sin.0, &cos_sin.1);
        let k = rotate(k, &cos_sin.0, &cos_sin.1);
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let rep = nh / nkv;
        let opts = AttentionModuleOptions { is_causal: true, ..Default::default() };
        // flex's attention reads grouped K/V heads itself; autodiff's and cubecl's need them
        // repeated to the query heads
        let grouped = on_flex(&q) && on_flex(&k) && on_flex(&v);
        let (k, v) = if grouped { (k, v) } else { (repeat_kv(k, rep), repeat_kv(v, rep)) };
        let a = if on_libtorch(&q) {
            attention_fallback(q, k, v, mask.cloned(), None, opts)
        } else {
            attention(q, k, v, mask.cloned(), None, opts)
        };
        let a = a.swap_dims(1, 2).reshape([b, t, nh * hd]);
        let x = x + proj(3, a);
        let h = rms_norm(x.clone(), &self.mlp_norm, cfg.rms_norm_eps);
        let mlp = proj(6, activation::silu(proj(4, h.clone())) * proj(5, h));
        x + mlp
    }
}

impl Llama {
    /// Final hidden states `[b, t, h]` of the new tokens `ids` `[b, t]`, appending to `cache`.
    pub fn hidden(
        &self,
        cfg: &LlamaConfig,
        rope: &Rope,
        ids: Tensor<2, Int>,
        step: &Step,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let x = self.embed_tokens(cfg, ids);
        let x = run(&self.blocks, 0, cfg, rope, x, step, cache, None);
        self.final_norm(cfg, x)
    }

    /// Token embeddings `[b, t, h]` of `ids` `[b, t]`.
    pub fn embed_tokens(&self, cfg: &LlamaConfig, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = ids.dims();
        self.embed.val().select(0, ids.reshape([b * t])).reshape([b, t, cfg.hidden_size])
    }

    /// The final RMSNorm.
    pub fn final_norm(&self, cfg: &LlamaConfig, x: Tensor<3>) -> Tensor<3> {
        rms_norm(x, &self.norm, cfg.rms_norm_eps)
    }

    /// Logits `[b, t, v]` of hidden states `[b, t, h]`.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let [b, t, h] = hidden.dims();
        let out = self.head(hidden.reshape([b * t, h]));
        let v = out.dims()[1];
        out.reshape([b, t, v])
    }

    /// Logits of `[n, hidden]` rows: the LM head, or the tied embeddings.
    pub fn head(&self, rows: Tensor<2>) -> Tensor<2> {
        match &self.lm_head {
            Some(head) => linear(head, rows),
            None => matmul_threaded(rows, self.embed.val().transpose(), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(shape: [usize; 2], scale: f32, device: &Device) -> Tensor<2> {
        let n = shape[0] * shape[1];
        let v: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * scale).collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    #[test]
    fn split_products_equal_the_backend_matmul() {
        let device = Device::flex();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
        // decode shapes: a batch-1 projection, batch-16 k/v, the tied LM head (transposed rows), odd n
        for (m, k, n, transposed) in
            [(1, 576, 1536, false), (16, 576, 192, false), (1, 64, 5003, true), (3, 96, 1000, false)]
        {
            let x = seq([m, k], 1.0, &device);
            let w = if transposed { seq([n, k], 0.1, &device).transpose() } else { seq([k, n], 0.1, &device) };
            let bias = seq([1, n], 1.0, &device).reshape([n]);
            assert!(pool.install(|| worth_splitting(m, k, n)), "{m}x{k}x{n} should be split");
            let split = pool.install(|| matmul_threaded(x.clone(), w.clone(), Some(bias.clone())));
            let plain = x.matmul(w) + bias.reshape([1, n]);
            assert_eq!(split.dims(), [m, n]);
            let (a, b) = (
                split.into_data().try_to_vec::<f32>().expect("f32"),
                plain.into_data().try_to_vec::<f32>().expect("f32"),
            );
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{m}x{k}x{n} element {i}: {x} vs {y}");
            }
        }
        // the same bits whatever the pool's size (sampled generation must not depend on -j)
        let (x, w) = (seq([16, 576], 1.0, &device), seq([576, 576], 0.1, &device));
        let bits = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
            let y = pool.install(|| matmul_threaded(x.clone(), w.clone(), None));
            y.into_data().try_to_vec::<f32>().expect("f32").iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        let one = bits(1);
        assert!(bits(2) == one && bits(3) == one && bits(5) == one);
        // a product flex threads itself: not split
        assert!(!worth_splitting(256, 576, 1536));
    }
}
