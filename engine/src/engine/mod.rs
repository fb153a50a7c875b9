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
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use glommio::{LocalExecutorBuilder, Placement};
use kappa_storage::Seek;

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
use crate::view::{self};
use crate::watchdog;
use crate::Error;

mod open_report;
mod read_only;
mod topics;
mod views;

pub use open_report::{OpenReport, Truncation};
pub use read_only::ReadOnlyLog;

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
            let mut executor = LocalExecutorBuilder::new(placement)
                .blocking_thread_pool_placement(pool)
                .preempt_timer(config.preempt_timer())
                .io_memory(config.io_memory_bytes);
            if let Some(threshold) = watchdog::overrun::threshold_from_env() {
                executor =
                    executor.detect_stalls(Some(Box::new(watchdog::overrun::OverrunTrace {
                        shard: index,
                        threshold,
                        cpu_at_start: Default::default(),
                    })));
            }
            let handle = watchdog::spawn_executor_reporting(
                format!("kappa-shard-{index}"),
                executor,
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
    ///
    /// The log is read-only (`ReadOnlyLog`): an append from a job would go around the shard's
    /// request loop, and could land inside the records of a request whose offsets are derived
    /// from its first (see `ReadOnlyLog`). Records go in through a `Producer`.
    pub fn run_on_partition<F, Fut, T>(
        &self,
        topic: &str,
        partition: u32,
        job: F,
    ) -> Result<T, Error>
    where
        F: FnOnce(ReadOnlyLog) -> Fut + Send + 'static,
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
                        let job = job(ReadOnlyLog::new(log));
                        match futures_lite::FutureExt::catch_unwind(AssertUnwindSafe(job)).await {
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

/// `DIR/trash`: directories moved aside to be removed (emptied at start).
const TRASH_DIR: &str = "trash";

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

/// The CPUs this process may run on, from its affinity mask.
fn core_ids() -> Vec<usize> {
    let mut ids: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids
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
