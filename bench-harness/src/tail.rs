//! The `tail` scenario: append-to-tail latency at a fixed offered load.
//!
//! First the maximum rate of single-record appends (100-byte values, `written`, one producer thread
//! with a window of outstanding sends) is measured; then an **open-loop** producer offers half of
//! it on a fixed schedule while a tail consumer follows the partition. Each record carries its
//! *intended* send time, and latency is measured from that, not from when the producer got around
//! to sending: a stall delays every record behind it and all of them count, so the histogram is
//! free of coordinated omission.

use std::time::{Duration, Instant};

use anyhow::Context;
use kappa_engine::{Durability, Engine, ProducerRecord, Seek, TopicConfig};
use serde::Serialize;

use crate::ingest::Percentiles;
use crate::report::{Figure, Outcome};
use crate::Machine;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::Common,
    /// Seconds of open-loop load measured (after a one-second warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Offered load as a fraction of the measured maximum.
    #[arg(long, default_value_t = 0.5)]
    load: f64,
}

const VALUE_BYTES: usize = 100;

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    machine: Machine,
    shards: usize,
    shard_cpu: Option<usize>,
    client_cpus: Vec<usize>,
    value_bytes: usize,
    durability: &'static str,
    max_records_s: f64,
    offered_records_s: f64,
    load_fraction: f64,
    measured_seconds: f64,
    records_measured: u64,
    append_to_tail_latency_us: Percentiles,
    /// On the shard: from taking an append to its ack (the storage write path alone).
    shard_ack_latency_us: Percentiles,
    target_p99_us: f64,
    target_p999_us: f64,
    meets_targets: bool,
}

/// Pins the calling thread to one of `cpus` (the `index`-th, wrapping); no-op when there are none.
fn pin_to(cpus: &[usize], index: usize) {
    if !cpus.is_empty() {
        core_affinity::set_for_current(core_affinity::CoreId { id: cpus[index % cpus.len()] });
    }
}

