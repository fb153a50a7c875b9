//! View versions and what they leave on disk, on the simulated disk (issue 8, second review):
//!
//! * a version number is never taken twice for a view name: not after `drop_view_version` of the
//!   newest version, not across a restart, not after `delete_view` and a power cut;
//! * a checkpoint is resumed only by the version that wrote it, with the definition that built
//!   it: one copied in from another version, or left by a definition changed under the same
//!   revision, is ignored and the partition replays;
//! * a poison failure whose `meta.json` write fails is reported as not persisted
//!   (`Error::PoisonNotPersisted`, with the I/O error), and a restart runs the record again and
//!   fails there again, recorded this time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kappa_engine::operator::{Aggregate, Window};
use kappa_engine::{Durability, Engine, Error, ProducerRecord, TopicConfig, ViewDef, ViewHandle};
use kappa_storage::io::{Disk, FaultOptions, SimDisk};
use kappa_storage::LogConfig;

const DATA: &str = "/data";
const WAIT: Duration = Duration::from_secs(60);

fn engine(disk: &SimDisk) -> Engine {
    Engine::builder()
        .data_dir(DATA)
        .shards(1)
        .log_config(LogConfig {
            segment_size_bytes_max: 4 * 1024,
            disk: Disk::Sim(disk.clone()),
            ..LogConfig::default()
        })
        .stall_probe_interval(None)
        .build()
        .expect("engine starts")
}

/// `n` synced records, keys `k0`..`k9` in turn, timestamps 0, 10, 20, ...
fn produce(engine: &Engine, n: u64) {
    let producer = engine.producer().with_durability(Durability::Synced);
    for chunk in 0..n.div_ceil(10) {
        let records = (chunk * 10..(chunk * 10 + 10).min(n))
            .map(|s| {
                ProducerRecord::new(format!("v{s}"))
                    .key(format!("k{}", s % 10))
                    .timestamp(s as i64 * 10)
            })
            .collect();
        producer.send_batch("p", records).expect("send");
    }
}

fn count(revision: &str) -> ViewDef {
    ViewDef::new("p").revision(revision).aggregate(Aggregate::Count).checkpoint_every(10)
}

/// Counts only records with an even key: the same shape (key, window, aggregate) as `count`,
/// another state.
fn even(revision: &str) -> ViewDef {
    count(revision).filter(|r| r.key().is_some_and(|k| k.last().is_some_and(|d| d % 2 == 0)))
}

