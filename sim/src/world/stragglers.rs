//! Stragglers: a GPU (or a node's GPUs) whose compute, or whose NIC, runs slower by a factor
//! for a while. Synchronous steps wait for the slowest rank. Each rank measures its own
//! compute time and emits it (`Event::ComputeTimed`); the controller collects the times here,
//! as a cluster's telemetry agent would, rather than all-gathering them in the training buffer
//! (at 100,000 ranks that would add 100,000 floats to every step's all-reduce). Once every
//! rank has reported a step, trainer-core's `StragglerDetector` scores it; a flagged rank's node
//! is evicted and replaced through the controller's restart path when mitigation is on.

use std::collections::BTreeMap;

use faultline_scenario::config::{StragglerConfig, StragglerKind, StragglerSpec, StragglerTarget};
use faultline_scenario::LinkRef;
use serde::Serialize;
use trainer_core::health::StragglerDetector;
use trainer_core::Event;

use super::digest_tag::DigestTag;
use super::slow_links::Cause;
use super::{EventKind, World};
use crate::books::{Detector, FaultKind, LostCause, RarePath};

/// One rank the scores flagged.
#[derive(Clone, Debug, Serialize)]
pub struct FlaggedRank {
    pub rank: usize,
    pub step: u64,
    pub score: f64,
    pub at_ns: u64,
    /// Whether an injected slowdown covered the rank (false: a false positive).
    pub injected: bool,
}

/// What the report says about stragglers (present when some are injected or scored).
#[derive(Clone, Debug, Default, Serialize)]
pub struct StragglerReport {
    pub slowdowns_injected: u64,
    pub steps_scored: u64,
    /// The highest score seen at any step.
    pub max_score: f64,
    pub flagged: Vec<FlaggedRank>,
    /// From the start of the slowdown to the flag, over flags of injected slowdowns.
    pub detection_latency_ns_mean: u64,
    pub detection_latency_ns_max: u64,
    pub stragglers_evicted: u64,
    /// Rank 0's step times: the median and the longest.
    pub step_time_ns_p50: u64,
    pub step_time_ns_max: u64,
}

#[derive(Default)]
pub(super) struct Stragglers {
    config: StragglerConfig,
    /// Per slowdown: its node was evicted, so the slow hardware is gone.
    evicted: Vec<bool>,
    has_compute: bool,
    detector: Option<StragglerDetector>,
    /// Per step of the current attempt: each rank's compute time, and how many reported.
    pending: BTreeMap<u64, (Vec<u64>, usize)>,
    rank0_step_began_ns: Option<u64>,
    /// Rank 0's completed step durations, in order, and when each began.
    pub(super) rank0_step_ns: Vec<u64>,
    rank0_step_began_at_ns: Vec<u64>,
    detection_latency_total_ns: u64,
    detections_of_injected: u64,
    report: StragglerReport,
}

impl World {
    pub(super) fn configure_stragglers(&mut self, config: StragglerConfig) {
        let mut s = Stragglers {
            evicted: vec![false; config.stragglers.len()],
            has_compute: config
                .stragglers
                .iter()
                .any(|x| x.kind == StragglerKind::Compute),
            detector: config
                .detection
                .map(|d| StragglerDetector::new(self.ranks.len(), d.threshold, d.patience)),
            ..Stragglers::default()
        };
        for (idx, spec) in config.stragglers.iter().enumerate() {
            self.schedule(spec.from_ns, EventKind::StragglerBegins { idx: idx as u32 });
            if spec.kind == StragglerKind::Nic {
                self.slow_nic(idx as u32, spec);
            }
        }
        s.config = config;
        self.stragglers = s;
    }

    /// Rank 0's completed step durations, in order.
    pub fn rank0_step_ns(&self) -> Vec<u64> {
        self.stragglers.rank0_step_ns.clone()
    }

