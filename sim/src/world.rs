//! The simulated world every rank lives in: the model clock and its event queue, the fabric's
//! links, each rank's mailbox, and the trace digest. [`SimBackend`] is one rank's handle on it,
//! implementing the trainer's `Backend` seam.
//!
//! Model time is a u64 count of nanoseconds owned here, never madsim's clock. It advances only
//! when the executor finds no rank runnable: then [`World::advance`] fires every event of the
//! next instant, which makes the ranks waiting on them runnable again.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use faultline_scenario::config::HangPoint;
use trainer_core::digest::Digest;
use trainer_core::{Backend, CommError, Event, Payload, Placement, Tag, Work};

use trainer_core::{Blob, RestartOrder, StorageError, Tier, WriteStatus, WriteTicket};

use crate::books::{Coverage, FaultKind, RarePath};
use crate::fabric::Fabric;
use crate::slab::Slab;
use crate::storage::{place_of, Place, Storage, StorageConfig};
use crate::topology::{Route, Topology};
use crate::trace::Record;
use digest_tag::DigestTag;
use hot::{
    Message, RankState, Wait, WaitKind, ABORTED, DEAD, FINISHED, MEMORY_LOST, NO_SLOT, TIMED_OUT,
    TIMER_FIRED,
};

mod blast;
pub use blast::{BlastFault, BlastRadius};
mod clock;
mod control;
mod degrades;
mod digest_tag;
mod hangs;
pub use hangs::{FlightReport, InjectedHang};
mod hot;
#[cfg(debug_assertions)]
mod invariants;
mod links;
mod recording;
mod replicas;
mod sdc;
mod slow_links;
mod stragglers;
mod waking;

pub use control::FaultReport;
pub use degrades::{DegradeDetection, DegradeReport};
pub use faultline_scenario::config::{
    ControlConfig, CrashSpec, CrashTarget, CrashWhen, LinkFaultConfig, LinkFlapSpec,
    RecoveryPolicy, SdcConfig, SdcKind, SdcSpec, StragglerConfig, StragglerDetection,
    StragglerKind, StragglerSpec, StragglerTarget, Transport,
};
pub use links::LinkFlapReport;
pub use recording::{Progress, ProgressHook};
pub use replicas::PerReplicaReport;
pub use sdc::{Escape, SdcKindReport};
pub use stragglers::{FlaggedRank, StragglerReport};

/// A message sent at the current instant, waiting for its link time: its sender, and the
/// slot that holds the rest (8 bytes, for the hundreds of thousands of one instant).
struct PendingSend {
    from: u32,
    slot: u32,
}

/// A storage transfer begun at the current instant, waiting for its link and store time:
/// what `World::storage_done_ns` needs, and what to schedule when it is known.
struct PendingStorage {
    rank: u32,
    place: Place,
    bytes: u64,
    to_place: bool,
    /// A write's ticket: its `WriteDone` is scheduled at the transfer's end.
    ticket: Option<u64>,
    /// The rank's timer, when it waits for the transfer: fired at the transfer's end.
    timer_seq: Option<u32>,
}

/// What happens at an instant of model time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventKind {
    /// A message reaches rank `to`; the message waits in `messages[slot]`. The receiver is
    /// named here too, so that its state can be loaded at once, not after the slot.
    Deliver {
        slot: u32,
        to: u32,
    },
    /// A rank's sleep or compute ends, unless the rank stopped waiting for timer `seq`.
    Timer {
        rank: u32,
        seq: u32,
    },
    /// A storage write lands.
    WriteDone {
        ticket: u64,
    },
    /// Scheduled crash `idx` of the controller's list.
    Crash {
        idx: u32,
    },
    /// The next arrival of the stochastic node-failure process.
    RandomCrash,
    /// The heartbeat monitor notices the crash of that generation.
    HeartbeatDetect {
        generation: u64,
    },
    /// The collective watchdog's periodic check.
    Watchdog,
    /// The collective progress monitor's periodic check.
    ProgressCheck,
    /// The job restarts after the restart time.
    Restart,
    /// A bit flips in a stored checkpoint shard.
    CorruptBlob,
    /// Repeat `repeat` of link flap series `idx`: the link goes down.
    LinkFlap {
        idx: u32,
        repeat: u32,
    },
    /// The transport retries the transfer in `messages[slot]` (retry number `attempt`).
    RetrySend {
        slot: u32,
        attempt: u32,
    },
    /// Slowdown `idx` of the straggler list begins.
    StragglerBegins {
        idx: u32,
    },
    /// The next arrival of the random link flap process.
    RandomLinkFlap,
    /// The next arrival of the random hang and desync process.
    RandomGray,
    /// Per-replica: dropped node `node` may rejoin.
    ReplicaRejoin {
        node: u32,
    },
    /// The desync check's exchange that found a mismatch in `generation` ends.
    DesyncCheckFails {
        generation: u64,
    },
    /// Degrade `idx` (`[[faults.degrade]]`, then random ones) begins or ends.
    DegradeBegins {
        idx: u32,
    },
    DegradeEnds {
        idx: u32,
    },
    /// The next arrival of the random degrade process.
    RandomDegrade,
}

/// How many events ahead of the one it fires `World::advance` prefetches a delivery's
/// receiver and payload (and twice as far, its message slot).
const DELIVERY_PREFETCH_AHEAD: usize = 4;

/// Counters that end up in reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FabricStats {
    pub messages: u64,
    pub modelled_bytes: u64,
    pub events_fired: u64,
    /// Distinct instants of model time at which events fired.
    pub instants: u64,
}

