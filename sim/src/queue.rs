//! The model clock's event queue: a radix heap over u64 nanoseconds.
//!
//! Model time never goes backwards, which is what a radix heap needs: an event is filed in the
//! bucket of the highest bit where its time differs from the last time popped, and each event
//! moves down at most 64 buckets over its life. Push is O(1), and popping an instant costs about
//! one pass over the events that share its bucket, without the cache misses of a binary heap of
//! 100,000 in-flight messages.
//!
//! Within one instant, events come out in an order fixed by the sequence of pushes and pops, so
//! the same run fires them in the same order.

pub struct RadixQueue<T> {
    last_ns: u64,
    len: usize,
    /// Per bucket, its events in push order, in blocks of [`BLOCK`]; only a bucket's last
    /// block may be part full.
    buckets: Vec<Vec<Block<T>>>,
    /// Empty blocks, keeping their allocation, for the next bucket that needs one.
    spare: Vec<Block<T>>,
    /// Bit `b` set: bucket `b` holds events. The lowest set bit finds the next instant's
    /// bucket without a scan (a training step pops two million instants).
    occupied: u128,
}

type Block<T> = Vec<(u64, T)>;

/// Events a block holds. Buckets share one pool of blocks, so the queue holds at most its peak
/// count of events at once over `BLOCK` blocks, plus one part-full block per bucket. With a
/// growable vector per bucket, each of the 65 kept the capacity of the most events it had ever
/// held, and at 100,000 GPUs (700,000 deliveries in flight, passing through several buckets on
/// their way down) that was 77 MiB of vectors for 17 MiB of events.
const BLOCK: usize = 256;

impl<T> Default for RadixQueue<T> {
    fn default() -> Self {
        RadixQueue {
            last_ns: 0,
            len: 0,
            buckets: (0..65).map(|_| Vec::new()).collect(),
            spare: Vec::new(),
            occupied: 0,
        }
    }
}

impl<T> RadixQueue<T> {
    fn bucket_of(&self, time_ns: u64) -> usize {
        (64 - (time_ns ^ self.last_ns).leading_zeros()) as usize
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Files an event at `time_ns`, which must not be before the last instant popped.
    pub fn push(&mut self, time_ns: u64, item: T) {
        assert!(
            time_ns >= self.last_ns,
            "an event in the past: {time_ns} < {}",
            self.last_ns
        );
        let bucket = self.bucket_of(time_ns);
        self.file(bucket, time_ns, item);
        self.len += 1;
    }

    /// Appends an event to `bucket`'s last block, or to a fresh one when that is full.
    #[inline(always)]
    fn file(&mut self, bucket: usize, time_ns: u64, item: T) {
        self.occupied |= 1 << bucket;
        let blocks = &mut self.buckets[bucket];
        match blocks.last_mut() {
            Some(block) if block.len() < BLOCK => block.push((time_ns, item)),
            _ => {
                let mut block = self
                    .spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(BLOCK));
                block.push((time_ns, item));
                blocks.push(block);
            }
        }
    }

    /// Moves every event of the earliest instant into `out` and returns that instant.
    pub fn pop_instant(&mut self, out: &mut Vec<T>) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        if self.buckets[0].is_empty() {
            debug_assert_ne!(self.occupied, 0, "len > 0");
            let bucket = self.occupied.trailing_zeros() as usize;
            self.occupied &= !(1 << bucket);
            let mut blocks = std::mem::take(&mut self.buckets[bucket]);
            self.last_ns = blocks
                .iter()
                .flatten()
                .map(|(t, _)| *t)
                .min()
                .expect("non-empty");
            for mut block in blocks.drain(..) {
                for (time_ns, item) in block.drain(..) {
                    let lower = self.bucket_of(time_ns);
                    debug_assert!(lower < bucket);
                    self.file(lower, time_ns, item);
                }
                self.spare.push(block);
            }
            // The emptied list keeps its allocation for the bucket's next events.
            self.buckets[bucket] = blocks;
        }
        self.occupied &= !1;
        let mut blocks = std::mem::take(&mut self.buckets[0]);
        for mut block in blocks.drain(..) {
            self.len -= block.len();
            out.extend(block.drain(..).map(|(_, item)| item));
            self.spare.push(block);
        }
        self.buckets[0] = blocks;
        Some(self.last_ns)
    }

    /// Up to `max` events of the bucket the next [`RadixQueue::pop_instant`] starts from, in
    /// filing order: the next instant's, and perhaps some later ones that share its bucket.
    /// For prefetching only; what the next pop returns is decided by the pop.
    pub fn peek_next(&self, max: usize) -> impl Iterator<Item = &T> {
        let blocks: &[Block<T>] = match self.occupied {
            0 => &[],
            occupied => &self.buckets[occupied.trailing_zeros() as usize],
        };
        blocks.iter().flatten().take(max).map(|(_, item)| item)
    }
}

