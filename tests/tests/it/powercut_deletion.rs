//! Topic and view deletion under power cuts on the simulated disk: what `delete_topic` and
//! `delete_view` guarantee, and the directory fsyncs that provide it.
//!
//! * Once `delete_topic` returns, a power cut neither brings the topic back nor leaves any of its
//!   partition files (a new topic of the same name would adopt them and serve the old records),
//!   and the next start has no deletion left to finish (the open report does not claim a crash
//!   interrupted a deletion the caller saw complete).
//! * A power cut at any point of `delete_topic` leaves the topic whole (every synced record at its
//!   offset) or gone (no definition, no files, the name free), never half deleted.
//! * Once `delete_view` returns, a power cut never brings the view back: no metadata, no
//!   checkpoint, and a new view of that name starts afresh (nothing resumed, under a version
//!   number the deleted view never had).
//! * Once `drop_view_version` returns, a power cut never brings the version's directory back.
//!
//! Several seeds per case, so crash images that revert unsynced directory changes are among them.
//! Every failure names its seed. `KAPPA_POWERCUT_ROUNDS` sets the rounds cut at the last step of
//! `delete_topic` (default `LAST_STEP_ROUNDS`, 200; run on four threads).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kappa_engine::operator::{Aggregate, Window};
use kappa_engine::{Durability, Engine, ProducerRecord, Seek, TopicConfig, ViewDef, ViewHandle};
use kappa_storage::io::{Disk, FaultOptions, SimDisk};
use kappa_storage::LogConfig;

const DATA: &str = "/data";
const PARTITIONS: u32 = 2;
const RECORDS: u64 = 120;

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

fn restart(image: &SimDisk, seed: u64) -> Engine {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine(image)))
        .unwrap_or_else(|_| panic!("seed {seed}: the engine did not start on the crash image"))
}

fn value(topic: &str, seq: u64) -> Vec<u8> {
    format!("{topic}-{seq:06}-{}", "x".repeat((seq % 50) as usize)).into_bytes()
}

/// `RECORDS` synced records over the topic's partitions (several segments each).
fn produce(engine: &Engine, topic: &str) {
    let producer = engine.producer().with_durability(Durability::Synced);
    for chunk in 0..RECORDS / 10 {
        let records = (chunk * 10..chunk * 10 + 10)
            .map(|s| ProducerRecord::new(value(topic, s)).key(format!("k{}", s % 7)))
            .collect();
        producer.send_batch(topic, records).expect("send");
    }
}

/// Every record of the topic, read back, as (value) per partition in offset order.
fn read_all(engine: &Engine, topic: &str, seed: u64) -> Vec<Vec<Vec<u8>>> {
    let partitions = engine.topics()[topic].partitions;
    (0..partitions)
        .map(|partition| {
            let end = engine.partition_offsets(topic, partition).expect("offsets").end_offset;
            let mut consumer =
                engine.consumer(topic, partition, Seek::Beginning).expect("consumer");
            let mut values = Vec::new();
            while consumer.position() < end {
                let batch = consumer
                    .next_batch_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("seed {seed}: reading {topic} back: {e}"))
                    .unwrap_or_else(|| panic!("seed {seed}: no batch in time"));
                values.extend(batch.records().map(|r| r.value().to_vec()));
            }
            values
        })
        .collect()
}

fn files_under(disk: &SimDisk, dir: &str) -> Vec<String> {
    disk.files()
        .into_iter()
        .filter(|(path, _)| path.starts_with(dir))
        .map(|(path, _)| path.display().to_string())
        .collect()
}

/// The topic is gone: no definition, no marker, no partition file, and a new topic of the name
/// starts empty.
fn assert_topic_gone(engine: &Engine, image: &SimDisk, seed: u64, what: &str) {
    assert!(!engine.topics().contains_key("p"), "seed {seed}: {what}: the deleted topic came back");
    let left = files_under(image, "/data/topics/p");
    assert!(left.is_empty(), "seed {seed}: {what}: files of the deleted topic remain: {left:?}");
    let meta = files_under(image, "/data/meta/topics/p.");
    assert!(meta.is_empty(), "seed {seed}: {what}: its metadata remains: {meta:?}");
    engine.create_topic("p", TopicConfig::new(PARTITIONS)).expect("the name is free");
    for partition in 0..PARTITIONS {
        let offsets = engine.partition_offsets("p", partition).expect("offsets");
        assert_eq!(offsets.end_offset, 0, "seed {seed}: {what}: the new topic adopted old records");
    }
}

