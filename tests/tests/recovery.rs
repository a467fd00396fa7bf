//! Checkpoints, crashes and recovery under the restart policy: fault-free equivalence,
//! checkpoint atomicity at every phase of a write, and liveness after the last fault.

use faultline_sim::books::{Detector, FaultKind, LostCause, TierName};
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
            report.faults.detected.get(&Detector::Heartbeat),
            Some(&1),
            "{:?}",
            report.faults
        );
        for cause in [LostCause::Detection, LostCause::Restart, LostCause::Restore] {
            assert!(report.lost_time_ns_by_cause.contains_key(&cause), "{cause}");
        }
        if step >= 12 {
            // By then a checkpoint is committed: every rank restores its shard from the store.
            assert_eq!(
                report.restores_by_tier.get(&TierName::Persistent),
                Some(&24),
                "{target}"
            );
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
    let mut restored_runs = 0;
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
        restored_runs += report.restores_by_tier.contains_key(&TierName::Persistent) as u64;
    }
    assert!(
        crashed_during_persist > 5,
        "only {crashed_during_persist} crashes hit a persist"
    );
    assert!(
        injected_total > 40,
        "only {injected_total} of 47 crashes landed before the end"
    );
    assert!(
        restored_runs > 5,
        "only {restored_runs} runs restored from a checkpoint"
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
    let recomputed = report.lost_time_ns_by_cause[&LostCause::RecomputedSteps];
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
    let detection = report.lost_time_ns_by_cause[&LostCause::Detection];
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
        report.faults.detected.get(&Detector::Watchdog),
        Some(&1),
        "{:?}",
        report.faults
    );
    assert_eq!(report.param_digest, reference.param_digest);
    let detection = report.lost_time_ns_by_cause[&LostCause::Detection];
    assert!(detection >= 30_000_000_000, "{detection}");
}

fn with_policy(policy: &str, extra: &str, sets: &[&str]) -> RunReport {
    let mut sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    sets.push(format!("recovery.policy={policy}"));
    run(extra, &sets)
}

#[test]
fn every_policy_recovers_to_the_fault_free_parameters() {
    let reference = fault_free();
    let crash = "[[faults.crash]]\nnode = 2\nat_step = 10\n";
    for policy in ["restart", "in-memory", "hot-spare"] {
        let report = with_policy(policy, crash, &["cluster.spare_nodes=1"]);
        assert_eq!(report.recovery_policy, policy);
        assert_eq!(report.param_digest, reference.param_digest, "{policy}");
        assert_eq!(report.recoveries, 1, "{policy}");
    }
}

#[test]
fn in_memory_restores_from_host_and_buddy_memory_and_faster() {
    let crash = "[[faults.crash]]\nnode = 2\nat_step = 10\n";
    let restart = with_policy("restart", crash, &[]);
    let in_memory = with_policy("in-memory", crash, &[]);
    // 24 ranks: the 4 of the crashed node read their buddy's copy, the other 20 their own.
    assert_eq!(
        restart.restores_by_tier.get(&TierName::Persistent),
        Some(&24)
    );
    assert_eq!(
        in_memory.restores_by_tier.get(&TierName::Host),
        Some(&20),
        "{:?}",
        in_memory.restores_by_tier
    );
    assert_eq!(in_memory.restores_by_tier.get(&TierName::Peer), Some(&4));
    let restore = |r: &RunReport| r.lost_time_ns_by_cause[&LostCause::Restore];
    assert!(
        restore(&in_memory) < restore(&restart),
        "{} vs {}",
        restore(&in_memory),
        restore(&restart)
    );
}

#[test]
fn in_memory_falls_back_to_the_store_when_a_node_and_its_buddy_both_die() {
    let reference = fault_free();
    // Node 2's buddy is node 3: both die at once, so node 2's ranks find no memory copy.
    let crashes =
        "[[faults.crash]]\nnode = 2\nat_step = 10\n[[faults.crash]]\nnode = 3\nat_step = 10\n";
    let report = with_policy("in-memory", crashes, &[]);
    assert_eq!(report.param_digest, reference.param_digest);
    assert_eq!(
        report.restores_by_tier.get(&TierName::Persistent),
        Some(&4),
        "{:?}",
        report.restores_by_tier
    );
}

