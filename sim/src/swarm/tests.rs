//! Unit tests of the swarm's parts: schedules as data, their TOML, the shrinker's candidates,
//! the atomicity audit, and the verdict's independence from the thread count.

use std::path::PathBuf;

use super::faults::{draw_schedule, DrawSpace, FaultKind, FaultSpec};
use super::seeds::{parse_seed_range, run_swarm};
use super::Base;
use crate::storage::Audit;
use crate::world::{CrashTarget, CrashWhen, StragglerTarget};
use faultline_scenario::{DegradeTarget, LinkRef};

fn base_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/swarm-checkpoint-restart.toml")
}

const SPACE: DrawSpace = DrawSpace {
    nodes: 4,
    gpus: 32,
    gpus_per_node: 8,
    faulty_until_ns: 6_000_000_000,
    faulty_steps: 9,
    leaves: 4,
    spines_per_leaf: 2,
    link_flaps: true,
};

fn kind_of(fault: &FaultSpec) -> &'static str {
    match fault {
        FaultSpec::Crash {
            when: CrashWhen::AtNs(_),
            target: CrashTarget::Node(_),
        } => "node_crash",
        FaultSpec::Crash {
            when: CrashWhen::AtNs(_),
            target: CrashTarget::Gpu(_),
        } => "gpu_crash",
        FaultSpec::Crash {
            when: CrashWhen::AtStep(_),
            ..
        } => "crash_at_step",
        FaultSpec::Crash {
            when: CrashWhen::AfterCommits(_),
            ..
        } => "crash_after_commits",
        FaultSpec::StorageSlow { .. } => "storage_slow",
        FaultSpec::StorageFailWrites { .. } => "storage_fail_writes",
        FaultSpec::StorageCorrupt { .. } => "storage_corrupt",
        FaultSpec::LinkFlap { .. } => "link_flap",
        FaultSpec::Straggler { .. } => "straggler",
        FaultSpec::Sdc { .. } => "sdc",
        FaultSpec::Hang { .. } => "hang",
        FaultSpec::Desync { .. } => "desync",
        FaultSpec::Degrade { .. } => "degrade",
    }
}

#[test]
fn schedules_depend_on_the_seed_alone_and_cover_every_kind() {
    let mut seen = std::collections::BTreeSet::new();
    let mut sizes = std::collections::BTreeSet::new();
    for seed in 1..200 {
        let schedule = draw_schedule(seed, &SPACE);
        assert_eq!(schedule, draw_schedule(seed, &SPACE), "seed {seed}");
        sizes.insert(schedule.len());
        for fault in &schedule {
            seen.insert(kind_of(fault));
            // Every fault falls in the faulty phase and on the cluster.
            match *fault {
                FaultSpec::Crash { target, when } => {
                    match target {
                        CrashTarget::Node(n) => assert!(n < SPACE.nodes),
                        CrashTarget::Gpu(g) => assert!(g < SPACE.gpus),
                    }
                    match when {
                        CrashWhen::AtNs(t) => assert!(t < SPACE.faulty_until_ns),
                        CrashWhen::AtStep(s) => assert!(s < SPACE.faulty_steps),
                        CrashWhen::AfterCommits(c) => assert!((1..=3).contains(&c)),
                    }
                }
                FaultSpec::StorageSlow {
                    from_ns, until_ns, ..
                }
                | FaultSpec::StorageFailWrites { from_ns, until_ns } => {
                    assert!(from_ns < until_ns && until_ns <= SPACE.faulty_until_ns)
                }
                FaultSpec::StorageCorrupt { at_ns } => assert!(at_ns < SPACE.faulty_until_ns),
                FaultSpec::LinkFlap {
                    link,
                    at_ns,
                    down_ns,
                    count,
                    period_ns,
                } => {
                    match link {
                        LinkRef::Nic { gpu: g } => assert!(g < SPACE.gpus),
                        LinkRef::LeafSpine { leaf, spine } => {
                            assert!(leaf < SPACE.leaves && spine < SPACE.spines_per_leaf)
                        }
                        other => panic!("the swarm drew {other}"),
                    }
                    assert!(at_ns < SPACE.faulty_until_ns && down_ns > 0);
                    assert!((1..=3).contains(&count));
                    assert!(count == 1 || period_ns > down_ns);
                }
                FaultSpec::Straggler {
                    target,
                    factor,
                    from_ns,
                    duration_ns,
                    ..
                } => {
                    match target {
                        StragglerTarget::Node(n) => assert!(n < SPACE.nodes),
                        StragglerTarget::Gpu(g) => assert!(g < SPACE.gpus),
                    }
                    assert!((2..=16).contains(&factor) && duration_ns > 0);
                    assert!(from_ns + duration_ns <= SPACE.faulty_until_ns);
                }
                FaultSpec::Sdc {
                    gpu, at_step, bit, ..
                } => assert!(gpu < SPACE.gpus && at_step < SPACE.faulty_steps && bit < 32),
                FaultSpec::Hang { gpu, at_step, .. } | FaultSpec::Desync { gpu, at_step, .. } => {
                    assert!(gpu < SPACE.gpus && at_step < SPACE.faulty_steps)
                }
                FaultSpec::Degrade {
                    target,
                    bandwidth,
                    loss,
                    at_ns,
                    duration_ns,
                } => {
                    match target {
                        DegradeTarget::Link(LinkRef::Nic { gpu }) => assert!(gpu < SPACE.gpus),
                        DegradeTarget::Link(LinkRef::LeafSpine { leaf, spine }) => {
                            assert!(leaf < SPACE.leaves && spine < SPACE.spines_per_leaf)
                        }
                        DegradeTarget::NodeNvlinks(node) => assert!(node < SPACE.nodes),
                        other => panic!("the swarm drew {other}"),
                    }
                    assert!(bandwidth > 0.0 && bandwidth < 1.0 && (0.0..1.0).contains(&loss));
                    assert!(duration_ns > 0 && at_ns + duration_ns <= SPACE.faulty_until_ns);
                }
            }
        }
    }
    // A scenario without a collective watchdog draws no link flap, hang or desync: only the
    // watchdog notices them.
    let no_flaps = DrawSpace {
        link_flaps: false,
        ..SPACE
    };
    let watched = |f: &FaultSpec| {
        matches!(
            f,
            FaultSpec::LinkFlap { .. } | FaultSpec::Hang { .. } | FaultSpec::Desync { .. }
        )
    };
    for seed in 1..100 {
        let schedule = draw_schedule(seed, &no_flaps);
        assert!(!schedule.iter().any(watched));
        // Every other kind draws exactly what it draws with flaps allowed: its own stream.
        let with: Vec<FaultSpec> = draw_schedule(seed, &SPACE)
            .into_iter()
            .filter(|f| !watched(f))
            .collect();
        assert_eq!(schedule, with, "seed {seed}");
    }
    let all: std::collections::BTreeSet<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(seen, all, "some kind is never drawn");
    // Swarm testing: seeds differ in how many faults they carry.
    assert!(sizes.len() > 4, "{sizes:?}");
}

