use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn resolved(pairs: &[(&str, &str)]) -> (u64, u64, Scheduler) {
    let a = resolve(&env(pairs)).unwrap_or_else(|e| panic!("{pairs:?}: {e}"));
    (a.index, a.count, a.scheduler)
}

fn refused(pairs: &[(&str, &str)], says: &[&str]) {
    let e = resolve(&env(pairs)).expect_err("refused");
    for word in says {
        assert!(e.contains(word), "{pairs:?}: {e:?} lacks {word:?}");
    }
}

#[test]
fn faultline_s_own_variables_come_first() {
    let both = [
        ("FAULTLINE_SHARD_INDEX", "3"),
        ("FAULTLINE_SHARD_COUNT", "8"),
        ("SLURM_ARRAY_TASK_ID", "5"),
    ];
    assert_eq!(resolved(&both), (3, 8, Scheduler::Faultline));
    refused(
        &[("FAULTLINE_SHARD_INDEX", "3")],
        &["FAULTLINE_SHARD_COUNT"],
    );
    refused(
        &[
            ("FAULTLINE_SHARD_INDEX", "8"),
            ("FAULTLINE_SHARD_COUNT", "8"),
        ],
        &["shard 8 of 8"],
    );
    refused(
        &[
            ("FAULTLINE_SHARD_INDEX", "x"),
            ("FAULTLINE_SHARD_COUNT", "8"),
        ],
        &["FAULTLINE_SHARD_INDEX=\"x\""],
    );
}

