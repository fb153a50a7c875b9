//! `kappa demo`: the main job on an embedded default.
//!
//! Opens an engine (one shard per CPU), creates a `sensors` topic, and produces a realistic stream
//! of keyed temperature readings with event times from several producer threads for a few seconds,
//! while one tail consumer per partition follows the live tail. It prints throughput, the
//! append-to-ack and append-to-tail latency percentiles (HDR histograms), a few rows of mean
//! temperature per sensor folded from the tail, and where the data lives; then it verifies every
//! frame. Views and rebuilds join this demo as the engine grows.

// The demo reports wall-clock throughput and latency; that is its point.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

use kappa_engine::operator::{Aggregate, LatePolicy, Window};
use kappa_engine::{Durability, Engine, ProducerRecord, Seek, TopicConfig, ViewDef};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How long to produce.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Data dir (created if missing; an existing one is reopened and appended to).
    #[arg(long, default_value = "kappa-demo-data")]
    pub data_dir: PathBuf,
    /// Shards (default: one per CPU this process may use, less one left to the producer and
    /// consumer threads when there are two or more).
    #[arg(long)]
    pub shards: Option<usize>,
    #[arg(long, default_value = "written")]
    pub durability: Durability,
    /// Producer threads.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
}

const TOPIC: &str = "sensors";
const VIEW: &str = "sensor_stats";
const SENSORS: u64 = 64;
const BATCH: usize = 100;
/// Event times start here and advance 1 ms per 10 readings of a producer: deterministic, with a
/// little jitter so some readings arrive out of order, as real sensors do.
const EPOCH_MS: i64 = 1_700_000_000_000;

