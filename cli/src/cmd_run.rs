//! `faultline run` and `faultline replay`: a scenario's training job, its summary or JSON
//! report, its trace and timeline, and the replay of a recorded trace.

use std::path::{Path, PathBuf};

use faultline_sim::run::{self, RunReport};
use faultline_sim::scenario::{self, Scenario};
use faultline_sim::shell::quote;
use faultline_sim::swarm::invariants::Violation;
use faultline_sim::{replay, trace};

use crate::{check_outputs, guard_memory, locate, say, say_part, swarm_cli};
use crate::{Failure, SetArgs, TraceLevelArg};
use crate::{DEFAULT_SCENARIO, EXIT_FINDING};

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Scenario file.
    #[arg(default_value = DEFAULT_SCENARIO)]
    scenario: PathBuf,
    /// Root seed, 0 to 2^63 - 1; overrides run.seed.
    #[arg(long, value_parser = crate::parse_seed)]
    seed: Option<u64>,
    #[command(flatten)]
    set: SetArgs,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Run the same scenario with every fault switched off.
    #[arg(long)]
    no_faults: bool,
    /// Write a JSON-lines event trace here (columns in docs/trace.md); `-` for standard
    /// output, where the summary then goes to standard error (not with --json).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// What the trace keeps; `auto` is `events` up to 1,024 GPUs, `summary` above.
    #[arg(long, value_enum, default_value_t = TraceLevelArg::Auto)]
    trace_level: TraceLevelArg,
    /// Write a Chrome/Perfetto trace of the model timeline here; `-` as for --trace.
    #[arg(long, value_name = "FILE")]
    perfetto: Option<PathBuf>,
    /// Write each flight-recorder dump here (made when a detector stops the job): one file
    /// per rank up to 1,024 ranks, one for every rank above; `faultline fr DIR` reads them.
    /// By default `fr/<scenario>-seed<seed>/` under the working directory (with a hash of the
    /// --set options when there are any), written only when a dump was made.
    #[arg(long, value_name = "DIR")]
    fr_dir: Option<PathBuf>,
    /// Test hook for `check`: make compute call N one nanosecond longer.
    #[arg(long, hide = true, value_name = "N")]
    perturb_compute: Option<u64>,
    /// Also check every invariant the swarm checks (runs the scenario twice and once without
    /// faults); exit 1 when one breaks.
    #[arg(long)]
    check: bool,
    /// Also run the scenario without faults and say whether the final parameters match.
    #[arg(long)]
    compare: bool,
    /// The counters only: no story of what happened.
    #[arg(long, short)]
    quiet: bool,
    /// Set for `faultline` alone: ends with what to try next.
    #[arg(skip)]
    pub(crate) first_run: bool,
}

#[derive(clap::Args)]
pub(crate) struct ReplayArgs {
    /// A trace written by `faultline run --trace FILE`.
    trace: PathBuf,
}

pub(crate) fn cmd_run(args: RunArgs) -> Result<u8, Failure> {
    check_outputs(
        &[
            ("--trace", args.trace.as_deref()),
            ("--perfetto", args.perfetto.as_deref()),
        ],
        args.json.then_some("the --json report"),
    )?;
    // The file is read once: a pipe (/dev/stdin) has nothing left for a second read, and a
    // file may change between two; the trace's header embeds the text that was run.
    let text = read_scenario(&args.scenario)?;
    let scenario = scenario_of(&args, &text)?;
    // A --check run also runs the scenario again and once without faults, one at a time.
    guard_memory("this run", &scenario, 1)?;
    let recorder = recorder_for(&args, &scenario, &text.2)?;
    let mut reproduce = reproduce_line(&args.scenario, scenario.run.seed, &args.set.sets);
    if args.no_faults {
        reproduce.push_str(" --no-faults");
    }
    if !args.json {
        let (name, seed) = (&scenario.name, scenario.run.seed);
        say!("faultline run: {name} (seed {seed})");
        say!("reproduce: {reproduce}");
    }
    let report = run_traced(&args, &scenario, recorder)?;
    let violations = if args.check {
        swarm_cli::check_run(&scenario, &report)?
    } else {
        Vec::new()
    };
    let fault_free = if args.compare {
        Some(run::run_scenario(&scenario.without_faults()).map_err(Failure::of_sim)?)
    } else {
        None
    };
    let findings = findings(&report, &violations, fault_free.as_ref());
    if args.json {
        print_json(&report, reproduce, args.check.then_some(&violations));
    } else {
        print_text(&args, &report, fault_free.as_ref(), &violations, &findings);
    }
    Ok(if findings.is_empty() { 0 } else { EXIT_FINDING })
}

