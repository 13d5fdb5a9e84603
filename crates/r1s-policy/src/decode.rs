//! Decode steps of packed weights (`--weights bf16|q8_0`) on the host, without burn: one step feeds
//! one token per batch row through [`PackedModel`]'s products, RMSNorm, rotary positions, grouped-
//! query attention over a key/value cache grown in place, and the SwiGLU MLP.
//!
//! A decode step at batch 1–16 is a few thousand small operations (30 blocks of ~25 each for
//! SmolLM2); run as burn tensor operations each one allocates, dispatches and (for the cache)
//! concatenates, which cost SmolLM2-135M about as much as its products at batch 1 (see
//! docs/policy-speed.md). Here the step is plain loops over host buffers, the products are the packed
//! kernels, and the cache ([`HostKv`]) holds `cap ≥ len` positions per row and head, so appending a
//! position writes it in place (the capacity doubles when full).
//!
//! Every value of a row is computed from that row alone, in a fixed order, and the attention of each
//! (row, head) pair runs as one task: results are the same bit for bit alone or in a batch and at any
//! number of threads, as the packed products are. The formulas are the model's ([`crate::model`]):
//! `x · rsqrt(mean(x²) + ε) · w`; rotate-half RoPE; `softmax(q·kᵀ / √hd)` over the row's unmasked
//! keys; `silu(gate) · up`.

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

use crate::error::{PolicyError, Result};
use crate::model::Rope;
use crate::packed::PackedModel;

/// Cached keys and values of a batch on the host: per layer, keys and values laid out
/// `[b][nkv][cap][hd]`, positions `0..len` filled.
#[derive(Debug, Clone)]
pub struct HostKv {
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    b: usize,
    nkv: usize,
    hd: usize,
    len: usize,
    cap: usize,
    device: Device,
}

impl HostKv {
    /// Reads `layers` (`[b, nkv, T, hd]` each, every layer present) back from the device, leaving room
    /// for `extra` more positions.
    ///
    /// # Errors
    /// A missing layer, layers of different shapes, or reading a tensor back.
    pub(crate) fn from_tensors(layers: &[Option<(Tensor<4>, Tensor<4>)>], extra: usize) -> Result<HostKv> {
        let first =
            layers.first().and_then(Option::as_ref).ok_or_else(|| PolicyError::Options("an empty cache".into()))?;
        let [b, nkv, len, hd] = first.0.dims();
        let device = first.0.device();
        let cap = len + extra.max(1);
        let mut out = Vec::with_capacity(layers.len());
        for layer in layers {
            let (k, v) = layer.as_ref().ok_or_else(|| PolicyError::Options("a cache with a layer missing".into()))?;
            if k.dims() != [b, nkv, len, hd] || v.dims() != [b, nkv, len, hd] {
                return Err(PolicyError::Options(format!("cache layers of shapes {:?} and {:?}", k.dims(), v.dims())));
            }
            let read = |t: &Tensor<4>| -> Result<Vec<f32>> {
                let flat = t
                    .clone()
                    .into_data()
                    .try_into_vec::<f32>()
                    .map_err(|e| PolicyError::Options(format!("reading the cache back: {e:?}")))?;
                let mut buf = vec![0f32; b * nkv * cap * hd];
                for (i, src) in flat.chunks_exact((len * hd).max(1)).enumerate().take(b * nkv) {
                    buf[i * cap * hd..][..len * hd].copy_from_slice(&src[..len * hd]);
                }
                Ok(buf)
            };
            out.push((read(k)?, read(v)?));
        }
        Ok(HostKv { layers: out, b, nkv, hd, len, cap, device })
    }

    /// The cache as `[b, nkv, len, hd]` tensors on its device.
    pub(crate) fn into_tensors(self) -> Vec<Option<(Tensor<4>, Tensor<4>)>> {
        let (b, nkv, len, hd, cap) = (self.b, self.nkv, self.len, self.hd, self.cap);
        let pack = |buf: Vec<f32>| {
            let mut flat = Vec::with_capacity(b * nkv * len * hd);
            for i in 0..b * nkv {
                flat.extend_from_slice(&buf[i * cap * hd..][..len * hd]);
            }
            Tensor::<4>::from_data(TensorData::new(flat, [b, nkv, len, hd]), &self.device)
        };
        self.layers.into_iter().map(|(k, v)| Some((pack(k), pack(v)))).collect()
    }

    /// Cached positions.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Keeps rows `rows`, in that order (a repeated index copies a row).
    pub(crate) fn retain_rows(&mut self, rows: &[usize]) {
        let per_row = self.nkv * self.cap * self.hd;
        for (k, v) in &mut self.layers {
            for buf in [k, v] {
                let mut kept = Vec::with_capacity(rows.len() * per_row);
                for &r in rows {
                    kept.extend_from_slice(&buf[r * per_row..][..per_row]);
                }
                *buf = kept;
            }
        }
        self.b = rows.len();
    }

