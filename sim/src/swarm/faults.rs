//! Fault schedules as data: the swarm draws one per seed, the shrinker edits it, and both write
//! it back as a scenario's `[faults]` tables. Every fault kind lives in [`FaultKind`] and
//! [`FaultSpec`]; a new kind (a link flap, an SDC) plugs in here: one variant in each, its
//! draw, its TOML, its simpler forms.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trainer_core::digest::mix64;

use crate::world::{CrashTarget, CrashWhen};

/// Times are drawn and shrunk on a grid of this many nanoseconds, so schedules read well.
const GRID_NS: u64 = 1_000_000;

/// The swarm's own stream constant: mixed with the seed and the kind, so that the swarm's draws
/// never share a stream with the run's own fault stream, and adding a kind shifts no other.
const SWARM_STREAM: u64 = 0x5a4d_0000;

/// What a draw may use: the cluster's shape and the faulty phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrawSpace {
    pub nodes: usize,
    pub gpus: usize,
    pub gpus_per_node: usize,
    /// Faults happen before this model time...
    pub faulty_until_ns: u64,
    /// ...or before this step.
    pub faulty_steps: u64,
}

/// The fault kinds the swarm switches on and off. A seed switches each on with probability
/// one half (swarm testing: a run with fewer kinds explores deeper into each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    NodeCrash,
    GpuCrash,
    CrashAtStep,
    CrashAfterCommits,
    StorageSlow,
    StorageFailWrites,
    StorageCorrupt,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::NodeCrash,
        FaultKind::GpuCrash,
        FaultKind::CrashAtStep,
        FaultKind::CrashAfterCommits,
        FaultKind::StorageSlow,
        FaultKind::StorageFailWrites,
        FaultKind::StorageCorrupt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::NodeCrash => "node_crash",
            FaultKind::GpuCrash => "gpu_crash",
            FaultKind::CrashAtStep => "crash_at_step",
            FaultKind::CrashAfterCommits => "crash_after_commits",
            FaultKind::StorageSlow => "storage_slow",
            FaultKind::StorageFailWrites => "storage_fail_writes",
            FaultKind::StorageCorrupt => "storage_corrupt",
        }
    }

    /// Each kind's own stream number; never reuse one.
    fn stream(self) -> u64 {
        self as u64 + 1
    }

    fn draw(self, rng: &mut ChaCha8Rng, space: &DrawSpace) -> FaultSpec {
        let time = |rng: &mut ChaCha8Rng| grid(rng.gen_range(0..space.faulty_until_ns.max(1)));
        let target = |rng: &mut ChaCha8Rng| {
            if rng.gen_bool(0.5) {
                CrashTarget::Node(rng.gen_range(0..space.nodes))
            } else {
                CrashTarget::Gpu(rng.gen_range(0..space.gpus))
            }
        };
        let window = |rng: &mut ChaCha8Rng| {
            let from_ns = time(rng);
            let until_ns = grid(
                rng.gen_range(from_ns + GRID_NS..=space.faulty_until_ns.max(from_ns + GRID_NS)),
            );
            (from_ns, until_ns.max(from_ns + GRID_NS))
        };
        match self {
            FaultKind::NodeCrash => FaultSpec::Crash {
                target: CrashTarget::Node(rng.gen_range(0..space.nodes)),
                when: CrashWhen::AtNs(time(rng)),
            },
            FaultKind::GpuCrash => FaultSpec::Crash {
                target: CrashTarget::Gpu(rng.gen_range(0..space.gpus)),
                when: CrashWhen::AtNs(time(rng)),
            },
            FaultKind::CrashAtStep => FaultSpec::Crash {
                target: target(rng),
                when: CrashWhen::AtStep(rng.gen_range(0..space.faulty_steps.max(1))),
            },
            FaultKind::CrashAfterCommits => FaultSpec::Crash {
                target: target(rng),
                when: CrashWhen::AfterCommits(rng.gen_range(1..=3)),
            },
            FaultKind::StorageSlow => {
                let (from_ns, until_ns) = window(rng);
                let factor = [2, 4, 8, 16][rng.gen_range(0..4)];
                FaultSpec::StorageSlow {
                    from_ns,
                    until_ns,
                    factor,
                }
            }
            FaultKind::StorageFailWrites => {
                let (from_ns, until_ns) = window(rng);
                FaultSpec::StorageFailWrites { from_ns, until_ns }
            }
            FaultKind::StorageCorrupt => FaultSpec::StorageCorrupt { at_ns: time(rng) },
        }
    }
}