/// The story, the counters, the comparison, the invariants and the verdict, for people.
fn print_text(
    args: &RunArgs,
    report: &RunReport,
    fault_free: Option<&RunReport>,
    violations: &[Violation],
    findings: &[String],
) {
    if !args.quiet {
        say_part!("{}", story(report));
    }
    say_part!("{report}");
    if let Some(fault_free) = fault_free {
        say!("{}", comparison(report, fault_free));
    }
    if args.check {
        swarm_cli::print_violations(violations);
    }
    match findings {
        [] => say!("verdict: nothing wrong found (exit 0)"),
        _ => say!("verdict: {} (exit 1)", findings.join("; ")),
    }
    say!("wall: {} ms", report.wall_ms);
    if args.first_run {
        say_part!("{NEXT}");
    }
}

/// What to try after the first run.
const NEXT: &str = "
try next:
  cargo run --release -- run scenarios/first-run.toml --perfetto first-run.json
      # the same run as a timeline: open first-run.json in ui.perfetto.dev
  cargo run --release -- swarm scenarios/swarm-checkpoint-restart.toml --seeds 1..50
      # 49 seeds, each with random faults at random times, every invariant checked
  cargo run --release -- plan scenarios/plan-llama3-16k-54d.toml
      # Llama 3's 54 days on 16,384 GPUs: goodput under its published failure rates
";

/// The run's story, or a word on why there is none.
fn story(report: &RunReport) -> String {
    let story = &report.story;
    if story.happenings.is_empty() {
        return "what happened: no fault was injected; `faultline run \
                scenarios/first-run.toml` breaks three things\n"
            .into();
    }
    format!("what happened, in model time:\n{story}")
}

/// The final parameters beside those of the same run without faults.
fn comparison(report: &RunReport, fault_free: &RunReport) -> String {
    let same = report.param_digest == fault_free.param_digest
        && report.steps_completed == fault_free.steps_completed;
    let verdict = match (same, report.faults.escaped.is_empty()) {
        (true, true) => "the same final parameters: recovery lost no update",
        (true, false) => "the same final parameters: what escaped detection did not change them",
        (false, _) => "DIFFERENT final parameters: the faults changed what was learnt",
    };
    format!(
        "fault-free run: param_digest {} in {}; {verdict}",
        fault_free.param_digest,
        trainer_core::units::format_duration_ns(fault_free.model_time_ns)
    )
}

/// The scenario file's name, origin and text, read once.
fn read_scenario(path: &Path) -> Result<(String, String, String), Failure> {
    scenario::read_scenario_file(&locate(path)).map_err(|e| Failure::bad_input(e.to_string()))
}

/// The scenario read as `text` (name, origin, text), with the command line's `--set`s, seed
/// and `--no-faults` applied.
fn scenario_of(args: &RunArgs, text: &(String, String, String)) -> Result<Scenario, Failure> {
    let (name, origin, text) = text;
    let mut scenario = scenario::load_str(name, origin, text, &args.set.sets)
        .map_err(|e| Failure::bad_input(e.to_string()))?;
    if let Some(seed) = args.seed {
        scenario.run.seed = seed;
    }
    if args.no_faults {
        scenario = scenario.without_faults();
    }
    Ok(scenario)
}

/// Runs the scenario and finishes its trace and timeline files.
fn run_traced(
    args: &RunArgs,
    scenario: &Scenario,
    recorder: Option<trace::Recorder>,
) -> Result<RunReport, Failure> {
    let hooks = run::RunHooks {
        recorder,
        perturb_compute: args.perturb_compute,
        progress: crate::progress::run_bar(),
        keep_flight_dumps: true,
    };
    let (report, recorder) = run::run_scenario_with(scenario, hooks).map_err(|e| match e {
        run::SimError::Deadlock(_) if args.check => Failure::finding(format!(
            "invariant broken: liveness: the run did not finish: {e}"
        )),
        e => Failure::of_sim(e),
    })?;
    if let Some(recorder) = recorder {
        recorder
            .finish(
                |records| replay::footer_of(&report, records),
                report.model_time_ns,
            )
            .map_err(|e| Failure::bad_input(format!("writing the trace: {e}")))?;
    }
    if !report.flight_dumps.is_empty() {
        let dir = (args.fr_dir.clone()).unwrap_or_else(|| default_fr_dir(args, scenario));
        crate::cmd_fr::write_dumps(&dir, &report.flight_dumps)?;
        if !args.json {
            let stops = report.flight_dumps.len();
            say!("flight recorder: {stops} dump(s) in {}", dir.display());
        }
    }
    Ok(report)
}

