//! Layout jobs on the simulator (issue #24): for a fixed global batch, every layout with TP, PP
//! and DP in {1, 2, 4} trains the loss curve of the single-process host reference; a layout
//! gives the same parameters for every seed and executor; every shard's replicas agree; and
//! with communication free, 1F1B's bubble is the textbook one. After a crash, a layout job
//! restores its checkpoint (or without one starts over) and ends with the fault-free
//! parameters.

use faultline_sim::books::{FaultKind, TierName};
use faultline_sim::run::{run_scenario, RunReport};
use faultline_sim::scenario::load_str;
use trainer_core::kernels;
use trainer_core::mlp::{reference_loss_and_grad, ShardShape};

const LAYERS: usize = 4;
const WIDTH: usize = 8;
const GLOBAL_BATCH: usize = 16;
const MICRO_BATCHES: usize = 4;
const STEPS: u64 = 3;
const LEARNING_RATE: f32 = 0.25;
const DATA_SEED: u64 = 0x5eed;

/// A layout job of `tp * pp * dp` GPUs, `gpus_per_node` to a node, whose replicas share a
/// global batch of 16 samples; `extra` is more TOML.
fn scenario_text(
    (tp, pp, dp): (usize, usize, usize),
    gpus_per_node: usize,
    sharding: &str,
    extra: &str,
) -> String {
    let micro_batch_size = GLOBAL_BATCH / (dp * MICRO_BATCHES);
    format!(
        "[cluster]\ngpus = {gpus}\ngpus_per_node = {gpus_per_node}\nnodes_per_leaf = 2\n\
         [job]\nsteps = {STEPS}\nproxy_layers = {LAYERS}\nproxy_width = {WIDTH}\n\
         micro_batches = {MICRO_BATCHES}\nmicro_batch_size = {micro_batch_size}\n\
         learning_rate = {LEARNING_RATE}\ndata_seed = {DATA_SEED}\nlayers = 8\nhidden = 1024\n\
         seq_len = 512\n[parallelism]\ntp = {tp}\npp = {pp}\ndp_sharding = \"{sharding}\"\n{extra}",
        gpus = tp * pp * dp,
    )
}

fn run(text: &str, sets: &[String]) -> RunReport {
    let scenario = load_str("layout", "<test>", text, sets).unwrap();
    run_scenario(&scenario).unwrap()
}

/// The host reference's loss at each step: the whole proxy, one process, the whole batch.
fn reference_losses() -> Vec<f32> {
    let whole = ShardShape::whole(LAYERS, WIDTH);
    let mut params = whole.initial_params(DATA_SEED);
    let mut losses = Vec::new();
    for step in 0..STEPS {
        let (loss, grad) = reference_loss_and_grad(&whole, &params, DATA_SEED, step, GLOBAL_BATCH);
        losses.push(loss);
        kernels::sgd_update(&mut params, &grad, LEARNING_RATE);
    }
    losses
}

/// Every layout with TP, PP and DP in {1, 2, 4}, on every node size it fits among 1, 2, 4 and
/// 8 GPUs (the sharding and the order varied along), follows the reference's loss curve
/// within 1e-5 relative, with every shard's replicas in agreement.
#[test]
fn every_layout_trains_the_reference_loss_curve() {
    let want = reference_losses();
    let shardings = ["none", "optimizer", "full"];
    let orders = ["tp-dp-pp", "tp-pp-dp"];
    let mut runs = 0;
    for tp in [1, 2, 4] {
        for pp in [1, 2, 4] {
            for dp in [1, 2, 4] {
                let fits = |g: &usize| g % tp == 0 && *g <= tp * pp * dp;
                for gpus_per_node in [1, 2, 4, 8].into_iter().filter(fits) {
                    let sharding = shardings[runs % 3];
                    let order = format!("order = \"{}\"\n", orders[runs % 2]);
                    let text = scenario_text((tp, pp, dp), gpus_per_node, sharding, &order);
                    let report = run(&text, &[]);
                    let case = format!("tp {tp} pp {pp} dp {dp} on {gpus_per_node} {sharding}");
                    let losses = &report.layout.as_ref().unwrap().step_losses;
                    assert_eq!(losses.len(), want.len(), "{case}");
                    for (step, (got, want)) in losses.iter().zip(&want).enumerate() {
                        let error = (got - want).abs() / want.abs();
                        assert!(error <= 1e-5, "{case} step {step}: {got} vs {want}");
                    }
                    assert!(report.replicas_agree, "{case}");
                    assert_eq!(report.steps_completed, STEPS, "{case}");
                    runs += 1;
                }
            }
        }
    }
    assert!(runs >= 50, "{runs} layouts");
}

