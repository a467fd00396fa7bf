//! The layout-aware training job: its settings, and what each of its operations costs at the
//! size of the model the proxy stands for.

use std::ops::Range;

use crate::job::JobOutcome;
use crate::layout::{part_range, DpSharding, Layout};
use crate::pipeline::Schedule;

mod traffic;
mod trainer;

pub use traffic::{Traffic, TrafficByKind};
pub use trainer::{run, LayoutTrainer};

/// The dimensions of the model a layout job's proxy stands for: a dense transformer of
/// `layers` layers of width `hidden`, trained on micro-batches of `micro_batch_size`
/// sequences of `seq_len` tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelDims {
    pub layers: usize,
    pub hidden: usize,
    pub seq_len: usize,
    pub micro_batch_size: usize,
}

/// A job trained over a layout: the proxy (an MLP of `proxy_layers` layers of `proxy_width`
/// f32, one real sample per sequence of a micro-batch) and the model it stands for.
#[derive(Clone, Debug, PartialEq)]
pub struct LayoutJobConfig {
    pub layout: Layout,
    pub dp_sharding: DpSharding,
    pub schedule: Schedule,
    pub micro_batches: usize,
    pub proxy_layers: usize,
    pub proxy_width: usize,
    pub model: ModelDims,
    /// Bytes per parameter of the gradient (and, under full sharding, of the gathered weights).
    pub grad_bytes_per_param: f64,
    pub optimizer_flops_per_param: f64,
}

/// What one stage's operations cost at the modelled model's size, for one TP rank.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StageCosts {
    /// The modelled layers of this stage, and the proxy's.
    pub model_layers: usize,
    pub proxy_layers: usize,
    /// One micro-batch's activations (or their gradient) from stage to stage, per TP rank:
    /// bf16, split across the TP ranks as sequence parallelism splits them.
    pub p2p_bytes: u64,
    /// Each of the proxy's TP all-reduces: the modelled model's two per layer (attention and
    /// MLP outputs, bf16) shared out over the proxy's one per layer, so the stage's total is
    /// the modelled one.
    pub tp_all_reduce_bytes: u64,
    /// One proxy layer's forward of one micro-batch: the modelled layers' FLOPs (Megatron-LM's
    /// 24 b s h^2 + 4 b s^2 h per layer) over the TP ranks, shared out over the proxy layers.
    pub forward_flops_per_proxy_layer: f64,
    /// The parameters of this rank's shard: 12 h^2 per modelled layer, over the TP ranks.
    pub shard_params: f64,
}

impl LayoutJobConfig {
    /// The proxy layers of `stage`.
    pub fn proxy_layer_range(&self, stage: usize) -> Range<usize> {
        part_range(self.proxy_layers, self.layout.pp, stage)
    }

    /// Samples in one step's global batch: one per sequence.
    pub fn global_batch(&self) -> usize {
        self.layout.dp * self.micro_batches * self.model.micro_batch_size
    }

    /// The most real f32 one rank holds at once, on the stage with the most layers: its
    /// weights, its gradient and the DP buffers built from them (four copies), and the
    /// micro-batches in flight (each layer's input, pre-activations and output, the
    /// message buffers): all `m` under GPipe, at most `pp` under 1F1B.
    pub fn peak_floats_per_rank(&self) -> usize {
        let layers = self.proxy_layers.div_ceil(self.layout.pp);
        let units = self.proxy_width / self.layout.tp;
        let weights = layers * 2 * units * self.proxy_width;
        let in_flight = match self.schedule {
            Schedule::GPipe => self.micro_batches,
            Schedule::OneForwardOneBackward => self.micro_batches.min(self.layout.pp),
        };
        let per_micro_batch =
            (layers + 3) * self.model.micro_batch_size * (self.proxy_width + units);
        4 * weights + in_flight * per_micro_batch
    }

    pub fn stage_costs(&self, stage: usize) -> StageCosts {
        let m = &self.model;
        let tp = self.layout.tp as f64;
        let model_layers = part_range(m.layers, self.layout.pp, stage).len();
        let proxy_layers = self.proxy_layer_range(stage).len();
        let (b, s, h) = (m.micro_batch_size as f64, m.seq_len as f64, m.hidden as f64);
        let activation_bytes = b * s * h * 2.0;
        let layer_flops = 24.0 * b * s * h * h + 4.0 * b * s * s * h;
        let share = model_layers as f64 / proxy_layers as f64;
        StageCosts {
            model_layers,
            proxy_layers,
            p2p_bytes: (activation_bytes / tp).round() as u64,
            tp_all_reduce_bytes: (2.0 * activation_bytes * share).round() as u64,
            forward_flops_per_proxy_layer: layer_flops * share / tp,
            shard_params: 12.0 * h * h * model_layers as f64 / tp,
        }
    }
}

