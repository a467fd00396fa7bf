//! The `faultline` command line. Parses arguments, loads scenarios, runs, prints. Exit status:
//! 0 success, 1 the run found a problem (inexact collective, diverged replicas, deadlock),
//! 2 bad input, 70 an internal error (a bug in faultline).

mod bench;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use faultline_sim::executor::ExecutorKind;
use faultline_sim::run::{self, CollectiveSpec};
use faultline_sim::scenario::{self, ExecutorChoice, Scenario, MAX_GPUS};
use faultline_sim::topology::Topology;
use faultline_sim::units::format_duration_ns;
use trainer_core::collectives::{Algo, Op};

const EXIT_FINDING: u8 = 1;
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
}

#[derive(clap::Args)]
struct BenchCaseArgs {
    #[arg(value_parser = bench::CASES)]
    case: String,
    #[arg(long)]
    gpus: usize,
    #[arg(long, default_value = "fifo", value_parser = ["fifo", "madsim"])]
    executor: String,
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
    #[arg(long)]
    json: bool,
}

/// A failure and the exit status it maps to.
struct Failure {
    status: u8,
    message: String,
}

impl Failure {
    fn bad_input(message: impl Into<String>) -> Failure {
        Failure {
            status: EXIT_BAD_INPUT,
            message: message.into(),
        }
    }
}

fn main() -> ExitCode {
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
    }));
    match command {
        Command::Run(args) => cmd_run(args),
        Command::Collective(args) => cmd_collective(args),
        Command::Topo(args) => cmd_topo(args),
        Command::Bench(args) => cmd_bench(args),
        Command::BenchCase(args) => cmd_bench_case(args),
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
    let report = run::run_scenario(&scenario).map_err(|e| Failure {
        status: EXIT_FINDING,
        message: e.to_string(),
    })?;
    let healthy = report.replicas_agree && report.steps_completed == report.steps_requested;
    if args.json {
        let mut value = serde_json::to_value(&report).expect("a report serialises");
        value["reproduce"] = serde_json::Value::String(reproduce);
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
            report.faults.injected, report.faults.detected, report.recoveries
        );
        if !report.lost_time_ns_by_cause.is_empty() {
            let lost: Vec<String> = report
                .lost_time_ns_by_cause
                .iter()
                .map(|(cause, ns)| format!("{cause} {}", format_duration_ns(*ns)))
                .collect();
            println!("time lost: {}", lost.join(", "));
        }
        println!("goodput: {:.2}%", 100.0 * report.goodput);
        println!("wall: {} ms", report.wall_ms);
    }
    Ok(if healthy { 0 } else { EXIT_FINDING })
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

/// Writes `bytes` to a temporary name beside `path`, syncs it and renames it into place, so a
/// reader never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn cmd_topo(args: TopoArgs) -> Result<u8, Failure> {
    let scenario = load(&args.scenario, &args.sets)?;
    let topology = Topology::new(&scenario.cluster, &scenario.fabric);
    if args.dot {
        print!("{}", topology.graph().to_dot());
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
            "faultline bench: {} CPU(s); cases {}; GPUs {:?}; best of {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            cases.join(", "),
            args.gpus,
            args.repeat.max(1)
        );
        println!(
            "checkpoint: pending (no checkpoint logic yet); the ten-step case trains without it"
        );
    }
    let json = args.json;
    let rows = bench::run_all(&cases, &args.gpus, &executors, args.repeat, &mut |row| {
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
    });
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
    let result = bench::run_case(&args.case, args.gpus, executor).map_err(|message| Failure {
        status: EXIT_FINDING,
        message,
    })?;
    println!(
        "{}",
        serde_json::to_string(&result).expect("a result serialises")
    );
    Ok(0)
}
