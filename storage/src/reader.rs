//! `LogReader`: sequential, zero-copy reads of a partition from any starting point.
//!
//! A reader walks segments with large DMA reads and keeps up to `read_ahead_max` of them in flight
//! while the caller processes the current one. Read ranges are planned from the segment's sparse
//! index, whose entries sit at frame starts, so every range starts and ends on a frame boundary:
//! a frame never spans two buffers, every `BatchRef` borrows one DMA buffer directly, and no bytes
//! are stitched or copied.
//!
//! Each frame's checksum is verified once, when the reader hands it out; a mismatch is a typed
//! `Error::Corrupt` naming the file and byte position.
//!
//! A reader sees frames once they are written, so it may see records a power cut later takes back
//! (see `Durability`); `synced_only` keeps it to the prefix an fdatasync covered. A reader that is
//! not at its readable end never reports "caught up" (`None`): if retention deleted the segment
//! under it, it gets `Error::OffsetOutOfRange` with the new start offset.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;

use glommio::Task;

use crate::batch::{BatchRef, RecordRef};
use crate::format::{self, FrameHeader};
use crate::io::{File, ReadBytes, BLOCK_SIZE};
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

type ReadTask = Task<Result<ReadBytes, std::io::Error>>;

/// A planned read of the frames in `[start, end)` (both frame boundaries).
struct Planned {
    start: u64,
    end: u64,
    source: Source,
}

/// Where a planned range comes from: a DMA read in flight, or a recently written buffer still in
/// the log's tail cache (no I/O at all for a reader following the live tail).
enum Source {
    Disk(ReadTask),
    Memory(Bytes),
}

/// Bytes of a chunk, starting at the chunk's (block aligned) file position.
enum Bytes {
    Disk(ReadBytes),
    /// A written buffer and the offset of the chunk's first byte in it.
    Memory(Rc<glommio::io::DmaBuffer>, usize, usize),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Disk(read) => read,
            Bytes::Memory(buf, start, end) => &buf.as_bytes()[*start..*end],
        }
    }
}

struct Chunk {
    /// File position of `bytes[0]` (block aligned, at or below the first frame).
    pos: u64,
    /// End of the last whole frame in this chunk.
    end: u64,
    bytes: Bytes,
}

struct OpenSegment {
    base_offset: u64,
    path: PathBuf,
    file: File,
    /// Position of the next frame to hand out.
    pos: u64,
    chunk: Option<Chunk>,
    ahead: VecDeque<Planned>,
    /// The end of the last planned range.
    planned_end: u64,
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
    /// Only frames an fdatasync covered are read.
    synced_only: bool,
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
                        // No record is that new yet: start at the end and wait for one, still
                        // skipping older records appended meanwhile.
                        None => (end, Some(ts)),
                        // The sparse index is not loaded: start at the segment's first record
                        // and skip older ones (the skip makes the result the same).
                        Some(s) if !s.entries_loaded => (s.index.base_offset, Some(ts)),
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
        Ok(LogReader { shared, next_offset, min_timestamp, segment: None, synced_only: false })
    }
}

impl LogReader {
    /// The offset of the next record this reader will return.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Keeps this reader to the synced prefix: it hands out only records that survive a power cut
    /// (by default a reader sees records once they are written).
    pub fn synced_only(mut self) -> Self {
        self.synced_only = true;
        self
    }

    /// Waits until this reader has something to read (written, or synced for `synced_only`).
    pub async fn wait_readable(&self) -> Result<(), Error> {
        self.shared.wait_readable(self.next_offset, self.synced_only).await
    }

    /// The error for a reader whose records retention deleted.
    fn out_of_range(&self) -> Error {
        let st = self.shared.state.borrow();
        Error::OffsetOutOfRange {
            requested: self.next_offset,
            start: st.segments[0].index.base_offset,
            end: st.segments.last().expect("active segment").index.next_offset,
        }
    }