    /// Drops the first `n` positions of every row (`n <= len`).
    pub(crate) fn drop_front(&mut self, n: usize) {
        let (hd, cap, len) = (self.hd, self.cap, self.len);
        for (k, v) in &mut self.layers {
            for buf in [k, v] {
                for i in 0..self.b * self.nkv {
                    buf.copy_within(i * cap * hd + n * hd..i * cap * hd + len * hd, i * cap * hd);
                }
            }
        }
        self.len = len - n;
    }

    /// Makes room for one more position (doubling the capacity when full).
    fn reserve_one(&mut self) {
        if self.len < self.cap {
            return;
        }
        let (hd, old, len) = (self.hd, self.cap, self.len);
        let cap = (old * 2).max(len + 16);
        for (k, v) in &mut self.layers {
            for buf in [k, v] {
                let mut grown = vec![0f32; self.b * self.nkv * cap * hd];
                for i in 0..self.b * self.nkv {
                    grown[i * cap * hd..][..len * hd].copy_from_slice(&buf[i * old * hd..][..len * hd]);
                }
                *buf = grown;
            }
        }
        self.cap = cap;
    }
}

/// One decode step of `model` for a batch of `b` rows: `x` their token embeddings `[b, h]`,
/// `positions` their rotary positions, `key_pad` (`[b][len + 1]`, true = not one of the row's keys,
/// the new position last) or `None` when every row attends to every position. Appends the step's
/// keys and values to `kv` and returns the logits `[b, v]`.
///
/// # Errors
/// When the shapes disagree (the batch, the cache, the mask) or a position is past the rotary table.
pub(crate) fn step(
    model: &PackedModel,
    rope: &Rope,
    mut x: Vec<f32>,
    positions: &[usize],
    key_pad: Option<&[bool]>,
    kv: &mut HostKv,
) -> Result<Vec<f32>> {
    let b = positions.len();
    let [nh, nkv, hd] = model.heads;
    let h = model.norm.len();
    let t_all = kv.len + 1;
    let bad = |what: String| Err(PolicyError::Options(format!("a decode step with {what}")));
    if x.len() != b * h {
        return bad(format!("{} embedding values for {b} rows of {h}", x.len()));
    }
    if (kv.b, kv.nkv, kv.hd, kv.layers.len()) != (b, nkv, hd, model.blocks.len()) {
        return bad(format!(
            "a cache of {} rows × {} heads × {} × {} layers for {b} rows × {nkv} × {hd} × {}",
            kv.b,
            kv.nkv,
            kv.hd,
            kv.layers.len(),
            model.blocks.len()
        ));
    }
    if key_pad.is_some_and(|p| p.len() != b * t_all) {
        return bad(format!("a mask of {} values for {b} rows of {t_all} keys", key_pad.map_or(0, <[bool]>::len)));
    }
    if let Some(&p) = positions.iter().find(|&&p| p >= rope.max_positions()) {
        return bad(format!("position {p} past the model's {}", rope.max_positions()));
    }
    kv.reserve_one();
    let (cap, pos) = (kv.cap, kv.len);
    let rep = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let qkv_width = (nh + 2 * nkv) * hd;
    let mut q = vec![0f32; b * nh * hd];
    let mut att = vec![0f32; b * nh * hd];
    for (l, blk) in model.blocks.iter().enumerate() {
        let hn = rms_norm(&x, &blk.attn_norm, model.eps);
        let qkv = blk.qkv.matmul(&hn, b);
        let (keys, values) = &mut kv.layers[l];
        for r in 0..b {
            let row = &qkv[r * qkv_width..][..qkv_width];
            let (cos, sin) = rope.host_at(positions[r]);
            for hq in 0..nh {
                rotate(&row[hq * hd..][..hd], cos, sin, &mut q[(r * nh + hq) * hd..][..hd]);
            }
            for g in 0..nkv {
                let at = ((r * nkv + g) * cap + pos) * hd;
                rotate(&row[(nh + g) * hd..][..hd], cos, sin, &mut keys[at..][..hd]);
                values[at..][..hd].copy_from_slice(&row[(nh + nkv + g) * hd..][..hd]);
            }
        }
        let (keys, values) = (&kv.layers[l].0, &kv.layers[l].1);
        let attend = |(i, out): (usize, &mut [f32])| {
            let (r, g) = (i / nh, (i % nh) / rep);
            let base = (r * nkv + g) * cap * hd;
            attend_one(
                &q[i * hd..][..hd],
                &keys[base..][..t_all * hd],
                &values[base..][..t_all * hd],
                key_pad.map(|p| &p[r * t_all..][..t_all]),
                scale,
                out,
            );
        };
        if b * nh * t_all * hd >= 1 << 16 {
            att.par_chunks_mut(hd).enumerate().for_each(attend);
        } else {
            att.chunks_mut(hd).enumerate().for_each(attend);
        }
        add(&mut x, &blk.o.matmul(&att, b));
        let hn = rms_norm(&x, &blk.mlp_norm, model.eps);
        let gu = blk.gate_up.matmul(&hn, b);
        let i = blk.down.shape()[1];
        let mut act = vec![0f32; b * i];
        for (a, row) in act.chunks_mut(i).zip(gu.chunks(2 * i)) {
            let (gate, up) = row.split_at(i);
            for ((a, g), u) in a.iter_mut().zip(gate).zip(up) {
                *a = g / (1.0 + (-g).exp()) * u;
            }
        }
        add(&mut x, &blk.down.matmul(&act, b));
    }
    kv.len += 1;
    Ok(model.head.matmul(&rms_norm(&x, &model.norm, model.eps), b))
}

