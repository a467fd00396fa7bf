//! `faultline calibrate`: measures the planner's costs by running the real training logic
//! (trainer-core's `Trainer` through `run::run_scenario`) on the simulated cluster at the
//! scenario's scale for a few steps.
//!
//! Two kinds of run, each a run scenario built from the planner file (its `scenario`, `cluster`,
//! `fabric`, `job`, `run` and `storage` tables, and the run-scenario keys of its `checkpoint` and
//! `recovery` tables):
//!
//! - `steady`: fault-free, no checkpoints, `--steps` steps: the step time.
//! - `crash-<policy>`: a checkpoint after every step, and one node crash when the last node's
//!   first rank begins a step after the first checkpoint was committed; the job recovers with
//!   the policy and finishes. It measures the blocking snapshot per checkpoint, the time from a
//!   snapshot to its commit, the detection latency, the restore and the work done again. If no
//!   checkpoint was committed (and so nothing crashed) within its steps, it runs again with
//!   twice as many.
//!
//! The runs are independent, so they run on threads; every figure is model time, so the cost
//! file is the same for the same inputs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::config::{self, Costs, PlanConfig, Policy, CRASH_KINDS};
use crate::books::{Detector, FaultKind, LostCause, TierName};
use crate::run::{run_scenario, RunReport};
use crate::scenario::{self, Scenario, ScenarioError};

mod hang;
pub mod shard;
pub use hang::HangDetection;
use shard::Figures;

pub const COSTS_FORMAT: &str = "faultline-costs/2";

/// Crash runs try this many step counts, doubling, before giving up.
const CRASH_RUN_ATTEMPTS: u32 = 4;

/// The planner keys the simulator cannot measure, and why.
pub const NOT_MEASURED: [(&str, &str); 3] = [
    (
        "recovery.per_replica_stall_time",
        "calibration does not run the simulator's per-replica recovery yet (its crash run uses \
         restart)",
    ),
    (
        "recovery.replica_rejoin_time",
        "calibration does not run the simulator's per-replica recovery yet (its crash run uses \
         restart)",
    ),
    (
        "faults.detection (nic, switch, link, software, sdc, degrade)",
        "calibration's crash runs inject node and GPU crashes, which heartbeats find, and its \
         hang runs hangs; the simulator's link flaps, fail-slow links and silent data \
         corruptions are not calibrated yet (their detection is measured per run, in \
         `faultline run`'s report), so these kinds keep the scenario's detection time",
    ),
];

/// One calibration run, as the cost file records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub name: String,
    pub policy: String,
    pub steps: u64,
    pub steps_completed: u64,
    pub model_time_s: f64,
    pub checkpoint_snapshots: u64,
    pub checkpoints_committed: u64,
    pub recoveries: u64,
    pub faults_injected: BTreeMap<FaultKind, u64>,
    pub faults_detected: BTreeMap<Detector, u64>,
    pub restores_by_tier: BTreeMap<TierName, u64>,
    pub lost_s_by_cause: BTreeMap<LostCause, f64>,
    pub replicas_agree: bool,
}

/// What `calibrate` writes and `plan --costs` reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CostFile {
    pub format: String,
    pub scenario: String,
    pub gpus: usize,
    pub gpus_per_node: usize,
    /// Steps of the steady run, which gives the step time.
    pub steps_run: u64,
    pub seed: u64,
    pub executor: String,
    /// How the measured numbers were obtained.
    pub method: String,
    /// Measured costs, by name.
    pub measured: BTreeMap<String, f64>,
    /// What `plan --costs` does with each measured cost.
    #[serde(default)]
    pub used_as: BTreeMap<String, String>,
    /// Costs the runs took as given, not measured.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Planner keys with no measurement, and why; the planner keeps the scenario's values.
    pub not_measured: BTreeMap<String, String>,
    #[serde(default)]
    pub runs: Vec<RunSummary>,
}

