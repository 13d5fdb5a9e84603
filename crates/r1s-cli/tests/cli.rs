//! End-to-end tests of the `r1s` binary on real data: ingest, stats, show, export, exit codes,
//! and the Parquet file opened by pyarrow (when tools/setup has made its Python environment).

use std::path::{Path, PathBuf};
use std::process::Command;

fn r1s() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_r1s"));
    c.env_remove("R1S_THREADS");
    c
}

/// `rel` in this checkout (the run's manifest directory first: a test binary reused from another
/// checkout keeps that checkout's compile-time path).
fn repo(rel: &str) -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join("../..")
        .join(rel)
}

fn shared(rel: &str) -> PathBuf {
    repo("../shared/data").join(rel)
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

    // a corpus that is not there is a missing input (66), as a missing index or file is
    let missing = r1s().args(["corpus", "show"]).arg(dir.path().join("nope")).arg("0").output().unwrap();
    assert_eq!(missing.status.code(), Some(66));
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
    let summary = build_index(&src, &out, &["--kind", "faiss", "--factory", "Flat", "--threads", "2"]);
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

/// `r1s serve --index INDEX` on an ephemeral port: the process, its URL and its standard error.
fn spawn_server(index: &Path) -> (std::process::Child, String, std::io::BufReader<std::process::ChildStderr>) {
    spawn_listening(r1s().args(["serve", "--port", "0", "--threads", "2", "--index"]).arg(index))
}

/// Starts `cmd` (a server on port 0) and reads its URL from the "listening on" line.
fn spawn_listening(cmd: &mut Command) -> (std::process::Child, String, std::io::BufReader<std::process::ChildStderr>) {
    use std::io::BufRead;
    let mut server = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut stderr = std::io::BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    let url = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "r1s serve exited before listening");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    (server, url, stderr)
}

/// `r1s index build SRC --out OUT` with the corpus ingested beside OUT (`corpus`), and `args`; its
/// standard output.
fn build_index(src: &Path, out: &Path, args: &[&str]) -> String {
    let corpus = out.parent().expect("an output inside a directory").join("corpus");
    ok(r1s().args(["index", "build"]).arg(src).arg("--out").arg(out).arg("--corpus-out").arg(corpus).args(args))
}

/// A Search-R1 JSONL of the first `n` R1-Searcher passages in `dir`.
fn some_passages(dir: &Path, n: usize) -> PathBuf {
    let passages = std::fs::read_to_string(shared("r1searcher/passages.jsonl")).unwrap();
    let src = dir.join("p.jsonl");
    std::fs::write(&src, passages.lines().take(n).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    src
}

/// SQ8 indexes through the binary: build (and rebuild without INPUT), eval from query vectors with
/// the start-up and memory lines, `/health`'s mapped and resident bytes, and `index plan`.
#[test]
fn sq8_index_build_eval_serve_and_plan() {
    let dir = tempfile::tempdir().unwrap();
    let src = some_passages(dir.path(), 300);
    let index = dir.path().join("idx");
    let summary = build_index(&src, &index, &["--kind", "hnsw", "--quantize", "sq8", "--threads", "2"]);
    assert!(summary.contains("Hnsw sq8 index of 300 x 384"), "{summary}");
    assert!(summary.contains("peak RSS"), "{summary}");
    let info: serde_json::Value = serde_json::from_str(&ok(r1s().args(["index", "info"]).arg(&index))).unwrap();
    assert_eq!(info["params"]["quantize"], "sq8");
    assert_eq!(info["params"]["rerank"], true);
    assert!(index.join("codes.sq8").exists());

    let queries = dir.path().join("queries.txt");
    let questions = std::fs::read_to_string(shared("r1searcher/eval_set/bamboogle.jsonl")).unwrap();
    let qs: Vec<String> = questions
        .lines()
        .take(20)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["question"].as_str().unwrap().to_owned())
        .collect();
    std::fs::write(&queries, qs.join("\n")).unwrap();
    let qnpy = dir.path().join("q.npy");
    ok(r1s()
        .args(["index", "eval", "--index"])
        .arg(&index)
        .arg("--queries")
        .arg(&queries)
        .arg("--save-queries")
        .arg(&qnpy));
    let eval = ok(r1s()
        .args(["index", "eval", "--index"])
        .arg(&index)
        .arg("--query-vectors")
        .arg(&qnpy)
        .args(["--ef", "16,64"]));
    for want in ["20 query vectors", "open ", "first query ", "resident after approximate searches", "hnsw-sq8 ef=64"] {
        assert!(eval.contains(want), "{want:?} missing: {eval}");
    }
    let recall: f64 = eval
        .lines()
        .find(|l| l.starts_with("hnsw-sq8 ef=64"))
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert!(recall >= 0.95, "{eval}");

    // the embeddings are there: a flat sq8 index over them without INPUT
    let summary = ok(r1s().args(["index", "build", "--out"]).arg(&index).args(["--kind", "flat", "--quantize", "sq8"]));
    assert!(summary.contains("Flat sq8 index of 300 x 384"), "{summary}");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = r1s().args(["index", "build", "--out"]).arg(&empty).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no embeddings.npy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // /health shows the index files mapped into the server, with their resident bytes
    ok(r1s().args(["-q", "index", "build", "--out"]).arg(&index).args(["--kind", "hnsw", "--quantize", "sq8"]));
    let (mut server, url, _stderr) = spawn_server(&index);
    let c = reqwest::blocking::Client::new();
    let body = serde_json::json!({"queries": qs, "topk": 3}).to_string();
    let hits: serde_json::Value = c.post(format!("{url}/retrieve")).body(body).send().unwrap().json().unwrap();
    assert_eq!(hits["result"].as_array().unwrap().len(), qs.len());
    let health: serde_json::Value = c.get(format!("{url}/health")).send().unwrap().json().unwrap();
    let files = health["memory"]["index"]["files"].as_array().unwrap();
    let codes = files.iter().find(|f| f["path"].as_str().unwrap().ends_with("codes.sq8")).expect("codes.sq8 mapped");
    assert!(codes["resident_bytes"].as_u64().unwrap() > 0, "{health}");
    assert!(health["memory"]["process_resident_bytes"].as_u64().unwrap() > 0);
    server.kill().unwrap();
    server.wait().unwrap();

    // the plan for the case users ask about: 21M e5 passages
    let plan = ok(r1s().args(["index", "plan", "--rows", "21015324", "--dim", "768", "--ram", "64G"]));
    let sq8 = plan.lines().find(|l| l.starts_with("hnsw M32 sq8")).expect(&plan);
    assert!(sq8.ends_with("yes"), "{plan}");
    let f32 = plan.lines().find(|l| l.starts_with("hnsw M32 f32")).unwrap();
    // 64.6 GB (10^9) of f32 vectors: 60.1 GiB, in the binary units --ram reads
    assert!(f32.ends_with("no") && f32.contains("60.1 GiB"), "{plan}");
    // #36: --corpus measures the bytes per passage (and the rows) instead of assuming 600
    let corpus = dir.path().join("corpus");
    let docstore = std::fs::metadata(corpus.join("docstore.bin")).unwrap().len();
    let sized = ok(r1s().args(["index", "plan", "--dim", "384", "--corpus"]).arg(&corpus));
    let head = sized.lines().next().unwrap();
    assert!(head.starts_with("300 passages x 384 dims"), "{sized}");
    assert!(head.contains(&format!("{} bytes a passage (measured in", docstore / 300)), "{sized}");
    for args in [
        &["--rows", "10", "--dim", "4", "--ram", "lots"][..],
        &["--rows", "10", "--dim", "4", "--ram", "64"],
        &["--rows", "0", "--dim", "4"],
        &["--rows", "10", "--dim", "4", "--m", "1"],
        &["--rows", "10", "--dim", "4", "--kind", "faiss"],
        &["--rows", "10", "--dim", "4", "--quantize", "sq8"],
        &["--rows", "5000000000", "--dim", "4", "--kind", "hnsw"],
        &["--dim", "4"],
        &["--dim", "4", "--corpus", "/nonexistent"],
        &["--dim", "4", "--corpus", "corpus", "--passage-bytes", "500"],
    ] {
        let bad = r1s().args(["index", "plan"]).args(args).output().unwrap();
        assert!(!bad.status.success() && bad.status.code() != Some(101), "{args:?}: {:?}", bad.status);
    }
}

