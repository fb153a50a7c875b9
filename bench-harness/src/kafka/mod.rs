//! The `kafka` scenario: the Kafka wire protocol over TCP loopback, beside the raw disk and the
//! embedded API in the same run.
//!
//! One engine runs as `kappa serve` would (its default shards and CPUs) with the Kafka listener;
//! the client is our own (`kappa_engine::kafka::client`, on `kafka-protocol`), so a client
//! library is not the bottleneck. Records are 1 KiB values with 16-byte keys, in batches of 1000
//! (one Produce request each, encoded once per connection: a send only sets the correlation id),
//! sent by 2 connections with 5 requests in flight each (librdkafka's default
//! `max.in.flight`). Each round runs a raw write and read (the limits, `limit`), then the embedded API
//! appending the same records at `written`, produce acks=1, a fetch of that history from offset 0
//! (one consumer, 16 MiB per fetch), the embedded consumer reading the same history, the embedded
//! API at `synced`, and produce acks=-1. Each Kafka run is divided by the raw run of its round
//! (`stats::Pairs`; targets: acks=-1 >= 0.6x raw write, acks=1 >= 0.7x, fetch >= 0.7x raw read)
//! and by the embedded run of its round (the protocol's cost, no target).
//!
//! Then produce-to-consume latency at 50% of the acks=1 rate: batches sent on a fixed schedule
//! (open loop; the intended send time is the start of each sample, so a stall counts against
//! every batch behind it), acks=1, a consumer long-polling (min_bytes 1) on another connection;
//! p99 over batches, target < 2 ms. Beside it, where the time goes (the request written by the
//! client, its acknowledgement, and per batch its arrival at the consumer after its
//! acknowledgement: the long poll's wake, the read and the response) and the floor: one batch's
//! bytes written raw with O_DIRECT at queue depth 1 on the same schedule (acks=1 visibility waits
//! for the batch's write; on a disk that takes longer than 2 ms the target cannot be met), and the
//! same writes synced as the log syncs them under acks=1 too (a background fdatasync at half its
//! unsynced bound, no write past the bound until one completes: what the storage guarantee costs
//! on this device).
//! `--latency-only-batches-s N` runs only this phase, at N batches/s; `--data-dir` puts the
//! engine and the floors on another file system (a tmpfs separates the engine's own latency from
//! the disk's). Finally confluent-kafka's produce and consume rates from Python, a real-client data
//! point (skipped with a note when it is not installed).
//!
//! Rates count key + value bytes (as `storage` does). Timing, as `storage`'s (`limit` says why):
//! the targets divide a produce run timed from its first request through the partition's sync
//! after its last acknowledgement (`PartitionLog::sync`; at acks=-1 the last acknowledgement
//! already means synced) by the raw write in the best shape timed through its fdatasync and close,
//! both ending with the bytes on the device. Beside them without a verdict, the old timing: to the
//! last acknowledgement against the raw write to its last write. The embedded runs are timed as
//! the Kafka ones; a fetch to its last response.
//!
//! Here: the throughput rounds and the report. `load`: produce and fetch through our client and
//! the embedded API's equivalents; `latency`: the latency phase and its floors;
//! `history`: `--history-only`; `python`: the confluent-kafka data point.

mod history;
mod latency;
mod load;
mod python;

use history::history_only;
use latency::{latency_phase, LatencyPlan};
use load::{
    batch, batches_in, check_produce, embedded_produce, embedded_read, fetch_history,
    fetch_request, produce, produce_request,
};
use python::python_rates;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kappa_engine::kafka::client::{encode_request, record_batch, Client, Compression};
use kappa_engine::kafka::{KafkaConfig, KafkaServer};
use kappa_engine::storage::{ProducerInfo, Record, MIB};
use kappa_engine::{Durability, Engine, ProducerBatch, Seek, TopicConfig};
use serde::Serialize;

