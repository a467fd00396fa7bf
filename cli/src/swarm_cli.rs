//! `faultline swarm`, `faultline shrink` and `run --check`: arguments, output, exit status.
//! The work is the library's `swarm` module; this file only talks to people.

use std::path::PathBuf;

use faultline_sim::fanout::Assignment;
use faultline_sim::run::{run_scenario, RunReport};
use faultline_sim::scenario::Scenario;
use faultline_sim::swarm::faults::FaultKind;
use faultline_sim::swarm::invariants::{check, Invariant, Reference, Violation};
use faultline_sim::swarm::seeds::{parse_seed_range, run_seeds, SeedOutcome, SwarmReport};
use faultline_sim::swarm::shard::{SwarmFacts, SwarmShard};
use faultline_sim::swarm::shrink::{shrink, Shrunk};
use faultline_sim::swarm::{Base, SwarmError, FAULTY_TENTHS};
use faultline_sim::units::format_duration_ns;

use crate::cmd_merge::{origin, resolve_shard, shard_target, write_shard};
use crate::{say, Failure, EXIT_FINDING};
use faultline_sim::atomic::{is_stdout, write_atomically};
use faultline_sim::shell::quote;

crate::named_value_enum! {
    /// An invariant, by the name the swarm reports it under.
    InvariantArg(Invariant)
}

/// `swarm --help`, written from the lists the swarm draws from and checks, so it names every
/// fault kind and invariant there is.
pub fn swarm_about() -> String {
    let kinds: Vec<&str> = FaultKind::ALL.iter().map(|k| k.meaning()).collect();
    let invariants: Vec<String> = (Invariant::ALL.iter())
        .map(|i| format!("{} ({})", i.name(), i.meaning()))
        .collect();
    format!(
        "Swarm testing: run many seeds of one scenario, each with its own random subset of fault \
         kinds ({}) at random times, and check every invariant.\n\n\
         The scenario's own [faults] are replaced by each seed's draw. Faults fall in the faulty \
         phase, the first {FAULTY_TENTHS}/10 of the fault-free run's model time and steps; after \
         it comes the healed phase. Each seed runs twice and is checked for: {}.\n\n\
         Stdout is the verdict, which does not depend on --jobs: each failing seed with the \
         invariant it broke, its faults, and the commands that rerun and shrink it. Exit status: \
         0 every seed passed, 1 some seed broke an invariant, 2 bad input. With --shard, a \
         shard of the seeds goes to a file and exits 0 once it has run; `faultline merge` \
         gives the verdict, the same as one unsharded run.",
        kinds.join(", "),
        invariants.join("; ")
    )
}

pub const SHRINK_ABOUT: &str = "\
Shrink a failing seed of `faultline swarm`: reduce its fault schedule (fewer faults, earlier, \
on fewer and lower ranks, after fewer commits, over shorter windows) to a minimal one that still \
breaks the same invariant, and write it as a standalone scenario file with every fault explicit.

The shrinker is greedy delta debugging: it drops faults one at a time, then tries simpler forms \
of each, until nothing changes or --max-runs simulations are spent; it keeps a candidate only if \
the same invariant still breaks. Run the written file with `faultline run --check FILE` to see \
the violation again. Exit status: 0 shrunk and written, 1 the fault-free run failed, 2 bad \
input (including a seed that breaks nothing).";

#[derive(clap::Args)]
pub struct SwarmArgs {
    /// The base scenario: its cluster, job, checkpoint and recovery settings.
    pub scenario: PathBuf,
    /// Seeds to run: A..B (B excluded) or A..=B.
    #[arg(long, default_value = "1..101")]
    pub seeds: String,
    /// Worker threads (default: all cores). The verdict does not depend on it.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Print one JSON object instead of the verdict.
    #[arg(long)]
    pub json: bool,
    /// Write each failing seed's schedule as a scenario file into this directory.
    #[arg(long, value_name = "DIR")]
    pub emit: Option<PathBuf>,
    /// Also list the seeds that passed with reported SDC escapes (by default, a count).
    #[arg(long, short)]
    pub verbose: bool,
    /// Run only shard i of n of the seeds (the i-th, (i+n)-th, ... of the range), or `auto`:
    /// the shard the batch scheduler's array variables give. Needs --out; the shard exits 0
    /// once it has run, whatever its seeds found, and `faultline merge` gives the verdict.
    #[arg(long, value_name = "I/N|auto")]
    pub shard: Option<String>,
    /// With --shard: the shard file, or a directory (`DIR/`) that takes it as
    /// swarm-DIGEST-I-of-N.json, so a retried task overwrites its own file.
    #[arg(long, value_name = "FILE|DIR/")]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ShrinkArgs {
    /// The base scenario the swarm ran.
    pub scenario: PathBuf,
    /// The failing seed.
    #[arg(long, value_parser = crate::parse_seed)]
    pub seed: u64,
    /// Keep this invariant broken (default: the seed's first broken one).
    #[arg(long, value_enum)]
    pub invariant: Option<InvariantArg>,
    /// Most simulations to spend.
    #[arg(long, default_value_t = 300)]
    pub max_runs: u64,
    /// Where to write the minimal scenario (default: NAME-seed-N-shrunk.toml); `-` for
    /// standard output, where the summary then goes to standard error (not with --json).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    pub json: bool,
}

