//! Hierarchical: reduce-scatter inside each node over NVLink, all-reduce each chunk across
//! nodes on its rail with an inner algorithm, all-gather inside the node again. Only 1/G of the
//! data crosses the slower inter-node fabric per GPU, and each rail's traffic stays on its own
//! rail of switches.
//!
//! The buffer is cut into `gpus_per_node` chunks. On a full node local GPU `c` owns chunk `c`;
//! on a partial last node of `g` GPUs, local GPU `c % g` owns it, so some of its GPUs own several
//! chunks and run their rails one after another in chunk order (which cannot deadlock: every
//! rail waits only on lower-numbered chunks).
//!
//! Inside the node, each chunk is summed by its owner in local-index order, whoever's message
//! arrives first, then copied back out: direct, as NVSwitch allows. Each GPU sends to the
//! GPU after it first, then the next, so that at every turn the node's GPUs send to as many
//! different GPUs (what a rank-order loop would pile onto GPU 0's NVLink).
//!
//! Over the world minus dropped nodes, a live node's group is whole and each rail loses the
//! dropped nodes' members; intra-node messages name node members, so the world's holes never
//! shift them.

use std::sync::Arc;

use super::{halving_doubling, ring, tree, Algo, Ctx, Merge, Step};
use crate::backend::Backend;
use crate::group::{Group, Placement};
use crate::span::Span;

const PHASE_INTRA_REDUCE_SCATTER: u32 = 0;
const PHASE_INTRA_ALL_GATHER: u32 = 1;
const PHASE_INTRA_BROADCAST: u32 = 2;

/// Where this rank sits, and the chunks it owns.
struct Local {
    placement: Placement,
    node: usize,
    local: usize,
    gpus_here: usize,
    /// Nodes the world group leaves out; `None` for the whole world.
    dropped_nodes: Option<Arc<Vec<usize>>>,
}

impl Local {
    fn of(placement: Placement, group: &Group, rank: usize) -> Local {
        let node = placement.node_of(rank);
        let dropped_nodes = group
            .has_holes()
            .then(|| Arc::new(placement.dropped_nodes(group)));
        Local {
            placement,
            node,
            local: placement.local_idx_of(rank),
            gpus_here: placement.gpus_on_node(node),
            dropped_nodes,
        }
    }

    /// Chunk `chunk`'s rail: its owner on every node, less the dropped nodes (a rail's member
    /// index is its node).
    fn rail_group(&self, chunk: usize) -> Group {
        let rail = self.placement.rail_group(chunk);
        match &self.dropped_nodes {
            None => rail,
            Some(nodes) => rail.without(nodes.clone()),
        }
    }

    fn chunk_count(&self) -> usize {
        self.placement.gpus_per_node
    }

    fn owner_of(&self, chunk: usize) -> usize {
        chunk % self.gpus_here
    }

    fn my_chunks(&self) -> Chunks {
        let small = |n: usize| u32::try_from(n).expect("fewer than 4 billion GPUs per node");
        Chunks {
            next: small(self.local),
            step: small(self.gpus_here),
            end: small(self.chunk_count()),
        }
    }

    /// The phase block of chunk `chunk`'s rail operation; 16 phases each, after the intra ones.
    fn rail_phase(chunk: usize) -> u32 {
        16 * (1 + chunk as u32)
    }
}

/// The chunks one GPU owns, in order: its local index, then every `gpus_here` after it. Twelve
/// bytes, where a `StepBy` over a range takes 32: loops over it keep it across their awaits, in
/// every rank's future.
struct Chunks {
    next: u32,
    step: u32,
    end: u32,
}

impl Iterator for Chunks {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let chunk = self.next;
        (chunk < self.end).then(|| {
            self.next += self.step;
            chunk as usize
        })
    }
}

pub(super) fn owned_spans(
    inter: Algo,
    placement: &Placement,
    group: &Group,
    rank: usize,
    span: &Span,
) -> Vec<Span> {
    let here = Local::of(*placement, group, rank);
    let mut spans = Vec::new();
    for chunk in here.my_chunks() {
        let rail = here.rail_group(chunk);
        let idx = rail.index_of(rank).expect("a chunk owner is on its rail");
        let chunk_span = span.part(here.chunk_count(), chunk);
        let inner = match inter {
            Algo::Ring => Some(ring::owned_span(rail.count(), idx, &chunk_span)),
            Algo::Tree => Some(tree::owned_span(rail.count(), idx, &chunk_span)),
            Algo::HalvingDoubling => halving_doubling::owned_span(rail.count(), idx, &chunk_span),
            Algo::Hierarchical => unreachable!("hierarchical cannot nest in itself"),
        };
        spans.extend(inner);
    }
    spans
}