pub struct World {
    placement: Placement,
    gpu_flops_per_s: f64,
    /// The run's root seed; every random stream derives from it ([`crate::rng::RngStream`]).
    seed: u64,
    /// Model time now and the events still to fire.
    clock: clock::Clock,
    /// How a woken rank reaches its executor.
    waking: waking::Waking,
    /// Messages on the fabric and in mailboxes.
    messages: Slab<Message>,
    /// The links and when each is next free: the only code that gives a transfer link time.
    fabric: Fabric,
    /// Debug builds: each link's busy-until time at the last invariant check.
    #[cfg(debug_assertions)]
    debug_link_busy_seen_ns: Vec<u64>,
    ranks: Vec<RankState>,
    parked: usize,
    finished: usize,
    digest: Digest,
    stats: FabricStats,
    storage: Storage,
    /// When each rank last parked, for the watchdog; empty (and not written) without one.
    parked_since_ns: Vec<u64>,
    control: Option<control::Control>,
    /// The trace and timeline, when asked for; `None` costs one branch per record site.
    recorder: Option<Box<crate::trace::Recorder>>,
    /// The run's faults, detections and recoveries in words, whatever the recorder keeps.
    story: crate::story::Story,
    /// Messages sent at the current instant, given link time when it ends.
    sent_this_instant: Vec<PendingSend>,
    /// Storage transfers begun at the current instant, given their time after the sends.
    stored_this_instant: Vec<PendingStorage>,
    /// Told after each step rank 0 ends, and the step count it is told against.
    progress: Option<(ProgressHook, u64)>,
    /// A test hook for `faultline check`: the compute call of this index (counted from 0
    /// across all ranks) lasts one nanosecond longer, a real divergence to catch.
    perturb_compute: Option<u64>,
    /// A known bug planted in the trainer's logic, for tests of the swarm; normally `None`.
    planted_bug: Option<trainer_core::PlantedBug>,
    /// Link flaps and the transport policy.
    links: links::LinkFaults,
    /// Slowdowns and straggler scores.
    stragglers: stragglers::Stragglers,
    /// Per-link slowdowns and loss over windows of time (NIC stragglers, degrades).
    slow_links: slow_links::SlowLinks,
    /// Fail-slow links: their episodes and books.
    degrades: degrades::Degrades,
    /// Silent data corruption to inject, and its books.
    sdc: Option<Box<sdc::Sdc>>,
    /// Hangs to inject, and the flight recorder.
    hangs: hangs::Hangs,
    /// What checksumming a payload costs; 0: free.
    checksum_bytes_per_s: f64,
    /// The rare paths of fault handling this run took.
    coverage: Coverage,
}

/// Everything a world is built from: the fabric, the compute rate, the one root seed every
/// random stream derives from ([`crate::rng::RngStream`]), and the parts a scenario configures.
/// A part left `None` is absent (a bare collective has no controller, no SDC books).
pub struct WorldConfig {
    pub topology: Topology,
    pub gpu_flops_per_s: f64,
    pub seed: u64,
    pub storage: StorageConfig,
    pub control: Option<ControlConfig>,
    pub link_faults: Option<LinkFaultConfig>,
    pub stragglers: Option<StragglerConfig>,
    pub degrades: Option<faultline_scenario::DegradeConfig>,
    pub sdc: Option<SdcConfig>,
    pub planted_bug: Option<trainer_core::PlantedBug>,
}

impl WorldConfig {
    /// A fabric and GPUs with nothing else: what a single collective runs on.
    pub fn bare(topology: Topology, gpu_flops_per_s: f64) -> WorldConfig {
        WorldConfig {
            topology,
            gpu_flops_per_s,
            seed: 0,
            storage: StorageConfig::default(),
            control: None,
            link_faults: None,
            stragglers: None,
            degrades: None,
            sdc: None,
            planted_bug: None,
        }
    }

    /// The world of a scenario's run: every part it configures, seeded by `run.seed`.
    pub fn of(scenario: &faultline_scenario::Scenario) -> WorldConfig {
        WorldConfig {
            seed: scenario.run.seed,
            storage: scenario.storage.clone(),
            control: Some(scenario.control.clone()),
            link_faults: Some(scenario.link_faults.clone()),
            stragglers: Some(scenario.stragglers.clone()),
            degrades: Some(scenario.degrades.clone()),
            sdc: Some(scenario.sdc.clone()),
            planted_bug: scenario.planted_bug,
            ..WorldConfig::bare(
                Topology::new(&scenario.cluster, &scenario.fabric),
                scenario.gpu_achieved_flops_per_s,
            )
        }
    }
}

impl World {
    /// Builds the world and configures its parts, in a fixed order: the events they schedule
    /// now (crashes, flaps, slowdowns) take their places in the queue in this order.
    pub fn new(config: WorldConfig) -> World {
        let mut world = World::with_fabric(config.topology, config.gpu_flops_per_s, config.seed);
        world.storage = Storage::new(config.storage, world.placement.node_count());
        if let Some(control) = config.control {
            world.configure_control(control);
        }
        world.planted_bug = config.planted_bug;
        if let Some(link_faults) = config.link_faults {
            world.configure_link_faults(link_faults);
        }
        if let Some(stragglers) = config.stragglers {
            world.configure_stragglers(stragglers);
        }
        if let Some(degrades) = config.degrades {
            world.configure_degrades(degrades);
        }
        if let Some(sdc) = config.sdc {
            world.configure_sdc(sdc);
        }
        world
    }

