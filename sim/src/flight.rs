//! The flight recorder: each rank's last [`CAPACITY`] collectives (which group, its sequence
//! number in that group, the op, the size, when it started and whether it completed), kept as
//! PyTorch's NCCL flight recorder keeps them, dumped when the watchdog fires, and the analysis
//! that names where the ranks diverged, as PyTorch's `fr_trace` does: the oldest collective
//! some rank is stuck in, the members that never started it (a hang: a rank that stopped
//! issuing collectives), and the members that started a different one at its place (a
//! desync).
//!
//! The recorder is the world's (`World::record_collective_*`); the dump and the analysis are
//! plain data, so `faultline fr` analyses dump files with the same code.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use trainer_core::collectives::{Algo, Op};

/// Collectives kept per rank: enough for the steps around a stop (a step issues one to three
/// on the plain job), 384 bytes a rank, 38 MB at 100,000 GPUs.
pub const CAPACITY: usize = 8;

/// The format's name in every dump, to refuse files that are something else.
pub const DUMP_VERSION: &str = "faultline-flight-recorder-1";

/// A process group as the recorder names it: its arithmetic base (first member, stride,
/// size, last member) and how many of its base members it leaves out (dropped nodes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey {
    pub first: u32,
    pub stride: u32,
    pub size: u32,
    pub last: u32,
    pub holes: u32,
}

impl GroupKey {
    pub fn of(shape: (u32, u32, u32, u32), holes: u32) -> GroupKey {
        let (first, stride, size, last) = shape;
        GroupKey {
            first,
            stride,
            size,
            last,
            holes,
        }
    }

    /// The base members; a group with holes has fewer, which the analysis learns from the
    /// ranks that recorded the group.
    pub fn base_members(&self) -> impl Iterator<Item = usize> + '_ {
        let (first, stride) = (self.first as usize, self.stride as usize);
        (0..self.size as usize).map(move |i| {
            if i + 1 == self.size as usize {
                self.last as usize
            } else {
                first + i * stride
            }
        })
    }

    /// PyTorch names process groups; this is faultline's name for one: `ranks 0..64`,
    /// `8 ranks 3, 11, ..., 59`, with `less 8` for holes.
    pub fn name(&self) -> String {
        let mut name = match self.stride {
            1 => format!("ranks {}..{}", self.first, self.last + 1),
            stride => format!(
                "{} ranks {}, {}, ..., {}",
                self.size,
                self.first,
                self.first + stride,
                self.last
            ),
        };
        if self.holes > 0 {
            name += &format!(" less {}", self.holes);
        }
        name
    }
}

/// One collective as a rank recorded it; field names follow PyTorch's flight-recorder dump
/// where they mean the same thing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// This rank's count of collectives recorded in this generation.
    pub record_id: u64,
    pub pg: GroupKey,
    /// The collective's number in its group, from 1.
    pub collective_seq_id: u64,
    /// `nccl:all_reduce` and so on.
    pub profiling_name: String,
    pub algo: String,
    /// The collective's id, the same on every member (trainer-core's op-id space).
    pub op_id: u64,
    pub input_bytes: u64,
    /// `started` or `completed` (the simulator issues a collective when it starts it).
    pub state: String,
    pub time_discovered_started_ns: u64,
    pub time_discovered_completed_ns: Option<u64>,
}

/// What every rank's recorder held when a detector fired.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dump {
    pub version: String,
    /// The detector that fired (`watchdog`).
    pub trigger: String,
    /// The job's attempt (0 before the first restart).
    pub generation: u64,
    pub at_ns: u64,
    pub ranks: Vec<RankEntries>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankEntries {
    pub rank: usize,
    /// Oldest first.
    pub entries: Vec<Entry>,
}

/// The collective the ranks diverged at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Collective {
    pub pg: String,
    pub collective_seq_id: u64,
    pub op: String,
    pub op_id: u64,
    pub input_bytes: u64,
}

