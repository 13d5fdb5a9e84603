//! The process's own memory, from Linux's `/proc/self` (other systems: `None`): peak and current
//! resident set, and how much of the files mapped from a directory is mapped and resident.

use std::path::Path;

/// A byte count in binary units, in the largest unit that keeps it at least 1 (`60.2 GiB`,
/// `14.3 MiB`, `512 B`): how `index plan` and the index build's disk check print sizes (the units
/// `--ram` reads).
pub fn binary_size(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if unit == "B" { format!("{b} B") } else { format!("{v:.1} {unit}") }
}

/// A `kB` field of `/proc/self/status` (`VmHWM`, `VmRSS`, …) in bytes.
fn status_kb(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse::<u64>().ok()?.checked_mul(1024)
    })
}

/// Peak resident set size of this process so far (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kb("VmHWM")
}

/// Current resident set size of this process (`VmRSS`, file-backed pages of mappings included), in
/// bytes.
pub fn rss_bytes() -> Option<u64> {
    status_kb("VmRSS")
}

/// Bytes of one file mapped into this process and how many of them are resident (from
/// `/proc/self/smaps`; several mappings of one file are summed).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MappedFile {
    pub path: String,
    pub mapped_bytes: u64,
    pub resident_bytes: u64,
}

/// The files under `dir` that this process has mapped, with their mapped and resident bytes.
pub fn mapped_under(dir: &Path) -> Option<Vec<MappedFile>> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let text = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut out: Vec<MappedFile> = Vec::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // a mapping's header: address range, perms, offset, device, inode, path
            let path = line.split_whitespace().skip(5).collect::<Vec<_>>().join(" ");
            current = None;
            if !path.is_empty() && Path::new(&path).starts_with(&dir) {
                let at = out.iter().position(|f| f.path == path).unwrap_or_else(|| {
                    out.push(MappedFile { path: path.clone(), ..Default::default() });
                    out.len() - 1
                });
                current = Some(at);
            }
            continue;
        }
        let Some(at) = current else { continue };
        let kb = parts.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0).saturating_mul(1024);
        match first {
            "Size:" => out[at].mapped_bytes += kb,
            "Rss:" => out[at].resident_bytes += kb,
            _ => {}
        }
    }
    Some(out)
}
