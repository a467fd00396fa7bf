//! The run's recording: a JSON-lines event trace (`--trace`) and a Chrome/Perfetto timeline
//! (`--perfetto`). The world hands every rank event, compute, control event and (at level
//! `messages`) delivery to [`Recorder::record`] as a [`Record`]; that one function decides what
//! each output keeps. A new fault kind becomes a new `Record` variant, its fields in
//! [`Record::write_fields`], and, if it has a span, a case in [`Timeline::record`].
//!
//! Recording only observes: it never touches the trace digest, the clock or any random stream,
//! so a run with a recorder is the run without one. Both files are written to a temporary name
//! in their directory and renamed at the end, so a reader never sees half a file.
//!
//! The columns are documented in `docs/trace.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use crate::atomic::AtomicFile;
use crate::books::{Detector, FaultKind};

use trainer_core::{Event, Tag, Tier, WorkKind};

/// The trace format's version, the header's `faultline_trace` value.
pub const TRACE_FORMAT: u64 = 1;

/// With level `auto`, runs up to this many GPUs record `events`, larger ones `summary`.
pub const AUTO_EVENTS_MAX_GPUS: usize = 1024;

/// Perfetto: up to this many ranks get one track each; above it, one track per node.
pub const PERFETTO_RANK_TRACKS_MAX: usize = 64;

/// How much of a run the JSON-lines trace keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TraceLevel {
    /// Control events, and rank 0's rank events: bounded by the steps, not the GPU count.
    Summary,
    /// Control events and every rank's events (steps, computes, collectives, checkpoints).
    Events,
    /// As `Events`, plus every message delivery.
    Messages,
}

impl TraceLevel {
    pub const NAMES: [&'static str; 3] = ["summary", "events", "messages"];

    pub fn name(self) -> &'static str {
        match self {
            TraceLevel::Summary => "summary",
            TraceLevel::Events => "events",
            TraceLevel::Messages => "messages",
        }
    }

    pub fn from_name(name: &str) -> Option<TraceLevel> {
        match name {
            "summary" => Some(TraceLevel::Summary),
            "events" => Some(TraceLevel::Events),
            "messages" => Some(TraceLevel::Messages),
            _ => None,
        }
    }

    /// The level `auto` picks for a run of `gpus` GPUs.
    pub fn auto(gpus: usize) -> TraceLevel {
        if gpus <= AUTO_EVENTS_MAX_GPUS {
            TraceLevel::Events
        } else {
            TraceLevel::Summary
        }
    }
}

trainer_core::named_enum! {
    /// How per-replica recovery rebuilt the communicators (NCCL's names where it has them).
    pub enum CommOp {
        /// `ncclCommShrink` without the failed ranks, after `ncclCommAbort` (abort mode).
        Shrink = "shrink",
        /// The group grows back to take in re-admitted nodes (no error: default mode).
        Grow = "grow",
        /// New communicators from scratch (`ncclCommInitRank`).
        Reinit = "reinit",
    }
}

