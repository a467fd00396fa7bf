//! Replay: a run rebuilt from the scenario a trace's header embeds, traced again in memory and
//! compared with the file line for line. This sits above `run` and `trace`: it runs scenarios
//! and reads traces, and neither of them knows it.

use std::path::Path;

use crate::run::{resolve_executor, run_scenario_with, RunHooks, RunReport, SimError};
use crate::trace::{
    first_difference, read_trace, Recorder, TraceFileError, TraceFooter, TraceHeader, TraceLevel,
    TRACE_FORMAT,
};
use faultline_scenario::{ExecutorChoice, Scenario, ScenarioError};

impl TraceHeader {
    /// The header of a run of `scenario` loaded from `scenario_toml` with `overrides`.
    pub fn for_run(
        scenario: &Scenario,
        scenario_path: &str,
        scenario_toml: &str,
        overrides: &[String],
        no_faults: bool,
        level: TraceLevel,
    ) -> Result<TraceHeader, SimError> {
        let executor = resolve_executor(scenario.run.executor, scenario.cluster.gpus)?;
        Ok(TraceHeader {
            faultline_trace: TRACE_FORMAT,
            version: env!("CARGO_PKG_VERSION").to_string(),
            scenario: scenario.name.clone(),
            scenario_path: scenario_path.to_string(),
            scenario_toml: scenario_toml.to_string(),
            overrides: overrides.to_vec(),
            no_faults,
            seed: scenario.run.seed,
            executor: executor.name().to_string(),
            level: level.name().to_string(),
        })
    }

    /// The scenario this header describes, rebuilt from the embedded text; `origin` names it
    /// in errors.
    pub fn scenario(&self, origin: &str) -> Result<Scenario, ScenarioError> {
        let mut scenario = faultline_scenario::load_str(
            &self.scenario,
            origin,
            &self.scenario_toml,
            &self.overrides,
        )?;
        scenario.run.seed = self.seed;
        scenario.run.executor = match self.executor.as_str() {
            "madsim" => ExecutorChoice::Madsim,
            _ => ExecutorChoice::Fifo,
        };
        if self.no_faults {
            scenario = scenario.without_faults();
        }
        Ok(scenario)
    }
}

/// The footer of a finished run.
pub fn footer_of(report: &RunReport, records: u64) -> TraceFooter {
    TraceFooter {
        faultline_trace_end: TRACE_FORMAT,
        trace_digest: report.trace_digest.clone(),
        param_digest: report.param_digest.clone(),
        steps_completed: report.steps_completed,
        model_time_ns: report.model_time_ns,
        records,
    }
}

/// Runs `scenario` and returns its report and its whole trace at `header`'s level, as lines.
pub fn run_traced_in_memory(
    scenario: &Scenario,
    header: &TraceHeader,
) -> Result<(RunReport, Vec<String>), SimError> {
    let level = TraceLevel::from_name(&header.level).unwrap_or(TraceLevel::Events);
    let mut recorder = Recorder::new();
    recorder.trace_to_memory(header, level);
    let hooks = RunHooks {
        recorder: Some(recorder),
        ..RunHooks::default()
    };
    let (report, recorder) = run_scenario_with(scenario, hooks)?;
    let bytes = recorder
        .expect("the recorder comes back")
        .finish(|records| footer_of(&report, records), report.model_time_ns)
        .expect("memory takes every write")
        .expect("an in-memory trace");
    let text = String::from_utf8(bytes).expect("the trace is UTF-8");
    Ok((report, text.lines().map(String::from).collect()))
}

/// What replaying a trace found.
pub enum ReplayOutcome {
    /// Same digests, and the same records line for line.
    Match { records: u64 },
    /// The first line (1-based, in the file) that differs, with both texts.
    Mismatch {
        line: usize,
        recorded: String,
        replayed: String,
    },
}

/// Re-runs the scenario a trace's header describes and compares: every record line and the
/// footer's digests.
pub fn replay(path: &Path) -> Result<Result<ReplayOutcome, SimError>, TraceFileError> {
    let trace = read_trace(path)?;
    let origin = format!("{}:1 (the embedded scenario)", path.display());
    let scenario = trace
        .header
        .scenario(&origin)
        .map_err(|e| TraceFileError(e.to_string()))?;
    crate::limits::guard("this replay", &scenario, 1).map_err(TraceFileError)?;
    if TraceLevel::from_name(&trace.header.level).is_none() {
        return Err(TraceFileError(format!(
            "{}:1: level: expected one of {:?}, got {:?}",
            path.display(),
            TraceLevel::NAMES,
            trace.header.level
        )));
    }
    let (_, replayed) = match run_traced_in_memory(&scenario, &trace.header) {
        Ok(run) => run,
        Err(e) => return Ok(Err(e)),
    };
    let mut recorded = Vec::with_capacity(trace.records.len() + 2);
    recorded.push(serde_json::to_string(&trace.header).expect("serialises"));
    recorded.extend(trace.records);
    recorded.push(serde_json::to_string(&trace.footer).expect("serialises"));
    Ok(Ok(match first_difference(&recorded, &replayed) {
        None => ReplayOutcome::Match {
            records: trace.footer.records,
        },
        Some((line, a, b)) => ReplayOutcome::Mismatch {
            line,
            recorded: a.unwrap_or("(end of trace)").to_string(),
            replayed: b.unwrap_or("(end of trace)").to_string(),
        },
    }))
}
