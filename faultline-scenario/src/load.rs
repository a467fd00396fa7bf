//! The run-scenario format, as written (the `Raw*` types, with the defaults of a current H100
//! cluster), and its validation into the typed settings of `config`. Every error names the
//! file (or the `--set` that caused it), the line and column, the dotted key, and what would be
//! accepted.

use std::path::Path;

use serde::Deserialize;
use trainer_core::checkpoint::{CheckpointPolicy, Interval};
use trainer_core::collectives::{Algo, Collective, RingOrder};
use trainer_core::job::JobConfig;
use trainer_core::units::{parse_bandwidth_bytes_per_s, parse_duration_ns, MAX_MODEL_TIME_NS};

use crate::config::*;
use crate::source::{in_range, parse_checked, within, ScenarioError, Source};

mod degrade;
mod hang;
mod parallelism;
mod sdc;

/// The environment variable that must be `1` for a scenario to plant a bug: a switch that a
/// user cannot hit by accident with a scenario file alone.
pub const ALLOW_PLANTED_BUGS_ENV: &str = "FAULTLINE_ALLOW_PLANTED_BUGS";

/// Reads a scenario file: its name (the file stem), its origin for errors, and its text.
pub fn read_scenario_file(path: &Path) -> Result<(String, String, String), ScenarioError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        origin: origin.clone(),
        line_col: None,
        key: None,
        message: format!("cannot read the scenario file: {e}"),
    })?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((name, origin, text))
}

/// Loads `path` and applies `overrides` (`key=value`, the value in TOML syntax, or a bare
/// string).
pub fn load(path: &Path, overrides: &[String]) -> Result<Scenario, ScenarioError> {
    let (name, origin, text) = read_scenario_file(path)?;
    load_str(&name, &origin, &text, overrides)
}

/// Loads a scenario from text; `origin` names it in errors.
pub fn load_str(
    name: &str,
    origin: &str,
    text: &str,
    overrides: &[String],
) -> Result<Scenario, ScenarioError> {
    load_str_located(name, origin, text, overrides).map(|(scenario, _)| scenario)
}

/// As [`load_str`], with the [`Source`] that locates keys, so that a program with checks of
/// its own (the GPU runner refuses what real hardware cannot do) reports them with the file,
/// line and column as the loader does.
pub fn load_str_located(
    name: &str,
    origin: &str,
    text: &str,
    overrides: &[String],
) -> Result<(Scenario, Source), ScenarioError> {
    let (raw, source) = parse_checked::<RawScenario>(origin, text, overrides)?;
    let scenario = validate(name, raw, &source)?;
    Ok((scenario, source))
}

// The file format, as written. Defaults are those of a current H100 cluster.

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    scenario: RawMeta,
    cluster: RawCluster,
    #[serde(default)]
    fabric: RawFabric,
    job: RawJob,
    parallelism: Option<parallelism::RawParallelism>,
    #[serde(default)]
    run: RawRun,
    checkpoint: Option<RawCheckpoint>,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    recovery: RawRecovery,
    #[serde(default)]
    faults: RawFaults,
    #[serde(default)]
    debug: RawDebug,
    #[serde(default)]
    detection: sdc::RawDetection,
}

/// Test-only switches.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawDebug {
    planted_bug: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawCheckpoint {
    /// A step count (integer) or a model-time duration ("10min").
    interval: toml::Value,
    #[serde(default = "default_keep")]
    keep: i64,
    /// Bytes of training state per parameter: bf16 weights, fp32 master weights and two fp32
    /// Adam moments make 14; 16 with fp32 gradients.
    #[serde(default = "default_state_bytes_per_param")]
    state_bytes_per_param: f64,
    #[serde(default = "default_snapshot_bandwidth")]
    snapshot_bandwidth: String,
    #[serde(default = "yes")]
    buddy_copy: bool,
}

fn default_keep() -> i64 {
    2
}
fn default_state_bytes_per_param() -> f64 {
    16.0
}
fn default_snapshot_bandwidth() -> String {
    "25GB/s".into()
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
struct RawStorage {
    host_bandwidth: String,
    client_bandwidth: String,
    aggregate_bandwidth: String,
    latency: String,
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            host_bandwidth: "25GB/s".into(),
            client_bandwidth: "10GB/s".into(),
            aggregate_bandwidth: "2TB/s".into(),
            latency: "1ms".into(),
        }
    }
}

/// Defaults: PyTorch's 10-minute collective timeout; heartbeats every 10 s, three missed make
/// a failure (about 30 s, as production systems probe); a 10-minute full restart.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
struct RawRecovery {
    policy: String,
    restart_time: String,
    collective_timeout: String,
    /// The collective progress monitor: a rank that has started no collective for this long
    /// while its peers have started newer ones is flagged. "0s" is off.
    progress_timeout: String,
    /// PyTorch debug mode's pre-collective desync check, and its exchange's round latency.
    desync_check: bool,
    desync_check_round: String,
    heartbeat_interval: String,
    heartbeat_misses: i64,
    max_restarts: i64,
    spare_swap_time: String,
    /// What hot-spare does with no spare left: "restart" in full, or "none" (give up).
    fallback: String,
    /// Score each rank's compute time against the step's median.
    straggler_detection: bool,
    straggler_threshold: f64,
    straggler_patience: i64,
    /// "off" (report only) or "evict" (replace a flagged rank's node).
    straggler_mitigation: String,
    /// Per-replica: how long a dropped node takes to be replaced and re-admitted.
    replica_rejoin_time: String,
    /// Per-replica: the fewest live nodes the job goes on with; below, a full restart.
    /// Absent: half the nodes, rounded up.
    min_replicas: Option<i64>,
    /// Per-replica: the communicators' abort, shrink (or re-initialisation) and grow.
    comm_rebuild: String,
    comm_abort_time: String,
    comm_shrink_time: String,
    comm_shrink_per_doubling: String,
    comm_init_time: String,
}

