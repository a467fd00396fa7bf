//! Closed forms the planner shows beside its simulated numbers, never instead of them: Young's
//! and Daly's checkpoint intervals, Daly's expected wall time, and Kokolis et al.'s ETTR
//! estimate. All times are in seconds; see shared reference/reliability.md for the sources.

/// Young (1974): the first-order optimal checkpoint interval, sqrt(2 delta M), for a blocking
/// checkpoint time `delta_s` and a job mean time between failures `mtbf_s`.
pub fn young_interval_s(delta_s: f64, mtbf_s: f64) -> f64 {
    (2.0 * delta_s * mtbf_s).sqrt()
}

/// Daly (2006), FGCS 22(3), his higher-order estimate of the optimal compute time between
/// checkpoints: sqrt(2 delta M) [1 + (1/3) sqrt(delta/2M) + (1/9) delta/2M] - delta for
/// delta < 2M, else M.
pub fn daly_interval_s(delta_s: f64, mtbf_s: f64) -> f64 {
    if delta_s >= 2.0 * mtbf_s {
        return mtbf_s;
    }
    let x = delta_s / (2.0 * mtbf_s);
    (2.0 * delta_s * mtbf_s).sqrt() * (1.0 + x.sqrt() / 3.0 + x / 9.0) - delta_s
}

/// Daly's expected wall time per unit of failure-free work, T_w / T_s =
/// M e^(R/M) (e^((tau+delta)/M) - 1) / tau, for Poisson failures with mean `mtbf_s`, compute
/// `tau_s` between checkpoints, blocking checkpoint time `delta_s` and restart time `restart_s`
/// (failures may strike during the restart too).
pub fn daly_wall_time_ratio(tau_s: f64, delta_s: f64, restart_s: f64, mtbf_s: f64) -> f64 {
    mtbf_s * (restart_s / mtbf_s).exp() * (((tau_s + delta_s) / mtbf_s).exp() - 1.0) / tau_s
}

/// Daly's model as an ETTR: useful time over wall time, T_s / T_w.
pub fn daly_ettr(tau_s: f64, delta_s: f64, restart_s: f64, mtbf_s: f64) -> f64 {
    1.0 / daly_wall_time_ratio(tau_s, delta_s, restart_s, mtbf_s)
}

/// Kokolis et al. (HPCA 2025): E[ETTR] ~ (1 - N r (u0 + dt/2)) / (1 + w/dt), with `failures_per_s`
/// the job's failure rate N r, `u0_s` the restart overhead, `dt_s` the checkpoint interval and
/// `w_s` the blocking write time. The first-order formula goes negative when failures outpace
/// work; it is clamped at 0.
pub fn kokolis_ettr(failures_per_s: f64, u0_s: f64, dt_s: f64, w_s: f64) -> f64 {
    ((1.0 - failures_per_s * (u0_s + dt_s / 2.0)) / (1.0 + w_s / dt_s)).max(0.0)
}

/// Kokolis et al.'s best interval for their estimate: sqrt(2 w / (N r)).
pub fn kokolis_interval_s(failures_per_s: f64, w_s: f64) -> f64 {
    (2.0 * w_s / failures_per_s).sqrt()
}