fn slurm(id: u64, min: u64, max: u64, step: u64, count: u64) -> Vec<(String, String)> {
    [
        ("SLURM_ARRAY_TASK_ID", id),
        ("SLURM_ARRAY_TASK_MIN", min),
        ("SLURM_ARRAY_TASK_MAX", max),
        ("SLURM_ARRAY_TASK_STEP", step),
        ("SLURM_ARRAY_TASK_COUNT", count),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn slurm_resolve(id: u64, min: u64, max: u64, step: u64, count: u64) -> Result<Assignment, String> {
    resolve(&slurm(id, min, max, step, count).into_iter().collect())
}

#[test]
fn slurm_arrays_map_ranges_with_any_base_and_step_and_refuse_lists() {
    // --array=0-3
    let a = slurm_resolve(2, 0, 3, 1, 4).unwrap();
    assert_eq!((a.index, a.count, a.scheduler), (2, 4, Scheduler::Slurm));
    // --array=1-16: task 1 is shard 0, task 16 shard 15.
    let a = slurm_resolve(16, 1, 16, 1, 16).unwrap();
    assert_eq!((a.index, a.count), (15, 16));
    assert_eq!(a.task_id(0), 1);
    // --array=1-7:2 runs 1, 3, 5, 7.
    let a = slurm_resolve(5, 1, 7, 2, 4).unwrap();
    assert_eq!((a.index, a.count), (2, 4));
    assert_eq!(a.task_id(3), 7);
    // --array=1,3,9: three tasks over 1..9 with no one step.
    let e = slurm_resolve(3, 1, 9, 1, 3).unwrap_err();
    assert!(
        e.contains("sparse index list") && e.contains("SLURM_ARRAY_TASK_COUNT=3"),
        "{e}"
    );
    // A task off the step.
    assert!(slurm_resolve(2, 1, 7, 2, 4).is_err());
    // FAULTLINE_SHARD_COUNT that disagrees with Slurm's count.
    let mut vars: BTreeMap<String, String> = slurm(0, 0, 3, 1, 4).into_iter().collect();
    vars.insert(COUNT_ENV.into(), "5".into());
    let e = resolve(&vars).unwrap_err();
    assert!(e.contains("SLURM_ARRAY_TASK_COUNT=4") && e.contains("FAULTLINE_SHARD_COUNT=5"));
    // Missing MIN.
    refused(&[("SLURM_ARRAY_TASK_ID", "1")], &["SLURM_ARRAY_TASK_MIN"]);
}

#[test]
fn kubernetes_needs_the_count_in_the_pod_env() {
    assert_eq!(
        resolved(&[
            ("JOB_COMPLETION_INDEX", "7"),
            ("FAULTLINE_SHARD_COUNT", "10")
        ]),
        (7, 10, Scheduler::Kubernetes)
    );
    refused(
        &[("JOB_COMPLETION_INDEX", "7")],
        &[
            "JOB_COMPLETION_INDEX",
            "FAULTLINE_SHARD_COUNT",
            "completions",
        ],
    );
    refused(
        &[
            ("JOB_COMPLETION_INDEX", "10"),
            ("FAULTLINE_SHARD_COUNT", "10"),
        ],
        &["shard 10 of 10"],
    );
}

#[test]
fn the_deploy_manifest_s_variables_resolve() {
    // deploy/k8s/swarm-indexed-job.yaml: completions 4 and FAULTLINE_SHARD_COUNT "4".
    let manifest = include_str!("../../../deploy/k8s/swarm-indexed-job.yaml");
    let count = manifest
        .lines()
        .skip_while(|l| !l.contains("name: FAULTLINE_SHARD_COUNT"))
        .nth(1)
        .and_then(|l| l.split('"').nth(1))
        .expect("the manifest sets FAULTLINE_SHARD_COUNT");
    let completions = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("completions:"))
        .expect("the manifest sets completions")
        .trim();
    assert_eq!(
        count, completions,
        "the pods' count is the Job's completions"
    );
    assert!(manifest.contains("completionMode: Indexed"));
    assert!(manifest.contains("--shard") && manifest.contains("auto"));
    for index in 0..count.parse::<u64>().unwrap() {
        let got = resolved(&[
            ("JOB_COMPLETION_INDEX", &index.to_string()),
            ("FAULTLINE_SHARD_COUNT", count),
        ]);
        assert_eq!((got.0, got.2), (index, Scheduler::Kubernetes));
    }
}

#[test]
fn batch_services_and_ambiguity() {
    assert_eq!(
        resolved(&[
            ("AWS_BATCH_JOB_ARRAY_INDEX", "4"),
            ("FAULTLINE_SHARD_COUNT", "9")
        ]),
        (4, 9, Scheduler::AwsBatch)
    );
    refused(
        &[("AWS_BATCH_JOB_ARRAY_INDEX", "4")],
        &["FAULTLINE_SHARD_COUNT"],
    );
    assert_eq!(
        resolved(&[("BATCH_TASK_INDEX", "0"), ("BATCH_TASK_COUNT", "3")]),
        (0, 3, Scheduler::GoogleBatch)
    );
    refused(
        &[
            ("BATCH_TASK_INDEX", "0"),
            ("BATCH_TASK_COUNT", "3"),
            ("FAULTLINE_SHARD_COUNT", "4"),
        ],
        &["BATCH_TASK_COUNT=3", "FAULTLINE_SHARD_COUNT=4"],
    );
    refused(
        &[
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("JOB_COMPLETION_INDEX", "0"),
            ("FAULTLINE_SHARD_COUNT", "4"),
        ],
        &[
            "SLURM_ARRAY_TASK_ID",
            "JOB_COMPLETION_INDEX",
            "two schedulers",
        ],
    );
}

#[test]
fn rank_and_world_size_are_never_read() {
    refused(
        &[("RANK", "3"), ("WORLD_SIZE", "8"), ("SLURM_PROCID", "1")],
        &["no shard variables", "RANK and WORLD_SIZE are never read"],
    );
    let only = shard_env_of([
        ("RANK".to_string(), "1".to_string()),
        ("SLURM_ARRAY_TASK_ID".to_string(), "1".to_string()),
    ]);
    assert_eq!(only.keys().collect::<Vec<_>>(), ["SLURM_ARRAY_TASK_ID"]);
}

#[test]
fn the_flag_parses_auto_and_i_of_n() {
    assert_eq!(parse_shard_arg("auto"), Ok(ShardArg::Auto));
    assert_eq!(
        parse_shard_arg("2/5"),
        Ok(ShardArg::Explicit { index: 2, count: 5 })
    );
    for bad in ["5/5", "0/0", "-1/3", "1/1000001", "x", "1/"] {
        assert!(parse_shard_arg(bad).is_err(), "{bad}");
    }
}

#[test]
fn covers_are_sets_of_ranges() {
    let a = Cover::of([5, 0, 1, 2, 9, 2]);
    assert_eq!(a, Cover(vec![[0, 3], [5, 6], [9, 10]]));
    assert_eq!(a.len(), 5);
    assert!(a.contains(2) && !a.contains(3) && a.contains(9) && !a.contains(10));
    let b = Cover::of([3, 4, 10]);
    assert_eq!(a.union(&b), Cover(vec![[0, 6], [9, 11]]));
    assert_eq!(a.missing(12), Cover(vec![[3, 5], [6, 9], [10, 12]]));
    assert_eq!(a.union(&b).missing(11), Cover(vec![[6, 9]]));
    assert!(a.is_valid_below(10) && !a.is_valid_below(9));
    assert!(!Cover(vec![[3, 5], [4, 6]]).is_valid_below(10));
    assert!(!Cover(vec![[3, 3]]).is_valid_below(10));
    assert_eq!(compact([3, 17, 512, 4, 5, 6, 8, 9]), "3-6,8,9,17,512");
}

#[test]
fn a_missing_shard_is_named_with_its_resubmission() {
    // Seeds 0..10 over 4 Slurm tasks numbered 1-4: seeds 2, 6 missing are shard 2, task 3.
    let split = Assignment {
        index: 0,
        count: 4,
        scheduler: Scheduler::Slurm,
        first_task: 1,
        task_step: 1,
    };
    let missing = Cover::of([2, 6]);
    let text = resubmission(&missing, Some(&split));
    assert!(text.contains("shards 2 of 4"), "{text}");
    assert!(text.contains("sbatch --array=3 "), "{text}");
    assert!(text.contains("--shard 2/4"), "{text}");
    let flag = Assignment::of_flag(0, 1000);
    let text = resubmission(&Cover::of([3, 17, 512]), Some(&flag));
    assert!(text.contains("--array=3,17,512"), "{text}");
    assert_eq!(
        shard_file_name("swarm", "0123456789abcdef", &flag),
        "swarm-01234567-0-of-1000.json"
    );
}
