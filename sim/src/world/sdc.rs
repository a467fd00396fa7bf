//! Silent data corruption: the world flips bits where the scenario says (a payload in flight,
//! one rank's gradient or resident parameters, or the sums of one GPU's faulty reduction
//! kernel), and keeps the books that make the "no silent escape" invariant checkable: every
//! corruption that entered the job is either detected by one of the trainer's checks (which it
//! reports through events) or listed as escaped, with the step where it entered.
//!
//! Detection is trainer-core's logic; this module only injects and attributes. A corruption is
//! identified by the rank it hit, the step, and the rank's epoch (restarts and roll-backs it has
//! lived through), so a step trained again after a roll-back is a new attempt.

use std::collections::BTreeMap;

use faultline_scenario::config::{SdcConfig, SdcKind};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use trainer_core::integrity::Check;
use trainer_core::{Event, FaultPoint, Payload, Tag};

use super::digest_tag::DigestTag;
use super::World;
use crate::books::{Detector, FaultKind, LostCause};
use crate::rng::RngStream;

/// A corruption no check caught.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Escape {
    pub kind: &'static str,
    pub gpu: usize,
    /// The step during which the corruption entered the job.
    pub step_entered: u64,
    /// Restarts and roll-backs the GPU had lived through: a step trained again is a new attempt.
    pub attempt: u64,
}

/// Per fault kind: what entered, what was caught, how fast, and what catching it cost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SdcKindReport {
    pub injected: u64,
    pub detected: u64,
    pub escaped: u64,
    /// Corruptions of payloads no rank ever took (their receiver's job was stopped and the
    /// message dropped): nothing consumed them, so they are neither detected nor escaped.
    #[serde(skip_serializing_if = "is_zero")]
    pub discarded: u64,
    /// Model time from the corruption to its detection: mean and worst.
    pub detection_latency_ns_mean: u64,
    pub detection_latency_ns_max: u64,
    /// Model time rank 0 spent on resends, re-runs and roll-backs for this kind.
    pub lost_time_ns: u64,
    /// Suspect steps whose re-run gave a clean, different sum.
    pub classified_transient: u64,
    /// Suspect steps whose re-run gave the same sum again.
    pub classified_persistent: u64,
}

#[derive(Clone, Debug)]
struct Occurrence {
    kind: SdcKind,
    gpu: usize,
    step: u64,
    epoch: u64,
    at_ns: u64,
    detected: Option<(Check, u64)>,
    /// In flight: the message it hit.
    message: Option<(u32, u32, Tag)>,
    /// Whether the corrupted data reached a rank's computation: an in-flight corruption only
    /// once its receiver takes the payload; the others at once.
    consumed: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub(super) struct Sdc {
    config: SdcConfig,
    rng: ChaCha8Rng,
    /// Per spec: flips done.
    fired: Vec<u64>,
    /// Per spec: the GPU was quarantined and replaced.
    removed: Vec<bool>,
    /// Per rank: the step it is in, and the restarts and roll-backs it has lived through.
    step_of: Vec<u64>,
    epoch_of: Vec<u64>,
    occurrences: Vec<Occurrence>,
    /// Intact copies of corrupted payloads: the sender's retransmit buffer.
    pristine: Vec<(u32, u32, Tag, Payload)>,
    lost_ns_by_kind: BTreeMap<SdcKind, u64>,
    /// The kind whose roll-back rank 0 is recomputing.
    pub(super) rollback_kind: Option<SdcKind>,
    quarantined: Vec<usize>,
    /// Per kind: re-runs that found the fault transient, and persistent.
    verdicts: BTreeMap<SdcKind, (u64, u64)>,
    /// When the last quarantine stopped the job, until rank 0 trains again.
    quarantine_since_ns: Option<u64>,
    has_in_flight: bool,
    has_kernel: bool,
    /// In-flight corruptions whose payload no rank has taken yet.
    pub(super) unconsumed: usize,
}

fn flip(value: f32, bit: u32) -> f32 {
    f32::from_bits(value.to_bits() ^ (1 << bit))
}

impl Sdc {
    /// Rank 0's check `check` found step `step` suspect: the corruptions it accounts for.
    fn suspect(&mut self, step: u64, check: Check, now: u64) {
        let epoch = self.epoch_of[0];
        if check == Check::Fingerprint {
            // Diverged replicas: what can make one replica differ, since the last clean
            // fingerprint. A wrong sum reaches every replica alike: not this.
            let kind = self.detect(check, now, |o| {
                o.epoch == epoch
                    && o.step < step
                    && matches!(o.kind, SdcKind::Parameters | SdcKind::InFlight)
            });
            self.rollback_kind = kind.or(self.rollback_kind);
        } else {
            self.detect(check, now, |o| {
                o.epoch == epoch && o.step == step && o.kind != SdcKind::Parameters
            });
        }
    }

