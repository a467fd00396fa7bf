//! The `faultline` command line. Parses arguments, loads scenarios, runs, prints. Exit status:
//! 0 success, 1 the run found a problem (inexact collective, diverged replicas, deadlock),
//! 2 bad input, 70 an internal error (a bug in faultline).

mod bench;
mod check;
mod heap;
mod swarm_cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use faultline_sim::atomic::write_atomically;
use faultline_sim::books::by_name;
use faultline_sim::executor::ExecutorKind;
use faultline_sim::limits;
use faultline_sim::plan;
use faultline_sim::run::{self, CollectiveSpec};
use faultline_sim::scenario::{self, ExecutorChoice, Scenario, MAX_GPUS};
use faultline_sim::topology::Topology;
use faultline_sim::units::format_duration_ns;
use faultline_sim::{replay, trace};
use trainer_core::collectives::{Algo, Op};

pub(crate) const EXIT_FINDING: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;
const EXIT_BUG: u8 = 70;

/// The scenario `faultline` runs when given none.
const DEFAULT_SCENARIO: &str = "scenarios/quickstart.toml";

#[derive(Parser)]
#[command(
    name = "faultline",
    version,
    about = "Break a 100,000-GPU training cluster on a laptop, deterministically."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario's training job on the simulated cluster.
    Run(RunArgs),
    /// Run one collective on a simulated cluster and check it against the exact reference.
    Collective(CollectiveArgs),
    /// Summarise a scenario's topology.
    Topo(TopoArgs),
    /// Benchmark the simulator: wall time, messages per second, model time and peak RSS per
    /// case and size, each case in a child process, with the bare event loop as the lower bound.
    Bench(BenchArgs),
    /// Run one benchmark case in this process and print its result as one JSON line (what
    /// `bench` runs in each child).
    #[command(hide = true)]
    BenchCase(BenchCaseArgs),
    /// Capacity planning: Monte Carlo of failures, recovery and checkpoints over weeks.
    Plan(PlanArgs),
    /// Merge `plan --shard i/n --out FILE` shards into the unsharded report.
    Merge(MergeArgs),
    /// Measure planner costs by running the training logic at the scenario's scale.
    Calibrate(CalibrateArgs),
    /// Swarm testing: run many seeds, each with a random subset of fault kinds at random
    /// times, and check every invariant on each.
    #[command(long_about = swarm_cli::SWARM_ABOUT)]
    Swarm(swarm_cli::SwarmArgs),
    /// Shrink a failing seed's fault schedule to a minimal one and write it as a scenario.
    #[command(long_about = swarm_cli::SHRINK_ABOUT)]
    Shrink(swarm_cli::ShrinkArgs),
    /// Re-run the scenario recorded in a `run --trace` file and check that it comes out the
    /// same: the digests, and every record the trace holds.
    Replay(ReplayArgs),
    /// Determinism self-check: run a scenario twice in separate processes and compare their
    /// traces record by record; on divergence, print the first differing record.
    Check(check::CheckArgs),
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// A trace written by `faultline run --trace FILE`.
    trace: PathBuf,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// GPU counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000, 100_000])]
    gpus: Vec<usize>,
    /// Cases, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', value_parser = bench::CASES)]
    cases: Vec<String>,
    /// Executors, comma-separated; the bare loop runs once whatever this says.
    #[arg(long, value_delimiter = ',', default_values_t = ["fifo".to_string(), "madsim".to_string()], value_parser = ["fifo", "madsim"])]
    executors: Vec<String>,
    /// Runs per case; the table keeps the fastest (and the highest peak RSS).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Checksum and verify every payload (a scenario's default), in the bare loop too.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    payload_checksums: String,
}

#[derive(clap::Args)]
struct BenchCaseArgs {
    #[arg(value_parser = bench::CASES)]
    case: String,
    #[arg(long)]
    gpus: usize,
    #[arg(long, default_value = "fifo", value_parser = ["fifo", "madsim"])]
    executor: String,
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    payload_checksums: String,
}

