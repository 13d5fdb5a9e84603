//! Weights of fewer bytes for decoding: bf16 or Q8_0 copies of the f32 projections and LM head,
//! multiplied by our own kernels that read the packed blocks into f32 accumulators.
//!
//! A decode step at batch 1–16 streams every weight once per token and does little arithmetic on
//! it: its speed is the memory bandwidth over the bytes per parameter (f32 4, bf16 2, Q8_0 1.125
//! here). burn 0.22's quantised matmul dequantises the whole matrix first (`QTensorOps::q_matmul`),
//! so it cannot give that; these kernels convert each block in registers and multiply it into up
//! to 8 rows of activations at once.
//!
//! Formats (per output row, along the input dimension):
//! - **bf16**: the upper 16 bits of the f32 value, rounded to nearest even (`half::bf16::from_f32`);
//!   bf16 → f32 is exact.
//! - **Q8_0**: blocks of 32 weights `x` with `d = max|x| / 127` and `q = round(x / d)`, so
//!   `x ≈ d·q` — ggml's `quantize_row_q8_0_ref` (llama.cpp `ggml/src/ggml-quants.c`), except that `d`
//!   is kept as an f32 beside the `i8` quants (36 bytes per 32 weights, not GGUF's 34): GGUF's f16
//!   scale would lose precision for blocks whose largest weight is below ~7.8e-3 (a subnormal f16)
//!   and overflow above ~8.3e6.
//!
//! Activations stay f32 (llama.cpp quantises them to 8 bits as well; these kernels do not), and every
//! output element is one dot product over the input in a fixed order, whatever the batch, the rows
//! it shares a call with and the number of threads: results are the same bit for bit alone or in
//! a batch and at any `-j` (tested). They differ between the AVX-512, AVX2 and portable kernels,
//! which are picked once per process from the CPU.

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;

/// Weights per block: Q8_0's block, and the padding unit of every packed row.
pub const BLOCK: usize = 32;

/// Output rows per parallel task (fixed: the split must not depend on the thread count).
const OUT_CHUNK: usize = 64;

/// How the decode steps store the weights.
/// In configuration files by the names of [`WeightFormat::NAMES`] (`weights = "q8_0"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum WeightFormat {
    /// The model's own f32 weights, through burn's matmul (no copy).
    #[default]
    #[serde(rename = "f32")]
    F32,
    /// bf16 copies: 2 bytes per weight.
    #[serde(rename = "bf16")]
    Bf16,
    /// Q8_0 copies: 1.125 bytes per weight here (f32 scales).
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl WeightFormat {
    /// The names `--weights` takes.
    pub const NAMES: [&'static str; 3] = ["f32", "bf16", "q8_0"];

    /// Whether decode steps with these weights run on the device named `device` (a `--device`
    /// name, as [`crate::device`] reads it): f32 anywhere, packed formats on the CPU's flex backend
    /// only (`cpu`), where their host kernels run.
    pub fn runs_on(self, device: &str) -> bool {
        self == WeightFormat::F32 || matches!(device, "cpu" | "flex")
    }

    /// Bytes per weight as stored by [`PackedMatrix`] (f32: the model's own).
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            WeightFormat::F32 => 4.0,
            WeightFormat::Bf16 => 2.0,
            WeightFormat::Q8_0 => 36.0 / 32.0,
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Q8_0 => "q8_0",
        })
    }
}

impl FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(WeightFormat::F32),
            "bf16" => Ok(WeightFormat::Bf16),
            "q8_0" => Ok(WeightFormat::Q8_0),
            _ => Err(format!("unknown weight format {s:?}: one of {} (any case)", WeightFormat::NAMES.join(", "))),
        }
    }
}

#[derive(Clone)]
enum Data {
    /// `[out][k_pad]` bf16 bits
    Bf16(Vec<u16>),
    /// quants `[out][k_pad]`, scales `[out][k_pad / 32]`
    Q8_0 { quants: Vec<i8>, scales: Vec<f32> },
}

/// One packed `[out, in]` matrix (rows along the input dimension, zero-padded to a multiple of
/// [`BLOCK`]) and its f32 bias.
#[derive(Clone)]
pub struct PackedMatrix {
    out: usize,
    k: usize,
    k_pad: usize,
    data: Data,
    bias: Option<Vec<f32>>,
}

impl fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackedMatrix({} [{}, {}], {} bytes)", self.format(), self.out, self.k, self.bytes())
    }
}