/// Catches a deleted directory fsync in `meta::finish_deletion`: of the topic's parent
/// directory (its files come back), or of the marker's removal (the next start finishes the
/// deletion again and reports it as interrupted).
#[test]
fn a_deleted_topic_stays_deleted_through_a_power_cut() {
    for seed in 1..=16u64 {
        let disk = SimDisk::new(seed);
        let engine = engine(&disk);
        engine.create_topic("p", TopicConfig::new(PARTITIONS)).expect("topic");
        engine.create_topic("keep", TopicConfig::new(1)).expect("topic");
        produce(&engine, "p");
        produce(&engine, "keep");
        engine.delete_topic("p").expect("delete");
        let image = disk.power_cut(seed);
        let _ = engine.shutdown();
        drop(engine);

        let engine = restart(&image, seed);
        assert_eq!(
            engine.open_report().deletions_finished,
            Vec::<String>::new(),
            "seed {seed}: a deletion that returned was left to finish at the next start"
        );
        let keep = read_all(&engine, "keep", seed);
        assert_eq!(keep[0].len() as u64, RECORDS, "seed {seed}: the other topic lost records");
        assert_topic_gone(&engine, &image, seed, "after the deletion returned");
        engine.shutdown().expect("shutdown");
    }
}

/// Rounds of `a_topic_deletion_cut_at_any_point_leaves_it_whole_or_gone` cut at the last step.
const LAST_STEP_ROUNDS: u64 = 200;

/// Counts of what the cut rounds found.
#[derive(Default)]
struct Tally {
    whole: u64,
    gone: u64,
}

/// One round: the power fails after `cut` more disk operations, somewhere inside `delete_topic`;
/// then the topic must be whole or gone. Returns whether the deletion returned before the cut.
fn cut_round(cut: u64, seed: u64, tally: &mut Tally) -> bool {
    let disk = SimDisk::new(seed);
    let engine = engine(&disk);
    engine.create_topic("p", TopicConfig::new(PARTITIONS)).expect("topic");
    produce(&engine, "p");
    let before = read_all(&engine, "p", seed);
    let ops = disk.stats().ops;
    disk.set_faults(FaultOptions { freeze_after_ops: Some(ops + cut), ..Default::default() });
    let deleted = engine.delete_topic("p").is_ok();
    let image = disk.power_cut(seed);
    let _ = engine.shutdown();
    drop(engine);

    let engine = restart(&image, seed);
    if engine.topics().contains_key("p") {
        assert!(!deleted, "seed {seed}, cut {cut}: a deletion that returned came back");
        assert_eq!(
            read_all(&engine, "p", seed),
            before,
            "seed {seed}, cut {cut}: the topic came back, but not whole"
        );
        tally.whole += 1;
    } else {
        assert_topic_gone(&engine, &image, seed, &format!("cut {cut}"));
        tally.gone += 1;
    }
    engine.shutdown().expect("shutdown");
    deleted
}

