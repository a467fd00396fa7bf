//! Link flaps under the plain and the retry transport, rerouting around a dead uplink, and
//! stragglers: their cost in step time, their scores, and eviction. Every bound is derived
//! from the scenario's own settings or from the fault-free run of the same scenario.

use faultline_sim::books::{Detector, FaultKind, LostCause};
use faultline_sim::run::{run_scenario, RunReport};
use faultline_sim::scenario::{load_str, Scenario};

/// 64 GPUs on 8 nodes, two nodes per leaf: rail traffic between scalable units crosses one of
/// two spines, so a leaf-spine uplink has an alternative and a NIC has none.
const BASE: &str = "
[cluster]
gpus = 64
gpus_per_node = 8
nodes_per_leaf = 2
spare_nodes = 1
[job]
steps = 12
collective = \"hierarchical\"
proxy_elems = 40
model_params = 2e9
[checkpoint]
interval = 2
[fabric]
retry_initial_backoff = \"1ms\"
retry_max_backoff = \"100ms\"
retry_budget = \"20s\"
[recovery]
policy = \"in-memory\"
collective_timeout = \"5s\"
restart_time = \"30s\"
";

fn scenario(extra: &str, sets: &[&str]) -> Scenario {
    let text = format!("{BASE}{extra}");
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    load_str("faults_fabric", "<test>", &text, &sets).unwrap_or_else(|e| panic!("{e}"))
}

fn run(extra: &str, sets: &[&str]) -> RunReport {
    run_scenario(&scenario(extra, sets)).unwrap()
}

fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

/// A NIC flap on GPU 9 starting three steps in and lasting 1.5 steps, so that it meets at
/// least one all-reduce whatever the phase of the step.
fn nic_flap(reference: &RunReport) -> (String, u64) {
    let step_ns = reference.model_time_ns / reference.steps_requested;
    let down_ns = step_ns * 3 / 2;
    let flap = format!(
        "[[faults.link_flap]]\nlink = \"nic:gpu=9\"\nat = \"{}ns\"\ndown = \"{down_ns}ns\"\n",
        3 * step_ns
    );
    (flap, down_ns)
}

#[test]
fn a_nic_flap_under_retry_costs_time_but_no_restart() {
    let reference = run("", &[]);
    let (flap, down_ns) = nic_flap(&reference);
    let report = run(&flap, &["fabric.transport=retry"]);
    assert_eq!(report.recoveries, 0, "{:?}", report.faults);
    assert!(report.faults.detected.is_empty(), "{:?}", report.faults);
    assert_eq!(report.steps_completed, reference.steps_completed);
    assert_eq!(report.param_digest, reference.param_digest);
    assert_eq!(report.faults.injected.get(&FaultKind::LinkFlap), Some(&1));
    let flaps = report.link_flaps.as_ref().expect("a link flap report");
    assert_eq!(flaps.transport, "retry");
    assert!(
        flaps.transfers_retried > 0 && flaps.transfers_lost == 0,
        "{flaps:?}"
    );
    let retry_ns = report.lost_time_ns_by_cause[&LostCause::LinkFlapRetry];
    assert_eq!(retry_ns, flaps.retry_time_ns);
    // Transfers wait for the link at most `down`, plus one backoff of at most the maximum.
    let max_backoff_ns = 100_000_000;
    assert!(
        retry_ns > 0 && retry_ns <= down_ns + max_backoff_ns,
        "{retry_ns}"
    );
    let extra_ns = report.model_time_ns - reference.model_time_ns;
    assert!(extra_ns > 0, "the flap must cost time");
    assert!(
        extra_ns <= down_ns + max_backoff_ns,
        "extra {extra_ns} ns, flap {down_ns} ns"
    );
}

#[test]
fn the_same_flap_under_plain_costs_a_restart_detected_by_the_watchdog() {
    let reference = run("", &[]);
    let (flap, _) = nic_flap(&reference);
    let report = run(&flap, &["fabric.transport=plain"]);
    assert!(report.recoveries >= 1, "{:?}", report.faults);
    assert!(report
        .faults
        .detected
        .get(&Detector::Watchdog)
        .is_some_and(|&n| n >= 1));
    assert_eq!(report.steps_completed, reference.steps_completed);
    // Detected and recovered: the same parameters as the fault-free run.
    assert_eq!(report.param_digest, reference.param_digest);
    assert!(report.replicas_agree);
    let flaps = report.link_flaps.as_ref().expect("a link flap report");
    assert!(
        flaps.transfers_lost > 0 && flaps.transfers_retried == 0,
        "{flaps:?}"
    );
    assert!(flaps.detections >= 1);
    // The watchdog gives up on a receive only after the collective timeout.
    let timeout_ns = 5_000_000_000;
    assert!(flaps.detection_latency_ns_max >= timeout_ns, "{flaps:?}");
    assert!(report.lost_time_ns_by_cause[&LostCause::Detection] >= timeout_ns);
    assert!(report.lost_time_ns_by_cause[&LostCause::Restart] >= 30_000_000_000);
    assert!(!report
        .lost_time_ns_by_cause
        .contains_key(&LostCause::LinkFlapRetry));
}

