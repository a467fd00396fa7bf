//! Sharded, checksummed checkpoints with a manifest committed only after every shard is durable,
//! asynchronous persist, an optional copy in a buddy node's memory, retention of the last K, and
//! a verified restore that falls back to an older checkpoint when a shard is missing or corrupt.
//!
//! Layout in a tier: `ckpt/{step:012}/shard-{rank:06}` and `manifests/{step:012}` (apart, so
//! listing the committed checkpoints never walks every shard), where
//! `step` is the number of completed steps the checkpoint resumes from. A checkpoint exists, for
//! a restore, only if its manifest does: rank 0 writes the manifest once every rank has reported
//! its shard durable, so no restore can read a checkpoint that was still being written.
//!
//! Which part of the parameters a rank's shard holds is the reduce-scatter layout of the job's
//! collective ([`Collective::owned_spans`]), so a restore reads one shard per rank and rebuilds
//! the full parameters with an all-gather of the same algorithm. Over the world by default;
//! over a [`ShardScope`] (a layout shard's DP group) for a job whose ranks hold different
//! parameters: a shard is then named by its rank, whose layout coordinates (stage, TP rank,
//! DP rank) say which part of which layout shard it holds.

use crate::backend::{
    Backend, Blob, CommError, Event, StorageError, Tier, WriteStatus, WriteTicket,
};
use crate::collectives::{Collective, Op};
use crate::digest::Digest;
use crate::group::{Group, Placement};
use crate::planted::PlantedBug;
use crate::span::Span;

const SHARD_MAGIC: &[u8; 4] = b"FLCK";
const MANIFEST_MAGIC: &[u8; 4] = b"FLMF";
const FORMAT_VERSION: u32 = 1;

