//! `kappa view list|describe|get|create|rebuild|rollback|drop-version|delete`.
//!
//! A rebuild returns at once on the server; this command then follows the version's progress
//! stream (server-sent events) with an `indicatif` bar until the new version caught up and is
//! served (or returns at once with `--no-wait`). Without a terminal it prints a progress line
//! per second instead of a bar.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::{print_json, table, Client, Conn};
use crate::serve::spec::ViewSpec;

#[derive(Debug, Clone, clap::Args)]
pub struct ViewArgs {
    #[command(subcommand)]
    pub command: ViewCommand,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ViewCommand {
    /// Views with their served version and lag.
    List,
    /// Definition, versions, served version and progress of each.
    Describe { name: String },
    /// The rows of a key (every window, or the one starting at --window-start).
    Get {
        name: String,
        key: String,
        #[arg(long)]
        window_start: Option<i64>,
    },
    /// Creates a view from a definition file (JSON, or TOML when it ends in .toml; - for stdin).
    Create {
        name: String,
        #[arg(long, value_name = "FILE")]
        definition: PathBuf,
    },
    /// Builds a new version from a definition by replay; swaps it in when it caught up.
    Rebuild {
        name: String,
        #[arg(long, value_name = "FILE")]
        definition: PathBuf,
        /// Return once the rebuild started, without following its progress.
        #[arg(long)]
        no_wait: bool,
    },
    /// Serves another running version (by default the newest one older than the served one).
    Rollback {
        name: String,
        #[arg(long)]
        to: Option<u32>,
    },
    /// Stops a version that is not served and deletes its checkpoints.
    DropVersion { name: String, version: u32 },
    /// Deletes a view, every version and its checkpoints.
    Delete { name: String },
}

/// Reads a definition file as JSON (or TOML), checked locally with the server's own rules.
fn definition(path: &PathBuf) -> anyhow::Result<Value> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the definition from stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    let spec: ViewSpec = if path.extension().and_then(|e| e.to_str()) == Some("toml") {
        toml::from_str(&text).with_context(|| format!("definition {}", path.display()))?
    } else {
        serde_json::from_str(&text).with_context(|| format!("definition {}", path.display()))?
    };
    spec.to_def().map_err(|e| anyhow::anyhow!("definition {}: {e}", path.display()))?;
    Ok(serde_json::to_value(spec)?)
}

fn rows_table(answer: &Value) {
    let rows: Vec<Vec<String>> = answer["rows"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|r| {
            let key = r["key"].as_str().map_or_else(|| table::cell(&r["key_b64"]), str::to_string);
            vec![
                key,
                table::cell(&r["window_start"]),
                table::cell(&r["window_end"]),
                table::cell(&r["value"]),
            ]
        })
        .collect();
    table::print(&["KEY", "WINDOW_START", "WINDOW_END", "VALUE"], &rows);
}

