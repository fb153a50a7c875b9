//! Frame-by-frame scans of whole segment files, shared by recovery, index rebuilds and `verify`.
//!
//! The scan is written once over a `ChunkSource` (something that reads bytes at a file position),
//! with two sources: glommio DMA reads for recovery on an executor, and `std::fs` for the offline
//! tools. A scan stops at the first frame that is not valid and reports where and why; whether
//! that is a torn tail (truncate) or corruption (error) is the caller's decision.

use std::ops::{ControlFlow, Deref};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rkyv::util::AlignedVec;

use crate::batch::BatchRef;
use crate::format::{self, FrameDefect, FrameHeader, FRAME_ALIGN};
use crate::index::SegmentIndex;
use crate::io::BLOCK_SIZE;
use crate::Error;

/// Reads `len` bytes (fewer at the end of the file) starting at file position `pos`. The returned
/// bytes start 16-byte aligned in memory, so archives inside them can be accessed in place.
pub trait ChunkSource {
    type Chunk: Deref<Target = [u8]>;
    fn read_chunk(
        &self,
        pos: u64,
        len: usize,
    ) -> impl std::future::Future<Output = Result<Self::Chunk, Error>>;
    fn file_len(&self) -> u64;
    /// Every byte at or after this position reads as zero: it lies in a hole or an unwritten
    /// (preallocated) extent, as the file system reports them (`SEEK_DATA`). Scans read no
    /// further, and conclude exactly what reading those zeros would have. The default, the
    /// file's length, reads everything.
    fn data_end(&self) -> u64 {
        self.file_len()
    }
}

/// Why a scan stopped before the end of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanStop {
    /// Byte position of the first invalid frame.
    pub position: u64,
    pub defect: FrameDefect,
}

/// The result of scanning one segment file.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    /// The valid frames: sizes, offsets, timestamps and the rebuilt sparse index.
    pub index: SegmentIndex,
    /// The first invalid frame, if the scan hit one (a clean zero-filled end is not one).
    pub stop: Option<ScanStop>,
    /// File length on disk.
    pub file_len: u64,
    /// True when some byte after the last valid frame is not zero.
    pub trailing_garbage: bool,
    /// The first record's timestamp of the first valid frame (`None` for an empty segment).
    pub first_timestamp: Option<i64>,
}

impl SegmentScan {
    /// Bytes after the last valid frame that are not a clean zero fill.
    pub fn dropped_bytes(&self) -> u64 {
        if self.trailing_garbage || self.stop.is_some() {
            self.file_len.saturating_sub(self.index.size_bytes)
        } else {
            0
        }
    }
}

/// How much checking a scan does per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Header and checksum (recovery).
    Checksum,
    /// Also the archive's structure, directory ranges and the Kafka CRC32C (`verify`).
    Deep,
}