fn wait_checkpointed(view: &ViewHandle, version: u32) {
    for _ in 0..6_000 {
        let progress = view.progress_of(version).expect("progress");
        if progress.caught_up()
            && progress.lag() == 0
            && progress.partitions.iter().all(|p| p.checkpointed.is_some())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("version {version} did not catch up and checkpoint");
}

/// The sum of a count view's rows: the records it has folded.
fn total(view: &ViewHandle) -> f64 {
    view.rows().expect("rows").iter().map(|r| r.value).sum()
}

/// Regression (issue 8, second review): a version's number was one past the newest version in
/// the view's metadata, so after `drop_view_version` of the newest version (or `delete_view`)
/// the next version got the same number again, and could resume a directory or checkpoint the
/// old one left (a power cut before its removal was durable). Now a durable high-water mark
/// (`DIR/meta/views/<name>.json`) hands out every number once. Fails with the mark ignored.
#[test]
fn view_version_numbers_are_never_taken_twice() {
    let seed = 3;
    let disk = SimDisk::new(seed);
    let first = engine(&disk);
    first.create_topic("p", TopicConfig::new(2)).expect("topic");
    produce(&first, 100);
    let view = first.create_view("v", count("a")).expect("view");
    assert_eq!(view.version(), 1);
    for (revision, expected) in [("b", 2), ("c", 3)] {
        let rebuild = first.rebuild_view("v", count(revision)).expect("rebuild");
        assert_eq!(
            rebuild.version(),
            expected,
            "the number of a dropped version was taken again (or one was skipped)"
        );
        rebuild.wait_swapped(WAIT).expect("swapped");
        // Roll back and drop the newest version: the view's metadata lists version 1 only.
        first.serve_view_version("v", 1).expect("rollback");
        first.drop_view_version("v", expected).expect("drop");
    }
    drop(view);
    first.shutdown().expect("shutdown");
    drop(first);

    let second = engine(&disk);
    let view = second.create_view("v", count("a")).expect("view");
    assert_eq!(view.version(), 1, "the served version resumes");
    let rebuild = second.rebuild_view("v", count("d")).expect("rebuild");
    assert_eq!(rebuild.version(), 4, "after a restart, a number taken before was taken again");
    drop((view, rebuild));
    second.delete_view("v").expect("delete");
    let image = disk.power_cut(seed);
    let _ = second.shutdown();
    drop(second);

    let third = engine(&image);
    let view = third.create_view("v", count("a")).expect("a new view of the name");
    assert_eq!(view.version(), 5, "a deleted view's version number was taken again");
    for p in view.progress().expect("progress").partitions {
        assert_eq!(p.resumed_from, None, "the new view resumed a deleted one");
    }
    view.wait_for(view.log_end().expect("end"), WAIT).expect("folded");
    let total = total(&view);
    assert_eq!(total, 100.0);
    drop(view);
    third.shutdown().expect("shutdown");
}

/// The newest checkpoint file of a version's partition.
fn newest_checkpoint(disk: &SimDisk, version: u32, partition: u32) -> (PathBuf, Vec<u8>) {
    let dir = Path::new(DATA).join(format!("views/v/{version}/{partition}"));
    let (path, _) = disk
        .files()
        .into_iter()
        .filter(|(p, _)| p.starts_with(&dir) && p.extension().is_some_and(|e| e == "ckpt"))
        .max()
        .unwrap_or_else(|| panic!("version {version} wrote no checkpoint"));
    let bytes = disk.file_bytes(&path).expect("bytes");
    (path, bytes)
}

/// Regression (issue 8, second review): a checkpoint did not say which version and definition
/// built it, and a resuming partition loaded whatever its directory held. Here version 1
/// (counts every record) and version 2 (only even keys, the same shape) both checkpoint; version
/// 1's newest checkpoint is copied into version 2's directory as its newest one. On restart
/// version 2 must ignore it (its rows stay the even-key counts), and after that a definition
/// changed under the same revision (a tumbling window) must not continue the old state either.
/// Fails with the check in `runner::initial_state` removed.
#[test]
fn a_checkpoint_of_another_version_or_definition_is_never_resumed() {
    let seed = 5;
    let disk = SimDisk::new(seed);
    let first = engine(&disk);
    first.create_topic("p", TopicConfig::new(1)).expect("topic");
    produce(&first, 200);
    let view = first.create_view("v", count("all")).expect("view");
    wait_checkpointed(&view, 1);
    let rebuild = first.rebuild_view("v", even("even")).expect("rebuild");
    rebuild.wait_swapped(WAIT).expect("swapped");
    wait_checkpointed(&view, 2);
    drop((view, rebuild));
    first.shutdown().expect("shutdown");
    drop(first);

    let (_, foreign) = newest_checkpoint(&disk, 1, 0);
    let planted = Path::new(DATA).join(format!("views/v/2/0/{:020}.ckpt", u64::MAX));
    Disk::Sim(disk.clone()).write_file_atomic_blocking(&planted, &foreign).expect("plant");

    let second = engine(&disk);
    let view = second.create_view("v", even("even")).expect("view");
    assert_eq!(view.version(), 2);
    view.wait_for(view.log_end().expect("end"), WAIT).expect("folded");
    let rows = view.rows().expect("rows");
    let odd: Vec<_> = rows.iter().filter(|r| r.key.last().is_some_and(|d| d % 2 == 1)).collect();
    assert!(odd.is_empty(), "version 2 resumed version 1's checkpoint: {odd:?}");
    assert_eq!(rows.iter().map(|r| r.value).sum::<f64>(), 100.0, "the even-key records");
    let resumed = view.progress().expect("progress").partitions[0].resumed_from;
    assert!(resumed.is_some_and(|r| r <= 200), "its own checkpoint resumes: {resumed:?}");
    drop(view);
    second.shutdown().expect("shutdown");
    drop(second);

    // The same revision with another window: no checkpoint of version 2 fits it.
    let third = engine(&disk);
    let tumbling = even("even").window(Window::Tumbling { size_ms: 1_000 });
    let view = third.create_view("v", tumbling).expect("view");
    assert_eq!(view.version(), 2);
    view.wait_for(view.log_end().expect("end"), WAIT).expect("folded");
    assert_eq!(view.progress().expect("progress").partitions[0].resumed_from, None);
    let rows = view.rows().expect("rows");
    assert!(
        rows.iter().all(|r| r.window_end - r.window_start == 1_000),
        "a state of another window was continued: {rows:?}"
    );
    // Timestamps 0..2000 by 10: two windows of 100 records, half of them even keys.
    assert_eq!(rows.iter().map(|r| r.value).sum::<f64>(), 100.0);
    drop(view);
    third.shutdown().expect("shutdown");
}

fn poisoned_sum() -> ViewDef {
    ViewDef::new("p")
        .map(|r: &kappa_engine::RecordRef<'_>| {
            assert!(r.value() != b"poison", "boom: a poison record");
            Some(1.0)
        })
        .aggregate(Aggregate::Sum)
}

