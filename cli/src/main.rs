//! The `faultline` command line: parses arguments, loads scenarios, calls the library, prints.
//! Everything simulated lives in `faultline-sim`; this program adds only what a program needs
//! (arguments, the allocator, progress bars, plots, files and exit statuses). Exit status:
//! 0 success, 1 the run found a problem (inexact collective, diverged replicas, deadlock,
//! a broken invariant), 2 bad input, 70 an internal error (a bug in faultline).

mod bench;
mod check;
mod cmd_bench;
mod cmd_collective;
mod cmd_fr;
mod cmd_merge;
mod cmd_plan;
mod cmd_run;
mod heap;
mod plot;
mod progress;
mod signals;
mod swarm_cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::builder::PossibleValue;
use clap::{Parser, Subcommand, ValueEnum};
use faultline_sim::scenario::{self, ExecutorChoice, Scenario};
use faultline_sim::trace::TraceLevel;
use trainer_core::collectives::{Algo, Op};

pub(crate) const EXIT_FINDING: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;
const EXIT_BUG: u8 = 70;

/// The scenario `faultline` runs when given none.
const DEFAULT_SCENARIO: &str = "scenarios/first-run.toml";

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
    Run(cmd_run::RunArgs),
    /// Run one collective on a simulated cluster and check it against the exact reference.
    Collective(cmd_collective::CollectiveArgs),
    /// Summarise a scenario's topology.
    Topo(cmd_collective::TopoArgs),
    /// Benchmark the simulator: wall time, messages per second, model time and peak RSS per
    /// case and size, each case in a child process, with the bare event loop as the lower bound.
    Bench(cmd_bench::BenchArgs),
    /// Run one benchmark case in this process and print its result as one JSON line (what
    /// `bench` runs in each child).
    #[command(hide = true)]
    BenchCase(cmd_bench::BenchCaseArgs),
    /// Capacity planning: Monte Carlo of failures, recovery and checkpoints over weeks.
    Plan(cmd_plan::PlanArgs),
    /// Merge the shard files of a swarm or a plan (`--shard ... --out DIR/`) into the
    /// unsharded verdict or report: a set union over files, directories and globs; missing
    /// seeds are named with the shards to resubmit. Exit status as the command's own.
    Merge(cmd_merge::MergeArgs),
    /// Measure planner costs by running the training logic at the scenario's scale.
    Calibrate(cmd_plan::CalibrateArgs),
    /// Swarm testing: run many seeds, each with a random subset of fault kinds at random
    /// times, and check every invariant on each.
    #[command(long_about = swarm_cli::swarm_about())]
    Swarm(swarm_cli::SwarmArgs),
    /// Shrink a failing seed's fault schedule to a minimal one and write it as a scenario.
    #[command(long_about = swarm_cli::SHRINK_ABOUT)]
    Shrink(swarm_cli::ShrinkArgs),
    /// Re-run the scenario recorded in a `run --trace` file and check that it comes out the
    /// same: the digests, and every record the trace holds.
    Replay(cmd_run::ReplayArgs),
    /// Read flight-recorder dumps (`run --fr-dir`) and name where the ranks diverged: the
    /// collective some rank waits in, the ranks that never started it, or the rank that
    /// issued another in its place.
    Fr(cmd_fr::FrArgs),
    /// Determinism self-check: run a scenario twice in separate processes and compare their
    /// traces record by record; on divergence, print the first differing record.
    Check(check::CheckArgs),
}

/// `--set KEY=VALUE`, shared by every command that reads a scenario.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct SetArgs {
    /// Override a scenario key by its dotted path (the value in TOML, or a bare string such as
    /// 30min), e.g. --set cluster.gpus=12345; repeat for more keys.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) sets: Vec<String>,
}

/// `--executor`: which executor runs the ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExecutorArg {
    Auto,
    Madsim,
    Fifo,
}

