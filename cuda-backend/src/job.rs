//! A scenario's training job on real hardware: its settings (read from the same TOML files as
//! the simulator, with the simulator's defaults), one rank's training loop with real
//! checkpoints, and the JSON report, whose shared fields mean what the simulator's do.
//!
//! The settings are parsed here rather than borrowed from `faultline-sim`, which this crate
//! must not depend on; a conformance test in the `tests` crate checks that both read every
//! scenario into the same `JobConfig`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use trainer_core::collectives::{Algo, Collective};
use trainer_core::job::{JobConfig, JobOutcome, Trainer};
use trainer_core::{Backend, CommError, Event, Placement};

use crate::device::RankDevice;
use crate::local::{run_ranks, LocalWorld, Mark};
use crate::store::{self, FileStore, StoreError, TrainerState};

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

impl Reader<'_> {
    fn get(&self, key: &str) -> Option<&toml::Value> {
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
    };
    let seed = r.int("run.seed", Some(1), 0, i64::MAX)? as u64;
    Ok(JobSettings {
        name: name.to_string(),
        seed,
        placement: Placement::new(gpus, gpus_per_node),
        job,
        gpu_achieved_flops_per_s: peak_tflops * 1e12 * mfu,
    })
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

/// Checkpointing and crash settings for one run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Save every rank's state to this store every `checkpoint_every_steps` steps.
    pub checkpoint_store: Option<FileStore>,
    pub checkpoint_every_steps: u64,
    /// Start from the newest checkpoint that every rank completed.
    pub restore: bool,
    /// Abort the whole process once a rank has completed this many steps: a real crash for the
    /// crash-and-restore check.
    pub crash_at_step: Option<u64>,
    /// A receive that waits longer than this fails with a timeout.
    pub recv_timeout: Duration,
}

impl RunOptions {
    /// No checkpoints, no crash, a two-minute receive timeout.
    pub fn new() -> RunOptions {
        RunOptions {
            checkpoint_store: None,
            checkpoint_every_steps: 0,
            restore: false,
            crash_at_step: None,
            recv_timeout: Duration::from_secs(120),
        }
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions::new()
    }
}

/// Why one rank stopped early.
#[derive(Debug)]
pub enum RankFailure {
    Comm(CommError),
    Store(StoreError),
    /// Restore asked for, and no step has a checkpoint from every rank.
    NothingToRestore,
}

impl std::fmt::Display for RankFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RankFailure::Comm(e) => write!(f, "{e}"),
            RankFailure::Store(e) => write!(f, "{e}"),
            RankFailure::NothingToRestore => {
                f.write_str("no step has a checkpoint from every rank to restore")
            }
        }
    }
}

/// What one rank hands back.
#[derive(Debug)]
pub struct RankResult {
    pub outcome: Result<JobOutcome, RankFailure>,
    /// Mean loss of step 0, if this run trained it.
    pub first_loss: f32,
    pub resumed_from_step: Option<u64>,
}

/// The blob name of `rank`'s checkpoint after `step` steps.
pub fn checkpoint_name(step: u64, rank: usize) -> String {
    format!("step-{step:010}-{}", store::checkpoint_name(rank))
}

/// The newest step for which all `world_size` ranks committed a checkpoint. Blobs are only
/// listed once renamed into place, so a half-written one never counts.
pub fn latest_complete_step(
    store: &FileStore,
    world_size: usize,
) -> Result<Option<u64>, StoreError> {
    let mut ranks_per_step: BTreeMap<u64, usize> = BTreeMap::new();
    for name in store.list()? {
        let step = name
            .strip_prefix("step-")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(step, _)| step.parse::<u64>().ok());
        if let Some(step) = step {
            *ranks_per_step.entry(step).or_default() += 1;
        }
    }
    Ok(ranks_per_step
        .into_iter()
        .rev()
        .find(|(_, count)| *count == world_size)
        .map(|(step, _)| step))
}

