//! Running things on the simulated cluster: a scenario's training job, or one collective.
//! Each returns a report; the caller decides how to print it.

use std::cell::RefCell;
use std::rc::Rc;

use serde::Serialize;
use trainer_core::collectives::{Algo, Collective, Op};
use trainer_core::job;
use trainer_core::layout_job::{self, TimeSplit, Traffic, TrafficByKind};
use trainer_core::Backend;

use crate::books::{Detector, FaultKind, LostCause, RarePath, TierName};
use crate::executor::{run_ranks, Deadlock, ExecutorKind};
use crate::scenario::{ExecutorChoice, Scenario, AUTO_MADSIM_MAX_GPUS};
use crate::storage::AtomicityViolation;
use crate::topology::Topology;
use crate::world::{FaultReport, LinkFlapReport, SimBackend, StragglerReport, World, WorldConfig};

/// Why a simulation could not produce a report.
#[derive(Debug)]
pub enum SimError {
    Deadlock(Deadlock),
    /// An event was due past the longest model time a run represents (about 13 days): the
    /// scenario's sizes, bandwidths or rates make a run longer than faultline can model.
    PastHorizon {
        at_ns: u64,
    },
    /// The requested executor is not in this build.
    ExecutorUnavailable(String),
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimError::Deadlock(d) => {
                write!(
                    f,
                    "deadlock at model time {} ns: {}",
                    d.model_time_ns,
                    d.stuck.join("; ")
                )
            }
            SimError::PastHorizon { at_ns } => write!(
                f,
                "model time would reach {:.1} days, past the {:.1} days a run can represent: \
                 a bandwidth, a compute rate or a size in the scenario makes some transfer, \
                 compute or write take too long; check fabric.*_bandwidth, storage.*, \
                 job.model_params, job.gpu_peak_tflops and job.mfu",
                *at_ns as f64 / 86_400e9,
                trainer_core::units::MAX_MODEL_TIME_NS as f64 / 86_400e9
            ),
            SimError::ExecutorUnavailable(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for SimError {}

pub fn resolve_executor(choice: ExecutorChoice, gpus: usize) -> Result<ExecutorKind, SimError> {
    let kind = match choice {
        ExecutorChoice::Madsim => ExecutorKind::Madsim,
        ExecutorChoice::Fifo => ExecutorKind::Fifo,
        ExecutorChoice::Auto if gpus <= AUTO_MADSIM_MAX_GPUS && cfg!(madsim) => {
            ExecutorKind::Madsim
        }
        ExecutorChoice::Auto => ExecutorKind::Fifo,
    };
    if kind == ExecutorKind::Madsim && !cfg!(madsim) {
        return Err(SimError::ExecutorUnavailable(
            "the madsim executor needs a build with --cfg madsim (the workspace's \
             .cargo/config.toml sets it; a RUSTFLAGS variable replaces it)"
                .into(),
        ));
    }
    Ok(kind)
}

/// The result of running a scenario's training job.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// The flight-recorder dumps, when the run was asked to keep them (never serialised: the
    /// caller writes them to files of their own).
    #[serde(skip)]
    pub flight_dumps: Vec<crate::flight::Dump>,
    pub scenario: String,
    pub seed: u64,
    pub executor: &'static str,
    pub gpus: usize,
    pub gpus_per_node: usize,
    pub collective: &'static str,
    pub steps_requested: u64,
    pub steps_completed: u64,
    pub model_time_ns: u64,
    pub trace_digest: String,
    pub param_digest: String,
    pub final_loss: f32,
    /// Mean loss at the first step, for seeing that training converges.
    pub first_loss: f32,
    /// True when every replica ended with the same parameters.
    pub replicas_agree: bool,
    pub messages: u64,
    pub modelled_bytes: u64,
    pub events_fired: u64,
    /// Faults injected and detected, recoveries, and model time lost by cause.
    pub faults: FaultSummary,
    pub recoveries: u64,
    pub checkpoints_committed: u64,
    /// Blocking snapshots taken (checkpoints started), counted on rank 0.
    pub checkpoint_snapshots: u64,
    /// Model time from rank 0's snapshot to the commit, summed over committed checkpoints.
    pub checkpoint_persist_ns: u64,
    /// Model time of the first commit; absent when none was committed.
    pub first_commit_ns: Option<u64>,
    /// Checkpoints still persisting when a failure aborted the job.
    pub checkpoints_lost_in_flight: u64,
    /// Restores that skipped a committed checkpoint because a shard failed verification.
    pub restore_fallbacks: u64,
    /// The controller's policy.
    pub recovery_policy: &'static str,
    pub spares_used: u64,
    /// Failures that found no spare node left.
    pub spare_pool_exhausted: u64,
    /// Ranks' restores by where their shard came from (host, peer, persistent).
    pub restores_by_tier: std::collections::BTreeMap<TierName, u64>,
    pub lost_time_ns_by_cause: std::collections::BTreeMap<LostCause, u64>,
    /// The rare paths of fault handling the run took, and how often (for the swarm's
    /// coverage; not in the JSON report).
    #[serde(skip)]
    pub rare_paths: std::collections::BTreeMap<RarePath, u64>,
    /// Model time rank 0 spent on steps it had not completed before, over all model time.
    pub goodput: f64,
    /// Distinct instants of model time at which events fired.
    pub instants: u64,
    /// Reads of a checkpoint that was not atomically committed (storage's audit); listed only
    /// when there are any.
    #[serde(skip_serializing_if = "is_zero")]
    pub atomicity_violation_count: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub atomicity_violations: Vec<AtomicityViolation>,
    /// The bug planted in the trainer logic, for tests of the swarm; absent normally.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planted_bug: Option<&'static str>,
    /// When the last fault was injected, for the liveness check.
    #[serde(skip)]
    pub last_fault_ns: Option<u64>,
    /// Link flaps: reroutes, retries, lost transfers, detection; absent without flaps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_flaps: Option<LinkFlapReport>,
    /// Per-replica recovery: drops, re-admissions, degraded steps; absent under other policies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_replica: Option<crate::world::PerReplicaReport>,
    /// Straggler slowdowns and scores; absent without either.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stragglers: Option<StragglerReport>,
    /// Fail-slow links: episodes, retransmissions, step times inside and outside them, and
    /// the detections while one was in force; absent when none can happen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degrades: Option<crate::world::DegradeReport>,
    /// Per fault that stopped work: the groups it hit and the GPUs idle for how long; absent
    /// when nothing stopped.
    #[serde(skip_serializing_if = "crate::world::BlastRadius::is_empty")]
    pub blast_radius: crate::world::BlastRadius,
    /// The parallelism layout, its bubble and where step time went; absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<LayoutReport>,
    /// Rank 0's completed step durations in order (for tests and tools; not serialised).
    #[serde(skip)]
    pub rank0_step_ns: Vec<u64>,
    /// The run's faults, detections and recoveries in words (the text summary's timeline;
    /// the JSON report leaves it to the trace).
    #[serde(skip)]
    pub story: crate::story::Story,
    /// Wall-clock milliseconds; the only field that differs between identical runs.
    pub wall_ms: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultSummary {
    pub injected: std::collections::BTreeMap<FaultKind, u64>,
    pub detected: std::collections::BTreeMap<Detector, u64>,
    pub skipped_after_finish: u64,
    pub job_abandoned: bool,
    /// Some ranks finished the last step after others had died: nothing was restarted.
    pub finished_despite_failure: bool,
    /// Silent data corruptions no check caught, each with the step it entered.
    pub escaped: Vec<crate::world::Escape>,
    /// Per SDC kind: injected, detected, escaped, detection latency and time lost.
    pub sdc: std::collections::BTreeMap<String, crate::world::SdcKindReport>,
    /// GPUs a health check found computing wrong sums, replaced.
    pub quarantined_gpus: Vec<usize>,
    /// Each watchdog firing: the flight recorder's diagnosis, beside the hang injected.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flight_recorder: Vec<crate::world::FlightReport>,
}

pub fn run_scenario(scenario: &Scenario) -> Result<RunReport, SimError> {
    run_scenario_with(scenario, RunHooks::default()).map(|(report, _)| report)
}

/// What a run may carry besides its scenario: a recorder for the trace and timeline, and the
/// test hook that perturbs one compute call (for `faultline check`'s own test).
#[derive(Default)]
pub struct RunHooks {
    pub recorder: Option<crate::trace::Recorder>,
    pub perturb_compute: Option<u64>,
    /// Told after each step rank 0 ends: for a progress bar, never for results.
    pub progress: Option<crate::world::ProgressHook>,
    /// Keep every flight-recorder dump (`run --fr-dir`), handed back in the report.
    pub keep_flight_dumps: bool,
}

/// Runs a scenario with `hooks`; hands the recorder back for the caller to finish.
pub fn run_scenario_with(
    scenario: &Scenario,
    hooks: RunHooks,
) -> Result<(RunReport, Option<crate::trace::Recorder>), SimError> {
    let started = wall_clock_start();
    let kind = resolve_executor(scenario.run.executor, scenario.cluster.gpus)?;
    let world = Rc::new(RefCell::new(World::new(WorldConfig::of(scenario))));
    {
        let mut w = world.borrow_mut();
        if let Some(recorder) = hooks.recorder {
            w.set_recorder(recorder);
        }
        if let Some(call) = hooks.perturb_compute {
            w.perturb_compute(call);
        }
        if let Some(progress) = hooks.progress {
            w.set_progress(progress, scenario.job.steps);
        }
        if hooks.keep_flight_dumps {
            w.keep_flight_dumps();
        }
    }
    let results = run_jobs(kind, scenario, &world);
    let passed = world.borrow().passed_horizon_at_ns();
    let results = match (results, passed) {
        (Ok(results), None) => results,
        (outcome, passed) => {
            if let Some(recorder) = world.borrow_mut().take_recorder() {
                recorder.discard();
            }
            return Err(match (outcome, passed) {
                (_, Some(at_ns)) => SimError::PastHorizon { at_ns },
                (Err(deadlock), None) => SimError::Deadlock(deadlock),
                (Ok(_), None) => unreachable!("matched above"),
            });
        }
    };
    let recorder = world.borrow_mut().take_recorder();
    let mut report = report_of(scenario, kind, &world.borrow(), &results, started);
    report.flight_dumps = world.borrow_mut().take_flight_dumps();
    Ok((report, recorder))
}

/// Runs every rank's job: the plain job, or with `[parallelism]` the layout job. One executor
/// run per kind of job, so that each rank's task is that job's future itself, neither sized by
/// the other's nor boxed behind a pointer that the executor's prefetch of the task would not
/// follow (at 100,000 ranks every poll of a rank's future starts with loading it).
fn run_jobs(
    kind: ExecutorKind,
    scenario: &Scenario,
    world: &Rc<RefCell<World>>,
) -> Result<Vec<job::JobOutcome>, Deadlock> {
    // Shared, not copied into each rank's future beside the trainer made from it.
    let config = Rc::new(scenario.job.clone());
    let seed = scenario.run.seed;
    if config.layout.is_some() {
        return run_ranks(kind, seed, world, |rank| {
            let backend = SimBackend::new(world.clone(), rank);
            let config = config.clone();
            async move { layout_job::run(&backend, (*config).clone()).await }
        });
    }
    run_ranks(kind, seed, world, |rank| {
        let backend = SimBackend::new(world.clone(), rank);
        let config = config.clone();
        async move { job::run(&backend, (*config).clone()).await }
    })
}

impl FaultSummary {
    /// The report's view of the controller's books, taken out of them.
    fn take_from(faults: &mut FaultReport) -> FaultSummary {
        FaultSummary {
            injected: std::mem::take(&mut faults.injected),
            detected: std::mem::take(&mut faults.detected),
            skipped_after_finish: faults.skipped_after_finish,
            job_abandoned: faults.abandoned,
            finished_despite_failure: faults.finished_despite_failure,
            escaped: std::mem::take(&mut faults.escaped),
            sdc: std::mem::take(&mut faults.sdc),
            quarantined_gpus: std::mem::take(&mut faults.quarantined_gpus),
            flight_recorder: std::mem::take(&mut faults.flight_recorder),
        }
    }
}

/// The report of a finished run: rank 0's outcome (or the first rank that finished every
/// step), whether the finished replicas agree, and the world's books.
fn report_of(
    scenario: &Scenario,
    kind: ExecutorKind,
    world: &World,
    results: &[job::JobOutcome],
    started: std::time::Instant,
) -> RunReport {
    let stats = world.stats();
    let (outcome0, param_digest, replicas_agree) = judge(scenario, results);
    let mut faults = world.fault_report().unwrap_or_default();
    let model_time_ns = world.now_ns();
    RunReport {
        flight_dumps: Vec::new(),
        scenario: scenario.name.clone(),
        seed: scenario.run.seed,
        executor: kind.name(),
        gpus: scenario.cluster.gpus,
        gpus_per_node: scenario.cluster.gpus_per_node,
        collective: scenario.job.collective.algo.name(),
        steps_requested: scenario.job.steps,
        steps_completed: outcome0.steps_completed,
        model_time_ns,
        trace_digest: hex(world.trace_digest()),
        param_digest: hex(param_digest),
        final_loss: outcome0.final_loss,
        first_loss: outcome0.first_loss,
        replicas_agree,
        messages: stats.messages,
        modelled_bytes: stats.modelled_bytes,
        events_fired: stats.events_fired,
        faults: FaultSummary::take_from(&mut faults),
        recoveries: faults.recoveries,
        checkpoints_committed: faults.checkpoints_committed,
        checkpoint_snapshots: faults.checkpoint_snapshots,
        checkpoint_persist_ns: faults.checkpoint_persist_ns,
        first_commit_ns: faults.first_commit_ns,
        checkpoints_lost_in_flight: faults.checkpoints_lost_in_flight,
        restore_fallbacks: faults.restore_fallbacks,
        recovery_policy: scenario.control.policy.name(),
        spares_used: faults.spares_used,
        spare_pool_exhausted: faults.spare_pool_exhausted,
        restores_by_tier: faults.restores_by_tier,
        lost_time_ns_by_cause: faults.lost_time_ns_by_cause,
        rare_paths: world.coverage().reached(),
        goodput: faults.useful_step_ns as f64 / model_time_ns.max(1) as f64,
        instants: stats.instants,
        atomicity_violation_count: world.storage().audit.violation_count,
        atomicity_violations: world.storage().audit.violations.clone(),
        planted_bug: scenario.planted_bug.map(|bug| bug.name()),
        last_fault_ns: faults.last_fault_ns,
        per_replica: faults.per_replica,
        link_flaps: world.link_flap_report(),
        stragglers: world.straggler_report(),
        degrades: world.degrade_report(),
        blast_radius: world.blast_radius(scenario.job.layout.as_ref().map(|l| &l.layout)),
        layout: LayoutReport::of(scenario, results),
        rank0_step_ns: world.rank0_step_ns(),
        story: world.story().clone(),
        wall_ms: wall_ms_since(started),
    }
}

/// The outcome the report speaks for (rank 0's, or the first rank's that finished every step),
/// the parameter digest, and whether the replicas agree. Ranks that died after others had
/// finished never resumed: the ranks that finished are judged.
fn judge<'r>(
    scenario: &Scenario,
    results: &'r [job::JobOutcome],
) -> (&'r job::JobOutcome, u64, bool) {
    let finished: Vec<_> = results
        .iter()
        .filter(|r| r.steps_completed == scenario.job.steps)
        .collect();
    let outcome0 = finished.first().copied().unwrap_or(&results[0]);
    let (digest, agree) = match &scenario.job.layout {
        Some(layout) => layout_job::param_digest(&layout.layout, &finished),
        None => plain_digest(outcome0, &finished),
    };
    (outcome0, digest, agree)
}

/// Rank 0's parameter digest (or the first finished rank's) and whether every finished replica
/// holds the same parameters.
fn plain_digest(outcome0: &job::JobOutcome, finished: &[&job::JobOutcome]) -> (u64, bool) {
    let agree = !finished.is_empty()
        && finished
            .iter()
            .all(|r| r.param_digest == outcome0.param_digest);
    (outcome0.param_digest, agree)
}

/// A layout job's report: its shape, and rank 0's view of the pipeline (rank 0 is a first
/// stage, whose span is the whole pipeline's).
#[derive(Clone, Debug, Serialize)]
pub struct LayoutReport {
    pub tp: usize,
    pub pp: usize,
    pub dp: usize,
    pub order: &'static str,
    pub dp_sharding: &'static str,
    pub schedule: &'static str,
    pub micro_batches: usize,
    /// The share of rank 0's pipeline span without compute, measured from model time.
    pub bubble_fraction: f64,
    /// `(pp - 1) / (m + pp - 1)`: the bubble with equal stages and free communication.
    pub ideal_bubble_fraction: f64,
    /// Rank 0's model time by what it waited for, summed over its steps.
    pub time_split_ns: TimeSplitReport,
    /// Every rank's messages and their modelled bytes, by kind.
    pub traffic: TrafficReport,
    /// The global mean loss of each step (for tests; not in the JSON report).
    #[serde(skip)]
    pub step_losses: Vec<f32>,
}

impl LayoutReport {
    /// The report of a scenario's layout job; `None` without a layout.
    fn of(scenario: &Scenario, results: &[job::JobOutcome]) -> Option<LayoutReport> {
        let job = scenario.job.layout.as_ref()?;
        let rank0 = results[0].layout.as_ref().expect("a layout job's outcome");
        Some(LayoutReport {
            tp: job.layout.tp,
            pp: job.layout.pp,
            dp: job.layout.dp,
            order: job.layout.order.name(),
            dp_sharding: job.dp_sharding.name(),
            schedule: job.schedule.name(),
            micro_batches: job.micro_batches,
            bubble_fraction: rank0.time.bubble_fraction(),
            ideal_bubble_fraction: trainer_core::pipeline::ideal_bubble_fraction(
                job.layout.pp,
                job.micro_batches,
            ),
            time_split_ns: TimeSplitReport::from(rank0.time),
            traffic: TrafficReport::of(results),
            step_losses: rank0.losses.clone(),
        })
    }
}

/// Messages and modelled bytes of one kind, summed over the ranks.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct KindTraffic {
    pub messages: u64,
    pub modelled_bytes: u64,
}

