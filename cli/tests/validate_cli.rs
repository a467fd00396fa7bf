//! `faultline validate` as CI runs it: the bundled anchors all pass, a deliberately wrong
//! planner input makes the anchor it moves fail (exit 1, named), a malformed anchor file is
//! bad input (exit 2, file, line and key), and `--json` has the documented fields.

use std::path::PathBuf;
use std::process::{Command, Output};

fn faultline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("faultline runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("faultline-validate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn verdicts(out: &Output) -> Vec<serde_json::Value> {
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .expect("a JSON list")
        .as_array()
        .expect("a list")
        .clone()
}

const INTERRUPTIONS: &str = "llama3-16k-54d-interruptions";

#[test]
fn the_bundled_suite_passes_every_anchor() {
    let out = faultline(&["validate"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(!text.contains("FAIL"), "{text}");
    for name in [
        INTERRUPTIONS,
        "kokolis-rsc1-131k-mttf",
        "daly-m6h-wall-time",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
}

#[test]
fn json_lists_every_anchor_with_its_source_and_the_documented_fields() {
    let bundled = verdicts(&faultline(&["validate", "--json"]));
    // The bundled suite is the directory's files, no more and no fewer.
    let from_dir = verdicts(&faultline(&["validate", "--json", "scenarios/anchors"]));
    let names = |v: &[serde_json::Value]| -> Vec<String> {
        v.iter()
            .map(|a| a["name"].as_str().unwrap().to_string())
            .collect()
    };
    let mut sorted = names(&bundled);
    sorted.sort();
    let mut dir_sorted = names(&from_dir);
    dir_sorted.sort();
    assert_eq!(
        sorted, dir_sorted,
        "BUNDLED in cmd_validate.rs and scenarios/anchors/ differ"
    );
    assert!(bundled.len() >= 10);
    for anchor in &bundled {
        for field in [
            "name",
            "source",
            "published",
            "measured",
            "tolerance",
            "pass",
        ] {
            assert!(anchor.get(field).is_some(), "{anchor}: no {field}");
        }
        assert!(anchor["published"].is_number() && anchor["measured"].is_number());
        assert!(anchor["tolerance"].as_f64().unwrap() >= 0.0);
        assert_eq!(anchor["pass"], serde_json::Value::Bool(true), "{anchor}");
        let source = anchor["source"].as_str().unwrap();
        assert!(source.len() > 20, "{anchor}: names no source");
    }
}

#[test]
fn a_wrong_rate_fails_the_anchor_it_moves() {
    // Llama 3's faulty-GPU rate doubled: about 190 interruptions too many.
    let out = faultline(&[
        "validate",
        "--only",
        INTERRUPTIONS,
        "--set",
        "faults.rates.gpu_failures_per_1000_node_days=3.436",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("FAIL"), "{}", stdout(&out));
    assert!(stderr(&out).contains(INTERRUPTIONS), "{}", stderr(&out));
}

#[test]
fn a_test_only_anchor_file_with_a_wrong_rate_fails() {
    // Kokolis's RSC-1 projection at 16,384 GPUs computed from the RSC-2 rate.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scenarios/anchors/kokolis-rsc1-16k.toml"
    ))
    .unwrap()
    .replace(
        "node_failures_per_1000_node_days = 6.50",
        "node_failures_per_1000_node_days = 2.34",
    );
    let path = temp("wrong-rate.toml", &text);
    let out = faultline(&["validate", "--json", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = verdicts(&out);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["name"], "kokolis-rsc1-16k-mttf");
    assert_eq!(v[0]["pass"], serde_json::Value::Bool(false));
    assert!(stderr(&out).contains("kokolis-rsc1-16k-mttf"));
}

#[test]
fn malformed_anchor_files_are_bad_input_naming_file_line_and_key() {
    let plan = "[cluster]\ngpus = 8\n[plan]\nhorizon = \"1d\"\nseeds = 2\n";
    let anchor = |body: &str| format!("{plan}\n[[anchor]]\nname = \"x\"\nfigure = \"f\"\n{body}");
    let cases = [
        (
            "no-source.toml",
            anchor("measure = \"ettr\"\npublished = 1\ntolerance = 0\nsource = \"\"\n"),
            ":13:10: anchor.0.source",
        ),
        (
            "unknown-key.toml",
            anchor("measure = \"ettr\"\npublished = 1\ntolerance = 0\nsource = \"s\"\npage = 3\n"),
            "page",
        ),
        (
            "bad-measure.toml",
            anchor("measure = \"goodput\"\npublished = 1\ntolerance = 0\nsource = \"s\"\n"),
            "measure",
        ),
        (
            "negative-tolerance.toml",
            anchor("measure = \"ettr\"\npublished = 1\ntolerance = -1\nsource = \"s\"\n"),
            "anchor.0.tolerance",
        ),
        ("no-anchor.toml", plan.to_string(), "[[anchor]]"),
    ];
    for (name, text, expected) in cases {
        let path = temp(name, &text);
        let out = faultline(&["validate", path.to_str().unwrap()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(name), "{name}: no file in {err}");
        assert!(err.contains(expected), "{name}: no {expected:?} in {err}");
    }
    let empty =
        std::env::temp_dir().join(format!("faultline-validate-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = faultline(&["validate", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = faultline(&["validate", "--only", "no-such-anchor"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(INTERRUPTIONS), "{}", stderr(&out));
}

#[test]
fn every_anchor_file_is_a_planner_scenario_that_plan_runs() {
    let out = faultline(&[
        "plan",
        "scenarios/anchors/llama3-16k-54d.toml",
        "--seeds",
        "2",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn the_suite_gives_the_same_numbers_on_one_thread_as_on_many() {
    let one = faultline(&["validate", "--json", "--threads", "1"]);
    let many = faultline(&["validate", "--json", "--threads", "3"]);
    assert_eq!(one.status.code(), Some(0));
    assert_eq!(one.stdout, many.stdout);
}
