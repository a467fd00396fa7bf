//! Every algorithm and op is exact for every world size from 1 to 64 and several GPUs-per-node
//! values (full and partial last nodes), and for a few large odd sizes, on both executors.

use faultline_sim::executor::ExecutorKind;
use faultline_sim::run::{run_collective, CollectiveReport, CollectiveSpec};
use faultline_sim::scenario::load_str;
use trainer_core::collectives::{Algo, Op};

fn check(
    algo: Algo,
    inter: Algo,
    op: Op,
    gpus: usize,
    gpus_per_node: usize,
    elems: usize,
    executor: ExecutorKind,
) -> CollectiveReport {
    let base = load_str(
        "t",
        "<test>",
        "[cluster]\ngpus = 1\ngpus_per_node = 1\n[job]\nsteps = 1\n",
        &[],
    )
    .unwrap();
    let spec = CollectiveSpec {
        algo,
        inter_node_algo: inter,
        op,
        gpus,
        gpus_per_node,
        elems,
        modelled_bytes: 1 << 20,
        seed: 7,
        executor,
        base,
    };
    let report = run_collective(&spec)
        .unwrap_or_else(|e| panic!("{algo:?} {op:?} {gpus}/{gpus_per_node}: {e}"));
    assert!(
        report.exact,
        "{} {} on {gpus} GPUs ({gpus_per_node} per node), {elems} elems: ranks {:?} differ",
        algo.name(),
        op.name(),
        report.mismatched_ranks
    );
    report
}

fn ops(gpus: usize) -> Vec<Op> {
    vec![
        Op::AllReduce,
        Op::ReduceScatter,
        Op::AllGather,
        Op::Broadcast { root_idx: 0 },
        Op::Broadcast { root_idx: gpus - 1 },
        Op::Broadcast { root_idx: gpus / 2 },
        Op::Barrier,
    ]
}

#[test]
fn every_algorithm_and_op_is_exact_for_world_sizes_1_to_64() {
    for gpus in 1..=64 {
        for gpus_per_node in [1, 3, 8] {
            if gpus_per_node > gpus {
                continue;
            }
            for algo in Algo::ALL {
                for op in ops(gpus) {
                    // 37 elements: fewer than some groups have members, so some parts are empty.
                    check(
                        algo,
                        Algo::HalvingDoubling,
                        op,
                        gpus,
                        gpus_per_node,
                        37,
                        ExecutorKind::Fifo,
                    );
                }
            }
        }
    }
}

#[test]
fn hierarchical_is_exact_with_every_inner_algorithm() {
    for gpus in [1, 2, 5, 8, 13, 24, 31, 64, 67] {
        for gpus_per_node in [2, 4, 8] {
            if gpus_per_node > gpus {
                continue;
            }
            for inter in [Algo::Ring, Algo::Tree, Algo::HalvingDoubling] {
                for op in ops(gpus) {
                    check(
                        Algo::Hierarchical,
                        inter,
                        op,
                        gpus,
                        gpus_per_node,
                        29,
                        ExecutorKind::Fifo,
                    );
                }
            }
        }
    }
}

#[test]
fn madsim_executor_gives_the_same_numbers_on_every_interleaving() {
    for gpus in [1, 6, 17, 32] {
        for algo in Algo::ALL {
            for op in ops(gpus) {
                check(
                    algo,
                    Algo::HalvingDoubling,
                    op,
                    gpus,
                    4.min(gpus),
                    19,
                    ExecutorKind::Madsim,
                );
            }
        }
    }
}

#[test]
fn large_odd_world_sizes_are_exact() {
    for (gpus, gpus_per_node) in [(1000, 8), (4099, 8), (1531, 7)] {
        for algo in [Algo::Tree, Algo::HalvingDoubling, Algo::Hierarchical] {
            check(
                algo,
                Algo::HalvingDoubling,
                Op::AllReduce,
                gpus,
                gpus_per_node,
                64,
                ExecutorKind::Fifo,
            );
        }
        check(
            Algo::Hierarchical,
            Algo::HalvingDoubling,
            Op::ReduceScatter,
            gpus,
            gpus_per_node,
            64,
            ExecutorKind::Fifo,
        );
    }
    check(
        Algo::Ring,
        Algo::HalvingDoubling,
        Op::AllReduce,
        257,
        8,
        64,
        ExecutorKind::Fifo,
    );
}

#[test]
fn bigger_messages_take_longer_and_more_ranks_send_more_messages() {
    let small = check(
        Algo::Ring,
        Algo::Ring,
        Op::AllReduce,
        16,
        8,
        16,
        ExecutorKind::Fifo,
    );
    let base = load_str(
        "t",
        "<test>",
        "[cluster]\ngpus = 1\ngpus_per_node = 1\n[job]\nsteps = 1\n",
        &[],
    )
    .unwrap();
    let mut spec = CollectiveSpec {
        algo: Algo::Ring,
        inter_node_algo: Algo::Ring,
        op: Op::AllReduce,
        gpus: 16,
        gpus_per_node: 8,
        elems: 16,
        modelled_bytes: 1 << 30,
        seed: 7,
        executor: ExecutorKind::Fifo,
        base,
    };
    let big = run_collective(&spec).unwrap();
    assert!(
        big.model_time_ns > 100 * small.model_time_ns,
        "{} vs {}",
        big.model_time_ns,
        small.model_time_ns
    );
    // A ring all-reduce sends 2 (n - 1) messages per rank.
    assert_eq!(big.messages, 16 * 2 * 15);
    spec.gpus = 32;
    assert_eq!(run_collective(&spec).unwrap().messages, 32 * 2 * 31);
}
