//! The `stall` scenario: the longest time a shard's executor could not run a ready task, under a
//! live load that rolls segments and checkpoints a large view often.
//!
//! Why: a blocking syscall on a shard thread (a `std::fs` write and fsync of a checkpoint, a
//! directory fsync at a segment roll, an unlink by retention) stops every partition of that shard
//! for as long as the disk takes, and no throughput figure shows it. The shard's own stall probe
//! (`EngineConfig::stall_probe_interval`: a live-queue task sleeping 1 ms in a loop, recording how
//! late it wakes into `ShardMetrics::executor_stall_ns`) does.
//!
//! Load: one shard pinned to the last CPU, one partition with small segments (a roll every
//! `--segment-mib`), size retention (so retention unlinks run too), and a view counting records
//! per key over `--keys` keys (a state of tens of MB) checkpointed every `--checkpoint-every`
//! records; one producer thread on the other CPUs offers `--rate` records/s of 200-byte values
//! (`written`, batches of 100, open loop) for `--seconds`. The figures are the probe's p50, p99,
//! p99.9 and maximum lateness over the measured window (the histogram at its end minus the one at
//! its start), with the rolls and checkpoints that happened in it.

use std::time::{Duration, Instant};

use anyhow::Context;
use kappa_engine::operator::{Aggregate, Window};
use kappa_engine::{
    BlockingPool, Durability, Engine, ProducerBatch, ShardMetrics, TopicConfig, ViewDef,
};
use kappa_storage::MIB;
use serde::Serialize;

use crate::report::{Figure, LatencyCurve, Outcome};
use crate::Machine;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::Common,
    /// Measured seconds of load (after a two-second warm-up).
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Records per second offered.
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// Distinct keys: the view holds one group per key, so this sizes its checkpoints.
    #[arg(long, default_value_t = 200_000)]
    keys: u64,
    /// A view checkpoint every this many records.
    #[arg(long, default_value_t = 100_000)]
    checkpoint_every: u64,
    /// Segment size in MiB (a roll each time this much is appended).
    #[arg(long, default_value_t = 4)]
    segment_mib: u64,
    /// Where the shard's blocking pool runs (checkpoint encoding, namespace work): unbound (the
    /// engine's default), other CPUs, or the shard's own CPU (glommio's default).
    #[arg(long, value_enum, default_value_t = Pool::Unbound)]
    blocking_pool: Pool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Pool {
    Others,
    Unbound,
    Shard,
}

const VALUE_BYTES: usize = 200;
const BATCH_RECORDS: u64 = 100;

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    machine: Machine,
    shard_cpu: Option<usize>,
    blocking_pool: Pool,
    offered_records_s: u64,
    sent_records_s: f64,
    measured_seconds: f64,
    keys: u64,
    value_bytes: usize,
    segment_size_bytes_max: u64,
    checkpoint_every_records: u64,
    segment_rolls: u64,
    view_checkpoints: u64,
    probe_wakeups: u64,
    stall_p50_us: f64,
    stall_p99_us: f64,
    stall_p999_us: f64,
    stall_max_us: f64,
    append_ack_p99_us: f64,
    append_ack_max_us: f64,
}

fn shard_metrics(engine: &Engine) -> anyhow::Result<ShardMetrics> {
    engine.metrics()?.into_iter().next().context("the engine has no shard")
}

/// Checkpoints a view has written so far: the records it consumed over the interval (the count
/// is deterministic: one per `every` records).
fn checkpoints(engine: &Engine, every: u64) -> anyhow::Result<u64> {
    let consumed = engine.view("stall")?.progress()?.consumed();
    Ok(consumed / every)
}