/// A power cut at every disk operation of `delete_topic` in turn (a few seeds each), until the
/// deletion completes before the cut. Then many seeds at its last step, the fsync that makes
/// the marker's removal durable: a crash image that keeps that removal but reverts the
/// definition's would bring the topic back without its files, unless the definition's removal
/// was made durable first. Catches a deleted directory fsync after the definition's removal in
/// `meta::finish_deletion`.
#[test]
fn a_topic_deletion_cut_at_any_point_leaves_it_whole_or_gone() {
    let mut tally = Tally::default();
    let seeds_per_cut = 2u64;
    let mut steps = None;
    for cut in 0u64..500 {
        let completed =
            (0..seeds_per_cut).filter(|s| cut_round(cut, s * 1_000 + cut, &mut tally)).count();
        if completed as u64 == seeds_per_cut {
            steps = Some(cut);
            break;
        }
    }
    let steps = steps.expect("delete_topic never completed before the cut");
    let rounds = std::env::var("KAPPA_POWERCUT_ROUNDS").ok().and_then(|r| r.parse().ok());
    // A round mostly waits (engine start and stop): a few at once, each on its own disk.
    let next = Arc::new(Mutex::new(0..rounds.unwrap_or(LAST_STEP_ROUNDS)));
    let workers = 4;
    let tallies: Vec<Tally> = (0..workers)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let mut tally = Tally::default();
                loop {
                    let seed = next.lock().expect("seeds").next();
                    let Some(seed) = seed else { return tally };
                    cut_round(steps - 1, 100_000 + seed, &mut tally);
                }
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|worker| worker.join().expect("a round failed (its seed is printed above)"))
        .collect();
    for t in tallies {
        tally.whole += t.whole;
        tally.gone += t.gone;
    }
    println!(
        "topic deletion ({steps} disk operations) cut at every step: {} came back whole, {} \
         were gone",
        tally.whole, tally.gone
    );
    assert!(tally.whole > 0 && tally.gone > 0, "the cuts missed one side of the deletion");
}

fn view_def() -> ViewDef {
    ViewDef::new("p")
        .revision("count")
        .window(Window::None)
        .aggregate(Aggregate::Count)
        .checkpoint_every(15)
}

