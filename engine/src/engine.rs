//! `Engine`: starts the shards, keeps the topic registry, and hands out producers and consumers.
//!
//! The handle is `Send + Sync + Clone`-able through `Arc`; its methods talk to shards through their
//! bounded request channels. The topic registry (`RwLock<BTreeMap>`) is read when a producer routes
//! a record: control-plane data read outside the shards, never touched on a shard's data path.
//!
//! Metadata changes (topics and views: create, delete, rebuild, serve, drop) are serialized by one
//! lock (`Inner::meta_lock`), held from the check that a name is free to the registry insert, so
//! concurrent creators of one topic see exactly one winner, and memory and disk agree. A topic
//! enters the registry only after all its partitions are open and its definition is durable; a
//! create that fails part way removes what it made (`meta`'s marker finishes it after a crash).
//! Every file operation goes through the configured `Disk` (`EngineConfig::log.disk`).

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use glommio::{LocalExecutorBuilder, Placement};
use kappa_storage::{PartitionLog, Seek};

use crate::config::{EngineBuilder, EngineConfig, TopicConfig};
use crate::consumer::Consumer;
use crate::lock::DirLock;
use crate::meta;
use crate::metrics::{PartitionMetrics, ShardMetrics};
use crate::producer::Producer;
use crate::router::{shard_for, ShardId};
use crate::shard::link::{self, Link};
use crate::shard::{self, Request, ShardJob, SubscriptionState};
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::view::{self, Rebuild, ViewDef, ViewHandle};
use crate::watchdog;
use crate::Error;

/// A topic as the engine knows it: its definition and which shard owns each partition.
#[derive(Debug)]
pub(crate) struct TopicMeta {
    pub(crate) name: Arc<str>,
    pub(crate) config: TopicConfig,
    pub(crate) shards: Vec<usize>,
    /// Which creation of the name this is (`meta::new_incarnation`; 0 for topics created before
    /// incarnations existed).
    pub(crate) incarnation: u64,
}

pub(crate) struct Inner {
    pub(crate) config: Arc<EngineConfig>,
    views: crate::sync::RwLock<BTreeMap<String, Arc<view::Entry>>>,
    links: Vec<Link>,
    topics: RwLock<BTreeMap<String, Arc<TopicMeta>>>,
    /// Bumped after every change of `topics`, so per-shard caches (the Kafka front end's) know
    /// when to drop their copies without reading the lock on every request.
    topics_generation: AtomicU64,
    threads: Mutex<Vec<watchdog::ExecutorHandle<()>>>,
    shut_down: AtomicBool,
    /// Serializes topic and view metadata changes (see the module doc).
    meta_lock: crate::sync::Mutex<()>,
    pub(crate) monitor: Arc<crate::monitor::Monitor>,
    pub(crate) guard: watchdog::ShardGuard,
    /// `DIR/.lock`, released at the end of `shutdown`.
    lock: Mutex<Option<DirLock>>,
    /// What opening the data dir found and repaired.
    open_report: Mutex<OpenReport>,
}

/// The embedded engine. Dropping it shuts it down cleanly (flush, sync, close).
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
    /// The engine `start` returned (dropping it shuts down), or a handle an async twin lent to
    /// a helper thread (dropping it does nothing).
    owner: bool,
}

impl Inner {
    /// The storage seam every engine file operation goes through.
    pub(crate) fn disk(&self) -> &kappa_storage::io::Disk {
        &self.config.log.disk
    }

