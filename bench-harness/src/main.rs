//! `kappa-bench`: scenarios that measure kappa against the machine's own limits, in one run.
//!
//! Every throughput figure is divided by a limit measured in the same run: the best raw-device
//! rate through the same glommio DMA API over a sweep of I/O shapes (`limit`), in (raw, engine)
//! pairs whose ratios are reported as a median with min and max (`stats`). O_DIRECT bypasses the
//! page cache, and the data size is stated in the report.
//!
//! `kappa-bench run --out DIR` runs the scenarios (`disk`, `storage`, `ingest`, `tail`, `replay`,
//! `recovery`, `partitions`), each in a child process of its own (`run`), and writes `results.json`, `report.md`
//! and SVG plots (`plot`); `kappa-bench compare A B` diffs two runs. Each scenario also runs alone
//! in this process (`kappa-bench storage --json FILE`).

// The harness measures wall time; that is its job, so the `Clock` rule does not apply here.
#![allow(clippy::disallowed_methods)]

mod disk;
mod http;
mod ingest;
mod kafka;
mod limit;
mod partitions;
mod perfctl;
mod plot;
mod rebuild;
mod recovery;
mod replay;
mod report;
mod run;
mod stall;
mod stats;
mod storage;
mod tail;

pub use stats::Spread;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "kappa-bench", about = "kappa benchmark scenarios")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run scenarios, each in its own process, and write results.json, report.md and SVG plots.
    Run(run::RunArgs),
    /// Compare two results.json files.
    Compare(report::CompareArgs),
    /// The raw device: a sweep of I/O shapes, repeats of the best, fdatasync latency.
    Disk(disk::Args),
    /// Log append (written, synced) and scan, each paired with a raw-device run.
    Storage(storage::Args),
    /// Embedded producers into the engine by value size, durability, shards and batch size.
    Ingest(ingest::Args),
    /// Append-to-tail latency against offered load (10% to 120% of the measured maximum).
    Tail(tail::Args),
    /// Time to reopen a partition after a SIGKILL with N GiB in it.
    Recovery(recovery::Args),
    /// Rebuild a view from offset 0 on one shard, paired with raw-device reads.
    Replay(replay::Args),
    /// One partition's history rebuilt with 1..N shards (range tasks on every shard), on the data
    /// dir and on tmpfs.
    Scaling(rebuild::ScalingArgs),
    /// Live append latency without and with a rebuild, and the rebuild's rate with and without
    /// live load.
    Mixed(rebuild::MixedArgs),
    /// Random keys over many partitions against pre-grouped records; RSS, descriptors, open and
    /// reopen time for 1 to 10,000 partitions.
    Partitions(partitions::Args),
    /// Records/s through the HTTP API (NDJSON batches of 1000) beside the embedded API's rate.
    Http(http::Args),
    /// The Kafka wire protocol over TCP loopback (produce acks=1/-1, fetch, latency) beside the
    /// raw disk.
    Kafka(kafka::Args),
    /// The longest executor stall of a shard under load with segment rolls and view checkpoints.
    Stall(stall::Args),
    /// The child process of the recovery scenario.
    #[command(hide = true)]
    RecoveryWriter { dir: PathBuf, size_mib: u64 },
    /// A child process of the partitions scenario's cost part (`create` or `reopen`).
    #[command(hide = true)]
    PartitionsCost { dir: PathBuf, partitions: u32, phase: String },
    /// One scenario as a child process of `run`: its outcome goes to `--outcome` as JSON.
    #[command(hide = true)]
    Scenario {
        #[arg(long)]
        outcome: PathBuf,
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KAPPA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let (json, outcome) = match Cli::parse().command {
        Command::Run(args) => return run::run(args),
        Command::Scenario { outcome, name, args } => return run::child(&outcome, &name, &args),
        Command::Compare(args) => return report::compare(args),
        Command::RecoveryWriter { dir, size_mib } => return recovery::writer(&dir, size_mib),
        Command::PartitionsCost { dir, partitions, phase } => {
            return partitions::cost_child(&dir, partitions, &phase)
        }
        Command::Disk(args) => (args.common.json.clone(), disk::scenario(args)),
        Command::Storage(args) => (args.common.json.clone(), storage::scenario(args)),
        Command::Ingest(args) => (args.common.json.clone(), ingest::scenario(args)),
        Command::Tail(args) => (args.common.json.clone(), tail::scenario(args)),
        Command::Recovery(args) => (args.common.json.clone(), recovery::scenario(args)),
        Command::Replay(args) => (args.common.json.clone(), replay::scenario(args)),
        Command::Http(args) => (args.common.json.clone(), http::scenario(args)),
        Command::Scaling(args) => (args.common.json.clone(), rebuild::scaling(args)),
        Command::Mixed(args) => (args.common.json.clone(), rebuild::mixed(args)),
        Command::Kafka(args) => (args.common.json.clone(), kafka::scenario(args)),
        Command::Stall(args) => (args.common.json.clone(), stall::scenario(args)),
        Command::Partitions(args) => (args.common.json.clone(), partitions::scenario(args)),
    };
    let outcome = outcome?;
    outcome.print();
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&outcome.json)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Parses one scenario's flags (as on its own command line) and runs it.
pub fn run_scenario(name: &str, argv: &[String]) -> anyhow::Result<report::Outcome> {
    #[derive(Parser)]
    struct One<T: clap::Args> {
        #[command(flatten)]
        args: T,
    }
    fn parse<T: clap::Args>(argv: &[String]) -> anyhow::Result<T> {
        Ok(One::<T>::try_parse_from(argv)?.args)
    }
    match name {
        "disk" => disk::scenario(parse(argv)?),
        "storage" => storage::scenario(parse(argv)?),
        "ingest" => ingest::scenario(parse(argv)?),
        "tail" => tail::scenario(parse(argv)?),
        "recovery" => recovery::scenario(parse(argv)?),
        "replay" => replay::scenario(parse(argv)?),
        "http" => http::scenario(parse(argv)?),
        "scaling" => rebuild::scaling(parse(argv)?),
        "mixed" => rebuild::mixed(parse(argv)?),
        "kafka" => kafka::scenario(parse(argv)?),
        "stall" => stall::scenario(parse(argv)?),
        "partitions" => partitions::scenario(parse(argv)?),
        other => anyhow::bail!(
            "unknown scenario {other:?}: expected disk, storage, ingest, tail, replay, recovery, \
             http, kafka, scaling, mixed, stall, partitions"
        ),
    }
}

