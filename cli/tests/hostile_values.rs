//! A property harness over every scenario key and planner key the README's tables list, and
//! the numeric flags: each key is tried at both ends of its stated range, just outside them and
//! with values of the wrong type. What must hold, whatever the value:
//! - a value outside the stated range is refused with exit 2, naming the key;
//! - a value inside it is not refused for its own range (another key's check may still object);
//! - every process ends within a time bound with 0, 1 or 2: never 70 (a panic), never a signal;
//! - a run writes nothing but the named outputs, and leaves no temporary file.
//!
//! The README's ranges are the source, so a table that promises a range the loader does not
//! enforce (or the reverse) fails here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use trainer_core::units::{parse_bandwidth_bytes_per_s, parse_duration_ns};

/// Generous for a debug build on two busy cores: the slowest accepted value takes about 1 s.
const TIME_BOUND: Duration = Duration::from_secs(60);

/// A small run scenario in which every key of the table may be set: two nodes, checkpoints,
/// the retry transport and a link flap, so that the keys it reads are all exercised.
const RUN_BASE: &str = r#"
[cluster]
gpus = 16
gpus_per_node = 8
nodes_per_leaf = 2
[fabric]
transport = "retry"
[job]
steps = 3
proxy_elems = 16
[checkpoint]
interval = 1
[recovery]
heartbeat_interval = "5s"
[[faults.link_flap]]
link = "nic:gpu=3"
at = "100ms"
down = "200ms"
"#;

/// A small planner scenario: two seeds of a 30-day horizon.
const PLAN_BASE: &str = r#"
[cluster]
gpus = 1024
[plan]
seeds = 2
maintenance_interval = "7d"
maintenance_duration = "4h"
[faults.rates]
node_failures_per_1000_node_days = 5.0
"#;

/// Keys whose largest value is work, not a hazard (a million GPUs, ten million steps or
/// seeds): their upper bound is checked by loading only, not by a run.
const WORK_KEYS: [&str; 6] = [
    "cluster.gpus",
    "job.steps",
    "job.proxy_elems",
    "job.batch_per_rank",
    "plan.seeds",
    "cluster.spare_nodes",
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    Integer,
    Number,
    Duration,
    Bandwidth,
}

/// A key's range as the README states it.
#[derive(Debug)]
enum Range {
    Numeric {
        unit: Unit,
        /// `"0s" (off)` or `0 (off)` before the range: zero is accepted too.
        off: bool,
        /// `above A`: A itself is refused.
        exclusive_min: bool,
        min: f64,
        /// None when the bound depends on another key ("the node count").
        max: Option<f64>,
    },
    Names(Vec<String>),
}

struct Row {
    key: String,
    range: Range,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The rows of the README table whose header has a `range` column, `nth` such table.
fn readme_rows(nth: usize) -> Vec<Row> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let header = "| key | default | range | meaning |";
    let table = readme
        .split(header)
        .nth(nth + 1)
        .expect("the README's key table");
    table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .filter_map(parse_row)
        .collect()
}

fn parse_row(line: &str) -> Option<Row> {
    let cells: Vec<&str> = line.split('|').map(str::trim).collect();
    let key = cells[1].strip_prefix('`')?.strip_suffix('`')?;
    if key.contains('`') || key.starts_with('[') {
        return None; // an array of tables, described in words
    }
    let key = key.replace("<kind>", "node");
    // A float key may write its ends as integers ("1 to 64"); its default shows the type.
    let float = cells[2].contains('.');
    Some(Row {
        range: parse_range(cells[3], &key, float)?,
        key,
    })
}

