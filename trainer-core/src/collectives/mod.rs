//! Collectives written over point-to-point send and receive.
//!
//! Four algorithms (ring, binomial tree, recursive halving-doubling, and hierarchical: inside the
//! node, across nodes per rail, inside again) for all-reduce, reduce-scatter, all-gather,
//! broadcast and barrier, over any group size and any GPUs per node, partial last node included.
//!
//! Every algorithm sums in an order fixed by the algorithm and the group, never by message
//! arrival: receives name their sender and tag, and each partial sum is computed by exactly one
//! rank and then copied. So a run's numbers do not depend on the executor's interleaving.
//!
//! Reduce-scatter leaves each rank owning some [`Span`]s of the buffer; which ones is the
//! algorithm's layout ([`Collective::owned_spans`]), and all-gather with the same algorithm
//! takes that layout back to a full buffer.
//!
//! A group may have holes (ranks dropped by the per-replica recovery policy): ring, tree and
//! halving-doubling only ever name members by index, so they run over any group; the
//! hierarchical algorithm runs over the world minus whole nodes, whose node groups stay whole
//! and whose rail groups lose the dropped nodes.
//!
//! # Why the steps are functions that return `async move` blocks
//!
//! The simulator runs every rank as one future, 100,000 of them at a time, and its executor
//! loads a rank's whole future on every poll; every byte a future holds is paid for on every
//! message. An `async fn` keeps each argument it uses after an await twice, as the argument
//! and as a local (rust-lang/rust#62958), and a future that awaits another it was handed
//! keeps that one twice too. So the steps here are plain functions that do what needs no
//! waiting (slicing buffers, computing tags, building contexts) and return an `async move`
//! block that captures only what it needs; loops recompute cheap numbers after an await
//! rather than keep them; and rarely used paths (the checksum resend loop) are boxed.
//! `-Zprint-type-sizes` on nightly shows each state's layout. A collective's whole future
//! was 1,064 bytes written with `async fn`, and is 640 this way.
#![allow(clippy::manual_async_fn)]

mod halving_doubling;
mod hierarchical;
mod ring;
mod tree;

use std::future::Future;

use crate::backend::{Backend, CommError, Event, Payload, Tag};
use crate::integrity::{self, HealthCounters};
use crate::kernels;

use crate::group::{Group, Placement};
use crate::span::Span;

/// [`exact_input`] repeats every `INPUT_PERIOD` ranks.
pub const INPUT_PERIOD: usize = 17;

/// Rank `rank`'s input element `idx` in exactness checks: small integers, so every sum in any
/// order is exact and any algorithm must give the reference bit for bit. Both backends' checks
/// use this one definition.
pub fn exact_input(rank: usize, idx: usize) -> f32 {
    ((rank * 7 + idx * 13) % INPUT_PERIOD) as f32 - 8.0
}

/// Rank `rank`'s first `len` input elements, [`exact_input`] of `0..len`. The input repeats
/// every `INPUT_PERIOD` indices too, so one period is computed and then copied: a
/// 100,000-rank benchmark fills 25.6 million of them.
pub fn exact_inputs(rank: usize, len: usize) -> Vec<f32> {
    let mut inputs = Vec::with_capacity(len);
    inputs.extend((0..len.min(INPUT_PERIOD)).map(|idx| exact_input(rank, idx)));
    // A whole number of periods so far, so copying a prefix continues the sequence.
    while inputs.len() < len {
        let more = (len - inputs.len()).min(inputs.len());
        inputs.extend_from_within(..more);
    }
    inputs
}

crate::named_enum! {
    /// The order a flat ring visits the world's ranks in (`job.ring_order`).
    pub enum RingOrder {
        /// As NCCL's rings: through each node's GPUs over NVLink, every other node backwards,
        /// so that the ring leaves one node and enters the next on the same rail (one leaf
        /// switch, no spine). The rank order where the group is not whole nodes of the world.
        Rail = "rail",
        /// In rank order: every node boundary goes from the last rail to the first, across
        /// the spines. Kept to compare.
        Rank = "rank",
    }
}

