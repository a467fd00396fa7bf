//! Running a range of seeds on worker threads. Each seed's schedule is drawn from the seed
//! alone and each run is single-threaded (a `World` lives and dies on its thread), so the
//! results, gathered in a `BTreeMap` by seed, do not depend on the thread count.

use crate::books::RarePath;
use crate::scenario::MAX_SEED;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::faults::{draw_schedule, FaultSpec};
use super::invariants::{run_and_check, Invariant, Violation};
use super::shard::SwarmFacts;
use super::Base;

/// One seed's schedule and verdict.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeedOutcome {
    pub seed: u64,
    /// The drawn faults, one line each.
    pub faults: Vec<String>,
    #[serde(skip)]
    pub schedule: Vec<FaultSpec>,
    /// Every invariant the seed broke, in [`Invariant`] order; empty when it passed.
    pub violations: Vec<Violation>,
    pub steps_completed: u64,
    pub model_time_ns: u64,
    pub recoveries: u64,
    /// Silent data corruptions the run counted and reported as escaped. Not a violation
    /// (DESIGN.md's "no silent escape" allows a counted escape); the escape explains wrong
    /// parameters when the same schedule without its SDC faults ends as the fault-free run.
    pub escaped: u64,
    /// The command that reruns this seed alone.
    pub reproduce: String,
    /// The rare paths of fault handling its run took.
    #[serde(skip)]
    pub rare_paths: Vec<RarePath>,
}

impl SeedOutcome {
    pub fn failed(&self) -> bool {
        !self.violations.is_empty()
    }

    /// The invariant the seed is listed under: its first violation.
    pub fn first_invariant(&self) -> Option<Invariant> {
        self.violations.first().map(|v| v.invariant)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SwarmReport {
    pub scenario: String,
    pub seeds_from: u64,
    pub seeds_until: u64,
    pub fault_free_param_digest: String,
    pub fault_free_model_time_ns: u64,
    pub faulty_until_ns: u64,
    pub faulty_steps: u64,
    pub liveness_bound_ns: u64,
    pub seeds_run: u64,
    pub seeds_failed: u64,
    /// Failing seeds by the invariant they are listed under.
    pub failures_by_invariant: BTreeMap<String, u64>,
    /// Seeds that ran with no fault at all (every kind switched off).
    pub seeds_without_faults: u64,
    /// Seeds whose run reported an escaped SDC: such a run is held to fault-free equivalence
    /// and replicas agreeing through the same schedule without its SDC faults (one more run).
    pub seeds_with_reported_escapes: u64,
    /// Simulations run: two per seed (the second checks determinism), one more per finished
    /// seed with a reported escape (the schedule without its SDC faults), plus the fault-free
    /// one.
    pub simulations: u64,
    /// Per rare path of fault handling, the seeds whose run took it.
    pub rare_paths_reached: BTreeMap<&'static str, u64>,
    /// The rare paths no seed reached: what this swarm did not test.
    pub rare_paths_never_reached: Vec<&'static str>,
    pub outcomes: Vec<SeedOutcome>,
}

/// Draws, runs and checks one seed.
pub fn run_seed(base: &Base, seed: u64) -> SeedOutcome {
    let schedule = draw_schedule(seed, &base.space);
    let text = base.scenario_text(seed, &schedule, &[]);
    let origin = format!("<seed {seed} of {}>", base.path);
    let (run, violations) = match base.load_text(&origin, &text) {
        Ok(scenario) => run_and_check(&scenario, &base.reference),
        // The swarm wrote this text itself: failing to load it is a bug in the swarm.
        Err(e) => panic!("the swarm's own scenario for seed {seed} does not load: {e}"),
    };
    let rare_paths = (run.as_ref())
        .map(|r| r.rare_paths.keys().copied().collect())
        .unwrap_or_default();
    let (steps_completed, model_time_ns, recoveries, escaped) =
        run.as_ref().map_or((0, 0, 0, 0), |r| {
            (
                r.steps_completed,
                r.model_time_ns,
                r.recoveries,
                r.faults.escaped.len() as u64,
            )
        });
    SeedOutcome {
        seed,
        faults: schedule.iter().map(FaultSpec::describe).collect(),
        schedule,
        violations,
        steps_completed,
        model_time_ns,
        recoveries,
        escaped,
        reproduce: base.swarm_command(seed),
        rare_paths,
    }
}

/// Runs every seed of `seeds` on `jobs` threads; `progress` is called after each seed.
pub fn run_swarm(
    base: &Base,
    seeds: Range<u64>,
    jobs: usize,
    progress: &(dyn Fn() + Sync),
) -> SwarmReport {
    let list: Vec<u64> = seeds.clone().collect();
    let outcomes = run_seeds(base, &list, jobs, progress);
    SwarmReport::of(&SwarmFacts::of(base, seeds), outcomes)
}

/// Runs the seeds `seeds` on `jobs` threads and returns their outcomes in seed order;
/// `progress` is called after each seed. What a shard of a swarm runs.
pub fn run_seeds(
    base: &Base,
    seeds: &[u64],
    jobs: usize,
    progress: &(dyn Fn() + Sync),
) -> Vec<SeedOutcome> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                while let Some(&seed) = seeds.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let outcome = run_seed(base, seed);
                    results
                        .lock()
                        .expect("no worker panicked")
                        .insert(seed, outcome);
                    progress();
                }
            });
        }
    });
    results
        .into_inner()
        .expect("no worker panicked")
        .into_values()
        .collect()
}

