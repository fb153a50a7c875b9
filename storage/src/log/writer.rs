//! The writer task of one partition: all segment I/O in queue order, write-behind with a bound on
//! writes in flight, group commit (one fdatasync for every `synced` waiter), the unsynced bound,
//! preallocation ahead of the writes, and segment rolls.
//!
//! Every I/O here goes through the seam (`io::File`, `io::Disk`): DMA writes and fdatasync on
//! io_uring, the index write and the directory fsync of a roll on glommio's blocking pool, so a
//! roll never stalls the shard.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;

use glommio::io::DmaBuffer;
use glommio::Task;

use crate::index::SegmentIndex;
use crate::io::{File, BLOCK_SIZE};
use crate::watermark::{self, Watermark};
use crate::Error;

use super::{Filled, Readable, Shared, State, WriteBuffer, WriteItem};

struct InFlight {
    task: Task<(io::Result<usize>, usize)>,
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

/// A preallocation running ahead of the writes (`Writer::preallocate`).
struct Preallocation {
    task: Task<io::Result<()>>,
    target: u64,
    done: Rc<std::cell::Cell<bool>>,
}

/// Why the writer stopped: the operation, the file, the error. It fences the log.
type Failed = (&'static str, PathBuf, io::Error);

/// The writer's own state; the shared state is in `Shared`.
struct Writer {
    shared: Rc<Shared>,
    file: File,
    path: PathBuf,
    segment_base: u64,
    /// The active file's size on disk: frames, then zeros reserved by `pre_allocate_from`.
    allocated: u64,
    /// A preallocation running ahead of the writes (`preallocate`): its target, and whether it
    /// finished.
    preallocating: Option<Preallocation>,
    in_flight: VecDeque<InFlight>,
    submitted_seq: u64,
}

/// The writer task: all segment I/O for one partition, in order. `file_len` is the active
/// segment's size on disk (its preallocated zeros included).
pub(super) async fn writer_loop(shared: Rc<Shared>, file: File, file_len: u64) {
    let (path, segment_base) = {
        let st = shared.state.borrow();
        (st.active().path.clone(), st.active().index.base_offset)
    };
    let mut writer = Writer {
        shared: shared.clone(),
        file,
        path,
        segment_base,
        allocated: file_len,
        preallocating: None,
        in_flight: VecDeque::new(),
        submitted_seq: 0,
    };
    if let Err((cause, path, error)) = writer.run().await {
        shared.state.borrow_mut().fence(cause, path, error);
        shared.changed.notify();
    }
    // Writes still in flight finish, but nothing they carry becomes readable or acknowledged.
    while let Some(front) = writer.in_flight.pop_front() {
        let _ = front.task.await;
        crate::pool::give_rc(front.cached.buf);
    }
    if let Some(preallocation) = writer.preallocating.take() {
        let _ = preallocation.task.await;
    }
    let _ = writer.file.close().await;
}

/// The failure a fenced log reports to the writer, which then stops (the fence already holds the
/// first failure, so this one is not recorded).
fn fenced(path: &std::path::Path) -> Failed {
    ("write", path.to_path_buf(), io::Error::other("the log is fenced"))
}

/// A seam error as the writer's failure: the file it names and the underlying I/O error.
fn failure(cause: &'static str) -> impl Fn(Error) -> Failed {
    move |error| match error {
        Error::Io { path, source, .. } => (cause, path, source),
        other => (cause, PathBuf::new(), io::Error::other(other.to_string())),
    }
}

impl Writer {
    async fn run(&mut self) -> Result<(), Failed> {
        let shared = self.shared.clone();
        loop {
            if shared.state.borrow().failure.is_some() {
                return Ok(()); // A sync task fenced the log.
            }
            start_sync_if_wanted(&shared, &self.file, &self.path);
            let item = self.next_item();
            shared.changed.notify();
            match item {
                Some(WriteItem::Data { buf, seq_end }) => self.write(buf, seq_end).await?,
                Some(WriteItem::Roll { sealed_index, sealed_index_path, next_path }) => {
                    self.roll(sealed_index, sealed_index_path, next_path).await?;
                }
                None => {
                    if let Some(front) = self.in_flight.pop_front() {
                        self.complete(front).await?;
                        continue;
                    }
                    if shared.state.borrow().closing {
                        // Everything is written; one last fsync covers it, then stop.
                        shared.state.borrow_mut().want_synced_seq = u64::MAX;
                        start_sync_if_wanted(&shared, &self.file, &self.path);
                        shared
                            .changed
                            .wait_until(|| {
                                let st = shared.state.borrow();
                                !st.sync_in_flight || st.failure.is_some()
                            })
                            .await;
                        let (failed, synced) = {
                            let st = shared.state.borrow();
                            (st.failure.is_some(), st.synced_seq >= st.written_seq)
                        };
                        if failed {
                            return Ok(());
                        }
                        if synced {
                            return self.close_watermark().await;
                        }
                        continue;
                    }
                    self.wait_for_work().await;
                }
            }
        }
    }

    /// Waits (the log is idle: nothing queued, nothing in flight) until there is work. Meanwhile
    /// an idle partition gives its cached buffers back to the shard's pool after
    /// `tail_cache_idle_release`, and records a sync that completed in the watermark after
    /// `WATERMARK_IDLE_DELAY` without new writes (so a burst of syncs costs one more fsync, and
    /// a busy log none: its next frames prove its syncs).
    async fn wait_for_work(&mut self) {
        let shared = self.shared.clone();
        let submitted = self.submitted_seq;
        let watermark_armed = watermark_due(&shared.state.borrow()).is_some();
        let work = shared.changed.wait_until(|| {
            let st = shared.state.borrow();
            !st.queue.is_empty()
                || st.appended_seq > submitted
                || st.closing
                || st.failure.is_some()
                || sync_wanted(&st, shared.config.unsynced_bytes_max)
                // A sync completed meanwhile: arm the watermark's timer.
                || (!watermark_armed && watermark_due(&st).is_some())
        });
        let idle_release = shared.config.tail_cache_idle_release;
        let release_armed = !shared.state.borrow().tail_cache.is_empty() && !idle_release.is_zero();
        let timeout = match (release_armed, watermark_armed) {
            (false, false) => return work.await,
            (true, false) => idle_release,
            (false, true) => WATERMARK_IDLE_DELAY,
            (true, true) => idle_release.min(WATERMARK_IDLE_DELAY),
        };
        let woken = futures_lite::future::or(
            async {
                work.await;
                true
            },
            async {
                glommio::timer::sleep(timeout).await;
                false
            },
        )
        .await;
        if woken {
            return;
        }
        if release_armed && timeout == idle_release {
            // An idle partition gives its cached buffers back to the shard's pool.
            shared.state.borrow_mut().release_tail_cache();
        }
        if watermark_armed && timeout == WATERMARK_IDLE_DELAY {
            start_watermark_write(&shared);
        }
    }

    /// Before the writer stops on `close`: the last sync's proof is made durable (so damage in
    /// it is refused as corruption at the next open, never cut as a torn tail). A failure fences
    /// the log, and `close` reports it.
    async fn close_watermark(&mut self) -> Result<(), Failed> {
        let shared = self.shared.clone();
        shared
            .changed
            .wait_until(|| {
                let st = shared.state.borrow();
                !st.watermark.in_flight || st.failure.is_some()
            })
            .await;
        let due = watermark_owed(&shared.state.borrow());
        match due {
            Some(claim) => {
                write_watermark(&shared, claim).await.map_err(failure("watermark write"))
            }
            None => Ok(()),
        }
    }

    /// The next item: queued full buffers first. The partial tail buffer goes only when no write
    /// is in flight (group commit): at low load every append is written at once, and at high load
    /// the tail waits one write latency and grows meanwhile, so partial writes (which rewrite their
    /// first block and so cannot overlap the write before them) stay rare and full buffers stream
    /// with `write_in_flight_max` writes in flight.
    fn next_item(&mut self) -> Option<WriteItem> {
        let mut st = self.shared.state.borrow_mut();
        match st.queue.pop_front() {
            Some(item) => Some(item),
            None if st.appended_seq > self.submitted_seq
                && self.in_flight.is_empty()
                && st.buffer.buf.is_some() =>
            {
                // The partial buffer goes; its last partial block stays behind as the carry
                // (less than a block), and the next append takes a buffer from the pool.
                let tail_pos = st.buffer.file_pos + st.buffer.len as u64;
                let block_pos = tail_pos - tail_pos % BLOCK_SIZE as u64;
                let carry = (tail_pos - block_pos) as usize;
                let from = (block_pos - st.buffer.file_pos) as usize;
                let partial = std::mem::replace(
                    &mut st.buffer,
                    WriteBuffer { buf: None, file_pos: block_pos, len: carry },
                );
                // The writer caught up with the appenders: size the next buffer to need.
                st.streaming = false;
                let bytes = partial.buf.as_ref().expect("checked above").as_bytes();
                st.carry.clear();
                st.carry.extend_from_slice(&bytes[from..from + carry]);
                Some(WriteItem::Data { buf: partial.filled(), seq_end: st.appended_seq })
            }
            None => None,
        }
    }

    async fn write(&mut self, buf: Filled, seq_end: u64) -> Result<(), Failed> {
        self.bound_unsynced(seq_end).await?;
        let needs_barrier = self.in_flight.iter().any(|f| f.end_pos > buf.file_pos);
        if needs_barrier {
            while let Some(front) = self.in_flight.pop_front() {
                self.complete(front).await?;
            }
        }
        let Filled { mut buf, file_pos, len } = buf;
        let padded = len.next_multiple_of(BLOCK_SIZE);
        buf.as_bytes_mut()[len..padded].fill(0);
        buf.trim_to_size(padded);
        let end_pos = file_pos + padded as u64;
        self.preallocate(end_pos).await;
        let target = self.file.clone();
        let buf = Rc::new(buf);
        let cached =
            CachedBuffer { segment_base: self.segment_base, file_pos, len, buf: buf.clone() };
        // Replay reads on this executor hold back while the write is in flight
        // (`reader::budget`, rule 2).
        let pending = crate::reader::WritePending::new();
        // Stage events for latency investigations (`KAPPA_LOG=kappa_storage::log=trace`: the
        // subscriber's timestamps give each write's queueing and service time).
        tracing::trace!(file_pos, bytes = padded, "log write submitted");
        let task = glommio::spawn_local(async move {
            let written = target.write_rc_at(buf, file_pos).await;
            drop(pending);
            (written, padded)
        });
        self.in_flight.push_back(InFlight { task, cached, seq_end, end_pos });
        self.submitted_seq = seq_end;
        while self.in_flight.len() >= self.shared.config.write_in_flight_max {
            let front = self.in_flight.pop_front().expect("non-empty");
            self.complete(front).await?;
        }
        Ok(())
    }

    /// Holds back a write that would leave more than `unsynced_bytes_max` written but unsynced:
    /// completes the writes in flight, then waits for an fdatasync covering them. So a power cut
    /// can tear at most the last `LogConfig::torn_tail_window_bytes` of the active segment.
    async fn bound_unsynced(&mut self, seq_end: u64) -> Result<(), Failed> {
        let shared = self.shared.clone();
        let max = shared.config.unsynced_bytes_max;
        loop {
            {
                let mut st = shared.state.borrow_mut();
                if st.failure.is_some() {
                    return Err(fenced(&self.path));
                }
                if seq_end <= st.synced_seq + max {
                    st.want_sync_now = false;
                    st.unsynced_bytes_peak = st.unsynced_bytes_peak.max(seq_end - st.synced_seq);
                    return Ok(());
                }
            }
            if let Some(front) = self.in_flight.pop_front() {
                self.complete(front).await?;
                continue;
            }
            shared.state.borrow_mut().want_sync_now = true;
            start_sync_if_wanted(&shared, &self.file, &self.path);
            shared
                .changed
                .wait_until(|| {
                    let st = shared.state.borrow();
                    !st.sync_in_flight || st.failure.is_some()
                })
                .await;
        }
    }

    /// Extends the active file with zeros ahead of the writes, so appends do not grow the file
    /// one write at a time. The extension runs in the background once less than half of
    /// `preallocate_bytes` is left past a write (to `preallocate_bytes` past it), so no write
    /// waits for it: inline, every write crossing the reserved end waited for an fallocate
    /// (measured under load: 5 ms median, 34 ms p90 on the ext4 virtio disk, 19 ms median on
    /// tmpfs, which zeroes the pages, on every eighth 1 MB write). Only a write past the reserved
    /// end waits, for the extension in flight or an inline one. A failure here costs only the
    /// optimisation (the write itself reports a full disk), so it is logged and preallocation
    /// stops for the segment.
    async fn preallocate(&mut self, end_pos: u64) {
        let config = &self.shared.config;
        if config.preallocate_bytes == 0 || self.allocated == u64::MAX {
            return;
        }
        let finished = self.preallocating.as_ref().is_some_and(|p| p.done.get());
        if finished || end_pos > self.allocated {
            self.finish_preallocation().await;
        }
        let config = &self.shared.config;
        let segment_end = config.segment_size_bytes_max.next_multiple_of(BLOCK_SIZE as u64);
        let target = (end_pos + config.preallocate_bytes).min(segment_end.max(end_pos));
        if end_pos > self.allocated {
            tracing::trace!(target, "log preallocation started");
            let preallocated = self.file.pre_allocate_from(self.allocated, target, false).await;
            tracing::trace!(target, "log preallocation done");
            self.preallocated(target, preallocated);
        } else if self.preallocating.is_none()
            && self.allocated - end_pos < config.preallocate_bytes / 2
            && target > self.allocated
        {
            let (file, from) = (self.file.clone(), self.allocated);
            let done = Rc::new(std::cell::Cell::new(false));
            let finished = done.clone();
            tracing::trace!(target, "log preallocation started ahead");
            let task = glommio::spawn_local(async move {
                // Only the new range: tmpfs walks every page of an fallocate's range, allocated
                // or not, holding the inode lock the writes need (from 0 each time, a 300 MB
                // segment's extension took its io_uring worker milliseconds of CPU while the
                // writes waited).
                let preallocated = file.pre_allocate_from(from, target, false).await;
                finished.set(true);
                preallocated
            });
            self.preallocating = Some(Preallocation { task, target, done });
        }
    }

    /// Waits for the preallocation in flight, if any, and takes its result.
    async fn finish_preallocation(&mut self) {
        if let Some(preallocation) = self.preallocating.take() {
            let preallocated = preallocation.task.await;
            tracing::trace!(target = preallocation.target, "log preallocation done");
            self.preallocated(preallocation.target, preallocated);
        }
    }

    fn preallocated(&mut self, target: u64, result: io::Result<()>) {
        match result {
            Ok(()) if self.allocated != u64::MAX => self.allocated = self.allocated.max(target),
            Ok(()) => {}
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error,
                    "preallocation failed; the segment grows write by write");
                self.allocated = u64::MAX;
            }
        }
    }

