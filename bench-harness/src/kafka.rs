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

/// One Produce request for `topic`/0 carrying `batch`.
fn produce_request(topic: &str, acks: i16, batch: &Bytes) -> ProduceRequest {
    ProduceRequest::default().with_acks(acks).with_timeout_ms(30_000).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch.clone()))]),
    ])
}

/// A batch of 1000 records of 1 KiB whose base timestamp is `stamp` (the latency run numbers
/// its batches that way).
fn batch(stamp: i64) -> Bytes {
    let value = vec![0x5au8; VALUE_BYTES];
    let keys: Vec<[u8; KEY_BYTES]> = (0..BATCH)
        .map(|i| {
            let mut k = [b'k'; KEY_BYTES];
            k[..8].copy_from_slice(&(i as u64).to_be_bytes());
            k
        })
        .collect();
    let records: Vec<Record<'_>> =
        keys.iter().map(|k| Record::new(stamp, Some(k.as_slice()), &value)).collect();
    Bytes::from(record_batch(&records, ProducerInfo::default(), Compression::None))
}

fn check_produce(response: &ProduceResponse) -> anyhow::Result<()> {
    let p = response
        .responses
        .first()
        .and_then(|t| t.partition_responses.first())
        .context("an empty produce response")?;
    anyhow::ensure!(p.error_code == 0, "produce failed with error {}", p.error_code);
    Ok(())
}

/// Produces `batches` batches into `topic` over `CONNECTIONS` connections with `IN_FLIGHT`
/// requests each, until the last is acknowledged (timed by `timed`).
fn produce(addr: std::net::SocketAddr, topic: &str, acks: i16, batches: u64) -> anyhow::Result<()> {
    let payload = batch(0);
    let next = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (payload, next, topic) = (payload.clone(), next.clone(), topic.to_string());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut client = Client::connect(addr)?;
                // Encoded once; each send only sets the correlation id in place.
                let request = produce_request(&topic, acks, &payload);
                let mut frame = encode_request(PRODUCE_VERSION, &request, 0, "kappa-bench")?;
                let mut pending = std::collections::VecDeque::new();
                loop {
                    while pending.len() < IN_FLIGHT
                        && next.fetch_add(1, Ordering::Relaxed) < batches
                    {
                        pending.push_back(client.send_encoded(&mut frame)?);
                    }
                    let Some(correlation) = pending.pop_front() else { return Ok(()) };
                    check_produce(
                        &client.receive::<ProduceRequest>(PRODUCE_VERSION, correlation)?,
                    )?;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("a producer thread panicked"))??;
    }
    Ok(())
}

fn fetch_request(topic: &str, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(64 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(FETCH_PARTITION_BYTES)])])
}

/// (records, next offset, base timestamps) of fetched batches, from their v2 headers.
fn batches_in(records: &[u8]) -> anyhow::Result<(u64, i64, Vec<i64>)> {
    let (mut count, mut next, mut stamps, mut at) = (0u64, -1i64, Vec::new(), 0usize);
    while at + 61 <= records.len() {
        let base = i64::from_be_bytes(records[at..at + 8].try_into()?);
        let length = i32::from_be_bytes(records[at + 8..at + 12].try_into()?) as usize;
        let delta = i32::from_be_bytes(records[at + 23..at + 27].try_into()?);
        stamps.push(i64::from_be_bytes(records[at + 27..at + 35].try_into()?));
        count += u64::try_from(i32::from_be_bytes(records[at + 57..at + 61].try_into()?))?;
        next = base + i64::from(delta) + 1;
        at += 12 + length;
    }
    Ok((count, next, stamps))
}

/// Fetches `topic`/0 from offset 0 until `records` are read; MB/s of key+value bytes.
fn fetch_history(addr: std::net::SocketAddr, topic: &str, records: u64) -> anyhow::Result<f64> {
    let mut client = Client::connect(addr)?;
    crate::perfctl::profiling(true);
    let started = Instant::now();
    let (mut offset, mut read) = (0i64, 0u64);
    while read < records {
        let response: FetchResponse =
            client.call(FETCH_VERSION, &fetch_request(topic, offset, 500))?;
        let p = &response.responses[0].partitions[0];
        anyhow::ensure!(p.error_code == 0, "fetch failed with error {}", p.error_code);
        let (count, next, _) = batches_in(p.records.as_deref().unwrap_or(&[]))?;
        anyhow::ensure!(count > 0, "a fetch at offset {offset} of {records} returned nothing");
        read += count;
        offset = next;
    }
    let elapsed = started.elapsed();
    crate::perfctl::profiling(false);
    Ok(mb_s(read * (VALUE_BYTES + KEY_BYTES) as u64, elapsed))
}

