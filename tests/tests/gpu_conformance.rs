//! Conformance: the simulator and the real backend run the same trainer-core code and must give
//! the same bits. One test body per property, with a simulated arm, a host arm (cuda-backend's
//! local transport on host memory, which runs everywhere) and a GPU arm (the same transport on
//! CUDA streams), which runs where a GPU is present and says clearly when it skipped
//! (REQUIRE_GPU=1 makes a skip fail).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use cuda_backend::device::{CudaRank, Gpu, HostRank};
use cuda_backend::job::{self as gpu_job, RunOptions};
use cuda_backend::probe::gpu_or_skip;
use faultline_sim::executor::{run_ranks, ExecutorKind};
use faultline_sim::run::{collective_input, run_scenario, Reference};
use faultline_sim::scenario::load_str;
use faultline_sim::topology::Topology;
use faultline_sim::world::{SimBackend, World, WorldConfig};
use trainer_core::collectives::{Algo, Collective, Op};
use trainer_core::digest::mix64;
use trainer_core::{Backend, CommError, Placement};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    Simulated,
    Host,
    Gpu,
}

/// The arms this machine can run, and the GPU for the GPU arm. Says once per test when the
/// GPU arm skipped; fails under REQUIRE_GPU=1 without a GPU.
fn arms(test: &str) -> (Vec<Arm>, Option<Arc<Gpu>>) {
    match gpu_or_skip(test) {
        Some(_) => {
            let gpu = Gpu::open(0).expect("GPU 0 opens and the kernels compile");
            (vec![Arm::Simulated, Arm::Host, Arm::Gpu], Some(gpu))
        }
        None => (vec![Arm::Simulated, Arm::Host], None),
    }
}

/// `count` ranks on `gpu`, one stream each.
fn gpu_ranks(gpu: Option<&Arc<Gpu>>, count: usize) -> Vec<CudaRank> {
    let gpu = gpu.expect("the GPU arm runs only with a GPU");
    (0..count).map(|_| gpu.rank().unwrap()).collect()
}

const SCENARIO: &str = "
[cluster]
gpus = 8
gpus_per_node = 8
[job]
steps = 50
proxy_elems = 256
";

/// (param_digest, final_loss bits, replicas agree) of the scenario `text` on one arm, which
/// must complete all `steps`.
fn train(arm: Arm, gpu: Option<&Arc<Gpu>>, text: &str, steps: u64, sets: &[String]) -> Trained {
    if arm == Arm::Simulated {
        let scenario = load_str("conformance", "<test>", text, sets).unwrap();
        let report = run_scenario(&scenario).unwrap();
        return (
            report.param_digest,
            report.final_loss.to_bits(),
            report.replicas_agree,
        );
    }
    let settings = gpu_job::parse_scenario("conformance", "<test>", text, sets).unwrap();
    let world = settings.placement.world_size;
    let report = match arm {
        Arm::Host => gpu_job::run_local_job(vec![HostRank; world], &settings, &RunOptions::new()),
        _ => gpu_job::run_local_job(gpu_ranks(gpu, world), &settings, &RunOptions::new()),
    };
    assert_eq!(report.error, None, "{arm:?}");
    assert_eq!(report.steps_completed, steps, "{arm:?}");
    (
        report.param_digest,
        report.final_loss.to_bits(),
        report.replicas_agree,
    )
}

type Trained = (String, u32, bool);

#[test]
fn the_training_job_ends_with_the_simulators_parameters_on_every_arm() {
    let (arms, gpu) = arms("the_training_job_ends_with_the_simulators_parameters_on_every_arm");
    // The last case also checkpoints (trainer-core's checkpoints, to real files on the real
    // arms): the parameters must not change.
    for (algo, checkpoint) in [("hierarchical", false), ("ring", false), ("ring", true)] {
        let mut sets = vec![format!("job.collective={algo}"), "run.seed=5".to_string()];
        if checkpoint {
            sets.push("checkpoint.interval=10".to_string());
        }
        let expected = train(Arm::Simulated, None, SCENARIO, 50, &sets);
        assert!(expected.2, "the simulator's replicas disagree");
        for &arm in &arms {
            let got = train(arm, gpu.as_ref(), SCENARIO, 50, &sets);
            assert_eq!(got, expected, "{arm:?} with {algo}");
        }
    }
}

