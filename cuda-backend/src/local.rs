//! The local transport: every rank of the job in this process, each with its own device (on a
//! GPU: its own stream), all driven by one thread. A send puts the payload in the sender's
//! device memory and queues a device-to-device copy into the receiver's memory on the
//! receiver's stream; a receive takes that buffer back to the host for the logic.
//!
//! Ranks run as tasks of a tokio current-thread runtime inside a `LocalSet`: one thread, tasks
//! polled in the order they were woken, no I/O, so the run is deterministic; and the
//! collectives' sums do not depend on the order anyway (trainer-core fixes them).
//!
//! Restarts: the world is its own job controller. A rank that fails calls `await_restart`,
//! which puts the world into an aborting state: every send, receive, sleep, compute and storage
//! read or write of every rank fails with `Aborted` from then on, so the other ranks fail too
//! instead of waiting for messages that will never come. Once every rank has reported (or
//! finished the job), messages of the old generation are dropped and all ranks continue with
//! `RestartOrder { generation: previous + 1, memory_lost: false, job_abandoned }`, where the
//! job is abandoned past `max_restarts` restarts or if some rank had already finished. Nothing
//! here depends on the wall clock except receive timeouts, which are themselves failures.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use trainer_core::{
    Backend, Blob, CommError, Event, Payload, Placement, RestartOrder, StorageError, Tag, Tier,
    Work, WriteStatus, WriteTicket,
};

use crate::device::RankDevice;
use crate::store::{RankStorage, Tiers};

/// A point in one rank's work where an event was emitted, with the device's timing mark.
pub struct Mark<M> {
    pub event: Event,
    pub mark: M,
}

/// Key of a message waiting to be received: (receiver, sender, tag).
type MailKey = (usize, usize, Tag);
/// A delivered buffer (in the receiver's memory), its modelled bytes and the checksum its
/// sender attached, which travels with it so that the receiver checks the copy it got.
type Delivered<B> = (B, u64, Option<u64>);
/// Delivered messages, in send order.
type Mailboxes<B> = BTreeMap<MailKey, VecDeque<Delivered<B>>>;

/// The job controller's state: which ranks have failed in this generation.
#[derive(Default)]
struct Restarts {
    generation: u64,
    /// Ranks that reported a failure and wait for the restart.
    reported: BTreeSet<usize>,
    /// Ranks whose job ended.
    finished: BTreeSet<usize>,
    /// Set from the first failure of a generation until the restart.
    aborting: bool,
    /// Whether the last restart gave up on the job.
    abandoned: bool,
    waiters: Vec<Waker>,
}

/// Every rank's device and mailbox.
pub struct LocalWorld<D: RankDevice> {
    placement: Placement,
    devices: Vec<D>,
    mailboxes: RefCell<Mailboxes<D::Buffer>>,
    waiters: RefCell<BTreeMap<usize, Waker>>,
    recv_timeout: Duration,
    started: Instant,
    marks: RefCell<Vec<Vec<Mark<D::Mark>>>>,
    tiers: Tiers,
    restarts: RefCell<Restarts>,
    max_restarts: Cell<u64>,
    /// By step, the ranks whose compute fails at that step: one failure event (a node's ranks
    /// fail together), consumed by the first of them that fails.
    failures: RefCell<BTreeMap<u64, BTreeSet<usize>>>,
    /// The step each rank is on, from its StepBegin events.
    current_step: RefCell<Vec<u64>>,
    crash_at_step: Cell<Option<u64>>,
    /// Each rank's last failure, for the report.
    last_failure: RefCell<Vec<Option<CommError>>>,
}

