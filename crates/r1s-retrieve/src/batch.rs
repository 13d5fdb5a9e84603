//! Micro-batching: concurrent requests are queued, coalesced into one embed + search call on
//! dedicated threads, and their answers split back.
//!
//! The queue is bounded by the number of waiting queries: a request that does not fit is refused at
//! once ([`SubmitError::Full`]) instead of piling up until clients time out. A worker takes the oldest
//! request, then every queued request with the same `k` that fits in `max_batch` queries; when the
//! previous batch held several requests (clients are concurrent) it waits up to `max_wait` from the
//! oldest request's arrival for more. A lone client therefore never waits, and a backlog is
//! drained in full batches. Requests whose caller has gone are skipped.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use r1s_core::{Hit, Retriever};
use tokio::sync::oneshot;

use crate::metrics::BatchStats;

/// Settings of a [`Batcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    /// Coalesce concurrent requests (off: each request is its own batch).
    pub coalesce: bool,
    /// Most queries in one batch (a larger request runs alone).
    pub max_batch: usize,
    /// Longest wait for more requests, counted from the oldest request's arrival.
    pub max_wait: Duration,
    /// Most queries waiting in the queue; beyond it requests are refused.
    pub max_queued: usize,
    /// Worker threads (each runs whole batches; the embedder and index parallelise inside).
    pub workers: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            coalesce: true,
            max_batch: 256,
            max_wait: Duration::from_millis(3),
            max_queued: 16_384,
            workers: 1,
        }
    }
}

/// The answer to one request: hits per query, or why its batch failed.
pub type Reply = Result<Vec<Vec<Hit>>, Failed>;

/// Why a batch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub message: String,
    /// A backend of the retriever is unavailable for now ([`Retriever::is_unavailable`]): the
    /// request may succeed when retried.
    pub unavailable: bool,
}

/// Why a request was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue holds too many queries; try again later.
    #[error("the queue is full ({queued} queries waiting, limit {limit}); retry later")]
    Full { queued: usize, limit: usize },
    /// The batcher is shutting down.
    #[error("shutting down")]
    Closed,
}

struct Job {
    queries: Vec<String>,
    k: usize,
    at: Instant,
    reply: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    queued: usize,
    closed: bool,
    /// Requests in the last batch taken: more than one means clients are concurrent.
    last_batch_jobs: usize,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    cfg: BatchConfig,
    stats: Arc<BatchStats>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // a worker never panics while holding the lock; recover the state if one did
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs a [`Retriever`] on dedicated threads fed by a bounded queue (see the module docs).
pub struct Batcher {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("cfg", &self.shared.cfg).field("workers", &self.workers.len()).finish()
    }
}

impl Batcher {
    /// Starts the worker threads.
    pub fn start<R: Retriever + 'static>(retriever: Arc<R>, cfg: BatchConfig) -> std::io::Result<Batcher> {
        let cfg = BatchConfig { max_batch: cfg.max_batch.max(1), workers: cfg.workers.max(1), ..cfg };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            cfg,
            stats: Arc::new(BatchStats::default()),
        });
        let mut workers = Vec::new();
        for n in 0..shared.cfg.workers {
            let (shared, retriever) = (shared.clone(), retriever.clone());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("r1s-retrieve-{n}"))
                    .spawn(move || worker(&shared, retriever.as_ref()))?,
            );
        }
        Ok(Batcher { shared, workers })
    }

    /// Queues a request; the receiver yields its reply.
    pub fn submit(&self, queries: Vec<String>, k: usize) -> Result<oneshot::Receiver<Reply>, SubmitError> {
        let (tx, rx) = oneshot::channel();
        let n = queries.len();
        {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(SubmitError::Closed);
            }
            let limit = self.shared.cfg.max_queued;
            if st.queued > 0 && st.queued + n > limit {
                self.shared.stats.rejected.fetch_add(1, Relaxed);
                return Err(SubmitError::Full { queued: st.queued, limit });
            }
            st.queued += n;
            st.queue.push_back(Job { queries, k, at: Instant::now(), reply: tx });
        }
        self.shared.stats.requests.fetch_add(1, Relaxed);
        self.shared.stats.queries.fetch_add(n as u64, Relaxed);
        self.shared.wake.notify_all();
        Ok(rx)
    }

    /// Queries waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.shared.lock().queued
    }

    /// The counters.
    pub fn stats(&self) -> &BatchStats {
        &self.shared.stats
    }

    /// The settings in force.
    pub fn config(&self) -> &BatchConfig {
        &self.shared.cfg
    }

    /// Refuses new requests, answers every queued one, and stops the workers.
    pub fn shutdown(mut self) {
        self.close_and_join();
    }

    fn close_and_join(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.close_and_join();
    }
}

