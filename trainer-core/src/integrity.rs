//! Health checks against silent data corruption (SDC): end-to-end payload checksums, the
//! gradient-norm and loss guard, cross-replica parameter fingerprints, and the kernel
//! cross-check that finds a GPU whose reduction kernel is wrong. The policy is data
//! ([`DetectionPolicy`]); the checks themselves run in the collectives and the training step,
//! identically on every backend.

use std::cell::Cell;

use crate::digest::mix64;

/// Which SDC checks the trainer runs, and how often.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectionPolicy {
    /// Every collective payload carries a checksum of its data; a mismatch asks the transport
    /// to resend.
    pub payload_checksums: bool,
    /// A step whose summed gradient norm exceeds `factor` times its running average, or is not
    /// finite, is suspect. `None`: no gradient guard.
    pub gradient_norm_factor: Option<f64>,
    /// As the gradient guard, on the summed loss.
    pub loss_factor: Option<f64>,
    /// Compare parameter fingerprints across replicas every this many steps (and after the
    /// last step); 0 for never.
    pub fingerprint_every_steps: u64,
    /// Re-run a suspect step: the same result again means a persistent fault, which the kernel
    /// cross-check then localises; a clean result means a transient one, and is used.
    pub rerun_suspect_steps: bool,
}

impl DetectionPolicy {
    /// What a scenario gets without a `[detection]` section: every check on.
    pub const DEFAULT: DetectionPolicy = DetectionPolicy {
        payload_checksums: true,
        gradient_norm_factor: Some(10.0),
        loss_factor: Some(10.0),
        fingerprint_every_steps: 10,
        rerun_suspect_steps: true,
    };

    /// Every check off: what a backend that has no SDC to fear runs.
    pub const OFF: DetectionPolicy = DetectionPolicy {
        payload_checksums: false,
        gradient_norm_factor: None,
        loss_factor: None,
        fingerprint_every_steps: 0,
        rerun_suspect_steps: false,
    };
}

crate::named_enum! {
    /// Which check noticed something; names as in reports.
    pub enum Check {
        PayloadChecksum = "payload_checksum",
        GradientGuard = "gradient_guard",
        LossGuard = "loss_guard",
        Fingerprint = "fingerprint",
        /// Re-running the suspect step.
        Rerun = "rerun",
        /// Re-running the reductions against the host's reference kernel.
        KernelCheck = "kernel_check",
    }
}

/// A 64-bit checksum of a payload's data, bit for bit: a word-at-a-time multiply-xor hash,
/// cheap enough for every message of a 100,000-rank collective. Four independent lanes take
/// 32 bytes per round, so the multiplies overlap instead of waiting on each other; every step
/// is a bijection of its lane, and the lanes fold in one after another, so any single changed
/// bit changes the sum.
pub fn checksum(data: &[f32]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    #[inline(always)]
    fn step(h: u64, word: u64) -> u64 {
        let h = (h ^ word).wrapping_mul(K);
        h ^ (h >> 29)
    }
    #[inline(always)]
    fn word(pair: &[f32]) -> u64 {
        let lo = pair[0].to_bits() as u64;
        let hi = pair.get(1).map_or(0, |v| v.to_bits() as u64);
        lo | hi << 32
    }
    let seed = 0x6a09_e667_f3bc_c909u64 ^ data.len() as u64;
    let mut lanes = [seed, seed ^ 1, seed ^ 2, seed ^ 3];
    let mut rounds = data.chunks_exact(8);
    for round in &mut rounds {
        for (lane, pair) in lanes.iter_mut().zip(round.chunks_exact(2)) {
            *lane = step(*lane, word(pair));
        }
    }
    let mut h = lanes[0];
    for &lane in &lanes[1..] {
        h = step(h, lane);
    }
    for pair in rounds.remainder().chunks(2) {
        h = step(h, word(pair));
    }
    mix64(h)
}

/// What the checks inside one collective found, for the caller to act on.
#[derive(Debug, Default)]
pub struct HealthCounters {
    /// Payloads that failed their checksum and were resent.
    pub checksum_mismatches: Cell<u64>,
    /// Reductions on this rank whose result differed from the reference kernel's.
    pub kernel_mismatches: Cell<u64>,
}

impl HealthCounters {
    pub(crate) fn bump(cell: &Cell<u64>) {
        cell.set(cell.get() + 1);
    }
}

/// A parameter fingerprint as four f32 holding 16 bits each: exact through a broadcast.
pub fn fingerprint_pieces(digest: u64) -> [f32; 4] {
    std::array::from_fn(|i| ((digest >> (16 * i)) & 0xffff) as f32)
}

/// The Euclidean norm of `values`, summed in order in f64.
pub fn norm(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|v| (*v as f64) * (*v as f64))
        .sum::<f64>()
        .sqrt()
}

/// A running average of a statistic, and whether a new value is an outlier.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Guard {
    average: Option<f64>,
}

impl Guard {
    /// True when `value` is not finite or exceeds `factor` times the running average.
    pub fn is_suspect(&self, value: f64, factor: f64) -> bool {
        !value.is_finite() || self.average.is_some_and(|avg| value > factor * avg)
    }

    /// The running average's bits, for handing a guard to another replica exactly.
    pub fn average_bits(&self) -> Option<u64> {
        self.average.map(f64::to_bits)
    }

    pub fn from_average_bits(bits: Option<u64>) -> Guard {
        Guard {
            average: bits.map(f64::from_bits),
        }
    }

    /// Folds an accepted value into the average.
    pub fn accept(&mut self, value: f64) {
        self.average = Some(match self.average {
            None => value,
            Some(avg) => 0.8 * avg + 0.2 * value,
        });
    }
}
