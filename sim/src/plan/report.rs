//! Per-seed results into reports: means and 95% confidence intervals per sweep point, the best
//! point, and the shard files that `faultline merge` combines. Every sum runs in seed order,
//! so a merged set of shards gives the same bits as one unsharded run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

use super::analytic;
use super::config::{PlanConfig, COUNTED_KINDS};
use super::model::{LostTime, SeedResult};
use crate::fanout::{Cover, Holding};

/// Version 2 added `plan_digest`; version 3 `split`, `shards` and `covered` (the seed
/// indices a file holds), so that merging is a set union over any files of one plan.
pub const SHARD_FORMAT: &str = "faultline-plan-shard/3";

/// One sweep point as configured, with the closed forms for its inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointInfo {
    /// The swept keys and the values this point gives them, in sweep order.
    pub settings: Vec<(String, String)>,
    pub policy: String,
    pub checkpoint_interval_s: f64,
    pub checkpoint_write_time_s: f64,
    pub restart_time_s: f64,
    /// Failure-weighted mean detection time.
    pub detection_time_s: f64,
    /// The job's mean time between failures, all kinds together; 0 when nothing fails.
    pub job_mtbf_s: f64,
    pub young_interval_s: f64,
    pub daly_interval_s: f64,
    /// Daly's T_s / T_w at this point's interval, with R = detection + the policy's recovery.
    pub daly_ettr: f64,
    pub kokolis_ettr: f64,
    /// Data-parallel replicas and the GPUs in each (from `[parallelism]`,
    /// `recovery.replica_gpus` or `recovery.replicas`).
    #[serde(default)]
    pub replicas: usize,
    #[serde(default)]
    pub replica_gpus: usize,
    /// GPUs a failure idles beyond the stall: one replica under per-replica, all otherwise.
    #[serde(default)]
    pub gpus_idled_per_failure: usize,
}

impl PointInfo {
    pub fn new(settings: Vec<(String, String)>, cfg: &PlanConfig) -> PointInfo {
        let rate = cfg.job_failures_per_s();
        let mtbf_s = if rate > 0.0 {
            1.0 / rate
        } else {
            f64::INFINITY
        };
        let delta = cfg.checkpoint_write_time_s;
        let tau = cfg.checkpoint_interval_s;
        let detection_time_s = cfg.mean_detection_s();
        // The closed forms know one restart cost: the policy's own recovery time.
        let restart = detection_time_s + cfg.recovery.policy_recovery_s();
        let finite = |x: f64| if x.is_finite() { x } else { 0.0 };
        PointInfo {
            settings,
            policy: cfg.recovery.policy.name().to_string(),
            checkpoint_interval_s: tau,
            checkpoint_write_time_s: delta,
            restart_time_s: cfg.recovery.restart_time_s,
            detection_time_s,
            job_mtbf_s: finite(mtbf_s),
            young_interval_s: finite(analytic::young_interval_s(delta, mtbf_s)),
            daly_interval_s: finite(analytic::daly_interval_s(delta, mtbf_s)),
            daly_ettr: if rate > 0.0 {
                analytic::daly_ettr(tau, delta, restart, mtbf_s)
            } else {
                tau / (tau + delta)
            },
            kokolis_ettr: analytic::kokolis_ettr(rate, restart, tau, delta),
            replicas: cfg.recovery.replicas,
            replica_gpus: cfg.recovery.replica_gpus,
            gpus_idled_per_failure: cfg.recovery.gpus_idled_per_failure(cfg.gpus),
        }
    }
}

/// What `plan --shard i/n --out FILE` writes and `merge` reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    pub format: String,
    pub scenario: String,
    /// [`super::plan_digest`] of the points run: two files of one name, or one file with
    /// other overrides, give other digests. Absent in older formats, which are refused.
    #[serde(default)]
    pub plan_digest: String,
    pub root_seed: u64,
    pub seeds: usize,
    pub gpus: usize,
    pub nodes: usize,
    pub horizon_s: f64,
    /// The seed indices whose results it holds at every point, and the split.
    pub holding: Holding,
    pub points: Vec<ShardPoint>,
}

