use crate::group::Placement;
use crate::span::Span;

#[test]
fn span_parts_cover_the_whole_span_in_order() {
    let span = Span::new(10, 1000);
    let parts: Vec<Span> = (0..7).map(|i| span.part(7, i)).collect();
    assert_eq!(parts[0].elems().start, 0);
    assert_eq!(parts[6].elems().end, 10);
    assert_eq!(parts[6].bytes.end, 1000);
    for pair in parts.windows(2) {
        assert_eq!(pair[0].elems().end, pair[1].elems().start);
        assert_eq!(pair[0].bytes.end, pair[1].bytes.start);
    }
    // More parts than elements: some parts are empty but still carry their modelled bytes.
    let tiny = Span::new(2, 1 << 30).part(1024, 3);
    assert!(tiny.elems().is_empty());
    assert_eq!(tiny.modelled_bytes(), 1 << 20);
}

#[test]
fn split_points_are_the_rounded_down_quotient_for_every_count() {
    for total in [0u64, 1, 7, 32, 1000, 1 << 34, u64::MAX / 3, u64::MAX] {
        for count in 1..=70usize {
            for idx in 0..=count {
                let exact = (total as u128 * idx as u128 / count as u128) as u64;
                assert_eq!(
                    crate::span::split_point(total, count, idx),
                    exact,
                    "{total} * {idx} / {count}"
                );
            }
        }
    }
}

#[test]
fn exact_inputs_are_exact_input_of_each_index() {
    use crate::collectives::{exact_input, exact_inputs};
    for rank in [0, 1, 5, 16, 17, 99_999, 123_457] {
        let expected: Vec<f32> = (0..300).map(|idx| exact_input(rank, idx)).collect();
        assert_eq!(exact_inputs(rank, 300), expected, "rank {rank}");
    }
    assert!(exact_inputs(3, 0).is_empty());
}

#[test]
fn rail_groups_reach_the_owner_on_a_partial_last_node() {
    let placement = Placement::new(19, 8); // nodes of 8, 8 and 3 GPUs
    let rail = placement.rail_group(5);
    let members: Vec<usize> = (0..rail.count()).map(|i| rail.member(i)).collect();
    assert_eq!(members, vec![5, 13, 16 + 5 % 3]);
    for (idx, rank) in members.iter().enumerate() {
        assert_eq!(rail.index_of(*rank), Some(idx));
    }
    assert_eq!(rail.index_of(6), None);
    assert_eq!(placement.node_group(2).count(), 3);
}

#[test]
fn data_is_a_pure_function_of_seed_rank_and_step() {
    let params = vec![0.25f32; 16];
    let mut g1 = vec![0.0; 16];
    let mut g2 = vec![0.0; 16];
    let l1 = crate::model::loss_and_gradient(&params, 7, 3, 11, 4, &mut g1);
    let l2 = crate::model::loss_and_gradient(&params, 7, 3, 11, 4, &mut g2);
    assert_eq!(l1.to_bits(), l2.to_bits());
    assert_eq!(g1, g2);
    let l3 = crate::model::loss_and_gradient(&params, 7, 4, 11, 4, &mut g2);
    assert_ne!(l1, l3);
}

#[test]
fn retry_backoff_doubles_up_to_its_cap_and_stops_at_the_budget() {
    use crate::transport::RetryPolicy;
    let policy = RetryPolicy {
        initial_backoff_ns: 10,
        max_backoff_ns: 50,
        budget_ns: 200,
    };
    let waits: Vec<u64> = (1..=7).map(|a| policy.backoff_ns(a)).collect();
    assert_eq!(waits, vec![10, 20, 40, 50, 50, 50, 50]);
    // Cumulative: 10, 30, 70, 120, 170, 220: the sixth retry would pass the budget.
    let allowed: Vec<Option<u64>> = (1..=6).map(|a| policy.next_backoff(a)).collect();
    assert_eq!(
        allowed,
        vec![Some(10), Some(20), Some(40), Some(50), Some(50), None]
    );
    // No overflow on absurd attempt counts.
    assert_eq!(policy.backoff_ns(200), 50);
}