crate::named_enum! {
    /// A collective algorithm, by the name scenarios and the command line use.
    pub enum Algo {
        Ring = "ring",
        Tree = "tree",
        HalvingDoubling = "halving-doubling",
        Hierarchical = "hierarchical",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    AllReduce,
    ReduceScatter,
    AllGather,
    /// Broadcast from the group member with this index.
    Broadcast {
        root_idx: usize,
    },
    Barrier,
}

impl Op {
    pub const NAMES: [&'static str; 5] = [
        "all-reduce",
        "reduce-scatter",
        "all-gather",
        "broadcast",
        "barrier",
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::AllReduce => "all-reduce",
            Op::ReduceScatter => "reduce-scatter",
            Op::AllGather => "all-gather",
            Op::Broadcast { .. } => "broadcast",
            Op::Barrier => "barrier",
        }
    }

    /// Parses an op name; broadcast is from member 0.
    pub fn from_name(name: &str) -> Option<Op> {
        Some(match name {
            "all-reduce" => Op::AllReduce,
            "reduce-scatter" => Op::ReduceScatter,
            "all-gather" => Op::AllGather,
            "broadcast" => Op::Broadcast { root_idx: 0 },
            "barrier" => Op::Barrier,
            _ => return None,
        })
    }
}

/// An algorithm choice. `inter_node_algo` is what the hierarchical algorithm runs across nodes
/// on each rail; it is ignored by the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Collective {
    pub algo: Algo,
    pub inter_node_algo: Algo,
    /// Every payload carries a checksum of its data; the receiver verifies it and asks the
    /// transport to resend a payload that fails.
    pub payload_checksums: bool,
    /// Every reduction is also computed with the host's reference kernel and compared: the
    /// diagnostic re-run that finds a GPU whose reduction kernel is wrong.
    pub verify_reductions: bool,
    /// The order a flat ring visits the world in.
    pub ring_order: RingOrder,
}

/// How many times one payload is asked for again before the receive gives up.
pub const MAX_RESENDS: u32 = 8;

impl Collective {
    pub fn new(algo: Algo) -> Collective {
        Collective {
            algo,
            inter_node_algo: Algo::HalvingDoubling,
            payload_checksums: false,
            verify_reductions: false,
            ring_order: RingOrder::Rail,
        }
    }

    pub fn with_ring_order(self, ring_order: RingOrder) -> Collective {
        Collective { ring_order, ..self }
    }

    pub fn with_checksums(self, payload_checksums: bool) -> Collective {
        Collective {
            payload_checksums,
            ..self
        }
    }

    /// The collective for a payload of a few bytes (a health check's flags, a restore's
    /// verdict): such a collective is latency-bound, so it runs over a binomial tree (log2 n
    /// rounds, 2(n - 1) messages for an all-reduce) whatever algorithm moves the gradients, as
    /// NCCL's tuner picks a tree for small messages at scale. The job's hierarchical algorithm
    /// would send 3 million messages for two floats at 100,000 GPUs, a ring 2n(n - 1).
    pub fn for_control(self) -> Collective {
        Collective {
            algo: Algo::Tree,
            ..self
        }
    }

    pub fn with_inter_node(algo: Algo, inter_node_algo: Algo) -> Collective {
        assert!(
            inter_node_algo != Algo::Hierarchical,
            "hierarchical cannot nest in itself"
        );
        Collective {
            algo,
            inter_node_algo,
            payload_checksums: false,
            verify_reductions: false,
            ring_order: RingOrder::Rail,
        }
    }

