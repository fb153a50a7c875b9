//! The owning shard's half of a Fetch: reading whole stored batches, and waiting for new ones.
//!
//! A batch is copied once, from the DMA read buffer (or the log's tail cache) into a `Bytes`
//! the response frame is made of. Readers are kept open between fetches (`ReaderCache`) so a
//! consumer's next fetch continues where the last one ended, with the reader's read-ahead still
//! in flight, instead of reopening the segment and searching the index each time. A batch read
//! but not sent (it did not fit) stays with the cached reader for the next fetch.
//!
//! A consumer of history asks for its next fetch only once the whole response reached it, so
//! a fetch that read, then sent, left the disk idle while the response went out and the shard's
//! CPU idle while the next one was read (`kappa-bench kafka --history-only`: the send took about
//! twice the read, one after the other). So when a fetch ends at a byte limit (the consumer is
//! behind, not at the tail), its reader goes on reading the batches of the consumer's next fetch
//! in a task of its own (`read_ahead`) while the response is written: up to as many bytes as
//! this fetch took from the partition, at most `READ_AHEAD_BYTES_MAX`, and only from memory the
//! shard's budget can spare (`Budget::try_reserve`): all read-aheads of a shard together hold
//! at most a quarter of it, never so much that a largest fetch response would not fit beside
//! them, and one starts only while that much is free. A read-ahead holds its memory until the
//! next fetch takes its batches or its reader is dropped, so without that bound fetches could
//! wait on it. The next fetch at that offset stops the task
//! (after the batch in hand) and starts from the batches it read. Nothing else changes: the
//! batches are the same whole stored batches, in the same order, chosen by the same limits.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::FutureExt;
use kappa_storage::{LogReader, PartitionLog, Seek};

use crate::kafka::codec::code;
use crate::kafka::node::Node;
use crate::kafka::util::{self, first, Held, LocalFuture};

/// A reader left idle this long is closed (its file and read-ahead buffers freed).
const READER_IDLE: Duration = Duration::from_secs(60);

/// The most bytes one reader reads ahead of its consumer's next fetch: a few disk reads' worth
/// beyond the log's own read-ahead (8 reads of 1 MiB), enough to keep the disk busy while a
/// response of that size is written, small beside the shard's budget.
pub(crate) const READ_AHEAD_BYTES_MAX: usize = 16 << 20;

/// Batches read by read-aheads, for the tests.
#[cfg(test)]
pub(super) static READ_AHEAD_BATCHES: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// A reader, the batches it read that no fetch has sent yet, and the error it met after them.
struct Reading {
    reader: LogReader,
    /// Batches read but not sent, in order; the first starts at or before the entry's `expect`.
    ready: VecDeque<Bytes>,
    ready_bytes: usize,
    /// The read error met after `ready` (by the read-ahead): the next fetch reports it there.
    error: Option<kappa_storage::Error>,
    /// The budgets `ready` is charged to while a read-ahead read it.
    held: Option<Charge>,
}

/// A read-ahead's memory, charged to the shard's budget and to the read-aheads' part of it.
struct Charge {
    budget: Held,
    read_ahead: Held,
}

impl Charge {
    fn resize(&self, bytes: usize) {
        self.budget.resize(bytes);
        self.read_ahead.resize(bytes);
    }
}

/// The most bytes a shard's fetch read-aheads hold together: a quarter of its budget, and never
/// so much that a largest fetch response would not fit beside them.
pub(crate) fn read_ahead_bytes_max(config: &crate::kafka::KafkaConfig) -> usize {
    let total = config.buffered_bytes_per_shard;
    (total / 4).min(total.saturating_sub(config.fetch_bytes_max))
}

