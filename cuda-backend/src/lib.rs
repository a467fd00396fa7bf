//! trainer-core's [`trainer_core::Backend`] on real GPUs.
//!
//! - [`probe`]: is CUDA there? (cudarc loads it at run time; tests skip cleanly without it.)
//! - [`kernels`], [`launch`]: the kernels, compiled at run time with fused multiply-add off so
//!   that they match trainer-core's CPU kernels bit for bit.
//! - [`device`]: one rank's device ([`device::CudaRank`] on a GPU stream, or
//!   [`device::HostRank`] for machines without one).
//! - [`local`]: several ranks in one process, one stream each, device-to-device copies.
//! - [`nccl`] and [`rendezvous`]: one rank per process over NCCL, bootstrapped from RANK,
//!   WORLD_SIZE, MASTER_ADDR and MASTER_PORT.
//! - [`store`]: real files for trainer-core's storage tiers (checkpoints), atomic and
//!   checksummed.
//! - [`units`]: durations and bandwidths as the simulator reads them.
//! - [`job`]: the scenario's job settings and the JSON report the `faultline-gpu` program prints.
//!
//! This crate never depends on `faultline-sim`; the conformance tests that compare the two live
//! in the `tests` crate.

pub mod device;
pub mod job;
pub mod kernels;
pub mod launch;
pub mod local;
pub mod nccl;
pub mod probe;
pub mod rendezvous;
pub mod store;
pub use trainer_core::units;

#[cfg(test)]
mod tests;
