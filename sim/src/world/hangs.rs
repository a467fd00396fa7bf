//! Hangs and the flight recorder, the world's side. A hung rank (`[[faults.hang]]`) stops in
//! its step's compute and issues none of that step's collectives, alive all along: no heartbeat
//! goes missing, so only the collective watchdog notices, when its peers' receives time out.
//! Every rank's last collectives are in the flight recorder (`crate::flight`); when the watchdog
//! fires the world dumps it and analyses the dump, and the report says whether the diagnosis
//! named the rank that was made to hang: the ground truth no real cluster has.

use std::collections::{BTreeMap, BTreeSet};

use faultline_scenario::config::{DesyncCheck, DesyncKind, DesyncSpec, HangPoint, HangSpec};
use serde::Serialize;
use trainer_core::collectives::Op;
use trainer_core::Event;

use super::control::Phase;
use super::{EventKind, World, FINISHED};
use crate::books::{Detector, FaultKind, LostCause};
use crate::flight::{self, Diagnosis, Dump, Fingerprint, FingerprintCheck, GroupKey, Recorder};
use crate::rng::RngStream;
use crate::trace::Record;
use rand::Rng;

pub(super) struct Hangs {
    specs: Vec<HangSpec>,
    fired: Vec<bool>,
    /// Ranks whose hang is due in the step they are in (the index of its spec).
    armed: BTreeMap<usize, usize>,
    desyncs: Vec<DesyncSpec>,
    desyncs_fired: Vec<bool>,
    /// Ranks whose desync is due at their next collective (the index of its spec).
    desyncs_armed: BTreeMap<usize, usize>,
    /// Ranks whose collective starting now is a desync: how it differs, and the op id its
    /// program gave it.
    desyncs_issued: BTreeMap<usize, (DesyncKind, u64)>,
    /// The pre-collective desync check, when the scenario runs it.
    check: Option<Check>,
    /// The generation in which the check found a mismatch, until the exchange ends.
    check_found: Option<u64>,
    /// Random hangs and desyncs, when the scenario gives them a rate.
    random: Option<RandomGray>,
    /// Ranks parked in a hang now; the abort wakes them.
    hung: BTreeSet<usize>,
    recorder: Option<Recorder>,
    /// Keep each dump for `run --fr-dir` (at 100,000 GPUs one is 800,000 entries).
    keep_dumps: bool,
    pub(super) dumps: Vec<Dump>,
    pub(super) reports: Vec<FlightReport>,
    /// Hangs injected since the last dump.
    injected: Vec<InjectedHang>,
    /// The generation whose stop has been dumped already.
    dumped_generation: Option<u64>,
    /// When the current generation began (its ranks' silence counts from there).
    generation_began_ns: u64,
}

/// One watchdog firing: what the flight recorder's analysis said, beside what was injected.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlightReport {
    pub generation: u64,
    pub diagnosis: Diagnosis,
    /// The hang or desync injected in this generation, if one was.
    pub injected: Option<InjectedHang>,
    /// Whether the diagnosis named the injected rank among its culprits (None without an
    /// injected hang).
    pub named_injected_rank: Option<bool>,
}

/// A hang or a desync, as injected: the ground truth a diagnosis is judged against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct InjectedHang {
    /// `hang` or `desync`.
    pub kind: FaultKind,
    pub rank: usize,
    pub step: u64,
    pub point: &'static str,
    pub at_ns: u64,
}

/// The random hang and desync process: arrivals at the job's rate (per node, times the
/// nodes); each picks a kind by the rates' shares and a rank, which then hangs or desyncs at
/// the next step it begins, where the spec-given ones strike too.
struct RandomGray {
    rng: rand_chacha::ChaCha8Rng,
    /// Per node per nanosecond.
    rates: (f64, f64),
    nodes: usize,
    /// Ranks due to hang or desync at their next step, and how.
    pending: BTreeMap<usize, Gray>,
}

#[derive(Clone, Copy, Debug)]
enum Gray {
    Hang(HangPoint),
    Desync(DesyncKind),
}

