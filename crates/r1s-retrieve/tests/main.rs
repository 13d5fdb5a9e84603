//! The dense retriever and the HTTP server on real data: a Search-R1-format corpus (handmade rows in
//! the `"Title"\ntext` style of Search-R1's example, then 400 of R1-Searcher's passages), MiniLM
//! through ONNX Runtime, flat and HNSW indexes, a real server on an ephemeral loopback port and a
//! real HTTP client.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use r1s_core::{Cancel, Hit, NoProgress, Retriever};
use r1s_retrieve::{BatchConfig, DenseOptions, DenseRetriever, ServeConfig};

mod batcher;
mod lexical;

fn shared(rel: &str) -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join("../../../shared/data")
        .join(rel)
}

/// Rows written before the R1-Searcher passages: Search-R1's own example row, and rows with
/// quotes, non-ASCII (inside and beyond the BMP), a tab and a backslash, to check byte-exactness.
const HANDMADE: [(&str, &str); 4] = [
    (
        "0",
        "\"Evan Morris\"\nEvan Morris Evan L. Morris (January 26, 1977 – July 9, 2015) was a lobbyist for Genentech and its parent corporation Roche in Washington.",
    ),
    ("h1", "\"Ærø \\\"Kommune\\\"\"\nÆrø is a Danish island municipality; its ferry crosses to Svendborg 🚢 daily."),
    ("h2", "\"Tab\tand back\\\\slash\"\nA title with a tab\tand a backslash \\ in it, about C:\\\\paths."),
    ("h3", "No title row: the Search-R1 contents of a passage without a quoted title line."),
];

struct Fixture {
    _dir: tempfile::TempDir,
    corpus_file: PathBuf,
    corpus: PathBuf,
    flat: PathBuf,
    hnsw: PathBuf,
}

/// Corpus + one embedding run, shared by flat and HNSW index directories (built once per process).
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let corpus_file = dir.path().join("corpus.jsonl");
        let mut text = String::new();
        for (id, contents) in HANDMADE {
            let contents = contents.replace("\\\"", "\"").replace("\\\\", "\\");
            text.push_str(&serde_json::json!({"id": id, "contents": contents}).to_string());
            text.push('\n');
        }
        let passages = std::fs::read_to_string(shared("r1searcher/passages.jsonl")).unwrap();
        for line in passages.lines().take(400) {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["id"] = format!("p{}", v["id"].as_str().unwrap()).into();
            text.push_str(&v.to_string());
            text.push('\n');
        }
        std::fs::write(&corpus_file, text).unwrap();
        let corpus = dir.path().join("corpus");
        r1s_corpus::ingest(
            std::slice::from_ref(&corpus_file),
            &corpus,
            &Default::default(),
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
        let e = r1s_embed::OnnxEmbedder::load(&r1s_embed::EmbedderConfig { threads: 2, ..Default::default() })
            .expect("MiniLM (run tools/setup)");
        let flat = dir.path().join("flat");
        r1s_embed::embed_corpus(&e, &r1s_embed::EmbedJob::new(&corpus, &flat), &NoProgress, &Cancel::new()).unwrap();
        let hnsw = dir.path().join("hnsw");
        std::fs::create_dir_all(&hnsw).unwrap();
        for f in ["embeddings.npy", "embeddings.json"] {
            std::fs::copy(flat.join(f), hnsw.join(f)).unwrap();
        }
        let p = r1s_index::BuildParams::default();
        r1s_index::build(&flat, r1s_index::Kind::Flat, &p, &NoProgress, &Cancel::new()).unwrap();
        r1s_index::build(&hnsw, r1s_index::Kind::Hnsw, &p, &NoProgress, &Cancel::new()).unwrap();
        Fixture { _dir: dir, corpus_file, corpus, flat, hnsw }
    })
}

fn open(index: &Path) -> Arc<DenseRetriever> {
    Arc::new(DenseRetriever::open(index, &DenseOptions { threads: 2, ..Default::default() }).unwrap())
}

fn questions(n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(shared("r1searcher/eval_set/hotpotqa_500.jsonl")).unwrap();
    text.lines()
        .take(n)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["question"].as_str().unwrap().to_owned())
        .collect()
}

