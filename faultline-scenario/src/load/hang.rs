//! `[[faults.hang]]`: a rank that stops issuing collectives at a step but stays alive, so its
//! heartbeats go on and only collective-level detection (the watchdog) can see it; and
//! `[[faults.desync]]`: a rank that issues another collective than its peers at a step.

use serde::Deserialize;

use crate::config::{DesyncKind, DesyncSpec, HangPoint, HangSpec};
use crate::source::{in_range, ScenarioError, Source};

/// One hang: `gpu`, `at_step`, and `point` = "data_loader" (before the step's compute) or
/// "kernel" (inside it).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHang {
    gpu: i64,
    at_step: i64,
    #[serde(default = "default_point")]
    point: String,
}

fn default_point() -> String {
    HangPoint::DataLoader.name().into()
}

pub(super) fn validate_hangs(
    src: &Source,
    hangs: &[RawHang],
    gpus: usize,
    steps: u64,
) -> Result<Vec<HangSpec>, ScenarioError> {
    let mut specs: Vec<HangSpec> = Vec::new();
    for (idx, h) in hangs.iter().enumerate() {
        let taken = specs.iter().map(|s| (s.rank, s.at_step));
        let (rank, at_step) =
            gpu_and_step(src, ("hang", idx), (h.gpu, h.at_step), (gpus, steps), taken)?;
        let point = HangPoint::from_name(&h.point).ok_or_else(|| {
            src.error(
                &format!("faults.hang.{idx}.point"),
                format!(
                    "unknown hang point {:?}; expected \"data_loader\" or \"kernel\"",
                    h.point
                ),
            )
        })?;
        specs.push(HangSpec {
            rank,
            at_step,
            point,
        });
    }
    Ok(specs)
}

/// One desync: `gpu` issues, for its first collective of `at_step`, another collective than
/// its peers; `kind` ("sequence", the default, "size" or "op") says how it differs.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDesync {
    gpu: i64,
    at_step: i64,
    #[serde(default = "default_desync_kind")]
    kind: String,
}

fn default_desync_kind() -> String {
    DesyncKind::Sequence.name().into()
}

pub(super) fn validate_desyncs(
    src: &Source,
    desyncs: &[RawDesync],
    gpus: usize,
    steps: u64,
) -> Result<Vec<DesyncSpec>, ScenarioError> {
    let mut specs: Vec<DesyncSpec> = Vec::new();
    for (idx, d) in desyncs.iter().enumerate() {
        let taken = specs.iter().map(|s| (s.rank, s.at_step));
        let (rank, at_step) = gpu_and_step(
            src,
            ("desync", idx),
            (d.gpu, d.at_step),
            (gpus, steps),
            taken,
        )?;
        let kind = DesyncKind::from_name(&d.kind).ok_or_else(|| {
            src.error(
                &format!("faults.desync.{idx}.kind"),
                format!(
                    "unknown desync kind {:?}; expected \"sequence\", \"size\" or \"op\"",
                    d.kind
                ),
            )
        })?;
        specs.push(DesyncSpec {
            rank,
            at_step,
            kind,
        });
    }
    Ok(specs)
}

/// Entry `idx` of `[[faults.<section>]]`'s `gpu` and `at_step`: in the cluster and the run,
/// and not a (GPU, step) an earlier entry of the section took.
fn gpu_and_step(
    src: &Source,
    (section, idx): (&str, usize),
    (gpu, at_step): (i64, i64),
    (gpus, steps): (usize, u64),
    mut taken: impl Iterator<Item = (usize, u64)>,
) -> Result<(usize, u64), ScenarioError> {
    let key = |field: &str| format!("faults.{section}.{idx}.{field}");
    let rank = in_range(src, &key("gpu"), gpu, 0, gpus as i64 - 1)?;
    let at_step = in_range(src, &key("at_step"), at_step, 0, steps as i64 - 1)? as u64;
    if taken.any(|t| t == (rank, at_step)) {
        return Err(src.error(
            &key("at_step"),
            format!("GPU {rank} already has a {section} at step {at_step}"),
        ));
    }
    Ok((rank, at_step))
}