    fn with_fabric(topology: Topology, gpu_flops_per_s: f64, seed: u64) -> World {
        let placement = Placement::new(topology.cluster.gpus, topology.cluster.gpus_per_node);
        let ranks = (0..placement.world_size)
            .map(|_| RankState::new())
            .collect();
        World {
            placement,
            fabric: Fabric::new(topology),
            #[cfg(debug_assertions)]
            debug_link_busy_seen_ns: Vec::new(),
            gpu_flops_per_s,
            seed,
            clock: clock::Clock::default(),
            waking: waking::Waking::new(placement.world_size),
            messages: Slab::default(),
            ranks,
            parked: 0,
            finished: 0,
            digest: Digest::new(),
            stats: FabricStats::default(),
            storage: Storage::new(StorageConfig::default(), placement.node_count()),
            control: None,
            parked_since_ns: Vec::new(),
            recorder: None,
            story: Default::default(),
            sent_this_instant: Vec::new(),
            stored_this_instant: Vec::new(),
            progress: None,
            perturb_compute: None,
            planted_bug: None,
            links: links::LinkFaults::default(),
            stragglers: stragglers::Stragglers::default(),
            slow_links: slow_links::SlowLinks::default(),
            degrades: degrades::Degrades::default(),
            sdc: None,
            hangs: hangs::Hangs::new((Vec::new(), Vec::new()), None, 0, false),
            checksum_bytes_per_s: 0.0,
            coverage: Coverage::default(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// When an event was due past the longest model time a run represents, if one was: the
    /// run stopped there (see `trainer_core::units::MAX_MODEL_TIME_NS`).
    pub fn passed_horizon_at_ns(&self) -> Option<u64> {
        self.clock.passed_horizon_at_ns()
    }

    /// The storage model, for tests and reports.
    pub fn storage_mut(&mut self) -> &mut Storage {
        &mut self.storage
    }

    /// The storage model, read-only: its atomicity audit goes into the report.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn rank_count(&self) -> usize {
        self.ranks.len()
    }

    /// Ranks that have neither finished nor parked on a backend future.
    pub fn runnable(&self) -> usize {
        self.ranks.len() - self.finished - self.parked
    }

    pub fn all_finished(&self) -> bool {
        self.finished == self.ranks.len()
    }

    /// The rare paths of fault handling this run has taken so far.
    pub fn coverage(&self) -> &Coverage {
        &self.coverage
    }

    pub fn stats(&self) -> FabricStats {
        self.stats
    }

    pub fn trace_digest(&self) -> u64 {
        self.digest.finish()
    }

    pub fn mark_finished(&mut self, rank: usize) {
        self.file_unclaimed_delivery(rank);
        let state = &mut self.ranks[rank];
        debug_assert!(!state.has(FINISHED) && state.wait() == Wait::Nothing);
        state.set(FINISHED, true);
        self.finished += 1;
        self.maybe_schedule_restart();
        self.digest.u64(DigestTag::Finished.word(rank as u64));
        self.digest.u64(self.clock.now_ns());
        self.record(Some(rank as u32), Record::Finished);
    }

    /// Ranks parked with nothing in the queue to wake them: what a deadlock report shows.
    pub fn stuck_ranks(&self, limit: usize) -> Vec<String> {
        self.ranks
            .iter()
            .enumerate()
            .filter_map(|(rank, state)| match state.wait() {
                Wait::Message { from, tag } => Some(format!(
                    "rank {rank} waits for rank {from} (op {} phase {} round {})",
                    tag.op_id, tag.phase, tag.round
                )),
                Wait::Timer => Some(format!("rank {rank} waits for a timer")),
                Wait::Restart => Some(format!("rank {rank} waits for the job to restart")),
                Wait::Nothing | Wait::Delivered { .. } => None,
            })
            .take(limit)
            .collect()
    }

    /// Wake ranks only by listing them for [`World::take_woken`], not through wakers: for an
    /// executor that polls from its own queue.
    pub fn list_woken_instead_of_waking(&mut self) {
        self.waking.list_instead_of_waking();
    }

    /// Ranks woken since the last call, in rank order.
    pub fn take_woken(&mut self, into: &mut Vec<u32>) {
        self.waking.take_woken(into);
    }

    fn schedule(&mut self, time_ns: u64, what: EventKind) {
        self.clock.schedule(time_ns, what);
    }

    /// The message in `slot`, for rank `to`, arrives at `time_ns`.
    fn schedule_delivery(&mut self, time_ns: u64, slot: u32, to: usize) {
        let to = to as u32;
        self.schedule(time_ns, EventKind::Deliver { slot, to });
    }

    /// The restart generation messages are sent in now (0 without a fault controller).
    fn generation(&self) -> u64 {
        self.control.as_ref().map_or(0, |c| c.generation)
    }

    /// Fires every event of the next instant. Returns false when the queue is empty.
    pub fn advance(&mut self) -> bool {
        self.reserve_sends_of_the_instant();
        self.time_storage_of_the_instant();
        let Some(firing) = self.clock.next_instant() else {
            return false;
        };
        self.stats.instants += 1;
        self.prefetch_first_deliveries(&firing);
        for i in 0..firing.len() {
            self.prefetch_delivery(&firing, i);
            self.fire(firing[i]);
        }
        self.clock.done_firing(firing);
        self.prefetch_next_instant();
        #[cfg(debug_assertions)]
        self.check_invariants();
        true
    }

    /// Starts loading the slots and receivers of the deliveries the next instant most likely
    /// fires, and the state of the ranks its timers wake, while the ranks woken now are
    /// polled: in a training step's two million small instants
    /// [`World::prefetch_first_deliveries`] is issued only just before its loads.
    #[inline(always)]
    fn prefetch_next_instant(&self) {
        for what in self.clock.peek_next(2 * DELIVERY_PREFETCH_AHEAD) {
            match *what {
                EventKind::Deliver { slot, to } => self.prefetch_slot_and_receiver(slot, to),
                EventKind::Timer { rank, .. } => self.prefetch_rank_state(rank as usize),
                _ => {}
            }
        }
    }

    /// What firing a delivery reads: its message slot and its receiver's state, side by side.
    #[inline(always)]
    fn prefetch_slot_and_receiver(&self, slot: u32, to: u32) {
        self.messages.prefetch(slot);
        self.prefetch_rank_state(to as usize);
    }

    /// The deliveries [`World::prefetch_delivery`] does not reach ahead of: the instant's
    /// first ones (all of them in most of a training step's two million small instants). The
    /// slot and the receiver's state load side by side; the payload data is left to the
    /// executor, which prefetches it before the receiver's poll.
    #[inline(always)]
    fn prefetch_first_deliveries(&self, firing: &[EventKind]) {
        for what in firing.iter().take(2 * DELIVERY_PREFETCH_AHEAD) {
            if let EventKind::Deliver { slot, to } = *what {
                self.prefetch_slot_and_receiver(slot, to);
            }
        }
    }

    /// Starts loading rank `rank`'s state (the executor polls it soon).
    pub fn prefetch_rank_state(&self, rank: usize) {
        if let Some(state) = self.ranks.get(rank) {
            crate::prefetch::prefetch(state);
        }
    }

    /// Starts loading what polling `rank` touches besides its state (which
    /// [`World::prefetch_rank_state`] loads, earlier): the data of the payload delivered to
    /// it, if one was, and its GPU's own links' busy-until times (one cache line), where the
    /// route of its next send starts. Of `reserve_route`'s time at 100,000 GPUs, half was
    /// waiting for that line. The executor calls this; it names nothing inside the world.
    #[inline(always)]
    pub fn prefetch_for_poll(&self, rank: usize) {
        if let Some(payload) = self.ranks.get(rank).and_then(|s| s.delivered.as_ref()) {
            crate::prefetch::prefetch(&*payload.data);
        }
        self.fabric.prefetch_links_of(rank);
    }

    /// While the event at `i` fires, starts loading what a later delivery of the instant
    /// touches: the message slot and its receiver's state, `2 * DELIVERY_PREFETCH_AHEAD`
    /// events ahead. At 100,000 ranks neither the slab nor the rank states fit in cache, and
    /// firing one delivery after another would wait for each miss in turn. A delivery does
    /// not read the payload's data; prefetching it here too took fill
    /// buffers from these loads and was 3% slower, its lines gone again by the receiver's poll
    /// in a large instant.
    #[inline(always)]
    fn prefetch_delivery(&self, firing: &[EventKind], i: usize) {
        if let Some(&EventKind::Deliver { slot, to }) = firing.get(i + 2 * DELIVERY_PREFETCH_AHEAD)
        {
            self.prefetch_slot_and_receiver(slot, to);
        }
    }

    fn fire(&mut self, what: EventKind) {
        self.stats.events_fired += 1;
        match what {
            EventKind::Deliver { slot, .. } => self.deliver(slot),
            EventKind::Timer { rank, seq } => {
                let state = &mut self.ranks[rank as usize];
                if state.wait_kind == WaitKind::Timer && state.timer_seq == seq {
                    state.set(TIMER_FIRED, true);
                    self.wake(rank as usize);
                }
            }
            EventKind::WriteDone { ticket } => {
                if self.storage.complete(ticket, self.clock.now_ns()) {
                    self.count_injected(FaultKind::StorageWriteFailure);
                    self.coverage.reach(RarePath::StorageWriteFailed);
                    self.record(None, Record::StorageWriteFailed);
                }
            }
            EventKind::CorruptBlob => self.fire_corrupt_blob(),
            EventKind::Crash { idx } => self.fire_crash(idx),
            EventKind::RandomCrash => self.fire_random_crash(),
            EventKind::HeartbeatDetect { generation } => self.fire_heartbeat_detect(generation),
            EventKind::Watchdog => self.fire_watchdog(),
            EventKind::ProgressCheck => self.fire_progress_check(),
            EventKind::DesyncCheckFails { generation } => self.fire_desync_check(generation),
            EventKind::RandomGray => self.fire_random_gray(),
            EventKind::Restart => self.fire_restart(),
            EventKind::LinkFlap { idx, repeat } => self.fire_link_flap(idx, repeat),
            EventKind::RetrySend { slot, attempt } => self.fire_retry_send(slot, attempt),
            EventKind::StragglerBegins { idx } => self.fire_straggler_begins(idx),
            EventKind::DegradeBegins { idx } => self.fire_degrade_begins(idx),
            EventKind::DegradeEnds { idx } => self.fire_degrade_ends(idx),
            EventKind::RandomDegrade => self.fire_random_degrade(),
            EventKind::RandomLinkFlap => self.fire_random_link_flap(),
            EventKind::ReplicaRejoin { node } => self.fire_replica_rejoin(node),
        }
    }

    /// Hands the message in `slot` to its receiver's slot if it waits for exactly this one,
    /// else links it into the receiver's mailbox where it lies.
    fn deliver(&mut self, slot: u32) {
        let message = self.messages.get(slot).expect("a message in flight");
        let (from, to, tag) = (message.from, message.to, message.tag);
        if !message.of_generation(self.generation()) || self.ranks[to as usize].has(DEAD) {
            // Sent before a restart, or to a rank that died: it never arrives.
            self.messages.take(slot).expect("a message");
            return;
        }
        if self.sdc.is_some() {
            self.corrupt_in_flight(slot);
        }
        let message = self.messages.get_mut(slot).expect("a message in flight");
        self.digest
            .u64(DigestTag::Deliver.word((from as u64) << 24 | to as u64));
        self.digest
            .u64(tag.op_id ^ (tag.phase as u64) << 32 ^ tag.round as u64);
        self.digest.u64(self.clock.now_ns());
        if let Some(recorder) = &mut self.recorder {
            let bytes = message.payload.modelled_bytes;
            recorder.record(
                self.clock.now_ns(),
                Some(to),
                Record::Deliver { from, tag, bytes },
            );
        }
        let state = &mut self.ranks[to as usize];
        if state.wait() == (Wait::Message { from, tag }) {
            let message = self.messages.take(slot).expect("a message");
            state.hand_over(message);
            self.wake(to as usize);
            self.ranks[to as usize].set_wait(Wait::Delivered { from, tag });
        } else {
            message.next = state.mailbox_head;
            state.mailbox_head = slot;
        }
    }

    /// A parked rank that woke by itself (its wait was cut short): no waker to call.
    fn unpark(&mut self, rank: usize) {
        self.ranks[rank].set_wait(Wait::Nothing);
        self.ranks[rank].set(TIMER_FIRED, false);
        self.parked -= 1;
    }

    fn wake(&mut self, rank: usize) {
        let state = &mut self.ranks[rank];
        state.set_wait(Wait::Nothing);
        self.parked -= 1;
        self.waking.notify(rank);
    }

    fn park(&mut self, rank: usize, wait: Wait, waker: &Waker) {
        self.file_unclaimed_delivery(rank);
        self.waking.register(rank, waker);
        let state = &mut self.ranks[rank];
        if state.wait() == wait {
            return; // polled again while still parked: only the waker may have changed
        }
        debug_assert_eq!(
            state.wait(),
            Wait::Nothing,
            "a rank waits on one thing at a time"
        );
        state.set_wait(wait);
        if let Some(since) = self.parked_since_ns.get_mut(rank) {
            *since = self.clock.now_ns();
        }
        self.parked += 1;
    }

    /// Puts a message on the fabric. Each directed link serialises what crosses it: the
    /// transfer starts when the sender's turn comes on every link of the route, occupies each
    /// for `bytes / bottleneck bandwidth`, and arrives after the route's latencies on top.
    fn send(&mut self, from: usize, to: usize, tag: Tag, payload: Payload) {
        self.stats.messages += 1;
        self.stats.modelled_bytes += payload.modelled_bytes;
        let slot = self.store_current(from, to, tag, payload);
        let from = from as u32;
        self.sent_this_instant.push(PendingSend { from, slot });
    }

    /// Gives the sends of this instant their link time, in an order of the model alone: by
    /// sender, and each sender's sends in the order it made them. The order the executor
    /// polled the ranks in (madsim's seeded shuffle, FIFO's queue) never reaches model time.
    fn reserve_sends_of_the_instant(&mut self) {
        if self.sent_this_instant.is_empty() {
            return;
        }
        let mut sends = std::mem::take(&mut self.sent_this_instant);
        sends.sort_by_key(|s| s.from); // stable: a sender's own order is kept
        let now_ns = self.clock.now_ns();
        for (i, s) in sends.iter().enumerate() {
            if self.links.active() {
                self.try_transfer(s.slot, 0);
                continue;
            }
            // At 100,000 GPUs the next message and its route's links are out of cache.
            if let Some(next) = sends.get(i + 1).and_then(|n| self.messages.get(n.slot)) {
                let next_route = (self.fabric).route(next.from as usize, next.to as usize, now_ns);
                self.fabric.prefetch_route(&next_route);
            }
            let message = self
                .messages
                .get(s.slot)
                .expect("a message sent this instant");
            let (to, bytes) = (message.to as usize, message.payload.modelled_bytes);
            let checksummed = message.checksummed();
            let route = self.fabric.route(s.from as usize, to, now_ns);
            let leaves_ns = self.sends_leave_ns(s.from as usize, now_ns);
            let mut arrival_ns = self.reserve_route(route, bytes, leaves_ns);
            if checksummed {
                arrival_ns += self.checksum_ns(bytes);
            }
            self.schedule_delivery(arrival_ns, s.slot, to);
        }
        sends.clear();
        self.sent_this_instant = sends;
    }

    /// Gives the storage transfers of this instant their time, by rank and each rank's in the
    /// order it began them (after the instant's sends, which they contend with on the NICs),
    /// and schedules what waits on each: a write's `WriteDone`, a waiting rank's timer.
    fn time_storage_of_the_instant(&mut self) {
        if self.stored_this_instant.is_empty() {
            return;
        }
        let mut transfers = std::mem::take(&mut self.stored_this_instant);
        transfers.sort_by_key(|t| t.rank); // stable: a rank's own order is kept
        for t in &transfers {
            let rank = t.rank as usize;
            let done = self.storage_done_ns(rank, t.place, t.bytes, t.to_place);
            if let Some(ticket) = t.ticket {
                self.schedule(done, EventKind::WriteDone { ticket });
            }
            if let Some(seq) = t.timer_seq {
                self.schedule(done, EventKind::Timer { rank: t.rank, seq });
            }
        }
        transfers.clear();
        self.stored_this_instant = transfers;
    }

    /// Reserves the route from GPU `from` to GPU `to` for `bytes` and returns the arrival
    /// time (see [`Fabric::reserve`]).
    fn transfer(&mut self, from: usize, to: usize, bytes: u64) -> u64 {
        self.transfer_from(from, to, bytes, self.clock.now_ns())
    }

    /// As [`World::transfer`], for a transfer that cannot start before `earliest_ns`.
    fn transfer_from(&mut self, from: usize, to: usize, bytes: u64, earliest_ns: u64) -> u64 {
        if from == to {
            return earliest_ns;
        }
        let route = self.fabric.route(from, to, self.clock.now_ns());
        self.reserve_route(route, bytes, earliest_ns)
    }

    /// Reserves `route` for `bytes`, with the slowdowns and loss of its links when some link
    /// may be slow (checked once per transfer, not per link: the hot path of a run without
    /// slow links; see `world/slow_links.rs`).
    #[inline]
    fn reserve_route(&mut self, route: Route, bytes: u64, earliest_ns: u64) -> u64 {
        if self.slow_links.any() {
            return self.reserve_slowed(route, bytes, earliest_ns);
        }
        let now_ns = self.clock.now_ns();
        (self.fabric).reserve(route, bytes, earliest_ns, now_ns, None)
    }

    /// The GPU of `node` with `rank`'s local index (or the node's last), for peer transfers.
    fn peer_gpu(&self, node: usize, rank: usize) -> usize {
        let local = self
            .placement
            .local_idx_of(rank)
            .min(self.placement.gpus_on_node(node) - 1);
        node * self.placement.gpus_per_node + local
    }

    /// When moving `bytes` between `rank` and `place` ends, starting now.
    fn storage_done_ns(&mut self, rank: usize, place: Place, bytes: u64, to_place: bool) -> u64 {
        let node = self.placement.node_of(rank);
        match place {
            Place::Host(n) if n == node => self.clock.now_ns() + self.storage.host_copy_ns(bytes),
            Place::Host(n) => {
                let peer = self.peer_gpu(n, rank);
                let (from, to) = if to_place { (rank, peer) } else { (peer, rank) };
                self.transfer(from, to, bytes) + self.storage.host_copy_ns(bytes)
            }
            Place::Persistent => {
                self.storage
                    .persistent_transfer_done_ns(node, bytes, self.clock.now_ns())
            }
        }
    }

    fn node_alive(&self, node: usize) -> bool {
        let first = node * self.placement.gpus_per_node;
        !self.ranks[first].has(DEAD)
    }

    /// Starts a write; returns its ticket and when it lands.
    /// Starts a write; returns its ticket, and the transfer for the caller to wait on (none
    /// when the target host is already dead: the write failed at once). Its time is given
    /// when the instant ends (see [`World::time_storage_of_the_instant`]).
    fn put_async(
        &mut self,
        rank: usize,
        tier: Tier,
        name: &str,
        blob: Blob,
    ) -> (u64, Option<PendingStorage>) {
        let node = self.placement.node_of(rank);
        let place = place_of(tier, node);
        let bytes = blob.modelled_bytes;
        let ticket = self.storage.begin_write(place, name, blob, node);
        if let Place::Host(n) = place {
            if !self.node_alive(n) {
                self.storage.crash_node(n);
                return (ticket, None);
            }
        }
        let transfer = PendingStorage {
            rank: rank as u32,
            place,
            bytes,
            to_place: true,
            ticket: Some(ticket),
            timer_seq: None,
        };
        (ticket, Some(transfer))
    }

    /// Queues `transfer` for the end of the instant, with the rank's timer when it waits.
    fn begin_storage_transfer(&mut self, mut transfer: PendingStorage, wait: bool) -> Option<u32> {
        let rank = transfer.rank as usize;
        if wait {
            self.ranks[rank].timer_seq += 1;
            transfer.timer_seq = Some(self.ranks[rank].timer_seq);
        }
        let seq = transfer.timer_seq;
        self.stored_this_instant.push(transfer);
        seq
    }

    /// Drops every message waiting for `rank` (after a restart nothing old may arrive).
    fn clear_mailbox(&mut self, rank: usize) {
        let mut slot = std::mem::replace(&mut self.ranks[rank].mailbox_head, NO_SLOT);
        while slot != NO_SLOT {
            let message = self.messages.take(slot).expect("a mailed message");
            slot = message.next;
        }
        self.ranks[rank].delivered = None;
    }

    /// Stores a message of the current generation from `from` to `to` in a free slot.
    fn store_current(&mut self, from: usize, to: usize, tag: Tag, payload: Payload) -> u32 {
        let (from, to) = (from as u32, to as u32);
        let message = Message::new(self.generation(), from, to, tag, payload, NO_SLOT);
        self.messages.insert(message)
    }

    /// The payload from `from` with `tag`, if it has arrived, taken by `rank`.
    #[inline(always)]
    fn take_delivered(&mut self, rank: usize, from: u32, tag: Tag) -> Option<Payload> {
        let payload = self.take_payload(rank, from, tag)?;
        if self.sdc.as_ref().is_some_and(|sdc| sdc.unconsumed > 0) {
            self.sdc_consumed(rank, from, tag);
        }
        Some(payload)
    }

    /// The payload from `from` with `tag`, if it has arrived: handed straight to the rank's
    /// slot if it was waiting for it, else filed in its mailbox.
    fn take_payload(&mut self, rank: usize, from: u32, tag: Tag) -> Option<Payload> {
        let state = &mut self.ranks[rank];
        if state.wait() == (Wait::Delivered { from, tag }) {
            state.set_wait(Wait::Nothing);
            return state.take_delivered();
        }
        self.file_unclaimed_delivery(rank);
        // The oldest match: the last in the newest-first list.
        let (mut found, mut found_prev) = (NO_SLOT, NO_SLOT);
        let (mut prev, mut slot) = (NO_SLOT, self.ranks[rank].mailbox_head);
        while slot != NO_SLOT {
            let message = self.messages.get(slot).expect("a mailed message");
            if message.from == from && message.tag == tag {
                (found, found_prev) = (slot, prev);
            }
            (prev, slot) = (slot, message.next);
        }
        if found == NO_SLOT {
            return None;
        }
        let message = self.messages.take(found).expect("a mailed message");
        match found_prev {
            NO_SLOT => self.ranks[rank].mailbox_head = message.next,
            prev => self.messages.get_mut(prev).expect("a mailed message").next = message.next,
        }
        Some(message.into_payload())
    }

    /// A delivery nobody claimed (the receive that waited for it was dropped) goes to the
    /// mailbox like any early message.
    fn file_unclaimed_delivery(&mut self, rank: usize) {
        let state = &mut self.ranks[rank];
        if let Wait::Delivered { from, tag } = state.wait() {
            state.set_wait(Wait::Nothing);
            let payload = state.take_delivered().expect("a delivered payload");
            let head = state.mailbox_head;
            let message = Message::new(self.generation(), from, rank as u32, tag, payload, head);
            let slot = self.messages.insert(message);
            self.ranks[rank].mailbox_head = slot;
        }
    }

    fn emit(&mut self, rank: usize, event: &Event) {
        if matches!(
            event,
            Event::ComputeTimed { .. } | Event::StepBegin { .. } | Event::StepEnd { .. }
        ) {
            self.observe_for_stragglers(rank, event);
        }
        if let Event::ComputeTimed { .. } = event {
            // Telemetry for the scores, derived from model time already in the trace.
            return;
        }
        self.record(Some(rank as u32), Record::Rank(event));
        if matches!(
            event,
            Event::StepBegin { .. } | Event::CollectiveBegin { .. } | Event::CollectiveEnd { .. }
        ) {
            self.hangs_observe(rank, event);
        }
        self.observe(rank, event);
        self.tell_progress(rank, event);
        self.sdc_observe(rank, event);
        self.digest_event(rank, event);
    }

    /// The event's words in the trace digest.
    fn digest_event(&mut self, rank: usize, event: &Event) {
        self.digest.u64(DigestTag::Event.word(rank as u64));
        self.digest.u64(self.clock.now_ns());
        match *event {
            Event::StepBegin { step } => self.digest.u64(step),
            Event::StepEnd { step, loss } => {
                self.digest.u64(step);
                self.digest.u64(loss.to_bits() as u64);
            }
            Event::CollectiveBegin {
                op_id, op, algo, ..
            } => {
                self.digest.u64(op_id);
                self.digest.bytes(op.name().as_bytes());
                self.digest.bytes(algo.name().as_bytes());
            }
            Event::CollectiveEnd { op_id } => self.digest.u64(op_id),
            Event::CheckpointSnapshot { step, stall_ns } => {
                self.digest.u64(step);
                self.digest.u64(stall_ns);
            }
            Event::CheckpointCommitted { step } | Event::RestoreFallback { step } => {
                self.digest.u64(step)
            }
            Event::Restored { step, tier } => {
                self.digest.u64(step);
                self.digest.bytes(format!("{tier:?}").as_bytes());
            }
            Event::ComputeTimed { .. } => unreachable!("returned above"),
            Event::ChecksumMismatch { peer, tag } => {
                self.digest.u64(peer as u64);
                self.digest
                    .u64(tag.op_id ^ (tag.phase as u64) << 32 ^ tag.round as u64);
            }
            Event::SdcSuspect { step, check } => {
                self.digest.u64(step);
                self.digest.bytes(check.name().as_bytes());
            }
            Event::SdcVerdict { step, persistent } => {
                self.digest.u64(step);
                self.digest.u64(u64::from(persistent));
            }
            Event::HealthCheckCost {
                step,
                check,
                elapsed_ns,
            } => {
                self.digest.u64(step);
                self.digest.bytes(check.name().as_bytes());
                self.digest.u64(elapsed_ns);
            }
            Event::SdcRollback { from_step, to_step } => {
                self.digest.u64(from_step);
                self.digest.u64(to_step);
            }
        }
    }
}

/// One rank's handle on the shared world. Every rank runs on the executor's one thread, so the
/// world is shared through `Rc<RefCell<_>>`; a borrow never spans an await. Two words: every
/// rank's future holds one, and the placement, asked for once a collective, is the world's.
#[derive(Clone)]
pub struct SimBackend {
    rank: usize,
    world: Rc<RefCell<World>>,
}

impl SimBackend {
    pub fn new(world: Rc<RefCell<World>>, rank: usize) -> SimBackend {
        SimBackend { rank, world }
    }

    /// Waits for a storage transfer begun now: its end is known when the instant ends.
    fn until_transferred(
        &self,
        transfer: PendingStorage,
    ) -> impl Future<Output = Result<(), CommError>> + '_ {
        Sleep {
            world: &self.world,
            rank: self.rank,
            until: Some(Until::Transferred(transfer)),
        }
    }
}

impl Backend for SimBackend {
    fn rank(&self) -> usize {
        self.rank
    }

