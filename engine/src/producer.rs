//! The producer handle: `Send + Clone`, usable from any thread, blocking or async.
//!
//! A record with a key goes to the partition its key hashes to; a record or batch without one goes
//! to the next partition in this producer's round robin (a whole batch to one partition, so it stays
//! one frame); `send_to` names the partition. Requests for one shard travel through one FIFO
//! channel and the shard assigns offsets in arrival order, so one producer's records keep their
//! order within a partition.
//!
//! Batching for the user: a batch whose records route to several partitions travels as one
//! request per shard, and the shard's accumulator (`shard::accumulate`) packs records of many
//! requests into one stored batch per partition. `with_linger` lets records wait up to that long
//! for more (Kafka's `linger.ms`), `with_batch_size` caps a stored batch's bytes (`batch.size`).
//! `send_each` and `submit*` deliver every record's own offset.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kappa_storage::{Durability, Header, Records};

use crate::engine::{Inner, TopicMeta};
use crate::router::partition_for_key;
use crate::shard::link::Link;
use crate::shard::{Request, Stage};
use crate::Error;

/// One shard's share of a batch being planned (`Producer::plan`).
#[derive(Default, Clone)]
struct ShardPlan {
    /// The partition of each part, in order of first appearance.
    parts: Vec<u32>,
    /// Records of each part so far (the next record's rank).
    counts: Vec<u32>,
    /// Its records' indexes in the batch, in batch order: the shard reads the producer's bytes
    /// front to back (read in partition order it jumped through them, a cache miss per record,
    /// most of staging's time with random keys).
    indexes: Vec<u32>,
    /// The part of each of `indexes`.
    record_parts: Vec<u32>,
}

thread_local! {
    /// `Producer::plan`'s table from partition to its part in the batch being planned, kept per
    /// thread so a batch pays for the partitions it touches, not for every partition of the
    /// topic. An entry counts only if it carries the current plan's number (the first field), so
    /// nothing needs resetting, even after a panic in the middle of a plan.
    static PART_OF: std::cell::RefCell<(u32, Vec<(u32, u32)>)> =
        const { std::cell::RefCell::new((0, Vec::new())) };
}

/// Sizes `PART_OF`'s table for a topic of `partitions`: grown to it, and shrunk back when it is
/// far larger (a thread that once planned for a topic of a million partitions does not keep 8 MB
/// for the small ones it plans for now). Entries dropped or added carry plan number 0, which no
/// plan has.
fn fit_part_of(part_of: &mut Vec<(u32, u32)>, partitions: usize) {
    if part_of.len() > 4 * partitions.max(4096) {
        part_of.truncate(partitions);
        part_of.shrink_to_fit();
    }
    if part_of.len() < partitions {
        part_of.resize(partitions, (0, 0));
    }
}

/// A record as a producer owns it before it reaches a shard.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProducerRecord {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// Event time in ms since the epoch; `None` means append time (the engine's `Clock`).
    pub timestamp: Option<i64>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl ProducerRecord {
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        ProducerRecord { value: value.into(), ..ProducerRecord::default() }
    }
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }
    pub fn timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp = Some(timestamp_ms);
        self
    }
    pub fn header(mut self, key: impl Into<String>, value: Option<Vec<u8>>) -> Self {
        self.headers.push((key.into(), value));
        self
    }
}

