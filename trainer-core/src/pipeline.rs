//! Pipeline schedules: the order in which one stage runs the forward and backward passes of a
//! step's micro-batches. A pure function of the schedule, the stage, the stage count and the
//! micro-batch count, so every rank of a stage runs the same order and a step's messages are
//! the same on every executor.

crate::named_enum! {
    /// How a stage orders its micro-batches' passes.
    pub enum Schedule {
        /// PipeDream-Flush, Megatron-LM's default: after a warm-up of forwards, one forward then
        /// one backward, so a stage holds at most `pp - stage` micro-batches' activations.
        OneForwardOneBackward = "1f1b",
        /// GPipe: every forward, then every backward; holds every micro-batch's activations.
        GPipe = "gpipe",
    }
}

/// One pass of one micro-batch on one stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward(usize),
    Backward(usize),
}

/// The passes stage `stage` of `pp` runs in one step of `micro_batches` micro-batches, in
/// order. Backwards run in micro-batch order under both schedules, so the loss and gradient
/// sums over micro-batches are in the same order whatever the schedule; so do forwards, so the
/// micro-batches a stage holds between their two passes are always consecutive ones.
pub fn passes(schedule: Schedule, stage: usize, pp: usize, micro_batches: usize) -> Vec<Pass> {
    (0..2 * micro_batches)
        .map(|index| pass(schedule, stage, pp, micro_batches, index))
        .collect()
}

/// Pass `index` of [`passes`], worked out without the list: a training step asks for its
/// passes one at a time, and at 100,000 ranks a list per rank is 50 MB held through the step.
pub fn pass(
    schedule: Schedule,
    stage: usize,
    pp: usize,
    micro_batches: usize,
    index: usize,
) -> Pass {
    assert!(stage < pp && micro_batches > 0 && index < 2 * micro_batches);
    let m = micro_batches;
    match schedule {
        Schedule::GPipe if index < m => Pass::Forward(index),
        Schedule::GPipe => Pass::Backward(index - m),
        Schedule::OneForwardOneBackward => {
            // A warm-up of forwards, pairs of a forward and a backward, backwards to drain.
            let warmup = (pp - stage - 1).min(m);
            match index {
                index if index < warmup => Pass::Forward(index),
                index if index < 2 * m - warmup => {
                    let pair = (index - warmup) / 2;
                    match (index - warmup) % 2 {
                        0 => Pass::Forward(warmup + pair),
                        _ => Pass::Backward(pair),
                    }
                }
                index => Pass::Backward(index - m),
            }
        }
    }
}

/// The most micro-batches stage `stage` holds at once between their forward and their
/// backward: every one under GPipe, at most `pp - stage` under 1F1B.
pub fn max_in_flight(schedule: Schedule, stage: usize, pp: usize, micro_batches: usize) -> usize {
    match schedule {
        Schedule::GPipe => micro_batches,
        Schedule::OneForwardOneBackward => (pp - stage).min(micro_batches),
    }
}

