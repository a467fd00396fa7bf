//! Unit tests of the planner: the closed forms against Daly's and Kokolis's published
//! examples, the Monte Carlo against Daly's model, accounting, determinism across threads and
//! shards, the spare pool, and scenario errors.

use std::path::Path;

use super::analytic::*;
use super::config::{self, Costs, PlanConfig};
use super::model::run_seed;
use super::report::{merge, summarise, Shard};
use super::{load_points, run_shard, Point};

const MIN: f64 = 60.0;
const HOUR: f64 = 3600.0;

/// Daly (2006): T_s = 500 h, R = 10 min, delta = 5 min.
#[test]
fn daly_examples_are_reproduced_by_the_analytic_functions() {
    // (M, published tau in minutes, published T_w / T_s)
    let cases = [
        (24.0 * HOUR, 116.7, 1.096),
        (6.0 * HOUR, 56.7, 1.22),
        (15.0 * MIN, 9.1, 5.0),
    ];
    for (mtbf, tau_min, ratio) in cases {
        let tau = daly_interval_s(5.0 * MIN, mtbf);
        assert!(
            (tau / MIN - tau_min).abs() < 0.05,
            "M = {mtbf} s: tau {} min, published {tau_min}",
            tau / MIN
        );
        // Daly evaluates T_w at his tau as printed (rounded to 0.1 min).
        let got = daly_wall_time_ratio(tau_min * MIN, 5.0 * MIN, 10.0 * MIN, mtbf);
        let digits = if ratio == 5.0 { 0.05 } else { 0.0015 };
        assert!(
            (got - ratio).abs() < digits,
            "M = {mtbf} s: T_w/T_s {got}, published {ratio}"
        );
        // T_w for the 500 h job is the ratio times 500 h; ETTR is its inverse.
        assert!((daly_ettr(tau, 5.0 * MIN, 10.0 * MIN, mtbf) - 1.0 / got).abs() < 0.01);
    }
    assert!((young_interval_s(5.0 * MIN, 6.0 * HOUR) - 60.0 * MIN).abs() < 1e-9);
    // delta >= 2M: Daly's interval is M.
    assert_eq!(daly_interval_s(100.0, 40.0), 40.0);
}

/// Kokolis et al.: 16k GPUs at the RSC-1 rate (6.5 per 1,000 node-days), u0 = 5 min: about 0.7
/// at a 60 min interval and about 0.93 at 5 min (with a negligible write time).
#[test]
fn kokolis_examples_are_reproduced() {
    let rate = 2048.0 * 6.5 / 1000.0 / 86_400.0;
    let at_60 = kokolis_ettr(rate, 5.0 * MIN, 60.0 * MIN, 0.0);
    let at_5 = kokolis_ettr(rate, 5.0 * MIN, 5.0 * MIN, 0.0);
    assert!((at_60 - 0.7).abs() < 0.03, "{at_60}");
    assert!((at_5 - 0.93).abs() < 0.01, "{at_5}");
    assert!((kokolis_interval_s(rate, 10.0) - (20.0 / rate).sqrt()).abs() < 1e-9);
    assert_eq!(kokolis_ettr(1.0, 1e6, 1.0, 0.0), 0.0, "clamped at 0");
}

/// Only node failures, zero detection, fixed costs: Daly's model holds exactly, so the
/// simulated ETTR must cover it. 1,000 nodes at 4 failures per 1,000 node-days: M = 6 h.
fn daly_world(extra: &str) -> String {
    format!(
        "[cluster]\ngpus = 8000\n[plan]\nhorizon = \"60d\"\nseeds = 160\n\
         [checkpoint]\ninterval = \"56.7min\"\nwrite_time = \"5min\"\n\
         [recovery]\nrestart_time = \"10min\"\ndetection_time = \"0s\"\n\
         [faults.rates]\nnode_failures_per_1000_node_days = 4.0\n{extra}"
    )
}

