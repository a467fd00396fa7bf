//! `faultline bench` and its per-case child, `faultline bench-case`: the arguments, the
//! banner, the progress lines and the JSON rows; the cases themselves are in `bench.rs`.

use clap::ValueEnum;
use faultline_sim::executor::ExecutorKind;
use faultline_sim::scenario::MAX_GPUS;

use crate::bench::{self, NotRun, Row};
use crate::{Failure, EXIT_FINDING};

crate::named_value_enum! {
    /// An executor a benchmark case runs on (`auto` would make the table depend on the size).
    KindArg(ExecutorKind)
}

/// `--payload-checksums on|off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum OnOff {
    On,
    Off,
}

impl OnOff {
    fn name(self) -> &'static str {
        match self {
            OnOff::On => "on",
            OnOff::Off => "off",
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// GPU counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000, 100_000])]
    gpus: Vec<usize>,
    /// Cases, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', value_parser = bench::CASES)]
    cases: Vec<String>,
    /// Executors, comma-separated; the bare loop runs once whatever this says.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["fifo", "madsim"])]
    executors: Vec<KindArg>,
    /// Runs per case; the table keeps the fastest (and the highest peak RSS).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Checksum and verify every payload (a scenario's default), in the bare loop too.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    payload_checksums: OnOff,
}

#[derive(clap::Args)]
pub(crate) struct BenchCaseArgs {
    #[arg(value_parser = bench::CASES)]
    case: String,
    #[arg(long)]
    gpus: usize,
    #[arg(long, value_enum, default_value = "fifo")]
    executor: KindArg,
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    payload_checksums: OnOff,
}

pub(crate) fn cmd_bench(args: BenchArgs) -> Result<u8, Failure> {
    if let Some(&gpus) = args.gpus.iter().find(|&&g| g == 0 || g > MAX_GPUS) {
        return Err(Failure::bad_input(format!(
            "--gpus: expected 1 to {MAX_GPUS}, got {gpus}"
        )));
    }
    let cases: Vec<String> = if args.cases.is_empty() {
        bench::CASES.iter().map(|c| c.to_string()).collect()
    } else {
        args.cases.clone()
    };
    for &gpus in &args.gpus {
        if let Some(why) = cases.iter().find_map(|c| bench::size_problem(c, gpus)) {
            return Err(Failure::bad_input(format!("--gpus {gpus}: {why}")));
        }
    }
    let executors: Vec<ExecutorKind> = args.executors.iter().map(|k| k.0).collect();
    if !args.json {
        print_banner(&args, &cases);
    }
    let json = args.json;
    let checksums = args.payload_checksums == OnOff::On;
    let rows = bench::run_all(
        &cases,
        &args.gpus,
        &executors,
        args.repeat,
        checksums,
        &mut |row| {
            if !json {
                eprintln!("{}", progress_line(row));
            }
        },
    );
    let all_ok = (rows.iter()).all(|row| row.outcome.as_ref().map_or(true, |r| r.ok));
    if json {
        println!("{}", serde_json::json!({ "rows": json_rows(&rows) }));
    } else {
        print!("{}", bench::format_table(&rows));
        println!("growth:");
        print!("{}", bench::format_growth(&rows));
    }
    if let Some(failure) = failed_cases(&rows) {
        return Err(failure);
    }
    Ok(if all_ok { 0 } else { EXIT_FINDING })
}

/// The cases whose child failed, named, with the gravest of their exit statuses: a table
/// with a hole in it is not a benchmark that passed.
fn failed_cases(rows: &[Row]) -> Option<Failure> {
    let failed: Vec<(&Row, u8)> = (rows.iter())
        .filter_map(|row| match &row.outcome {
            Err(NotRun::Failed { status, .. }) => Some((row, *status)),
            _ => None,
        })
        .collect();
    let status = failed.iter().map(|&(_, status)| status).max()?;
    let names: Vec<String> = (failed.iter())
        .map(|(row, _)| format!("{} at {} GPUs on {}", row.case, row.gpus, row.executor))
        .collect();
    Some(Failure {
        status,
        message: format!(
            "{} case(s) failed in their child process (the table says how): {}",
            failed.len(),
            names.join(", ")
        ),
    })
}

fn print_banner(args: &BenchArgs, cases: &[String]) {
    println!(
        "faultline bench: {} CPU(s); cases {}; GPUs {:?}; best of {}; payload checksums {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cases.join(", "),
        args.gpus,
        args.repeat.max(1),
        args.payload_checksums.name(),
    );
    println!(
        "training/10-steps commits a checkpoint every {} steps; planner: {} seeds of 30 days",
        bench::CHECKPOINT_EVERY_STEPS,
        bench::PLANNER_SEEDS
    );
}

/// One finished case, on stderr while the others run.
fn progress_line(row: &Row) -> String {
    let outcome = match &row.outcome {
        Ok(r) => format!("{:.0} ms", r.wall_ms),
        Err(why) => why.to_string(),
    };
    format!(
        "  {} at {} GPUs on {}: {outcome}",
        row.case, row.gpus, row.executor
    )
}

/// Each row as JSON, with its message rate and its ratio to the bare loop.
fn json_rows(rows: &[Row]) -> Vec<serde_json::Value> {
    (rows.iter())
        .map(|row| match &row.outcome {
            Ok(r) => {
                let mut value = serde_json::to_value(r).expect("a result serialises");
                value["messages_per_s"] = (r.messages as f64 / (r.wall_ms / 1e3)).into();
                if let Some(ratio) = bench::bare_ratio(rows, r) {
                    value["ratio_to_bare_loop"] = ratio.into();
                }
                value
            }
            Err(why) => serde_json::json!({
                "case": row.case, "gpus": row.gpus, "executor": row.executor,
                "not_run": why.to_string(),
                "failed": matches!(why, NotRun::Failed { .. }),
            }),
        })
        .collect()
}

pub(crate) fn cmd_bench_case(args: BenchCaseArgs) -> Result<u8, Failure> {
    if args.gpus == 0 || args.gpus > MAX_GPUS {
        return Err(Failure::bad_input(format!(
            "--gpus: expected 1 to {MAX_GPUS}, got {}",
            args.gpus
        )));
    }
    if let Some(why) = bench::size_problem(&args.case, args.gpus) {
        return Err(Failure::bad_input(format!("--gpus {}: {why}", args.gpus)));
    }
    let estimate = faultline_sim::limits::estimate_run_bytes(args.gpus, bench::COLLECTIVE_ELEMS);
    let available = faultline_sim::limits::available_bytes().map_err(Failure::bad_input)?;
    faultline_sim::limits::check("this case", estimate, available).map_err(Failure::bad_input)?;
    let checksums = args.payload_checksums == OnOff::On;
    let result = bench::run_case(&args.case, args.gpus, args.executor.0, checksums)
        .map_err(Failure::finding)?;
    let line = serde_json::to_string(&result).expect("a result serialises");
    println!("{line}");
    Ok(0)
}