/// A layout with tensor, pipeline and data parallelism all above 1 (tp 2 inside a node of 4
/// GPUs, pp 2, dp 2): the MLP split Megatron-style, its activations sent stage to stage.
const LAYOUT_SCENARIO: &str = "
[cluster]
gpus = 8
gpus_per_node = 4
[job]
steps = 3
proxy_layers = 4
proxy_width = 16
micro_batches = 4
micro_batch_size = 2
learning_rate = 0.05
layers = 8
hidden = 1024
seq_len = 512
[parallelism]
tp = 2
pp = 2
";

#[test]
fn a_layout_job_ends_with_the_simulators_parameters_on_every_arm() {
    let (arms, gpu) = arms("a_layout_job_ends_with_the_simulators_parameters_on_every_arm");
    let cases = [
        ("1f1b", "none", "ring"),
        ("gpipe", "none", "ring"),
        ("1f1b", "optimizer", "tree"),
        ("gpipe", "full", "hierarchical"),
    ];
    let mut digests = Vec::new();
    for (schedule, sharding, algo) in cases {
        let sets = vec![
            format!("job.schedule={schedule}"),
            format!("parallelism.dp_sharding={sharding}"),
            format!("job.collective={algo}"),
            "run.seed=5".to_string(),
        ];
        let expected = train(Arm::Simulated, None, LAYOUT_SCENARIO, 3, &sets);
        assert!(expected.2, "the simulator's replicas disagree: {sets:?}");
        for &arm in &arms {
            let got = train(arm, gpu.as_ref(), LAYOUT_SCENARIO, 3, &sets);
            assert_eq!(got, expected, "{arm:?} with {sets:?}");
        }
        digests.push(expected.0);
    }
    // Every case trains the same model on the same samples in the same order of sums.
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
}

/// The bundled layout scenario (1,024 ranks: tp 8, pp 4, dp 32, sharded optimizer) on the host
/// arm. Host only: 1,024 streams on one GPU check nothing the 8-rank layout above does not;
/// run-on-gpu.sh runs the scenario's GPU arm at 8 ranks.
#[test]
fn the_bundled_layout_scenario_ends_with_the_simulators_parameters_on_the_host_arm() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/layout-quickstart.toml");
    let expected = run_scenario(&faultline_sim::scenario::load(&path, &[]).unwrap()).unwrap();
    let settings = gpu_job::load_scenario(&path, &[]).unwrap();
    let world = settings.placement.world_size;
    let report = gpu_job::run_local_job(vec![HostRank; world], &settings, &RunOptions::new());
    assert_eq!(report.error, None);
    assert!(report.replicas_agree && expected.replicas_agree);
    assert_eq!(report.param_digest, expected.param_digest);
    assert_eq!(report.final_loss.to_bits(), expected.final_loss.to_bits());
}

/// Values whose sums round, so that a different summation order would change the bits.
fn awkward_input(rank: usize, idx: usize) -> f32 {
    let h = mix64(((rank as u64) << 32) ^ idx as u64);
    let mantissa = (h >> 40) as f32 / (1u64 << 24) as f32;
    let exponent = ((h >> 8) % 24) as i32 - 12;
    let sign = if h & 1 == 0 { 1.0 } else { -1.0 };
    sign * mantissa * 2f32.powi(exponent)
}

type RankResults = Vec<Result<Vec<f32>, CommError>>;