    /// The kind of the detected corruption behind rank 0's current attempt at `step`, if any:
    /// what a verdict or a re-run of that step is charged to.
    fn rank0_detected_kind(&self, step: u64) -> Option<SdcKind> {
        let epoch = self.epoch_of[0];
        self.occurrences
            .iter()
            .find(|o| o.epoch == epoch && o.step == step && o.detected.is_some())
            .map(|o| o.kind)
    }

    fn new(config: SdcConfig, seed: u64, rank_count: usize) -> Sdc {
        // Its own stream: SDC draws never shift the crash stream, nor the other way round.
        let rng = RngStream::Sdc.rng(seed);
        let has = |kind| config.specs.iter().any(|s| s.kind == kind);
        Sdc {
            has_in_flight: has(SdcKind::InFlight),
            has_kernel: has(SdcKind::ReductionKernel),
            fired: vec![0; config.specs.len()],
            removed: vec![false; config.specs.len()],
            config,
            rng,
            step_of: vec![0; rank_count],
            epoch_of: vec![0; rank_count],
            occurrences: Vec::new(),
            pristine: Vec::new(),
            lost_ns_by_kind: BTreeMap::new(),
            rollback_kind: None,
            quarantined: Vec::new(),
            verdicts: BTreeMap::new(),
            quarantine_since_ns: None,
            unconsumed: 0,
        }
    }

    /// Books a corruption; false when it merged into one already booked.
    fn record(
        &mut self,
        kind: SdcKind,
        gpu: usize,
        at_ns: u64,
        message: Option<(u32, u32, Tag)>,
    ) -> bool {
        let (step, epoch) = (self.step_of[gpu], self.epoch_of[gpu]);
        // A faulty kernel wrong several times in one step is one corruption of that step.
        let merged = kind == SdcKind::ReductionKernel
            && self
                .occurrences
                .iter()
                .any(|o| o.kind == kind && o.gpu == gpu && o.step == step && o.epoch == epoch);
        if !merged {
            self.occurrences.push(Occurrence {
                kind,
                gpu,
                step,
                epoch,
                at_ns,
                detected: None,
                message,
                consumed: message.is_none(),
            });
            self.unconsumed += usize::from(message.is_some());
        }
        !merged
    }

    /// Marks as detected by `check` at `now_ns` every undetected occurrence `hits` selects;
    /// returns the first kind it marked.
    fn detect(
        &mut self,
        check: Check,
        now_ns: u64,
        hits: impl Fn(&Occurrence) -> bool,
    ) -> Option<SdcKind> {
        let mut first = None;
        for o in &mut self.occurrences {
            if o.detected.is_none() && hits(o) {
                o.detected = Some((check, now_ns));
                first.get_or_insert(o.kind);
            }
        }
        first
    }

    fn charge(&mut self, kind: SdcKind, ns: u64) {
        *self.lost_ns_by_kind.entry(kind).or_default() += ns;
    }

