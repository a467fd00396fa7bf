//! One rank's training over a layout: the passes of its stage's schedule, with activations and
//! their gradients sent stage to stage, the TP all-reduces of each layer, and the gradient of
//! its shard reduced over the shard's DP replicas. With a checkpoint policy, each rank
//! checkpoints the part of its shard it updates (its DP group's reduce-scatter layout) through
//! the plain job's `Checkpointer`, and restores it after a restart.
//!
//! The steps a layout rank spends most of its polls in (the passes, each forward and
//! backward, the step around them) are plain functions that return an `async move` block, as
//! the collectives' are and for the same reason (see the note in `collectives`): an `async fn`
//! keeps its arguments twice, and every byte of a rank's future is loaded on each poll.
#![allow(clippy::manual_async_fn)]

use std::future::Future;

use super::traffic::{Counting, TrafficByKind};
use super::{LayoutJobConfig, LayoutOutcome, StageCosts, TimeSplit};
use crate::backend::{Backend, CommError, Event, Payload, Tag, Work, WorkKind};
use crate::checkpoint::{Checkpointer, ShardScope, Votes, VOTE_COUNT};
use crate::collectives::{Algo, Collective, Op, MAX_RESENDS};
use crate::digest::params_digest;
use crate::group::Group;
use crate::integrity;
use crate::job::{JobConfig, JobOutcome};
use crate::kernels;
use crate::layout::{Coords, DpSharding};
use crate::mlp::{self, ShardShape};
use crate::op_ids::OpSpace;
use crate::pipeline::{self, Pass};

/// Op numbers inside a step (`OpSpace::Layout`): the DP collectives first, then two
/// point-to-point messages per micro-batch (activations forward, their gradient back), then
/// two TP all-reduces per micro-batch and proxy layer.
const OP_GATHER_WEIGHTS: u64 = 0;
const OP_GRADIENT: u64 = 1;
const OP_GATHER_UPDATED: u64 = 2;
const OP_LOSS: u64 = 3;
/// The checkpoint votes at the boundary before step `step` (after `step` completed steps).
const OP_VOTES: u64 = 4;
pub(super) const OP_FIRST_MESSAGE: u64 = 8;

/// A step's working memory for its passes, in three allocations however many micro-batches
/// and layers: at 100,000 ranks a step's stashes, one list per layer of one vector per
/// micro-batch, were the largest part of the heap, and each fresh page of it a fault.
struct PassBuffers {
    /// The weight gradient summed over the micro-batches, then (after the passes) their
    /// summed loss: the buffer the DP reduction sums.
    grads: Vec<f32>,
    /// The micro-batches held between their forward and their backward: micro-batch `mb` in
    /// slot `mb % slots` (the ones held are consecutive, `pipeline::max_in_flight`). A slot
    /// holds each local layer's input, then each local layer's pre-activations, then on the
    /// last stage the loss's gradient at the output and the micro-batch's loss.
    stash: Vec<f32>,
    slots: usize,
    /// The partial gradient of a layer's input, before its TP all-reduce.
    partial: Vec<f32>,
}

/// The parts of a stash slot, in floats: their sizes, and where each lies in the slot.
#[derive(Clone, Copy)]
struct SlotLayout {
    /// The sizes of one layer's input (`batch x width`) and pre-activations (`batch x units`).
    input: usize,
    pre: usize,
    layers: usize,
    /// On the last stage, the output's gradient (`input` floats) and the loss after it.
    last_stage: bool,
}

impl SlotLayout {
    fn floats(&self) -> usize {
        let extra = if self.last_stage { self.input + 1 } else { 0 };
        self.layers * (self.input + self.pre) + extra
    }

    fn input(&self, layer: usize) -> std::ops::Range<usize> {
        layer * self.input..(layer + 1) * self.input
    }

    fn pre(&self, layer: usize) -> std::ops::Range<usize> {
        let start = self.layers * self.input + layer * self.pre;
        start..start + self.pre
    }