/// One thing that happened, as the world saw it. Records of a rank carry it; the controller's
/// records that concern no one rank carry none.
#[derive(Clone, Copy, Debug)]
pub enum Record<'a> {
    /// An event the trainer emitted through `Backend::emit`.
    Rank(&'a Event),
    /// A `Backend::compute` began; it lasts `duration_ns` unless the rank is stopped.
    Compute { work: WorkKind, duration_ns: u64 },
    /// A message reached its receiver (the record's rank).
    Deliver { from: u32, tag: Tag, bytes: u64 },
    /// The rank's job finished.
    Finished,
    /// A crash struck `rank_count` ranks from the record's rank on.
    Crash {
        kind: FaultKind,
        node: usize,
        rank_count: usize,
    },
    /// A crash was due after the job had finished; nothing happened.
    CrashSkipped { kind: FaultKind, node: usize },
    /// The controller learnt of a failure through `by` (from the record's rank, if any).
    Detected { by: Detector },
    /// The controller stopped every rank.
    Abort,
    /// The job restarts in `generation` after `delay_ns`: a relaunch, or a swap of `spares`
    /// spare nodes for failed ones (hot-spare).
    RestartScheduled {
        generation: u64,
        delay_ns: u64,
        spares: usize,
    },
    /// Generation `generation` starts; `abandoned` when the job gives up instead.
    Restart { generation: u64, abandoned: bool },
    /// Per-replica: `node` leaves the replica group until `rejoin_at_ns`.
    ReplicaDropped { node: usize, rejoin_at_ns: u64 },
    /// Per-replica: `node`, replaced, rejoins the group at the regroup scheduled now.
    ReplicaReadmitted { node: usize },
    /// Per-replica: the survivors rebuild their communicators for the `members` ranks of the
    /// new group (after aborting them when an error stopped the job), in `cost_ns`.
    CommRebuild {
        op: CommOp,
        aborted: bool,
        members: usize,
        cost_ns: u64,
    },
    /// Per-replica: the job resumes without a restore, `members` ranks strong, `dropped`
    /// nodes out, `joined` nodes back.
    Regroup {
        members: usize,
        dropped: usize,
        joined: usize,
    },
    /// A storage write failed (a failing store).
    StorageWriteFailed,
    /// A bit flipped in a stored blob.
    StorageCorruption { name: &'a str },
    /// A fault that kills nothing struck `target` (a link flap, a straggler, a silent data
    /// corruption): the marker a reader needs to see why what follows happened.
    Injected { kind: FaultKind, target: &'a str },
    /// A fault that killed nothing and lasts a while (a degrade) ended on `target`.
    FaultEnded { kind: FaultKind, target: &'a str },
    /// The watchdog fired and the flight recorder's analysis said this (`flight.rs`).
    FlightRecorder { diagnosis: &'a str },
}

/// The `kind`s of the controller's records, which every level keeps.
pub const CONTROL_KINDS: [&str; 14] = [
    "crash",
    "flight_recorder",
    "injected",
    "fault_ended",
    "crash_skipped",
    "detected",
    "abort",
    "restart_scheduled",
    "restart",
    "replica_dropped",
    "replica_readmitted",
    "regroup",
    "storage_write_failed",
    "storage_corruption",
];

impl Record<'_> {
    /// Whether the controller, not a rank's own logic, produced this record: such records are
    /// kept at every level.
    pub fn is_control(&self) -> bool {
        !matches!(
            self,
            Record::Rank(_) | Record::Compute { .. } | Record::Deliver { .. } | Record::Finished
        )
    }

    fn kept_at(&self, level: TraceLevel, rank: Option<u32>) -> bool {
        match self {
            Record::Deliver { .. } => level == TraceLevel::Messages,
            _ if self.is_control() => true,
            _ => level >= TraceLevel::Events || rank == Some(0),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Record::Rank(event) => match event {
                // Not recorded (World::emit keeps it out): the compute record holds it.
                Event::ComputeTimed { .. } => "compute_timed",
                Event::ChecksumMismatch { .. } => "checksum_mismatch",
                Event::SdcSuspect { .. } => "sdc_suspect",
                Event::SdcVerdict { .. } => "sdc_verdict",
                Event::HealthCheckCost { .. } => "health_check_cost",
                Event::SdcRollback { .. } => "sdc_rollback",
                Event::StepBegin { .. } => "step_begin",
                Event::StepEnd { .. } => "step_end",
                Event::CollectiveBegin { .. } => "collective_begin",
                Event::CollectiveEnd { .. } => "collective_end",
                Event::CheckpointSnapshot { .. } => "checkpoint_snapshot",
                Event::CheckpointCommitted { .. } => "checkpoint_committed",
                Event::Restored { .. } => "restored",
                Event::RestoreFallback { .. } => "restore_fallback",
            },
            Record::Compute { .. } => "compute",
            Record::Deliver { .. } => "deliver",
            Record::Finished => "finished",
            Record::Crash { .. } => "crash",
            Record::CrashSkipped { .. } => "crash_skipped",
            Record::Detected { .. } => "detected",
            Record::Abort => "abort",
            Record::RestartScheduled { .. } => "restart_scheduled",
            Record::Restart { .. } => "restart",
            Record::ReplicaDropped { .. } => "replica_dropped",
            Record::ReplicaReadmitted { .. } => "replica_readmitted",
            Record::CommRebuild { .. } => "comm_rebuild",
            Record::Regroup { .. } => "regroup",
            Record::StorageWriteFailed => "storage_write_failed",
            Record::StorageCorruption { .. } => "storage_corruption",
            Record::Injected { .. } => "injected",
            Record::FaultEnded { .. } => "fault_ended",
            Record::FlightRecorder { .. } => "flight_recorder",
        }
    }

    /// The kind's own fields, each as `,"key":value`, in a fixed order.
    fn write_fields(&self, out: &mut String) {
        let _ = match *self {
            Record::Rank(event) => write_event_fields(event, out),
            Record::Compute { work, duration_ns } => write!(
                out,
                ",\"work\":\"{}\",\"duration_ns\":{duration_ns}",
                work_name(work)
            ),
            Record::Deliver { from, tag, bytes } => write!(
                out,
                ",\"from\":{from},\"op_id\":{},\"phase\":{},\"round\":{},\"bytes\":{bytes}",
                tag.op_id, tag.phase, tag.round
            ),
            Record::Finished | Record::Abort | Record::StorageWriteFailed => Ok(()),
            Record::Crash {
                kind,
                node,
                rank_count,
            } => write!(
                out,
                ",\"fault\":\"{kind}\",\"node\":{node},\"rank_count\":{rank_count}"
            ),
            Record::CrashSkipped { kind, node } => {
                write!(out, ",\"fault\":\"{kind}\",\"node\":{node}")
            }
            Record::Detected { by } => write!(out, ",\"by\":\"{by}\""),
            Record::RestartScheduled {
                generation,
                delay_ns,
                spares,
            } => write!(
                out,
                ",\"generation\":{generation},\"delay_ns\":{delay_ns},\"spares\":{spares}"
            ),
            Record::Restart {
                generation,
                abandoned,
            } => write!(
                out,
                ",\"generation\":{generation},\"abandoned\":{abandoned}"
            ),
            Record::ReplicaDropped { .. }
            | Record::ReplicaReadmitted { .. }
            | Record::Regroup { .. }
            | Record::CommRebuild { .. } => self.write_replica_fields(out),
            Record::StorageCorruption { name } => write!(
                out,
                ",\"name\":{}",
                serde_json::to_string(name).expect("a string serialises")
            ),
            Record::FlightRecorder { diagnosis } => write!(
                out,
                ",\"diagnosis\":{}",
                serde_json::to_string(diagnosis).expect("a string serialises")
            ),
            Record::Injected { kind, target } | Record::FaultEnded { kind, target } => write!(
                out,
                ",\"fault\":\"{kind}\",\"target\":{}",
                serde_json::to_string(target).expect("a string serialises")
            ),
        };
    }

    /// [`Record::write_fields`] for the per-replica policy's records.
    fn write_replica_fields(&self, out: &mut String) -> std::fmt::Result {
        match *self {
            Record::ReplicaDropped { node, rejoin_at_ns } => {
                write!(out, ",\"node\":{node},\"rejoin_at_ns\":{rejoin_at_ns}")
            }
            Record::ReplicaReadmitted { node } => write!(out, ",\"node\":{node}"),
            Record::Regroup {
                members,
                dropped,
                joined,
            } => write!(
                out,
                ",\"members\":{members},\"dropped\":{dropped},\"joined\":{joined}"
            ),
            Record::CommRebuild {
                op,
                aborted,
                members,
                cost_ns,
            } => write!(
                out,
                ",\"op\":\"{op}\",\"aborted\":{aborted},\"members\":{members},\"cost_ns\":{cost_ns}"
            ),
            _ => unreachable!("write_replica_fields writes the per-replica records"),
        }
    }
}

/// A trainer event's own fields, each as `,"key":value`, in a fixed order (docs/trace.md's
/// column table lists them).
fn write_event_fields(event: &Event, out: &mut String) -> std::fmt::Result {
    match *event {
        Event::StepBegin { step } => write!(out, ",\"step\":{step}"),
        Event::ComputeTimed { step, compute_ns } => {
            write!(out, ",\"step\":{step},\"compute_ns\":{compute_ns}")
        }
        Event::ChecksumMismatch { peer, tag } => write!(
            out,
            ",\"peer\":{peer},\"op_id\":{},\"phase\":{},\"round\":{}",
            tag.op_id, tag.phase, tag.round
        ),
        Event::SdcSuspect { step, check } => {
            write!(out, ",\"step\":{step},\"check\":\"{}\"", check.name())
        }
        Event::SdcVerdict { step, persistent } => {
            write!(out, ",\"step\":{step},\"persistent\":{persistent}")
        }
        Event::HealthCheckCost {
            step,
            check,
            elapsed_ns,
        } => write!(
            out,
            ",\"step\":{step},\"check\":\"{}\",\"elapsed_ns\":{elapsed_ns}",
            check.name()
        ),
        Event::SdcRollback { from_step, to_step } => {
            write!(out, ",\"from_step\":{from_step},\"to_step\":{to_step}")
        }
        Event::StepEnd { step, loss } => {
            write!(out, ",\"step\":{step},\"loss\":{}", json_f32(loss))
        }
        Event::CollectiveBegin {
            op_id, op, algo, ..
        } => write!(
            out,
            ",\"op_id\":{op_id},\"op\":\"{}\",\"algo\":\"{}\"",
            op.name(),
            algo.name()
        ),
        Event::CollectiveEnd { op_id } => write!(out, ",\"op_id\":{op_id}"),
        Event::CheckpointSnapshot { step, stall_ns } => {
            write!(out, ",\"step\":{step},\"stall_ns\":{stall_ns}")
        }
        Event::CheckpointCommitted { step } | Event::RestoreFallback { step } => {
            write!(out, ",\"step\":{step}")
        }
        Event::Restored { step, tier } => {
            write!(out, ",\"step\":{step},\"tier\":\"{}\"", tier_name(tier))
        }
    }
}

fn json_f32(value: f32) -> String {
    if value.is_finite() {
        // serde_json prints the shortest text that reads back as the same f32.
        serde_json::to_string(&value).expect("a finite float serialises")
    } else {
        format!("\"{value}\"")
    }
}

fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Host => "host",
        Tier::Peer { .. } => "peer",
        Tier::Persistent => "persistent",
    }
}

fn work_name(work: WorkKind) -> &'static str {
    match work {
        WorkKind::ForwardBackward => "forward_backward",
        WorkKind::Optimizer => "optimizer",
    }
}

