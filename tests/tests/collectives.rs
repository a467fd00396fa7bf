//! Every algorithm and op is exact for every world size from 1 to 64 and several GPUs-per-node
//! values (full and partial last nodes), and for a few large odd sizes, on both executors;
//! and over the world minus dropped nodes (every algorithm) or dropped ranks (all but the
//! hierarchical one), as the per-replica recovery policy runs them.

use faultline_sim::executor::ExecutorKind;
use faultline_sim::run::{
    run_collective, run_collective_without, CollectiveReport, CollectiveSpec,
};
use faultline_sim::scenario::load_str;
use trainer_core::collectives::{Algo, Op};

/// Runs one collective over the world minus `dropped_ranks` (none: the whole world) and
/// asserts that every member's result is exact.
#[allow(clippy::too_many_arguments)]
fn check(
    algo: Algo,
    inter: Algo,
    op: Op,
    gpus: usize,
    gpus_per_node: usize,
    elems: usize,
    executor: ExecutorKind,
    dropped_ranks: &[usize],
) -> CollectiveReport {
    let spec = CollectiveSpec {
        algo,
        inter_node_algo: inter,
        op,
        gpus_per_node,
        elems,
        executor,
        ..spec_of(gpus)
    };
    let report = run_collective_without(&spec, dropped_ranks).unwrap_or_else(|e| {
        panic!("{algo:?} {op:?} {gpus}/{gpus_per_node} without {dropped_ranks:?}: {e}")
    });
    assert!(
        report.exact,
        "{} (inner {}) {} on {gpus} GPUs ({gpus_per_node} per node) without {dropped_ranks:?}, \
         {elems} elems: ranks {:?} differ",
        algo.name(),
        inter.name(),
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
            for &algo in Algo::ALL {
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
                        &[],
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
                        &[],
                    );
                }
            }
        }
    }
}

#[test]
fn madsim_executor_gives_the_same_numbers_on_every_interleaving() {
    for gpus in [1, 6, 17, 32] {
        for &algo in Algo::ALL {
            for op in ops(gpus) {
                check(
                    algo,
                    Algo::HalvingDoubling,
                    op,
                    gpus,
                    4.min(gpus),
                    19,
                    ExecutorKind::Madsim,
                    &[],
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
                &[],
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
            &[],
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
        &[],
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
        &[],
    );
    let mut spec = CollectiveSpec {
        algo: Algo::Ring,
        inter_node_algo: Algo::Ring,
        modelled_bytes: 1 << 30,
        ..spec_of(16)
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

/// Hole sets of whole nodes for a world of `gpus` on nodes of `gpus_per_node`: the first, the
/// last (perhaps partial), one in the middle, the first and last together, and every other
/// node; only sets that leave a node.
fn node_hole_sets(gpus: usize, gpus_per_node: usize) -> Vec<Vec<usize>> {
    let nodes = gpus.div_ceil(gpus_per_node);
    let candidates: Vec<Vec<usize>> = vec![
        vec![0],
        vec![nodes - 1],
        vec![nodes / 2],
        vec![0, nodes - 1],
        (0..nodes).step_by(2).collect(),
    ];
    let mut sets: Vec<Vec<usize>> = Vec::new();
    for mut set in candidates {
        set.dedup();
        if set.len() < nodes && !sets.contains(&set) {
            sets.push(set);
        }
    }
    sets.into_iter()
        .map(|nodes| {
            nodes
                .iter()
                .flat_map(|&n| n * gpus_per_node..((n + 1) * gpus_per_node).min(gpus))
                .collect()
        })
        .collect()
}

#[test]
fn every_algorithm_and_op_is_exact_without_dropped_nodes() {
    for gpus in 2..=27 {
        for gpus_per_node in [1, 3, 8] {
            if gpus_per_node >= gpus {
                continue;
            }
            for dropped in node_hole_sets(gpus, gpus_per_node) {
                let members = gpus - dropped.len();
                let mut algos: Vec<(Algo, Algo)> = Algo::ALL
                    .iter()
                    .map(|&a| (a, Algo::HalvingDoubling))
                    .collect();
                algos.push((Algo::Hierarchical, Algo::Ring));
                algos.push((Algo::Hierarchical, Algo::Tree));
                for (algo, inter) in algos {
                    for op in ops(members) {
                        check(
                            algo,
                            inter,
                            op,
                            gpus,
                            gpus_per_node,
                            23,
                            ExecutorKind::Fifo,
                            &dropped,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn flat_algorithms_are_exact_without_any_dropped_ranks() {
    for gpus in 2..=33 {
        let hole_sets: Vec<Vec<usize>> = vec![
            vec![0],
            vec![gpus - 1],
            vec![gpus / 2],
            (1..gpus).step_by(2).collect(),
            (0..gpus).filter(|r| r % 3 != 1).collect(),
        ];
        for dropped in hole_sets {
            if dropped.len() >= gpus {
                continue;
            }
            let members = gpus - dropped.len();
            for algo in [Algo::Ring, Algo::Tree, Algo::HalvingDoubling] {
                for op in ops(members) {
                    check(
                        algo,
                        Algo::HalvingDoubling,
                        op,
                        gpus,
                        4.min(gpus),
                        19,
                        ExecutorKind::Fifo,
                        &dropped,
                    );
                }
            }
        }
    }
}

#[test]
fn dropped_ranks_exchange_nothing_and_madsim_agrees() {
    // A ring all-reduce over 12 of 16 ranks sends 2 (12 - 1) messages per member: the four
    // dropped ranks of node 1 send none.
    let dropped = [4, 5, 6, 7];
    let report = check(
        Algo::Ring,
        Algo::Ring,
        Op::AllReduce,
        16,
        4,
        16,
        ExecutorKind::Fifo,
        &dropped,
    );
    assert_eq!(report.messages, 12 * 2 * 11);
    for &algo in Algo::ALL {
        for op in ops(12) {
            check(
                algo,
                Algo::Tree,
                op,
                16,
                4,
                16,
                ExecutorKind::Madsim,
                &dropped,
            );
        }
    }
    // No holes: the same run as the plain world group, to the trace digest; holes: another.
    let whole = check(
        Algo::Hierarchical,
        Algo::HalvingDoubling,
        Op::AllReduce,
        16,
        4,
        16,
        ExecutorKind::Fifo,
        &[],
    );
    let mut spec = spec_of(whole.gpus);
    spec.algo = Algo::Hierarchical;
    spec.gpus_per_node = 4;
    let plain = run_collective(&spec).unwrap();
    assert_eq!(whole.trace_digest, plain.trace_digest);
    let holed = run_collective_without(&spec, &dropped).unwrap();
    assert!(holed.exact);
    assert_ne!(holed.trace_digest, plain.trace_digest);
}

/// A 16-element hierarchical all-reduce over `gpus` GPUs, 8 per node, as `check` runs it.
fn spec_of(gpus: usize) -> CollectiveSpec {
    let base = load_str(
        "t",
        "<test>",
        "[cluster]\ngpus = 1\ngpus_per_node = 1\n[job]\nsteps = 1\n",
        &[],
    )
    .unwrap();
    CollectiveSpec {
        algo: Algo::Hierarchical,
        inter_node_algo: Algo::HalvingDoubling,
        op: Op::AllReduce,
        gpus,
        gpus_per_node: 8,
        elems: 16,
        modelled_bytes: 1 << 20,
        seed: 7,
        executor: ExecutorKind::Fifo,
        base,
    }
}
