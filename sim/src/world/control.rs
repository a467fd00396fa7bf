//! The job controller: what a cluster scheduler and the job's launcher do around the trainer.
//! It injects crashes, detects them (heartbeats, the collective watchdog, or a rank reporting
//! an error), aborts every rank, waits until all have stopped, charges the restart time,
//! replaces dead ranks with empty ones and restarts the job in a new generation. It also keeps
//! the books: faults injected and detected, and model time lost by cause.
//!
//! Under the per-replica policy it drops failed nodes and re-admits them instead of
//! restarting (`replicas.rs`).
//!
//! It decides nothing the trainer should decide: restoring, from which checkpoint, and with
//! what verification is trainer-core's logic.

use std::collections::BTreeMap;

use faultline_scenario::config::{ControlConfig, CrashTarget, CrashWhen, RecoveryPolicy};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use statrs::distribution::{Exp, Weibull};
use trainer_core::{CommError, Event, RestartOrder};

use super::digest_tag::DigestTag;
use super::{EventKind, Wait, WaitKind, World, ABORTED, DEAD, MEMORY_LOST, TIMED_OUT};
use crate::books::{Detector, FaultKind, LostCause, RarePath, Resumption, StopCause, TierName};
use crate::rng::RngStream;
use crate::storage::Place;
use crate::trace::Record;

/// What the report says about faults and recovery.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultReport {
    /// Fault kind to count.
    pub injected: BTreeMap<FaultKind, u64>,
    /// Detector (heartbeat, watchdog, peer_error) to count.
    pub detected: BTreeMap<Detector, u64>,
    /// Faults not injected because the job had already finished.
    pub skipped_after_finish: u64,
    pub recoveries: u64,
    /// The job gave up after `max_restarts`, or finished while some ranks had failed.
    pub abandoned: bool,
    /// Some ranks completed the last step while others had died: nothing left to restart.
    pub finished_despite_failure: bool,
    pub lost_time_ns_by_cause: BTreeMap<LostCause, u64>,
    /// Model time rank 0 spent in steps it had never completed before.
    pub useful_step_ns: u64,
    /// Restores that found a committed checkpoint unusable and fell back.
    pub restore_fallbacks: u64,
    /// Checkpoints being persisted when the job was aborted (never committed).
    pub checkpoints_lost_in_flight: u64,
    /// Checkpoints committed.
    pub checkpoints_committed: u64,
    /// Blocking snapshots rank 0 took (each checkpoint started; `checkpoint_stalls` over this
    /// is the stall per checkpoint).
    pub checkpoint_snapshots: u64,
    /// Model time from rank 0's snapshot to the commit, summed over the checkpoints committed:
    /// how long each checkpoint stayed unusable for a restore while it persisted.
    pub checkpoint_persist_ns: u64,
    /// When the first checkpoint was committed.
    pub first_commit_ns: Option<u64>,
    /// Spare nodes swapped in.
    pub spares_used: u64,
    /// Failures that found the spare pool empty.
    pub spare_pool_exhausted: u64,
    /// Ranks' restores by the tier their shard came from.
    pub restores_by_tier: BTreeMap<TierName, u64>,
    /// When the last fault was injected; liveness is judged from there.
    pub last_fault_ns: Option<u64>,
    /// Silent data corruptions no check caught, with the step each entered.
    pub escaped: Vec<super::Escape>,
    /// Per SDC kind: injected, detected, escaped, detection latency, time lost.
    pub sdc: BTreeMap<String, super::SdcKindReport>,
    /// GPUs found computing wrong sums and replaced.
    pub quarantined_gpus: Vec<usize>,
    /// Drops, re-admissions and degraded steps, under the per-replica policy only.
    pub per_replica: Option<super::replicas::PerReplicaReport>,
    /// Each watchdog firing's flight-recorder diagnosis, beside the hang injected, if any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flight_recorder: Vec<super::hangs::FlightReport>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Running,
    Aborting,
}