    fn placement(&self) -> Placement {
        self.world.borrow().placement
    }

    fn replica_group(&self) -> trainer_core::Group {
        let world = self.world.borrow();
        match &world.control {
            Some(control) => control.replicas.group.clone(),
            None => world.placement.world(),
        }
    }

    fn rejoined_nodes(&self) -> Vec<usize> {
        match &self.world.borrow().control {
            Some(control) => control.replicas.rejoined.clone(),
            None => Vec::new(),
        }
    }

    fn send(
        &self,
        to: usize,
        tag: Tag,
        payload: Payload,
    ) -> impl Future<Output = Result<(), CommError>> {
        let mut world = self.world.borrow_mut();
        if world.ranks[self.rank].has(ABORTED) {
            return std::future::ready(Err(CommError::Aborted));
        }
        world.send(self.rank, to, tag, payload);
        std::future::ready(Ok(()))
    }

    fn recv(&self, from: usize, tag: Tag) -> impl Future<Output = Result<Payload, CommError>> {
        Recv {
            world: &self.world,
            rank: self.rank as u32,
            from: from as u32,
            tag,
        }
    }

    fn recv_resend(
        &self,
        from: usize,
        tag: Tag,
    ) -> impl Future<Output = Result<Payload, CommError>> {
        let resent = {
            let mut world = self.world.borrow_mut();
            !world.ranks[self.rank].has(ABORTED) && world.resend(from, self.rank, tag)
        };
        async move {
            if !resent {
                return Err(CommError::CorruptPayload { peer: from });
            }
            self.recv(from, tag).await
        }
    }

