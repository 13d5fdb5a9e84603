//! JSON exactly as the Python servers write it, so that responses match byte for byte:
//! - FastAPI (Search-R1): `json.dumps(ensure_ascii=False, separators=(",", ":"))`;
//! - Flask's `jsonify` (R1-Searcher): `ensure_ascii=True`, sorted keys, compact, then a newline.
//!
//! Both print floats as Python's `repr` does (`0.5`, `1e-05`, `1.0`), which differs from serde_json's
//! default for small and large magnitudes; Flask additionally escapes every non-ASCII character
//! (and DEL) as `\uXXXX`, with surrogate pairs beyond the BMP.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter, Serializer};

/// Python's `repr(float)`: the shortest round-trip digits, positional when the decimal exponent is
/// in [-4, 16), else scientific with a signed exponent of at least two digits.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-5"
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    if (-4..16).contains(&exp) {
        if exp < 0 {
            format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
        } else if exp + 1 >= n {
            format!("{sign}{digits}{}.0", "0".repeat((exp + 1 - n) as usize))
        } else {
            let (int, frac) = digits.split_at((exp + 1) as usize);
            format!("{sign}{int}.{frac}")
        }
    } else {
        let m = if n > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

/// A compact serde_json formatter printing floats like Python, optionally escaping non-ASCII.
#[derive(Debug, Clone, Copy)]
pub struct PyFormatter {
    /// Escape every character outside printable ASCII as `\uXXXX` (`ensure_ascii=True`).
    pub ensure_ascii: bool,
}

impl Formatter for PyFormatter {
    fn write_f64<W: ?Sized + Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(python_float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        // Python has no f32: numpy float32 values reach JSON widened to double
        self.write_f64(writer, f64::from(value))
    }

    fn write_string_fragment<W: ?Sized + Write>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()> {
        if !self.ensure_ascii {
            return writer.write_all(fragment.as_bytes());
        }
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if c.is_ascii() && c != '\x7f' {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                write!(writer, "\\u{u:04x}")?;
            }
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + Write>(&mut self, writer: &mut W, escape: CharEscape) -> io::Result<()> {
        // the same short forms and lower-case \u00XX as Python's json
        let s: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"\\/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(b) => return write!(writer, "\\u{:04x}", b),
        };
        writer.write_all(s)
    }
}

/// Serialises `value` as FastAPI does (UTF-8 kept as is).
pub fn to_fastapi(value: &impl Serialize) -> Vec<u8> {
    to_vec(value, PyFormatter { ensure_ascii: false })
}

/// Serialises `value` as Flask's `jsonify` does: ASCII-escaped, followed by a newline. (Sorted keys
/// are the caller's business: declare struct fields in sorted order.)
pub fn to_flask(value: &impl Serialize) -> Vec<u8> {
    let mut v = to_vec(value, PyFormatter { ensure_ascii: true });
    v.push(b'\n');
    v
}

fn to_vec(value: &impl Serialize, f: PyFormatter) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let mut ser = Serializer::with_formatter(&mut out, f);
    // serialising plain data into a Vec cannot fail; keep the bytes written so far if it somehow does
    if let Err(e) = value.serialize(&mut ser) {
        log::error!("JSON serialisation failed: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python_repr() {
        for (x, py) in [
            (0.5, "0.5"),
            (1.0, "1.0"),
            (-2.0, "-2.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.000012345, "1.2345e-05"),
            (123456789.0, "123456789.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123.456, "123.456"),
            (1e22, "1e+22"),
            (-0.0, "-0.0"),
            (f64::from(0.812_345_7_f32), "0.8123456835746765"),
        ] {
            assert_eq!(python_float_repr(x), py, "{x:e}");
        }
    }

    #[test]
    fn ascii_escaping_matches_python() {
        let v = serde_json::json!({"a": "é\u{7f}\u{1F600}\n\u{1}\"\\/"});
        assert_eq!(
            String::from_utf8(to_flask(&v)).unwrap(),
            "{\"a\":\"\\u00e9\\u007f\\ud83d\\ude00\\n\\u0001\\\"\\\\/\"}\n"
        );
        assert_eq!(String::from_utf8(to_fastapi(&v)).unwrap(), "{\"a\":\"é\u{7f}\u{1F600}\\n\\u0001\\\"\\\\/\"}");
    }
}