pub(super) struct Control {
    pub(super) config: ControlConfig,
    pub(super) phase: Phase,
    pub(super) generation: u64,
    pub(super) awaiting: usize,
    /// When the oldest crash not yet detected happened.
    undetected_since_ns: Option<u64>,
    step_crashes_fired: Vec<bool>,
    rng: ChaCha8Rng,
    node_count: usize,
    pub(super) report: FaultReport,
    rank0_step_began: Option<(u64, u64)>,
    rank0_high_water: u64,
    restarted_at_ns: Option<u64>,
    /// What the time from the resumption to the books' rank's next step is lost to:
    /// "restore" after a restart; "regroup" or "readmission" under per-replica.
    pub(super) resume_cause: LostCause,
    /// The rank whose events keep the books (useful time, checkpoints): rank 0, or the
    /// replica group's first member while rank 0's node is dropped.
    pub(super) observer: usize,
    pub(super) replicas: super::replicas::Replicas,
    /// The checkpoint rank 0 has snapshotted and not yet seen committed, and when the
    /// snapshot ended.
    rank0_pending_checkpoint: Option<(u64, u64)>,
    /// Nodes that lost a rank since the last restart: each needs a replacement.
    pub(super) failed_nodes: std::collections::BTreeSet<usize>,
    spares_left: usize,
    /// Health-check work inside rank 0's current step (a re-run), not useful progress.
    pub(super) step_overhead_ns: u64,
    /// The newest fingerprint ((epoch, step)) and the least time any rank spent in it so far:
    /// charged as lost time when the next fingerprint begins, or in the report.
    pub(super) fingerprint_pending: Option<((u64, u64), u64)>,
    /// Rank 0 is recomputing steps after an SDC roll-back, not after a restart.
    after_sdc_rollback: bool,
    /// Rank 0's last step recomputed after an SDC roll-back, for the SDC books.
    pub(super) sdc_recompute_ns: u64,
    /// The stops faults caused, for the blast radius.
    pub(super) blast: super::blast::BlastBooks,
}

impl Control {
    pub(super) fn new(
        config: ControlConfig,
        seed: u64,
        world: trainer_core::Group,
        node_count: usize,
    ) -> Control {
        // The fault stream's own seed: adding another subsystem's draws never shifts it.
        let rng = RngStream::NodeFailures.rng(seed);
        let spares_left = config.spare_nodes;
        let mut control = Control {
            step_crashes_fired: vec![false; config.crashes.len()],
            config,
            phase: Phase::Running,
            generation: 0,
            awaiting: 0,
            undetected_since_ns: None,
            rng,
            node_count,
            report: FaultReport::default(),
            rank0_step_began: None,
            rank0_high_water: 0,
            restarted_at_ns: None,
            resume_cause: LostCause::Restore,
            observer: 0,
            replicas: super::replicas::Replicas::new(world),
            rank0_pending_checkpoint: None,
            failed_nodes: std::collections::BTreeSet::new(),
            spares_left: 0,
            step_overhead_ns: 0,
            fingerprint_pending: None,
            after_sdc_rollback: false,
            sdc_recompute_ns: 0,
            blast: Default::default(),
        };
        control.spares_left = spares_left;
        control
    }

    pub(super) fn lose(&mut self, cause: LostCause, ns: u64) {
        *self.report.lost_time_ns_by_cause.entry(cause).or_default() += ns;
    }

    /// Rank 0 ended `step`: its time is useful progress, or lost to recomputation.
    fn rank0_step_ended(&mut self, step: u64, now: u64) {
        if let Some((began_step, began)) = self.rank0_step_began.take() {
            debug_assert_eq!(began_step, step);
            let spent = (now - began).saturating_sub(std::mem::take(&mut self.step_overhead_ns));
            if step < self.rank0_high_water && self.after_sdc_rollback {
                self.lose(LostCause::SdcRollback, spent);
                self.sdc_recompute_ns = spent;
            } else if step < self.rank0_high_water {
                let cause = match self.config.policy {
                    RecoveryPolicy::PerReplica if self.replicas.last_was_regroup => {
                        LostCause::RedoneStep
                    }
                    _ => LostCause::RecomputedSteps,
                };
                self.lose(cause, spent);
            } else {
                self.after_sdc_rollback = false;
                self.report.useful_step_ns += spent;
            }
            self.rank0_high_water = self.rank0_high_water.max(step + 1);
            if self.replicas.group.has_holes() {
                self.replicas.report.degraded_steps += 1;
            }
        }
    }