    /// Runs `op` on `data` (the calling rank's buffer) over `group`, which must contain the
    /// calling rank. `modelled_bytes` is the size of the tensor `data` stands for. Every member
    /// must call with the same `op_id`, which must not be reused while messages of an earlier
    /// operation with that id may still be in flight.
    ///
    /// For reduce-scatter the result is valid in [`Collective::owned_spans`]; for all-gather the
    /// input is read only there. Broadcast and barrier ignore nothing and change nothing but
    /// what their names say.
    pub fn run<'a, B: Backend>(
        &self,
        backend: &'a B,
        group: &Group,
        op: Op,
        op_id: u64,
        data: &'a mut [f32],
        modelled_bytes: u64,
    ) -> impl Future<Output = Result<(), CommError>> + 'a {
        self.start(backend, group, op, op_id, data, modelled_bytes, None)
    }

    /// As [`Collective::run`], counting what the checks found in `counters`.
    #[allow(clippy::too_many_arguments)]
    pub fn run_checked<'a, B: Backend>(
        &self,
        backend: &'a B,
        group: &Group,
        op: Op,
        op_id: u64,
        data: &'a mut [f32],
        modelled_bytes: u64,
        counters: &'a HealthCounters,
    ) -> impl Future<Output = Result<(), CommError>> + 'a {
        self.start(
            backend,
            group,
            op,
            op_id,
            data,
            modelled_bytes,
            Some(counters),
        )
    }

    /// What every call must hold: this rank is in the group, a hierarchical collective spans
    /// the world (perhaps minus whole nodes), a broadcast's root is a member. Checked before
    /// the future exists, so it costs the future no state.
    fn check_call<B: Backend>(&self, backend: &B, group: &Group, op: Op) {
        assert!(
            group.index_of(backend.rank()).is_some(),
            "rank {} is not in {group:?}",
            backend.rank()
        );
        if self.algo == Algo::Hierarchical {
            assert!(
                group.is_world_with_holes(backend.world_size()),
                "the hierarchical algorithm runs over the world group, perhaps minus whole nodes"
            );
        }
        if let Op::Broadcast { root_idx } = op {
            assert!(root_idx < group.count(), "broadcast root outside the group");
        }
    }

    /// The collective's future. The context is made here, before the future, so that the
    /// future holds it once and not also the arguments it was made from; the algorithm is
    /// picked inside the future, not by a dispatching function per op, since every level of
    /// nesting keeps its state in every rank's future (see the module's note on futures).
    #[allow(clippy::too_many_arguments)]
    fn start<'a, B: Backend>(
        &self,
        backend: &'a B,
        group: &Group,
        op: Op,
        op_id: u64,
        data: &'a mut [f32],
        modelled_bytes: u64,
        counters: Option<&'a HealthCounters>,
    ) -> impl Future<Output = Result<(), CommError>> + 'a {
        self.check_call(backend, group, op);
        let op_id = backend.issued_op_id(op_id);
        let ctx = Ctx {
            backend,
            group: group.clone(),
            op_id,
            phase: 0,
            checksums: self.payload_checksums,
            verify_reductions: self.verify_reductions,
            ring_order: self.ring_order,
            counters,
        };
        // A barrier is an all-reduce of nothing.
        let span = Span::new(data.len(), modelled_bytes);
        let (data, span) = match op {
            Op::Barrier => (&mut [][..], Span::new(0, 0)),
            _ => (data, span),
        };
        let (algo, inter) = (self.algo, self.inter_node_algo);
        async move {
            ctx.backend.emit(ctx.begin_event(op, algo, &span));
            let result = match op {
                Op::AllReduce | Op::Barrier => match algo {
                    Algo::Ring => ring::all_reduce(&ctx, data, &span).await,
                    Algo::Tree => tree::all_reduce(&ctx, data, &span).await,
                    Algo::HalvingDoubling => halving_doubling::all_reduce(&ctx, data, &span).await,
                    Algo::Hierarchical => hierarchical::all_reduce(&ctx, inter, data, &span).await,
                },
                Op::ReduceScatter => match algo {
                    Algo::Ring => ring::reduce_scatter(&ctx, data, &span).await,
                    Algo::Tree => tree::reduce_scatter(&ctx, data, &span).await,
                    Algo::HalvingDoubling => {
                        halving_doubling::reduce_scatter(&ctx, data, &span).await
                    }
                    Algo::Hierarchical => {
                        hierarchical::reduce_scatter(&ctx, inter, data, &span).await
                    }
                },
                Op::AllGather => match algo {
                    Algo::Ring => ring::all_gather(&ctx, data, &span).await,
                    Algo::Tree => tree::all_gather(&ctx, data, &span).await,
                    Algo::HalvingDoubling => halving_doubling::all_gather(&ctx, data, &span).await,
                    Algo::Hierarchical => hierarchical::all_gather(&ctx, inter, data, &span).await,
                },
                Op::Broadcast { root_idx } => match algo {
                    Algo::Ring => ring::broadcast(&ctx, root_idx, data, &span).await,
                    // A binomial tree is the latency-optimal broadcast; halving-doubling uses
                    // it too.
                    Algo::Tree | Algo::HalvingDoubling => {
                        tree::broadcast(&ctx, root_idx, data, &span).await
                    }
                    Algo::Hierarchical => {
                        hierarchical::broadcast(&ctx, inter, root_idx, data, &span).await
                    }
                },
            };
            ctx.backend.emit(Event::CollectiveEnd { op_id: ctx.op_id });
            result
        }
    }

    /// Which spans of a buffer of `elem_count` elements standing for `modelled_bytes` the member
    /// at `member_idx` of `group` owns after a reduce-scatter with this algorithm.
    pub fn owned_spans(
        &self,
        placement: &Placement,
        group: &Group,
        member_idx: usize,
        elem_count: usize,
        modelled_bytes: u64,
    ) -> Vec<Span> {
        let span = Span::new(elem_count, modelled_bytes);
        match self.algo {
            Algo::Ring => {
                let order = ring::Order::of(self.ring_order, placement, group);
                vec![ring::owned_span(
                    group.count(),
                    order.position_of(member_idx),
                    &span,
                )]
            }
            Algo::Tree => vec![tree::owned_span(group.count(), member_idx, &span)],
            Algo::HalvingDoubling => halving_doubling::owned_span(group.count(), member_idx, &span)
                .into_iter()
                .collect(),
            Algo::Hierarchical => hierarchical::owned_spans(
                self.inter_node_algo,
                placement,
                group,
                group.member(member_idx),
                &span,
            ),
        }
    }
}

