//! `--shard` and `--out DIR/` for the commands that fan out (`swarm`, `plan`), and `merge`,
//! which unites their shard files: files, directories and globs, any split, merged files
//! again. The sets, the scheduler variables and the resubmission spec are the library's
//! `fanout` module; the unions are `swarm::shard::merge` and `plan::report::merge`.

use std::path::{Path, PathBuf};

use faultline_sim::atomic::write_atomically;
use faultline_sim::fanout::{self, Assignment, Cover, Scheduler};
use faultline_sim::plan;
use faultline_sim::plan::calibrate::shard::{
    self as calibrate_shard, CalibrateShard, CALIBRATE_SHARD_FORMAT,
};
use faultline_sim::swarm::shard::{self as swarm_shard, SwarmShard, SWARM_SHARD_FORMAT};

use crate::{check_outputs, say, Failure, EXIT_FINDING};

#[derive(clap::Args)]
pub(crate) struct MergeArgs {
    /// Shard files (`swarm` or `plan --shard ... --out`), directories holding them (their
    /// .json files), or globs such as 'results/*.json'. Any files of one swarm or plan: shards
    /// of any split, retries, merged files (see --union).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Print one JSON object instead of the verdict or summary.
    #[arg(long)]
    json: bool,
    /// A plan's sweep drawn into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Write the merged report as JSON to this file; `-` as for `plan --out`.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write the union of the inputs as one shard file, which `merge` reads again (a tree of
    /// merges over a very wide array), instead of the verdict or report; seeds may be
    /// missing from it.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["json", "out", "plot", "allow_partial"])]
    union: Option<PathBuf>,
    /// Report on the seeds there are when some are missing (their intervals are then those of
    /// fewer seeds, so wider), rather than refusing (exit 2) and naming the shards to resubmit.
    #[arg(long)]
    allow_partial: bool,
    /// A swarm's verdict: also list the seeds that passed with reported SDC escapes.
    #[arg(long, short)]
    verbose: bool,
}

/// The shard `--shard` names: `I/N`, or `auto` from the scheduler's variables (said on
/// standard error, with the variable it came from).
pub(crate) fn resolve_shard(text: &str) -> Result<Assignment, Failure> {
    let arg = fanout::parse_shard_arg(text).map_err(Failure::bad_input)?;
    let env = fanout::shard_env_of(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    );
    let shard = fanout::assignment(arg, &env).map_err(Failure::bad_input)?;
    if arg == fanout::ShardArg::Auto {
        eprintln!(
            "faultline: --shard auto: shard {}/{} from the {} variables",
            shard.index, shard.count, shard.scheduler
        );
    }
    Ok(shard)
}

/// Whether `--out` names a directory: it ends in `/` or is one.
fn is_dir_target(out: &Path) -> bool {
    out.as_os_str().to_string_lossy().ends_with('/') || out.is_dir()
}

/// Where a shard's file goes: `--out FILE` as given, or `--out DIR/` and the deterministic
/// name of this shard in it (created if need be), so a retried task overwrites its own file.
/// Checked as every output is.
pub(crate) fn shard_target(
    out: &Path,
    command: &str,
    digest: &str,
    shard: &Assignment,
) -> Result<PathBuf, Failure> {
    let target = if is_dir_target(out) {
        std::fs::create_dir_all(out)
            .map_err(|e| Failure::bad_input(format!("--out {}: {e}", out.display())))?;
        out.join(fanout::shard_file_name(command, digest, shard))
    } else {
        out.to_path_buf()
    };
    check_outputs(&[("--out", Some(&target))], None)?;
    Ok(target)
}

/// Writes a shard file's JSON text.
pub(crate) fn write_shard(target: &Path, text: &str) -> Result<(), Failure> {
    write_atomically(target, text.as_bytes())
        .map_err(|e| Failure::bad_input(format!("--out {}: {e}", target.display())))
}

/// Whether a file name matches a glob of `*` (any run) and `?` (any one character).
fn glob_matches(pattern: &[char], name: &[char]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some('*'), _) => {
            glob_matches(&pattern[1..], name)
                || (!name.is_empty() && glob_matches(pattern, &name[1..]))
        }
        (Some('?'), Some(_)) => glob_matches(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_matches(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// The files in `dir` whose names match `pattern`, sorted; temporary files (`.NAME.tmp`) never.
fn files_in(dir: &Path, pattern: &str) -> Result<Vec<PathBuf>, Failure> {
    let pattern: Vec<char> = pattern.chars().collect();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Failure::bad_input(format!("{}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| {
                !n.starts_with('.') && glob_matches(&pattern, &n.chars().collect::<Vec<_>>())
            })
        })
        .collect();
    files.sort();
    Ok(files)
}

