//! Checkpoints, crashes and recovery under the restart policy: fault-free equivalence,
//! checkpoint atomicity at every phase of a write, and liveness after the last fault.

use faultline_sim::run::{run_scenario, RunReport};
use faultline_sim::scenario::load_str;

const BASE: &str = "
[cluster]
gpus = 24
gpus_per_node = 4
nodes_per_leaf = 2
[job]
steps = 16
collective = \"hierarchical\"
proxy_elems = 40
model_params = 1e9
[checkpoint]
interval = 4
keep = 2
[recovery]
restart_time = \"1min\"
heartbeat_interval = \"5s\"
";

fn run(extra: &str, sets: &[String]) -> RunReport {
    let text = format!("{BASE}{extra}");
    let scenario = load_str("recovery", "<test>", &text, sets).unwrap();
    run_scenario(&scenario).unwrap()
}

fn fault_free() -> RunReport {
    run("", &[])
}

#[test]
fn a_crash_recovers_to_the_fault_free_parameters() {
    let reference = fault_free();
    for (target, step) in [
        ("node = 2", 6),
        ("gpu = 13", 9),
        ("node = 0", 15),
        ("node = 5", 1),
    ] {
        let report = run(
            &format!("[[faults.crash]]\n{target}\nat_step = {step}\n"),
            &[],
        );
        assert_eq!(report.recoveries, 1, "{target} at {step}");
        assert_eq!(report.steps_completed, 16);
        assert_eq!(
            report.param_digest, reference.param_digest,
            "{target} at step {step}"
        );
        assert!(report.replicas_agree);
        assert!(report.model_time_ns > reference.model_time_ns + 60_000_000_000);
        let injected: u64 = report.faults.injected.values().sum();
        assert_eq!(injected, 1);
        assert_eq!(
            report.faults.detected.get("heartbeat"),
            Some(&1),
            "{:?}",
            report.faults
        );
        for cause in ["detection", "restart", "restore"] {
            assert!(report.lost_time_ns_by_cause.contains_key(cause), "{cause}");
        }
    }
}

#[test]
fn every_seed_and_executor_recovers_to_the_same_parameters() {
    let reference = fault_free();
    for seed in 1..4 {
        for executor in ["madsim", "fifo"] {
            let sets = vec![
                format!("run.seed={seed}"),
                format!("run.executor={executor}"),
            ];
            let report = run("[[faults.crash]]\nnode = 1\nat_step = 7\n", &sets);
            assert_eq!(
                report.param_digest, reference.param_digest,
                "seed {seed} {executor}"
            );
        }
    }
}

/// Crashes at every phase of a checkpoint write: before the snapshot, while shards persist,
/// between shards becoming durable, and after the manifest. A slow store stretches the persist
/// over several steps. Whatever the moment, the restore never reads a partial checkpoint: the
/// job ends with the fault-free parameters.
#[test]
fn crashes_at_every_phase_of_a_checkpoint_never_restore_a_partial_one() {
    let slow = "[storage]\naggregate_bandwidth = \"20GB/s\"\n";
    let reference = run(slow, &[]);
    let mut crashed_during_persist = 0;
    let mut injected_total = 0;
    for k in 1..48 {
        let at_ns = reference.model_time_ns * k / 48;
        let extra = format!("{slow}[[faults.crash]]\nnode = 3\nat = \"{at_ns}ns\"\n");
        let report = run(&extra, &[]);
        assert_eq!(
            report.param_digest, reference.param_digest,
            "crash at {at_ns} ns"
        );
        assert_eq!(report.steps_completed, 16);
        // A crash after the first rank finished is not injected (and the report says so).
        let injected: u64 = report.faults.injected.values().sum();
        let unrestarted = report.faults.finished_despite_failure as u64;
        assert_eq!(
            report.recoveries + unrestarted,
            injected,
            "crash at {at_ns} ns"
        );
        injected_total += injected;
        // A verified restore never had to skip a checkpoint: none was committed partial.
        assert_eq!(report.restore_fallbacks, 0, "crash at {at_ns} ns");
        crashed_during_persist += report.checkpoints_lost_in_flight;
    }
    assert!(
        crashed_during_persist > 5,
        "only {crashed_during_persist} crashes hit a persist"
    );
    assert!(
        injected_total > 40,
        "only {injected_total} of 47 crashes landed before the end"
    );
}

#[test]
fn without_checkpoints_a_crash_restarts_from_step_zero_and_still_converges_to_the_same_end() {
    let text = BASE.replace("[checkpoint]\ninterval = 4\nkeep = 2\n", "");
    let scenario = load_str("r", "<test>", &text, &[]).unwrap();
    let reference = run_scenario(&scenario).unwrap();
    let text = format!("{text}[[faults.crash]]\nnode = 1\nat_step = 10\n");
    let report = run_scenario(&load_str("r", "<test>", &text, &[]).unwrap()).unwrap();
    assert_eq!(report.param_digest, reference.param_digest);
    // All ten steps before the crash were trained again.
    let recomputed = report.lost_time_ns_by_cause["recomputed_steps"];
    let per_step = reference.model_time_ns / 16;
    assert!(
        recomputed >= 9 * per_step,
        "{recomputed} vs {per_step} per step"
    );
}

/// After the last fault, training makes progress again within a stated bound: detection
/// (heartbeat 5 s x 3, rounded to the next check) + restart (1 min) + restore + the steps lost
/// since the last checkpoint (at most 4) must fit in 2 minutes of model time.
#[test]
fn liveness_after_the_last_fault() {
    let reference = fault_free();
    let report = run("[[faults.crash]]\nnode = 4\nat_step = 11\n", &[]);
    let extra = report.model_time_ns - reference.model_time_ns;
    assert!(extra < 120_000_000_000, "the job took {extra} ns longer");
    let detection = report.lost_time_ns_by_cause["detection"];
    assert!(
        (15_000_000_000..=20_000_000_000).contains(&detection),
        "{detection}"
    );
}

#[test]
fn a_collective_timeout_detects_what_heartbeats_do_not() {
    let reference = fault_free();
    let sets = vec![
        "recovery.heartbeat_interval=0s".to_string(),
        "recovery.collective_timeout=30s".to_string(),
    ];
    let report = run("[[faults.crash]]\nnode = 2\nat_step = 5\n", &sets);
    assert_eq!(
        report.faults.detected.get("watchdog"),
        Some(&1),
        "{:?}",
        report.faults
    );
    assert_eq!(report.param_digest, reference.param_digest);
    let detection = report.lost_time_ns_by_cause["detection"];
    assert!(detection >= 30_000_000_000, "{detection}");
}