    fn output_grad(&self) -> std::ops::Range<usize> {
        let start = self.layers * (self.input + self.pre);
        start..start + self.input
    }
}

impl PassBuffers {
    fn slot(&mut self, layout: SlotLayout, micro_batch: usize) -> &mut [f32] {
        let floats = layout.floats();
        let start = (micro_batch % self.slots) * floats;
        &mut self.stash[start..start + floats]
    }

    /// A backward's view: the micro-batch's stash slot, the gradient and the partial buffer.
    fn parts(
        &mut self,
        layout: SlotLayout,
        micro_batch: usize,
    ) -> (&[f32], &mut [f32], &mut [f32]) {
        let floats = layout.floats();
        let start = (micro_batch % self.slots) * floats;
        let slot = &self.stash[start..start + floats];
        (slot, &mut self.grads, &mut self.partial)
    }
}

/// One rank's part of a layout job.
pub struct LayoutTrainer {
    pub config: JobConfig,
    job: LayoutJobConfig,
    rank: usize,
    coords: Coords,
    shape: ShardShape,
    costs: StageCosts,
    params: Vec<f32>,
    pub step: u64,
    high_water_step: u64,
    restarts: u64,
    recomputed_steps: u64,
    last_loss: f32,
    first_loss: f32,
    losses: Vec<f32>,
    time: TimeSplit,
    /// What this rank sent, by kind, as of the last outcome.
    traffic: TrafficByKind,
    /// Boxed: every rank's trainer holds one, and a job without checkpoints need not grow by
    /// a checkpointer's size at 100,000 ranks.
    checkpointer: Option<Box<Checkpointer>>,
}

impl LayoutTrainer {
    pub fn new(config: JobConfig, rank: usize) -> LayoutTrainer {
        let job = config.layout.clone().expect("a layout job has a layout");
        let coords = job.layout.coords(rank);
        let shape = ShardShape {
            width: job.proxy_width,
            layers: job.proxy_layer_range(coords.stage),
            tp_rank: coords.tp_rank,
            tp: job.layout.tp,
        };
        let params = shape.initial_params(config.data_seed);
        let mut trainer = LayoutTrainer {
            costs: job.stage_costs(coords.stage),
            config,
            job: *job,
            rank,
            coords,
            shape,
            params,
            step: 0,
            high_water_step: 0,
            restarts: 0,
            recomputed_steps: 0,
            last_loss: f32::NAN,
            first_loss: f32::NAN,
            losses: Vec::new(),
            time: TimeSplit::default(),
            traffic: TrafficByKind::default(),
            checkpointer: None,
        };
        trainer.checkpointer = trainer.new_checkpointer();
        trainer
    }

    /// The job's checkpointer, its shards cut over this rank's DP group as the gradient's
    /// reduce-scatter cuts it: under a sharded optimizer or sharded parameters a shard is
    /// exactly the part this rank updates, and each shard stands for its share of the shard's
    /// modelled training state.
    fn new_checkpointer(&self) -> Option<Box<Checkpointer>> {
        let policy = self.config.checkpoint.clone()?;
        let job = &self.job;
        let model_params: f64 = (0..job.layout.pp)
            .map(|stage| job.stage_costs(stage).shard_params * job.layout.tp as f64)
            .sum();
        let share = self.costs.shard_params / model_params;
        let scope = ShardScope {
            group: job.layout.dp_group(self.rank),
            split_elems: self.params.len() + 1,
            modelled_state_bytes: (policy.modelled_state_bytes as f64 * share).round() as u64,
            gather_on_restore: job.dp_sharding != DpSharding::Full,
        };
        let collective = self.collective_for(&scope.group, job.layout.world_size());
        Some(Box::new(
            Checkpointer::new(policy, collective).with_scope(scope),
        ))
    }

    /// The rank's checkpointer; `None` without a checkpoint policy.
    pub fn checkpointer(&self) -> Option<&Checkpointer> {
        self.checkpointer.as_deref()
    }