    /// Rank 0's completed steps: when each began, and how long it took.
    pub(super) fn rank0_steps(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let s = &self.stragglers;
        s.rank0_step_began_at_ns
            .iter()
            .copied()
            .zip(s.rank0_step_ns.iter().copied())
    }

    /// A NIC straggler: its GPUs' NIC links (both directions) carry `1 / factor` of their
    /// bandwidth over its window, in the slow links every transfer looks up.
    fn slow_nic(&mut self, idx: u32, spec: &StragglerSpec) {
        let gpus: Vec<usize> = match spec.target {
            StragglerTarget::Gpu(gpu) => vec![gpu],
            StragglerTarget::Node(node) => {
                let group = self.placement.node_group(node);
                (0..group.count()).map(|i| group.member(i)).collect()
            }
        };
        for gpu in gpus {
            let (up, down) = (self.fabric.topology).link_ids(LinkRef::Nic { gpu });
            let window = (spec.from_ns, spec.until_ns);
            for link in [up, down] {
                let cause = Cause::Straggler(idx);
                (self.slow_links).add(link, window, spec.factor, 0.0, cause);
            }
        }
    }

    pub fn straggler_report(&self) -> Option<StragglerReport> {
        let s = &self.stragglers;
        if s.config.stragglers.is_empty() && s.config.detection.is_none() {
            return None;
        }
        let mut report = s.report.clone();
        report.detection_latency_ns_mean = s
            .detection_latency_total_ns
            .checked_div(s.detections_of_injected)
            .unwrap_or(0);
        let mut sorted = s.rank0_step_ns.clone();
        sorted.sort_unstable();
        report.step_time_ns_p50 = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
        report.step_time_ns_max = sorted.last().copied().unwrap_or(0);
        Some(report)
    }

    pub(super) fn fire_straggler_begins(&mut self, idx: u32) {
        if self.all_finished() {
            return;
        }
        self.stragglers.report.slowdowns_injected += 1;
        self.count_injected(FaultKind::Straggler);
        self.record_injected(None, FaultKind::Straggler, |world| {
            let spec = world.stragglers.config.stragglers[idx as usize];
            let what = match spec.kind {
                StragglerKind::Compute => "compute",
                StragglerKind::Nic => "NIC",
            };
            format!("{}: its {what} {}x slower", spec.target, spec.factor)
        });
        self.digest.u64(DigestTag::StragglerBegins.word(idx as u64));
    }

    fn covers(&self, target: StragglerTarget, rank: usize) -> bool {
        match target {
            StragglerTarget::Gpu(gpu) => gpu == rank,
            StragglerTarget::Node(node) => self.placement.node_of(rank) == node,
        }
    }

    /// The slowdown of `kind` on `rank` now: the product of the factors of every slowdown in
    /// force on it (1 when none).
    fn slowdown(&self, rank: usize, kind: StragglerKind) -> f64 {
        let now = self.clock.now_ns();
        let s = &self.stragglers;
        s.config
            .stragglers
            .iter()
            .zip(&s.evicted)
            .filter(|(spec, evicted)| {
                !**evicted
                    && spec.kind == kind
                    && spec.from_ns <= now
                    && now < spec.until_ns
                    && self.covers(spec.target, rank)
            })
            .map(|(spec, _)| spec.factor)
            .product()
    }

    /// How long `rank`'s compute of `nominal_ns` takes now.
    pub(super) fn compute_ns(&self, rank: usize, nominal_ns: u64) -> u64 {
        if !self.stragglers.has_compute {
            return nominal_ns;
        }
        (nominal_ns as f64 * self.slowdown(rank, StragglerKind::Compute)).ceil() as u64
    }

