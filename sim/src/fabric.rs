//! The fabric: the topology's directed links and when each is busy. The one place where a
//! transfer is given link time, hop by hop: each link of the route carries the transfer for
//! `bytes / its bandwidth`, in the earliest idle stretch that fits after the transfer's head
//! has crossed the hops before it (cut-through, with buffering in the switches), and the
//! transfer arrives when its tail leaves the last link, plus that link's latency. Links are
//! never held while they carry nothing: a later transfer fills an idle gap that an earlier
//! one left on a link (earliest fit), so the model is work-conserving per link in the order
//! the world reserves transfers in, which is an order of the model alone (issue 23).
//!
//! The rest of the world routes, reserves and prefetches through these methods and never
//! touches a link's times itself.

#[cfg(test)]
use crate::topology::LinkId;
use crate::topology::{Route, Topology};
use faultline_scenario::Routing;

/// The most links a route has.
pub const MAX_ROUTE_LINKS: usize = 6;

/// Idle gaps shorter than this are not offered to later transfers. It is above the default
/// hop latencies (NVLink 1 us, NIC 1.5 us, switch 0.5 us), so the stretch that every
/// cut-through transfer leaves idle ahead of its head on each link after its first (the hop
/// before's latency) is not tracked: at 100,000 GPUs that is one gap per hop of every message,
/// each too short for a transfer of any size to gain from. Gaps that queueing leaves are a
/// transfer long or more.
const MIN_GAP_NS: u64 = 2_000;

/// An idle stretch `[start_ns, end_ns)` of a link, before its last reservation ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Gap {
    start_ns: u64,
    end_ns: u64,
}

pub struct Fabric {
    /// The cluster's shape; the parts that name links (flaps, NIC slowdowns) read it.
    pub topology: Topology,
    /// How a cross-leaf route picks its spine.
    routing: Routing,
    /// Per directed link: what every hop reads, in one place.
    links: Vec<LinkTimes>,
    /// Per directed link: which of `gap_lists` holds its gaps older than its latest, or
    /// [`NO_GAPS`]; read only where one may fit (`LinkTimes::older_end_ns`).
    gap_list_of: Vec<u32>,
    /// Lists of a link's idle gaps before its latest, by start time (and so by end), pruned
    /// of the gaps that ended by now when the link is next searched; an emptied list is kept
    /// in `free_gap_lists` for the next link that needs one.
    gap_lists: Vec<Vec<Gap>>,
    free_gap_lists: Vec<u32>,
}

/// One directed link's times: 32 bytes, all a hop reads unless an older gap may fit.
#[derive(Clone, Copy, Debug, Default)]
#[repr(align(32))]
struct LinkTimes {
    /// When the last transfer it was given ends.
    busy_until_ns: u64,
    /// Its latest idle gap (empty when `end_ns` is 0): most gaps are filled or outlived
    /// before the next one opens, so most never reach the list.
    latest: Gap,
    /// When the last gap of its list (all before `latest`) ends; 0 for none. A transfer that
    /// cannot finish by then fits none of them, and the list is not read.
    older_end_ns: u64,
}

/// `gap_list_of` for a link without gaps.
const NO_GAPS: u32 = u32::MAX;

/// What is left of `gap` on either side of a booking `[start_ns, end_ns)` inside it: each
/// side, if it is long enough to keep.
fn split(gap: Gap, start_ns: u64, end_ns: u64) -> (Option<Gap>, Option<Gap>) {
    let keep = |g: Gap| (g.end_ns >= g.start_ns.saturating_add(MIN_GAP_NS)).then_some(g);
    let before = Gap {
        start_ns: gap.start_ns,
        end_ns: start_ns,
    };
    let after = Gap {
        start_ns: end_ns,
        end_ns: gap.end_ns,
    };
    (keep(before), keep(after))
}

/// The present, as a hop sees it: the model's now, and the earliest a transfer that starts
/// now can reach the hop's link (now plus the latencies of the hops before it). What lies
/// between the two is the head's travel time, idle on every link but a route's first, and
/// never offered as a gap.
#[derive(Clone, Copy)]
struct Now {
    ns: u64,
    reachable_ns: u64,
}

/// One hop of a transfer being placed: when its head may enter the link at the earliest, and
/// when its tail may leave it (not before the tail has crossed the hop before).
struct Hop {
    earliest_start_ns: u64,
    earliest_end_ns: u64,
}