impl From<Traffic> for KindTraffic {
    fn from(t: Traffic) -> KindTraffic {
        KindTraffic {
            messages: t.messages,
            modelled_bytes: t.modelled_bytes,
        }
    }
}

/// A layout job's messages by kind: the TP all-reduces, the stage-to-stage messages, the DP
/// collectives. Fault-free and without checkpoint votes (control traffic, in no kind), they add
/// up to the report's `messages` and `modelled_bytes`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct TrafficReport {
    pub tp: KindTraffic,
    pub pp: KindTraffic,
    pub dp: KindTraffic,
}

impl TrafficReport {
    fn of(results: &[job::JobOutcome]) -> TrafficReport {
        let mut sum = TrafficByKind::default();
        for outcome in results {
            sum.add(
                &outcome
                    .layout
                    .as_ref()
                    .expect("a layout job's outcome")
                    .traffic,
            );
        }
        TrafficReport {
            tp: sum.tp.into(),
            pp: sum.pp.into(),
            dp: sum.dp.into(),
        }
    }
}

/// [`TimeSplit`] as the JSON report spells it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct TimeSplitReport {
    pub compute: u64,
    pub tp: u64,
    pub pp: u64,
    pub dp: u64,
    pub pipeline: u64,
    pub pass_compute: u64,
}