    /// Seals the current segment and continues in the next: every write done, the zeros reserved
    /// past the frames cut, an fdatasync, the index written atomically, the next file created and
    /// its directory entry made durable.
    async fn roll(
        &mut self,
        sealed_index: SegmentIndex,
        sealed_index_path: PathBuf,
        next_path: PathBuf,
    ) -> Result<(), Failed> {
        while let Some(front) = self.in_flight.pop_front() {
            self.complete(front).await?;
        }
        // An extension still running would grow the file again after the cut below.
        self.finish_preallocation().await;
        let size = sealed_index.size_bytes;
        if self.allocated != size {
            self.file.truncate(size).await.map_err(|e| ("truncate", self.path.clone(), e))?;
        }
        // Observability only: the latency is recorded, never used to decide anything.
        #[allow(clippy::disallowed_methods)]
        let started = std::time::Instant::now();
        self.file.fdatasync().await.map_err(|e| ("fdatasync", self.path.clone(), e))?;
        // Counted in `fsync_count`, so recorded with the others (`fsync_latency_ns`).
        record_fsync_latency(started.elapsed().as_nanos() as u64);
        {
            let mut st = self.shared.state.borrow_mut();
            st.fsync_count += 1;
            st.synced_seq = st.synced_seq.max(self.submitted_seq);
            st.advance_synced();
        }
        self.shared.changed.notify();
        let disk = &self.shared.config.disk;
        disk.write_file_atomic(&sealed_index_path, &sealed_index.encode())
            .await
            .map_err(failure("index write"))?;
        let next = disk.open_rw(&next_path).await.map_err(failure("segment create"))?;
        disk.sync_dir(&self.shared.dir).await.map_err(failure("fsync dir"))?;
        let old = std::mem::replace(&mut self.file, next);
        self.path = next_path;
        self.segment_base = sealed_index.next_offset;
        self.allocated = 0;
        let _ = old.close().await;
        // The sealed segment is complete on disk: readers may read all of it.
        advance_readable_to_segment(&self.shared, sealed_index.next_offset);
        Ok(())
    }

