//! What a scenario hands to the report (`Outcome`, `Figure`), the Markdown report, and `compare`.
//!
//! An `Outcome` crosses a process boundary (each scenario runs in a child process of `kappa-bench
//! run`), so it is plain serde data: figures with their spreads, latency curves already reduced to
//! percentile points, the tail's latency-against-load curve, and the limits' noise.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::stats::{PairedRatio, Spread, Verdict};

/// One headline number: how it was obtained, its spread, and (ratio figures) the limit it is
/// divided by, pair by pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub scenario: String,
    pub name: String,
    /// The median when `runs` > 1.
    pub value: f64,
    pub unit: String,
    /// How `value` was obtained: "median of 5 pairs", "median of 5 runs", "one run", ...
    #[serde(default)]
    pub statistic: String,
    #[serde(default)]
    pub runs: usize,
    #[serde(default)]
    pub value_min: f64,
    #[serde(default)]
    pub value_max: f64,
    /// What the value is divided by, measured in the same run (the median of the paired runs).
    pub limit_name: Option<String>,
    pub limit: Option<f64>,
    #[serde(default)]
    pub limit_min: Option<f64>,
    #[serde(default)]
    pub limit_max: Option<f64>,
    /// Ratio figures: how many (limit, engine) pairs, and the median, min and max of the per-pair
    /// ratios.
    #[serde(default)]
    pub pairs: Option<usize>,
    #[serde(default)]
    pub ratio_median: Option<f64>,
    #[serde(default)]
    pub ratio_min: Option<f64>,
    #[serde(default)]
    pub ratio_max: Option<f64>,
    /// "ratio >= 0.8" or "< 1000 us": the target, when there is one.
    pub target: Option<String>,
    #[serde(default)]
    pub verdict: Option<Verdict>,
}

impl Figure {
    /// A value measured once.
    pub fn one_run(scenario: &str, name: &str, value: f64, unit: &str) -> Self {
        Figure {
            scenario: scenario.into(),
            name: name.into(),
            value,
            unit: unit.into(),
            statistic: "one run".into(),
            runs: 1,
            value_min: value,
            value_max: value,
            limit_name: None,
            limit: None,
            limit_min: None,
            limit_max: None,
            pairs: None,
            ratio_median: None,
            ratio_min: None,
            ratio_max: None,
            target: None,
            verdict: None,
        }
    }

    /// The median of repeated runs, with their min and max.
    pub fn median(scenario: &str, name: &str, spread: &Spread, unit: &str) -> Self {
        Figure {
            statistic: if spread.runs == 1 {
                "one run".into()
            } else {
                format!("median of {} runs", spread.runs)
            },
            runs: spread.runs,
            value_min: spread.min,
            value_max: spread.max,
            ..Figure::one_run(scenario, name, spread.median, unit)
        }
    }

    /// An engine figure divided, pair by pair, by the limit run just before it; the verdict
    /// compares the spread of the ratios with `min_ratio`.
    pub fn paired(
        scenario: &str,
        name: &str,
        unit: &str,
        limit_name: &str,
        paired: &PairedRatio,
        min_ratio: f64,
    ) -> Self {
        Figure {
            statistic: if paired.pairs == 1 {
                "one pair".into()
            } else {
                format!("median of {} pairs", paired.pairs)
            },
            limit_name: Some(limit_name.into()),
            limit: Some(paired.limit.median),
            limit_min: Some(paired.limit.min),
            limit_max: Some(paired.limit.max),
            pairs: Some(paired.pairs),
            ratio_median: Some(paired.ratio_median),
            ratio_min: Some(paired.ratio_min),
            ratio_max: Some(paired.ratio_max),
            target: Some(format!("ratio >= {min_ratio}")),
            verdict: Some(Verdict::at_least(paired.ratio_min, paired.ratio_max, min_ratio)),
            ..Figure::median(scenario, name, &paired.engine, unit)
        }
    }

    /// The min and max of the limit's paired runs (the limit itself when it has no spread).
    pub fn limit_band(&self) -> (f64, f64) {
        let limit = self.limit.unwrap_or(0.0);
        (self.limit_min.unwrap_or(limit), self.limit_max.unwrap_or(limit))
    }

    /// Describes how a one-run value was obtained (a percentile of N samples, say).
    pub fn statistic(mut self, statistic: impl Into<String>) -> Self {
        self.statistic = statistic.into();
        self
    }

    /// No target and no verdict: a figure reported beside a target figure (another timing of the
    /// same runs, say).
    pub fn no_target(mut self) -> Self {
        self.target = None;
        self.verdict = None;
        self
    }

