//! A swarm fanned out over array tasks: each task runs a shard of the seeds
//! (`swarm --shard i/n --out DIR/`) and writes a [`SwarmShard`], the outcomes of exactly the
//! seeds it lists; `merge` unites any set of them (shards, merged files, retries with another
//! split) and rebuilds the unsharded [`SwarmReport`] from the outcomes, so its verdict is the
//! unsharded run's, byte for byte.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::seeds::{SeedOutcome, SwarmReport};
use super::Base;
use crate::books::RarePath;
use crate::fanout::{Assignment, Cover, Holding};

/// The shard file's format; `merge` refuses any other.
pub const SWARM_SHARD_FORMAT: &str = "faultline-swarm-shard/1";

/// What a swarm is, as its shards agree on it: the scenario (by content), the seed range and
/// the fault-free run every seed is judged against. Two shards merge only when these are equal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwarmFacts {
    pub scenario: String,
    /// The scenario's path as the swarm was given it: the verdict's commands name it.
    pub path: String,
    /// What a command line needs in front (the planted-bug permission), or nothing.
    pub permission: String,
    /// A digest of the scenario's settings (its faults left out: the swarm replaces them).
    pub scenario_digest: String,
    pub seeds_from: u64,
    pub seeds_until: u64,
    pub job_steps: u64,
    pub fault_free_param_digest: String,
    pub fault_free_model_time_ns: u64,
    pub faulty_until_ns: u64,
    pub faulty_steps: u64,
    pub liveness_bound_ns: u64,
}

impl SwarmFacts {
    pub fn of(base: &Base, seeds: std::ops::Range<u64>) -> SwarmFacts {
        let mut digest = trainer_core::digest::Digest::new();
        let text = toml::to_string(&base.table).expect("a table serialises");
        digest.bytes(text.as_bytes());
        let fault_free = &base.reference.fault_free;
        SwarmFacts {
            scenario: base.name.clone(),
            path: base.path.clone(),
            permission: base.permission(),
            scenario_digest: format!("{:016x}", digest.finish()),
            seeds_from: seeds.start,
            seeds_until: seeds.end,
            job_steps: base.scenario.job.steps,
            fault_free_param_digest: fault_free.param_digest.clone(),
            fault_free_model_time_ns: fault_free.model_time_ns,
            faulty_until_ns: base.space.faulty_until_ns,
            faulty_steps: base.space.faulty_steps,
            liveness_bound_ns: base.reference.liveness_bound_ns,
        }
    }

    /// Seeds in the swarm: items `0..seeds()` are seeds `seeds_from..seeds_until`.
    pub fn seeds(&self) -> u64 {
        self.seeds_until - self.seeds_from
    }

    /// What names this swarm's shard files: the scenario's digest and the seed range.
    pub fn digest(&self) -> String {
        let mut digest = trainer_core::digest::Digest::new();
        digest.bytes(self.scenario_digest.as_bytes());
        digest.u64(self.seeds_from);
        digest.u64(self.seeds_until);
        format!("{:016x}", digest.finish())
    }

    /// The command that shrinks a failing seed, as [`Base::shrink_command`] says it.
    pub fn shrink_command(&self, seed: u64) -> String {
        super::shrink_command(&self.permission, &self.path, &self.scenario, seed)
    }
}

/// One seed's outcome in a shard file, with the rare paths its run took (which the swarm's
/// JSON report gives only as counts).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardOutcome {
    #[serde(flatten)]
    pub outcome: SeedOutcome,
    pub rare_paths_taken: Vec<RarePath>,
}

/// What `swarm --shard` writes and `merge` reads and writes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SwarmShard {
    pub format: String,
    /// The faultline that wrote it (for people; the format is what is checked).
    pub faultline: String,
    pub swarm: SwarmFacts,
    /// The seed indices (seed - seeds_from) whose outcomes it holds, and the split.
    pub holding: Holding,
    pub outcomes: Vec<ShardOutcome>,
}

impl SwarmShard {
    /// The file of one shard's run.
    pub fn of_run(facts: SwarmFacts, shard: Assignment, outcomes: Vec<SeedOutcome>) -> SwarmShard {
        let holding = Holding::of_shard(shard, outcomes.iter().map(|o| o.seed - facts.seeds_from));
        SwarmShard {
            format: SWARM_SHARD_FORMAT.to_string(),
            faultline: env!("CARGO_PKG_VERSION").to_string(),
            swarm: facts,
            holding,
            outcomes: outcomes
                .into_iter()
                .map(|outcome| ShardOutcome {
                    rare_paths_taken: outcome.rare_paths.clone(),
                    outcome,
                })
                .collect(),
        }
    }