    async fn complete(&mut self, front: InFlight) -> Result<(), Failed> {
        let (result, expected) = front.task.await;
        match result {
            Ok(n) if n >= expected => {}
            Ok(n) => {
                // A short write (the device filled up mid-write, say): write the rest once more,
                // so the caller sees the real reason (ENOSPC) rather than a bare short count.
                let rest = expected - n;
                let mut buf = self.file.alloc_dma_buffer(rest);
                buf.as_bytes_mut().copy_from_slice(&front.cached.buf.as_bytes()[n..expected]);
                match self.file.write_at(buf, front.cached.file_pos + n as u64).await {
                    Ok(m) if m >= rest => {}
                    Ok(m) => {
                        return Err((
                            "write",
                            self.path.clone(),
                            io::Error::new(
                                io::ErrorKind::WriteZero,
                                format!("short write: {} of {expected} bytes", n + m),
                            ),
                        ))
                    }
                    Err(e) => return Err(("write", self.path.clone(), e)),
                }
            }
            Err(e) => return Err(("write", self.path.clone(), e)),
        }
        tracing::trace!(file_pos = front.cached.file_pos, "log write completed");
        let shared = &self.shared;
        let mut st = shared.state.borrow_mut();
        if st.failure.is_some() {
            return Err(fenced(&self.path));
        }
        st.written_seq = st.written_seq.max(front.seq_end);
        let written = st.written_seq;
        let cached = front.cached;
        let size = cached.buf.capacity();
        // A later write of the same block (a partial write's successor) supersedes this one.
        let mut superseded = Vec::new();
        st.tail_cache.retain(|c| {
            let keep = !(c.segment_base == cached.segment_base && c.file_pos == cached.file_pos);
            if !keep {
                superseded.push(c.buf.clone());
            }
            keep
        });
        for buf in superseded {
            crate::pool::tail_cache_release(buf.capacity());
            st.recycle(buf);
        }
        // The shard's tail caches share one bound (`crate::pool`): at it, this log evicts its own
        // oldest buffer or caches nothing.
        let mut admitted = false;
        if shared.config.tail_cache_buffers_max > 0 {
            if st.tail_cache.len() >= shared.config.tail_cache_buffers_max {
                if let Some(evicted) = st.tail_cache.pop_front() {
                    crate::pool::tail_cache_release(evicted.buf.capacity());
                    st.recycle(evicted.buf);
                }
            }
            admitted = crate::pool::tail_cache_admit(size);
        }
        if admitted {
            st.tail_cache.push_back(cached);
        } else {
            st.recycle(cached.buf);
        }
        while let Some(frame) = st.pending.front().copied() {
            if frame.seq_end > written {
                break;
            }
            st.readable = frame.readable();
            st.pending.pop_front();
            st.pending_sync.push_back(frame);
        }
        drop(st);
        shared.changed.notify();
        Ok(())
    }
}

