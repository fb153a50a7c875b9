//! The report's charts, drawn with `plotters` (SVG backend): latency against offered load, HDR
//! latency percentile distributions, throughput bars beside their limits, replay scaling by shard
//! count, and rates over time.
//!
//! A plotting library rather than hand-written SVG: real axes with ticks, log scales, legends and
//! whiskers for the spreads, without maintaining a chart renderer. SVG only: plotters' bitmap
//! backend needs a font rasterizer, which means either system font libraries (fontconfig,
//! freetype, installed fonts) or a font file shipped in this repository; SVG text is rendered by
//! the viewer, so the charts build and draw on a bare machine.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::report::{Figure, LatencyCurve, Outcome, Series};
use crate::tail::LoadPoint;

const SIZE: (u32, u32) = (1000, 520);
const FONT: &str = "sans-serif";

/// The "tab10" palette: distinct, and readable for the common colour-vision deficiencies.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Renders into an SVG string with `draw`, then writes it to `path`.
fn svg_file(
    path: &Path,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        draw(&root)?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

/// plotters' errors borrow nothing but are generic over the backend; flatten them to text.
fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

/// Every chart the outcomes have data for, written into `out`; (title, file name) of each.
pub fn all(out: &Path, outcomes: &[Outcome]) -> anyhow::Result<Vec<(String, String)>> {
    let mut plots = Vec::new();
    let mut add = |title: &str, file: &str| plots.push((title.to_string(), file.to_string()));
    let load: Vec<LoadPoint> = outcomes.iter().flat_map(|o| o.load_curve.clone()).collect();
    if !load.is_empty() {
        latency_against_load(&out.join("latency-vs-load.svg"), &load)?;
        add("Append-to-tail latency against offered load", "latency-vs-load.svg");
    }
    let curves: Vec<LatencyCurve> = outcomes
        .iter()
        .flat_map(|o| {
            o.latencies
                .iter()
                .map(|c| LatencyCurve { name: format!("{}: {}", o.scenario, c.name), ..c.clone() })
        })
        .collect();
    if !curves.is_empty() {
        latency_distribution(&out.join("latency.svg"), &curves)?;
        add("Latency by percentile", "latency.svg");
    }
    let figures: Vec<Figure> = outcomes
        .iter()
        .flat_map(|o| o.figures.iter().filter(|f| f.limit.is_some() && f.unit == "MB/s").cloned())
        .collect();
    if !figures.is_empty() {
        throughput_bars(&out.join("throughput.svg"), &figures)?;
        add("Throughput beside its limit", "throughput.svg");
    }
    for o in outcomes {
        if !o.scaling.is_empty() {
            let file = format!("{}-scaling.svg", o.scenario);
            scaling(
                &out.join(&file),
                &format!("{} records/s by shard count", o.scenario),
                &o.scaling,
            )?;
            add(&format!("{} scaling", o.scenario), &file);
        }
        if !o.series.is_empty() {
            let file = format!("{}-over-time.svg", o.scenario);
            lines(&out.join(&file), &format!("{} over time", o.scenario), &o.series)?;
            add(&format!("{} over time", o.scenario), &file);
        }
    }
    Ok(plots)
}

/// p50, p99 and p99.9 (log scale) against offered load in % of the measured maximum, with the
/// tail targets and the 100% line: where the curve bends up is the knee.
pub fn latency_against_load(path: &Path, points: &[LoadPoint]) -> anyhow::Result<()> {
    let lo = points.iter().map(|p| p.p50_us).fold(f64::MAX, f64::min).clamp(1.0, 1e9) / 2.0;
    // Head room above the highest point for the legend.
    let hi = points.iter().map(|p| p.p999_us.max(p.p99_us)).fold(5_000.0, f64::max) * 8.0;
    let x_max = points.iter().map(|p| p.offered_fraction * 100.0).fold(100.0, f64::max) + 10.0;
    svg_file(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("append -> tail latency against offered load (open loop)", (FONT, 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..x_max, (lo..hi).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("offered load, % of the measured maximum")
            .x_label_formatter(&|x| format!("{x:.0}%"))
            .y_desc("latency, µs (log)")
            .y_label_formatter(&|v| format_us(*v))
            .draw()
            .map_err(err)?;
        type Percentile = fn(&LoadPoint) -> f64;
        let series: [(&str, Percentile); 3] =
            [("p50", |p| p.p50_us), ("p99", |p| p.p99_us), ("p99.9", |p| p.p999_us)];
        for (i, (name, value)) in series.iter().enumerate() {
            let c = color(i);
            let xy: Vec<(f64, f64)> =
                points.iter().map(|p| (p.offered_fraction * 100.0, value(p).max(lo))).collect();
            chart
                .draw_series(LineSeries::new(xy.clone(), c.stroke_width(2)))
                .map_err(err)?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart.draw_series(xy.iter().map(|&p| Circle::new(p, 4, c.filled()))).map_err(err)?;
        }
        // Each target dashed in its percentile's colour.
        for (i, target, name) in
            [(1, 1_000.0, "p99 target 1 ms"), (2, 5_000.0, "p99.9 target 5 ms")]
        {
            let c = color(i);
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(0.0, target), (x_max, target)],
                    6,
                    4,
                    c.mix(0.7).stroke_width(1),
                ))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.mix(0.7)));
        }
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(100.0, lo), (100.0, hi)],
                BLACK.mix(0.3).stroke_width(1),
            )))
            .map_err(err)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperMiddle)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)
    })
}

