//! `faultline bench`: how fast the simulator runs, at 1,000 to 100,000 GPUs.
//!
//! The parent process runs every case in a child process of its own (`faultline bench-case`),
//! so that each case's peak RSS (VmHWM) is its own and cases do not warm each other's caches or
//! allocator. Each child times only the simulation, not the process start, and prints one JSON
//! line; the parent keeps the fastest of `--repeat` runs and prints a table.
//!
//! The bare loop (`bare_loop.rs`) is the lower bound: the hierarchical all-reduce's messages
//! moved with the same timing model and no async machinery. faultline's hierarchical rows
//! report their wall time as a ratio to it, measured in the same `bench` run.

mod bare_loop;

use std::fmt::Write as _;
use std::process::Command;

use faultline_sim::executor::ExecutorKind;
use faultline_sim::run::{self, CollectiveSpec};
use faultline_sim::scenario::{self, Scenario};
use faultline_sim::topology::Topology;
use faultline_sim::units::format_duration_ns;
use serde::{Deserialize, Serialize};
use trainer_core::collectives::{Algo, Op};

/// The training job the step cases run: the 100,000-GPU scenario, resized.
const TRAINING_SCENARIO: &str = include_str!("../../scenarios/100k-gpus.toml");

/// The planner case's scenario: 30 days at 100,000 GPUs, resized.
const PLAN_SCENARIO: &str = include_str!("../../scenarios/plan-100k-30d.toml");

/// Seeds the planner case runs, as issue 9 sizes it.
pub const PLANNER_SEEDS: usize = 1_000;

/// The ten-step training case commits a checkpoint every this many steps.
pub const CHECKPOINT_EVERY_STEPS: u64 = 5;

/// Real elements per rank in the collective cases.
pub const COLLECTIVE_ELEMS: usize = 256;

/// Every case, in the order the table lists them.
pub const CASES: [&str; 8] = [
    "all-reduce/ring",
    "all-reduce/tree",
    "all-reduce/halving-doubling",
    "all-reduce/hierarchical",
    "bare-loop/hierarchical",
    "training/1-step",
    "training/10-steps",
    "planner",
];

/// GPUs per node in every case.
pub const GPUS_PER_NODE: usize = 8;

/// Why `case` cannot run at `gpus` GPUs, if it cannot: every case builds nodes of
/// [`GPUS_PER_NODE`] GPUs, the bare loop full ones only. `bench` refuses such a size before
/// it starts a child, and `bench-case` before it runs.
pub fn size_problem(case: &str, gpus: usize) -> Option<String> {
    match case {
        "bare-loop/hierarchical" if gpus % GPUS_PER_NODE != 0 => Some(format!(
            "{case} moves messages between full nodes of {GPUS_PER_NODE} GPUs only: give a \
             multiple of {GPUS_PER_NODE}, or leave the case out with --cases"
        )),
        "training/1-step" | "training/10-steps" | "planner" if gpus < GPUS_PER_NODE => {
            Some(format!(
                "{case} runs nodes of {GPUS_PER_NODE} GPUs: give at least {GPUS_PER_NODE}, or \
                 leave the case out with --cases"
            ))
        }
        _ => None,
    }
}

/// Why a case is not run at a size, if it is not.
pub fn skip_reason(case: &str, gpus: usize) -> Option<&'static str> {
    match case {
        "all-reduce/ring" if gpus > 1_000 => Some(
            "ring sends 2n(n-1) messages: 2e8 at 10,000 GPUs, 2e10 at 100,000; run at 1,000 only",
        ),
        _ => None,
    }
}

/// What one case measured, as a child prints it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseResult {
    pub case: String,
    pub gpus: usize,
    pub executor: String,
    pub wall_ms: f64,
    pub messages: u64,
    pub model_time_ns: u64,
    pub instants: u64,
    pub peak_rss_kib: u64,
    /// Collective exact, or training replicas agree with every step done.
    pub ok: bool,
    pub trace_digest: String,
    /// Whether payloads were checksummed and verified (`--payload-checksums`).
    pub payload_checksums: bool,
}

