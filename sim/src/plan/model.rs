//! The Monte Carlo model of one seed: failure arrivals in wall time, detection, recovery by
//! policy, blocking checkpoints with an asynchronous persist, rollback to the last usable
//! checkpoint, lemon nodes, planned maintenance and a spare pool. Pure: a config and a seed
//! index in, a [`SeedResult`] out.
//!
//! The job alternates compute (`checkpoint.interval` of work) and a blocking write. A failure
//! freezes progress at the moment it strikes: work after it is lost, whether the job hung or
//! ran on corrupted state, and snapshots after it are unusable. Detection then takes the kind's
//! latency, and recovery the policy's cost; a failure during recovery starts recovery over
//! (as in Daly's model). Failures during detection or maintenance are absorbed by the outage
//! already under way. Every second of the horizon is either useful progress or one cause of
//! loss, so the parts add up to the horizon.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use statrs::distribution::{Exp, Weibull};

use super::config::{
    needs_replacement_node, stream_of, Distribution, PlanConfig, Policy, COUNTED_KINDS, DEGRADE,
    FAULT_KINDS, LEMON, SDC,
};

/// Wall time lost by cause, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LostTime {
    /// From a failure until recovery starts.
    pub detection_s: f64,
    /// Recovery itself: restart, restore, swap-in or replica stall.
    pub recovery_s: f64,
    /// Work since the restored checkpoint, thrown away, and checkpoint writes cut short.
    pub rework_s: f64,
    /// Blocking checkpoint writes that completed.
    pub checkpoint_s: f64,
    /// Planned maintenance: the final checkpoint, the window and the restart after it.
    pub maintenance_s: f64,
    /// Per-replica recovery: the job running one replica short, as the equivalent stall.
    pub degraded_s: f64,
    /// Fail-slow episodes (`degrade`): the progress the slower steps did not make.
    #[serde(default)]
    pub fail_slow_s: f64,
}

impl LostTime {
    pub const CAUSES: [&'static str; 7] = [
        "detection",
        "recovery",
        "rework",
        "checkpoint",
        "maintenance",
        "degraded",
        "fail_slow",
    ];

    pub fn by_cause(&self) -> [f64; 7] {
        [
            self.detection_s,
            self.recovery_s,
            self.rework_s,
            self.checkpoint_s,
            self.maintenance_s,
            self.degraded_s,
            self.fail_slow_s,
        ]
    }

    pub fn total_s(&self) -> f64 {
        self.by_cause().iter().sum()
    }
}

/// What one seed of one sweep point produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedResult {
    pub seed_idx: u64,
    /// Training progress kept at the horizon, in seconds of failure-free work.
    pub useful_s: f64,
    /// Unexpected interruptions: failures that struck a running or recovering job.
    pub interruptions: u64,
    /// Per [`COUNTED_KINDS`].
    pub interruptions_by_kind: Vec<u64>,
    pub planned_interruptions: u64,
    /// Failures that struck while the job was already down and undetected or in maintenance.
    pub absorbed_failures: u64,
    /// Recoveries that found no spare node and fell back to a full restart.
    pub spare_pool_dry: u64,
    pub lost: LostTime,
}

/// The ChaCha stream of one process of one seed: keyed by the root seed and the process, with
/// the seed index as ChaCha's stream number. Each failure kind has its own stream, so a
/// seed's failure times are the same at every point of a sweep (common random numbers).
pub fn stream(root_seed: u64, seed_idx: u64, process_idx: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&root_seed.to_le_bytes());
    key[8..16].copy_from_slice(&process_idx.to_le_bytes());
    key[16..24].copy_from_slice(b"faultpln");
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(seed_idx);
    rng
}

enum Sampler {
    Never,
    Exponential(Exp),
    Weibull(Weibull),
}

/// One failure kind's arrivals across the whole job.
struct Arrivals {
    next_s: f64,
    rng: ChaCha8Rng,
    sampler: Sampler,
}

impl Arrivals {
    fn new(rate_per_s: f64, distribution: Distribution, rng: ChaCha8Rng) -> Arrivals {
        let sampler = if rate_per_s <= 0.0 {
            Sampler::Never
        } else {
            match distribution {
                Distribution::Exponential => {
                    Sampler::Exponential(Exp::new(rate_per_s).expect("a positive rate"))
                }
                Distribution::Weibull { shape } => {
                    let scale =
                        1.0 / (rate_per_s * statrs::function::gamma::gamma(1.0 + 1.0 / shape));
                    Sampler::Weibull(Weibull::new(shape, scale).expect("a valid Weibull"))
                }
            }
        };
        let mut arrivals = Arrivals {
            next_s: 0.0,
            rng,
            sampler,
        };
        arrivals.advance();
        arrivals
    }

