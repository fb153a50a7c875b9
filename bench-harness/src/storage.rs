//! The `storage` scenario: log appends of 1 KiB records at `written` and `synced` durability and a
//! full zero-copy scan, each paired with a raw-device run measured just before it.
//!
//! First a sweep of raw I/O shapes (`limit`) picks the best write and read shapes; then each
//! round runs raw write, raw read, append `written`, scan (of that log) and append `synced`, so
//! every engine run has a raw run of the same minute to be divided by. The report gives the median
//! of the per-pair ratios with their min and max. All phases run on one glommio executor, in this
//! scenario's own process.
//!
//! Timing is the same on both sides, two ways from the same runs. The target figures time appends
//! through the log's close (its last write, final fdatasync and watermark) and raw writes through
//! their fdatasync and close: both end with the bytes on the device (`limit` says why the other
//! timing measures the host's write cache on the development machines). Beside them, appends timed
//! to their last acknowledgement against raw writes timed to their last completed write, the best
//! shape of each timing. The scan and the raw read both exclude open and close.

use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kappa_storage::{Durability, LogConfig, PartitionLog, Record, Seek, MIB};
use serde::Serialize;

use crate::limit::{RawWrite, Shape, Sweep};
use crate::report::{Figure, Noise, Outcome};
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
}

/// Value bytes of one record ("1 KiB records").
const VALUE_SIZE: usize = 1024;
const KEY_SIZE: usize = 16;
/// Records per batch: 512 KiB batches for `written`, 1000-record batches for `synced` (the issue's
/// group-commit shape).
const WRITTEN_BATCH_RECORDS: usize = 512;
const SYNCED_BATCH_RECORDS: usize = 1000;
/// Concurrent appenders (tasks) per phase: enough to keep writes in flight and share fsyncs.
const APPENDERS: usize = 16;

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    machine: Machine,
    size_bytes_per_run: u64,
    record_value_bytes: usize,
    record_key_bytes: usize,
    sweep: Sweep,
    /// The raw write shape of the target figures (best through its fdatasync and close).
    write_shape: Shape,
    /// The raw write shape of the figures timed to the last write (best to its last write).
    write_shape_to_last_write: Shape,
    read_shape: Shape,
    rounds: Vec<Round>,
    /// The targets: appends timed through the log's close against raw writes timed through their
    /// fdatasync and close.
    append_written_through_fdatasync: PairedRatio,
    append_synced_through_fdatasync: PairedRatio,
    scan: PairedRatio,
    /// Not targets: appends timed to their last acknowledgement against raw writes timed to their
    /// last completed write (on a host that caches writes, the host's memory).
    append_written_to_last_write: PairedRatio,
    append_synced_to_last_write: PairedRatio,
    /// Not a target: both appends (through the close) against raw writes that fdatasync as the
    /// log's unsynced bound makes it, through their final fdatasync and close
    /// (`limit::raw_write_synced`, the log's own write shape), so the report shows how much of
    /// the distance to the raw limit is those syncs on this device.
    append_written_vs_raw_synced_as_log: PairedRatio,
    append_synced_vs_raw_synced_as_log: PairedRatio,
    raw_synced_as_log_shape: Shape,
    timing: &'static str,
    notes: &'static str,
}

/// One round, in the order it ran.
#[derive(Debug, Clone, Copy, Serialize)]
struct Round {
    /// In the report's `write_shape`, both timings.
    raw_write: RawWrite,
    /// In `write_shape_to_last_write` when that differs (else the same run as `raw_write`).
    raw_write_to_last_write: RawWrite,
    raw_read_mb_s: f64,
    /// Raw writes that fdatasync as the log's unsynced bound makes it (see the report field).
    raw_write_synced_as_log: RawWrite,
    append_written: AppendRun,
    scan_mb_s: f64,
    append_synced: AppendRun,
}

