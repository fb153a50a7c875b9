//! Offline repair of a corrupt data dir, for `kappa repair`: the explicit, reported cut that
//! recovery refuses to make on its own.
//!
//! Recovery cuts only what a power cut can explain (a torn tail); corruption (damage in a sealed
//! segment, damage followed by valid frames farther than the torn-tail window, an offset gap)
//! makes `open` fail. An operator who accepts the loss runs `repair`: per partition it finds the
//! first such damage, and cuts the log there, since offsets must stay dense, everything after it
//! goes too: the rest of that segment and every later segment. `plan` says exactly what would be
//! dropped (file, byte position, offsets, bytes, files deleted) without changing anything;
//! `apply` does it (truncate and fsync, unlink, the sync watermark lowered to the cut, fsync the
//! directory). Data that the watermark says was synced but that is missing or damaged (see
//! `crate::watermark`) is such damage too.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::io::Disk;
use crate::paths;
use crate::scan::{self, Depth, StdSource, Tail};
use crate::watermark::{self, Watermark};
use crate::Error;

/// The cut `repair` makes in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub topic: String,
    pub partition: u32,
    /// The segment cut, and the byte where the damage starts (it keeps `[0, position)`).
    pub path: PathBuf,
    pub position: u64,
    /// What is wrong there.
    pub reason: String,
    /// The partition's end offset after the cut: the first offset dropped.
    pub first_dropped_offset: u64,
    /// The end of the offsets known to be dropped (valid frames after the damage, later
    /// segments); records in the damaged frames themselves are counted up to here too.
    pub dropped_offsets_end: u64,
    /// Bytes of data removed (zeros reserved past the data not counted): the rest of the cut
    /// segment and every later segment.
    pub dropped_bytes: u64,
    /// Files deleted: later segments, their indexes, and the cut segment's index.
    pub deleted_files: Vec<PathBuf>,
    /// What the partition's sync watermark (`crate::watermark`) is rewritten to, as (segment
    /// base, synced bytes): the cut, so the next open does not refuse the shorter log.
    pub watermark: (u64, u64),
}

/// Finds, per partition of `data_dir`, the first damage `open` would refuse; `window_bytes` is the
/// torn-tail window of the logs (`LogConfig::torn_tail_window_bytes`). Changes nothing.
pub fn plan(data_dir: &Path, window_bytes: u64) -> Result<Vec<Cut>, Error> {
    let partitions = paths::list_partitions(data_dir)?;
    let mut cuts = Vec::new();
    for (topic, partition, dir) in partitions {
        if let Some(cut) = plan_partition(&topic, partition, &dir, window_bytes)? {
            cuts.push(cut);
        }
    }
    Ok(cuts)
}

/// The damage that ends a partition's valid prefix: position and reason. `synced` is what the
/// sync watermark says was synced of this segment (when it is the active one).
fn damage_in(
    path: &Path,
    scan: &scan::SegmentScan,
    sealed: bool,
    window_bytes: u64,
    synced: u64,
) -> Result<Option<(u64, String)>, Error> {
    if sealed {
        return Ok(match (scan.stop, scan.trailing_garbage) {
            (Some(stop), _) => Some((stop.position, format!("sealed segment: {}", stop.defect))),
            (None, true) => Some((
                scan.index.size_bytes,
                "sealed segment: non-zero bytes after the last frame".to_string(),
            )),
            (None, false) => None,
        });
    }
    let tail = scan::classify_tail_std(path, scan, window_bytes)?;
    if let Some((position, defect)) = scan::below_watermark(scan, &tail, synced) {
        let what = defect.map_or_else(|| "the frames end".to_string(), |d| d.to_string());
        return Ok(Some((
            position,
            format!("{what}, but the sync watermark says bytes up to {synced} were synced"),
        )));
    }
    Ok(match tail {
        Tail::Clean | Tail::Torn { .. } => None, // Open cuts a torn tail itself.
        Tail::Corrupt { position, defect, valid_at, .. } => {
            Some((position, format!("{defect}, with valid frames after it at byte {valid_at}")))
        }
    })
}

