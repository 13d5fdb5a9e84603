//! `r1s serve`: Search-R1's `POST /retrieve` and R1-Searcher's `POST /queries`, byte for byte, over
//! a [`Batcher`].
//!
//! - `POST /retrieve` `{"queries": [str], "topk": int?, "return_scores": bool?}` →
//!   `{"result": [[DOC, ...], ...]}`, or `[[{"document": DOC, "score": float}, ...]]` with
//!   `return_scores`; DOC = `{"id", "contents"}` (the stored bytes). A missing, null or 0 `topk` means
//!   the server default. Written as FastAPI writes it (compact, UTF-8, Python float repr).
//! - `POST /queries` `{"queries": [str], "k": int?}` → `{"answers": [[contents, ...]], "queries": [...]}`,
//!   written as Flask's `jsonify` writes it (sorted keys, ASCII-escaped, trailing newline).
//! - `GET /health`: status, index and corpus facts, queue depth, memory, and for a remote index
//!   (Milvus) its state, asked at each call: 503 with `"status": "unavailable"` while it is down.
//!   `GET /metrics`: Prometheus text.
//!
//! Fields are read as Search-R1's pydantic model reads them in lax mode ([`lax_int`], [`lax_bool`]):
//! `"topk": "2"` and `2.0` mean 2, `"return_scores": "yes"` / `1` mean true, `"queries": []` answers
//! `{"result": []}`; `/queries`' `k` the same way.
//!
//! Errors: 422 `{"detail": message}` for a body that is not valid (not JSON, `queries` not a list of
//! strings, `topk` not a non-negative integer (`2.5`) or above the limit, `return_scores` not a
//! boolean (`null`, `"maybe"`), too many queries, body too large); 503 (or 429, [`ServeConfig::overload_status`]) with `Retry-After` when the queue is full;
//! 503 while shutting down, and 503 with
//! `Retry-After` while a remote index is unavailable ([`Retriever::is_unavailable`]); 500 when
//! retrieval itself fails. Handlers never block the async runtime: embedding and search run on the batcher's
//! threads.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use r1s_core::{BackendHealth, Hit, Retriever};
use serde::Serialize;
use serde_json::Value;

use crate::batch::{BatchConfig, Batcher, SubmitError};
use crate::json::{to_fastapi, to_flask};
use crate::metrics::Histogram;

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Hits per query when the request does not say (Search-R1's and R1-Searcher's default: 3).
    pub default_topk: usize,
    /// Largest `topk` / `k` accepted.
    pub max_topk: usize,
    /// Most queries in one request.
    pub max_queries: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Micro-batching and the queue.
    pub batch: BatchConfig,
    /// Log a line of traffic figures this often (when there was traffic).
    pub log_every: Option<Duration>,
    /// The status of a request refused because the queue is full (with `Retry-After: 1`): 503, which
    /// verl's search client (`call_search_api`) retries with a growing delay along with 500/502/504,
    /// or 429, which it does not retry (Search-R1's own client retries nothing).
    pub overload_status: StatusCode,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            default_topk: 3,
            max_topk: 1000,
            max_queries: 4096,
            max_body_bytes: 16 << 20,
            batch: BatchConfig::default(),
            log_every: Some(Duration::from_secs(10)),
            overload_status: StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

#[derive(Debug, Default)]
struct HttpCounters {
    ok: AtomicU64,
    invalid: AtomicU64,
}

type BackendProbe = Box<dyn Fn(Duration) -> Option<BackendHealth> + Send + Sync>;

/// What `/health` shows of the index and corpus, asked at each call (it changes when the index is
/// swapped: [`crate::Live`]).
pub type InfoFn = Arc<dyn Fn() -> Value + Send + Sync>;

struct App {
    batcher: Batcher,
    backend: Arc<BackendProbe>,
    cfg: ServeConfig,
    info: InfoFn,
    started: Instant,
    http: HttpCounters,
}

/// Serves `retriever` on `listener` until `shutdown` completes, then finishes the requests in flight
/// and every queued one. `info` (index and corpus facts) is shown by `/health`.
pub async fn serve<R, F>(
    retriever: Arc<R>,
    listener: tokio::net::TcpListener,
    cfg: ServeConfig,
    info: Value,
    shutdown: F,
) -> std::io::Result<()>
where
    R: Retriever + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    serve_with_info(retriever, listener, cfg, Arc::new(move || info.clone()), shutdown).await
}