/// Every rank's buffer after `op`, on one arm.
fn collective(
    arm: Arm,
    gpu: Option<&Arc<Gpu>>,
    collective: Collective,
    op: Op,
    placement: Placement,
    elems: usize,
    input: fn(usize, usize) -> f32,
) -> RankResults {
    let (gpus, gpus_per_node) = (placement.world_size, placement.gpus_per_node);
    match arm {
        Arm::Simulated => {
            let text = format!(
                "[cluster]\ngpus = {gpus}\ngpus_per_node = {gpus_per_node}\n[job]\nsteps = 1\n"
            );
            let scenario = load_str("c", "<test>", &text, &[]).unwrap();
            let topology = Topology::new(&scenario.cluster, &scenario.fabric);
            let world = Rc::new(RefCell::new(World::new(WorldConfig::bare(
                topology,
                scenario.gpu_achieved_flops_per_s,
            ))));
            let results = run_ranks(ExecutorKind::Fifo, 3, &world, |rank| {
                let backend = SimBackend::new(world.clone(), rank);
                async move {
                    let mut data: Vec<f32> = (0..elems).map(|i| input(rank, i)).collect();
                    let group = backend.placement().world();
                    collective
                        .run(&backend, &group, op, 0, &mut data, (elems * 4) as u64)
                        .await
                        .map(|()| data)
                }
            })
            .unwrap();
            results
        }
        Arm::Host => gpu_job::run_local_collective(
            vec![HostRank; gpus],
            gpus_per_node,
            collective,
            op,
            elems,
            input,
        ),
        Arm::Gpu => gpu_job::run_local_collective(
            gpu_ranks(gpu, gpus),
            gpus_per_node,
            collective,
            op,
            elems,
            input,
        ),
    }
}

fn bits(results: &RankResults) -> Vec<Vec<u32>> {
    results
        .iter()
        .map(|r| r.as_ref().unwrap().iter().map(|f| f.to_bits()).collect())
        .collect()
}

