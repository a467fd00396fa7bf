//! `faultline plan`, `merge` and `calibrate`: the capacity planner's commands. The Monte Carlo,
//! the reports and the calibration runs are the library's `plan` module.

use std::path::{Path, PathBuf};

use faultline_sim::atomic::write_atomically;
use faultline_sim::plan;
use faultline_sim::shell::quote;

use crate::cmd_merge::{origin, resolve_shard, shard_target, write_shard};
use crate::{check_outputs, plot, say, say_part, Failure, SetArgs, EXIT_BUG};
use faultline_sim::fanout::Assignment;
use faultline_sim::plan::calibrate::shard::{CalibrateShard, Request, RunFigures};

#[derive(clap::Args)]
pub(crate) struct PlanArgs {
    /// Planner scenario file.
    scenario: PathBuf,
    /// Seeds per sweep point; overrides plan.seeds.
    #[arg(long)]
    seeds: Option<usize>,
    #[command(flatten)]
    set: SetArgs,
    /// Sweep a key over values; repeat for a cartesian product. Replaces the file's plan.sweep.
    #[arg(long = "sweep", value_name = "KEY=V1,V2,...")]
    sweeps: Vec<String>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Draw ETTR against the checkpoint interval into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Run only shard i of n (seeds i, i+n, ...), or `auto`: the shard the batch scheduler's
    /// array variables give (FAULTLINE_SHARD_INDEX and _COUNT, Slurm, Kubernetes Indexed
    /// Jobs, AWS Batch, Google Batch). Needs --out; `faultline merge` combines the files.
    #[arg(long, value_name = "I/N|auto")]
    shard: Option<String>,
    /// Write the report (or with --shard, the shard) as JSON to this file; `-` for standard
    /// output, where the summary then goes to standard error (not with --json, but with
    /// --shard). With --shard, a directory (`DIR/`) takes the shard under a name of its own,
    /// plan-DIGEST-I-of-N.json. --plot takes `-` too, for the SVG.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// A cost file from `faultline calibrate`.
    #[arg(long, value_name = "FILE")]
    costs: Option<PathBuf>,
    /// Refuse (exit 2), rather than warn, when the cost file was measured on another
    /// scenario or at another scale.
    #[arg(long)]
    strict: bool,
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(clap::Args)]
pub(crate) struct CalibrateArgs {
    /// Planner scenario file; its cluster, fabric, job, storage, checkpoint and recovery
    /// tables set up the runs.
    scenario: PathBuf,
    #[command(flatten)]
    set: SetArgs,
    /// Training steps of the steady run (the step time); the crash runs take a few more.
    #[arg(long, default_value_t = 3)]
    steps: u64,
    /// Also run a crash for each recovery policy the scenario does not name, to measure
    /// every policy's restore time (one more run each).
    #[arg(long)]
    all_policies: bool,
    /// The cost file to write; `-` for standard output, where the summary then goes to
    /// standard error. With --shard, the shard file, or a directory (`DIR/`) that takes it as
    /// calibrate-DIGEST-I-of-N.json.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Run only shard i of n of the calibration's runs (the steady run, then one crash run
    /// per policy: with n = runs, one run per shard), or `auto` from the batch scheduler's
    /// array variables; `faultline merge` builds the cost file from the shard files.
    #[arg(long, value_name = "I/N|auto")]
    shard: Option<String>,
}

pub(crate) fn cmd_plan(args: PlanArgs) -> Result<u8, Failure> {
    let threads = crate::workers("--threads", args.threads)?;
    let shard = args.shard.as_deref().map(resolve_shard).transpose()?;
    // A shard's --json prints nothing: the shard is the product. Its --out DIR/ is checked
    // once its name is known.
    let out_now = args.out.as_deref().filter(|_| shard.is_none());
    check_outputs(
        &[("--out", out_now), ("--plot", args.plot.as_deref())],
        (args.json && shard.is_none()).then_some("the --json report"),
    )?;
    if shard.is_some() && args.out.is_none() {
        return Err(Failure::bad_input(
            "--shard needs --out FILE, or --out DIR/ for a file named after the shard",
        ));
    }
    let cost_file = load_costs(args.costs.as_deref())?;
    let costs = cost_file.as_ref().map(|f| f.costs()).unwrap_or_default();
    let mut sets = args.set.sets.clone();
    if let Some(seeds) = args.seeds {
        sets.push(format!("plan.seeds={seeds}"));
    }
    let points = plan::load_points(&args.scenario, &sets, &args.sweeps, &costs)
        .map_err(|e| Failure::bad_input(e.to_string()))?;
    if let (Some(file), Some(path)) = (&cost_file, &args.costs) {
        check_costs_match(file, path, &points[0].config, args.strict)?;
    }
    let target = match (&shard, &args.out) {
        (Some(shard), Some(out)) => Some(shard_target(
            out,
            "plan",
            &plan::plan_digest(&points),
            shard,
        )?),
        _ => None,
    };
    let one = Assignment::of_flag(0, 1);
    let split = shard.unwrap_or(one);
    #[allow(clippy::disallowed_methods)] // wall time for people, never in results
    let started = std::time::Instant::now();
    let mut result =
        run_with_progress(&points, split.index as usize, split.count as usize, threads);
    let wall_ms = started.elapsed().as_millis();
    if let (Some(shard), Some(out)) = (shard, target) {
        result.holding.split = Some(shard);
        return write_plan_shard(&result, &out, !args.json, wall_ms);
    }
    let report = plan::report::summarise(&result);
    if !args.json {
        say!(
            "faultline plan: {} (seed {}, {} seeds, {} threads)",
            report.scenario,
            report.root_seed,
            report.seeds,
            threads
        );
        say!("reproduce: {}", plan_reproduce_line(&args));
    }
    emit_plan_report(
        &report,
        args.json,
        args.plot.as_deref(),
        args.out.as_deref(),
    )?;
    if !args.json {
        say!("wall: {wall_ms} ms");
    }
    Ok(0)
}