fn failure(error: SwarmError) -> Failure {
    match error {
        SwarmError::BadInput(message) => Failure::bad_input(message),
        e @ SwarmError::FaultFreeRunFailed(_) => Failure {
            status: EXIT_FINDING,
            message: e.to_string(),
        },
    }
}

pub fn cmd_swarm(args: SwarmArgs) -> Result<u8, Failure> {
    let seeds =
        parse_seed_range(&args.seeds).map_err(|e| Failure::bad_input(format!("--seeds: {e}")))?;
    if args.emit.as_deref().is_some_and(is_stdout) {
        return Err(Failure::bad_input(
            "--emit -: --emit names a directory for one scenario file per failing seed, not a \
             stream; name a directory (./- for one named -)",
        ));
    }
    if let Some(dir) = &args.emit {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::bad_input(format!("--emit {}: {e}", dir.display())))?;
    }
    let jobs = crate::workers("--jobs", args.jobs)?;
    let shard = args.shard.as_deref().map(resolve_shard).transpose()?;
    match (&shard, &args.out) {
        (Some(_), None) => {
            return Err(Failure::bad_input(
                "--shard needs --out FILE, or --out DIR/ for a file named after the shard",
            ))
        }
        (None, Some(_)) => {
            return Err(Failure::bad_input(
                "--out: the swarm writes a file only with --shard; its verdict is on standard \
                 output (--json for one object)",
            ))
        }
        _ => {}
    }
    let split = shard.unwrap_or(Assignment::of_flag(0, 1));
    let list: Vec<u64> = split
        .items(seeds.end - seeds.start)
        .map(|k| seeds.start + k)
        .collect();
    // Before the base's fault-free run: `jobs` seeds run at once, one simulation each.
    let scenario = crate::load(&args.scenario, &[])?;
    let at_once = jobs.min(list.len().max(1));
    crate::guard_memory("this swarm", &scenario, at_once)?;
    let base = Base::load(&args.scenario).map_err(failure)?;
    let facts = SwarmFacts::of(&base, seeds.clone());
    let target = match (&shard, &args.out) {
        (Some(shard), Some(out)) => Some(shard_target(out, "swarm", &facts.digest(), shard)?),
        _ => None,
    };
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(list.len() as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let outcomes = run_seeds(&base, &list, jobs, &|| bar.inc(1));
    bar.finish_and_clear();
    if let (Some(shard), Some(target)) = (shard, target) {
        return write_swarm_shard(&args, &base, facts, shard, outcomes, &target);
    }
    let report = SwarmReport::of(&facts, outcomes);
    emit_failing(&args, &base, &report.outcomes)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("a report serialises")
        );
    } else {
        print_swarm(&facts, &report, args.emit.as_ref(), args.verbose);
    }
    Ok(if report.seeds_failed == 0 {
        0
    } else {
        EXIT_FINDING
    })
}

/// A shard's end: its file, and a line on what it ran. Exit 0 whatever its seeds found: the
/// findings are in the file, and `merge` gives the verdict (a scheduler's `afterok` and its
/// retries mean "ran", not "passed").
fn write_swarm_shard(
    args: &SwarmArgs,
    base: &Base,
    facts: SwarmFacts,
    shard: Assignment,
    outcomes: Vec<SeedOutcome>,
    target: &std::path::Path,
) -> Result<u8, Failure> {
    emit_failing(args, base, &outcomes)?;
    let failed = outcomes.iter().filter(|o| o.failed()).count();
    let file = SwarmShard::of_run(facts, shard, outcomes);
    write_shard(
        target,
        &serde_json::to_string(&file).expect("a shard serialises"),
    )?;
    eprintln!(
        "faultline swarm: shard {}/{}{} of {}: {} of {} seeds ({failed} failed), written to {}",
        shard.index,
        shard.count,
        origin(&shard),
        file.swarm.scenario,
        file.holding.covered.len(),
        file.swarm.seeds(),
        crate::shown(target)
    );
    Ok(0)
}

