//! GGUF files (llama.cpp's model format, v2 and v3): header, metadata, tensor directory, and
//! dequantisation of the common tensor types to f32, over a memory map.
//!
//! Layout: magic `GGUF`, u32 version, u64 tensor count, u64 metadata count; metadata as
//! (string key, u32 type, value); tensor infos as (string name, u32 n_dims, u64 dims innermost first,
//! u32 ggml type, u64 offset); then the data, aligned to `general.alignment` (default 32). Strings are
//! a u64 length and UTF-8 bytes. Everything is little endian.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use crate::error::{PolicyError, Result};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, when it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor types r1s can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q6K,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// (values per block, bytes per block).
    fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q6K => (256, 210),
        }
    }
}

/// Names of ggml type ids that exist but r1s does not dequantise (for error messages).
fn type_name(id: u32) -> String {
    let known = [
        (6, "Q5_0"),
        (7, "Q5_1"),
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (13, "Q5_K"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
    ];
    known.iter().find(|(i, _)| *i == id).map_or_else(|| format!("type id {id}"), |(_, n)| (*n).to_owned())
}

/// One tensor of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions, outermost first (the reverse of GGUF's order): a `[rows, cols]` matrix.
    pub shape: Vec<usize>,
    pub dtype: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    pub bytes: usize,
}

