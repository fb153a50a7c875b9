//! The `replay` scenario: rebuild a view from offset 0 on one shard, paired with raw-device reads.
//!
//! For 100-byte and 1 KiB records, a log of `--size-mib` (2 GiB by default) is written to a
//! one-partition topic on a one-shard engine; then, `--pairs` times, a raw read of a file of the
//! same size (in the best read shape of a sweep) is followed by a new sum view per key per
//! one-hour window built from offset 0 and timed until it has caught up. 1 KiB replays are
//! divided by the raw read just before them; 100-byte replays are CPU-bound and judged in
//! records/s against a fixed target, over the same repeats. Allocations per record come from the
//! counting global allocator of this binary (every thread counts, so it is an upper bound).

use std::time::{Duration, Instant};

use anyhow::Context;
use kappa_engine::operator::{Aggregate, Window};
use kappa_engine::{Durability, Engine, ProducerBatch, ReplayConfig, TopicConfig, ViewDef};
use kappa_storage::{LogConfig, KIB, MIB};
use serde::Serialize;

use crate::limit::{Shape, Sweep};
use crate::report::{Figure, Noise, Outcome, Series};
use crate::stats::{PairedRatio, Pairs};
use crate::{Machine, Spread};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::Common,
    /// Log size per record size, in MiB (key + value bytes).
    #[arg(long, default_value_t = 2048)]
    size_mib: u64,
    /// Replays per record size, each after a raw read.
    #[arg(long, default_value_t = crate::run::PAIRS_MIN)]
    pairs: usize,
    /// The size of one replay read in KiB (`LogConfig::read_buffer_size_bytes`; a read ends on a
    /// frame boundary, so with frames larger than half of it a read is one frame). Default: the
    /// log's own.
    #[arg(long)]
    read_size_kib: Option<usize>,
    /// Replay reads in flight on the shard (`ReplayConfig::read_ahead_max`, the ceiling of the
    /// shard's shared replay read budget). Default: the engine's own.
    #[arg(long)]
    read_ahead: Option<usize>,
}

const KEYS: u64 = 100;
/// Records per packed batch of the history written (`write_packed`).
const BATCH: usize = 1000;
/// The replay target for small records: records/s on one core.
const TARGET_RECORDS_S: f64 = 5e6;

#[derive(Debug, Clone, Serialize)]
struct Run {
    records: u64,
    seconds: f64,
    records_s: f64,
    mb_s: f64,
    allocations: u64,
    allocations_per_record: f64,
    rate_over_time: Vec<(f64, f64)>,
}

#[derive(Debug, Serialize)]
struct BySize {
    value_bytes: usize,
    records: u64,
    log_bytes: u64,
    /// The raw read before each replay (1 KiB records only).
    raw_read_mb_s: Vec<f64>,
    runs: Vec<Run>,
    records_s: Spread,
    mb_s: Spread,
    allocations_per_record: Spread,
    /// 1 KiB records: replay MB/s over the raw read just before it.
    paired: Option<PairedRatio>,
}

/// One point of the scaling curve: replay records/s with this many shards.
#[derive(Debug, Clone, Serialize)]
struct ScalingPoint {
    value_bytes: usize,
    shards: usize,
    records_s: Spread,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    machine: Machine,
    sweep: Sweep,
    read_shape: Shape,
    /// The engine's replay reads: read size (`LogConfig::read_buffer_size_bytes`) x the shard's
    /// replay read budget (`ReplayConfig::read_ahead_max`).
    engine_read_shape: Shape,
    sizes: Vec<BySize>,
    /// Replay records/s by shard count (one shard today; the scaling scenario adds more).
    records_per_s_by_shards: Vec<ScalingPoint>,
    notes: &'static str,
}