impl Shard {
    /// The seed indices of `0..seeds` no file held.
    pub fn missing(&self) -> Cover {
        self.holding.covered.missing(self.seeds as u64)
    }

    /// How the file is named in messages: its shards, or the seeds it covers.
    fn label(&self) -> String {
        match &self.holding.split {
            Some(split) if self.holding.shards.len() == 1 => {
                format!("shard {}/{}", split.index, split.count)
            }
            _ => format!(
                "the file of seeds {}",
                crate::fanout::compact(self.holding.covered.items().take(20))
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardPoint {
    pub info: PointInfo,
    /// This shard's seeds, in seed order.
    pub results: Vec<SeedResult>,
}

/// Every shard is of this faultline's format and of the same plan as `first`: the same
/// scenario content, seeds, scale, horizon, split and sweep.
fn check_same_plan(shards: &[Shard], first: &Shard) -> Result<(), String> {
    for s in shards {
        if s.format != SHARD_FORMAT {
            return Err(format!(
                "{}: format {:?}, expected {SHARD_FORMAT:?} (write it again with this \
                 faultline)",
                s.label(),
                s.format
            ));
        }
        if s.plan_digest != first.plan_digest {
            return Err(format!(
                "{} and {} are not from the same plan: the scenario content \
                 differs (plan digest {} and {}: another file of the same name, or other \
                 --set, --sweep, --seeds or --costs)",
                first.label(),
                s.label(),
                first.plan_digest,
                s.plan_digest
            ));
        }
        let same = s.scenario == first.scenario
            && s.root_seed == first.root_seed
            && s.seeds == first.seeds
            && s.gpus == first.gpus
            && s.horizon_s == first.horizon_s
            && s.points.len() == first.points.len()
            && s.points
                .iter()
                .zip(&first.points)
                .all(|(a, b)| a.info == b.info);
        if !same {
            return Err(format!(
                "{} is not from the same plan as {} (scenario, seed, seeds, scale, horizon or \
                 sweep differ)",
                s.label(),
                first.label()
            ));
        }
    }
    Ok(())
}

/// Refuses shards whose per-seed results a planner could not have written: a point without
/// results or a seed whose counts by kind do not cover every kind.
fn check_results(shards: &[Shard]) -> Result<(), String> {
    for s in shards {
        if s.points.is_empty() {
            return Err(format!("{} has no points", s.label()));
        }
        for (p, point) in s.points.iter().enumerate() {
            let short = point
                .results
                .iter()
                .find(|r| r.interruptions_by_kind.len() != COUNTED_KINDS.len());
            let held = Cover::of(point.results.iter().map(|r| r.seed_idx));
            if !s.holding.is_valid(s.seeds as u64, &held)
                || held.len() != point.results.len() as u64
            {
                return Err(format!(
                    "{}: its split, or the seeds point {p} holds, are not those it says it \
                     covers of 0 to {}",
                    s.label(),
                    s.seeds
                ));
            }
            if let Some(r) = short {
                return Err(format!(
                    "{}: point {p}, seed {}: {} counts by kind, expected {}",
                    s.label(),
                    r.seed_idx,
                    r.interruptions_by_kind.len(),
                    COUNTED_KINDS.len()
                ));
            }
        }
    }
    Ok(())
}

/// Unites shard files of one plan: any shards, merged files or retries with another split,
/// a seed held twice only with the same results. The result is a shard file again (merging is
/// associative); the seeds no file held are [`Shard::missing`].
pub fn merge(shards: Vec<Shard>) -> Result<Shard, String> {
    let first = shards.first().ok_or("no shard files given")?.clone();
    check_same_plan(&shards, &first)?;
    check_results(&shards)?;
    let mut by_seed: Vec<BTreeMap<u64, SeedResult>> = vec![BTreeMap::new(); first.points.len()];
    let mut merged = Shard {
        points: Vec::new(),
        ..first.clone()
    };
    for shard in shards {
        merged.holding.unite(&shard.holding);
        let label = shard.label();
        for (into, from) in by_seed.iter_mut().zip(shard.points) {
            for result in from.results {
                let seed = result.seed_idx;
                if into.get(&seed).is_some_and(|held| *held != result) {
                    return Err(format!(
                        "{label}: seed {seed} has other results than in an earlier file"
                    ));
                }
                into.insert(seed, result);
            }
        }
    }
    merged.points = first
        .points
        .iter()
        .zip(by_seed)
        .map(|(p, results)| ShardPoint {
            info: p.info.clone(),
            results: results.into_values().collect(),
        })
        .collect();
    Ok(merged)
}

/// A mean and its 95% confidence interval (Student's t over seeds).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Estimate {
    pub mean: f64,
    pub ci95: [f64; 2],
    pub std: f64,
}

/// Mean, sample standard deviation and a t interval, summed in the order given.
pub fn estimate(values: impl Iterator<Item = f64> + Clone) -> Estimate {
    let n = values.clone().count();
    if n == 0 {
        return Estimate {
            mean: 0.0,
            ci95: [0.0, 0.0],
            std: 0.0,
        };
    }
    let mean = values.clone().sum::<f64>() / n as f64;
    if n < 2 {
        return Estimate {
            mean,
            ci95: [mean, mean],
            std: 0.0,
        };
    }
    let var = values.map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64;
    let std = var.sqrt();
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64)
        .expect("a valid t distribution")
        .inverse_cdf(0.975);
    let half = t * std / (n as f64).sqrt();
    Estimate {
        mean,
        ci95: [mean - half, mean + half],
        std,
    }
}

/// One sweep point's results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PointSummary {
    pub settings: BTreeMap<String, String>,
    pub policy: String,
    pub checkpoint_interval_s: f64,
    pub checkpoint_write_time_s: f64,
    pub ettr_mean: f64,
    pub ettr_ci95: [f64; 2],
    pub ettr_std: f64,
    pub interruptions_mean: f64,
    pub interruptions_ci95: [f64; 2],
    pub planned_interruptions_mean: f64,
    pub absorbed_failures_mean: f64,
    pub spare_pool_dry_mean: f64,
    /// Mean seconds lost per cause.
    pub lost_s_by_cause: BTreeMap<String, f64>,
    pub interruptions_by_kind: BTreeMap<String, f64>,
    pub job_mtbf_s: f64,
    pub young_interval_s: f64,
    pub daly_interval_s: f64,
    pub daly_ettr: f64,
    pub kokolis_ettr: f64,
    pub replicas: usize,
    pub replica_gpus: usize,
    pub gpus_idled_per_failure: usize,
}

/// The planner's report: the best point's figures at the top, every point in `sweep`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanReport {
    pub scenario: String,
    pub seeds: usize,
    pub root_seed: u64,
    pub gpus: usize,
    pub nodes: usize,
    pub horizon_s: f64,
    pub best_settings: BTreeMap<String, String>,
    pub best_checkpoint_interval_s: f64,
    pub ettr_mean: f64,
    pub ettr_ci95: [f64; 2],
    pub interruptions_mean: f64,
    pub interruptions_ci95: [f64; 2],
    pub planned_interruptions_mean: f64,
    pub lost_s_by_cause: BTreeMap<String, f64>,
    pub interruptions_by_kind: BTreeMap<String, f64>,
    pub job_mtbf_s: f64,
    pub young_interval_s: f64,
    pub daly_interval_s: f64,
    pub daly_ettr: f64,
    pub kokolis_ettr: f64,
    /// The best point's GPUs idled per failure beyond the stall.
    pub gpus_idled_per_failure: usize,
    pub sweep: Vec<PointSummary>,
}