impl From<TimeSplit> for TimeSplitReport {
    fn from(t: TimeSplit) -> TimeSplitReport {
        TimeSplitReport {
            compute: t.compute_ns,
            tp: t.tp_ns,
            pp: t.pp_ns,
            dp: t.dp_ns,
            pipeline: t.pipeline_ns,
            pass_compute: t.pass_compute_ns,
        }
    }
}

pub fn hex(value: u64) -> String {
    format!("{value:016x}")
}

/// One collective on a simulated cluster.
#[derive(Clone, Debug)]
pub struct CollectiveSpec {
    pub algo: Algo,
    pub inter_node_algo: Algo,
    pub op: Op,
    pub gpus: usize,
    pub gpus_per_node: usize,
    pub elems: usize,
    pub modelled_bytes: u64,
    pub seed: u64,
    pub executor: ExecutorKind,
    /// The cluster and fabric to run on (its `gpus` and `gpus_per_node` are replaced).
    pub base: Scenario,
}

#[derive(Clone, Debug, Serialize)]
pub struct CollectiveReport {
    pub algo: &'static str,
    pub op: &'static str,
    pub gpus: usize,
    pub gpus_per_node: usize,
    pub elems: usize,
    pub modelled_bytes: u64,
    pub seed: u64,
    pub executor: &'static str,
    /// How flows between leaves picked a spine: `ecmp` or `adaptive`.
    pub routing: &'static str,
    /// The order a flat ring visited the world in: `rail` or `rank`.
    pub ring_order: &'static str,
    pub model_time_ns: u64,
    pub messages: u64,
    pub trace_digest: String,
    pub instants: u64,
    /// Every rank's result equals the exact reference.
    pub exact: bool,
    /// Ranks whose result differs from the reference (at most 8 listed).
    pub mismatched_ranks: Vec<usize>,
    pub wall_ms: u64,
    #[serde(skip)]
    pub rank0_result: Vec<f32>,
}

