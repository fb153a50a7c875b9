//! Reading a sealed segment from any executor: what lets replay run on shards that do not own the
//! partition.
//!
//! A sealed segment is immutable: its frames are written, synced and indexed, and nothing writes
//! to it again (retention may only delete it whole). So any thread may read it with a DMA file of
//! its own, given its path and its index. `SealedSegment` is that description: `Send`, unlike the
//! log it comes from (whose state is an `Rc` bound to the owning executor). `SegmentReader` opens
//! it on the executor it runs on and reads a range of offsets zero-copy, with the same planned,
//! frame-aligned read-ahead as `LogReader` (`cursor`), bounded by a `ReadAhead` its owner may move
//! while it runs, and verifies every frame's checksum before handing it out.

use std::path::PathBuf;
use std::sync::Arc;

use super::cursor::{boundary_in, Layout, ReadAhead, SegmentCursor};
use super::ReadBatch;
use crate::index::SegmentIndex;
use crate::io::Disk;
use crate::log::PartitionLog;
use crate::Error;

/// A sealed segment as any executor can read it: its file, its index and the disk it is on.
#[derive(Debug, Clone)]
pub struct SealedSegment {
    pub path: PathBuf,
    pub index: Arc<SegmentIndex>,
    pub disk: Disk,
    /// The size of one read (the log's `read_buffer_size_bytes`).
    pub read_buffer_size_bytes: usize,
}

impl SealedSegment {
    pub fn base_offset(&self) -> u64 {
        self.index.base_offset
    }
    /// The offset after its last record.
    pub fn next_offset(&self) -> u64 {
        self.index.next_offset
    }
    pub fn size_bytes(&self) -> u64 {
        self.index.size_bytes
    }
}

impl PartitionLog {
    /// The segments that are sealed and complete on disk (written, truncated to their frames,
    /// synced, their index file written), oldest first. A snapshot: segments sealed later are not
    /// in it, and retention may still delete one of these (a reader then fails to open it).
    pub fn sealed_segments(&self) -> Vec<SealedSegment> {
        let shared = self.shared();
        let st = shared.state.borrow();
        // A segment becomes readable as a whole only when the writer has finished sealing it and
        // moved the readable prefix into the next one.
        let complete_below = st.readable.segment_base;
        let last = st.segments.len() - 1;
        st.segments[..last]
            .iter()
            .filter(|s| s.index.base_offset < complete_below)
            .map(|s| SealedSegment {
                path: s.path.clone(),
                index: Arc::new(s.index.clone()),
                disk: shared.config.disk.clone(),
                read_buffer_size_bytes: shared.config.read_buffer_size_bytes,
            })
            .collect()
    }
}

struct SealedLayout<'a> {
    index: &'a SegmentIndex,
    read_size: u64,
    read_ahead: &'a ReadAhead,
}

impl Layout for SealedLayout<'_> {
    fn boundary(&self, start: u64, limit: u64) -> u64 {
        boundary_in(&self.index.entries, start, self.read_size, limit)
    }
    fn read_ahead_max(&self) -> usize {
        self.read_ahead.get()
    }
    fn budget(&self) -> Option<&ReadAhead> {
        Some(self.read_ahead)
    }
}

/// Reads the records `[from, to)` of one sealed segment, on the executor that opened it.
pub struct SegmentReader {
    segment: SealedSegment,
    cursor: SegmentCursor,
    next_offset: u64,
    end_offset: u64,
    read_ahead: ReadAhead,
}

impl SegmentReader {
    /// Opens `segment` with a DMA file of this executor's own, to read the records at offsets
    /// `[from, to)`; both must lie within the segment. At most `read_ahead` reads are in flight.
    pub async fn open(
        segment: SealedSegment,
        from: u64,
        to: u64,
        read_ahead: ReadAhead,
    ) -> Result<SegmentReader, Error> {
        let (start, end) = (segment.base_offset(), segment.next_offset());
        for requested in [from, to] {
            if requested < start || requested > end {
                return Err(Error::OffsetOutOfRange { requested, start, end });
            }
        }
        if let Some(dir) = segment.path.parent() {
            // An executor that owns no partition has not opened a DMA file on this device yet.
            segment.disk.prime(dir).await?;
        }
        let file = segment.disk.open_read(&segment.path).await?;
        let pos = segment.index.position_for_offset(from);
        let cursor = SegmentCursor::new(start, segment.path.clone(), file, pos);
        Ok(SegmentReader {
            segment,
            cursor,
            next_offset: from,
            end_offset: to.max(from),
            read_ahead,
        })
    }

    /// The offset of the next record this reader will return.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The most disk reads this reader had in flight at once (at most its read-ahead).
    pub fn disk_reads_peak(&self) -> usize {
        self.cursor.disk_reads_peak
    }

    /// The next batch holding records of the range, or `None` when the range is read.
    pub async fn next_batch(&mut self) -> Result<Option<ReadBatch<'_>>, Error> {
        loop {
            if self.next_offset >= self.end_offset {
                return Ok(None);
            }
            let size = self.segment.index.size_bytes;
            if self.cursor.pos >= size {
                // The index promised records up to `next_offset` that its frames do not hold.
                return Err(Error::CorruptIndex {
                    path: self.segment.path.clone(),
                    reason: "the segment's frames end before the index's next offset",
                });
            }
            let layout = SealedLayout {
                index: &self.segment.index,
                read_size: self.segment.read_buffer_size_bytes as u64,
                read_ahead: &self.read_ahead,
            };
            let header = self.cursor.next_frame(&layout, size).await?;
            if header.next_offset() > self.next_offset {
                break;
            }
        }
        let batch = self.cursor.current_batch()?;
        let first_offset = self.next_offset.max(batch.base_offset());
        self.next_offset = batch.next_offset().min(self.end_offset);
        Ok(Some(ReadBatch { batch, first_offset, end_offset: self.end_offset }))
    }
}