/// The swarm writes a schedule as scenario text, and the scenario reader loads it: the loaded
/// scenario must be exactly the fault-free base with each fault applied in its typed form
/// ([`FaultSpec::apply`]), so the writer and the reader speak one vocabulary.
#[test]
fn a_schedule_written_as_toml_loads_back_as_the_same_faults() {
    let base = Base::load(&base_path()).unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    for seed in 1..60 {
        let schedule = draw_schedule(seed, &base.space);
        let text = base.scenario_text(seed, &schedule, &["a header".into()]);
        assert!(text.starts_with("# a header\n"));
        let loaded = base.load_text("test", &text).unwrap();
        let mut expected = base
            .load_text("test", &base.scenario_text(seed, &[], &[]))
            .unwrap();
        for fault in &schedule {
            fault.apply(&mut expected);
            kinds.insert(kind_of(fault));
        }
        assert_eq!(loaded, expected, "seed {seed}: {schedule:?}");
        assert_eq!(loaded.run.seed, seed);
        // No stochastic faults: the schedule is all there is.
        assert_eq!(loaded.control.node_failure_rate_per_ns, 0.0);
        assert_eq!(loaded.link_faults.random_flap_rate_per_link_per_ns, 0.0);
    }
    // Every kind the base can host was written and read back at least once.
    assert!(kinds.len() >= 8, "{kinds:?}");
}

