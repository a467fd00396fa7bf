//! The NCCL transport: one rank per process, on one or several GPUs and nodes.
//!
//! NCCL matches a send with a receive by peer and order, knows nothing of tags, and needs the
//! receiver to name the length; the logic names a sender and a tag and learns the length from
//! the payload. So every message travels as one fixed-size frame (a header with its tag and
//! length, then the data, padded to the largest payload of the job), and a frame that arrives
//! before the logic asks for its tag waits in a stash.
//!
//! NCCL point-to-point calls also block the stream until the peer posts the matching call. A
//! send is therefore held back and posted together with this rank's next receive, in one NCCL
//! group, or at the end of the collective: posting a send never waits for a peer, as the
//! `Backend` contract says, and the exchanges that both sides post as send-then-receive (a
//! ring step) complete together instead of deadlocking.
//!
//! NCCL runs one group after another on the rank's stream, so a receive also waits for the
//! sends posted before it to be matched. That is safe because NCCL completes small sends into
//! its buffers without waiting for the peer (frames here are a few kilobytes for the default
//! proxy tensor), and because every peer posts its receives in the order it needs them, which
//! the collectives do. Connections are made once, for every pair, when a rank joins (see
//! [`NcclLink::preconnect`]): made lazily, by the first group that uses them, they hung the
//! 4-process check on an H100. A receive that still waits too long times out with
//! [`CommError::Timeout`] instead of blocking forever.
//!
//! Restarts: a rank that fails calls `await_restart`, which on NCCL aborts the communicator
//! (`ncclCommAbort`, so no peer stays blocked on it) and exits the process with status
//! [`EXIT_RESTART`] (75, `EX_TEMPFAIL`). The launcher is the job controller: torchrun (with
//! `--max-restarts`) or any supervisor restarts every rank's process; a restarted process runs
//! with `--restore` (or with TORCHELASTIC_RESTART_COUNT set, which implies it and numbers the
//! generation), restores the newest verified checkpoint with trainer-core's restore, and goes
//! on. `await_restart` therefore never returns on NCCL. Over [`ChannelLink`] (threads in one
//! process, no launcher) it returns an order that abandons the job.
//!
//! The protocol is written once over [`FrameLink`]; [`NcclLink`] is NCCL, and [`ChannelLink`]
//! (threads and channels, host memory) runs the same protocol in tests on any machine; the NCCL
//! link runs in run-on-gpu.sh (4 processes on one H100, and a restart through a launcher).

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaSlice, CudaStream};
use cudarc::nccl::{Comm, Id};
use trainer_core::{
    Backend, Blob, CommError, Event, Payload, Placement, RestartOrder, StorageError, Tag, Tier,
    Work, WriteStatus, WriteTicket,
};

use crate::device::{CudaRank, DeviceError, Gpu, HostRank, RankDevice};
use crate::local::Mark;
use crate::rendezvous::ID_LEN;
use crate::store::{RankStorage, Tiers};

/// The exit status of a rank that failed and asks its launcher for a restart (`EX_TEMPFAIL`).
pub const EXIT_RESTART: i32 = 75;

/// Header slots at the front of every frame, each a u32 stored in an f32's bits.
pub const HEADER_ELEMS: usize = 8;
const FRAME_MAGIC: u32 = 0xfa17_11e5;

/// A frame's header, as u32 words.
pub fn encode_header(tag: Tag, len: usize, modelled_bytes: u64) -> [u32; HEADER_ELEMS] {
    [
        FRAME_MAGIC,
        tag.op_id as u32,
        (tag.op_id >> 32) as u32,
        tag.phase,
        tag.round,
        u32::try_from(len).expect("payload under 2^32 elements"),
        modelled_bytes as u32,
        (modelled_bytes >> 32) as u32,
    ]
}

/// A frame's tag, data length and modelled bytes, or `None` if it is not a frame.
pub fn decode_header(words: &[u32]) -> Option<(Tag, usize, u64)> {
    if words.len() < HEADER_ELEMS || words[0] != FRAME_MAGIC {
        return None;
    }
    let op_id = u64::from(words[1]) | (u64::from(words[2]) << 32);
    let tag = Tag::new(op_id, words[3], words[4]);
    let modelled = u64::from(words[6]) | (u64::from(words[7]) << 32);
    Some((tag, words[5] as usize, modelled))
}