/// A server on an ephemeral loopback port, stopped (gracefully) on drop.
struct Server {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    fn start<R: Retriever + 'static>(r: Arc<R>, cfg: ServeConfig) -> Server {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                addr_tx.send(listener.local_addr()?).unwrap();
                r1s_retrieve::serve(r, listener, cfg, serde_json::json!({"kind": "test"}), async {
                    let _ = stopped.await;
                })
                .await
            })
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(30)).expect("the server did not start");
        Server { url: format!("http://{addr}"), stop: Some(stop), done: Some(done) }
    }

    fn shutdown(mut self) -> std::io::Result<()> {
        let _ = self.stop.take().map(|s| s.send(()));
        self.done.take().unwrap().join().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = d.join();
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

/// POSTs `body` (raw bytes) and returns (status, headers, body).
async fn post(
    c: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = c.post(url).header("content-type", "application/json").body(body).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

#[test]
fn contents_round_trip_byte_for_byte_and_both_index_kinds_agree() {
    let f = fixture();
    let flat = open(&f.flat);
    let hnsw = open(&f.hnsw);
    // each handmade row is found by its own text, with the stored contents byte for byte
    for (id, contents) in HANDMADE {
        let contents = contents.replace("\\\"", "\"").replace("\\\\", "\\");
        let hits = flat.retrieve(&[contents.as_str()], 1).unwrap();
        assert_eq!(hits[0][0].id, id);
        assert_eq!(hits[0][0].contents, contents);
    }
    let qs = questions(100);
    let refs: Vec<&str> = qs.iter().map(String::as_str).collect();
    let exact = flat.retrieve(&refs, 10).unwrap();
    let approx = hnsw.retrieve(&refs, 10).unwrap();
    let found: usize =
        exact.iter().zip(&approx).map(|(e, a)| e.iter().filter(|h| a.iter().any(|x| x.row == h.row)).count()).sum();
    let recall = found as f64 / (10 * qs.len()) as f64;
    assert!(recall >= 0.95, "HNSW recall@10 {recall}");
    for hits in &exact {
        assert_eq!(hits.len(), 10);
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    }
    // k = 0 and an empty batch
    assert!(flat.retrieve(&["x"], 0).unwrap()[0].is_empty());
    assert!(flat.retrieve(&[], 3).unwrap().is_empty());
}

#[test]
fn another_corpus_or_a_missing_one_is_refused() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("other");
    let lines: String =
        std::fs::read_to_string(&f.corpus_file).unwrap().lines().take(20).map(|l| format!("{l}\n")).collect();
    let file = tmp.path().join("c.jsonl");
    std::fs::write(&file, lines).unwrap();
    r1s_corpus::ingest(&[file], &other, &Default::default(), &NoProgress, &Cancel::new()).unwrap();
    let err = DenseRetriever::open(&f.flat, &DenseOptions { corpus: Some(other), ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("another corpus"), "{err}");
    // an index whose recorded corpus is gone names what it tried
    let moved = tmp.path().join("moved");
    std::fs::create_dir_all(&moved).unwrap();
    for e in std::fs::read_dir(&f.flat).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), moved.join(e.file_name())).unwrap();
    }
    let m = moved.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    v["corpus"] = "corpora/nowhere".into();
    std::fs::write(&m, v.to_string()).unwrap();
    let err = DenseRetriever::open(&moved, &DenseOptions::default()).unwrap_err();
    assert!(matches!(err, r1s_retrieve::RetrieveError::CorpusNotFound { .. }), "{err}");
    assert!(err.to_string().contains("corpora/nowhere"), "{err}");
}

/// Search-R1's example row as its FastAPI server sends it in `/retrieve`'s `result`.
const EVAN_MORRIS_DOC: &str = "{\"id\":\"0\",\"contents\":\"\\\"Evan Morris\\\"\\nEvan Morris Evan L. Morris (January 26, 1977 – July 9, 2015) was a lobbyist for Genentech and its parent corporation Roche in Washington.\"}";

