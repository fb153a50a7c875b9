//! loom models of the engine's cross-thread structures (`cfg(loom)`, run by `.ci/run`): the
//! served view version's swap against queries and a concurrent drop, a shard's death and the
//! engine's shutdown against the threads waiting on views, a consumer waiting on a shard that
//! sends and dies (with the `SubscriptionState` gauges it shares with the shard), and the
//! cancellation of a rebuild's range tasks. The notifier under the view waits has its own models
//! in `view/wait.rs`.
//!
//! Every model drives the production code: `Version::partition_caught_up` (the last partition of
//! a rebuild catching up and the swap), `ViewHandle::{version, version_def, wait_for}`,
//! `Rebuild::wait_swapped`, `Engine::drop_view_version`, `Engine::shutdown`,
//! `link::Alive::exit` (a shard thread's end), `Consumer::next_batch` (`Link::recv`, whose
//! flume selector is polled under loom), `SubscriptionState` and `split::RangeCancel`. Their atomics, mutexes and condvar are loom's here
//! (`crate::sync`), so loom explores every interleaving and the values a weak memory order
//! allows; a waiter that is never woken is a deadlock loom reports. The engine under them has no
//! shard threads (`Engine::for_loom`): what needs a running shard (queries' per-partition
//! answers, flume channels, which park the OS thread) is outside these models.
//!
//! **Consumer wake-ups: what is and is not modelled.** A consumer's wait (`Link::recv`, which
//! every call's reply wait shares) is a flume `Selector` over its batch channel and the shard's
//! `gone` channel, parking the OS thread inside flume. Under loom, `Link::wait_item` polls the
//! same two channels instead (`try_recv`, `loom::thread::yield_now` between polls). Modelled:
//! everything of ours around the wait, against every interleaving with the shard thread: the
//! order `gone` and the batch channel are looked at, `after_gone` taking a batch sent before the
//! death, `died` set before `gone` disconnects (so `ShardDied`, not `ShutDown`), and the
//! `SubscriptionState` gauges. Not modelled: the real wait, i.e. that flume's blocked selector is
//! woken by a send or by the `gone` sender's drop. A poll loop cannot miss a wake-up, so a lost
//! wake-up in the blocking path would pass these models; that path is flume's (its own tests),
//! and ours is exercised with real threads by `embedded::every_call_on_a_dead_shard_returns_shard_died`
//! (a consumer blocked in `next_batch` woken by its shard's death) and by every consumer test
//! (woken by a batch). Why not a wait of our own that loom can run (`crate::sync::Condvar`): the
//! same channel is awaited from async code (`recv_async`) and fed by the shard's glommio tasks
//! with `send_async`, whose backpressure must suspend a task, never block the shard thread; a
//! replacement would be a bounded channel with both a condvar side and a waker side, a lock
//! taken per batch by the shard and the consumer, and a select over two of them: flume's whole
//! job, rewritten, on the delivery path of every batch and reply. Not worth its risk for what
//! the model would gain.
//!
//! Run: `RUSTFLAGS="--cfg loom -C target-cpu=x86-64-v3" CARGO_TARGET_DIR=target/loom \
//! cargo test -p kappa-engine --lib loom_models`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use kappa_storage::io::{Disk, SimDisk};

use crate::config::{EngineConfig, TopicConfig};
use crate::consumer::Consumer;
use crate::engine::TopicMeta;
use crate::shard::link::{self, Link};
use crate::shard::SubscriptionState;
use crate::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use crate::sync::Mutex;
use crate::view::split::{CancelOnDrop, RangeCancel};
use crate::view::{self, Entry, Rebuild, Version, ViewDef, ViewHandle};
use crate::{Engine, Error, Offsets};

/// Explores `f` with at most `preemptions` preemptions per execution: enough for the
/// interleavings these bugs need (a check, a publish, a registration, a notify), and minutes
/// fewer than an unbounded search of three threads.
fn model(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    // `LOOM_MAX_PREEMPTIONS` (read by `Builder::new`) overrides the bound for a deeper search.
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(preemptions);
    }
    builder.check(f);
}

/// A view `v` over topic `t` (one partition): version 1 served and caught up, version 2 a
/// rebuild still replaying. Metadata goes to a simulated disk (no files, no fsync cost).
struct Fixture {
    engine: Engine,
    entry: Arc<Entry>,
}

