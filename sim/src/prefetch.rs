//! Software prefetch for the simulator's hot path: the executor's next ranks, the world's
//! next deliveries, the slab's next free slot. One implementation, in trainer-core (whose
//! collectives prefetch too); see `trainer_core::prefetch`.

pub use trainer_core::prefetch::prefetch;
