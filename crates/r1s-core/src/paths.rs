//! Where r1s finds what `tools/setup` fetched: `$R1S_HOME`, default `~/.cache/r1s`.

use std::path::{Component, Path, PathBuf};

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

/// `path` as seen from directory `base`: the relative path from `base` to `path` when both resolve
/// (symbolic links and `..` followed, through `std::fs::canonicalize`), else `path` made absolute.
/// Index manifests record their corpus this way, so that any spelling of the same directory
/// (`corpora/x`, `./corpora/x/`, an absolute path, another working directory) records the same
/// thing, and a tree moved whole still finds its corpus.
pub fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let (Ok(p), Ok(b)) = (std::fs::canonicalize(path), std::fs::canonicalize(base)) else {
        return std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    };
    let (pc, bc): (Vec<Component<'_>>, Vec<Component<'_>>) = (p.components().collect(), b.components().collect());
    let common = pc.iter().zip(&bc).take_while(|(x, y)| x == y).count();
    let mut rel = PathBuf::new();
    for _ in common..bc.len() {
        rel.push("..");
    }
    for c in &pc[common..] {
        rel.push(c.as_os_str());
    }
    if rel.as_os_str().is_empty() { PathBuf::from(".") } else { rel }
}

#[cfg(test)]
mod tests {
    use super::relative_to;
    use std::path::{Path, PathBuf};

    #[test]
    fn relative_to_gives_one_path_for_every_spelling() {
        let d = tempfile::tempdir().unwrap();
        let (corpus, index) = (d.path().join("corpora").join("x"), d.path().join("indexes").join("x"));
        std::fs::create_dir_all(&corpus).unwrap();
        std::fs::create_dir_all(&index).unwrap();
        let want = PathBuf::from("../../corpora/x");
        assert_eq!(relative_to(&corpus, &index), want);
        assert_eq!(relative_to(&corpus.join("."), &index), want);
        assert_eq!(relative_to(&d.path().join("indexes/../corpora/x/"), &index), want);
        assert_eq!(relative_to(&index, &index), Path::new("."));
        // a path that does not resolve is kept, made absolute
        assert!(relative_to(Path::new("no/such"), &index).is_absolute());
    }
}
