//! NumPy `.npy` (format 1.0) headers for 2-D little-endian float matrices, so that Python opens r1s's
//! embeddings with `np.load(path, mmap_mode='r')` and r1s maps them without copying.

use std::io::Read;
use std::path::Path;

/// Element type of a matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// `<f4`
    F32,
    /// `<f2`
    F16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
        }
    }

    fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::F16 => "<f2",
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" => Ok(Dtype::F16),
            _ => Err(format!("unknown dtype {s:?} (f32, f16)")),
        }
    }
}

/// The header of a 2-D `.npy` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NpyHeader {
    pub dtype: Dtype,
    pub rows: u64,
    pub cols: u64,
    /// Byte offset of the first element.
    pub data_offset: u64,
}

impl NpyHeader {
    /// A header for a C-order `[rows, cols]` matrix.
    pub fn new(dtype: Dtype, rows: u64, cols: u64) -> NpyHeader {
        let len = Self::encode_dict(dtype, rows, cols).len();
        NpyHeader { dtype, rows, cols, data_offset: (10 + len) as u64 }
    }

    /// Bytes of one row (saturating: [`parse`](Self::parse) refuses shapes whose sizes overflow).
    pub fn row_bytes(&self) -> u64 {
        self.cols.saturating_mul(self.dtype.size() as u64)
    }

    /// Size of the whole file (saturating, as `row_bytes`: a saturated size never matches a file).
    pub fn file_len(&self) -> u64 {
        self.data_offset.saturating_add(self.rows.saturating_mul(self.row_bytes()))
    }

    fn encode_dict(dtype: Dtype, rows: u64, cols: u64) -> Vec<u8> {
        let dict = format!("{{'descr': '{}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}", dtype.descr());
        // magic (6) + version (2) + length (2) + dict + padding + '\n' is a multiple of 64
        let total = (10 + dict.len() + 1).div_ceil(64) * 64;
        let mut out = dict.into_bytes();
        out.resize(total - 10 - 1, b' ');
        out.push(b'\n');
        out
    }

    /// The header bytes (magic, version, length, dictionary).
    pub fn to_bytes(&self) -> Vec<u8> {
        let dict = Self::encode_dict(self.dtype, self.rows, self.cols);
        let mut out = Vec::with_capacity(10 + dict.len());
        out.extend_from_slice(b"\x93NUMPY\x01\x00");
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        out.extend_from_slice(&dict);
        out
    }

    /// Parses the header at the start of `bytes` (format 1.0 to 3.0, 2-D, `<f4`/`<f2`, C order).
    pub fn parse(bytes: &[u8]) -> Result<NpyHeader, String> {
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err("not a .npy file (bad magic)".into());
        }
        let (len, start) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
            v => return Err(format!("unsupported .npy version {v}")),
        };
        let dict = bytes.get(start..start + len).ok_or("truncated .npy header")?;
        let dict = std::str::from_utf8(dict).map_err(|_| "the .npy header is not text")?;
        let field = |key: &str| -> Option<&str> {
            let at = dict.find(&format!("'{key}':"))? + key.len() + 3;
            Some(dict[at..].trim_start())
        };
        let descr = field("descr").ok_or("no 'descr' in the .npy header")?;
        let dtype = if descr.starts_with("'<f4'") {
            Dtype::F32
        } else if descr.starts_with("'<f2'") {
            Dtype::F16
        } else {
            return Err(format!("unsupported dtype {}", descr.split(',').next().unwrap_or(descr)));
        };
        if !field("fortran_order").is_some_and(|f| f.starts_with("False")) {
            return Err("Fortran-order arrays are not supported".into());
        }
        let shape = field("shape").ok_or("no 'shape' in the .npy header")?;
        let inner = shape.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or("malformed shape")?;
        let dims: Vec<u64> = inner
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| "malformed shape")?;
        let [rows, cols] = dims[..] else { return Err(format!("expected a 2-D array, shape is {inner:?}")) };
        let data_offset = (start + len) as u64;
        // the shape comes from the file: its byte size must fit in u64 before anyone compares it
        let fits = cols
            .checked_mul(dtype.size() as u64)
            .and_then(|row| rows.checked_mul(row))
            .and_then(|data| data.checked_add(data_offset));
        if fits.is_none() {
            return Err(format!("shape ({rows}, {cols}) is more than 2^64 bytes"));
        }
        Ok(NpyHeader { dtype, rows, cols, data_offset })
    }

    /// Reads the header of the file at `path`.
    pub fn read(path: &Path) -> std::io::Result<NpyHeader> {
        let mut head = Vec::with_capacity(4096);
        std::fs::File::open(path)?.take(65_536).read_to_end(&mut head)?;
        Self::parse(&head).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_alignment() {
        for (d, r, c) in [(Dtype::F32, 14_372, 384), (Dtype::F16, 0, 1024), (Dtype::F32, 21_000_000, 768)] {
            let h = NpyHeader::new(d, r, c);
            let bytes = h.to_bytes();
            assert_eq!(bytes.len() % 64, 0);
            assert_eq!(bytes.len() as u64, h.data_offset);
            assert_eq!(NpyHeader::parse(&bytes).unwrap(), h);
        }
        assert!(NpyHeader::parse(b"\x93NUMPY\x01\x00\x10\x00{'descr': '<i8'}").is_err());
    }

    /// Found by tests/fuzz.rs: a shape whose byte size passes 2^64 overflowed `file_len` (a panic in
    /// debug builds, a wrapped size that could match a short file in release builds).
    #[test]
    fn shapes_past_2_pow_64_bytes_are_refused() {
        for (r, c) in [(1u64 << 62, 8u64), (8, 1 << 62), (u64::MAX, 1), (1 << 32, 1 << 32)] {
            let bytes = NpyHeader { dtype: Dtype::F32, rows: r, cols: c, data_offset: 0 }.to_bytes();
            let err = NpyHeader::parse(&bytes).unwrap_err();
            assert!(err.contains("more than 2^64 bytes"), "({r}, {c}): {err}");
        }
        let h = NpyHeader { dtype: Dtype::F32, rows: u64::MAX, cols: u64::MAX, data_offset: 128 };
        assert_eq!(h.file_len(), u64::MAX);
    }
}
