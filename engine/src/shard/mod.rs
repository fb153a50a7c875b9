//! A shard: one pinned glommio executor that owns its partitions' logs and serves requests.
//!
//! Threads outside the engine reach a shard through one bounded flume channel of `Request`s
//! (glommio channels need an executor on both ends; flume wakes a parked executor from any
//! thread). The request loop runs in the `live` task queue and handles appends **in arrival
//! order**: it assigns offsets synchronously (`PartitionLog::append_now`), so a producer's records
//! keep their order within a partition, and only the wait for durability runs as a separate task.
//! Backpressure is layered: the bounded request channel, a bound on appends waiting for their
//! durability, and the log's bounded write queue (the loop stops taking requests while it is full).
//!
//! Task queues: `live` (appends, tail delivery, queries; high shares, latency matters), `replay`
//! (historical reads; low shares), `maintenance` (retention; lowest). Shard state is `!Send` and
//! never locked.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use glommio::{Latency, Shares, TaskQueueHandle};
use kappa_storage::{Durability, LogConfig, OwnedBatch, PartitionLog, ProducerInfo, Seek};

use crate::config::EngineConfig;
use crate::metrics::{ConsumerMetrics, PartitionMetrics, ShardMetrics, ViewMetrics};
use crate::producer::{BatchAck, Payload, Stamped};
use crate::router::ShardId;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::view::runner::{self as view_runner, ViewPartition};
use crate::Error;

mod accumulate;
pub(crate) mod client;
pub(crate) mod iowq;
pub(crate) mod link;
pub(crate) mod replay;
mod serve;
pub(crate) mod slice;
mod stats;
mod tail;
mod upkeep;
mod views;

#[cfg(test)]
mod serve_tests;

use serve::append;
use serve::serve;
use stats::{metrics, partition_metrics};
use upkeep::{apply_retention, heartbeat, retention_loop, stall_probe};

use link::Link;
use replay::ReplayControl;

pub use accumulate::FlushCounts;
pub(crate) use accumulate::Stage;

