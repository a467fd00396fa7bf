//! The invariants of DESIGN.md, checked on a faulty run's report against the same scenario's
//! fault-free run and a second run of the same seed. What a check finds is data (a
//! [`Violation`]), never a panic.
//!
//! Checked: determinism (a second run gives the same trace digest, parameter digest and model
//! time), replicas agree, fault-free equivalence (a run that finished ends with the fault-free
//! parameter digest), checkpoint atomicity (the storage audit saw no restore read a checkpoint
//! not atomically committed) and liveness (the job finishes every step, within a bound of model
//! time after the last fault) and no silent escape (every injected SDC is detected or counted
//! and listed as escaped: per kind, injected = detected + escaped, and the escapes listed are
//! the escapes counted). Exactness of single collectives is checked by `faultline collective`
//! and the collective tests; in a training run it shows as fault-free equivalence.
//!
//! A reported escape is not a violation (DESIGN.md: "either detected or counted and reported
//! as escaped"), and it may explain wrong parameters: a finished run with one is held to
//! fault-free equivalence and replicas agreeing through the same schedule without its SDC
//! faults (one more run), and the swarm's verdict counts such runs apart.

use serde::{Deserialize, Serialize};

use crate::books::FaultKind;
use crate::run::{run_scenario, RunReport};
use crate::scenario::Scenario;
use crate::units::format_duration_ns;

trainer_core::named_enum! {
    /// The invariants, in the order a run's first violation is named.
    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Invariant {
        CheckpointAtomicity = "checkpoint_atomicity",
        FaultFreeEquivalence = "fault_free_equivalence",
        ReplicasAgree = "replicas_agree",
        Determinism = "determinism",
        NoSilentEscape = "no_silent_escape",
        Liveness = "liveness",
        HangDiagnosed = "hang_diagnosed",
    }
}

