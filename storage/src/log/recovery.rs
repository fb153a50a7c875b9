//! Opening a partition log: listing segments, loading sealed indexes (rebuilding damaged ones by a
//! checked scan) and scanning the active segment, whose torn tail is cut and whose corruption is
//! refused.
//!
//! # Torn tail or corruption: the rule
//!
//! Only bytes that no completed fdatasync covered can be torn by a power cut, and the writer never
//! lets more than `LogConfig::unsynced_bytes_max` of them exist (`writer::bound_unsynced`), plus
//! the one write buffer that may be in flight past that bound. So after a power cut every hole,
//! torn sector and stale block of a segment lies within `LogConfig::torn_tail_window_bytes` of the
//! end of its written data. Recovery scans the active segment frame by frame (header, checksum,
//! offset continuity). At the first bad frame (bad header, checksum mismatch, truncated frame, or
//! a zero-filled hole with non-zero bytes after it) it searches every 16-byte aligned position
//! after it for a valid frame (`scan::classify_tail`):
//!
//! * a valid frame whose `synced_before` (the synced prefix when it was appended, see `format`)
//!   lies past the damage: corruption, exactly (those bytes were synced before that frame
//!   existed). This catches damage anywhere in synced data, however small the log;
//! * a valid frame ending farther than the window after it: corruption too (it would take more
//!   unsynced bytes than the writer ever allows);
//! * otherwise (no valid frame after it, or valid frames only within the window, widened by the
//!   bad frame's own length when its header is readable, since a sync point can fall inside a
//!   frame): a torn tail, unless the sync watermark says otherwise (below).
//!
//! The frames of the last completed fdatasync have no later frame to prove that sync. The
//! partition's sync watermark (`synced.wm`, see `crate::watermark`) records it: the writer writes
//! it only after a segment fdatasync completed (never claiming more than is synced), when the log
//! has been idle `writer::WATERMARK_IDLE_DELAY` since, and always in `close`. So valid data that
//! ends below the watermark's position in the active segment (damage there, a hole, or a file
//! that just ends: truncated) is corruption, `Error::SyncedDataMissing`, whatever the frame rule
//! says; a watermark naming a segment newer than the active one (the segment is gone) is too. A
//! watermark about an older segment is superseded (a sealed segment was synced whole), and one
//! with no valid slot (torn, or just created) says nothing: the frame rule alone decides, and
//! recovery never refuses for it.
//!
//! What remains unprovable: a sync's proof is durable once a later fdatasync covers a frame
//! appended after it (that frame's `synced_before`), or once the watermark write recording it
//! completed. A power cut in between (under load, about one group-commit interval; when the log
//! goes idle, the idle delay plus one fsync latency) leaves that last synced group to the
//! torn-tail rule: damage in it within the window is cut as a torn tail.
//!
//! A torn tail is cut, the cut is synced, and what was dropped is logged and reported. The cut
//! never goes below the watermark (that would be corruption), so the watermark stays true.
//!
//! On corruption `open` fails with `Error::CorruptBeforeValid` or `Error::SyncedDataMissing`
//! naming the file and position, and nothing is truncated; `kappa repair` cuts such a log
//! explicitly, after a report of what it drops, and lowers the watermark to its cut.
//!
//! A sealed segment was synced whole before the next one was created, so any damage in it is
//! corruption. Zeros after the last frame are a clean end (preallocation puts them there).
//! `open` does not scan sealed segments (their index says where they end; reopening thousands of
//! partitions stays cheap), so bit rot inside one is found by the read that meets it (a typed
//! error naming file and offset, never a short read) and by `kappa verify`, which scans every
//! frame and exits 1: `open` succeeding does not mean `verify` will.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;

use crate::index::SegmentIndex;
use crate::io::{File, ReadBytes, BLOCK_SIZE, TEMP_EXTENSION};
use crate::paths;
use crate::scan::{self, ChunkSource, Depth, Tail};
use crate::sync::Event;
use crate::watermark::{self, Watermark};
use crate::{Error, LogConfig};

