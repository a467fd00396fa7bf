//! The data-parallel training job: every rank computes the gradient of its own batch, the
//! gradients (and the loss) are summed with an all-reduce, and every rank applies the same SGD
//! update, so all replicas hold the same parameters bit for bit.

use crate::backend::{Backend, CommError, Event, Work, WorkKind};
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
}

#[derive(Clone, Debug, PartialEq)]
pub struct JobOutcome {
    pub steps_completed: u64,
    /// Mean loss over all ranks at the last completed step, before its update.
    pub final_loss: f32,
    pub param_digest: u64,
}

/// One replica's training state.
pub struct Trainer {
    pub config: JobConfig,
    pub params: Vec<f32>,
    pub step: u64,
    pub last_loss: f32,
}

impl Trainer {
    pub fn new(config: JobConfig) -> Trainer {
        let params = vec![0.0; config.proxy_elems];
        Trainer {
            config,
            params,
            step: 0,
            last_loss: f32::NAN,
        }
    }

    /// Runs one synchronous data-parallel step and returns the global mean loss.
    pub async fn train_step<B: Backend>(&mut self, backend: &B) -> Result<f32, CommError> {
        let cfg = &self.config;
        let step = self.step;
        backend.emit(Event::StepBegin { step });
        let dim = self.params.len();
        let mut buffer = vec![0.0f32; dim + 1];
        let local_loss = model::loss_and_gradient(
            &self.params,
            cfg.data_seed,
            backend.rank(),
            step,
            cfg.batch_per_rank,
            &mut buffer[..dim],
        );
        buffer[dim] = local_loss;
        let flops = cfg.modelled_step_flops;
        backend
            .compute(Work {
                kind: WorkKind::ForwardBackward,
                flops,
            })
            .await;
        let world = backend.placement().world();
        let op_id = step;
        cfg.collective
            .run(
                backend,
                &world,
                Op::AllReduce,
                op_id,
                &mut buffer,
                cfg.modelled_grad_bytes,
            )
            .await?;
        kernels::scale(&mut buffer, 1.0 / backend.world_size() as f32);
        backend.sgd_update(&mut self.params, &buffer[..dim], cfg.learning_rate);
        let flops = cfg.modelled_optimizer_flops;
        backend
            .compute(Work {
                kind: WorkKind::Optimizer,
                flops,
            })
            .await;
        let loss = buffer[dim];
        backend.emit(Event::StepEnd { step, loss });
        self.step += 1;
        self.last_loss = loss;
        Ok(loss)
    }

    pub fn outcome(&self) -> JobOutcome {
        JobOutcome {
            steps_completed: self.step,
            final_loss: self.last_loss,
            param_digest: params_digest(&self.params),
        }
    }
}

/// Trains for `config.steps` steps.
pub async fn run<B: Backend>(backend: &B, config: JobConfig) -> Result<JobOutcome, CommError> {
    let mut trainer = Trainer::new(config);
    while trainer.step < trainer.config.steps {
        trainer.train_step(backend).await?;
    }
    Ok(trainer.outcome())
}
