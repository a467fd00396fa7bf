//! A scenario's training job on real hardware: its settings (read from the same TOML files as
//! the simulator, with the simulator's defaults, including `[checkpoint]`, the recovery policy
//! and `[[faults.crash]]` at a step), one rank's job (trainer-core's `job::run`, with
//! trainer-core's checkpoints on real files), and the JSON report, whose shared fields mean
//! what the simulator's do.
//!
//! Sections the job does not need (`[fabric]`, `[storage]`, the rest of `[recovery]` and
//! `[faults]`, `cluster.spare_nodes`) are accepted and left to the simulator, which validates
//! them. On real hardware a `ModelTimeNs` checkpoint interval is wall time.
//!
//! The settings are parsed here rather than borrowed from `faultline-sim`, which this crate
//! must not depend on; a conformance test in the `tests` crate checks that both read every
//! scenario into the same `JobConfig`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use trainer_core::checkpoint::{CheckpointPolicy, Interval};
use trainer_core::collectives::{Algo, Collective};
use trainer_core::digest::Digest;
use trainer_core::integrity::DetectionPolicy;
use trainer_core::job::{self, JobConfig, JobOutcome, Trainer};
use trainer_core::{Backend, CommError, Event, Placement, Tier};

use crate::device::RankDevice;
use crate::local::{run_ranks, LocalWorld, Mark};
use crate::store::Tiers;
use crate::units;

/// What the runner needs from a scenario file.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSettings {
    /// The file stem, e.g. `quickstart`.
    pub name: String,
    pub seed: u64,
    pub placement: Placement,
    pub job: JobConfig,
    /// What the simulator charges compute at: peak FLOP rate times MFU.
    pub gpu_achieved_flops_per_s: f64,
    /// `recovery.max_restarts`: restarts after which the job is abandoned.
    pub max_restarts: u64,
    /// The scenario's `[[faults.crash]]` entries with `at_step`, as (rank, step): on the local
    /// transport that rank's compute fails at the start of that step, once (see
    /// `local::LocalWorld::inject_failure`). Crashes at a model time (`at`) are not injected on
    /// real hardware; `crashes_not_injected` counts them.
    pub failures_at_step: Vec<(usize, u64)>,
    pub crashes_not_injected: usize,
}

/// A scenario the runner cannot use: the key and what is wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct SettingsError {
    pub origin: String,
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for SettingsError {}

/// Applies `key=value` overrides (the value in TOML syntax, or a bare string) to `table`.
fn apply_override(table: &mut toml::Table, set: &str) -> Result<(), String> {
    let (key, value) = set
        .split_once('=')
        .ok_or_else(|| format!("--set {set:?}: expected KEY=VALUE"))?;
    let (key, value) = (key.trim(), value.trim());
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").expect("just parsed"),
        Err(_) => toml::Value::String(value.to_string()),
    };
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().filter(|p| !p.is_empty()).ok_or("empty key")?;
    let mut here = table;
    for part in parts {
        here = here
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("--set {key}: {part} is not a table"))?;
    }
    here.insert(last.to_string(), value);
    Ok(())
}

/// Reads typed values out of the scenario table, with the simulator's defaults.
struct Reader<'a> {
    origin: &'a str,
    table: &'a toml::Table,
}