/// The exact bytes FastAPI would send for Search-R1's example row, both shapes, and Flask's for
/// R1-Searcher's /queries; topk missing or 0 means the server default.
#[test]
fn both_apis_answer_byte_for_byte() {
    let f = fixture();
    let r = open(&f.flat);
    let q = "Evan Morris lobbyist Genentech";
    let direct = r.retrieve(&[q], 3).unwrap().remove(0);
    assert_eq!(direct[0].id, "0");
    let server = Server::start(r.clone(), ServeConfig::default());
    let c = client();
    runtime().block_on(async {
        let url = format!("{}/retrieve", server.url);
        let doc = EVAN_MORRIS_DOC;
        let (status, headers, body) = post(&c, &url, format!("{{\"queries\": [\"{q}\"], \"topk\": 1}}")).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(String::from_utf8(body).unwrap(), format!("{{\"result\":[[{doc}]]}}"));

        let (_, _, body) =
            post(&c, &url, format!("{{\"queries\": [\"{q}\"], \"topk\": 1, \"return_scores\": true}}")).await;
        let body = String::from_utf8(body).unwrap();
        let prefix = format!("{{\"result\":[[{{\"document\":{doc},\"score\":");
        assert!(body.starts_with(&prefix), "{body}");
        let score = body[prefix.len()..].strip_suffix("}]]}").unwrap();
        // Python prints the float32 score widened to a double, shortest round trip
        assert_eq!(score.parse::<f64>().unwrap(), f64::from(direct[0].score));
        assert!(score.starts_with("0.") && !score.contains('e'), "{score}");

        // topk missing, null or 0 → the server default (3); the same hits as the retriever itself
        for extra in ["", ", \"topk\": null", ", \"topk\": 0"] {
            let (_, _, body) =
                post(&c, &url, format!("{{\"queries\": [\"{q}\"], \"return_scores\": true{extra}}}")).await;
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let got: Vec<(&str, f64)> = v["result"][0]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| (h["document"]["id"].as_str().unwrap(), h["score"].as_f64().unwrap()))
                .collect();
            let want: Vec<(&str, f64)> = direct.iter().map(|h| (h.id.as_str(), f64::from(h.score))).collect();
            assert_eq!(got, want);
        }

        // R1-Searcher: sorted keys, ASCII-escaped, a trailing newline; k defaults to 3
        let url = format!("{}/queries", server.url);
        let (status, _, body) = post(&c, &url, "{\"queries\": [\"Ærø ferry Svendborg\"], \"k\": 1}").await;
        assert_eq!(status, 200);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "{\"answers\":[[\"\\\"\\u00c6r\\u00f8 \\\"Kommune\\\"\\\"\\nÆrø is a Danish island municipality; its ferry crosses to Svendborg \\ud83d\\udea2 daily.\"]],\"queries\":[\"\\u00c6r\\u00f8 ferry Svendborg\"]}\n"
                .replace("\\nÆrø", "\\n\\u00c6r\\u00f8")
        );
        let (_, _, body) = post(&c, &url, format!("{{\"queries\": [\"{q}\", \"tab backslash\"]}}")).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["answers"].as_array().unwrap().len(), 2);
        assert_eq!(v["answers"][0].as_array().unwrap().len(), 3);
        assert_eq!(v["answers"][0][0], direct[0].contents);
        assert_eq!(v["queries"][1], "tab backslash");

        // health and metrics
        let h: serde_json::Value =
            serde_json::from_slice(&c.get(format!("{}/health", server.url)).send().await.unwrap().bytes().await.unwrap())
                .unwrap();
        assert_eq!(h["status"], "ok");
        let m = c.get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
        assert!(m.contains("r1s_requests_total 7"), "{m}");
        let nf = c.get(format!("{}/nope", server.url)).send().await.unwrap();
        assert_eq!(nf.status().as_u16(), 404);
    });
    server.shutdown().unwrap();
}