/// Regression (issue 8, second review): when writing a poison failure to the view's
/// `meta.json` failed, the version still reported `Poisoned`, which promises that a restart
/// holds it failed. Every write under the view's directory fails here (the log's do not): the
/// waiter gets `PoisonNotPersisted` with the I/O error, progress says so, nothing is stored;
/// a restart runs the record again, fails there again (no crash) and records it this time.
/// Fails with `ViewPartition::poisoned`'s `failure_not_recorded` call removed.
#[test]
fn a_poison_failure_that_could_not_be_recorded_says_so() {
    let disk = SimDisk::new(8);
    let first = engine(&disk);
    first.create_topic("p", TopicConfig::new(1)).expect("topic");
    let view = first.create_view("v", poisoned_sum()).expect("view");
    disk.set_faults(FaultOptions {
        write_eio_probability: 1.0,
        fsync_eio_probability: 1.0,
        dir_fsync_eio_probability: 1.0,
        only_under: Some(Path::new(DATA).join("views").join("v")),
        ..FaultOptions::default()
    });
    let producer = first.producer().with_durability(Durability::Synced);
    producer.send("p", ProducerRecord::new("fine").key("k")).expect("send");
    producer.send("p", ProducerRecord::new("poison").key("k")).expect("send");
    let end = view.log_end().expect("log end");
    match view.wait_for(end.clone(), WAIT) {
        Err(Error::PoisonNotPersisted { offset: 1, partition: 0, source, .. }) => {
            let io = match &*source {
                Error::Storage(e) => e.io_source().map(std::io::Error::raw_os_error),
                other => panic!("not an I/O error: {other:?}"),
            };
            assert_eq!(io, Some(Some(5)), "the injected EIO: {source:?}");
        }
        other => panic!("expected PoisonNotPersisted at offset 1, got {other:?}"),
    }
    let progress = view.progress().expect("progress");
    let partition = &progress.partitions[0];
    let failure = partition.failure.as_ref().expect("the partition says why it stopped");
    assert!(failure.not_persisted.is_some(), "{failure:?}");
    let error = partition.error.as_deref().unwrap_or_default();
    assert!(error.contains("recording the failure failed"), "{error}");
    assert!(disk.faults().iter().all(|f| f.path.starts_with("/data/views/v")));
    let stored = kappa_engine::stored_view(&Disk::Sim(disk.clone()), Path::new(DATA), "v")
        .expect("metadata reads")
        .expect("the view is stored");
    assert!(stored.failed.is_empty(), "the failure was stored after all: {stored:?}");
    disk.set_faults(FaultOptions::default());
    drop(view);
    first.shutdown().expect("shutdown");
    drop(first);

    let second = engine(&disk);
    let view = second.create_view("v", poisoned_sum()).expect("view");
    match view.wait_for(end, WAIT) {
        Err(Error::Poisoned { offset: 1, .. }) => {}
        other => panic!("the restart did not fail on the record again: {other:?}"),
    }
    let stored = kappa_engine::stored_view(&Disk::Sim(disk.clone()), Path::new(DATA), "v")
        .expect("metadata reads")
        .expect("the view is stored");
    assert_eq!(stored.failed.get(&1).and_then(|f| f.offset), Some(1), "{stored:?}");
    drop(view);
    second.shutdown().expect("shutdown");
}