/// Rank `rank`'s input element `idx`: small integers, so every sum in any order is exact.
pub use trainer_core::collectives::exact_input as collective_input;
/// Rank `rank`'s first `len` input elements, [`collective_input`] of `0..len`.
pub use trainer_core::collectives::exact_inputs as collective_inputs;

/// One collective as every rank of [`run_collective_without`] runs it.
struct RankJob {
    collective: Collective,
    group: trainer_core::Group,
    op: Op,
    elems: usize,
    bytes: u64,
}

use trainer_core::collectives::INPUT_PERIOD;

/// The exact sum over ranks `0..world` of every element of [`collective_input`]. The input
/// repeats every [`INPUT_PERIOD`] ranks, so this counts ranks per residue instead of visiting
/// `world x elems` values: at 100,000 ranks the reference costs nothing beside the run.
pub fn collective_input_sums(world: usize, elems: usize) -> Vec<i64> {
    let ranks_with_residue = |residue: usize| {
        (world / INPUT_PERIOD + usize::from(residue < world % INPUT_PERIOD)) as i64
    };
    (0..elems)
        .map(|idx| {
            (0..INPUT_PERIOD.min(world))
                .map(|residue| ranks_with_residue(residue) * collective_input(residue, idx) as i64)
                .sum()
        })
        .collect()
}

