//! #32: `tools/serve-cluster` — two `r1s serve` replicas behind the real HAProxy — under load from
//! clients that behave like verl's search tool (each request retried on 500/502/503/504 and on
//! connection errors with a growing delay, 30 s timeout): a replica SIGKILLed and restarted, an
//! index rebuilt and swapped in (SIGHUP), a replica stopped with SIGTERM mid-request, and clients
//! that hang up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{build_index, ok, r1s, repo, shared, some_passages};

/// The cluster of one test, stopped (HAProxy and every replica, by PID) when dropped — also when
/// the test fails.
struct Cluster {
    run: PathBuf,
    port: u16,
}

fn script() -> Command {
    let mut c = Command::new(repo("tools/serve-cluster"));
    c.env("R1S_BIN", env!("CARGO_BIN_EXE_r1s"));
    c
}
use std::process::Command;

impl Cluster {
    fn start(index: &Path, run: &Path, port: u16) -> Cluster {
        let out = script()
            .args(["start", "--index"])
            .arg(index)
            .args(["--replicas", "2", "--port", &port.to_string(), "--run"])
            .arg(run)
            .args(["--", "-j", "1", "--log-every", "0"])
            .output()
            .unwrap();
        let c = Cluster { run: run.to_path_buf(), port };
        assert!(out.status.success(), "serve-cluster start: {}", String::from_utf8_lossy(&out.stderr));
        c
    }

    fn cmd(&self, args: &[&str]) -> String {
        let out = script().args(args).arg("--run").arg(&self.run).output().unwrap();
        assert!(out.status.success(), "serve-cluster {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pid(&self, which: &str) -> i32 {
        self.cmd(&["pid", which]).trim().parse().unwrap()
    }

    fn url(&self, replica: Option<u16>) -> String {
        format!("http://127.0.0.1:{}", self.port + replica.unwrap_or(0))
    }

    /// HAProxy's view of replica `i` (UP, DOWN, ...), from its stats page.
    fn seen(&self, i: u16) -> String {
        let csv = reqwest::blocking::get(format!("{}/haproxy-stats;csv", self.url(None)))
            .and_then(|r| r.text())
            .unwrap_or_default();
        let name = format!("r{i}");
        csv.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.len() > 17 && f[0] == "r1s_replicas" && f[1] == name)
            .map(|f| f[17].to_owned())
            .unwrap_or_default()
    }

    fn wait_seen(&self, i: u16, state: &str) {
        let t = Instant::now();
        while !self.seen(i).starts_with(state) {
            assert!(t.elapsed() < Duration::from_secs(20), "HAProxy never saw r{i} {state} (sees {})", self.seen(i));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn health(&self, replica: u16) -> serde_json::Value {
        reqwest::blocking::get(format!("{}/health", self.url(Some(replica)))).unwrap().json().unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = script().arg("stop").arg("--run").arg(&self.run).output();
    }
}

fn kill(pid: i32, signal: &str) {
    assert!(Command::new("kill").args([signal, &pid.to_string()]).status().unwrap().success());
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
}

/// Three free loopback ports in a row (HAProxy's and two replicas').
fn free_ports() -> u16 {
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65000 && (1..=2).all(|d| std::net::TcpListener::bind(("127.0.0.1", p + d)).is_ok()) {
            return p;
        }
    }
    panic!("no three free ports in a row");
}

static RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The first `n` questions of Bamboogle.
fn bamboogle(n: usize) -> Vec<String> {
    std::fs::read_to_string(shared("r1searcher/eval_set/bamboogle.jsonl"))
        .unwrap()
        .lines()
        .take(n)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["question"].as_str().unwrap().to_owned())
        .collect()
}

