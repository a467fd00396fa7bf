//! The `faultline` binary's heap: mimalloc on transparent huge pages, and a pager thread that
//! faults the allocator's memory in ahead of use on the core the simulation leaves idle.
//!
//! A simulation runs on one thread, and at 100,000 GPUs it touches about 400 MiB of fresh
//! memory within its first few hundred milliseconds. Every fresh page costs a fault that
//! clears it, and on a virtual machine whose host reclaims idle guest memory (this workplace's
//! VM, measured in docs/perf-log.md) the first run after a pause pays 0.5-0.6 s of system time
//! for them on the simulation's own thread. The pager takes those faults on the other core
//! instead: it keeps mimalloc's arenas populated (`madvise(MADV_POPULATE_WRITE)`, which maps
//! zeroed pages without changing any page already there) a [`LEAD`] ahead of the bytes the
//! program has live. It changes when memory is faulted in, never what it holds, so no value the
//! simulation computes depends on it. `FAULTLINE_PAGER=off` turns it off (for A/B runs).
//! The library and its unit and integration tests use the system allocator and no pager; the
//! CLI tests run this binary, pager and all (one of them compares runs with it on and off).
//! Commands that use every core themselves (`swarm`, `plan`) leave the pager nothing idle to
//! run on, but it only wakes while their heap grows.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

/// mimalloc, not glibc malloc: at 100,000 ranks the heap is 400 MiB of futures, payload
/// buffers and message slots touched in scattered order, and the allocator decides how it is
/// paged (see [`use_huge_pages`]). Wrapped to count the bytes live, which paces the pager.
pub struct Heap;

#[global_allocator]
static ALLOCATOR: Heap = Heap;

/// Bytes allocated and not yet freed, by every thread, to within [`PUBLISH_EVERY`] a thread.
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    /// This thread's allocations and frees not yet added to [`LIVE_BYTES`].
    static UNPUBLISHED: Cell<isize> = const { Cell::new(0) };
}

/// How much a thread's count may change before it adds it to the shared one. An atomic add on
/// every allocation and free (a locked instruction, which waits for the core's pending stores)
/// cost 6% of the 100,000-GPU all-reduce in `perf`; batched, the count costs two plain moves.
const PUBLISH_EVERY: isize = 1 << 20;

/// Counts `delta` bytes allocated (or freed, when negative) by this thread.
#[inline(always)]
fn account(delta: isize) {
    UNPUBLISHED.with(|unpublished| {
        let pending = unpublished.get() + delta;
        if pending.abs() >= PUBLISH_EVERY {
            LIVE_BYTES.fetch_add(pending, Relaxed);
            unpublished.set(0);
        } else {
            unpublished.set(pending);
        }
    });
}

/// How far ahead of the live bytes the pager keeps memory populated: as many bytes again as
/// are live, from [`MIN_LEAD`] up to `LEAD`, so a small run's heap at most doubles and a large
/// one gains at most 64 MiB. 64 MiB is about what a 100,000-rank run allocates in 50 ms while
/// it grows; a 16 MiB lead measured slower on a first run after a pause (docs/perf-log.md).
const LEAD: usize = 64 << 20;
const MIN_LEAD: usize = 4 << 20;

/// What the pager populates at a time: one transparent huge page.
const STEP: usize = 2 << 20;

// SAFETY: every method hands the request to mimalloc unchanged; the counter is bookkeeping.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let block = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !block.is_null() {
            account(layout.size() as isize);
        }
        block
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let block = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        if !block.is_null() {
            account(layout.size() as isize);
        }
        block
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-(layout.size() as isize));
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let new = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        new
    }
}