    fn bit(&mut self, spec_bit: Option<u32>) -> u32 {
        spec_bit.unwrap_or_else(|| self.rng.gen_range(0..32))
    }
}

impl World {
    pub(super) fn configure_sdc(&mut self, config: SdcConfig) {
        self.checksum_bytes_per_s = config.checksum_bytes_per_s;
        self.sdc = Some(Box::new(Sdc::new(config, self.seed, self.ranks.len())));
    }

    /// Model time to checksum and verify `bytes`.
    pub(super) fn checksum_ns(&self, bytes: u64) -> u64 {
        if self.checksum_bytes_per_s > 0.0 {
            trainer_core::units::capped_ns(bytes as f64 * 1e9 / self.checksum_bytes_per_s)
        } else {
            0
        }
    }

    /// At delivery: flips a bit of the message in `slot` if an in-flight corruption is due
    /// for its receiver, keeping the intact payload for a resend.
    pub(super) fn corrupt_in_flight(&mut self, slot: u32) {
        let now = self.clock.now_ns();
        let Some(sdc) = self.sdc.as_deref_mut().filter(|s| s.has_in_flight) else {
            return;
        };
        let message = self.messages.get_mut(slot).expect("a message");
        let to = message.to as usize;
        if message.payload.data.is_empty() {
            return;
        }
        let due = (0..sdc.config.specs.len()).find(|&i| {
            let spec = &sdc.config.specs[i];
            spec.kind == SdcKind::InFlight
                && spec.gpu == to
                && sdc.step_of[to] >= spec.at_step
                && sdc.fired[i] < spec.count
        });
        let Some(idx) = due else {
            return;
        };
        sdc.fired[idx] += 1;
        let bit = sdc.bit(sdc.config.specs[idx].bit);
        let elem = sdc.rng.gen_range(0..message.payload.data.len());
        let key = (message.from, message.to, message.tag);
        if !sdc.pristine.iter().any(|p| (p.0, p.1, p.2) == key) {
            sdc.pristine.push((key.0, key.1, key.2, message.payload()));
        }
        message.payload.data[elem] = flip(message.payload.data[elem], bit);
        sdc.record(SdcKind::InFlight, to, now, Some(key));
        self.digest.u64(DigestTag::SdcInFlight.word(to as u64));
        self.mark_sdc(to, SdcKind::InFlight, || {
            format!("a payload from rank {} to rank {to}", key.0)
        });
    }

    /// Rank `to` took the payload `from` sent it with `tag`: a corruption of it, if any,
    /// reached the computation (and can now be detected or escape).
    pub(super) fn sdc_consumed(&mut self, to: usize, from: u32, tag: Tag) {
        let Some(sdc) = self.sdc.as_deref_mut() else {
            return;
        };
        // The same tags recur after a restart or a roll-back: only this attempt's corruption.
        let (key, epoch) = (Some((from, to as u32, tag)), sdc.epoch_of[to]);
        for o in &mut sdc.occurrences {
            if !o.consumed && o.message == key && o.epoch == epoch {
                o.consumed = true;
                sdc.unconsumed -= 1;
            }
        }
    }

