//! Fail-slow links (`[[faults.degrade]]` and `faults.rates.degrades_per_1000_link_days`): a
//! link, a GPU's NIC or a node's NVLinks keeps a fraction of its bandwidth for a while, and
//! may lose some of the transfers crossing it, which their senders resend after the
//! retransmission timeout. Nothing crashes and every rank stays alive, so heartbeats see
//! nothing; the job's steps get slower. The slowdown itself is `slow_links.rs`'s, shared with
//! NIC stragglers; here are the episodes' begin and end, the random ones, and the report: the
//! retransmissions, rank 0's step times inside and outside the episodes, and which detector,
//! if any, fired while one was in force.

use faultline_scenario::config::{DegradeConfig, DegradeSpec, DegradeTarget};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use statrs::distribution::Exp;
use trainer_core::units::MAX_MODEL_TIME_NS;

use super::digest_tag::DigestTag;
use super::slow_links::Cause;
use super::{EventKind, World};
use crate::books::{Detector, FaultKind};
use crate::rng::RngStream;
use crate::topology::LinkId;
use faultline_scenario::LinkRef;

/// A detection the controller counted while a degrade was in force.
#[derive(Clone, Debug, Serialize)]
pub struct DegradeDetection {
    pub detector: Detector,
    pub at_ns: u64,
    /// From the start of the earliest degrade in force.
    pub latency_ns: u64,
}

/// What the report says about fail-slow links (present when some can happen).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DegradeReport {
    pub degrades_injected: u64,
    pub degrades_ended: u64,
    /// Transfers lost at least once on a lossy link, and their resends in all.
    pub transfers_retransmitted: u64,
    pub retransmissions: u64,
    /// Over those transfers: how much later they arrived than their first attempt would have.
    pub retransmission_delay_ns: u64,
    /// Rank 0's steps that overlapped a degrade, and the median step time of those that did
    /// not and of those that did, and the longest of the latter: how the job sees it.
    pub steps_degraded: u64,
    pub step_time_ns_p50_healthy: u64,
    pub step_time_ns_p50_degraded: u64,
    pub step_time_ns_max_degraded: u64,
    /// Every detection counted while a degrade was in force: which detector saw it, if any.
    pub detections: Vec<DegradeDetection>,
}

#[derive(Default)]
pub(super) struct Degrades {
    config: DegradeConfig,
    /// Every degrade: the scenario's, then the random ones as they come.
    specs: Vec<DegradeSpec>,
    /// The random degrades' own stream.
    rng: Option<ChaCha8Rng>,
    report: DegradeReport,
}

impl World {
    /// Puts the scenario's degrades on their links and schedules their begin and end, and
    /// the first random one.
    pub(super) fn configure_degrades(&mut self, config: DegradeConfig) {
        if !config.any() {
            return;
        }
        self.slow_links.expect_windows(config.retransmit_timeout_ns);
        for (idx, spec) in config.degrades.iter().enumerate() {
            self.start_degrade(idx as u32, *spec);
        }
        let mut degrades = Degrades {
            specs: config.degrades.clone(),
            ..Degrades::default()
        };
        if config.random_rate_per_link_per_ns > 0.0 {
            let mut rng = RngStream::Degrades.rng(self.seed);
            let at = next_arrival_ns(&mut rng, self.random_degrade_rate(&config), 0);
            degrades.rng = Some(rng);
            self.schedule_before_horizon(at, EventKind::RandomDegrade);
        }
        degrades.config = config;
        self.degrades = degrades;
    }

    /// Random degrades per nanosecond over every flappable link.
    fn random_degrade_rate(&self, config: &DegradeConfig) -> f64 {
        config.random_rate_per_link_per_ns * self.fabric.topology.flappable_link_count() as f64
    }

    /// Degrade `idx`'s windows on its links, and its begin and end in the queue.
    fn start_degrade(&mut self, idx: u32, spec: DegradeSpec) {
        let factor = 1.0 / spec.bandwidth;
        for link in self.degraded_links(spec.target) {
            let window = (spec.at_ns, spec.until_ns);
            (self.slow_links).add(link, window, factor, spec.loss, Cause::Degrade(idx));
        }
        self.schedule_before_horizon(spec.at_ns, EventKind::DegradeBegins { idx });
        self.schedule_before_horizon(spec.until_ns, EventKind::DegradeEnds { idx });
    }

    /// An event that a run past the horizon would never reach is not filed (filing it would
    /// stop the run there).
    fn schedule_before_horizon(&mut self, at_ns: u64, what: EventKind) {
        if at_ns < MAX_MODEL_TIME_NS {
            self.schedule(at_ns, what);
        }
    }

    /// The directed links `target` names: both directions of a link, or of every NVLink of a
    /// node's GPUs.
    fn degraded_links(&self, target: DegradeTarget) -> Vec<LinkId> {
        let topology = &self.fabric.topology;
        let links = match target {
            DegradeTarget::Link(link) => vec![link],
            DegradeTarget::NodeNvlinks(node) => {
                let group = self.placement.node_group(node);
                let gpus = (0..group.count()).map(|i| group.member(i));
                gpus.map(|gpu| LinkRef::NvLink { gpu }).collect()
            }
        };
        let ids = links.into_iter().map(|l| topology.link_ids(l));
        ids.flat_map(|(up, down)| [up, down]).collect()
    }

