//! Fanning work out over a batch scheduler's array tasks and back in: which shard this task is
//! (`--shard i/n`, or `--shard auto` from the scheduler's variables), which items (seed indices,
//! sweep points, calibration runs) a shard covers, the sets of items a shard file holds, what is
//! missing from a set of shard files, and the command that resubmits the missing shards.
//!
//! Everything here is pure: [`resolve`] reads an environment given as a map, never the
//! process's, so every scheduler's variables are tested without touching the real environment.
//! Shard `i` of `n` runs the items `i, i + n, i + 2n, ...` (round robin, which balances seeds of
//! uneven cost); a shard file lists the items it holds, so merging is a set union that does not
//! care how the work was split.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// More shards than this is a typo, not a split (Kubernetes allows 10^5 parallel pods).
pub const MAX_SHARDS: u64 = 1_000_000;

/// faultline's own variables, read first.
pub const INDEX_ENV: &str = "FAULTLINE_SHARD_INDEX";
pub const COUNT_ENV: &str = "FAULTLINE_SHARD_COUNT";

trainer_core::named_enum! {
    /// Where a shard's index and count came from.
    pub enum Scheduler {
        /// `--shard i/n` on the command line.
        Flag = "flag",
        /// `FAULTLINE_SHARD_INDEX` and `FAULTLINE_SHARD_COUNT`.
        Faultline = "faultline",
        /// A Slurm job array (`sbatch --array`).
        Slurm = "slurm",
        /// A Kubernetes Indexed Job (`completionMode: Indexed`).
        Kubernetes = "kubernetes",
        /// An AWS Batch array job.
        AwsBatch = "aws-batch",
        /// A Google Cloud Batch job's task group.
        GoogleBatch = "google-batch",
    }
}

impl Serialize for Scheduler {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Scheduler {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scheduler, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Scheduler::from_name(&name)
            .ok_or_else(|| serde::de::Error::unknown_variant(&name, Scheduler::NAMES))
    }
}

/// This task's shard: `index` of `count`, and how the scheduler numbers its tasks (task id =
/// `first_task + index * task_step`), so a missing shard can be resubmitted by its task id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub index: u64,
    pub count: u64,
    pub scheduler: Scheduler,
    pub first_task: u64,
    pub task_step: u64,
}

impl Assignment {
    /// `--shard i/n`, or everything (`0/1`) without the flag.
    pub fn of_flag(index: u64, count: u64) -> Assignment {
        Assignment {
            index,
            count,
            scheduler: Scheduler::Flag,
            first_task: 0,
            task_step: 1,
        }
    }

    /// The items `0..items` this shard runs: every `count`-th from `index`.
    pub fn items(&self, items: u64) -> impl Iterator<Item = u64> {
        (self.index..items).step_by(self.count as usize)
    }

    /// The scheduler's task id of shard `index` of this split.
    pub fn task_id(&self, index: u64) -> u64 {
        self.first_task
            .saturating_add(index.saturating_mul(self.task_step))
    }

    /// Whether a split read from a file is one faultline could have written.
    pub fn is_valid(&self) -> bool {
        (1..=MAX_SHARDS).contains(&self.count) && self.index < self.count && self.task_step >= 1
    }
}

/// How `--shard` was spelt: explicit, or from the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardArg {
    Explicit { index: u64, count: u64 },
    Auto,
}

/// Parses `--shard`: `auto` or `I/N` with `0 <= I < N <= MAX_SHARDS`.
pub fn parse_shard_arg(text: &str) -> Result<ShardArg, String> {
    if text.trim() == "auto" {
        return Ok(ShardArg::Auto);
    }
    let bad =
        || format!("--shard: expected auto, or I/N with 0 <= I < N <= {MAX_SHARDS}, got {text:?}");
    let (i, n) = text.split_once('/').ok_or_else(bad)?;
    let index: u64 = i.trim().parse().map_err(|_| bad())?;
    let count: u64 = n.trim().parse().map_err(|_| bad())?;
    if count == 0 || index >= count || count > MAX_SHARDS {
        return Err(bad());
    }
    Ok(ShardArg::Explicit { index, count })
}

