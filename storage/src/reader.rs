//! `LogReader`: sequential, zero-copy reads of a partition from any starting point.
//!
//! A reader walks segments with large DMA reads (`read_buffer_size_bytes`) and keeps the next read
//! in flight while the caller processes the current one (read-ahead). Where the next read starts is
//! known before the current chunk is processed: a walk over the frame headers finds the last frame
//! that is whole in the chunk, and the next read starts at that frame's block. A frame never spans
//! two buffers, so every `BatchRef` borrows one DMA buffer directly: no stitching copies.
//!
//! Each frame's checksum is verified once, when the reader hands it out; a mismatch is a typed
//! `Error::Corrupt` naming the file and byte position.

use std::path::PathBuf;
use std::rc::Rc;

use glommio::io::{DmaFile, ReadResult};
use glommio::Task;

use crate::batch::{BatchRef, RecordRef};
use crate::format::{self, FrameHeader};
use crate::io::{self, BLOCK_SIZE};
use crate::log::{PartitionLog, Shared};
use crate::Error;

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek {
    /// The first record still in the log.
    Beginning,
    /// The record with this offset (the batch holding it is read, earlier records skipped).
    Offset(u64),
    /// The first record whose timestamp is at or after this (ms), in offset order.
    Timestamp(i64),
    /// The next record to be appended (a pure tail reader).
    End,
}

/// A batch handed out by a reader, and the first offset in it the reader was asked for.
pub struct ReadBatch<'a> {
    pub batch: BatchRef<'a>,
    /// Records before this offset were before the seek point.
    pub first_offset: u64,
}

impl<'a> ReadBatch<'a> {
    /// The records at or after the seek point.
    pub fn records(&self) -> impl Iterator<Item = RecordRef<'a>> + 'a {
        self.batch.records_from(self.first_offset)
    }
}

type ReadTask = Task<Result<ReadResult, std::io::Error>>;

struct Chunk {
    /// File position of `bytes[0]` (block aligned).
    pos: u64,
    bytes: ReadResult,
}

struct OpenSegment {
    base_offset: u64,
    path: PathBuf,
    file: Rc<DmaFile>,
    /// Position of the next frame to hand out.
    pos: u64,
    chunk: Option<Chunk>,
    prefetch: Option<(u64, ReadTask)>,
    /// The frame handed out last: its start inside `chunk` and its header.
    current: Option<(usize, FrameHeader)>,
}

/// Reads one partition forward from a seek point. `!Send`, like the log it reads.
pub struct LogReader {
    shared: Rc<Shared>,
    /// The next offset the caller wants.
    next_offset: u64,
    /// For timestamp seeks: skip records older than this until the first match.
    min_timestamp: Option<i64>,
    segment: Option<OpenSegment>,
}

impl PartitionLog {
    /// A reader starting at `seek`.
    pub fn reader(&self, seek: Seek) -> Result<LogReader, Error> {
        let shared = self.shared().clone();
        let (next_offset, min_timestamp) = {
            let st = shared.state.borrow();
            let start = st.segments[0].index.base_offset;
            let end = st.segments.last().expect("active segment").index.next_offset;
            match seek {
                Seek::Beginning => (start, None),
                Seek::End => (end, None),
                Seek::Offset(offset) => {
                    if offset < start || offset > end {
                        return Err(Error::OffsetOutOfRange { requested: offset, start, end });
                    }
                    (offset, None)
                }
                Seek::Timestamp(ts) => {
                    let segment = st.segments.iter().find(|s| s.index.max_timestamp >= ts);
                    match segment {
                        // No record is that new yet: start at the end and wait for one.
                        None => (end, None),
                        Some(s) => {
                            // Start at the indexed frame and skip older records.
                            let pos = s.index.position_for_timestamp(ts);
                            let offset = s
                                .index
                                .entries
                                .iter()
                                .rev()
                                .find(|e| u64::from(e.position) <= pos)
                                .map_or(s.index.base_offset, |e| {
                                    s.index.base_offset + u64::from(e.rel_offset)
                                });
                            (offset, Some(ts))
                        }
                    }
                }
            }
        };
        Ok(LogReader { shared, next_offset, min_timestamp, segment: None })
    }
}