/// `r1s serve` (a real process on an ephemeral port) answers what `r1s retrieve` answers, its bytes
/// are what Python's json module (FastAPI's and Flask's settings) writes for the same data, and
/// SIGTERM stops it cleanly.
#[test]
fn serve_answers_like_retrieve_and_python_writes_the_same_bytes() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let src = some_passages(dir.path(), 150);
    let index = dir.path().join("idx");
    build_index(&src, &index, &["-q", "--kind", "flat", "--threads", "2"]);
    let questions = std::fs::read_to_string(shared("r1searcher/eval_set/bamboogle.jsonl")).unwrap();
    let qs: Vec<String> = questions
        .lines()
        .take(10)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["question"].as_str().unwrap().to_owned())
        .collect();

    // r1s retrieve, queries on standard input, JSON lines out
    let mut child = r1s()
        .args(["retrieve", "--json", "-k", "3", "--threads", "2", "--index"])
        .arg(&index)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(qs.join("\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let looked_up: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(looked_up.len(), qs.len());

    let (mut server, url, mut stderr) = spawn_server(&index);
    let c = reqwest::blocking::Client::new();
    let body = serde_json::json!({"queries": qs, "topk": 3, "return_scores": true}).to_string();
    let retrieve = c.post(format!("{url}/retrieve")).body(body).send().unwrap().bytes().unwrap().to_vec();
    let v: serde_json::Value = serde_json::from_slice(&retrieve).unwrap();
    for (q, (served, looked)) in qs.iter().zip(v["result"].as_array().unwrap().iter().zip(&looked_up)) {
        assert_eq!(looked["query"], q.as_str());
        let hits = looked["hits"].as_array().unwrap();
        assert_eq!(served.as_array().unwrap().len(), hits.len());
        for (s, h) in served.as_array().unwrap().iter().zip(hits) {
            assert_eq!(s["document"]["id"], h["id"]);
            assert_eq!(s["document"]["contents"], h["contents"]);
            // the same f32, printed by Python's rules on one side and Rust's on the other
            assert_eq!(s["score"].as_f64().unwrap() as f32, h["score"].as_f64().unwrap() as f32);
        }
    }
    let body = serde_json::json!({"queries": qs, "k": 2}).to_string();
    let queries = c.post(format!("{url}/queries")).body(body).send().unwrap().bytes().unwrap().to_vec();

    // SIGTERM: stops accepting, finishes, exits 0
    let pid = server.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = server.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");
    assert!(rest.contains("stopped"), "{rest}");

    let Some(py) = python() else {
        eprintln!("skipping the Python byte check: no $R1S_HOME/venv (run tools/setup)");
        return;
    };
    let check = |file: &str, bytes: &[u8], dump: &str| {
        let path = dir.path().join(file);
        std::fs::write(&path, bytes).unwrap();
        let script = format!(
            "import sys, json\nb = open(sys.argv[1], 'rb').read()\nobj = json.loads(b)\nout = ({dump}).encode('utf-8')\nprint('same' if out == b else 'differ: ' + repr(out[:300]))"
        );
        let got = ok(Command::new(&py).arg("-c").arg(script).arg(&path));
        assert_eq!(got.trim(), "same", "{file}");
    };
    // FastAPI's JSONResponse.render and Flask's jsonify (non-debug)
    check(
        "retrieve.json",
        &retrieve,
        "json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=None, separators=(',', ':'))",
    );
    check(
        "queries.json",
        &queries,
        "json.dumps(obj, ensure_ascii=True, sort_keys=True, separators=(',', ':')) + '\\n'",
    );
}

#[test]
fn eval_score_reproduces_released_figures_and_names_bad_lines() {
    let out = ok(r1s().args(["eval", "--score"]).arg(shared("r1searcher/eval_results/bamboogle_qwen.jsonl")));
    let row: Vec<&str> = out.lines().nth(2).unwrap().split_whitespace().collect();
    assert_eq!(&row[..5], ["125", "45.6", "52.8", "48.8", "57.7"], "{out}");
    // the judge column, from the file's gpt4o_output verdicts (R1-Searcher's LLM-as-judge, 54.4)
    assert!(out.lines().nth(1).unwrap().ends_with("judge") && row.last() == Some(&"54.4"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"pred_ans\": \"a\", \"answer\": \"a\"}\n{\"pred_ans\": 3}\n").unwrap();
    let o = r1s().args(["eval", "--score"]).arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(65));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.jsonl: line 2"), "{err}");
}

/// BM25 and hybrid indexes through the binary: one command builds a hybrid index (dense part,
/// bm25 part, manifest), every command that takes an index uses it, `index eval --answers` reports
/// each side and both fusions, and misplaced settings are refused.
#[test]
fn bm25_and_hybrid_build_in_one_command_and_serve_retrieve_eval() {
    let dir = tempfile::tempdir().unwrap();
    let src = some_passages(dir.path(), 200);
    let hybrid = dir.path().join("hyb");
    let summary = build_index(&src, &hybrid, &["--kind", "hybrid", "--dense-kind", "flat", "--threads", "2"]);
    assert!(summary.contains("bm25 index of 200 passages"), "{summary}");
    assert!(summary.contains("hybrid index of 200 passages (flat dense part, bm25 part; rrf fusion"), "{summary}");
    let info: serde_json::Value = serde_json::from_str(&ok(r1s().args(["index", "info"]).arg(&hybrid))).unwrap();
    assert_eq!(info["kind"], "hybrid");
    assert_eq!(info["parts"]["bm25"]["params"]["k1"].as_f64().unwrap() as f32, 0.9);
    assert_eq!(info["parts"]["dense"]["kind"], "flat");
    let bm25 = hybrid.join("bm25");
    let info: serde_json::Value = serde_json::from_str(&ok(r1s().args(["index", "info"]).arg(&bm25))).unwrap();
    assert_eq!(info["rows"], 200);

    let q = "Who was the first president of the Cleveland Indians?";
    for (index, extra) in [(&hybrid, vec!["--fusion", "linear", "--weight", "0.3"]), (&bm25, vec!["--k1", "1.2"])] {
        let out =
            ok(r1s().args(["retrieve", "--json", "-k", "3", "-j", "2", "--index"]).arg(index).args(&extra).arg(q));
        let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(v["hits"].as_array().unwrap().len(), 3, "{out}");
    }
    let eval = ok(r1s()
        .args(["-q", "index", "eval", "-j", "2", "--limit", "20", "--index"])
        .arg(&hybrid)
        .arg("--answers")
        .arg(shared("r1searcher/eval_set/bamboogle.jsonl")));
    for row in ["R@1", "R@10", "queries/s", "dense (flat)", "\nbm25 ", "hybrid rrf k=60", "hybrid linear w=0.5"] {
        assert!(eval.contains(row), "{row:?} missing in\n{eval}");
    }

    let (mut server, url, _stderr) = spawn_server(&hybrid);
    let c = reqwest::blocking::Client::new();
    let body = serde_json::json!({"queries": [q, "", "(a OR b) AND c*"], "topk": 2}).to_string();
    let reply = c.post(format!("{url}/retrieve")).body(body).send().unwrap();
    assert_eq!(reply.status().as_u16(), 200);
    let v: serde_json::Value = reply.json().unwrap();
    assert_eq!(v["result"][0].as_array().unwrap().len(), 2);
    server.kill().unwrap();
    let _ = server.wait();

    let refused = |args: &[&str], needle: &str| {
        let out = r1s().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{args:?}: {err}");
    };
    let (hybrid_s, dense_s, bm25_s) =
        (hybrid.to_str().unwrap(), hybrid.join("dense").display().to_string(), bm25.to_str().unwrap());
    let elsewhere = dir.path().join("elsewhere").display().to_string();
    refused(&["index", "build", "--kind", "bm25", "--out", &elsewhere], "needs INPUT");
    refused(
        &["index", "build", src.to_str().unwrap(), "--kind", "flat", "--k1", "1", "--out", &elsewhere],
        "settings of",
    );
    // a hybrid's part is rebuilt by rebuilding the hybrid, not as an index of its own inside it
    refused(&["index", "build", src.to_str().unwrap(), "--kind", "bm25", "--out", bm25_s], "is inside the index");
    refused(&["retrieve", "--index", &dense_s, "--fusion", "rrf", "x"], "apply to bm25 and hybrid");
    refused(&["retrieve", "--index", bm25_s, "--ef", "10", "x"], "--ef is a setting of dense");
    refused(&["retrieve", "--index", hybrid_s, "--b", "2", "x"], "invalid value '2' for '--b <B>'");
    refused(&["retrieve", "--index", hybrid_s, "--k1", "-1", "x"], "invalid value '-1' for '--k1 <K1>'");
    refused(&["retrieve", "--index", bm25_s, "--fusion", "linear", "x"], "apply to hybrid indexes");
    refused(&["index", "eval", "--index", bm25_s, "--queries", src.to_str().unwrap()], "use --answers");
    // settings an index does not have are refused rather than ignored
    refused(
        &["index", "eval", "--index", &dense_s, "--queries", src.to_str().unwrap(), "--ef", "16"],
        "this index has none",
    );
    refused(
        &[
            "index",
            "build",
            src.to_str().unwrap(),
            "--kind",
            "faiss",
            "--factory",
            "Flat",
            "--ef-search",
            "32",
            "--out",
            &elsewhere,
        ],
        "--factory \"Flat\" has none",
    );
    // a corpus where an index is expected, and the reverse, are named as such
    let corpus_dir = dir.path().join("corpus");
    refused(&["retrieve", "--index", corpus_dir.to_str().unwrap(), "x"], "is a corpus directory, not an index");
    refused(&["corpus", "stats", bm25_s], "is a bm25 index directory, not a corpus");
    // a missing index is a missing input (66), named once
    let out = r1s().args(["retrieve", "--index", "/nonexistent/idx", "x"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(66), "{err}");
    assert_eq!(err.matches("/nonexistent/idx").count(), 1, "{err}");
    // another INPUT than the corpus beside --out was ingested from: refused, not indexed in silence
    let other = dir.path().join("other.jsonl");
    std::fs::write(&other, std::fs::read_to_string(&src).unwrap().lines().take(5).collect::<Vec<_>>().join("\n"))
        .unwrap();
    let out = r1s()
        .args(["index", "build"])
        .arg(&other)
        .args(["--kind", "bm25", "--out"])
        .arg(dir.path().join("b2"))
        .arg("--corpus-out")
        .arg(dir.path().join("corpus"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("does not hold") && err.contains("--corpus-out"), "{err}");
    // JSON lines answer every input line, blank ones with no hits
    use std::io::Write;
    let mut child = r1s()
        .args(["retrieve", "--json", "-k", "2", "--index", bm25_s])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Cleveland Indians\n\n  \nthe of\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["hits"].as_array().unwrap().len(), 2);
    assert!(lines[1..].iter().all(|l| l["hits"].as_array().unwrap().is_empty()));
    refused(&["retrieve", "--index", hybrid_s, "--fusion", "rrf", "--weight", "0.3", "x"], "--weight is a setting of");
    refused(&["index", "build", "--kind", "wand", "--out", bm25_s], "unknown index kind");
}

/// Off a terminal (standard error a file, as under CI or nohup) long stages print a plain progress
/// line at the `--progress-every` interval, then their summary; `-q` and `--progress-every 0` none.
#[test]
fn progress_lines_appear_when_stderr_is_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = some_passages(dir.path(), 400);
    let build = |name: &str, args: &[&str]| -> String {
        let log = dir.path().join(format!("{name}.log"));
        let out = dir.path().join(name);
        let status = r1s()
            .args(args)
            .args(["index", "build", "--kind", "flat", "--threads", "2"])
            .arg(&src)
            .arg("--out")
            .arg(&out)
            .arg("--corpus-out")
            .arg(dir.path().join(format!("{name}-corpus")))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .status()
            .unwrap();
        assert!(status.success(), "{}", std::fs::read_to_string(&log).unwrap());
        std::fs::read_to_string(&log).unwrap()
    };
    let log = build("lines", &["--progress-every", "0.02"]);
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("embed: ") && l.contains(" of 400 (")).collect();
    assert!(lines.len() >= 2, "expected progress lines of the embed stage every 20 ms:\n{log}");
    for l in &lines {
        // `embed: 128 of 400 (32%) in 0s, 210.3/s, about 1s left` (no rate before the first rows)
        let done: u64 = l["embed: ".len()..].split(' ').next().unwrap().replace(',', "").parse().unwrap();
        assert!(l.contains("%) in "), "{l}");
        assert!(done == 0 || l.contains("/s") || l.contains(" s each"), "{l}");
    }
    assert!(log.lines().any(|l| l.starts_with("embed: 400 passages embedded")), "no summary line:\n{log}");
    let none = build("none", &["--progress-every", "0"]);
    assert!(!none.lines().any(|l| l.contains(" of 400 (")), "{none}");
    assert!(none.lines().any(|l| l.starts_with("embed: 400 passages embedded")), "{none}");
    assert_eq!(build("quiet", &["-q", "--progress-every", "0.02"]), "");
    let bad = r1s().args(["--progress-every", "-1", "corpus", "stats", "x"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--progress-every"));
    // sampling settings out of range are refused before the model loads
    for (flag, value) in
        [("--n", "0"), ("--temperature", "nan"), ("--top-p", "1.5"), ("--top-p", "0"), ("--weights", "q4_k")]
    {
        let bad = r1s().args(["policy", "generate", flag, value, "hi"]).output().unwrap();
        assert_eq!(bad.status.code(), Some(2), "{flag} {value}");
        assert!(String::from_utf8_lossy(&bad.stderr).contains(flag), "{flag} {value}");
    }
    // and an evaluation with no episode slots or no tokens to write
    for flag in ["--batch", "--max-new-tokens", "--limit", "--topk", "--max-turns"] {
        let bad = r1s().args(["eval", "--data", "q.jsonl", "--index", "i", flag, "0"]).output().unwrap();
        assert_eq!(bad.status.code(), Some(2), "{flag} 0");
        assert!(String::from_utf8_lossy(&bad.stderr).contains(flag), "{flag} 0");
    }
    // a device this build lacks says how to get it (exit 69), before any model loads
    let bad = r1s().args(["policy", "generate", "--device", "tch-cpu", "hi"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tools/setup --tch"), "{bad:?}");
    // also through the trainer's error (a transparent wrapper)
    let bad = r1s().args(["policy", "sft", "--data", "d.jsonl", "--out", "o", "--device", "tch-cpu"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(69), "{bad:?}");
    let cfg = repo("tools/title-task-search-r1.toml");
    let bad = r1s().args(["policy", "train", "--device", "tch-cuda", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(bad.status.code(), Some(69), "{bad:?}");
    let bad = r1s().args(["policy", "generate", "--device", "gpu", "hi"]).output().unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tch-cuda"), "{bad:?}");
}

/// `r1s reward` gives Search-R1's reference values on every line of reward_cases.jsonl, scores
/// R1-Searcher's released results with its own rewards, and names a bad line; `r1s serve-reward`
/// answers R1-Searcher's `/get_reward` request shape with the same rewards, 422 for what it cannot
/// score.
#[test]
fn reward_scores_files_and_serves_openrlhf() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scored.jsonl");
    let cases = shared("searchr1/reward_cases.jsonl");
    ok(r1s().args(["-q", "reward", "--reward", "searchr1-format-v03"]).arg(&cases).arg("--out").arg(&out));
    let scored = std::fs::read_to_string(&out).unwrap();
    let mut n = 0;
    for (got, want) in scored.lines().zip(std::fs::read_to_string(&cases).unwrap().lines()) {
        let (g, w): (serde_json::Value, serde_json::Value) =
            (serde_json::from_str(got).unwrap(), serde_json::from_str(want).unwrap());
        assert!((g["reward"].as_f64().unwrap() - w["format_em_v03"].as_f64().unwrap()).abs() < 1e-12, "{got}");
        n += 1;
    }
    assert_eq!(n, 400);
    let em = ok(r1s().args(["-q", "reward", "--reward", "searchr1-em"]).arg(&cases));
    let total: f64 =
        em.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["reward"].as_f64().unwrap()).sum();
    let want: f64 = std::fs::read_to_string(&cases)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["em"].as_f64().unwrap())
        .sum();
    assert_eq!(total, want);
    // R1-Searcher's released results with its stage-2 reward: the rollout only
    let released = shared("r1searcher/eval_results/bamboogle_qwen.jsonl");
    let lines = ok(r1s().args(["-q", "reward", "--reward", "stage2"]).arg(&released));
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    let sol = first["gen_text_store"].as_str().unwrap();
    let golds = match &first["answer"] {
        serde_json::Value::String(s) => vec![s.clone()],
        other => other.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_owned()).collect(),
    };
    let expected = r1s_agent::reward::reward(r1s_agent::Reward::Stage2, sol, &golds);
    assert_eq!(first["reward"].as_f64().unwrap(), expected);
    let bad = dir.path().join("bad.jsonl");
    for second in [
        "{\"solution_str\": 3}",
        // a Search-R1 line's `answer` is the model's, never the gold: a missing or malformed
        // golden_answers is an error, not a fallback
        "{\"solution_str\": \"x\", \"answer\": \"x\"}",
        "{\"solution_str\": \"x\", \"answer\": \"x\", \"golden_answers\": 5}",
    ] {
        std::fs::write(&bad, format!("{{\"solution_str\": \"x\", \"golden_answers\": [\"y\"]}}\n{second}\n")).unwrap();
        let o = r1s().args(["reward", "--reward", "searchr1-em"]).arg(&bad).output().unwrap();
        assert_eq!(o.status.code(), Some(65), "{second}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("line 2"), "{}", String::from_utf8_lossy(&o.stderr));
    }

    // serve-reward: R1-Searcher's request shape, gold answers looked up by the prompt's question
    let questions = shared("r1searcher/eval_set/bamboogle.jsonl");
    let (mut server, url, _stderr) =
        spawn_listening(r1s().args(["serve-reward", "--port", "0", "--reward", "stage2", "--data"]).arg(&questions));
    let qs = r1s_agent::read_questions(&questions, Some(3)).unwrap();
    let texts: Vec<String> = qs
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let answer = if i == 0 { q.answers[0].clone() } else { "no idea".into() };
            format!(
                "{} Let me answer. </think>\n\n<answer> {answer} </answer>",
                r1s_agent::protocol::base_prompt(&q.question)
            )
        })
        .collect();
    let c = reqwest::blocking::Client::new();
    let r = c.post(format!("{url}/get_reward")).json(&serde_json::json!({ "query": texts })).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().unwrap();
    let got: Vec<f64> = v["rewards"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let want: Vec<f64> = texts
        .iter()
        .zip(&qs)
        .map(|(t, q)| {
            let sol = t.split("\nAssistant: <think>").nth(1).unwrap();
            r1s_agent::reward::reward(r1s_agent::Reward::Stage2, sol, &q.answers)
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(got[0], 1.0, "the right answer in a good format scores F1 1");
    for (body, needle) in [
        (
            serde_json::json!({"query": ["\n\nUser:Which river is longest?\nAssistant: <think> x"]}).to_string(),
            "not in the question file",
        ),
        (serde_json::json!({"query": "text"}).to_string(), "must be a list"),
        (serde_json::json!({"queries": []}).to_string(), "\"query\" is required"),
        ("not json".to_owned(), "not valid JSON"),
        (serde_json::json!({"query": ["no prompt"]}).to_string(), "no question found"),
    ] {
        let r = c.post(format!("{url}/get_reward")).body(body.clone()).send().unwrap();
        assert_eq!(r.status().as_u16(), 422, "{body}");
        let v: serde_json::Value = r.json().unwrap();
        assert!(v["detail"].as_str().unwrap().contains(needle), "{body}: {v}");
    }
    let empty: serde_json::Value =
        c.post(format!("{url}/get_reward")).body("{\"query\": []}").send().unwrap().json().unwrap();
    assert_eq!(empty, serde_json::json!({"rewards": []}));
    let health: serde_json::Value = c.get(format!("{url}/health")).send().unwrap().json().unwrap();
    assert_eq!((health["questions"].as_u64(), health["reward"].as_str()), (Some(125), Some("stage2")));
    server.kill().unwrap();
    server.wait().unwrap();
}

/// R1-Searcher++'s group reward through `r1s reward` (the lines of one question are one group) and
/// `r1s serve-reward` (the texts of one question in a request); its settings are refused for a reward
/// that has no group.
#[test]
fn plus_rewards_score_a_questions_lines_together() {
    let dir = tempfile::tempdir().unwrap();
    let memo = " <internal> Paris is the capital of France. </internal> </think>\n\n<answer> Paris </answer>";
    let search = "<external> capital France</external>\n\n<document>\n(1)\"Paris\"\nParis is the capital.\n</document>\n\n</think>\n\n<answer> Paris </answer>";
    let wrong = " </think>\n\n<answer> Lyon </answer>";
    let lines = [
        ("What is the capital of France?", memo),
        ("Who wrote Hamlet?", wrong),
        ("What is the capital of France?", search),
    ];
    let input = dir.path().join("rollouts.jsonl");
    let body: String = lines
        .iter()
        .map(|(q, sol)| {
            let answer = if q.contains("France") { "Paris" } else { "Shakespeare" };
            format!("{}\n", serde_json::json!({"question": q, "answer": answer, "gen_text_store": sol}))
        })
        .collect();
    std::fs::write(&input, body).unwrap();
    let scored = ok(r1s().args(["-q", "reward", "--reward", "r1searcher-plus"]).arg(&input));
    let rewards: Vec<f64> = scored
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["reward"].as_f64().unwrap())
        .collect();
    // France: counts {0, 1}, σ² = 0.25 → 2σ² = 0.5 for the rollout that answered from memory
    assert_eq!(rewards, vec![1.5, 0.0, 1.0]);
    let eta = ok(r1s().args(["-q", "reward", "--reward", "r1searcher-plus", "--group-eta", "0.1"]).arg(&input));
    assert!(eta.lines().next().unwrap().contains("\"reward\":1.1"), "{eta}");
    let o = r1s().args(["reward", "--reward", "stage2", "--group-eta", "1"]).arg(&input).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("r1searcher-plus"), "{}", String::from_utf8_lossy(&o.stderr));

    let questions = dir.path().join("q.jsonl");
    std::fs::write(&questions, "{\"question\": \"What is the capital of France?\", \"answer\": \"Paris\"}\n").unwrap();
    let (mut server, url, _stderr) = spawn_listening(
        r1s().args(["serve-reward", "--port", "0", "--reward", "r1searcher-plus", "--data"]).arg(&questions),
    );
    let prompt = r1s_agent::plus::base_prompt("What is the capital of France?");
    let texts = [format!("{prompt}{memo}"), format!("{prompt}{search}")];
    let v: serde_json::Value = reqwest::blocking::Client::new()
        .post(format!("{url}/get_reward"))
        .json(&serde_json::json!({ "query": texts }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["rewards"], serde_json::json!([1.5, 1.0]));
    server.kill().unwrap();
    server.wait().unwrap();
}

/// `r1s ARGS` must fail with exit code `code` and a message holding `needle`.
fn refused_with<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(code: i32, args: &[S], needle: &str) {
    let out = r1s().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
}

/// #37: `index build --out` onto something that is not this index (the input itself, another corpus,
/// a directory of the user's files, an index of another kind or corpus, a file) is refused with what
/// it holds, and nothing there changes; `--replace` replaces another index only.
#[test]
fn index_build_out_refuses_what_it_would_destroy() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).display().to_string();
    let src = some_passages(dir.path(), 40);
    let (corpus, other) = (d("corpus"), d("other"));
    ok(r1s().args(["-q", "corpus", "ingest"]).arg(&src).args(["--out", &corpus]));
    let five = dir.path().join("five.jsonl");
    std::fs::write(&five, std::fs::read_to_string(&src).unwrap().lines().take(5).collect::<Vec<_>>().join("\n"))
        .unwrap();
    ok(r1s().args(["-q", "corpus", "ingest"]).arg(&five).args(["--out", &other]));
    let manifest = std::fs::read(dir.path().join("corpus/manifest.json")).unwrap();
    let b = |args: &[&str]| -> Vec<String> { ["index", "build"].iter().chain(args).map(|s| s.to_string()).collect() };
    refused_with(2, &b(&[&corpus, "--out", &corpus, "--kind", "bm25"]), "the input itself");
    refused_with(2, &b(&[&corpus, "--out", &format!("{corpus}/"), "--kind", "flat"]), "the input itself");
    refused_with(2, &b(&[&corpus, "--out", &other, "--kind", "flat"]), "holds a corpus");
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "mine").unwrap();
    refused_with(2, &b(&[&corpus, "--out", &d("mine"), "--kind", "bm25"]), "no index build wrote (notes.txt)");
    refused_with(2, &b(&[&corpus, "--out", &src.display().to_string(), "--kind", "bm25"]), "a file, not a directory");
    assert_eq!(std::fs::read(dir.path().join("corpus/manifest.json")).unwrap(), manifest);
    assert_eq!(std::fs::read_to_string(mine.join("notes.txt")).unwrap(), "mine");
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1);

    // another kind's index: refused, then replaced on request (its files go, not left beside)
    let idx = d("idx");
    ok(r1s().args(["-q", "index", "build", &corpus, "--out", &idx, "--kind", "bm25"]));
    refused_with(2, &b(&[&corpus, "--out", &idx, "--kind", "flat"]), "holds a bm25 index");
    assert!(dir.path().join("idx/tantivy").is_dir());
    ok(r1s().args(["-q", "index", "build", &corpus, "--out", &idx, "--kind", "flat", "--replace", "-j", "2"]));
    assert!(!dir.path().join("idx/tantivy").exists());
    let info: serde_json::Value = serde_json::from_str(&ok(r1s().args(["index", "info", &idx]))).unwrap();
    assert_eq!(info["kind"], "flat");
    // the same family (another dense kind over the same embeddings) goes on in place
    ok(r1s().args(["-q", "index", "build", &corpus, "--out", &idx, "--kind", "hnsw", "-j", "2"]));
    // `corpus ingest --force` replaces a corpus, not an index
    refused_with(2, &["corpus", "ingest", src.to_str().unwrap(), "--out", &idx, "--force"], "is not a corpus");
    // a hybrid's part as its --out: refused, the part untouched
    let kept = std::fs::read(dir.path().join("idx/manifest.json")).unwrap();
    let bm = d("bm");
    ok(r1s().args(["-q", "index", "build", &corpus, "--out", &bm, "--kind", "bm25"]));
    refused_with(
        2,
        &b(&["--kind", "hybrid", "--dense", &idx, "--bm25", &bm, "--out", &idx, "--replace"]),
        "is the --dense index itself",
    );
    assert_eq!(std::fs::read(dir.path().join("idx/manifest.json")).unwrap(), kept);
    // an INPUT file whose default corpus directory would be --out itself
    let target = dir.path().join("corpora");
    std::fs::create_dir(&target).unwrap();
    let o = r1s()
        .current_dir(dir.path())
        .args(["index", "build"])
        .arg(&src)
        .args(["--out", "corpora/y", "--kind", "bm25"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!dir.path().join("corpora/y").exists(), "a refused build left its --out");
    assert!(dir.path().join("idx/embeddings.npy").is_file());
    // an index of another corpus: refused
    refused_with(2, &b(&[&other, "--out", &idx, "--kind", "hnsw"]), "holds an index of another corpus");
    // an index as INPUT, a corpus as `index info`
    refused_with(1, &b(&[&idx, "--out", &d("x"), "--kind", "bm25"]), "is an index, not a corpus");
    refused_with(1, &["index", "info", &corpus], "is a corpus directory, not an index");

    // a build holds its directory: a second one into it is refused while the first runs
    std::fs::create_dir(dir.path().join("big")).unwrap();
    let big = some_passages(&dir.path().join("big"), 2000);
    let busy = d("busy");
    let mut first = r1s()
        .args(["-q", "index", "build"])
        .arg(&big)
        .args(["--out", &busy, "--kind", "flat", "-j", "1", "--corpus-out", &d("bigcorpus")])
        .spawn()
        .unwrap();
    let lock = dir.path().join("busy/.r1s-build.lock");
    let t = std::time::Instant::now();
    while !lock.exists() && t.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    if first.try_wait().unwrap().is_none() {
        // with --replace too: nothing of the running build is removed
        let second = [
            &big.display().to_string(),
            "--out",
            &busy,
            "--kind",
            "bm25",
            "--replace",
            "--corpus-out",
            &d("bigcorpus"),
        ];
        refused_with(2, &b(&second), "another `r1s index build` is writing");
    }
    assert!(first.wait().unwrap().success());
}

/// Embeddings written by another tool need not name their corpus (no "corpus_id" in
/// embeddings.json): such an index is rebuilt, retuned and found up to date like any other.
#[test]
fn embeddings_without_a_corpus_id_can_be_built_again() {
    let dir = tempfile::tempdir().unwrap();
    let src = some_passages(dir.path(), 60);
    let corpus = dir.path().join("corpus");
    ok(r1s().args(["-q", "corpus", "ingest"]).arg(&src).arg("--out").arg(&corpus));
    let idx = dir.path().join("idx");
    ok(r1s().args(["-q", "embed", "-j", "2", "--corpus"]).arg(&corpus).arg("--out").arg(&idx));
    let meta = idx.join("embeddings.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    m.as_object_mut().unwrap().remove("corpus_id");
    std::fs::write(&meta, serde_json::to_vec(&m).unwrap()).unwrap();
    let build = |args: &[&str]| ok(r1s().args(["index", "build", "--kind", "hnsw", "--out"]).arg(&idx).args(args));
    assert!(build(&[]).contains("built in"));
    assert!(build(&[]).contains("nothing to do"));
    assert!(build(&["--ef-search", "96"]).contains("only in search-time settings"));
    assert!(build(&["--m", "16"]).contains("built in"));
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

/// #36: a finished index in --out is rebuilt beside it and swapped in whole: the same build again
/// is a no-op that says so; another parameter builds a new graph over the same vectors (not
/// embedded again); a rebuild killed mid-way leaves the previous index answering as before, and
/// the same command then finishes it; a hybrid whose bm25 settings change rebuilds that part only.
#[test]
fn a_rebuild_is_swapped_in_whole_and_a_rerun_is_a_no_op() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let src = some_passages(dir.path(), 120);
    let corpus = dir.path().join("corpus");
    ok(r1s().args(["-q", "corpus", "ingest"]).arg(&src).arg("--out").arg(&corpus));
    let idx = dir.path().join("idx");
    let build = |input: &Path, args: &[&str]| {
        ok(r1s().args(["index", "build"]).arg(input).arg("--out").arg(&idx).args(["-j", "2"]).args(args))
    };
    build(&corpus, &["--kind", "hnsw"]);
    let ino = |f: &str| std::fs::metadata(idx.join(f)).unwrap().ino();
    let (npy, graph) = (ino("embeddings.npy"), ino("hnsw.r1s"));
    let q = "Who was the first president of the Cleveland Indians?";
    let hits = || ok(r1s().args(["retrieve", "--json", "-k", "3", "-j", "2", "--index"]).arg(&idx).arg(q));
    let before = hits();

    let again = build(&corpus, &["--kind", "hnsw"]);
    assert!(again.contains("already built") && again.contains("nothing to do"), "{again}");
    assert_eq!((ino("embeddings.npy"), ino("hnsw.r1s")), (npy, graph), "a no-op rewrote files");
    // a search-time setting alone: the manifest takes it, the graph stays (same inode)
    let ef = build(&corpus, &["--kind", "hnsw", "--ef-search", "96"]);
    assert!(ef.contains("only in search-time settings") && ef.contains("ef_search 64 -> 96"), "{ef}");
    assert_eq!((ino("embeddings.npy"), ino("hnsw.r1s")), (npy, graph), "a new ef_search rebuilt the graph");
    let info: serde_json::Value = serde_json::from_str(&ok(r1s().args(["index", "info"]).arg(&idx))).unwrap();
    assert_eq!(info["params"]["ef_search"], 96);
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    // --rerank-top belongs to hnsw sq8: refused elsewhere, when building and when measuring
    let (c, i) = (corpus.to_str().unwrap(), idx.to_str().unwrap());
    refused_with(
        2,
        &["index", "build", c, "--out", i, "--kind", "hnsw", "--rerank-top", "20"],
        "is a setting of --quantize sq8",
    );
    refused_with(
        2,
        &["index", "build", c, "--out", i, "--kind", "flat", "--quantize", "sq8", "--rerank-top", "20"],
        "does not apply to --kind flat",
    );
    refused_with(
        2,
        &["index", "eval", "--index", i, "--queries", src.to_str().unwrap(), "--rerank-top", "20"],
        "--rerank-top is a setting of hnsw",
    );
    let sq8 = ["index", "build", c, "--out", i, "--kind", "hnsw", "--quantize", "sq8"];
    refused_with(2, &[&sq8[..], &["--no-rerank", "--rerank-top", "20"]].concat(), "not with --no-rerank");
    refused_with(2, &["index", "build", c, "--out", i, "--kind", "hnsw", "--ef-search", "0"], "must be at least 1");
    refused_with(
        2,
        &["index", "eval", "--index", i, "--queries", src.to_str().unwrap(), "-k", "0"],
        "-k must be at least 1",
    );
    // --truth: a malformed line is named (exit 65) before any search runs
    let qs = dir.path().join("qs.txt");
    std::fs::write(&qs, "first question\nsecond question\n").unwrap();
    let truth = dir.path().join("truth.jsonl");
    let eval_truth = |body: &str, needle: &str| {
        std::fs::write(&truth, body).unwrap();
        let args = ["index", "eval", "--index", i, "--queries", qs.to_str().unwrap(), "-k", "2", "--truth"];
        refused_with(65, &[&args[..], &[truth.to_str().unwrap()]].concat(), needle);
    };
    eval_truth("[0, 1]\n", "--truth line 2: the file ends after 1 lines");
    eval_truth("[0, 1]\n[3]\n", "--truth line 2: 1 ids, k is 2");
    eval_truth("[0, 1]\n[3, 3]\n", "--truth line 2: a row id repeats");
    eval_truth("[0, 100000]\n[1, 2]\n", "--truth line 1: row 100000 is past the index's");
    eval_truth("{\"a\": 1}\n[1, 2]\n", "--truth line 1: not a JSON array of row ids");
    std::fs::write(&truth, "[0, 1]\n[2, 3]\n[garbage past the queries\n").unwrap();
    let out =
        ok(r1s().args(["index", "eval", "--index", i, "--queries"]).arg(&qs).args(["-k", "2", "--truth"]).arg(&truth));
    assert!(out.contains("--truth"), "{out}");
    let m16 = build(&corpus, &["--kind", "hnsw", "--m", "16"]);
    assert!(m16.contains("built in"), "{m16}");
    assert_eq!(ino("embeddings.npy"), npy, "the same vectors were embedded again");
    assert_ne!(ino("hnsw.r1s"), graph);
    let info: serde_json::Value = serde_json::from_str(&ok(r1s().args(["index", "info"]).arg(&idx))).unwrap();
    assert_eq!(info["params"]["m"], 16);
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    let before = {
        let now = hits();
        assert_eq!(now.lines().count(), before.lines().count());
        now
    };

    // `--out .` from inside the index, and a symlink as --out: the real directory is swapped (the
    // link keeps naming it), and a build inside an index is refused
    ok(r1s()
        .current_dir(&idx)
        .args(["-q", "index", "build"])
        .arg(&corpus)
        .args(["--out", ".", "--kind", "hnsw", "--m", "8"]));
    let info: serde_json::Value = serde_json::from_str(&ok(r1s().args(["index", "info"]).arg(&idx))).unwrap();
    assert_eq!(info["params"]["m"], 8);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&idx, &link).unwrap();
    ok(r1s().args(["-q", "index", "build"]).arg(&corpus).arg("--out").arg(&link).args(["--kind", "hnsw", "--m", "16"]));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link became a directory");
    let info: serde_json::Value = serde_json::from_str(&ok(r1s().args(["index", "info"]).arg(&idx))).unwrap();
    assert_eq!(info["params"]["m"], 16);
    std::fs::remove_file(&link).unwrap();
    refused_with(
        2,
        &["index", "build", corpus.to_str().unwrap(), "--out", idx.join("sub").to_str().unwrap()],
        "is inside the index",
    );
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());

    // a rebuild over another corpus, killed while it embeds: the previous index answers as before
    std::fs::create_dir(dir.path().join("big")).unwrap();
    let big = some_passages(&dir.path().join("big"), 1500);
    let big_corpus = dir.path().join("bigcorpus");
    ok(r1s().args(["-q", "corpus", "ingest"]).arg(&big).arg("--out").arg(&big_corpus));
    let side = dir.path().join(".idx.r1s-rebuild");
    let mut child = r1s()
        .args(["-q", "index", "build"])
        .arg(&big_corpus)
        .arg("--out")
        .arg(&idx)
        .args(["--kind", "hnsw", "--replace", "-j", "1"])
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !side.join("embeddings.npy.partial").exists() && t.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "the rebuild ended before it could be killed");
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(hits(), before, "the previous index changed under a killed rebuild");
    let info: serde_json::Value = serde_json::from_str(&ok(r1s().args(["index", "info"]).arg(&idx))).unwrap();
    assert_eq!(info["params"]["m"], 16);
    assert!(side.is_dir(), "the rebuild's progress is kept beside");
    let done = build(&big_corpus, &["--kind", "hnsw", "--replace"]);
    assert!(done.contains("1500 x 384"), "{done}");
    assert!(!side.exists());
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    let info: serde_json::Value = serde_json::from_str(&ok(r1s().args(["index", "info"]).arg(&idx))).unwrap();
    assert_eq!(info["rows"], 1500);

    // a hybrid: the same build is a no-op; new bm25 settings rebuild that part, the dense part is kept
    let hyb = dir.path().join("hyb");
    let hybrid = |args: &[&str]| {
        ok(r1s()
            .args(["index", "build"])
            .arg(&corpus)
            .arg("--out")
            .arg(&hyb)
            .args(["--kind", "hybrid", "--dense-kind", "flat", "-j", "2"])
            .args(args))
    };
    hybrid(&[]);
    let hino = |f: &str| std::fs::metadata(hyb.join(f)).unwrap().ino();
    let (dense_npy, dense_manifest, bm25_manifest) =
        (hino("dense/embeddings.npy"), hino("dense/manifest.json"), hino("bm25/manifest.json"));
    let again = hybrid(&[]);
    assert!(again.contains("hybrid index is already built"), "{again}");
    assert_eq!(hino("bm25/manifest.json"), bm25_manifest);
    let k1 = hybrid(&["--k1", "1.2"]);
    assert!(k1.contains("bm25 index of 120 passages") && k1.contains("k1 1.2"), "{k1}");
    assert_eq!((hino("dense/embeddings.npy"), hino("dense/manifest.json")), (dense_npy, dense_manifest));
    assert_ne!(hino("bm25/manifest.json"), bm25_manifest);
    let info: serde_json::Value = serde_json::from_str(&ok(r1s().args(["index", "info"]).arg(&hyb))).unwrap();
    assert_eq!(info["parts"]["bm25"]["params"]["k1"].as_f64().unwrap() as f32, 1.2);
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

