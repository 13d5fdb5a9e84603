//! Progress for the library's [`Progress`] reports: a bar on a terminal; elsewhere (CI logs,
//! `| tee`, nohup) a plain line per stage at a steady interval, so that a long stage says it is
//! alive, and the one-line summary at the end in both cases.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use r1s_core::{Progress, Unit};

use crate::Globals;

/// No total known (a stage that counts without an end).
const NO_TOTAL: u64 = u64::MAX;

/// The stage being reported (shared with the line printer's thread).
struct Stage {
    name: Mutex<String>,
    unit: Mutex<Unit>,
    total: AtomicU64,
    pos: AtomicU64,
    items: AtomicU64,
    /// When the stage started, and the position counted from: a resumed job's first jump (made
    /// before any work) is not work done at the stage's rate.
    started: Mutex<(Instant, u64)>,
    /// Whether a stage is between `start` and `finish`.
    active: Mutex<bool>,
    /// Whether the stage's first `advance` came.
    advanced: std::sync::atomic::AtomicBool,
}

/// Draws a bar on a terminal; elsewhere prints a progress line every `--progress-every` seconds
/// while a stage runs; a summary line per stage in both cases, unless quiet.
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
    stage: Arc<Stage>,
    interactive: bool,
    quiet: bool,
    /// Dropping it stops the line printer.
    _ticker: Option<Sender<()>>,
}

impl Bars {
    pub fn new(g: &Globals) -> Self {
        use std::io::IsTerminal;
        let interactive = std::io::stderr().is_terminal() && !g.quiet;
        let stage = Arc::new(Stage {
            name: Mutex::new(String::new()),
            unit: Mutex::new(Unit::Items),
            total: AtomicU64::new(NO_TOTAL),
            pos: AtomicU64::new(0),
            items: AtomicU64::new(0),
            started: Mutex::new((Instant::now(), 0)),
            active: Mutex::new(false),
            advanced: std::sync::atomic::AtomicBool::new(false),
        });
        let every = Duration::try_from_secs_f64(g.progress_every).ok().filter(|d| !d.is_zero());
        let ticker = match every {
            Some(every) if !interactive && !g.quiet => Some(spawn_ticker(stage.clone(), every)),
            _ => None,
        };
        Bars { bar: Mutex::new(None), stage, interactive, quiet: g.quiet, _ticker: ticker }
    }

