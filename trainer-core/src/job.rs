//! The data-parallel training job: every rank computes the gradient of its own batch, the
//! gradients (and the loss) are summed with an all-reduce, and every rank applies the same SGD
//! update, so all replicas hold the same parameters bit for bit.
//!
//! Under the per-replica recovery policy the replicas are the members of
//! [`Backend::replica_group`], which may leave out dropped nodes: the sum runs over them and is
//! divided by their count, so a step taken with fewer replicas averages fewer samples.

use std::future::Future;

use crate::backend::{Backend, CommError, Event, FaultPoint, Work, WorkKind};
use crate::checkpoint::{self, CheckpointPolicy, Checkpointer, Votes, VOTE_COUNT};
use crate::collectives::{Collective, Op};
use crate::digest::params_digest;
use crate::group::Group;
use crate::integrity::{self, Check, DetectionPolicy, Guard, HealthCounters};
use crate::kernels;
use crate::model;
use crate::op_ids::OpSpace;

/// Op ids of a step's health-check collectives (see `op_ids`).
fn health_op_id(step: u64, check: u64) -> u64 {
    OpSpace::Health { step, check }.op_id()
}

#[derive(Clone, Debug, PartialEq)]
pub struct JobConfig {
    pub steps: u64,
    pub collective: Collective,
    /// Real parameters per replica; the all-reduced buffer carries one more element, the loss.
    pub proxy_elems: usize,
    pub batch_per_rank: usize,
    pub learning_rate: f32,
    pub data_seed: u64,
    /// Bytes of the gradient of the full-size model this job stands for.
    pub modelled_grad_bytes: u64,
    /// Floating-point operations of one rank's forward and backward pass on the full model.
    pub modelled_step_flops: f64,
    /// Floating-point operations of one rank's optimizer update on the full model.
    pub modelled_optimizer_flops: f64,
    pub checkpoint: Option<CheckpointPolicy>,
    /// Checks against silent data corruption.
    pub detection: DetectionPolicy,
    /// Train over a tensor, pipeline and data-parallel layout (`layout_job`) instead of plain
    /// data parallelism over a linear model. Boxed: every rank's trainer holds a config, and
    /// the plain job's need not grow by a layout's.
    pub layout: Option<Box<crate::layout_job::LayoutJobConfig>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct JobOutcome {
    pub steps_completed: u64,
    /// Mean loss over all ranks at the last completed step, before its update.
    pub final_loss: f32,
    pub param_digest: u64,
    /// Times the job restarted after a failure.
    pub restarts: u64,
    /// Steps trained again after restores (work lost since the last checkpoint).
    pub recomputed_steps: u64,
    /// Mean loss at step 0, for seeing that training converges.
    pub first_loss: f32,
    /// A layout job's shard, losses and time split; `None` without a layout.
    pub layout: Option<Box<crate::layout_job::LayoutOutcome>>,
}

/// One replica's training state.
pub struct Trainer {
    pub config: JobConfig,
    pub params: Vec<f32>,
    pub step: u64,
    pub last_loss: f32,
    pub checkpointer: Option<Checkpointer>,
    /// The furthest step this rank has ever completed; steps below it done again are recompute.
    pub high_water_step: u64,
    pub restarts: u64,
    pub recomputed_steps: u64,
    pub first_loss: f32,
    grad_guard: Guard,
    loss_guard: Guard,
    /// Completed steps at the last fingerprint that found every replica equal.
    last_clean_step: u64,
    rollbacks: u64,
}

impl Trainer {
    pub fn new(config: JobConfig) -> Trainer {
        let params = vec![0.0; config.proxy_elems];
        let checkpointer = config
            .checkpoint
            .clone()
            .map(|policy| Checkpointer::new(policy, config.collective));
        Trainer {
            config,
            params,
            step: 0,
            last_loss: f32::NAN,
            checkpointer,
            high_water_step: 0,
            restarts: 0,
            recomputed_steps: 0,
            first_loss: f32::NAN,
            grad_guard: Guard::default(),
            loss_guard: Guard::default(),
            last_clean_step: 0,
            rollbacks: 0,
        }
    }