impl Reading {
    /// The next batch: one read earlier, else the error met after them, else from the log.
    async fn next(&mut self, node: &Node) -> Result<Option<Bytes>, kappa_storage::Error> {
        if let Some(batch) = self.ready.pop_front() {
            self.ready_bytes -= batch.len();
            if let Some(held) = &self.held {
                held.resize(self.ready_bytes);
            }
            return Ok(Some(batch));
        }
        self.held = None;
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        match self.reader.next_batch().await? {
            // The one copy: out of the read buffer into the response, in a buffer the shard
            // reuses once an earlier response is written (`Node::buffers`).
            Some(read) => {
                let bytes = read.batch.kafka_bytes();
                let mut buffer = node.buffers.take(bytes.len());
                buffer.extend_from_slice(bytes);
                let batch = buffer.split().freeze();
                node.buffers.keep(buffer, bytes.len());
                Ok(Some(batch))
            }
            None => Ok(None),
        }
    }

    /// Gives back a batch read but not sent: the next fetch starts with it.
    fn unread(&mut self, batch: Bytes) {
        self.ready_bytes += batch.len();
        if let Some(held) = &self.held {
            held.resize(self.ready_bytes);
        }
        self.ready.push_front(batch);
    }
}

/// What a cached reader is doing between fetches.
enum State {
    Idle(Box<Reading>),
    /// Reading ahead for the next fetch (`read_ahead`); `stop` makes the task return the
    /// reading after the batch in hand. Dropping the task cancels it.
    Ahead {
        stop: Rc<Cell<bool>>,
        task: glommio::Task<Box<Reading>>,
    },
}

struct CachedReader {
    topic: Arc<str>,
    partition: u32,
    log: Rc<PartitionLog>,
    /// The offset the consumer will ask for next.
    expect: u64,
    state: State,
    used: Instant,
}

impl CachedReader {
    /// The reading, once any read-ahead has stopped.
    async fn settle(self) -> Box<Reading> {
        match self.state {
            State::Idle(reading) => reading,
            State::Ahead { stop, task } => {
                stop.set(true);
                task.await
            }
        }
    }
}