impl Collective {
    fn of(entry: &Entry) -> Collective {
        Collective {
            pg: entry.pg.name(),
            collective_seq_id: entry.collective_seq_id,
            op: entry.profiling_name.clone(),
            op_id: entry.op_id,
            input_bytes: entry.input_bytes,
        }
    }
}

/// What the analysis concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Some members never started the collective the others wait in.
    Hang,
    /// Some members started a different collective in its place.
    Desync,
    /// Every member started it: the wait is in the fabric, not in a rank's program.
    NoRankBehind,
    /// Nothing was in flight.
    NothingStuck,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diagnosis {
    pub verdict: Verdict,
    pub at_ns: u64,
    pub collective: Option<Collective>,
    /// Members that never started it, the first [`LISTED`] of them.
    pub missing_ranks: Vec<usize>,
    pub missing_count: usize,
    /// Members whose collective at that place differs, the first [`LISTED`].
    pub mismatched_ranks: Vec<usize>,
    pub mismatched_count: usize,
    /// What the first of them issued there instead.
    pub issued_instead: Option<Collective>,
    /// Members that started it.
    pub started_count: usize,
}

/// Ranks listed by name in a diagnosis; the count says how many in all.
pub const LISTED: usize = 16;

impl Diagnosis {
    /// The rank the diagnosis blames first, if any.
    pub fn first_culprit(&self) -> Option<usize> {
        self.missing_ranks
            .first()
            .or(self.mismatched_ranks.first())
            .copied()
    }
}

impl std::fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(c) = &self.collective else {
            return write!(f, "no collective was in flight");
        };
        let what = format!(
            "collective #{} of {} ({} of {} bytes, op id {})",
            c.collective_seq_id, c.pg, c.op, c.input_bytes, c.op_id
        );
        let list = |ranks: &[usize], count: usize| {
            let mut text = ranks.iter().map(|r| r.to_string()).collect::<Vec<_>>();
            if count > ranks.len() {
                text.push(format!("and {} more", count - ranks.len()));
            }
            text.join(", ")
        };
        match self.verdict {
            Verdict::Hang => write!(
                f,
                "hang: rank {} never started {what}, which {} ranks started",
                list(&self.missing_ranks, self.missing_count),
                self.started_count
            ),
            Verdict::Desync => {
                let instead = match &self.issued_instead {
                    Some(c) => format!("{} of {} bytes, op id {}", c.op, c.input_bytes, c.op_id),
                    None => "another collective".into(),
                };
                write!(
                    f,
                    "desync: rank {} issued {instead} in place of {what}",
                    list(&self.mismatched_ranks, self.mismatched_count)
                )
            }
            Verdict::NoRankBehind => write!(
                f,
                "every member started {what}; none is behind: the wait is in the fabric"
            ),
            Verdict::NothingStuck => write!(f, "no collective was in flight"),
        }
    }
}

