//! The `recovery` scenario: how long a partition takes to reopen after a SIGKILL with N GiB in it.
//!
//! A child process (this binary, `recovery-writer`) fills a partition log, says so, and keeps
//! appending until it is killed; then the parent times `PartitionLog::open`, which trusts sealed
//! segments through their index files and scans only the active segment's tail. The figure is
//! reported beside the time a read of the scanned bytes at the disk's read bandwidth would take.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use kappa_storage::{Durability, LogConfig, PartitionLog, Record, MIB};
use serde::Serialize;

use crate::report::{Figure, Outcome};
use crate::Machine;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::Common,
    /// Log size before the kill, in MiB.
    #[arg(long, default_value_t = 2048)]
    size_mib: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    machine: Machine,
    log_bytes: u64,
    segments: usize,
    scanned_bytes: u64,
    truncated_bytes: u64,
    reopen_ms: f64,
    scanned_mb_s: f64,
}

pub fn scenario(args: Args) -> anyhow::Result<Outcome> {
    let size_mib = if args.common.quick { 128 } else { args.size_mib };
    let temp = args.common.scratch("recovery")?;
    let dir = temp.path().join("log");
    let machine = Machine::probe(temp.path());

    let mut child = Command::new(std::env::current_exe().context("locating kappa-bench")?)
        .arg("recovery-writer")
        .arg(&dir)
        .arg(size_mib.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the recovery writer")?;
    let stdout = child.stdout.take().context("writer stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line == "ready" => break,
            Some(Ok(_)) => continue,
            _ => anyhow::bail!("the recovery writer stopped before filling the log"),
        }
    }
    // Let it append a little more, so the kill lands mid-write.
    std::thread::sleep(Duration::from_millis(100));
    child.kill().context("SIGKILL the writer")?;
    let _ = child.wait();

    let log_dir = dir.clone();
    let (elapsed, recovery, size) =
        crate::on_executor("bench-recovery", 8 << 20, move || async move {
            let started = Instant::now();
            let log = PartitionLog::open(&log_dir, LogConfig::default()).await?;
            let elapsed = started.elapsed();
            let recovery = log.recovery().clone();
            let size = log.size_bytes();
            log.close().await?;
            anyhow::Ok((elapsed, recovery, size))
        })?;
    let reopen_ms = elapsed.as_secs_f64() * 1e3;
    let report = Report {
        scenario: "recovery",
        machine,
        log_bytes: size,
        segments: recovery.segment_count,
        scanned_bytes: recovery.scanned_bytes,
        truncated_bytes: recovery.truncated_bytes,
        reopen_ms,
        scanned_mb_s: recovery.scanned_bytes as f64 / 1e6 / elapsed.as_secs_f64(),
    };
    eprintln!(
        "recovery: reopened {:.0} MB in {} segments in {reopen_ms:.1} ms (scanned {:.1} MB, cut {} torn bytes)",
        size as f64 / 1e6,
        recovery.segment_count,
        recovery.scanned_bytes as f64 / 1e6,
        recovery.truncated_bytes
    );
    let mut outcome = Outcome::new("recovery", serde_json::to_value(&report)?);
    outcome.figures.push(Figure::one_run(
        "recovery",
        &format!("reopen after SIGKILL, {:.1} GB log", size as f64 / 1e9),
        reopen_ms,
        "ms",
    ));
    outcome.figures.push(Figure::one_run(
        "recovery",
        "active segment scanned",
        recovery.scanned_bytes as f64 / 1e6,
        "MB",
    ));
    outcome.figures.push(Figure::one_run(
        "recovery",
        "scan rate during reopen",
        report.scanned_mb_s,
        "MB/s",
    ));
    Ok(outcome)
}

/// The child: fill `dir` with `size_mib` MiB of 1 KiB records, print "ready", append until killed.
pub fn writer(dir: &Path, size_mib: u64) -> anyhow::Result<()> {
    let dir = dir.to_path_buf();
    crate::on_executor("recovery-writer", 32 << 20, move || async move {
        let log = PartitionLog::open(&dir, LogConfig::default()).await?;
        let value = vec![0x42u8; 1024];
        let records: Vec<Record<'_>> =
            (0..256).map(|i| Record::new(i, Some(b"key"), &value)).collect();
        let mut announced = false;
        loop {
            log.append(&records, Durability::Written).await?;
            if !announced && log.size_bytes() >= size_mib * MIB {
                println!("ready");
                use std::io::Write;
                std::io::stdout().flush()?;
                announced = true;
            }
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    })
}