/// The same layout (TP, PP and DP all 2, 1F1B, under each sharding): the same parameters and
/// model time for every seed under madsim's seeded interleavings and the FIFO executor.
#[test]
fn a_layout_gives_the_same_parameters_for_every_seed_and_executor() {
    for sharding in ["none", "optimizer", "full"] {
        let text = scenario_text((2, 2, 2), 4, sharding, "");
        let first = run(&text, &[]);
        assert!(first.replicas_agree);
        for executor in ["madsim", "fifo"] {
            for seed in 1..4 {
                let sets = [
                    format!("run.seed={seed}"),
                    format!("run.executor={executor}"),
                ];
                let report = run(&text, &sets);
                let case = format!("{sharding} {executor} seed {seed}");
                assert_eq!(report.param_digest, first.param_digest, "{case}");
                assert_eq!(report.model_time_ns, first.model_time_ns, "{case}");
                assert!(report.replicas_agree, "{case}");
            }
        }
    }
}

/// Layouts that differ only in where DP sits, or in how it shards, train the same loss curve
/// but move their bytes differently: the placement and the sharding are real.
#[test]
fn order_and_sharding_change_the_traffic_not_the_loss() {
    let report = |sharding: &str, order: &str| {
        let text = scenario_text((2, 2, 2), 4, sharding, &format!("order = \"{order}\"\n"));
        run(&text, &[])
    };
    let plain = report("none", "tp-dp-pp");
    for (sharding, order) in [
        ("none", "tp-pp-dp"),
        ("optimizer", "tp-dp-pp"),
        ("full", "tp-dp-pp"),
    ] {
        let other = report(sharding, order);
        let (a, b) = (
            plain.layout.as_ref().unwrap(),
            other.layout.as_ref().unwrap(),
        );
        for (x, y) in a.step_losses.iter().zip(&b.step_losses) {
            assert!((x - y).abs() <= 1e-5 * x.abs(), "{sharding} {order}");
        }
        assert_ne!(
            plain.model_time_ns, other.model_time_ns,
            "{sharding} {order}"
        );
    }
    // Full sharding gathers the weights before every step and at the end: more DP traffic.
    let full = report("full", "tp-dp-pp");
    assert!(full.modelled_bytes > plain.modelled_bytes);
}

/// With every link (nearly) free and no payload checksums (which cost time per byte), the
/// first stage of a 1F1B (or GPipe) pipeline idles the textbook bubble,
/// (pp - 1) / (m + pp - 1), within 2%; and a real fabric only adds to it.
#[test]
fn one_f_one_b_with_free_communication_has_the_textbook_bubble() {
    let free = "[fabric]\nnvlink_bandwidth = \"10000TB/s\"\nnvlink_latency = \"0s\"\n\
                nic_bandwidth = \"10000TB/s\"\nnic_latency = \"0s\"\n\
                switch_link_bandwidth = \"10000TB/s\"\nswitch_latency = \"0s\"\n\
                [detection]\npayload_checksums = false\n";
    for schedule in ["1f1b", "gpipe"] {
        for (pp, m) in [(2, 4), (4, 4), (4, 8), (4, 16)] {
            let sets = [
                format!("job.micro_batches={m}"),
                format!("job.proxy_layers={}", 2 * pp),
                format!("job.schedule=\"{schedule}\""),
                "job.micro_batch_size=1".into(),
            ];
            let report = run(&scenario_text((1, pp, 2), 2, "none", free), &sets);
            let layout = report.layout.as_ref().unwrap();
            let ideal = (pp - 1) as f64 / (m + pp - 1) as f64;
            assert_eq!(layout.ideal_bubble_fraction, ideal);
            let error = (layout.bubble_fraction - ideal).abs() / ideal;
            let case = format!("{schedule} pp {pp} m {m}");
            assert!(
                error <= 0.02,
                "{case}: {} vs {ideal}",
                layout.bubble_fraction
            );
            let real = run(&scenario_text((1, pp, 2), 2, "none", ""), &sets);
            assert!(
                real.layout.unwrap().bubble_fraction > layout.bubble_fraction,
                "{case}"
            );
        }
    }
}

/// A layout's time split covers rank 0's steps: compute, TP, PP and DP add up to no more than
/// the model time, and each kind of traffic shows where the layout has it.
#[test]
fn the_time_split_shows_each_kind_of_traffic() {
    let report = run(&scenario_text((2, 2, 2), 4, "none", ""), &[]);
    let time = report.layout.as_ref().unwrap().time_split_ns;
    assert!(
        time.compute > 0 && time.tp > 0 && time.pp > 0 && time.dp > 0,
        "{time:?}"
    );
    assert!(time.compute + time.tp + time.pp + time.dp <= report.model_time_ns);
    assert!(time.pass_compute <= time.pipeline && time.pipeline <= report.model_time_ns);
    let no_tp = run(&scenario_text((1, 2, 4), 4, "none", ""), &[]);
    assert_eq!(no_tp.layout.unwrap().time_split_ns.tp, 0);
}