/// A verl-like client: POSTs `body`, retrying 500/502/503/504 and transport errors with a growing
/// delay (0.1 s doubling to 2 s), 30 s timeout per try; the 200 reply's bytes, or why it gave up.
/// Tries beyond the first are counted in `RETRIES`.
fn verl_post(c: &reqwest::blocking::Client, url: &str, body: &str) -> Result<Vec<u8>, String> {
    let mut delay = Duration::from_millis(100);
    let mut last = String::new();
    for attempt in 0..40 {
        if attempt > 0 {
            RETRIES.fetch_add(1, Ordering::SeqCst);
        }
        match c.post(url).body(body.to_owned()).timeout(Duration::from_secs(30)).send() {
            Ok(r) if r.status() == 200 => return r.bytes().map(|b| b.to_vec()).map_err(|e| e.to_string()),
            Ok(r) if [500, 502, 503, 504].contains(&r.status().as_u16()) => last = format!("status {}", r.status()),
            Ok(r) => return Err(format!("status {}: {}", r.status(), r.text().unwrap_or_default())),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    Err(format!("no answer after 40 tries: {last}"))
}

/// A request's index, when it was sent, and its final reply.
type Answer = (usize, Instant, Result<Vec<u8>, String>);

/// `clients` threads sending `bodies` round-robin through `url` until `stop`: each answer with the
/// request's index and when it was sent.
fn load(
    url: &str,
    bodies: &Arc<Vec<String>>,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<Answer>>> {
    (0..clients)
        .map(|k| {
            let (url, bodies, stop) = (format!("{url}/retrieve"), bodies.clone(), stop.clone());
            std::thread::spawn(move || {
                let c = reqwest::blocking::Client::new();
                let mut got = Vec::new();
                let mut i = k;
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    got.push((i % bodies.len(), sent, verl_post(&c, &url, &bodies[i % bodies.len()])));
                    i += clients;
                }
                got
            })
        })
        .collect()
}

fn answers_alone(url: &str, bodies: &[String]) -> Vec<Vec<u8>> {
    let c = reqwest::blocking::Client::new();
    bodies.iter().map(|b| verl_post(&c, &format!("{url}/retrieve"), b).unwrap()).collect()
}

/// SIGKILLs replica 1 while `clients` send `bodies` through HAProxy, waits until HAProxy marks it
/// DOWN, restarts it and waits until it is UP again; checks that every request was answered with
/// the bytes of the same request answered alone (`alone`) and returns how many were.
fn kill_and_restart_under_load(
    cluster: &Cluster,
    bodies: &Arc<Vec<String>>,
    alone: &[Vec<u8>],
    clients: usize,
) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&cluster.url(None), bodies, clients, &stop);
    std::thread::sleep(Duration::from_millis(600));
    let killed = cluster.pid("1");
    kill(killed, "-KILL");
    cluster.wait_seen(1, "DOWN");
    std::thread::sleep(Duration::from_millis(300));
    cluster.cmd(&["restart", "1"]);
    assert_ne!(cluster.pid("1"), killed);
    cluster.wait_seen(1, "UP");
    std::thread::sleep(Duration::from_millis(600));
    stop.store(true, Ordering::SeqCst);
    let mut answered = 0;
    for c in running {
        for (i, _, reply) in c.join().unwrap() {
            let reply = reply.unwrap_or_else(|e| panic!("request {i} failed for good across the kill: {e}"));
            assert!(reply == alone[i], "request {i}: its answer differs from the same request alone");
            answered += 1;
        }
    }
    answered
}

