//! The op-id spaces. Every collective a job runs carries an op id in its message tags, and
//! two collectives that could be in flight in one generation must never share one: a message
//! of one would be taken for the other's. Each kind of collective has its own space, one
//! range of the 64-bit ids:
//!
//! | space      | range              | id                                               |
//! |------------|--------------------|--------------------------------------------------|
//! | `Step`     | `[0, 2^60)`        | the step number                                  |
//! | `Rollback` | `[2^60, 2^61)`     | `2^60 + rollbacks * 2^20 + op` (an SDC roll-back's restore) |
//! | `Health`   | `[2^61, 2^62)`     | `2^61 + step * 8 + check` (re-runs, fingerprints) |
//! | `Restore`  | `[2^62, 2^63)`, low half of each `2^20` | `2^62 + generation * 2^20 + op` |
//! | `Regroup`  | `[2^62, 2^63)`, high half | `2^62 + generation * 2^20 + 2^19 + op`    |
//! | `Layout`   | `[2^63, 2^64)`     | `2^63 + step * 2^24 + op` (a layout job's messages) |
//!
//! Debug builds assert that every field stays inside its space.

/// Where an op id comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpSpace {
    /// A training step's gradient all-reduce.
    Step { step: u64 },
    /// A step's health checks: the fingerprint (0, 1), the re-run (2), the kernel check (3)
    /// and the vote on a faulty kernel (4).
    Health { step: u64, check: u64 },
    /// The restore after the `rollbacks`-th SDC roll-back, from its first op.
    Rollback { rollbacks: u64 },
    /// The restore after the restart into `generation`, from its first op.
    Restore { generation: u64 },
    /// A per-replica regroup into `generation`, from its first op.
    Regroup { generation: u64 },
    /// Op `op` of step `step` of a layout job: its point-to-point messages and its TP and DP
    /// collectives (see `layout_job`).
    Layout { step: u64, op: u64 },
}

const ROLLBACK_BASE: u64 = 1 << 60;
const HEALTH_BASE: u64 = 1 << 61;
const RESTART_BASE: u64 = 1 << 62;
/// Ops a restore, roll-back or regroup may number from its base.
const OPS_PER_RECOVERY: u64 = 1 << 19;
const LAYOUT_BASE: u64 = 1 << 63;
/// Ops a layout job's step may number.
pub const OPS_PER_LAYOUT_STEP: u64 = 1 << 24;
const HEALTH_CHECKS_PER_STEP: u64 = 8;

impl OpSpace {
    /// The op id, or with `Rollback`, `Restore` and `Regroup` the first of their ops.
    pub fn op_id(self) -> u64 {
        match self {
            OpSpace::Step { step } => {
                debug_assert!(step < ROLLBACK_BASE, "step {step} leaves the step space");
                step
            }
            OpSpace::Health { step, check } => {
                debug_assert!(check < HEALTH_CHECKS_PER_STEP, "health check {check}");
                debug_assert!(step < (HEALTH_BASE / HEALTH_CHECKS_PER_STEP), "step {step}");
                HEALTH_BASE + step * HEALTH_CHECKS_PER_STEP + check
            }
            OpSpace::Rollback { rollbacks } => {
                debug_assert!(rollbacks < ROLLBACK_BASE >> 20, "roll-back {rollbacks}");
                ROLLBACK_BASE + (rollbacks << 20)
            }
            OpSpace::Restore { generation } => {
                debug_assert!(generation < RESTART_BASE >> 20, "generation {generation}");
                RESTART_BASE + (generation << 20)
            }
            OpSpace::Regroup { generation } => {
                debug_assert!(generation < RESTART_BASE >> 20, "generation {generation}");
                RESTART_BASE + (generation << 20) + OPS_PER_RECOVERY
            }
            OpSpace::Layout { step, op } => {
                debug_assert!(op < OPS_PER_LAYOUT_STEP, "layout op {op}");
                debug_assert!(step < LAYOUT_BASE / OPS_PER_LAYOUT_STEP, "step {step}");
                LAYOUT_BASE + step * OPS_PER_LAYOUT_STEP + op
            }
        }
    }

