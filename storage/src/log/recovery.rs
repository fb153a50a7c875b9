//! Opening a partition log: listing segments, loading sealed indexes (rebuilding damaged ones by a
//! checked scan) and scanning the active segment, whose torn tail is cut.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::batch::BatchEncoder;
use crate::index::SegmentIndex;
use crate::io::{File, ReadBytes, BLOCK_SIZE};
use crate::paths;
use crate::scan::{self, ChunkSource, Depth};
use crate::sync::Event;
use crate::{Error, LogConfig};

use super::writer::writer_loop;
use super::{PartitionLog, Readable, RecoveryReport, Segment, Shared, State, WriteBuffer};

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering the active segment's tail. Must run on a
    /// glommio executor; the writer task is spawned on the current task queue.
    pub async fn open(dir: &Path, config: LogConfig) -> Result<PartitionLog, Error> {
        config.validate()?;
        if config.segment_size_bytes_max > u64::from(u32::MAX) {
            return Err(Error::Config { field: "segment_size_bytes_max (at most 4 GiB)" });
        }
        let disk = config.disk.clone();
        disk.create_dir_all(dir).await?;
        disk.prime(dir).await?;

        let mut listed = paths::segments_in(dir, &disk.list_dir(dir).await?);
        let mut report = RecoveryReport::default();
        if listed.is_empty() {
            let path = paths::segment_path(dir, 0);
            let file = disk.open_rw(&path).await?;
            file.close().await.map_err(|e| Error::io("close", &path, e))?;
            disk.sync_dir(dir).await?;
            listed.push((0, path));
        }
        let mut segments: Vec<Segment> = Vec::with_capacity(listed.len());
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
                let (index, rebuilt) = load_sealed_index(dir, base, &path, &config).await?;
                report.indexes_rebuilt += usize::from(rebuilt);
                segments.push(Segment { path, index });
            } else {
                let index = recover_active(&path, base, &config, &mut report).await?;
                segments.push(Segment { path, index });
            }
        }
        report.segment_count = segments.len();

        let active = segments.last().expect("at least one segment");
        let file = disk.open_rw(&active.path).await?;
        let size = active.index.size_bytes;
        let file_pos = size - size % BLOCK_SIZE as u64;
        let mut buf = file.alloc_dma_buffer(config.write_buffer_size_bytes);
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
            buf.as_bytes_mut()[..tail_len].copy_from_slice(&block[..tail_len]);
        }
        let readable = Readable {
            next_offset: active.index.next_offset,
            segment_base: active.index.base_offset,
            position_end: size,
        };
        let state = State {
            segments,
            encoder: BatchEncoder::new(config.limits),
            buffer: WriteBuffer { buf, file_pos, len: tail_len },
            queue: VecDeque::new(),
            pending: VecDeque::new(),
            appended_seq: 0,
            written_seq: 0,
            synced_seq: 0,
            want_synced_seq: 0,
            sync_in_flight: false,
            fsync_count: 0,
            fsync_latency_ns: hdrhistogram::Histogram::new_with_bounds(1_000, 60_000_000_000, 2)
                .expect("static histogram bounds are valid"),
            tail_cache: VecDeque::new(),
            free_buffers: Vec::new(),
            readable,
            failure: None,
            failure_path: PathBuf::new(),
            closing: false,
        };
        let shared = Rc::new(Shared {
            dir: dir.to_path_buf(),
            config,
            state: RefCell::new(state),
            changed: Event::default(),
        });
        let writer = glommio::spawn_local(writer_loop(shared.clone(), file));
        Ok(PartitionLog { shared, writer: RefCell::new(Some(writer)), recovery: report })
    }
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
    let scan = scan_file(&file, file_len, path, base, config).await?;
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
    file: &File,
    len: u64,
    path: &Path,
    base: u64,
    config: &LogConfig,
) -> Result<scan::SegmentScan, Error> {
    let source = FileSource { file, len, path };
    scan::scan_segment(
        &source,
        base,
        config.index_interval_bytes,
        config.read_buffer_size_bytes,
        Depth::Checksum,
    )
    .await
}

/// Scans the active segment and truncates a torn or corrupt tail at the last valid frame.
async fn recover_active(
    path: &Path,
    base: u64,
    config: &LogConfig,
    report: &mut RecoveryReport,
) -> Result<SegmentIndex, Error> {
    let file = config.disk.open_rw(path).await?;
    let file_len = file.file_size().await.map_err(|e| Error::io("stat", path, e))?;
    let scan = scan_file(&file, file_len, path, base, config).await?;
    report.scanned_bytes = scan.index.size_bytes;
    let dropped = scan.dropped_bytes();
    if dropped > 0 {
        let valid = scan.index.size_bytes;
        match scan.stop {
            Some(stop) => tracing::warn!(
                segment = %path.display(), position = stop.position, defect = %stop.defect,
                dropped_bytes = dropped, "truncating torn tail of the active segment"),
            None => tracing::warn!(
                segment = %path.display(), position = valid, dropped_bytes = dropped,
                "truncating garbage after the last frame of the active segment"),
        }
        file.truncate(valid).await.map_err(|e| Error::io("truncate", path, e))?;
        file.fdatasync().await.map_err(|e| Error::io("fdatasync", path, e))?;
        report.truncated_bytes = dropped;
    }
    file.close().await.map_err(|e| Error::io("close", path, e))?;
    Ok(scan.index)
}

/// A `ChunkSource` over a file of the seam.
pub(crate) struct FileSource<'a> {
    pub(crate) file: &'a File,
    pub(crate) len: u64,
    pub(crate) path: &'a Path,
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
        Ok(read.slice(skip, len))
    }

    fn file_len(&self) -> u64 {
        self.len
    }
}
