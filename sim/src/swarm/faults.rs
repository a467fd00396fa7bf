//! Fault schedules as data: the swarm draws one per seed, the shrinker edits it, and both write
//! it back as a scenario's `[faults]` tables. Every fault kind faultline injects lives in
//! [`FaultKind`] and [`FaultSpec`] (crashes, storage faults, link flaps, stragglers, silent data
//! corruption, hangs, desyncs, fail-slow links); a new kind plugs in here: one variant in each, its draw, its TOML, its simpler
//! forms.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trainer_core::digest::mix64;

use faultline_scenario::{LinkRef, Scenario};

use crate::world::{CrashTarget, CrashWhen, SdcKind, StragglerTarget};
use faultline_scenario::config::{
    DegradeSpec, DegradeTarget, DesyncKind, DesyncSpec, HangPoint, HangSpec,
};

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
    /// Leaf switches, and spine uplinks of each, for leaf-spine link flaps.
    pub leaves: usize,
    pub spines_per_leaf: usize,
    /// Whether the scenario can survive a lost transfer (it has a collective timeout); link
    /// flaps are drawn only then.
    pub link_flaps: bool,
}

trainer_core::named_enum! {
    /// The fault kinds the swarm switches on and off. A seed switches each on with probability
    /// one half (swarm testing: a run with fewer kinds explores deeper into each).
    pub enum FaultKind {
        NodeCrash = "node_crash",
        GpuCrash = "gpu_crash",
        CrashAtStep = "crash_at_step",
        CrashAfterCommits = "crash_after_commits",
        StorageSlow = "storage_slow",
        StorageFailWrites = "storage_fail_writes",
        StorageCorrupt = "storage_corrupt",
        LinkFlap = "link_flap",
        Straggler = "straggler",
        Sdc = "sdc",
        Hang = "hang",
        Desync = "desync",
        Degrade = "degrade",
    }
}

impl FaultKind {
    /// What it injects, for help texts.
    pub fn meaning(self) -> &'static str {
        match self {
            FaultKind::NodeCrash => "a node crash at a time",
            FaultKind::GpuCrash => "a GPU failure at a time",
            FaultKind::CrashAtStep => "a crash at a step",
            FaultKind::CrashAfterCommits => "a crash after N checkpoint commits",
            FaultKind::StorageSlow => "slow persistent storage",
            FaultKind::StorageFailWrites => "failing storage writes",
            FaultKind::StorageCorrupt => "a bit flipped in a stored checkpoint",
            FaultKind::LinkFlap => "a flapping link (where recovery.collective_timeout is set)",
            FaultKind::Straggler => "a slow GPU or NIC",
            FaultKind::Sdc => {
                "silent data corruption (in flight, in a gradient, in parameters, or a faulty \
                 reduction kernel)"
            }
            FaultKind::Hang => "a rank that stops issuing collectives, alive (with a watchdog)",
            FaultKind::Desync => "a rank that issues the wrong collective (with a watchdog)",
            FaultKind::Degrade => {
                "a fail-slow link, NIC or node's NVLinks: less bandwidth, perhaps lossy"
            }
        }
    }

    /// Each kind's own stream number; never reuse one.
    fn stream(self) -> u64 {
        self as u64 + 1
    }

    /// Whether the scenario can host this kind at all.
    fn possible(self, space: &DrawSpace) -> bool {
        match self {
            // Only collective-level detection sees these: a watchdog must be set.
            FaultKind::LinkFlap | FaultKind::Hang | FaultKind::Desync => space.link_flaps,
            _ => true,
        }
    }

    /// One fault of this kind, drawn from `rng`. The order of the draws fixes every seed's
    /// schedule: changing it changes what each seed runs.
    fn draw(self, rng: &mut ChaCha8Rng, space: &DrawSpace) -> FaultSpec {
        match self {
            FaultKind::NodeCrash => FaultSpec::Crash {
                target: CrashTarget::Node(rng.gen_range(0..space.nodes)),
                when: CrashWhen::AtNs(space.time(rng)),
            },
            FaultKind::GpuCrash => FaultSpec::Crash {
                target: CrashTarget::Gpu(rng.gen_range(0..space.gpus)),
                when: CrashWhen::AtNs(space.time(rng)),
            },
            FaultKind::CrashAtStep => FaultSpec::Crash {
                target: space.crash_target(rng),
                when: CrashWhen::AtStep(rng.gen_range(0..space.faulty_steps.max(1))),
            },
            FaultKind::CrashAfterCommits => FaultSpec::Crash {
                target: space.crash_target(rng),
                when: CrashWhen::AfterCommits(rng.gen_range(1..=3)),
            },
            FaultKind::StorageSlow => {
                let (from_ns, until_ns) = space.window(rng);
                let factor = [2, 4, 8, 16][rng.gen_range(0..4)];
                FaultSpec::StorageSlow {
                    from_ns,
                    until_ns,
                    factor,
                }
            }
            FaultKind::StorageFailWrites => {
                let (from_ns, until_ns) = space.window(rng);
                FaultSpec::StorageFailWrites { from_ns, until_ns }
            }
            FaultKind::StorageCorrupt => FaultSpec::StorageCorrupt {
                at_ns: space.time(rng),
            },
            FaultKind::LinkFlap => draw_flap(rng, space),
            FaultKind::Straggler => draw_straggler(rng, space),
            FaultKind::Hang => FaultSpec::Hang {
                gpu: rng.gen_range(0..space.gpus),
                at_step: rng.gen_range(0..space.faulty_steps.max(1)),
                kernel: rng.gen_bool(0.5),
            },
            FaultKind::Desync => FaultSpec::Desync {
                gpu: rng.gen_range(0..space.gpus),
                at_step: rng.gen_range(0..space.faulty_steps.max(1)),
                kind: DesyncKind::ALL[rng.gen_range(0..DesyncKind::ALL.len())],
            },
            FaultKind::Degrade => draw_degrade(rng, space),
            FaultKind::Sdc => {
                let kind = SDC_KINDS[rng.gen_range(0..SDC_KINDS.len())];
                FaultSpec::Sdc {
                    kind,
                    gpu: rng.gen_range(0..space.gpus),
                    at_step: rng.gen_range(0..space.faulty_steps.max(1)),
                    // Any bit: a low mantissa bit may pass every guard and be reported as
                    // escaped, which the "no silent escape" invariant allows.
                    bit: rng.gen_range(0..32),
                }
            }
        }
    }
}

