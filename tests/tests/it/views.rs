//! Views across the engine: live maintenance with restarts equals a rebuild by replay (byte for
//! byte, by digest); queries during a rebuild never mix versions; checkpoints survive SIGKILL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kappa_engine::operator::{Aggregate, Window};
use kappa_engine::{Durability, Engine, ReplayConfig, TopicConfig, ViewDef, ViewHandle};
use kappa_storage::LogConfig;
use kappa_tests::views::sums;

pub(crate) fn engine(dir: &std::path::Path) -> Engine {
    engine_at(dir)
}

fn engine_at(dir: &std::path::Path) -> Engine {
    Engine::builder()
        .data_dir(dir)
        .shards(2)
        .log_config(LogConfig { segment_size_bytes_max: 128 * 1024, ..LogConfig::default() })
        .build()
        .expect("engine")
}

fn produce(engine: &Engine, n: u64, seed: u64, start: u64) {
    kappa_tests::views::produce(engine, n, seed, start, Durability::Written).expect("produce");
}

/// How long a wait below may take before the test calls it a hang: generous, since replays
/// here share two cores with other builds and tests; a wait that ends early costs nothing.
const HANG: Duration = Duration::from_secs(120);

/// Polls `check` every 5 ms until it holds; panics with `what()` after `HANG`.
fn eventually(what: impl FnOnce() -> String, mut check: impl FnMut() -> bool) {
    #[allow(clippy::disallowed_methods)] // A test's deadline, not a decision of the engine.
    let start = std::time::Instant::now();
    while !check() {
        if start.elapsed() > HANG {
            panic!("{} (not within {HANG:?})", what());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub(crate) fn wait_caught_up(view: &ViewHandle, version: u32) {
    eventually(
        || {
            let progress = view.progress_of(version).expect("progress");
            format!("view version {version} did not catch up: {progress:?}")
        },
        || {
            let progress = view.progress_of(version).expect("progress");
            progress.caught_up() && progress.lag() == 0
        },
    );
}

#[test]
fn live_view_with_restarts_equals_a_rebuild_by_replay() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut produced = 0;
    for round in 0..3u64 {
        // Each round reopens the engine: the view resumes from its checkpoints and the log.
        let engine = engine(temp.path());
        if round == 0 {
            engine.create_topic("events", TopicConfig::new(3)).expect("topic");
        }
        let view = engine.create_view("sums", sums("a")).expect("view");
        assert_eq!(view.version(), 1, "the same revision resumes version 1");
        produce(&engine, 3_000, 42 + round, produced);
        produced += 3_000;
        wait_caught_up(&view, 1);
        engine.shutdown().expect("shutdown");
    }
    for partition in 0..3 {
        let dir = temp.path().join(format!("views/sums/1/{partition}"));
        let checkpoints = std::fs::read_dir(&dir).expect("checkpoint dir").count();
        assert!(checkpoints > 0, "partition {partition} has checkpoints to resume from");
    }
    let engine = engine(temp.path());
    let view = engine.create_view("sums", sums("a")).expect("view");
    wait_caught_up(&view, 1);
    let live = view.digests_of(1).expect("digests");
    let progress = view.progress_of(1).expect("progress");
    assert_eq!(progress.consumed(), 9_000);
    let late: u64 = progress.partitions.iter().map(|p| p.counters.late_dropped).sum();
    assert!(late > 0, "the workload has late records");

    // Rebuild the same pipeline from offset 0 as version 2: byte-for-byte the same state.
    let version = engine.rebuild_view("sums", sums("b")).expect("rebuild").version();
    assert_eq!(version, 2);
    wait_caught_up(&view, 2);
    assert_eq!(view.version(), 2, "the rebuilt version took over");
    assert_eq!(view.digests_of(2).expect("digests"), live, "replayed state equals the live state");
    assert_eq!(view.rows_of(1).expect("rows"), view.rows_of(2).expect("rows"));
    // Version 1 stays for rollback until dropped.
    engine.drop_view_version("sums", 1).expect("drop");
    assert_eq!(view.versions(), vec![2]);
}

#[test]
fn queries_during_a_rebuild_never_mix_versions_or_fail() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path());
    engine.create_topic("events", TopicConfig::new(3)).expect("topic");
    let counts =
        ViewDef::new("events").revision("v1").aggregate(Aggregate::Count).checkpoint_every(10_000);
    let view = engine.create_view("counts", counts).expect("view");
    produce(&engine, 20_000, 7, 0);
    wait_caught_up(&view, 1);

    let stop = Arc::new(AtomicBool::new(false));
    let saw_v2 = Arc::new(AtomicBool::new(false));
    let reader = {
        let view = view.clone();
        let stop = stop.clone();
        let saw_v2 = saw_v2.clone();
        std::thread::spawn(move || {
            let mut seen_versions = std::collections::BTreeSet::new();
            let mut queries = 0;
            while !stop.load(Ordering::Acquire) {
                let rows = view.rows().expect("a query never fails during a rebuild");
                let prefixed = rows.iter().filter(|r| r.key.starts_with(b"v2:")).count();
                assert!(prefixed == 0 || prefixed == rows.len(), "a query saw two versions");
                seen_versions.insert(prefixed > 0);
                if prefixed > 0 {
                    saw_v2.store(true, Ordering::Release);
                }
                queries += 1;
                // A steady query load, not a flood: queries run in the live queue and would
                // otherwise starve the replay queue (by design) on a 2-core machine.
                std::thread::sleep(Duration::from_millis(1));
            }
            (seen_versions, queries)
        })
    };
    // Version 2 keys every group with a "v2:" prefix, so any row tells which version it came from.
    let v2 = ViewDef::new("events").revision("v2").aggregate(Aggregate::Count).key_by(|r, key| {
        key.extend_from_slice(b"v2:");
        key.extend_from_slice(r.key().unwrap_or_default());
        true
    });
    engine.rebuild_view("counts", v2).expect("rebuild");
    produce(&engine, 5_000, 8, 20_000);
    wait_caught_up(&view, 2);
    // However long the query thread waits for a CPU, it runs a query after the swap.
    eventually(|| "no query saw version 2".into(), || saw_v2.load(Ordering::Acquire));
    stop.store(true, Ordering::Release);
    let (seen, queries) = reader.join().expect("reader");
    assert!(queries > 10);
    assert!(seen.contains(&true), "queries saw version 2 after the swap");
    assert_eq!(view.version(), 2);
    assert_eq!(view.swaps(), 1);
    let total: f64 = view.rows().expect("rows").iter().map(|r| r.value).sum();
    assert_eq!(total, 25_000.0, "no record counted twice or missed across the hand-off");
    // Version 1 kept following the tail: rolling back serves it, complete, at once.
    engine.serve_view_version("counts", 1).expect("rollback");
    assert_eq!(view.version(), 1);
    let rows = view.rows().expect("rows");
    assert!(rows.iter().all(|r| !r.key.starts_with(b"v2:")));
    assert_eq!(rows.iter().map(|r| r.value).sum::<f64>(), 25_000.0);
    engine.serve_view_version("counts", 2).expect("roll forward");
    assert!(engine.serve_view_version("counts", 9).is_err());
    // Each partition records the exact offset where it switched to the live tail.
    let progress = view.progress_of(2).expect("progress");
    assert!(progress.partitions.iter().all(|p| p.caught_up_at.is_some()));
}