    /// After a restart: the newest checkpoint that verifies, or without one the initial
    /// weights at step 0. Under sharded parameters each rank restores only its own part; the
    /// next step's gather brings in the rest.
    async fn restore<B: Backend>(&mut self, backend: &B, generation: u64) -> Result<(), CommError> {
        self.params = self.shape.initial_params(self.config.data_seed);
        self.step = 0;
        if let Some(checkpointer) = &mut self.checkpointer {
            let (params, step) = (&mut self.params, &mut self.step);
            (checkpointer.restore_after_restart(backend, generation, params, step)).await?;
        }
        Ok(())
    }

    /// At a step boundary: the checkpoint votes summed over the world when the checkpointer
    /// needs them (no step of a layout reduces over the whole world to carry them), then the
    /// plain job's commit, abandon or snapshot.
    async fn checkpoint_boundary<B: Backend>(&mut self, backend: &B) -> Result<(), CommError> {
        let op_id = self.op_id(OP_VOTES);
        let Some(checkpointer) = &mut self.checkpointer else {
            return Ok(());
        };
        let mut votes = [0.0f32; VOTE_COUNT];
        if checkpointer.needs_votes() {
            checkpointer.votes(backend).write(&mut votes);
            let (world, control) = (backend.placement().world(), checkpointer.collective);
            let bytes = 4 * VOTE_COUNT as u64;
            (control.for_control())
                .run(backend, &world, Op::AllReduce, op_id, &mut votes, bytes)
                .await?;
        }
        (checkpointer.at_step_boundary(backend, Votes::read(&votes), self.step, &self.params)).await
    }

    fn op_id(&self, op: u64) -> u64 {
        OpSpace::Layout {
            step: self.step,
            op,
        }
        .op_id()
    }

    fn message_tag(&self, micro_batch: usize, backward: bool) -> Tag {
        let op = OP_FIRST_MESSAGE + 2 * micro_batch as u64 + u64::from(backward);
        Tag::new(self.op_id(op), 0, 0)
    }

    fn tp_op_id(&self, micro_batch: usize, local_layer: usize, backward: bool) -> u64 {
        let m = self.job.micro_batches as u64;
        let layer = (self.shape.layers.start + local_layer) as u64;
        let nth = micro_batch as u64 * self.job.proxy_layers as u64 + layer;
        self.op_id(OP_FIRST_MESSAGE + 2 * m + 2 * nth + u64::from(backward))
    }

    /// The job's algorithm over `group`; the hierarchical one spans the world only, so over a
    /// smaller group its algorithm across nodes runs instead.
    fn collective_for(&self, group: &Group, world_size: usize) -> Collective {
        let collective = self.config.collective;
        if collective.algo == Algo::Hierarchical && !group.is_world_with_holes(world_size) {
            return Collective {
                algo: collective.inter_node_algo,
                ..collective
            };
        }
        collective
    }

    /// The rank holding the same TP and DP slot on `stage`.
    fn stage_peer(&self, stage: usize) -> usize {
        self.job.layout.rank_of(Coords {
            stage,
            ..self.coords
        })
    }

    fn payload(&self, data: Vec<f32>, modelled_bytes: u64) -> Payload {
        let mut payload = Payload::new(data, modelled_bytes);
        if self.config.collective.payload_checksums {
            payload.checksum = Some(integrity::checksum(&payload.data));
        }
        payload
    }

    /// Charges `flops` of a pass's compute, counting its time.
    async fn compute<B: Backend>(&mut self, backend: &B, flops: f64) -> Result<(), CommError> {
        let began = backend.now_ns();
        let work = Work {
            kind: WorkKind::ForwardBackward,
            flops,
        };
        backend.compute(work).await?;
        let elapsed = backend.now_ns() - began;
        self.time.compute_ns += elapsed;
        self.time.pass_compute_ns += elapsed;
        Ok(())
    }