#[derive(clap::Args)]
struct PlanArgs {
    /// Planner scenario file.
    scenario: PathBuf,
    /// Seeds per sweep point; overrides plan.seeds.
    #[arg(long)]
    seeds: Option<usize>,
    /// Override a scenario key by its dotted path, e.g. --set checkpoint.interval=30min.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Sweep a key over values; repeat for a cartesian product. Replaces the file's plan.sweep.
    #[arg(long = "sweep", value_name = "KEY=V1,V2,...")]
    sweeps: Vec<String>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Draw ETTR against the checkpoint interval into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Run only shard i of n (seeds i, i+n, ...); needs --out, and `faultline merge` combines.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Write the report (or with --shard, the shard) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// A cost file from `faultline calibrate`.
    #[arg(long, value_name = "FILE")]
    costs: Option<PathBuf>,
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(clap::Args)]
struct MergeArgs {
    /// Shard files written by `plan --shard i/n --out FILE`.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[arg(long)]
    json: bool,
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CalibrateArgs {
    /// Planner scenario file; its cluster, fabric, job, storage, checkpoint and recovery
    /// tables set up the runs.
    scenario: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Training steps of the steady run (the step time); the crash runs take a few more.
    #[arg(long, default_value_t = 3)]
    steps: u64,
    /// Also run a crash for each recovery policy the scenario does not name, to measure
    /// every policy's restore time (one more run each).
    #[arg(long)]
    all_policies: bool,
    /// The cost file to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Scenario file.
    #[arg(default_value = DEFAULT_SCENARIO)]
    scenario: PathBuf,
    /// Root seed; overrides run.seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override a scenario key by its dotted path, e.g. --set cluster.gpus=12345.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Run the same scenario with every fault switched off.
    #[arg(long)]
    no_faults: bool,
    /// Write a JSON-lines event trace here (columns in docs/trace.md).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// What the trace keeps; `auto` is `events` up to 1,024 GPUs, `summary` above.
    #[arg(long, default_value = "auto", value_parser = ["auto", "summary", "events", "messages"])]
    trace_level: String,
    /// Write a Chrome/Perfetto trace of the model timeline here.
    #[arg(long, value_name = "FILE")]
    perfetto: Option<PathBuf>,
    /// Test hook for `check`: make compute call N one nanosecond longer.
    #[arg(long, hide = true, value_name = "N")]
    perturb_compute: Option<u64>,
    /// Also check every invariant the swarm checks (runs the scenario twice and once without
    /// faults); exit 1 when one breaks.
    #[arg(long)]
    check: bool,
}

#[derive(clap::Args)]
struct CollectiveArgs {
    #[arg(long, value_parser = ["ring", "tree", "halving-doubling", "hierarchical"])]
    algo: String,
    #[arg(long, value_parser = Op::NAMES)]
    op: String,
    #[arg(long)]
    gpus: usize,
    #[arg(long, default_value_t = 8)]
    gpus_per_node: usize,
    /// Real elements per rank.
    #[arg(long)]
    elems: usize,
    /// Modelled bytes per rank (default: the real size, 4 bytes an element).
    #[arg(long)]
    bytes: Option<u64>,
    /// What the hierarchical algorithm runs across nodes.
    #[arg(long, default_value = "halving-doubling", value_parser = ["ring", "tree", "halving-doubling"])]
    inter_node_algo: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "auto", value_parser = ["auto", "madsim", "fifo"])]
    executor: String,
    #[arg(long)]
    json: bool,
    /// Write rank 0's result here, one number a line.
    #[arg(long, value_name = "FILE")]
    dump: Option<PathBuf>,
}

#[derive(clap::Args)]
struct TopoArgs {
    #[arg(default_value = DEFAULT_SCENARIO)]
    scenario: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Print the topology as Graphviz instead.
    #[arg(long)]
    dot: bool,
    /// List every full-duplex link by the name `[[faults.link_flap]] link` takes.
    #[arg(long)]
    links: bool,
    #[arg(long)]
    json: bool,
}

/// A failure and the exit status it maps to.
pub(crate) struct Failure {
    pub(crate) status: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn bad_input(message: impl Into<String>) -> Failure {
        Failure {
            status: EXIT_BAD_INPUT,
            message: message.into(),
        }
    }
}

fn main() -> ExitCode {
    if let Err(message) = heap::init() {
        eprintln!("faultline: {message}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "faultline: internal error (this is a bug in faultline, please report it): {info}"
        );
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let status = if e.use_stderr() { EXIT_BAD_INPUT } else { 0 };
            let _ = e.print();
            return ExitCode::from(status);
        }
    };
    let outcome = std::panic::catch_unwind(|| dispatch(cli));
    match outcome {
        Ok(Ok(status)) => ExitCode::from(status),
        Ok(Err(failure)) => {
            eprintln!("faultline: {}", failure.message);
            ExitCode::from(failure.status)
        }
        Err(_) => ExitCode::from(EXIT_BUG),
    }
}