#[test]
fn views_reject_bad_definitions() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path());
    engine.create_topic("events", TopicConfig::new(1)).expect("topic");
    assert!(
        engine.create_view("x", ViewDef::new("events").aggregate(Aggregate::Sum)).is_err(),
        "sum needs a map"
    );
    assert!(engine.create_view("x", ViewDef::new("nope")).is_err(), "unknown topic");
    assert!(engine
        .create_view("x", ViewDef::new("events").window(Window::Tumbling { size_ms: 0 }))
        .is_err());
    assert!(engine.view("missing").is_err());
}

/// SIGKILL a process maintaining a view at random moments; after each kill, the view resumed from
/// its checkpoints equals a fresh replay of the same log prefix. 5 rounds; `KAPPA_VIEW_CRASH_ROUNDS`
/// asks for more.
#[test]
fn view_checkpoints_survive_sigkill() {
    use std::io::{BufRead, BufReader};
    let rounds: u64 =
        std::env::var("KAPPA_VIEW_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let temp = tempfile::tempdir().expect("tempdir");
    for round in 0..rounds {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kappa-view-writer"))
            .arg(temp.path())
            .arg(round.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn view writer");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"));
        std::thread::sleep(Duration::from_millis(50 + (round * 97) % 300));
        // SAFETY: plain libc call on a pid we own.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.wait();

        let engine = engine(temp.path());
        let resumed = engine.create_view("sums", sums("a")).expect("resume");
        let fresh = engine.create_view(&format!("fresh-{round}"), sums("fresh")).expect("fresh");
        wait_caught_up(&resumed, resumed.version());
        wait_caught_up(&fresh, fresh.version());
        assert_eq!(
            resumed.digests_of(resumed.version()).expect("digests"),
            fresh.digests_of(fresh.version()).expect("digests"),
            "round {round}: the view resumed after SIGKILL differs from a fresh replay"
        );
        engine.shutdown().expect("shutdown");
    }
}

