//! An OpenAI-compatible server for a local policy (`r1s policy serve`): `POST /v1/completions`,
//! `POST /v1/chat/completions` (the model's chat template), `GET /v1/models`, `GET /health`, with the
//! request and response shapes of vLLM's OpenAI server (`stop_reason` names the stop string that
//! ended a choice, as vLLM's does; non-streaming).
//!
//! One engine thread owns the decoding: every request's choices join one continuously refilled batch
//! ([`Policy::generate_continuous_polled`]) at the next decode step after they arrive, at most
//! [`ServeConfig::max_rows`] rows at a time; the others wait in arrival order. Choices waiting or
//! running are bounded ([`ServeConfig::max_queue`]): past it a request gets 503 with `Retry-After: 1`.
//! A greedy request is answered as `r1s policy generate` answers its prompt. A seeded request samples
//! from streams seeded by its `seed` and each choice's index, so it samples the same whatever else is
//! running. Unsupported options (`stream`, `echo`, penalties, `logit_bias`, `suffix`, `best_of` other
//! than `n`, tools) are refused with 400 and named, not ignored.
//!
//! Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 for a bad
//! request (named field), 413 for a body over the limit, 503 when full, 500 when generation failed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::continuous::stream_seed;
use crate::{Generation, Policy, Request, Sampling, StopReason};

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The model's name in `/v1/models` and in responses (requests may name any model).
    pub model_name: String,
    /// Most rows decoded together (choices of all requests).
    pub max_rows: usize,
    /// Most choices waiting or running; past it, 503.
    pub max_queue: usize,
    /// Largest request body in bytes (413 above).
    pub max_body_bytes: usize,
    /// Most choices in one request (`n` × prompts).
    pub max_choices: usize,
    /// Most new tokens per choice whatever a request asks (llama.cpp's `--n-predict`); `None`: the
    /// model's positions bound it.
    pub max_new_tokens: Option<usize>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            model_name: "r1s".into(),
            max_rows: 32,
            max_queue: 256,
            max_body_bytes: 32 << 20,
            max_choices: 128,
            max_new_tokens: None,
        }
    }
}

/// Work for the engine: the choices of one request.
struct Submission {
    /// Token ids of each prompt; each is run `n` times.
    prompts: Vec<Vec<u32>>,
    n: usize,
    sampling: Sampling,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Generation>, String>>,
}

/// A request being served: its reply channel and its choices so far.
struct Pending {
    reply: tokio::sync::oneshot::Sender<Result<Vec<Generation>, String>>,
    /// Set when the client went away: its choices stop decoding ([`Book::drop_abandoned`]).
    cancel: Arc<r1s_core::Cancel>,
    out: Vec<Option<Generation>>,
    left: usize,
}

/// The engine's state between the batch's callbacks.
#[derive(Default)]
struct Book {
    waiting: VecDeque<Request>,
    /// key → (request id, choice index)
    of_key: HashMap<usize, (usize, usize)>,
    pending: HashMap<usize, Pending>,
    live: usize,
    next_key: usize,
    next_id: usize,
}

impl Book {
    fn admit(&mut self, s: Submission) {
        let id = self.next_id;
        self.next_id += 1;
        let rows = s.prompts.len() * s.n;
        let cancel = Arc::new(r1s_core::Cancel::new());
        for (p, prompt) in s.prompts.iter().enumerate() {
            for c in 0..s.n {
                let choice = p * s.n + c;
                let key = self.next_key;
                self.next_key += 1;
                self.of_key.insert(key, (id, choice));
                self.waiting.push_back(Request {
                    key,
                    prompt: prompt.clone(),
                    sampling: s.sampling.clone(),
                    // one stream per choice: the same seeded request samples the same
                    stream: Some(stream_seed(s.sampling.seed, choice, 0)),
                    cancel: Some(cancel.clone()),
                });
            }
        }
        self.pending.insert(id, Pending { reply: s.reply, cancel, out: vec![None; rows], left: rows });
    }

