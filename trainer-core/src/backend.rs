//! The seam between the training logic and the world it runs in.

use std::future::Future;

use crate::group::{Group, Placement};
use crate::integrity::Check;
use crate::kernels;

/// Identifies one message of one collective, so that a receive matches exactly the send it
/// expects whatever order messages arrive in. Collectives build tags from the caller's
/// operation id, a phase inside the algorithm and a round inside the phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag {
    pub op_id: u64,
    pub phase: u32,
    pub round: u32,
}

impl Tag {
    pub const fn new(op_id: u64, phase: u32, round: u32) -> Tag {
        Tag {
            op_id,
            phase,
            round,
        }
    }
}

/// What travels between ranks: a small real tensor that the logic computes on, and the size in
/// bytes of the tensor it stands for, which the fabric charges time for. On real hardware the
/// two are the same.
#[derive(Clone, Debug, PartialEq)]
pub struct Payload {
    pub data: Vec<f32>,
    pub modelled_bytes: u64,
    /// The sender's [`crate::integrity::checksum`] of `data`, when payload checksums are on.
    pub checksum: Option<u64>,
}

impl Payload {
    pub fn new(data: Vec<f32>, modelled_bytes: u64) -> Payload {
        Payload {
            data,
            modelled_bytes,
            checksum: None,
        }
    }
}

/// Errors a rank must survive. Both backends return the same variant for the same condition;
/// anything that only a bug could cause is an assertion instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommError {
    /// Nothing arrived from `peer` before the collective deadline.
    Timeout { peer: usize, tag: Tag },
    /// No working path leads to `peer`.
    PeerUnreachable { peer: usize },
    /// `peer` is known to be dead.
    PeerDead { peer: usize },
    /// A payload from `peer` failed its end-to-end check.
    CorruptPayload { peer: usize },
    /// This rank was told to abandon the job (its node crashed or the job is restarting).
    Aborted,
    /// A health check found `rank`'s GPU computing wrong results: it must be replaced.
    Quarantined { rank: usize },
}

impl std::fmt::Display for CommError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommError::Timeout { peer, tag } => write!(
                f,
                "timed out waiting for rank {peer} (op {} phase {} round {})",
                tag.op_id, tag.phase, tag.round
            ),
            CommError::PeerUnreachable { peer } => write!(f, "rank {peer} is unreachable"),
            CommError::PeerDead { peer } => write!(f, "rank {peer} is dead"),
            CommError::CorruptPayload { peer } => write!(f, "corrupt payload from rank {peer}"),
            CommError::Aborted => write!(f, "aborted"),
            CommError::Quarantined { rank } => write!(f, "rank {rank}'s GPU is quarantined"),
        }
    }
}

impl std::error::Error for CommError {}

/// What a [`Backend::compute`] call stands for, so a backend can charge time (and a simulator
/// can slow one kind down).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorkKind {
    ForwardBackward,
    Optimizer,
}

/// Modelled work: the floating-point operations of the full-size model this step stands for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Work {
    pub kind: WorkKind,
    pub flops: f64,
}

/// Structured events for the trace. The backend adds model time and the rank.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Event {
    StepBegin {
        step: u64,
    },
    StepEnd {
        step: u64,
        loss: f32,
    },
    CollectiveBegin {
        op_id: u64,
        op: crate::Op,
        algo: crate::Algo,
        /// The modelled size of each member's buffer.
        bytes: u64,
        /// The group, as a flight recorder names it: its arithmetic base (first member,
        /// stride, member count, last member; [`crate::Group::base_shape`]) and how many of
        /// those it leaves out (dropped nodes' ranks).
        group: (u32, u32, u32, u32),
        group_holes: u32,
    },
    CollectiveEnd {
        op_id: u64,
    },
    /// The blocking part of a checkpoint at `step` took `stall_ns`.
    CheckpointSnapshot {
        step: u64,
        stall_ns: u64,
    },
    /// Every shard of `step` is durable and its manifest is committed.
    CheckpointCommitted {
        step: u64,
    },
    /// Training state was restored from the checkpoint of `step` in `tier`.
    Restored {
        step: u64,
        tier: Tier,
    },
    /// The restore found the checkpoint of `step` unusable and fell back to an older one.
    RestoreFallback {
        step: u64,
    },
    /// This rank's forward and backward compute of `step` took `compute_ns`, as the rank
    /// measured it: telemetry for straggler scores, collected outside the training buffer.
    ComputeTimed {
        step: u64,
        compute_ns: u64,
    },
    /// A payload from `peer` with `tag` failed its checksum; a resend was asked for.
    ChecksumMismatch {
        peer: usize,
        tag: Tag,
    },
    /// `check` found step `step` suspect (a corrupted gradient, sum or parameter).
    SdcSuspect {
        step: u64,
        check: Check,
    },
    /// Re-running suspect step `step` told a transient fault (a clean, different sum) from a
    /// persistent one (the same sum again).
    SdcVerdict {
        step: u64,
        persistent: bool,
    },
    /// Health-check work (a fingerprint, a re-run) at `step` took `elapsed_ns`.
    HealthCheckCost {
        step: u64,
        check: Check,
        elapsed_ns: u64,
    },
    /// Replicas diverged: training goes back from `from_step` to the checkpoint of `to_step`
    /// (0: the start).
    SdcRollback {
        from_step: u64,
        to_step: u64,
    },
}

