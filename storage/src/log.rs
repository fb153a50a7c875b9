//! `PartitionLog`: the append path, the writer task, recovery, sealing and retention.
//!
//! Appends are split in two halves so that many producers share I/O:
//!
//! * the **appender** (any task calling `append`) assigns offsets, encodes the frame and copies it
//!   into the current DMA write buffer, all synchronously under one `RefCell` borrow; a full buffer
//!   goes to the writer's queue. Then it waits for the durability it asked for.
//! * the **writer task** (one per partition) owns all segment I/O, in queue order: it writes full
//!   buffers with up to `write_in_flight_max` writes in flight, writes the partial tail buffer when
//!   the queue runs dry, and runs one fdatasync for every appender waiting on `synced` at that moment
//!   (group commit). It also seals segments (fsync, write the index, create the next file).
//!
//! Positions are tracked as a byte **sequence** over the whole log's lifetime in this process
//! (`appended_seq`, `submitted_seq`, `written_seq`, `synced_seq`), so a wait does not care which
//! segment its bytes landed in.
//!
//! A partial write covers the tail block that later writes rewrite; two writes of one block must
//! never be in flight at once (they could land in either order), so the writer waits for all
//! in-flight writes before it issues one that starts below the end of an earlier one.
//!
//! Readers only see frames whose bytes are written (`readable`), never buffered ones.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaBuffer, DmaFile, ReadResult};
use glommio::Task;

use crate::batch::BatchEncoder;
use crate::index::SegmentIndex;
use crate::io::{self, BLOCK_SIZE};
use crate::kafka::{ProducerInfo, Record};
use crate::paths;
use crate::scan::{self, ChunkSource, Depth};
use crate::sync::Event;
use crate::{Durability, Error, LogConfig};

/// What an append returns once its durability is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record of the batch.
    pub base_offset: u64,
    /// Offset of the last record of the batch.
    pub last_offset: u64,
    /// Bytes the batch's frame occupies on disk.
    pub frame_len: u32,
}

/// An append that has its offsets and waits for its durability (`PartitionLog::wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an append is acknowledged only after `wait`"]
pub struct AppendTicket {
    pub info: AppendInfo,
    seq_end: u64,
    durability: Durability,
}

/// I/O counters of one log.
#[derive(Debug, Clone)]
pub struct LogStats {
    pub fsync_count: u64,
    /// fdatasync latency in nanoseconds.
    pub fsync_latency_ns: hdrhistogram::Histogram<u64>,
    /// Full buffers waiting for the writer.
    pub write_queue_len: usize,
    /// Bytes appended and written since the log was opened.
    pub appended_bytes: u64,
    pub written_bytes: u64,
}

/// What `open` found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segment_count: usize,
    /// Sealed segments whose index file was missing or damaged and was rebuilt by a scan.
    pub indexes_rebuilt: usize,
    /// Bytes cut from the active segment's torn tail.
    pub truncated_bytes: u64,
    /// Bytes of the active segment scanned.
    pub scanned_bytes: u64,
}

/// What `apply_retention` deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    /// The first offset still in the log.
    pub start_offset: u64,
}

/// A summary of one segment, for tools and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub path: PathBuf,
    pub base_offset: u64,
    pub next_offset: u64,
    pub size_bytes: u64,
    pub max_timestamp: i64,
    pub sealed: bool,
}

pub(crate) struct Segment {
    pub(crate) path: PathBuf,
    pub(crate) index: SegmentIndex,
}

/// A DMA buffer being filled, and where it goes in its segment file.
struct WriteBuffer {
    buf: DmaBuffer,
    file_pos: u64,
    len: usize,
}

enum WriteItem {
    /// Bytes `[0, len)` of `buf` go to `file_pos` (rounded up to a block, zero-padded).
    Data { buf: WriteBuffer, seq_end: u64 },
    /// Seal the current segment and continue in a new one.
    Roll { sealed_index: SegmentIndex, sealed_index_path: PathBuf, next_path: PathBuf },
}

/// Written frames become readable in order; this remembers where each one ends.
struct PendingFrame {
    seq_end: u64,
    next_offset: u64,
    segment_base: u64,
    position_end: u64,
}

/// The readable prefix of the log: every frame before this point is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Readable {
    pub(crate) next_offset: u64,
    pub(crate) segment_base: u64,
    pub(crate) position_end: u64,
}