/// `merge`'s inputs as files: a directory gives its .json files, a glob in the last part of a
/// path the files it matches; each must give at least one.
fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, Failure> {
    let mut files = Vec::new();
    for input in inputs {
        let name = input.file_name().map(|n| n.to_string_lossy().into_owned());
        let found = if input.is_dir() {
            files_in(input, "*.json")?
        } else if !input.exists() && name.as_deref().is_some_and(|n| n.contains(['*', '?'])) {
            let dir = match input.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            files_in(dir, name.as_deref().unwrap_or_default())?
        } else {
            vec![input.clone()]
        };
        if found.is_empty() {
            return Err(Failure::bad_input(format!(
                "{}: no shard files there (a directory's .json files, or a glob's matches)",
                input.display()
            )));
        }
        files.extend(found);
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// The shard files read, by kind; all of one kind.
enum Files {
    Swarm(Vec<(String, SwarmShard)>),
    Plan(Vec<plan::report::Shard>),
    Calibrate(Vec<(String, CalibrateShard)>),
}

#[derive(serde::Deserialize)]
struct Peek {
    format: Option<String>,
}

fn read(files: &[PathBuf]) -> Result<Files, Failure> {
    let mut swarms = Vec::new();
    let mut plans = Vec::new();
    let mut calibrations = Vec::new();
    for path in files {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::bad_input(format!("{name}: {e}")))?;
        let not_one = |e: &dyn std::fmt::Display| {
            Failure::bad_input(format!("{name}: not a faultline shard file: {e}"))
        };
        let peek: Peek = serde_json::from_str(&text).map_err(|e| not_one(&e))?;
        let format = peek.format.unwrap_or_default();
        if format == CALIBRATE_SHARD_FORMAT {
            let shard = serde_json::from_str(&text).map_err(|e| not_one(&e))?;
            calibrations.push((name, shard));
        } else if format == SWARM_SHARD_FORMAT {
            let shard = serde_json::from_str(&text).map_err(|e| not_one(&e))?;
            swarms.push((name, shard));
        } else if format.starts_with("faultline-plan-shard/") {
            if format != plan::report::SHARD_FORMAT {
                return Err(Failure::bad_input(format!(
                    "{name}: format {format:?}, expected {:?} (write it again with this \
                     faultline)",
                    plan::report::SHARD_FORMAT
                )));
            }
            plans.push(serde_json::from_str(&text).map_err(|e| not_one(&e))?);
        } else {
            return Err(not_one(&format!(
                "format {format:?}; merge reads {SWARM_SHARD_FORMAT:?}, {:?} and \
                 {CALIBRATE_SHARD_FORMAT:?}",
                plan::report::SHARD_FORMAT
            )));
        }
    }
    match (swarms.is_empty(), plans.is_empty(), calibrations.is_empty()) {
        (false, true, true) => Ok(Files::Swarm(swarms)),
        (true, false, true) => Ok(Files::Plan(plans)),
        (true, true, false) => Ok(Files::Calibrate(calibrations)),
        _ => Err(Failure::bad_input(
            "the inputs mix swarm, plan and calibration shard files; merge one at a time",
        )),
    }
}

pub(crate) fn cmd_merge(args: MergeArgs) -> Result<u8, Failure> {
    check_outputs(
        &[
            ("--out", args.out.as_deref()),
            ("--plot", args.plot.as_deref()),
            ("--union", args.union.as_deref()),
        ],
        args.json.then_some("the --json report"),
    )?;
    let files = expand(&args.inputs)?;
    match read(&files)? {
        Files::Swarm(shards) => merge_swarm(&args, shards),
        Files::Plan(shards) => merge_plan(&args, shards),
        Files::Calibrate(shards) => merge_calibrate(&args, shards),
    }
}

/// Refuses (exit 2) a merge that lacks items, naming them and the shards to resubmit, unless
/// `--allow-partial`; then says on standard error what the report leaves out.
fn check_missing(
    args: &MergeArgs,
    missing: &Cover,
    total: u64,
    what: &str,
    first_item: u64,
    split: Option<&Assignment>,
) -> Result<(), Failure> {
    if missing.is_empty() {
        return Ok(());
    }
    let items = fanout::compact(missing.items().take(1000).map(|i| i + first_item));
    let more = if missing.len() > 1000 { ",..." } else { "" };
    let message = format!(
        "{} of {total} {what} missing: {items}{more} ({})",
        missing.len(),
        fanout::resubmission(missing, split)
    );
    if !args.allow_partial {
        return Err(Failure::bad_input(format!(
            "{message}; --allow-partial reports on the {what} there are"
        )));
    }
    eprintln!("faultline: partial merge: {message}");
    Ok(())
}

/// `--union FILE`: the inputs as one shard file, and what it covers.
fn write_union(path: &Path, text: &str, covered: &Cover, total: u64) -> Result<u8, Failure> {
    write_atomically(path, text.as_bytes())
        .map_err(|e| Failure::bad_input(format!("--union {}: {e}", path.display())))?;
    say!(
        "faultline merge: {} of {total} seeds, written to {}",
        covered.len(),
        crate::shown(path)
    );
    Ok(0)
}

fn merge_swarm(args: &MergeArgs, shards: Vec<(String, SwarmShard)>) -> Result<u8, Failure> {
    if args.plot.is_some() {
        return Err(Failure::bad_input("--plot: a swarm has no sweep to draw"));
    }
    let merged = swarm_shard::merge(shards).map_err(Failure::bad_input)?;
    let facts = &merged.swarm;
    if let Some(path) = &args.union {
        let text = serde_json::to_string(&merged).expect("a shard serialises");
        return write_union(path, &text, &merged.holding.covered, facts.seeds());
    }
    check_missing(
        args,
        &merged.missing(),
        facts.seeds(),
        "seeds",
        facts.seeds_from,
        merged.holding.split.as_ref(),
    )?;
    let report = merged.report();
    let json = serde_json::to_string(&report).expect("a report serialises");
    if let Some(out) = &args.out {
        write_atomically(out, json.as_bytes())
            .map_err(|e| Failure::bad_input(format!("--out {}: {e}", out.display())))?;
    }
    if args.json {
        println!("{json}");
    } else {
        crate::swarm_cli::print_swarm(facts, &report, None, args.verbose);
    }
    Ok(if report.seeds_failed == 0 {
        0
    } else {
        EXIT_FINDING
    })
}

fn merge_plan(args: &MergeArgs, shards: Vec<plan::report::Shard>) -> Result<u8, Failure> {
    let mut merged = plan::report::merge(shards).map_err(Failure::bad_input)?;
    if let Some(path) = &args.union {
        let text = serde_json::to_string(&merged).expect("a shard serialises");
        return write_union(path, &text, &merged.holding.covered, merged.seeds as u64);
    }
    let missing = merged.missing();
    check_missing(
        args,
        &missing,
        merged.seeds as u64,
        "seeds",
        0,
        merged.holding.split.as_ref(),
    )?;
    // A partial report counts the seeds it has.
    merged.seeds = merged.holding.covered.len() as usize;
    let report = plan::report::summarise(&merged);
    crate::cmd_plan::emit_plan_report(
        &report,
        args.json,
        args.plot.as_deref(),
        args.out.as_deref(),
    )?;
    if !args.json && !missing.is_empty() {
        say!(
            "partial: {} of {} seeds (the intervals are those of the seeds there are)",
            merged.holding.covered.len(),
            merged.holding.covered.len() + missing.len()
        );
    }
    Ok(0)
}

/// A calibration's shards into its cost file: every run must be there (a cost file of some
/// runs would be another); the planner file is read again, and must be the one the shards ran.
fn merge_calibrate(args: &MergeArgs, shards: Vec<(String, CalibrateShard)>) -> Result<u8, Failure> {
    if args.plot.is_some() || args.json {
        return Err(Failure::bad_input(
            "--plot and --json: a calibration's product is its cost file (--out FILE, or \
             standard output)",
        ));
    }
    let merged = calibrate_shard::merge(shards).map_err(Failure::bad_input)?;
    let request = merged.calibration.clone();
    if let Some(path) = &args.union {
        let text = serde_json::to_string(&merged).expect("a shard serialises");
        return write_union(path, &text, &merged.holding.covered, request.runs);
    }
    let missing = merged.missing();
    if !missing.is_empty() {
        return Err(Failure::bad_input(format!(
            "{} of {} calibration runs missing: {} ({}); a cost file needs every run",
            missing.len(),
            request.runs,
            fanout::compact(missing.items()),
            fanout::resubmission(&missing, merged.holding.split.as_ref())
        )));
    }
    let text = std::fs::read_to_string(&request.path).map_err(|e| {
        Failure::bad_input(format!(
            "{}: merge reads the planner file the shards ran again: {e}",
            request.path
        ))
    })?;
    let runs = plan::calibrate::plan_runs(
        &request.scenario,
        &request.path,
        &text,
        &request.sets,
        request.steps,
        request.all_policies,
    )
    .map_err(|e| Failure::bad_input(e.to_string()))?;
    let now = calibrate_shard::Request::new(
        &runs,
        &request.path,
        &text,
        &request.sets,
        request.steps,
        request.all_policies,
    );
    if now != request {
        return Err(Failure::bad_input(format!(
            "{}: not the planner file the shards ran (its digest is {}, theirs {})",
            request.path, now.digest, request.digest
        )));
    }
    let figures = merged.figures().expect("every run is there");
    let costs = plan::calibrate::costs_of(&runs, &figures).map_err(Failure::finding)?;
    let text = serde_json::to_string_pretty(&costs).expect("a cost file serialises");
    match &args.out {
        Some(out) => write_atomically(out, text.as_bytes())
            .map_err(|e| Failure::bad_input(format!("--out {}: {e}", out.display())))?,
        None => println!("{text}"),
    }
    Ok(0)
}

/// Which scheduler gave a shard, for the line a shard prints.
pub(crate) fn origin(shard: &Assignment) -> String {
    match shard.scheduler {
        Scheduler::Flag => String::new(),
        other => format!(" (from {other})"),
    }
}