/// Reads batches after a fetch for the consumer's next one until `bytes_max` are ready, the
/// reader caught up or failed (the error is kept for the next fetch), or `stop`.
async fn read_ahead(
    node: Weak<Node>,
    mut reading: Box<Reading>,
    bytes_max: usize,
    stop: Rc<Cell<bool>>,
) -> Box<Reading> {
    while !stop.get() && reading.ready_bytes < bytes_max && reading.error.is_none() {
        let Some(node) = node.upgrade() else { break };
        let read = reading.reader.next_batch().await;
        match read {
            Ok(Some(read)) => {
                let bytes = read.batch.kafka_bytes();
                let mut buffer = node.buffers.take(bytes.len());
                buffer.extend_from_slice(bytes);
                let batch = buffer.split().freeze();
                node.buffers.keep(buffer, bytes.len());
                reading.ready_bytes += batch.len();
                reading.ready.push_back(batch);
                #[cfg(test)]
                READ_AHEAD_BATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(None) => break,
            Err(e) => reading.error = Some(e),
        }
        drop(node);
        glommio::yield_if_needed().await;
    }
    if let Some(held) = &reading.held {
        held.resize(reading.ready_bytes);
    }
    reading
}

/// Open readers of this shard, at most `max`, least recently used dropped first.
pub(crate) struct ReaderCache {
    max: usize,
    entries: Vec<CachedReader>,
}

impl ReaderCache {
    pub(crate) fn new(max: usize) -> Self {
        ReaderCache { max, entries: Vec::new() }
    }

    fn take(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
        log: &Rc<PartitionLog>,
    ) -> Option<CachedReader> {
        let now = util::now();
        self.entries.retain(|e| now.duration_since(e.used) < READER_IDLE);
        let at = self.entries.iter().position(|e| {
            e.partition == partition
                && e.expect == offset
                && &*e.topic == topic
                && Rc::ptr_eq(&e.log, log)
        })?;
        Some(self.entries.swap_remove(at))
    }

    fn put(&mut self, mut entry: CachedReader) {
        entry.used = util::now();
        if self.entries.len() >= self.max {
            if let Some(oldest) =
                self.entries.iter().enumerate().min_by_key(|(_, e)| e.used).map(|(i, _)| i)
            {
                self.entries.swap_remove(oldest);
            }
        }
        self.entries.push(entry);
    }

    pub(crate) fn forget(&mut self, topic: &str) {
        self.entries.retain(|e| &*e.topic != topic);
    }

    /// Drops every reader (their read-ahead tasks are cancelled).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

/// One partition to read on its owning shard.
pub(crate) struct ReadItem {
    pub(crate) slot: usize,
    pub(crate) topic: Arc<str>,
    pub(crate) partition: u32,
    pub(crate) offset: u64,
    pub(crate) partition_max: usize,
}

/// What a read found for one partition.
pub(crate) struct ReadOut {
    pub(crate) slot: usize,
    pub(crate) error_code: i16,
    pub(crate) high_watermark: i64,
    pub(crate) log_start_offset: i64,
    pub(crate) batches: Vec<Bytes>,
    pub(crate) bytes: usize,
    /// The offset after the last batch returned (unchanged when none).
    pub(crate) next_offset: u64,
}

/// The offset after a stored v2 batch (base offset + last offset delta + 1).
fn batch_end(batch: &[u8]) -> Option<u64> {
    let base = i64::from_be_bytes(batch.get(0..8)?.try_into().ok()?);
    let delta = i32::from_be_bytes(batch.get(23..27)?.try_into().ok()?);
    u64::try_from(base + i64::from(delta) + 1).ok()
}

/// Reads batches of `items` in order, within `budget` bytes for the whole response; the first
/// batch of a partition is always taken while the response is still `empty`, and otherwise when
/// it fits the budget, even past the partition's own limit (a batch larger than a consumer's
/// `max.partition.fetch.bytes` must still reach it).
pub(crate) async fn read(
    node: &Rc<Node>,
    items: Vec<ReadItem>,
    mut budget: usize,
    mut empty: bool,
) -> Vec<ReadOut> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let mut result = ReadOut {
            slot: item.slot,
            error_code: code::NONE,
            high_watermark: -1,
            log_start_offset: -1,
            batches: Vec::new(),
            bytes: 0,
            next_offset: item.offset,
        };
        let Some(log) = node.shard.log(&item.topic, item.partition) else {
            result.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
            out.push(result);
            continue;
        };
        let start = log.start_offset();
        let high_watermark = log.readable_end_offset();
        result.high_watermark = high_watermark as i64;
        result.log_start_offset = start as i64;
        if item.offset < start || item.offset > log.end_offset() {
            result.error_code = code::OFFSET_OUT_OF_RANGE;
            out.push(result);
            continue;
        }
        if item.offset >= high_watermark || budget == 0 {
            out.push(result);
            continue;
        }
        let cached = node.readers.borrow_mut().take(&item.topic, item.partition, item.offset, &log);
        let mut reading = match cached {
            Some(entry) => entry.settle().await,
            None => match log.reader(Seek::Offset(item.offset)) {
                Ok(reader) => Box::new(Reading {
                    reader,
                    ready: VecDeque::new(),
                    ready_bytes: 0,
                    error: None,
                    held: None,
                }),
                Err(kappa_storage::Error::OffsetOutOfRange { .. }) => {
                    result.error_code = code::OFFSET_OUT_OF_RANGE;
                    out.push(result);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(topic = %item.topic, partition = item.partition, error = %e, "Kafka fetch failed");
                    result.error_code = code::KAFKA_STORAGE_ERROR;
                    out.push(result);
                    continue;
                }
            },
        };
        let mut failed = false;
        // Whether the fetch stopped at a byte limit (the consumer is behind the readable end).
        let mut limited = false;
        loop {
            let batch = match reading.next(node).await {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(topic = %item.topic, partition = item.partition, error = %e, "Kafka fetch failed");
                    result.error_code = match e {
                        kappa_storage::Error::OffsetOutOfRange { .. } => code::OFFSET_OUT_OF_RANGE,
                        _ => code::KAFKA_STORAGE_ERROR,
                    };
                    failed = true;
                    break;
                }
            };
            let len = batch.len();
            let fits = if result.batches.is_empty() {
                empty || len <= budget
            } else {
                result.bytes + len <= item.partition_max && len <= budget
            };
            if !fits {
                reading.unread(batch);
                limited = true;
                break;
            }
            let Some(end) = batch_end(&batch) else {
                result.error_code = code::KAFKA_STORAGE_ERROR;
                failed = true;
                break;
            };
            result.next_offset = end;
            result.bytes += len;
            result.batches.push(batch);
            budget = budget.saturating_sub(len);
            empty = false;
            if result.bytes >= item.partition_max || budget == 0 {
                limited = true;
                break;
            }
            glommio::yield_if_needed().await;
        }
        if !failed {
            let state = match read_ahead_reservation(node, limited, result.bytes, &reading) {
                Some((bytes_max, held)) => {
                    reading.held = Some(held);
                    let stop = Rc::new(Cell::new(false));
                    let task = glommio::spawn_local(read_ahead(
                        Rc::downgrade(node),
                        reading,
                        bytes_max,
                        stop.clone(),
                    ));
                    State::Ahead { stop, task }
                }
                None => State::Idle(reading),
            };
            node.readers.borrow_mut().put(CachedReader {
                topic: item.topic.clone(),
                partition: item.partition,
                log: log.clone(),
                expect: result.next_offset,
                state,
                used: util::now(),
            });
        }
        out.push(result);
    }
    out
}