impl PackedMatrix {
    /// Packs `w`, laid out `[out][in]` when `transposed` is false, or `[in][out]` (burn's linear
    /// layout) when true; `bias` has `out` values. `fmt` must not be [`WeightFormat::F32`].
    ///
    /// # Panics
    /// When `w.len() != out * k`, a bias is not `out` long, or `fmt` is f32 (callers' bugs).
    pub fn pack(fmt: WeightFormat, w: &[f32], out: usize, k: usize, transposed: bool, bias: Option<Vec<f32>>) -> Self {
        assert_eq!(w.len(), out * k, "packing a [{out}, {k}] matrix from {} values", w.len());
        assert!(bias.as_ref().is_none_or(|b| b.len() == out), "bias of the wrong length");
        let k_pad = k.next_multiple_of(BLOCK);
        let at = |o: usize, i: usize| if transposed { w[i * out + o] } else { w[o * k + i] };
        let mut row = vec![0f32; k_pad];
        let data = match fmt {
            WeightFormat::F32 => panic!("f32 weights are not packed"),
            WeightFormat::Bf16 => {
                let mut bits = vec![0u16; out * k_pad];
                for o in 0..out {
                    for (i, b) in bits[o * k_pad..o * k_pad + k].iter_mut().enumerate() {
                        *b = half::bf16::from_f32(at(o, i)).to_bits();
                    }
                }
                Data::Bf16(bits)
            }
            WeightFormat::Q8_0 => {
                let nb = k_pad / BLOCK;
                let mut quants = vec![0i8; out * k_pad];
                let mut scales = vec![0f32; out * nb];
                for o in 0..out {
                    for (i, r) in row[..k].iter_mut().enumerate() {
                        *r = at(o, i);
                    }
                    for b in 0..nb {
                        let x = &row[b * BLOCK..(b + 1) * BLOCK];
                        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                        let d = amax / 127.0;
                        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                        scales[o * nb + b] = d;
                        for (q, v) in quants[o * k_pad + b * BLOCK..][..BLOCK].iter_mut().zip(x) {
                            *q = (v * id).round() as i8;
                        }
                    }
                }
                Data::Q8_0 { quants, scales }
            }
        };
        PackedMatrix { out, k, k_pad, data, bias }
    }

    /// The matrices' output rows one after another (same format and input size; not empty).
    fn concat_rows(parts: Vec<PackedMatrix>) -> PackedMatrix {
        let mut it = parts.into_iter();
        let mut all = it.next().expect("at least one part");
        for p in it {
            assert_eq!((p.k, p.format()), (all.k, all.format()), "concatenating unlike matrices");
            all.out += p.out;
            match (&mut all.data, p.data) {
                (Data::Bf16(a), Data::Bf16(b)) => a.extend(b),
                (Data::Q8_0 { quants, scales }, Data::Q8_0 { quants: q, scales: d }) => {
                    quants.extend(q);
                    scales.extend(d);
                }
                _ => unreachable!("formats checked above"),
            }
            match (&mut all.bias, p.bias) {
                (Some(a), Some(b)) => a.extend(b),
                (None, None) => {}
                _ => panic!("concatenating a matrix with a bias and one without"),
            }
        }
        all
    }

    pub fn format(&self) -> WeightFormat {
        match self.data {
            Data::Bf16(_) => WeightFormat::Bf16,
            Data::Q8_0 { .. } => WeightFormat::Q8_0,
        }
    }

