//! The story a run tells: its faults, detections, recoveries and restores in model-time
//! order, as sentences. The world hands every control record (and rank 0's restores and
//! SDC verdicts, and every checksum mismatch) to [`Story::note`]; `faultline run` prints the
//! story before the counters. It is kept whatever the trace level, and bounded: the first
//! [`Story::KEPT`] happenings, then a count of the rest (the trace has them all).

use trainer_core::{Event, Tier};

use crate::books::FaultKind;
use crate::trace::{CommOp, Record};
use trainer_core::units::format_duration_ns as duration;

/// One happening: when, and what, in words.
#[derive(Clone, Debug, PartialEq)]
pub struct Happening {
    pub at_ns: u64,
    /// The record's kind, as the trace names it (`crash`, `detected`, `restored`, ...).
    pub kind: &'static str,
    pub text: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Story {
    pub happenings: Vec<Happening>,
    /// Happenings past the first [`Story::KEPT`].
    pub omitted: u64,
    /// When the oldest crash not yet detected struck, for the detection's latency (other
    /// faults are caught by the transport or the health checks, which say so themselves).
    undetected_since_ns: Option<u64>,
}

impl Story {
    pub const KEPT: usize = 40;

    /// Whether a record is part of the story: every control record, rank 0's restores and
    /// SDC verdicts, and any rank's checksum mismatch.
    #[inline]
    pub fn tells(rank: Option<u32>, record: &Record) -> bool {
        match record {
            Record::Rank(Event::ChecksumMismatch { .. }) => true,
            Record::Rank(
                Event::Restored { .. }
                | Event::RestoreFallback { .. }
                | Event::SdcSuspect { .. }
                | Event::SdcVerdict { .. }
                | Event::SdcRollback { .. },
            ) => rank == Some(0),
            _ => record.is_control(),
        }
    }

    /// Adds `record` at `at_ns` (the caller has checked [`Story::tells`]).
    pub fn note(&mut self, at_ns: u64, rank: Option<u32>, record: &Record) {
        if self.is_full() {
            self.omitted += 1;
            return;
        }
        let text = self.sentence(at_ns, rank, record);
        let kind = record.kind();
        self.happenings.push(Happening { at_ns, kind, text });
    }

    /// Whether further happenings are only counted.
    pub fn is_full(&self) -> bool {
        self.happenings.len() >= Self::KEPT
    }

    fn struck(&mut self, at_ns: u64) {
        self.undetected_since_ns.get_or_insert(at_ns);
    }

    /// A fault that kills nothing, in words; a hang or a desync starts the detection clock.
    fn injected(&mut self, at_ns: u64, kind: FaultKind, target: &str) -> String {
        if matches!(kind, FaultKind::Hang | FaultKind::Desync) {
            self.struck(at_ns); // a detector must notice it
        }
        format!("{kind} strikes {target}")
    }

