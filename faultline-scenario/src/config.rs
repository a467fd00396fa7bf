//! The typed settings a scenario file becomes: the cluster, the fabric, storage, the job, and
//! every fault with its detection and recovery. These are plain data at the bottom of the
//! dependency graph: the loader (`load`) builds them, the simulator and the GPU runner read them,
//! and nothing here knows either of them.

use trainer_core::job::JobConfig;
use trainer_core::transport::RetryPolicy;

use crate::link::LinkRef;

/// Which executor runs the ranks. See `executor.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutorChoice {
    /// madsim up to [`AUTO_MADSIM_MAX_GPUS`] GPUs, first-in-first-out above.
    Auto,
    Madsim,
    Fifo,
}

/// Above this many GPUs `auto` picks the first-in-first-out executor, which keeps cache
/// locality at 100,000 tasks; below it madsim explores a seeded interleaving per seed.
pub const AUTO_MADSIM_MAX_GPUS: usize = 16_384;

/// The most virtual GPUs a scenario may ask for.
pub const MAX_GPUS: usize = 1_000_000;

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    pub gpus: usize,
    pub gpus_per_node: usize,
    /// Nodes whose rail-`j` NICs share one leaf switch (a scalable unit).
    pub nodes_per_leaf: usize,
    /// Leaf downlink bandwidth over uplink bandwidth; 1.0 is a non-blocking fat tree.
    pub oversubscription: f64,
    /// Clusters joined by inter-cluster links; nodes are split evenly between them.
    pub clusters: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FabricConfig {
    pub nvlink_bandwidth_bytes_per_s: f64,
    pub nvlink_latency_ns: u64,
    pub nic_bandwidth_bytes_per_s: f64,
    pub nic_latency_ns: u64,
    pub switch_link_bandwidth_bytes_per_s: f64,
    pub switch_latency_ns: u64,
    pub inter_cluster_bandwidth_bytes_per_s: f64,
    pub inter_cluster_latency_ns: u64,
    /// How a route that crosses spines picks one.
    pub routing: Routing,
}

trainer_core::named_enum! {
    /// How a flow between two leaves picks its spine (`fabric.routing`).
    pub enum Routing {
        /// Static ECMP: a hash of the (source, destination) pair, so flows that hash alike
        /// collide on one uplink, as they do on fabrics without adaptive routing.
        Ecmp = "ecmp",
        /// Adaptive: the spine whose uplink and downlink free up first when the flow starts,
        /// ties broken from the ECMP choice on; what InfiniBand AR and Spectrum-X do per flow.
        Adaptive = "adaptive",
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    pub seed: u64,
    pub executor: ExecutorChoice,
}

/// A loaded, validated scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// The file stem, e.g. `quickstart`.
    pub name: String,
    pub description: String,
    /// Whether the scenario is small enough for the CI snapshot test.
    pub ci: bool,
    pub cluster: ClusterConfig,
    pub fabric: FabricConfig,
    pub job: JobConfig,
    /// Peak FLOP rate times model FLOP utilisation: what modelled compute is charged at.
    pub gpu_achieved_flops_per_s: f64,
    pub storage: StorageConfig,
    /// Faults, detection and recovery. Their random draws derive from `run.seed`.
    pub control: ControlConfig,
    /// Link flaps and the transport policy.
    pub link_faults: LinkFaultConfig,
    /// Slowdowns, straggler scores and mitigation.
    pub stragglers: StragglerConfig,
    /// Fail-slow links (`[[faults.degrade]]`, the random rate) and the retransmission timeout.
    pub degrades: DegradeConfig,
    /// Silent data corruption to inject (`[[faults.sdc]]`) and the checksum cost.
    pub sdc: SdcConfig,
    pub run: RunConfig,
    /// `[debug] planted_bug`: a known bug planted in the trainer, accepted only with
    /// [`crate::ALLOW_PLANTED_BUGS_ENV`]`=1`, for tests of the swarm.
    pub planted_bug: Option<trainer_core::PlantedBug>,
}

impl Scenario {
    /// The same scenario with every fault switched off.
    pub fn without_faults(mut self) -> Scenario {
        self.control.crashes.clear();
        self.control.corruptions_at_ns.clear();
        self.storage.slow.clear();
        self.storage.failing.clear();
        self.control.node_failure_rate_per_ns = 0.0;
        self.control.hangs.clear();
        self.control.desyncs.clear();
        self.control.gray_rates_per_node_per_ns = (0.0, 0.0);
        self.link_faults.flaps.clear();
        self.link_faults.random_flap_rate_per_link_per_ns = 0.0;
        self.stragglers.stragglers.clear();
        self.degrades.degrades.clear();
        self.degrades.random_rate_per_link_per_ns = 0.0;
        self.sdc.specs.clear();
        self
    }