impl CostFile {
    /// Refuses a cost file this faultline did not write or that could not be measured: another
    /// format, or a measured time that is negative, not a number, or longer than a run can
    /// represent. A step time must be above zero.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != COSTS_FORMAT {
            return Err(format!(
                "format {:?}; this faultline reads {COSTS_FORMAT:?} (write it again with \
                 `faultline calibrate`)",
                self.format
            ));
        }
        let horizon_s = trainer_core::units::MAX_MODEL_TIME_NS as f64 / 1e9;
        for (key, &value) in &self.measured {
            if !(value.is_finite() && (0.0..=horizon_s).contains(&value)) {
                return Err(format!(
                    "measured.{key}: expected a time from 0 to {horizon_s:.0} s, got {value}"
                ));
            }
        }
        if self.measured.get("step_time_s").is_some_and(|&s| s <= 0.0) {
            return Err("measured.step_time_s: expected a step time above zero".into());
        }
        Ok(())
    }

    pub fn costs(&self) -> Costs {
        let m = |key: &str| self.measured.get(key).copied();
        Costs {
            step_time_s: m("step_time_s"),
            checkpoint_write_time_s: m("checkpoint_write_time_s"),
            checkpoint_persist_time_s: m("checkpoint_persist_time_s"),
            crash_detection_time_s: m("detection_time_s"),
            hang_detection_time_s: m("hang_detection_time_s"),
            degrade_slowdown: m("degrade_slowdown"),
            restore_time_s: Policy::NAMES
                .iter()
                .filter_map(|p| Some((p.to_string(), m(&format!("restore_time_s.{p}"))?)))
                .collect(),
        }
    }
}

/// The runs of one calibration, loaded and validated.
pub struct Plan {
    pub name: String,
    pub steady: Scenario,
    /// One crash run per policy, the planner's own policy first.
    pub crash: Vec<(Policy, Scenario)>,
    /// A hang found by the watchdog alone, and one found by the progress monitor.
    pub hang: Vec<(HangDetection, Scenario)>,
    /// The steady run with the last GPU's NIC degraded throughout: the fail-slow step time.
    pub degrade: Scenario,
    /// The progress monitor's timeout the planner file (or a `--set`) gives, if any.
    progress_timeout: Option<String>,
    /// The planner's values the runs took as inputs.
    planner: PlanConfig,
}

/// One run of a calibration, by its place in [`Plan::runs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Steady,
    Crash(usize),
    Hang(usize),
    Degrade,
}

impl Plan {
    /// How many runs the calibration has: the steady run, the crash runs, the hang runs and
    /// the degrade run, numbered in that order (a shard's items).
    pub fn runs(&self) -> u64 {
        (2 + self.crash.len() + self.hang.len()) as u64
    }

    fn run(&self, idx: u64) -> Run {
        let (crashes, hangs) = (self.crash.len() as u64, self.hang.len() as u64);
        match idx {
            0 => Run::Steady,
            k if k <= crashes => Run::Crash(k as usize - 1),
            k if k <= crashes + hangs => Run::Hang((k - crashes) as usize - 1),
            _ => Run::Degrade,
        }
    }
}

/// The run-scenario keys of a planner file's `checkpoint` and `recovery` tables, which the
/// planner only checks and calibration passes on.
const PASSED_ON: [(&str, &str); 7] = [
    ("checkpoint", "state_bytes_per_param"),
    ("checkpoint", "snapshot_bandwidth"),
    ("checkpoint", "buddy_copy"),
    ("recovery", "heartbeat_interval"),
    ("recovery", "heartbeat_misses"),
    ("recovery", "collective_timeout"),
    ("recovery", "progress_timeout"),
];

