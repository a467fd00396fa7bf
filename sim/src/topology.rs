//! The cluster's shape: GPUs on nodes behind an NVSwitch, one NIC per GPU wired rail-optimised
//! to leaf switches (local GPU `j` of every node in a scalable unit shares the rail-`j` leaf),
//! leaves to spines with a configurable oversubscription, and optionally several clusters
//! joined through a core.
//!
//! Two views of one shape. Routing on the hot path is arithmetic over numbered directed links
//! (`route`), O(1) per message at 100,000 GPUs. The petgraph view (`graph`) is built on demand
//! for the `topo` summary, Graphviz output and the tests that check every arithmetic route is a
//! shortest path of the graph.

use petgraph::graph::{NodeIndex, UnGraph};

use faultline_scenario::{ClusterConfig, FabricConfig, LinkRef};
use trainer_core::digest::mix64;

/// Index of a directed link in [`Topology::links`].
pub type LinkId = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkKind {
    /// GPU to NVSwitch or back.
    NvLink,
    /// GPU's NIC to its leaf switch or back.
    Nic,
    /// Leaf to spine or back.
    LeafSpine,
    /// A cluster's spines to the core or back.
    InterCluster,
}

#[derive(Clone, Copy, Debug)]
pub struct LinkSpec {
    pub kind: LinkKind,
    pub bandwidth_bytes_per_s: f64,
    pub latency_ns: u64,
}

/// A path: up to six directed links.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    links: [LinkId; 6],
    len: u8,
}

impl Route {
    fn push(&mut self, link: LinkId) {
        self.links[self.len as usize] = link;
        self.len += 1;
    }

    pub fn links(&self) -> &[LinkId] {
        &self.links[..self.len as usize]
    }
}

#[derive(Clone, Debug)]
pub struct Topology {
    pub cluster: ClusterConfig,
    pub fabric: FabricConfig,
    node_count: usize,
    nodes_per_cluster: usize,
    /// Scalable units (groups of `nodes_per_leaf` nodes) per cluster.
    units_per_cluster: usize,
    /// Uplinks per leaf, one to each spine of its cluster.
    uplinks_per_leaf: usize,
    leaf_count: usize,
    /// The divisors routing uses on every message, prepared once.
    per_node: Divisor,
    per_cluster: Divisor,
    per_leaf: Divisor,
    /// First link id of each block.
    leaf_link_base: u32,
    cluster_link_base: u32,
    link_count: u32,
}

impl Topology {
    pub fn new(cluster: &ClusterConfig, fabric: &FabricConfig) -> Topology {
        let uplinks_per_leaf = cluster.uplinks_per_leaf();
        let leaf_count = cluster.leaf_count();
        let leaf_link_base = 4 * cluster.gpus as u32;
        let cluster_link_base = leaf_link_base + 2 * (leaf_count * uplinks_per_leaf) as u32;
        let link_count = cluster_link_base + 2 * cluster.clusters as u32;
        Topology {
            cluster: cluster.clone(),
            fabric: fabric.clone(),
            node_count: cluster.node_count(),
            nodes_per_cluster: cluster.nodes_per_cluster(),
            units_per_cluster: cluster.units_per_cluster(),
            uplinks_per_leaf,
            leaf_count,
            per_node: Divisor::new(cluster.gpus_per_node),
            per_cluster: Divisor::new(cluster.nodes_per_cluster()),
            per_leaf: Divisor::new(cluster.nodes_per_leaf),
            leaf_link_base,
            cluster_link_base,
            link_count,
        }
    }

    pub fn gpu_count(&self) -> usize {
        self.cluster.gpus
    }

    pub fn node_count(&self) -> usize {
        self.node_count
    }

    pub fn leaf_count(&self) -> usize {
        self.leaf_count
    }

    pub fn spine_count(&self) -> usize {
        self.cluster.clusters * self.uplinks_per_leaf
    }

    pub fn link_count(&self) -> usize {
        self.link_count as usize
    }

    fn node_of(&self, gpu: usize) -> usize {
        self.per_node.div(gpu)
    }

    fn cluster_of_node(&self, node: usize) -> usize {
        self.per_cluster.div(node)
    }

    /// The leaf switch that GPU `gpu`'s NIC plugs into.
    pub fn leaf_of(&self, gpu: usize) -> usize {
        let gpus_per_node = self.cluster.gpus_per_node;
        let node = self.node_of(gpu);
        let cluster = self.cluster_of_node(node);
        let unit = self.per_leaf.div(node - cluster * self.nodes_per_cluster);
        let rail = gpu - node * gpus_per_node;
        (cluster * self.units_per_cluster + unit) * gpus_per_node + rail
    }

