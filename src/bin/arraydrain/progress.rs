//! Progress bars on stderr, only when stderr is a terminal: one per phase of a conversion (fed
//! by the library's progress callback), and the benchmark's spinner and run counter.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex, PoisonError};

use arraydrain::convert::{Phase, Progress, ProgressFn};
use indicatif::{ProgressBar, ProgressStyle};

/// The bars of one conversion: a new bar for each phase, the last one cleared by
/// [`ConvertBars::finish`].
#[derive(Default)]
pub struct ConvertBars {
    current: Mutex<Option<(Phase, ProgressBar)>>,
}

impl ConvertBars {
    /// Bars for a conversion, or `None` (no callback) when `quiet` or stderr is no terminal.
    pub fn new(quiet: bool) -> Option<Arc<ConvertBars>> {
        (!quiet && std::io::stderr().is_terminal()).then(|| Arc::new(ConvertBars::default()))
    }

    /// The library callback that draws these bars.
    pub fn callback(self: &Arc<Self>) -> ProgressFn {
        let bars = Arc::clone(self);
        Arc::new(move |p: &Progress| bars.update(p))
    }

    fn update(&self, p: &Progress) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().map(|(phase, _)| *phase) != Some(p.phase) {
            if let Some((_, old)) = current.take() {
                old.finish_and_clear();
            }
            *current = Some((p.phase, phase_bar(p.bytes_total, p.phase.label())));
        }
        if let Some((_, bar)) = current.as_ref() {
            bar.set_position(p.bytes_done);
            if let Some(rows) = p.rows_done {
                bar.set_message(format!("{}: {rows}/{} rows", p.phase.label(), p.rows_total));
            }
        }
    }

    /// Clears the bar of the last phase.
    pub fn finish(&self) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, bar)) = current.take() {
            bar.finish_and_clear();
        }
    }
}

fn phase_bar(total: u64, phase: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg:24} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(phase.to_string());
    bar
}

/// The benchmark's progress: a spinner with a message, then a bar counting timed runs.
pub struct BenchProgress {
    bar: Option<ProgressBar>,
}

impl BenchProgress {
    pub fn new() -> Self {
        let bar = std::io::stderr()
            .is_terminal()
            .then(ProgressBar::new_spinner);
        BenchProgress { bar }
    }

    pub fn message(&mut self, msg: &'static str) {
        if let Some(b) = &self.bar {
            b.set_message(msg);
            b.tick();
        }
    }

    pub fn start(&mut self, steps: usize, msg: &'static str) {
        if let Some(b) = &self.bar {
            b.set_length(steps as u64);
            b.set_position(0);
            b.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} runs, {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.set_message(msg);
        }
    }

    pub fn tick(&self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