    /// The space an op id lies in, with its fields; for an op numbered from a base, the base's.
    pub fn of(op_id: u64) -> OpSpace {
        if op_id < ROLLBACK_BASE {
            OpSpace::Step { step: op_id }
        } else if op_id < HEALTH_BASE {
            OpSpace::Rollback {
                rollbacks: (op_id - ROLLBACK_BASE) >> 20,
            }
        } else if op_id < RESTART_BASE {
            let offset = op_id - HEALTH_BASE;
            OpSpace::Health {
                step: offset / HEALTH_CHECKS_PER_STEP,
                check: offset % HEALTH_CHECKS_PER_STEP,
            }
        } else if op_id >= LAYOUT_BASE {
            let offset = op_id - LAYOUT_BASE;
            OpSpace::Layout {
                step: offset / OPS_PER_LAYOUT_STEP,
                op: offset % OPS_PER_LAYOUT_STEP,
            }
        } else {
            let offset = op_id - RESTART_BASE;
            let generation = offset >> 20;
            if offset & OPS_PER_RECOVERY == 0 {
                OpSpace::Restore { generation }
            } else {
                OpSpace::Regroup { generation }
            }
        }
    }
}

/// What an op id is for, in words, for timelines: `gradient of step 12`, `fingerprint of
/// step 20`, `restore into generation 2, op 3`.
pub fn describe(op_id: u64) -> String {
    let space = OpSpace::of(op_id);
    let nth = op_id - space.op_id();
    match space {
        OpSpace::Step { step } => format!("gradient of step {step}"),
        OpSpace::Health { step, check } => {
            let what = match check {
                0 | 1 => "fingerprint",
                2 => "re-run",
                3 => "kernel check",
                _ => "kernel vote",
            };
            format!("{what} of step {step}")
        }
        OpSpace::Rollback { rollbacks } => format!("roll-back {rollbacks}'s restore, op {nth}"),
        OpSpace::Restore { generation } => {
            format!("restore into generation {generation}, op {nth}")
        }
        OpSpace::Regroup { generation } => {
            format!("regroup into generation {generation}, op {nth}")
        }
        OpSpace::Layout { step, op } => format!("layout step {step}, op {op}"),
    }
}

/// Asserts (in debug builds) that `ops` ops numbered from `base` stay inside its space.
pub fn debug_assert_room(base: u64, ops: u64) {
    debug_assert!(ops < OPS_PER_RECOVERY, "{ops} ops from one recovery base");
    debug_assert_eq!(
        OpSpace::of(base + ops),
        OpSpace::of(base),
        "op {ops} from {base:#x}"
    );
}

#[cfg(test)]
mod tests {
    use super::OpSpace;

    #[test]
    fn every_space_decodes_to_itself_and_none_overlaps() {
        let mut seen = std::collections::BTreeMap::new();
        for n in [0, 1, 2, 7, 1_000, 9_999_999, (1 << 40) - 1] {
            let spaces = [
                OpSpace::Step { step: n },
                OpSpace::Rollback { rollbacks: n },
                OpSpace::Restore { generation: n },
                OpSpace::Regroup { generation: n },
            ];
            for space in spaces {
                assert_eq!(OpSpace::of(space.op_id()), space);
                assert_eq!(seen.insert(space.op_id(), space), None, "{space:?}");
            }
            // A layout step's id keeps 24 bits for its ops: steps below 2^39.
            for op in [0, 1, super::OPS_PER_LAYOUT_STEP - 1]
                .into_iter()
                .filter(|_| n < 1 << 39)
            {
                let space = OpSpace::Layout { step: n, op };
                assert_eq!(OpSpace::of(space.op_id()), space);
                assert_eq!(seen.insert(space.op_id(), space), None, "{space:?}");
            }
            for check in 0..8 {
                let space = OpSpace::Health { step: n, check };
                assert_eq!(OpSpace::of(space.op_id()), space);
                assert_eq!(seen.insert(space.op_id(), space), None, "{space:?}");
            }
        }
        assert_eq!(super::describe(12), "gradient of step 12");
        let fingerprint = OpSpace::Health { step: 20, check: 0 }.op_id();
        assert_eq!(super::describe(fingerprint), "fingerprint of step 20");
        let restore = OpSpace::Restore { generation: 2 }.op_id();
        assert_eq!(
            super::describe(restore + 3),
            "restore into generation 2, op 3"
        );
        // A recovery's later ops stay in its own space.
        let restore = OpSpace::Restore { generation: 5 }.op_id();
        assert_eq!(
            OpSpace::of(restore + 1000),
            OpSpace::Restore { generation: 5 }
        );
        let regroup = OpSpace::Regroup { generation: 5 }.op_id();
        assert_eq!(OpSpace::of(regroup + 1), OpSpace::Regroup { generation: 5 });
    }
}
