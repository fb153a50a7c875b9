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
//! Readers only see frames whose bytes are written (`readable`), never buffered ones; readers
//! kept to the synced prefix see only frames an fdatasync covered (`synced_readable`).
//!
//! The writer never lets more than `LogConfig::unsynced_bytes_max` written bytes go unsynced,
//! whatever the durability appenders ask for: that bound is what lets recovery tell a torn tail
//! from corruption (see `recovery`). A failed write or fdatasync **fences** the log: nothing more
//! becomes readable or acknowledged, and every later call gets `Error::Fenced` until the log is
//! reopened (after a failed fdatasync the kernel may have dropped the dirty pages, so nothing
//! written since the last good sync can be vouched for).
//!
//! The code is split along those seams: `append` (the appender half), `writer` (the writer task and
//! group commit), `recovery` (open, recovery, index loading) and `retention`.

mod append;
mod recovery;
mod retention;
mod writer;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::DmaBuffer;
use glommio::Task;

use crate::index::SegmentIndex;
use crate::sync::Event;
use crate::{Durability, Error, LogConfig};

pub(crate) use recovery::load_entries;
pub use writer::fsync_latency_ns;
pub(crate) use writer::CachedBuffer;

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
    /// Full buffers waiting for the writer.
    pub write_queue_len: usize,
    /// Bytes appended and written since the log was opened.
    pub appended_bytes: u64,
    pub written_bytes: u64,
    /// The most bytes ever submitted for writing and not yet synced (at most
    /// `LogConfig::unsynced_bytes_max`: the bound behind the torn-tail window).
    pub unsynced_bytes_peak: u64,
    /// Sealed segments whose index entries were loaded on a reader's first use since the log
    /// was opened (open keeps only their summaries).
    pub index_loads: u64,
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
    /// Bytes recovery read from the active segment: its frames, not the preallocated zeros past
    /// them (the file system reports those as unwritten, `File::data_end`).
    pub read_bytes: u64,
    /// The torn tail cut from the active segment, if one was: the API side of the warning
    /// recovery logs.
    pub tail_cut: Option<TailCut>,
}

/// A torn tail recovery cut from the active segment (`RecoveryReport::tail_cut`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailCut {
    pub segment: PathBuf,
    /// The first damaged byte: the segment now ends here.
    pub position: u64,
    /// The log's end offset after the cut: the first offset dropped, if anything held one (known
    /// even when the damaged frame's own header cannot be trusted, unlike its record count).
    pub first_dropped_offset: u64,
    /// Bytes from `position` to the last non-zero byte.
    pub dropped_bytes: u64,
    /// Valid frames after the damage that went with it, and their offsets `[first, end)`.
    pub dropped_frames: u64,
    pub dropped_offsets: Option<(u64, u64)>,
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
    /// The wall time of the newest append (`i64::MIN` when unknown): what age retention uses.
    pub append_time_ms: i64,
    pub sealed: bool,
}

pub(crate) struct Segment {
    pub(crate) path: PathBuf,
    /// For a sealed segment opened from disk, only the summary (offsets, size, times) until a
    /// reader needs its entries (`entries_loaded`): an idle partition's history costs a few
    /// dozen bytes per segment, not its sparse index (up to 64 KiB per 256 MiB segment).
    pub(crate) index: SegmentIndex,
    /// False while `index.entries` is empty because it was not loaded yet (see
    /// `recovery::load_entries`); the active segment's and those sealed since open are always
    /// loaded.
    pub(crate) entries_loaded: bool,
}

/// The buffer being filled, and where it goes in its segment file. `buf` is taken from the
/// shard's pool (`crate::pool`) only when bytes are appended: while it is `None` (an idle
/// partition), bytes `[0, len)` are the partial block the next write rewrites, kept in
/// `State::carry` (less than a block), so an idle partition holds no DMA buffer.
struct WriteBuffer {
    buf: Option<DmaBuffer>,
    file_pos: u64,
    len: usize,
}

/// A filled buffer on its way to the writer: bytes `[0, len)` go to `file_pos`.
struct Filled {
    buf: DmaBuffer,
    file_pos: u64,
    len: usize,
}