    fn fault_point(&self, point: trainer_core::FaultPoint, data: &mut [f32]) {
        let mut world = self.world.borrow_mut();
        if world.sdc.is_some() {
            world.sdc_fault_point(self.rank, point, data);
        }
    }

    fn add_assign(&self, acc: &mut [f32], src: &[f32]) {
        trainer_core::kernels::add_assign(acc, src);
        let mut world = self.world.borrow_mut();
        if world.kernel_may_be_faulty(self.rank) {
            world.faulty_reduction(self.rank, acc, src);
        }
    }

    fn now_ns(&self) -> u64 {
        self.world.borrow().clock.now_ns()
    }

    fn sleep(&self, duration_ns: u64) -> impl Future<Output = Result<(), CommError>> {
        Sleep {
            world: &self.world,
            rank: self.rank,
            until: Some(Until::After(duration_ns)),
        }
    }

    fn compute(&self, work: Work) -> impl Future<Output = Result<(), CommError>> {
        let mut world = self.world.borrow_mut();
        let until = match world.hang_now(self.rank) {
            // The batch never arrives: the compute never begins.
            Some(HangPoint::DataLoader) => Until::Hung,
            // The kernel begins and never returns.
            Some(HangPoint::Kernel) => {
                world.begin_compute(self.rank, work);
                Until::Hung
            }
            None => Until::After(world.begin_compute(self.rank, work)),
        };
        Sleep {
            world: &self.world,
            rank: self.rank,
            until: Some(until),
        }
    }