#[test]
fn a_flap_longer_than_the_retry_budget_falls_back_to_the_watchdog() {
    let reference = run("", &[]);
    let (flap, down_ns) = nic_flap(&reference);
    let budget = format!("fabric.retry_budget={}ns", down_ns / 4);
    let report = run(&flap, &["fabric.transport=retry", &budget]);
    let flaps = report.link_flaps.as_ref().expect("a link flap report");
    assert!(
        flaps.transfers_retried > 0 && flaps.transfers_lost > 0,
        "{flaps:?}"
    );
    assert!(report.recoveries >= 1);
    assert!(report
        .faults
        .detected
        .get(&Detector::Watchdog)
        .is_some_and(|&n| n >= 1));
    assert_eq!(report.param_digest, reference.param_digest);
}

#[test]
fn a_dead_leaf_spine_uplink_is_routed_around_at_almost_no_cost() {
    let reference = run("", &[]);
    let step_ns = reference.model_time_ns / reference.steps_requested;
    // Down for the whole run, on the plain transport: only rerouting can save it.
    let flap = format!(
        "[[faults.link_flap]]\nlink = \"leaf-spine:leaf=1,spine=0\"\nat = \"{step_ns}ns\"\n\
         down = \"1h\"\n"
    );
    let report = run(&flap, &["fabric.transport=plain"]);
    let flaps = report.link_flaps.as_ref().expect("a link flap report");
    assert!(flaps.transfers_rerouted > 0, "{flaps:?}");
    assert_eq!(flaps.transfers_lost, 0);
    assert_eq!(report.recoveries, 0);
    assert_eq!(report.param_digest, reference.param_digest);
    // The other spine carries the rerouted flows: more or less contention than ECMP's hash
    // gave (here it can even balance better), and nothing like a restart.
    assert!(
        report.model_time_ns.abs_diff(reference.model_time_ns) <= reference.model_time_ns / 10,
        "{} vs {}",
        report.model_time_ns,
        reference.model_time_ns
    );
}

#[test]
fn flaps_are_deterministic_for_a_seed() {
    let reference = run("", &[]);
    let (flap, _) = nic_flap(&reference);
    for transport in ["fabric.transport=plain", "fabric.transport=retry"] {
        let a = run(&flap, &[transport]);
        let b = run(&flap, &[transport]);
        assert_eq!(a.trace_digest, b.trace_digest, "{transport}");
        assert_eq!(a.model_time_ns, b.model_time_ns, "{transport}");
        assert_ne!(a.trace_digest, reference.trace_digest, "{transport}");
    }
}

/// The nominal compute time per step of one rank: forward/backward and the optimizer.
fn compute_ns(s: &Scenario) -> (u64, u64) {
    let ns = |flops: f64| (flops / s.gpu_achieved_flops_per_s * 1e9) as u64;
    (
        ns(s.job.modelled_step_flops),
        ns(s.job.modelled_optimizer_flops),
    )
}

const STRAGGLER: &str = "
[[faults.straggler]]
gpu = 21
factor = 1.5
from = \"0s\"
duration = \"1h\"
";

#[test]
fn a_straggler_slows_every_step_by_its_extra_compute_and_its_score_flags_it() {
    let reference = run("", &[]);
    let patience = 3;
    let sets = [
        "recovery.straggler_detection=true",
        "recovery.straggler_threshold=1.2",
        "recovery.straggler_patience=3",
    ];
    let s = scenario(STRAGGLER, &sets);
    let report = run_scenario(&s).unwrap();
    let (forward_backward_ns, optimizer_ns) = compute_ns(&s);
    // Step by step (checkpoint steps line up with checkpoint steps), what the slow rank adds.
    assert_eq!(report.rank0_step_ns.len(), reference.rank0_step_ns.len());
    let extras: Vec<u64> = (report.rank0_step_ns.iter().zip(&reference.rank0_step_ns))
        .map(|(slow, normal)| slow - normal)
        .collect();
    let extra = median(&extras);
    // Synchronous steps wait for the slow rank's extra compute: at most half of everything
    // it computes per step; at least half its forward/backward less the all-reduce time,
    // the work other ranks can do meanwhile (the other nodes' intra-node phase).
    let normal = median(&reference.rank0_step_ns);
    let all_reduce_ns = normal - forward_backward_ns - optimizer_ns;
    let (low, high) = (
        forward_backward_ns / 2 - all_reduce_ns,
        (forward_backward_ns + optimizer_ns) / 2 + 1,
    );
    assert!(
        (low..=high).contains(&extra),
        "extra {extra} ns per step, expected {low}..={high}"
    );
    let stragglers = report.stragglers.as_ref().expect("a straggler report");
    assert_eq!(stragglers.flagged.len(), 1, "{stragglers:?}");
    let flagged = &stragglers.flagged[0];
    assert_eq!(flagged.rank, 21);
    assert!(flagged.injected);
    assert_eq!(
        flagged.step,
        patience - 1,
        "flagged after `patience` slow steps"
    );
    assert!((flagged.score - 1.5).abs() < 0.01, "{}", flagged.score);
    assert_eq!(stragglers.stragglers_evicted, 0);
    assert_eq!(report.recoveries, 0);
    assert_eq!(
        report.faults.detected.get(&Detector::StragglerScore),
        Some(&1)
    );
    assert!(report.lost_time_ns_by_cause[&LostCause::Straggler] > 0);
    assert_eq!(report.param_digest, reference.param_digest);
}