/// Scans a segment from position 0, expecting its first frame at `base_offset`.
pub async fn scan_segment<S: ChunkSource>(
    source: &S,
    base_offset: u64,
    index_interval_bytes: u32,
    chunk_size: usize,
    depth: Depth,
) -> Result<SegmentScan, Error> {
    let file_len = source.file_len();
    // Past the data, the file reads as zeros (an active segment's preallocated tail, 8 MiB by
    // default): a chunk read stops there, and a frame cannot start there (an all-zero header
    // is a clean end, as parsing those zeros would find).
    let data_end = source.data_end().min(file_len);
    let read_len = |pos: u64| {
        let left = data_end.saturating_sub(pos).next_multiple_of(BLOCK_SIZE as u64);
        chunk_size.min(left as usize).max(BLOCK_SIZE)
    };
    let mut index = SegmentIndex::new(base_offset, index_interval_bytes);
    let mut first_timestamp = None;
    let mut pos = 0u64;
    let mut want = read_len(pos);
    let stop = loop {
        if pos >= file_len || pos >= data_end {
            break None;
        }
        let chunk = source.read_chunk(pos, want).await?;
        let eof = pos + chunk.len() as u64 >= file_len;
        let mut rel = 0usize;
        let step = loop {
            let bytes = &chunk[rel..];
            if bytes.is_empty() {
                break Step::Consumed;
            }
            let position = pos + rel as u64;
            match format::parse_header(bytes) {
                Ok(header) => {
                    let frame_len = header.frame_len as usize;
                    if frame_len > bytes.len() {
                        if eof {
                            let defect = FrameDefect::Truncated {
                                available: bytes.len(),
                                needed: frame_len,
                            };
                            break Step::Stop(Some(ScanStop { position, defect }));
                        }
                        break Step::NeedMore(frame_len);
                    }
                    if let Err(defect) = check_frame(
                        &header,
                        &bytes[..frame_len],
                        position,
                        index.next_offset,
                        depth,
                    ) {
                        break Step::Stop(Some(ScanStop { position, defect }));
                    }
                    first_timestamp.get_or_insert(header.first_timestamp);
                    index.push_frame(
                        header.base_offset,
                        header.record_count,
                        header.max_timestamp,
                        header.frame_len,
                    );
                    // The append time comes from the frames (version 3), never from the
                    // records' event times: unknown (`i64::MIN`) for older frames.
                    index.append_time_ms = index.append_time_ms.max(header.append_time);
                    rel += frame_len;
                }
                Err(FrameDefect::Truncated { .. }) if !eof => {
                    break Step::NeedMore(format::FRAME_HEADER_SIZE)
                }
                Err(FrameDefect::BadMagic { all_zero: true, .. }) => break Step::Stop(None),
                Err(defect) => break Step::Stop(Some(ScanStop { position, defect })),
            }
        };
        pos += rel as u64;
        match step {
            Step::Consumed if eof => break None,
            Step::Consumed => want = read_len(pos),
            // The next frame does not fit in this chunk: read again from its start, at least the
            // whole frame (zeros past the data included, as a frame torn there holds them).
            Step::NeedMore(frame_len) => {
                want = read_len(pos).max(frame_len.next_multiple_of(BLOCK_SIZE));
            }
            Step::Stop(stop) => break stop,
        }
    };
    finish(index, stop, source, file_len, first_timestamp).await
}

enum Step {
    Consumed,
    NeedMore(usize),
    Stop(Option<ScanStop>),
}

fn check_frame(
    header: &FrameHeader,
    frame: &[u8],
    position: u64,
    expected_offset: u64,
    depth: Depth,
) -> Result<(), FrameDefect> {
    let (_, payload) = format::parse_frame(frame)?;
    if u64::from(header.synced_before) > position {
        return Err(FrameDefect::BadHeader { reason: "synced position past the frame itself" });
    }
    if header.base_offset != expected_offset {
        return Err(FrameDefect::BadHeader {
            reason: "base offset does not follow the previous frame",
        });
    }
    if depth == Depth::Deep {
        BatchRef::check_archive(payload).map_err(|reason| FrameDefect::BadHeader { reason })?;
        BatchRef::from_verified(*header, payload)?;
    }
    Ok(())
}

/// Checks whether anything after the valid frames is non-zero, then builds the result.
async fn finish<S: ChunkSource>(
    index: SegmentIndex,
    stop: Option<ScanStop>,
    source: &S,
    file_len: u64,
    first_timestamp: Option<i64>,
) -> Result<SegmentScan, Error> {
    let mut trailing_garbage = false;
    let mut pos = index.size_bytes;
    // Bytes past the data read as zeros: they cannot be garbage.
    let data_end = source.data_end().min(file_len);
    while pos < data_end && !trailing_garbage {
        let chunk = source.read_chunk(pos, (1 << 20).min((data_end - pos) as usize)).await?;
        if chunk.is_empty() {
            break;
        }
        trailing_garbage = chunk.iter().any(|b| *b != 0);
        pos += chunk.len() as u64;
    }
    Ok(SegmentScan { index, stop, file_len, trailing_garbage, first_timestamp })
}