    fn emit(&self, event: Event) {
        self.world.borrow_mut().emit(self.rank, &event);
    }

    fn issued_op_id(&self, op_id: u64) -> u64 {
        self.world.borrow_mut().issued_op_id(self.rank, op_id)
    }

    fn store_put(
        &self,
        tier: Tier,
        name: &str,
        blob: Blob,
    ) -> impl Future<Output = Result<(), StorageError>> {
        let name = name.to_string();
        async move {
            if self.world.borrow().ranks[self.rank].has(ABORTED) {
                return Err(StorageError::Aborted);
            }
            let (ticket, transfer) = self
                .world
                .borrow_mut()
                .put_async(self.rank, tier, &name, blob);
            if let Some(transfer) = transfer {
                if self.until_transferred(transfer).await.is_err() {
                    return Err(StorageError::Aborted);
                }
            }
            match self.world.borrow().storage.status(ticket) {
                WriteStatus::Durable => Ok(()),
                _ => Err(StorageError::WriteFailed { name }),
            }
        }
    }

    fn store_put_async(&self, tier: Tier, name: &str, blob: Blob) -> WriteTicket {
        let mut world = self.world.borrow_mut();
        let (ticket, transfer) = world.put_async(self.rank, tier, name, blob);
        if let Some(transfer) = transfer {
            world.begin_storage_transfer(transfer, false);
        }
        WriteTicket(ticket)
    }

