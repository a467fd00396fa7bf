//! The `faultline` program as a user runs it: in separate processes, with its exit statuses.

use std::process::{Command, Output};

fn faultline(args: &[&str]) -> Output {
    faultline_with_env(args, &[])
}

fn faultline_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(args)
        .envs(env.iter().copied())
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

#[test]
fn run_json_has_the_documented_fields_and_is_deterministic_across_processes() {
    let args = [
        "run",
        "scenarios/quickstart.toml",
        "--seed",
        "5",
        "--set",
        "cluster.gpus=96",
        "--set",
        "job.steps=3",
        "--json",
    ];
    let a = json(&faultline(&args));
    let b = json(&faultline(&args));
    for field in [
        "scenario",
        "seed",
        "gpus",
        "steps_completed",
        "model_time_ns",
        "trace_digest",
        "param_digest",
        "final_loss",
        "wall_ms",
        "reproduce",
    ] {
        assert!(a.get(field).is_some(), "missing {field}");
    }
    assert_eq!(a["gpus"], 96);
    assert_eq!(a["steps_completed"], 3);
    assert_eq!(a["trace_digest"], b["trace_digest"]);
    assert_eq!(a["param_digest"], b["param_digest"]);
    assert!(a["reproduce"]
        .as_str()
        .unwrap()
        .contains("--seed 5 --set cluster.gpus=96"));
}

#[test]
fn collective_json_reports_exactness_and_dump_writes_rank_0() {
    let dump = std::env::temp_dir().join(format!("faultline-dump-{}.txt", std::process::id()));
    let out = faultline(&[
        "collective",
        "--algo",
        "halving-doubling",
        "--op",
        "all-reduce",
        "--gpus",
        "13",
        "--gpus-per-node",
        "4",
        "--elems",
        "5",
        "--json",
        "--dump",
        dump.to_str().unwrap(),
    ]);
    let report = json(&out);
    assert_eq!(report["exact"], true);
    assert!(report["messages"].as_u64().unwrap() > 0);
    let dumped = std::fs::read_to_string(&dump).unwrap();
    let values: Vec<f32> = dumped.lines().map(|l| l.parse().unwrap()).collect();
    // Element i sums ((r*7 + i*13) % 17) - 8 over r in 0..13.
    let expected: Vec<f32> = (0..5)
        .map(|i| (0..13).map(|r| ((r * 7 + i * 13) % 17) as f32 - 8.0).sum())
        .collect();
    assert_eq!(values, expected);
    std::fs::remove_file(dump).unwrap();
}