/// The desync check's state: the open collectives' fingerprints, and per rank when the
/// exchange for its latest collective ends (its sends wait for it).
struct Check {
    round_ns: u64,
    fingerprints: FingerprintCheck,
    exchanged_ns: Vec<u64>,
}

impl Hangs {
    pub(super) fn new(
        (specs, desyncs): (Vec<HangSpec>, Vec<DesyncSpec>),
        desync_check: Option<DesyncCheck>,
        ranks: usize,
        record: bool,
    ) -> Hangs {
        let check = desync_check.map(|c| Check {
            round_ns: c.round_ns,
            fingerprints: FingerprintCheck::default(),
            exchanged_ns: vec![0; ranks],
        });
        Hangs {
            fired: vec![false; specs.len()],
            specs,
            armed: BTreeMap::new(),
            desyncs_fired: vec![false; desyncs.len()],
            desyncs,
            desyncs_armed: BTreeMap::new(),
            desyncs_issued: BTreeMap::new(),
            recorder: (record || check.is_some()).then(|| Recorder::new(ranks)),
            check,
            check_found: None,
            random: None,
            hung: BTreeSet::new(),
            keep_dumps: false,
            dumps: Vec::new(),
            reports: Vec::new(),
            injected: Vec::new(),
            dumped_generation: None,
            generation_began_ns: 0,
        }
    }
}

impl Hangs {
    /// `rank` begins `step`: a random hang or desync due for it becomes a spec of this step,
    /// which the scheduled ones' matching then arms.
    fn take_random_due(&mut self, rank: usize, step: u64) {
        let Some(gray) = self.random.as_mut().and_then(|r| r.pending.remove(&rank)) else {
            return;
        };
        match gray {
            Gray::Hang(point) => {
                let taken = self
                    .specs
                    .iter()
                    .any(|h| (h.rank, h.at_step) == (rank, step));
                if !taken {
                    self.specs.push(HangSpec {
                        rank,
                        at_step: step,
                        point,
                    });
                    self.fired.push(false);
                }
            }
            Gray::Desync(kind) => {
                let taken = self
                    .desyncs
                    .iter()
                    .any(|d| (d.rank, d.at_step) == (rank, step));
                if !taken {
                    self.desyncs.push(DesyncSpec {
                        rank,
                        at_step: step,
                        kind,
                    });
                    self.desyncs_fired.push(false);
                }
            }
        }
    }
}

impl World {
    /// Starts the random hang and desync process when the scenario gives it a rate.
    pub(super) fn start_random_gray(&mut self, rates: (f64, f64), nodes: usize) {
        if rates.0 + rates.1 <= 0.0 {
            return;
        }
        let mut random = RandomGray {
            rng: RngStream::GrayFailures.rng(self.seed),
            rates,
            nodes,
            pending: BTreeMap::new(),
        };
        let at = random.next_arrival_ns(0);
        self.hangs.random = Some(random);
        self.schedule(at, EventKind::RandomGray);
    }

    /// A random hang or desync arrives: a rank drawn at random is due at its next step.
    pub(super) fn fire_random_gray(&mut self) {
        if self.all_finished() {
            return;
        }
        let now = self.clock.now_ns();
        let ranks = self.ranks.len();
        let random = self.hangs.random.as_mut().expect("a random gray process");
        let (hang, desync) = random.rates;
        let gray = match random.rng.gen_bool(hang / (hang + desync)) {
            true => Gray::Hang(HangPoint::ALL[random.rng.gen_range(0..HangPoint::ALL.len())]),
            false => Gray::Desync(DesyncKind::ALL[random.rng.gen_range(0..DesyncKind::ALL.len())]),
        };
        let rank = random.rng.gen_range(0..ranks);
        random.pending.entry(rank).or_insert(gray);
        let next = random.next_arrival_ns(now);
        self.schedule(next, EventKind::RandomGray);
    }