/// Whether `payload` matches the checksum its sender attached (one without a checksum does).
fn intact(payload: &Payload) -> bool {
    payload
        .checksum
        .is_none_or(|sum| sum == integrity::checksum(&payload.data))
}

/// What every step of an algorithm returns: the future of its result, borrowing its context,
/// buffer and span for `'a` (the note at the top says why steps are not `async fn`s).
trait Step<'a>: Future<Output = Result<(), CommError>> + 'a {}

impl<'a, F: Future<Output = Result<(), CommError>> + 'a> Step<'a> for F {}

/// What every algorithm needs: who it is, over which group, and how to tag its messages.
///
/// 56 bytes: a context is held at several levels of every rank's future, so this rank's index
/// in the group is worked out when asked for ([`Ctx::me`], an algorithm's first step) rather
/// than kept.
struct Ctx<'a, B> {
    backend: &'a B,
    group: Group,
    /// The operation's id, in every tag.
    op_id: u64,
    /// The first phase number this (sub-)algorithm may use: each algorithm uses phases
    /// `phase..phase + 16`, and the hierarchical algorithm gives each rail chunk its own block.
    phase: u32,
    checksums: bool,
    verify_reductions: bool,
    ring_order: RingOrder,
    /// Where to count what the checks find, when the caller asked ([`Collective::run_checked`]).
    counters: Option<&'a HealthCounters>,
}

impl<'a, B: Backend> Ctx<'a, B> {
    /// What a collective's start tells the backend (a flight recorder's entry).
    fn begin_event(&self, op: Op, algo: Algo, span: &Span) -> Event {
        Event::CollectiveBegin {
            op_id: self.op_id,
            op,
            algo,
            bytes: span.modelled_bytes(),
            group: self.group.base_shape(),
            group_holes: self.group.excluded().len() as u32,
        }
    }

    fn count(&self) -> usize {
        self.group.count()
    }

    /// The tag of this algorithm's message of `phase` (below 16) and `round`.
    fn tag(&self, phase: u32, round: usize) -> Tag {
        debug_assert!(phase < 16);
        Tag::new(self.op_id, self.phase + phase, round as u32)
    }

    /// This rank's index in the group.
    fn me(&self) -> usize {
        self.group
            .index_of(self.backend.rank())
            .expect("a context's rank is in its group")
    }

