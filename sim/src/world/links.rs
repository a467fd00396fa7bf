//! Link flaps and the transport policy. A flap takes a full-duplex link down for a while,
//! `count` times every `period`. A transfer picks its route when it starts: the usual ECMP
//! route if every link of it is up, else another spine of the same leaf if one is up (the
//! fabric reroutes), else there is no path, and the transport decides: `plain` loses the
//! transfer (the receiver waits until the collective watchdog fires and the job recovers as
//! after a crash); `retry` tries again after a bounded exponential backoff
//! (trainer-core's `RetryPolicy`), rerouting each attempt, until its budget is spent.

use faultline_scenario::config::{LinkFaultConfig, Transport};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use statrs::distribution::Exp;

use super::digest_tag::DigestTag;
use super::{EventKind, World, DEAD};
use crate::books::{FaultKind, LostCause, RarePath};
use crate::rng::RngStream;
use crate::topology::{LinkId, Route};

/// What the report says about link flaps (present only when the scenario has some).
#[derive(Clone, Debug, Default, Serialize)]
pub struct LinkFlapReport {
    pub transport: &'static str,
    /// Times a link went down.
    pub flaps: u64,
    /// Transfers that found their usual route down and took another spine.
    pub transfers_rerouted: u64,
    /// Transfers that found no path and were retried (retry transport).
    pub transfers_retried: u64,
    /// Retries made, over all retried transfers.
    pub retry_attempts: u64,
    /// Transfers lost: no path on a plain transport, or the retry budget spent.
    pub transfers_lost: u64,
    /// Job aborts that followed lost transfers (the watchdog's detection).
    pub detections: u64,
    /// From the first transfer lost to the job's abort, over those detections.
    pub detection_latency_ns_mean: u64,
    pub detection_latency_ns_max: u64,
    /// Model time during which at least one transfer was held back retrying: the time the
    /// retries cost (also `lost_time_ns_by_cause.link_flap_retry`).
    pub retry_time_ns: u64,
}

/// The world's link state and flap books.
#[derive(Default)]
pub(super) struct LinkFaults {
    config: LinkFaultConfig,
    /// Per directed link, while flaps are configured: down until this time.
    down_until_ns: Vec<u64>,
    /// Transfers waiting for a retry now, and since when at least one has.
    retrying: u64,
    retrying_since_ns: u64,
    /// The first transfer lost since the last abort.
    lost_since_ns: Option<u64>,
    detection_latency_total_ns: u64,
    report: LinkFlapReport,
    /// The random flaps' own stream: other subsystems' draws never shift it.
    rng: Option<ChaCha8Rng>,
}

impl LinkFaults {
    /// Whether sends must look at link state (flaps are configured).
    #[inline]
    pub(super) fn active(&self) -> bool {
        !self.down_until_ns.is_empty()
    }
}

impl World {
    /// Installs the flaps and schedules each series' first one.
    pub(super) fn configure_link_faults(&mut self, config: LinkFaultConfig) {
        let mut faults = LinkFaults::default();
        if config.any() {
            faults.down_until_ns = vec![0; self.fabric.topology.link_count()];
        }
        if config.random_flap_rate_per_link_per_ns > 0.0 {
            let mut rng = RngStream::LinkFlaps.rng(self.seed);
            let rate = config.random_flap_rate_per_link_per_ns
                * self.fabric.topology.flappable_link_count() as f64;
            let at = next_flap_ns(&mut rng, rate, 0);
            faults.rng = Some(rng);
            self.schedule(at, EventKind::RandomLinkFlap);
        }
        for (idx, flap) in config.flaps.iter().enumerate() {
            let what = EventKind::LinkFlap {
                idx: idx as u32,
                repeat: 0,
            };
            self.schedule(flap.at_ns, what);
        }
        faults.report.transport = config.transport.name();
        faults.config = config;
        self.links = faults;
    }

