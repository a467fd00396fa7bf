//! Every scenario in `scenarios/` small enough for CI, as a snapshot test: a change to the
//! trainer logic, the fabric or the planner that alters a report shows as a readable diff.
//! Run scenarios snapshot their `run --json` report (less `wall_ms`) and a bounded slice of their
//! `events`-level trace (the first and last records, and the controller's records); planner
//! scenarios their
//! `plan --json` report at 20 seeds. A scenario with `[scenario] ci = false` is skipped here and
//! said to be. CI fails on any mismatch (insta never writes snapshots when `CI` is set).

use std::path::Path;

use faultline_sim::plan;
use faultline_sim::replay;
use faultline_sim::scenario;
use faultline_sim::trace::{self, TraceHeader, TraceLevel};

/// Records at each end of the trace, and controller records, that a snapshot shows.
const TRACE_ENDS: usize = 3;
const TRACE_CONTROL_RECORDS: usize = 16;

/// A bounded, stable slice of a trace's record lines (header and footer left out).
fn trace_slice(lines: &[String]) -> serde_json::Value {
    let records = &lines[1..lines.len() - 1];
    let control: Vec<&String> = records
        .iter()
        .filter(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let kind = record["kind"].as_str().unwrap();
            trace::CONTROL_KINDS.contains(&kind)
        })
        .collect();
    serde_json::json!({
        "records": records.len(),
        "first": &records[..TRACE_ENDS.min(records.len())],
        "last": &records[records.len().saturating_sub(TRACE_ENDS)..],
        "control_records": control.len(),
        "control": &control[..TRACE_CONTROL_RECORDS.min(control.len())],
    })
}

fn is_planner(path: &Path) -> bool {
    let text = std::fs::read_to_string(path).unwrap();
    let table: toml::Table = text.parse().unwrap();
    table.contains_key("plan")
}

fn snapshot_of(path: &Path) -> Option<serde_json::Value> {
    if is_planner(path) {
        let costs = plan::config::Costs::default();
        let sets = vec!["plan.seeds=20".to_string()];
        let points = plan::load_points(path, &sets, &[], &costs).unwrap();
        let shard = plan::run_shard(&points, 0, 1, 1, &|| {});
        let report = plan::report::summarise(&shard);
        let mut value = serde_json::to_value(report).unwrap();
        if let Some(object) = value.as_object_mut() {
            object.remove("wall_ms");
        }
        return Some(value);
    }
    let scenario = scenario::load(path, &[]).unwrap_or_else(|e| panic!("{e}"));
    if !scenario.ci {
        eprintln!(
            "skipped {}: too large for CI (scenario.ci = false)",
            path.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(path).unwrap();
    let name = format!("scenarios/{}", path.file_name().unwrap().to_string_lossy());
    let header =
        TraceHeader::for_run(&scenario, &name, &text, &[], false, TraceLevel::Events).unwrap();
    let (report, lines) = replay::run_traced_in_memory(&scenario, &header)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut value = serde_json::to_value(report).unwrap();
    value.as_object_mut().unwrap().remove("wall_ms");
    value["trace"] = trace_slice(&lines);
    Some(value)
}

#[test]
fn every_ci_sized_scenario_matches_its_snapshot() {
    insta::glob!("../../scenarios", "*.toml", |path| {
        if let Some(value) = snapshot_of(path) {
            insta::assert_json_snapshot!(value);
        }
    });
}

/// The rare-path marks agree with the books the report keeps by other means: a mark where
/// the run counted the event, none where it did not, and none at all in a fault-free run.
#[test]
fn rare_path_marks_agree_with_the_reports_counters() {
    use faultline_sim::books::RarePath;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut reached = std::collections::BTreeSet::new();
    for name in [
        "quickstart",
        "node-crash-mid-checkpoint",
        "link-flap-during-allreduce",
        "gpu-failure-hot-spare",
    ] {
        let s = scenario::load(&root.join(format!("{name}.toml")), &[]).unwrap();
        let r = faultline_sim::run::run_scenario(&s).unwrap();
        let marked = |path| r.rare_paths.get(&path).copied().unwrap_or(0);
        assert_eq!(
            marked(RarePath::CheckpointLostInFlight),
            r.checkpoints_lost_in_flight,
            "{name}"
        );
        assert_eq!(
            marked(RarePath::RestoreFallback),
            r.restore_fallbacks,
            "{name}"
        );
        let flaps = r.link_flaps.as_ref();
        let rerouted = flaps.map_or(0, |f| f.transfers_rerouted);
        assert_eq!(marked(RarePath::TransferRerouted), rerouted, "{name}");
        assert_eq!(
            marked(RarePath::TransferLost),
            flaps.map_or(0, |f| f.transfers_lost),
            "{name}"
        );
        let fault_free = faultline_sim::run::run_scenario(&s.without_faults()).unwrap();
        assert!(
            fault_free.rare_paths.is_empty(),
            "{name}: {:?}",
            fault_free.rare_paths
        );
        reached.extend(r.rare_paths.keys().copied());
    }
    // The scenarios above take at least these paths, so the marks are not all dead.
    assert!(
        reached.contains(&RarePath::CheckpointLostInFlight),
        "{reached:?}"
    );
    assert!(reached.contains(&RarePath::TransferRerouted), "{reached:?}");
}