/// [`serve`] with the `/health` facts asked of `info` at each call.
pub async fn serve_with_info<R, F>(
    retriever: Arc<R>,
    listener: tokio::net::TcpListener,
    cfg: ServeConfig,
    info: InfoFn,
    shutdown: F,
) -> std::io::Result<()>
where
    R: Retriever + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let probe = retriever.clone();
    let backend: Arc<BackendProbe> = Arc::new(Box::new(move |t| probe.backend(t)));
    let batcher = Batcher::start(retriever, cfg.batch.clone())?;
    let app = Arc::new(App { batcher, backend, cfg, info, started: Instant::now(), http: HttpCounters::default() });
    let router = Router::new()
        .route("/retrieve", post(search_r1))
        .route("/queries", post(r1_searcher))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(app.clone());
    let logger = app.cfg.log_every.map(|every| tokio::spawn(log_traffic(app.clone(), every)));
    let listener = {
        use axum::serve::ListenerExt;
        listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        })
    };
    let served = axum::serve(listener, router).with_graceful_shutdown(shutdown).await;
    if let Some(l) = logger {
        l.abort();
    }
    // the handlers are gone: the last reference to the app stops the batcher (it drains its queue)
    let app = Arc::try_unwrap(app).ok();
    tokio::task::spawn_blocking(move || drop(app)).await.map_err(std::io::Error::other)?;
    served
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn detail(status: StatusCode, message: &str) -> Response {
    json(status, to_fastapi(&serde_json::json!({ "detail": message })))
}

/// Why a request is not answered with results.
#[derive(Debug)]
struct Reject {
    status: StatusCode,
    message: String,
}

impl Reject {
    fn invalid(message: impl Into<String>) -> Reject {
        Reject { status: StatusCode::UNPROCESSABLE_ENTITY, message: message.into() }
    }
}

impl App {
    /// The response for `r`, counted.
    fn reject(&self, r: Reject) -> Response {
        // overload refusals and failed retrievals are counted by the batcher (r1s_rejected_total,
        // r1s_failed_total)
        if r.status == StatusCode::UNPROCESSABLE_ENTITY {
            self.http.invalid.fetch_add(1, Relaxed);
        }
        log::debug!("{}: {}", r.status, r.message);
        let mut resp = detail(r.status, &r.message);
        if r.status == StatusCode::TOO_MANY_REQUESTS || r.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }

    async fn read(&self, body: Body) -> Result<Value, Reject> {
        let limit = self.cfg.max_body_bytes;
        let bytes: Bytes = axum::body::to_bytes(body, limit)
            .await
            .map_err(|e| Reject::invalid(format!("could not read the request body (at most {limit} bytes): {e}")))?;
        serde_json::from_slice(&bytes).map_err(|e| Reject::invalid(format!("the body is not valid JSON: {e}")))
    }

    /// `queries` as pydantic's `List[str]` takes it from JSON: a list (empty allowed) of strings.
    fn queries(&self, body: &Value) -> Result<Vec<String>, Reject> {
        let Some(obj) = body.as_object() else {
            return Err(Reject::invalid("the body must be a JSON object with a \"queries\" list"));
        };
        let list = match obj.get("queries") {
            Some(Value::Array(list)) => list,
            None => return Err(Reject::invalid("\"queries\" is required")),
            Some(_) => return Err(Reject::invalid("\"queries\" must be a list of strings")),
        };
        if list.len() > self.cfg.max_queries {
            return Err(Reject::invalid(format!(
                "{} queries in one request; at most {} are accepted",
                list.len(),
                self.cfg.max_queries
            )));
        }
        list.iter()
            .enumerate()
            .map(|(i, q)| match q {
                Value::String(s) => Ok(s.clone()),
                other => Err(Reject::invalid(format!("queries[{i}] is not a string: {other}"))),
            })
            .collect()
    }

    /// `topk` / `k` as pydantic's lax `Optional[int]` takes it (see [`lax_int`]): missing, null or 0 →
    /// the default (Search-R1: `if not request.topk`); else an integer in 1..=max_topk.
    fn topk(&self, body: &Value, field: &str) -> Result<usize, Reject> {
        let k = match body.get(field) {
            None | Some(Value::Null) => 0,
            Some(v) => lax_int(v)
                .and_then(|k| u64::try_from(k).ok())
                .ok_or_else(|| Reject::invalid(format!("\"{field}\" must be a non-negative integer, got {v}")))?,
        };
        if k > self.cfg.max_topk as u64 {
            return Err(Reject::invalid(format!("\"{field}\" is {k}; at most {} is accepted", self.cfg.max_topk)));
        }
        Ok(if k == 0 { self.cfg.default_topk } else { k as usize })
    }