    /// `[out, in]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.out, self.k]
    }

    /// Bytes held (weights, scales, bias).
    pub fn bytes(&self) -> usize {
        let w = match &self.data {
            Data::Bf16(b) => b.len() * 2,
            Data::Q8_0 { quants, scales } => quants.len() + scales.len() * 4,
        };
        w + self.bias.as_ref().map_or(0, |b| b.len() * 4)
    }

    /// The weights back as f32 `[out][in]` (what the kernels multiply by; for tests and checks).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = Vec::with_capacity(self.out * self.k);
        for o in 0..self.out {
            match &self.data {
                Data::Bf16(bits) => {
                    w.extend(bits[o * self.k_pad..][..self.k].iter().map(|b| half::bf16::from_bits(*b).to_f32()))
                }
                Data::Q8_0 { quants, scales } => {
                    let nb = self.k_pad / BLOCK;
                    w.extend((0..self.k).map(|i| quants[o * self.k_pad + i] as f32 * scales[o * nb + i / BLOCK]))
                }
            }
        }
        w
    }

    /// `y = x · Wᵀ (+ bias)` of `x` `[m, in]` (row-major), returned `[m, out]`, with the kernel for
    /// this CPU ([`Kernel::best`]), output rows split across the rayon pool in fixed chunks.
    ///
    /// # Panics
    /// When `x.len() != m * in`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_with(Kernel::best(), x, m)
    }

    /// [`PackedMatrix::matmul`] with a given kernel (one this CPU runs: see [`Kernel::available`]).
    pub fn matmul_with(&self, kernel: Kernel, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "x of {} values for {m} rows of {}", x.len(), self.k);
        assert!(kernel.runs_here(), "{kernel:?} does not run on this CPU");
        // rows of x padded with zeros to k_pad (the padded weights are zero, too)
        let padded;
        let x = if self.k_pad == self.k {
            x
        } else {
            let mut p = vec![0f32; m * self.k_pad];
            for r in 0..m {
                p[r * self.k_pad..][..self.k].copy_from_slice(&x[r * self.k..][..self.k]);
            }
            padded = p;
            &padded
        };
        // each task computes a fixed run of OUT_CHUNK output columns for all m rows and writes them
        // into y [m][out] in place (the runs are disjoint)
        let mut y = vec![0f32; m * self.out];
        let out = OutPtr(y.as_mut_ptr());
        let n = self.out;
        let work = |c: usize| {
            let mut col = vec![0f32; m];
            for o in c * OUT_CHUNK..((c + 1) * OUT_CHUNK).min(n) {
                self.dot_rows(kernel, o, x, m, &mut col);
                for (r, v) in col.iter().enumerate() {
                    // SAFETY: r < m and o < n, so r·n + o is inside y; column o is this task's alone
                    unsafe { *out.at(r * n + o) = *v };
                }
            }
        };
        let chunks = n.div_ceil(OUT_CHUNK);
        if n * self.k_pad * m.max(1) >= 1 << 16 {
            (0..chunks).into_par_iter().for_each(work);
        } else {
            (0..chunks).for_each(work);
        }
        if let Some(b) = &self.bias {
            for row in y.chunks_mut(self.out) {
                for (v, b) in row.iter_mut().zip(b) {
                    *v += b;
                }
            }
        }
        y
    }

    /// `ys[r] = W[o] · x[r]` for the `m` rows of `x` (`[m][k_pad]`), in groups of the kernel's width.
    fn dot_rows(&self, kernel: Kernel, o: usize, x: &[f32], m: usize, ys: &mut [f32]) {
        let kp = self.k_pad;
        let mut r = 0;
        while r < m {
            let n = (m - r).min(kernel.rows());
            let xs = &x[r * kp..(r + n) * kp];
            let out = &mut ys[r..r + n];
            match &self.data {
                Data::Bf16(bits) => kernel.bf16(&bits[o * kp..][..kp], xs, out),
                Data::Q8_0 { quants, scales } => {
                    let nb = kp / BLOCK;
                    kernel.q8_0(&quants[o * kp..][..kp], &scales[o * nb..][..nb], xs, out)
                }
            }
            r += n;
        }
    }
}

/// One decoder block packed for decode steps: its projections with the q/k/v and gate/up rows
/// joined (one product each), and its norms' weights.
#[derive(Debug, Clone)]
pub struct PackedBlock {
    /// q, k, v: `[(nh + 2·nkv)·hd, h]`.
    pub qkv: PackedMatrix,
    /// `[h, nh·hd]`.
    pub o: PackedMatrix,
    /// gate, up: `[2·i, h]`.
    pub gate_up: PackedMatrix,
    /// `[h, i]`.
    pub down: PackedMatrix,
    /// RMSNorm weights `[h]` before attention and before the MLP (f32, as in the model).
    pub attn_norm: Vec<f32>,
    pub mlp_norm: Vec<f32>,
}

/// A norm's weights `[n]` read back from its device.
fn vec1(p: &burn::module::Param<burn::tensor::Tensor<1>>) -> crate::Result<Vec<f32>> {
    let n = p.dims()[0];
    crate::policy::to_vec(p.val().reshape([1, n]))
}

