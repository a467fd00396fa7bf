//! The fabric: the topology's directed links and when each is next free. The one place where
//! a transfer is given link time: it starts when every link of its route is free, occupies
//! them for `bytes / bottleneck bandwidth`, and arrives after the route's latencies. The rest
//! of the world routes, reserves and prefetches through these methods and never touches a
//! link's busy-until time itself.

#[cfg(test)]
use crate::topology::LinkId;
use crate::topology::{Route, Topology};

/// The most links a route has.
pub(super) const MAX_ROUTE_LINKS: usize = 6;

pub(super) struct Fabric {
    /// The cluster's shape; the parts that name links (flaps, NIC slowdowns) read it.
    pub(super) topology: Topology,
    /// Per directed link: when it finishes serialising what it has been given.
    busy_until_ns: Vec<u64>,
}

impl Fabric {
    pub(super) fn new(topology: Topology) -> Fabric {
        Fabric {
            busy_until_ns: vec![0; topology.link_count()],
            topology,
        }
    }

    /// The route from GPU `from` to GPU `to` (ECMP across spines).
    #[inline(always)]
    pub(super) fn route(&self, from: usize, to: usize) -> Route {
        self.topology.route(from, to)
    }

    /// Reserves `route` for `bytes`, starting no earlier than `earliest_ns`, and returns the
    /// arrival time. `slowdowns`, when some NIC runs slow, divides each route link's bandwidth
    /// by its factor (1 for a link at full speed).
    #[inline]
    pub(super) fn reserve(
        &mut self,
        route: Route,
        bytes: u64,
        earliest_ns: u64,
        slowdowns: Option<&[f64; MAX_ROUTE_LINKS]>,
    ) -> u64 {
        let mut start_ns = earliest_ns;
        let mut bottleneck = f64::INFINITY;
        let mut latency_ns = 0;
        for (idx, &link) in route.links().iter().enumerate() {
            start_ns = start_ns.max(self.busy_until_ns[link as usize]);
            let spec = self.topology.link_spec(link);
            let bandwidth = match slowdowns {
                Some(factors) => spec.bandwidth_bytes_per_s / factors[idx],
                None => spec.bandwidth_bytes_per_s,
            };
            bottleneck = bottleneck.min(bandwidth);
            latency_ns += spec.latency_ns;
        }
        let serialise_ns = trainer_core::units::capped_ns(bytes as f64 * 1e9 / bottleneck);
        // Saturating: a link's time may pass the horizon, which the clock then refuses.
        let done_ns = start_ns.saturating_add(serialise_ns);
        for &link in route.links() {
            self.busy_until_ns[link as usize] = done_ns;
        }
        done_ns.saturating_add(latency_ns)
    }

    /// Starts loading the busy-until times of `route`'s links.
    #[inline(always)]
    pub(super) fn prefetch_route(&self, route: &Route) {
        for &link in route.links() {
            if let Some(busy_until) = self.busy_until_ns.get(link as usize) {
                crate::prefetch::prefetch(busy_until);
            }
        }
    }

    /// Starts loading the busy-until times of `gpu`'s own links (32 bytes, in one cache
    /// line), where the route of its next send starts.
    #[inline(always)]
    pub(super) fn prefetch_links_of(&self, gpu: usize) {
        let first = Topology::first_link_of_gpu(gpu) as usize;
        if let Some(busy_until) = self.busy_until_ns.get(first) {
            crate::prefetch::prefetch(busy_until);
        }
    }

    /// Every link's busy-until time, for the invariant checks.
    #[cfg(any(debug_assertions, test))]
    pub(super) fn busy_until_ns(&self) -> &[u64] {
        &self.busy_until_ns
    }

    /// Sets a link's busy-until time behind the fabric's back: tests of the checks only.
    #[cfg(test)]
    pub(super) fn set_busy_until_ns(&mut self, link: LinkId, ns: u64) {
        self.busy_until_ns[link as usize] = ns;
    }
}

#[cfg(test)]
mod tests {
    use super::Fabric;

    /// Two nodes of 8 on the default H100 fabric: NVLink 450 GB/s, NICs 50 GB/s.
    fn fabric() -> Fabric {
        let text = "[cluster]\ngpus = 16\n[job]\nsteps = 1\n";
        let s = faultline_scenario::load_str("t", "t.toml", text, &[]).unwrap();
        Fabric::new(crate::topology::Topology::new(&s.cluster, &s.fabric))
    }

    #[test]
    fn a_transfer_takes_its_bottleneck_time_plus_the_route_latencies() {
        let mut f = fabric();
        let (nvlink, nic) = (
            f.topology.fabric.nvlink_latency_ns,
            f.topology.fabric.nic_latency_ns,
        );
        // Inside a node: NVLink up and down, 450 MB in 1 ms.
        let route = f.route(0, 1);
        assert_eq!(
            f.reserve(route, 450_000_000, 0, None),
            1_000_000 + 2 * nvlink
        );
        // Across nodes on one rail: NIC up and down through the leaf, 50 MB in 1 ms.
        let route = f.route(2, 10);
        assert_eq!(f.reserve(route, 50_000_000, 0, None), 1_000_000 + 2 * nic);
    }

    #[test]
    fn transfers_sharing_a_link_queue_and_a_slowdown_divides_the_bandwidth() {
        let mut f = fabric();
        let nic = f.topology.fabric.nic_latency_ns;
        let first = f.reserve(f.route(2, 10), 50_000_000, 0, None);
        // The same route again: it starts when the first one is done serialising.
        let second = f.reserve(f.route(2, 10), 50_000_000, 0, None);
        assert_eq!(second - first, 1_000_000);
        // Another sender's route shares none of those links: no wait.
        assert_eq!(f.reserve(f.route(3, 11), 50_000_000, 0, None), first);
        // Every link at half speed: twice the time.
        let halved = [2.0; super::MAX_ROUTE_LINKS];
        let slow = f.reserve(f.route(4, 12), 50_000_000, 0, Some(&halved));
        assert_eq!(slow, 2_000_000 + 2 * nic);
        // Busy-until times only grow.
        assert!(f.busy_until_ns().iter().all(|&t| t <= 3_000_000));
    }
}