pub fn run(args: ViewArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn);
    let json = args.conn.json;
    match args.command {
        ViewCommand::List => {
            let answer = client.get("/v1/views")?;
            if json {
                return print_json(&answer);
            }
            let rows: Vec<Vec<String>> = answer["views"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .map(|v| {
                    vec![
                        table::cell(&v["name"]),
                        table::cell(&v["topic"]),
                        table::cell(&v["served_version"]),
                        v["versions"].as_array().map_or_else(String::new, |a| {
                            a.iter().map(table::cell).collect::<Vec<_>>().join(",")
                        }),
                        table::cell(&v["lag"]),
                        table::cell(&v["caught_up"]),
                    ]
                })
                .collect();
            table::print(&["NAME", "TOPIC", "SERVED", "VERSIONS", "LAG", "CAUGHT_UP"], &rows);
        }
        ViewCommand::Describe { name } => {
            let answer = client.get(&format!("/v1/views/{name}"))?;
            if json {
                return print_json(&answer);
            }
            println!(
                "view {name} over topic {}: serving version {}",
                table::cell(&answer["topic"]),
                table::cell(&answer["served_version"])
            );
            let rows: Vec<Vec<String>> = answer["versions"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .map(|v| {
                    vec![
                        table::cell(&v["version"]),
                        table::cell(&v["revision"]),
                        table::cell(&v["served"]),
                        table::cell(&v["caught_up"]),
                        table::cell(&v["consumed"]),
                        table::cell(&v["lag"]),
                        table::cell(&v["rate_records_s"]),
                        v["definition"].to_string(),
                    ]
                })
                .collect();
            table::print(
                &[
                    "VERSION",
                    "REVISION",
                    "SERVED",
                    "CAUGHT_UP",
                    "CONSUMED",
                    "LAG",
                    "RATE",
                    "DEFINITION",
                ],
                &rows,
            );
        }
        ViewCommand::Get { name, key, window_start } => {
            let mut query = vec![("key", key)];
            if let Some(w) = window_start {
                query.push(("window_start", w.to_string()));
            }
            let answer = client.get_query(&format!("/v1/views/{name}/get"), &query)?;
            if json {
                return print_json(&answer);
            }
            rows_table(&answer);
        }
        ViewCommand::Create { name, definition: file } => {
            let body = json!({ "name": name, "definition": definition(&file)? });
            let answer = client.post_json("/v1/views", &body)?;
            if json {
                return print_json(&answer);
            }
            println!("created view {name} (version {})", table::cell(&answer["served_version"]));
        }
        ViewCommand::Rebuild { name, definition: file, no_wait } => {
            let answer =
                client.post_json(&format!("/v1/views/{name}/rebuild"), &definition(&file)?)?;
            let version = answer["version"].as_u64().context("the answer names no version")?;
            if json && no_wait {
                return print_json(&answer);
            }
            if !json {
                println!(
                    "rebuilding {name} as version {version}; version {} serves meanwhile",
                    table::cell(&answer["served_version"])
                );
            }
            if no_wait {
                return Ok(());
            }
            let done = follow(&client, &name, version, json)?;
            if json {
                return print_json(&done);
            }
            println!(
                "version {version} caught up and is served (served version now {})",
                table::cell(&done["served_version"])
            );
        }
        ViewCommand::Rollback { name, to } => {
            let target = match to {
                Some(v) => u64::from(v),
                None => {
                    let view = client.get(&format!("/v1/views/{name}"))?;
                    let served = view["served_version"].as_u64().unwrap_or(0);
                    view["versions"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or(&[])
                        .iter()
                        .filter_map(|v| v["version"].as_u64())
                        .filter(|v| *v < served)
                        .max()
                        .with_context(|| {
                            format!("view {name} runs no version older than {served}")
                        })?
                }
            };
            let answer = client
                .post_json(&format!("/v1/views/{name}/serve"), &json!({ "version": target }))?;
            if json {
                return print_json(&answer);
            }
            println!(
                "view {name} now serves version {target} (was {})",
                table::cell(&answer["previous"])
            );
        }
        ViewCommand::DropVersion { name, version } => {
            let answer = client.delete(&format!("/v1/views/{name}/versions/{version}"))?;
            if json {
                return print_json(&answer);
            }
            println!("dropped version {version} of view {name}");
        }
        ViewCommand::Delete { name } => {
            let answer = client.delete(&format!("/v1/views/{name}"))?;
            if json {
                return print_json(&answer);
            }
            println!("deleted view {name}");
        }
    }
    Ok(())
}

/// Follows a version's progress stream until it caught up; returns the last event's data.
fn follow(client: &Client, name: &str, version: u64, quiet: bool) -> anyhow::Result<Value> {
    let terminal = std::io::stderr().is_terminal() && !quiet;
    let bar = if terminal { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:40.cyan/blue}] {percent:>3}% {pos}/{len} records  {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    #[allow(clippy::disallowed_methods)] // Throttles progress lines; never a decision on data.
    let mut last_line = std::time::Instant::now() - Duration::from_secs(1);
    let mut last = Value::Null;
    let path = format!("/v1/views/{name}/versions/{version}/progress/stream");
    client.events(&path, |event, data| {
        let consumed = data["consumed"].as_u64().unwrap_or(0);
        let lag = data["lag"].as_u64().unwrap_or(0);
        let message = format!(
            "{:.0} records/s, lag {lag}, ETA {:.1} s",
            data["rate_records_s"].as_f64().unwrap_or(0.0),
            data["eta_s"].as_f64().unwrap_or(0.0)
        );
        bar.set_length(consumed + lag);
        bar.set_position(consumed);
        bar.set_message(message.clone());
        if !terminal
            && !quiet
            && (last_line.elapsed() >= Duration::from_secs(1) || event != "progress")
        {
            eprintln!(
                "progress: {:.1}% {consumed}/{} records, {message}",
                data["fraction"].as_f64().unwrap_or(0.0) * 100.0,
                consumed + lag
            );
            #[allow(clippy::disallowed_methods)]
            {
                last_line = std::time::Instant::now();
            }
        }
        match event {
            "error" => anyhow::bail!("rebuild of {name} version {version}: {}", data["error"]),
            "done" => {
                last = data;
                Ok(false)
            }
            _ => Ok(true),
        }
    })?;
    bar.finish_and_clear();
    anyhow::ensure!(
        !last.is_null(),
        "the progress stream ended before version {version} caught up"
    );
    Ok(last)
}