/// A link flap: a leaf-spine link or a NIC, mostly short (the retry transport rides them
/// out), sometimes longer than a retry budget (the transfer is lost and the job restarts).
fn draw_flap(rng: &mut ChaCha8Rng, space: &DrawSpace) -> FaultSpec {
    let link = if space.leaves > 0 && space.spines_per_leaf > 0 && rng.gen_bool(0.5) {
        LinkRef::LeafSpine {
            leaf: rng.gen_range(0..space.leaves),
            spine: rng.gen_range(0..space.spines_per_leaf),
        }
    } else {
        LinkRef::Nic {
            gpu: rng.gen_range(0..space.gpus),
        }
    };
    let down_ns = FLAP_DOWN_NS[rng.gen_range(0..FLAP_DOWN_NS.len())];
    let count = rng.gen_range(1..=3);
    let period_ns = if count > 1 {
        grid(down_ns + rng.gen_range(GRID_NS..=down_ns.max(GRID_NS) * 4))
    } else {
        0
    };
    FaultSpec::LinkFlap {
        link,
        at_ns: space.time(rng),
        down_ns,
        count,
        period_ns,
    }
}

/// A slow GPU or node, its compute or its NIC, over a window of the faulty phase.
fn draw_straggler(rng: &mut ChaCha8Rng, space: &DrawSpace) -> FaultSpec {
    let target = if rng.gen_bool(0.5) {
        StragglerTarget::Node(rng.gen_range(0..space.nodes))
    } else {
        StragglerTarget::Gpu(rng.gen_range(0..space.gpus))
    };
    let (from_ns, until_ns) = space.window(rng);
    FaultSpec::Straggler {
        target,
        nic: rng.gen_bool(0.5),
        factor: [2, 4, 8, 16][rng.gen_range(0..4)],
        from_ns,
        duration_ns: until_ns - from_ns,
    }
}

