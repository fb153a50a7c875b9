//! Offline checks and summaries of a data dir, for `kappa verify` and `kappa inspect`.
//!
//! These run without an executor (blocking reads) and never modify anything. `verify` reads every
//! frame of every segment and checks headers, checksums, offset continuity, archive structure and
//! the Kafka CRC32C; it also checks each sealed segment's index file against the segment. Damage
//! in the active segment is classified by the same rule recovery applies (`scan::classify_tail`):
//! a torn tail is recoverable (the next open cuts it), damage followed by valid frames farther
//! than the torn-tail window is corruption, and so is valid data ending below what the partition's
//! sync watermark (`crate::watermark`) says was synced.

use std::path::{Path, PathBuf};

use crate::index::SegmentIndex;
use crate::io::Disk;
use crate::paths;
use crate::scan::{self, Depth, Tail};
use crate::watermark::{self, Watermark};
use crate::{Error, LogConfig};

/// One problem found by `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub position: u64,
    pub what: String,
    /// A torn tail of the active segment: normal after a crash, cut off by the next open.
    pub recoverable: bool,
}

/// The torn-tail window `verify` assumes: the default log configuration's.
pub fn default_window_bytes() -> u64 {
    LogConfig::default().torn_tail_window_bytes()
}

/// What `inspect` and `verify` know about one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    pub path: PathBuf,
    pub base_offset: u64,
    pub next_offset: u64,
    pub size_bytes: u64,
    pub file_len: u64,
    pub first_timestamp: Option<i64>,
    pub max_timestamp: Option<i64>,
    pub sealed: bool,
    /// Entries of the sparse index the scan built (about one per `index_interval_bytes`).
    pub index_entry_count: usize,
}

/// One partition's segments and problems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSummary {
    pub topic: String,
    pub partition: u32,
    pub segments: Vec<SegmentSummary>,
    pub problems: Vec<Problem>,
}

/// Scans every partition of a data dir (with the default torn-tail window).
pub fn scan_data_dir(data_dir: &Path) -> Result<Vec<PartitionSummary>, Error> {
    scan_data_dir_with(data_dir, default_window_bytes())
}

/// Scans every partition of a data dir; `window_bytes` is the torn-tail window of its logs
/// (`LogConfig::torn_tail_window_bytes`).
pub fn scan_data_dir_with(
    data_dir: &Path,
    window_bytes: u64,
) -> Result<Vec<PartitionSummary>, Error> {
    if !data_dir.is_dir() {
        return Err(Error::io(
            "open data dir",
            data_dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        ));
    }
    let partitions = paths::list_partitions(data_dir)?;
    partitions
        .into_iter()
        .map(|(topic, partition, dir)| {
            let (segments, problems) = scan_partition(&dir, window_bytes)?;
            Ok(PartitionSummary { topic, partition, segments, problems })
        })
        .collect()
}

