//! Async twins of the blocking calls, usable from tokio or any other runtime.
//!
//! Two kinds. Calls that only talk to shards (offsets, metrics, consumers, view queries and
//! progress) send their request with `send_async` and await the reply channel: the caller's task
//! sleeps on the channel's waker, nothing blocks a runtime thread, and a dead shard ends the
//! wait (`Link::recv_async`). Calls that also write metadata files and fsync them (topic and view
//! administration) or sleep on a condvar (`ViewHandle::wait_for`) run the blocking call on a
//! short-lived helper thread and await its answer through a one-slot channel: admin calls are
//! rare, and a thread per call keeps the runtime's workers free without a pool to size. A panic
//! on the helper thread is resumed in the awaiting task, as the blocking call would have.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use kappa_storage::Seek;

use crate::consumer::Consumer;
use crate::metrics::{PartitionMetrics, ShardMetrics};
use crate::shard::{Request, SubscriptionState};
use crate::view::wait::Offsets;
use crate::view::{Query, Rebuild, Row, VersionProgress, ViewDef, ViewHandle};
use crate::{Engine, Error, TopicConfig};

/// Runs a blocking job on a helper thread; the returned future waits for it without blocking.
fn off_thread<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> impl Future<Output = Result<T, Error>> {
    let (sender, receiver) = flume::bounded(1);
    let spawned = std::thread::Builder::new().name("kappa-admin".into()).spawn(move || {
        let _ = sender.send(std::panic::catch_unwind(AssertUnwindSafe(job)));
    });
    async move {
        if let Err(source) = spawned {
            return Err(Error::Io {
                op: "spawn a helper thread",
                path: Default::default(),
                source,
            });
        }
        match receiver.recv_async().await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // The thread ended without an answer: only a panic does that, and it was sent.
            Err(_) => Err(Error::ShutDown),
        }
    }
}

impl Engine {
    /// `create_topic` for async code.
    pub async fn create_topic_async(&self, name: &str, config: TopicConfig) -> Result<(), Error> {
        let (engine, name) = (self.lend(), name.to_string());
        off_thread(move || engine.create_topic(&name, config)).await
    }

    /// `ensure_topic` for async code.
    pub async fn ensure_topic_async(&self, name: &str, config: TopicConfig) -> Result<u32, Error> {
        let (engine, name) = (self.lend(), name.to_string());
        off_thread(move || engine.ensure_topic(&name, config)).await
    }

    /// `delete_topic` for async code.
    pub async fn delete_topic_async(&self, name: &str) -> Result<(), Error> {
        let (engine, name) = (self.lend(), name.to_string());
        off_thread(move || engine.delete_topic(&name)).await
    }

    /// `add_partitions` for async code.
    pub async fn add_partitions_async(&self, name: &str, partitions: u32) -> Result<(), Error> {
        let (engine, name) = (self.lend(), name.to_string());
        off_thread(move || engine.add_partitions(&name, partitions)).await
    }

    /// `create_view` for async code.
    pub async fn create_view_async(&self, name: &str, def: ViewDef) -> Result<ViewHandle, Error> {
        let (engine, name) = (self.lend(), name.to_string());
        off_thread(move || engine.create_view(&name, def)).await
    }

    /// `rebuild_view` for async code.
    pub async fn rebuild_view_async(&self, name: &str, def: ViewDef) -> Result<Rebuild, Error> {
        let (engine, name) = (self.lend(), name.to_string());
        off_thread(move || engine.rebuild_view(&name, def)).await
    }

    /// `delete_view` for async code.
    pub async fn delete_view_async(&self, name: &str) -> Result<(), Error> {
        let (engine, name) = (self.lend(), name.to_string());
        off_thread(move || engine.delete_view(&name)).await
    }

    /// `drop_view_version` for async code.
    pub async fn drop_view_version_async(&self, name: &str, version: u32) -> Result<(), Error> {
        let (engine, name) = (self.lend(), name.to_string());
        off_thread(move || engine.drop_view_version(&name, version)).await
    }