impl<'a> Reader<'a> {
    fn get(&self, key: &str) -> Option<&'a toml::Value> {
        let (section, name) = key.split_once('.').expect("dotted key");
        self.table.get(section)?.as_table()?.get(name)
    }

    fn error(&self, key: &str, message: impl Into<String>) -> SettingsError {
        SettingsError {
            origin: self.origin.to_string(),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }

    fn int(
        &self,
        key: &str,
        default: Option<i64>,
        min: i64,
        max: i64,
    ) -> Result<i64, SettingsError> {
        let value = match (self.get(key), default) {
            (Some(v), _) => v
                .as_integer()
                .ok_or_else(|| self.error(key, format!("expected an integer, found {v}")))?,
            (None, Some(d)) => d,
            (None, None) => return Err(self.error(key, "missing")),
        };
        if value < min || value > max {
            return Err(self.error(key, format!("{value} is outside {min} to {max}")));
        }
        Ok(value)
    }

    fn float(&self, key: &str, default: f64, max: f64) -> Result<f64, SettingsError> {
        let value = match self.get(key) {
            Some(toml::Value::Float(f)) => *f,
            Some(toml::Value::Integer(i)) => *i as f64,
            Some(v) => return Err(self.error(key, format!("expected a number, found {v}"))),
            None => default,
        };
        if !(value > 0.0 && value <= max) {
            return Err(self.error(key, format!("{value} is outside (0, {max}]")));
        }
        Ok(value)
    }

    fn string<'t>(&'t self, key: &str, default: &'t str) -> Result<&'t str, SettingsError> {
        match self.get(key) {
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.error(key, format!("expected a string, found {v}"))),
            None => Ok(default),
        }
    }

    fn algo(&self, key: &str, default: &str) -> Result<Algo, SettingsError> {
        let text = match self.get(key) {
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.error(key, format!("expected a string, found {v}")))?,
            None => default,
        };
        Algo::from_name(text).ok_or_else(|| {
            self.error(
                key,
                format!(
                    "unknown algorithm {text:?}; expected one of \"ring\", \"tree\", \
                     \"halving-doubling\", \"hierarchical\""
                ),
            )
        })
    }
}

/// Parses a scenario's text; `origin` names it in errors. Only the keys the job needs are read;
/// the simulator validates the rest.
pub fn parse_scenario(
    name: &str,
    origin: &str,
    text: &str,
    overrides: &[String],
) -> Result<JobSettings, SettingsError> {
    let whole = |message: String| SettingsError {
        origin: origin.to_string(),
        key: None,
        message,
    };
    let mut table: toml::Table = toml::from_str(text).map_err(|e| whole(e.to_string()))?;
    for set in overrides {
        apply_override(&mut table, set).map_err(whole)?;
    }
    let r = Reader {
        origin,
        table: &table,
    };
    let gpus = r.int("cluster.gpus", None, 1, 1_000_000)? as usize;
    let gpus_per_node = r.int("cluster.gpus_per_node", Some(8), 1, 1024)? as usize;
    let algo = r.algo("job.collective", "hierarchical")?;
    let inter = r.algo("job.inter_node_collective", "halving-doubling")?;
    if inter == Algo::Hierarchical {
        return Err(r.error(
            "job.inter_node_collective",
            "the algorithm across nodes cannot itself be hierarchical",
        ));
    }
    let model_params = r.float("job.model_params", 8e9, 1e15)?;
    let grad_bytes_per_param = r.float("job.grad_bytes_per_param", 2.0, 16.0)?;
    let tokens = r.float("job.tokens_per_gpu_per_step", 4096.0, 1e9)?;
    let peak_tflops = r.float("job.gpu_peak_tflops", 989.0, 1e6)?;
    let mfu = r.float("job.mfu", 0.4, 1.0)?;
    let optimizer_flops_per_param = r.float("job.optimizer_flops_per_param", 10.0, 1e6)?;
    let job = JobConfig {
        steps: r.int("job.steps", None, 1, 10_000_000)? as u64,
        collective: Collective::with_inter_node(algo, inter),
        proxy_elems: r.int("job.proxy_elems", Some(256), 1, 1 << 20)? as usize,
        batch_per_rank: r.int("job.batch_per_rank", Some(4), 1, 4096)? as usize,
        learning_rate: r.float("job.learning_rate", 0.3, 10.0)? as f32,
        data_seed: r.int("job.data_seed", Some(0x5eed), i64::MIN, i64::MAX)? as u64,
        modelled_grad_bytes: (model_params * grad_bytes_per_param).round() as u64,
        modelled_step_flops: 6.0 * model_params * tokens,
        modelled_optimizer_flops: optimizer_flops_per_param * model_params,
        checkpoint: None,
        detection: detection_policy(&r)?,
    };
    let job = JobConfig {
        collective: job
            .collective
            .with_checksums(job.detection.payload_checksums),
        ..job
    };
    let seed = r.int("run.seed", Some(1), 0, i64::MAX)? as u64;
    let restore_from_memory = match r.string("recovery.policy", "restart")? {
        "restart" => false,
        "in-memory" | "hot-spare" => true,
        "per-replica" => {
            return Err(r.error(
                "recovery.policy",
                "\"per-replica\" runs in the simulator only: the local and NCCL controllers \
                 restart the job and cannot drop a replica; use \"restart\", \"in-memory\" \
                 or \"hot-spare\"",
            ))
        }
        other => {
            return Err(r.error(
                "recovery.policy",
                format!(
                    "unknown policy {other:?}; expected \"restart\", \"in-memory\" or \"hot-spare\""
                ),
            ))
        }
    };
    let checkpoint = match table.get("checkpoint") {
        None => None,
        Some(_) => Some(checkpoint_policy(&r, model_params, restore_from_memory)?),
    };
    let max_restarts = r.int("recovery.max_restarts", Some(100), 0, 1_000_000)? as u64;
    let placement = Placement::new(gpus, gpus_per_node);
    let (failures_at_step, crashes_not_injected) = crashes(&r, &placement)?;
    Ok(JobSettings {
        name: name.to_string(),
        seed,
        placement,
        job: JobConfig { checkpoint, ..job },
        gpu_achieved_flops_per_s: peak_tflops * 1e12 * mfu,
        max_restarts,
        failures_at_step,
        crashes_not_injected,
    })
}