    /// Telemetry: rank 0's step times, and each rank's compute time for the scores.
    pub(super) fn observe_for_stragglers(&mut self, rank: usize, event: &Event) {
        let now = self.clock.now_ns();
        match *event {
            Event::StepBegin { .. } if rank == 0 => {
                self.stragglers.rank0_step_began_ns = Some(now);
            }
            Event::StepEnd { .. } if rank == 0 => {
                if let Some(began) = self.stragglers.rank0_step_began_ns.take() {
                    self.stragglers.rank0_step_ns.push(now - began);
                    self.stragglers.rank0_step_began_at_ns.push(began);
                }
            }
            Event::ComputeTimed { step, compute_ns } => self.record_compute(rank, step, compute_ns),
            _ => {}
        }
    }

    fn record_compute(&mut self, rank: usize, step: u64, compute_ns: u64) {
        let rank_count = self.ranks.len();
        let s = &mut self.stragglers;
        if s.detector.is_none() {
            return;
        }
        let (times, reported) = s
            .pending
            .entry(step)
            .or_insert_with(|| (vec![0; rank_count], 0));
        times[rank] = compute_ns;
        *reported += 1;
        if *reported < rank_count {
            return;
        }
        let (times, _) = s.pending.remove(&step).expect("just filled");
        let scores = s.detector.as_mut().expect("checked").observe(&times);
        s.report.steps_scored += 1;
        s.report.max_score = s.report.max_score.max(scores.max_score);
        // The synchronous step waited for its slowest rank: what that cost beyond the median.
        let waited = scores.max_ns - scores.median_ns;
        if waited > 0 {
            if let Some(control) = self.control.as_mut() {
                control.lose(LostCause::Straggler, waited);
            }
        }
        for flagged in scores.flagged {
            self.flag(flagged.rank, step, flagged.score);
        }
    }

    fn flag(&mut self, rank: usize, step: u64, score: f64) {
        let now = self.clock.now_ns();
        let began = self
            .stragglers
            .config
            .stragglers
            .iter()
            .zip(&self.stragglers.evicted)
            .filter(|(spec, evicted)| !**evicted && self.covers(spec.target, rank))
            .map(|(spec, _)| spec.from_ns)
            .filter(|&from| from <= now)
            .min();
        let s = &mut self.stragglers;
        if let Some(began) = began {
            let latency = now - began;
            s.detections_of_injected += 1;
            s.detection_latency_total_ns += latency;
            s.report.detection_latency_ns_max = s.report.detection_latency_ns_max.max(latency);
        }
        s.report.flagged.push(FlaggedRank {
            rank,
            step,
            score,
            at_ns: now,
            injected: began.is_some(),
        });
        self.digest
            .u64(DigestTag::StragglerFlagged.word(rank as u64));
        self.digest.u64(now);
        // Once some rank has finished the last step there is no job left to restart onto a
        // spare: the flag is reported only.
        let evict = s.config.detection.is_some_and(|d| d.evict) && self.finished == 0;
        if !self.note_detection(Detector::StragglerScore) || !evict {
            return;
        }
        // Evict the node: its hardware (and any slowdown on it) is replaced by a spare.
        let node = self.placement.node_of(rank);
        let group = self.placement.node_group(node);
        let members: Vec<usize> = (0..group.count()).map(|i| group.member(i)).collect();
        for idx in 0..self.stragglers.config.stragglers.len() {
            let target = self.stragglers.config.stragglers[idx].target;
            if members.iter().any(|&r| self.covers(target, r)) {
                self.stragglers.evicted[idx] = true;
                self.slow_links.end(Cause::Straggler(idx as u32), now);
            }
        }
        if let Some(detector) = self.stragglers.detector.as_mut() {
            for &r in &members {
                detector.clear_flag(r);
            }
        }
        self.stragglers.report.stragglers_evicted += 1;
        self.coverage.reach(RarePath::StragglerEvicted);
        self.evict_node(node);
    }

    /// The job restarts: step times of the old attempt are moot.
    pub(super) fn stragglers_on_restart(&mut self) {
        let s = &mut self.stragglers;
        s.pending.clear();
        s.rank0_step_began_ns = None;
        if let Some(detector) = s.detector.as_mut() {
            detector.reset_runs();
        }
    }
}