/// `x += y`.
fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// RMSNorm of each row of `x` (`w.len()` wide): `x · (mean(x²) + ε)^-½ · w`.
fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(w.len()) {
        let inv = 1.0 / (dot(row, row) / w.len() as f32 + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(v, w)| v * inv * w));
    }
    out
}

/// Rotate-half RoPE of one head `x` (`hd` long) at a position's `cos`, `sin` (`hd/2` each).
fn rotate(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = cos.len();
    let (x1, x2) = x.split_at(half);
    let (lo, hi) = out.split_at_mut(half);
    for j in 0..half {
        lo[j] = x1[j] * cos[j] - x2[j] * sin[j];
        hi[j] = x2[j] * cos[j] + x1[j] * sin[j];
    }
}

/// `out = softmax(q·Kᵀ·scale) · V` over the unmasked rows of `keys`, `values` (`[T][hd]`).
fn attend_one(q: &[f32], keys: &[f32], values: &[f32], pad: Option<&[bool]>, scale: f32, out: &mut [f32]) {
    let hd = q.len();
    let live = |j: usize| pad.is_none_or(|p| !p[j]);
    let t = keys.len() / hd;
    let mut scores = vec![f32::NEG_INFINITY; t];
    let mut max = f32::NEG_INFINITY;
    for (j, s) in scores.iter_mut().enumerate() {
        if live(j) {
            *s = dot(q, &keys[j * hd..][..hd]) * scale;
            max = max.max(*s);
        }
    }
    let mut sum = 0f32;
    for s in &mut scores {
        *s = if *s == f32::NEG_INFINITY { 0.0 } else { (*s - max).exp() };
        sum += *s;
    }
    out.fill(0.0);
    for (j, p) in scores.iter().enumerate() {
        if *p != 0.0 {
            axpy(*p, &values[j * hd..][..hd], out);
        }
    }
    let inv = 1.0 / sum;
    for o in out {
        *o *= inv;
    }
}

/// `Σ a·b` in 16 lanes summed in a fixed order (the same result on every CPU: no fused multiply-add,
/// no reassociation; wide registers where the CPU has them).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 checked just above
        return unsafe { dot_avx2(a, b) };
    }
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for j in 0..16 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s = 0f32;
    for v in acc {
        s += v;
    }
    s + tail
}

/// `y += a·x`.
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 checked just above
        return unsafe { axpy_avx2(a, x, y) };
    }
    axpy_lanes(a, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn axpy_avx2(a: f32, x: &[f32], y: &mut [f32]) {
    axpy_lanes(a, x, y)
}

#[inline(always)]
fn axpy_lanes(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_is_the_same_by_every_path() {
        let a: Vec<f32> = (0..75).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..75).map(|i| (i as f32 * 0.11).cos()).collect();
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
        assert!((f64::from(dot_lanes(&a, &b)) - exact).abs() < 1e-5);
        assert_eq!(dot(&a, &b).to_bits(), dot_lanes(&a, &b).to_bits());
    }

    #[test]
    fn attention_skips_masked_keys() {
        // two keys of hd 2; the second masked: the output is the first value
        let q = [1.0, 0.5];
        let keys = [0.2, 0.1, 3.0, 3.0];
        let values = [1.0, 2.0, 10.0, 20.0];
        let mut out = [0f32; 2];
        attend_one(&q, &keys, &values, Some(&[false, true]), 1.0, &mut out);
        assert_eq!(out, [1.0, 2.0]);
        attend_one(&q, &keys, &values, None, 1.0, &mut out);
        let (s0, s1) = (0.25f64, 4.5f64);
        let p1 = (s1 - s0).exp() / (1.0 + (s1 - s0).exp());
        assert!((f64::from(out[0]) - (1.0 * (1.0 - p1) + 10.0 * p1)).abs() < 1e-5);
    }
}
