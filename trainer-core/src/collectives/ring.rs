//! Ring: reduce-scatter then all-gather around the group, `count - 1` rounds each. Bandwidth
//! optimal, latency linear in the group size.

use super::{Ctx, Step};
use crate::backend::Backend;
use crate::span::Span;

const PHASE_REDUCE_SCATTER: u32 = 0;
const PHASE_ALL_GATHER: u32 = 1;
const PHASE_BROADCAST: u32 = 2;

/// After the ring reduce-scatter, member `idx` holds part `idx + 1` (mod count).
pub(super) fn owned_span(count: usize, idx: usize, span: &Span) -> Span {
    span.part(count, (idx + 1) % count)
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
        let (n, me) = (ctx.count(), ctx.me());
        let (right, left) = ((me + 1) % n, (me + n - 1) % n);
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
        let (n, me) = (ctx.count(), ctx.me());
        let (right, left) = ((me + 1) % n, (me + n - 1) % n);
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
        let me = ctx.me();
        let pos = (me + n - root_idx) % n;
        let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
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
