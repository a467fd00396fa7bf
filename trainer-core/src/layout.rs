//! Parallelism layouts: how a world of `tp * pp * dp` ranks is cut into tensor-parallel (TP),
//! pipeline (PP) and data-parallel (DP) groups. Everything is arithmetic on the rank number, as
//! the world, node and rail groups are: no member lists, whatever the world's size.
//!
//! A rank's coordinates are its TP rank (which slice of each weight matrix it holds), its stage
//! (which contiguous layers) and its DP rank (which replica of that shard). The order says how
//! the three dimensions are laid over rank numbers, innermost first, as Megatron-LM's
//! `--order` does: TP is always innermost, so that with `tp` dividing the GPUs per node a TP
//! group is a block of consecutive ranks inside one node's NVLink domain.

use std::ops::Range;

use crate::group::Group;

crate::named_enum! {
    /// How the layout's dimensions are laid over rank numbers, innermost first.
    pub enum RankOrder {
        /// Megatron-LM's default: TP innermost, then DP, then PP outermost. A stage's replicas
        /// sit next to each other; the pipeline's stages are far apart.
        TpDpPp = "tp-dp-pp",
        /// DP outermost: one pipeline (`tp * pp` ranks) is a block of consecutive ranks, and a
        /// shard's replicas are `tp * pp` ranks apart.
        TpPpDp = "tp-pp-dp",
    }
}

crate::named_enum! {
    /// What the data-parallel replicas of a shard keep whole and what they split.
    pub enum DpSharding {
        /// Every replica holds the whole shard and its optimizer state: an all-reduce of the
        /// gradient.
        None = "none",
        /// ZeRO-1: each replica updates its own part of the shard (reduce-scatter of the
        /// gradient), then the parts are all-gathered.
        Optimizer = "optimizer",
        /// ZeRO-3 / FSDP: the parameters themselves are split; they are all-gathered before
        /// use and the gradient is reduce-scattered.
        Full = "full",
    }
}

/// Where a rank sits in the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Coords {
    pub tp_rank: usize,
    pub stage: usize,
    pub dp_rank: usize,
}

/// A layout of `tp * pp * dp` ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub tp: usize,
    pub pp: usize,
    pub dp: usize,
    pub order: RankOrder,
}

impl Layout {
    pub fn new(tp: usize, pp: usize, dp: usize, order: RankOrder) -> Layout {
        assert!(tp > 0 && pp > 0 && dp > 0, "a layout of {tp} x {pp} x {dp}");
        Layout { tp, pp, dp, order }
    }

    pub fn world_size(&self) -> usize {
        self.tp * self.pp * self.dp
    }

    /// The distance in rank numbers between neighbours in DP, then in PP.
    fn strides(&self) -> (usize, usize) {
        match self.order {
            RankOrder::TpDpPp => (self.tp, self.tp * self.dp),
            RankOrder::TpPpDp => (self.tp * self.pp, self.tp),
        }
    }

    pub fn coords(&self, rank: usize) -> Coords {
        debug_assert!(rank < self.world_size());
        let (dp_stride, pp_stride) = self.strides();
        Coords {
            tp_rank: rank % self.tp,
            stage: rank / pp_stride % self.pp,
            dp_rank: rank / dp_stride % self.dp,
        }
    }

    pub fn rank_of(&self, coords: Coords) -> usize {
        let (dp_stride, pp_stride) = self.strides();
        coords.tp_rank + coords.dp_rank * dp_stride + coords.stage * pp_stride
    }

    /// The ranks that split one stage's layers between them: `tp` consecutive ranks.
    pub fn tp_group(&self, rank: usize) -> Group {
        Group::strided(rank - rank % self.tp, 1, self.tp)
    }

    /// The replicas of this rank's shard, in DP-rank order.
    pub fn dp_group(&self, rank: usize) -> Group {
        let first = self.rank_of(Coords {
            dp_rank: 0,
            ..self.coords(rank)
        });
        Group::strided(first, self.strides().0, self.dp)
    }

    /// This rank's pipeline: one rank per stage, in stage order, all with its TP and DP ranks.
    pub fn pp_group(&self, rank: usize) -> Group {
        let first = self.rank_of(Coords {
            stage: 0,
            ..self.coords(rank)
        });
        Group::strided(first, self.strides().1, self.pp)
    }

    /// The shard a rank holds, numbered stage-major: `stage * tp + tp_rank`.
    pub fn shard_of(&self, rank: usize) -> usize {
        let coords = self.coords(rank);
        coords.stage * self.tp + coords.tp_rank
    }

