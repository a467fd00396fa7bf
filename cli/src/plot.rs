//! The sweep as an SVG: ETTR against the checkpoint interval, one line per combination of the
//! other swept keys (e.g. per recovery policy), with 95% confidence bars and Daly's interval
//! marked. Deterministic text: the same report gives the same bytes.

use std::collections::BTreeMap;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use faultline_sim::plan::report::{PlanReport, PointSummary};

const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
];

/// A series' name: the settings of its points other than the checkpoint interval.
fn series_name(p: &PointSummary) -> String {
    let parts: Vec<String> = p
        .settings
        .iter()
        .filter(|(k, _)| k.as_str() != "checkpoint.interval")
        .map(|(k, v)| format!("{}={v}", k.rsplit('.').next().unwrap_or(k)))
        .collect();
    if parts.is_empty() {
        format!("policy={}", p.policy)
    } else {
        parts.join(", ")
    }
}

/// Renders the report's sweep as SVG text: ETTR against the checkpoint interval, one line per
/// series of the sweep with its 95% intervals, and Daly's interval beside them.
pub fn render_svg(report: &PlanReport) -> Result<String, String> {
    let series = series_of(report);
    let (x_max, y_lo, y_hi) = axes(report);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 600)).into_drawing_area();
        let e = |e: DrawingAreaErrorKind<_>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let title = format!(
            "{}: ETTR over {:.0} days on {} GPUs ({} seeds)",
            report.scenario,
            report.horizon_s / 86_400.0,
            report.gpus,
            report.seeds
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, y_lo..y_hi)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("checkpoint interval (min)")
            .y_desc("ETTR (useful time / wall time)")
            .label_style(("sans-serif", 15))
            .light_line_style(RGBColor(240, 240, 240))
            .axis_desc_style(("sans-serif", 17))
            .draw()
            .map_err(e)?;
        let daly = minutes(report.daly_interval_s);
        if daly > 0.0 {
            let grey = RGBColor(120, 120, 120);
            chart
                .draw_series(LineSeries::new(
                    vec![(daly, y_lo), (daly, y_hi)],
                    grey.stroke_width(1),
                ))
                .map_err(e)?
                .label(format!("Daly interval, best point: {daly:.1} min"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
        }
        draw_sweep(&mut chart, &series)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    Ok(svg)
}

fn minutes(s: f64) -> f64 {
    s / 60.0
}

/// The sweep's points by series, each in the order of its checkpoint interval.
fn series_of(report: &PlanReport) -> BTreeMap<String, Vec<&PointSummary>> {
    let mut series: BTreeMap<String, Vec<&PointSummary>> = BTreeMap::new();
    for p in &report.sweep {
        series.entry(series_name(p)).or_default().push(p);
    }
    for points in series.values_mut() {
        points.sort_by(|a, b| a.checkpoint_interval_s.total_cmp(&b.checkpoint_interval_s));
    }
    series
}

/// The x axis's end (minutes) and the y axis's range: every point, interval and Daly's
/// interval in view, with a margin.
fn axes(report: &PlanReport) -> (f64, f64, f64) {
    let x_max = (report.sweep.iter())
        .map(|p| minutes(p.checkpoint_interval_s))
        .fold(0.0, f64::max)
        .max(minutes(report.daly_interval_s))
        * 1.08
        + 1.0;
    let y_min = report
        .sweep
        .iter()
        .map(|p| p.ettr_ci95[0])
        .fold(1.0, f64::min);
    let y_max = report
        .sweep
        .iter()
        .map(|p| p.ettr_ci95[1])
        .fold(0.0, f64::max);
    let pad = ((y_max - y_min) * 0.1).max(0.005);
    (x_max, (y_min - pad).max(0.0), (y_max + pad).min(1.0))
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Each series: its line, its points, and each point's 95% interval.
fn draw_sweep(
    chart: &mut Chart,
    series: &BTreeMap<String, Vec<&PointSummary>>,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    for (idx, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[idx % COLOURS.len()];
        let xy: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (minutes(p.checkpoint_interval_s), p.ettr_mean))
            .collect();
        chart
            .draw_series(LineSeries::new(xy.clone(), colour.stroke_width(3)))
            .map_err(e)?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
            });
        chart
            .draw_series(
                xy.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, colour.filled())),
            )
            .map_err(e)?;
        chart
            .draw_series(points.iter().map(|p| {
                let x = minutes(p.checkpoint_interval_s);
                PathElement::new(
                    vec![(x, p.ettr_ci95[0]), (x, p.ettr_ci95[1])],
                    colour.stroke_width(2),
                )
            }))
            .map_err(e)?;
    }
    Ok(())
}