pub fn run_collective(spec: &CollectiveSpec) -> Result<CollectiveReport, SimError> {
    run_collective_without(spec, &[])
}

/// As [`run_collective`], over the world minus `dropped_ranks` (sorted, distinct; whole nodes
/// for the hierarchical algorithm), as the per-replica recovery policy runs it. Dropped ranks
/// take no part; the reference sums over the members only.
pub fn run_collective_without(
    spec: &CollectiveSpec,
    dropped_ranks: &[usize],
) -> Result<CollectiveReport, SimError> {
    let started = wall_clock_start();
    let world = Rc::new(RefCell::new(World::new(spec.world_config())));
    // Payloads are checksummed and verified as the base scenario's detection says (on by
    // default); the world charges no model time for it here (`detection.checksum_bandwidth`
    // is a scenario setting), so model times and trace digests are those of plain collectives.
    let collective = Collective::with_inter_node(spec.algo, spec.inter_node_algo)
        .with_checksums(spec.base.job.collective.payload_checksums)
        .with_ring_order(spec.base.job.collective.ring_order);
    let (op, elems, bytes) = (spec.op, spec.elems, spec.modelled_bytes);
    let placement = trainer_core::Placement::new(spec.gpus, spec.gpus_per_node);
    let group = match dropped_ranks {
        [] => placement.world(),
        ranks => (placement.world()).without(std::sync::Arc::new(ranks.to_vec())),
    };
    // What every rank runs, shared rather than copied into each rank's future: every byte a
    // rank's future holds is loaded on each of its polls.
    let job = Rc::new(RankJob {
        collective,
        group,
        op,
        elems,
        bytes,
    });
    let results = run_ranks(spec.executor, spec.seed, &world, |rank| {
        let backend = SimBackend::new(world.clone(), rank);
        let job = job.clone();
        // The rank comes from the backend, not a capture of its own: every byte the future
        // holds is loaded on each of its polls.
        async move {
            let rank = backend.rank();
            let mut data = collective_inputs(rank, job.elems);
            if job.group.index_of(rank).is_none() {
                return Ok(data);
            }
            let result = job
                .collective
                .run(&backend, &job.group, job.op, 0, &mut data, job.bytes)
                .await;
            result.map(|()| data)
        }
    });
    if let Some(at_ns) = world.borrow().passed_horizon_at_ns() {
        return Err(SimError::PastHorizon { at_ns });
    }
    let results = results.map_err(SimError::Deadlock)?;
    let reference = Reference::for_group(&collective, &placement, &job.group, op, elems);
    let mismatched = mismatched_ranks(&reference, &job.group, &results);
    let world = world.borrow();
    Ok(collective_report(
        spec, &world, mismatched, results, started,
    ))
}