    /// A checkpoint committed: count it, and how long rank 0's snapshot of it took to commit.
    fn checkpoint_committed(&mut self, step: u64, now: u64) {
        self.report.checkpoints_committed += 1;
        self.report.first_commit_ns.get_or_insert(now);
        if let Some((pending, snapshot_ns)) = self.rank0_pending_checkpoint {
            if pending == step {
                self.rank0_pending_checkpoint = None;
                self.report.checkpoint_persist_ns += now - snapshot_ns;
            }
        }
    }
}

fn bump<K: Ord>(map: &mut BTreeMap<K, u64>, key: K) {
    *map.entry(key).or_default() += 1;
}

impl World {
    /// Installs the controller and schedules what it knows in advance.
    pub(super) fn configure_control(&mut self, config: ControlConfig) {
        let node_count = self.placement.node_count();
        for (idx, crash) in config.crashes.iter().enumerate() {
            if let CrashWhen::AtNs(at) = crash.when {
                self.schedule(at, EventKind::Crash { idx: idx as u32 });
            }
        }
        for &at in &config.corruptions_at_ns {
            self.schedule(at, EventKind::CorruptBlob);
        }
        if let Some(timeout) = config.collective_timeout_ns {
            self.schedule((timeout / 10).max(1), EventKind::Watchdog);
            // Called before any rank runs, so every rank is parked since 0 or not at all.
            self.parked_since_ns = vec![0; self.ranks.len()];
        }
        let record = config.collective_timeout_ns.is_some() || config.progress_timeout_ns.is_some();
        if let Some(timeout) = config.progress_timeout_ns {
            self.schedule((timeout / 10).max(1), EventKind::ProgressCheck);
        }
        let faults = (config.hangs.clone(), config.desyncs.clone());
        let check = config.desync_check;
        self.hangs = super::hangs::Hangs::new(faults, check, self.ranks.len(), record);
        self.start_random_gray(config.gray_rates_per_node_per_ns, node_count);
        let mut control = Control::new(config, self.seed, self.placement.world(), node_count);
        if control.config.node_failure_rate_per_ns > 0.0 {
            let at = next_arrival(&mut control, 0);
            self.schedule(at, EventKind::RandomCrash);
        }
        self.control = Some(control);
    }

    pub fn fault_report(&self) -> Option<FaultReport> {
        let control = self.control.as_ref()?;
        let mut report = control.report.clone();
        if let Some((_, min)) = control.fingerprint_pending {
            *report
                .lost_time_ns_by_cause
                .entry(LostCause::Fingerprint)
                .or_default() += min;
        }
        if control.config.policy == RecoveryPolicy::PerReplica {
            report.per_replica = Some(control.replicas.report_at_end());
        }
        report.flight_recorder = self.hangs.reports.clone();
        self.sdc_report(&mut report);
        Some(report)
    }

    pub(super) fn fire_crash(&mut self, idx: u32) {
        let spec = self
            .control
            .as_ref()
            .expect("crash events need a controller")
            .config
            .crashes[idx as usize];
        self.crash(spec.target);
    }

    pub(super) fn fire_random_crash(&mut self) {
        let control = self.control.as_mut().expect("a controller");
        use rand::Rng;
        let node = control.rng.gen_range(0..control.node_count);
        let next = next_arrival(control, self.clock.now_ns());
        self.crash(CrashTarget::Node(node));
        if !self.all_finished() {
            self.schedule(next, EventKind::RandomCrash);
        }
    }