fn dispatch(cli: Cli) -> Result<u8, Failure> {
    let command = cli.command.unwrap_or(Command::Run(RunArgs {
        scenario: PathBuf::from(DEFAULT_SCENARIO),
        seed: None,
        sets: Vec::new(),
        json: false,
        no_faults: false,
        trace: None,
        trace_level: "auto".into(),
        perfetto: None,
        perturb_compute: None,
        check: false,
    }));
    match command {
        Command::Run(args) => cmd_run(args),
        Command::Collective(args) => cmd_collective(args),
        Command::Topo(args) => cmd_topo(args),
        Command::Bench(args) => cmd_bench(args),
        Command::BenchCase(args) => cmd_bench_case(args),
        Command::Plan(args) => cmd_plan(args),
        Command::Merge(args) => cmd_merge(args),
        Command::Calibrate(args) => cmd_calibrate(args),
        Command::Replay(args) => cmd_replay(args),
        Command::Check(args) => check::cmd_check(args),
        Command::Swarm(args) => swarm_cli::cmd_swarm(args),
        Command::Shrink(args) => swarm_cli::cmd_shrink(args),
    }
}

/// Finds the default scenario from the workspace root or, failing that, from the source tree
/// this binary was built from.
fn locate(path: &Path) -> PathBuf {
    if path.exists() || path != Path::new(DEFAULT_SCENARIO) {
        return path.to_path_buf();
    }
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(DEFAULT_SCENARIO);
    if built_from.exists() {
        built_from
    } else {
        path.to_path_buf()
    }
}

fn load(path: &Path, sets: &[String]) -> Result<Scenario, Failure> {
    scenario::load(&locate(path), sets).map_err(|e| Failure::bad_input(e.to_string()))
}

fn cmd_run(args: RunArgs) -> Result<u8, Failure> {
    let mut scenario = load(&args.scenario, &args.sets)?;
    if let Some(seed) = args.seed {
        scenario.run.seed = seed;
    }
    if args.no_faults {
        scenario = scenario.without_faults();
    }
    let estimate = limits::estimate_run_bytes(scenario.cluster.gpus, scenario.job.proxy_elems);
    limits::check("this run", estimate, limits::available_bytes()).map_err(Failure::bad_input)?;
    let recorder = recorder_for(&args, &scenario)?;
    let mut reproduce = reproduce_line(&args.scenario, scenario.run.seed, &args.sets);
    if args.no_faults {
        reproduce.push_str(" --no-faults");
    }
    if !args.json {
        println!(
            "faultline run: {} (seed {})",
            scenario.name, scenario.run.seed
        );
        println!("reproduce: {reproduce}");
    }
    let hooks = run::RunHooks {
        recorder,
        perturb_compute: args.perturb_compute,
    };
    let (report, recorder) = run::run_scenario_with(&scenario, hooks).map_err(|e| Failure {
        status: EXIT_FINDING,
        message: if args.check {
            format!("invariant broken: liveness: the run did not finish: {e}")
        } else {
            e.to_string()
        },
    })?;
    if let Some(recorder) = recorder {
        recorder
            .finish(
                |records| replay::footer_of(&report, records),
                report.model_time_ns,
            )
            .map_err(|e| Failure::bad_input(format!("writing the trace: {e}")))?;
    }
    // A restore that read a checkpoint not atomically committed is a finding of the run itself.
    let mut healthy = report.replicas_agree
        && report.steps_completed == report.steps_requested
        && report.atomicity_violation_count == 0
        // An escaped corruption is a finding, like replicas that disagree.
        && report.faults.escaped.is_empty();
    let violations = if args.check {
        swarm_cli::check_run(&scenario, &report)?
    } else {
        Vec::new()
    };
    healthy &= violations.is_empty();
    if args.json {
        let mut value = serde_json::to_value(&report).expect("a report serialises");
        value["reproduce"] = serde_json::Value::String(reproduce);
        if args.check {
            value["violations"] = serde_json::to_value(&violations).expect("serialises");
        }
        println!("{value}");
    } else {
        let model = format_duration_ns(report.model_time_ns);
        println!(
            "cluster: {} GPUs, {} per node; executor {}; collective {}",
            report.gpus, report.gpus_per_node, report.executor, report.collective
        );
        println!(
            "steps: {}/{} in {model} of model time ({} per step)",
            report.steps_completed,
            report.steps_requested,
            format_duration_ns(report.model_time_ns / report.steps_completed.max(1)),
        );
        println!(
            "loss: {:.6} at step 0, {:.6} at the last step",
            report.first_loss, report.final_loss
        );
        println!(
            "fabric: {} messages, {:.3} TB modelled, {} events",
            report.messages,
            report.modelled_bytes as f64 / 1e12,
            report.events_fired
        );
        println!(
            "param_digest: {}  trace_digest: {}",
            report.param_digest, report.trace_digest
        );
        println!(
            "replicas agree: {}",
            if report.replicas_agree { "yes" } else { "NO" }
        );
        println!(
            "faults injected: {:?}; detected by: {:?}; recoveries: {}",
            by_name(&report.faults.injected),
            by_name(&report.faults.detected),
            report.recoveries
        );
        print_sdc_summary(&report);
        if !report.lost_time_ns_by_cause.is_empty() {
            let lost: Vec<String> = report
                .lost_time_ns_by_cause
                .iter()
                .map(|(cause, ns)| format!("{cause} {}", format_duration_ns(*ns)))
                .collect();
            println!("time lost: {}", lost.join(", "));
        }
        if let Some(flaps) = &report.link_flaps {
            println!(
                "link flaps ({} transport): {} flaps; {} transfers rerouted, {} retried \
                 ({} retries, {}), {} lost; {} detections, latency max {}",
                flaps.transport,
                flaps.flaps,
                flaps.transfers_rerouted,
                flaps.transfers_retried,
                flaps.retry_attempts,
                format_duration_ns(flaps.retry_time_ns),
                flaps.transfers_lost,
                flaps.detections,
                format_duration_ns(flaps.detection_latency_ns_max),
            );
        }
        if let Some(s) = &report.stragglers {
            let flagged: Vec<String> = s
                .flagged
                .iter()
                .map(|f| format!("rank {} at step {} (score {:.2})", f.rank, f.step, f.score))
                .collect();
            println!(
                "stragglers: {} injected; max score {:.2}; flagged: {}; evicted {}; step time \
                 p50 {}, max {}",
                s.slowdowns_injected,
                s.max_score,
                if flagged.is_empty() {
                    "none".to_string()
                } else {
                    flagged.join(", ")
                },
                s.stragglers_evicted,
                format_duration_ns(s.step_time_ns_p50),
                format_duration_ns(s.step_time_ns_max),
            );
        }
        if let Some(p) = &report.per_replica {
            println!(
                "per-replica: {} node(s) dropped, {} re-admitted, {} regroup(s), {} fallback \
                 restart(s); {} step(s) degraded, at least {} of {} GPUs training; {} node(s) \
                 still out at the end",
                p.drops,
                p.readmissions,
                p.regroups,
                p.fallback_restarts,
                p.degraded_steps,
                p.min_members,
                report.gpus,
                p.dropped_at_end,
            );
        }
        println!("goodput: {:.2}%", 100.0 * report.goodput);
        if let Some(first) = report.atomicity_violations.first() {
            println!(
                "checkpoint atomicity: BROKEN, {} read(s); first at {}: {}",
                report.atomicity_violation_count,
                format_duration_ns(first.at_ns),
                first.what
            );
        }
        if args.check {
            swarm_cli::print_violations(&violations);
        }
        println!("wall: {} ms", report.wall_ms);
    }
    Ok(if healthy { 0 } else { EXIT_FINDING })
}

