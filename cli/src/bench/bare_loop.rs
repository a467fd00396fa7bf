//! The lower bound faultline's cost is measured against: a minimal single-threaded
//! discrete-event loop that moves the messages of the hierarchical all-reduce (reduce-scatter
//! inside the node, halving-doubling across nodes on each rail, all-gather inside the node) with
//! the simulator's own fabric (`faultline_sim::fabric::Fabric`), and no async machinery. Each rank is an explicit
//! state machine (a stage and an index) that the loop steps; there are no futures, wakers or
//! executor.
//!
//! It is bench code, not a second simulator: it knows one algorithm on full nodes only, and
//! exists so that a benchmark can say how much the async machinery costs over moving the same
//! messages. Within an instant it steps woken ranks in rank order, as the FIFO executor polls
//! them, so it puts messages on the links in the same order and reaches the same model time.

use faultline_sim::fabric::Fabric;
use faultline_sim::prefetch;
use faultline_sim::queue::RadixQueue;
use faultline_sim::run::Reference;
use faultline_sim::slab::Slab;
use faultline_sim::topology::Topology;
use trainer_core::collectives::{Algo, Collective, Op};
use trainer_core::integrity::checksum;
use trainer_core::{Placement, Span};

/// How many ranks ahead of the one it steps the loop prefetches, as the FIFO executor does.
const PREFETCH_AHEAD: usize = 4;

/// What one run moved, for comparison with the simulator's report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BareReport {
    pub messages: u64,
    pub model_time_ns: u64,
    pub instants: u64,
    /// Every rank ended with the exact sums.
    pub exact: bool,
}

/// Stages of one rank's program, in order.
const STAGE_INTRA_RS_SEND: u8 = 0;
const STAGE_INTRA_RS_RECV: u8 = 1;
const STAGE_FOLD: u8 = 2;
const STAGE_HALVING: u8 = 3;
const STAGE_DOUBLING: u8 = 4;
const STAGE_UNFOLD: u8 = 5;
const STAGE_INTRA_AG_SEND: u8 = 6;
const STAGE_INTRA_AG_RECV: u8 = 7;
const STAGE_DONE: u8 = 8;

/// One step of a rank's program.
enum Action {
    Send {
        to: u32,
        tag: u32,
        span: Span,
    },
    Recv {
        from: u32,
        tag: u32,
        span: Span,
        add: bool,
    },
    /// Nothing to do at this index: move on.
    Skip,
    /// The stage is over: go to the next.
    NextStage,
}

fn tag(stage: u8, round: usize, chunk: usize) -> u32 {
    (stage as u32) << 24 | (round as u32) << 8 | chunk as u32
}

#[derive(Clone, Default)]
struct BareRank {
    stage: u8,
    idx: u32,
    /// The (from, tag) this rank waits for, if parked.
    waiting: Option<(u32, u32)>,
    /// Messages that arrived before their receive: (from, tag, message slot).
    mailbox: Vec<(u32, u32, u32)>,
}

struct BareMessage {
    from: u32,
    to: u32,
    tag: u32,
    data: Vec<f32>,
    /// The payload's checksum, when the run checks payloads as the simulated logic does.
    checksum: Option<u64>,
}

/// The rail's halving-doubling shape, as in trainer-core: `pow2` virtual members, the first
/// `2 * extra` members fold in pairs.
struct Shape {
    pow2: usize,
    extra: usize,
    log2: usize,
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
            log2: pow2.trailing_zeros() as usize,
        }
    }

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

struct BareLoop {
    gpus_per_node: usize,
    elems: usize,
    span: Span,
    shape: Shape,
    now_ns: u64,
    queue: RadixQueue<u32>,
    messages: Slab<BareMessage>,
    fabric: Fabric,
    ranks: Vec<BareRank>,
    /// Every rank's buffer, `elems` each, side by side.
    data: Vec<f32>,
    message_count: u64,
    /// Checksum every payload at the sender and verify it at the receiver, as trainer-core's
    /// collectives do with `payload_checksums` on.
    checksums: bool,
    /// Payloads whose checksum did not match (none, unless the loop has a bug).
    checksum_mismatches: u64,
}