#[test]
fn rebuilds_start_from_a_timestamp_or_another_versions_checkpoint() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path());
    engine.create_topic("events", TopicConfig::new(3)).expect("topic");
    let view = engine.create_view("sums", sums("a")).expect("view");
    produce(&engine, 6_000, 5, 0);
    wait_caught_up(&view, 1);
    engine.shutdown().expect("shutdown (writes final checkpoints)");

    let engine = engine_at(temp.path());
    let view = engine.create_view("sums", sums("a")).expect("resume");
    wait_caught_up(&view, 1);
    // From a timestamp: only records at or after it are consumed.
    let cutoff = 10_000 + 2 * 4_000;
    let v2 = engine
        .rebuild_view("sums", sums("t").start(kappa_engine::Start::Timestamp(cutoff)))
        .expect("rebuild")
        .version();
    wait_caught_up(&view, v2);
    let consumed = view.progress_of(v2).expect("progress").consumed();
    assert!(
        consumed < 6_000 && consumed > 1_000,
        "a timestamp rebuild skips the older history: {consumed}"
    );
    // From version 1's checkpoint: the same state as version 1, without replaying history.
    let v3 = engine
        .rebuild_view("sums", sums("c").start(kappa_engine::Start::Checkpoint { version: 1 }))
        .expect("rebuild")
        .version();
    wait_caught_up(&view, v3);
    assert_eq!(view.digests_of(v3).expect("digests"), view.digests_of(1).expect("digests"));
}

#[test]
fn a_damaged_checkpoint_falls_back_to_an_older_one_or_a_replay() {
    let temp = tempfile::tempdir().expect("tempdir");
    {
        let engine = engine(temp.path());
        engine.create_topic("events", TopicConfig::new(3)).expect("topic");
        let view = engine.create_view("sums", sums("a")).expect("view");
        produce(&engine, 6_000, 9, 0);
        wait_caught_up(&view, 1);
        engine.shutdown().expect("shutdown");
    }
    // Flip a byte in the newest checkpoint of every partition.
    for partition in 0..3 {
        let dir = temp.path().join(format!("views/sums/1/{partition}"));
        let mut files: Vec<_> =
            std::fs::read_dir(&dir).expect("dir").map(|e| e.expect("entry").path()).collect();
        files.sort();
        let newest = files.last().expect("a checkpoint");
        let mut bytes = std::fs::read(newest).expect("read");
        let at = bytes.len() / 2;
        bytes[at] ^= 0x40;
        std::fs::write(newest, bytes).expect("write");
    }
    let engine = engine_at(temp.path());
    let resumed = engine.create_view("sums", sums("a")).expect("resume despite damage");
    let fresh = engine.create_view("fresh", sums("fresh")).expect("fresh");
    wait_caught_up(&resumed, 1);
    wait_caught_up(&fresh, 1);
    assert_eq!(resumed.digests_of(1).expect("digests"), fresh.digests_of(1).expect("digests"));
}