use crate::limit::{RawWrite, Shape, Sweep};
use crate::report::{Figure, LatencyCurve, Noise, Outcome};
use crate::stats::{PairedRatio, Pairs};
use crate::Machine;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::Common,
    /// Bytes per phase and round, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Rounds of (raw, engine) pairs.
    #[arg(long, default_value_t = crate::run::PAIRS_MIN)]
    pairs: usize,
    /// Seconds of the latency run at 50% load.
    #[arg(long, default_value_t = 20.0)]
    latency_seconds: f64,
    /// Records confluent-kafka produces and consumes (the Python data point; default 200000,
    /// 5000 with --quick).
    #[arg(long)]
    python_records: Option<u64>,
    /// Only the latency run, at this many batches/s (no throughput rounds, no limits, no Python):
    /// for investigating the latency path.
    #[arg(long)]
    latency_only_batches_s: Option<f64>,
    /// Only the read side (no produce rounds, no latency run, no Python): one topic of
    /// `--size-mib` produced once with acks=1, then per round the raw read, the log's own scan of
    /// that partition on its shard, the embedded consumer and the Kafka fetch, the order turning
    /// by one each round. For finding where a fetch of history loses against the scan.
    #[arg(long)]
    history_only: bool,
    /// Pins the latency run's client threads (producer, acknowledgement reader, consumer) to this
    /// CPU (default: unpinned): for seeing whether they delay the engine's io_uring workers.
    #[arg(long)]
    latency_client_cpu: Option<usize>,
}

const VALUE_BYTES: usize = 1024;
const KEY_BYTES: usize = 16;
const BATCH: usize = 1000;
const CONNECTIONS: usize = 2;
/// Requests in flight per connection, as librdkafka's default `max.in.flight` (5).
const IN_FLIGHT: usize = 5;
const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;
const FETCH_PARTITION_BYTES: i32 = 16 << 20;

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    machine: Machine,
    shards: usize,
    size_bytes_per_run: u64,
    record_value_bytes: usize,
    record_key_bytes: usize,
    batch_records: usize,
    connections: usize,
    in_flight_per_connection: usize,
    sweep: Sweep,
    /// The raw write of the targets: the best shape through its fdatasync and close.
    write_shape: Shape,
    /// The raw write of the old timing: the best shape to its last write.
    write_shape_to_last_write: Shape,
    read_shape: Shape,
    rounds: Vec<Round>,
    /// Targets: Kafka through the partition's sync after the last acknowledgement, against the
    /// raw write through its fdatasync and close.
    produce_acks_all: PairedRatio,
    produce_acks_one: PairedRatio,
    fetch_history: PairedRatio,
    /// Beside them, no verdict: to the last acknowledgement, against the raw write to its last
    /// write (on a host that caches writes, partly the host's memory).
    produce_acks_all_to_last_write: PairedRatio,
    produce_acks_one_to_last_write: PairedRatio,
    /// The same Kafka runs divided by the embedded API's run of their round.
    produce_acks_all_vs_embedded: PairedRatio,
    produce_acks_one_vs_embedded: PairedRatio,
    fetch_vs_embedded: PairedRatio,
    latency: Option<Latency>,
    python: serde_json::Value,
    notes: &'static str,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Round {
    /// In the best shape timed through its fdatasync and close (`Sweep::best_write_synced`):
    /// the target's limit is its `with_fdatasync_mb_s`.
    raw_write: RawWrite,
    /// In the best shape timed to its last write (`Sweep::best_write`): the old limit, its
    /// `mb_s`, beside the target without a verdict.
    raw_write_to_last_write: RawWrite,
    raw_read_mb_s: f64,
    embedded_written: Timed,
    produce_acks_one: Timed,
    fetch_mb_s: f64,
    embedded_read_mb_s: f64,
    embedded_synced: Timed,
    produce_acks_all: Timed,
}

