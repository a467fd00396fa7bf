//! Shrinking a failing seed: greedy delta debugging over its fault list. First drop faults (one
//! at a time, until none can go), then replace each by a simpler form (earlier, on fewer or
//! lower ranks, after fewer commits, over a shorter window, milder), and repeat both until
//! nothing changes or the run budget is spent. A candidate is kept only when it still breaks
//! the same invariant. Deterministic: the candidates come in a fixed order and each run is.

use serde::Serialize;

use super::faults::{draw_schedule, FaultSpec};
use super::invariants::{check, Invariant, Violation};
use super::{Base, SwarmError};
use crate::run::run_scenario;
use crate::world::CrashWhen;

#[derive(Clone, Debug, Serialize)]
pub struct Shrunk {
    pub seed: u64,
    pub invariant: Invariant,
    /// The seed's drawn faults, and the minimal ones, one line each.
    pub original: Vec<String>,
    pub minimal: Vec<String>,
    #[serde(skip)]
    pub minimal_schedule: Vec<FaultSpec>,
    /// The violation the minimal schedule shows.
    pub violation: Violation,
    /// Training steps of the base, and of the minimal scenario.
    pub steps_original: u64,
    pub steps_minimal: u64,
    /// Simulations run while shrinking (the first fault-free one not counted).
    pub runs: u64,
    /// Whether the budget ran out before a fixed point.
    pub budget_exhausted: bool,
    /// The minimal schedule as a standalone scenario file.
    #[serde(skip)]
    pub scenario_text: String,
}

struct Search {
    /// The base, with fewer steps once the shrinker has cut some.
    base: Base,
    seed: u64,
    invariant: Invariant,
    runs: u64,
    max_runs: u64,
}

impl Search {
    /// Runs `faults` and returns the target invariant's violation, if it still breaks.
    fn breaks(&mut self, faults: &[FaultSpec]) -> Option<Violation> {
        let text = self.base.scenario_text(self.seed, faults, &[]);
        let scenario = self.base.load_text("<shrink candidate>", &text).ok()?;
        let run = run_scenario(&scenario).map_err(|e| e.to_string());
        self.runs += 1;
        // A second run only where determinism is what broke.
        let rerun = (self.invariant == Invariant::Determinism).then(|| {
            self.runs += 1;
            run_scenario(&scenario).map_err(|e| e.to_string())
        });
        check(&scenario, &self.base.reference, &run, rerun.as_ref())
            .into_iter()
            .find(|v| v.invariant == self.invariant)
    }

    fn budget_left(&self) -> bool {
        self.runs < self.max_runs
    }

    /// Fewer training steps, as long as every fault that names a step still comes before the
    /// end and the same invariant breaks. Each try costs a fault-free run and a faulty one.
    fn fewer_steps(&mut self, faults: &[FaultSpec]) -> Option<Violation> {
        let steps = self.base.scenario.job.steps;
        let needed = faults
            .iter()
            .filter_map(|f| match f {
                FaultSpec::Crash {
                    when: CrashWhen::AtStep(s),
                    ..
                }
                | FaultSpec::Sdc { at_step: s, .. } => Some(s + 1),
                _ => None,
            })
            .max()
            .unwrap_or(1);
        let mut candidates = vec![needed, steps / 2, steps - steps / 4];
        candidates.retain(|&c| c >= needed.max(1) && c < steps);
        candidates.dedup();
        for candidate in candidates {
            if self.runs + 2 > self.max_runs {
                return None;
            }
            self.runs += 1;
            let Ok(shorter) = self.base.with_steps(candidate) else {
                continue;
            };
            let longer = std::mem::replace(&mut self.base, shorter);
            if let Some(v) = self.breaks(faults) {
                return Some(v);
            }
            self.base = longer;
        }
        None
    }
}

