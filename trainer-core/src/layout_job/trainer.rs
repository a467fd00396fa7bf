//! One rank's training over a layout: the passes of its stage's schedule, with activations and
//! their gradients sent stage to stage, the TP all-reduces of each layer, and the gradient of
//! its shard reduced over the shard's DP replicas. With a checkpoint policy, each rank
//! checkpoints the part of its shard it updates (its DP group's reduce-scatter layout) through
//! the plain job's `Checkpointer`, and restores it after a restart.

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

/// One micro-batch's state between its forward and its backward on this rank.
#[derive(Default)]
struct Stash {
    /// Each local layer's input and pre-activations.
    inputs: Vec<Vec<f32>>,
    pres: Vec<Vec<f32>>,
    /// On the last stage: the loss's gradient at the output, and the micro-batch's loss.
    output_grad: Vec<f32>,
    loss: f32,
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

    /// Sums `data` over this rank's TP group (nothing to do without TP).
    async fn all_reduce_tp<B: Backend>(
        &mut self,
        backend: &B,
        data: &mut [f32],
        op_id: u64,
    ) -> Result<(), CommError> {
        if self.job.layout.tp == 1 {
            return Ok(());
        }
        let began = backend.now_ns();
        let group = self.job.layout.tp_group(self.rank);
        let collective = self.collective_for(&group, backend.world_size());
        let bytes = self.costs.tp_all_reduce_bytes;
        (collective.run(backend, &group, Op::AllReduce, op_id, data, bytes)).await?;
        self.time.tp_ns += backend.now_ns() - began;
        Ok(())
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

    /// The forward pass of `micro_batch` through this rank's layers.
    async fn forward<B: Backend>(
        &mut self,
        backend: &B,
        micro_batch: usize,
    ) -> Result<Stash, CommError> {
        let (width, batch) = (self.shape.width, self.job.model.micro_batch_size);
        let first = self.first_sample(micro_batch);
        let seed = self.config.data_seed;
        let tag = self.message_tag(micro_batch, false);
        let mut h = match self.coords.stage {
            0 => mlp::inputs(seed, self.step, first, batch, width),
            stage => self.recv(backend, self.stage_peer(stage - 1), tag).await?,
        };
        let mut stash = Stash::default();
        let per_layer = self.shape.layer_params();
        for local in 0..self.shape.layers.len() {
            let mut pre = vec![0.0f32; batch * self.shape.units().len()];
            let mut out = vec![0.0f32; batch * width];
            let weights = &self.params[local * per_layer..(local + 1) * per_layer];
            backend.layer_forward(weights, width, &h, &mut pre, &mut out);
            self.compute(backend, self.costs.forward_flops_per_proxy_layer)
                .await?;
            let op_id = self.tp_op_id(micro_batch, local, false);
            self.all_reduce_tp(backend, &mut out, op_id).await?;
            kernels::add_assign(&mut out, &h);
            stash.inputs.push(std::mem::replace(&mut h, out));
            stash.pres.push(pre);
        }
        if self.is_last_stage() {
            let x = mlp::inputs(seed, self.step, first, batch, width);
            let global_batch = self.job.global_batch();
            (stash.loss, stash.output_grad) =
                mlp::loss_and_output_grad(&h, &x, width, global_batch);
        } else {
            self.send(backend, self.stage_peer(self.coords.stage + 1), tag, h)
                .await?;
        }
        Ok(stash)
    }

    /// The backward pass of `micro_batch`: adds this rank's weight gradient into `grads` and
    /// returns the micro-batch's loss, which travels back with the activations' gradient.
    async fn backward<B: Backend>(
        &mut self,
        backend: &B,
        micro_batch: usize,
        stash: Stash,
        grads: &mut [f32],
    ) -> Result<f32, CommError> {
        let width = self.shape.width;
        let tag = self.message_tag(micro_batch, true);
        let (mut g, loss) = if self.is_last_stage() {
            (stash.output_grad, stash.loss)
        } else {
            let next = self.stage_peer(self.coords.stage + 1);
            let mut data = self.recv(backend, next, tag).await?;
            let loss = data.pop().expect("the loss travels last");
            (data, loss)
        };
        let per_layer = self.shape.layer_params();
        for local in (0..self.shape.layers.len()).rev() {
            let mut dh = vec![0.0f32; g.len()];
            let span = local * per_layer..(local + 1) * per_layer;
            let saved = (&stash.inputs[local][..], &stash.pres[local][..], &g[..]);
            let weights = &self.params[span.clone()];
            backend.layer_backward(weights, width, saved, &mut grads[span], &mut dh);
            self.compute(backend, 2.0 * self.costs.forward_flops_per_proxy_layer)
                .await?;
            let op_id = self.tp_op_id(micro_batch, local, true);
            self.all_reduce_tp(backend, &mut dh, op_id).await?;
            kernels::add_assign(&mut g, &dh);
        }
        if self.coords.stage > 0 {
            g.push(loss);
            self.send(backend, self.stage_peer(self.coords.stage - 1), tag, g)
                .await?;
        }
        Ok(loss)
    }

    /// Every pass of this stage's schedule; the summed gradient of the rank's micro-batches
    /// (its loss last) for the DP reduction.
    async fn passes<B: Backend>(&mut self, backend: &B) -> Result<Vec<f32>, CommError> {
        let job = &self.job;
        let order = pipeline::passes(
            job.schedule,
            self.coords.stage,
            job.layout.pp,
            job.micro_batches,
        );
        let mut stashes: Vec<Option<Stash>> = (0..job.micro_batches).map(|_| None).collect();
        let mut grads = vec![0.0f32; self.params.len() + 1];
        let mut loss_sum = 0.0f32;
        let began = backend.now_ns();
        let compute_before = self.time.pass_compute_ns;
        for pass in order {
            match pass {
                Pass::Forward(mb) => stashes[mb] = Some(self.forward(backend, mb).await?),
                Pass::Backward(mb) => {
                    let stash = stashes[mb].take().expect("forward before backward");
                    let n = self.params.len();
                    loss_sum += self.backward(backend, mb, stash, &mut grads[..n]).await?;
                }
            }
        }
        self.time.pipeline_ns += backend.now_ns() - began;
        let compute_ns = self.time.pass_compute_ns - compute_before;
        backend.emit(Event::ComputeTimed {
            step: self.step,
            compute_ns,
        });
        *grads.last_mut().expect("the loss's place") = loss_sum;
        Ok(grads)
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
        let mut buffer = self.params.clone();
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
            let mut updated = std::mem::take(&mut self.params);
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
    pub async fn train_step<B: Backend>(&mut self, backend: &B) -> Result<f32, CommError> {
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