/// Runs one case in this process and returns what it measured. With `checksums`, every
/// payload is checksummed and verified (the simulated collectives' default), in the bare loop
/// too, so that the ratio between them is the async machinery's alone.
pub fn run_case(
    case: &str,
    gpus: usize,
    executor: ExecutorKind,
    checksums: bool,
) -> Result<CaseResult, String> {
    let started = wall_clock_start();
    let mut result = match case {
        "bare-loop/hierarchical" => bare_loop_case(gpus, checksums),
        "planner" => run_planner(gpus)?,
        "training/1-step" | "training/10-steps" => training_case(case, gpus, executor, checksums)?,
        _ => collective_case(case, gpus, executor, checksums)?,
    };
    result.wall_ms = started.elapsed().as_secs_f64() * 1e3;
    result.peak_rss_kib = peak_rss_kib();
    Ok(result)
}

/// The bare event loop's hierarchical all-reduce: the lower bound of the simulator's cost.
fn bare_loop_case(gpus: usize, checksums: bool) -> CaseResult {
    let case = "bare-loop/hierarchical";
    let base = base_scenario(checksums);
    let mut cluster = base.cluster.clone();
    cluster.gpus = gpus;
    cluster.gpus_per_node = GPUS_PER_NODE;
    let topology = Topology::new(&cluster, &base.fabric);
    let report = bare_loop::run(
        &topology,
        COLLECTIVE_ELEMS,
        4 * COLLECTIVE_ELEMS as u64,
        checksums,
    );
    CaseResult {
        case: case.into(),
        gpus,
        executor: "bare".into(),
        wall_ms: 0.0,
        messages: report.messages,
        model_time_ns: report.model_time_ns,
        instants: report.instants,
        peak_rss_kib: 0,
        ok: report.exact,
        trace_digest: String::new(),
        payload_checksums: checksums,
    }
}

/// One or ten training steps, checkpointing every `CHECKPOINT_EVERY_STEPS`.
fn training_case(
    case: &str,
    gpus: usize,
    executor: ExecutorKind,
    checksums: bool,
) -> Result<CaseResult, String> {
    let steps = if case == "training/1-step" { 1 } else { 10 };
    let scenario = training_scenario(gpus, steps, executor, checksums)?;
    let report = run::run_scenario(&scenario).map_err(|e| e.to_string())?;
    // The last step's checkpoint is still persisting when the job ends.
    let checkpoints_expected = steps.saturating_sub(1) / CHECKPOINT_EVERY_STEPS;
    Ok(CaseResult {
        case: case.into(),
        gpus,
        executor: report.executor.into(),
        wall_ms: 0.0,
        messages: report.messages,
        model_time_ns: report.model_time_ns,
        instants: report.instants,
        peak_rss_kib: 0,
        ok: report.replicas_agree
            && report.steps_completed == steps
            && report.checkpoints_committed >= checkpoints_expected,
        trace_digest: report.trace_digest,
        payload_checksums: checksums,
    })
}

/// One all-reduce of `COLLECTIVE_ELEMS` floats with the case's algorithm.
fn collective_case(
    case: &str,
    gpus: usize,
    executor: ExecutorKind,
    checksums: bool,
) -> Result<CaseResult, String> {
    let algo = case
        .strip_prefix("all-reduce/")
        .and_then(Algo::from_name)
        .ok_or_else(|| format!("unknown case {case}; cases: {}", CASES.join(", ")))?;
    let spec = CollectiveSpec {
        algo,
        inter_node_algo: Algo::HalvingDoubling,
        op: Op::AllReduce,
        gpus,
        gpus_per_node: GPUS_PER_NODE,
        elems: COLLECTIVE_ELEMS,
        modelled_bytes: 4 * COLLECTIVE_ELEMS as u64,
        seed: 1,
        executor,
        base: base_scenario(checksums),
    };
    let report = run::run_collective(&spec).map_err(|e| e.to_string())?;
    Ok(CaseResult {
        case: case.into(),
        gpus,
        executor: report.executor.into(),
        wall_ms: 0.0,
        messages: report.messages,
        model_time_ns: report.model_time_ns,
        instants: report.instants,
        peak_rss_kib: 0,
        ok: report.exact,
        trace_digest: report.trace_digest,
        payload_checksums: checksums,
    })
}

