//! `[[faults.hang]]`: a rank that stops issuing collectives at a step but stays alive, so its
//! heartbeats go on and only collective-level detection (the watchdog) can see it.

use serde::Deserialize;

use crate::config::{HangPoint, HangSpec};
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
        let key = |field: &str| format!("faults.hang.{idx}.{field}");
        let rank = in_range(src, &key("gpu"), h.gpu, 0, gpus as i64 - 1)?;
        let at_step = in_range(src, &key("at_step"), h.at_step, 0, steps as i64 - 1)? as u64;
        let point = HangPoint::from_name(&h.point).ok_or_else(|| {
            src.error(
                &key("point"),
                format!(
                    "unknown hang point {:?}; expected \"data_loader\" or \"kernel\"",
                    h.point
                ),
            )
        })?;
        if specs.iter().any(|s| s.rank == rank && s.at_step == at_step) {
            return Err(src.error(
                &key("at_step"),
                format!("GPU {rank} already hangs at step {at_step}"),
            ));
        }
        specs.push(HangSpec {
            rank,
            at_step,
            point,
        });
    }
    Ok(specs)
}