/// Whether an fdatasync should start now: one is not running, something written is unsynced, and
/// an appender waits for `synced`, or the writer waits on the unsynced bound, or half the bound
/// is used (a background sync, so the bound rarely stalls a writer).
fn sync_wanted(st: &State, unsynced_bytes_max: u64) -> bool {
    !st.sync_in_flight
        && st.synced_seq < st.written_seq
        && (st.want_synced_seq > st.synced_seq
            || st.want_sync_now
            || st.written_seq - st.synced_seq >= unsynced_bytes_max / 2)
}

/// Starts an fdatasync in its own task when one is wanted (`sync_wanted`). The writer keeps
/// issuing writes meanwhile: the sync covers every write that completed before it started, which
/// is what it reports (`target`). One sync at a time, so all appenders that arrive during it share
/// the next one (group commit). A failed sync fences the log.
fn start_sync_if_wanted(shared: &Rc<Shared>, file: &File, path: &std::path::Path) {
    let target = {
        let mut st = shared.state.borrow_mut();
        if st.failure.is_some() || !sync_wanted(&st, shared.config.unsynced_bytes_max) {
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
        tracing::trace!(target, "log fdatasync started");
        let result = file.fdatasync().await;
        tracing::trace!(target, "log fdatasync done");
        let mut st = shared.state.borrow_mut();
        st.sync_in_flight = false;
        st.fsync_count += 1;
        record_fsync_latency(started.elapsed().as_nanos() as u64);
        match result {
            Ok(()) if st.failure.is_none() => {
                st.synced_seq = st.synced_seq.max(target);
                st.advance_synced();
            }
            Ok(()) => {}
            Err(e) => st.fence("fdatasync", path, e),
        }
        drop(st);
        shared.changed.notify();
    })
    .detach();
}