    /// The same backend and tags over another group that contains this rank.
    fn sub(&self, group: Group, phase: u32) -> Ctx<'a, B> {
        assert!(
            group.index_of(self.backend.rank()).is_some(),
            "rank is in its sub-group"
        );
        Ctx {
            backend: self.backend,
            group,
            op_id: self.op_id,
            phase,
            checksums: self.checksums,
            verify_reductions: self.verify_reductions,
            ring_order: self.ring_order,
            counters: self.counters,
        }
    }

    /// Counts one finding in the caller's counters, if it gave any.
    fn count_found(&self, counter: impl Fn(&HealthCounters) -> &std::cell::Cell<u64>) {
        if let Some(counters) = self.counters {
            HealthCounters::bump(counter(counters));
        }
    }

    /// Sends `span` of `data` to member `to_idx`. Like the backend's own `send`, the message
    /// leaves when this is called; the future says how that went.
    fn send(
        &self,
        to_idx: usize,
        phase: u32,
        round: usize,
        data: &[f32],
        span: Span,
    ) -> impl Future<Output = Result<(), CommError>> + use<'a, B> {
        let mut payload = Payload::new(data[span.elems()].to_vec(), span.modelled_bytes());
        if self.checksums {
            payload.checksum = Some(integrity::checksum(&payload.data));
        }
        // The future borrows the backend for `'a`, not this context.
        let backend: &'a B = self.backend;
        backend.send(self.group.member(to_idx), self.tag(phase, round), payload)
    }

    /// `payload`, and whether it passes its checksum (or checksums are off).
    ///
    /// Takes the payload and hands it back rather than borrowing it: a local that a receive's
    /// body borrows keeps its room in the future across the resend's await, in every receive
    /// of every rank's future, for a path that runs only after a mismatch (which is also why
    /// that path is boxed).
    fn check(&self, payload: Payload) -> (Payload, bool) {
        let intact = !self.checksums || intact(&payload);
        (payload, intact)
    }

    /// After `payload` from `from` failed its checksum: asks for it again until an intact copy
    /// arrives, at most [`MAX_RESENDS`] times.
    async fn resend_until_intact(
        &self,
        from: usize,
        tag: Tag,
        mut payload: Payload,
    ) -> Result<Payload, CommError> {
        let mut resends = 0;
        while !intact(&payload) {
            self.count_found(|c| &c.checksum_mismatches);
            self.backend
                .emit(Event::ChecksumMismatch { peer: from, tag });
            resends += 1;
            if resends > MAX_RESENDS {
                return Err(CommError::CorruptPayload { peer: from });
            }
            payload = self.backend.recv_resend(from, tag).await?;
        }
        Ok(payload)
    }

    /// `acc += src` with the backend's reduction kernel; when verifying, also with the host's
    /// reference kernel, counting a mismatch.
    fn add(&self, acc: &mut [f32], src: &[f32]) {
        if !self.verify_reductions {
            self.backend.add_assign(acc, src);
            return;
        }
        let mut reference = acc.to_vec();
        kernels::add_assign(&mut reference, src);
        self.backend.add_assign(acc, src);
        let same = acc
            .iter()
            .zip(&reference)
            .all(|(a, r)| a.to_bits() == r.to_bits());
        if !same {
            self.count_found(|c| &c.kernel_mismatches);
        }
    }

    /// Receives `span` from `from_idx` and adds it into `data`.
    fn recv_add<'s>(
        &'s self,
        from_idx: usize,
        phase: u32,
        round: usize,
        data: &'s mut [f32],
        span: Span,
    ) -> impl Future<Output = Result<(), CommError>> + use<'s, 'a, B> {
        self.recv_into(from_idx, phase, round, &mut data[span.elems()], Merge::Add)
    }

    /// Receives `span` from `from_idx` and copies it into `data`.
    fn recv_copy<'s>(
        &'s self,
        from_idx: usize,
        phase: u32,
        round: usize,
        data: &'s mut [f32],
        span: Span,
    ) -> impl Future<Output = Result<(), CommError>> + use<'s, 'a, B> {
        self.recv_into(from_idx, phase, round, &mut data[span.elems()], Merge::Copy)
    }

    /// Receives a payload of `dst.len()` elements and adds or copies it into `dst`; with
    /// checksums on, verifies it and asks for a resend until one arrives intact. Every receive
    /// of every algorithm goes through here, at the deepest level of every rank's future.
    fn recv_into<'s>(
        &'s self,
        from_idx: usize,
        phase: u32,
        round: usize,
        dst: &'s mut [f32],
        merge: Merge,
    ) -> impl Future<Output = Result<(), CommError>> + use<'s, 'a, B> {
        let (from, tag) = (self.group.member(from_idx), self.tag(phase, round));
        async move {
            let payload = self.backend.recv(from, tag).await?;
            // At 100,000 ranks `dst` is out of cache; its lines load while the checksum runs.
            crate::prefetch::prefetch(dst);
            let (payload, intact) = self.check(payload);
            let payload = if intact {
                payload
            } else {
                Box::pin(self.resend_until_intact(from, tag, payload)).await?
            };
            assert_eq!(
                payload.data.len(),
                dst.len(),
                "a peer sent a span of another length"
            );
            match merge {
                Merge::Add => self.add(dst, &payload.data),
                Merge::Copy => dst.copy_from_slice(&payload.data),
            }
            Ok(())
        }
    }
}

/// What a receive does with the payload.
#[derive(Clone, Copy)]
enum Merge {
    Add,
    Copy,
}
