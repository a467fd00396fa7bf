//! Ring: reduce-scatter then all-gather around the group, `count - 1` rounds each. Bandwidth
//! optimal, latency linear in the group size.
//!
//! The ring visits members in an [`Order`]: over whole nodes of the world, rail-local by
//! default (see [`RingOrder::Rail`]); the algorithm works on positions around the ring, and
//! the order maps them to member indices and back.

use super::{Ctx, RingOrder, Step};
use crate::backend::Backend;
use crate::group::{Group, Placement};
use crate::span::Span;

/// Positions around the ring and the group's member indices: the identity, or within each
/// block of `per_node` positions (one node's GPUs), reversed in every other block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Order {
    per_node: usize,
}

impl Order {
    /// The order `ring_order` gives `group`: rail-local only where the group is whole nodes
    /// of the world, in node order (the world, perhaps less dropped nodes).
    pub(super) fn of(ring_order: RingOrder, placement: &Placement, group: &Group) -> Order {
        let g = placement.gpus_per_node;
        let whole_nodes = group.is_world_with_holes(placement.world_size)
            && placement.world_size % g == 0
            && group.count() % g == 0;
        let per_node = match ring_order {
            RingOrder::Rail if whole_nodes && g > 1 => g,
            _ => 1,
        };
        Order { per_node }
    }

    fn of_ctx<B: Backend>(ctx: &Ctx<'_, B>) -> Order {
        Order::of(ctx.ring_order, &ctx.backend.placement(), &ctx.group)
    }

    /// The member index at ring position `pos` (its own inverse).
    pub(super) fn member_at(&self, pos: usize) -> usize {
        let (block, within) = (pos / self.per_node, pos % self.per_node);
        if block % 2 == 1 {
            block * self.per_node + self.per_node - 1 - within
        } else {
            pos
        }
    }

    /// The ring position of member index `idx`.
    pub(super) fn position_of(&self, idx: usize) -> usize {
        self.member_at(idx)
    }

    /// This rank's position, and the members after and before it around the ring.
    fn neighbours<B: Backend>(&self, ctx: &Ctx<'_, B>) -> (usize, usize, usize) {
        let (n, pos) = (ctx.count(), self.position_of(ctx.me()));
        let right = self.member_at((pos + 1) % n);
        let left = self.member_at((pos + n - 1) % n);
        (pos, right, left)
    }
}

const PHASE_REDUCE_SCATTER: u32 = 0;
const PHASE_ALL_GATHER: u32 = 1;
const PHASE_BROADCAST: u32 = 2;

/// After the ring reduce-scatter, the member at ring position `pos` holds part `pos + 1`
/// (mod count).
pub(super) fn owned_span(count: usize, pos: usize, span: &Span) -> Span {
    span.part(count, (pos + 1) % count)
}

pub(super) fn all_reduce<'a, B: Backend>(
    ctx: &'a Ctx<'a, B>,
    data: &'a mut [f32],
    span: &'a Span,
) -> impl Step<'a> {
    async move {
        reduce_scatter(ctx, data, span).await?;
        all_gather(ctx, data, span).await
    }
}

pub(super) fn reduce_scatter<'a, B: Backend>(
    ctx: &'a Ctx<'a, B>,
    data: &'a mut [f32],
    span: &'a Span,
) -> impl Step<'a> {
    async move {
        let n = ctx.count();
        let (me, right, left) = Order::of_ctx(ctx).neighbours(ctx);
        // Round s: pass on the part that now holds s + 1 contributions, add the left neighbour's.
        for round in 0..n.saturating_sub(1) {
            let send_part = (me + n - round) % n;
            let recv_part = (me + 2 * n - round - 1) % n;
            ctx.send(
                right,
                PHASE_REDUCE_SCATTER,
                round,
                data,
                span.part(n, send_part),
            )
            .await?;
            ctx.recv_add(
                left,
                PHASE_REDUCE_SCATTER,
                round,
                data,
                span.part(n, recv_part),
            )
            .await?;
        }
        Ok(())
    }
}

pub(super) fn all_gather<'a, B: Backend>(
    ctx: &'a Ctx<'a, B>,
    data: &'a mut [f32],
    span: &'a Span,
) -> impl Step<'a> {
    async move {
        let n = ctx.count();
        let (me, right, left) = Order::of_ctx(ctx).neighbours(ctx);
        for round in 0..n.saturating_sub(1) {
            let send_part = (me + 1 + n - round) % n;
            let recv_part = (me + n - round) % n;
            ctx.send(
                right,
                PHASE_ALL_GATHER,
                round,
                data,
                span.part(n, send_part),
            )
            .await?;
            ctx.recv_copy(left, PHASE_ALL_GATHER, round, data, span.part(n, recv_part))
                .await?;
        }
        Ok(())
    }
}

/// Broadcast along the ring, pipelined in `count` parts so that the last member waits for
/// `2 * count - 2` part-hops rather than `count - 1` whole-buffer hops.
pub(super) fn broadcast<'a, B: Backend>(
    ctx: &'a Ctx<'a, B>,
    root_idx: usize,
    data: &'a mut [f32],
    span: &'a Span,
) -> impl Step<'a> {
    async move {
        let n = ctx.count();
        let order = Order::of_ctx(ctx);
        let (me, next, prev) = order.neighbours(ctx);
        let pos = (me + n - order.position_of(root_idx)) % n;
        for part in 0..n {
            let part_span = span.part(n, part);
            if pos > 0 {
                ctx.recv_copy(prev, PHASE_BROADCAST, part, data, part_span.clone())
                    .await?;
            }
            if pos + 1 < n {
                ctx.send(next, PHASE_BROADCAST, part, data, part_span)
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Order, RingOrder};
    use crate::group::Placement;

    /// Rail-local order over four nodes of four: every step is inside a node or between two
    /// nodes on one rail, and the ring visits every member once.
    #[test]
    fn a_rail_local_ring_crosses_nodes_on_one_rail_and_visits_everyone() {
        let placement = Placement::new(16, 4);
        let order = Order::of(RingOrder::Rail, &placement, &placement.world());
        let ring: Vec<usize> = (0..16).map(|pos| order.member_at(pos)).collect();
        assert_eq!(ring, [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11, 15, 14, 13, 12]);
        for pos in 0..16 {
            let (a, b) = (ring[pos], ring[(pos + 1) % 16]);
            let same_node = placement.node_of(a) == placement.node_of(b);
            let same_rail = placement.local_idx_of(a) == placement.local_idx_of(b);
            assert!(same_node || same_rail, "{a} -> {b} crosses rails");
            assert_eq!(order.position_of(order.member_at(pos)), pos);
        }
        // The rank order crosses rails at every node boundary.
        let rank = Order::of(RingOrder::Rank, &placement, &placement.world());
        assert_eq!(rank.member_at(4), 4);
        assert_eq!(rank.member_at(3), 3);
        // A group that is not whole nodes of the world keeps the rank order.
        let partial = Order::of(
            RingOrder::Rail,
            &Placement::new(14, 4),
            &Placement::new(14, 4).world(),
        );
        assert_eq!(partial.member_at(5), 5);
    }
}
