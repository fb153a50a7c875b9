//! Frame-by-frame scans of whole segment files, shared by recovery, index rebuilds and `verify`.
//!
//! The scan is written once over a `ChunkSource` (something that reads bytes at a file position),
//! with two sources: glommio DMA reads for recovery on an executor, and `std::fs` for the offline
//! tools. A scan stops at the first frame that is not valid and reports where and why; whether
//! that is a torn tail (truncate) or corruption (error) is the caller's decision.

use std::ops::Deref;
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
    let mut index = SegmentIndex::new(base_offset, index_interval_bytes);
    let mut first_timestamp = None;
    let mut pos = 0u64;
    let mut want = chunk_size.max(BLOCK_SIZE);
    let stop = loop {
        if pos >= file_len {
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
                    if let Err(defect) =
                        check_frame(&header, &bytes[..frame_len], index.next_offset, depth)
                    {
                        break Step::Stop(Some(ScanStop { position, defect }));
                    }
                    first_timestamp.get_or_insert(header.first_timestamp);
                    index.push_frame(
                        header.base_offset,
                        header.record_count,
                        header.max_timestamp,
                        header.frame_len,
                    );
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
            Step::Consumed => want = chunk_size.max(BLOCK_SIZE),
            // The next frame does not fit in this chunk: read again from its start, at least the
            // whole frame.
            Step::NeedMore(frame_len) => {
                want = chunk_size.max(frame_len.next_multiple_of(BLOCK_SIZE));
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
    expected_offset: u64,
    depth: Depth,
) -> Result<(), FrameDefect> {
    let (_, payload) = format::parse_frame(frame)?;
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
    while pos < file_len && !trailing_garbage {
        let chunk = source.read_chunk(pos, 1 << 20).await?;
        if chunk.is_empty() {
            break;
        }
        trailing_garbage = chunk.iter().any(|b| *b != 0);
        pos += chunk.len() as u64;
    }
    Ok(SegmentScan { index, stop, file_len, trailing_garbage, first_timestamp })
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

/// Scans a segment file with `std::fs` (blocking).
pub fn scan_segment_std(path: &Path, base_offset: u64, depth: Depth) -> Result<SegmentScan, Error> {
    let source = StdSource::open(path)?;
    futures_lite::future::block_on(scan_segment(&source, base_offset, 64 * 1024, 8 << 20, depth))
}
