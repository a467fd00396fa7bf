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
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
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
    let out_path = temp("report.json");
    let plot_path = temp("plot.svg");
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
    assert!(stdout.contains("reproduce: faultline plan scenarios/plan-100k-30d.toml --seeds 2"));
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
    assert_eq!(file["gpus"], 16);
    assert_eq!(file["steps_run"], 2);
    let step = file["measured"]["step_time_s"].as_f64().unwrap();
    assert!(step > 0.0 && step < 60.0, "{step}");
    for key in [
        "checkpoint.write_time",
        "recovery.restart_time",
        "recovery.detection_time",
    ] {
        assert!(file["not_measured"].get(key).is_some(), "{key}");
    }
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
}
