//! `faultline calibrate`: measures the planner's costs by running the real training logic
//! (trainer-core's `Trainer` through `run::run_scenario`) on the simulated cluster at the
//! scenario's scale for a few steps. Only the step time can be measured today: the simulator
//! has no checkpoint, detection or recovery logic yet, so the cost file lists those costs as
//! not measured and the planner keeps the scenario's values for them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::config::Costs;
use crate::run::{run_scenario, RunReport};
use crate::scenario::{self, Scenario};

pub const COSTS_FORMAT: &str = "faultline-costs/1";

/// The planner keys the simulator cannot measure yet, and why.
pub const NOT_MEASURED: [(&str, &str); 8] = [
    (
        "checkpoint.write_time",
        "the simulator has no checkpoint logic yet",
    ),
    (
        "checkpoint.persist_time",
        "the simulator has no checkpoint or storage tier logic yet",
    ),
    (
        "recovery.restart_time",
        "the simulator has no restart logic yet",
    ),
    (
        "recovery.detection_time",
        "the simulator has no failure detection (health checks, timeouts) yet",
    ),
    (
        "recovery.in_memory_restore_time",
        "the simulator has no in-memory checkpoint logic yet",
    ),
    (
        "recovery.hot_spare_time",
        "the simulator has no hot-spare logic yet",
    ),
    (
        "recovery.per_replica_stall_time",
        "the simulator has no per-replica recovery logic yet",
    ),
    (
        "recovery.replica_rejoin_time",
        "the simulator has no per-replica recovery logic yet",
    ),
];

/// What `calibrate` writes and `plan --costs` reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CostFile {
    pub format: String,
    pub scenario: String,
    pub gpus: usize,
    pub gpus_per_node: usize,
    pub steps_run: u64,
    pub seed: u64,
    pub executor: String,
    /// How the measured numbers were obtained.
    pub method: String,
    /// Measured costs, by name.
    pub measured: BTreeMap<String, f64>,
    /// Planner keys with no measurement yet, and why; the planner keeps the scenario's values.
    pub not_measured: BTreeMap<String, String>,
}

impl CostFile {
    pub fn costs(&self) -> Costs {
        Costs {
            step_time_s: self.measured.get("step_time_s").copied(),
        }
    }
}

/// Builds the run scenario for a planner file: its `scenario`, `cluster`, `fabric`, `job` and
/// `run` tables with `job.steps` set to `steps`, and the `--set`s that touch those tables.
pub fn run_scenario_for(
    name: &str,
    origin: &str,
    text: &str,
    sets: &[String],
    steps: u64,
) -> Result<Scenario, scenario::ScenarioError> {
    let view = super::config::run_scenario_text(text, steps).map_err(|message| {
        scenario::ScenarioError {
            origin: origin.to_string(),
            line_col: None,
            key: None,
            message,
        }
    })?;
    let overrides: Vec<String> = sets
        .iter()
        .filter(|s| {
            ["scenario.", "cluster.", "fabric.", "job.", "run."]
                .iter()
                .any(|prefix| s.trim_start().starts_with(prefix))
        })
        .cloned()
        .collect();
    let origin = format!("{origin} (its run-scenario tables)");
    scenario::load_str(name, &origin, &view, &overrides)
}

/// Runs the scenario's training job and turns the report into a cost file.
pub fn calibrate(scenario: &Scenario) -> Result<CostFile, crate::run::SimError> {
    let report: RunReport = run_scenario(scenario)?;
    let steps = report.steps_completed.max(1);
    let mut measured = BTreeMap::new();
    measured.insert(
        "step_time_s".to_string(),
        report.model_time_ns as f64 / 1e9 / steps as f64,
    );
    Ok(CostFile {
        format: COSTS_FORMAT.to_string(),
        scenario: scenario.name.clone(),
        gpus: report.gpus,
        gpus_per_node: report.gpus_per_node,
        steps_run: report.steps_completed,
        seed: report.seed,
        executor: report.executor.to_string(),
        method: "model time of fault-free training steps of trainer_core::job::Trainer on the \
                 simulated cluster (compute charged at peak x MFU, gradient all-reduce over the \
                 modelled fabric), divided by the steps run"
            .to_string(),
        measured,
        not_measured: NOT_MEASURED
            .iter()
            .map(|(k, why)| (k.to_string(), why.to_string()))
            .collect(),
    })
}
