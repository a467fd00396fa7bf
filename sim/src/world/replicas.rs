//! The per-replica recovery policy, the controller's side. Once every rank has stopped after a
//! failure, the failed nodes are dropped from the replica group instead of restarting the job:
//! the survivors resume in a new generation with no restore (trainer-core's `regroup` adopts
//! one survivor's state) and train with fewer replicas. After `replica_rejoin_time` a dropped
//! node, replaced, is re-admitted: at the next step boundary the job stops once more and
//! resumes with the node back in the group. Fewer than `min_replicas` live nodes: a full
//! restart, which brings every node back.
//!
//! The replica unit is the node (a GPU failure drops its whole node): the hierarchical
//! collective keeps whole node groups, and a node's GPUs share the host memory that a crash
//! loses.

use super::digest_tag::DigestTag;
use crate::books::{LostCause, RarePath};
use std::collections::BTreeMap;

use serde::Serialize;
use trainer_core::Group;

use super::{EventKind, Wait, World};
use crate::trace::{CommOp, Record};
use faultline_scenario::config::CommRebuild;

/// How often a re-admission that found a recovery under way tries again.
const REJOIN_RETRY_NS: u64 = 1_000_000;

/// What the report says about per-replica recovery.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct PerReplicaReport {
    /// Nodes dropped from the replica group.
    pub drops: u64,
    /// Nodes re-admitted after their rejoin time.
    pub readmissions: u64,
    /// Times the job resumed with a changed group and no restore.
    pub regroups: u64,
    /// Steps the books' rank completed while some node was out.
    pub degraded_steps: u64,
    /// The fewest ranks the group ever had.
    pub min_members: usize,
    /// Failures that would have left fewer than `min_replicas` nodes: full restarts.
    pub fallback_restarts: u64,
    /// Nodes still out when the job finished.
    pub dropped_at_end: usize,
}

pub(super) struct Replicas {
    /// Dropped nodes, and when each may rejoin.
    dropped: BTreeMap<usize, u64>,
    /// Re-admitted nodes whose ranks have not yet adopted a member's state: those of the
    /// latest regroup, and of earlier ones that a failure cut short.
    pub(super) rejoined: Vec<usize>,
    /// The books' rank began a step after the latest regroup: every member adopted the state
    /// (the regroup ends with a barrier), so `rejoined` may be forgotten at the next one.
    regroup_completed: bool,
    /// The ranks training now.
    pub(super) group: Group,
    /// The resumption scheduled is a regroup, not a restart.
    regroup_pending: bool,
    /// What restart orders say: the latest resumption was a regroup.
    pub(super) last_was_regroup: bool,
    /// Every live rank finished: the dropped ranks waiting to rejoin are let go.
    pub(super) released: bool,
    /// A dropped node's rejoin time passed: stop at the books' rank's next step boundary.
    rejoin_at_next_step: bool,
    pub(super) report: PerReplicaReport,
}

impl Replicas {
    pub(super) fn new(world: Group) -> Replicas {
        Replicas {
            dropped: BTreeMap::new(),
            rejoined: Vec::new(),
            regroup_completed: true,
            report: PerReplicaReport {
                min_members: world.count(),
                ..PerReplicaReport::default()
            },
            group: world,
            regroup_pending: false,
            last_was_regroup: false,
            released: false,
            rejoin_at_next_step: false,
        }
    }

    pub(super) fn is_dropped(&self, node: usize) -> bool {
        self.dropped.contains_key(&node)
    }

    pub(super) fn report_at_end(&self) -> PerReplicaReport {
        PerReplicaReport {
            dropped_at_end: self.dropped.len(),
            ..self.report.clone()
        }
    }
}

/// A regroup decided: the nodes that failed (dropped now), the dropped nodes due back
/// (re-admitted now), and every node rejoining without state.
struct Regroup {
    failed: Vec<usize>,
    due: Vec<usize>,
    rejoining: Vec<usize>,
}

impl World {
    fn per_replica_policy(&self) -> bool {
        self.control
            .as_ref()
            .is_some_and(|c| c.config.policy == super::RecoveryPolicy::PerReplica)
    }

