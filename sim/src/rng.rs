//! Every random stream of a simulation, each derived from the run's one root seed (`run.seed`)
//! and its own tag, so that drawing more from one subsystem never shifts another's draws, and
//! adding a fault kind never moves the others (TigerBeetle's VOPR does the same).
//!
//! The tags are the ones faultline has always used: these streams give the same bits as
//! before they were gathered here, so every digest stays as it was. The swarm's draw
//! (`swarm::faults`) and the planner (`plan::model::stream`) key their own streams from
//! their own seeds the same way.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use trainer_core::digest::mix64;

/// One subsystem's stream of random draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RngStream {
    /// The controller's random node failures (`faults.rates.node_failures_per_1000_node_days`).
    NodeFailures,
    /// One bit flipped in a stored checkpoint, keyed by its time, so that removing another
    /// fault (as the shrinker does) never moves this one's bit.
    StorageCorruption { at_ns: u64 },
    /// Random link flaps (`faults.rates.link_flaps_per_1000_link_days`).
    LinkFlaps,
    /// Silent data corruption: the bits flipped where a scenario leaves them to chance.
    Sdc,
    /// Random fail-slow links (`faults.rates.degrades_per_1000_link_days`): when, and which.
    Degrades,
    /// How many times a transfer over a lossy link is resent (`world/slow_links.rs`).
    Retransmissions,
    /// Random hangs and desyncs (`faults.rates.hangs_per_1000_node_days`, `desyncs_...`):
    /// when, which kind, which rank, where.
    GrayFailures,
}

impl RngStream {
    /// The stream's generator for a run of root seed `root_seed`.
    pub fn rng(self, root_seed: u64) -> ChaCha8Rng {
        let key = match self {
            RngStream::NodeFailures => mix64(root_seed ^ 0x00c4_a511),
            RngStream::StorageCorruption { at_ns } => mix64(mix64(at_ns) ^ root_seed ^ 0x00c0_44e7),
            RngStream::LinkFlaps => mix64(root_seed ^ 0x0f1a_9115),
            RngStream::Sdc => mix64(root_seed ^ 0x05dc_f11b),
            RngStream::Degrades => mix64(root_seed ^ 0x0de9_ade5),
            RngStream::Retransmissions => mix64(root_seed ^ 0x0e7a_5e7d),
            RngStream::GrayFailures => mix64(root_seed ^ 0x06a7_f41d),
        };
        ChaCha8Rng::seed_from_u64(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn every_stream_draws_its_own_numbers() {
        let streams = [
            RngStream::NodeFailures,
            RngStream::StorageCorruption { at_ns: 0 },
            RngStream::StorageCorruption { at_ns: 1 },
            RngStream::LinkFlaps,
            RngStream::Sdc,
            RngStream::Degrades,
            RngStream::Retransmissions,
            RngStream::GrayFailures,
        ];
        let firsts: std::collections::BTreeSet<u64> =
            streams.iter().map(|s| s.rng(7).gen::<u64>()).collect();
        assert_eq!(firsts.len(), streams.len());
        // Another root seed, other numbers; the same root seed, the same numbers.
        assert_ne!(
            RngStream::Sdc.rng(7).gen::<u64>(),
            RngStream::Sdc.rng(8).gen::<u64>()
        );
        assert_eq!(
            RngStream::Sdc.rng(7).gen::<u64>(),
            RngStream::Sdc.rng(7).gen::<u64>()
        );
    }
}
