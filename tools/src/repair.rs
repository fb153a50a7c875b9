//! `kappa repair DIR [--dry-run]`: cut each corrupt partition at its first damage, after a report
//! of exactly what goes (file, byte, offsets, bytes, files deleted, and the view checkpoints past
//! the cut, removed durably before the log is cut: `kappa_engine::view::cut`).

use std::path::Path;

use anyhow::Context;

use crate::cli::{EXIT_CORRUPT, EXIT_OK};

/// Exit codes: 0 when nothing needed a cut or the cuts were made; with `--dry-run`, 1 when a cut
/// would be made (so scripts can ask "is this log corrupt?").
pub fn run(dir: &Path, dry_run: bool, window_bytes: u64) -> anyhow::Result<i32> {
    // A cut while an engine writes would race it: take the data dir (a dry run only reads).
    let _owner = if dry_run {
        None
    } else {
        anyhow::ensure!(dir.is_dir(), "data dir {} does not exist", dir.display());
        Some(kappa_engine::DirLock::acquire(dir)?)
    };
    let cuts = kappa_storage::repair::plan(dir, window_bytes)
        .with_context(|| format!("scanning data dir {}", dir.display()))?;
    if cuts.is_empty() {
        println!("nothing to repair under {}", dir.display());
        return Ok(EXIT_OK);
    }
    // Per cut, the view checkpoints of its partition past the cut (`view::cut`).
    let stale = cuts
        .iter()
        .map(|cut| {
            kappa_engine::view::cut::checkpoints_past(
                &kappa_storage::io::Disk::Dma,
                dir,
                &cut.topic,
                cut.partition,
                cut.first_dropped_offset,
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("listing view checkpoints under {}", dir.display()))?;
    let verb = if dry_run { "would drop" } else { "drops" };
    for (i, cut) in cuts.iter().enumerate() {
        println!(
            "{}/{}: {} at byte {}: {}",
            cut.topic,
            cut.partition,
            cut.path.display(),
            cut.position,
            cut.reason
        );
        println!(
            "  {verb} offsets {}..{} ({} records), {} bytes; the partition ends at offset {}",
            cut.first_dropped_offset,
            cut.dropped_offsets_end,
            cut.dropped_offsets_end - cut.first_dropped_offset,
            cut.dropped_bytes,
            cut.first_dropped_offset
        );
        for file in &cut.deleted_files {
            println!("  {} {}", if dry_run { "would delete" } else { "deletes" }, file.display());
        }
        let (segment_base, synced) = cut.watermark;
        println!(
            "  {} the sync watermark to {synced} bytes of segment {segment_base}",
            if dry_run { "would lower" } else { "lowers" }
        );
        for checkpoint in &stale[i] {
            println!(
                "  {} view checkpoint {} (view {} version {}, {}): past the cut, its view \
                 replays this partition",
                if dry_run { "would delete" } else { "deletes" },
                checkpoint.path.display(),
                checkpoint.view,
                checkpoint.version,
                checkpoint
                    .next_offset
                    .map_or_else(|| "unreadable".to_string(), |next| format!("next offset {next}")),
            );
        }
    }
    if dry_run {
        println!("dry run: nothing changed ({} partitions need a cut)", cuts.len());
        return Ok(EXIT_CORRUPT);
    }
    // Durably gone before any log is cut: a crash in between leaves fewer checkpoints, never
    // one that claims records the log no longer holds.
    let disk = kappa_storage::io::Disk::Dma;
    for checkpoints in &stale {
        kappa_engine::view::cut::remove_checkpoints(&disk, checkpoints)
            .with_context(|| format!("removing view checkpoints under {}", dir.display()))?;
    }
    kappa_storage::repair::apply(&cuts)
        .with_context(|| format!("repairing data dir {}", dir.display()))?;
    println!("repaired {} partitions", cuts.len());
    Ok(EXIT_OK)
}
