//! Where r1s finds what `tools/setup` fetched: `$R1S_HOME`, default `~/.cache/r1s`.

use std::path::PathBuf;

/// Environment variable naming the r1s cache directory.
pub const HOME_ENV: &str = "R1S_HOME";

/// The r1s cache directory: `$R1S_HOME`, else `$HOME/.cache/r1s`, else `.r1s` in the working directory.
pub fn r1s_home() -> PathBuf {
    if let Some(h) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(h);
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("r1s"),
        None => PathBuf::from(".r1s"),
    }
}

/// The sample corpus fetched by `tools/setup` (10,033 English Wikipedia summaries).
pub fn sample_corpus() -> PathBuf {
    r1s_home().join("data").join("summaries_en-us.json")
}