impl BareLoop {
    /// What rank `rank` does at (`stage`, `idx`): the loop's whole state machine, one match
    /// arm per stage of the hierarchical all-reduce.
    fn action(&self, rank: usize, stage: u8, idx: usize) -> Action {
        let g = self.gpus_per_node;
        let (node, local) = (rank / g, rank % g);
        let node_first = node * g;
        let chunk_span = self.span.part(g, local);
        match stage {
            STAGE_INTRA_RS_SEND | STAGE_INTRA_RS_RECV | STAGE_INTRA_AG_SEND
            | STAGE_INTRA_AG_RECV
                if idx >= g =>
            {
                Action::NextStage
            }
            // Sends go to the next GPU first (index 0 is this GPU itself), receives are
            // taken in local-index order, as trainer-core's hierarchical algorithm does.
            STAGE_INTRA_RS_SEND | STAGE_INTRA_AG_SEND if idx == 0 => Action::Skip,
            STAGE_INTRA_RS_RECV | STAGE_INTRA_AG_RECV if idx == local => Action::Skip,
            STAGE_INTRA_RS_SEND => {
                let peer = (local + idx) % g;
                Action::Send {
                    to: (node_first + peer) as u32,
                    tag: tag(stage, 0, peer),
                    span: self.span.part(g, peer),
                }
            }
            STAGE_INTRA_RS_RECV => Action::Recv {
                from: (node_first + idx) as u32,
                tag: tag(STAGE_INTRA_RS_SEND, 0, local),
                span: chunk_span,
                add: true,
            },
            STAGE_FOLD | STAGE_UNFOLD => self.fold_action(stage, idx, node, local),
            STAGE_HALVING | STAGE_DOUBLING => self.rail_exchange(stage, idx, node, local),
            STAGE_INTRA_AG_SEND => Action::Send {
                to: (node_first + (local + idx) % g) as u32,
                tag: tag(stage, 0, local),
                span: chunk_span,
            },
            STAGE_INTRA_AG_RECV => Action::Recv {
                from: (node_first + idx) as u32,
                tag: tag(STAGE_INTRA_AG_SEND, 0, idx),
                span: self.span.part(g, idx),
                add: false,
            },
            _ => Action::NextStage,
        }
    }

    /// The fold before the power-of-two rounds (the first extra nodes send their chunk to a
    /// partner) and the unfold after them (the partner sends the result back).
    fn fold_action(&self, stage: u8, idx: usize, node: usize, local: usize) -> Action {
        let g = self.gpus_per_node;
        let chunk_span = self.span.part(g, local);
        let rail_member = |node: usize| (node * g + local) as u32;
        let shape = &self.shape;
        let virt = shape.virtual_of(node);
        if stage == STAGE_FOLD {
            match (idx, virt) {
                (0, None) => Action::Send {
                    to: rail_member(node + 1),
                    tag: tag(stage, 0, local),
                    span: chunk_span,
                },
                (0, Some(_)) if node < 2 * shape.extra => Action::Recv {
                    from: rail_member(node - 1),
                    tag: tag(stage, 0, local),
                    span: chunk_span,
                    add: true,
                },
                _ => Action::NextStage,
            }
        } else {
            match (idx, virt) {
                (0, None) => Action::Recv {
                    from: rail_member(node + 1),
                    tag: tag(stage, 0, local),
                    span: chunk_span,
                    add: false,
                },
                (0, Some(_)) if node < 2 * shape.extra => Action::Send {
                    to: rail_member(node - 1),
                    tag: tag(stage, 0, local),
                    span: chunk_span,
                },
                _ => Action::NextStage,
            }
        }
    }