/// The `[detection]` section as trainer-core's policy, as the simulator builds it (its
/// `checksum_bandwidth` prices checksums in model time, which real hardware measures instead).
fn detection_policy(r: &Reader<'_>) -> Result<DetectionPolicy, SettingsError> {
    let d = DetectionPolicy::DEFAULT;
    let flag = |key: &str, default: bool| match r.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| r.error(key, format!("expected true or false, found {v}"))),
    };
    let factor = |key: &str, default: Option<f64>| -> Result<Option<f64>, SettingsError> {
        let value = match r.get(key) {
            None => return Ok(default),
            Some(toml::Value::Float(f)) => *f,
            Some(toml::Value::Integer(i)) => *i as f64,
            Some(v) => return Err(r.error(key, format!("expected a number, found {v}"))),
        };
        if value == 0.0 {
            Ok(None)
        } else if value.is_finite() && (1.0..=1e12).contains(&value) {
            Ok(Some(value))
        } else {
            let message = format!("expected 0 (off) or 1 to 1e12, got {value}");
            Err(r.error(key, message))
        }
    };
    let every = d.fingerprint_every_steps as i64;
    Ok(DetectionPolicy {
        payload_checksums: flag("detection.payload_checksums", d.payload_checksums)?,
        gradient_norm_factor: factor(
            "detection.gradient_norm_guard_factor",
            d.gradient_norm_factor,
        )?,
        loss_factor: factor("detection.loss_guard_factor", d.loss_factor)?,
        fingerprint_every_steps: r.int(
            "detection.fingerprint_every_steps",
            Some(every),
            0,
            1_000_000,
        )? as u64,
        rerun_suspect_steps: flag("detection.rerun_suspect_steps", d.rerun_suspect_steps)?,
    })
}