/// The bubble fraction of a pipeline whose stages each take the same time per micro-batch and
/// whose messages take none: `(pp - 1) / (m + pp - 1)` of the first stage's span is idle, for
/// both schedules.
pub fn ideal_bubble_fraction(pp: usize, micro_batches: usize) -> f64 {
    (pp - 1) as f64 / (micro_batches + pp - 1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays the passes of every stage with unit forward time and backward time 2 and free
    /// messages; returns the first stage's span, and checks each pass waits for its input.
    fn first_stage_span(schedule: Schedule, pp: usize, m: usize) -> usize {
        let orders: Vec<Vec<Pass>> = (0..pp).map(|s| passes(schedule, s, pp, m)).collect();
        let (mut fwd_done, mut bwd_done) = (vec![vec![None; m]; pp], vec![vec![None; m]; pp]);
        let mut next = vec![0; pp];
        let mut clock = vec![0usize; pp];
        while next.iter().zip(&orders).any(|(n, o)| *n < o.len()) {
            let mut progressed = false;
            for s in 0..pp {
                let Some(&pass) = orders[s].get(next[s]) else {
                    continue;
                };
                let (ready, cost) = match pass {
                    Pass::Forward(_) if s == 0 => (Some(0), 1),
                    Pass::Forward(i) => (fwd_done[s - 1][i], 1),
                    Pass::Backward(i) if s == pp - 1 => (fwd_done[s][i], 2),
                    Pass::Backward(i) => (bwd_done[s + 1][i], 2),
                };
                let Some(ready) = ready else { continue };
                clock[s] = clock[s].max(ready) + cost;
                match pass {
                    Pass::Forward(i) => fwd_done[s][i] = Some(clock[s]),
                    Pass::Backward(i) => bwd_done[s][i] = Some(clock[s]),
                }
                next[s] += 1;
                progressed = true;
            }
            assert!(progressed, "{schedule} deadlocks with pp {pp}, m {m}");
        }
        clock[0]
    }

    #[test]
    fn every_micro_batch_runs_once_each_way_forward_first() {
        for schedule in Schedule::ALL.iter().copied() {
            for pp in 1..6 {
                for m in 1..9 {
                    for stage in 0..pp {
                        let order = passes(schedule, stage, pp, m);
                        assert_eq!(order.len(), 2 * m);
                        for i in 0..m {
                            let at = |p| order.iter().position(|&q| q == p).unwrap();
                            assert!(at(Pass::Forward(i)) < at(Pass::Backward(i)));
                        }
                        let backwards: Vec<_> = (order.iter())
                            .filter_map(|p| match p {
                                Pass::Backward(i) => Some(*i),
                                Pass::Forward(_) => None,
                            })
                            .collect();
                        assert_eq!(backwards, (0..m).collect::<Vec<_>>());
                    }
                }
            }
        }
    }

    /// A stage holds at most `max_in_flight` micro-batches (1F1B: `pp - stage`), and reaches
    /// it; forwards and backwards each run in micro-batch order, so the ones it holds are
    /// consecutive (a step keeps micro-batch `i`'s state in slot `i % max_in_flight`).
    #[test]
    fn a_stage_holds_at_most_max_in_flight_consecutive_micro_batches() {
        for schedule in Schedule::ALL.iter().copied() {
            for pp in 1..6 {
                for m in 1..9 {
                    for stage in 0..pp {
                        let (mut forwards, mut backwards, mut most) = (0, 0, 0);
                        for pass in passes(schedule, stage, pp, m) {
                            match pass {
                                Pass::Forward(i) => {
                                    assert_eq!(i, forwards);
                                    forwards += 1;
                                }
                                Pass::Backward(i) => {
                                    assert_eq!(i, backwards);
                                    backwards += 1;
                                }
                            }
                            most = most.max(forwards - backwards);
                        }
                        assert_eq!(most, max_in_flight(schedule, stage, pp, m));
                    }
                    let one_f_one_b = Schedule::OneForwardOneBackward;
                    assert_eq!(max_in_flight(one_f_one_b, 0, pp, m), pp.min(m));
                }
            }
        }
    }

    /// The schedules as Megatron-LM writes them out, list by list: `pass` must agree.
    fn written_out(schedule: Schedule, stage: usize, pp: usize, m: usize) -> Vec<Pass> {
        let mut out = Vec::new();
        match schedule {
            Schedule::GPipe => {
                out.extend((0..m).map(Pass::Forward));
                out.extend((0..m).map(Pass::Backward));
            }
            Schedule::OneForwardOneBackward => {
                let warmup = (pp - stage - 1).min(m);
                out.extend((0..warmup).map(Pass::Forward));
                for i in 0..m - warmup {
                    out.push(Pass::Forward(warmup + i));
                    out.push(Pass::Backward(i));
                }
                out.extend((m - warmup..m).map(Pass::Backward));
            }
        }
        out
    }

    #[test]
    fn each_pass_is_the_written_out_schedules() {
        for schedule in Schedule::ALL.iter().copied() {
            for pp in 1..7 {
                for m in 1..10 {
                    for stage in 0..pp {
                        let want = written_out(schedule, stage, pp, m);
                        assert_eq!(passes(schedule, stage, pp, m), want);
                    }
                }
            }
        }
    }

    #[test]
    fn the_first_stage_idles_the_textbook_bubble() {
        for schedule in Schedule::ALL.iter().copied() {
            for pp in 1..6 {
                for m in 1..9 {
                    let span = first_stage_span(schedule, pp, m);
                    assert_eq!(span, 3 * (m + pp - 1), "{schedule} pp {pp} m {m}");
                    let bubble = 1.0 - (3 * m) as f64 / span as f64;
                    assert!((bubble - ideal_bubble_fraction(pp, m)).abs() < 1e-12);
                }
            }
        }
    }
}