/// A shard thread blocked for two seconds (here by a view's filter; in the field, by a synchronous
/// checkpoint write, or an executor asleep with a request queued) is seen by the engine's monitor:
/// its probe goes unanswered for a second, which is logged and counted in the shard's metrics.
#[test]
fn a_blocked_shard_is_reported_by_the_monitor() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = Engine::builder().data_dir(temp.path()).shards(1).build().expect("engine");
    engine.create_topic("events", TopicConfig::new(1)).expect("topic");
    let blocking = ViewDef::new("events").filter(|r| {
        if r.key() == Some(b"block") {
            std::thread::sleep(Duration::from_secs(2));
        }
        true
    });
    let view = engine.create_view("blocking", blocking).expect("view");
    assert_eq!(engine.metrics().expect("metrics")[0].late_probes, 0);
    let ack = engine
        .producer()
        .send("events", kappa_engine::ProducerRecord::new(b"x".to_vec()).key("block"))
        .expect("send");
    view.wait_for(ack, Duration::from_secs(60)).expect("folded after the block");
    let metrics = engine.metrics().expect("metrics");
    assert!(
        metrics[0].late_probes >= 1,
        "the monitor saw the blocked shard: {}",
        metrics[0].late_probes
    );
    assert_eq!(metrics[0].views[0].counters.applied, 1);
}

/// A rebuild whose sealed history is split into range tasks on every shard while producers keep
/// appending: the rebuilt version equals the live one byte for byte and has consumed every record
/// exactly once (a record counted twice or missed at a range seam or at the hand-off to the live
/// tail changes the count or the digest), and range tasks ran on every shard.
#[test]
fn a_rebuild_split_over_every_shard_under_ingest_counts_each_record_once() {
    split_rebuild_under_ingest(LogConfig {
        segment_size_bytes_max: 16 * 1024,
        ..LogConfig::default()
    });
}

/// Regression: the rebuild above sometimes never swapped within 120 s on a loaded machine. A
/// partition's fold waited for every checkpoint (the log's fdatasync, then the file's fsyncs)
/// before folding on, so with checkpoints every 500 records a slow disk capped the catch-up
/// below the producer's rate and the rebuild chased the tail for ever. Here every fdatasync
/// takes a second (a simulated disk: a fold that waits for its checkpoints folds at most 500
/// records a second, less than the producer appends), the producer runs flat out without
/// waiting for syncs, and the rebuild must still catch up and swap: checkpoints are written
/// beside the fold, never in front of it.
#[test]
fn a_rebuild_catches_up_with_a_flat_out_producer_when_checkpoints_are_slow() {
    let disk = kappa_storage::io::SimDisk::with_faults(
        7,
        kappa_storage::io::FaultOptions {
            fsync_latency: Duration::from_secs(1),
            ..Default::default()
        },
    );
    split_rebuild_under_ingest(LogConfig {
        // Larger segments: each sealed segment is synced once, and the producer must not wait.
        segment_size_bytes_max: 256 * 1024,
        disk: kappa_storage::io::Disk::Sim(disk),
        ..LogConfig::default()
    });
}