fn summarise_point(point: &ShardPoint, horizon_s: f64) -> PointSummary {
    let r = &point.results;
    let ettr = estimate(r.iter().map(|s| s.useful_s / horizon_s));
    let interruptions = estimate(r.iter().map(|s| s.interruptions as f64));
    let n = r.len().max(1) as f64;
    let mean_of = |f: &dyn Fn(&SeedResult) -> f64| r.iter().map(f).sum::<f64>() / n;
    let lost_s_by_cause = LostTime::CAUSES
        .iter()
        .enumerate()
        .map(|(idx, cause)| (cause.to_string(), mean_of(&|s| s.lost.by_cause()[idx])))
        .collect();
    let interruptions_by_kind = COUNTED_KINDS
        .iter()
        .enumerate()
        .map(|(idx, kind)| {
            (
                kind.to_string(),
                mean_of(&|s| s.interruptions_by_kind[idx] as f64),
            )
        })
        .collect();
    let i = &point.info;
    PointSummary {
        settings: i.settings.iter().cloned().collect(),
        policy: i.policy.clone(),
        checkpoint_interval_s: i.checkpoint_interval_s,
        checkpoint_write_time_s: i.checkpoint_write_time_s,
        ettr_mean: ettr.mean,
        ettr_ci95: ettr.ci95,
        ettr_std: ettr.std,
        interruptions_mean: interruptions.mean,
        interruptions_ci95: interruptions.ci95,
        planned_interruptions_mean: mean_of(&|s| s.planned_interruptions as f64),
        absorbed_failures_mean: mean_of(&|s| s.absorbed_failures as f64),
        spare_pool_dry_mean: mean_of(&|s| s.spare_pool_dry as f64),
        lost_s_by_cause,
        interruptions_by_kind,
        job_mtbf_s: i.job_mtbf_s,
        young_interval_s: i.young_interval_s,
        daly_interval_s: i.daly_interval_s,
        daly_ettr: i.daly_ettr,
        kokolis_ettr: i.kokolis_ettr,
        replicas: i.replicas,
        replica_gpus: i.replica_gpus,
        gpus_idled_per_failure: i.gpus_idled_per_failure,
    }
}

