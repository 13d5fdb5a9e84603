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
    let Some(python) = python() else {
        eprintln!("skipping the pyarrow check: no $R1S_HOME/venv (run tools/setup)");
        return;
    };
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

fn python() -> Option<PathBuf> {
    let home = std::env::var_os("R1S_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/r1s"));
    let p = home.join("venv/bin/python");
    p.exists().then_some(p)
}

#[test]
fn embed_a_corpus_numpy_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("kilt");
    ok(r1s()
        .args(["-q", "corpus", "ingest"])
        .arg(shared("kilt/kilt_knowledgesource_sample100.jsonl"))
        .arg("--out")
        .arg(&corpus));
    let out = dir.path().join("index");
    let summary = ok(r1s()
        .args(["embed", "--limit", "24", "--chunk-rows", "8", "--threads", "2", "--corpus"])
        .arg(&corpus)
        .arg("--out")
        .arg(&out));
    assert!(summary.contains("24 rows x 384"), "{summary}");
    let one = ok(r1s().args(["embed", "--json", "--text"]).arg(first_contents(&corpus)));
    let v: serde_json::Value = serde_json::from_str(one.trim()).unwrap();
    let first: Vec<f64> = v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(first.len(), 384);
    let Some(py) = python() else {
        eprintln!("skipping the NumPy check: no $R1S_HOME/venv (run tools/setup)");
        return;
    };
    let script = "import sys, numpy as np\n\
                  m = np.load(sys.argv[1], mmap_mode='r')\n\
                  print(m.shape[0], m.shape[1], m.dtype, ' '.join(repr(float(x)) for x in m[0]))";
    let out = ok(Command::new(py).args(["-c", script]).arg(out.join("embeddings.npy")));
    let mut it = out.split_whitespace();
    assert_eq!((it.next(), it.next(), it.next()), (Some("24"), Some("384"), Some("float32")));
    let row0: Vec<f64> = it.map(|x| x.parse().unwrap()).collect();
    let d = row0.iter().zip(&first).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(d < 1e-6, "row 0 differs from `r1s embed --text` by {d}");
}

fn first_contents(corpus: &Path) -> String {
    let out = ok(r1s().args(["corpus", "export"]).arg(corpus));
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    line["contents"].as_str().unwrap().to_owned()
}

#[test]
fn embed_errors_are_clear() {
    let no_lib =
        r1s().args(["embed", "--text", "x"]).env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so").output().unwrap();
    assert_eq!(no_lib.status.code(), Some(69));
    let err = String::from_utf8_lossy(&no_lib.stderr);
    assert!(err.contains("tools/setup") && err.contains("ORT_DYLIB_PATH"), "{err}");
    let no_model = r1s().args(["embed", "--text", "x", "--model", "/nonexistent/model"]).output().unwrap();
    assert_eq!(no_model.status.code(), Some(66));
    let cuda = r1s().args(["embed", "--text", "x", "--device", "cuda"]).output().unwrap();
    assert!(!cuda.status.success(), "CUDA must never fall back silently");
    assert!(String::from_utf8_lossy(&cuda.stderr).contains("cuda"));
}

#[test]
fn index_build_from_jsonl_with_faiss_opens_in_python() {
    let dir = tempfile::tempdir().unwrap();
    // a tiny real corpus: 40 HotpotQA questions as Search-R1 passages
    let questions = std::fs::read_to_string(shared("r1searcher/eval_set/hotpotqa_500.jsonl")).unwrap();
    let mut jsonl = String::new();
    for (k, line) in questions.lines().take(40).enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let contents = format!("\"Q{k}\"\n{}", v["question"].as_str().unwrap());
        jsonl.push_str(&serde_json::json!({"id": k.to_string(), "contents": contents}).to_string());
        jsonl.push('\n');
    }
    let src = dir.path().join("q.jsonl");
    std::fs::write(&src, jsonl).unwrap();
    let out = dir.path().join("idx");
    let summary = ok(r1s()
        .args(["index", "build"])
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .arg("--corpus-out")
        .arg(dir.path().join("corpus"))
        .args(["--kind", "faiss", "--factory", "Flat", "--threads", "2"]));
    assert!(summary.contains("Faiss index of 40 x 384"), "{summary}");
    let info: serde_json::Value = serde_json::from_str(&ok(r1s().args(["index", "info"]).arg(&out))).unwrap();
    assert_eq!(info["kind"], "faiss");
    assert_eq!(info["rows"], 40);
    let queries = dir.path().join("queries.txt");
    std::fs::write(&queries, "Which magazine was started first?\nWho was born earlier?\n").unwrap();
    let eval = ok(r1s().args(["index", "eval", "--index"]).arg(&out).arg("--queries").arg(&queries));
    assert!(eval.contains("faiss Flat") && eval.contains("1.0000"), "{eval}");
    let Some(py) = python() else {
        eprintln!("skipping the faiss.read_index check: no $R1S_HOME/venv (run tools/setup)");
        return;
    };
    let script = "import sys, faiss\ni = faiss.read_index(sys.argv[1])\nprint(i.ntotal, i.d)";
    let got = ok(Command::new(py).args(["-c", script]).arg(out.join("faiss.index")));
    assert_eq!(got.trim(), "40 384");
}
