//! The `disk` scenario: what the device does on its own, through the glommio DMA API the log uses.
//!
//! A sweep of I/O sizes and queue depths (including the log's own settings, writes also into
//! preallocated files), then repeats of the best write and read shapes at full size, whose
//! coefficient of variation is the run's noise, then the latency of a 4 KiB write followed by
//! fdatasync (what one `synced` append costs at least). The other scenarios run their own sweep
//! and pairs; this one documents the device.

use std::rc::Rc;
use std::time::Instant;

use anyhow::Context;
use kappa_storage::MIB;
use serde::Serialize;

use crate::ingest::Percentiles;
use crate::limit::{RawWrite, Sweep};
use crate::report::{Figure, LatencyCurve, Noise, Outcome};
use crate::{Machine, Spread};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::Common,
    /// Bytes per run of the best shapes, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Runs of the best write and read shapes.
    #[arg(long, default_value_t = crate::run::PAIRS_MIN)]
    runs: usize,
    /// fdatasync samples.
    #[arg(long, default_value_t = 2000)]
    syncs: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    machine: Machine,
    sweep: Sweep,
    size_bytes_per_run: u64,
    best_write_runs: Vec<RawWrite>,
    best_read_runs: Vec<f64>,
    disk_write_mb_s: Spread,
    disk_write_with_fdatasync_mb_s: Spread,
    disk_read_mb_s: Spread,
    noise: Noise,
    write_4k_fdatasync_us: Percentiles,
}

pub fn scenario(args: Args) -> anyhow::Result<Outcome> {
    let quick = args.common.quick;
    let (size_mib, runs, syncs) =
        if quick { (64, 2, 200) } else { (args.size_mib, args.runs.max(1), args.syncs.max(1)) };
    let temp = args.common.scratch("disk")?;
    let dir = temp.path().to_path_buf();
    let machine = Machine::probe(&dir);
    let (sweep, writes, reads, syncs) =
        crate::on_executor("bench-disk", 64 << 20, move || async move {
            let (sweep_size, repeats) = crate::limit::sweep_plan(quick);
            let sweep = crate::limit::sweep(&dir, sweep_size, quick, repeats + 1, true).await?;
            let (writes, reads) = crate::limit::raw_runs(
                &dir,
                size_mib * MIB,
                runs,
                sweep.best_write,
                Some(sweep.best_read),
            )
            .await?;
            let syncs = crate::limit::within(
                "4 KiB write + fdatasync series".into(),
                fdatasync_latency(&dir.join("sync.bin"), syncs),
            )
            .await?;
            anyhow::Ok((sweep, writes, reads, syncs))
        })?;
    let write_mb_s: Vec<f64> = writes.iter().map(|w| w.mb_s).collect();
    let synced_mb_s: Vec<f64> = writes.iter().map(|w| w.with_fdatasync_mb_s).collect();
    let report = Report {
        scenario: "disk",
        machine,
        size_bytes_per_run: size_mib * MIB,
        disk_write_mb_s: Spread::of(&write_mb_s),
        disk_write_with_fdatasync_mb_s: Spread::of(&synced_mb_s),
        disk_read_mb_s: Spread::of(&reads),
        noise: Noise::of(&write_mb_s, &reads),
        best_write_runs: writes,
        best_read_runs: reads,
        write_4k_fdatasync_us: Percentiles::of_ns(&syncs),
        sweep,
    };
    let mut outcome = Outcome::new("disk", serde_json::to_value(&report)?);
    outcome.noise = Some(report.noise);
    let f = &mut outcome.figures;
    let sweep = &report.sweep;
    let engine_rows = (sweep.writes.iter().map(|r| ("write", r)))
        .chain(sweep.reads.iter().map(|r| ("read", r)))
        .filter(|(_, r)| r.engine_setting);
    // Names stay the same from run to run (so `compare` pairs them); the shape is in the statistic.
    for (kind, row) in engine_rows {
        f.push(
            Figure::one_run("disk", &format!("raw {kind} (engine's shape)"), row.mb_s, "MB/s")
                .statistic(format!("best of {} sweep runs, {}", row.runs.len(), row.label)),
        );
    }
    for (kind, spread, shape) in [
        ("write", &report.disk_write_mb_s, sweep.best_write),
        ("read", &report.disk_read_mb_s, sweep.best_read),
    ] {
        let figure = Figure::median("disk", &format!("raw {kind} (best shape)"), spread, "MB/s");
        let statistic = format!("{}, {}", figure.statistic, shape.label());
        f.push(figure.statistic(statistic));
    }
    let samples = report.write_4k_fdatasync_us.samples;
    f.push(
        Figure::one_run(
            "disk",
            "4 KiB write + fdatasync p50",
            report.write_4k_fdatasync_us.p50,
            "us",
        )
        .statistic(format!("p50 of {samples} samples")),
    );
    f.push(
        Figure::one_run(
            "disk",
            "4 KiB write + fdatasync p99",
            report.write_4k_fdatasync_us.p99,
            "us",
        )
        .statistic(format!("p99 of {samples} samples")),
    );
    outcome.latencies.push(LatencyCurve::of("4 KiB write + fdatasync", &syncs));
    Ok(outcome)
}

/// Latency of appending one 4 KiB block and fdatasync-ing it, `samples` times.
async fn fdatasync_latency(
    path: &std::path::Path,
    samples: usize,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let file = Rc::new(kappa_storage::io::open_rw(path).await?);
    let mut latency = crate::new_histogram();
    for i in 0..samples {
        let mut buf = file.alloc_dma_buffer(4096);
        buf.as_bytes_mut().fill(i as u8 | 1);
        let started = Instant::now();
        file.write_at(buf, (i * 4096) as u64)
            .await
            .map_err(std::io::Error::from)
            .context("write")?;
        file.fdatasync().await.map_err(std::io::Error::from).context("fdatasync")?;
        latency.saturating_record(started.elapsed().as_nanos() as u64);
    }
    if let Ok(file) = Rc::try_unwrap(file) {
        let _ = file.close().await;
    }
    std::fs::remove_file(path)?;
    Ok(latency)
}