#[test]
fn malformed_requests_get_422_with_a_message() {
    let f = fixture();
    let cfg = ServeConfig { max_topk: 50, max_queries: 8, max_body_bytes: 4096, ..Default::default() };
    let server = Server::start(open(&f.flat), cfg);
    let c = client();
    runtime().block_on(async {
        let cases: Vec<(&str, String, &str)> = vec![
            ("/retrieve", "not json".into(), "not valid JSON"),
            ("/retrieve", "[\"a\"]".into(), "JSON object"),
            ("/retrieve", "{}".into(), "\"queries\" is required"),
            ("/retrieve", "{\"queries\": \"one\"}".into(), "must be a list of strings"),
            ("/retrieve", "{\"queries\": null}".into(), "must be a list of strings"),
            ("/retrieve", "{\"queries\": [\"a\", 2]}".into(), "queries[1] is not a string"),
            ("/retrieve", "{\"queries\": [\"a\"], \"topk\": -1}".into(), "non-negative integer"),
            ("/retrieve", "{\"queries\": [\"a\"], \"topk\": 2.5}".into(), "non-negative integer"),
            ("/retrieve", "{\"queries\": [\"a\"], \"topk\": 51}".into(), "at most 50"),
            ("/retrieve", "{\"queries\": [\"a\"], \"topk\": \"2.5\"}".into(), "non-negative integer"),
            ("/retrieve", "{\"queries\": [\"a\"], \"topk\": \"two\"}".into(), "non-negative integer"),
            ("/retrieve", "{\"queries\": [\"a\"], \"topk\": [2]}".into(), "non-negative integer"),
            ("/retrieve", "{\"queries\": [\"a\"], \"return_scores\": \"maybe\"}".into(), "must be a boolean"),
            ("/retrieve", "{\"queries\": [\"a\"], \"return_scores\": null}".into(), "must be a boolean"),
            ("/retrieve", "{\"queries\": [\"a\"], \"return_scores\": 2}".into(), "must be a boolean"),
            ("/retrieve", format!("{{\"queries\": {:?}}}", vec!["q"; 9]), "at most 8"),
            ("/retrieve", format!("{{\"queries\": [\"{}\"]}}", "x".repeat(5000)), "at most 4096 bytes"),
            ("/queries", "{\"queries\": [\"a\"], \"k\": \"3.5\"}".into(), "\"k\" must be"),
            ("/queries", "{\"k\": 3}".into(), "\"queries\" is required"),
        ];
        for (path, body, needle) in cases {
            let (status, _, reply) = post(&c, &format!("{}{path}", server.url), body.clone()).await;
            let reply = String::from_utf8(reply).unwrap();
            assert_eq!(status, 422, "{body} → {reply}");
            let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
            let detail = v["detail"].as_str().unwrap();
            assert!(detail.contains(needle), "{body}: {detail:?} lacks {needle:?}");
        }
        // still serving
        let (status, _, _) = post(&c, &format!("{}/retrieve", server.url), "{\"queries\": [\"a\"]}").await;
        assert_eq!(status, 200);
    });
}

/// 200 concurrent clients with different questions each get their own answer (the one the
/// retriever gives for that question alone), with batches coalescing them.
#[test]
fn two_hundred_concurrent_clients_get_their_own_answers() {
    let f = fixture();
    let r = open(&f.hnsw);
    let qs = questions(200);
    let refs: Vec<&str> = qs.iter().map(String::as_str).collect();
    let want: Vec<Vec<Hit>> = refs.iter().map(|q| r.retrieve(&[q], 3).unwrap().remove(0)).collect();
    let server = Server::start(r.clone(), ServeConfig::default());
    let c = client();
    let replies = runtime().block_on(async {
        let tasks: Vec<_> = qs
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let (c, url) = (c.clone(), format!("{}/retrieve", server.url));
                let body = serde_json::json!({"queries": [q], "topk": 3, "return_scores": true}).to_string();
                tokio::spawn(async move { (i, post(&c, &url, body).await) })
            })
            .collect();
        futures_util::future::join_all(tasks).await
    });
    for reply in replies {
        let (i, (status, _, body)) = reply.unwrap();
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let got = v["result"][0].as_array().unwrap();
        assert_eq!(got.len(), 3);
        for (g, w) in got.iter().zip(&want[i]) {
            assert_eq!(g["document"]["id"], w.id, "question {i}");
            assert!((g["score"].as_f64().unwrap() - f64::from(w.score)).abs() < 1e-5, "question {i}");
        }
    }
    let m = runtime().block_on(async {
        client().get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap()
    });
    let value =
        |name: &str| -> u64 { m.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).unwrap().parse().unwrap() };
    assert_eq!(value("r1s_batched_queries_total"), 200);
    assert!(value("r1s_batches_total") < 200, "no request was coalesced: {m}");
    server.shutdown().unwrap();
}

