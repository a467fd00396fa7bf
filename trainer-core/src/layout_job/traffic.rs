//! The messages a layout job's rank sends, by kind: TP all-reduces, stage-to-stage (PP)
//! messages, and the DP collectives. The collectives send through the `Backend` they are given,
//! so the rank hands them [`Counting`], a backend that counts each send by its op id's kind and
//! otherwise is the rank's own backend.

use std::cell::Cell;
use std::future::Future;

use super::trainer::OP_FIRST_MESSAGE;
use crate::backend::{
    Backend, Blob, CommError, Event, FaultPoint, Payload, RestartOrder, StorageError, Tag, Tier,
    Work, WriteStatus, WriteTicket,
};
use crate::group::{Group, Placement};
use crate::op_ids::OpSpace;

/// Messages sent and the modelled bytes they carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub messages: u64,
    pub modelled_bytes: u64,
}

impl Traffic {
    pub fn add(&mut self, other: Traffic) {
        self.messages += other.messages;
        self.modelled_bytes += other.modelled_bytes;
    }
}

/// A layout job's traffic by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficByKind {
    pub tp: Traffic,
    pub pp: Traffic,
    pub dp: Traffic,
}

impl TrafficByKind {
    pub fn add(&mut self, other: &TrafficByKind) {
        self.tp.add(other.tp);
        self.pp.add(other.pp);
        self.dp.add(other.dp);
    }
}

/// The rank's backend, counting what it sends.
pub struct Counting<'a, B> {
    inner: &'a B,
    /// Ops of a step from which the TP all-reduces are numbered.
    first_tp_op: u64,
    counts: Cell<TrafficByKind>,
}

impl<'a, B: Backend> Counting<'a, B> {
    pub fn new(inner: &'a B, micro_batches: usize) -> Counting<'a, B> {
        Counting {
            inner,
            first_tp_op: OP_FIRST_MESSAGE + 2 * micro_batches as u64,
            counts: Cell::new(TrafficByKind::default()),
        }
    }

    pub fn counts(&self) -> TrafficByKind {
        self.counts.get()
    }

    fn count(&self, tag: Tag, modelled_bytes: u64) {
        let OpSpace::Layout { op, .. } = OpSpace::of(tag.op_id) else {
            debug_assert!(
                false,
                "a layout job's message outside its op space: {tag:?}"
            );
            return;
        };
        let mut counts = self.counts.get();
        let kind = match op {
            op if op < OP_FIRST_MESSAGE => &mut counts.dp,
            op if op < self.first_tp_op => &mut counts.pp,
            _ => &mut counts.tp,
        };
        kind.add(Traffic {
            messages: 1,
            modelled_bytes,
        });
        self.counts.set(counts);
    }
}

impl<B: Backend> Backend for Counting<'_, B> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn placement(&self) -> Placement {
        self.inner.placement()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn replica_group(&self) -> Group {
        self.inner.replica_group()
    }
    fn rejoined_nodes(&self) -> Vec<usize> {
        self.inner.rejoined_nodes()
    }
    fn send(
        &self,
        to: usize,
        tag: Tag,
        payload: Payload,
    ) -> impl Future<Output = Result<(), CommError>> {
        self.count(tag, payload.modelled_bytes);
        self.inner.send(to, tag, payload)
    }
    fn recv(&self, from: usize, tag: Tag) -> impl Future<Output = Result<Payload, CommError>> {
        self.inner.recv(from, tag)
    }
    fn now_ns(&self) -> u64 {
        self.inner.now_ns()
    }
    fn sleep(&self, duration_ns: u64) -> impl Future<Output = Result<(), CommError>> {
        self.inner.sleep(duration_ns)
    }
    fn compute(&self, work: Work) -> impl Future<Output = Result<(), CommError>> {
        self.inner.compute(work)
    }
    fn emit(&self, event: Event) {
        self.inner.emit(event)
    }
    fn store_put(
        &self,
        tier: Tier,
        name: &str,
        blob: Blob,
    ) -> impl Future<Output = Result<(), StorageError>> {
        self.inner.store_put(tier, name, blob)
    }
    fn store_put_async(&self, tier: Tier, name: &str, blob: Blob) -> WriteTicket {
        self.inner.store_put_async(tier, name, blob)
    }
    fn store_poll(&self, ticket: WriteTicket) -> WriteStatus {
        self.inner.store_poll(ticket)
    }
    fn store_get(
        &self,
        tier: Tier,
        name: &str,
    ) -> impl Future<Output = Result<Blob, StorageError>> {
        self.inner.store_get(tier, name)
    }
    fn store_list(&self, tier: Tier, prefix: &str) -> Vec<String> {
        self.inner.store_list(tier, prefix)
    }
    fn store_delete(&self, tier: Tier, name: &str) {
        self.inner.store_delete(tier, name)
    }
    fn await_restart(&self, error: &CommError) -> impl Future<Output = RestartOrder> {
        self.inner.await_restart(error)
    }
    fn recv_resend(
        &self,
        from: usize,
        tag: Tag,
    ) -> impl Future<Output = Result<Payload, CommError>> {
        self.inner.recv_resend(from, tag)
    }
    fn fault_point(&self, point: FaultPoint, data: &mut [f32]) {
        self.inner.fault_point(point, data)
    }
    fn planted_bug(&self) -> Option<crate::PlantedBug> {
        self.inner.planted_bug()
    }
    fn add_assign(&self, acc: &mut [f32], src: &[f32]) {
        self.inner.add_assign(acc, src)
    }
    fn sgd_update(&self, params: &mut [f32], grad: &[f32], lr: f32) {
        self.inner.sgd_update(params, grad, lr)
    }
    fn layer_forward(
        &self,
        weights: &[f32],
        width: usize,
        h: &[f32],
        pre: &mut [f32],
        partial: &mut [f32],
    ) {
        self.inner.layer_forward(weights, width, h, pre, partial)
    }
    fn layer_backward(
        &self,
        weights: &[f32],
        width: usize,
        saved: (&[f32], &[f32], &[f32]),
        grad: &mut [f32],
        partial_dh: &mut [f32],
    ) {
        self.inner
            .layer_backward(weights, width, saved, grad, partial_dh)
    }
}