    pub fn link_flap_report(&self) -> Option<LinkFlapReport> {
        if !self.links.config.any() {
            return None;
        }
        let mut report = self.links.report.clone();
        report.detection_latency_ns_mean = self
            .links
            .detection_latency_total_ns
            .checked_div(report.detections)
            .unwrap_or(0);
        Some(report)
    }

    /// Repeat `repeat` of flap series `idx`: the link goes down now.
    pub(super) fn fire_link_flap(&mut self, idx: u32, repeat: u32) {
        if self.all_finished() {
            return;
        }
        let flap = &self.links.config.flaps[idx as usize];
        let (link, down_ns) = (self.fabric.topology.link_ids(flap.link).0, flap.down_ns);
        let next = (repeat + 1 < flap.count).then(|| self.clock.now_ns() + flap.period_ns);
        self.take_link_down(link, down_ns);
        if let Some(at) = next {
            let what = EventKind::LinkFlap {
                idx,
                repeat: repeat + 1,
            };
            self.schedule(at, what);
        }
    }

    /// The next arrival of the random flap process: a link drawn uniformly from the
    /// flappable ones goes down.
    pub(super) fn fire_random_link_flap(&mut self) {
        if self.all_finished() {
            return;
        }
        let config = &self.links.config;
        let rate = config.random_flap_rate_per_link_per_ns
            * self.fabric.topology.flappable_link_count() as f64;
        let down_ns = config.random_flap_down_ns;
        let rng = self.links.rng.as_mut().expect("random flaps have a stream");
        use rand::Rng;
        let idx = rng.gen_range(0..self.fabric.topology.flappable_link_count());
        let next = next_flap_ns(rng, rate, self.clock.now_ns());
        let link = self.fabric.topology.flappable_link(idx);
        self.take_link_down(link, down_ns);
        self.schedule(next, EventKind::RandomLinkFlap);
    }

    /// Both directions of the link whose first direction is `link` go down for `down_ns`.
    fn take_link_down(&mut self, link: LinkId, down_ns: u64) {
        let until = self.clock.now_ns() + down_ns;
        for directed in [link, link + 1] {
            let slot = &mut self.links.down_until_ns[directed as usize];
            *slot = (*slot).max(until);
        }
        self.links.report.flaps += 1;
        self.count_injected(FaultKind::LinkFlap);
        self.record_injected(None, FaultKind::LinkFlap, |world| {
            format!("link {}", world.fabric.topology.link_name(link))
        });
        self.digest.u64(DigestTag::LinkDown.word(link as u64));
        self.digest.u64(until);
    }

    fn link_up(&self, link: LinkId) -> bool {
        self.links.down_until_ns[link as usize] <= self.clock.now_ns()
    }

    /// A route from `from` to `to` whose links are all up now: the usual one, or the same
    /// path through another spine.
    fn live_route(&mut self, from: usize, to: usize) -> Option<Route> {
        let now_ns = self.clock.now_ns();
        let route = self.fabric.route(from, to, now_ns);
        if route.links().iter().all(|&l| self.link_up(l)) {
            return Some(route);
        }
        let spines = self.fabric.topology.spines_per_leaf();
        let usual = self.fabric.spine_for(from, to, now_ns);
        for k in 1..spines {
            let other = (self.fabric.topology).route_via_spine(from, to, (usual + k) % spines);
            if other == route {
                break; // the route crosses no spine: there is no alternative
            }
            if other.links().iter().all(|&l| self.link_up(l)) {
                self.links.report.transfers_rerouted += 1;
                self.coverage.reach(RarePath::TransferRerouted);
                return Some(other);
            }
        }
        None
    }

    /// `send` when links can be down: the message is filed first, then put on a live route,
    /// retried, or lost.
    /// Retry `attempt` of the transfer in `slot` is due.
    pub(super) fn fire_retry_send(&mut self, slot: u32, attempt: u32) {
        let message = self.messages.get(slot).expect("a message");
        if !message.of_generation(self.generation()) || self.ranks[message.to as usize].has(DEAD) {
            // The job restarted or the receiver died meanwhile: the transfer is moot.
            self.end_retrying();
            self.drop_message(slot);
            return;
        }
        self.try_transfer(slot, attempt);
    }

