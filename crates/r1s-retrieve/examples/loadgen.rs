//! A closed-loop HTTP load generator for `r1s serve` (or any Search-R1 / R1-Searcher server):
//! N clients, each sending its next request as soon as the previous reply arrives, for a fixed time.
//! Prints one JSON line: requests/s, queries/s, latency p50/p99 (exact, from every request), and
//! counts of 429s and other failures.
//!
//! cargo run --release -p r1s-retrieve --example loadgen -- --url http://127.0.0.1:8000 \
//!     --clients 16 --per-request 1 --seconds 10 --queries questions.jsonl

use std::time::{Duration, Instant};

struct Args {
    url: String,
    api: String,
    clients: usize,
    per_request: usize,
    seconds: f64,
    topk: usize,
    queries: String,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        url: "http://127.0.0.1:8000".into(),
        api: "retrieve".into(),
        clients: 1,
        per_request: 1,
        seconds: 10.0,
        topk: 3,
        queries: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = value()?,
            "--api" => a.api = value()?,
            "--clients" => a.clients = value()?.parse().map_err(|e| format!("--clients: {e}"))?,
            "--per-request" => a.per_request = value()?.parse().map_err(|e| format!("--per-request: {e}"))?,
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--topk" => a.topk = value()?.parse().map_err(|e| format!("--topk: {e}"))?,
            "--queries" => a.queries = value()?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.queries.is_empty() {
        return Err("--queries FILE (JSONL with \"question\", or one query per line) is required".into());
    }
    Ok(a)
}

fn read_queries(path: &str) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if line.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{path}:{}: {e}", n + 1))?;
            let q = v["question"].as_str().or(v["query"].as_str());
            out.push(q.ok_or(format!("{path}:{}: no \"question\"", n + 1))?.to_owned());
        } else {
            out.push(line.to_owned());
        }
    }
    if out.is_empty() {
        return Err(format!("{path}: no queries"));
    }
    Ok(out)
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    queries: usize,
    refused: usize,
    failed: usize,
}

async fn client(a: &Args, n: usize, qs: &[String], deadline: Instant) -> Tally {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap_or_default();
    let url = format!("{}/{}", a.url.trim_end_matches('/'), a.api);
    let mut t = Tally::default();
    let mut next = n * 7919 % qs.len();
    while Instant::now() < deadline {
        let batch: Vec<&String> = (0..a.per_request).map(|i| &qs[(next + i) % qs.len()]).collect();
        next = (next + a.per_request) % qs.len();
        let body = if a.api == "queries" {
            serde_json::json!({"queries": batch, "k": a.topk})
        } else {
            serde_json::json!({"queries": batch, "topk": a.topk, "return_scores": true})
        };
        let start = Instant::now();
        let reply = http.post(&url).header("content-type", "application/json").body(body.to_string()).send().await;
        match reply {
            Ok(r) if r.status().is_success() => match r.bytes().await {
                Ok(_) => {
                    t.latencies.push(start.elapsed());
                    t.queries += a.per_request;
                }
                Err(_) => t.failed += 1,
            },
            Ok(r) if r.status().as_u16() == 429 => {
                t.refused += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ => t.failed += 1,
        }
    }
    t
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let qs = match read_queries(&a.queries) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let started = Instant::now();
    let tallies = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
        let clients = (0..a.clients).map(|n| client(&a, n, &qs, deadline));
        futures_util::future::join_all(clients).await
    });
    let secs = started.elapsed().as_secs_f64();
    let mut lat: Vec<Duration> = tallies.iter().flat_map(|t| t.latencies.iter().copied()).collect();
    lat.sort();
    let pct = |p: f64| lat.get(((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len().max(1)) - 1);
    let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    let queries: usize = tallies.iter().map(|t| t.queries).sum();
    println!(
        "{}",
        serde_json::json!({
            "clients": a.clients,
            "per_request": a.per_request,
            "requests": lat.len(),
            "requests_per_s": lat.len() as f64 / secs,
            "queries_per_s": queries as f64 / secs,
            "p50_ms": ms(pct(0.5)),
            "p99_ms": ms(pct(0.99)),
            "refused_429": tallies.iter().map(|t| t.refused).sum::<usize>(),
            "failed": tallies.iter().map(|t| t.failed).sum::<usize>(),
        })
    );
}
