use crate::books::FaultKind;
use crate::scenario::load_str;

const MINIMAL: &str = "[cluster]\ngpus = 16\n[job]\nsteps = 2\n";

/// Every arithmetic route is a shortest path of the petgraph view: the same number of switch
/// hops as a breadth-first search finds, on clusters with partial nodes and several clusters.
#[test]
fn routes_are_shortest_paths_of_the_graph() {
    use crate::topology::{Topology, Vertex};
    use petgraph::visit::Bfs;
    for sets in [
        vec!["cluster.gpus=44", "cluster.nodes_per_leaf=2"],
        vec![
            "cluster.gpus=60",
            "cluster.nodes_per_leaf=2",
            "cluster.clusters=2",
            "cluster.oversubscription=2.0",
        ],
    ] {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let s = load_str("t", "t.toml", MINIMAL, &sets).unwrap();
        let topo = Topology::new(&s.cluster, &s.fabric);
        let view = topo.graph();
        for src in 0..topo.gpu_count() {
            // Hop counts from `src` to every vertex.
            let mut depth = vec![usize::MAX; view.graph.node_count()];
            depth[view.gpus[src].index()] = 0;
            let mut bfs = Bfs::new(&view.graph, view.gpus[src]);
            while let Some(v) = bfs.next(&view.graph) {
                for n in view.graph.neighbors(v) {
                    if depth[n.index()] == usize::MAX {
                        depth[n.index()] = depth[v.index()] + 1;
                    }
                }
            }
            for dst in 0..topo.gpu_count() {
                let route = topo.route(src, dst);
                let graph_hops = depth[view.gpus[dst].index()];
                // The arithmetic view folds GPU-NIC-leaf into one link each way.
                let same_node = src / s.cluster.gpus_per_node == dst / s.cluster.gpus_per_node;
                let expected = if src == dst {
                    0
                } else if same_node {
                    2
                } else {
                    graph_hops - 2
                };
                assert_eq!(route.links().len(), expected, "{src} -> {dst}");
                for &link in route.links() {
                    assert!((link as usize) < topo.link_count());
                }
                // The same pair always takes the same spine.
                assert_eq!(topo.route(src, dst), route);
            }
        }
        assert!(matches!(view.graph[view.gpus[0]], Vertex::Gpu(0)));
    }
}

#[test]
fn contention_serialises_transfers_on_a_shared_link() {
    use crate::world::{SimBackend, World, WorldConfig};
    use std::cell::RefCell;
    use std::rc::Rc;
    use trainer_core::{Backend, Tag};
    let s = load_str("t", "t.toml", MINIMAL, &[]).unwrap();
    // Ranks 0 and 1 each send 50 GB to rank 8 (another node): both cross rank 8's NIC, so the
    // second arrives one serialisation time (1 s at 50 GB/s) after the first.
    let topo = crate::topology::Topology::new(&s.cluster, &s.fabric);
    let world = Rc::new(RefCell::new(World::new(WorldConfig::bare(topo, 1e15))));
    let arrivals =
        crate::executor::run_ranks(crate::executor::ExecutorKind::Fifo, 1, &world, |rank| {
            let b = SimBackend::new(world.clone(), rank);
            async move {
                let tag = Tag::new(0, 0, 0);
                if rank < 2 {
                    b.send(
                        8,
                        tag,
                        trainer_core::Payload::new(vec![1.0], 50_000_000_000),
                    )
                    .await
                    .unwrap();
                } else if rank == 8 {
                    let mut times = Vec::new();
                    for from in 0..2 {
                        b.recv(from, tag).await.unwrap();
                        times.push(b.now_ns());
                    }
                    return times;
                }
                Vec::new()
            }
        })
        .unwrap();
    let times = &arrivals[8];
    let gap = times[0].abs_diff(times[1]);
    assert!((999_000_000..=1_001_000_000).contains(&gap), "{times:?}");
}

