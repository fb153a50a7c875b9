//! The `ingest` scenario: embedded producers into the engine, by value size, durability, shard
//! count and batch size; the headline configuration is paired with raw-device writes.
//!
//! Each configuration starts a fresh engine on the same file system and runs producer threads
//! that keep up to `IN_FLIGHT` batches outstanding each (like a Kafka producer's in-flight
//! window), for a fixed time after a warm-up; throughput counts what is acknowledged inside the
//! window. Ack latency is measured per batch from submission to acknowledgement, in an HDR
//! histogram per thread, merged. The grid runs each configuration once; the headline (1 KiB,
//! `written`, batches of 1000, each shard count) runs in (raw write, engine) pairs.
//!
//! Timing, the same on both sides of each ratio. The target's raw write is the best shape of a
//! sweep timed through its fdatasync and close (`limit` says why: timed to its last write, it
//! measures the host's write cache here); its engine side is timed the same way
//! (`Configuration::through_shutdown_mb_s`): every record sent from the window's start on (those
//! still in flight when it ends included: their bytes were written after it started; those sent
//! during the warm-up and acknowledged after the start are left out, against the engine), over
//! the time from the window's start to the engine's completed shutdown, which closes every log
//! (last write, final fdatasync, watermark). Beside it, the window rate (acknowledgements inside
//! the window, with up to the log's unsynced bound per partition unsynced at its end) against
//! the raw write timed to its last completed write (`written_to_last_write`, no verdict): both
//! without the final sync.
use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use kappa_engine::{Durability, Engine, ProducerBatch, ProducerRecord, TopicConfig};
use kappa_storage::MIB;
use serde::Serialize;

use crate::limit::{RawWrite, Shape, Sweep};
use crate::report::{Figure, LatencyCurve, Noise, Outcome};
use crate::stats::{PairedRatio, Pairs};
use crate::Machine;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::Common,
    /// Seconds measured per configuration (after a warm-up of a quarter of it).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// (raw write, engine) pairs per headline configuration.
    #[arg(long, default_value_t = crate::run::PAIRS_MIN)]
    pairs: usize,
    /// Bytes per raw write run, in MiB.
    #[arg(long, default_value_t = 1024)]
    raw_size_mib: u64,
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
    /// Acknowledged inside the measured window.
    pub records_s: f64,
    pub mb_s: f64,
    /// Acknowledged from the window's start on (in flight at its end included), over the time
    /// from the window's start to the completed shutdown (every log closed: last write, final
    /// fdatasync, watermark): timed as a raw write through its fdatasync and close.
    pub through_shutdown_mb_s: f64,
    /// Seconds from the window's end to the completed shutdown (in-flight acks, then the close).
    pub drain_and_close_s: f64,
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

/// The headline configuration: 1 KiB values, `written`, batches of 1000 records.
const HEADLINE_VALUE_BYTES: usize = 1024;
const HEADLINE_BATCH_RECORDS: usize = 1000;

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    machine: Machine,
    seconds_per_configuration: f64,
    producer_threads: usize,
    in_flight_batches_per_thread: usize,
    sweep: Sweep,
    /// The raw write shape of the target (best through its fdatasync and close).
    write_shape: Shape,
    /// The raw write shape of `written_to_last_write` (best to its last write).
    write_shape_to_last_write: Shape,
    /// Per shard count: the pairs of the headline configuration, in the order they ran.
    headline: Vec<Headline>,
    /// Every configuration of the grid, one run each.
    configurations: Vec<Configuration>,
    notes: &'static str,
}

#[derive(Debug, Serialize)]
struct Headline {
    shards: usize,
    raw_writes: Vec<RawWrite>,
    /// In `write_shape_to_last_write` (the same runs as `raw_writes` when the shapes agree).
    raw_writes_to_last_write: Vec<RawWrite>,
    /// Timed through the engine's shutdown (`Configuration::through_shutdown_mb_s`).
    engine_mb_s: Vec<f64>,
    /// The window rates of the same runs (`Configuration::mb_s`).
    engine_window_mb_s: Vec<f64>,
    /// The target: `engine_mb_s` against `raw_writes[].with_fdatasync_mb_s`.
    written_through_fdatasync: PairedRatio,
    /// Not a target: `engine_window_mb_s` against `raw_writes_to_last_write[].mb_s`.
    written_to_last_write: PairedRatio,
}