/// What the latency run measured: per batch, from its intended send time to the consumer's
/// receipt (the figure), and the stages before it (where a slow figure comes from).
struct LatencyRun {
    consumed: hdrhistogram::Histogram<u64>,
    /// Due time to the end of the request's write on the producer's socket.
    sent: hdrhistogram::Histogram<u64>,
    /// Due time to the Produce response's arrival.
    acked: hdrhistogram::Histogram<u64>,
    /// Per batch, Produce response arrival to consumer arrival.
    after_ack: hdrhistogram::Histogram<u64>,
    /// Batches whose fetch was sent before their Produce response arrived.
    fetch_waiting: u64,
}

/// Open-loop produce at `batches_s` for `seconds`, a long-polling consumer; latency per batch
/// from its intended send time to its arrival at the consumer.
fn latency(
    addr: std::net::SocketAddr,
    topic: &str,
    batches_s: f64,
    seconds: f64,
    client_cpu: Option<usize>,
) -> anyhow::Result<LatencyRun> {
    let pin = move || {
        if let Some(id) = client_cpu {
            core_affinity::set_for_current(core_affinity::CoreId { id });
        }
    };
    let total = (batches_s * seconds).max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / batches_s);
    // Requests are encoded before the clock starts: the schedule measures the broker.
    let requests: Vec<Bytes> = (0..total)
        .map(|i| {
            let request = produce_request(topic, 1, &batch(i as i64));
            encode_request(PRODUCE_VERSION, &request, i as i32 + 1, "kappa-bench")
                .map(|b| b.freeze())
        })
        .collect::<Result<_, _>>()?;
    let origin = Instant::now() + Duration::from_millis(200);
    let due = move |i: u64| origin + interval.mul_f64(i as f64);
    let deadline = due(total) + Duration::from_secs(60);
    let consumer_topic = topic.to_string();
    type Arrivals = Vec<(u64, Instant, Instant)>;
    let consumer =
        std::thread::spawn(move || -> anyhow::Result<(hdrhistogram::Histogram<u64>, Arrivals)> {
            pin();
            let mut client = Client::connect(addr)?;
            let mut h = crate::new_histogram();
            // (batch, arrival, when the fetch that brought it was sent).
            let mut arrivals = Vec::with_capacity(total as usize);
            let (mut offset, mut seen) = (0i64, 0u64);
            while seen < total {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the consumer saw {seen} of {total} batches"
                );
                let asked = Instant::now();
                let response: FetchResponse =
                    client.call(FETCH_VERSION, &fetch_request(&consumer_topic, offset, 500))?;
                let arrived = Instant::now();
                let p = &response.responses[0].partitions[0];
                anyhow::ensure!(p.error_code == 0, "fetch failed with error {}", p.error_code);
                let (_, next, stamps) = batches_in(p.records.as_deref().unwrap_or(&[]))?;
                for stamp in stamps {
                    let stamp = u64::try_from(stamp)?;
                    h.saturating_record(
                        arrived.saturating_duration_since(due(stamp)).as_nanos() as u64
                    );
                    arrivals.push((stamp, arrived, asked));
                    seen += 1;
                }
                offset = offset.max(next);
            }
            Ok((h, arrivals))
        });
    let producer = Client::connect(addr)?;
    // Acknowledgements are read on another thread so sends keep their schedule.
    let ack_stream = producer.stream().try_clone()?;
    let acks = std::thread::spawn(
        move || -> anyhow::Result<(hdrhistogram::Histogram<u64>, Vec<Instant>)> {
            pin();
            let mut reader = AckReader { stream: ack_stream };
            let mut h = crate::new_histogram();
            let mut arrivals = Vec::with_capacity(total as usize);
            for i in 0..total {
                reader.next()?;
                let now = Instant::now();
                h.saturating_record(now.saturating_duration_since(due(i)).as_nanos() as u64);
                arrivals.push(now);
            }
            Ok((h, arrivals))
        },
    );
    // The sends on a thread of their own too, so a pinned run pins all three.
    let sender = std::thread::spawn(move || -> anyhow::Result<hdrhistogram::Histogram<u64>> {
        pin();
        let mut sent = crate::new_histogram();
        let mut stream = producer.stream();
        for (i, request) in requests.iter().enumerate() {
            let due = due(i as u64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            std::io::Write::write_all(&mut stream, request)?;
            sent.saturating_record(Instant::now().saturating_duration_since(due).as_nanos() as u64);
        }
        Ok(sent)
    });
    let sent = sender.join().map_err(|_| anyhow::anyhow!("the sender panicked"))??;
    let (acked, ack_times) =
        acks.join().map_err(|_| anyhow::anyhow!("the ack reader panicked"))??;
    let (consumed, arrivals) =
        consumer.join().map_err(|_| anyhow::anyhow!("the consumer panicked"))??;
    let mut after_ack = crate::new_histogram();
    let mut fetch_waiting = 0;
    for (batch, arrived, asked) in arrivals {
        let Some(&acked_at) = ack_times.get(batch as usize) else { continue };
        after_ack.saturating_record(arrived.saturating_duration_since(acked_at).as_nanos() as u64);
        fetch_waiting += u64::from(asked < acked_at);
    }
    Ok(LatencyRun { consumed, sent, acked, after_ack, fetch_waiting })
}