impl TensorInfo {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An opened GGUF file.
#[derive(Debug)]
pub struct Gguf {
    path: PathBuf,
    map: memmap2::Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn bad(&self, reason: impl Into<String>) -> PolicyError {
        PolicyError::BadFile { path: self.path.to_path_buf(), offset: Some(self.pos as u64), reason: reason.into() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.bad(format!("truncated: {n} more bytes expected, the file has {}", self.bytes.len())));
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count that must fit what is left of the file at `min_size` bytes per item.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.u64()?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > left {
            self.pos = at;
            return Err(self.bad(format!("{what} count {n} cannot fit in the {left} bytes left")));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.count(1, "string length")?;
        let at = self.pos;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| {
            self.pos = at;
            self.bad("string is not UTF-8")
        })
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 if depth < 4 => {
                let item = self.u32()?;
                let n = self.count(1, "array length")?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(item, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(self.bad(format!("unknown metadata value type {other}"))),
        })
    }
}

impl Gguf {
    /// Opens and checks a GGUF file: header, metadata, and every tensor's extent within the file.
    pub fn open(path: &Path) -> Result<Gguf> {
        let file = std::fs::File::open(path).map_err(|e| PolicyError::io(path, e))?;
        // SAFETY: the model file is only read; modifying it while r1s runs is a misuse we cannot prevent.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| PolicyError::io(path, e))?;
        let mut r = Reader { bytes: &map, pos: 0, path };
        if r.take(4).ok() != Some(b"GGUF".as_slice()) {
            return Err(PolicyError::BadFile { path: path.into(), offset: Some(0), reason: "not a GGUF file".into() });
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.bad(format!("GGUF version {version} (r1s reads 2 and 3)")));
        }
        let n_tensors = r.count(8, "tensor")?;
        let n_kv = r.count(12, "metadata")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let v = r.value(ty, 0)?;
            metadata.insert(key, v);
        }
        let align = metadata.get("general.alignment").and_then(Value::as_u64).unwrap_or(32) as usize;
        if align == 0 || !align.is_power_of_two() {
            return Err(r.bad(format!("general.alignment {align} is not a power of two")));
        }
        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let at = r.pos;
            let name = r.string()?;
            let n_dims = r.u32()? as usize;
            if n_dims == 0 || n_dims > 4 {
                r.pos = at;
                return Err(r.bad(format!("tensor {name:?} has {n_dims} dimensions")));
            }
            let mut shape = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let d = r.u64()?;
                shape.push(
                    usize::try_from(d)
                        .map_err(|_| r.bad(format!("tensor {name:?}: dimension {d} exceeds the address space")))?,
                );
            }
            shape.reverse();
            let id = r.u32()?;
            let offset = r.u64()?;
            let offset = usize::try_from(offset)
                .map_err(|_| r.bad(format!("tensor {name:?}: offset {offset} exceeds the address space")))?;
            let Some(dtype) = GgmlType::from_id(id) else {
                r.pos = at;
                return Err(r.bad(format!(
                    "tensor {name:?} has quantisation {}, which r1s does not read (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)",
                    type_name(id)
                )));
            };
            infos.push((name, shape, dtype, offset, at));
        }
        let data_start = r.pos.div_ceil(align) * align;
        let mut tensors = BTreeMap::new();
        for (name, shape, dtype, offset, at) in infos {
            let (per, size) = dtype.block();
            let bad = |reason: String| PolicyError::BadFile { path: path.into(), offset: Some(at as u64), reason };
            // sizes come from the file: every product is checked, and checked against the file length
            // before anything is allocated from it
            let Some(n) = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) else {
                return Err(bad(format!("tensor {name:?}: dimensions {shape:?} multiply past 2^64 values")));
            };
            if !n.is_multiple_of(per) {
                return Err(bad(format!("tensor {name:?}: {n} values is not a multiple of the {per}-value block")));
            }
            let Some(bytes) = (n / per).checked_mul(size) else {
                return Err(bad(format!("tensor {name:?}: {n} values of {size} bytes per {per} overflow 2^64 bytes")));
            };
            let start = data_start.checked_add(offset);
            let fits = start.and_then(|s| s.checked_add(bytes)).is_some_and(|e| e <= map.len());
            if !fits {
                return Err(bad(format!(
                    "tensor {name:?} ({bytes} bytes at data offset {offset}) lies past the end of the file ({} bytes): truncated?",
                    map.len()
                )));
            }
            let info = TensorInfo { name: name.clone(), shape, dtype, offset: data_start + offset, bytes };
            tensors.insert(name, info);
        }
        Ok(Gguf { path: path.to_path_buf(), map, version, metadata, tensors })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A tensor's info, or an error naming it.
    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| PolicyError::BadFile {
            path: self.path.clone(),
            offset: None,
            reason: format!("no tensor {name:?}"),
        })
    }

    /// The tensor `name` dequantised to f32, with its shape (outermost first).
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self.info(name)?;
        let raw = &self.map[info.offset..info.offset + info.bytes];
        Ok((dequantize(info.dtype, raw, info.len()), info.shape.clone()))
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantises `n` values of type `t` from `raw` (whose length the directory has checked).
pub fn dequantize(t: GgmlType, raw: &[u8], n: usize) -> Vec<f32> {
    let mut y = Vec::with_capacity(n);
    let (per, size) = t.block();
    match t {
        GgmlType::F32 => y.extend(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        GgmlType::F16 => y.extend(raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::BF16 => y.extend(raw.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::Q4_0 => {
            for b in raw.chunks_exact(size) {
                let d = f16_at(b, 0);
                let q = &b[2..18];
                y.extend(q.iter().map(|&x| (f32::from(x & 0xF) - 8.0) * d));
                y.extend(q.iter().map(|&x| (f32::from(x >> 4) - 8.0) * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in raw.chunks_exact(size) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let q = &b[4..20];
                y.extend(q.iter().map(|&x| f32::from(x & 0xF) * d + m));
                y.extend(q.iter().map(|&x| f32::from(x >> 4) * d + m));
            }
        }
        GgmlType::Q8_0 => {
            for b in raw.chunks_exact(size) {
                let d = f16_at(b, 0);
                y.extend(b[2..34].iter().map(|&x| f32::from(x as i8) * d));
            }
        }
        GgmlType::Q4K => {
            for b in raw.chunks_exact(size) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let qs = &b[16..144];
                // 8 sub-blocks of 32 values, each with a 6-bit scale and a 6-bit min
                let scale_min = |j: usize| -> (f32, f32) {
                    if j < 4 {
                        (f32::from(scales[j] & 63), f32::from(scales[j + 4] & 63))
                    } else {
                        let sc = (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4);
                        let m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
                        (f32::from(sc), f32::from(m))
                    }
                };
                for (chunk, q) in qs.chunks_exact(32).enumerate() {
                    let (s1, m1) = scale_min(2 * chunk);
                    let (s2, m2) = scale_min(2 * chunk + 1);
                    y.extend(q.iter().map(|&x| d * s1 * f32::from(x & 0xF) - dmin * m1));
                    y.extend(q.iter().map(|&x| d * s2 * f32::from(x >> 4) - dmin * m2));
                }
            }
        }
        GgmlType::Q6K => {
            for b in raw.chunks_exact(size) {
                let (ql_all, qh_all, sc_all) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let (ql, qh) = (&ql_all[64 * half..64 * half + 64], &qh_all[32 * half..32 * half + 32]);
                    let sc = &sc_all[8 * half..8 * half + 8];
                    let mut out = [0f32; 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q = |low: u8, shift: u32| -> f32 {
                            f32::from((low | (((qh[l] >> shift) & 3) << 4)) as i8 - 32)
                        };
                        out[l] = d * f32::from(sc[is] as i8) * q(ql[l] & 0xF, 0);
                        out[l + 32] = d * f32::from(sc[is + 2] as i8) * q(ql[l + 32] & 0xF, 2);
                        out[l + 64] = d * f32::from(sc[is + 4] as i8) * q(ql[l] >> 4, 4);
                        out[l + 96] = d * f32::from(sc[is + 6] as i8) * q(ql[l + 32] >> 4, 6);
                    }
                    y.extend_from_slice(&out);
                }
            }
        }
    }
    debug_assert_eq!(y.len(), n, "{per}-value blocks");
    y
}