    /// This rank's gradient, loss and checkpoint votes for `step`, summed over the world with
    /// `collective`: one all-reduce carries all three.
    ///
    /// The gradient is computed when this is called; the future holds the buffer and what the
    /// compute and the all-reduce need, not also copies of its arguments as an `async fn`'s
    /// would (see the note in `collectives`).
    #[allow(clippy::too_many_arguments)]
    fn reduce_gradient<'a, B: Backend>(
        &self,
        backend: &'a B,
        group: &'a Group,
        step: u64,
        op_id: u64,
        collective: Collective,
        counters: &'a HealthCounters,
    ) -> impl Future<Output = Result<Vec<f32>, CommError>> + 'a {
        let cfg = &self.config;
        let dim = self.params.len();
        let mut buffer = vec![0.0f32; dim + 1 + VOTE_COUNT];
        let local_loss = model::loss_and_gradient(
            &self.params,
            cfg.data_seed,
            backend.rank(),
            step,
            cfg.batch_per_rank,
            &mut buffer[..dim],
        );
        backend.fault_point(FaultPoint::Gradient { step }, &mut buffer[..dim]);
        buffer[dim] = local_loss;
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.votes(backend).write(&mut buffer[dim + 1..]);
        }
        let work = Work {
            kind: WorkKind::ForwardBackward,
            flops: cfg.modelled_step_flops,
        };
        let bytes = cfg.modelled_grad_bytes;
        async move {
            let compute_began_ns = backend.now_ns();
            backend.compute(work).await?;
            let compute_ns = backend.now_ns() - compute_began_ns;
            backend.emit(Event::ComputeTimed { step, compute_ns });
            collective
                .run_checked(
                    backend,
                    group,
                    Op::AllReduce,
                    op_id,
                    &mut buffer,
                    bytes,
                    counters,
                )
                .await?;
            Ok(buffer)
        }
    }

    /// Going back in time makes the running averages stale; and every rank, including one that
    /// restarts with empty memory, must hold the same ones to reach the same verdicts.
    fn reset_guards(&mut self) {
        self.grad_guard = Guard::default();
        self.loss_guard = Guard::default();
    }

    /// The guard that finds the summed gradient and loss in `buffer` suspect, if one does.
    fn suspect(&self, buffer: &[f32]) -> Option<Check> {
        let detection = &self.config.detection;
        let dim = self.params.len();
        if let Some(factor) = detection.gradient_norm_factor {
            if self
                .grad_guard
                .is_suspect(integrity::norm(&buffer[..dim]), factor)
            {
                return Some(Check::GradientGuard);
            }
        }
        if let Some(factor) = detection.loss_factor {
            if self.loss_guard.is_suspect(buffer[dim] as f64, factor) {
                return Some(Check::LossGuard);
            }
        }
        None
    }

    /// Step `step`'s sum was suspect. Re-runs the step: a clean, different result means the
    /// fault was transient, and the re-run's sum is used. The same result again means a
    /// persistent fault: the step runs once more with every reduction checked against the
    /// host's reference kernel, which names the GPU whose kernel is wrong, and that GPU is
    /// quarantined. `None`: the step's update is skipped.
    async fn resolve_suspect<B: Backend>(
        &self,
        backend: &B,
        group: &Group,
        step: u64,
        first: &[f32],
    ) -> Result<Option<Vec<f32>>, CommError> {
        if !self.config.detection.rerun_suspect_steps {
            return Ok(None);
        }
        let started = backend.now_ns();
        let dim = self.params.len();
        let collective = self.config.collective;
        let counters = HealthCounters::default();
        let op_id = health_op_id(step, 2);
        let rerun = self
            .reduce_gradient(backend, group, step, op_id, collective, &counters)
            .await?;
        let same = first[..=dim]
            .iter()
            .zip(&rerun[..=dim])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        backend.emit(Event::SdcVerdict {
            step,
            persistent: same,
        });
        let mut culprit = None;
        let result = if !same && self.suspect(&rerun).is_none() {
            Some(rerun)
        } else if same {
            culprit = self
                .find_faulty_kernel(backend, group, step, collective, started)
                .await?;
            None
        } else {
            None
        };
        if !same {
            backend.emit(Event::HealthCheckCost {
                step,
                check: Check::Rerun,
                elapsed_ns: backend.now_ns() - started,
            });
        }
        if let Some(rank) = culprit {
            return Err(CommError::Quarantined { rank });
        }
        Ok(result)
    }

    /// A step whose re-run gave the same sum again: re-runs the reductions against the host's
    /// reference kernel, then all-reduces who found a mismatch. The faulty GPU's rank, if one
    /// names itself.
    async fn find_faulty_kernel<B: Backend>(
        &self,
        backend: &B,
        group: &Group,
        step: u64,
        collective: Collective,
        started: u64,
    ) -> Result<Option<usize>, CommError> {
        let checked = Collective {
            verify_reductions: true,
            ..collective
        };
        let counters = HealthCounters::default();
        let op_id = health_op_id(step, 3);
        self.reduce_gradient(backend, group, step, op_id, checked, &counters)
            .await?;
        let faulty = counters.kernel_mismatches.get() > 0;
        // Said before the last all-reduce: once a rank learns the culprit it stops the job,
        // and a rank still inside that all-reduce would never say it.
        backend.emit(Event::HealthCheckCost {
            step,
            check: Check::Rerun,
            elapsed_ns: backend.now_ns() - started,
        });
        let rank = backend.rank() as f32;
        let mut flags = [f32::from(u8::from(faulty)), if faulty { rank } else { 0.0 }];
        collective
            .run(
                backend,
                group,
                Op::AllReduce,
                health_op_id(step, 4),
                &mut flags,
                8,
            )
            .await?;
        // One faulty GPU names itself; several would need the check per rank.
        Ok((flags[0] == 1.0).then_some(flags[1] as usize))
    }

    /// Compares this replica's parameters with rank 0's: a broadcast of rank 0's digest, then
    /// an all-reduce of who differs. Returns true when every replica agrees.
    async fn fingerprint<B: Backend>(
        &mut self,
        backend: &B,
        group: &Group,
    ) -> Result<bool, CommError> {
        let started = backend.now_ns();
        let step = self.step;
        let collective = self.config.collective.for_control();
        let mine = integrity::fingerprint_pieces(params_digest(&self.params));
        let mut root = mine;
        let op_id = health_op_id(step, 0);
        let root_idx = 0;
        collective
            .run(
                backend,
                group,
                Op::Broadcast { root_idx },
                op_id,
                &mut root,
                32,
            )
            .await?;
        let differs = root != mine;
        let rank = backend.rank() as f32;
        let mut flags = [
            f32::from(u8::from(differs)),
            if differs { rank } else { 0.0 },
        ];
        collective
            .run(backend, group, Op::AllReduce, op_id + 1, &mut flags, 8)
            .await?;
        backend.emit(Event::HealthCheckCost {
            step,
            check: Check::Fingerprint,
            elapsed_ns: backend.now_ns() - started,
        });
        if flags[0] > 0.0 {
            let check = Check::Fingerprint;
            backend.emit(Event::SdcSuspect { step, check });
            return Ok(false);
        }
        self.last_clean_step = step;
        Ok(true)
    }

    /// Replicas diverged since the last clean fingerprint, and every replica's updates since
    /// then carry the diverged one's gradient: go back to the newest checkpoint at or before
    /// that fingerprint (or to the start), forgetting newer checkpoints, and train again.
    async fn rollback<B: Backend>(&mut self, backend: &B) -> Result<(), CommError> {
        let from_step = self.step;
        let clean = self.last_clean_step;
        self.rollbacks += 1;
        self.params.fill(0.0);
        self.step = 0;
        self.reset_guards();
        if let Some(checkpointer) = &mut self.checkpointer {
            checkpointer.reset(backend.now_ns());
            checkpoint::forget_after(backend, clean);
            let op_base = OpSpace::Rollback {
                rollbacks: self.rollbacks,
            }
            .op_id();
            let elems = self.params.len();
            if let Some(restored) =
                checkpoint::restore_at_or_before(backend, checkpointer, elems, op_base, clean)
                    .await?
            {
                self.params = restored.params;
                self.step = restored.step;
            }
        }
        self.last_clean_step = self.step;
        backend.emit(Event::SdcRollback {
            from_step,
            to_step: self.step,
        });
        Ok(())
    }

    /// Runs one synchronous data-parallel step and returns the global mean loss.
    pub async fn train_step<B: Backend>(&mut self, backend: &B) -> Result<f32, CommError> {
        let step = self.step;
        backend.emit(Event::StepBegin { step });
        backend.fault_point(FaultPoint::Parameters { step }, &mut self.params);
        let dim = self.params.len();
        let counters = HealthCounters::default();
        let collective = self.config.collective;
        let group = backend.replica_group();
        let op_id = OpSpace::Step { step }.op_id();
        let mut buffer =
            (self.reduce_gradient(backend, &group, step, op_id, collective, &counters)).await?;
        let mut apply = true;
        if let Some(check) = self.suspect(&buffer) {
            backend.emit(Event::SdcSuspect { step, check });
            // Boxed, as is the rollback below: paths that run only after a fault would
            // otherwise set the size of every rank's future, which the simulator loads on
            // every poll.
            let resolving = Box::pin(self.resolve_suspect(backend, &group, step, &buffer));
            match resolving.await? {
                Some(clean) => buffer = clean,
                None => apply = false,
            }
        }
        let votes = Votes::read(&buffer[dim + 1..]);
        if apply {
            self.grad_guard.accept(integrity::norm(&buffer[..dim]));
            self.loss_guard.accept(buffer[dim] as f64);
            kernels::scale(&mut buffer[..dim + 1], 1.0 / group.count() as f32);
            let lr = self.config.learning_rate;
            backend.sgd_update(&mut self.params, &buffer[..dim], lr);
        } else {
            kernels::scale(&mut buffer[dim..dim + 1], 1.0 / group.count() as f32);
        }
        let flops = self.config.modelled_optimizer_flops;
        backend
            .compute(Work {
                kind: WorkKind::Optimizer,
                flops,
            })
            .await?;
        let loss = buffer[dim];
        backend.emit(Event::StepEnd { step, loss });
        count_completed_step(
            &mut self.step,
            &mut self.high_water_step,
            &mut self.recomputed_steps,
        );
        self.last_loss = loss;
        if step == 0 {
            self.first_loss = loss;
        }
        let every = self.config.detection.fingerprint_every_steps;
        let fingerprint_due =
            every > 0 && (self.step % every == 0 || self.step == self.config.steps);
        if fingerprint_due && !self.fingerprint(backend, &group).await? {
            Box::pin(self.rollback(backend)).await?;
            return Ok(loss);
        }
        // With replicas dropped, checkpoints wait for the whole world: every shard of the
        // layout has an owner only then, and a restore expects every shard.
        if group.has_holes() {
            return Ok(loss);
        }
        if let Some(checkpointer) = &mut self.checkpointer {
            checkpointer
                .at_step_boundary(backend, votes, self.step, &self.params)
                .await?;
        }
        Ok(loss)
    }

    /// After a restart: restores the newest verified checkpoint, or starts over from step 0.
    pub async fn restore<B: Backend>(
        &mut self,
        backend: &B,
        generation: u64,
    ) -> Result<(), CommError> {
        self.params.fill(0.0);
        self.step = 0;
        self.last_clean_step = 0;
        self.reset_guards();
        if let Some(checkpointer) = &mut self.checkpointer {
            let (params, step) = (&mut self.params, &mut self.step);
            (checkpointer.restore_after_restart(backend, generation, params, step)).await?;
        }
        // Every rank agrees on what it restored; fingerprints measure from there.
        self.last_clean_step = self.step;
        Ok(())
    }

    /// Per-replica recovery: the members of the replica group agree on one state and go on
    /// without a restore. The state is that of the first member that did not just rejoin
    /// (a rejoined node's ranks start empty), broadcast to every member (parameters, step,
    /// guards, losses), then a barrier. Survivors may stand one step apart when a failure cuts
    /// an all-reduce short (some received the sum, others not); adopting one survivor's state
    /// is valid either way, and the step in flight is redone over the new group.
    pub async fn regroup<B: Backend>(
        &mut self,
        backend: &B,
        generation: u64,
    ) -> Result<(), CommError> {
        let group = backend.replica_group();
        let placement = backend.placement();
        let rejoined = backend.rejoined_nodes();
        let root_idx = (0..group.count())
            .find(|&idx| !rejoined.contains(&placement.node_of(group.member(idx))))
            .expect("the controller re-admits nodes only beside a survivor");
        let mut state = self.state_vector();
        let op_id = OpSpace::Regroup { generation }.op_id();
        self.config
            .collective
            .run(
                backend,
                &group,
                Op::Broadcast { root_idx },
                op_id,
                &mut state,
                self.config.modelled_grad_bytes,
            )
            .await?;
        self.adopt_state_vector(&state);
        // The group resumes together: the root's own broadcast completes when it has sent.
        self.config
            .collective
            .for_control()
            .run(backend, &group, Op::Barrier, op_id + 1, &mut [], 0)
            .await?;
        if let Some(checkpointer) = &mut self.checkpointer {
            // A checkpoint in flight belonged to the old group; the next starts afresh.
            checkpointer.reset(backend.now_ns());
        }
        Ok(())
    }

    /// Parameters, then the step, the last clean fingerprint's step, the losses and the
    /// guards' averages, each as exact bit patterns (a broadcast copies bits).
    fn state_vector(&self) -> Vec<f32> {
        let pieces = |value: u64| {
            [
                f32::from_bits(value as u32),
                f32::from_bits((value >> 32) as u32),
            ]
        };
        let guard = |g: &Guard| {
            let bits = g.average_bits();
            let [lo, hi] = pieces(bits.unwrap_or(0));
            [f32::from(u8::from(bits.is_some())), lo, hi]
        };
        let mut state = self.params.clone();
        state.extend(pieces(self.step));
        state.extend(pieces(self.last_clean_step));
        state.extend([self.last_loss, self.first_loss]);
        state.extend(guard(&self.grad_guard));
        state.extend(guard(&self.loss_guard));
        state
    }

    fn adopt_state_vector(&mut self, state: &[f32]) {
        let dim = self.params.len();
        let value = |at: usize| state[at].to_bits() as u64 | (state[at + 1].to_bits() as u64) << 32;
        let guard = |at: usize| Guard::from_average_bits((state[at] == 1.0).then(|| value(at + 1)));
        self.params.copy_from_slice(&state[..dim]);
        self.step = value(dim);
        self.last_clean_step = value(dim + 2);
        self.last_loss = state[dim + 4];
        self.first_loss = state[dim + 5];
        self.grad_guard = guard(dim + 6);
        self.loss_guard = guard(dim + 9);
    }

    pub fn outcome(&self) -> JobOutcome {
        JobOutcome {
            steps_completed: self.step,
            final_loss: self.last_loss,
            param_digest: params_digest(&self.params),
            restarts: self.restarts,
            recomputed_steps: self.recomputed_steps,
            first_loss: self.first_loss,
            layout: None,
        }
    }
}

