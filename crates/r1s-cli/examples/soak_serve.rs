//! The soak of `tools/soak-serve`: verl-like load against a running `tools/serve-cluster` for a
//! given time, sampled every interval: requests/s, latency p50/p99, 5xx answers and client
//! retries, and per process (each replica, HAProxy) its resident memory and open file descriptors;
//! optionally one replica SIGKILLed and restarted mid-way. Writes `soak.jsonl` (one line per
//! interval), `soak.md` (the table and the summary) and `soak.png` (the per-interval curves) into
//! --out.
//!
//! cargo run --release -p r1s-cli --example soak_serve -- --run RUN_DIR --minutes 30 --out OUT
//!     [--interval-s 60] [--clients 16] [--per-request 4] [--kill-at-min 15] [--questions FILE]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Args {
    run: PathBuf,
    out: PathBuf,
    minutes: f64,
    interval_s: f64,
    clients: usize,
    per_request: usize,
    kill_at_min: Option<f64>,
    questions: PathBuf,
    script: PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        run: PathBuf::new(),
        out: PathBuf::from("soak"),
        minutes: 30.0,
        interval_s: 60.0,
        clients: 16,
        per_request: 4,
        kill_at_min: None,
        questions: PathBuf::new(),
        script: PathBuf::from("tools/serve-cluster"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num =
            |v: String, f: &str| v.parse::<f64>().ok().filter(|x| *x > 0.0).ok_or(format!("{f}: a positive number"));
        match flag.as_str() {
            "--run" => a.run = value()?.into(),
            "--out" => a.out = value()?.into(),
            "--minutes" => a.minutes = num(value()?, "--minutes")?,
            "--interval-s" => a.interval_s = num(value()?, "--interval-s")?,
            "--clients" => a.clients = num(value()?, "--clients")? as usize,
            "--per-request" => a.per_request = num(value()?, "--per-request")? as usize,
            "--kill-at-min" => a.kill_at_min = Some(num(value()?, "--kill-at-min")?),
            "--questions" => a.questions = value()?.into(),
            "--script" => a.script = value()?.into(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.run.as_os_str().is_empty() || a.questions.as_os_str().is_empty() {
        return Err("--run (the serve-cluster state directory) and --questions (JSONL) are required".into());
    }
    Ok(a)
}

/// The cluster's HAProxy port and replica count, from serve-cluster's state file.
fn cluster(run: &Path) -> Result<(u16, usize), String> {
    let env = std::fs::read_to_string(run.join("cluster.env")).map_err(|e| format!("{}: {e}", run.display()))?;
    let field = |name: &str| {
        env.lines()
            .find_map(|l| l.split_once(&format!(" {name}=\"")).map(|(_, v)| v.trim_end_matches('"').to_owned()))
            .ok_or(format!("no {name} in cluster.env"))
    };
    let port = field("PORT")?.parse().map_err(|e| format!("PORT: {e}"))?;
    let replicas = field("REPLICAS")?.parse().map_err(|e| format!("REPLICAS: {e}"))?;
    Ok((port, replicas))
}

fn pid(run: &Path, name: &str) -> Option<i32> {
    std::fs::read_to_string(run.join(format!("{name}.pid"))).ok()?.trim().parse().ok()
}

/// Resident MiB and open descriptors of `pid` (Linux's /proc).
fn process(pid: i32) -> Option<(f64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((kb / 1024.0, fds))
}

#[derive(Default)]
struct Window {
    latencies_ms: Mutex<Vec<f64>>,
    http_5xx: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak_serve: {e}");
            std::process::exit(2);
        }
    };
    let (port, replicas) = cluster(&a.run).unwrap_or_else(|e| {
        eprintln!("soak_serve: {e}");
        std::process::exit(2)
    });
    let questions: Vec<String> = std::fs::read_to_string(&a.questions)
        .expect("reading --questions")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["question"].as_str().map(str::to_owned))
        .collect();
    assert!(!questions.is_empty(), "no questions in {}", a.questions.display());
    std::fs::create_dir_all(&a.out).expect("creating --out");
    let url = format!("http://127.0.0.1:{port}/retrieve");
    let window = Arc::new(Mutex::new(Arc::new(Window::default())));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..a.clients)
        .map(|k| {
            let (url, window, stop, questions) = (url.clone(), window.clone(), stop.clone(), questions.clone());
            let per = a.per_request;
            std::thread::spawn(move || {
                let c = reqwest::blocking::Client::new();
                let mut next = k * per;
                while !stop.load(Ordering::SeqCst) {
                    let q: Vec<&String> = (0..per).map(|j| &questions[(next + j) % questions.len()]).collect();
                    next += per * 7 + 1;
                    let body = serde_json::json!({"queries": q, "topk": 3}).to_string();
                    let t = Instant::now();
                    let mut delay = Duration::from_millis(100);
                    let mut done = false;
                    for attempt in 0..10 {
                        let w = window.lock().unwrap().clone();
                        if attempt > 0 {
                            w.retries.fetch_add(1, Ordering::Relaxed);
                        }
                        let answered = match c.post(&url).body(body.clone()).timeout(Duration::from_secs(30)).send() {
                            Ok(r) if r.status().is_server_error() => {
                                w.http_5xx.fetch_add(1, Ordering::Relaxed);
                                false
                            }
                            Ok(r) => r.status() == 200 && r.bytes().is_ok(),
                            Err(_) => false,
                        };
                        if answered {
                            w.latencies_ms.lock().unwrap().push(t.elapsed().as_secs_f64() * 1e3);
                            done = true;
                            break;
                        }
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    if !done {
                        window.lock().unwrap().failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    let names: Vec<String> =
        (1..=replicas).map(|i| format!("replica-{i}")).chain(std::iter::once("haproxy".to_owned())).collect();
    let started = Instant::now();
    let total = Duration::from_secs_f64(a.minutes * 60.0);
    let interval = Duration::from_secs_f64(a.interval_s);
    let kill_at = a.kill_at_min.map(|m| Duration::from_secs_f64(m * 60.0));
    let mut killed = false;
    let mut rows: Vec<serde_json::Value> = Vec::new();
    let mut jsonl = String::new();
    let mut tick = 1u32;
    while started.elapsed() < total {
        let until = interval * tick;
        let mut kill_now = false;
        while started.elapsed() < until.min(total) {
            if let Some(k) = kill_at
                && !killed
                && started.elapsed() >= k
            {
                killed = true;
                kill_now = true;
                if let Some(p) = pid(&a.run, "replica-1") {
                    // SAFETY: a signal to a PID read from the cluster's own state file
                    unsafe { libc::kill(p, libc::SIGKILL) };
                    eprintln!(
                        "soak_serve: SIGKILL replica 1 (PID {p}) at {:.1} min",
                        started.elapsed().as_secs_f64() / 60.0
                    );
                }
                std::thread::sleep(Duration::from_secs(5));
                let s = std::process::Command::new(&a.script).args(["restart", "1", "--run"]).arg(&a.run).status();
                eprintln!("soak_serve: replica 1 restarted ({s:?})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let w = std::mem::replace(&mut *window.lock().unwrap(), Arc::new(Window::default()));
        let secs = a.interval_s.min(started.elapsed().as_secs_f64() - a.interval_s * f64::from(tick - 1));
        let mut lat = w.latencies_ms.lock().unwrap().clone();
        lat.sort_by(f64::total_cmp);
        let mut procs = serde_json::Map::new();
        for n in &names {
            if let Some((rss, fds)) = pid(&a.run, n).and_then(process) {
                procs.insert(n.clone(), serde_json::json!({"rss_mib": (rss * 10.0).round() / 10.0, "fds": fds}));
            }
        }
        let row = serde_json::json!({
            "minute": f64::from(tick) * a.interval_s / 60.0,
            "requests": lat.len(),
            "requests_per_s": lat.len() as f64 / secs.max(1e-9),
            "p50_ms": percentile(&lat, 0.50),
            "p99_ms": percentile(&lat, 0.99),
            "http_5xx": w.http_5xx.load(Ordering::Relaxed),
            "client_retries": w.retries.load(Ordering::Relaxed),
            "failed": w.failed.load(Ordering::Relaxed),
            "killed_replica_1": kill_now,
            "processes": procs,
        });
        eprintln!("soak_serve: {row}");
        jsonl.push_str(&format!("{row}\n"));
        rows.push(row);
        tick += 1;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.join();
    }
    std::fs::write(a.out.join("soak.jsonl"), &jsonl).expect("writing soak.jsonl");
    let md = report(&rows, &names, &a);
    std::fs::write(a.out.join("soak.md"), &md).expect("writing soak.md");
    println!("{md}");
    plot(&rows, &names, &a.out.join("soak.png"), &a);
}

/// The table and the summary: RSS flatness per process after warm-up (the first two intervals;
/// for the killed replica, two intervals after its restart), 5xx outside the kill.
fn report(rows: &[serde_json::Value], names: &[String], a: &Args) -> String {
    let mut md = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_default();
    md.push_str(&format!(
        "{} min, {} verl-like clients ({} queries per request, retry 5xx with a growing delay, 30 s timeout), {}; {}\n\n",
        a.minutes,
        a.clients,
        a.per_request,
        a.kill_at_min.map_or("no kill".to_owned(), |m| format!("replica 1 SIGKILLed at {m} min and restarted 5 s later")),
        cpu
    ));
    md.push_str("| minute | req/s | p50 ms | p99 ms | 5xx | retries | failed |");
    for n in names {
        md.push_str(&format!(" {n} RSS MiB / fds |"));
    }
    md.push_str("\n|---:|---:|---:|---:|---:|---:|---:|");
    md.push_str(&"---:|".repeat(names.len()));
    md.push('\n');
    for r in rows {
        md.push_str(&format!(
            "| {:.1}{} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            r["minute"].as_f64().unwrap_or(0.0),
            if r["killed_replica_1"] == true { " (kill)" } else { "" },
            r["requests_per_s"].as_f64().unwrap_or(0.0),
            r["p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["http_5xx"],
            r["client_retries"],
            r["failed"]
        ));
        for n in names {
            let p = &r["processes"][n];
            md.push_str(&format!(" {} / {} |", p["rss_mib"], p["fds"]));
        }
        md.push('\n');
    }
    let kill_row = rows.iter().position(|r| r["killed_replica_1"] == true);
    md.push_str("\nRSS after warm-up, (max − min) / min:");
    for n in names {
        let from = if n == "replica-1" { kill_row.map_or(2, |k| k + 2) } else { 2 };
        let v: Vec<f64> = rows.iter().skip(from).filter_map(|r| r["processes"][n]["rss_mib"].as_f64()).collect();
        if v.len() >= 2 {
            let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
            md.push_str(&format!(" {n} {:.1}% ({lo:.0}–{hi:.0} MiB);", (hi - lo) / lo * 100.0));
        }
    }
    let outside: u64 = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| kill_row.is_none_or(|k| *i != k))
        .map(|(_, r)| r["http_5xx"].as_u64().unwrap_or(0))
        .sum();
    let failed: u64 = rows.iter().map(|r| r["failed"].as_u64().unwrap_or(0)).sum();
    let requests: u64 = rows.iter().map(|r| r["requests"].as_u64().unwrap_or(0)).sum();
    md.push_str(&format!(
        "\n{requests} requests answered, {failed} failed for good; 5xx seen by clients outside the kill's interval: {outside}\n"
    ));
    md
}

fn plot(rows: &[serde_json::Value], names: &[String], out: &Path, a: &Args) {
    use r1s_train::plot::{SeriesPanel, plot_series};
    let series = |f: &dyn Fn(&serde_json::Value) -> Option<f64>| -> Vec<(f64, f64)> {
        rows.iter().filter_map(|r| Some((r["minute"].as_f64()?, f(r)?))).collect()
    };
    let per_process = |key: &'static str| -> Vec<(String, Vec<(f64, f64)>)> {
        names.iter().map(|n| (n.clone(), series(&|r| r["processes"][n][key].as_f64()))).collect()
    };
    let panels = [
        SeriesPanel {
            title: "requests/s".into(),
            lines: vec![("through HAProxy".into(), series(&|r| r["requests_per_s"].as_f64()))],
        },
        SeriesPanel {
            title: "latency (ms, with retries)".into(),
            lines: vec![
                ("p50".into(), series(&|r| r["p50_ms"].as_f64())),
                ("p99".into(), series(&|r| r["p99_ms"].as_f64())),
            ],
        },
        SeriesPanel { title: "resident memory (MiB)".into(), lines: per_process("rss_mib") },
        SeriesPanel { title: "open file descriptors".into(), lines: per_process("fds") },
        SeriesPanel {
            title: "5xx seen by clients / client retries / failed".into(),
            lines: vec![
                ("5xx".into(), series(&|r| r["http_5xx"].as_f64())),
                ("retries".into(), series(&|r| r["client_retries"].as_f64())),
                ("failed".into(), series(&|r| r["failed"].as_f64())),
            ],
        },
    ];
    let title = format!("r1s serve soak: 2 replicas behind HAProxy, {} clients", a.clients);
    match plot_series(out, &title, "minute", &panels) {
        Ok(()) => eprintln!("soak_serve: {}", out.display()),
        Err(e) => eprintln!("soak_serve: no plot: {e}"),
    }
}
