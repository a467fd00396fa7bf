//! Scenario keys for faults that slow the job or cut links rather than kill ranks: link flaps
//! and the transport policy (`[fabric] transport`, `retry_*`, `[[faults.link_flap]]`), and
//! stragglers with their scores and mitigation (`[[faults.straggler]]`,
//! `[recovery] straggler_*`); and fail-slow links (`[[faults.degrade]]`, the random
//! degrade rate, `[fabric] retransmit_timeout`).

use serde::Deserialize;
use trainer_core::transport::RetryPolicy;
use trainer_core::units::MAX_MODEL_TIME_NS;

use super::{duration, duration_in};
use crate::config::{
    ClusterConfig, DegradeConfig, DegradeSpec, DegradeTarget, LinkFaultConfig, LinkFlapSpec,
    StragglerConfig, StragglerDetection, StragglerKind, StragglerSpec, StragglerTarget, Transport,
    DEGRADE_DEFAULT_BANDWIDTH, DEGRADE_DEFAULT_DURATION_NS,
};
use crate::link::LinkRef;
use crate::source::{in_range, within, ScenarioError, Source};

/// `[[faults.link_flap]]`: `link` goes down at `at` for `down`, `count` times, one every
/// `period`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLinkFlap {
    link: String,
    at: String,
    down: String,
    #[serde(default = "one")]
    count: i64,
    period: Option<String>,
}

fn one() -> i64 {
    1
}

/// `[[faults.straggler]]`: `gpu` or `node` runs `factor` times slower from `from` for
/// `duration`; `kind` is "compute" (the default) or "nic".
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStraggler {
    gpu: Option<i64>,
    node: Option<i64>,
    #[serde(default = "compute")]
    kind: String,
    factor: f64,
    #[serde(default = "zero_time")]
    from: String,
    duration: String,
}

fn compute() -> String {
    "compute".into()
}
fn zero_time() -> String {
    "0s".into()
}

/// The transport keys of `[fabric]`.
pub(super) struct RawTransport<'a> {
    pub transport: &'a str,
    pub retry_initial_backoff: &'a str,
    pub retry_max_backoff: &'a str,
    pub retry_budget: &'a str,
}

/// `[faults.rates]`'s random link flaps.
pub(super) struct RawFlapRate<'a> {
    pub per_1000_link_days: f64,
    pub down: &'a str,
}

/// The straggler keys of `[recovery]`.
pub(super) struct RawStragglerRecovery<'a> {
    pub detection: bool,
    pub threshold: f64,
    pub patience: i64,
    pub mitigation: &'a str,
}

pub(super) fn validate_link_faults(
    src: &Source,
    t: &RawTransport,
    flaps: &[RawLinkFlap],
    rate: &RawFlapRate,
    cluster: &ClusterConfig,
    collective_timeout_ns: Option<u64>,
) -> Result<LinkFaultConfig, ScenarioError> {
    let transport = validate_transport(src, t)?;
    let specs = (flaps.iter().enumerate())
        .map(|(idx, f)| validate_flap(src, idx, f, cluster, collective_timeout_ns))
        .collect::<Result<Vec<_>, _>>()?;
    let per_1000_link_days = rate.per_1000_link_days;
    let rate_key = "faults.rates.link_flaps_per_1000_link_days";
    // 1e6 per 1,000 link-days is a thousand flaps a link a day, far past any real fabric,
    // but what a test needs to see a few flaps in a run of seconds.
    if !(per_1000_link_days.is_finite() && (0.0..=1e6).contains(&per_1000_link_days)) {
        return Err(src.error(
            rate_key,
            format!("expected a rate from 0 to 1e6, got {per_1000_link_days}"),
        ));
    }
    let random_flap_down_ns = duration_in(
        src,
        "faults.rates.link_flap_down",
        rate.down,
        (1, MAX_MODEL_TIME_NS),
        "from 1ns to 13d",
    )?;
    if per_1000_link_days > 0.0 && collective_timeout_ns.is_none() {
        return Err(src.error(
            rate_key,
            "a transfer over a dead link can be lost, and only the collective watchdog \
             notices; set recovery.collective_timeout",
        ));
    }
    Ok(LinkFaultConfig {
        transport,
        flaps: specs,
        random_flap_rate_per_link_per_ns: per_1000_link_days / 1000.0 / 86_400e9,
        random_flap_down_ns,
    })
}