    fn crash(&mut self, target: CrashTarget) {
        let now = self.clock.now_ns();
        let control = self.control.as_mut().expect("a controller");
        let (kind, node) = match target {
            CrashTarget::Node(node) => (FaultKind::NodeCrash, node),
            CrashTarget::Gpu(rank) => (FaultKind::GpuFailure, self.placement.node_of(rank)),
        };
        // Skipped: after the job's work is done, or (per-replica) on a node that is out of the
        // job already, whose replacement is not in yet.
        let finished = self.finished > 0;
        if finished || control.replicas.is_dropped(node) {
            if finished {
                control.report.skipped_after_finish += 1;
            }
            self.coverage.reach(RarePath::CrashSkipped);
            self.record(None, Record::CrashSkipped { kind, node });
            return;
        }
        let ranks = match target {
            CrashTarget::Node(node) => {
                let group = self.placement.node_group(node);
                (0..group.count())
                    .map(|i| group.member(i))
                    .collect::<Vec<_>>()
            }
            CrashTarget::Gpu(rank) => vec![rank],
        };
        bump(&mut control.report.injected, kind);
        control.report.last_fault_ns = Some(now);
        control.failed_nodes.insert(node);
        if control.undetected_since_ns.is_none() && control.phase == Phase::Running {
            control.undetected_since_ns = Some(now);
            if let Some(interval) = control.config.heartbeat_interval_ns {
                // The monitor notices after `misses` silent intervals, at its next check.
                let silent = interval * control.config.heartbeat_misses;
                let at = (now + silent).div_ceil(interval) * interval;
                let generation = control.generation;
                self.schedule(at, EventKind::HeartbeatDetect { generation });
            }
        }
        if let CrashTarget::Node(node) = target {
            self.storage.crash_node(node);
        }
        let node = self.placement.node_of(ranks[0]);
        let crash = Record::Crash {
            kind,
            node,
            rank_count: ranks.len(),
        };
        self.record(Some(ranks[0] as u32), crash);
        self.digest.u64(DigestTag::Crash.word(ranks[0] as u64));
        let cause = match kind {
            FaultKind::NodeCrash => StopCause::NodeCrash,
            _ => StopCause::GpuFailure,
        };
        self.blast_fault(cause, ranks.clone(), Some(node));
        for rank in ranks {
            let state = &mut self.ranks[rank];
            state.set(DEAD, true);
            state.set(MEMORY_LOST, true);
            state.set(ABORTED, true);
            // The process is gone: whatever it waited on, it stops now.
            if matches!(state.wait_kind, WaitKind::Message | WaitKind::Timer) {
                self.wake(rank);
            }
        }
    }

    /// Faults injected so far: the controller's books and the corruptions booked apart.
    pub(super) fn faults_so_far(&self) -> u64 {
        let booked: u64 = self
            .control
            .as_ref()
            .map_or(0, |c| c.report.injected.values().sum());
        booked + self.corruptions_so_far()
    }

    pub(super) fn count_injected(&mut self, kind: FaultKind) {
        if let Some(control) = self.control.as_mut() {
            bump(&mut control.report.injected, kind);
            control.report.last_fault_ns = Some(self.clock.now_ns());
        }
    }

    /// Flips one bit of one shard of the newest committed checkpoint in the persistent store,
    /// chosen from the fault stream: silent corruption at rest, which only a verified restore
    /// can notice.
    pub(super) fn fire_corrupt_blob(&mut self) {
        use rand::Rng;
        use trainer_core::checkpoint::manifest_step;
        let manifests = self.storage.list(Place::Persistent, "manifests/");
        let Some(step) = manifests.iter().filter_map(|n| manifest_step(n)).max() else {
            return; // nothing committed yet: nothing to corrupt
        };
        let prefix = format!("ckpt/{step:012}/shard-");
        let names = self.storage.list(Place::Persistent, &prefix);
        let shards: Vec<&String> = names.iter().filter(|n| n.starts_with(&prefix)).collect();
        let control = self.control.as_mut().expect("a controller");
        if shards.is_empty() {
            return;
        }
        // Each corruption draws from its own stream, keyed by its time, so that adding or
        // removing another fault (as `faultline shrink` does) never moves this one's bit.
        let mut rng = RngStream::StorageCorruption {
            at_ns: self.clock.now_ns(),
        }
        .rng(self.seed);
        let victim = shards[rng.gen_range(0..shards.len())].clone();
        let bit = rng.gen::<u64>();
        if self.storage.corrupt(Place::Persistent, &victim, bit) {
            bump(&mut control.report.injected, FaultKind::StorageCorruption);
            control.report.last_fault_ns = Some(self.clock.now_ns());
            self.record(None, Record::StorageCorruption { name: &victim });
        }
    }

