//! Recursive halving-doubling (Rabenseifner): reduce-scatter by recursive halving, all-gather
//! by recursive doubling, `2 log2 p` rounds for `p` the largest power of two in the group.
//!
//! Any group size: with `count = p + r`, the first `2r` members fold in pairs before the
//! halving (even member sends everything to the odd one above it) and unfold after the
//! doubling. Folded members own no part after a reduce-scatter.

use super::Ctx;
use crate::backend::{Backend, CommError};
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

pub(super) async fn all_reduce<B: Backend>(
    ctx: &Ctx<'_, B>,
    data: &mut [f32],
    span: &Span,
) -> Result<(), CommError> {
    reduce_scatter(ctx, data, span).await?;
    all_gather(ctx, data, span).await
}

pub(super) async fn reduce_scatter<B: Backend>(
    ctx: &Ctx<'_, B>,
    data: &mut [f32],
    span: &Span,
) -> Result<(), CommError> {
    let shape = Shape::of(ctx.count());
    let me = ctx.me();
    let Some(v) = shape.virtual_of(me) else {
        return ctx.send(me + 1, PHASE_FOLD, 0, data, span).await;
    };
    if me < 2 * shape.extra {
        ctx.recv_add(me - 1, PHASE_FOLD, 0, data, span).await?;
    }
    // Halving: keep the half of the current range on this member's side of `mask`, send the
    // other half to the partner across it, and add the partner's copy of the kept half.
    let (mut lo, mut hi) = (0, shape.pow2);
    let mut mask = shape.pow2 >> 1;
    let mut round = 0;
    while mask > 0 {
        let partner = shape.member_of(v ^ mask);
        let mid = (lo + hi) / 2;
        let (keep, give) = if v & mask == 0 {
            ((lo, mid), (mid, hi))
        } else {
            ((mid, hi), (lo, mid))
        };
        let give_span = span.parts(shape.pow2, give.0, give.1);
        let keep_span = span.parts(shape.pow2, keep.0, keep.1);
        ctx.send(partner, PHASE_HALVING, round, data, &give_span)
            .await?;
        ctx.recv_add(partner, PHASE_HALVING, round, data, &keep_span)
            .await?;
        (lo, hi) = keep;
        mask >>= 1;
        round += 1;
    }
    Ok(())
}

pub(super) async fn all_gather<B: Backend>(
    ctx: &Ctx<'_, B>,
    data: &mut [f32],
    span: &Span,
) -> Result<(), CommError> {
    let shape = Shape::of(ctx.count());
    let me = ctx.me();
    let Some(v) = shape.virtual_of(me) else {
        return ctx.recv_copy(me + 1, PHASE_UNFOLD, 0, data, span).await;
    };
    // Doubling: swap the owned range with the partner across `mask`; the range doubles.
    let (mut lo, mut hi) = (v, v + 1);
    let mut mask = 1;
    let mut round = 0;
    while mask < shape.pow2 {
        let partner = shape.member_of(v ^ mask);
        let width = hi - lo;
        let theirs = if v & mask == 0 {
            (hi, hi + width)
        } else {
            (lo - width, lo)
        };
        ctx.send(
            partner,
            PHASE_DOUBLING,
            round,
            data,
            &span.parts(shape.pow2, lo, hi),
        )
        .await?;
        let their_span = span.parts(shape.pow2, theirs.0, theirs.1);
        ctx.recv_copy(partner, PHASE_DOUBLING, round, data, &their_span)
            .await?;
        (lo, hi) = (lo.min(theirs.0), hi.max(theirs.1));
        mask <<= 1;
        round += 1;
    }
    if me < 2 * shape.extra {
        ctx.send(me - 1, PHASE_UNFOLD, 0, data, span).await?;
    }
    Ok(())
}