    /// A target of the form "value >= `min`", judged on the value's spread.
    pub fn at_least(mut self, min: f64) -> Self {
        self.target = Some(format!(">= {} {}", number(min), self.unit));
        self.verdict = Some(Verdict::at_least(self.value_min, self.value_max, min));
        self
    }

    /// A target of the form "value < `max`" (latencies), judged on the value's spread.
    pub fn less_than(mut self, max: f64) -> Self {
        self.target = Some(format!("< {} {}", number(max), self.unit));
        self.verdict = Some(Verdict::less_than(self.value_min, self.value_max, max));
        self
    }
}

/// A latency distribution reduced to (percentile, µs) points for plotting: evenly spaced on the
/// "nines" axis from 0% to 99.999%, then the maximum.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyCurve {
    pub name: String,
    pub samples: u64,
    pub points: Vec<(f64, f64)>,
    pub max_us: f64,
}

impl LatencyCurve {
    pub fn of(name: impl Into<String>, h: &Histogram<u64>) -> Self {
        let points = (0..=50)
            .map(|step| {
                let nines = f64::from(step) / 10.0;
                let q = 1.0 - 10f64.powf(-nines);
                (q * 100.0, h.value_at_quantile(q.min(1.0)) as f64 / 1e3)
            })
            .collect();
        LatencyCurve { name: name.into(), samples: h.len(), points, max_us: h.max() as f64 / 1e3 }
    }
}

/// A line of (x, y) points with its axis names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    pub x_label: String,
    pub y_label: String,
    pub points: Vec<(f64, f64)>,
}

/// Run-to-run noise of a scenario's raw limits: the coefficient of variation over its repeats.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Noise {
    pub raw_write_cv: Option<f64>,
    pub raw_write_runs: usize,
    pub raw_read_cv: Option<f64>,
    pub raw_read_runs: usize,
}

impl Noise {
    pub fn of(writes: &[f64], reads: &[f64]) -> Self {
        let cv = |v: &[f64]| (v.len() >= 2).then(|| crate::stats::coefficient_of_variation(v));
        Noise {
            raw_write_cv: cv(writes),
            raw_write_runs: writes.len(),
            raw_read_cv: cv(reads),
            raw_read_runs: reads.len(),
        }
    }
}

/// What a scenario hands to the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub scenario: String,
    /// The scenario's full report (every parameter and configuration).
    pub json: serde_json::Value,
    pub figures: Vec<Figure>,
    /// Latency distributions to draw by percentile.
    #[serde(default)]
    pub latencies: Vec<LatencyCurve>,
    /// Rates over time.
    #[serde(default)]
    pub series: Vec<Series>,
    /// The tail scenario's latency against offered load.
    #[serde(default)]
    pub load_curve: Vec<crate::tail::LoadPoint>,
    /// Records/s by shard count, one series per record size (replay).
    #[serde(default)]
    pub scaling: Vec<Series>,
    #[serde(default)]
    pub noise: Option<Noise>,
}

impl Outcome {
    pub fn new(scenario: &str, json: serde_json::Value) -> Self {
        Outcome {
            scenario: scenario.into(),
            json,
            figures: Vec::new(),
            latencies: Vec::new(),
            series: Vec::new(),
            load_curve: Vec::new(),
            scaling: Vec::new(),
            noise: None,
        }
    }

    pub fn print(&self) {
        for f in &self.figures {
            println!("{}", figure_line(f));
        }
    }
}

/// A value with enough digits: small ones (allocations per record, ratios) keep more decimals.
pub fn number(value: f64) -> String {
    if value != 0.0 && value.abs() < 1.0 {
        format!("{value:.4}")
    } else if value.abs() >= 1e6 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn spread_text(f: &Figure) -> String {
    if f.runs > 1 {
        format!("{} [{}-{}]", number(f.value), number(f.value_min), number(f.value_max))
    } else {
        number(f.value)
    }
}

fn ratio_text(f: &Figure) -> String {
    match (f.ratio_median, f.ratio_min, f.ratio_max) {
        (Some(m), Some(lo), Some(hi)) => format!("{m:.3} [{lo:.3}-{hi:.3}]"),
        _ => String::new(),
    }
}

fn figure_line(f: &Figure) -> String {
    let mut line = format!(
        "{:<9} {:<44} {:>28} {:<6} ({})",
        f.scenario,
        f.name,
        spread_text(f),
        f.unit,
        f.statistic
    );
    if let (Some(name), Some(limit)) = (&f.limit_name, f.limit) {
        let _ = write!(line, " vs {name} {limit:.0}: ratio {}", ratio_text(f));
    }
    if let (Some(target), Some(verdict)) = (&f.target, f.verdict) {
        let _ = write!(line, "  [target {target}: {}]", verdict.as_str());
    }
    line
}

/// The Markdown summary table: one row per figure.
pub fn summary_table(figures: &[Figure]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| scenario | figure | value [min-max] | statistic | limit (median) | ratio median [min-max] | target | verdict |"
    );
    let _ = writeln!(md, "|---|---|---:|---|---:|---:|---|---|");
    for f in figures {
        let limit = match (&f.limit_name, f.limit) {
            (Some(n), Some(l)) => format!("{n} {l:.0}"),
            _ => String::new(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} {} | {} | {} | {} | {} | {} |",
            f.scenario,
            f.name,
            spread_text(f),
            f.unit,
            f.statistic,
            limit,
            ratio_text(f),
            f.target.clone().unwrap_or_default(),
            match f.verdict {
                Some(Verdict::Below) => "**below**",
                Some(Verdict::Noisy) => "*noisy*",
                Some(v) => v.as_str(),
                None => "",
            }
        );
    }
    md
}

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The baseline results.json.
    a: PathBuf,
    /// The results.json to compare with it.
    b: PathBuf,
}

