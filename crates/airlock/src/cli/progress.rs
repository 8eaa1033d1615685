//! A one-line progress bar on stderr for long copies: percentage, bytes and
//! rate, redrawn at most ten times a second. Disabled, it does nothing, so
//! callers never branch on whether stderr is a terminal.

use std::io::Write;
use std::time::{Duration, Instant};

pub(super) struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    start: Instant,
    last: Option<Instant>,
    enabled: bool,
    finished: bool,
}

const WIDTH: usize = 30;

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

impl Progress {
    pub(super) fn new(label: String, total: Option<u64>, enabled: bool) -> Self {
        Self { label, total, done: 0, start: Instant::now(), last: None, enabled, finished: false }
    }

    pub(super) fn add(&mut self, n: u64) {
        self.done += n;
        if !self.enabled || self.finished {
            return;
        }
        if self.total.is_some_and(|t| self.done >= t) {
            self.finish();
        } else if self.last.is_none_or(|l| l.elapsed() >= Duration::from_millis(100)) {
            self.draw();
        }
    }

    /// The line as it stands now.
    fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let rate = mib(self.done) / secs;
        match self.total {
            Some(t) if t > 0 => {
                let frac = (self.done as f64 / t as f64).min(1.0);
                let filled = (frac * WIDTH as f64) as usize;
                let bar: String = (0..WIDTH).map(|i| if i < filled { '#' } else { '.' }).collect();
                format!("{} [{bar}] {:>3.0}% {:.1}/{:.1} MiB {:.1} MiB/s", self.label, frac * 100.0, mib(self.done), mib(t), rate)
            }
            _ => format!("{} {:.1} MiB {:.1} MiB/s", self.label, mib(self.done), rate),
        }
    }

    fn draw(&mut self) {
        self.last = Some(Instant::now());
        let mut e = std::io::stderr().lock();
        // `\r` and clear-to-end-of-line: redraw in place.
        let _ = write!(e, "\r{}\x1b[K", self.line());
        let _ = e.flush();
    }

    /// Draws the final state and ends the line.
    pub(super) fn finish(&mut self) {
        if !self.enabled || self.finished {
            return;
        }
        self.finished = true;
        self.draw();
        let _ = writeln!(std::io::stderr());
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.last.is_some() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_fraction_and_sizes() {
        let mut p = Progress::new("f".into(), Some(4 << 20), false);
        p.add(1 << 20);
        let l = p.line();
        assert!(l.starts_with("f [#######......................."), "{l}");
        assert!(l.contains(" 25% 1.0/4.0 MiB"), "{l}");
        let mut q = Progress::new("g".into(), None, false);
        q.add(3 << 20);
        assert!(q.line().starts_with("g 3.0 MiB "), "{}", q.line());
    }
}
