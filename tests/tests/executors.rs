//! Model time is the model's, not the executor's: the sends and storage transfers of an instant
//! get their link time in an order of the model alone (by rank, each rank's in its own order),
//! so madsim's seeded polling and FIFO's queue give the same model time where links contend.

use faultline_sim::executor::ExecutorKind;
use faultline_sim::run::{run_collective, run_scenario, CollectiveSpec};
use faultline_sim::scenario::{load, load_str};
use trainer_core::collectives::{Algo, Op};

fn collective(algo: Algo, gpus: usize, executor: ExecutorKind, routing: &str) -> u64 {
    let base = format!(
        "[cluster]\ngpus = 1\ngpus_per_node = 1\n[fabric]\nrouting = \"{routing}\"\n\
         [job]\nsteps = 1\nring_order = \"rank\"\n"
    );
    let spec = CollectiveSpec {
        algo,
        inter_node_algo: Algo::HalvingDoubling,
        op: Op::AllReduce,
        gpus,
        gpus_per_node: 8.min(gpus),
        elems: 64,
        modelled_bytes: 64 << 20,
        seed: 7,
        executor,
        base: load_str("t", "<test>", &base, &[]).unwrap(),
    };
    let report = run_collective(&spec).unwrap();
    assert!(report.exact, "{algo:?} on {gpus} GPUs");
    report.model_time_ns
}

/// 64 MiB all-reduces, where every algorithm's transfers contend for NVLink, NICs and
/// uplinks (the rank-order ring crosses the spines at every node boundary): the same model
/// time under both executors (they were up to 18% apart), with either routing.
#[test]
fn contended_collectives_take_the_same_model_time_under_every_executor() {
    for algo in [
        Algo::Ring,
        Algo::Tree,
        Algo::HalvingDoubling,
        Algo::Hierarchical,
    ] {
        for (gpus, routing) in [(8, "ecmp"), (64, "ecmp"), (256, "ecmp"), (512, "adaptive")] {
            let madsim = collective(algo, gpus, ExecutorKind::Madsim, routing);
            let fifo = collective(algo, gpus, ExecutorKind::Fifo, routing);
            assert_eq!(madsim, fifo, "{algo:?} on {gpus} GPUs, {routing}");
        }
    }
}

fn model_time(path: &str, executor: &str) -> (u64, String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    let scenario = load(&path, &[format!("run.executor={executor}")]).unwrap();
    let report = run_scenario(&scenario).unwrap();
    (report.model_time_ns, report.param_digest)
}

/// Every CI-sized scenario: the same model time and parameters under both executors, with
/// messages, checkpoint copies between nodes and the shared store all contending.
#[test]
fn scenarios_take_the_same_model_time_under_every_executor() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let path = format!("scenarios/{name}");
        let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(&path);
        // Planner files, and scenarios too large for the default suite (`ci = false`).
        if name.starts_with("plan-") || !load(&full, &[]).is_ok_and(|s| s.ci) {
            continue;
        }
        assert_eq!(
            model_time(&path, "madsim"),
            model_time(&path, "fifo"),
            "{path}"
        );
        checked += 1;
    }
    assert!(checked >= 13, "{checked} scenarios");
}
