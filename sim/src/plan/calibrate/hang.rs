//! Calibration's hang runs: the job of the crash runs with one rank hung in its data loader
//! instead of a crash, once with the collective watchdog alone and once with the collective
//! progress monitor, so that the time a hang costs at the planner's scale is measured with
//! the real detection logic rather than assumed (`faults.detection.hang`).

use super::shard::Figures;
use super::{load_view, set_only_fault, view_table, Policy};
use crate::books::{Detector, LostCause};
use crate::plan::config::PlanConfig;
use crate::scenario::{Scenario, ScenarioError};

/// The progress monitor's timeout when the planner file sets none: an input, stated in the
/// cost file.
pub(super) const DEFAULT_PROGRESS_TIMEOUT: &str = "1min";

/// The step at which the last GPU hangs.
const HANG_STEP: u64 = 2;

/// Which detector a hang run runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HangDetection {
    Watchdog,
    ProgressMonitor,
}

impl HangDetection {
    pub fn run_name(self) -> &'static str {
        match self {
            HangDetection::Watchdog => "hang-watchdog",
            HangDetection::ProgressMonitor => "hang-progress-monitor",
        }
    }

    /// The detector that must find the run's hang.
    fn detector(self) -> Detector {
        match self {
            HangDetection::Watchdog => Detector::Watchdog,
            HangDetection::ProgressMonitor => Detector::ProgressMonitor,
        }
    }
}

/// The two hang runs, watchdog first.
pub(super) fn hang_runs(
    (name, origin, text): (&str, &str, &str),
    sets: &[String],
    steps: u64,
    planner: &PlanConfig,
    last_gpu: usize,
) -> Result<Vec<(HangDetection, Scenario)>, ScenarioError> {
    let timeout = progress_timeout(text, sets).unwrap_or(DEFAULT_PROGRESS_TIMEOUT.into());
    [HangDetection::Watchdog, HangDetection::ProgressMonitor]
        .into_iter()
        .map(|detection| {
            let monitor = (detection == HangDetection::ProgressMonitor).then_some(&timeout[..]);
            let view_text = hang_view(text, steps, planner, last_gpu, monitor);
            // The watchdog run runs no monitor, whatever the command line sets.
            let sets: Vec<String> = (sets.iter())
                .filter(|s| monitor.is_some() || !s.trim_start().starts_with("recovery.progress"))
                .cloned()
                .collect();
            Ok((detection, load_view(name, origin, view_text, &sets, true)?))
        })
        .collect()
}

/// The progress monitor's timeout that the planner file or a `--set` gives (the last
/// `--set` wins), if any; "0s" is none.
pub(super) fn progress_timeout(text: &str, sets: &[String]) -> Option<String> {
    let from_set = (sets.iter().rev()).find_map(|s| {
        let (key, value) = s.split_once('=')?;
        (key.trim() == "recovery.progress_timeout").then(|| value.trim().trim_matches('"'))
    });
    let table: Option<toml::Table> = toml::from_str(text).ok();
    let from_file = (table.as_ref())
        .and_then(|t| t.get("recovery")?.get("progress_timeout")?.as_str())
        .map(str::to_string);
    (from_set.map(str::to_string).or(from_file)).filter(|t| t != "0s")
}

/// The crash run's view with a hang of `gpu` at [`HANG_STEP`] in place of the crash, and the
/// progress monitor's timeout or none.
fn hang_view(
    text: &str,
    steps: u64,
    planner: &PlanConfig,
    gpu: usize,
    monitor: Option<&str>,
) -> Result<String, String> {
    let mut table = view_table(text, steps, Some((Policy::Restart, planner, 0)))?;
    let recovery = (table.get_mut("recovery").and_then(|r| r.as_table_mut()))
        .ok_or("the crash run's view has a recovery table")?;
    let timeout = monitor.unwrap_or("0s");
    recovery.insert("progress_timeout".into(), timeout.into());
    let mut hang = toml::Table::new();
    hang.insert("gpu".into(), toml::Value::Integer(gpu as i64));
    hang.insert("at_step".into(), toml::Value::Integer(HANG_STEP as i64));
    hang.insert("point".into(), "data_loader".into());
    set_only_fault(&mut table, "hang", hang);
    toml::to_string(&table).map_err(|e| e.to_string())
}

/// The run's detection latency, or why the run measured none.
pub(super) fn detection_s(detection: HangDetection, report: &Figures) -> Result<f64, String> {
    let detected = &report.faults.detected;
    if detected.get(&detection.detector()).is_none() || report.recoveries == 0 {
        return Err(format!(
            "the {} run's hang was not found by {} (detected by: {detected:?}); lengthen the \
             run with --steps",
            detection.run_name(),
            detection.detector()
        ));
    }
    let ns = report.lost_time_ns_by_cause.get(&LostCause::Detection);
    Ok(ns.copied().unwrap_or(0) as f64 / 1e9)
}