/// The frame for `data`: header then data then zeros up to `frame_elems`.
pub fn encode_frame(tag: Tag, data: &[f32], modelled_bytes: u64, frame_elems: usize) -> Vec<f32> {
    assert!(
        HEADER_ELEMS + data.len() <= frame_elems,
        "a payload of {} elements exceeds the job's frame of {frame_elems}",
        data.len()
    );
    let mut frame = Vec::with_capacity(frame_elems);
    frame.extend(
        encode_header(tag, data.len(), modelled_bytes)
            .iter()
            .map(|w| f32::from_bits(*w)),
    );
    frame.extend_from_slice(data);
    frame.resize(frame_elems, 0.0);
    frame
}

/// The tag and payload of a received frame.
pub fn decode_frame(frame: &[f32]) -> Option<(Tag, Payload)> {
    let words: Vec<u32> = frame
        .iter()
        .take(HEADER_ELEMS)
        .map(|f| f.to_bits())
        .collect();
    let (tag, len, modelled) = decode_header(&words)?;
    let data = frame.get(HEADER_ELEMS..HEADER_ELEMS + len)?.to_vec();
    Some((tag, Payload::new(data, modelled)))
}

/// Errors while setting up NCCL.
#[derive(Debug)]
pub struct NcclSetupError(pub String);

impl std::fmt::Display for NcclSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NcclSetupError {}

/// A fresh NCCL unique id (rank 0 makes it; the rendezvous shares it).
pub fn new_unique_id() -> Result<[u8; ID_LEN], NcclSetupError> {
    let id = Id::new().map_err(|e| NcclSetupError(format!("ncclGetUniqueId: {e:?}")))?;
    Ok(id.internal().map(|c| c as u8))
}

/// A receive that did not complete within the deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkTimeout;

/// What the framed protocol needs from the wire: post some frames and maybe one receive, as one
/// unit, and wait for the receive. [`NcclLink`] is NCCL (one group per call); [`ChannelLink`]
/// is in-process channels, which check the protocol with threads on any machine.
pub trait FrameLink {
    type Device: RankDevice;
    /// The rank's device, for kernels and timing marks.
    fn device(&self) -> &Self::Device;
    /// Posts `sends` (destination, frame) and, if `recv_from` is set, a receive of one frame of
    /// `frame_elems` from that rank; returns the received frame once it arrived.
    fn post(
        &self,
        sends: Vec<(usize, Vec<f32>)>,
        recv_from: Option<usize>,
        frame_elems: usize,
        timeout: Duration,
    ) -> Result<Option<Vec<f32>>, LinkTimeout>;
    /// Waits until everything posted has completed (before the process exits).
    fn finish(&self) -> Result<(), DeviceError>;
    /// This rank failed with `error`: hand it to the job controller. NCCL aborts the
    /// communicator and exits with [`EXIT_RESTART`]; channels abandon the job.
    fn restart(&self, rank: usize, error: &CommError) -> RestartOrder;
}

/// NCCL point-to-point on this rank's stream.
pub struct NcclLink {
    /// `None` once aborted.
    comm: RefCell<Option<Comm>>,
    device: CudaRank,
}

impl NcclLink {
    fn stream(&self) -> &Arc<CudaStream> {
        &self.device.stream
    }
}

fn nccl_fail(what: &str, e: impl std::fmt::Debug) -> ! {
    panic!("NCCL transport: {what}: {e:?}")
}

