//! View checkpoints that a cut of the log would leave pointing past its end, for `kappa repair`.
//!
//! A checkpoint at next offset `n` says "records `0..n` of this partition are folded in". When
//! `repair` cuts the partition's log at `c < n`, the records `c..n` are gone, and the offsets are
//! taken again by the next appends: a view resuming that checkpoint once the log grew past `n`
//! would count records that no longer exist and miss the ones that took their offsets. So
//! repair removes every such checkpoint, durably (unlink, then an fsync of each directory),
//! before it truncates: the view then resumes an older checkpoint at or before the cut, or
//! replays the partition. A crash between the two leaves fewer checkpoints, never a wrong one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kappa_storage::io::Disk;

use crate::Error;

/// A checkpoint of a view that reads the cut topic-partition, past the cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleCheckpoint {
    pub view: String,
    pub version: u32,
    pub path: PathBuf,
    /// Its next offset as recorded in it; `None` when it cannot be decoded (damaged or of an
    /// unknown format), where its file name (the offset it was written at) decided.
    pub next_offset: Option<u64>,
}

/// Every checkpoint under `DIR/views` of a view reading `topic`, for `partition`, whose next
/// offset lies past `cut` (the partition's end after the cut). Changes nothing; a view whose
/// `meta.json` cannot be read is an error naming it (repair must not guess which topic it reads).
pub fn checkpoints_past(
    disk: &Disk,
    data_dir: &Path,
    topic: &str,
    partition: u32,
    cut: u64,
) -> Result<Vec<StaleCheckpoint>, Error> {
    let views = data_dir.join("views");
    let mut stale = Vec::new();
    for view in list_or_empty(disk, &views)? {
        if !view.is_dir {
            continue;
        }
        let Some(name) = view.name.to_str() else { continue };
        let dir = views.join(name);
        let Some(meta) = super::read_meta(disk, &dir)? else { continue };
        if meta.topic != topic {
            continue;
        }
        for version in list_or_empty(disk, &dir)? {
            let Some(number) = version.name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let partition_dir = dir.join(number.to_string()).join(partition.to_string());
            for file in list_or_empty(disk, &partition_dir)? {
                let path = partition_dir.join(&file.name);
                if path.extension().and_then(|e| e.to_str()) != Some("ckpt") {
                    continue;
                }
                let named = path.file_stem().and_then(|s| s.to_str()?.parse::<u64>().ok());
                let recorded = disk
                    .read_file_blocking(&path)
                    .ok()
                    .and_then(|bytes| super::state::checkpoint_next_offset(&path, &bytes).ok());
                if recorded.or(named).is_none_or(|next| next > cut) {
                    stale.push(StaleCheckpoint {
                        view: name.to_string(),
                        version: number,
                        path,
                        next_offset: recorded,
                    });
                }
            }
        }
    }
    stale.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(stale)
}

/// Removes the checkpoints, then syncs each directory they were in: durable when this returns.
pub fn remove_checkpoints(disk: &Disk, stale: &[StaleCheckpoint]) -> Result<(), Error> {
    let mut dirs = BTreeSet::new();
    for checkpoint in stale {
        match disk.remove_file_blocking(&checkpoint.path) {
            Err(e) if e.is_not_found() => {}
            other => other?,
        }
        if let Some(dir) = checkpoint.path.parent() {
            dirs.insert(dir.to_path_buf());
        }
    }
    for dir in dirs {
        disk.sync_dir_blocking(&dir)?;
    }
    Ok(())
}

fn list_or_empty(disk: &Disk, dir: &Path) -> Result<Vec<kappa_storage::io::DirEntry>, Error> {
    match disk.list_dir_blocking(dir) {
        Ok(entries) => Ok(entries),
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}