impl LogReader {
    /// The offset of the next record this reader will return.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The next batch holding records at or after `next_offset`, or `None` when the reader has
    /// caught up with the readable end of the log (wait with `PartitionLog::wait_readable`).
    pub async fn next_batch(&mut self) -> Result<Option<ReadBatch<'_>>, Error> {
        loop {
            if !self.ensure_segment().await? {
                return Ok(None);
            }
            let limit = {
                let segment = self.segment.as_ref().expect("ensured");
                self.shared.readable_limit(segment.base_offset).unwrap_or(0)
            };
            let segment = self.segment.as_mut().expect("ensured");
            if segment.pos >= limit {
                // Done with this segment if it is sealed and fully read; else caught up.
                let sealed_end = {
                    let st = self.shared.state.borrow();
                    let position =
                        st.segments.iter().position(|s| s.index.base_offset == segment.base_offset);
                    position.and_then(|i| {
                        (i + 1 < st.segments.len()).then(|| st.segments[i].index.size_bytes)
                    })
                };
                match sealed_end {
                    Some(size) if segment.pos >= size => {
                        self.segment = None;
                        continue;
                    }
                    _ => return Ok(None),
                }
            }
            let (header, frame_start) =
                load_frame(segment, limit, self.shared.config.read_buffer_size_bytes).await?;
            let chunk = segment.chunk.as_ref().expect("load_frame leaves a chunk");
            let frame = &chunk.bytes[frame_start..frame_start + header.frame_len as usize];
            let position = segment.pos;
            if let Err(defect) = format::parse_frame(frame) {
                return Err(Error::Corrupt { path: segment.path.clone(), position, defect });
            }
            segment.pos += u64::from(header.frame_len);
            segment.current = Some((frame_start, header));
            if header.next_offset() <= self.next_offset {
                continue;
            }
            if let Some(min_ts) = self.min_timestamp {
                if header.max_timestamp < min_ts {
                    self.next_offset = header.next_offset();
                    continue;
                }
            }
            break;
        }
        // The borrow of the chunk is taken again here, outside the loop, so the returned batch can
        // borrow `self` (the loop above needs `self` mutably).
        let segment = self.segment.as_ref().expect("a frame was loaded");
        let chunk = segment.chunk.as_ref().expect("a frame was loaded");
        let (start, header) = segment.current.expect("a frame was loaded");
        let frame_pos = chunk.pos + start as u64;
        let payload_start = start + format::FRAME_HEADER_SIZE;
        let payload = &chunk.bytes[payload_start..payload_start + header.payload_len as usize];
        let batch = BatchRef::from_verified(header, payload).map_err(|defect| Error::Corrupt {
            path: segment.path.clone(),
            position: frame_pos,
            defect,
        })?;
        let mut first_offset = self.next_offset.max(batch.base_offset());
        if let Some(min_ts) = self.min_timestamp.take() {
            // The first record at or after the timestamp; the rest of the log follows in offset
            // order from there.
            first_offset = batch
                .records_from(first_offset)
                .find(|r| r.timestamp() >= min_ts)
                .map_or(batch.next_offset(), |r| r.offset());
        }
        self.next_offset = batch.next_offset();
        Ok(Some(ReadBatch { batch, first_offset }))
    }

    /// Opens the segment holding `next_offset`; false when there is nothing to read yet.
    async fn ensure_segment(&mut self) -> Result<bool, Error> {
        if self.segment.is_some() {
            return Ok(true);
        }
        let found = {
            let st = self.shared.state.borrow();
            let start = st.segments[0].index.base_offset;
            let end = st.segments.last().expect("active segment").index.next_offset;
            if self.next_offset < start {
                return Err(Error::OffsetOutOfRange { requested: self.next_offset, start, end });
            }
            let i = st.segments.partition_point(|s| s.index.base_offset <= self.next_offset);
            let segment = &st.segments[i.saturating_sub(1)];
            (
                segment.index.base_offset,
                segment.path.clone(),
                segment.index.position_for_offset(self.next_offset),
            )
        };
        let (base_offset, path, pos) = found;
        if self.shared.readable_limit(base_offset).unwrap_or(0) == 0 && pos == 0 {
            // The segment exists but no byte of it is written yet.
            let st = self.shared.state.borrow();
            if st.readable.segment_base < base_offset || st.readable.next_offset <= self.next_offset
            {
                return Ok(false);
            }
        }
        let file = match io::open_read(&path).await {
            Ok(file) => Rc::new(file),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                // Retention deleted it between the lookup and the open.
                let st = self.shared.state.borrow();
                return Err(Error::OffsetOutOfRange {
                    requested: self.next_offset,
                    start: st.segments[0].index.base_offset,
                    end: st.segments.last().expect("active segment").index.next_offset,
                });
            }
            Err(e) => return Err(e),
        };
        self.segment = Some(OpenSegment {
            base_offset,
            path,
            file,
            pos,
            chunk: None,
            prefetch: None,
            current: None,
        });
        Ok(true)
    }
}

