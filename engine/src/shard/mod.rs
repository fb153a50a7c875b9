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
pub(crate) mod slice;
mod stats;
mod tail;
mod upkeep;
mod views;

#[cfg(test)]
mod serve_tests;

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

async fn serve(shard: Rc<Shard>) {
    loop {
        // A yield point between requests: when requests keep coming (the next one queued
        // before this loop looks), `recv_async` is always ready and this task would serve them
        // all in one poll, so glommio, which preempts only between polls, never weighs the
        // live queue's shares against replay's (replay's minimum rate) or the maintenance
        // queue's. `serve_tests::a_request_loop_that_never_runs_dry_leaves_replay_its_share`.
        glommio::yield_if_needed().await;
        // Staged batches whose linger ran out go once the requests queued at that moment are
        // staged (`accumulate::flush_expired`).
        if accumulate::has_due(&shard) {
            accumulate::flush_expired(&shard).await;
            continue;
        }
        let Ok(request) = shard.request_queue.recv_async().await else { break };
        accumulate::took_request(&shard);
        match request {
            Request::Append { sent, topic, partition, payload, durability, reply } => {
                shard.replay_control.record_queue(sent.elapsed().as_nanos() as u64);
                let Some(log) = shard.log(&topic, partition) else {
                    let _ = reply.send(Err(Error::UnknownTopic { topic: topic.to_string() }));
                    continue;
                };
                if let Some(delay) = shard.config.append_delay {
                    glommio::timer::sleep(delay).await;
                }
                accumulate::flush_before_append(&shard, &topic, partition).await;
                log.reserve().await;
                let Ok(permit) = shard.append_permits.clone().acquire_static_permit(1).await else {
                    break;
                };
                let done = Box::new(move |result| {
                    let _ = reply.send(result);
                });
                drop(append(&shard, log, &topic, partition, payload, durability, permit, done));
            }
            Request::Stage(stage) => {
                if let Some(delay) = shard.config.append_delay {
                    glommio::timer::sleep(delay).await;
                }
                accumulate::stage(&shard, stage).await;
            }
            Request::Flush { reply } => {
                accumulate::flush_all(&shard).await;
                let _ = reply.send(Ok(()));
            }
            Request::Open { topic, partition, config, reply } => {
                // Opens run in parallel (a reopen of thousands of partitions is mostly waiting
                // for small reads and fsyncs), at most `open_concurrency` at once.
                let Ok(permit) = shard.opens.clone().acquire_static_permit(1).await else {
                    break;
                };
                let task_shard = shard.clone();
                let task = async move {
                    let result = open_partition(&task_shard, topic, partition, config).await;
                    let _ = reply.send(result);
                    drop(permit);
                };
                glommio::spawn_local_into(task, shard.live)
                    .expect("the live queue exists")
                    .detach();
            }
            Request::Subscribe { topic, partition, seek, sink, state, reply } => {
                let Some(log) = shard.log(&topic, partition) else {
                    let _ = reply.send(Err(Error::UnknownTopic { topic: topic.to_string() }));
                    continue;
                };
                match log.reader(seek) {
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                    Ok(reader) => {
                        state.start(reader.next_offset(), log.readable_end_offset());
                        shard.subscriptions.borrow_mut().push(state.clone());
                        let marks = shard
                            .tail_marks
                            .borrow_mut()
                            .entry(topic.clone())
                            .or_default()
                            .entry(partition)
                            .or_default()
                            .clone();
                        let task = subscription(shard.clone(), log, reader, sink, state, marks);
                        glommio::spawn_local_into(task, shard.live)
                            .expect("the live queue exists")
                            .detach();
                        let _ = reply.send(Ok(()));
                    }
                }
            }
            Request::Offsets { topic, partition, reply } => {
                let result = match shard.log(&topic, partition) {
                    Some(log) => Ok(partition_metrics(&topic, partition, &log)),
                    None => Err(Error::UnknownTopic { topic: topic.to_string() }),
                };
                let _ = reply.send(result);
            }
            Request::Close { topic, partition, reply } => {
                let log = {
                    let mut partitions = shard.partitions.borrow_mut();
                    let log = partitions.get_mut(&*topic).and_then(|p| p.remove(&partition));
                    accumulate::fail_staged(&shard, &topic, partition);
                    if partitions.get(&*topic).is_some_and(BTreeMap::is_empty) {
                        partitions.remove(&*topic);
                        shard.staging.borrow_mut().forget(&topic);
                    }
                    log
                };
                let result = match log {
                    // Tail subscriptions wake up on `closing` and end.
                    Some(log) => {
                        let closed = log.close().await.map_err(Error::from);
                        shard.counters.borrow_mut().closed_fsync_count += log.stats().fsync_count;
                        closed
                    }
                    None => Ok(()),
                };
                let _ = reply.send(result);
            }
            Request::Run(job) => {
                let future = job(shard.clone());
                glommio::spawn_local_into(future, shard.live)
                    .expect("the live queue exists")
                    .detach();
            }
            Request::Metrics { reply } => {
                let _ = reply.send(Ok(metrics(&shard)));
            }
            Request::Watch { reply } => {
                views::watch_views(&shard);
                let _ = reply.send(Ok(()));
            }
            Request::StartView { version, partition, reply } => {
                let _ = reply.send(views::start_view(&shard, version, partition).await);
            }
            Request::Retention { reply } => {
                let _ = reply.send(apply_retention(&shard).await);
            }
            Request::QueryView { view, version, partition, query, reply } => {
                let result = match shard.views.borrow().get(&(view.clone(), version, partition)) {
                    Some((vp, _)) => Ok(query.run(&vp.state.borrow())),
                    None => Err(Error::UnknownView { view: view.to_string(), version }),
                };
                let _ = reply.send(result);
            }
            Request::ViewProgress { view, version, partition, digest, reply } => {
                let result = match shard.views.borrow().get(&(view.clone(), version, partition)) {
                    Some((vp, log)) => {
                        let progress = vp.progress(log, shard.replay_control.metrics());
                        let digest = digest.then(|| {
                            probe!(vp.version, p => p.digest());
                            vp.state.borrow().digest()
                        });
                        Ok((progress, digest))
                    }
                    None => Err(Error::UnknownView { view: view.to_string(), version }),
                };
                let _ = reply.send(result);
            }
            Request::DropView { view, version, reply } => {
                let mut dropped = Vec::new();
                {
                    let mut views = shard.views.borrow_mut();
                    let doomed: Vec<_> = views
                        .keys()
                        .filter(|(v, n, _)| *v == view && *n == version)
                        .cloned()
                        .collect();
                    for key in doomed {
                        if let Some((vp, _)) = views.remove(&key) {
                            vp.stopped.set(true);
                            vp.activity.set(view_runner::Activity::Stopped);
                            dropped.push(vp);
                        }
                    }
                }
                // A checkpoint being written in the background finishes before the reply, and
                // none starts after it (the slot's unit is taken for good): the caller removes
                // the version's directory next, and a late checkpoint would bring it back, for
                // a later version of the same number to resume from.
                glommio::spawn_local(async move {
                    for vp in &dropped {
                        let _ = vp.checkpoint_slot.acquire(1).await;
                    }
                    let _ = reply.send(Ok(()));
                    // Freeing a large state (hundreds of thousands of groups, each its own
                    // allocations) took 8 ms of the live queue in `kappa-bench mixed`: the
                    // groups are freed on the blocking pool instead. The version is stopped and
                    // its checkpoints are done, so nothing reads them any more.
                    let groups: Vec<_> = dropped
                        .iter()
                        .map(|vp| std::mem::take(&mut vp.state.borrow_mut().groups))
                        .collect();
                    if groups.iter().any(|g| !g.is_empty()) {
                        #[cfg(any(test, feature = "test-hooks"))]
                        let (probes, shard_thread) = (
                            dropped.iter().map(|vp| vp.version.probes.clone()).collect::<Vec<_>>(),
                            std::thread::current().id(),
                        );
                        let _ = glommio::executor()
                            .spawn_blocking(move || {
                                drop(groups);
                                #[cfg(any(test, feature = "test-hooks"))]
                                probes.iter().for_each(|p| p.record_freed(shard_thread));
                            })
                            .await;
                    }
                })
                .detach();
            }
            Request::Shutdown { reply } => {
                let result = shutdown(&shard).await;
                let _ = reply.send(result);
                return;
            }
            #[cfg(feature = "fault-injection")]
            Request::Panic { message } => panic!("{message}"),
        }
    }
    // Every sender is gone without a Shutdown (the engine was dropped): close cleanly anyway.
    let _ = shutdown(&shard).await;
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

/// What to do with an append's acknowledgement once its durability is reached.
pub(crate) type AppendDone = Box<dyn FnOnce(Result<BatchAck, Error>)>;

/// Assigns offsets now (arrival order), then waits for durability in its own task. Returns the
/// payload, whose bytes the log has copied (the accumulator reuses its buffers).
#[allow(clippy::too_many_arguments)] // One call's worth of context, used once each.
fn append(
    shard: &Rc<Shard>,
    log: Rc<PartitionLog>,
    topic: &str,
    partition: u32,
    payload: Payload,
    durability: Durability,
    permit: glommio::sync::StaticPermit,
    done: AppendDone,
) -> Payload {
    #[allow(clippy::disallowed_methods)] // Ack latency is observability, never a decision.
    let started = std::time::Instant::now();
    let now_ms = shard.config.clock.now_ms();
    // The payload is read in place: its bytes are copied once, into the log's write buffer.
    let producer = ProducerInfo::default();
    let (appended, records, bytes) = match &payload {
        Payload::Records(records) => (
            log.append_records(
                &Stamped { records: &records[..], now_ms },
                producer,
                durability,
                now_ms,
            ),
            records.len() as u64,
            records
                .iter()
                .map(|r| {
                    r.key.as_ref().map_or(0, Vec::len)
                        + r.value.len()
                        + r.headers
                            .iter()
                            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                            .sum::<usize>()
                })
                .sum::<usize>() as u64,
        ),
        Payload::Batch(batch) => (
            log.append_records(&Stamped { records: batch, now_ms }, producer, durability, now_ms),
            batch.len() as u64,
            batch.data_len() as u64,
        ),
    };
    let ticket = match appended {
        Ok(ticket) => ticket,
        Err(e) => {
            done(Err(e.into()));
            return payload;
        }
    };
    // A followed partition remembers when the shard took this append (`tail`).
    if let Some(marks) = shard.tail_marks.borrow().get(topic).and_then(|t| t.get(&partition)) {
        let info = ticket.info;
        marks.borrow_mut().push(info.base_offset, info.last_offset + 1, started);
    }
    {
        let mut counters = shard.counters.borrow_mut();
        counters.records_appended += records;
        counters.bytes_appended += bytes;
        counters.batches_appended += 1;
        counters.appends_in_flight += 1;
    }
    let live = shard.live;
    let shard = shard.clone();
    let task = async move {
        let result = log.wait(ticket).await;
        {
            let mut counters = shard.counters.borrow_mut();
            counters.appends_in_flight -= 1;
            if counters.appends_in_flight == 0 {
                // The idle flusher waits for this (`accumulate::idle_flusher`).
                shard.staging.borrow().ripe_event.notify();
            }
            let ns = started.elapsed().as_nanos() as u64;
            counters.append_ack_latency_ns.saturating_record(ns);
            shard.replay_control.record_live(ns);
        }
        let ack = result
            .map(|info| BatchAck {
                partition,
                base_offset: info.base_offset,
                last_offset: info.last_offset,
            })
            .map_err(Error::from);
        done(ack);
        drop(permit);
    };
    glommio::spawn_local_into(task, live).expect("the live queue exists").detach();
    payload
}

async fn open_partition(
    shard: &Rc<Shard>,
    topic: Arc<str>,
    partition: u32,
    config: LogConfig,
) -> Result<kappa_storage::RecoveryReport, Error> {
    if shard.log(&topic, partition).is_some() {
        return Ok(kappa_storage::RecoveryReport::default());
    }
    let dir = kappa_storage::paths::partition_dir(&shard.config.data_dir, &topic, partition);
    let log = PartitionLog::open(&dir, config).await?;
    let recovery = log.recovery().clone();
    tracing::debug!(
        shard = shard.id.0, topic = %topic, partition, end_offset = log.end_offset(),
        segments = recovery.segment_count, truncated_bytes = recovery.truncated_bytes,
        "partition opened"
    );
    shard.partitions.borrow_mut().entry(topic).or_default().insert(partition, Rc::new(log));
    Ok(recovery)
}

/// Follows a partition for one consumer: reads zero-copy on the shard, sends each batch as one
/// owned copy, and sleeps on the log's readable event when caught up (woken, not polled). Once it
/// has caught up, each batch handed to the consumer is a tail-delivery latency sample (`tail`).
async fn subscription(
    shard: Rc<Shard>,
    log: Rc<PartitionLog>,
    mut reader: kappa_storage::LogReader,
    sink: flume::Sender<Result<OwnedBatch, Error>>,
    state: Arc<SubscriptionState>,
    marks: Rc<RefCell<tail::TailMarks>>,
) {
    let mut at_tail = false;
    loop {
        let next = match reader.next_batch().await {
            Ok(Some(read)) => {
                Some((Ok(OwnedBatch::copy_of(&read.batch, read.first_offset)), read.first_offset))
            }
            Ok(None) => None,
            Err(e) => Some((Err(Error::from(e)), 0)),
        };
        state.publish_end(log.readable_end_offset());
        match next {
            Some((item, first_offset)) => {
                let failed = item.is_err();
                if sink.send_async(item).await.is_err() || failed {
                    break;
                }
                if let Some(taken) = marks.borrow().taken_at(first_offset).filter(|_| at_tail) {
                    let ns = taken.elapsed().as_nanos() as u64;
                    let mut counters = shard.counters.borrow_mut();
                    counters.tail_delivery_latency_ns.saturating_record(ns);
                    shard.replay_control.record_tail(ns);
                }
            }
            None => {
                at_tail = true;
                if shard.stopping.get() || log.wait_readable(reader.next_offset()).await.is_err() {
                    break;
                }
            }
        }
        if sink.is_disconnected() {
            break;
        }
    }
    shard.subscriptions.borrow_mut().retain(|s| !Arc::ptr_eq(s, &state));
    // The last follower of the partition takes its marks away (the map holds the other count).
    if Rc::strong_count(&marks) == 2 {
        let mut all = shard.tail_marks.borrow_mut();
        if let Some(topic) = all.get_mut(&*state.topic) {
            if topic.get(&state.partition).is_some_and(|m| Rc::ptr_eq(m, &marks)) {
                topic.remove(&state.partition);
            }
            if topic.is_empty() {
                all.remove(&*state.topic);
            }
        }
    }
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