/// What the first line of a trace says: enough to run the scenario again without its file.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TraceHeader {
    pub faultline_trace: u64,
    pub version: String,
    /// The scenario's name (its file stem) and path, as given.
    pub scenario: String,
    pub scenario_path: String,
    /// The scenario file's full text.
    pub scenario_toml: String,
    /// `--set KEY=VALUE` overrides, in order.
    pub overrides: Vec<String>,
    pub no_faults: bool,
    pub seed: u64,
    /// The executor that ran (`madsim` or `fifo`), never `auto`.
    pub executor: String,
    pub level: String,
}

/// The last line of a complete trace.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TraceFooter {
    pub faultline_trace_end: u64,
    pub trace_digest: String,
    pub param_digest: String,
    pub steps_completed: u64,
    pub model_time_ns: u64,
    /// Records between the header and the footer.
    pub records: u64,
}

/// Where the JSON lines go.
enum Sink {
    File(AtomicFile),
    Memory(Vec<u8>),
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::File(file) => file.out.write_all(bytes),
            Sink::Memory(buffer) => {
                buffer.extend_from_slice(bytes);
                Ok(())
            }
        }
    }
}

struct JsonLines {
    level: TraceLevel,
    sink: Sink,
    line: String,
    records: u64,
}

/// The recording of one run: a JSON-lines trace, a Perfetto timeline, or both.
pub struct Recorder {
    lines: Option<JsonLines>,
    timeline: Option<Timeline>,
    /// The first write error; reported when the recording finishes.
    error: Option<std::io::Error>,
}

