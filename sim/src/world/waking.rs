//! How a woken rank reaches its executor: through its task's waker (madsim), or listed for the
//! executor to take in rank order (the FIFO executor, which needs no wakers). The world decides
//! who wakes; this part only passes it on.

use std::task::Waker;

pub(super) struct Waking {
    /// Wake ranks through their wakers (madsim), or only list them in `woken` (FIFO).
    use_wakers: bool,
    /// Per rank, madsim only: the waker of its task.
    wakers: Vec<Option<Waker>>,
    /// Ranks woken since the last `take_woken`, in the order woken.
    woken: Vec<u32>,
    /// One bit per rank, scratch for putting a long `woken` list in rank order.
    woken_bits: Vec<u64>,
}

impl Waking {
    pub(super) fn new(rank_count: usize) -> Waking {
        Waking {
            use_wakers: true,
            wakers: (0..rank_count).map(|_| None).collect(),
            woken: Vec::new(),
            woken_bits: vec![0; rank_count.div_ceil(64)],
        }
    }

    /// List woken ranks for [`Waking::take_woken`] instead of calling wakers.
    pub(super) fn list_instead_of_waking(&mut self) {
        self.use_wakers = false;
        self.wakers = Vec::new();
    }

    /// Keeps `waker` for `rank`'s next wake-up (madsim only).
    #[inline(always)]
    pub(super) fn register(&mut self, rank: usize, waker: &Waker) {
        if self.use_wakers {
            match &mut self.wakers[rank] {
                Some(existing) if existing.will_wake(waker) => {}
                slot => *slot = Some(waker.clone()),
            }
        }
    }

    /// Passes `rank`'s wake-up on to its executor.
    #[inline(always)]
    pub(super) fn notify(&mut self, rank: usize) {
        if self.use_wakers {
            if let Some(waker) = &self.wakers[rank] {
                waker.wake_by_ref();
            }
        } else {
            self.woken.push(rank as u32);
        }
    }

    /// Ranks woken since the last call, in rank order (which keeps the executor's walk over
    /// rank futures and rank state sequential in memory). A few woken ranks (a training step's
    /// many sparse instants) are sorted; many (a collective's dense instants) are put in order
    /// through a bitmap, which costs one pass over `rank_count / 64` words instead of a sort.
    pub(super) fn take_woken(&mut self, into: &mut Vec<u32>) {
        into.clear();
        if self.woken.len() < self.woken_bits.len() {
            std::mem::swap(into, &mut self.woken);
            into.sort_unstable();
            return;
        }
        for &rank in &self.woken {
            self.woken_bits[rank as usize / 64] |= 1 << (rank % 64);
        }
        into.reserve(self.woken.len());
        for (word_idx, word) in self.woken_bits.iter_mut().enumerate() {
            let mut bits = std::mem::take(word);
            while bits != 0 {
                into.push((word_idx * 64) as u32 + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        self.woken.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::Waking;

    /// Both ways of ordering the woken list, a sort for a few and a bitmap for many, give the
    /// ranks in rank order, each once per wake-up.
    #[test]
    fn woken_ranks_come_back_in_rank_order() {
        let mut waking = Waking::new(1000);
        waking.list_instead_of_waking();
        let mut out = Vec::new();
        for rank in [7, 3, 999] {
            waking.notify(rank);
        }
        waking.take_woken(&mut out);
        assert_eq!(out, [3, 7, 999]);
        let many: Vec<usize> = (0..1000).rev().step_by(3).collect();
        for &rank in &many {
            waking.notify(rank);
        }
        waking.take_woken(&mut out);
        let mut expected: Vec<u32> = many.iter().map(|&r| r as u32).collect();
        expected.sort_unstable();
        assert_eq!(out, expected);
        waking.take_woken(&mut out);
        assert!(out.is_empty());
    }
}
