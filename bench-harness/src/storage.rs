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
//!
//! Settings to compare run in the same rounds, beside the figures' own: `--scan-shapes` scans the
//! same log in each read shape, `--unsynced-mib` appends `written` under each unsynced bound
//! (with the fdatasyncs each run issued), the order turning every round; each is reported against
//! the same raw limit and against the first setting of its round (`scan_shapes`,
//! `unsynced_bounds`), without a verdict unless it is the first.

use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kappa_storage::{Durability, LogConfig, PartitionLog, Record, Seek, KIB, MIB};
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
    /// Read shapes of the scan, as KIBxDEPTH (`LogConfig::read_buffer_size_bytes` in KiB x
    /// `read_ahead_max`), comma separated: each round scans the same log once in each, the order
    /// turning by one each round; the log's own (added when missing) is the scan figure's.
    #[arg(long, value_delimiter = ',', value_parser = parse_read_shape)]
    scan_shapes: Vec<Shape>,
    /// Unsynced bounds (`LogConfig::unsynced_bytes_max`) of the append `written` phase, in MiB,
    /// comma separated: each round appends once with each, the order turning by one each round;
    /// the log's own (added when missing) is the figure's (and the raw "synced as the log" run's).
    #[arg(long, value_delimiter = ',')]
    unsynced_mib: Vec<u64>,
}

/// `KIBxDEPTH`, e.g. `1024x16`: a read size in KiB (a multiple of 4) and reads in flight.
fn parse_read_shape(s: &str) -> Result<Shape, String> {
    let (kib, depth) =
        s.split_once('x').ok_or_else(|| format!("{s:?}: expected KIBxDEPTH, e.g. 1024x16"))?;
    let kib: usize = kib.trim().parse().map_err(|e| format!("{s:?}: read size: {e}"))?;
    let depth: usize = depth.trim().parse().map_err(|e| format!("{s:?}: depth: {e}"))?;
    if kib == 0 || !kib.is_multiple_of(4) || depth == 0 {
        return Err(format!("{s:?}: the size must be a positive multiple of 4 KiB, the depth > 0"));
    }
    Ok(Shape::new(kib * KIB as usize, depth))
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
    /// Per round, every scan shape's and unsynced bound's run (`scan_shapes`, `unsynced_bounds`).
    round_variants: Vec<RoundVariants>,
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
    /// The scan's read shapes (the first is `scan`'s), each against the same raw reads, and
    /// against the first shape's scan of the same round.
    scan_shapes: Vec<Variant<Shape>>,
    /// The unsynced bounds of the append `written` phase (the first is
    /// `append_written_through_fdatasync`'s), each against the same raw writes, and against the
    /// first bound's run of the same round.
    unsynced_bounds: Vec<Variant<u64>>,
    timing: &'static str,
    notes: &'static str,
}