/// The shard `arg` names, reading `env` for `auto`.
pub fn assignment(arg: ShardArg, env: &BTreeMap<String, String>) -> Result<Assignment, String> {
    match arg {
        ShardArg::Explicit { index, count } => Ok(Assignment::of_flag(index, count)),
        ShardArg::Auto => resolve(env),
    }
}

/// The variables each scheduler sets for an array task's index; more than one of them set
/// means two schedulers claim the task, which `auto` refuses.
const INDEX_VARIABLES: [(Scheduler, &str); 4] = [
    (Scheduler::Slurm, "SLURM_ARRAY_TASK_ID"),
    (Scheduler::Kubernetes, "JOB_COMPLETION_INDEX"),
    (Scheduler::AwsBatch, "AWS_BATCH_JOB_ARRAY_INDEX"),
    (Scheduler::GoogleBatch, "BATCH_TASK_INDEX"),
];

fn number(env: &BTreeMap<String, String>, name: &str) -> Result<Option<u64>, String> {
    match env.get(name) {
        None => Ok(None),
        Some(text) => {
            text.trim().parse::<u64>().map(Some).map_err(|_| {
                format!("--shard auto: {name}={text:?} is not a whole number from 0 up")
            })
        }
    }
}

fn required(env: &BTreeMap<String, String>, name: &str, why: &str) -> Result<u64, String> {
    number(env, name)?.ok_or_else(|| format!("--shard auto: {name} is not set ({why})"))
}

/// `--shard auto`: the shard from faultline's own variables, else from the one scheduler whose
/// array variables are set (Slurm, Kubernetes, AWS Batch, Google Batch). Refuses, naming the
/// variables, a setup it cannot map: none set, two schedulers at once, a count that disagrees
/// with `FAULTLINE_SHARD_COUNT`, a sparse Slurm index list, an index beyond the count. Never
/// reads `RANK` or `WORLD_SIZE`, which belong to the GPU runner.
pub fn resolve(env: &BTreeMap<String, String>) -> Result<Assignment, String> {
    let own_count = number(env, COUNT_ENV)?;
    let found = if let Some(index) = number(env, INDEX_ENV)? {
        let count = own_count.ok_or_else(|| {
            format!("--shard auto: {INDEX_ENV} is set but {COUNT_ENV} is not; set both")
        })?;
        Assignment {
            scheduler: Scheduler::Faultline,
            ..Assignment::of_flag(index, count)
        }
    } else {
        let set: Vec<(Scheduler, &str)> = INDEX_VARIABLES
            .into_iter()
            .filter(|(_, name)| env.contains_key(*name))
            .collect();
        match set.as_slice() {
            [] => return Err(nothing_set()),
            [(scheduler, _)] => of_scheduler(*scheduler, env, own_count)?,
            [(_, a), (_, b), ..] => {
                return Err(format!(
                    "--shard auto: both {a} and {b} are set, so two schedulers claim this task; \
                     set {INDEX_ENV} and {COUNT_ENV}, or use --shard I/N"
                ))
            }
        }
    };
    check_range(&found)?;
    Ok(found)
}

fn nothing_set() -> String {
    format!(
        "--shard auto: no shard variables are set: set {INDEX_ENV} and {COUNT_ENV}, or run as a \
         Slurm array task (SLURM_ARRAY_TASK_ID), a Kubernetes Indexed Job (JOB_COMPLETION_INDEX \
         with {COUNT_ENV}), an AWS Batch array job (AWS_BATCH_JOB_ARRAY_INDEX) or a Google Batch \
         task (BATCH_TASK_INDEX); RANK and WORLD_SIZE are never read (they are the GPU \
         runner's)"
    )
}

