//! Small hand-written SVG charts for the report: an HDR percentile distribution, bars, and lines.
//!
//! Hand-written rather than a plotting crate: three chart shapes, no fonts to ship, and the output
//! is plain text that diffs and renders anywhere.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 330.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] =
    ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn header(svg: &mut String, title: &str) {
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
}

fn plot_width() -> f64 {
    WIDTH - LEFT - RIGHT
}
fn plot_height() -> f64 {
    HEIGHT - TOP - BOTTOM
}

fn axes(svg: &mut String, x_label: &str, y_label: &str) {
    let (x0, y0, x1) = (LEFT, HEIGHT - BOTTOM, WIDTH - RIGHT);
    let _ = writeln!(svg, r#"<line x1="{x0}" y1="{TOP}" x2="{x0}" y2="{y0}" stroke="black"/>"#);
    let _ = writeln!(svg, r#"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        HEIGHT - 15.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>"#,
        (TOP + y0) / 2.0,
        (TOP + y0) / 2.0,
        escape(y_label)
    );
}

fn legend(svg: &mut String, names: &[String]) {
    for (i, name) in names.iter().enumerate() {
        let y = TOP + 10.0 + i as f64 * 18.0;
        let x = WIDTH - RIGHT + 12.0;
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{color}"/>"#,
            y - 10.0
        );
        let _ = writeln!(svg, r#"<text x="{}" y="{y}">{}</text>"#, x + 18.0, escape(name));
    }
}

/// The usual HDR picture: latency (log scale) against percentile, with the x axis stretched
/// toward the tail (0%, 90%, 99%, 99.9%, 99.99% equally spaced).
pub fn latency_distribution(series: &[(String, &Histogram<u64>)]) -> String {
    let mut svg = String::new();
    header(&mut svg, "Latency by percentile");
    axes(&mut svg, "percentile", "latency (µs, log scale)");
    let tail_max = 5.0; // Up to 99.999%.
    let x_of = |q: f64| LEFT + (-(1.0 - q).max(1e-5).log10() / tail_max) * plot_width();
    let mut lo = f64::MAX;
    let mut hi: f64 = 1.0;
    for (_, h) in series {
        if h.is_empty() {
            continue;
        }
        lo = lo.min((h.min().max(1) as f64 / 1e3).max(1.0));
        hi = hi.max(h.max() as f64 / 1e3);
    }
    if lo == f64::MAX {
        lo = 1.0;
    }
    let (log_lo, log_hi) = (lo.log10().floor(), hi.log10().ceil().max(lo.log10().floor() + 1.0));
    let y_of = |us: f64| {
        HEIGHT - BOTTOM - (us.max(lo).log10() - log_lo) / (log_hi - log_lo) * plot_height()
    };
    for decade in (log_lo as i32)..=(log_hi as i32) {
        let us = 10f64.powi(decade);
        let y = y_of(us);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##,
            WIDTH - RIGHT
        );
        let label = if us >= 1000.0 { format!("{} ms", us / 1000.0) } else { format!("{us} µs") };
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{label}</text>"#,
            LEFT - 6.0,
            y + 4.0
        );
    }
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"].iter().enumerate() {
        let x = LEFT + i as f64 / tail_max * plot_width();
        let _ = writeln!(
            svg,
            r#"<text x="{x}" y="{}" text-anchor="middle">{label}</text>"#,
            HEIGHT - BOTTOM + 16.0
        );
    }
    let mut names = Vec::new();
    for (i, (name, h)) in series.iter().enumerate() {
        if h.is_empty() {
            continue;
        }
        let mut points = String::new();
        let steps = 200;
        for step in 0..=steps {
            // Evenly spaced on the stretched axis.
            let t = step as f64 / steps as f64 * tail_max;
            let q = 1.0 - 10f64.powf(-t);
            let us = h.value_at_quantile(q.min(1.0)) as f64 / 1e3;
            let _ = write!(points, "{:.1},{:.1} ", x_of(q), y_of(us));
        }
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{points}"/>"#,
            COLORS[i % COLORS.len()]
        );
        names.push(name.clone());
    }
    legend(&mut svg, &names);
    svg.push_str("</svg>\n");
    svg
}

/// Horizontal list of bars with their values printed.
pub fn bars(title: &str, unit: &str, bars: &[(String, f64)]) -> String {
    let mut svg = String::new();
    header(&mut svg, title);
    axes(&mut svg, "", unit);
    let max = bars.iter().map(|(_, v)| *v).fold(1.0, f64::max) * 1.1;
    let slot = plot_width() / bars.len().max(1) as f64;
    for (i, (_, value)) in bars.iter().enumerate() {
        let h = value / max * plot_height();
        let x = LEFT + i as f64 * slot + slot * 0.15;
        let y = HEIGHT - BOTTOM - h;
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{color}"/>"#,
            slot * 0.7
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{value:.0}</text>"#,
            x + slot * 0.35,
            y - 4.0
        );
    }
    let names: Vec<String> = bars.iter().map(|(l, _)| l.clone()).collect();
    legend(&mut svg, &names);
    svg.push_str("</svg>\n");
    svg
}

/// Lines of (x, y) points.
pub fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let mut svg = String::new();
    header(&mut svg, title);
    axes(&mut svg, x_label, y_label);
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let (x_max, y_max) =
        all.fold((1e-9, 1e-9), |(xm, ym), (x, y)| (f64::max(xm, *x), f64::max(ym, *y)));
    for (i, (_, points)) in series.iter().enumerate() {
        let mut text = String::new();
        for (x, y) in points {
            let _ = write!(
                text,
                "{:.1},{:.1} ",
                LEFT + x / x_max * plot_width(),
                HEIGHT - BOTTOM - y / (y_max * 1.1) * plot_height()
            );
        }
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{text}"/>"#,
            COLORS[i % COLORS.len()]
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="end">{x_max:.1}</text>"#,
        WIDTH - RIGHT,
        HEIGHT - BOTTOM + 16.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="end">{:.0}</text>"#,
        LEFT - 6.0,
        TOP + 10.0,
        y_max * 1.1
    );
    let names: Vec<String> = series.iter().map(|(n, _)| n.clone()).collect();
    legend(&mut svg, &names);
    svg.push_str("</svg>\n");
    svg
}