/// A swap is acknowledged only once its record in `meta.json` is durable: when that write fails
/// (EIO under the view's directory), `wait_swapped` reports `SwapNotPersisted`, never Ok, and
/// the stored record still serves the old version (found by the issue-8 review: the error was
/// only logged and the swap acknowledged).
#[test]
fn a_swap_whose_record_could_not_be_written_is_not_acknowledged() {
    let disk = SimDisk::new(12);
    let first = engine(&disk);
    first.create_topic("p", TopicConfig::new(1)).expect("topic");
    // Enough history that the rebuild is still replaying when the faults are set below (with
    // 5,000 records a loaded CI machine once swapped before this thread set them).
    produce(&first, 50_000);
    let view = first.create_view("v", count("a")).expect("view");
    view.wait_for(view.log_end().expect("end"), WAIT).expect("folded");
    let rebuild = first.rebuild_view("v", count("b")).expect("rebuild");
    disk.set_faults(FaultOptions {
        write_eio_probability: 1.0,
        fsync_eio_probability: 1.0,
        dir_fsync_eio_probability: 1.0,
        only_under: Some(Path::new(DATA).join("views").join("v")),
        ..FaultOptions::default()
    });
    let result = rebuild.wait_swapped(WAIT);
    let meta_faulted = disk.faults().iter().any(|f| f.path.to_string_lossy().contains("meta.json"));
    disk.set_faults(FaultOptions::default());
    let stored = kappa_engine::stored_view(&Disk::Sim(disk.clone()), Path::new(DATA), "v")
        .expect("metadata reads")
        .expect("stored");
    assert!(meta_faulted, "the swap's record was written before the faults (inconclusive)");
    assert_ne!(stored.served, rebuild.version(), "the failed record reached the disk after all");
    match result {
        Err(Error::SwapNotPersisted { version, .. }) => assert_eq!(version, rebuild.version()),
        other => panic!("expected SwapNotPersisted, got {other:?}"),
    }
    drop((view, rebuild));
    first.shutdown().expect("shutdown");
}

/// A topic deleted and created again under the same name, while its view was not open (so
/// `delete_topic` allowed it): the view's checkpoints of the old topic are never resumed; the
/// partition replays the new topic from its start (found by the issue-8 review: the view resumed
/// at offset 100 with the old topic's counts and missed all 100 new records).
#[test]
fn a_recreated_topic_never_resumes_the_old_topics_checkpoints() {
    fn produce_keyed(engine: &Engine, n: u64, prefix: &str) {
        let producer = engine.producer().with_durability(Durability::Synced);
        let records = (0..n)
            .map(|s| ProducerRecord::new(format!("v{s}")).key(format!("{prefix}{}", s % 10)))
            .collect();
        producer.send_batch("p", records).expect("send");
    }
    let disk = SimDisk::new(11);
    let first = engine(&disk);
    first.create_topic("p", TopicConfig::new(1)).expect("topic");
    produce_keyed(&first, 100, "old");
    let view = first.create_view("v", count("a")).expect("view");
    crate::powercut_deletion::wait_checkpointed(
        &view,
        1,
        "the view never checkpointed the old topic",
    );
    drop(view);
    first.shutdown().expect("shutdown");
    drop(first);

    let second = engine(&disk);
    second.delete_topic("p").expect("delete: no view is open");
    second.create_topic("p", TopicConfig::new(1)).expect("topic again");
    produce_keyed(&second, 100, "new");
    let view = second.create_view("v", count("a")).expect("view");
    view.wait_for(view.log_end().expect("end"), WAIT).expect("folded");
    let resumed = view.progress().expect("progress").partitions[0].resumed_from;
    assert_eq!(resumed, None, "resumed a checkpoint of the deleted topic");
    let rows = view.rows().expect("rows");
    assert!(rows.iter().all(|r| r.key.starts_with(b"new")), "old topic's keys: {rows:?}");
    assert_eq!(rows.len(), 10, "{rows:?}");
    drop(view);
    second.shutdown().expect("shutdown");
}

fn fail_writes_under(disk: &SimDisk, dir: &str) {
    disk.set_faults(FaultOptions {
        write_eio_probability: 1.0,
        fsync_eio_probability: 1.0,
        dir_fsync_eio_probability: 1.0,
        only_under: Some(Path::new(DATA).join(dir)),
        ..FaultOptions::default()
    });
}

fn stored(disk: &SimDisk) -> kappa_engine::StoredView {
    kappa_engine::stored_view(&Disk::Sim(disk.clone()), Path::new(DATA), "v")
        .expect("metadata reads")
        .expect("the view is stored")
}

