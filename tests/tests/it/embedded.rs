//! kappa as the embedded ingest tier of someone else's service (issue 14), through the public API
//! only: a panic in view code fails that view and nothing else, and stays failed across restarts;
//! a shard that dies fails every call promptly; one owner per data dir; recovery's cuts reported
//! through the API; topics grown without moving keys; the async API from a tokio runtime.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kappa_engine::operator::window::ALL_TIME;
use kappa_engine::operator::{Aggregate, CustomAggregate};
use kappa_engine::router::partition_for_key;
use kappa_engine::{
    Engine, Error, OnError, ProducerRecord, RecordRef, Seek, TopicConfig, ViewDef, ViewHandle,
};

/// How long a call may take before the test calls it hung: generous, a hang detector only.
const HANG: Duration = Duration::from_secs(60);

fn engine(dir: &std::path::Path, shards: usize) -> Engine {
    Engine::builder().data_dir(dir).shards(shards).build().expect("engine starts")
}

/// A key that routes to `partition` of a topic with `partitions` key partitions.
fn key_for(partition: u32, partitions: u32) -> Vec<u8> {
    (0u32..)
        .map(|i| format!("key-{i}").into_bytes())
        .find(|k| partition_for_key(k, partitions) == partition)
        .expect("some key routes to every partition")
}

/// Sums 1 per record, and panics on a record whose value is `poison` (counting those calls).
fn poisonous(revision: &str, calls: Arc<AtomicUsize>) -> ViewDef {
    ViewDef::new("events")
        .revision(revision)
        .map(move |r: &RecordRef<'_>| {
            if r.value() == b"poison" {
                calls.fetch_add(1, Ordering::SeqCst);
                panic!("boom: a poison record");
            }
            Some(1.0)
        })
        .aggregate(Aggregate::Sum)
}

/// Ten records to every partition, the poison record to `poisoned`, ten more everywhere.
/// Returns the poison record's offset (its send is acknowledged like any other).
fn produce_with_poison(engine: &Engine, partitions: u32, poisoned: u32) -> u64 {
    let producer = engine.producer();
    let send_all = || {
        for p in 0..partitions {
            for i in 0..10 {
                let record = ProducerRecord::new(format!("v{i}")).key(key_for(p, partitions));
                producer.send("events", record).expect("send");
            }
        }
    };
    send_all();
    let ack = producer
        .send("events", ProducerRecord::new("poison").key(key_for(poisoned, partitions)))
        .expect("the record is stored and acknowledged; only the view fails on it");
    assert_eq!(ack.partition, poisoned);
    send_all();
    ack.offset
}

fn sum(view: &ViewHandle) -> Result<f64, Error> {
    Ok(view.rows()?.iter().map(|r| r.value).sum())
}

fn expect_poisoned(result: Result<impl std::fmt::Debug, Error>, partition: u32, offset: u64) {
    match result {
        Err(Error::Poisoned { partition: p, offset: o, stage, message, .. }) => {
            assert_eq!((p, o), (partition, offset));
            assert_eq!(stage, "map");
            assert!(message.contains("boom: a poison record"), "{message}");
        }
        other => panic!("expected Poisoned at {partition}/{offset}, got {other:?}"),
    }
}

