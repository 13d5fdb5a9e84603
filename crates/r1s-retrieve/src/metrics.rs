//! Lock-free counters and a latency histogram for the server's `/metrics` and log lines.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Buckets of the latency histogram: bucket `b` holds latencies below `BASE_US * 2^((b + 1) / 4)`
/// microseconds (four buckets per doubling, ~19% wide), from 50 µs to about 15 minutes.
const BUCKETS: usize = 100;
const BASE_US: f64 = 50.0;

/// A fixed-bucket, log-scale latency histogram (quantiles are bucket upper bounds).
#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: std::array::from_fn(|_| AtomicU64::new(0)), sum_us: AtomicU64::new(0) }
    }
}

fn upper_us(b: usize) -> f64 {
    BASE_US * 2f64.powf((b + 1) as f64 / 4.0)
}

impl Histogram {
    /// Records one observation.
    pub fn record(&self, d: Duration) {
        let us = d.as_secs_f64() * 1e6;
        let b = if us <= BASE_US { 0 } else { ((us / BASE_US).log2() * 4.0).floor() as usize };
        self.counts[b.min(BUCKETS - 1)].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us as u64, Relaxed);
    }

    /// A copy of the bucket counts.
    pub fn snapshot(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.load(Relaxed)).collect()
    }

    /// Total observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Sum of all observations in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_us.load(Relaxed) as f64 / 1e6
    }

    /// The `q` quantile (0..=1) of the observations in `counts` (a snapshot, or the difference of two).
    pub fn quantile(counts: &[u64], q: f64) -> Option<Duration> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (b, &c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_secs_f64(upper_us(b) / 1e6));
            }
        }
        None
    }

    /// Prometheus `_bucket` lines (cumulative, `le` in seconds) for every doubling up to ~50 s, `+Inf`,
    /// `_sum` and `_count`.
    pub fn prometheus(&self, name: &str, out: &mut String) {
        use std::fmt::Write;
        let counts = self.snapshot();
        let mut cum = 0;
        for (b, c) in counts.iter().enumerate() {
            cum += c;
            if b % 4 == 3 && b < 80 {
                let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cum}", upper_us(b) / 1e6);
            }
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_seconds());
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

/// Counters of a [`crate::Batcher`].
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Requests accepted into the queue.
    pub requests: AtomicU64,
    /// Queries in accepted requests.
    pub queries: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected: AtomicU64,
    /// Requests whose caller had gone (timed out) before their batch ran: skipped.
    pub abandoned: AtomicU64,
    /// Requests answered with an error.
    pub failed: AtomicU64,
    /// Embed + search batches run.
    pub batches: AtomicU64,
    /// Queries in those batches.
    pub batched_queries: AtomicU64,
    /// Time from submission to reply.
    pub latency: Histogram,
}