    async fn run(&self, queries: Vec<String>, k: usize) -> Result<Vec<Vec<Hit>>, Reject> {
        let rx = self.batcher.submit(queries, k).map_err(|e| Reject {
            status: match e {
                SubmitError::Full { .. } => self.cfg.overload_status,
                SubmitError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            },
            message: e.to_string(),
        })?;
        match rx.await {
            Ok(Ok(hits)) => {
                self.http.ok.fetch_add(1, Relaxed);
                Ok(hits)
            }
            Ok(Err(f)) if f.unavailable => Err(Reject {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!("retrieval unavailable, retry later: {}", f.message),
            }),
            Ok(Err(f)) => Err(Reject {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("retrieval failed: {}", f.message),
            }),
            Err(_) => {
                Err(Reject { status: StatusCode::SERVICE_UNAVAILABLE, message: "the retrieval worker stopped".into() })
            }
        }
    }
}

/// An integer as pydantic v2 takes one from JSON in lax mode (its conversion table): an integer; a
/// boolean (1 / 0); a float without a fractional part (`2.0`); a string holding an integer, spaces
/// around it, `_` between digits and a decimal part of zeros allowed (`"2"`, `" 2 "`, `"+2"`,
/// `"2.0"`). `2.5`, `"2.5"`, `"2."`, `"1e2"`, `"two"`, lists and objects are not integers.
pub(crate) fn lax_int(v: &Value) -> Option<i128> {
    match v {
        Value::Bool(b) => Some(i128::from(*b)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Some(i128::from(i));
            }
            if let Some(u) = n.as_u64() {
                return Some(i128::from(u));
            }
            let f = n.as_f64()?;
            (f.is_finite() && f.fract() == 0.0 && f.abs() < 1e30).then_some(f as i128)
        }
        Value::String(s) => {
            let mut t = s.trim();
            // "2.0" and "2.00" are 2 (pydantic drops a decimal part of zeros); "2." is not an integer
            if let Some((int, frac)) = t.split_once('.') {
                if frac.is_empty() || !frac.bytes().all(|b| b == b'0') {
                    return None;
                }
                t = int;
            }
            let (neg, digits) = match t.as_bytes().first() {
                Some(b'-') => (true, &t[1..]),
                Some(b'+') => (false, &t[1..]),
                _ => (false, t),
            };
            let ok = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
                && !digits.starts_with('_')
                && !digits.ends_with('_')
                && !digits.contains("__");
            if !ok {
                return None;
            }
            let n: i128 = digits.replace('_', "").parse().ok()?;
            Some(if neg { -n } else { n })
        }
        _ => None,
    }
}

/// A boolean as pydantic v2 takes one from JSON in lax mode: `true`/`false`; `0`/`1` (integer or
/// float); the strings `0 f n no off false` / `1 t y yes on true` in any case. Null is not a boolean
/// (Search-R1's `return_scores: bool = False` refuses it too).
pub(crate) fn lax_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64()? {
            0.0 => Some(false),
            1.0 => Some(true),
            _ => None,
        },
        Value::String(s) => {
            let l = s.to_ascii_lowercase();
            match l.as_str() {
                "0" | "f" | "n" | "no" | "off" | "false" => Some(false),
                "1" | "t" | "y" | "yes" | "on" | "true" => Some(true),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Search-R1's DOC: the corpus row.
#[derive(Serialize)]
struct Doc<'a> {
    id: &'a str,
    contents: &'a str,
}

fn doc(h: &Hit) -> Doc<'_> {
    Doc { id: &h.id, contents: &h.contents }
}

#[derive(Serialize)]
struct ScoredDoc<'a> {
    document: Doc<'a>,
    score: f32,
}

#[derive(Serialize)]
struct SearchR1Response<T> {
    result: Vec<Vec<T>>,
}

/// Flask's jsonify sorts keys: "answers" before "queries".
#[derive(Serialize)]
struct R1SearcherResponse<'a> {
    answers: Vec<Vec<&'a str>>,
    queries: &'a [String],
}

