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

use kappa_storage::Durability;

use crate::engine::{Inner, TopicMeta};
use crate::router::partition_for_key;
use crate::shard::{Request, Stage};
use crate::Error;

mod ack;
mod batch;

use ack::sent_now;
pub(crate) use ack::Payload;
pub use ack::{Ack, BatchAck, PendingAck, PendingAcks};
pub(crate) use batch::prefetch;
use batch::{pack, push_record};
pub use batch::{ProducerBatch, ProducerRecord, Stamped};

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

#[cfg(test)]
mod plan_tests;
