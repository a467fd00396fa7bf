//! Slow links: the one mechanism by which a link carries less than its bandwidth for a while,
//! and loses some of what crosses it. A NIC straggler (`[[faults.straggler]] kind = "nic"`)
//! and a fail-slow degrade (`[[faults.degrade]]`, `world/degrades.rs`) both become windows
//! here: per directed link, a factor that divides its bandwidth and a loss rate, each over
//! `from_ns..until_ns` of model time. `World::reserve_route` asks for them only when some
//! window exists or may come (`SlowLinks::any`), so the hot path of a run without slow links
//! is one untaken branch, as it was.
//!
//! Loss: a transfer crossing a lossy link is lost with the route's combined loss rate; the
//! sender notices after the retransmission timeout and sends it again, which takes the
//! route's link time again. The number of retransmissions is drawn (geometric, capped at
//! `MAX_RETRANSMISSIONS`) from the retransmission stream of the root seed, in the order the
//! world reserves transfers in, which is the model's (by sender, each sender's in its order),
//! so the draws do not depend on the executor.

use std::collections::BTreeMap;

use faultline_scenario::config::MAX_RETRANSMISSIONS;
use rand_chacha::ChaCha8Rng;

use super::World;
use crate::fabric::MAX_ROUTE_LINKS;
use crate::rng::RngStream;
use crate::topology::{LinkId, Route};

/// What put a window on a link: its end can be brought forward (an evicted straggler).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cause {
    /// `[[faults.straggler]]` entry `idx`, of kind NIC.
    Straggler(u32),
    /// Degrade `idx` (scheduled ones first, then random ones as they come).
    Degrade(u32),
}

/// One directed link's slowdown over `from_ns..until_ns`.
#[derive(Clone, Copy, Debug)]
struct Window {
    from_ns: u64,
    until_ns: u64,
    /// What divides the link's bandwidth (1 / the bandwidth a degrade keeps).
    factor: f64,
    /// The chance that one crossing is lost.
    loss: f64,
    cause: Cause,
}

impl Window {
    fn covers(&self, now_ns: u64) -> bool {
        self.from_ns <= now_ns && now_ns < self.until_ns
    }
}

/// What the retransmissions cost, for the report.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Retransmissions {
    /// Transfers resent at least once.
    pub transfers: u64,
    /// Resends in all.
    pub resends: u64,
    /// Over those transfers: how much later they arrived than their first attempt would have.
    pub delay_ns: u64,
}

#[derive(Default)]
pub(super) struct SlowLinks {
    /// Per directed link with a window: its windows, in the order they were added.
    windows: BTreeMap<LinkId, Vec<Window>>,
    /// Windows exist, or may be added while the run goes (random degrades).
    any: bool,
    /// How long a sender waits before resending a lost transfer.
    retransmit_timeout_ns: u64,
    /// The retransmission draws' own stream, made at the first lossy transfer.
    rng: Option<ChaCha8Rng>,
    pub(super) retransmissions: Retransmissions,
}

impl SlowLinks {
    /// Whether transfers must look up their links' windows.
    #[inline]
    pub(super) fn any(&self) -> bool {
        self.any
    }

    /// Windows may be added later (random degrades): transfers must look.
    pub(super) fn expect_windows(&mut self, retransmit_timeout_ns: u64) {
        self.any = true;
        self.retransmit_timeout_ns = retransmit_timeout_ns;
    }

    /// Slows `link` by `factor` and makes it lose `loss` of its crossings over the window.
    pub(super) fn add(
        &mut self,
        link: LinkId,
        (from_ns, until_ns): (u64, u64),
        factor: f64,
        loss: f64,
        cause: Cause,
    ) {
        self.any = true;
        let window = Window {
            from_ns,
            until_ns,
            factor,
            loss,
            cause,
        };
        self.windows.entry(link).or_default().push(window);
    }

    /// The windows of `cause` end at `now_ns` at the latest (its hardware was replaced).
    pub(super) fn end(&mut self, cause: Cause, now_ns: u64) {
        for window in self.windows.values_mut().flatten() {
            if window.cause == cause {
                window.until_ns = window.until_ns.min(now_ns);
            }
        }
    }

    /// `link`'s factor (the product of those in force, in the order they were added; 1 for
    /// none) and the chance that a crossing gets through, now.
    fn at(&self, link: LinkId, now_ns: u64) -> (f64, f64) {
        let Some(windows) = self.windows.get(&link) else {
            return (1.0, 1.0);
        };
        let active = windows.iter().filter(|w| w.covers(now_ns));
        active.fold((1.0, 1.0), |(factor, through), w| {
            (factor * w.factor, through * (1.0 - w.loss))
        })
    }

    /// How many times a transfer that gets through with chance `through` is resent: the
    /// failures before its first success, at most `MAX_RETRANSMISSIONS`.
    fn draw_resends(&mut self, through: f64, seed: u64) -> u32 {
        use rand::Rng;
        let rng = self
            .rng
            .get_or_insert_with(|| RngStream::Retransmissions.rng(seed));
        let mut resends = 0;
        while resends < MAX_RETRANSMISSIONS && !rng.gen_bool(through) {
            resends += 1;
        }
        resends
    }
}

impl World {
    /// [`World::reserve_route`] when some link may be slow: each link's factor, and the
    /// transfer sent again after the retransmission timeout as many times as it is lost.
    pub(super) fn reserve_slowed(&mut self, route: Route, bytes: u64, earliest_ns: u64) -> u64 {
        let now_ns = self.clock.now_ns();
        let mut factors = [1.0; MAX_ROUTE_LINKS];
        let mut through = 1.0;
        for (factor, &link) in factors.iter_mut().zip(route.links()) {
            let (f, t) = self.slow_links.at(link, now_ns);
            *factor = f;
            through *= t;
        }
        let first = (self.fabric).reserve(route, bytes, earliest_ns, now_ns, Some(&factors));
        if through >= 1.0 {
            return first;
        }
        let resends = self.slow_links.draw_resends(through, self.seed);
        let mut arrival_ns = first;
        let timeout_ns = self.slow_links.retransmit_timeout_ns;
        for _ in 0..resends {
            // The sender resends once the timeout after the lost attempt has passed; the
            // resend takes the route's link time again, at the slowdowns of now.
            let resend_ns = arrival_ns.saturating_add(timeout_ns);
            arrival_ns = (self.fabric).reserve(route, bytes, resend_ns, now_ns, Some(&factors));
        }
        if resends > 0 {
            let books = &mut self.slow_links.retransmissions;
            books.transfers += 1;
            books.resends += u64::from(resends);
            books.delay_ns += arrival_ns - first;
        }
        arrival_ns
    }
}
