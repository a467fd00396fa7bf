//! The data-parallel training job: every rank computes the gradient of its own batch, the
//! gradients (and the loss) are summed with an all-reduce, and every rank applies the same SGD
//! update, so all replicas hold the same parameters bit for bit.

use crate::backend::{Backend, CommError, Event, Work, WorkKind};
use crate::checkpoint::{self, CheckpointPolicy, Checkpointer, Votes, VOTE_COUNT};
use crate::collectives::{Collective, Op};
use crate::digest::params_digest;
use crate::kernels;
use crate::model;

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
        }
    }

    /// Runs one synchronous data-parallel step and returns the global mean loss.
    pub async fn train_step<B: Backend>(&mut self, backend: &B) -> Result<f32, CommError> {
        let cfg = &self.config;
        let step = self.step;
        backend.emit(Event::StepBegin { step });
        let dim = self.params.len();
        // Gradient, then the loss, then the checkpoint votes: one all-reduce carries all three.
        let mut buffer = vec![0.0f32; dim + 1 + VOTE_COUNT];
        let local_loss = model::loss_and_gradient(
            &self.params,
            cfg.data_seed,
            backend.rank(),
            step,
            cfg.batch_per_rank,
            &mut buffer[..dim],
        );
        buffer[dim] = local_loss;
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.votes(backend).write(&mut buffer[dim + 1..]);
        }
        let flops = cfg.modelled_step_flops;
        let compute_began_ns = backend.now_ns();
        backend
            .compute(Work {
                kind: WorkKind::ForwardBackward,
                flops,
            })
            .await?;
        let compute_ns = backend.now_ns() - compute_began_ns;
        backend.emit(Event::ComputeTimed { step, compute_ns });
        let world = backend.placement().world();
        let op_id = step;
        let bytes = cfg.modelled_grad_bytes;
        cfg.collective
            .run(backend, &world, Op::AllReduce, op_id, &mut buffer, bytes)
            .await?;
        let votes = Votes::read(&buffer[dim + 1..]);
        kernels::scale(&mut buffer[..dim + 1], 1.0 / backend.world_size() as f32);
        backend.sgd_update(&mut self.params, &buffer[..dim], cfg.learning_rate);
        let flops = cfg.modelled_optimizer_flops;
        backend
            .compute(Work {
                kind: WorkKind::Optimizer,
                flops,
            })
            .await?;
        let loss = buffer[dim];
        backend.emit(Event::StepEnd { step, loss });
        self.step += 1;
        if self.step <= self.high_water_step {
            self.recomputed_steps += 1;
        }
        self.high_water_step = self.high_water_step.max(self.step);
        self.last_loss = loss;
        if step == 0 {
            self.first_loss = loss;
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
        let Some(checkpointer) = &mut self.checkpointer else {
            return Ok(());
        };
        checkpointer.reset(backend.now_ns());
        // Restore operations use op ids far above any step number.
        let op_base = (1 << 62) + (generation << 20);
        let elems = self.params.len();
        if let Some(restored) = checkpoint::restore(backend, checkpointer, elems, op_base).await? {
            self.params = restored.params;
            self.step = restored.step;
        }
        Ok(())
    }

    pub fn outcome(&self) -> JobOutcome {
        JobOutcome {
            steps_completed: self.step,
            final_loss: self.last_loss,
            param_digest: params_digest(&self.params),
            restarts: self.restarts,
            recomputed_steps: self.recomputed_steps,
            first_loss: self.first_loss,
        }
    }
}

/// Trains for `config.steps` steps, surviving failures: when a step fails, the rank reports
/// to the job controller, waits for the restart, restores the newest verified checkpoint and
/// goes on. A rank whose node died starts from an empty trainer, as a new process would.
pub async fn run<B: Backend>(backend: &B, config: JobConfig) -> JobOutcome {
    let mut trainer = Trainer::new(config.clone());
    let mut generation = None;
    loop {
        let attempt = async {
            if let Some(generation) = generation {
                trainer.restore(backend, generation).await?;
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
                    let mut fresh = Trainer::new(config.clone());
                    fresh.restarts = trainer.restarts;
                    fresh.recomputed_steps = trainer.recomputed_steps;
                    fresh.high_water_step = trainer.high_water_step;
                    fresh.first_loss = trainer.first_loss;
                    trainer = fresh;
                }
                trainer.restarts += 1;
                generation = Some(order.generation);
            }
        }
    }
}
