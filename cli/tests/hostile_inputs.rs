//! Hostile inputs of issue 21 that reach the program as a user would give them: look-alike
//! shard files, `-` for an output, a scenario on a pipe, odd benchmark sizes, absurd `--set`
//! keys, seeds a scenario file cannot hold. Each is refused with exit 2 and a message, or works.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn faultline_in(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("faultline starts");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("a pipe");
        pipe.write_all(text.as_bytes())
            .expect("the scenario goes in");
    }
    child.wait_with_output().expect("faultline runs")
}

fn faultline(args: &[&str]) -> Output {
    faultline_in(&root(), args, None)
}

/// A folder of this test's own, empty.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("faultline-hostile-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_refused(output: &Output, says: &str) {
    let stderr = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(says), "expected {says:?} in: {stderr}");
    assert!(!stderr.contains("internal error"), "{stderr}");
}

/// A planner scenario small enough for a debug build: 2 nodes, 2 days, 2 seeds.
fn tiny_plan(persist_time: &str) -> String {
    format!(
        "[cluster]\ngpus = 16\ngpus_per_node = 8\n\
         [plan]\nhorizon = \"2d\"\nseeds = 2\nseed = 1\n\
         [checkpoint]\ninterval = \"10min\"\nwrite_time = \"5s\"\npersist_time = \"{persist_time}\"\n\
         [recovery]\npolicy = \"restart\"\nrestart_time = \"5min\"\ndetection_time = \"1min\"\n\
         [faults.rates]\ngpu_failures_per_1000_node_days = 50.0\n"
    )
}

/// Two files of one name and different content, planned as the two halves of a split, would
/// merge into a report of neither; so would one file planned with different `--set`s.
#[test]
fn merge_refuses_shards_of_different_scenario_content_under_one_name() {
    let dir = scratch("shards");
    for (sub, persist) in [("a", "1min"), ("b", "7min")] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::write(dir.join(sub).join("plan.toml"), tiny_plan(persist)).unwrap();
    }
    let shard = |file: &str, i: &str, out: &str, extra: &[&str]| {
        let mut args = vec!["plan", file, "--shard", i, "--out", out];
        args.extend(extra);
        let output = faultline_in(&dir, &args, None);
        assert!(output.status.success(), "{}", stderr(&output));
    };
    shard("a/plan.toml", "0/2", "a0.json", &[]);
    shard("b/plan.toml", "1/2", "b1.json", &[]);
    let merged = faultline_in(&dir, &["merge", "a0.json", "b1.json"], None);
    assert_refused(&merged, "the scenario content differs");
    assert!(stderr(&merged).contains("shard 0/2 and shard 1/2"));
    shard(
        "a/plan.toml",
        "1/2",
        "a1.json",
        &["--set", "checkpoint.persist_time=2min"],
    );
    let merged = faultline_in(&dir, &["merge", "a0.json", "a1.json"], None);
    assert_refused(&merged, "the scenario content differs");
    // The same file and settings still merge.
    shard("a/plan.toml", "1/2", "a1.json", &[]);
    let merged = faultline_in(&dir, &["merge", "a0.json", "a1.json"], None);
    assert!(merged.status.success(), "{}", stderr(&merged));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A scenario given on a pipe can be read only once: the run and its trace's header must use
