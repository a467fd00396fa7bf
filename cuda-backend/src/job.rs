//! A scenario's training job on real hardware: its settings (read from the same TOML files as
//! the simulator, with the simulator's defaults, including `[checkpoint]`, the recovery policy
//! and `[[faults.crash]]` at a step), one rank's job (trainer-core's `job::run`, with
//! trainer-core's checkpoints on real files), and the JSON report, whose shared fields mean
//! what the simulator's do.
//!
//! Sections the job does not need (`[fabric]`, `[storage]`, the rest of `[recovery]` and
//! `[faults]`, `cluster.spare_nodes`) are validated as the simulator validates them, and not
//! used. On real hardware a `ModelTimeNs` checkpoint interval is wall time.
//!
//! The settings come from `faultline-scenario`, the one reader of scenario files, which the
//! simulator uses too: both programs accept, default and refuse the same keys alike.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use faultline_scenario::{CrashSpec, CrashTarget, CrashWhen, RecoveryPolicy, Scenario};
use serde::Serialize;
use trainer_core::collectives::Collective;
use trainer_core::digest::Digest;
use trainer_core::job::{self, JobConfig, JobOutcome, Trainer};
use trainer_core::layout_job;
use trainer_core::{Backend, CommError, Event, Placement, Tier};

use crate::device::RankDevice;
use crate::local::{run_ranks, LocalWorld, Mark};
use crate::store::Tiers;

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
    /// `[[faults.hang]]` and `[[faults.desync]]` entries: the runner does not make a rank
    /// hang or desync (the simulator does), and says so.
    pub hangs_not_injected: usize,
    /// `[[faults.degrade]]` entries, and whether random degrades were asked for: the runner
    /// cannot slow a real link (the simulator does), and says so.
    pub degrades_not_injected: (usize, bool),
}

/// A scenario the runner cannot use: the file, line, column and key, and what is wrong. The
/// simulator's own error type, since both programs read scenarios through `faultline-scenario`.
pub use faultline_scenario::ScenarioError as SettingsError;

/// Reads a scenario's text through the one scenario reader (`faultline-scenario`), so the
/// runner accepts and refuses exactly what the simulator does, with the same messages; then
/// takes what the job needs and refuses what real hardware cannot do. `origin` names the text
/// in errors.
pub fn parse_scenario(
    name: &str,
    origin: &str,
    text: &str,
    overrides: &[String],
) -> Result<JobSettings, SettingsError> {
    let (scenario, source) = faultline_scenario::load_str_located(name, origin, text, overrides)?;
    if scenario.control.policy == RecoveryPolicy::PerReplica {
        return Err(source.error(
            "recovery.policy",
            "\"per-replica\" runs in the simulator only: the local and NCCL controllers \
             restart the job and cannot drop a replica; use \"restart\", \"in-memory\" \
             or \"hot-spare\"",
        ));
    }
    Ok(JobSettings::from_scenario(&scenario))
}

impl JobSettings {
    /// What the runner takes from a loaded scenario.
    pub fn from_scenario(scenario: &Scenario) -> JobSettings {
        let placement = scenario.placement();
        let (failures_at_step, crashes_not_injected) =
            crashes_at_step(&scenario.control.crashes, &placement);
        JobSettings {
            name: scenario.name.clone(),
            seed: scenario.run.seed,
            placement,
            job: scenario.job.clone(),
            gpu_achieved_flops_per_s: scenario.gpu_achieved_flops_per_s,
            max_restarts: scenario.control.max_restarts,
            failures_at_step,
            crashes_not_injected,
            hangs_not_injected: scenario.control.hangs.len() + scenario.control.desyncs.len(),
            degrades_not_injected: (
                scenario.degrades.degrades.len(),
                scenario.degrades.random_rate_per_link_per_ns > 0.0,
            ),
        }
    }
}

/// The scenario's crashes at a step, as (rank, step) with every rank of a crashed node; and
/// how many crashes (at a model time, or after some commits) are left out.
fn crashes_at_step(crashes: &[CrashSpec], placement: &Placement) -> (Vec<(usize, u64)>, usize) {
    let (mut at_step, mut not_injected) = (Vec::new(), 0);
    for crash in crashes {
        let CrashWhen::AtStep(step) = crash.when else {
            not_injected += 1;
            continue;
        };
        match crash.target {
            CrashTarget::Node(node) => at_step.extend(
                (0..placement.world_size)
                    .filter(|&rank| placement.node_of(rank) == node)
                    .map(|rank| (rank, step)),
            ),
            CrashTarget::Gpu(gpu) => at_step.push((gpu, step)),
        }
    }
    (at_step, not_injected)
}

/// Loads and parses a scenario file.
pub fn load_scenario(path: &Path, overrides: &[String]) -> Result<JobSettings, SettingsError> {
    let (name, origin, text) = faultline_scenario::read_scenario_file(path)?;
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
    if config.layout.is_some() {
        // A layout job takes no checkpoints (the scenario reader refuses [checkpoint] beside
        // [parallelism]), so there is nothing to restore: `check_run_flags` refuses --restore.
        assert!(
            !options.restore,
            "a layout job has no checkpoint to restore"
        );
        return (layout_job::run(backend, config).await, None);
    }
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
    (param_digest, replicas_agree): (u64, bool),
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
        param_digest: hex(param_digest),
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
    let judged = judge(settings, &results);
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
        judged,
        &marks,
        timings,
    )
}

/// The run's parameter digest and whether the replicas agree. Without a layout: rank 0's
/// digest, and every rank ends with the same model (restart bookkeeping, the steps recomputed,
/// may differ by rank). With one: the simulator's digest over the shards, each shard's
/// replicas holding the same bits, and every rank ending with the same steps and loss.
fn judge(settings: &JobSettings, results: &[RankResult]) -> (u64, bool) {
    let outcome0 = &results[0].outcome;
    let same_end = |o: &JobOutcome| {
        (o.steps_completed, o.final_loss.to_bits())
            == (outcome0.steps_completed, outcome0.final_loss.to_bits())
    };
    let ended_alike = results.iter().all(|r| same_end(&r.outcome));
    match &settings.job.layout {
        Some(layout) => {
            let outcomes: Vec<&JobOutcome> = results.iter().map(|r| &r.outcome).collect();
            let (digest, agree) = layout_job::param_digest(&layout.layout, &outcomes);
            (digest, agree && ended_alike)
        }
        None => {
            let digest0 = outcome0.param_digest;
            let agree = results.iter().all(|r| r.outcome.param_digest == digest0);
            (digest0, agree && ended_alike)
        }
    }
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