/// One rank's whole job: restore if asked, train, checkpoint on schedule.
pub async fn train_rank<B: Backend>(
    backend: &B,
    config: JobConfig,
    options: &RunOptions,
) -> RankResult {
    let mut result = RankResult {
        outcome: Err(RankFailure::NothingToRestore),
        first_loss: f32::NAN,
        resumed_from_step: None,
    };
    let mut trainer = Trainer::new(config);
    if options.restore {
        let store = options
            .checkpoint_store
            .as_ref()
            .expect("restore needs a checkpoint store");
        let step = match latest_complete_step(store, backend.world_size()) {
            Ok(Some(step)) => step,
            Ok(None) => return result,
            Err(e) => {
                result.outcome = Err(RankFailure::Store(e));
                return result;
            }
        };
        let state = match store
            .read(&checkpoint_name(step, backend.rank()))
            .and_then(|bytes| {
                TrainerState::decode(&bytes).map_err(|reason| StoreError::Corrupt {
                    name: checkpoint_name(step, backend.rank()),
                    reason,
                })
            }) {
            Ok(state) => state,
            Err(e) => {
                result.outcome = Err(RankFailure::Store(e));
                return result;
            }
        };
        assert_eq!(state.step, step, "checkpoint name and content disagree");
        assert_eq!(
            state.params.len(),
            trainer.params.len(),
            "checkpoint from a job with another proxy_elems"
        );
        trainer.params = state.params;
        trainer.step = state.step;
        trainer.last_loss = state.last_loss;
        result.resumed_from_step = Some(step);
    }
    while trainer.step < trainer.config.steps {
        match trainer.train_step(backend).await {
            Ok(loss) if trainer.step == 1 => result.first_loss = loss,
            Ok(_) => {}
            Err(e) => {
                result.outcome = Err(RankFailure::Comm(e));
                return result;
            }
        }
        if let Some(store) = &options.checkpoint_store {
            let every = options.checkpoint_every_steps;
            if every > 0 && trainer.step % every == 0 {
                let state = TrainerState {
                    step: trainer.step,
                    last_loss: trainer.last_loss,
                    params: trainer.params.clone(),
                };
                let name = checkpoint_name(trainer.step, backend.rank());
                if let Err(e) = store.write(&name, &state.encode()) {
                    result.outcome = Err(RankFailure::Store(e));
                    return result;
                }
            }
        }
        if options.crash_at_step == Some(trainer.step) {
            eprintln!(
                "faultline-gpu: rank {} crashing on purpose after step {} (--crash-at-step)",
                backend.rank(),
                trainer.step
            );
            std::process::abort();
        }
    }
    result.outcome = Ok(trainer.outcome());
    result
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
    pub resumed_from_step: Option<u64>,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
    pub timings: Timings,
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
pub fn report(
    settings: &JobSettings,
    transport: &'static str,
    device: String,
    results: &[RankResult],
    replicas_agree: bool,
    timings: Timings,
) -> GpuRunReport {
    let first = &results[0];
    let outcome0 = first.outcome.as_ref().ok();
    let error = results
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.outcome.as_ref().err().map(|e| format!("rank {i}: {e}")));
    GpuRunReport {
        scenario: settings.name.clone(),
        seed: settings.seed,
        transport,
        device,
        gpus: settings.placement.world_size,
        gpus_per_node: settings.placement.gpus_per_node,
        collective: settings.job.collective.algo.name(),
        steps_requested: settings.job.steps,
        steps_completed: outcome0.map_or(0, |o| o.steps_completed),
        param_digest: hex(outcome0.map_or(0, |o| o.param_digest)),
        final_loss: outcome0.map_or(f32::NAN, |o| o.final_loss),
        first_loss: first.first_loss,
        replicas_agree,
        resumed_from_step: first.resumed_from_step,
        error,
        timings,
    }
}

/// Runs the job with every rank in this process, one device each.
pub fn run_local_job<D: RankDevice + 'static>(
    devices: Vec<D>,
    settings: &JobSettings,
    options: &RunOptions,
) -> GpuRunReport {
    assert_eq!(devices.len(), settings.placement.world_size);
    let started = wall_clock_start();
    let device_name = devices[0].describe();
    let world = LocalWorld::new(
        devices,
        settings.placement.gpus_per_node,
        options.recv_timeout,
    );
    let results = run_ranks(&world, |backend| {
        let config = settings.job.clone();
        let options = options.clone();
        async move { train_rank(&backend, config, &options).await }
    });
    let outcome0 = results[0].outcome.as_ref().ok();
    let replicas_agree = results.iter().all(|r| r.outcome.as_ref().ok() == outcome0);
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
        timings,
    )
}

/// Rank `rank`'s input element `idx` for a collective check: small integers, so every sum in
/// any order is exact. The same function as the simulator's `collective_input`.
pub fn collective_input(rank: usize, idx: usize) -> f32 {
    ((rank * 7 + idx * 13) % 17) as f32 - 8.0
}

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
    let world = LocalWorld::new(devices, gpus_per_node, Duration::from_secs(120));
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