    /// Per-replica, once every rank has stopped: drops the failed nodes, re-admits those whose
    /// rejoin time has come, and schedules the regroup. Returns false when too few nodes would
    /// be left (or the policy is another): the caller restarts the job in full.
    pub(super) fn try_schedule_regroup(&mut self) -> bool {
        if !self.per_replica_policy() {
            return false;
        }
        match self.regroup_plan() {
            Some(plan) => {
                self.schedule_regroup(plan);
                true
            }
            None => false,
        }
    }

    /// Which nodes the regroup drops and re-admits, or `None` (a full restart instead) when
    /// too few nodes would be left, or none of them would hold the state to hand over.
    fn regroup_plan(&mut self) -> Option<Regroup> {
        let now = self.clock.now_ns();
        let node_count = self.placement.node_count();
        let control = self.control.as_mut().expect("a controller");
        let failed: Vec<usize> = control.failed_nodes.iter().copied().collect();
        let replicas = &mut control.replicas;
        let due: Vec<usize> = replicas
            .dropped
            .iter()
            .filter(|&(node, &at)| at <= now && !failed.contains(node))
            .map(|(&node, _)| node)
            .collect();
        let newly_failed = failed
            .iter()
            .filter(|node| !replicas.dropped.contains_key(node))
            .count();
        let out_after = replicas.dropped.len() - due.len() + newly_failed;
        // Rejoining nodes hold no state: some member must, to hand it over.
        let mut rejoining: Vec<usize> = if replicas.regroup_completed {
            Vec::new()
        } else {
            replicas.rejoined.clone()
        };
        rejoining.retain(|node| !failed.contains(node));
        rejoining.extend(&due);
        let holders = node_count - out_after - rejoining.len();
        if holders == 0 || node_count - out_after < control.config.min_replicas {
            // Every node comes back with the restart, replaced where it failed.
            replicas.report.fallback_restarts += 1;
            self.coverage.reach(RarePath::RegroupFallbackRestart);
            replicas.dropped.clear();
            return None;
        }
        Some(Regroup {
            failed,
            due,
            rejoining,
        })
    }

    /// Drops the failed nodes until their rejoin time, re-admits the due ones, and restarts
    /// the survivors at once in a new generation.
    fn schedule_regroup(&mut self, plan: Regroup) {
        let Regroup {
            failed,
            due,
            rejoining,
        } = plan;
        let now = self.clock.now_ns();
        let control = self.control.as_mut().expect("a controller");
        let replicas = &mut control.replicas;
        let rejoin_at_ns = now + control.config.replica_rejoin_time_ns;
        let mut dropped_now = Vec::new();
        for &node in &failed {
            if replicas.dropped.insert(node, rejoin_at_ns).is_none() {
                replicas.report.drops += 1;
                dropped_now.push(node);
            }
        }
        for node in &due {
            replicas.dropped.remove(node);
            replicas.report.readmissions += 1;
            self.coverage.reach(RarePath::ReplicaReadmitted);
        }
        replicas.rejoined = rejoining;
        replicas.regroup_completed = false;
        replicas.regroup_pending = true;
        replicas.rejoin_at_next_step = false;
        control.failed_nodes.clear();
        // A failure that took no node (a transfer lost on a flapping link under the plain
        // transport) regroups the same members: the step in flight is redone, nothing restarts.
        control.resume_cause = if failed.is_empty() && !due.is_empty() {
            LostCause::Readmission
        } else {
            LostCause::Regroup
        };
        let generation = control.generation + 1;
        self.blast_recovery(crate::books::Resumption::Regroup);
        // An error stopped the job unless it stopped only to re-admit nodes.
        let delay_ns = self.rebuild_communicators(!failed.is_empty() || due.is_empty());
        for node in dropped_now {
            self.schedule(rejoin_at_ns, EventKind::ReplicaRejoin { node: node as u32 });
            self.digest.u64(DigestTag::ReplicaDropped.word(node as u64));
            self.record(None, Record::ReplicaDropped { node, rejoin_at_ns });
        }
        for node in due {
            self.digest
                .u64(DigestTag::ReplicaReadmitted.word(node as u64));
            self.record(None, Record::ReplicaReadmitted { node });
        }
        self.schedule(now + delay_ns, EventKind::Restart);
        self.record(
            None,
            Record::RestartScheduled {
                generation,
                delay_ns,
                spares: 0,
            },
        );
    }