    /// The first of GPU `gpu`'s own four links (NVLink up and down, NIC up and down, in that
    /// order and side by side): every route from or to the GPU starts or ends on one of them.
    pub fn first_link_of_gpu(gpu: usize) -> LinkId {
        Self::nvlink_up(gpu)
    }

    fn nvlink_up(gpu: usize) -> LinkId {
        4 * gpu as u32
    }
    fn nvlink_down(gpu: usize) -> LinkId {
        4 * gpu as u32 + 1
    }
    fn nic_up(gpu: usize) -> LinkId {
        4 * gpu as u32 + 2
    }
    fn nic_down(gpu: usize) -> LinkId {
        4 * gpu as u32 + 3
    }
    fn leaf_up(&self, leaf: usize, spine: usize) -> LinkId {
        self.leaf_link_base + 2 * (leaf * self.uplinks_per_leaf + spine) as u32
    }
    fn leaf_down(&self, leaf: usize, spine: usize) -> LinkId {
        self.leaf_up(leaf, spine) + 1
    }
    fn cluster_up(&self, cluster: usize) -> LinkId {
        self.cluster_link_base + 2 * cluster as u32
    }
    fn cluster_down(&self, cluster: usize) -> LinkId {
        self.cluster_up(cluster) + 1
    }

    /// Full-duplex links that random flaps strike: every NIC uplink and every leaf-spine link.
    pub fn flappable_link_count(&self) -> usize {
        self.cluster.gpus + self.leaf_count * self.uplinks_per_leaf
    }

    /// The first directed link of flappable link `idx` (in `0..flappable_link_count()`).
    pub fn flappable_link(&self, idx: usize) -> LinkId {
        if idx < self.cluster.gpus {
            Self::nic_up(idx)
        } else {
            self.leaf_link_base + 2 * (idx - self.cluster.gpus) as u32
        }
    }

    /// The GPU whose NIC link (either direction) `link` is, if it is one.
    pub fn nic_gpu(&self, link: LinkId) -> Option<usize> {
        (link < self.leaf_link_base && link % 4 >= 2).then_some((link / 4) as usize)
    }

    /// What link `link` is and how fast it is.
    pub fn link_spec(&self, link: LinkId) -> LinkSpec {
        let f = &self.fabric;
        if link < self.leaf_link_base {
            if link % 4 < 2 {
                LinkSpec {
                    kind: LinkKind::NvLink,
                    bandwidth_bytes_per_s: f.nvlink_bandwidth_bytes_per_s,
                    latency_ns: f.nvlink_latency_ns,
                }
            } else {
                LinkSpec {
                    kind: LinkKind::Nic,
                    bandwidth_bytes_per_s: f.nic_bandwidth_bytes_per_s,
                    latency_ns: f.nic_latency_ns,
                }
            }
        } else if link < self.cluster_link_base {
            LinkSpec {
                kind: LinkKind::LeafSpine,
                bandwidth_bytes_per_s: f.switch_link_bandwidth_bytes_per_s,
                latency_ns: f.switch_latency_ns,
            }
        } else {
            LinkSpec {
                kind: LinkKind::InterCluster,
                bandwidth_bytes_per_s: f.inter_cluster_bandwidth_bytes_per_s,
                latency_ns: f.inter_cluster_latency_ns,
            }
        }
    }

    /// The spine a flow from `src` to `dst` crosses: a hash of the pair, so one flow keeps one
    /// path (no reordering) and flows spread over the spines, as ECMP does.
    fn ecmp_spine(&self, src: usize, dst: usize) -> usize {
        (mix64(((src as u64) << 32) ^ dst as u64) % self.uplinks_per_leaf as u64) as usize
    }

    /// The directed links a message from GPU `src` to GPU `dst` crosses. Shortest path, with a
    /// deterministic ECMP choice of spine.
    pub fn route(&self, src: usize, dst: usize) -> Route {
        self.route_via_spine(src, dst, self.ecmp_spine(src, dst))
    }

    /// Spines each leaf has an uplink to: the choices a leaf-to-leaf route has.
    pub fn spines_per_leaf(&self) -> usize {
        self.uplinks_per_leaf
    }

    /// The spine `route` picks for a flow (the ECMP hash).
    pub fn default_spine(&self, src: usize, dst: usize) -> usize {
        self.ecmp_spine(src, dst)
    }