    pub(super) fn fire_heartbeat_detect(&mut self, generation: u64) {
        let control = self.control.as_mut().expect("a controller");
        if control.generation == generation && control.phase == Phase::Running {
            bump(&mut control.report.detected, Detector::Heartbeat);
            self.record(
                None,
                Record::Detected {
                    by: Detector::Heartbeat,
                },
            );
            self.begin_abort();
        }
    }

    /// Times out every receive that has waited longer than the collective timeout.
    pub(super) fn fire_watchdog(&mut self) {
        let Some(timeout) = self
            .control
            .as_ref()
            .and_then(|c| c.config.collective_timeout_ns)
        else {
            return;
        };
        let now = self.clock.now_ns();
        let mut receiving = 0;
        for rank in 0..self.ranks.len() {
            let state = &mut self.ranks[rank];
            if state.wait_kind == WaitKind::Message {
                receiving += 1;
                if now - self.parked_since_ns[rank] >= timeout {
                    state.set(TIMED_OUT, true);
                    self.wake(rank);
                }
            }
        }
        // Keep watching while anything can still happen; with nothing else queued and nobody
        // receiving, the world is stuck, and the executor must be free to say so.
        if !self.all_finished() && (receiving > 0 || self.runnable() > 0 || !self.clock.is_empty())
        {
            self.schedule(now + (timeout / 10).max(1), EventKind::Watchdog);
        }
    }

    /// A fault that only a detector can notice began now (a lost transfer): its detection
    /// time is charged from here unless an earlier fault's already is.
    pub(super) fn note_undetected_fault(&mut self) {
        let now = self.clock.now_ns();
        if let Some(control) = self.control.as_mut() {
            if control.phase == Phase::Running && control.undetected_since_ns.is_none() {
                control.undetected_since_ns = Some(now);
            }
        }
    }

    /// Counts a detection by `detector` if the job is running (not already stopping); returns
    /// whether it counted.
    pub(super) fn note_detection(&mut self, detector: Detector) -> bool {
        match self.control.as_mut() {
            Some(control) if control.phase == Phase::Running => {
                bump(&mut control.report.detected, detector);
                self.degrades_on_detection(detector);
                true
            }
            _ => false,
        }
    }

    /// Takes `node` out of the job (a straggler's): the job stops, and restarts with the node
    /// replaced (a spare under hot-spare), its ranks starting with empty memory.
    pub(super) fn evict_node(&mut self, node: usize) {
        let control = self.control.as_mut().expect("eviction needs a controller");
        control.failed_nodes.insert(node);
        let group = self.placement.node_group(node);
        for idx in 0..group.count() {
            self.ranks[group.member(idx)].set(MEMORY_LOST, true);
        }
        self.digest.u64(DigestTag::Evict.word(node as u64));
        let ranks = (0..group.count()).map(|idx| group.member(idx)).collect();
        self.blast_fault(StopCause::StragglerEviction, ranks, Some(node));
        self.begin_abort();
    }

    /// Stops the job: every rank's next (or current) communication fails with `Aborted`.
    pub(super) fn begin_abort(&mut self) {
        self.link_faults_on_abort();
        let now = self.clock.now_ns();
        let control = self.control.as_mut().expect("a controller");
        if control.phase != Phase::Running {
            return;
        }
        control.phase = Phase::Aborting;
        control.blast.stopped_at_ns = Some(now);
        if control.rank0_pending_checkpoint.take().is_some() {
            control.report.checkpoints_lost_in_flight += 1;
            self.coverage.reach(RarePath::CheckpointLostInFlight);
        }
        let undetected_since = control.undetected_since_ns.take();
        if let Some(since) = undetected_since {
            control.lose(LostCause::Detection, now - since);
        }
        if control.config.policy == RecoveryPolicy::PerReplica {
            // The step in flight is redone: its time up to the failure (or this stop) is lost.
            if let Some((_, began)) = control.rank0_step_began.take() {
                let until = undetected_since.unwrap_or(now).max(began);
                control.lose(LostCause::RedoneStep, until - began);
            }
        }
        self.record(None, Record::Abort);
        self.wake_hung();
        for rank in 0..self.ranks.len() {
            self.ranks[rank].set(ABORTED, true);
            if self.ranks[rank].wait_kind == WaitKind::Message {
                self.wake(rank);
            }
        }
    }