/// Flags every scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Write the scenario's results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where the data goes (a directory on the device to measure); default: the current one.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A short run that checks the scenario works; its numbers are rough.
    #[arg(long)]
    pub quick: bool,
}

impl Common {
    /// A fresh temp dir for one scenario under the data dir, removed when dropped.
    pub fn scratch(&self, scenario: &str) -> anyhow::Result<tempfile::TempDir> {
        let parent = self.data_dir.clone().unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&parent)?;
        tempfile::Builder::new()
            .prefix(&format!("kappa-bench-{scenario}-"))
            .tempdir_in(&parent)
            .map_err(|e| anyhow::anyhow!("creating a temp dir in {}: {e}", parent.display()))
    }
}

/// Runs `work` on a fresh, unpinned glommio executor with `io_memory` bytes of DMA memory, guarded
/// as the engine's shards are (`kappa_engine::watchdog`: a pulse, and a watchdog thread that warns
/// about and kicks an executor that stops running its scheduler). glommio can otherwise park an
/// executor with runnable tasks until an unrelated event; the guard also gives the raw side of a
/// ratio the same timer wake-ups as the engine side.
pub fn on_executor<T, F, Fut>(name: &str, io_memory: usize, work: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>> + 'static,
{
    use kappa_engine::watchdog::{spawn_executor, Pulse, Watchdog};
    let config = kappa_engine::WatchdogConfig::default();
    let pulse = Pulse::new(name, config.pulse_interval);
    let _watchdog = Watchdog::start(name, vec![pulse.clone()], config)
        .map_err(|e| anyhow::anyhow!("starting the watchdog of executor {name}: {e}"))?;
    let builder = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(io_memory)
        .preempt_timer(std::time::Duration::from_millis(1));
    let handle = spawn_executor(name.to_string(), builder, Some(pulse), work)
        .map_err(|e| anyhow::anyhow!("starting the glommio executor: {e}"))?;
    handle.join().map_err(|e| anyhow::anyhow!("executor {name} failed: {e}"))?
}

/// Counts allocations of the whole process (one relaxed atomic add each), so scenarios can report
/// allocations per record; the blocks come from mimalloc, the allocator of every kappa binary
/// (`kappa_tools::alloc`: with glibc's malloc a shard waits on arena locks its client threads
/// hold, and the figures here would measure that instead of the engine).
struct CountingAllocator;

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// SAFETY: forwards every call to mimalloc unchanged; only counts.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { std::alloc::GlobalAlloc::alloc(&kappa_tools::alloc::ALLOCATOR, layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { std::alloc::GlobalAlloc::dealloc(&kappa_tools::alloc::ALLOCATOR, ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe {
            std::alloc::GlobalAlloc::realloc(&kappa_tools::alloc::ALLOCATOR, ptr, layout, new_size)
        }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[cfg(test)]
mod allocator_tests {
    /// Fails when the counting allocator forwards to the system's malloc again.
    #[test]
    fn the_counting_allocator_serves_blocks_from_mimalloc() {
        let before = super::allocations();
        let block = Box::new([0u8; 64]);
        assert!(kappa_tools::alloc::is_mimalloc_block(block.as_ptr()));
        assert!(super::allocations() > before, "the allocation was not counted");
    }
}

/// Allocations (and reallocations) made by this process so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The machine a report was measured on, so two reports can be compared.
#[derive(Debug, serde::Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus_online: usize,
    pub memory_total_kib: u64,
    pub kernel: String,
    pub data_dir: PathBuf,
    pub file_system: String,
    pub build_profile: &'static str,
}

impl Machine {
    pub fn probe(data_dir: &std::path::Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown".to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_total_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        Machine {
            cpu_model,
            cpus_online: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_total_kib,
            kernel,
            data_dir: data_dir.to_path_buf(),
            file_system: file_system_of(data_dir),
            build_profile: if cfg!(debug_assertions) { "debug" } else { "release" },
        }
    }
}

/// The mount with the longest prefix of `path`, from /proc/mounts: "fstype on device (mountpoint)".
fn file_system_of(path: &std::path::Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 3 {
            continue;
        }
        let mount_point = std::path::Path::new(fields[1]);
        if path.starts_with(mount_point) {
            let len = fields[1].len();
            if best.as_ref().is_none_or(|(l, _)| len > *l) {
                best = Some((len, format!("{} on {} ({})", fields[2], fields[0], fields[1])));
            }
        }
    }
    best.map_or_else(|| "unknown".to_string(), |(_, s)| s)
}

/// A latency histogram in nanoseconds, 1 µs to 60 s at 3 significant figures.
pub fn new_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1_000, 60_000_000_000, 3)
        .expect("static histogram bounds are valid")
}