/// A measure that every simpler form must lower, compared as a tuple: time, then ranks or
/// counts; for windows, length, then start, then factor. Strictly lower at each step means the
/// shrinker's loop ends.
fn size(fault: &FaultSpec) -> (u64, u64, u64) {
    match *fault {
        FaultSpec::Crash { target, when } => {
            let ranks = match target {
                CrashTarget::Node(n) => 1000 + n as u64,
                CrashTarget::Gpu(g) => g as u64,
            };
            let when = match when {
                CrashWhen::AtNs(t) => t,
                CrashWhen::AtStep(s) => s,
                CrashWhen::AfterCommits(c) => c,
            };
            (when, ranks, 0)
        }
        FaultSpec::StorageSlow {
            from_ns,
            until_ns,
            factor,
        } => (until_ns - from_ns, from_ns, factor as u64),
        FaultSpec::StorageFailWrites { from_ns, until_ns } => (until_ns - from_ns, from_ns, 0),
        FaultSpec::StorageCorrupt { at_ns } => (at_ns, 0, 0),
        FaultSpec::LinkFlap {
            link,
            at_ns,
            down_ns,
            count,
            ..
        } => {
            let link = match link {
                LinkRef::Nic { gpu: g } => g as u64,
                LinkRef::LeafSpine { leaf, spine } => 1_000_000 + 1000 * leaf as u64 + spine as u64,
                other => panic!("the swarm drew {other}"),
            };
            (at_ns, (u64::from(count) << 40) + down_ns, link)
        }
        FaultSpec::Straggler {
            target,
            factor,
            from_ns,
            duration_ns,
            ..
        } => {
            let target = match target {
                StragglerTarget::Node(n) => 1000 + n as u64,
                StragglerTarget::Gpu(g) => g as u64,
            };
            (duration_ns, from_ns, u64::from(factor) * 1_000_000 + target)
        }
        FaultSpec::Sdc {
            gpu, at_step, bit, ..
        } => (at_step, gpu as u64, u64::from(bit)),
        FaultSpec::Hang {
            gpu,
            at_step,
            kernel,
        } => (at_step, gpu as u64, u64::from(kernel)),
        FaultSpec::Desync { gpu, at_step, .. } => (at_step, gpu as u64, 0),
        FaultSpec::Degrade {
            target,
            bandwidth,
            loss,
            at_ns,
            duration_ns,
        } => {
            let target = match target {
                DegradeTarget::Link(LinkRef::Nic { gpu }) => gpu as u64,
                DegradeTarget::Link(LinkRef::LeafSpine { leaf, spine }) => {
                    100_000 + 1000 * leaf as u64 + spine as u64
                }
                DegradeTarget::NodeNvlinks(node) => 900_000 + node as u64,
                other => panic!("the swarm drew {other}"),
            };
            // Lossy above lossless, then less bandwidth kept above more.
            let severity = u64::from(loss > 0.0) << 40 | ((1000.0 / bandwidth) as u64) << 20;
            (duration_ns, at_ns, severity + target)
        }
    }
}

#[test]
fn every_simpler_fault_is_smaller_so_shrinking_ends() {
    for seed in 1..100 {
        for fault in draw_schedule(seed, &SPACE) {
            for simpler in fault.simpler(SPACE.gpus_per_node) {
                assert!(
                    size(&simpler) < size(&fault),
                    "{simpler:?} is not simpler than {fault:?}"
                );
                assert_eq!(
                    std::mem::discriminant(&simpler),
                    std::mem::discriminant(&fault)
                );
            }
        }
    }
}

#[test]
fn seed_ranges_parse_or_say_what_they_expected() {
    assert_eq!(parse_seed_range("1..101"), Ok(1..101));
    assert_eq!(parse_seed_range("1..=100"), Ok(1..101));
    assert_eq!(parse_seed_range(" 7 .. 8 "), Ok(7..8));
    for bad in [
        "5..3",
        "3..3",
        "x..4",
        "17",
        "1..=18446744073709551615",
        "0..2000000",
        "9223372036854775807..=9223372036854775808",
        "9223372036854775808..9223372036854775809",
    ] {
        let error = parse_seed_range(bad).unwrap_err();
        assert!(error.contains("expected a seed range"), "{bad}: {error}");
    }
    // The largest seed a scenario file's run.seed holds is the last one.
    let largest = i64::MAX as u64;
    assert_eq!(
        parse_seed_range("9223372036854775807..9223372036854775808"),
        Ok(largest..largest + 1)
    );
    assert_eq!(
        parse_seed_range("9223372036854775807..=9223372036854775807"),
        Ok(largest..largest + 1)
    );
}

#[test]
fn the_audit_flags_reads_of_a_manifest_committed_before_its_shards() {
    use trainer_core::checkpoint::{encode_manifest, manifest_name, shard_name};
    let manifest = encode_manifest(4, 2);
    // Atomic: both shards durable when the manifest lands.
    let mut audit = Audit::default();
    audit.manifest_landed(&manifest_name(4), &manifest, |_| true);
    audit.read(&manifest_name(4), 10);
    audit.read(&shard_name(4, 1), 11);
    assert_eq!(audit.violation_count, 0);
    // A shard of a step never committed.
    audit.read(&shard_name(6, 0), 12);
    assert_eq!(audit.violation_count, 1);
    assert!(audit.violations[0].what.contains("no manifest"));
    // Premature: shard 1 was not durable yet.
    let mut audit = Audit::default();
    let shard1 = shard_name(4, 1);
    audit.manifest_landed(&manifest_name(4), &manifest, |name| name != shard1);
    audit.read(&manifest_name(4), 20);
    assert_eq!(audit.violation_count, 1);
    assert!(
        audit.violations[0].what.contains(&shard1),
        "{:?}",
        audit.violations
    );
}

