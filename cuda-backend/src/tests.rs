//! Tests that need no GPU: the file store, the rendezvous over loopback TCP, the bootstrap
//! variables, the skip decision, the kernel source, NCCL framing, and the local transport and
//! job runner on host memory.

use std::path::PathBuf;
use std::time::Duration;

use trainer_core::collectives::{Algo, Collective, Op};
use trainer_core::Tag;

use crate::device::{DeviceError, HostRank, RankDevice};
use crate::job::{self, RunOptions};
use crate::nccl::{self, NcclPlan};
use crate::probe::{decide, GpuAvailability, SkipDecision};
use crate::rendezvous::{self, BootstrapEnv, RendezvousError, ID_LEN};
use crate::store::{FileStore, RankStorage, StoreError, Tiers};
use crate::{kernels, local};

/// A fresh directory under the target directory's temporary area, unique per test.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "faultline-cuda-backend-{}-{test}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---- file store ----

#[test]
fn store_round_trips_and_overwrites() {
    let store = FileStore::open(temp_dir("round-trip")).unwrap();
    store.write("a", b"first").unwrap();
    assert_eq!(store.read("a").unwrap(), b"first");
    store.write("a", b"second, longer").unwrap();
    assert_eq!(store.read("a").unwrap(), b"second, longer");
    store.write("empty", b"").unwrap();
    assert_eq!(store.read("empty").unwrap(), b"");
    assert_eq!(store.list().unwrap(), vec!["a".to_string(), "empty".into()]);
}

#[test]
fn store_detects_every_single_byte_corruption_and_truncation() {
    let dir = temp_dir("corrupt");
    let store = FileStore::open(&dir).unwrap();
    let data: Vec<u8> = (0..64u8).collect();
    store.write("blob", &data).unwrap();
    let path = dir.join("blob");
    let good = std::fs::read(&path).unwrap();
    for at in 0..good.len() {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        match store.read("blob") {
            Err(StoreError::Corrupt { name, .. }) => assert_eq!(name, "blob"),
            other => panic!("byte {at} flipped: expected Corrupt, got {other:?}"),
        }
    }
    for len in [0, 5, 23, good.len() - 1] {
        std::fs::write(&path, &good[..len]).unwrap();
        assert!(
            matches!(store.read("blob"), Err(StoreError::Corrupt { .. })),
            "truncated to {len}"
        );
    }
    std::fs::write(&path, &good).unwrap();
    assert_eq!(store.read("blob").unwrap(), data);
}

#[test]
fn store_errors_are_typed() {
    let store = FileStore::open(temp_dir("errors")).unwrap();
    assert!(matches!(
        store.read("missing"),
        Err(StoreError::NotFound { .. })
    ));
    for bad in [
        "",
        ".hidden",
        "..",
        "a/../b",
        "../outside",
        "/etc/passwd",
        "a//b",
        "a/",
        "a/./b",
        "a\\b",
        "ckpt/.tmp-1-x",
        "nul\0",
    ] {
        assert!(
            matches!(store.write(bad, b"x"), Err(StoreError::BadName { .. })),
            "{bad:?}"
        );
        assert!(matches!(store.read(bad), Err(StoreError::BadName { .. })));
    }
}