/// Runs `args` twice at once and returns both outputs.
fn twice_at_once(args: &[String]) -> [std::process::Output; 2] {
    let spawn =
        || r1s().args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let (a, b) = (spawn(), spawn());
    [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()]
}

/// Entries of `dir` that a writer left behind (hidden temporary files, `.part` files).
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') || n.ends_with(".part"))
        .collect()
}

/// #37: every command that writes an output file or directory, run twice at once on one output,
/// leaves one complete run's output (the last to finish wins whole), nothing mixed and nothing
/// behind; `x.jsonl` and `x.txt` do not share a temporary file.
#[test]
fn writers_of_one_output_at_once_leave_one_whole_output() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let src = some_passages(dir.path(), 300);
    let corpus = p("corpus");
    ok(r1s().args(["-q", "corpus", "ingest"]).arg(&src).args(["--out", &corpus]));

    // corpus ingest: both finish, the corpus is whole
    let runs = twice_at_once(
        &["-q", "corpus", "ingest", src.to_str().unwrap(), "--out", &p("twice"), "--force"].map(String::from),
    );
    assert!(runs.iter().all(|o| o.status.success()), "{runs:?}");
    let stats = ok(r1s().args(["corpus", "stats", &p("twice")]));
    assert!(stats.contains("300"), "{stats}");
    // the last passage reads back through the docstore, whole
    assert!(ok(r1s().args(["corpus", "show", &p("twice"), "299"])).contains("[299]"));

    // corpus export, reward: the file equals one run alone
    let alone = p("alone.jsonl");
    ok(r1s().args(["-q", "corpus", "export", &corpus, "--out", &alone]));
    let runs = twice_at_once(&["-q", "corpus", "export", &corpus, "--out", &p("export.jsonl")].map(String::from));
    assert!(runs.iter().all(|o| o.status.success()), "{runs:?}");
    assert_eq!(std::fs::read(p("export.jsonl")).unwrap(), std::fs::read(&alone).unwrap());
    let cases = shared("searchr1/reward_cases.jsonl").display().to_string();
    ok(r1s().args(["-q", "reward", "--reward", "searchr1-em", &cases, "--out", &alone]));
    let runs =
        twice_at_once(&["-q", "reward", "--reward", "searchr1-em", &cases, "--out", &p("x.jsonl")].map(String::from));
    assert!(runs.iter().all(|o| o.status.success()), "{runs:?}");
    assert_eq!(std::fs::read(p("x.jsonl")).unwrap(), std::fs::read(&alone).unwrap());
    // x.jsonl and x.txt at once: each whole
    let (a, b) = (
        r1s().args(["-q", "reward", "--reward", "searchr1-em", &cases, "--out", &p("y.jsonl")]).spawn().unwrap(),
        r1s().args(["-q", "reward", "--reward", "searchr1-em", &cases, "--out", &p("y.txt")]).spawn().unwrap(),
    );
    for mut c in [a, b] {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(std::fs::read(p("y.jsonl")).unwrap(), std::fs::read(&alone).unwrap());
    assert_eq!(std::fs::read(p("y.txt")).unwrap(), std::fs::read(&alone).unwrap());
    // an output that is the input: refused, the input intact
    refused_with(
        2,
        &["-q", "reward", "--reward", "searchr1-em", &p("x.jsonl"), "--out", &p("x.jsonl")],
        "is the input",
    );
    assert_eq!(std::fs::read(p("x.jsonl")).unwrap(), std::fs::read(&alone).unwrap());
    refused_with(2, &["corpus", "export", &corpus, "--out", &format!("{corpus}/manifest.json")], "inside the corpus");
    // the same inputs ingested with --force and another -j: the same corpus (content id)
    ok(r1s().args(["-q", "corpus", "ingest", src.to_str().unwrap(), "--out", &p("again"), "-j", "1"]));
    let strip = |d: &str| {
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{d}/manifest.json")).unwrap()).unwrap();
        m["created_unix"] = 0.into();
        m
    };
    assert_eq!(strip(&p("again")), strip(&p("twice")));
    // a failed write (no such directory) leaves nothing
    refused_with(66, &["-q", "reward", "--reward", "searchr1-em", &cases, "--out", &p("none/z.jsonl")], "z.jsonl");
    refused_with(1, &["corpus", "export", &corpus, "--out", &p("twice")], "is a directory");

    // eval: two at once on one --out give one run's rows (greedy: the same rows as alone)
    let bm25 = p("bm25");
    ok(r1s().args(["-q", "index", "build", &corpus, "--out", &bm25, "--kind", "bm25"]));
    let questions = shared("r1searcher/eval_set/bamboogle.jsonl").display().to_string();
    let eval = |out: &str| -> Vec<String> {
        ["-q", "eval", "--data", &questions, "--limit", "2", "--index", &bm25, "--max-new-tokens", "12", "-j", "1"]
            .iter()
            .map(|s| s.to_string())
            .chain(["--out".to_string(), out.to_string()])
            .collect()
    };
    ok(r1s().args(eval(&alone)));
    let runs = twice_at_once(&eval(&p("e.jsonl")));
    assert!(runs.iter().all(|o| o.status.success()), "{runs:?}");
    let rows = |f: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(f).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let (got, want) = (rows(&p("e.jsonl")), rows(&alone));
    let mut into_data = eval(&questions);
    into_data.retain(|x| x != "-q");
    refused_with(2, &into_data, "is the input");
    assert_eq!(got.len(), 2);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g["gen_text_store"], w["gen_text_store"]);
    }
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