fn split_rebuild_under_ingest(log: LogConfig) {
    let temp = tempfile::tempdir().expect("tempdir");
    // Two shards even on one CPU (they share it): the split needs somewhere to go.
    let engine = Engine::builder()
        .data_dir(temp.path())
        .shards(2)
        .log_config(log)
        .replay(ReplayConfig { task_records_min: 300, tasks_per_shard: 3, ..Default::default() })
        .build()
        .expect("engine");
    engine.create_topic("events", TopicConfig::new(2)).expect("topic");
    let view = engine.create_view("sums", sums("a")).expect("view");
    produce(&engine, 20_000, 7, 0);
    wait_caught_up(&view, 1);
    let before: u64 = engine.metrics().expect("metrics").iter().map(|m| m.replay.tasks_done).sum();

    let stop = AtomicBool::new(false);
    let produced = std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            let mut produced = 20_000;
            while !stop.load(Ordering::Relaxed) {
                kappa_tests::views::produce(&engine, 500, produced, produced, Durability::None)
                    .expect("produce");
                produced += 500;
            }
            produced
        });
        let rebuild = engine.rebuild_view("sums", sums("b")).expect("rebuild");
        // What the rebuild's partitions do, once a second (shown when the test fails).
        let watched = view.clone();
        let watch_stop = &stop;
        scope.spawn(move || {
            while !watch_stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                if let Ok(p) = watched.progress_of(2) {
                    for p in &p.partitions {
                        eprintln!(
                            "v2 p{}: next {} end {} lag {} live {} {:.0} rec/s; {}; tasks {}",
                            p.partition,
                            p.next_offset,
                            p.end_offset,
                            p.lag,
                            p.live,
                            p.rate_records_s,
                            p.activity,
                            p.replay_tasks
                        );
                    }
                }
            }
        });
        let swapped = rebuild.wait_swapped(Duration::from_secs(120));
        stop.store(true, Ordering::Relaxed);
        swapped.expect("swapped");
        producer.join().expect("producer")
    });
    // Every record appended (acknowledged while only buffered) becomes readable and folded.
    let end = view.log_end().expect("log end");
    view.wait_for(end, Duration::from_secs(60)).expect("folded to the end");
    wait_caught_up(&view, 2);
    let consumed = |version| view.progress_of(version).expect("progress").consumed();
    eventually(
        || format!("version 1 folded {} of {produced}", consumed(1)),
        || consumed(1) >= produced,
    );

    let progress = view.progress_of(2).expect("progress");
    assert_eq!(progress.consumed(), produced, "every record folded exactly once");
    assert_eq!(consumed(1), produced, "the live version too");
    assert!(progress.partitions.iter().all(|p| p.caught_up_at.is_some()));
    assert_eq!(view.digests_of(2).expect("digests"), view.digests_of(1).expect("digests"));
    let metrics = engine.metrics().expect("metrics");
    let done: u64 = metrics.iter().map(|m| m.replay.tasks_done).sum();
    assert!(done > before, "the rebuild ran range tasks");
    for m in &metrics {
        assert!(m.replay.tasks_done > 0, "shard {} ran no range task: {:?}", m.shard, m.replay);
        assert_eq!(m.replay.tasks_running, 0);
    }
    engine.shutdown().expect("shutdown");
}

/// A fold never holds its shard for a whole stored batch: with one batch of 4,000 records whose
/// map costs tens of microseconds each, progress requests (served by the same shard's live
/// queue) are answered while the batch is half folded. Folded whole, the shard could answer
/// only before or after the batch, and every live append would wait as long behind it.
#[test]
fn a_fold_yields_to_live_requests_inside_a_big_batch() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = Engine::builder().data_dir(temp.path()).shards(1).build().expect("engine");
    engine.create_topic("big", TopicConfig::new(1)).expect("topic");
    const N: u64 = 4_000;
    let mut batch = kappa_engine::ProducerBatch::new();
    for i in 0..N {
        batch.push(Some(&i.to_le_bytes()), b"v", Some(1_000 + i as i64));
    }
    engine
        .producer()
        .with_durability(Durability::Written)
        .send_packed("big", batch)
        .expect("one batch");
    let def = ViewDef::new("big")
        .map(|r| {
            // Deterministic busy work (no clock): about 20-50 us a record.
            let mut h = r.offset();
            for _ in 0..20_000 {
                h = std::hint::black_box(h.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            Some((h & 1) as f64)
        })
        .aggregate(Aggregate::Count);
    let view = engine.create_view("slow", def).expect("view");
    let mut seen = Vec::new();
    loop {
        let consumed = view.progress().expect("progress").consumed();
        seen.push(consumed);
        if consumed >= N {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let partial = seen.iter().filter(|&&c| c > 0 && c < N).count();
    assert!(
        partial > 0,
        "no progress answer came while the batch was folding: {} answers, all 0 or {N}",
        seen.len()
    );
    engine.shutdown().expect("shutdown");
}
