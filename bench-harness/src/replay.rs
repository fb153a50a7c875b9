//! The `replay` scenario: rebuild a view from offset 0 on one shard, beside the disk read bandwidth.
//!
//! For 100-byte and 1 KiB records, a log of `--size-mib` (2 GiB by default) is written to a
//! one-partition topic on a one-shard engine; then a sum view per key per one-hour window is built
//! from offset 0 and timed until it has caught up. Allocations per record come from the counting
//! global allocator of this binary (every thread counts, so it is an upper bound).

use std::time::{Duration, Instant};

use anyhow::Context;
use kappa_engine::operator::{Aggregate, Window};
use kappa_engine::{Durability, Engine, ProducerBatch, TopicConfig, ViewDef};
use kappa_storage::MIB;
use serde::Serialize;

use crate::report::{Figure, Outcome};
use crate::{Machine, Spread};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::Common,
    /// Log size per record size, in MiB (key + value bytes).
    #[arg(long, default_value_t = 2048)]
    size_mib: u64,
}

const KEYS: u64 = 100;
const BATCH: usize = 1000;

#[derive(Debug, Serialize)]
struct Run {
    value_bytes: usize,
    records: u64,
    log_bytes: u64,
    seconds: f64,
    records_s: f64,
    mb_s: f64,
    allocations: u64,
    allocations_per_record: f64,
    rate_over_time: Vec<(f64, f64)>,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    machine: Machine,
    disk_read_mb_s: Spread,
    runs: Vec<Run>,
    notes: &'static str,
}

pub fn scenario(args: Args) -> anyhow::Result<Outcome> {
    let size_mib = if args.common.quick { 64 } else { args.size_mib };
    let temp = args.common.scratch("replay")?;
    let machine = Machine::probe(temp.path());
    let disk_read =
        Spread::of(&crate::storage::disk_runs(temp.path(), size_mib.min(1024), 3, true)?.1);
    eprintln!("replay: raw disk read {:.0} MB/s", disk_read.median);
    let mut runs = Vec::new();
    for value_bytes in [100usize, 1024] {
        let run =
            replay_one(&temp.path().join(format!("v{value_bytes}")), value_bytes, size_mib * MIB)
                .with_context(|| format!("replay of {value_bytes}-byte records"))?;
        eprintln!(
            "  {value_bytes:>5} B: {} records in {:.2} s: {:.2} M records/s, {:.0} MB/s, {:.4} allocations/record",
            run.records,
            run.seconds,
            run.records_s / 1e6,
            run.mb_s,
            run.allocations_per_record
        );
        runs.push(run);
    }
    let report = Report {
        scenario: "replay",
        machine,
        disk_read_mb_s: disk_read,
        runs,
        notes: "One shard, one partition, a sum view per key (100 keys) per 1-hour event-time window, \
                from offset 0 until caught up. MB = 10^6 bytes of key + value. Allocations count every \
                thread of the process during the replay.",
    };
    let mut outcome = Outcome::new("replay", serde_json::to_value(&report)?);
    outcome.figures.push(Figure::plain("replay", "disk_read_mb_s", disk_read.median, "MB/s"));
    for run in &report.runs {
        let name = format!("{} B records", run.value_bytes);
        if run.value_bytes >= 1024 {
            outcome.figures.push(Figure::against(
                "replay",
                &format!("{name} MB/s"),
                run.mb_s,
                "MB/s",
                "disk read",
                disk_read.median,
                0.7,
            ));
        } else {
            outcome.figures.push(Figure::against(
                "replay",
                &format!("{name} records/s (one core)"),
                run.records_s,
                "rec/s",
                "target 5M",
                5e6,
                1.0,
            ));
        }
        outcome.figures.push(Figure::plain(
            "replay",
            &format!("{name} allocations/record"),
            run.allocations_per_record,
            "allocs",
        ));
        outcome.bars.push((name.clone(), run.mb_s));
        outcome.series.push((format!("{name} (M records/s)"), run.rate_over_time.clone()));
    }
    outcome.bars.push(("disk read".into(), disk_read.median));
    Ok(outcome)
}

fn replay_one(dir: &std::path::Path, value_bytes: usize, size_bytes: u64) -> anyhow::Result<Run> {
    let engine = Engine::builder().data_dir(dir).shards(1).build()?;
    engine.create_topic("replay", TopicConfig::new(1))?;
    let record_bytes = (value_bytes + 8) as u64;
    let records = size_bytes / record_bytes;
    // Write the log: packed batches, acknowledged when buffered, synced at the end.
    let producer = engine.producer().with_durability(Durability::None);
    let mut value = vec![0x5Au8; value_bytes];
    let mut written = 0u64;
    let mut pending = std::collections::VecDeque::new();
    while written < records {
        let n = (records - written).min(BATCH as u64);
        let mut batch = ProducerBatch::with_capacity(n as usize, n as usize * (value_bytes + 8));
        for i in written..written + n {
            let key = (i % KEYS).to_le_bytes();
            value[..8].copy_from_slice(&(i % 1000).to_le_bytes());
            batch.push(Some(&key), &value, Some(1_700_000_000_000 + i as i64));
        }
        pending.push_back(producer.send_packed_nowait("replay", batch)?);
        if pending.len() > 16 {
            for ack in pending.pop_front().expect("non-empty") {
                ack.wait()?;
            }
        }
        written += n;
    }
    for acks in pending {
        for ack in acks {
            ack.wait()?;
        }
    }
    let log_bytes = engine.partition_offsets("replay", 0)?.size_bytes;
    let def = ViewDef::new("replay")
        .revision("sum")
        .map(|r| {
            let mut v = [0u8; 8];
            v.copy_from_slice(r.value().get(..8)?);
            Some(u64::from_le_bytes(v) as f64)
        })
        .window(Window::Tumbling { size_ms: 3_600_000 })
        .aggregate(Aggregate::Sum)
        .checkpoint_every(u64::MAX);
    let allocations_before = crate::allocations();
    let started = Instant::now();
    let view = engine.create_view("sums", def)?;
    let mut rate_over_time = Vec::new();
    let mut last = (0.0, 0u64);
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let progress = view.progress()?;
        let t = started.elapsed().as_secs_f64();
        let consumed = progress.consumed();
        if t - last.0 >= 0.1 {
            rate_over_time.push((t, (consumed - last.1) as f64 / (t - last.0) / 1e6));
            last = (t, consumed);
        }
        if progress.caught_up() && consumed >= records {
            break;
        }
        anyhow::ensure!(t < 600.0, "the replay did not finish in 10 minutes");
    }
    let seconds = started.elapsed().as_secs_f64();
    let allocations = crate::allocations() - allocations_before;
    engine.shutdown()?;
    Ok(Run {
        value_bytes,
        records,
        log_bytes,
        seconds,
        records_s: records as f64 / seconds,
        mb_s: (records * record_bytes) as f64 / 1e6 / seconds,
        allocations,
        allocations_per_record: allocations as f64 / records as f64,
        rate_over_time,
    })
}
