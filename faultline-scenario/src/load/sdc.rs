//! The scenario's silent-data-corruption settings: `[detection]` (which checks the trainer
//! runs, and what checksums cost) and `[[faults.sdc]]` (what the world corrupts).

use serde::Deserialize;
use trainer_core::integrity::DetectionPolicy;

use crate::config::{SdcKind, SdcSpec, DEFAULT_TRIGGER_MASK, DEFAULT_TRIGGER_VALUE};
use crate::source::{in_range, ScenarioError, Source};

/// Every check on by default, at production-like settings.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDetection {
    payload_checksums: bool,
    /// How fast a GPU checksums a payload (read once, fused with the copy).
    checksum_bandwidth: String,
    /// A step is suspect when the summed gradient's norm exceeds this many times its running
    /// average; 0 switches the guard off.
    gradient_norm_guard_factor: f64,
    /// The same on the summed loss; 0 switches it off.
    loss_guard_factor: f64,
    /// Compare replicas' parameter fingerprints every this many steps; 0: never.
    fingerprint_every_steps: i64,
    rerun_suspect_steps: bool,
}

impl Default for RawDetection {
    fn default() -> Self {
        let d = DetectionPolicy::DEFAULT;
        RawDetection {
            payload_checksums: d.payload_checksums,
            checksum_bandwidth: "2TB/s".into(),
            gradient_norm_guard_factor: d.gradient_norm_factor.unwrap_or(0.0),
            loss_guard_factor: d.loss_factor.unwrap_or(0.0),
            fingerprint_every_steps: d.fingerprint_every_steps as i64,
            rerun_suspect_steps: d.rerun_suspect_steps,
        }
    }
}

/// One corruption: `kind` = "in-flight" | "gradient" | "parameters" | "reduction-kernel".
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSdc {
    kind: String,
    gpu: i64,
    at_step: Option<i64>,
    bit: Option<i64>,
    count: Option<i64>,
    trigger_mask: Option<i64>,
    trigger_value: Option<i64>,
}

pub(super) fn validate_detection(
    src: &Source,
    d: &RawDetection,
) -> Result<(DetectionPolicy, f64), ScenarioError> {
    let factor = |key: &str, value: f64| -> Result<Option<f64>, ScenarioError> {
        if value == 0.0 {
            return Ok(None);
        }
        if !(value.is_finite() && (1.0..=1e12).contains(&value)) {
            return Err(src.error(
                key,
                format!("expected 0 (off) or a factor from 1 to 1e12, got {value}"),
            ));
        }
        Ok(Some(value))
    };
    let checksum_bytes_per_s =
        super::bandwidth(src, "detection.checksum_bandwidth", &d.checksum_bandwidth)?;
    let policy = DetectionPolicy {
        payload_checksums: d.payload_checksums,
        gradient_norm_factor: factor(
            "detection.gradient_norm_guard_factor",
            d.gradient_norm_guard_factor,
        )?,
        loss_factor: factor("detection.loss_guard_factor", d.loss_guard_factor)?,
        fingerprint_every_steps: in_range(
            src,
            "detection.fingerprint_every_steps",
            d.fingerprint_every_steps,
            0,
            1_000_000,
        )? as u64,
        rerun_suspect_steps: d.rerun_suspect_steps,
    };
    Ok((policy, checksum_bytes_per_s))
}

pub(super) fn validate_sdc(
    src: &Source,
    entries: &[RawSdc],
    gpus: usize,
) -> Result<Vec<SdcSpec>, ScenarioError> {
    (entries.iter().enumerate())
        .map(|(idx, e)| validate_entry(src, idx, e, gpus))
        .collect()
}

/// One `[[faults.sdc]]` entry.
fn validate_entry(
    src: &Source,
    idx: usize,
    e: &RawSdc,
    gpus: usize,
) -> Result<SdcSpec, ScenarioError> {
    let key = |field: &str| format!("faults.sdc.{idx}.{field}");
    let kind = match e.kind.as_str() {
        "in-flight" => SdcKind::InFlight,
        "gradient" => SdcKind::Gradient,
        "parameters" => SdcKind::Parameters,
        "reduction-kernel" => SdcKind::ReductionKernel,
        other => {
            return Err(src.error(
                &key("kind"),
                format!(
                    "unknown SDC kind {other:?}; expected \"in-flight\", \"gradient\", \
                     \"parameters\" or \"reduction-kernel\""
                ),
            ))
        }
    };
    let gpu = in_range(src, &key("gpu"), e.gpu, 0, gpus as i64 - 1)?;
    let at_step = match (e.at_step, kind) {
        (Some(step), _) => in_range(src, &key("at_step"), step, 0, i64::MAX)? as u64,
        (None, SdcKind::ReductionKernel) => 0,
        (None, _) => {
            return Err(src.error(
                &format!("faults.sdc.{idx}"),
                format!("`at_step` is required for kind {:?}", e.kind),
            ))
        }
    };
    let bit = match e.bit {
        Some(bit) => Some(in_range(src, &key("bit"), bit, 0, 31)? as u32),
        None => None,
    };
    let count = match e.count {
        Some(count) if kind == SdcKind::ReductionKernel => {
            let _ = count;
            return Err(src.error(
                &key("count"),
                "a faulty kernel is wrong whenever its trigger matches; `count` is for \
                 the other kinds",
            ));
        }
        Some(count) => in_range(src, &key("count"), count, 1, 1_000_000)? as u64,
        None => 1,
    };
    let (trigger_mask, trigger_value) = validate_trigger(src, idx, e, kind)?;
    Ok(SdcSpec {
        kind,
        gpu,
        at_step,
        bit,
        count,
        trigger_mask,
        trigger_value,
    })
}

/// A faulty kernel's trigger: the source elements whose bits, masked, equal the value. Only
/// `reduction-kernel` entries may set it.
fn validate_trigger(
    src: &Source,
    idx: usize,
    e: &RawSdc,
    kind: SdcKind,
) -> Result<(u32, u32), ScenarioError> {
    let key = |field: &str| format!("faults.sdc.{idx}.{field}");
    if kind != SdcKind::ReductionKernel {
        for (field, value) in [
            ("trigger_mask", e.trigger_mask),
            ("trigger_value", e.trigger_value),
        ] {
            if value.is_some() {
                return Err(src.error(
                    &key(field),
                    format!("`{field}` applies only to kind \"reduction-kernel\""),
                ));
            }
        }
    }
    let trigger_mask = match e.trigger_mask {
        Some(mask) => in_range(src, &key("trigger_mask"), mask, 1, u32::MAX as i64)? as u32,
        None => DEFAULT_TRIGGER_MASK,
    };
    let trigger_value = match e.trigger_value {
        Some(value) => in_range(src, &key("trigger_value"), value, 0, u32::MAX as i64)? as u32,
        None => DEFAULT_TRIGGER_VALUE & trigger_mask,
    };
    if trigger_value & !trigger_mask != 0 {
        return Err(src.error(
            &key("trigger_value"),
            format!(
                "{trigger_value:#x} has bits outside trigger_mask {trigger_mask:#x}, so it \
                 could never match"
            ),
        ));
    }
    Ok((trigger_mask, trigger_value))
}