/// Names where the ranks diverged: the oldest collective some rank started and never
/// completed, and, among its group's members, who never started it and who started something
/// else at its place.
pub fn analyse(dump: &Dump) -> Diagnosis {
    let stuck = (dump.ranks.iter())
        .flat_map(|r| r.entries.iter())
        .filter(|e| e.time_discovered_completed_ns.is_none())
        .min_by_key(|e| (e.time_discovered_started_ns, e.pg, e.collective_seq_id));
    let Some(stuck) = stuck else {
        return empty(dump.at_ns, Verdict::NothingStuck);
    };
    let by_rank: BTreeMap<usize, &[Entry]> = (dump.ranks.iter())
        .map(|r| (r.rank, r.entries.as_slice()))
        .collect();
    // Each member's collective at the stuck one's place (its group, its sequence number).
    let at_place: Vec<(usize, Option<&Entry>)> = (members(dump, stuck.pg).into_iter())
        .map(|member| {
            let entries = by_rank.get(&member).copied().unwrap_or(&[]);
            let entry = (entries.iter())
                .find(|e| e.pg == stuck.pg && e.collective_seq_id == stuck.collective_seq_id);
            (member, entry)
        })
        .collect();
    // What most members issued there is the program; who issued something else desynced.
    let mut votes: BTreeMap<(u64, u64, &str), usize> = BTreeMap::new();
    for entry in at_place.iter().filter_map(|(_, e)| *e) {
        *votes.entry(fingerprint(entry)).or_default() += 1;
    }
    let (&majority, _) = (votes.iter())
        .max_by_key(|(key, count)| (**count, std::cmp::Reverse(**key)))
        .expect("the stuck collective's own member");
    let reference = (at_place.iter())
        .find_map(|(_, e)| e.filter(|e| fingerprint(e) == majority))
        .expect("a member issued the majority's collective");
    let (mut missing, mut mismatched, mut started) = (Vec::new(), Vec::new(), 0);
    let mut issued_instead = None;
    for (member, entry) in at_place {
        match entry {
            None => missing.push(member),
            Some(e) if fingerprint(e) != majority => {
                issued_instead.get_or_insert_with(|| Collective::of(e));
                mismatched.push(member);
            }
            Some(_) => started += 1,
        }
    }
    let stuck = reference;
    let verdict = match (missing.is_empty(), mismatched.is_empty()) {
        (false, _) => Verdict::Hang,
        (true, false) => Verdict::Desync,
        (true, true) => Verdict::NoRankBehind,
    };
    Diagnosis {
        verdict,
        at_ns: dump.at_ns,
        collective: Some(Collective::of(stuck)),
        missing_count: missing.len(),
        missing_ranks: missing.into_iter().take(LISTED).collect(),
        mismatched_count: mismatched.len(),
        mismatched_ranks: mismatched.into_iter().take(LISTED).collect(),
        issued_instead,
        started_count: started,
    }
}

/// What two members must agree on at one place of a group's sequence.
fn fingerprint(entry: &Entry) -> (u64, u64, &str) {
    (
        entry.op_id,
        entry.input_bytes,
        entry.profiling_name.as_str(),
    )
}

/// The members of `pg`: its base, or with holes the ranks that recorded it.
fn members(dump: &Dump, pg: GroupKey) -> Vec<usize> {
    if pg.holes == 0 {
        return pg.base_members().collect();
    }
    (dump.ranks.iter())
        .filter(|r| r.entries.iter().any(|e| e.pg == pg))
        .map(|r| r.rank)
        .collect()
}

fn empty(at_ns: u64, verdict: Verdict) -> Diagnosis {
    Diagnosis {
        verdict,
        at_ns,
        collective: None,
        missing_ranks: Vec::new(),
        missing_count: 0,
        mismatched_ranks: Vec::new(),
        mismatched_count: 0,
        issued_instead: None,
        started_count: 0,
    }
}

/// One slot of a rank's ring: 48 bytes.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    op_id: u64,
    bytes: u64,
    started_ns: u64,
    /// `u64::MAX` while in flight.
    completed_ns: u64,
    pg: GroupKey,
    seq: u32,
    op: u8,
    algo: u8,
}

/// Every rank's ring, side by side, and its sequence numbers per group.
pub(crate) struct Recorder {
    slots: Vec<Slot>,
    /// Per rank: collectives recorded this generation (the next slot is `count % CAPACITY`).
    counts: Vec<u64>,
    /// Per rank: its groups and the last sequence number in each (a rank is in a few).
    seqs: Vec<Vec<(GroupKey, u32)>>,
}

impl Recorder {
    pub(crate) fn new(ranks: usize) -> Recorder {
        Recorder {
            slots: vec![Slot::default(); ranks * CAPACITY],
            counts: vec![0; ranks],
            seqs: (0..ranks).map(|_| Vec::new()).collect(),
        }
    }

    /// A new generation: every process starts with an empty recorder and new groups.
    pub(crate) fn clear(&mut self) {
        self.counts.fill(0);
        self.seqs.iter_mut().for_each(Vec::clear);
    }