    /// Moves to the next arrival after the current one.
    fn advance(&mut self) {
        self.next_s += match &self.sampler {
            Sampler::Never => f64::INFINITY,
            Sampler::Exponential(d) => self.rng.sample(d),
            Sampler::Weibull(d) => self.rng.sample(d),
        };
    }
}

/// Lemon nodes, each failing at its own exponential rate until drained.
struct LemonNodes {
    failures: Vec<u64>,
    /// Which lemons are still active, to find the k-th active one in O(log n).
    undrained: ActiveSet,
    active: usize,
    rate_each_per_s: f64,
    exclude_after: u64,
    next_s: f64,
    rng: ChaCha8Rng,
}

impl LemonNodes {
    fn redraw(&mut self, from_s: f64) {
        let rate = self.active as f64 * self.rate_each_per_s;
        self.next_s = if rate > 0.0 {
            from_s + self.rng.sample(Exp::new(rate).expect("a positive rate"))
        } else {
            f64::INFINITY
        };
    }

    /// A lemon failed at `next_s`: which one is uniform among the active (memoryless clocks).
    fn strike(&mut self) {
        let pick = self.rng.gen_range(0..self.active);
        let lemon = self.undrained.nth(pick);
        self.failures[lemon] += 1;
        if self.exclude_after > 0 && self.failures[lemon] >= self.exclude_after {
            self.undrained.remove(lemon);
            self.active -= 1;
        }
        let now = self.next_s;
        self.redraw(now);
    }
}

/// A set of indices `0..n`, all members at first, with removal and "the k-th member in index
/// order" in O(log n): a Fenwick tree of membership counts. A storm of failures among
/// 500,000 lemon nodes would otherwise scan them all on every failure.
struct ActiveSet {
    /// 1-based: `tree[i]` counts the members in `(i - lowbit(i), i]`.
    tree: Vec<u32>,
}

impl ActiveSet {
    fn full(n: usize) -> ActiveSet {
        let lowbit = |i: usize| (i & i.wrapping_neg()) as u32;
        ActiveSet {
            tree: (0..=n)
                .map(|i| if i == 0 { 0 } else { lowbit(i) })
                .collect(),
        }
    }

    fn remove(&mut self, idx: usize) {
        let mut i = idx + 1;
        while i < self.tree.len() {
            self.tree[i] -= 1;
            i += i & i.wrapping_neg();
        }
    }

    /// The member with exactly `k` members before it; `k` must be below the member count.
    fn nth(&self, k: usize) -> usize {
        let (mut pos, mut left) = (0, k as u32);
        let mut step = (self.tree.len() - 1)
            .checked_next_power_of_two()
            .unwrap_or(0);
        while step > 0 {
            let next = pos + step;
            if next < self.tree.len() && self.tree[next] <= left {
                left -= self.tree[next];
                pos = next;
            }
            step /= 2;
        }
        // `pos` members-or-fewer prefix ends at `pos`; the wanted member is index `pos` (0-based).
        pos
    }
}

/// A checkpoint the job could restore: when its blocking write ended and the progress it holds.
#[derive(Clone, Copy)]
struct Snapshot {
    end_s: f64,
    progress_s: f64,
}

struct Sim<'a> {
    cfg: &'a PlanConfig,
    interval_s: f64,
    t: f64,
    progress_s: f64,
    /// Usable snapshots of the current lineage, oldest first; the first is durable.
    snapshots: Vec<Snapshot>,
    arrivals: Vec<Arrivals>,
    lemons: LemonNodes,
    /// When each spare node in repair comes back.
    spares_in_repair: Vec<f64>,
    next_maintenance_s: f64,
    result: SeedResult,
}

