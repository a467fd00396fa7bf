//! The vocabulary of the books a run keeps: which faults were injected, which detector caught
//! each, why model time was lost, and which storage tier a restore read. Typed, so that code
//! matches on variants and a misspelt cause cannot open a new column; serialised by name, so
//! the JSON report reads as it always has.
//!
//! Each enum's variants are declared in the order of their names, so that a `BTreeMap` keyed
//! by them iterates (and serialises) in the same order as one keyed by the names did; a test
//! keeps it so.

use std::collections::BTreeMap;

use trainer_core::integrity::Check;
use trainer_core::named_enum;

named_enum! {
    /// A fault as the report counts it (`faults.injected`).
    pub enum FaultKind {
        /// A link kept a fraction of its bandwidth, perhaps lossy, for a while
        /// (`[[faults.degrade]]`): a fail-slow.
        Degrade = "degrade",
        /// A rank issued another collective than its peers (`[[faults.desync]]`).
        Desync = "desync",
        GpuFailure = "gpu_failure",
        /// A rank stopped issuing collectives, alive (`[[faults.hang]]`).
        Hang = "hang",
        LinkFlap = "link_flap",
        NodeCrash = "node_crash",
        SdcGradient = "sdc_gradient",
        SdcInFlight = "sdc_in_flight",
        SdcParameters = "sdc_parameters",
        SdcReductionKernel = "sdc_reduction_kernel",
        StorageCorruption = "storage_corruption",
        StorageWriteFailure = "storage_write_failure",
        Straggler = "straggler",
    }
}

named_enum! {
    /// What noticed a fault (`faults.detected`): the controller's own monitors, a rank's
    /// error, or one of trainer-core's integrity checks.
    pub enum Detector {
        /// A rank found the job stopping (another detector fired first).
        Aborted = "aborted",
        /// The pre-collective desync check found members whose fingerprints differ.
        DesyncCheck = "desync_check",
        Fingerprint = "fingerprint",
        GradientGuard = "gradient_guard",
        /// The heartbeat monitor missed a dead rank's beats.
        Heartbeat = "heartbeat",
        KernelCheck = "kernel_check",
        LossGuard = "loss_guard",
        PayloadChecksum = "payload_checksum",
        /// A rank's communication failed (a peer died, a transfer was lost).
        PeerError = "peer_error",
        /// The collective progress monitor found a rank that stopped starting collectives
        /// while its peers went on.
        ProgressMonitor = "progress_monitor",
        /// A faulty GPU was taken out of service.
        Quarantine = "quarantine",
        Rerun = "rerun",
        /// Straggler scores flagged a slow rank.
        StragglerScore = "straggler_score",
        /// The collective watchdog timed out a receive.
        Watchdog = "watchdog",
    }
}

impl From<Check> for Detector {
    fn from(check: Check) -> Detector {
        match check {
            Check::PayloadChecksum => Detector::PayloadChecksum,
            Check::GradientGuard => Detector::GradientGuard,
            Check::LossGuard => Detector::LossGuard,
            Check::Fingerprint => Detector::Fingerprint,
            Check::Rerun => Detector::Rerun,
            Check::KernelCheck => Detector::KernelCheck,
        }
    }
}

impl From<faultline_scenario::SdcKind> for FaultKind {
    fn from(kind: faultline_scenario::SdcKind) -> FaultKind {
        use faultline_scenario::SdcKind;
        match kind {
            SdcKind::InFlight => FaultKind::SdcInFlight,
            SdcKind::Gradient => FaultKind::SdcGradient,
            SdcKind::Parameters => FaultKind::SdcParameters,
            SdcKind::ReductionKernel => FaultKind::SdcReductionKernel,
        }
    }
}

named_enum! {
    /// Why model time was lost (`lost_time_ns_by_cause`).
    pub enum LostCause {
        /// Blocking checkpoint snapshots.
        CheckpointStalls = "checkpoint_stalls",
        /// Per-replica: aborting and rebuilding the communicators before a regroup.
        CommRebuild = "comm_rebuild",
        /// The desync check's exchange before each collective.
        DesyncCheck = "desync_check",
        /// From a fault to its detection.
        Detection = "detection",
        /// Cross-replica fingerprint comparisons.
        Fingerprint = "fingerprint",
        /// Transfers waiting out the retry transport's backoff.
        LinkFlapRetry = "link_flap_retry",
        /// Payloads sent again after a checksum mismatch.
        PayloadResend = "payload_resend",
        /// Per-replica: from the regroup to the first step after a node came back.
        Readmission = "readmission",
        /// Steps trained again after a restore.
        RecomputedSteps = "recomputed_steps",
        /// Per-replica: the step in flight at a failure, done again.
        RedoneStep = "redone_step",
        /// Per-replica: from the regroup to the first step without the dropped nodes.
        Regroup = "regroup",
        /// The relaunch after an abort.
        Restart = "restart",
        /// From the relaunch to the first step: reading and verifying a checkpoint.
        Restore = "restore",
        /// Suspect steps re-run to tell a transient fault from a persistent one.
        SdcRerun = "sdc_rerun",
        /// Steps recomputed after an SDC roll-back.
        SdcRollback = "sdc_rollback",
        /// Waiting for a slow rank.
        Straggler = "straggler",
    }
}

named_enum! {
    /// The storage tier a restore read (`restores_by_tier`).
    pub enum TierName {
        Host = "host",
        Peer = "peer",
        Persistent = "persistent",
    }
}

