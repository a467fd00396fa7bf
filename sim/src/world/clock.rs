//! The model clock: the time now, in nanoseconds of model time, and the events still to fire,
//! in the radix queue (time, then the order they were scheduled in). Model time moves only
//! here, and only forward, to the next instant that has events.

use super::EventKind;
use crate::queue::RadixQueue;

use trainer_core::units::MAX_MODEL_TIME_NS;

#[derive(Default)]
pub(super) struct Clock {
    now_ns: u64,
    queue: RadixQueue<EventKind>,
    /// The events of the instant being fired (kept to reuse its allocation).
    firing: Vec<EventKind>,
    /// The first event time past the horizon: the run cannot represent it and stops.
    passed_horizon_at_ns: Option<u64>,
}

impl Clock {
    #[inline(always)]
    pub(super) fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// Files `what` to fire at `time_ns`, after the events already filed for that instant.
    /// An event past [`MAX_MODEL_TIME_NS`] is not filed: the clock stops there instead.
    #[inline(always)]
    pub(super) fn schedule(&mut self, time_ns: u64, what: EventKind) {
        debug_assert!(time_ns >= self.now_ns, "an event in the past: {what:?}");
        if time_ns >= MAX_MODEL_TIME_NS {
            self.passed_horizon_at_ns.get_or_insert(time_ns);
            return;
        }
        self.queue.push(time_ns, what);
    }

    /// The first event time past the horizon, if there was one.
    pub(super) fn passed_horizon_at_ns(&self) -> Option<u64> {
        self.passed_horizon_at_ns
    }

    /// Moves the clock to the next instant with events and hands them over, in the order they
    /// were filed; `None` when nothing is left, or once an event was due past the horizon. Give the buffer back with
    /// [`Clock::done_firing`].
    #[inline(always)]
    pub(super) fn next_instant(&mut self) -> Option<Vec<EventKind>> {
        if self.passed_horizon_at_ns.is_some() {
            return None;
        }
        let mut firing = std::mem::take(&mut self.firing);
        let instant_ns = self.queue.pop_instant(&mut firing)?;
        debug_assert!(instant_ns >= self.now_ns);
        self.now_ns = instant_ns;
        Some(firing)
    }

    /// Takes back the buffer [`Clock::next_instant`] handed over, emptied, for the next one.
    #[inline(always)]
    pub(super) fn done_firing(&mut self, mut firing: Vec<EventKind>) {
        firing.clear();
        self.firing = firing;
    }

    /// The next events the queue will hand over, up to `max`, for prefetching.
    #[inline(always)]
    pub(super) fn peek_next(&self, max: usize) -> impl Iterator<Item = &EventKind> {
        self.queue.peek_next(max)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::EventKind;
    use super::Clock;

    #[test]
    fn instants_come_in_time_order_and_an_instants_events_in_filing_order() {
        let mut clock = Clock::default();
        clock.schedule(20, EventKind::Watchdog);
        clock.schedule(10, EventKind::Restart);
        clock.schedule(20, EventKind::CorruptBlob);
        clock.schedule(10, EventKind::RandomCrash);
        let first = clock.next_instant().unwrap();
        assert_eq!(clock.now_ns(), 10);
        assert_eq!(first, [EventKind::Restart, EventKind::RandomCrash]);
        clock.done_firing(first);
        let second = clock.next_instant().unwrap();
        assert_eq!(clock.now_ns(), 20);
        assert_eq!(second, [EventKind::Watchdog, EventKind::CorruptBlob]);
        clock.done_firing(second);
        assert!(clock.is_empty());
        assert!(clock.next_instant().is_none());
        assert_eq!(clock.now_ns(), 20, "time stays where the last event was");
    }
}