fn base_scenario(checksums: bool) -> Scenario {
    scenario::load_str(
        "defaults",
        "<built-in defaults>",
        "[cluster]\ngpus = 1\ngpus_per_node = 1\n[job]\nsteps = 1\n",
        &[format!("detection.payload_checksums={checksums}")],
    )
    .expect("the built-in defaults load")
}

/// The 100,000-GPU scenario at `gpus` GPUs and `steps` steps. Runs of five steps or more
/// commit a checkpoint every [`CHECKPOINT_EVERY_STEPS`]: snapshot, buddy copy and persist of
/// every rank's shard, with the scenario's default storage model.
fn training_scenario(
    gpus: usize,
    steps: u64,
    executor: ExecutorKind,
    checksums: bool,
) -> Result<Scenario, String> {
    let mut sets = vec![
        format!("cluster.gpus={gpus}"),
        format!("job.steps={steps}"),
        format!("run.executor={}", executor.name()),
        format!("detection.payload_checksums={checksums}"),
    ];
    if steps >= CHECKPOINT_EVERY_STEPS {
        sets.push(format!("checkpoint.interval={CHECKPOINT_EVERY_STEPS}"));
    }
    scenario::load_str(
        "100k-gpus",
        "scenarios/100k-gpus.toml",
        TRAINING_SCENARIO,
        &sets,
    )
    .map_err(|e| e.to_string())
}

/// The planner's Monte Carlo: [`PLANNER_SEEDS`] seeds of 30 days at `gpus` GPUs, the
/// bundled 100,000-GPU plan's rates and costs with its default policy (restart, 10-minute
/// checkpoints), on every core. `instants` counts the interruptions simulated; `model` is
/// the horizon of one seed.
fn run_planner(gpus: usize) -> Result<CaseResult, String> {
    let sets = [
        format!("cluster.gpus={gpus}"),
        format!("plan.seeds={PLANNER_SEEDS}"),
    ];
    let mut config = faultline_sim::plan::config::load_str(
        "plan-100k-30d",
        "scenarios/plan-100k-30d.toml",
        PLAN_SCENARIO,
        &sets,
    )
    .map_err(|e| e.to_string())?;
    faultline_sim::plan::config::Costs::default().apply(&mut config);
    let horizon_ns = (config.horizon_s * 1e9) as u64;
    let points = [faultline_sim::plan::Point {
        settings: Vec::new(),
        config,
    }];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shard = faultline_sim::plan::run_shard(&points, 0, 1, threads, &|| {});
    let results = &shard.points[0].results;
    let seeds_ran = results.len() == PLANNER_SEEDS
        && results
            .iter()
            .all(|r| r.useful_s.is_finite() && r.useful_s > 0.0);
    Ok(CaseResult {
        case: "planner".into(),
        gpus,
        executor: "-".into(),
        wall_ms: 0.0,
        messages: 0,
        model_time_ns: horizon_ns,
        instants: results.iter().map(|r| r.interruptions).sum(),
        peak_rss_kib: 0,
        ok: seeds_ran,
        trace_digest: String::new(),
        payload_checksums: false,
    })
}

/// The process's peak resident set (VmHWM), in KiB; 0 where /proc is missing.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The wall clock, read only by the benchmark and the CLI's `wall_ms`.
#[allow(clippy::disallowed_methods)]
fn wall_clock_start() -> std::time::Instant {
    std::time::Instant::now()
}

/// One row of the table: a case's best run, or why it did not run.
pub struct Row {
    pub case: String,
    pub gpus: usize,
    pub executor: String,
    pub outcome: Result<CaseResult, NotRun>,
}

/// Why a row has no result.
pub enum NotRun {
    /// Not run at this size, by design ([`skip_reason`]).
    Skipped(&'static str),
    /// The child failed: the exit status `bench` gives for it (that of a child refusing bad
    /// input or reporting a finding, otherwise an internal error) and what happened.
    Failed { status: u8, message: String },
}

impl std::fmt::Display for NotRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotRun::Skipped(reason) => write!(f, "skipped: {reason}"),
            NotRun::Failed { message, .. } => write!(f, "failed {message}"),
        }
    }
}