#[cfg(test)]
mod tests {
    use super::{RadixQueue, BLOCK};

    /// Against a sorted reference, with pushes interleaved between pops as a simulation does,
    /// in bursts small and larger than a block.
    #[test]
    fn pops_instants_in_time_order_with_every_event() {
        let mut queue = RadixQueue::default();
        let mut reference = std::collections::BTreeMap::<u64, Vec<u32>>::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut now = 0;
        let mut out = Vec::new();
        let mut id = 0u32;
        for round in 0..2000 {
            let burst = [4, 4, 4, 3 * BLOCK as u64][round % 4];
            for _ in 0..(next() % burst) {
                let at = now + next() % [1, 10, 1000, 1 << 40, 7][round % 5];
                queue.push(at, id);
                reference.entry(at).or_default().push(id);
                id += 1;
            }
            if let Some(instant) = queue.pop_instant(&mut out) {
                let (&expected, ids) = reference.iter().next().unwrap();
                assert_eq!(instant, expected);
                let mut popped = out.clone();
                popped.sort_unstable();
                assert_eq!(&popped, ids, "every event of the instant, once");
                reference.remove(&expected);
                out.clear();
                now = instant;
            }
        }
        assert_eq!(queue.len(), reference.values().map(Vec::len).sum::<usize>());
    }

    /// `peek_next` shows what the next pop starts from, and a pop is unchanged by it.
    #[test]
    fn peek_next_shows_the_next_instants_bucket() {
        let mut queue = RadixQueue::default();
        assert_eq!(queue.peek_next(8).count(), 0);
        for (at, id) in [(1 << 40, 0u32), (9, 1), (5, 2), (5, 3)] {
            queue.push(at, id);
        }
        // Against the last pop (0), times 5 and 9 differ highest in bits 2 and 3: buckets 3
        // and 4, so 5 sits alone in the lowest bucket.
        assert_eq!(queue.peek_next(8).copied().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(queue.peek_next(1).copied().collect::<Vec<_>>(), [2]);
        let mut out = Vec::new();
        assert_eq!(queue.pop_instant(&mut out), Some(5));
        assert_eq!(out, [2, 3]);
        assert_eq!(queue.peek_next(8).copied().collect::<Vec<_>>(), [1]);
        out.clear();
        assert_eq!(queue.pop_instant(&mut out), Some(9));
        out.clear();
        assert_eq!(queue.pop_instant(&mut out), Some(1 << 40));
        assert_eq!(out, [0]);
        assert_eq!(queue.peek_next(8).count(), 0);
        assert_eq!(queue.pop_instant(&mut out), None);
    }

    /// Events of one instant pushed together come out in push order, across blocks.
    #[test]
    fn an_instant_keeps_push_order_across_blocks() {
        let mut queue = RadixQueue::default();
        let ids: Vec<u32> = (0..5 * BLOCK as u32 + 3).collect();
        for &id in &ids {
            queue.push(1_000 + u64::from(id % 2), id);
        }
        let mut out = Vec::new();
        assert_eq!(queue.pop_instant(&mut out), Some(1_000));
        let evens: Vec<u32> = ids.iter().copied().filter(|id| id % 2 == 0).collect();
        assert_eq!(out, evens);
        out.clear();
        assert_eq!(queue.pop_instant(&mut out), Some(1_001));
        assert_eq!(out.len(), ids.len() - evens.len());
        assert!(out.windows(2).all(|w| w[0] < w[1]));
        assert!(queue.is_empty());
    }
}
