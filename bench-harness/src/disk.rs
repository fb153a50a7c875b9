//! The `disk` scenario: the device's limits through the same glommio DMA path the log uses.
//!
//! Raw sequential O_DIRECT write and read bandwidth (1 MiB I/Os, 8 in flight) and the latency of a
//! 4 KiB write followed by fdatasync (what one `synced` append costs at least). Every other
//! throughput figure is divided by these.

use std::rc::Rc;
use std::time::Instant;

use anyhow::Context;
use kappa_storage::MIB;
use serde::Serialize;

use crate::ingest::Percentiles;
use crate::report::{Figure, Outcome};
use crate::{Machine, Spread};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::Common,
    /// Bytes per bandwidth run, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// fdatasync samples.
    #[arg(long, default_value_t = 2000)]
    syncs: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    machine: Machine,
    size_bytes_per_run: u64,
    disk_write_mb_s: Spread,
    disk_read_mb_s: Spread,
    write_4k_fdatasync_us: Percentiles,
}

pub fn scenario(args: Args) -> anyhow::Result<Outcome> {
    let (size_mib, runs, syncs) = if args.common.quick {
        (64, 1, 200)
    } else {
        (args.size_mib, args.runs.max(1), args.syncs.max(1))
    };
    let temp = args.common.scratch("disk")?;
    let dir = temp.path().to_path_buf();
    let machine = Machine::probe(&dir);
    let (writes, reads, syncs) = crate::on_executor("bench-disk", 64 << 20, move || async move {
        let (writes, reads) = crate::storage::raw_disk_runs(&dir, size_mib, runs, true).await?;
        let syncs = fdatasync_latency(&dir.join("sync.bin"), syncs).await?;
        anyhow::Ok((writes, reads, syncs))
    })?;
    let report = Report {
        scenario: "disk",
        machine,
        size_bytes_per_run: size_mib * MIB,
        disk_write_mb_s: Spread::of(&writes),
        disk_read_mb_s: Spread::of(&reads),
        write_4k_fdatasync_us: Percentiles::of_ns(&syncs),
    };
    let mut outcome = Outcome::new("disk", serde_json::to_value(&report)?);
    outcome.figures.push(Figure::plain(
        "disk",
        "disk_write_mb_s (median)",
        report.disk_write_mb_s.median,
        "MB/s",
    ));
    outcome.figures.push(Figure::plain(
        "disk",
        "disk_read_mb_s (median)",
        report.disk_read_mb_s.median,
        "MB/s",
    ));
    outcome.figures.push(Figure::plain(
        "disk",
        "4 KiB write + fdatasync p50",
        report.write_4k_fdatasync_us.p50,
        "us",
    ));
    outcome.figures.push(Figure::plain(
        "disk",
        "4 KiB write + fdatasync p99",
        report.write_4k_fdatasync_us.p99,
        "us",
    ));
    outcome.bars = vec![
        ("raw write".into(), report.disk_write_mb_s.median),
        ("raw read".into(), report.disk_read_mb_s.median),
    ];
    outcome.latencies.push(("4 KiB write + fdatasync".into(), syncs));
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
