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
    pub fn new(what: &str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {pos} objects ({per_sec}, {elapsed})") {
                bar.set_style(style);
            }
            bar.set_message(what.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Progress { bar, what: what.to_string(), count: 0, started: now, last_line: now }
    }

    pub fn inc(&mut self) {
        self.count += 1;
        match &self.bar {
            Some(bar) => bar.inc(1),
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

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
