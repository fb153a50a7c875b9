//! The `ingest` scenario: embedded producers into the engine, by value size, durability, shard
//! count and batch size, beside the raw disk write bandwidth measured in the same run.
//!
//! Each configuration starts a fresh engine on the same file system and runs producer threads
//! that keep up to `IN_FLIGHT` batches outstanding each (like a Kafka producer's in-flight
//! window), for a fixed time after a warm-up. Ack latency is measured per batch from submission
//! to acknowledgement, in an HDR histogram per thread, merged.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use kappa_engine::{Durability, Engine, ProducerBatch, ProducerRecord, TopicConfig};
use serde::Serialize;

use crate::report::{Figure, Outcome};
use crate::{Machine, Spread};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::Common,
    /// Seconds measured per configuration (after a warm-up of a quarter of it).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Runs of the raw disk measurement; the median is the limit.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Only these value sizes (bytes), comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1024])]
    values: Vec<usize>,
    /// Only these durabilities.
    #[arg(long, value_delimiter = ',', default_values_t = [Durability::None, Durability::Written, Durability::Synced])]
    durability: Vec<Durability>,
    /// Only these shard counts (default 1 and 2, or 1 on a single CPU).
    #[arg(long, value_delimiter = ',')]
    shards: Vec<usize>,
    /// Only these batch sizes (records).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 1000])]
    batches: Vec<usize>,
}

pub const PRODUCER_THREADS: usize = 4;
/// Outstanding batches per producer thread.
pub const IN_FLIGHT: usize = 8;

#[derive(Debug, Serialize)]
pub struct Configuration {
    pub value_bytes: usize,
    pub durability: String,
    pub shards: usize,
    pub batch_records: usize,
    pub records_s: f64,
    pub mb_s: f64,
    pub ack_latency_us: Percentiles,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
    pub samples: u64,
}

