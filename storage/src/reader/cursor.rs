//! One segment's frames, read ahead: the planning and loading code every reader shares.
//!
//! A `SegmentCursor` walks one segment file with large DMA reads and keeps up to a read-ahead
//! bound of them in flight while the caller processes the current one. Read ranges are planned
//! from the segment's sparse index, whose entries sit at frame starts, so every range starts and
//! ends on a frame boundary: a frame never spans two buffers, every `BatchRef` borrows one DMA
//! buffer directly, and no bytes are stitched or copied.
//!
//! What differs between readers is behind `Layout`: where the index comes from (the log's live
//! state for `LogReader`, an immutable snapshot for `SegmentReader`), whether recently written
//! buffers can stand in for a read (the log's tail cache), and how many reads may be in flight
//! (the log's configuration, or a budget shared with other readers that a controller moves while
//! they run: `budget`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;

use glommio::Task;

use crate::batch::BatchRef;
use crate::format::{self, FrameHeader};
use crate::index::IndexEntry;
use crate::io::{File, ReadBytes, BLOCK_SIZE};
use crate::Error;

pub use super::budget::ReadAhead;

type ReadTask = Task<Result<ReadBytes, std::io::Error>>;

/// What a cursor needs to know about the segment it reads, beyond its file.
pub(crate) trait Layout {
    /// The end of the read that starts at the frame boundary `start`: a frame boundary about one
    /// read buffer further, never past `limit`.
    fn boundary(&self, start: u64, limit: u64) -> u64;
    /// The bytes `[start, end)` if a buffer in memory holds them (no read needed).
    fn cached(&self, _start: u64, _end: u64) -> Option<Bytes> {
        None
    }
    /// Reads planned ahead by this reader (memory for their buffers).
    fn read_ahead_max(&self) -> usize;
    /// The budget its disk reads share with other readers, if any (`budget`).
    fn budget(&self) -> Option<&ReadAhead> {
        None
    }
}

/// The last frame start in `(start + size/2, start + size]`; failing that, the first one past
/// `start + size`, or `limit`. A range somewhat longer than `size` beats one much shorter (two
/// 600 KiB frames would otherwise make every read half a buffer, halving the bytes in flight).
pub(crate) fn boundary_in(entries: &[IndexEntry], start: u64, size: u64, limit: u64) -> u64 {
    let after = entries.partition_point(|e| u64::from(e.position) <= start);
    let within = entries[after..].partition_point(|e| u64::from(e.position) <= start + size);
    let last_within = (within > 0).then(|| u64::from(entries[after + within - 1].position));
    let boundary = match last_within {
        Some(b) if b >= start + size / 2 => b,
        _ => entries.get(after + within).map_or(limit, |e| u64::from(e.position)),
    };
    boundary.min(limit)
}

/// A planned read of the frames in `[start, end)` (both frame boundaries).
struct Planned {
    start: u64,
    end: u64,
    source: Source,
}

/// Where a planned range comes from: a DMA read in flight, or bytes already in memory.
enum Source {
    Disk(ReadTask),
    Memory(Bytes),
}

/// Bytes of a chunk, starting at the chunk's (block aligned) file position.
pub(crate) enum Bytes {
    Disk(ReadBytes),
    /// A written buffer and the range of it the chunk covers.
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

/// A position in one open segment file and the reads planned ahead of it.
pub(crate) struct SegmentCursor {
    pub(crate) base_offset: u64,
    pub(crate) path: PathBuf,
    file: File,
    /// Position of the next frame to hand out.
    pub(crate) pos: u64,
    chunk: Option<Chunk>,
    ahead: VecDeque<Planned>,
    /// The end of the last planned range.
    planned_end: u64,
    /// The frame handed out last: its start inside `chunk` and its header.
    current: Option<(usize, FrameHeader)>,
    /// The most disk reads this cursor ever had in flight at once.
    pub(crate) disk_reads_peak: usize,
}

impl SegmentCursor {
    pub(crate) fn new(base_offset: u64, path: PathBuf, file: File, pos: u64) -> Self {
        SegmentCursor {
            base_offset,
            path,
            file,
            pos,
            chunk: None,
            ahead: VecDeque::new(),
            planned_end: pos,
            current: None,
            disk_reads_peak: 0,
        }
    }

    /// Loads the frame at `pos` (never past `limit`), verifies its checksum and moves past it.
    /// Its batch is `current_batch` until the next call.
    pub(crate) async fn next_frame(
        &mut self,
        layout: &impl Layout,
        limit: u64,
    ) -> Result<FrameHeader, Error> {
        let (header, frame_start) = self.load_frame(layout, limit).await?;
        let chunk = self.chunk.as_ref().expect("load_frame leaves a chunk");
        let frame = &chunk.bytes[frame_start..frame_start + header.frame_len as usize];
        if let Err(defect) = format::parse_frame(frame) {
            return Err(Error::Corrupt { path: self.path.clone(), position: self.pos, defect });
        }
        self.pos += u64::from(header.frame_len);
        self.current = Some((frame_start, header));
        Ok(header)
    }