/// Records packed into one buffer: one allocation per batch instead of one per record, and the
/// shard reads keys and values straight out of it. All of a batch's records that route to the same
/// partition stay one stored batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerBatch {
    data: Vec<u8>,
    entries: Vec<BatchEntry>,
    headers: Vec<HeaderEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchEntry {
    key: Option<(u32, u32)>,
    value: (u32, u32),
    timestamp: Option<i64>,
    /// Start and count in `headers`.
    headers: (u32, u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeaderEntry {
    key: (u32, u32),
    value: Option<(u32, u32)>,
}

impl ProducerBatch {
    pub fn new() -> Self {
        ProducerBatch::default()
    }

    /// Room for `records` records of `bytes` key and value bytes in all.
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        ProducerBatch {
            data: Vec::with_capacity(bytes),
            entries: Vec::with_capacity(records),
            headers: Vec::new(),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> (u32, u32) {
        let start = self.data.len() as u32;
        self.data.extend_from_slice(bytes);
        (start, bytes.len() as u32)
    }

    /// Adds a record; `timestamp` `None` means append time.
    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8], timestamp: Option<i64>) {
        self.push_with_headers(key, value, timestamp, &[]);
    }

    pub fn push_with_headers(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp: Option<i64>,
        headers: &[(&str, Option<&[u8]>)],
    ) {
        let key = key.map(|k| self.put(k));
        let value = self.put(value);
        let start = self.headers.len() as u32;
        for (k, v) in headers {
            let key = self.put(k.as_bytes());
            let value = v.map(|v| self.put(v));
            self.headers.push(HeaderEntry { key, value });
        }
        self.entries.push(BatchEntry {
            key,
            value,
            timestamp,
            headers: (start, headers.len() as u32),
        });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Key, value and header bytes of all records.
    pub(crate) fn data_len(&self) -> usize {
        self.data.len()
    }

    /// Key, value and header bytes of record `index`.
    pub(crate) fn size_of(&self, index: usize) -> usize {
        let entry = &self.entries[index];
        let (start, count) = entry.headers;
        let headers: u32 = self.headers[start as usize..(start + count) as usize]
            .iter()
            .map(|h| h.key.1 + h.value.map_or(0, |v| v.1))
            .sum();
        (entry.key.map_or(0, |k| k.1) + entry.value.1 + headers) as usize
    }

    /// Room for `records` more records of `bytes` more key, value and header bytes, so that
    /// pushing them does not grow the buffers step by step (the accumulator sizes a staged batch
    /// to what its partition's batches usually hold).
    pub(crate) fn reserve(&mut self, records: usize, bytes: usize) {
        self.data.reserve(bytes);
        self.entries.reserve(records);
    }

    /// The bytes its buffers hold (capacity, not length): what a spare staged batch keeps.
    pub(crate) fn footprint(&self) -> usize {
        self.data.capacity()
            + self.entries.capacity() * std::mem::size_of::<BatchEntry>()
            + self.headers.capacity() * std::mem::size_of::<HeaderEntry>()
    }

    /// Empties the batch, keeping its buffers (the accumulator reuses them).
    pub(crate) fn clear(&mut self) {
        self.data.clear();
        self.entries.clear();
        self.headers.clear();
    }

    /// Asks the CPU for the lines where the next record's bytes and entry go (the accumulator
    /// stages into thousands of batches; see `shard::accumulate::stage`).
    #[inline(always)]
    pub(crate) fn prefetch_ends(&self) {
        prefetch(self.data.as_ptr().wrapping_add(self.data.len()));
        prefetch(self.entries.as_ptr().wrapping_add(self.entries.len()));
    }

    /// Copies record `index` of `src` to the end of this batch (no allocation past growth).
    pub(crate) fn push_from(&mut self, src: &ProducerBatch, index: usize) {
        let entry = src.entries[index];
        let key = entry.key.map(|k| self.put(src.slice(k)));
        let value = self.put(src.slice(entry.value));
        let (start, count) = entry.headers;
        let first = self.headers.len() as u32;
        for h in &src.headers[start as usize..(start + count) as usize] {
            let key = self.put(src.slice(h.key));
            let value = h.value.map(|v| self.put(src.slice(v)));
            self.headers.push(HeaderEntry { key, value });
        }
        self.entries.push(BatchEntry {
            key,
            value,
            timestamp: entry.timestamp,
            headers: (first, count),
        });
    }

    fn slice(&self, (start, len): (u32, u32)) -> &[u8] {
        &self.data[start as usize..(start + len) as usize]
    }

    fn key(&self, index: usize) -> Option<&[u8]> {
        self.entries[index].key.map(|r| self.slice(r))
    }

    /// The records as the log's encoder reads them (`PartitionLog::append_records`), with
    /// `now_ms` for those without a timestamp: what a shard appends, copied once.
    pub fn records_at(&self, now_ms: i64) -> Stamped<'_, ProducerBatch> {
        Stamped { records: self, now_ms }
    }

    /// The records at `indexes`, copied into a batch of their own.
    fn subset(&self, indexes: &[usize]) -> ProducerBatch {
        let mut out = ProducerBatch::new();
        for &i in indexes {
            let entry = self.entries[i];
            let (start, count) = entry.headers;
            let headers: Vec<(&str, Option<&[u8]>)> = self.headers
                [start as usize..(start + count) as usize]
                .iter()
                .map(|h| {
                    (
                        std::str::from_utf8(self.slice(h.key)).unwrap_or(""),
                        h.value.map(|v| self.slice(v)),
                    )
                })
                .collect();
            out.push_with_headers(self.key(i), self.slice(entry.value), entry.timestamp, &headers);
        }
        out
    }
}

/// A payload as the log's encoder reads it (`kappa_storage::Records`), in place: a record without
/// a timestamp gets `now_ms`, the append time. Nothing is built per record between the producer's
/// bytes and the log's write buffer (`ProducerBatch::records_at`).
pub struct Stamped<'a, T: ?Sized> {
    pub(crate) records: &'a T,
    pub(crate) now_ms: i64,
}

impl Records for Stamped<'_, ProducerBatch> {
    fn count(&self) -> usize {
        self.records.entries.len()
    }
    #[inline]
    fn record(&self, index: usize) -> (i64, Option<&[u8]>, &[u8], usize) {
        let batch = self.records;
        let entry = &batch.entries[index];
        (
            entry.timestamp.unwrap_or(self.now_ms),
            entry.key.map(|k| batch.slice(k)),
            batch.slice(entry.value),
            entry.headers.1 as usize,
        )
    }
    fn header(&self, index: usize, header: usize) -> Header<'_> {
        let batch = self.records;
        let h = &batch.headers[batch.entries[index].headers.0 as usize + header];
        Header { key: batch.slice(h.key), value: h.value.map(|v| batch.slice(v)) }
    }
}

impl Records for Stamped<'_, [ProducerRecord]> {
    fn count(&self) -> usize {
        self.records.len()
    }
    #[inline]
    fn record(&self, index: usize) -> (i64, Option<&[u8]>, &[u8], usize) {
        let r = &self.records[index];
        (r.timestamp.unwrap_or(self.now_ms), r.key.as_deref(), &r.value, r.headers.len())
    }
    fn header(&self, index: usize, header: usize) -> Header<'_> {
        let (key, value) = &self.records[index].headers[header];
        Header { key: key.as_bytes(), value: value.as_deref() }
    }
}

/// What an append request carries.
#[derive(Debug)]
pub(crate) enum Payload {
    Records(Vec<ProducerRecord>),
    Batch(ProducerBatch),
}

/// Where one record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub partition: u32,
    pub offset: u64,
}

/// Where a batch for one partition landed: offsets `base_offset..=last_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchAck {
    pub partition: u32,
    pub base_offset: u64,
    pub last_offset: u64,
}

/// An acknowledgement still on its way (from `try_send`).
pub struct PendingAck {
    receiver: flume::Receiver<Result<BatchAck, Error>>,
    /// The shard, so a wait ends (`ShardDied`) if it dies.
    link: Link,
    /// When the send was asked for: the wait's latency goes to the shard's controller.
    sent: Instant,
}

