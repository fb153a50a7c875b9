//! Argument parsing and dispatch for `kappa`, with the exit-code contract of each subcommand.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kappa_storage::{Durability, LogConfig, MIB};

/// Exit code: success, or a clean data dir.
pub const EXIT_OK: i32 = 0;
/// Exit code of `verify` when it found corruption.
pub const EXIT_CORRUPT: i32 = 1;
/// Exit code for usage and I/O errors.
pub const EXIT_ERROR: i32 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "kappa",
    version,
    about = "kappa: a thread-per-core engine for the Kappa architecture"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every frame of every segment under a data dir (exit 0 clean, 1 corrupt, 2 error).
    Verify {
        /// The data dir (holds `topics/`).
        dir: PathBuf,
        /// Also count a torn tail of an active segment as corruption (normally it is cut on open).
        #[arg(long)]
        strict: bool,
        #[command(flatten)]
        window: WindowArgs,
    },
    /// Cut each corrupt partition at its first damage, dropping everything after it, after a
    /// report of exactly what goes, view checkpoints past the cut included (removed before the
    /// cut; their views replay) (exit 0 done or nothing to do; with --dry-run, 1 if a cut is
    /// needed; 2 error).
    Repair {
        dir: PathBuf,
        /// Report the cuts without making them.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        window: WindowArgs,
    },
    /// Show topics, partitions and segments with offsets, sizes and time ranges.
    Inspect {
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write a synthetic log offline through the storage API.
    Gen(GenArgs),
    /// The main job on an embedded default: produce a sensor stream, read it back, verify.
    Demo(crate::demo::DemoArgs),
    /// Run the appliance: the engine with its HTTP API, metrics and status page.
    Serve(crate::serve::ServeArgs),
    /// Topics of a running `kappa serve`: list, create, describe, delete.
    Topic(crate::admin::TopicArgs),
    /// Views of a running `kappa serve`: list, describe, get, rebuild, rollback, ...
    View(crate::admin::ViewArgs),
    /// Send stdin lines as records to a topic of a running `kappa serve`.
    Produce(crate::admin::ProduceArgs),
    /// Print records of a topic of a running `kappa serve`, following it.
    Consume(crate::admin::ConsumeArgs),
}

/// The logs' unsynced bound, which sets how far from the end damage can be a torn tail.
#[derive(Debug, Clone, clap::Args)]
pub struct WindowArgs {
    /// `unsynced_bytes_max` of the logs, in MiB (the default configuration's unless told).
    #[arg(long, default_value_t = LogConfig::default().unsynced_bytes_max / MIB)]
    pub unsynced_mib: u64,
}

impl WindowArgs {
    pub fn window_bytes(&self) -> u64 {
        LogConfig { unsynced_bytes_max: self.unsynced_mib * MIB, ..LogConfig::default() }
            .torn_tail_window_bytes()
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct GenArgs {
    pub dir: PathBuf,
    #[arg(long)]
    pub topic: String,
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Records per partition.
    #[arg(long)]
    pub records: u64,
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Records per appended batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    #[arg(long, default_value = "written")]
    pub durability: Durability,
    /// Segment size in MiB.
    #[arg(long, default_value_t = 256)]
    pub segment_mib: u64,
    /// Seed of the generated keys and values.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Parses `args` and runs the command; returns the process exit code.
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_ERROR } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    // `serve` sets up its own logging from its config (format, level).
    if !matches!(cli.command, Command::Serve(_)) {
        init_logging();
    }
    let result = match cli.command {
        Command::Verify { dir, strict, window } => {
            crate::verify::run(&dir, strict, window.window_bytes())
        }
        Command::Repair { dir, dry_run, window } => {
            crate::repair::run(&dir, dry_run, window.window_bytes())
        }
        Command::Inspect { dir, json } => crate::inspect::run(&dir, json).map(|()| EXIT_OK),
        Command::Gen(args) => crate::gen::run(&args).map(|()| EXIT_OK),
        Command::Demo(args) => crate::demo::run(&args).map(|()| EXIT_OK),
        Command::Serve(args) => crate::serve::run(&args),
        Command::Topic(args) => crate::admin::topic(args),
        Command::View(args) => crate::admin::view(args),
        Command::Produce(args) => crate::admin::produce(args),
        Command::Consume(args) => crate::admin::consume(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_ERROR
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KAPPA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