/// When to checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interval {
    /// After every this many steps.
    Steps(u64),
    /// At the first step boundary at least this much model time after the last checkpoint.
    ModelTimeNs(u64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointPolicy {
    pub interval: Interval,
    /// Committed checkpoints to keep; older ones are deleted.
    pub keep: usize,
    /// Bytes of the full training state (weights, master copy, optimizer moments) the proxy
    /// parameters stand for; each rank's shard stands for its share.
    pub modelled_state_bytes: u64,
    /// Device-to-host copy rate of the blocking snapshot.
    pub snapshot_bytes_per_s: f64,
    /// Also copy each shard into a buddy node's host memory.
    pub buddy_copy: bool,
    /// Restore from host memory (own, then the buddy's) before the persistent store.
    pub restore_from_memory: bool,
}

pub fn shard_name(step: u64, rank: usize) -> String {
    format!("ckpt/{step:012}/shard-{rank:06}")
}

pub fn manifest_name(step: u64) -> String {
    format!("manifests/{step:012}")
}

/// The step of a manifest's name, if `name` is one.
pub fn manifest_step(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("manifests/")?;
    (rest.len() == 12).then(|| rest.parse().ok()).flatten()
}

/// The buddy of `node`: the next node, wrapping; a single node has none.
pub fn buddy_node(node: usize, node_count: usize) -> Option<usize> {
    (node_count > 1).then_some((node + 1) % node_count)
}

/// A shard as stored: a header with its identity and a checksum, then the values.
pub fn encode_shard(step: u64, rank: usize, world: usize, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(36 + 4 * values.len());
    out.extend_from_slice(SHARD_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&step.to_le_bytes());
    out.extend_from_slice(&(rank as u32).to_le_bytes());
    out.extend_from_slice(&(world as u32).to_le_bytes());
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    let mut digest = Digest::new();
    digest.f32s(values);
    out.extend_from_slice(&digest.finish().to_le_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Why a stored shard or manifest cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatError {
    Truncated,
    BadMagic,
    UnsupportedVersion(u32),
    /// The header names another step, rank or world size than the one asked for.
    WrongIdentity,
    ChecksumMismatch,
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(FormatError::Truncated)?;
        self.0 = rest;
        Ok(*head)
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        self.take::<8>().map(u64::from_le_bytes)
    }
}

/// Decodes and verifies a shard written by [`encode_shard`].
pub fn decode_shard(
    bytes: &[u8],
    step: u64,
    rank: usize,
    world: usize,
) -> Result<Vec<f32>, FormatError> {
    let mut r = Reader(bytes);
    if &r.take::<4>()? != SHARD_MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = r.u32()?;
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let (s, rk, w) = (r.u64()?, r.u32()?, r.u32()?);
    if s != step || rk as usize != rank || w as usize != world {
        return Err(FormatError::WrongIdentity);
    }
    let len = r.u32()? as usize;
    let checksum = r.u64()?;
    if r.0.len() != 4 * len {
        return Err(FormatError::Truncated);
    }
    let values: Vec<f32> =
        r.0.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
    let mut digest = Digest::new();
    digest.f32s(&values);
    if digest.finish() != checksum {
        return Err(FormatError::ChecksumMismatch);
    }
    Ok(values)
}

/// The planted bug [`PlantedBug::UnverifiedRestore`]: [`decode_shard`] without the checksum
/// comparison. Never called unless that bug is planted.
fn decode_shard_unverified(
    bytes: &[u8],
    step: u64,
    rank: usize,
    world: usize,
) -> Result<Vec<f32>, FormatError> {
    match decode_shard(bytes, step, rank, world) {
        Err(FormatError::ChecksumMismatch) => {
            let values = bytes[36..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            Ok(values)
        }
        other => other,
    }
}

pub fn encode_manifest(step: u64, world: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(MANIFEST_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&step.to_le_bytes());
    out.extend_from_slice(&(world as u32).to_le_bytes());
    let mut digest = Digest::new();
    digest.bytes(&out);
    out.extend_from_slice(&digest.finish().to_le_bytes());
    out
}

/// Decodes a manifest, returning its world size.
pub fn decode_manifest(bytes: &[u8], step: u64) -> Result<usize, FormatError> {
    if bytes.len() != 28 {
        return Err(FormatError::Truncated);
    }
    let mut digest = Digest::new();
    digest.bytes(&bytes[..20]);
    let mut r = Reader(bytes);
    if &r.take::<4>()? != MANIFEST_MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = r.u32()?;
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let s = r.u64()?;
    let world = r.u32()? as usize;
    if r.u64()? != digest.finish() {
        return Err(FormatError::ChecksumMismatch);
    }
    if s != step {
        return Err(FormatError::WrongIdentity);
    }
    Ok(world)
}

/// The control values a rank adds to the step's all-reduce, so that every rank reaches the
/// same checkpoint decisions with no extra collective.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Votes {
    /// Rank 0 votes 1 when a model-time interval has elapsed.
    pub checkpoint_due: f32,
    /// 1 when this rank's pending shard is durable.
    pub durable: f32,
    /// 1 when this rank's pending shard failed to persist.
    pub failed: f32,
}

pub const VOTE_COUNT: usize = 3;

impl Votes {
    pub fn write(&self, out: &mut [f32]) {
        out.copy_from_slice(&[self.checkpoint_due, self.durable, self.failed]);
    }

    pub fn read(summed: &[f32]) -> Votes {
        Votes {
            checkpoint_due: summed[0],
            durable: summed[1],
            failed: summed[2],
        }
    }
}

/// A checkpoint whose shards are being persisted.
#[derive(Clone, Copy, Debug)]
struct Pending {
    step: u64,
    persist: Option<WriteTicket>,
}

/// The ranks whose parameters a rank's shard is a part of, when not the whole world's (the
/// plain job, where every rank holds every parameter): a layout shard's DP replicas.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardScope {
    pub group: Group,
    /// The elements the group's reduce-scatter layout cuts: the parameters and whatever the
    /// job's reductions carry after them (the loss), so that a shard is exactly the part of the
    /// parameters its rank updates under a sharded optimizer.
    pub split_elems: usize,
    /// Bytes of the training state the group's parameters stand for.
    pub modelled_state_bytes: u64,
    /// A restore all-gathers the members' parts into the whole parameters, which every member
    /// holds; false where each member holds only its own part (sharded parameters).
    pub gather_on_restore: bool,
}

/// One rank's checkpoint state.
#[derive(Clone, Debug)]
pub struct Checkpointer {
    pub policy: CheckpointPolicy,
    pub collective: Collective,
    /// `None`: the shards cut the whole world's parameters.
    scope: Option<ShardScope>,
    pending: Option<Pending>,
    last_checkpoint_ns: u64,
    /// Checkpoints started but skipped because the previous one was still persisting.
    pub skipped: u64,
}

impl Checkpointer {
    pub fn new(policy: CheckpointPolicy, collective: Collective) -> Checkpointer {
        Checkpointer {
            policy,
            collective,
            scope: None,
            pending: None,
            last_checkpoint_ns: 0,
            skipped: 0,
        }
    }

    /// Shards cut `scope`'s parameters, with `collective` (the one its reductions run) over
    /// its group.
    pub fn with_scope(self, scope: ShardScope) -> Checkpointer {
        Checkpointer {
            scope: Some(scope),
            ..self
        }
    }

    /// Whether the coming step boundary needs the ranks' votes: a checkpoint is persisting, or
    /// rank 0 says when a model-time interval has elapsed. Every rank gives the same answer, so
    /// a job whose steps carry no world-wide reduction can skip the vote when none is needed.
    pub fn needs_votes(&self) -> bool {
        self.pending.is_some() || matches!(self.policy.interval, Interval::ModelTimeNs(_))
    }

    /// This rank's votes for the coming all-reduce.
    pub fn votes<B: Backend>(&self, backend: &B) -> Votes {
        let mut votes = Votes::default();
        if let Interval::ModelTimeNs(interval) = self.policy.interval {
            if backend.rank() == 0 && backend.now_ns() >= self.last_checkpoint_ns + interval {
                votes.checkpoint_due = 1.0;
            }
        }
        if let Some(pending) = self.pending {
            match pending
                .persist
                .map_or(WriteStatus::Durable, |t| backend.store_poll(t))
            {
                WriteStatus::Durable => votes.durable = 1.0,
                WriteStatus::Failed => votes.failed = 1.0,
                WriteStatus::Pending => {}
            }
        }
        votes
    }

    /// Acts on the summed votes at the boundary after `completed_steps` steps: commits or
    /// abandons the pending checkpoint, then starts a new one if one is due.
    pub async fn at_step_boundary<B: Backend>(
        &mut self,
        backend: &B,
        summed: Votes,
        completed_steps: u64,
        params: &[f32],
    ) -> Result<(), CommError> {
        let world = backend.world_size() as f32;
        if let Some(pending) = self.pending {
            if summed.failed > 0.0 {
                // Some shard will never be durable: drop this checkpoint everywhere.
                backend.store_delete(Tier::Persistent, &shard_name(pending.step, backend.rank()));
                self.pending = None;
            } else if summed.durable == world
                || backend.planted_bug() == Some(PlantedBug::CommitBeforeDurable)
            {
                self.pending = None;
                self.commit(backend, pending.step).await?;
            }
        }
        let due = match self.policy.interval {
            Interval::Steps(every) => completed_steps % every == 0,
            Interval::ModelTimeNs(_) => summed.checkpoint_due > 0.0,
        };
        if due {
            if self.pending.is_some() {
                self.skipped += 1;
            } else {
                self.start(backend, completed_steps, params).await?;
            }
        }
        Ok(())
    }

    /// The spans of the `elems` parameters this rank's shard holds.
    fn my_spans<B: Backend>(&self, backend: &B, elems: usize) -> Vec<Span> {
        self.shard_spans(&backend.placement(), backend.rank(), elems)
    }

    /// The spans of the `elems` parameters that `rank`'s shard holds: its part of the world's
    /// reduce-scatter layout, or of its scope's group's.
    pub fn shard_spans(&self, placement: &Placement, rank: usize, elems: usize) -> Vec<Span> {
        let Some(scope) = &self.scope else {
            let world = placement.world();
            let bytes = self.policy.modelled_state_bytes;
            return (self.collective).owned_spans(placement, &world, rank, elems, bytes);
        };
        let member = scope
            .group
            .index_of(rank)
            .expect("a member of its shard scope");
        let (split, bytes) = (scope.split_elems, scope.modelled_state_bytes);
        (self
            .collective
            .owned_spans(placement, &scope.group, member, split, bytes))
        .iter()
        .map(|span| span.clipped(elems))
        .collect()
    }

    /// The group a restore rebuilds the parameters over, the buffer it gathers (at least the
    /// parameters) and its modelled bytes; no group when each rank keeps only its own part.
    fn gather_plan<B: Backend>(&self, backend: &B, elems: usize) -> Option<(Group, usize, u64)> {
        match &self.scope {
            None => Some((
                backend.placement().world(),
                elems,
                self.policy.modelled_state_bytes,
            )),
            Some(scope) => (scope.gather_on_restore && scope.group.count() > 1).then(|| {
                let (split, bytes) = (scope.split_elems, scope.modelled_state_bytes);
                (scope.group.clone(), split, bytes)
            }),
        }
    }

    /// The blocking snapshot (device to host), then the persist in the background and the
    /// buddy copy.
    async fn start<B: Backend>(
        &mut self,
        backend: &B,
        step: u64,
        params: &[f32],
    ) -> Result<(), CommError> {
        let spans = self.my_spans(backend, params.len());
        let values: Vec<f32> = spans
            .iter()
            .flat_map(|s| params[s.elems()].iter().copied())
            .collect();
        let modelled: u64 = spans.iter().map(Span::modelled_bytes).sum();
        let started = backend.now_ns();
        let copy_ns =
            crate::units::capped_ns(modelled as f64 / self.policy.snapshot_bytes_per_s * 1e9);
        backend.sleep(copy_ns).await?;
        let rank = backend.rank();
        let blob = Blob {
            bytes: encode_shard(step, rank, backend.world_size(), &values),
            modelled_bytes: modelled,
        };
        let name = shard_name(step, rank);
        // The host copy is what the snapshot produced; it is what in-memory recovery reads.
        backend.store_put_async(Tier::Host, &name, blob.clone());
        if self.policy.buddy_copy {
            let placement = backend.placement();
            if let Some(buddy) = buddy_node(placement.node_of(rank), placement.node_count()) {
                backend.store_put_async(Tier::Peer { node: buddy }, &name, blob.clone());
            }
        }
        let persist = backend.store_put_async(Tier::Persistent, &name, blob);
        backend.emit(Event::CheckpointSnapshot {
            step,
            stall_ns: backend.now_ns() - started,
        });
        self.last_checkpoint_ns = started;
        self.pending = Some(Pending {
            step,
            persist: Some(persist),
        });
        Ok(())
    }

    /// Every shard of `step` is durable: rank 0 writes the manifest; every rank then keeps only
    /// the newest `keep` committed checkpoints of its own shards.
    async fn commit<B: Backend>(&mut self, backend: &B, step: u64) -> Result<(), CommError> {
        let rank = backend.rank();
        if rank == 0 {
            let blob = Blob {
                bytes: encode_manifest(step, backend.world_size()),
                modelled_bytes: 4096,
            };
            match backend
                .store_put(Tier::Persistent, &manifest_name(step), blob)
                .await
            {
                Ok(()) => {}
                Err(StorageError::Aborted) => return Err(CommError::Aborted),
                // The checkpoint stays uncommitted; the previous ones remain.
                Err(_) => return Ok(()),
            }
            backend.emit(Event::CheckpointCommitted { step });
        }
        let committed = committed_steps(backend, Tier::Persistent);
        let newest_kept: Vec<u64> = committed
            .iter()
            .rev()
            .take(self.policy.keep)
            .copied()
            .collect();
        let oldest_kept = newest_kept.last().copied().unwrap_or(step).min(step);
        for old in committed.iter().filter(|s| **s < oldest_kept) {
            if rank == 0 {
                backend.store_delete(Tier::Persistent, &manifest_name(*old));
            }
            for tier in restore_tiers(backend, true) {
                backend.store_delete(tier, &shard_name(*old, rank));
            }
        }
        Ok(())
    }

    /// Forgets any checkpoint in progress (its writes belong to a job that has restarted).
    pub fn reset(&mut self, now_ns: u64) {
        self.pending = None;
        self.last_checkpoint_ns = now_ns;
    }

    /// After the job restarted in `generation`: forgets the checkpoint in progress, then
    /// [`restore`]s the newest one that verifies (with that generation's op ids) into `params`
    /// and `step`, which stay as they are when none does.
    pub async fn restore_after_restart<B: Backend>(
        &mut self,
        backend: &B,
        generation: u64,
        params: &mut Vec<f32>,
        step: &mut u64,
    ) -> Result<(), CommError> {
        self.reset(backend.now_ns());
        let op_base = crate::op_ids::OpSpace::Restore { generation }.op_id();
        if let Some(restored) = restore(backend, self, params.len(), op_base).await? {
            *params = restored.params;
            *step = restored.step;
        }
        Ok(())
    }
}

/// Steps of the committed checkpoints in `tier`, oldest first.
pub fn committed_steps<B: Backend>(backend: &B, tier: Tier) -> Vec<u64> {
    backend
        .store_list(tier, "manifests/")
        .iter()
        .filter_map(|name| manifest_step(name))
        .collect()
}

/// What a restore found.
#[derive(Clone, Debug, PartialEq)]
pub struct Restored {
    pub step: u64,
    pub params: Vec<f32>,
    /// Newer checkpoints that were skipped because a shard was missing or corrupt.
    pub fallbacks: u64,
    /// Where this rank's shard came from.
    pub tier: Tier,
}

/// The tiers a rank reads its shard from, best first: its own host memory, then its buddy's,
/// then the persistent store; or the persistent store alone.
fn restore_tiers<B: Backend>(backend: &B, from_memory: bool) -> Vec<Tier> {
    let mut tiers = Vec::new();
    if from_memory {
        tiers.push(Tier::Host);
        let placement = backend.placement();
        let node = placement.node_of(backend.rank());
        if let Some(buddy) = buddy_node(node, placement.node_count()) {
            tiers.push(Tier::Peer { node: buddy });
        }
    }
    tiers.push(Tier::Persistent);
    tiers
}

/// Reads and verifies this rank's shard of `step` from `tier`, scattering it into `params`.
async fn read_shard<B: Backend>(
    backend: &B,
    tier: Tier,
    step: u64,
    spans: &[Span],
    params: &mut [f32],
) -> Result<bool, CommError> {
    let (rank, world) = (backend.rank(), backend.world_size());
    let blob = match backend.store_get(tier, &shard_name(step, rank)).await {
        Ok(blob) => blob,
        Err(StorageError::Aborted) => return Err(CommError::Aborted),
        Err(_) => return Ok(false),
    };
    let expected_len: usize = spans.iter().map(|s| s.elems().len()).sum();
    let decoded = if backend.planted_bug() == Some(PlantedBug::UnverifiedRestore) {
        decode_shard_unverified(&blob.bytes, step, rank, world)
    } else {
        decode_shard(&blob.bytes, step, rank, world)
    };
    match decoded {
        Ok(values) if values.len() == expected_len => {
            let mut values = values.into_iter();
            for span in spans {
                for slot in &mut params[span.elems()] {
                    *slot = values.next().expect("lengths checked");
                }
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Restores the newest committed checkpoint whose every shard verifies, falling back to older
/// ones; `None` when none does. Every rank must call this together: each reads its own shard
/// from the best tier that holds a verified copy, the ranks agree on each candidate with an
/// all-reduce of their verdicts, then rebuild the parameters with an all-gather. `op_base`
/// must not collide with the op ids of training steps.
pub async fn restore<B: Backend>(
    backend: &B,
    checkpointer: &Checkpointer,
    elems: usize,
    op_base: u64,
) -> Result<Option<Restored>, CommError> {
    restore_at_or_before(backend, checkpointer, elems, op_base, u64::MAX).await
}

/// Deletes every committed checkpoint newer than `step` (rank 0 its manifest, each rank its
/// shards): after replicas diverged, those hold parameters that must not be restored.
pub fn forget_after<B: Backend>(backend: &B, step: u64) {
    let rank = backend.rank();
    for newer in committed_steps(backend, Tier::Persistent)
        .into_iter()
        .filter(|s| *s > step)
    {
        for tier in restore_tiers(backend, true) {
            backend.store_delete(tier, &shard_name(newer, rank));
        }
        if rank == 0 {
            backend.store_delete(Tier::Persistent, &manifest_name(newer));
        }
    }
}

/// As [`restore`], considering only checkpoints of at most `max_step` completed steps.
pub async fn restore_at_or_before<B: Backend>(
    backend: &B,
    checkpointer: &Checkpointer,
    elems: usize,
    op_base: u64,
    max_step: u64,
) -> Result<Option<Restored>, CommError> {
    let world = backend.world_size();
    let group = backend.placement().world();
    let spans = checkpointer.my_spans(backend, elems);
    let tiers = restore_tiers(backend, checkpointer.policy.restore_from_memory);
    let gather = checkpointer.gather_plan(backend, elems);
    let mut candidates = committed_steps(backend, Tier::Persistent);
    candidates.retain(|s| *s <= max_step);
    for (attempt, &step) in candidates.iter().rev().enumerate() {
        let op_id = op_base + 2 * attempt as u64;
        crate::op_ids::debug_assert_room(op_base, 2 * attempt as u64 + 1);
        let buffer_elems = gather.as_ref().map_or(elems, |(_, len, _)| *len);
        let mut params = vec![0.0f32; buffer_elems];
        let source = read_candidate(backend, &tiers, step, &spans, &mut params).await?;
        let mut verdict = [if source.is_some() { 1.0f32 } else { 0.0 }];
        checkpointer
            .collective
            .for_control()
            .run(backend, &group, Op::AllReduce, op_id, &mut verdict, 8)
            .await?;
        let Some(tier) = source.filter(|_| verdict[0] == world as f32) else {
            backend.emit(Event::RestoreFallback { step });
            continue;
        };
        if let Some((members, _, modelled)) = &gather {
            let all_gather = Op::AllGather;
            (checkpointer.collective)
                .run(
                    backend,
                    members,
                    all_gather,
                    op_id + 1,
                    &mut params,
                    *modelled,
                )
                .await?;
        }
        params.truncate(elems);
        backend.emit(Event::Restored { step, tier });
        return Ok(Some(Restored {
            step,
            params,
            fallbacks: attempt as u64,
            tier,
        }));
    }
    Ok(None)
}

/// Checks the manifest of `step`, then reads this rank's shard of it from the best of `tiers`
/// that holds a verified copy. The tier it came from; `None` when none did.
async fn read_candidate<B: Backend>(
    backend: &B,
    tiers: &[Tier],
    step: u64,
    spans: &[Span],
    params: &mut [f32],
) -> Result<Option<Tier>, CommError> {
    let manifest_ok = match backend
        .store_get(Tier::Persistent, &manifest_name(step))
        .await
    {
        Ok(blob) => decode_manifest(&blob.bytes, step) == Ok(backend.world_size()),
        Err(StorageError::Aborted) => return Err(CommError::Aborted),
        Err(_) => false,
    };
    if manifest_ok {
        for &tier in tiers {
            if read_shard(backend, tier, step, spans, params).await? {
                return Ok(Some(tier));
            }
        }
    }
    Ok(None)
}