impl Fixture {
    fn new(links: Vec<Link>) -> Fixture {
        let disk = Disk::Sim(SimDisk::new(7));
        let mut config = EngineConfig::new("/loom");
        config.log.disk = disk.clone();
        config.watchdog.enabled = false;
        let entry = Arc::new(Entry {
            topic: "t".to_string(),
            served: AtomicU32::new(1),
            swaps: AtomicU64::new(0),
            versions: Mutex::new(BTreeMap::new()),
            history: Mutex::new(BTreeMap::from([(1, "r1".to_string()), (2, "r2".to_string())])),
            failed: Mutex::new(BTreeMap::new()),
            dir: "/loom/views/v".into(),
            disk,
            notifier: view::wait::Notifier::default(),
        });
        for (number, caught_up) in [(1, true), (2, false)] {
            let version = Arc::new(Version {
                view: Arc::from("v"),
                number,
                def: Arc::new(ViewDef::new("t")),
                partitions: 1,
                caught_up: AtomicU32::new(u32::from(caught_up)),
                entry: entry.clone(),
                dir: entry.dir.join(number.to_string()),
                folded: Box::new([CachePadded::new(AtomicU64::new(0))]),
                failure: Mutex::new(None),
                failure_unrecorded: Mutex::new(None),
                swap_unrecorded: Mutex::new(None),
                topic_incarnation: 1,
                prior_shape: None,
                outcome: AtomicU8::new(if caught_up { view::SERVED } else { view::BUILDING }),
                dropped: AtomicBool::new(false),
                #[cfg(any(test, feature = "test-hooks"))]
                probes: Default::default(),
            });
            entry.versions.lock().expect("versions").insert(number, version);
        }
        let topic = TopicMeta {
            name: Arc::from("t"),
            config: TopicConfig::new(1),
            shards: vec![0],
            incarnation: 1,
        };
        let engine =
            Engine::for_loom(config, links, vec![topic], vec![("v".into(), entry.clone())]);
        Fixture { engine, entry }
    }

    fn handle(&self) -> ViewHandle {
        ViewHandle::new(self.engine.inner.clone(), Arc::from("v"), self.entry.clone())
    }

    fn version(&self, number: u32) -> Arc<Version> {
        self.entry.versions.lock().expect("versions")[&number].clone()
    }

    fn rebuild(&self) -> Rebuild {
        Rebuild::new(self.engine.inner.clone(), Arc::from("v"), self.entry.clone(), self.version(2))
    }
}

impl Drop for Fixture {
    /// Versions and their entry point at each other (as in the engine, until a version is
    /// dropped): break the cycle so each execution frees what it made.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        self.entry.versions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }
}

/// The shard's side of a swap: the last partition of version 2 catches up.
fn catch_up(version: Arc<Version>) -> loom::thread::JoinHandle<()> {
    loom::thread::spawn(move || loom::future::block_on(version.partition_caught_up()))
}

/// A query racing the swap reads the served version once and finds it registered and whole:
/// the old version, or the new one with every partition caught up, never a half-built one.
/// Then `wait_swapped` returns only once the swap is recorded in `meta.json` (what makes an
/// acknowledged swap survive a restart).
#[test]
fn a_query_during_a_swap_sees_the_old_or_the_whole_new_version() {
    model(3, || {
        let fixture = Fixture::new(Vec::new());
        let rebuild = fixture.rebuild();
        let version_2 = fixture.version(2);
        let shard = catch_up(version_2.clone());
        let handle = fixture.handle();
        let served = handle.version();
        let version = handle.version_def(served).expect("the served version is registered");
        assert_eq!(version.number, served);
        assert!(
            version.caught_up.load(Ordering::Acquire) >= version.partitions,
            "a query saw version {served} served before all its partitions caught up"
        );
        rebuild.wait_swapped(Duration::MAX).expect("swapped");
        // The outcome turns `SERVED` after the swap's record is written (loom sees the atomic;
        // the simulated disk's own lock is invisible to it, so the file check below is only
        // what that outcome implies).
        assert_eq!(
            version_2.outcome.load(Ordering::SeqCst),
            view::SERVED,
            "wait_swapped returned before the swap was recorded"
        );
        let recorded = view::read_meta(&fixture.entry.disk, &fixture.entry.dir)
            .expect("meta.json reads")
            .map(|meta| meta.served);
        assert_eq!(recorded, Some(2), "wait_swapped returned before the swap was recorded");
        shard.join().expect("shard");
        assert_eq!(handle.version(), 2, "the rebuild was swapped in");
    });
}