fn format_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{} s", us / 1e6)
    } else if us >= 1_000.0 {
        format!("{} ms", us / 1e3)
    } else {
        format!("{us} µs")
    }
}

/// The HDR picture: latency (log scale) by percentile, with the percentile axis stretched toward
/// the tail (0%, 90%, 99%, 99.9%, 99.99%, 99.999% equally spaced).
pub fn latency_distribution(path: &Path, curves: &[LatencyCurve]) -> anyhow::Result<()> {
    let nines = |percentile: f64| -(1.0 - percentile / 100.0).max(1e-5).log10();
    let lo = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .fold(f64::MAX, f64::min)
        .clamp(1.0, 1e9)
        / 1.5;
    let hi = curves.iter().map(|c| c.max_us).fold(10.0, f64::max) * 1.5;
    svg_file(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("latency by percentile", (FONT, 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..5.0, (lo..hi).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(6)
            .x_desc("percentile")
            .y_desc("latency, µs (log)")
            .x_label_formatter(&|t| {
                let percent = 100.0 * (1.0 - 10f64.powf(-t));
                format!("{}%", (percent * 1000.0).round() / 1000.0)
            })
            .y_label_formatter(&|v| format_us(*v))
            .draw()
            .map_err(err)?;
        for (i, curve) in curves.iter().enumerate() {
            let c = color(i);
            let xy: Vec<(f64, f64)> =
                curve.points.iter().map(|(p, us)| (nines(*p), us.max(lo))).collect();
            chart
                .draw_series(LineSeries::new(xy, c.stroke_width(2)))
                .map_err(err)?
                .label(format!("{} ({} samples)", curve.name, curve.samples))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)
    })
}

/// Horizontal bars: each engine figure's median with a whisker from its min to its max, and its
/// limit as a black tick (median) over a grey band (min to max of the paired limit runs).
pub fn throughput_bars(path: &Path, figures: &[Figure]) -> anyhow::Result<()> {
    let n = figures.len();
    let x_max =
        figures.iter().map(|f| f.value_max.max(f.limit_band().1)).fold(1.0, f64::max) * 1.15;
    let labels: Vec<String> =
        figures.iter().map(|f| format!("{}: {}", f.scenario, f.name)).collect();
    let height = (120 + 60 * n as u32).max(300);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (SIZE.0, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("throughput (median, min-max) beside its limit (paired raw runs)", (FONT, 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(330)
            // A segmented range a..b has b - a + 1 segments.
            .build_cartesian_2d(0f64..x_max, (0..n as i32 - 1).into_segmented())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("MB/s")
            .y_labels(n + 1)
            .y_label_formatter(&|y| match y {
                SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .draw()
            .map_err(err)?;
        let engine = color(0);
        for (i, f) in figures.iter().enumerate() {
            let (lower, center, upper) = (
                SegmentValue::Exact(i as i32),
                SegmentValue::CenterOf(i as i32),
                SegmentValue::Exact(i as i32 + 1),
            );
            if let Some(limit) = f.limit {
                let band = f.limit_band();
                let mut rect = Rectangle::new(
                    [(band.0, lower.clone()), (band.1, upper.clone())],
                    BLACK.mix(0.12).filled(),
                );
                rect.set_margin(4, 4, 0, 0);
                chart.draw_series(std::iter::once(rect)).map_err(err)?;
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(limit, lower.clone()), (limit, upper.clone())],
                        BLACK.stroke_width(3),
                    )))
                    .map_err(err)?;
            }
            let mut bar =
                Rectangle::new([(0.0, lower), (f.value, upper)], engine.mix(0.8).filled());
            bar.set_margin(14, 14, 0, 0);
            chart.draw_series(std::iter::once(bar)).map_err(err)?;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(f.value_min, center.clone()), (f.value_max, center.clone())],
                    BLACK.stroke_width(2),
                )))
                .map_err(err)?;
            let ratio = f.ratio_median.map_or(String::new(), |r| format!("  ratio {r:.2}"));
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{:.0}{ratio}", f.value),
                    (f.value_max.max(f.limit.unwrap_or(0.0)) + x_max * 0.01, center),
                    (FONT, 13),
                )))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