/// Whether a `--set` applies to the run scenarios: the steady run has no `checkpoint` or
/// `recovery` tables, so only the crash runs take the keys passed on to those.
fn is_run_key(set: &str, crash_run: bool) -> bool {
    let set = set.trim_start();
    [
        "scenario.",
        "cluster.",
        "fabric.",
        "job.",
        "run.",
        "storage.",
    ]
    .iter()
    .any(|prefix| set.starts_with(prefix))
        || crash_run
            && PASSED_ON.iter().any(|(table, key)| {
                set.strip_prefix(&format!("{table}.{key}"))
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
}

fn duration(seconds: f64) -> toml::Value {
    toml::Value::String(format!("{}ns", (seconds * 1e9).round() as u64))
}

/// The run-scenario view of a planner file: its run tables with `job.steps` set, and for a
/// crash run, checkpoints after every step, the recovery policy, and one node crash after the
/// first commit.
fn view(
    text: &str,
    steps: u64,
    crash: Option<(Policy, &PlanConfig, usize)>,
) -> Result<String, String> {
    toml::to_string(&view_table(text, steps, crash)?).map_err(|e| e.to_string())
}

/// [`view`] as a table, for the runs that change it further (hang and degrade runs).
fn view_table(
    text: &str,
    steps: u64,
    crash: Option<(Policy, &PlanConfig, usize)>,
) -> Result<toml::Table, String> {
    let full: toml::Table = toml::from_str(text).map_err(|e| e.message().to_string())?;
    let mut table = full.clone();
    table
        .retain(|key, _| ["scenario", "cluster", "fabric", "job", "run", "storage"].contains(&key));
    config::run_table_with_steps(&mut table, steps)?;
    if let Some((policy, planner, crash_node)) = crash {
        let passed = |name: &str| -> toml::Table {
            let from = full.get(name).and_then(|v| v.as_table());
            PASSED_ON
                .iter()
                .filter(|(t, _)| *t == name)
                .filter_map(|(_, key)| Some((key.to_string(), from?.get(*key)?.clone())))
                .collect()
        };
        let mut checkpoint = passed("checkpoint");
        checkpoint.insert("interval".into(), toml::Value::Integer(1));
        table.insert("checkpoint".into(), toml::Value::Table(checkpoint));
        let mut recovery = passed("recovery");
        recovery.insert("policy".into(), toml::Value::String(policy.name().into()));
        let r = &planner.recovery;
        recovery.insert("restart_time".into(), duration(r.restart_time_s));
        recovery.insert("spare_swap_time".into(), duration(r.hot_spare_time_s));
        table.insert("recovery".into(), toml::Value::Table(recovery));
        if policy == Policy::HotSpare {
            let cluster = table
                .entry("cluster")
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .ok_or("`cluster` is not a table")?;
            cluster.insert("spare_nodes".into(), toml::Value::Integer(1));
        }
        let mut crash = toml::Table::new();
        crash.insert("node".into(), toml::Value::Integer(crash_node as i64));
        crash.insert("after_commits".into(), toml::Value::Integer(1));
        set_only_fault(&mut table, "crash", crash);
    }
    Ok(table)
}

/// Makes `entry` the run's one fault, as `[[faults.<kind>]]`.
fn set_only_fault(table: &mut toml::Table, kind: &str, entry: toml::Table) {
    let mut faults = toml::Table::new();
    faults.insert(
        kind.into(),
        toml::Value::Array(vec![toml::Value::Table(entry)]),
    );
    table.insert("faults".into(), toml::Value::Table(faults));
}

fn load_view(
    name: &str,
    origin: &str,
    view_text: Result<String, String>,
    sets: &[String],
    crash_run: bool,
) -> Result<Scenario, ScenarioError> {
    let view_text = view_text.map_err(|message| ScenarioError {
        origin: origin.to_string(),
        line_col: None,
        key: None,
        message,
    })?;
    let overrides: Vec<String> = sets
        .iter()
        .filter(|s| is_run_key(s, crash_run))
        .cloned()
        .collect();
    let origin = format!("{origin} (its run-scenario view)");
    scenario::load_str(name, &origin, &view_text, &overrides)
}

/// Builds the run scenario for a planner file: its run tables with `job.steps` set to `steps`
/// and the `--set`s that touch them. The steady run of a calibration.
pub fn run_scenario_for(
    name: &str,
    origin: &str,
    text: &str,
    sets: &[String],
    steps: u64,
) -> Result<Scenario, ScenarioError> {
    load_view(name, origin, view(text, steps, None), sets, false)
}

/// Loads the runs of a calibration: the steady run, and a crash run for the planner's policy
/// (restart when it names per-replica, whose regroup calibration does not measure yet), or for
/// the restart, in-memory and hot-spare policies when `all_policies`.
pub fn plan_runs(
    name: &str,
    origin: &str,
    text: &str,
    sets: &[String],
    steps: u64,
    all_policies: bool,
) -> Result<Plan, ScenarioError> {
    let planner = config::load_str(name, origin, text, sets)?;
    let steady = run_scenario_for(name, origin, text, sets, steps)?;
    let crash_node = steady.placement().node_count() - 1;
    let own = match planner.recovery.policy {
        Policy::PerReplica => Policy::Restart,
        p => p,
    };
    let mut policies = vec![own];
    if all_policies {
        for p in [Policy::Restart, Policy::InMemory, Policy::HotSpare] {
            if p != own {
                policies.push(p);
            }
        }
    }
    let crash_steps = steps.max(2) + 4;
    let crash = policies
        .into_iter()
        .map(|policy| {
            let text = view(text, crash_steps, Some((policy, &planner, crash_node)));
            Ok((policy, load_view(name, origin, text, sets, true)?))
        })
        .collect::<Result<Vec<_>, ScenarioError>>()?;
    let last_gpu = steady.cluster.gpus - 1;
    let hang = hang::hang_runs((name, origin, text), sets, crash_steps, &planner, last_gpu)?;
    let bandwidth = planner.fail_slow.bandwidth;
    let degrade_text = degrade_view(text, steps, last_gpu, bandwidth);
    let degrade = load_view(name, origin, degrade_text, sets, false)?;
    Ok(Plan {
        name: name.to_string(),
        steady,
        crash,
        hang,
        degrade,
        progress_timeout: hang::progress_timeout(text, sets),
        planner,
    })
}

fn summary(name: &str, report: &Figures) -> RunSummary {
    RunSummary {
        name: name.to_string(),
        policy: report.recovery_policy.to_string(),
        steps: report.steps_requested,
        steps_completed: report.steps_completed,
        model_time_s: report.model_time_ns as f64 / 1e9,
        checkpoint_snapshots: report.checkpoint_snapshots,
        checkpoints_committed: report.checkpoints_committed,
        recoveries: report.recoveries,
        faults_injected: report.faults.injected.clone(),
        faults_detected: report.faults.detected.clone(),
        restores_by_tier: report.restores_by_tier.clone(),
        lost_s_by_cause: report
            .lost_time_ns_by_cause
            .iter()
            .map(|(&k, ns)| (k, *ns as f64 / 1e9))
            .collect(),
        replicas_agree: report.replicas_agree,
    }
}

/// Runs a crash run, doubling its steps until a checkpoint was committed and the crash fired.
fn crash_run(mut scenario: Scenario) -> Result<RunReport, String> {
    for _ in 0..CRASH_RUN_ATTEMPTS {
        let report = run_scenario(&scenario).map_err(|e| e.to_string())?;
        if report.recoveries > 0 {
            if report.faults.job_abandoned || !report.replicas_agree {
                return Err(format!(
                    "the {} crash run did not recover cleanly (abandoned: {}, replicas agree: {})",
                    report.recovery_policy, report.faults.job_abandoned, report.replicas_agree
                ));
            }
            return Ok(report);
        }
        scenario.job.steps *= 2;
    }
    Err(format!(
        "no checkpoint was committed within {} steps, so the crash never came: the persist \
         takes too long beside the step time to calibrate in a few steps",
        scenario.job.steps / 2
    ))
}

/// Runs the calibration's runs (on threads: each is independent and deterministic) and turns
/// the reports into a cost file.
pub fn calibrate(plan: &Plan) -> Result<CostFile, String> {
    let figures = std::thread::scope(|scope| {
        let threads: Vec<_> = (1..plan.runs())
            .map(|idx| scope.spawn(move || run_one(plan, idx)))
            .collect();
        let steady = run_one(plan, 0);
        let others = threads
            .into_iter()
            .map(|t| t.join().expect("a calibration run does not panic"));
        std::iter::once(steady)
            .chain(others)
            .collect::<Result<Vec<_>, String>>()
    })?;
    costs_of(plan, &figures)
}

/// Runs one run of a calibration, by its number (see [`Plan::runs`]). What a shard runs.
pub fn run_one(plan: &Plan, idx: u64) -> Result<Figures, String> {
    let report = match plan.run(idx) {
        Run::Steady => run_scenario(&plan.steady).map_err(|e| e.to_string())?,
        Run::Crash(k) => crash_run(plan.crash[k].1.clone())?,
        Run::Hang(k) => run_scenario(&plan.hang[k].1).map_err(|e| e.to_string())?,
        Run::Degrade => run_scenario(&plan.degrade).map_err(|e| e.to_string())?,
    };
    Ok(Figures::from(&report))
}

/// The cost file of a calibration's runs, from every run's figures in order.
pub fn costs_of(plan: &Plan, figures: &[Figures]) -> Result<CostFile, String> {
    let of = |run: Run| {
        (0..plan.runs())
            .find(|&i| plan.run(i) == run)
            .map(|i| &figures[i as usize])
    };
    let steady = of(Run::Steady).ok_or("no steady run")?;
    let crashes: Vec<Figures> = (0..plan.crash.len())
        .filter_map(|k| of(Run::Crash(k)).cloned())
        .collect();
    let (mut measured, mut used_as) = measure(plan, steady, &crashes);
    let hangs: Vec<&Figures> = (0..plan.hang.len())
        .filter_map(|k| of(Run::Hang(k)))
        .collect();
    measure_hangs(plan, &hangs, (&mut measured, &mut used_as))?;
    let degrade = of(Run::Degrade).ok_or("no degrade run")?;
    measure_degrade(steady, degrade, (&mut measured, &mut used_as));
    let inputs = inputs(plan);
    let not_measured = not_measured(plan, &measured);
    let mut runs = vec![summary("steady", steady)];
    for ((policy, _), report) in plan.crash.iter().zip(&crashes) {
        runs.push(summary(&format!("crash-{}", policy.name()), report));
    }
    for ((detection, _), report) in plan.hang.iter().zip(hangs) {
        runs.push(summary(detection.run_name(), report));
    }
    runs.push(summary("degrade", degrade));
    Ok(CostFile {
        format: COSTS_FORMAT.to_string(),
        scenario: plan.name.clone(),
        gpus: steady.gpus,
        gpus_per_node: steady.gpus_per_node,
        steps_run: steady.steps_completed,
        seed: steady.seed,
        executor: steady.executor.to_string(),
        method: "model time of trainer_core::job::Trainer on the simulated cluster at the \
                 scenario's scale. step_time_s: a fault-free run without checkpoints, model \
                 time over steps. The crash runs checkpoint after every step (sharded \
                 snapshot, asynchronous persist, buddy copy, manifest committed by the votes \
                 of the next step that finds every shard durable) and crash the last node at \
                 the first step its first rank begins after the first commit. \
                 checkpoint_write_time_s: blocking snapshot stall over snapshots taken; \
                 checkpoint_persist_time_s: snapshot to commit, over checkpoints committed; \
                 detection_time_s: crash to abort (heartbeats or watchdog); restore_time_s: \
                 relaunch done to the first step begun (shard reads with verification, \
                 agreement, all-gather); recomputed_s: steps done again after the restore. \
                 One crash per run: detection depends on where the crash falls between \
                 heartbeat checks, recomputed work on where it falls after the checkpoint. \
                 The hang runs hang the last GPU in its data loader at step 2 of the crash \
                 runs' job, once with the collective watchdog alone and once with the \
                 collective progress monitor: hang_detection_time_s.<detector> is the hang to \
                 the abort. The degrade run is the steady run with the last GPU's NIC at \
                 faults.degrade_bandwidth throughout: degrade_slowdown is its step time over \
                 the steady run's."
            .to_string(),
        measured,
        used_as,
        inputs,
        not_measured,
        runs,
    })
}

/// Each hang run's detection time, and the one the planner file's own detection gives as
/// `faults.detection.hang`: the monitor's when the file sets `recovery.progress_timeout`.
fn measure_hangs(
    plan: &Plan,
    hangs: &[&Figures],
    (measured, used_as): (&mut BTreeMap<String, f64>, &mut BTreeMap<String, String>),
) -> Result<(), String> {
    let monitored = plan.progress_timeout.is_some();
    for ((detection, _), figures) in plan.hang.iter().zip(hangs) {
        let seconds = hang::detection_s(*detection, figures)?;
        let key = match detection {
            HangDetection::Watchdog => "hang_detection_time_s.watchdog",
            HangDetection::ProgressMonitor => "hang_detection_time_s.progress_monitor",
        };
        measured.insert(key.to_string(), seconds);
        if monitored == (*detection == HangDetection::ProgressMonitor) {
            measured.insert("hang_detection_time_s".to_string(), seconds);
            let why = match monitored {
                true => "the scenario sets recovery.progress_timeout",
                false => "the scenario runs no progress monitor",
            };
            used_as.insert(
                "hang_detection_time_s".to_string(),
                format!(
                    "faults.detection.hang (the {} run's: {why})",
                    detection.run_name()
                ),
            );
        }
    }
    Ok(())
}

/// The degrade run's step time over the steady run's: what a fail-slow NIC costs the job's
/// step, as `faults.degrade_slowdown`.
fn measure_degrade(
    steady: &Figures,
    degrade: &Figures,
    (measured, used_as): (&mut BTreeMap<String, f64>, &mut BTreeMap<String, String>),
) {
    let step = |f: &Figures| f.model_time_ns as f64 / f.steps_completed.max(1) as f64;
    let slowdown = step(degrade) / step(steady).max(1.0);
    measured.insert("degrade_slowdown".to_string(), slowdown);
    used_as.insert(
        "degrade_slowdown".to_string(),
        "faults.degrade_slowdown (the degrade run's step time over the steady run's)".into(),
    );
}

/// The steady run's view with the last GPU's NIC keeping `bandwidth` of its bandwidth for
/// the whole run: the degrade run.
fn degrade_view(text: &str, steps: u64, gpu: usize, bandwidth: f64) -> Result<String, String> {
    let mut table = view_table(text, steps, None)?;
    let mut degrade = toml::Table::new();
    degrade.insert("nic".into(), toml::Value::Integer(gpu as i64));
    degrade.insert("bandwidth".into(), toml::Value::Float(bandwidth));
    degrade.insert("at".into(), "0s".into());
    degrade.insert("duration".into(), "13d".into());
    set_only_fault(&mut table, "degrade", degrade);
    toml::to_string(&table).map_err(|e| e.to_string())
}

/// Each measured figure, and (where the planner uses it) what it replaces.
fn measure(
    plan: &Plan,
    steady: &Figures,
    crashes: &[Figures],
) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let secs = |ns: u64| ns as f64 / 1e9;
    let mut measured = BTreeMap::new();
    let mut used_as = BTreeMap::new();
    let mut put = |key: &str, value: f64, use_: &str| {
        measured.insert(key.to_string(), value);
        if !use_.is_empty() {
            used_as.insert(key.to_string(), use_.to_string());
        }
    };
    put(
        "step_time_s",
        secs(steady.model_time_ns) / steady.steps_completed.max(1) as f64,
        "the step: plan rounds the checkpoint interval up to whole steps",
    );
    let lost =
        |r: &Figures, cause: LostCause| secs(*r.lost_time_ns_by_cause.get(&cause).unwrap_or(&0));
    // The planner's own policy's run gives the checkpoint and detection figures.
    let own = &crashes[0];
    put(
        "checkpoint_write_time_s",
        lost(own, LostCause::CheckpointStalls) / own.checkpoint_snapshots.max(1) as f64,
        "checkpoint.write_time",
    );
    put(
        "checkpoint_persist_time_s",
        secs(own.checkpoint_persist_ns) / own.checkpoints_committed.max(1) as f64,
        "checkpoint.persist_time",
    );
    let kinds = CRASH_KINDS.join(", ");
    put(
        "detection_time_s",
        lost(own, LostCause::Detection),
        &format!(
            "recovery.detection_time of the kinds {kinds} (faults.detection.<kind> of the \
             others is kept)"
        ),
    );
    for ((policy, _), report) in plan.crash.iter().zip(crashes) {
        let p = policy.name();
        let relaunch = match policy {
            Policy::Restart => "recovery.restart_time",
            Policy::InMemory => "recovery.in_memory_restore_time",
            _ => "recovery.hot_spare_time",
        };
        put(
            &format!("restore_time_s.{p}"),
            lost(report, LostCause::Restore),
            &format!("added to {relaunch}, which is the relaunch (or swap) alone"),
        );
        put(
            &format!("recomputed_s.{p}"),
            lost(report, LostCause::RecomputedSteps),
            "",
        );
        if *policy != plan.crash[0].0 {
            put(
                &format!("detection_time_s.{p}"),
                lost(report, LostCause::Detection),
                "",
            );
        }
    }
    (measured, used_as)
}

/// The recovery times the planner takes as given, and why.
fn inputs(plan: &Plan) -> BTreeMap<String, String> {
    let r = &plan.planner.recovery;
    let mut inputs = BTreeMap::new();
    inputs.insert(
        "recovery.restart_time".to_string(),
        format!(
            "{} s, an input, not a measurement: the relaunch (reschedule, initialise) that the \
             simulator charges as given (recovery.restart_time of the crash runs); plan --costs \
             adds the measured restore_time_s.restart to it",
            r.restart_time_s
        ),
    );
    inputs.insert(
        "recovery.hot_spare_time".to_string(),
        format!(
            "{} s, an input: the spare swap (recovery.spare_swap_time of the hot-spare run); \
             plan --costs adds the measured restore_time_s.hot-spare to it",
            r.hot_spare_time_s
        ),
    );
    inputs.insert(
        "recovery.progress_timeout".to_string(),
        format!(
            "{}, the progress monitor's timeout in the hang-progress-monitor run ({})",
            (plan.progress_timeout.as_deref()).unwrap_or(hang::DEFAULT_PROGRESS_TIMEOUT),
            match plan.progress_timeout {
                Some(_) => "the scenario's",
                None => "the scenario sets none: an input",
            }
        ),
    );
    inputs.insert(
        "faults.degrade_bandwidth".to_string(),
        format!(
            "{}, the bandwidth the last GPU's NIC keeps in the degrade run",
            plan.planner.fail_slow.bandwidth
        ),
    );
    inputs.insert(
        "recovery.in_memory_restore_time".to_string(),
        format!(
            "{} s, an input: the relaunch under the in-memory policy; plan --costs adds the \
             measured restore_time_s.in-memory to it (the in-memory run relaunches in \
             recovery.restart_time, which does not change its restore)",
            r.in_memory_restore_time_s
        ),
    );
    inputs
}

/// What the cost file does not measure, and why.
fn not_measured(plan: &Plan, measured: &BTreeMap<String, f64>) -> BTreeMap<String, String> {
    let mut not_measured: BTreeMap<String, String> = NOT_MEASURED
        .iter()
        .map(|(k, why)| (k.to_string(), why.to_string()))
        .collect();
    for (policy, key) in [
        (Policy::Restart, "restore_time_s.restart"),
        (Policy::InMemory, "restore_time_s.in-memory"),
        (Policy::HotSpare, "restore_time_s.hot-spare"),
    ] {
        if !measured.contains_key(key) {
            not_measured.insert(
                key.to_string(),
                format!(
                    "no {} crash run (calibrate --all-policies runs one); plan adds nothing to \
                     the policy's recovery time",
                    policy.name()
                ),
            );
        }
    }
    if plan.planner.recovery.policy == Policy::PerReplica {
        not_measured.insert(
            "recovery.policy = per-replica".to_string(),
            "the checkpoint and detection figures come from a restart run".to_string(),
        );
    }
    not_measured
}
