//! `kappa-bench run` and `compare`: run scenarios in one process, write `results.json`,
//! `report.md` and SVG plots, and compare two result files.
//!
//! Every scenario returns an `Outcome`: its full JSON, the headline `Figure`s (each with the limit it
//! is measured against and the ratio), and the latency histograms and throughput bars to plot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::Machine;

/// One headline number, beside its limit or target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub scenario: String,
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// What the value is divided by, measured in the same run.
    pub limit_name: Option<String>,
    pub limit: Option<f64>,
    pub ratio: Option<f64>,
    /// "ratio >= 0.8" or "value < 1000": the target, when there is one.
    pub target: Option<String>,
    pub meets: Option<bool>,
}

impl Figure {
    pub fn plain(scenario: &str, name: &str, value: f64, unit: &str) -> Self {
        Figure {
            scenario: scenario.into(),
            name: name.into(),
            value,
            unit: unit.into(),
            limit_name: None,
            limit: None,
            ratio: None,
            target: None,
            meets: None,
        }
    }

    /// A value measured against a limit, with a minimum ratio as its target.
    pub fn against(
        scenario: &str,
        name: &str,
        value: f64,
        unit: &str,
        limit_name: &str,
        limit: f64,
        min_ratio: f64,
    ) -> Self {
        let ratio = value / limit;
        Figure {
            limit_name: Some(limit_name.into()),
            limit: Some(limit),
            ratio: Some(ratio),
            target: Some(format!("ratio >= {min_ratio}")),
            meets: Some(ratio >= min_ratio),
            ..Figure::plain(scenario, name, value, unit)
        }
    }

    /// A value with a maximum as its target (latencies).
    pub fn below(scenario: &str, name: &str, value: f64, unit: &str, max: f64) -> Self {
        Figure {
            target: Some(format!("< {max} {unit}")),
            meets: Some(value < max),
            ..Figure::plain(scenario, name, value, unit)
        }
    }
}

/// What a scenario hands to the report.
pub struct Outcome {
    pub scenario: &'static str,
    pub json: serde_json::Value,
    pub figures: Vec<Figure>,
    /// Latency histograms (ns) to draw as percentile distributions.
    pub latencies: Vec<(String, Histogram<u64>)>,
    /// Throughput bars (label, MB/s).
    pub bars: Vec<(String, f64)>,
    /// A rate over time (seconds, value) with its unit, when the scenario has one.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

impl Outcome {
    pub fn new(scenario: &'static str, json: serde_json::Value) -> Self {
        Outcome {
            scenario,
            json,
            figures: Vec::new(),
            latencies: Vec::new(),
            bars: Vec::new(),
            series: Vec::new(),
        }
    }

