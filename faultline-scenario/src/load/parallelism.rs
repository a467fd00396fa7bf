//! The layout keys: `[parallelism]` (`tp`, `pp`, `dp`, `dp_sharding`, `order`) and the job keys
//! a layout reads (the proxy's `proxy_layers` and `proxy_width`, `micro_batches`, `schedule`,
//! and the modelled model's `layers`, `hidden`, `seq_len`, `micro_batch_size`). The job keys
//! are checked against their ranges with or without a layout; only a layout uses them.

use serde::Deserialize;
use trainer_core::layout::{DpSharding, Layout, RankOrder};
use trainer_core::layout_job::{LayoutJobConfig, ModelDims};
use trainer_core::pipeline::Schedule;

use crate::config::{ClusterConfig, RecoveryPolicy};
use crate::source::{in_range, ScenarioError, Source};

/// `[parallelism]` as written. Absent: plain data parallelism, as before layouts.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawParallelism {
    #[serde(default = "one")]
    tp: i64,
    #[serde(default = "one")]
    pp: i64,
    /// Absent: `cluster.gpus / (tp * pp)`.
    dp: Option<i64>,
    #[serde(default = "default_dp_sharding")]
    dp_sharding: String,
    #[serde(default = "default_order")]
    order: String,
}

fn one() -> i64 {
    1
}
fn default_dp_sharding() -> String {
    "none".into()
}
fn default_order() -> String {
    "tp-dp-pp".into()
}

/// The layout keys of `[job]`, as written.
pub(super) struct RawLayoutJob<'a> {
    pub proxy_layers: i64,
    pub proxy_width: i64,
    pub micro_batches: i64,
    pub schedule: &'a str,
    pub layers: i64,
    pub hidden: i64,
    pub seq_len: i64,
    pub micro_batch_size: i64,
    pub grad_bytes_per_param: f64,
    pub optimizer_flops_per_param: f64,
}

/// `text` as one of a named enum's names, or an error naming `key` and every name.
fn named<T>(
    src: &Source,
    key: &str,
    text: &str,
    from_name: fn(&str) -> Option<T>,
    names: &[&str],
) -> Result<T, ScenarioError> {
    from_name(text).ok_or_else(|| {
        let names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        src.error(
            key,
            format!("expected one of {}, got {text:?}", names.join(", ")),
        )
    })
}

/// The job's layout keys checked against their ranges; then, with a `[parallelism]` table,
/// the layout checked against the cluster and the proxy.
pub(super) fn validate_layout(
    src: &Source,
    raw: Option<&RawParallelism>,
    job: &RawLayoutJob,
    cluster: &ClusterConfig,
) -> Result<Option<LayoutJobConfig>, ScenarioError> {
    let proxy_layers = in_range(src, "job.proxy_layers", job.proxy_layers, 1, 1024)?;
    let proxy_width = in_range(src, "job.proxy_width", job.proxy_width, 1, 1024)?;
    let micro_batches = in_range(src, "job.micro_batches", job.micro_batches, 1, 4096)?;
    let schedule = named(
        src,
        "job.schedule",
        job.schedule,
        Schedule::from_name,
        Schedule::NAMES,
    )?;
    let model = ModelDims {
        layers: in_range(src, "job.layers", job.layers, 1, 10_000)?,
        hidden: in_range(src, "job.hidden", job.hidden, 1, 1_000_000)?,
        seq_len: in_range(src, "job.seq_len", job.seq_len, 1, 10_000_000)?,
        micro_batch_size: in_range(src, "job.micro_batch_size", job.micro_batch_size, 1, 4096)?,
    };
    let Some(raw) = raw else {
        return Ok(None);
    };
    check_model_size(src, &model)?;
    let layout = validate_shape(src, raw, cluster, proxy_layers, proxy_width, model.layers)?;
    let dp_sharding = named(
        src,
        "parallelism.dp_sharding",
        &raw.dp_sharding,
        DpSharding::from_name,
        DpSharding::NAMES,
    )?;
    Ok(Some(LayoutJobConfig {
        layout,
        dp_sharding,
        schedule,
        micro_batches,
        proxy_layers,
        proxy_width,
        model,
        grad_bytes_per_param: job.grad_bytes_per_param,
        optimizer_flops_per_param: job.optimizer_flops_per_param,
    }))
}

/// The most parameters, and the largest activation in bytes, a layout's modelled model may
/// have: `job.model_params`' bound, and a petabyte per micro-batch, so that every modelled size
/// stays far inside a 64-bit byte count.
const MAX_MODEL_PARAMS: f64 = 1e15;
const MAX_ACTIVATION_BYTES: f64 = 1e15;

