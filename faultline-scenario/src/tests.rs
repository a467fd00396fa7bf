//! The scenario reader: defaults, positions in errors, overrides, link names.

use crate::config::ClusterConfig;
use crate::link::LinkRef;
use crate::load_str;

const MINIMAL: &str = "[cluster]\ngpus = 16\n[job]\nsteps = 2\n";

#[test]
fn a_minimal_scenario_gets_h100_defaults() {
    let s = load_str("t", "t.toml", MINIMAL, &[]).unwrap();
    assert_eq!(s.cluster.gpus_per_node, 8);
    assert_eq!(s.fabric.nic_bandwidth_bytes_per_s, 50e9);
    assert_eq!(s.fabric.nvlink_bandwidth_bytes_per_s, 450e9);
}

#[test]
fn errors_name_file_line_and_key() {
    let text = "[cluster]\ngpus = 16\ngpus_per_node = 32\n[job]\nsteps = 2\n";
    let e = load_str("t", "bad.toml", text, &[]).unwrap_err();
    assert_eq!(e.line_col, Some((3, 17)));
    assert_eq!(e.key.as_deref(), Some("cluster.gpus_per_node"));
    assert!(
        e.to_string()
            .starts_with("bad.toml:3:17: cluster.gpus_per_node:"),
        "{e}"
    );

    let text = "[cluster]\ngpus = \"many\"\n[job]\nsteps = 2\n";
    let e = load_str("t", "bad.toml", text, &[]).unwrap_err();
    assert_eq!(e.line_col.map(|l| l.0), Some(2));
    assert_eq!(e.key.as_deref(), Some("cluster.gpus"), "{e}");

    let text = "[cluster]\ngpus = 16\ngpu_per_node = 8\n[job]\nsteps = 2\n";
    let e = load_str("t", "bad.toml", text, &[]).unwrap_err();
    assert_eq!(e.line_col.map(|l| l.0), Some(3));
    assert!(e.message.contains("gpu_per_node"), "{e}");

    let e = load_str("t", "bad.toml", "[cluster\ngpus = 1", &[]).unwrap_err();
    assert!(e.message.contains("malformed TOML"), "{e}");
}

#[test]
fn overrides_replace_keys_and_are_named_in_errors() {
    let s = load_str(
        "t",
        "t.toml",
        MINIMAL,
        &["cluster.gpus=24".into(), "fabric.nic_latency=2us".into()],
    )
    .unwrap();
    assert_eq!(s.cluster.gpus, 24);
    assert_eq!(s.fabric.nic_latency_ns, 2000);
    let e = load_str("t", "t.toml", MINIMAL, &["cluster.gpus=0".into()]).unwrap_err();
    assert_eq!(e.origin, "--set cluster.gpus=0");
    assert_eq!(e.key.as_deref(), Some("cluster.gpus"));
}

#[test]
fn link_names_round_trip_and_bad_names_say_why() {
    let text = "[cluster]\ngpus = 40\nnodes_per_leaf = 2\nclusters = 2\n[job]\nsteps = 2\n";
    let cluster = load_str("t", "t.toml", text, &[]).unwrap().cluster;
    // 5 nodes in 2 clusters of 3: 2 units per cluster, one leaf per rail per unit.
    assert_eq!(cluster.node_count(), 5);
    assert_eq!(cluster.leaf_count(), 2 * 2 * 8);
    assert_eq!(cluster.uplinks_per_leaf(), 2);
    let mut names = Vec::new();
    for gpu in 0..cluster.gpus {
        names.push(LinkRef::NvLink { gpu });
        names.push(LinkRef::Nic { gpu });
    }
    for leaf in 0..cluster.leaf_count() {
        for spine in 0..cluster.uplinks_per_leaf() {
            names.push(LinkRef::LeafSpine { leaf, spine });
        }
    }
    names.extend((0..2).map(|cluster| LinkRef::InterCluster { cluster }));
    for link in names {
        assert_eq!(
            LinkRef::parse(&link.to_string(), &cluster),
            Ok(link),
            "{link}"
        );
    }
    for (bad, says) in [
        ("nic:gpu=40", "gpu 40 does not exist"),
        ("nic:gpu=x", "not a number"),
        ("nic:gpu=1,rail=2", "expected"),
        ("leaf-spine:leaf=0", "no `spine`"),
        ("leaf-spine:leaf=32,spine=0", "leaf 32 does not exist"),
        ("leaf-spine:leaf=0,spine=2", "spine 2 does not exist"),
        ("inter-cluster:cluster=2", "cluster 2 does not exist"),
        ("nvlink", "expected"),
        ("fiber:gpu=1", "expected"),
    ] {
        let e = LinkRef::parse(bad, &cluster).unwrap_err();
        assert!(e.contains(says), "{bad}: {e}");
    }
    let single = ClusterConfig {
        clusters: 1,
        ..cluster
    };
    let e = LinkRef::parse("inter-cluster:cluster=0", &single).unwrap_err();
    assert!(e.contains("single cluster"), "{e}");
}