    /// Keep every flight-recorder dump for the caller (`take_flight_dumps`).
    pub fn keep_flight_dumps(&mut self) {
        self.hangs.keep_dumps = true;
    }

    pub fn take_flight_dumps(&mut self) -> Vec<Dump> {
        std::mem::take(&mut self.hangs.dumps)
    }

    /// A rank's step began (arm its hang, if one is due) or a collective began or ended (the
    /// flight recorder).
    pub(super) fn hangs_observe(&mut self, rank: usize, event: &Event) {
        let now = self.clock.now_ns();
        let hangs = &mut self.hangs;
        match *event {
            Event::StepBegin { step } => {
                hangs.take_random_due(rank, step);
                let due = (hangs.specs.iter().enumerate())
                    .find(|(idx, h)| h.rank == rank && h.at_step == step && !hangs.fired[*idx]);
                if let Some((idx, _)) = due {
                    hangs.armed.insert(rank, idx);
                }
                let desync = (hangs.desyncs.iter().enumerate()).find(|(idx, d)| {
                    d.rank == rank && d.at_step == step && !hangs.desyncs_fired[*idx]
                });
                if let Some((idx, _)) = desync {
                    hangs.desyncs_armed.insert(rank, idx);
                }
            }
            Event::CollectiveBegin {
                op_id,
                op,
                algo,
                bytes,
                group,
                group_holes,
            } => {
                let pg = GroupKey::of(group, group_holes);
                let (op, op_id, bytes) = match hangs.desyncs_issued.remove(&rank) {
                    Some((kind, programmed)) => desynced(kind, op, (op_id, programmed), bytes),
                    None => (op, op_id, bytes),
                };
                if let Some(recorder) = &mut hangs.recorder {
                    let seq = recorder.begin(rank, pg, op, algo, (op_id, bytes), now);
                    let fingerprint = Fingerprint::new(op_id, bytes, op);
                    self.check_fingerprint(rank, (pg, seq), fingerprint);
                }
            }
            Event::CollectiveEnd { op_id } => {
                if let Some(recorder) = &mut hangs.recorder {
                    recorder.end(rank, op_id, now);
                }
            }
            _ => {}
        }
    }

    /// Whether `rank`'s compute hangs now, and where; the hang is booked as injected.
    pub(super) fn hang_now(&mut self, rank: usize) -> Option<HangPoint> {
        let idx = self.hangs.armed.remove(&rank)?;
        self.hangs.fired[idx] = true;
        self.hangs.hung.insert(rank);
        let spec = self.hangs.specs[idx];
        self.count_injected(FaultKind::Hang);
        self.note_undetected_fault();
        self.hangs.injected.push(InjectedHang {
            kind: FaultKind::Hang,
            rank,
            step: spec.at_step,
            point: spec.point.name(),
            at_ns: self.clock.now_ns(),
        });
        self.record_injected(Some(rank as u32), FaultKind::Hang, |_| {
            format!("rank {rank} at step {} ({})", spec.at_step, spec.point)
        });
        Some(spec.point)
    }

    /// The op id `rank` issues for its collective `op_id`: the one after it when its desync
    /// is due (booked as injected), else `op_id`.
    pub(super) fn issued_op_id(&mut self, rank: usize, op_id: u64) -> u64 {
        let Some(idx) = self.hangs.desyncs_armed.remove(&rank) else {
            return op_id;
        };
        self.hangs.desyncs_fired[idx] = true;
        let DesyncSpec {
            at_step: step,
            kind,
            ..
        } = self.hangs.desyncs[idx];
        self.hangs.desyncs_issued.insert(rank, (kind, op_id));
        self.count_injected(FaultKind::Desync);
        self.note_undetected_fault();
        self.hangs.injected.push(InjectedHang {
            kind: FaultKind::Desync,
            rank,
            step,
            point: "collective",
            at_ns: self.clock.now_ns(),
        });
        self.record_injected(Some(rank as u32), FaultKind::Desync, |_| match kind {
            DesyncKind::Sequence => format!(
                "rank {rank} at step {step}: it issues collective {} for {op_id}",
                op_id + 1
            ),
            DesyncKind::Size => {
                format!("rank {rank} at step {step}: collective {op_id} with twice the bytes")
            }
            DesyncKind::Op => {
                format!("rank {rank} at step {step}: another op for collective {op_id}")
            }
        });
        op_id + 1
    }