fn points_from(text: &str, sweeps: &[&str]) -> Vec<Point> {
    let dir = std::env::temp_dir().join(format!("faultline-plan-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!(
        "p{:x}.toml",
        crate::plan::tests::hash(text, sweeps)
    ));
    std::fs::write(&path, text).unwrap();
    let sweeps: Vec<String> = sweeps.iter().map(|s| s.to_string()).collect();
    let points = load_points(&path, &[], &sweeps, &Costs::default()).expect("the plan loads");
    std::fs::remove_file(&path).unwrap();
    points
}

fn hash(text: &str, sweeps: &[&str]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for b in text.bytes().chain(sweeps.concat().bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    h
}

#[test]
fn simulated_ettr_matches_dalys_model_and_the_sweep_finds_dalys_interval() {
    let points = points_from(
        &daly_world(""),
        &["checkpoint.interval=20min,40min,56.7min,80min,120min"],
    );
    let report = summarise(&run_shard(&points, 0, 1, 2, &|| {}));
    for p in &report.sweep {
        let [lo, hi] = p.ettr_ci95;
        assert!(
            lo <= p.daly_ettr && p.daly_ettr <= hi,
            "interval {} min: simulated {} [{lo}, {hi}], Daly {}",
            p.checkpoint_interval_s / MIN,
            p.ettr_mean,
            p.daly_ettr
        );
        assert_eq!(p.lost_s_by_cause["detection"], 0.0);
    }
    assert!((report.daly_interval_s / MIN - 56.7).abs() < 0.05);
    assert_eq!(report.best_checkpoint_interval_s, 56.7 * MIN);
    // Daly's published T_w / T_s = 1.22 at M = 6 h.
    assert!(
        (1.0 / report.ettr_mean - 1.22).abs() < 0.005,
        "{}",
        report.ettr_mean
    );
}

/// Every feature on at once; each policy in turn.
fn busy_world(policy: &str) -> String {
    format!(
        "[cluster]\ngpus = 4096\ngpus_per_node = 8\n[plan]\nhorizon = \"20d\"\nseeds = 12\n\
         maintenance_interval = \"2d\"\nmaintenance_duration = \"30min\"\n\
         [checkpoint]\ninterval = \"20min\"\nwrite_time = \"30s\"\npersist_time = \"25min\"\n\
         [recovery]\npolicy = \"{policy}\"\nrestart_time = \"10min\"\ndetection_time = \"2min\"\n\
         spare_nodes = 3\nrepair_time = \"1d\"\nreplicas = 4\n\
         [faults.rates]\nnode_failures_per_1000_node_days = 2.0\n\
         gpu_failures_per_1000_node_days = 3.0\nsoftware_failures_per_1000_node_days = 1.0\n\
         sdc_failures_per_1000_node_days = 0.5\nswitch_failures_per_1000_node_days = 0.3\n\
         [faults.distribution]\ngpu = \"weibull\"\n[faults.weibull_shape]\ngpu = 0.7\n\
         [faults.detection]\nsdc = \"6h\"\n\
         [faults.lemon]\nnode_fraction = 0.02\nrate_multiplier = 20.0\nexclude_after = 2\n"
    )
}

#[test]
fn useful_time_and_losses_add_up_to_the_horizon_under_every_policy() {
    for policy in config::Policy::NAMES {
        let points = points_from(&busy_world(policy), &[]);
        let cfg = &points[0].config;
        for seed in 0..cfg.seeds as u64 {
            let r = run_seed(cfg, seed);
            let total = r.useful_s + r.lost.total_s();
            assert!(
                (total - cfg.horizon_s).abs() < 1e-6 * cfg.horizon_s,
                "{policy} seed {seed}: {total} != {}",
                cfg.horizon_s
            );
            assert!(
                r.lost.by_cause().iter().all(|&s| s >= 0.0),
                "{policy}: {r:?}"
            );
            assert!(r.interruptions > 0 && r.planned_interruptions > 0);
            assert_eq!(
                r.interruptions,
                r.interruptions_by_kind.iter().sum::<u64>(),
                "{policy}"
            );
            assert!(r.interruptions_by_kind[config::LEMON] > 0, "lemons fail");
        }
    }
}

#[test]
fn maintenance_alone_costs_exactly_its_windows_and_checkpoints() {
    // No failures: every 2 days a 5 s checkpoint, 30 min of maintenance and a 10 min restart;
    // a 5 s checkpoint every hour of work otherwise. Nothing is ever rolled back.
    let text = "[cluster]\ngpus = 64\n[plan]\nhorizon = \"10d\"\nseeds = 2\n\
                maintenance_interval = \"2d\"\nmaintenance_duration = \"30min\"\n\
                [checkpoint]\ninterval = \"1h\"\nwrite_time = \"5s\"\npersist_time = \"1h\"\n\
                [recovery]\nrestart_time = \"10min\"\n";
    let points = points_from(text, &[]);
    let r = run_seed(&points[0].config, 0);
    assert_eq!(
        r.planned_interruptions, 4,
        "at days 2, 4, 6 and 8 (and later, not in 10 d)"
    );
    assert_eq!(r.lost.maintenance_s, 4.0 * 40.0 * MIN);
    assert_eq!(r.lost.rework_s, 0.0);
    assert_eq!(r.interruptions, 0);
    let horizon = 10.0 * 86_400.0;
    assert!((r.useful_s + r.lost.total_s() - horizon).abs() < 1e-6);
    // About one 5 s write per hour of work.
    let writes = r.lost.checkpoint_s / 5.0;
    assert!((writes - r.useful_s / HOUR).abs() < 6.0, "{writes}");
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let points = points_from(
        &busy_world("per-replica"),
        &["checkpoint.interval=10min,30min"],
    );
    let one = run_shard(&points, 0, 1, 1, &|| {});
    let two = run_shard(&points, 0, 1, 2, &|| {});
    let five = run_shard(&points, 0, 1, 5, &|| {});
    assert_eq!(one, two);
    assert_eq!(one, five);
}

#[test]
fn merged_shards_equal_the_unsharded_run_bit_for_bit() {
    let points = points_from(
        &busy_world("in-memory"),
        &["recovery.policy=restart,hot-spare"],
    );
    let whole = run_shard(&points, 0, 1, 2, &|| {});
    // Through JSON text, as shard files travel.
    let shards: Vec<Shard> = (0..3)
        .rev()
        .map(|i| {
            let text = serde_json::to_string(&run_shard(&points, i, 3, 1, &|| {})).unwrap();
            serde_json::from_str(&text).unwrap()
        })
        .collect();
    let merged = merge(shards.clone()).expect("the shards merge");
    assert_eq!(merged.points, whole.points);
    assert_eq!(merged.holding.covered, whole.holding.covered);
    assert!(merged.missing().is_empty());
    let a = serde_json::to_string(&summarise(&merged)).unwrap();
    let b = serde_json::to_string(&summarise(&whole)).unwrap();
    assert_eq!(a, b);
    // Associative: a merged file merges again, and a shard held twice changes nothing.
    let two = merge(shards[..2].to_vec()).expect("two shards merge");
    let again = merge(vec![shards[1].clone(), two.clone(), shards[2].clone()]).unwrap();
    assert_eq!(again.points, whole.points);
    // A missing shard leaves its seeds missing: shards[2] is shard 0 of 3.
    let missing: Vec<u64> = two.missing().items().collect();
    assert_eq!(missing, super::shard_seeds(whole.seeds, 0, 3));
    // Another result for a seed already held is refused.
    let mut forged = shards[0].clone();
    forged.points[0].results[0].useful_s += 1.0;
    assert!(merge(vec![shards[0].clone(), forged]).is_err());
}

#[test]
fn a_dry_spare_pool_falls_back_to_full_restarts() {
    let text = busy_world("hot-spare").replace("spare_nodes = 3", "spare_nodes = 0");
    let dry = points_from(&text, &[]);
    let restart = points_from(&text.replace("\"hot-spare\"", "\"restart\""), &[]);
    let plenty = points_from(
        &text.replace("spare_nodes = 0", "spare_nodes = 100000"),
        &[],
    );
    for seed in 0..4 {
        let d = run_seed(&dry[0].config, seed);
        let r = run_seed(&restart[0].config, seed);
        let p = run_seed(&plenty[0].config, seed);
        // Node failures find no spare and restart; switch and software failures need none.
        assert!(d.spare_pool_dry > 0 && p.spare_pool_dry == 0);
        assert!(d.useful_s > r.useful_s - 1e-6, "hot spares never hurt");
        assert!(p.useful_s > d.useful_s, "spares help");
    }
}

#[test]
fn streams_are_common_across_sweep_points() {
    // The same seed sees the same failures whatever the checkpoint interval, as long as the
    // recovery does not absorb different failures; with zero detection none are absorbed.
    let points = points_from(&daly_world(""), &["checkpoint.interval=20min,2h"]);
    let a = run_seed(&points[0].config, 3);
    let b = run_seed(&points[1].config, 3);
    assert_eq!(a.interruptions, b.interruptions);
}

#[test]
fn weibull_arrivals_keep_the_configured_mean_rate() {
    let text = daly_world(
        "[faults.distribution]\nnode = \"weibull\"\n[faults.weibull_shape]\nnode = 0.7\n",
    )
    .replace("horizon = \"60d\"", "horizon = \"400d\"")
    .replace("seeds = 160", "seeds = 40")
    .replace("restart_time = \"10min\"", "restart_time = \"0s\"");
    let points = points_from(&text, &[]);
    let report = summarise(&run_shard(&points, 0, 1, 2, &|| {}));
    // 4 a day for 400 days.
    assert!(
        (report.interruptions_mean / 1600.0 - 1.0).abs() < 0.03,
        "{}",
        report.interruptions_mean
    );
}

#[test]
fn the_llama3_preset_lands_near_the_published_figures() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/plan-llama3-16k-54d.toml");
    let points = load_points(&path, &["plan.seeds=40".into()], &[], &Costs::default()).unwrap();
    let report = summarise(&run_shard(&points, 0, 1, 2, &|| {}));
    // 419 unexpected interruptions in 54 days on 16,384 GPUs; above 90% effective time.
    assert!(
        (report.interruptions_mean - 419.0).abs() < 419.0 * 0.05,
        "{}",
        report.interruptions_mean
    );
    assert_eq!(report.planned_interruptions_mean, 47.0);
    assert!(report.ettr_ci95[0] > 0.90, "{:?}", report.ettr_ci95);
    assert!((report.job_mtbf_s / HOUR - 3.09).abs() < 0.01);
}

