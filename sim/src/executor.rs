//! Executors: what polls the rank tasks, and when model time advances.
//!
//! Both run every rank as one async task on one thread and advance model time only when no
//! rank is runnable, so both are deterministic and give the same model time and the same
//! numbers; they differ in the order runnable ranks are polled within one instant, which shows
//! only in the trace digest.
//!
//! - `madsim`: madsim's executor polls ready tasks in a seeded random order, so each seed
//!   explores another interleaving. A driver task sleeps on madsim's timer, which madsim fires
//!   only when its ready queue is empty, then checks that every rank is parked and fires the
//!   next model instant.
//! - `fifo`: polls ranks first-in, first-out from a plain queue, with no per-poll bookkeeping;
//!   for large runs where throughput matters more than exploring interleavings.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::prefetch;
use crate::world::World;

trainer_core::named_enum! {
    /// Which executor polls the ranks' futures (see the module note).
    pub enum ExecutorKind {
        Madsim = "madsim",
        Fifo = "fifo",
    }
}

/// Every unfinished rank waits and nothing in the model-time queue can wake any of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deadlock {
    pub model_time_ns: u64,
    pub stuck: Vec<String>,
}

/// Runs `task(rank)` for every rank of `world` to completion on `kind`. `seed` drives madsim's
/// scheduling order.
pub fn run_ranks<F, T>(
    kind: ExecutorKind,
    seed: u64,
    world: &Rc<RefCell<World>>,
    task: impl Fn(usize) -> F,
) -> Result<Vec<T>, Deadlock>
where
    F: Future<Output = T> + 'static,
    T: 'static,
{
    match kind {
        ExecutorKind::Fifo => run_fifo(world, task),
        ExecutorKind::Madsim => run_madsim(seed, world, task),
    }
}

fn deadlock(world: &World) -> Deadlock {
    Deadlock {
        model_time_ns: world.now_ns(),
        stuck: world.stuck_ranks(8),
    }
}

/// Polls ranks first-in, first-out. Ranks are woken by the world listing them, so polling
/// needs no wakers (a no-op one is passed) and no locks.
fn run_fifo<F, T>(world: &Rc<RefCell<World>>, task: impl Fn(usize) -> F) -> Result<Vec<T>, Deadlock>
where
    F: Future<Output = T>,
{
    let rank_count = world.borrow().rank_count();
    world.borrow_mut().list_woken_instead_of_waking();
    let mut tasks: Vec<Option<Pin<Box<F>>>> =
        (0..rank_count).map(|r| Some(Box::pin(task(r)))).collect();
    let mut outputs: Vec<Option<T>> = (0..rank_count).map(|_| None).collect();
    let mut cx = Context::from_waker(Waker::noop());
    let mut ready: Vec<u32> = (0..rank_count as u32).collect();
    // At 100,000 ranks a rank's future (640 bytes for a collective, 944 for a training step,
    // polled through nested state machines whose states sit on different cache lines), its
    // world state and its delivered payload are all out of cache; the ready list says which
    // ranks come next, so their misses can overlap instead of each waiting in turn: states
    // 2 x PREFETCH_AHEAD ranks ahead, futures and payloads PREFETCH_AHEAD ahead, and the
    // list's first ranks up front (a training step fires a million instants that wake only a
    // few ranks each). The task table's entry (the future's address) is prefetched with the
    // state, so that loading it to prefetch the future does not wait for memory.
    loop {
        prefetch_ready_front(&world.borrow(), &tasks, &ready);
        for (i, &rank) in ready.iter().enumerate() {
            if let Some(&far) = ready.get(i + 2 * PREFETCH_AHEAD) {
                world.borrow().prefetch_rank_state(far as usize);
                prefetch::prefetch(&tasks[far as usize]);
            }
            if let Some(&ahead) = ready.get(i + PREFETCH_AHEAD) {
                prefetch_rank(&world.borrow(), &tasks, ahead);
            }
            let rank = rank as usize;
            let Some(future) = tasks[rank].as_mut() else {
                continue;
            };
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                outputs[rank] = Some(output);
                tasks[rank] = None;
                world.borrow_mut().mark_finished(rank);
            }
        }
        let mut w = world.borrow_mut();
        w.take_woken(&mut ready);
        if !ready.is_empty() {
            continue;
        }
        if w.all_finished() {
            break;
        }
        if !w.advance() {
            return Err(deadlock(&w));
        }
        // In rank order: neighbouring ranks' futures and state sit side by side in memory.
        w.take_woken(&mut ready);
    }
    Ok(outputs
        .into_iter()
        .map(|o| o.expect("every rank finished"))
        .collect())
}