/// One append phase, both timings of the same run.
#[derive(Debug, Clone, Copy, Serialize)]
struct AppendRun {
    /// From the first append to the last acknowledgement.
    to_last_ack_mb_s: f64,
    /// From the first append to the completed close (last write, final fdatasync, watermark).
    through_close_mb_s: f64,
}

pub fn scenario(args: Args) -> anyhow::Result<Outcome> {
    let quick = args.common.quick;
    let (size_mib, pairs) = if quick { (64, 2) } else { (args.size_mib, args.pairs.max(1)) };
    let size_bytes = size_mib * MIB;
    let temp = args.common.scratch("storage")?;
    let dir = temp.path().to_path_buf();
    let machine = Machine::probe(&dir);
    eprintln!(
        "storage scenario: {size_mib} MiB per phase, {pairs} round(s), data in {} ({})",
        dir.display(),
        machine.file_system
    );

    let (sweep, rounds) = crate::on_executor("bench-storage", 64 << 20, move || async move {
        let (sweep_size, repeats) = crate::limit::sweep_plan(quick);
        let sweep = crate::limit::sweep(&dir, sweep_size, quick, repeats, true).await?;
        let mut rounds = Vec::new();
        for round in 0..pairs {
            let r = measure_round(
                &dir,
                size_bytes,
                (sweep.best_write_synced, sweep.best_write),
                sweep.best_read,
            )
            .await?;
            eprintln!(
                "  round {}: through fdatasync/close: raw write {:.0}, synced as the log {:.0}, \
                 append written {:.0} synced {:.0}; to last write/ack: raw write {:.0}, append \
                 written {:.0} synced {:.0}; raw read {:.0}, scan {:.0} MB/s",
                round + 1,
                r.raw_write.with_fdatasync_mb_s,
                r.raw_write_synced_as_log.with_fdatasync_mb_s,
                r.append_written.through_close_mb_s,
                r.append_synced.through_close_mb_s,
                r.raw_write_to_last_write.mb_s,
                r.append_written.to_last_ack_mb_s,
                r.append_synced.to_last_ack_mb_s,
                r.raw_read_mb_s,
                r.scan_mb_s
            );
            rounds.push(r);
        }
        anyhow::Ok((sweep, rounds))
    })?;

    let mut written = Pairs::default();
    let mut synced = Pairs::default();
    let mut written_last = Pairs::default();
    let mut synced_last = Pairs::default();
    let mut scan = Pairs::default();
    let mut written_vs_synced_raw = Pairs::default();
    let mut synced_vs_synced_raw = Pairs::default();
    for r in &rounds {
        let as_log = r.raw_write_synced_as_log.with_fdatasync_mb_s;
        written_vs_synced_raw.push(as_log, r.append_written.through_close_mb_s);
        synced_vs_synced_raw.push(as_log, r.append_synced.through_close_mb_s);
        written.push(r.raw_write.with_fdatasync_mb_s, r.append_written.through_close_mb_s);
        synced.push(r.raw_write.with_fdatasync_mb_s, r.append_synced.through_close_mb_s);
        written_last.push(r.raw_write_to_last_write.mb_s, r.append_written.to_last_ack_mb_s);
        synced_last.push(r.raw_write_to_last_write.mb_s, r.append_synced.to_last_ack_mb_s);
        scan.push(r.raw_read_mb_s, r.scan_mb_s);
    }
    let report = Report {
        scenario: "storage",
        machine,
        size_bytes_per_run: size_bytes,
        record_value_bytes: VALUE_SIZE,
        record_key_bytes: KEY_SIZE,
        write_shape: sweep.best_write_synced,
        write_shape_to_last_write: sweep.best_write,
        read_shape: sweep.best_read,
        sweep,
        rounds: rounds.clone(),
        append_written_through_fdatasync: written.summary(),
        append_synced_through_fdatasync: synced.summary(),
        append_written_to_last_write: written_last.summary(),
        append_synced_to_last_write: synced_last.summary(),
        scan: scan.summary(),
        append_written_vs_raw_synced_as_log: written_vs_synced_raw.summary(),
        append_synced_vs_raw_synced_as_log: synced_vs_synced_raw.summary(),
        raw_synced_as_log_shape: synced_as_log_shape(),
        timing: "Targets (*_through_fdatasync): appends timed from the first append to the \
                 completed close of the log (last write, final fdatasync, watermark), raw writes \
                 from the first submission to the completed fdatasync and close, in the best shape \
                 so timed: both end with the bytes on the device. Beside them (*_to_last_write, no \
                 verdict): appends timed to the last acknowledgement, raw writes to the last \
                 completed write, in the best shape so timed; on a host that caches writes the raw \
                 side is partly the host's memory. Scan and raw read exclude open and close.",
        notes: "MB = 10^6 bytes. Append and scan rates count record key+value bytes only (the log \
                writes ~4% more: Kafka varints, directory, frame header), so ratios are conservative. \
                Raw runs use the best shape of the sweep; appends come from 16 concurrent appenders.",
    };
    let mut outcome = Outcome::new("storage", serde_json::to_value(&report)?);
    let raw_writes: Vec<f64> = rounds.iter().map(|r| r.raw_write.with_fdatasync_mb_s).collect();
    let raw_reads: Vec<f64> = rounds.iter().map(|r| r.raw_read_mb_s).collect();
    outcome.noise = Some(Noise::of(&raw_writes, &raw_reads));
    let write_limit = format!("raw write {} through fdatasync", report.write_shape.label());
    let last_write_limit =
        format!("raw write {} to last write", report.write_shape_to_last_write.label());
    let read_limit = format!("raw read {}", report.read_shape.label());
    let f = &mut outcome.figures;
    f.push(Figure::paired(
        "storage",
        "append written (1 KiB), through close",
        "MB/s",
        &write_limit,
        &report.append_written_through_fdatasync,
        0.8,
    ));
    f.push(Figure::paired(
        "storage",
        "append synced (1 KiB, batch 1000), through close",
        "MB/s",
        &write_limit,
        &report.append_synced_through_fdatasync,
        0.7,
    ));
    f.push(Figure::paired("storage", "scan", "MB/s", &read_limit, &report.scan, 0.8));
    // The other timing, beside the targets and without a verdict.
    for (name, paired) in [
        ("append written (1 KiB), to last ack", &report.append_written_to_last_write),
        ("append synced (1 KiB, batch 1000), to last ack", &report.append_synced_to_last_write),
    ] {
        f.push(Figure::paired("storage", name, "MB/s", &last_write_limit, paired, 0.0).no_target());
    }
    Ok(outcome)
}