    /// The survivors' communicators for the group the regroup leaves, modelled on NCCL's
    /// recovery path: after an error (a node failed, or a transfer was lost with no node out)
    /// every survivor aborts its communicators and shrinks them in abort mode; a re-admission
    /// alone grows them with no abort; `reinit` builds new ones instead. Returns what it
    /// costs, booked as `comm_rebuild` and recorded.
    fn rebuild_communicators(&mut self, after_error: bool) -> u64 {
        let control = self.control.as_mut().expect("a controller");
        let replicas = &control.replicas;
        let dropped: Vec<usize> = replicas.dropped.keys().copied().collect();
        let members = self.placement.world_without_nodes(&dropped).count();
        let comm = control.config.comm;
        let op = match (comm.rebuild, after_error) {
            (CommRebuild::Reinit, _) => CommOp::Reinit,
            (CommRebuild::Shrink, true) => CommOp::Shrink,
            (CommRebuild::Shrink, false) => CommOp::Grow,
        };
        let cost_ns = comm.rebuild_ns(members, after_error);
        control.lose(LostCause::CommRebuild, cost_ns);
        self.record(
            None,
            Record::CommRebuild {
                op,
                aborted: after_error,
                members,
                cost_ns,
            },
        );
        cost_ns
    }

    /// Per-replica, when every live rank has finished while dropped ranks wait to rejoin:
    /// lets them go (they end with the job). Returns whether it did.
    pub(super) fn try_release_dropped(&mut self) -> bool {
        if !self.per_replica_policy() {
            return false;
        }
        let control = self.control.as_mut().expect("a controller");
        if control.phase != super::control::Phase::Running || control.replicas.released {
            return false;
        }
        control.replicas.released = true;
        self.schedule(self.clock.now_ns(), EventKind::Restart);
        true
    }

    /// The scheduled resumption, when it is a regroup or a release; returns false for a
    /// restart, which the caller performs.
    pub(super) fn fire_regroup(&mut self) -> bool {
        let Some(control) = self.control.as_mut() else {
            return false;
        };
        if control.replicas.released {
            for rank in 0..self.ranks.len() {
                if self.ranks[rank].wait() == Wait::Restart {
                    self.wake(rank);
                }
            }
            return true;
        }
        let replicas = &mut control.replicas;
        if !std::mem::take(&mut replicas.regroup_pending) {
            replicas.last_was_regroup = false;
            replicas.rejoined.clear();
            replicas.regroup_completed = true;
            replicas.group = self.placement.world();
            control.observer = 0;
            return false;
        }
        replicas.last_was_regroup = true;
        replicas.report.regroups += 1;
        let dropped: Vec<usize> = replicas.dropped.keys().copied().collect();
        replicas.group = self.placement.world_without_nodes(&dropped);
        let group = replicas.group.clone();
        let members = group.count();
        replicas.report.min_members = replicas.report.min_members.min(members);
        control.observer = group.member(0);
        let joined = replicas.rejoined.len();
        // The dropped nodes' ranks, all those outside the group, stay in `await_restart` until
        // they rejoin.
        control.awaiting = self.ranks.len() - members;
        self.digest.u64(DigestTag::Regroup.word(members as u64));
        self.record(
            None,
            Record::Regroup {
                members,
                dropped: dropped.len(),
                joined,
            },
        );
        for rank in 0..self.ranks.len() {
            self.clear_mailbox(rank);
            if group.index_of(rank).is_some() {
                self.resume_rank(rank);
            }
        }
        true
    }

    /// A dropped node's rejoin time came: re-admit it at the next step boundary.
    pub(super) fn fire_replica_rejoin(&mut self, node: u32) {
        if self.finished > 0 {
            return;
        }
        let now = self.clock.now_ns();
        let control = self.control.as_mut().expect("a controller");
        if !control.replicas.is_dropped(node as usize) {
            return; // a full restart brought it back already
        }
        if control.phase != super::control::Phase::Running {
            // A recovery is under way; its regroup may already be scheduled without this node.
            self.schedule(now + REJOIN_RETRY_NS, EventKind::ReplicaRejoin { node });
            return;
        }
        control.replicas.rejoin_at_next_step = true;
    }

    /// The books' rank begins a step: if a node is due to rejoin, the job stops here.
    pub(super) fn replicas_on_step_begin(&mut self) {
        let control = self.control.as_mut().expect("a controller");
        control.replicas.regroup_completed = true;
        if !std::mem::take(&mut control.replicas.rejoin_at_next_step) {
            return;
        }
        self.begin_abort();
    }
}