    /// The next batch holding records at or after `next_offset`, or `None` when the reader has
    /// caught up with the readable end of the log (wait with `PartitionLog::wait_readable`).
    pub async fn next_batch(&mut self) -> Result<Option<ReadBatch<'_>>, Error> {
        loop {
            if !self.ensure_segment().await? {
                return Ok(None);
            }
            let base = self.segment.as_ref().expect("ensured").base_offset;
            let Some(limit) = self.shared.readable_limit(base, self.synced_only) else {
                // Retention deleted the segment under this reader. A reader that had read all of
                // it (its next offset is at or past the new start, as when a floor pinned exactly
                // its position) lost nothing: it moves on to the segment holding its next offset.
                self.segment = None;
                let start = self.shared.state.borrow().segments[0].index.base_offset;
                if self.next_offset >= start {
                    continue;
                }
                return Err(self.out_of_range());
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
                    _ => {
                        debug_assert!(
                            self.next_offset >= self.shared.readable_end(self.synced_only),
                            "a reader before its readable end reported caught up"
                        );
                        return Ok(None);
                    }
                }
            }
            let (header, frame_start) = load_frame(&self.shared, segment, limit).await?;
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
        // A sealed segment opened from disk has only its summary until a reader needs its
        // sparse index: load it first (see `recovery::load_entries`).
        // Loaded before the lookup below, which runs without an await in between.
        loop {
            let unloaded = {
                let st = self.shared.state.borrow();
                let i = st.segments.partition_point(|s| s.index.base_offset <= self.next_offset);
                let segment = &st.segments[i.saturating_sub(1)];
                (!segment.entries_loaded).then_some(segment.index.base_offset)
            };
            match unloaded {
                Some(base) => crate::log::load_entries(&self.shared, base).await?,
                None => break,
            }
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
        if self.shared.readable_limit(base_offset, self.synced_only) == Some(0) && pos == 0 {
            // The segment exists but no byte of it is readable yet.
            let st = self.shared.state.borrow();
            let readable = if self.synced_only { st.synced_readable } else { st.readable };
            if readable.segment_base < base_offset || readable.next_offset <= self.next_offset {
                return Ok(false);
            }
        }
        let file = match self.shared.config.disk.open_read(&path).await {
            Ok(file) => file,
            Err(e) if e.is_not_found() => {
                // Retention deleted it between the lookup and the open.
                return Err(self.out_of_range());
            }
            Err(e) => return Err(e),
        };
        self.segment = Some(OpenSegment {
            base_offset,
            path,
            file,
            pos,
            chunk: None,
            ahead: VecDeque::new(),
            planned_end: pos,
            current: None,
        });
        Ok(true)
    }
}

/// Makes sure the current chunk holds the whole frame at `segment.pos`; returns its header and its
/// start inside the chunk. Keeps the read-ahead queue full.
async fn load_frame(
    shared: &Shared,
    segment: &mut OpenSegment,
    limit: u64,
) -> Result<(FrameHeader, usize), Error> {
    let covered =
        segment.chunk.as_ref().is_some_and(|c| segment.pos >= c.pos && segment.pos < c.end);
    if !covered {
        segment.chunk = None;
        if segment.ahead.front().is_some_and(|p| p.start != segment.pos) {
            // A plan from elsewhere (cannot happen while reading forward); start over from here.
            segment.ahead.clear();
            segment.planned_end = segment.pos;
        }
        if segment.planned_end < segment.pos {
            segment.planned_end = segment.pos;
        }
        plan_reads(shared, segment, limit);
        let planned = segment.ahead.pop_front().ok_or_else(|| Error::Corrupt {
            path: segment.path.clone(),
            position: segment.pos,
            defect: format::FrameDefect::Truncated {
                available: 0,
                needed: format::FRAME_HEADER_SIZE,
            },
        })?;
        let bytes = match planned.source {
            Source::Disk(task) => {
                Bytes::Disk(task.await.map_err(|e| Error::io("read", &segment.path, e))?)
            }
            Source::Memory(bytes) => bytes,
        };
        let pos = planned.start - planned.start % BLOCK_SIZE as u64;
        if pos + (bytes.len() as u64) < planned.end {
            return Err(Error::Corrupt {
                path: segment.path.clone(),
                position: pos + bytes.len() as u64,
                defect: format::FrameDefect::Truncated {
                    available: bytes.len(),
                    needed: (planned.end - pos) as usize,
                },
            });
        }
        segment.chunk = Some(Chunk { pos, end: planned.end, bytes });
        if plan_reads(shared, segment, limit) > 0 {
            // The reads just planned are tasks that have not run yet: let them run and let the
            // reactor submit them now, or a caller that never waits (all data already here) would
            // drain the read-ahead before the next reads reach the device.
            glommio::executor().yield_task_queue_now().await;
        }
    }
    let chunk = segment.chunk.as_ref().expect("loaded above");
    let start = (segment.pos - chunk.pos) as usize;
    let valid = (chunk.end - chunk.pos) as usize;
    let header = format::parse_header(&chunk.bytes[start..valid]).map_err(|defect| {
        Error::Corrupt { path: segment.path.clone(), position: segment.pos, defect }
    })?;
    if start + header.frame_len as usize > valid {
        // The index says a frame starts at `chunk.end`, the header says this one runs past it.
        return Err(Error::Corrupt {
            path: segment.path.clone(),
            position: segment.pos,
            defect: format::FrameDefect::BadHeader {
                reason: "frame runs past the next indexed frame",
            },
        });
    }
    Ok((header, start))
}