    /// Sums `data` over this rank's TP group, which has more than one member. The collective's
    /// own future, not one around it: most polls of a layout rank are inside a TP all-reduce,
    /// and the caller times it (see the note in `collectives` on futures).
    fn all_reduce_tp<'a, B: Backend>(
        &self,
        backend: &'a B,
        data: &'a mut [f32],
        op_id: u64,
    ) -> impl Future<Output = Result<(), CommError>> + 'a {
        let group = self.job.layout.tp_group(self.rank);
        let collective = self.collective_for(&group, backend.world_size());
        let bytes = self.costs.tp_all_reduce_bytes;
        collective.run(backend, &group, Op::AllReduce, op_id, data, bytes)
    }

    /// Sends `data` to `to`, counting the time as pipeline traffic.
    async fn send<B: Backend>(
        &mut self,
        backend: &B,
        to: usize,
        tag: Tag,
        data: Vec<f32>,
    ) -> Result<(), CommError> {
        let began = backend.now_ns();
        let payload = self.payload(data, self.costs.p2p_bytes);
        backend.send(to, tag, payload).await?;
        self.time.pp_ns += backend.now_ns() - began;
        Ok(())
    }

    /// Receives the message `from` sent with `tag`; with payload checksums on, asks for it
    /// again while it arrives corrupted, at most `MAX_RESENDS` times.
    async fn recv<B: Backend>(
        &mut self,
        backend: &B,
        from: usize,
        tag: Tag,
    ) -> Result<Vec<f32>, CommError> {
        let began = backend.now_ns();
        let mut payload = backend.recv(from, tag).await?;
        let mut resends = 0;
        while self.config.collective.payload_checksums
            && payload.checksum != Some(integrity::checksum(&payload.data))
        {
            backend.emit(Event::ChecksumMismatch { peer: from, tag });
            resends += 1;
            if resends > MAX_RESENDS {
                return Err(CommError::CorruptPayload { peer: from });
            }
            payload = backend.recv_resend(from, tag).await?;
        }
        self.time.pp_ns += backend.now_ns() - began;
        Ok(payload.data)
    }

    /// The first sample of `micro_batch` in the step's global batch.
    fn first_sample(&self, micro_batch: usize) -> usize {
        let replica_first = self.coords.dp_rank * self.job.micro_batches;
        (replica_first + micro_batch) * self.job.model.micro_batch_size
    }

    fn is_last_stage(&self) -> bool {
        self.coords.stage + 1 == self.job.layout.pp
    }

    /// The inputs of `micro_batch`'s samples: the first stage's input, the last stage's target.
    fn inputs(&self, micro_batch: usize) -> Vec<f32> {
        let (width, batch) = (self.shape.width, self.job.model.micro_batch_size);
        let (seed, first) = (self.config.data_seed, self.first_sample(micro_batch));
        mlp::inputs(seed, self.step, first, batch, width)
    }

    fn layer_weights(&self, local: usize) -> &[f32] {
        let per_layer = self.shape.layer_params();
        &self.params[local * per_layer..(local + 1) * per_layer]
    }

    fn slot_layout(&self) -> SlotLayout {
        let batch = self.job.model.micro_batch_size;
        SlotLayout {
            input: batch * self.shape.width,
            pre: batch * self.shape.units().len(),
            layers: self.shape.layers.len(),
            last_stage: self.is_last_stage(),
        }
    }

    /// The buffers of one step's passes, zeroed.
    fn pass_buffers(&self) -> PassBuffers {
        let job = &self.job;
        let (stage, pp, m) = (self.coords.stage, job.layout.pp, job.micro_batches);
        let slots = pipeline::max_in_flight(job.schedule, stage, pp, m);
        let layout = self.slot_layout();
        PassBuffers {
            grads: vec![0.0; self.params.len() + 1],
            stash: vec![0.0; slots * layout.floats()],
            slots,
            partial: vec![0.0; layout.input],
        }
    }

    /// Layer `local`'s forward of a micro-batch on `h`, its partial output in `out`, its input
    /// and pre-activations stashed. A plain function, so that nothing it works out is kept in
    /// the future across the waits that follow.
    fn layer_forward<B: Backend>(
        &self,
        backend: &B,
        buffers: &mut PassBuffers,
        (micro_batch, local): (usize, usize),
        h: &[f32],
        out: &mut [f32],
    ) {
        let layout = self.slot_layout();
        let slot = buffers.slot(layout, micro_batch);
        slot[layout.input(local)].copy_from_slice(h);
        let pre = &mut slot[layout.pre(local)];
        pre.fill(0.0);
        out.fill(0.0);
        backend.layer_forward(self.layer_weights(local), self.shape.width, h, pre, out);
    }

    /// Layer `local`'s backward of a micro-batch from the gradient `g` at its output: its
    /// weights' gradient added in, the partial gradient of its input in the buffers' `partial`.
    fn layer_backward<B: Backend>(
        &self,
        backend: &B,
        buffers: &mut PassBuffers,
        (micro_batch, local): (usize, usize),
        g: &[f32],
    ) {
        let (layout, per_layer) = (self.slot_layout(), self.shape.layer_params());
        let span = local * per_layer..(local + 1) * per_layer;
        let (slot, grads, partial) = buffers.parts(layout, micro_batch);
        let saved = (&slot[layout.input(local)], &slot[layout.pre(local)], g);
        partial.fill(0.0);
        let weights = &self.params[span.clone()];
        backend.layer_backward(weights, self.shape.width, saved, &mut grads[span], partial);
    }

    /// The forward pass of `micro_batch` through this rank's layers; each layer's input and
    /// pre-activations go to the micro-batch's stash slot, and on the last stage the loss and
    /// its gradient at the output.
    ///
    /// A function that returns an `async move` block, not an `async fn`, so that the future
    /// holds its arguments once (see the note in `collectives`).
    fn forward<'a, B: Backend>(
        &'a mut self,
        backend: &'a B,
        micro_batch: usize,
        buffers: &'a mut PassBuffers,
    ) -> impl Future<Output = Result<(), CommError>> + 'a {
        async move {
            let mut h = match self.coords.stage {
                0 => self.inputs(micro_batch),
                stage => {
                    let tag = self.message_tag(micro_batch, false);
                    self.recv(backend, self.stage_peer(stage - 1), tag).await?
                }
            };
            // The layer's output; after each layer, the next one's (the old input, stashed).
            let mut out = vec![0.0f32; h.len()];
            for local in 0..self.shape.layers.len() {
                self.layer_forward(backend, buffers, (micro_batch, local), &h, &mut out);
                self.compute(backend, self.costs.forward_flops_per_proxy_layer)
                    .await?;
                if self.job.layout.tp > 1 {
                    let (began, op_id) =
                        (backend.now_ns(), self.tp_op_id(micro_batch, local, false));
                    self.all_reduce_tp(backend, &mut out, op_id).await?;
                    self.time.tp_ns += backend.now_ns() - began;
                }
                kernels::add_assign(&mut out, &h);
                std::mem::swap(&mut h, &mut out);
            }
            let layout = self.slot_layout();
            if layout.last_stage {
                let x = self.inputs(micro_batch);
                let (width, global_batch) = (self.shape.width, self.job.global_batch());
                let (loss, output_grad) = mlp::loss_and_output_grad(&h, &x, width, global_batch);
                let slot = buffers.slot(layout, micro_batch);
                slot[layout.output_grad()].copy_from_slice(&output_grad);
                slot[layout.output_grad().end] = loss;
            } else {
                let next = self.stage_peer(self.coords.stage + 1);
                let tag = self.message_tag(micro_batch, false);
                self.send(backend, next, tag, h).await?;
            }
            Ok(())
        }
    }

    /// The gradient at `micro_batch`'s output and its loss: on the last stage from its stash
    /// slot, elsewhere from the next stage's message (the loss travels last).
    async fn output_grad<B: Backend>(
        &mut self,
        backend: &B,
        micro_batch: usize,
        buffers: &mut PassBuffers,
    ) -> Result<(Vec<f32>, f32), CommError> {
        let layout = self.slot_layout();
        if layout.last_stage {
            let slot = buffers.slot(layout, micro_batch);
            // Room for the loss, which travels back with it.
            let mut g = Vec::with_capacity(layout.input + 1);
            g.extend_from_slice(&slot[layout.output_grad()]);
            return Ok((g, slot[layout.output_grad().end]));
        }
        let next = self.stage_peer(self.coords.stage + 1);
        let tag = self.message_tag(micro_batch, true);
        let mut data = self.recv(backend, next, tag).await?;
        let loss = data.pop().expect("the loss travels last");
        Ok((data, loss))
    }

    /// The backward pass of `micro_batch`: adds this rank's weight gradient into the buffers'
    /// and returns the micro-batch's loss, which travels back with the activations' gradient.
    /// A function that returns an `async move` block, as `forward`.
    fn backward<'a, B: Backend>(
        &'a mut self,
        backend: &'a B,
        micro_batch: usize,
        buffers: &'a mut PassBuffers,
    ) -> impl Future<Output = Result<f32, CommError>> + 'a {
        async move {
            let (mut g, loss) = self.output_grad(backend, micro_batch, buffers).await?;
            for local in (0..self.shape.layers.len()).rev() {
                self.layer_backward(backend, buffers, (micro_batch, local), &g);
                self.compute(backend, 2.0 * self.costs.forward_flops_per_proxy_layer)
                    .await?;
                if self.job.layout.tp > 1 {
                    let (began, op_id) =
                        (backend.now_ns(), self.tp_op_id(micro_batch, local, true));
                    (self.all_reduce_tp(backend, &mut buffers.partial, op_id)).await?;
                    self.time.tp_ns += backend.now_ns() - began;
                }
                kernels::add_assign(&mut g, &buffers.partial);
            }
            if self.coords.stage > 0 {
                g.push(loss);
                let (previous, tag) = (self.coords.stage - 1, self.message_tag(micro_batch, true));
                self.send(backend, self.stage_peer(previous), tag, g)
                    .await?;
            }
            Ok(loss)
        }
    }

    /// Pass `index` of this stage's schedule.
    fn pass(&self, index: usize) -> Pass {
        let job = &self.job;
        let (stage, pp, m) = (self.coords.stage, job.layout.pp, job.micro_batches);
        pipeline::pass(job.schedule, stage, pp, m, index)
    }

    /// Every pass of this stage's schedule; the summed gradient of the rank's micro-batches
    /// (its loss last) for the DP reduction. A function that returns an `async move` block,
    /// as `forward`.
    fn passes<'a, B: Backend>(
        &'a mut self,
        backend: &'a B,
    ) -> impl Future<Output = Result<Vec<f32>, CommError>> + 'a {
        let mut buffers = self.pass_buffers();
        async move {
            let began = backend.now_ns();
            let compute_before = self.time.pass_compute_ns;
            let mut loss_sum = 0.0f32;
            for index in 0..2 * self.job.micro_batches {
                match self.pass(index) {
                    Pass::Forward(mb) => self.forward(backend, mb, &mut buffers).await?,
                    Pass::Backward(mb) => {
                        loss_sum += self.backward(backend, mb, &mut buffers).await?;
                    }
                }
            }
            self.time.pipeline_ns += backend.now_ns() - began;
            let compute_ns = self.time.pass_compute_ns - compute_before;
            backend.emit(Event::ComputeTimed {
                step: self.step,
                compute_ns,
            });
            let mut grads = buffers.grads;
            *grads.last_mut().expect("the loss's place") = loss_sum;
            Ok(grads)
        }
    }

    /// The ranks that hold this shard, and the algorithm over them.
    fn dp_collective<B: Backend>(&self, backend: &B) -> (Group, Collective) {
        let group = self.job.layout.dp_group(self.rank);
        let collective = self.collective_for(&group, backend.world_size());
        (group, collective)
    }

    /// The modelled bytes of this shard's gradient (and, gathered, of its weights).
    fn shard_bytes(&self) -> u64 {
        (self.costs.shard_params * self.job.grad_bytes_per_param).round() as u64
    }

    /// Under full sharding, before the forward: every replica's own part of the weights,
    /// gathered. Also at the end of training, so that every replica holds the whole shard.
    async fn gather_weights<B: Backend>(&mut self, backend: &B, op: u64) -> Result<(), CommError> {
        if self.job.dp_sharding != DpSharding::Full || self.job.layout.dp == 1 {
            return Ok(());
        }
        let began = backend.now_ns();
        let (group, collective) = self.dp_collective(backend);
        let mut buffer = Vec::with_capacity(self.params.len() + 1);
        buffer.extend_from_slice(&self.params);
        buffer.push(0.0);
        let (op_id, bytes) = (self.op_id(op), self.shard_bytes());
        (collective.run(backend, &group, Op::AllGather, op_id, &mut buffer, bytes)).await?;
        buffer.pop();
        self.params = buffer;
        self.time.dp_ns += backend.now_ns() - began;
        Ok(())
    }

    /// The step's summed gradient `buffer` (its loss last) reduced over the shard's replicas
    /// and applied: an all-reduce, or under sharding a reduce-scatter, each replica's update
    /// of its own part and (for the optimizer's sharding) an all-gather. Returns the loss.
    async fn reduce_and_update<B: Backend>(
        &mut self,
        backend: &B,
        mut buffer: Vec<f32>,
    ) -> Result<f32, CommError> {
        let (n, lr) = (self.params.len(), self.config.learning_rate);
        let began = backend.now_ns();
        let (group, collective) = self.dp_collective(backend);
        let (op_id, bytes) = (self.op_id(OP_GRADIENT), self.shard_bytes());
        let dp = self.job.layout.dp;
        let loss = if dp == 1 || self.job.dp_sharding == DpSharding::None {
            if dp > 1 {
                (collective.run(backend, &group, Op::AllReduce, op_id, &mut buffer, bytes)).await?;
            }
            backend.sgd_update(&mut self.params, &buffer[..n], lr);
            buffer[n]
        } else {
            let mut loss = [buffer[n]];
            (collective.run(
                backend,
                &group,
                Op::ReduceScatter,
                op_id,
                &mut buffer,
                bytes,
            ))
            .await?;
            let member = group.index_of(self.rank).expect("a member of its DP group");
            let placement = backend.placement();
            // The parameters and the loss: made with room for the loss, as pushing it onto the
            // parameters would reallocate them at twice their size for the rest of the run.
            let mut updated = Vec::with_capacity(n + 1);
            updated.extend_from_slice(&self.params);
            updated.push(buffer[n]);
            for span in collective.owned_spans(&placement, &group, member, n + 1, bytes) {
                let elems = span.clipped(n).elems();
                backend.sgd_update(&mut updated[elems.clone()], &buffer[elems], lr);
            }
            if self.job.dp_sharding == DpSharding::Optimizer {
                let op_id = self.op_id(OP_GATHER_UPDATED);
                (collective.run(backend, &group, Op::AllGather, op_id, &mut updated, bytes))
                    .await?;
                loss[0] = updated[n];
            } else {
                // Full sharding: the parts this replica does not own stay stale until the
                // next step's gather; the loss is summed on its own.
                let (op_id, control) = (self.op_id(OP_LOSS), collective.for_control());
                (control.run(backend, &group, Op::AllReduce, op_id, &mut loss, 4)).await?;
            }
            updated.pop();
            self.params = updated;
            loss[0]
        };
        self.time.dp_ns += backend.now_ns() - began;
        Ok(loss)
    }

    /// One step over the layout: the weights gathered (under full sharding), the passes of
    /// the schedule, the DP reduction and update, the optimizer's modelled compute. Returns
    /// the step's global mean loss.
    pub fn train_step<'a, B: Backend>(
        &'a mut self,
        backend: &'a B,
    ) -> impl Future<Output = Result<f32, CommError>> + 'a {
        async move {
            let step = self.step;
            backend.emit(Event::StepBegin { step });
            self.gather_weights(backend, OP_GATHER_WEIGHTS).await?;
            let buffer = self.passes(backend).await?;
            let loss = self.reduce_and_update(backend, buffer).await?;
            let sharded = self.job.dp_sharding != DpSharding::None;
            let replicas = if sharded { self.job.layout.dp } else { 1 } as f64;
            let flops = self.job.optimizer_flops_per_param * self.costs.shard_params / replicas;
            let began = backend.now_ns();
            let work = Work {
                kind: WorkKind::Optimizer,
                flops,
            };
            backend.compute(work).await?;
            self.time.compute_ns += backend.now_ns() - began;
            backend.emit(Event::StepEnd { step, loss });
            self.losses.truncate(step as usize);
            self.losses.push(loss);
            crate::job::count_completed_step(
                &mut self.step,
                &mut self.high_water_step,
                &mut self.recomputed_steps,
            );
            self.last_loss = loss;
            if step == 0 {
                self.first_loss = loss;
            }
            Ok(loss)
        }
    }

    pub fn outcome(&self) -> JobOutcome {
        JobOutcome {
            steps_completed: self.step,
            final_loss: self.last_loss,
            param_digest: params_digest(&self.params),
            restarts: self.restarts,
            recomputed_steps: self.recomputed_steps,
            first_loss: self.first_loss,
            layout: Some(Box::new(LayoutOutcome {
                shard: self.job.layout.shard_of(self.rank),
                dp_rank: self.coords.dp_rank,
                losses: self.losses.clone(),
                time: self.time,
                traffic: self.traffic,
            })),
        }
    }
}