pub fn scenario(args: Args) -> anyhow::Result<Outcome> {
    let quick = args.common.quick;
    let (seconds, pairs, raw_size_mib) =
        if quick { (0.3, 2, 64) } else { (args.seconds, args.pairs.max(1), args.raw_size_mib) };
    let temp = args.common.scratch("ingest")?;
    let machine = Machine::probe(temp.path());
    let (sweep_size, repeats) = crate::limit::sweep_plan(quick);
    let sweep = crate::limit::sweep_blocking(temp.path(), sweep_size, quick, repeats, false)?;
    let write_shape = sweep.best_write_synced;
    let write_shape_to_last_write = sweep.best_write;

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shard_counts: Vec<usize> = if !args.shards.is_empty() {
        args.shards.clone()
    } else if cpus >= 2 {
        vec![1, 2]
    } else {
        vec![1]
    };

    let mut headline = Vec::new();
    for &shards in &shard_counts {
        let mut pairs_run = Pairs::default();
        let mut pairs_last = Pairs::default();
        let mut raw_writes = Vec::new();
        let mut raw_writes_last = Vec::new();
        for pair in 0..pairs {
            let raw_run = |shape| -> anyhow::Result<RawWrite> {
                let (raw, _) = crate::limit::raw_runs_blocking(
                    temp.path(),
                    raw_size_mib * MIB,
                    1,
                    shape,
                    None,
                )?;
                raw.first().copied().context("the raw write did not run")
            };
            let raw = raw_run(write_shape)?;
            let raw_last = if write_shape_to_last_write == write_shape {
                raw
            } else {
                raw_run(write_shape_to_last_write)?
            };
            let dir = temp.path().join(format!("headline-{shards}-{pair}"));
            let (c, _) = measure(
                &dir,
                HEADLINE_VALUE_BYTES,
                Durability::Written,
                shards,
                HEADLINE_BATCH_RECORDS,
                seconds,
            )
            .with_context(|| format!("headline pair {} on {shards} shard(s)", pair + 1))?;
            let _ = std::fs::remove_dir_all(&dir);
            eprintln!(
                "  pair {}: raw write {:.0} MB/s through fdatasync ({:.0} to last write), 1 KiB written batch 1000 on {shards} shard(s) {:.0} MB/s through shutdown ({:.0} in the window, {:.2} s to drain and close): ratio {:.2} ({:.2})",
                pair + 1,
                raw.with_fdatasync_mb_s,
                raw_last.mb_s,
                c.through_shutdown_mb_s,
                c.mb_s,
                c.drain_and_close_s,
                c.through_shutdown_mb_s / raw.with_fdatasync_mb_s,
                c.mb_s / raw_last.mb_s
            );
            pairs_run.push(raw.with_fdatasync_mb_s, c.through_shutdown_mb_s);
            pairs_last.push(raw_last.mb_s, c.mb_s);
            raw_writes.push(raw);
            raw_writes_last.push(raw_last);
        }
        headline.push(Headline {
            shards,
            written_through_fdatasync: pairs_run.summary(),
            written_to_last_write: pairs_last.summary(),
            engine_mb_s: pairs_run.engine,
            engine_window_mb_s: pairs_last.engine,
            raw_writes,
            raw_writes_to_last_write: raw_writes_last,
        });
    }

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
                        latencies.push(LatencyCurve::of(
                            format!("ack {value_bytes} B {durability} batch 1"),
                            &latency,
                        ));
                    }
                    configurations.push(c);
                }
            }
        }
    }
    let report = Report {
        scenario: "ingest",
        machine,
        seconds_per_configuration: seconds,
        producer_threads: PRODUCER_THREADS,
        in_flight_batches_per_thread: IN_FLIGHT,
        write_shape,
        write_shape_to_last_write,
        sweep,
        headline,
        configurations,
        notes: "MB = 10^6 bytes of key + value. Producers and shards share this machine's cores. \
                The target (written_through_fdatasync) times both sides to the bytes on the device: \
                the raw write through its fdatasync and close, the engine from the window's start \
                (after a warm-up of a quarter of it) to its completed shutdown (every log closed, \
                final fdatasync included), counting every batch acknowledged after the window \
                started. written_to_last_write times neither side's final sync: the engine's \
                acknowledgements inside the window against a raw write to its last completed \
                write (no verdict). Grid configurations run once each; their records/s are window \
                rates.",
    };
    let mut outcome = Outcome::new("ingest", serde_json::to_value(&report)?);
    let raw: Vec<f64> = report
        .headline
        .iter()
        .flat_map(|h| h.raw_writes.iter().map(|w| w.with_fdatasync_mb_s))
        .collect();
    outcome.noise = Some(Noise::of(&raw, &[]));
    let limit_name = format!("raw write {} through fdatasync", write_shape.label());
    let last_name = format!("raw write {} to last write", write_shape_to_last_write.label());
    for h in &report.headline {
        outcome.figures.push(Figure::paired(
            "ingest",
            &format!("written 1 KiB batch 1000, {} shard(s)", h.shards),
            "MB/s",
            &limit_name,
            &h.written_through_fdatasync,
            0.7,
        ));
        outcome.figures.push(
            Figure::paired(
                "ingest",
                &format!("written 1 KiB batch 1000, {} shard(s), vs raw to last write", h.shards),
                "MB/s",
                &last_name,
                &h.written_to_last_write,
                0.0,
            )
            .no_target(),
        );
    }
    for c in &report.configurations {
        let name = format!(
            "{} B {} {} shard batch {} records/s",
            c.value_bytes, c.durability, c.shards, c.batch_records
        );
        outcome.figures.push(Figure::one_run("ingest", &name, c.records_s, "rec/s"));
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
    let results: Vec<anyhow::Result<(u64, u64, Histogram<u64>)>> = std::thread::scope(|scope| {
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
    let closed = start.elapsed();
    let mut records = 0u64;
    let mut records_from_start = 0u64;
    let mut latency = crate::new_histogram();
    for result in results {
        let (n, from_start, h) = result?;
        records += n;
        records_from_start += from_start;
        latency.add(&h)?;
    }
    let secs = measured.as_secs_f64();
    let record_bytes = (value_bytes + 8) as f64;
    let through_shutdown_s = closed.saturating_sub(warm_up).as_secs_f64().max(1e-9);
    let configuration = Configuration {
        value_bytes,
        durability: durability.to_string(),
        shards,
        batch_records,
        records_s: records as f64 / secs,
        mb_s: records as f64 * record_bytes / 1e6 / secs,
        through_shutdown_mb_s: records_from_start as f64 * record_bytes / 1e6 / through_shutdown_s,
        drain_and_close_s: closed.saturating_sub(warm_up + measured).as_secs_f64(),
        ack_latency_us: Percentiles::of_ns(&latency),
    };
    Ok((configuration, latency))
}

/// Sends batches with up to `IN_FLIGHT` outstanding until `end`; counts what is acknowledged
/// between `measure_from` and `end`, and what is acknowledged from `measure_from` on (the batches
/// in flight at `end` included).
fn producer_loop(
    producer: &kappa_engine::Producer,
    thread: usize,
    value_bytes: usize,
    batch_records: usize,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<(u64, u64, Histogram<u64>)> {
    let value = vec![0xA5u8; value_bytes];
    let mut latency = crate::new_histogram();
    let mut pending: VecDeque<(Instant, Vec<kappa_engine::PendingAck>)> = VecDeque::new();
    let mut records = 0u64;
    let mut records_from_start = 0u64;
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
        // Sent from the window's start: a batch sent in the warm-up and acknowledged after the
        // start had part of its work done before the timer started.
        if sent >= measure_from {
            records_from_start += batch_records as u64;
        }
    }
    Ok((records, records_from_start, latency))
}