fn check_range(found: &Assignment) -> Result<(), String> {
    if found.count == 0 || found.count > MAX_SHARDS || found.index >= found.count {
        return Err(format!(
            "--shard auto: {} gives shard {} of {}; expected 0 <= index < count <= {MAX_SHARDS}",
            found.scheduler, found.index, found.count
        ));
    }
    Ok(())
}

/// The count from a scheduler's own variable, checked against `FAULTLINE_SHARD_COUNT`; or that
/// alone when the scheduler exports none.
fn count_of(variable: &str, theirs: Option<u64>, own_count: Option<u64>) -> Result<u64, String> {
    match (theirs, own_count) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "--shard auto: {variable}={a} and {COUNT_ENV}={b} disagree on the number of shards"
        )),
        (Some(n), _) | (None, Some(n)) => Ok(n),
        (None, None) => Err(format!(
            "--shard auto: neither {variable} nor {COUNT_ENV} is set: set {COUNT_ENV} to the \
             number of tasks"
        )),
    }
}

fn of_scheduler(
    scheduler: Scheduler,
    env: &BTreeMap<String, String>,
    own_count: Option<u64>,
) -> Result<Assignment, String> {
    let plain = |index: u64, count: u64| Assignment {
        scheduler,
        ..Assignment::of_flag(index, count)
    };
    match scheduler {
        Scheduler::Slurm => slurm(env, own_count),
        Scheduler::Kubernetes => {
            let index = required(env, "JOB_COMPLETION_INDEX", "the Indexed Job's index")?;
            let count = own_count.ok_or_else(|| {
                format!(
                    "--shard auto: JOB_COMPLETION_INDEX is set but {COUNT_ENV} is not: \
                     Kubernetes does not tell a pod its Job's completions, so set {COUNT_ENV} \
                     to spec.completions in the pod's env"
                )
            })?;
            Ok(plain(index, count))
        }
        Scheduler::AwsBatch => {
            let index = required(env, "AWS_BATCH_JOB_ARRAY_INDEX", "the array index")?;
            let theirs = number(env, "AWS_BATCH_JOB_ARRAY_SIZE")?;
            Ok(plain(
                index,
                count_of("AWS_BATCH_JOB_ARRAY_SIZE", theirs, own_count)?,
            ))
        }
        Scheduler::GoogleBatch => {
            let index = required(env, "BATCH_TASK_INDEX", "the task index")?;
            let theirs = number(env, "BATCH_TASK_COUNT")?;
            Ok(plain(
                index,
                count_of("BATCH_TASK_COUNT", theirs, own_count)?,
            ))
        }
        Scheduler::Flag | Scheduler::Faultline => unreachable!("not read from a scheduler"),
    }
}

