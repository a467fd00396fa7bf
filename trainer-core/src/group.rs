//! Placement of ranks on nodes, and process groups (world, node-local, per-rail) described
//! arithmetically so that 100,000 ranks need no member lists.

/// How the world's ranks sit on nodes: rank `r` is local GPU `r % gpus_per_node` of node
/// `r / gpus_per_node`. The last node may hold fewer GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub world_size: usize,
    pub gpus_per_node: usize,
}

impl Placement {
    pub fn new(world_size: usize, gpus_per_node: usize) -> Placement {
        assert!(world_size > 0 && gpus_per_node > 0);
        Placement {
            world_size,
            gpus_per_node,
        }
    }

    pub fn node_count(&self) -> usize {
        self.world_size.div_ceil(self.gpus_per_node)
    }

    pub fn node_of(&self, rank: usize) -> usize {
        rank / self.gpus_per_node
    }

    pub fn local_idx_of(&self, rank: usize) -> usize {
        rank % self.gpus_per_node
    }

    /// GPUs on node `node`: `gpus_per_node`, or fewer on a partial last node.
    pub fn gpus_on_node(&self, node: usize) -> usize {
        let first = node * self.gpus_per_node;
        self.gpus_per_node.min(self.world_size - first)
    }

    pub fn world(&self) -> Group {
        Group::strided(0, 1, self.world_size)
    }

    /// The ranks of `node`.
    pub fn node_group(&self, node: usize) -> Group {
        Group::strided(node * self.gpus_per_node, 1, self.gpus_on_node(node))
    }

    /// Which local GPU of `node` owns chunk `chunk` (of `gpus_per_node` chunks) in the
    /// hierarchical algorithms: local `chunk` on a full node, `chunk % gpus` on a partial one.
    pub fn chunk_owner_local(&self, node: usize, chunk: usize) -> usize {
        chunk % self.gpus_on_node(node)
    }

    /// The rail of `chunk`: on every node, the GPU that owns that chunk. On full nodes this is
    /// local GPU `chunk`, so the group is the classic per-rail group.
    pub fn rail_group(&self, chunk: usize) -> Group {
        let node_count = self.node_count();
        let last_node = node_count - 1;
        let last = last_node * self.gpus_per_node + self.chunk_owner_local(last_node, chunk);
        Group {
            first: chunk,
            stride: self.gpus_per_node,
            count: node_count,
            last,
        }
    }
}

/// An ordered set of world ranks: `first + i * stride` for `i < count - 1`, then `last`.
/// `last` lets a rail group reach the owner on a partial last node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    first: usize,
    stride: usize,
    count: usize,
    last: usize,
}

impl Group {
    pub fn strided(first: usize, stride: usize, count: usize) -> Group {
        assert!(count > 0 && stride > 0);
        Group {
            first,
            stride,
            count,
            last: first + (count - 1) * stride,
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// World rank of member `idx`.
    pub fn member(&self, idx: usize) -> usize {
        debug_assert!(idx < self.count);
        if idx + 1 == self.count {
            self.last
        } else {
            self.first + idx * self.stride
        }
    }

    /// Member index of world rank `rank`, if it belongs to the group.
    pub fn index_of(&self, rank: usize) -> Option<usize> {
        if rank == self.last {
            return Some(self.count - 1);
        }
        if rank < self.first || (rank - self.first) % self.stride != 0 {
            return None;
        }
        let idx = (rank - self.first) / self.stride;
        (idx + 1 < self.count).then_some(idx)
    }

    /// True when the group is `0..count` in order, as the world group is.
    pub fn is_contiguous_from_zero(&self) -> bool {
        self.first == 0 && self.stride == 1 && self.last == self.count - 1
    }
}