/// A fail-slow: a NIC, a leaf-spine link or a node's NVLinks keeps a half, a quarter or a
/// tenth of its bandwidth over a window of the faulty phase, mostly without loss.
fn draw_degrade(rng: &mut ChaCha8Rng, space: &DrawSpace) -> FaultSpec {
    let target = match rng.gen_range(0..3) {
        0 if space.leaves > 0 && space.spines_per_leaf > 0 => {
            DegradeTarget::Link(LinkRef::LeafSpine {
                leaf: rng.gen_range(0..space.leaves),
                spine: rng.gen_range(0..space.spines_per_leaf),
            })
        }
        1 => DegradeTarget::NodeNvlinks(rng.gen_range(0..space.nodes)),
        _ => DegradeTarget::Link(LinkRef::Nic {
            gpu: rng.gen_range(0..space.gpus),
        }),
    };
    let (from_ns, until_ns) = space.window(rng);
    FaultSpec::Degrade {
        target,
        bandwidth: [0.5, 0.25, 0.1][rng.gen_range(0..3)],
        loss: [0.0, 0.0, 0.01, 0.05][rng.gen_range(0..4)],
        at_ns: from_ns,
        duration_ns: until_ns - from_ns,
    }
}

impl DrawSpace {
    /// A time in the faulty phase, on the grid.
    fn time(&self, rng: &mut ChaCha8Rng) -> u64 {
        grid(rng.gen_range(0..self.faulty_until_ns.max(1)))
    }

    /// A node or a GPU, even odds.
    fn crash_target(&self, rng: &mut ChaCha8Rng) -> CrashTarget {
        if rng.gen_bool(0.5) {
            CrashTarget::Node(rng.gen_range(0..self.nodes))
        } else {
            CrashTarget::Gpu(rng.gen_range(0..self.gpus))
        }
    }

    /// A window of at least one grid step inside the faulty phase.
    fn window(&self, rng: &mut ChaCha8Rng) -> (u64, u64) {
        let from_ns = self.time(rng);
        let until_ns =
            grid(rng.gen_range(from_ns + GRID_NS..=self.faulty_until_ns.max(from_ns + GRID_NS)));
        (from_ns, until_ns.max(from_ns + GRID_NS))
    }
}

/// How long a drawn link flap stays down. The base scenario's retry budget (30 s by default)
/// lies between the last two.
const FLAP_DOWN_NS: [u64; 5] = [
    10 * GRID_NS,
    100 * GRID_NS,
    1_000 * GRID_NS,
    5_000 * GRID_NS,
    40_000 * GRID_NS,
];

const SDC_KINDS: [SdcKind; 4] = [
    SdcKind::InFlight,
    SdcKind::Gradient,
    SdcKind::Parameters,
    SdcKind::ReductionKernel,
];

fn sdc_kind_key(kind: SdcKind) -> &'static str {
    match kind {
        SdcKind::InFlight => "in-flight",
        SdcKind::Gradient => "gradient",
        SdcKind::Parameters => "parameters",
        SdcKind::ReductionKernel => "reduction-kernel",
    }
}

