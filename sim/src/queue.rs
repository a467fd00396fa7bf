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
    buckets: Vec<Vec<(u64, T)>>,
    /// An empty vector with capacity, swapped in for a bucket being emptied so that no
    /// bucket gives up its allocation: buckets refill every instant.
    spare: Vec<(u64, T)>,
}

impl<T> Default for RadixQueue<T> {
    fn default() -> Self {
        RadixQueue {
            last_ns: 0,
            len: 0,
            buckets: (0..65).map(|_| Vec::new()).collect(),
            spare: Vec::new(),
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
        self.buckets[bucket].push((time_ns, item));
        self.len += 1;
    }

    /// Moves every event of the earliest instant into `out` and returns that instant.
    pub fn pop_instant(&mut self, out: &mut Vec<T>) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        if self.buckets[0].is_empty() {
            let bucket = self
                .buckets
                .iter()
                .position(|b| !b.is_empty())
                .expect("len > 0");
            let mut items =
                std::mem::replace(&mut self.buckets[bucket], std::mem::take(&mut self.spare));
            self.last_ns = items.iter().map(|(t, _)| *t).min().expect("non-empty");
            for (time_ns, item) in items.drain(..) {
                let lower = self.bucket_of(time_ns);
                debug_assert!(lower < bucket);
                self.buckets[lower].push((time_ns, item));
            }
            self.spare = items;
        }
        let instant = &mut self.buckets[0];
        self.len -= instant.len();
        out.extend(instant.drain(..).map(|(_, item)| item));
        Some(self.last_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::RadixQueue;

    /// Against a sorted reference, with pushes interleaved between pops as a simulation does.
    #[test]
    fn pops_instants_in_time_order_with_every_event() {
        let mut queue = RadixQueue::default();
        let mut reference = std::collections::BTreeMap::<u64, usize>::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut now = 0;
        let mut out = Vec::new();
        for round in 0..2000 {
            for _ in 0..(next() % 4) {
                let at = now + next() % [1, 10, 1000, 1 << 40][round % 4];
                queue.push(at, ());
                *reference.entry(at).or_default() += 1;
            }
            if let Some(instant) = queue.pop_instant(&mut out) {
                let (&expected, &count) = reference.iter().next().unwrap();
                assert_eq!(instant, expected);
                assert_eq!(out.len(), count);
                reference.remove(&expected);
                out.clear();
                now = instant;
            }
        }
        assert_eq!(queue.len(), reference.values().sum::<usize>());
    }
}