/// A rebuild finishing while the user drops it: either the drop wins (the swap never serves the
/// dropped version) or the swap does (the drop is refused). Afterwards the served version is
/// registered, and `wait_swapped` ends either way.
#[test]
fn a_swap_racing_a_drop_never_serves_a_dropped_version() {
    model(2, || {
        let fixture = Fixture::new(Vec::new());
        let rebuild = fixture.rebuild();
        let shard = catch_up(fixture.version(2));
        let dropper = {
            let engine = fixture.engine.lend();
            loom::thread::spawn(move || engine.drop_view_version("v", 2))
        };
        let waited = rebuild.wait_swapped(Duration::MAX);
        shard.join().expect("shard");
        let dropped = dropper.join().expect("dropper");
        let handle = fixture.handle();
        let served = handle.version();
        assert!(
            handle.version_def(served).is_ok(),
            "version {served} is served but was dropped (drop: {dropped:?}, wait: {waited:?})"
        );
        match (&dropped, &waited) {
            (Ok(()), Err(Error::UnknownView { version: 2, .. })) => assert_eq!(served, 1),
            (Err(Error::Config { field: "version", .. }), Ok(())) => assert_eq!(served, 2),
            other => panic!("drop and wait disagree: {other:?}"),
        }
    });
}

/// A shard thread that dies (`Alive::exit` with its panic message) wakes every thread waiting on
/// a view, and each returns `ShardDied`.
#[test]
fn a_dying_shard_wakes_every_view_waiter() {
    model(2, || {
        let (life, alive) = link::new_life(0);
        let (sender, _requests) = flume::bounded(1);
        let fixture = Fixture::new(vec![Link { sender, life }]);
        let swap_waiter = {
            let rebuild = fixture.rebuild();
            loom::thread::spawn(move || rebuild.wait_swapped(Duration::MAX))
        };
        let shard = loom::thread::spawn(move || alive.exit(Some("boom".to_string())));
        let waited = fixture.handle().wait_for(Offsets::new().at(0, 1), Duration::MAX);
        assert!(matches!(waited, Err(Error::ShardDied { shard: 0, .. })), "{waited:?}");
        let waited = swap_waiter.join().expect("waiter");
        assert!(matches!(waited, Err(Error::ShardDied { shard: 0, .. })), "{waited:?}");
        shard.join().expect("shard");
    });
}

/// `Engine::shutdown` wakes every thread waiting on a view, and each returns `ShutDown`.
#[test]
fn shutdown_wakes_every_view_waiter() {
    model(2, || {
        let fixture = Fixture::new(Vec::new());
        let swap_waiter = {
            let rebuild = fixture.rebuild();
            loom::thread::spawn(move || rebuild.wait_swapped(Duration::MAX))
        };
        let stopper = {
            let engine = fixture.engine.lend();
            loom::thread::spawn(move || engine.shutdown())
        };
        let waited = fixture.handle().wait_for(Offsets::new().at(0, 1), Duration::MAX);
        assert!(matches!(waited, Err(Error::ShutDown)), "{waited:?}");
        let waited = swap_waiter.join().expect("waiter");
        assert!(matches!(waited, Err(Error::ShutDown)), "{waited:?}");
        stopper.join().expect("stopper").expect("shutdown");
    });
}

/// A batch of `count` records from `base`, as a consumer receives it.
fn owned_batch(base: u64, count: usize) -> kappa_storage::OwnedBatch {
    use kappa_storage::{BatchEncoder, BatchRef, Limits, ProducerInfo, Record};
    let records: Vec<Record<'_>> = (0..count).map(|_| Record::new(0, None, b"v")).collect();
    let mut encoder = BatchEncoder::new(Limits::default());
    encoder.encode(base, &records, ProducerInfo::default()).expect("encodes");
    let mut frame = rkyv::util::AlignedVec::<16>::new();
    frame.extend_from_slice(encoder.frame());
    let batch = BatchRef::from_frame(&frame).expect("valid");
    kappa_storage::OwnedBatch::copy_of(&batch, base)
}