#[test]
fn store_never_lists_or_reads_a_blob_still_being_written() {
    let dir = temp_dir("temp");
    let store = FileStore::open(&dir).unwrap();
    store.write("done", b"ok").unwrap();
    // What a crash between write and rename leaves behind.
    std::fs::write(dir.join(".tmp-123-half"), b"FLTBLOB1 torn").unwrap();
    assert_eq!(store.list().unwrap(), vec!["done".to_string()]);
    assert!(matches!(
        store.read("half"),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn store_names_are_paths_listed_by_prefix_and_deleted() {
    let dir = temp_dir("paths");
    let store = FileStore::open(&dir).unwrap();
    for step in [12u64, 8] {
        for rank in [1, 0] {
            let name = format!("ckpt/{step:012}/shard-{rank:06}");
            store.write(&name, name.as_bytes()).unwrap();
        }
    }
    store.write("ckpt/000000000008/manifest", b"m").unwrap();
    store.write("other", b"o").unwrap();
    assert!(dir.join("ckpt/000000000012/shard-000001").is_file());
    assert_eq!(
        store.list_prefix("ckpt/").unwrap(),
        [
            "ckpt/000000000008/manifest",
            "ckpt/000000000008/shard-000000",
            "ckpt/000000000008/shard-000001",
            "ckpt/000000000012/shard-000000",
            "ckpt/000000000012/shard-000001",
        ]
    );
    assert_eq!(
        store
            .list_prefix("ckpt/000000000012/shard-00000")
            .unwrap()
            .len(),
        2
    );
    assert_eq!(store.list().unwrap().len(), 6);
    assert_eq!(
        store.read("ckpt/000000000012/shard-000001").unwrap(),
        b"ckpt/000000000012/shard-000001"
    );
    // A blob in a subdirectory being written is not listed either.
    std::fs::write(dir.join("ckpt/000000000012/.tmp-9-shard-000002"), b"torn").unwrap();
    assert_eq!(store.list_prefix("ckpt/000000000012/").unwrap().len(), 2);
    std::fs::remove_file(dir.join("ckpt/000000000012/.tmp-9-shard-000002")).unwrap();
    for rank in 0..2 {
        store
            .delete(&format!("ckpt/000000000012/shard-{rank:06}"))
            .unwrap();
    }
    // Deleting what is not there is fine; the emptied directory is gone.
    store.delete("ckpt/000000000012/shard-000000").unwrap();
    assert!(!dir.join("ckpt/000000000012").exists());
    assert!(matches!(
        store.delete("../x"),
        Err(StoreError::BadName { .. })
    ));
    // A store whose directory does not exist yet is empty.
    assert!(FileStore::at(dir.join("nothing-yet"))
        .list_prefix("")
        .unwrap()
        .is_empty());
}

#[test]
fn rank_storage_keeps_trainer_cores_contract_on_real_files() {
    use trainer_core::{Blob, StorageError, Tier, WriteStatus, WriteTicket};
    let root = temp_dir("tiers");
    let tiers = Tiers::new(root.join("persistent"), root.join("host"), 2);
    let node0 = RankStorage::new(tiers.clone(), 0);
    let node1 = RankStorage::new(tiers, 1);
    let blob = Blob {
        bytes: vec![1, 2, 3],
        modelled_bytes: 1 << 40,
    };
    node0.put(Tier::Persistent, "ckpt/a", &blob).unwrap();
    assert_eq!(node1.get(Tier::Persistent, "ckpt/a"), Ok(blob.clone()));
    // Host is per node; Peer { node } is that node's host directory.
    node0.put(Tier::Host, "h", &blob).unwrap();
    assert_eq!(
        node1.get(Tier::Host, "h"),
        Err(StorageError::NotFound { name: "h".into() })
    );
    assert_eq!(node1.get(Tier::Peer { node: 0 }, "h"), Ok(blob.clone()));
    assert!(root.join("host/node-000000/h").is_file());
    assert_eq!(
        node0.get(Tier::Peer { node: 2 }, "h"),
        Err(StorageError::Unavailable {
            tier: Tier::Peer { node: 2 }
        })
    );
    let ticket = node0.put_async(Tier::Peer { node: 1 }, "ckpt/p", &blob);
    assert_eq!(node0.poll(ticket), WriteStatus::Durable);
    assert_eq!(node1.list(Tier::Host, "ckpt/"), ["ckpt/p"]);
    assert_eq!(node0.poll(WriteTicket(99)), WriteStatus::Failed);
    // Names that would leave the tier's directory: typed errors, nothing written.
    for bad in ["../escape", "/abs", "a/../../b"] {
        assert_eq!(
            node0.put(Tier::Persistent, bad, &blob),
            Err(StorageError::WriteFailed { name: bad.into() })
        );
        let ticket = node0.put_async(Tier::Host, bad, &blob);
        assert_eq!(node0.poll(ticket), WriteStatus::Failed);
        assert_eq!(
            node0.get(Tier::Persistent, bad),
            Err(StorageError::NotFound { name: bad.into() })
        );
        node0.delete(Tier::Persistent, bad);
    }
    assert!(!root.join("escape").exists());
    // A corrupt blob reads as missing, so that a restore falls back to another copy.
    let path = root.join("persistent/ckpt/a");
    let mut bytes = std::fs::read(&path).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(
        node0.get(Tier::Persistent, "ckpt/a"),
        Err(StorageError::NotFound { .. })
    ));
    node0.delete(Tier::Persistent, "ckpt/a");
    assert!(node0.list(Tier::Persistent, "").is_empty());
}

// ---- bootstrap and rendezvous ----

fn env_of(pairs: &[(&str, &str)]) -> Result<BootstrapEnv, String> {
    let table: std::collections::BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    BootstrapEnv::from_lookup(|name| table.get(name).cloned()).map_err(|e| e.to_string())
}

#[test]
fn bootstrap_reads_the_usual_variables_and_names_the_bad_one() {
    let ok = [
        ("RANK", "3"),
        ("WORLD_SIZE", "8"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];
    let env = env_of(&ok).unwrap();
    assert_eq!(
        env,
        BootstrapEnv {
            rank: 3,
            world_size: 8,
            master_addr: "10.0.0.1".into(),
            master_port: 29500,
            local_rank: 3,
        }
    );
    let mut with_local = ok.to_vec();
    with_local.push(("LOCAL_RANK", "1"));
    assert_eq!(env_of(&with_local).unwrap().local_rank, 1);
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&ok[1..], "RANK: not set"),
        (&[("RANK", "x"), ok[1], ok[2], ok[3]], "RANK: \"x\" is not"),
        (
            &[("RANK", "8"), ok[1], ok[2], ok[3]],
            "RANK: 8 is not below WORLD_SIZE 8",
        ),
        (
            &[ok[0], ("WORLD_SIZE", "0"), ok[2], ok[3]],
            "WORLD_SIZE: must be",
        ),
        (&[ok[0], ok[1], ok[3]], "MASTER_ADDR: not set"),
        (
            &[ok[0], ok[1], ok[2], ("MASTER_PORT", "70000")],
            "MASTER_PORT: 70000",
        ),
        (
            &[ok[0], ok[1], ok[2], ("MASTER_PORT", "0")],
            "MASTER_PORT: 0",
        ),
    ];
    for (pairs, expected) in cases {
        let message = env_of(pairs).unwrap_err();
        assert!(message.starts_with(expected), "{message:?} vs {expected:?}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .unwrap()
}

type Joined = Result<[u8; ID_LEN], RendezvousError>;

/// Rank 0 serves an id to `joiners`, each a (rank, world size it claims); returns what rank 0
/// and each joiner got.
fn rendezvous_over_loopback(
    world_size: usize,
    joiners: &[(usize, usize)],
) -> (Result<(), RendezvousError>, Vec<Joined>) {
    let id: [u8; ID_LEN] = std::array::from_fn(|i| (i * 31 % 251) as u8);
    runtime().block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let deadline = Duration::from_secs(5);
        let server = rendezvous::serve(listener, world_size, id, deadline);
        // Every client runs concurrently with the server on this one thread.
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let handles: Vec<_> = joiners
                    .iter()
                    .map(|&(rank, world)| {
                        tokio::task::spawn_local(rendezvous::join(
                            "127.0.0.1",
                            port,
                            rank,
                            world,
                            deadline,
                        ))
                    })
                    .collect();
                let served = server.await;
                let mut got = Vec::new();
                for h in handles {
                    got.push(h.await.unwrap());
                }
                (served, got)
            })
            .await
    })
}