impl<D: RankDevice> LocalWorld<D> {
    /// A world of `devices.len()` ranks placed by `gpus_per_node`. A receive that waits longer
    /// than `recv_timeout` of wall time fails with [`CommError::Timeout`], as in the simulator.
    // The wall clock is what a real backend measures; this is not simulated logic.
    #[allow(clippy::disallowed_methods)]
    /// Blobs go to `tiers`.
    pub fn new(
        devices: Vec<D>,
        gpus_per_node: usize,
        recv_timeout: Duration,
        tiers: Tiers,
    ) -> Rc<LocalWorld<D>> {
        let placement = Placement::new(devices.len(), gpus_per_node);
        let ranks = devices.len();
        let marks = RefCell::new((0..ranks).map(|_| Vec::new()).collect());
        Rc::new(LocalWorld {
            placement,
            devices,
            mailboxes: RefCell::new(BTreeMap::new()),
            waiters: RefCell::new(BTreeMap::new()),
            recv_timeout,
            started: Instant::now(),
            marks,
            tiers,
            restarts: RefCell::new(Restarts::default()),
            max_restarts: Cell::new(100),
            failures: RefCell::new(BTreeMap::new()),
            current_step: RefCell::new(vec![0; ranks]),
            crash_at_step: Cell::new(None),
            last_failure: RefCell::new(vec![None; ranks]),
        })
    }

    /// Makes `rank`'s compute fail with `Aborted` at step `step` (a GPU that fails mid-job):
    /// the job restarts through the world's controller. Failures injected for one step are one
    /// event: the first rank that fails consumes it, so ranks that the abort stopped before
    /// they reached that step do not fail again after the restart.
    pub fn inject_failure(&self, rank: usize, step: u64) {
        self.failures
            .borrow_mut()
            .entry(step)
            .or_default()
            .insert(rank);
    }

    /// After this many restarts the job is abandoned.
    pub fn set_max_restarts(&self, max: u64) {
        self.max_restarts.set(max);
    }

    /// Aborts the whole process when a rank begins step `step` (after that many steps and their
    /// checkpoint work): a real crash, for the crash-and-restore check.
    pub fn set_crash_at_step(&self, step: Option<u64>) {
        self.crash_at_step.set(step);
    }

    pub fn tiers(&self) -> &Tiers {
        &self.tiers
    }

    /// The last failure `rank` reported, if any.
    pub fn last_failure(&self, rank: usize) -> Option<CommError> {
        self.last_failure.borrow()[rank].clone()
    }

    fn aborting(&self) -> bool {
        self.restarts.borrow().aborting
    }

    /// Restarts the job once every rank has reported a failure or finished.
    fn release_if_all_reported(&self) {
        let mut r = self.restarts.borrow_mut();
        if r.reported.is_empty() || r.reported.len() + r.finished.len() < self.devices.len() {
            return;
        }
        r.generation += 1;
        r.abandoned = !r.finished.is_empty() || r.generation > self.max_restarts.get();
        r.reported.clear();
        r.aborting = false;
        // Messages of the old generation never arrive.
        self.mailboxes.borrow_mut().clear();
        for waker in r.waiters.drain(..) {
            waker.wake();
        }
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    pub fn device(&self, rank: usize) -> &D {
        &self.devices[rank]
    }

    /// The timing marks `rank` recorded, in order.
    pub fn take_marks(&self, rank: usize) -> Vec<Mark<D::Mark>> {
        std::mem::take(&mut self.marks.borrow_mut()[rank])
    }

    /// Messages sent and never received: a bug in the logic if any remain after a job.
    pub fn undelivered(&self) -> usize {
        self.mailboxes.borrow().values().map(VecDeque::len).sum()
    }
}

/// One rank's [`Backend`] on the local transport.
pub struct LocalBackend<D: RankDevice> {
    world: Rc<LocalWorld<D>>,
    rank: usize,
    storage: RankStorage,
    generation: Cell<u64>,
}

impl<D: RankDevice> LocalBackend<D> {
    pub fn new(world: Rc<LocalWorld<D>>, rank: usize) -> LocalBackend<D> {
        assert!(rank < world.devices.len());
        let node = world.placement.node_of(rank);
        let storage = RankStorage::new(world.tiers.clone(), node);
        LocalBackend {
            world,
            rank,
            storage,
            generation: Cell::new(0),
        }
    }

    /// Tells the controller this rank's job has ended, so that a restart no longer waits for
    /// it.
    pub fn finish(&self) {
        let world = &self.world;
        world.restarts.borrow_mut().finished.insert(self.rank);
        world.release_if_all_reported();
    }

