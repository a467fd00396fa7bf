//! What a newcomer sees first: `faultline` alone runs scenarios/first-run.toml, tells what
//! broke, who caught it and what recovery did, compares with the fault-free run and says
//! what to try next; and every fault a run injects has a marker in its timeline.

use std::process::Command;

fn faultline(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("faultline runs")
}

/// The first run's whole output but its wall time, which no digest covers.
#[test]
fn the_first_run_tells_a_story_of_faults_detections_recoveries_and_the_fault_free_run() {
    let out = faultline(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for needed in [
        "link_flap strikes",
        "sdc_in_flight strikes",
        "fails its checksum and is resent",
        "node_crash strikes node 5",
        "detected by heartbeat",
        "restores the checkpoint of step 4",
        "1 lost in flight",
        "fault-free run:",
        "the same final parameters",
        "try next:",
    ] {
        assert!(text.contains(needed), "no {needed:?} in:\n{text}");
    }
    // The reproduce line names the program by its path, which is this machine's.
    let text = text.replace(env!("CARGO_BIN_EXE_faultline"), "faultline");
    let stable: Vec<&str> = text.lines().filter(|l| !l.starts_with("wall:")).collect();
    insta::assert_snapshot!(stable.join("\n"));
}

/// `--quiet` keeps the counters and drops the story; the JSON report has no story in it.
#[test]
fn quiet_drops_the_story_and_json_is_unchanged_by_it() {
    let quiet = faultline(&["run", "scenarios/sdc-in-flight.toml", "--quiet"]);
    let text = String::from_utf8(quiet.stdout).unwrap();
    assert!(!text.contains("what happened"), "{text}");
    assert!(text.contains("faults injected"), "{text}");
    let json = faultline(&["run", "scenarios/sdc-in-flight.toml", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(report.get("story").is_none());
}

/// Every injected fault has an instant on the timeline's faults track, named after its kind:
/// a flap, a corruption in flight and a crash; a straggler.
#[test]
fn every_injected_fault_has_a_marker_on_the_timeline() {
    markers_match_faults(&[
        "scenarios/first-run.toml",
        "scenarios/straggler-thermal-throttle.toml",
    ]);
}

/// The same for mixed-faults-10k's 13 faults of eight kinds: about 3.5 min in a test build and
/// 13 s in a release one, so .ci/run runs it with `cargo test --release -p faultline-cli
/// --test first_run -- --ignored`.
#[test]
#[ignore]
fn every_fault_of_mixed_faults_10k_has_a_marker_on_the_timeline() {
    markers_match_faults(&["scenarios/mixed-faults-10k.toml"]);
}

fn markers_match_faults(scenarios: &[&str]) {
    let dir = std::env::temp_dir().join(format!(
        "faultline-markers-{}-{}",
        std::process::id(),
        scenarios.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let timeline = dir.join("t.json");
    for &scenario in scenarios {
        let args = [
            "run",
            scenario,
            "--json",
            "--perfetto",
            timeline.to_str().unwrap(),
        ];
        let out = faultline(&args);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let injected = report["faults"]["injected"].as_object().unwrap();
        let trace: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&timeline).unwrap()).unwrap();
        let names: Vec<String> = trace["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "i" || e["ph"] == "I")
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect();
        for (kind, count) in injected {
            let marked = names
                .iter()
                .filter(|n| n.starts_with(&format!("{kind}:")))
                .count();
            assert_eq!(
                marked as u64,
                count.as_u64().unwrap(),
                "{scenario}: {kind}: {names:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `command` (a shell line) under a pseudo-terminal, through util-linux's `script`, and
/// returns what the terminal showed.
fn on_a_terminal(command: &str) -> String {
    let out = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .env("FAULTLINE_PROGRESS_AFTER_MS", "0")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("util-linux's script runs (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// On a terminal a run shows its steps, model time and faults as it goes; the progress goes
/// to standard error only, so the JSON report is byte for byte what it is off a terminal (but
/// for the wall time), and off a terminal nothing is drawn.
#[test]
fn a_run_on_a_terminal_shows_progress_and_leaves_the_json_unchanged() {
    let bin = env!("CARGO_BIN_EXE_faultline");
    let shown = on_a_terminal(&format!("{bin} run scenarios/first-run.toml --quiet"));
    assert!(
        shown.contains("step 16/16") || shown.contains("step 15/16"),
        "{shown}"
    );
    assert!(shown.contains("model time, 3 faults"), "{shown}");

    let dir = std::env::temp_dir().join(format!("faultline-progress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let drawn = on_a_terminal(&format!(
        "{bin} run scenarios/first-run.toml --json > {}",
        json.display()
    ));
    assert!(
        drawn.contains("step "),
        "no progress on the terminal: {drawn}"
    );
    let without_wall = |text: &str| {
        let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
        v.as_object_mut().unwrap().remove("wall_ms");
        v
    };
    let off_terminal = faultline(&["run", "scenarios/first-run.toml", "--json"]);
    assert!(off_terminal.stderr.is_empty(), "drawn off a terminal");
    assert_eq!(
        without_wall(&std::fs::read_to_string(&json).unwrap()),
        without_wall(&String::from_utf8(off_terminal.stdout).unwrap())
    );
    let _ = std::fs::remove_dir_all(&dir);
}
