//! `kappa-bench run`: each scenario in a child process of its own, then `results.json`,
//! `report.md` and the plots.
//!
//! A child process per scenario (this binary re-executed with the hidden `scenario` subcommand,
//! handing back its `Outcome` as JSON in a file) so one scenario's memory, page cache habits,
//! DMA pool, threads and allocator state do not colour the next one's numbers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::report::{summary_table, Figure, Noise, Outcome};
use crate::Machine;

/// Pairs per ratio figure in a full run; `--quick` runs fewer and says so.
pub const PAIRS_MIN: usize = 5;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Short runs (about a minute in all) that check every scenario works; numbers are rough and
    /// ratio figures have fewer than 5 pairs.
    #[arg(long)]
    quick: bool,
    /// Scenarios to run, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = ["disk".to_string(), "storage".into(), "ingest".into(), "tail".into(), "replay".into(), "recovery".into(), "partitions".into()])]
    scenarios: Vec<String>,
    /// Where results.json, report.md and the SVG plots go.
    #[arg(long)]
    out: PathBuf,
    /// Where the data goes (a directory on the device to measure); default: the current one.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A scenario still running after this many seconds is killed and the run fails (default:
    /// 1800, or 300 with --quick), so a stuck I/O ends CI with an error instead of hanging it.
    #[arg(long)]
    scenario_timeout_s: Option<u64>,
}

/// `results.json`.
#[derive(Serialize, Deserialize)]
struct Results {
    date_utc: String,
    git_commit: String,
    build_profile: String,
    quick: bool,
    /// Ratio figures of a full run have at least this many pairs.
    pairs_min: usize,
    scenarios_run: Vec<String>,
    /// Kernel, CPU model, core count, memory, file system of the data dir.
    machine: serde_json::Value,
    /// Per scenario: coefficient of variation of its raw limit runs.
    noise: serde_json::Map<String, serde_json::Value>,
    figures: Vec<Figure>,
    /// The tail scenario's p50/p99/p99.9 against offered load.
    tail_load_curve: Vec<crate::tail::LoadPoint>,
    /// Each scenario's full report.
    scenarios: serde_json::Map<String, serde_json::Value>,
    /// Wall time of each scenario's child process, seconds.
    scenario_seconds: serde_json::Map<String, serde_json::Value>,
}

/// The child side: runs one scenario and writes its `Outcome` to `outcome`.
pub fn child(outcome: &Path, name: &str, args: &[String]) -> anyhow::Result<()> {
    let mut argv = vec![name.to_string()];
    argv.extend_from_slice(args);
    let result = crate::run_scenario(name, &argv)?;
    std::fs::write(outcome, serde_json::to_vec(&result)?)
        .with_context(|| format!("writing {}", outcome.display()))
}