#[test]
fn straggler_scores_flag_a_slow_rank_after_patience_steps_only() {
    use crate::health::StragglerDetector;
    let mut detector = StragglerDetector::new(5, 1.2, 3);
    let normal = [100, 101, 99, 100, 100];
    let slow = [100, 101, 99, 150, 100];
    // Two slow steps, then a normal one: the run resets, nothing is flagged.
    for times in [&slow, &slow, &normal, &slow, &slow] {
        assert!(detector.observe(times).flagged.is_empty());
    }
    let scores = detector.observe(&slow);
    assert_eq!(scores.median_ns, 100);
    assert_eq!(scores.max_ns, 150);
    assert_eq!(scores.flagged.len(), 1);
    assert_eq!(scores.flagged[0].rank, 3);
    assert!((scores.flagged[0].score - 1.5).abs() < 1e-9);
    // Flagged once; flagged again only after its flag is cleared (new hardware) and a new run.
    assert!(detector.observe(&slow).flagged.is_empty());
    detector.clear_flag(3);
    for _ in 0..2 {
        assert!(detector.observe(&slow).flagged.is_empty());
    }
    assert_eq!(detector.observe(&slow).flagged.len(), 1);
}

#[test]
fn a_payload_checksum_changes_with_every_single_bit_flip() {
    for len in [1usize, 2, 7, 32, 33] {
        let data: Vec<f32> = (0..len).map(|i| i as f32 * 0.37 - 3.0).collect();
        let sum = crate::integrity::checksum(&data);
        for idx in 0..len {
            for bit in 0..32 {
                let mut flipped = data.clone();
                flipped[idx] = f32::from_bits(flipped[idx].to_bits() ^ (1 << bit));
                assert_ne!(
                    crate::integrity::checksum(&flipped),
                    sum,
                    "len {len} [{idx}] bit {bit}"
                );
            }
        }
    }
}

#[test]
fn the_guard_flags_outliers_and_non_finite_values_only_after_it_has_an_average() {
    let mut guard = crate::integrity::Guard::default();
    assert!(!guard.is_suspect(1e30, 10.0), "no average yet");
    assert!(guard.is_suspect(f64::NAN, 10.0));
    assert!(guard.is_suspect(f64::INFINITY, 10.0));
    guard.accept(2.0);
    assert!(!guard.is_suspect(19.0, 10.0));
    assert!(guard.is_suspect(21.0, 10.0));
}

#[test]
fn groups_with_holes_list_the_other_members_in_order_and_index_them_back() {
    for world in 1..=40 {
        for gpus_per_node in [1, 3, 8] {
            let placement = Placement::new(world, gpus_per_node);
            let nodes = placement.node_count();
            for dropped in [
                vec![0],
                vec![nodes - 1],
                vec![0, nodes - 1],
                vec![nodes / 2],
            ] {
                let mut dropped = dropped;
                dropped.dedup();
                if dropped.len() >= nodes {
                    continue;
                }
                let group = placement.world_without_nodes(&dropped);
                let expected: Vec<usize> = (0..world)
                    .filter(|&r| !dropped.contains(&placement.node_of(r)))
                    .collect();
                let members: Vec<usize> = (0..group.count()).map(|i| group.member(i)).collect();
                assert_eq!(
                    members, expected,
                    "{world}/{gpus_per_node} without {dropped:?}"
                );
                for rank in 0..world {
                    assert_eq!(
                        group.index_of(rank),
                        expected.iter().position(|&r| r == rank)
                    );
                }
                assert_eq!(placement.dropped_nodes(&group), dropped);
                // A rail without the dropped nodes: its member index is its node.
                let rail = placement
                    .rail_group(0)
                    .without(std::sync::Arc::new(dropped.clone()));
                assert_eq!(rail.count(), nodes - dropped.len());
            }
        }
    }
    assert!(!Placement::new(8, 4).world_without_nodes(&[]).has_holes());
}