/// What polling `rank` soon will load: its future, its delivered payload, its links.
#[inline(always)]
fn prefetch_rank<F>(world: &World, tasks: &[Option<Pin<Box<F>>>], rank: u32) {
    if let Some(future) = &tasks[rank as usize] {
        prefetch::prefetch(&**future);
    }
    world.prefetch_for_poll(rank as usize);
}

/// The ready list's first ranks, whose loads the loop's look-ahead does not reach: their
/// states, then their futures, payloads and links.
#[inline(always)]
fn prefetch_ready_front<F>(world: &World, tasks: &[Option<Pin<Box<F>>>], ready: &[u32]) {
    for &rank in ready.iter().take(2 * PREFETCH_AHEAD) {
        world.prefetch_rank_state(rank as usize);
    }
    for &rank in ready.iter().take(PREFETCH_AHEAD) {
        prefetch_rank(world, tasks, rank);
    }
}

/// How many ranks ahead of the one it polls the FIFO executor prefetches a rank's future and
/// the payload delivered to it; the rank's world state is prefetched twice as far ahead, so
/// that the payload's address is in cache when its data is asked for.
const PREFETCH_AHEAD: usize = 4;

#[cfg(madsim)]
fn run_madsim<F, T>(
    seed: u64,
    world: &Rc<RefCell<World>>,
    task: impl Fn(usize) -> F,
) -> Result<Vec<T>, Deadlock>
where
    F: Future<Output = T> + 'static,
    T: 'static,
{
    use std::time::Duration;
    let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    let rank_count = world.borrow().rank_count();
    let outputs: Rc<RefCell<Vec<Option<T>>>> =
        Rc::new(RefCell::new((0..rank_count).map(|_| None).collect()));
    let driver_world = world.clone();
    let driver_outputs = outputs.clone();
    // Boxed, so that the spawned wrapper holds a pointer: an async block that awaits a
    // captured future stores it twice (as the capture and as the awaited value), and madsim
    // wraps it again, which made each task five times the size of the rank's future.
    let tasks: Vec<Pin<Box<F>>> = (0..rank_count).map(|rank| Box::pin(task(rank))).collect();
    let result = runtime.block_on(async move {
        for (rank, future) in tasks.into_iter().enumerate() {
            let world = driver_world.clone();
            let outputs = driver_outputs.clone();
            madsim::task::spawn_local(async move {
                let output = future.await;
                outputs.borrow_mut()[rank] = Some(output);
                world.borrow_mut().mark_finished(rank);
            });
        }
        loop {
            // madsim fires this timer only once its ready queue has drained (or as its clock
            // creeps during polls); the runnable count says which.
            madsim::time::sleep(Duration::from_millis(1)).await;
            let mut w = driver_world.borrow_mut();
            if w.all_finished() {
                return Ok(());
            }
            if w.runnable() > 0 {
                continue;
            }
            if !w.advance() {
                return Err(deadlock(&w));
            }
        }
    });
    result?;
    let outputs = Rc::try_unwrap(outputs)
        .ok()
        .expect("tasks are done")
        .into_inner();
    Ok(outputs
        .into_iter()
        .map(|o| o.expect("every rank finished"))
        .collect())
}

/// Without `--cfg madsim` madsim is only a tokio shim, so the seeded executor is unavailable;
/// the caller asked for it, so say so rather than silently run another.
#[cfg(not(madsim))]
fn run_madsim<F, T>(
    _seed: u64,
    _world: &Rc<RefCell<World>>,
    _task: impl Fn(usize) -> F,
) -> Result<Vec<T>, Deadlock>
where
    F: Future<Output = T> + 'static,
    T: 'static,
{
    panic!("this build has no madsim executor: build with RUSTFLAGS=\"--cfg madsim\" (the workspace's .cargo/config.toml does)")
}