/// Records/s against shard count, one line per series (record size).
pub fn scaling(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    let x_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1.0, f64::max);
    let y_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(1e-9, f64::max);
    let x_label = series.first().map_or("shards", |s| s.x_label.as_str()).to_string();
    let y_label = series.first().map_or("", |s| s.y_label.as_str()).to_string();
    svg_file(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(0.5f64..x_max + 0.5, 0f64..y_max * 1.2)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            // Shard counts are whole numbers; label only those.
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-6 {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(err)?;
        for (i, s) in series.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(LineSeries::new(s.points.clone(), c.stroke_width(2)))
                .map_err(err)?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 5, c.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)
    })
}

/// Lines of (x, y) points, on a linear scale from zero.
pub fn lines(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    let x_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1e-9, f64::max);
    let y_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(1e-9, f64::max);
    let x_label = series.first().map_or("", |s| s.x_label.as_str()).to_string();
    let y_label = series.first().map_or("", |s| s.y_label.as_str()).to_string();
    svg_file(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max * 1.15)
            .map_err(err)?;
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(err)?;
        for (i, s) in series.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(LineSeries::new(s.points.clone(), c.stroke_width(2)))
                .map_err(err)?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Pairs;

    fn load_point(fraction: f64, p50: f64) -> LoadPoint {
        LoadPoint {
            offered_fraction: fraction,
            offered_records_per_s: fraction * 1e5,
            sent_records_per_s: fraction * 1e5,
            p50_us: p50,
            p99_us: p50 * 3.0,
            p999_us: p50 * 10.0,
            max_us: p50 * 20.0,
            samples: 1000,
            measured_seconds: 1.0,
            segment_rolls: 1,
            view_checkpoints: 2,
            shard_ack_p99_us: 100.0,
            shard_tail_p99_us: 120.0,
        }
    }

    #[test]
    fn every_chart_draws_an_svg() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut h = crate::new_histogram();
        for us in 1..5000u64 {
            h.saturating_record(us * 1_000);
        }
        let mut pairs = Pairs::default();
        pairs.push(2000.0, 1700.0);
        pairs.push(1800.0, 1500.0);
        let mut outcome = Outcome::new("x", serde_json::Value::Null);
        outcome.figures.push(Figure::paired(
            "x",
            "append",
            "MB/s",
            "raw write",
            &pairs.summary(),
            0.8,
        ));
        outcome.latencies.push(LatencyCurve::of("ack", &h));
        outcome.load_curve =
            [0.1, 0.5, 1.0, 1.2].iter().map(|f| load_point(*f, 100.0 * f)).collect();
        let series = Series {
            name: "1024 B".into(),
            x_label: "shards".into(),
            y_label: "M records/s".into(),
            points: vec![(1.0, 1.6)],
        };
        outcome.scaling.push(series.clone());
        outcome.series.push(Series { points: vec![(0.1, 1.0), (0.2, 1.5)], ..series });
        let plots = all(dir.path(), &[outcome])?;
        assert_eq!(plots.len(), 5, "{plots:?}");
        for (_, file) in plots {
            let svg = std::fs::read_to_string(dir.path().join(&file))?;
            assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{file}");
            assert!(svg.contains("<text"), "{file} has no labels");
        }
        Ok(())
    }
}
