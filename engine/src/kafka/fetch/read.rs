//! The owning shard's half of a Fetch: reading whole stored batches, and waiting for new ones.
//!
//! A batch is copied once, from the DMA read buffer (or the log's tail cache) into a `Bytes`
//! the response frame is made of. Readers are kept open between fetches (`ReaderCache`) so a
//! consumer's next fetch continues where the last one ended, with the reader's read-ahead still
//! in flight, instead of reopening the segment and searching the index each time. A batch read
//! but not sent (it did not fit) stays with the cached reader for the next fetch.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::FutureExt;
use kappa_storage::{LogReader, PartitionLog, Seek};

use crate::kafka::codec::code;
use crate::kafka::node::Node;
use crate::kafka::util::{self, first, LocalFuture};

/// A reader left idle this long is closed (its file and read-ahead buffers freed).
const READER_IDLE: Duration = Duration::from_secs(60);

struct CachedReader {
    topic: Arc<str>,
    partition: u32,
    log: Rc<PartitionLog>,
    /// The offset the consumer will ask for next.
    expect: u64,
    reader: LogReader,
    /// A batch read but not sent yet (it starts at or before `expect`).
    pending: Option<Bytes>,
    used: Instant,
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
        let mut entry = match cached {
            Some(entry) => entry,
            None => match log.reader(Seek::Offset(item.offset)) {
                Ok(reader) => CachedReader {
                    topic: item.topic.clone(),
                    partition: item.partition,
                    log: log.clone(),
                    expect: item.offset,
                    reader,
                    pending: None,
                    used: util::now(),
                },
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
        loop {
            let batch = match entry.pending.take() {
                Some(batch) => batch,
                None => match entry.reader.next_batch().await {
                    // The one copy: out of the read buffer into the response, in a buffer
                    // the shard reuses once an earlier response is written (`Node::buffers`).
                    Ok(Some(read)) => {
                        let bytes = read.batch.kafka_bytes();
                        let mut buffer = node.buffers.take(bytes.len());
                        buffer.extend_from_slice(bytes);
                        let batch = buffer.split().freeze();
                        node.buffers.keep(buffer, bytes.len());
                        batch
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(topic = %item.topic, partition = item.partition, error = %e, "Kafka fetch failed");
                        result.error_code = match e {
                            kappa_storage::Error::OffsetOutOfRange { .. } => {
                                code::OFFSET_OUT_OF_RANGE
                            }
                            _ => code::KAFKA_STORAGE_ERROR,
                        };
                        failed = true;
                        break;
                    }
                },
            };
            let len = batch.len();
            let fits = if result.batches.is_empty() {
                empty || len <= budget
            } else {
                result.bytes + len <= item.partition_max && len <= budget
            };
            if !fits {
                entry.pending = Some(batch);
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
                break;
            }
            glommio::yield_if_needed().await;
        }
        if !failed {
            entry.expect = result.next_offset;
            node.readers.borrow_mut().put(entry);
        }
        out.push(result);
    }
    out
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