/// The report of a collective that ran: its size, model time, digest and exactness.
fn collective_report(
    spec: &CollectiveSpec,
    world: &World,
    mismatched: Vec<usize>,
    results: Vec<Result<Vec<f32>, trainer_core::CommError>>,
    started: std::time::Instant,
) -> CollectiveReport {
    CollectiveReport {
        algo: spec.algo.name(),
        op: spec.op.name(),
        gpus: spec.gpus,
        gpus_per_node: spec.gpus_per_node,
        elems: spec.elems,
        modelled_bytes: spec.modelled_bytes,
        seed: spec.seed,
        executor: spec.executor.name(),
        routing: spec.base.fabric.routing.name(),
        ring_order: spec.base.job.collective.ring_order.name(),
        model_time_ns: world.now_ns(),
        messages: world.stats().messages,
        trace_digest: hex(world.trace_digest()),
        instants: world.stats().instants,
        exact: mismatched.is_empty(),
        mismatched_ranks: mismatched,
        wall_ms: wall_ms_since(started),
        rank0_result: results
            .into_iter()
            .next()
            .and_then(|r| r.ok())
            .unwrap_or_default(),
    }
}

impl CollectiveSpec {
    /// A bare world of the spec's size, with the base scenario's fabric.
    fn world_config(&self) -> WorldConfig {
        let mut cluster = self.base.cluster.clone();
        cluster.gpus = self.gpus;
        cluster.gpus_per_node = self.gpus_per_node;
        cluster.clusters = cluster.clusters.min(self.gpus.div_ceil(self.gpus_per_node));
        let topology = Topology::new(&cluster, &self.base.fabric);
        WorldConfig::bare(topology, self.base.gpu_achieved_flops_per_s)
    }
}