/// Regression (issue 14, failure 1): a `map` that panics on one record killed shard 0's thread,
/// the send carrying it returned `ShutDown`, every later call hung, and reopening ran the record
/// again and died again. Now the view version fails (typed, with partition, offset and message,
/// in queries, progress and metrics), everything else keeps serving, and after a restart the
/// version is still failed without running the record again, until it is rebuilt.
#[test]
fn a_panicking_view_closure_fails_its_version_only_and_stays_failed_after_restart() {
    let temp = tempfile::tempdir().expect("tempdir");
    let partitions = 4;
    let poisoned = 2;
    let calls = Arc::new(AtomicUsize::new(0));
    let offset = {
        let engine = engine(temp.path(), 2);
        engine.create_topic("events", TopicConfig::new(partitions)).expect("topic");
        let sums = engine.create_view("sums", poisonous("1", calls.clone())).expect("view");
        let counts = engine
            .create_view("counts", ViewDef::new("events").aggregate(Aggregate::Count))
            .expect("view");
        let offset = produce_with_poison(&engine, partitions, poisoned);
        let end = counts.log_end().expect("log end");

        expect_poisoned(sums.wait_for(end.clone(), HANG), poisoned, offset);
        // The failure is durable before anyone can see it: a shutdown (or a power cut) right
        // after `Poisoned` still keeps the record from running again.
        let stored = kappa_engine::stored_view(&kappa_storage::io::Disk::Dma, temp.path(), "sums")
            .expect("read")
            .expect("stored");
        assert_eq!(stored.failed.get(&1).and_then(|f| f.offset), Some(offset), "{stored:?}");
        expect_poisoned(sums.rows(), poisoned, offset);
        expect_poisoned(sums.get(b"key-0", 0), poisoned, offset);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let progress = sums.progress().expect("progress of a failed version");
        for p in &progress.partitions {
            if p.partition == poisoned {
                let failure = p.failure.as_ref().expect("the failed partition says why");
                assert_eq!((failure.partition, failure.offset), (poisoned, Some(offset)));
                assert!(p.error.as_deref().unwrap_or("").contains("boom"), "{p:?}");
            } else {
                assert_eq!(p.failure, None);
            }
        }
        let metrics = engine.metrics().expect("metrics");
        let failed: Vec<_> = metrics
            .iter()
            .flat_map(|m| &m.views)
            .filter(|v| v.view == "sums" && v.failure.is_some())
            .map(|v| v.partition)
            .collect();
        assert_eq!(failed, vec![poisoned]);

        // Everything else keeps serving: the other view, sends to every partition, admin.
        counts.wait_for(end, HANG).expect("the other view folds everything");
        assert_eq!(sum(&counts).expect("rows"), f64::from(partitions * 20 + 1));
        for p in 0..partitions {
            engine
                .producer()
                .send("events", ProducerRecord::new("after").key(key_for(p, partitions)))
                .expect("sends after the panic");
        }
        engine.create_topic("other", TopicConfig::new(2)).expect("create_topic");
        engine.shutdown().expect("a clean shutdown");
        offset
    };

    // Reopen: the failure was recorded; the record is not run again.
    let engine = engine(temp.path(), 2);
    let stored = kappa_engine::stored_view(&kappa_storage::io::Disk::Dma, temp.path(), "sums")
        .expect("read")
        .expect("stored");
    assert_eq!(stored.failed[&1].offset, Some(offset));
    let again = Arc::new(AtomicUsize::new(0));
    let sums = engine.create_view("sums", poisonous("1", again.clone())).expect("resume");
    let counts = engine
        .create_view("counts", ViewDef::new("events").aggregate(Aggregate::Count))
        .expect("view");
    let end = counts.log_end().expect("log end");
    counts.wait_for(end.clone(), HANG).expect("the other view resumes");
    expect_poisoned(sums.rows(), poisoned, offset);
    // The healthy partitions of the failed version resume and fold to the end: the shards ran
    // their replay, and the poison record's partition stayed where it stopped.
    let mut looks = 0;
    let progress = loop {
        looks += 1;
        assert!(looks < 3_000, "the healthy partitions did not resume");
        let progress = sums.progress().expect("progress");
        let others_done =
            progress.partitions.iter().filter(|p| p.partition != poisoned).all(|p| {
                p.next_offset == end.iter().find(|(q, _)| *q == p.partition).expect("p").1
            });
        if others_done {
            break progress;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let held = &progress.partitions[poisoned as usize];
    assert!(held.next_offset <= offset + 1, "{held:?}");
    assert_eq!(held.failure.as_ref().and_then(|f| f.offset), Some(offset));
    assert_eq!(again.load(Ordering::SeqCst), 0, "the poison record ran again after a restart");

    // A rebuild with a fixed definition replaces it; dropping the failed version forgets it.
    let fixed = ViewDef::new("events")
        .revision("2")
        .map(|r: &RecordRef<'_>| if r.value() == b"poison" { None } else { Some(1.0) })
        .aggregate(Aggregate::Sum);
    let rebuild = engine.rebuild_view("sums", fixed).expect("rebuild");
    rebuild.wait_swapped(HANG).expect("the fixed version swaps in");
    sums.wait_for(end, HANG).expect("fixed version folds everything");
    assert_eq!(sum(&sums).expect("rows"), f64::from(partitions * 21));
    engine.drop_view_version("sums", 1).expect("drop the failed version");
    let stored = kappa_engine::stored_view(&kappa_storage::io::Disk::Dma, temp.path(), "sums")
        .expect("read")
        .expect("stored");
    assert!(stored.failed.is_empty(), "{stored:?}");
}

/// `OnError::Skip`: the record is skipped and counted (`Counters::panicked`) in progress and
/// metrics, and the view goes on.
#[test]
fn the_skip_policy_counts_records_whose_closure_panicked() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path(), 2);
    let partitions = 3;
    engine.create_topic("events", TopicConfig::new(partitions)).expect("topic");
    let calls = Arc::new(AtomicUsize::new(0));
    let def = poisonous("1", calls.clone()).on_error(OnError::Skip);
    let sums = engine.create_view("sums", def).expect("view");
    produce_with_poison(&engine, partitions, 1);
    sums.wait_for(sums.log_end().expect("end"), HANG).expect("skips and goes on");
    assert_eq!(sum(&sums).expect("rows"), f64::from(partitions * 20));
    let progress = sums.progress().expect("progress");
    assert_eq!(progress.partitions.iter().map(|p| p.counters.panicked).sum::<u64>(), 1);
    assert_eq!(progress.partitions[1].counters.panicked, 1);
    assert!(progress.partitions.iter().all(|p| p.failure.is_none()));
    let metrics = engine.metrics().expect("metrics");
    let panicked: u64 = metrics.iter().flat_map(|m| &m.views).map(|v| v.counters.panicked).sum();
    assert_eq!(panicked, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A custom aggregate that panics may have half updated its group: the version fails even
/// under `OnError::Skip`, naming the aggregate.
#[test]
fn a_panicking_custom_aggregate_fails_the_version_even_when_skipping() {
    struct Fragile;
    impl CustomAggregate for Fragile {
        fn init(&self) -> Vec<u8> {
            vec![0]
        }
        fn update(&self, state: &mut Vec<u8>, record: &RecordRef<'_>, _: Option<f64>) {
            state[0] = state[0].wrapping_add(1);
            assert!(record.value() != b"poison", "fragile aggregate");
        }
        fn merge(&self, into: &mut Vec<u8>, other: &[u8]) {
            into[0] = into[0].wrapping_add(other[0]);
        }
        fn result(&self, state: &[u8]) -> f64 {
            f64::from(state[0])
        }
    }
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path(), 1);
    engine.create_topic("events", TopicConfig::new(2)).expect("topic");
    let def = ViewDef::new("events")
        .aggregate(Aggregate::Custom(Arc::new(Fragile)))
        .on_error(OnError::Skip);
    let view = engine.create_view("fragile", def).expect("view");
    let offset = produce_with_poison(&engine, 2, 0);
    match view.wait_for(view.log_end().expect("end"), HANG) {
        Err(Error::Poisoned { partition: 0, offset: o, stage, .. }) => {
            assert_eq!((o, stage.as_str()), (offset, "custom aggregate"));
        }
        other => panic!("expected Poisoned, got {other:?}"),
    }
    engine.producer().send("events", ProducerRecord::new("x")).expect("the shard lives");
}

/// Runs `f` on a thread and returns its result; if it takes longer than `HANG` (a hang
/// detector: a call that waits on a dead shard forever), says so and ends the test process,
/// since unwinding would hang too (dropping the engine shuts it down, which would wait on the
/// same dead shard).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(f());
    });
    receiver.recv_timeout(HANG).unwrap_or_else(|_| {
        eprintln!("{what} did not return within {HANG:?}: it hangs");
        std::process::exit(101)
    })
}