/// A Slurm array task: index (ID - MIN) / STEP of COUNT, refused unless the array is one
/// arithmetic range (`--array=0-99`, `1-31:2`), which is what COUNT = (MAX - MIN) / STEP + 1
/// says; a list such as `--array=1,5,9` cannot be mapped to shards.
fn slurm(env: &BTreeMap<String, String>, own_count: Option<u64>) -> Result<Assignment, String> {
    let why = "Slurm sets it for every array task";
    let id = required(env, "SLURM_ARRAY_TASK_ID", why)?;
    let min = required(env, "SLURM_ARRAY_TASK_MIN", why)?;
    let max = required(env, "SLURM_ARRAY_TASK_MAX", why)?;
    let step = number(env, "SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
    let count = count_of(
        "SLURM_ARRAY_TASK_COUNT",
        number(env, "SLURM_ARRAY_TASK_COUNT")?,
        own_count,
    )?;
    let sparse = || {
        format!(
            "--shard auto: the Slurm array is not one range (SLURM_ARRAY_TASK_MIN={min}, \
             SLURM_ARRAY_TASK_MAX={max}, SLURM_ARRAY_TASK_STEP={step}, \
             SLURM_ARRAY_TASK_COUNT={count}, SLURM_ARRAY_TASK_ID={id}): a sparse index list \
             cannot be mapped to shards; submit a contiguous range (--array=0-{}) or set {INDEX_ENV} \
             and {COUNT_ENV}",
            count.saturating_sub(1)
        )
    };
    if max < min || id < min || id > max || (id - min) % step != 0 {
        return Err(sparse());
    }
    if (max - min) / step + 1 != count || (max - min) % step != 0 {
        return Err(sparse());
    }
    Ok(Assignment {
        index: (id - min) / step,
        count,
        scheduler: Scheduler::Slurm,
        first_task: min,
        task_step: step,
    })
}

/// A set of items (seed indices, sweep points) as sorted, disjoint half-open ranges
/// `[from, until)`, which is how a shard file lists what it covers: a million seeds run by
/// one task are one range, those of a round-robin shard one range per seed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cover(Vec<[u64; 2]>);

impl Cover {
    /// The set of `items`, in any order, repeats allowed.
    pub fn of(items: impl IntoIterator<Item = u64>) -> Cover {
        let mut sorted: Vec<u64> = items.into_iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut ranges: Vec<[u64; 2]> = Vec::new();
        for item in sorted {
            match ranges.last_mut() {
                // u64::MAX, which no item reaches, makes an empty range a check refuses.
                Some(last) if last[1] == item => last[1] = item.saturating_add(1),
                _ => ranges.push([item, item.saturating_add(1)]),
            }
        }
        Cover(ranges)
    }

    /// Every item, in order.
    pub fn items(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().flat_map(|r| r[0]..r[1])
    }

    pub fn len(&self) -> u64 {
        (self.0.iter()).fold(0, |n: u64, r| n.saturating_add(r[1].saturating_sub(r[0])))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, item: u64) -> bool {
        let at = self.0.partition_point(|r| r[1] <= item);
        self.0.get(at).is_some_and(|r| r[0] <= item)
    }

    /// Whether the ranges are sorted, disjoint, non-empty and below `items`: what a file read
    /// back must hold before its cover is believed.
    pub fn is_valid_below(&self, items: u64) -> bool {
        self.0.iter().all(|r| r[0] < r[1] && r[1] <= items)
            && self.0.windows(2).all(|w| w[0][1] < w[1][0])
    }

    pub fn union(&self, other: &Cover) -> Cover {
        let mut ranges: Vec<[u64; 2]> = self.0.iter().chain(&other.0).copied().collect();
        ranges.sort_unstable();
        let mut merged: Vec<[u64; 2]> = Vec::new();
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r[0] <= last[1] => last[1] = last[1].max(r[1]),
                _ => merged.push(r),
            }
        }
        Cover(merged)
    }

    /// The items of `0..items` not in the set.
    pub fn missing(&self, items: u64) -> Cover {
        let mut gaps = Vec::new();
        let mut at = 0;
        for r in &self.0 {
            if r[0] > at {
                gaps.push([at, r[0].min(items)]);
            }
            at = at.max(r[1]);
        }
        if at < items {
            gaps.push([at, items]);
        }
        Cover(gaps.into_iter().filter(|r| r[0] < r[1]).collect())
    }
}

/// What a shard file holds: the items it covers and, when one split made it, that split and
/// its shards among it. Every shard file (swarm, plan, calibration) carries one, so merging
/// is the same set union for all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    /// The split the shards came from (index: the first shard held), when one split made them.
    pub split: Option<Assignment>,
    /// The split's shard indices held.
    pub shards: Cover,
    /// The items held: seed indices, or a calibration's runs.
    pub covered: Cover,
}

impl Holding {
    /// What one shard's run holds.
    pub fn of_shard(shard: Assignment, items: impl IntoIterator<Item = u64>) -> Holding {
        Holding {
            split: Some(shard),
            shards: Cover::of([shard.index]),
            covered: Cover::of(items),
        }
    }