    /// The desync check, when it runs: `rank` posts its collective's fingerprint and waits for
    /// the exchange (its sends leave when it ends); the last member to post compares them,
    /// and a mismatch stops the job when the exchange ends.
    fn check_fingerprint(&mut self, rank: usize, at: (GroupKey, u32), fingerprint: Fingerprint) {
        let now = self.clock.now_ns();
        let Some(check) = &mut self.hangs.check else {
            return;
        };
        let members = at.0.size.saturating_sub(at.0.holes).max(1);
        let rounds = u64::from(members.next_power_of_two().trailing_zeros());
        let exchanged = now + rounds * check.round_ns;
        check.exchanged_ns[rank] = exchanged;
        let Some(verdict) = check.fingerprints.post(rank, at, fingerprint) else {
            return;
        };
        // The last member's exchange delays the collective: its cost on the critical path,
        // booked for the collectives of rank 0's groups (the step time the books measure).
        if let Some(control) = self.control.as_mut().filter(|_| at.0.first == 0) {
            control.lose(LostCause::DesyncCheck, exchanged - now);
            control.step_overhead_ns += exchanged - now;
        }
        if verdict.is_err() {
            // Which ranks differ is the recorder's analysis to say, from the dump.
            let generation = self.generation();
            self.hangs.check_found.get_or_insert(generation);
            self.schedule(exchanged, EventKind::DesyncCheckFails { generation });
        }
    }

    /// When `rank`'s sends may leave: after its desync check's exchange, if one runs.
    #[inline]
    pub(super) fn sends_leave_ns(&self, rank: usize, now_ns: u64) -> u64 {
        match &self.hangs.check {
            None => now_ns,
            Some(check) => check.exchanged_ns[rank].max(now_ns),
        }
    }

    /// The desync check of a collective found members that disagree: the job stops, unless
    /// it stopped already.
    pub(super) fn fire_desync_check(&mut self, generation: u64) {
        let Some(found_in) = self.hangs.check_found.take() else {
            return;
        };
        let running = self
            .control
            .as_ref()
            .is_some_and(|c| c.phase == Phase::Running);
        if found_in != generation || self.generation() != generation || !running {
            return;
        }
        if self.note_detection(Detector::DesyncCheck) {
            self.record(
                None,
                Record::Detected {
                    by: Detector::DesyncCheck,
                },
            );
            self.flight_dump(generation, Detector::DesyncCheck);
            self.begin_abort();
        }
    }

    /// The job stops: hung ranks are woken to see it.
    pub(super) fn wake_hung(&mut self) {
        for rank in std::mem::take(&mut self.hangs.hung) {
            self.wake(rank);
        }
    }

    /// A new generation: new processes, empty recorders, nothing armed.
    pub(super) fn hangs_on_restart(&mut self) {
        self.hangs.generation_began_ns = self.clock.now_ns();
        self.hangs.armed.clear();
        self.hangs.desyncs_armed.clear();
        self.hangs.desyncs_issued.clear();
        if let Some(check) = &mut self.hangs.check {
            check.fingerprints.clear();
        }
        // A random hang or desync that had not struck yet was for a process that is gone.
        if let Some(random) = &mut self.hangs.random {
            random.pending.clear();
        }
        // Another fault's restart ended them: no later stop is theirs.
        self.hangs.injected.clear();
        self.hangs.hung.clear();
        if let Some(recorder) = &mut self.hangs.recorder {
            recorder.clear();
        }
    }

