//! Terminal progress bars for the library's [`Progress`] reports.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use r1s_core::{Progress, Unit};

/// Draws a bar on a terminal; elsewhere prints one summary line per stage.
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
    items: AtomicU64,
    started: Mutex<Instant>,
    interactive: bool,
    quiet: bool,
    stage: Mutex<String>,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        Bars {
            bar: Mutex::new(None),
            items: AtomicU64::new(0),
            started: Mutex::new(Instant::now()),
            interactive: std::io::stderr().is_terminal() && !quiet,
            quiet,
            stage: Mutex::new(String::new()),
        }
    }
}

impl Bars {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Progress for Bars {
    fn start(&self, stage: &str, total: Option<u64>, unit: Unit) {
        self.items.store(0, Ordering::Relaxed);
        *lock(&self.started) = Instant::now();
        *lock(&self.stage) = stage.to_owned();
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
        if let Some(b) = lock(&self.bar).as_ref() {
            b.inc(delta);
        }
    }

    fn items(&self, delta: u64) {
        let n = self.items.fetch_add(delta, Ordering::Relaxed) + delta;
        if let Some(b) = lock(&self.bar).as_ref() {
            let secs = lock(&self.started).elapsed().as_secs_f64().max(1e-3);
            b.set_message(format!("{n} pages, {:.0} pages/s", n as f64 / secs));
        }
    }

    fn finish(&self, summary: &str) {
        if let Some(b) = lock(&self.bar).take() {
            b.finish_and_clear();
        }
        if !self.quiet {
            let secs = lock(&self.started).elapsed().as_secs_f64();
            eprintln!("{}: {summary} ({secs:.1} s)", lock(&self.stage));
        }
    }
}