/// Where the training step offers its data to [`Backend::fault_point`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPoint {
    /// This rank's freshly computed gradient of `step`, before the all-reduce.
    Gradient { step: u64 },
    /// This replica's resident parameters as step `step` begins.
    Parameters { step: u64 },
}

/// Where a blob lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// This node's host memory: fast, lost when the node crashes.
    Host,
    /// Another node's host memory, reached over the fabric: lost when that node crashes.
    Peer { node: usize },
    /// The shared persistent store: survives crashes, bandwidth shared by every client.
    Persistent,
}

/// A stored object: real bytes, and the size of the object it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub bytes: Vec<u8>,
    pub modelled_bytes: u64,
}

/// Storage failures a rank must handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageError {
    NotFound {
        name: String,
    },
    /// The write did not become durable.
    WriteFailed {
        name: String,
    },
    /// The tier's memory is gone (its node crashed) or cannot be reached.
    Unavailable {
        tier: Tier,
    },
    Aborted,
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageError::NotFound { name } => write!(f, "no blob named {name}"),
            StorageError::WriteFailed { name } => write!(f, "writing {name} failed"),
            StorageError::Unavailable { tier } => write!(f, "{tier:?} is unavailable"),
            StorageError::Aborted => write!(f, "aborted"),
        }
    }
}

impl std::error::Error for StorageError {}

/// An asynchronous write in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WriteTicket(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteStatus {
    Pending,
    Durable,
    Failed,
}

/// What the job controller tells a rank once the job restarts after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartOrder {
    /// Counts restarts; messages of an older generation never arrive.
    pub generation: u64,
    /// This rank's process (or node) died: everything it held in memory is gone.
    pub memory_lost: bool,
    /// The controller gave up on the job (too many restarts): stop.
    pub job_abandoned: bool,
    /// Per-replica recovery: the job goes on without a restore. The members of
    /// [`Backend::replica_group`] adopt one survivor's state and redo the step in flight.
    pub regroup: bool,
}

/// One rank's view of the world.
///
/// Futures returned here need not be `Send`: a simulator runs every rank on one thread.
pub trait Backend {
    /// This rank's index in the world, `0..world_size()`.
    fn rank(&self) -> usize;
    /// How ranks sit on nodes.
    fn placement(&self) -> Placement;

    fn world_size(&self) -> usize {
        self.placement().world_size
    }

    /// The data-parallel replicas training now: the world, less the nodes the per-replica
    /// recovery policy dropped. Gradients are averaged over its members.
    fn replica_group(&self) -> Group {
        self.placement().world()
    }

    /// Nodes re-admitted at the latest regroup: their ranks hold no state to offer.
    fn rejoined_nodes(&self) -> Vec<usize> {
        Vec::new()
    }

    /// Hands `payload` to the transport. Completes once the payload is on its way; delivery
    /// takes model time that the backend charges.
    fn send(
        &self,
        to: usize,
        tag: Tag,
        payload: Payload,
    ) -> impl Future<Output = Result<(), CommError>>;

    /// Waits for the payload that `from` sent with `tag`.
    fn recv(&self, from: usize, tag: Tag) -> impl Future<Output = Result<Payload, CommError>>;

    /// Model time in nanoseconds since the job started.
    fn now_ns(&self) -> u64;