    /// The progress monitor's check: a rank that has started no collective for the timeout
    /// while the peers of one of its groups started one it has not (they moved on without
    /// it) is flagged; the job stops and the recorder is dumped. Ranks that never started
    /// one this generation count from its start.
    pub(super) fn fire_progress_check(&mut self) {
        let control = self.control.as_ref().expect("a controller");
        let timeout = control.config.progress_timeout_ns.expect("a monitor");
        let (generation, running) = (control.generation, control.phase == Phase::Running);
        let now = self.clock.now_ns();
        if running {
            if let Some(rank) = self.rank_behind(timeout, now) {
                if self.note_detection(Detector::ProgressMonitor) {
                    self.record(
                        Some(rank as u32),
                        Record::Detected {
                            by: Detector::ProgressMonitor,
                        },
                    );
                    self.flight_dump(generation, Detector::ProgressMonitor);
                    self.begin_abort();
                }
            }
        }
        if !self.all_finished() {
            self.schedule(now + (timeout / 10).max(1), EventKind::ProgressCheck);
        }
    }

    /// The first rank silent for `timeout` whose sequence number in one of its groups is
    /// behind another member's: its peers started a collective it never started. (A job
    /// whose ranks all wait in the same collective has nobody behind: the watchdog's case.)
    fn rank_behind(&self, timeout: u64, now: u64) -> Option<usize> {
        let recorder = self.hangs.recorder.as_ref()?;
        let since = self.hangs.generation_began_ns;
        recorder.first_behind(|rank| {
            let last = recorder.last_started_ns(rank).unwrap_or(since);
            now.saturating_sub(last) >= timeout && !self.ranks[rank].has(FINISHED)
        })
    }

    /// The watchdog (or the progress monitor) fired in `generation`: dump every rank's
    /// recorder, once per stop, and analyse it.
    pub(super) fn flight_dump(&mut self, generation: u64, trigger: Detector) {
        let hangs = &mut self.hangs;
        let Some(recorder) = &hangs.recorder else {
            return;
        };
        if hangs.dumped_generation == Some(generation) {
            return;
        }
        hangs.dumped_generation = Some(generation);
        let dump = recorder.dump(trigger.name(), generation, self.clock.now_ns());
        let diagnosis = flight::analyse(&dump);
        let injected = hangs.injected.drain(..).next();
        let named_injected_rank = injected.map(|h| {
            let culprits = diagnosis
                .missing_ranks
                .iter()
                .chain(&diagnosis.mismatched_ranks);
            culprits.copied().any(|rank| rank == h.rank)
        });
        let text = diagnosis.to_string();
        hangs.reports.push(FlightReport {
            generation,
            diagnosis,
            injected,
            named_injected_rank,
        });
        if hangs.keep_dumps {
            hangs.dumps.push(dump);
        }
        self.record(None, Record::FlightRecorder { diagnosis: &text });
    }
}

/// What a desynced rank's recorder holds for the collective it issued in place of
/// `programmed`: the collective after it (its op id, `issued`), or the programmed one with
/// twice the bytes or another op. Its messages carry `issued` in every case, so that they match
/// none of its peers', as mismatched counts or ops leave NCCL's members waiting.
fn desynced(
    kind: DesyncKind,
    op: Op,
    (issued, programmed): (u64, u64),
    bytes: u64,
) -> (Op, u64, u64) {
    match kind {
        DesyncKind::Sequence => (op, issued, bytes),
        DesyncKind::Size => (
            op,
            programmed,
            if bytes == 0 {
                4
            } else {
                bytes.saturating_mul(2)
            },
        ),
        DesyncKind::Op => {
            let other = match op {
                Op::AllReduce => Op::AllGather,
                _ => Op::AllReduce,
            };
            (other, programmed, bytes)
        }
    }
}

impl RandomGray {
    fn next_arrival_ns(&mut self, now_ns: u64) -> u64 {
        use rand::distributions::Distribution;
        let rate = (self.rates.0 + self.rates.1) * self.nodes as f64;
        let gap = statrs::distribution::Exp::new(rate)
            .expect("a positive rate")
            .sample(&mut self.rng);
        now_ns.saturating_add(gap.min(1e18) as u64)
    }
}