    /// `serve_view_version` for async code.
    pub async fn serve_view_version_async(&self, name: &str, version: u32) -> Result<(), Error> {
        let (engine, name) = (self.lend(), name.to_string());
        off_thread(move || engine.serve_view_version(&name, version)).await
    }

    /// `partition_offsets` for async code.
    pub async fn partition_offsets_async(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<PartitionMetrics, Error> {
        let meta = self.check_partition(topic, partition)?;
        let shard = meta.shards[partition as usize];
        let topic = meta.name.clone();
        self.inner.call_async(shard, |reply| Request::Offsets { topic, partition, reply }).await
    }

    /// `topic_offsets` for async code: every partition's request is sent before any answer is
    /// awaited.
    pub async fn topic_offsets_async(&self, topic: &str) -> Result<Vec<PartitionMetrics>, Error> {
        let meta = self.inner.topic(topic)?;
        let mut waiting = Vec::with_capacity(meta.shards.len());
        for (partition, shard) in meta.shards.iter().enumerate() {
            let (reply, receiver) = flume::bounded(1);
            let request =
                Request::Offsets { topic: meta.name.clone(), partition: partition as u32, reply };
            self.inner.send_async(*shard, request).await?;
            waiting.push((*shard, receiver));
        }
        let mut offsets = Vec::with_capacity(waiting.len());
        for (shard, receiver) in waiting {
            offsets.push(self.inner.link(shard).recv_async(&receiver).await?);
        }
        Ok(offsets)
    }

    /// `metrics` for async code.
    pub async fn metrics_async(&self) -> Result<Vec<ShardMetrics>, Error> {
        let mut all = Vec::with_capacity(self.shard_count());
        for shard in 0..self.shard_count() {
            let mut m = self.inner.call_async(shard, |reply| Request::Metrics { reply }).await?;
            m.late_probes = self.inner.monitor.late_probes(shard);
            m.watchdog = self.inner.guard.metrics(m.shard);
            all.push(m);
        }
        Ok(all)
    }

    /// `consumer` for async code (then `Consumer::next_batch_async`).
    pub async fn consumer_async(
        &self,
        topic: &str,
        partition: u32,
        seek: Seek,
    ) -> Result<Consumer, Error> {
        let meta = self.check_partition(topic, partition)?;
        let shard = meta.shards[partition as usize];
        let (sink, receiver) = flume::bounded(self.inner.config.consumer_buffer_batches_max);
        let state = std::sync::Arc::new(SubscriptionState::new(meta.name.clone(), partition));
        let state_for_shard = state.clone();
        let topic = meta.name.clone();
        self.inner
            .call_async(shard, |reply| Request::Subscribe {
                topic,
                partition,
                seek,
                sink,
                state: state_for_shard,
                reply,
            })
            .await?;
        Ok(Consumer { receiver, state, link: self.inner.link(shard).clone() })
    }
}

impl ViewHandle {
    /// Asks every partition of `version` at once, then merges (the async `query`).
    async fn query_async(&self, version: u32, query: Query) -> Result<Vec<Row>, Error> {
        let v = self.version_def(version)?;
        if let Some(e) = v.failure_error() {
            return Err(e);
        }
        let topic = self.engine.topic(&v.def.topic)?;
        let mut waiting = Vec::with_capacity(v.partitions as usize);
        for partition in 0..v.partitions {
            let shard = topic.shards[partition as usize];
            let (reply, receiver) = flume::bounded(1);
            let request = Request::QueryView {
                view: self.name.clone(),
                version,
                partition,
                query: query.clone(),
                reply,
            };
            self.engine.send_async(shard, request).await?;
            waiting.push((shard, receiver));
        }
        let mut parts = Vec::with_capacity(waiting.len());
        for (shard, receiver) in waiting {
            parts.push(self.engine.link(shard).recv_async(&receiver).await?);
        }
        Ok(crate::view::merge_rows(&v.def.aggregate, v.def.window, parts))
    }