impl SwarmReport {
    /// The report over `outcomes` (in seed order) of the swarm `facts` describes: what an
    /// unsharded swarm prints, and what `merge` rebuilds from shard files.
    pub fn of(facts: &SwarmFacts, outcomes: Vec<SeedOutcome>) -> SwarmReport {
        let mut failures_by_invariant = BTreeMap::new();
        for invariant in outcomes.iter().filter_map(SeedOutcome::first_invariant) {
            *failures_by_invariant
                .entry(invariant.name().to_string())
                .or_default() += 1;
        }
        let (rare_paths_reached, rare_paths_never_reached) = rare_path_coverage(&outcomes);
        SwarmReport {
            rare_paths_reached,
            rare_paths_never_reached,
            scenario: facts.scenario.clone(),
            seeds_from: facts.seeds_from,
            seeds_until: facts.seeds_until,
            fault_free_param_digest: facts.fault_free_param_digest.clone(),
            fault_free_model_time_ns: facts.fault_free_model_time_ns,
            faulty_until_ns: facts.faulty_until_ns,
            faulty_steps: facts.faulty_steps,
            liveness_bound_ns: facts.liveness_bound_ns,
            seeds_run: outcomes.len() as u64,
            seeds_failed: outcomes.iter().filter(|o| o.failed()).count() as u64,
            failures_by_invariant,
            // A seed's faults are its schedule, one line each.
            seeds_without_faults: outcomes.iter().filter(|o| o.faults.is_empty()).count() as u64,
            seeds_with_reported_escapes: outcomes.iter().filter(|o| o.escaped > 0).count() as u64,
            simulations: 2 * outcomes.len() as u64
                + 1
                + outcomes
                    .iter()
                    .filter(|o| o.escaped > 0 && o.steps_completed == facts.job_steps)
                    .count() as u64,
            outcomes,
        }
    }
}

/// Per rare path, the seeds whose run took it; and the paths none took.
fn rare_path_coverage(
    outcomes: &[SeedOutcome],
) -> (BTreeMap<&'static str, u64>, Vec<&'static str>) {
    let mut reached: BTreeMap<RarePath, u64> = BTreeMap::new();
    for path in outcomes.iter().flat_map(|o| &o.rare_paths) {
        *reached.entry(*path).or_default() += 1;
    }
    let never = (RarePath::ALL.iter())
        .filter(|p| !reached.contains_key(p))
        .map(|p| p.name())
        .collect();
    let reached = reached
        .into_iter()
        .map(|(path, seeds)| (path.name(), seeds));
    (reached.collect(), never)
}

/// Parses `A..B` (B excluded) or `A..=B` (B included).
pub fn parse_seed_range(text: &str) -> Result<Range<u64>, String> {
    let expected = "expected a seed range such as 1..101 (101 excluded) or 1..=100";
    let (from, until, inclusive) = if let Some((a, b)) = text.split_once("..=") {
        (a, b, true)
    } else if let Some((a, b)) = text.split_once("..") {
        (a, b, false)
    } else {
        return Err(format!("{expected}, got {text:?}"));
    };
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("{expected}, got {text:?}"))
    };
    let (from, until) = (number(from)?, number(until)?);
    // Each seed becomes a scenario file's run.seed, a TOML integer.
    let last = if inclusive {
        until
    } else {
        until.saturating_sub(1)
    };
    if last.max(from) > MAX_SEED {
        return Err(format!(
            "{expected}; seeds go from 0 to {MAX_SEED} (a scenario file's run.seed holds no \
             larger integer), got {text:?}"
        ));
    }
    let until = if inclusive { until + 1 } else { until };
    if until <= from {
        return Err(format!("{expected}; {text:?} holds no seed"));
    }
    if until - from > 1_000_000 {
        return Err(format!(
            "{expected}; at most 1,000,000 seeds at once, got {}",
            until - from
        ));
    }
    Ok(from..until)
}