async fn search_r1(State(app): State<Arc<App>>, body: Body) -> Response {
    let answered = async {
        let v = app.read(body).await?;
        let queries = app.queries(&v)?;
        let k = app.topk(&v, "topk")?;
        let scores = match v.get("return_scores") {
            None => false,
            Some(b) => lax_bool(b).ok_or_else(|| {
                Reject::invalid(format!(
                    "\"return_scores\" must be a boolean (true/false, 0/1, \"yes\"/\"no\"…), got {b}"
                ))
            })?,
        };
        if queries.is_empty() {
            return Ok((Vec::new(), scores));
        }
        Ok((app.run(queries, k).await?, scores))
    };
    let (hits, scores) = match answered.await {
        Ok(a) => a,
        Err(r) => return app.reject(r),
    };
    let body = if scores {
        let result = hits.iter().map(|q| q.iter().map(|h| ScoredDoc { document: doc(h), score: h.score }).collect());
        to_fastapi(&SearchR1Response { result: result.collect() })
    } else {
        to_fastapi(&SearchR1Response { result: hits.iter().map(|q| q.iter().map(doc).collect()).collect() })
    };
    json(StatusCode::OK, body)
}

async fn r1_searcher(State(app): State<Arc<App>>, body: Body) -> Response {
    let answered = async {
        let v = app.read(body).await?;
        let (queries, k) = (app.queries(&v)?, app.topk(&v, "k")?);
        if queries.is_empty() {
            return Ok((Vec::new(), queries));
        }
        Ok::<_, Reject>((app.run(queries.clone(), k).await?, queries))
    };
    let (hits, queries) = match answered.await {
        Ok(a) => a,
        Err(r) => return app.reject(r),
    };
    let answers = hits.iter().map(|q| q.iter().map(|h| h.contents.as_str()).collect()).collect();
    json(StatusCode::OK, to_flask(&R1SearcherResponse { answers, queries: &queries }))
}

/// How long `/health` waits for a remote backend's answer.
const BACKEND_PROBE: Duration = Duration::from_secs(3);

async fn health(State(app): State<Arc<App>>) -> Response {
    // the probe blocks (a gRPC call): off the async threads, and never longer than the deadline
    let probe = app.backend.clone();
    let asked = tokio::task::spawn_blocking(move || probe(BACKEND_PROBE));
    let down =
        |error: String| BackendHealth { kind: "remote".into(), target: String::new(), up: false, error: Some(error) };
    let backend = match tokio::time::timeout(BACKEND_PROBE + Duration::from_secs(1), asked).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => Some(down("the health probe panicked".into())),
        Err(_) => Some(down(format!("no answer within {} s", BACKEND_PROBE.as_secs()))),
    };
    let up = backend.as_ref().is_none_or(|b| b.up);
    let mut v = serde_json::json!({
        "status": if up { "ok" } else { "unavailable" },
        "uptime_seconds": app.started.elapsed().as_secs_f64(),
        "queued_queries": app.batcher.queued(),
    });
    let info = (app.info)();
    if let (Some(obj), Some(info)) = (v.as_object_mut(), info.as_object()) {
        obj.extend(info.iter().map(|(k, v)| (k.clone(), v.clone())));
        obj.insert("memory".into(), memory(info));
        if let Some(b) = backend {
            obj.insert("backend".into(), serde_json::to_value(b).unwrap_or_default());
        }
    }
    json(if up { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, to_fastapi(&v))
}

/// The process's resident bytes, and for the `index` and `corpus` directories of `info` the bytes
/// of their files mapped into the process and how many of those are resident (Linux's
/// `/proc/self/smaps`; `null` elsewhere). An SQ8 index shows its codes and graph resident and the
/// f32 vectors mapped but touched only where re-ranked.
fn memory(info: &serde_json::Map<String, Value>) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("process_resident_bytes".into(), r1s_core::mem::rss_bytes().into());
    for key in ["index", "corpus"] {
        let Some(files) = info.get(key).and_then(Value::as_str).and_then(|d| r1s_core::mem::mapped_under(d.as_ref()))
        else {
            continue;
        };
        let (mapped, resident) =
            files.iter().fold((0u64, 0u64), |(m, r), f| (m + f.mapped_bytes, r + f.resident_bytes));
        out.insert(
            key.into(),
            serde_json::json!({ "mapped_bytes": mapped, "resident_bytes": resident, "files": files }),
        );
    }
    Value::Object(out)
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    use std::fmt::Write;
    let s = app.batcher.stats();
    let mut out = String::new();
    let counters = [
        ("r1s_requests_total", "Requests accepted into the queue", &s.requests),
        ("r1s_queries_total", "Queries in accepted requests", &s.queries),
        ("r1s_rejected_total", "Requests refused because the queue was full (503 or 429)", &s.rejected),
        ("r1s_abandoned_total", "Requests skipped because the client had gone", &s.abandoned),
        ("r1s_failed_total", "Requests whose retrieval failed", &s.failed),
        ("r1s_batches_total", "Embed + search batches run", &s.batches),
        ("r1s_batched_queries_total", "Queries in those batches", &s.batched_queries),
        ("r1s_http_ok_total", "Responses 200 to POST /retrieve and /queries", &app.http.ok),
        ("r1s_http_invalid_total", "Responses 422", &app.http.invalid),
    ];
    for (name, help, c) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", c.load(Relaxed));
    }
    let _ = writeln!(out, "# HELP r1s_queued_queries Queries waiting\n# TYPE r1s_queued_queries gauge");
    let _ = writeln!(out, "r1s_queued_queries {}", app.batcher.queued());
    let _ = writeln!(out, "# HELP r1s_latency_seconds Submission to reply\n# TYPE r1s_latency_seconds histogram");
    s.latency.prometheus("r1s_latency_seconds", &mut out);
    let mut r = Response::new(Body::from(out));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

