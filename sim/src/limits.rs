//! Limits before work: an estimate of a run's peak memory, checked against what the machine
//! has, so that a run that cannot fit is refused at the start with both numbers rather than
//! killed halfway. What the process "has" is its allocation (`allocation.rs`): the cgroup's
//! limit, a Slurm step's, or the machine's available memory, whichever is least.
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

/// A layout job's estimate: the same per-rank constant, and the real floats a rank of the
/// layout holds at its peak (`LayoutJobConfig::peak_floats_per_rank`).
pub fn estimate_layout_run_bytes(gpus: usize, peak_floats_per_rank: usize) -> u64 {
    let per_rank = BYTES_PER_RANK + 4 * peak_floats_per_rank as u64;
    (gpus as u64).saturating_mul(per_rank) + 64 * 1024 * 1024
}

/// One run of `scenario`: its layout job's estimate, or the plain job's.
pub fn estimate_scenario_bytes(scenario: &faultline_scenario::Scenario) -> u64 {
    let gpus = scenario.cluster.gpus;
    match &scenario.job.layout {
        Some(layout) => estimate_layout_run_bytes(gpus, layout.peak_floats_per_rank()),
        None => estimate_run_bytes(gpus, scenario.job.proxy_elems),
    }
}

/// The environment variable that caps the memory faultline plans for.
pub const MEMORY_LIMIT_ENV: &str = "FAULTLINE_MEMORY_LIMIT";

pub use allocation::{cpu_allowance, memory_limit, Allocation, Limit};

/// Memory this process may use, as [`memory_limit`] reads this host's allocation.
pub fn available_bytes() -> Result<Option<Limit>, String> {
    memory_limit(&Allocation::of_host())
}

/// Worker threads this process may keep busy, as [`cpu_allowance`] reads this host's allocation.
pub fn available_cpus() -> usize {
    cpu_allowance(&Allocation::of_host()).0
}

/// Refuses, before it starts, work that runs `at_once` simulations of `scenario` at the same
/// time (threads of a swarm or a calibration, processes of a check) and cannot fit in memory.
pub fn guard(
    what: &str,
    scenario: &faultline_scenario::Scenario,
    at_once: usize,
) -> Result<(), String> {
    let one = estimate_scenario_bytes(scenario);
    check(
        what,
        one.saturating_mul(at_once.max(1) as u64),
        available_bytes()?,
    )
}

/// A size for people: GiB from one GiB up, MiB below.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// Refuses a run whose estimate exceeds what is available, saying both and where the limit
/// came from.
pub fn check(what: &str, estimate: u64, available: Option<impl Into<Limit>>) -> Result<(), String> {
    match available.map(Into::into) {
        Some(limit) if estimate > limit.bytes => Err(format!(
            "{what} needs about {} of memory by estimate, and {} is available{}; use fewer \
             GPUs or a smaller proxy tensor (job.proxy_elems / --elems)",
            size(estimate),
            size(limit.bytes),
            if limit.source.is_empty() {
                String::new()
            } else {
                format!(" ({})", limit.source)
            }
        )),
        _ => Ok(()),
    }
}

mod allocation;

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
        assert!(check("this run", estimate, None::<u64>).is_ok());
        // A layout's weights count: the widest proxy on a million GPUs cannot fit, the
        // quickstart's shape at 100,000 can.
        let layout = |width: usize, layers: usize| {
            let text = format!(
                "[cluster]\ngpus = 1000000\n[job]\nsteps = 1\nproxy_width = {width}\n\
                 proxy_layers = {layers}\n[parallelism]\ntp = 8\npp = 4\n"
            );
            let scenario = faultline_scenario::load_str("t", "t", &text, &[]).unwrap();
            estimate_scenario_bytes(&scenario)
        };
        assert!(check("this run", layout(1024, 1024), Some(24 << 30)).is_err());
        assert!(check("this run", layout(64, 8) / 10, Some(24 << 30)).is_ok());
    }

    /// One test for every value of the variable: tests run on threads, and the environment
    /// is the process's.
    #[test]
    fn a_memory_limit_that_does_not_parse_is_an_error_not_a_check_switched_off() {
        for (value, expected) in [
            ("16GiB", Ok(Some(16 << 30))),
            ("banana", Err("expected")),
            ("0B", Err("above zero")),
            ("0", Err("expected")),
            ("-5GiB", Err("expected")),
        ] {
            std::env::set_var(MEMORY_LIMIT_ENV, value);
            match (available_bytes().map(|l| l.map(|l| l.bytes)), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{value}"),
                (Err(e), Err(says)) => assert!(e.contains(says) && e.contains(value), "{e}"),
                (got, want) => panic!("{value}: {got:?}, expected {want:?}"),
            }
        }
        std::env::remove_var(MEMORY_LIMIT_ENV);
    }
}