impl PendingAck {
    /// Blocks until the durability is reached.
    pub fn wait(self) -> Result<BatchAck, Error> {
        let ack = self.link.recv(&self.receiver);
        self.seen(&ack);
        ack
    }
    pub async fn wait_async(self) -> Result<BatchAck, Error> {
        let ack = self.link.recv_async(&self.receiver).await;
        self.seen(&ack);
        ack
    }

    /// The caller has its acknowledgement: the latency it saw, from the send on, is what the
    /// shard's live-latency controller holds to the budget (`shard::client`). A caller that
    /// waits late sees, and reports, a later acknowledgement.
    fn seen(&self, ack: &Result<BatchAck, Error>) {
        if ack.is_ok() {
            self.link.life.client.ack.record(self.sent.elapsed());
        }
    }
}

/// Now, for a client-visible latency (the controller's input; no record carries it).
#[allow(clippy::disallowed_methods)]
fn sent_now() -> Instant {
    Instant::now()
}

/// A shard's answer to one `Stage` request: one `BatchAck` per partition part.
type StageReply = flume::Receiver<Result<Vec<BatchAck>, Error>>;

/// Every record's acknowledgement of a `submit*` call, still on its way.
pub struct PendingAcks {
    /// One reply per shard request (with the link to that shard, so a dead shard answers
    /// `ShardDied` instead of leaving the wait hanging): one `BatchAck` per partition part.
    replies: Vec<(Link, StageReply)>,
    /// Per record: its part (numbered across the replies, in order) and its rank among the
    /// batch's records for that part's partition.
    records: Vec<(u32, u32)>,
    /// When the records were submitted, and the linger they were sent with: the wait's latency
    /// past the linger (the caller's choice) goes to each shard's controller (`shard::client`).
    sent: Instant,
    linger: Duration,
}

impl PendingAcks {
    /// Blocks until every record reached the producer's durability; one `Ack` per record, in the
    /// order the records were given.
    pub fn wait(self) -> Result<Vec<Ack>, Error> {
        let mut parts = Vec::new();
        for (link, reply) in &self.replies {
            parts.extend(link.recv(reply)?);
            self.seen(link);
        }
        Ok(self.resolve(parts))
    }

    /// `wait` for async code.
    pub async fn wait_async(self) -> Result<Vec<Ack>, Error> {
        let mut parts = Vec::new();
        for (link, reply) in &self.replies {
            parts.extend(link.recv_async(reply).await?);
            self.seen(link);
        }
        Ok(self.resolve(parts))
    }

    /// One shard's reply is in the caller's hands (see `PendingAck::seen`).
    fn seen(&self, link: &Link) {
        link.life.client.ack.record(self.sent.elapsed().saturating_sub(self.linger));
    }

    /// Records in the request.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// A partition's records are contiguous in its log (see `shard::accumulate`), so a record's
    /// offset is its partition's base offset plus its rank. (The shard answers each part with
    /// its first record's offset and its count, so nothing here can check that contiguity: the
    /// tests read every acknowledged offset back from the log.)
    fn resolve(&self, parts: Vec<BatchAck>) -> Vec<Ack> {
        self.records
            .iter()
            .map(|&(part, rank)| {
                let ack = &parts[part as usize];
                Ack { partition: ack.partition, offset: ack.base_offset + u64::from(rank) }
            })
            .collect()
    }
}

/// Sends records into the engine.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
    durability: Durability,
    round_robin: Arc<AtomicU32>,
    linger: Duration,
    batch_size: usize,
}

/// The default `batch_size`: about a thousand records of 100 bytes per stored batch.
pub const DEFAULT_BATCH_SIZE: usize = 128 * 1024;

enum Mode {
    Block,
    Try,
}

impl Producer {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Producer {
            inner,
            durability: Durability::Written,
            round_robin: Arc::new(AtomicU32::new(0)),
            linger: Duration::ZERO,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }

    /// The same producer letting records wait up to `linger` on their shard for more records of
    /// their partition (Kafka's `linger.ms`): fewer, larger stored batches, each record
    /// acknowledged up to `linger` later. Zero (the default) appends a request's records as soon
    /// as the shard has them, still one stored batch per partition per request.
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// The same producer with stored batches of at most about `bytes` of keys, values and headers
    /// (Kafka's `batch.size`; a larger record is a batch of its own). Default `DEFAULT_BATCH_SIZE`.
    pub fn with_batch_size(mut self, bytes: usize) -> Self {
        self.batch_size = bytes.max(1);
        self
    }