use super::writer::writer_loop;
use super::{
    PartitionLog, Readable, RecoveryReport, Segment, Shared, State, WatermarkState, WriteBuffer,
};

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering the active segment's tail. Must run on a
    /// glommio executor; the writer task is spawned on the current task queue.
    pub async fn open(dir: &Path, config: LogConfig) -> Result<PartitionLog, Error> {
        config.validate()?;
        if config.segment_size_bytes_max > u64::from(u32::MAX) {
            return Err(Error::Config { field: "segment_size_bytes_max (at most 4 GiB)" });
        }
        let disk = config.disk.clone();
        // One blocking-pool trip: the dir made, listed, and its sync watermark read (created
        // empty when missing: no claim).
        let prepared = disk.prepare_dir(dir, watermark::FILE_NAME).await?;
        let entries = prepared.entries;
        let claim = Watermark::decode(&prepared.small_file);
        remove_temp_files(&config, dir, &entries).await?;
        let mut listed = paths::segments_in(dir, &entries);
        let mut report = RecoveryReport::default();
        let created = listed.is_empty();
        if created {
            let path = paths::segment_path(dir, 0);
            let file = disk.open_rw(&path).await?;
            file.close().await.map_err(|e| Error::io("close", &path, e))?;
            listed.push((0, path));
        }
        if created || prepared.created {
            // A new segment's or watermark's directory entry becomes durable.
            disk.sync_dir(dir).await?;
        }
        if let Some(claim) = claim {
            let active_base = listed.last().expect("at least one segment").0;
            if claim.segment_base > active_base {
                // The watermark vouches for a segment that is gone (the writer records a claim
                // only after the segment's directory entry was made durable).
                return Err(Error::SyncedDataMissing {
                    path: paths::segment_path(dir, claim.segment_base),
                    position: 0,
                    defect: None,
                    synced: claim.synced,
                    watermark: watermark::path(dir),
                });
            }
        }
        let mut segments: Vec<Segment> = Vec::with_capacity(listed.len());
        // The active segment's file, left open by its recovery, and its size on disk.
        let mut active_file = None;
        let last = listed.len() - 1;
        for (i, (base, path)) in listed.into_iter().enumerate() {
            if let Some(previous) = segments.last() {
                if previous.index.next_offset != base {
                    return Err(Error::OffsetGap {
                        path,
                        expected: previous.index.next_offset,
                        found: base,
                    });
                }
            }
            if i < last {
                // The index is checked (rebuilt when damaged) now, but only its summary is
                // kept: a reader loads the entries when it first needs them (`load_entries`).
                let (mut index, rebuilt) = load_sealed_index(dir, base, &path, &config).await?;
                report.indexes_rebuilt += usize::from(rebuilt);
                index.entries = Vec::new();
                segments.push(Segment { path, index, entries_loaded: false });
            } else {
                let synced = Watermark::synced_in(claim.as_ref(), base);
                let (index, file, file_len) =
                    recover_active(&path, base, synced, &config, &mut report).await?;
                active_file = Some((file, file_len));
                segments.push(Segment { path, index, entries_loaded: true });
            }
        }
        report.segment_count = segments.len();

        let active = segments.last().expect("at least one segment");
        let (file, file_len) = active_file.expect("the last segment is the active one");
        let size = active.index.size_bytes;
        let file_pos = size - size % BLOCK_SIZE as u64;
        // No write buffer yet (an idle partition holds none): the partial tail block is carried
        // until the first append takes a buffer from the shard's pool.
        let mut carry = Vec::new();
        let tail_len = (size - file_pos) as usize;
        if tail_len > 0 {
            // Reload the partial tail block: the next write rewrites it with more frames after.
            let block = file
                .read_at(file_pos, BLOCK_SIZE)
                .await
                .map_err(|e| Error::io("read", &active.path, e))?;
            if block.len() < tail_len {
                return Err(Error::Corrupt {
                    path: active.path.clone(),
                    position: file_pos,
                    defect: crate::format::FrameDefect::Truncated {
                        available: block.len(),
                        needed: tail_len,
                    },
                });
            }
            carry.extend_from_slice(&block[..tail_len]);
        }
        let readable = Readable {
            next_offset: active.index.next_offset,
            segment_base: active.index.base_offset,
            position_end: size,
        };
        let state = State {
            segments,
            scratch: Default::default(),
            buffer: WriteBuffer { buf: None, file_pos, len: tail_len },
            carry,
            streaming: false,
            queue: VecDeque::new(),
            pending: VecDeque::new(),
            pending_sync: VecDeque::new(),
            appended_seq: 0,
            written_seq: 0,
            synced_seq: 0,
            want_synced_seq: 0,
            want_sync_now: false,
            sync_in_flight: false,
            fsync_count: 0,
            index_loads: 0,
            unsynced_bytes_peak: 0,
            tail_cache: VecDeque::new(),
            readable,
            // Recovery synced the active segment: everything recovered survives a power cut.
            synced_readable: readable,
            failure: None,
            closing: false,
            watermark: WatermarkState {
                written: claim.map(|c| (c.segment_base, c.synced)),
                sequence: claim.map_or(0, |c| c.sequence),
                in_flight: false,
                failed: None,
            },
        };
        let shared = Rc::new(Shared {
            dir: dir.to_path_buf(),
            config,
            state: RefCell::new(state),
            changed: Event::default(),
        });
        let writer = glommio::spawn_local(writer_loop(shared.clone(), file, file_len));
        Ok(PartitionLog { shared, writer: RefCell::new(Some(writer)), recovery: report })
    }
}