/// `[fabric] transport` and, for `retry`, its backoff and budget.
fn validate_transport(src: &Source, t: &RawTransport) -> Result<Transport, ScenarioError> {
    Ok(match t.transport {
        "plain" => Transport::Plain,
        "retry" => {
            let (initial, max, budget) = retry_times(src, t)?;
            Transport::Retry(RetryPolicy {
                initial_backoff_ns: initial,
                max_backoff_ns: max,
                budget_ns: budget,
            })
        }
        other => {
            return Err(src.error(
                "fabric.transport",
                format!("unknown transport {other:?}; expected \"plain\" or \"retry\""),
            ))
        }
    })
}

/// The retry transport's first wait, longest wait and budget. Each wait is an event of every
/// transfer that waits, so a transfer may wait at most `MAX_RETRY_WAITS` times in its budget.
fn retry_times(src: &Source, t: &RawTransport) -> Result<(u64, u64, u64), ScenarioError> {
    const US: u64 = 1_000;
    let initial = duration_in(
        src,
        "fabric.retry_initial_backoff",
        t.retry_initial_backoff,
        (US, 10_000_000 * US),
        "from 1us to 10s",
    )?;
    let max = duration_in(
        src,
        "fabric.retry_max_backoff",
        t.retry_max_backoff,
        (1_000 * US, 600_000_000 * US),
        "from 1ms to 10min",
    )?;
    if max < initial {
        return Err(src.error(
            "fabric.retry_max_backoff",
            "expected at least fabric.retry_initial_backoff",
        ));
    }
    let budget = duration(src, "fabric.retry_budget", t.retry_budget)?;
    if budget / max > MAX_RETRY_WAITS {
        return Err(src.error(
            "fabric.retry_budget",
            format!(
                "expected at most {MAX_RETRY_WAITS} x fabric.retry_max_backoff, so that a \
                 transfer waits at most {MAX_RETRY_WAITS} times, got {:?}",
                t.retry_budget
            ),
        ));
    }
    Ok((initial, max, budget))
}

const MAX_RETRY_WAITS: u64 = 10_000;

/// One `[[faults.link_flap]]` entry.
fn validate_flap(
    src: &Source,
    idx: usize,
    f: &RawLinkFlap,
    cluster: &ClusterConfig,
    collective_timeout_ns: Option<u64>,
) -> Result<LinkFlapSpec, ScenarioError> {
    let key = |field: &str| format!("faults.link_flap.{idx}.{field}");
    let link =
        LinkRef::parse(&f.link, cluster).map_err(|message| src.error(&key("link"), message))?;
    let at_ns = duration(src, &key("at"), &f.at)?;
    let down_ns = duration(src, &key("down"), &f.down)?;
    if down_ns == 0 {
        return Err(src.error(&key("down"), "expected a duration above zero"));
    }
    let count = in_range(src, &key("count"), f.count, 1, 1_000_000)? as u32;
    let period_ns = match (&f.period, count) {
        (None, 1) => 0,
        (None, _) => {
            return Err(src.error(
                &key("count"),
                "`period` is required when a link flaps more than once",
            ))
        }
        (Some(text), _) => {
            let period = duration(src, &key("period"), text)?;
            if period <= down_ns {
                return Err(src.error(
                    &key("period"),
                    "expected a period longer than `down` (the link must come back up \
                     between flaps)",
                ));
            }
            period
        }
    };
    if collective_timeout_ns.is_none() {
        return Err(src.error(
            &key("link"),
            "a transfer over a dead link can be lost, and only the collective watchdog \
             notices; set recovery.collective_timeout",
        ));
    }
    Ok(LinkFlapSpec {
        name: f.link.clone(),
        link,
        at_ns,
        down_ns,
        count,
        period_ns,
    })
}