pub(super) fn all_reduce<'a, B: Backend>(
    ctx: &'a Ctx<'a, B>,
    inter: Algo,
    data: &'a mut [f32],
    span: &'a Span,
) -> impl Step<'a> {
    let here = Local::of(ctx.backend.placement(), &ctx.group, ctx.backend.rank());
    async move {
        intra_reduce_scatter(ctx, &here, data, span).await?;
        rails(ctx, &here, inter, RailOp::AllReduce, data, span).await?;
        intra_all_gather(ctx, &here, data, span).await
    }
}

pub(super) fn reduce_scatter<'a, B: Backend>(
    ctx: &'a Ctx<'a, B>,
    inter: Algo,
    data: &'a mut [f32],
    span: &'a Span,
) -> impl Step<'a> {
    let here = Local::of(ctx.backend.placement(), &ctx.group, ctx.backend.rank());
    async move {
        intra_reduce_scatter(ctx, &here, data, span).await?;
        rails(ctx, &here, inter, RailOp::ReduceScatter, data, span).await
    }
}

pub(super) fn all_gather<'a, B: Backend>(
    ctx: &'a Ctx<'a, B>,
    inter: Algo,
    data: &'a mut [f32],
    span: &'a Span,
) -> impl Step<'a> {
    let here = Local::of(ctx.backend.placement(), &ctx.group, ctx.backend.rank());
    async move {
        rails(ctx, &here, inter, RailOp::AllGather, data, span).await?;
        intra_all_gather(ctx, &here, data, span).await
    }
}

/// What the rails run: a one-byte enum rather than [`super::Op`], whose broadcast root makes it
/// sixteen.
#[derive(Clone, Copy)]
enum RailOp {
    AllReduce,
    ReduceScatter,
    AllGather,
}

/// The inter-node part: `op` (all-reduce, reduce-scatter or all-gather) with `inter` on the
/// rail of each chunk this GPU owns, one chunk after another.
///
/// A future of its own rather than a loop in each caller: what the loop keeps across its
/// awaits (the rail's context, the chunk's span) would otherwise take room of its own in the
/// caller's future beside the intra-node phases, instead of sharing theirs.
fn rails<'a, B: Backend>(
    ctx: &'a Ctx<'a, B>,
    here: &'a Local,
    inter: Algo,
    op: RailOp,
    data: &'a mut [f32],
    span: &'a Span,
) -> impl Step<'a> {
    async move {
        for chunk in here.my_chunks() {
            let rail = rail_ctx(ctx, here, chunk);
            let chunk_span = span.part(here.chunk_count(), chunk);
            let (rail, data, span) = (&rail, &mut *data, &chunk_span);
            match (op, inter) {
                (RailOp::AllReduce, Algo::Ring) => ring::all_reduce(rail, data, span).await?,
                (RailOp::AllReduce, Algo::Tree) => tree::all_reduce(rail, data, span).await?,
                (RailOp::AllReduce, Algo::HalvingDoubling) => {
                    halving_doubling::all_reduce(rail, data, span).await?
                }
                (RailOp::ReduceScatter, Algo::Ring) => {
                    ring::reduce_scatter(rail, data, span).await?
                }
                (RailOp::ReduceScatter, Algo::Tree) => {
                    tree::reduce_scatter(rail, data, span).await?
                }
                (RailOp::ReduceScatter, Algo::HalvingDoubling) => {
                    halving_doubling::reduce_scatter(rail, data, span).await?
                }
                (RailOp::AllGather, Algo::Ring) => ring::all_gather(rail, data, span).await?,
                (RailOp::AllGather, Algo::Tree) => tree::all_gather(rail, data, span).await?,
                (RailOp::AllGather, Algo::HalvingDoubling) => {
                    halving_doubling::all_gather(rail, data, span).await?
                }
                (_, Algo::Hierarchical) => unreachable!("hierarchical cannot nest in itself"),
            }
        }
        Ok(())
    }
}