/// The two inputs on which the simulator and the GPU runner disagreed while each had its own
/// reader: both now go through this one, and it refuses both with a position.
#[test]
fn the_readers_former_divergences_are_refused_with_a_position() {
    let e = load_str(
        "t",
        "t.toml",
        MINIMAL,
        &["cluster.gpus_per_node=512".into()],
    )
    .unwrap_err();
    assert_eq!(e.origin, "--set cluster.gpus_per_node=512");
    assert_eq!(e.key.as_deref(), Some("cluster.gpus_per_node"));
    let text = "[cluster]\ngpus = 16\n[job]\nsteps = 2\nproxy_elem = 64\n";
    let e = load_str("t", "t.toml", text, &[]).unwrap_err();
    assert_eq!(e.line_col.map(|l| l.0), Some(5), "{e}");
    assert!(e.message.ends_with("did you mean `proxy_elems`?"), "{e}");
}

#[test]
fn link_flap_and_straggler_keys_are_validated_with_their_key() {
    let base = "[cluster]\ngpus = 16\n[job]\nsteps = 2\n";
    for (extra, key, says) in [
        (
            "[fabric]\ntransport = \"carrier-pigeon\"\n",
            "fabric.transport",
            "expected \"plain\" or \"retry\"",
        ),
        (
            "[fabric]\ntransport = \"retry\"\nretry_initial_backoff = \"1s\"\nretry_max_backoff = \"1ms\"\n",
            "fabric.retry_max_backoff",
            "at least",
        ),
        (
            "[[faults.link_flap]]\nlink = \"nic:gpu=16\"\nat = \"1s\"\ndown = \"1s\"\n",
            "faults.link_flap.0.link",
            "does not exist",
        ),
        (
            "[[faults.link_flap]]\nlink = \"nic:gpu=1\"\nat = \"1s\"\ndown = \"1s\"\ncount = 3\n",
            "faults.link_flap.0.count",
            "`period` is required",
        ),
        (
            "[[faults.link_flap]]\nlink = \"nic:gpu=1\"\nat = \"1s\"\ndown = \"2s\"\ncount = 3\nperiod = \"1s\"\n",
            "faults.link_flap.0.period",
            "longer than `down`",
        ),
        (
            "[recovery]\ncollective_timeout = \"0s\"\n[[faults.link_flap]]\nlink = \"nic:gpu=1\"\nat = \"1s\"\ndown = \"1s\"\n",
            "faults.link_flap.0.link",
            "collective_timeout",
        ),
        (
            "[[faults.straggler]]\ngpu = 3\nfactor = 0.5\nduration = \"1s\"\n",
            "faults.straggler.0.factor",
            "from 1 to 1000",
        ),
        (
            "[[faults.straggler]]\ngpu = 3\nkind = \"pcie\"\nfactor = 2.0\nduration = \"1s\"\n",
            "faults.straggler.0.kind",
            "\"compute\" or \"nic\"",
        ),
        (
            "[faults.rates]\nlink_flaps_per_1000_link_days = -1.0\n",
            "faults.rates.link_flaps_per_1000_link_days",
            "from 0 to 1e6",
        ),
        (
            "[faults.rates]\nlink_flaps_per_1000_link_days = 5.0\nlink_flap_down = \"5 parsecs\"\n",
            "faults.rates.link_flap_down",
            "expected",
        ),
        (
            "[recovery]\nstraggler_mitigation = \"evict\"\n",
            "recovery.straggler_mitigation",
            "straggler_detection = true",
        ),
        (
            "[recovery]\nstraggler_detection = true\nstraggler_threshold = 0.9\n",
            "recovery.straggler_threshold",
            "above 1",
        ),
    ] {
        let e = load_str("t", "t.toml", &format!("{base}{extra}"), &[]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{e}");
        assert!(e.line_col.is_some(), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
}

/// Bandwidths and durations are held to what a run can represent: a NIC of 1e-20 MB/s would
/// make a transfer's time wrap (and finish sooner than one at 400 Gb/s), a duration of
/// years would pass the clock's horizon.
#[test]
fn bandwidths_and_durations_outside_the_physical_range_are_refused_with_their_key() {
    for (set, key, says) in [
        (
            "fabric.nic_bandwidth=\"1e-20MB/s\"",
            "fabric.nic_bandwidth",
            "from 1Mb/s",
        ),
        (
            "fabric.nvlink_bandwidth=\"1e9TB/s\"",
            "fabric.nvlink_bandwidth",
            "10000TB/s",
        ),
        (
            "storage.aggregate_bandwidth=\"1e-30MB/s\"",
            "storage.aggregate_bandwidth",
            "1Mb/s",
        ),
        (
            "checkpoint.snapshot_bandwidth=\"1e-9GB/s\"",
            "checkpoint.snapshot_bandwidth",
            "1Mb/s",
        ),
        (
            "detection.checksum_bandwidth=\"0.001Mb/s\"",
            "detection.checksum_bandwidth",
            "1Mb/s",
        ),
        (
            "fabric.nic_latency=\"30d\"",
            "fabric.nic_latency",
            "from 0s to 10s",
        ),
        (
            "recovery.restart_time=\"100d\"",
            "recovery.restart_time",
            "at most 13d",
        ),
        (
            "storage.latency=\"20d\"",
            "storage.latency",
            "from 0s to 10s",
        ),
    ] {
        let sets = vec![set.to_string(), "checkpoint.interval=2".to_string()];
        let e = load_str("t", "t.toml", MINIMAL, &sets).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{set}: {e}");
        assert!(e.message.contains(says), "{set}: {e}");
    }
    // The edges themselves are fine.
    let sets = [
        "fabric.nic_bandwidth=\"1Mb/s\"".into(),
        "fabric.nic_latency=\"10s\"".into(),
        "recovery.restart_time=\"13d\"".into(),
    ];
    assert!(load_str("t", "t.toml", MINIMAL, &sets).is_ok());
}

/// A layout scenario: 32 GPUs, 4 per node, with `parallelism` as the `[parallelism]` table's
/// body and `job` added to `[job]`.
fn layout_text(parallelism: &str, job: &str) -> String {
    format!(
        "[cluster]\ngpus = 32\ngpus_per_node = 4\n[job]\nsteps = 2\nproxy_layers = 4\n{job}\n\
         [parallelism]\n{parallelism}\n"
    )
}

#[test]
fn a_layout_derives_dp_and_reads_its_job_keys() {
    use trainer_core::layout::{DpSharding, RankOrder};
    use trainer_core::pipeline::Schedule;
    let text = layout_text(
        "tp = 4\npp = 2\ndp_sharding = \"full\"\norder = \"tp-pp-dp\"",
        "schedule = \"gpipe\"\nmicro_batches = 3\nhidden = 512",
    );
    let layout = load_str("t", "t.toml", &text, &[])
        .unwrap()
        .job
        .layout
        .unwrap();
    assert_eq!(
        (layout.layout.tp, layout.layout.pp, layout.layout.dp),
        (4, 2, 4)
    );
    assert_eq!(layout.layout.order, RankOrder::TpPpDp);
    assert_eq!(layout.dp_sharding, DpSharding::Full);
    assert_eq!(layout.schedule, Schedule::GPipe);
    assert_eq!((layout.micro_batches, layout.model.hidden), (3, 512));
    // Defaults: Megatron's order, no sharding, 1F1B.
    let plain = load_str("t", "t.toml", &layout_text("", ""), &[]).unwrap();
    let plain = plain.job.layout.unwrap();
    assert_eq!(
        (plain.layout.tp, plain.layout.pp, plain.layout.dp),
        (1, 1, 32)
    );
    assert_eq!(plain.layout.order, RankOrder::TpDpPp);
    assert_eq!(plain.dp_sharding, DpSharding::None);
    assert_eq!(plain.schedule, Schedule::OneForwardOneBackward);
    // No table, no layout, whatever the job keys say.
    let none = load_str("t", "t.toml", &format!("{MINIMAL}micro_batches = 5\n"), &[]).unwrap();
    assert_eq!(none.job.layout, None);
}

/// A layout job takes checkpoints; their modelled state is the layout's transformer's
/// (`12 h^2` parameters a layer), not `job.model_params`, which only the plain job reads.
#[test]
fn a_layout_checkpoints_the_state_of_its_modelled_transformer() {
    let text = format!(
        "{}[checkpoint]\ninterval = 2\nstate_bytes_per_param = 4\n",
        layout_text(
            "tp = 2\npp = 2",
            "layers = 4\nhidden = 256\nmodel_params = 1e9"
        )
    );
    let scenario = load_str("t", "t.toml", &text, &[]).unwrap();
    let policy = scenario.job.checkpoint.unwrap();
    assert_eq!(policy.modelled_state_bytes, 12 * 256 * 256 * 4 * 4);
    let plain = format!("{MINIMAL}model_params = 1e9\n[checkpoint]\ninterval = 2\n");
    let plain = load_str("t", "t.toml", &plain, &[]).unwrap();
    assert_eq!(
        plain.job.checkpoint.unwrap().modelled_state_bytes,
        16_000_000_000
    );
}

#[test]
fn bad_layouts_are_refused_with_line_and_key() {
    // (the [parallelism] body, extra job keys, extra top-level text, the key, its line).
    let cases = [
        ("tp = 3", "", "", "parallelism.tp", 9),
        ("tp = 8", "", "", "parallelism.tp", 9),
        ("tp = 4", "proxy_width = 6", "", "parallelism.tp", 9),
        ("pp = 5", "", "", "parallelism.pp", 9),
        ("pp = 3", "layers = 2", "", "parallelism.pp", 9),
        ("pp = 3", "", "", "parallelism.pp", 9),
        ("tp = 2\ndp = 4", "", "", "parallelism.dp", 10),
        ("dp = 0", "", "", "parallelism.dp", 9),
        ("tp = 0", "", "", "parallelism.tp", 9),
        ("order = \"pp-dp-tp\"", "", "", "parallelism.order", 9),
        (
            "dp_sharding = \"zero\"",
            "",
            "",
            "parallelism.dp_sharding",
            9,
        ),
        ("tp = 2", "micro_batches = 0", "", "job.micro_batches", 7),
        ("tp = 2", "schedule = \"zb\"", "", "job.schedule", 7),
        ("", "hidden = 1000000\nlayers = 100", "", "job.hidden", 7),
        (
            "",
            "seq_len = 10000000\nmicro_batch_size = 4096\nhidden = 16384",
            "",
            "job.seq_len",
            7,
        ),
        (
            "",
            "",
            "[[faults.sdc]]\nkind = \"in-flight\"\ngpu = 1\nat_step = 1",
            "faults.sdc",
            10,
        ),
        (
            "",
            "",
            "[recovery]\npolicy = \"per-replica\"",
            "recovery.policy",
            11,
        ),
    ];
    for (parallelism, job, extra, key, line) in cases {
        let text = format!("{}{extra}\n", layout_text(parallelism, job));
        let e = load_str("t", "bad.toml", &text, &[]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{parallelism} {job}: {e}");
        assert_eq!(
            e.line_col.map(|l| l.0),
            Some(line),
            "{parallelism} {job}: {e}"
        );
    }
    // Outside a table, through --set, the override is named.
    let e = load_str("t", "t.toml", MINIMAL, &["parallelism.tp=3".into()]).unwrap_err();
    assert_eq!(e.origin, "--set parallelism.tp=3");
}

/// The communicators' shrink law is fitted to NVIDIA NeMo-RL's measurements: 1.38 s at 32
/// ranks and 2.03 s at 1,024 (within 10 ms); an error adds the abort, a re-initialisation
/// costs its own time at any size.
#[test]
fn the_shrink_law_meets_the_published_shrink_times() {
    let comm = load_str("c", "<test>", MINIMAL, &[]).unwrap().control.comm;
    let s = |n, error| comm.rebuild_ns(n, error) as f64 / 1e9;
    assert!((s(32, false) - 1.38).abs() < 0.01, "{}", s(32, false));
    assert!((s(1024, false) - 2.03).abs() < 0.01, "{}", s(1024, false));
    assert_eq!(s(1024, true), s(1024, false) + 1.0);
    let reinit = crate::config::CommCosts {
        rebuild: crate::config::CommRebuild::Reinit,
        ..comm
    };
    assert_eq!(reinit.rebuild_ns(100_000, false), 30_000_000_000);
}
