//! Known bugs that a test can plant in the trainer's own logic, to prove that the seed swarm
//! (`faultline swarm`) finds real bugs and shrinks them. A planted bug changes trainer-core's
//! behaviour, not a checker's: the swarm must notice it through the invariants alone.
//!
//! Nothing plants one by default: [`crate::Backend::planted_bug`] returns `None` unless the
//! simulator was given `[debug] planted_bug` with `FAULTLINE_ALLOW_PLANTED_BUGS=1` set.

crate::named_enum! {
    /// A deliberate bug in the checkpoint logic.
    pub enum PlantedBug {
        /// Rank 0 commits a checkpoint's manifest at the first step boundary after the snapshot,
        /// without waiting for every rank's vote that its shard is durable.
        CommitBeforeDurable = "commit-before-durable",
        /// A restore trusts a shard's values without checking its checksum, so a bit flipped at
        /// rest flows into the parameters.
        UnverifiedRestore = "unverified-restore",
    }
}