pub fn scenario(args: Args) -> anyhow::Result<Outcome> {
    let quick = args.common.quick;
    let (size_mib, pairs) = if quick { (64, 2) } else { (args.size_mib, args.pairs.max(1)) };
    let log_config = LogConfig {
        read_buffer_size_bytes: args
            .read_size_kib
            .map_or(LogConfig::default().read_buffer_size_bytes, |kib| kib * KIB as usize),
        ..LogConfig::default()
    };
    log_config.validate().map_err(|e| anyhow::anyhow!("--read-size-kib: {e}"))?;
    let replay_config = ReplayConfig {
        read_ahead_max: args.read_ahead.unwrap_or(ReplayConfig::default().read_ahead_max),
        ..ReplayConfig::default()
    };
    anyhow::ensure!(replay_config.read_ahead_max > 0, "--read-ahead must be at least 1");
    let engine_read_shape =
        Shape::new(log_config.read_buffer_size_bytes, replay_config.read_ahead_max);
    eprintln!("replay scenario: engine reads {}", engine_read_shape.label());
    let temp = args.common.scratch("replay")?;
    let machine = Machine::probe(temp.path());
    let (sweep_size, repeats) = crate::limit::sweep_plan(quick);
    let sweep = crate::limit::sweep_blocking(temp.path(), sweep_size, quick, repeats, true)?;
    let read_shape = sweep.best_read;
    // The raw side reads a file as large as the log, written once, as the log is.
    let raw_dir = temp.path().join("raw");
    std::fs::create_dir_all(&raw_dir)?;
    let raw_path = raw_dir.join("raw.bin");
    {
        let (dir, path) = (raw_dir.clone(), raw_path.clone());
        let write_shape = sweep.best_write;
        crate::on_executor("bench-raw", 64 << 20, move || async move {
            kappa_storage::io::prime_iopoll(&dir).await?;
            crate::limit::raw_write(&path, size_mib * MIB, write_shape).await
        })?;
    }
    let mut sizes = Vec::new();
    for value_bytes in [100usize, 1024] {
        let paired = value_bytes >= 1024;
        let by_size = replay_size(
            &temp.path().join(format!("v{value_bytes}")),
            (&log_config, replay_config),
            value_bytes,
            size_mib * MIB,
            pairs,
            paired.then_some((raw_path.as_path(), read_shape)),
        )
        .with_context(|| format!("replay of {value_bytes}-byte records"))?;
        sizes.push(by_size);
    }
    let records_per_s_by_shards = sizes
        .iter()
        .map(|s| ScalingPoint { value_bytes: s.value_bytes, shards: 1, records_s: s.records_s })
        .collect();
    let report = Report {
        scenario: "replay",
        machine,
        read_shape,
        engine_read_shape,
        sweep,
        sizes,
        records_per_s_by_shards,
        notes:
            "One shard, one partition, a sum view per key (100 keys) per 1-hour event-time window, \
                from offset 0 until caught up; each replay is a new view. MB = 10^6 bytes of key + \
                value. Allocations count every thread of the process during the replay. The raw \
                read is timed from first submission to last completion, open and close outside.",
    };
    let mut outcome = Outcome::new("replay", serde_json::to_value(&report)?);
    let raw: Vec<f64> = report.sizes.iter().flat_map(|s| s.raw_read_mb_s.clone()).collect();
    outcome.noise = Some(Noise::of(&[], &raw));
    for s in &report.sizes {
        let name = format!("{} B records", s.value_bytes);
        if let Some(paired) = &s.paired {
            outcome.figures.push(Figure::paired(
                "replay",
                &format!("{name} MB/s"),
                "MB/s",
                &format!("raw read {}", read_shape.label()),
                paired,
                0.7,
            ));
        } else {
            outcome.figures.push(
                Figure::median(
                    "replay",
                    &format!("{name} records/s (one core)"),
                    &s.records_s,
                    "rec/s",
                )
                .at_least(TARGET_RECORDS_S),
            );
        }
        outcome.figures.push(Figure::median(
            "replay",
            &format!("{name} allocations/record"),
            &s.allocations_per_record,
            "allocs",
        ));
        if let Some(last) = s.runs.last() {
            outcome.series.push(Series {
                name: format!("{name} (M records/s)"),
                x_label: "seconds since the replay started".into(),
                y_label: "M records/s".into(),
                points: last.rate_over_time.clone(),
            });
        }
    }
    for p in &report.records_per_s_by_shards {
        outcome.scaling.push(Series {
            name: format!("{} B records (median)", p.value_bytes),
            x_label: "shards".into(),
            y_label: "M records/s".into(),
            points: vec![(p.shards as f64, p.records_s.median / 1e6)],
        });
    }
    Ok(outcome)
}