#[test]
fn the_daly_preset_covers_dalys_closed_form_at_every_point() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/plan-daly-closed-form.toml");
    let points = load_points(&path, &[], &[], &Costs::default()).unwrap();
    let report = summarise(&run_shard(&points, 0, 1, 2, &|| {}));
    assert_eq!(report.sweep.len(), 7);
    for p in &report.sweep {
        assert!(
            p.ettr_ci95[0] <= p.daly_ettr && p.daly_ettr <= p.ettr_ci95[1],
            "{p:?}"
        );
    }
    assert_eq!(report.best_checkpoint_interval_s, 56.7 * MIN);
}

#[test]
fn the_100k_preset_compares_the_four_policies() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/plan-100k-30d.toml");
    let points = load_points(&path, &["plan.seeds=4".into()], &[], &Costs::default()).unwrap();
    assert_eq!(points.len(), 20);
    let report = summarise(&run_shard(&points, 0, 1, 2, &|| {}));
    let policies: std::collections::BTreeSet<&str> =
        report.sweep.iter().map(|p| p.policy.as_str()).collect();
    assert_eq!(policies.len(), 4);
    assert!(
        (report.job_mtbf_s / MIN - 30.0).abs() < 3.0,
        "{}",
        report.job_mtbf_s
    );
}

