//! The `faultline` command line. Parses arguments, loads scenarios, runs, prints. Exit status:
//! 0 success, 1 the run found a problem (inexact collective, diverged replicas, deadlock),
//! 2 bad input, 70 an internal error (a bug in faultline).

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