/// The group's ranks whose result differs from the reference (at most 8 listed).
fn mismatched_ranks(
    reference: &Reference,
    group: &trainer_core::Group,
    results: &[Result<Vec<f32>, trainer_core::CommError>],
) -> Vec<usize> {
    let mut mismatched = Vec::new();
    for (rank, result) in results.iter().enumerate() {
        if group.index_of(rank).is_none() {
            continue;
        }
        let ok = (result.as_ref()).is_ok_and(|data| reference.matches(rank, data));
        if !ok && mismatched.len() < 8 {
            mismatched.push(rank);
        }
    }
    mismatched
}

/// The exact expected result of a collective on [`collective_input`], computed once for all
/// ranks with integer arithmetic so that it is exact whatever order the algorithm summed in.
pub struct Reference {
    op: Op,
    /// All-reduce and reduce-scatter: the sums. All-gather: the gathered buffer.
    expected: Vec<f32>,
    /// Reduce-scatter: the spans each rank must hold.
    owned: Vec<Vec<trainer_core::Span>>,
}

impl Reference {
    pub fn new(
        collective: &Collective,
        placement: &trainer_core::Placement,
        op: Op,
        elems: usize,
    ) -> Reference {
        Reference::for_group(collective, placement, &placement.world(), op, elems)
    }

    /// The reference over `group`, the world perhaps minus dropped ranks: their inputs are
    /// taken out of the sums (they are few, so this stays cheap at 100,000 ranks).
    pub fn for_group(
        collective: &Collective,
        placement: &trainer_core::Placement,
        group: &trainer_core::Group,
        op: Op,
        elems: usize,
    ) -> Reference {
        let world = placement.world_size;
        let members = || (0..world).filter(|&rank| group.index_of(rank).is_some());
        let owned_by = |rank: usize| match group.index_of(rank) {
            Some(idx) => collective.owned_spans(placement, group, idx, elems, 0),
            None => Vec::new(),
        };
        let sums = || -> Vec<f32> {
            let mut sums = collective_input_sums(world, elems);
            for &dropped in group.excluded() {
                for (idx, sum) in sums.iter_mut().enumerate() {
                    *sum -= collective_input(dropped, idx) as i64;
                }
            }
            sums.into_iter().map(|s| s as f32).collect()
        };
        let (expected, owned) = match op {
            Op::AllReduce => (sums(), Vec::new()),
            Op::ReduceScatter => (sums(), (0..world).map(owned_by).collect()),
            // Each rank contributes its own input on the spans it owns; the result is, at
            // every index, the input of the rank that owns that index.
            Op::AllGather => {
                let mut gathered = vec![f32::NAN; elems];
                for owner in members() {
                    for span in owned_by(owner) {
                        for idx in span.elems() {
                            gathered[idx] = collective_input(owner, idx);
                        }
                    }
                }
                (gathered, Vec::new())
            }
            Op::Broadcast { root_idx } => (
                (0..elems)
                    .map(|i| collective_input(group.member(root_idx), i))
                    .collect(),
                Vec::new(),
            ),
            Op::Barrier => (Vec::new(), Vec::new()),
        };
        Reference {
            op,
            expected,
            owned,
        }
    }