fn run_child(
    name: &str,
    argv: &[String],
    out: &Path,
    timeout: std::time::Duration,
) -> anyhow::Result<Outcome> {
    let outcome_path = out.join(format!(".{name}-outcome.json"));
    let _ = std::fs::remove_file(&outcome_path);
    let exe = std::env::current_exe().context("locating the kappa-bench binary")?;
    let mut child = Command::new(&exe)
        .arg("scenario")
        .arg("--outcome")
        .arg(&outcome_path)
        .arg(name)
        .arg("--")
        .args(argv)
        .spawn()
        .with_context(|| format!("starting {} for scenario {name}", exe.display()))?;
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for the scenario")? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "scenario {name} was still running after {} s and was killed (an I/O completion \
                 that never arrives has been seen on this machine kind; see the README)",
                timeout.as_secs()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    anyhow::ensure!(status.success(), "scenario {name} failed ({status})");
    let bytes = std::fs::read(&outcome_path)
        .with_context(|| format!("reading {}", outcome_path.display()))?;
    let _ = std::fs::remove_file(&outcome_path);
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", outcome_path.display()))
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let machine = Machine::probe(&data_dir);
    let mut outcomes = Vec::new();
    let mut scenario_seconds = serde_json::Map::new();
    let total = args.scenarios.len();
    for (i, name) in args.scenarios.iter().enumerate() {
        eprintln!("[{}/{total}] {name} (own process)", i + 1);
        let mut argv: Vec<String> = vec!["--data-dir".into(), data_dir.display().to_string()];
        if args.quick {
            argv.push("--quick".into());
        }
        let started = std::time::Instant::now();
        let timeout =
            std::time::Duration::from_secs(args.scenario_timeout_s.unwrap_or(if args.quick {
                300
            } else {
                1800
            }));
        let outcome = run_child(name, &argv, &args.out, timeout)
            .with_context(|| format!("scenario {name}"))?;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("[{}/{total}] {name} took {seconds:.1} s", i + 1);
        scenario_seconds.insert(name.clone(), serde_json::json!((seconds * 10.0).round() / 10.0));
        outcome.print();
        outcomes.push(outcome);
    }
    let results = Results {
        date_utc: date_utc(),
        git_commit: git_commit(),
        build_profile: if cfg!(debug_assertions) { "debug" } else { "release" }.into(),
        quick: args.quick,
        pairs_min: PAIRS_MIN,
        scenarios_run: args.scenarios.clone(),
        machine: serde_json::to_value(&machine)?,
        noise: outcomes
            .iter()
            .filter_map(|o| Some((o.scenario.clone(), serde_json::to_value(o.noise?).ok()?)))
            .collect(),
        figures: outcomes.iter().flat_map(|o| o.figures.clone()).collect(),
        tail_load_curve: outcomes.iter().flat_map(|o| o.load_curve.clone()).collect(),
        scenarios: outcomes.iter().map(|o| (o.scenario.clone(), o.json.clone())).collect(),
        scenario_seconds,
    };
    let results_path = args.out.join("results.json");
    std::fs::write(&results_path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", results_path.display()))?;
    let plots = crate::plot::all(&args.out, &outcomes).context("drawing the plots")?;
    let report = markdown(&results, &outcomes, &plots);
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

fn markdown(results: &Results, outcomes: &[Outcome], plots: &[(String, String)]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# kappa benchmark report\n");
    let _ = writeln!(
        md,
        "{} UTC, commit `{}`, {} build{}.\n",
        results.date_utc,
        results.git_commit,
        results.build_profile,
        if results.quick {
            ", **quick run**: short phases and fewer than 5 pairs per ratio, so the numbers are rough"
        } else {
            ""
        }
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
    let noise: Vec<String> = outcomes
        .iter()
        .filter_map(|o| Some((o.scenario.as_str(), o.noise?)))
        .map(|(s, n): (&str, Noise)| {
            let cv = |c: Option<f64>, runs: usize, what: &str| {
                c.map(|c| format!("{what} {:.1}% over {runs} runs", c * 100.0))
            };
            let parts: Vec<String> = [
                cv(n.raw_write_cv, n.raw_write_runs, "write"),
                cv(n.raw_read_cv, n.raw_read_runs, "read"),
            ]
            .into_iter()
            .flatten()
            .collect();
            format!("{s}: {}", parts.join(", "))
        })
        .collect();
    if !noise.is_empty() {
        let _ = writeln!(
            md,
            "Noise of the raw limit (coefficient of variation of its repeats): {}.\n",
            noise.join("; ")
        );
    }
    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(
        md,
        "Ratio figures are paired: each engine run follows a raw-device run with the best I/O shape \
         of a sweep that includes the engine's own, both timed the same way; the ratio is computed \
         per pair, and the table gives the median ratio with its min and max. A verdict is \
         *meets* when the whole spread is on the right side of the target, **below** when it is \
         all on the wrong side, and *noisy* when the target lies inside it.\n"
    );
    md.push_str(&summary_table(&results.figures));
    if !results.tail_load_curve.is_empty() {
        let _ = writeln!(md, "\n## Tail latency against offered load\n");
        let _ = writeln!(
            md,
            "| offered | records/s | sent records/s | p50 us | p99 us | p99.9 us | max us | segment rolls | view checkpoints |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for p in &results.tail_load_curve {
            let _ = writeln!(
                md,
                "| {:.0}% | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
                p.offered_fraction * 100.0,
                p.offered_records_per_s,
                p.sent_records_per_s,
                p.p50_us,
                p.p99_us,
                p.p999_us,
                p.max_us,
                p.segment_rolls,
                p.view_checkpoints
            );
        }
    }
    if !plots.is_empty() {
        let _ = writeln!(md, "\n## Plots\n");
        for (title, file) in plots {
            let _ = writeln!(md, "![{title}]({file})\n");
        }
    }
    let _ = writeln!(
        md,
        "\nEvery run, pair, sweep shape and configuration: `results.json` (`scenarios.<name>`)."
    );
    md
}

fn git_commit() -> String {
    Command::new("git")
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
