//! The blast radius (issue 25, item 1): each fault that stopped work names the groups the
//! layout's arithmetic says it hit, and the GPU-time idle is the GPUs times the downtime the
//! controller's books measured.

use faultline_sim::books::{LostCause, Resumption, StopCause};
use faultline_sim::run::{run_scenario, RunReport};
use faultline_sim::scenario::load_str;

/// tp 2 x pp 2 x dp 4 (tp-dp-pp) on 4 nodes of 4 GPUs, node 1 crashing at step 2.
const LAYOUT: &str = "
[cluster]
gpus = 16
gpus_per_node = 4
nodes_per_leaf = 2
spare_nodes = 1
[job]
steps = 4
proxy_layers = 4
proxy_width = 8
micro_batches = 2
micro_batch_size = 2
layers = 8
hidden = 1024
seq_len = 512
[parallelism]
tp = 2
pp = 2
order = \"tp-dp-pp\"
[recovery]
restart_time = \"1min\"
spare_swap_time = \"20s\"
heartbeat_interval = \"5s\"
";

const CRASH: &str = "[[faults.crash]]\nnode = 1\nat_step = 2\n";

fn run(text: &str, sets: &[&str]) -> RunReport {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let scenario = load_str("blast", "<test>", text, &sets).unwrap();
    run_scenario(&scenario).unwrap()
}

fn lost(report: &RunReport, cause: LostCause) -> u64 {
    report
        .lost_time_ns_by_cause
        .get(&cause)
        .copied()
        .unwrap_or(0)
}

/// Node 1 holds ranks 4..8. Under tp-dp-pp (TP stride 1, DP stride 2, PP stride 8) they are
/// TP ranks 0 and 1 of stage 0 in DP replicas 2 and 3: TP groups {4,5} and {6,7}, the
/// pipelines starting at 4, 5, 6 and 7 (their stage 1 on node 3), two replicas of
/// pp x tp = 4 GPUs. Under a restart-based policy every one of the 16 GPUs is idle from the
/// crash to the first step after the restore: detection, relaunch (or swap) and restore.
#[test]
fn a_node_crash_under_a_layout_stops_the_groups_the_arithmetic_says() {
    let cases = [
        ("restart", Resumption::Restart),
        ("hot-spare", Resumption::HotSpareSwap),
    ];
    for (policy, resumption) in cases {
        let set = format!("recovery.policy=\"{policy}\"");
        let report = run(&format!("{LAYOUT}{CRASH}"), &[&set]);
        let b = &report.blast_radius;
        assert_eq!(b.faults.len(), 1, "{policy}: {b:?}");
        let f = &b.faults[0];
        assert_eq!(f.cause, StopCause::NodeCrash);
        assert_eq!(f.recovery, resumption, "{policy}");
        assert_eq!(f.ranks, vec![4, 5, 6, 7]);
        assert_eq!(f.nodes, vec![1]);
        assert_eq!(f.tp_groups, vec![4, 6]);
        assert_eq!(f.pipelines, vec![4, 5, 6, 7]);
        assert_eq!(f.dp_replicas, vec![2, 3]);
        assert_eq!(f.replica_gpus, 4);
        assert_eq!(
            (b.replicas_lost, b.pipelines_stalled, b.tp_groups_stopped),
            (2, 4, 2)
        );
        let downtime = lost(&report, LostCause::Detection)
            + lost(&report, LostCause::Restart)
            + lost(&report, LostCause::Restore);
        assert!(downtime > 0, "{policy}");
        assert_eq!(
            f.stopped_ns, downtime,
            "{policy}: {:?}",
            report.lost_time_ns_by_cause
        );
        assert_eq!((f.gpus_stopped, f.gpus_out, f.out_ns), (16, 0, 0));
        let want = 16.0 * downtime as f64 / 1e9;
        assert!((b.gpus_idle_seconds - want).abs() < 1e-9, "{policy}");
        assert_eq!(b.gpus_idle_seconds_by_cause[&StopCause::NodeCrash], want);
    }
}

/// Without a layout, a node is the unit: under per-replica every GPU waits for the regroup,
/// then the node's 4 GPUs stay out until they are re-admitted.
#[test]
fn a_node_crash_under_per_replica_idles_the_node_until_it_rejoins() {
    let text = "[cluster]\ngpus = 16\ngpus_per_node = 4\nnodes_per_leaf = 2\n\
                [job]\nsteps = 24\nproxy_elems = 40\nmodel_params = 1e9\n\
                [recovery]\npolicy = \"per-replica\"\nheartbeat_interval = \"1s\"\n\
                replica_rejoin_time = \"2s\"\n[[faults.crash]]\nnode = 2\nat_step = 3\n";
    let report = run(text, &[]);
    let b = &report.blast_radius;
    assert_eq!(b.faults.len(), 1, "{b:?}");
    let f = &b.faults[0];
    assert_eq!(f.recovery, Resumption::Regroup);
    assert_eq!(f.nodes, vec![2]);
    assert_eq!(f.dp_replicas, vec![8, 9, 10, 11]);
    assert!(f.tp_groups.is_empty() && f.pipelines.is_empty());
    assert_eq!(f.gpus_out, 4);
    assert!(f.out_ns >= 1_000_000_000, "{f:?}");
    let want = (16 * f.stopped_ns + 4 * f.out_ns) as f64 / 1e9;
    assert!((b.gpus_idle_seconds - want).abs() < 1e-9);
}

/// Nothing stopped, nothing to report (and nothing in the JSON).
#[test]
fn a_run_without_faults_has_an_empty_blast_radius() {
    let report = run(LAYOUT, &[]);
    assert!(report.blast_radius.is_empty());
    let json = serde_json::to_string(&report).unwrap();
    assert!(!json.contains("blast_radius"));
}