/// Each bad input, and the file position and key its error names.
#[test]
fn planner_scenario_errors_name_file_line_column_and_key() {
    let check = |text: &str, sets: &[&str], expected: &str| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let err = config::load_str("p", "p.toml", text, &sets).expect_err(text);
        assert_eq!(err.to_string(), expected);
    };
    let base = "[cluster]\ngpus = 16\n[recovery]\npolicy = \"restart\"\n";
    check(
        &base.replace("\"restart\"", "\"pray\""),
        &[],
        "p.toml:4:10: recovery.policy: unknown policy \"pray\"; expected one of \"restart\", \
         \"in-memory\", \"hot-spare\", \"per-replica\"",
    );
    check(
        &format!("{base}[checkpoint]\nintervl = \"1h\"\n"),
        &[],
        "p.toml:6:1: checkpoint.intervl: unknown field `intervl`, expected one of `interval`, \
         `write_time`, `persist_time`, `state_bytes_per_param`, `snapshot_bandwidth`, \
         `buddy_copy`; did you mean `interval`?",
    );
    check(
        &format!("{base}[checkpoint]\ninterval = \"10\"\n"),
        &[],
        "p.toml:6:12: checkpoint.interval: expected a duration such as \"500ns\", \"10us\", \
         \"5ms\", \"30s\", \"10min\", \"2h\" or \"54d\", got \"10\"",
    );
    check(
        &format!("{base}[faults.rates]\ngpu_failures_per_1000_node_days = -1.0\n"),
        &[],
        "p.toml:6:35: faults.rates.gpu_failures_per_1000_node_days: expected a rate from 0 to \
         1e4 failures per 1,000 node-days, got -1",
    );
    check(
        base,
        &["plan.horizon=soon"],
        "--set plan.horizon=soon: plan.horizon: expected a duration such as \"500ns\", \"10us\", \
         \"5ms\", \"30s\", \"10min\", \"2h\" or \"54d\", got \"soon\"",
    );
    let ok: PlanConfig = config::load_str("p", "p.toml", base, &[]).unwrap();
    assert_eq!(
        ok.faults.iter().map(|f| f.rate_per_node_s).sum::<f64>(),
        0.0
    );
}