/// The report of a whole (unsharded or merged) plan.
pub fn summarise(shard: &Shard) -> PlanReport {
    let sweep: Vec<PointSummary> = shard
        .points
        .iter()
        .map(|p| summarise_point(p, shard.horizon_s))
        .collect();
    let best = sweep.iter().enumerate().fold(0, |best, (idx, p)| {
        if p.ettr_mean > sweep[best].ettr_mean {
            idx
        } else {
            best
        }
    });
    let b = sweep[best].clone();
    PlanReport {
        scenario: shard.scenario.clone(),
        seeds: shard.seeds,
        root_seed: shard.root_seed,
        gpus: shard.gpus,
        nodes: shard.nodes,
        horizon_s: shard.horizon_s,
        best_settings: b.settings,
        best_checkpoint_interval_s: b.checkpoint_interval_s,
        ettr_mean: b.ettr_mean,
        ettr_ci95: b.ettr_ci95,
        interruptions_mean: b.interruptions_mean,
        interruptions_ci95: b.interruptions_ci95,
        planned_interruptions_mean: b.planned_interruptions_mean,
        lost_s_by_cause: b.lost_s_by_cause,
        interruptions_by_kind: b.interruptions_by_kind,
        job_mtbf_s: b.job_mtbf_s,
        young_interval_s: b.young_interval_s,
        daly_interval_s: b.daly_interval_s,
        daly_ettr: b.daly_ettr,
        kokolis_ettr: b.kokolis_ettr,
        gpus_idled_per_failure: b.gpus_idled_per_failure,
        sweep,
    }
}