/// Scans one partition dir: every segment, frame by frame.
pub fn scan_partition(
    dir: &Path,
    window_bytes: u64,
) -> Result<(Vec<SegmentSummary>, Vec<Problem>), Error> {
    let listed = paths::list_segments(dir)?;
    let mut segments = Vec::with_capacity(listed.len());
    let mut problems = Vec::new();
    let claim = watermark::read_blocking(dir)?;
    if let (Some(claim), Some((active_base, _))) = (claim, listed.last()) {
        if claim.segment_base > *active_base {
            problems.push(Problem {
                path: paths::segment_path(dir, claim.segment_base),
                position: 0,
                what: format!(
                    "missing: the sync watermark says {} bytes of this segment were synced",
                    claim.synced
                ),
                recoverable: false,
            });
        }
    }
    let mut expected_base: Option<u64> = None;
    let last = listed.len().saturating_sub(1);
    for (i, (base, path)) in listed.into_iter().enumerate() {
        let sealed = i < last;
        if let Some(expected) = expected_base {
            if expected != base {
                problems.push(Problem {
                    path: path.clone(),
                    position: 0,
                    what: format!("offset gap: previous segment ends at {expected}, this one starts at {base}"),
                    recoverable: false,
                });
            }
        }
        let scan = scan::scan_segment_std(&path, base, Depth::Deep)?;
        let index = &scan.index;
        if sealed {
            if let Some(stop) = scan.stop {
                problems.push(Problem {
                    path: path.clone(),
                    position: stop.position,
                    what: stop.defect.to_string(),
                    recoverable: false,
                });
            } else if scan.trailing_garbage {
                problems.push(Problem {
                    path: path.clone(),
                    position: index.size_bytes,
                    what: "non-zero bytes after the last frame of a sealed segment".to_string(),
                    recoverable: false,
                });
            }
        } else {
            let tail = scan::classify_tail_std(&path, &scan, window_bytes)?;
            let synced = Watermark::synced_in(claim.as_ref(), base);
            match scan::below_watermark(&scan, &tail, synced) {
                Some((position, defect)) => problems.push(Problem {
                    path: path.clone(),
                    position,
                    what: format!(
                        "{}, but the sync watermark says bytes up to {synced} were synced: \
                         synced data missing, corrupt",
                        defect.map_or_else(|| "the frames end".to_string(), |d| d.to_string())
                    ),
                    recoverable: false,
                }),
                None => classify(&path, tail, &mut problems),
            }
        }
        if sealed {
            check_index(dir, base, index, &mut problems);
        }
        let first_timestamp = scan.first_timestamp;
        segments.push(SegmentSummary {
            path,
            base_offset: base,
            next_offset: index.next_offset,
            size_bytes: index.size_bytes,
            file_len: scan.file_len,
            first_timestamp,
            max_timestamp: (!index.is_empty()).then_some(index.max_timestamp),
            sealed,
            index_entry_count: index.entries.len(),
        });
        expected_base = Some(index.next_offset);
    }
    Ok((segments, problems))
}

/// The problem (if any) the frame rule finds at the end of an active segment.
fn classify(path: &Path, tail: Tail, problems: &mut Vec<Problem>) {
    let path = path.to_path_buf();
    match tail {
        Tail::Clean => {}
        Tail::Torn { position, defect, dropped_bytes, dropped_frames, .. } => {
            problems.push(Problem {
                path,
                position,
                what: format!(
                    "{defect}: a torn tail ({dropped_bytes} bytes, {dropped_frames} frames \
                     after the damage)"
                ),
                recoverable: true,
            })
        }
        Tail::Corrupt { position, defect, valid_at, valid_offset } => problems.push(Problem {
            path,
            position,
            what: format!(
                "{defect}; valid frames follow at byte {valid_at} (offset {valid_offset}), too \
                 far for a torn write: corrupt"
            ),
            recoverable: false,
        }),
    }
}

fn check_index(dir: &Path, base: u64, scanned: &SegmentIndex, problems: &mut Vec<Problem>) {
    let index_path = paths::index_path(dir, base);
    let bytes = match Disk::Dma.read_file_blocking(&index_path) {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => return, // Rebuilt on open.
        Err(e) => {
            problems.push(Problem {
                path: index_path,
                position: 0,
                what: e.to_string(),
                recoverable: true,
            });
            return;
        }
    };
    match SegmentIndex::decode(&index_path, &bytes) {
        Ok(stored) => {
            if stored.next_offset != scanned.next_offset || stored.size_bytes != scanned.size_bytes
            {
                problems.push(Problem {
                    path: index_path,
                    position: 0,
                    what: format!(
                        "index says offsets ..{} and {} bytes, segment holds ..{} and {} bytes",
                        stored.next_offset,
                        stored.size_bytes,
                        scanned.next_offset,
                        scanned.size_bytes
                    ),
                    recoverable: false,
                });
            }
        }
        Err(e) => problems.push(Problem {
            path: index_path,
            position: 0,
            what: e.to_string(),
            recoverable: true,
        }),
    }
}