fn grid(ns: u64) -> u64 {
    ns / GRID_NS * GRID_NS
}

/// One fault of a schedule, explicit: no rates, no randomness left but the run's own (which
/// shard a corruption hits, drawn from the run's seed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaultSpec {
    Crash {
        target: CrashTarget,
        when: CrashWhen,
    },
    StorageSlow {
        from_ns: u64,
        until_ns: u64,
        factor: u32,
    },
    StorageFailWrites {
        from_ns: u64,
        until_ns: u64,
    },
    StorageCorrupt {
        at_ns: u64,
    },
}

/// The seed's schedule: each kind switched on with probability one half, then one or two
/// faults of it, each kind from its own stream.
pub fn draw_schedule(seed: u64, space: &DrawSpace) -> Vec<FaultSpec> {
    let mut faults = Vec::new();
    for kind in FaultKind::ALL {
        let stream = mix64(seed ^ SWARM_STREAM ^ (kind.stream() << 48));
        let mut rng = ChaCha8Rng::seed_from_u64(stream);
        if rng.gen_bool(0.5) {
            for _ in 0..rng.gen_range(1..=2) {
                faults.push(kind.draw(&mut rng, space));
            }
        }
    }
    faults
}

fn duration(ns: u64) -> toml::Value {
    if ns % GRID_NS == 0 {
        toml::Value::String(format!("{}ms", ns / GRID_NS))
    } else {
        toml::Value::String(format!("{ns}ns"))
    }
}