impl PackedBlock {
    /// Packs `b`'s 7 projections as `fmt` (not f32): the weights are read back on this thread and
    /// packed in parallel, so that one block's f32 copy at most is alive beside the model.
    ///
    /// # Errors
    /// Reading a weight back from its device.
    pub fn pack(b: &crate::Block, fmt: WeightFormat) -> crate::Result<PackedBlock> {
        /// A linear's weight `[in, out]` read back, its shape and its bias.
        type Read = (Vec<f32>, [usize; 2], Option<Vec<f32>>);
        let read = |l: &burn::nn::Linear| -> crate::Result<Read> {
            let dims = l.weight.dims();
            let bias = match &l.bias {
                Some(b) => Some(crate::policy::to_vec(b.val().reshape([1, dims[1]]))?),
                None => None,
            };
            Ok((crate::policy::to_vec(l.weight.val())?, dims, bias))
        };
        let read_back = (0..7).map(|p| read(b.projection(p))).collect::<crate::Result<Vec<_>>>()?;
        // burn keeps a linear's weight as [in, out]
        let packed: Vec<PackedMatrix> = read_back
            .into_par_iter()
            .map(|(w, [k, out], bias)| PackedMatrix::pack(fmt, &w, out, k, true, bias))
            .collect();
        let mut it = packed.into_iter();
        let mut next = || it.next().expect("7 projections packed");
        let (q, k, v, o, gate, up, down) = (next(), next(), next(), next(), next(), next(), next());
        Ok(PackedBlock {
            qkv: PackedMatrix::concat_rows(vec![q, k, v]),
            o,
            gate_up: PackedMatrix::concat_rows(vec![gate, up]),
            down,
            attn_norm: vec1(&b.attn_norm)?,
            mlp_norm: vec1(&b.mlp_norm)?,
        })
    }
}

/// `y`'s buffer, shared by the tasks of [`PackedMatrix::matmul_with`], each writing its own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: the tasks write disjoint elements, and the buffer outlives them (rayon joins before the
// owner reads it)
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The element `i` (a method, so that closures capture the whole Sync wrapper).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// A decoder's projections and LM head packed for decode steps ([`crate::Llama`]'s layout), with
/// the f32 norm weights and shapes that [`crate::decode`] runs them with.
#[derive(Debug, Clone)]
pub struct PackedModel {
    pub blocks: Vec<PackedBlock>,
    /// The LM head (or the tied embeddings): `[v, h]`.
    pub head: PackedMatrix,
    /// The final RMSNorm's weights `[h]`.
    pub norm: Vec<f32>,
    /// Query heads, key/value heads, head dimension.
    pub heads: [usize; 3],
    /// RMSNorm's ε.
    pub eps: f32,
}

impl PackedModel {
    /// Packs `model`'s f32 weights as `fmt`; `None` for [`WeightFormat::F32`] (nothing to pack).
    /// The model keeps its f32 weights (prefill, scoring and training use them).
    ///
    /// # Errors
    /// Reading a weight back from its device.
    pub fn pack(
        model: &crate::Llama,
        cfg: &crate::LlamaConfig,
        fmt: WeightFormat,
    ) -> crate::Result<Option<PackedModel>> {
        if fmt == WeightFormat::F32 {
            return Ok(None);
        }
        // one block's f32 copy at most is alive beside the model
        let blocks = model.blocks.iter().map(|b| PackedBlock::pack(b, fmt)).collect::<crate::Result<Vec<_>>>()?;
        // the head is the largest matrix (49,152 × 576 for SmolLM2): read back and packed in slices
        // of output rows, so that no whole f32 copy of it is made
        const SLICE: usize = 8192;
        let (weight, transposed, bias) = match &model.lm_head {
            Some(l) => (l.weight.val(), true, l.bias.as_ref().map(|b| b.val())),
            None => (model.embed.val(), false, None),
        };
        let [a, b] = weight.dims();
        let (out, k) = if transposed { (b, a) } else { (a, b) };
        let mut slices = Vec::with_capacity(out.div_ceil(SLICE));
        for start in (0..out).step_by(SLICE) {
            let len = SLICE.min(out - start);
            let part = weight.clone().narrow(if transposed { 1 } else { 0 }, start, len);
            let bias = match &bias {
                Some(b) => Some(crate::policy::to_vec(b.clone().narrow(0, start, len).reshape([1, len]))?),
                None => None,
            };
            slices.push(PackedMatrix::pack(fmt, &crate::policy::to_vec(part)?, len, k, transposed, bias));
        }
        let head = PackedMatrix::concat_rows(slices);
        Ok(Some(PackedModel {
            blocks,
            head,
            norm: vec1(&model.norm)?,
            heads: [cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim()],
            eps: cfg.rms_norm_eps as f32,
        }))
    }