/// Regression (issue 8, lifecycle review): `serve_view_version` switched the served version in
/// memory, then failed to record it: the caller got an error, queries served the new version
/// and a restart the old one. Now it records first and switches only then: with every write
/// under the view's directory failing, the caller gets `ServeNotPersisted`, queries still see
/// the version served before, the record says the same, and a retry on a healthy disk switches.
/// Fails with the switch made before the record (the old order).
#[test]
fn a_serve_whose_record_fails_switches_nothing() {
    let disk = SimDisk::new(21);
    let engine = engine(&disk);
    engine.create_topic("p", TopicConfig::new(1)).expect("topic");
    produce(&engine, 100);
    let view = engine.create_view("v", count("a")).expect("view");
    let rebuild = engine.rebuild_view("v", count("b")).expect("rebuild");
    rebuild.wait_swapped(WAIT).expect("swapped");
    assert_eq!(view.version(), 2);
    fail_writes_under(&disk, "views/v");
    match engine.serve_view_version("v", 1) {
        Err(Error::ServeNotPersisted { version: 1, served: 2, .. }) => {}
        other => panic!("expected ServeNotPersisted (1 asked, 2 served), got {other:?}"),
    }
    assert!(!disk.faults().is_empty(), "no fault was injected (inconclusive)");
    disk.set_faults(FaultOptions::default());
    assert_eq!(view.version(), 2, "queries switched to a version whose record failed");
    assert_eq!(stored(&disk).served, 2, "the record and memory disagree");
    engine.serve_view_version("v", 1).expect("a retry on a healthy disk");
    assert_eq!(view.version(), 1);
    assert_eq!(stored(&disk).served, 1);
    drop((view, rebuild));
    engine.shutdown().expect("shutdown");
}

/// Regression (issue 8, lifecycle review): `drop_view_version` returned Ok when removing the
/// version's files failed (only a warning), and the version was already forgotten: its files
/// stayed for good, and a retry answered `UnknownView`. Now the caller gets `DropNotFinished`
/// naming the directory; the version is stopped but still recorded with its files, and a retry
/// on a healthy disk removes them and forgets it. Fails with the removal error ignored.
#[test]
fn a_drop_whose_files_cannot_be_removed_says_so_and_a_retry_finishes_it() {
    let disk = SimDisk::new(22);
    let engine = engine(&disk);
    engine.create_topic("p", TopicConfig::new(1)).expect("topic");
    produce(&engine, 100);
    let view = engine.create_view("v", count("a")).expect("view");
    wait_checkpointed(&view, 1);
    let rebuild = engine.rebuild_view("v", count("b")).expect("rebuild");
    rebuild.wait_swapped(WAIT).expect("swapped");
    let dir = Path::new(DATA).join("views/v/1");
    disk.set_faults(FaultOptions {
        remove_eio_probability: 1.0,
        only_under: Some(dir.clone()),
        ..FaultOptions::default()
    });
    match engine.drop_view_version("v", 1) {
        Err(Error::DropNotFinished { version: 1, path, .. }) => assert_eq!(path, dir),
        other => panic!("expected DropNotFinished naming {}, got {other:?}", dir.display()),
    }
    disk.set_faults(FaultOptions::default());
    let left =
        |disk: &SimDisk| disk.files().into_iter().filter(|(p, _)| p.starts_with(&dir)).count();
    assert!(left(&disk) > 0, "the files went after all (inconclusive)");
    assert!(stored(&disk).revisions.contains_key(&1), "forgotten while its files stay");
    assert!(!view.versions().contains(&1), "still running after the drop");
    engine.drop_view_version("v", 1).expect("a retry finishes the drop");
    assert_eq!(left(&disk), 0, "the retry left files");
    assert!(!stored(&disk).revisions.contains_key(&1));
    match engine.drop_view_version("v", 1) {
        Err(Error::UnknownView { version: 1, .. }) => {}
        other => panic!("a dropped version is unknown, got {other:?}"),
    }
    drop((view, rebuild));
    engine.shutdown().expect("shutdown");
}