thread_local! {
    /// The fdatasync latency of every log on this thread (one executor: a shard), created at its
    /// first fdatasync.
    ///
    /// Why one per thread, not one per log: a histogram is about 27 KB, built at each log's first
    /// fdatasync. At 4,000 partitions that was 11% of a short run's shard samples (zeroing and
    /// faulting in 100 MB), and 270 MB of RSS for 10,000 partitions that ever synced. The shard
    /// reports this one (`fsync_latency_ns`): the same figure, every sync of its logs, closed
    /// logs' included, and it never goes backwards.
    static FSYNC_LATENCY_NS: std::cell::RefCell<Option<hdrhistogram::Histogram<u64>>> =
        const { std::cell::RefCell::new(None) };
}

fn record_fsync_latency(ns: u64) {
    FSYNC_LATENCY_NS.with_borrow_mut(|h| {
        h.get_or_insert_with(|| {
            hdrhistogram::Histogram::new_with_bounds(1_000, 60_000_000_000, 2)
                .expect("static histogram bounds are valid")
        })
        .saturating_record(ns)
    });
}

/// The fdatasync latency in nanoseconds of every log this thread (a shard's executor) has run,
/// closed ones included; `None` before the first fdatasync.
pub fn fsync_latency_ns() -> Option<hdrhistogram::Histogram<u64>> {
    FSYNC_LATENCY_NS.with_borrow(Clone::clone)
}

