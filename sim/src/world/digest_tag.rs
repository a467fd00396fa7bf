//! The first word of each kind of record the world folds into the trace digest. A tag names
//! what the record is, so that two different records can never fold the same word: a
//! payload (a rank, a node, a pair of ranks, a generation) always fits below the tag.
//!
//! The tags' bits are those faultline has always used, so digests stay comparable across
//! versions, with one exception: a replica's drop shared 0xD0 with a delivery, so that a
//! delivery from rank 0 to rank N folded the same word as the drop of node N. It is 0xD3.

/// What a record folded into the trace digest is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DigestTag {
    /// A transfer lost on a link that is down (sender << 24 | receiver).
    TransferLost,
    /// A straggler's slowdown began (its index in the scenario).
    StragglerBegins,
    /// Straggler scores flagged a rank.
    StragglerFlagged,
    /// A bit flipped in a payload in flight (the receiver).
    SdcInFlight,
    /// A bit flipped in a rank's gradient or parameters.
    SdcAtRank,
    /// The job restarted (the new generation).
    Restart,
    /// A crash (the first rank it took).
    Crash,
    /// A message delivered (sender << 24 | receiver).
    Deliver,
    /// A dropped node re-admitted under per-replica recovery.
    ReplicaReadmitted,
    /// A regroup under per-replica recovery (the members after it).
    Regroup,
    /// A node dropped under per-replica recovery.
    ReplicaDropped,
    /// A trainer event (the rank); the event's own fields follow.
    Event,
    /// A straggler's node evicted.
    Evict,
    /// A rank's task finished.
    Finished,
    /// A link went down (its directed link id).
    LinkDown,
    /// A degrade began or ended (its index << 1, plus 1 at its end).
    Degrade,
}

impl DigestTag {
    #[cfg(test)]
    const ALL: [DigestTag; 16] = [
        DigestTag::TransferLost,
        DigestTag::StragglerBegins,
        DigestTag::StragglerFlagged,
        DigestTag::SdcInFlight,
        DigestTag::SdcAtRank,
        DigestTag::Restart,
        DigestTag::Crash,
        DigestTag::Deliver,
        DigestTag::ReplicaReadmitted,
        DigestTag::Regroup,
        DigestTag::ReplicaDropped,
        DigestTag::Event,
        DigestTag::Evict,
        DigestTag::Finished,
        DigestTag::LinkDown,
        DigestTag::Degrade,
    ];

    /// The tag's bits above bit 48: one byte at the top, or (a link going down) two.
    const fn prefix(self) -> u64 {
        match self {
            DigestTag::TransferLost => 0x10 << 56,
            DigestTag::StragglerBegins => 0x57 << 56,
            DigestTag::StragglerFlagged => 0x5C << 56,
            DigestTag::SdcInFlight => 0x5D << 56,
            DigestTag::SdcAtRank => 0x5E << 56,
            DigestTag::Restart => 0xA0 << 56,
            DigestTag::Crash => 0xC0 << 56,
            DigestTag::Deliver => 0xD0 << 56,
            DigestTag::ReplicaReadmitted => 0xD1 << 56,
            DigestTag::Regroup => 0xD2 << 56,
            DigestTag::ReplicaDropped => 0xD3 << 56,
            DigestTag::Event => 0xE0 << 56,
            DigestTag::Evict => 0xEE << 56,
            DigestTag::Finished => 0xF1 << 56,
            DigestTag::LinkDown => 0xF1A9 << 48,
            DigestTag::Degrade => 0xDE << 56,
        }
    }

    /// The word to fold: the tag, then `payload` in the low 48 bits.
    #[inline(always)]
    pub(super) fn word(self, payload: u64) -> u64 {
        debug_assert!(
            payload < 1 << 48,
            "{self:?}: payload {payload:#x} reaches the tag"
        );
        self.prefix() | payload
    }
}

#[cfg(test)]
mod tests {
    use super::DigestTag;

    /// With payloads below 2^48, two records of different kinds never fold the same word.
    #[test]
    fn every_tag_has_its_own_bits_above_the_payload() {
        let prefixes: std::collections::BTreeSet<u64> =
            DigestTag::ALL.iter().map(|t| t.prefix() >> 48).collect();
        assert_eq!(prefixes.len(), DigestTag::ALL.len());
        assert_eq!(
            DigestTag::ALL
                .iter()
                .filter(|t| t.prefix() & ((1 << 48) - 1) != 0)
                .count(),
            0
        );
    }
}