fn expect_died<T: std::fmt::Debug>(what: &str, result: Result<T, Error>, dead: u16) {
    match result {
        Err(Error::ShardDied { shard, message }) => {
            assert_eq!(shard, dead, "{what}");
            assert!(message.contains("injected"), "{what}: {message}");
        }
        other => panic!("{what}: expected ShardDied, got {other:?}"),
    }
}

/// Regression (issue 14, failure 1, the hang): after shard 0's thread died, sends to its
/// partitions, queries of every view, `metrics()`, `create_topic` and `shutdown()` hung forever.
/// Now a shard killed by a panic outside user code fails every pending and later call that needs
/// it with `ShardDied` (not `ShutDown`), promptly; the other shard keeps serving its partitions.
#[test]
fn every_call_on_a_dead_shard_returns_shard_died() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(engine(temp.path(), 2));
    let partitions = 8;
    engine.create_topic("events", TopicConfig::new(partitions)).expect("topic");
    let on = |shard: u16| {
        (0..partitions).find(|p| engine.shard_of("events", *p).0 == shard).expect("a partition")
    };
    let (dead, alive) = (on(0), on(1));
    let view = engine
        .create_view("counts", ViewDef::new("events").aggregate(Aggregate::Count))
        .expect("view");
    let producer = engine.producer();
    for p in 0..partitions {
        producer
            .send("events", ProducerRecord::new("v").key(key_for(p, partitions)))
            .expect("send");
    }
    // Pending when the shard dies: a consumer caught up on its partition, and a view wait.
    let mut consumer = engine.consumer("events", dead, Seek::Offset(1)).expect("consumer");
    let pending_consumer =
        std::thread::spawn(move || consumer.next_batch().map(|b| b.next_offset()));
    let waiter = view.clone();
    let pending_wait = std::thread::spawn(move || {
        waiter.wait_for(kappa_engine::Offsets::new().at(dead, 1_000), Duration::from_secs(3_600))
    });
    // A record staged on the dead shard's accumulator (a long linger keeps it there): its ack
    // must fail with ShardDied, not wait on a reply the leaked executor never sends.
    let mut staged = kappa_engine::ProducerBatch::with_capacity(1, 8);
    staged.push(Some(&key_for(dead, partitions)), b"staged", None);
    let staged = producer
        .clone()
        .with_linger(Duration::from_secs(3_600))
        .submit_each("events", staged)
        .expect("staged");
    std::thread::sleep(Duration::from_millis(200));

    engine.inject_shard_panic(0, "injected shard bug").expect("inject");
    expect_died("a staged record's ack", within("a staged ack", move || staged.wait()), 0);

    let consumer_result = within("a pending consumer", move || pending_consumer.join());
    expect_died("pending consumer", consumer_result.expect("thread"), 0);
    let wait_result = within("a pending view wait", move || pending_wait.join());
    expect_died("pending view wait", wait_result.expect("thread"), 0);
    let (e, p) = (engine.clone(), producer.clone());
    expect_died(
        "send",
        within("send", move || {
            p.send("events", ProducerRecord::new("v").key(key_for(dead, partitions)))
        }),
        0,
    );
    let p = producer.clone();
    let key = key_for(dead, partitions);
    let results = within("many sends", move || {
        // More than the request queue holds: none may block on the dead shard's full queue.
        let mut last = None;
        for _ in 0..2_000 {
            last = Some(p.send("events", ProducerRecord::new("v").key(key.clone())));
        }
        last.expect("sent")
    });
    expect_died("send after many", results, 0);
    let v = view.clone();
    expect_died("view query", within("view query", move || v.rows()), 0);
    let v = view.clone();
    expect_died("view progress", within("view progress", move || v.progress()), 0);
    expect_died("metrics", within("metrics", move || e.metrics()), 0);
    let e = engine.clone();
    expect_died(
        "create_topic",
        within("create_topic", move || e.create_topic("more", TopicConfig::new(partitions))),
        0,
    );
    let e = engine.clone();
    expect_died(
        "partition_offsets",
        within("offsets", move || e.partition_offsets("events", dead)),
        0,
    );
    // The live shard keeps serving its own partitions.
    let ack = producer
        .send("events", ProducerRecord::new("v").key(key_for(alive, partitions)))
        .expect("the other shard serves");
    assert_eq!(ack.partition, alive);
    engine.partition_offsets("events", alive).expect("offsets of a live partition");
    let e = engine.clone();
    expect_died("shutdown", within("shutdown", move || e.shutdown()), 0);
}