/// Where a drawn hang strikes: in a kernel, or in the data loader.
fn hang_point(kernel: bool) -> HangPoint {
    if kernel {
        HangPoint::Kernel
    } else {
        HangPoint::DataLoader
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
    /// `count` flaps of `link`, each `down_ns` long, one every `period_ns`.
    LinkFlap {
        link: LinkRef,
        at_ns: u64,
        down_ns: u64,
        count: u32,
        period_ns: u64,
    },
    /// `target` runs `factor` times slower (its compute, or its NIC when `nic`).
    Straggler {
        target: StragglerTarget,
        nic: bool,
        factor: u32,
        from_ns: u64,
        duration_ns: u64,
    },
    /// One bit flip (or, for the reduction kernel, a GPU wrong from `at_step` on).
    Sdc {
        kind: SdcKind,
        gpu: usize,
        at_step: u64,
        bit: u32,
    },
    /// `gpu` hangs at `at_step`, in a kernel or (not `kernel`) in its data loader.
    Hang {
        gpu: usize,
        at_step: u64,
        kernel: bool,
    },
    /// `gpu` issues the wrong collective at `at_step`, differing by `kind`.
    Desync {
        gpu: usize,
        at_step: u64,
        kind: DesyncKind,
    },
    /// `target` keeps `bandwidth` of its bandwidth and loses `loss` of its crossings over
    /// `at_ns..at_ns + duration_ns`.
    Degrade {
        target: DegradeTarget,
        bandwidth: f64,
        loss: f64,
        at_ns: u64,
        duration_ns: u64,
    },
}

/// The seed's schedule: each kind switched on with probability one half, then one or two
/// faults of it, each kind from its own stream.
pub fn draw_schedule(seed: u64, space: &DrawSpace) -> Vec<FaultSpec> {
    let mut faults = Vec::new();
    for &kind in FaultKind::ALL {
        let stream = mix64(seed ^ SWARM_STREAM ^ (kind.stream() << 48));
        let mut rng = ChaCha8Rng::seed_from_u64(stream);
        if rng.gen_bool(0.5) && kind.possible(space) {
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
    /// Where the fault goes in a scenario (`faults.crash`, `faults.storage`, `faults.link_flap`,
    /// `faults.straggler`, `faults.sdc`, `faults.hang` or `faults.desync`), and its table:
    /// crashes and storage faults here, the faults that strike a link or a rank in
    /// [`FaultSpec::link_or_rank_toml`].
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
            _ => self.link_or_rank_toml(table),
        }
    }

    /// [`FaultSpec::to_toml`] for link flaps, stragglers, SDC, hangs and desyncs.
    fn link_or_rank_toml(&self, mut table: toml::Table) -> (&'static str, toml::Table) {
        match *self {
            FaultSpec::LinkFlap {
                link,
                at_ns,
                down_ns,
                count,
                period_ns,
            } => {
                table.insert("link".into(), link.to_string().into());
                table.insert("at".into(), duration(at_ns));
                table.insert("down".into(), duration(down_ns));
                if count > 1 {
                    table.insert("count".into(), i64::from(count).into());
                    table.insert("period".into(), duration(period_ns));
                }
                ("link_flap", table)
            }
            FaultSpec::Straggler {
                target,
                nic,
                factor,
                from_ns,
                duration_ns,
            } => {
                match target {
                    StragglerTarget::Gpu(gpu) => table.insert("gpu".into(), (gpu as i64).into()),
                    StragglerTarget::Node(n) => table.insert("node".into(), (n as i64).into()),
                };
                table.insert("kind".into(), if nic { "nic" } else { "compute" }.into());
                table.insert("factor".into(), f64::from(factor).into());
                table.insert("from".into(), duration(from_ns));
                table.insert("duration".into(), duration(duration_ns));
                ("straggler", table)
            }
            FaultSpec::Sdc {
                kind,
                gpu,
                at_step,
                bit,
            } => {
                table.insert("kind".into(), sdc_kind_key(kind).into());
                table.insert("gpu".into(), (gpu as i64).into());
                table.insert("at_step".into(), (at_step as i64).into());
                table.insert("bit".into(), i64::from(bit).into());
                ("sdc", table)
            }
            FaultSpec::Hang {
                gpu,
                at_step,
                kernel,
            } => {
                table.insert("gpu".into(), (gpu as i64).into());
                table.insert("at_step".into(), (at_step as i64).into());
                table.insert("point".into(), hang_point(kernel).name().into());
                ("hang", table)
            }
            FaultSpec::Desync { gpu, at_step, kind } => {
                table.insert("gpu".into(), (gpu as i64).into());
                table.insert("at_step".into(), (at_step as i64).into());
                table.insert("kind".into(), kind.name().into());
                ("desync", table)
            }
            FaultSpec::Degrade { .. } => self.degrade_toml(table),
            _ => unreachable!("to_toml writes crashes and storage faults itself"),
        }
    }

    /// What the fault means to the simulator: adds it to `scenario`'s typed fault settings,
    /// as loading [`FaultSpec::to_toml`]'s table does. A test holds the two to the same
    /// meaning, so the swarm's writer and the scenario reader share one vocabulary. Crashes
    /// and storage faults here, the rest in [`FaultSpec::apply_link_or_rank`].
    pub fn apply(&self, scenario: &mut Scenario) {
        use faultline_scenario::{SlowWindow, Window};
        match *self {
            FaultSpec::Crash { target, when } => {
                (scenario.control.crashes).push(faultline_scenario::CrashSpec { target, when })
            }
            FaultSpec::StorageSlow {
                from_ns,
                until_ns,
                factor,
            } => scenario.storage.slow.push(SlowWindow {
                window: Window { from_ns, until_ns },
                factor: f64::from(factor),
            }),
            FaultSpec::StorageFailWrites { from_ns, until_ns } => {
                scenario.storage.failing.push(Window { from_ns, until_ns })
            }
            FaultSpec::StorageCorrupt { at_ns } => scenario.control.corruptions_at_ns.push(at_ns),
            _ => self.apply_link_or_rank(scenario),
        }
    }

    /// [`FaultSpec::apply`] for link flaps, stragglers, SDC, hangs and desyncs.
    fn apply_link_or_rank(&self, scenario: &mut Scenario) {
        use faultline_scenario::{LinkFlapSpec, SdcSpec, StragglerSpec};
        use faultline_scenario::{DEFAULT_TRIGGER_MASK, DEFAULT_TRIGGER_VALUE};
        match *self {
            FaultSpec::LinkFlap {
                link,
                at_ns,
                down_ns,
                count,
                period_ns,
            } => scenario.link_faults.flaps.push(LinkFlapSpec {
                name: link.to_string(),
                link,
                at_ns,
                down_ns,
                count,
                period_ns: if count > 1 { period_ns } else { 0 },
            }),
            FaultSpec::Straggler {
                target,
                nic,
                factor,
                from_ns,
                duration_ns,
            } => scenario.stragglers.stragglers.push(StragglerSpec {
                target,
                kind: if nic {
                    faultline_scenario::StragglerKind::Nic
                } else {
                    faultline_scenario::StragglerKind::Compute
                },
                factor: f64::from(factor),
                from_ns,
                until_ns: from_ns + duration_ns,
            }),
            FaultSpec::Sdc {
                kind,
                gpu,
                at_step,
                bit,
            } => scenario.sdc.specs.push(SdcSpec {
                kind,
                gpu,
                at_step,
                bit: Some(bit),
                count: 1,
                trigger_mask: DEFAULT_TRIGGER_MASK,
                trigger_value: DEFAULT_TRIGGER_VALUE & DEFAULT_TRIGGER_MASK,
            }),
            FaultSpec::Hang {
                gpu,
                at_step,
                kernel,
            } => scenario.control.hangs.push(HangSpec {
                rank: gpu,
                at_step,
                point: hang_point(kernel),
            }),
            FaultSpec::Desync { gpu, at_step, kind } => {
                (scenario.control.desyncs).push(DesyncSpec {
                    rank: gpu,
                    at_step,
                    kind,
                })
            }
            FaultSpec::Degrade { .. } => self.apply_degrade(scenario),
            _ => unreachable!("apply adds crashes and storage faults itself"),
        }
    }

    /// One line for people: crashes and storage faults here, the rest in
    /// [`FaultSpec::describe_link_or_rank`].
    pub fn describe(&self) -> String {
        use crate::units::format_duration_ns as d;
        match *self {
            FaultSpec::Crash { target, when } => match when {
                CrashWhen::AtNs(at) => format!("crash {target} at {}", d(at)),
                CrashWhen::AtStep(step) => format!("crash {target} at step {step}"),
                CrashWhen::AfterCommits(n) => {
                    format!("crash {target} after {n} checkpoint commits")
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
            _ => self.describe_link_or_rank(),
        }
    }

    /// [`FaultSpec::describe`] for link flaps, stragglers, SDC, hangs and desyncs.
    fn describe_link_or_rank(&self) -> String {
        use crate::units::format_duration_ns as d;
        match *self {
            FaultSpec::LinkFlap {
                link,
                at_ns,
                down_ns,
                count,
                period_ns,
            } => {
                let times = if count > 1 {
                    format!(", {count} times every {}", d(period_ns))
                } else {
                    String::new()
                };
                format!(
                    "link {} down at {} for {}{times}",
                    link,
                    d(at_ns),
                    d(down_ns)
                )
            }
            FaultSpec::Straggler {
                target,
                nic,
                factor,
                from_ns,
                duration_ns,
            } => {
                let what = if nic { "NIC" } else { "compute" };
                format!(
                    "{target} {what} {factor}x slower from {} for {}",
                    d(from_ns),
                    d(duration_ns)
                )
            }
            FaultSpec::Sdc {
                kind,
                gpu,
                at_step,
                bit,
            } => match kind {
                SdcKind::ReductionKernel => format!(
                    "gpu {gpu}'s reduction kernel flips bit {bit} of matching sums from step \
                     {at_step}"
                ),
                _ => format!(
                    "SDC {} flips bit {bit} on gpu {gpu} at step {at_step}",
                    sdc_kind_key(kind)
                ),
            },
            FaultSpec::Hang {
                gpu,
                at_step,
                kernel,
            } => {
                let point = if kernel {
                    "a kernel"
                } else {
                    "its data loader"
                };
                format!("gpu {gpu} hangs in {point} at step {at_step}")
            }
            FaultSpec::Desync { gpu, at_step, kind } => {
                format!("gpu {gpu} issues the wrong collective ({kind}) at step {at_step}")
            }
            FaultSpec::Degrade { .. } => self.describe_degrade(),
            _ => unreachable!("describe says crashes and storage faults itself"),
        }
    }

    /// [`FaultSpec::to_toml`] for a degrade: its target as `nic`, `link` or `nvlink`.
    fn degrade_toml(&self, mut table: toml::Table) -> (&'static str, toml::Table) {
        let FaultSpec::Degrade {
            target,
            bandwidth,
            loss,
            at_ns,
            duration_ns,
        } = *self
        else {
            unreachable!("a degrade")
        };
        match target {
            DegradeTarget::Link(LinkRef::Nic { gpu }) => {
                table.insert("nic".into(), (gpu as i64).into())
            }
            DegradeTarget::Link(link) => table.insert("link".into(), link.to_string().into()),
            DegradeTarget::NodeNvlinks(node) => table.insert("nvlink".into(), (node as i64).into()),
        };
        table.insert("bandwidth".into(), bandwidth.into());
        if loss > 0.0 {
            table.insert("loss".into(), loss.into());
        }
        table.insert("at".into(), duration(at_ns));
        table.insert("duration".into(), duration(duration_ns));
        ("degrade", table)
    }

    /// [`FaultSpec::apply`] for a degrade.
    fn apply_degrade(&self, scenario: &mut Scenario) {
        let FaultSpec::Degrade {
            target,
            bandwidth,
            loss,
            at_ns,
            duration_ns,
        } = *self
        else {
            unreachable!("a degrade")
        };
        scenario.degrades.degrades.push(DegradeSpec {
            target,
            bandwidth,
            loss,
            at_ns,
            until_ns: at_ns + duration_ns,
        });
    }

    /// [`FaultSpec::describe`] for a degrade.
    fn describe_degrade(&self) -> String {
        use crate::units::format_duration_ns as d;
        let FaultSpec::Degrade {
            target,
            bandwidth,
            loss,
            at_ns,
            duration_ns,
        } = *self
        else {
            unreachable!("a degrade")
        };
        let loss = if loss > 0.0 {
            format!(", losing {loss} of its transfers,")
        } else {
            String::new()
        };
        format!(
            "{target} keeps {bandwidth} of its bandwidth{loss} from {} for {}",
            d(at_ns),
            d(duration_ns)
        )
    }

    /// Simpler forms of this fault, most aggressive first: earlier, on fewer or lower ranks,
    /// after fewer commits, over a shorter window, milder. The shrinker tries them in order.
    pub fn simpler(&self, gpus_per_node: usize) -> Vec<FaultSpec> {
        let mut out = Vec::new();
        match *self {
            FaultSpec::Crash { target, when } => {
                simpler_crash(target, when, gpus_per_node, &mut out)
            }
            FaultSpec::StorageSlow { .. }
            | FaultSpec::StorageFailWrites { .. }
            | FaultSpec::StorageCorrupt { .. } => simpler_storage(self, &mut out),
            FaultSpec::LinkFlap {
                link,
                at_ns,
                down_ns,
                count,
                period_ns,
            } => simpler_flap(link, at_ns, down_ns, count, period_ns, &mut out),
            FaultSpec::Straggler {
                target,
                nic,
                factor,
                from_ns,
                duration_ns,
            } => simpler_straggler(
                target,
                nic,
                factor,
                (from_ns, duration_ns),
                gpus_per_node,
                &mut out,
            ),
            FaultSpec::Sdc {
                kind,
                gpu,
                at_step,
                bit,
            } => simpler_sdc(kind, gpu, at_step, bit, &mut out),
            FaultSpec::Hang { gpu, at_step, .. } | FaultSpec::Desync { gpu, at_step, .. } => {
                simpler_gray(*self, gpu, at_step, &mut out)
            }
            FaultSpec::Degrade { .. } => simpler_degrade(*self, &mut out),
        }
        out
    }
}

/// Earlier times than `t` on the grid: the start, half way, three quarters.
fn earlier(t: u64) -> Vec<u64> {
    let mut times = vec![0, grid(t / 2), grid(t - t / 4)];
    times.retain(|&x| x < t);
    times.dedup();
    times
}

fn simpler_crash(
    target: CrashTarget,
    when: CrashWhen,
    gpus_per_node: usize,
    out: &mut Vec<FaultSpec>,
) {
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

/// A storage fault earlier, over shorter windows, or milder.
fn simpler_storage(fault: &FaultSpec, out: &mut Vec<FaultSpec>) {
    match *fault {
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
                    .map(|(from_ns, until_ns)| FaultSpec::StorageFailWrites { from_ns, until_ns }),
            );
        }
        FaultSpec::StorageCorrupt { at_ns } => {
            out.extend(
                earlier(at_ns)
                    .into_iter()
                    .map(|at_ns| FaultSpec::StorageCorrupt { at_ns }),
            );
        }
        _ => unreachable!("a storage fault"),
    }
}

fn simpler_flap(
    link: LinkRef,
    at_ns: u64,
    down_ns: u64,
    count: u32,
    period_ns: u64,
    out: &mut Vec<FaultSpec>,
) {
    let flap = |link, at_ns, down_ns, count| FaultSpec::LinkFlap {
        link,
        at_ns,
        down_ns,
        count,
        period_ns: if count > 1 { period_ns } else { 0 },
    };
    out.extend(
        earlier(at_ns)
            .into_iter()
            .map(|at| flap(link, at, down_ns, count)),
    );
    if count > 1 {
        out.push(flap(link, at_ns, down_ns, 1));
    }
    // Shorter, while still longer than nothing (and shorter than the period).
    let shorter = grid(down_ns / 2);
    if shorter > 0 {
        out.push(flap(link, at_ns, shorter, count));
    }
    let lower = match link {
        LinkRef::Nic { gpu } => vec![LinkRef::Nic { gpu: 0 }, LinkRef::Nic { gpu: gpu / 2 }],
        LinkRef::LeafSpine { leaf, spine } => vec![
            LinkRef::LeafSpine { leaf: 0, spine: 0 },
            LinkRef::LeafSpine {
                leaf: leaf / 2,
                spine,
            },
        ],
        // The swarm flaps NIC and leaf-spine links only.
        LinkRef::NvLink { .. } | LinkRef::InterCluster { .. } => Vec::new(),
    };
    let mut lower: Vec<LinkRef> = lower.into_iter().filter(|l| *l != link).collect();
    lower.dedup();
    out.extend(lower.into_iter().map(|l| flap(l, at_ns, down_ns, count)));
}

fn simpler_straggler(
    target: StragglerTarget,
    nic: bool,
    factor: u32,
    (from_ns, duration_ns): (u64, u64),
    gpus_per_node: usize,
    out: &mut Vec<FaultSpec>,
) {
    let straggler = |target, factor, (from_ns, until_ns): (u64, u64)| FaultSpec::Straggler {
        target,
        nic,
        factor,
        from_ns,
        duration_ns: until_ns - from_ns,
    };
    let window = (from_ns, from_ns + duration_ns);
    out.extend(
        shorter_windows(from_ns, from_ns + duration_ns)
            .into_iter()
            .map(|w| straggler(target, factor, w)),
    );
    if factor > 2 {
        out.push(straggler(target, factor / 2, window));
    }
    let targets = match target {
        StragglerTarget::Node(n) => vec![
            StragglerTarget::Gpu(n * gpus_per_node),
            StragglerTarget::Node(0),
            StragglerTarget::Node(n / 2),
        ],
        StragglerTarget::Gpu(g) => {
            vec![StragglerTarget::Gpu(0), StragglerTarget::Gpu(g / 2)]
        }
    };
    let mut targets: Vec<StragglerTarget> = targets.into_iter().filter(|t| *t != target).collect();
    targets.dedup();
    out.extend(targets.into_iter().map(|t| straggler(t, factor, window)));
}

fn simpler_sdc(kind: SdcKind, gpu: usize, at_step: u64, bit: u32, out: &mut Vec<FaultSpec>) {
    let sdc = |gpu, at_step, bit| FaultSpec::Sdc {
        kind,
        gpu,
        at_step,
        bit,
    };
    let mut steps = vec![0, at_step / 2, at_step.saturating_sub(1)];
    steps.retain(|&s| s < at_step);
    steps.dedup();
    out.extend(steps.into_iter().map(|s| sdc(gpu, s, bit)));
    let mut gpus = vec![0, gpu / 2];
    gpus.retain(|&g| g < gpu);
    gpus.dedup();
    out.extend(gpus.into_iter().map(|g| sdc(g, at_step, bit)));
    // A lower bit is a smaller error.
    let mut bits = vec![0, bit / 2];
    bits.retain(|&b| b < bit);
    bits.dedup();
    out.extend(bits.into_iter().map(|b| sdc(gpu, at_step, b)));
}

/// A hang or desync earlier, on a lower GPU, and a hang in its data loader rather than a
/// kernel.
fn simpler_gray(fault: FaultSpec, gpu: usize, at_step: u64, out: &mut Vec<FaultSpec>) {
    let moved = |gpu, at_step| match fault {
        FaultSpec::Hang { kernel, .. } => FaultSpec::Hang {
            gpu,
            at_step,
            kernel,
        },
        FaultSpec::Desync { kind, .. } => FaultSpec::Desync { gpu, at_step, kind },
        _ => unreachable!("simpler_gray moves hangs and desyncs"),
    };
    let mut steps = vec![0, at_step / 2];
    steps.retain(|&s| s < at_step);
    steps.dedup();
    out.extend(steps.into_iter().map(|s| moved(gpu, s)));
    let mut gpus = vec![0, gpu / 2];
    gpus.retain(|&g| g < gpu);
    gpus.dedup();
    out.extend(gpus.into_iter().map(|g| moved(g, at_step)));
    if let FaultSpec::Hang { kernel: true, .. } = fault {
        out.push(FaultSpec::Hang {
            gpu,
            at_step,
            kernel: false,
        });
    }
}

/// A degrade over a shorter or earlier window, without its loss, keeping more of its
/// bandwidth (at most half: a degrade that keeps all is none), or on a lower link or node.
fn simpler_degrade(fault: FaultSpec, out: &mut Vec<FaultSpec>) {
    let FaultSpec::Degrade {
        target,
        bandwidth,
        loss,
        at_ns,
        duration_ns,
    } = fault
    else {
        unreachable!("a degrade")
    };
    let degrade = |target, bandwidth, loss, (from_ns, until_ns): (u64, u64)| FaultSpec::Degrade {
        target,
        bandwidth,
        loss,
        at_ns: from_ns,
        duration_ns: until_ns - from_ns,
    };
    let window = (at_ns, at_ns + duration_ns);
    out.extend(
        shorter_windows(window.0, window.1)
            .into_iter()
            .map(|w| degrade(target, bandwidth, loss, w)),
    );
    if loss > 0.0 {
        out.push(degrade(target, bandwidth, 0.0, window));
    }
    if bandwidth < 0.5 {
        out.push(degrade(target, (bandwidth * 2.0).min(0.5), loss, window));
    }
    let lower = match target {
        DegradeTarget::Link(LinkRef::Nic { gpu }) => vec![0, gpu / 2]
            .into_iter()
            .map(|gpu| DegradeTarget::Link(LinkRef::Nic { gpu }))
            .collect(),
        DegradeTarget::Link(LinkRef::LeafSpine { leaf, spine }) => vec![
            DegradeTarget::Link(LinkRef::LeafSpine { leaf: 0, spine: 0 }),
            DegradeTarget::Link(LinkRef::LeafSpine {
                leaf: leaf / 2,
                spine,
            }),
        ],
        DegradeTarget::NodeNvlinks(node) => vec![
            DegradeTarget::NodeNvlinks(0),
            DegradeTarget::NodeNvlinks(node / 2),
        ],
        // The swarm degrades NICs, leaf-spine links and nodes' NVLinks only.
        DegradeTarget::Link(_) => Vec::new(),
    };
    let mut lower: Vec<DegradeTarget> = lower.into_iter().filter(|t| *t != target).collect();
    lower.dedup();
    out.extend(
        lower
            .into_iter()
            .map(|t| degrade(t, bandwidth, loss, window)),
    );
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

/// The faults as a scenario's `[faults]` table: one array of tables per key, in schedule order.
pub fn faults_table(faults: &[FaultSpec]) -> toml::Table {
    let mut table = toml::Table::new();
    for fault in faults {
        let (key, entry) = fault.to_toml();
        let array = table
            .entry(key)
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        if let toml::Value::Array(array) = array {
            array.push(toml::Value::Table(entry));
        }
    }
    table
}