    /// Waits `duration_ns` of model time. Fails with `Aborted` when the rank dies or the job
    /// stops meanwhile.
    fn sleep(&self, duration_ns: u64) -> impl Future<Output = Result<(), CommError>>;

    /// Charges the model time that `work` takes on this rank's GPU.
    fn compute(&self, work: Work) -> impl Future<Output = Result<(), CommError>>;

    /// Records an event in the trace.
    fn emit(&self, event: Event);

    /// Writes `blob` as `name` in `tier`, waiting until it is durable there.
    fn store_put(
        &self,
        tier: Tier,
        name: &str,
        blob: Blob,
    ) -> impl Future<Output = Result<(), StorageError>>;

    /// Starts writing `blob` as `name` in `tier` and returns at once; the write proceeds while
    /// the rank goes on. [`Backend::store_poll`] says when it is durable.
    fn store_put_async(&self, tier: Tier, name: &str, blob: Blob) -> WriteTicket;

    fn store_poll(&self, ticket: WriteTicket) -> WriteStatus;

    /// Reads `name` from `tier`.
    fn store_get(&self, tier: Tier, name: &str)
        -> impl Future<Output = Result<Blob, StorageError>>;

    /// Names in `tier` that start with `prefix`, in order.
    fn store_list(&self, tier: Tier, prefix: &str) -> Vec<String>;

    fn store_delete(&self, tier: Tier, name: &str);

    /// Reports that this rank met `error` it cannot get past, and waits for the job controller
    /// to restart the job.
    fn await_restart(&self, error: &CommError) -> impl Future<Output = RestartOrder>;

    /// Asks the transport to send again the payload from `from` with `tag`, whose checksum did
    /// not match, and waits for it. A transport that keeps no copy for resending fails with
    /// `CorruptPayload`.
    fn recv_resend(
        &self,
        from: usize,
        tag: Tag,
    ) -> impl Future<Output = Result<Payload, CommError>> {
        let _ = tag;
        std::future::ready(Err(CommError::CorruptPayload { peer: from }))
    }

    /// Shows `data` at `point` to the world. Real hardware does nothing here; a simulator
    /// injects silent data corruption (a flipped bit) that the trainer's checks must catch.
    fn fault_point(&self, point: FaultPoint, data: &mut [f32]) {
        let _ = (point, data);
    }

    /// The op id this rank issues for the collective its program numbers `op_id`: the same,
    /// on real hardware. A simulator may make a rank issue another collective than its peers
    /// (a desync, as when one rank takes another branch), which they then wait on forever.
    fn issued_op_id(&self, op_id: u64) -> u64 {
        op_id
    }

    /// A known bug to plant in the trainer's logic, for proving that the seed swarm finds
    /// bugs; `None` on every backend unless a test asked for one (see `planted.rs`).
    fn planted_bug(&self) -> Option<crate::PlantedBug> {
        None
    }

    /// `acc[i] += src[i]` for every `i`, in that order. A GPU backend runs this as a kernel;
    /// both must give the same bits.
    fn add_assign(&self, acc: &mut [f32], src: &[f32]) {
        kernels::add_assign(acc, src);
    }

    /// `params[i] -= lr * grad[i]`, the SGD update.
    fn sgd_update(&self, params: &mut [f32], grad: &[f32], lr: f32) {
        kernels::sgd_update(params, grad, lr);
    }

    /// One proxy layer's forward on this rank's units: [`crate::mlp::layer_forward`]. A GPU
    /// backend runs it as kernels; both must give the same bits.
    fn layer_forward(
        &self,
        weights: &[f32],
        width: usize,
        h: &[f32],
        pre: &mut [f32],
        partial: &mut [f32],
    ) {
        crate::mlp::layer_forward(weights, width, h, pre, partial);
    }

    /// One proxy layer's backward on this rank's units: [`crate::mlp::layer_backward`], with
    /// `saved` the layer's input, its pre-activations and the gradient at its output. A GPU
    /// backend runs it as kernels; both must give the same bits.
    fn layer_backward(
        &self,
        weights: &[f32],
        width: usize,
        saved: (&[f32], &[f32], &[f32]),
        grad: &mut [f32],
        partial_dh: &mut [f32],
    ) {
        crate::mlp::layer_backward(weights, width, saved, grad, partial_dh);
    }
}