    /// Stops the requests whose client went away (its connection closed, so the handler and its
    /// reply's receiver were dropped): their waiting choices leave the queue, their running ones
    /// are cancelled (the batch drops them at its next step), and they leave `outstanding`.
    fn drop_abandoned(&mut self, outstanding: &AtomicUsize) {
        let gone: Vec<usize> = self.pending.iter().filter(|(_, p)| p.reply.is_closed()).map(|(&id, _)| id).collect();
        for id in gone {
            let Some(p) = self.pending.remove(&id) else { continue };
            p.cancel.cancel();
            outstanding.fetch_sub(p.out.len(), Ordering::SeqCst);
            let keys: HashSet<usize> = self.of_key.iter().filter(|(_, (i, _))| *i == id).map(|(&k, _)| k).collect();
            let queued = self.waiting.len();
            self.waiting.retain(|r| !keys.contains(&r.key));
            let running = keys.len() - (queued - self.waiting.len());
            self.live = self.live.saturating_sub(running);
            self.of_key.retain(|k, _| !keys.contains(k));
            log::info!(
                "a client went away: its request stopped ({running} choice(s) decoding, {} queued)",
                queued - self.waiting.len()
            );
        }
    }

    fn take(&mut self, max_rows: usize) -> Vec<Request> {
        let k = max_rows.saturating_sub(self.live).min(self.waiting.len());
        self.live += k;
        self.waiting.drain(..k).collect()
    }

    /// Records ended choices; answers the requests whose choices are all done and takes their
    /// choices off `outstanding`.
    fn ended(&mut self, ended: Vec<(usize, Generation)>, outstanding: &AtomicUsize) {
        for (key, g) in ended {
            self.live = self.live.saturating_sub(1);
            let Some((id, choice)) = self.of_key.remove(&key) else { continue };
            let Some(p) = self.pending.get_mut(&id) else { continue };
            p.out[choice] = Some(g);
            p.left -= 1;
            if p.left == 0
                && let Some(p) = self.pending.remove(&id)
            {
                outstanding.fetch_sub(p.out.len(), Ordering::SeqCst);
                // a client that went away does not take the answer: nothing to do
                let _ = p.reply.send(Ok(p.out.into_iter().flatten().collect()));
            }
        }
    }

    /// Fails every request on the books (generation failed).
    fn fail_all(&mut self, why: &str, outstanding: &AtomicUsize) {
        for (_, p) in self.pending.drain() {
            outstanding.fetch_sub(p.out.len(), Ordering::SeqCst);
            let _ = p.reply.send(Err(why.to_owned()));
        }
        self.waiting.clear();
        self.of_key.clear();
        self.live = 0;
    }
}

/// The engine loop: waits for work, then decodes until no choice is left, taking arrivals at every
/// step.
fn engine(
    policy: Arc<Policy>,
    rx: std::sync::mpsc::Receiver<Submission>,
    max_rows: usize,
    outstanding: Arc<AtomicUsize>,
) {
    let book = std::cell::RefCell::new(Book::default());
    loop {
        if book.borrow().waiting.is_empty() {
            match rx.recv() {
                Ok(s) => book.borrow_mut().admit(s),
                Err(_) => return,
            }
        }
        while let Ok(s) = rx.try_recv() {
            book.borrow_mut().admit(s);
        }
        book.borrow_mut().drop_abandoned(&outstanding);
        let first = book.borrow_mut().take(max_rows);
        let ran = policy.generate_continuous_polled(
            first,
            &mut |ended| {
                book.borrow_mut().ended(ended, &outstanding);
                ControlFlow::Continue(Vec::new())
            },
            &mut || {
                let mut b = book.borrow_mut();
                while let Ok(s) = rx.try_recv() {
                    b.admit(s);
                }
                b.drop_abandoned(&outstanding);
                b.take(max_rows)
            },
        );
        if let Err(e) = ran {
            log::error!("generation failed: {e}");
            book.borrow_mut().fail_all(&format!("generation failed: {e}"), &outstanding);
        }
    }
}

struct App {
    policy: Arc<Policy>,
    cfg: ServeConfig,
    tx: std::sync::Mutex<std::sync::mpsc::Sender<Submission>>,
    outstanding: Arc<AtomicUsize>,
    ids: AtomicU64,
    template: r1s_core::chat::Template,
}