/// The trace and timeline a run asked for, their files opened before the run starts.
fn recorder_for(args: &RunArgs, scenario: &Scenario) -> Result<Option<trace::Recorder>, Failure> {
    if args.trace.is_none() && args.perfetto.is_none() {
        return Ok(None);
    }
    let mut recorder = trace::Recorder::new();
    if let Some(path) = &args.trace {
        let level = match args.trace_level.as_str() {
            "auto" => trace::TraceLevel::auto(scenario.cluster.gpus),
            name => trace::TraceLevel::from_name(name).expect("clap checked the level"),
        };
        let scenario_path = locate(&args.scenario);
        let text = std::fs::read_to_string(&scenario_path)
            .map_err(|e| Failure::bad_input(format!("{}: {e}", scenario_path.display())))?;
        let header = trace::TraceHeader::for_run(
            scenario,
            &args.scenario.display().to_string(),
            &text,
            &args.sets,
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
            return Err(Failure::bad_input(format!(
                "--perfetto {}: {e}",
                path.display()
            )));
        }
    }
    Ok(Some(recorder))
}

fn cmd_replay(args: ReplayArgs) -> Result<u8, Failure> {
    let outcome = replay::replay(&args.trace).map_err(|e| Failure::bad_input(e.to_string()))?;
    let outcome = outcome.map_err(|e| Failure {
        status: EXIT_FINDING,
        message: format!("the replay failed: {e}"),
    })?;
    match outcome {
        replay::ReplayOutcome::Match { records } => {
            println!(
                "faultline replay: {}: the same run: digests and all {records} records match",
                args.trace.display()
            );
            Ok(0)
        }
        replay::ReplayOutcome::Mismatch {
            line,
            recorded,
            replayed,
        } => {
            println!(
                "faultline replay: {}: MISMATCH at line {line}",
                args.trace.display()
            );
            println!("  recorded: {recorded}");
            println!("  replayed: {replayed}");
            Ok(EXIT_FINDING)
        }
    }
}