/// A consumer waiting for its next batch while its shard sends one and dies: it receives the
/// batch (a death never loses what was sent before it), then `ShardDied` with the shard's
/// message (not `ShutDown`, and never a hang). Meanwhile the shard reads the consumer's metrics
/// as the consumer moves: its lag never wraps, its position is one the consumer had.
#[test]
fn a_consumer_gets_what_its_shard_sent_before_dying() {
    model(3, || {
        let (life, alive) = link::new_life(0);
        let (sender, _requests) = flume::bounded(1);
        let (sink, receiver) = flume::bounded(2);
        let state = Arc::new(SubscriptionState::new(Arc::from("t"), 0));
        // The subscribe request: the shard starts the subscription at offset 5 with 9
        // readable, then replies (here the thread spawn orders it).
        state.start(5, 9);
        let mut consumer = Consumer { receiver, state: state.clone(), link: Link { sender, life } };
        assert_eq!((consumer.position(), consumer.lag()), (5, 4));
        let shard = loom::thread::spawn(move || {
            // The subscription task: a record more is readable now; publish the end, send
            // records 5..7; then the thread dies (its executor is leaked, so the sink stays
            // connected: it is returned).
            state.publish_end(10);
            sink.try_send(Ok(owned_batch(5, 2))).expect("room");
            let metrics = state.metrics();
            assert!([5, 7].contains(&metrics.position) && metrics.end_offset == 10, "{metrics:?}");
            assert_eq!(metrics.lag, metrics.end_offset - metrics.position);
            alive.exit(Some("boom".to_string()));
            sink
        });
        let batch = consumer.next_batch().expect("the batch sent before the shard died");
        assert_eq!((batch.first_offset(), batch.next_offset()), (5, 7));
        assert_eq!(consumer.position(), 7);
        // 3 (the end published before the batch was sent; flume orders it, which loom does not
        // see) or 2 (the end at the start): never a wrapped lag.
        assert!([2, 3].contains(&consumer.lag()), "lag {}", consumer.lag());
        let after = consumer.next_batch().map(|b| b.next_offset());
        assert!(
            matches!(&after, Err(Error::ShardDied { shard: 0, message }) if message == "boom"),
            "{after:?}"
        );
        drop(shard.join().expect("shard"));
    });
}

/// A consumer waiting when its shard ends cleanly (the subscription task drops its sink):
/// `ShutDown`, not a hang and not `ShardDied`.
#[test]
fn a_consumer_of_a_shard_that_shuts_down_gets_shut_down() {
    model(3, || {
        let (life, alive) = link::new_life(0);
        let (sender, _requests) = flume::bounded(1);
        let (sink, receiver) = flume::bounded::<Result<kappa_storage::OwnedBatch, Error>>(2);
        let state = Arc::new(SubscriptionState::new(Arc::from("t"), 0));
        let mut consumer = Consumer { receiver, state, link: Link { sender, life } };
        let shard = loom::thread::spawn(move || {
            drop(sink);
            alive.exit(None);
        });
        let got = consumer.next_batch().map(|b| b.next_offset());
        assert!(matches!(got, Err(Error::ShutDown)), "{got:?}");
        shard.join().expect("shard");
    });
}

/// A range task of a rebuild, as `split::fold_range` runs it: before each batch it asks
/// `RangeCancel::stopped`; a batch is a yield to the model. It ends only when told to stop.
fn range_task(cancel: Arc<RangeCancel>) -> loom::thread::JoinHandle<&'static str> {
    loom::thread::spawn(move || loop {
        if let Some(reason) = cancel.stopped() {
            return reason;
        }
        loom::thread::yield_now();
    })
}

/// The user drops a version that is rebuilding: its range tasks on other shards stop, without
/// waiting for the owner (which may be waiting for one of their results).
#[test]
fn a_range_task_stops_when_its_version_is_dropped() {
    model(3, || {
        let fixture = Fixture::new(Vec::new());
        let cancel = Arc::new(RangeCancel::new(fixture.version(2), None));
        let task = range_task(cancel.clone());
        fixture.engine.drop_view_version("v", 2).expect("version 2 is not served");
        assert_eq!(task.join().expect("task"), "the view version was dropped");
    });
}

/// The owner's merge ends (here its future is dropped, the way out nobody writes a `cancel`
/// for): its range tasks stop.
#[test]
fn a_range_task_stops_when_its_owner_is_done() {
    model(3, || {
        let fixture = Fixture::new(Vec::new());
        let cancel = Arc::new(RangeCancel::new(fixture.version(2), None));
        let task = range_task(cancel.clone());
        let owner = CancelOnDrop(cancel);
        let merge = loom::thread::spawn(move || drop(owner));
        assert_eq!(task.join().expect("task"), "cancelled by its owner");
        merge.join().expect("owner");
    });
}

/// The owner's shard dies (its executor is leaked: nothing cancels): the range tasks stop.
#[test]
fn a_range_task_stops_when_its_owner_dies() {
    model(3, || {
        let fixture = Fixture::new(Vec::new());
        let (life, alive) = link::new_life(0);
        let cancel = Arc::new(RangeCancel::new(fixture.version(2), Some(life)));
        let task = range_task(cancel);
        let owner = loom::thread::spawn(move || alive.exit(Some("boom".to_string())));
        assert_eq!(task.join().expect("task"), "the owner's shard ended");
        owner.join().expect("owner");
    });
}
