//! Swarm testing and shrinking: `faultline swarm` runs many seeds of one scenario, each with
//! its own random subset of fault kinds at random times in a faulty phase (`faults.rs`), and
//! checks every invariant (`invariants.rs`) on each (`seeds.rs`); `faultline shrink` reduces a
//! failing seed's schedule to a minimal one that breaks the same invariant (`shrink.rs`);
//! `shard.rs` holds a shard of a swarm's seeds as a file, and unites such files again.
//!
//! Every schedule becomes scenario text first and is loaded like a file, so what the swarm runs
//! and the file it writes for a reproduction are the same thing by construction.

pub mod faults;
pub mod invariants;
pub mod seeds;
pub mod shard;
pub mod shrink;

use std::path::Path;

use crate::scenario::{self, Scenario};
use faults::{faults_table, DrawSpace, FaultSpec};
use invariants::Reference;

/// Faults are drawn in the first this-many tenths of the fault-free run's model time and
/// steps: the faulty phase. What follows is the healed phase, where liveness is judged.
pub const FAULTY_TENTHS: u64 = 6;

/// Why the swarm or the shrinker could not start.
#[derive(Debug)]
pub enum SwarmError {
    /// The scenario or an argument is wrong (exit status 2).
    BadInput(String),
    /// The fault-free run itself failed: a finding, not bad input (exit status 1).
    FaultFreeRunFailed(String),
}

impl std::fmt::Display for SwarmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwarmError::BadInput(message) => f.write_str(message),
            SwarmError::FaultFreeRunFailed(message) => {
                write!(f, "the fault-free run failed: {message}")
            }
        }
    }
}

/// The scenario a swarm varies: its file as a table without faults, its fault-free run, and
/// where faults may be drawn.
#[derive(Clone)]
pub struct Base {
    /// The path as given, for reproduce commands.
    pub path: String,
    pub name: String,
    table: toml::Table,
    pub scenario: Scenario,
    pub reference: Reference,
    pub space: DrawSpace,
}

impl Base {
    pub fn load(path: &Path) -> Result<Base, SwarmError> {
        let scenario =
            scenario::load(path, &[]).map_err(|e| SwarmError::BadInput(e.to_string()))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| SwarmError::BadInput(format!("{}: {e}", path.display())))?;
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| SwarmError::BadInput(format!("{}: {e}", path.display())))?;
        table.remove("faults");
        let reference = Reference::of(&scenario).map_err(SwarmError::FaultFreeRunFailed)?;
        let topology = crate::topology::Topology::new(&scenario.cluster, &scenario.fabric);
        let space = DrawSpace {
            nodes: scenario
                .cluster
                .gpus
                .div_ceil(scenario.cluster.gpus_per_node),
            gpus: scenario.cluster.gpus,
            gpus_per_node: scenario.cluster.gpus_per_node,
            faulty_until_ns: reference.fault_free.model_time_ns * FAULTY_TENTHS / 10,
            faulty_steps: scenario.job.steps * FAULTY_TENTHS / 10,
            leaves: topology.leaf_count(),
            spines_per_leaf: topology.spines_per_leaf(),
            link_flaps: scenario.control.collective_timeout_ns.is_some(),
        };
        Ok(Base {
            path: path.display().to_string(),
            name: scenario.name.clone(),
            table,
            scenario,
            reference,
            space,
        })
    }

    /// The scenario file of `seed` with `faults`: the base file's settings, `run.seed`, and
    /// every fault explicit. `header` lines become comments at the top.
    pub fn scenario_text(&self, seed: u64, faults: &[FaultSpec], header: &[String]) -> String {
        let mut table = self.table.clone();
        let run = table
            .entry("run")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(run) = run.as_table_mut() {
            run.insert("seed".into(), toml::Value::Integer(seed as i64));
        }
        let faults = faults_table(faults);
        if !faults.is_empty() {
            table.insert("faults".into(), toml::Value::Table(faults));
        }
        let mut text: String = header
            .iter()
            .map(|line| format!("# {}\n", line.replace('\n', " ")))
            .collect();
        if !header.is_empty() {
            text.push('\n');
        }
        text.push_str(&toml::to_string(&table).expect("a table serialises"));
        text
    }

    /// The same base with `job.steps = steps`, and its own fault-free run (one simulation).
    /// Where faults are drawn stays as it was, so a seed draws the same schedule.
    pub fn with_steps(&self, steps: u64) -> Result<Base, String> {
        let mut table = self.table.clone();
        if let Some(job) = table.get_mut("job").and_then(|j| j.as_table_mut()) {
            job.insert("steps".into(), toml::Value::Integer(steps as i64));
        }
        let text = toml::to_string(&table).expect("a table serialises");
        let scenario = self.load_text(&format!("<{} with {steps} steps>", self.path), &text)?;
        let reference = Reference::of(&scenario)?;
        Ok(Base {
            table,
            scenario,
            reference,
            ..self.clone()
        })
    }

    /// Loads a schedule's text as `faultline run` would load the file.
    pub fn load_text(&self, origin: &str, text: &str) -> Result<Scenario, String> {
        scenario::load_str(&self.name, origin, text, &[]).map_err(|e| e.to_string())
    }

    /// The command that reruns one seed of the swarm.
    pub fn swarm_command(&self, seed: u64) -> String {
        format!(
            "{}faultline swarm {} --seeds {seed}..{}",
            self.permission(),
            crate::shell::quote(&self.path),
            seed + 1
        )
    }

    pub fn shrink_command(&self, seed: u64) -> String {
        shrink_command(&self.permission(), &self.path, &self.name, seed)
    }

    /// What a command line needs in front to load this base: the planted-bug permission.
    pub fn permission(&self) -> String {
        if self.plants_bug() {
            format!("{}=1 ", scenario::ALLOW_PLANTED_BUGS_ENV)
        } else {
            String::new()
        }
    }

    /// Whether the base plants a bug, so a written file needs the permission to load.
    pub fn plants_bug(&self) -> bool {
        self.scenario.planted_bug.is_some()
    }
}

/// The command that shrinks `seed` of the swarm over the scenario at `path` named `name`.
pub fn shrink_command(permission: &str, path: &str, name: &str, seed: u64) -> String {
    format!(
        "{permission}faultline shrink {} --seed {seed} --out {}",
        crate::shell::quote(path),
        crate::shell::quote(&format!("{name}-seed-{seed}-shrunk.toml"))
    )
}

#[cfg(test)]
mod tests;
