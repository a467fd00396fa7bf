//! Link flaps and the transport policy. A flap takes a full-duplex link down for a while,
//! `count` times every `period`. A transfer picks its route when it starts: the usual ECMP
//! route if every link of it is up, else another spine of the same leaf if one is up (the
//! fabric reroutes), else there is no path, and the transport decides: `plain` loses the
//! transfer (the receiver waits until the collective watchdog fires and the job recovers as
//! after a crash); `retry` tries again after a bounded exponential backoff
//! (trainer-core's `RetryPolicy`), rerouting each attempt, until its budget is spent.

use serde::Serialize;
use trainer_core::transport::RetryPolicy;
use trainer_core::{Payload, Tag};

use super::{EventKind, Message, World, NO_SLOT};
use crate::topology::{LinkId, Route};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A transfer with no working path is lost; the collective watchdog must notice.
    Plain,
    /// The transport retries with backoff, rerouting each attempt, within a budget.
    Retry(RetryPolicy),
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Retry(_) => "retry",
        }
    }
}

/// One scheduled flap series on one full-duplex link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFlapSpec {
    /// The link's name as written (`nic:gpu=17`), for reports.
    pub name: String,
    /// Both directions of the link.
    pub links: (LinkId, LinkId),
    pub at_ns: u64,
    pub down_ns: u64,
    pub count: u32,
    /// From one flap's start to the next one's.
    pub period_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFaultConfig {
    pub transport: Transport,
    pub flaps: Vec<LinkFlapSpec>,
}

impl Default for LinkFaultConfig {
    fn default() -> Self {
        LinkFaultConfig {
            transport: Transport::Plain,
            flaps: Vec::new(),
        }
    }
}

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
}

impl LinkFaults {
    /// Whether sends must look at link state (flaps are configured).
    pub(super) fn active(&self) -> bool {
        !self.down_until_ns.is_empty()
    }
}

impl World {
    /// Installs the flaps and schedules each series' first one.
    pub fn configure_link_faults(&mut self, config: LinkFaultConfig) {
        let mut faults = LinkFaults::default();
        if !config.flaps.is_empty() {
            faults.down_until_ns = vec![0; self.topology.link_count()];
            for (idx, flap) in config.flaps.iter().enumerate() {
                let what = EventKind::LinkFlap {
                    idx: idx as u32,
                    repeat: 0,
                };
                self.schedule(flap.at_ns, what);
            }
        }
        faults.report.transport = config.transport.name();
        faults.config = config;
        self.links = faults;
    }

    pub fn link_flap_report(&self) -> Option<LinkFlapReport> {
        if self.links.config.flaps.is_empty() {
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
        let (a, b) = flap.links;
        let until = self.now_ns + flap.down_ns;
        let next = (repeat + 1 < flap.count).then(|| self.now_ns + flap.period_ns);
        for link in [a, b] {
            let slot = &mut self.links.down_until_ns[link as usize];
            *slot = (*slot).max(until);
        }
        self.links.report.flaps += 1;
        self.count_injected("link_flap");
        self.digest.u64(0xF1 << 56 | 0xA9 << 48 | a as u64);
        self.digest.u64(until);
        if let Some(at) = next {
            let what = EventKind::LinkFlap {
                idx,
                repeat: repeat + 1,
            };
            self.schedule(at, what);
        }
    }

    fn link_up(&self, link: LinkId) -> bool {
        self.links.down_until_ns[link as usize] <= self.now_ns
    }

    /// A route from `from` to `to` whose links are all up now: the usual one, or the same
    /// path through another spine.
    fn live_route(&mut self, from: usize, to: usize) -> Option<Route> {
        let route = self.topology.route(from, to);
        if route.links().iter().all(|&l| self.link_up(l)) {
            return Some(route);
        }
        let spines = self.topology.spines_per_leaf();
        let usual = self.topology.default_spine(from, to);
        for k in 1..spines {
            let other = self
                .topology
                .route_via_spine(from, to, (usual + k) % spines);
            if other == route {
                break; // the route crosses no spine: there is no alternative
            }
            if other.links().iter().all(|&l| self.link_up(l)) {
                self.links.report.transfers_rerouted += 1;
                return Some(other);
            }
        }
        None
    }

    /// `send` when links can be down: the message is filed first, then put on a live route,
    /// retried, or lost.
    pub(super) fn send_over_flapping_links(
        &mut self,
        from: usize,
        to: usize,
        tag: Tag,
        payload: Payload,
    ) {
        let generation = self.control.as_ref().map_or(0, |c| c.generation);
        let slot = self.store(Message {
            generation,
            from: from as u32,
            to: to as u32,
            tag,
            payload,
            next: NO_SLOT,
        });
        self.try_transfer(slot, 0);
    }

    /// Retry `attempt` of the transfer in `slot` is due.
    pub(super) fn fire_retry_send(&mut self, slot: u32, attempt: u32) {
        let message = self.messages[slot as usize].as_ref().expect("a message");
        let current = self.control.as_ref().map_or(0, |c| c.generation);
        if message.generation != current || self.ranks[message.to as usize].dead {
            // The job restarted or the receiver died meanwhile: the transfer is moot.
            self.end_retrying();
            self.drop_message(slot);
            return;
        }
        self.try_transfer(slot, attempt);
    }

    fn try_transfer(&mut self, slot: u32, attempt: u32) {
        let message = self.messages[slot as usize].as_ref().expect("a message");
        let (from, to, bytes) = (
            message.from as usize,
            message.to as usize,
            message.payload.modelled_bytes,
        );
        if let Some(route) = self.live_route(from, to) {
            let arrival_ns = if from == to {
                self.now_ns
            } else {
                self.reserve_route(route, bytes)
            };
            self.schedule(arrival_ns, EventKind::Deliver { slot });
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
                    if self.links.retrying == 0 {
                        self.links.retrying_since_ns = self.now_ns;
                    }
                    self.links.retrying += 1;
                }
                self.links.report.retry_attempts += 1;
                let what = EventKind::RetrySend {
                    slot,
                    attempt: attempt + 1,
                };
                self.schedule(self.now_ns + wait_ns, what);
            }
            None => {
                if attempt > 0 {
                    self.end_retrying();
                }
                self.links.report.transfers_lost += 1;
                self.links.lost_since_ns.get_or_insert(self.now_ns);
                self.digest
                    .u64(0x10 << 56 | (from as u64) << 24 | to as u64);
                self.digest.u64(self.now_ns);
                self.note_undetected_fault();
                self.drop_message(slot);
            }
        }
    }

    /// One retried transfer stops retrying (delivered, lost or moot).
    fn end_retrying(&mut self) {
        self.links.retrying -= 1;
        if self.links.retrying == 0 {
            let spent = self.now_ns - self.links.retrying_since_ns;
            self.links.report.retry_time_ns += spent;
            if let Some(control) = self.control.as_mut() {
                control.lose("link_flap_retry", spent);
            }
        }
    }

    fn drop_message(&mut self, slot: u32) {
        let message = self.messages[slot as usize].take().expect("a message");
        self.free_slots.push(slot);
        self.spare_buffers.push(message.payload.data);
    }

    /// The job is being aborted: lost transfers, if any, have been detected.
    pub(super) fn link_faults_on_abort(&mut self) {
        if let Some(since) = self.links.lost_since_ns.take() {
            let latency = self.now_ns - since;
            self.links.report.detections += 1;
            self.links.detection_latency_total_ns += latency;
            let max = &mut self.links.report.detection_latency_ns_max;
            *max = (*max).max(latency);
        }
    }
}
