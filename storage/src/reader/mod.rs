//! `LogReader`: sequential, zero-copy reads of a partition from any starting point, and
//! `SegmentReader`: reads of one sealed segment from any executor (`sealed`).
//!
//! A reader walks segments with large DMA reads and keeps up to `read_ahead_max` of them in flight
//! while the caller processes the current one (`cursor`: the planning and loading code both
//! readers share). Read ranges are planned from the segment's sparse index, whose entries sit at
//! frame starts, so every range starts and ends on a frame boundary: a frame never spans two
//! buffers, every `BatchRef` borrows one DMA buffer directly, and no bytes read from the disk are
//! stitched or copied. (Near the tail a range comes from the log's tail cache instead: borrowed
//! from the written buffer that holds it, or copied into one buffer from the cached buffers that
//! hold it together, which costs less than the disk read it replaces.)
//!
//! Each frame's checksum is verified once, when the reader hands it out; a mismatch is a typed
//! `Error::Corrupt` naming the file and byte position.
//!
//! A reader sees frames once they are written, so it may see records a power cut later takes back
//! (see `Durability`); `synced_only` keeps it to the prefix an fdatasync covered. A reader that is
//! not at its readable end never reports "caught up" (`None`): if retention deleted the segment
//! under it, it gets `Error::OffsetOutOfRange` with the new start offset.

mod budget;
mod cursor;
mod sealed;

use std::rc::Rc;

use crate::batch::{BatchRef, RecordRef};
use crate::io::BLOCK_SIZE;
use crate::log::{PartitionLog, Shared};
use crate::Error;

pub(crate) use budget::WritePending;
pub use budget::{writes_drained, writes_pending, ReadBudgetStats};
pub use cursor::ReadAhead;
use cursor::{boundary_in, Bytes, Layout, SegmentCursor};
pub use sealed::{SealedSegment, SegmentReader};

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

/// A batch handed out by a reader, and the records in it the reader was asked for.
pub struct ReadBatch<'a> {
    pub batch: BatchRef<'a>,
    /// Records before this offset were before the seek point.
    pub first_offset: u64,
    /// Records at or after this offset are past the reader's end (a `SegmentReader`'s range);
    /// the batch's own end for a `LogReader`.
    pub end_offset: u64,
}

impl<'a> ReadBatch<'a> {
    /// The records at or after the seek point and before the reader's end.
    pub fn records(&self) -> impl Iterator<Item = RecordRef<'a>> + 'a {
        let end = self.end_offset;
        self.batch.records_from(self.first_offset).take_while(move |r| r.offset() < end)
    }
}

/// The log's live state as a cursor's layout: the segment's index in the log, the tail cache,
/// and the configured (or the reader's own) read-ahead.
struct LogLayout<'a> {
    shared: &'a Shared,
    base_offset: u64,
    read_ahead: Option<&'a ReadAhead>,
}

impl Layout for LogLayout<'_> {
    fn boundary(&self, start: u64, limit: u64) -> u64 {
        let st = self.shared.state.borrow();
        let index = st.segments.iter().find(|s| s.index.base_offset == self.base_offset);
        let entries = index.map_or(&[][..], |s| &s.index.entries[..]);
        boundary_in(entries, start, self.shared.config.read_buffer_size_bytes as u64, limit)
    }

    /// The range from the tail cache: borrowed when one written buffer holds it; copied into one
    /// buffer when consecutive cached buffers hold it together (a range of several frames, or a
    /// frame that spans buffers): a copy in memory costs far less than the disk read it saves,
    /// and a reader at the tail wants exactly the newest frames.
    fn cached(&self, start: u64, end: u64) -> Option<Bytes> {
        let st = self.shared.state.borrow();
        let holding = |pos: u64| {
            st.tail_cache.iter().rev().find(|c| {
                c.segment_base == self.base_offset
                    && c.file_pos <= pos
                    && pos < c.file_pos + c.len as u64
            })
        };
        let first = holding(start)?;
        if end <= first.file_pos + first.len as u64 {
            let from = (start - first.file_pos) as usize;
            return Some(Bytes::Memory(first.buf.clone(), from, first.len));
        }
        // Every byte of the range must be cached before anything is copied.
        let mut pos = start;
        while pos < end {
            let c = holding(pos)?;
            pos = c.file_pos + c.len as u64;
        }
        let len = (end - start) as usize;
        let mut stitched = glommio::allocate_dma_buffer(len.next_multiple_of(BLOCK_SIZE));
        let mut pos = start;
        while pos < end {
            let c = holding(pos).expect("checked above");
            let from = (pos - c.file_pos) as usize;
            let to = ((end - c.file_pos) as usize).min(c.len);
            let at = (pos - start) as usize;
            stitched.as_bytes_mut()[at..at + to - from]
                .copy_from_slice(&c.buf.as_bytes()[from..to]);
            pos += (to - from) as u64;
        }
        Some(Bytes::Memory(Rc::new(stitched), 0, len))
    }

    fn read_ahead_max(&self) -> usize {
        self.read_ahead.map_or(self.shared.config.read_ahead_max, ReadAhead::get)
    }

    fn budget(&self) -> Option<&ReadAhead> {
        self.read_ahead
    }
}

/// Reads one partition forward from a seek point. `!Send`, like the log it reads.
pub struct LogReader {
    shared: Rc<Shared>,
    /// The next offset the caller wants.
    next_offset: u64,
    /// For timestamp seeks: skip records older than this until the first match.
    min_timestamp: Option<i64>,
    segment: Option<SegmentCursor>,
    /// Only frames an fdatasync covered are read.
    synced_only: bool,
    /// Reads in flight, when someone other than the log's configuration decides.
    read_ahead: Option<ReadAhead>,
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
        Ok(LogReader {
            shared,
            next_offset,
            min_timestamp,
            segment: None,
            synced_only: false,
            read_ahead: None,
        })
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

    /// Bounds this reader's reads in flight by `read_ahead` (which its owner may move while the
    /// reader runs) instead of the log's `read_ahead_max`: a budget it shares with every other
    /// reader given the same one, which keeps this executor's log writes ahead of their reads
    /// (`budget`).
    pub fn with_read_ahead(mut self, read_ahead: ReadAhead) -> Self {
        self.read_ahead = Some(read_ahead);
        self
    }

    /// Bounds this reader's reads in flight by the log's `read_ahead_max` again (a view's reader
    /// handed from replay, paced by the controller, to the live tail).
    pub fn with_log_read_ahead(mut self) -> Self {
        self.read_ahead = None;
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
            let layout = LogLayout {
                shared: &self.shared,
                base_offset: segment.base_offset,
                read_ahead: self.read_ahead.as_ref(),
            };
            let header = segment.next_frame(&layout, limit).await?;
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
        let batch = segment.current_batch()?;
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
        let end_offset = batch.next_offset();
        Ok(Some(ReadBatch { batch, first_offset, end_offset }))
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
        self.segment = Some(SegmentCursor::new(base_offset, path, file, pos));
        Ok(true)
    }
}
