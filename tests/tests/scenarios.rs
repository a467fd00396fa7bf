//! Every scenario in `scenarios/` small enough for CI, as a snapshot test: a change to the
//! trainer logic, the fabric or the planner that alters a report shows as a readable diff.
//! Run scenarios snapshot their `run --json` report (less `wall_ms`); planner scenarios their
//! `plan --json` report at 20 seeds. A scenario with `[scenario] ci = false` is skipped here and
//! said to be. CI fails on any mismatch (insta never writes snapshots when `CI` is set).

use std::path::Path;

use faultline_sim::plan;
use faultline_sim::run::run_scenario;
use faultline_sim::scenario;

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
    let report = run_scenario(&scenario).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut value = serde_json::to_value(report).unwrap();
    value.as_object_mut().unwrap().remove("wall_ms");
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