#[test]
fn measured_costs_replace_the_scenarios_and_add_restores_to_relaunches() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/plan-llama3-16k-54d.toml");
    let costs = Costs {
        step_time_s: Some(2.0),
        checkpoint_write_time_s: Some(0.5),
        checkpoint_persist_time_s: Some(7.0),
        crash_detection_time_s: Some(35.0),
        hang_detection_time_s: Some(80.0),
        degrade_slowdown: Some(1.2),
        restore_time_s: [("restart".to_string(), 4.0), ("hot-spare".to_string(), 1.0)]
            .into_iter()
            .collect(),
    };
    let plain = &load_points(&path, &[], &[], &Costs::default()).unwrap()[0].config;
    let calibrated = &load_points(&path, &[], &[], &costs).unwrap()[0].config;
    assert_eq!(calibrated.step_time_s, 2.0);
    assert_eq!(
        (plain.fail_slow.slowdown, calibrated.fail_slow.slowdown),
        (1.34, 1.2)
    );
    assert_eq!(calibrated.checkpoint_write_time_s, 0.5);
    assert_eq!(calibrated.checkpoint_persist_time_s, 7.0);
    for (kind, (before, after)) in config::FAULT_KINDS
        .iter()
        .zip(plain.faults.iter().zip(&calibrated.faults))
    {
        if config::CRASH_KINDS.contains(kind) {
            assert_eq!(after.detection_s, 35.0, "{kind}");
        } else if *kind == "hang" {
            assert_eq!((before.detection_s, after.detection_s), (600.0, 80.0));
        } else {
            assert_eq!(after.detection_s, before.detection_s, "{kind}");
        }
    }
    let (r0, r1) = (&plain.recovery, &calibrated.recovery);
    assert_eq!(r1.restart_time_s, r0.restart_time_s + 4.0);
    assert_eq!(r1.hot_spare_time_s, r0.hot_spare_time_s + 1.0);
    assert_eq!(r1.in_memory_restore_time_s, r0.in_memory_restore_time_s);
}