    /// Records `rank`'s start of a collective of `op` over `pg` with `ids` (op id, bytes);
    /// returns its sequence number in the group.
    pub(crate) fn begin(
        &mut self,
        rank: usize,
        pg: GroupKey,
        op: Op,
        algo: Algo,
        ids: (u64, u64),
        now_ns: u64,
    ) -> u32 {
        let seqs = &mut self.seqs[rank];
        let seq = match seqs.iter_mut().find(|(key, _)| *key == pg) {
            Some((_, seq)) => {
                *seq += 1;
                *seq
            }
            None => {
                seqs.push((pg, 1));
                1
            }
        };
        let (op_id, bytes) = ids;
        let count = self.counts[rank];
        self.counts[rank] += 1;
        self.slots[rank * CAPACITY + (count as usize % CAPACITY)] = Slot {
            op_id,
            bytes,
            started_ns: now_ns,
            completed_ns: u64::MAX,
            pg,
            seq,
            op: op_code(op),
            algo: Algo::ALL.iter().position(|&a| a == algo).unwrap_or(0) as u8,
        };
        seq
    }

    /// When `rank` last started a collective in this generation, if it has.
    pub(crate) fn last_started_ns(&self, rank: usize) -> Option<u64> {
        let count = self.counts[rank];
        (count > 0)
            .then(|| self.slots[rank * CAPACITY + ((count - 1) as usize % CAPACITY)].started_ns)
    }

    /// The first rank behind its peers in some group (a lower sequence number there than
    /// another member's, or none at all) for which `silent` holds, by group then rank.
    pub(crate) fn first_behind(&self, silent: impl Fn(usize) -> bool) -> Option<usize> {
        let mut newest: BTreeMap<GroupKey, u32> = BTreeMap::new();
        for seqs in &self.seqs {
            for &(pg, seq) in seqs {
                let max = newest.entry(pg).or_default();
                *max = (*max).max(seq);
            }
        }
        let seq_of = |rank: usize, pg: GroupKey| {
            let seqs = self.seqs.get(rank)?;
            seqs.iter().find(|(key, _)| *key == pg).map(|&(_, seq)| seq)
        };
        for (&pg, &max) in &newest {
            // A group with holes: its members are the ranks that recorded it.
            let members: Vec<usize> = match pg.holes {
                0 => pg.base_members().collect(),
                _ => (0..self.seqs.len())
                    .filter(|&r| seq_of(r, pg).is_some())
                    .collect(),
            };
            let behind = |rank: usize| seq_of(rank, pg).unwrap_or(0) < max && silent(rank);
            if let Some(rank) = members.into_iter().find(|&rank| behind(rank)) {
                return Some(rank);
            }
        }
        None
    }

    /// Marks `rank`'s latest collective `op_id` completed.
    pub(crate) fn end(&mut self, rank: usize, op_id: u64, now_ns: u64) {
        let count = self.counts[rank];
        for back in 1..=count.min(CAPACITY as u64) {
            let slot = &mut self.slots[rank * CAPACITY + ((count - back) as usize % CAPACITY)];
            if slot.op_id == op_id && slot.completed_ns == u64::MAX {
                slot.completed_ns = now_ns;
                return;
            }
        }
    }

    /// Every rank's entries, oldest first.
    pub(crate) fn dump(&self, trigger: &str, generation: u64, at_ns: u64) -> Dump {
        let ranks = (0..self.counts.len())
            .map(|rank| RankEntries {
                rank,
                entries: self.entries_of(rank),
            })
            .collect();
        Dump {
            version: DUMP_VERSION.into(),
            trigger: trigger.into(),
            generation,
            at_ns,
            ranks,
        }
    }

    fn entries_of(&self, rank: usize) -> Vec<Entry> {
        let count = self.counts[rank];
        let first = count.saturating_sub(CAPACITY as u64);
        (first..count)
            .map(|id| {
                let slot = &self.slots[rank * CAPACITY + (id as usize % CAPACITY)];
                let completed = (slot.completed_ns != u64::MAX).then_some(slot.completed_ns);
                Entry {
                    record_id: id,
                    pg: slot.pg,
                    collective_seq_id: u64::from(slot.seq),
                    profiling_name: format!("nccl:{}", OP_NAMES[slot.op as usize]),
                    algo: Algo::ALL[slot.algo as usize].name().into(),
                    op_id: slot.op_id,
                    input_bytes: slot.bytes,
                    state: if completed.is_some() {
                        "completed"
                    } else {
                        "started"
                    }
                    .into(),
                    time_discovered_started_ns: slot.started_ns,
                    time_discovered_completed_ns: completed,
                }
            })
            .collect()
    }
}