/// A shard's end: its file and, unless `--json`, a line on what it ran. Exit 0.
fn write_plan_shard(
    result: &plan::report::Shard,
    out: &Path,
    say_it: bool,
    wall_ms: u128,
) -> Result<u8, Failure> {
    let text = serde_json::to_string(result).expect("a shard serialises");
    write_shard(out, &text)?;
    let shard = result.holding.split.expect("a shard has its split");
    if say_it {
        say!(
            "faultline plan: shard {}/{}{} of {} ({} points, {} of {} seeds) written to {} in {wall_ms} ms",
            shard.index,
            shard.count,
            origin(&shard),
            result.scenario,
            result.points.len(),
            result.holding.covered.len(),
            result.seeds,
            crate::shown(out)
        );
    }
    Ok(0)
}

/// `calibrate --shard`: this shard's runs, at once on threads of their own, into its file.
/// Exit 0 once they ran; a run that fails is a finding (exit 1), as unsharded.
fn calibrate_shard(
    runs: &plan::calibrate::Plan,
    request: Request,
    shard: Assignment,
    out: &Path,
) -> Result<u8, Failure> {
    let target = shard_target(out, "calibrate", &request.digest, &shard)?;
    let items: Vec<u64> = shard.items(request.runs).collect();
    crate::guard_memory("this calibration shard", &runs.steady, items.len())?;
    let figures = std::thread::scope(|scope| {
        let threads: Vec<_> = (items.iter())
            .map(|&run| scope.spawn(move || plan::calibrate::run_one(runs, run)))
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a calibration run does not panic"))
            .collect::<Result<Vec<_>, String>>()
    })
    .map_err(Failure::finding)?;
    let runs_held = items
        .iter()
        .zip(figures)
        .map(|(&run, figures)| RunFigures { run, figures })
        .collect();
    let file = CalibrateShard::of_run(request, shard, runs_held);
    write_shard(
        &target,
        &serde_json::to_string(&file).expect("a shard serialises"),
    )?;
    say!(
        "faultline calibrate: shard {}/{}{} of {}: runs {} of {}, written to {}",
        shard.index,
        shard.count,
        origin(&shard),
        file.calibration.scenario,
        faultline_sim::fanout::compact(file.holding.covered.items()),
        file.calibration.runs,
        crate::shown(&target)
    );
    Ok(0)
}

/// The cost file `--costs FILE` names, checked; none without the flag.
fn load_costs(path: Option<&Path>) -> Result<Option<plan::calibrate::CostFile>, Failure> {
    let Some(path) = path else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::bad_input(format!("--costs {}: {e}", path.display())))?;
    let file: plan::calibrate::CostFile = serde_json::from_str(&text).map_err(|e| {
        Failure::bad_input(format!("--costs {}: not a cost file: {e}", path.display()))
    })?;
    file.validate()
        .map_err(|e| Failure::bad_input(format!("--costs {}: {e}", path.display())))?;
    Ok(Some(file))
}

/// A cost file measured on another scenario, or at another size, gives costs this plan's job
/// does not have (a step time at 256 GPUs is not one at 16,384): said on standard error, or
/// refused with `--strict`.
fn check_costs_match(
    file: &plan::calibrate::CostFile,
    path: &Path,
    plan: &plan::config::PlanConfig,
    strict: bool,
) -> Result<(), Failure> {
    let mut differences = Vec::new();
    if file.scenario != plan.name {
        differences.push(format!("scenario {:?}, not {:?}", file.scenario, plan.name));
    }
    if (file.gpus, file.gpus_per_node) != (plan.gpus, plan.gpus_per_node) {
        differences.push(format!(
            "{} GPUs ({} per node), not {} ({} per node)",
            file.gpus, file.gpus_per_node, plan.gpus, plan.gpus_per_node
        ));
    }
    if differences.is_empty() {
        return Ok(());
    }
    let message = format!(
        "--costs {}: measured on {}; its costs may not be this plan's (calibrate this \
         scenario to measure them)",
        path.display(),
        differences.join(" and ")
    );
    if strict {
        return Err(Failure::bad_input(message));
    }
    eprintln!("warning: {message}");
    Ok(())
}

