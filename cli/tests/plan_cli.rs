//! `faultline plan`, `merge` and `calibrate` as a user runs them: separate processes, files,
//! exit statuses.

use std::path::PathBuf;
use std::process::{Command, Output};

fn faultline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("faultline runs")
}

fn json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON object")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("faultline-plan-cli-{}", std::process::id()));
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    path
}

const LLAMA: &str = "scenarios/plan-llama3-16k-54d.toml";

#[test]
fn plan_json_has_the_documented_fields() {
    let out = faultline(&[
        "plan",
        LLAMA,
        "--seeds",
        "8",
        "--sweep",
        "checkpoint.interval=5min,10min,30min",
        "--json",
    ]);
    let report = json(&out);
    for field in [
        "seeds",
        "gpus",
        "horizon_s",
        "ettr_mean",
        "ettr_ci95",
        "interruptions_mean",
        "best_checkpoint_interval_s",
        "young_interval_s",
        "daly_interval_s",
        "kokolis_ettr",
        "lost_s_by_cause",
        "sweep",
    ] {
        assert!(report.get(field).is_some(), "missing {field}");
    }
    assert_eq!(report["seeds"], 8);
    assert_eq!(report["gpus"], 16384);
    assert_eq!(report["horizon_s"], 54.0 * 86_400.0);
    assert_eq!(report["ettr_ci95"].as_array().unwrap().len(), 2);
    let sweep = report["sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 3);
    let intervals: Vec<f64> = sweep
        .iter()
        .map(|p| p["checkpoint_interval_s"].as_f64().unwrap())
        .collect();
    assert_eq!(intervals, [300.0, 600.0, 1800.0]);
    assert!(sweep.iter().all(|p| p["ettr_mean"].as_f64().is_some()));
    assert!(intervals.contains(&report["best_checkpoint_interval_s"].as_f64().unwrap()));
}

#[test]
fn merged_shards_equal_the_unsharded_report() {
    let common = [
        "--seeds",
        "9",
        "--sweep",
        "recovery.policy=restart,per-replica",
    ];
    let mut whole_args = vec!["plan", LLAMA, "--json"];
    whole_args.extend(common);
    let whole = faultline(&whole_args);
    let mut shards = Vec::new();
    for i in 0..3 {
        let path = temp(&format!("shard-{i}.json"));
        let shard = format!("{i}/3");
        let mut args = vec![
            "plan",
            LLAMA,
            "--shard",
            &shard,
            "--out",
            path.to_str().unwrap(),
        ];
        args.extend(common);
        let out = faultline(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        shards.push(path);
    }
    let mut merge_args = vec!["merge", "--json"];
    merge_args.extend(shards.iter().rev().map(|p| p.to_str().unwrap()));
    let merged = faultline(&merge_args);
    assert_eq!(json(&merged), json(&whole));
    assert_eq!(merged.stdout, whole.stdout, "byte for byte");
    // Two shards of three are not the whole.
    let partial = faultline(&[
        "merge",
        shards[0].to_str().unwrap(),
        shards[1].to_str().unwrap(),
    ]);
    assert_eq!(partial.status.code(), Some(2));
    let said = String::from_utf8_lossy(&partial.stderr);
    assert!(
        said.contains("3 of 9 seeds missing: 2,5,8") && said.contains("--array=2"),
        "{said}"
    );
    // Forged shards are refused with exit 2, never a panic (exit 70): a split of 2^64 - 1
    // or of none, seeds beyond the plan's, a shard with no points, a seed whose counts by
    // kind are short.
    type Forge = fn(&mut serde_json::Value);
    let forgeries: [(&str, Forge); 6] = [
        ("its split, or the seeds", |v| {
            v["holding"]["split"]["count"] = serde_json::json!(u64::MAX)
        }),
        ("its split, or the seeds", |v| {
            v["holding"]["split"]["count"] = serde_json::json!(0)
        }),
        ("it says it covers", |v| {
            v["holding"]["covered"] = serde_json::json!([[0, 1000]])
        }),
        ("it says it covers", |v| {
            v["holding"]["covered"] = serde_json::json!([[0, 1]])
        }),
        ("has no points", |v| v["points"] = serde_json::json!([])),
        ("counts by kind", |v| {
            v["points"][0]["results"][0]["interruptions_by_kind"] = serde_json::json!([1])
        }),
    ];
    for (says, forge) in forgeries {
        // Every shard of the split forged alike, so that they still agree with each other.
        let mut args = vec!["merge".to_string()];
        for (i, shard) in shards.iter().enumerate() {
            let mut bad: serde_json::Value =
                serde_json::from_slice(&std::fs::read(shard).unwrap()).unwrap();
            forge(&mut bad);
            let forged = temp(&format!("shard-forged-{i}.json"));
            std::fs::write(&forged, bad.to_string()).unwrap();
            args.push(forged.to_str().unwrap().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = faultline(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{says}: {stderr}");
        assert!(stderr.contains(says), "{says}: {stderr}");
    }
    let out = faultline(&[
        "plan",
        LLAMA,
        "--shard",
        "0/18446744073709551615",
        "--out",
        "x.json",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn results_are_equal_for_one_and_two_threads() {
    let run = |threads: &str| {
        faultline(&[
            "plan",
            LLAMA,
            "--seeds",
            "6",
            "--threads",
            threads,
            "--json",
        ])
        .stdout
    };
    assert_eq!(run("1"), run("2"));
}

#[test]
fn plan_writes_the_report_and_an_svg_plot_atomically() {
    // A folder of its own: other tests write (atomically, through temporary names) beside it.
    let out_path = temp("atomic/report.json");
    let plot_path = temp("atomic/plot.svg");
    let out = faultline(&[
        "plan",
        "scenarios/plan-100k-30d.toml",
        "--seeds",
        "2",
        "--out",
        out_path.to_str().unwrap(),
        "--plot",
        plot_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let program = env!("CARGO_BIN_EXE_faultline");
    let reproduce = format!("reproduce: {program} plan scenarios/plan-100k-30d.toml --seeds 2");
    assert!(stdout.contains(&reproduce), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    assert_eq!(report["sweep"].as_array().unwrap().len(), 20);
    let svg = std::fs::read_to_string(&plot_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("per-replica") && svg.contains("restart"));
    let leftovers: Vec<_> = std::fs::read_dir(plot_path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn bad_planner_input_exits_2_naming_file_line_and_key() {
    let path = temp("bad.toml");
    std::fs::write(
        &path,
        "[cluster]\ngpus = 64\n[checkpoint]\ninterval = \"often\"\n",
    )
    .unwrap();
    let out = faultline(&["plan", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:4:12: checkpoint.interval: expected a duration"),
        "{stderr}"
    );
    let out = faultline(&["plan", LLAMA, "--sweep", "checkpoint.interval"]);
    assert_eq!(out.status.code(), Some(2));
    let out = faultline(&["plan", LLAMA, "--shard", "3/3", "--out", "x.json"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn calibrate_measures_the_step_time_and_says_what_it_did_not_measure() {
    let costs = temp("costs.json");
    let out = faultline(&[
        "calibrate",
        LLAMA,
        "--set",
        "cluster.gpus=16",
        "--steps",
        "2",
        "--out",
        costs.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&costs).unwrap()).unwrap();
    assert_eq!(file["format"], "faultline-costs/2");
    assert_eq!(file["gpus"], 16);
    assert_eq!(file["steps_run"], 2);
    let step = file["measured"]["step_time_s"].as_f64().unwrap();
    assert!(step > 0.0 && step < 60.0, "{step}");
    // What the simulator measures is no longer listed as unmeasured.
    for key in [
        "checkpoint.write_time",
        "checkpoint.persist_time",
        "recovery.detection_time",
        "recovery.restart_time",
    ] {
        assert!(file["not_measured"].get(key).is_none(), "{key}");
    }
    // Per-replica recovery is not simulated; the restart time is an input, said so.
    for key in [
        "recovery.per_replica_stall_time",
        "recovery.replica_rejoin_time",
    ] {
        assert!(file["not_measured"].get(key).is_some(), "{key}");
    }
    let restart = file["inputs"]["recovery.restart_time"].as_str().unwrap();
    assert!(restart.contains("an input, not a measurement"), "{restart}");
    // Only the scenario's policy ran a crash (restart): the others say how to measure them.
    assert!(file["not_measured"]
        .get("restore_time_s.in-memory")
        .is_some());
    // The steady run, the restart crash run, the two hang runs and the degrade run.
    let runs = file["runs"].as_array().unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "steady",
            "crash-restart",
            "hang-watchdog",
            "hang-progress-monitor",
            "degrade"
        ]
    );
    // A hang: the watchdog alone takes its timeout (10 min, checked every minute), the monitor
    // its own (1 min when the scenario sets none, said as an input); the file runs no monitor,
    // so the planner's hang detection is the watchdog's.
    let m = |key: &str| file["measured"][key].as_f64().unwrap();
    let (watchdog, monitor) = (
        m("hang_detection_time_s.watchdog"),
        m("hang_detection_time_s.progress_monitor"),
    );
    assert!((600.0..=661.0).contains(&watchdog), "{watchdog}");
    assert!((60.0..=67.0).contains(&monitor), "{monitor}");
    assert_eq!(m("hang_detection_time_s"), watchdog);
    assert_eq!(runs[2]["faults_detected"]["watchdog"], 1);
    assert_eq!(runs[3]["faults_detected"]["progress_monitor"], 1);
    assert_eq!(runs[3]["faults_injected"]["hang"], 1);
    let timeout = file["inputs"]["recovery.progress_timeout"]
        .as_str()
        .unwrap();
    assert!(timeout.starts_with("1min"), "{timeout}");
    // The last GPU's NIC at half its bandwidth slows the step, and nothing else happens.
    let slowdown = m("degrade_slowdown");
    let step = |r: &serde_json::Value| r["model_time_s"].as_f64().unwrap();
    assert!(slowdown > 1.0 && slowdown < 2.0, "{slowdown}");
    assert!((step(&runs[4]) / step(&runs[0]) - slowdown).abs() < 1e-9);
    assert_eq!(runs[4]["recoveries"], 0);
    // The same inputs give the same cost file, byte for byte.
    let again = temp("costs-again.json");
    let out = faultline(&[
        "calibrate",
        LLAMA,
        "--set",
        "cluster.gpus=16",
        "--steps",
        "2",
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read(&costs).unwrap(),
        std::fs::read(&again).unwrap()
    );
    // plan --costs rounds the checkpoint interval up to whole steps.
    let report = json(&faultline(&[
        "plan",
        LLAMA,
        "--seeds",
        "2",
        "--set",
        "checkpoint.interval=1s",
        "--costs",
        costs.to_str().unwrap(),
        "--json",
    ]));
    let interval = report["best_checkpoint_interval_s"].as_f64().unwrap();
    assert!(interval >= 1.0, "{interval}");
    // A forged or foreign cost file is refused with exit 2, never planned with.
    let forged = temp("costs-forged.json");
    for (path, value, says) in [
        (
            "/measured/step_time_s",
            serde_json::json!(-1.0),
            "step_time_s",
        ),
        (
            "/measured/detection_time_s",
            serde_json::json!(1e30),
            "detection_time_s",
        ),
        ("/format", serde_json::json!("faultline-costs/1"), "format"),
    ] {
        let mut bad = file.clone();
        *bad.pointer_mut(path).unwrap() = value;
        std::fs::write(&forged, bad.to_string()).unwrap();
        let out = faultline(&[
            "plan",
            LLAMA,
            "--seeds",
            "2",
            "--costs",
            forged.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path}: {stderr}");
        assert!(stderr.contains(says), "{path}: {stderr}");
    }
}

#[test]
fn calibrate_measures_checkpoint_restore_and_detection_consistently_with_the_scenario() {
    let costs = temp("costs-all.json");
    let out = faultline(&[
        "calibrate",
        LLAMA,
        "--set",
        "cluster.gpus=32",
        "--set",
        "recovery.heartbeat_interval=5s",
        "--set",
        "recovery.heartbeat_misses=2",
        "--set",
        "checkpoint.snapshot_bandwidth=10GB/s",
        "--steps",
        "2",
        "--all-policies",
        "--out",
        costs.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&costs).unwrap()).unwrap();
    let m = |key: &str| {
        file["measured"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("measured {key}"))
    };
    // The blocking snapshot: each rank copies its share of 8e9 parameters x 16 bytes of
    // state at 10 GB/s, so 128 GB / 32 ranks / 10 GB/s = 0.4 s.
    let write = m("checkpoint_write_time_s");
    assert!((write - 0.4).abs() < 0.01, "{write}");
    // The persist: each node sends 32 GB at 10 GB/s to the store, then the next step's votes
    // commit it; a few seconds, at least the transfer.
    let persist = m("checkpoint_persist_time_s");
    assert!((3.2..30.0).contains(&persist), "{persist}");
    // Heartbeats every 5 s, 2 misses: found 10 to 15 s after the crash.
    for key in [
        "detection_time_s",
        "detection_time_s.in-memory",
        "detection_time_s.hot-spare",
    ] {
        let detection = m(key);
        assert!((10.0..=15.0).contains(&detection), "{key}: {detection}");
    }
    // Restores: from the persistent store (4 nodes x 32 GB through 10 GB/s clients) for
    // restart, from host memory or the buddy's for the others, which is faster.
    let restart = m("restore_time_s.restart");
    let in_memory = m("restore_time_s.in-memory");
    let hot_spare = m("restore_time_s.hot-spare");
    assert!(restart >= 3.2, "{restart}");
    assert!(
        in_memory > 0.0 && in_memory < restart,
        "{in_memory} {restart}"
    );
    assert!(
        hot_spare > 0.0 && hot_spare < restart,
        "{hot_spare} {restart}"
    );
    assert!(m("recomputed_s.restart") > 0.0);
    assert!(file["not_measured"]
        .get("restore_time_s.in-memory")
        .is_none());
    let runs = file["runs"].as_array().unwrap();
    assert_eq!(
        runs.len(),
        7,
        "steady, three crash runs, two hang runs, a degrade run"
    );
    for run in &runs[1..4] {
        assert_eq!(run["recoveries"], 1, "{run}");
        assert_eq!(run["faults_injected"]["node_crash"], 1, "{run}");
        assert_eq!(run["faults_detected"]["heartbeat"], 1, "{run}");
        assert!(run["checkpoints_committed"].as_u64().unwrap() >= 1, "{run}");
        assert_eq!(run["replicas_agree"], true, "{run}");
    }
    assert_eq!(runs[1]["restores_by_tier"]["persistent"], 32);
    assert_eq!(runs[2]["policy"], "in-memory");
    assert!(runs[2]["restores_by_tier"].get("persistent").is_none());

    // plan --costs uses them: a checkpoint write of 0.4 s and a measured detection replace the
    // scenario's 5 s and 1 min, so the calibrated plan loses less to both.
    let plan = |costs_arg: Option<&str>| {
        let mut args = vec!["plan", LLAMA, "--seeds", "4", "--json"];
        if let Some(path) = costs_arg {
            args.extend(["--costs", path]);
        }
        json(&faultline(&args))
    };
    let plain = plan(None);
    let calibrated = plan(Some(costs.to_str().unwrap()));
    let lost = |r: &serde_json::Value, cause: &str| r["lost_s_by_cause"][cause].as_f64().unwrap();
    assert!(lost(&calibrated, "checkpoint") < lost(&plain, "checkpoint"));
    assert!(lost(&calibrated, "detection") < lost(&plain, "detection"));
}
