//! The storage model: three tiers with real bytes and modelled transfer times.
//!
//! - Host memory of a node: a device-to-host or host copy at `host_bytes_per_s`; lost when the
//!   node crashes.
//! - A peer node's host memory: the bytes cross the fabric like a message (same links, same
//!   contention), then land in that node's host memory.
//! - The persistent store: each node's client link and the store's aggregate bandwidth are
//!   serialised like fabric links, so 100,000 ranks writing at once share and saturate it.
//!
//! Blobs are keyed by (place, name) in a BTreeMap, so listing is ordered.

mod audit;

use std::collections::BTreeMap;

use trainer_core::units::capped_ns;
use trainer_core::{Blob, Tier, WriteStatus};

pub use audit::{AtomicityViolation, Audit};
pub use faultline_scenario::config::{SlowWindow, StorageConfig, Window};

/// Where a blob physically is: a node's host memory, or the persistent store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    Host(usize),
    Persistent,
}

pub fn place_of(tier: Tier, own_node: usize) -> Place {
    match tier {
        Tier::Host => Place::Host(own_node),
        Tier::Peer { node } => Place::Host(node),
        Tier::Persistent => Place::Persistent,
    }
}

struct Write {
    place: Place,
    name: String,
    /// The bytes to land once the write completes; `None` once landed or failed.
    blob: Option<Blob>,
    /// The node whose memory the data is copied from: its crash kills the write.
    source_node: usize,
    status: WriteStatus,
}

pub struct Storage {
    pub config: StorageConfig,
    blobs: BTreeMap<(Place, String), Blob>,
    client_busy_until_ns: Vec<u64>,
    aggregate_busy_until_ns: u64,
    writes: Vec<Write>,
    /// Checkpoint atomicity, as observed: see `audit.rs`.
    pub audit: Audit,
}

impl Storage {
    pub fn new(config: StorageConfig, node_count: usize) -> Storage {
        Storage {
            config,
            blobs: BTreeMap::new(),
            client_busy_until_ns: vec![0; node_count],
            aggregate_busy_until_ns: 0,
            writes: Vec::new(),
            audit: Audit::default(),
        }
    }

    /// When a transfer of `bytes` between `node` and the persistent store, starting now, ends.
    /// The node's client link and the store's aggregate bandwidth each queue their own work:
    /// a transfer ends when both have carried it. (Reserving both for one interval instead
    /// would let one node's busy client link hold the whole store idle.)
    pub fn persistent_transfer_done_ns(&mut self, node: usize, bytes: u64, now_ns: u64) -> u64 {
        let c = &self.config;
        // A slow store (a degraded file system, a rebuilding array) stretches the transfers
        // that start while it is slow.
        let slowdown: f64 = c
            .slow
            .iter()
            .filter(|s| s.window.contains(now_ns))
            .map(|s| s.factor)
            .product();
        let client_ns = capped_ns(bytes as f64 * 1e9 * slowdown / c.client_bytes_per_s);
        let aggregate_ns = capped_ns(bytes as f64 * 1e9 * slowdown / c.aggregate_bytes_per_s);
        // Saturating: a store this slow passes the horizon, which the clock then refuses.
        let client_done = (now_ns.max(self.client_busy_until_ns[node])).saturating_add(client_ns);
        let aggregate_done =
            (now_ns.max(self.aggregate_busy_until_ns)).saturating_add(aggregate_ns);
        self.client_busy_until_ns[node] = client_done;
        self.aggregate_busy_until_ns = aggregate_done;
        client_done
            .max(aggregate_done)
            .saturating_add(c.persistent_latency_ns)
    }

    pub fn host_copy_ns(&self, bytes: u64) -> u64 {
        capped_ns(bytes as f64 * 1e9 / self.config.host_bytes_per_s)
    }

    /// Registers a write that lands when [`Storage::complete`] is called for its ticket.
    pub fn begin_write(&mut self, place: Place, name: &str, blob: Blob, source_node: usize) -> u64 {
        self.writes.push(Write {
            place,
            name: name.to_string(),
            blob: Some(blob),
            source_node,
            status: WriteStatus::Pending,
        });
        (self.writes.len() - 1) as u64
    }

    /// The write's time has come: its bytes land, unless it already failed or the store is
    /// failing writes now. Returns whether a store fault failed it.
    pub fn complete(&mut self, ticket: u64, now_ns: u64) -> bool {
        let failing = self.config.failing.iter().any(|w| w.contains(now_ns));
        let write = &mut self.writes[ticket as usize];
        if failing && write.place == Place::Persistent && write.blob.is_some() {
            write.blob = None;
            write.status = WriteStatus::Failed;
            return true;
        }
        if let Some(blob) = write.blob.take() {
            write.status = WriteStatus::Durable;
            if write.place == Place::Persistent {
                let blobs = &self.blobs;
                let durable = |shard: &str| blobs.contains_key(&(Place::Persistent, shard.into()));
                self.audit
                    .manifest_landed(&write.name, &blob.bytes, durable);
            }
            self.blobs.insert((write.place, write.name.clone()), blob);
        }
        false
    }

    pub fn status(&self, ticket: u64) -> WriteStatus {
        self.writes[ticket as usize].status
    }

    pub fn get(&self, place: Place, name: &str) -> Option<&Blob> {
        self.blobs.get(&(place, name.to_string()))
    }

    pub fn list(&self, place: Place, prefix: &str) -> Vec<String> {
        self.blobs
            .range((place, prefix.to_string())..)
            .take_while(|((p, name), _)| *p == place && name.starts_with(prefix))
            .map(|((_, name), _)| name.clone())
            .collect()
    }

    pub fn delete(&mut self, place: Place, name: &str) {
        self.blobs.remove(&(place, name.to_string()));
    }

    /// `node` crashed: its host memory is gone, and so are writes still copying out of it.
    pub fn crash_node(&mut self, node: usize) {
        self.blobs
            .retain(|(place, _), _| *place != Place::Host(node));
        for write in &mut self.writes {
            let lands_there = write.place == Place::Host(node);
            if write.status == WriteStatus::Pending && (write.source_node == node || lands_there) {
                write.blob = None;
                write.status = WriteStatus::Failed;
            }
        }
    }

    /// Flips one bit of a stored blob: silent corruption at rest.
    pub fn corrupt(&mut self, place: Place, name: &str, bit: u64) -> bool {
        match self.blobs.get_mut(&(place, name.to_string())) {
            Some(blob) if !blob.bytes.is_empty() => {
                let bit = bit % (8 * blob.bytes.len() as u64);
                blob.bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
                true
            }
            _ => false,
        }
    }
}