/// Where one rank's model time went, summed over its steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeSplit {
    /// Forward, backward and optimizer compute.
    pub compute_ns: u64,
    /// The TP all-reduces.
    pub tp_ns: u64,
    /// Sending and waiting for activations and their gradients.
    pub pp_ns: u64,
    /// The DP collectives: the gradient's reduction and the weights' gathers.
    pub dp_ns: u64,
    /// From each step's first pass to its last, summed over steps.
    pub pipeline_ns: u64,
    /// The forward and backward compute inside those spans.
    pub pass_compute_ns: u64,
}

impl TimeSplit {
    /// The share of the pipeline's span this rank spent without compute: on the first stage,
    /// the pipeline's bubble (with communication free, `(pp - 1) / (m + pp - 1)`).
    pub fn bubble_fraction(&self) -> f64 {
        if self.pipeline_ns == 0 {
            return 0.0;
        }
        1.0 - self.pass_compute_ns as f64 / self.pipeline_ns as f64
    }
}

/// What one rank of a layout job reports besides the job's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct LayoutOutcome {
    /// Its shard (`stage * tp + tp_rank`) and which replica of it it holds.
    pub shard: usize,
    pub dp_rank: usize,
    /// The global mean loss of each step, in step order.
    pub losses: Vec<f32>,
    pub time: TimeSplit,
    /// The messages this rank sent, by kind.
    pub traffic: TrafficByKind,
}

/// A layout job's parameter digest and whether its replicas agree: every shard's replicas
/// must end with the same parameters, bit for bit, and the digest is of the shards' digests in
/// shard order. Judged over the ranks that finished; a shard none of them holds disagrees. The
/// simulator's report and the GPU runner's both say this digest.
pub fn param_digest(layout: &Layout, finished: &[&JobOutcome]) -> (u64, bool) {
    let mut shards = std::collections::BTreeMap::new();
    let mut agree = true;
    for outcome in finished {
        let shard = outcome
            .layout
            .as_ref()
            .expect("a layout job's outcome")
            .shard;
        let first = *shards.entry(shard).or_insert(outcome.param_digest);
        agree &= first == outcome.param_digest;
    }
    agree &= shards.len() == layout.shard_count();
    let mut digest = crate::digest::Digest::new();
    for shard_digest in shards.values() {
        digest.u64(*shard_digest);
    }
    (digest.finish(), agree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::RankOrder;

    fn config(tp: usize, pp: usize, layers: usize, proxy_layers: usize) -> LayoutJobConfig {
        LayoutJobConfig {
            layout: Layout::new(tp, pp, 2, RankOrder::TpDpPp),
            dp_sharding: DpSharding::None,
            schedule: Schedule::OneForwardOneBackward,
            micro_batches: 4,
            proxy_layers,
            proxy_width: 8,
            model: ModelDims {
                layers,
                hidden: 4096,
                seq_len: 2048,
                micro_batch_size: 2,
            },
            grad_bytes_per_param: 2.0,
            optimizer_flops_per_param: 10.0,
        }
    }

    /// Summed over the stages and the TP ranks, the costs are the modelled model's, however
    /// the proxy's layers fall.
    #[test]
    fn stage_costs_add_up_to_the_modelled_model() {
        for (tp, pp, layers, proxy_layers) in [(1, 1, 32, 4), (8, 4, 32, 8), (2, 3, 10, 7)] {
            let c = config(tp, pp, layers, proxy_layers);
            let stages: Vec<StageCosts> = (0..pp).map(|s| c.stage_costs(s)).collect();
            let (h, tokens) = (4096.0f64, 2.0 * 2048.0);
            let sum = |f: &dyn Fn(&StageCosts) -> f64| stages.iter().map(f).sum::<f64>();
            let params = sum(&|s| s.shard_params) * tp as f64;
            assert!((params / (12.0 * h * h * layers as f64) - 1.0).abs() < 1e-12);
            let flops = sum(&|s| s.forward_flops_per_proxy_layer * s.proxy_layers as f64);
            let want = layers as f64 * (24.0 * tokens * h * h + 4.0 * tokens * 2048.0 * h);
            assert!((flops * tp as f64 / want - 1.0).abs() < 1e-12);
            let tp_bytes = sum(&|s| (s.tp_all_reduce_bytes * s.proxy_layers as u64) as f64);
            let want = 2.0 * layers as f64 * tokens * h * 2.0;
            assert!((tp_bytes / want - 1.0).abs() < 1e-6);
            assert_eq!(stages[0].p2p_bytes, (tokens * h * 2.0 / tp as f64) as u64);
            assert_eq!(sum(&|s| s.proxy_layers as f64), proxy_layers as f64);
        }
    }
}