    pub fn placement(&self) -> trainer_core::Placement {
        trainer_core::Placement::new(self.cluster.gpus, self.cluster.gpus_per_node)
    }
}

// Storage: the tiers' speeds and the persistent store's faults.

#[derive(Clone, Debug, PartialEq)]
pub struct StorageConfig {
    pub host_bytes_per_s: f64,
    pub client_bytes_per_s: f64,
    pub aggregate_bytes_per_s: f64,
    pub persistent_latency_ns: u64,
    /// Storage faults: the persistent store is slower by a factor in these windows.
    pub slow: Vec<SlowWindow>,
    /// Persistent writes that would land in these windows fail instead.
    pub failing: Vec<Window>,
}

/// `from_ns..until_ns` of model time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub from_ns: u64,
    pub until_ns: u64,
}

impl Window {
    pub fn contains(&self, t_ns: u64) -> bool {
        (self.from_ns..self.until_ns).contains(&t_ns)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowWindow {
    pub window: Window,
    pub factor: f64,
}

/// An H100 node's host link and a large parallel file system.
impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            host_bytes_per_s: 25e9,
            client_bytes_per_s: 10e9,
            aggregate_bytes_per_s: 2e12,
            persistent_latency_ns: 1_000_000,
            slow: Vec::new(),
            failing: Vec::new(),
        }
    }
}

// Crashes and the controller's recovery.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashTarget {
    /// The node dies: its ranks and its host memory are lost.
    Node(usize),
    /// One GPU fails: its rank's process dies; the node's host memory survives.
    Gpu(usize),
}

/// `node 3` or `gpu 17`, as summaries and the swarm's descriptions write a target.
impl std::fmt::Display for CrashTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CrashTarget::Node(node) => write!(f, "node {node}"),
            CrashTarget::Gpu(gpu) => write!(f, "gpu {gpu}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashWhen {
    AtNs(u64),
    /// When the target's first rank begins this step for the first time.
    AtStep(u64),
    /// When the target's first rank begins a step after this many checkpoints were committed:
    /// a failure that finds a checkpoint to restore, whatever the persist takes.
    AfterCommits(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashSpec {
    pub target: CrashTarget,
    pub when: CrashWhen,
}

trainer_core::named_enum! {
    /// What the controller does after a failure. Where the trainer restores from is the
    /// trainer's checkpoint policy (`restore_from_memory`), set to match.
    pub enum RecoveryPolicy {
        /// Every rank restarts after `restart_time`; the job reloads from the persistent store.
        Restart = "restart",
        /// As `Restart`, but ranks restore from host memory (own, then the buddy's) when it
        /// survived.
        InMemory = "in-memory",
        /// A failed node is swapped for a spare in `spare_swap_time`; ranks restore from memory.
        /// Without spares left, the controller falls back to a full restart (or gives up).
        HotSpare = "hot-spare",
        /// A failed node is dropped from the replica group; the others go on without a restore
        /// and re-admit it after `replica_rejoin_time`. Below `min_replicas` nodes: a restart.
        PerReplica = "per-replica",
    }
}

trainer_core::named_enum! {
    /// Where in its step a hung rank stops (`faults.hang.point`).
    pub enum HangPoint {
        /// Before the step's compute: the input pipeline never delivers the batch.
        DataLoader = "data_loader",
        /// Inside the step's compute: a kernel never returns.
        Kernel = "kernel",
    }
}

/// A rank that stops at `at_step` and never issues that step's collectives, alive all along.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HangSpec {
    pub rank: usize,
    pub at_step: u64,
    pub point: HangPoint,
}

trainer_core::named_enum! {
    /// What a desynced rank's collective differs in from its peers' (`faults.desync.kind`).
    pub enum DesyncKind {
        /// It issues the collective after the one its peers issue (another op id at the same
        /// sequence number), as a rank that skipped a branch.
        Sequence = "sequence",
        /// The same collective with twice the bytes, as a rank whose tensor has another shape.
        Size = "size",
        /// Another op at the same place (an all-gather where its peers all-reduce).
        Op = "op",
    }
}

/// A rank that, for its first collective of `at_step`, issues another collective than its
/// peers (`kind` says how it differs). Its messages match none of theirs, as NCCL's mismatched
/// counts and ops leave the members waiting on chunks that never come: its peers wait in the
/// collective it skipped, and it in one they have not reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DesyncSpec {
    pub rank: usize,
    pub at_step: u64,
    pub kind: DesyncKind,
}

