//! Known bugs that a test can plant in the trainer's own logic, to prove that the seed swarm
//! (`faultline swarm`) finds real bugs and shrinks them. A planted bug changes trainer-core's
//! behaviour, not a checker's: the swarm must notice it through the invariants alone.
//!
//! Nothing plants one by default: [`crate::Backend::planted_bug`] returns `None` unless the
//! simulator was given `[debug] planted_bug` with `FAULTLINE_ALLOW_PLANTED_BUGS=1` set.

/// A deliberate bug in the checkpoint logic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PlantedBug {
    /// Rank 0 commits a checkpoint's manifest at the first step boundary after the snapshot,
    /// without waiting for every rank's vote that its shard is durable.
    CommitBeforeDurable,
    /// A restore trusts a shard's values without checking its checksum, so a bit flipped at
    /// rest flows into the parameters.
    UnverifiedRestore,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 2] = [
        PlantedBug::CommitBeforeDurable,
        PlantedBug::UnverifiedRestore,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::CommitBeforeDurable => "commit-before-durable",
            PlantedBug::UnverifiedRestore => "unverified-restore",
        }
    }

    pub fn from_name(name: &str) -> Option<PlantedBug> {
        PlantedBug::ALL.into_iter().find(|bug| bug.name() == name)
    }
}