/// The ops by the name NCCL gives them in profiling names.
const OP_NAMES: [&str; 5] = [
    "all_reduce",
    "reduce_scatter",
    "all_gather",
    "broadcast",
    "barrier",
];

fn op_code(op: Op) -> u8 {
    match op {
        Op::AllReduce => 0,
        Op::ReduceScatter => 1,
        Op::AllGather => 2,
        Op::Broadcast { .. } => 3,
        Op::Barrier => 4,
    }
}

/// What the members of a collective must agree on before it runs: its op id, its size and
/// its op (the group and the sequence number are where it is filed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Fingerprint {
    pub op_id: u64,
    pub bytes: u64,
    op: u8,
}

impl Fingerprint {
    pub(crate) fn new(op_id: u64, bytes: u64, op: Op) -> Fingerprint {
        Fingerprint {
            op_id,
            bytes,
            op: op_code(op),
        }
    }
}

/// The desync check of PyTorch's debug mode: before a collective runs, its members exchange
/// its fingerprint; once every member has posted one, they are compared. Open collectives
/// are kept by (group, sequence number) until the last member posts; a hung member never
/// does, and its collective stays open (a hang is the monitors' to find).
#[derive(Default)]
pub(crate) struct FingerprintCheck {
    open: BTreeMap<(GroupKey, u32), Posted>,
}

#[derive(Default)]
struct Posted {
    count: usize,
    /// Per fingerprint: how many members posted it, and the first [`LISTED`] of them.
    votes: BTreeMap<Fingerprint, (usize, Vec<usize>)>,
}

/// Members that posted another fingerprint than the majority of their collective.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mismatch {
    pub pg: GroupKey,
    pub seq: u32,
    pub ranks: Vec<usize>,
    pub count: usize,
}

impl FingerprintCheck {
    /// `rank` posts `fingerprint` for collective `seq` of `pg`: `None` while members have yet
    /// to post; when it is the last, the members that disagree with the majority, if any.
    pub(crate) fn post(
        &mut self,
        rank: usize,
        (pg, seq): (GroupKey, u32),
        fingerprint: Fingerprint,
    ) -> Option<Result<(), Mismatch>> {
        let members = (pg.size - pg.holes) as usize;
        let posted = self.open.entry((pg, seq)).or_default();
        posted.count += 1;
        let (count, ranks) = posted.votes.entry(fingerprint).or_default();
        *count += 1;
        if ranks.len() < LISTED {
            ranks.push(rank);
        }
        if posted.count < members {
            return None;
        }
        let posted = self
            .open
            .remove(&(pg, seq))
            .expect("the collective just posted to");
        let (&majority, _) = (posted.votes.iter())
            .max_by_key(|(key, (count, _))| (*count, std::cmp::Reverse(**key)))
            .expect("a fingerprint was posted");
        let mut mismatch = Mismatch {
            pg,
            seq,
            ranks: Vec::new(),
            count: 0,
        };
        for (_, (count, ranks)) in posted.votes.into_iter().filter(|(fp, _)| *fp != majority) {
            mismatch.count += count;
            mismatch.ranks.extend(ranks);
        }
        mismatch.ranks.sort_unstable();
        mismatch.ranks.truncate(LISTED);
        Some(if mismatch.count > 0 {
            Err(mismatch)
        } else {
            Ok(())
        })
    }