    /// Puts the intact copy of the payload `from` sent `to` with `tag` on the fabric again,
    /// after the receiver's request reached the sender. False when there is none.
    pub(super) fn resend(&mut self, from: usize, to: usize, tag: Tag) -> bool {
        let Some(sdc) = self.sdc.as_deref_mut() else {
            return false;
        };
        let key = (from as u32, to as u32, tag);
        let Some(pos) = sdc.pristine.iter().position(|p| (p.0, p.1, p.2) == key) else {
            return false;
        };
        let payload = sdc.pristine[pos].3.clone();
        // The request crosses back to the sender; the payload then goes again, checksum and all.
        let request_at = self.transfer(to, from, 64);
        let bytes = payload.modelled_bytes;
        let arrival = self.transfer_from(from, to, bytes, request_at) + self.checksum_ns(bytes);
        let now = self.clock.now_ns();
        let sdc = self.sdc.as_deref_mut().expect("checked");
        sdc.charge(SdcKind::InFlight, arrival - now);
        if let Some(control) = self.control.as_mut() {
            control.lose(LostCause::PayloadResend, arrival - now);
        }
        self.stats.messages += 1;
        self.stats.modelled_bytes += bytes;
        let slot = self.store_current(from, to, tag, payload);
        self.schedule_delivery(arrival, slot, to);
        // Keep the copy while a flip is still due: the resend may be hit too.
        let sdc = self.sdc.as_deref_mut().expect("checked");
        let still_due = sdc
            .config
            .specs
            .iter()
            .enumerate()
            .any(|(i, s)| s.kind == SdcKind::InFlight && s.gpu == to && sdc.fired[i] < s.count);
        if !still_due {
            sdc.pristine.remove(pos);
        }
        true
    }

    /// The trainer shows its gradient or parameters: flips a bit where a spec says so.
    pub(super) fn sdc_fault_point(&mut self, rank: usize, point: FaultPoint, data: &mut [f32]) {
        let now = self.clock.now_ns();
        let Some(sdc) = self.sdc.as_deref_mut() else {
            return;
        };
        let (kind, step) = match point {
            FaultPoint::Gradient { step } => (SdcKind::Gradient, step),
            FaultPoint::Parameters { step } => (SdcKind::Parameters, step),
        };
        for idx in 0..sdc.config.specs.len() {
            let spec = sdc.config.specs[idx];
            if spec.kind != kind || spec.gpu != rank || spec.at_step != step || data.is_empty() {
                continue;
            }
            if sdc.fired[idx] >= spec.count {
                continue;
            }
            sdc.fired[idx] += 1;
            let bit = sdc.bit(spec.bit);
            let elem = sdc.rng.gen_range(0..data.len());
            data[elem] = flip(data[elem], bit);
            sdc.record(kind, rank, now, None);
            self.digest.u64(DigestTag::SdcAtRank.word(rank as u64));
            let what = if kind == SdcKind::Gradient {
                "gradient"
            } else {
                "parameters"
            };
            self.mark_sdc(rank, kind, || {
                format!("rank {rank}'s {what} at step {step}")
            });
            return;
        }
    }

    /// Whether `rank`'s reduction kernel may be faulty (a cheap test for the hot path).
    pub(super) fn kernel_may_be_faulty(&self, rank: usize) -> bool {
        self.sdc.as_deref().is_some_and(|s| {
            s.has_kernel
                && s.config.specs.iter().enumerate().any(|(i, spec)| {
                    spec.kind == SdcKind::ReductionKernel && spec.gpu == rank && !s.removed[i]
                })
        })
    }

    /// After `acc += src` on `rank`: the faulty kernel's wrong sums, on matching inputs.
    pub(super) fn faulty_reduction(&mut self, rank: usize, acc: &mut [f32], src: &[f32]) {
        let now = self.clock.now_ns();
        let sdc = self
            .sdc
            .as_deref_mut()
            .expect("checked by kernel_may_be_faulty");
        let mut new_corruption = false;
        for idx in 0..sdc.config.specs.len() {
            let spec = sdc.config.specs[idx];
            if spec.kind != SdcKind::ReductionKernel
                || spec.gpu != rank
                || sdc.removed[idx]
                || sdc.step_of[rank] < spec.at_step
            {
                continue;
            }
            let mut wrong = 0;
            for (a, s) in acc.iter_mut().zip(src) {
                if s.to_bits() & spec.trigger_mask == spec.trigger_value {
                    let bit = spec.bit.unwrap_or(30);
                    *a = flip(*a, bit);
                    wrong += 1;
                }
            }
            if wrong > 0 {
                sdc.fired[idx] += wrong;
                new_corruption |= sdc.record(SdcKind::ReductionKernel, rank, now, None);
            }
        }
        if new_corruption {
            self.mark_sdc(rank, SdcKind::ReductionKernel, || {
                format!("a sum in rank {rank}'s reduction kernel")
            });
        }
    }