    /// One record in words; faults start a detection clock that the next detection reads.
    fn sentence(&mut self, at_ns: u64, rank: Option<u32>, record: &Record) -> String {
        match *record {
            Record::Crash {
                kind,
                node,
                rank_count,
            } => {
                self.struck(at_ns);
                let first = rank.unwrap_or(0);
                format!(
                    "{kind} strikes node {node} (ranks {first}..{})",
                    first as usize + rank_count
                )
            }
            Record::CrashSkipped { kind, node } => {
                format!("{kind} due on node {node} after the job finished: nothing to do")
            }
            Record::Injected { kind, target } => self.injected(at_ns, kind, target),
            Record::FaultEnded { kind, target } => format!("{kind} ends on {target}"),
            Record::FlightRecorder { diagnosis } => format!("flight recorder: {diagnosis}"),
            Record::StorageWriteFailed => "a checkpoint write to the store fails".into(),
            Record::StorageCorruption { name } => {
                format!("a bit flips in stored {name} (found only by a verified restore)")
            }
            Record::Detected { by } => match self.undetected_since_ns.take() {
                Some(since) => format!(
                    "detected by {by}, {} after the fault",
                    duration(at_ns - since)
                ),
                None => format!("detected by {by}"),
            },
            Record::Abort => "every rank is stopped".into(),
            Record::RestartScheduled {
                generation,
                delay_ns,
                spares: 0,
            } => format!(
                "restart scheduled: generation {generation} in {}",
                duration(delay_ns)
            ),
            Record::RestartScheduled {
                generation,
                delay_ns,
                spares,
            } => format!(
                "{spares} spare node(s) swapped in: generation {generation} in {}",
                duration(delay_ns)
            ),
            Record::Restart {
                abandoned: true, ..
            } => "the job gives up: recovery.max_restarts reached".into(),
            Record::Restart { generation, .. } => format!("generation {generation} starts"),
            Record::ReplicaDropped { .. }
            | Record::ReplicaReadmitted { .. }
            | Record::Regroup { .. }
            | Record::CommRebuild { .. } => replica_sentence(record),
            Record::Rank(event) => rank_sentence(rank.unwrap_or(0), event),
            Record::Compute { .. } | Record::Deliver { .. } | Record::Finished => String::new(),
        }
    }
}

/// [`Story::sentence`] for the per-replica policy's records.
fn replica_sentence(record: &Record) -> String {
    match *record {
        Record::ReplicaDropped { node, rejoin_at_ns } => format!(
            "node {node} leaves the replica group; it rejoins at {}",
            duration(rejoin_at_ns)
        ),
        Record::ReplicaReadmitted { node } => format!("node {node} is readmitted"),
        Record::Regroup {
            members,
            dropped,
            joined,
        } => format!("regroup: {members} ranks go on, {dropped} node(s) out, {joined} back"),
        Record::CommRebuild {
            op,
            aborted,
            members,
            cost_ns,
        } => {
            let how = match op {
                CommOp::Shrink => format!("shrink them to {members} ranks"),
                CommOp::Grow => format!("grow them back to {members} ranks"),
                CommOp::Reinit => format!("build new ones for {members} ranks"),
            };
            let abort = if aborted {
                "abort their communicators and "
            } else {
                ""
            };
            format!("the survivors {abort}{how} ({op}, {})", duration(cost_ns))
        }
        _ => unreachable!("replica_sentence says the per-replica records"),
    }
}

fn rank_sentence(rank: u32, event: &Event) -> String {
    match *event {
        Event::Restored { step, tier } => {
            let from = match tier {
                Tier::Host => "its own host memory".to_string(),
                Tier::Peer { node } => format!("node {node}'s host memory (the buddy copy)"),
                Tier::Persistent => "the persistent store".to_string(),
            };
            format!("rank 0 restores the checkpoint of step {step} from {from}")
        }
        Event::RestoreFallback { step } => {
            format!("the checkpoint of step {step} fails verification; an older one is used")
        }
        Event::SdcSuspect { step, check } => format!("step {step} is suspect: {}", check.name()),
        Event::SdcVerdict { step, persistent } => format!(
            "step {step} re-run: {}",
            if persistent {
                "the same wrong sum, a persistent fault"
            } else {
                "a clean sum, a transient fault"
            }
        ),
        Event::SdcRollback { from_step, to_step } => format!(
            "replicas diverged: back from step {from_step} to the checkpoint of step {to_step}"
        ),
        Event::ChecksumMismatch { peer, .. } => {
            format!("rank {rank}: a payload from rank {peer} fails its checksum and is resent")
        }
        _ => String::new(),
    }
}

impl std::fmt::Display for Story {
    /// The happenings, one a line, each at its model time.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for h in &self.happenings {
            writeln!(f, "  {:>12}  {}", duration(h.at_ns), h.text)?;
        }
        if self.omitted > 0 {
            writeln!(
                f,
                "  ... and {} more (a --trace file holds them all)",
                self.omitted
            )?;
        }
        Ok(())
    }
}