/// The `[checkpoint]` section as trainer-core's policy, as the simulator builds it.
fn checkpoint_policy(
    r: &Reader<'_>,
    model_params: f64,
    restore_from_memory: bool,
) -> Result<CheckpointPolicy, SettingsError> {
    let expected = "a step count such as 50, or a duration such as \"30min\"";
    let interval = match r.get("checkpoint.interval") {
        Some(toml::Value::Integer(steps)) if *steps >= 1 => Interval::Steps(*steps as u64),
        Some(toml::Value::String(text)) => match units::parse_duration_ns(text) {
            Ok(ns) if ns > 0 => Interval::ModelTimeNs(ns),
            _ => {
                return Err(r.error(
                    "checkpoint.interval",
                    format!("expected {expected} above zero, got {text:?}"),
                ))
            }
        },
        Some(other) => {
            return Err(r.error(
                "checkpoint.interval",
                format!("expected {expected} above zero, got {other}"),
            ))
        }
        None => return Err(r.error("checkpoint.interval", "missing")),
    };
    let keep = r.int("checkpoint.keep", Some(2), 1, 1000)? as usize;
    let state_bytes_per_param = r.float("checkpoint.state_bytes_per_param", 16.0, 64.0)?;
    let bandwidth = r.string("checkpoint.snapshot_bandwidth", "25GB/s")?;
    let snapshot_bytes_per_s = units::parse_bandwidth_bytes_per_s(bandwidth).map_err(|e| {
        r.error(
            "checkpoint.snapshot_bandwidth",
            format!("expected {e}, got {bandwidth:?}"),
        )
    })?;
    let buddy_copy = match r.get("checkpoint.buddy_copy") {
        None => true,
        Some(v) => v.as_bool().ok_or_else(|| {
            r.error(
                "checkpoint.buddy_copy",
                format!("expected true or false, found {v}"),
            )
        })?,
    };
    Ok(CheckpointPolicy {
        interval,
        keep,
        modelled_state_bytes: (model_params * state_bytes_per_param).round() as u64,
        snapshot_bytes_per_s,
        buddy_copy,
        restore_from_memory,
    })
}

/// The scenario's `[[faults.crash]]` entries at a step, as (rank, step) with every rank of a
/// crashed node; and how many crashes at a model time were left out.
fn crashes(
    r: &Reader<'_>,
    placement: &Placement,
) -> Result<(Vec<(usize, u64)>, usize), SettingsError> {
    let key = "faults.crash";
    let Some(list) = r.get(key) else {
        return Ok((Vec::new(), 0));
    };
    let list = list
        .as_array()
        .ok_or_else(|| r.error(key, "expected an array of tables ([[faults.crash]])"))?;
    let (mut at_step, mut not_injected) = (Vec::new(), 0);
    for (idx, entry) in list.iter().enumerate() {
        let field = |name: &str| entry.get(name).and_then(toml::Value::as_integer);
        let Some(step) = field("at_step") else {
            not_injected += 1;
            continue;
        };
        let bad = |what: &str| r.error(&format!("{key}.{idx}"), what.to_string());
        let step = u64::try_from(step).map_err(|_| bad("at_step must not be negative"))?;
        let ranks: Vec<usize> = match (field("node"), field("gpu")) {
            (Some(node), None) if node >= 0 && (node as usize) < placement.node_count() => {
                let node = node as usize;
                (0..placement.world_size)
                    .filter(|&rank| placement.node_of(rank) == node)
                    .collect()
            }
            (None, Some(gpu)) if gpu >= 0 && (gpu as usize) < placement.world_size => {
                vec![gpu as usize]
            }
            _ => {
                return Err(bad(
                    "expected exactly one of `node` or `gpu`, inside the cluster",
                ))
            }
        };
        at_step.extend(ranks.into_iter().map(|rank| (rank, step)));
    }
    Ok((at_step, not_injected))
}

/// Loads and parses a scenario file.
pub fn load_scenario(path: &Path, overrides: &[String]) -> Result<JobSettings, SettingsError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SettingsError {
        origin: origin.clone(),
        key: None,
        message: format!("cannot read the scenario file: {e}"),
    })?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_scenario(&name, &origin, &text, overrides)
}