    /// A new generation: nothing is open.
    pub(crate) fn clear(&mut self) {
        self.open.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORLD: GroupKey = GroupKey {
        first: 0,
        stride: 1,
        size: 4,
        last: 3,
        holes: 0,
    };

    /// Four ranks in two all-reduces; rank 2 stops before the second.
    #[test]
    fn a_rank_that_never_started_the_collective_is_named() {
        let mut r = Recorder::new(4);
        for rank in 0..4 {
            r.begin(rank, WORLD, Op::AllReduce, Algo::Ring, (10, 64), 100);
            r.end(rank, 10, 200);
        }
        for rank in [0, 1, 3] {
            r.begin(rank, WORLD, Op::AllReduce, Algo::Ring, (11, 64), 300);
        }
        let d = analyse(&r.dump("watchdog", 0, 900));
        assert_eq!(d.verdict, Verdict::Hang);
        assert_eq!((d.missing_ranks.clone(), d.started_count), (vec![2], 3));
        let c = d.collective.as_ref().unwrap();
        assert_eq!((c.collective_seq_id, c.op_id), (2, 11));
        assert_eq!(d.first_culprit(), Some(2));
        assert!(d
            .to_string()
            .starts_with("hang: rank 2 never started collective #2"));
    }

    /// Rank 1 issues a collective of another size where the others issue the second.
    #[test]
    fn a_rank_that_issued_another_collective_is_named() {
        let mut r = Recorder::new(4);
        for rank in 0..4 {
            let bytes = if rank == 1 { 32 } else { 64 };
            r.begin(rank, WORLD, Op::AllReduce, Algo::Ring, (11, bytes), 300);
        }
        let d = analyse(&r.dump("watchdog", 0, 900));
        assert_eq!(d.verdict, Verdict::Desync);
        assert_eq!(d.mismatched_ranks, vec![1]);
    }

    /// Everyone started, nobody finished: no rank is behind. The ring keeps the last eight.
    #[test]
    fn all_started_is_no_rank_behind_and_the_ring_keeps_the_last_entries() {
        let mut r = Recorder::new(2);
        let pair = GroupKey {
            size: 2,
            last: 1,
            ..WORLD
        };
        for id in 0..20 {
            for rank in 0..2 {
                r.begin(rank, pair, Op::Barrier, Algo::Tree, (id, 0), id);
                if id < 19 {
                    r.end(rank, id, id);
                }
            }
        }
        let dump = r.dump("watchdog", 0, 99);
        assert_eq!(dump.ranks[0].entries.len(), CAPACITY);
        assert_eq!(dump.ranks[0].entries[0].collective_seq_id, 13);
        assert_eq!(analyse(&dump).verdict, Verdict::NoRankBehind);
        r.clear();
        assert_eq!(
            analyse(&r.dump("watchdog", 1, 99)).verdict,
            Verdict::NothingStuck
        );
    }

    #[test]
    fn the_check_names_the_member_whose_fingerprint_differs_once_all_have_posted() {
        let mut check = FingerprintCheck::default();
        let fp = |bytes| Fingerprint::new(7, bytes, Op::AllReduce);
        for rank in [0, 1, 3] {
            assert_eq!(check.post(rank, (WORLD, 2), fp(64)), None);
        }
        let found = check.post(2, (WORLD, 2), fp(128)).unwrap().unwrap_err();
        assert_eq!((found.ranks, found.count, found.seq), (vec![2], 1, 2));
        // Agreement closes the collective without a finding.
        for rank in 0..3 {
            assert_eq!(check.post(rank, (WORLD, 3), fp(64)), None);
        }
        assert_eq!(check.post(3, (WORLD, 3), fp(64)), Some(Ok(())));
        assert!(check.open.is_empty());
    }

    #[test]
    fn the_check_tells_another_op_and_waits_for_every_member() {
        let mut check = FingerprintCheck::default();
        let with_hole = GroupKey { holes: 1, ..WORLD };
        let all_gather = Fingerprint::new(7, 64, Op::AllGather);
        assert_eq!(check.post(0, (with_hole, 1), all_gather), None);
        let all_reduce = Fingerprint::new(7, 64, Op::AllReduce);
        assert_eq!(check.post(1, (with_hole, 1), all_reduce), None);
        let found = check
            .post(2, (with_hole, 1), all_reduce)
            .unwrap()
            .unwrap_err();
        assert_eq!(found.ranks, vec![0]);
    }
}