/// The desync check of PyTorch's debug mode (`TORCH_DISTRIBUTED_DEBUG=DETAIL`): before every
/// collective, its members exchange its fingerprint (op, group, sequence number, size) and
/// compare them. It costs every collective an exchange of `round_ns` per round of a
/// recursive-doubling all-gather over the group (`ceil(log2(members))` rounds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DesyncCheck {
    pub round_ns: u64,
}

trainer_core::named_enum! {
    /// How the per-replica policy rebuilds its communicators (`recovery.comm_rebuild`).
    pub enum CommRebuild {
        /// `ncclCommShrink` without the dropped ranks (after an error, in abort mode: the
        /// survivors abort first), and a grow when they rejoin.
        Shrink = "shrink",
        /// A new communicator from scratch (`ncclCommInitRank` on every member).
        Reinit = "reinit",
    }
}

/// What rebuilding the communicators costs, modelled on NCCL's recovery path: after an error
/// every survivor aborts its communicators (`abort_ns`), then the group is shrunk without the
/// failed ranks (`ncclCommShrink`, `shrink_base_ns + shrink_per_doubling_ns * log2(members)`,
/// fitted to NVIDIA NeMo-RL's 1.38 s at 32 ranks and 2.03 s at 1,024) or re-initialised
/// (`init_ns`); a rejoin grows it the same way with no abort (shrink's default mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommCosts {
    pub rebuild: CommRebuild,
    pub abort_ns: u64,
    pub shrink_base_ns: u64,
    pub shrink_per_doubling_ns: u64,
    pub init_ns: u64,
}

impl CommCosts {
    /// Rebuilding a communicator of `members` ranks, after an abort when `after_error`.
    pub fn rebuild_ns(&self, members: usize, after_error: bool) -> u64 {
        let abort = if after_error { self.abort_ns } else { 0 };
        let doublings = members.max(1).next_power_of_two().trailing_zeros() as u64;
        abort
            + match self.rebuild {
                CommRebuild::Shrink => {
                    self.shrink_base_ns + self.shrink_per_doubling_ns * doublings
                }
                CommRebuild::Reinit => self.init_ns,
            }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ControlConfig {
    pub policy: RecoveryPolicy,
    /// Spare nodes for `HotSpare`.
    pub spare_nodes: usize,
    pub spare_swap_time_ns: u64,
    /// With `HotSpare` and no spare left: restart in full (true) or give up (false).
    pub fallback_to_restart: bool,
    pub crashes: Vec<CrashSpec>,
    /// Ranks that hang (`[[faults.hang]]`), each once.
    pub hangs: Vec<HangSpec>,
    /// Ranks that desync (`[[faults.desync]]`), each once.
    pub desyncs: Vec<DesyncSpec>,
    /// Node failures per node per nanosecond, drawn as a Poisson process; 0 for none.
    pub node_failure_rate_per_ns: f64,
    /// Random hangs and desyncs per node per nanosecond (`faults.rates.hangs_per_1000_node_days`,
    /// `desyncs_per_1000_node_days`): each strikes a rank drawn at random at its next step.
    pub gray_rates_per_node_per_ns: (f64, f64),
    /// Draw the gaps between node failures from a Weibull of this shape (a renewal process
    /// with the same mean gap) instead of an exponential; as the planner does.
    pub node_failure_weibull_shape: Option<f64>,
    pub collective_timeout_ns: Option<u64>,
    /// The collective progress monitor's bound: a rank silent this long while its peers have
    /// started newer collectives is flagged. `None`: no monitor.
    pub progress_timeout_ns: Option<u64>,
    /// The pre-collective desync check (`recovery.desync_check`); `None`: off.
    pub desync_check: Option<DesyncCheck>,
    pub heartbeat_interval_ns: Option<u64>,
    pub heartbeat_misses: u64,
    pub restart_time_ns: u64,
    /// Per-replica: from a node's drop to its re-admission.
    pub replica_rejoin_time_ns: u64,
    /// Per-replica: the fewest live nodes the job goes on with.
    pub min_replicas: usize,
    /// Per-replica: what aborting and rebuilding the communicators costs.
    pub comm: CommCosts,
    pub max_restarts: u64,
    /// Times at which a bit flips in a shard of the newest committed checkpoint.
    pub corruptions_at_ns: Vec<u64>,
}

// Link flaps and the transport policy.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A transfer with no working path is lost; the collective watchdog must notice.
    Plain,
    /// The transport retries with backoff, rerouting each attempt, within a budget.
    Retry(RetryPolicy),
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Retry(_) => "retry",
        }
    }
}

