//! `r1s serve`: the HTTP retrieval server.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use r1s_core::Cancel;

use crate::Globals;
use crate::retrieve::RetrieverArgs;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    retriever: RetrieverArgs,
    /// Address to listen on (loopback by default; 0.0.0.0 to accept other machines).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port, printed at start-up).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Passages per query when a request does not say.
    #[arg(long, default_value_t = 3)]
    topk: usize,
    /// Largest topk / k accepted (422 above).
    #[arg(long, default_value_t = 1000)]
    max_topk: usize,
    /// Most queries in one request (422 above).
    #[arg(long, default_value_t = 4096)]
    max_queries: usize,
    /// Largest request body in MiB (422 above).
    #[arg(long, default_value_t = 16)]
    max_body_mib: usize,
    /// Most queries embedded and searched together.
    #[arg(long, default_value_t = 256)]
    max_batch: usize,
    /// Longest wait for more concurrent requests before a batch runs, in milliseconds.
    #[arg(long, default_value_t = 3.0)]
    max_wait_ms: f64,
    /// Run each request on its own (no micro-batching).
    #[arg(long)]
    no_batching: bool,
    /// Most queries waiting; beyond it requests get --overload-status with Retry-After.
    #[arg(long, default_value_t = 16384)]
    queue: usize,
    /// The status of a request refused because the queue is full (with Retry-After: 1): 503, which
    /// verl's search client retries with a growing delay, or 429, which it gives up on.
    #[arg(long, default_value_t = 503, value_parser = parse_overload_status)]
    overload_status: u16,
    /// Batch worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Threads of the HTTP runtime.
    #[arg(long, default_value_t = 2)]
    http_threads: usize,
    /// Seconds between traffic log lines (0: none).
    #[arg(long, default_value_t = 10.0)]
    log_every: f64,
}

pub(crate) fn serve(a: ServeArgs, g: &Globals, cancel: &Cancel) -> anyhow::Result<()> {
    if a.topk == 0 || a.topk > a.max_topk {
        return Err(anyhow::Error::new(crate::UsageError(format!(
            "--topk {} must be from 1 to --max-topk ({}): the default of a request cannot be one the server refuses",
            a.topk, a.max_topk
        ))));
    }
    // before anything slow: a SIGHUP during start-up must not end the process (its default)
    catch_hangup();
    let t = std::time::Instant::now();
    let live = Arc::new(r1s_retrieve::Live::new(a.retriever.open()?));
    let r = live.current();
    let swaps =
        Arc::new(std::sync::Mutex::new(Swaps { info: described(&r, &a.retriever.index), reloads: 0, last: None }));
    let (rows, kind) = (r.corpus().docstore.len(), r.kind());
    let cfg = r1s_retrieve::ServeConfig {
        default_topk: a.topk,
        max_topk: a.max_topk,
        max_queries: a.max_queries,
        max_body_bytes: a.max_body_mib << 20,
        batch: r1s_retrieve::BatchConfig {
            coalesce: !a.no_batching,
            max_batch: a.max_batch,
            max_wait: std::time::Duration::from_secs_f64(a.max_wait_ms.max(0.0) / 1e3),
            max_queued: a.queue,
            workers: a.workers,
        },
        overload_status: axum_status(a.overload_status)?,
        log_every: (a.log_every > 0.0).then(|| std::time::Duration::from_secs_f64(a.log_every)),
    };
    let banner = |addr: std::net::SocketAddr| {
        format!(
            "r1s serve: listening on http://{addr} ({} index of {rows} passages, ready in {:.2} s); POST /retrieve, POST /queries, GET /health, GET /metrics",
            kind,
            t.elapsed().as_secs_f64()
        )
    };
    let served = live.clone();
    let shown = swaps.clone();
    let info: r1s_retrieve::InfoFn = Arc::new(move || shown.lock().unwrap_or_else(|e| e.into_inner()).health());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reloader = {
        let (done, live, swaps) = (done.clone(), live.clone(), swaps.clone());
        let (retriever, quiet) = (a.retriever, g.quiet);
        std::thread::Builder::new().name("r1s-reload".into()).spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if HANGUP.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    reload(&retriever, &live, &swaps, quiet);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })?
    };
    // (the old retriever must go once swapped out: nothing here keeps it)
    drop(r);
    let served = run_server(&a.host, a.port, a.http_threads, g, cancel, banner, move |listener, stopped| {
        r1s_retrieve::serve_with_info(served, listener, cfg, info, stopped)
    });
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = reloader.join();
    served?;
    if !g.quiet {
        eprintln!("r1s serve: stopped");
    }
    Ok(())
}