/// Pins the calling thread to one of `cpus` (the `index`-th, wrapping); none: left unpinned.
fn pin_to(cpus: &[usize], index: usize) {
    if !cpus.is_empty() {
        core_affinity::set_for_current(core_affinity::CoreId { id: cpus[index % cpus.len()] });
    }
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.producers > 0, "--producers must be at least 1");
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    // The shards take the first CPUs, each its own; the producer and consumer threads and the
    // shards' blocking pools the rest, so a shard busy with a rebuild never keeps them waiting
    // for a CPU (with one CPU, or more shards than CPUs, everything shares).
    let mut online: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    online.sort_unstable();
    let shards = args.shards.unwrap_or(online.len().saturating_sub(1).max(1));
    let shard_cpus: Vec<usize> = online.iter().copied().take(shards).collect();
    let client_cpus: Vec<usize> =
        online.iter().copied().filter(|c| !shard_cpus.contains(c)).collect();
    let mut builder = Engine::builder()
        .data_dir(&data_dir)
        .shards(shards)
        .blocking_pool(kappa_engine::BlockingPool::OtherCpus);
    if !shard_cpus.is_empty() && shards <= online.len() {
        builder = builder.cpus(shard_cpus);
    }
    let engine = builder.build().context("starting the engine (needs io_uring)")?;
    let partitions = engine
        .ensure_topic(TOPIC, TopicConfig::new(engine.shard_count().max(2) as u32))
        .context("creating the sensors topic")?;
    println!(
        "kappa demo: {} shards, topic `{TOPIC}` with {partitions} partitions, {} producer threads, \
         durability {}, data in {}",
        engine.shard_count(),
        args.producers,
        args.durability,
        data_dir.display()
    );
    let start_offsets: Vec<u64> = (0..partitions)
        .map(|p| engine.partition_offsets(TOPIC, p).map(|o| o.end_offset))
        .collect::<Result<_, _>>()?;

    let view = engine.create_view(VIEW, mean_per_10s()).context("creating the view")?;
    println!(
        "view `{VIEW}` (version {}): mean temperature per sensor per 10 s of event time",
        view.version()
    );

    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let rebuilding = Arc::new(AtomicBool::new(false));
    let tails: Vec<_> = (0..partitions)
        .map(|p| {
            let mut consumer =
                engine.consumer(TOPIC, p, Seek::Offset(start_offsets[p as usize]))?;
            let stop = stop.clone();
            let rebuilding = rebuilding.clone();
            let cpus = client_cpus.clone();
            Ok(std::thread::spawn(move || {
                pin_to(&cpus, p as usize);
                tail(&mut consumer, epoch, &stop, &rebuilding)
            }))
        })
        .collect::<Result<_, kappa_engine::Error>>()?;

    let deadline = epoch + Duration::from_secs(args.seconds);
    let producers: Vec<_> = (0..args.producers)
        .map(|id| {
            let producer = engine.producer().with_durability(args.durability);
            let cpus = client_cpus.clone();
            std::thread::spawn(move || {
                pin_to(&cpus, id);
                produce(&producer, id as u64, epoch, deadline)
            })
        })
        .collect();
    run_view_phases(&engine, &view, epoch, deadline, &rebuilding)?;
    let mut ack_latency = new_histogram();
    let mut produced = 0u64;
    let mut produced_bytes = 0u64;
    for handle in producers {
        let (histogram, records, bytes) =
            handle.join().map_err(|_| anyhow::anyhow!("a producer thread panicked"))??;
        ack_latency.add(&histogram)?;
        produced += records;
        produced_bytes += bytes;
    }
    let produce_secs = epoch.elapsed().as_secs_f64();

    // Let the tails catch up with the end, then stop them.
    let ends: Vec<u64> = (0..partitions)
        .map(|p| engine.partition_offsets(TOPIC, p).map(|o| o.end_offset))
        .collect::<Result<_, _>>()?;
    stop.store(true, Ordering::Release);
    let mut tail_latency = new_histogram();
    let mut tail_rebuild_latency = new_histogram();
    let mut table: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    let mut tailed = 0u64;
    for (p, handle) in tails.into_iter().enumerate() {
        let result = handle.join().map_err(|_| anyhow::anyhow!("a tail thread panicked"))??;
        anyhow::ensure!(
            result.position >= ends[p],
            "tail of partition {p} stopped at {} before the end {}",
            result.position,
            ends[p]
        );
        tail_latency.add(&result.latency)?;
        tail_rebuild_latency.add(&result.latency_rebuild)?;
        tailed += result.records;
        for (sensor, (count, sum)) in result.table {
            let entry = table.entry(sensor).or_default();
            entry.0 += count;
            entry.1 += sum;
        }
    }
    let metrics = engine.metrics()?;
    let rows = view.rows()?;
    let served = view.version();
    engine.shutdown().context("shutting the engine down")?;

    println!(
        "produced {produced} records ({:.1} MB) in {produce_secs:.1} s: {:.0} records/s, {:.1} MB/s",
        produced_bytes as f64 / 1e6,
        produced as f64 / produce_secs,
        produced_bytes as f64 / 1e6 / produce_secs
    );
    println!("tail consumers saw {tailed} records (every one, in order per partition)");
    print_latency("append -> ack  ", &ack_latency);
    print_latency("append -> tail ", &tail_latency);
    print_latency("  during rebuild", &tail_rebuild_latency);
    let fsyncs: u64 = metrics.iter().map(|m| m.fsync_count).sum();
    println!(
        "fsyncs: {fsyncs}; per shard records: {:?}",
        metrics.iter().map(|m| m.records_appended).collect::<Vec<_>>()
    );
    println!("mean temperature per sensor, folded from the tail (5 of {}):", table.len());
    for (sensor, (count, sum)) in table.iter().take(5) {
        println!(
            "  {sensor:<10} {count:>8} readings  {:>6.2} °C",
            *sum as f64 / 10.0 / *count as f64
        );
    }
    println!("view `{VIEW}` version {served}: {} rows; the last 5:", rows.len());
    for row in rows.iter().rev().take(5).rev() {
        println!(
            "  {:<10} [{} .. {}) s  max {:>6.1} °C",
            String::from_utf8_lossy(&row.key),
            (row.window_start - EPOCH_MS) / 1000,
            (row.window_end - EPOCH_MS) / 1000,
            row.value
        );
    }
    let code = crate::verify::run(&data_dir, false, kappa_storage::verify::default_window_bytes())?;
    anyhow::ensure!(
        code == crate::cli::EXIT_OK,
        "verify found corruption in {}",
        data_dir.display()
    );
    println!(
        "inspect it with: cargo run --release -p kappa-tools -- inspect {}",
        data_dir.display()
    );
    Ok(())
}

fn mean_per_10s() -> ViewDef {
    ViewDef::new(TOPIC)
        .revision("mean-10s")
        .map_json("temp_c")
        .window(Window::Tumbling { size_ms: 10_000 })
        .aggregate(Aggregate::Mean)
        .lateness(1_000, LatePolicy::Drop)
}

fn max_per_5s() -> ViewDef {
    ViewDef::new(TOPIC)
        .revision("max-5s")
        .map_json("temp_c")
        .window(Window::Tumbling { size_ms: 5_000 })
        .aggregate(Aggregate::Max)
        .lateness(1_000, LatePolicy::Drop)
}