/// A closure run on a shard (see `Engine::run_on_partition`).
pub(crate) type ShardJob = Box<dyn FnOnce(Rc<Shard>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

pub(crate) type Reply<T> = flume::Sender<Result<T, Error>>;

pub(crate) enum Request {
    Append {
        /// When the producer made the request: its wait in the channel is a stage of the
        /// client-visible latency (`ReplayMetrics::queue_p99_us`).
        sent: std::time::Instant,
        topic: Arc<str>,
        partition: u32,
        payload: Payload,
        durability: Durability,
        reply: Reply<BatchAck>,
    },
    /// Records for partitions of this shard, accumulated per partition (`accumulate`).
    Stage(Stage),
    /// Appends every staged batch now (`Producer::flush`); answered once they are appended.
    Flush {
        reply: Reply<()>,
    },
    Open {
        topic: Arc<str>,
        partition: u32,
        config: LogConfig,
        reply: Reply<kappa_storage::RecoveryReport>,
    },
    Subscribe {
        topic: Arc<str>,
        partition: u32,
        seek: Seek,
        sink: flume::Sender<Result<OwnedBatch, Error>>,
        state: Arc<SubscriptionState>,
        reply: Reply<()>,
    },
    Offsets {
        topic: Arc<str>,
        partition: u32,
        reply: Reply<PartitionMetrics>,
    },
    /// Closes a partition (flush, sync, stop its writer) and forgets it: a topic deletion.
    Close {
        topic: Arc<str>,
        partition: u32,
        reply: Reply<()>,
    },
    Run(ShardJob),
    Metrics {
        reply: Reply<ShardMetrics>,
    },
    /// The monitor's probe: look for stalled view partitions, then answer.
    Watch {
        reply: Reply<()>,
    },
    StartView {
        version: Arc<crate::view::Version>,
        partition: u32,
        reply: Reply<()>,
    },
    QueryView {
        view: Arc<str>,
        version: u32,
        partition: u32,
        query: crate::view::Query,
        reply: Reply<Vec<(Vec<u8>, i64, crate::view::Cell)>>,
    },
    /// A partition's progress, and with `digest` its state's digest: hashing the whole state
    /// holds the shard for as long as the state is large, so only digest callers ask for it.
    ViewProgress {
        view: Arc<str>,
        version: u32,
        partition: u32,
        digest: bool,
        reply: Reply<(crate::view::PartitionProgress, Option<u64>)>,
    },
    DropView {
        view: Arc<str>,
        version: u32,
        reply: Reply<()>,
    },
    /// Applies every partition's retention now (under the views' floors); answers the number of
    /// segments deleted.
    Retention {
        reply: Reply<u64>,
    },
    Shutdown {
        reply: Reply<()>,
    },
    /// Fault injection: the request loop panics, which kills the shard's thread (a bug outside
    /// user code, as tests need one).
    #[cfg(feature = "fault-injection")]
    Panic {
        message: String,
    },
}

/// What a consumer and its shard share: the consumer's position and the end it last saw. Each
/// counter has its own cache line: the consumer's thread stores `position` per batch while the
/// shard stores `end_offset`.
///
/// Two gauges, each written by one thread at a time (`position` by the shard once when the
/// subscription starts, then only by the consumer's thread; `end_offset` only by the shard), read
/// for `Consumer::{position, lag}` and the shard's metrics. They decide nothing: what orders them
/// is the batch channel (the shard publishes the end before it sends a batch, and the subscribe
/// reply follows `start`), so relaxed accesses suffice; the readers clamp, so a stale read never
/// makes a lag wrap. The loom model `a_consumer_gets_what_its_shard_sent_before_dying` checks
/// both under every staleness loom allows (it sees no ordering through flume, so it explores more
/// outcomes than the channel permits).
#[derive(Debug)]
pub struct SubscriptionState {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: u32,
    pub(crate) position: CachePadded<AtomicU64>,
    pub(crate) end_offset: CachePadded<AtomicU64>,
}

impl SubscriptionState {
    pub(crate) fn new(topic: Arc<str>, partition: u32) -> Self {
        SubscriptionState {
            topic,
            partition,
            position: CachePadded::new(AtomicU64::new(0)),
            end_offset: CachePadded::new(AtomicU64::new(0)),
        }
    }

    /// The shard, as the subscription starts (before its reply): the consumer's first offset and
    /// the partition's readable end, so its lag is right before its first batch.
    pub(crate) fn start(&self, position: u64, end_offset: u64) {
        self.end_offset.store(end_offset.max(position), Ordering::Relaxed);
        self.position.store(position, Ordering::Relaxed);
    }

    /// The shard, before it sends a batch: the partition's readable end now.
    pub(crate) fn publish_end(&self, end_offset: u64) {
        self.end_offset.store(end_offset, Ordering::Relaxed);
    }

    /// The consumer's thread, per batch received: the offset after it.
    pub(crate) fn advance(&self, next_offset: u64) {
        self.position.store(next_offset, Ordering::Relaxed);
    }

    pub(crate) fn position(&self) -> u64 {
        self.position.load(Ordering::Relaxed)
    }

    /// Records between the position and the end last published (never wraps).
    pub(crate) fn lag(&self) -> u64 {
        self.end_offset.load(Ordering::Relaxed).saturating_sub(self.position())
    }

    /// The shard's metrics of this consumer.
    pub(crate) fn metrics(&self) -> ConsumerMetrics {
        let position = self.position();
        let end_offset = self.end_offset.load(Ordering::Relaxed).max(position);
        ConsumerMetrics {
            topic: self.topic.to_string(),
            partition: self.partition,
            position,
            end_offset,
            lag: end_offset - position,
        }
    }
}

/// Counters a shard keeps about its own work.
struct Counters {
    records_appended: u64,
    bytes_appended: u64,
    batches_appended: u64,
    appends_in_flight: u64,
    append_ack_latency_ns: hdrhistogram::Histogram<u64>,
    /// From the shard taking an append to a consumer at the tail being handed its records.
    tail_delivery_latency_ns: hdrhistogram::Histogram<u64>,
    /// How late the stall probe woke (`stall_probe`), in nanoseconds.
    executor_stall_ns: hdrhistogram::Histogram<u64>,
    /// Fsyncs of partition logs this shard has closed (a deleted topic, a moved partition): kept
    /// so the shard's fsync counter never goes backwards (Prometheus reads a decreasing counter
    /// as a reset). The latency histogram is the thread's, closed logs' syncs included
    /// (`kappa_storage::fsync_latency_ns`).
    closed_fsync_count: u64,
}

/// The partitions a shard owns: topic -> partition -> log (looked up by `&str`, no allocation).
type Partitions = BTreeMap<Arc<str>, BTreeMap<u32, Rc<PartitionLog>>>;

/// The view partitions a shard runs: (view, version, partition) -> partition state and its log.
type Views = BTreeMap<(Arc<str>, u32, u32), (Rc<ViewPartition>, Rc<PartitionLog>)>;

/// The recent appends of each partition a consumer follows (`tail`), for tail-delivery latency.
type TailMarks = BTreeMap<Arc<str>, BTreeMap<u32, Rc<RefCell<tail::TailMarks>>>>;

/// The state of one shard, shared by its tasks (`Rc`, never `Send`).
pub struct Shard {
    id: ShardId,
    config: Arc<EngineConfig>,
    partitions: RefCell<Partitions>,
    views: RefCell<Views>,
    subscriptions: RefCell<Vec<Arc<SubscriptionState>>>,
    tail_marks: RefCell<TailMarks>,
    counters: RefCell<Counters>,
    live: TaskQueueHandle,
    replay: TaskQueueHandle,
    maintenance: TaskQueueHandle,
    request_queue: flume::Receiver<Request>,
    stopping: Cell<bool>,
    /// Every shard's request channel and life, this one's included, in shard order. Range tasks
    /// of a rebuild go there.
    peers: Vec<Peer>,
    /// The live-latency controller: how much of this shard replay may take.
    replay_control: Rc<ReplayControl>,
    /// Staged batches per partition (`accumulate`).
    staging: RefCell<accumulate::Staging>,
    /// Appends waiting for their durability (`EngineConfig::appends_in_flight_max`).
    append_permits: Rc<glommio::sync::Semaphore>,
    /// Partition opens running now (they run in parallel, `EngineConfig::open_concurrency`).
    opens: Rc<glommio::sync::Semaphore>,
}

/// How a shard reaches another one: its request channel, weak so that the engine dropping its
/// senders still ends the request loops, and its life, so that a send or a wait ends when that
/// shard dies (`link.rs`).
#[derive(Clone)]
pub(crate) struct Peer {
    pub(crate) sender: flume::WeakSender<Request>,
    pub(crate) life: Arc<link::Life>,
}

impl Shard {
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// Appends waiting for their durability.
    pub(crate) fn appends_in_flight(&self) -> u64 {
        self.counters.borrow().appends_in_flight
    }

    /// The log of a partition this shard owns: on the shard, records are read zero-copy. Not
    /// public: an append through it would go around the accumulator's order (`accumulate`);
    /// code outside the engine gets a `ReadOnlyLog` (`Engine::run_on_partition`).
    pub(crate) fn log(&self, topic: &str, partition: u32) -> Option<Rc<PartitionLog>> {
        self.partitions.borrow().get(topic).and_then(|p| p.get(&partition)).cloned()
    }

    /// The queue for latency-sensitive work (appends, tail delivery, queries).
    pub fn live_queue(&self) -> TaskQueueHandle {
        self.live
    }
    /// The queue for historical replay: low shares, preempted by `live`.
    pub fn replay_queue(&self) -> TaskQueueHandle {
        self.replay
    }
    /// The queue for retention and (later) checkpoints.
    pub fn maintenance_queue(&self) -> TaskQueueHandle {
        self.maintenance
    }

    pub(crate) fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The number of shards of the engine.
    pub(crate) fn shard_count(&self) -> usize {
        self.peers.len()
    }

    pub(crate) fn replay_control(&self) -> &Rc<ReplayControl> {
        &self.replay_control
    }

    /// Runs `job` on shard `target` (this one included): it gets that shard's `Rc<Shard>`.
    /// Waits while the target's request channel is full (backpressure).
    pub(crate) async fn run_on(self: &Rc<Self>, target: usize, job: ShardJob) -> Result<(), Error> {
        if target == usize::from(self.id.0) {
            glommio::spawn_local_into(job(self.clone()), self.live)
                .expect("the live queue exists")
                .detach();
            return Ok(());
        }
        let Some(peer) = self.peers.get(target) else {
            return Err(Error::ShutDown);
        };
        match peer.sender.upgrade() {
            // A dead peer's queue is never drained (its executor is leaked, `link.rs`): the send
            // also ends when the peer's thread does.
            Some(sender) => {
                Link { sender, life: peer.life.clone() }.send_async(Request::Run(job)).await
            }
            None => Err(peer.life.error()),
        }
    }

    /// Shard `index`'s life (`None` for an index with no shard).
    pub(crate) fn peer_life(&self, index: usize) -> Option<Arc<link::Life>> {
        self.peers.get(index).map(|peer| peer.life.clone())
    }

    /// Returns once shard `index`'s thread has ended (never, for an index with no shard). A range
    /// task folding for another shard stops when that shard dies: nobody will merge its result.
    pub(crate) async fn peer_gone(&self, index: usize) {
        match self.peers.get(index) {
            Some(peer) => peer.life.gone().await,
            None => std::future::pending().await,
        }
    }

    /// Waits for what a job run on shard `target` sends back through `receiver`; `None` once the
    /// job's sender is dropped or the target's thread ended without sending (a dead shard never
    /// drops what its tasks hold, so the channel alone would wait forever).
    pub(crate) async fn recv_from<T>(
        &self,
        target: usize,
        receiver: &flume::Receiver<T>,
    ) -> Option<T> {
        let Some(peer) = self.peers.get(target) else {
            return receiver.recv_async().await.ok();
        };
        let item = async { receiver.recv_async().await.ok() };
        let gone = async {
            peer.life.gone().await;
            None
        };
        match futures_lite::future::or(item, gone).await {
            Some(item) => Some(item),
            None => receiver.try_recv().ok(),
        }
    }
}

/// The body of a shard's executor thread: creates the task queues, serves requests until
/// `Shutdown`, then closes every log (flush, sync).
pub(crate) async fn run(
    id: ShardId,
    config: Arc<EngineConfig>,
    requests: flume::Receiver<Request>,
    peers: Vec<Peer>,
) {
    let executor = glommio::executor();
    let placement = iowq::Placement::from_env();
    match iowq::place_workers(placement) {
        iowq::IoWorkers::Moved(cpus) => {
            tracing::debug!(shard = id.0, ?cpus, ?placement, "io_uring workers placed")
        }
        iowq::IoWorkers::Unchanged => {}
        iowq::IoWorkers::Refused(errno) => tracing::warn!(shard = id.0, errno,
            "could not move io_uring workers off the shard's CPU; live writes may wait behind replay"),
    }
    if let Some(slice) = config.replay.kernel_slice {
        match slice::set(slice) {
            slice::Slice::Set(now) => tracing::debug!(shard = id.0, ?now, "scheduler slice set"),
            slice::Slice::Unchanged => {}
            slice::Slice::Refused(errno) => {
                tracing::warn!(
                    shard = id.0,
                    errno,
                    "could not set the shard thread's scheduler slice"
                )
            }
        }
    }
    // What this shard's clients see (`client`), recorded by their producer handles.
    let client = peers[id.0 as usize].life.client.clone();
    let replay_control =
        Rc::new(ReplayControl::new(config.replay, config.live_latency_budget, client));
    // The live queue's latency requirement is the preempt timer (a fifth of the budget, at
    // least 100 µs), not the budget itself: glommio arms its preempt timer with the smallest
    // requirement of the active queues and runs no task once it has fired, so a budget of a
    // few nanoseconds (every window over it) left the executor polling I/O forever without
    // running a task (a 1 ns budget hung `create_topic`).
    let live = executor.create_task_queue(
        Shares::Static(1000),
        Latency::Matters(config.preempt_timer()),
        "live",
    );
    // Replay's shares move with the live-latency controller (`replay.rs`).
    let replay = executor.create_task_queue(
        Shares::Dynamic(replay_control.shares()),
        Latency::NotImportant,
        "replay",
    );
    let maintenance =
        executor.create_task_queue(Shares::Static(50), Latency::NotImportant, "maintenance");
    kappa_storage::pool::configure(config.write_buffer_pool);
    let shard = Rc::new(Shard {
        id,
        config: config.clone(),
        partitions: RefCell::new(BTreeMap::new()),
        views: RefCell::new(BTreeMap::new()),
        subscriptions: RefCell::new(Vec::new()),
        tail_marks: RefCell::new(BTreeMap::new()),
        counters: RefCell::new(Counters {
            records_appended: 0,
            bytes_appended: 0,
            batches_appended: 0,
            appends_in_flight: 0,
            append_ack_latency_ns: hdrhistogram::Histogram::new_with_bounds(100, 60_000_000_000, 2)
                .expect("static histogram bounds are valid"),
            tail_delivery_latency_ns: hdrhistogram::Histogram::new_with_bounds(
                100,
                60_000_000_000,
                2,
            )
            .expect("static histogram bounds are valid"),
            executor_stall_ns: hdrhistogram::Histogram::new_with_bounds(1_000, 60_000_000_000, 2)
                .expect("static histogram bounds are valid"),
            closed_fsync_count: 0,
        }),
        live,
        replay,
        maintenance,
        request_queue: requests,
        stopping: Cell::new(false),
        peers,
        replay_control,
        staging: RefCell::new(accumulate::Staging::default()),
        append_permits: Rc::new(glommio::sync::Semaphore::new(config.appends_in_flight_max as u64)),
        opens: Rc::new(glommio::sync::Semaphore::new(config.open_concurrency as u64)),
    });
    let control = {
        let stopping = shard.clone();
        let control =
            replay::control_loop(shard.replay_control.clone(), move || stopping.stopping.get());
        glommio::spawn_local_into(control, live).expect("the live queue exists")
    };
    let retention = glommio::spawn_local_into(retention_loop(shard.clone()), maintenance)
        .expect("the maintenance queue exists");
    let heartbeat =
        glommio::spawn_local_into(heartbeat(), maintenance).expect("the maintenance queue exists");
    let probe = shard.config.stall_probe_interval.map(|interval| {
        glommio::spawn_local_into(stall_probe(shard.clone(), interval), live)
            .expect("the live queue exists")
    });
    let idle_flusher = glommio::spawn_local_into(accumulate::idle_flusher(shard.clone()), live)
        .expect("the live queue exists");
    let serve =
        glommio::spawn_local_into(serve(shard.clone()), live).expect("the live queue exists");
    serve.await;
    drop(idle_flusher);
    drop(retention);
    drop(heartbeat);
    drop(control);
    drop(probe);
}

/// Before an append that does not come through the request loop (a Kafka produce): whether it
/// must first wait for a request of the topic being staged (`staging_finished`) or append the
/// staged rest of a request whose first records are in the log already (`flush_staged`).
/// Checked after the caller's last await, so nothing is staged between the check and its append.
pub(crate) fn split_part(shard: &Shard, topic: &str, partition: u32) -> SplitPart {
    accumulate::split_part(shard, topic, partition)
}

pub(crate) use accumulate::{SplitPart, Turn};

/// Resolves once no request of `topic` is being staged (see `split_part`).
pub(crate) async fn staging_finished(shard: &Shard, topic: &str) {
    accumulate::staging_finished(shard, topic).await
}

/// Appends what is staged for the partition (see `split_part`).
pub(crate) async fn flush_staged(shard: &Rc<Shard>, topic: &Arc<str>, partition: u32) {
    accumulate::flush_before_append(shard, topic, partition).await
}

async fn shutdown(shard: &Rc<Shard>) -> Result<(), Error> {
    // Opens still running finish first; staged records are appended (their senders wait).
    let _ = shard.opens.acquire(shard.config.open_concurrency as u64).await;
    accumulate::flush_all(shard).await;
    shard.stopping.set(true);
    let views: Vec<_> = std::mem::take(&mut *shard.views.borrow_mut()).into_values().collect();
    for (vp, log) in views {
        vp.stopped.set(true);
        view_runner::final_checkpoint(&log, &vp).await;
    }
    let logs: Vec<Rc<PartitionLog>> = std::mem::take(&mut *shard.partitions.borrow_mut())
        .into_values()
        .flat_map(BTreeMap::into_values)
        .collect();
    let mut first_error = None;
    for log in logs {
        if let Err(e) = log.close().await {
            tracing::error!(shard = shard.id.0, dir = %log.dir().display(), error = %e, "closing a partition failed");
            first_error.get_or_insert(Error::from(e));
        }
    }
    first_error.map_or(Ok(()), Err)
}