    fn lock_meta(&self) -> crate::sync::MutexGuard<'_, ()> {
        self.meta_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn topic(&self, name: &str) -> Result<Arc<TopicMeta>, Error> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        let topics = self.topics.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        topics.get(name).cloned().ok_or_else(|| Error::UnknownTopic { topic: name.to_string() })
    }

    /// Changes whenever a topic is created or deleted.
    pub(crate) fn topics_generation(&self) -> u64 {
        self.topics_generation.load(Ordering::Acquire)
    }

    /// Every topic (the Kafka front end's Metadata for all topics).
    pub(crate) fn topic_list(&self) -> Vec<Arc<TopicMeta>> {
        let topics = self.topics.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        topics.values().cloned().collect()
    }

    pub(crate) fn send_blocking(&self, shard: usize, request: Request) -> Result<(), Error> {
        self.links[shard].send(request)
    }

    pub(crate) async fn send_async(&self, shard: usize, request: Request) -> Result<(), Error> {
        self.links[shard].send_async(request).await
    }

    pub(crate) fn try_send(&self, shard: usize, request: Request) -> Result<(), Error> {
        self.links[shard].try_send(request)
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.links.len()
    }

    /// The way to a shard: its queue, and the waits that end when it dies.
    pub(crate) fn link(&self, shard: usize) -> &Link {
        &self.links[shard]
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Acquire)
    }

    /// `Error::ShardDied` for the first shard whose thread died, if one did.
    pub(crate) fn dead_shard(&self) -> Option<Error> {
        self.links.iter().find_map(|link| link.life.died())
    }

    /// Wakes every thread waiting on a view (a shard died: their waits must end).
    pub(crate) fn wake_view_waiters(&self) {
        for entry in self.views.read().unwrap_or_else(std::sync::PoisonError::into_inner).values() {
            entry.notifier.notify();
        }
    }

    /// Sends a request built around a reply channel and waits for the reply.
    pub(crate) fn call<T>(
        &self,
        shard: usize,
        make: impl FnOnce(shard::Reply<T>) -> Request,
    ) -> Result<T, Error> {
        let (reply, receiver) = flume::bounded(1);
        self.send_blocking(shard, make(reply))?;
        self.links[shard].recv(&receiver)
    }

    /// `call` for async code: waits for room and for the reply without blocking the thread.
    pub(crate) async fn call_async<T>(
        &self,
        shard: usize,
        make: impl FnOnce(shard::Reply<T>) -> Request,
    ) -> Result<T, Error> {
        let (reply, receiver) = flume::bounded(1);
        self.send_async(shard, make(reply)).await?;
        self.links[shard].recv_async(&receiver).await
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
        let disk = config.log.disk.clone();
        disk.create_dir_all_blocking(&data_dir)?;
        // One owner per data dir, before anything in it is read or written. A simulated disk
        // lives in one process's memory: nothing else can open it, so there is nothing to lock.
        let lock = match &disk {
            kappa_storage::io::Disk::Dma => Some(DirLock::acquire(&data_dir)?),
            kappa_storage::io::Disk::Sim(_) => None,
        };
        raise_open_files_limit();
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
        let mut links = Vec::with_capacity(shard_count);
        let mut threads = Vec::with_capacity(shard_count);
        let guard = watchdog::ShardGuard::start(shard_count, &config.watchdog, &data_dir)?;
        let channels: Vec<_> =
            (0..shard_count).map(|_| flume::bounded(config.request_queue_max)).collect();
        let mut lives: Vec<_> =
            (0..shard_count).map(|index| Some(link::new_life(index as u16))).collect();
        let peers: Vec<shard::Peer> = channels
            .iter()
            .zip(&lives)
            .map(|((sender, _), life)| shard::Peer {
                sender: sender.downgrade(),
                life: life.as_ref().expect("made above").0.clone(),
            })
            .collect();
        for (index, (sender, receiver)) in channels.into_iter().enumerate() {
            let peers = peers.clone();
            let shard_cpu = cpus.get(index % cpus.len().max(1)).copied();
            let placement = match shard_cpu {
                Some(cpu) => Placement::Fixed(cpu),
                None => Placement::Unbound,
            };
            let pool = blocking_pool_placement(
                config.blocking_pool,
                config.blocking_threads,
                shard_cpu,
                &cpus[..shard_count.min(cpus.len())],
            );
            let shard_config = config.clone();
            let id = ShardId(index as u16);
            let (life, alive) = lives[index].take().expect("each shard takes its own");
            let handle = watchdog::spawn_executor_reporting(
                format!("kappa-shard-{index}"),
                LocalExecutorBuilder::new(placement)
                    .blocking_thread_pool_placement(pool)
                    .preempt_timer(config.preempt_timer())
                    .io_memory(config.io_memory_bytes),
                guard.pulse(index),
                move || shard::run(id, shard_config, receiver, peers),
                move |panic| alive.exit(panic),
            )
            .map_err(|e| Error::Start { shard: index as u16, reason: e.to_string() })?;
            links.push(Link { sender, life });
            threads.push(handle);
        }
        let monitor =
            crate::monitor::Monitor::start(links.iter().map(|l| l.sender.clone()).collect());
        let engine = Engine {
            owner: true,
            inner: Arc::new(Inner {
                config: config.clone(),
                views: crate::sync::RwLock::new(BTreeMap::new()),
                monitor,
                links,
                topics: RwLock::new(BTreeMap::new()),
                topics_generation: AtomicU64::new(0),
                threads: Mutex::new(threads),
                shut_down: AtomicBool::new(false),
                meta_lock: crate::sync::Mutex::new(()),
                guard,
                lock: Mutex::new(lock),
                open_report: Mutex::new(OpenReport::default()),
            }),
        };
        for link in &engine.inner.links {
            link.life.set_engine(Arc::downgrade(&engine.inner));
        }
        let finished = meta::finish_deletions(&disk, &data_dir)?;
        engine.inner.report().deletions_finished = finished;
        // Leftovers of view deletions a crash interrupted (see `delete_view`).
        disk.remove_dir_all_blocking(&data_dir.join(TRASH_DIR))?;
        for (name, (topic, incarnation)) in meta::read_topics(&disk, &data_dir)? {
            engine.open_topic(&name, topic, incarnation)?;
        }
        Ok(engine)
    }

    /// The shared state behind this handle (crate front ends such as `kafka` hold it).
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    pub fn shard_count(&self) -> usize {
        self.inner.links.len()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The shard that owns a partition.
    pub fn shard_of(&self, topic: &str, partition: u32) -> ShardId {
        shard_for(topic, partition, self.shard_count())
    }

    /// Creates a topic with `config.partitions` partitions; its definition persists in the data dir.
    ///
    /// Atomic: concurrent creators of one name see exactly one winner (the others get
    /// `TopicExists` with the winner's partition count); the topic becomes visible only once every
    /// partition is open and its definition is durable; a create that fails part way leaves
    /// nothing behind (and a crash part way is undone at the next start).
    pub fn create_topic(&self, name: &str, config: TopicConfig) -> Result<(), Error> {
        meta::validate_topic_name(name)?;
        if config.partitions == 0 {
            return Err(Error::Config { field: "partitions", reason: "must be at least 1".into() });
        }
        if let Some(keyed) = config.key_partitions.filter(|k| *k == 0 || *k > config.partitions) {
            return Err(Error::Config {
                field: "key_partitions",
                reason: format!(
                    "{keyed} is not between 1 and the {} partitions",
                    config.partitions
                ),
            });
        }
        let _meta = self.inner.lock_meta();
        if let Ok(existing) = self.inner.topic(name) {
            return Err(Error::TopicExists {
                topic: name.to_string(),
                partitions: existing.config.partitions,
            });
        }
        let (disk, data_dir) = (self.inner.disk(), &self.inner.config.data_dir);
        if meta::is_deleting(disk, data_dir, name)? {
            // A deletion of the same name failed half way: finish it before reusing the name.
            meta::finish_deletion(disk, data_dir, name)?;
        }
        // The marker first: until it goes, a crash undoes this create at the next start.
        let incarnation = meta::new_incarnation();
        let created = meta::mark_deleting(disk, data_dir, name).and_then(|()| {
            let shards = self.open_partitions(&Arc::from(name), &config, 0)?;
            meta::write_topic(disk, data_dir, name, &config, incarnation)?;
            meta::clear_marker(disk, data_dir, name)?;
            Ok(shards)
        });
        match created {
            Ok(shards) => {
                self.register_topic(name, config, shards, incarnation);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(topic = name, error = %e, "creating a topic failed; removing what it made");
                self.close_partitions(name, 0..config.partitions);
                if let Err(cleanup) = meta::finish_deletion(disk, data_dir, name) {
                    // The marker stays: the next start finishes the removal.
                    tracing::error!(topic = name, error = %cleanup,
                        "removing a failed topic create failed; the next start finishes it");
                }
                Err(e)
            }
        }
    }

    /// Closes (and forgets) partitions of a topic that is not in the registry: the cleanup of a
    /// failed create. Partitions that never opened are skipped by their shards.
    fn close_partitions(&self, name: &str, partitions: std::ops::Range<u32>) {
        let topic: Arc<str> = Arc::from(name);
        for partition in partitions {
            let shard = usize::from(shard_for(name, partition, self.shard_count()).0);
            let result = self.inner.call(shard, |reply| Request::Close {
                topic: topic.clone(),
                partition,
                reply,
            });
            if let Err(e) = result {
                tracing::warn!(topic = name, partition, error = %e, "closing a partition of a failed create failed");
            }
        }
    }

    /// Deletes a topic: its partitions are closed on their shards, then its files and definition
    /// are removed. Refused while an open view reads it. A durable marker is written first, so a
    /// crash during the deletion finishes it at the next start; once this returns, the name may
    /// be used again, and the deletion is durable: a power cut brings back neither the topic nor
    /// any of its files, and leaves nothing to finish (each removal is followed by an fsync of
    /// its directory, the definition's before the marker's). Producers and consumers of the topic get `UnknownTopic` (consumers following
    /// it see their stream end).
    pub fn delete_topic(&self, name: &str) -> Result<(), Error> {
        let _meta = self.inner.lock_meta();
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
        let (disk, data_dir) = (self.inner.disk(), &self.inner.config.data_dir);
        meta::mark_deleting(disk, data_dir, name)?;
        self.inner.topics.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
        self.inner.topics_generation.fetch_add(1, Ordering::AcqRel);
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
        meta::finish_deletion(disk, data_dir, name)?;
        tracing::info!(topic = name, partitions = topic.config.partitions, "topic deleted");
        match first_error {
            Some(Error::ShutDown) => Err(Error::ShutDown),
            _ => Ok(()),
        }
    }

    /// Grows a topic to `partitions` partitions. Keys do not move: keyed records keep routing
    /// over the partitions the topic had before it first grew (`TopicConfig::key_partitions`),
    /// so each key's records stay in one partition, in order, before and after. The new
    /// partitions take unkeyed records (round robin over all partitions) and records sent to a
    /// chosen partition. (Kafka instead rehashes keys over the new count, so a key's new records
    /// land in another partition than its old ones; to spread keys over more partitions here,
    /// re-key the topic into a new one by replay.) Refused while a view reads the topic: a view
    /// version covers the partitions it started with. The new partitions exist on their shards
    /// before the definition that names them is written and before producers can see them.
    pub fn add_partitions(&self, name: &str, partitions: u32) -> Result<(), Error> {
        let _meta = self.inner.lock_meta();
        let meta = self.inner.topic(name)?;
        let current = meta.config.partitions;
        if partitions <= current {
            return Err(Error::Config {
                field: "partitions",
                reason: format!(
                    "topic {name:?} has {current} partitions; a topic only grows (asked for {partitions})"
                ),
            });
        }
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
        let mut config = meta.config.clone();
        config.key_partitions = Some(meta.config.key_partition_count());
        config.partitions = partitions;
        let (disk, data_dir) = (self.inner.disk(), &self.inner.config.data_dir);
        let opened = self.open_partitions(&meta.name, &config, current).and_then(|shards| {
            meta::write_topic(disk, data_dir, name, &config, meta.incarnation).map(|()| shards)
        });
        let shards = match opened {
            Ok(shards) => shards,
            Err(e) => {
                // The definition still names `current` partitions: close the new ones so a later
                // attempt opens them afresh (their directories hold no record).
                self.close_partitions(name, current..partitions);
                return Err(e);
            }
        };
        let grown = Arc::new(TopicMeta {
            name: meta.name.clone(),
            config,
            shards,
            incarnation: meta.incarnation,
        });
        self.inner
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), grown);
        self.inner.topics_generation.fetch_add(1, Ordering::AcqRel);
        tracing::info!(topic = name, from = current, to = partitions, "topic grown");
        Ok(())
    }

    /// Start and end offsets and size of every partition of a topic, in partition order (the
    /// requests go to every shard at once).
    pub fn topic_offsets(&self, topic: &str) -> Result<Vec<PartitionMetrics>, Error> {
        let meta = self.inner.topic(topic)?;
        let mut waiting = Vec::with_capacity(meta.shards.len());
        for (partition, shard) in meta.shards.iter().enumerate() {
            let (reply, receiver) = flume::bounded(1);
            self.inner.send_blocking(
                *shard,
                Request::Offsets { topic: meta.name.clone(), partition: partition as u32, reply },
            )?;
            waiting.push((*shard, receiver));
        }
        waiting
            .into_iter()
            .map(|(shard, receiver)| self.inner.link(shard).recv(&receiver))
            .collect()
    }

    /// Creates the topic unless it exists (with any partition count); returns its partition count.
    pub fn ensure_topic(&self, name: &str, config: TopicConfig) -> Result<u32, Error> {
        match self.inner.topic(name) {
            Ok(existing) => Ok(existing.config.partitions),
            Err(Error::UnknownTopic { .. }) => {
                let partitions = config.partitions;
                match self.create_topic(name, config) {
                    Ok(()) => Ok(partitions),
                    // Another thread created it first: its count is the topic's.
                    Err(Error::TopicExists { partitions, .. }) => Ok(partitions),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Reopens a topic found in the data dir at start.
    fn open_topic(&self, name: &str, config: TopicConfig, incarnation: u64) -> Result<(), Error> {
        let shards = self.open_partitions(&Arc::from(name), &config, 0)?;
        self.register_topic(name, config, shards, incarnation);
        Ok(())
    }

    fn register_topic(
        &self,
        name: &str,
        config: TopicConfig,
        shards: Vec<usize>,
        incarnation: u64,
    ) {
        let meta = Arc::new(TopicMeta { name: Arc::from(name), config, shards, incarnation });
        self.inner
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), meta);
        self.inner.topics_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Opens partitions `from..config.partitions` of a topic on their shards (in parallel across
    /// shards), records what their recovery cut in the open report, and returns the shard of
    /// every partition of the topic.
    fn open_partitions(
        &self,
        topic: &Arc<str>,
        config: &TopicConfig,
        from: u32,
    ) -> Result<Vec<usize>, Error> {
        let shard_count = self.shard_count();
        let shards: Vec<usize> = (0..config.partitions)
            .map(|p| usize::from(shard_for(topic, p, shard_count).0))
            .collect();
        let log_config = config.log_config(&self.inner.config.log);
        let mut waiting = Vec::new();
        let mut first_error = None;
        for partition in from..config.partitions {
            let shard = shards[partition as usize];
            let (reply, receiver) = flume::bounded(1);
            let sent = self.inner.send_blocking(
                shard,
                Request::Open {
                    topic: topic.clone(),
                    partition,
                    config: log_config.clone(),
                    reply,
                },
            );
            if let Err(e) = sent {
                // Say, a dead shard. The opens already sent still run on their shards: the
                // caller's cleanup must not remove the topic's files under them (an open that
                // finished after it recreated the partition's directory, and left a log open
                // on the shard for the next topic of that name to take over).
                first_error = Some(e);
                break;
            }
            waiting.push((partition, shard, receiver));
        }
        // Every open sent is answered (done, failed, or its shard died) before this returns.
        for (partition, shard, receiver) in waiting {
            match self.inner.link(shard).recv(&receiver) {
                Ok(recovery) => self.inner.report().record(topic, partition, recovery),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(shards), Err)
    }

    /// What opening the data dir found and repaired: torn tails cut from partitions (file,
    /// position, bytes and offsets dropped), sealed indexes rebuilt, topic deletions a crash
    /// interrupted and this start finished. Recovery never cuts silently: this is the API side
    /// of the warnings it logs.
    pub fn open_report(&self) -> OpenReport {
        self.inner.report().clone()
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
        let state = Arc::new(SubscriptionState::new(meta.name.clone(), partition));
        let state_for_shard = state.clone();
        self.inner.call(shard, |reply| Request::Subscribe {
            topic: meta.name.clone(),
            partition,
            seek,
            sink,
            state: state_for_shard,
            reply,
        })?;
        Ok(Consumer { receiver, state, link: self.inner.link(shard).clone() })
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

    /// Applies retention on every shard now (it also runs every
    /// `EngineConfig::retention_interval`); returns the segments deleted. Never deletes records a
    /// running view version has not folded yet.
    pub fn apply_retention(&self) -> Result<u64, Error> {
        let mut deleted = 0;
        for shard in 0..self.shard_count() {
            deleted += self.inner.call(shard, |reply| Request::Retention { reply })?;
        }
        Ok(deleted)
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
                    // The job is user code: a panic in it fails this call, not the shard.
                    Some(log) => {
                        match futures_lite::FutureExt::catch_unwind(AssertUnwindSafe(job(log)))
                            .await
                        {
                            Ok(value) => Ok(value),
                            Err(panic) => Err(Error::JobPanicked {
                                topic: name.to_string(),
                                partition,
                                message: crate::view::state::panic_message(&*panic),
                            }),
                        }
                    }
                    None => Err(Error::UnknownTopic { topic: name.to_string() }),
                };
                let _ = reply.send(result);
            })
        });
        self.inner.send_blocking(shard, Request::Run(boxed))?;
        self.inner.link(shard).recv(&receiver)
    }

    /// Registers a view and starts maintaining it. If a version built from the same `revision`
    /// exists in the data dir, it resumes from its checkpoints; otherwise a new version is built
    /// from `def.start` and served right away (its progress shows how far it got).
    pub fn create_view(&self, name: &str, def: ViewDef) -> Result<ViewHandle, Error> {
        meta::validate_topic_name(name)?;
        def.validate()?;
        let _meta = self.inner.lock_meta();
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
        let disk = self.inner.disk().clone();
        let dir = view::view_dir(&self.inner.config.data_dir, name);
        let stored = view::read_meta(&disk, &dir)?;
        if stored.is_none() && disk.metadata_blocking(&dir)?.is_some() {
            // `meta.json` is written before any version starts, so a view dir without it is a
            // leftover (a checkpoint that landed after `delete_view`): never resume from it.
            disk.remove_dir_all_blocking(&dir)?;
        }
        let (history, failed, stored_served) = match stored {
            Some(view::Meta { topic: stored_topic, served, revisions: history, failed }) => {
                if stored_topic != def.topic {
                    return Err(Error::Config {
                        field: "view",
                        reason: format!(
                            "view {name:?} is defined over topic {stored_topic:?}, not {:?}",
                            def.topic
                        ),
                    });
                }
                (history, failed, Some(served))
            }
            None => (BTreeMap::new(), BTreeMap::new(), None),
        };
        // The version that was served, when it has this revision (after a rollback, an older
        // version may share its revision with a newer one); else the newest with it.
        let resumed = stored_served
            .filter(|v| history.get(v) == Some(&def.revision))
            .or_else(|| history.iter().rev().find(|(_, r)| **r == def.revision).map(|(v, _)| *v));
        let known = history.keys().next_back().copied();
        let entry = Arc::new(view::Entry {
            topic: def.topic.clone(),
            // The version this call creates or resumes is the one served (a new one's number is
            // set below, once taken).
            served: crate::sync::atomic::AtomicU32::new(resumed.unwrap_or(0)),
            swaps: crate::sync::atomic::AtomicU64::new(0),
            versions: crate::sync::Mutex::new(BTreeMap::new()),
            history: crate::sync::Mutex::new(history),
            failed: crate::sync::Mutex::new(failed),
            dir,
            disk,
            notifier: view::wait::Notifier::default(),
        });
        let number = match resumed {
            Some(number) => number,
            None => {
                // Checked first: a refused definition takes no number.
                check_seed(&entry, &def)?;
                // A number no version of this name ever had (see `meta::next_view_version`),
                // recorded before anything of the version exists.
                let number =
                    meta::next_view_version(&entry.disk, &self.inner.config.data_dir, name, known)?;
                entry.served.store(number, Ordering::Release);
                number
            }
        };
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
        if let Err(e) = self.start_version(name, &entry, number, def, topic.config.partitions) {
            // Say, the log no longer holds the start (`ViewBeforeLogStart`): nothing stays open.
            self.abandon_version(name, &entry, number);
            self.inner
                .views
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(name);
            return Err(e);
        }
        Ok(ViewHandle::new(self.inner.clone(), name.into(), entry))
    }

    /// Builds version N+1 of a view from `def` (from `def.start`) in the shards' replay queues while
    /// the served version keeps answering queries; when every partition has caught up with the
    /// live tail, queries switch to it atomically. Returns a handle on the new version: its
    /// number (`Rebuild::version`) and `Rebuild::wait_swapped` to sleep until the swap.
    pub fn rebuild_view(&self, name: &str, def: ViewDef) -> Result<Rebuild, Error> {
        def.validate()?;
        let _meta = self.inner.lock_meta();
        let entry = self.view_entry(name)?;
        if def.topic != entry.topic {
            return Err(Error::Config {
                field: "view",
                reason: format!("a rebuild must read topic {:?}", entry.topic),
            });
        }
        check_seed(&entry, &def)?;
        let topic = self.inner.topic(&def.topic)?;
        let known = entry
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .next_back()
            .copied();
        // Never a number a dropped (or deleted) version had: what it left on disk is not ours.
        let number =
            meta::next_view_version(&entry.disk, &self.inner.config.data_dir, name, known)?;
        entry
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(number, def.revision.clone());
        view::write_meta(&entry)?;
        match self.start_version(name, &entry, number, def, topic.config.partitions) {
            Ok(version) => Ok(Rebuild::new(self.inner.clone(), name.into(), entry, version)),
            Err(e) => {
                self.abandon_version(name, &entry, number);
                entry
                    .history
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&number);
                if let Err(meta) = view::write_meta(&entry) {
                    tracing::warn!(view = name, error = %meta, "recording an abandoned rebuild failed");
                }
                Err(e)
            }
        }
    }

    /// Stops the partitions of a version that failed to start on some shard.
    fn abandon_version(&self, name: &str, entry: &Arc<view::Entry>, number: u32) {
        // Marked dropped under the versions lock, as `drop_view_version` does: a swap (which
        // takes it) never serves it.
        let mut versions = entry.versions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(version) = versions.remove(&number) {
            version.dropped.store(true, Ordering::SeqCst);
        }
        drop(versions);
        let view_name: Arc<str> = Arc::from(name);
        for shard in 0..self.shard_count() {
            let _ = self.inner.call(shard, |reply| Request::DropView {
                view: view_name.clone(),
                version: number,
                reply,
            });
        }
        entry.notifier.notify();
    }

    /// Starts again a version of a view that is recorded on disk but not running (a rebuild
    /// that was in progress, or a version rolled back from, when the process stopped): it
    /// resumes from its own checkpoints under its own number, and swaps in when it catches up
    /// if it is newer than the served version, as a rebuild does. `def` must carry the revision
    /// recorded for that version.
    pub fn resume_view_version(
        &self,
        name: &str,
        version: u32,
        def: ViewDef,
    ) -> Result<Rebuild, Error> {
        def.validate()?;
        // Under the metadata lock, as every other view lifecycle call: a resume racing
        // `delete_view` would otherwise start a version the deletion already passed over (it
        // would run orphaned, checkpointing into a moved directory), and two resumes of one
        // version would both pass the "already running" check.
        let _meta = self.inner.lock_meta();
        let entry = self.view_entry(name)?;
        if def.topic != entry.topic {
            return Err(Error::Config {
                field: "view",
                reason: format!("a version of {name:?} must read topic {:?}", entry.topic),
            });
        }
        let recorded = entry
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&version)
            .cloned();
        match recorded {
            None => return Err(Error::UnknownView { view: name.to_string(), version }),
            Some(revision) if revision != def.revision => {
                return Err(Error::Config {
                    field: "revision",
                    reason: format!(
                        "version {version} of {name:?} was built from revision {revision:?}, \
                         not {:?}",
                        def.revision
                    ),
                })
            }
            Some(_) => {}
        }
        if entry
            .versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&version)
        {
            return Err(Error::Config {
                field: "version",
                reason: format!("version {version} of {name:?} is already running"),
            });
        }
        let topic = self.inner.topic(&def.topic)?;
        let started = self.start_version(name, &entry, version, def, topic.config.partitions)?;
        Ok(Rebuild::new(self.inner.clone(), name.into(), entry, started))
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
        let topic_incarnation = self.inner.topic(&def.topic)?.incarnation;
        let version = Arc::new(view::Version {
            view: Arc::from(name),
            number,
            def: Arc::new(def),
            partitions,
            caught_up: crate::sync::atomic::AtomicU32::new(0),
            entry: entry.clone(),
            dir: entry.dir.join(number.to_string()),
            folded: (0..partitions)
                .map(|_| crossbeam_utils::CachePadded::new(crate::sync::atomic::AtomicU64::new(0)))
                .collect(),
            // A poison record failed this version before a restart: it stays failed.
            failure: crate::sync::Mutex::new(
                entry
                    .failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&number)
                    .cloned(),
            ),
            failure_unrecorded: crate::sync::Mutex::new(None),
            swap_unrecorded: crate::sync::Mutex::new(None),
            topic_incarnation,
            prior_shape: entry
                .disk
                .read_file_blocking(&entry.dir.join(number.to_string()).join(view::SHAPE_FILE))
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok()),
            outcome: crate::sync::atomic::AtomicU8::new(outcome),
            dropped: AtomicBool::new(false),
            #[cfg(any(test, feature = "test-hooks"))]
            probes: Default::default(),
        });
        entry
            .versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(number, version.clone());
        // What `Start::Checkpoint` from this version checks once it no longer runs.
        let shape = version.def.shape_text();
        // Through the view's disk (the seam): on a simulated disk these files live there too.
        let disk = &version.entry.disk;
        disk.create_dir_all_blocking(&version.dir)?;
        disk.write_file_atomic_blocking(&version.dir.join(view::SHAPE_FILE), shape.as_bytes())?;
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
    ///
    /// All or nothing: the new served version is recorded in the view's `meta.json` (durably)
    /// first, and queries switch only once it is. When the record fails the caller gets
    /// `Error::ServeNotPersisted` and nothing changed in memory: queries still serve the
    /// previous version, which is also what a restart serves (a failed atomic write leaves the
    /// old record; where the rename landed but its directory fsync failed, the record is
    /// written again with the previous version, best effort).
    pub fn serve_view_version(&self, name: &str, version: u32) -> Result<(), Error> {
        let _meta = self.inner.lock_meta();
        let entry = self.view_entry(name)?;
        if !entry
            .versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&version)
        {
            return Err(Error::UnknownView { view: name.to_string(), version });
        }
        // Held from the record to the switch: a rebuild's swap (`Version::partition_caught_up`)
        // writes `meta.json` under the same lock, reading `served` then, so whichever of the two
        // writes last records what memory serves.
        let history = entry.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = view::write_meta_locked(&entry, &history, version) {
            let current = entry.served.load(Ordering::Acquire);
            if let Err(again) = view::write_meta_locked(&entry, &history, current) {
                tracing::warn!(view = name, error = %again,
                    "restoring the view's record after a failed switch failed too");
            }
            tracing::error!(view = name, version, error = %e,
                "recording the served view version failed; the switch was not made");
            return Err(Error::ServeNotPersisted {
                view: name.to_string(),
                version,
                served: current,
                source: Arc::new(e),
            });
        }
        let previous = entry.served.swap(version, Ordering::AcqRel);
        drop(history);
        if previous != version {
            entry.swaps.fetch_add(1, Ordering::AcqRel);
            tracing::info!(
                view = name,
                from = previous,
                to = version,
                "view version served by request"
            );
            // `wait_for` re-checks against the version served now, `wait_swapped` sees its
            // version served (or replaced): neither may sleep through the switch.
            entry.notifier.notify();
        }
        Ok(())
    }

    /// Stops a version that is not served and deletes its checkpoints.
    ///
    /// In this order: the version stops (queries and waiters on it get `UnknownView`), its
    /// directory is removed and the view's directory synced, and only then is it forgotten in
    /// the view's `meta.json`. When removing its files fails, the caller gets
    /// `Error::DropNotFinished` naming the directory, and the version is in the state of a
    /// version not resumed after a restart: stopped and not served, still recorded (its
    /// revision and number in `meta.json`) with whatever files are left. Calling this again
    /// finishes the drop (a recorded version that is not running can be dropped), and
    /// `resume_view_version` could run it again from its checkpoints instead.
    pub fn drop_view_version(&self, name: &str, version: u32) -> Result<(), Error> {
        let _meta = self.inner.lock_meta();
        let entry = self.view_entry(name)?;
        // Check and removal under the versions lock, which a rebuild's swap holds to move
        // `served` (`Version::partition_caught_up`): the swap either comes first (this drop is
        // refused) or sees the version dropped and leaves `served` alone.
        let running = {
            let mut versions =
                entry.versions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if entry.served.load(Ordering::Acquire) == version {
                return Err(Error::Config {
                    field: "version",
                    reason: format!("version {version} is served; it cannot be dropped"),
                });
            }
            let removed = versions.remove(&version);
            if let Some(removed) = &removed {
                removed.dropped.store(true, Ordering::SeqCst);
            }
            removed.is_some()
        };
        let recorded = entry
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&version);
        if !running && !recorded {
            return Err(Error::UnknownView { view: name.to_string(), version });
        }
        if running {
            entry.notifier.notify();
        }
        // Every shard, also on a retry: a shard that does not run the version does nothing.
        let view_name: Arc<str> = Arc::from(name);
        for shard in 0..self.shard_count() {
            self.inner.call(shard, |reply| Request::DropView {
                view: view_name.clone(),
                version,
                reply,
            })?;
        }
        // Synced before the version is forgotten: once this returns, a power cut does not
        // bring the version's files back (its number is never taken again, but its shape file
        // would still seed a `Start::Checkpoint` from a version that was dropped).
        let dir = entry.dir.join(version.to_string());
        let removed = match entry.disk.remove_dir_all_blocking(&dir) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
        // Synced also when the directory was already gone (a retry after a failed sync); a
        // view directory that does not exist has nothing to make durable.
        .and_then(|()| match entry.disk.sync_dir_blocking(&entry.dir) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        });
        if let Err(e) = removed {
            tracing::error!(view = name, version, dir = %dir.display(), error = %e,
                "removing a dropped version's files failed; it stays recorded, stopped");
            return Err(Error::DropNotFinished {
                view: name.to_string(),
                version,
                path: dir,
                source: Arc::new(e.into()),
            });
        }
        // The record last, and all or nothing: when it fails, memory keeps the version recorded
        // as `meta.json` does, so a retry finds it and finishes (the files are gone already).
        let history = entry
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&version);
        let failed =
            entry.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&version);
        if let Err(e) = view::write_meta(&entry) {
            if let Some(history) = history {
                entry
                    .history
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(version, history);
            }
            if let Some(failed) = failed {
                entry
                    .failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(version, failed);
            }
            tracing::error!(view = name, version, error = %e,
                "recording a dropped version failed; it stays recorded, stopped");
            return Err(Error::DropNotFinished {
                view: name.to_string(),
                version,
                path: entry.dir.join("meta.json"),
                source: Arc::new(e),
            });
        }
        Ok(())
    }

    /// Stops every version of a view and deletes its checkpoints and metadata. The view's
    /// directory is first moved to `DIR/trash` (one rename, so a crash never leaves half a view
    /// that a later view of the same name would resume from), then removed. Once this returns
    /// the deletion is durable (the rename is followed by an fsync of `DIR/views`): a power cut
    /// never brings the view, its metadata or its checkpoints back.
    pub fn delete_view(&self, name: &str) -> Result<(), Error> {
        let _meta = self.inner.lock_meta();
        let entry = self
            .inner
            .views
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name)
            .ok_or(Error::UnknownView { view: name.to_string(), version: 0 })?;
        let versions = std::mem::take(
            &mut *entry.versions.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        // Waiters fail now (`UnknownView`) instead of sleeping until their timeout.
        for version in versions.values() {
            version.dropped.store(true, Ordering::SeqCst);
        }
        entry.notifier.notify();
        let versions: Vec<u32> = versions.into_keys().collect();
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
        let disk = &entry.disk;
        let trash = self.inner.config.data_dir.join(TRASH_DIR);
        disk.create_dir_all_blocking(&trash)?;
        let doomed = trash.join(format!("view-{name}-{}", std::process::id()));
        match disk.rename_blocking(&entry.dir, &doomed) {
            Ok(()) => {
                if let Some(parent) = entry.dir.parent() {
                    disk.sync_dir_blocking(parent)?;
                }
                if let Err(e) = disk.remove_dir_all_blocking(&doomed) {
                    tracing::warn!(view = name, error = %e, "emptying the trash failed; the next start does");
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(view = name, "view deleted");
        Ok(())
    }

    /// A non-owning handle on the same engine, for a helper thread of an async twin.
    pub(crate) fn lend(&self) -> Engine {
        Engine { inner: self.inner.clone(), owner: false }
    }

    /// For the loom models (`crate::loom_models`): an engine without shard threads, data dir
    /// lock, monitor thread or watchdog, over the links, topics and views a model supplies. The
    /// engine's own code that needs no running shard (view waits, `shutdown`, the checks and
    /// registry changes of `drop_view_version` with no shards) runs on it unchanged.
    #[cfg(all(test, loom))]
    pub(crate) fn for_loom(
        config: EngineConfig,
        links: Vec<Link>,
        topics: Vec<TopicMeta>,
        views: Vec<(String, Arc<view::Entry>)>,
    ) -> Engine {
        let guard = watchdog::ShardGuard::start(0, &config.watchdog, &config.data_dir)
            .expect("a disabled watchdog starts no thread");
        let inner = Arc::new(Inner {
            config: Arc::new(config),
            views: crate::sync::RwLock::new(views.into_iter().collect()),
            links,
            topics: RwLock::new(
                topics.into_iter().map(|t| (t.name.to_string(), Arc::new(t))).collect(),
            ),
            topics_generation: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
            shut_down: AtomicBool::new(false),
            meta_lock: crate::sync::Mutex::new(()),
            monitor: crate::monitor::Monitor::idle(),
            guard,
            lock: Mutex::new(None),
            open_report: Mutex::new(OpenReport::default()),
        });
        for link in &inner.links {
            link.life.set_engine(Arc::downgrade(&inner));
        }
        Engine { inner, owner: false }
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

    pub(crate) fn check_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<TopicMeta>, Error> {
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

    /// Fault injection for tests: makes shard `shard`'s request loop panic, which kills its
    /// thread (a bug outside user code). Every later call that needs the shard fails with
    /// `Error::ShardDied`.
    #[cfg(feature = "fault-injection")]
    pub fn inject_shard_panic(&self, shard: usize, message: &str) -> Result<(), Error> {
        self.inner.send_blocking(shard, Request::Panic { message: message.to_string() })
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
        for link in &self.inner.links {
            let (reply, receiver) = flume::bounded(1);
            match link.send(Request::Shutdown { reply }) {
                Ok(()) => waiting.push((link, receiver)),
                Err(e @ Error::ShardDied { .. }) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {}
            }
        }
        for (link, receiver) in waiting {
            match link.recv(&receiver) {
                Ok(()) | Err(Error::ShutDown) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let threads = std::mem::take(
            &mut *self.inner.threads.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (index, handle) in threads.into_iter().enumerate() {
            if let Err(e) = handle.join() {
                first_error.get_or_insert(self.inner.links[index].life.died().unwrap_or(
                    Error::Start {
                        shard: index as u16,
                        reason: format!("shard thread failed: {e}"),
                    },
                ));
            }
        }
        self.inner.guard.stop();
        // The data dir is free for the next owner once every file is closed.
        drop(self.inner.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "engine shutdown failed");
        }
    }
}

/// Refuses a `Start::Checkpoint { version }` whose version's state this definition cannot
/// continue exactly (another key, window or aggregate would read its groups wrongly), naming the
/// field that differs; and one whose version is not running, whose definition is unknown.
fn check_seed(entry: &view::Entry, def: &ViewDef) -> Result<(), Error> {
    let crate::view::Start::Checkpoint { version } = def.start else { return Ok(()) };
    let seed = entry
        .versions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&version)
        .map(|v| v.def.clone());
    let differs = match seed {
        Some(seed) => def.cannot_continue(&seed),
        None => {
            // Not running: compare with the shape it recorded when it started.
            let path = entry.dir.join(version.to_string()).join(view::SHAPE_FILE);
            let recorded = match entry.disk.read_file_blocking(&path) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) if e.is_not_found() => {
                    return Err(Error::Config {
                        field: "start",
                        reason: format!(
                            "Start::Checkpoint {{ version: {version} }}: version {version} is not \
                             running and recorded no definition to check this one against"
                        ),
                    })
                }
                Err(e) => return Err(e.into()),
            };
            def.shape().into_iter().find_map(|(field, text)| {
                let theirs = recorded
                    .lines()
                    .find_map(|l| l.strip_prefix(field).and_then(|l| l.strip_prefix('=')));
                match (text, theirs) {
                    (Some(ours), Some(theirs)) if ours == theirs => None,
                    (Some(ours), theirs) => Some((
                        field,
                        format!(
                            "the {field} is {ours}, the checkpoint's {}",
                            theirs.unwrap_or("?")
                        ),
                    )),
                    (None, _) => Some((
                        field,
                        format!(
                            "a closure or custom aggregate as {field} can only continue a running \
                             version that shares it"
                        ),
                    )),
                }
            })
        }
    };
    match differs {
        Some((field, reason)) => Err(Error::Config {
            field,
            reason: format!(
                "Start::Checkpoint {{ version: {version} }} cannot continue that version's state: \
                 {reason}"
            ),
        }),
        None => Ok(()),
    }
}

/// `DIR/trash`: directories moved aside to be removed (emptied at start).
const TRASH_DIR: &str = "trash";

/// The CPUs this process may run on, from its affinity mask.
/// Where the blocking pool of the shard on `shard_cpu` runs (`BlockingPool`), given the CPUs
/// that run shards. Works on any core count: with one CPU, or a topology glommio cannot read,
/// the pool is unbound. glommio builds the pool before it pins the executor's thread, so an
/// unbound pool keeps the affinity of the thread that started the engine.
fn blocking_pool_placement(
    pool: crate::config::BlockingPool,
    threads: usize,
    shard_cpu: Option<usize>,
    shard_cpus: &[usize],
) -> glommio::PoolPlacement {
    let unbound = glommio::PoolPlacement::Unbound(threads);
    let (Some(chosen), Ok(online)) =
        (pool_cpus(pool, shard_cpu, shard_cpus, &core_ids()), glommio::CpuSet::online())
    else {
        return unbound;
    };
    let set = online.filter(|location| chosen.contains(&location.cpu));
    if set.is_empty() {
        return unbound;
    }
    glommio::PoolPlacement::Fenced(threads, set)
}

/// The CPUs a shard's blocking pool is fenced to, out of those this process may run on
/// (`allowed`); `None`: unbound.
fn pool_cpus(
    pool: crate::config::BlockingPool,
    shard_cpu: Option<usize>,
    shard_cpus: &[usize],
    allowed: &[usize],
) -> Option<Vec<usize>> {
    use crate::config::BlockingPool;
    let cpu = shard_cpu?;
    let chosen: Vec<usize> = match pool {
        BlockingPool::Unbound => return None,
        BlockingPool::ShardCpu => vec![cpu],
        BlockingPool::OtherCpus => {
            let free: Vec<usize> =
                allowed.iter().copied().filter(|c| !shard_cpus.contains(c)).collect();
            if free.is_empty() {
                allowed.iter().copied().filter(|c| *c != cpu).collect()
            } else {
                free
            }
        }
    };
    (!chosen.is_empty()).then_some(chosen)
}

fn core_ids() -> Vec<usize> {
    let mut ids: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids
}

impl Inner {
    fn report(&self) -> std::sync::MutexGuard<'_, OpenReport> {
        self.open_report.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What opening the data dir found and repaired (`Engine::open_report`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Partitions opened (at start, and by later topic creations).
    pub partitions_opened: usize,
    /// Torn tails cut from active segments: unsynced writes a crash or power cut interrupted.
    pub truncations: Vec<Truncation>,
    /// Sealed segments whose index was missing or damaged and was rebuilt by a scan.
    pub indexes_rebuilt: usize,
    /// Topic deletions a crash interrupted, finished by this start.
    pub deletions_finished: Vec<String>,
}

/// One torn tail cut from a partition's active segment when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub topic: String,
    pub partition: u32,
    /// The segment file that was cut.
    pub segment: PathBuf,
    /// The file now ends here (the first damaged byte).
    pub position: u64,
    /// The partition's end offset after the cut: the first offset dropped, if any was written.
    pub first_offset: u64,
    /// Bytes dropped (to the last non-zero byte of the file).
    pub bytes: u64,
    /// Whole valid frames found after the damage and dropped with it, and their offsets
    /// `[first, end)`: records that were written but never synced nor acknowledged as synced.
    pub frames: u64,
    pub offsets: Option<(u64, u64)>,
}

impl OpenReport {
    fn record(&mut self, topic: &str, partition: u32, recovery: kappa_storage::RecoveryReport) {
        self.partitions_opened += 1;
        self.indexes_rebuilt += recovery.indexes_rebuilt;
        if let Some(cut) = recovery.tail_cut {
            self.truncations.push(Truncation {
                topic: topic.to_string(),
                partition,
                segment: cut.segment,
                position: cut.position,
                first_offset: cut.first_dropped_offset,
                bytes: cut.dropped_bytes,
                frames: cut.dropped_frames,
                offsets: cut.dropped_offsets,
            });
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit. Every partition keeps its
/// active segment open (one descriptor each), so 10,000 partitions need more than the usual soft
/// limit of 1,024; the hard limit is what the administrator allows, and raising the soft limit up
/// to it needs no privilege. Failing to raise it is not an error: opening too many partitions
/// then fails with a typed "Too many open files" naming the file.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            tracing::debug!(from = limit.rlim_cur, to = limit.rlim_max, "raised RLIMIT_NOFILE");
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::pool_cpus;
    use crate::config::BlockingPool;

    /// The blocking pool's CPUs on any core count: CPUs without a shard first, else any but
    /// the shard's own, else unbound (one CPU, or a shard with no CPU).
    #[test]
    fn the_blocking_pool_goes_to_other_cpus_when_there_are_any() {
        let others = BlockingPool::OtherCpus;
        assert_eq!(pool_cpus(others, Some(1), &[1], &[0, 1]), Some(vec![0]));
        assert_eq!(pool_cpus(others, Some(0), &[0, 1], &[0, 1]), Some(vec![1]));
        assert_eq!(pool_cpus(others, Some(2), &[1, 2], &[0, 1, 2, 3]), Some(vec![0, 3]));
        assert_eq!(pool_cpus(others, Some(0), &[0], &[0]), None);
        assert_eq!(pool_cpus(others, None, &[], &[0, 1]), None);
        assert_eq!(pool_cpus(BlockingPool::ShardCpu, Some(3), &[3], &[0, 3]), Some(vec![3]));
        assert_eq!(pool_cpus(BlockingPool::Unbound, Some(3), &[3], &[0, 3]), None);
    }
}
