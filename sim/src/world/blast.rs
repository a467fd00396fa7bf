//! The blast radius: for each fault that stopped work (a crash, a straggler's eviction, a GPU
//! quarantined for silent corruption, a transfer lost on a flapping link under the plain
//! transport), which groups it hit and how many GPUs sat idle for how long.
//!
//! Accounting only, from the controller's own control flow: a fault opens a stop, the
//! controller's choice of recovery names it (restart, hot-spare swap, regroup), and the books'
//! rank beginning its first step after the resumption closes it. Until then every GPU of the
//! job is idle (a synchronous job waits for all its members). Under per-replica the failed
//! node's GPUs stay out after the regroup, until the regroup that re-admits them has resumed.
//! Which TP group, pipeline and DP replica a rank belongs to is the layout's arithmetic
//! (`trainer_core::layout`), applied when the report is made; without a layout every rank is
//! a data-parallel replica of its own and a node is the unit a failure takes out.

use std::collections::BTreeMap;

use serde::Serialize;
use trainer_core::layout::Layout;

use super::World;
use crate::books::{Resumption, StopCause};

/// One stop as the controller saw it, before the layout names its groups.
#[derive(Clone, Debug)]
pub(super) struct Stop {
    cause: StopCause,
    at_ns: u64,
    ranks: Vec<usize>,
    /// The node the fault takes out of the job (none for a lost transfer).
    node: Option<usize>,
    /// The job was already stopping or stopped for an earlier fault: no idle time of its own.
    joined: bool,
    recovery: Resumption,
    resumed_ns: Option<u64>,
    /// When the node's GPUs were training again (per-replica: after their re-admission).
    back_ns: Option<u64>,
    /// Per-replica: how long every other GPU waited while the node was re-admitted.
    rejoin_stopped_ns: u64,
}

/// The controller's books of stops, in the order the faults came.
#[derive(Clone, Debug, Default)]
pub(super) struct BlastBooks {
    stops: Vec<Stop>,
    /// When the job last stopped (an abort), for a re-admission's stop.
    pub(super) stopped_at_ns: Option<u64>,
}

impl BlastBooks {
    fn stopped(&self) -> bool {
        self.stops.iter().any(|s| s.resumed_ns.is_none())
    }
}

/// One fault's blast radius (`blast_radius.faults[]`).
#[derive(Clone, Debug, Serialize)]
pub struct BlastFault {
    pub cause: StopCause,
    pub at_ns: u64,
    pub recovery: Resumption,
    /// The ranks the fault hit directly.
    pub ranks: Vec<usize>,
    /// Their nodes.
    pub nodes: Vec<usize>,
    /// The TP groups it stopped, each named by its first rank; empty without a layout.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tp_groups: Vec<usize>,
    /// The pipelines (PP groups) it stalled, each named by its first stage's rank; empty
    /// without a layout.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pipelines: Vec<usize>,
    /// The DP replicas it took out, by DP rank (without a layout, every rank is one).
    pub dp_replicas: Vec<usize>,
    /// GPUs in one DP replica (tp x pp; 1 without a layout).
    pub replica_gpus: usize,
    /// The fault came while the job was already stopped for an earlier one.
    pub joined_earlier_stop: bool,
    /// Every GPU of the job idle, from the fault to the first step after the resumption.
    pub gpus_stopped: usize,
    pub stopped_ns: u64,
    /// Per-replica: the failed node's GPUs, out from the resumption to their re-admission.
    pub gpus_out: usize,
    pub out_ns: u64,
    /// Per-replica: the stop that re-admitted the node, during which the other GPUs (every
    /// GPU but the node's, already counted out) were idle too.
    pub rejoin_stopped_ns: u64,
    pub gpus_idle_seconds: f64,
}

/// The report's `blast_radius`: every fault that stopped work, and the totals.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BlastRadius {
    pub gpus_idle_seconds: f64,
    pub gpus_idle_seconds_by_cause: BTreeMap<StopCause, f64>,
    /// DP replicas taken out, summed over the faults.
    pub replicas_lost: u64,
    /// Pipelines stalled, summed over the faults (0 without a layout).
    pub pipelines_stalled: u64,
    /// TP groups stopped, summed over the faults (0 without a layout).
    pub tp_groups_stopped: u64,
    pub faults: Vec<BlastFault>,
}

impl BlastRadius {
    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }
}

/// The groups `ranks` belong to: TP groups and pipelines by first rank, DP replicas by DP rank.
fn groups_of(ranks: &[usize], layout: Option<&Layout>) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let Some(layout) = layout else {
        return (Vec::new(), Vec::new(), ranks.to_vec());
    };
    let sorted = |mut v: Vec<usize>| {
        v.sort_unstable();
        v.dedup();
        v
    };
    let tp = ranks.iter().map(|&r| layout.tp_group(r).member(0));
    let pp = ranks.iter().map(|&r| layout.pp_group(r).member(0));
    let dp = ranks.iter().map(|&r| layout.coords(r).dp_rank);
    (
        sorted(tp.collect()),
        sorted(pp.collect()),
        sorted(dp.collect()),
    )
}

impl World {
    /// A fault that stops work struck `ranks` (taking `node` out of the job, if any).
    pub(super) fn blast_fault(
        &mut self,
        cause: StopCause,
        mut ranks: Vec<usize>,
        node: Option<usize>,
    ) {
        ranks.sort_unstable();
        ranks.dedup();
        let now = self.clock.now_ns();
        let Some(control) = self.control.as_mut() else {
            return;
        };
        let joined = control.phase != super::control::Phase::Running || control.blast.stopped();
        // A flapping link loses many transfers: the first stops the job, the rest find it
        // stopped.
        if joined && cause == StopCause::LinkFlap {
            return;
        }
        control.blast.stops.push(Stop {
            cause,
            at_ns: now,
            ranks,
            node,
            joined,
            recovery: Resumption::Restart,
            resumed_ns: None,
            back_ns: None,
            rejoin_stopped_ns: 0,
        });
    }