/// Runs one seed of one configuration.
pub fn run_seed(cfg: &PlanConfig, seed_idx: u64) -> SeedResult {
    let arrivals = arrivals(cfg, seed_idx);
    let lemons = LemonNodes::new(cfg, seed_idx);
    // Checkpoints land on step boundaries when a step time is known.
    let interval_s = if cfg.step_time_s > 0.0 {
        (cfg.checkpoint_interval_s / cfg.step_time_s)
            .ceil()
            .max(1.0)
            * cfg.step_time_s
    } else {
        cfg.checkpoint_interval_s
    };
    let mut sim = Sim {
        cfg,
        interval_s,
        t: 0.0,
        progress_s: 0.0,
        snapshots: vec![Snapshot {
            end_s: f64::NEG_INFINITY,
            progress_s: 0.0,
        }],
        arrivals,
        lemons,
        spares_in_repair: Vec::new(),
        next_maintenance_s: cfg
            .maintenance
            .as_ref()
            .map_or(f64::INFINITY, |m| m.interval_s),
        result: SeedResult {
            seed_idx,
            useful_s: 0.0,
            interruptions: 0,
            interruptions_by_kind: vec![0; COUNTED_KINDS.len()],
            planned_interruptions: 0,
            absorbed_failures: 0,
            spare_pool_dry: 0,
            lost: LostTime::default(),
        },
    };
    sim.run();
    sim.result.useful_s = sim.progress_s;
    sim.result
}

/// Each failure kind's arrival process for one seed, on its own stream. Kinds that need a
/// replacement node strike the ordinary nodes; lemon nodes have their own process.
fn arrivals(cfg: &PlanConfig, seed_idx: u64) -> Vec<Arrivals> {
    let ordinary_nodes = (cfg.nodes - cfg.lemons.nodes) as f64;
    (cfg.faults.iter().enumerate())
        .map(|(idx, f)| {
            let nodes = if needs_replacement_node(idx) {
                ordinary_nodes
            } else {
                cfg.nodes as f64
            };
            Arrivals::new(
                f.rate_per_node_s * nodes,
                f.distribution,
                stream(cfg.root_seed, seed_idx, stream_of(idx)),
            )
        })
        .collect()
}

impl LemonNodes {
    /// The seed's lemon nodes, each failing at the hardware rate times the multiplier.
    fn new(cfg: &PlanConfig, seed_idx: u64) -> LemonNodes {
        let node_hardware_rate: f64 = (cfg.faults.iter().enumerate())
            .filter(|(idx, _)| needs_replacement_node(*idx))
            .map(|(_, f)| f.rate_per_node_s)
            .sum();
        let mut lemons = LemonNodes {
            failures: vec![0; cfg.lemons.nodes],
            undrained: ActiveSet::full(cfg.lemons.nodes),
            active: cfg.lemons.nodes,
            rate_each_per_s: node_hardware_rate * cfg.lemons.rate_multiplier,
            exclude_after: cfg.lemons.exclude_after,
            next_s: f64::INFINITY,
            rng: stream(cfg.root_seed, seed_idx, stream_of(LEMON)),
        };
        lemons.redraw(0.0);
        lemons
    }
}