    fn device(&self) -> &D {
        &self.world.devices[self.rank]
    }

    fn fail(&self, what: &str, e: crate::device::DeviceError) -> ! {
        panic!(
            "rank {}: {what} failed on {}: {e}",
            self.rank,
            self.device().describe()
        )
    }
}

impl<D: RankDevice> Backend for LocalBackend<D> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn placement(&self) -> Placement {
        self.world.placement
    }

    fn send(
        &self,
        to: usize,
        tag: Tag,
        payload: Payload,
    ) -> impl Future<Output = Result<(), CommError>> {
        assert!(
            to < self.world.devices.len(),
            "send to rank {to} outside the world"
        );
        if self.world.aborting() {
            return std::future::ready(Err(CommError::Aborted));
        }
        let staged = self
            .device()
            .upload(&payload.data)
            .unwrap_or_else(|e| self.fail("upload", e));
        let delivered = self.world.devices[to]
            .copy_from_peer(&staged)
            .unwrap_or_else(|e| self.fail("device-to-device copy", e));
        self.world
            .mailboxes
            .borrow_mut()
            .entry((to, self.rank, tag))
            .or_default()
            .push_back((delivered, payload.modelled_bytes, payload.checksum));
        if let Some(waker) = self.world.waiters.borrow_mut().remove(&to) {
            waker.wake();
        }
        std::future::ready(Ok(()))
    }

    fn recv(&self, from: usize, tag: Tag) -> impl Future<Output = Result<Payload, CommError>> {
        let key = (self.rank, from, tag);
        let arrived = std::future::poll_fn(move |cx| {
            if self.world.aborting() {
                return Poll::Ready(Err(CommError::Aborted));
            }
            let mut mailboxes = self.world.mailboxes.borrow_mut();
            if let Some(queue) = mailboxes.get_mut(&key) {
                if let Some(message) = queue.pop_front() {
                    if queue.is_empty() {
                        mailboxes.remove(&key);
                    }
                    return Poll::Ready(Ok(message));
                }
            }
            self.world
                .waiters
                .borrow_mut()
                .insert(self.rank, cx.waker().clone());
            Poll::Pending
        });
        async move {
            let (buffer, modelled_bytes, checksum) =
                tokio::time::timeout(self.world.recv_timeout, arrived)
                    .await
                    .map_err(|_| CommError::Timeout { peer: from, tag })??;
            let data = self
                .device()
                .download(&buffer)
                .unwrap_or_else(|e| self.fail("download", e));
            let mut payload = Payload::new(data, modelled_bytes);
            payload.checksum = checksum;
            Ok(payload)
        }
    }

    fn now_ns(&self) -> u64 {
        self.world.started.elapsed().as_nanos() as u64
    }

    async fn sleep(&self, duration_ns: u64) -> Result<(), CommError> {
        if !self.world.aborting() {
            tokio::time::sleep(Duration::from_nanos(duration_ns)).await;
        }
        if self.world.aborting() {
            return Err(CommError::Aborted);
        }
        Ok(())
    }

    /// The work itself already ran (on the device, or on the host in trainer-core); real time
    /// is charged by waiting for this rank's queued device work. Fails with `Aborted` while the
    /// job is restarting, and once where a failure was injected for this rank and step.
    fn compute(&self, _work: Work) -> impl Future<Output = Result<(), CommError>> {
        let step = self.world.current_step.borrow()[self.rank];
        let injected = {
            let mut failures = self.world.failures.borrow_mut();
            let hit = failures.get(&step).is_some_and(|r| r.contains(&self.rank));
            if hit {
                failures.remove(&step);
            }
            hit
        };
        if injected || self.world.aborting() {
            return std::future::ready(Err(CommError::Aborted));
        }
        self.device()
            .synchronize()
            .unwrap_or_else(|e| self.fail("synchronize", e));
        std::future::ready(Ok(()))
    }