impl ExecutorArg {
    pub(crate) fn choice(self) -> ExecutorChoice {
        match self {
            ExecutorArg::Auto => ExecutorChoice::Auto,
            ExecutorArg::Madsim => ExecutorChoice::Madsim,
            ExecutorArg::Fifo => ExecutorChoice::Fifo,
        }
    }
}

/// `--trace-level`: `auto`, or one of the trace's levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TraceLevelArg {
    Auto,
    Level(TraceLevel),
}

impl TraceLevelArg {
    const ALL: [TraceLevelArg; 4] = [
        TraceLevelArg::Auto,
        TraceLevelArg::Level(TraceLevel::Summary),
        TraceLevelArg::Level(TraceLevel::Events),
        TraceLevelArg::Level(TraceLevel::Messages),
    ];

    /// The level a run of `gpus` GPUs traces at.
    pub(crate) fn resolve(self, gpus: usize) -> TraceLevel {
        match self {
            TraceLevelArg::Auto => TraceLevel::auto(gpus),
            TraceLevelArg::Level(level) => level,
        }
    }
}

impl ValueEnum for TraceLevelArg {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(match self {
            TraceLevelArg::Auto => "auto",
            TraceLevelArg::Level(level) => level.name(),
        }))
    }
}

/// A command-line choice among the variants of a `named_enum!` type, by their names: the
/// help text and the parser read the same table as the rest of faultline.
macro_rules! named_value_enum {
    ($(#[$meta:meta])* $new:ident($inner:ty)) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) struct $new(pub(crate) $inner);

        impl clap::ValueEnum for $new {
            fn value_variants<'a>() -> &'a [Self] {
                static ALL: std::sync::OnceLock<Vec<$new>> = std::sync::OnceLock::new();
                ALL.get_or_init(|| <$inner>::ALL.iter().map(|&v| $new(v)).collect())
            }

            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.0.name()))
            }
        }
    };
}
pub(crate) use named_value_enum;

named_value_enum! {
    /// A collective algorithm, by trainer-core's names.
    AlgoArg(Algo)
}

named_value_enum! {
    /// The order a flat ring visits the world in, by the scenario's names.
    RingOrderArg(trainer_core::collectives::RingOrder)
}

named_value_enum! {
    /// How flows between leaves pick a spine, by the scenario's names.
    RoutingArg(faultline_sim::scenario::Routing)
}

/// What the hierarchical algorithm runs across nodes: any algorithm but itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InterNodeAlgoArg(pub(crate) Algo);

impl ValueEnum for InterNodeAlgoArg {
    fn value_variants<'a>() -> &'a [Self] {
        const ALL: [InterNodeAlgoArg; 3] = [
            InterNodeAlgoArg(Algo::Ring),
            InterNodeAlgoArg(Algo::Tree),
            InterNodeAlgoArg(Algo::HalvingDoubling),
        ];
        &ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.0.name()))
    }
}

/// A collective operation, by trainer-core's names; a broadcast is from member 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OpArg(pub(crate) Op);

impl ValueEnum for OpArg {
    fn value_variants<'a>() -> &'a [Self] {
        const ALL: [OpArg; 5] = [
            OpArg(Op::AllReduce),
            OpArg(Op::ReduceScatter),
            OpArg(Op::AllGather),
            OpArg(Op::Broadcast { root_idx: 0 }),
            OpArg(Op::Barrier),
        ];
        &ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.0.name()))
    }
}

/// A root seed on the command line (`--seed`): 0 to `i64::MAX`, what a scenario file's
/// `run.seed` can hold, so that a reproduce line, a trace and a written scenario carry it.
pub(crate) fn parse_seed(text: &str) -> Result<u64, String> {
    scenario::parse_seed(text)
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

    /// A finding of the run (exit 1), not a fault of the input.
    pub(crate) fn finding(message: impl Into<String>) -> Failure {
        Failure {
            status: EXIT_FINDING,
            message: message.into(),
        }
    }

    /// A simulation that could not finish: a finding (a deadlock), or bad input (a scenario
    /// whose run would pass the longest model time faultline represents).
    pub(crate) fn of_sim(error: faultline_sim::run::SimError) -> Failure {
        match error {
            faultline_sim::run::SimError::PastHorizon { .. } => {
                Failure::bad_input(error.to_string())
            }
            other => Failure::finding(other.to_string()),
        }
    }
}