/// Where checkpoints go, and the crash and restart settings of one run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The persistent tier: checkpoints that outlive the process. `None`: a fresh temporary
    /// directory, removed after the run.
    pub checkpoint_dir: Option<PathBuf>,
    /// The root of the per-node host-memory directories (`Tier::Host`, `Tier::Peer`). `None`:
    /// under `/dev/shm` where it exists (see [`Tiers::default_host_root`]), named after the
    /// checkpoint directory so that a restarted process finds the same one; a fresh one,
    /// removed after the run, without a checkpoint directory.
    pub host_dir: Option<PathBuf>,
    /// This process is a restart: before training, restore the newest checkpoint that verifies
    /// (trainer-core's restore, from the tiers the scenario's recovery policy allows), or start
    /// over when none does.
    pub restore: bool,
    /// Abort the whole process when a rank begins this step: a real crash for the
    /// crash-and-restore check.
    pub crash_at_step: Option<u64>,
    /// Inject the scenario's `[[faults.crash]]` failures at a step (local transport).
    pub inject_faults: bool,
    /// A receive that waits longer than this fails with a timeout.
    pub recv_timeout: Duration,
}

impl RunOptions {
    /// Temporary checkpoint directories, no restore, no crash, the scenario's faults, a
    /// two-minute receive timeout.
    pub fn new() -> RunOptions {
        RunOptions {
            checkpoint_dir: None,
            host_dir: None,
            restore: false,
            crash_at_step: None,
            inject_faults: true,
            recv_timeout: Duration::from_secs(120),
        }
    }

    /// The tiers for a job on `node_count` nodes, and the directories to remove after the run
    /// (the temporary ones).
    pub fn tiers(&self, node_count: usize) -> (Tiers, Vec<PathBuf>) {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let unique = || {
            format!(
                "faultline-gpu-{}-{}",
                std::process::id(),
                RUNS.fetch_add(1, Ordering::Relaxed)
            )
        };
        let mut temporary = Vec::new();
        let persistent = match &self.checkpoint_dir {
            Some(dir) => dir.clone(),
            None => {
                let dir = std::env::temp_dir().join(unique());
                temporary.push(dir.clone());
                dir
            }
        };
        let host = match (&self.host_dir, &self.checkpoint_dir) {
            (Some(dir), _) => dir.clone(),
            (None, Some(ckpt)) => {
                let absolute = std::path::absolute(ckpt).unwrap_or_else(|_| ckpt.clone());
                let mut digest = Digest::new();
                digest.bytes(absolute.to_string_lossy().as_bytes());
                Tiers::default_host_root(&format!("faultline-gpu-host-{:016x}", digest.finish()))
            }
            (None, None) => {
                let dir = Tiers::default_host_root(&unique());
                temporary.push(dir.clone());
                dir
            }
        };
        (Tiers::new(persistent, host, node_count), temporary)
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions::new()
    }
}

/// What one rank hands back.
#[derive(Debug)]
pub struct RankResult {
    pub outcome: JobOutcome,
    /// The step a restarted process restored (`--restore`), if a checkpoint verified.
    pub resumed_from_step: Option<u64>,
    /// Why the job stopped before its last step, if it did.
    pub failure: Option<String>,
}

impl RankResult {
    /// `failure` explains an outcome short of `steps`; `last` is the rank's last failure.
    pub fn new(
        outcome: JobOutcome,
        steps: u64,
        resumed_from_step: Option<u64>,
        last: Option<CommError>,
    ) -> RankResult {
        let failure = (outcome.steps_completed < steps).then(|| {
            let last = last.map_or_else(|| "none".to_string(), |e| e.to_string());
            format!(
                "the job was abandoned after {} of {steps} steps and {} restarts; last failure: {last}",
                outcome.steps_completed, outcome.restarts
            )
        });
        RankResult {
            outcome,
            resumed_from_step,
            failure,
        }
    }
}