    /// A rank gives up on the current attempt; returns true once it may be restarted.
    pub(super) fn enter_await_restart(&mut self, rank: usize, error: &CommError) {
        let control = self
            .control
            .as_mut()
            .expect("await_restart needs a controller");
        // A dead rank reports nothing: its peers, or the heartbeat monitor, must notice.
        if control.phase == Phase::Running && !self.ranks[rank].has(DEAD) {
            let detector = match error {
                CommError::Timeout { .. } => Detector::Watchdog,
                CommError::Aborted => Detector::Aborted,
                CommError::Quarantined { .. } => Detector::Quarantine,
                _ => Detector::PeerError,
            };
            bump(&mut control.report.detected, detector);
            if let CommError::Quarantined { rank: faulty } = *error {
                // The GPU is taken out of service and replaced, as after a GPU failure.
                control.failed_nodes.insert(self.placement.node_of(faulty));
                self.ranks[faulty].set(MEMORY_LOST, true);
                self.coverage.reach(RarePath::SdcQuarantine);
                self.sdc_quarantine(faulty);
                let node = self.placement.node_of(faulty);
                self.blast_fault(StopCause::SdcQuarantine, vec![faulty], Some(node));
            }
            self.record(Some(rank as u32), Record::Detected { by: detector });
            if detector == Detector::Watchdog {
                let generation = self.control.as_ref().expect("a controller").generation;
                self.flight_dump(generation, detector);
            }
            self.begin_abort();
        }
        self.control.as_mut().expect("a controller").awaiting += 1;
        self.maybe_schedule_restart();
    }

    /// Once every rank has either stopped for the restart or finished, the restart can go.
    pub(super) fn maybe_schedule_restart(&mut self) {
        let Some(control) = self.control.as_mut() else {
            return;
        };
        if control.awaiting == 0 || control.awaiting + self.finished != self.ranks.len() {
            return;
        }
        if self.finished > 0 && self.try_release_dropped() {
            return;
        }
        let control = self.control.as_mut().expect("a controller");
        if self.finished > 0 {
            // Some ranks finished the last step: the job's work is done, nothing to restart.
            control.report.abandoned = true;
            control.report.finished_despite_failure = true;
            let at = self.clock.now_ns();
            let generation = control.generation + 1;
            self.schedule(at, EventKind::Restart);
            let delay_ns = 0;
            self.record(
                None,
                Record::RestartScheduled {
                    generation,
                    delay_ns,
                    spares: 0,
                },
            );
        } else if !self.try_schedule_regroup() {
            let control = self.control.as_mut().expect("a controller");
            let needed = control.failed_nodes.len();
            let config = &control.config;
            let mut spares = 0;
            let restart = if config.policy != RecoveryPolicy::HotSpare || needed == 0 {
                config.restart_time_ns
            } else if control.spares_left >= needed {
                control.spares_left -= needed;
                control.report.spares_used += needed as u64;
                spares = needed;
                config.spare_swap_time_ns
            } else {
                control.report.spare_pool_exhausted += 1;
                self.coverage.reach(RarePath::SparePoolExhausted);
                if !config.fallback_to_restart {
                    control.report.abandoned = true;
                }
                // The failed nodes must be repaired or re-provisioned: a full restart.
                config.restart_time_ns
            };
            control.failed_nodes.clear();
            control.lose(LostCause::Restart, restart);
            let generation = control.generation + 1;
            let at = self.clock.now_ns() + restart;
            self.schedule(at, EventKind::Restart);
            let delay_ns = restart;
            if spares > 0 {
                self.blast_recovery(Resumption::HotSpareSwap);
            }
            self.record(
                None,
                Record::RestartScheduled {
                    generation,
                    delay_ns,
                    spares,
                },
            );
        }
    }

