//! `faultline collective` (one collective on a simulated cluster, checked against the exact
//! reference) and `faultline topo` (a scenario's topology, its links and its Graphviz view).

use std::path::PathBuf;

use faultline_sim::atomic::write_atomically;
use faultline_sim::executor::ExecutorKind;
use faultline_sim::limits;
use faultline_sim::run::{self, CollectiveReport, CollectiveSpec};
use faultline_sim::scenario::{self, MAX_GPUS};
use faultline_sim::topology::Topology;

use crate::{check_outputs, load, AlgoArg, ExecutorArg, Failure, InterNodeAlgoArg, OpArg, SetArgs};
use crate::{RingOrderArg, RoutingArg};
use crate::{DEFAULT_SCENARIO, EXIT_FINDING};

#[derive(clap::Args)]
pub(crate) struct CollectiveArgs {
    #[arg(long, value_enum)]
    algo: AlgoArg,
    #[arg(long, value_enum)]
    op: OpArg,
    #[arg(long)]
    gpus: usize,
    /// GPUs per node; default 8, or all of them when --gpus is below 8 (one partial node).
    #[arg(long)]
    gpus_per_node: Option<usize>,
    /// Real elements per rank.
    #[arg(long)]
    elems: usize,
    /// Modelled bytes per rank (default: the real size, 4 bytes an element).
    #[arg(long)]
    bytes: Option<u64>,
    /// What the hierarchical algorithm runs across nodes.
    #[arg(long, value_enum, default_value = "halving-doubling")]
    inter_node_algo: InterNodeAlgoArg,
    /// How flows between leaves pick a spine (the scenario key `fabric.routing`).
    #[arg(long, value_enum, default_value = "ecmp")]
    routing: RoutingArg,
    /// The order a flat ring visits the world in (the scenario key `job.ring_order`).
    #[arg(long, value_enum, default_value = "rail")]
    ring_order: RingOrderArg,
    #[arg(long, default_value_t = 1, value_parser = crate::parse_seed)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = ExecutorArg::Auto)]
    executor: ExecutorArg,
    #[arg(long)]
    json: bool,
    /// Write rank 0's result here, one number a line; `-` for standard output, where the
    /// summary then goes to standard error (not with --json).
    #[arg(long, value_name = "FILE")]
    dump: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct TopoArgs {
    #[arg(default_value = DEFAULT_SCENARIO)]
    scenario: PathBuf,
    #[command(flatten)]
    set: SetArgs,
    /// Print the topology as Graphviz instead.
    #[arg(long)]
    dot: bool,
    /// List every full-duplex link by the name `[[faults.link_flap]] link` takes.
    #[arg(long)]
    links: bool,
    #[arg(long)]
    json: bool,
}

pub(crate) fn cmd_collective(args: CollectiveArgs) -> Result<u8, Failure> {
    check_sizes(&args)?;
    check_outputs(
        &[("--dump", args.dump.as_deref())],
        args.json.then_some("the --json report"),
    )?;
    let estimate = limits::estimate_run_bytes(args.gpus, args.elems);
    let available = limits::available_bytes().map_err(Failure::bad_input)?;
    limits::check("this collective", estimate, available).map_err(Failure::bad_input)?;
    let report = run::run_collective(&spec_of(&args)?).map_err(Failure::of_sim)?;
    if let Some(path) = &args.dump {
        let text: String = (report.rank0_result.iter())
            .map(|v| format!("{v}\n"))
            .collect();
        write_atomically(path, text.as_bytes())
            .map_err(|e| Failure::bad_input(format!("--dump {}: {e}", path.display())))?;
    }
    print_report(&report, args.json);
    Ok(if report.exact { 0 } else { EXIT_FINDING })
}

impl CollectiveArgs {
    /// `--gpus-per-node`, or 8, or every GPU when there are fewer (one partial node).
    fn gpus_per_node(&self) -> usize {
        self.gpus_per_node.unwrap_or(self.gpus.min(8))
    }
}

/// The cluster and buffer sizes, refused before any work when out of range.
fn check_sizes(args: &CollectiveArgs) -> Result<(), Failure> {
    if args.gpus == 0 || args.gpus > MAX_GPUS {
        return Err(Failure::bad_input(format!(
            "--gpus: expected 1 to {MAX_GPUS}, got {}",
            args.gpus
        )));
    }
    let gpus_per_node = args.gpus_per_node();
    if gpus_per_node == 0 || gpus_per_node > 256 || gpus_per_node > args.gpus {
        return Err(Failure::bad_input(format!(
            "--gpus-per-node: expected 1 to min(256, --gpus = {}), got {gpus_per_node}",
            args.gpus
        )));
    }
    if args.elems > 1 << 24 {
        return Err(Failure::bad_input(format!(
            "--elems: expected at most {}, got {}",
            1 << 24,
            args.elems
        )));
    }
    Ok(())
}

/// The collective to run, on a fabric with a scenario's defaults.
fn spec_of(args: &CollectiveArgs) -> Result<CollectiveSpec, Failure> {
    let executor: ExecutorKind = run::resolve_executor(args.executor.choice(), args.gpus)
        .map_err(|e| Failure::bad_input(e.to_string()))?;
    let mut base = scenario::load_str(
        "defaults",
        "<built-in defaults>",
        "[cluster]\ngpus = 1\ngpus_per_node = 1\n[job]\nsteps = 1\n",
        &[],
    )
    .expect("the built-in defaults load");
    base.fabric.routing = args.routing.0;
    base.job.collective.ring_order = args.ring_order.0;
    Ok(CollectiveSpec {
        algo: args.algo.0,
        inter_node_algo: args.inter_node_algo.0,
        op: args.op.0,
        gpus: args.gpus,
        gpus_per_node: args.gpus_per_node(),
        elems: args.elems,
        modelled_bytes: args.bytes.unwrap_or(4 * args.elems as u64),
        seed: args.seed,
        executor,
        base,
    })
}

fn print_report(report: &CollectiveReport, json: bool) {
    if json {
        let text = serde_json::to_string(report).expect("a report serialises");
        println!("{text}");
    } else {
        crate::say_part!("{report}");
    }
}

/// The directed link ids that have names: both directions of a link are adjacent ids (the
/// even one names the pair), and one cluster has no inter-cluster link (the last pair).
fn named_link_ids(topology: &Topology, scenario: &scenario::Scenario) -> usize {
    if scenario.cluster.clusters > 1 {
        topology.link_count()
    } else {
        topology.link_count() - 2
    }
}

pub(crate) fn cmd_topo(args: TopoArgs) -> Result<u8, Failure> {
    let scenario = load(&args.scenario, &args.set.sets)?;
    let topology = Topology::new(&scenario.cluster, &scenario.fabric);
    if args.dot {
        print!("{}", topology.graph().to_dot());
        return Ok(0);
    }
    if args.links {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for link in (0..named_link_ids(&topology, &scenario) as u32).step_by(2) {
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
        "graph_edges": graph.graph.edge_count(),
        // The fabric's links as `--links` lists them: a link is both its directions.
        "links": named_link_ids(&topology, &scenario) / 2,
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