    fn store_poll(&self, ticket: WriteTicket) -> WriteStatus {
        self.world.borrow().storage.status(ticket.0)
    }

    fn store_get(
        &self,
        tier: Tier,
        name: &str,
    ) -> impl Future<Output = Result<Blob, StorageError>> {
        let name = name.to_string();
        async move {
            let (blob, transfer) = {
                let mut world = self.world.borrow_mut();
                if world.ranks[self.rank].has(ABORTED) {
                    return Err(StorageError::Aborted);
                }
                let place = place_of(tier, world.placement.node_of(self.rank));
                let Some(blob) = world.storage.get(place, &name).cloned() else {
                    return Err(StorageError::NotFound { name });
                };
                let now_ns = world.clock.now_ns();
                world.storage.audit.read(&name, now_ns);
                let transfer = PendingStorage {
                    rank: self.rank as u32,
                    place,
                    bytes: blob.modelled_bytes,
                    to_place: false,
                    ticket: None,
                    timer_seq: None,
                };
                (blob, transfer)
            };
            if self.until_transferred(transfer).await.is_err() {
                return Err(StorageError::Aborted);
            }
            Ok(blob)
        }
    }

    fn store_list(&self, tier: Tier, prefix: &str) -> Vec<String> {
        let world = self.world.borrow();
        world
            .storage
            .list(place_of(tier, world.placement.node_of(self.rank)), prefix)
    }