/// One rank's whole job: trainer-core's `job::run` (its checkpoints, restarts and restores),
/// or, in a restarted process (`options.restore`), a restore of the newest verified
/// checkpoint first and then the same loop as `job::run`.
pub async fn train_rank<B: Backend>(
    backend: &B,
    config: JobConfig,
    options: &RunOptions,
    restart_generation: u64,
) -> (JobOutcome, Option<u64>) {
    if !options.restore {
        return (job::run(backend, config).await, None);
    }
    let mut trainer = Trainer::new(config.clone());
    let mut generation = restart_generation;
    let mut resumed = None;
    let mut first = true;
    loop {
        let attempt = async {
            trainer.restore(backend, generation).await?;
            if first {
                resumed = (trainer.step > 0).then_some(trainer.step);
            }
            while trainer.step < trainer.config.steps {
                trainer.train_step(backend).await?;
            }
            Ok::<(), CommError>(())
        };
        let result = attempt.await;
        first = false;
        match result {
            Ok(()) => return (trainer.outcome(), resumed),
            Err(error) => {
                let order = backend.await_restart(&error).await;
                if order.job_abandoned {
                    return (trainer.outcome(), resumed);
                }
                if order.memory_lost {
                    let mut fresh = Trainer::new(config.clone());
                    fresh.restarts = trainer.restarts;
                    fresh.recomputed_steps = trainer.recomputed_steps;
                    fresh.high_water_step = trainer.high_water_step;
                    fresh.first_loss = trainer.first_loss;
                    trainer = fresh;
                }
                trainer.restarts += 1;
                generation = order.generation;
            }
        }
    }
}

/// Measured times, from CUDA events on a GPU (the host clock without one).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    /// `cuda-events` or `host-clock`.
    pub source: &'static str,
    pub wall_ms: u64,
    /// Rank 0's steps timed, from its StepBegin to its StepEnd.
    pub steps_timed: u64,
    pub step_ns_mean: u64,
    pub step_ns_min: u64,
    pub step_ns_max: u64,
    /// Rank 0's gradient all-reduces, from CollectiveBegin to CollectiveEnd.
    pub collective_ns_mean: u64,
    /// What the simulator's compute model charges per step for the full-size model; the
    /// fabric's share comes from running the same scenario in the simulator.
    pub modelled_compute_ns_per_step: u64,
}

/// The report. Fields shared with the simulator's `run --json` mean the same.
#[derive(Clone, Debug, Serialize)]
pub struct GpuRunReport {
    pub scenario: String,
    pub seed: u64,
    /// `local` (every rank in this process) or `nccl` (one rank per process).
    pub transport: &'static str,
    pub device: String,
    pub gpus: usize,
    pub gpus_per_node: usize,
    pub collective: &'static str,
    pub steps_requested: u64,
    pub steps_completed: u64,
    pub param_digest: String,
    pub final_loss: f32,
    pub first_loss: f32,
    pub replicas_agree: bool,
    /// The step this process restored before training (`--restore`), if any.
    pub resumed_from_step: Option<u64>,
    /// Times the job restarted after a failure inside this run (local transport).
    pub restarts: u64,
    /// Steps trained again after restores.
    pub recomputed_steps: u64,
    /// Checkpoints rank 0 committed (wrote the manifest of).
    pub checkpoints_committed: u64,
    /// Rank 0's restores after restarts, by the tier its shard came from.
    pub restores_by_tier: std::collections::BTreeMap<String, u64>,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
    pub timings: Timings,
}

/// The simulator's name for a tier in `restores_by_tier`.
pub fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Host => "host",
        Tier::Peer { .. } => "peer",
        Tier::Persistent => "persistent",
    }
}

/// Checkpoints committed and restores by tier, from rank 0's events.
pub fn checkpoint_counts<M>(marks: &[Mark<M>]) -> (u64, std::collections::BTreeMap<String, u64>) {
    let mut committed = 0;
    let mut restores = std::collections::BTreeMap::new();
    for m in marks {
        match m.event {
            Event::CheckpointCommitted { .. } => committed += 1,
            Event::Restored { tier, .. } => {
                *restores.entry(tier_name(tier).to_string()).or_insert(0) += 1
            }
            _ => {}
        }
    }
    (committed, restores)
}

