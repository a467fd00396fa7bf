//! Messages on the fabric live in a slab: numbered slots, the last freed reused first, so a
//! message is named by a `u32` in the event queue and in mailboxes.
//!
//! The slots sit in fixed chunks of [`CHUNK`] that never move. A growing `Vec` of slots
//! would double and copy: at 100,000 GPUs the 700,000 messages of a hierarchical all-reduce's
//! intra-node phase are in flight at once, and each doubling left the previous array behind,
//! about 90 MiB of slots written once and freed, every page of it faulted in. Only the chunks
//! used are touched (a new chunk is written whole, 4,096 empty slots), and one more load (the
//! chunk's address, from a table of a few hundred entries that stays in cache) finds a slot.

use crate::prefetch::prefetch;

/// Slots a chunk holds: at the world's 64-byte messages, 256 KiB.
const CHUNK: usize = 1 << 12;

pub struct Slab<T> {
    chunks: Vec<Box<[Option<T>]>>,
    /// Slots freed and not yet reused; the last one is filled next.
    free: Vec<u32>,
    /// Slots ever used: the next fresh slot when `free` is empty.
    used: u32,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            chunks: Vec::new(),
            free: Vec::new(),
            used: 0,
        }
    }
}

impl<T> Slab<T> {
    /// Stores `value` in a free slot and returns its number.
    pub fn insert(&mut self, value: T) -> u32 {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = self.used;
                self.used = slot.checked_add(1).expect("fewer than 2^32 slots");
                if slot as usize / CHUNK == self.chunks.len() {
                    self.chunks.push((0..CHUNK).map(|_| None).collect());
                }
                slot
            }
        };
        let entry = self.entry_mut(slot);
        debug_assert!(entry.is_none(), "slot {slot} is free");
        *entry = Some(value);
        // Filling a slot first reads what it held (to drop it), and a slot freed a while ago is
        // out of cache at 100,000 ranks: start loading the one the next insert will take.
        if let Some(&next) = self.free.last() {
            self.prefetch(next);
        }
        slot
    }

    /// Empties `slot` and returns what it held.
    pub fn take(&mut self, slot: u32) -> Option<T> {
        let value = self.entry_mut(slot).take();
        if value.is_some() {
            self.free.push(slot);
        }
        value
    }

    pub fn get(&self, slot: u32) -> Option<&T> {
        self.entry(slot).as_ref()
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.entry_mut(slot).as_mut()
    }

    /// Starts loading `slot` into the cache.
    #[inline(always)]
    pub fn prefetch(&self, slot: u32) {
        prefetch(self.entry(slot));
    }

    /// Slots in use now.
    pub fn len(&self) -> usize {
        self.used as usize - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline(always)]
    fn entry(&self, slot: u32) -> &Option<T> {
        &self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
    }

    #[inline(always)]
    fn entry_mut(&mut self, slot: u32) -> &mut Option<T> {
        &mut self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
    }
}

#[cfg(test)]
mod tests {
    use super::{Slab, CHUNK};

    #[test]
    fn slots_are_reused_last_freed_first_and_survive_chunk_growth() {
        let mut slab = Slab::default();
        let slots: Vec<u32> = (0..CHUNK as u32 + 10).map(|i| slab.insert(i)).collect();
        assert_eq!(slots, (0..CHUNK as u32 + 10).collect::<Vec<_>>());
        assert_eq!(slab.len(), CHUNK + 10);
        assert_eq!(slab.take(3), Some(3));
        assert_eq!(slab.take(3), None, "a slot is emptied once");
        assert_eq!(slab.take(CHUNK as u32 + 1), Some(CHUNK as u32 + 1));
        assert_eq!(slab.insert(100), CHUNK as u32 + 1);
        assert_eq!(slab.insert(101), 3);
        assert_eq!(slab.insert(102), CHUNK as u32 + 10, "then fresh slots");
        *slab.get_mut(3).unwrap() += 1;
        assert_eq!(slab.get(3), Some(&102));
        assert_eq!(slab.get(5), Some(&5));
        assert_eq!(slab.len(), CHUNK + 11);
    }
}