/// What Search-R1's pydantic model takes in lax mode means what it means there: `"topk": "2"`,
/// `2.0`, `" 2 "`, `"2.0"` are 2 (`true` is 1), `"return_scores": "yes"` / `"true"` / `1` / `"ON"`
/// are true and `"no"` / `0` false, `"queries": []` answers `{"result": []}`; `/queries`' `k` too.
#[test]
fn lax_fields_coerce_as_pydantic_does() {
    let f = fixture();
    let server = Server::start(open(&f.flat), ServeConfig::default());
    let c = client();
    runtime().block_on(async {
        let url = format!("{}/retrieve", server.url);
        let ask = |body: String| {
            let (c, url) = (c.clone(), url.clone());
            async move {
                let (status, _, reply) = post(&c, &url, body.clone()).await;
                assert_eq!(status, 200, "{body} → {}", String::from_utf8_lossy(&reply));
                reply
            }
        };
        let plain = ask(r#"{"queries": ["Evan Morris"], "topk": 2}"#.into()).await;
        for topk in [r#""2""#, "2.0", r#"" 2 ""#, r#""2.0""#, r#""+2""#] {
            assert_eq!(ask(format!(r#"{{"queries": ["Evan Morris"], "topk": {topk}}}"#)).await, plain, "topk {topk}");
        }
        let one = ask(r#"{"queries": ["Evan Morris"], "topk": 1}"#.into()).await;
        assert_eq!(ask(r#"{"queries": ["Evan Morris"], "topk": true}"#.into()).await, one);
        let scored = ask(r#"{"queries": ["Evan Morris"], "topk": 2, "return_scores": true}"#.into()).await;
        for yes in [r#""yes""#, r#""true""#, "1", r#""ON""#, r#""t""#, "1.0"] {
            let body = format!(r#"{{"queries": ["Evan Morris"], "topk": 2, "return_scores": {yes}}}"#);
            assert_eq!(ask(body).await, scored, "return_scores {yes}");
        }
        for no in [r#""no""#, "0", r#""false""#, r#""off""#] {
            let body = format!(r#"{{"queries": ["Evan Morris"], "topk": 2, "return_scores": {no}}}"#);
            assert_eq!(ask(body).await, plain, "return_scores {no}");
        }
        assert_eq!(ask(r#"{"queries": []}"#.into()).await, br#"{"result":[]}"#);
        assert_eq!(ask(r#"{"queries": [], "return_scores": "yes"}"#.into()).await, br#"{"result":[]}"#);
        let (status, _, reply) = post(&c, &format!("{}/queries", server.url), r#"{"queries": [], "k": "2"}"#).await;
        assert_eq!((status, reply), (200, b"{\"answers\":[],\"queries\":[]}\n".to_vec()));
        let (_, _, k2) = post(&c, &format!("{}/queries", server.url), r#"{"queries": ["Evan Morris"], "k": 2}"#).await;
        let (_, _, ks) =
            post(&c, &format!("{}/queries", server.url), r#"{"queries": ["Evan Morris"], "k": "2"}"#).await;
        assert_eq!(k2, ks);
    });
    server.shutdown().unwrap();
}

/// Under overload with the default 503 + Retry-After, a client that retries 5xx with a growing delay
/// (as verl's `call_search_api` does: 500/502/503/504, sleeping longer after each try) gets every
/// request answered, and each answer equals the one the same request gets alone.
#[test]
fn overload_answers_503_and_a_retrying_client_gets_every_answer() {
    let f = fixture();
    let cfg = ServeConfig {
        batch: BatchConfig { max_queued: 64, max_batch: 64, ..Default::default() },
        ..Default::default()
    };
    assert_eq!(cfg.overload_status, 503);
    let server = Server::start(open(&f.flat), cfg);
    let qs = questions(64);
    let c = client();
    let url = format!("{}/retrieve", server.url);
    let (replies, alone) = runtime().block_on(async {
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let (c, url) = (c.clone(), url.clone());
                // each client its own rotation of the questions, so that answers are told apart
                let mut mine = qs.clone();
                mine.rotate_left(i);
                let body = serde_json::json!({"queries": mine, "topk": 2}).to_string();
                tokio::spawn(async move {
                    let mut refused = 0;
                    for attempt in 0..200u64 {
                        let (status, headers, reply) = post(&c, &url, body.clone()).await;
                        match status {
                            500 | 502 | 503 | 504 => {
                                assert_eq!(headers["retry-after"], "1");
                                refused += 1;
                                tokio::time::sleep(Duration::from_millis(20 * (attempt + 1).min(10))).await;
                            }
                            200 => return (i, reply, refused),
                            other => panic!("status {other}: {}", String::from_utf8_lossy(&reply)),
                        }
                    }
                    panic!("client {i}: no answer after 200 tries");
                })
            })
            .collect();
        let replies = futures_util::future::join_all(tasks).await;
        let mut alone = Vec::new();
        for i in 0..40 {
            let mut mine = qs.clone();
            mine.rotate_left(i);
            let body = serde_json::json!({"queries": mine, "topk": 2}).to_string();
            alone.push(post(&c, &url, body).await.2);
        }
        (replies, alone)
    });
    let mut retried = 0;
    for r in replies {
        let (i, reply, refused) = r.unwrap();
        assert_eq!(reply, alone[i], "client {i}'s answer differs from the same request alone");
        retried += usize::from(refused > 0);
    }
    assert!(retried >= 1, "no client was refused: the queue never filled");
    server.shutdown().unwrap();
}

/// With `overload_status` 429 a full queue answers 429 with Retry-After at once; every accepted
/// request is answered correctly.
#[test]
fn overload_gets_429_and_accepted_requests_still_succeed() {
    let f = fixture();
    let cfg = ServeConfig {
        batch: BatchConfig { max_queued: 64, max_batch: 64, ..Default::default() },
        overload_status: reqwest::StatusCode::TOO_MANY_REQUESTS,
        ..Default::default()
    };
    let server = Server::start(open(&f.flat), cfg);
    let qs = questions(64);
    let c = client();
    let replies = runtime().block_on(async {
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let (c, url) = (c.clone(), format!("{}/retrieve", server.url));
                let body = serde_json::json!({"queries": qs, "topk": 2}).to_string();
                tokio::spawn(async move { post(&c, &url, body).await })
            })
            .collect();
        futures_util::future::join_all(tasks).await
    });
    let (mut ok, mut refused) = (0, 0);
    for r in replies {
        let (status, headers, body) = r.unwrap();
        match status {
            200 => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["result"].as_array().unwrap().len(), 64);
                ok += 1;
            }
            429 => {
                assert_eq!(headers["retry-after"], "1");
                assert!(String::from_utf8_lossy(&body).contains("queue is full"));
                refused += 1;
            }
            other => panic!("status {other}: {}", String::from_utf8_lossy(&body)),
        }
    }
    assert!(ok >= 1 && refused >= 1, "{ok} answered, {refused} refused");
    server.shutdown().unwrap();
}

/// Requests in flight when shutdown begins are still answered.
#[test]
fn graceful_shutdown_answers_requests_in_flight() {
    let f = fixture();
    let server = Server::start(open(&f.flat), ServeConfig::default());
    let qs = questions(200);
    let url = format!("{}/retrieve", server.url);
    let rt = runtime();
    let pending = rt.spawn(async move { post(&client(), &url, serde_json::json!({"queries": qs}).to_string()).await });
    std::thread::sleep(Duration::from_millis(100));
    server.shutdown().unwrap();
    let (status, _, body) = rt.block_on(pending).unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["result"].as_array().unwrap().len(), 200);
}
