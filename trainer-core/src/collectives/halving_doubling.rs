//! Recursive halving-doubling (Rabenseifner): reduce-scatter by recursive halving, all-gather
//! by recursive doubling, `2 log2 p` rounds for `p` the largest power of two in the group.
//!
//! Any group size: with `count = p + r`, the first `2r` members fold in pairs before the
//! halving (even member sends everything to the odd one above it) and unfold after the
//! doubling. Folded members own no part after a reduce-scatter.

use super::{Ctx, Step};
use crate::backend::Backend;
use crate::span::Span;

const PHASE_FOLD: u32 = 0;
const PHASE_HALVING: u32 = 1;
const PHASE_DOUBLING: u32 = 2;
const PHASE_UNFOLD: u32 = 3;

/// How a group of `count` maps onto a power-of-two set of virtual members.
struct Shape {
    /// The largest power of two not above the group size.
    pow2: usize,
    /// Members beyond the power of two; members `0..2 * extra` fold in pairs.
    extra: usize,
}

impl Shape {
    fn of(count: usize) -> Shape {
        let pow2 = if count.is_power_of_two() {
            count
        } else {
            count.next_power_of_two() / 2
        };
        Shape {
            pow2,
            extra: count - pow2,
        }
    }

    /// Virtual rank of a member, or `None` for an even member that folds away.
    fn virtual_of(&self, idx: usize) -> Option<usize> {
        if idx < 2 * self.extra {
            (idx % 2 == 1).then_some(idx / 2)
        } else {
            Some(idx - self.extra)
        }
    }

    /// Rounds of halving, and of doubling: log2 of the power of two.
    fn rounds(&self) -> usize {
        self.pow2.trailing_zeros() as usize
    }

    /// The part of `span` that is the aligned block of `size` (a power of two) of the `pow2`
    /// parts holding part `v`.
    fn block(&self, span: &Span, v: usize, size: usize) -> Span {
        let first = v & !(size - 1);
        span.parts(self.pow2, first, first + size)
    }

    fn member_of(&self, virt: usize) -> usize {
        if virt < self.extra {
            2 * virt + 1
        } else {
            virt + self.extra
        }
    }
}

/// After the reduce-scatter, virtual member `v` holds part `v` of `pow2`; folded members none.
pub(super) fn owned_span(count: usize, idx: usize, span: &Span) -> Option<Span> {
    let shape = Shape::of(count);
    shape.virtual_of(idx).map(|v| span.part(shape.pow2, v))
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
        let shape = Shape::of(ctx.count());
        let me = ctx.me();
        let Some(v) = shape.virtual_of(me) else {
            return ctx.send(me + 1, PHASE_FOLD, 0, data, span.clone()).await;
        };
        if me < 2 * shape.extra {
            ctx.recv_add(me - 1, PHASE_FOLD, 0, data, span.clone())
                .await?;
        }
        // Halving: going into the round across `mask`, this member holds the block of
        // `2 * mask` parts around `v`; it sends the partner the half around the partner and
        // adds the partner's copy of its own half. (Everything a round needs is recomputed
        // from `round` rather than kept: what a loop keeps across its awaits is in every
        // rank's future.)
        for round in 0..shape.rounds() {
            let mask = shape.pow2 >> (round + 1);
            let partner = shape.member_of(v ^ mask);
            let give = shape.block(span, v ^ mask, mask);
            ctx.send(partner, PHASE_HALVING, round, data, give).await?;
            let keep = shape.block(span, v, mask);
            ctx.recv_add(partner, PHASE_HALVING, round, data, keep)
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
        let shape = Shape::of(ctx.count());
        let me = ctx.me();
        let Some(v) = shape.virtual_of(me) else {
            return ctx
                .recv_copy(me + 1, PHASE_UNFOLD, 0, data, span.clone())
                .await;
        };
        // Doubling: going into the round across `mask`, this member holds the block of `mask`
        // parts around `v`; it swaps it for the partner's, which makes the block around `v`
        // twice as wide.
        for round in 0..shape.rounds() {
            let mask = 1 << round;
            let partner = shape.member_of(v ^ mask);
            let mine = shape.block(span, v, mask);
            ctx.send(partner, PHASE_DOUBLING, round, data, mine).await?;
            let theirs = shape.block(span, v ^ mask, mask);
            ctx.recv_copy(partner, PHASE_DOUBLING, round, data, theirs)
                .await?;
        }
        // Worked out again rather than kept from the start: `me` would then be kept across
        // every round's awaits.
        let me = ctx.me();
        if me < 2 * shape.extra {
            ctx.send(me - 1, PHASE_UNFOLD, 0, data, span.clone())
                .await?;
        }
        Ok(())
    }
}
