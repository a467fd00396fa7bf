//! Fanning out over a batch scheduler and back in, as a user runs it: `swarm` and `plan` with
//! `--shard i/n` and `--shard auto` (from each scheduler's variables) writing shard files into
//! `--out DIR/`, and `merge` over the directory giving the unsharded run's output byte for
//! byte, for several shard counts, more shards than seeds among them; a missing shard named
//! with the command that resubmits it; exit statuses a scheduler can act on; a memory limit
//! read from an (injected) cgroup.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SWARM: &str = "scenarios/swarm-checkpoint-restart.toml";
const PLAN: &str = "scenarios/plan-daly-closed-form.toml";

/// Every variable the allocation reads besides `--shard auto`'s, which are cleared too, so
/// the tests' own environment (a CI job inside a Slurm array, say) changes nothing.
const CLEARED: [&str; 4] = [
    "FAULTLINE_MEMORY_LIMIT",
    "FAULTLINE_CGROUP_ROOT",
    "SLURM_MEM_PER_NODE",
    "SLURM_CPUS_PER_TASK",
];

fn faultline(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_faultline"));
    command
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    for name in CLEARED
        .iter()
        .chain(&faultline_sim::fanout::SHARD_VARIABLES)
    {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.output().expect("faultline runs")
}

fn said(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("faultline-fanout-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn dir_arg(dir: &Path) -> String {
    format!("{}/", dir.display())
}

/// Runs `command`'s shards `0..n` into a fresh directory, each exiting 0.
fn shards(command: &[&str], n: u64, name: &str) -> PathBuf {
    let dir = scratch(name);
    for i in 0..n {
        let shard = format!("{i}/{n}");
        let out = dir_arg(&dir);
        let mut args = command.to_vec();
        args.extend(["--shard", &shard, "--out", &out]);
        let output = faultline(&args, &[]);
        assert_eq!(output.status.code(), Some(0), "{}", said(&output));
    }
    dir
}

#[test]
fn a_sharded_swarm_merges_to_the_unsharded_verdict_byte_for_byte() {
    let swarm = ["swarm", SWARM, "--seeds", "1..8"];
    let whole = faultline(&swarm, &[]);
    let whole_json = faultline(&[&swarm[..], &["--json"]].concat(), &[]);
    // One shard, a few, and more shards than the swarm's 7 seeds.
    for n in [1, 3, 9] {
        let dir = shards(&swarm, n, &format!("swarm-{n}"));
        let files = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(files as u64, n, "one file per shard, named after it");
        let merged = faultline(&["merge", dir.to_str().unwrap()], &[]);
        assert_eq!(
            merged.status.code(),
            whole.status.code(),
            "{}",
            said(&merged)
        );
        assert_eq!(merged.stdout, whole.stdout, "{n} shards: {}", said(&merged));
        let merged = faultline(&["merge", dir.to_str().unwrap(), "--json"], &[]);
        assert_eq!(merged.stdout, whole_json.stdout, "{n} shards, --json");
    }
    // A glob, and a merged file merged again with the rest (associative).
    let dir = shards(&swarm, 3, "swarm-union");
    let glob = format!("{}/swarm-*-of-3.json", dir.display());
    let union = dir.join("union.json.part");
    let first_two: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| !p.contains("-2-of-3"))
        .collect();
    let mut args = vec!["merge", "--union", union.to_str().unwrap()];
    args.extend(first_two.iter().map(String::as_str));
    let out = faultline(&args, &[]);
    assert!(out.status.success(), "{}", said(&out));
    let merged = faultline(&["merge", union.to_str().unwrap(), &glob], &[]);
    assert_eq!(merged.stdout, whole.stdout, "{}", said(&merged));
    // Without shard 2: refused, naming its seeds and how to run it again.
    std::fs::remove_file(
        dir.join(
            std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .find(|n| n.contains("-2-of-3"))
                .unwrap(),
        ),
    )
    .unwrap();
    let missing = faultline(&["merge", &dir_arg(&dir)], &[]);
    let text = said(&missing);
    assert_eq!(missing.status.code(), Some(2), "{text}");
    assert!(text.contains("2 of 7 seeds missing: 3,6"), "{text}");
    assert!(
        text.contains("--array=2") && text.contains("--shard 2/3"),
        "{text}"
    );
    let partial = faultline(&["merge", &dir_arg(&dir), "--allow-partial"], &[]);
    assert!(partial.status.success(), "{}", said(&partial));
    assert!(String::from_utf8_lossy(&partial.stdout).contains("verdict: 0 of 5 seeds failed"));
    // A forged file is refused (exit 2), never panicked on (exit 70).
    let good: serde_json::Value = serde_json::from_slice(&std::fs::read(&union).unwrap()).unwrap();
    type Forge = fn(&mut serde_json::Value);
    let forgeries: [Forge; 5] = [
        |v| v["holding"]["split"]["count"] = serde_json::json!(0),
        |v| v["holding"]["covered"] = serde_json::json!([[5, 2]]),
        |v| v["holding"]["shards"] = serde_json::json!([[9, 2]]),
        |v| v["outcomes"][0]["seed"] = serde_json::json!(0),
        |v| v["swarm"]["seeds_until"] = serde_json::json!(0),
    ];
    for forge in forgeries {
        let mut bad = good.clone();
        forge(&mut bad);
        let forged = dir.join("forged.json.part");
        std::fs::write(&forged, bad.to_string()).unwrap();
        let out = faultline(&["merge", forged.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", said(&out));
    }
}

#[test]
fn a_shard_exits_0_whatever_its_seeds_found_and_merge_gives_the_verdict() {
    let dir = scratch("planted");
    let base =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(SWARM))
            .unwrap();
    let scenario = dir.join("bug.toml");
    std::fs::write(
        &scenario,
        format!("{base}\n[debug]\nplanted_bug = \"commit-before-durable\"\n"),
    )
    .unwrap();
    let allow = ("FAULTLINE_ALLOW_PLANTED_BUGS", "1");
    let swarm = ["swarm", scenario.to_str().unwrap(), "--seeds", "1..13"];
    let whole = faultline(&swarm, &[allow]);
    assert_eq!(
        whole.status.code(),
        Some(1),
        "seed 11 finds the bug: {}",
        said(&whole)
    );
    let out = dir.join("out");
    for i in 0..4 {
        let index = i.to_string();
        let env = [
            allow,
            ("FAULTLINE_SHARD_INDEX", &index),
            ("FAULTLINE_SHARD_COUNT", "4"),
        ];
        let shard = faultline(
            &[&swarm[..], &["--shard", "auto", "--out", &dir_arg(&out)]].concat(),
            &env,
        );
        assert_eq!(shard.status.code(), Some(0), "{}", said(&shard));
        assert!(String::from_utf8_lossy(&shard.stderr).contains(&format!("shard {i}/4")));
    }
    let merged = faultline(&["merge", &dir_arg(&out)], &[allow]);
    assert_eq!(merged.status.code(), Some(1), "{}", said(&merged));
    assert_eq!(merged.stdout, whole.stdout);
    // Shards of another scenario or seed range are refused.
    let other = dir.join("other");
    let shard = faultline(
        &[
            "swarm",
            SWARM,
            "--seeds",
            "1..13",
            "--shard",
            "0/4",
            "--out",
            &dir_arg(&other),
        ],
        &[],
    );
    assert!(shard.status.success(), "{}", said(&shard));
    let mut args = vec!["merge".to_string(), dir_arg(&out)];
    args.extend(
        std::fs::read_dir(&other)
            .unwrap()
            .map(|e| e.unwrap().path().display().to_string()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mixed = faultline(&args, &[allow]);
    assert_eq!(mixed.status.code(), Some(2), "{}", said(&mixed));
    assert!(
        said(&mixed).contains("another scenario"),
        "{}",
        said(&mixed)
    );
}

#[test]
fn a_sharded_plan_merges_to_the_unsharded_json_byte_for_byte() {
    let plan = ["plan", PLAN, "--seeds", "6"];
    let whole = faultline(&[&plan[..], &["--json"]].concat(), &[]);
    assert!(whole.status.success(), "{}", said(&whole));
    for n in [2, 4, 8] {
        let dir = shards(&plan, n, &format!("plan-{n}"));
        let merged = faultline(&["merge", &dir_arg(&dir), "--json"], &[]);
        assert_eq!(merged.stdout, whole.stdout, "{n} shards: {}", said(&merged));
    }
}

#[test]
fn auto_reads_each_scheduler_and_refuses_what_it_cannot_map() {
    let dir = scratch("auto");
    let out = dir_arg(&dir);
    let plan = [
        "plan", PLAN, "--seeds", "4", "--shard", "auto", "--out", &out,
    ];
    // deploy/k8s/swarm-indexed-job.yaml's pods: an index, and the count in the pod's env.
    let k8s = faultline(
        &plan,
        &[
            ("JOB_COMPLETION_INDEX", "3"),
            ("FAULTLINE_SHARD_COUNT", "4"),
        ],
    );
    assert!(k8s.status.success(), "{}", said(&k8s));
    assert!(
        said(&k8s).contains("shard 3/4 from the kubernetes variables"),
        "{}",
        said(&k8s)
    );
    let written: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        written.len() == 1 && written[0].ends_with("-3-of-4.json"),
        "{written:?}"
    );
    let google = faultline(
        &plan,
        &[("BATCH_TASK_INDEX", "1"), ("BATCH_TASK_COUNT", "4")],
    );
    assert!(
        said(&google).contains("shard 1/4 from the google-batch"),
        "{}",
        said(&google)
    );
    for (env, says) in [
        (vec![("JOB_COMPLETION_INDEX", "3")], "FAULTLINE_SHARD_COUNT"),
        (
            vec![("RANK", "1"), ("WORLD_SIZE", "4")],
            "RANK and WORLD_SIZE are never read",
        ),
        (
            vec![
                ("SLURM_ARRAY_TASK_ID", "5"),
                ("SLURM_ARRAY_TASK_MIN", "1"),
                ("SLURM_ARRAY_TASK_MAX", "9"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
            ],
            "sparse index list",
        ),
        (
            vec![
                ("SLURM_ARRAY_TASK_ID", "0"),
                ("AWS_BATCH_JOB_ARRAY_INDEX", "0"),
            ],
            "two schedulers",
        ),
    ] {
        let refused = faultline(&plan, &env);
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{env:?}: {}",
            said(&refused)
        );
        assert!(said(&refused).contains(says), "{env:?}: {}", said(&refused));
    }
}

#[test]
fn a_run_over_its_cgroup_s_memory_limit_is_refused_with_both_numbers() {
    let root = scratch("cgroup");
    std::fs::write(root.join("memory.max"), "33554432\n").unwrap();
    let root_text = root.display().to_string();
    let env = [("FAULTLINE_CGROUP_ROOT", root_text.as_str())];
    for args in [
        vec!["run", "scenarios/quickstart.toml"],
        vec!["swarm", SWARM, "--seeds", "1..3"],
    ] {
        let out = faultline(&args, &env);
        let text = said(&out);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(
            text.contains("by estimate, and 32.0 MiB is available (the cgroup's limit,")
                && text.contains("memory.max"),
            "{text}"
        );
    }
    // Threads follow the cgroup's CPU quota and a Slurm task's CPUs, not the host's cores.
    std::fs::write(root.join("cpu.max"), "50000 100000\n").unwrap();
    let plan = ["plan", PLAN, "--seeds", "2"];
    let quota = faultline(&plan, &env);
    assert!(
        said(&quota).contains("2 seeds, 1 threads"),
        "{}",
        said(&quota)
    );
    let slurm = faultline(&plan, &[("SLURM_CPUS_PER_TASK", "1")]);
    assert!(
        said(&slurm).contains("2 seeds, 1 threads"),
        "{}",
        said(&slurm)
    );
    // Without the limit the same run goes.
    std::fs::write(root.join("memory.max"), "max\n").unwrap();
    let out = faultline(&["swarm", SWARM, "--seeds", "1..2"], &env);
    assert!(out.status.success(), "{}", said(&out));
}

#[test]
fn a_sharded_calibration_merges_to_the_unsharded_cost_file_byte_for_byte() {
    let dir = scratch("calibrate");
    let whole = dir.join("whole.json");
    let calibrate = [
        "calibrate",
        PLAN,
        "--steps",
        "2",
        "--all-policies",
        "--set",
        "cluster.gpus=64",
    ];
    let out = faultline(
        &[&calibrate[..], &["--out", whole.to_str().unwrap()]].concat(),
        &[],
    );
    assert!(out.status.success(), "{}", said(&out));
    // Four runs: two shards of two, and six shards, two of them with no run.
    for n in [2, 6] {
        let shards = shards(&calibrate, n, &format!("calibrate-{n}"));
        let merged = dir.join(format!("merged-{n}.json"));
        let out = faultline(
            &[
                "merge",
                &dir_arg(&shards),
                "--out",
                merged.to_str().unwrap(),
            ],
            &[],
        );
        assert!(out.status.success(), "{}", said(&out));
        assert_eq!(
            std::fs::read(&merged).unwrap(),
            std::fs::read(&whole).unwrap(),
            "{n} shards"
        );
    }
}