pub fn scenario(args: Args) -> anyhow::Result<Outcome> {
    let (seconds, warm_up) = if args.common.quick { (0.5, 0.2) } else { (args.seconds, 1.0) };
    anyhow::ensure!(args.load > 0.0 && args.load <= 1.0, "--load must be in (0, 1]");
    let temp = args.common.scratch("tail")?;
    let machine = Machine::probe(temp.path());

    let (max, _) = crate::ingest::measure(
        &temp.path().join("max"),
        VALUE_BYTES,
        Durability::Written,
        1,
        1,
        seconds.min(3.0),
    )
    .context("measuring the maximum rate")?;
    let rate = max.records_s * args.load;
    eprintln!(
        "tail: maximum {:.0} records/s; offering {:.0} records/s open loop",
        max.records_s, rate
    );

    // One shard on the last CPU; the client threads (producer, consumer) stay off it, as an
    // embedding program's threads would on a machine sized for it.
    let cpus: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    let shard_cpu = cpus.last().copied();
    let client_cpus: Vec<usize> = cpus.iter().copied().filter(|c| Some(*c) != shard_cpu).collect();
    let mut builder = Engine::builder().data_dir(temp.path().join("tail")).shards(1);
    if let Some(cpu) = shard_cpu {
        builder = builder.cpus(vec![cpu]);
    }
    let engine = builder.build()?;
    pin_to(&client_cpus, 0);
    engine.create_topic("tail", TopicConfig::new(1))?;
    let mut consumer = engine.consumer("tail", 0, Seek::End)?;
    let producer = engine.producer().with_durability(Durability::Written);
    let interval_ns = 1e9 / rate;
    let total = ((warm_up + seconds) * rate) as u64;
    let warm_up_ns = (warm_up * 1e9) as u64;
    let epoch = Instant::now();

    let sender_cpus = client_cpus.clone();
    let sender = std::thread::spawn(move || -> anyhow::Result<()> {
        pin_to(&sender_cpus, 1);
        let mut value = vec![0u8; VALUE_BYTES];
        let mut i = 0u64;
        while i < total {
            // Send every record whose intended time has come, each as its own append; then sleep
            // until the next one is due. Lateness of the sleep counts as latency (intended times).
            let now = epoch.elapsed().as_nanos() as u64;
            while i < total && ((i as f64 * interval_ns) as u64) <= now {
                let intended = (i as f64 * interval_ns) as u64;
                value[..8].copy_from_slice(&intended.to_le_bytes());
                // Fire and forget: the tail consumer is the measurement; acks are not awaited.
                drop(producer.send_batch_nowait("tail", vec![ProducerRecord::new(value.clone())])?);
                i += 1;
            }
            let next = (i as f64 * interval_ns) as u64;
            let now = epoch.elapsed().as_nanos() as u64;
            if next > now {
                std::thread::sleep(Duration::from_nanos(next - now));
            }
        }
        Ok(())
    });

    let mut latency = crate::new_histogram();
    let mut received = 0u64;
    while received < total {
        let batch = consumer
            .next_batch_timeout(Duration::from_secs(10))?
            .context("the tail stalled for 10 s")?;
        let now = epoch.elapsed().as_nanos() as u64;
        for record in batch.records() {
            let mut intended = [0u8; 8];
            intended.copy_from_slice(&record.value()[..8]);
            let intended = u64::from_le_bytes(intended);
            if intended >= warm_up_ns {
                latency.saturating_record(now.saturating_sub(intended));
            }
            received += 1;
        }
    }
    sender.join().map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    let shards = engine.shard_count();
    let mut ack = crate::new_histogram();
    for m in engine.metrics()? {
        ack.add(&m.append_ack_latency_ns)?;
    }
    let ack = Percentiles::of_ns(&ack);
    engine.shutdown()?;

    let percentiles = Percentiles::of_ns(&latency);
    let report = Report {
        scenario: "tail",
        machine,
        shards,
        shard_cpu,
        client_cpus,
        value_bytes: VALUE_BYTES,
        durability: "written",
        max_records_s: max.records_s,
        offered_records_s: rate,
        load_fraction: args.load,
        measured_seconds: seconds,
        records_measured: latency.len(),
        append_to_tail_latency_us: percentiles,
        shard_ack_latency_us: ack,
        target_p99_us: 1_000.0,
        target_p999_us: 5_000.0,
        meets_targets: percentiles.p99 < 1_000.0 && percentiles.p999 < 5_000.0,
    };
    println!(
        "append -> tail at {:.0} records/s ({:.0}% of max {:.0}): p50 {:.0} us, p90 {:.0} us, p99 {:.0} us (target < 1000), \
         p99.9 {:.0} us (target < 5000), p99.99 {:.0} us, max {:.0} us over {} records",
        rate,
        args.load * 100.0,
        max.records_s,
        percentiles.p50,
        percentiles.p90,
        percentiles.p99,
        percentiles.p999,
        percentiles.p9999,
        percentiles.max,
        percentiles.samples
    );
    println!(
        "  on the shard, append -> ack (write path alone): p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
        ack.p50, ack.p99, ack.p999, ack.max
    );
    let mut outcome = Outcome::new("tail", serde_json::to_value(&report)?);
    outcome.figures.push(Figure::plain("tail", "offered records/s (50% of max)", rate, "rec/s"));
    outcome.figures.push(Figure::plain("tail", "append->tail p50", percentiles.p50, "us"));
    outcome.figures.push(Figure::below("tail", "append->tail p99", percentiles.p99, "us", 1000.0));
    outcome.figures.push(Figure::below(
        "tail",
        "append->tail p99.9",
        percentiles.p999,
        "us",
        5000.0,
    ));
    outcome.figures.push(Figure::plain("tail", "append->tail max", percentiles.max, "us"));
    outcome.latencies.push(("append->tail (open loop)".into(), latency));
    Ok(outcome)
}