/// An error response in OpenAI's shape.
fn error(status: StatusCode, message: &str, param: Option<&str>) -> Response {
    let kind = match status.as_u16() {
        400 | 413 => "invalid_request_error",
        404 => "not_found_error",
        503 => "service_unavailable",
        _ => "internal_error",
    };
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": status.as_u16()}});
    let mut r = json_response(StatusCode::OK, body);
    *r.status_mut() = status;
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A 400 naming `param`.
struct Bad(String, Option<&'static str>);

fn bad(message: impl Into<String>, param: &'static str) -> Bad {
    Bad(message.into(), Some(param))
}

/// Which endpoint a request came to.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

/// The options of a request both endpoints share, checked.
fn sampling_of(v: &Value, kind: Kind, room: usize) -> Result<(Sampling, usize, Option<usize>), Bad> {
    let refuse = |field: &'static str, why: &str| Err(bad(format!("{field}: {why}"), field));
    if v["stream"].as_bool() == Some(true) {
        return refuse("stream", "streaming is not supported; send stream: false");
    }
    if kind == Kind::Completion && v["echo"].as_bool() == Some(true) {
        return refuse("echo", "not supported");
    }
    for field in ["presence_penalty", "frequency_penalty", "repetition_penalty"] {
        if v[field].as_f64().is_some_and(|x| x != 0.0 && !(field == "repetition_penalty" && x == 1.0)) {
            return refuse(field, "penalties are not supported");
        }
    }
    if v["logit_bias"].as_object().is_some_and(|o| !o.is_empty()) {
        return refuse("logit_bias", "not supported");
    }
    if v["suffix"].as_str().is_some_and(|s| !s.is_empty()) {
        return refuse("suffix", "not supported");
    }
    if v["tools"].as_array().is_some_and(|t| !t.is_empty()) {
        return refuse("tools", "tool calls are not supported");
    }
    let num = |field: &'static str, default: f64| -> Result<f64, Bad> {
        match &v[field] {
            Value::Null => Ok(default),
            x => x.as_f64().ok_or_else(|| bad(format!("{field} must be a number"), field)),
        }
    };
    let temperature = num("temperature", 1.0)?;
    if !(0.0..=2.0).contains(&temperature) {
        return refuse("temperature", "must be in [0, 2]");
    }
    let top_p = num("top_p", 1.0)?;
    if !(top_p > 0.0 && top_p <= 1.0) {
        return refuse("top_p", "must be in (0, 1]");
    }
    let int = |field: &'static str| -> Result<Option<u64>, Bad> {
        match &v[field] {
            Value::Null => Ok(None),
            x => x.as_u64().map(Some).ok_or_else(|| bad(format!("{field} must be a whole number"), field)),
        }
    };
    let n = int("n")?.unwrap_or(1);
    if n == 0 {
        return refuse("n", "must be at least 1");
    }
    if let Some(best_of) = int("best_of")?
        && best_of != n
    {
        return refuse("best_of", "only best_of = n is supported");
    }
    let field = if kind == Kind::Chat && !v["max_completion_tokens"].is_null() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let max_tokens = match int(field)? {
        Some(0) => return refuse("max_tokens", "must be at least 1"),
        Some(m) => usize::try_from(m).unwrap_or(usize::MAX),
        // OpenAI's and vLLM's default for completions; a chat reply may fill the context
        None if kind == Kind::Completion => 16,
        None => room,
    };
    let stop: Vec<String> = match &v["stop"] {
        Value::Null => Vec::new(),
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("stop must be a string or a list of strings", "stop"))?,
        _ => return refuse("stop", "must be a string or a list of strings"),
    };
    let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
    if stop.len() > 16 {
        return refuse("stop", "at most 16 stop strings");
    }
    let seed = int("seed")?;
    let logprobs = match (kind, &v["logprobs"]) {
        (_, Value::Null) | (Kind::Chat, Value::Bool(false)) => None,
        (Kind::Chat, Value::Bool(true)) => Some(0),
        (Kind::Completion, x) => match x.as_u64() {
            Some(k) if k <= 20 => Some(k as usize),
            _ => return refuse("logprobs", "must be a whole number from 0 to 20"),
        },
        (Kind::Chat, _) => return refuse("logprobs", "must be true or false"),
    };
    let sampling = Sampling {
        max_new_tokens: max_tokens,
        temperature: temperature as f32,
        top_p: top_p as f32,
        // an unseeded request gets a seed of its own
        seed: seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        }),
        stop,
    };
    Ok((sampling, n as usize, logprobs))
}