/// Sets mimalloc up and starts the pager; called first thing in `main`. Fails on a
/// `FAULTLINE_PAGER` that is neither `on` nor `off`.
pub fn init() -> Result<(), String> {
    use_huge_pages();
    keep_freed_pages();
    let off = match std::env::var_os("FAULTLINE_PAGER") {
        None => false,
        Some(v) if v == "on" => false,
        Some(v) if v == "off" => true,
        Some(v) => {
            return Err(format!(
                "environment variable FAULTLINE_PAGER: expected on or off, found {v:?}"
            ))
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // MADV_POPULATE_WRITE is Linux's (5.14 on); elsewhere the run faults its pages itself.
    if cfg!(target_os = "linux") && !off && cores >= 2 {
        // Best effort: without the thread the run is as before.
        let _ = std::thread::Builder::new()
            .name("faultline-pager".into())
            .spawn(pager);
    }
    Ok(())
}

/// Asks mimalloc to back its arenas with transparent huge pages (`madvise(MADV_HUGEPAGE)`; a
/// kernel with THP off or in `never` mode gets 4 KiB pages as before). A 100,000-GPU all-reduce
/// faults in 134,000 4 KiB pages with glibc (0.3 to 0.7 s of system time in this workplace's
/// VM) and misses the TLB on most ranks it polls; with 2 MiB pages it faults 1,000 to 9,000
/// times. Measured in docs/perf-log.md ("The allocator"). Allocation only: no value the
/// simulation computes depends on it.
fn use_huge_pages() {
    // SAFETY: `mi_option_set` writes one of mimalloc's option words; it is called before any
    // thread is started, and mimalloc reads the option only when it next asks the OS for memory.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(libmimalloc_sys::mi_option_large_os_pages, 1);
    }
}

/// mimalloc 2.x's `mi_option_purge_delay` (`mimalloc.h`'s `mi_option_e`, v2 line), which
/// `libmimalloc-sys` does not name. Bound to the `v2` feature as [`mi_arena_area`] is.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to purge (decommit) the pages it has freed. By default it hands a
/// freed page back to the OS 10 ms after its last block is freed, and the next allocation there
/// faults it in again 4 KiB at a time, splitting the huge page it sat in. A collective frees
/// each message's payload as it is received and allocates the next at another size class, so
/// the 100,000-GPU all-reduce purged 526 MiB and took 9,300 minor faults on the simulation's
/// thread; kept, it takes 380, and runs 4-8% faster (docs/perf-log.md, "Freed pages kept"). The
/// cost: pages freed in one phase of a run stay resident while a later phase allocates at
/// other sizes, so a run whose phases differ peaks higher: ten training steps with checkpoints
/// at 100,000 GPUs peak at 760 MiB instead of 669 (the all-reduce's 401 MiB does not
/// move). `MIMALLOC_PURGE_DELAY` in the environment is overridden. Allocation only: no value
/// the simulation computes depends on it.
fn keep_freed_pages() {
    // SAFETY: as in `use_huge_pages`: one option word, written before any thread is started;
    // mimalloc reads it each time it considers a purge.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}

#[allow(unsafe_code)]
extern "C" {
    /// mimalloc 2.x's start and size of arena `arena_id` (its index + 1: 1, 2, ... in the order
    /// it reserved them), or null; exported by the library but not bound by `libmimalloc-sys`.
    /// This signature is 2.x's only: in 3.x `mi_arena_id_t` is a pointer. It holds because the
    /// workspace builds libmimalloc-sys with its `v2` feature (root Cargo.toml); dropping that
    /// feature must drop this declaration and the pager with it.
    fn mi_arena_area(arena_id: std::ffi::c_int, size: *mut usize) -> *mut std::ffi::c_void;
}

/// The pager's loop: populate mimalloc's arenas in the order it fills them, from their start,
/// until [`LEAD`] bytes past what is live; then wait for the program to grow. mimalloc fills
/// an arena from its low end and takes the next arena only when one is full, so the address
/// just past the live bytes is about where the next allocations land.
fn pager() {
    let (mut arena, mut done_in_arena, mut populated) = (1, 0, 0);
    // Checks every half millisecond while the heap grows, backing off to every 8 ms when it
    // does not (a long run's steady state).
    let mut pause_us = 500;
    loop {
        let live = LIVE_BYTES.load(Relaxed).max(0) as usize;
        let wanted = live + live.clamp(MIN_LEAD, LEAD);
        let mut progressed = false;
        while populated < wanted {
            let mut size = 0;
            // SAFETY: `mi_arena_area` only reads mimalloc's arena table and writes `size`.
            #[allow(unsafe_code)]
            let start = unsafe { mi_arena_area(arena, &mut size) };
            if start.is_null() {
                break; // not reserved yet: mimalloc reserves the next when it needs one
            }
            if done_in_arena + STEP > size {
                (arena, done_in_arena) = (arena + 1, 0);
                continue;
            }
            // SAFETY: the range lies inside the anonymous mapping mimalloc made for its arena
            // (read-write with the eager commit that large OS pages imply; where a debug or
            // secure mimalloc left part of it PROT_NONE, the call fails and the pager stops).
            // MADV_POPULATE_WRITE faults in missing pages as zero pages and leaves present ones
            // (and their contents) alone, so it cannot disturb memory in use.
            #[allow(unsafe_code)]
            let populated_ok = unsafe { populate(start.cast::<u8>().add(done_in_arena), STEP) };
            if !populated_ok {
                return; // a kernel before 5.14, or a range not writable: page as before
            }
            done_in_arena += STEP;
            populated += STEP;
            progressed = true;
        }
        // Waiting for more arenas (or with nothing to do) counts as idle, so live bytes that
        // sit outside the arenas (mimalloc maps allocations of 1 GiB and more on their own)
        // cannot keep the pager polling at full rate.
        pause_us = if progressed {
            500
        } else {
            (pause_us * 2).min(8_000)
        };
        std::thread::sleep(std::time::Duration::from_micros(pause_us));
    }
}

/// Faults in `len` bytes from `start` as zero pages where none is mapped yet.
///
/// # Safety
/// The range must lie inside one read-write anonymous mapping.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
unsafe fn populate(start: *mut u8, len: usize) -> bool {
    // SAFETY: the caller's range; MADV_POPULATE_WRITE leaves present pages as they are.
    unsafe { libc::madvise(start.cast(), len, libc::MADV_POPULATE_WRITE) == 0 }
}

#[cfg(not(target_os = "linux"))]
#[allow(unsafe_code)]
unsafe fn populate(_start: *mut u8, _len: usize) -> bool {
    false
}