    pub(super) fn fire_restart(&mut self) {
        let regroup = self.fire_regroup();
        let control = self.control.as_mut().expect("a controller");
        if control.replicas.released {
            return;
        }
        control.generation += 1;
        if !regroup {
            control.awaiting = 0;
            control.resume_cause = LostCause::Restore;
        }
        control.phase = Phase::Running;
        control.rank0_step_began = None;
        control.restarted_at_ns = Some(self.clock.now_ns());
        control.after_sdc_rollback = false;
        control.step_overhead_ns = 0;
        if control.report.abandoned || control.report.recoveries >= control.config.max_restarts {
            control.report.abandoned = true;
            self.coverage.reach(RarePath::JobAbandoned);
        } else {
            control.report.recoveries += 1;
        }
        self.digest.u64(DigestTag::Restart.word(control.generation));
        let restart = Record::Restart {
            generation: control.generation,
            abandoned: control.report.abandoned,
        };
        self.record(None, restart);
        self.stragglers_on_restart();
        self.sdc_restart();
        self.hangs_on_restart();
        if regroup {
            return;
        }
        for rank in 0..self.ranks.len() {
            self.clear_mailbox(rank);
            self.resume_rank(rank);
        }
    }

    /// `rank` lives again in the new generation; one waiting in `await_restart` is woken.
    pub(super) fn resume_rank(&mut self, rank: usize) {
        let state = &mut self.ranks[rank];
        state.set(DEAD, false);
        state.set(ABORTED, false);
        state.set(TIMED_OUT, false);
        if state.wait() == Wait::Restart {
            self.wake(rank);
        }
    }

    /// The order a rank leaving `await_restart` receives.
    pub(super) fn restart_order(&mut self, rank: usize) -> RestartOrder {
        let control = self.control.as_ref().expect("a controller");
        let state = &mut self.ranks[rank];
        let memory_lost = state.take_flag(MEMORY_LOST);
        RestartOrder {
            generation: control.generation,
            memory_lost,
            job_abandoned: control.report.abandoned || control.replicas.released,
            regroup: control.replicas.last_was_regroup,
        }
    }

    /// Bookkeeping on rank 0's events, and crashes scheduled at a step.
    pub(super) fn observe(&mut self, rank: usize, event: &Event) {
        if self.control.is_none() {
            return;
        }
        if let Event::StepBegin { step } = *event {
            if let Some(target) = self.crash_due_at_step(rank, step) {
                self.crash(target);
            }
        }
        let now = self.clock.now_ns();
        let control = self.control.as_mut().expect("checked");
        if let Event::Restored { tier, .. } = *event {
            bump(&mut control.report.restores_by_tier, TierName::from(tier));
        }
        if rank != control.observer {
            return;
        }
        match *event {
            Event::StepBegin { step } => {
                let resumed = control.restarted_at_ns.take();
                if let Some(at) = resumed {
                    let cause = control.resume_cause;
                    control.lose(cause, now - at);
                }
                control.rank0_step_began = Some((step, now));
                let per_replica = control.config.policy == RecoveryPolicy::PerReplica;
                if resumed.is_some() {
                    self.blast_resumed();
                }
                if per_replica {
                    self.replicas_on_step_begin();
                }
            }
            Event::StepEnd { step, .. } => control.rank0_step_ended(step, now),
            Event::CheckpointSnapshot { stall_ns, step } => {
                control.lose(LostCause::CheckpointStalls, stall_ns);
                control.report.checkpoint_snapshots += 1;
                control.rank0_pending_checkpoint = Some((step, now));
            }
            Event::CheckpointCommitted { step } => control.checkpoint_committed(step, now),
            Event::RestoreFallback { .. } => {
                control.report.restore_fallbacks += 1;
                self.coverage.reach(RarePath::RestoreFallback);
            }
            Event::SdcRollback { .. } => {
                control.after_sdc_rollback = true;
                self.coverage.reach(RarePath::SdcRollback);
            }
            _ => {}
        }
    }

