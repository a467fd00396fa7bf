//! The per-replica recovery policy: a failed node is dropped, the others go on without a
//! restore, and the node is re-admitted after `replica_rejoin_time`.
//!
//! Fault-free equivalence does not hold here by design: steps taken with fewer replicas
//! average fewer samples. What holds instead, and is checked: every degraded step averages
//! over exactly the surviving members (a host-side reference of the same steps gives the same
//! losses), replicas agree, the run is deterministic, training converges, the job goes on
//! within a bound after the last fault, too few nodes left fall back to a full restart (which
//! is fault-free equivalent again), and goodput beats `restart` on the same faults.

use faultline_sim::books::LostCause;
use faultline_sim::replay;
use faultline_sim::run::{run_scenario, RunReport};
use faultline_sim::scenario::{load_str, Scenario};
use faultline_sim::trace::{TraceHeader, TraceLevel};
use trainer_core::{model, Placement};

const BASE: &str = "
[cluster]
gpus = 24
gpus_per_node = 4
nodes_per_leaf = 2
[job]
steps = 24
collective = \"hierarchical\"
proxy_elems = 40
model_params = 1e9
[checkpoint]
interval = 4
keep = 2
[recovery]
policy = \"per-replica\"
restart_time = \"10min\"
heartbeat_interval = \"1s\"
replica_rejoin_time = \"2s\"
comm_abort_time = \"0s\"
comm_shrink_time = \"0s\"
comm_shrink_per_doubling = \"0s\"
";

/// The communicators' costs by default (the base makes them free, to test the arithmetic).
const COMM_DEFAULTS: [&str; 3] = [
    "recovery.comm_abort_time=1s",
    "recovery.comm_shrink_time=730ms",
    "recovery.comm_shrink_per_doubling=130ms",
];

fn scenario(extra: &str, sets: &[&str]) -> Scenario {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    load_str("per-replica", "<test>", &format!("{BASE}{extra}"), &sets).unwrap()
}

fn run(extra: &str, sets: &[&str]) -> RunReport {
    run_scenario(&scenario(extra, sets)).unwrap()
}

fn crash(target: &str, step: u64) -> String {
    format!("[[faults.crash]]\n{target}\nat_step = {step}\n")
}

/// The run's trace records, as JSON values.
fn traced(extra: &str, sets: &[&str]) -> (RunReport, Vec<serde_json::Value>) {
    let scenario = scenario(extra, sets);
    let header =
        TraceHeader::for_run(&scenario, "<test>", "", &[], false, TraceLevel::Events).unwrap();
    let (report, lines) = replay::run_traced_in_memory(&scenario, &header).unwrap();
    let records = lines[1..lines.len() - 1]
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    (report, records)
}

/// The host's own computation of the job: at each step, the mean gradient and loss over the
/// ranks of `members(step)`, then SGD. Sums run in rank order in f64, so this is the same
/// arithmetic as the simulated job up to rounding, not bit for bit.
fn reference_losses(scenario: &Scenario, members: &dyn Fn(u64) -> Vec<usize>) -> Vec<f64> {
    let job = &scenario.job;
    let dim = job.proxy_elems;
    let mut params = vec![0.0f32; dim];
    let mut grad = vec![0.0f32; dim];
    let mut losses = Vec::new();
    for step in 0..job.steps {
        let ranks = members(step);
        let mut sum = vec![0.0f64; dim];
        let mut loss = 0.0f64;
        for &rank in &ranks {
            loss += model::loss_and_gradient(
                &params,
                job.data_seed,
                rank,
                step,
                job.batch_per_rank,
                &mut grad,
            ) as f64;
            for (s, g) in sum.iter_mut().zip(&grad) {
                *s += *g as f64;
            }
        }
        let count = ranks.len() as f64;
        for (p, s) in params.iter_mut().zip(&sum) {
            *p -= job.learning_rate * (*s / count) as f32;
        }
        losses.push(loss / count);
    }
    losses
}

/// Each step's loss as the first rank of node 0 saw it last (after any redo), and how many
/// ranks trained that step (the latest regroup's `members` before its end).
fn losses_and_members(records: &[serde_json::Value], gpus: usize) -> Vec<(f64, usize)> {
    let mut members = gpus;
    let mut by_step: std::collections::BTreeMap<u64, (f64, usize)> = Default::default();
    for record in records {
        match record["kind"].as_str().unwrap() {
            "regroup" => members = record["members"].as_u64().unwrap() as usize,
            "step_end" if record["rank"] == 0 => {
                let step = record["step"].as_u64().unwrap();
                let loss = record["loss"].as_f64().unwrap();
                by_step.insert(step, (loss, members));
            }
            _ => {}
        }
    }
    by_step.into_values().collect()
}

