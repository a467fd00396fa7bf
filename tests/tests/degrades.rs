//! Fail-slow links (`[[faults.degrade]]`): a link that keeps a fraction of its bandwidth, and
//! may lose transfers, for a while. Every rank stays alive, so the heartbeat monitor must never
//! see one; the step time shows it; the loss draws are the model's, not the executor's.

use faultline_sim::books::{Detector, FaultKind};
use faultline_sim::run::{run_scenario, RunReport};
use faultline_sim::scenario::load_str;

/// 32 GPUs (4 nodes), heartbeats every 5 s and the 10-minute watchdog, and `faults`.
fn run(faults: &str, sets: &[&str]) -> RunReport {
    let text = format!(
        "[cluster]\ngpus = 32\nnodes_per_leaf = 2\n\
         [job]\nsteps = 12\nproxy_elems = 16\nmodel_params = 1e9\n\
         [checkpoint]\ninterval = 4\n\
         [recovery]\nheartbeat_interval = \"5s\"\nstraggler_detection = true\n\
         [fabric]\nretransmit_timeout = \"50ms\"\n{faults}"
    );
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let scenario = load_str("degrade", "<test>", &text, &sets).unwrap();
    run_scenario(&scenario).unwrap()
}

const NIC: &str = "[[faults.degrade]]\nnic = 11\nbandwidth = 0.1\nloss = 0.2\nat = \"0s\"\n";
const NVLINK: &str = "[[faults.degrade]]\nnvlink = 2\nbandwidth = 0.05\nloss = 0.1\nat = \"0s\"\n";
const SPINE: &str =
    "[[faults.degrade]]\nlink = \"leaf-spine:leaf=3,spine=0\"\nbandwidth = 0.2\nat = \"0s\"\n";

/// The job finishes with the fault-free parameters, slower, and with nothing detected: the
/// heartbeat monitor (every rank is alive), the straggler scores (compute is not slower) and
/// the watchdog (no collective waits ten minutes) all stay quiet.
#[test]
fn heartbeats_and_scores_do_not_see_a_degrade_but_step_time_does() {
    let healthy = run("", &[]);
    for faults in [NIC, NVLINK, SPINE] {
        let r = run(faults, &[]);
        assert_eq!(r.steps_completed, 12, "{faults}");
        assert_eq!(r.param_digest, healthy.param_digest, "{faults}");
        assert_eq!(r.faults.injected.get(&FaultKind::Degrade), Some(&1));
        assert!(
            r.faults.detected.is_empty(),
            "{faults}: {:?}",
            r.faults.detected
        );
        assert!(!r.faults.detected.contains_key(&Detector::Heartbeat));
        assert_eq!(r.recoveries, 0, "{faults}");
        assert!(r.model_time_ns > healthy.model_time_ns, "{faults}");
        let d = r.degrades.as_ref().unwrap();
        assert!(d.detections.is_empty(), "{faults}");
        assert_eq!(d.steps_degraded, 12);
        assert!(d.step_time_ns_p50_degraded > 0);
        let scores = r.stragglers.as_ref().unwrap();
        assert!(
            scores.flagged.is_empty() && scores.max_score < 1.2,
            "{faults}"
        );
    }
    // The lossy NIC resent some transfers; the lossless spine link none.
    assert!(run(NIC, &[]).degrades.unwrap().retransmissions > 0);
    assert_eq!(run(SPINE, &[]).degrades.unwrap().retransmissions, 0);
}

/// The resends are drawn in the model's reservation order: madsim's seeded interleavings
/// and the FIFO executor draw the same, and arrive at the same times.
#[test]
fn loss_draws_are_the_same_under_every_executor() {
    for faults in [NIC, NVLINK] {
        let by = |executor: &str| {
            let r = run(faults, &[&format!("run.executor=\"{executor}\"")]);
            let d = r.degrades.unwrap();
            let books = (d.retransmissions, d.transfers_retransmitted);
            (
                r.model_time_ns,
                r.param_digest,
                books,
                d.retransmission_delay_ns,
            )
        };
        let fifo = by("fifo");
        assert!(fifo.2 .0 > 0, "{faults}: no retransmission to compare");
        assert_eq!(by("madsim"), fifo, "{faults}");
    }
}

/// The rate form: random degrades of NIC uplinks and leaf-spine links, each begun and ended.
#[test]
fn random_degrades_begin_and_end() {
    let rates = "[faults.rates]\ndegrades_per_1000_link_days = 1e6\ndegrade_duration = \"200ms\"\n\
                 degrade_bandwidth = 0.25\n";
    let r = run(rates, &[]);
    let d = r.degrades.as_ref().unwrap();
    assert!(d.degrades_injected > 0, "{d:?}");
    assert!(
        d.degrades_ended > 0 && d.degrades_ended <= d.degrades_injected,
        "{d:?}"
    );
    assert_eq!(r.steps_completed, 12);
    assert!(r.faults.detected.is_empty(), "{:?}", r.faults.detected);
    // The same seed, the same episodes.
    assert_eq!(run(rates, &[]).model_time_ns, r.model_time_ns);
}