/// `--emit DIR`: each failing seed's schedule as a scenario file.
fn emit_failing(args: &SwarmArgs, base: &Base, outcomes: &[SeedOutcome]) -> Result<(), Failure> {
    let Some(dir) = &args.emit else {
        return Ok(());
    };
    for outcome in outcomes.iter().filter(|o| o.failed()) {
        let path = dir.join(format!("{}-seed-{}.toml", base.name, outcome.seed));
        let header = vec![
            format!(
                "Seed {} of `{}`.",
                outcome.seed,
                base.swarm_command(outcome.seed)
            ),
            format!(
                "It breaks {}.",
                outcome
                    .violations
                    .iter()
                    .map(|v| v.invariant.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ];
        let text = base.scenario_text(outcome.seed, &outcome.schedule, &header);
        write_atomically(&path, text.as_bytes())
            .map_err(|e| Failure::bad_input(format!("--emit {}: {e}", path.display())))?;
    }
    Ok(())
}

/// The verdict for people: the swarm's header, each failing seed, the tally. What `swarm`
/// prints and what `merge` prints for its shards, the same bytes.
pub(crate) fn print_swarm(
    base: &SwarmFacts,
    report: &SwarmReport,
    emit: Option<&PathBuf>,
    verbose: bool,
) {
    println!(
        "faultline swarm: {}, seeds {}..{} ({} seeds)",
        report.scenario, report.seeds_from, report.seeds_until, report.seeds_run
    );
    println!(
        "fault-free run: {} of model time, param digest {}",
        format_duration_ns(report.fault_free_model_time_ns),
        report.fault_free_param_digest
    );
    println!(
        "faulty phase: model time before {} or steps before {} ({FAULTY_TENTHS}/10 of the \
         fault-free run); liveness bound after the last fault: {}",
        format_duration_ns(report.faulty_until_ns),
        report.faulty_steps,
        format_duration_ns(report.liveness_bound_ns)
    );
    for outcome in report.outcomes.iter().filter(|o| o.failed()) {
        print_failed_seed(base, outcome, emit);
    }
    let escaped = || (report.outcomes.iter()).filter(|o| o.escaped > 0 && !o.failed());
    if !verbose && escaped().count() > 0 {
        println!();
        println!(
            "{} seed(s) passed with reported SDC escapes that explain their parameters \
             (--verbose lists them)",
            escaped().count()
        );
    }
    for outcome in escaped().filter(|_| verbose) {
        println!();
        println!(
            "seed {}: passed with {} reported SDC escape(s), which explain its parameters: \
             without its SDC faults the schedule ends as the fault-free run",
            outcome.seed, outcome.escaped
        );
        println!("  faults: {}", outcome.faults.join("; "));
        println!("  reproduce: {}", crate::pasteable(&outcome.reproduce));
    }
    print_verdict(report);
}

/// The last lines: the rare paths no seed reached, then how many seeds failed, by invariant,
/// and what the swarm spent.
fn print_verdict(report: &SwarmReport) {
    if !report.rare_paths_never_reached.is_empty() {
        println!();
        println!(
            "rare paths no seed reached (untested by this swarm): {}",
            report.rare_paths_never_reached.join(", ")
        );
    }
    let by: Vec<String> = (report.failures_by_invariant.iter())
        .map(|(name, count)| format!("{name} {count}"))
        .collect();
    println!();
    println!(
        "verdict: {} of {} seeds failed{}; {} seeds drew no fault; {} seeds reported an SDC \
         escape (counted, so no silent escape holds; fault-free equivalence judged without \
         the SDC faults); {} simulations",
        report.seeds_failed,
        report.seeds_run,
        if by.is_empty() {
            String::new()
        } else {
            format!(" ({})", by.join(", "))
        },
        report.seeds_without_faults,
        report.seeds_with_reported_escapes,
        report.simulations
    );
}

/// One failing seed: the invariants it broke, its faults, and the commands that rerun and
/// shrink it.
fn print_failed_seed(base: &SwarmFacts, outcome: &SeedOutcome, emit: Option<&PathBuf>) {
    let first = &outcome.violations[0];
    println!();
    println!(
        "seed {}: FAIL {}: {}",
        outcome.seed,
        first.invariant.name(),
        first.detail
    );
    for other in &outcome.violations[1..] {
        println!("  also {}: {}", other.invariant.name(), other.detail);
    }
    println!(
        "  faults: {}",
        if outcome.faults.is_empty() {
            "none".to_string()
        } else {
            outcome.faults.join("; ")
        }
    );
    println!("  reproduce: {}", crate::pasteable(&outcome.reproduce));
    if let Some(dir) = emit {
        let path = dir.join(format!("{}-seed-{}.toml", base.scenario, outcome.seed));
        println!(
            "  reproduce: {}{} run --check {}",
            base.permission,
            crate::program(),
            quote(&path.display().to_string())
        );
    }
    println!(
        "  shrink: {}",
        crate::pasteable(&base.shrink_command(outcome.seed))
    );
}

pub fn cmd_shrink(args: ShrinkArgs) -> Result<u8, Failure> {
    if args.max_runs == 0 {
        return Err(Failure::bad_input("--max-runs: expected 1 or more, got 0"));
    }
    let invariant = args.invariant.map(|i| i.0);
    crate::guard_memory("this shrink", &crate::load(&args.scenario, &[])?, 1)?;
    let base = Base::load(&args.scenario).map_err(failure)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}-seed-{}-shrunk.toml", base.name, args.seed)));
    crate::check_outputs(
        &[("--out", Some(&out))],
        args.json.then_some("the --json summary"),
    )?;
    let shrunk = shrink(&base, args.seed, invariant, args.max_runs).map_err(failure)?;
    write_atomically(&out, shrunk.scenario_text.as_bytes())
        .map_err(|e| Failure::bad_input(format!("--out {}: {e}", out.display())))?;
    let rerun = if is_stdout(&out) {
        format!(
            "{}{} run --check FILE, FILE holding the scenario written to standard output",
            base.permission(),
            crate::program()
        )
    } else {
        format!(
            "{}{} run --check {}",
            base.permission(),
            crate::program(),
            quote(&out.display().to_string())
        )
    };
    if args.json {
        let mut value = serde_json::to_value(&shrunk).expect("serialises");
        value["out"] = out.display().to_string().into();
        value["reproduce"] = rerun.into();
        println!("{value}");
    } else {
        print_shrunk(&base, args.seed, &shrunk);
        say!("wrote: {}", crate::shown(&out));
        say!("reproduce: {rerun}");
    }
    Ok(0)
}

/// The shrinker's summary for people: the schedules before and after, and what it spent.
fn print_shrunk(base: &Base, seed: u64, shrunk: &Shrunk) {
    say!("faultline shrink: {} seed {seed}", base.name);
    say!("invariant: {}", shrunk.invariant.name());
    say!("original schedule ({} faults):", shrunk.original.len());
    for fault in &shrunk.original {
        say!("  {fault}");
    }
    say!("minimal schedule ({} faults):", shrunk.minimal.len());
    for fault in &shrunk.minimal {
        say!("  {fault}");
    }
    say!(
        "still breaks {}: {}",
        shrunk.invariant.name(),
        shrunk.violation.detail
    );
    say!(
        "job.steps: {} -> {}",
        shrunk.steps_original,
        shrunk.steps_minimal
    );
    say!(
        "runs: {}{}",
        shrunk.runs,
        if shrunk.budget_exhausted {
            " (budget spent before a fixed point)"
        } else {
            ""
        }
    );
}

/// `run --check`: the same checks as the swarm, for one scenario as written.
/// The run's own report is checked; one more run checks determinism.
pub fn check_run(scenario: &Scenario, report: &RunReport) -> Result<Vec<Violation>, Failure> {
    let reference = Reference::of(scenario).map_err(|e| Failure {
        status: EXIT_FINDING,
        message: format!("the fault-free run failed: {e}"),
    })?;
    let rerun = run_scenario(scenario).map_err(|e| e.to_string());
    Ok(check(
        scenario,
        &reference,
        &Ok(report.clone()),
        Some(&rerun),
    ))
}

pub fn print_violations(violations: &[Violation]) {
    if violations.is_empty() {
        crate::say!("invariants: all hold");
    }
    for v in violations {
        crate::say!("invariant broken: {}: {}", v.invariant.name(), v.detail);
    }
}