    fn emit(&self, event: Event) {
        if let Event::StepBegin { step } = event {
            self.world.current_step.borrow_mut()[self.rank] = step;
            if self.world.crash_at_step.get() == Some(step) {
                crash(self.rank, step);
            }
        }
        let mark = self
            .device()
            .mark()
            .unwrap_or_else(|e| self.fail("timing mark", e));
        self.world.marks.borrow_mut()[self.rank].push(Mark { event, mark });
    }

    fn store_put(
        &self,
        tier: Tier,
        name: &str,
        blob: Blob,
    ) -> impl Future<Output = Result<(), StorageError>> {
        let result = if self.world.aborting() {
            Err(StorageError::Aborted)
        } else {
            self.storage.put(tier, name, &blob)
        };
        std::future::ready(result)
    }

    fn store_put_async(&self, tier: Tier, name: &str, blob: Blob) -> WriteTicket {
        if self.world.aborting() {
            return self.storage.refused();
        }
        self.storage.put_async(tier, name, &blob)
    }

    fn store_poll(&self, ticket: WriteTicket) -> WriteStatus {
        self.storage.poll(ticket)
    }

    fn store_get(
        &self,
        tier: Tier,
        name: &str,
    ) -> impl Future<Output = Result<Blob, StorageError>> {
        let result = if self.world.aborting() {
            Err(StorageError::Aborted)
        } else {
            self.storage.get(tier, name)
        };
        std::future::ready(result)
    }

    fn store_list(&self, tier: Tier, prefix: &str) -> Vec<String> {
        self.storage.list(tier, prefix)
    }

    fn store_delete(&self, tier: Tier, name: &str) {
        self.storage.delete(tier, name)
    }

    /// The barrier of the module docs.
    fn await_restart(&self, error: &CommError) -> impl Future<Output = RestartOrder> {
        let world = &self.world;
        world.last_failure.borrow_mut()[self.rank] = Some(error.clone());
        {
            let mut r = world.restarts.borrow_mut();
            r.reported.insert(self.rank);
            r.aborting = true;
        }
        // Wake every rank blocked in a receive: it fails with Aborted and reports too.
        let blocked: Vec<Waker> = std::mem::take(&mut *world.waiters.borrow_mut())
            .into_values()
            .collect();
        for waker in blocked {
            waker.wake();
        }
        world.release_if_all_reported();
        let mine = self.generation.get();
        std::future::poll_fn(move |cx| {
            let mut r = self.world.restarts.borrow_mut();
            if r.generation > mine {
                self.generation.set(r.generation);
                return Poll::Ready(RestartOrder {
                    generation: r.generation,
                    memory_lost: false,
                    job_abandoned: r.abandoned,
                    regroup: false,
                });
            }
            r.waiters.push(cx.waker().clone());
            Poll::Pending
        })
    }

    crate::device::kernel_calls!();
}

/// The deliberate crash of `--crash-at-step`: the whole process dies, as on a real fault.
pub fn crash(rank: usize, step: u64) -> ! {
    eprintln!(
        "faultline-gpu: rank {rank} crashing on purpose before step {step} (--crash-at-step)"
    );
    std::process::abort()
}

/// Runs `rank_task(backend)` for every rank of `world` to completion on one thread and returns
/// the results in rank order.
pub fn run_ranks<D, F, Fut, T>(world: &Rc<LocalWorld<D>>, rank_task: F) -> Vec<T>
where
    D: RankDevice + 'static,
    F: Fn(LocalBackend<D>) -> Fut,
    Fut: Future<Output = T> + 'static,
    T: 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread tokio runtime builds");
    let tasks = tokio::task::LocalSet::new();
    let handles: Vec<_> = (0..world.devices.len())
        .map(|rank| tasks.spawn_local(rank_task(LocalBackend::new(world.clone(), rank))))
        .collect();
    tasks.block_on(&runtime, async {
        let mut results = Vec::with_capacity(handles.len());
        for handle in handles {
            match handle.await {
                Ok(result) => results.push(result),
                // Re-raise a rank's panic as it was, so its message reaches the caller.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("a rank task was cancelled: {e}"),
            }
        }
        results
    })
}
