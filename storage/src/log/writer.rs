//! The writer task of one partition: all segment I/O in queue order, write-behind with a bound on
//! writes in flight, group commit (one fdatasync for every `synced` waiter), and segment rolls.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::DmaBuffer;
use glommio::Task;

use crate::io::{File, BLOCK_SIZE};
use crate::Error;

use super::{Readable, Shared, State, WriteBuffer, WriteItem};

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
pub(super) async fn writer_loop(shared: Rc<Shared>, first_file: File) {
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
                        (target.write_rc_at(buf, file_pos).await, padded)
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
                    file.fdatasync().await.map_err(|e| (file_path.clone(), e))?;
                    mark_synced(&shared, submitted_seq);
                    let disk = &shared.config.disk;
                    disk.write_file_atomic(&sealed_index_path, &sealed_index.encode())
                        .await
                        .map_err(failure)?;
                    let next = disk.open_rw(&next_path).await.map_err(failure)?;
                    disk.sync_dir(&shared.dir).await.map_err(failure)?;
                    let old = std::mem::replace(&mut file, next);
                    file_path = next_path;
                    segment_base = sealed_index.next_offset;
                    let _ = old.close().await;
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
    let _ = file.close().await;
}

async fn complete(
    shared: &Shared,
    front: InFlight,
    file: &File,
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
                Err(e) => return Err((path.to_path_buf(), e)),
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
fn start_sync_if_wanted(shared: &Rc<Shared>, file: &File, path: &Path) {
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
                st.failure = Some(Rc::new(e));
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

/// A seam error as the writer's failure: the file it names and the underlying I/O error.
fn failure(error: Error) -> (PathBuf, std::io::Error) {
    match error {
        Error::Io { path, source, .. } => (path, source),
        other => (PathBuf::new(), std::io::Error::other(other.to_string())),
    }
}