/// The embedded API's side of a pair: the same records (1000 keyed 1 KiB records per packed
/// batch) appended by `CONNECTIONS` producer threads with `IN_FLIGHT` batches pending each, at
/// `durability`, until the last is acknowledged (timed by `timed`).
fn embedded_produce(
    engine: &Arc<Engine>,
    topic: &str,
    durability: Durability,
    batches: u64,
) -> anyhow::Result<()> {
    let value = vec![0x5au8; VALUE_BYTES];
    let mut packed = ProducerBatch::with_capacity(BATCH, BATCH * (VALUE_BYTES + KEY_BYTES));
    for i in 0..BATCH {
        let mut k = [b'k'; KEY_BYTES];
        k[..8].copy_from_slice(&(i as u64).to_be_bytes());
        packed.push(Some(&k), &value, Some(0));
    }
    let next = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let producer = engine.producer().with_durability(durability);
            let (packed, next, topic) = (packed.clone(), next.clone(), topic.to_string());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut pending = std::collections::VecDeque::new();
                loop {
                    while pending.len() < IN_FLIGHT
                        && next.fetch_add(1, Ordering::Relaxed) < batches
                    {
                        pending.push_back(producer.send_packed_nowait(&topic, packed.clone())?);
                    }
                    let Some(acks) = pending.pop_front() else { return Ok(()) };
                    for ack in acks {
                        ack.wait()?;
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("a producer thread panicked"))??;
    }
    Ok(())
}

/// The embedded consumer reading `topic`/0 from the beginning until `records` are read; MB/s of
/// key+value bytes (it touches each record's key and value, as a fetch's client would decode them).
fn embedded_read(engine: &Arc<Engine>, topic: &str, records: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut consumer = engine.consumer(topic, 0, Seek::Beginning)?;
    let (mut read, mut bytes) = (0u64, 0u64);
    while read < records {
        let batch = consumer
            .next_batch_timeout(Duration::from_secs(30))?
            .with_context(|| format!("the embedded consumer stalled at {read} of {records}"))?;
        for r in batch.records() {
            bytes += (r.key().map_or(0, <[u8]>::len) + r.value().len()) as u64;
            read += 1;
        }
    }
    Ok(mb_s(bytes, started.elapsed()))
}

/// The log's own scan of `topic`/0 on its shard, from the beginning until `records` are read
/// (`kappa-bench storage`'s scan, on the engine's log): MB/s of key+value bytes, touching each
/// record's key and value as the consumers do.
fn engine_scan(engine: &Arc<Engine>, topic: &str, records: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let bytes = engine.run_on_partition(topic, 0, move |log| async move {
        let mut reader = log.reader(Seek::Beginning)?;
        let (mut read, mut bytes) = (0u64, 0u64);
        while read < records {
            let Some(batch) = reader.next_batch().await? else { break };
            for r in batch.records() {
                bytes += (r.key().map_or(0, <[u8]>::len) + r.value().len()) as u64;
                read += 1;
            }
            glommio::yield_if_needed().await;
        }
        Ok::<_, kappa_engine::storage::Error>((read, bytes))
    })??;
    anyhow::ensure!(bytes.0 >= records, "the scan stopped at {} of {records}", bytes.0);
    Ok(mb_s(bytes.1, started.elapsed()))
}

