//! Placement of ranks on nodes, and process groups (world, node-local, per-rail) described
//! arithmetically so that 100,000 ranks need no member lists.
//!
//! A group may have holes: an arithmetic group minus a sorted list of excluded members, which
//! is how the per-replica recovery policy runs every collective over the world minus the nodes
//! it dropped. Only the holes are listed; a group without holes costs what it always did.

use std::sync::Arc;

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

    /// The world without the ranks of `dropped_nodes` (sorted, distinct, not every node).
    pub fn world_without_nodes(&self, dropped_nodes: &[usize]) -> Group {
        if dropped_nodes.is_empty() {
            return self.world();
        }
        let ranks: Vec<usize> = dropped_nodes
            .iter()
            .flat_map(|&node| {
                let first = node * self.gpus_per_node;
                first..first + self.gpus_on_node(node)
            })
            .collect();
        self.world().without(Arc::new(ranks))
    }

    /// The nodes whose ranks `group` leaves out of the world, sorted. Panics unless `group` is
    /// the world minus whole nodes: the hierarchical algorithm's replica unit is the node.
    pub fn dropped_nodes(&self, group: &Group) -> Vec<usize> {
        assert!(
            group.is_world_with_holes(self.world_size),
            "not a world group: {group:?}"
        );
        let mut nodes: Vec<usize> = group.excluded().iter().map(|&r| self.node_of(r)).collect();
        nodes.dedup();
        let whole: usize = nodes.iter().map(|&n| self.gpus_on_node(n)).sum();
        assert_eq!(
            whole,
            group.excluded().len(),
            "the hierarchical algorithm drops whole nodes only: {group:?}"
        );
        nodes
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
            last: small(last),
            ..Group::strided(chunk, self.gpus_per_node, node_count)
        }
    }
}

/// An ordered set of world ranks: the base `first + i * stride` for `i < base_count - 1`, then
/// `last` (which lets a rail group reach the owner on a partial last node), minus the base
/// members listed in `excluded`. Members keep the base order; member indices count the
/// remaining ones only.
///
/// The four numbers are kept as `u32` (a world of up to 4 billion ranks): every collective's
/// context holds a group, and every byte of it is in every rank's future.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    first: u32,
    stride: u32,
    base_count: u32,
    last: u32,
    /// Base member indices left out, sorted and distinct; `None` when there are none, so that
    /// the common case is one untaken branch. An `Arc` of a `Vec` rather than of a slice: a
    /// thin pointer, 8 bytes less in each context.
    excluded: Option<Arc<Vec<usize>>>,
}

impl Group {
    pub fn strided(first: usize, stride: usize, count: usize) -> Group {
        assert!(count > 0 && stride > 0);
        Group {
            first: small(first),
            stride: small(stride),
            base_count: small(count),
            last: small(first + (count - 1) * stride),
            excluded: None,
        }
    }

    fn base_count(&self) -> usize {
        self.base_count as usize
    }

    /// This group without the base members at `excluded` (sorted, distinct, in range, not
    /// all of them). The `Arc` lets groups with the same holes share one list.
    pub fn without(self, excluded: Arc<Vec<usize>>) -> Group {
        assert!(
            excluded.windows(2).all(|w| w[0] < w[1]),
            "excluded members must be sorted and distinct"
        );
        assert!(
            excluded.last().is_none_or(|&e| e < self.base_count()),
            "excluded member outside the group"
        );
        assert!(excluded.len() < self.base_count(), "a group needs a member");
        Group {
            excluded: (!excluded.is_empty()).then_some(excluded),
            ..self
        }
    }

    /// Base member indices left out (empty without holes).
    pub fn excluded(&self) -> &[usize] {
        self.excluded.as_deref().map_or(&[], Vec::as_slice)
    }

    /// The arithmetic base, as (first, stride, member count, last member): what names the
    /// group in a flight recorder's entries, with [`Group::excluded`]'s length.
    pub fn base_shape(&self) -> (u32, u32, u32, u32) {
        (self.first, self.stride, self.base_count, self.last)
    }

    pub fn has_holes(&self) -> bool {
        self.excluded.is_some()
    }

    pub fn count(&self) -> usize {
        match &self.excluded {
            None => self.base_count(),
            Some(excluded) => self.base_count() - excluded.len(),
        }
    }

    /// World rank of member `idx`.
    pub fn member(&self, idx: usize) -> usize {
        match &self.excluded {
            None => self.base_member(idx),
            Some(excluded) => {
                // Each hole at or before the base index moves the member one further on.
                let mut base_idx = idx;
                for &hole in excluded.iter() {
                    if hole > base_idx {
                        break;
                    }
                    base_idx += 1;
                }
                self.base_member(base_idx)
            }
        }
    }

    fn base_member(&self, idx: usize) -> usize {
        debug_assert!(idx < self.base_count());
        if idx + 1 == self.base_count() {
            self.last as usize
        } else {
            self.first as usize + idx * self.stride as usize
        }
    }

    /// Member index of world rank `rank`, if it belongs to the group.
    pub fn index_of(&self, rank: usize) -> Option<usize> {
        let base_idx = self.base_index_of(rank)?;
        match &self.excluded {
            None => Some(base_idx),
            Some(excluded) => match excluded.binary_search(&base_idx) {
                Ok(_) => None,
                Err(holes_before) => Some(base_idx - holes_before),
            },
        }
    }

    fn base_index_of(&self, rank: usize) -> Option<usize> {
        let (first, stride) = (self.first as usize, self.stride as usize);
        if rank == self.last as usize {
            return Some(self.base_count() - 1);
        }
        if rank < first || (rank - first) % stride != 0 {
            return None;
        }
        let idx = (rank - first) / stride;
        (idx + 1 < self.base_count()).then_some(idx)
    }

    /// True when the group is `0..count` in order, as the world group is.
    pub fn is_contiguous_from_zero(&self) -> bool {
        self.excluded.is_none()
            && self.first == 0
            && self.stride == 1
            && self.last + 1 == self.base_count
    }

    /// True when the group is `0..world_size` minus holes: the world, perhaps with ranks
    /// dropped.
    pub fn is_world_with_holes(&self, world_size: usize) -> bool {
        self.first == 0 && self.stride == 1 && self.base_count() == world_size
    }
}

/// A rank number or count as a group stores it.
fn small(n: usize) -> u32 {
    u32::try_from(n).expect("a group of at most 4 billion ranks")
}
