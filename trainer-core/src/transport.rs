//! Transport-level retry: when a transfer finds no working path, the sender waits and tries
//! again with bounded exponential backoff, until a total budget is spent. The schedule is pure
//! logic, shared by any backend that retries at the transport level; the simulator applies it
//! to its fabric.

/// Bounded exponential backoff: retry `n` (1-based) waits `initial_backoff_ns * 2^(n-1)`,
/// capped at `max_backoff_ns`; once the waits would exceed `budget_ns` in total, the transport
/// gives up and the transfer is lost, as on a plain transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial_backoff_ns: u64,
    pub max_backoff_ns: u64,
    pub budget_ns: u64,
}

impl RetryPolicy {
    /// The wait before retry `attempt` (1-based).
    pub fn backoff_ns(&self, attempt: u32) -> u64 {
        let doublings = attempt.saturating_sub(1).min(63);
        self.initial_backoff_ns
            .saturating_mul(1u64 << doublings)
            .min(self.max_backoff_ns)
    }

    /// Total time waited before retry `attempt` is made (the sum of the first `attempt`
    /// backoffs).
    pub fn waited_before_ns(&self, attempt: u32) -> u64 {
        (1..=attempt).fold(0u64, |sum, a| sum.saturating_add(self.backoff_ns(a)))
    }

    /// The wait before retry `attempt`, or `None` when that retry would go past the budget.
    pub fn next_backoff(&self, attempt: u32) -> Option<u64> {
        (self.waited_before_ns(attempt) <= self.budget_ns).then(|| self.backoff_ns(attempt))
    }
}