impl NcclLink {
    /// Connects this rank to every peer, with one group in which every rank sends one word to
    /// and receives one from every other. NCCL sets a point-to-point connection up lazily, in
    /// the host call that ends the first group using it, and both ends must take part: when
    /// the first groups of a ring each connect to a different peer, every rank's host waits
    /// in `ncclGroupEnd` for a neighbour that waits for the next (the 4-process check hung
    /// there, past any receive timeout). One all-pairs group at join has no such cycle: every
    /// rank posts the same set of peers at once. The cost is a connection per pair, which is
    /// what one rank per process at tens to hundreds of ranks can afford.
    fn preconnect(
        &self,
        rank: usize,
        world_size: usize,
        timeout: Duration,
    ) -> Result<(), NcclSetupError> {
        if world_size < 2 {
            return Ok(());
        }
        let setup = |what: &str, e: &dyn std::fmt::Debug| NcclSetupError(format!("{what}: {e:?}"));
        let stream = self.stream();
        let word = stream
            .alloc_zeros::<f32>(1)
            .map_err(|e| setup("alloc", &e))?;
        let mut inboxes = (0..world_size)
            .map(|_| stream.alloc_zeros::<f32>(1))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| setup("alloc", &e))?;
        {
            let comm = self.comm.borrow();
            let comm = comm.as_ref().expect("a new communicator");
            let mut group = comm.group();
            for (peer, inbox) in inboxes.iter_mut().enumerate().filter(|(p, _)| *p != rank) {
                group
                    .send(word.as_view(), peer as i32)
                    .map_err(|e| setup("ncclSend (preconnect)", &e))?;
                group
                    .recv(inbox.as_view_mut(), peer as i32)
                    .map_err(|e| setup("ncclRecv (preconnect)", &e))?;
            }
        }
        let event = stream.record_event(None).map_err(|e| setup("event", &e))?;
        let waited = wall_clock_start();
        while !event.is_complete() {
            if waited.elapsed() > timeout {
                return Err(NcclSetupError(format!(
                    "connecting to every peer took over {} s",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(())
    }
}

impl FrameLink for NcclLink {
    type Device = CudaRank;

    fn device(&self) -> &CudaRank {
        &self.device
    }

    fn post(
        &self,
        sends: Vec<(usize, Vec<f32>)>,
        recv_from: Option<usize>,
        frame_elems: usize,
        timeout: Duration,
    ) -> Result<Option<Vec<f32>>, LinkTimeout> {
        let staged: Vec<(usize, CudaSlice<f32>)> = sends
            .into_iter()
            .map(|(to, frame)| {
                let slice = self
                    .device
                    .upload(&frame)
                    .unwrap_or_else(|e| nccl_fail("upload", e))
                    .expect("a frame is never empty");
                (to, slice)
            })
            .collect();
        let mut frame = recv_from.map(|_| {
            self.stream()
                .alloc_zeros::<f32>(frame_elems)
                .unwrap_or_else(|e| nccl_fail("alloc", e))
        });
        if staged.is_empty() && frame.is_none() {
            return Ok(None);
        }
        {
            let comm = self.comm.borrow();
            let comm = comm
                .as_ref()
                .unwrap_or_else(|| nccl_fail("post", "the communicator was aborted"));
            let mut group = comm.group();
            for (to, slice) in &staged {
                group
                    .send(slice.as_view(), *to as i32)
                    .unwrap_or_else(|e| nccl_fail("ncclSend", e));
            }
            if let (Some(from), Some(frame)) = (recv_from, frame.as_mut()) {
                group
                    .recv(frame.as_view_mut(), from as i32)
                    .unwrap_or_else(|e| nccl_fail("ncclRecv", e));
            }
        }
        // The sends' buffers are freed in stream order, after the group's kernels.
        drop(staged);
        let Some(frame) = frame else {
            return Ok(None);
        };
        // Poll an event rather than block in cuStreamSynchronize, so that a peer that never
        // sends is a timeout, as in the simulator, not a hang.
        let event = self
            .stream()
            .record_event(None)
            .unwrap_or_else(|e| nccl_fail("event", e));
        let waited = wall_clock_start();
        while !event.is_complete() {
            if waited.elapsed() > timeout {
                return Err(LinkTimeout);
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        let host = self
            .device
            .download(&Some(frame))
            .unwrap_or_else(|e| nccl_fail("download", e));
        Ok(Some(host))
    }

    fn finish(&self) -> Result<(), DeviceError> {
        self.device.synchronize()
    }

    fn restart(&self, rank: usize, error: &CommError) -> RestartOrder {
        eprintln!(
            "faultline-gpu: rank {rank}: {error}; aborting the NCCL communicator and exiting with \
             status {EXIT_RESTART} for the launcher to restart the job (then run with --restore)"
        );
        // Dropping the communicator calls ncclCommAbort.
        drop(self.comm.borrow_mut().take());
        std::process::exit(EXIT_RESTART)
    }
}

/// In-process channels between threads, one per ordered pair of ranks, with host memory for the
/// device: the same framed protocol as NCCL, for tests on machines without a GPU. Sends never
/// wait, like NCCL sends that fit its buffers.
pub struct ChannelLink {
    device: HostRank,
    /// `to_peer[p]` carries this rank's frames to rank `p`.
    to_peer: Vec<std::sync::mpsc::Sender<Vec<f32>>>,
    /// `from_peer[p]` carries rank `p`'s frames to this rank.
    from_peer: Vec<std::sync::mpsc::Receiver<Vec<f32>>>,
}

impl ChannelLink {
    /// One link per rank of a world of `world_size`, wired to each other.
    pub fn world(world_size: usize) -> Vec<ChannelLink> {
        let mut to: Vec<Vec<Option<std::sync::mpsc::Sender<Vec<f32>>>>> = (0..world_size)
            .map(|_| (0..world_size).map(|_| None).collect())
            .collect();
        let mut from: Vec<Vec<Option<std::sync::mpsc::Receiver<Vec<f32>>>>> = (0..world_size)
            .map(|_| (0..world_size).map(|_| None).collect())
            .collect();
        for a in 0..world_size {
            for b in 0..world_size {
                let (tx, rx) = std::sync::mpsc::channel();
                to[a][b] = Some(tx);
                from[b][a] = Some(rx);
            }
        }
        to.into_iter()
            .zip(from)
            .map(|(to, from)| ChannelLink {
                device: HostRank,
                to_peer: to.into_iter().map(|t| t.expect("wired")).collect(),
                from_peer: from.into_iter().map(|f| f.expect("wired")).collect(),
            })
            .collect()
    }
}

impl FrameLink for ChannelLink {
    type Device = HostRank;

    fn device(&self) -> &HostRank {
        &self.device
    }

    fn post(
        &self,
        sends: Vec<(usize, Vec<f32>)>,
        recv_from: Option<usize>,
        frame_elems: usize,
        timeout: Duration,
    ) -> Result<Option<Vec<f32>>, LinkTimeout> {
        for (to, frame) in sends {
            assert_eq!(frame.len(), frame_elems);
            // A peer that already finished has dropped its receiver; its frames do not matter.
            let _ = self.to_peer[to].send(frame);
        }
        match recv_from {
            None => Ok(None),
            Some(from) => self.from_peer[from]
                .recv_timeout(timeout)
                .map(Some)
                .map_err(|_| LinkTimeout),
        }
    }

    fn finish(&self) -> Result<(), DeviceError> {
        Ok(())
    }

    fn restart(&self, _rank: usize, _error: &CommError) -> RestartOrder {
        RestartOrder {
            generation: 1,
            memory_lost: false,
            job_abandoned: true,
            regroup: false,
        }
    }
}

/// One rank of a job whose ranks each run in their own process (or thread), exchanging
/// fixed-size tagged frames over a [`FrameLink`].
pub struct FramedBackend<L: FrameLink> {
    rank: usize,
    placement: Placement,
    link: L,
    frame_elems: usize,
    pending: RefCell<Vec<(usize, Vec<f32>)>>,
    stash: RefCell<BTreeMap<(usize, Tag), VecDeque<Payload>>>,
    recv_timeout: Duration,
    started: Instant,
    marks: RefCell<Vec<Mark<<L::Device as RankDevice>::Mark>>>,
    storage: RankStorage,
    crash_at_step: Option<u64>,
    last_failure: RefCell<Option<CommError>>,
}

/// The NCCL transport's backend.
pub type NcclBackend = FramedBackend<NcclLink>;

impl NcclBackend {
    /// Joins the communicator `id` as `rank` on `gpu`. `max_payload_elems` is the largest
    /// payload the job sends (the gradient buffer). Blocks until every rank has joined.
    pub fn join(
        gpu: &Arc<Gpu>,
        placement: Placement,
        rank: usize,
        id: [u8; ID_LEN],
        max_payload_elems: usize,
        recv_timeout: Duration,
        tiers: Tiers,
    ) -> Result<NcclBackend, NcclSetupError> {
        let device = gpu
            .rank()
            .map_err(|e| NcclSetupError(format!("stream: {e}")))?;
        let id = Id::uninit(id.map(|b| b as std::ffi::c_char));
        let comm = Comm::from_rank(device.stream.clone(), rank, placement.world_size, id)
            .map_err(|e| NcclSetupError(format!("ncclCommInitRank: {e:?}")))?;
        let link = NcclLink {
            comm: RefCell::new(Some(comm)),
            device,
        };
        link.preconnect(rank, placement.world_size, recv_timeout)?;
        Ok(FramedBackend::new(
            link,
            placement,
            rank,
            max_payload_elems,
            recv_timeout,
            tiers,
        ))
    }
}

impl<L: FrameLink> FramedBackend<L> {
    pub fn new(
        link: L,
        placement: Placement,
        rank: usize,
        max_payload_elems: usize,
        recv_timeout: Duration,
        tiers: Tiers,
    ) -> FramedBackend<L> {
        let storage = RankStorage::new(tiers, placement.node_of(rank));
        FramedBackend {
            storage,
            crash_at_step: None,
            last_failure: RefCell::new(None),
            rank,
            placement,
            link,
            frame_elems: HEADER_ELEMS + max_payload_elems.max(2),
            pending: RefCell::new(Vec::new()),
            stash: RefCell::new(BTreeMap::new()),
            recv_timeout,
            started: wall_clock_start(),
            marks: RefCell::new(Vec::new()),
        }
    }

    pub fn device(&self) -> &L::Device {
        self.link.device()
    }

    /// Aborts the process when this rank begins step `step` (`--crash-at-step`).
    pub fn set_crash_at_step(&mut self, step: Option<u64>) {
        self.crash_at_step = step;
    }

    /// The last failure this rank reported, if any.
    pub fn last_failure(&self) -> Option<CommError> {
        self.last_failure.borrow().clone()
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> ! {
        panic!("rank {}: {what}: {e}", self.rank)
    }

    /// Posts every held-back send, alone: the end of a collective, whose last sends must not
    /// wait for a later receive that may never come.
    fn flush(&self) {
        let sends = std::mem::take(&mut *self.pending.borrow_mut());
        if !sends.is_empty() {
            let posted = self
                .link
                .post(sends, None, self.frame_elems, self.recv_timeout);
            debug_assert_eq!(posted, Ok(None));
        }
    }

    fn recv_now(&self, from: usize, tag: Tag) -> Result<Payload, CommError> {
        loop {
            if let Some(queue) = self.stash.borrow_mut().get_mut(&(from, tag)) {
                if let Some(payload) = queue.pop_front() {
                    return Ok(payload);
                }
            }
            let sends = std::mem::take(&mut *self.pending.borrow_mut());
            let frame = self
                .link
                .post(sends, Some(from), self.frame_elems, self.recv_timeout)
                .map_err(|LinkTimeout| CommError::Timeout { peer: from, tag })?
                .expect("a receive was posted");
            let (got, payload) =
                decode_frame(&frame).ok_or(CommError::CorruptPayload { peer: from })?;
            if got == tag {
                return Ok(payload);
            }
            self.stash
                .borrow_mut()
                .entry((from, got))
                .or_default()
                .push_back(payload);
        }
    }

    /// Posts held-back sends and waits for everything posted: call before the process exits.
    pub fn finish(&self) -> Result<(), DeviceError> {
        self.flush();
        self.link.finish()
    }

    pub fn take_marks(&self) -> Vec<Mark<<L::Device as RankDevice>::Mark>> {
        std::mem::take(&mut self.marks.borrow_mut())
    }
}

impl<L: FrameLink> Backend for FramedBackend<L> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn placement(&self) -> Placement {
        self.placement
    }

    fn send(
        &self,
        to: usize,
        tag: Tag,
        payload: Payload,
    ) -> impl Future<Output = Result<(), CommError>> {
        assert!(
            to < self.placement.world_size,
            "send to rank {to} outside the world"
        );
        let frame = encode_frame(tag, &payload.data, payload.modelled_bytes, self.frame_elems);
        self.pending.borrow_mut().push((to, frame));
        std::future::ready(Ok(()))
    }

    fn recv(&self, from: usize, tag: Tag) -> impl Future<Output = Result<Payload, CommError>> {
        std::future::ready(self.recv_now(from, tag))
    }

    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// A process that runs is alive: a failure elsewhere shows up as a receive that times out,
    /// and this rank's own failures end the process through `await_restart`.
    fn sleep(&self, duration_ns: u64) -> impl Future<Output = Result<(), CommError>> {
        std::thread::sleep(Duration::from_nanos(duration_ns));
        std::future::ready(Ok(()))
    }

    fn compute(&self, _work: Work) -> impl Future<Output = Result<(), CommError>> {
        self.device()
            .synchronize()
            .unwrap_or_else(|e| self.fail("synchronize", e));
        std::future::ready(Ok(()))
    }

    fn emit(&self, event: Event) {
        if let Event::CollectiveEnd { .. } = event {
            self.flush();
        }
        if let Event::StepBegin { step } = event {
            if self.crash_at_step == Some(step) {
                crate::local::crash(self.rank, step);
            }
        }
        let mark = self
            .device()
            .mark()
            .unwrap_or_else(|e| self.fail("timing mark", e));
        self.marks.borrow_mut().push(Mark { event, mark });
    }

    fn store_put(
        &self,
        tier: Tier,
        name: &str,
        blob: Blob,
    ) -> impl Future<Output = Result<(), StorageError>> {
        std::future::ready(self.storage.put(tier, name, &blob))
    }

    fn store_put_async(&self, tier: Tier, name: &str, blob: Blob) -> WriteTicket {
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
        std::future::ready(self.storage.get(tier, name))
    }

    fn store_list(&self, tier: Tier, prefix: &str) -> Vec<String> {
        self.storage.list(tier, prefix)
    }

    fn store_delete(&self, tier: Tier, name: &str) {
        self.storage.delete(tier, name)
    }

    /// See the module docs: on NCCL this never returns.
    fn await_restart(&self, error: &CommError) -> impl Future<Output = RestartOrder> {
        *self.last_failure.borrow_mut() = Some(error.clone());
        // Sends held back for a receive that will not come are dropped with the generation.
        self.pending.borrow_mut().clear();
        std::future::ready(self.link.restart(self.rank, error))
    }

    crate::device::kernel_calls!();
}

/// Runs a future that never waits on anything outside this thread (every NCCL backend future
/// is ready at once, or blocks the thread) to completion.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread tokio runtime builds");
    runtime.block_on(future)
}

/// The tag of the end-of-job message in which every rank tells rank 0 its parameter digest.
const AGREEMENT_TAG: Tag = Tag::new(u64::MAX, 0, 0);

/// Every rank sends its parameter digest to rank 0; rank 0 says whether all equal its own.
/// Other ranks return `true` (only rank 0 reports).
pub async fn replicas_agree<B: Backend>(backend: &B, param_digest: u64) -> Result<bool, CommError> {
    let words = [param_digest as u32, (param_digest >> 32) as u32].map(f32::from_bits);
    if backend.rank() != 0 {
        backend
            .send(0, AGREEMENT_TAG, Payload::new(words.to_vec(), 8))
            .await?;
        return Ok(true);
    }
    let mut agree = true;
    for peer in 1..backend.world_size() {
        let payload = backend.recv(peer, AGREEMENT_TAG).await?;
        let theirs: Vec<u32> = payload.data.iter().map(|f| f.to_bits()).collect();
        agree &= theirs == words.map(f32::to_bits);
    }
    Ok(agree)
}

/// What the NCCL transport needs besides the job: where this process sits.
#[derive(Clone, Debug)]
pub struct NcclPlan {
    pub env: crate::rendezvous::BootstrapEnv,
    /// GPUs visible to this process.
    pub device_count: usize,
    /// Processes on this node (LOCAL_WORLD_SIZE, else every rank).
    pub local_world_size: usize,
}

impl NcclPlan {
    /// The GPU this process uses.
    pub fn ordinal(&self) -> usize {
        self.env.local_rank % self.device_count
    }

    /// Whether several processes share one GPU, which NCCL accepts only when each process
    /// claims its own host (NCCL_HOSTID); see gpu.md.
    pub fn shares_gpu(&self) -> bool {
        self.local_world_size > self.device_count
    }

    /// The NCCL_HOSTID this process should set, if it must set one.
    pub fn host_id(&self) -> Option<String> {
        self.shares_gpu()
            .then(|| format!("faultline-rank-{}", self.env.rank))
    }
}

/// Runs this process's rank of the job over NCCL and returns its report (meaningful on rank 0,
/// which also checks that every replica ended with its parameters).
pub fn run_nccl_job(
    plan: &NcclPlan,
    settings: &crate::job::JobSettings,
    options: &crate::job::RunOptions,
) -> Result<crate::job::GpuRunReport, NcclSetupError> {
    use crate::job;
    let started = wall_clock_start();
    if plan.env.world_size != settings.placement.world_size {
        return Err(NcclSetupError(format!(
            "WORLD_SIZE is {} but the scenario has cluster.gpus = {}",
            plan.env.world_size, settings.placement.world_size
        )));
    }
    let gpu = Gpu::open(plan.ordinal()).map_err(|e| NcclSetupError(e.to_string()))?;
    let backend = join_job(plan, &gpu, settings, options)?;
    // torchelastic numbers restarts; a restarted process restores before training.
    let restart_count = std::env::var("TORCHELASTIC_RESTART_COUNT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|count| *count > 0);
    let mut options = options.clone();
    options.restore |= restart_count.is_some();
    let generation = restart_count.unwrap_or(1);
    let (outcome, resumed) = block_on(job::train_rank(
        &backend,
        settings.job.clone(),
        &options,
        generation,
    ));
    let result = job::RankResult::new(outcome, settings.job.steps, resumed, backend.last_failure());
    let result_digest = result.outcome.param_digest;
    let agree = block_on(replicas_agree(&backend, result_digest)).unwrap_or(false);
    backend
        .finish()
        .map_err(|e| NcclSetupError(e.to_string()))?;
    let marks = backend.take_marks();
    let (steps_ns, collectives_ns) = job::durations_ns(&marks, |a, b| {
        backend
            .device()
            .elapsed_ns(a, b)
            .unwrap_or_else(|e| panic!("timing events: {e}"))
    });
    let wall_ms = started.elapsed().as_millis() as u64;
    let timings = job::timings(
        CudaRank::TIMER,
        wall_ms,
        &steps_ns,
        &collectives_ns,
        settings,
    );
    let device = backend.device().describe();
    Ok(job::report(
        settings,
        "nccl",
        device,
        &[result],
        (result_digest, agree),
        &marks,
        timings,
    ))
}

/// This rank's communicator: the rendezvous shares NCCL's unique id, then every rank joins.
fn join_job(
    plan: &NcclPlan,
    gpu: &std::sync::Arc<Gpu>,
    settings: &crate::job::JobSettings,
    options: &crate::job::RunOptions,
) -> Result<NcclBackend, NcclSetupError> {
    let id = crate::rendezvous::share_id(
        &plan.env,
        || new_unique_id().unwrap_or_else(|e| panic!("{e}")),
        Duration::from_secs(300),
    )
    .map_err(|e| NcclSetupError(e.to_string()))?;
    let (tiers, _) = options.tiers(settings.placement.node_count());
    let mut backend = NcclBackend::join(
        gpu,
        settings.placement,
        plan.env.rank,
        id,
        max_payload_elems(&settings.job),
        options.recv_timeout,
        tiers,
    )?;
    backend.set_crash_at_step(options.crash_at_step);
    Ok(backend)
}

/// The largest payload a job sends: the step's all-reduce buffer (gradient, loss and
/// trainer-core's checkpoint votes); a restore's all-gather carries only the parameters.
pub fn max_payload_elems(job: &trainer_core::job::JobConfig) -> usize {
    job.proxy_elems + 1 + trainer_core::checkpoint::VOTE_COUNT
}

/// A real transport measures real time: for `wall_ms`, `now_ns` and receive timeouts.
#[allow(clippy::disallowed_methods)]
fn wall_clock_start() -> Instant {
    Instant::now()
}
