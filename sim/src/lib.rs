//! faultline's simulated world: scenarios, topology, the model clock and fabric, executors, and
//! the runs the `faultline` program offers. trainer-core's logic runs here unchanged through
//! [`world::SimBackend`].

pub mod atomic;
pub mod books;
pub mod executor;
pub mod fabric;
pub mod fanout;
pub mod flight;
pub mod fuzzing;
pub mod limits;
pub mod plan;
pub mod prefetch;
pub mod queue;
pub mod replay;
pub mod rng;
pub mod run;
pub mod shell;
/// The scenario format lives in its own crate, shared with the GPU runner.
pub use faultline_scenario as scenario;
pub mod slab;
pub mod storage;
pub mod story;
pub mod summary;
pub mod swarm;
pub mod topology;
pub mod trace;
/// Scenario units, shared with the GPU runner through trainer-core.
pub use trainer_core::units;
pub mod world;

#[cfg(test)]
mod tests;