#[test]
fn serve_cluster_survives_a_killed_replica_and_swaps_its_index_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let src = some_passages(dir.path(), 300);
    let idx = dir.path().join("idx");
    build_index(&src, &idx, &["--kind", "flat", "-j", "2"]);
    let questions = bamboogle(30);
    // requests of 3 queries each: a request answered by two indexes at once would show
    let bodies: Arc<Vec<String>> = Arc::new(
        questions
            .chunks(3)
            .map(|q| serde_json::json!({"queries": q, "topk": 3, "return_scores": true}).to_string())
            .collect(),
    );
    let port = free_ports();
    let cluster = Cluster::start(&idx, &dir.path().join("run"), port);
    assert!(cluster.cmd(&["status"]).contains("replica 2 PID"));
    let alone = answers_alone(&cluster.url(Some(1)), &bodies);

    // 1. a replica SIGKILLed under load, then restarted: HAProxy takes it out and back; every
    //    request is answered, byte-equal to the same request alone
    let answered = kill_and_restart_under_load(&cluster, &bodies, &alone, 6);
    assert!(answered >= 12, "only {answered} requests in the kill phase");
    eprintln!("kill phase: {answered} requests answered, {} client retries", RETRIES.swap(0, Ordering::SeqCst));

    // 2. an index rebuilt under load (SQ8 codes without re-ranking: other scores) and swapped in
    //    with SIGHUP: no request fails; each is answered whole by the old index or the new one; once
    //    both replicas report the swap, only by the new one
    let old_id = cluster.health(2)["index_id"].as_str().unwrap().to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&cluster.url(None), &bodies, 6, &stop);
    std::thread::sleep(Duration::from_millis(500));
    ok(r1s().args(["-q", "index", "build", "--out"]).arg(&idx).args([
        "--kind",
        "flat",
        "--quantize",
        "sq8",
        "--no-rerank",
        "-j",
        "1",
    ]));
    cluster.cmd(&["reload"]);
    let t = Instant::now();
    while [1, 2].iter().any(|&r| cluster.health(r)["reloads"] != 1) {
        assert!(t.elapsed() < Duration::from_secs(30), "no swap: {}", cluster.health(1)["last_reload"]);
        std::thread::sleep(Duration::from_millis(50));
    }
    let swapped = Instant::now();
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::SeqCst);
    let new_id = cluster.health(1)["index_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, old_id);
    assert_eq!(cluster.health(2)["index_id"], new_id.as_str());
    let fresh = answers_alone(&cluster.url(Some(2)), &bodies);
    assert!(fresh.iter().zip(&alone).any(|(a, b)| a != b), "the new index answers as the old one: nothing told apart");
    let (mut old, mut new) = (0, 0);
    for c in clients {
        for (i, sent, reply) in c.join().unwrap() {
            let reply = reply.unwrap_or_else(|e| panic!("request {i} failed during the swap: {e}"));
            if reply == fresh[i] {
                new += 1;
            } else {
                assert!(reply == alone[i], "request {i}: neither the old index's answer nor the new one's");
                assert!(sent < swapped, "request {i} sent after the swap was answered by the old index");
                old += usize::from(fresh[i] != alone[i]);
            }
        }
    }
    assert!(new > 0, "no answer from the new index (old {old})");
    eprintln!(
        "swap phase: {old} answers by the old index, {new} by the new, {} client retries",
        RETRIES.load(Ordering::SeqCst)
    );
    // an index of another corpus is refused: the swapped one keeps answering
    let other = dir.path().join("other.jsonl");
    std::fs::write(&other, std::fs::read_to_string(&src).unwrap().lines().take(40).collect::<Vec<_>>().join("\n"))
        .unwrap();
    ok(r1s()
        .args(["-q", "index", "build"])
        .arg(&other)
        .arg("--out")
        .arg(&idx)
        .arg("--corpus-out")
        .arg(dir.path().join("c2"))
        .args(["--kind", "flat", "--replace", "-j", "1"]));
    cluster.cmd(&["reload"]);
    let t = Instant::now();
    while cluster.health(1)["last_reload"]["swapped"] != false {
        assert!(t.elapsed() < Duration::from_secs(30), "no refusal: {}", cluster.health(1)["last_reload"]);
        std::thread::sleep(Duration::from_millis(50));
    }
    let h = cluster.health(1);
    assert!(h["last_reload"]["message"].as_str().unwrap().contains("another corpus"), "{h}");
    assert_eq!(h["index_id"], new_id.as_str());
    assert_eq!(answers_alone(&cluster.url(None), &bodies[..2]), fresh[..2]);

    // 3. SIGTERM drains: a request in flight when the replica is told to stop is answered whole
    let many: Vec<String> = questions.iter().cycle().take(300).cloned().collect();
    let big = serde_json::json!({"queries": many, "topk": 3}).to_string();
    let pid = cluster.pid("2");
    let url = format!("{}/retrieve", cluster.url(Some(2)));
    let inflight = std::thread::spawn(move || {
        reqwest::blocking::Client::new().post(url).body(big).timeout(Duration::from_secs(60)).send().unwrap()
    });
    std::thread::sleep(Duration::from_millis(150));
    kill(pid, "-TERM");
    let reply = inflight.join().unwrap();
    assert_eq!(reply.status(), 200);
    let v: serde_json::Value = reply.json().unwrap();
    assert_eq!(v["result"].as_array().unwrap().len(), 300);
    let t = Instant::now();
    while alive(pid) {
        assert!(t.elapsed() < Duration::from_secs(30), "replica 2 did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.wait_seen(2, "DOWN");
    cluster.cmd(&["restart", "2"]);
    cluster.wait_seen(2, "UP");

    // 4. clients that hang up: their queued work is skipped, nothing stays queued, and rounds of
    //    them do not grow the replica's memory
    let url = format!("{}/retrieve", cluster.url(Some(1)));
    let body = Arc::new(serde_json::json!({"queries": questions, "topk": 3}).to_string());
    let rss = |pid: i32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let replica = cluster.pid("1");
    let mut resident = Vec::new();
    for _round in 0..3 {
        let quitters: Vec<_> = (0..8)
            .map(|_| {
                let (url, body) = (url.clone(), body.clone());
                std::thread::spawn(move || {
                    let c = reqwest::blocking::Client::new();
                    for _ in 0..5 {
                        let _ = c.post(&url).body(body.to_string()).timeout(Duration::from_millis(30)).send();
                    }
                })
            })
            .collect();
        for q in quitters {
            q.join().unwrap();
        }
        let t = Instant::now();
        while cluster.health(1)["queued_queries"] != 0 {
            assert!(t.elapsed() < Duration::from_secs(30), "work of gone clients stays queued");
            std::thread::sleep(Duration::from_millis(50));
        }
        resident.push(rss(replica));
    }
    // (the first round warms up; the later ones stay within 16 MiB of it)
    assert!(resident[2] <= resident[0] + 16 * 1024, "RSS kB per round of hang-ups: {resident:?}");
    let metrics = reqwest::blocking::get(format!("{}/metrics", cluster.url(Some(1)))).unwrap().text().unwrap();
    let abandoned: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("r1s_abandoned_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(abandoned > 0, "no request of a gone client was skipped:\n{metrics}");
    let pids = [cluster.pid("haproxy"), cluster.pid("1"), cluster.pid("2")];
    drop(cluster);
    for p in pids {
        assert!(!alive(p), "process {p} outlived serve-cluster stop");
    }
}

/// #32: N replicas over one Milvus: `serve-cluster` runs replicas of a Milvus index (the directory
/// holds only the manifest) behind HAProxy; a replica SIGKILLed under load loses no request and
/// every answer equals the same request answered by one replica alone. Skipped without
/// `R1S_MILVUS_URI` (tools/test starts a server and sets it) unless `R1S_REQUIRE_MILVUS=1`.
#[test]
fn serve_cluster_replicas_over_one_milvus() {
    let uri = match std::env::var("R1S_MILVUS_URI") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            assert!(
                std::env::var("R1S_REQUIRE_MILVUS").as_deref() != Ok("1"),
                "R1S_REQUIRE_MILVUS=1 without R1S_MILVUS_URI"
            );
            eprintln!("R1S_MILVUS_URI is not set: skipped");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let src = some_passages(dir.path(), 200);
    let idx = dir.path().join("milvus-idx");
    build_index(
        &src,
        &idx,
        &[
            "--kind",
            "milvus",
            "--milvus-uri",
            &uri,
            "--collection",
            "r1s_cluster_test",
            "--milvus-index",
            "FLAT",
            "--replace",
            "-j",
            "2",
        ],
    );
    let questions = bamboogle(12);
    let bodies: Arc<Vec<String>> =
        Arc::new(questions.chunks(2).map(|q| serde_json::json!({"queries": q, "topk": 3}).to_string()).collect());
    let cluster = Cluster::start(&idx, &dir.path().join("run"), free_ports());
    assert_eq!(cluster.health(1)["backend"]["up"], true, "{}", cluster.health(1));
    let alone = answers_alone(&cluster.url(Some(2)), &bodies);
    let answered = kill_and_restart_under_load(&cluster, &bodies, &alone, 4);
    assert!(answered >= 8, "only {answered} requests");
}