/// Trains a layout job for `config.steps` steps on this rank, surviving failures as
/// `job::run` does: the rank reports, waits for the restart, and restores the newest verified
/// checkpoint (or, without one, starts over from the initial weights). The checkpoint's votes
/// and restores go through the rank's own backend: they are control traffic, counted in no
/// kind of the layout's.
pub fn run<B: Backend>(backend: &B, config: JobConfig) -> impl Future<Output = JobOutcome> + '_ {
    let mut trainer = Box::new(LayoutTrainer::new(config, backend.rank()));
    let counting = Counting::new(backend, trainer.job.micro_batches);
    async move {
        let (rank_backend, backend) = (backend, &counting);
        let mut resume = None;
        loop {
            let attempt = async {
                if let Some(generation) = resume {
                    // Boxed: it runs only after a restart (see `job::run`).
                    Box::pin(trainer.restore(rank_backend, generation)).await?;
                }
                while trainer.step < trainer.config.steps {
                    trainer.train_step(backend).await?;
                    if trainer.checkpointer.is_some() {
                        // Boxed, so that a job without checkpoints keeps its rank's future
                        // the size it was (every byte of it is loaded on each poll).
                        Box::pin(trainer.checkpoint_boundary(rank_backend)).await?;
                    }
                }
                trainer.gather_weights(backend, OP_GATHER_WEIGHTS).await
            };
            let result = attempt.await;
            trainer.traffic = backend.counts();
            match result {
                Ok(()) => return trainer.outcome(),
                Err(error) => {
                    let order = backend.await_restart(&error).await;
                    if order.job_abandoned {
                        return trainer.outcome();
                    }
                    // Whether or not its memory was lost, a rank's model state comes from the
                    // restore alone; the bookkeeping for the report survives.
                    trainer.restarts += 1;
                    resume = Some(order.generation);
                }
            }
        }
    }
}