/// How long the log stays idle after a sync completed before the watermark records it.
pub(super) const WATERMARK_IDLE_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// The claim the watermark should record now (active segment base, synced bytes of it): the
/// synced prefix, when it lies in the active segment, says more than the last claim written, and
/// no watermark write is in flight (one at a time; a newer claim waits for the next turn).
fn watermark_due(st: &State) -> Option<(u64, u64)> {
    watermark_owed(st).filter(|claim| st.watermark.failed != Some(*claim))
}

/// The claim the watermark owes whatever failed before: what `close` writes (a claim whose idle
/// write failed is still owed; marking it written would leave the last synced group unproven).
fn watermark_owed(st: &State) -> Option<(u64, u64)> {
    let synced = st.synced_readable;
    let claim = (synced.segment_base, synced.position_end);
    let in_active = synced.segment_base == st.active().index.base_offset;
    (st.failure.is_none()
        && !st.watermark.in_flight
        && in_active
        && claim.1 > 0
        && st.watermark.written != Some(claim))
    .then_some(claim)
}

/// Starts a watermark write of the current claim in its own task (the idle write: nothing waits
/// for it). A failure is logged and leaves the previous slot's proof: the claim is only a proof,
/// the data is synced either way, and recovery falls back to the frame rule without it.
fn start_watermark_write(shared: &Rc<Shared>) {
    let Some(claim) = watermark_due(&shared.state.borrow()) else { return };
    let shared = shared.clone();
    glommio::spawn_local(async move {
        if let Err(error) = write_watermark(&shared, claim).await {
            tracing::warn!(dir = %shared.dir.display(), %error,
                "could not record the sync watermark; recovery falls back to the frame rule");
        }
    })
    .detach();
}

/// Writes `claim` into the next slot of the watermark file and fdatasyncs it. The file is opened
/// for the write and closed after it: an idle partition holds no descriptor for it.
async fn write_watermark(shared: &Shared, claim: (u64, u64)) -> Result<(), Error> {
    let sequence = {
        let mut st = shared.state.borrow_mut();
        st.watermark.in_flight = true;
        st.watermark.sequence += 1;
        st.watermark.sequence
    };
    let path = watermark::path(&shared.dir);
    let result = async {
        let file = shared.config.disk.open_rw(&path).await?;
        let claim = Watermark { sequence, segment_base: claim.0, synced: claim.1 };
        let written = watermark::write(&file, &claim).await;
        let _ = file.close().await;
        written.map_err(|e| Error::io("watermark write", &path, e))
    }
    .await;
    let mut st = shared.state.borrow_mut();
    st.watermark.in_flight = false;
    // Only a write that succeeded proves the claim. After a failure the idle write waits for a
    // newer sync (and takes the other slot), but `close` writes this claim again.
    if result.is_ok() {
        st.watermark.written = Some(claim);
    } else {
        st.watermark.failed = Some(claim);
    }
    drop(st);
    shared.changed.notify();
    result
}

/// After a roll, the next segment is readable from its start even before its first write.
fn advance_readable_to_segment(shared: &Shared, next_base: u64) {
    let mut st = shared.state.borrow_mut();
    let start = Readable { next_offset: next_base, segment_base: next_base, position_end: 0 };
    if st.readable.segment_base < next_base && st.readable.next_offset >= next_base {
        st.readable = start;
    }
    if st.synced_readable.segment_base < next_base && st.synced_readable.next_offset >= next_base {
        st.synced_readable = start;
    }
    drop(st);
    shared.changed.notify();
}