/// The text of a chat message's `content`: a string, or a list of `{"type": "text", "text"}` parts.
fn content_text(c: &Value, i: usize) -> Result<String, Bad> {
    match c {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match (p["type"].as_str(), p["text"].as_str()) {
                (Some("text"), Some(t)) => Ok(t.to_owned()),
                _ => Err(bad(format!("messages[{i}].content: only text parts are supported"), "messages")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|t| t.join("")),
        Value::Null => Ok(String::new()),
        _ => Err(bad(format!("messages[{i}].content must be a string or a list of text parts"), "messages")),
    }
}

impl App {
    /// The prompts of a request as text.
    fn prompts(&self, v: &Value, kind: Kind) -> Result<Vec<String>, Bad> {
        match kind {
            Kind::Completion => match &v["prompt"] {
                Value::String(s) => Ok(vec![s.clone()]),
                Value::Array(a) if !a.is_empty() => {
                    a.iter().map(|x| x.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>().ok_or_else(|| {
                        bad("prompt must be a string or a list of strings (token ids are not supported)", "prompt")
                    })
                }
                _ => Err(bad("prompt must be a string or a non-empty list of strings", "prompt")),
            },
            Kind::Chat => {
                let list = v["messages"]
                    .as_array()
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| bad("messages must be a non-empty list", "messages"))?;
                let mut messages = Vec::with_capacity(list.len());
                for (i, m) in list.iter().enumerate() {
                    let role = m["role"]
                        .as_str()
                        .ok_or_else(|| bad(format!("messages[{i}].role must be a string"), "messages"))?;
                    if !matches!(role, "system" | "user" | "assistant" | "developer") {
                        return Err(bad(format!("messages[{i}].role {role:?} is not supported"), "messages"));
                    }
                    let role = if role == "developer" { "system" } else { role };
                    messages.push(r1s_core::chat::Message::new(role, &content_text(&m["content"], i)?));
                }
                Ok(vec![self.template.render(&messages)])
            }
        }
    }

    async fn handle(self: Arc<Self>, body: Body, kind: Kind) -> Response {
        let bytes = match axum::body::to_bytes(body, self.cfg.max_body_bytes).await {
            Ok(b) => b,
            Err(e) => {
                let m = format!("could not read the request body (at most {} bytes): {e}", self.cfg.max_body_bytes);
                return error(StatusCode::PAYLOAD_TOO_LARGE, &m, None);
            }
        };
        let v: Value = match serde_json::from_slice(&bytes) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object", None),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("the body is not valid JSON: {e}"), None),
        };
        match self.clone().respond(v, kind).await {
            Ok(r) => r,
            Err(Bad(m, param)) => error(StatusCode::BAD_REQUEST, &m, param),
        }
    }

    async fn respond(self: Arc<Self>, v: Value, kind: Kind) -> Result<Response, Bad> {
        let max_pos = self.policy.rope().max_positions();
        let texts = self.prompts(&v, kind)?;
        let mut prompts = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            let ids = self.policy.tokenizer.encode(t).map_err(|e| bad(format!("prompt {i}: {e}"), "prompt"))?;
            if ids.is_empty() {
                return Err(bad(format!("prompt {i} is empty"), "prompt"));
            }
            if ids.len() >= max_pos {
                return Err(bad(
                    format!(
                        "prompt {i} has {} tokens; the model takes at most {} with room for one more",
                        ids.len(),
                        max_pos - 1
                    ),
                    "prompt",
                ));
            }
            prompts.push(ids);
        }
        let room = max_pos - prompts.iter().map(Vec::len).max().unwrap_or(0);
        let (mut sampling, n, logprobs) = sampling_of(&v, kind, room)?;
        if let Some(cap) = self.cfg.max_new_tokens {
            sampling.max_new_tokens = sampling.max_new_tokens.min(cap);
        }
        let choices = prompts.len().saturating_mul(n);
        if choices > self.cfg.max_choices {
            return Err(bad(
                format!("{choices} choices (prompts × n); at most {} in one request", self.cfg.max_choices),
                "n",
            ));
        }
        // a place in the queue for every choice, or 503
        let before = self.outstanding.fetch_add(choices, Ordering::SeqCst);
        if before + choices > self.cfg.max_queue {
            self.outstanding.fetch_sub(choices, Ordering::SeqCst);
            let m = format!("{before} choices are waiting or running (at most {}); retry later", self.cfg.max_queue);
            return Ok(error(StatusCode::SERVICE_UNAVAILABLE, &m, None));
        }
        let prompt_tokens: usize = prompts.iter().map(Vec::len).sum::<usize>() * n;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sent = match self.tx.lock() {
            Ok(tx) => tx.send(Submission { prompts, n, sampling, reply }).is_ok(),
            Err(_) => false,
        };
        if !sent {
            self.outstanding.fetch_sub(choices, Ordering::SeqCst);
            return Ok(error(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped", None));
        }
        let gens = match answer.await {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => return Ok(error(StatusCode::INTERNAL_SERVER_ERROR, &e, None)),
            Err(_) => return Ok(error(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped", None)),
        };
        Ok(json_response(StatusCode::OK, self.body(kind, &gens, prompt_tokens, logprobs)))
    }

    /// The response body for the generations of one request.
    fn body(&self, kind: Kind, gens: &[Generation], prompt_tokens: usize, logprobs: Option<usize>) -> Value {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let completion_tokens: usize = gens.iter().map(|g| g.tokens.len()).sum();
        let choices: Vec<Value> = gens
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let (finish, stop_reason) = match &g.stop {
                    StopReason::Eos => ("stop", Value::Null),
                    StopReason::Stop(s) => ("stop", Value::String(s.clone())),
                    StopReason::Length => ("length", Value::Null),
                };
                let lp = logprobs.map(|_| self.logprobs(kind, g));
                match kind {
                    Kind::Completion => json!({"index": i, "text": g.text, "logprobs": lp, "finish_reason": finish, "stop_reason": stop_reason}),
                    Kind::Chat => json!({"index": i, "message": {"role": "assistant", "content": g.text}, "logprobs": lp,
                        "finish_reason": finish, "stop_reason": stop_reason}),
                }
            })
            .collect();
        let (prefix, object) = match kind {
            Kind::Completion => ("cmpl", "text_completion"),
            Kind::Chat => ("chatcmpl", "chat.completion"),
        };
        json!({
            "id": format!("{prefix}-r1s-{id}"), "object": object, "created": created, "model": self.cfg.model_name,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
        })
    }

    /// The sampled tokens and their log-probabilities (the model's, at temperature 1) in the
    /// endpoint's shape; alternatives (`top_logprobs`) are not computed.
    fn logprobs(&self, kind: Kind, g: &Generation) -> Value {
        let tokens: Vec<String> =
            g.tokens.iter().map(|&t| self.policy.tokenizer.decode(&[t]).unwrap_or_default()).collect();
        match kind {
            Kind::Completion => {
                let mut offsets = Vec::with_capacity(tokens.len());
                let mut at = 0usize;
                for t in &tokens {
                    offsets.push(at);
                    at += t.len();
                }
                json!({"tokens": tokens, "token_logprobs": g.logprobs, "top_logprobs": Value::Null, "text_offset": offsets})
            }
            Kind::Chat => json!({"content": tokens.iter().zip(&g.logprobs).map(|(t, lp)| json!({
                "token": t, "logprob": lp, "bytes": t.as_bytes(), "top_logprobs": []})).collect::<Vec<_>>()}),
        }
    }
}

async fn completions(State(app): State<Arc<App>>, body: Body) -> Response {
    app.handle(body, Kind::Completion).await
}

async fn chat(State(app): State<Arc<App>>, body: Body) -> Response {
    app.handle(body, Kind::Chat).await
}

async fn models(State(app): State<Arc<App>>) -> Response {
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    json_response(
        StatusCode::OK,
        json!({"object": "list", "data": [{"id": app.cfg.model_name, "object": "model", "created": created, "owned_by": "r1s",
            "max_model_len": app.policy.rope().max_positions(), "weights": app.policy.weights().to_string()}]}),
    )
}

async fn health(State(app): State<Arc<App>>) -> Response {
    json_response(
        StatusCode::OK,
        json!({"status": "ok", "model": app.cfg.model_name, "weights": app.policy.weights().to_string(),
            "outstanding": app.outstanding.load(Ordering::SeqCst)}),
    )
}

/// Serves `policy` on `listener` until `shutdown` completes (module docs). The engine thread ends when
/// the server does.
pub async fn serve<F>(
    policy: Arc<Policy>,
    cfg: ServeConfig,
    listener: tokio::net::TcpListener,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel::<Submission>();
    let outstanding = Arc::new(AtomicUsize::new(0));
    let engine_policy = policy.clone();
    let (engine_outstanding, max_rows) = (outstanding.clone(), cfg.max_rows.max(1));
    let engine = std::thread::Builder::new()
        .name("r1s-engine".into())
        .spawn(move || engine(engine_policy, rx, max_rows, engine_outstanding))?;
    let template = r1s_core::chat::Template::detect(policy.tokenizer.chat_template.as_deref());
    let app =
        Arc::new(App { policy, cfg, tx: std::sync::Mutex::new(tx), outstanding, ids: AtomicU64::new(0), template });
    let router = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .with_state(app.clone());
    let served = axum::serve(listener, router).with_graceful_shutdown(shutdown).await;
    // the engine ends when its channel closes: drop the sender (the router's copy went with it)
    drop(app);
    let _ = tokio::task::spawn_blocking(move || engine.join()).await;
    served
}