/// Broadcast from `root_idx`: across nodes on the root's rail, then inside each node from the
/// GPU on that rail.
pub(super) fn broadcast<'a, B: Backend>(
    ctx: &'a Ctx<'a, B>,
    inter: Algo,
    root_idx: usize,
    data: &'a mut [f32],
    span: &'a Span,
) -> impl Step<'a> {
    async move {
        let placement = ctx.backend.placement();
        let here = Local::of(placement, &ctx.group, ctx.backend.rank());
        let root = ctx.group.member(root_idx);
        let chunk = placement.local_idx_of(root);
        let carrier = here.owner_of(chunk);
        if here.local == carrier {
            let rail = rail_ctx(ctx, &here, chunk);
            let rail_root = rail
                .group
                .index_of(root)
                .expect("the root is on its own rail");
            match inter {
                Algo::Ring => ring::broadcast(&rail, rail_root, data, span).await?,
                Algo::Tree | Algo::HalvingDoubling => {
                    tree::broadcast(&rail, rail_root, data, span).await?
                }
                Algo::Hierarchical => unreachable!("hierarchical cannot nest in itself"),
            }
            let node = node_ctx(ctx, &here);
            for other in (0..here.gpus_here).filter(|&l| l != here.local) {
                node.send(other, PHASE_INTRA_BROADCAST, 0, data, span.clone())
                    .await?;
            }
            Ok(())
        } else {
            node_ctx(ctx, &here)
                .recv_copy(carrier, PHASE_INTRA_BROADCAST, 0, data, span.clone())
                .await
        }
    }
}

fn rail_ctx<'a, B: Backend>(ctx: &'a Ctx<'a, B>, here: &Local, chunk: usize) -> Ctx<'a, B> {
    ctx.sub(here.rail_group(chunk), ctx.phase + Local::rail_phase(chunk))
}

/// The same operation's tags over this rank's node: members are local indices.
fn node_ctx<'a, B: Backend>(ctx: &'a Ctx<'a, B>, here: &Local) -> Ctx<'a, B> {
    ctx.sub(here.placement.node_group(here.node), ctx.phase)
}

/// Each chunk goes to its owner, which sums it in local-index order.
fn intra_reduce_scatter<'a, B: Backend>(
    ctx: &'a Ctx<'a, B>,
    here: &'a Local,
    data: &'a mut [f32],
    span: &'a Span,
) -> impl Step<'a> {
    async move {
        let ctx = &node_ctx(ctx, here);
        let chunks = here.chunk_count();
        // From the chunk after this GPU's own on, as NCCL does: at each turn every GPU sends
        // to a different owner, so no GPU's NVLink takes every sender's first chunk at once.
        for chunk in (1..=chunks).map(|k| (here.local + k) % chunks) {
            let owner = here.owner_of(chunk);
            if owner != here.local {
                ctx.send(
                    owner,
                    PHASE_INTRA_REDUCE_SCATTER,
                    chunk,
                    data,
                    span.part(chunks, chunk),
                )
                .await?;
            }
        }
        for chunk in here.my_chunks() {
            let chunk_span = span.part(chunks, chunk);
            // Local 0's part is copied in, the others' added in local-index order.
            let mut acc = vec![0.0; chunk_span.elems().len()];
            for local in 0..here.gpus_here {
                let merge = if local == 0 { Merge::Copy } else { Merge::Add };
                if local == here.local {
                    let own = &data[chunk_span.elems()];
                    match merge {
                        Merge::Copy => acc.copy_from_slice(own),
                        Merge::Add => ctx.add(&mut acc, own),
                    }
                    continue;
                }
                ctx.recv_into(local, PHASE_INTRA_REDUCE_SCATTER, chunk, &mut acc, merge)
                    .await?;
            }
            data[chunk_span.elems()].copy_from_slice(&acc);
        }
        Ok(())
    }
}

/// Each owner copies its chunks to every other GPU of the node.
fn intra_all_gather<'a, B: Backend>(
    ctx: &'a Ctx<'a, B>,
    here: &'a Local,
    data: &'a mut [f32],
    span: &'a Span,
) -> impl Step<'a> {
    async move {
        let ctx = &node_ctx(ctx, here);
        let chunks = here.chunk_count();
        let gpus = here.gpus_here;
        for chunk in here.my_chunks() {
            // To the next GPU first, as in the reduce-scatter.
            for other in (1..gpus).map(|k| (here.local + k) % gpus) {
                ctx.send(
                    other,
                    PHASE_INTRA_ALL_GATHER,
                    chunk,
                    data,
                    span.part(chunks, chunk),
                )
                .await?;
            }
        }
        for chunk in 0..chunks {
            let owner = here.owner_of(chunk);
            if owner != here.local {
                let chunk_span = span.part(chunks, chunk);
                ctx.recv_copy(owner, PHASE_INTRA_ALL_GATHER, chunk, data, chunk_span)
                    .await?;
            }
        }
        Ok(())
    }
}