#[test]
fn hot_spares_swap_fast_until_the_pool_runs_dry_then_restart_in_full() {
    let reference = fault_free();
    let crashes =
        "[[faults.crash]]\nnode = 1\nat_step = 5\n[[faults.crash]]\nnode = 4\nat_step = 11\n";
    let sets = [
        "cluster.spare_nodes=1",
        "recovery.spare_swap_time=20s",
        "recovery.restart_time=5min",
    ];
    let report = with_policy("hot-spare", crashes, &sets);
    assert_eq!(report.param_digest, reference.param_digest);
    assert_eq!(report.recoveries, 2);
    assert_eq!(report.spares_used, 1);
    assert_eq!(report.spare_pool_exhausted, 1);
    // One 20 s swap, then one 5 min restart once the pool is empty.
    assert_eq!(
        report.lost_time_ns_by_cause[&LostCause::Restart],
        20_000_000_000 + 300_000_000_000
    );

    let no_fallback = [sets[0], sets[1], sets[2], "recovery.fallback=none"];
    let report = with_policy("hot-spare", crashes, &no_fallback);
    assert!(report.faults.job_abandoned);
    assert!(report.steps_completed < 16);
}

#[test]
fn policies_that_cannot_work_are_refused_at_load() {
    let cases = [
        (
            vec!["recovery.policy=hot-spare", "recovery.fallback=none"],
            "recovery.policy",
        ),
        (
            vec![
                "recovery.policy=per-replica",
                "recovery.replica_rejoin_time=\"0s\"",
            ],
            "recovery.replica_rejoin_time",
        ),
        (
            vec!["recovery.replica_rejoin_time=\"soon\""],
            "recovery.replica_rejoin_time",
        ),
        (
            vec!["recovery.policy=per-replica", "recovery.min_replicas=0"],
            "recovery.min_replicas",
        ),
        // 24 GPUs on nodes of 4: six nodes.
        (
            vec!["recovery.policy=per-replica", "recovery.min_replicas=7"],
            "recovery.min_replicas",
        ),
        (
            vec!["recovery.policy=per-replica", "cluster.gpus=4"],
            "recovery.policy",
        ),
        (vec!["recovery.policy=per-rank"], "recovery.policy"),
        (vec!["checkpoint.interval=0"], "checkpoint.interval"),
        (vec!["checkpoint.keep=0"], "checkpoint.keep"),
        (vec!["checkpoint.interval=\"0s\""], "checkpoint.interval"),
    ];
    for (sets, key) in cases {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let error = load_str("r", "<test>", BASE, &sets).unwrap_err();
        assert_eq!(error.key.as_deref(), Some(key), "{error}");
    }
    let fine = ["recovery.policy=per-replica", "recovery.min_replicas=6"];
    let sets: Vec<String> = fine.iter().map(|s| s.to_string()).collect();
    load_str("r", "<test>", BASE, &sets).expect("per-replica loads");
}

/// Storage faults. A bit flipped in a committed shard is caught by the restore's checksum, which
/// falls back to the older checkpoint; failed writes leave a checkpoint uncommitted; a slow
/// store delays commits. Each ends with the fault-free parameters.
#[test]
fn storage_faults_are_survived_and_counted() {
    let reference = fault_free();
    // The step-4 checkpoint commits at about 1 s and the step-8 one later; corrupt the newest
    // committed one at 1.3 s, then crash a node: the restore must skip the corrupt checkpoint.
    let corrupt = "[[faults.storage]]\nkind = \"corrupt\"\nat = \"1300ms\"\n[[faults.crash]]\nnode = 1\nat_step = 15\n";
    let report = run(corrupt, &["checkpoint.keep=3".to_string()]);
    assert_eq!(
        report.faults.injected.get(&FaultKind::StorageCorruption),
        Some(&1),
        "{:?}",
        report.faults
    );
    assert!(
        report.restore_fallbacks >= 1,
        "the corrupt shard was not noticed"
    );
    assert_eq!(report.param_digest, reference.param_digest);

    let failing = "[[faults.storage]]\nkind = \"fail_writes\"\nfrom = \"0s\"\nuntil = \"1s\"\n";
    let report = run(failing, &[]);
    assert!(
        report
            .faults
            .injected
            .get(&FaultKind::StorageWriteFailure)
            .copied()
            .unwrap_or(0)
            > 0
    );
    assert!(report.checkpoints_committed < fault_free().checkpoints_committed);
    assert_eq!(report.param_digest, reference.param_digest);

    let slow =
        "[[faults.storage]]\nkind = \"slow\"\nfactor = 8.0\nfrom = \"0s\"\nuntil = \"10s\"\n";
    let report = run(slow, &[]);
    assert!(report.checkpoints_committed < fault_free().checkpoints_committed);
    assert_eq!(report.param_digest, reference.param_digest);
}