impl Fabric {
    pub fn new(topology: Topology) -> Fabric {
        let links = topology.link_count();
        Fabric {
            routing: topology.fabric.routing,
            links: vec![LinkTimes::default(); links],
            gap_list_of: vec![NO_GAPS; links],
            gap_lists: Vec::new(),
            free_gap_lists: Vec::new(),
            topology,
        }
    }

    /// The route from GPU `from` to GPU `to` for a flow starting at `now_ns`: through the
    /// spine the fabric's routing picks when it crosses leaves.
    #[inline(always)]
    pub fn route(&self, from: usize, to: usize, now_ns: u64) -> Route {
        match self.routing {
            Routing::Ecmp => self.topology.route(from, to),
            Routing::Adaptive => {
                let spine = self.spine_for(from, to, now_ns);
                self.topology.route_via_spine(from, to, spine)
            }
        }
    }

    /// The spine a flow from `from` to `to` starting at `now_ns` takes if it crosses leaves:
    /// the ECMP hash's, or under adaptive routing the one whose route is free first (links
    /// free by `now_ns` count as free alike, so the ECMP choice wins ties and flows spread).
    pub fn spine_for(&self, from: usize, to: usize, now_ns: u64) -> usize {
        let usual = self.topology.default_spine(from, to);
        if self.routing == Routing::Ecmp {
            return usual;
        }
        let route = self.topology.route_via_spine(from, to, usual);
        let links = route.links();
        // Two links inside a node or under one leaf; four or more cross a spine.
        if links.len() <= 2 {
            return usual;
        }
        // Only the leaf's uplink (the route's second link) and the far leaf's downlink (its
        // last but one) change with the spine; the others are common to every choice.
        let (up_at, down_at) = (1, links.len() - 2);
        let busy = |link: u32| self.links[link as usize].busy_until_ns.max(now_ns);
        let common = (links.iter().enumerate())
            .filter(|&(i, _)| i != up_at && i != down_at)
            .map(|(_, &l)| busy(l))
            .max()
            .unwrap_or(now_ns);
        let free_at = |up: u32, down: u32| common.max(busy(up)).max(busy(down));
        let spines = self.topology.spines_per_leaf();
        let mut best = (free_at(links[up_at], links[down_at]), usual);
        for k in 1..spines {
            if best.0 == common {
                break; // free when the common links are: none can be freer
            }
            let spine = (usual + k) % spines;
            let (up, down) = self.topology.spine_links(from, to, spine);
            let at = free_at(up, down);
            if at < best.0 {
                best = (at, spine);
            }
        }
        best.1
    }

    /// Gives `route` link time for `bytes`, starting no earlier than `earliest_ns`, and
    /// returns the arrival time. Each hop takes the earliest idle stretch of its link that
    /// fits after the hop before (see the module's notes); `now_ns` is the model's present,
    /// before which no gap is of use. `slowdowns`, when some NIC runs slow, divides each
    /// route link's bandwidth by its factor (1 for a link at full speed).
    #[inline]
    pub fn reserve(
        &mut self,
        route: Route,
        bytes: u64,
        earliest_ns: u64,
        now_ns: u64,
        slowdowns: Option<&[f64; MAX_ROUTE_LINKS]>,
    ) -> u64 {
        let mut hop = Hop {
            earliest_start_ns: earliest_ns,
            earliest_end_ns: 0,
        };
        let mut arrival_ns = earliest_ns;
        let mut latency_before_ns = 0;
        for (idx, &link) in route.links().iter().enumerate() {
            let spec = self.topology.link_spec(link);
            let bandwidth = match slowdowns {
                Some(factors) => spec.bandwidth_bytes_per_s / factors[idx],
                None => spec.bandwidth_bytes_per_s,
            };
            let serialise_ns = trainer_core::units::capped_ns(bytes as f64 * 1e9 / bandwidth);
            let start_ns =
                (hop.earliest_start_ns).max(hop.earliest_end_ns.saturating_sub(serialise_ns));
            let now = Now {
                ns: now_ns,
                reachable_ns: now_ns.saturating_add(latency_before_ns),
            };
            let start_ns = self.place(link as usize, start_ns, serialise_ns, now);
            latency_before_ns += spec.latency_ns;
            // Saturating: a link's time may pass the horizon, which the clock then refuses.
            let end_ns = start_ns.saturating_add(serialise_ns);
            hop = Hop {
                earliest_start_ns: start_ns.saturating_add(spec.latency_ns),
                earliest_end_ns: end_ns.saturating_add(spec.latency_ns),
            };
            arrival_ns = hop.earliest_end_ns;
        }
        arrival_ns
    }