#[test]
fn evicting_the_straggler_restores_normal_step_time() {
    let reference = run("", &[]);
    let sets = [
        "recovery.policy=hot-spare",
        "recovery.straggler_detection=true",
        "recovery.straggler_patience=3",
        "recovery.straggler_mitigation=evict",
    ];
    let report = run(STRAGGLER, &sets);
    let stragglers = report.stragglers.as_ref().expect("a straggler report");
    assert_eq!(stragglers.stragglers_evicted, 1, "{stragglers:?}");
    assert_eq!(report.recoveries, 1);
    assert_eq!(report.spares_used, 1);
    assert_eq!(report.steps_completed, reference.steps_completed);
    assert_eq!(report.param_digest, reference.param_digest);
    assert!(report.replicas_agree);
    // Before the eviction every step waited for the slow rank; after it, the last steps run
    // on the replacement node at the fault-free pace. Steps with a checkpoint or a fingerprint
    // take longer in both runs, so the last four are compared one to one with the same steps
    // of the fault-free run (the retried steps come before them).
    let normal = median(&reference.rank0_step_ns);
    let steps = &report.rank0_step_ns;
    assert!(steps[0] > normal * 6 / 5, "{steps:?}");
    let tail = &steps[steps.len() - 4..];
    let reference_tail = &reference.rank0_step_ns[reference.rank0_step_ns.len() - 4..];
    for (&ns, &fault_free) in tail.iter().zip(reference_tail) {
        assert!(
            ns.abs_diff(fault_free) <= fault_free * 3 / 100,
            "{tail:?} vs {reference_tail:?} fault-free"
        );
    }
}

#[test]
fn a_slow_nic_slows_the_job_but_not_the_compute_scores() {
    let reference = run("", &[]);
    let nic = STRAGGLER.replace("factor = 1.5", "factor = 4.0\nkind = \"nic\"");
    let report = run(&nic, &["recovery.straggler_detection=true"]);
    assert!(median(&report.rank0_step_ns) > median(&reference.rank0_step_ns));
    let stragglers = report.stragglers.as_ref().expect("a straggler report");
    // Scores measure compute; a NIC slowdown shows in step time only.
    assert!(stragglers.flagged.is_empty(), "{stragglers:?}");
    assert_eq!(report.param_digest, reference.param_digest);
}

/// About three random flaps over the run's 128 flappable links (64 NICs, 64 leaf-spine
/// links), each 200 ms long.
const RANDOM_FLAPS: &str = "
[faults.rates]
link_flaps_per_1000_link_days = 1e6
link_flap_down = \"200ms\"
";

#[test]
fn random_flaps_are_drawn_from_the_seed_and_retry_rides_them_out() {
    let reference = run("", &[]);
    let a = run(RANDOM_FLAPS, &["fabric.transport=retry"]);
    let b = run(RANDOM_FLAPS, &["fabric.transport=retry"]);
    assert_eq!(a.trace_digest, b.trace_digest);
    let flaps = a.link_flaps.as_ref().expect("a link flap report");
    assert!(flaps.flaps >= 1, "{flaps:?}");
    assert_eq!(
        a.faults.injected.get(&FaultKind::LinkFlap),
        Some(&flaps.flaps)
    );
    // 200 ms flaps against a 20 s retry budget: nothing is lost, nothing restarts.
    assert_eq!(flaps.transfers_lost, 0);
    assert_eq!(a.recoveries, 0);
    assert_eq!(a.param_digest, reference.param_digest);
    // Another seed draws other flaps. On the FIFO executor the seed changes nothing else:
    // fault-free, seeds 1 and 2 give the same trace.
    let fifo = |seed: &str, extra: &str| {
        let sets = ["fabric.transport=retry", "run.executor=fifo", seed];
        run(extra, &sets).trace_digest
    };
    assert_eq!(fifo("run.seed=1", ""), fifo("run.seed=2", ""));
    assert_ne!(
        fifo("run.seed=1", RANDOM_FLAPS),
        fifo("run.seed=2", RANDOM_FLAPS)
    );
}