    pub(super) fn fire_degrade_begins(&mut self, idx: u32) {
        if self.all_finished() {
            return;
        }
        self.degrades.report.degrades_injected += 1;
        self.count_injected(FaultKind::Degrade);
        self.record_injected(None, FaultKind::Degrade, |world| {
            let spec = world.degrades.specs[idx as usize];
            let loss = if spec.loss > 0.0 {
                format!(", losing {} of its transfers", spec.loss)
            } else {
                String::new()
            };
            format!(
                "{}: {} of its bandwidth{loss} for {}",
                spec.target,
                spec.bandwidth,
                crate::units::format_duration_ns(spec.until_ns - spec.at_ns)
            )
        });
        self.digest
            .u64(DigestTag::Degrade.word(u64::from(idx) << 1));
    }

    pub(super) fn fire_degrade_ends(&mut self, idx: u32) {
        if self.all_finished() {
            return;
        }
        self.degrades.report.degrades_ended += 1;
        let target = self.degrades.specs[idx as usize].target.to_string();
        let kind = FaultKind::Degrade;
        let record = crate::trace::Record::FaultEnded {
            kind,
            target: &target,
        };
        self.record(None, record);
        self.digest
            .u64(DigestTag::Degrade.word(u64::from(idx) << 1 | 1));
    }

    /// The next arrival of the random degrade process: a link drawn uniformly from the
    /// flappable ones (NIC uplinks, leaf-spine links) degrades now.
    pub(super) fn fire_random_degrade(&mut self) {
        if self.all_finished() {
            return;
        }
        use rand::Rng;
        let rate = self.random_degrade_rate(&self.degrades.config);
        let count = self.fabric.topology.flappable_link_count();
        let now_ns = self.clock.now_ns();
        let rng = self
            .degrades
            .rng
            .as_mut()
            .expect("random degrades have a stream");
        let link = rng.gen_range(0..count);
        let next = next_arrival_ns(rng, rate, now_ns);
        let c = &self.degrades.config;
        let spec = DegradeSpec {
            target: DegradeTarget::Link(
                self.fabric
                    .topology
                    .link_ref(self.fabric.topology.flappable_link(link)),
            ),
            bandwidth: c.random_bandwidth,
            loss: c.random_loss,
            at_ns: now_ns,
            until_ns: now_ns.saturating_add(c.random_duration_ns),
        };
        let idx = self.degrades.specs.len() as u32;
        self.degrades.specs.push(spec);
        self.start_degrade(idx, spec);
        self.schedule_before_horizon(next, EventKind::RandomDegrade);
    }

    /// The controller counted a detection by `detector`: if a degrade is in force, the
    /// report says which detector saw it and how late.
    pub(super) fn degrades_on_detection(&mut self, detector: Detector) {
        let now_ns = self.clock.now_ns();
        let d = &mut self.degrades;
        let began = (d.specs.iter())
            .filter(|s| s.at_ns <= now_ns && now_ns < s.until_ns)
            .map(|s| s.at_ns)
            .min();
        if let Some(began) = began {
            d.report.detections.push(DegradeDetection {
                detector,
                at_ns: now_ns,
                latency_ns: now_ns - began,
            });
        }
    }

    pub fn degrade_report(&self) -> Option<DegradeReport> {
        if !self.degrades.config.any() {
            return None;
        }
        let mut report = self.degrades.report.clone();
        let books = self.slow_links.retransmissions;
        report.transfers_retransmitted = books.transfers;
        report.retransmissions = books.resends;
        report.retransmission_delay_ns = books.delay_ns;
        let (mut healthy, mut degraded) = (Vec::new(), Vec::new());
        for (began, took) in self.rank0_steps() {
            let overlaps =
                (self.degrades.specs.iter()).any(|s| began < s.until_ns && began + took > s.at_ns);
            if overlaps {
                degraded.push(took);
            } else {
                healthy.push(took);
            }
        }
        report.steps_degraded = degraded.len() as u64;
        report.step_time_ns_p50_healthy = median(&mut healthy);
        report.step_time_ns_p50_degraded = median(&mut degraded);
        report.step_time_ns_max_degraded = degraded.iter().copied().max().unwrap_or(0);
        Some(report)
    }
}

fn median(times: &mut [u64]) -> u64 {
    times.sort_unstable();
    times.get(times.len() / 2).copied().unwrap_or(0)
}

/// When the next random degrade strikes, after `now_ns`, at `rate` a nanosecond.
fn next_arrival_ns(rng: &mut ChaCha8Rng, rate: f64, now_ns: u64) -> u64 {
    use rand::distributions::Distribution;
    let gap = Exp::new(rate).expect("a positive rate").sample(rng);
    now_ns.saturating_add(gap.min(1e15) as u64)
}