pub(crate) struct State {
    pub(crate) segments: Vec<Segment>,
    encoder: BatchEncoder,
    buffer: WriteBuffer,
    queue: VecDeque<WriteItem>,
    pending: VecDeque<PendingFrame>,
    appended_seq: u64,
    written_seq: u64,
    synced_seq: u64,
    /// The highest sequence an appender waiting on `synced` needs; fsyncs happen only for them.
    want_synced_seq: u64,
    sync_in_flight: bool,
    fsync_count: u64,
    fsync_latency_ns: hdrhistogram::Histogram<u64>,
    /// Recently written buffers, oldest first.
    pub(crate) tail_cache: VecDeque<CachedBuffer>,
    free_buffers: Vec<DmaBuffer>,
    pub(crate) readable: Readable,
    failure: Option<Rc<std::io::Error>>,
    failure_path: PathBuf,
    closing: bool,
}

pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    pub(crate) state: RefCell<State>,
    pub(crate) changed: Event,
}

/// One partition's durable log. `!Send`: it lives on the glommio executor that opened it.
pub struct PartitionLog {
    shared: Rc<Shared>,
    writer: RefCell<Option<Task<()>>>,
    recovery: RecoveryReport,
}

impl State {
    fn active(&self) -> &Segment {
        self.segments.last().expect("a log always has an active segment")
    }
    fn active_mut(&mut self) -> &mut Segment {
        self.segments.last_mut().expect("a log always has an active segment")
    }
    /// A write buffer from the pool, or a new one. Recycling matters: a fresh 1 MiB allocation
    /// outside glommio's registered pool is an mmap, page faults and a munmap per buffer.
    fn take_buffer(&mut self, size: usize) -> DmaBuffer {
        self.free_buffers.pop().unwrap_or_else(|| glommio::allocate_dma_buffer(size))
    }

    /// Returns a written buffer to the pool when nobody else holds it and it is whole (partial
    /// writes trim theirs, and a trimmed `DmaBuffer` cannot grow back).
    fn recycle(&mut self, buf: Rc<DmaBuffer>, size: usize, pool_max: usize) {
        if let Ok(buf) = Rc::try_unwrap(buf) {
            if buf.len() == size && self.free_buffers.len() < pool_max {
                self.free_buffers.push(buf);
            }
        }
    }

    /// The writer's failure, if any, as an error for `op`. The original `io::Error` is kept once
    /// (it is not `Clone`); every caller gets one with the same kind and message.
    fn failed(&self, op: &'static str) -> Result<(), Error> {
        match &self.failure {
            Some(failure) => Err(Error::io(
                op,
                &self.failure_path,
                std::io::Error::new(failure.kind(), failure.to_string()),
            )),
            None => Ok(()),
        }
    }

    fn check_usable(&self) -> Result<(), Error> {
        self.failed("an earlier write")?;
        if self.closing {
            return Err(Error::Closed);
        }
        Ok(())
    }
}

