//! `faultline check`: the determinism self-check. Runs one scenario twice, each in its own
//! process (this program, spawned again), with a trace each, and compares the traces line by
//! line. Two processes share nothing (no allocator state, no address layout, no statics), so a
//! dependence on any of them shows as a divergence here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use faultline_sim::trace;

use clap::ValueEnum;

use crate::{load, Failure, SetArgs, TraceLevelArg, EXIT_BUG, EXIT_FINDING};

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Scenario file.
    scenario: PathBuf,
    /// Root seed, 0 to 2^63 - 1; overrides run.seed.
    #[arg(long, value_parser = crate::parse_seed)]
    seed: Option<u64>,
    #[command(flatten)]
    set: SetArgs,
    /// What the traces keep; `auto` is `events` up to 1,024 GPUs, `summary` above.
    #[arg(long, value_enum, default_value_t = TraceLevelArg::Auto)]
    trace_level: TraceLevelArg,
    /// Test hook: make compute call N of the second run one nanosecond longer, a real
    /// divergence the check must find and name.
    #[arg(long, hide = true, value_name = "N")]
    perturb_second: Option<u64>,
}

/// A scratch directory of this process, removed when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn cmd_check(args: CheckArgs) -> Result<u8, Failure> {
    // Bad input fails here, once, rather than twice in the children.
    let scenario = load(&args.scenario, &args.set.sets)?;
    // Two child processes run it at once.
    crate::guard_memory("this check", &scenario, 2)?;
    let scratch =
        ScratchDir(std::env::temp_dir().join(format!("faultline-check-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)
        .map_err(|e| Failure::bad_input(format!("{}: {e}", scratch.0.display())))?;
    let exe = std::env::current_exe().map_err(|e| Failure {
        status: EXIT_BUG,
        message: format!("cannot find this program to run it again: {e}"),
    })?;
    let paths = [
        scratch.0.join("first.jsonl"),
        scratch.0.join("second.jsonl"),
    ];
    #[allow(clippy::disallowed_methods)] // wall time for people, never in results
    let started = std::time::Instant::now();
    run_both(&args, &exe, &paths)?;
    let wall_ms = started.elapsed().as_millis();
    let [first, second] = [read(&paths[0])?, read(&paths[1])?];
    let name = args.scenario.display();
    match trace::first_difference(&first, &second) {
        None => {
            let footer: serde_json::Value =
                serde_json::from_str(first.last().map_or("", String::as_str)).unwrap_or_default();
            println!(
                "faultline check: {name}: two processes, identical traces ({} lines, trace_digest {}) in {wall_ms} ms",
                first.len(),
                footer["trace_digest"].as_str().unwrap_or("?")
            );
            Ok(0)
        }
        Some((line, a, b)) => {
            println!("faultline check: {name}: the two runs DIVERGE at trace line {line}");
            println!("  first run:  {}", a.unwrap_or("(end of trace)"));
            println!("  second run: {}", b.unwrap_or("(end of trace)"));
            Ok(EXIT_FINDING)
        }
    }
}

/// Runs both children at once: they share nothing, and the check takes one run's time on two
/// cores. Each must exit 0 or 1 (a run that found something still wrote its trace).
fn run_both(args: &CheckArgs, exe: &Path, paths: &[PathBuf; 2]) -> Result<(), Failure> {
    let children = paths
        .iter()
        .enumerate()
        .map(|(idx, path)| {
            let mut command = Command::new(exe);
            command.args(child_args(args, path, idx == 1));
            command
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .inspect(|child| crate::signals::adopt(child.id()))
                .map_err(|e| Failure {
                    status: EXIT_BUG,
                    message: format!("cannot run {}: {e}", exe.display()),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (child, path) in children.into_iter().zip(paths) {
        let pid = child.id();
        let output = child.wait_with_output();
        crate::signals::release(pid);
        let output = output.map_err(|e| Failure {
            status: EXIT_BUG,
            message: format!("waiting for a run: {e}"),
        })?;
        // Exit 1 is a run that found something (it still wrote its trace); anything else is not
        // a run to compare.
        if !matches!(output.status.code(), Some(0 | 1)) || !path.exists() {
            return Err(Failure {
                status: output.status.code().map_or(EXIT_BUG, |c| c as u8),
                message: format!(
                    "a run of the check failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
    }
    Ok(())
}

fn child_args(args: &CheckArgs, trace_path: &Path, second: bool) -> Vec<String> {
    let mut child = vec![
        "run".to_string(),
        args.scenario.display().to_string(),
        "--json".into(),
        "--trace".into(),
        trace_path.display().to_string(),
        "--trace-level".into(),
        (args.trace_level.to_possible_value())
            .expect("every level has a name")
            .get_name()
            .to_string(),
    ];
    if let Some(seed) = args.seed {
        child.extend(["--seed".into(), seed.to_string()]);
    }
    for set in &args.set.sets {
        child.extend(["--set".into(), set.clone()]);
    }
    if let (true, Some(call)) = (second, args.perturb_second) {
        child.extend(["--perturb-compute".into(), call.to_string()]);
    }
    child
}

fn read(path: &Path) -> Result<Vec<String>, Failure> {
    trace::read_lines(path).map_err(|e| Failure {
        status: EXIT_BUG,
        message: format!("reading {}: {e}", path.display()),
    })
}