    pub fn shard_count(&self) -> usize {
        self.tp * self.pp
    }
}

/// Part `idx` of `0..count` cut into `parts` contiguous, near-equal parts (the earlier parts
/// are the shorter ones when they cannot all be equal).
pub fn part_range(count: usize, parts: usize, idx: usize) -> Range<usize> {
    debug_assert!(idx < parts);
    count * idx / parts..count * (idx + 1) / parts
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::group::Placement;

    fn members(group: &Group) -> Vec<usize> {
        (0..group.count()).map(|idx| group.member(idx)).collect()
    }

    /// Every rank is in exactly one group of each kind, which holds it; the groups of a kind
    /// partition the world; each group's members differ in that kind's coordinate alone, in
    /// order; and a TP group lies inside one node.
    fn check(layout: Layout, gpus_per_node: usize) {
        let world = layout.world_size();
        let placement = Placement::new(world, gpus_per_node);
        type GroupOf = fn(&Layout, usize) -> Group;
        let kinds: [(GroupOf, usize); 3] = [
            (Layout::tp_group, layout.tp),
            (Layout::pp_group, layout.pp),
            (Layout::dp_group, layout.dp),
        ];
        for (kind, (group_of, size)) in kinds.into_iter().enumerate() {
            let mut groups = BTreeSet::new();
            for rank in 0..world {
                let group = members(&group_of(&layout, rank));
                assert_eq!(group.len(), size, "{layout:?} kind {kind} rank {rank}");
                assert!(group.contains(&rank));
                for (idx, &member) in group.iter().enumerate() {
                    // Every member names the same group: each rank is in exactly one.
                    assert_eq!(members(&group_of(&layout, member)), group);
                    let (mine, theirs) = (layout.coords(rank), layout.coords(member));
                    let along = [theirs.tp_rank, theirs.stage, theirs.dp_rank][kind];
                    assert_eq!(along, idx, "{layout:?}: members in coordinate order");
                    let same = |c: Coords| [c.tp_rank, c.stage, c.dp_rank];
                    for other in (0..3).filter(|&k| k != kind) {
                        assert_eq!(same(mine)[other], same(theirs)[other]);
                    }
                }
                groups.insert(group);
            }
            assert_eq!(groups.len() * size, world, "{layout:?} kind {kind}");
            let covered: BTreeSet<usize> = groups.iter().flatten().copied().collect();
            assert_eq!(covered.len(), world);
        }
        for rank in 0..world {
            let coords = layout.coords(rank);
            assert_eq!(layout.rank_of(coords), rank);
            let tp = members(&layout.tp_group(rank));
            assert!(tp
                .iter()
                .all(|&r| placement.node_of(r) == placement.node_of(rank)));
            assert_eq!(
                layout.shard_of(rank),
                coords.stage * layout.tp + coords.tp_rank
            );
        }
    }

    #[test]
    fn groups_partition_the_world_in_both_orders() {
        for order in RankOrder::ALL.iter().copied() {
            for (tp, pp, dp) in [
                (1, 1, 1),
                (2, 2, 2),
                (4, 2, 3),
                (1, 4, 2),
                (8, 4, 4),
                (2, 1, 5),
            ] {
                for gpus_per_node in [1, 2, 4, 8].into_iter().filter(|g| g % tp == 0) {
                    check(Layout::new(tp, pp, dp, order), gpus_per_node);
                }
            }
        }
    }

    #[test]
    fn megatron_order_puts_replicas_next_to_each_other() {
        let layout = Layout::new(2, 3, 4, RankOrder::TpDpPp);
        assert_eq!(members(&layout.tp_group(5)), [4, 5]);
        assert_eq!(members(&layout.dp_group(9)), [9, 11, 13, 15]);
        assert_eq!(members(&layout.pp_group(3)), [3, 11, 19]);
        let dp_outermost = Layout {
            order: RankOrder::TpPpDp,
            ..layout
        };
        assert_eq!(members(&dp_outermost.dp_group(1)), [1, 7, 13, 19]);
        assert_eq!(members(&dp_outermost.pp_group(7)), [7, 9, 11]);
    }

    #[test]
    fn parts_cover_the_range_in_order() {
        for count in 1..20 {
            for parts in 1..=count {
                let ranges: Vec<_> = (0..parts).map(|i| part_range(count, parts, i)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[parts - 1].end, count);
                assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
                assert!(ranges.iter().all(|r| !r.is_empty()));
            }
        }
    }
}