/// Per SDC kind: injected, detected, escaped, latency and time lost; then each escape.
fn print_sdc_summary(report: &run::RunReport) {
    for (kind, k) in &report.faults.sdc {
        println!(
            "{kind}: {} injected, {} detected, {} escaped; detection latency mean {} max {}; \
             time lost {}",
            k.injected,
            k.detected,
            k.escaped,
            format_duration_ns(k.detection_latency_ns_mean),
            format_duration_ns(k.detection_latency_ns_max),
            format_duration_ns(k.lost_time_ns),
        );
    }
    for escape in &report.faults.escaped {
        println!(
            "ESCAPED: {} on GPU {} entered at step {} (attempt {})",
            escape.kind, escape.gpu, escape.step_entered, escape.attempt
        );
    }
    if !report.faults.quarantined_gpus.is_empty() {
        println!("quarantined GPUs: {:?}", report.faults.quarantined_gpus);
    }
}

/// The one command line that reproduces a run.
fn reproduce_line(path: &Path, seed: u64, sets: &[String]) -> String {
    let mut line = format!("faultline run {} --seed {seed}", path.display());
    for set in sets {
        line.push_str(&format!(" --set {set}"));
    }
    line
}

fn cmd_collective(args: CollectiveArgs) -> Result<u8, Failure> {
    if args.gpus == 0 || args.gpus > MAX_GPUS {
        return Err(Failure::bad_input(format!(
            "--gpus: expected 1 to {MAX_GPUS}, got {}",
            args.gpus
        )));
    }
    if args.gpus_per_node == 0 || args.gpus_per_node > 256 || args.gpus_per_node > args.gpus {
        return Err(Failure::bad_input(format!(
            "--gpus-per-node: expected 1 to min(256, --gpus = {}), got {}",
            args.gpus, args.gpus_per_node
        )));
    }
    if args.elems > 1 << 24 {
        return Err(Failure::bad_input(format!(
            "--elems: expected at most {}, got {}",
            1 << 24,
            args.elems
        )));
    }
    let estimate = limits::estimate_run_bytes(args.gpus, args.elems);
    limits::check("this collective", estimate, limits::available_bytes())
        .map_err(Failure::bad_input)?;
    let algo = Algo::from_name(&args.algo).expect("clap checked the name");
    let inter_node_algo = Algo::from_name(&args.inter_node_algo).expect("clap checked the name");
    let op = Op::from_name(&args.op).expect("clap checked the name");
    let choice = match args.executor.as_str() {
        "madsim" => ExecutorChoice::Madsim,
        "fifo" => ExecutorChoice::Fifo,
        _ => ExecutorChoice::Auto,
    };
    let executor: ExecutorKind =
        run::resolve_executor(choice, args.gpus).map_err(|e| Failure::bad_input(e.to_string()))?;
    let base = scenario::load_str(
        "defaults",
        "<built-in defaults>",
        "[cluster]\ngpus = 1\ngpus_per_node = 1\n[job]\nsteps = 1\n",
        &[],
    )
    .expect("the built-in defaults load");
    let spec = CollectiveSpec {
        algo,
        inter_node_algo,
        op,
        gpus: args.gpus,
        gpus_per_node: args.gpus_per_node,
        elems: args.elems,
        modelled_bytes: args.bytes.unwrap_or(4 * args.elems as u64),
        seed: args.seed,
        executor,
        base,
    };
    let report = run::run_collective(&spec).map_err(|e| Failure {
        status: EXIT_FINDING,
        message: e.to_string(),
    })?;
    if let Some(path) = &args.dump {
        let text: String = report
            .rank0_result
            .iter()
            .map(|v| format!("{v}\n"))
            .collect();
        write_atomically(path, text.as_bytes())
            .map_err(|e| Failure::bad_input(format!("--dump {}: {e}", path.display())))?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("a report serialises")
        );
    } else {
        println!(
            "faultline collective: {} {} on {} GPUs ({} per node), {} elems, {} modelled bytes, seed {}",
            report.algo, report.op, report.gpus, report.gpus_per_node, report.elems, report.modelled_bytes, report.seed
        );
        println!(
            "executor {}; {} messages; model time {}",
            report.executor,
            report.messages,
            format_duration_ns(report.model_time_ns)
        );
        println!(
            "exact: {}",
            if report.exact {
                "yes".to_string()
            } else {
                format!("NO, ranks {:?}", report.mismatched_ranks)
            }
        );
        println!(
            "trace_digest: {}  wall: {} ms",
            report.trace_digest, report.wall_ms
        );
    }
    Ok(if report.exact { 0 } else { EXIT_FINDING })
}