impl Recorder {
    /// A recorder that writes nothing yet; add outputs with [`Recorder::trace_to_file`],
    /// [`Recorder::trace_to_memory`] and [`Recorder::perfetto_to_file`].
    pub fn new() -> Recorder {
        Recorder {
            lines: None,
            timeline: None,
            error: None,
        }
    }

    /// Opens `path`'s temporary file now, so an unwritable path fails before the run.
    pub fn trace_to_file(
        &mut self,
        path: &Path,
        header: &TraceHeader,
        level: TraceLevel,
    ) -> std::io::Result<()> {
        let file = AtomicFile::create(path)?;
        self.start_lines(Sink::File(file), header, level)
    }

    /// Keeps the trace in memory, for [`Recorder::finish`] to return.
    pub fn trace_to_memory(&mut self, header: &TraceHeader, level: TraceLevel) {
        self.start_lines(Sink::Memory(Vec::new()), header, level)
            .expect("memory takes every write");
    }

    fn start_lines(
        &mut self,
        mut sink: Sink,
        header: &TraceHeader,
        level: TraceLevel,
    ) -> std::io::Result<()> {
        let mut text = serde_json::to_string(header).expect("a header serialises");
        text.push('\n');
        sink.write(text.as_bytes())?;
        self.lines = Some(JsonLines {
            level,
            sink,
            line: String::new(),
            records: 0,
        });
        Ok(())
    }

    /// Opens `path`'s temporary file now, so an unwritable path fails before the run.
    pub fn perfetto_to_file(
        &mut self,
        path: &Path,
        gpus: usize,
        gpus_per_node: usize,
    ) -> std::io::Result<()> {
        let file = AtomicFile::create(path)?;
        self.timeline = Some(Timeline::new(file, gpus, gpus_per_node)?);
        Ok(())
    }

    /// The one place a world or controller event becomes trace output.
    pub fn record(&mut self, t_ns: u64, rank: Option<u32>, record: Record) {
        if let Some(lines) = &mut self.lines {
            if record.kept_at(lines.level, rank) {
                let line = &mut lines.line;
                line.clear();
                let _ = write!(line, "{{\"t_ns\":{t_ns},\"rank\":");
                match rank {
                    Some(rank) => {
                        let _ = write!(line, "{rank}");
                    }
                    None => line.push_str("null"),
                }
                let _ = write!(line, ",\"kind\":\"{}\"", record.kind());
                record.write_fields(line);
                line.push_str("}\n");
                lines.records += 1;
                if let Err(e) = lines.sink.write(line.as_bytes()) {
                    self.error.get_or_insert(e);
                }
            }
        }
        if let Some(timeline) = &mut self.timeline {
            if let Err(e) = timeline.record(t_ns, rank, record) {
                self.error.get_or_insert(e);
            }
        }
    }

    /// Writes the footer (with the number of records) and moves both files into place.
    /// Returns the in-memory trace, if that is where it went.
    pub fn finish(
        mut self,
        footer: impl FnOnce(u64) -> TraceFooter,
        end_ns: u64,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let mut memory = None;
        if let Some(mut lines) = self.lines.take() {
            let mut text = serde_json::to_string(&footer(lines.records)).expect("serialises");
            text.push('\n');
            let written = lines.sink.write(text.as_bytes());
            match (self.error.take(), written, lines.sink) {
                (Some(e), _, Sink::File(file)) | (None, Err(e), Sink::File(file)) => {
                    file.discard();
                    return Err(e);
                }
                (_, _, Sink::File(file)) => file.commit()?,
                (_, _, Sink::Memory(buffer)) => memory = Some(buffer),
            }
        }
        if let Some(timeline) = self.timeline.take() {
            timeline.finish(end_ns)?;
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(memory),
        }
    }