/// What follows the valid frames of an active segment. The rule is documented in `log::recovery`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// Nothing but zeros (or nothing at all) after the last valid frame.
    Clean,
    /// A torn write: everything from `position` on may be cut. Valid frames found after the
    /// damage lay within the window a power cut can tear, and go with it.
    Torn {
        position: u64,
        defect: FrameDefect,
        /// Bytes from `position` to the last non-zero byte.
        dropped_bytes: u64,
        /// Valid frames after the damage, and their offsets `[first, end)`.
        dropped_frames: u64,
        dropped_offsets: Option<(u64, u64)>,
    },
    /// Damage followed by a valid frame farther away than a power cut can explain.
    Corrupt { position: u64, defect: FrameDefect, valid_at: u64, valid_offset: u64 },
}

/// The defect reported for a zero-filled hole followed by non-zero bytes.
pub const HOLE: FrameDefect =
    FrameDefect::BadHeader { reason: "zeros where a frame should start, non-zero bytes after" };

/// Decides whether the damage a scan stopped at (or non-zero bytes after its last frame) is a
/// torn tail or corruption: it searches every 16-byte aligned position after the damage for a
/// valid frame (header and checksum). A valid frame whose `synced_before` lies past the damage, or
/// that ends more than `window_bytes` (plus the damaged frame's own length, when its header is
/// readable) after it, is corruption.
pub async fn classify_tail<S: ChunkSource>(
    source: &S,
    scan: &SegmentScan,
    window_bytes: u64,
) -> Result<Tail, Error> {
    let (position, defect) = match scan.stop {
        Some(stop) => (stop.position, stop.defect),
        None if scan.trailing_garbage => (scan.index.size_bytes, HOLE),
        None => return Ok(Tail::Clean),
    };
    let file_len = source.file_len();
    let header_size = format::FRAME_HEADER_SIZE as u64;
    // A frame whose header survived may have been synced in part: the sync point can fall inside
    // it, so the window reaches back to its start.
    let mut window = window_bytes;
    if position + header_size <= file_len {
        let head = source.read_chunk(position, format::FRAME_HEADER_SIZE).await?;
        if let Ok(header) = format::parse_header(&head) {
            window += u64::from(header.frame_len).min(file_len - position);
        }
    }
    let mut dropped_frames = 0;
    let mut dropped_offsets: Option<(u64, u64)> = None;
    let mut corrupt = None;
    let last_nonzero_end = find_valid_frames(source, position, |at, header| {
        // Damage below a valid frame's synced position was synced before that frame existed, and
        // damage farther before a valid frame than the unsynced bound allows was synced too.
        let synced_past_damage = u64::from(header.synced_before) > position;
        if synced_past_damage || at + u64::from(header.frame_len) - position > window {
            corrupt = Some((at, header.base_offset));
            return ControlFlow::Break(());
        }
        dropped_frames += 1;
        let (first, end) = dropped_offsets.unwrap_or((header.base_offset, header.next_offset()));
        dropped_offsets = Some((first.min(header.base_offset), end.max(header.next_offset())));
        ControlFlow::Continue(())
    })
    .await?;
    if let Some((valid_at, valid_offset)) = corrupt {
        return Ok(Tail::Corrupt { position, defect, valid_at, valid_offset });
    }
    Ok(Tail::Torn {
        position,
        defect,
        dropped_bytes: last_nonzero_end.saturating_sub(position),
        dropped_frames,
        dropped_offsets,
    })
}

/// Whether the valid frames of an active segment end before `synced`, the prefix its sync
/// watermark says a completed fdatasync covered (`crate::watermark`): the position where they end
/// and the defect there (`None`: the data just ends, as in a truncated file). A torn tail there
/// is not one: those bytes were synced, so the damage is corruption. `Tail::Corrupt` is left to
/// the caller (it says more).
pub fn below_watermark(
    scan: &SegmentScan,
    tail: &Tail,
    synced: u64,
) -> Option<(u64, Option<FrameDefect>)> {
    if scan.index.size_bytes >= synced {
        return None;
    }
    match tail {
        Tail::Corrupt { .. } => None,
        Tail::Torn { position, defect, .. } => Some((*position, Some(*defect))),
        Tail::Clean => Some((scan.index.size_bytes, None)),
    }
}