    /// Prints a line above the bar (or on its own without one), unless quiet.
    pub fn println(&self, line: &str) {
        if self.quiet {
            return;
        }
        match lock(&self.bar).as_ref() {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
}

/// A thread printing `stage`'s line every `every` while a stage is active; it ends when the
/// returned sender is dropped.
fn spawn_ticker(stage: Arc<Stage>, every: Duration) -> Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new().name("r1s-progress".into()).spawn(move || {
        loop {
            match rx.recv_timeout(every) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            if *lock(&stage.active) {
                eprintln!("{}", stage.line());
            }
        }
    });
    if let Err(e) = spawned {
        log::warn!("no progress lines: cannot start their thread: {e}");
    }
    tx
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Stage {
    /// `embed: 4,096 of 12,324 (33%) in 1m10s, 58.5/s, about 2m21s left` (bytes as MB, a slow
    /// stage's rate as seconds each).
    fn line(&self) -> String {
        let (t0, base) = *lock(&self.started);
        let secs = t0.elapsed().as_secs_f64();
        let pos = self.pos.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let unit = *lock(&self.unit);
        let rate = pos.saturating_sub(base) as f64 / secs.max(1e-3);
        let mut s = format!("{}: {}", lock(&self.name), amount(pos, unit));
        if total != NO_TOTAL {
            let pct = if total == 0 { 100.0 } else { 100.0 * pos as f64 / total as f64 };
            s += &format!(" of {} ({pct:.0}%)", amount(total, unit));
        }
        s += &format!(" in {}", clock(secs));
        // no rate before anything moved (a stage that advances in large steps, e.g. eval batches)
        if pos > base {
            match unit {
                Unit::Bytes => s += &format!(", {:.1} MB/s", rate / 1e6),
                Unit::Items => s += &format!(", {}", rate_text(rate)),
            }
        }
        let items = self.items.load(Ordering::Relaxed);
        if items > 0 {
            s += &format!(", {} pages", thousands(items));
        }
        if total != NO_TOTAL && rate > 0.0 && pos < total {
            s += &format!(", about {} left", clock((total - pos) as f64 / rate));
        }
        s
    }
}

fn amount(n: u64, unit: Unit) -> String {
    match unit {
        Unit::Bytes => format!("{:.1} MB", n as f64 / 1e6),
        Unit::Items => thousands(n),
    }
}

/// Items per second, or seconds per item below one a second.
fn rate_text(r: f64) -> String {
    match r {
        r if r >= 100.0 => format!("{}/s", thousands(r.round() as u64)),
        r if r >= 1.0 => format!("{r:.1}/s"),
        r if r > 0.0 => format!("{:.1} s each", 1.0 / r),
        _ => "0/s".to_owned(),
    }
}

/// `12,324`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `45s`, `2m05s`, `1h02m`.
fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

impl Progress for Bars {
    fn start(&self, stage: &str, total: Option<u64>, unit: Unit) {
        let st = &self.stage;
        st.pos.store(0, Ordering::Relaxed);
        st.items.store(0, Ordering::Relaxed);
        st.total.store(total.unwrap_or(NO_TOTAL), Ordering::Relaxed);
        *lock(&st.unit) = unit;
        *lock(&st.name) = stage.to_owned();
        *lock(&st.started) = (Instant::now(), 0);
        st.advanced.store(false, Ordering::Relaxed);
        *lock(&st.active) = true;
        if !self.interactive {
            return;
        }
        let bar = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        };
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        let pos = match unit {
            Unit::Bytes => "{bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta})",
            Unit::Items => "{human_pos}/{human_len} ({per_sec}, ETA {eta})",
        };
        let template = format!("{{spinner}} {{prefix}} [{{elapsed_precise}}] {{wide_bar}} {pos} {{msg}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(stage.to_owned());
        *lock(&self.bar) = Some(bar);
    }

    fn advance(&self, delta: u64) {
        if !self.stage.advanced.swap(true, Ordering::Relaxed) {
            // a resumed job moves to where it stopped right after `start`, before doing any work
            let mut started = lock(&self.stage.started);
            if started.0.elapsed() < Duration::from_millis(50) {
                started.1 = delta;
            }
        }
        self.stage.pos.fetch_add(delta, Ordering::Relaxed);
        if let Some(b) = lock(&self.bar).as_ref() {
            b.inc(delta);
        }
    }

    fn items(&self, delta: u64) {
        let n = self.stage.items.fetch_add(delta, Ordering::Relaxed) + delta;
        if let Some(b) = lock(&self.bar).as_ref() {
            let secs = lock(&self.stage.started).0.elapsed().as_secs_f64().max(1e-3);
            b.set_message(format!("{n} pages, {:.0} pages/s", n as f64 / secs));
        }
    }

    fn finish(&self, summary: &str) {
        *lock(&self.stage.active) = false;
        if let Some(b) = lock(&self.bar).take() {
            b.finish_and_clear();
        }
        if !self.quiet {
            let secs = lock(&self.stage.started).0.elapsed().as_secs_f64();
            eprintln!("{}: {summary} ({secs:.1} s)", lock(&self.stage.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(12_324), "12,324");
        assert_eq!(thousands(21_015_324), "21,015,324");
        assert_eq!(clock(0.4), "0s");
        assert_eq!(clock(59.6), "1m00s");
        assert_eq!(clock(125.0), "2m05s");
        assert_eq!(clock(3725.0), "1h02m");
        assert_eq!(rate_text(58.456), "58.5/s");
        assert_eq!(rate_text(1234.4), "1,234/s");
        assert_eq!(rate_text(1.0 / 90.0), "90.0 s each");
        assert_eq!(rate_text(0.0), "0/s");
    }
}