    /// Throws the outputs away (the run failed): their temporary files are removed.
    pub fn discard(mut self) {
        if let Some(JsonLines {
            sink: Sink::File(file),
            ..
        }) = self.lines.take()
        {
            file.discard();
        }
        if let Some(timeline) = self.timeline.take() {
            timeline.file.discard();
        }
    }
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

/// What a tracked rank's track has open.
#[derive(Default)]
struct OpenSpans {
    step: Option<(u64, u64)>,
    compute: Option<(u64, u64, WorkKind)>,
    collective: Option<(u64, u64, &'static str)>,
    /// Since the restart: the restore runs until the rank's first step (or its end).
    restore: Option<u64>,
    restored_from: Option<(u64, Tier)>,
}

/// Controller tracks: pid 2.
const CONTROLLER_PID: u32 = 2;
const RANKS_PID: u32 = 1;
const TID_FAULTS: u32 = 1;
const TID_RECOVERY: u32 = 2;
const TID_PERSIST: u32 = 3;

/// The Chrome trace-event timeline, streamed: spans are written as they close.
struct Timeline {
    file: AtomicFile,
    open: BTreeMap<u32, OpenSpans>,
    first_event: bool,
    /// The oldest crash not yet detected, and what struck.
    undetected: Option<(u64, String)>,
    /// Detection (or abort) time, until the restart.
    stopped_at: Option<u64>,
    /// Rank 0's snapshots still persisting: step to snapshot end.
    persisting: BTreeMap<u64, u64>,
}

fn us(t_ns: u64) -> f64 {
    t_ns as f64 / 1e3
}

impl Timeline {
    fn new(file: AtomicFile, gpus: usize, gpus_per_node: usize) -> std::io::Result<Timeline> {
        let per_rank = gpus <= PERFETTO_RANK_TRACKS_MAX;
        let mut timeline = Timeline {
            file,
            open: BTreeMap::new(),
            first_event: true,
            undetected: None,
            stopped_at: None,
            persisting: BTreeMap::new(),
        };
        timeline.file.out.write_all(b"{\"traceEvents\":[\n")?;
        let tracks = if per_rank {
            "rank"
        } else {
            "node (its first rank)"
        };
        timeline.metadata(
            "process_name",
            RANKS_PID,
            0,
            &format!("ranks: one {tracks} a track"),
        )?;
        timeline.metadata("process_name", CONTROLLER_PID, 0, "controller")?;
        timeline.metadata("thread_name", CONTROLLER_PID, TID_FAULTS, "faults")?;
        timeline.metadata("thread_name", CONTROLLER_PID, TID_RECOVERY, "recovery")?;
        timeline.metadata(
            "thread_name",
            CONTROLLER_PID,
            TID_PERSIST,
            "checkpoint persist",
        )?;
        let step = if per_rank { 1 } else { gpus_per_node };
        for rank in (0..gpus).step_by(step) {
            let name = if per_rank {
                format!("rank {rank}")
            } else {
                format!("node {} (rank {rank})", rank / gpus_per_node)
            };
            timeline.metadata("thread_name", RANKS_PID, rank as u32, &name)?;
            timeline.open.insert(rank as u32, OpenSpans::default());
        }
        Ok(timeline)
    }

    fn push(&mut self, event: serde_json::Value) -> std::io::Result<()> {
        if !self.first_event {
            self.file.out.write_all(b",\n")?;
        }
        self.first_event = false;
        serde_json::to_writer(&mut self.file.out, &event).map_err(std::io::Error::other)
    }

    fn metadata(&mut self, what: &str, pid: u32, tid: u32, name: &str) -> std::io::Result<()> {
        self.push(serde_json::json!({
            "ph": "M", "name": what, "pid": pid, "tid": tid, "args": { "name": name },
        }))
    }