enum WriteItem {
    /// Bytes `[0, len)` of `buf` go to `file_pos` (rounded up to a block, zero-padded).
    Data { buf: Filled, seq_end: u64 },
    /// Seal the current segment and continue in a new one.
    Roll { sealed_index: SegmentIndex, sealed_index_path: PathBuf, next_path: PathBuf },
}

/// Written frames become readable in order; this remembers where each one ends.
#[derive(Clone, Copy)]
struct PendingFrame {
    seq_end: u64,
    next_offset: u64,
    segment_base: u64,
    position_end: u64,
}

/// A readable prefix of the log: every frame before this point is written (or synced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Readable {
    pub(crate) next_offset: u64,
    pub(crate) segment_base: u64,
    pub(crate) position_end: u64,
}

pub(crate) struct State {
    pub(crate) segments: Vec<Segment>,
    /// The encoder's reused memory (see `crate::encode`).
    scratch: crate::encode::Scratch,
    buffer: WriteBuffer,
    /// The partial block of an idle `buffer` (see `WriteBuffer`).
    carry: Vec<u8>,
    /// Appends filled a whole buffer since the writer last had to write a partial one: take whole
    /// buffers (see `WriteBuffer::materialize`).
    streaming: bool,
    queue: VecDeque<WriteItem>,
    /// Appended frames not yet written, oldest first.
    pending: VecDeque<PendingFrame>,
    /// Written frames not yet synced, oldest first (bounded by `unsynced_bytes_max`).
    pending_sync: VecDeque<PendingFrame>,
    appended_seq: u64,
    written_seq: u64,
    synced_seq: u64,
    /// The highest sequence an appender waiting on `synced` needs.
    want_synced_seq: u64,
    /// The writer waits for a sync before it may submit more (the unsynced bound).
    want_sync_now: bool,
    sync_in_flight: bool,
    fsync_count: u64,
    /// Sealed segments whose index entries a reader loaded since open.
    index_loads: u64,
    unsynced_bytes_peak: u64,
    /// Recently written buffers, oldest first.
    pub(crate) tail_cache: VecDeque<CachedBuffer>,
    pub(crate) readable: Readable,
    /// The prefix an fdatasync covered.
    pub(crate) synced_readable: Readable,
    failure: Option<Failure>,
    closing: bool,
    /// The durable sync watermark (`crate::watermark`): what it last recorded.
    watermark: WatermarkState,
}

/// What the writer knows of the partition's watermark file.
#[derive(Debug, Clone, Copy, Default)]
struct WatermarkState {
    /// The last claim written (or read at open): (segment base, synced bytes).
    written: Option<(u64, u64)>,
    /// The sequence of the newest slot; the next write takes the other slot.
    sequence: u64,
    /// A watermark write is running (one at a time).
    in_flight: bool,
    /// The last claim whose write failed: the idle write does not retry it (a failing disk is
    /// not hammered every 100 ms), but `close` does, and fails if it fails again.
    failed: Option<(u64, u64)>,
}

/// The write or sync that fenced the log.
struct Failure {
    cause: &'static str,
    path: PathBuf,
    error: std::io::Error,
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
    /// Lets go of a written buffer: back to the shard's pool (see `crate::pool`).
    fn recycle(&mut self, buf: Rc<DmaBuffer>) {
        crate::pool::give_rc(buf);
    }

    /// Empties the tail cache (an idle partition keeps no buffer for readers).
    fn release_tail_cache(&mut self) {
        while let Some(cached) = self.tail_cache.pop_front() {
            crate::pool::tail_cache_release(cached.buf.capacity());
            self.recycle(cached.buf);
        }
    }

    /// Fences the log (the first failure wins; later ones are its consequences).
    fn fence(&mut self, cause: &'static str, path: PathBuf, error: std::io::Error) {
        if self.failure.is_none() {
            tracing::error!(path = %path.display(), cause, %error,
                "partition log fenced: read-only until reopened");
            self.failure = Some(Failure { cause, path, error });
        }
    }

    /// How much of the active segment an fdatasync covered: what a frame appended now carries as
    /// `synced_before` (see `format`).
    fn synced_position_in_active(&self) -> u32 {
        let synced = self.synced_readable;
        if synced.segment_base == self.active().index.base_offset {
            synced.position_end as u32
        } else {
            0
        }
    }