    pub fn print(&self) {
        for f in &self.figures {
            println!("{}", figure_line(f));
        }
    }
}

/// A value with enough digits: small ones (allocations per record) keep four decimals.
fn number(value: f64) -> String {
    if value != 0.0 && value.abs() < 1.0 {
        format!("{value:.4}")
    } else {
        format!("{value:.1}")
    }
}

fn figure_line(f: &Figure) -> String {
    let mut line =
        format!("{:<9} {:<40} {:>12} {:<6}", f.scenario, f.name, number(f.value), f.unit);
    if let (Some(name), Some(limit), Some(ratio)) = (&f.limit_name, f.limit, f.ratio) {
        let _ = write!(line, " vs {name} {limit:.0}: ratio {ratio:.2}");
    }
    if let (Some(target), Some(meets)) = (&f.target, f.meets) {
        let _ = write!(line, "  [target {target}: {}]", if meets { "meets" } else { "BELOW" });
    }
    line
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Short runs (about a minute in all) that check every scenario works; numbers are rough.
    #[arg(long)]
    quick: bool,
    /// Scenarios to run, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = ["disk".to_string(), "storage".into(), "ingest".into(), "tail".into(), "replay".into(), "recovery".into()])]
    scenarios: Vec<String>,
    /// Where results.json, report.md and the SVG plots go.
    #[arg(long)]
    out: PathBuf,
    /// Where the data goes (a directory on the device to measure); default: the current one.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
struct Results {
    date_utc: String,
    git_commit: String,
    build_profile: String,
    quick: bool,
    scenarios_run: Vec<String>,
    machine: serde_json::Value,
    figures: Vec<Figure>,
    scenarios: serde_json::Map<String, serde_json::Value>,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let machine = Machine::probe(&data_dir);
    let mut outcomes = Vec::new();
    let total = args.scenarios.len();
    for (i, name) in args.scenarios.iter().enumerate() {
        eprintln!("[{}/{total}] {name}", i + 1);
        let mut argv: Vec<String> =
            vec![name.clone(), "--data-dir".into(), data_dir.display().to_string()];
        if args.quick {
            argv.push("--quick".into());
        }
        let outcome =
            crate::run_scenario(name, &argv).with_context(|| format!("scenario {name}"))?;
        outcome.print();
        outcomes.push(outcome);
    }
    let results = Results {
        date_utc: date_utc(),
        git_commit: git_commit(),
        build_profile: if cfg!(debug_assertions) { "debug" } else { "release" }.into(),
        quick: args.quick,
        scenarios_run: args.scenarios.clone(),
        machine: serde_json::to_value(&machine)?,
        figures: outcomes.iter().flat_map(|o| o.figures.clone()).collect(),
        scenarios: outcomes.iter().map(|o| (o.scenario.to_string(), o.json.clone())).collect(),
    };
    let results_path = args.out.join("results.json");
    std::fs::write(&results_path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", results_path.display()))?;

    let mut plots = Vec::new();
    let latencies: Vec<(String, &Histogram<u64>)> = outcomes
        .iter()
        .flat_map(|o| o.latencies.iter().map(|(n, h)| (format!("{}: {n}", o.scenario), h)))
        .collect();
    if !latencies.is_empty() {
        let path = args.out.join("latency.svg");
        std::fs::write(&path, crate::svg::latency_distribution(&latencies))?;
        plots.push(("Latency by percentile".to_string(), "latency.svg".to_string()));
    }
    for o in &outcomes {
        if !o.bars.is_empty() {
            let file = format!("{}-throughput.svg", o.scenario);
            std::fs::write(
                args.out.join(&file),
                crate::svg::bars(&format!("{} throughput", o.scenario), "MB/s", &o.bars),
            )?;
            plots.push((format!("{} throughput", o.scenario), file));
        }
        if !o.series.is_empty() {
            let file = format!("{}-over-time.svg", o.scenario);
            std::fs::write(
                args.out.join(&file),
                crate::svg::lines(&format!("{} over time", o.scenario), "s", "rate", &o.series),
            )?;
            plots.push((format!("{} over time", o.scenario), file));
        }
    }
    let report = markdown(&results, &plots);
    let report_path = args.out.join("report.md");
    std::fs::write(&report_path, report)
        .with_context(|| format!("writing {}", report_path.display()))?;
    eprintln!(
        "wrote {}, {} and {} plot(s)",
        results_path.display(),
        report_path.display(),
        plots.len()
    );
    Ok(())
}

fn markdown(results: &Results, plots: &[(String, String)]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# kappa benchmark report\n");
    let _ = writeln!(
        md,
        "{} UTC, commit `{}`, {} build{}.\n",
        results.date_utc,
        results.git_commit,
        results.build_profile,
        if results.quick { ", **quick run** (short phases: numbers are rough)" } else { "" }
    );
    let m = &results.machine;
    let _ = writeln!(
        md,
        "Machine: {} ({} CPUs), {} KiB memory, Linux {}, data on {}.\n",
        m["cpu_model"].as_str().unwrap_or("?"),
        m["cpus_online"],
        m["memory_total_kib"],
        m["kernel"].as_str().unwrap_or("?"),
        m["file_system"].as_str().unwrap_or("?")
    );
    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(md, "Each throughput is divided by the limit it is measured against, measured in the same run. ");
    let _ = writeln!(md, "A ratio of 0.8 means the engine reaches 80% of what the raw device does through the same I/O path.\n");
    let _ = writeln!(md, "| scenario | figure | value | limit | ratio | target | |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|---|---|");
    for f in &results.figures {
        let limit = match (&f.limit_name, f.limit) {
            (Some(n), Some(l)) => format!("{n} {l:.0}"),
            _ => String::new(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} {} | {} | {} | {} | {} |",
            f.scenario,
            f.name,
            number(f.value),
            f.unit,
            limit,
            f.ratio.map_or(String::new(), |r| format!("{r:.3}")),
            f.target.clone().unwrap_or_default(),
            match f.meets {
                Some(true) => "meets",
                Some(false) => "**below**",
                None => "",
            }
        );
    }
    if !plots.is_empty() {
        let _ = writeln!(md, "\n## Plots\n");
        for (title, file) in plots {
            let _ = writeln!(md, "![{title}]({file})\n");
        }
    }
    let _ = writeln!(md, "\nFull parameters and every configuration: `results.json`.");
    md
}

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The baseline results.json.
    a: PathBuf,
    /// The results.json to compare with it.
    b: PathBuf,
}

pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let load = |p: &Path| -> anyhow::Result<Results> {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", p.display()))
    };
    let a = load(&args.a)?;
    let b = load(&args.b)?;
    println!(
        "A: {} commit {} ({})",
        a.date_utc,
        a.git_commit,
        a.machine["cpu_model"].as_str().unwrap_or("?")
    );
    println!(
        "B: {} commit {} ({})",
        b.date_utc,
        b.git_commit,
        b.machine["cpu_model"].as_str().unwrap_or("?")
    );
    println!("{:<9} {:<40} {:>12} {:>12} {:>8}", "scenario", "figure", "A", "B", "B/A");
    for fb in &b.figures {
        let Some(fa) = a.figures.iter().find(|f| f.scenario == fb.scenario && f.name == fb.name)
        else {
            println!(
                "{:<9} {:<40} {:>12} {:>12.1} {:>8}",
                fb.scenario, fb.name, "-", fb.value, "new"
            );
            continue;
        };
        let ratio = if fa.value != 0.0 { fb.value / fa.value } else { f64::NAN };
        println!(
            "{:<9} {:<40} {:>12.1} {:>12.1} {:>8.2} {}",
            fb.scenario, fb.name, fa.value, fb.value, ratio, fb.unit
        );
    }
    for fa in &a.figures {
        if !b.figures.iter().any(|f| f.scenario == fa.scenario && f.name == fa.name) {
            println!(
                "{:<9} {:<40} {:>12.1} {:>12} {:>8}",
                fa.scenario, fa.name, fa.value, "-", "gone"
            );
        }
    }
    Ok(())
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Today's date and time in UTC, from the system clock (civil-from-days, no date crate needed).
fn date_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}