    /// Whether `rank`'s result is exactly right, bit for bit.
    pub fn matches(&self, rank: usize, data: &[f32]) -> bool {
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits();
        match self.op {
            // Folded without an early exit, so the comparison vectorises: every rank is
            // checked at 100,000 ranks.
            Op::AllReduce | Op::AllGather | Op::Broadcast { .. } => {
                data.len() == self.expected.len()
                    && data
                        .iter()
                        .zip(&self.expected)
                        .fold(true, |all, (d, e)| all & same(*d, *e))
            }
            Op::ReduceScatter => self.owned[rank]
                .iter()
                .all(|span| span.elems().all(|i| same(data[i], self.expected[i]))),
            Op::Barrier => data
                .iter()
                .enumerate()
                .all(|(i, d)| same(*d, collective_input(rank, i))),
        }
    }
}

/// Wall time is read here and nowhere in simulated logic; it only feeds `wall_ms`.
#[allow(clippy::disallowed_methods)]
fn wall_clock_start() -> std::time::Instant {
    std::time::Instant::now()
}

fn wall_ms_since(start: std::time::Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use trainer_core::job::JobOutcome;
    use trainer_core::layout_job::{LayoutOutcome, TimeSplit, TrafficByKind};

    /// A layout job's digest is over its shards; any shard whose replicas differ, or that no
    /// finished rank holds, makes the replicas disagree.
    #[test]
    fn every_shards_replicas_must_agree() {
        let text = "[cluster]\ngpus = 8\ngpus_per_node = 4\n[job]\nsteps = 1\nproxy_layers = 2\n\
                    [parallelism]\ntp = 2\npp = 2\n";
        let scenario = crate::scenario::load_str("t", "t", text, &[]).unwrap();
        let layout = scenario.job.layout.as_deref().unwrap();
        let outcome = |rank: usize, digest: u64| JobOutcome {
            steps_completed: 1,
            final_loss: 0.5,
            param_digest: digest,
            restarts: 0,
            recomputed_steps: 0,
            first_loss: 0.5,
            layout: Some(Box::new(LayoutOutcome {
                shard: layout.layout.shard_of(rank),
                dp_rank: layout.layout.coords(rank).dp_rank,
                losses: vec![0.5],
                time: TimeSplit::default(),
                traffic: TrafficByKind::default(),
            })),
        };
        let outcomes: Vec<JobOutcome> = (0..8)
            .map(|rank| outcome(rank, 100 + layout.layout.shard_of(rank) as u64))
            .collect();
        let all: Vec<&JobOutcome> = outcomes.iter().collect();
        let (digest, agree) = trainer_core::layout_job::param_digest(&layout.layout, &all);
        assert!(agree);
        // The other replica of each shard gives the same digest.
        let replica_1: Vec<&JobOutcome> = (all.iter().copied())
            .filter(|o| o.layout.as_ref().unwrap().dp_rank == 1)
            .collect();
        assert_eq!(replica_1.len(), 4);
        assert_eq!(
            trainer_core::layout_job::param_digest(&layout.layout, &replica_1),
            (digest, true)
        );
        let mut diverged = outcomes.clone();
        diverged[5].param_digest += 1;
        let diverged: Vec<&JobOutcome> = diverged.iter().collect();
        assert!(!trainer_core::layout_job::param_digest(&layout.layout, &diverged).1);
        // Without the ranks of one shard (tp rank 1 of stage 1), the shards do not all agree.
        let missing: Vec<&JobOutcome> = (all.iter().copied())
            .filter(|o| o.layout.as_ref().unwrap().shard != 3)
            .collect();
        assert!(!trainer_core::layout_job::param_digest(&layout.layout, &missing).1);
    }
}