    /// Moves the synced prefix up to `synced_seq`.
    fn advance_synced(&mut self) {
        while let Some(frame) = self.pending_sync.front() {
            if frame.seq_end > self.synced_seq {
                break;
            }
            self.synced_readable = frame.readable();
            self.pending_sync.pop_front();
        }
        // The queue holds one entry per frame not yet synced: up to the unsynced bound's worth
        // (16 MiB of small frames is about 2.5 MiB of entries, more under a larger bound). A
        // partition that was busy once gives that back when it drains, so idle partitions hold
        // no large queue.
        if self.pending_sync.is_empty() && self.pending_sync.capacity() > PENDING_SYNC_KEEP {
            self.pending_sync.shrink_to(PENDING_SYNC_KEEP);
        }
    }
}

/// Entries of `pending_sync` a drained queue keeps (32 B each): enough for a steady load of
/// batched appends without reallocating.
const PENDING_SYNC_KEEP: usize = 1024;

impl Drop for State {
    /// Every buffer the log still holds goes back to the shard's pool.
    fn drop(&mut self) {
        if let Some(buf) = self.buffer.buf.take() {
            crate::pool::give(buf);
        }
        for item in self.queue.drain(..) {
            if let WriteItem::Data { buf, .. } = item {
                crate::pool::give(buf.buf);
            }
        }
        self.release_tail_cache();
    }
}

impl WriteBuffer {
    /// The buffer as a queue item (only called on a buffer bytes were appended to).
    fn filled(self) -> Filled {
        let buf = self.buf.expect("appended bytes materialized the buffer");
        Filled { buf, file_pos: self.file_pos, len: self.len }
    }

    /// The buffer to copy appended bytes into: taken from the pool when the partition was idle,
    /// with the carried partial block put back in front. While appends fill whole buffers
    /// (`streaming`) the buffer is a whole `write_buffer_size_bytes`, so a busy partition writes
    /// large; otherwise it is sized to what is appended (at least `MIN_BUFFER`), so a burst of
    /// small appends to thousands of partitions does not take a megabyte each.
    ///
    /// The rest of a frame larger than a write buffer (`need`: the frame's bytes still to come)
    /// gets a buffer that holds all of it, up to `LARGE_FRAME_BUFFERS` write buffers: otherwise
    /// such a frame (a Kafka batch of 1000 x 1 KiB is 1.07 MB) is a full buffer plus a tail that
    /// the writer sends only once the full one is written (two dependent writes before the frame
    /// is readable), and no single tail-cache buffer holds it. The unsynced bound still holds
    /// (`Writer::bound_unsynced` checks every write's end; `LogConfig::validate` keeps
    /// `unsynced_bytes_max` at two write buffers or more), and the write queue's memory is at most
    /// `LARGE_FRAME_BUFFERS` times what it was.
    fn materialize(
        &mut self,
        carry: &mut Vec<u8>,
        need: usize,
        streaming: bool,
        max: usize,
    ) -> &mut DmaBuffer {
        self.buf.get_or_insert_with(|| {
            let wanted = carry.len() + need;
            let size = if wanted > max {
                wanted.next_multiple_of(max).min(LARGE_FRAME_BUFFERS * max)
            } else if streaming {
                max
            } else {
                wanted.next_power_of_two().clamp(MIN_BUFFER.min(max), max)
            };
            let mut buf = crate::pool::take(size);
            buf.as_bytes_mut()[..carry.len()].copy_from_slice(carry);
            carry.clear();
            buf
        })
    }
}

/// The smallest write buffer an idle partition takes (a power of two, a multiple of a block).
const MIN_BUFFER: usize = 64 * 1024;

/// The most write buffers' worth one buffer takes to hold the rest of a large frame (see
/// `WriteBuffer::materialize`): a frame up to twice `write_buffer_size_bytes` is one write.
/// `LogConfig::validate` keeps `unsynced_bytes_max` at least this many write buffers: a write
/// larger than the unsynced bound could never be admitted (`Writer::bound_unsynced`).
pub(crate) const LARGE_FRAME_BUFFERS: usize = 2;

impl PendingFrame {
    fn readable(&self) -> Readable {
        Readable {
            next_offset: self.next_offset,
            segment_base: self.segment_base,
            position_end: self.position_end,
        }
    }
}

