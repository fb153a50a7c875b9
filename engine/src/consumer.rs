//! A consumer on any thread: follows one partition from a seek point, receiving owned batches.
//!
//! The owning shard reads the log zero-copy and sends each batch as one `OwnedBatch` copy (one
//! copy per batch, not per record) through a bounded channel: a slow consumer makes its shard
//! stop reading for it, never buffer without bound. When the consumer has caught up, the shard's
//! reader sleeps on the log's readable event, so a new record reaches the consumer as soon as it
//! is written (woken, not polled on a timer).
//!
//! A waiting consumer is woken by a batch, or by its shard's end (`Link::recv`): a batch the
//! shard sent before it died is still delivered, then `ShardDied`. The loom model
//! `a_consumer_gets_what_its_shard_sent_before_dying` (`crate::loom_models`) runs `next_batch`
//! against a shard that sends and dies.

use std::sync::Arc;
use std::time::Duration;

use kappa_storage::OwnedBatch;

use crate::shard::link::Link;
use crate::shard::SubscriptionState;
use crate::Error;

pub struct Consumer {
    pub(crate) receiver: flume::Receiver<Result<OwnedBatch, Error>>,
    pub(crate) state: Arc<SubscriptionState>,
    /// The owning shard: a wait ends with `ShardDied` if it dies.
    pub(crate) link: Link,
}

impl Consumer {
    pub fn topic(&self) -> &str {
        &self.state.topic
    }
    pub fn partition(&self) -> u32 {
        self.state.partition
    }

    /// The offset of the next record this consumer will see.
    pub fn position(&self) -> u64 {
        self.state.position()
    }

    /// Records between this consumer's position and the end of the partition it last heard of.
    pub fn lag(&self) -> u64 {
        self.state.lag()
    }

    /// Blocks until the next batch arrives. `Err(ShutDown)` once the engine stopped,
    /// `Err(ShardDied)` if the partition's shard died.
    pub fn next_batch(&mut self) -> Result<OwnedBatch, Error> {
        let batch = self.link.recv(&self.receiver)?;
        self.advance(&batch);
        Ok(batch)
    }

    /// Like `next_batch`, but gives up after `timeout` with `Ok(None)`.
    pub fn next_batch_timeout(&mut self, timeout: Duration) -> Result<Option<OwnedBatch>, Error> {
        let batch = self.link.recv_timeout(&self.receiver, timeout)?;
        if let Some(batch) = &batch {
            self.advance(batch);
        }
        Ok(batch)
    }

    /// `next_batch` for async code.
    pub async fn next_batch_async(&mut self) -> Result<OwnedBatch, Error> {
        let batch = self.link.recv_async(&self.receiver).await?;
        self.advance(&batch);
        Ok(batch)
    }

    fn advance(&self, batch: &OwnedBatch) {
        self.state.advance(batch.next_offset());
    }
}
