//! Names of the fabric's full-duplex links (`nic:gpu=17`, `leaf-spine:leaf=3,spine=5`), read
//! and written in one grammar, and the arithmetic of the cluster's shape that says which names
//! exist. The simulator's topology numbers its directed links from the same arithmetic; a
//! [`LinkRef`] is what a scenario names, a link id is what the fabric routes over.

use std::fmt;

use crate::config::ClusterConfig;

/// One full-duplex link of the cluster, as a scenario names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkRef {
    /// A GPU's link to its node's NVSwitch.
    NvLink { gpu: usize },
    /// A GPU's NIC to its rail's leaf switch.
    Nic { gpu: usize },
    /// A leaf switch's uplink to one spine of its cluster.
    LeafSpine { leaf: usize, spine: usize },
    /// A cluster's link to the core that joins the clusters.
    InterCluster { cluster: usize },
}

const GRAMMAR: &str = "expected \"nvlink:gpu=G\", \"nic:gpu=G\", \
                       \"leaf-spine:leaf=L,spine=S\" or \"inter-cluster:cluster=C\"";

impl LinkRef {
    /// Parses a link name and checks that the link exists in `cluster`, or says what is wrong
    /// and which names exist.
    pub fn parse(name: &str, cluster: &ClusterConfig) -> Result<LinkRef, String> {
        let syntax = || format!("{GRAMMAR}, got {name:?}");
        let (kind, args) = name.split_once(':').ok_or_else(syntax)?;
        let mut fields = Vec::new();
        for part in args.split(',') {
            let (key, value) = part.split_once('=').ok_or_else(syntax)?;
            let value: usize = value
                .trim()
                .parse()
                .map_err(|_| format!("{} (`{}` is not a number)", syntax(), key.trim()))?;
            fields.push((key.trim(), value));
        }
        let field = |want: &str, count: usize| -> Result<usize, String> {
            match fields.iter().find(|(k, _)| *k == want).map(|(_, v)| *v) {
                None => Err(format!("{} (no `{want}`)", syntax())),
                Some(v) if v >= count => Err(format!(
                    "{want} {v} does not exist in {name:?}: there are {count} (0 to {})",
                    count - 1
                )),
                Some(v) => Ok(v),
            }
        };
        let arity = match kind.trim() {
            "leaf-spine" => 2,
            _ => 1,
        };
        if fields.len() > arity {
            return Err(syntax());
        }
        let link = match kind.trim() {
            "nvlink" => LinkRef::NvLink {
                gpu: field("gpu", cluster.gpus)?,
            },
            "nic" => LinkRef::Nic {
                gpu: field("gpu", cluster.gpus)?,
            },
            "leaf-spine" => LinkRef::LeafSpine {
                leaf: field("leaf", cluster.leaf_count())?,
                spine: field("spine", cluster.uplinks_per_leaf())?,
            },
            "inter-cluster" => {
                if cluster.clusters < 2 {
                    return Err("a single cluster has no inter-cluster links".into());
                }
                LinkRef::InterCluster {
                    cluster: field("cluster", cluster.clusters)?,
                }
            }
            _ => return Err(syntax()),
        };
        Ok(link)
    }
}

/// The name [`LinkRef::parse`] reads.
impl fmt::Display for LinkRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkRef::NvLink { gpu } => write!(f, "nvlink:gpu={gpu}"),
            LinkRef::Nic { gpu } => write!(f, "nic:gpu={gpu}"),
            LinkRef::LeafSpine { leaf, spine } => write!(f, "leaf-spine:leaf={leaf},spine={spine}"),
            LinkRef::InterCluster { cluster } => write!(f, "inter-cluster:cluster={cluster}"),
        }
    }
}

/// The shape's arithmetic: nodes, scalable units, leaves and their uplinks. The topology
/// builds its link numbering from these, so a name that parses here is a link there.
impl ClusterConfig {
    pub fn node_count(&self) -> usize {
        self.gpus.div_ceil(self.gpus_per_node)
    }

    pub fn nodes_per_cluster(&self) -> usize {
        self.node_count().div_ceil(self.clusters)
    }

    /// Scalable units (groups of `nodes_per_leaf` nodes) per cluster.
    pub fn units_per_cluster(&self) -> usize {
        self.nodes_per_cluster().div_ceil(self.nodes_per_leaf)
    }

    /// Uplinks per leaf, one to each spine of its cluster: the leaf's downlinks over the
    /// oversubscription, at least one.
    pub fn uplinks_per_leaf(&self) -> usize {
        let downlinks = self.nodes_per_leaf.min(self.nodes_per_cluster());
        ((downlinks as f64 / self.oversubscription).ceil() as usize).max(1)
    }

    /// One leaf per rail per scalable unit.
    pub fn leaf_count(&self) -> usize {
        self.clusters * self.units_per_cluster() * self.gpus_per_node
    }
}