/// Runs this shard's seeds of every point, with a progress bar on a terminal for long runs.
fn run_with_progress(
    points: &[plan::Point],
    shard_idx: usize,
    shard_count: usize,
    threads: usize,
) -> plan::report::Shard {
    use std::io::IsTerminal;
    let jobs =
        points.len() * plan::shard_seeds(points[0].config.seeds, shard_idx, shard_count).len();
    let bar = if std::io::stderr().is_terminal() && jobs >= 2_000 {
        indicatif::ProgressBar::new(jobs as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let result = plan::run_shard(points, shard_idx, shard_count, threads, &|| bar.inc(1));
    bar.finish_and_clear();
    result
}

/// The one command line that reproduces a plan, quoted for a shell.
fn plan_reproduce_line(args: &PlanArgs) -> String {
    let scenario = args.scenario.display().to_string();
    let mut line = format!("{} plan {}", crate::program(), quote(&scenario));
    if let Some(seeds) = args.seeds {
        line.push_str(&format!(" --seeds {seeds}"));
    }
    for set in &args.set.sets {
        line.push_str(&format!(" --set {}", quote(set)));
    }
    for sweep in &args.sweeps {
        line.push_str(&format!(" --sweep {}", quote(sweep)));
    }
    if let Some(costs) = &args.costs {
        let costs = costs.display().to_string();
        line.push_str(&format!(" --costs {}", quote(&costs)));
        if args.strict {
            line.push_str(" --strict");
        }
    }
    line
}

pub(crate) fn emit_plan_report(
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
        let svg = plot::render_svg(report).map_err(|e| Failure {
            status: EXIT_BUG,
            message: format!("plot: {e}"),
        })?;
        write_atomically(path, svg.as_bytes())
            .map_err(|e| Failure::bad_input(format!("--plot {}: {e}", path.display())))?;
    }
    if json {
        println!("{text}");
    } else {
        say_part!("{report}");
    }
    Ok(())
}

/// The planner file `calibrate` names, read, checked and loaded as its runs.
fn calibration_runs(
    args: &CalibrateArgs,
) -> Result<(String, String, plan::calibrate::Plan), Failure> {
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
        &args.set.sets,
        args.steps,
        args.all_policies,
    )
    .map_err(|e| Failure::bad_input(e.to_string()))?;
    Ok((origin, text, runs))
}

pub(crate) fn cmd_calibrate(args: CalibrateArgs) -> Result<u8, Failure> {
    let shard = args.shard.as_deref().map(resolve_shard).transpose()?;
    if shard.is_none() {
        check_outputs(&[("--out", Some(&args.out))], None)?;
    }
    let (origin, text, runs) = calibration_runs(&args)?;
    if let Some(shard) = shard {
        let request = Request::new(
            &runs,
            &origin,
            &text,
            &args.set.sets,
            args.steps,
            args.all_policies,
        );
        return calibrate_shard(&runs, request, shard, &args.out);
    }
    // The steady run and every crash run go at once, on threads of their own.
    crate::guard_memory("this calibration", &runs.steady, runs.runs() as usize)?;
    #[allow(clippy::disallowed_methods)] // wall time for people, never in the cost file
    let started = std::time::Instant::now();
    let spinner = crate::progress::spinner(format!(
        "calibrating: {} runs of {} steps at {} GPUs at once",
        runs.runs(),
        args.steps,
        runs.steady.cluster.gpus
    ));
    let costs = plan::calibrate::calibrate(&runs).map_err(Failure::finding)?;
    drop(spinner);
    let wall_s = started.elapsed().as_secs_f64();
    let text = serde_json::to_string_pretty(&costs).expect("a cost file serialises");
    write_atomically(&args.out, text.as_bytes())
        .map_err(|e| Failure::bad_input(format!("--out {}: {e}", args.out.display())))?;
    say!(
        "faultline calibrate: {} on {} GPUs, {} runs in {wall_s:.1} s wall time, written to {}",
        costs.scenario,
        costs.gpus,
        costs.runs.len(),
        crate::shown(&args.out)
    );
    for (key, value) in &costs.measured {
        say!("  measured {key} = {value:.6}");
    }
    say!(
        "  inputs: {}",
        costs.inputs.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    say!(
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