    /// Attempt `attempt` of the transfer in `slot`: delivered over a live route, or retried or
    /// lost by the transport when none is up.
    pub(super) fn try_transfer(&mut self, slot: u32, attempt: u32) {
        let message = self.messages.get(slot).expect("a message");
        let (from, to, bytes) = (
            message.from as usize,
            message.to as usize,
            message.payload.modelled_bytes,
        );
        let checksummed = message.checksummed();
        if let Some(route) = self.live_route(from, to) {
            let mut arrival_ns = if from == to {
                self.clock.now_ns()
            } else {
                let leaves_ns = self.sends_leave_ns(from, self.clock.now_ns());
                self.reserve_route(route, bytes, leaves_ns)
            };
            if checksummed {
                arrival_ns += self.checksum_ns(bytes);
            }
            self.schedule_delivery(arrival_ns, slot, to);
            if attempt > 0 {
                self.end_retrying();
            }
            return;
        }
        let backoff = match self.links.config.transport {
            Transport::Retry(policy) => policy.next_backoff(attempt + 1),
            Transport::Plain => None,
        };
        match backoff {
            Some(wait_ns) => {
                if attempt == 0 {
                    self.links.report.transfers_retried += 1;
                    self.coverage.reach(RarePath::TransferRetried);
                    if self.links.retrying == 0 {
                        self.links.retrying_since_ns = self.clock.now_ns();
                    }
                    self.links.retrying += 1;
                }
                self.links.report.retry_attempts += 1;
                let what = EventKind::RetrySend {
                    slot,
                    attempt: attempt + 1,
                };
                self.schedule(self.clock.now_ns() + wait_ns, what);
            }
            None => {
                if attempt > 0 {
                    self.end_retrying();
                }
                self.links.report.transfers_lost += 1;
                self.coverage.reach(RarePath::TransferLost);
                self.links.lost_since_ns.get_or_insert(self.clock.now_ns());
                self.digest
                    .u64(DigestTag::TransferLost.word((from as u64) << 24 | to as u64));
                self.digest.u64(self.clock.now_ns());
                self.blast_fault(crate::books::StopCause::LinkFlap, vec![from, to], None);
                self.note_undetected_fault();
                self.drop_message(slot);
            }
        }
    }

    /// One retried transfer stops retrying (delivered, lost or moot).
    fn end_retrying(&mut self) {
        self.links.retrying -= 1;
        if self.links.retrying == 0 {
            let spent = self.clock.now_ns() - self.links.retrying_since_ns;
            self.links.report.retry_time_ns += spent;
            if let Some(control) = self.control.as_mut() {
                control.lose(LostCause::LinkFlapRetry, spent);
            }
        }
    }

    fn drop_message(&mut self, slot: u32) {
        self.messages.take(slot).expect("a message");
    }

    /// The job is being aborted: lost transfers, if any, have been detected.
    pub(super) fn link_faults_on_abort(&mut self) {
        if let Some(since) = self.links.lost_since_ns.take() {
            let latency = self.clock.now_ns() - since;
            self.links.report.detections += 1;
            self.links.detection_latency_total_ns += latency;
            let max = &mut self.links.report.detection_latency_ns_max;
            *max = (*max).max(latency);
        }
    }
}

/// When the next random flap strikes, after `now_ns`, with `rate` flaps per nanosecond over
/// all flappable links.
fn next_flap_ns(rng: &mut ChaCha8Rng, rate: f64, now_ns: u64) -> u64 {
    use rand::distributions::Distribution;
    let gap = Exp::new(rate).expect("a positive rate").sample(rng);
    now_ns.saturating_add(gap.min(1e15) as u64)
}