/// Rewrites every checkpoint of version 1 of view `v` in checkpoint `format` (4 or 5), as the
/// code of that format wrote it (`state::encode_old_checkpoint`, the old archive layouts from
/// git history); returns how many.
fn downgrade_checkpoints(disk: &SimDisk, format: u16) -> usize {
    let dir = Path::new(DATA).join("views/v/1");
    let mut rewritten = 0;
    for (path, _) in disk.files() {
        if !path.starts_with(&dir) || path.extension().is_none_or(|e| e != "ckpt") {
            continue;
        }
        let bytes = disk.file_bytes(&path).expect("bytes");
        let (of, state) = kappa_engine::view::state::decode_checkpoint(&path, &bytes)
            .expect("a format-6 checkpoint");
        let old = kappa_engine::view::state::encode_old_checkpoint(format, &of, &state);
        Disk::Sim(disk.clone()).write_file_atomic_blocking(&path, &old).expect("rewrite");
        rewritten += 1;
    }
    rewritten
}

/// The topic's definition as written before topic incarnations existed (incarnation 0).
fn forget_incarnation(disk: &SimDisk) {
    let path = Path::new(DATA).join("meta/topics/p.json");
    let mut definition: serde_json::Value =
        serde_json::from_slice(&disk.file_bytes(&path).expect("definition")).expect("json");
    definition.as_object_mut().expect("object").remove("incarnation");
    let bytes = serde_json::to_vec(&definition).expect("json");
    Disk::Sim(disk.clone()).write_file_atomic_blocking(&path, &bytes).expect("rewrite");
}

/// Upgrade path (issue 8, lifecycle review): checkpoints of formats 4 and 5 (written before the
/// revision and shape, or the topic's incarnation, were recorded) were refused as unknown, so
/// the partition replayed; once retention had moved the log start the replay was refused
/// (`ViewBeforeLogStart`) and the view could not start at all. Now they are read where their
/// identity can be established (their directory, the version's shape file, a topic that records
/// no incarnation either): the view resumes them, after retention, with every record counted.
/// Fails with formats 4 and 5 refused (`decode_stored`).
#[test]
fn checkpoints_of_formats_4_and_5_resume_after_retention_moved_the_log_start() {
    for format in [4u16, 5] {
        let disk = SimDisk::new(40 + u64::from(format));
        let first = engine(&disk);
        let mut topic = TopicConfig::new(1);
        topic.retention_bytes_max = Some(8 * 1024);
        first.create_topic("p", topic).expect("topic");
        produce(&first, 500);
        let view = first.create_view("v", count("a")).expect("view");
        wait_checkpointed(&view, 1);
        drop(view);
        first.shutdown().expect("shutdown");
        drop(first);
        assert!(downgrade_checkpoints(&disk, format) > 0, "format {format}: no checkpoint");
        forget_incarnation(&disk);

        let second = engine(&disk);
        second.apply_retention().expect("retention");
        let start = second.partition_offsets("p", 0).expect("offsets").start_offset;
        assert!(start > 0, "format {format}: retention deleted nothing (inconclusive)");
        let view = second
            .create_view("v", count("a"))
            .unwrap_or_else(|e| panic!("format {format}: the view did not start: {e}"));
        let resumed = view.progress().expect("progress").partitions[0].resumed_from;
        assert_eq!(resumed, Some(500), "format {format}: the old checkpoint was not resumed");
        view.wait_for(view.log_end().expect("end"), WAIT).expect("folded");
        let total = total(&view);
        assert_eq!(total, 500.0, "format {format}");
        drop(view);
        second.shutdown().expect("shutdown");
    }
}

/// A format-4 or -5 checkpoint predates topic incarnations: a topic whose definition records
/// one was created after it was written, another topic of the same name, and the checkpoint is
/// refused (the partition replays; every record is counted once). Fails with the incarnation
/// check of `Stored::establish` removed.
#[test]
fn an_old_checkpoint_is_refused_for_a_topic_that_records_an_incarnation() {
    for format in [4u16, 5] {
        let disk = SimDisk::new(50 + u64::from(format));
        let first = engine(&disk);
        first.create_topic("p", TopicConfig::new(1)).expect("topic");
        produce(&first, 300);
        let view = first.create_view("v", count("a")).expect("view");
        wait_checkpointed(&view, 1);
        drop(view);
        first.shutdown().expect("shutdown");
        drop(first);
        assert!(downgrade_checkpoints(&disk, format) > 0, "format {format}: no checkpoint");

        let second = engine(&disk);
        let view = second.create_view("v", count("a")).expect("view");
        let resumed = view.progress().expect("progress").partitions[0].resumed_from;
        assert_eq!(resumed, None, "format {format}: resumed into a topic with an incarnation");
        view.wait_for(view.log_end().expect("end"), WAIT).expect("folded");
        let total = total(&view);
        assert_eq!(total, 300.0, "format {format}");
        drop(view);
        second.shutdown().expect("shutdown");
    }
}