    /// As [`Topology::route`], but through spine `spine` (of the source's cluster) when the
    /// route crosses spines: the other equal-cost paths, for rerouting around a dead uplink.
    #[inline]
    pub fn route_via_spine(&self, src: usize, dst: usize, spine: usize) -> Route {
        let mut route = Route::default();
        if src == dst {
            return route;
        }
        let (src_node, dst_node) = (self.node_of(src), self.node_of(dst));
        if src_node == dst_node {
            route.push(Self::nvlink_up(src));
            route.push(Self::nvlink_down(dst));
            return route;
        }
        let (src_leaf, dst_leaf) = (self.leaf_of(src), self.leaf_of(dst));
        route.push(Self::nic_up(src));
        if src_leaf != dst_leaf {
            route.push(self.leaf_up(src_leaf, spine));
            let (src_cluster, dst_cluster) = (
                self.cluster_of_node(src_node),
                self.cluster_of_node(dst_node),
            );
            if src_cluster != dst_cluster {
                route.push(self.cluster_up(src_cluster));
                route.push(self.cluster_down(dst_cluster));
            }
            route.push(self.leaf_down(dst_leaf, spine));
        }
        route.push(Self::nic_down(dst));
        route
    }

    /// The two links of a cross-leaf route from `src` to `dst` that depend on its spine: the
    /// source leaf's uplink to `spine` and the destination leaf's downlink from it (what
    /// [`Topology::route_via_spine`] puts second and last but one).
    #[inline]
    pub fn spine_links(&self, src: usize, dst: usize, spine: usize) -> (LinkId, LinkId) {
        let (src_leaf, dst_leaf) = (self.leaf_of(src), self.leaf_of(dst));
        (
            self.leaf_up(src_leaf, spine),
            self.leaf_down(dst_leaf, spine),
        )
    }

    /// Parses a link name (see [`Topology::link_name`]) into its two directed links, or says
    /// what is wrong and what names exist.
    pub fn parse_link(&self, name: &str) -> Result<(LinkId, LinkId), String> {
        LinkRef::parse(name, &self.cluster).map(|link| self.link_ids(link))
    }

    /// The two directed links (up, then down) of a full-duplex link.
    pub fn link_ids(&self, link: LinkRef) -> (LinkId, LinkId) {
        let up = match link {
            LinkRef::NvLink { gpu } => Self::nvlink_up(gpu),
            LinkRef::Nic { gpu } => Self::nic_up(gpu),
            LinkRef::LeafSpine { leaf, spine } => self.leaf_up(leaf, spine),
            LinkRef::InterCluster { cluster } => self.cluster_up(cluster),
        };
        (up, up + 1)
    }

    /// The full-duplex link that directed link `link` belongs to.
    pub fn link_ref(&self, link: LinkId) -> LinkRef {
        if link < self.leaf_link_base {
            let gpu = (link / 4) as usize;
            match link % 4 {
                0 | 1 => LinkRef::NvLink { gpu },
                _ => LinkRef::Nic { gpu },
            }
        } else if link < self.cluster_link_base {
            let idx = ((link - self.leaf_link_base) / 2) as usize;
            let (leaf, spine) = (idx / self.uplinks_per_leaf, idx % self.uplinks_per_leaf);
            LinkRef::LeafSpine { leaf, spine }
        } else {
            let cluster = ((link - self.cluster_link_base) / 2) as usize;
            LinkRef::InterCluster { cluster }
        }
    }

    /// The name of the full-duplex link that directed link `link` belongs to, in the grammar
    /// [`Topology::parse_link`] reads.
    pub fn link_name(&self, link: LinkId) -> String {
        self.link_ref(link).to_string()
    }

    /// Bisection bandwidth of the Clos: the least of what the NICs, the leaf uplinks and the
    /// inter-cluster links can carry across a cut through the middle, per direction.
    pub fn bisection_bandwidth_bytes_per_s(&self) -> f64 {
        let f = &self.fabric;
        let nics = self.cluster.gpus as f64 * f.nic_bandwidth_bytes_per_s / 2.0;
        let uplinks = (self.leaf_count * self.uplinks_per_leaf) as f64
            * f.switch_link_bandwidth_bytes_per_s
            / 2.0;
        let mut bisection = nics.min(uplinks);
        if self.cluster.clusters > 1 {
            let core = self.cluster.clusters as f64 * f.inter_cluster_bandwidth_bytes_per_s / 2.0;
            bisection = bisection.min(core);
        }
        bisection
    }

