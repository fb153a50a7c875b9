//! `Engine`: starts the shards, keeps the topic registry, and hands out producers and consumers.
//!
//! The handle is `Send + Sync + Clone`-able through `Arc`; its methods talk to shards through their
//! bounded request channels. The topic registry (`RwLock<BTreeMap>`) is read when a producer routes
//! a record: control-plane data read outside the shards, never touched on a shard's data path.

use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use glommio::{LocalExecutorBuilder, Placement};
use kappa_storage::{PartitionLog, Seek};

use crate::config::{EngineBuilder, EngineConfig, TopicConfig};
use crate::consumer::Consumer;
use crate::meta;
use crate::metrics::{PartitionMetrics, ShardMetrics};
use crate::producer::Producer;
use crate::router::{shard_for, ShardId};
use crate::shard::{self, Request, ShardJob, SubscriptionState};
use crate::view::{self, Rebuild, ViewDef, ViewHandle};
use crate::watchdog;
use crate::Error;

/// A topic as the engine knows it: its definition and which shard owns each partition.
#[derive(Debug)]
pub(crate) struct TopicMeta {
    pub(crate) name: Arc<str>,
    pub(crate) config: TopicConfig,
    pub(crate) shards: Vec<usize>,
}

pub(crate) struct Inner {
    pub(crate) config: Arc<EngineConfig>,
    views: RwLock<BTreeMap<String, Arc<view::Entry>>>,
    senders: Vec<flume::Sender<Request>>,
    topics: RwLock<BTreeMap<String, Arc<TopicMeta>>>,
    threads: Mutex<Vec<watchdog::ExecutorHandle<()>>>,
    shut_down: AtomicBool,
    monitor: Arc<crate::monitor::Monitor>,
    guard: watchdog::ShardGuard,
}

/// The embedded engine. Dropping it shuts it down cleanly (flush, sync, close).
pub struct Engine {
    inner: Arc<Inner>,
}

impl Inner {
    pub(crate) fn topic(&self, name: &str) -> Result<Arc<TopicMeta>, Error> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        let topics = self.topics.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        topics.get(name).cloned().ok_or_else(|| Error::UnknownTopic { topic: name.to_string() })
    }

    pub(crate) fn send_blocking(&self, shard: usize, request: Request) -> Result<(), Error> {
        self.senders[shard].send(request).map_err(|_| Error::ShutDown)
    }

    pub(crate) async fn send_async(&self, shard: usize, request: Request) -> Result<(), Error> {
        self.senders[shard].send_async(request).await.map_err(|_| Error::ShutDown)
    }

    pub(crate) fn try_send(&self, shard: usize, request: Request) -> Result<(), Error> {
        self.senders[shard].try_send(request).map_err(|e| match e {
            flume::TrySendError::Full(_) => Error::WouldBlock { shard: shard as u16 },
            flume::TrySendError::Disconnected(_) => Error::ShutDown,
        })
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Acquire)
    }

    /// Sends a request built around a reply channel and waits for the reply.
    pub(crate) fn call<T>(
        &self,
        shard: usize,
        make: impl FnOnce(shard::Reply<T>) -> Request,
    ) -> Result<T, Error> {
        let (reply, receiver) = flume::bounded(1);
        self.send_blocking(shard, make(reply))?;
        receiver.recv().map_err(|_| Error::ShutDown)?
    }
}

impl Engine {
    pub fn builder() -> EngineBuilder {
        EngineBuilder::new()
    }