/// A partition's own checkpoint whose next offset lies past the log's end (the log lost its
/// tail after it was written: a repair, a restored backup) is refused at resume, logged, and the
/// partition replays; once new records take those offsets the view counts them. Here version
/// 1's newest checkpoint is rewritten to claim 100 records more than the log holds. Fails with
/// the log-end check of `runner::initial_state` removed (the view skips the 100 new records).
#[test]
fn a_checkpoint_past_the_log_end_is_not_resumed() {
    let disk = SimDisk::new(23);
    let first = engine(&disk);
    first.create_topic("p", TopicConfig::new(1)).expect("topic");
    produce(&first, 300);
    let view = first.create_view("v", count("a")).expect("view");
    wait_checkpointed(&view, 1);
    drop(view);
    first.shutdown().expect("shutdown");
    drop(first);
    let (path, bytes) = newest_checkpoint(&disk, 1, 0);
    let (of, mut state) =
        kappa_engine::view::state::decode_checkpoint(&path, &bytes).expect("decode");
    assert_eq!(state.next_offset, 300, "the final checkpoint is at the end");
    state.next_offset = 400;
    let planted = path.with_file_name(format!("{:020}.ckpt", 400));
    let bytes = kappa_engine::view::state::encode_checkpoint(&planted, of, &state).expect("encode");
    Disk::Sim(disk.clone()).write_file_atomic_blocking(&planted, &bytes).expect("plant");

    let second = engine(&disk);
    let view = second.create_view("v", count("a")).expect("view");
    let resumed = view.progress().expect("progress").partitions[0].resumed_from;
    assert!(resumed.is_none_or(|r| r <= 300), "resumed past the log end: {resumed:?}");
    produce(&second, 100);
    view.wait_for(view.log_end().expect("end"), WAIT).expect("folded");
    let total = total(&view);
    assert_eq!(total, 400.0, "the records that took the checkpoint's offsets are counted");
    drop(view);
    second.shutdown().expect("shutdown");
}

/// Review 19 (hostile): `drop_view_version` forgets the version in memory before it records
/// that in `meta.json`. When only that last record fails (the files were removed and the view's
/// directory synced), the caller gets a plain error, memory has forgotten version 1 while
/// `meta.json` still records it, and a retry answers `UnknownView`, so nothing ever finishes
/// the drop: memory and disk disagree on an error path, and a restart brings version 1 back as a
/// recorded version with no files.
#[test]
fn a_drop_whose_last_record_fails_can_be_retried_and_memory_matches_disk() {
    let disk = SimDisk::new(23);
    let engine = engine(&disk);
    engine.create_topic("p", TopicConfig::new(1)).expect("topic");
    produce(&engine, 100);
    let view = engine.create_view("v", count("a")).expect("view");
    wait_checkpointed(&view, 1);
    let rebuild = engine.rebuild_view("v", count("b")).expect("rebuild");
    rebuild.wait_swapped(WAIT).expect("swapped");
    // Only writes of files under views/v fail: the unlinks of views/v/1 and the fsync of views/v
    // succeed, the final `meta.json` record does not.
    disk.set_faults(FaultOptions {
        write_eio_probability: 1.0,
        fsync_eio_probability: 1.0,
        only_under: Some(Path::new(DATA).join("views/v")),
        ..FaultOptions::default()
    });
    let first = engine.drop_view_version("v", 1);
    disk.set_faults(FaultOptions::default());
    let dir = Path::new(DATA).join("views/v/1");
    let left = disk.files().into_iter().filter(|(p, _)| p.starts_with(&dir)).count();
    eprintln!("first drop: {first:?}; files left under views/v/1: {left}");
    assert!(first.is_err(), "the record was written after all (inconclusive)");
    let retry = engine.drop_view_version("v", 1);
    eprintln!("retry: {retry:?}");
    assert!(
        !stored(&disk).revisions.contains_key(&1),
        "after a failed drop and a retry ({retry:?}), meta.json still records version 1 \
         while the engine no longer knows it (first error: {first:?})"
    );
    drop((view, rebuild));
    engine.shutdown().expect("shutdown");
}
