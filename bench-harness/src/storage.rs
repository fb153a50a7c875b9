//! The `storage` scenario: the disk's raw O_DIRECT bandwidth through glommio (the limit), then log
//! appends of 1 KiB records at `written` and `synced` durability, then a full zero-copy scan.
//!
//! All phases run on one glommio executor on the same file system, in one process. Raw write and
//! read use the same I/O shape the log uses (1 MiB DMA buffers, several in flight), so the ratio
//! shows what the log's own work (encoding, checksums, copies, index) costs.

use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use glommio::io::DmaFile;
use kappa_storage::{Durability, LogConfig, PartitionLog, Record, Seek, MIB};
use serde::Serialize;

use crate::report::{Figure, Outcome};
use crate::{Machine, Spread};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::Common,
    /// Bytes per phase and run, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Runs per phase; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
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
const RAW_BLOCK: usize = MIB as usize;
const RAW_DEPTH: usize = 8;

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    machine: Machine,
    size_bytes_per_run: u64,
    record_value_bytes: usize,
    record_key_bytes: usize,
    runs: usize,
    disk_write_mb_s: f64,
    disk_read_mb_s: f64,
    append_written_mb_s: f64,
    append_written_records_s: f64,
    append_synced_mb_s: f64,
    append_synced_records_s: f64,
    scan_mb_s: f64,
    scan_records_s: f64,
    ratio_append_written_to_disk_write: f64,
    ratio_append_synced_to_disk_write: f64,
    ratio_scan_to_disk_read: f64,
    spread: Spreads,
    notes: &'static str,
}

#[derive(Debug, Serialize)]
struct Spreads {
    disk_write_mb_s: Spread,
    disk_read_mb_s: Spread,
    append_written_mb_s: Spread,
    append_synced_mb_s: Spread,
    scan_mb_s: Spread,
}

pub fn scenario(args: Args) -> anyhow::Result<Outcome> {
    let (size_mib, runs) =
        if args.common.quick { (64, 1) } else { (args.size_mib, args.runs.max(1)) };
    let size_bytes = size_mib * MIB;
    let temp = args.common.scratch("storage")?;
    let dir = temp.path().to_path_buf();
    let machine = Machine::probe(&dir);
    eprintln!(
        "storage scenario: {size_mib} MiB per phase, {runs} run(s), data in {} ({})",
        dir.display(),
        machine.file_system
    );

    let phases = crate::on_executor("bench-storage", 64 << 20, move || async move {
        measure(&dir, size_bytes, runs).await
    })?;

    let disk_write = Spread::of(&phases.disk_write);
    let disk_read = Spread::of(&phases.disk_read);
    let written = Spread::of(&phases.written);
    let synced = Spread::of(&phases.synced);
    let scan = Spread::of(&phases.scan);
    let record_mb = (VALUE_SIZE + KEY_SIZE) as f64 / 1e6;
    let report = Report {
        scenario: "storage",
        machine,
        size_bytes_per_run: size_bytes,
        record_value_bytes: VALUE_SIZE,
        record_key_bytes: KEY_SIZE,
        runs,
        disk_write_mb_s: disk_write.median,
        disk_read_mb_s: disk_read.median,
        append_written_mb_s: written.median,
        append_written_records_s: written.median / record_mb,
        append_synced_mb_s: synced.median,
        append_synced_records_s: synced.median / record_mb,
        scan_mb_s: scan.median,
        scan_records_s: scan.median / record_mb,
        ratio_append_written_to_disk_write: written.median / disk_write.median,
        ratio_append_synced_to_disk_write: synced.median / disk_write.median,
        ratio_scan_to_disk_read: scan.median / disk_read.median,
        spread: Spreads {
            disk_write_mb_s: disk_write,
            disk_read_mb_s: disk_read,
            append_written_mb_s: written,
            append_synced_mb_s: synced,
            scan_mb_s: scan,
        },
        notes: "MB = 10^6 bytes. Append and scan rates count record key+value bytes only (the log \
                writes ~4% more: Kafka varints, directory, frame header), so ratios are conservative. \
                Raw disk phases use 1 MiB O_DIRECT I/Os, 8 in flight (the log's write-behind depth), through glommio; appends come from 16 concurrent appenders.",
    };
    print_table(&report);
    let mut outcome = Outcome::new("storage", serde_json::to_value(&report)?);
    let f = &mut outcome.figures;
    f.push(Figure::plain("storage", "disk_write_mb_s", report.disk_write_mb_s, "MB/s"));
    f.push(Figure::plain("storage", "disk_read_mb_s", report.disk_read_mb_s, "MB/s"));
    f.push(Figure::against(
        "storage",
        "append_written_mb_s (1 KiB)",
        report.append_written_mb_s,
        "MB/s",
        "disk write",
        report.disk_write_mb_s,
        0.8,
    ));
    f.push(Figure::against(
        "storage",
        "append_synced_mb_s (1 KiB, batch 1000)",
        report.append_synced_mb_s,
        "MB/s",
        "disk write",
        report.disk_write_mb_s,
        0.6,
    ));
    f.push(Figure::against(
        "storage",
        "scan_mb_s",
        report.scan_mb_s,
        "MB/s",
        "disk read",
        report.disk_read_mb_s,
        0.8,
    ));
    outcome.bars = vec![
        ("disk write".into(), report.disk_write_mb_s),
        ("append written".into(), report.append_written_mb_s),
        ("append synced".into(), report.append_synced_mb_s),
        ("disk read".into(), report.disk_read_mb_s),
        ("scan".into(), report.scan_mb_s),
    ];
    Ok(outcome)
}