#[test]
fn collective_input_sums_equal_the_sums_of_every_rank() {
    for world in [1, 2, 16, 17, 18, 35, 100] {
        let elems = 40;
        let mut sums = vec![0i64; elems];
        for rank in 0..world {
            for (idx, sum) in sums.iter_mut().enumerate() {
                *sum += crate::run::collective_input(rank, idx) as i64;
            }
        }
        assert_eq!(
            crate::run::collective_input_sums(world, elems),
            sums,
            "{world}"
        );
    }
}

#[test]
fn divisor_divides_exactly() {
    use crate::topology::Divisor;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for divisor in [
        1,
        2,
        3,
        7,
        8,
        17,
        32,
        1000,
        12_500,
        65_537,
        (1 << 31) - 1,
        (1 << 32) - 1,
    ] {
        let d = Divisor::new(divisor);
        let edges = [0, 1, divisor - 1, divisor, divisor + 1, (1 << 32) - 1];
        for numerator in edges.into_iter().filter(|&n| n < 1 << 32) {
            assert_eq!(
                d.div(numerator),
                numerator / divisor,
                "{numerator} / {divisor}"
            );
        }
        for _ in 0..10_000 {
            state = trainer_core::digest::mix64(state);
            let numerator = (state >> 32) as usize;
            assert_eq!(
                d.div(numerator),
                numerator / divisor,
                "{numerator} / {divisor}"
            );
        }
    }
}

/// A run recorded at the most detailed level, with a timeline, is the run without either: the
/// same digests, model time and fault books.
#[test]
fn recording_a_run_does_not_change_it() {
    use crate::run::{run_scenario, run_scenario_with, RunHooks};
    use crate::trace::{Recorder, TraceHeader, TraceLevel};
    let text = "[cluster]\ngpus = 16\n[job]\nsteps = 6\n[checkpoint]\ninterval = 2\n\
                [recovery]\npolicy = \"restart\"\nrestart_time = \"1min\"\n\
                [[faults.crash]]\nnode = 1\nat_step = 4\n";
    let scenario = load_str("t", "t.toml", text, &[]).unwrap();
    let plain = run_scenario(&scenario).unwrap();
    let header =
        TraceHeader::for_run(&scenario, "t.toml", text, &[], false, TraceLevel::Messages).unwrap();
    let mut recorder = Recorder::new();
    recorder.trace_to_memory(&header, TraceLevel::Messages);
    let timeline = std::env::temp_dir().join(format!("faultline-unit-{}.json", std::process::id()));
    recorder.perfetto_to_file(&timeline, 16, 8).unwrap();
    let hooks = RunHooks {
        recorder: Some(recorder),
        ..RunHooks::default()
    };
    let (recorded, recorder) = run_scenario_with(&scenario, hooks).unwrap();
    let trace = recorder
        .unwrap()
        .finish(
            |n| crate::replay::footer_of(&recorded, n),
            recorded.model_time_ns,
        )
        .unwrap()
        .unwrap();
    std::fs::remove_file(&timeline).unwrap();
    assert_eq!(plain.faults.injected.get(&FaultKind::NodeCrash), Some(&1));
    assert_eq!(recorded.trace_digest, plain.trace_digest);
    assert_eq!(recorded.param_digest, plain.param_digest);
    assert_eq!(recorded.model_time_ns, plain.model_time_ns);
    assert_eq!(recorded.lost_time_ns_by_cause, plain.lost_time_ns_by_cause);
    // Every delivery is in the trace at this level.
    let deliveries = String::from_utf8(trace)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"deliver\""))
        .count() as u64;
    assert!(deliveries > 0 && deliveries <= plain.messages);
}