/// `fr/<scenario>-seed<seed>`, and a hash of the `--set`s when there are any, so that runs of
/// other scenarios, seeds or settings never overwrite each other's dumps.
fn default_fr_dir(args: &RunArgs, scenario: &Scenario) -> PathBuf {
    let mut name = format!("{}-seed{}", scenario.name, scenario.run.seed);
    if !args.set.sets.is_empty() || args.no_faults {
        let mut hash = u64::from(args.no_faults);
        for set in &args.set.sets {
            for byte in set.bytes().chain([0]) {
                hash = trainer_core::digest::mix64(hash ^ u64::from(byte));
            }
        }
        name += &format!("-{hash:016x}");
    }
    PathBuf::from("fr").join(name)
}

/// What makes the run exit 1, in words: replicas that disagree, steps not run, a restore of
/// an uncommitted checkpoint, a corruption that escaped (and, when the fault-free run is at
/// hand, whether it changed the parameters), a broken invariant. Empty: exit 0.
fn findings(
    report: &RunReport,
    violations: &[Violation],
    fault_free: Option<&RunReport>,
) -> Vec<String> {
    let mut found = Vec::new();
    if !report.replicas_agree {
        found.push("the replicas' parameters disagree".to_string());
    }
    if report.steps_completed != report.steps_requested {
        let (done, asked) = (report.steps_completed, report.steps_requested);
        found.push(format!("the job ran {done} of its {asked} steps"));
    }
    if report.atomicity_violation_count > 0 {
        found.push("a restore read a checkpoint that was not committed".to_string());
    }
    if !report.faults.escaped.is_empty() {
        let same = fault_free.is_some_and(|f| f.param_digest == report.param_digest);
        found.push(format!(
            "{} corruption(s) escaped detection{}",
            report.faults.escaped.len(),
            if same {
                " (the final parameters still equal the fault-free run's)"
            } else {
                ""
            }
        ));
    }
    if !violations.is_empty() {
        found.push(format!("{} invariant(s) broken", violations.len()));
    }
    found
}

fn print_json(report: &RunReport, reproduce: String, violations: Option<&Vec<Violation>>) {
    let mut value = serde_json::to_value(report).expect("a report serialises");
    value["reproduce"] = serde_json::Value::String(reproduce);
    if let Some(violations) = violations {
        value["violations"] = serde_json::to_value(violations).expect("serialises");
    }
    println!("{value}");
}

/// The trace and timeline a run asked for, their files opened before the run starts; the
/// trace's header embeds `text`, the scenario as read.
fn recorder_for(
    args: &RunArgs,
    scenario: &Scenario,
    text: &str,
) -> Result<Option<trace::Recorder>, Failure> {
    if args.trace.is_none() && args.perfetto.is_none() {
        return Ok(None);
    }
    let mut recorder = trace::Recorder::new();
    if let Some(path) = &args.trace {
        let level = args.trace_level.resolve(scenario.cluster.gpus);
        let header = trace::TraceHeader::for_run(
            scenario,
            &args.scenario.display().to_string(),
            text,
            &args.set.sets,
            args.no_faults,
            level,
        )
        .map_err(|e| Failure::bad_input(e.to_string()))?;
        recorder
            .trace_to_file(path, &header, level)
            .map_err(|e| Failure::bad_input(format!("--trace {}: {e}", path.display())))?;
    }
    if let Some(path) = &args.perfetto {
        let cluster = &scenario.cluster;
        if let Err(e) = recorder.perfetto_to_file(path, cluster.gpus, cluster.gpus_per_node) {
            recorder.discard();
            let message = format!("--perfetto {}: {e}", path.display());
            return Err(Failure::bad_input(message));
        }
    }
    Ok(Some(recorder))
}

pub(crate) fn cmd_replay(args: ReplayArgs) -> Result<u8, Failure> {
    let outcome = replay::replay(&args.trace).map_err(|e| Failure::bad_input(e.to_string()))?;
    let outcome = outcome.map_err(|e| Failure::finding(format!("the replay failed: {e}")))?;
    let trace = args.trace.display();
    match outcome {
        replay::ReplayOutcome::Match { records } => {
            println!(
                "faultline replay: {trace}: the same run: digests and all {records} records match"
            );
            Ok(0)
        }
        replay::ReplayOutcome::Mismatch {
            line,
            recorded,
            replayed,
        } => {
            println!("faultline replay: {trace}: MISMATCH at line {line}");
            println!("  recorded: {recorded}");
            println!("  replayed: {replayed}");
            Ok(EXIT_FINDING)
        }
    }
}

/// The one command line that reproduces a run, quoted for a shell.
pub(crate) fn reproduce_line(path: &Path, seed: u64, sets: &[String]) -> String {
    let path = path.display().to_string();
    let mut line = format!("{} run {} --seed {seed}", crate::program(), quote(&path));
    for set in sets {
        line.push_str(&format!(" --set {}", quote(set)));
    }
    line
}
