//! The local transport: every rank of the job in this process, each with its own device (on a
//! GPU: its own stream), all driven by one thread. A send puts the payload in the sender's
//! device memory and queues a device-to-device copy into the receiver's memory on the
//! receiver's stream; a receive takes that buffer back to the host for the logic.
//!
//! Ranks run as tasks of a tokio current-thread runtime inside a `LocalSet`: one thread, tasks
//! polled in the order they were woken, no I/O, so the run is deterministic; and the
//! collectives' sums do not depend on the order anyway (trainer-core fixes them).

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use trainer_core::{Backend, CommError, Event, Payload, Placement, Tag, Work};

use crate::device::RankDevice;

/// A point in one rank's work where an event was emitted, with the device's timing mark.
pub struct Mark<M> {
    pub event: Event,
    pub mark: M,
}

/// Key of a message waiting to be received: (receiver, sender, tag).
type MailKey = (usize, usize, Tag);
/// Delivered buffers (in the receiver's memory) with their modelled bytes, in send order.
type Mailboxes<B> = BTreeMap<MailKey, VecDeque<(B, u64)>>;

/// Every rank's device and mailbox.
pub struct LocalWorld<D: RankDevice> {
    placement: Placement,
    devices: Vec<D>,
    mailboxes: RefCell<Mailboxes<D::Buffer>>,
    waiters: RefCell<BTreeMap<usize, Waker>>,
    recv_timeout: Duration,
    started: Instant,
    marks: RefCell<Vec<Vec<Mark<D::Mark>>>>,
}

impl<D: RankDevice> LocalWorld<D> {
    /// A world of `devices.len()` ranks placed by `gpus_per_node`. A receive that waits longer
    /// than `recv_timeout` of wall time fails with [`CommError::Timeout`], as in the simulator.
    // The wall clock is what a real backend measures; this is not simulated logic.
    #[allow(clippy::disallowed_methods)]
    pub fn new(devices: Vec<D>, gpus_per_node: usize, recv_timeout: Duration) -> Rc<LocalWorld<D>> {
        let placement = Placement::new(devices.len(), gpus_per_node);
        let marks = RefCell::new((0..devices.len()).map(|_| Vec::new()).collect());
        Rc::new(LocalWorld {
            placement,
            devices,
            mailboxes: RefCell::new(BTreeMap::new()),
            waiters: RefCell::new(BTreeMap::new()),
            recv_timeout,
            started: Instant::now(),
            marks,
        })
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
}

impl<D: RankDevice> LocalBackend<D> {
    pub fn new(world: Rc<LocalWorld<D>>, rank: usize) -> LocalBackend<D> {
        assert!(rank < world.devices.len());
        LocalBackend { world, rank }
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
            .push_back((delivered, payload.modelled_bytes));
        if let Some(waker) = self.world.waiters.borrow_mut().remove(&to) {
            waker.wake();
        }
        std::future::ready(Ok(()))
    }

    fn recv(&self, from: usize, tag: Tag) -> impl Future<Output = Result<Payload, CommError>> {
        let key = (self.rank, from, tag);
        let arrived = std::future::poll_fn(move |cx| {
            let mut mailboxes = self.world.mailboxes.borrow_mut();
            if let Some(queue) = mailboxes.get_mut(&key) {
                if let Some(message) = queue.pop_front() {
                    if queue.is_empty() {
                        mailboxes.remove(&key);
                    }
                    return Poll::Ready(message);
                }
            }
            self.world
                .waiters
                .borrow_mut()
                .insert(self.rank, cx.waker().clone());
            Poll::Pending
        });
        async move {
            let (buffer, modelled_bytes) = tokio::time::timeout(self.world.recv_timeout, arrived)
                .await
                .map_err(|_| CommError::Timeout { peer: from, tag })?;
            let data = self
                .device()
                .download(&buffer)
                .unwrap_or_else(|e| self.fail("download", e));
            Ok(Payload::new(data, modelled_bytes))
        }
    }

    fn now_ns(&self) -> u64 {
        self.world.started.elapsed().as_nanos() as u64
    }

    fn sleep(&self, duration_ns: u64) -> impl Future<Output = ()> {
        tokio::time::sleep(Duration::from_nanos(duration_ns))
    }

    /// The work itself already ran (on the device, or on the host in trainer-core); real time
    /// is charged by waiting for this rank's queued device work.
    fn compute(&self, _work: Work) -> impl Future<Output = ()> {
        self.device()
            .synchronize()
            .unwrap_or_else(|e| self.fail("synchronize", e));
        std::future::ready(())
    }

    fn emit(&self, event: Event) {
        let mark = self
            .device()
            .mark()
            .unwrap_or_else(|e| self.fail("timing mark", e));
        self.world.marks.borrow_mut()[self.rank].push(Mark { event, mark });
    }

    fn add_assign(&self, acc: &mut [f32], src: &[f32]) {
        self.device()
            .add_assign(acc, src)
            .unwrap_or_else(|e| self.fail("add_assign kernel", e));
    }

    fn sgd_update(&self, params: &mut [f32], grad: &[f32], lr: f32) {
        self.device()
            .sgd_update(params, grad, lr)
            .unwrap_or_else(|e| self.fail("sgd_update kernel", e));
    }
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