fn parse_range(text: &str, key: &str, float: bool) -> Option<Range> {
    if text.starts_with('`') {
        let names = text
            .split(',')
            .map(|n| n.trim().trim_matches('`').to_string());
        return Some(Range::Names(names.collect()));
    }
    if text.contains(", or ") || !text.contains(" to ") {
        return None; // two forms in one key, or no range: described in words
    }
    let (off, rest) = match text.split_once(" (off), ") {
        Some((_, rest)) => (true, rest),
        None => (false, text),
    };
    let (exclusive_min, rest) = match rest.strip_prefix("above ") {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    let (low, high) = rest.split_once(" to ")?;
    let (mut unit, min) = parse_value(low).unwrap_or_else(|| panic!("{key}: range {text:?}"));
    let high = parse_value(high);
    if let Some((high_unit, _)) = high {
        let numbers = [Unit::Integer, Unit::Number];
        if numbers.contains(&unit) && numbers.contains(&high_unit) {
            unit = if float || unit != high_unit {
                Unit::Number
            } else {
                unit
            };
        } else {
            assert_eq!(unit, high_unit, "{key}: both ends of {text:?} in one unit");
        }
    }
    let max = high.map(|(_, v)| v);
    Some(Range::Numeric {
        unit,
        off,
        exclusive_min,
        min,
        max,
    })
}

fn parse_value(text: &str) -> Option<(Unit, f64)> {
    let text = text.replace(',', "");
    if let Ok(v) = text.parse::<i64>() {
        return Some((Unit::Integer, v as f64));
    }
    if let Ok(v) = text.parse::<f64>() {
        return Some((Unit::Number, v));
    }
    if let Ok(ns) = parse_duration_ns(&text) {
        return Some((Unit::Duration, ns as f64));
    }
    parse_bandwidth_bytes_per_s(&text)
        .ok()
        .map(|b| (Unit::Bandwidth, b))
}

/// A value as `--set` takes it.
fn render(unit: Unit, v: f64) -> String {
    match unit {
        Unit::Integer => format!("{}", v as i128),
        Unit::Number => format!("{v:e}"),
        Unit::Duration => format!("\"{}ns\"", v.round() as u128),
        Unit::Bandwidth => format!("\"{}Mb/s\"", v * 8.0 / 1e6),
    }
}

/// The values to try for one key, each with whether the README says it is in range.
fn values(row: &Row) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    match &row.range {
        Range::Names(names) => {
            out.extend(names.iter().map(|n| (format!("\"{n}\""), true)));
            out.push(("\"no-such-name\"".into(), false));
        }
        &Range::Numeric {
            unit,
            off,
            exclusive_min,
            min,
            max,
        } => {
            let below = match unit {
                Unit::Integer => min - 1.0,
                Unit::Duration if min == 1.0 => 0.0,
                _ if min > 0.0 => min / 2.0,
                _ => -1.0,
            };
            let pointless = off && below == 0.0 || unit == Unit::Duration && below < 0.0;
            if !pointless {
                out.push((render(unit, below), false));
            }
            out.push((render(unit, min), !exclusive_min || (off && min == 0.0)));
            if exclusive_min {
                out.push((render(unit, min * 1.01), true));
            }
            if let Some(max) = max {
                out.push((render(unit, max), true));
                let above = if unit == Unit::Integer {
                    max + 1.0
                } else {
                    max * 2.0
                };
                out.push((render(unit, above), false));
            }
            if off {
                out.push((render(unit, 0.0), true));
            }
            // The wrong type: a word where a number or a duration goes.
            out.push(("\"lots\"".into(), false));
        }
    }
    out
}

