//! The `faultline-gpu` program as a user runs it: argument errors, the no-GPU exit, a host run,
//! and a real crash (the process aborts) followed by a restore from the checkpoint files, which
//! is what run-on-gpu.sh does on a GPU.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn faultline_gpu(args: &[&str]) -> Output {
    faultline_gpu_in(&workspace_root(), args)
}

fn faultline_gpu_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faultline-gpu"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("faultline-gpu runs")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn json(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const SMALL: [&str; 4] = ["--set", "cluster.gpus=8", "--set", "job.steps=50"];

#[test]
fn bad_input_exits_2_and_names_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "scenarios/none.toml"],
            "cannot read the scenario file",
        ),
        (
            &[
                "run",
                "scenarios/quickstart.toml",
                "--set",
                "job.collective=star",
            ],
            "job.collective: unknown algorithm",
        ),
        (
            &["run", "scenarios/quickstart.toml", "--restore"],
            "--restore needs --checkpoint-dir",
        ),
        (
            &[
                "run",
                "scenarios/quickstart.toml",
                "--transport",
                "nccl",
                "--device",
                "host",
            ],
            "--transport nccl needs --device cuda",
        ),
        (&["collective", "--algo", "star"], "unknown algorithm or op"),
        (
            &[
                "run",
                "scenarios/quickstart.toml",
                "--device",
                "host",
                "--set",
                "checkpoint.interval=1",
                "--checkpoint-dir",
                "Cargo.toml",
            ],
            "--checkpoint-dir Cargo.toml: exists and is not a directory",
        ),
        // A layout runs on the local transport, from the start.
        (
            &[
                "run",
                "scenarios/layout-quickstart.toml",
                "--transport",
                "nccl",
                "--device",
                "cuda",
            ],
            "a [parallelism] layout runs on --transport local only",
        ),
        (
            &["run", "scenarios/layout-quickstart.toml", "--restore"],
            "--restore: a [parallelism] layout job takes no checkpoints to restore",
        ),
        // The simulator's reader, so the simulator's refusals: an unknown key gets the key it
        // was probably meant to be, and a node wider than the simulator allows is refused.
        (
            &["run", "scenarios/quickstart.toml", "--set", "job.proxy_elem=64"],
            "did you mean `proxy_elems`?",
        ),
        (
            &[
                "run",
                "scenarios/quickstart.toml",
                "--set",
                "cluster.gpus_per_node=512",
            ],
            "--set cluster.gpus_per_node=512: cluster.gpus_per_node: expected an integer from 1 to 256",
        ),
    ];
    for (args, expected) in cases {
        let output = faultline_gpu(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    // clap's own errors use status 2 as well.
    assert_eq!(faultline_gpu(&["run"]).status.code(), Some(2));
}

#[test]
fn without_a_gpu_cuda_runs_exit_3_and_say_what_is_missing() {
    if let cuda_backend::probe::GpuAvailability::Present { .. } = cuda_backend::probe::cuda() {
        println!("a GPU is present: the no-GPU exit is not reachable here");
        return;
    }
    for args in [
        vec!["probe"],
        vec!["run", "scenarios/quickstart.toml"],
        vec!["collective", "--gpus", "4"],
    ] {
        let output = faultline_gpu(&args);
        assert_eq!(output.status.code(), Some(3), "{args:?}");
    }
    let output = faultline_gpu(&["run", "scenarios/quickstart.toml"]);
    assert!(
        stderr(&output).contains("no usable GPU: the CUDA driver library (libcuda.so)"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_host_run_prints_the_simulators_report_fields() {
    let mut args = vec!["run", "scenarios/quickstart.toml", "--device", "host"];
    args.extend(SMALL);
    let output = faultline_gpu(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let report = json(&output);
    for field in [
        "scenario",
        "seed",
        "gpus",
        "gpus_per_node",
        "collective",
        "steps_requested",
        "steps_completed",
        "param_digest",
        "final_loss",
        "first_loss",
        "replicas_agree",
        "reproduce",
    ] {
        assert!(report.get(field).is_some(), "missing {field}: {report}");
    }
    assert_eq!(report["steps_completed"], 50);
    assert_eq!(report["timings"]["steps_timed"], 50);
    assert_eq!(report["param_digest"].as_str().unwrap().len(), 16);
}

#[test]
fn a_crashed_run_restores_from_its_checkpoint_files_and_ends_with_the_same_parameters() {
    let dir = std::env::temp_dir().join(format!("faultline-gpu-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let scenario = workspace_root().join("scenarios/quickstart.toml");
    let mut base = vec!["run", scenario.to_str().unwrap(), "--device", "host"];
    base.extend(SMALL);
    let uninterrupted = faultline_gpu(&base);
    assert!(uninterrupted.status.success());

    // trainer-core's checkpoints, every 10 steps, to real files: the persistent tier in
    // `dir/persistent`, each node's host memory under `dir/host`.
    let persistent = dir.join("persistent");
    let host = dir.join("host");
    let (persistent, host) = (persistent.to_str().unwrap(), host.to_str().unwrap());
    base.extend([
        "--set",
        "checkpoint.interval=10",
        "--checkpoint-dir",
        persistent,
        "--host-dir",
        host,
    ]);
    let mut crash = base.clone();
    crash.extend(["--crash-at-step", "25"]);
    // Run where a core file from the abort, if the machine writes one, lands in the temporary
    // directory rather than the source tree.
    std::fs::create_dir_all(&dir).unwrap();
    let crashed = faultline_gpu_in(&dir, &crash);
    assert!(!crashed.status.success(), "the run should have aborted");
    assert!(crashed.stdout.is_empty(), "a crashed run prints no report");
    assert!(stderr(&crashed).contains("crashing on purpose before step 25"));
    assert!(dir.join("persistent/manifests/000000000020").is_file());

    let mut restore = base.clone();
    restore.push("--restore");
    let restored = faultline_gpu(&restore);
    assert!(restored.status.success(), "{}", stderr(&restored));
    let (a, b) = (json(&uninterrupted), json(&restored));
    assert_eq!(b["resumed_from_step"], 20);
    assert_eq!(b["restores_by_tier"]["persistent"], 1);
    assert_eq!(b["steps_completed"], 50);
    assert_eq!(a["param_digest"], b["param_digest"]);
    assert_eq!(a["final_loss"], b["final_loss"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn host_collectives_give_the_same_results_on_every_algorithm() {
    let mut digests = std::collections::BTreeSet::new();
    for algo in ["ring", "tree", "halving-doubling", "hierarchical"] {
        let output = faultline_gpu(&[
            "collective",
            "--algo",
            algo,
            "--op",
            "all-reduce",
            "--gpus",
            "12",
            "--gpus-per-node",
            "4",
            "--elems",
            "100",
            "--device",
            "host",
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        let report = json(&output);
        assert_eq!(report["failed"], serde_json::json!([]));
        // Integer inputs: every algorithm's sums are exact, so every rank's bits agree.
        digests.insert(report["results_digest"].as_str().unwrap().to_string());
    }
    assert_eq!(digests.len(), 1, "{digests:?}");
}