    /// Books `duration_ns` on `link` in its earliest idle stretch that starts at or after
    /// `from_ns`, and returns that start. Idle time left before the booking becomes the
    /// link's latest gap, from when a transfer starting now could first reach the link on.
    fn place(&mut self, link: usize, from_ns: u64, duration_ns: u64, now: Now) -> u64 {
        let end_ns = from_ns.saturating_add(duration_ns);
        let times = self.links[link];
        // A gap that ended by now is of no use (and an end of 0 is no gap at all).
        if end_ns <= times.older_end_ns && times.older_end_ns > now.ns {
            if let Some(start_ns) = self.fill_older_gap(link, from_ns, duration_ns, now.ns) {
                return start_ns;
            }
        }
        if end_ns <= times.latest.end_ns && times.latest.end_ns > now.ns {
            if let Some(start_ns) = self.fill_latest_gap(link, from_ns, duration_ns, now.ns) {
                return start_ns;
            }
        }
        let start_ns = from_ns.max(times.busy_until_ns);
        let idle_from = times.busy_until_ns.max(now.reachable_ns);
        if start_ns >= idle_from.saturating_add(MIN_GAP_NS) {
            self.open_gap(link, idle_from, start_ns, now.ns);
        }
        self.links[link].busy_until_ns = start_ns.saturating_add(duration_ns);
        start_ns
    }

    /// Makes `[start_ns, end_ns)` the link's latest gap; the latest before it goes to the
    /// list if it has not ended by `now_ns`.
    fn open_gap(&mut self, link: usize, start_ns: u64, end_ns: u64, now_ns: u64) {
        let previous = self.links[link].latest;
        if previous.end_ns > now_ns {
            self.gaps_of(link, now_ns).push(previous);
            self.links[link].older_end_ns = previous.end_ns;
        }
        self.links[link].latest = Gap { start_ns, end_ns };
    }

    /// Books the latest gap, if `duration_ns` fits in it from `from_ns` on: what is left
    /// after the booking stays the latest gap, what is left before goes to the list.
    fn fill_latest_gap(
        &mut self,
        link: usize,
        from_ns: u64,
        duration_ns: u64,
        now_ns: u64,
    ) -> Option<u64> {
        let gap = self.links[link].latest;
        let start_ns = from_ns.max(gap.start_ns);
        let end_ns = start_ns
            .checked_add(duration_ns)
            .filter(|&e| e <= gap.end_ns)?;
        let (before, after) = split(gap, start_ns, end_ns);
        self.links[link].latest = after.or(before).unwrap_or_default();
        if let (Some(before), Some(_)) = (before, after) {
            self.gaps_of(link, now_ns).push(before);
            self.links[link].older_end_ns = before.end_ns;
        }
        Some(start_ns)
    }

    /// The earliest gap of `link`'s list that holds `duration_ns` from `from_ns` on, if any:
    /// booked, what is left of it on either side kept. Drops the gaps that ended by `now_ns`.
    fn fill_older_gap(
        &mut self,
        link: usize,
        from_ns: u64,
        duration_ns: u64,
        now_ns: u64,
    ) -> Option<u64> {
        let list = self.gap_list_of[link];
        let gaps = &mut self.gap_lists[list as usize];
        // Gaps are disjoint and in order, so the ended ones are a prefix.
        let ended = gaps.partition_point(|g| g.end_ns <= now_ns);
        gaps.drain(..ended);
        let first = gaps.partition_point(|g| g.end_ns <= from_ns);
        let found = (gaps[first..].iter().enumerate()).find_map(|(idx, g)| {
            let start_ns = from_ns.max(g.start_ns);
            (start_ns.saturating_add(duration_ns) <= g.end_ns).then_some((first + idx, start_ns))
        });
        if let Some((idx, start_ns)) = found {
            let (before, after) = split(gaps[idx], start_ns, start_ns + duration_ns);
            gaps.splice(idx..=idx, before.into_iter().chain(after));
        }
        match gaps.last() {
            Some(last) => self.links[link].older_end_ns = last.end_ns,
            None => self.release_gaps(link),
        }
        found.map(|(_, start_ns)| start_ns)
    }