    /// The scheduled crash (at a step, or after some commits) that `rank` beginning `step`
    /// sets off, once: the target's first rank is the one that notices.
    fn crash_due_at_step(&mut self, rank: usize, step: u64) -> Option<CrashTarget> {
        let gpus_per_node = self.placement.gpus_per_node;
        let control = self.control.as_mut()?;
        for (idx, crash) in control.config.crashes.iter().enumerate() {
            let first_rank = match crash.target {
                CrashTarget::Node(n) => n * gpus_per_node,
                CrashTarget::Gpu(r) => r,
            };
            let due_now = match crash.when {
                CrashWhen::AtStep(at) => at == step,
                CrashWhen::AfterCommits(n) => control.report.checkpoints_committed >= n,
                CrashWhen::AtNs(_) => false,
            };
            if first_rank == rank && due_now && !control.step_crashes_fired[idx] {
                control.step_crashes_fired[idx] = true;
                return Some(crash.target);
            }
        }
        None
    }
}

/// When the next node failure of the job-wide arrival process happens: exponential gaps (a
/// Poisson process), or Weibull gaps of the same mean.
fn next_arrival(control: &mut Control, now_ns: u64) -> u64 {
    use rand::distributions::Distribution;
    let rate = control.config.node_failure_rate_per_ns * control.node_count as f64;
    let gap = match control.config.node_failure_weibull_shape {
        None => Exp::new(rate)
            .expect("a positive rate")
            .sample(&mut control.rng),
        Some(shape) => {
            let scale = 1.0 / (rate * statrs::function::gamma::gamma(1.0 + 1.0 / shape));
            Weibull::new(shape, scale)
                .expect("a validated shape and a positive scale")
                .sample(&mut control.rng)
        }
    };
    now_ns.saturating_add(gap.min(1e18) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gaps between node failures drawn for the quickstart cluster at 50 failures per 1000
    /// node-days, with `extra` overrides.
    fn gaps(extra: &[&str]) -> (Vec<f64>, f64) {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/quickstart.toml");
        let mut overrides = vec!["faults.rates.node_failures_per_1000_node_days=50".to_string()];
        overrides.extend(extra.iter().map(|s| s.to_string()));
        let scenario = crate::scenario::load(&path, &overrides).expect("quickstart loads");
        let nodes = scenario.placement().node_count();
        let mean_ns = 1.0 / (scenario.control.node_failure_rate_per_ns * nodes as f64);
        let world = scenario.placement().world();
        let mut control = Control::new(scenario.control, scenario.run.seed, world, nodes);
        let gaps = (0..40_000)
            .map(|_| next_arrival(&mut control, 0) as f64)
            .collect();
        (gaps, mean_ns)
    }

    fn mean_and_cv(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn weibull_arrivals_keep_the_mean_gap_and_cluster_below_shape_one() {
        let (exp, expected_mean) = gaps(&[]);
        let (clustered, _) = gaps(&["faults.rates.node_failure_weibull_shape=0.6"]);
        let (regular, _) = gaps(&["faults.rates.node_failure_weibull_shape=3.0"]);
        for (label, values) in [("exp", &exp), ("0.6", &clustered), ("3.0", &regular)] {
            let (mean, _) = mean_and_cv(values);
            // 40,000 draws: the standard error of the mean is under 1.5% for these shapes.
            assert!(
                (mean / expected_mean - 1.0).abs() < 0.05,
                "{label}: mean gap {mean} ns, rate says {expected_mean} ns"
            );
        }
        // Coefficient of variation: 1 for exponential, 1.7 at shape 0.6, 0.36 at shape 3.
        let cv = |v: &[f64]| mean_and_cv(v).1;
        assert!((cv(&exp) - 1.0).abs() < 0.05, "exp cv {}", cv(&exp));
        assert!(cv(&clustered) > 1.5, "shape 0.6 cv {}", cv(&clustered));
        assert!(cv(&regular) < 0.45, "shape 3 cv {}", cv(&regular));
    }
}
