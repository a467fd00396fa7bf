//! Software prefetch: asking the CPU to start loading memory that will be needed soon.
//!
//! Here, not in `faultline-sim`, because the collectives use it too (a receive's destination
//! loads while the payload's checksum runs); the simulator re-exports it as
//! `faultline_sim::prefetch::prefetch`. This crate's one `unsafe` block.
//!
//! At 100,000 ranks the simulator's per-rank memory (futures, world state, payload buffers)
//! is far larger than the caches, and each access that misses waits for DRAM. Where the code
//! knows what it will touch next (the executor's list of woken ranks), prefetching it lets
//! those misses overlap. A prefetch changes no value and cannot fault, so it can change when
//! memory arrives but never a result: determinism does not depend on it.

/// Prefetches every cache line of `value` into all cache levels.
#[inline(always)]
pub fn prefetch<T: ?Sized>(value: &T) {
    let base = (value as *const T).cast::<u8>();
    lines(base, std::mem::size_of_val(value));
}

/// Prefetches the cache lines of `len` bytes from `base`, which must point into (or one past)
/// one live object.
#[inline(always)]
fn lines(base: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..len).step_by(64) {
        // SAFETY: `base.wrapping_add(offset)` stays inside the object `base` points into;
        // `_mm_prefetch` reads nothing architecturally and does not fault on any address.
        #[allow(unsafe_code)]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                base.wrapping_add(offset).cast::<i8>(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (base, len);
}