    /// The span of a checkpoint's persist, from rank 0's snapshot to its commit or its loss.
    fn persist_span(
        &mut self,
        step: u64,
        start: u64,
        t_ns: u64,
        committed: bool,
    ) -> std::io::Result<()> {
        let args = serde_json::json!({ "step": step, "committed": committed });
        let name = if committed {
            format!("persist step {step}")
        } else {
            format!("persist step {step} (lost)")
        };
        self.span(
            CONTROLLER_PID,
            TID_PERSIST,
            "checkpoint",
            &name,
            start,
            t_ns,
            args,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        &mut self,
        pid: u32,
        tid: u32,
        cat: &str,
        name: &str,
        start_ns: u64,
        end_ns: u64,
        args: serde_json::Value,
    ) -> std::io::Result<()> {
        self.push(serde_json::json!({
            "ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid,
            "ts": us(start_ns), "dur": us(end_ns.saturating_sub(start_ns)), "args": args,
        }))
    }

    fn instant(&mut self, tid: u32, name: &str, t_ns: u64) -> std::io::Result<()> {
        self.push(serde_json::json!({
            "ph": "i", "s": "t", "cat": "fault", "name": name, "pid": CONTROLLER_PID,
            "tid": tid, "ts": us(t_ns),
        }))
    }

    /// Closes a tracked rank's compute span if it ended by `t_ns` (or cuts it there).
    fn close_compute(&mut self, rank: u32, t_ns: u64, cut: bool) -> std::io::Result<()> {
        let open = self.open.get_mut(&rank).expect("a tracked rank");
        let Some((start, end, work)) = open.compute else {
            return Ok(());
        };
        if end > t_ns && !cut {
            return Ok(());
        }
        open.compute = None;
        let args = serde_json::json!({ "cut": end > t_ns });
        self.span(
            RANKS_PID,
            rank,
            "compute",
            work_name(work),
            start,
            end.min(t_ns),
            args,
        )
    }

    /// Closes every span a tracked rank has open at `t_ns`, marked as cut by `why`.
    fn cut(&mut self, rank: u32, t_ns: u64, why: &str) -> std::io::Result<()> {
        self.close_compute(rank, t_ns, true)?;
        let open = self.open.get_mut(&rank).expect("a tracked rank");
        let (collective, step, restore) = (
            open.collective.take(),
            open.step.take(),
            open.restore.take(),
        );
        open.restored_from = None;
        let args = serde_json::json!({ "cut": why });
        if let Some((start, op_id, op)) = collective {
            let name = format!("{op}: {}", trainer_core::op_ids::describe(op_id));
            self.span(
                RANKS_PID,
                rank,
                "collective",
                &name,
                start,
                t_ns,
                args.clone(),
            )?;
        }
        if let Some((start, step)) = step {
            let name = format!("step {step}");
            self.span(RANKS_PID, rank, "step", &name, start, t_ns, args.clone())?;
        }
        if let Some(start) = restore {
            self.span(RANKS_PID, rank, "restore", "restore", start, t_ns, args)?;
        }
        Ok(())
    }

    fn end_restore(&mut self, rank: u32, t_ns: u64) -> std::io::Result<()> {
        let open = self.open.get_mut(&rank).expect("a tracked rank");
        let Some(start) = open.restore.take() else {
            return Ok(());
        };
        let args = match open.restored_from.take() {
            Some((step, tier)) => serde_json::json!({ "step": step, "tier": tier_name(tier) }),
            None => serde_json::json!({ "step": null, "tier": null }),
        };
        self.span(RANKS_PID, rank, "restore", "restore", start, t_ns, args)
    }

    fn record(&mut self, t_ns: u64, rank: Option<u32>, record: Record) -> std::io::Result<()> {
        if !record.is_control() {
            let Some(rank) = rank.filter(|r| self.open.contains_key(r)) else {
                return Ok(());
            };
            self.close_compute(rank, t_ns, false)?;
            return self.rank_record(t_ns, rank, record);
        }
        match record {
            Record::Crash {
                kind,
                node,
                rank_count,
            } => {
                let first = rank.expect("a crash names its first rank");
                self.crash(t_ns, kind, node, first, rank_count)?;
            }
            Record::Detected { by } => self.detected(t_ns, by)?,
            Record::Abort => self.abort(t_ns)?,
            Record::Restart {
                generation,
                abandoned,
            } => self.restart(t_ns, generation, abandoned)?,
            Record::Injected { kind, target } => {
                self.instant(TID_FAULTS, &format!("{kind}: {target}"), t_ns)?;
            }
            Record::FaultEnded { kind, target } => {
                self.instant(TID_FAULTS, &format!("{kind} ends: {target}"), t_ns)?;
            }
            Record::FlightRecorder { diagnosis } => {
                self.instant(TID_FAULTS, &format!("flight recorder: {diagnosis}"), t_ns)?;
            }
            Record::CrashSkipped { .. }
            | Record::RestartScheduled { .. }
            | Record::ReplicaDropped { .. }
            | Record::ReplicaReadmitted { .. }
            | Record::Regroup { .. }
            | Record::CommRebuild { .. }
            | Record::StorageWriteFailed
            | Record::StorageCorruption { .. } => {
                let mut fields = String::new();
                record.write_fields(&mut fields);
                let fields = fields.trim_start_matches(',').replace('"', "");
                self.instant(TID_FAULTS, &format!("{} {fields}", record.kind()), t_ns)?;
            }
            Record::Rank(_)
            | Record::Compute { .. }
            | Record::Deliver { .. }
            | Record::Finished => {
                unreachable!("not a control record")
            }
        }
        Ok(())
    }

    /// A crash: a marker on the faults track, the start of the span until its detection,
    /// and the crashed ranks' open spans cut.
    fn crash(
        &mut self,
        t_ns: u64,
        kind: FaultKind,
        node: usize,
        first: u32,
        rank_count: usize,
    ) -> std::io::Result<()> {
        let what = format!(
            "{kind}: node {node}, ranks {first}..{}",
            first as usize + rank_count
        );
        self.instant(TID_FAULTS, &what, t_ns)?;
        if self.undetected.is_none() && self.stopped_at.is_none() {
            self.undetected = Some((t_ns, what));
        }
        let dead: Vec<u32> = self
            .open
            .range(first..first + rank_count as u32)
            .map(|(&r, _)| r)
            .collect();
        for r in dead {
            self.cut(r, t_ns, "crashed")?;
        }
        Ok(())
    }

    /// A detection: the span from the fault it ends, and the start of the stop.
    fn detected(&mut self, t_ns: u64, by: Detector) -> std::io::Result<()> {
        if self.stopped_at.is_none() {
            if let Some((start, what)) = self.undetected.take() {
                let args = serde_json::json!({ "detected_by": by });
                let name = format!("undetected {what}");
                self.span(
                    CONTROLLER_PID,
                    TID_FAULTS,
                    "fault",
                    &name,
                    start,
                    t_ns,
                    args,
                )?;
            }
            self.stopped_at = Some(t_ns);
        }
        Ok(())
    }

    /// The job stops: checkpoints being persisted end unfinished, every open span is cut.
    fn abort(&mut self, t_ns: u64) -> std::io::Result<()> {
        self.stopped_at.get_or_insert(t_ns);
        self.undetected = None;
        for (step, start) in std::mem::take(&mut self.persisting) {
            self.persist_span(step, start, t_ns, false)?;
        }
        let ranks: Vec<u32> = self.open.keys().copied().collect();
        for r in ranks {
            self.cut(r, t_ns, "aborted")?;
        }
        Ok(())
    }

    /// The job restarts: the span of the stop, and (unless abandoned) a restore on every rank.
    fn restart(&mut self, t_ns: u64, generation: u64, abandoned: bool) -> std::io::Result<()> {
        if let Some(start) = self.stopped_at.take() {
            let name = format!("stopped until generation {generation}");
            let args = serde_json::json!({ "abandoned": abandoned });
            self.span(
                CONTROLLER_PID,
                TID_RECOVERY,
                "recovery",
                &name,
                start,
                t_ns,
                args,
            )?;
        }
        if !abandoned {
            for open in self.open.values_mut() {
                open.restore = Some(t_ns);
            }
        }
        Ok(())
    }

    fn rank_record(&mut self, t_ns: u64, rank: u32, record: Record) -> std::io::Result<()> {
        match record {
            Record::Compute { work, duration_ns } => {
                self.open.get_mut(&rank).expect("tracked").compute =
                    Some((t_ns, t_ns + duration_ns, work));
            }
            Record::Finished => self.end_restore(rank, t_ns)?,
            Record::Deliver { .. } => {}
            Record::Rank(event) => self.rank_event(t_ns, rank, *event)?,
            _ => unreachable!("a rank record"),
        }
        Ok(())
    }

    /// A trainer event on `rank`'s track: a span begun or ended, or a marker.
    fn rank_event(&mut self, t_ns: u64, rank: u32, event: Event) -> std::io::Result<()> {
        match event {
            // Health checks show in the trace; the timeline keeps to compute, communication,
            // checkpoints and faults.
            Event::ComputeTimed { .. }
            | Event::ChecksumMismatch { .. }
            | Event::SdcSuspect { .. }
            | Event::SdcVerdict { .. }
            | Event::HealthCheckCost { .. }
            | Event::SdcRollback { .. } => {}
            Event::StepBegin { step } => {
                self.end_restore(rank, t_ns)?;
                self.open.get_mut(&rank).expect("tracked").step = Some((t_ns, step));
            }
            Event::StepEnd { step, loss } => self.end_step(t_ns, rank, step, loss)?,
            Event::CollectiveBegin { op_id, op, .. } => {
                self.open.get_mut(&rank).expect("tracked").collective =
                    Some((t_ns, op_id, op.name()));
            }
            Event::CollectiveEnd { .. } => self.end_collective(t_ns, rank)?,
            Event::CheckpointSnapshot { step, stall_ns } => {
                self.snapshot(t_ns, rank, step, stall_ns)?
            }
            Event::CheckpointCommitted { step } => {
                if let Some(start) = self.persisting.remove(&step) {
                    self.persist_span(step, start, t_ns, true)?;
                }
            }
            Event::Restored { step, tier } => {
                self.open.get_mut(&rank).expect("tracked").restored_from = Some((step, tier));
            }
            Event::RestoreFallback { step } => {
                self.push(serde_json::json!({
                    "ph": "i", "s": "t", "cat": "restore", "name": format!("checkpoint {step} unusable"),
                    "pid": RANKS_PID, "tid": rank, "ts": us(t_ns),
                }))?;
            }
        }
        Ok(())
    }

    /// The span of the step `rank` began, ended now.
    fn end_step(&mut self, t_ns: u64, rank: u32, step: u64, loss: f32) -> std::io::Result<()> {
        if let Some((start, _)) = self.open.get_mut(&rank).expect("tracked").step.take() {
            let args = serde_json::json!({ "loss": loss });
            self.span(
                RANKS_PID,
                rank,
                "step",
                &format!("step {step}"),
                start,
                t_ns,
                args,
            )?;
        }
        Ok(())
    }

    /// The span of the collective `rank` began, ended now.
    fn end_collective(&mut self, t_ns: u64, rank: u32) -> std::io::Result<()> {
        if let Some((start, op_id, op)) =
            self.open.get_mut(&rank).expect("tracked").collective.take()
        {
            let args = serde_json::json!({ "op_id": op_id });
            let name = format!("{op}: {}", trainer_core::op_ids::describe(op_id));
            self.span(RANKS_PID, rank, "collective", &name, start, t_ns, args)?;
        }
        Ok(())
    }

    /// A checkpoint snapshot's stall on `rank`'s track; rank 0's begins the persist span.
    fn snapshot(&mut self, t_ns: u64, rank: u32, step: u64, stall_ns: u64) -> std::io::Result<()> {
        let args = serde_json::json!({ "step": step });
        let name = format!("checkpoint snapshot {step}");
        self.span(
            RANKS_PID,
            rank,
            "checkpoint",
            &name,
            t_ns - stall_ns,
            t_ns,
            args,
        )?;
        if rank == 0 {
            self.persisting.insert(step, t_ns);
        }
        Ok(())
    }

    fn finish(mut self, end_ns: u64) -> std::io::Result<()> {
        let ranks: Vec<u32> = self.open.keys().copied().collect();
        for r in ranks {
            self.cut(r, end_ns, "run ended")?;
        }
        self.file
            .out
            .write_all(b"\n],\"displayTimeUnit\":\"ns\"}\n")?;
        self.file.commit()
    }
}

/// A trace file that cannot be read back; its message names the file and line.
#[derive(Debug)]
pub struct TraceFileError(pub String);

impl std::fmt::Display for TraceFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A trace read back: its header, its record lines (as written) and its footer.
pub struct TraceFile {
    pub header: TraceHeader,
    pub records: Vec<String>,
    pub footer: TraceFooter,
}

/// Reads and checks a whole trace: a header first, a footer last, JSON objects between.
pub fn read_trace(path: &Path) -> Result<TraceFile, TraceFileError> {
    let bytes =
        std::fs::read(path).map_err(|e| TraceFileError(format!("{}: {e}", path.display())))?;
    parse_trace(&path.display().to_string(), &bytes)
}

/// Checks and splits the bytes of a trace file; `name` names it in errors.
pub fn parse_trace(name: &str, bytes: &[u8]) -> Result<TraceFile, TraceFileError> {
    let lines = text_lines(name, bytes)?;
    let header = parse_header(name, &lines)?;
    let last_idx = lines.len() - 1;
    check_records(name, &lines)?;
    let footer = parse_footer(name, &lines[last_idx], last_idx)?;
    let records = lines[1..last_idx].to_vec();
    if records.len() as u64 != footer.records {
        return Err(TraceFileError(format!(
            "{name}:{}: the footer counts {} records, the file holds {}",
            last_idx + 1,
            footer.records,
            records.len()
        )));
    }
    Ok(TraceFile {
        header,
        records,
        footer,
    })
}

/// The file's lines, each checked to be UTF-8 text.
fn text_lines(name: &str, bytes: &[u8]) -> Result<Vec<String>, TraceFileError> {
    let mut lines = Vec::new();
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if !body.is_empty() {
        for (idx, line) in body.split(|&b| b == b'\n').enumerate() {
            let line = std::str::from_utf8(line)
                .map_err(|e| TraceFileError(format!("{name}:{}: not UTF-8 text: {e}", idx + 1)))?;
            lines.push(line.strip_suffix('\r').unwrap_or(line).to_string());
        }
    }
    Ok(lines)
}

/// The first line: a trace header of the format this faultline reads.
fn parse_header(name: &str, lines: &[String]) -> Result<TraceHeader, TraceFileError> {
    let Some(first) = lines.first() else {
        return Err(TraceFileError(format!(
            "{name}:1: empty file, not a faultline trace"
        )));
    };
    let value: serde_json::Value = serde_json::from_str(first)
        .map_err(|e| TraceFileError(format!("{name}:1: not a faultline trace (not JSON: {e})")))?;
    match value.get("faultline_trace").and_then(|v| v.as_u64()) {
        Some(TRACE_FORMAT) => {}
        Some(other) => {
            return Err(TraceFileError(format!(
                "{name}:1: trace format {other}; this faultline reads format {TRACE_FORMAT}"
            )))
        }
        None => {
            return Err(TraceFileError(format!(
                "{name}:1: not a faultline trace (the first line has no \"faultline_trace\" key)"
            )))
        }
    }
    serde_json::from_value(value)
        .map_err(|e| TraceFileError(format!("{name}:1: a corrupt trace header: {e}")))
}

/// Every line after the header is a JSON object; a last line cut off means a run that did
/// not finish writing.
fn check_records(name: &str, lines: &[String]) -> Result<(), TraceFileError> {
    let last_idx = lines.len() - 1;
    for (idx, line) in lines.iter().enumerate().skip(1) {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        match parsed {
            Ok(v) if v.is_object() => {}
            Ok(_) => {
                return Err(TraceFileError(format!(
                    "{name}:{}: a corrupt record (not a JSON object)",
                    idx + 1
                )))
            }
            Err(e) if idx == last_idx => {
                return Err(TraceFileError(format!(
                    "{name}:{}: truncated: the last line is cut off ({e}); the run did not finish writing",
                    idx + 1
                )))
            }
            Err(e) => {
                return Err(TraceFileError(format!(
                    "{name}:{}: a corrupt record (not JSON: {e})",
                    idx + 1
                )))
            }
        }
    }
    Ok(())
}

/// The last line: the footer, or a trace cut off before it.
fn parse_footer(
    name: &str,
    footer_line: &str,
    last_idx: usize,
) -> Result<TraceFooter, TraceFileError> {
    match serde_json::from_str::<serde_json::Value>(footer_line) {
        Ok(v) if v.get("faultline_trace_end").is_some() => serde_json::from_value(v)
            .map_err(|e| TraceFileError(format!("{name}:{}: a corrupt footer: {e}", last_idx + 1))),
        _ => Err(TraceFileError(format!(
            "{name}:{}: truncated: the last line is not the footer (\"faultline_trace_end\"); \
             the run did not finish writing",
            last_idx + 1
        ))),
    }
}

/// The first line (1-based) where two traces' texts differ, with both lines (`None` past an
/// end).
pub fn first_difference<'a>(
    a: &'a [String],
    b: &'a [String],
) -> Option<(usize, Option<&'a str>, Option<&'a str>)> {
    let len = a.len().max(b.len());
    (0..len).find_map(|idx| {
        let (x, y) = (a.get(idx), b.get(idx));
        (x != y).then(|| (idx + 1, x.map(String::as_str), y.map(String::as_str)))
    })
}

/// Every line of a trace file, for comparing two.
pub fn read_lines(path: &Path) -> std::io::Result<Vec<String>> {
    BufReader::new(File::open(path)?).lines().collect()
}