/// The part of a results.json `compare` reads.
#[derive(Deserialize)]
struct Compared {
    date_utc: String,
    git_commit: String,
    machine: serde_json::Value,
    figures: Vec<Figure>,
}

pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let load = |p: &Path| -> anyhow::Result<Compared> {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", p.display()))
    };
    let a = load(&args.a)?;
    let b = load(&args.b)?;
    for (tag, r) in [("A", &a), ("B", &b)] {
        println!(
            "{tag}: {} commit {} ({})",
            r.date_utc,
            r.git_commit,
            r.machine["cpu_model"].as_str().unwrap_or("?")
        );
    }
    println!(
        "{:<9} {:<44} {:>12} {:>12} {:>8}  {:>22} {:>22}",
        "scenario", "figure", "A", "B", "B/A", "ratio A [min-max]", "ratio B [min-max]"
    );
    for fb in &b.figures {
        let Some(fa) = a.figures.iter().find(|f| f.scenario == fb.scenario && f.name == fb.name)
        else {
            println!(
                "{:<9} {:<44} {:>12} {:>12} {:>8}",
                fb.scenario,
                fb.name,
                "-",
                number(fb.value),
                "new"
            );
            continue;
        };
        let change = if fa.value != 0.0 { fb.value / fa.value } else { f64::NAN };
        println!(
            "{:<9} {:<44} {:>12} {:>12} {:>8.2}  {:>22} {:>22} {}",
            fb.scenario,
            fb.name,
            number(fa.value),
            number(fb.value),
            change,
            ratio_text(fa),
            ratio_text(fb),
            fb.unit
        );
    }
    for fa in &a.figures {
        if !b.figures.iter().any(|f| f.scenario == fa.scenario && f.name == fa.name) {
            println!(
                "{:<9} {:<44} {:>12} {:>12} {:>8}",
                fa.scenario,
                fa.name,
                number(fa.value),
                "-",
                "gone"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Pairs;

    #[test]
    fn a_paired_figure_carries_its_pairs_and_a_verdict_from_the_spread() {
        let mut pairs = Pairs::default();
        for (limit, engine) in [(1000.0, 850.0), (1200.0, 900.0), (900.0, 800.0)] {
            pairs.push(limit, engine);
        }
        let f = Figure::paired("storage", "x", "MB/s", "raw write", &pairs.summary(), 0.8);
        assert_eq!(f.pairs, Some(3));
        assert_eq!(f.statistic, "median of 3 pairs");
        // Ratios 0.85, 0.75, 0.889: the target 0.8 is inside the spread.
        assert_eq!(f.verdict, Some(Verdict::Noisy));
        assert!((f.ratio_median.unwrap_or(0.0) - 0.85).abs() < 1e-12);
        assert_eq!(f.limit, Some(1000.0));
        let json = serde_json::to_value(&f).unwrap_or_default();
        for key in ["pairs", "ratio_median", "ratio_min", "ratio_max"] {
            assert!(json[key].is_number(), "{key} missing in {json}");
        }
    }

    #[test]
    fn a_latency_curve_ends_at_the_tail() {
        let mut h = crate::new_histogram();
        for us in 1..=10_000u64 {
            h.saturating_record(us * 1_000);
        }
        let c = LatencyCurve::of("x", &h);
        assert_eq!(c.samples, 10_000);
        assert_eq!(c.points.first().map(|p| p.0), Some(0.0));
        assert!(c.points.last().is_some_and(|p| p.0 > 99.99 && p.1 > 9_900.0));
        assert!(c.points.windows(2).all(|w| w[0].1 <= w[1].1), "percentiles never decrease");
        assert!((c.max_us - 10_000.0).abs() < 20.0);
    }
}