/// `--history-only`: see `Args::history_only`. Returns the rounds as JSON.
fn history_only(
    engine: &Arc<Engine>,
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
    size_mib: u64,
    pairs: usize,
    batches: u64,
) -> anyhow::Result<serde_json::Value> {
    let topic = "history";
    let records = batches * BATCH as u64;
    engine.create_topic(topic, TopicConfig::new(1))?;
    produce(addr, topic, 1, batches)?;
    engine.run_on_partition(topic, 0, |log| async move { log.sync().await })??;
    let read_shape = crate::limit::engine_read_shape();
    let names = ["scan", "consumer", "fetch"];
    let mut rows = Vec::new();
    let mut pairs_of: [Pairs; 5] = Default::default();
    for round in 0..pairs {
        let (_, raw_reads) = crate::limit::raw_runs_blocking(
            dir,
            size_mib * MIB,
            1,
            crate::limit::engine_write_shape(),
            Some(read_shape),
        )?;
        let raw = *raw_reads.first().context("no raw read")?;
        let mut rates = [0.0f64; 3];
        for k in 0..names.len() {
            let which = (k + round) % names.len();
            rates[which] = match which {
                0 => engine_scan(engine, topic, records)?,
                1 => embedded_read(engine, topic, records)?,
                _ => fetch_history(addr, topic, records)?,
            };
        }
        let [scan, consumer, fetch] = rates;
        eprintln!(
            "  round {}: raw read {} {raw:.0}, scan {scan:.0}, consumer {consumer:.0}, fetch \
             {fetch:.0} MB/s; fetch/scan {:.2}, consumer/scan {:.2}, fetch/raw {:.2} (load {})",
            round + 1,
            read_shape.label(),
            fetch / scan,
            consumer / scan,
            fetch / raw,
            std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
        );
        pairs_of[0].push(raw, scan);
        pairs_of[1].push(raw, consumer);
        pairs_of[2].push(raw, fetch);
        pairs_of[3].push(scan, fetch);
        pairs_of[4].push(scan, consumer);
        rows.push(serde_json::json!({
            "raw_read_mb_s": raw, "scan_mb_s": scan, "consumer_mb_s": consumer, "fetch_mb_s": fetch,
        }));
    }
    let [scan, consumer, fetch, fetch_vs_scan, consumer_vs_scan] = pairs_of.map(|p| p.summary());
    for (name, p) in [
        ("scan / raw read", &scan),
        ("consumer / raw read", &consumer),
        ("fetch / raw read", &fetch),
        ("fetch / scan", &fetch_vs_scan),
        ("consumer / scan", &consumer_vs_scan),
    ] {
        eprintln!(
            "  {name}: {:.2} [{:.2}-{:.2}] ({} pairs; {:.0} [{:.0}-{:.0}] against {:.0} \
             [{:.0}-{:.0}] MB/s)",
            p.ratio_median,
            p.ratio_min,
            p.ratio_max,
            p.pairs,
            p.engine.median,
            p.engine.min,
            p.engine.max,
            p.limit.median,
            p.limit.min,
            p.limit.max
        );
    }
    Ok(serde_json::json!({
        "scenario": "kafka", "history_only": rows, "read_shape": read_shape,
        "scan": scan, "consumer": consumer, "fetch": fetch,
        "fetch_vs_scan": fetch_vs_scan, "consumer_vs_scan": consumer_vs_scan,
    }))
}

/// Reads Produce responses off a cloned stream (the sender's correlation ids are not needed:
/// the broker answers in order).
struct AckReader {
    stream: std::net::TcpStream,
}

