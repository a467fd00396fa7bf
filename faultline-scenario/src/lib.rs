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
pub use source::{in_range, parse_checked, positive, with_suggestion, ScenarioError, Source};

#[cfg(test)]
mod tests;
