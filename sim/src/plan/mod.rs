//! The capacity planner: a Monte Carlo over failure arrivals, detection, recovery and
//! checkpoint costs for weeks of training that cannot be simulated step by step. Seeds run in
//! parallel; each seed's streams derive from the root seed and the seed index alone, so results
//! do not depend on the thread count or on how seeds are split into shards.
//!
//! `config` loads planner scenarios, `model` runs one seed, `report` turns seeds into means and
//! intervals and merges shards, `analytic` holds the closed forms shown beside the simulated
//! numbers, `plot` draws the sweep, and `calibrate` measures costs with the real training logic.

pub mod analytic;
pub mod calibrate;
pub mod config;
pub mod model;
pub mod report;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::scenario::ScenarioError;
use config::{parse_sweep, Costs, PlanConfig};
use model::{run_seed, SeedResult};
use report::{PointInfo, Shard, ShardPoint, SHARD_FORMAT};

/// One sweep point: the values it gives the swept keys and its validated configuration.
pub struct Point {
    pub settings: Vec<(String, String)>,
    pub config: PlanConfig,
}

/// Loads every point of a plan: the cartesian product of the sweeps, the file's `plan.sweep`
/// unless `cli_sweeps` are given. Each point is the scenario with `sets` and then the point's
/// values applied as overrides, validated on its own.
pub fn load_points(
    path: &Path,
    sets: &[String],
    cli_sweeps: &[String],
    costs: &Costs,
) -> Result<Vec<Point>, ScenarioError> {
    let base = config::load(path, sets)?;
    let sweeps_text = if cli_sweeps.is_empty() {
        base.sweep.clone()
    } else {
        cli_sweeps.to_vec()
    };
    let mut sweeps = Vec::new();
    for item in &sweeps_text {
        let parsed = parse_sweep(item).map_err(|message| ScenarioError {
            origin: format!("--sweep {item}"),
            line_col: None,
            key: None,
            message,
        })?;
        sweeps.push(parsed);
    }
    let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (key, values) in &sweeps {
        combos = combos
            .into_iter()
            .flat_map(|combo| {
                values.iter().map(move |v| {
                    let mut next = combo.clone();
                    next.push((key.clone(), v.clone()));
                    next
                })
            })
            .collect();
    }
    let points = combos
        .into_iter()
        .map(|settings| {
            let mut all = sets.to_vec();
            all.extend(settings.iter().map(|(k, v)| format!("{k}={v}")));
            let mut config = config::load(path, &all)?;
            costs.apply(&mut config);
            Ok(Point { settings, config })
        })
        .collect::<Result<Vec<_>, ScenarioError>>()?;
    for p in &points {
        let c = &p.config;
        if (c.seeds, c.root_seed, c.horizon_s) != (base.seeds, base.root_seed, base.horizon_s) {
            return Err(ScenarioError {
                origin: "--sweep".into(),
                line_col: None,
                key: None,
                message: "a sweep may not change plan.seeds, plan.seed or plan.horizon: every \
                          point runs the same seeds over the same horizon"
                    .into(),
            });
        }
    }
    Ok(points)
}

/// A digest of what a plan runs: every point's swept settings and validated configuration
/// (the file's content with every `--set`, `--sweep` value and cost applied), in point order.
/// The description and the sweep's own text are left out: they change nothing that runs. The
/// digest is FNV-1a over the configuration's `Debug` form, which prints every number exactly,
/// so it is the same in every process and on every machine: shards of one plan carry the same
/// digest, and `merge` refuses shards whose digests differ.
pub fn plan_digest(points: &[Point]) -> String {
    let mut digest = trainer_core::digest::Digest::new();
    for point in points {
        let config = PlanConfig {
            description: String::new(),
            sweep: Vec::new(),
            ..point.config.clone()
        };
        digest.bytes(format!("{:?}\n{config:?}\n", point.settings).as_bytes());
    }
    format!("{:016x}", digest.finish())
}

/// The seeds shard `shard_idx` of `shard_count` runs: every `shard_count`-th from `shard_idx`.
pub fn shard_seeds(seeds: usize, shard_idx: usize, shard_count: usize) -> Vec<u64> {
    (shard_idx..seeds)
        .step_by(shard_count)
        .map(|s| s as u64)
        .collect()
}

/// Runs one shard of a plan on `threads` threads. `on_seed_done` is called after every seed
/// (for a progress bar). The result depends on neither the thread count nor the timing.
pub fn run_shard(
    points: &[Point],
    shard_idx: usize,
    shard_count: usize,
    threads: usize,
    on_seed_done: &(dyn Fn() + Sync),
) -> Shard {
    assert!(!points.is_empty() && shard_idx < shard_count);
    let first = &points[0].config;
    let seeds = shard_seeds(first.seeds, shard_idx, shard_count);
    let jobs: Vec<(usize, u64)> = (0..points.len())
        .flat_map(|p| seeds.iter().map(move |&s| (p, s)))
        .collect();
    let slots: Vec<OnceLock<SeedResult>> = jobs.iter().map(|_| OnceLock::new()).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let job = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(point, seed)) = jobs.get(job) else {
                    return;
                };
                let result = run_seed(&points[point].config, seed);
                slots[job].set(result).expect("each job runs once");
                on_seed_done();
            });
        }
    });
    let mut results = slots
        .into_iter()
        .map(|slot| slot.into_inner().expect("every job ran"));
    Shard {
        format: SHARD_FORMAT.to_string(),
        scenario: first.name.clone(),
        plan_digest: plan_digest(points),
        root_seed: first.root_seed,
        seeds: first.seeds,
        gpus: first.gpus,
        nodes: first.nodes,
        horizon_s: first.horizon_s,
        holding: crate::fanout::Holding::of_shard(
            crate::fanout::Assignment::of_flag(shard_idx as u64, shard_count as u64),
            seeds.iter().copied(),
        ),
        points: points
            .iter()
            .map(|p| ShardPoint {
                info: PointInfo::new(p.settings.clone(), &p.config),
                results: results.by_ref().take(seeds.len()).collect(),
            })
            .collect(),
    }
}