#[test]
fn rendezvous_hands_every_rank_the_id_over_loopback() {
    let (served, got) = rendezvous_over_loopback(4, &[(3, 4), (1, 4), (2, 4)]);
    served.unwrap();
    let expected: [u8; ID_LEN] = std::array::from_fn(|i| (i * 31 % 251) as u8);
    for id in got {
        assert_eq!(id.unwrap(), expected);
    }
}

#[test]
fn rendezvous_rejects_a_duplicate_rank_and_a_world_size_mismatch() {
    let (served, _) = rendezvous_over_loopback(3, &[(1, 3), (1, 3)]);
    assert!(matches!(
        served,
        Err(RendezvousError::DuplicateRank { rank: 1 })
    ));
    let (served, _) = rendezvous_over_loopback(3, &[(1, 3), (2, 4)]);
    match served {
        Err(RendezvousError::Protocol(m)) => assert!(m.contains("WORLD_SIZE is 4"), "{m}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[test]
fn rendezvous_times_out_when_rank_0_never_listens() {
    let result = runtime().block_on(async {
        // Bind and drop, so the port is very likely free and nobody listens.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        rendezvous::join("127.0.0.1", port, 1, 2, Duration::from_millis(300)).await
    });
    assert!(matches!(result, Err(RendezvousError::Timeout { .. })));
}

#[test]
fn share_id_with_a_world_of_one_needs_no_peer() {
    let env = BootstrapEnv {
        rank: 0,
        world_size: 1,
        master_addr: "127.0.0.1".into(),
        master_port: std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
        local_rank: 0,
    };
    let id = rendezvous::share_id(&env, || [7; ID_LEN], Duration::from_secs(5)).unwrap();
    assert_eq!(id, [7; ID_LEN]);
}

// ---- skipping without a GPU ----

#[test]
fn a_missing_gpu_skips_with_a_message_unless_required() {
    let absent = GpuAvailability::Absent {
        reason: "libcuda.so is not installed".into(),
    };
    let present = GpuAvailability::Present { device_count: 2 };
    let cases: &[(&GpuAvailability, Option<&str>, &str)] = &[
        (&present, None, "run"),
        (&present, Some("1"), "run"),
        (&absent, None, "skip"),
        (&absent, Some("0"), "skip"),
        (&absent, Some(""), "skip"),
        (&absent, Some("1"), "fail"),
        (&absent, Some("yes"), "fail"),
    ];
    for (availability, require, expected) in cases {
        let decision = decide("my_test", availability, *require);
        let kind = match &decision {
            SkipDecision::Run { device_count } => {
                assert_eq!(*device_count, 2);
                "run"
            }
            SkipDecision::Skip(line) => {
                assert!(
                    line.starts_with("SKIPPED my_test: no GPU (libcuda.so"),
                    "{line}"
                );
                assert!(line.contains("REQUIRE_GPU=1"), "{line}");
                "skip"
            }
            SkipDecision::Fail(m) => {
                assert!(m.contains("REQUIRE_GPU") && m.contains("libcuda.so"), "{m}");
                "fail"
            }
        };
        assert_eq!(kind, *expected, "{availability:?} REQUIRE_GPU={require:?}");
    }
}

// ---- kernel source ----

#[test]
fn kernels_are_declared_and_use_no_fused_or_racy_arithmetic() {
    for name in kernels::ALL {
        let declaration = format!("extern \"C\" __global__ void {name}(");
        assert_eq!(
            kernels::SOURCE.matches(&declaration).count(),
            1,
            "{name} must be declared once"
        );
    }
    // Checked paths must not fuse, race or approximate.
    for banned in [
        "atomic",
        "fma",
        "__f",
        "fast",
        "sqrt",
        "exp",
        "log",
        "sin",
        "cos",
        "pow",
        "__shfl",
        "__syncthreads",
        "double",
    ] {
        assert!(
            !kernels::SOURCE.contains(banned),
            "kernel source uses {banned}"
        );
    }
    // The hash is trainer-core's SplitMix64 finaliser, constant for constant.
    for constant in [
        "0x9e3779b97f4a7c15",
        "0xbf58476d1ce4e5b9",
        "0x94d049bb133111eb",
    ] {
        assert!(kernels::SOURCE.contains(constant));
    }
    let options = kernels::compile_options();
    assert_eq!(options.fmad, Some(false));
    assert_eq!(options.use_fast_math, Some(false));
    assert_eq!(options.ftz, Some(false));
    assert_eq!(options.prec_div, Some(true));
}

// ---- NCCL framing and placement ----

#[test]
fn nccl_frames_carry_tag_length_and_bits() {
    let cases = [
        (Tag::new(0, 0, 0), vec![]),
        (
            Tag::new(u64::MAX - 1, 17, 3),
            vec![1.0, -0.0, f32::from_bits(0x7fc0_0001)],
        ),
        (
            Tag::new(1 << 33, 0, 1 << 20),
            (0..100).map(|i| i as f32 / 3.0).collect(),
        ),
    ];
    for (tag, data) in cases {
        let frame = nccl::encode_frame(tag, &data, 123 << 33, nccl::HEADER_ELEMS + 100);
        assert_eq!(frame.len(), nccl::HEADER_ELEMS + 100);
        let (got, payload) = nccl::decode_frame(&frame).unwrap();
        assert_eq!(got, tag);
        assert_eq!(payload.modelled_bytes, 123 << 33);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&payload.data), bits(&data));
    }
    assert!(nccl::decode_frame(&[0.0; 16]).is_none());
    assert!(nccl::decode_frame(&[]).is_none());
}

#[test]
fn nccl_ranks_sharing_a_gpu_claim_their_own_host() {
    let plan = |rank: usize, local_world_size: usize, device_count: usize| NcclPlan {
        env: BootstrapEnv {
            rank,
            world_size: 8,
            master_addr: "127.0.0.1".into(),
            master_port: 1,
            local_rank: rank,
        },
        device_count,
        local_world_size,
    };
    assert_eq!(plan(5, 8, 8).ordinal(), 5);
    assert_eq!(plan(5, 8, 8).host_id(), None);
    assert_eq!(plan(5, 8, 1).ordinal(), 0);
    assert_eq!(plan(5, 8, 1).host_id().as_deref(), Some("faultline-rank-5"));
    assert_eq!(plan(3, 8, 2).ordinal(), 1);
}

// ---- the local transport and the job on host memory ----

fn exact_sum(world: usize, idx: usize) -> f32 {
    (0..world)
        .map(|r| job::collective_input(r, idx) as i64)
        .sum::<i64>() as f32
}

#[test]
fn local_transport_all_reduce_and_broadcast_are_exact_for_every_algorithm() {
    for &algo in Algo::ALL {
        for gpus in 1..=11 {
            for gpus_per_node in [1, 4] {
                let collective = Collective::new(algo);
                let elems = 37;
                let results = job::run_local_collective(
                    vec![HostRank; gpus],
                    gpus_per_node,
                    collective,
                    Op::AllReduce,
                    elems,
                    job::collective_input,
                );
                for (rank, result) in results.iter().enumerate() {
                    let data = result.as_ref().unwrap();
                    for (idx, value) in data.iter().enumerate() {
                        assert_eq!(
                            value.to_bits(),
                            exact_sum(gpus, idx).to_bits(),
                            "{algo:?} {gpus}/{gpus_per_node} rank {rank} elem {idx}"
                        );
                    }
                }
                let root_idx = gpus / 2;
                let results = job::run_local_collective(
                    vec![HostRank; gpus],
                    gpus_per_node,
                    collective,
                    Op::Broadcast { root_idx },
                    elems,
                    job::collective_input,
                );
                for result in results {
                    let expected: Vec<f32> = (0..elems)
                        .map(|i| job::collective_input(root_idx, i))
                        .collect();
                    assert_eq!(result.unwrap(), expected, "{algo:?} broadcast {gpus}");
                }
            }
        }
    }
}

#[test]
fn a_receive_nobody_sends_times_out_with_the_simulators_error() {
    use trainer_core::{Backend, CommError};
    let (tiers, _) = RunOptions::new().tiers(1);
    let world = local::LocalWorld::new(vec![HostRank; 2], 2, Duration::from_millis(50), tiers);
    let results = local::run_ranks(&world, |backend| async move {
        let tag = Tag::new(9, 1, 2);
        backend.recv(1 - backend.rank(), tag).await.map(|_| ())
    });
    for (rank, result) in results.into_iter().enumerate() {
        assert_eq!(
            result,
            Err(CommError::Timeout {
                peer: 1 - rank,
                tag: Tag::new(9, 1, 2)
            })
        );
    }
}

const JOB: &str = "
[cluster]
gpus = 8
gpus_per_node = 4
[job]
steps = 30
collective = \"ring\"
proxy_elems = 40
";

fn settings(sets: &[&str]) -> job::JobSettings {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    job::parse_scenario("small", "<test>", JOB, &sets).unwrap()
}

#[test]
fn scenario_settings_use_the_simulators_defaults_and_overrides() {
    let s = settings(&[]);
    assert_eq!(s.placement.world_size, 8);
    assert_eq!(s.placement.gpus_per_node, 4);
    assert_eq!(s.job.steps, 30);
    assert_eq!(s.job.batch_per_rank, 4);
    assert_eq!(s.job.learning_rate, 0.3);
    assert_eq!(s.job.data_seed, 0x5eed);
    // The simulator's default SDC checks, payload checksums included.
    assert_eq!(
        s.job.collective,
        Collective::new(Algo::Ring).with_checksums(true)
    );
    assert_eq!(
        s.job.detection,
        trainer_core::integrity::DetectionPolicy::DEFAULT
    );
    assert_eq!(s.seed, 1);
    let s = settings(&["job.collective=tree", "run.seed=9", "job.learning_rate=0.1"]);
    assert_eq!(s.job.collective.algo, Algo::Tree);
    assert_eq!(s.seed, 9);
    assert_eq!(s.job.learning_rate, 0.1);
    // Errors are the simulator's own (one reader): the override, the key, what is accepted.
    let bad = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        job::parse_scenario("small", "<test>", JOB, &sets).unwrap_err()
    };
    for (set, key, says) in [
        ("job.collective=star", Some("job.collective"), "\"star\""),
        ("cluster.gpus=0", Some("cluster.gpus"), "from 1 to 1000000"),
        ("job.steps=\"many\"", None, "expected an integer"),
        // Once run by this runner and refused by the simulator: now refused by both.
        (
            "cluster.gpus_per_node=512",
            Some("cluster.gpus_per_node"),
            "from 1 to 256",
        ),
        // Once silently ignored here: now an unknown key, with the key that was meant.
        ("job.proxy_elem=64", None, "did you mean `proxy_elems`?"),
    ] {
        let e = bad(&[set]);
        assert_eq!(e.origin, format!("--set {set}"), "{e}");
        assert_eq!(e.key.as_deref(), key, "{e}");
        assert!(e.to_string().contains(says), "{set}: {e}");
    }
    assert!(bad(&["nonsense"]).message.contains("expected KEY=VALUE"));
}

