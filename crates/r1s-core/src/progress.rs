//! Progress reporting and cancellation for long jobs.
//!
//! Libraries report through [`Progress`]; only the binary turns reports into terminal bars. Every
//! method has a no-op default so that a reporter implements what it shows.

use std::sync::atomic::{AtomicBool, Ordering};

/// What a progress position counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Bytes of input (a bar shows MB/s).
    Bytes,
    /// Items such as pages, passages or vectors.
    Items,
}

/// Receives progress of a long job. Implementations must be cheap: `advance` is called often.
///
/// Lifecycle: `start` once per stage, then any number of `advance` / `items` calls (possibly from
/// several threads), then `finish`. A job with several stages repeats the cycle.
pub trait Progress: Send + Sync {
    /// A stage begins. `total` is the final position when known (for an ETA).
    fn start(&self, _stage: &str, _total: Option<u64>, _unit: Unit) {}
    /// The position moved forward by `delta` units.
    fn advance(&self, _delta: u64) {}
    /// A secondary counter moved: e.g. pages done while the position counts bytes.
    fn items(&self, _delta: u64) {}
    /// The stage ended; `summary` is a one-line human summary.
    fn finish(&self, _summary: &str) {}
}

/// A reporter that shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

impl<P: Progress + ?Sized> Progress for &P {
    fn start(&self, stage: &str, total: Option<u64>, unit: Unit) {
        (**self).start(stage, total, unit)
    }
    fn advance(&self, delta: u64) {
        (**self).advance(delta)
    }
    fn items(&self, delta: u64) {
        (**self).items(delta)
    }
    fn finish(&self, summary: &str) {
        (**self).finish(summary)
    }
}

/// A cancellation flag passed explicitly to long jobs (set it from a signal handler).
#[derive(Debug, Default)]
pub struct Cancel(AtomicBool);

impl Cancel {
    /// A flag that is not set.
    pub const fn new() -> Self {
        Cancel(AtomicBool::new(false))
    }
    /// Asks the job to stop at its next check.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
    /// Whether the job was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
