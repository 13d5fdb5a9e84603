//! The batcher alone, with a scripted retriever (a test double of the retrieval step only: the hits
//! echo their query, so any mix-up between requests shows).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use r1s_core::{Hit, Retriever};
use r1s_retrieve::{BatchConfig, Batcher, SubmitError};

#[derive(Debug, thiserror::Error)]
#[error("scripted failure")]
struct Failure;

/// Returns `k` hits per query whose contents are the query; fails on "fail", panics on "panic".
#[derive(Default)]
struct Echo {
    calls: AtomicUsize,
    delay: Duration,
}

impl Retriever for Echo {
    type Error = Failure;
    fn retrieve(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>, Failure> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        if queries.contains(&"fail") {
            return Err(Failure);
        }
        assert!(!queries.contains(&"panic"), "scripted panic");
        Ok(queries
            .iter()
            .map(|q| {
                (0..k)
                    .map(|i| Hit {
                        row: i as u64,
                        id: i.to_string(),
                        score: 1.0,
                        title: String::new(),
                        contents: q.to_string(),
                    })
                    .collect()
            })
            .collect())
    }
}

fn block<T>(rx: tokio::sync::oneshot::Receiver<T>) -> T {
    rx.blocking_recv().expect("a reply")
}

#[test]
fn many_threads_get_their_own_replies_and_requests_coalesce() {
    let echo = Arc::new(Echo { delay: Duration::from_millis(2), ..Default::default() });
    let b = Arc::new(Batcher::start(echo.clone(), BatchConfig::default()).unwrap());
    let threads: Vec<_> = (0..32)
        .map(|t| {
            let b = b.clone();
            std::thread::spawn(move || {
                for n in 0..20 {
                    let qs: Vec<String> = (0..1 + n % 3).map(|i| format!("t{t} n{n} q{i}")).collect();
                    let k = 1 + t % 2;
                    let reply = block(b.submit(qs.clone(), k).unwrap()).unwrap();
                    assert_eq!(reply.len(), qs.len());
                    for (q, hits) in qs.iter().zip(reply) {
                        assert_eq!(hits.len(), k);
                        assert!(hits.iter().all(|h| &h.contents == q));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let calls = echo.calls.load(Ordering::SeqCst);
    assert_eq!(b.stats().requests.load(Ordering::SeqCst), 640);
    assert!(calls < 640, "{calls} batches for 640 concurrent requests: nothing was coalesced");
}

#[test]
fn failures_and_panics_answer_that_batch_and_the_worker_goes_on() {
    let b = Batcher::start(Arc::new(Echo::default()), BatchConfig { coalesce: false, ..Default::default() }).unwrap();
    assert_eq!(block(b.submit(vec!["fail".into()], 1).unwrap()).unwrap_err().message, "scripted failure");
    assert!(block(b.submit(vec!["panic".into()], 1).unwrap()).unwrap_err().message.contains("panicked"));
    assert_eq!(block(b.submit(vec!["fine".into()], 2).unwrap()).unwrap()[0].len(), 2);
    assert_eq!(b.stats().failed.load(Ordering::SeqCst), 2);
}

#[test]
fn a_full_queue_refuses_and_shutdown_drains() {
    let echo = Arc::new(Echo { delay: Duration::from_millis(50), ..Default::default() });
    let b = Batcher::start(echo, BatchConfig { max_queued: 4, coalesce: false, ..Default::default() }).unwrap();
    let first = b.submit(vec!["a".into()], 1).unwrap();
    std::thread::sleep(Duration::from_millis(10)); // the worker holds "a"; the queue is empty
    let queued: Vec<_> = (0..4).map(|i| b.submit(vec![format!("q{i}")], 1).unwrap()).collect();
    assert!(matches!(b.submit(vec!["x".into()], 1), Err(SubmitError::Full { queued: 4, limit: 4 })));
    assert_eq!(b.stats().rejected.load(Ordering::SeqCst), 1);
    b.shutdown();
    assert!(block(first).is_ok());
    for (i, rx) in queued.into_iter().enumerate() {
        assert_eq!(block(rx).unwrap()[0][0].contents, format!("q{i}"));
    }
}

#[test]
fn callers_that_gave_up_are_skipped() {
    let echo = Arc::new(Echo { delay: Duration::from_millis(50), ..Default::default() });
    let b = Batcher::start(echo.clone(), BatchConfig { coalesce: false, ..Default::default() }).unwrap();
    let first = b.submit(vec!["a".into()], 1).unwrap();
    std::thread::sleep(Duration::from_millis(10));
    drop(b.submit(vec!["gone".into()], 1).unwrap());
    assert!(block(first).is_ok());
    assert!(block(b.submit(vec!["b".into()], 1).unwrap()).is_ok());
    assert_eq!(echo.calls.load(Ordering::SeqCst), 2);
    assert_eq!(b.stats().abandoned.load(Ordering::SeqCst), 1);
}
