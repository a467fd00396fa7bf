//! Planner scenarios: the TOML a capacity planner writes, validated into a [`PlanConfig`].
//! Loaded through the same machinery as run scenarios, so every error names the file (or the
//! `--set` that caused it), the line and column, and the dotted key.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::scenario::read_scenario_file;
use crate::scenario::{in_range, parse_checked, ScenarioError, Source, MAX_GPUS};
use crate::units::parse_duration_ns;

/// The failure kinds the planner models, in the order reports list them. Rates are failures
/// per 1,000 node-days, each written `faults.rates.<kind>_failures_per_1000_node_days`, except
/// the generic `node`, written `faults.rates.node_failures_per_1000_node_days`.
pub const FAULT_KINDS: [&str; 11] = [
    "node", "gpu", "hbm", "host", "nic", "switch", "link", "software", "sdc", "hang", "degrade",
];

/// The index of the lemon-node stream in per-kind counts, after [`FAULT_KINDS`].
pub const LEMON: usize = FAULT_KINDS.len();

/// Every kind a report counts: [`FAULT_KINDS`] and then `lemon`.
pub const COUNTED_KINDS: [&str; 12] = [
    "node", "gpu", "hbm", "host", "nic", "switch", "link", "software", "sdc", "hang", "degrade",
    "lemon",
];

/// The index of silent data corruption in [`FAULT_KINDS`]: found late, and never recoverable
/// by rejoining a replica, since the corruption has already spread through the all-reduce.
pub const SDC: usize = 8;

/// The index of hangs in [`FAULT_KINDS`]: a rank stops issuing collectives, alive, until a
/// collective-level detector notices (by default the watchdog's 10 minutes); then a restart.
pub const HANG: usize = 9;

/// The index of fail-slow episodes in [`FAULT_KINDS`]: a link or NIC keeps working slowly
/// ([`FailSlow`]); the job does not stop, it runs slower while the episode lasts.
pub const DEGRADE: usize = 10;

/// A hang's detection time when the scenario gives none: PyTorch's collective watchdog.
pub const HANG_DEFAULT_DETECTION_S: f64 = 600.0;

/// The random stream of a kind's arrivals (or of the lemons'). Kinds added after the lemons
/// number their streams after it, so that adding a kind never moves another kind's failures
/// (the same seed gives the same failures in every version).
pub fn stream_of(kind_idx: usize) -> u64 {
    match kind_idx {
        LEMON => 9,
        idx if idx < HANG => idx as u64,
        idx => idx as u64 + 1,
    }
}

/// What a fail-slow episode does: the step takes `slowdown` times as long for `duration_s`,
/// so the job loses `duration_s * (1 - 1 / slowdown)` of progress and nothing else (no
/// restart, no rework). Defaults: a mean of 24 minutes, the mean of communication fail-slows
/// in Alibaba's production study (Greyhound, ATC'25), and a slowdown of 1.34, FALCON's mean
/// job completion time under fail-slows (arXiv 2410.12588) taken as the slowdown while one
/// lasts, an assumption that `calibrate` replaces with the step time it measures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FailSlow {
    pub slowdown: f64,
    pub duration_s: f64,
    /// The bandwidth a degraded NIC keeps in `calibrate`'s degrade run, which measures the
    /// slowdown (0.5 by default, as a run scenario's degrade; an assumption).
    pub bandwidth: f64,
}

impl FailSlow {
    /// Progress one episode costs.
    pub fn lost_s(&self) -> f64 {
        self.duration_s * (1.0 - 1.0 / self.slowdown)
    }
}

/// Whether a failure of this kind takes a node out of the job until it is repaired, so that
/// recovery needs a replacement node. Switch, link and software failures do not.
pub fn needs_replacement_node(kind_idx: usize) -> bool {
    matches!(kind_idx, 0..=4 | SDC | LEMON)
}

/// How the job gets going again after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Tear the job down, reschedule, reload the last persisted checkpoint.
    Restart,
    /// Replace the node from the spare pool and restore the last snapshot from a peer's host
    /// memory (GEMINI-style); no wait for the persist.
    InMemory,
    /// Swap in an already initialised spare node and reload the last persisted checkpoint.
    HotSpare,
    /// Only the failed replica group restarts, from a healthy peer's live state (TorchFT,
    /// FT-HSDP); the others stall briefly and then run one replica short.
    PerReplica,
}

impl Policy {
    pub const NAMES: [&'static str; 4] = ["restart", "in-memory", "hot-spare", "per-replica"];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Restart => "restart",
            Policy::InMemory => "in-memory",
            Policy::HotSpare => "hot-spare",
            Policy::PerReplica => "per-replica",
        }
    }

    fn from_name(name: &str) -> Option<Policy> {
        Some(match name {
            "restart" => Policy::Restart,
            "in-memory" => Policy::InMemory,
            "hot-spare" => Policy::HotSpare,
            "per-replica" => Policy::PerReplica,
            _ => return None,
        })
    }
}