fn cmd_topo(args: TopoArgs) -> Result<u8, Failure> {
    let scenario = load(&args.scenario, &args.sets)?;
    let topology = Topology::new(&scenario.cluster, &scenario.fabric);
    if args.dot {
        print!("{}", topology.graph().to_dot());
        return Ok(0);
    }
    if args.links {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        // Both directions of a link are adjacent ids; the even one names the pair.
        let named = if scenario.cluster.clusters > 1 {
            topology.link_count()
        } else {
            topology.link_count() - 2 // one cluster: no inter-cluster link
        };
        for link in (0..named as u32).step_by(2) {
            let _ = writeln!(out, "{}", topology.link_name(link));
        }
        return Ok(0);
    }
    let graph = topology.graph();
    let summary = serde_json::json!({
        "scenario": scenario.name,
        "gpus": topology.gpu_count(),
        "nodes": topology.node_count(),
        "gpus_per_node": scenario.cluster.gpus_per_node,
        "clusters": scenario.cluster.clusters,
        "nvswitches": topology.node_count(),
        "nics": topology.gpu_count(),
        "leaf_switches": topology.leaf_count(),
        "spine_switches": topology.spine_count(),
        "graph_vertices": graph.graph.node_count(),
        "links": graph.graph.edge_count(),
        "bisection_bandwidth_bytes_per_s": topology.bisection_bandwidth_bytes_per_s(),
    });
    if args.json {
        println!("{summary}");
    } else {
        println!("topology of {}", scenario.name);
        for (key, value) in summary.as_object().expect("an object") {
            println!("  {key}: {value}");
        }
        println!(
            "  bisection: {:.1} Tb/s per direction",
            topology.bisection_bandwidth_bytes_per_s() * 8.0 / 1e12
        );
    }
    Ok(0)
}

fn executor_kind(name: &str) -> Result<ExecutorKind, Failure> {
    let choice = match name {
        "madsim" => ExecutorChoice::Madsim,
        _ => ExecutorChoice::Fifo,
    };
    run::resolve_executor(choice, 0).map_err(|e| Failure::bad_input(e.to_string()))
}

fn cmd_bench(args: BenchArgs) -> Result<u8, Failure> {
    if let Some(&gpus) = args.gpus.iter().find(|&&g| g == 0 || g > MAX_GPUS) {
        return Err(Failure::bad_input(format!(
            "--gpus: expected 1 to {MAX_GPUS}, got {gpus}"
        )));
    }
    let cases: Vec<String> = if args.cases.is_empty() {
        bench::CASES.iter().map(|c| c.to_string()).collect()
    } else {
        args.cases
    };
    let executors = args
        .executors
        .iter()
        .map(|name| executor_kind(name))
        .collect::<Result<Vec<_>, _>>()?;
    if !args.json {
        println!(
            "faultline bench: {} CPU(s); cases {}; GPUs {:?}; best of {}; payload checksums {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            cases.join(", "),
            args.gpus,
            args.repeat.max(1),
            args.payload_checksums,
        );
        println!(
            "training/10-steps commits a checkpoint every {} steps; planner: {} seeds of 30 days",
            bench::CHECKPOINT_EVERY_STEPS,
            bench::PLANNER_SEEDS
        );
    }
    let json = args.json;
    let checksums = args.payload_checksums == "on";
    let rows = bench::run_all(
        &cases,
        &args.gpus,
        &executors,
        args.repeat,
        checksums,
        &mut |row| {
            if !json {
                eprintln!(
                    "  {} at {} GPUs on {}: {}",
                    row.case,
                    row.gpus,
                    row.executor,
                    match &row.outcome {
                        Ok(r) => format!("{:.0} ms", r.wall_ms),
                        Err(why) => why.clone(),
                    }
                );
            }
        },
    );
    let all_ok = rows
        .iter()
        .all(|row| row.outcome.as_ref().map_or(true, |r| r.ok));
    if json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|row| match &row.outcome {
                Ok(r) => {
                    let mut value = serde_json::to_value(r).expect("a result serialises");
                    value["messages_per_s"] = (r.messages as f64 / (r.wall_ms / 1e3)).into();
                    if let Some(ratio) = bench::bare_ratio(&rows, r) {
                        value["ratio_to_bare_loop"] = ratio.into();
                    }
                    value
                }
                Err(why) => serde_json::json!({
                    "case": row.case, "gpus": row.gpus, "executor": row.executor, "not_run": why,
                }),
            })
            .collect();
        println!("{}", serde_json::json!({ "rows": rows }));
    } else {
        print!("{}", bench::format_table(&rows));
        println!("growth:");
        print!("{}", bench::format_growth(&rows));
    }
    Ok(if all_ok { 0 } else { EXIT_FINDING })
}

fn cmd_bench_case(args: BenchCaseArgs) -> Result<u8, Failure> {
    let executor = executor_kind(&args.executor)?;
    let checksums = args.payload_checksums == "on";
    let result =
        bench::run_case(&args.case, args.gpus, executor, checksums).map_err(|message| Failure {
            status: EXIT_FINDING,
            message,
        })?;
    println!(
        "{}",
        serde_json::to_string(&result).expect("a result serialises")
    );
    Ok(0)
}