    /// The batch of the frame `next_frame` returned last (its checksum was verified there).
    pub(crate) fn current_batch(&self) -> Result<BatchRef<'_>, Error> {
        let chunk = self.chunk.as_ref().expect("a frame was loaded");
        let (start, header) = self.current.expect("a frame was loaded");
        let frame_pos = chunk.pos + start as u64;
        let payload_start = start + format::FRAME_HEADER_SIZE;
        let payload = &chunk.bytes[payload_start..payload_start + header.payload_len as usize];
        BatchRef::from_verified(header, payload).map_err(|defect| Error::Corrupt {
            path: self.path.clone(),
            position: frame_pos,
            defect,
        })
    }

    /// Makes sure the current chunk holds the whole frame at `pos`; returns its header and its
    /// start inside the chunk. Keeps the read-ahead queue full.
    async fn load_frame(
        &mut self,
        layout: &impl Layout,
        limit: u64,
    ) -> Result<(FrameHeader, usize), Error> {
        let covered = self.chunk.as_ref().is_some_and(|c| self.pos >= c.pos && self.pos < c.end);
        if !covered {
            self.chunk = None;
            if self.ahead.front().is_some_and(|p| p.start != self.pos) {
                // A plan from elsewhere (cannot happen while reading forward); start over here.
                self.ahead.clear();
                self.planned_end = self.pos;
            }
            if self.planned_end < self.pos {
                self.planned_end = self.pos;
            }
            self.plan_reads(layout, limit);
            while self.ahead.is_empty() && self.planned_end < limit {
                // The shared budget has no room for the read this reader needs: sleep until a
                // read completes or the writes drain (`budget`, rule 3), then plan again.
                let Some(budget) = layout.budget() else { break };
                budget.room().await;
                self.plan_reads(layout, limit);
            }
            let planned = self.ahead.pop_front().ok_or_else(|| Error::Corrupt {
                path: self.path.clone(),
                position: self.pos,
                defect: format::FrameDefect::Truncated {
                    available: 0,
                    needed: format::FRAME_HEADER_SIZE,
                },
            })?;
            let bytes = match planned.source {
                Source::Disk(task) => {
                    Bytes::Disk(task.await.map_err(|e| Error::io("read", &self.path, e))?)
                }
                Source::Memory(bytes) => bytes,
            };
            let pos = planned.start - planned.start % BLOCK_SIZE as u64;
            if pos + (bytes.len() as u64) < planned.end {
                return Err(Error::Corrupt {
                    path: self.path.clone(),
                    position: pos + bytes.len() as u64,
                    defect: format::FrameDefect::Truncated {
                        available: bytes.len(),
                        needed: (planned.end - pos) as usize,
                    },
                });
            }
            self.chunk = Some(Chunk { pos, end: planned.end, bytes });
            if self.plan_reads(layout, limit) > 0 {
                // The reads just planned are tasks that have not run yet: let them run and let the
                // reactor submit them now, or a caller that never waits (all data already here)
                // would drain the read-ahead before the next reads reach the device.
                glommio::executor().yield_task_queue_now().await;
            }
        }
        let chunk = self.chunk.as_ref().expect("loaded above");
        let start = (self.pos - chunk.pos) as usize;
        let valid = (chunk.end - chunk.pos) as usize;
        let header = format::parse_header(&chunk.bytes[start..valid]).map_err(|defect| {
            Error::Corrupt { path: self.path.clone(), position: self.pos, defect }
        })?;
        if start + header.frame_len as usize > valid {
            // The index says a frame starts at `chunk.end`, the header says this one runs past it.
            return Err(Error::Corrupt {
                path: self.path.clone(),
                position: self.pos,
                defect: format::FrameDefect::BadHeader {
                    reason: "frame runs past the next indexed frame",
                },
            });
        }
        Ok((header, start))
    }

    /// Starts reads until the layout's read-ahead bound is reached or everything up to `limit`
    /// is planned. Returns how many disk reads it started.
    fn plan_reads(&mut self, layout: &impl Layout, limit: u64) -> usize {
        let mut planned = 0;
        while self.ahead.len() < layout.read_ahead_max() && self.planned_end < limit {
            let start = self.planned_end;
            let end = layout.boundary(start, limit);
            let aligned = start - start % BLOCK_SIZE as u64;
            let source = match layout.cached(aligned, end) {
                Some(bytes) => Source::Memory(bytes),
                None => {
                    // A budgeted read holds its place in the budget until it completes.
                    let in_flight = match layout.budget().map(ReadAhead::try_start) {
                        Some(None) => break,
                        Some(Some(in_flight)) => Some(in_flight),
                        None => None,
                    };
                    let len = (end - aligned).next_multiple_of(BLOCK_SIZE as u64) as usize;
                    let file = self.file.clone();
                    planned += 1;
                    Source::Disk(glommio::spawn_local(async move {
                        let read = file.read_at(aligned, len.next_multiple_of(BLOCK_SIZE)).await;
                        drop(in_flight);
                        read
                    }))
                }
            };
            self.ahead.push_back(Planned { start, end, source });
            self.planned_end = end;
        }
        let in_flight = self.ahead.iter().filter(|p| matches!(p.source, Source::Disk(_))).count();
        self.disk_reads_peak = self.disk_reads_peak.max(in_flight);
        planned
    }
}