impl Sim<'_> {
    fn next_failure(&self) -> (f64, usize) {
        let mut best = (self.lemons.next_s, LEMON);
        for (idx, a) in self.arrivals.iter().enumerate() {
            if a.next_s < best.0 {
                best = (a.next_s, idx);
            }
        }
        best
    }

    fn consume(&mut self, kind: usize) {
        if kind == LEMON {
            self.lemons.strike();
        } else {
            self.arrivals[kind].advance();
        }
    }

    /// Failures before `until` strike a job that is already down: the outage absorbs them.
    fn absorb_until(&mut self, until: f64) {
        loop {
            let (at, kind) = self.next_failure();
            if at >= until {
                return;
            }
            self.consume(kind);
            self.result.absorbed_failures += 1;
        }
    }

    fn last_snapshot(&self) -> Snapshot {
        *self.snapshots.last().expect("the initial snapshot")
    }

    fn push_snapshot(&mut self) {
        self.snapshots.push(Snapshot {
            end_s: self.t,
            progress_s: self.progress_s,
        });
        if self.snapshots.len() > 64 {
            let durable = self.durable_idx(self.t);
            self.snapshots.drain(..durable);
        }
    }

    /// The newest snapshot persisted by `at`.
    fn durable_idx(&self, at: f64) -> usize {
        let persist = self.cfg.checkpoint_persist_time_s;
        self.snapshots
            .iter()
            .rposition(|s| s.end_s + persist <= at)
            .unwrap_or(0)
    }

    fn run(&mut self) {
        let h = self.cfg.horizon_s;
        let write_s = self.cfg.checkpoint_write_time_s;
        while self.t < h {
            let (failure_s, kind) = self.next_failure();
            // Maintenance that fell due while the job was down happens as soon as it is back.
            let maintenance_s = self.next_maintenance_s.max(self.t);
            let done_s = self.progress_s - self.last_snapshot().progress_s;
            let compute_end_s = self.t + (self.interval_s - done_s).max(0.0);
            let write_end_s = compute_end_s + write_s;
            let stop_s = failure_s.min(maintenance_s).min(h);
            if write_end_s <= stop_s {
                self.progress_s += compute_end_s - self.t;
                self.result.lost.checkpoint_s += write_s;
                self.t = write_end_s;
                self.push_snapshot();
                continue;
            }
            self.progress_s += stop_s.min(compute_end_s) - self.t;
            let writing_s = (stop_s - compute_end_s).max(0.0);
            self.t = stop_s;
            if h <= failure_s && h <= maintenance_s {
                // The horizon cut a write short: still checkpoint time, not lost work.
                self.result.lost.checkpoint_s += writing_s;
                break;
            }
            if maintenance_s < failure_s {
                self.result.lost.checkpoint_s += writing_s;
                self.maintenance();
                continue;
            }
            if kind == DEGRADE {
                // The job goes on, slower: a write under way is not lost, only delayed.
                self.result.lost.checkpoint_s += writing_s;
                self.fail_slow();
                continue;
            }
            // A write cut short by a failure is wasted.
            self.result.lost.rework_s += writing_s;
            self.result.interruptions += 1;
            self.result.interruptions_by_kind[kind] += 1;
            self.consume(kind);
            self.fail(failure_s, kind);
        }
    }

    /// A fail-slow episode strikes the running job: it makes no progress for the time the
    /// slower steps lose (the episode condensed), and failures that arrive meanwhile strike
    /// when it ends. Nothing is rolled back.
    fn fail_slow(&mut self) {
        self.consume(DEGRADE);
        self.result.interruptions_by_kind[DEGRADE] += 1;
        let end_s = (self.t + self.cfg.fail_slow.lost_s()).min(self.cfg.horizon_s);
        self.result.lost.fail_slow_s += end_s - self.t;
        self.t = end_s;
        for a in &mut self.arrivals {
            a.next_s = a.next_s.max(end_s);
        }
        self.lemons.next_s = self.lemons.next_s.max(end_s);
    }

    /// Fail-slow episodes before `until` strike a job that is down: nothing to slow.
    fn absorb_fail_slows_until(&mut self, until: f64) {
        while self.arrivals[DEGRADE].next_s < until && self.next_failure().1 == DEGRADE {
            self.consume(DEGRADE);
            self.result.absorbed_failures += 1;
        }
    }

    /// Planned maintenance: a final checkpoint, the window, and a restart; no work is lost.
    fn maintenance(&mut self) {
        let m = self
            .cfg
            .maintenance
            .as_ref()
            .expect("maintenance is planned");
        let h = self.cfg.horizon_s;
        let write_end_s = (self.t + self.cfg.checkpoint_write_time_s).min(h);
        self.result.lost.checkpoint_s += write_end_s - self.t;
        self.t = write_end_s;
        // The job goes down only once this checkpoint is persisted, so it counts as durable now.
        self.snapshots.push(Snapshot {
            end_s: self.t - self.cfg.checkpoint_persist_time_s,
            progress_s: self.progress_s,
        });
        let end_s = (self.t + m.duration_s + self.cfg.recovery.restart_time_s).min(h);
        self.result.lost.maintenance_s += end_s - self.t;
        self.t = end_s;
        self.absorb_until(end_s);
        self.result.planned_interruptions += 1;
        while self.next_maintenance_s <= self.t {
            self.next_maintenance_s += m.interval_s;
        }
    }

    /// Handles a failure of `kind` at `failure_s` and any that strike during its recovery.
    fn fail(&mut self, failure_s: f64, kind: usize) {
        let h = self.cfg.horizon_s;
        let (mut failure_s, mut kind) = (failure_s, kind);
        loop {
            let detected_s = (failure_s
                + self
                    .cfg
                    .faults
                    .get(kind)
                    .map_or(self.cfg.faults[0].detection_s, |f| f.detection_s))
            .min(h);
            self.result.lost.detection_s += detected_s - self.t;
            self.t = detected_s;
            self.absorb_until(detected_s);
            let (recovery_s, degraded_s) = self.restore(failure_s, kind);
            if self.t >= h {
                return;
            }
            let end_s = self.t + recovery_s + degraded_s;
            self.absorb_fail_slows_until(end_s);
            let (next_s, next_kind) = self.next_failure();
            let stop_s = next_s.min(end_s).min(h);
            let spent_s = stop_s - self.t;
            self.result.lost.recovery_s += spent_s.min(recovery_s);
            if spent_s > recovery_s {
                self.result.lost.degraded_s += spent_s - recovery_s;
            }
            self.t = stop_s;
            if next_s < end_s && next_s < h {
                self.result.interruptions += 1;
                self.result.interruptions_by_kind[next_kind] += 1;
                self.consume(next_kind);
                failure_s = next_s;
                kind = next_kind;
                continue;
            }
            return;
        }
    }

    /// Picks the recovery for a failure of `kind` at `failure_s`, rolls progress back to what
    /// it restores, and returns the recovery and degraded-running costs.
    fn restore(&mut self, failure_s: f64, kind: usize) -> (f64, f64) {
        let r = &self.cfg.recovery;
        let needs_spare = r.policy != Policy::Restart && needs_replacement_node(kind);
        let have_spare = !needs_spare || self.take_spare(failure_s);
        if !have_spare {
            self.result.spare_pool_dry += 1;
        }
        let policy = if have_spare {
            r.policy
        } else {
            Policy::Restart
        };
        let (recovery_s, degraded_s, target) = match policy {
            Policy::PerReplica if kind != SDC => {
                // The failed replica rejoins from a healthy peer: only the step in flight is lost.
                let step = self.cfg.step_time_s;
                let target = if step > 0.0 {
                    self.progress_s - self.progress_s % step
                } else {
                    self.progress_s
                };
                (
                    r.per_replica_stall_time_s,
                    r.replica_rejoin_time_s / r.replicas as f64,
                    RestoreTarget::Progress(target),
                )
            }
            Policy::InMemory => (
                r.in_memory_restore_time_s,
                0.0,
                RestoreTarget::Snapshot(
                    self.snapshots
                        .iter()
                        .rposition(|s| s.end_s <= failure_s)
                        .unwrap_or(0),
                ),
            ),
            Policy::HotSpare => (
                r.hot_spare_time_s,
                0.0,
                RestoreTarget::Snapshot(self.durable_idx(failure_s)),
            ),
            Policy::Restart | Policy::PerReplica => (
                r.restart_time_s,
                0.0,
                RestoreTarget::Snapshot(self.durable_idx(failure_s)),
            ),
        };
        let restored_s = match target {
            RestoreTarget::Progress(p) => p,
            RestoreTarget::Snapshot(idx) => {
                self.snapshots.truncate(idx + 1);
                self.snapshots[idx].progress_s
            }
        }
        .min(self.progress_s);
        self.result.lost.rework_s += self.progress_s - restored_s;
        self.progress_s = restored_s;
        (recovery_s, degraded_s)
    }

    /// Takes a spare node at `at_s` if one is not in repair; it comes back after the repair.
    fn take_spare(&mut self, at_s: f64) -> bool {
        let Some(spares) = self.cfg.recovery.spare_nodes else {
            return true;
        };
        self.spares_in_repair.retain(|&back_s| back_s > at_s);
        if self.spares_in_repair.len() >= spares {
            return false;
        }
        self.spares_in_repair
            .push(at_s + self.cfg.recovery.repair_time_s);
        true
    }
}

enum RestoreTarget {
    Progress(f64),
    Snapshot(usize),
}

/// The names of the per-kind counts, for reports.
pub fn kind_names() -> &'static [&'static str] {
    &COUNTED_KINDS
}

const _: () = assert!(COUNTED_KINDS.len() == FAULT_KINDS.len() + 1);

#[cfg(test)]
mod active_set_tests {
    use super::ActiveSet;
    use rand::{Rng, SeedableRng};

    /// The Fenwick set answers "the k-th member" exactly as a scan of the members would.
    #[test]
    fn nth_member_matches_a_scan_through_removals() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for n in [1usize, 2, 3, 7, 8, 9, 100, 1000] {
            let mut set = ActiveSet::full(n);
            let mut members: Vec<usize> = (0..n).collect();
            while !members.is_empty() {
                for (k, &member) in members.iter().enumerate() {
                    assert_eq!(set.nth(k), member, "n={n} k={k}");
                }
                let gone = members.remove(rng.gen_range(0..members.len()));
                set.remove(gone);
            }
        }
    }
}