    /// A halving (reduce-scatter) or doubling (all-gather) round across nodes on `local`'s
    /// rail: even `idx` sends the half (or range) given away, odd `idx` receives the one kept.
    fn rail_exchange(&self, stage: u8, idx: usize, node: usize, local: usize) -> Action {
        let g = self.gpus_per_node;
        let chunk_span = self.span.part(g, local);
        let rail_member = |node: usize| (node * g + local) as u32;
        let shape = &self.shape;
        let virt = shape.virtual_of(node);
        let round = idx / 2;
        let Some(v) = virt.filter(|_| round < shape.log2) else {
            return Action::NextStage;
        };
        let (mask, keep, give) = if stage == STAGE_HALVING {
            // The range before this round is `width` wide and holds v; keep v's half.
            let width = shape.pow2 >> round;
            let lo = v & !(width - 1);
            let mid = lo + width / 2;
            let mask = width / 2;
            if v & mask == 0 {
                (mask, (lo, mid), (mid, lo + width))
            } else {
                (mask, (mid, lo + width), (lo, mid))
            }
        } else {
            // Swap the owned `width`-wide range with the partner's.
            let width = 1 << round;
            let lo = v & !(width - 1);
            let theirs = lo ^ width;
            (width, (theirs, theirs + width), (lo, lo + width))
        };
        let partner = rail_member(shape.member_of(v ^ mask));
        let tag = tag(stage, round, local);
        if idx % 2 == 0 {
            Action::Send {
                to: partner,
                tag,
                span: chunk_span.parts(shape.pow2, give.0, give.1),
            }
        } else {
            Action::Recv {
                from: partner,
                tag,
                span: chunk_span.parts(shape.pow2, keep.0, keep.1),
                add: stage == STAGE_HALVING,
            }
        }
    }

    /// Runs `rank` until it waits for a message that has not arrived, or finishes.
    fn step(&mut self, rank: usize) {
        loop {
            let (stage, idx) = (self.ranks[rank].stage, self.ranks[rank].idx as usize);
            if stage == STAGE_DONE {
                return;
            }
            match self.action(rank, stage, idx) {
                Action::NextStage => {
                    let state = &mut self.ranks[rank];
                    state.stage += 1;
                    state.idx = 0;
                    continue;
                }
                Action::Skip => {}
                Action::Send { to, tag, span } => self.send(rank, to as usize, tag, &span),
                Action::Recv {
                    from,
                    tag,
                    span,
                    add,
                } => {
                    let mailbox = &mut self.ranks[rank].mailbox;
                    let Some(pos) = mailbox.iter().position(|m| m.0 == from && m.1 == tag) else {
                        self.ranks[rank].waiting = Some((from, tag));
                        return;
                    };
                    let slot = mailbox.swap_remove(pos).2;
                    let message = self.messages.take(slot).expect("a message");
                    self.consume(rank, message, &span, add);
                }
            }
            self.ranks[rank].idx += 1;
        }
    }

    fn consume(&mut self, rank: usize, message: BareMessage, span: &Span, add: bool) {
        if let Some(sum) = message.checksum {
            self.checksum_mismatches += u64::from(sum != checksum(&message.data));
        }
        let (base, elems) = (rank * self.elems, span.elems());
        let dst = &mut self.data[base + elems.start..base + elems.end];
        assert_eq!(dst.len(), message.data.len());
        if add {
            trainer_core::kernels::add_assign(dst, &message.data);
        } else {
            dst.copy_from_slice(&message.data);
        }
    }

    /// `World::send`'s timing: the simulator's fabric gives the route link time now.
    fn send(&mut self, from: usize, to: usize, tag: u32, span: &Span) {
        self.message_count += 1;
        let route = self.fabric.route(from, to, self.now_ns);
        let bytes = span.modelled_bytes();
        let arrival_ns = (self.fabric).reserve(route, bytes, self.now_ns, self.now_ns, None);
        // A buffer of its own, as `Ctx::send` copies the span into the payload.
        let (base, elems) = (from * self.elems, span.elems());
        let data = self.data[base + elems.start..base + elems.end].to_vec();
        let message = BareMessage {
            from: from as u32,
            to: to as u32,
            tag,
            checksum: self.checksums.then(|| checksum(&data)),
            data,
        };
        // The simulator's slab, which prefetches the slot the next message will fill.
        let slot = self.messages.insert(message);
        self.queue.push(arrival_ns, slot);
    }

    /// `World::advance`'s prefetch, so that the lower bound gets the same overlap of cache
    /// misses: the message slot `2 * PREFETCH_AHEAD` deliveries ahead, then its receiver's
    /// state, mailbox and the message's data half as far ahead.
    #[inline(always)]
    fn prefetch_delivery(&self, firing: &[u32], i: usize) {
        if let Some(&slot) = firing.get(i + 2 * PREFETCH_AHEAD) {
            self.messages.prefetch(slot);
        }
        if let Some(&slot) = firing.get(i + PREFETCH_AHEAD) {
            if let Some(message) = self.messages.get(slot) {
                let state = &self.ranks[message.to as usize];
                prefetch::prefetch(state);
                prefetch::prefetch(state.mailbox.as_slice());
                prefetch::prefetch(message.data.as_slice());
            }
        }
    }