/// Counts a completed step: the next step, and whether the step was one done before (a
/// recompute, after going back to a checkpoint or to the start).
pub(crate) fn count_completed_step(
    step: &mut u64,
    high_water_step: &mut u64,
    recomputed: &mut u64,
) {
    *step += 1;
    if *step <= *high_water_step {
        *recomputed += 1;
    }
    *high_water_step = (*high_water_step).max(*step);
}

/// How a rank goes on after a failure.
#[derive(Clone, Copy)]
enum Resume {
    /// The job restarted: restore the newest verified checkpoint.
    Restore { generation: u64 },
    /// Per-replica: the replica group changed; adopt a survivor's state.
    Regroup { generation: u64 },
}

/// Trains for `config.steps` steps, surviving failures: when a step fails, the rank reports
/// to the job controller, waits for the restart, restores the newest verified checkpoint and
/// goes on. A rank whose node died starts from an empty trainer, as a new process would.
///
/// The trainer is built before the future and the future holds it alone, not also the config
/// it was built from, and holds it boxed: at 100,000 ranks every byte of a rank's future is
/// loaded on each poll (see the note in `collectives`), and most polls are inside a collective
/// that never touches the trainer's 368 bytes.
pub fn run<B: Backend>(backend: &B, config: JobConfig) -> impl Future<Output = JobOutcome> + '_ {
    let mut trainer = Box::new(Trainer::new(config));
    async move {
        let mut resume = None;
        loop {
            let attempt = async {
                // Boxed: they run only after a restart, and unboxed the larger of them would
                // set the size of every rank's future for the whole run.
                match resume {
                    Some(Resume::Restore { generation }) => {
                        Box::pin(trainer.restore(backend, generation)).await?
                    }
                    Some(Resume::Regroup { generation }) => {
                        Box::pin(trainer.regroup(backend, generation)).await?
                    }
                    None => {}
                }
                while trainer.step < trainer.config.steps {
                    trainer.train_step(backend).await?;
                }
                Ok::<(), CommError>(())
            };
            match attempt.await {
                Ok(()) => return trainer.outcome(),
                Err(error) => {
                    let order = backend.await_restart(&error).await;
                    if order.job_abandoned {
                        return trainer.outcome();
                    }
                    if order.memory_lost {
                        // Bookkeeping for the report survives; the model state does not.
                        let mut fresh = Trainer::new(trainer.config.clone());
                        fresh.restarts = trainer.restarts;
                        fresh.recomputed_steps = trainer.recomputed_steps;
                        fresh.high_water_step = trainer.high_water_step;
                        fresh.first_loss = trainer.first_loss;
                        *trainer = fresh;
                    }
                    let generation = order.generation;
                    resume = Some(if order.regroup {
                        Resume::Regroup { generation }
                    } else {
                        trainer.restarts += 1;
                        Resume::Restore { generation }
                    });
                }
            }
        }
    }
}