/// One setting measured in every round beside the others (a scan shape, an unsynced bound).
#[derive(Debug, Serialize)]
struct Variant<T> {
    setting: T,
    label: String,
    /// Against the round's raw limit (read, or write through fdatasync).
    vs_limit: PairedRatio,
    /// Against the first setting's run of the same round (1 for the first).
    vs_first: PairedRatio,
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

/// What varies between runs of a round besides the figures' own settings (`Args`).
#[derive(Debug, Clone, Serialize)]
struct RoundVariants {
    /// Scan MB/s in each of `Report::scan_shapes`, in that order (not the order they ran).
    scan_mb_s: Vec<f64>,
    /// Append `written` in each of `Report::unsynced_bounds`, in that order.
    append_written: Vec<AppendRun>,
}

/// One append phase, both timings of the same run.
#[derive(Debug, Clone, Copy, Serialize)]
struct AppendRun {
    /// From the first append to the last acknowledgement.
    to_last_ack_mb_s: f64,
    /// From the first append to the completed close (last write, final fdatasync, watermark).
    through_close_mb_s: f64,
    /// fdatasyncs the log issued (its close's included) and their summed latency.
    fdatasyncs: u64,
    fdatasync_ms: f64,
    /// The most bytes written and not yet synced at once (`LogStats::unsynced_bytes_peak`).
    unsynced_bytes_peak: u64,
}

pub fn scenario(args: Args) -> anyhow::Result<Outcome> {
    let quick = args.common.quick;
    let (size_mib, pairs) = if quick { (64, 2) } else { (args.size_mib, args.pairs.max(1)) };
    let size_bytes = size_mib * MIB;
    let defaults = LogConfig::default();
    // The engine's own setting always goes first: the headline figures and their verdicts are
    // the engine's as shipped, whatever order (or omission) the flags gave.
    let scan_shapes =
        own_setting_first(args.scan_shapes.clone(), crate::limit::engine_read_shape());
    let bounds = own_setting_first(
        args.unsynced_mib.iter().map(|mib| mib * MIB).collect(),
        defaults.unsynced_bytes_max,
    );
    for &bound in &bounds {
        LogConfig { unsynced_bytes_max: bound, ..LogConfig::default() }
            .validate()
            .map_err(|e| anyhow::anyhow!("--unsynced-mib {}: {e}", bound / MIB))?;
    }
    let temp = args.common.scratch("storage")?;
    let dir = temp.path().to_path_buf();
    let machine = Machine::probe(&dir);
    eprintln!(
        "storage scenario: {size_mib} MiB per phase, {pairs} round(s), data in {} ({}); scan \
         shapes {}; unsynced bounds {} MiB",
        dir.display(),
        machine.file_system,
        scan_shapes.iter().map(Shape::label).collect::<Vec<_>>().join(", "),
        bounds.iter().map(|b| (b / MIB).to_string()).collect::<Vec<_>>().join(", "),
    );

    let settings = Settings { scan_shapes: scan_shapes.clone(), bounds: bounds.clone() };
    let (sweep, rounds) = crate::on_executor("bench-storage", 64 << 20, move || async move {
        let (sweep_size, repeats) = crate::limit::sweep_plan(quick);
        let sweep = crate::limit::sweep(&dir, sweep_size, quick, repeats, true).await?;
        let mut rounds = Vec::new();
        for round in 0..pairs {
            let (r, v) = measure_round(
                &dir,
                size_bytes,
                (sweep.best_write_synced, sweep.best_write),
                sweep.best_read,
                &settings,
                round,
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
            if settings.scan_shapes.len() > 1 {
                eprintln!(
                    "    scan by shape: {}",
                    (settings.scan_shapes.iter().zip(&v.scan_mb_s))
                        .map(|(s, mb_s)| format!("{} {mb_s:.0}", s.label()))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            eprintln!(
                "    append written by unsynced bound: {}",
                (settings.bounds.iter().zip(&v.append_written))
                    .map(|(b, a)| format!(
                        "{} MiB {:.0} MB/s through close ({:.0} to last ack), {} fdatasyncs \
                         ({:.0} ms)",
                        b / MIB,
                        a.through_close_mb_s,
                        a.to_last_ack_mb_s,
                        a.fdatasyncs,
                        a.fdatasync_ms
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            rounds.push((r, v));
        }
        anyhow::Ok((sweep, rounds))
    })?;
    let (rounds, round_variants): (Vec<Round>, Vec<RoundVariants>) = rounds.into_iter().unzip();

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
    let variants = |count: usize,
                    limit: &dyn Fn(&Round) -> f64,
                    value: &dyn Fn(&RoundVariants, usize) -> f64|
     -> Vec<(PairedRatio, PairedRatio)> {
        (0..count)
            .map(|i| {
                let (mut vs_limit, mut vs_first) = (Pairs::default(), Pairs::default());
                for (r, v) in rounds.iter().zip(&round_variants) {
                    vs_limit.push(limit(r), value(v, i));
                    vs_first.push(value(v, 0), value(v, i));
                }
                (vs_limit.summary(), vs_first.summary())
            })
            .collect()
    };
    let scan_variants = variants(scan_shapes.len(), &|r| r.raw_read_mb_s, &|v, i| v.scan_mb_s[i]);
    let bound_variants = variants(bounds.len(), &|r| r.raw_write.with_fdatasync_mb_s, &|v, i| {
        v.append_written[i].through_close_mb_s
    });
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
        round_variants,
        append_written_through_fdatasync: written.summary(),
        append_synced_through_fdatasync: synced.summary(),
        append_written_to_last_write: written_last.summary(),
        append_synced_to_last_write: synced_last.summary(),
        scan: scan.summary(),
        append_written_vs_raw_synced_as_log: written_vs_synced_raw.summary(),
        append_synced_vs_raw_synced_as_log: synced_vs_synced_raw.summary(),
        raw_synced_as_log_shape: synced_as_log_shape(),
        scan_shapes: (scan_shapes.iter().zip(scan_variants))
            .map(|(shape, (vs_limit, vs_first))| Variant {
                setting: *shape,
                label: shape.label(),
                vs_limit,
                vs_first,
            })
            .collect(),
        unsynced_bounds: (bounds.iter().zip(bound_variants))
            .map(|(bound, (vs_limit, vs_first))| Variant {
                setting: *bound,
                label: format!("unsynced_bytes_max {} MiB", bound / MIB),
                vs_limit,
                vs_first,
            })
            .collect(),
        timing: "Targets (*_through_fdatasync): appends timed from the first append to the \
                 completed close of the log (last write, final fdatasync, watermark), raw writes \
                 from the first submission to the completed fdatasync and close, in the best shape \
                 so timed: both end with the bytes on the device. Beside them (*_to_last_write, no \
                 verdict): appends timed to the last acknowledgement, raw writes to the last \
                 completed write, in the best shape so timed; on a host that caches writes the raw \
                 side is partly the host's memory. Scan and raw read exclude open and close.",
        notes: "MB = 10^6 bytes. Append and scan rates count record key+value bytes only (the log \
                writes ~4% more: Kafka varints, directory, frame header), so ratios are conservative. \
                Raw runs use the best shape of the sweep; appends come from 16 concurrent appenders. \
                A scan read ends on a frame boundary (`reader::cursor::boundary_in`): with frames \
                of 512 records (~0.54 MB) every read of 256 KiB to 1 MiB is one frame, so the read \
                shapes differ there by their depth.",
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
    // The other settings compared in the same rounds, without a verdict.
    for v in report.scan_shapes.iter().skip(1) {
        let name = format!("scan, reads {}", v.label);
        f.push(Figure::paired("storage", &name, "MB/s", &read_limit, &v.vs_limit, 0.0).no_target());
    }
    for v in report.unsynced_bounds.iter().skip(1) {
        let name = format!("append written (1 KiB), through close, {}", v.label);
        f.push(
            Figure::paired("storage", &name, "MB/s", &write_limit, &v.vs_limit, 0.0).no_target(),
        );
    }
    Ok(outcome)
}

/// `settings` with `own` first (moved there, or added when missing), the rest in their order.
fn own_setting_first<T: PartialEq>(mut settings: Vec<T>, own: T) -> Vec<T> {
    settings.retain(|s| *s != own);
    settings.insert(0, own);
    settings
}

/// The settings each round measures beside each other (`Args::scan_shapes`, `unsynced_mib`).
struct Settings {
    scan_shapes: Vec<Shape>,
    bounds: Vec<u64>,
}

/// `0..n` turned by `round`: each setting goes first in turn, so none always runs in the same
/// minute of the round.
fn turned(n: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (i + round) % n.max(1))
}

/// One round: raw write and read (the limits), then the engine phases right after them.
/// `write_shapes`: the best through the fdatasync, and the best to the last write. Each setting of
/// `settings` runs once, in an order turned by `round`.
async fn measure_round(
    dir: &Path,
    size_bytes: u64,
    write_shapes: (Shape, Shape),
    read_shape: Shape,
    settings: &Settings,
    round: usize,
) -> anyhow::Result<(Round, RoundVariants)> {
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
    let raw_write_synced_as_log =
        crate::limit::raw_write_synced(&raw, size_bytes, synced_as_log_shape(), settings.bounds[0])
            .await?;
    std::fs::remove_file(&raw)?;

    // Append `written` with each bound; the first bound's log is the one scanned.
    let log_dir = dir.join("written");
    let mut append_written = vec![None; settings.bounds.len()];
    for i in turned(settings.bounds.len(), round) {
        let variant_dir = if i == 0 { log_dir.clone() } else { dir.join(format!("written-{i}")) };
        let config = LogConfig { unsynced_bytes_max: settings.bounds[i], ..LogConfig::default() };
        let run =
            append(&variant_dir, config, size_bytes, Durability::Written, WRITTEN_BATCH_RECORDS)
                .await?;
        append_written[i] = Some(run);
        if i != 0 {
            std::fs::remove_dir_all(&variant_dir)?;
        }
    }
    let append_written: Vec<AppendRun> =
        append_written.into_iter().map(|r| r.expect("every bound ran")).collect();
    let mut scan_mb_s = vec![0.0; settings.scan_shapes.len()];
    for i in turned(settings.scan_shapes.len(), round) {
        scan_mb_s[i] = scan(&log_dir, settings.scan_shapes[i]).await?;
    }
    std::fs::remove_dir_all(&log_dir)?;

    let log_dir = dir.join("synced");
    let append_synced = append(
        &log_dir,
        LogConfig::default(),
        size_bytes,
        Durability::Synced,
        SYNCED_BATCH_RECORDS,
    )
    .await?;
    std::fs::remove_dir_all(&log_dir)?;
    let round = Round {
        raw_write,
        raw_write_to_last_write,
        raw_read_mb_s,
        raw_write_synced_as_log,
        append_written: append_written[0],
        scan_mb_s: scan_mb_s[0],
        append_synced,
    };
    Ok((round, RoundVariants { scan_mb_s, append_written }))
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
    config: LogConfig,
    size_bytes: u64,
    durability: Durability,
    batch_records: usize,
) -> anyhow::Result<AppendRun> {
    let log = Rc::new(PartitionLog::open(dir, config).await?);
    // The log's fdatasyncs are in this thread's histogram (`fsync_latency_ns`): its count and
    // sum before and after the run, the close's sync included.
    let syncs_before = fsync_totals();
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
    let unsynced_bytes_peak = log.stats().unsynced_bytes_peak;
    log.close().await?;
    let closed = start.elapsed();
    let syncs_after = fsync_totals();
    let bytes = records * record_bytes;
    Ok(AppendRun {
        to_last_ack_mb_s: mb_s(bytes, acked),
        through_close_mb_s: mb_s(bytes, closed),
        fdatasyncs: syncs_after.0 - syncs_before.0,
        fdatasync_ms: (syncs_after.1 - syncs_before.1) / 1e6,
        unsynced_bytes_peak,
    })
}

/// fdatasyncs the logs of this thread completed so far, and their summed latency in ns (from
/// the histogram's buckets: within its 3 significant digits).
fn fsync_totals() -> (u64, f64) {
    kappa_storage::fsync_latency_ns().map_or((0, 0.0), |h| (h.len(), h.mean() * h.len() as f64))
}

/// Reads the whole log from the beginning in `shape` (read size x reads in flight), touching
/// every record's key and value; MB/s of key+value.
async fn scan(dir: &Path, shape: Shape) -> anyhow::Result<f64> {
    let config = LogConfig {
        read_buffer_size_bytes: shape.io_bytes,
        read_ahead_max: shape.depth,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(dir, config).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The headline figure is always the engine's own setting, whatever order the flags gave
    /// (a verdict on another shape or bound would judge a configuration the engine does not ship).
    #[test]
    fn the_engines_own_setting_is_measured_first() {
        assert_eq!(own_setting_first(vec![64, 16, 256], 16), vec![16, 64, 256]);
        assert_eq!(own_setting_first(vec![64, 256], 16), vec![16, 64, 256]);
        assert_eq!(own_setting_first(Vec::new(), 16), vec![16]);
    }

    #[test]
    fn read_shapes_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_read_shape("1024x16"), Ok(Shape::new(MIB as usize, 16)));
        assert_eq!(parse_read_shape("256x8"), Ok(Shape::new(256 * KIB as usize, 8)));
        for bad in ["1024", "0x8", "1023x8", "256x0", "ax8", "256xb"] {
            assert!(parse_read_shape(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn each_setting_goes_first_in_turn() {
        let firsts: Vec<Option<usize>> = (0..3).map(|round| turned(3, round).next()).collect();
        assert_eq!(firsts, vec![Some(0), Some(1), Some(2)]);
        for round in 0..4 {
            let mut order: Vec<usize> = turned(3, round).collect();
            order.sort_unstable();
            assert_eq!(order, vec![0, 1, 2], "every setting runs once a round");
        }
        assert_eq!(turned(1, 5).collect::<Vec<_>>(), vec![0]);
    }
}