#[test]
fn the_verdict_does_not_depend_on_the_thread_count() {
    let base = Base::load(&base_path()).unwrap();
    let one = run_swarm(&base, 1..9, 1, &|| {});
    let three = run_swarm(&base, 1..9, 3, &|| {});
    let json = |r| serde_json::to_string(&r).unwrap();
    assert_eq!(one.seeds_run, 8);
    assert_eq!(json(one), json(three));
}

fn sdc_report(injected: u64, detected: u64, escaped: u64) -> crate::world::SdcKindReport {
    crate::world::SdcKindReport {
        injected,
        detected,
        escaped,
        ..Default::default()
    }
}

#[test]
fn each_invariant_is_named_by_the_report_field_that_breaks_it() {
    use super::invariants::{check, Invariant};
    use crate::run::RunReport;
    let base = Base::load(&base_path()).unwrap();
    let good = base.reference.fault_free.clone();
    let judge = |run: RunReport, rerun: Option<RunReport>| -> Vec<Invariant> {
        let rerun = rerun.map(Ok);
        check(&base.scenario, &base.reference, &Ok(run), rerun.as_ref())
            .into_iter()
            .map(|v| v.invariant)
            .collect()
    };
    assert_eq!(judge(good.clone(), Some(good.clone())), vec![]);
    type Change = fn(&mut RunReport);
    let cases: Vec<(&str, Change, Vec<Invariant>)> = vec![
        (
            "params differ",
            |r| r.param_digest = "0".into(),
            vec![Invariant::FaultFreeEquivalence],
        ),
        (
            "replicas disagree",
            |r| r.replicas_agree = false,
            vec![Invariant::ReplicasAgree],
        ),
        (
            "stopped early",
            |r| r.steps_completed -= 1,
            vec![Invariant::Liveness],
        ),
        (
            "abandoned",
            |r| r.faults.job_abandoned = true,
            vec![Invariant::Liveness],
        ),
        (
            "finished while others died",
            |r| {
                r.faults.job_abandoned = true;
                r.faults.finished_despite_failure = true;
            },
            vec![],
        ),
        (
            "too slow after the last fault",
            |r| {
                r.last_fault_ns = Some(1_000);
                r.model_time_ns = 3 * r.model_time_ns + 200_000_000_000;
            },
            vec![Invariant::Liveness],
        ),
        (
            "read a premature commit",
            |r| r.atomicity_violation_count = 1,
            vec![Invariant::CheckpointAtomicity],
        ),
    ];
    let escape = crate::world::Escape {
        kind: "sdc_gradient",
        gpu: 3,
        step_entered: 2,
        attempt: 0,
    };
    let mut cases = cases;
    cases.extend([
        (
            "an SDC neither detected nor counted as escaped",
            (|r: &mut RunReport| {
                r.faults
                    .sdc
                    .insert("sdc_gradient".into(), sdc_report(2, 1, 0));
            }) as Change,
            vec![Invariant::NoSilentEscape],
        ),
        (
            "an escape counted but not listed",
            |r| {
                r.faults
                    .sdc
                    .insert("sdc_gradient".into(), sdc_report(1, 0, 1));
            },
            vec![Invariant::NoSilentEscape],
        ),
        (
            "every SDC detected",
            |r| {
                r.faults
                    .sdc
                    .insert("sdc_parameters".into(), sdc_report(3, 3, 0));
            },
            vec![],
        ),
    ]);
    for (name, change, expected) in cases {
        let mut run = good.clone();
        change(&mut run);
        assert_eq!(judge(run, None), expected, "{name}");
    }
    // A counted, listed escape that changed the parameters: the same schedule without its SDC
    // (here: no fault at all) ends as the fault-free run, so the escape explains it.
    let mut escaped = good.clone();
    escaped.param_digest = "0".into();
    escaped.replicas_agree = false;
    escaped.faults.escaped.push(escape.clone());
    escaped
        .faults
        .sdc
        .insert("sdc_gradient".into(), sdc_report(1, 0, 1));
    assert_eq!(judge(escaped.clone(), None), vec![]);
    // The same report judged against a scenario that without its SDC ends elsewhere (here: it
    // trains one step more): the escape does not explain the result.
    let mut longer = base.scenario.clone();
    longer.job.steps += 1;
    let violations = check(&longer, &base.reference, &Ok(escaped), None);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].invariant, Invariant::FaultFreeEquivalence);
    assert!(
        violations[0].detail.contains("do not explain"),
        "{violations:?}"
    );
    let mut other = good.clone();
    other.trace_digest = "1".into();
    assert_eq!(
        judge(good.clone(), Some(other)),
        vec![Invariant::Determinism]
    );
    let deadlock = check(
        &base.scenario,
        &base.reference,
        &Err("deadlock".into()),
        None,
    );
    assert_eq!(deadlock[0].invariant, Invariant::Liveness);
}