    /// The controller chose how the stopped job resumes.
    pub(super) fn blast_recovery(&mut self, recovery: Resumption) {
        if let Some(control) = self.control.as_mut() {
            for stop in control.blast.stops.iter_mut() {
                if stop.resumed_ns.is_none() {
                    stop.recovery = recovery;
                }
            }
        }
    }

    /// The books' rank began its first step after a resumption: the stops close, and nodes
    /// no longer dropped are back.
    pub(super) fn blast_resumed(&mut self) {
        let now = self.clock.now_ns();
        let Some(control) = self.control.as_mut() else {
            return;
        };
        let books = &mut control.blast;
        // A stop for a fault of its own is that fault's, not a re-admission's.
        let fresh = books.stops.iter().any(|s| s.resumed_ns.is_none());
        let mut rejoin_stop = books.stopped_at_ns.take().filter(|_| !fresh);
        for stop in books.stops.iter_mut() {
            let resumed = *stop.resumed_ns.get_or_insert(now);
            let out = stop.node.is_some_and(|n| control.replicas.is_dropped(n));
            if stop.back_ns.is_none() && !out {
                stop.back_ns = Some(now);
                // Back by a re-admission: the stop for it is this fault's too, once.
                if let Some(at) = rejoin_stop.filter(|&at| at > resumed) {
                    stop.rejoin_stopped_ns = now - at;
                    rejoin_stop = None;
                }
            }
        }
    }

    /// The blast radius so far, its groups named by `layout` (none: plain data parallelism).
    pub fn blast_radius(&self, layout: Option<&Layout>) -> BlastRadius {
        let mut radius = BlastRadius::default();
        let Some(control) = self.control.as_ref() else {
            return radius;
        };
        let now = self.clock.now_ns();
        let world_gpus = self.ranks.len();
        for stop in &control.blast.stops {
            let fault = self.blast_fault_report(stop, layout, world_gpus, now);
            radius.gpus_idle_seconds += fault.gpus_idle_seconds;
            *radius
                .gpus_idle_seconds_by_cause
                .entry(fault.cause)
                .or_default() += fault.gpus_idle_seconds;
            radius.replicas_lost += fault.dp_replicas.len() as u64;
            radius.pipelines_stalled += fault.pipelines.len() as u64;
            radius.tp_groups_stopped += fault.tp_groups.len() as u64;
            radius.faults.push(fault);
        }
        radius
    }

    fn blast_fault_report(
        &self,
        stop: &Stop,
        layout: Option<&Layout>,
        world_gpus: usize,
        now: u64,
    ) -> BlastFault {
        let resumed = stop.resumed_ns.unwrap_or(now);
        let back = stop.back_ns.unwrap_or(now).max(resumed);
        let stopped_ns = if stop.joined { 0 } else { resumed - stop.at_ns };
        let out_ns = back - resumed;
        let gpus_out = stop
            .node
            .map_or(0, |node| self.placement.node_group(node).count());
        let others = world_gpus.saturating_sub(gpus_out);
        let gpu_ns = world_gpus as u128 * stopped_ns as u128
            + gpus_out as u128 * out_ns as u128
            + others as u128 * stop.rejoin_stopped_ns as u128;
        let (tp_groups, pipelines, dp_replicas) = groups_of(&stop.ranks, layout);
        let mut nodes: Vec<usize> = stop
            .ranks
            .iter()
            .map(|&r| self.placement.node_of(r))
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        BlastFault {
            cause: stop.cause,
            at_ns: stop.at_ns,
            recovery: stop.recovery,
            ranks: stop.ranks.clone(),
            nodes,
            tp_groups,
            pipelines,
            dp_replicas,
            replica_gpus: layout.map_or(1, |l| l.tp * l.pp),
            joined_earlier_stop: stop.joined,
            gpus_stopped: if stop.joined { 0 } else { world_gpus },
            stopped_ns,
            gpus_out: if out_ns > 0 { gpus_out } else { 0 },
            out_ns,
            rejoin_stopped_ns: stop.rejoin_stopped_ns,
            gpus_idle_seconds: gpu_ns as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainer_core::layout::RankOrder;

    /// A node of 8 GPUs under tp 8 x pp 16 is one TP group of one stage of one DP replica:
    /// its 8 pipelines (one per TP rank) stall, and the replica it takes out holds
    /// pp x tp = 128 GPUs, on 16 nodes.
    #[test]
    fn a_node_under_tp8_pp16_is_one_tp_group_of_one_128_gpu_replica() {
        for order in [RankOrder::TpDpPp, RankOrder::TpPpDp] {
            let layout = Layout::new(8, 16, 4, order);
            let node = 5;
            let ranks: Vec<usize> = (node * 8..node * 8 + 8).collect();
            let (tp, pp, dp) = groups_of(&ranks, Some(&layout));
            assert_eq!(tp, vec![node * 8], "{order}");
            assert_eq!(pp.len(), 8, "{order}");
            assert_eq!(dp.len(), 1, "{order}");
            assert_eq!(layout.tp * layout.pp, 128);
            let replica = dp[0];
            let members = (0..layout.world_size())
                .filter(|&r| layout.coords(r).dp_rank == replica)
                .count();
            assert_eq!(members, 128, "{order}");
        }
    }
}