/// Set by SIGHUP: re-open the index.
static HANGUP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_hangup(_: libc::c_int) {
    // async-signal-safe: one atomic store
    HANGUP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// SIGHUP asks `r1s serve` to re-open its index (the daemons' convention: nginx, HAProxy), instead
/// of ending it.
fn catch_hangup() {
    // SAFETY: installs a handler that only stores to an atomic
    unsafe {
        libc::signal(libc::SIGHUP, on_hangup as *const () as libc::sighandler_t);
    }
}

/// The index facts `/health` shows, and what the reloads did.
struct Swaps {
    info: serde_json::Value,
    reloads: u64,
    /// The last reload: when (Unix seconds), whether it swapped, and what it said.
    last: Option<(u64, bool, String)>,
}

impl Swaps {
    fn health(&self) -> serde_json::Value {
        let mut v = self.info.clone();
        v["reloads"] = self.reloads.into();
        if let Some((at, swapped, message)) = &self.last {
            v["last_reload"] = serde_json::json!({"at_unix": at, "swapped": swapped, "message": message});
        }
        v
    }
}

/// `describe()` with the live index's identity ([`r1s_retrieve::live::index_id`]).
fn described(r: &r1s_retrieve::AnyRetriever, dir: &std::path::Path) -> serde_json::Value {
    let mut v = r.describe();
    let (id, built) = r1s_retrieve::live::index_id(dir);
    v["index_id"] = id.into();
    v["index_built_unix"] = built.into();
    v
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// On SIGHUP: opens `--index` again (after `index build` swapped a rebuilt index in) and, when it
/// is compatible ([`r1s_retrieve::live::compatible`]: same corpus, family and query embedder),
/// makes it the one answering; requests in flight finish on the old one. Otherwise the old one
/// keeps answering and `/health`'s `last_reload` says why.
fn reload(
    args: &RetrieverArgs,
    live: &r1s_retrieve::Live<r1s_retrieve::AnyRetriever>,
    swaps: &std::sync::Mutex<Swaps>,
    quiet: bool,
) {
    let t = std::time::Instant::now();
    let outcome = args.open().map_err(|e| format!("{e:#}")).and_then(|new| {
        r1s_retrieve::live::compatible(&live.current(), &new)?;
        Ok(new)
    });
    let mut s = swaps.lock().unwrap_or_else(|e| e.into_inner());
    let message = match outcome {
        Ok(new) => {
            let info = described(&new, &args.index);
            let message = format!(
                "now answering from index {} ({}), opened in {:.2} s",
                info["index_id"].as_str().unwrap_or_default(),
                args.index.display(),
                t.elapsed().as_secs_f64()
            );
            live.replace(new);
            s.info = info;
            s.reloads += 1;
            s.last = Some((now_unix(), true, message.clone()));
            message
        }
        Err(why) => {
            let message = format!("SIGHUP: the index was not swapped, the old one keeps answering: {why}");
            s.last = Some((now_unix(), false, message.clone()));
            message
        }
    };
    if !quiet {
        eprintln!("r1s serve: {message}");
    }
}

fn parse_overload_status(s: &str) -> Result<u16, String> {
    match s {
        "429" => Ok(429),
        "503" => Ok(503),
        other => Err(format!("{other:?}: 429 or 503")),
    }
}

fn axum_status(code: u16) -> anyhow::Result<r1s_retrieve::StatusCode> {
    Ok(r1s_retrieve::StatusCode::from_u16(code)?)
}

/// Runs the server `serve` makes on `host:port` with `threads` async threads until ctrl-c or SIGTERM
/// (ctrlc's handler sets `cancel`): then it stops accepting, finishes what is in flight and returns.
/// `banner` is printed (unless quiet) once the port is bound.
pub(crate) fn run_server<F, Fut>(
    host: &str,
    port: u16,
    threads: usize,
    g: &Globals,
    cancel: &Cancel,
    banner: impl FnOnce(std::net::SocketAddr) -> String,
    serve: F,
) -> anyhow::Result<()>
where
    F: FnOnce(tokio::net::TcpListener, std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("r1s-http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((host, port))
            .await
            .with_context(|| format!("cannot listen on {host}:{port}"))?;
        let addr = listener.local_addr()?;
        if !g.quiet {
            eprintln!("{}", banner(addr));
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Box::pin(async {
                let _ = stopped.await;
            }),
        ));
        while !cancel.is_cancelled() && !server.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let _ = stop.send(());
        server.await.context("the server task")?.context("serving")
    })
}