fn print_table(r: &Report) {
    let row = |name: &str, spread: &Spread, limit_name: &str, limit: f64, target: f64| {
        let ratio = spread.median / limit;
        let verdict = if ratio >= target { "meets" } else { "BELOW" };
        println!(
            "{name:<22} {:>9.0} MB/s  (min {:>6.0}, max {:>6.0})   {limit_name:<16} {:>6.0} MB/s  ratio {ratio:>5.2}  target {target:.1} {verdict}",
            spread.median, spread.min, spread.max, limit
        );
    };
    println!(
        "{:<22} {:>9.0} MB/s  (min {:>6.0}, max {:>6.0})",
        "disk write (raw)",
        r.disk_write_mb_s,
        r.spread.disk_write_mb_s.min,
        r.spread.disk_write_mb_s.max
    );
    println!(
        "{:<22} {:>9.0} MB/s  (min {:>6.0}, max {:>6.0})",
        "disk read (raw)",
        r.disk_read_mb_s,
        r.spread.disk_read_mb_s.min,
        r.spread.disk_read_mb_s.max
    );
    row(
        "append written 1 KiB",
        &r.spread.append_written_mb_s,
        "disk write",
        r.disk_write_mb_s,
        0.8,
    );
    row("append synced 1 KiB", &r.spread.append_synced_mb_s, "disk write", r.disk_write_mb_s, 0.6);
    row("scan (replay read)", &r.spread.scan_mb_s, "disk read", r.disk_read_mb_s, 0.8);
    println!(
        "records/s: written {:.0}, synced {:.0}, scan {:.0}",
        r.append_written_records_s, r.append_synced_records_s, r.scan_records_s
    );
}

struct Phases {
    disk_write: Vec<f64>,
    disk_read: Vec<f64>,
    written: Vec<f64>,
    synced: Vec<f64>,
    scan: Vec<f64>,
}

async fn measure(dir: &Path, size_bytes: u64, runs: usize) -> anyhow::Result<Phases> {
    kappa_storage::io::prime_iopoll(dir).await?;
    let mut phases = Phases {
        disk_write: vec![],
        disk_read: vec![],
        written: vec![],
        synced: vec![],
        scan: vec![],
    };
    // Warm-up: a short raw write and read so the first measured run does not pay for setup.
    let raw = dir.join("raw.bin");
    raw_write(&raw, 64 * MIB).await?;
    raw_read(&raw, 64 * MIB).await?;
    for run in 0..runs {
        phases.disk_write.push(raw_write(&raw, size_bytes).await?);
        phases.disk_read.push(raw_read(&raw, size_bytes).await?);
        std::fs::remove_file(&raw)?;

        let log_dir = dir.join(format!("written-{run}"));
        phases
            .written
            .push(append(&log_dir, size_bytes, Durability::Written, WRITTEN_BATCH_RECORDS).await?);
        phases.scan.push(scan(&log_dir).await?);
        std::fs::remove_dir_all(&log_dir)?;

        let log_dir = dir.join(format!("synced-{run}"));
        phases
            .synced
            .push(append(&log_dir, size_bytes, Durability::Synced, SYNCED_BATCH_RECORDS).await?);
        std::fs::remove_dir_all(&log_dir)?;
        eprintln!(
            "run {}: disk write {:.0} read {:.0}, append written {:.0} synced {:.0}, scan {:.0} MB/s",
            run + 1,
            phases.disk_write[run],
            phases.disk_read[run],
            phases.written[run],
            phases.synced[run],
            phases.scan[run]
        );
    }
    Ok(phases)
}

