//! The world's own invariants, checked between instants in debug builds (every test run):
//! ranks are conserved, no message belongs to a generation that has not begun, every message
//! slot is owned once, and no link's busy-until time moves back. A break is a bug in the
//! simulator, so it panics with what broke.
//!
//! The counts are checked after every instant; the scans over every rank, mailbox and link
//! after every [`FULL_CHECK_EVERY`]-th instant and on worlds of at most [`ALWAYS_SCAN_RANKS`]
//! ranks, so that a debug build of a large world is not slowed by a factor of its size.

use std::collections::BTreeSet;

use super::{Message, WaitKind, World, FINISHED, NO_SLOT};

/// Instants between two full scans on a large world.
const FULL_CHECK_EVERY: u64 = 64;
/// Worlds this small are scanned after every instant.
const ALWAYS_SCAN_RANKS: usize = 64;

impl World {
    /// Panics when one of the world's invariants is broken.
    pub(super) fn check_invariants(&mut self) {
        let ranks = self.ranks.len();
        assert!(
            self.finished + self.parked <= ranks,
            "{} finished and {} parked of {ranks} ranks",
            self.finished,
            self.parked
        );
        if ranks <= ALWAYS_SCAN_RANKS || self.stats.instants % FULL_CHECK_EVERY == 0 {
            self.check_ranks_conserved();
            self.check_mailboxes();
            self.check_links_monotonic();
        }
    }

    /// The finished and parked counts are those of the ranks' own states.
    fn check_ranks_conserved(&self) {
        let finished = self.ranks.iter().filter(|s| s.has(FINISHED)).count();
        let parked = (self.ranks.iter())
            .filter(|s| {
                matches!(
                    s.wait_kind,
                    WaitKind::Message | WaitKind::Timer | WaitKind::Restart
                )
            })
            .count();
        assert_eq!(finished, self.finished, "ranks marked finished");
        assert_eq!(parked, self.parked, "ranks parked on a backend future");
    }

    /// Every slot in a mailbox holds a message, for that rank, of a generation that has
    /// begun, and lies in one mailbox once.
    fn check_mailboxes(&self) {
        let generation = Message::generation_bits(self.generation());
        let mut owned = BTreeSet::new();
        for (rank, state) in self.ranks.iter().enumerate() {
            let mut slot = state.mailbox_head;
            while slot != NO_SLOT {
                assert!(
                    owned.insert(slot),
                    "slot {slot} is in two mailboxes (rank {rank})"
                );
                let message = (self.messages.get(slot))
                    .unwrap_or_else(|| panic!("rank {rank}'s mailbox holds empty slot {slot}"));
                assert_eq!(
                    message.to as usize, rank,
                    "slot {slot} in the wrong mailbox"
                );
                let sent_in = message.generation_and_flag & !super::hot::CHECKSUMMED;
                assert!(
                    sent_in <= generation,
                    "slot {slot} is of generation {sent_in}"
                );
                slot = message.next;
            }
        }
        assert!(
            owned.len() <= self.messages.len(),
            "more mailbox slots than messages"
        );
    }

    /// A link's busy-until time only moves forward: a transfer never takes back time that an
    /// earlier one was given.
    fn check_links_monotonic(&mut self) {
        let busy_until_ns = self.fabric.busy_until_ns();
        let seen = &mut self.debug_link_busy_seen_ns;
        seen.resize(busy_until_ns.len(), 0);
        for (link, (now, before)) in busy_until_ns.zip(seen.iter_mut()).enumerate() {
            assert!(
                now >= *before,
                "link {link} busy until {now} ns, was {before} ns"
            );
            *before = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{World, WorldConfig};
    use std::panic::{catch_unwind, AssertUnwindSafe};

    fn world() -> World {
        let text = "[cluster]\ngpus = 16\n[job]\nsteps = 1\n";
        let s = faultline_scenario::load_str("t", "t.toml", text, &[]).unwrap();
        let topology = crate::topology::Topology::new(&s.cluster, &s.fabric);
        World::new(WorldConfig::bare(topology, 1e15))
    }

    fn breaks(world: &mut World) -> bool {
        catch_unwind(AssertUnwindSafe(|| world.check_invariants())).is_err()
    }

    #[test]
    fn a_fresh_world_holds_and_each_broken_invariant_is_caught() {
        assert!(!breaks(&mut world()));
        // A rank counted finished that is not.
        let mut w = world();
        w.finished = 1;
        assert!(breaks(&mut w));
        // A link whose busy time moves back.
        let mut w = world();
        w.fabric.set_busy_until_ns(3, 100);
        assert!(!breaks(&mut w));
        w.fabric.set_busy_until_ns(3, 50);
        assert!(breaks(&mut w));
        // A mailbox pointing at an empty slot.
        let mut w = world();
        w.ranks[2].mailbox_head = 7;
        assert!(breaks(&mut w));
    }
}