impl Shared {
    /// `Error::Fenced` if the log is fenced. The original `io::Error` is kept once (it is not
    /// `Clone`); every caller gets one with the same OS error code, or kind and message.
    fn failed(&self, st: &State) -> Result<(), Error> {
        match &st.failure {
            Some(failure) => Err(Error::Fenced {
                dir: self.dir.clone(),
                cause: failure.cause,
                path: failure.path.clone(),
                source: match failure.error.raw_os_error() {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::new(failure.error.kind(), failure.error.to_string()),
                },
            }),
            None => Ok(()),
        }
    }

    fn check_usable(&self, st: &State) -> Result<(), Error> {
        self.failed(st)?;
        if st.closing {
            return Err(Error::Closed);
        }
        Ok(())
    }
}

impl PartitionLog {
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

    /// Counters of this log's I/O, for metrics.
    pub fn stats(&self) -> LogStats {
        let st = self.shared.state.borrow();
        LogStats {
            fsync_count: st.fsync_count,
            write_queue_len: st.queue.len(),
            appended_bytes: st.appended_seq,
            written_bytes: st.written_seq,
            unsynced_bytes_peak: st.unsynced_bytes_peak,
            index_loads: st.index_loads,
        }
    }

    /// The offset the next appended record will get.
    pub fn end_offset(&self) -> u64 {
        self.shared.state.borrow().active().index.next_offset
    }

    /// The first offset readers can see the end of: records below it are written.
    pub fn readable_end_offset(&self) -> u64 {
        self.shared.state.borrow().readable.next_offset
    }

    /// The end of the synced prefix: records below it survive a power cut.
    pub fn synced_end_offset(&self) -> u64 {
        self.shared.state.borrow().synced_readable.next_offset
    }

    /// True once a failed write or fdatasync fenced the log (see the module doc).
    pub fn is_fenced(&self) -> bool {
        self.shared.state.borrow().failure.is_some()
    }

    /// The first offset still in the log (retention moves it forward).
    pub fn start_offset(&self) -> u64 {
        self.shared.state.borrow().segments[0].index.base_offset
    }

    /// Waits until records at or after `offset` are readable (a tail consumer's wake-up).
    pub async fn wait_readable(&self, offset: u64) -> Result<(), Error> {
        self.shared.wait_readable(offset, false).await
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
                append_time_ms: s.index.append_time_ms,
                sealed: i < last,
            })
            .collect()
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.shared.state.borrow().segments.iter().map(|s| s.index.size_bytes).sum()
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
        let st = self.shared.state.borrow();
        self.shared.failed(&st)
    }

    pub(crate) fn shared(&self) -> &Rc<Shared> {
        &self.shared
    }
}

impl Shared {
    /// How far a reader may read in the segment with `base`: its whole size when the writer has
    /// moved past it, the readable (or synced) end when it is the one being written, nothing
    /// beyond. `None` when the segment is gone (retention deleted it).
    pub(crate) fn readable_limit(&self, base: u64, synced_only: bool) -> Option<u64> {
        let st = self.state.borrow();
        let readable = if synced_only { st.synced_readable } else { st.readable };
        if base < st.segments[0].index.base_offset {
            None
        } else if base < readable.segment_base {
            st.segments.iter().find(|s| s.index.base_offset == base).map(|s| s.index.size_bytes)
        } else if base == readable.segment_base {
            Some(readable.position_end)
        } else {
            Some(0)
        }
    }
}

impl Shared {
    /// The readable (or synced) end offset.
    pub(crate) fn readable_end(&self, synced_only: bool) -> u64 {
        let st = self.state.borrow();
        if synced_only {
            st.synced_readable.next_offset
        } else {
            st.readable.next_offset
        }
    }

    /// Waits until records at or after `offset` are readable (or synced), or the log is fenced
    /// or closing (then the error says which).
    pub(crate) async fn wait_readable(&self, offset: u64, synced_only: bool) -> Result<(), Error> {
        self.changed
            .wait_until(|| {
                let st = self.state.borrow();
                let end = if synced_only { st.synced_readable } else { st.readable }.next_offset;
                end > offset || st.failure.is_some() || st.closing
            })
            .await;
        let st = self.state.borrow();
        self.check_usable(&st)
    }
}

#[cfg(test)]
mod tests;
