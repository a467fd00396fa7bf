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

#[cfg(test)]
mod tests {
    use super::super::{World, WorldConfig};

    /// Two nodes of 8 on the default H100 fabric (NVLink 450 GB/s, NICs 50 GB/s), one run
    /// step, and `faults`.
    fn world(faults: &str) -> World {
        let text = format!(
            "[cluster]\ngpus = 16\n[job]\nsteps = 1\n[recovery]\nheartbeat_interval = \
             \"0s\"\n{faults}"
        );
        let scenario = faultline_scenario::load_str("t", "t.toml", &text, &[]).unwrap();
        World::new(WorldConfig::of(&scenario))
    }

    fn degrade(target: &str, bandwidth: f64, extra: &str) -> String {
        format!("[[faults.degrade]]\n{target}\nbandwidth = {bandwidth}\nat = \"0s\"\n{extra}")
    }

    /// Without contention a transfer takes alpha-beta: the route's latencies plus its bytes
    /// over the bottleneck, which a degrade divides by the bandwidth it keeps, exactly.
    #[test]
    fn a_degraded_links_transfers_take_one_over_bandwidth_times_as_long() {
        let nic_latency = 1_500;
        let nvlink_latency = 1_000;
        // Across nodes on one rail: 50 MB over 50 GB/s NICs, 1 ms at full speed.
        assert_eq!(
            world("").transfer(2, 10, 50_000_000),
            1_000_000 + 2 * nic_latency
        );
        for (bandwidth, expected_ns) in [(1.0, 1_000_000), (0.5, 2_000_000), (0.25, 4_000_000)] {
            let mut w = world(&degrade("nic = 2", bandwidth, ""));
            assert_eq!(w.transfer(2, 10, 50_000_000), expected_ns + 2 * nic_latency);
            // The receiver's NIC is the same link in the other direction: slowed too.
            let mut w = world(&degrade("nic = 10", bandwidth, ""));
            assert_eq!(w.transfer(2, 10, 50_000_000), expected_ns + 2 * nic_latency);
        }
        // A tenth, within the nanosecond the byte count rounds to.
        let took = world(&degrade("nic = 2", 0.1, "")).transfer(2, 10, 50_000_000);
        assert!(took.abs_diff(10_000_000 + 2 * nic_latency) <= 1, "{took}");
        // A node's NVLinks: 450 MB inside node 1 at half speed; node 0's are not slowed.
        let mut w = world(&degrade("nvlink = 1", 0.5, ""));
        assert_eq!(
            w.transfer(8, 9, 450_000_000),
            2_000_000 + 2 * nvlink_latency
        );
        assert_eq!(
            w.transfer(0, 1, 450_000_000),
            1_000_000 + 2 * nvlink_latency
        );
        // Another rail's NIC is untouched; a degrade not begun yet slows nothing.
        let mut w = world(&degrade("link = \"nic:gpu=2\"", 0.25, ""));
        assert_eq!(w.transfer(3, 11, 50_000_000), 1_000_000 + 2 * nic_latency);
        let later = degrade("nic = 2", 0.25, "").replace("at = \"0s\"", "at = \"1s\"");
        assert_eq!(
            world(&later).transfer(2, 10, 50_000_000),
            1_000_000 + 2 * nic_latency
        );
    }

    /// A lost transfer arrives after the retransmission timeout and its link time again, once
    /// per resend; the resends are drawn from the root seed's stream, the same every time.
    #[test]
    fn each_retransmission_costs_the_timeout_and_the_link_time_again() {
        let faults = degrade(
            "nic = 2",
            1.0,
            "loss = 0.5\n[fabric]\nretransmit_timeout = \"1ms\"",
        );
        let draws = |faults: &str| {
            let mut w = world(faults);
            let mut arrivals = Vec::new();
            for _ in 0..40 {
                // One transfer at a time: each from an idle fabric, an hour apart.
                let start = w.clock.now_ns() + arrivals.len() as u64 * 3_600_000_000_000;
                arrivals.push(w.transfer_from(2, 10, 50_000_000, start) - start);
            }
            (arrivals, w.slow_links.retransmissions)
        };
        let (arrivals, books) = draws(&faults);
        let once = 1_000_000 + 2 * 1_500;
        for &took in &arrivals {
            // The first attempt, then k x (the timeout, then the transfer again).
            let resends = (took - once) / (1_000_000 + once);
            assert_eq!(took, once + resends * (1_000_000 + once), "{arrivals:?}");
        }
        assert!(books.resends > 5 && books.transfers < 40, "{books:?}");
        let resends: u64 = arrivals
            .iter()
            .map(|t| (t - once) / (1_000_000 + once))
            .sum();
        assert_eq!(resends, books.resends);
        // Deterministic: the same draws again; another seed, others.
        assert_eq!(draws(&faults).0, arrivals);
        let other = format!("{faults}\n[run]\nseed = 2\n");
        assert_ne!(draws(&other).0, arrivals);
    }
}