    /// The trace's and the story's marker of a corruption as it happens (the books count it
    /// at the end, from the occurrences).
    fn mark_sdc(&mut self, rank: usize, kind: SdcKind, target: impl FnOnce() -> String) {
        self.record_injected(Some(rank as u32), FaultKind::from(kind), |_| target());
    }

    /// The health check found `rank`'s GPU faulty: it is replaced (its kernel fault goes with it).
    pub(super) fn sdc_quarantine(&mut self, rank: usize) {
        let Some(sdc) = self.sdc.as_deref_mut() else {
            return;
        };
        if sdc.quarantined.contains(&rank) {
            return;
        }
        sdc.quarantined.push(rank);
        sdc.quarantine_since_ns = Some(self.clock.now_ns());
        for (idx, spec) in sdc.config.specs.iter().enumerate() {
            if spec.gpu == rank && spec.kind == SdcKind::ReductionKernel {
                sdc.removed[idx] = true;
            }
        }
    }

    /// Corruptions injected so far (merged flips of one faulty sum count once).
    pub(super) fn corruptions_so_far(&self) -> u64 {
        self.sdc
            .as_deref()
            .map_or(0, |sdc| sdc.occurrences.len() as u64)
    }

    /// A restart: every rank begins a new epoch.
    pub(super) fn sdc_restart(&mut self) {
        if let Some(sdc) = self.sdc.as_deref_mut() {
            sdc.epoch_of.iter_mut().for_each(|e| *e += 1);
            sdc.rollback_kind = None;
        }
    }

    /// Follows the trainer's events: steps, and what its checks found.
    pub(super) fn sdc_observe(&mut self, rank: usize, event: &Event) {
        let now = self.clock.now_ns();
        let Some(sdc) = self.sdc.as_deref_mut() else {
            return;
        };
        match *event {
            Event::StepBegin { step } => {
                sdc.step_of[rank] = step;
                if rank == 0 {
                    // The quarantine's abort, replacement and restore: the faulty kernel's cost.
                    if let Some(since) = sdc.quarantine_since_ns.take() {
                        sdc.charge(SdcKind::ReductionKernel, now - since);
                    }
                }
            }
            Event::ChecksumMismatch { peer, tag } => {
                // This attempt's corruption of that message: tags recur after a restart.
                let (key, epoch) = ((peer as u32, rank as u32, tag), sdc.epoch_of[rank]);
                let hits = |o: &Occurrence| o.message == Some(key) && o.epoch == epoch;
                sdc.detect(Check::PayloadChecksum, now, hits);
            }
            Event::SdcSuspect { step, check } if rank == 0 => sdc.suspect(step, check, now),
            Event::SdcRollback { .. } => sdc.epoch_of[rank] += 1,
            Event::SdcVerdict { step, persistent } if rank == 0 => {
                let kind = sdc.rank0_detected_kind(step);
                if let Some(kind) = kind {
                    let counts = sdc.verdicts.entry(kind).or_default();
                    if persistent {
                        counts.1 += 1;
                    } else {
                        counts.0 += 1;
                    }
                }
            }
            Event::StepEnd { .. } if rank == 0 => {
                let control = self.control.as_mut().expect("SDC runs under a controller");
                let ns = std::mem::take(&mut control.sdc_recompute_ns);
                self.sdc_charge_rollback(ns);
            }
            Event::HealthCheckCost {
                step,
                check: Check::Rerun,
                elapsed_ns,
            } if rank == 0 => {
                let kind = sdc.rank0_detected_kind(step);
                if let Some(kind) = kind {
                    sdc.charge(kind, elapsed_ns);
                }
                let control = self.control.as_mut().expect("SDC runs under a controller");
                control.lose(LostCause::SdcRerun, elapsed_ns);
                control.step_overhead_ns += elapsed_ns;
            }
            Event::HealthCheckCost {
                step,
                check: Check::Fingerprint,
                elapsed_ns,
            } => {
                let key = (sdc.epoch_of[rank], step);
                self.fingerprint_cost(key, elapsed_ns);
            }
            _ => {}
        }
    }