/// One round: raw write and read (the limits), then the engine phases right after them.
/// `write_shapes`: the best through the fdatasync, and the best to the last write.
async fn measure_round(
    dir: &Path,
    size_bytes: u64,
    write_shapes: (Shape, Shape),
    read_shape: Shape,
) -> anyhow::Result<Round> {
    let raw = dir.join("raw.bin");
    let raw_write = crate::limit::raw_write(&raw, size_bytes, write_shapes.0).await?;
    let raw_read_mb_s = crate::limit::raw_read(&raw, size_bytes, read_shape).await?;
    std::fs::remove_file(&raw)?;
    let raw_write_to_last_write = if write_shapes.1 == write_shapes.0 {
        raw_write
    } else {
        let run = crate::limit::raw_write(&raw, size_bytes, write_shapes.1).await?;
        std::fs::remove_file(&raw)?;
        run
    };
    let raw_write_synced_as_log = crate::limit::raw_write_synced(
        &raw,
        size_bytes,
        synced_as_log_shape(),
        LogConfig::default().unsynced_bytes_max,
    )
    .await?;
    std::fs::remove_file(&raw)?;

    let log_dir = dir.join("written");
    let append_written =
        append(&log_dir, size_bytes, Durability::Written, WRITTEN_BATCH_RECORDS).await?;
    let scan_mb_s = scan(&log_dir).await?;
    std::fs::remove_dir_all(&log_dir)?;

    let log_dir = dir.join("synced");
    let append_synced =
        append(&log_dir, size_bytes, Durability::Synced, SYNCED_BATCH_RECORDS).await?;
    std::fs::remove_dir_all(&log_dir)?;
    Ok(Round {
        raw_write,
        raw_write_to_last_write,
        raw_read_mb_s,
        raw_write_synced_as_log,
        append_written,
        scan_mb_s,
        append_synced,
    })
}