/// 1,000 nodes with only `kind` failing at `rate` per 1,000 node-days.
fn only(kind: &str, rate: f64, extra: &str) -> PlanConfig {
    let text = format!(
        "[cluster]\ngpus = 8000\n[plan]\nhorizon = \"30d\"\nseeds = 4\n\
         [checkpoint]\ninterval = \"30min\"\nwrite_time = \"1min\"\n\
         [recovery]\nrestart_time = \"10min\"\n\
         [faults]\n{extra}\n[faults.rates]\n{kind}_failures_per_1000_node_days = {rate}\n"
    );
    points_from(&text, &[]).remove(0).config
}

/// A fail-slow episode stops nothing: no interruption, no rework, no detection; each costs
/// exactly `duration * (1 - 1/slowdown)` of progress (the last one perhaps cut by the
/// horizon), and the parts still add up to the horizon.
#[test]
fn a_fail_slow_episode_costs_its_slower_steps_and_nothing_else() {
    let cfg = only(
        "degrade",
        1.0,
        "degrade_slowdown = 2.0\ndegrade_duration = \"20min\"",
    );
    for seed in 0..4 {
        let r = run_seed(&cfg, seed);
        let episodes = r.interruptions_by_kind[config::DEGRADE];
        assert!(episodes > 10, "about 30 a month at this rate: {episodes}");
        assert_eq!(
            (r.interruptions, r.lost.rework_s, r.lost.detection_s),
            (0, 0.0, 0.0)
        );
        let each = 20.0 * MIN * 0.5;
        let lost = r.lost.fail_slow_s;
        assert!(
            lost <= episodes as f64 * each + 1e-6 && lost > (episodes - 1) as f64 * each,
            "{lost} s for {episodes} episodes"
        );
        let total = r.useful_s + r.lost.total_s();
        assert!((total - 30.0 * 86_400.0).abs() < 1e-3, "{total}");
    }
    // Not a failure of the job: Daly's interval and the MTTF ignore it.
    assert_eq!(cfg.job_failures_per_s(), 0.0);
}

/// A hang is detected by the watchdog's 10 minutes unless the scenario says otherwise, then
/// the job restarts from its checkpoint, as after a software failure; its failures come from
/// a stream of their own, so adding the kinds moved no other kind's failures.
#[test]
fn a_hang_waits_for_the_watchdog_then_restarts() {
    let hang = only("hang", 0.5, "");
    assert_eq!(hang.faults[config::HANG].detection_s, 600.0);
    let r = run_seed(&hang, 0);
    let hangs = r.interruptions_by_kind[config::HANG];
    assert!(hangs > 3 && r.interruptions == hangs, "{r:?}");
    // Each costs its 10 minutes of detection (unless another struck first, which absorbs).
    assert!(r.lost.detection_s <= hangs as f64 * 600.0 + 1e-6);
    assert!(r.lost.detection_s >= (hangs - 1) as f64 * 600.0, "{r:?}");
    assert!(r.lost.rework_s > 0.0 && r.lost.recovery_s > 0.0);
    let monitored = only("hang", 0.5, "detection.hang = \"70s\"");
    let m = run_seed(&monitored, 0);
    assert_eq!(m.interruptions_by_kind, r.interruptions_by_kind);
    assert!(m.lost.detection_s < r.lost.detection_s / 5.0, "{m:?}");
    // The software kind's failures are where they were before hangs existed: stream 7.
    assert_eq!(config::stream_of(7), 7);
    assert_eq!(config::stream_of(config::LEMON), 9);
    assert_eq!(config::stream_of(config::HANG), 10);
}