pub(super) fn validate_stragglers(
    src: &Source,
    r: &RawStragglerRecovery,
    stragglers: &[RawStraggler],
    gpus: usize,
    nodes: usize,
) -> Result<StragglerConfig, ScenarioError> {
    let specs = (stragglers.iter().enumerate())
        .map(|(idx, s)| validate_straggler(src, idx, s, gpus, nodes))
        .collect::<Result<Vec<_>, _>>()?;
    let evict = match r.mitigation {
        "off" => false,
        "evict" => true,
        other => {
            return Err(src.error(
                "recovery.straggler_mitigation",
                format!("unknown mitigation {other:?}; expected \"off\" or \"evict\""),
            ))
        }
    };
    if evict && !r.detection {
        return Err(src.error(
            "recovery.straggler_mitigation",
            "\"evict\" acts on straggler scores; set recovery.straggler_detection = true",
        ));
    }
    if !(r.threshold.is_finite() && r.threshold > 1.0 && r.threshold <= 100.0) {
        return Err(src.error(
            "recovery.straggler_threshold",
            format!(
                "expected a score above 1 and at most 100 (a rank's time over the median), got {}",
                r.threshold
            ),
        ));
    }
    let patience = in_range(src, "recovery.straggler_patience", r.patience, 1, 1_000_000)? as u32;
    Ok(StragglerConfig {
        stragglers: specs,
        detection: r.detection.then_some(StragglerDetection {
            threshold: r.threshold,
            patience,
            evict,
        }),
    })
}

/// One `[[faults.straggler]]` entry.
fn validate_straggler(
    src: &Source,
    idx: usize,
    s: &RawStraggler,
    gpus: usize,
    nodes: usize,
) -> Result<StragglerSpec, ScenarioError> {
    let key = |field: &str| format!("faults.straggler.{idx}.{field}");
    let target = match (s.gpu, s.node) {
        (Some(gpu), None) => {
            StragglerTarget::Gpu(in_range(src, &key("gpu"), gpu, 0, gpus as i64 - 1)?)
        }
        (None, Some(node)) => {
            StragglerTarget::Node(in_range(src, &key("node"), node, 0, nodes as i64 - 1)?)
        }
        _ => {
            return Err(src.error(
                &format!("faults.straggler.{idx}"),
                "expected exactly one of `gpu` or `node`",
            ))
        }
    };
    let kind = match s.kind.as_str() {
        "compute" => StragglerKind::Compute,
        "nic" => StragglerKind::Nic,
        other => {
            return Err(src.error(
                &key("kind"),
                format!("unknown straggler kind {other:?}; expected \"compute\" or \"nic\""),
            ))
        }
    };
    if !(s.factor.is_finite() && (1.0..=1000.0).contains(&s.factor)) {
        return Err(src.error(
            &key("factor"),
            format!(
                "expected a slowdown factor from 1 to 1000, got {}",
                s.factor
            ),
        ));
    }
    let from_ns = duration(src, &key("from"), &s.from)?;
    let duration_ns = duration(src, &key("duration"), &s.duration)?;
    if duration_ns == 0 {
        return Err(src.error(&key("duration"), "expected a duration above zero"));
    }
    Ok(StragglerSpec {
        target,
        kind,
        factor: s.factor,
        from_ns,
        until_ns: from_ns.saturating_add(duration_ns),
    })
}

/// `[[faults.degrade]]`: a fail-slow link. Exactly one target: `link` (a name from
/// `topo --links`), `nic` (a GPU, for `nic:gpu=G`) or `nvlink` (a node: every NVLink of its
/// GPUs); `bandwidth` kept, `loss`, `at` and `duration`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDegrade {
    link: Option<String>,
    nic: Option<i64>,
    nvlink: Option<i64>,
    bandwidth: Option<f64>,
    #[serde(default)]
    loss: f64,
    at: String,
    duration: Option<String>,
}

/// `[faults.rates]`'s random degrades and `[fabric] retransmit_timeout`.
pub(super) struct RawDegradeRate<'a> {
    pub per_1000_link_days: f64,
    pub duration: Option<&'a str>,
    pub bandwidth: Option<f64>,
    pub loss: Option<f64>,
    pub retransmit_timeout: &'a str,
}

/// The bandwidth a degraded link keeps: from 1/1000 (a straggler's largest factor) to all.
const MIN_DEGRADE_BANDWIDTH: f64 = 1e-3;
/// The largest loss: beyond it, most transfers would be resent up to the retry count.
const MAX_DEGRADE_LOSS: f64 = 0.99;