/// While ingest runs: query the view for the first half, then rebuild it with a changed definition
/// (max per 5 s instead of mean per 10 s), showing progress until the swap.
fn run_view_phases(
    engine: &Engine,
    view: &kappa_engine::ViewHandle,
    epoch: Instant,
    deadline: Instant,
    rebuilding: &AtomicBool,
) -> anyhow::Result<()> {
    let half = epoch + (deadline - epoch) / 2;
    while Instant::now() < half {
        std::thread::sleep(
            Duration::from_millis(500).min(half.saturating_duration_since(Instant::now())),
        );
        let rows = view.range(b"sensor-00", b"sensor-01")?;
        let progress = view.progress()?;
        if let Some(row) = rows.last() {
            println!(
                "  query at {:>4.1} s: sensor-00, window [{} .. {}) s: mean {:.2} °C (version {}, {} rows for the key, lag {} records)",
                epoch.elapsed().as_secs_f64(),
                (row.window_start - EPOCH_MS) / 1000,
                (row.window_end - EPOCH_MS) / 1000,
                row.value,
                view.version(),
                rows.len(),
                progress.lag()
            );
        }
    }
    rebuilding.store(true, Ordering::Release);
    let old = view.version();
    let started = Instant::now();
    let rebuild = engine.rebuild_view(VIEW, max_per_5s())?;
    let version = rebuild.version();
    println!(
        "rebuilding `{VIEW}` as version {version} (max per 5 s) from offset 0 while ingest continues; version {} keeps serving",
        view.version()
    );
    // A bar on a terminal (indicatif); a line every half second otherwise (logs, CI).
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("[{bar:30.cyan/blue}] {percent:>3}%  {msg}")
            .expect("a valid template")
            .progress_chars("#>."),
    );
    let mut last_line = Instant::now() - Duration::from_secs(1);
    loop {
        // The wait is the progress bar's tick: it returns at once when the swap happens.
        let swapped = match rebuild.wait_swapped(Duration::from_millis(50)) {
            Ok(()) => true,
            Err(kappa_engine::Error::Timeout { .. }) => false,
            Err(e) => return Err(e).context("rebuilding the view"),
        };
        let progress = view.progress_of(version)?;
        let done = progress.consumed();
        let total = done + progress.lag();
        let fraction = if total == 0 { 1.0 } else { done as f64 / total as f64 };
        // The live-latency controller's view: live p99 over the last second beside the budget,
        // and how much of each shard replay may take.
        let shards = engine.metrics()?;
        let live_p99_us = shards.iter().map(|m| m.replay.live_p99_us).max().unwrap_or(0);
        let append_p99_us = shards.iter().map(|m| m.replay.append_p99_us).max().unwrap_or(0);
        let tail_p99_us = shards.iter().map(|m| m.replay.tail_p99_us).max().unwrap_or(0);
        let budget_us = shards.first().map_or(0, |m| m.replay.budget_us);
        let levels: Vec<String> = shards.iter().map(|m| format!("{:.2}", m.replay.level)).collect();
        // Below the floor: the percent of each 10 ms replay rests so others get the CPU.
        let duty: Vec<String> =
            shards.iter().map(|m| format!("{}%", m.replay.duty_percent)).collect();
        let client_p99_us = shards.iter().map(|m| m.replay.client_p99_us).max().unwrap_or(0);
        // Per shard: range tasks folding now / the controller's concurrency.
        let concurrency: Vec<String> = shards
            .iter()
            .map(|m| format!("{}/{}", m.replay.tasks_running, m.replay.concurrency))
            .collect();
        let message = format!(
            "{done} records replayed, {:.2} M records/s, lag {}, ETA {:.1} s, {} range tasks \
             left, replay concurrency {} per shard, live p99 {live_p99_us} us (append \
             {append_p99_us}, tail {tail_p99_us}, client {client_p99_us}; budget {budget_us} \
             us), replay level {}, duty {}",
            progress.rate_records_s() / 1e6,
            progress.lag(),
            progress.eta_s(),
            progress.replay_tasks(),
            concurrency.join(" "),
            levels.join("/"),
            duty.join("/")
        );
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(message.clone());
        if !terminal && (last_line.elapsed() >= Duration::from_millis(500) || swapped) {
            eprintln!("{:>5.1}%  {message}", fraction * 100.0);
            last_line = Instant::now();
        }
        if swapped {
            bar.finish();
            let offsets: Vec<String> = progress
                .partitions
                .iter()
                .map(|p| format!("p{}@{}", p.partition, p.caught_up_at.unwrap_or_default()))
                .collect();
            println!(
                "swap: version {version} took over at {:.2} s ({:.2} s after the rebuild started), following the tail from offsets {}",
                epoch.elapsed().as_secs_f64(),
                started.elapsed().as_secs_f64(),
                offsets.join(", ")
            );
            // Version `old` stayed available for rollback until here; the demo drops it.
            engine.drop_view_version(VIEW, old)?;
            println!("dropped version {old} (its checkpoints too)");
            break;
        }
        if Instant::now() > deadline + Duration::from_secs(60) {
            anyhow::bail!("the rebuild did not catch up within a minute after ingest stopped");
        }
    }
    rebuilding.store(false, Ordering::Release);
    Ok(())
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("static histogram bounds are valid")
}