/// `[parallelism]` (dp derived or given) and `recovery.replica_gpus` set the per-replica
/// recovery's replica count and size, and the GPUs a failure idles; without either,
/// `recovery.replicas` does as before.
#[test]
fn the_layout_sets_the_replica_size_and_the_gpus_idled_per_failure() {
    let base = "[cluster]\ngpus = 1024\n[recovery]\npolicy = \"per-replica\"\n";
    let load = |extra: &str| config::load_str("p", "p.toml", &format!("{base}{extra}"), &[]);
    let r = load("[parallelism]\ntp = 8\npp = 4\n").unwrap().recovery;
    assert_eq!((r.replicas, r.replica_gpus), (32, 32));
    assert_eq!(r.gpus_idled_per_failure(1024), 32);
    let r = load("[parallelism]\ntp = 8\npp = 4\ndp = 32\n")
        .unwrap()
        .recovery;
    assert_eq!((r.replicas, r.replica_gpus), (32, 32));
    let r = load("replica_gpus = 128\n").unwrap().recovery;
    assert_eq!((r.replicas, r.replica_gpus), (8, 128));
    let r = load("replicas = 16\n").unwrap().recovery;
    assert_eq!((r.replicas, r.replica_gpus), (16, 64));
    // Consistent pairs are accepted.
    let r = load("replica_gpus = 32\nreplicas = 32\n[parallelism]\ntp = 8\npp = 4\n").unwrap();
    assert_eq!(r.recovery.replicas, 32);
    // Under another policy a failure idles every GPU.
    let text = format!("{base}[parallelism]\ntp = 8\npp = 4\n");
    let sets = ["recovery.policy=\"restart\"".to_string()];
    let r = config::load_str("p", "p.toml", &text, &sets)
        .unwrap()
        .recovery;
    assert_eq!(r.gpus_idled_per_failure(1024), 1024);
}

/// Replica counts and sizes that disagree, and a layout of one replica under per-replica, are
/// refused naming the file, line, column and key.
#[test]
fn inconsistent_replica_settings_are_refused_naming_the_key() {
    let base = "[cluster]\ngpus = 1024\n[recovery]\npolicy = \"per-replica\"\n";
    let check = |extra: &str, expected: &str| {
        let text = format!("{base}{extra}");
        let err = config::load_str("p", "p.toml", &text, &[]).expect_err(&text);
        assert_eq!(err.to_string(), expected);
    };
    check(
        "replicas = 16\n[parallelism]\ntp = 8\npp = 4\n",
        "p.toml:5:12: recovery.replicas: 16 replicas, but [parallelism] gives 32 replicas of 32 \
         GPUs",
    );
    check(
        "replica_gpus = 64\n[parallelism]\ntp = 8\npp = 4\n",
        "p.toml:5:16: recovery.replica_gpus: 64 GPUs a replica, but [parallelism] makes a \
         replica tp x pp = 32 GPUs",
    );
    check(
        "replica_gpus = 100\n",
        "p.toml:5:16: recovery.replica_gpus: 100 GPUs a replica do not divide cluster.gpus = 1024",
    );
    check(
        "[parallelism]\ntp = 8\npp = 4\ndp = 16\n",
        "p.toml:8:6: parallelism.dp: tp x pp x dp = 8 x 4 x 16 = 512, but cluster.gpus = 1024",
    );
    check(
        "[parallelism]\ntp = 8\npp = 128\n",
        "p.toml:7:6: parallelism.pp: per-replica recovery needs at least 2 data-parallel \
         replicas; [parallelism] gives 1 replica of all 1024 GPUs",
    );
}

/// FT-HSDP's comparison: the scenario's layout gives 768 replicas of 128 GPUs.
#[test]
fn the_ft_hsdp_scenario_derives_its_replicas_from_the_layout() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/plan-ft-hsdp-100k.toml");
    let cfg = config::load(&path, &[]).unwrap();
    assert_eq!(cfg.gpus, 98_304);
    assert_eq!(
        (cfg.recovery.replicas, cfg.recovery.replica_gpus),
        (768, 128)
    );
}