/// How the time between two failures of one kind is distributed, at the job level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    Exponential,
    /// A renewal process with Weibull interarrival times of this shape, scaled so that the
    /// mean matches the rate. Shape below 1 clusters failures after each one.
    Weibull {
        shape: f64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct FaultProcess {
    /// Failures per node per second, for an ordinary (non-lemon) node.
    pub rate_per_node_s: f64,
    pub distribution: Distribution,
    /// From the failure to the moment recovery starts; the job makes no useful progress.
    pub detection_s: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Lemons {
    /// Nodes whose node-attached hardware fails `rate_multiplier` times as often.
    pub nodes: usize,
    pub rate_multiplier: f64,
    /// Drain a lemon after this many failures; 0 never drains.
    pub exclude_after: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Recovery {
    pub policy: Policy,
    pub restart_time_s: f64,
    pub in_memory_restore_time_s: f64,
    pub hot_spare_time_s: f64,
    pub per_replica_stall_time_s: f64,
    /// Data-parallel replicas: `recovery.replicas`, or derived from `[parallelism]` or
    /// `recovery.replica_gpus` (the GPUs over one replica's size).
    pub replicas: usize,
    /// GPUs in one replica, the unit per-replica recovery takes out: tp x pp with a layout,
    /// `recovery.replica_gpus`, or the GPUs over `replicas`, rounded up.
    pub replica_gpus: usize,
    pub replica_rejoin_time_s: f64,
    /// Spare nodes for the in-memory, hot-spare and per-replica policies; `None` is unlimited.
    /// When all are in repair the recovery falls back to a full restart.
    pub spare_nodes: Option<usize>,
    pub repair_time_s: f64,
}

impl Recovery {
    /// GPUs a failure idles beyond the stall: one replica under per-replica (the others run
    /// on while it rejoins), the whole job (`gpus`) under every other policy.
    pub fn gpus_idled_per_failure(&self, gpus: usize) -> usize {
        match self.policy {
            Policy::PerReplica => self.replica_gpus,
            _ => gpus,
        }
    }

    /// What one recovery costs under the policy when a spare is at hand, without rollback.
    pub fn policy_recovery_s(&self) -> f64 {
        match self.policy {
            Policy::Restart => self.restart_time_s,
            Policy::InMemory => self.in_memory_restore_time_s,
            Policy::HotSpare => self.hot_spare_time_s,
            Policy::PerReplica => {
                self.per_replica_stall_time_s + self.replica_rejoin_time_s / self.replicas as f64
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Maintenance {
    pub interval_s: f64,
    pub duration_s: f64,
}

/// A loaded, validated planner scenario: one point of a sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanConfig {
    pub name: String,
    pub description: String,
    pub gpus: usize,
    pub gpus_per_node: usize,
    pub nodes: usize,
    pub horizon_s: f64,
    pub seeds: usize,
    pub root_seed: u64,
    /// `key=v1,v2,...` sweeps from the file's `plan.sweep`.
    pub sweep: Vec<String>,
    pub checkpoint_interval_s: f64,
    pub checkpoint_write_time_s: f64,
    pub checkpoint_persist_time_s: f64,
    pub recovery: Recovery,
    /// One per [`FAULT_KINDS`] entry.
    pub faults: Vec<FaultProcess>,
    /// What a `degrade` episode costs.
    pub fail_slow: FailSlow,
    pub lemons: Lemons,
    pub maintenance: Option<Maintenance>,
    /// Measured step time from a cost file; 0 treats work as continuous.
    pub step_time_s: f64,
}

impl PlanConfig {
    /// The job's failure rate, all kinds and lemons together, per second.
    pub fn job_failures_per_s(&self) -> f64 {
        let ordinary = (self.nodes - self.lemons.nodes) as f64;
        let mut rate = 0.0;
        let mut node_hardware = 0.0;
        // A fail-slow episode stops nothing: it is not a failure of the job.
        for (idx, f) in self
            .faults
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != DEGRADE)
        {
            if needs_replacement_node(idx) {
                rate += f.rate_per_node_s * ordinary;
                node_hardware += f.rate_per_node_s;
            } else {
                rate += f.rate_per_node_s * self.nodes as f64;
            }
        }
        rate + node_hardware * self.lemons.rate_multiplier * self.lemons.nodes as f64
    }

    /// Failure-weighted mean detection time (of the kinds that stop the job).
    pub fn mean_detection_s(&self) -> f64 {
        let stopping = || (self.faults.iter().enumerate()).filter(|(i, _)| *i != DEGRADE);
        let total: f64 = stopping().map(|(_, f)| f.rate_per_node_s).sum();
        if total == 0.0 {
            return 0.0;
        }
        stopping()
            .map(|(_, f)| f.rate_per_node_s * f.detection_s)
            .sum::<f64>()
            / total
    }
}

/// The failure kinds whose failures kill a process or a node, as the simulator's crashes do:
/// heartbeats find them, so a measured crash detection time applies to them.
pub const CRASH_KINDS: [&str; 4] = ["node", "gpu", "hbm", "host"];

/// The checkpoint and recovery costs `faultline calibrate` measured, as `plan --costs` reads
/// them. What is `None` (or absent) keeps the scenario's value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Costs {
    pub step_time_s: Option<f64>,
    /// The blocking snapshot per checkpoint.
    pub checkpoint_write_time_s: Option<f64>,
    /// From the snapshot to the commit: how long a new checkpoint cannot be restored.
    pub checkpoint_persist_time_s: Option<f64>,
    /// From a crash to the start of recovery, for the kinds in [`CRASH_KINDS`].
    pub crash_detection_time_s: Option<f64>,
    /// From a hang to the abort, by the detection the planner file runs.
    pub hang_detection_time_s: Option<f64>,
    /// A fail-slow NIC's step-time factor.
    pub degrade_slowdown: Option<f64>,
    /// Reading and rebuilding the state after the relaunch, by policy name; added to the
    /// policy's relaunch (or swap) time, which stays an input.
    pub restore_time_s: BTreeMap<String, f64>,
}

impl Costs {
    /// Applies the measured costs to one point of a plan.
    pub fn apply(&self, config: &mut PlanConfig) {
        if let Some(step) = self.step_time_s {
            config.step_time_s = step;
        }
        if let Some(write) = self.checkpoint_write_time_s {
            config.checkpoint_write_time_s = write;
        }
        if let Some(persist) = self.checkpoint_persist_time_s {
            config.checkpoint_persist_time_s = persist;
        }
        if let Some(detection) = self.crash_detection_time_s {
            for (kind, process) in FAULT_KINDS.iter().zip(config.faults.iter_mut()) {
                if CRASH_KINDS.contains(kind) {
                    process.detection_s = detection;
                }
            }
        }
        if let Some(detection) = self.hang_detection_time_s {
            config.faults[HANG].detection_s = detection;
        }
        if let Some(slowdown) = self.degrade_slowdown {
            config.fail_slow.slowdown = slowdown;
        }
        let r = &mut config.recovery;
        for (policy, time) in [
            (Policy::Restart, &mut r.restart_time_s),
            (Policy::InMemory, &mut r.in_memory_restore_time_s),
            (Policy::HotSpare, &mut r.hot_spare_time_s),
        ] {
            if let Some(restore) = self.restore_time_s.get(policy.name()) {
                *time += restore;
            }
        }
    }
}

/// Loads a planner scenario and applies `overrides` (`key=value`).
pub fn load(path: &Path, overrides: &[String]) -> Result<PlanConfig, ScenarioError> {
    let (name, origin, text) = read_scenario_file(path)?;
    load_str(&name, &origin, &text, overrides)
}

/// Loads a planner scenario from text; `origin` names it in errors.
pub fn load_str(
    name: &str,
    origin: &str,
    text: &str,
    overrides: &[String],
) -> Result<PlanConfig, ScenarioError> {
    let (raw, source) = parse_checked::<RawPlanFile>(origin, text, overrides)?;
    validate(name, raw, &source)
}

/// The run-scenario part of a planner file (`scenario`, `cluster`, `fabric`, `job`, `run`),
/// with `job.steps` set to `steps`, as TOML text that `scenario::load_str` accepts.
/// Calibration runs it.
pub fn run_scenario_text(text: &str, steps: u64) -> Result<String, String> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| e.message().to_string())?;
    table.retain(|key, _| ["scenario", "cluster", "fabric", "job", "run"].contains(&key));
    run_table_with_steps(&mut table, steps)?;
    toml::to_string(&table).map_err(|e| e.to_string())
}

/// Sets `job.steps` in a run-scenario table.
pub fn run_table_with_steps(table: &mut toml::Table, steps: u64) -> Result<(), String> {
    let job = table
        .entry("job")
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .ok_or("`job` is not a table")?;
    job.insert("steps".into(), toml::Value::Integer(steps as i64));
    Ok(())
}

// The file format, as written.

#[derive(Deserialize, Debug)]
// Some fields are only checked here (names and types); calibration reads them from the text.
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
struct RawPlanFile {
    #[serde(default)]
    scenario: RawMeta,
    cluster: RawCluster,
    /// Read only by `faultline calibrate`, which runs the training job at this scale.
    #[serde(default)]
    fabric: Option<toml::Table>,
    #[serde(default)]
    job: Option<toml::Table>,
    #[serde(default)]
    run: Option<toml::Table>,
    /// The storage tiers' bandwidths and latency, as in a run scenario: read by calibration.
    #[serde(default)]
    storage: Option<toml::Table>,
    /// A published figure this scenario reproduces: read only by `faultline validate`
    /// (`[[anchor]]` tables, checked there), so that an anchor file is a planner file too.
    #[serde(default)]
    anchor: Option<toml::Value>,
    #[serde(default)]
    plan: RawPlan,
    #[serde(default)]
    checkpoint: RawCheckpoint,
    #[serde(default)]
    recovery: RawRecovery,
    #[serde(default)]
    faults: RawFaults,
    /// The layout, for the per-replica recovery's replica size.
    #[serde(default)]
    parallelism: Option<RawParallelism>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawParallelism {
    tp: Option<i64>,
    pp: Option<i64>,
    dp: Option<i64>,
}

#[derive(Deserialize, Debug, Default)]
// Some fields are only checked here (names and types); calibration reads them from the text.
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    #[serde(default)]
    description: String,
    #[serde(default)]
    ci: Option<bool>,
}

#[derive(Deserialize, Debug)]
// Some fields are only checked here (names and types); calibration reads them from the text.
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    gpus: i64,
    #[serde(default = "default_gpus_per_node")]
    gpus_per_node: i64,
    // Topology keys, read by calibration only.
    #[serde(default)]
    nodes_per_leaf: Option<i64>,
    #[serde(default)]
    oversubscription: Option<f64>,
    #[serde(default)]
    clusters: Option<i64>,
}

fn default_gpus_per_node() -> i64 {
    8
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    horizon: Option<String>,
    seeds: Option<i64>,
    seed: Option<i64>,
    #[serde(default)]
    sweep: Vec<String>,
    maintenance_interval: Option<String>,
    maintenance_duration: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
// The run-scenario keys are only checked here (names and types); calibration reads them.
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
struct RawCheckpoint {
    interval: Option<String>,
    write_time: Option<String>,
    persist_time: Option<String>,
    // Run-scenario keys, read by calibration only.
    state_bytes_per_param: Option<f64>,
    snapshot_bandwidth: Option<String>,
    buddy_copy: Option<bool>,
}

#[derive(Deserialize, Debug, Default)]
// The run-scenario keys are only checked here (names and types); calibration reads them.
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
struct RawRecovery {
    policy: Option<String>,
    restart_time: Option<String>,
    detection_time: Option<String>,
    in_memory_restore_time: Option<String>,
    hot_spare_time: Option<String>,
    per_replica_stall_time: Option<String>,
    replicas: Option<i64>,
    replica_gpus: Option<i64>,
    replica_rejoin_time: Option<String>,
    spare_nodes: Option<i64>,
    repair_time: Option<String>,
    // Run-scenario keys (failure detection), read by calibration only.
    heartbeat_interval: Option<String>,
    heartbeat_misses: Option<i64>,
    collective_timeout: Option<String>,
    progress_timeout: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawFaults {
    #[serde(default)]
    rates: BTreeMap<String, f64>,
    #[serde(default)]
    distribution: BTreeMap<String, String>,
    #[serde(default)]
    weibull_shape: BTreeMap<String, f64>,
    #[serde(default)]
    detection: BTreeMap<String, String>,
    #[serde(default)]
    lemon: RawLemon,
    degrade_slowdown: Option<f64>,
    degrade_duration: Option<String>,
    degrade_bandwidth: Option<f64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawLemon {
    node_fraction: Option<f64>,
    rate_multiplier: Option<f64>,
    exclude_after: Option<i64>,
}

const SECONDS_PER_NODE_DAY_PER_1000: f64 = 1000.0 * 86_400.0;

/// A duration in seconds, `default` when the key is absent, or an error naming `key`.
fn duration_s(
    src: &Source,
    key: &str,
    text: &Option<String>,
    default: &str,
) -> Result<f64, ScenarioError> {
    let text = text.as_deref().unwrap_or(default);
    let ns = parse_duration_ns(text)
        .map_err(|e| src.error(key, format!("expected {e}, got {text:?}")))?;
    if ns > MAX_PLAN_DURATION_NS {
        return Err(src.error(
            key,
            format!("expected at most 3650d, the longest a plan simulates, got {text:?}"),
        ));
    }
    Ok(ns as f64 / 1e9)
}

/// A duration of at least `min_s` seconds, written `min` in the message.
fn duration_at_least(
    src: &Source,
    key: &str,
    text: &Option<String>,
    default: &str,
    (min_s, min): (f64, &str),
) -> Result<f64, ScenarioError> {
    let value_s = duration_s(src, key, text, default)?;
    if value_s < min_s {
        let text = text.as_deref().unwrap_or(default);
        return Err(src.error(key, format!("expected from {min} to 3650d, got {text:?}")));
    }
    Ok(value_s)
}

/// The longest duration a plan takes, ten years: a horizon, an interval or a recovery time.
const MAX_PLAN_DURATION_NS: u64 = 3650 * 86_400 * 1_000_000_000;

/// The most turns of the model's loop (a checkpoint, a failure or a maintenance window) one
/// seed may take, and one point's seeds together: about 0.2 s and 3 min on one core. Beyond
/// them a plan would run for hours; it is refused instead, naming what to change.
const MAX_TURNS_PER_SEED: f64 = 1e7;
const MAX_TURNS_PER_POINT: f64 = 1e10;

/// Refuses a plan whose loop would run too long, from the expected number of turns per seed.
fn check_work(src: &Source, cfg: &PlanConfig) -> Result<(), ScenarioError> {
    let maintenance = cfg.maintenance.as_ref().map_or(0.0, |m| 1.0 / m.interval_s);
    let per_s = 1.0 / cfg.checkpoint_interval_s + cfg.job_failures_per_s() + maintenance;
    let per_seed = cfg.horizon_s * per_s;
    let per_point = per_seed * cfg.seeds as f64;
    if per_seed > MAX_TURNS_PER_SEED || per_point > MAX_TURNS_PER_POINT {
        return Err(src.error(
            "plan.horizon",
            format!(
                "this plan would take about {per_seed:.3e} checkpoints and failures per seed \
                 ({per_point:.3e} over {} seeds); at most {MAX_TURNS_PER_SEED:.0e} per seed and \
                 {MAX_TURNS_PER_POINT:.0e} in all: shorten plan.horizon, lengthen \
                 checkpoint.interval, lower faults.rates or plan.seeds",
                cfg.seeds
            ),
        ));
    }
    Ok(())
}

fn validate(name: &str, raw: RawPlanFile, src: &Source) -> Result<PlanConfig, ScenarioError> {
    if raw
        .job
        .as_ref()
        .is_some_and(|job| job.contains_key("steps"))
    {
        return Err(src.error(
            "job.steps",
            "this is a run scenario (it sets job.steps): `faultline run` runs it; a planner \
             scenario has a [plan] table and failure rates, and no steps",
        ));
    }
    let (gpus, gpus_per_node) =
        faultline_scenario::validate_gpus(src, raw.cluster.gpus, raw.cluster.gpus_per_node)?;
    let nodes = gpus.div_ceil(gpus_per_node);
    let plan = validate_plan(src, &raw.plan)?;
    let (checkpoint_interval_s, checkpoint_write_time_s, checkpoint_persist_time_s) =
        validate_checkpoint(src, &raw.checkpoint)?;
    let (mut recovery, detection_time_s) = validate_recovery(src, &raw.recovery)?;
    (recovery.replicas, recovery.replica_gpus) =
        validate_replicas(src, &raw, gpus, recovery.policy)?;
    let faults = validate_faults(src, &raw.faults, detection_time_s)?;
    let fail_slow = validate_fail_slow(src, &raw.faults)?;
    let lemons = validate_lemons(src, &raw.faults.lemon, nodes)?;
    let config = PlanConfig {
        name: name.to_string(),
        description: raw.scenario.description,
        gpus,
        gpus_per_node,
        nodes,
        horizon_s: plan.horizon_s,
        seeds: plan.seeds,
        root_seed: plan.root_seed,
        sweep: raw.plan.sweep.clone(),
        checkpoint_interval_s,
        checkpoint_write_time_s,
        checkpoint_persist_time_s,
        recovery,
        faults,
        fail_slow,
        lemons,
        maintenance: plan.maintenance,
        step_time_s: 0.0,
    };
    check_work(src, &config)?;
    Ok(config)
}

/// The `[plan]` table, checked.
struct PlanSection {
    horizon_s: f64,
    seeds: usize,
    root_seed: u64,
    maintenance: Option<Maintenance>,
}

fn validate_plan(src: &Source, p: &RawPlan) -> Result<PlanSection, ScenarioError> {
    let horizon_s = duration_at_least(src, "plan.horizon", &p.horizon, "30d", (60.0, "1min"))?;
    let seeds = in_range(src, "plan.seeds", p.seeds.unwrap_or(100), 1, 10_000_000)?;
    let root_seed = in_range(src, "plan.seed", p.seed.unwrap_or(1), 0, i64::MAX)? as u64;
    for (idx, item) in p.sweep.iter().enumerate() {
        parse_sweep(item).map_err(|message| src.error(&format!("plan.sweep.{idx}"), message))?;
    }
    let maintenance = match (&p.maintenance_interval, &p.maintenance_duration) {
        (None, None) => None,
        (interval, duration) => {
            // Planned maintenance is weekly or monthly; an hour is already absurd.
            let interval_s = duration_at_least(
                src,
                "plan.maintenance_interval",
                interval,
                "0s",
                (3600.0, "1h"),
            )?;
            Some(Maintenance {
                interval_s,
                duration_s: duration_s(src, "plan.maintenance_duration", duration, "0s")?,
            })
        }
    };

    Ok(PlanSection {
        horizon_s,
        seeds,
        root_seed,
        maintenance,
    })
}

/// The checkpoint interval, write time and persist time, in seconds.
fn validate_checkpoint(src: &Source, c: &RawCheckpoint) -> Result<(f64, f64, f64), ScenarioError> {
    // Each interval is one turn of the model's loop: below a second, a month takes too long.
    let checkpoint_interval_s =
        duration_at_least(src, "checkpoint.interval", &c.interval, "1h", (1.0, "1s"))?;
    let checkpoint_write_time_s = duration_s(src, "checkpoint.write_time", &c.write_time, "0s")?;
    let checkpoint_persist_time_s =
        duration_s(src, "checkpoint.persist_time", &c.persist_time, "0s")?;

    Ok((
        checkpoint_interval_s,
        checkpoint_write_time_s,
        checkpoint_persist_time_s,
    ))
}

/// The recovery policy and its times, and the default detection time of every kind.
fn validate_recovery(src: &Source, r: &RawRecovery) -> Result<(Recovery, f64), ScenarioError> {
    let policy_name = r.policy.as_deref().unwrap_or("restart");
    let policy = Policy::from_name(policy_name).ok_or_else(|| {
        src.error(
            "recovery.policy",
            format!(
                "unknown policy {policy_name:?}; expected one of \"restart\", \"in-memory\", \
                 \"hot-spare\", \"per-replica\""
            ),
        )
    })?;
    let restart_time_s = duration_s(src, "recovery.restart_time", &r.restart_time, "10min")?;
    let detection_time_s = duration_s(src, "recovery.detection_time", &r.detection_time, "0s")?;
    let recovery = Recovery {
        policy,
        restart_time_s,
        in_memory_restore_time_s: duration_s(
            src,
            "recovery.in_memory_restore_time",
            &r.in_memory_restore_time,
            "3min",
        )?,
        hot_spare_time_s: duration_s(src, "recovery.hot_spare_time", &r.hot_spare_time, "5min")?,
        per_replica_stall_time_s: duration_s(
            src,
            "recovery.per_replica_stall_time",
            &r.per_replica_stall_time,
            "3min",
        )?,
        // Set by `validate_replicas`.
        replicas: 0,
        replica_gpus: 0,
        replica_rejoin_time_s: match &r.replica_rejoin_time {
            Some(_) => duration_s(
                src,
                "recovery.replica_rejoin_time",
                &r.replica_rejoin_time,
                "",
            )?,
            None => restart_time_s,
        },
        spare_nodes: match r.spare_nodes {
            None => None,
            Some(n) => Some(in_range(
                src,
                "recovery.spare_nodes",
                n,
                0,
                MAX_GPUS as i64,
            )?),
        },
        repair_time_s: duration_s(src, "recovery.repair_time", &r.repair_time, "3d")?,
    };

    Ok((recovery, detection_time_s))
}

/// The replica count and size: from `[parallelism]` (tp x pp GPUs a replica, dp of them, dp
/// derived as the GPUs over tp x pp when not given), from `recovery.replica_gpus`, or from
/// `recovery.replicas`. Two of them that disagree are refused, naming the later key; so is a
/// layout of one replica under per-replica, which has no other replica to go on with.
fn validate_replicas(
    src: &Source,
    raw: &RawPlanFile,
    gpus: usize,
    policy: Policy,
) -> Result<(usize, usize), ScenarioError> {
    let layout = match &raw.parallelism {
        Some(p) => Some(validate_layout(src, p, gpus)?),
        None => None,
    };
    let r = &raw.recovery;
    let by_size = match r.replica_gpus {
        Some(n) => {
            let size = in_range(src, "recovery.replica_gpus", n, 1, MAX_GPUS as i64)?;
            if gpus % size != 0 {
                let message = format!("{size} GPUs a replica do not divide cluster.gpus = {gpus}");
                return Err(src.error("recovery.replica_gpus", message));
            }
            if let Some((unit, _)) = layout.filter(|&(unit, _)| unit != size) {
                let message = format!(
                    "{size} GPUs a replica, but [parallelism] makes a replica tp x pp = {unit} GPUs"
                );
                return Err(src.error("recovery.replica_gpus", message));
            }
            Some((size, gpus / size))
        }
        None => None,
    };
    let derived = layout.or(by_size);
    let Some((size, dp)) = derived else {
        let replicas = in_range(
            src,
            "recovery.replicas",
            r.replicas.unwrap_or(8),
            2,
            1 << 20,
        )?;
        return Ok((replicas, gpus.div_ceil(replicas)));
    };
    let source = if layout.is_some() {
        "[parallelism]"
    } else {
        "recovery.replica_gpus"
    };
    if let Some(given) = r.replicas {
        in_range(src, "recovery.replicas", given, 2, 1 << 20)?;
        if given as usize != dp {
            let message =
                format!("{given} replicas, but {source} gives {dp} replicas of {size} GPUs");
            return Err(src.error("recovery.replicas", message));
        }
    }
    if dp < 2 && policy == Policy::PerReplica {
        let key = match &raw.parallelism {
            Some(p) => layout_key(p),
            None => "recovery.replica_gpus",
        };
        let message = format!(
            "per-replica recovery needs at least 2 data-parallel replicas; {source} gives 1 \
             replica of all {gpus} GPUs"
        );
        return Err(src.error(key, message));
    }
    Ok((dp, size))
}

/// The `[parallelism]` key an error about the replica count names: the last of dp, pp and tp
/// the file gives (so that the error has a line), tp when it gives none.
fn layout_key(p: &RawParallelism) -> &'static str {
    if p.dp.is_some() {
        "parallelism.dp"
    } else if p.pp.is_some() || p.tp.is_none() {
        "parallelism.pp"
    } else {
        "parallelism.tp"
    }
}

/// `[parallelism]`: tp x pp GPUs a replica and dp replicas, which must fill `cluster.gpus`.
fn validate_layout(
    src: &Source,
    p: &RawParallelism,
    gpus: usize,
) -> Result<(usize, usize), ScenarioError> {
    let tp = in_range(src, "parallelism.tp", p.tp.unwrap_or(1), 1, 256)?;
    let pp = in_range(src, "parallelism.pp", p.pp.unwrap_or(1), 1, 1024)?;
    let unit = tp * pp;
    if gpus % unit != 0 {
        let message = format!("tp x pp = {unit} does not divide cluster.gpus = {gpus}");
        let key = if p.pp.is_some() {
            "parallelism.pp"
        } else {
            "parallelism.tp"
        };
        return Err(src.error(key, message));
    }
    let dp = match p.dp {
        Some(dp) => in_range(src, "parallelism.dp", dp, 1, MAX_GPUS as i64)?,
        None => gpus / unit,
    };
    if unit * dp != gpus {
        let message = format!(
            "tp x pp x dp = {tp} x {pp} x {dp} = {}, but cluster.gpus = {gpus}",
            unit * dp
        );
        return Err(src.error("parallelism.dp", message));
    }
    Ok((unit, dp))
}

/// Each failure kind's process: its rate, its distribution and its detection time.
fn validate_faults(
    src: &Source,
    f: &RawFaults,
    detection_time_s: f64,
) -> Result<Vec<FaultProcess>, ScenarioError> {
    let mut faults: Vec<FaultProcess> = (0..FAULT_KINDS.len())
        .map(|idx| FaultProcess {
            rate_per_node_s: 0.0,
            distribution: Distribution::Exponential,
            detection_s: match idx {
                HANG => HANG_DEFAULT_DETECTION_S,
                _ => detection_time_s,
            },
        })
        .collect();
    for (key, &rate) in &f.rates {
        let full_key = format!("faults.rates.{key}");
        let kind = key
            .strip_suffix("_failures_per_1000_node_days")
            .ok_or_else(|| {
                src.error(
                    &full_key,
                    "expected a key named <kind>_failures_per_1000_node_days, e.g. \
                     node_failures_per_1000_node_days",
                )
            })?;
        let idx = fault_kind(src, "faults.rates", kind).map_err(|_| {
            src.error(
                &full_key,
                format!("unknown failure kind {kind:?}; expected one of {FAULT_KINDS:?}"),
            )
        })?;
        if !(rate.is_finite() && (0.0..=1e4).contains(&rate)) {
            return Err(src.error(
                &full_key,
                format!("expected a rate from 0 to 1e4 failures per 1,000 node-days, got {rate}"),
            ));
        }
        faults[idx].rate_per_node_s = rate / SECONDS_PER_NODE_DAY_PER_1000;
    }
    validate_shapes_and_detection(src, f, &mut faults)?;
    Ok(faults)
}

/// The kind named in `{key_prefix}.{name}`, as an index into [`FAULT_KINDS`].
fn fault_kind(src: &Source, key_prefix: &str, name: &str) -> Result<usize, ScenarioError> {
    FAULT_KINDS.iter().position(|k| *k == name).ok_or_else(|| {
        src.error(
            &format!("{key_prefix}.{name}"),
            format!("unknown failure kind {name:?}; expected one of {FAULT_KINDS:?}"),
        )
    })
}

/// `faults.distribution`, `faults.weibull_shape` and `faults.detection`, per kind.
fn validate_shapes_and_detection(
    src: &Source,
    f: &RawFaults,
    faults: &mut [FaultProcess],
) -> Result<(), ScenarioError> {
    for (kind, name) in &f.distribution {
        let idx = fault_kind(src, "faults.distribution", kind)?;
        let key = format!("faults.distribution.{kind}");
        faults[idx].distribution = match name.as_str() {
            "exponential" => Distribution::Exponential,
            "weibull" => {
                let shape = *f.weibull_shape.get(kind).ok_or_else(|| {
                    src.error(
                        &key,
                        format!("a Weibull distribution needs faults.weibull_shape.{kind}"),
                    )
                })?;
                Distribution::Weibull { shape }
            }
            other => {
                return Err(src.error(
                    &key,
                    format!(
                        "unknown distribution {other:?}; expected \"exponential\" or \"weibull\""
                    ),
                ))
            }
        };
    }
    for (kind, &shape) in &f.weibull_shape {
        fault_kind(src, "faults.weibull_shape", kind)?;
        // Below 0.1 almost every gap is too short to advance the clock; the published fits
        // are 0.5 to 1 (Schroeder and Gibson 2006). The scenario's run loader takes the same.
        let key = format!("faults.weibull_shape.{kind}");
        if !(shape.is_finite() && (0.1..=10.0).contains(&shape)) {
            return Err(src.error(
                &key,
                format!("expected a Weibull shape from 0.1 to 10, got {shape}"),
            ));
        }
    }
    for (kind, text) in &f.detection {
        let idx = fault_kind(src, "faults.detection", kind)?;
        faults[idx].detection_s = duration_s(
            src,
            &format!("faults.detection.{kind}"),
            &Some(text.clone()),
            "",
        )?;
    }
    Ok(())
}

/// `faults.degrade_slowdown` (1.01 to 100) and `faults.degrade_duration` (1s to 30d), with
/// the defaults [`FailSlow`] gives.
fn validate_fail_slow(src: &Source, f: &RawFaults) -> Result<FailSlow, ScenarioError> {
    let slowdown = f.degrade_slowdown.unwrap_or(1.34);
    if !(slowdown.is_finite() && (1.01..=100.0).contains(&slowdown)) {
        return Err(src.error(
            "faults.degrade_slowdown",
            format!("expected a step-time factor from 1.01 to 100, got {slowdown}"),
        ));
    }
    let duration_s = duration_s(src, "faults.degrade_duration", &f.degrade_duration, "24min")?;
    if !(1.0..=30.0 * 86_400.0).contains(&duration_s) {
        return Err(src.error(
            "faults.degrade_duration",
            format!("expected from 1s to 30d, got {duration_s} s"),
        ));
    }
    let bandwidth = f.degrade_bandwidth.unwrap_or(0.5);
    if !(bandwidth.is_finite() && (1e-3..=1.0).contains(&bandwidth)) {
        return Err(src.error(
            "faults.degrade_bandwidth",
            format!("expected a share of the bandwidth from 1e-3 to 1, got {bandwidth}"),
        ));
    }
    Ok(FailSlow {
        slowdown,
        duration_s,
        bandwidth,
    })
}

/// `[faults.lemon]`: a share of nodes that fail more often, and when they are drained.
fn validate_lemons(src: &Source, lemon: &RawLemon, nodes: usize) -> Result<Lemons, ScenarioError> {
    let fraction = lemon.node_fraction.unwrap_or(0.0);
    if !(0.0..=0.5).contains(&fraction) {
        return Err(src.error(
            "faults.lemon.node_fraction",
            format!("expected a share of nodes from 0 to 0.5, got {fraction}"),
        ));
    }
    let rate_multiplier = lemon.rate_multiplier.unwrap_or(1.0);
    if !(rate_multiplier.is_finite() && (1.0..=1e4).contains(&rate_multiplier)) {
        return Err(src.error(
            "faults.lemon.rate_multiplier",
            format!("expected a multiplier from 1 to 1e4, got {rate_multiplier}"),
        ));
    }
    let lemons = Lemons {
        nodes: (nodes as f64 * fraction).round() as usize,
        rate_multiplier,
        exclude_after: in_range(
            src,
            "faults.lemon.exclude_after",
            lemon.exclude_after.unwrap_or(0),
            0,
            1_000_000,
        )? as u64,
    };

    Ok(lemons)
}

/// Splits `key=v1,v2,...` into the key and its values.
pub fn parse_sweep(item: &str) -> Result<(String, Vec<String>), String> {
    let (key, values) = item
        .split_once('=')
        .ok_or("expected KEY=V1,V2,..., e.g. checkpoint.interval=10min,30min,1h")?;
    let key = key.trim();
    let values: Vec<String> = values
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if key.is_empty() || values.is_empty() {
        return Err("expected KEY=V1,V2,..., e.g. checkpoint.interval=10min,30min,1h".into());
    }
    Ok((key.to_string(), values))
}