fn print_latency(name: &str, h: &Histogram<u64>) {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
    println!(
        "{name} latency: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms ({} samples)",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1e6,
        h.len()
    );
}

/// One producer thread: batches of readings until the deadline. Returns its ack latencies,
/// records and bytes.
fn produce(
    producer: &kappa_engine::Producer,
    id: u64,
    epoch: Instant,
    deadline: Instant,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let mut latency = new_histogram();
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut seq = 0u64;
    while Instant::now() < deadline {
        let sent_ns = epoch.elapsed().as_nanos() as u64;
        // One sensor per batch: a batch goes to one partition, as a device's burst would.
        let sensor = (seq / BATCH as u64 * 7 + id * 13) % SENSORS;
        let batch: Vec<ProducerRecord> = (0..BATCH as u64)
            .map(|i| {
                let n = seq + i;
                let tenths = 150 + ((n * 2_654_435_761) % 200) as i64 + sensor as i64;
                let mut value = Vec::with_capacity(64);
                let _ = write!(
                    value,
                    "{{\"sensor\":{sensor},\"temp_c\":{}.{},\"sent_ns\":{sent_ns}}}",
                    tenths / 10,
                    tenths % 10
                );
                bytes += value.len() as u64 + 9;
                ProducerRecord::new(value)
                    .key(format!("sensor-{sensor:02}"))
                    .timestamp(EPOCH_MS + ((id * 1_000_000 + n) / 10) as i64 - (n % 3) as i64)
            })
            .collect();
        let started = Instant::now();
        producer.send_batch(TOPIC, batch).context("sending a batch")?;
        latency.saturating_record(started.elapsed().as_nanos() as u64);
        records += BATCH as u64;
        seq += BATCH as u64;
    }
    Ok((latency, records, bytes))
}

struct TailResult {
    latency: Histogram<u64>,
    /// Latencies of records consumed while a rebuild was replaying.
    latency_rebuild: Histogram<u64>,
    records: u64,
    position: u64,
    table: BTreeMap<String, (u64, i64)>,
}

/// One tail consumer: records append-to-tail latency and folds mean temperature per sensor.
fn tail(
    consumer: &mut kappa_engine::Consumer,
    epoch: Instant,
    stop: &AtomicBool,
    rebuilding: &AtomicBool,
) -> anyhow::Result<TailResult> {
    let mut result = TailResult {
        latency: new_histogram(),
        latency_rebuild: new_histogram(),
        records: 0,
        position: consumer.position(),
        table: BTreeMap::new(),
    };
    let mut expected = consumer.position();
    loop {
        let Some(batch) = consumer.next_batch_timeout(Duration::from_millis(50))? else {
            if stop.load(Ordering::Acquire) && consumer.lag() == 0 {
                break;
            }
            continue;
        };
        let now_ns = epoch.elapsed().as_nanos() as u64;
        for record in batch.records() {
            anyhow::ensure!(
                record.offset() == expected,
                "tail gap: expected {expected}, got {}",
                record.offset()
            );
            expected += 1;
            let (sent_ns, tenths) =
                parse(record.value()).context("a demo record without its fields")?;
            result.latency.saturating_record(now_ns.saturating_sub(sent_ns));
            if rebuilding.load(Ordering::Relaxed) {
                result.latency_rebuild.saturating_record(now_ns.saturating_sub(sent_ns));
            }
            let key = String::from_utf8_lossy(record.key().unwrap_or(b"?")).into_owned();
            let entry = result.table.entry(key).or_default();
            entry.0 += 1;
            entry.1 += tenths;
            result.records += 1;
        }
        result.position = consumer.position();
    }
    Ok(result)
}

/// `sent_ns` and `temp_c` (in tenths) of a demo record: a tiny parser for a format the demo owns.
fn parse(value: &[u8]) -> Option<(u64, i64)> {
    let text = std::str::from_utf8(value).ok()?;
    let temp = text.split("\"temp_c\":").nth(1)?.split(',').next()?;
    let (whole, frac) = temp.split_once('.')?;
    let tenths = whole.parse::<i64>().ok()? * 10 + frac.parse::<i64>().ok()?;
    let sent = text.split("\"sent_ns\":").nth(1)?.trim_end_matches('}').parse().ok()?;
    Some((sent, tenths))
}
