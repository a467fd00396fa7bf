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
/// sums over micro-batches are in the same order whatever the schedule.
pub fn passes(schedule: Schedule, stage: usize, pp: usize, micro_batches: usize) -> Vec<Pass> {
    assert!(stage < pp && micro_batches > 0);
    let m = micro_batches;
    let mut out = Vec::with_capacity(2 * m);
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

    #[test]
    fn one_f_one_b_holds_at_most_pp_minus_stage_micro_batches() {
        for pp in 1..6 {
            for m in 1..9 {
                for stage in 0..pp {
                    let mut live = 0usize;
                    let mut most = 0;
                    for pass in passes(Schedule::OneForwardOneBackward, stage, pp, m) {
                        match pass {
                            Pass::Forward(_) => live += 1,
                            Pass::Backward(_) => live -= 1,
                        }
                        most = most.max(live);
                    }
                    assert_eq!(most, (pp - stage).min(m), "pp {pp} m {m} stage {stage}");
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