#[test]
fn degraded_steps_average_over_exactly_the_surviving_members() {
    let faults = crash("node = 2", 5);
    let (report, records) = traced(&faults, &[]);
    let per_replica = report.per_replica.clone().unwrap();
    assert_eq!(report.steps_completed, 24);
    assert!(report.replicas_agree);
    assert_eq!((per_replica.drops, per_replica.readmissions), (1, 1));
    assert_eq!(per_replica.min_members, 20);
    assert!(per_replica.degraded_steps > 0 && per_replica.degraded_steps < 19);
    let seen = losses_and_members(&records, 24);
    assert_eq!(seen.len(), 24);
    // Which ranks trained each step: everyone, or everyone but node 2's.
    let placement = Placement::new(24, 4);
    let counts: Vec<usize> = seen.iter().map(|&(_, members)| members).collect();
    assert_eq!(&counts[..5], &[24; 5]);
    assert_eq!(counts[5], 20, "the crashed step is redone by the survivors");
    assert_eq!(*counts.last().unwrap(), 24, "node 2 is back by the end");
    let members = |step: u64| -> Vec<usize> {
        (0..24)
            .filter(|&r| counts[step as usize] == 24 || placement.node_of(r) != 2)
            .collect()
    };
    let scenario = scenario(&faults, &[]);
    let expected = reference_losses(&scenario, &members);
    for (step, (&(loss, _), want)) in seen.iter().zip(&expected).enumerate() {
        let error = (loss - want).abs() / want.abs().max(1e-12);
        assert!(
            error < 1e-4,
            "step {step}: loss {loss}, the host's reference over its members says {want}"
        );
    }
    // Averaging over the world instead (the dropped node's zeros counted) is visibly another
    // trajectory: the check above could fail.
    let wrong = reference_losses(&scenario, &|_| (0..24).collect());
    let last = seen.len() - 1;
    assert!((seen[last].0 - wrong[last]).abs() / wrong[last] > 1e-3);
}

#[test]
fn per_replica_is_deterministic_converges_and_beats_restart() {
    let faults = format!("{}{}", crash("node = 4", 3), crash("node = 1", 15));
    let first = run(&faults, &[]);
    let again = run(&faults, &[]);
    assert_eq!(first.trace_digest, again.trace_digest);
    assert_eq!(first.param_digest, again.param_digest);
    assert_eq!(first.model_time_ns, again.model_time_ns);
    assert_eq!(first.steps_completed, 24);
    assert!(first.replicas_agree);
    assert!(first.final_loss < first.first_loss / 100.0);
    assert_eq!(first.recovery_policy, "per-replica");
    let per_replica = first.per_replica.clone().unwrap();
    assert_eq!(per_replica.drops, 2);
    assert_eq!(first.recoveries, per_replica.regroups);
    assert!(first
        .lost_time_ns_by_cause
        .contains_key(&LostCause::Regroup));
    assert!(!first
        .lost_time_ns_by_cause
        .contains_key(&LostCause::Restart));
    // The arithmetic changed: not the fault-free parameters.
    let fault_free = run("", &[]);
    assert_ne!(first.param_digest, fault_free.param_digest);
    let restart = run(&faults, &["recovery.policy=restart"]);
    assert_eq!(restart.param_digest, fault_free.param_digest);
    assert!(
        first.goodput > 2.0 * restart.goodput,
        "per-replica {} vs restart {}",
        first.goodput,
        restart.goodput
    );
}

#[test]
fn steps_complete_again_within_a_bound_after_the_last_fault() {
    let fault_free = run("", &[]);
    for (target, step) in [("node = 0", 7), ("gpu = 13", 11), ("node = 5", 20)] {
        let report = run(&crash(target, step), &[]);
        assert_eq!(report.steps_completed, 24, "{target}");
        assert!(report.replicas_agree, "{target}");
        let last_fault = report.last_fault_ns.unwrap();
        // After the fault: detection (3 missed 1 s heartbeats, rounded up to a beat), the
        // regroup and a re-admission (1 s at most), and at most the fault-free run again.
        let bound = 4_000_000_000 + 1_000_000_000 + fault_free.model_time_ns;
        assert!(
            report.model_time_ns - last_fault <= bound,
            "{target}: {} ns after the fault",
            report.model_time_ns - last_fault
        );
        // A GPU failure drops its whole node.
        assert_eq!(report.per_replica.unwrap().min_members, 20, "{target}");
        assert!(
            report.goodput > 0.25,
            "{target}: goodput {}",
            report.goodput
        );
    }
}

#[test]
fn too_few_nodes_left_fall_back_to_a_full_restart() {
    let report = run(&crash("node = 3", 6), &["recovery.min_replicas=6"]);
    let per_replica = report.per_replica.clone().unwrap();
    assert_eq!(per_replica.fallback_restarts, 1);
    assert_eq!(per_replica.drops, 0);
    assert_eq!(report.recoveries, 1);
    assert!(report
        .lost_time_ns_by_cause
        .contains_key(&LostCause::Restart));
    // A full restart restores a checkpoint: the fault-free parameters again.
    assert_eq!(report.param_digest, run("", &[]).param_digest);
}