/// A layout job of 2 x 3 x 3 ranks over a proxy of 5 layers of 6, checkpointing a modelled
/// state of `state_bytes`.
fn layout_job_with_checkpoints(
    collective: crate::collectives::Collective,
    dp_sharding: crate::layout::DpSharding,
    state_bytes: u64,
) -> crate::job::JobConfig {
    use crate::checkpoint::{CheckpointPolicy, Interval};
    use crate::layout::{Layout, RankOrder};
    use crate::layout_job::{LayoutJobConfig, ModelDims};
    let model = ModelDims {
        layers: 7,
        hidden: 64,
        seq_len: 16,
        micro_batch_size: 1,
    };
    let job = LayoutJobConfig {
        layout: Layout::new(2, 3, 3, RankOrder::TpDpPp),
        dp_sharding,
        schedule: crate::pipeline::Schedule::OneForwardOneBackward,
        micro_batches: 2,
        proxy_layers: 5,
        proxy_width: 6,
        model,
        grad_bytes_per_param: 2.0,
        optimizer_flops_per_param: 10.0,
    };
    let policy = CheckpointPolicy {
        interval: Interval::Steps(1),
        keep: 1,
        modelled_state_bytes: state_bytes,
        snapshot_bytes_per_s: 1e9,
        buddy_copy: false,
        restore_from_memory: false,
    };
    crate::job::JobConfig {
        steps: 1,
        collective,
        proxy_elems: 1,
        batch_per_rank: 1,
        learning_rate: 0.1,
        data_seed: 1,
        modelled_grad_bytes: 1,
        modelled_step_flops: 1.0,
        modelled_optimizer_flops: 1.0,
        checkpoint: Some(policy),
        detection: crate::integrity::DetectionPolicy::OFF,
        layout: Some(Box::new(job)),
    }
}

/// A layout job's checkpoint holds each parameter once: over every (stage, TP rank) shard,
/// the shards of its DP replicas cut its parameters into disjoint parts that cover them all,
/// whatever the sharding and the algorithm, and their modelled bytes add up to the modelled
/// state (each shard's share rounded once).
#[test]
fn a_layout_checkpoint_holds_every_parameter_of_every_shard_once() {
    use crate::collectives::{Algo, Collective};
    use crate::layout::{Coords, DpSharding};
    use crate::layout_job::LayoutTrainer;
    use crate::mlp::ShardShape;
    let state_bytes = 1_000_000_007;
    let algos = [
        (Algo::Ring, Algo::Ring),
        (Algo::Tree, Algo::Tree),
        (Algo::HalvingDoubling, Algo::HalvingDoubling),
        (Algo::Hierarchical, Algo::Ring),
    ];
    for (algo, inter_node_algo) in algos {
        for &dp_sharding in DpSharding::ALL {
            let collective = Collective::with_inter_node(algo, inter_node_algo);
            let config = layout_job_with_checkpoints(collective, dp_sharding, state_bytes);
            let job = config.layout.as_deref().expect("a layout").clone();
            let layout = job.layout;
            let placement = Placement::new(layout.world_size(), 4);
            let case = format!("{algo:?} {dp_sharding:?}");
            let mut bytes = 0;
            for shard in 0..layout.shard_count() {
                let (stage, tp_rank) = (shard / layout.tp, shard % layout.tp);
                let layers = job.proxy_layer_range(stage);
                let (width, tp) = (job.proxy_width, layout.tp);
                let shape = ShardShape {
                    width,
                    layers,
                    tp_rank,
                    tp,
                };
                let mut covered = vec![0u32; shape.param_count()];
                for dp_rank in 0..layout.dp {
                    let rank = layout.rank_of(Coords {
                        tp_rank,
                        stage,
                        dp_rank,
                    });
                    let trainer = LayoutTrainer::new(config.clone(), rank);
                    let checkpointer = trainer.checkpointer().expect("a checkpoint policy");
                    for span in checkpointer.shard_spans(&placement, rank, covered.len()) {
                        bytes += span.modelled_bytes();
                        covered[span.elems()].iter_mut().for_each(|c| *c += 1);
                    }
                }
                assert!(covered.iter().all(|&c| c == 1), "{case} shard {shard}");
            }
            let shards = layout.shard_count() as u64;
            assert!(bytes.abs_diff(state_bytes) <= shards, "{case}: {bytes}");
        }
    }
}