    pub fn linger(&self) -> Duration {
        self.linger
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Sends one record to partition `partition` and blocks until it reached the durability.
    pub fn send_to(
        &self,
        topic: &str,
        partition: u32,
        record: ProducerRecord,
    ) -> Result<Ack, Error> {
        let mut batch = ProducerBatch::with_capacity(1, record.value.len());
        push_record(&mut batch, &record);
        let acks = self.submit_routed(topic, batch, Some(partition), Mode::Block)?.wait()?;
        Ok(acks[0])
    }

    /// `send_to` for async code.
    pub async fn send_to_async(
        &self,
        topic: &str,
        partition: u32,
        record: ProducerRecord,
    ) -> Result<Ack, Error> {
        let mut batch = ProducerBatch::with_capacity(1, record.value.len());
        push_record(&mut batch, &record);
        let pending = self.submit_routed_async(topic, batch, Some(partition)).await?;
        Ok(pending.wait_async().await?[0])
    }

    /// Sends a packed batch, every record to `partition`, and waits; one `Ack` per record.
    pub fn send_packed_to(
        &self,
        topic: &str,
        partition: u32,
        batch: ProducerBatch,
    ) -> Result<Vec<Ack>, Error> {
        self.submit_routed(topic, batch, Some(partition), Mode::Block)?.wait()
    }

    /// Sends a packed batch (records routed by key) and blocks until every record reached the
    /// durability: one `Ack` per record, in batch order. Records of many partitions travel as one
    /// request per shard and are accumulated per partition there.
    pub fn send_each(&self, topic: &str, batch: ProducerBatch) -> Result<Vec<Ack>, Error> {
        self.submit_routed(topic, batch, None, Mode::Block)?.wait()
    }

    /// `send_each` for async code.
    pub async fn send_each_async(
        &self,
        topic: &str,
        batch: ProducerBatch,
    ) -> Result<Vec<Ack>, Error> {
        self.submit_routed_async(topic, batch, None).await?.wait_async().await
    }

    /// Queues a packed batch and returns at once with its pending per-record acknowledgements;
    /// blocks only while a shard's request queue is full (backpressure).
    pub fn submit_each(&self, topic: &str, batch: ProducerBatch) -> Result<PendingAcks, Error> {
        self.submit_routed(topic, batch, None, Mode::Block)
    }

    /// `submit_each` that never waits: `Error::WouldBlock` when a shard's request queue is full
    /// (a batch over several shards may then be partly queued).
    pub fn try_submit_each(&self, topic: &str, batch: ProducerBatch) -> Result<PendingAcks, Error> {
        self.submit_routed(topic, batch, None, Mode::Try)
    }

    /// Queues one record (routed by key) and returns its pending acknowledgement: with a linger,
    /// many `submit`s share a stored batch.
    pub fn submit(&self, topic: &str, record: ProducerRecord) -> Result<PendingAcks, Error> {
        let mut batch = ProducerBatch::with_capacity(1, record.value.len());
        push_record(&mut batch, &record);
        self.submit_routed(topic, batch, None, Mode::Block)
    }

    /// Routes every record (by `partition`, else by key, else to one round-robin partition),
    /// groups them per shard and sends one `Stage` request per shard.
    fn plan(
        &self,
        topic: &str,
        batch: ProducerBatch,
        partition: Option<u32>,
    ) -> Result<(Vec<(usize, Request)>, PendingAcks), Error> {
        let sent = sent_now();
        let meta = self.inner.topic(topic)?;
        let partitions = meta.config.partitions;
        if let Some(p) = partition {
            if p >= partitions {
                return Err(Error::UnknownPartition {
                    topic: topic.to_string(),
                    partition: p,
                    partitions,
                });
            }
        }
        let unkeyed = match partition {
            Some(p) => p,
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % partitions,
        };
        let key_partitions = meta.config.key_partition_count();
        // One pass in batch order, no sort: a record's part is its partition's position among
        // the partitions of its shard in order of first appearance (`PART_OF`, a table by
        // partition kept per thread), its rank the records of that part
        // before it. A sort by (shard, partition) cost O(n log n) per batch and was the
        // producer thread's largest item with random keys (a tenth of the submitting CPU).
        let shard_count = self.inner.shard_count();
        let mut shards = vec![ShardPlan::default(); shard_count];
        // Per record: its shard, its part there, its rank in that part.
        let mut placed: Vec<(u32, u32, u32)> = Vec::with_capacity(batch.len());
        let mut route = |table: &std::cell::RefCell<(u32, Vec<(u32, u32)>)>| {
            let mut table = table.borrow_mut();
            let (plan, part_of) = &mut *table;
            *plan = plan.wrapping_add(1);
            if *plan == 0 {
                // Numbers wrapped: entries from 2^32 plans ago would look current.
                part_of.iter_mut().for_each(|e| *e = (0, 0));
                *plan = 1;
            }
            let plan = *plan;
            fit_part_of(part_of, partitions as usize);
            for i in 0..batch.len() {
                let p = match (partition, batch.key(i)) {
                    (Some(p), _) => p,
                    (None, Some(key)) => partition_for_key(key, key_partitions),
                    (None, None) => unkeyed,
                };
                let shard = meta.shards[p as usize];
                let here = &mut shards[shard];
                let entry = &mut part_of[p as usize];
                if entry.0 != plan {
                    *entry = (plan, here.parts.len() as u32);
                    here.parts.push(p);
                    here.counts.push(0);
                }
                let part = entry.1;
                let rank = here.counts[part as usize];
                here.counts[part as usize] += 1;
                placed.push((shard as u32, part, rank));
                if here.indexes.capacity() == 0 {
                    let guess = batch.len() / shard_count + 16;
                    here.indexes.reserve(guess);
                    here.record_parts.reserve(guess);
                }
                here.indexes.push(i as u32);
                here.record_parts.push(part);
            }
        };
        if PART_OF.try_with(&mut route).is_err() {
            // A producer used while its thread's locals are being destroyed (from another
            // thread-local's destructor): a table of its own for this batch, not a panic.
            route(&std::cell::RefCell::new((0, Vec::new())));
        }
        // Parts are numbered over all shards' parts in reply order: shards ascending, each
        // shard's parts in its own order.
        let mut first_part = Vec::with_capacity(shard_count);
        let mut numbered = 0u32;
        for here in &shards {
            first_part.push(numbered);
            numbered += here.parts.len() as u32;
        }
        let records: Vec<(u32, u32)> = placed
            .iter()
            .map(|&(shard, part, rank)| (first_part[shard as usize] + part, rank))
            .collect();
        let batch = Arc::new(batch);
        let mut requests = Vec::new();
        let mut replies = Vec::new();
        for (shard, here) in shards.into_iter().enumerate().filter(|(_, s)| !s.parts.is_empty()) {
            let (reply, receiver) = flume::bounded(1);
            let stage = Stage {
                topic: meta.name.clone(),
                batch: batch.clone(),
                indexes: here.indexes,
                record_parts: here.record_parts,
                parts: here.parts,
                counts: here.counts,
                durability: self.durability,
                linger: self.linger,
                batch_size: self.batch_size,
                reply,
            };
            requests.push((shard, Request::Stage(stage)));
            replies.push((self.inner.link(shard).clone(), receiver));
        }
        Ok((requests, PendingAcks { replies, records, sent, linger: self.linger }))
    }

    fn submit_routed(
        &self,
        topic: &str,
        batch: ProducerBatch,
        partition: Option<u32>,
        mode: Mode,
    ) -> Result<PendingAcks, Error> {
        let (requests, pending) = self.plan(topic, batch, partition)?;
        for (shard, request) in requests {
            match mode {
                Mode::Block => self.inner.send_blocking(shard, request)?,
                Mode::Try => self.inner.try_send(shard, request)?,
            }
        }
        Ok(pending)
    }

    async fn submit_routed_async(
        &self,
        topic: &str,
        batch: ProducerBatch,
        partition: Option<u32>,
    ) -> Result<PendingAcks, Error> {
        let (requests, pending) = self.plan(topic, batch, partition)?;
        for (shard, request) in requests {
            self.inner.send_async(shard, request).await?;
        }
        Ok(pending)
    }

    /// Per-partition acknowledgements of a staged send, sorted by partition.
    fn batch_acks(acks: Vec<Ack>) -> Vec<BatchAck> {
        let mut by_partition: BTreeMap<u32, BatchAck> = BTreeMap::new();
        for ack in acks {
            let entry = by_partition.entry(ack.partition).or_insert(BatchAck {
                partition: ack.partition,
                base_offset: ack.offset,
                last_offset: ack.offset,
            });
            entry.base_offset = entry.base_offset.min(ack.offset);
            entry.last_offset = entry.last_offset.max(ack.offset);
        }
        by_partition.into_values().collect()
    }

    /// True when a batch should go through the accumulator: a linger is set, or its records
    /// route to more than one partition.
    fn stages(&self, batch: &ProducerBatch, partitions: u32) -> bool {
        if !self.linger.is_zero() {
            return true;
        }
        let first = batch.key(0).map(|k| partition_for_key(k, partitions));
        (1..batch.len()).any(|i| batch.key(i).map(|k| partition_for_key(k, partitions)) != first)
    }

    /// Appends every record staged on the shards now, without waiting for its linger (Kafka's
    /// `producer.flush()`): records this thread submitted before the call are staged by then (a
    /// shard serves its requests in order). Returns once they are appended; their
    /// acknowledgements follow at their durability through the pending acks already held. The
    /// end of a bulk load calls it instead of waiting out the linger.
    pub fn flush(&self) -> Result<(), Error> {
        for shard in 0..self.inner.shard_count() {
            self.inner.call(shard, |reply| Request::Flush { reply })?;
        }
        Ok(())
    }

    /// `flush` for async code.
    pub async fn flush_async(&self) -> Result<(), Error> {
        for shard in 0..self.inner.shard_count() {
            self.inner.call_async(shard, |reply| Request::Flush { reply }).await?;
        }
        Ok(())
    }

    /// The same producer acknowledging at another durability.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Sends one record and blocks until it reached this producer's durability.
    pub fn send(&self, topic: &str, record: ProducerRecord) -> Result<Ack, Error> {
        if !self.linger.is_zero() {
            return Ok(self.submit(topic, record)?.wait()?[0]);
        }
        let (partition, shard, request, receiver) = self.request(topic, vec![record])?;
        self.inner.send_blocking(shard, request)?;
        let _ = partition;
        let ack = self.inner.link(shard).recv(&receiver)?;
        Ok(Ack { partition: ack.partition, offset: ack.base_offset })
    }

    /// `send` for async code: waits without blocking the thread.
    pub async fn send_async(&self, topic: &str, record: ProducerRecord) -> Result<Ack, Error> {
        if !self.linger.is_zero() {
            let mut batch = ProducerBatch::with_capacity(1, record.value.len());
            push_record(&mut batch, &record);
            let pending = self.submit_routed_async(topic, batch, None).await?;
            return Ok(pending.wait_async().await?[0]);
        }
        let (_, shard, request, receiver) = self.request(topic, vec![record])?;
        self.inner.send_async(shard, request).await?;
        let ack = self.inner.link(shard).recv_async(&receiver).await?;
        Ok(Ack { partition: ack.partition, offset: ack.base_offset })
    }

    /// Sends without waiting for room: `Error::WouldBlock` when the shard's queue is full.
    pub fn try_send(&self, topic: &str, record: ProducerRecord) -> Result<PendingAck, Error> {
        self.try_send_batch_to_one(topic, vec![record])
    }

    /// Sends records, one batch per partition they route to, and blocks until all are acknowledged.
    pub fn send_batch(
        &self,
        topic: &str,
        records: Vec<ProducerRecord>,
    ) -> Result<Vec<BatchAck>, Error> {
        if records.len() > 1 || !self.linger.is_zero() {
            return self.send_packed(topic, pack(&records));
        }
        let pending = self.submit_batch(topic, records, Mode::Block)?;
        pending.into_iter().map(PendingAck::wait).collect()
    }

    /// `send_batch` for async code.
    pub async fn send_batch_async(
        &self,
        topic: &str,
        records: Vec<ProducerRecord>,
    ) -> Result<Vec<BatchAck>, Error> {
        let sent = sent_now();
        if records.len() > 1 || !self.linger.is_zero() {
            return self.send_packed_async(topic, pack(&records)).await;
        }
        let mut pending = Vec::new();
        for (shard, request, receiver) in self.split(topic, records)? {
            self.inner.send_async(shard, request).await?;
            pending.push(self.pending(shard, receiver, sent));
        }
        let mut acks = Vec::with_capacity(pending.len());
        for p in pending {
            acks.push(p.wait_async().await?);
        }
        Ok(acks)
    }

    /// Sends a packed batch (one stored batch per partition its records route to) and blocks until
    /// every part is acknowledged.
    pub fn send_packed(&self, topic: &str, batch: ProducerBatch) -> Result<Vec<BatchAck>, Error> {
        let meta = self.inner.topic(topic)?;
        if self.stages(&batch, meta.config.key_partition_count()) {
            return Ok(Self::batch_acks(self.send_each(topic, batch)?));
        }
        self.send_packed_nowait(topic, batch)?.into_iter().map(PendingAck::wait).collect()
    }

    /// `send_packed` for async code (the appliance's HTTP handlers): waits for room in the shards'
    /// request queues and for the acknowledgements without blocking the thread.
    pub async fn send_packed_async(
        &self,
        topic: &str,
        batch: ProducerBatch,
    ) -> Result<Vec<BatchAck>, Error> {
        let sent = sent_now();
        let meta = self.inner.topic(topic)?;
        if self.stages(&batch, meta.config.key_partition_count()) {
            return Ok(Self::batch_acks(self.send_each_async(topic, batch).await?));
        }
        let (meta, parts) = self.split_packed(topic, batch)?;
        let mut pending = Vec::with_capacity(parts.len());
        for (partition, part) in parts {
            let (shard, request, receiver) = self.append(&meta, partition, Payload::Batch(part));
            self.inner.send_async(shard, request).await?;
            pending.push(self.pending(shard, receiver, sent));
        }
        let mut acks = Vec::with_capacity(pending.len());
        for p in pending {
            acks.push(p.wait_async().await?);
        }
        Ok(acks)
    }

    /// Queues a packed batch and returns pending acknowledgements (one request and one stored
    /// batch per partition, not accumulated: `submit_each` accumulates); blocks only while a
    /// shard's request queue is full.
    pub fn send_packed_nowait(
        &self,
        topic: &str,
        batch: ProducerBatch,
    ) -> Result<Vec<PendingAck>, Error> {
        let sent = sent_now();
        let (meta, parts) = self.split_packed(topic, batch)?;
        let mut pending = Vec::with_capacity(parts.len());
        for (partition, part) in parts {
            let (shard, request, receiver) = self.append(&meta, partition, Payload::Batch(part));
            self.inner.send_blocking(shard, request)?;
            pending.push(self.pending(shard, receiver, sent));
        }
        Ok(pending)
    }

    /// Splits a packed batch by partition (no copy when every record goes to one partition).
    #[allow(clippy::type_complexity)]
    fn split_packed(
        &self,
        topic: &str,
        batch: ProducerBatch,
    ) -> Result<(Arc<TopicMeta>, Vec<(u32, ProducerBatch)>), Error> {
        let meta = self.inner.topic(topic)?;
        let unkeyed = self.round_robin.fetch_add(1, Ordering::Relaxed) % meta.config.partitions;
        let partition_of = |i: usize| {
            batch
                .key(i)
                .map_or(unkeyed, |k| partition_for_key(k, meta.config.key_partition_count()))
        };
        let first = if batch.is_empty() { unkeyed } else { partition_of(0) };
        let parts: Vec<(u32, ProducerBatch)> = if (1..batch.len()).all(|i| partition_of(i) == first)
        {
            vec![(first, batch)]
        } else {
            let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            for i in 0..batch.len() {
                groups.entry(partition_of(i)).or_default().push(i);
            }
            groups.into_iter().map(|(p, indexes)| (p, batch.subset(&indexes))).collect()
        };
        Ok((meta, parts))
    }

    /// Queues a batch and returns at once with pending acknowledgements (one per partition, not
    /// accumulated: `submit_each` accumulates); blocks only while a shard's request queue is full.
    pub fn send_batch_nowait(
        &self,
        topic: &str,
        records: Vec<ProducerRecord>,
    ) -> Result<Vec<PendingAck>, Error> {
        self.submit_batch(topic, records, Mode::Block)
    }

    /// `send_batch_nowait` that never waits: `Error::WouldBlock` when a shard's queue is full. A
    /// batch that spans partitions may be partly queued when that happens; send single-partition
    /// batches (one key, or no keys) when all-or-nothing matters.
    pub fn try_send_batch(
        &self,
        topic: &str,
        records: Vec<ProducerRecord>,
    ) -> Result<Vec<PendingAck>, Error> {
        self.submit_batch(topic, records, Mode::Try)
    }

    fn try_send_batch_to_one(
        &self,
        topic: &str,
        records: Vec<ProducerRecord>,
    ) -> Result<PendingAck, Error> {
        let sent = sent_now();
        let (_, shard, request, receiver) = self.request(topic, records)?;
        self.inner.try_send(shard, request)?;
        Ok(self.pending(shard, receiver, sent))
    }

    fn submit_batch(
        &self,
        topic: &str,
        records: Vec<ProducerRecord>,
        mode: Mode,
    ) -> Result<Vec<PendingAck>, Error> {
        let sent = sent_now();
        let mut pending = Vec::new();
        for (shard, request, receiver) in self.split(topic, records)? {
            match mode {
                Mode::Block => self.inner.send_blocking(shard, request)?,
                Mode::Try => self.inner.try_send(shard, request)?,
            }
            pending.push(self.pending(shard, receiver, sent));
        }
        Ok(pending)
    }

    /// The acknowledgement of a request sent to `shard` at `sent` (one time for every part of a
    /// call, so a split send reports the latency its caller saw).
    fn pending(
        &self,
        shard: usize,
        receiver: flume::Receiver<Result<BatchAck, Error>>,
        sent: Instant,
    ) -> PendingAck {
        PendingAck { receiver, link: self.inner.link(shard).clone(), sent }
    }

    /// Groups records by partition (keyed records by hash, unkeyed ones together to the next
    /// round-robin partition), keeping their order within each group.
    #[allow(clippy::type_complexity)]
    fn split(
        &self,
        topic: &str,
        records: Vec<ProducerRecord>,
    ) -> Result<Vec<(usize, Request, flume::Receiver<Result<BatchAck, Error>>)>, Error> {
        let meta = self.inner.topic(topic)?;
        let unkeyed = self.round_robin.fetch_add(1, Ordering::Relaxed) % meta.config.partitions;
        let mut groups: BTreeMap<u32, Vec<ProducerRecord>> = BTreeMap::new();
        for record in records {
            let partition = match &record.key {
                Some(key) => partition_for_key(key, meta.config.key_partition_count()),
                None => unkeyed,
            };
            groups.entry(partition).or_default().push(record);
        }
        Ok(groups
            .into_iter()
            .map(|(partition, records)| self.append(&meta, partition, Payload::Records(records)))
            .collect())
    }

    /// One request for records that all go to one partition (the first record decides).
    #[allow(clippy::type_complexity)]
    fn request(
        &self,
        topic: &str,
        records: Vec<ProducerRecord>,
    ) -> Result<(u32, usize, Request, flume::Receiver<Result<BatchAck, Error>>), Error> {
        let meta = self.inner.topic(topic)?;
        let partition = match records.first().and_then(|r| r.key.as_ref()) {
            Some(key) => partition_for_key(key, meta.config.key_partition_count()),
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % meta.config.partitions,
        };
        let (shard, request, receiver) = self.append(&meta, partition, Payload::Records(records));
        Ok((partition, shard, request, receiver))
    }

    /// An append request for one partition, the shard it goes to, and where its ack arrives.
    fn append(
        &self,
        meta: &TopicMeta,
        partition: u32,
        payload: Payload,
    ) -> (usize, Request, flume::Receiver<Result<BatchAck, Error>>) {
        let (reply, receiver) = flume::bounded(1);
        let request = Request::Append {
            sent: sent_now(),
            topic: meta.name.clone(),
            partition,
            payload,
            durability: self.durability,
            reply,
        };
        (meta.shards[partition as usize], request, receiver)
    }
}

/// Asks the CPU to bring the line holding `ptr` into its caches; it reads nothing (any address is
/// allowed, a dangling one included).
#[inline(always)]
pub(crate) fn prefetch<T>(ptr: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it dereferences nothing and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// A record into a packed batch.
fn push_record(batch: &mut ProducerBatch, record: &ProducerRecord) {
    let headers: Vec<(&str, Option<&[u8]>)> =
        record.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
    batch.push_with_headers(record.key.as_deref(), &record.value, record.timestamp, &headers);
}

/// Records into one packed batch.
fn pack(records: &[ProducerRecord]) -> ProducerBatch {
    let bytes = records.iter().map(|r| r.value.len() + r.key.as_ref().map_or(0, Vec::len)).sum();
    let mut batch = ProducerBatch::with_capacity(records.len(), bytes);
    for record in records {
        push_record(&mut batch, record);
    }
    batch
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use crate::router::partition_for_key;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn key(i: u64) -> Vec<u8> {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        format!("k{x:016x}").into_bytes()
    }

    /// Checks a plan against a routing done by hand: each shard's parts unique, on that shard
    /// and in order of first appearance; indexes in batch order; ranks dense per partition.
    fn check_plan(producer: &Producer, topic: &str, batch: &ProducerBatch, to: Option<u32>) {
        let meta = producer.inner.topic(topic).expect("test setup");
        let kp = meta.config.key_partition_count();
        let (requests, pending) = producer.plan(topic, batch.clone(), to).expect("test setup");
        // global parts in reply order
        let mut global: Vec<u32> = Vec::new();
        let mut last_shard = None;
        for (shard, request) in &requests {
            assert!(last_shard.is_none_or(|l| l < *shard), "shards ascending");
            last_shard = Some(*shard);
            let Request::Stage(stage) = request else { panic!("stage") };
            let mut seen = std::collections::BTreeSet::new();
            for p in &stage.parts {
                assert!(seen.insert(*p), "partition {p} twice in parts");
                assert_eq!(meta.shards[*p as usize], *shard);
            }
            assert_eq!(stage.indexes.len(), stage.record_parts.len());
            assert!(stage.indexes.windows(2).all(|w| w[0] < w[1]), "batch order");
            for (&i, &part) in stage.indexes.iter().zip(&stage.record_parts) {
                let p = stage.parts[part as usize];
                let want = match (to, batch.key(i as usize)) {
                    (Some(p), _) => p,
                    (None, Some(k)) => partition_for_key(k, kp),
                    (None, None) => p, // unkeyed: one round-robin partition, checked below
                };
                assert_eq!(p, want, "record {i}");
            }
            // first-appearance order
            let mut order = Vec::new();
            for &part in &stage.record_parts {
                if !order.contains(&part) {
                    order.push(part);
                }
            }
            assert_eq!(order, (0..stage.parts.len() as u32).collect::<Vec<_>>());
            global.extend(&stage.parts);
        }
        assert_eq!(pending.records.len(), batch.len());
        let mut rank: BTreeMap<u32, u32> = BTreeMap::new();
        let mut unkeyed = None;
        for (i, &(part, r)) in pending.records.iter().enumerate() {
            let p = global[part as usize];
            if to.is_none() && batch.key(i).is_none() {
                assert!(unkeyed.is_none_or(|u| u == p), "unkeyed go to one partition");
                unkeyed = Some(p);
            }
            let next = rank.entry(p).or_insert(0);
            assert_eq!(r, *next, "record {i} rank");
            *next += 1;
        }
    }

    fn read_all(engine: &crate::Engine, topic: &str, partition: u32) -> BTreeMap<u64, Vec<u8>> {
        let end = engine.partition_offsets(topic, partition).expect("test setup").end_offset;
        let mut consumer =
            engine.consumer(topic, partition, crate::Seek::Beginning).expect("test setup");
        let mut out = BTreeMap::new();
        while consumer.position() < end {
            let batch = consumer
                .next_batch_timeout(Duration::from_secs(10))
                .expect("test setup")
                .expect("test setup");
            for record in batch.records() {
                out.insert(record.offset(), record.value().to_vec());
            }
        }
        out
    }

    #[test]
    fn plan_routes_and_acks_right_across_shards_growth_and_wrap() {
        let dir = tempfile::tempdir().expect("test setup");
        let engine =
            crate::Engine::builder().data_dir(dir.path()).shards(3).build().expect("test setup");
        engine.create_topic("t", crate::TopicConfig::new(7)).expect("test setup");
        engine.create_topic("u", crate::TopicConfig::new(3)).expect("test setup");
        let producer = engine.producer();
        let lingering =
            engine.producer().with_linger(Duration::from_millis(3)).with_batch_size(300);
        let mut sent: Vec<(String, Vec<u8>, Ack)> = Vec::new();
        let mut n = 0u64;
        for round in 0..60u64 {
            if round == 20 {
                engine.add_partitions("t", 61).expect("test setup");
            }
            if round == 40 {
                // The plan number wraps in the next plans.
                PART_OF.with(|t| t.borrow_mut().0 = u32::MAX - 3);
            }
            let topic = if round % 5 == 4 { "u" } else { "t" };
            let mut batch = ProducerBatch::new();
            let len = 1 + (round * 37) % 300;
            let mut values = Vec::new();
            for j in 0..len {
                let v = format!("v{n}").into_bytes();
                n += 1;
                let k = if (round % 7 == 3) || (round % 3 == 1 && j % 4 == 0) {
                    None
                } else {
                    Some(key(n))
                };
                batch.push(k.as_deref(), &v, None);
                values.push(v);
            }
            let to = (round % 11 == 5).then_some((round as u32) % 3);
            check_plan(&producer, topic, &batch, to);
            let p = if round % 2 == 0 { &producer } else { &lingering };
            let acks = match to {
                Some(to) => p
                    .submit_routed(topic, batch, Some(to), Mode::Block)
                    .expect("test setup")
                    .wait()
                    .expect("test setup"),
                None => {
                    p.submit_each(topic, batch).expect("test setup").wait().expect("test setup")
                }
            };
            assert_eq!(acks.len(), values.len());
            for (v, a) in values.into_iter().zip(acks) {
                sent.push((topic.to_string(), v, a));
            }
        }
        let mut stored: BTreeMap<(String, u32), BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
        for (topic, value, ack) in &sent {
            let s = stored
                .entry((topic.clone(), ack.partition))
                .or_insert_with(|| read_all(&engine, topic, ack.partition));
            assert_eq!(s.get(&ack.offset), Some(value), "{topic} {ack:?}");
        }
        let total: usize = stored.values().map(|s| s.len()).sum();
        assert_eq!(total, sent.len());
        assert!(PART_OF.with(|t| t.borrow().0) < 100, "wrapped");
        engine.shutdown().expect("test setup");
    }

    #[test]
    fn the_part_table_grows_and_shrinks_back() {
        let mut table = Vec::new();
        fit_part_of(&mut table, 1_000_000);
        assert_eq!(table.len(), 1_000_000);
        fit_part_of(&mut table, 300_000);
        assert_eq!(table.len(), 1_000_000, "within 4x: kept");
        fit_part_of(&mut table, 10);
        assert_eq!(table.len(), 10);
        assert!(table.capacity() < 4096, "{}", table.capacity());
        fit_part_of(&mut table, 5_000);
        assert_eq!(table.len(), 5_000);
        assert!(table.iter().all(|&(plan, _)| plan == 0));
    }

    /// A producer used from a thread-local's destructor, after its thread's `PART_OF` is gone
    /// (thread-locals are destroyed in the reverse order of their first use): it plans with a
    /// table of its own. With `PART_OF.with` this panicked, and a panic in a thread-local's
    /// destructor aborts the process.
    #[test]
    fn a_producer_plans_in_a_thread_local_destructor() {
        struct SendsOnDrop(Option<(Producer, std::sync::mpsc::Sender<usize>)>);
        impl Drop for SendsOnDrop {
            fn drop(&mut self) {
                if let Some((producer, done)) = self.0.take() {
                    let mut batch = ProducerBatch::new();
                    for i in 0..10u64 {
                        batch.push(Some(&key(i)), b"v", None);
                    }
                    let pending = producer.submit_each("t", batch).expect("test setup");
                    let _ = done.send(pending.len());
                }
            }
        }
        thread_local! {
            static GUARD: std::cell::RefCell<SendsOnDrop> =
                const { std::cell::RefCell::new(SendsOnDrop(None)) };
        }
        let dir = tempfile::tempdir().expect("test setup");
        let engine =
            crate::Engine::builder().data_dir(dir.path()).shards(2).build().expect("test setup");
        engine.create_topic("t", crate::TopicConfig::new(5)).expect("test setup");
        let producer = engine.producer();
        let (done, planned) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // First use of GUARD, then of PART_OF: PART_OF is destroyed first.
            GUARD.with(|g| g.borrow_mut().0 = Some((producer.clone(), done)));
            producer.submit_each("t", ProducerBatch::new()).expect("test setup");
            assert!(PART_OF.try_with(|_| ()).is_ok());
        })
        .join()
        .expect("the thread exits cleanly");
        assert_eq!(planned.recv_timeout(Duration::from_secs(10)), Ok(10));
        engine.shutdown().expect("test setup");
    }
}