fn plan_partition(
    topic: &str,
    partition: u32,
    dir: &Path,
    window_bytes: u64,
) -> Result<Option<Cut>, Error> {
    let listed = paths::list_segments(dir)?;
    let last = listed.len().saturating_sub(1);
    let claim = watermark::read_blocking(dir)?;
    let mut expected: Option<u64> = None;
    // The previous segment's base and size: what the log ends with if this segment goes.
    let mut previous = (0, 0);
    for (i, (base, path)) in listed.iter().enumerate() {
        let later = &listed[i + 1..];
        if let Some(expected) = expected.filter(|e| e != base) {
            // An offset gap: this segment and every later one go.
            let mut cut = cut_at(topic, partition, path, 0, expected, later)?;
            cut.watermark = previous;
            cut.reason =
                format!("offset gap: the log reaches {expected}, this segment starts at {base}");
            let (end, data_end) = segment_end(path, *base)?;
            cut.dropped_bytes += data_end;
            cut.dropped_offsets_end = cut.dropped_offsets_end.max(end);
            cut.deleted_files.insert(0, path.clone());
            return Ok(Some(cut));
        }
        let scan = scan::scan_segment_std(path, *base, Depth::Checksum)?;
        let synced = Watermark::synced_in(claim.as_ref(), *base);
        let mut damage = damage_in(path, &scan, i < last, window_bytes, synced)?;
        if let Some(claim) = claim.filter(|c| i == last && c.segment_base > *base) {
            // The watermark vouches for a later segment that is gone: the log ends here.
            damage.get_or_insert((
                scan.index.size_bytes,
                format!(
                    "the sync watermark says {} bytes of segment {} were synced, and that \
                     segment is missing",
                    claim.synced, claim.segment_base
                ),
            ));
        }
        if let Some((position, reason)) = damage {
            let mut cut = cut_at(topic, partition, path, position, scan.index.next_offset, later)?;
            cut.reason = reason;
            cut.watermark = (*base, position);
            let source = StdSource::open(path)?;
            let mut end = cut.dropped_offsets_end;
            let data_end = futures_lite::future::block_on(scan::find_valid_frames(
                &source,
                position,
                |_, h| {
                    end = end.max(h.next_offset());
                    ControlFlow::Continue(())
                },
            ))?;
            // The damaged bytes themselves count, even where they are zeros.
            let damaged_end = scan.stop.map_or(position, |_| position + 1);
            cut.dropped_bytes += data_end.max(damaged_end) - position;
            cut.dropped_offsets_end = end;
            let index = paths::index_path(dir, *base);
            if Disk::Dma.metadata_blocking(&index)?.is_some() {
                cut.deleted_files.push(index);
            }
            return Ok(Some(cut));
        }
        expected = Some(scan.index.next_offset);
        previous = (*base, scan.index.size_bytes);
    }
    Ok(None)
}

/// A cut at `position` of `path`, dropping every segment in `later` (with its index).
fn cut_at(
    topic: &str,
    partition: u32,
    path: &Path,
    position: u64,
    first_dropped_offset: u64,
    later: &[(u64, PathBuf)],
) -> Result<Cut, Error> {
    let mut cut = Cut {
        topic: topic.to_string(),
        partition,
        path: path.to_path_buf(),
        position,
        reason: String::new(),
        first_dropped_offset,
        dropped_offsets_end: first_dropped_offset,
        dropped_bytes: 0,
        deleted_files: Vec::new(),
        watermark: (0, 0),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    for (base, segment) in later {
        let (end, data_end) = segment_end(segment, *base)?;
        cut.dropped_bytes += data_end;
        cut.dropped_offsets_end = cut.dropped_offsets_end.max(end);
        cut.deleted_files.push(segment.clone());
        let index = paths::index_path(dir, *base);
        if Disk::Dma.metadata_blocking(&index)?.is_some() {
            cut.deleted_files.push(index);
        }
    }
    Ok(cut)
}

/// The end offset of a segment (its valid frames, or any valid frame after damage in it) and the
/// end of its data (the last non-zero byte).
fn segment_end(path: &Path, base: u64) -> Result<(u64, u64), Error> {
    let scan = scan::scan_segment_std(path, base, Depth::Checksum)?;
    let mut end = scan.index.next_offset;
    let source = StdSource::open(path)?;
    let data_end = futures_lite::future::block_on(scan::find_valid_frames(
        &source,
        scan.index.size_bytes,
        |_, header| {
            end = end.max(header.next_offset());
            ControlFlow::Continue(())
        },
    ))?;
    Ok((end, data_end.max(scan.index.size_bytes)))
}

/// Makes the cuts: each segment is truncated at its cut and synced, the files after it deleted,
/// the sync watermark lowered to the cut (`Cut::watermark`: else the next open would find less
/// data than it vouches for and refuse), and the partition directory synced. A crash part way
/// leaves a log that `repair` finds and finishes again.
pub fn apply(cuts: &[Cut]) -> Result<(), Error> {
    let disk = Disk::Dma;
    for cut in cuts {
        let dir = cut.path.parent().unwrap_or(Path::new("."));
        if cut.deleted_files.first() != Some(&cut.path) {
            disk.truncate_file_blocking(&cut.path, cut.position)?;
        }
        for file in &cut.deleted_files {
            disk.remove_file_blocking(file)?;
        }
        let (segment_base, synced) = cut.watermark;
        watermark::rewrite_blocking(&disk, dir, segment_base, synced)?;
        disk.sync_dir_blocking(dir)?;
        tracing::warn!(
            segment = %cut.path.display(), position = cut.position,
            first_dropped_offset = cut.first_dropped_offset,
            dropped_offsets_end = cut.dropped_offsets_end, dropped_bytes = cut.dropped_bytes,
            "repair cut the log"
        );
    }
    Ok(())
}