    /// Hands a delivered message to its receiver if it waits for exactly this one (and lists
    /// the receiver in `woken`), else files it in the receiver's mailbox.
    fn deliver(&mut self, slot: u32, woken: &mut Vec<u32>) {
        let message = self.messages.get(slot).expect("a message");
        let (from, to, tag) = (message.from, message.to, message.tag);
        let state = &mut self.ranks[to as usize];
        if state.waiting != Some((from, tag)) {
            state.mailbox.push((from, tag, slot));
            return;
        }
        state.waiting = None;
        let (stage, idx) = (state.stage, state.idx as usize);
        let Action::Recv { span, add, .. } = self.action(to as usize, stage, idx) else {
            unreachable!("a rank waits only at a receive")
        };
        let message = self.messages.take(slot).expect("a message");
        self.consume(to as usize, message, &span, add);
        self.ranks[to as usize].idx += 1;
        woken.push(to);
    }
}

impl BareLoop {
    /// Every rank at its first stage, holding the simulator's collective input.
    fn new(topology: &Topology, elems: usize, modelled_bytes: u64, checksums: bool) -> Self {
        let gpus = topology.gpu_count();
        let gpus_per_node = topology.cluster.gpus_per_node;
        let mut data = vec![0.0f32; gpus * elems];
        // The simulator's collective input, filled the same way.
        for (rank, buffer) in data.chunks_mut(elems.max(1)).enumerate().take(gpus) {
            buffer.copy_from_slice(&faultline_sim::run::collective_inputs(rank, buffer.len()));
        }
        BareLoop {
            gpus_per_node,
            elems,
            span: Span::new(elems, modelled_bytes),
            shape: Shape::of(gpus / gpus_per_node),
            now_ns: 0,
            queue: RadixQueue::default(),
            messages: Slab::default(),
            fabric: Fabric::new(topology.clone()),
            ranks: vec![BareRank::default(); gpus],
            data,
            message_count: 0,
            checksums,
            checksum_mismatches: 0,
        }
    }
}

/// Moves one hierarchical all-reduce of `elems` elements standing for `modelled_bytes` over
/// `topology`, whose nodes must all be full; with `checksums`, every payload is checksummed
/// and verified as the simulated collectives do by default.
pub fn run(topology: &Topology, elems: usize, modelled_bytes: u64, checksums: bool) -> BareReport {
    let gpus = topology.gpu_count();
    let gpus_per_node = topology.cluster.gpus_per_node;
    assert!(
        gpus % gpus_per_node == 0,
        "the bare loop handles full nodes only"
    );
    let mut bare = BareLoop::new(topology, elems, modelled_bytes, checksums);
    let mut woken: Vec<u32> = (0..gpus as u32).collect();
    let mut firing = Vec::new();
    let mut instants = 0;
    loop {
        // As the FIFO executor prefetches the next ranks' futures and states: here the state
        // is one small struct and its mailbox.
        for (i, &rank) in woken.iter().enumerate() {
            if let Some(&ahead) = woken.get(i + PREFETCH_AHEAD) {
                let state = &bare.ranks[ahead as usize];
                prefetch::prefetch(state);
                prefetch::prefetch(state.mailbox.as_slice());
            }
            bare.step(rank as usize);
        }
        woken.clear();
        let Some(instant_ns) = bare.queue.pop_instant(&mut firing) else {
            break;
        };
        bare.now_ns = instant_ns;
        instants += 1;
        for i in 0..firing.len() {
            bare.prefetch_delivery(&firing, i);
            bare.deliver(firing[i], &mut woken);
        }
        firing.clear();
        woken.sort_unstable();
    }
    // The simulator's own check, so both sides spend the same on verifying.
    let finished = bare.ranks.iter().all(|r| r.stage == STAGE_DONE);
    let reference = Reference::new(
        &Collective::new(Algo::Hierarchical),
        &Placement::new(gpus, gpus_per_node),
        Op::AllReduce,
        elems,
    );
    let exact = finished
        && bare.checksum_mismatches == 0
        && (0..gpus)
            .all(|rank| reference.matches(rank, &bare.data[rank * elems..(rank + 1) * elems]));
    BareReport {
        messages: bare.message_count,
        model_time_ns: bare.now_ns,
        instants,
        exact,
    }
}