pub fn hex(value: u64) -> String {
    format!("{value:016x}")
}

/// Durations between matching begin and end events of rank 0.
pub fn durations_ns<M>(marks: &[Mark<M>], elapsed: impl Fn(&M, &M) -> u64) -> (Vec<u64>, Vec<u64>) {
    let mut steps = Vec::new();
    let mut collectives = Vec::new();
    let mut step_begin = None;
    let mut collective_begin = None;
    for m in marks {
        match m.event {
            Event::StepBegin { .. } => step_begin = Some(&m.mark),
            Event::StepEnd { .. } => {
                if let Some(b) = step_begin.take() {
                    steps.push(elapsed(b, &m.mark));
                }
            }
            Event::CollectiveBegin { .. } => collective_begin = Some(&m.mark),
            Event::CollectiveEnd { .. } => {
                if let Some(b) = collective_begin.take() {
                    collectives.push(elapsed(b, &m.mark));
                }
            }
            // A failed step has no end: a restart drops its begin.
            Event::Restored { .. } | Event::RestoreFallback { .. } => {
                step_begin = None;
                collective_begin = None;
            }
            Event::CheckpointSnapshot { .. }
            | Event::CheckpointCommitted { .. }
            | Event::ComputeTimed { .. } => {}
            Event::ChecksumMismatch { .. }
            | Event::SdcSuspect { .. }
            | Event::SdcVerdict { .. }
            | Event::HealthCheckCost { .. }
            | Event::SdcRollback { .. } => {}
        }
    }
    (steps, collectives)
}

pub fn timings(
    source: &'static str,
    wall_ms: u64,
    steps_ns: &[u64],
    collectives_ns: &[u64],
    settings: &JobSettings,
) -> Timings {
    let mean = |v: &[u64]| {
        if v.is_empty() {
            0
        } else {
            v.iter().sum::<u64>() / v.len() as u64
        }
    };
    let job = &settings.job;
    Timings {
        source,
        wall_ms,
        steps_timed: steps_ns.len() as u64,
        step_ns_mean: mean(steps_ns),
        step_ns_min: steps_ns.iter().copied().min().unwrap_or(0),
        step_ns_max: steps_ns.iter().copied().max().unwrap_or(0),
        collective_ns_mean: mean(collectives_ns),
        modelled_compute_ns_per_step: ((job.modelled_step_flops + job.modelled_optimizer_flops)
            / settings.gpu_achieved_flops_per_s
            * 1e9) as u64,
    }
}

/// Builds the report from every rank's result (in rank order; a process of the NCCL transport
/// passes only its own and says whether the others agreed).
pub fn report<M>(
    settings: &JobSettings,
    transport: &'static str,
    device: String,
    results: &[RankResult],
    replicas_agree: bool,
    marks0: &[Mark<M>],
    timings: Timings,
) -> GpuRunReport {
    let first = &results[0];
    let outcome0 = &first.outcome;
    let error = results
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.failure.as_ref().map(|e| format!("rank {i}: {e}")));
    let (checkpoints_committed, restores_by_tier) = checkpoint_counts(marks0);
    GpuRunReport {
        scenario: settings.name.clone(),
        seed: settings.seed,
        transport,
        device,
        gpus: settings.placement.world_size,
        gpus_per_node: settings.placement.gpus_per_node,
        collective: settings.job.collective.algo.name(),
        steps_requested: settings.job.steps,
        steps_completed: outcome0.steps_completed,
        param_digest: hex(outcome0.param_digest),
        final_loss: outcome0.final_loss,
        first_loss: outcome0.first_loss,
        replicas_agree,
        resumed_from_step: first.resumed_from_step,
        restarts: outcome0.restarts,
        recomputed_steps: outcome0.recomputed_steps,
        checkpoints_committed,
        restores_by_tier,
        error,
        timings,
    }
}