/// The messages by kind add up to the fabric's count and bytes, and a kind a layout lacks
/// sends nothing.
#[test]
fn the_messages_by_kind_add_up_to_the_fabrics() {
    for ((tp, pp, dp), sharding) in [
        ((2, 2, 2), "none"),
        ((2, 2, 2), "full"),
        ((1, 4, 2), "optimizer"),
        ((4, 1, 2), "none"),
        ((2, 2, 1), "none"),
    ] {
        let report = run(&scenario_text((tp, pp, dp), 4, sharding, ""), &[]);
        let t = report.layout.as_ref().unwrap().traffic;
        let case = format!("tp {tp} pp {pp} dp {dp} {sharding}");
        let kinds = [(t.tp, tp), (t.pp, pp), (t.dp, dp)];
        let messages: u64 = kinds.iter().map(|(k, _)| k.messages).sum();
        let bytes: u64 = kinds.iter().map(|(k, _)| k.modelled_bytes).sum();
        assert_eq!(messages, report.messages, "{case}");
        assert_eq!(bytes, report.modelled_bytes, "{case}");
        for (kind, size) in kinds {
            assert_eq!(kind.messages == 0, size == 1, "{case}: {kind:?}");
        }
        // Two messages per micro-batch per pair of neighbouring stages, per replica and TP
        // rank, per step.
        let pipelines = (tp * dp) as u64;
        let per_step = 2 * MICRO_BATCHES as u64 * (pp as u64 - 1) * pipelines;
        assert_eq!(t.pp.messages, per_step * STEPS, "{case}");
    }
}

/// Fault-free equivalence after one recovery: every step of the fault-free run completed,
/// with its losses and its parameters, every shard's replicas agreeing.
fn assert_recovered_to(report: &RunReport, reference: &RunReport, case: &str) {
    assert_eq!(report.recoveries, 1, "{case}");
    assert_eq!(report.steps_completed, reference.steps_completed, "{case}");
    assert_eq!(report.param_digest, reference.param_digest, "{case}");
    assert!(report.replicas_agree, "{case}");
    assert_eq!(
        report.layout.as_ref().unwrap().step_losses,
        reference.layout.as_ref().unwrap().step_losses,
        "{case}"
    );
}

/// A node crash under each restart-based policy without `[checkpoint]`: the job restarts
/// from the initial weights, trains every step again and ends with the fault-free
/// run's parameters, every shard's replicas agreeing.
#[test]
fn a_crash_restarts_a_layout_job_to_the_fault_free_parameters() {
    let recovery = "[recovery]\nrestart_time = \"1min\"\nheartbeat_interval = \"5s\"\n";
    let text = scenario_text((2, 2, 2), 4, "optimizer", recovery);
    let reference = run(&text, &[]);
    for (policy, target, step) in [("restart", "node = 1", 2), ("in-memory", "gpu = 6", 1)] {
        let crash = format!("[[faults.crash]]\n{target}\nat_step = {step}\n");
        let sets = [format!("recovery.policy=\"{policy}\"")];
        let report = run(&format!("{text}{crash}"), &sets);
        let case = format!("{policy}: {target} at step {step}");
        assert_recovered_to(&report, &reference, &case);
        assert!(
            report.model_time_ns > reference.model_time_ns + 60_000_000_000,
            "{case}"
        );
    }
}