pub(super) fn validate_degrades(
    src: &Source,
    degrades: &[RawDegrade],
    rate: &RawDegradeRate,
    cluster: &ClusterConfig,
) -> Result<DegradeConfig, ScenarioError> {
    let specs = (degrades.iter().enumerate())
        .map(|(idx, d)| validate_degrade(src, idx, d, cluster))
        .collect::<Result<Vec<_>, _>>()?;
    let per_1000_link_days = rate.per_1000_link_days;
    // As the random flaps' rate: far past any fabric at the top, for tests of seconds.
    if !(per_1000_link_days.is_finite() && (0.0..=1e6).contains(&per_1000_link_days)) {
        return Err(src.error(
            "faults.rates.degrades_per_1000_link_days",
            format!("expected a rate from 0 to 1e6, got {per_1000_link_days}"),
        ));
    }
    let random_duration_ns = match rate.duration {
        None => DEGRADE_DEFAULT_DURATION_NS,
        Some(text) => duration_in(
            src,
            "faults.rates.degrade_duration",
            text,
            (1, MAX_MODEL_TIME_NS),
            "from 1ns to 13d",
        )?,
    };
    let random_bandwidth = rate.bandwidth.unwrap_or(DEGRADE_DEFAULT_BANDWIDTH);
    within(
        src,
        "faults.rates.degrade_bandwidth",
        random_bandwidth,
        (MIN_DEGRADE_BANDWIDTH, 1.0),
    )?;
    let random_loss = rate.loss.unwrap_or(0.0);
    within(
        src,
        "faults.rates.degrade_loss",
        random_loss,
        (0.0, MAX_DEGRADE_LOSS),
    )?;
    let retransmit_timeout_ns = duration_in(
        src,
        "fabric.retransmit_timeout",
        rate.retransmit_timeout,
        (1_000, 600 * 1_000_000_000),
        "from 1us to 10min",
    )?;
    Ok(DegradeConfig {
        degrades: specs,
        random_rate_per_link_per_ns: per_1000_link_days / 1000.0 / 86_400e9,
        random_duration_ns,
        random_bandwidth,
        random_loss,
        retransmit_timeout_ns,
    })
}

/// One `[[faults.degrade]]` entry.
fn validate_degrade(
    src: &Source,
    idx: usize,
    d: &RawDegrade,
    cluster: &ClusterConfig,
) -> Result<DegradeSpec, ScenarioError> {
    let key = |field: &str| format!("faults.degrade.{idx}.{field}");
    let (gpus, nodes) = (cluster.gpus as i64, cluster.node_count() as i64);
    let target = match (&d.link, d.nic, d.nvlink) {
        (Some(name), None, None) => DegradeTarget::Link(
            LinkRef::parse(name, cluster).map_err(|message| src.error(&key("link"), message))?,
        ),
        (None, Some(gpu), None) => DegradeTarget::Link(LinkRef::Nic {
            gpu: in_range(src, &key("nic"), gpu, 0, gpus - 1)?,
        }),
        (None, None, Some(node)) => {
            DegradeTarget::NodeNvlinks(in_range(src, &key("nvlink"), node, 0, nodes - 1)?)
        }
        _ => {
            return Err(src.error(
                &format!("faults.degrade.{idx}"),
                "expected exactly one of `link` (a link name), `nic` (a GPU) or `nvlink` (a node)",
            ))
        }
    };
    let bandwidth = d.bandwidth.unwrap_or(DEGRADE_DEFAULT_BANDWIDTH);
    within(
        src,
        &key("bandwidth"),
        bandwidth,
        (MIN_DEGRADE_BANDWIDTH, 1.0),
    )?;
    within(src, &key("loss"), d.loss, (0.0, MAX_DEGRADE_LOSS))?;
    let at_ns = duration(src, &key("at"), &d.at)?;
    let duration_ns = match &d.duration {
        None => DEGRADE_DEFAULT_DURATION_NS,
        Some(text) => duration_in(
            src,
            &key("duration"),
            text,
            (1, MAX_MODEL_TIME_NS),
            "from 1ns to 13d",
        )?,
    };
    Ok(DegradeSpec {
        target,
        bandwidth,
        loss: d.loss,
        at_ns,
        until_ns: at_ns.saturating_add(duration_ns),
    })
}