#[test]
fn every_link_name_parses_back_to_its_link_and_bad_names_say_why() {
    let text = "[cluster]\ngpus = 40\nnodes_per_leaf = 2\nclusters = 2\n[job]\nsteps = 2\n";
    let s = load_str("t", "t.toml", text, &[]).unwrap();
    let topology = crate::topology::Topology::new(&s.cluster, &s.fabric);
    for link in (0..topology.link_count() as u32).step_by(2) {
        let name = topology.link_name(link);
        assert_eq!(topology.parse_link(&name), Ok((link, link + 1)), "{name}");
        assert_eq!(topology.link_name(link + 1), name);
    }
    for (bad, says) in [
        ("nic:gpu=40", "gpu 40 does not exist"),
        ("nic:gpu=x", "not a number"),
        ("leaf-spine:leaf=0", "no `spine`"),
        ("leaf-spine:leaf=0,spine=99", "spine 99 does not exist"),
        ("nvlink", "expected"),
        ("fiber:gpu=1", "expected"),
    ] {
        let e = topology.parse_link(bad).unwrap_err();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn rerouting_avoids_the_dead_spine_and_only_leaf_to_leaf_routes_have_alternatives() {
    let text = "[cluster]\ngpus = 64\nnodes_per_leaf = 2\n[job]\nsteps = 2\n";
    let s = load_str("t", "t.toml", text, &[]).unwrap();
    let t = crate::topology::Topology::new(&s.cluster, &s.fabric);
    assert_eq!(t.spines_per_leaf(), 2);
    // GPU 0 (unit 0) to GPU 32 (unit 2) crosses a spine; each spine gives a distinct route of
    // the same length, and the ECMP choice is one of them.
    let via: Vec<_> = (0..2)
        .map(|spine| t.route_via_spine(0, 32, spine))
        .collect();
    assert_ne!(via[0], via[1]);
    assert_eq!(via[0].links().len(), via[1].links().len());
    assert!(via.contains(&t.route(0, 32)));
    // Inside a node or under one leaf there is no spine to change.
    assert_eq!(t.route_via_spine(0, 1, 1), t.route(0, 1));
    assert_eq!(t.route_via_spine(0, 8, 1), t.route(0, 8));
}

/// Every byte of a rank's future is loaded on each of its polls, 100,000 times an instant at
/// scale (see the executor's note): the training step's, the layout job's and a collective's
/// futures must not grow unnoticed. The bounds are this build's sizes (912, `LAYOUT_BOUND` and
/// 584 bytes in the test profile) with a cache line of room; a change that needs more says why
/// and moves the bound.
#[test]
fn the_training_and_collective_futures_stay_small() {
    // 1,392 before the layout trainer's steps became plain functions around `async move`.
    const LAYOUT_BOUND: usize = 1032;
    use crate::world::{SimBackend, World, WorldConfig};
    use std::cell::RefCell;
    use std::rc::Rc;
    use trainer_core::collectives::{Algo, Collective, Op};
    let s = load_str("t", "t.toml", MINIMAL, &[]).unwrap();
    let topo = crate::topology::Topology::new(&s.cluster, &s.fabric);
    let world = Rc::new(RefCell::new(World::new(WorldConfig::bare(topo, 1e15))));
    let backend = SimBackend::new(world.clone(), 0);
    let training = std::mem::size_of_val(&trainer_core::job::run(&backend, s.job.clone()));
    let layout = "[cluster]\ngpus = 16\n[job]\nsteps = 1\nproxy_layers = 4\nproxy_width = 8\n\
        micro_batches = 4\n[parallelism]\ntp = 2\npp = 2\n";
    let layout = load_str("t", "t.toml", layout, &[]).unwrap();
    let layout_job = trainer_core::layout_job::run(&backend, layout.job.clone());
    let layout_bytes = std::mem::size_of_val(&layout_job);
    drop(layout_job);
    let group = s.placement().world();
    let mut data = vec![0.0f32; 16];
    let collective = Collective::new(Algo::Hierarchical);
    let all_reduce = collective.run(&backend, &group, Op::AllReduce, 0, &mut data, 64);
    let collective_bytes = std::mem::size_of_val(&all_reduce);
    drop(all_reduce);
    println!("training future: {training} bytes; all-reduce future: {collective_bytes} bytes");
    println!("layout training future: {layout_bytes} bytes");
    assert!(
        layout_bytes <= LAYOUT_BOUND + 64,
        "the layout training future is {layout_bytes} bytes"
    );
    assert!(
        training <= 912 + 64,
        "the training future is {training} bytes"
    );
    assert!(
        collective_bytes <= 584 + 64,
        "the all-reduce future is {collective_bytes} bytes"
    );
}