/// The modelled model's parameters: `12 h^2` per layer (embeddings and the output layer left
/// out, as the layout's costs leave them).
pub(super) fn model_params(model: &ModelDims) -> f64 {
    let h = model.hidden as f64;
    12.0 * h * h * model.layers as f64
}

/// The modelled model's size, whose keys are each in range but may multiply past the bounds.
fn check_model_size(src: &Source, model: &ModelDims) -> Result<(), ScenarioError> {
    let h = model.hidden as f64;
    let params = model_params(model);
    if params > MAX_MODEL_PARAMS {
        let why = format!(
            "job.layers x 12 x job.hidden^2 = {params:e} parameters, more than the 1e15 a \
             modelled model may have"
        );
        return Err(src.error("job.hidden", why));
    }
    let activation = 2.0 * h * model.seq_len as f64 * model.micro_batch_size as f64;
    if activation > MAX_ACTIVATION_BYTES {
        let why = format!(
            "a micro-batch's activations (job.seq_len x job.micro_batch_size x job.hidden x 2 \
             bytes) would be {activation:e} bytes, more than 1e15"
        );
        return Err(src.error("job.seq_len", why));
    }
    Ok(())
}

/// `tp`, `pp`, `dp` and `order`: TP inside a node, the three filling the cluster, a layer for
/// every stage and an equal slice of the proxy for every TP rank.
fn validate_shape(
    src: &Source,
    raw: &RawParallelism,
    cluster: &ClusterConfig,
    proxy_layers: usize,
    proxy_width: usize,
    model_layers: usize,
) -> Result<Layout, ScenarioError> {
    let gpus = cluster.gpus;
    let tp = in_range(src, "parallelism.tp", raw.tp, 1, 256)?;
    let pp = in_range(src, "parallelism.pp", raw.pp, 1, 1024)?;
    let order = named(
        src,
        "parallelism.order",
        &raw.order,
        RankOrder::from_name,
        RankOrder::NAMES,
    )?;
    let gpus_per_node = cluster.gpus_per_node;
    if gpus_per_node % tp != 0 {
        let why = format!(
            "tp = {tp} must divide cluster.gpus_per_node ({gpus_per_node}): a TP group stays \
             inside one node's NVLink domain"
        );
        return Err(src.error("parallelism.tp", why));
    }
    if proxy_width % tp != 0 {
        let why = format!(
            "tp = {tp} must divide job.proxy_width ({proxy_width}): each TP rank holds an \
             equal slice of every layer"
        );
        return Err(src.error("parallelism.tp", why));
    }
    if pp > proxy_layers.min(model_layers) {
        let why = format!(
            "pp = {pp} stages, but job.proxy_layers is {proxy_layers} and job.layers is \
             {model_layers}: every stage needs a layer of each"
        );
        return Err(src.error("parallelism.pp", why));
    }
    if gpus % (tp * pp) != 0 {
        let why = format!("tp x pp = {} must divide cluster.gpus ({gpus})", tp * pp);
        return Err(src.error("parallelism.pp", why));
    }
    let dp = match raw.dp {
        None => gpus / (tp * pp),
        Some(dp) => in_range(src, "parallelism.dp", dp, 1, 1_000_000)?,
    };
    if tp * pp * dp != gpus {
        let why = format!(
            "tp x pp x dp = {tp} x {pp} x {dp} = {} GPUs, but cluster.gpus is {gpus}; leave \
             dp out to derive it",
            tp * pp * dp
        );
        return Err(src.error("parallelism.dp", why));
    }
    Ok(Layout::new(tp, pp, dp, order))
}

/// What a layout job does not do yet: per-replica recovery and SDC injection. Refused, rather
/// than run without them.
pub(super) fn refuse_beside_layout(
    src: &Source,
    policy: RecoveryPolicy,
    sdc_specs: usize,
) -> Result<(), ScenarioError> {
    if policy == RecoveryPolicy::PerReplica {
        return Err(src.error(
            "recovery.policy",
            "\"per-replica\" drops nodes from plain data parallelism only; with \
             [parallelism] use \"restart\", \"in-memory\" or \"hot-spare\"",
        ));
    }
    if sdc_specs > 0 {
        return Err(src.error(
            "faults.sdc",
            "a job with [parallelism] runs no SDC checks yet: remove [[faults.sdc]] or \
             [parallelism]",
        ));
    }
    Ok(())
}