pub fn scenario(args: Args) -> anyhow::Result<Outcome> {
    let quick = args.common.quick;
    let seconds = if quick { 2.0 } else { args.seconds };
    let warm_up = if quick { 0.5 } else { 2.0 };
    anyhow::ensure!(seconds > 0.0 && args.rate > 0 && args.keys > 0, "positive flags please");
    let temp = args.common.scratch("stall")?;
    let data_dir = temp.path().join("engine");
    let machine = Machine::probe(temp.path());

    let cpus: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    let shard_cpu = cpus.last().copied();
    let client_cpus: Vec<usize> = cpus.iter().copied().filter(|c| Some(*c) != shard_cpu).collect();
    let mut builder = Engine::builder()
        .data_dir(&data_dir)
        .shards(1)
        .stall_probe_interval(Some(Duration::from_millis(1)))
        .blocking_pool(match args.blocking_pool {
            Pool::Others => BlockingPool::OtherCpus,
            Pool::Unbound => BlockingPool::Unbound,
            Pool::Shard => BlockingPool::ShardCpu,
        });
    if let Some(cpu) = shard_cpu {
        builder = builder.cpus(vec![cpu]);
    }
    let engine = builder.build().context("starting the engine")?;
    let segment_bytes = args.segment_mib * MIB;
    let mut topic = TopicConfig::new(1);
    topic.segment_size_bytes_max = Some(segment_bytes);
    // Keep about eight segments: retention unlinks one per roll in the measured window.
    topic.retention_bytes_max = Some(8 * segment_bytes);
    engine.create_topic("stall", topic)?;
    let def = ViewDef::new("stall")
        .revision("count")
        .window(Window::None)
        .aggregate(Aggregate::Count)
        .checkpoint_every(args.checkpoint_every);
    engine.create_view("stall", def)?;

    let producer = engine.producer().with_durability(Durability::Written);
    let (rate, keys) = (args.rate, args.keys);
    let total = Duration::from_secs_f64(warm_up + seconds);
    let pin = client_cpus.first().copied();
    let sender = std::thread::Builder::new().name("stall-producer".into()).spawn(move || {
        if let Some(cpu) = pin {
            core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
        }
        let value = vec![b'v'; VALUE_BYTES];
        let started = Instant::now();
        let mut sent = 0u64;
        let mut pending = std::collections::VecDeque::new();
        while started.elapsed() < total {
            // Open loop: the batch is due when the schedule says, whenever the last one finished.
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            let mut batch = ProducerBatch::with_capacity(BATCH_RECORDS as usize, 16 * 1024);
            for i in 0..BATCH_RECORDS {
                let key = format!("key-{:08}", (sent + i).wrapping_mul(0x9E37_79B9) % keys);
                batch.push(Some(key.as_bytes()), &value, None);
            }
            pending.extend(producer.send_packed_nowait("stall", batch)?);
            while pending.len() > 256 {
                pending.pop_front().expect("not empty").wait()?;
            }
            sent += BATCH_RECORDS;
        }
        for ack in pending {
            ack.wait()?;
        }
        anyhow::Ok((sent, started.elapsed()))
    })?;

    std::thread::sleep(Duration::from_secs_f64(warm_up));
    let before = shard_metrics(&engine)?;
    let checkpoints_before = checkpoints(&engine, args.checkpoint_every)?;
    let measured = Instant::now();
    let (sent, elapsed) =
        sender.join().map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    let measured_seconds = measured.elapsed().as_secs_f64();
    let after = shard_metrics(&engine)?;
    let checkpoints_after = checkpoints(&engine, args.checkpoint_every)?;
    engine.shutdown()?;

    let mut stall = after.executor_stall_ns.clone();
    stall.subtract(&before.executor_stall_ns).context("stall histogram")?;
    let mut ack = after.append_ack_latency_ns.clone();
    ack.subtract(&before.append_ack_latency_ns).context("ack histogram")?;
    let bytes = after.bytes_appended.saturating_sub(before.bytes_appended);
    // Rolls by appended bytes: retention keeps the segment count flat, so it cannot be counted.
    let segment_rolls = bytes / segment_bytes;
    let us = |ns: u64| ns as f64 / 1e3;
    let report = Report {
        scenario: "stall",
        machine,
        shard_cpu,
        blocking_pool: args.blocking_pool,
        offered_records_s: rate,
        sent_records_s: sent as f64 / elapsed.as_secs_f64(),
        measured_seconds,
        keys,
        value_bytes: VALUE_BYTES,
        segment_size_bytes_max: segment_bytes,
        checkpoint_every_records: args.checkpoint_every,
        segment_rolls,
        view_checkpoints: checkpoints_after.saturating_sub(checkpoints_before),
        probe_wakeups: stall.len(),
        stall_p50_us: us(stall.value_at_quantile(0.5)),
        stall_p99_us: us(stall.value_at_quantile(0.99)),
        stall_p999_us: us(stall.value_at_quantile(0.999)),
        stall_max_us: us(stall.max()),
        append_ack_p99_us: us(ack.value_at_quantile(0.99)),
        append_ack_max_us: us(ack.max()),
    };
    eprintln!(
        "stall: {:.0} records/s for {measured_seconds:.1} s, {} rolls, {} checkpoints of {} keys: \
         executor stall p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us ({} probes; \
         blocking pool: {:?})",
        report.sent_records_s,
        report.segment_rolls,
        report.view_checkpoints,
        keys,
        report.stall_p50_us,
        report.stall_p99_us,
        report.stall_p999_us,
        report.stall_max_us,
        report.probe_wakeups,
        report.blocking_pool,
    );
    let mut outcome = Outcome::new("stall", serde_json::to_value(&report)?);
    let name = |what: &str| format!("executor stall {what} (rolls + checkpoints under load)");
    let samples = format!("of {} probe wake-ups", report.probe_wakeups);
    outcome.figures.push(
        Figure::one_run("stall", &name("p99"), report.stall_p99_us, "us")
            .statistic(format!("p99 {samples}")),
    );
    outcome.figures.push(
        Figure::one_run("stall", &name("max"), report.stall_max_us, "us")
            .statistic(format!("max {samples}")),
    );
    outcome.latencies.push(LatencyCurve::of("executor stall (probe lateness)", &stall));
    Ok(outcome)
}