/// Starts reads until `read_ahead_max` are in flight or the readable end is planned. Ranges end at
/// indexed frame starts, about `read_buffer_size_bytes` apart.
fn plan_reads(shared: &Shared, segment: &mut OpenSegment, limit: u64) -> usize {
    let size = shared.config.read_buffer_size_bytes as u64;
    let mut planned = 0;
    while segment.ahead.len() < shared.config.read_ahead_max && segment.planned_end < limit {
        let start = segment.planned_end;
        let end = {
            let st = shared.state.borrow();
            let index = st
                .segments
                .iter()
                .find(|s| s.index.base_offset == segment.base_offset)
                .map(|s| &s.index);
            let entries = index.map_or(&[][..], |i| &i.entries[..]);
            let after = entries.partition_point(|e| u64::from(e.position) <= start);
            let within =
                entries[after..].partition_point(|e| u64::from(e.position) <= start + size);
            // The last frame start in (start + size/2, start + size]; failing that, the first one
            // past start + size: a range somewhat longer than `size` beats one much shorter (two
            // 600 KiB frames would otherwise make every read half a buffer, halving the bytes in
            // flight).
            let last_within = (within > 0).then(|| u64::from(entries[after + within - 1].position));
            let boundary = match last_within {
                Some(b) if b >= start + size / 2 => b,
                _ => entries.get(after + within).map_or(limit, |e| u64::from(e.position)),
            };
            boundary.min(limit)
        };
        let aligned = start - start % BLOCK_SIZE as u64;
        let source = match cached(shared, segment.base_offset, aligned, end) {
            Some(bytes) => Source::Memory(bytes),
            None => {
                let len = (end - aligned).next_multiple_of(BLOCK_SIZE as u64) as usize;
                let file = segment.file.clone();
                planned += 1;
                Source::Disk(glommio::spawn_local(
                    async move { read_at(&file, aligned, len).await },
                ))
            }
        };
        segment.ahead.push_back(Planned { start, end, source });
        segment.planned_end = end;
    }
    planned
}

/// The bytes `[start, end)` of a segment from the log's tail cache, if a written buffer holds them.
fn cached(shared: &Shared, segment_base: u64, start: u64, end: u64) -> Option<Bytes> {
    let st = shared.state.borrow();
    let hit = st.tail_cache.iter().rev().find(|c| {
        c.segment_base == segment_base && c.file_pos <= start && end <= c.file_pos + c.len as u64
    })?;
    let from = (start - hit.file_pos) as usize;
    Some(Bytes::Memory(hit.buf.clone(), from, hit.len))
}

async fn read_at(file: &File, pos: u64, size: usize) -> Result<ReadBytes, std::io::Error> {
    file.read_at(pos, size.next_multiple_of(BLOCK_SIZE)).await
}
