//! The world's side of recording: installing a [`Recorder`], handing it records, and the
//! compute calls (whose duration the trace and the timeline show).

use trainer_core::units::capped_ns;
use trainer_core::{Event, Work};

use super::{World, ABORTED};
use crate::books::FaultKind;
use crate::story::Story;
use crate::trace::{Record, Recorder};

/// Where a run stands, as a progress bar shows it: nothing here feeds back into the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Rank 0's steps ended, counting the step it just ended (a restart goes back).
    pub steps_done: u64,
    pub steps: u64,
    pub model_time_ns: u64,
    /// Faults injected so far.
    pub faults: u64,
}

/// What a run tells where it stands: a progress bar's feed.
pub type ProgressHook = Box<dyn FnMut(&Progress)>;

impl World {
    /// Records everything from now on into `recorder`.
    pub fn set_recorder(&mut self, recorder: Recorder) {
        self.recorder = Some(Box::new(recorder));
    }

    /// The recorder, once the run is over.
    pub fn take_recorder(&mut self) -> Option<Recorder> {
        self.recorder.take().map(|r| *r)
    }

    /// Tells `progress` after each step rank 0 ends, of `steps`.
    pub fn set_progress(&mut self, progress: ProgressHook, steps: u64) {
        self.progress = Some((progress, steps));
    }

    /// After rank 0 ends a step, tells the progress hook where the run stands.
    pub(super) fn tell_progress(&mut self, rank: usize, event: &Event) {
        let (0, &Event::StepEnd { step, .. }) = (rank, event) else {
            return;
        };
        if self.progress.is_none() {
            return;
        }
        let faults = self.faults_so_far();
        let now_ns = self.clock.now_ns();
        if let Some((tell, steps)) = &mut self.progress {
            tell(&Progress {
                steps_done: step + 1,
                steps: *steps,
                model_time_ns: now_ns,
                faults,
            });
        }
    }

    /// The story so far: faults, detections and recoveries in words.
    pub fn story(&self) -> &Story {
        &self.story
    }

    /// Makes the compute call of index `call` (across all ranks, from 0) one nanosecond longer:
    /// the deliberate nondeterminism `faultline check`'s own test must catch.
    pub fn perturb_compute(&mut self, call: u64) {
        self.perturb_compute = Some(call);
    }

    /// Hands `record` at the current instant to the recorder, if there is one.
    #[inline]
    pub(super) fn record(&mut self, rank: Option<u32>, record: Record) {
        if Story::tells(rank, &record) {
            self.story.note(self.clock.now_ns(), rank, &record);
        }
        if let Some(recorder) = &mut self.recorder {
            recorder.record(self.clock.now_ns(), rank, record);
        }
    }

    /// Marks a fault that kills nothing (a flap, a slowdown, a corruption) where the trace and
    /// the story see it; `target` is written only when one of them will keep it.
    pub(super) fn record_injected(
        &mut self,
        rank: Option<u32>,
        kind: FaultKind,
        target: impl FnOnce(&World) -> String,
    ) {
        if self.recorder.is_none() && self.story.is_full() {
            self.story.omitted += 1;
            return;
        }
        let target = target(self);
        self.record(
            rank,
            Record::Injected {
                kind,
                target: &target,
            },
        );
    }

    /// How long `work` takes on `rank`, recorded as a compute span.
    pub(super) fn begin_compute(&mut self, rank: usize, work: Work) -> u64 {
        let nominal_ns = capped_ns(work.flops / self.gpu_flops_per_s * 1e9);
        // A straggler's compute runs `factor` times longer.
        let mut duration_ns = self.compute_ns(rank, nominal_ns);
        if let Some(left) = &mut self.perturb_compute {
            if *left == 0 {
                duration_ns += 1;
                self.perturb_compute = None;
            } else {
                *left -= 1;
            }
        }
        // A stopped rank's compute ends before it starts (its sleep fails with `Aborted`).
        if self.recorder.is_some() && !self.ranks[rank].has(ABORTED) {
            let record = Record::Compute {
                work: work.kind,
                duration_ns,
            };
            self.record(Some(rank as u32), record);
        }
        duration_ns
    }
}
