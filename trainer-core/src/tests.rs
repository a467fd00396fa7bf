use crate::group::Placement;
use crate::span::Span;

#[test]
fn span_parts_cover_the_whole_span_in_order() {
    let span = Span::new(10, 1000);
    let parts: Vec<Span> = (0..7).map(|i| span.part(7, i)).collect();
    assert_eq!(parts[0].elems.start, 0);
    assert_eq!(parts[6].elems.end, 10);
    assert_eq!(parts[6].bytes.end, 1000);
    for pair in parts.windows(2) {
        assert_eq!(pair[0].elems.end, pair[1].elems.start);
        assert_eq!(pair[0].bytes.end, pair[1].bytes.start);
    }
    // More parts than elements: some parts are empty but still carry their modelled bytes.
    let tiny = Span::new(2, 1 << 30).part(1024, 3);
    assert!(tiny.elems.is_empty());
    assert_eq!(tiny.modelled_bytes(), 1 << 20);
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