fn parse_shard(text: &str) -> Result<(usize, usize), Failure> {
    let bad = || {
        Failure::bad_input(format!(
            "--shard: expected I/N with 0 <= I < N, got {text:?}"
        ))
    };
    let (i, n) = text.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

fn cmd_plan(args: PlanArgs) -> Result<u8, Failure> {
    use std::io::IsTerminal;
    let shard = args.shard.as_deref().map(parse_shard).transpose()?;
    if shard.is_some() && args.out.is_none() {
        return Err(Failure::bad_input("--shard needs --out FILE for the shard"));
    }
    let costs = match &args.costs {
        None => plan::config::Costs::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::bad_input(format!("--costs {}: {e}", path.display())))?;
            let file: plan::calibrate::CostFile = serde_json::from_str(&text).map_err(|e| {
                Failure::bad_input(format!("--costs {}: not a cost file: {e}", path.display()))
            })?;
            file.costs()
        }
    };
    let mut sets = args.sets.clone();
    if let Some(seeds) = args.seeds {
        sets.push(format!("plan.seeds={seeds}"));
    }
    let points = plan::load_points(&args.scenario, &sets, &args.sweeps, &costs)
        .map_err(|e| Failure::bad_input(e.to_string()))?;
    let (shard_idx, shard_count) = shard.unwrap_or((0, 1));
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let jobs =
        points.len() * plan::shard_seeds(points[0].config.seeds, shard_idx, shard_count).len();
    let bar = if std::io::stderr().is_terminal() && jobs >= 2_000 {
        indicatif::ProgressBar::new(jobs as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    #[allow(clippy::disallowed_methods)] // wall time for people, never in results
    let started = std::time::Instant::now();
    let result = plan::run_shard(&points, shard_idx, shard_count, threads, &|| bar.inc(1));
    bar.finish_and_clear();
    let wall_ms = started.elapsed().as_millis();
    if let Some((i, n)) = shard {
        let out = args.out.as_ref().expect("checked above");
        let text = serde_json::to_string(&result).expect("a shard serialises");
        write_atomically(out, text.as_bytes())
            .map_err(|e| Failure::bad_input(format!("--out {}: {e}", out.display())))?;
        if !args.json {
            println!(
                "faultline plan: shard {i}/{n} of {} ({} points, seeds {i}, {}, ... of {}) written to {} in {wall_ms} ms",
                result.scenario,
                result.points.len(),
                i + n,
                result.seeds,
                out.display()
            );
        }
        return Ok(0);
    }
    let report = plan::report::summarise(&result);
    if !args.json {
        println!(
            "faultline plan: {} (seed {}, {} seeds, {} threads)",
            report.scenario, report.root_seed, report.seeds, threads
        );
        println!("reproduce: {}", plan_reproduce_line(&args));
    }
    emit_plan_report(
        &report,
        args.json,
        args.plot.as_deref(),
        args.out.as_deref(),
    )?;
    if !args.json {
        println!("wall: {wall_ms} ms");
    }
    Ok(0)
}

/// The one command line that reproduces a plan.
fn plan_reproduce_line(args: &PlanArgs) -> String {
    let mut line = format!("faultline plan {}", args.scenario.display());
    if let Some(seeds) = args.seeds {
        line.push_str(&format!(" --seeds {seeds}"));
    }
    for set in &args.sets {
        line.push_str(&format!(" --set {set}"));
    }
    for sweep in &args.sweeps {
        line.push_str(&format!(" --sweep {sweep}"));
    }
    if let Some(costs) = &args.costs {
        line.push_str(&format!(" --costs {}", costs.display()));
    }
    line
}

fn emit_plan_report(
    report: &plan::report::PlanReport,
    json: bool,
    plot_path: Option<&Path>,
    out: Option<&Path>,
) -> Result<(), Failure> {
    let text = serde_json::to_string(report).expect("a report serialises");
    if let Some(out) = out {
        write_atomically(out, text.as_bytes())
            .map_err(|e| Failure::bad_input(format!("--out {}: {e}", out.display())))?;
    }
    if let Some(path) = plot_path {
        let svg = plan::plot::render_svg(report).map_err(|e| Failure {
            status: EXIT_BUG,
            message: format!("plot: {e}"),
        })?;
        write_atomically(path, svg.as_bytes())
            .map_err(|e| Failure::bad_input(format!("--plot {}: {e}", path.display())))?;
    }
    if json {
        println!("{text}");
        return Ok(());
    }
    let min = |s: f64| s / 60.0;
    println!(
        "cluster: {} GPUs ({} nodes); horizon {:.1} days",
        report.gpus,
        report.nodes,
        report.horizon_s / 86_400.0
    );
    let names: Vec<String> = report
        .sweep
        .iter()
        .map(|p| {
            if p.settings.is_empty() {
                format!("interval {:.1} min", min(p.checkpoint_interval_s))
            } else {
                p.settings
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        })
        .collect();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(5).max(5);
    println!(
        "{:<width$} {:>8} {:>19} {:>9} {:>9} {:>9}",
        "point", "ETTR", "95% CI", "interrupt", "Daly ETTR", "Kokolis"
    );
    for (p, name) in report.sweep.iter().zip(&names) {
        println!(
            "{:<width$} {:>8.4} [{:>8.4}, {:>8.4}] {:>9.1} {:>9.4} {:>9.4}",
            name,
            p.ettr_mean,
            p.ettr_ci95[0],
            p.ettr_ci95[1],
            p.interruptions_mean,
            p.daly_ettr,
            p.kokolis_ettr
        );
    }
    println!(
        "best: ETTR {:.4} [{:.4}, {:.4}] at checkpoint interval {:.1} min {:?}",
        report.ettr_mean,
        report.ettr_ci95[0],
        report.ettr_ci95[1],
        min(report.best_checkpoint_interval_s),
        report.best_settings
    );
    println!(
        "interruptions: {:.1} [{:.1}, {:.1}] unexpected, {:.1} planned",
        report.interruptions_mean,
        report.interruptions_ci95[0],
        report.interruptions_ci95[1],
        report.planned_interruptions_mean
    );
    let lost: Vec<String> = report
        .lost_s_by_cause
        .iter()
        .map(|(cause, s)| format!("{cause} {:.1} h", s / 3600.0))
        .collect();
    println!("time lost by cause (mean): {}", lost.join(", "));
    if report.job_mtbf_s > 0.0 {
        println!(
            "analytic, beside: job MTBF {:.2} h; Young {:.1} min; Daly {:.1} min",
            report.job_mtbf_s / 3600.0,
            min(report.young_interval_s),
            min(report.daly_interval_s)
        );
    } else {
        println!("analytic, beside: no failures configured, so no Young or Daly interval");
    }
    Ok(())
}

fn cmd_merge(args: MergeArgs) -> Result<u8, Failure> {
    let mut shards = Vec::new();
    for path in &args.files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::bad_input(format!("{}: {e}", path.display())))?;
        let shard: plan::report::Shard = serde_json::from_str(&text).map_err(|e| {
            Failure::bad_input(format!("{}: not a plan shard: {e}", path.display()))
        })?;
        shards.push(shard);
    }
    let merged = plan::report::merge(shards).map_err(Failure::bad_input)?;
    let report = plan::report::summarise(&merged);
    emit_plan_report(
        &report,
        args.json,
        args.plot.as_deref(),
        args.out.as_deref(),
    )?;
    Ok(0)
}