    /// What a fingerprint costs the job is its collective on the critical path: the time of
    /// the rank that reached it last, the least of all ranks' elapsed times. A rank that
    /// arrived early waited for the others, which it would have done in the next all-reduce
    /// anyway. `key` is the fingerprint's (epoch, step).
    fn fingerprint_cost(&mut self, key: (u64, u64), elapsed_ns: u64) {
        let control = self.control.as_mut().expect("SDC runs under a controller");
        match control.fingerprint_pending {
            Some((k, min)) if k == key => {
                control.fingerprint_pending = Some((k, min.min(elapsed_ns)))
            }
            previous => {
                if let Some((_, min)) = previous {
                    control.lose(LostCause::Fingerprint, min);
                }
                control.fingerprint_pending = Some((key, elapsed_ns));
            }
        }
    }

    /// Rank 0 recomputed a step after a roll-back: charged to the kind that caused it.
    pub(super) fn sdc_charge_rollback(&mut self, ns: u64) {
        if let Some(sdc) = self.sdc.as_deref_mut() {
            if let Some(kind) = sdc.rollback_kind {
                sdc.charge(kind, ns);
            }
        }
    }

    /// The SDC books, into the fault report.
    pub(super) fn sdc_report(&self, report: &mut super::FaultReport) {
        let Some(sdc) = self.sdc.as_deref() else {
            return;
        };
        let mut by_kind: BTreeMap<String, SdcKindReport> = BTreeMap::new();
        let mut latency_sum: BTreeMap<String, u64> = BTreeMap::new();
        for o in &sdc.occurrences {
            // A corruption is a fault injected at its moment, like a crash: the liveness
            // check counts from the last one.
            report.last_fault_ns = report.last_fault_ns.max(Some(o.at_ns));
            let name = o.kind.name().to_string();
            *report.injected.entry(FaultKind::from(o.kind)).or_default() += 1;
            let entry = by_kind.entry(name.clone()).or_default();
            entry.injected += 1;
            match o.detected {
                None if !o.consumed => entry.discarded += 1,
                Some((check, at)) => {
                    *report.detected.entry(Detector::from(check)).or_default() += 1;
                    entry.detected += 1;
                    let latency = at - o.at_ns;
                    entry.detection_latency_ns_max = entry.detection_latency_ns_max.max(latency);
                    *latency_sum.entry(name).or_default() += latency;
                }
                None => {
                    entry.escaped += 1;
                    report.escaped.push(Escape {
                        kind: o.kind.name(),
                        gpu: o.gpu,
                        step_entered: o.step,
                        attempt: o.epoch,
                    });
                }
            }
        }
        for (name, entry) in &mut by_kind {
            entry.detection_latency_ns_mean = latency_sum
                .get(name)
                .and_then(|sum| sum.checked_div(entry.detected))
                .unwrap_or(0);
        }
        for (kind, ns) in &sdc.lost_ns_by_kind {
            by_kind.entry(kind.name().into()).or_default().lost_time_ns = *ns;
        }
        for (kind, (transient, persistent)) in &sdc.verdicts {
            let entry = by_kind.entry(kind.name().into()).or_default();
            entry.classified_transient = *transient;
            entry.classified_persistent = *persistent;
        }
        report.sdc = by_kind;
        report.quarantined_gpus = sdc.quarantined.clone();
    }
}
