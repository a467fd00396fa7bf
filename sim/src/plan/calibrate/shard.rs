//! A calibration fanned out: its runs (the steady run, then one crash run per policy) are the
//! items a shard covers (`calibrate --shard i/n`: one run per shard with n = runs), each
//! shard file holds the [`Figures`] of its runs, and `merge` unites them and builds the cost
//! file the unsharded calibration writes, from the same figures by the same function.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Plan;
use crate::books::{Detector, FaultKind, LostCause, TierName};
use crate::fanout::{Assignment, Cover, Holding};
use crate::run::RunReport;

pub const CALIBRATE_SHARD_FORMAT: &str = "faultline-calibrate-shard/2";

/// The most runs a calibration has: the steady run, three crash runs, two hang runs and the
/// degrade run.
const MAX_RUNS: u64 = 7;

/// What the cost file takes from one run's report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub seed: u64,
    pub executor: String,
    pub gpus: usize,
    pub gpus_per_node: usize,
    pub steps_requested: u64,
    pub steps_completed: u64,
    pub model_time_ns: u64,
    pub checkpoint_snapshots: u64,
    pub checkpoints_committed: u64,
    pub checkpoint_persist_ns: u64,
    pub recoveries: u64,
    pub recovery_policy: String,
    pub faults: FaultFigures,
    pub restores_by_tier: BTreeMap<TierName, u64>,
    pub lost_time_ns_by_cause: BTreeMap<LostCause, u64>,
    pub replicas_agree: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultFigures {
    pub injected: BTreeMap<FaultKind, u64>,
    pub detected: BTreeMap<Detector, u64>,
}

impl From<&RunReport> for Figures {
    fn from(r: &RunReport) -> Figures {
        Figures {
            seed: r.seed,
            executor: r.executor.to_string(),
            gpus: r.gpus,
            gpus_per_node: r.gpus_per_node,
            steps_requested: r.steps_requested,
            steps_completed: r.steps_completed,
            model_time_ns: r.model_time_ns,
            checkpoint_snapshots: r.checkpoint_snapshots,
            checkpoints_committed: r.checkpoints_committed,
            checkpoint_persist_ns: r.checkpoint_persist_ns,
            recoveries: r.recoveries,
            recovery_policy: r.recovery_policy.to_string(),
            faults: FaultFigures {
                injected: r.faults.injected.clone(),
                detected: r.faults.detected.clone(),
            },
            restores_by_tier: r.restores_by_tier.clone(),
            lost_time_ns_by_cause: r.lost_time_ns_by_cause.clone(),
            replicas_agree: r.replicas_agree,
        }
    }
}

/// How a calibration was asked for: what `merge` needs to load its runs again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub scenario: String,
    /// The planner file as given; `merge` reads it again (and checks its digest).
    pub path: String,
    pub sets: Vec<String>,
    pub steps: u64,
    pub all_policies: bool,
    /// A digest of the file's text and the request.
    pub digest: String,
    /// The calibration's runs: the steady one, the crash runs, the hang runs, the degrade run.
    pub runs: u64,
}

impl Request {
    pub fn new(
        plan: &Plan,
        path: &str,
        text: &str,
        sets: &[String],
        steps: u64,
        all: bool,
    ) -> Request {
        let mut digest = trainer_core::digest::Digest::new();
        digest.bytes(text.as_bytes());
        digest.bytes(format!("\n{sets:?}\n{steps}\n{all}\n").as_bytes());
        Request {
            scenario: plan.name.clone(),
            path: path.to_string(),
            sets: sets.to_vec(),
            steps,
            all_policies: all,
            digest: format!("{:016x}", digest.finish()),
            runs: plan.runs(),
        }
    }
}

/// One run's figures in a shard file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunFigures {
    /// The run's number (see `Plan::runs`): 0 is the steady run.
    pub run: u64,
    pub figures: Figures,
}

/// What `calibrate --shard` writes and `merge` reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CalibrateShard {
    pub format: String,
    pub faultline: String,
    pub calibration: Request,
    /// The runs it holds (by number, see `Plan::runs`), and the split.
    pub holding: Holding,
    pub runs: Vec<RunFigures>,
}

impl CalibrateShard {
    pub fn of_run(request: Request, shard: Assignment, runs: Vec<RunFigures>) -> CalibrateShard {
        CalibrateShard {
            format: CALIBRATE_SHARD_FORMAT.to_string(),
            faultline: env!("CARGO_PKG_VERSION").to_string(),
            calibration: request,
            holding: Holding::of_shard(shard, runs.iter().map(|r| r.run)),
            runs,
        }
    }

    pub fn missing(&self) -> Cover {
        self.holding.covered.missing(self.calibration.runs)
    }

    /// Every run's figures, in order, when every run is there.
    pub fn figures(&self) -> Option<Vec<Figures>> {
        if !self.missing().is_empty() {
            return None;
        }
        Some(self.runs.iter().map(|r| r.figures.clone()).collect())
    }
}

fn check(name: &str, shard: &CalibrateShard) -> Result<(), String> {
    if shard.format != CALIBRATE_SHARD_FORMAT {
        return Err(format!(
            "{name}: format {:?}, expected {CALIBRATE_SHARD_FORMAT:?}",
            shard.format
        ));
    }
    let runs = shard.calibration.runs;
    let held = Cover::of(shard.runs.iter().map(|r| r.run));
    let valid = (1..=MAX_RUNS).contains(&runs)
        && shard.holding.is_valid(runs, &held)
        && held.len() == shard.runs.len() as u64;
    if !valid {
        return Err(format!(
            "{name}: its runs are not the ones it says it covers of a calibration's"
        ));
    }
    Ok(())
}

/// Unites calibration shard files of one calibration; a run held twice only with the same
/// figures. The result is a shard file again.
pub fn merge(files: Vec<(String, CalibrateShard)>) -> Result<CalibrateShard, String> {
    let mut files = files.into_iter();
    let (first_name, first) = files.next().ok_or("no shard files given")?;
    let mut merged = CalibrateShard {
        runs: Vec::new(),
        ..first.clone()
    };
    let mut runs: BTreeMap<u64, Figures> = BTreeMap::new();
    for (name, shard) in std::iter::once((first_name.clone(), first)).chain(files) {
        check(&name, &shard)?;
        if shard.calibration != merged.calibration {
            return Err(format!(
                "{name} is not a shard of the same calibration as {first_name} (another \
                 scenario, --set, --steps or --all-policies)"
            ));
        }
        merged.holding.unite(&shard.holding);
        for r in shard.runs {
            if runs.get(&r.run).is_some_and(|held| *held != r.figures) {
                return Err(format!(
                    "{name}: run {} has other figures than in an earlier file",
                    r.run
                ));
            }
            runs.insert(r.run, r.figures);
        }
    }
    merged.runs = (runs.into_iter())
        .map(|(run, figures)| RunFigures { run, figures })
        .collect();
    Ok(merged)
}