/// Takes the next batch: the oldest job plus every queued job with the same k that fits.
fn next_batch(shared: &Shared) -> Option<Vec<Job>> {
    let cfg = &shared.cfg;
    let mut st = shared.lock();
    while st.queue.is_empty() {
        if st.closed {
            return None;
        }
        st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
    }
    let first = st.queue.pop_front()?;
    st.queued -= first.queries.len();
    let (k, deadline) = (first.k, first.at + cfg.max_wait);
    let mut total = first.queries.len();
    let mut batch = vec![first];
    if cfg.coalesce {
        let wait = st.last_batch_jobs > 1;
        loop {
            let mut i = 0;
            while i < st.queue.len() && total < cfg.max_batch {
                let j = &st.queue[i];
                if j.k == k && total + j.queries.len() <= cfg.max_batch {
                    let Some(j) = st.queue.remove(i) else { break };
                    st.queued -= j.queries.len();
                    total += j.queries.len();
                    batch.push(j);
                } else {
                    i += 1;
                }
            }
            let now = Instant::now();
            if !wait || total >= cfg.max_batch || st.closed || now >= deadline {
                break;
            }
            st = shared.wake.wait_timeout(st, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
    st.last_batch_jobs = batch.len();
    Some(batch)
}

fn worker<R: Retriever>(shared: &Shared, retriever: &R) {
    let stats = &shared.stats;
    while let Some(mut batch) = next_batch(shared) {
        let before = batch.len();
        batch.retain(|j| !j.reply.is_closed());
        stats.abandoned.fetch_add((before - batch.len()) as u64, Relaxed);
        if batch.is_empty() {
            continue;
        }
        let k = batch[0].k;
        let queries: Vec<&str> = batch.iter().flat_map(|j| j.queries.iter().map(String::as_str)).collect();
        stats.batches.fetch_add(1, Relaxed);
        stats.batched_queries.fetch_add(queries.len() as u64, Relaxed);
        // a panicking retriever must not take the worker (and every later request) down with it
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| retriever.retrieve(&queries, k)));
        drop(queries);
        let mut hits = match result {
            Ok(Ok(hits)) => hits.into_iter(),
            Ok(Err(e)) => {
                fail(shared, batch, &e.to_string(), R::is_unavailable(&e));
                continue;
            }
            Err(_) => {
                fail(shared, batch, "the retriever panicked", false);
                continue;
            }
        };
        for job in batch {
            let mine: Vec<Vec<Hit>> = hits.by_ref().take(job.queries.len()).collect();
            stats.latency.record(job.at.elapsed());
            let reply = if mine.len() == job.queries.len() {
                Ok(mine)
            } else {
                stats.failed.fetch_add(1, Relaxed);
                Err(Failed {
                    message: "the retriever returned fewer result lists than queries".to_owned(),
                    unavailable: false,
                })
            };
            let _ = job.reply.send(reply);
        }
    }
}

/// Answers every job of a failed batch with `message`.
fn fail(shared: &Shared, batch: Vec<Job>, message: &str, unavailable: bool) {
    if unavailable {
        log::warn!("retrieval unavailable for a batch of {} requests: {message}", batch.len());
    } else {
        log::error!("retrieval failed for a batch of {} requests: {message}", batch.len());
    }
    for job in batch {
        shared.stats.failed.fetch_add(1, Relaxed);
        shared.stats.latency.record(job.at.elapsed());
        let _ = job.reply.send(Err(Failed { message: message.to_owned(), unavailable }));
    }
}