impl Percentiles {
    /// Percentiles of a nanosecond histogram, in microseconds.
    pub fn of_ns(h: &Histogram<u64>) -> Self {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        Percentiles {
            p50: us(0.5),
            p90: us(0.9),
            p99: us(0.99),
            p999: us(0.999),
            p9999: us(0.9999),
            max: h.max() as f64 / 1e3,
            samples: h.len(),
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    machine: Machine,
    seconds_per_configuration: f64,
    producer_threads: usize,
    in_flight_batches_per_thread: usize,
    disk_write_mb_s: f64,
    disk_write_spread: Spread,
    configurations: Vec<Configuration>,
    written_1kib_best_mb_s: f64,
    ratio_written_1kib_to_disk_write: f64,
    notes: &'static str,
}

pub fn scenario(args: Args) -> anyhow::Result<Outcome> {
    let (seconds, runs) =
        if args.common.quick { (0.3, 1) } else { (args.seconds, args.runs.max(1)) };
    let temp = args.common.scratch("ingest")?;
    let machine = Machine::probe(temp.path());
    let size = if args.common.quick { 64 } else { 1024 };
    let (disk, _) = crate::storage::disk_runs(temp.path(), size, runs, false)?;
    let disk_write = Spread::of(&disk);
    eprintln!("ingest: raw disk write {:.0} MB/s (median of {runs})", disk_write.median);

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shard_counts: Vec<usize> = if !args.shards.is_empty() {
        args.shards.clone()
    } else if cpus >= 2 {
        vec![1, 2]
    } else {
        vec![1]
    };
    let mut configurations = Vec::new();
    let mut latencies = Vec::new();
    for &value_bytes in &args.values {
        for &durability in &args.durability {
            for &shards in &shard_counts {
                for &batch_records in &args.batches {
                    let dir = temp
                        .path()
                        .join(format!("{value_bytes}-{durability}-{shards}-{batch_records}"));
                    let (c, latency) =
                        measure(&dir, value_bytes, durability, shards, batch_records, seconds)
                            .with_context(|| {
                                format!(
                            "{value_bytes} B {durability} {shards} shards batch {batch_records}"
                        )
                            })?;
                    eprintln!(
                        "  {value_bytes:>5} B {durability:<7} {shards} shard(s) batch {batch_records:>4}: {:>10.0} rec/s {:>8.1} MB/s  ack p50 {:>8.0} us p99 {:>8.0} us",
                        c.records_s, c.mb_s, c.ack_latency_us.p50, c.ack_latency_us.p99
                    );
                    let _ = std::fs::remove_dir_all(&dir);
                    if batch_records == 1 && shards == 1 {
                        latencies
                            .push((format!("ack {value_bytes} B {durability} batch 1"), latency));
                    }
                    configurations.push(c);
                }
            }
        }
    }
    let written_1kib_best = configurations
        .iter()
        .filter(|c| c.value_bytes == 1024 && c.durability == "written")
        .map(|c| c.mb_s)
        .fold(0.0, f64::max);
    let report = Report {
        scenario: "ingest",
        machine,
        seconds_per_configuration: seconds,
        producer_threads: PRODUCER_THREADS,
        in_flight_batches_per_thread: IN_FLIGHT,
        disk_write_mb_s: disk_write.median,
        disk_write_spread: disk_write,
        ratio_written_1kib_to_disk_write: written_1kib_best / disk_write.median,
        written_1kib_best_mb_s: written_1kib_best,
        configurations,
        notes: "MB = 10^6 bytes of key + value. Producers and shards share this machine's cores. \
                The raw disk limit is 1 MiB O_DIRECT writes, 8 in flight, through glommio.",
    };
    println!(
        "1 KiB written, best configuration: {:.0} MB/s vs raw disk write {:.0} MB/s: ratio {:.2} (target 0.7)",
        report.written_1kib_best_mb_s, report.disk_write_mb_s, report.ratio_written_1kib_to_disk_write
    );
    let mut outcome = Outcome::new("ingest", serde_json::to_value(&report)?);
    outcome.figures.push(Figure::plain(
        "ingest",
        "disk_write_mb_s",
        report.disk_write_mb_s,
        "MB/s",
    ));
    outcome.figures.push(Figure::against(
        "ingest",
        "written 1 KiB best MB/s",
        report.written_1kib_best_mb_s,
        "MB/s",
        "disk write",
        report.disk_write_mb_s,
        0.7,
    ));
    for c in &report.configurations {
        let name = format!(
            "{} B {} {} shard batch {}",
            c.value_bytes, c.durability, c.shards, c.batch_records
        );
        outcome.figures.push(Figure::plain(
            "ingest",
            &format!("{name} records/s"),
            c.records_s,
            "rec/s",
        ));
        if c.batch_records > 1 {
            outcome
                .bars
                .push((format!("{} B {} {}sh", c.value_bytes, c.durability, c.shards), c.mb_s));
        }
    }
    outcome.latencies = latencies;
    Ok(outcome)
}

/// One configuration on a fresh engine.
pub fn measure(
    dir: &Path,
    value_bytes: usize,
    durability: Durability,
    shards: usize,
    batch_records: usize,
    seconds: f64,
) -> anyhow::Result<(Configuration, Histogram<u64>)> {
    let engine = Engine::builder().data_dir(dir).shards(shards).build()?;
    let partitions = (shards * 2) as u32;
    engine.create_topic("bench", TopicConfig::new(partitions))?;
    let warm_up = Duration::from_secs_f64(seconds / 4.0);
    let measured = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let results: Vec<anyhow::Result<(u64, Histogram<u64>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..PRODUCER_THREADS)
            .map(|thread| {
                let producer = engine.producer().with_durability(durability);
                scope.spawn(move || {
                    producer_loop(
                        &producer,
                        thread,
                        value_bytes,
                        batch_records,
                        start + warm_up,
                        start + warm_up + measured,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("producer panicked"))))
            .collect()
    });
    engine.shutdown()?;
    let mut records = 0u64;
    let mut latency = crate::new_histogram();
    for result in results {
        let (n, h) = result?;
        records += n;
        latency.add(&h)?;
    }
    let secs = measured.as_secs_f64();
    let record_bytes = (value_bytes + 8) as f64;
    let configuration = Configuration {
        value_bytes,
        durability: durability.to_string(),
        shards,
        batch_records,
        records_s: records as f64 / secs,
        mb_s: records as f64 * record_bytes / 1e6 / secs,
        ack_latency_us: Percentiles::of_ns(&latency),
    };
    Ok((configuration, latency))
}

/// Sends batches with up to `IN_FLIGHT` outstanding until `end`; counts what is acknowledged
/// between `measure_from` and `end`.
fn producer_loop(
    producer: &kappa_engine::Producer,
    thread: usize,
    value_bytes: usize,
    batch_records: usize,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let value = vec![0xA5u8; value_bytes];
    let mut latency = crate::new_histogram();
    let mut pending: VecDeque<(Instant, Vec<kappa_engine::PendingAck>)> = VecDeque::new();
    let mut records = 0u64;
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        if now >= end && pending.is_empty() {
            break;
        }
        if now < end && pending.len() < IN_FLIGHT {
            // One key per batch, so a batch is one frame in one partition.
            let key = (seq.wrapping_mul(0x9E37_79B9) ^ thread as u64).to_le_bytes().to_vec();
            seq += 1;
            let acks = if batch_records == 1 {
                producer
                    .send_batch_nowait("bench", vec![ProducerRecord::new(value.clone()).key(key)])?
            } else {
                // Packed: one buffer per batch, as a real high-throughput producer builds it.
                let mut batch =
                    ProducerBatch::with_capacity(batch_records, batch_records * (value_bytes + 8));
                for _ in 0..batch_records {
                    batch.push(Some(&key), &value, None);
                }
                producer.send_packed_nowait("bench", batch)?
            };
            pending.push_back((now, acks));
            continue;
        }
        let (sent, acks) = pending.pop_front().expect("non-empty");
        for ack in acks {
            ack.wait()?;
        }
        let done = Instant::now();
        if sent >= measure_from && done <= end {
            records += batch_records as u64;
            latency.saturating_record(done.duration_since(sent).as_nanos() as u64);
        }
    }
    Ok((records, latency))
}