fn mb_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

/// Sequential O_DIRECT writes of 1 MiB, `RAW_DEPTH` in flight, then one fdatasync.
pub(crate) async fn raw_write(path: &Path, size_bytes: u64) -> anyhow::Result<f64> {
    let _ = std::fs::remove_file(path);
    let file = Rc::new(kappa_storage::io::open_rw(path).await?);
    let start = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    let mut pos = 0u64;
    while pos < size_bytes {
        let mut buf = file.alloc_dma_buffer(RAW_BLOCK);
        buf.as_bytes_mut().fill((pos / RAW_BLOCK as u64) as u8 | 1);
        let target = file.clone();
        let at = pos;
        in_flight.push_back(glommio::spawn_local(async move { target.write_at(buf, at).await }));
        pos += RAW_BLOCK as u64;
        if in_flight.len() >= RAW_DEPTH {
            in_flight
                .pop_front()
                .expect("non-empty")
                .await
                .map_err(std::io::Error::from)
                .context("raw write")?;
        }
    }
    while let Some(task) = in_flight.pop_front() {
        task.await.map_err(std::io::Error::from).context("raw write")?;
    }
    file.fdatasync().await.map_err(std::io::Error::from).context("raw fdatasync")?;
    let elapsed = start.elapsed();
    drop(in_flight);
    if let Ok(file) = Rc::try_unwrap(file) {
        file.close().await.map_err(std::io::Error::from).context("close")?;
    }
    Ok(mb_s(size_bytes, elapsed))
}

/// Sequential O_DIRECT reads of 1 MiB, `RAW_DEPTH` in flight.
pub(crate) async fn raw_read(path: &Path, size_bytes: u64) -> anyhow::Result<f64> {
    let file =
        Rc::new(DmaFile::open(path).await.map_err(std::io::Error::from).context("open raw file")?);
    let start = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    let mut pos = 0u64;
    let mut total = 0u64;
    while pos < size_bytes || !in_flight.is_empty() {
        while pos < size_bytes && in_flight.len() < RAW_DEPTH {
            let source = file.clone();
            let at = pos;
            in_flight.push_back(glommio::spawn_local(async move {
                source.read_at_aligned(at, RAW_BLOCK).await
            }));
            pos += RAW_BLOCK as u64;
        }
        let chunk = in_flight
            .pop_front()
            .expect("non-empty")
            .await
            .map_err(std::io::Error::from)
            .context("raw read")?;
        // Touch the bytes, as a consumer would.
        total += chunk.iter().step_by(4096).map(|b| u64::from(*b)).sum::<u64>().min(1);
        total += chunk.len() as u64 - 1;
    }
    let elapsed = start.elapsed();
    anyhow::ensure!(total >= size_bytes / 2, "raw read returned too little: {total}");
    Ok(mb_s(size_bytes, elapsed))
}

/// Appends `size_bytes` of 1 KiB records from `APPENDERS` concurrent tasks; MB/s of key+value.
async fn append(
    dir: &Path,
    size_bytes: u64,
    durability: Durability,
    batch_records: usize,
) -> anyhow::Result<f64> {
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
    let elapsed = start.elapsed();
    log.close().await?;
    Ok(mb_s(records * record_bytes, elapsed))
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

/// Raw O_DIRECT sequential bandwidth (MB/s) of `runs` runs of `size_mib` MiB in `dir`: each run
/// writes the file, then (when `read`) reads it back. After a short warm-up write. Runs on the
/// calling glommio executor; the limit other scenarios divide by.
pub async fn raw_disk_runs(
    dir: &Path,
    size_mib: u64,
    runs: usize,
    read: bool,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    kappa_storage::io::prime_iopoll(dir).await?;
    let raw = dir.join("raw.bin");
    raw_write(&raw, 64 * MIB).await?;
    let (mut writes, mut reads) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        writes.push(raw_write(&raw, size_mib * MIB).await?);
        if read {
            reads.push(raw_read(&raw, size_mib * MIB).await?);
        }
    }
    std::fs::remove_file(&raw)?;
    Ok((writes, reads))
}

/// `raw_disk_runs` on a glommio executor of its own.
pub fn disk_runs(
    dir: &Path,
    size_mib: u64,
    runs: usize,
    read: bool,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let dir = dir.to_path_buf();
    crate::on_executor("bench-disk", 64 << 20, move || async move {
        raw_disk_runs(&dir, size_mib, runs, read).await
    })
}