/// Regression (issue 14, failure 2): two engines on one data dir both acknowledged records
/// and one's were lost. Now the second owner is refused with the holder's pid, in the same
/// process and from another one; `kappa gen` and `kappa repair` are refused too; `verify` and
/// `inspect` read without the lock; and the kernel releases it when the holder is SIGKILLed.
#[test]
fn one_owner_per_data_dir() {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path();
    let text = dir.to_str().expect("utf-8");
    {
        let first = engine(dir, 1);
        first.create_topic("t", TopicConfig::new(1)).expect("topic");
        match Engine::builder().data_dir(dir).shards(1).build() {
            Err(Error::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("a second engine opened a data dir in use"),
        }
        first.shutdown().expect("shutdown");
        // Shut down (the handle still exists): the data dir is free.
        drop(engine(dir, 1));
    }

    let mut child = Command::new(env!("CARGO_BIN_EXE_kappa-dir-holder"))
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the holder");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "ready");
    match Engine::builder().data_dir(dir).shards(1).build() {
        Err(e @ Error::Locked { .. }) => {
            let Error::Locked { pid, .. } = &e else { unreachable!() };
            assert_eq!(*pid, Some(child.id()));
            assert!(e.to_string().contains(&child.id().to_string()), "{e}");
            assert!(e.is_retriable(), "the owner may go away");
        }
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("opened a data dir another process holds"),
    }
    let kappa = |args: &[&str]| {
        let mut all = vec!["kappa"];
        all.extend_from_slice(args);
        kappa_tools::cli::main_with_args(all)
    };
    let gen = ["gen", text, "--topic", "t", "--records", "10", "--value-size", "10"];
    assert_eq!(kappa(&gen), kappa_tools::cli::EXIT_ERROR, "gen wrote into a held data dir");
    assert_eq!(kappa(&["repair", text]), kappa_tools::cli::EXIT_ERROR, "repair took a held dir");
    assert_eq!(kappa(&["verify", text]), kappa_tools::cli::EXIT_OK, "verify reads without it");
    assert_eq!(kappa(&["inspect", text]), kappa_tools::cli::EXIT_OK, "inspect too");

    // SAFETY: plain libc call on a pid we own; SIGKILL cannot be caught.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    child.wait().expect("reap");
    let engine = engine(dir, 1);
    assert_eq!(engine.topics().len(), 1, "the data dir is ours after the holder died");
}

/// Recovery that cuts a torn tail says so through the API (`Engine::open_report`), with the
/// segment, position and bytes, not only in a log line.
#[test]
fn the_open_report_lists_torn_tails_cut() {
    let temp = tempfile::tempdir().expect("tempdir");
    {
        let engine = engine(temp.path(), 1);
        engine.create_topic("t", TopicConfig::new(2)).expect("topic");
        let producer = engine.producer();
        for i in 0..10 {
            producer.send("t", ProducerRecord::new(format!("record-{i}")).key("k")).expect("send");
        }
        producer.send("t", ProducerRecord::new("LAST-RECORD-MARKER").key("k")).expect("send");
        assert!(engine.open_report().truncations.is_empty());
    }
    // A torn write of the last frame: one byte of its record changed. The clean shutdown synced
    // that frame and recorded the sync in the partition's watermark, which would make the damage
    // corruption (refused); without the watermark (a power cut before it was written) no proof
    // of that last sync is left, and recovery cuts it as a torn tail.
    let partition = partition_for_key(b"k", 2);
    let partition_dir = temp.path().join(format!("topics/t/{partition}"));
    std::fs::remove_file(kappa_storage::watermark::path(&partition_dir)).expect("watermark");
    let segment = temp.path().join(format!("topics/t/{partition}/00000000000000000000.log"));
    let bytes = std::fs::read(&segment).expect("read");
    let at = bytes.windows(18).position(|w| w == b"LAST-RECORD-MARKER").expect("marker") as u64;
    let file = std::fs::OpenOptions::new().write(true).open(&segment).expect("open");
    file.write_all_at(b"X", at).expect("write");
    drop(file);

    let engine = engine(temp.path(), 1);
    let report = engine.open_report();
    assert_eq!(report.partitions_opened, 2);
    assert_eq!(report.truncations.len(), 1, "{report:?}");
    let cut = &report.truncations[0];
    assert_eq!((cut.topic.as_str(), cut.partition), ("t", partition));
    assert_eq!(cut.segment, segment);
    assert!(cut.position < at && cut.bytes > 0, "{cut:?}");
    assert_eq!(engine.partition_offsets("t", partition).expect("offsets").end_offset, 10);
}

/// `add_partitions`: keys stay in the partitions they always went to (before and after a
/// restart); the new partitions take unkeyed records; `topic_offsets` answers for all of them.
#[test]
fn added_partitions_do_not_move_keys() {
    let temp = tempfile::tempdir().expect("tempdir");
    let keys: Vec<Vec<u8>> = (0..60).map(|i| format!("user-{i}").into_bytes()).collect();
    let before = {
        let engine = engine(temp.path(), 2);
        let mut bad = TopicConfig::new(3);
        bad.key_partitions = Some(4);
        match engine.create_topic("t", bad) {
            Err(Error::Config { field: "key_partitions", .. }) => {}
            other => panic!("key_partitions past the partition count: {other:?}"),
        }
        engine.create_topic("t", TopicConfig::new(3)).expect("topic");
        let producer = engine.producer();
        let before: Vec<u32> = keys
            .iter()
            .map(|k| producer.send("t", ProducerRecord::new("a").key(k.clone())).expect("send"))
            .map(|ack| ack.partition)
            .collect();
        match engine.add_partitions("t", 3) {
            Err(Error::Config { field: "partitions", .. }) => {}
            other => panic!("a topic only grows: {other:?}"),
        }
        engine.add_partitions("t", 6).expect("grow");
        assert_eq!(engine.topics()["t"].partitions, 6);
        assert_eq!(engine.topics()["t"].key_partitions, Some(3));
        for (k, p) in keys.iter().zip(&before) {
            let ack = producer.send("t", ProducerRecord::new("b").key(k.clone())).expect("send");
            assert_eq!(ack.partition, *p, "key {k:?} moved");
        }
        let unkeyed: std::collections::BTreeSet<u32> = (0..12)
            .map(|_| producer.send("t", ProducerRecord::new("u")).expect("send").partition)
            .collect();
        assert!(unkeyed.iter().any(|p| *p >= 3), "the new partitions take unkeyed records");
        let offsets = engine.topic_offsets("t").expect("offsets");
        assert_eq!(offsets.len(), 6);
        assert_eq!(offsets.iter().map(|o| o.end_offset).sum::<u64>(), 60 * 2 + 12);
        let _view = engine.create_view("v", ViewDef::new("t")).expect("view");
        assert!(matches!(engine.add_partitions("t", 8), Err(Error::TopicInUse { .. })));
        before
    };
    let engine = engine(temp.path(), 1);
    assert_eq!(engine.topics()["t"].partitions, 6);
    let producer = engine.producer();
    for (k, p) in keys.iter().zip(&before) {
        let ack = producer.send("t", ProducerRecord::new("c").key(k.clone())).expect("send");
        assert_eq!(ack.partition, *p, "key {k:?} moved after a restart");
    }
}

/// The async twins from inside a multi-threaded tokio runtime with one worker: a producer task
/// and a consumer task share that worker, so a call that blocked its thread would starve the
/// other and the test would hang; view queries, offsets, metrics and admin go through too.
#[test]
fn the_async_api_runs_inside_a_tokio_runtime() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(engine(temp.path(), 2));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let e = engine.clone();
    within("the async scenario", move || {
        runtime.block_on(async move {
            e.create_topic_async("events", TopicConfig::new(2)).await.expect("topic");
            let view = e
                .create_view_async("counts", ViewDef::new("events").aggregate(Aggregate::Count))
                .await
                .expect("view");
            let mut consumer =
                e.consumer_async("events", 0, Seek::Beginning).await.expect("consumer");
            let key = key_for(0, 2);
            let producer = e.producer();
            let consume = async {
                let mut seen = 0;
                while seen < 500 {
                    let batch = consumer.next_batch_async().await.expect("batch");
                    seen += batch.next_offset() - batch.first_offset();
                }
                seen
            };
            let produce = async {
                for i in 0..500 {
                    let record = ProducerRecord::new(format!("{i}")).key(key.clone());
                    producer.send_async("events", record).await.expect("send");
                }
            };
            let (seen, ()) = tokio::join!(consume, produce);
            assert_eq!(seen, 500);
            let end = view.log_end_async().await.expect("end");
            view.wait_for_async(end, HANG).await.expect("folded");
            let row = view.get_async(&key, ALL_TIME).await.expect("get").expect("a row");
            assert_eq!(row.value, 500.0);
            let all = view.rows_async().await.expect("rows");
            assert_eq!(all.iter().map(|r| r.value).sum::<f64>(), 500.0);
            assert!(view.progress_async().await.expect("progress").caught_up());
            let offsets = e.topic_offsets_async("events").await.expect("offsets");
            assert_eq!(offsets[0].end_offset, 500);
            assert_eq!(e.partition_offsets_async("events", 0).await.expect("p").end_offset, 500);
            assert_eq!(e.metrics_async().await.expect("metrics").len(), 2);
            e.delete_view_async("counts").await.expect("delete view");
            e.add_partitions_async("events", 3).await.expect("grow");
            match e.create_topic_async("events", TopicConfig::new(1)).await {
                Err(err @ Error::TopicExists { .. }) => assert!(!err.is_retriable()),
                other => panic!("expected TopicExists, got {other:?}"),
            }
            e.delete_topic_async("events").await.expect("delete topic");
        })
    });
    engine.shutdown().expect("shutdown");
}
