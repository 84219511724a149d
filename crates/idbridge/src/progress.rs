//! Progress of long steps: a live line on a terminal, a plain line every few
//! seconds when piped.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    count: u64,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    /// With a known total, a bar with an ETA; otherwise a spinner.
    pub fn with_total(what: &str, total: Option<u64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let (bar, template) = match total {
                Some(t) => (ProgressBar::new(t), "{msg} [{bar:30}] {pos}/{len} ({rate}, ETA {eta})"),
                None => (ProgressBar::new_spinner(), "{spinner} {msg} {pos} objects ({rate}, {elapsed})"),
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0}/s", state.per_sec());
                    },
                ));
            }
            bar.set_message(what.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Progress { bar, what: what.to_string(), count: 0, started: now, last_line: now }
    }

    pub fn inc_by(&mut self, n: u64) {
        self.count += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if self.last_line.elapsed() >= Duration::from_secs(5) => {
                self.last_line = Instant::now();
                eprintln!("{}: {} objects, {:.0}/s", self.what, self.count, self.rate());
            }
            None => {}
        }
    }

    pub fn rate(&self) -> f64 {
        self.count as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Shows each stage of a sync cycle as a progress line.
#[derive(Debug, Default)]
pub struct StageProgress {
    current: Option<Progress>,
}

impl StageProgress {
    /// Clears the last stage's line (before a summary is printed).
    pub fn done(&mut self) {
        if let Some(p) = self.current.take() {
            p.finish();
        }
    }

    /// Objects counted in the current stage, and their rate.
    pub fn rate(&self) -> f64 {
        self.current.as_ref().map(Progress::rate).unwrap_or(0.0)
    }
}

impl sync::engine::CycleObserver for StageProgress {
    fn stage(&mut self, name: &'static str, total: Option<u64>) {
        self.done();
        self.current = Some(Progress::with_total(name, total));
    }

    fn advance(&mut self, n: u64) {
        if let Some(p) = self.current.as_mut() {
            p.inc_by(n);
        }
    }
}

impl Drop for StageProgress {
    fn drop(&mut self) {
        self.done();
    }
}