fn main() -> ExitCode {
    if let Err(message) = heap::init() {
        eprintln!("faultline: {message}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    if let Err(e) = signals::install() {
        eprintln!("faultline: cannot watch for SIGINT and SIGTERM: {e}");
        return ExitCode::from(EXIT_BUG);
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

/// `faultline` alone: `faultline run` with every default.
#[derive(Parser)]
struct DefaultRun {
    #[command(flatten)]
    args: cmd_run::RunArgs,
}

fn dispatch(cli: Cli) -> Result<u8, Failure> {
    let default = || {
        let mut args = DefaultRun::parse_from(["faultline", "--compare"]).args;
        args.first_run = true;
        Command::Run(args)
    };
    match cli.command.unwrap_or_else(default) {
        Command::Run(args) => cmd_run::cmd_run(args),
        Command::Collective(args) => cmd_collective::cmd_collective(args),
        Command::Topo(args) => cmd_collective::cmd_topo(args),
        Command::Bench(args) => cmd_bench::cmd_bench(args),
        Command::BenchCase(args) => cmd_bench::cmd_bench_case(args),
        Command::Plan(args) => cmd_plan::cmd_plan(args),
        Command::Merge(args) => cmd_merge::cmd_merge(args),
        Command::Calibrate(args) => cmd_plan::cmd_calibrate(args),
        Command::Replay(args) => cmd_run::cmd_replay(args),
        Command::Fr(args) => cmd_fr::cmd_fr(args),
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

/// The most worker threads a command starts: far beyond any machine's cores, and far below
/// what would exhaust the process's threads or memory.
const MAX_WORKERS: usize = 1024;

/// A worker-thread count from `flag`, or when absent every CPU this task may use (its
/// affinity, its cgroup's CPU quota, a Slurm task's `SLURM_CPUS_PER_TASK`: see
/// `limits::cpu_allowance`); refused (exit 2) when zero or above [`MAX_WORKERS`]. Results
/// never depend on it.
pub(crate) fn workers(flag: &str, asked: Option<usize>) -> Result<usize, Failure> {
    match asked {
        None => Ok(faultline_sim::limits::available_cpus().min(MAX_WORKERS)),
        Some(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
        Some(n) => Err(Failure::bad_input(format!(
            "{flag}: expected 1 to {MAX_WORKERS} threads, got {n}"
        ))),
    }
}

/// Set when an output of the command is `-`: standard output carries that output, so the
/// summary for people goes to standard error instead.
static SUMMARY_TO_STDERR: AtomicBool = AtomicBool::new(false);

/// Whether the summary for people goes to standard error (see [`check_outputs`]).
pub(crate) fn summary_to_stderr() -> bool {
    SUMMARY_TO_STDERR.load(Ordering::Relaxed)
}

/// `println!` for a command's summary for people: on standard output, or on standard error
/// when an output (`-`) took standard output.
macro_rules! say {
    ($($arg:tt)*) => {
        if $crate::summary_to_stderr() {
            eprintln!($($arg)*)
        } else {
            println!($($arg)*)
        }
    };
}
pub(crate) use say;

/// `print!` for a command's summary for people, as [`say!`].
macro_rules! say_part {
    ($($arg:tt)*) => {
        if $crate::summary_to_stderr() {
            eprint!($($arg)*)
        } else {
            print!($($arg)*)
        }
    };
}
pub(crate) use say_part;

/// The program as this process was started, for command lines a user pastes: the path when it
/// was started by one (`target/release/faultline` under `cargo run`), else `faultline`, found
/// on the PATH.
pub(crate) fn program() -> &'static str {
    static PROGRAM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PROGRAM.get_or_init(|| {
        std::env::args_os()
            .next()
            .and_then(|arg0| arg0.into_string().ok())
            .filter(|arg0| arg0.contains('/'))
            .map_or_else(
                || "faultline".to_string(),
                |arg0| faultline_sim::shell::quote(&arg0).into_owned(),
            )
    })
}

/// `line`, a command line the library wrote with `faultline` for the program (after any
/// `NAME=value` prefix), with the program as this process was started instead.
pub(crate) fn pasteable(line: &str) -> String {
    let at = line
        .match_indices("faultline ")
        .map(|(at, _)| at)
        .find(|&at| at == 0 || line.as_bytes()[at - 1] == b' ');
    match at {
        Some(at) => format!(
            "{}{}{}",
            &line[..at],
            program(),
            &line[at + "faultline".len()..]
        ),
        None => line.to_string(),
    }
}

/// How an output is named in what a command prints: its path, or standard output for `-`.
pub(crate) fn shown(path: &Path) -> String {
    if faultline_sim::atomic::is_stdout(path) {
        "standard output".to_string()
    } else {
        path.display().to_string()
    }
}

/// Refuses, before any work, an output that cannot be written (not a regular file, a
/// symbolic link, a missing directory: see `atomic::check_target`) or that two flags of one
/// command name, which would leave one output overwritten by the other.
///
/// An output may be `-`, standard output, when it is the only one that is and `stdout_carries`
/// is `None`; `stdout_carries` says what else the command prints there for programs to read
/// (a `--json` report), which a stream in the same place would garble. From then on the
/// summary for people goes to standard error ([`say!`]).
pub(crate) fn check_outputs(
    outputs: &[(&str, Option<&Path>)],
    stdout_carries: Option<&str>,
) -> Result<(), Failure> {
    let mut seen: Vec<(&str, PathBuf)> = Vec::new();
    let mut to_stdout: Option<&str> = None;
    for &(flag, path) in outputs {
        let Some(path) = path else {
            continue;
        };
        if faultline_sim::atomic::is_stdout(path) {
            if let Some(other) = to_stdout {
                return Err(Failure::bad_input(format!(
                    "{other} - and {flag} -: standard output can carry one output; write the \
                     other to a file"
                )));
            }
            if let Some(what) = stdout_carries {
                return Err(Failure::bad_input(format!(
                    "{flag} -: standard output already carries {what}; write {flag} to a file \
                     (./- for a file named -)"
                )));
            }
            to_stdout = Some(flag);
            continue;
        }
        faultline_sim::atomic::check_target(path)
            .map_err(|e| Failure::bad_input(format!("{flag} {e}")))?;
        let identity = file_identity(path);
        if let Some((other, _)) = seen.iter().find(|(_, seen)| *seen == identity) {
            return Err(Failure::bad_input(format!(
                "{other} and {flag} name the same file, {}: each output needs its own",
                path.display()
            )));
        }
        seen.push((flag, identity));
    }
    if to_stdout.is_some() {
        SUMMARY_TO_STDERR.store(true, Ordering::Relaxed);
    }
    Ok(())
}

/// The file `path` names, however it is spelt: its directory resolved, then its name.
fn file_identity(path: &Path) -> PathBuf {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
    parent.join(path.file_name().unwrap_or_default())
}

/// Refuses (exit 2) work that runs `at_once` simulations of `scenario` together and cannot
/// fit in memory, or a memory limit that does not parse.
pub(crate) fn guard_memory(what: &str, scenario: &Scenario, at_once: usize) -> Result<(), Failure> {
    faultline_sim::limits::guard(what, scenario, at_once).map_err(Failure::bad_input)
}

fn load(path: &Path, sets: &[String]) -> Result<Scenario, Failure> {
    scenario::load(&locate(path), sets).map_err(|e| Failure::bad_input(e.to_string()))
}
