//! One shard's part of the Kafka front end: its accept loop, its job queue for work other shards
//! forward to it, and the per-shard state the handlers share (topic cache, fetch readers,
//! producer sequences, the groups it coordinates, the memory budget).
//!
//! Cross-shard calls: `post` sends a `Send` closure to the owning shard's job queue and returns
//! the receiver of its result. Posting is awaited in request order, and each shard's job loop
//! spawns jobs in arrival order, so work one connection sends to one shard starts in order.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::os::fd::{FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_lite::FutureExt;
use glommio::net::TcpListener;

use super::fetch::ReaderCache;
use super::group::Coordinator;
use super::idempotence::{IdAllocator, PartitionSeq};
use super::util::{Budget, BufferPool, Event, LocalFuture};
use super::{conn, group, KafkaConfig, OFFSETS_TOPIC};
use crate::engine::{Engine, Inner, TopicMeta};
use crate::shard::Shard;

/// Buffers a shard keeps for reuse (request frames, fetched batches), and the largest frame or
/// batch whose buffer is kept (a 1000-record batch of 1 KiB records is about 1 MiB): at most
/// about 32 MiB per shard, outside the budget, whatever the connection count.
const KEPT_BUFFERS: usize = 16;
const KEPT_BUFFER_BYTES: usize = 2 << 20;

/// Work sent to a shard's Kafka node.
pub(crate) type Job = Box<dyn FnOnce(Rc<Node>) -> LocalFuture<'static, ()> + Send>;

/// What all shards' nodes share (read-mostly; `Send + Sync`).
pub(crate) struct Shared {
    pub(crate) config: KafkaConfig,
    pub(crate) inner: Arc<Inner>,
    /// For control-plane calls (create, delete topics) on the control thread only: the
    /// application holds the engine, so an upgrade here is never the last reference.
    pub(crate) engine: Weak<Engine>,
    pub(crate) peers: Vec<flume::Sender<Job>>,
    pub(crate) connections: AtomicUsize,
    pub(crate) host: String,
    pub(crate) port: i32,
    pub(crate) cluster_id: String,
    pub(crate) producer_ids: Mutex<IdAllocator>,
    /// Serializes topic creation and deletion (taken on the control thread only).
    pub(crate) control_lock: Mutex<()>,
    /// The control thread's queue (bounded: a shard waits for room).
    control: flume::Sender<ControlJob>,
}

/// Blocking control-plane work for the control thread.
type ControlJob = Box<dyn FnOnce() + Send>;

/// Jobs queued for the control thread at most; more wait on their shard (backpressure).
const CONTROL_QUEUE: usize = 16;

pub(crate) struct SharedParts {
    pub(crate) config: KafkaConfig,
    pub(crate) inner: Arc<Inner>,
    pub(crate) engine: Weak<Engine>,
    pub(crate) peers: Vec<flume::Sender<Job>>,
    pub(crate) host: String,
    pub(crate) port: i32,
    pub(crate) cluster_id: String,
    pub(crate) producer_ids: IdAllocator,
}

impl Shared {
    pub(crate) fn new(parts: SharedParts) -> Self {
        // Not glommio's blocking pool: a shard's pool has one thread, and creating a topic makes
        // the shards do namespace work on their pools (storage's `io`), this shard's included, so
        // an engine call from the pool would wait for itself. The thread ends when `Shared` goes.
        let (control, jobs) = flume::bounded::<ControlJob>(CONTROL_QUEUE);
        let spawned =
            std::thread::Builder::new().name("kappa-kafka-control".into()).spawn(move || {
                while let Ok(job) = jobs.recv() {
                    job();
                }
            });
        if let Err(e) = spawned {
            // `control` then answers Unavailable (its queue has no receiver).
            tracing::error!(error = %e, "starting the Kafka control thread failed");
        }
        Shared {
            config: parts.config,
            inner: parts.inner,
            engine: parts.engine,
            peers: parts.peers,
            connections: AtomicUsize::new(0),
            host: parts.host,
            port: parts.port,
            cluster_id: parts.cluster_id,
            producer_ids: Mutex::new(parts.producer_ids),
            control_lock: Mutex::new(()),
            control,
        }
    }
}

/// The shard is gone (engine shutting down) or refused the work.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unavailable;

/// Topics as this shard last saw them; dropped whenever the engine's registry changes.
#[derive(Default)]
struct TopicCache {
    generation: u64,
    topics: BTreeMap<String, Arc<TopicMeta>>,
}