#[test]
fn host_run_trains_agrees_and_times_every_step() {
    let s = settings(&[]);
    let report = job::run_local_job(vec![HostRank; 8], &s, &RunOptions::new());
    assert_eq!(report.error, None);
    assert!(report.replicas_agree);
    assert_eq!(report.steps_completed, 30);
    assert!(report.final_loss < report.first_loss / 10.0);
    assert_eq!(report.timings.steps_timed, 30);
    assert_eq!(report.timings.source, "host-clock");
    assert_eq!(report.transport, "local");
    // The same job again gives the same bits.
    let again = job::run_local_job(vec![HostRank; 8], &s, &RunOptions::new());
    assert_eq!(again.param_digest, report.param_digest);
}

/// Host memory that counts the layer calls it is given: the local transport must hand every
/// layer of a layout job to the rank's device (the GPU arm's kernels), not compute it itself.
#[derive(Clone, Default)]
struct LayerCountingRank {
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl LayerCountingRank {
    fn count(&self) {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl RankDevice for LayerCountingRank {
    type Buffer = Vec<f32>;
    type Mark = <HostRank as RankDevice>::Mark;
    const TIMER: &'static str = HostRank::TIMER;

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>, DeviceError> {
        HostRank.upload(data)
    }
    fn copy_from_peer(&self, src: &Vec<f32>) -> Result<Vec<f32>, DeviceError> {
        HostRank.copy_from_peer(src)
    }
    fn download(&self, buffer: &Vec<f32>) -> Result<Vec<f32>, DeviceError> {
        HostRank.download(buffer)
    }
    fn add_assign(&self, acc: &mut [f32], src: &[f32]) -> Result<(), DeviceError> {
        HostRank.add_assign(acc, src)
    }
    fn sgd_update(&self, params: &mut [f32], grad: &[f32], lr: f32) -> Result<(), DeviceError> {
        HostRank.sgd_update(params, grad, lr)
    }
    fn layer_forward(
        &self,
        weights: &[f32],
        width: usize,
        h: &[f32],
        pre: &mut [f32],
        partial: &mut [f32],
    ) -> Result<(), DeviceError> {
        self.count();
        HostRank.layer_forward(weights, width, h, pre, partial)
    }
    fn layer_backward(
        &self,
        weights: &[f32],
        width: usize,
        saved: (&[f32], &[f32], &[f32]),
        grad: &mut [f32],
        partial_dh: &mut [f32],
    ) -> Result<(), DeviceError> {
        self.count();
        HostRank.layer_backward(weights, width, saved, grad, partial_dh)
    }
    fn synchronize(&self) -> Result<(), DeviceError> {
        HostRank.synchronize()
    }
    fn mark(&self) -> Result<Self::Mark, DeviceError> {
        HostRank.mark()
    }
    fn elapsed_ns(&self, from: &Self::Mark, to: &Self::Mark) -> Result<u64, DeviceError> {
        HostRank.elapsed_ns(from, to)
    }
    fn describe(&self) -> String {
        "host, counting layer calls".into()
    }
}

#[test]
fn a_layout_job_runs_every_layer_on_the_ranks_device() {
    let text = "[cluster]\ngpus = 8\ngpus_per_node = 4\n[job]\nsteps = 3\nproxy_layers = 4\n\
                proxy_width = 16\nmicro_batches = 4\nmicro_batch_size = 2\n\
                [parallelism]\ntp = 2\npp = 2\n";
    let s = job::parse_scenario("layout", "<test>", text, &[]).unwrap();
    let device = LayerCountingRank::default();
    let report = job::run_local_job(vec![device.clone(); 8], &s, &RunOptions::new());
    assert_eq!(report.error, None);
    assert!(report.replicas_agree);
    // Each of the 4 layers on its 2 TP ranks in each of 2 replicas, for 4 micro-batches and 3
    // steps: once forward, once backward.
    let calls = device.calls.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(calls, 2 * (4 * 2 * 2) * 4 * 3);
    let host = job::run_local_job(vec![HostRank; 8], &s, &RunOptions::new());
    assert_eq!(report.param_digest, host.param_digest);
}

/// Options that keep every tier under `temp_dir(test)`.
fn options_in(test: &str) -> (RunOptions, PathBuf) {
    let dir = temp_dir(test);
    let mut options = RunOptions::new();
    options.checkpoint_dir = Some(dir.join("persistent"));
    options.host_dir = Some(dir.join("host"));
    (options, dir)
}

#[test]
fn restoring_trainer_cores_checkpoint_files_ends_with_the_uninterrupted_parameters() {
    let s = settings(&[]);
    let uninterrupted = job::run_local_job(vec![HostRank; 8], &s, &RunOptions::new());
    for policy in ["restart", "in-memory"] {
        let sets = |extra: &[&str]| {
            let mut all = vec!["checkpoint.interval=10"];
            let policy = format!("recovery.policy={policy}");
            all.push(&policy);
            all.extend_from_slice(extra);
            settings(&all)
        };
        let (mut options, dir) = options_in(&format!("restore-{policy}"));
        // Interrupted after 25 steps: the step-20 checkpoint was committed at step 21.
        let first = job::run_local_job(vec![HostRank; 8], &sets(&["job.steps=25"]), &options);
        assert_eq!(first.error, None);
        assert_eq!(first.steps_completed, 25);
        assert_eq!(first.checkpoints_committed, 2);
        let manifests: Vec<_> = FileStore::at(dir.join("persistent"))
            .list_prefix("manifests/")
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(
            manifests,
            ["manifests/000000000010", "manifests/000000000020"]
        );
        // Each node's host directory holds its ranks' shards; with buddy copies, also the
        // previous node's.
        let host = FileStore::at(dir.join("host/node-000001"));
        assert_eq!(host.list_prefix("ckpt/000000000020/").unwrap().len(), 8);
        // A new process restores step 20 and trains the last 10 steps.
        options.restore = true;
        let resumed = job::run_local_job(vec![HostRank; 8], &sets(&[]), &options);
        assert_eq!(resumed.error, None, "{policy}");
        assert_eq!(resumed.resumed_from_step, Some(20), "{policy}");
        let tier = if policy == "restart" {
            "persistent"
        } else {
            "host"
        };
        assert_eq!(
            resumed.restores_by_tier,
            [(tier.to_string(), 1)].into_iter().collect(),
            "{policy}"
        );
        assert_eq!(resumed.steps_completed, 30);
        assert_eq!(resumed.param_digest, uninterrupted.param_digest, "{policy}");
        assert_eq!(
            resumed.final_loss.to_bits(),
            uninterrupted.final_loss.to_bits()
        );
        // A corrupt shard of step 20: the restore falls back to step 10.
        for name in FileStore::at(dir.join("host"))
            .list_prefix("")
            .unwrap()
            .into_iter()
            .filter(|n| n.ends_with("000000000020/shard-000003"))
        {
            std::fs::write(dir.join("host").join(name), b"garbage").unwrap();
        }
        std::fs::write(
            dir.join("persistent/ckpt/000000000020/shard-000003"),
            b"garbage",
        )
        .unwrap();
        let fallback = job::run_local_job(vec![HostRank; 8], &sets(&[]), &options);
        assert_eq!(fallback.resumed_from_step, Some(10), "{policy}");
        assert_eq!(fallback.param_digest, uninterrupted.param_digest);
    }
    // With nothing to restore, a restarted process starts over, as trainer-core says.
    let (mut empty, _) = options_in("restore-empty");
    empty.restore = true;
    let report = job::run_local_job(
        vec![HostRank; 8],
        &settings(&["checkpoint.interval=10"]),
        &empty,
    );
    assert_eq!(report.error, None);
    assert_eq!(report.resumed_from_step, None);
    assert_eq!(report.param_digest, uninterrupted.param_digest);
}

#[test]
fn a_failed_rank_restarts_every_rank_through_the_barrier_and_training_recovers() {
    let uninterrupted = job::run_local_job(vec![HostRank; 8], &settings(&[]), &RunOptions::new());
    for policy in ["restart", "in-memory"] {
        let (options, _) = options_in(&format!("barrier-{policy}"));
        let mut s = settings(&[
            "checkpoint.interval=5",
            &format!("recovery.policy={policy}"),
        ]);
        // Rank 5 fails at step 13, then rank 0 at step 27 (after the first restart).
        s.failures_at_step = vec![(5, 13), (0, 27)];
        let report = job::run_local_job(vec![HostRank; 8], &s, &options);
        assert_eq!(report.error, None, "{policy}");
        assert!(report.replicas_agree);
        assert_eq!(report.restarts, 2, "{policy}");
        // Step 13 restarts from the step-10 checkpoint, step 27 from step 25: 3 + 2 steps again.
        assert_eq!(report.recomputed_steps, 5, "{policy}");
        let tier = if policy == "restart" {
            "persistent"
        } else {
            "host"
        };
        assert_eq!(
            report.restores_by_tier,
            [(tier.to_string(), 2)].into_iter().collect(),
            "{policy}"
        );
        assert_eq!(report.param_digest, uninterrupted.param_digest, "{policy}");
        // The same failures again give the same run.
        let again = job::run_local_job(vec![HostRank; 8], &s, &options_in("barrier-again").0);
        assert_eq!(again.param_digest, report.param_digest);
        assert_eq!(again.recomputed_steps, report.recomputed_steps);
    }
    // Without checkpoints a restart trains from step 0 again.
    let mut s = settings(&[]);
    s.failures_at_step = vec![(2, 4)];
    let report = job::run_local_job(vec![HostRank; 8], &s, &RunOptions::new());
    assert_eq!((report.restarts, report.recomputed_steps), (1, 4));
    assert_eq!(report.param_digest, uninterrupted.param_digest);
    // Past recovery.max_restarts the job is abandoned, and the report says why.
    let mut s = settings(&["recovery.max_restarts=1"]);
    s.failures_at_step = vec![(1, 3), (6, 7)];
    let report = job::run_local_job(vec![HostRank; 8], &s, &RunOptions::new());
    assert_eq!(report.restarts, 1);
    // Rank 6 fails as step 7 begins; whether rank 0 had finished step 6 by then is the
    // interleaving's to say (the collectives' send order moves it), never more.
    let completed = report.steps_completed;
    assert!((6..=7).contains(&completed), "{completed} steps");
    assert_eq!(
        report.error.as_deref(),
        Some(
            format!(
                "rank 0: the job was abandoned after {completed} of 30 steps and 1 restarts; \
                 last failure: aborted"
            )
            .as_str()
        )
    );
}

#[test]
fn the_scenarios_crashes_at_a_step_are_injected_on_the_local_transport() {
    let text = format!(
        "{JOB}[checkpoint]\ninterval = 4\n[[faults.crash]]\nnode = 1\nat_step = 9\n\
         [[faults.crash]]\ngpu = 2\nat = \"1s\"\n"
    );
    let s = job::parse_scenario("crash", "<test>", &text, &[]).unwrap();
    assert_eq!(s.failures_at_step, [(4, 9), (5, 9), (6, 9), (7, 9)]);
    assert_eq!(s.crashes_not_injected, 1);
    // Hangs and desyncs are the simulator's: counted, so the runner can say it left them out.
    let gray = format!(
        "{text}[[faults.hang]]\ngpu = 3\nat_step = 2\n[[faults.desync]]\ngpu = 1\nat_step = 5\n"
    );
    let g = job::parse_scenario("gray", "<test>", &gray, &[]).unwrap();
    assert_eq!(g.hangs_not_injected, 2);
    // So are fail-slow links.
    let slow = format!("{text}[[faults.degrade]]\nnic = 3\nat = \"1s\"\n");
    let d = job::parse_scenario("slow", "<test>", &slow, &[]).unwrap();
    assert_eq!(d.degrades_not_injected, (1, false));
    let report = job::run_local_job(vec![HostRank; 8], &s, &options_in("scenario-crash").0);
    assert_eq!(report.error, None);
    // Rank 0 had not finished step 8, so the step-8 checkpoint was never committed: the job
    // goes back to step 4, as in scenarios/node-crash-mid-checkpoint.toml.
    assert_eq!((report.restarts, report.recomputed_steps), (1, 4));
    let mut quiet = options_in("scenario-crash-off").0;
    quiet.inject_faults = false;
    assert_eq!(
        job::run_local_job(vec![HostRank; 8], &s, &quiet).restarts,
        0
    );
    let bad = job::parse_scenario(
        "crash",
        "<test>",
        &format!("{JOB}[[faults.crash]]\nnode = 9\nat_step = 1\n"),
        &[],
    );
    let bad = bad.unwrap_err();
    assert_eq!(bad.key.as_deref(), Some("faults.crash.0.node"), "{bad}");
    assert_eq!(bad.line_col.map(|(line, _)| line), Some(10), "{bad}");
}

// ---- the NCCL transport's protocol, over in-process channels ----

/// Runs `task` on every rank of a framed world of `world_size` ranks, one thread each, and
/// returns the results in rank order.
fn on_framed_world<T: Send>(
    world_size: usize,
    gpus_per_node: usize,
    max_payload_elems: usize,
    tiers: &Tiers,
    task: impl Fn(&nccl::FramedBackend<nccl::ChannelLink>) -> T + Sync,
) -> Vec<T> {
    let placement = trainer_core::Placement::new(world_size, gpus_per_node);
    std::thread::scope(|scope| {
        let handles: Vec<_> = nccl::ChannelLink::world(world_size)
            .into_iter()
            .enumerate()
            .map(|(rank, link)| {
                let task = &task;
                scope.spawn(move || {
                    let backend = nccl::FramedBackend::new(
                        link,
                        placement,
                        rank,
                        max_payload_elems,
                        Duration::from_secs(30),
                        tiers.clone(),
                    );
                    let result = task(&backend);
                    backend.finish().unwrap();
                    result
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn framed_transport_trains_the_same_parameters_as_the_local_one() {
    let s = settings(&["job.collective=hierarchical", "checkpoint.interval=10"]);
    let local = job::run_local_job(vec![HostRank; 8], &s, &RunOptions::new());
    let (mut options, dir) = options_in("framed");
    let (tiers, _) = options.tiers(2);
    let max = nccl::max_payload_elems(&s.job);
    let run = |options: &RunOptions| {
        on_framed_world(8, 4, max, &tiers, |backend| {
            let (outcome, resumed) =
                nccl::block_on(job::train_rank(backend, s.job.clone(), options, 1));
            let digest = outcome.param_digest;
            let agree = nccl::block_on(nccl::replicas_agree(backend, digest)).unwrap();
            let steps = backend
                .take_marks()
                .iter()
                .filter(|m| matches!(m.event, trainer_core::Event::StepEnd { .. }))
                .count();
            (job::hex(digest), agree, steps, resumed)
        })
    };
    for (rank, (digest, agree, steps, resumed)) in run(&options).into_iter().enumerate() {
        assert_eq!(digest, local.param_digest, "rank {rank}");
        assert!(agree);
        assert_eq!((steps, resumed), (30, None));
    }
    // Its checkpoints are trainer-core's, on real files: a restarted world restores step 20
    // (the step-30 checkpoint was never committed) and ends with the same parameters.
    assert!(dir.join("persistent/manifests/000000000020").is_file());
    options.restore = true;
    for (rank, (digest, agree, steps, resumed)) in run(&options).into_iter().enumerate() {
        assert_eq!(digest, local.param_digest, "rank {rank}");
        assert!(agree);
        assert_eq!((steps, resumed), (10, Some(20)));
    }
}

#[test]
fn framed_transport_collectives_match_the_local_transport_bit_for_bit() {
    fn awkward(rank: usize, idx: usize) -> f32 {
        let h = trainer_core::digest::mix64(((rank as u64) << 32) ^ idx as u64);
        ((h >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2f32.powi((h % 20) as i32 - 10)
    }
    for (gpus, gpus_per_node) in [(1, 1), (6, 3), (8, 8), (11, 4)] {
        for &algo in Algo::ALL {
            for op in [
                Op::AllReduce,
                Op::ReduceScatter,
                Op::AllGather,
                Op::Broadcast { root_idx: gpus - 1 },
                Op::Barrier,
            ] {
                let collective = Collective::new(algo);
                let elems = 29;
                let expected = job::run_local_collective(
                    vec![HostRank; gpus],
                    gpus_per_node,
                    collective,
                    op,
                    elems,
                    awkward,
                );
                let (tiers, _) = RunOptions::new().tiers(gpus.div_ceil(gpus_per_node));
                let got = on_framed_world(gpus, gpus_per_node, elems, &tiers, |backend| {
                    use trainer_core::Backend;
                    let mut data: Vec<f32> =
                        (0..elems).map(|i| awkward(backend.rank(), i)).collect();
                    let group = backend.placement().world();
                    nccl::block_on(collective.run(backend, &group, op, 0, &mut data, 116))
                        .map(|()| data)
                });
                let bits = |r: &Result<Vec<f32>, trainer_core::CommError>| {
                    r.as_ref()
                        .unwrap()
                        .iter()
                        .map(|f| f.to_bits())
                        .collect::<Vec<_>>()
                };
                for rank in 0..gpus {
                    assert_eq!(
                        bits(&got[rank]),
                        bits(&expected[rank]),
                        "{algo:?} {op:?} {gpus}/{gpus_per_node} rank {rank}"
                    );
                }
            }
        }
    }
}

#[test]
fn framed_transport_matches_tags_whatever_order_frames_arrive_in() {
    use trainer_core::{Backend, CommError, Payload};
    let (tiers, _) = RunOptions::new().tiers(1);
    let results = on_framed_world(2, 2, 4, &tiers, |backend| {
        let (a, b, c) = (Tag::new(1, 0, 0), Tag::new(1, 0, 1), Tag::new(2, 5, 0));
        if backend.rank() == 0 {
            for (tag, value) in [(a, 1.0), (b, 2.0), (c, 3.0)] {
                nccl::block_on(backend.send(1, tag, Payload::new(vec![value; 3], 12))).unwrap();
            }
            backend.finish().unwrap();
            Vec::new()
        } else {
            // Asked for in another order than sent: earlier frames wait in the stash.
            [c, a, b]
                .into_iter()
                .map(|tag| nccl::block_on(backend.recv(0, tag)).unwrap().data[0])
                .chain([match nccl::block_on(backend.recv(0, Tag::new(9, 9, 9))) {
                    Err(CommError::Timeout { peer: 0, .. }) => -1.0,
                    other => panic!("expected a timeout, got {other:?}"),
                }])
                .collect()
        }
    });
    assert_eq!(results[1], vec![3.0, 1.0, 2.0, -1.0]);
}