#[test]
fn bad_input_exits_2_naming_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("faultline-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "zero.toml",
            "[cluster]\ngpus = 0\n[job]\nsteps = 1\n",
            ":2:8: cluster.gpus: expected an integer from 1",
        ),
        (
            "per-node.toml",
            "[cluster]\ngpus = 4\ngpus_per_node = 8\n[job]\nsteps = 1\n",
            ":3:17: cluster.gpus_per_node:",
        ),
        (
            "unknown.toml",
            "[cluster]\ngpus = 4\ncolour = 1\n[job]\nsteps = 1\n",
            ":3:1: cluster.colour: unknown field `colour`",
        ),
        (
            "bandwidth.toml",
            "[cluster]\ngpus = 8\n[fabric]\nnic_bandwidth = \"-400Gb/s\"\n[job]\nsteps = 1\n",
            ":4:17: fabric.nic_bandwidth:",
        ),
        (
            "malformed.toml",
            "[cluster\ngpus = 4\n",
            ":1:9: malformed TOML",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = faultline(&["run", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("{name}{expected}")),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let out = faultline(&["run", "no/such/file.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/file.toml: cannot read"));
    let out = faultline(&[
        "run",
        "scenarios/quickstart.toml",
        "--set",
        "cluster.gpus=-3",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--set cluster.gpus=-3: cluster.gpus"));
    let out = faultline(&[
        "collective",
        "--algo",
        "ring",
        "--op",
        "all-reduce",
        "--gpus",
        "0",
        "--elems",
        "4",
    ]);
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn topo_summarises_and_draws() {
    let out = faultline(&["topo", "scenarios/quickstart.toml", "--json"]);
    let summary = json(&out);
    assert_eq!(summary["gpus"], 1024);
    assert_eq!(summary["nodes"], 128);
    assert_eq!(summary["leaf_switches"], 32);
    let dot = faultline(&[
        "topo",
        "scenarios/quickstart.toml",
        "--set",
        "cluster.gpus=16",
        "--dot",
    ]);
    let text = String::from_utf8_lossy(&dot.stdout);
    assert!(text.starts_with("graph cluster {") && text.contains("nvswitch1"));
}

/// Every benchmark case runs and checks itself, small: the planner's Monte Carlo, ten steps
/// with checkpoints, and the all-reduce beside the bare loop, with and without checksums.
#[test]
fn bench_runs_every_kind_of_case_and_checks_it() {
    for checksums in ["on", "off"] {
        let out = faultline(&[
            "bench",
            "--gpus",
            "64",
            "--cases",
            "planner,training/10-steps,all-reduce/hierarchical,bare-loop/hierarchical",
            "--executors",
            "fifo",
            "--payload-checksums",
            checksums,
            "--json",
        ]);
        let report = json(&out);
        let rows = report["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 4, "{report}");
        for row in rows {
            assert_eq!(row["ok"], true, "{row}");
            assert!(row["wall_ms"].as_f64().unwrap() > 0.0, "{row}");
        }
        let find = |case: &str| rows.iter().find(|r| r["case"] == case).expect(case);
        let planner = find("planner");
        assert_eq!(planner["model_time_ns"], 30 * 24 * 3_600 * 1_000_000_000u64);
        let bare = find("bare-loop/hierarchical");
        let all_reduce = find("all-reduce/hierarchical");
        assert_eq!(bare["messages"], all_reduce["messages"]);
        assert_eq!(bare["payload_checksums"], checksums == "on");
        assert!(all_reduce["ratio_to_bare_loop"].as_f64().unwrap() > 0.0);
    }
}

/// The pager thread (cli/src/heap.rs) faults the allocator's memory in ahead of use while the
/// simulation runs; it must change when memory arrives, never what any run computes.
#[test]
fn the_pager_changes_no_result() {
    let runs: [&[&str]; 2] = [
        &[
            "collective",
            "--algo",
            "hierarchical",
            "--op",
            "all-reduce",
            "--gpus",
            "6000",
            "--elems",
            "256",
            "--json",
        ],
        &[
            "run",
            "scenarios/quickstart.toml",
            "--set",
            "job.steps=3",
            "--json",
        ],
    ];
    for args in runs {
        let paged = json(&faultline(args));
        let unpaged = json(&faultline_with_env(args, &[("FAULTLINE_PAGER", "off")]));
        for field in ["trace_digest", "model_time_ns", "param_digest", "exact"] {
            assert_eq!(paged.get(field), unpaged.get(field), "{field} of {args:?}");
        }
        assert!(paged.get("trace_digest").is_some());
    }
    let bad = faultline_with_env(
        &["topo", "scenarios/quickstart.toml"],
        &[("FAULTLINE_PAGER", "of")],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("FAULTLINE_PAGER"));
}

/// Outputs are checked before any work: one file named by two flags, a directory, or a
/// missing directory is refused with exit 2, and nothing is written anywhere.
#[test]
fn outputs_that_would_clobber_or_cannot_be_written_are_refused_before_the_run() {
    let dir = std::env::temp_dir().join(format!("faultline-outputs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let same = dir.join("out.json").display().to_string();
    let spelt_otherwise = dir.join(".").join("out.json").display().to_string();
    let directory = dir.display().to_string();
    let missing = dir.join("missing").join("t.jsonl").display().to_string();
    let small = ["--set", "cluster.gpus=16", "--set", "job.steps=2"];
    let cases: [(&[&str], &str); 4] = [
        (
            &["--trace", &same, "--perfetto", &spelt_otherwise],
            "name the same file",
        ),
        (&["--trace", &directory], "is a directory"),
        (&["--perfetto", &missing], "directory does not exist"),
        (&["--trace", "/dev/null"], "not a regular file"),
    ];
    for (flags, says) in cases {
        let mut args = vec!["run", "scenarios/quickstart.toml"];
        args.extend(small);
        args.extend(flags);
        let output = faultline(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{flags:?}: the run did not start");
    }
    let plan = faultline(&[
        "plan",
        "scenarios/plan-daly-closed-form.toml",
        "--out",
        &same,
        "--plot",
        &same,
    ]);
    assert_eq!(plan.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&plan.stderr).contains("name the same file"));
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "nothing written: {left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every command that starts a simulation checks memory first, and a limit that does not
/// parse is refused rather than switching the check off.
#[test]
fn the_memory_guard_covers_every_command_that_simulates() {
    let dir = std::env::temp_dir().join(format!("faultline-guard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("t.jsonl").display().to_string();
    let small = ["--set", "cluster.gpus=16", "--set", "job.steps=2"];
    let mut run = vec!["run", "scenarios/quickstart.toml", "--trace", &trace];
    run.extend(small);
    assert_eq!(faultline(&run).status.code(), Some(0));
    let out = dir.join("costs.json").display().to_string();
    let shrunk = dir.join("shrunk.toml").display().to_string();
    let commands: [&[&str]; 6] = [
        &["run", "scenarios/quickstart.toml"],
        &[
            "swarm",
            "scenarios/swarm-checkpoint-restart.toml",
            "--seeds",
            "1..3",
        ],
        &[
            "shrink",
            "scenarios/swarm-checkpoint-restart.toml",
            "--seed",
            "1",
            "--out",
            &shrunk,
        ],
        &["check", "scenarios/quickstart.toml"],
        &[
            "calibrate",
            "scenarios/plan-llama3-16k-54d.toml",
            "--out",
            &out,
        ],
        &["replay", &trace],
    ];
    for command in commands {
        for (limit, says) in [
            ("1MiB", "needs about"),
            ("banana", "FAULTLINE_MEMORY_LIMIT=banana"),
        ] {
            let output = faultline_with_env(command, &[("FAULTLINE_MEMORY_LIMIT", limit)]);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(
                output.status.code(),
                Some(2),
                "{command:?} {limit}: {stderr}"
            );
            assert!(stderr.contains(says), "{command:?} {limit}: {stderr}");
        }
    }
    let left: Vec<String> = (std::fs::read_dir(&dir).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["t.jsonl"], "nothing else was written");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sizes and rates each inside their range can still make a run longer than faultline's
/// clock represents (about 13 days): the run stops there with exit 2 and says why, instead
/// of wrapping model time (which made a slower fabric finish sooner) or panicking.
#[test]
fn a_run_past_the_model_time_horizon_is_refused_not_wrapped() {
    let output = faultline(&[
        "run",
        "scenarios/quickstart.toml",
        "--set",
        "cluster.gpus=16",
        "--set",
        "job.steps=2",
        "--set",
        "fabric.nic_bandwidth=1Mb/s",
        "--set",
        "job.model_params=1e15",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("past the 13.0 days a run can represent"),
        "{stderr}"
    );
}

/// A worker count that would start millions of threads is refused at once, not tried.
#[test]
fn worker_counts_beyond_reason_are_refused() {
    let huge = u64::MAX.to_string();
    for args in [
        vec![
            "plan",
            "scenarios/plan-daly-closed-form.toml",
            "--threads",
            &huge,
        ],
        vec![
            "plan",
            "scenarios/plan-daly-closed-form.toml",
            "--threads",
            "0",
        ],
        vec![
            "swarm",
            "scenarios/swarm-checkpoint-restart.toml",
            "--jobs",
            "100000",
        ],
    ] {
        let output = faultline(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("expected 1 to 1024 threads"),
            "{args:?}: {stderr}"
        );
    }
}

/// The printed `reproduce:` line, pasted into a shell as it is (it names the program by the
/// path it was started with), runs the same scenario: the same trace and parameter digests,
/// even with a value holding spaces and quotes.
#[test]
fn the_reproduce_line_pasted_into_a_shell_reproduces_the_run() {
    let args = [
        "run",
        "scenarios/quickstart.toml",
        "--seed",
        "3",
        "--set",
        "cluster.gpus=16",
        "--set",
        "job.steps=2",
        "--set",
        "scenario.description=it's \"quoted\" & spaced",
    ];
    let first = faultline(&args);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("reproduce: "))
        .expect("a reproduce line");
    assert!(line.starts_with(env!("CARGO_BIN_EXE_faultline")), "{line}");
    let again = std::process::Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(0),
        "{line}: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    let digests = |out: &[u8]| {
        String::from_utf8_lossy(out)
            .lines()
            .find(|l| l.starts_with("param_digest:"))
            .map(String::from)
    };
    assert!(digests(&first.stdout).is_some());
    assert_eq!(digests(&again.stdout), digests(&first.stdout), "{line}");
}
