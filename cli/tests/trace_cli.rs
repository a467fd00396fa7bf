//! `run --trace`, `replay`, `check` and `run --perfetto` as a user runs them, in separate
//! processes: what the files hold, and the exit statuses when a run is the same, differs, or
//! the input is broken.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn faultline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("faultline runs")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("faultline-trace-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A small crash-and-restart run: 16 GPUs, node 1 dies after the first checkpoint commits, 20 steps.
const SMALL_CRASH: [&str; 6] = [
    "--set",
    "cluster.gpus=16",
    "--set",
    "job.steps=20",
    "--set",
    "faults.crash=[{node = 1, after_commits = 1}]",
];

fn run_with_trace(dir: &Path, extra: &[&str]) -> (PathBuf, serde_json::Value) {
    let trace = dir.join("run.jsonl");
    let mut args = vec![
        "run",
        "scenarios/node-crash-mid-checkpoint.toml",
        "--seed",
        "7",
        "--json",
        "--trace",
        trace.to_str().unwrap(),
    ];
    args.extend_from_slice(&SMALL_CRASH);
    args.extend_from_slice(extra);
    let out = faultline(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    (trace, serde_json::from_slice(&out.stdout).unwrap())
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn trace_header_records_the_run_and_footer_its_digests() {
    let dir = scratch("header");
    let (trace, report) = run_with_trace(&dir, &[]);
    let records = lines(&trace);
    let header = &records[0];
    let text =
        std::fs::read_to_string(root().join("scenarios/node-crash-mid-checkpoint.toml")).unwrap();
    assert_eq!(header["faultline_trace"], 1);
    assert_eq!(header["scenario_toml"], text.as_str());
    assert_eq!(header["seed"], 7);
    assert_eq!(header["executor"], report["executor"]);
    assert_eq!(header["level"], "events", "16 GPUs trace every event");
    assert_eq!(header["overrides"].as_array().unwrap().len(), 3);
    let footer = records.last().unwrap();
    assert_eq!(footer["trace_digest"], report["trace_digest"]);
    assert_eq!(footer["param_digest"], report["param_digest"]);
    assert_eq!(footer["records"], records.len() as u64 - 2);
    // Records are in model-time order, start with t_ns, rank, kind, and hold the crash story.
    let body = &records[1..records.len() - 1];
    let times: Vec<u64> = body.iter().map(|r| r["t_ns"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    let raw = std::fs::read_to_string(&trace).unwrap();
    assert!(raw.lines().nth(1).unwrap().starts_with("{\"t_ns\":"));
    let kinds: Vec<&str> = body.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    for kind in [
        "crash", "detected", "abort", "restart", "restored", "compute", "step_end",
    ] {
        assert!(kinds.contains(&kind), "no {kind} record");
    }
    let crash = body.iter().find(|r| r["kind"] == "crash").unwrap();
    assert_eq!(
        (crash["node"].as_u64(), crash["rank"].as_u64()),
        (Some(1), Some(8))
    );
    // No temporary file is left beside the trace.
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(names.len(), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn summary_level_keeps_control_events_and_rank_0_only() {
    let dir = scratch("summary");
    let (trace, _) = run_with_trace(&dir, &["--trace-level", "summary"]);
    let records = lines(&trace);
    let body = &records[1..records.len() - 1];
    assert!(body.iter().any(|r| r["kind"] == "crash"));
    assert!(body.iter().any(|r| r["kind"] == "step_end"));
    for record in body {
        assert!(
            record["rank"].is_null()
                || record["rank"] == 0
                || record["kind"] == "crash"
                || record["kind"] == "detected",
            "{record}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn replay_matches_and_a_tampered_footer_is_a_mismatch() {
    let dir = scratch("replay");
    let (trace, _) = run_with_trace(&dir, &["--trace-level", "messages"]);
    let out = faultline(&["replay", trace.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("records match"));

    let text = std::fs::read_to_string(&trace).unwrap();
    let footer = text.lines().last().unwrap();
    let value: serde_json::Value = serde_json::from_str(footer).unwrap();
    let digest = value["trace_digest"].as_str().unwrap();
    let tampered_digest: String = digest.chars().rev().collect();
    assert_ne!(digest, tampered_digest);
    let tampered = dir.join("tampered.jsonl");
    std::fs::write(&tampered, text.replace(digest, &tampered_digest)).unwrap();
    let out = faultline(&["replay", tampered.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = text.lines().count();
    assert!(stdout(&out).contains(&format!("MISMATCH at line {lines}")));
    assert!(stdout(&out).contains(&format!("replayed: {footer}")));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn check_passes_and_catches_a_perturbed_compute_naming_it() {
    let mut args = vec![
        "check",
        "scenarios/node-crash-mid-checkpoint.toml",
        "--seed",
        "3",
    ];
    args.extend_from_slice(&SMALL_CRASH);
    let out = faultline(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("identical traces"));

    // Compute call 40 of the second run lasts 1 ns longer: the traces must part exactly there.
    args.extend_from_slice(&["--perturb-second", "40"]);
    let out = faultline(&args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(text.contains("DIVERGE at trace line"), "{text}");
    let first = text.lines().find(|l| l.contains("first run:")).unwrap();
    let second = text.lines().find(|l| l.contains("second run:")).unwrap();
    let parse = |line: &str| -> serde_json::Value {
        serde_json::from_str(line.split_once(": ").unwrap().1.trim()).unwrap()
    };
    let (a, b) = (parse(first), parse(second));
    assert_eq!(a["kind"], "compute");
    assert_eq!(a["t_ns"], b["t_ns"]);
    assert_eq!(
        b["duration_ns"].as_u64().unwrap(),
        a["duration_ns"].as_u64().unwrap() + 1
    );
}

#[test]
fn check_passes_for_every_ci_scenario() {
    for entry in std::fs::read_dir(root().join("scenarios")).unwrap() {
        let path = entry.unwrap().path();
        // scenarios/anchors/ holds planner files: `faultline validate`'s.
        if path.is_dir() {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table = text.parse().unwrap();
        let ci = table
            .get("scenario")
            .and_then(|s| s.get("ci"))
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        if table.contains_key("plan") || !ci {
            continue;
        }
        let name = format!("scenarios/{}", path.file_name().unwrap().to_string_lossy());
        let out = faultline(&["check", &name]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
}

#[test]
fn perfetto_timeline_of_a_crash_has_tracks_and_spans_of_every_kind() {
    let dir = scratch("perfetto");
    let path = dir.join("timeline.json");
    let out = faultline(&[
        "run",
        "scenarios/node-crash-mid-checkpoint.toml",
        "--json",
        "--perfetto",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let model_time_us = report["model_time_ns"].as_f64().unwrap() / 1e3;
    let timeline: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let events = timeline["traceEvents"].as_array().unwrap();
    let rank_tracks = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name" && e["pid"] == 1)
        .count();
    assert_eq!(rank_tracks, 64, "one track per rank at 64 GPUs");
    let spans: Vec<&serde_json::Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    let of = |cat: &'static str| spans.iter().filter(move |e| e["cat"] == cat);
    for cat in [
        "step",
        "compute",
        "collective",
        "checkpoint",
        "restore",
        "fault",
        "recovery",
    ] {
        assert!(of(cat).count() > 0, "no {cat} span");
    }
    for span in &spans {
        let (ts, dur) = (span["ts"].as_f64().unwrap(), span["dur"].as_f64().unwrap());
        assert!(dur >= 0.0 && ts + dur <= model_time_us + 1e-3, "{span}");
    }
    // The crash of node 3 stays undetected until the heartbeat notices it; the job stands
    // still for the restart time (2 min); every rank then restores, ending where its first
    // step after the restart begins.
    let fault = of("fault").next().unwrap();
    assert!(fault["name"].as_str().unwrap().contains("node 3"));
    assert_eq!(fault["args"]["detected_by"], "heartbeat");
    let recovery = of("recovery").next().unwrap();
    assert_eq!(recovery["dur"].as_f64().unwrap(), 120e6);
    let restart_us = recovery["ts"].as_f64().unwrap() + 120e6;
    let restores: Vec<_> = of("restore").collect();
    assert_eq!(restores.len(), 64);
    assert!(restores
        .iter()
        .all(|r| r["ts"].as_f64().unwrap() == restart_us));
    // Rank 24 (node 3) was cut off by the crash, mid step.
    assert!(of("step").any(|s| s["tid"] == 24 && s["args"]["cut"] == "crashed"));
    std::fs::remove_dir_all(dir).unwrap();
}