/// Writes the log for one record size, then replays it `pairs` times, each after a raw read when
/// `raw` names the file and shape to read.
fn replay_size(
    dir: &std::path::Path,
    (log_config, replay_config): (&LogConfig, ReplayConfig),
    value_bytes: usize,
    size_bytes: u64,
    pairs: usize,
    raw: Option<(&std::path::Path, Shape)>,
) -> anyhow::Result<BySize> {
    let engine = Engine::builder()
        .data_dir(dir)
        .shards(1)
        .log_config(log_config.clone())
        .replay(replay_config)
        .build()?;
    engine.create_topic("replay", TopicConfig::new(1))?;
    let record_bytes = (value_bytes + 8) as u64;
    let records = size_bytes / record_bytes;
    write_log(&engine, value_bytes, records)?;
    let log_bytes = engine.partition_offsets("replay", 0)?.size_bytes;
    let mut runs = Vec::new();
    let mut raw_read_mb_s = Vec::new();
    let mut pairs_run = Pairs::default();
    for round in 0..pairs {
        let raw_mb_s = match raw {
            Some((path, shape)) => {
                let path = path.to_path_buf();
                let mb_s = crate::on_executor("bench-raw", 64 << 20, move || async move {
                    let dir = path.parent().context("raw file has no directory")?;
                    kappa_storage::io::prime_iopoll(dir).await?;
                    crate::limit::raw_read(&path, size_bytes, shape).await
                })?;
                raw_read_mb_s.push(mb_s);
                Some(mb_s)
            }
            None => None,
        };
        let run = replay_once(&engine, &format!("sums-{round}"), records, record_bytes)?;
        eprintln!(
            "  {value_bytes:>5} B, replay {}: {} records in {:.2} s: {:.2} M records/s, {:.0} MB/s{}, {:.4} allocations/record",
            round + 1,
            run.records,
            run.seconds,
            run.records_s / 1e6,
            run.mb_s,
            raw_mb_s.map_or(String::new(), |r| format!(" (raw read {r:.0} MB/s, ratio {:.2})", run.mb_s / r)),
            run.allocations_per_record
        );
        if let Some(r) = raw_mb_s {
            pairs_run.push(r, run.mb_s);
        }
        runs.push(run);
    }
    engine.shutdown()?;
    let spread = |f: fn(&Run) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
    Ok(BySize {
        value_bytes,
        records,
        log_bytes,
        raw_read_mb_s,
        records_s: spread(|r| r.records_s),
        mb_s: spread(|r| r.mb_s),
        allocations_per_record: spread(|r| r.allocations_per_record),
        paired: (pairs_run.len() > 0).then(|| pairs_run.summary()),
        runs,
    })
}

/// Packed batches, acknowledged when buffered, synced when the engine shuts down.
fn write_log(engine: &Engine, value_bytes: usize, records: u64) -> anyhow::Result<()> {
    let mut value = vec![0x5Au8; value_bytes];
    write_packed(engine, "replay", records, value_bytes + 8, |i, batch| {
        let key = (i % KEYS).to_le_bytes();
        value[..8].copy_from_slice(&(i % 1000).to_le_bytes());
        batch.push(Some(&key), &value, Some(1_700_000_000_000 + i as i64));
    })
}

/// Writes records `0..records` to `topic` in packed batches of `BATCH` (`push` adds record `i`;
/// about `record_bytes` each), at most 16 batches unacknowledged, acknowledged when buffered
/// (`Durability::None`): the history a replay or rebuild scenario reads back.
pub(crate) fn write_packed(
    engine: &Engine,
    topic: &str,
    records: u64,
    record_bytes: usize,
    mut push: impl FnMut(u64, &mut ProducerBatch),
) -> anyhow::Result<()> {
    let producer = engine.producer().with_durability(Durability::None);
    let mut written = 0u64;
    let mut pending = std::collections::VecDeque::new();
    while written < records {
        let n = (records - written).min(BATCH as u64);
        let mut batch = ProducerBatch::with_capacity(n as usize, n as usize * record_bytes);
        for i in written..written + n {
            push(i, &mut batch);
        }
        pending.push_back(producer.send_packed_nowait(topic, batch)?);
        if pending.len() > 16 {
            for ack in pending.pop_front().context("no batch pending")? {
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
    Ok(())
}

/// Builds a new view `name` from offset 0 and times it until it has caught up with `records`.
fn replay_once(
    engine: &Engine,
    name: &str,
    records: u64,
    record_bytes: u64,
) -> anyhow::Result<Run> {
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
    let view = engine.create_view(name, def)?;
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
    Ok(Run {
        records,
        seconds,
        records_s: records as f64 / seconds,
        mb_s: (records * record_bytes) as f64 / 1e6 / seconds,
        allocations,
        allocations_per_record: allocations as f64 / records as f64,
        rate_over_time,
    })
}