/// The log's own write shape into a preallocated file, as its segments are written.
fn synced_as_log_shape() -> Shape {
    Shape { preallocated: true, ..crate::limit::engine_write_shape() }
}

fn mb_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// Appends `size_bytes` of 1 KiB records from `APPENDERS` concurrent tasks; MB/s of key+value,
/// timed to the last acknowledgement and to the completed close.
async fn append(
    dir: &Path,
    size_bytes: u64,
    durability: Durability,
    batch_records: usize,
) -> anyhow::Result<AppendRun> {
    let log = Rc::new(PartitionLog::open(dir, LogConfig::default()).await?);
    let record_bytes = (VALUE_SIZE + KEY_SIZE) as u64;
    let batches_total = (size_bytes / record_bytes).div_ceil(batch_records as u64);
    let per_task = batches_total.div_ceil(APPENDERS as u64);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..APPENDERS {
        let log = log.clone();
        tasks.push(glommio::spawn_local(async move {
            let values = vec![0x5Au8 ^ task as u8; VALUE_SIZE * batch_records];
            let keys: Vec<[u8; KEY_SIZE]> = (0..batch_records)
                .map(|i| {
                    let mut key = [b'k'; KEY_SIZE];
                    key[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    key
                })
                .collect();
            let mut records: Vec<Record<'_>> = Vec::with_capacity(batch_records);
            for batch in 0..per_task {
                records.clear();
                for i in 0..batch_records {
                    let ts = (batch * batch_records as u64 + i as u64) as i64;
                    records.push(Record::new(
                        ts,
                        Some(&keys[i][..]),
                        &values[i * VALUE_SIZE..(i + 1) * VALUE_SIZE],
                    ));
                }
                log.append(&records, durability).await?;
            }
            anyhow::Ok(per_task * batch_records as u64)
        }));
    }
    let mut records = 0u64;
    for task in tasks {
        records += task.await?;
    }
    let acked = start.elapsed();
    log.close().await?;
    let closed = start.elapsed();
    let bytes = records * record_bytes;
    Ok(AppendRun { to_last_ack_mb_s: mb_s(bytes, acked), through_close_mb_s: mb_s(bytes, closed) })
}

/// Reads the whole log from the beginning, touching every record's key and value; MB/s of
/// key+value.
async fn scan(dir: &Path) -> anyhow::Result<f64> {
    let log = PartitionLog::open(dir, LogConfig::default()).await?;
    let start = Instant::now();
    let mut reader = log.reader(Seek::Beginning)?;
    let mut bytes = 0u64;
    let mut checksum = 0u64;
    while let Some(batch) = reader.next_batch().await? {
        for record in batch.records() {
            let value = record.value();
            let key = record.key().unwrap_or(&[]);
            bytes += (value.len() + key.len()) as u64;
            checksum = checksum.wrapping_add(u64::from(value[0]) + u64::from(key[0]));
        }
        glommio::yield_if_needed().await;
    }
    let elapsed = start.elapsed();
    anyhow::ensure!(checksum > 0 && reader.next_offset() == log.end_offset(), "scan stopped early");
    log.close().await?;
    Ok(mb_s(bytes, elapsed))
}
