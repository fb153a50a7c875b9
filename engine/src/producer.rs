//! The producer handle: `Send + Clone`, usable from any thread, blocking or async.
//!
//! A record with a key goes to the partition its key hashes to; a record or batch without one goes
//! to the next partition in this producer's round robin (a whole batch to one partition, so it stays
//! one frame). Requests for one shard travel through one FIFO channel and the shard assigns offsets
//! in arrival order, so one producer's records keep their order within a partition.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use kappa_storage::Durability;

use crate::engine::{Inner, TopicMeta};
use crate::router::partition_for_key;
use crate::shard::link::Link;
use crate::shard::Request;
use crate::Error;

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

    fn slice(&self, (start, len): (u32, u32)) -> &[u8] {
        &self.data[start as usize..(start + len) as usize]
    }

    fn key(&self, index: usize) -> Option<&[u8]> {
        self.entries[index].key.map(|r| self.slice(r))
    }

    /// Visits every record as borrowed parts: (timestamp, key, value, headers).
    pub(crate) fn for_each<'a>(
        &'a self,
        mut visit: impl FnMut(
            Option<i64>,
            Option<&'a [u8]>,
            &'a [u8],
            &mut dyn Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
        ),
    ) {
        for entry in &self.entries {
            let (start, count) = entry.headers;
            let mut headers = self.headers[start as usize..(start + count) as usize]
                .iter()
                .map(|h| (self.slice(h.key), h.value.map(|v| self.slice(v))));
            visit(
                entry.timestamp,
                entry.key.map(|k| self.slice(k)),
                self.slice(entry.value),
                &mut headers,
            );
        }
    }

    /// Header count over all records.
    pub(crate) fn header_count(&self) -> usize {
        self.headers.len()
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
}

impl PendingAck {
    /// Blocks until the durability is reached.
    pub fn wait(self) -> Result<BatchAck, Error> {
        self.link.recv(&self.receiver)
    }
    pub async fn wait_async(self) -> Result<BatchAck, Error> {
        self.link.recv_async(&self.receiver).await
    }
}

/// Sends records into the engine.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
    durability: Durability,
    round_robin: Arc<AtomicU32>,
}

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
        }
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
        let (partition, shard, request, receiver) = self.request(topic, vec![record])?;
        self.inner.send_blocking(shard, request)?;
        let _ = partition;
        let ack = self.inner.link(shard).recv(&receiver)?;
        Ok(Ack { partition: ack.partition, offset: ack.base_offset })
    }

    /// `send` for async code: waits without blocking the thread.
    pub async fn send_async(&self, topic: &str, record: ProducerRecord) -> Result<Ack, Error> {
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
        let pending = self.submit_batch(topic, records, Mode::Block)?;
        pending.into_iter().map(PendingAck::wait).collect()
    }

    /// `send_batch` for async code.
    pub async fn send_batch_async(
        &self,
        topic: &str,
        records: Vec<ProducerRecord>,
    ) -> Result<Vec<BatchAck>, Error> {
        let mut pending = Vec::new();
        for (shard, request, receiver) in self.split(topic, records)? {
            self.inner.send_async(shard, request).await?;
            pending.push(PendingAck { receiver, link: self.inner.link(shard).clone() });
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
        self.send_packed_nowait(topic, batch)?.into_iter().map(PendingAck::wait).collect()
    }

    /// `send_packed` for async code (the appliance's HTTP handlers): waits for room in the shards'
    /// request queues and for the acknowledgements without blocking the thread.
    pub async fn send_packed_async(
        &self,
        topic: &str,
        batch: ProducerBatch,
    ) -> Result<Vec<BatchAck>, Error> {
        let (meta, parts) = self.split_packed(topic, batch)?;
        let mut pending = Vec::with_capacity(parts.len());
        for (partition, part) in parts {
            let (shard, request, receiver) = self.append(&meta, partition, Payload::Batch(part));
            self.inner.send_async(shard, request).await?;
            pending.push(PendingAck { receiver, link: self.inner.link(shard).clone() });
        }
        let mut acks = Vec::with_capacity(pending.len());
        for p in pending {
            acks.push(p.wait_async().await?);
        }
        Ok(acks)
    }

    /// Queues a packed batch and returns pending acknowledgements; blocks only while a shard's
    /// request queue is full.
    pub fn send_packed_nowait(
        &self,
        topic: &str,
        batch: ProducerBatch,
    ) -> Result<Vec<PendingAck>, Error> {
        let (meta, parts) = self.split_packed(topic, batch)?;
        let mut pending = Vec::with_capacity(parts.len());
        for (partition, part) in parts {
            let (shard, request, receiver) = self.append(&meta, partition, Payload::Batch(part));
            self.inner.send_blocking(shard, request)?;
            pending.push(PendingAck { receiver, link: self.inner.link(shard).clone() });
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

    /// Queues a batch and returns at once with pending acknowledgements (one per partition);
    /// blocks only while a shard's request queue is full.
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
        let (_, shard, request, receiver) = self.request(topic, records)?;
        self.inner.try_send(shard, request)?;
        Ok(PendingAck { receiver, link: self.inner.link(shard).clone() })
    }

    fn submit_batch(
        &self,
        topic: &str,
        records: Vec<ProducerRecord>,
        mode: Mode,
    ) -> Result<Vec<PendingAck>, Error> {
        let mut pending = Vec::new();
        for (shard, request, receiver) in self.split(topic, records)? {
            match mode {
                Mode::Block => self.inner.send_blocking(shard, request)?,
                Mode::Try => self.inner.try_send(shard, request)?,
            }
            pending.push(PendingAck { receiver, link: self.inner.link(shard).clone() });
        }
        Ok(pending)
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
            topic: meta.name.clone(),
            partition,
            payload,
            durability: self.durability,
            reply,
        };
        (meta.shards[partition as usize], request, receiver)
    }
}