/// #37: after `index build corpora/x --out indexes/x`, every other spelling of the same corpus
/// (trailing slash, `./`, absolute, from another working directory) finds the embeddings done, and
/// `retrieve --index ../indexes/x` from a directory with its own, different `corpora/x` uses the
/// corpus next to the index.
#[test]
fn the_same_corpus_spelled_another_way_is_not_embedded_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let src = some_passages(root, 60);
    ok(r1s().current_dir(root).args(["-q", "corpus", "ingest"]).arg(&src).args(["--out", "corpora/x"]));
    let build = |cwd: &Path, corpus: &str, out: &str| {
        let o = r1s()
            .current_dir(cwd)
            .args(["-v", "index", "build", corpus, "--out", out, "--kind", "flat", "-j", "2"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{corpus} from {}: {err}", cwd.display());
        err
    };
    build(root, "corpora/x", "indexes/x");
    let npy = root.join("indexes/x/embeddings.npy");
    let built = std::fs::metadata(&npy).unwrap().modified().unwrap();
    let abs = root.join("corpora/x").display().to_string();
    std::fs::create_dir(root.join("elsewhere")).unwrap();
    for (cwd, corpus, out) in [
        (root.to_path_buf(), "corpora/x/", "indexes/x"),
        (root.to_path_buf(), "./corpora/x", "./indexes/x/"),
        (root.to_path_buf(), abs.as_str(), "indexes/x"),
        (root.join("elsewhere"), "../corpora/x", "../indexes/x"),
    ] {
        let err = build(&cwd, corpus, out);
        assert!(err.contains("complete for these settings"), "{corpus}: {err}");
    }
    assert_eq!(std::fs::metadata(&npy).unwrap().modified().unwrap(), built, "re-embedded");
    // a different corpora/x in the working directory does not shadow the one beside the index
    let five = root.join("five.jsonl");
    std::fs::write(&five, std::fs::read_to_string(&src).unwrap().lines().take(5).collect::<Vec<_>>().join("\n"))
        .unwrap();
    ok(r1s()
        .current_dir(root.join("elsewhere"))
        .args(["-q", "corpus", "ingest"])
        .arg(&five)
        .args(["--out", "corpora/x"]));
    let hits = ok(r1s().current_dir(root.join("elsewhere")).args([
        "retrieve",
        "--json",
        "-k",
        "3",
        "-j",
        "2",
        "--index",
        "../indexes/x",
        "Cleveland Indians",
    ]));
    let v: serde_json::Value = serde_json::from_str(hits.lines().next().unwrap()).unwrap();
    assert_eq!(v["hits"].as_array().unwrap().len(), 3, "{hits}");
    // another setting is named, not just "other settings"
    let o = r1s()
        .current_dir(root)
        .args(["index", "build", "corpora/x", "--out", "indexes/x", "--kind", "flat", "--dtype", "f16"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("dtype (F32 vs F16)"), "{err}");
}

/// #37: settings that do not apply to what was asked are refused (exit 2) rather than ignored, for
/// every kind of `index build`; so are a server default above its own limit, `-k 0`, chunking flags
/// on passage files, and an empty question file; `index plan` prints one unit convention.
#[test]
fn settings_that_do_not_apply_are_refused_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let src = some_passages(dir.path(), 20);
    let s = src.display().to_string();
    let out = dir.path().join("o").display().to_string();
    // (kind, flags it does not read)
    let table: [(&str, &[&[&str]]); 6] = [
        (
            "bm25",
            &[
                &["--quantize", "sq8"],
                &["--m", "8"],
                &["--factory", "Flat"],
                &["--ef-search", "9"],
                &["--nlist", "4"],
                &["--model", "minilm"],
                &["--dtype", "f16"],
                &["--collection", "c"],
                &["--dense-kind", "flat"],
            ],
        ),
        (
            "flat",
            &[
                &["--m", "8"],
                &["--ef-construction", "9"],
                &["--factory", "Flat"],
                &["--checkpoint-every", "5"],
                &["--no-resume"],
                &["--nprobe", "4"],
                &["--milvus-index", "FLAT"],
                &["--k1", "1"],
            ],
        ),
        (
            "hnsw",
            &[&["--factory", "Flat"], &["--rerank-factor", "2"], &["--nlist", "4"], &["--milvus-timeout-ms", "9"]],
        ),
        ("hnsw-rs", &[&["--quantize", "sq8"], &["--checkpoint-every", "5"], &["--factory", "Flat"]]),
        ("faiss", &[&["--m", "8"], &["--quantize", "sq8"], &["--ef-construction", "9"], &["--collection", "c"]]),
        ("hybrid", &[&["--factory", "Flat"], &["--nlist", "4"]]),
    ];
    for (kind, flags) in table {
        for flag in flags {
            let args: Vec<&str> =
                ["index", "build", &s, "--out", &out, "--kind", kind].into_iter().chain(flag.iter().copied()).collect();
            let o = r1s().args(&args).output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains(flag[0]), "{args:?}: {err}");
        }
    }
    assert!(!dir.path().join("o").exists(), "a refused build wrote");
    refused_with(
        2,
        &["index", "build", &s, "--out", &out, "--kind", "flat", "--no-rerank"],
        "is a setting of --quantize sq8",
    );
    refused_with(2, &["index", "build", &s, "--out", &out, "--kind", "bm25", "--dtype", "f16"], "nothing is embedded");
    refused_with(2, &["corpus", "ingest", &s, "--out", &out, "--words", "20"], "passages already");
    refused_with(2, &["corpus", "ingest", &s, "--out", &out, "--chunking", "dpr"], "passages already");
    refused_with(2, &["serve", "--index", &out, "--topk", "5000"], "--max-topk");
    refused_with(2, &["retrieve", "--index", &out, "-k", "0", "x"], "-k");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let e = empty.display().to_string();
    refused_with(65, &["serve-reward", "--data", &e, "--port", "0"], "no questions");
    refused_with(65, &["eval", "--data", &e, "--index", &out], "no questions");
    refused_with(1, &["corpus", "ingest", "/dev/stdin", "--out", &out], "not a regular file");

    // eval: flags for another case than the one asked
    let released = shared("r1searcher/eval_results/bamboogle_qwen.jsonl").display().to_string();
    refused_with(2, &["eval", "--score", &released, "--max-new-tokens", "9"], "--score only scores");
    refused_with(2, &["eval", "--data", &e, "--index", &out, "--policy-model", "m"], "completions server");
    for flag in [["--device", "cpu"], ["--weights", "bf16"]] {
        let mut args = vec!["eval", "--data", &e, "--index", &out, "--policy", "http://127.0.0.1:9"];
        args.extend(flag);
        refused_with(2, &args, "local policy");
    }
    refused_with(
        2,
        &["eval", "--data", &e, "--index", &out, "--prompt", "base", "--chat-template", "chatml"],
        "--prompt chat",
    );
    // one exit code for one mistake, whichever command meets it
    let questions = shared("r1searcher/eval_set/bamboogle.jsonl").display().to_string();
    refused_with(66, &["eval", "--data", &questions, "--index", "/nonexistent/idx"], "/nonexistent/idx");
    refused_with(66, &["corpus", "stats", "/nonexistent/c"], "/nonexistent/c");
    refused_with(2, &["eval", "--data", dir.path().to_str().unwrap(), "--index", &out], "");
    refused_with(65, &["eval", "--score", &e], "no result rows");
    refused_with(65, &["reward", "--reward", "searchr1-em", &e], "no lines to score");
    // policy task: its --out holds its three files only; shares and counts in range
    let c = dir.path().join("c").display().to_string();
    ok(r1s().args(["-q", "corpus", "ingest", &s, "--out", &c]));
    let task = |extra: &[&str]| -> Vec<String> {
        ["policy", "task", "--corpus", &c, "--index", &out, "--out", &c, "--train", "1", "--test", "1", "--sft", "1"]
            .iter()
            .chain(extra)
            .map(|x| x.to_string())
            .collect()
    };
    refused_with(66, &task(&[]), "index directory");
    refused_with(2, &task(&["--search-share", "2"]), "--search-share");
    refused_with(2, &task(&["--topk", "0"]), "--topk");
    let ib = dir.path().join("ib").display().to_string();
    ok(r1s().args(["-q", "index", "build", &c, "--out", &ib, "--kind", "bm25"]));
    let mut into_corpus = task(&[]);
    into_corpus[5] = ib.clone();
    refused_with(2, &into_corpus, "holds other files");
    assert!(!Path::new(&c).join("train.jsonl").exists());
    // index plan: binary units throughout, as --ram reads them; small sizes below a GiB
    let plan = ok(r1s().args(["index", "plan", "--rows", "14000", "--dim", "384", "--kind", "hnsw"]));
    assert!(plan.contains("MiB") && !plan.contains(" GB"), "{plan}");
}