/// Makes sure the chunk holds the whole frame at `segment.pos`; returns its header and its start
/// inside the chunk. Starts the read-ahead of the following chunk.
async fn load_frame(
    segment: &mut OpenSegment,
    limit: u64,
    read_size: usize,
) -> Result<(FrameHeader, usize), Error> {
    let mut want = read_size;
    let mut loads = 0;
    loop {
        if let Some(chunk) = &segment.chunk {
            if segment.pos >= chunk.pos {
                let start = (segment.pos - chunk.pos) as usize;
                if start < chunk.bytes.len() {
                    match format::parse_header(&chunk.bytes[start..]) {
                        Ok(header) if start + header.frame_len as usize <= chunk.bytes.len() => {
                            return Ok((header, start));
                        }
                        Ok(header) => want = read_size.max(header.frame_len as usize + BLOCK_SIZE),
                        Err(format::FrameDefect::Truncated { .. }) => {}
                        Err(defect) => {
                            return Err(Error::Corrupt {
                                path: segment.path.clone(),
                                position: segment.pos,
                                defect,
                            });
                        }
                    }
                }
            }
        }
        loads += 1;
        if loads > 2 {
            // A fresh read from the frame's block did not hold the frame: the file ends early.
            return Err(Error::Corrupt {
                path: segment.path.clone(),
                position: segment.pos,
                defect: format::FrameDefect::Truncated { available: 0, needed: want },
            });
        }
        // Load a chunk starting at the block holding `pos`: from the read-ahead when it matches.
        let block = segment.pos - segment.pos % BLOCK_SIZE as u64;
        let bytes = match segment.prefetch.take() {
            Some((pos, task)) if pos == block && want == read_size => task.await,
            _ => read_at(&segment.file, block, want).await,
        }
        .map_err(|e| Error::io("read", &segment.path, e))?;
        if bytes.len() as u64 + block <= segment.pos {
            return Err(Error::Corrupt {
                path: segment.path.clone(),
                position: segment.pos,
                defect: format::FrameDefect::Truncated {
                    available: 0,
                    needed: format::FRAME_HEADER_SIZE,
                },
            });
        }
        let chunk = Chunk { pos: block, bytes };
        // Read-ahead: find where the last whole frame of this chunk ends, and fetch from there.
        let mut at = (segment.pos - block) as usize;
        let usable = chunk.bytes.len().min((limit.saturating_sub(block)) as usize);
        while let Ok(header) = format::parse_header(&chunk.bytes[at.min(usable)..usable]) {
            if at + header.frame_len as usize > usable {
                break;
            }
            at += header.frame_len as usize;
        }
        let next = block + at as u64;
        let next_block = next - next % BLOCK_SIZE as u64;
        if next < limit && next_block > block {
            let file = segment.file.clone();
            let task =
                glommio::spawn_local(async move { read_at(&file, next_block, read_size).await });
            segment.prefetch = Some((next_block, task));
        }
        segment.chunk = Some(chunk);
        if segment.pos + (format::FRAME_HEADER_SIZE as u64) > limit {
            return Err(Error::Corrupt {
                path: segment.path.clone(),
                position: segment.pos,
                defect: format::FrameDefect::Truncated {
                    available: 0,
                    needed: format::FRAME_HEADER_SIZE,
                },
            });
        }
    }
}

async fn read_at(file: &DmaFile, pos: u64, size: usize) -> Result<ReadResult, std::io::Error> {
    file.read_at_aligned(pos, size.next_multiple_of(BLOCK_SIZE)).await.map_err(Into::into)
}