/// Loads the entries of the sealed segment with base `base` if open kept only its summary: the
/// index file is read and checked again (rebuilt by a checked scan if it is missing or damaged
/// now), and must agree with the summary open checked. A segment retention deleted meanwhile is
/// left to the caller (it finds the segment gone).
pub(crate) async fn load_entries(shared: &Shared, base: u64) -> Result<(), Error> {
    let (path, next_offset, size_bytes) = {
        let st = shared.state.borrow();
        match st.segments.iter().find(|s| s.index.base_offset == base) {
            Some(s) if !s.entries_loaded => {
                (s.path.clone(), s.index.next_offset, s.index.size_bytes)
            }
            _ => return Ok(()),
        }
    };
    let index = match load_sealed_index(&shared.dir, base, &path, &shared.config).await {
        Ok((index, _rebuilt)) => index,
        // Retention deleted the segment meanwhile: the caller finds it gone.
        Err(e)
            if e.is_not_found()
                && !shared.state.borrow().segments.iter().any(|s| s.path == path) =>
        {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    if index.next_offset != next_offset || index.size_bytes != size_bytes {
        return Err(Error::Corrupt {
            path,
            position: index.size_bytes.min(size_bytes),
            defect: crate::format::FrameDefect::BadHeader {
                reason: "a sealed segment changed since the log was opened",
            },
        });
    }
    let mut st = shared.state.borrow_mut();
    let st = &mut *st;
    if let Some(segment) = st.segments.iter_mut().find(|s| s.index.base_offset == base) {
        if !segment.entries_loaded {
            segment.index.entries = index.entries;
            segment.entries_loaded = true;
            st.index_loads += 1;
        }
    }
    Ok(())
}

/// Loads a sealed segment's index, rebuilding it by a checked scan when it is missing or damaged.
async fn load_sealed_index(
    dir: &Path,
    base: u64,
    path: &Path,
    config: &LogConfig,
) -> Result<(SegmentIndex, bool), Error> {
    let disk = &config.disk;
    let index_path = paths::index_path(dir, base);
    let file = disk.open_read(path).await?;
    let file_len = file.file_size().await.map_err(|e| Error::io("stat", path, e))?;
    match disk.read_file(&index_path).await {
        Ok(bytes) => match SegmentIndex::decode(&index_path, &bytes) {
            Ok(index) if index.base_offset == base && index.size_bytes <= file_len => {
                file.close().await.map_err(|e| Error::io("close", path, e))?;
                return Ok((index, false));
            }
            Ok(_) => {
                tracing::warn!(index = %index_path.display(), "index disagrees with its segment; rebuilding")
            }
            Err(e) => tracing::warn!(error = %e, "rebuilding a damaged index"),
        },
        Err(e) if e.is_not_found() => {
            tracing::info!(segment = %path.display(), "sealed segment has no index; rebuilding");
        }
        Err(e) => return Err(e),
    }
    let read = Cell::new(0);
    let source = FileSource::new(&file, file_len, path, &read).await?;
    let scan = scan_file(&source, base, config).await?;
    file.close().await.map_err(|e| Error::io("close", path, e))?;
    if let Some(stop) = scan.stop {
        // A sealed segment is immutable: damage inside it is corruption, never a torn tail.
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            position: stop.position,
            defect: stop.defect,
        });
    }
    if scan.trailing_garbage {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            position: scan.index.size_bytes,
            defect: crate::format::FrameDefect::BadHeader {
                reason: "non-zero bytes after the last frame of a sealed segment",
            },
        });
    }
    disk.write_file_atomic(&index_path, &scan.index.encode()).await?;
    Ok((scan.index, true))
}

/// Scans a whole segment file through DMA reads, checking every frame's checksum.
async fn scan_file(
    source: &FileSource<'_>,
    base: u64,
    config: &LogConfig,
) -> Result<scan::SegmentScan, Error> {
    scan::scan_segment(
        source,
        base,
        config.index_interval_bytes,
        config.read_buffer_size_bytes,
        Depth::Checksum,
    )
    .await
}