/// A BM25 index of 60 R1-Searcher passages in `dir/bm25` (its corpus in `dir/c`).
fn small_bm25(dir: &Path) {
    let src = some_passages(dir, 60);
    let index = dir.join("bm25");
    ok(r1s()
        .args(["-q", "index", "build"])
        .arg(&src)
        .arg("--out")
        .arg(&index)
        .args(["--kind", "bm25", "--corpus-out"])
        .arg(dir.join("c")));
}

/// #37: Ctrl-C during `r1s eval` says it is stopping, stops within seconds, exits 130 and keeps the
/// rows finished so far in `NAME.incomplete.jsonl` (never under the output's own name).
#[test]
fn eval_stopped_by_ctrl_c_keeps_finished_rows_apart() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    small_bm25(dir.path());
    let out = p("results.jsonl");
    let mut child = r1s()
        .args(["eval", "--data"])
        .arg(shared("r1searcher/eval_set/bamboogle.jsonl"))
        .args(["--index", &p("bm25"), "--limit", "40", "--batch", "2", "--max-new-tokens", "200", "-j", "1"])
        .args(["--out", &out, "--progress-every", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // wait for the first finished question
    use std::io::BufRead;
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("eval") && !line.contains(" 0 of") {
            break;
        }
        line.clear();
    }
    assert!(seen.contains("eval"), "{seen}");
    let t = std::time::Instant::now();
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    let stopped_in = t.elapsed();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert!(stopped_in.as_secs() < 5, "stopped in {stopped_in:?}");
    assert!(rest.contains("stopping") && rest.contains("incomplete"), "{rest}");
    assert!(!Path::new(&out).exists(), "a stopped run wrote the output's own name");
    let kept = std::fs::read_to_string(p("results.incomplete.jsonl")).unwrap();
    let n = kept.lines().count();
    assert!((1..40).contains(&n), "{n} rows kept");
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

/// #35: `eval --score` of a file `eval --out` wrote prints the same table as that eval, under every
/// protocol (the searches per row are the ones the loop recorded, not recounted from the text).
#[test]
fn eval_score_agrees_with_eval_under_every_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    small_bm25(dir.path());
    let questions = shared("r1searcher/eval_set/bamboogle.jsonl").display().to_string();
    for protocol in ["r1-searcher", "search-r1", "r1searcher-plus"] {
        let out = p(&format!("{protocol}.jsonl"));
        let run = ok(r1s()
            .args(["--progress-every", "0", "eval", "--data", &questions, "--limit", "3", "--index", &p("bm25")])
            .args(["--protocol", protocol, "--max-new-tokens", "48", "-j", "2", "--out", &out]));
        let scored = ok(r1s().args(["eval", "--score", &out]));
        // the eval's table, without its timing line; the scored file's, without its file name
        let table = |s: &str| {
            s.lines()
                .filter(|l| l.trim_start().starts_with(|c: char| c == 'n' || c.is_ascii_digit()) && !l.contains(" in "))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(table(&run), table(&scored), "{protocol}:\n{run}\n{scored}");
        assert_eq!(table(&run).len(), 2, "{run}");
    }
}

#[path = "../../r1s-agent/tests/judge_replay.rs"]
mod judge_replay;

/// `r1s eval --judge-only` judges R1-Searcher's released results through a replay of its judge (which
/// answers only the requests R1-Searcher sent): the judge column is the released accuracy, the judged
/// rows carry each verdict, a rerun is answered from the cache, `--score` reads the verdicts back, the
/// API key is sent but never printed, and the judge's flags are refused without --judge.
#[test]
fn eval_judge_only_reproduces_r1_searchers_judge() {
    let fx: serde_json::Value =
        serde_json::from_str(include_str!("../../r1s-agent/tests/fixtures/judge_replay.json")).unwrap();
    let server = judge_replay::ReplayJudge::start(judge_replay::verdicts(&fx, "bamboogle_llama.jsonl"), 0);
    let released = shared("r1searcher/eval_results/bamboogle_llama.jsonl");
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("judged.jsonl"), dir.path().join("cache"));
    let judge = |extra: &[&str]| {
        let o = r1s()
            .args(["eval", "--judge-only"])
            .arg(&released)
            .args(["--judge", &server.url, "--judge-cache"])
            .arg(&cache)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .env("OPENAI_API_KEY", "sk-r1s-test-secret")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{text}");
        assert!(!text.contains("sk-r1s-test-secret"), "the key was printed: {text}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let table = judge(&[]);
    let last = |t: &str| t.lines().nth(2).unwrap().split_whitespace().last().unwrap().to_owned();
    assert_eq!(last(&table), "54.4", "{table}");
    assert_eq!(server.requests(), 125);
    let rows: Vec<serde_json::Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 125);
    for r in &rows {
        assert_eq!(r["judge"], serde_json::json!(r["gpt4o_output"] == "True"), "{r}");
        assert_eq!(
            (r["judge_reply"].clone(), r["judge_model"].as_str()),
            (r["gpt4o_output"].clone(), Some("gpt-4o-mini"))
        );
    }
    // judged again in place, from the cache: no request
    let again = r1s()
        .args(["-q", "eval", "--judge-only"])
        .arg(&out)
        .args(["--judge", &server.url, "--judge-cache"])
        .arg(&cache)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}");
    assert_eq!(server.requests(), 125, "the cache answered the rerun");
    let scored = ok(r1s().args(["eval", "--score"]).arg(&out));
    assert_eq!(last(&scored), "54.4", "{scored}");
    let e = released.to_string_lossy().into_owned();
    refused_with(2, &["eval", "--score", &e, "--judge-model", "m"], "--judge");
    refused_with(2, &["eval", "--score", &e, "--judge", &server.url], "--judge-only");
    refused_with(2, &["eval", "--judge-only", &e], "--judge");
    refused_with(2, &["eval", "--judge-only", &e, "--judge", "notaurl"], "not an http");
    refused_with(2, &["eval", "--judge-only", &e, &e, "--judge", &server.url, "--out", "x.jsonl"], "one file");
}