#[test]
fn a_node_still_out_at_the_end_is_let_go() {
    let report = run(&crash("node = 1", 4), &["recovery.replica_rejoin_time=10h"]);
    let per_replica = report.per_replica.unwrap();
    assert_eq!(report.steps_completed, 24);
    assert!(report.replicas_agree);
    assert!(!report.faults.job_abandoned);
    assert!(!report.faults.finished_despite_failure);
    assert_eq!(per_replica.dropped_at_end, 1);
    assert_eq!(per_replica.readmissions, 0);
    assert_eq!(per_replica.degraded_steps, 20);
}

#[test]
fn a_failure_that_takes_no_node_regroups_the_same_members_and_keeps_the_arithmetic() {
    // Transfers lost on flapping links (plain transport): the watchdog stops the job, no node
    // is dropped, the same members redo the step in flight, and nothing restarts.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/flap-storm-plain-vs-retry.toml");
    let sets = vec!["recovery.policy=per-replica".to_string()];
    let scenario = faultline_sim::scenario::load(&path, &sets).unwrap();
    let report = run_scenario(&scenario).unwrap();
    let fault_free = run_scenario(&scenario.clone().without_faults()).unwrap();
    let per_replica = report.per_replica.clone().unwrap();
    assert!(per_replica.regroups > 0);
    assert_eq!((per_replica.drops, per_replica.degraded_steps), (0, 0));
    assert!(!report
        .lost_time_ns_by_cause
        .contains_key(&LostCause::Restart));
    assert!(!report
        .lost_time_ns_by_cause
        .contains_key(&LostCause::Readmission));
    assert_eq!(report.param_digest, fault_free.param_digest);
    let restart = run_scenario(&faultline_sim::scenario::load(&path, &[]).unwrap()).unwrap();
    assert!(report.goodput > restart.goodput);
}

#[test]
fn a_regroup_with_no_member_holding_state_restarts_instead() {
    // Two nodes. Node 0 is dropped; 100 ms later it is due back, and node 1, the only one
    // holding the state, fails at the step boundary where node 0 would rejoin with empty
    // ranks: nobody could hand the state over, so the job restarts (this once panicked).
    let sets = [
        "cluster.gpus=8",
        "recovery.min_replicas=1",
        "recovery.replica_rejoin_time=\"100ms\"",
    ];
    let faults = format!("{}{}", crash("node = 0", 2), crash("node = 1", 4));
    let report = run(&faults, &sets);
    let per_replica = report.per_replica.clone().unwrap();
    assert_eq!(report.steps_completed, 24);
    assert!(report.replicas_agree);
    assert_eq!(per_replica.drops, 1, "{per_replica:?}");
    assert_eq!(per_replica.fallback_restarts, 1, "{per_replica:?}");
    assert!(report
        .lost_time_ns_by_cause
        .contains_key(&LostCause::Restart));
}

/// NCCL's recovery path, modelled: a node's crash makes every survivor abort its
/// communicators and shrink them to the group without the node (abort mode), the rejoin grows
/// them back (no abort: default mode), each costing what the law says and booked as
/// `comm_rebuild`; every survivor resumes only after the rebuild, and `reinit` costs its own
/// time instead.
#[test]
fn survivors_abort_shrink_and_grow_their_communicators_at_the_laws_cost() {
    let (report, records) = traced(&crash("node = 2", 5), &COMM_DEFAULTS);
    let rebuilds: Vec<&serde_json::Value> = (records.iter())
        .filter(|r| r["kind"] == "comm_rebuild")
        .collect();
    let ops: Vec<(&str, bool, u64)> = (rebuilds.iter())
        .map(|r| {
            let op = r["op"].as_str().unwrap();
            (
                op,
                r["aborted"].as_bool().unwrap(),
                r["members"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ops, [("shrink", true, 20), ("grow", false, 24)]);
    // 20 ranks: 5 doublings of 130 ms on 730 ms, and the 1 s abort; 24 ranks: the same shrink.
    let costs: Vec<u64> = rebuilds
        .iter()
        .map(|r| r["cost_ns"].as_u64().unwrap())
        .collect();
    assert_eq!(costs, [2_380_000_000, 1_380_000_000]);
    assert_eq!(
        report.lost_time_ns_by_cause[&LostCause::CommRebuild],
        costs.iter().sum::<u64>()
    );
    // Each regroup's generation starts exactly one rebuild after it was scheduled.
    for rebuild in &rebuilds {
        let at = rebuild["t_ns"].as_u64().unwrap();
        let cost = rebuild["cost_ns"].as_u64().unwrap();
        let starts = (records.iter())
            .find(|r| r["kind"] == "restart" && r["t_ns"].as_u64().unwrap() >= at)
            .expect("the regroup's generation starts");
        assert_eq!(starts["t_ns"].as_u64().unwrap(), at + cost);
    }
    let mut sets = COMM_DEFAULTS.to_vec();
    sets.push("recovery.comm_rebuild=reinit");
    let reinit = run(&crash("node = 2", 5), &sets);
    assert_eq!(
        reinit.lost_time_ns_by_cause[&LostCause::CommRebuild],
        30_000_000_000 + 1_000_000_000 + 30_000_000_000
    );
}