impl Default for RawRecovery {
    fn default() -> Self {
        RawRecovery {
            policy: "restart".into(),
            restart_time: "10min".into(),
            collective_timeout: "10min".into(),
            progress_timeout: "0s".into(),
            desync_check: false,
            desync_check_round: "25us".into(),
            heartbeat_interval: "10s".into(),
            heartbeat_misses: 3,
            max_restarts: 100,
            spare_swap_time: "2min".into(),
            fallback: "restart".into(),
            straggler_detection: false,
            straggler_threshold: 1.2,
            straggler_patience: 3,
            straggler_mitigation: "off".into(),
            replica_rejoin_time: "10min".into(),
            comm_rebuild: CommRebuild::Shrink.name().into(),
            comm_abort_time: "1s".into(),
            comm_shrink_time: "730ms".into(),
            comm_shrink_per_doubling: "130ms".into(),
            comm_init_time: "30s".into(),
            min_replicas: None,
        }
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawFaults {
    #[serde(default)]
    crash: Vec<RawCrash>,
    #[serde(default)]
    storage: Vec<RawStorageFault>,
    #[serde(default)]
    rates: RawRates,
    #[serde(default)]
    link_flap: Vec<degrade::RawLinkFlap>,
    #[serde(default)]
    straggler: Vec<degrade::RawStraggler>,
    #[serde(default)]
    sdc: Vec<sdc::RawSdc>,
    #[serde(default)]
    hang: Vec<hang::RawHang>,
    #[serde(default)]
    desync: Vec<hang::RawDesync>,
    #[serde(default)]
    degrade: Vec<degrade::RawDegrade>,
}

/// A storage fault: `kind = "slow"` (with `factor`) or `"fail_writes"` over `from..until`, or
/// `"corrupt"` (a bit flip in a committed checkpoint shard) `at` a time.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawStorageFault {
    kind: String,
    from: Option<String>,
    until: Option<String>,
    factor: Option<f64>,
    at: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawCrash {
    node: Option<i64>,
    gpu: Option<i64>,
    at: Option<String>,
    at_step: Option<i64>,
    after_commits: Option<i64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawRates {
    #[serde(default)]
    node_failures_per_1000_node_days: f64,
    /// Weibull interarrival times of this shape instead of exponential ones (the planner's
    /// `weibull` distribution): below 1, failures cluster after each other.
    node_failure_weibull_shape: Option<f64>,
    /// Random flaps of NIC uplinks and leaf-spine links, each `link_flap_down` long.
    #[serde(default)]
    link_flaps_per_1000_link_days: f64,
    link_flap_down: Option<String>,
    /// Random fail-slows of NIC uplinks and leaf-spine links, each `degrade_duration` long,
    /// keeping `degrade_bandwidth` and losing `degrade_loss` of the transfers crossing them.
    #[serde(default)]
    degrades_per_1000_link_days: f64,
    degrade_duration: Option<String>,
    degrade_bandwidth: Option<f64>,
    degrade_loss: Option<f64>,
    /// Random hangs and desyncs of a rank at its next step.
    #[serde(default)]
    hangs_per_1000_node_days: f64,
    #[serde(default)]
    desyncs_per_1000_node_days: f64,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    #[serde(default)]
    description: String,
    /// Small enough for CI's snapshot test.
    #[serde(default = "yes")]
    ci: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    gpus: i64,
    #[serde(default = "default_gpus_per_node")]
    gpus_per_node: i64,
    #[serde(default = "default_nodes_per_leaf")]
    nodes_per_leaf: i64,
    #[serde(default = "one_f64")]
    oversubscription: f64,
    #[serde(default = "one_i64")]
    clusters: i64,
    /// Idle nodes standing by for the hot-spare policy, outside `gpus`.
    #[serde(default)]
    spare_nodes: i64,
}

fn default_gpus_per_node() -> i64 {
    8
}
fn default_nodes_per_leaf() -> i64 {
    32
}
fn one_f64() -> f64 {
    1.0
}
fn one_i64() -> i64 {
    1
}

/// H100 defaults: NVLink 4 at 450 GB/s per direction per GPU through NVSwitch; one ConnectX-7
/// 400 Gb/s NIC per GPU; 400 Gb/s switch ports.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
struct RawFabric {
    nvlink_bandwidth: String,
    nvlink_latency: String,
    nic_bandwidth: String,
    nic_latency: String,
    switch_link_bandwidth: String,
    switch_latency: String,
    inter_cluster_bandwidth: String,
    inter_cluster_latency: String,
    /// "ecmp" or "adaptive": how a cross-leaf route picks its spine.
    routing: String,
    /// "plain" or "retry": what a transfer does when no path is up.
    transport: String,
    retry_initial_backoff: String,
    retry_max_backoff: String,
    /// Total backoff before the retry transport gives up.
    retry_budget: String,
    /// How long a sender waits before resending a transfer a degraded link lost.
    retransmit_timeout: String,
}

impl Default for RawFabric {
    fn default() -> Self {
        RawFabric {
            nvlink_bandwidth: "450GB/s".into(),
            nvlink_latency: "1us".into(),
            nic_bandwidth: "400Gb/s".into(),
            nic_latency: "1500ns".into(),
            switch_link_bandwidth: "400Gb/s".into(),
            switch_latency: "500ns".into(),
            inter_cluster_bandwidth: "25.6Tb/s".into(),
            inter_cluster_latency: "10us".into(),
            routing: "ecmp".into(),
            transport: "plain".into(),
            retry_initial_backoff: "1ms".into(),
            retry_max_backoff: "1s".into(),
            retry_budget: "30s".into(),
            retransmit_timeout: format!("{DEFAULT_RETRANSMIT_TIMEOUT_NS}ns"),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawJob {
    steps: i64,
    #[serde(default = "default_collective")]
    collective: String,
    #[serde(default = "default_inter_node_collective")]
    inter_node_collective: String,
    /// "rail" or "rank": the order a flat ring visits the world in.
    #[serde(default = "default_ring_order")]
    ring_order: String,
    #[serde(default = "default_proxy_elems")]
    proxy_elems: i64,
    #[serde(default = "default_batch")]
    batch_per_rank: i64,
    #[serde(default = "default_learning_rate")]
    learning_rate: f64,
    #[serde(default = "default_data_seed")]
    data_seed: i64,
    /// Parameters of the full-size model the proxy stands for.
    #[serde(default = "default_model_params")]
    model_params: f64,
    #[serde(default = "default_grad_bytes_per_param")]
    grad_bytes_per_param: f64,
    #[serde(default = "default_tokens")]
    tokens_per_gpu_per_step: f64,
    #[serde(default = "default_peak_tflops")]
    gpu_peak_tflops: f64,
    #[serde(default = "default_mfu")]
    mfu: f64,
    #[serde(default = "default_optimizer_flops_per_param")]
    optimizer_flops_per_param: f64,
    /// With `[parallelism]`: the proxy MLP's layers and width, the micro-batches of a step and
    /// their schedule, and the dimensions of the model the proxy stands for.
    #[serde(default = "default_proxy_layers")]
    proxy_layers: i64,
    #[serde(default = "default_proxy_width")]
    proxy_width: i64,
    #[serde(default = "default_micro_batches")]
    micro_batches: i64,
    #[serde(default = "default_schedule")]
    schedule: String,
    #[serde(default = "default_layers")]
    layers: i64,
    #[serde(default = "default_hidden")]
    hidden: i64,
    #[serde(default = "default_seq_len")]
    seq_len: i64,
    #[serde(default = "one_i64")]
    micro_batch_size: i64,
}

fn default_proxy_layers() -> i64 {
    8
}
fn default_proxy_width() -> i64 {
    64
}
fn default_micro_batches() -> i64 {
    8
}
fn default_schedule() -> String {
    "1f1b".into()
}
/// Llama 3 8B's shape, the size `job.model_params` stands for by default.
fn default_layers() -> i64 {
    32
}
fn default_hidden() -> i64 {
    4096
}
fn default_seq_len() -> i64 {
    4096
}

fn default_collective() -> String {
    "hierarchical".into()
}
fn default_ring_order() -> String {
    "rail".into()
}
fn default_inter_node_collective() -> String {
    "halving-doubling".into()
}
fn default_proxy_elems() -> i64 {
    256
}
fn default_batch() -> i64 {
    4
}
fn default_learning_rate() -> f64 {
    0.3
}
fn default_data_seed() -> i64 {
    0x5eed
}
fn default_model_params() -> f64 {
    8e9
}
fn default_grad_bytes_per_param() -> f64 {
    2.0
}
fn default_tokens() -> f64 {
    4096.0
}
/// H100 SXM dense BF16.
fn default_peak_tflops() -> f64 {
    989.0
}
fn default_mfu() -> f64 {
    0.4
}
fn default_optimizer_flops_per_param() -> f64 {
    10.0
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawRun {
    #[serde(default = "one_i64")]
    seed: i64,
    #[serde(default = "default_executor")]
    executor: String,
}

impl Default for RawRun {
    fn default() -> Self {
        RawRun {
            seed: 1,
            executor: default_executor(),
        }
    }
}

fn default_executor() -> String {
    "auto".into()
}

/// `[storage]` with `[[faults.storage]]`'s slow and failing stores, and the times stored
/// blobs are corrupted at.
fn validate_storage_and_faults(
    src: &Source,
    raw: &RawScenario,
) -> Result<(StorageConfig, Vec<u64>), ScenarioError> {
    let (slow, failing, corruptions_at_ns) = validate_storage_faults(src, &raw.faults)?;
    let storage = StorageConfig {
        slow,
        failing,
        ..validate_storage(src, &raw.storage)?
    };
    Ok((storage, corruptions_at_ns))
}

fn validate(name: &str, raw: RawScenario, src: &Source) -> Result<Scenario, ScenarioError> {
    // The order of the checks is the order in which errors are reported: the file's sections
    // from the top, so that the first error a user sees is the first one in the file.
    let cluster = validate_cluster(src, &raw.cluster)?;
    let (gpus, nodes) = (cluster.gpus, cluster.node_count());
    let fabric = validate_fabric(src, &raw.fabric)?;
    let job = validate_job(src, &raw.job)?;
    let layout = validate_layout(src, &raw, &cluster)?;
    let run = validate_run(src, &raw.run)?;
    let checkpoint = match &raw.checkpoint {
        None => None,
        Some(c) => Some(validate_checkpoint(src, c, &raw.job, layout.as_ref())?),
    };
    let (storage, corruptions_at_ns) = validate_storage_and_faults(src, &raw)?;
    let spare_nodes = in_range(
        src,
        "cluster.spare_nodes",
        raw.cluster.spare_nodes,
        0,
        1_000_000,
    )?;
    let control = validate_control(src, &raw.recovery, &raw.faults, gpus, nodes, spare_nodes)?;
    let link_faults = validate_link_faults(src, &raw, &cluster, control.collective_timeout_ns)?;
    let stragglers = validate_stragglers(src, &raw, gpus, nodes)?;
    let degrades = validate_degrades(src, &raw, &cluster)?;
    let (detection, checksum_bytes_per_s) = sdc::validate_detection(src, &raw.detection)?;
    let sdc = SdcConfig {
        specs: sdc::validate_sdc(src, &raw.faults.sdc, gpus)?,
        checksum_bytes_per_s,
    };
    if layout.is_some() {
        parallelism::refuse_beside_layout(src, control.policy, sdc.specs.len())?;
    }
    let job = JobConfig {
        checkpoint: checkpoint.map(|policy| CheckpointPolicy {
            restore_from_memory: control.policy != RecoveryPolicy::Restart,
            ..policy
        }),
        collective: job.collective.with_checksums(detection.payload_checksums),
        detection,
        layout: layout.map(Box::new),
        ..job
    };
    let (hangs, desyncs) = validate_hangs(src, &raw.faults, &job, &control, gpus)?;
    Ok(Scenario {
        name: name.to_string(),
        description: raw.scenario.description,
        ci: raw.scenario.ci,
        cluster,
        fabric,
        job,
        gpu_achieved_flops_per_s: raw.job.gpu_peak_tflops * 1e12 * raw.job.mfu,
        storage,
        control: ControlConfig {
            corruptions_at_ns,
            hangs,
            desyncs,
            ..control
        },
        link_faults,
        stragglers,
        degrades,
        sdc,
        run,
        planted_bug: validate_debug(src, &raw.debug)?,
    })
}

/// `cluster.gpus` and `cluster.gpus_per_node`, as run and planner scenarios both state them.
pub fn validate_gpus(
    src: &Source,
    gpus: i64,
    gpus_per_node: i64,
) -> Result<(usize, usize), ScenarioError> {
    let gpus = in_range(src, "cluster.gpus", gpus, 1, MAX_GPUS as i64)?;
    let gpus_per_node = in_range(src, "cluster.gpus_per_node", gpus_per_node, 1, 256)?;
    if gpus_per_node > gpus {
        return Err(src.error(
            "cluster.gpus_per_node",
            format!("{gpus_per_node} GPUs per node is more than the {gpus} GPUs of the cluster"),
        ));
    }
    Ok((gpus, gpus_per_node))
}

fn validate_cluster(src: &Source, c: &RawCluster) -> Result<ClusterConfig, ScenarioError> {
    let (gpus, gpus_per_node) = validate_gpus(src, c.gpus, c.gpus_per_node)?;
    let nodes = gpus.div_ceil(gpus_per_node);
    let nodes_per_leaf = in_range(src, "cluster.nodes_per_leaf", c.nodes_per_leaf, 1, 4096)?;
    if !(c.oversubscription.is_finite() && (1.0..=64.0).contains(&c.oversubscription)) {
        return Err(src.error(
            "cluster.oversubscription",
            format!(
                "expected a ratio from 1.0 (non-blocking) to 64.0, got {}",
                c.oversubscription
            ),
        ));
    }
    let clusters = in_range(src, "cluster.clusters", c.clusters, 1, nodes as i64)?;
    Ok(ClusterConfig {
        gpus,
        gpus_per_node,
        nodes_per_leaf,
        oversubscription: c.oversubscription,
        clusters,
    })
}

/// The slowest and fastest bandwidths a scenario may name: 1 Mb/s (below it a gradient's
/// transfer outlasts any run faultline can model) and 10 PB/s.
const MIN_BANDWIDTH_BYTES_PER_S: f64 = 1e6 / 8.0;
const MAX_BANDWIDTH_BYTES_PER_S: f64 = 1e16;

/// A bandwidth with units (`"400Gb/s"`) inside the physical range, or an error naming `key`.
pub(crate) fn bandwidth(src: &Source, key: &str, text: &str) -> Result<f64, ScenarioError> {
    let value = parse_bandwidth_bytes_per_s(text)
        .map_err(|e| src.error(key, format!("expected {e}, got {text:?}")))?;
    if !(MIN_BANDWIDTH_BYTES_PER_S..=MAX_BANDWIDTH_BYTES_PER_S).contains(&value) {
        return Err(src.error(
            key,
            format!("expected a bandwidth from 1Mb/s to 10000TB/s, got {text:?}"),
        ));
    }
    Ok(value)
}

/// A duration with units (`"10min"`), at most the longest model time a run represents
/// (`MAX_MODEL_TIME_NS`, about 13 days), or an error naming `key`.
pub(crate) fn duration(src: &Source, key: &str, text: &str) -> Result<u64, ScenarioError> {
    let ns = parse_duration_ns(text)
        .map_err(|e| src.error(key, format!("expected {e}, got {text:?}")))?;
    if ns > MAX_MODEL_TIME_NS {
        return Err(src.error(
            key,
            format!("expected at most 13d, the longest model time a run represents, got {text:?}"),
        ));
    }
    Ok(ns)
}

/// A duration from `min_ns` to `max_ns`, or an error naming `key` and the range as written
/// in the README (`range`, e.g. "1s to 13d").
pub(crate) fn duration_in(
    src: &Source,
    key: &str,
    text: &str,
    (min_ns, max_ns): (u64, u64),
    range: &str,
) -> Result<u64, ScenarioError> {
    debug_assert!(max_ns <= MAX_MODEL_TIME_NS);
    let ns = parse_duration_ns(text)
        .map_err(|e| src.error(key, format!("expected {e}, got {text:?}")))?;
    if !(min_ns..=max_ns).contains(&ns) {
        return Err(src.error(key, format!("expected {range}, got {text:?}")));
    }
    Ok(ns)
}

/// Like [`duration_in`], but `"0s"` switches the mechanism off (`None`).
fn optional_duration_in(
    src: &Source,
    key: &str,
    text: &str,
    bounds: (u64, u64),
    range: &str,
) -> Result<Option<u64>, ScenarioError> {
    if parse_duration_ns(text) == Ok(0) {
        return Ok(None);
    }
    let range = format!("\"0s\" (off) or {range}");
    duration_in(src, key, text, bounds, &range).map(Some)
}

const SECOND_NS: u64 = 1_000_000_000;

/// A latency: from zero to ten seconds, longer than any link on Earth.
fn latency(src: &Source, key: &str, text: &str) -> Result<u64, ScenarioError> {
    duration_in(src, key, text, (0, 10 * SECOND_NS), "from 0s to 10s")
}

fn validate_fabric(src: &Source, f: &RawFabric) -> Result<FabricConfig, ScenarioError> {
    Ok(FabricConfig {
        nvlink_bandwidth_bytes_per_s: bandwidth(
            src,
            "fabric.nvlink_bandwidth",
            &f.nvlink_bandwidth,
        )?,
        nvlink_latency_ns: latency(src, "fabric.nvlink_latency", &f.nvlink_latency)?,
        nic_bandwidth_bytes_per_s: bandwidth(src, "fabric.nic_bandwidth", &f.nic_bandwidth)?,
        nic_latency_ns: latency(src, "fabric.nic_latency", &f.nic_latency)?,
        switch_link_bandwidth_bytes_per_s: bandwidth(
            src,
            "fabric.switch_link_bandwidth",
            &f.switch_link_bandwidth,
        )?,
        switch_latency_ns: latency(src, "fabric.switch_latency", &f.switch_latency)?,
        inter_cluster_bandwidth_bytes_per_s: bandwidth(
            src,
            "fabric.inter_cluster_bandwidth",
            &f.inter_cluster_bandwidth,
        )?,
        inter_cluster_latency_ns: latency(
            src,
            "fabric.inter_cluster_latency",
            &f.inter_cluster_latency,
        )?,
        routing: Routing::from_name(&f.routing).ok_or_else(|| {
            src.error(
                "fabric.routing",
                format!(
                    "unknown routing {:?}; expected \"ecmp\" or \"adaptive\"",
                    f.routing
                ),
            )
        })?,
    })
}

fn validate_algo(src: &Source, key: &str, text: &str) -> Result<Algo, ScenarioError> {
    Algo::from_name(text).ok_or_else(|| {
        src.error(
            key,
            format!(
                "unknown algorithm {text:?}; expected one of \"ring\", \"tree\", \
                 \"halving-doubling\", \"hierarchical\""
            ),
        )
    })
}

fn validate_ring_order(src: &Source, text: &str) -> Result<RingOrder, ScenarioError> {
    RingOrder::from_name(text).ok_or_else(|| {
        src.error(
            "job.ring_order",
            format!("unknown ring order {text:?}; expected \"rail\" or \"rank\""),
        )
    })
}

/// The job without its checkpoint policy and detection, which later sections fill in.
fn validate_job(src: &Source, j: &RawJob) -> Result<JobConfig, ScenarioError> {
    let collective = validate_algo(src, "job.collective", &j.collective)?;
    let inter = validate_algo(src, "job.inter_node_collective", &j.inter_node_collective)?;
    if inter == Algo::Hierarchical {
        return Err(src.error(
            "job.inter_node_collective",
            "the algorithm across nodes cannot itself be hierarchical; expected \"ring\", \
             \"tree\" or \"halving-doubling\"",
        ));
    }
    let steps = in_range(src, "job.steps", j.steps, 1, 10_000_000)? as u64;
    let proxy_elems = in_range(src, "job.proxy_elems", j.proxy_elems, 1, 1 << 20)?;
    let batch_per_rank = in_range(src, "job.batch_per_rank", j.batch_per_rank, 1, 4096)?;
    // Physical ranges: a 1-parameter model to 1e15; fp4 to fp128 gradients; a laptop's
    // GPU (1e-3 TFLOP/s) to far past any chip; an MFU below 0.1% is a broken job.
    for (key, value, range) in [
        ("job.learning_rate", j.learning_rate, (1e-12, 10.0)),
        ("job.model_params", j.model_params, (1.0, 1e15)),
        (
            "job.grad_bytes_per_param",
            j.grad_bytes_per_param,
            (0.5, 16.0),
        ),
        (
            "job.tokens_per_gpu_per_step",
            j.tokens_per_gpu_per_step,
            (1.0, 1e9),
        ),
        ("job.gpu_peak_tflops", j.gpu_peak_tflops, (1e-3, 1e6)),
        ("job.mfu", j.mfu, (1e-3, 1.0)),
        (
            "job.optimizer_flops_per_param",
            j.optimizer_flops_per_param,
            (1e-3, 1e6),
        ),
    ] {
        within(src, key, value, range)?;
    }
    Ok(JobConfig {
        steps,
        collective: Collective::with_inter_node(collective, inter)
            .with_ring_order(validate_ring_order(src, &j.ring_order)?),
        proxy_elems,
        batch_per_rank,
        learning_rate: j.learning_rate as f32,
        data_seed: in_range(src, "job.data_seed", j.data_seed, 0, i64::MAX)? as u64,
        modelled_grad_bytes: (j.model_params * j.grad_bytes_per_param).round() as u64,
        // Forward and backward of a dense transformer: about 6 FLOPs per parameter per token.
        modelled_step_flops: 6.0 * j.model_params * j.tokens_per_gpu_per_step,
        modelled_optimizer_flops: j.optimizer_flops_per_param * j.model_params,
        checkpoint: None,
        detection: trainer_core::integrity::DetectionPolicy::OFF,
        layout: None,
    })
}

/// `[parallelism]` and the job's layout keys.
fn validate_layout(
    src: &Source,
    raw: &RawScenario,
    cluster: &ClusterConfig,
) -> Result<Option<trainer_core::layout_job::LayoutJobConfig>, ScenarioError> {
    let j = &raw.job;
    let job = parallelism::RawLayoutJob {
        proxy_layers: j.proxy_layers,
        proxy_width: j.proxy_width,
        micro_batches: j.micro_batches,
        schedule: &j.schedule,
        layers: j.layers,
        hidden: j.hidden,
        seq_len: j.seq_len,
        micro_batch_size: j.micro_batch_size,
        grad_bytes_per_param: j.grad_bytes_per_param,
        optimizer_flops_per_param: j.optimizer_flops_per_param,
    };
    parallelism::validate_layout(src, raw.parallelism.as_ref(), &job, cluster)
}

fn validate_run(src: &Source, r: &RawRun) -> Result<RunConfig, ScenarioError> {
    let executor = match r.executor.as_str() {
        "auto" => ExecutorChoice::Auto,
        "madsim" => ExecutorChoice::Madsim,
        "fifo" => ExecutorChoice::Fifo,
        other => {
            return Err(src.error(
                "run.executor",
                format!("unknown executor {other:?}; expected \"auto\", \"madsim\" or \"fifo\""),
            ))
        }
    };
    Ok(RunConfig {
        seed: j_seed(src, r.seed)?,
        executor,
    })
}

/// `[fabric] transport` and `retry_*`, `[[faults.link_flap]]` and the random flap rate.
fn validate_link_faults(
    src: &Source,
    raw: &RawScenario,
    cluster: &ClusterConfig,
    collective_timeout_ns: Option<u64>,
) -> Result<LinkFaultConfig, ScenarioError> {
    let f = &raw.fabric;
    let transport = degrade::RawTransport {
        transport: &f.transport,
        retry_initial_backoff: &f.retry_initial_backoff,
        retry_max_backoff: &f.retry_max_backoff,
        retry_budget: &f.retry_budget,
    };
    let rate = degrade::RawFlapRate {
        per_1000_link_days: raw.faults.rates.link_flaps_per_1000_link_days,
        down: raw.faults.rates.link_flap_down.as_deref().unwrap_or("5s"),
    };
    let flaps = &raw.faults.link_flap;
    degrade::validate_link_faults(
        src,
        &transport,
        flaps,
        &rate,
        cluster,
        collective_timeout_ns,
    )
}

/// `[[faults.straggler]]` and `[recovery] straggler_*`.
fn validate_stragglers(
    src: &Source,
    raw: &RawScenario,
    gpus: usize,
    nodes: usize,
) -> Result<StragglerConfig, ScenarioError> {
    let r = &raw.recovery;
    let recovery = degrade::RawStragglerRecovery {
        detection: r.straggler_detection,
        threshold: r.straggler_threshold,
        patience: r.straggler_patience,
        mitigation: &r.straggler_mitigation,
    };
    degrade::validate_stragglers(src, &recovery, &raw.faults.straggler, gpus, nodes)
}

/// `[[faults.degrade]]`, the random degrade rate and `[fabric] retransmit_timeout`.
fn validate_degrades(
    src: &Source,
    raw: &RawScenario,
    cluster: &ClusterConfig,
) -> Result<DegradeConfig, ScenarioError> {
    let r = &raw.faults.rates;
    let rate = degrade::RawDegradeRate {
        per_1000_link_days: r.degrades_per_1000_link_days,
        duration: r.degrade_duration.as_deref(),
        bandwidth: r.degrade_bandwidth,
        loss: r.degrade_loss,
        retransmit_timeout: &raw.fabric.retransmit_timeout,
    };
    degrade::validate_degrades(src, &raw.faults.degrade, &rate, cluster)
}

fn validate_debug(
    src: &Source,
    d: &RawDebug,
) -> Result<Option<trainer_core::PlantedBug>, ScenarioError> {
    use trainer_core::PlantedBug;
    let Some(name) = &d.planted_bug else {
        return Ok(None);
    };
    let Some(bug) = PlantedBug::from_name(name) else {
        let names: Vec<String> = PlantedBug::ALL
            .iter()
            .map(|b| format!("{:?}", b.name()))
            .collect();
        return Err(src.error(
            "debug.planted_bug",
            format!(
                "unknown planted bug {name:?}; expected one of {}",
                names.join(", ")
            ),
        ));
    };
    if std::env::var(ALLOW_PLANTED_BUGS_ENV).as_deref() != Ok("1") {
        return Err(src.error(
            "debug.planted_bug",
            format!(
                "planted bugs break the trainer on purpose, for testing `faultline swarm`; \
                 set {ALLOW_PLANTED_BUGS_ENV}=1 to accept this key"
            ),
        ));
    }
    Ok(Some(bug))
}

/// `[checkpoint]`, whose modelled state is that of the job's modelled model: with a layout, the
/// transformer its dimensions give; without, `job.model_params`.
fn validate_checkpoint(
    src: &Source,
    c: &RawCheckpoint,
    job: &RawJob,
    layout: Option<&trainer_core::layout_job::LayoutJobConfig>,
) -> Result<CheckpointPolicy, ScenarioError> {
    let model_params = layout.map_or(job.model_params, |l| parallelism::model_params(&l.model));
    let expected = "a step count such as 50 (at most 10,000,000), or a duration such as \"30min\"";
    let interval = match &c.interval {
        toml::Value::Integer(steps) if (1..=10_000_000).contains(steps) => {
            Interval::Steps(*steps as u64)
        }
        toml::Value::String(text) => match parse_duration_ns(text) {
            Ok(ns) if ns > 0 && ns <= MAX_MODEL_TIME_NS => Interval::ModelTimeNs(ns),
            _ => {
                return Err(src.error(
                    "checkpoint.interval",
                    format!("expected {expected} above zero, got {text:?}"),
                ))
            }
        },
        other => {
            return Err(src.error(
                "checkpoint.interval",
                format!("expected {expected} above zero, got {other}"),
            ))
        }
    };
    let keep = in_range(src, "checkpoint.keep", c.keep, 1, 1000)?;
    within(
        src,
        "checkpoint.state_bytes_per_param",
        c.state_bytes_per_param,
        (0.5, 64.0),
    )?;
    let snapshot = bandwidth(src, "checkpoint.snapshot_bandwidth", &c.snapshot_bandwidth)?;
    Ok(CheckpointPolicy {
        interval,
        keep,
        modelled_state_bytes: (model_params * c.state_bytes_per_param).round() as u64,
        snapshot_bytes_per_s: snapshot,
        buddy_copy: c.buddy_copy,
        restore_from_memory: false,
    })
}

fn validate_storage(src: &Source, s: &RawStorage) -> Result<StorageConfig, ScenarioError> {
    let bandwidth = |key: &str, text: &str| bandwidth(src, key, text);
    Ok(StorageConfig {
        host_bytes_per_s: bandwidth("storage.host_bandwidth", &s.host_bandwidth)?,
        client_bytes_per_s: bandwidth("storage.client_bandwidth", &s.client_bandwidth)?,
        aggregate_bytes_per_s: bandwidth("storage.aggregate_bandwidth", &s.aggregate_bandwidth)?,
        persistent_latency_ns: latency(src, "storage.latency", &s.latency)?,
        slow: Vec::new(),
        failing: Vec::new(),
    })
}

type StorageFaults = (Vec<SlowWindow>, Vec<Window>, Vec<u64>);

fn validate_storage_faults(src: &Source, f: &RawFaults) -> Result<StorageFaults, ScenarioError> {
    let (mut slow, mut failing, mut corrupt) = (Vec::new(), Vec::new(), Vec::new());
    for (idx, fault) in f.storage.iter().enumerate() {
        let key = |field: &str| format!("faults.storage.{idx}.{field}");
        let time = |field: &str, value: &Option<String>| -> Result<u64, ScenarioError> {
            let text = value.as_deref().ok_or_else(|| {
                let message = format!("`{field}` is required for kind {:?}", fault.kind);
                src.error(&format!("faults.storage.{idx}"), message)
            })?;
            duration(src, &key(field), text)
        };
        let window = || -> Result<Window, ScenarioError> {
            let (from_ns, until_ns) = (time("from", &fault.from)?, time("until", &fault.until)?);
            if until_ns <= from_ns {
                return Err(src.error(&key("until"), "expected a time after `from`"));
            }
            Ok(Window { from_ns, until_ns })
        };
        match fault.kind.as_str() {
            "slow" => {
                let Some(factor) = fault.factor else {
                    let message = "`factor` is required for kind \"slow\", e.g. factor = 4.0";
                    return Err(src.error(&format!("faults.storage.{idx}"), message));
                };
                if !(factor.is_finite() && (1.0..=1e6).contains(&factor)) {
                    let message = format!("expected a slowdown factor from 1 to 1e6, got {factor}");
                    return Err(src.error(&key("factor"), message));
                }
                slow.push(SlowWindow {
                    window: window()?,
                    factor,
                });
            }
            "fail_writes" => failing.push(window()?),
            "corrupt" => corrupt.push(time("at", &fault.at)?),
            other => {
                return Err(src.error(
                    &key("kind"),
                    format!(
                        "unknown storage fault {other:?}; expected \"slow\", \"fail_writes\" \
                         or \"corrupt\""
                    ),
                ))
            }
        }
    }
    Ok((slow, failing, corrupt))
}

fn validate_control(
    src: &Source,
    r: &RawRecovery,
    f: &RawFaults,
    gpus: usize,
    nodes: usize,
    spare_nodes: usize,
) -> Result<ControlConfig, ScenarioError> {
    let (policy, fallback_to_restart) = validate_policy(src, r, spare_nodes)?;
    let replica_rejoin_time_ns =
        duration(src, "recovery.replica_rejoin_time", &r.replica_rejoin_time)?;
    if replica_rejoin_time_ns == 0 {
        return Err(src.error(
            "recovery.replica_rejoin_time",
            "expected a positive duration: a dropped node needs time to be replaced",
        ));
    }
    let min_replicas = match r.min_replicas {
        None => nodes.div_ceil(2),
        Some(n) => in_range(src, "recovery.min_replicas", n, 1, nodes as i64)?,
    };
    if policy == RecoveryPolicy::PerReplica && nodes < 2 {
        return Err(src.error(
            "recovery.policy",
            "per-replica needs at least two nodes: the replica unit dropped is a whole node",
        ));
    }
    let (rate, weibull_shape) = validate_node_failures(src, f)?;
    let (collective_timeout_ns, progress_timeout_ns) = validate_monitors(src, r)?;
    let crashes = (f.crash.iter().enumerate())
        .map(|(idx, c)| validate_crash(src, idx, c, gpus, nodes))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ControlConfig {
        policy,
        spare_nodes,
        spare_swap_time_ns: duration(src, "recovery.spare_swap_time", &r.spare_swap_time)?,
        fallback_to_restart,
        crashes,
        hangs: Vec::new(),
        desyncs: Vec::new(),
        node_failure_rate_per_ns: rate / 1000.0 / 86_400e9,
        gray_rates_per_node_per_ns: validate_gray_rates(src, f)?,
        node_failure_weibull_shape: weibull_shape,
        collective_timeout_ns,
        progress_timeout_ns,
        desync_check: validate_desync_check(src, r)?,
        heartbeat_interval_ns: optional_duration_in(
            src,
            "recovery.heartbeat_interval",
            &r.heartbeat_interval,
            (SECOND_NS / 1000, 3600 * SECOND_NS),
            "from 1ms to 1h",
        )?,
        heartbeat_misses: in_range(
            src,
            "recovery.heartbeat_misses",
            r.heartbeat_misses,
            1,
            1000,
        )? as u64,
        restart_time_ns: duration(src, "recovery.restart_time", &r.restart_time)?,
        replica_rejoin_time_ns,
        min_replicas,
        comm: validate_comm(src, r)?,
        max_restarts: in_range(src, "recovery.max_restarts", r.max_restarts, 0, 1_000_000)? as u64,
        corruptions_at_ns: Vec::new(),
    })
}

/// The collective watchdog's and the progress monitor's timeouts (each may be off).
fn validate_monitors(
    src: &Source,
    r: &RawRecovery,
) -> Result<(Option<u64>, Option<u64>), ScenarioError> {
    // Below a second a watchdog fires on healthy collectives: every attempt times out.
    let timeout = |key: &str, text: &str| {
        optional_duration_in(
            src,
            key,
            text,
            (SECOND_NS, MAX_MODEL_TIME_NS),
            "from 1s to 13d",
        )
    };
    Ok((
        timeout("recovery.collective_timeout", &r.collective_timeout)?,
        timeout("recovery.progress_timeout", &r.progress_timeout)?,
    ))
}

/// The communicators' rebuild under per-replica: `recovery.comm_rebuild` and its costs. The
/// abort's 1 s is an assumption (no published figure); the shrink law is fitted to NVIDIA
/// NeMo-RL's measurements (1.38 s at 32 ranks, 2.03 s at 1,024); a re-initialisation's 30 s is
/// MegaScale's optimised job initialisation at 10,000+ GPUs (1,047 s before).
fn validate_comm(src: &Source, r: &RawRecovery) -> Result<CommCosts, ScenarioError> {
    let rebuild = CommRebuild::from_name(&r.comm_rebuild).ok_or_else(|| {
        src.error(
            "recovery.comm_rebuild",
            format!(
                "unknown rebuild {:?}; expected \"shrink\" or \"reinit\"",
                r.comm_rebuild
            ),
        )
    })?;
    let hour = 3600 * SECOND_NS;
    let time = |key: &str, text: &str| duration_in(src, key, text, (0, hour), "from 0s to 1h");
    Ok(CommCosts {
        rebuild,
        abort_ns: time("recovery.comm_abort_time", &r.comm_abort_time)?,
        shrink_base_ns: time("recovery.comm_shrink_time", &r.comm_shrink_time)?,
        shrink_per_doubling_ns: time(
            "recovery.comm_shrink_per_doubling",
            &r.comm_shrink_per_doubling,
        )?,
        init_ns: time("recovery.comm_init_time", &r.comm_init_time)?,
    })
}

/// `recovery.desync_check` and its round latency: by default 25 us, an assumption (a TCP
/// round trip inside a data centre, as the gloo exchange of PyTorch's debug mode takes).
fn validate_desync_check(
    src: &Source,
    r: &RawRecovery,
) -> Result<Option<DesyncCheck>, ScenarioError> {
    let round_ns = duration_in(
        src,
        "recovery.desync_check_round",
        &r.desync_check_round,
        (1_000, SECOND_NS),
        "from 1us to 1s",
    )?;
    Ok(r.desync_check.then_some(DesyncCheck { round_ns }))
}

/// `[[faults.hang]]` and `[[faults.desync]]`, which only collective-level detection (the
/// watchdog, the progress monitor or, for a desync, the desync check) can notice.
fn validate_hangs(
    src: &Source,
    faults: &RawFaults,
    job: &JobConfig,
    control: &ControlConfig,
    gpus: usize,
) -> Result<(Vec<HangSpec>, Vec<DesyncSpec>), ScenarioError> {
    let hangs = hang::validate_hangs(src, &faults.hang, gpus, job.steps)?;
    let desyncs = hang::validate_desyncs(src, &faults.desync, gpus, job.steps)?;
    let watched = control
        .collective_timeout_ns
        .or(control.progress_timeout_ns);
    let (hang_rate, desync_rate) = control.gray_rates_per_node_per_ns;
    let first = match (hangs.is_empty(), desyncs.is_empty()) {
        (false, _) => "faults.hang.0",
        (true, false) => "faults.desync.0",
        _ if hang_rate > 0.0 => "faults.rates.hangs_per_1000_node_days",
        _ if desync_rate > 0.0 => "faults.rates.desyncs_per_1000_node_days",
        (true, true) => return Ok((hangs, desyncs)),
    };
    if watched.is_none() {
        return Err(src.error(
            first,
            "a hung or desynced rank stays alive, so only collective-level detection can \
             notice it: set recovery.collective_timeout or recovery.progress_timeout",
        ));
    }
    if (!desyncs.is_empty() || desync_rate > 0.0)
        && control.collective_timeout_ns.is_none()
        && control.desync_check.is_none()
    {
        let key = match desyncs.is_empty() {
            false => "faults.desync.0",
            true => "faults.rates.desyncs_per_1000_node_days",
        };
        return Err(src.error(
            key,
            "every rank of a desynced job is inside a collective, so no rank is behind and \
             the progress monitor cannot notice it: set recovery.collective_timeout or \
             recovery.desync_check",
        ));
    }
    Ok((hangs, desyncs))
}

/// `recovery.policy` and `recovery.fallback`, and whether together they can recover at all.
fn validate_policy(
    src: &Source,
    r: &RawRecovery,
    spare_nodes: usize,
) -> Result<(RecoveryPolicy, bool), ScenarioError> {
    let policy = RecoveryPolicy::from_name(&r.policy).ok_or_else(|| {
        src.error(
            "recovery.policy",
            format!(
                "unknown policy {:?}; expected \"restart\", \"in-memory\", \"hot-spare\" or \
                 \"per-replica\"",
                r.policy
            ),
        )
    })?;
    let fallback_to_restart = match r.fallback.as_str() {
        "restart" => true,
        "none" => false,
        other => {
            return Err(src.error(
                "recovery.fallback",
                format!("unknown fallback {other:?}; expected \"restart\" or \"none\""),
            ))
        }
    };
    if policy == RecoveryPolicy::HotSpare && spare_nodes == 0 && !fallback_to_restart {
        return Err(src.error(
            "recovery.policy",
            "hot-spare with cluster.spare_nodes = 0 and recovery.fallback = \"none\" cannot \
             recover from any failure; add spare nodes or fall back to \"restart\"",
        ));
    }
    Ok((policy, fallback_to_restart))
}

/// The random node failures: a rate per 1,000 node-days and an optional Weibull shape.
fn validate_node_failures(
    src: &Source,
    f: &RawFaults,
) -> Result<(f64, Option<f64>), ScenarioError> {
    let rate = f.rates.node_failures_per_1000_node_days;
    // 1e4 per 1,000 node-days is ten failures a node a day, a thousand times the field's.
    if !(rate.is_finite() && (0.0..=1e4).contains(&rate)) {
        return Err(src.error(
            "faults.rates.node_failures_per_1000_node_days",
            format!("expected a rate from 0 to 1e4, got {rate}"),
        ));
    }
    let weibull_shape = match f.rates.node_failure_weibull_shape {
        None => None,
        Some(shape) if shape.is_finite() && (0.1..=10.0).contains(&shape) => Some(shape),
        Some(shape) => {
            return Err(src.error(
                "faults.rates.node_failure_weibull_shape",
                format!("expected a Weibull shape from 0.1 to 10, got {shape}"),
            ))
        }
    };
    Ok((rate, weibull_shape))
}

/// `faults.rates.hangs_per_1000_node_days` and `desyncs_per_1000_node_days`, per node per
/// nanosecond.
fn validate_gray_rates(src: &Source, f: &RawFaults) -> Result<(f64, f64), ScenarioError> {
    let rate = |key: &str, rate: f64| {
        if !(rate.is_finite() && (0.0..=1e4).contains(&rate)) {
            return Err(src.error(key, format!("expected a rate from 0 to 1e4, got {rate}")));
        }
        Ok(rate / 1000.0 / 86_400e9)
    };
    Ok((
        rate(
            "faults.rates.hangs_per_1000_node_days",
            f.rates.hangs_per_1000_node_days,
        )?,
        rate(
            "faults.rates.desyncs_per_1000_node_days",
            f.rates.desyncs_per_1000_node_days,
        )?,
    ))
}

/// One `[[faults.crash]]` entry: exactly one target and exactly one time.
fn validate_crash(
    src: &Source,
    idx: usize,
    c: &RawCrash,
    gpus: usize,
    nodes: usize,
) -> Result<CrashSpec, ScenarioError> {
    let key = |field: &str| format!("faults.crash.{idx}.{field}");
    let target = match (c.node, c.gpu) {
        (Some(node), None) => {
            CrashTarget::Node(in_range(src, &key("node"), node, 0, nodes as i64 - 1)?)
        }
        (None, Some(gpu)) => CrashTarget::Gpu(in_range(src, &key("gpu"), gpu, 0, gpus as i64 - 1)?),
        _ => {
            return Err(src.error(
                &format!("faults.crash.{idx}"),
                "expected exactly one of `node` or `gpu`",
            ))
        }
    };
    let when = match (&c.at, c.at_step, c.after_commits) {
        (Some(at), None, None) => CrashWhen::AtNs(duration(src, &key("at"), at)?),
        (None, Some(step), None) => {
            CrashWhen::AtStep(in_range(src, &key("at_step"), step, 0, i64::MAX)? as u64)
        }
        (None, None, Some(commits)) => {
            CrashWhen::AfterCommits(
                in_range(src, &key("after_commits"), commits, 1, i64::MAX)? as u64
            )
        }
        _ => {
            return Err(src.error(
                &format!("faults.crash.{idx}"),
                "expected exactly one of `at` (a time), `at_step` or `after_commits`",
            ))
        }
    };
    Ok(CrashSpec { target, when })
}

fn j_seed(src: &Source, seed: i64) -> Result<u64, ScenarioError> {
    if seed < 0 {
        return Err(src.error(
            "run.seed",
            format!("expected a seed of 0 or more, got {seed}"),
        ));
    }
    Ok(seed as u64)
}
