//! Repository-level checks: the README's set-up contract and CI entry point.

use std::path::PathBuf;

/// The repository root: the package directory cargo gives the test at run time (a binary built
/// from another checkout sharing the target directory would otherwise look at that checkout).
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// The README starts with exactly two commands (quickstart, tests) and `.ci/run` runs the second.
#[test]
fn readme_starts_with_the_two_commands_and_ci_runs_the_test_one() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let block: Vec<&str> = readme
        .split("```")
        .nth(1)
        .expect("a code block near the top of the README")
        .lines()
        .skip(1)
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(block, ["tools/quickstart", "tools/test"], "README's first code block");
    let before_block = readme.split("```").next().unwrap_or("");
    assert!(before_block.lines().count() < 12, "the two commands must be at the top of the README");
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect(".ci/run");
    assert!(ci.lines().any(|l| l.trim() == "exec tools/test"), ".ci/run must run tools/test");
    for tool in ["tools/setup", "tools/quickstart", "tools/test", ".ci/run"] {
        let meta = std::fs::metadata(root().join(tool)).unwrap_or_else(|_| panic!("{tool} missing"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert!(meta.permissions().mode() & 0o111 != 0, "{tool} is not executable");
        }
        let _ = meta;
    }
}

/// Every artifact tools/setup fetches is pinned by sha256.
#[test]
fn setup_pins_every_artifact() {
    let setup = std::fs::read_to_string(root().join("tools/setup")).expect("tools/setup");
    let pinned: Vec<&str> = setup.lines().filter(|l| l.trim_start().starts_with("\"") && l.contains("==")).collect();
    assert!(pinned.len() >= 6, "{pinned:?}");
    for line in pinned {
        let sha = line.trim().trim_matches('"').rsplit('|').next().unwrap_or("");
        assert!(sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()), "unpinned: {line}");
    }
}