    /// The seeds of `0..items` no file held.
    pub fn missing(&self) -> Cover {
        self.holding.covered.missing(self.swarm.seeds())
    }

    /// The report over the seeds held, in seed order.
    pub fn report(&self) -> SwarmReport {
        let outcomes = self
            .outcomes
            .iter()
            .map(|o| SeedOutcome {
                rare_paths: o.rare_paths_taken.clone(),
                ..o.outcome.clone()
            })
            .collect();
        SwarmReport::of(&self.swarm, outcomes)
    }
}

/// Refuses a file that is not a swarm shard of this format, or whose outcomes are not the
/// seeds it says it covers.
fn check_shard(name: &str, shard: &SwarmShard) -> Result<(), String> {
    if shard.format != SWARM_SHARD_FORMAT {
        return Err(format!(
            "{name}: format {:?}, expected {SWARM_SHARD_FORMAT:?} (write it again with this \
             faultline)",
            shard.format
        ));
    }
    let facts = &shard.swarm;
    let seeds = facts.seeds_from..facts.seeds_until;
    if !(shard.outcomes.iter()).all(|o| seeds.contains(&o.outcome.seed)) {
        return Err(format!(
            "{name}: it holds seeds outside its range {seeds:?}"
        ));
    }
    let held = Cover::of((shard.outcomes.iter()).map(|o| o.outcome.seed - facts.seeds_from));
    if facts.seeds_until <= facts.seeds_from
        || !shard.holding.is_valid(facts.seeds(), &held)
        || held.len() != shard.outcomes.len() as u64
    {
        return Err(format!(
            "{name}: its split, seed range or outcomes are not those of a swarm's shard (the \
             outcomes must be exactly the seeds it says it covers)"
        ));
    }
    Ok(())
}

/// Why `b` is not of the same swarm as `a`, in words.
fn difference(a: &SwarmFacts, b: &SwarmFacts) -> Option<String> {
    if a.scenario_digest != b.scenario_digest || a.scenario != b.scenario {
        Some(format!(
            "another scenario ({} with digest {}, and {} with digest {})",
            a.scenario, a.scenario_digest, b.scenario, b.scenario_digest
        ))
    } else if (a.seeds_from, a.seeds_until) != (b.seeds_from, b.seeds_until) {
        Some(format!(
            "another seed range ({}..{} and {}..{})",
            a.seeds_from, a.seeds_until, b.seeds_from, b.seeds_until
        ))
    } else if a.path != b.path || a.permission != b.permission {
        Some(format!(
            "the scenario given as another path ({:?} and {:?}), which the verdict's commands \
             name",
            a.path, b.path
        ))
    } else if a != b {
        Some("another fault-free run (another faultline?)".to_string())
    } else {
        None
    }
}

/// Unites swarm shard files (`(name, shard)`, names for messages): every file of the same
/// swarm, a seed held twice only with the same outcome. The result is a shard file again, so
/// merging is associative.
pub fn merge(files: Vec<(String, SwarmShard)>) -> Result<SwarmShard, String> {
    let mut files = files.into_iter();
    let (first_name, first) = files.next().ok_or("no shard files given")?;
    check_shard(&first_name, &first)?;
    let mut outcomes: BTreeMap<u64, ShardOutcome> = BTreeMap::new();
    let mut merged = SwarmShard {
        outcomes: Vec::new(),
        ..first.clone()
    };
    for (name, shard) in std::iter::once((first_name.clone(), first)).chain(files) {
        check_shard(&name, &shard)?;
        if let Some(why) = difference(&merged.swarm, &shard.swarm) {
            return Err(format!(
                "{name} is not a shard of the same swarm as {first_name}: {why}"
            ));
        }
        merged.holding.unite(&shard.holding);
        for o in shard.outcomes {
            let seed = o.outcome.seed;
            if let Some(held) = outcomes.get(&seed) {
                let json = |o: &ShardOutcome| serde_json::to_string(o).expect("serialises");
                if json(held) != json(&o) {
                    return Err(format!(
                        "{name}: seed {seed} has another outcome than in an earlier file: the \
                         files are not of the same swarm"
                    ));
                }
            }
            outcomes.insert(seed, o);
        }
    }
    merged.outcomes = outcomes.into_values().collect();
    Ok(merged)
}