/// One scheduled flap series on one full-duplex link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFlapSpec {
    /// The link's name as written (`nic:gpu=17`), for reports.
    pub name: String,
    /// The full-duplex link; both of its directions go down.
    pub link: LinkRef,
    pub at_ns: u64,
    pub down_ns: u64,
    pub count: u32,
    /// From one flap's start to the next one's.
    pub period_ns: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LinkFaultConfig {
    pub transport: Transport,
    pub flaps: Vec<LinkFlapSpec>,
    /// Random flaps per flappable link (NIC uplinks, leaf-spine links) per nanosecond, drawn
    /// as a Poisson process; 0 for none.
    pub random_flap_rate_per_link_per_ns: f64,
    /// How long a random flap keeps its link down.
    pub random_flap_down_ns: u64,
}

impl LinkFaultConfig {
    /// Whether any flap, scheduled or random, can happen.
    pub fn any(&self) -> bool {
        !self.flaps.is_empty() || self.random_flap_rate_per_link_per_ns > 0.0
    }
}

impl Default for LinkFaultConfig {
    fn default() -> Self {
        LinkFaultConfig {
            transport: Transport::Plain,
            flaps: Vec::new(),
            random_flap_rate_per_link_per_ns: 0.0,
            random_flap_down_ns: 0,
        }
    }
}

// Stragglers: slow GPUs and NICs, scores and mitigation.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StragglerTarget {
    Gpu(usize),
    /// Every GPU of the node.
    Node(usize),
}

/// `gpu 3` or `node 2`, as [`CrashTarget`] writes them.
impl std::fmt::Display for StragglerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StragglerTarget::Gpu(gpu) => write!(f, "gpu {gpu}"),
            StragglerTarget::Node(node) => write!(f, "node {node}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StragglerKind {
    /// Compute takes `factor` times longer (thermal throttling).
    Compute,
    /// The GPU's NIC links carry `1 / factor` of their bandwidth (a bad cable, a degraded
    /// port).
    Nic,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StragglerSpec {
    pub target: StragglerTarget,
    pub kind: StragglerKind,
    pub factor: f64,
    pub from_ns: u64,
    pub until_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StragglerDetection {
    /// Score (compute time over the step's median) above which a step counts against a rank.
    pub threshold: f64,
    /// Consecutive steps over the threshold that flag a rank.
    pub patience: u32,
    /// Evict a flagged rank's node and replace it (true), or only report it.
    pub evict: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct StragglerConfig {
    pub stragglers: Vec<StragglerSpec>,
    /// Per-rank scores; `None` collects no timings.
    pub detection: Option<StragglerDetection>,
}

// Fail-slow links: degraded bandwidth and loss for a while.

/// What a `[[faults.degrade]]` slows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DegradeTarget {
    /// One full-duplex link, both of its directions (`link = "leaf-spine:leaf=0,spine=1"`,
    /// or `nic = G` for `nic:gpu=G`).
    Link(LinkRef),
    /// Every NVLink of a node's GPUs, both directions (`nvlink = NODE`).
    NodeNvlinks(usize),
}

/// `link nic:gpu=3` or `node 2's NVLinks`, as reports and the swarm write a target.
impl std::fmt::Display for DegradeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DegradeTarget::Link(link) => write!(f, "link {link}"),
            DegradeTarget::NodeNvlinks(node) => write!(f, "node {node}'s NVLinks"),
        }
    }
}

/// One fail-slow episode: `target` keeps `bandwidth` of its bandwidth over
/// `at_ns..until_ns`, and loses each transfer crossing it with probability `loss` (the sender
/// resends it after the retransmission timeout).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DegradeSpec {
    pub target: DegradeTarget,
    /// The fraction of its bandwidth the link keeps, in (0, 1].
    pub bandwidth: f64,
    /// The chance that one crossing of the link by a transfer is lost, in [0, 1).
    pub loss: f64,
    pub at_ns: u64,
    pub until_ns: u64,
}