/// One produce run's two timings, both from its first request.
#[derive(Debug, Clone, Copy, Serialize)]
struct Timed {
    /// To the last acknowledgement.
    to_last_ack_mb_s: f64,
    /// To the completed sync of the partition after it (`PartitionLog::sync`): the bytes on the
    /// device, as the raw limit's fdatasync puts them (at acks=-1 and `synced` the last
    /// acknowledgement already means that).
    through_sync_mb_s: f64,
}

/// `run`'s acknowledged bytes timed to its return and through the sync of `topic`/0 after it.
fn timed(
    engine: &Arc<Engine>,
    topic: &str,
    bytes: u64,
    run: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Timed> {
    let started = Instant::now();
    run()?;
    let acked = started.elapsed();
    engine.run_on_partition(topic, 0, |log| async move { log.sync().await })??;
    Ok(Timed {
        to_last_ack_mb_s: mb_s(bytes, acked),
        through_sync_mb_s: mb_s(bytes, started.elapsed()),
    })
}

#[derive(Debug, Serialize)]
struct Latency {
    offered_batches_s: f64,
    offered_fraction_of_acks_one_max: f64,
    samples: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    /// From the intended send time to the request's last byte written by the client.
    sent_p50_us: f64,
    sent_p99_us: f64,
    /// From the intended send time to the Produce response (acks=1).
    acked_p50_us: f64,
    acked_p99_us: f64,
    /// Per batch, from its Produce response's arrival to its arrival at the consumer (the
    /// batch is readable once written, as acks=1 is answered: this is the long poll's wake, the
    /// read, the response and its socket); 0 when the consumer had it first.
    consumed_after_ack_p50_us: f64,
    consumed_after_ack_p99_us: f64,
    /// Batches whose fetch was sent before their Produce response arrived (a long poll was
    /// waiting for them); the others reached a consumer busy with an earlier fetch.
    fetch_waiting_fraction: f64,
    /// The floor: one batch's bytes written raw with O_DIRECT at queue depth 1 on the same
    /// schedule, right after.
    raw_batch_write_p50_us: f64,
    raw_batch_write_p99_us: f64,
    /// The same writes synced as the log syncs them under acks=1 too: a background fdatasync
    /// once `sync_every_bytes` are unsynced, and no write past twice that (its unsynced bound)
    /// until one completes: the floor with what the log's syncs cost on this device.
    raw_batch_write_synced_p50_us: f64,
    raw_batch_write_synced_p99_us: f64,
    sync_every_bytes: u64,
}

fn mb_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

pub fn scenario(args: Args) -> anyhow::Result<Outcome> {
    let quick = args.common.quick;
    let (size_mib, pairs, latency_seconds, python_records) = if quick {
        (64, 2, 2.0, args.python_records.unwrap_or(5_000))
    } else {
        let python_records = args.python_records.unwrap_or(200_000);
        (args.size_mib, args.pairs.max(1), args.latency_seconds, python_records)
    };
    let temp = args.common.scratch("kafka")?;
    let machine = Machine::probe(temp.path());

    // The engine as `kappa serve` starts it (default shards and CPUs), with its Kafka listener.
    let overrides = kappa_tools::serve::config::Overrides {
        data_dir: Some(temp.path().join("engine")),
        ..Default::default()
    };
    let settings =
        kappa_tools::serve::config::parse("", std::path::Path::new("<bench>"), &overrides)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (engine_config, _) =
        kappa_tools::serve::app::engine_config(&settings, temp.path().join("engine"));
    // The log starts a background fdatasync at half its unsynced bound (`storage::log::writer`).
    let sync_every = engine_config.log.unsynced_bytes_max / 2;
    let engine = Arc::new(Engine::start(engine_config).context("starting the engine")?);
    let shards = engine.shard_count();
    let kafka = KafkaServer::start(&engine, KafkaConfig::new("127.0.0.1:0".parse()?))?;
    let addr = kafka.local_addr();
    let batches = (size_mib * MIB).div_ceil((BATCH * (VALUE_BYTES + KEY_BYTES)) as u64);
    let records = batches * BATCH as u64;
    eprintln!(
        "kafka: {shards} shard(s), {size_mib} MiB per phase ({batches} batches of {BATCH} x 1 KiB), {pairs} round(s), listener {addr}"
    );

    if let Some(offered) = args.latency_only_batches_s {
        let plan = LatencyPlan {
            offered,
            fraction: f64::NAN,
            seconds: latency_seconds,
            sync_every,
            client_cpu: args.latency_client_cpu,
        };
        let (latency, _) = latency_phase(&engine, temp.path(), addr, plan)?;
        kafka.stop();
        let engine =
            Arc::try_unwrap(engine).map_err(|_| anyhow::anyhow!("the engine is still shared"))?;
        engine.shutdown()?;
        let value = serde_json::json!({ "scenario": "kafka", "latency_only": latency });
        return Ok(Outcome::new("kafka", value));
    }

    if args.history_only {
        let value = history_only(&engine, temp.path(), addr, size_mib, pairs, batches)?;
        kafka.stop();
        let engine =
            Arc::try_unwrap(engine).map_err(|_| anyhow::anyhow!("the engine is still shared"))?;
        engine.shutdown()?;
        return Ok(Outcome::new("kafka", value));
    }

    let (sweep_size, repeats) = crate::limit::sweep_plan(quick);
    let sweep = crate::limit::sweep_blocking(temp.path(), sweep_size, quick, repeats, true)?;
    let (write_shape, write_shape_to_last_write, read_shape) =
        (sweep.best_write_synced, sweep.best_write, sweep.best_read);
    let bytes = batches * (BATCH * (VALUE_BYTES + KEY_BYTES)) as u64;
    let mut rounds = Vec::new();
    for round in 0..pairs {
        let (raw_writes, raw_reads) = crate::limit::raw_runs_blocking(
            temp.path(),
            size_mib * MIB,
            1,
            write_shape,
            Some(read_shape),
        )?;
        let raw_write = *raw_writes.first().context("no raw write")?;
        let raw_read_mb_s = *raw_reads.first().context("no raw read")?;
        let raw_write_to_last_write = if write_shape_to_last_write == write_shape {
            raw_write
        } else {
            let (writes, _) = crate::limit::raw_runs_blocking(
                temp.path(),
                size_mib * MIB,
                1,
                write_shape_to_last_write,
                None,
            )?;
            *writes.first().context("no raw write")?
        };
        let topics = ["embedded-written", "acks-one", "embedded-synced", "acks-all"]
            .map(|t| format!("{t}-{round}"));
        for t in &topics {
            engine.create_topic(t, TopicConfig::new(1))?;
        }
        let [written, one, synced, all] = &topics;
        let embedded_written = timed(&engine, written, bytes, || {
            embedded_produce(&engine, written, Durability::Written, batches)
        })?;
        let produce_acks_one = timed(&engine, one, bytes, || produce(addr, one, 1, batches))?;
        let fetch_mb_s = fetch_history(addr, one, records)?;
        let embedded_read_mb_s = embedded_read(&engine, one, records)?;
        let embedded_synced = timed(&engine, synced, bytes, || {
            embedded_produce(&engine, synced, Durability::Synced, batches)
        })?;
        let produce_acks_all = timed(&engine, all, bytes, || produce(addr, all, -1, batches))?;
        for t in &topics {
            engine.delete_topic(t)?;
        }
        let r = Round {
            raw_write,
            raw_write_to_last_write,
            raw_read_mb_s,
            embedded_written,
            produce_acks_one,
            fetch_mb_s,
            embedded_read_mb_s,
            embedded_synced,
            produce_acks_all,
        };
        eprintln!(
            "  round {}: through fdatasync/sync: raw write {:.0}, acks=1 {:.0} (embedded written {:.0}), acks=-1 {:.0} (embedded synced {:.0}); to last write/ack: raw write {:.0}, acks=1 {:.0}, acks=-1 {:.0}; raw read {:.0}, fetch {:.0} (embedded consumer {:.0}) MB/s",
            round + 1,
            r.raw_write.with_fdatasync_mb_s,
            r.produce_acks_one.through_sync_mb_s,
            r.embedded_written.through_sync_mb_s,
            r.produce_acks_all.through_sync_mb_s,
            r.embedded_synced.through_sync_mb_s,
            r.raw_write_to_last_write.mb_s,
            r.produce_acks_one.to_last_ack_mb_s,
            r.produce_acks_all.to_last_ack_mb_s,
            r.raw_read_mb_s,
            r.fetch_mb_s,
            r.embedded_read_mb_s
        );
        rounds.push(r);
    }
    let mut pairs: [Pairs; 8] = Default::default();
    for r in &rounds {
        let (all, one) = (r.produce_acks_all, r.produce_acks_one);
        pairs[0].push(r.raw_write.with_fdatasync_mb_s, all.through_sync_mb_s);
        pairs[1].push(r.raw_write.with_fdatasync_mb_s, one.through_sync_mb_s);
        pairs[2].push(r.raw_read_mb_s, r.fetch_mb_s);
        pairs[3].push(r.embedded_synced.through_sync_mb_s, all.through_sync_mb_s);
        pairs[4].push(r.embedded_written.through_sync_mb_s, one.through_sync_mb_s);
        pairs[5].push(r.embedded_read_mb_s, r.fetch_mb_s);
        pairs[6].push(r.raw_write_to_last_write.mb_s, all.to_last_ack_mb_s);
        pairs[7].push(r.raw_write_to_last_write.mb_s, one.to_last_ack_mb_s);
    }
    let [acks_all, acks_one, fetched, all_vs, one_vs, fetch_vs, all_last, one_last] =
        pairs.map(|p| p.summary());

    // Latency at half the acks=1 rate.
    // The acks=1 rate to its last acknowledgement: the rate a client sees.
    let max_batches_s = one_last.engine.median * 1e6 / (BATCH * (VALUE_BYTES + KEY_BYTES)) as f64;
    let offered = max_batches_s * 0.5;
    let (latency, histogram) = latency_phase(
        &engine,
        temp.path(),
        addr,
        LatencyPlan {
            offered,
            fraction: 0.5,
            seconds: latency_seconds,
            sync_every,
            client_cpu: args.latency_client_cpu,
        },
    )?;
    engine.create_topic("kafka-python-bench", TopicConfig::new(1))?;
    let python = python_rates(addr, python_records);
    eprintln!("  confluent-kafka (Python): {python}");
    kafka.stop();
    let engine =
        Arc::try_unwrap(engine).map_err(|_| anyhow::anyhow!("the engine is still shared"))?;
    engine.shutdown()?;

    let report = Report {
        scenario: "kafka",
        machine,
        shards,
        size_bytes_per_run: size_mib * MIB,
        record_value_bytes: VALUE_BYTES,
        record_key_bytes: KEY_BYTES,
        batch_records: BATCH,
        connections: CONNECTIONS,
        in_flight_per_connection: IN_FLIGHT,
        write_shape,
        write_shape_to_last_write,
        read_shape,
        sweep,
        rounds: rounds.clone(),
        produce_acks_all: acks_all,
        produce_acks_one: acks_one,
        fetch_history: fetched,
        produce_acks_all_to_last_write: all_last,
        produce_acks_one_to_last_write: one_last,
        produce_acks_all_vs_embedded: all_vs,
        produce_acks_one_vs_embedded: one_vs,
        fetch_vs_embedded: fetch_vs,
        latency: Some(latency),
        python: python.clone(),
        notes: "Client and broker share the machine (TCP loopback); the client is kappa's own on \
                kafka-protocol, Produce v9 and Fetch v12. Each round: raw write, raw read, \
                embedded append written, Kafka acks=1, Kafka fetch of that topic, embedded \
                consumer of it, embedded append synced, Kafka acks=-1. MB = 10^6 bytes of \
                key+value. Latency: per 1000-record batch, from its intended send time (open \
                loop) to the consumer's receipt, acks=1.",
    };
    let mut outcome = Outcome::new("kafka", serde_json::to_value(&report)?);
    let raw_writes: Vec<f64> = rounds.iter().map(|r| r.raw_write.with_fdatasync_mb_s).collect();
    let raw_reads: Vec<f64> = rounds.iter().map(|r| r.raw_read_mb_s).collect();
    outcome.noise = Some(Noise::of(&raw_writes, &raw_reads));
    let write_limit = format!("raw write {} through fdatasync", write_shape.label());
    let write_limit_last =
        format!("raw write {} to its last write", write_shape_to_last_write.label());
    let read_limit = format!("raw read {}", read_shape.label());
    // Against the embedded API: the cost of the protocol, no target.
    let beside = |name: &str, limit: &str, paired: &PairedRatio| {
        let mut f = Figure::paired("kafka", name, "MB/s", limit, paired, 0.0);
        f.target = None;
        f.verdict = None;
        f
    };
    let f = &mut outcome.figures;
    f.push(Figure::paired(
        "kafka",
        "produce acks=-1 (1 KiB, batch 1000)",
        "MB/s",
        &write_limit,
        &report.produce_acks_all,
        0.6,
    ));
    f.push(Figure::paired(
        "kafka",
        "produce acks=1 (1 KiB, batch 1000)",
        "MB/s",
        &write_limit,
        &report.produce_acks_one,
        0.7,
    ));
    f.push(Figure::paired(
        "kafka",
        "fetch of history",
        "MB/s",
        &read_limit,
        &report.fetch_history,
        0.7,
    ));
    f.push(beside(
        "produce acks=-1 to the last ack (old timing)",
        &write_limit_last,
        &report.produce_acks_all_to_last_write,
    ));
    f.push(beside(
        "produce acks=1 to the last ack (old timing)",
        &write_limit_last,
        &report.produce_acks_one_to_last_write,
    ));
    f.push(beside(
        "produce acks=-1 / embedded synced",
        "embedded synced",
        &report.produce_acks_all_vs_embedded,
    ));
    f.push(beside(
        "produce acks=1 / embedded written",
        "embedded written",
        &report.produce_acks_one_vs_embedded,
    ));
    f.push(beside("fetch / embedded consumer", "embedded consumer", &report.fetch_vs_embedded));
    if let Some(l) = &report.latency {
        f.push(
            Figure::one_run("kafka", "produce->consume p99 at 50% of acks=1 max", l.p99_us, "us")
                .statistic(format!("p99 of {} batches", l.samples))
                .less_than(2000.0),
        );
    }
    if let Some(l) = &report.latency {
        f.push(
            Figure::one_run(
                "kafka",
                "raw write of one batch p99 (queue depth 1)",
                l.raw_batch_write_p99_us,
                "us",
            )
            .statistic(
                "the floor under produce->consume: acks=1 visibility waits for this write"
                    .to_string(),
            ),
        );
        f.push(
            Figure::one_run(
                "kafka",
                "raw write of one batch p99, synced as the log",
                l.raw_batch_write_synced_p99_us,
                "us",
            )
            .statistic(format!(
                "the same writes synced as the log: a background fdatasync at {} MiB \
                 unsynced, none past twice that",
                l.sync_every_bytes >> 20
            )),
        );
    }
    outcome.latencies.push(LatencyCurve::of("kafka produce->consume at 50%", &histogram));
    for (key, name) in [
        ("produce_records_s", "confluent-kafka produce (Python)"),
        ("consume_records_s", "confluent-kafka consume (Python)"),
    ] {
        if let Some(rate) = python.get(key).and_then(serde_json::Value::as_f64) {
            f.push(Figure::one_run("kafka", name, rate, "rec/s"));
        }
    }
    Ok(outcome)
}