/// the same reading, or the trace records an empty scenario that cannot be replayed.
#[test]
fn a_run_of_a_piped_scenario_writes_a_trace_that_replays() {
    let dir = scratch("stdin");
    let text = std::fs::read_to_string(root().join("scenarios/quickstart.toml")).unwrap();
    let trace = dir.join("t.jsonl");
    let trace_arg = trace.to_str().unwrap();
    let args = [
        "run",
        "/dev/stdin",
        "--set",
        "cluster.gpus=16",
        "--set",
        "job.steps=2",
        "--trace",
        trace_arg,
    ];
    let run = faultline_in(&root(), &args, Some(&text));
    assert!(run.status.success(), "{}", stderr(&run));
    let replay = faultline(&["replay", trace_arg]);
    assert!(
        replay.status.success(),
        "{}{}",
        String::from_utf8_lossy(&replay.stdout),
        stderr(&replay)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Each dotted part of a `--set` key is a level of tables: 64,000 of them overflowed the stack
/// (an abort, not even the internal-error exit). A key deeper or longer than any real one is
/// refused, named by its start.
#[test]
fn a_set_key_deeper_than_any_scenario_key_is_refused() {
    let deep = format!("{}=1", vec!["a"; 64_000].join("."));
    for command in ["run", "plan"] {
        let scenario = if command == "run" {
            "scenarios/quickstart.toml"
        } else {
            "scenarios/plan-100k-30d.toml"
        };
        let out = faultline(&[command, scenario, "--set", &deep]);
        assert_refused(&out, "a key of 64000 dotted parts");
        assert!(stderr(&out).contains("--set: a.a.a."), "{}", stderr(&out));
        assert!(stderr(&out).len() < 1_000, "the key is abridged");
    }
    let long = format!("job.{}=1", "s".repeat(300));
    assert_refused(
        &faultline(&["run", "--set", &long]),
        "no scenario key has more",
    );
    // Real keys still work: 16 parts is the bound, and the deepest real ones have four.
    let out = faultline(&[
        "run",
        "scenarios/quickstart.toml",
        "--set",
        "cluster.gpus=16",
        "--set",
        "job.steps=1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A scenario file's run.seed is a TOML integer, so a seed above i64::MAX could be run but
/// never written down: the swarm's seed files and shrink's scenario wrapped it to a negative
/// seed that did not load (a panic). Every seed flag takes 0 to i64::MAX; the largest works.
#[test]
fn seeds_above_what_a_scenario_file_holds_are_refused_by_every_command() {
    let swarm = "scenarios/swarm-checkpoint-restart.toml";
    let above = "9223372036854775808";
    for args in [
        vec!["run", "--seed", above],
        vec!["check", "scenarios/quickstart.toml", "--seed", above],
        vec!["shrink", swarm, "--seed", "18446744073709551615"],
        vec![
            "collective",
            "--algo",
            "ring",
            "--op",
            "all-reduce",
            "--gpus",
            "8",
        ],
        vec![
            "swarm",
            swarm,
            "--seeds",
            "9223372036854775807..=9223372036854775808",
        ],
        vec![
            "swarm",
            swarm,
            "--seeds",
            "18446744073709551614..18446744073709551615",
        ],
    ] {
        let mut args = args;
        if args[0] == "collective" {
            args.extend(["--elems", "4", "--seed", above]);
        }
        let out = faultline(&args);
        assert_refused(&out, "9223372036854775807");
    }
    // The largest seed runs, and its trace replays.
    let dir = scratch("seeds");
    let trace = dir.join("t.jsonl");
    let trace = trace.to_str().unwrap();
    let largest = "9223372036854775807";
    let run = faultline(&[
        "run",
        "scenarios/quickstart.toml",
        "--seed",
        largest,
        "--set",
        "cluster.gpus=16",
        "--set",
        "job.steps=1",
        "--trace",
        trace,
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(faultline(&["replay", trace]).status.success());
    let out = faultline(&["swarm", swarm, "--seeds", &format!("{largest}..={largest}")]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `bench --gpus 12` ran the bare loop, which handles full nodes only, in a child that
/// panicked, and the parent exited 0 over the hole in its table. Sizes a case cannot run are
/// refused before any child starts, the child refuses them too, and a child that fails makes
/// the parent fail, naming the case.
#[test]
fn bench_refuses_sizes_its_cases_cannot_run_and_fails_when_a_child_fails() {
    let out = faultline(&["bench", "--gpus", "12"]);
    assert_refused(
        &out,
        "bare-loop/hierarchical moves messages between full nodes of 8",
    );
    let out = faultline(&["bench", "--gpus", "4", "--cases", "planner"]);
    assert_refused(&out, "planner runs nodes of 8 GPUs");
    let out = faultline(&["bench-case", "bare-loop/hierarchical", "--gpus", "12"]);
    assert_refused(&out, "multiple of 8");
    // A child refusing its case (here: no memory to run it in) fails the whole bench.
    let out = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["bench", "--gpus", "8", "--cases", "all-reduce/tree"])
        .args(["--executors", "fifo", "--json"])
        .env("FAULTLINE_MEMORY_LIMIT", "1KiB")
        .output()
        .expect("faultline runs");
    assert_refused(&out, "1 case(s) failed in their child process");
    assert!(stderr(&out).contains("all-reduce/tree at 8 GPUs on fifo"));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the rows");
    assert_eq!(report["rows"][0]["failed"], true, "{report}");
}

/// `-` names standard output for an output that is a command's product, so it can be piped
/// on: the summary for people moves to standard error, and no file named `-` appears. Where
/// standard output already carries a `--json` report, or another output took it, `-` is
/// refused before any work.
#[test]
fn a_dash_output_streams_to_stdout_or_is_refused_when_stdout_is_taken() {
    let dir = scratch("dash");
    let quickstart = root().join("scenarios/quickstart.toml");
    let quickstart = quickstart.to_str().unwrap();
    let small = ["--set", "cluster.gpus=16", "--set", "job.steps=1"];
    let mut args = vec!["run", quickstart, "--trace", "-"];
    args.extend(small);
    let run = faultline_in(&dir, &args, None);
    assert!(run.status.success(), "{}", stderr(&run));
    let trace = String::from_utf8(run.stdout.clone()).unwrap();
    let lines: Vec<serde_json::Value> = (trace.lines())
        .map(|l| serde_json::from_str(l).expect("every stdout line is the trace's"))
        .collect();
    assert!(lines[0].get("faultline_trace").is_some());
    assert!(lines.last().unwrap().get("faultline_trace_end").is_some());
    assert!(stderr(&run).contains("faultline run: quickstart"));
    std::fs::write(dir.join("t.jsonl"), &trace).unwrap();
    assert!(faultline_in(&dir, &["replay", "t.jsonl"], None)
        .status
        .success());
    // A plan shard on standard output is a shard `merge` reads.
    let plan = root().join("scenarios/plan-100k-30d.toml");
    let plan = plan.to_str().unwrap();
    let shard = faultline_in(
        &dir,
        &["plan", plan, "--seeds", "2", "--shard", "0/1", "--out", "-"],
        None,
    );
    assert!(shard.status.success(), "{}", stderr(&shard));
    assert!(stderr(&shard).contains("written to standard output"));
    std::fs::write(dir.join("shard.json"), &shard.stdout).unwrap();
    let merged = faultline_in(&dir, &["merge", "shard.json", "--out", "-"], None);
    assert!(merged.status.success(), "{}", stderr(&merged));
    let report: serde_json::Value = serde_json::from_slice(&merged.stdout).unwrap();
    assert_eq!(report["seeds"], 2);
    let dump = faultline_in(
        &dir,
        &[
            "collective",
            "--algo",
            "ring",
            "--op",
            "all-reduce",
            "--gpus",
            "8",
        ]
        .into_iter()
        .chain(["--elems", "3", "--dump", "-"])
        .collect::<Vec<_>>(),
        None,
    );
    assert!(dump.status.success(), "{}", stderr(&dump));
    assert_eq!(String::from_utf8_lossy(&dump.stdout).lines().count(), 3);
    // Refused: a --json report already on standard output, two outputs on it, a directory.
    for (args, says) in [
        (
            vec!["run", quickstart, "--trace", "-", "--json"],
            "already carries the --json report",
        ),
        (
            vec!["run", quickstart, "--trace", "-", "--perfetto", "-"],
            "can carry one output",
        ),
        (
            vec!["merge", "shard.json", "--json", "--out", "-"],
            "already carries",
        ),
        (
            vec!["plan", plan, "--out", "-", "--plot", "-"],
            "can carry one output",
        ),
        (vec!["swarm", quickstart, "--emit", "-"], "not a stream"),
    ] {
        assert_refused(&faultline_in(&dir, &args, None), says);
    }
    assert!(!dir.join("-").exists(), "no file named -");
    std::fs::remove_dir_all(&dir).unwrap();
}