/// (topic, partition) -> its append order and idempotent producer state.
pub(crate) type SequenceMap = BTreeMap<(Arc<str>, u32), Rc<PartitionSeq>>;

pub(crate) struct Node {
    pub(crate) index: usize,
    pub(crate) shard: Rc<Shard>,
    pub(crate) shared: Arc<Shared>,
    topics: RefCell<TopicCache>,
    pub(crate) readers: RefCell<ReaderCache>,
    /// Append order and idempotent producer state of the partitions this shard owns.
    pub(crate) sequences: RefCell<SequenceMap>,
    pub(crate) groups: Coordinator,
    /// Bytes of request frames and fetch responses held at once on this shard.
    pub(crate) budget: Rc<Budget>,
    /// Buffers for request frames and fetched batches, reused once their bytes are dropped.
    pub(crate) buffers: BufferPool,
    closing: Cell<bool>,
    pub(crate) closed: Event,
    open_connections: Cell<usize>,
    next_connection: Cell<u64>,
}

impl Node {
    pub(crate) fn config(&self) -> &KafkaConfig {
        &self.shared.config
    }

    /// Wall time from the engine's clock (the append time of records that carry none).
    pub(crate) fn now_ms(&self) -> i64 {
        self.shared.inner.config.clock.now_ms()
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Resolves when the node starts closing.
    pub(crate) async fn until_closing(&self) {
        self.closed.wait_until(|| self.closing.get()).await
    }

    /// A topic's definition and partition owners, from the per-shard cache.
    pub(crate) fn topic(&self, name: &str) -> Option<Arc<TopicMeta>> {
        let generation = self.shared.inner.topics_generation();
        {
            let mut cache = self.topics.borrow_mut();
            if cache.generation != generation {
                cache.topics.clear();
                cache.generation = generation;
            }
            if let Some(meta) = cache.topics.get(name) {
                return Some(meta.clone());
            }
        }
        let meta = self.shared.inner.topic(name).ok()?;
        self.topics.borrow_mut().topics.insert(name.to_string(), meta.clone());
        Some(meta)
    }

    /// The shard that owns `partition` of `meta`.
    pub(crate) fn owner(meta: &TopicMeta, partition: u32) -> Option<usize> {
        meta.shards.get(partition as usize).copied()
    }

    /// Sends `work` to run on `shard` (here, when it is this shard) and returns the receiver of
    /// its result. Awaiting this only waits for room in the target's queue.
    pub(crate) async fn post<T, F, Fut>(
        self: &Rc<Self>,
        shard: usize,
        work: F,
    ) -> Result<flume::Receiver<T>, Unavailable>
    where
        F: FnOnce(Rc<Node>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = flume::bounded(1);
        let job: Job = Box::new(move |node| {
            Box::pin(async move {
                let _ = tx.send(work(node).await);
            })
        });
        if shard == self.index {
            glommio::spawn_local_into(job(self.clone()), self.shard.live_queue())
                .map_err(|_| Unavailable)?
                .detach();
        } else {
            let peer = self.shared.peers.get(shard).ok_or(Unavailable)?;
            peer.send_async(job).await.map_err(|_| Unavailable)?;
        }
        Ok(rx)
    }

    /// Runs `work` on `shard` and waits for its result.
    pub(crate) async fn call<T, F, Fut>(
        self: &Rc<Self>,
        shard: usize,
        work: F,
    ) -> Result<T, Unavailable>
    where
        F: FnOnce(Rc<Node>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        if shard == self.index {
            return Ok(work(self.clone()).await);
        }
        let rx = self.post(shard, work).await?;
        rx.recv_async().await.map_err(|_| Unavailable)
    }

    /// Runs blocking control-plane work with the engine on the control thread (never on a shard
    /// thread nor its blocking pool: engine calls wait on shards, this one included).
    pub(crate) async fn control<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Engine) -> T + Send + 'static,
    ) -> Result<T, Unavailable> {
        let engine = self.shared.engine.clone();
        let (done, result) = flume::bounded(1);
        let job: ControlJob = Box::new(move || {
            let _ = done.send(engine.upgrade().map(|engine| work(&engine)));
        });
        self.shared.control.send_async(job).await.map_err(|_| Unavailable)?;
        result.recv_async().await.map_err(|_| Unavailable)?.ok_or(Unavailable)
    }

    /// Drops the cached readers and producer state of a deleted topic's partitions.
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.readers.borrow_mut().forget(topic);
        self.sequences.borrow_mut().retain(|(t, _), _| &**t != topic);
    }

    /// Stops accepting and closes every connection of this node; returns when they are gone.
    pub(crate) async fn close(&self) {
        self.closing.set(true);
        self.closed.notify();
        self.closed.wait_until(|| self.open_connections.get() == 0).await;
    }

    /// The partition of `__consumer_offsets` holding `group`, and its owning shard.
    pub(crate) fn coordinator_of(&self, group: &str) -> Option<(u32, usize)> {
        let meta = self.topic(OFFSETS_TOPIC)?;
        let partition = group::partition_for(group, meta.config.partitions);
        Some((partition, Node::owner(&meta, partition)?))
    }
}