/// Scans the active segment; cuts a torn tail and refuses corruption (see the module doc), then
/// syncs the segment so that everything recovered is durable before anyone reads it. `synced` is
/// what the watermark says an fdatasync covered of it. Returns the index, the file (still open:
/// the writer takes it) and its size on disk.
async fn recover_active(
    path: &Path,
    base: u64,
    synced: u64,
    config: &LogConfig,
    report: &mut RecoveryReport,
) -> Result<(SegmentIndex, File, u64), Error> {
    let file = config.disk.open_rw(path).await?;
    let mut file_len = file.file_size().await.map_err(|e| Error::io("stat", path, e))?;
    let read = Cell::new(0);
    let source = FileSource::new(&file, file_len, path, &read).await?;
    let scan = scan_file(&source, base, config).await?;
    report.scanned_bytes = scan.index.size_bytes;
    let tail = scan::classify_tail(&source, &scan, config.torn_tail_window_bytes()).await;
    report.read_bytes = read.get();
    let tail = tail?;
    if let Some((position, defect)) = scan::below_watermark(&scan, &tail, synced) {
        let _ = file.close().await;
        return Err(Error::SyncedDataMissing {
            path: path.to_path_buf(),
            position,
            defect,
            synced,
            watermark: watermark::path(path.parent().unwrap_or(Path::new("."))),
        });
    }
    match tail {
        Tail::Clean => {}
        Tail::Corrupt { position, defect, valid_at, valid_offset } => {
            let _ = file.close().await;
            return Err(Error::CorruptBeforeValid {
                path: path.to_path_buf(),
                position,
                defect,
                valid_at,
                valid_offset,
            });
        }
        Tail::Torn { position, defect, dropped_bytes, dropped_frames, dropped_offsets } => {
            let first_dropped_offset = scan.index.next_offset;
            tracing::warn!(
                segment = %path.display(), position, %defect, dropped_bytes, first_dropped_offset,
                dropped_frames, dropped_offsets = ?dropped_offsets,
                "cutting the torn tail of the active segment (unsynced writes a crash interrupted)"
            );
            file.truncate(position).await.map_err(|e| Error::io("truncate", path, e))?;
            file_len = position;
            report.truncated_bytes = dropped_bytes;
            report.tail_cut = Some(super::TailCut {
                segment: path.to_path_buf(),
                position,
                first_dropped_offset,
                dropped_bytes,
                dropped_frames,
                dropped_offsets,
            });
        }
    }
    file.fdatasync().await.map_err(|e| Error::io("fdatasync", path, e))?;
    Ok((scan.index, file, file_len))
}

/// Deletes temp files an interrupted `write_file_atomic` left in a partition dir (this log is
/// their only writer, and it is not running yet).
async fn remove_temp_files(
    config: &LogConfig,
    dir: &Path,
    entries: &[crate::io::DirEntry],
) -> Result<(), Error> {
    let mut removed = false;
    for entry in entries {
        let path = dir.join(&entry.name);
        if !entry.is_dir && path.extension().is_some_and(|e| e == TEMP_EXTENSION) {
            config.disk.remove_file(&path).await?;
            removed = true;
        }
    }
    if removed {
        config.disk.sync_dir(dir).await?;
    }
    Ok(())
}

/// A `ChunkSource` over a file of the seam.
pub(crate) struct FileSource<'a> {
    pub(crate) file: &'a File,
    pub(crate) len: u64,
    /// Where the file's data ends (`File::data_end`): zeros from there to `len`.
    pub(crate) data_end: u64,
    pub(crate) path: &'a Path,
    /// Bytes read through this source.
    pub(crate) read: &'a Cell<u64>,
}

impl<'a> FileSource<'a> {
    /// A source over `file` of size `len`, asking the file system where its data ends.
    pub(crate) async fn new(
        file: &'a File,
        len: u64,
        path: &'a Path,
        read: &'a Cell<u64>,
    ) -> Result<FileSource<'a>, Error> {
        let data_end = file.data_end(len).await.map_err(|e| Error::io("seek data", path, e))?;
        Ok(FileSource { file, len, data_end, path, read })
    }
}

impl ChunkSource for FileSource<'_> {
    /// A read sliced to start at the requested (16-aligned) position.
    type Chunk = ReadBytes;

    async fn read_chunk(&self, pos: u64, len: usize) -> Result<ReadBytes, Error> {
        let aligned = pos - pos % BLOCK_SIZE as u64;
        let skip = (pos - aligned) as usize;
        let size = (skip + len).next_multiple_of(BLOCK_SIZE);
        let read =
            self.file.read_at(aligned, size).await.map_err(|e| Error::io("read", self.path, e))?;
        self.read.set(self.read.get() + read.len() as u64);
        Ok(read.slice(skip, len))
    }

    fn file_len(&self) -> u64 {
        self.len
    }

    fn data_end(&self) -> u64 {
        self.data_end
    }
}