    /// `link`'s list of gaps, pruned of those that ended by `now_ns`, or a list from the free
    /// ones if it has none.
    fn gaps_of(&mut self, link: usize, now_ns: u64) -> &mut Vec<Gap> {
        let list = match self.gap_list_of[link] {
            NO_GAPS => {
                let list = self.free_gap_lists.pop().unwrap_or_else(|| {
                    self.gap_lists.push(Vec::new());
                    (self.gap_lists.len() - 1) as u32
                });
                self.gap_list_of[link] = list;
                list
            }
            list => list,
        };
        let gaps = &mut self.gap_lists[list as usize];
        let ended = gaps.partition_point(|g| g.end_ns <= now_ns);
        gaps.drain(..ended);
        gaps
    }

    /// Gives `link`'s emptied gap list back.
    fn release_gaps(&mut self, link: usize) {
        let list = std::mem::replace(&mut self.gap_list_of[link], NO_GAPS);
        self.free_gap_lists.push(list);
        self.links[link].older_end_ns = 0;
    }

    /// Starts loading the busy-until times of `route`'s links.
    #[inline(always)]
    pub fn prefetch_route(&self, route: &Route) {
        for &link in route.links() {
            if let Some(times) = self.links.get(link as usize) {
                crate::prefetch::prefetch(times);
            }
        }
    }

    /// Starts loading the times of `gpu`'s own links (128 bytes, two cache lines: NVLink up
    /// and down, NIC up and down), where the route of its next send starts.
    #[inline(always)]
    pub fn prefetch_links_of(&self, gpu: usize) {
        let first = Topology::first_link_of_gpu(gpu) as usize;
        for link in [first, first + 2] {
            if let Some(times) = self.links.get(link) {
                crate::prefetch::prefetch(times);
            }
        }
    }

    /// Every link's busy-until time, for the invariant checks.
    #[cfg(any(debug_assertions, test))]
    pub(crate) fn busy_until_ns(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.links.iter().map(|t| t.busy_until_ns)
    }

    /// Sets a link's busy-until time behind the fabric's back: tests of the checks only.
    #[cfg(test)]
    pub(crate) fn set_busy_until_ns(&mut self, link: LinkId, ns: u64) {
        self.links[link as usize].busy_until_ns = ns;
    }
}

#[cfg(test)]
mod tests {
    use super::Fabric;

    /// Two nodes of 8 on the default H100 fabric: NVLink 450 GB/s, NICs 50 GB/s.
    fn fabric() -> Fabric {
        fabric_of("[cluster]\ngpus = 16\n[job]\nsteps = 1\n")
    }

    fn fabric_of(text: &str) -> Fabric {
        let s = faultline_scenario::load_str("t", "t.toml", text, &[]).unwrap();
        Fabric::new(crate::topology::Topology::new(&s.cluster, &s.fabric))
    }

    fn send(f: &mut Fabric, from: usize, to: usize, bytes: u64, at_ns: u64) -> u64 {
        let route = f.route(from, to, at_ns);
        f.reserve(route, bytes, at_ns, at_ns, None)
    }

    #[test]
    fn a_transfer_takes_its_bottleneck_time_plus_the_route_latencies() {
        let mut f = fabric();
        let (nvlink, nic) = (
            f.topology.fabric.nvlink_latency_ns,
            f.topology.fabric.nic_latency_ns,
        );
        // Inside a node: NVLink up and down, 450 MB in 1 ms.
        assert_eq!(send(&mut f, 0, 1, 450_000_000, 0), 1_000_000 + 2 * nvlink);
        // Across nodes on one rail: NIC up and down through the leaf, 50 MB in 1 ms.
        assert_eq!(send(&mut f, 2, 10, 50_000_000, 0), 1_000_000 + 2 * nic);
    }

    #[test]
    fn transfers_sharing_a_link_queue_and_a_slowdown_divides_the_bandwidth() {
        let mut f = fabric();
        let nic = f.topology.fabric.nic_latency_ns;
        let first = send(&mut f, 2, 10, 50_000_000, 0);
        // The same route again: it starts when the first one is done serialising.
        let second = send(&mut f, 2, 10, 50_000_000, 0);
        assert_eq!(second - first, 1_000_000);
        // Another sender's route shares none of those links: no wait.
        assert_eq!(send(&mut f, 3, 11, 50_000_000, 0), first);
        // Every link at half speed: twice the time.
        let halved = [2.0; super::MAX_ROUTE_LINKS];
        let route = f.route(4, 12, 0);
        let slow = f.reserve(route, 50_000_000, 0, 0, Some(&halved));
        assert_eq!(slow, 2_000_000 + 2 * nic);
        // Busy-until times only grow.
        assert!(f.busy_until_ns().all(|t| t <= 3_000_000));
    }

