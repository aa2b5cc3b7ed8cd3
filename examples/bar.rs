//! A terminal progress display for the example programs: one indicatif bar
//! per item (a disk, a file) with bytes, speed and ETA, fed by core
//! [`ProgressEvent`]s.
//!
//! ```no_run
//! use std::sync::Arc;
//! use hypersdk_core::progress::Progress;
//! use hypersdk_examples::bar::BarSink;
//!
//! let bars = Arc::new(BarSink::new(false));
//! let progress = Progress::new(Arc::clone(&bars));
//! // ... hand `progress` to a copy, an export, an import ...
//! bars.println("done");
//! ```
//!
//! The bars are drawn on standard error, and only when it is a terminal and
//! the caller did not ask for quiet: piped output and CI logs stay clean.
//! Speed and ETA are indicatif's own estimates over the bytes reported.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use hypersdk_core::progress::{Outcome, ProgressEvent, ProgressSink};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Bars with a byte count, speed and ETA when the total is known.
const STYLE_SIZED: &str = "{prefix:>12.bold} {msg:<24!} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} ETA {eta:>4}";
/// Bars of unknown size: a spinner with bytes and speed.
const STYLE_UNSIZED: &str =
    "{prefix:>12.bold} {msg:<24!} {spinner} {bytes:>10} {binary_bytes_per_sec:>12}";

/// A [`ProgressSink`] drawing one bar per item on standard error.
///
/// An item is what [`ProgressEvent::item`] names (events without one share
/// a bar per phase). A bar finishes when its item's final event arrives;
/// [`BarSink`] is `Sync`, so parallel transfers may report at once.
pub struct BarSink {
    multi: MultiProgress,
    visible: bool,
    bars: Mutex<HashMap<(String, String), ProgressBar>>,
}

impl std::fmt::Debug for BarSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BarSink")
            .field("visible", &self.visible)
            .finish_non_exhaustive()
    }
}

impl BarSink {
    /// A sink that draws when standard error is a terminal and `quiet` is
    /// false; otherwise it draws nothing (and [`BarSink::println`] still
    /// prints to standard error, even when quiet: it carries errors and
    /// warnings).
    pub fn new(quiet: bool) -> Self {
        let visible = !quiet && std::io::stderr().is_terminal();
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        BarSink {
            multi: MultiProgress::with_draw_target(target),
            visible,
            bars: Mutex::new(HashMap::new()),
        }
    }

    /// Whether bars are drawn.
    pub fn is_visible(&self) -> bool {
        self.visible
    }

    /// Prints `line` on standard error above the bars (so they are not torn).
    pub fn println(&self, line: &str) {
        if self.visible {
            // Printing through the MultiProgress keeps the bars intact; it
            // only fails when the terminal is gone, and then so is the line.
            let _ = self.multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    /// Runs `f` with the bars hidden (for prompts or long output).
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.multi.suspend(f)
    }

    fn bar_for(&self, event: &ProgressEvent) -> ProgressBar {
        let key = (
            event.phase.as_str().to_string(),
            event.item.clone().unwrap_or_default(),
        );
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.entry(key)
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::no_length());
                bar.set_prefix(event.phase.as_str().to_string());
                bar.set_message(event.item.clone().unwrap_or_default());
                set_style(&bar, event.bytes_total);
                bar
            })
            .clone()
    }
}

fn set_style(bar: &ProgressBar, total: Option<u64>) {
    let (template, len) = match total {
        Some(t) => (STYLE_SIZED, Some(t)),
        None => (STYLE_UNSIZED, None),
    };
    // The templates are constants checked by the tests below.
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    if let Some(len) = len {
        bar.set_length(len);
    }
}

impl ProgressSink for BarSink {
    fn on_event(&self, event: &ProgressEvent) {
        if !self.visible {
            return;
        }
        let bar = self.bar_for(event);
        if event.bytes_total.is_some() && bar.length() != event.bytes_total {
            set_style(&bar, event.bytes_total);
        }
        bar.set_position(event.bytes_done);
        if let Some(m) = &event.message {
            let item = event.item.as_deref().unwrap_or_default();
            bar.set_message(if item.is_empty() {
                m.clone()
            } else {
                format!("{item}: {m}")
            });
        }
        if event.is_final() {
            bar.finish();
        }
    }

    fn on_finish(&self, outcome: &Outcome) {
        if !self.visible {
            return;
        }
        let bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        for bar in bars.values() {
            if bar.is_finished() {
                continue;
            }
            if outcome.is_success() {
                bar.finish();
            } else {
                bar.abandon();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypersdk_core::progress::{Phase, Progress};
    use std::sync::Arc;

    #[test]
    fn templates_parse() {
        assert!(ProgressStyle::with_template(STYLE_SIZED).is_ok());
        assert!(ProgressStyle::with_template(STYLE_UNSIZED).is_ok());
    }

    #[test]
    fn quiet_sink_draws_nothing_and_accepts_events() {
        let bars = Arc::new(BarSink::new(true));
        assert!(!bars.is_visible());
        let progress = Progress::new(Arc::clone(&bars));
        let item = progress.item(Phase::Transferring, "disk-0", Some(10));
        item.add(10);
        progress.finish(Outcome::Succeeded);
        assert!(bars.bars.lock().unwrap().is_empty());
    }
}
