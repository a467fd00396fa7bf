//! Limits before work: an estimate of a run's peak memory, checked against what the machine
//! has, so that a run that cannot fit is refused at the start with both numbers rather than
//! killed halfway.
//!
//! The estimate is a per-rank constant measured on this simulator (`faultline bench`: about
//! 4.4 KiB per rank for the 100,000- and 1,000,000-GPU all-reduce of 256 elements, see
//! docs/perf-log.md) plus the rank's real tensors: its parameters, its gradient buffer and the
//! payload buffers in flight, a few copies of the proxy tensor each.

/// Bytes per rank that do not depend on the tensor size: its task, state, wakers, links.
pub const BYTES_PER_RANK: u64 = 6 * 1024;
/// Copies of the proxy tensor a rank holds at the peak (parameters, gradient buffer, sends in
/// flight, receives, a checkpoint shard).
pub const TENSOR_COPIES: u64 = 6;

pub fn estimate_run_bytes(gpus: usize, proxy_elems: usize) -> u64 {
    let per_rank = BYTES_PER_RANK + TENSOR_COPIES * 4 * proxy_elems as u64;
    gpus as u64 * per_rank + 64 * 1024 * 1024
}

/// Memory this process may use: the `FAULTLINE_MEMORY_LIMIT` environment variable (a size such
/// as "16GiB") when set, else `MemAvailable` from /proc/meminfo, where there is one.
pub fn available_bytes() -> Option<u64> {
    if let Some(limit) = std::env::var_os("FAULTLINE_MEMORY_LIMIT") {
        return crate::units::parse_bytes(&limit.to_string_lossy()).ok();
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a run whose estimate exceeds what is available, saying both.
pub fn check(what: &str, estimate: u64, available: Option<u64>) -> Result<(), String> {
    match available {
        Some(limit) if estimate > limit => Err(format!(
            "{what} needs about {:.1} GiB of memory by estimate, and {:.1} GiB is available; \
             use fewer GPUs or a smaller proxy tensor (job.proxy_elems / --elems)",
            estimate as f64 / (1u64 << 30) as f64,
            limit as f64 / (1u64 << 30) as f64
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_cannot_fit_is_refused_with_both_numbers() {
        let estimate = estimate_run_bytes(1_000_000, 1 << 20);
        let error = check("this run", estimate, Some(24 << 30)).unwrap_err();
        assert!(
            error.contains("GiB of memory by estimate") && error.contains("24.0 GiB"),
            "{error}"
        );
        assert!(check("this run", estimate_run_bytes(100_000, 256), Some(24 << 30)).is_ok());
        assert!(check("this run", estimate, None).is_ok());
    }
}