/// Calls `visit` for every valid frame (header and checksum) that starts at a 16-byte aligned
/// position after `position`, in file order, skipping each one's body; stops early when `visit`
/// breaks. Returns the end of the last non-zero byte seen (at least `position`).
pub async fn find_valid_frames<S: ChunkSource>(
    source: &S,
    position: u64,
    mut visit: impl FnMut(u64, &FrameHeader) -> ControlFlow<()>,
) -> Result<u64, Error> {
    let file_len = source.file_len();
    let header_size = format::FRAME_HEADER_SIZE as u64;
    let mut q = position + FRAME_ALIGN as u64;
    let mut last_nonzero_end = position;
    const CHUNK: usize = 1 << 20;
    // Past the data the file reads as zeros: no frame starts there and no byte is non-zero. A
    // chunk still reaches a header's length past it, for a header that starts just before.
    let data_end = source.data_end().min(file_len);
    while q + header_size <= file_len && q < data_end {
        let want = CHUNK.min((data_end - q + header_size) as usize);
        let chunk = source.read_chunk(q, want).await?;
        if let Some(last) = chunk.iter().rposition(|b| *b != 0) {
            last_nonzero_end = last_nonzero_end.max(q + last as u64 + 1);
        }
        let mut rel = 0usize;
        let mut resume = None;
        while rel + format::FRAME_HEADER_SIZE <= chunk.len() {
            let magic =
                u32::from_le_bytes([chunk[rel], chunk[rel + 1], chunk[rel + 2], chunk[rel + 3]]);
            if magic == format::FRAME_MAGIC {
                if let Ok(header) = format::parse_header(&chunk[rel..]) {
                    let at = q + rel as u64;
                    let len = u64::from(header.frame_len);
                    let valid = at + len <= file_len
                        && u64::from(header.synced_before) <= at
                        && if rel + len as usize <= chunk.len() {
                            format::parse_frame(&chunk[rel..rel + len as usize]).is_ok()
                        } else {
                            let frame = source.read_chunk(at, len as usize).await?;
                            frame.len() as u64 == len && format::parse_frame(&frame).is_ok()
                        };
                    if valid {
                        last_nonzero_end = last_nonzero_end.max(at + len);
                        if visit(at, &header).is_break() {
                            return Ok(last_nonzero_end);
                        }
                        resume = Some(at + len);
                        break;
                    }
                }
            }
            rel += FRAME_ALIGN;
        }
        match resume {
            Some(next) => q = next,
            None if rel == 0 => break,
            None => q += rel as u64,
        }
    }
    Ok(last_nonzero_end)
}

/// A `ChunkSource` over `std::fs`, for tools that run without an executor.
pub struct StdSource {
    file: std::fs::File,
    len: u64,
    path: std::path::PathBuf,
}

impl StdSource {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
        let len = file.metadata().map_err(|e| Error::io("stat", path, e))?.len();
        Ok(StdSource { file, len, path: path.to_path_buf() })
    }
}

impl ChunkSource for StdSource {
    type Chunk = AlignedVec<FRAME_ALIGN>;

    async fn read_chunk(&self, pos: u64, len: usize) -> Result<Self::Chunk, Error> {
        let len = len.min(self.len.saturating_sub(pos) as usize);
        let mut chunk = AlignedVec::<FRAME_ALIGN>::with_capacity(len);
        chunk.resize(len, 0);
        self.file.read_exact_at(&mut chunk, pos).map_err(|e| Error::io("read", &self.path, e))?;
        Ok(chunk)
    }

    fn file_len(&self) -> u64 {
        self.len
    }
}

/// `classify_tail` with `std::fs` (blocking).
pub fn classify_tail_std(
    path: &Path,
    scan: &SegmentScan,
    window_bytes: u64,
) -> Result<Tail, Error> {
    let source = StdSource::open(path)?;
    futures_lite::future::block_on(classify_tail(&source, scan, window_bytes))
}

/// Scans a segment file with `std::fs` (blocking).
pub fn scan_segment_std(path: &Path, base_offset: u64, depth: Depth) -> Result<SegmentScan, Error> {
    let source = StdSource::open(path)?;
    futures_lite::future::block_on(scan_segment(&source, base_offset, 64 * 1024, 8 << 20, depth))
}