impl AckReader {
    fn next(&mut self) -> anyhow::Result<()> {
        use std::io::Read;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let mut body = vec![0u8; usize::try_from(i32::from_be_bytes(size))?];
        self.stream.read_exact(&mut body)?;
        let mut body = Bytes::from(body);
        use kafka_protocol::protocol::{Decodable, HeaderVersion};
        kafka_protocol::messages::ResponseHeader::decode(
            &mut body,
            ProduceResponse::header_version(PRODUCE_VERSION),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let response = ProduceResponse::decode(&mut body, PRODUCE_VERSION)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        check_produce(&response)
    }
}

const PYTHON: &str = r#"
import json, sys, time
from confluent_kafka import Producer, Consumer, TopicPartition
bs, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
value = b"x" * 1024
p = Producer({"bootstrap.servers": bs, "acks": "1", "linger.ms": 5, "batch.num.messages": 1000,
              "batch.size": 2000000, "queue.buffering.max.messages": 1000000})
start = time.time()
for i in range(n):
    while True:
        try:
            p.produce(topic, key=b"%016d" % i, value=value)
            break
        except BufferError:
            p.poll(0.01)
p.flush(120)
produce_s = time.time() - start
c = Consumer({"bootstrap.servers": bs, "group.id": "bench", "enable.auto.commit": False,
              "fetch.max.bytes": 52428800})
# assign, not subscribe: no group join in the timed span; timed from assign to the last record.
got, start = 0, time.time()
c.assign([TopicPartition(topic, 0, 0)])
while got < n and time.time() - start < 300:
    msgs = c.consume(10000, 1.0)
    got += sum(1 for m in msgs if not m.error())
consume_s = time.time() - start
c.close()
print(json.dumps({"records": n, "produce_records_s": n / produce_s, "consume_records_s": got / consume_s, "consumed": got}))
"#;

fn python_rates(addr: std::net::SocketAddr, records: u64) -> serde_json::Value {
    let output = std::process::Command::new("python3")
        .args(["-c", PYTHON, &addr.to_string(), "kafka-python-bench", &records.to_string()])
        .output();
    match output {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .rev()
                .find_map(|l| serde_json::from_str(l).ok())
                .unwrap_or_else(|| serde_json::json!({ "error": format!("no JSON in {text}") }))
        }
        Ok(out) => serde_json::json!({
            "error": format!("python3 failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""))
        }),
        Err(e) => serde_json::json!({ "error": format!("python3: {e}") }),
    }
}

/// The floor under the latency figure: one batch's bytes (rounded up to 4 KiB) written with
/// O_DIRECT at queue depth 1, `samples` times on the latency run's schedule (`batches_s`; a
/// write due while the one before is still running starts when it ends), as acks=1 visibility
/// needs one write of the batch to complete before a consumer may see it. With `sync_every`, the
/// writes are synced as the log syncs them under any acks (its unsynced bound,
/// `LogConfig::unsynced_bytes_max`, is twice `sync_every`): an fdatasync starts in the background
/// when `sync_every` bytes are written and not synced (one at a time), and a write that would
/// leave more than twice that unsynced waits for it. Each sample is from when its write could
/// start to its completion (a wait on the bound included).
fn raw_batch_write_latency(
    dir: &std::path::Path,
    bytes: usize,
    samples: usize,
    batches_s: f64,
    sync_every: Option<u64>,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    use std::cell::Cell;
    use std::rc::Rc;
    type Syncing = (glommio::Task<std::io::Result<u64>>, Rc<Cell<bool>>);
    /// An fdatasync in its own task; it covers the `target` bytes written before it started.
    fn start_sync(file: &Rc<glommio::io::DmaFile>, target: u64) -> Syncing {
        let (file, done) = (file.clone(), Rc::new(Cell::new(false)));
        let finished = done.clone();
        let task = glommio::spawn_local(async move {
            let synced = file.fdatasync().await.map_err(std::io::Error::from);
            finished.set(true);
            synced.map(|()| target)
        });
        (task, done)
    }
    let path = dir.join("batch-write-latency.bin");
    let len = bytes.next_multiple_of(4096) as u64;
    let interval = Duration::from_secs_f64(1.0 / batches_s.max(1.0));
    crate::on_executor("bench-raw-latency", 64 << 20, move || async move {
        let file = Rc::new(kappa_storage::io::open_rw(&path).await?);
        let mut latency = crate::new_histogram();
        let mut sync: Option<Syncing> = None;
        let (mut written, mut synced) = (0u64, 0u64);
        let origin = Instant::now();
        for i in 0..samples as u64 {
            let due = origin + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                glommio::timer::sleep(due - now).await;
            }
            let mut buf = file.alloc_dma_buffer(len as usize);
            buf.as_bytes_mut().fill(i as u8 | 1);
            let started = Instant::now();
            if let Some(every) = sync_every {
                while written + len > synced + 2 * every {
                    match sync.take() {
                        Some((task, _)) => synced = task.await.context("fdatasync")?,
                        None => sync = Some(start_sync(&file, written)),
                    }
                }
            }
            file.write_at(buf, i * len).await.map_err(std::io::Error::from).context("write")?;
            latency.saturating_record(started.elapsed().as_nanos() as u64);
            written += len;
            if let Some(every) = sync_every {
                if sync.as_ref().is_some_and(|(_, done)| done.get()) {
                    let (task, _) = sync.take().expect("checked");
                    synced = task.await.context("fdatasync")?;
                }
                if sync.is_none() && written - synced >= every {
                    sync = Some(start_sync(&file, written));
                }
            }
        }
        if let Some((task, _)) = sync {
            task.await.context("fdatasync")?;
        }
        if let Ok(file) = Rc::try_unwrap(file) {
            let _ = file.close().await;
        }
        std::fs::remove_file(&path)?;
        Ok(latency)
    })
}