/// Whether to read ahead for the consumer's next fetch after this one, how far, and the budget
/// that memory is charged to: only after a fetch that stopped at a byte limit, for as many bytes
/// as it took (at most `READ_AHEAD_BYTES_MAX`, less what is read already), when the shard's budget
/// can spare them (see the module's documentation).
fn read_ahead_reservation(
    node: &Node,
    limited: bool,
    fetched: usize,
    reading: &Reading,
) -> Option<(usize, Charge)> {
    let bytes_max = fetched.min(READ_AHEAD_BYTES_MAX);
    let wanted = bytes_max.checked_sub(reading.ready_bytes).filter(|w| *w > 0)?;
    if !limited || reading.error.is_some() {
        return None;
    }
    let read_ahead = node.read_ahead_budget.try_reserve(wanted, 0)?;
    let budget = node.budget.try_reserve(wanted, node.config().fetch_bytes_max)?;
    // One charge for what is read already and what is to be read: the caller drops the one
    // `ready` was charged to.
    let charge = Charge { budget, read_ahead };
    charge.resize(reading.ready_bytes + wanted);
    Some((bytes_max, charge))
}

/// Waits until one of `items` (topic, partition, offset) has records at or after its offset,
/// `deadline` passes, or `cancel` is dropped by the asking shard.
pub(crate) async fn wait_any(
    node: &Rc<Node>,
    items: Vec<(Arc<str>, u32, u64)>,
    deadline: Instant,
    cancel: Option<flume::Receiver<()>>,
) {
    let mut waits: Vec<LocalFuture<'_, ()>> = Vec::with_capacity(items.len() + 2);
    for (topic, partition, offset) in items {
        match node.shard.log(&topic, partition) {
            Some(log) => waits.push(Box::pin(async move {
                // An error (closed, failed) also ends the wait: the next read reports it.
                let _ = log.wait_readable(offset).await;
            })),
            None => return,
        }
    }
    waits.push(Box::pin(util::sleep_until(deadline)));
    waits.push(Box::pin(node.until_closing()));
    let all = async {
        first(waits).await;
    };
    match cancel {
        Some(cancel) => {
            all.or(async {
                let _ = cancel.recv_async().await;
            })
            .await
        }
        None => all.await,
    }
}