/// Runs faultline with a deadline; a run past it is killed and reported as such.
fn faultline(dir: &Path, args: &[String]) -> Result<Output, String> {
    let child = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The harness's own deadline, outside any simulation.
    #[allow(clippy::disallowed_methods)]
    let start = Instant::now();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    while !waiter.is_finished() {
        if start.elapsed() > TIME_BOUND {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let _ = waiter.join();
            return Err(format!("still running after {TIME_BOUND:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(waiter.join().unwrap().unwrap())
}

/// One (command, key, value) case; every broken property is pushed to `problems`.
fn try_value(kind: &str, key: &str, value: &str, in_range: bool, problems: &Mutex<Vec<String>>) {
    let dir = Scratch::new();
    let base = if kind.starts_with("plan") {
        PLAN_BASE
    } else {
        RUN_BASE
    };
    std::fs::write(dir.path().join("base.toml"), base).unwrap();
    let set = format!("{key}={value}");
    let mut args: Vec<String> = match kind {
        "plan" => vec!["plan".into(), "base.toml".into()],
        // A million shards of ten million seeds: ten seeds, and the whole plan validated.
        "plan-shard" => [
            "plan",
            "base.toml",
            "--shard",
            "0/1000000",
            "--out",
            "s.json",
        ]
        .map(String::from)
        .to_vec(),
        "topo" => vec!["topo".into(), "base.toml".into()],
        _ => vec![
            "run".into(),
            "base.toml".into(),
            "--trace".into(),
            "t.jsonl".into(),
        ],
    };
    args.extend(["--set".to_string(), set.clone()]);
    let case = format!("faultline {}", args.join(" "));
    let problem = |p: String| problems.lock().unwrap().push(format!("{case}: {p}"));
    let output = match faultline(dir.path(), &args) {
        Ok(output) => output,
        Err(e) => return problem(e),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = output.status.code();
    match code {
        Some(0..=2) => {}
        other => problem(format!("exit {other:?}: {stderr}")),
    }
    let refused_for_its_range = code == Some(2) && stderr.contains(&format!("{key}: expected"));
    let refused_naming_key = code == Some(2) && stderr.contains(key);
    if !in_range && !refused_naming_key {
        problem(format!(
            "outside the README's range, yet exit {code:?}: {stderr}"
        ));
    }
    if in_range && refused_for_its_range {
        problem(format!("inside the README's range, yet refused: {stderr}"));
    }
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "base.toml")
        // A run that ran writes its trace, and its flight-recorder dumps when a detector fired
        // (an absurdly slow link times collectives out).
        .filter(|name| !(["t.jsonl", "s.json", "fr"].contains(&name.as_str()) && code != Some(2)))
        .collect();
    left.sort();
    if !left.is_empty() {
        problem(format!("left files behind: {left:?}"));
    }
}

/// A directory of its own for one case, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "faultline-hostile-values-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs every case on a few threads and fails with the whole list of broken properties.
fn check_all(cases: Vec<(&'static str, String, String, bool)>) {
    let problems = Mutex::new(Vec::new());
    let count = cases.len();
    let next = Mutex::new(cases.into_iter());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| loop {
                let Some((kind, key, value, in_range)) = next.lock().unwrap().next() else {
                    return;
                };
                try_value(kind, &key, &value, in_range, &problems);
            });
        }
    });
    let problems = problems.into_inner().unwrap();
    eprintln!("{count} cases");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The cases for one table: every value loaded by `load_cmd`; in-range values of keys that
/// are not work sizes also run by `run_cmd`.
fn cases_for(rows: &[Row], load_cmd: &'static str, run_cmd: &'static str) -> Vec<Case> {
    let mut cases = Vec::new();
    for row in rows {
        for (value, in_range) in values(row) {
            let work = WORK_KEYS.contains(&row.key.as_str()) && in_range;
            let cmd = match (in_range, work) {
                (true, false) => run_cmd,
                (true, true) if load_cmd == "plan" => "plan-shard",
                _ => load_cmd,
            };
            cases.push((cmd, row.key.clone(), value, in_range));
        }
    }
    cases
}

type Case = (&'static str, String, String, bool);

#[test]
fn every_run_scenario_key_holds_its_readme_range() {
    let rows = readme_rows(0);
    assert!(
        rows.len() >= 60,
        "the run table has {} ranged keys",
        rows.len()
    );
    check_all(cases_for(&rows, "topo", "run"));
}

#[test]
fn every_planner_key_holds_its_readme_range() {
    let rows = readme_rows(1);
    assert!(
        rows.len() >= 25,
        "the planner table has {} ranged keys",
        rows.len()
    );
    check_all(cases_for(&rows, "plan", "plan"));
}

/// The command before the flag, the flag, values in range, values outside.
type FlagCase<'a> = (Vec<&'a str>, &'a str, Vec<&'a str>, Vec<&'a str>);

/// The numeric flags, with the ranges their help texts give: each at its bounds and just
/// outside them, in a small command that the in-range value must finish.
#[test]
fn every_numeric_flag_holds_its_range() {
    let max_seed = i64::MAX.to_string();
    let above_seed = (i64::MAX as u64 + 1).to_string();
    // (the command before the flag, the flag, values in range, values outside).
    let quick_run = ["run", "scenarios/quickstart.toml", "--set", "job.steps=1"];
    let plan = [
        "plan",
        "scenarios/plan-daly-closed-form.toml",
        "--set",
        "plan.seeds=2",
    ];
    let swarm = [
        "swarm",
        "scenarios/swarm-checkpoint-restart.toml",
        "--seeds",
        "1..2",
    ];
    let collective = [
        "collective",
        "--algo",
        "ring",
        "--op",
        "all-reduce",
        "--elems",
        "64",
    ];
    let cases: Vec<FlagCase> = vec![
        (
            quick_run.to_vec(),
            "--seed",
            vec!["0", &max_seed],
            vec![&above_seed, "-1"],
        ),
        (
            plan.to_vec(),
            "--threads",
            vec!["1", "1024"],
            vec!["0", "1025"],
        ),
        (
            swarm.to_vec(),
            "--jobs",
            vec!["1", "1024"],
            vec!["0", "1025"],
        ),
        (
            collective.to_vec(),
            "--gpus",
            vec!["1", "16"],
            vec!["0", "1000001"],
        ),
    ];
    let mut problems = Vec::new();
    for (before, flag, inside, outside) in cases {
        let values = (inside.iter().map(|v| (*v, true))).chain(outside.iter().map(|v| (*v, false)));
        for (value, in_range) in values {
            let dir = Scratch::new();
            let mut args: Vec<String> = before.iter().map(|a| a.to_string()).collect();
            args.extend([flag.to_string(), value.to_string()]);
            let case = format!("faultline {}", args.join(" "));
            let root = root();
            let args: Vec<String> = args
                .into_iter()
                .map(|a| match a.starts_with("scenarios/") {
                    true => root.join(a).to_string_lossy().into_owned(),
                    false => a,
                })
                .collect();
            let output = match faultline(dir.path(), &args) {
                Ok(output) => output,
                Err(e) => {
                    problems.push(format!("{case}: {e}"));
                    continue;
                }
            };
            let stderr = String::from_utf8_lossy(&output.stderr);
            let code = output.status.code();
            // Clap names a value it cannot take for a flag ('-1') by the value alone.
            let refused = code == Some(2) && (stderr.contains(flag) || stderr.contains(value));
            if in_range && (refused || !matches!(code, Some(0 | 1))) {
                problems.push(format!("{case}: in range, yet exit {code:?}: {stderr}"));
            }
            if !in_range && !refused {
                problems.push(format!("{case}: out of range, yet exit {code:?}: {stderr}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