    /// `get` for async code.
    pub async fn get_async(&self, key: &[u8], window_start: i64) -> Result<Option<Row>, Error> {
        let version = self.version();
        let query = self.key_query(version, key, Query::Get { key: key.to_vec(), window_start })?;
        let rows = self.query_async(version, query).await?;
        Ok(rows.into_iter().find(|r| r.window_start == window_start))
    }

    /// `range` for async code.
    pub async fn range_async(&self, from: &[u8], to: &[u8]) -> Result<Vec<Row>, Error> {
        self.query_async(self.version(), Query::Range { from: from.to_vec(), to: to.to_vec() })
            .await
    }

    /// `windows` for async code.
    pub async fn windows_async(
        &self,
        key: &[u8],
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<Row>, Error> {
        let version = self.version();
        let narrow = Query::Windows { key: key.to_vec(), from_ms, to_ms };
        let query = self.key_query(version, key, narrow)?;
        let rows = self.query_async(version, query).await?;
        Ok(rows.into_iter().filter(|r| r.window_start < to_ms && r.window_end > from_ms).collect())
    }

    /// `rows` for async code.
    pub async fn rows_async(&self) -> Result<Vec<Row>, Error> {
        self.query_async(self.version(), Query::All).await
    }

    /// `progress_of` for async code.
    pub async fn progress_of_async(&self, version: u32) -> Result<VersionProgress, Error> {
        let v = self.version_def(version)?;
        let topic = self.engine.topic(&v.def.topic)?;
        let mut waiting = Vec::with_capacity(v.partitions as usize);
        for partition in 0..v.partitions {
            let shard = topic.shards[partition as usize];
            let (reply, receiver) = flume::bounded(1);
            let request = Request::ViewProgress {
                view: self.name.clone(),
                version,
                partition,
                digest: false,
                reply,
            };
            self.engine.send_async(shard, request).await?;
            waiting.push((shard, receiver));
        }
        let mut partitions = Vec::with_capacity(waiting.len());
        for (shard, receiver) in waiting {
            let (progress, _) = self.engine.link(shard).recv_async(&receiver).await?;
            partitions.push(progress);
        }
        Ok(VersionProgress {
            version,
            revision: v.def.revision.clone(),
            served: self.version() == version,
            partitions,
        })
    }

    /// `progress` for async code.
    pub async fn progress_async(&self) -> Result<VersionProgress, Error> {
        self.progress_of_async(self.version()).await
    }

    /// `log_end` for async code.
    pub async fn log_end_async(&self) -> Result<Offsets, Error> {
        let topic = self.engine.topic(self.topic())?;
        let mut offsets = Offsets::new();
        for partition in 0..topic.config.partitions {
            let shard = topic.shards[partition as usize];
            let name = topic.name.clone();
            let end = self
                .engine
                .call_async(shard, |reply| Request::Offsets { topic: name, partition, reply })
                .await?
                .end_offset;
            offsets = offsets.at(partition, end);
        }
        Ok(offsets)
    }

    /// `wait_for` for async code (the wait runs on a helper thread).
    pub async fn wait_for_async(
        &self,
        offsets: impl Into<Offsets>,
        timeout: std::time::Duration,
    ) -> Result<(), Error> {
        let (handle, offsets) = (self.clone(), offsets.into());
        off_thread(move || handle.wait_for(offsets, timeout)).await
    }
}

impl Rebuild {
    /// `wait_swapped` for async code (the wait runs on a helper thread).
    pub async fn wait_swapped_async(&self, timeout: std::time::Duration) -> Result<(), Error> {
        let rebuild = self.clone();
        off_thread(move || rebuild.wait_swapped(timeout)).await
    }
}
