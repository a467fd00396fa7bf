//! The training logic under test, written once against the [`Backend`] seam.
//!
//! Everything a rank does to the outside world (send, receive, read the clock, sleep, charge
//! compute time, emit an event) goes through [`Backend`]. This crate knows nothing of madsim,
//! tokio, the simulated fabric or CUDA: `faultline-sim` implements the seam over a simulated
//! cluster and `cuda-backend` over real GPUs, and both run exactly this code.

pub mod backend;
pub mod checkpoint;
pub mod collectives;
pub mod digest;
pub mod group;
pub mod health;
pub mod integrity;
pub mod job;
pub mod kernels;
pub mod layout;
pub mod layout_job;
pub mod mlp;
pub mod model;
#[macro_use]
pub mod names;
pub mod op_ids;
pub mod pipeline;
pub mod planted;
pub mod prefetch;
pub mod span;
pub mod transport;
pub mod units;

pub use backend::{
    Backend, Blob, CommError, Event, FaultPoint, Payload, RestartOrder, StorageError, Tag, Tier,
    Work, WorkKind, WriteStatus, WriteTicket,
};
pub use collectives::{Algo, Op};
pub use group::{Group, Placement};
pub use planted::PlantedBug;
pub use span::Span;

#[cfg(test)]
mod tests;