#[test]
fn every_collective_gives_the_simulators_bits_on_every_arm() {
    let (arms, gpu) = arms("every_collective_gives_the_simulators_bits_on_every_arm");
    let gpu = gpu.as_ref();
    let placements = [
        Placement::new(8, 8),
        Placement::new(12, 4),
        Placement::new(7, 3),
    ];
    // faultline-gpu's `collective` command uses cuda-backend's copy of the input function.
    for (rank, idx) in (0..40).flat_map(|r| (0..40).map(move |i| (r, i))) {
        assert_eq!(
            gpu_job::collective_input(rank, idx),
            collective_input(rank, idx)
        );
    }
    for placement in placements {
        for &algo in Algo::ALL {
            let gpus = placement.world_size;
            let ops = [
                Op::AllReduce,
                Op::ReduceScatter,
                Op::AllGather,
                Op::Broadcast { root_idx: gpus / 2 },
                Op::Barrier,
            ];
            for op in ops {
                let c = Collective::new(algo);
                let what = format!("{} {} on {placement:?}", algo.name(), op.name());
                // Rounding inputs: every rank's whole buffer equals the simulator's, bit for bit.
                let expected = bits(&collective(
                    Arm::Simulated,
                    None,
                    c,
                    op,
                    placement,
                    53,
                    awkward_input,
                ));
                // Integer inputs: every rank also equals the exact reference.
                let reference = Reference::new(&c, &placement, op, 53);
                for &arm in &arms {
                    let got = collective(arm, gpu, c, op, placement, 53, awkward_input);
                    assert_eq!(bits(&got), expected, "{arm:?}: {what}");
                    let exact = collective(arm, gpu, c, op, placement, 53, collective_input);
                    for (rank, result) in exact.iter().enumerate() {
                        assert!(
                            reference.matches(rank, result.as_ref().unwrap()),
                            "{arm:?}: {what}: rank {rank} differs from the exact reference"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_runner_reads_every_scenario_as_the_simulator_does() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let override_sets: [&[&str]; 3] = [
        &[],
        &[
            "job.collective=tree",
            "job.learning_rate=0.05",
            "run.seed=11",
        ],
        &[
            "cluster.gpus=37",
            "job.inter_node_collective=ring",
            "job.data_seed=7",
        ],
    ];
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        // Planner files (`plan-*.toml`) are not run scenarios: both programs read scenarios
        // through `faultline-scenario`, so both refuse them with the same error.
        if let Err(sim_error) = load_str("s", "<test>", &text, &[]) {
            let gpu_error = gpu_job::parse_scenario("s", "<test>", &text, &[]).unwrap_err();
            assert_eq!(gpu_error, sim_error, "{}", file.display());
            println!("not a run scenario, refused alike: {}", file.display());
            continue;
        }
        // The GPU runner's controllers restart the job; they cannot drop a replica, and say so.
        if text.contains("policy = \"per-replica\"") {
            let error = gpu_job::parse_scenario("s", "<test>", &text, &[]).unwrap_err();
            assert_eq!(error.key.as_deref(), Some("recovery.policy"), "{error:?}");
            println!(
                "per-replica runs in the simulator only, skipped: {}",
                file.display()
            );
            continue;
        }
        checked += 1;
        for sets in override_sets {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            // An override can make a scenario invalid (a crash on a GPU beyond 37).
            let Ok(sim) = load_str("s", "<test>", &text, &sets) else {
                continue;
            };
            let gpu = gpu_job::parse_scenario("s", "<test>", &text, &sets).unwrap();
            let what = format!("{} {sets:?}", file.display());
            assert_eq!(gpu.job, sim.job, "{what}");
            assert_eq!(gpu.placement, sim.placement(), "{what}");
            assert_eq!(gpu.seed, sim.run.seed, "{what}");
            assert_eq!(
                gpu.gpu_achieved_flops_per_s, sim.gpu_achieved_flops_per_s,
                "{what}"
            );
            assert_eq!(gpu.max_restarts, sim.control.max_restarts, "{what}");
        }
    }
    // quickstart, 100k-gpus and the three recovery scenarios at least.
    assert!(checked >= 5, "only {checked} run scenarios");
    // Every checkpoint key, both interval forms and every recovery policy read alike.
    let text = "
[cluster]
gpus = 16
spare_nodes = 1
[job]
steps = 3
model_params = 7e10
[checkpoint]
interval = \"90s\"
keep = 5
state_bytes_per_param = 14
snapshot_bandwidth = \"400Gb/s\"
buddy_copy = false
";
    for policy in ["restart", "in-memory", "hot-spare"] {
        for interval in ["checkpoint.interval=\"2h\"", "checkpoint.interval=7"] {
            let sets = vec![format!("recovery.policy={policy}"), interval.to_string()];
            let sim = load_str("s", "<test>", text, &sets).unwrap();
            let gpu = gpu_job::parse_scenario("s", "<test>", text, &sets).unwrap();
            assert!(sim.job.checkpoint.is_some());
            assert_eq!(gpu.job, sim.job, "{sets:?}");
        }
    }
}

/// The runner injects a scenario's crashes at a step and recovers through trainer-core's
/// checkpoints on real files; the simulator recovers through its own controller. Both end with
/// the fault-free parameters.
#[test]
fn recovery_from_the_scenarios_crashes_ends_with_the_simulators_parameters() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let path = root.join("node-crash-mid-checkpoint.toml");
    let sim = faultline_sim::scenario::load(&path, &[]).unwrap();
    let expected = run_scenario(&sim.clone().without_faults()).unwrap();
    let faulty = run_scenario(&sim).unwrap();
    assert_eq!(faulty.param_digest, expected.param_digest);
    let settings = gpu_job::load_scenario(&path, &[]).unwrap();
    assert!(!settings.failures_at_step.is_empty());
    let dir = std::env::temp_dir().join(format!("faultline-conformance-{}", std::process::id()));
    let mut options = RunOptions::new();
    options.checkpoint_dir = Some(dir.join("persistent"));
    options.host_dir = Some(dir.join("host"));
    let world = settings.placement.world_size;
    let report = gpu_job::run_local_job(vec![HostRank; world], &settings, &options);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(report.error, None);
    assert!(report.replicas_agree);
    assert_eq!(report.restarts, 1);
    assert_eq!(report.steps_completed, expected.steps_completed);
    assert_eq!(report.param_digest, expected.param_digest);
    assert_eq!(report.final_loss.to_bits(), expected.final_loss.to_bits());
}