/// Counts a connection while it lives.
pub(crate) struct ConnectionGuard {
    node: Rc<Node>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.node.shared.connections.fetch_sub(1, Ordering::AcqRel);
        self.node.open_connections.set(self.node.open_connections.get() - 1);
        self.node.closed.notify();
    }
}

/// The body of a shard's node: reload the groups it coordinates, then serve jobs and accept.
pub(crate) async fn run(
    shard: Rc<Shard>,
    index: usize,
    shared: Arc<Shared>,
    fd: RawFd,
    jobs: flume::Receiver<Job>,
    ready: flume::Sender<Result<(), String>>,
) {
    // SAFETY: `fd` is a listening TCP socket duplicated for this shard alone (`try_clone`), and
    // ownership passes to the listener here exactly once.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let node = Rc::new(Node {
        index,
        shard,
        topics: RefCell::new(TopicCache::default()),
        readers: RefCell::new(ReaderCache::new(shared.config.fetch_readers_max)),
        sequences: RefCell::new(BTreeMap::new()),
        groups: Coordinator::new(
            xxhash_rust::xxh3::xxh3_64(&shared.inner.config.clock.now_ms().to_le_bytes())
                ^ u64::from(std::process::id()),
        ),
        budget: Budget::new(shared.config.buffered_bytes_per_shard),
        buffers: BufferPool::new(KEPT_BUFFERS, KEPT_BUFFER_BYTES),
        closing: Cell::new(false),
        closed: Event::default(),
        open_connections: Cell::new(0),
        next_connection: Cell::new(0),
        shared,
    });
    let live = node.shard.live_queue();
    let loop_node = node.clone();
    let job_loop = async move {
        while let Ok(job) = jobs.recv_async().await {
            match glommio::spawn_local_into(job(loop_node.clone()), live) {
                Ok(task) => {
                    task.detach();
                }
                Err(e) => tracing::error!(error = %e, "spawning a Kafka job failed"),
            }
        }
    };
    // The job loop runs before the offsets load finishes: other shards' nodes may already send
    // work here, and the load itself needs nothing from them.
    match glommio::spawn_local_into(job_loop, live) {
        Ok(task) => {
            task.detach();
        }
        Err(e) => {
            let _ = ready.send(Err(format!("spawning the job loop: {e}")));
            return;
        }
    }
    if let Err(e) = group::load_offsets(&node).await {
        let _ = ready.send(Err(format!("reloading committed offsets: {e}")));
        return;
    }
    match glommio::spawn_local_into(group::reaper(node.clone()), live) {
        Ok(task) => {
            task.detach();
        }
        Err(e) => {
            let _ = ready.send(Err(format!("spawning the group timer: {e}")));
            return;
        }
    }
    let _ = ready.send(Ok(()));
    accept_loop(node, listener).await;
}

async fn accept_loop(node: Rc<Node>, listener: TcpListener) {
    loop {
        let accepted = async { Some(listener.accept().await) }
            .or(async {
                node.until_closing().await;
                None
            })
            .await;
        let stream = match accepted {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(shard = node.index, error = %e, "accepting a Kafka connection failed");
                glommio::timer::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let open = node.shared.connections.fetch_add(1, Ordering::AcqRel) + 1;
        node.open_connections.set(node.open_connections.get() + 1);
        let guard = ConnectionGuard { node: node.clone() };
        if open > node.config().connections_max {
            tracing::warn!(
                limit = node.config().connections_max,
                peer = ?stream.peer_addr().ok(),
                "too many Kafka connections: closing a new one"
            );
            drop(stream);
            drop(guard);
            continue;
        }
        let id = node.next_connection.get();
        node.next_connection.set(id + 1);
        let task = conn::serve(node.clone(), stream, id, guard);
        match glommio::spawn_local_into(task, node.shard.live_queue()) {
            Ok(task) => {
                task.detach();
            }
            Err(e) => tracing::error!(error = %e, "spawning a Kafka connection failed"),
        }
    }
}