/// A node crash after a committed checkpoint, under each restart-based policy and each DP
/// sharding, for a layout with TP, PP and DP all 2 on nodes of 2 GPUs: every rank restores its
/// part of its shard from the tier the policy says (the crashed node's from its buddy's memory
/// under in-memory and hot-spare, every rank from the store under restart), the job trains
/// only the steps since that checkpoint again, and it ends with the fault-free run's
/// parameters and losses; no restore read a checkpoint that was not atomically committed.
/// The interval is a step count, and once a model-time one (rank 0's vote says when).
#[test]
fn a_crash_restores_a_layout_checkpoint_to_the_fault_free_parameters() {
    let (steps, crash_step, crashed_node, gpus_per_node) = (6, 4, 1, 2);
    let recovery = "[recovery]\nrestart_time = \"1min\"\nheartbeat_interval = \"5s\"\n\
                    spare_swap_time = \"20s\"\n[storage]\nclient_bandwidth = \"100GB/s\"\n\
                    [checkpoint]\nstate_bytes_per_param = 1\n";
    let cases = [
        ("none", "1"),
        ("optimizer", "1"),
        ("full", "1"),
        ("optimizer", "\"6ms\""),
    ];
    for (sharding, interval) in cases {
        let extra = format!("{recovery}interval = {interval}\n");
        let text = scenario_text((2, 2, 2), gpus_per_node, sharding, &extra);
        let mut sets = vec![
            format!("job.steps={steps}"),
            "cluster.spare_nodes=1".to_string(),
        ];
        let reference = run(&text, &sets);
        assert!(reference.checkpoints_committed > 0, "{sharding} {interval}");
        for policy in ["restart", "in-memory", "hot-spare"] {
            let crash =
                format!("[[faults.crash]]\nnode = {crashed_node}\nat_step = {crash_step}\n");
            sets.push(format!("recovery.policy=\"{policy}\""));
            let report = run(&format!("{text}{crash}"), &sets);
            sets.pop();
            let case = format!("{sharding} every {interval}, {policy}");
            assert_recovered_to(&report, &reference, &case);
            // Restored, not started over: fewer than the crash step's steps done again.
            let redone = report.rank0_step_ns.len() as u64 - steps;
            assert!(redone < crash_step, "{case}: {redone} steps redone");
            let (gpus, crashed) = (8, gpus_per_node as u64);
            let want = match policy {
                "restart" => vec![(TierName::Persistent, gpus)],
                _ => vec![(TierName::Host, gpus - crashed), (TierName::Peer, crashed)],
            };
            let got: Vec<(TierName, u64)> = report
                .restores_by_tier
                .iter()
                .map(|(t, n)| (*t, *n))
                .collect();
            assert_eq!(got, want, "{case}");
            assert_eq!(report.restore_fallbacks, 0, "{case}");
            assert_eq!(report.atomicity_violation_count, 0, "{case}");
        }
    }
}

/// The atomicity check above can fail: with the bug that commits a checkpoint before its
/// shards are durable planted in the trainer, and persists slower than a step, a layout job's
/// restore reads a checkpoint whose manifest landed too early, and the storage audit counts it.
#[test]
fn the_audit_catches_a_layout_checkpoint_committed_before_its_shards_were_durable() {
    let text = scenario_text(
        (2, 2, 2),
        2,
        "optimizer",
        "[recovery]\nrestart_time = \"1min\"\n[checkpoint]\ninterval = 1\n\
         [[faults.crash]]\nnode = 1\nat_step = 4\n",
    );
    let sets = ["job.steps=6".to_string()];
    let mut scenario = load_str("layout", "<test>", &text, &sets).unwrap();
    assert_eq!(
        run_scenario(&scenario).unwrap().atomicity_violation_count,
        0
    );
    scenario.planted_bug = Some(trainer_core::PlantedBug::CommitBeforeDurable);
    let report = run_scenario(&scenario).unwrap();
    assert!(report.atomicity_violation_count > 0, "{report:?}");
}

/// A bit flipped in a committed checkpoint of a layout job: the restore's checksum catches it
/// on the rank whose shard it hit, the ranks agree to fall back to the older checkpoint, and
/// the job still ends with the fault-free parameters.
#[test]
fn a_corrupt_layout_checkpoint_falls_back_to_the_older_one() {
    let text = scenario_text(
        (2, 2, 2),
        2,
        "full",
        "[recovery]\nrestart_time = \"1min\"\n[storage]\nclient_bandwidth = \"100GB/s\"\n\
         [checkpoint]\ninterval = 1\nkeep = 3\nstate_bytes_per_param = 1\n",
    );
    let sets = ["job.steps=8".to_string()];
    let reference = run(&text, &sets);
    // A checkpoint commits at each step boundary from about 10 ms on, steps 4 ms apart; the
    // step-4 one at about 25.5 ms: corrupt it at 27 ms, then crash a node within the step.
    let faults = "[[faults.storage]]\nkind = \"corrupt\"\nat = \"27ms\"\n\
                  [[faults.crash]]\nnode = 1\nat = \"27500us\"\n";
    let report = run(&format!("{text}{faults}"), &sets);
    let corruptions = report.faults.injected[&FaultKind::StorageCorruption];
    // The step-4 checkpoint, skipped for the step-3 one, which every rank restores.
    assert_eq!((corruptions, report.restore_fallbacks), (1, 1));
    assert_eq!(report.restores_by_tier[&TierName::Persistent], 8);
    assert_recovered_to(&report, &reference, "a corrupt checkpoint");
    assert_eq!(report.atomicity_violation_count, 0);
}