impl From<trainer_core::Tier> for TierName {
    fn from(tier: trainer_core::Tier) -> TierName {
        match tier {
            trainer_core::Tier::Host => TierName::Host,
            trainer_core::Tier::Peer { .. } => TierName::Peer,
            trainer_core::Tier::Persistent => TierName::Persistent,
        }
    }
}

named_enum! {
    /// Rare paths of fault handling, marked where the code takes them (FoundationDB's
    /// `CODE_PROBE`, rust-analyzer's `cov_mark`): a swarm reports the ones none of its seeds
    /// reached, which its tests then cannot have checked.
    pub enum RarePath {
        /// A checkpoint was being persisted when the job stopped, and never committed.
        CheckpointLostInFlight = "checkpoint_lost_in_flight",
        /// A crash struck a node already out of the job, or after its work was done.
        CrashSkipped = "crash_skipped",
        /// The job gave up (restarts spent, or no spare and no fallback).
        JobAbandoned = "job_abandoned",
        /// Per-replica recovery could not regroup and restarted the whole job.
        RegroupFallbackRestart = "regroup_fallback_restart",
        /// A dropped node came back into its replica group.
        ReplicaReadmitted = "replica_readmitted",
        /// A restore found the newest committed checkpoint unusable and fell back.
        RestoreFallback = "restore_fallback",
        /// A GPU with a faulty reduction kernel was taken out of service.
        SdcQuarantine = "sdc_quarantine",
        /// Corruption found too late to mend a step: the job rolled back to a checkpoint.
        SdcRollback = "sdc_rollback",
        /// Hot-spare recovery found every spare in use.
        SparePoolExhausted = "spare_pool_exhausted",
        /// A persistent write failed.
        StorageWriteFailed = "storage_write_failed",
        /// A straggler's node was evicted and replaced.
        StragglerEvicted = "straggler_evicted",
        /// A transfer found no live path and was lost (plain transport, or retries spent).
        TransferLost = "transfer_lost",
        /// A transfer found its route down and took another spine.
        TransferRerouted = "transfer_rerouted",
        /// A transfer found no live path and was retried after a backoff.
        TransferRetried = "transfer_retried",
    }
}

/// How often a run took each rare path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage([u64; RarePath::ALL.len()]);

impl Coverage {
    /// Marks that the run took `path`.
    pub fn reach(&mut self, path: RarePath) {
        self.0[path as usize] += 1;
    }

    /// The paths taken, with how often.
    pub fn reached(&self) -> BTreeMap<RarePath, u64> {
        (RarePath::ALL.iter().zip(self.0))
            .filter(|&(_, count)| count > 0)
            .map(|(&path, count)| (path, count))
            .collect()
    }
}

/// A book with its keys as names: prints (`{:?}`) as the book keyed by strings did.
pub fn by_name<K, V>(book: &BTreeMap<K, V>) -> BTreeMap<&'static str, &V>
where
    K: Copy + Into<&'static str>,
{
    book.iter().map(|(&k, v)| (k.into(), v)).collect()
}

/// Serialises each as its name, in reports and as the keys of the books' maps, and reads it
/// back from its name (calibration cost files carry the books of their runs).
macro_rules! serde_by_name {
    ($($name:ident),+) => {
        $(
            impl serde::Serialize for $name {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_str(self.name())
                }
            }

            impl<'de> serde::Deserialize<'de> for $name {
                fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                    let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                    $name::from_name(&name).ok_or_else(|| {
                        serde::de::Error::unknown_variant(&name, $name::NAMES)
                    })
                }
            }
        )+
    };
}

named_enum! {
    /// A fault that stopped work, as the blast radius books it (`blast_radius`).
    pub enum StopCause {
        GpuFailure = "gpu_failure",
        /// A transfer lost on a flapping link under the plain transport.
        LinkFlap = "link_flap",
        NodeCrash = "node_crash",
        /// A GPU found computing wrong sums, taken out of service.
        SdcQuarantine = "sdc_quarantine",
        /// A straggler's node evicted.
        StragglerEviction = "straggler_eviction",
    }
}

named_enum! {
    /// How the job got going again after a stop (`blast_radius.faults[].recovery`).
    pub enum Resumption {
        /// Hot-spare: the failed nodes swapped for spares, then a restart from a checkpoint.
        HotSpareSwap = "hot_spare_swap",
        /// Per-replica: the survivors regrouped without the failed node.
        Regroup = "regroup",
        /// A full restart from a checkpoint.
        Restart = "restart",
    }
}

serde_by_name!(FaultKind, Detector, LostCause, TierName, RarePath, StopCause, Resumption);

#[cfg(test)]
mod tests {
    use super::*;

    /// Declaration order is name order, so maps keyed by these serialise as maps keyed by the
    /// names did.
    #[test]
    fn every_book_is_declared_in_the_order_of_its_names() {
        for names in [
            FaultKind::NAMES,
            Detector::NAMES,
            LostCause::NAMES,
            TierName::NAMES,
            StopCause::NAMES,
            Resumption::NAMES,
        ] {
            assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
        }
    }

    #[test]
    fn every_integrity_check_and_sdc_kind_has_its_own_name() {
        for &check in Check::ALL {
            assert_eq!(Detector::from(check).name(), check.name());
        }
        for &kind in faultline_scenario::SdcKind::ALL {
            assert_eq!(FaultKind::from(kind).name(), kind.name());
        }
    }
}
