//! What a send answers: `Ack` per record, `BatchAck` per partition, and the pending forms
//! (`PendingAck`, `PendingAcks`) a caller waits on, blocking or async. A wait ends with
//! `ShardDied` instead of hanging when the shard is gone (`Link`), and what the caller saw is the
//! latency the shard's live-latency controller holds to its budget.

use std::time::{Duration, Instant};

use super::ProducerBatch;
use super::ProducerRecord;
use crate::shard::link::Link;
use crate::Error;

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
    pub(super) receiver: flume::Receiver<Result<BatchAck, Error>>,
    /// The shard, so a wait ends (`ShardDied`) if it dies.
    pub(super) link: Link,
    /// When the send was asked for: the wait's latency goes to the shard's controller.
    pub(super) sent: Instant,
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
pub(super) fn sent_now() -> Instant {
    Instant::now()
}

/// A shard's answer to one `Stage` request: one `BatchAck` per partition part.
pub(super) type StageReply = flume::Receiver<Result<Vec<BatchAck>, Error>>;

/// Every record's acknowledgement of a `submit*` call, still on its way.
pub struct PendingAcks {
    /// One reply per shard request (with the link to that shard, so a dead shard answers
    /// `ShardDied` instead of leaving the wait hanging): one `BatchAck` per partition part.
    pub(super) replies: Vec<(Link, StageReply)>,
    /// Per record: its part (numbered across the replies, in order) and its rank among the
    /// batch's records for that part's partition.
    pub(super) records: Vec<(u32, u32)>,
    /// When the records were submitted, and the linger they were sent with: the wait's latency
    /// past the linger (the caller's choice) goes to each shard's controller (`shard::client`).
    pub(super) sent: Instant,
    pub(super) linger: Duration,
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