    /// Adds what `other` holds; the split stays only when both came from the same one.
    pub fn unite(&mut self, other: &Holding) {
        let same = |a: Option<Assignment>| a.map(|a| Assignment { index: 0, ..a });
        if same(self.split) != same(other.split) {
            self.split = None;
        }
        self.shards = match self.split {
            Some(_) => self.shards.union(&other.shards),
            None => Cover::default(),
        };
        self.covered = self.covered.union(&other.covered);
    }

    /// Whether a file read back holds what faultline could have written: a valid split, and
    /// exactly the `held` items of `0..items` it says it covers.
    pub fn is_valid(&self, items: u64, held: &Cover) -> bool {
        self.split.is_none_or(|s| s.is_valid())
            && (self.shards).is_valid_below(self.split.map_or(0, |s| s.count))
            && self.covered.is_valid_below(items)
            && *held == self.covered
    }

    /// The items of `0..items` not held.
    pub fn missing(&self, items: u64) -> Cover {
        self.covered.missing(items)
    }
}

/// A list of numbers as Slurm's `--array` writes it: `3,17,20-25`.
pub fn compact(items: impl IntoIterator<Item = u64>) -> String {
    let cover = Cover::of(items);
    let parts: Vec<String> = cover
        .0
        .iter()
        .map(|r| match r[1] - r[0] {
            1 => r[0].to_string(),
            2 => format!("{},{}", r[0], r[0] + 1),
            _ => format!("{}-{}", r[0], r[1] - 1),
        })
        .collect();
    parts.join(",")
}

/// How to run again the shards of `split` that hold the `missing` items, as the scheduler that
/// ran the split takes it: `shards 3,17 of 1000; resubmit: sbatch --array=3,17 ...`.
pub fn resubmission(missing: &Cover, split: Option<&Assignment>) -> String {
    let Some(split) = split else {
        return "the files name no one split, so run them again with --shard I/N over a split \
                that covers them"
            .to_string();
    };
    let shards: Vec<u64> = Cover::of(missing.items().map(|item| item % split.count))
        .items()
        .collect();
    let tasks = compact(shards.iter().map(|&s| split.task_id(s)));
    let flags: Vec<String> = (shards.iter().take(3))
        .map(|s| format!("--shard {s}/{}", split.count))
        .collect();
    let how = match split.scheduler {
        Scheduler::Slurm => format!("sbatch --array={tasks} with the same script"),
        Scheduler::Kubernetes => format!(
            "the Indexed Job's indexes {tasks} (completions {}, the same FAULTLINE_SHARD_COUNT)",
            split.count
        ),
        _ => format!("--array={tasks}"),
    };
    format!(
        "shards {} of {}; resubmit: {how}; or one at a time: {}{}",
        compact(shards.iter().copied()),
        split.count,
        flags.join(", "),
        if shards.len() > 3 { ", ..." } else { "" }
    )
}

/// Every variable [`resolve`] reads.
pub const SHARD_VARIABLES: [&str; 12] = [
    INDEX_ENV,
    COUNT_ENV,
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
    "SLURM_ARRAY_TASK_COUNT",
    "JOB_COMPLETION_INDEX",
    "AWS_BATCH_JOB_ARRAY_INDEX",
    "AWS_BATCH_JOB_ARRAY_SIZE",
    "BATCH_TASK_INDEX",
    "BATCH_TASK_COUNT",
];

/// The process's environment as [`resolve`] reads it: only the variables it may read, so a
/// shard file or an error never carries anything else.
pub fn shard_env_of(vars: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, String> {
    vars.into_iter()
        .filter(|(name, _)| SHARD_VARIABLES.contains(&name.as_str()))
        .collect()
}

/// The name a shard's file takes in `--out DIR/`: `<command>-<digest8>-<i>-of-<n>.json`, the
/// same for a retried task, which so overwrites its own file.
pub fn shard_file_name(command: &str, digest: &str, shard: &Assignment) -> String {
    let short: String = digest.chars().take(8).collect();
    format!("{command}-{short}-{}-of-{}.json", shard.index, shard.count)
}

#[cfg(test)]
mod tests;