    /// Packs `model`'s blocks `from..` and final norm again, in this model's format, after their
    /// f32 weights changed (a training update of the top blocks: the embeddings, the LM head and
    /// the blocks before `from` are taken to be unchanged and kept as packed).
    ///
    /// # Errors
    /// [`crate::PolicyError::Options`] for a model of another depth or `from` past its blocks;
    /// reading a weight back from its device.
    pub fn repack_blocks(&mut self, model: &crate::Llama, from: usize) -> crate::Result<()> {
        if model.blocks.len() != self.blocks.len() || from > self.blocks.len() {
            return Err(crate::PolicyError::Options(format!(
                "repacking blocks {from}.. of a {}-block model into {} packed blocks",
                model.blocks.len(),
                self.blocks.len()
            )));
        }
        let fmt = self.format();
        for (packed, b) in self.blocks[from..].iter_mut().zip(&model.blocks[from..]) {
            *packed = PackedBlock::pack(b, fmt)?;
        }
        self.norm = vec1(&model.norm)?;
        Ok(())
    }

    pub fn format(&self) -> WeightFormat {
        self.head.format()
    }

    /// Bytes held by the packed copies (weights, scales, biases; not the norms).
    pub fn bytes(&self) -> usize {
        self.head.bytes()
            + self
                .blocks
                .iter()
                .map(|b| b.qkv.bytes() + b.o.bytes() + b.gate_up.bytes() + b.down.bytes())
                .sum::<usize>()
    }
}

/// The kernels, by instruction set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust (any CPU).
    Portable,
    /// AVX2 + FMA, 8 lanes.
    Avx2,
    /// AVX-512F, 16 lanes.
    Avx512,
}