impl FaultSpec {
    /// Where the fault goes in a scenario: `faults.crash` or `faults.storage`, and its table.
    pub fn to_toml(&self) -> (&'static str, toml::Table) {
        let mut table = toml::Table::new();
        match *self {
            FaultSpec::Crash { target, when } => {
                match target {
                    CrashTarget::Node(node) => table.insert("node".into(), (node as i64).into()),
                    CrashTarget::Gpu(gpu) => table.insert("gpu".into(), (gpu as i64).into()),
                };
                match when {
                    CrashWhen::AtNs(at) => table.insert("at".into(), duration(at)),
                    CrashWhen::AtStep(step) => table.insert("at_step".into(), (step as i64).into()),
                    CrashWhen::AfterCommits(n) => {
                        table.insert("after_commits".into(), (n as i64).into())
                    }
                };
                ("crash", table)
            }
            FaultSpec::StorageSlow {
                from_ns,
                until_ns,
                factor,
            } => {
                table.insert("kind".into(), "slow".into());
                table.insert("from".into(), duration(from_ns));
                table.insert("until".into(), duration(until_ns));
                table.insert("factor".into(), f64::from(factor).into());
                ("storage", table)
            }
            FaultSpec::StorageFailWrites { from_ns, until_ns } => {
                table.insert("kind".into(), "fail_writes".into());
                table.insert("from".into(), duration(from_ns));
                table.insert("until".into(), duration(until_ns));
                ("storage", table)
            }
            FaultSpec::StorageCorrupt { at_ns } => {
                table.insert("kind".into(), "corrupt".into());
                table.insert("at".into(), duration(at_ns));
                ("storage", table)
            }
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        use crate::units::format_duration_ns as d;
        let target = |t: CrashTarget| match t {
            CrashTarget::Node(n) => format!("node {n}"),
            CrashTarget::Gpu(g) => format!("gpu {g}"),
        };
        match *self {
            FaultSpec::Crash { target: t, when } => match when {
                CrashWhen::AtNs(at) => format!("crash {} at {}", target(t), d(at)),
                CrashWhen::AtStep(step) => format!("crash {} at step {step}", target(t)),
                CrashWhen::AfterCommits(n) => {
                    format!("crash {} after {n} checkpoint commits", target(t))
                }
            },
            FaultSpec::StorageSlow {
                from_ns,
                until_ns,
                factor,
            } => format!(
                "storage {factor}x slower from {} to {}",
                d(from_ns),
                d(until_ns)
            ),
            FaultSpec::StorageFailWrites { from_ns, until_ns } => {
                format!(
                    "storage fails writes from {} to {}",
                    d(from_ns),
                    d(until_ns)
                )
            }
            FaultSpec::StorageCorrupt { at_ns } => {
                format!(
                    "storage flips a bit of the newest checkpoint at {}",
                    d(at_ns)
                )
            }
        }
    }

    /// Simpler forms of this fault, most aggressive first: earlier, on fewer or lower ranks,
    /// after fewer commits, over a shorter window, milder. The shrinker tries them in order.
    pub fn simpler(&self, gpus_per_node: usize) -> Vec<FaultSpec> {
        let mut out = Vec::new();
        let earlier = |t: u64| -> Vec<u64> {
            let mut times = vec![0, grid(t / 2), grid(t - t / 4)];
            times.retain(|&x| x < t);
            times.dedup();
            times
        };
        match *self {
            FaultSpec::Crash { target, when } => {
                let targets: Vec<CrashTarget> = match target {
                    // A node crash on fewer ranks: its first GPU alone.
                    CrashTarget::Node(n) => [
                        CrashTarget::Gpu(n * gpus_per_node),
                        CrashTarget::Node(0),
                        CrashTarget::Node(n / 2),
                    ]
                    .into_iter()
                    .filter(|t| *t != target)
                    .collect(),
                    CrashTarget::Gpu(g) => [CrashTarget::Gpu(0), CrashTarget::Gpu(g / 2)]
                        .into_iter()
                        .filter(|t| *t != target)
                        .collect(),
                };
                let whens: Vec<CrashWhen> = match when {
                    CrashWhen::AtNs(at) => earlier(at).into_iter().map(CrashWhen::AtNs).collect(),
                    CrashWhen::AtStep(s) => [0, s / 2, s.saturating_sub(1)]
                        .into_iter()
                        .filter(|&x| x < s)
                        .map(CrashWhen::AtStep)
                        .collect(),
                    CrashWhen::AfterCommits(n) => [1, n - 1]
                        .into_iter()
                        .filter(|&x| x >= 1 && x < n)
                        .map(CrashWhen::AfterCommits)
                        .collect(),
                };
                out.extend(
                    whens
                        .into_iter()
                        .map(|when| FaultSpec::Crash { target, when }),
                );
                out.extend(
                    targets
                        .into_iter()
                        .map(|target| FaultSpec::Crash { target, when }),
                );
            }
            FaultSpec::StorageSlow {
                from_ns,
                until_ns,
                factor,
            } => {
                let windows = shorter_windows(from_ns, until_ns);
                out.extend(
                    windows
                        .into_iter()
                        .map(|(from_ns, until_ns)| FaultSpec::StorageSlow {
                            from_ns,
                            until_ns,
                            factor,
                        }),
                );
                if factor > 2 {
                    out.push(FaultSpec::StorageSlow {
                        from_ns,
                        until_ns,
                        factor: factor / 2,
                    });
                }
            }
            FaultSpec::StorageFailWrites { from_ns, until_ns } => {
                let windows = shorter_windows(from_ns, until_ns);
                out.extend(
                    windows
                        .into_iter()
                        .map(|(from_ns, until_ns)| FaultSpec::StorageFailWrites {
                            from_ns,
                            until_ns,
                        }),
                );
            }
            FaultSpec::StorageCorrupt { at_ns } => {
                out.extend(
                    earlier(at_ns)
                        .into_iter()
                        .map(|at_ns| FaultSpec::StorageCorrupt { at_ns }),
                );
            }
        }
        out
    }
}

/// A window moved earlier (same length) or cut shorter (from either end), on the grid.
fn shorter_windows(from_ns: u64, until_ns: u64) -> Vec<(u64, u64)> {
    let length = until_ns - from_ns;
    let half = grid(length / 2).max(GRID_NS);
    let mut out = vec![
        (0, length),
        (grid(from_ns / 2), grid(from_ns / 2) + length),
        (from_ns, from_ns + half),
        (until_ns - half, until_ns),
    ];
    out.retain(|&(f, u)| u > f && (f, u) != (from_ns, until_ns) && (f < from_ns || u - f < length));
    out.dedup();
    out
}

/// The faults as a scenario's `[faults]` table.
pub fn faults_table(faults: &[FaultSpec]) -> toml::Table {
    let mut crash = Vec::new();
    let mut storage = Vec::new();
    for fault in faults {
        match fault.to_toml() {
            ("crash", table) => crash.push(toml::Value::Table(table)),
            (_, table) => storage.push(toml::Value::Table(table)),
        }
    }
    let mut table = toml::Table::new();
    if !crash.is_empty() {
        table.insert("crash".into(), toml::Value::Array(crash));
    }
    if !storage.is_empty() {
        table.insert("storage".into(), toml::Value::Array(storage));
    }
    table
}