/// The latency run on a fresh topic at `offered` batches/s; its summary and the histogram of the
/// figure (produce to consume).
/// How a latency run is driven: `offered` batches/s (`fraction` of the acks=1 rate) for
/// `seconds`, the floor synced every `sync_every` bytes, the client threads on `client_cpu`.
struct LatencyPlan {
    offered: f64,
    fraction: f64,
    seconds: f64,
    sync_every: u64,
    client_cpu: Option<usize>,
}

fn latency_phase(
    engine: &Arc<Engine>,
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
    plan: LatencyPlan,
) -> anyhow::Result<(Latency, hdrhistogram::Histogram<u64>)> {
    let LatencyPlan { offered, fraction, seconds, sync_every, client_cpu } = plan;
    engine.create_topic("kafka-latency", TopicConfig::new(1))?;
    let run = latency(addr, "kafka-latency", offered, seconds, client_cpu)?;
    engine.delete_topic("kafka-latency")?;
    let samples = (run.consumed.len() as usize).clamp(20, 200);
    let bytes = batch(0).len();
    let raw = raw_batch_write_latency(dir, bytes, samples, offered, None)?;
    let synced = raw_batch_write_latency(dir, bytes, samples, offered, Some(sync_every))?;
    let us = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let histogram = run.consumed;
    let latency = Latency {
        offered_batches_s: offered,
        offered_fraction_of_acks_one_max: fraction,
        samples: histogram.len(),
        p50_us: us(&histogram, 0.5),
        p99_us: us(&histogram, 0.99),
        p999_us: us(&histogram, 0.999),
        max_us: histogram.max() as f64 / 1000.0,
        sent_p50_us: us(&run.sent, 0.5),
        sent_p99_us: us(&run.sent, 0.99),
        acked_p50_us: us(&run.acked, 0.5),
        acked_p99_us: us(&run.acked, 0.99),
        consumed_after_ack_p50_us: us(&run.after_ack, 0.5),
        consumed_after_ack_p99_us: us(&run.after_ack, 0.99),
        fetch_waiting_fraction: run.fetch_waiting as f64 / run.after_ack.len().max(1) as f64,
        raw_batch_write_p50_us: us(&raw, 0.5),
        raw_batch_write_p99_us: us(&raw, 0.99),
        raw_batch_write_synced_p50_us: us(&synced, 0.5),
        raw_batch_write_synced_p99_us: us(&synced, 0.99),
        sync_every_bytes: sync_every,
    };
    eprintln!(
        "  produce-to-consume at {offered:.0} batches/s: p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us ({} batches); request written p50 {:.0} p99 {:.0} us, acked p50 {:.0} p99 {:.0} us",
        latency.p50_us, latency.p99_us, latency.p999_us, latency.samples,
        latency.sent_p50_us, latency.sent_p99_us, latency.acked_p50_us, latency.acked_p99_us,
    );
    eprintln!(
        "  stages: consumer arrival after the Produce response p50 {:.0} us, p99 {:.0} us; {:.0}% of batches found their long poll waiting",
        latency.consumed_after_ack_p50_us,
        latency.consumed_after_ack_p99_us,
        latency.fetch_waiting_fraction * 100.0
    );
    eprintln!(
        "  floor: one batch written raw (O_DIRECT, queue depth 1, same schedule) p50 {:.0} us, p99 {:.0} us; synced as the log (fdatasync at {} MiB unsynced) p50 {:.0} us, p99 {:.0} us",
        latency.raw_batch_write_p50_us,
        latency.raw_batch_write_p99_us,
        sync_every >> 20,
        latency.raw_batch_write_synced_p50_us,
        latency.raw_batch_write_synced_p99_us
    );
    Ok((latency, histogram))
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
