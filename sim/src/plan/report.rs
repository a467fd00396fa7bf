//! Per-seed results into reports: means and 95% confidence intervals per sweep point, the best
//! point, and the shard files that `faultline merge` combines. Every sum runs in seed order,
//! so a merged set of shards gives the same bits as one unsharded run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

use super::analytic;
use super::config::{PlanConfig, COUNTED_KINDS};
use super::model::{LostTime, SeedResult};

/// Version 2 added `plan_digest`.
pub const SHARD_FORMAT: &str = "faultline-plan-shard/2";

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
    pub shard_idx: usize,
    pub shard_count: usize,
    pub points: Vec<ShardPoint>,
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
                "shard {}/{}: format {:?}, expected {SHARD_FORMAT:?}",
                s.shard_idx, s.shard_count, s.format
            ));
        }
        if s.plan_digest != first.plan_digest {
            return Err(format!(
                "shard {}/{} and shard {}/{} are not from the same plan: the scenario content \
                 differs (plan digest {} and {}: another file of the same name, or other \
                 --set, --sweep, --seeds or --costs)",
                first.shard_idx,
                first.shard_count,
                s.shard_idx,
                s.shard_count,
                first.plan_digest,
                s.plan_digest
            ));
        }
        let same = s.scenario == first.scenario
            && s.root_seed == first.root_seed
            && s.seeds == first.seeds
            && s.gpus == first.gpus
            && s.horizon_s == first.horizon_s
            && s.shard_count == first.shard_count
            && s.points.len() == first.points.len()
            && s.points
                .iter()
                .zip(&first.points)
                .all(|(a, b)| a.info == b.info);
        if !same {
            return Err(format!(
                "shard {}/{} is not from the same plan as shard {}/{} (scenario, seed, seeds, \
                 scale, horizon or sweep differ)",
                s.shard_idx, s.shard_count, first.shard_idx, first.shard_count
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
            return Err(format!(
                "shard {}/{} has no points",
                s.shard_idx, s.shard_count
            ));
        }
        for (p, point) in s.points.iter().enumerate() {
            let short = point
                .results
                .iter()
                .find(|r| r.interruptions_by_kind.len() != COUNTED_KINDS.len());
            if let Some(r) = short {
                return Err(format!(
                    "shard {}/{}: point {p}, seed {}: {} counts by kind, expected {}",
                    s.shard_idx,
                    s.shard_count,
                    r.seed_idx,
                    r.interruptions_by_kind.len(),
                    COUNTED_KINDS.len()
                ));
            }
        }
    }
    Ok(())
}

/// Combines shards `0..n` of one plan into one unsharded whole.
pub fn merge(mut shards: Vec<Shard>) -> Result<Shard, String> {
    let first = shards.first().ok_or("no shard files given")?.clone();
    check_same_plan(&shards, &first)?;
    if shards.len() != first.shard_count {
        return Err(format!(
            "expected the {} shards of the split, got {} file(s)",
            first.shard_count,
            shards.len()
        ));
    }
    check_results(&shards)?;
    shards.sort_by_key(|s| s.shard_idx);
    let indices: Vec<usize> = shards.iter().map(|s| s.shard_idx).collect();
    if indices != (0..first.shard_count).collect::<Vec<_>>() {
        return Err(format!(
            "expected shards 0 to {} of {} once each, got {indices:?}",
            first.shard_count - 1,
            first.shard_count
        ));
    }
    let mut merged = Shard {
        shard_idx: 0,
        shard_count: 1,
        points: first
            .points
            .iter()
            .map(|p| ShardPoint {
                info: p.info.clone(),
                results: Vec::new(),
            })
            .collect(),
        ..first
    };
    for shard in shards {
        for (into, from) in merged.points.iter_mut().zip(shard.points) {
            into.results.extend(from.results);
        }
    }
    for point in &mut merged.points {
        point.results.sort_by_key(|r| r.seed_idx);
        let expected = (0..merged.seeds as u64).collect::<Vec<_>>();
        let got: Vec<u64> = point.results.iter().map(|r| r.seed_idx).collect();
        if got != expected {
            return Err(format!(
                "the shards do not hold seeds 0 to {} exactly once each",
                merged.seeds - 1
            ));
        }
    }
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
