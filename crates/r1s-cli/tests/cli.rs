//! End-to-end tests of the `r1s` binary on real data: ingest, stats, show, export, exit codes,
//! and the Parquet file opened by pyarrow (when tools/setup has made its Python environment).

use std::path::{Path, PathBuf};
use std::process::Command;

fn r1s() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_r1s"));
    c.env_remove("R1S_THREADS");
    c
}

fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(rel)
}

fn ok(c: &mut Command) -> String {
    let out = c.output().expect("running r1s");
    assert!(out.status.success(), "r1s failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn ingest_stats_show_export() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("wiki");
    let dump = shared("wiki/enwiki-20250201-first70.xml.bz2");
    let summary = ok(r1s().args(["corpus", "ingest"]).arg(&dump).arg("--out").arg(&out));
    assert!(summary.contains("from 6 documents (70 pages read)"), "{summary}");
    assert!(summary.contains("redirect 64"), "{summary}");

    let stats = ok(r1s().args(["corpus", "stats", "--json"]).arg(&out));
    let manifest: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let passages = manifest["counts"]["passages"].as_u64().unwrap();
    assert!(passages > 400, "{passages}");

    let show = ok(r1s().args(["corpus", "show", "--json"]).arg(&out).args(["0", "1"]));
    let first: serde_json::Value = serde_json::from_str(show.lines().next().unwrap()).unwrap();
    assert_eq!(first["title"], "Anarchism");
    assert_eq!(first["row"], 0);

    let jsonl = dir.path().join("export.jsonl");
    ok(r1s().args(["corpus", "export"]).arg(&out).arg("--out").arg(&jsonl));
    let text = std::fs::read_to_string(&jsonl).unwrap();
    assert_eq!(text.lines().count() as u64, passages);
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(line["contents"].as_str().unwrap().starts_with("\"Anarchism\"\nAnarchism is a political philosophy"));

    pyarrow_reads(&out, passages);
}

/// The Parquet file opens in pyarrow unchanged, with the documented schema.
fn pyarrow_reads(corpus: &Path, passages: u64) {
    let home = std::env::var_os("R1S_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/r1s"));
    let python = home.join("venv/bin/python");
    if !python.exists() {
        eprintln!("skipping the pyarrow check: {} missing (run tools/setup)", python.display());
        return;
    }
    let script = "import sys, pyarrow.parquet as pq\n\
                  t = pq.read_table(sys.argv[1])\n\
                  print(t.num_rows, ','.join(t.column_names), t.column('title')[0].as_py())";
    let out = ok(Command::new(python).args(["-c", script]).arg(corpus.join("passages.parquet")));
    assert_eq!(out.trim(), format!("{passages} row,id,doc_id,title,text,chunk,contents Anarchism"));
}

#[test]
fn bad_input_exit_code_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"id\": \"1\", \"contents\": \"x\"}\nnot json\n").unwrap();
    let out = r1s().args(["corpus", "ingest"]).arg(&bad).arg("--out").arg(dir.path().join("o")).output().unwrap();
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl: line 2"), "{err}");
    assert!(!dir.path().join("o").exists());

    let missing = r1s().args(["corpus", "show"]).arg(dir.path().join("nope")).arg("0").output().unwrap();
    assert_eq!(missing.status.code(), Some(65));
    let usage = r1s().args(["corpus", "ingest"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
}
