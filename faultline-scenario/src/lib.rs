//! The one reader of faultline's scenario files, used by the simulator (`faultline`), its
//! planner and the GPU runner (`faultline-gpu`) alike, so that every program accepts and
//! refuses the same files with the same messages.
//!
//! - `config`: the typed settings a scenario becomes. Plain data, at the bottom of the
//!   dependency graph; it knows nothing of the simulated world or of GPUs.
//! - `link`: link names and the cluster-shape arithmetic that says which exist.
//! - `source`: the text with its key positions, `--set` overrides, errors with file, line,
//!   column, key and did-you-mean; the planner's format is read through it too.
//! - `load`: the run-scenario format as written (`Raw*`), its defaults and its validation.

pub mod config;
pub mod link;
mod load;
mod source;

pub use config::*;
pub use link::LinkRef;
pub use load::{
    load, load_str, load_str_located, read_scenario_file, validate_gpus, ALLOW_PLANTED_BUGS_ENV,
};
pub use source::{in_range, parse_checked, with_suggestion, within, ScenarioError, Source};

/// The largest root seed: a scenario file's `run.seed` is a TOML integer, at most `i64::MAX`,
/// and every seed a program takes may end up written there (a swarm's seed files, a shrunk
/// schedule) or read back from there.
pub const MAX_SEED: u64 = i64::MAX as u64;

/// `text` as a root seed from 0 to [`MAX_SEED`], or an error saying what is accepted.
pub fn parse_seed(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(seed) if seed <= MAX_SEED => Ok(seed),
        Ok(_) => Err(format!(
            "expected a seed from 0 to {MAX_SEED} (the largest integer a scenario file's \
             run.seed holds, where a run is written down to be reproduced), got {text}"
        )),
        Err(_) => Err(format!(
            "expected a seed from 0 to {MAX_SEED}, got {text:?}"
        )),
    }
}

#[cfg(test)]
mod tests;