fn cmd_calibrate(args: CalibrateArgs) -> Result<u8, Failure> {
    let origin = args.scenario.display().to_string();
    let text = std::fs::read_to_string(&args.scenario)
        .map_err(|e| Failure::bad_input(format!("{origin}: cannot read the scenario file: {e}")))?;
    // The planner's own keys are checked first, so a bad planner file fails with its position.
    plan::config::load_str("calibrate", &origin, &text, &[])
        .map_err(|e| Failure::bad_input(e.to_string()))?;
    if args.steps == 0 || args.steps > 1_000 {
        return Err(Failure::bad_input(format!(
            "--steps: expected 1 to 1000, got {}",
            args.steps
        )));
    }
    let name = args
        .scenario
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let runs = plan::calibrate::plan_runs(
        &name,
        &origin,
        &text,
        &args.sets,
        args.steps,
        args.all_policies,
    )
    .map_err(|e| Failure::bad_input(e.to_string()))?;
    #[allow(clippy::disallowed_methods)] // wall time for people, never in the cost file
    let started = std::time::Instant::now();
    let costs = plan::calibrate::calibrate(&runs).map_err(|message| Failure {
        status: EXIT_FINDING,
        message,
    })?;
    let wall_s = started.elapsed().as_secs_f64();
    let text = serde_json::to_string_pretty(&costs).expect("a cost file serialises");
    write_atomically(&args.out, text.as_bytes())
        .map_err(|e| Failure::bad_input(format!("--out {}: {e}", args.out.display())))?;
    println!(
        "faultline calibrate: {} on {} GPUs, {} runs in {wall_s:.1} s wall time, written to {}",
        costs.scenario,
        costs.gpus,
        costs.runs.len(),
        args.out.display()
    );
    for (key, value) in &costs.measured {
        println!("  measured {key} = {value:.6}");
    }
    println!(
        "  inputs: {}",
        costs.inputs.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    println!(
        "  not measured: {}",
        costs
            .not_measured
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(0)
}