    /// Starts one pinned executor per shard and reopens every topic in the data dir.
    pub fn start(config: EngineConfig) -> Result<Engine, Error> {
        config.validate()?;
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|e| Error::Io {
            op: "create data dir",
            path: data_dir.clone(),
            source: e,
        })?;
        // CPUs this process may run on (its affinity mask, not the machine's CPU count), unless the
        // configuration names them.
        let cpus: Vec<usize> = config.cpus.clone().unwrap_or_else(core_ids);
        let shard_count = config.shards.unwrap_or(cpus.len().max(1));
        if shard_count > usize::from(u16::MAX) {
            return Err(Error::Config {
                field: "shards",
                reason: format!("{shard_count} is too many"),
            });
        }
        if !cpus.is_empty() && shard_count > cpus.len() {
            tracing::warn!(
                shards = shard_count,
                cpus = cpus.len(),
                "more shards than CPUs: shards share cores"
            );
        }
        let config = Arc::new(config);
        let mut senders = Vec::with_capacity(shard_count);
        let mut threads = Vec::with_capacity(shard_count);
        let guard = watchdog::ShardGuard::start(shard_count, &config.watchdog, &data_dir)?;
        let channels: Vec<_> =
            (0..shard_count).map(|_| flume::bounded(config.request_queue_max)).collect();
        let peers: Vec<flume::WeakSender<Request>> =
            channels.iter().map(|(sender, _)| sender.downgrade()).collect();
        for (index, (sender, receiver)) in channels.into_iter().enumerate() {
            let peers = peers.clone();
            let placement = match cpus.get(index % cpus.len().max(1)) {
                Some(cpu) => Placement::Fixed(*cpu),
                None => Placement::Unbound,
            };
            let shard_config = config.clone();
            let id = ShardId(index as u16);
            let handle = watchdog::spawn_executor(
                format!("kappa-shard-{index}"),
                LocalExecutorBuilder::new(placement)
                    .preempt_timer(config.preempt_timer())
                    .io_memory(config.io_memory_bytes),
                guard.pulse(index),
                move || shard::run(id, shard_config, receiver, peers),
            )
            .map_err(|e| Error::Start { shard: index as u16, reason: e.to_string() })?;
            senders.push(sender);
            threads.push(handle);
        }
        let monitor = crate::monitor::Monitor::start(senders.clone());
        let engine = Engine {
            inner: Arc::new(Inner {
                config: config.clone(),
                views: RwLock::new(BTreeMap::new()),
                monitor,
                senders,
                topics: RwLock::new(BTreeMap::new()),
                threads: Mutex::new(threads),
                shut_down: AtomicBool::new(false),
                guard,
            }),
        };
        meta::finish_deletions(&data_dir)?;
        // Leftovers of view deletions a crash interrupted (see `delete_view`).
        let trash = data_dir.join(TRASH_DIR);
        if trash.exists() {
            std::fs::remove_dir_all(&trash).map_err(|e| Error::Io {
                op: "remove",
                path: trash.clone(),
                source: e,
            })?;
        }
        for (name, topic) in meta::read_topics(&data_dir)? {
            engine.open_topic(&name, topic)?;
        }
        Ok(engine)
    }

    pub fn shard_count(&self) -> usize {
        self.inner.senders.len()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The shard that owns a partition.
    pub fn shard_of(&self, topic: &str, partition: u32) -> ShardId {
        shard_for(topic, partition, self.shard_count())
    }

    /// Creates a topic with `config.partitions` partitions; its definition persists in the data dir.
    pub fn create_topic(&self, name: &str, config: TopicConfig) -> Result<(), Error> {
        meta::validate_topic_name(name)?;
        if config.partitions == 0 {
            return Err(Error::Config { field: "partitions", reason: "must be at least 1".into() });
        }
        if let Ok(existing) = self.inner.topic(name) {
            return Err(Error::TopicExists {
                topic: name.to_string(),
                partitions: existing.config.partitions,
            });
        }
        if meta::is_deleting(&self.inner.config.data_dir, name) {
            // A deletion of the same name failed half way: finish it before reusing the name.
            meta::finish_deletion(&self.inner.config.data_dir, name)?;
        }
        meta::write_topic(&self.inner.config.data_dir, name, &config)?;
        self.open_topic(name, config)
    }

    /// Deletes a topic: its partitions are closed on their shards, then its files and definition
    /// are removed. Refused while an open view reads it. A durable marker is written first, so a
    /// crash during the deletion finishes it at the next start; once this returns, the name may
    /// be used again. Producers and consumers of the topic get `UnknownTopic` (consumers following
    /// it see their stream end).
    pub fn delete_topic(&self, name: &str) -> Result<(), Error> {
        let topic = self.inner.topic(name)?;
        let readers: Vec<String> = self
            .inner
            .views
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, entry)| entry.topic == name)
            .map(|(view, _)| view.clone())
            .collect();
        if !readers.is_empty() {
            return Err(Error::TopicInUse { topic: name.to_string(), views: readers });
        }
        let data_dir = &self.inner.config.data_dir;
        meta::mark_deleting(data_dir, name)?;
        self.inner.topics.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
        let mut first_error = None;
        for (partition, shard) in topic.shards.iter().enumerate() {
            let result = self.inner.call(*shard, |reply| Request::Close {
                topic: topic.name.clone(),
                partition: partition as u32,
                reply,
            });
            if let Err(e) = result {
                // Closing failed (say, a failed disk): the files go anyway, the log is gone.
                tracing::warn!(topic = name, partition, error = %e, "closing a deleted partition failed");
                first_error.get_or_insert(e);
            }
        }
        meta::finish_deletion(data_dir, name)?;
        tracing::info!(topic = name, partitions = topic.config.partitions, "topic deleted");
        match first_error {
            Some(Error::ShutDown) => Err(Error::ShutDown),
            _ => Ok(()),
        }
    }

    /// Creates the topic unless it exists (with any partition count); returns its partition count.
    pub fn ensure_topic(&self, name: &str, config: TopicConfig) -> Result<u32, Error> {
        match self.inner.topic(name) {
            Ok(existing) => Ok(existing.config.partitions),
            Err(Error::UnknownTopic { .. }) => {
                let partitions = config.partitions;
                self.create_topic(name, config)?;
                Ok(partitions)
            }
            Err(e) => Err(e),
        }
    }

    fn open_topic(&self, name: &str, config: TopicConfig) -> Result<(), Error> {
        let shard_count = self.shard_count();
        let topic: Arc<str> = Arc::from(name);
        let shards: Vec<usize> = (0..config.partitions)
            .map(|p| usize::from(shard_for(name, p, shard_count).0))
            .collect();
        let log_config = config.log_config(&self.inner.config.log);
        let mut waiting = Vec::new();
        for (partition, shard) in shards.iter().enumerate() {
            let (reply, receiver) = flume::bounded(1);
            self.inner.send_blocking(
                *shard,
                Request::Open {
                    topic: topic.clone(),
                    partition: partition as u32,
                    config: log_config.clone(),
                    reply,
                },
            )?;
            waiting.push(receiver);
        }
        for receiver in waiting {
            receiver.recv().map_err(|_| Error::ShutDown)??;
        }
        let meta = Arc::new(TopicMeta { name: topic, config, shards });
        self.inner
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), meta);
        Ok(())
    }

    /// Every topic and its definition.
    pub fn topics(&self) -> BTreeMap<String, TopicConfig> {
        let topics = self.inner.topics.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        topics.iter().map(|(name, meta)| (name.clone(), meta.config.clone())).collect()
    }

    /// A producer acknowledging at `written` durability (see `Producer::with_durability`).
    pub fn producer(&self) -> Producer {
        Producer::new(self.inner.clone())
    }

    /// A consumer of one partition from `seek`, following the live tail.
    pub fn consumer(&self, topic: &str, partition: u32, seek: Seek) -> Result<Consumer, Error> {
        let meta = self.check_partition(topic, partition)?;
        let shard = meta.shards[partition as usize];
        let (sink, receiver) = flume::bounded(self.inner.config.consumer_buffer_batches_max);
        let state = Arc::new(SubscriptionState::new(meta.name.clone(), partition, 0));
        let state_for_shard = state.clone();
        self.inner.call(shard, |reply| Request::Subscribe {
            topic: meta.name.clone(),
            partition,
            seek,
            sink,
            state: state_for_shard,
            reply,
        })?;
        Ok(Consumer { receiver, state })
    }

    /// Start and end offsets and size of one partition.
    pub fn partition_offsets(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<PartitionMetrics, Error> {
        let meta = self.check_partition(topic, partition)?;
        let shard = meta.shards[partition as usize];
        self.inner.call(shard, |reply| Request::Offsets {
            topic: meta.name.clone(),
            partition,
            reply,
        })
    }

    /// A metrics snapshot of every shard.
    pub fn metrics(&self) -> Result<Vec<ShardMetrics>, Error> {
        (0..self.shard_count())
            .map(|shard| {
                let mut m = self.inner.call(shard, |reply| Request::Metrics { reply })?;
                m.late_probes = self.inner.monitor.late_probes(shard);
                m.watchdog = self.inner.guard.metrics(m.shard);
                Ok(m)
            })
            .collect()
    }

    /// Runs `job` on the shard that owns the partition, with its log (zero-copy reads there), and
    /// returns the result. The job's future runs in the shard's `live` queue.
    pub fn run_on_partition<F, Fut, T>(
        &self,
        topic: &str,
        partition: u32,
        job: F,
    ) -> Result<T, Error>
    where
        F: FnOnce(Rc<PartitionLog>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let meta = self.check_partition(topic, partition)?;
        let shard = meta.shards[partition as usize];
        let (reply, receiver) = flume::bounded(1);
        let name = meta.name.clone();
        let boxed: ShardJob = Box::new(move |shard: Rc<shard::Shard>| {
            Box::pin(async move {
                let result = match shard.log(&name, partition) {
                    Some(log) => Ok(job(log).await),
                    None => Err(Error::UnknownTopic { topic: name.to_string() }),
                };
                let _ = reply.send(result);
            })
        });
        self.inner.send_blocking(shard, Request::Run(boxed))?;
        receiver.recv().map_err(|_| Error::ShutDown)?
    }

    /// Registers a view and starts maintaining it. If a version built from the same `revision`
    /// exists in the data dir, it resumes from its checkpoints; otherwise a new version is built
    /// from `def.start` and served right away (its progress shows how far it got).
    pub fn create_view(&self, name: &str, def: ViewDef) -> Result<ViewHandle, Error> {
        meta::validate_topic_name(name)?;
        def.validate()?;
        let topic = self.inner.topic(&def.topic)?;
        if self
            .inner
            .views
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(name)
        {
            return Err(Error::Config {
                field: "view",
                reason: format!("view {name:?} is already open"),
            });
        }
        let dir = view::view_dir(&self.inner.config.data_dir, name);
        let stored = view::read_meta(&dir)?;
        if stored.is_none() && dir.exists() {
            // `meta.json` is written before any version starts, so a view dir without it is a
            // leftover (a checkpoint that landed after `delete_view`): never resume from it.
            std::fs::remove_dir_all(&dir).map_err(|e| Error::Io {
                op: "remove",
                path: dir.clone(),
                source: e,
            })?;
        }
        let history = match stored {
            Some((stored_topic, _served, history)) => {
                if stored_topic != def.topic {
                    return Err(Error::Config {
                        field: "view",
                        reason: format!(
                            "view {name:?} is defined over topic {stored_topic:?}, not {:?}",
                            def.topic
                        ),
                    });
                }
                history
            }
            None => BTreeMap::new(),
        };
        let resumed = history.iter().rev().find(|(_, r)| **r == def.revision).map(|(v, _)| *v);
        let number = resumed.unwrap_or_else(|| history.keys().next_back().map_or(1, |v| v + 1));
        let entry = Arc::new(view::Entry {
            topic: def.topic.clone(),
            // The version this call creates or resumes is the one served.
            served: std::sync::atomic::AtomicU32::new(number),
            swaps: std::sync::atomic::AtomicU64::new(0),
            versions: std::sync::Mutex::new(BTreeMap::new()),
            history: std::sync::Mutex::new(history),
            dir,
            notifier: view::wait::Notifier::default(),
        });
        entry
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(number, def.revision.clone());
        view::write_meta(&entry)?;
        self.inner
            .views
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), entry.clone());
        self.start_version(name, &entry, number, def, topic.config.partitions)?;
        Ok(ViewHandle::new(self.inner.clone(), name.into(), entry))
    }

    /// Builds version N+1 of a view from `def` (from `def.start`) in the shards' replay queues while
    /// the served version keeps answering queries; when every partition has caught up with the
    /// live tail, queries switch to it atomically. Returns a handle on the new version: its
    /// number (`Rebuild::version`) and `Rebuild::wait_swapped` to sleep until the swap.
    pub fn rebuild_view(&self, name: &str, def: ViewDef) -> Result<Rebuild, Error> {
        def.validate()?;
        let entry = self.view_entry(name)?;
        if def.topic != entry.topic {
            return Err(Error::Config {
                field: "view",
                reason: format!("a rebuild must read topic {:?}", entry.topic),
            });
        }
        let topic = self.inner.topic(&def.topic)?;
        let number = {
            let mut history =
                entry.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let number = history.keys().next_back().map_or(1, |v| v + 1);
            history.insert(number, def.revision.clone());
            number
        };
        view::write_meta(&entry)?;
        let version = self.start_version(name, &entry, number, def, topic.config.partitions)?;
        Ok(Rebuild::new(self.inner.clone(), name.into(), entry, version))
    }

    fn start_version(
        &self,
        name: &str,
        entry: &Arc<view::Entry>,
        number: u32,
        def: ViewDef,
        partitions: u32,
    ) -> Result<Arc<view::Version>, Error> {
        // The version this call starts is served from the start when nothing else is (a new
        // view, or one resumed from disk).
        let outcome = if entry.served.load(Ordering::Acquire) == number {
            view::SERVED
        } else {
            view::BUILDING
        };
        let version = Arc::new(view::Version {
            view: Arc::from(name),
            number,
            def: Arc::new(def),
            partitions,
            caught_up: std::sync::atomic::AtomicU32::new(0),
            entry: entry.clone(),
            dir: entry.dir.join(number.to_string()),
            folded: (0..partitions).map(|_| std::sync::atomic::AtomicU64::new(0)).collect(),
            failure: Mutex::new(None),
            outcome: std::sync::atomic::AtomicU8::new(outcome),
            dropped: AtomicBool::new(false),
        });
        entry
            .versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(number, version.clone());
        let topic = self.inner.topic(&version.def.topic)?;
        for partition in 0..partitions {
            let shard = topic.shards[partition as usize];
            let version = version.clone();
            self.inner.call(shard, |reply| Request::StartView { version, partition, reply })?;
        }
        Ok(version)
    }

    /// A handle for queries on a view opened with `create_view`.
    pub fn view(&self, name: &str) -> Result<ViewHandle, Error> {
        let entry = self.view_entry(name)?;
        Ok(ViewHandle::new(self.inner.clone(), name.into(), entry))
    }

    /// Serves another running version of a view again (a rollback after a rebuild, or a roll
    /// forward): the switch is one atomic store, like a swap. The version must still be running,
    /// that is, not dropped.
    pub fn serve_view_version(&self, name: &str, version: u32) -> Result<(), Error> {
        let entry = self.view_entry(name)?;
        if !entry
            .versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&version)
        {
            return Err(Error::UnknownView { view: name.to_string(), version });
        }
        let previous = entry.served.swap(version, Ordering::AcqRel);
        if previous != version {
            entry.swaps.fetch_add(1, Ordering::AcqRel);
            tracing::info!(
                view = name,
                from = previous,
                to = version,
                "view version served by request"
            );
        }
        view::write_meta(&entry)
    }

    /// Stops a version that is not served and deletes its checkpoints.
    pub fn drop_view_version(&self, name: &str, version: u32) -> Result<(), Error> {
        let entry = self.view_entry(name)?;
        if entry.served.load(Ordering::Acquire) == version {
            return Err(Error::Config {
                field: "version",
                reason: format!("version {version} is served; it cannot be dropped"),
            });
        }
        let removed = entry
            .versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&version);
        let Some(removed) = removed else {
            return Err(Error::UnknownView { view: name.to_string(), version });
        };
        removed.dropped.store(true, Ordering::SeqCst);
        entry.notifier.notify();
        let view_name: Arc<str> = Arc::from(name);
        for shard in 0..self.shard_count() {
            self.inner.call(shard, |reply| Request::DropView {
                view: view_name.clone(),
                version,
                reply,
            })?;
        }
        entry.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&version);
        view::write_meta(&entry)?;
        let _ = std::fs::remove_dir_all(&removed.dir);
        Ok(())
    }

    /// Stops every version of a view and deletes its checkpoints and metadata. The view's
    /// directory is first moved to `DIR/trash` (one rename, so a crash never leaves half a view
    /// that a later view of the same name would resume from), then removed.
    pub fn delete_view(&self, name: &str) -> Result<(), Error> {
        let entry = self
            .inner
            .views
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name)
            .ok_or(Error::UnknownView { view: name.to_string(), version: 0 })?;
        let versions: Vec<u32> = std::mem::take(
            &mut *entry.versions.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_keys()
        .collect();
        let view_name: Arc<str> = Arc::from(name);
        for version in versions {
            for shard in 0..self.shard_count() {
                self.inner.call(shard, |reply| Request::DropView {
                    view: view_name.clone(),
                    version,
                    reply,
                })?;
            }
        }
        let trash = self.inner.config.data_dir.join(TRASH_DIR);
        std::fs::create_dir_all(&trash).map_err(|e| Error::Io {
            op: "create dir",
            path: trash.clone(),
            source: e,
        })?;
        let doomed = trash.join(format!("view-{name}-{}", std::process::id()));
        match std::fs::rename(&entry.dir, &doomed) {
            Ok(()) => {
                if let Some(parent) = entry.dir.parent() {
                    kappa_storage::io::Disk::Dma.sync_dir_blocking(parent)?;
                }
                let _ = std::fs::remove_dir_all(&doomed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Io { op: "rename", path: entry.dir.clone(), source: e }),
        }
        tracing::info!(view = name, "view deleted");
        Ok(())
    }

    /// The open views and the topic each reads.
    pub fn views(&self) -> BTreeMap<String, String> {
        let views = self.inner.views.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        views.iter().map(|(name, entry)| (name.clone(), entry.topic.clone())).collect()
    }

    fn view_entry(&self, name: &str) -> Result<Arc<view::Entry>, Error> {
        let views = self.inner.views.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let served = views.get(name).map(|e| e.served.load(Ordering::Acquire)).unwrap_or(0);
        views
            .get(name)
            .cloned()
            .ok_or(Error::UnknownView { view: name.to_string(), version: served })
    }

    fn check_partition(&self, topic: &str, partition: u32) -> Result<Arc<TopicMeta>, Error> {
        let meta = self.inner.topic(topic)?;
        if partition >= meta.config.partitions {
            return Err(Error::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions: meta.config.partitions,
            });
        }
        Ok(meta)
    }

    /// Flushes, syncs and closes every partition, and stops the shards. Idempotent.
    pub fn shutdown(&self) -> Result<(), Error> {
        if self.inner.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.monitor.stop();
        // Threads waiting on a view wake up and see the engine is gone.
        for entry in
            self.inner.views.read().unwrap_or_else(std::sync::PoisonError::into_inner).values()
        {
            entry.notifier.notify();
        }
        let mut first_error = None;
        let mut waiting = Vec::new();
        for sender in &self.inner.senders {
            let (reply, receiver) = flume::bounded(1);
            if sender.send(Request::Shutdown { reply }).is_ok() {
                waiting.push(receiver);
            }
        }
        for receiver in waiting {
            if let Ok(Err(e)) = receiver.recv() {
                first_error.get_or_insert(e);
            }
        }
        let threads = std::mem::take(
            &mut *self.inner.threads.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (index, handle) in threads.into_iter().enumerate() {
            if let Err(e) = handle.join() {
                first_error.get_or_insert(Error::Start {
                    shard: index as u16,
                    reason: format!("shard thread failed: {e}"),
                });
            }
        }
        self.inner.guard.stop();
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "engine shutdown failed");
        }
    }
}

/// `DIR/trash`: directories moved aside to be removed (emptied at start).
const TRASH_DIR: &str = "trash";

/// The CPUs this process may run on, from its affinity mask.
fn core_ids() -> Vec<usize> {
    let mut ids: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids
}