fn wait_caught_up(view: &ViewHandle, seed: u64) {
    for _ in 0..4_000 {
        let progress = view.progress().expect("progress");
        if progress.caught_up() && progress.lag() == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("seed {seed}: the view did not catch up");
}

/// Waits (20 s at most) until every partition of `version` has written a checkpoint: they are
/// written in the background while the fold goes on. Panics with `what` otherwise.
pub(crate) fn wait_checkpointed(view: &ViewHandle, version: u32, what: &str) {
    for _ in 0..4_000 {
        let progress = view.progress_of(version).expect("progress");
        if progress.partitions.iter().all(|p| p.checkpointed.is_some()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{what}");
}

/// Catches a deleted directory fsync in `Engine::delete_view`: of the views directory after the
/// view's directory was renamed into the trash (the rename reverts and the view, its metadata
/// and checkpoints come back for the next view of that name to resume).
#[test]
fn a_deleted_view_stays_deleted_through_a_power_cut() {
    for seed in 1..=16u64 {
        let disk = SimDisk::new(seed);
        let engine = engine(&disk);
        engine.create_topic("p", TopicConfig::new(PARTITIONS)).expect("topic");
        produce(&engine, "p");
        let view = engine.create_view("v", view_def()).expect("view");
        wait_caught_up(&view, seed);
        // Checkpoints are written in the background while the fold goes on: wait for them.
        wait_checkpointed(
            &view,
            1,
            &format!("seed {seed}: the view wrote no checkpoint to delete"),
        );
        drop(view);
        engine.delete_view("v").expect("delete view");
        let image = disk.power_cut(seed);
        let _ = engine.shutdown();
        drop(engine);

        let stored = kappa_engine::stored_view(&Disk::Sim(image.clone()), Path::new(DATA), "v")
            .unwrap_or_else(|e| panic!("seed {seed}: reading the view's metadata: {e}"));
        assert!(stored.is_none(), "seed {seed}: the deleted view came back: {stored:?}");
        let left = files_under(&image, "/data/views/v");
        assert!(left.is_empty(), "seed {seed}: files of the deleted view remain: {left:?}");
        let engine = restart(&image, seed);
        let view = engine.create_view("v", view_def()).expect("a new view");
        wait_caught_up(&view, seed);
        assert_eq!(view.version(), 2, "seed {seed}: the deleted view's number was taken again");
        let progress = view.progress().expect("progress");
        for p in &progress.partitions {
            assert_eq!(p.resumed_from, None, "seed {seed}: the new view resumed a deleted one");
        }
        let total: f64 = view.rows().expect("rows").iter().map(|r| r.value).sum();
        assert_eq!(total, RECORDS as f64, "seed {seed}");
        drop(view);
        engine.shutdown().expect("shutdown");
    }
}

/// Catches a deleted directory fsync in `Engine::drop_view_version`: of the view's directory
/// after the dropped version's directory was removed (the removal reverts, and the version's
/// shape file and checkpoints come back: garbage for good, and a `Start::Checkpoint` from the
/// dropped version would find them).
#[test]
fn a_dropped_view_version_stays_dropped_through_a_power_cut() {
    for seed in 1..=16u64 {
        let disk = SimDisk::new(seed);
        let engine = engine(&disk);
        engine.create_topic("p", TopicConfig::new(PARTITIONS)).expect("topic");
        produce(&engine, "p");
        let view = engine.create_view("v", view_def()).expect("view");
        let rebuild = engine.rebuild_view("v", view_def().revision("count-2")).expect("rebuild");
        rebuild.wait_swapped(Duration::from_secs(60)).expect("swapped");
        wait_checkpointed(&view, 1, &format!("seed {seed}: version 1 wrote no checkpoint to drop"));
        assert!(!files_under(&disk, "/data/views/v/1/").is_empty(), "seed {seed}");
        engine.drop_view_version("v", 1).expect("drop");
        let image = disk.power_cut(seed);
        drop((view, rebuild));
        let _ = engine.shutdown();
        drop(engine);

        let left = files_under(&image, "/data/views/v/1/");
        assert!(left.is_empty(), "seed {seed}: files of the dropped version remain: {left:?}");
        let engine = restart(&image, seed);
        let view = engine.create_view("v", view_def().revision("count-2")).expect("resume");
        assert_eq!(view.version(), 2, "seed {seed}");
        let seeded =
            view_def().revision("count-3").start(kappa_engine::Start::Checkpoint { version: 1 });
        assert!(
            engine.rebuild_view("v", seeded).is_err(),
            "seed {seed}: a rebuild seeded from the dropped version was accepted"
        );
        drop(view);
        engine.shutdown().expect("shutdown");
    }
}

/// A view deleted while a checkpoint is being written beside its fold stays deleted: the
/// deletion waits for the checkpoint in flight and none starts after it. A late checkpoint
/// recreated the version's directory after `delete_view` returned, for the next view of that
/// name (version 1 again) to resume from. A large state keeps each checkpoint's encoding long
/// enough for the deletion to land inside one.
#[test]
fn a_view_deleted_during_a_checkpoint_stays_deleted() {
    const KEYS: u64 = 20_000;
    for seed in 1..=6u64 {
        let disk = SimDisk::new(seed);
        let engine = engine(&disk);
        engine.create_topic("big", TopicConfig::new(1)).expect("topic");
        let producer = engine.producer().with_durability(Durability::Written);
        let batch = |chunk: u64| -> Vec<ProducerRecord> {
            (chunk * 1_000..chunk * 1_000 + 1_000)
                .map(|s| ProducerRecord::new("v").key(format!("key-{}", s % KEYS)))
                .collect()
        };
        for chunk in 0..KEYS / 1_000 {
            producer.send_batch("big", batch(chunk)).expect("send");
        }
        let def = ViewDef::new("big")
            .revision("count")
            .window(Window::None)
            .aggregate(Aggregate::Count)
            .checkpoint_every(500);
        let view = engine.create_view("v", def).expect("view");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (stop, producer) = (stop.clone(), producer.clone());
            std::thread::spawn(move || {
                let mut chunk = KEYS / 1_000;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if producer.send_batch("big", batch(chunk)).is_err() {
                        return;
                    }
                    chunk += 1;
                }
            })
        };
        let mut looks = 0;
        while view.progress().expect("progress").partitions[0].checkpointed.is_none() {
            looks += 1;
            assert!(looks < 6_000, "seed {seed}: no checkpoint was written");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(seed * 7));
        drop(view);
        engine.delete_view("v").expect("delete view");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().expect("writer");
        // Anything still in flight had time to land.
        std::thread::sleep(Duration::from_millis(300));
        let left = files_under(&disk, "/data/views/v");
        assert!(left.is_empty(), "seed {seed}: a checkpoint landed after the deletion: {left:?}");
        engine.shutdown().expect("shutdown");
    }
}