    /// The whole cluster as an undirected petgraph graph, one vertex per GPU, NIC, NVSwitch,
    /// leaf, spine and core, one edge per full-duplex link.
    pub fn graph(&self) -> TopologyGraph {
        let mut graph = UnGraph::<Vertex, LinkKind>::new_undirected();
        let gpus: Vec<NodeIndex> = (0..self.cluster.gpus)
            .map(|g| graph.add_node(Vertex::Gpu(g)))
            .collect();
        let nvswitches: Vec<NodeIndex> = (0..self.node_count)
            .map(|n| graph.add_node(Vertex::NvSwitch(n)))
            .collect();
        let leaves: Vec<NodeIndex> = (0..self.leaf_count)
            .map(|l| graph.add_node(Vertex::Leaf(l)))
            .collect();
        let spines: Vec<NodeIndex> = (0..self.spine_count())
            .map(|s| graph.add_node(Vertex::Spine(s)))
            .collect();
        for (gpu, &vertex) in gpus.iter().enumerate() {
            graph.add_edge(vertex, nvswitches[self.node_of(gpu)], LinkKind::NvLink);
            let nic = graph.add_node(Vertex::Nic(gpu));
            graph.add_edge(vertex, nic, LinkKind::Nic);
            graph.add_edge(nic, leaves[self.leaf_of(gpu)], LinkKind::Nic);
        }
        let leaves_per_cluster = self.units_per_cluster * self.cluster.gpus_per_node;
        for (leaf, &vertex) in leaves.iter().enumerate() {
            let cluster = leaf / leaves_per_cluster;
            for spine in 0..self.uplinks_per_leaf {
                let s = spines[cluster * self.uplinks_per_leaf + spine];
                graph.add_edge(vertex, s, LinkKind::LeafSpine);
            }
        }
        let mut core = None;
        if self.cluster.clusters > 1 {
            let c = graph.add_node(Vertex::Core);
            for &s in &spines {
                graph.add_edge(s, c, LinkKind::InterCluster);
            }
            core = Some(c);
        }
        TopologyGraph { graph, gpus, core }
    }
}

/// Division by a number fixed when the topology is built, as a multiply and a shift: routing
/// divides about ten times per message, and a hardware division costs tens of cycles. Exact
/// for every numerator and divisor below 2^32 (Lemire, Kaser and Kurz, "Faster remainder by
/// direct computation", 2019).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Divisor {
    divisor: u64,
    /// ceil(2^64 / divisor); unused when the divisor is 1.
    multiplier: u64,
}

impl Divisor {
    pub(crate) fn new(divisor: usize) -> Divisor {
        assert!((1..1 << 32).contains(&divisor));
        let divisor = divisor as u64;
        Divisor {
            divisor,
            multiplier: if divisor == 1 {
                0
            } else {
                u64::MAX / divisor + 1
            },
        }
    }

    pub(crate) fn div(self, numerator: usize) -> usize {
        debug_assert!(numerator < 1 << 32);
        if self.divisor == 1 {
            return numerator;
        }
        ((self.multiplier as u128 * numerator as u128) >> 64) as usize
    }
}

/// One vertex of the petgraph view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vertex {
    Gpu(usize),
    Nic(usize),
    NvSwitch(usize),
    Leaf(usize),
    Spine(usize),
    Core,
}

pub struct TopologyGraph {
    pub graph: UnGraph<Vertex, LinkKind>,
    pub gpus: Vec<NodeIndex>,
    pub core: Option<NodeIndex>,
}

impl TopologyGraph {
    /// Graphviz text: switches as boxes, GPUs as ellipses, edges labelled by link kind.
    pub fn to_dot(&self) -> String {
        use std::fmt::Write;
        let mut out = String::from("graph cluster {\n  node [fontsize=10];\n");
        for idx in self.graph.node_indices() {
            let (label, shape) = match self.graph[idx] {
                Vertex::Gpu(g) => (format!("gpu{g}"), "ellipse"),
                Vertex::Nic(g) => (format!("nic{g}"), "point"),
                Vertex::NvSwitch(n) => (format!("nvswitch{n}"), "box"),
                Vertex::Leaf(l) => (format!("leaf{l}"), "box"),
                Vertex::Spine(s) => (format!("spine{s}"), "box"),
                Vertex::Core => ("core".to_string(), "doubleoctagon"),
            };
            let _ = writeln!(
                out,
                "  v{} [label=\"{label}\", shape={shape}];",
                idx.index()
            );
        }
        for edge in self.graph.edge_indices() {
            let (a, b) = self.graph.edge_endpoints(edge).expect("edge exists");
            let kind = match self.graph[edge] {
                LinkKind::NvLink => "nvlink",
                LinkKind::Nic => "nic",
                LinkKind::LeafSpine => "leaf-spine",
                LinkKind::InterCluster => "inter-cluster",
            };
            let _ = writeln!(
                out,
                "  v{} -- v{} [label=\"{kind}\"];",
                a.index(),
                b.index()
            );
        }
        out.push_str("}\n");
        out
    }
}