impl Invariant {
    /// What holding it means, for help texts.
    pub fn meaning(self) -> &'static str {
        match self {
            Invariant::CheckpointAtomicity => {
                "no restore read a checkpoint whose manifest was committed before every shard \
                 was durable, or that was never committed"
            }
            Invariant::FaultFreeEquivalence => {
                "a run that finished ends with the fault-free run's parameter digest"
            }
            Invariant::ReplicasAgree => "every replica ends with the same parameters",
            Invariant::Determinism => {
                "both runs give the same trace digest, parameters and model time"
            }
            Invariant::NoSilentEscape => {
                "every injected SDC is detected, counted and listed as escaped, or discarded \
                 with a payload no rank took"
            }
            Invariant::Liveness => {
                "the job finishes every step, at most twice the fault-free run's model time \
                 plus one detection and one restart after its last fault"
            }
            Invariant::HangDiagnosed => {
                "a hang or desync the watchdog or the progress monitor stopped is diagnosed \
                 within the timeout plus a check and a step, and the flight recorder names \
                 its rank"
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
}

/// What a faulty run is judged against.
#[derive(Clone, Debug)]
pub struct Reference {
    /// The same scenario with every fault switched off.
    pub fault_free: RunReport,
    /// Model time the job may take, after the last fault, to finish every step.
    pub liveness_bound_ns: u64,
}

impl Reference {
    /// Runs `scenario` without faults. The liveness bound: twice the whole fault-free job (one
    /// for the restore, which reads one checkpoint, one for the steps done again and the rest),
    /// plus the longest detection (the heartbeat monitor's, or the collective timeout when
    /// there is no monitor) and one restart. A job that recovers from its last fault within
    /// that bound has made progress again.
    pub fn of(scenario: &Scenario) -> Result<Reference, String> {
        let fault_free =
            run_scenario(&scenario.clone().without_faults()).map_err(|e| e.to_string())?;
        let control = &scenario.control;
        let heartbeat = control
            .heartbeat_interval_ns
            .map(|interval| interval * (control.heartbeat_misses + 1));
        let detection_ns = heartbeat.or(control.collective_timeout_ns).unwrap_or(0);
        let liveness_bound_ns =
            2 * fault_free.model_time_ns + detection_ns + control.restart_time_ns;
        Ok(Reference {
            fault_free,
            liveness_bound_ns,
        })
    }
}

/// When the run's faults are all over: the last injected fault, or the end of the last storage
/// fault window, link flap, straggler or degrade window, whichever is later.
pub fn healed_from_ns(scenario: &Scenario, report: &RunReport) -> u64 {
    let storage = &scenario.storage;
    let windows = storage
        .slow
        .iter()
        .map(|s| s.window)
        .chain(storage.failing.iter().copied())
        .map(|w| w.until_ns);
    let flaps = scenario.link_faults.flaps.iter().map(|f| {
        f.at_ns
            .saturating_add(
                f.period_ns
                    .saturating_mul(u64::from(f.count.saturating_sub(1))),
            )
            .saturating_add(f.down_ns)
    });
    let stragglers = scenario.stragglers.stragglers.iter().map(|s| s.until_ns);
    let degrades = scenario.degrades.degrades.iter().map(|d| d.until_ns);
    windows
        .chain(flaps)
        .chain(stragglers)
        .chain(degrades)
        .chain(report.last_fault_ns)
        .max()
        .unwrap_or(0)
}

/// The liveness bound for this run: the reference's, plus the collective timeout when a link
/// flaps (a transfer lost on a dead link is noticed by the collective watchdog alone).
pub fn liveness_bound_ns(scenario: &Scenario, reference: &Reference) -> u64 {
    let link_faults = &scenario.link_faults;
    let flaps = !link_faults.flaps.is_empty() || link_faults.random_flap_rate_per_link_per_ns > 0.0;
    let control = &scenario.control;
    let gray = !control.hangs.is_empty() || !control.desyncs.is_empty();
    let watchdog = if flaps || gray {
        scenario.control.collective_timeout_ns.unwrap_or(0)
    } else {
        0
    };
    reference.liveness_bound_ns + watchdog
}

/// Whether the run trained some steps with replicas dropped (the per-replica policy): those
/// steps averaged fewer samples, so fault-free equivalence does not apply; replicas agreeing,
/// determinism, atomicity, escapes and liveness still do.
fn changed_arithmetic(report: &RunReport) -> bool {
    report.per_replica.as_ref().is_some_and(|p| p.regroups > 0)
}

/// Checks one run. `run` is the run's report, or why it could not finish (a deadlock);
/// `rerun` the same for a second run of the same scenario and seed, when there was one.
pub fn check(
    scenario: &Scenario,
    reference: &Reference,
    run: &Result<RunReport, String>,
    rerun: Option<&Result<RunReport, String>>,
) -> Vec<Violation> {
    let mut out: Vec<Violation> = rerun
        .and_then(|rerun| check_determinism(run, rerun))
        .into_iter()
        .collect();
    let report = match run {
        Ok(report) => report,
        Err(error) => {
            out.push(Violation {
                invariant: Invariant::Liveness,
                detail: format!("the run did not finish: {error}"),
            });
            out.sort_by_key(|v| v.invariant);
            return out;
        }
    };
    out.extend(check_atomicity(report));
    // A job marked abandoned only because some ranks had already finished the last step when
    // others died has done its work: that is not a liveness failure.
    let finished = report.steps_completed == report.steps_requested
        && (!report.faults.job_abandoned || report.faults.finished_despite_failure);
    out.extend(check_escapes_counted(report));
    // Reported escapes explain wrong parameters, which then break neither of the next two;
    // whether they really do is checked by a run without them.
    let explained = !report.faults.escaped.is_empty() && finished;
    if explained {
        out.extend(check_escapes_explain(scenario, reference, report));
    }
    if finished && !explained {
        out.extend(check_parameters(reference, report));
    }
    out.extend(check_liveness(scenario, reference, report, finished));
    out.extend(check_hangs_diagnosed(scenario, reference, report));
    out.sort_by_key(|v| v.invariant);
    out
}

/// Each stop that found an injected hang or desync: within the detector's timeout, a tenth
/// of it (its checks) and two fault-free steps (the peers reach the collective after their
/// compute) of the injection, and the rank among those the diagnosis names (when it lists
/// them all).
fn check_hangs_diagnosed(
    scenario: &Scenario,
    reference: &Reference,
    report: &RunReport,
) -> Vec<Violation> {
    let control = &scenario.control;
    // A hang trips whichever detector comes first; a desync only the watchdog (every rank
    // is inside a collective, so none is behind).
    let hang_timeout = [control.collective_timeout_ns, control.progress_timeout_ns]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(0);
    let desync_timeout = control.collective_timeout_ns.unwrap_or(hang_timeout);
    let fault_free = &reference.fault_free;
    let step_ns = fault_free.model_time_ns / fault_free.steps_requested.max(1);
    let mut out = Vec::new();
    for flight in &report.faults.flight_recorder {
        let (Some(injected), d) = (flight.injected, &flight.diagnosis) else {
            continue;
        };
        let timeout = match injected.kind {
            FaultKind::Desync => desync_timeout,
            _ => hang_timeout,
        };
        let bound = timeout + timeout / 10 + 2 * step_ns;
        let latency = d.at_ns.saturating_sub(injected.at_ns);
        if latency > bound {
            out.push(violation(
                Invariant::HangDiagnosed,
                format!(
                    "the {} of rank {} was diagnosed {} after it, over the bound of {}",
                    injected.kind,
                    injected.rank,
                    format_duration_ns(latency),
                    format_duration_ns(bound)
                ),
            ));
        }
        let listed = d.missing_count + d.mismatched_count
            <= d.missing_ranks.len() + d.mismatched_ranks.len();
        let named =
            d.missing_ranks.contains(&injected.rank) || d.mismatched_ranks.contains(&injected.rank);
        if listed && !named {
            out.push(violation(
                Invariant::HangDiagnosed,
                format!(
                    "the {} of rank {}: the recorder said {d}",
                    injected.kind, injected.rank
                ),
            ));
        }
    }
    out
}

fn violation(invariant: Invariant, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// Two runs of one seed give the same trace digest, parameters and model time (or fail alike).
fn check_determinism(
    run: &Result<RunReport, String>,
    rerun: &Result<RunReport, String>,
) -> Option<Violation> {
    let fingerprint = |r: &Result<RunReport, String>| match r {
        Ok(r) => format!(
            "trace {} params {} model time {} ns",
            r.trace_digest, r.param_digest, r.model_time_ns
        ),
        Err(e) => e.clone(),
    };
    let (first, second) = (fingerprint(run), fingerprint(rerun));
    (first != second).then(|| {
        violation(
            Invariant::Determinism,
            format!("two runs of the same seed differ: {first}; then {second}"),
        )
    })
}

/// No restore read a checkpoint that was not atomically committed.
fn check_atomicity(report: &RunReport) -> Option<Violation> {
    if report.atomicity_violation_count == 0 {
        return None;
    }
    let first = (report.atomicity_violations.first())
        .map(|v| format!("at {}: {}", format_duration_ns(v.at_ns), v.what))
        .unwrap_or_default();
    Some(violation(
        Invariant::CheckpointAtomicity,
        format!(
            "{} read(s) of a checkpoint not atomically committed; first {first}",
            report.atomicity_violation_count
        ),
    ))
}

/// Every corruption that entered the job is either detected or counted as escaped, and every
/// counted escape is listed.
fn check_escapes_counted(report: &RunReport) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut counted_escapes = 0;
    for (kind, k) in &report.faults.sdc {
        counted_escapes += k.escaped;
        if k.injected != k.detected + k.escaped + k.discarded {
            out.push(violation(
                Invariant::NoSilentEscape,
                format!(
                    "{kind}: {} injected but {} detected, {} escaped and {} discarded",
                    k.injected, k.detected, k.escaped, k.discarded
                ),
            ));
        }
    }
    if counted_escapes != report.faults.escaped.len() as u64 {
        out.push(violation(
            Invariant::NoSilentEscape,
            format!(
                "{counted_escapes} escape(s) counted per kind, {} listed in faults.escaped",
                report.faults.escaped.len()
            ),
        ));
    }
    out
}

/// Reported escapes explain wrong parameters only if the same schedule without its SDC
/// faults ends as the fault-free run did: this runs it once more (a whole extra simulation),
/// and names what else is wrong when it does not.
fn check_escapes_explain(
    scenario: &Scenario,
    reference: &Reference,
    report: &RunReport,
) -> Option<Violation> {
    let mut without_sdc = scenario.clone();
    without_sdc.sdc.specs.clear();
    let fault_free_digest = &reference.fault_free.param_digest;
    // Liveness of that other run is not this run's to judge.
    let r = run_scenario(&without_sdc).ok()?;
    if r.replicas_agree && (&r.param_digest == fault_free_digest || changed_arithmetic(&r)) {
        return None;
    }
    let disagreeing = if r.replicas_agree {
        ""
    } else {
        " and replicas disagreeing"
    };
    Some(violation(
        Invariant::FaultFreeEquivalence,
        format!(
            "{} SDC escape(s) reported, but they do not explain the result: without its SDC \
             faults the same schedule ends with param digest {}{disagreeing}, the fault-free \
             run with {fault_free_digest}",
            report.faults.escaped.len(),
            r.param_digest,
        ),
    ))
}

/// A finished run's replicas agree and, unless dropped replicas changed the arithmetic, end
/// with the fault-free run's parameters.
fn check_parameters(reference: &Reference, report: &RunReport) -> Vec<Violation> {
    let mut out = Vec::new();
    if !report.replicas_agree {
        out.push(violation(
            Invariant::ReplicasAgree,
            "replicas that finished hold different parameters".into(),
        ));
    }
    let fault_free = &reference.fault_free;
    if !changed_arithmetic(report) && report.param_digest != fault_free.param_digest {
        out.push(violation(
            Invariant::FaultFreeEquivalence,
            format!(
                "finished step {} with param digest {}, the fault-free run with {}",
                report.steps_completed, report.param_digest, fault_free.param_digest
            ),
        ));
    }
    out
}

/// The job finishes every step, within the bound after its last fault.
fn check_liveness(
    scenario: &Scenario,
    reference: &Reference,
    report: &RunReport,
    finished: bool,
) -> Option<Violation> {
    if !finished {
        let abandoned = if report.faults.job_abandoned {
            " (abandoned)"
        } else {
            ""
        };
        return Some(violation(
            Invariant::Liveness,
            format!(
                "the job stopped at step {} of {}{abandoned}",
                report.steps_completed, report.steps_requested
            ),
        ));
    }
    let healed = healed_from_ns(scenario, report);
    let took = report.model_time_ns.saturating_sub(healed);
    let bound = liveness_bound_ns(scenario, reference);
    (took > bound).then(|| {
        violation(
            Invariant::Liveness,
            format!(
                "finished {} after the last fault, over the bound of {}",
                format_duration_ns(took),
                format_duration_ns(bound)
            ),
        )
    })
}

/// Runs `scenario` twice and checks every invariant against `reference`. What
/// `faultline run --check`, the swarm and the shrinker all do for one schedule.
pub fn run_and_check(
    scenario: &Scenario,
    reference: &Reference,
) -> (Result<RunReport, String>, Vec<Violation>) {
    let run = run_scenario(scenario).map_err(|e| e.to_string());
    let rerun = run_scenario(scenario).map_err(|e| e.to_string());
    let violations = check(scenario, reference, &run, Some(&rerun));
    (run, violations)
}
