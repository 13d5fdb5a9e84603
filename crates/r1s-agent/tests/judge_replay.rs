//! A replay of R1-Searcher's LLM judge for tests (the agent's and the CLI's): it knows only the
//! requests R1-Searcher sent for its released results.

/// A replay of R1-Searcher's judge on a loopback port: answers a chat request whose single user
/// message is one R1-Searcher sent (by SHA-256, `fixtures/judge_replay.json`) with the verdict its judge
/// gave, any other request with 400; the first `fail_first` requests get 503 (then 429 with a
/// `Retry-After`), the message of question "Unsure?" gets a reply that is no verdict. Counts requests.
pub struct ReplayJudge {
    pub url: String,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    rt: tokio::runtime::Runtime,
}

impl ReplayJudge {
    pub fn start(verdicts: std::collections::HashMap<String, String>, fail_first: usize) -> ReplayJudge {
        use axum::http::StatusCode;
        use std::sync::atomic::Ordering;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = requests.clone();
        let verdicts = std::sync::Arc::new(verdicts);
        let unsure = r1s_core::fsutil::sha256_hex(r1s_agent::judge::judge_message("Unsure?", "x", "y").as_bytes());
        let handler = move |body: axum::body::Bytes| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let verdicts = verdicts.clone();
            let unsure = unsure.clone();
            async move {
                let reply = |status: StatusCode, body: String| {
                    let mut r = axum::response::Response::new(axum::body::Body::from(body));
                    *r.status_mut() = status;
                    r
                };
                if n < fail_first {
                    let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, "busy".into());
                    if n % 2 == 1 {
                        *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                        r.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
                    }
                    return r;
                }
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let messages = v["messages"].as_array().cloned().unwrap_or_default();
                let shape_ok = v["model"] == "gpt-4o-mini"
                    && v["max_tokens"] == 1024
                    && v.as_object().is_some_and(|o| o.len() == 3)
                    && messages.len() == 1
                    && messages[0]["role"] == "user";
                let key = r1s_core::fsutil::sha256_hex(messages[0]["content"].as_str().unwrap_or("").as_bytes());
                let verdict = match verdicts.get(&key) {
                    Some(v) if shape_ok => v.clone(),
                    _ if shape_ok && key == unsure => "I cannot tell.".into(),
                    _ => return reply(StatusCode::BAD_REQUEST, format!("not a request R1-Searcher sent: {v}")),
                };
                let body = serde_json::json!({"object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": verdict}, "finish_reason": "stop"}]});
                reply(StatusCode::OK, body.to_string())
            }
        };
        let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(handler));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        ReplayJudge { url, requests, stop: Some(stop), rt }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for ReplayJudge {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = &self.rt;
    }
}

/// The verdicts of one released file in `judge_replay.json` (SHA-256 of the user message → verdict).
pub fn verdicts(fixture: &serde_json::Value, file: &str) -> std::collections::HashMap<String, String> {
    fixture["files"][file]["verdicts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}