async fn not_found() -> Response {
    detail(StatusCode::NOT_FOUND, "not found: use POST /retrieve, POST /queries, GET /health or GET /metrics")
}

/// Every `every`, one log line of the traffic since the last one.
async fn log_traffic(app: Arc<App>, every: Duration) {
    let s = app.batcher.stats();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut last = (0u64, 0u64, 0u64, 0u64, 0u64, s.latency.snapshot());
    loop {
        tick.tick().await;
        let now = (
            s.requests.load(Relaxed),
            s.queries.load(Relaxed),
            s.rejected.load(Relaxed),
            s.batches.load(Relaxed),
            s.batched_queries.load(Relaxed),
            s.latency.snapshot(),
        );
        let (req, q, rej, b, bq) = (now.0 - last.0, now.1 - last.1, now.2 - last.2, now.3 - last.3, now.4 - last.4);
        if req + rej > 0 {
            let diff: Vec<u64> = now.5.iter().zip(&last.5).map(|(a, b)| a - b).collect();
            let ms = |q: f64| Histogram::quantile(&diff, q).map_or(0.0, |d| d.as_secs_f64() * 1e3);
            log::info!(
                "{req} requests ({:.1}/s), {q} queries ({:.1}/s), {rej} refused, queue {}, mean batch {:.1} queries, latency p50 {:.1} ms p99 {:.1} ms",
                req as f64 / every.as_secs_f64(),
                q as f64 / every.as_secs_f64(),
                app.batcher.queued(),
                bq as f64 / b.max(1) as f64,
                ms(0.5),
                ms(0.99),
            );
        }
        last = now;
    }
}

#[cfg(test)]
mod lax_tests {
    use super::{lax_bool, lax_int};

    /// Each case as pydantic 2.14.4 validated it (`Optional[int]` / `bool` fields, JSON input).
    #[test]
    fn lax_fields_match_pydantic() {
        let ints: [(&str, Option<i128>); 24] = [
            (r#""2""#, Some(2)),
            ("2.0", Some(2)),
            (r#"" 2 ""#, Some(2)),
            (r#""2.0""#, Some(2)),
            (r#""+2""#, Some(2)),
            ("true", Some(1)),
            ("false", Some(0)),
            (r#""2.""#, None),
            (r#""1_0""#, Some(10)),
            (r#""2.5""#, None),
            ("2.5", None),
            (r#""two""#, None),
            ("[2]", None),
            ("-1", Some(-1)),
            (r#""-2""#, Some(-2)),
            (r#""0x10""#, None),
            ("\"\u{ff12}\"", None),
            ("1e2", Some(100)),
            (r#""1e2""#, None),
            (r#""2.00""#, Some(2)),
            (r#"" 2.0 ""#, Some(2)),
            (r#""_1""#, None),
            (r#""1__0""#, None),
            ("null", None),
        ];
        for (json, want) in ints {
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(lax_int(&v), want, "{json}");
        }
        let bools: [(&str, Option<bool>); 20] = [
            (r#""yes""#, Some(true)),
            (r#""true""#, Some(true)),
            ("1", Some(true)),
            (r#""ON""#, Some(true)),
            (r#""t""#, Some(true)),
            ("1.0", Some(true)),
            (r#""no""#, Some(false)),
            ("0", Some(false)),
            (r#""false""#, Some(false)),
            (r#""off""#, Some(false)),
            ("null", None),
            (r#""maybe""#, None),
            ("2", None),
            (r#""1""#, Some(true)),
            (r#""0""#, Some(false)),
            (r#""Yes""#, Some(true)),
            (r#"" yes""#, None),
            (r#""TRUE""#, Some(true)),
            ("0.0", Some(false)),
            (r#""Y""#, Some(true)),
        ];
        for (json, want) in bools {
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(lax_bool(&v), want, "{json}");
        }
    }
}