/// `r1s eval --samples k`: k sampled runs of every question (seed, seed + 1, …), each row marked with
/// its sample; the table is Avg@k — the figures of all rows, so `--score` of the written file agrees —
/// and a pass@k line follows, at least as high; the same seed writes the same rows; greedy samples are
/// refused.
#[test]
fn eval_samples_report_avg_and_pass_at_k() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    small_bm25(dir.path());
    let questions = shared("r1searcher/eval_set/bamboogle.jsonl").display().to_string();
    let run = |out: &str| {
        ok(r1s()
            .args(["--progress-every", "0", "eval", "--data", &questions, "--limit", "2", "--index", &p("bm25")])
            .args(["--samples", "3", "--temperature", "1.0", "--seed", "7", "--max-new-tokens", "24", "-j", "2"])
            .args(["--out", out]))
    };
    let printed = run(&p("a.jsonl"));
    let rows: Vec<serde_json::Value> =
        std::fs::read_to_string(p("a.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let marks: Vec<(u64, String)> =
        rows.iter().map(|r| (r["sample"].as_u64().unwrap(), r["question"].as_str().unwrap().to_owned())).collect();
    assert_eq!(marks.len(), 6, "{printed}");
    assert_eq!(marks.iter().map(|m| m.0).collect::<Vec<_>>(), [0, 0, 1, 1, 2, 2]);
    assert!(
        rows.iter().map(|r| r["gen_text_store"].as_str().unwrap()).collect::<std::collections::HashSet<_>>().len() > 2,
        "the samples differ"
    );
    let avg: Vec<&str> = printed.lines().find(|l| l.ends_with("avg@3")).unwrap().split_whitespace().collect();
    let header: Vec<&str> =
        printed.lines().nth(1).map_or(vec![], |_| printed.lines().next().unwrap().split_whitespace().collect());
    assert_eq!(header[..2], ["n", "EM"], "{printed}");
    let pass: Vec<f64> = printed
        .lines()
        .find(|l| l.trim_start().starts_with("pass@3"))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    for (i, pass) in pass.iter().enumerate() {
        let a: f64 = avg[1 + i].parse().unwrap();
        assert!(*pass >= a, "pass@3 below avg@3 in column {i}: {printed}");
    }
    // Avg@k is the summary of all rows: --score of the file agrees
    let scored = ok(r1s().args(["eval", "--score", &p("a.jsonl")]));
    let scored_row: Vec<&str> = scored.lines().nth(2).unwrap().split_whitespace().collect();
    assert_eq!(scored_row[..6], avg[..6], "{printed}\n{scored}");
    run(&p("b.jsonl"));
    assert_eq!(std::fs::read(p("a.jsonl")).unwrap(), std::fs::read(p("b.jsonl")).unwrap(), "one seed, one output");
    refused_with(2, &["eval", "--data", &questions, "--index", &p("bm25"), "--samples", "2"], "--temperature");
    refused_with(2, &["eval", "--data", &questions, "--index", &p("bm25"), "--seed", "3"], "--temperature");
}

/// `r1s policy serve` (SmolLM2): a greedy completion and a chat reply are `r1s policy generate`'s
/// (plain and `--chat`) byte for byte; requests sent at once get what each gets alone; stop strings
/// cut and are named in `stop_reason`; a seeded request samples the same twice; `n`, usage and
/// logprobs; bad requests get 400 naming the field; a request past the queue 503 with Retry-After;
/// the official `openai` Python client round-trips; `r1s eval` runs against it as its policy and as
/// its judge.
#[test]
fn policy_serve_answers_as_policy_generate_and_the_openai_client() {
    use serde_json::json;
    let (mut server, url, _stderr) = spawn_listening(r1s().args([
        "policy",
        "serve",
        "--port",
        "0",
        "-j",
        "2",
        "--max-queue",
        "8",
        "--max-tokens",
        "24",
    ]));
    let c = reqwest::blocking::Client::new();
    let post = |path: &str, body: &serde_json::Value| -> (u16, serde_json::Value, Option<String>) {
        let r = c.post(format!("{url}{path}")).json(body).send().unwrap();
        let status = r.status().as_u16();
        let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        (status, r.json().unwrap(), retry)
    };
    let text = |v: &serde_json::Value, i: usize| v["choices"][i]["text"].as_str().unwrap().to_owned();

    // greedy: policy generate's text
    let prompt = "The capital of France is";
    let generated = ok(r1s().args(["-q", "policy", "generate", prompt, "--max-new-tokens", "12", "-j", "2"]));
    let (s, v, _) = post("/v1/completions", &json!({"prompt": prompt, "max_tokens": 12, "temperature": 0}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(format!("{}\n", text(&v, 0)), generated, "{v}");
    assert_eq!((v["object"].as_str(), v["usage"]["prompt_tokens"].as_u64()), (Some("text_completion"), Some(5)), "{v}");
    // decode steps on Q8_0 copies of the weights say so, and write a continuation
    let q8 = r1s()
        .args(["policy", "generate", prompt, "--max-new-tokens", "12", "-j", "2", "--weights", "q8_0", "--stats-json"])
        .output()
        .unwrap();
    assert!(q8.status.success(), "{q8:?}");
    let stats: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&q8.stderr).lines().last().unwrap()).unwrap();
    assert_eq!(stats["weights"].as_str(), Some("q8_0"), "{stats}");
    assert!((1..=12).contains(&stats["new_tokens"].as_u64().unwrap()), "{stats}");
    assert!(String::from_utf8_lossy(&q8.stdout).trim().len() > 10, "{q8:?}");
    let health: serde_json::Value = c.get(format!("{url}/health")).send().unwrap().json().unwrap();
    assert_eq!(health["weights"].as_str(), Some("f32"), "{health}");
    let chat_said =
        ok(r1s().args(["-q", "policy", "generate", "--chat", "Name a river.", "--max-new-tokens", "16", "-j", "2"]));
    let (_, v, _) = post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Name a river."}], "max_tokens": 16, "temperature": 0, "logprobs": true}),
    );
    assert_eq!(format!("{}\n", v["choices"][0]["message"]["content"].as_str().unwrap()), chat_said, "{v}");
    assert_eq!(
        v["choices"][0]["logprobs"]["content"].as_array().unwrap().len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );

    // at once = alone
    let prompts = ["Once upon a time", "The river Nile", "def add(a, b):", "Paris is", "1, 2, 3,", "Dear Sir,"];
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| text(&post("/v1/completions", &json!({"prompt": p, "max_tokens": 10, "temperature": 0})).1, 0))
        .collect();
    let together: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = prompts
            .iter()
            .map(|p| {
                let post = &post;
                s.spawn(move || {
                    text(&post("/v1/completions", &json!({"prompt": p, "max_tokens": 10, "temperature": 0})).1, 0)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
    // a list of prompts: one choice each, in order
    let (_, v, _) = post("/v1/completions", &json!({"prompt": prompts[..2], "max_tokens": 10, "temperature": 0}));
    assert_eq!((text(&v, 0), text(&v, 1)), (alone[0].clone(), alone[1].clone()));

    // stop strings
    let (_, v, _) =
        post("/v1/completions", &json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "stop": ["."]}));
    assert_eq!(
        (text(&v, 0).as_str(), v["choices"][0]["finish_reason"].as_str(), v["choices"][0]["stop_reason"].as_str()),
        (" Paris", Some("stop"), Some("."))
    );
    // seeded sampling, n, logprobs
    let sampled =
        json!({"prompt": "Once upon a time", "max_tokens": 12, "temperature": 1.0, "seed": 11, "n": 2, "logprobs": 0});
    let (_, a, _) = post("/v1/completions", &sampled);
    let (_, b, _) = post("/v1/completions", &sampled);
    assert_eq!(a["choices"], b["choices"], "one seed, one sample");
    assert_eq!(a["choices"].as_array().unwrap().len(), 2);
    assert_eq!(a["usage"]["completion_tokens"], 24, "{a}");
    assert_eq!(a["choices"][0]["logprobs"]["tokens"].as_array().unwrap().len(), 12);

    // refused: 400 naming the field; past the queue: 503
    for (body, param) in [
        (json!({"prompt": "x", "stream": true}), "stream"),
        (json!({"prompt": "x", "temperature": 5}), "temperature"),
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": 3}), "prompt"),
        (json!({"prompt": "x", "n": 0}), "n"),
        (json!({"prompt": "x", "max_tokens": 0}), "max_tokens"),
        (json!({"prompt": "x", "presence_penalty": 0.5}), "presence_penalty"),
        (json!({"messages": []}), "messages"),
    ] {
        let path = if body["messages"].is_null() { "/v1/completions" } else { "/v1/chat/completions" };
        let (s, v, _) = post(path, &body);
        assert_eq!((s, v["error"]["param"].as_str()), (400, Some(param)), "{body}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let r = c.post(format!("{url}/v1/completions")).body("not json").send().unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let (s, v, retry) = post("/v1/completions", &json!({"prompt": "x", "n": 9, "max_tokens": 2}));
    assert_eq!((s, retry.as_deref()), (503, Some("1")), "{v}");

    // the official openai client
    if let Some(py) = python() {
        let script = r#"
import json, sys, openai
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="none")
m = c.models.list().data[0].id
r = c.completions.create(model=m, prompt="The capital of France is", max_tokens=12, temperature=0)
print(json.dumps([r.choices[0].text, r.usage.completion_tokens]))
ch = c.chat.completions.create(model=m, messages=[{"role": "user", "content": "Name a river."}], max_tokens=16, temperature=0)
print(json.dumps([ch.choices[0].message.content, ch.choices[0].finish_reason]))
try:
    c.completions.create(model=m, prompt="x", temperature=5)
except openai.BadRequestError as e:
    print(json.dumps(["refused", e.status_code]))
"#;
        let out = ok(Command::new(py).arg("-c").arg(script).arg(&url));
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0], json!([generated.trim_end_matches('\n'), 12]), "{out}");
        assert_eq!(lines[1][0], json!(chat_said.trim_end_matches('\n')), "{out}");
        assert_eq!(lines[2], json!(["refused", 400]), "{out}");
    }

    // r1s eval with it as the policy (a completions server) and as the judge (the protocol, not
    // the quality of a 135M judge's verdicts)
    let dir = tempfile::tempdir().unwrap();
    small_bm25(dir.path());
    let p = |name: &str| dir.path().join(name).display().to_string();
    let questions = shared("r1searcher/eval_set/bamboogle.jsonl").display().to_string();
    let printed = ok(r1s()
        .args(["--progress-every", "0", "eval", "--data", &questions, "--limit", "2", "--index", &p("bm25")])
        .args(["--policy", &url, "--prompt", "base", "--max-new-tokens", "24", "--out", &p("r.jsonl")])
        .args(["--judge", &url, "--judge-model", "smollm2", "--judge-cache", &p("cache")]));
    assert!(printed.lines().next().unwrap().ends_with("judge"), "{printed}");
    let rows: Vec<serde_json::Value> =
        std::fs::read_to_string(p("r.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert!(r["judge_reply"].is_string() && r["judge_model"] == "smollm2", "{r}");
    }
    server.kill().unwrap();
    server.wait().unwrap();
}
#[path = "cli/cluster.rs"]
mod cluster;

/// A client that goes away stops its generation: `policy serve` drops the request's rows at the
/// next step (outstanding falls to 0 long before the 2,000 tokens it asked for) and answers the next
/// client at once; `policy generate | head -c N` stops quietly when its reader goes.
#[test]
fn an_abandoned_request_stops_decoding_and_a_closed_pipe_ends_generate_quietly() {
    use std::io::{Read, Write};
    /// Stops the server also when an assertion fails.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let (server, url, _stderr) =
        spawn_listening(r1s().args(["policy", "serve", "--port", "0", "-j", "2", "--max-tokens", "4000"]));
    let server = Killed(server);
    let c = reqwest::blocking::Client::new();
    let outstanding = || -> u64 {
        let h: serde_json::Value = c.get(format!("{url}/health")).send().unwrap().json().unwrap();
        h["outstanding"].as_u64().unwrap()
    };
    let addr = url.trim_start_matches("http://");
    let body = r#"{"prompt": "Once upon a time", "max_tokens": 2000, "temperature": 1.0, "seed": 3}"#;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let t = std::time::Instant::now();
    while outstanding() == 0 {
        assert!(t.elapsed().as_secs() < 20, "the request never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    drop(s);
    let gone = std::time::Instant::now();
    while outstanding() != 0 {
        // 2,000 tokens take over a minute here; a dropped request leaves within a step or two
        assert!(gone.elapsed().as_secs() < 10, "an abandoned request kept decoding");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let r: serde_json::Value = c
        .post(format!("{url}/v1/completions"))
        .json(&serde_json::json!({"prompt": "Paris is", "max_tokens": 4, "temperature": 0}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(r["usage"]["completion_tokens"], 4, "{r}");
    drop(server);

    let mut child = Killed(
        r1s()
            .args(["-q", "policy", "generate", "Once upon a time", "--max-new-tokens", "3000", "--temperature", "1"])
            .args(["-j", "2"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut first = [0u8; 16];
    child.0.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.0.stdout.take());
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed().as_secs() < 20, "generate went on writing into a closed pipe");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    child.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success() && !err.contains("panicked"), "{status:?}: {err}");
}