/// A communication fail-slow's mean duration: 24 minutes, as Alibaba's Greyhound (ATC'25)
/// measured over production jobs, where communication fail-slows were about 40% of cases.
pub const DEGRADE_DEFAULT_DURATION_NS: u64 = 24 * 60 * 1_000_000_000;

/// The bandwidth a degraded link keeps when a scenario does not say: an assumption (half),
/// not a published figure; Greyhound and FALCON report durations and job slowdowns, not the
/// bandwidth a degraded link keeps.
pub const DEGRADE_DEFAULT_BANDWIDTH: f64 = 0.5;

/// NCCL's InfiniBand QP timeout: 4.096 us x 2^`NCCL_IB_TIMEOUT`, whose default is 20 in
/// recent NCCL releases' `net_ib` transport (18 in 2.19): about 4.29 s before a lost packet
/// is resent.
pub const DEFAULT_RETRANSMIT_TIMEOUT_NS: u64 = 4_096 << 20;

/// The most retransmissions a transfer is drawn: `NCCL_IB_RETRY_CNT`'s default of 7. A real
/// queue pair fails the connection after that; faultline delivers the transfer (not modelled).
pub const MAX_RETRANSMISSIONS: u32 = 7;

#[derive(Clone, Debug, PartialEq)]
pub struct DegradeConfig {
    pub degrades: Vec<DegradeSpec>,
    /// Random degrades per flappable link (NIC uplinks, leaf-spine links) per nanosecond,
    /// drawn as a Poisson process; 0 for none.
    pub random_rate_per_link_per_ns: f64,
    /// A random degrade's duration, bandwidth kept and loss.
    pub random_duration_ns: u64,
    pub random_bandwidth: f64,
    pub random_loss: f64,
    /// How long a sender waits before resending a lost transfer.
    pub retransmit_timeout_ns: u64,
}

impl DegradeConfig {
    /// Whether any degrade, scheduled or random, can happen.
    pub fn any(&self) -> bool {
        !self.degrades.is_empty() || self.random_rate_per_link_per_ns > 0.0
    }
}

impl Default for DegradeConfig {
    fn default() -> Self {
        DegradeConfig {
            degrades: Vec::new(),
            random_rate_per_link_per_ns: 0.0,
            random_duration_ns: DEGRADE_DEFAULT_DURATION_NS,
            random_bandwidth: DEGRADE_DEFAULT_BANDWIDTH,
            random_loss: 0.0,
            retransmit_timeout_ns: DEFAULT_RETRANSMIT_TIMEOUT_NS,
        }
    }
}

// Silent data corruption.

trainer_core::named_enum! {
    /// Where silent data corruption strikes; named as the report counts it.
    pub enum SdcKind {
        /// Bits flip in a payload between sender and receiver.
        InFlight = "sdc_in_flight",
        /// A bit flips in one rank's gradient before the all-reduce.
        Gradient = "sdc_gradient",
        /// A bit flips in one replica's resident parameters.
        Parameters = "sdc_parameters",
        /// One GPU's reduction kernel is wrong on inputs matching a bit pattern.
        ReductionKernel = "sdc_reduction_kernel",
    }
}

/// A faulty kernel's trigger when the scenario gives none: the low 12 mantissa bits of a
/// source element equal 0xa5b, about one input in 4,096; integer-valued floats (votes, flags)
/// never match.
pub const DEFAULT_TRIGGER_MASK: u32 = 0xfff;
pub const DEFAULT_TRIGGER_VALUE: u32 = 0xa5b;

/// One `[[faults.sdc]]` entry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SdcSpec {
    pub kind: SdcKind,
    /// The receiving GPU (in flight), the replica (gradient, parameters) or the faulty GPU.
    pub gpu: usize,
    /// The step it happens at; for the kernel, the first step it is faulty.
    pub at_step: u64,
    /// The bit flipped (0 = lowest mantissa bit, 31 = sign); drawn per flip when absent.
    pub bit: Option<u32>,
    /// Flips at that step (in flight: consecutive deliveries, so resends can be hit too).
    pub count: u64,
    /// The kernel is wrong on a source element whose bits, masked, equal `trigger_value`.
    pub trigger_mask: u32,
    pub trigger_value: u32,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SdcConfig {
    pub specs: Vec<SdcSpec>,
    /// What computing and verifying a payload checksum costs, per modelled byte; 0: free.
    pub checksum_bytes_per_s: f64,
}
