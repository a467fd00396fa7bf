//! Progress on a terminal for a long `run` (steps done, model time, faults so far and an
//! estimate of what is left) and a spinner for `calibrate`'s runs, on standard error only. Nothing shows when standard error is not
//! a terminal, nor during the first second (a short run stays silent), and nothing here reads
//! or changes the simulation: the world only tells where it stands after each of rank 0's
//! steps.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use faultline_sim::world::{Progress, ProgressHook};
use trainer_core::units::format_duration_ns;

/// How long a run goes before its bar appears; `FAULTLINE_PROGRESS_AFTER_MS` overrides it
/// (the pty test sets 0).
const SHOW_AFTER: Duration = Duration::from_secs(1);

/// The hook `run` hands the world, or none when standard error is not a terminal.
pub(crate) fn run_bar() -> Option<ProgressHook> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let show_after = std::env::var("FAULTLINE_PROGRESS_AFTER_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(SHOW_AFTER, Duration::from_millis);
    #[allow(clippy::disallowed_methods)] // wall time for people, never in results
    let started = Instant::now();
    let mut bar = Cleared(None);
    Some(Box::new(move |p: &Progress| {
        if bar.0.is_none() && started.elapsed() >= show_after {
            bar.0 = Some(new_bar(p.steps));
        }
        if let Some(bar) = &bar.0 {
            let model_time = format_duration_ns(p.model_time_ns);
            bar.set_message(format!("{model_time} model time, {} faults", p.faults));
            bar.set_position(p.steps_done);
        }
    }))
}

/// A bar wiped from the terminal when the run drops its hook, however the run ended, so the
/// summary starts on a clean line.
pub(crate) struct Cleared(Option<indicatif::ProgressBar>);

impl Drop for Cleared {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

fn new_bar(steps: u64) -> indicatif::ProgressBar {
    let style =
        indicatif::ProgressStyle::with_template("step {pos}/{len} [{bar:20}] {msg}, ~{eta} left")
            .expect("a valid template")
            .progress_chars("=> ");
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(steps),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(style);
    bar
}

/// A spinner with `message` and the elapsed time for work with no steps to count (the
/// calibration's runs go at once on threads of their own), on a terminal only, wiped when
/// dropped.
pub(crate) fn spinner(message: String) -> Cleared {
    if !std::io::stderr().is_terminal() {
        return Cleared(None);
    }
    let style = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .expect("a valid template");
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(style);
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(200));
    Cleared(Some(bar))
}