/// Runs every case at every size on every executor, each in a child process, `repeat` times.
pub fn run_all(
    cases: &[String],
    gpus_list: &[usize],
    executors: &[ExecutorKind],
    repeat: usize,
    checksums: bool,
    progress: &mut dyn FnMut(&Row),
) -> Vec<Row> {
    let exe = std::env::current_exe().expect("the running program's path");
    let mut rows = Vec::new();
    for &gpus in gpus_list {
        for case in cases {
            let runs_on: Vec<Option<ExecutorKind>> =
                if case.starts_with("bare-loop") || case == "planner" {
                    vec![None]
                } else {
                    executors.iter().copied().map(Some).collect()
                };
            for executor in runs_on {
                let executor_name = match executor {
                    Some(kind) => kind.name(),
                    None if case == "planner" => "-",
                    None => "bare",
                };
                let outcome = match skip_reason(case, gpus) {
                    Some(reason) => Err(NotRun::Skipped(reason)),
                    None => best_of(&exe, case, gpus, executor, repeat, checksums),
                };
                let row = Row {
                    case: case.clone(),
                    gpus,
                    executor: executor_name.into(),
                    outcome,
                };
                progress(&row);
                rows.push(row);
            }
        }
    }
    rows
}

fn best_of(
    exe: &std::path::Path,
    case: &str,
    gpus: usize,
    executor: Option<ExecutorKind>,
    repeat: usize,
    checksums: bool,
) -> Result<CaseResult, NotRun> {
    let bug = |message: String| NotRun::Failed {
        status: crate::EXIT_BUG,
        message,
    };
    let mut best: Option<CaseResult> = None;
    for _ in 0..repeat.max(1) {
        let output = Command::new(exe)
            .args(["bench-case", case, "--gpus", &gpus.to_string()])
            .args(["--executor", executor.map_or("fifo", ExecutorKind::name)])
            .args(["--payload-checksums", if checksums { "on" } else { "off" }])
            .output()
            .map_err(|e| bug(format!("(cannot start {}: {e})", exe.display())))?;
        if !output.status.success() {
            let status = match output.status.code().and_then(|c| u8::try_from(c).ok()) {
                Some(code @ (crate::EXIT_FINDING | crate::EXIT_BAD_INPUT)) => code,
                _ => crate::EXIT_BUG,
            };
            let message = format!(
                "({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
            return Err(NotRun::Failed { status, message });
        }
        let result: CaseResult = serde_json::from_slice(&output.stdout)
            .map_err(|e| bug(format!("(unreadable result: {e})")))?;
        best = Some(match best {
            Some(b) if b.wall_ms <= result.wall_ms => CaseResult {
                peak_rss_kib: b.peak_rss_kib.max(result.peak_rss_kib),
                ..b
            },
            Some(b) => CaseResult {
                peak_rss_kib: b.peak_rss_kib.max(result.peak_rss_kib),
                ..result
            },
            None => result,
        });
    }
    Ok(best.expect("at least one run"))
}

/// The table: one line a row, with messages per second and, for hierarchical all-reduce rows,
/// the ratio of wall time to the bare loop's at the same size.
pub fn format_table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:>7} {:>6} {:>10} {:>11} {:>9} {:>11} {:>9} {:>8} {:>3}",
        "case", "gpus", "exec", "wall_ms", "messages", "Mmsg/s", "model", "rss_MiB", "x_bare", "ok"
    );
    for row in rows {
        match &row.outcome {
            Ok(r) => {
                let ratio = bare_ratio(rows, r).map_or("-".into(), |x| format!("{x:.2}"));
                let (messages, rate) = if r.messages == 0 {
                    ("-".to_string(), "-".to_string())
                } else {
                    let rate = r.messages as f64 / (r.wall_ms / 1e3) / 1e6;
                    (r.messages.to_string(), format!("{rate:.2}"))
                };
                let _ = writeln!(
                    out,
                    "{:<28} {:>7} {:>6} {:>10.1} {:>11} {:>9} {:>11} {:>9.1} {:>8} {:>3}",
                    r.case,
                    r.gpus,
                    r.executor,
                    r.wall_ms,
                    messages,
                    rate,
                    format_duration_ns(r.model_time_ns),
                    r.peak_rss_kib as f64 / 1024.0,
                    ratio,
                    if r.ok { "yes" } else { "NO" }
                );
            }
            Err(why) => {
                let _ = writeln!(
                    out,
                    "{:<28} {:>7} {:>6} {why}",
                    row.case, row.gpus, row.executor
                );
            }
        }
    }
    out
}