fn alloc_buffer(file: &DmaFile, size: usize) -> DmaBuffer {
    file.alloc_dma_buffer(size)
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering the active segment's tail. Must run on a
    /// glommio executor; the writer task is spawned on the current task queue.
    pub async fn open(dir: &Path, config: LogConfig) -> Result<PartitionLog, Error> {
        config.validate()?;
        if config.segment_size_bytes_max > u64::from(u32::MAX) {
            return Err(Error::Config { field: "segment_size_bytes_max (at most 4 GiB)" });
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create dir", dir, e))?;
        io::prime_iopoll(dir).await?;

        let mut listed = paths::list_segments(dir).map_err(|e| Error::io("list", dir, e))?;
        let mut report = RecoveryReport::default();
        if listed.is_empty() {
            let path = paths::segment_path(dir, 0);
            let file = io::open_rw(&path).await?;
            file.close().await.map_err(|e| Error::io("close", &path, e))?;
            io::sync_dir(dir)?;
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
        let file = Rc::new(io::open_rw(&active.path).await?);
        let size = active.index.size_bytes;
        let file_pos = size - size % BLOCK_SIZE as u64;
        let mut buf = alloc_buffer(&file, config.write_buffer_size_bytes);
        let tail_len = (size - file_pos) as usize;
        if tail_len > 0 {
            // Reload the partial tail block: the next write rewrites it with more frames after.
            let block = file
                .read_at_aligned(file_pos, BLOCK_SIZE)
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

    /// What recovery found when this log was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.shared.config
    }

    /// Appends `records` as one batch and waits until `durability` is reached.
    pub async fn append(
        &self,
        records: &[Record<'_>],
        durability: Durability,
    ) -> Result<AppendInfo, Error> {
        self.append_with(records, ProducerInfo::default(), durability).await
    }

    /// `append` with idempotent-producer fields kept in the stored Kafka batch.
    pub async fn append_with(
        &self,
        records: &[Record<'_>],
        producer: ProducerInfo,
        durability: Durability,
    ) -> Result<AppendInfo, Error> {
        self.shared.state.borrow().encoder.check(records)?;
        self.reserve().await;
        let ticket = self.append_now(records, producer, durability)?;
        self.wait(ticket).await
    }

    /// Waits until the write queue has room for another batch (backpressure): a producer that
    /// outruns the disk waits here, and memory stays bounded. Returns at once when the log failed
    /// or is closing (the append then reports why).
    pub async fn reserve(&self) {
        let shared = &self.shared;
        shared
            .changed
            .wait_until(|| {
                let st = shared.state.borrow();
                st.queue.len() < shared.config.write_queue_max || st.failure.is_some() || st.closing
            })
            .await;
    }

    /// True when an append would not wait in `reserve`.
    pub fn has_room(&self) -> bool {
        self.shared.state.borrow().queue.len() < self.shared.config.write_queue_max
    }

    /// The synchronous half of an append: assigns offsets and copies the frame into the write
    /// buffer, in call order (so callers that append in order get offsets in order). Then
    /// `wait(ticket)` resolves when `durability` is reached. Use `reserve` first to respect the
    /// write queue bound.
    pub fn append_now(
        &self,
        records: &[Record<'_>],
        producer: ProducerInfo,
        durability: Durability,
    ) -> Result<AppendTicket, Error> {
        let (info, seq_end) = self.append_buffered(records, producer)?;
        if durability == Durability::Synced {
            let mut st = self.shared.state.borrow_mut();
            st.want_synced_seq = st.want_synced_seq.max(seq_end);
        }
        self.shared.changed.notify();
        Ok(AppendTicket { info, seq_end, durability })
    }

    /// Waits until the append behind `ticket` reached its durability.
    pub async fn wait(&self, ticket: AppendTicket) -> Result<AppendInfo, Error> {
        let shared = &self.shared;
        let seq_end = ticket.seq_end;
        match ticket.durability {
            Durability::None => return Ok(ticket.info),
            Durability::Written => {
                shared
                    .changed
                    .wait_until(|| {
                        let st = shared.state.borrow();
                        st.written_seq >= seq_end || st.failure.is_some()
                    })
                    .await;
            }
            Durability::Synced => {
                shared
                    .changed
                    .wait_until(|| {
                        let st = shared.state.borrow();
                        st.synced_seq >= seq_end || st.failure.is_some()
                    })
                    .await;
            }
        }
        shared.state.borrow().failed("append")?;
        Ok(ticket.info)
    }

    /// Counters of this log's I/O, for metrics.
    pub fn stats(&self) -> LogStats {
        let st = self.shared.state.borrow();
        LogStats {
            fsync_count: st.fsync_count,
            fsync_latency_ns: st.fsync_latency_ns.clone(),
            write_queue_len: st.queue.len(),
            appended_bytes: st.appended_seq,
            written_bytes: st.written_seq,
        }
    }

    /// The synchronous half of an append: offsets, encoding, copy into the write buffer.
    fn append_buffered(
        &self,
        records: &[Record<'_>],
        producer: ProducerInfo,
    ) -> Result<(AppendInfo, u64), Error> {
        let config = &self.shared.config;
        let mut st = self.shared.state.borrow_mut();
        st.check_usable()?;
        let st = &mut *st;
        let base_offset = st.active().index.next_offset;
        let header = *st.encoder.encode(base_offset, records, producer)?;
        let frame_len = u64::from(header.frame_len);

        let active = &st.active().index;
        if !active.is_empty() && active.size_bytes + frame_len > config.segment_size_bytes_max {
            self.roll(st);
        }

        let position = st.active().index.size_bytes;
        let mut frame = st.encoder.frame();
        while !frame.is_empty() {
            let capacity = config.write_buffer_size_bytes;
            let space = capacity - st.buffer.len;
            let n = space.min(frame.len());
            let at = st.buffer.len;
            st.buffer.buf.as_bytes_mut()[at..at + n].copy_from_slice(&frame[..n]);
            st.buffer.len += n;
            st.appended_seq += n as u64;
            frame = &frame[n..];
            if st.buffer.len == capacity {
                let next_pos = st.buffer.file_pos + capacity as u64;
                // Field access, not `take_buffer`: `frame` still borrows the encoder.
                let buf =
                    st.free_buffers.pop().unwrap_or_else(|| glommio::allocate_dma_buffer(capacity));
                let fresh = WriteBuffer { buf, file_pos: next_pos, len: 0 };
                let full = std::mem::replace(&mut st.buffer, fresh);
                st.queue.push_back(WriteItem::Data { buf: full, seq_end: st.appended_seq });
            }
        }
        let active = st.active_mut();
        active.index.push_frame(
            base_offset,
            header.record_count,
            header.max_timestamp,
            header.frame_len,
        );
        let segment_base = active.index.base_offset;
        let next_offset = active.index.next_offset;
        st.pending.push_back(PendingFrame {
            seq_end: st.appended_seq,
            next_offset,
            segment_base,
            position_end: position + frame_len,
        });
        let info =
            AppendInfo { base_offset, last_offset: next_offset - 1, frame_len: header.frame_len };
        Ok((info, st.appended_seq))
    }

    /// Seals the active segment and starts the next one (the I/O happens in the writer).
    fn roll(&self, st: &mut State) {
        let next_base = st.active().index.next_offset;
        if st.buffer.len > 0 {
            let buf = st.take_buffer(self.shared.config.write_buffer_size_bytes);
            let fresh = WriteBuffer { buf, file_pos: 0, len: 0 };
            let tail = std::mem::replace(&mut st.buffer, fresh);
            st.queue.push_back(WriteItem::Data { buf: tail, seq_end: st.appended_seq });
        } else {
            st.buffer.file_pos = 0;
        }
        let sealed = st.active();
        let item = WriteItem::Roll {
            sealed_index: sealed.index.clone(),
            sealed_index_path: paths::index_path(&self.shared.dir, sealed.index.base_offset),
            next_path: paths::segment_path(&self.shared.dir, next_base),
        };
        st.queue.push_back(item);
        let next_path = paths::segment_path(&self.shared.dir, next_base);
        st.segments.push(Segment {
            path: next_path,
            index: SegmentIndex::new(next_base, self.shared.config.index_interval_bytes),
        });
    }

    /// The offset the next appended record will get.
    pub fn end_offset(&self) -> u64 {
        self.shared.state.borrow().active().index.next_offset
    }

    /// The first offset readers can see the end of: records below it are written.
    pub fn readable_end_offset(&self) -> u64 {
        self.shared.state.borrow().readable.next_offset
    }

    /// The first offset still in the log (retention moves it forward).
    pub fn start_offset(&self) -> u64 {
        self.shared.state.borrow().segments[0].index.base_offset
    }

    /// Waits until records at or after `offset` are readable (a tail consumer's wake-up).
    pub async fn wait_readable(&self, offset: u64) -> Result<(), Error> {
        let shared = &self.shared;
        shared
            .changed
            .wait_until(|| {
                let st = shared.state.borrow();
                st.readable.next_offset > offset || st.failure.is_some() || st.closing
            })
            .await;
        self.shared.state.borrow().check_usable()
    }

    /// The segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let st = self.shared.state.borrow();
        let last = st.segments.len() - 1;
        st.segments
            .iter()
            .enumerate()
            .map(|(i, s)| SegmentInfo {
                path: s.path.clone(),
                base_offset: s.index.base_offset,
                next_offset: s.index.next_offset,
                size_bytes: s.index.size_bytes,
                max_timestamp: s.index.max_timestamp,
                sealed: i < last,
            })
            .collect()
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.shared.state.borrow().segments.iter().map(|s| s.index.size_bytes).sum()
    }

    /// Waits until everything appended so far is synced.
    pub async fn sync(&self) -> Result<(), Error> {
        let shared = &self.shared;
        let target = {
            let mut st = shared.state.borrow_mut();
            st.check_usable()?;
            st.want_synced_seq = st.want_synced_seq.max(st.appended_seq);
            st.appended_seq
        };
        shared.changed.notify();
        shared
            .changed
            .wait_until(|| {
                let st = shared.state.borrow();
                st.synced_seq >= target || st.failure.is_some()
            })
            .await;
        shared.state.borrow().check_usable()
    }

    /// Deletes whole sealed segments beyond the configured retention. `now_ms` is the caller's
    /// clock (storage never reads one); age is measured against each segment's newest record.
    pub async fn apply_retention(&self, now_ms: i64) -> Result<RetentionReport, Error> {
        let retention = self.shared.config.retention;
        let mut doomed = Vec::new();
        {
            let mut st = self.shared.state.borrow_mut();
            let mut total: u64 = st.segments.iter().map(|s| s.index.size_bytes).sum();
            // Never delete the active segment, nor one the writer has not sealed yet.
            let sealed_count = st.segments.len() - 1;
            let readable_base = st.readable.segment_base;
            let mut delete = 0;
            for segment in &st.segments[..sealed_count] {
                if segment.index.base_offset >= readable_base {
                    break;
                }
                let too_big = retention.size_bytes_max.is_some_and(|max| total > max);
                let too_old = retention
                    .age_ms_max
                    .is_some_and(|max| segment.index.max_timestamp < now_ms.saturating_sub(max));
                if !(too_big || too_old) {
                    break;
                }
                total -= segment.index.size_bytes;
                delete += 1;
            }
            for segment in st.segments.drain(..delete) {
                doomed.push(segment);
            }
        }
        let mut report = RetentionReport::default();
        for segment in &doomed {
            let index_path = paths::index_path(&self.shared.dir, segment.index.base_offset);
            std::fs::remove_file(&segment.path)
                .map_err(|e| Error::io("delete", &segment.path, e))?;
            match std::fs::remove_file(&index_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("delete", &index_path, e)),
            }
            report.segments_deleted += 1;
            report.bytes_deleted += segment.index.size_bytes;
        }
        if !doomed.is_empty() {
            io::sync_dir(&self.shared.dir)?;
            tracing::info!(
                dir = %self.shared.dir.display(),
                segments = report.segments_deleted,
                bytes = report.bytes_deleted,
                "retention deleted sealed segments"
            );
        }
        report.start_offset = self.start_offset();
        Ok(report)
    }

    /// Flushes and syncs everything, stops the writer and closes the files.
    pub async fn close(&self) -> Result<(), Error> {
        {
            let mut st = self.shared.state.borrow_mut();
            st.closing = true;
        }
        self.shared.changed.notify();
        let writer = self.writer.borrow_mut().take();
        if let Some(writer) = writer {
            writer.await;
        }
        self.shared.state.borrow().failed("close")?;
        Ok(())
    }

    pub(crate) fn shared(&self) -> &Rc<Shared> {
        &self.shared
    }
}

impl Shared {
    /// How far a reader may read in the segment with `base`: its whole size when the writer has
    /// moved past it, the readable end when it is the one being written, nothing beyond.
    pub(crate) fn readable_limit(&self, base: u64) -> Option<u64> {
        let st = self.state.borrow();
        let readable = st.readable;
        if base < readable.segment_base {
            st.segments.iter().find(|s| s.index.base_offset == base).map(|s| s.index.size_bytes)
        } else if base == readable.segment_base {
            Some(readable.position_end)
        } else {
            Some(0)
        }
    }
}

/// Loads a sealed segment's index, rebuilding it by a checked scan when it is missing or damaged.
async fn load_sealed_index(
    dir: &Path,
    base: u64,
    path: &Path,
    config: &LogConfig,
) -> Result<(SegmentIndex, bool), Error> {
    let index_path = paths::index_path(dir, base);
    let file_len = std::fs::metadata(path).map_err(|e| Error::io("stat", path, e))?.len();
    match std::fs::read(&index_path) {
        Ok(bytes) => match SegmentIndex::decode(&index_path, &bytes) {
            Ok(index) if index.base_offset == base && index.size_bytes <= file_len => {
                return Ok((index, false));
            }
            Ok(_) => {
                tracing::warn!(index = %index_path.display(), "index disagrees with its segment; rebuilding")
            }
            Err(e) => tracing::warn!(error = %e, "rebuilding a damaged index"),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(segment = %path.display(), "sealed segment has no index; rebuilding");
        }
        Err(e) => return Err(Error::io("read", &index_path, e)),
    }
    let file = io::open_read(path).await?;
    let scan = scan_file(&file, file_len, path, base, config).await?;
    let _ = file.close().await;
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
    io::write_file_atomic(&index_path, &scan.index.encode())?;
    Ok((scan.index, true))
}

/// Scans a whole segment file through DMA reads, checking every frame's checksum.
async fn scan_file(
    file: &DmaFile,
    len: u64,
    path: &Path,
    base: u64,
    config: &LogConfig,
) -> Result<scan::SegmentScan, Error> {
    let source = DmaSource { file, len, path };
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
    let file = io::open_rw(path).await?;
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

/// A `ChunkSource` over a glommio DMA file.
pub(crate) struct DmaSource<'a> {
    pub(crate) file: &'a DmaFile,
    pub(crate) len: u64,
    pub(crate) path: &'a Path,
}

/// A DMA read, sliced to start at the requested (16-aligned) position.
pub struct DmaChunk(ReadResult);

impl std::ops::Deref for DmaChunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl ChunkSource for DmaSource<'_> {
    type Chunk = DmaChunk;

    async fn read_chunk(&self, pos: u64, len: usize) -> Result<DmaChunk, Error> {
        let aligned = pos - pos % BLOCK_SIZE as u64;
        let skip = (pos - aligned) as usize;
        let size = (skip + len).next_multiple_of(BLOCK_SIZE);
        let read = self
            .file
            .read_at_aligned(aligned, size)
            .await
            .map_err(|e| Error::io("read", self.path, e))?;
        let available = read.len().saturating_sub(skip);
        let end = available.min(len);
        let sliced = ReadResult::slice(&read, skip.min(read.len()), end).unwrap_or(read);
        Ok(DmaChunk(sliced))
    }

    fn file_len(&self) -> u64 {
        self.len
    }
}

struct InFlight {
    task: Task<(std::io::Result<usize>, usize)>,
    seq_end: u64,
    end_pos: u64,
    /// What the write carries, kept for the tail cache once it completes.
    cached: CachedBuffer,
}

/// A buffer whose write completed: its bytes `[0, len)` are what the segment holds at `file_pos`.
/// Readers near the tail read from here instead of the disk (see `LogConfig::tail_cache_buffers_max`).
#[derive(Clone)]
pub(crate) struct CachedBuffer {
    pub(crate) segment_base: u64,
    pub(crate) file_pos: u64,
    pub(crate) len: usize,
    pub(crate) buf: Rc<DmaBuffer>,
}

/// The writer task: all segment I/O for one partition, in order.
async fn writer_loop(shared: Rc<Shared>, first_file: Rc<DmaFile>) {
    let mut file = first_file;
    let mut file_path = shared.state.borrow().active().path.clone();
    let mut segment_base = shared.state.borrow().active().index.base_offset;
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut submitted_seq = 0u64;
    let result: Result<(), (PathBuf, std::io::Error)> = async {
        loop {
            start_sync_if_wanted(&shared, &file, &file_path);
            // Take the next item: queued full buffers first. The partial tail buffer goes only when
            // no write is in flight (group commit): at low load every append is written at once,
            // and at high load the tail waits one write latency and grows meanwhile, so partial
            // writes (which rewrite their first block and so cannot overlap the write before them)
            // stay rare and full buffers stream with `write_in_flight_max` writes in flight.
            let item = {
                let mut st = shared.state.borrow_mut();
                match st.queue.pop_front() {
                    Some(item) => Some(item),
                    None if st.appended_seq > submitted_seq && in_flight.is_empty() => {
                        let tail_pos = st.buffer.file_pos + st.buffer.len as u64;
                        let block_pos = tail_pos - tail_pos % BLOCK_SIZE as u64;
                        let mut fresh = st.take_buffer(shared.config.write_buffer_size_bytes);
                        let carry = (tail_pos - block_pos) as usize;
                        let from = (block_pos - st.buffer.file_pos) as usize;
                        fresh.as_bytes_mut()[..carry]
                            .copy_from_slice(&st.buffer.buf.as_bytes()[from..from + carry]);
                        let partial = std::mem::replace(
                            &mut st.buffer,
                            WriteBuffer { buf: fresh, file_pos: block_pos, len: carry },
                        );
                        Some(WriteItem::Data { buf: partial, seq_end: st.appended_seq })
                    }
                    None => None,
                }
            };
            shared.changed.notify();
            match item {
                Some(WriteItem::Data { buf, seq_end }) => {
                    let needs_barrier = in_flight.iter().any(|f| f.end_pos > buf.file_pos);
                    if needs_barrier {
                        while let Some(front) = in_flight.pop_front() {
                            complete(&shared, front, &file, &file_path).await?;
                        }
                    }
                    let WriteBuffer { mut buf, file_pos, len } = buf;
                    let padded = len.next_multiple_of(BLOCK_SIZE);
                    buf.as_bytes_mut()[len..padded].fill(0);
                    buf.trim_to_size(padded);
                    let target = file.clone();
                    let buf = Rc::new(buf);
                    let cached = CachedBuffer { segment_base, file_pos, len, buf: buf.clone() };
                    let task = glommio::spawn_local(async move {
                        let result = target.write_rc_at(buf, file_pos).await;
                        (result.map_err(std::io::Error::from), padded)
                    });
                    in_flight.push_back(InFlight {
                        task,
                        cached,
                        seq_end,
                        end_pos: file_pos + padded as u64,
                    });
                    submitted_seq = seq_end;
                    while in_flight.len() >= shared.config.write_in_flight_max {
                        let front = in_flight.pop_front().expect("non-empty");
                        complete(&shared, front, &file, &file_path).await?;
                    }
                }
                Some(WriteItem::Roll { sealed_index, sealed_index_path, next_path }) => {
                    while let Some(front) = in_flight.pop_front() {
                        complete(&shared, front, &file, &file_path).await?;
                    }
                    file.fdatasync().await.map_err(|e| (file_path.clone(), e.into()))?;
                    mark_synced(&shared, submitted_seq);
                    io::write_file_atomic(&sealed_index_path, &sealed_index.encode()).map_err(
                        |e| (sealed_index_path.clone(), std::io::Error::other(e.to_string())),
                    )?;
                    let next = io::open_rw(&next_path)
                        .await
                        .map_err(|e| (next_path.clone(), std::io::Error::other(e.to_string())))?;
                    io::sync_dir(&shared.dir)
                        .map_err(|e| (shared.dir.clone(), std::io::Error::other(e.to_string())))?;
                    let old = std::mem::replace(&mut file, Rc::new(next));
                    file_path = next_path;
                    segment_base = sealed_index.next_offset;
                    if let Ok(old) = Rc::try_unwrap(old) {
                        let _ = old.close().await;
                    }
                    // The sealed segment is complete on disk: readers may read all of it.
                    advance_readable_to_segment(&shared, sealed_index.next_offset);
                }
                None => {
                    if let Some(front) = in_flight.pop_front() {
                        complete(&shared, front, &file, &file_path).await?;
                        continue;
                    }
                    if shared.state.borrow().closing {
                        // Everything is written; one last fsync covers it, then stop.
                        shared.state.borrow_mut().want_synced_seq = u64::MAX;
                        start_sync_if_wanted(&shared, &file, &file_path);
                        shared
                            .changed
                            .wait_until(|| {
                                let st = shared.state.borrow();
                                !st.sync_in_flight || st.failure.is_some()
                            })
                            .await;
                        let st = shared.state.borrow();
                        if st.synced_seq >= st.written_seq || st.failure.is_some() {
                            return Ok(());
                        }
                        continue;
                    }
                    shared
                        .changed
                        .wait_until(|| {
                            let st = shared.state.borrow();
                            !st.queue.is_empty()
                                || st.appended_seq > submitted_seq
                                || st.closing
                                || sync_wanted(&st)
                        })
                        .await;
                }
            }
        }
    }
    .await;
    if let Err((path, error)) = result {
        tracing::error!(path = %path.display(), %error, "log writer failed; the partition refuses writes");
        let mut st = shared.state.borrow_mut();
        st.failure = Some(Rc::new(error));
        st.failure_path = path;
        drop(st);
        shared.changed.notify();
    }
    while let Some(front) = in_flight.pop_front() {
        let _ = front.task.await;
    }
    if let Ok(file) = Rc::try_unwrap(file) {
        let _ = file.close().await;
    }
}

async fn complete(
    shared: &Shared,
    front: InFlight,
    file: &DmaFile,
    path: &Path,
) -> Result<(), (PathBuf, std::io::Error)> {
    let (result, expected) = front.task.await;
    match result {
        Ok(n) if n >= expected => {}
        Ok(n) => {
            // A short write (the device filled up mid-write, say): write the rest once more, so
            // the caller sees the real reason (ENOSPC) rather than a bare short count.
            let rest = expected - n;
            let mut buf = glommio::allocate_dma_buffer(rest);
            buf.as_bytes_mut().copy_from_slice(&front.cached.buf.as_bytes()[n..expected]);
            match file.write_at(buf, front.cached.file_pos + n as u64).await {
                Ok(m) if m >= rest => {}
                Ok(m) => {
                    return Err((
                        path.to_path_buf(),
                        std::io::Error::new(
                            std::io::ErrorKind::WriteZero,
                            format!("short write: {} of {expected} bytes", n + m),
                        ),
                    ))
                }
                Err(e) => return Err((path.to_path_buf(), e.into())),
            }
        }
        Err(e) => return Err((path.to_path_buf(), e)),
    }
    let mut st = shared.state.borrow_mut();
    st.written_seq = st.written_seq.max(front.seq_end);
    let written = st.written_seq;
    let size = shared.config.write_buffer_size_bytes;
    let pool_max = shared.config.write_queue_max + shared.config.write_in_flight_max;
    let cached = front.cached;
    if shared.config.tail_cache_buffers_max > 0 {
        // A later write of the same block (a partial write's successor) supersedes this one; the
        // superseded buffer was partial, hence trimmed, hence not worth recycling.
        st.tail_cache
            .retain(|c| !(c.segment_base == cached.segment_base && c.file_pos == cached.file_pos));
        st.tail_cache.push_back(cached);
        while st.tail_cache.len() > shared.config.tail_cache_buffers_max {
            let evicted = st.tail_cache.pop_front().expect("longer than its bound");
            st.recycle(evicted.buf, size, pool_max);
        }
    } else {
        st.recycle(cached.buf, size, pool_max);
    }
    while let Some(frame) = st.pending.front() {
        if frame.seq_end > written {
            break;
        }
        st.readable = Readable {
            next_offset: frame.next_offset,
            segment_base: frame.segment_base,
            position_end: frame.position_end,
        };
        st.pending.pop_front();
    }
    drop(st);
    shared.changed.notify();
    Ok(())
}

fn sync_wanted(st: &State) -> bool {
    !st.sync_in_flight && st.synced_seq < st.written_seq && st.want_synced_seq > st.synced_seq
}

/// Starts an fdatasync in its own task when an appender waits for `synced` and written bytes are
/// not yet synced. The writer keeps issuing writes meanwhile: the sync covers every write that
/// completed before it started, which is what it reports (`target`). One sync at a time, so all
/// appenders that arrive during it share the next one (group commit).
fn start_sync_if_wanted(shared: &Rc<Shared>, file: &Rc<DmaFile>, path: &Path) {
    let target = {
        let mut st = shared.state.borrow_mut();
        if !sync_wanted(&st) || st.failure.is_some() {
            return;
        }
        st.sync_in_flight = true;
        st.written_seq
    };
    let shared = shared.clone();
    let file = file.clone();
    let path = path.to_path_buf();
    glommio::spawn_local(async move {
        // Observability only: the latency is recorded, never used to decide anything.
        #[allow(clippy::disallowed_methods)]
        let started = std::time::Instant::now();
        let result = file.fdatasync().await;
        let mut st = shared.state.borrow_mut();
        st.sync_in_flight = false;
        st.fsync_count += 1;
        st.fsync_latency_ns.saturating_record(started.elapsed().as_nanos() as u64);
        match result {
            Ok(()) => st.synced_seq = st.synced_seq.max(target),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "fdatasync failed; the partition refuses writes");
                st.failure = Some(Rc::new(e.into()));
                st.failure_path = path;
            }
        }
        drop(st);
        shared.changed.notify();
    })
    .detach();
}

fn mark_synced(shared: &Shared, seq: u64) {
    let mut st = shared.state.borrow_mut();
    st.synced_seq = st.synced_seq.max(seq);
    drop(st);
    shared.changed.notify();
}

/// After a roll, the next segment is readable from its start even before its first write.
fn advance_readable_to_segment(shared: &Shared, next_base: u64) {
    let mut st = shared.state.borrow_mut();
    if st.readable.segment_base < next_base && st.readable.next_offset >= next_base {
        st.readable = Readable { next_offset: next_base, segment_base: next_base, position_end: 0 };
    }
    drop(st);
    shared.changed.notify();
}

#[cfg(test)]
mod tests;