impl Kernel {
    /// The widest kernel this CPU runs (decided once per process).
    pub fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            [Kernel::Avx512, Kernel::Avx2].into_iter().find(|k| k.runs_here()).unwrap_or(Kernel::Portable)
        })
    }

    /// Every kernel this CPU runs.
    pub fn available() -> Vec<Kernel> {
        [Kernel::Portable, Kernel::Avx2, Kernel::Avx512].into_iter().filter(|k| k.runs_here()).collect()
    }

    /// Whether this CPU has the instructions.
    pub fn runs_here(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Activation rows multiplied per pass over a weight row (the accumulators fit the registers).
    fn rows(self) -> usize {
        match self {
            Kernel::Portable | Kernel::Avx2 => 4,
            Kernel::Avx512 => 8,
        }
    }

    /// `out[r] = w · x[r]` for bf16 `w` (`k_pad` long) and `x` `[out.len()][k_pad]`.
    fn bf16(self, w: &[u16], x: &[f32], out: &mut [f32]) {
        debug_assert_eq!(x.len(), out.len() * w.len());
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `runs_here` was checked by `matmul_with`; lengths as asserted above
            Kernel::Avx512 => unsafe { x86::bf16_avx512(w, x, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above
            Kernel::Avx2 => unsafe { x86::bf16_avx2(w, x, out) },
            _ => portable_bf16(w, x, out),
        }
    }

    /// `out[r] = Σ_b d_b · (q_b · x[r]_b)` for Q8_0 `q`/`d` and `x` `[out.len()][k_pad]`.
    fn q8_0(self, q: &[i8], d: &[f32], x: &[f32], out: &mut [f32]) {
        debug_assert_eq!(x.len(), out.len() * q.len());
        debug_assert_eq!(d.len() * BLOCK, q.len());
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `runs_here` was checked by `matmul_with`; lengths as asserted above
            Kernel::Avx512 => unsafe { x86::q8_0_avx512(q, d, x, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above
            Kernel::Avx2 => unsafe { x86::q8_0_avx2(q, d, x, out) },
            _ => portable_q8_0(q, d, x, out),
        }
    }
}

fn portable_bf16(w: &[u16], x: &[f32], out: &mut [f32]) {
    let k = w.len();
    for (r, y) in out.iter_mut().enumerate() {
        let xr = &x[r * k..][..k];
        let mut acc = [0f32; 8];
        for (wc, xc) in w.chunks_exact(8).zip(xr.chunks_exact(8)) {
            for j in 0..8 {
                acc[j] += f32::from_bits((wc[j] as u32) << 16) * xc[j];
            }
        }
        *y = acc.iter().sum();
    }
}

fn portable_q8_0(q: &[i8], d: &[f32], x: &[f32], out: &mut [f32]) {
    let k = q.len();
    for (r, y) in out.iter_mut().enumerate() {
        let xr = &x[r * k..][..k];
        let mut acc = [0f32; 8];
        for ((qb, xb), s) in q.chunks_exact(BLOCK).zip(xr.chunks_exact(BLOCK)).zip(d) {
            for (qc, xc) in qb.chunks_exact(8).zip(xb.chunks_exact(8)) {
                for j in 0..8 {
                    acc[j] += (qc[j] as f32 * s) * xc[j];
                }
            }
        }
        *y = acc.iter().sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! Each weight block of 32 is loaded and converted to f32 once and multiplied into every row
    //! (up to 8 with AVX-512, 4 with AVX2); two accumulators per row (the block's halves) hide the
    //! FMA latency at batch 1. Rows are summed across lanes once, at the end. The row count is a
    //! const parameter so that the accumulators live in registers.
    use std::arch::x86_64::*;

    use super::BLOCK;

    /// Calls `$f::<N>` for `N = $n` in `1..=$max`.
    macro_rules! by_rows {
        ($n:expr, $f:ident, $max:literal, ($($arg:expr),*)) => {
            match $n {
                1 => $f::<1>($($arg),*),
                2 => $f::<2>($($arg),*),
                3 => $f::<3>($($arg),*),
                4 => $f::<4>($($arg),*),
                5 if $max >= 5 => $f::<5>($($arg),*),
                6 if $max >= 6 => $f::<6>($($arg),*),
                7 if $max >= 7 => $f::<7>($($arg),*),
                8 if $max >= 8 => $f::<8>($($arg),*),
                n => unreachable!("{n} rows at once"),
            }
        };
    }

    /// # Safety
    /// AVX-512F; `x.len() == out.len() * w.len()`, `w.len()` a multiple of 32, `1 <= out.len() <= 8`.
    pub(super) unsafe fn bf16_avx512(w: &[u16], x: &[f32], out: &mut [f32]) {
        // SAFETY: the caller's
        unsafe { by_rows!(out.len(), bf16_avx512_n, 8, (w, x, out)) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn bf16_avx512_n<const N: usize>(w: &[u16], x: &[f32], out: &mut [f32]) {
        let k = w.len();
        let mut a = [_mm512_setzero_ps(); N];
        let mut b = [_mm512_setzero_ps(); N];
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        for blk in (0..k).step_by(BLOCK) {
            // SAFETY: blk + 32 <= k; bf16 bits shifted to the top of an f32 are that f32
            let (w0, w1) = unsafe {
                let lo = _mm256_loadu_si256(wp.add(blk) as *const __m256i);
                let hi = _mm256_loadu_si256(wp.add(blk + 16) as *const __m256i);
                (
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(lo))),
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(hi))),
                )
            };
            for r in 0..N {
                // SAFETY: r * k + blk + 32 <= x.len()
                unsafe {
                    let xr = xp.add(r * k + blk);
                    a[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xr), a[r]);
                    b[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xr.add(16)), b[r]);
                }
            }
        }
        for r in 0..N {
            out[r] = _mm512_reduce_add_ps(_mm512_add_ps(a[r], b[r]));
        }
    }

    /// # Safety
    /// AVX-512F; `x.len() == out.len() * q.len()`, `q.len() == 32 * d.len()`, `1 <= out.len() <= 8`.
    pub(super) unsafe fn q8_0_avx512(q: &[i8], d: &[f32], x: &[f32], out: &mut [f32]) {
        // SAFETY: the caller's
        unsafe { by_rows!(out.len(), q8_0_avx512_n, 8, (q, d, x, out)) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn q8_0_avx512_n<const N: usize>(q: &[i8], d: &[f32], x: &[f32], out: &mut [f32]) {
        let k = q.len();
        let mut a = [_mm512_setzero_ps(); N];
        let mut b = [_mm512_setzero_ps(); N];
        let (qp, xp) = (q.as_ptr(), x.as_ptr());
        for (i, s) in d.iter().enumerate() {
            let blk = i * BLOCK;
            let s = _mm512_set1_ps(*s);
            // SAFETY: blk + 32 <= k
            let (w0, w1) = unsafe {
                let lo = _mm_loadu_si128(qp.add(blk) as *const __m128i);
                let hi = _mm_loadu_si128(qp.add(blk + 16) as *const __m128i);
                (
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)), s),
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)), s),
                )
            };
            for r in 0..N {
                // SAFETY: r * k + blk + 32 <= x.len()
                unsafe {
                    let xr = xp.add(r * k + blk);
                    a[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xr), a[r]);
                    b[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xr.add(16)), b[r]);
                }
            }
        }
        for r in 0..N {
            out[r] = _mm512_reduce_add_ps(_mm512_add_ps(a[r], b[r]));
        }
    }

    /// The sum of the 8 lanes, in a fixed order.
    #[target_feature(enable = "avx2,fma")]
    fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// AVX2 and FMA; `x.len() == out.len() * w.len()`, `w.len()` a multiple of 32, `1 <= out.len() <= 4`.
    pub(super) unsafe fn bf16_avx2(w: &[u16], x: &[f32], out: &mut [f32]) {
        // SAFETY: the caller's
        unsafe { by_rows!(out.len(), bf16_avx2_n, 4, (w, x, out)) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn bf16_avx2_n<const N: usize>(w: &[u16], x: &[f32], out: &mut [f32]) {
        let k = w.len();
        let mut a = [_mm256_setzero_ps(); N];
        let mut b = [_mm256_setzero_ps(); N];
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        for blk in (0..k).step_by(BLOCK) {
            let mut ws = [_mm256_setzero_ps(); 4];
            for (j, wv) in ws.iter_mut().enumerate() {
                // SAFETY: blk + 8j + 8 <= k
                let bits = unsafe { _mm_loadu_si128(wp.add(blk + 8 * j) as *const __m128i) };
                *wv = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)));
            }
            for r in 0..N {
                // SAFETY: r * k + blk + 32 <= x.len()
                unsafe {
                    let xr = xp.add(r * k + blk);
                    a[r] = _mm256_fmadd_ps(ws[0], _mm256_loadu_ps(xr), a[r]);
                    b[r] = _mm256_fmadd_ps(ws[1], _mm256_loadu_ps(xr.add(8)), b[r]);
                    a[r] = _mm256_fmadd_ps(ws[2], _mm256_loadu_ps(xr.add(16)), a[r]);
                    b[r] = _mm256_fmadd_ps(ws[3], _mm256_loadu_ps(xr.add(24)), b[r]);
                }
            }
        }
        for r in 0..N {
            out[r] = hsum256(_mm256_add_ps(a[r], b[r]));
        }
    }

    /// # Safety
    /// AVX2 and FMA; `x.len() == out.len() * q.len()`, `q.len() == 32 * d.len()`, `1 <= out.len() <= 4`.
    pub(super) unsafe fn q8_0_avx2(q: &[i8], d: &[f32], x: &[f32], out: &mut [f32]) {
        // SAFETY: the caller's
        unsafe { by_rows!(out.len(), q8_0_avx2_n, 4, (q, d, x, out)) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn q8_0_avx2_n<const N: usize>(q: &[i8], d: &[f32], x: &[f32], out: &mut [f32]) {
        let k = q.len();
        let mut a = [_mm256_setzero_ps(); N];
        let mut b = [_mm256_setzero_ps(); N];
        let (qp, xp) = (q.as_ptr(), x.as_ptr());
        for (i, s) in d.iter().enumerate() {
            let blk = i * BLOCK;
            let s = _mm256_set1_ps(*s);
            let mut ws = [_mm256_setzero_ps(); 4];
            for (j, wv) in ws.iter_mut().enumerate() {
                // SAFETY: blk + 8j + 8 <= k
                let bytes = unsafe { _mm_loadl_epi64(qp.add(blk + 8 * j) as *const __m128i) };
                *wv = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), s);
            }
            for r in 0..N {
                // SAFETY: r * k + blk + 32 <= x.len()
                unsafe {
                    let xr = xp.add(r * k + blk);
                    a[r] = _mm256_fmadd_ps(ws[0], _mm256_loadu_ps(xr), a[r]);
                    b[r] = _mm256_fmadd_ps(ws[1], _mm256_loadu_ps(xr.add(8)), b[r]);
                    a[r] = _mm256_fmadd_ps(ws[2], _mm256_loadu_ps(xr.add(16)), a[r]);
                    b[r] = _mm256_fmadd_ps(ws[3], _mm256_loadu_ps(xr.add(24)), b[r]);
                }
            }
        }
        for r in 0..N {
            out[r] = hsum256(_mm256_add_ps(a[r], b[r]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect()
    }

    /// `x · wᵀ` in f64 over the dequantised weights.
    fn reference(w: &[f32], x: &[f32], m: usize, out: usize, k: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * out];
        for r in 0..m {
            for o in 0..out {
                y[r * out + o] = (0..k).map(|i| w[o * k + i] as f64 * x[r * k + i] as f64).sum();
            }
        }
        y
    }

    #[test]
    fn every_kernel_multiplies_what_was_packed() {
        // decode shapes (SmolLM2: 576 → 1536, its head 576 → v), odd sizes, k not a multiple of 32
        for (m, out, k) in [(1, 1536, 576), (16, 192, 576), (3, 1000, 64), (5, 7, 45), (9, 130, 100)] {
            let w = values(out * k, 1, 0.2);
            let x = values(m * k, 2, 2.0);
            let bias = values(out, 3, 1.0);
            for fmt in [WeightFormat::Bf16, WeightFormat::Q8_0] {
                let p = PackedMatrix::pack(fmt, &w, out, k, false, Some(bias.clone()));
                let want = reference(&p.dequantize(), &x, m, out, k);
                for kernel in Kernel::available() {
                    let y = p.matmul_with(kernel, &x, m);
                    assert_eq!(y.len(), m * out);
                    for (i, (got, want)) in y.iter().zip(&want).enumerate() {
                        let want = want + bias[i % out] as f64;
                        assert!(
                            (*got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{fmt} {kernel:?} {m}x{out}x{k} [{i}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packing_rounds_as_the_formats_say() {
        let (out, k) = (3, 64);
        let w = values(out * k, 7, 1.0);
        // the transposed input ([in][out]) packs to the same matrix
        let wt: Vec<f32> = (0..k).flat_map(|i| (0..out).map(move |o| (i, o))).map(|(i, o)| w[o * k + i]).collect();
        for fmt in [WeightFormat::Bf16, WeightFormat::Q8_0] {
            let a = PackedMatrix::pack(fmt, &w, out, k, false, None).dequantize();
            let b = PackedMatrix::pack(fmt, &wt, out, k, true, None).dequantize();
            assert_eq!(a, b);
            for (x, y) in w.iter().zip(&a) {
                // bf16 keeps 8 significant bits; Q8_0 errs by at most half a step of d = max|x| / 127
                let tol = if fmt == WeightFormat::Bf16 { x.abs() / 256.0 } else { 0.5 / 127.0 * 0.5 * 1.001 };
                assert!((x - y).abs() <= tol, "{fmt}: {x} packed to {y}");
            }
        }
        // a block of zeros has d = 0 and packs to zeros
        let z = PackedMatrix::pack(WeightFormat::Q8_0, &[0.0; 32], 1, 32, false, None);
        assert_eq!(z.dequantize(), vec![0.0; 32]);
        assert_eq!(z.bytes(), 36);
    }

    #[test]
    fn slices_of_rows_concatenate_to_the_whole() {
        let (out, k) = (70, 40);
        let w = values(out * k, 9, 1.0);
        let bias = values(out, 10, 1.0);
        for fmt in [WeightFormat::Bf16, WeightFormat::Q8_0] {
            let whole = PackedMatrix::pack(fmt, &w, out, k, false, Some(bias.clone()));
            let parts = [(0, 32), (32, 32), (64, 6)].map(|(s, n)| {
                PackedMatrix::pack(fmt, &w[s * k..(s + n) * k], n, k, false, Some(bias[s..s + n].to_vec()))
            });
            let joined = PackedMatrix::concat_rows(parts.into());
            assert_eq!(joined.shape(), [out, k]);
            assert_eq!(joined.dequantize(), whole.dequantize());
            let x = values(3 * k, 11, 1.0);
            assert_eq!(joined.matmul(&x, 3), whole.matmul(&x, 3));
        }
    }

    #[test]
    fn results_do_not_depend_on_threads_or_batch() {
        let (out, k) = (1536, 576);
        let w = values(out * k, 4, 0.2);
        let x = values(16 * k, 5, 1.0);
        for fmt in [WeightFormat::Bf16, WeightFormat::Q8_0] {
            let p = PackedMatrix::pack(fmt, &w, out, k, false, None);
            let bits = |threads: usize, rows: std::ops::Range<usize>| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
                let m = rows.len();
                let y = pool.install(|| p.matmul(&x[rows.start * k..rows.end * k], m));
                y.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let all = bits(1, 0..16);
            assert!(bits(2, 0..16) == all && bits(3, 0..16) == all && bits(5, 0..16) == all, "{fmt}: threads");
            // a row alone, or among 2 or 7, gets the bits it gets in the batch of 16
            for (rows, at) in [(3..4, 3), (6..8, 6), (9..16, 9)] {
                let part = bits(2, rows.clone());
                assert_eq!(part[..], all[at * out..(at + rows.len()) * out], "{fmt}: rows {rows:?}");
            }
        }
    }
}