/// Shrinks `seed`'s schedule. `invariant` picks which broken invariant to keep, by default
/// the seed's first.
pub fn shrink(
    base: &Base,
    seed: u64,
    invariant: Option<Invariant>,
    max_runs: u64,
) -> Result<Shrunk, SwarmError> {
    if seed > crate::scenario::MAX_SEED {
        // The shrunk schedule is written as a scenario, whose run.seed could not hold it.
        return Err(SwarmError::BadInput(format!(
            "--seed: expected a seed from 0 to {}, got {seed}",
            crate::scenario::MAX_SEED
        )));
    }
    let original = draw_schedule(seed, &base.space);
    let outcome = super::seeds::run_seed(base, seed);
    let target = target_invariant(base, seed, invariant, &outcome.violations)?;
    let mut search = Search {
        base: base.clone(),
        seed,
        invariant: target,
        runs: 2,
        max_runs,
    };
    let mut faults = original.clone();
    let mut violation = (outcome.violations.iter())
        .find(|v| v.invariant == target)
        .cloned()
        .expect("the target was among the violations");
    while let Some(v) = search.one_round(&mut faults) {
        violation = v;
        if !search.budget_left() {
            break;
        }
    }
    let budget_exhausted = !search.budget_left();
    let header = header(base, seed, &original, &faults, &search, &violation);
    Ok(Shrunk {
        seed,
        invariant: target,
        original: original.iter().map(FaultSpec::describe).collect(),
        minimal: faults.iter().map(FaultSpec::describe).collect(),
        scenario_text: search.base.scenario_text(seed, &faults, &header),
        minimal_schedule: faults,
        steps_original: base.scenario.job.steps,
        steps_minimal: search.base.scenario.job.steps,
        violation,
        runs: search.runs,
        budget_exhausted,
    })
}

/// The invariant to keep broken: the one asked for, if the seed breaks it, else the seed's
/// first.
fn target_invariant(
    base: &Base,
    seed: u64,
    invariant: Option<Invariant>,
    violations: &[Violation],
) -> Result<Invariant, SwarmError> {
    let first = violations.first().map(|v| v.invariant);
    Ok(match invariant {
        Some(wanted) if violations.iter().any(|v| v.invariant == wanted) => wanted,
        Some(wanted) => {
            return Err(SwarmError::BadInput(format!(
                "seed {seed} does not break {}; it breaks {}",
                wanted.name(),
                names(violations)
            )))
        }
        None => first.ok_or_else(|| {
            SwarmError::BadInput(format!(
                "seed {seed} breaks no invariant: nothing to shrink (find a failing seed with \
                 `faultline swarm {}`)",
                base.path
            ))
        })?,
    })
}

impl Search {
    /// One round of delta debugging: fewer faults, then simpler ones, then fewer steps. The
    /// last violation found, or `None` when the round changed nothing.
    fn one_round(&mut self, faults: &mut Vec<FaultSpec>) -> Option<Violation> {
        let mut found = None;
        // Fewer faults.
        let mut idx = 0;
        while idx < faults.len() && self.budget_left() {
            let mut candidate = faults.clone();
            candidate.remove(idx);
            if let Some(v) = self.breaks(&candidate) {
                *faults = candidate;
                found = Some(v);
            } else {
                idx += 1;
            }
        }
        // Simpler faults.
        for idx in 0..faults.len() {
            for simpler in faults[idx].simpler(self.base.space.gpus_per_node) {
                if !self.budget_left() {
                    break;
                }
                let mut candidate = faults.clone();
                candidate[idx] = simpler;
                if let Some(v) = self.breaks(&candidate) {
                    *faults = candidate;
                    found = Some(v);
                    break;
                }
            }
        }
        // Fewer steps: a shorter run that still breaks is a smaller reproduction.
        if self.budget_left() {
            if let Some(v) = self.fewer_steps(faults) {
                found = Some(v);
            }
        }
        found
    }
}

/// The comment at the top of the shrunk scenario file.
fn header(
    base: &Base,
    seed: u64,
    original: &[FaultSpec],
    faults: &[FaultSpec],
    search: &Search,
    violation: &Violation,
) -> Vec<String> {
    let target = search.invariant;
    vec![
        format!(
            "Shrunk by `faultline shrink {} --seed {seed}`: {} faults down to {} in {} runs.",
            base.path,
            original.len(),
            faults.len(),
            search.runs
        ),
        format!(
            "job.steps: {} (the base has {}).",
            search.base.scenario.job.steps, base.scenario.job.steps
        ),
        format!("It breaks {}: {}", target.name(), violation.detail),
        "Every fault is explicit; run.seed only orders the ranks' interleaving and picks \
         which shard a corruption hits."
            .to_string(),
        if base.plants_bug() {
            "It plants a bug: run it with FAULTLINE_ALLOW_PLANTED_BUGS=1 faultline run --check \
             FILE"
                .to_string()
        } else {
            "Reproduce: faultline run --check FILE".to_string()
        },
    ]
}

fn names(violations: &[Violation]) -> String {
    if violations.is_empty() {
        return "none".into();
    }
    let names: Vec<&str> = violations.iter().map(|v| v.invariant.name()).collect();
    names.join(", ")
}
