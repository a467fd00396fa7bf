//! The checkpoint-atomicity observer: the storage model watches manifests land and restores
//! read, and records every read of a checkpoint that was not atomically committed. It is an
//! observation for the invariant checks (`swarm::invariants`), never an input to the trainer.
//!
//! A commit is atomic when, at the instant its manifest lands in the persistent store, every
//! shard the manifest names (one per rank of its world) is already durable there. A read
//! violates atomicity when it reads a shard of a step with no committed manifest, or the
//! manifest or a shard of a step whose commit was not atomic.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use trainer_core::checkpoint::{decode_manifest, manifest_step, shard_name};

/// At most this many violations are described; all are counted.
const DESCRIBED: usize = 4;

/// One read of a checkpoint that was not atomically committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AtomicityViolation {
    pub at_ns: u64,
    pub step: u64,
    /// What was read, and what was wrong with it.
    pub what: String,
}

#[derive(Clone, Debug, Default)]
pub struct Audit {
    /// Steps whose manifest landed while some shard was not durable, and the first such shard.
    premature_commits: BTreeMap<u64, String>,
    /// Steps whose manifest has landed at least once.
    committed: BTreeSet<u64>,
    pub violation_count: u64,
    pub violations: Vec<AtomicityViolation>,
}

/// The step of a shard's name (`ckpt/{step:012}/shard-{rank:06}`), if `name` is one.
fn shard_step(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("ckpt/")?;
    let (step, shard) = rest.split_once('/')?;
    shard
        .starts_with("shard-")
        .then(|| step.parse().ok())
        .flatten()
}

impl Audit {
    /// A manifest landed in the persistent store; `durable(name)` says whether a shard is
    /// there now.
    pub fn manifest_landed(&mut self, name: &str, bytes: &[u8], durable: impl Fn(&str) -> bool) {
        let Some(step) = manifest_step(name) else {
            return;
        };
        self.committed.insert(step);
        let Ok(world) = decode_manifest(bytes, step) else {
            return;
        };
        if let Some(missing) = (0..world)
            .map(|rank| shard_name(step, rank))
            .find(|shard| !durable(shard))
        {
            self.premature_commits.entry(step).or_insert(missing);
        }
    }

    /// A rank read `name` from the persistent store or a node's memory at `now_ns`.
    pub fn read(&mut self, name: &str, now_ns: u64) {
        let (step, is_shard) = match (manifest_step(name), shard_step(name)) {
            (Some(step), _) => (step, false),
            (None, Some(step)) => (step, true),
            (None, None) => return,
        };
        let what = if let Some(missing) = self.premature_commits.get(&step) {
            format!(
                "read {name}, but manifests/{step:012} was committed while {missing} was not \
                 durable"
            )
        } else if is_shard && !self.committed.contains(&step) {
            format!("read {name}, but no manifest of step {step} was ever committed")
        } else {
            return;
        };
        self.violation_count += 1;
        if self.violations.len() < DESCRIBED {
            self.violations.push(AtomicityViolation {
                at_ns: now_ns,
                step,
                what,
            });
        }
    }
}