/// Wall time over the bare loop's at the same size, for hierarchical all-reduce rows.
pub fn bare_ratio(rows: &[Row], result: &CaseResult) -> Option<f64> {
    if result.case != "all-reduce/hierarchical" {
        return None;
    }
    rows.iter()
        .filter_map(|row| row.outcome.as_ref().ok())
        .find(|r| r.case == "bare-loop/hierarchical" && r.gpus == result.gpus)
        .map(|bare| result.wall_ms / bare.wall_ms)
}

/// How each case's wall time grows from the smallest size to the largest, beside what n and
/// n log n growth would give.
pub fn format_growth(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut keys: Vec<(String, String)> = Vec::new();
    for row in rows {
        let key = (row.case.clone(), row.executor.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    for (case, executor) in keys {
        let mut measured: Vec<&CaseResult> = rows
            .iter()
            .filter(|r| r.case == case && r.executor == executor)
            .filter_map(|r| r.outcome.as_ref().ok())
            .collect();
        measured.sort_by_key(|r| r.gpus);
        let (Some(small), Some(large)) = (measured.first(), measured.last()) else {
            continue;
        };
        if small.gpus == large.gpus {
            continue;
        }
        let n_ratio = large.gpus as f64 / small.gpus as f64;
        let n_log_n = n_ratio * (large.gpus as f64).ln() / (small.gpus as f64).ln();
        let _ = writeln!(
            out,
            "{case} ({executor}): {} -> {} GPUs: wall x{:.1}, messages x{:.1} (n: x{n_ratio:.0}, n log n: x{n_log_n:.0})",
            small.gpus,
            large.gpus,
            large.wall_ms / small.wall_ms,
            large.messages as f64 / small.messages.max(1) as f64,
        );
    }
    out
}

/// Reruns a hierarchical all-reduce in this process to check the bare loop moves the same
/// messages as the simulator: same count, same model time.
#[cfg(test)]
fn simulator_hierarchical(gpus: usize) -> (u64, u64) {
    let spec = CollectiveSpec {
        algo: Algo::Hierarchical,
        inter_node_algo: Algo::HalvingDoubling,
        op: Op::AllReduce,
        gpus,
        gpus_per_node: 8,
        elems: 64,
        modelled_bytes: 4096,
        seed: 1,
        executor: ExecutorKind::Fifo,
        base: base_scenario(true),
    };
    let report = run::run_collective(&spec).expect("the collective runs");
    assert!(report.exact);
    (report.messages, report.model_time_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bare loop is a fair lower bound only if it moves what the simulator moves.
    #[test]
    fn bare_loop_moves_the_simulators_messages_in_the_same_model_time() {
        for gpus in [8, 16, 40, 96, 200] {
            let base = base_scenario(true);
            let mut cluster = base.cluster.clone();
            cluster.gpus = gpus;
            cluster.gpus_per_node = 8;
            let topology = Topology::new(&cluster, &base.fabric);
            let bare = bare_loop::run(&topology, 64, 4096, true);
            assert!(bare.exact, "{gpus} GPUs");
            let (messages, model_time_ns) = simulator_hierarchical(gpus);
            assert_eq!(bare.messages, messages, "{gpus} GPUs");
            assert_eq!(bare.model_time_ns, model_time_ns, "{gpus} GPUs");
        }
    }

    #[test]
    fn peak_rss_is_read() {
        assert!(peak_rss_kib() > 0);
    }
}