/// Runs the job with every rank in this process, one device each, with the scenario's
/// failures at a step injected (unless `options.inject_faults` is off) and the world as the
/// job controller that restarts it.
pub fn run_local_job<D: RankDevice + 'static>(
    devices: Vec<D>,
    settings: &JobSettings,
    options: &RunOptions,
) -> GpuRunReport {
    assert_eq!(devices.len(), settings.placement.world_size);
    let started = wall_clock_start();
    let device_name = devices[0].describe();
    let (tiers, temporary) = options.tiers(settings.placement.node_count());
    let world = LocalWorld::new(
        devices,
        settings.placement.gpus_per_node,
        options.recv_timeout,
        tiers,
    );
    world.set_max_restarts(settings.max_restarts);
    world.set_crash_at_step(options.crash_at_step);
    if options.inject_faults {
        for &(rank, step) in &settings.failures_at_step {
            world.inject_failure(rank, step);
        }
    }
    let steps = settings.job.steps;
    let results = run_ranks(&world, |backend| {
        let config = settings.job.clone();
        let options = options.clone();
        let world = world.clone();
        async move {
            let (outcome, resumed) = train_rank(&backend, config, &options, 1).await;
            backend.finish();
            RankResult::new(outcome, steps, resumed, world.last_failure(backend.rank()))
        }
    });
    for dir in temporary {
        let _ = std::fs::remove_dir_all(dir);
    }
    // Replicas agree on the model; restart bookkeeping (steps recomputed) may differ by rank.
    let model = |o: &JobOutcome| (o.steps_completed, o.param_digest, o.final_loss.to_bits());
    let replicas_agree = results
        .iter()
        .all(|r| model(&r.outcome) == model(&results[0].outcome));
    let marks = world.take_marks(0);
    let device0 = world.device(0);
    let (steps_ns, collectives_ns) = durations_ns(&marks, |a, b| {
        device0
            .elapsed_ns(a, b)
            .unwrap_or_else(|e| panic!("timing events: {e}"))
    });
    let wall_ms = started.elapsed().as_millis() as u64;
    let timings = timings(D::TIMER, wall_ms, &steps_ns, &collectives_ns, settings);
    report(
        settings,
        "local",
        device_name,
        &results,
        replicas_agree,
        &marks,
        timings,
    )
}

/// Rank `rank`'s input element `idx` for a collective check: the simulator's too.
pub use trainer_core::collectives::exact_input as collective_input;

/// Runs one collective with every rank in this process, rank `r`'s element `i` being
/// `input(r, i)`, and returns every rank's result, in rank order.
pub fn run_local_collective<D: RankDevice + 'static>(
    devices: Vec<D>,
    gpus_per_node: usize,
    collective: Collective,
    op: trainer_core::Op,
    elems: usize,
    input: fn(usize, usize) -> f32,
) -> Vec<Result<Vec<f32>, CommError>> {
    let node_count = Placement::new(devices.len(), gpus_per_node).node_count();
    // A collective stores nothing: these directories are never created.
    let (tiers, _) = RunOptions::new().tiers(node_count);
    let world = LocalWorld::new(devices, gpus_per_node, Duration::from_secs(120), tiers);
    let results = run_ranks(&world, |backend| async move {
        let mut data: Vec<f32> = (0..elems).map(|i| input(backend.rank(), i)).collect();
        let group = backend.placement().world();
        let bytes = (elems * 4) as u64;
        collective
            .run(&backend, &group, op, 0, &mut data, bytes)
            .await
            .map(|()| data)
    });
    assert_eq!(world.undelivered(), 0, "messages left undelivered");
    results
}

/// Wall time feeds only `wall_ms`.
#[allow(clippy::disallowed_methods)]
fn wall_clock_start() -> Instant {
    Instant::now()
}
