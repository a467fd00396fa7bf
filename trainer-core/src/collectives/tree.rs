//! Binomial tree rooted at a member: reduce up, broadcast down, in `ceil(log2 count)` rounds.
//! Member `v` (relative to the root) with lowest set bit `L` has parent `v - L` and children
//! `v + L/2, v + L/4, ...`, so the subtree of `v` is the contiguous range `v..v + L`, which lets
//! reduce-scatter and all-gather scatter and gather contiguous runs of parts.

use super::{Ctx, Step};
use crate::backend::Backend;
use crate::span::Span;

const PHASE_REDUCE: u32 = 0;
const PHASE_SCATTER: u32 = 1;
const PHASE_GATHER: u32 = 2;
const PHASE_BROADCAST: u32 = 3;

/// After the tree reduce-scatter, member `idx` holds part `idx`.
pub(super) fn owned_span(count: usize, idx: usize, span: &Span) -> Span {
    span.part(count, idx)
}

/// The lowest set bit of `v`, or for the root the smallest power of two covering the group.
fn subtree_size(v: usize, count: usize) -> usize {
    if v == 0 {
        count.next_power_of_two()
    } else {
        1 << v.trailing_zeros()
    }
}

pub(super) fn all_reduce<'a, B: Backend>(
    ctx: &'a Ctx<'a, B>,
    data: &'a mut [f32],
    span: &'a Span,
) -> impl Step<'a> {
    async move {
        reduce(ctx, data, span).await?;
        broadcast(ctx, 0, data, span).await
    }
}

/// Sums every member's `span` into member 0: `acc = own + child(L/2)... `, children in
/// increasing distance, so the order is fixed by the tree.
fn reduce<'a, B: Backend>(
    ctx: &'a Ctx<'a, B>,
    data: &'a mut [f32],
    span: &'a Span,
) -> impl Step<'a> {
    async move {
        let (n, v) = (ctx.count(), ctx.me());
        let mut mask = 1;
        while mask < n {
            if v & mask != 0 {
                return ctx
                    .send(v - mask, PHASE_REDUCE, 0, data, span.clone())
                    .await;
            }
            if v + mask < n {
                ctx.recv_add(v + mask, PHASE_REDUCE, 0, data, span.clone())
                    .await?;
            }
            mask <<= 1;
        }
        Ok(())
    }
}

pub(super) fn broadcast<'a, B: Backend>(
    ctx: &'a Ctx<'a, B>,
    root_idx: usize,
    data: &'a mut [f32],
    span: &'a Span,
) -> impl Step<'a> {
    async move {
        let n = ctx.count();
        let v = (ctx.me() + n - root_idx) % n;
        let member = |rel: usize| (rel + root_idx) % n;
        let size = subtree_size(v, n);
        if v != 0 {
            ctx.recv_copy(member(v - size), PHASE_BROADCAST, 0, data, span.clone())
                .await?;
        }
        let mut mask = size >> 1;
        while mask > 0 {
            if v + mask < n {
                ctx.send(member(v + mask), PHASE_BROADCAST, 0, data, span.clone())
                    .await?;
            }
            mask >>= 1;
        }
        Ok(())
    }
}

pub(super) fn reduce_scatter<'a, B: Backend>(
    ctx: &'a Ctx<'a, B>,
    data: &'a mut [f32],
    span: &'a Span,
) -> impl Step<'a> {
    async move {
        reduce(ctx, data, span).await?;
        // Scatter: each member receives the parts of its whole subtree and passes each child its own.
        let (n, v) = (ctx.count(), ctx.me());
        let size = subtree_size(v, n);
        if v != 0 {
            let mine = span.parts(n, v, (v + size).min(n));
            ctx.recv_copy(v - size, PHASE_SCATTER, 0, data, mine)
                .await?;
        }
        let mut mask = size >> 1;
        while mask > 0 {
            let child = v + mask;
            if child < n {
                let theirs = span.parts(n, child, (child + mask).min(n));
                ctx.send(child, PHASE_SCATTER, 0, data, theirs).await?;
            }
            mask >>= 1;
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
        // Gather: at level `mask`, member v holds parts v..v + mask and passes them to its parent.
        let (n, v) = (ctx.count(), ctx.me());
        let mut mask = 1;
        while mask < n {
            if v & mask != 0 {
                let mine = span.parts(n, v, (v + mask).min(n));
                ctx.send(v - mask, PHASE_GATHER, 0, data, mine).await?;
                break;
            }
            let child = v + mask;
            if child < n {
                let theirs = span.parts(n, child, (child + mask).min(n));
                ctx.recv_copy(child, PHASE_GATHER, 0, data, theirs).await?;
            }
            mask <<= 1;
        }
        broadcast(ctx, 0, data, span).await
    }
}
