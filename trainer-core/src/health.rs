//! Health checks on per-rank telemetry. [`StragglerDetector`] scores each rank's compute time
//! against the median of the step and flags a rank that stays over a threshold for `patience`
//! consecutive steps: one slow step is noise, a run of them is a throttled GPU.

/// A rank flagged as a straggler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Flagged {
    pub rank: usize,
    /// The rank's time over the median at the step that flagged it.
    pub score: f64,
}

#[derive(Clone, Debug)]
pub struct StragglerDetector {
    threshold: f64,
    patience: u32,
    /// Per rank: consecutive steps over the threshold so far.
    over: Vec<u32>,
    /// Per rank: already flagged (a rank is flagged once).
    flagged: Vec<bool>,
    /// Scratch for the median.
    sorted: Vec<u64>,
}

/// What one step's times say.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepScores {
    pub median_ns: u64,
    pub max_ns: u64,
    /// The highest score (time over the median) of the step.
    pub max_score: f64,
    /// Ranks newly flagged at this step, in rank order.
    pub flagged: Vec<Flagged>,
}

impl StragglerDetector {
    /// `threshold`: the score (time / median) above which a step counts against a rank;
    /// `patience`: how many such steps in a row flag it.
    pub fn new(rank_count: usize, threshold: f64, patience: u32) -> StragglerDetector {
        assert!(threshold > 1.0 && patience >= 1);
        StragglerDetector {
            threshold,
            patience,
            over: vec![0; rank_count],
            flagged: vec![false; rank_count],
            sorted: Vec::with_capacity(rank_count),
        }
    }

    /// Forgets the runs of slow steps (after a restart the ranks start afresh); flags stay.
    pub fn reset_runs(&mut self) {
        self.over.fill(0);
    }

    /// Forgets that `rank` was flagged (its hardware was replaced).
    pub fn clear_flag(&mut self, rank: usize) {
        self.flagged[rank] = false;
        self.over[rank] = 0;
    }

    /// Scores one step: `times_ns[rank]` is each rank's compute time for the step. The median
    /// is the upper median, so a single slow rank never moves it.
    pub fn observe(&mut self, times_ns: &[u64]) -> StepScores {
        assert_eq!(times_ns.len(), self.over.len());
        self.sorted.clear();
        self.sorted.extend_from_slice(times_ns);
        let mid = self.sorted.len() / 2;
        let median_ns = *self.sorted.select_nth_unstable(mid).1;
        let max_ns = times_ns.iter().copied().max().unwrap_or(0);
        let score = |t: u64| {
            if median_ns == 0 {
                1.0
            } else {
                t as f64 / median_ns as f64
            }
        };
        let mut scores = StepScores {
            median_ns,
            max_ns,
            max_score: score(max_ns),
            flagged: Vec::new(),
        };
        for (rank, &t) in times_ns.iter().enumerate() {
            let s = score(t);
            if s > self.threshold {
                self.over[rank] += 1;
                if self.over[rank] >= self.patience && !self.flagged[rank] {
                    self.flagged[rank] = true;
                    scores.flagged.push(Flagged { rank, score: s });
                }
            } else {
                self.over[rank] = 0;
            }
        }
        scores
    }
}