    /// The case the old model lost time on: a transfer waits for its receiver's link, and
    /// its sender's link is free meanwhile for a transfer to someone else.
    #[test]
    fn a_link_is_not_held_while_the_next_hop_is_busy() {
        let mut f = fabric();
        let lat = f.topology.fabric.nvlink_latency_ns;
        let ms = 450_000_000; // 1 ms on NVLink
                              // 1 -> 0 takes GPU 0's down link for [lat, 1 ms + lat].
        send(&mut f, 1, 0, ms, 0);
        // 2 -> 0 crosses 2's up link at once, and waits in the switch for 0's down link.
        assert_eq!(send(&mut f, 2, 0, ms, 0), 2_000_000 + 2 * lat);
        // 2 -> 3 need not wait for 2 -> 0 to reach GPU 0: 2's up link is free after 1 ms.
        assert_eq!(send(&mut f, 2, 3, ms, 0), 2_000_000 + 2 * lat);
    }

    /// A later transfer takes an idle stretch an earlier one left ahead of itself.
    #[test]
    fn a_later_transfer_fills_an_idle_gap_before_an_earlier_one() {
        let mut f = fabric();
        let lat = f.topology.fabric.nvlink_latency_ns;
        let ms = 450_000_000;
        // 0 -> 1 then 0 -> 2: the second crosses 2's down link in [1 ms + lat, 2 ms + lat].
        send(&mut f, 0, 1, ms, 0);
        send(&mut f, 0, 2, ms, 0);
        // 3 -> 2 fits in 2's down link before it, where the old model queued it after.
        assert_eq!(send(&mut f, 3, 2, ms, 0), 1_000_000 + 2 * lat);
        // A transfer too long for the gap goes after the last one.
        assert_eq!(send(&mut f, 4, 2, 2 * ms, 0), 4_000_000 + 2 * lat);
        // Gaps that ended before now are dropped when the link is next used.
        send(&mut f, 5, 2, 1, 10_000_000);
        let down_2 = crate::topology::Topology::first_link_of_gpu(2) as usize + 1;
        assert_eq!(f.gap_list_of[down_2], super::NO_GAPS);
    }

    /// A barrier's empty payloads take the route's latencies and no link time, before any gap
    /// exists as after.
    #[test]
    fn an_empty_transfer_takes_only_the_latencies() {
        let mut f = fabric();
        let lat = f.topology.fabric.nvlink_latency_ns;
        assert_eq!(send(&mut f, 0, 1, 0, 0), 2 * lat);
        send(&mut f, 0, 2, 450_000_000, 0);
        send(&mut f, 0, 3, 450_000_000, 0); // leaves a gap on 3's down link
        assert_eq!(send(&mut f, 4, 3, 0, 0), 2 * lat);
    }

    /// Eight leaves' worth of nodes, one rail each: flows from one leaf to another that ECMP
    /// hashes onto one spine queue there; adaptive routing spreads them.
    #[test]
    fn adaptive_routing_spreads_flows_that_ecmp_hashes_together() {
        let text = |routing: &str| {
            format!(
                "[cluster]\ngpus = 128\ngpus_per_node = 1\nnodes_per_leaf = 32\n\
                 [fabric]\nrouting = \"{routing}\"\n[job]\nsteps = 1\n"
            )
        };
        let finish = |routing: &str| {
            let mut f = fabric_of(&text(routing));
            // 32 flows from the first leaf's nodes to the second's, 50 MB each (1 ms a hop).
            (0..32)
                .map(|i| send(&mut f, i, 32 + i, 50_000_000, 0))
                .max()
                .unwrap()
        };
        let (ecmp, adaptive) = (finish("ecmp"), finish("adaptive"));
        // 32 flows over 32 spines: adaptive routing gives each its own; ECMP collides.
        assert!(adaptive < 1_100_000, "adaptive: {adaptive} ns");
        assert!(ecmp >= 2_000_000, "ecmp: {ecmp} ns");
    }
}