    fn store_delete(&self, tier: Tier, name: &str) {
        let mut world = self.world.borrow_mut();
        let place = place_of(tier, world.placement.node_of(self.rank));
        world.storage.delete(place, name);
    }

    fn await_restart(&self, error: &CommError) -> impl Future<Output = RestartOrder> {
        AwaitRestart {
            world: &self.world,
            rank: self.rank,
            error: Some(error.clone()),
        }
    }

    fn planted_bug(&self) -> Option<trainer_core::PlantedBug> {
        self.world.borrow().planted_bug
    }
}

struct Recv<'a> {
    world: &'a RefCell<World>,
    /// u32, like `from`: the future sits at the deepest level of every rank's future.
    rank: u32,
    from: u32,
    tag: Tag,
}

impl Future for Recv<'_> {
    type Output = Result<Payload, CommError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut world = self.world.borrow_mut();
        let rank = self.rank as usize;
        if world.ranks[rank].has(ABORTED) {
            return Poll::Ready(Err(CommError::Aborted));
        }
        if world.ranks[rank].take_flag(TIMED_OUT) {
            let (peer, tag) = (self.from as usize, self.tag);
            return Poll::Ready(Err(CommError::Timeout { peer, tag }));
        }
        match world.take_delivered(rank, self.from, self.tag) {
            Some(payload) => Poll::Ready(Ok(payload)),
            None => {
                world.park(
                    rank,
                    Wait::Message {
                        from: self.from,
                        tag: self.tag,
                    },
                    cx.waker(),
                );
                Poll::Pending
            }
        }
    }
}

struct Sleep<'a> {
    world: &'a RefCell<World>,
    rank: usize,
    /// What the rank waits for; taken when its timer is set up on the first poll.
    until: Option<Until>,
}

/// What a [`Sleep`] waits for.
enum Until {
    /// This long from the first poll.
    After(u64),
    /// A storage transfer's end, known when the instant ends.
    Transferred(PendingStorage),
    /// Never (a hung rank): only the job's stop wakes it.
    Hung,
}

impl Future for Sleep<'_> {
    type Output = Result<(), CommError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut world = self.world.borrow_mut();
        let rank = self.rank;
        if world.ranks[rank].has(ABORTED) {
            if world.ranks[rank].wait() == Wait::Timer {
                world.unpark(rank);
            }
            return Poll::Ready(Err(CommError::Aborted));
        }
        match self.until.take() {
            None => {
                if world.ranks[rank].take_flag(TIMER_FIRED) {
                    return Poll::Ready(Ok(()));
                }
                // Polled again before the timer fired (a spurious wake): park again.
            }
            Some(Until::After(0)) => return Poll::Ready(Ok(())),
            Some(Until::After(duration_ns)) => {
                let at = world.clock.now_ns().saturating_add(duration_ns);
                world.ranks[rank].timer_seq += 1;
                let seq = world.ranks[rank].timer_seq;
                world.schedule(
                    at,
                    EventKind::Timer {
                        rank: rank as u32,
                        seq,
                    },
                );
            }
            Some(Until::Transferred(transfer)) => {
                world.begin_storage_transfer(transfer, true);
            }
            Some(Until::Hung) => {}
        }
        world.park(rank, Wait::Timer, cx.waker());
        Poll::Pending
    }
}

struct AwaitRestart<'a> {
    world: &'a RefCell<World>,
    rank: usize,
    /// Reported on the first poll.
    error: Option<CommError>,
}

impl Future for AwaitRestart<'_> {
    type Output = RestartOrder;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RestartOrder> {
        let rank = self.rank;
        let mut world = self.world.borrow_mut();
        if let Some(error) = self.error.take() {
            world.enter_await_restart(rank, &error);
            world.park(rank, Wait::Restart, cx.waker());
            return Poll::Pending;
        }
        if world.ranks[rank].wait() == Wait::Restart {
            world.park(rank, Wait::Restart, cx.waker());
            return Poll::Pending;
        }
        Poll::Ready(world.restart_order(rank))
    }
}
