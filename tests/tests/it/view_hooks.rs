//! Guarantees of the view code that no result shows, pinned through its test hooks
//! (`ViewHandle::probes`, the `test-hooks` feature): a range task's state merges in steps with a
//! preemption check between them; a fold checks for preemption every `FOLD_STEP` (64) records,
//! on the owner and in range tasks; `progress` never hashes the state; a dropped version's
//! groups are freed on the blocking pool, not on the shard. Each test fails when the code that
//! provides its guarantee is deleted: the counts are what that code does, not how long it took.

use std::time::{Duration, Instant};

use kappa_engine::{Engine, ProducerBatch, ReplayConfig, TopicConfig, ViewDef};
use kappa_storage::LogConfig;

const HANG: Duration = Duration::from_secs(120);
/// Records per stored batch: ten fold steps each.
const BATCH: u64 = 640;
/// `runner::FOLD_STEP` and `split::MERGE_STEP`.
const FOLD_STEP: u64 = 64;
const MERGE_STEP: u64 = 1024;

fn engine(dir: &std::path::Path, shards: usize) -> Engine {
    Engine::builder()
        .data_dir(dir)
        .shards(shards)
        .log_config(LogConfig { segment_size_bytes_max: 64 * 1024, ..LogConfig::default() })
        .replay(ReplayConfig { task_records_min: 1_000, tasks_per_shard: 2, ..Default::default() })
        .build()
        .expect("engine")
}

/// `records` records to partition 0 of `events`, each with a key of its own, in stored batches
/// of `BATCH`.
fn produce(engine: &Engine, records: u64) {
    let producer = engine.producer();
    let mut batch = ProducerBatch::new();
    for i in 0..records {
        batch.push(Some(format!("key-{i:08}").as_bytes()), b"v", Some(i as i64));
        if batch.len() as u64 == BATCH || i + 1 == records {
            producer.send_packed_to("events", 0, std::mem::take(&mut batch)).expect("send");
        }
    }
}

#[allow(clippy::disallowed_methods)] // A test deadline, not engine time.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < HANG, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// 24,000 groups replayed as range tasks over two shards: every range merges in steps of
/// `MERGE_STEP` keys with a preemption check between two steps, and range tasks fold with a
/// check every `FOLD_STEP` records. Fails when the merge runs in one step (`merge_step` with no
/// limit, or the loop's check removed) or the range fold's check is removed or made rarer.
#[test]
fn range_merges_and_range_folds_check_for_preemption_in_steps() {
    let temp = tempfile::tempdir().expect("tempdir");
    // Two shards even on one CPU (they share it): the split needs somewhere to go.
    let engine = engine(temp.path(), 2);
    const RECORDS: u64 = 24_000;
    engine.create_topic("events", TopicConfig::new(1)).expect("topic");
    produce(&engine, RECORDS);
    let view = engine.create_view("counts", ViewDef::new("events")).expect("view");
    view.wait_for(view.log_end().expect("end"), HANG).expect("folded");
    assert_eq!(view.rows().expect("rows").len() as u64, RECORDS);
    let probes = view.probes(1).expect("probes");
    let merges = probes.merges();
    let merged: u64 = merges.iter().map(|(groups, _)| groups).sum();
    assert!(merges.len() >= 2 && merged >= RECORDS / 2, "replayed as range tasks: {merges:?}");
    assert!(merges.iter().any(|(groups, _)| *groups > 2 * MERGE_STEP), "{merges:?}");
    for (groups, yields) in &merges {
        assert!(
            *yields >= groups.div_ceil(MERGE_STEP).saturating_sub(1),
            "a merge of {groups} groups checked for preemption {yields} times: {merges:?}"
        );
    }
    let (folded, checks) = (probes.range_folded_records(), probes.range_fold_yields());
    assert!(folded >= RECORDS / 2, "range tasks folded {folded}");
    // One check per `FOLD_STEP` records of a stored batch; a range may start or end inside one.
    assert!(
        checks * FOLD_STEP * 10 >= folded * 8,
        "range tasks folded {folded} records with {checks} preemption checks"
    );
    engine.shutdown().expect("shutdown");
}

/// A whole-partition fold (one shard: nothing to split over) checks for preemption every
/// `FOLD_STEP` records inside a stored batch, in replay and live alike. Fails when the fold
/// takes whole batches or a larger step.
#[test]
fn a_fold_checks_for_preemption_every_fold_step_records() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path(), 1);
    // Created before the records: it follows them live. The second replays them.
    engine.create_topic("events", TopicConfig::new(1)).expect("topic");
    let live = engine.create_view("live", ViewDef::new("events")).expect("view");
    const RECORDS: u64 = 12_800;
    produce(&engine, RECORDS);
    let replayed = engine.create_view("replayed", ViewDef::new("events")).expect("view");
    for view in [&live, &replayed] {
        view.wait_for(view.log_end().expect("end"), HANG).expect("folded");
        let checks = view.probes(1).expect("probes").fold_yields();
        // Ten steps a stored batch of 640 records, nine checks inside it at least.
        assert!(
            checks >= RECORDS / BATCH * (BATCH / FOLD_STEP - 1),
            "{RECORDS} records folded with {checks} preemption checks"
        );
    }
    engine.shutdown().expect("shutdown");
}

/// `progress` (polled by dashboards and the demo) never hashes a partition's state; only
/// `digests_of` does, once per partition. Fails when progress asks the shards for digests.
#[test]
fn progress_never_hashes_the_state() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path(), 1);
    engine.create_topic("events", TopicConfig::new(2)).expect("topic");
    produce(&engine, 1_000);
    let view = engine.create_view("counts", ViewDef::new("events")).expect("view");
    view.wait_for(view.log_end().expect("end"), HANG).expect("folded");
    let probes = view.probes(1).expect("probes");
    for _ in 0..10 {
        assert_eq!(view.progress().expect("progress").partitions.len(), 2);
        assert_eq!(view.progress_of(1).expect("progress").partitions.len(), 2);
    }
    assert_eq!(probes.digests(), 0, "progress computed digests");
    assert_eq!(view.digests_of(1).expect("digests").len(), 2);
    assert_eq!(probes.digests(), 2, "one digest a partition");
    engine.shutdown().expect("shutdown");
}

/// A dropped version's groups are freed on the blocking pool: the thread that frees them is
/// not the shard thread that dropped the version. Fails when the shard frees them itself.
#[test]
fn a_dropped_versions_state_is_freed_off_the_shard() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path(), 1);
    engine.create_topic("events", TopicConfig::new(1)).expect("topic");
    produce(&engine, 5_000);
    let view = engine.create_view("counts", ViewDef::new("events")).expect("view");
    let rebuild = engine.rebuild_view("counts", ViewDef::new("events").revision("2")).expect("v2");
    rebuild.wait_swapped(HANG).expect("swapped");
    let probes = view.probes(1).expect("probes");
    assert!(probes.freed().is_empty());
    engine.drop_view_version("counts", 1).expect("drop");
    eventually("the dropped version's groups freed", || !probes.freed().is_empty());
    for (shard, on) in probes.freed() {
        assert_ne!(shard, on, "the shard thread freed the dropped version's groups");
    }
    assert_eq!(view.rows_of(2).expect("rows").len(), 5_000);
    engine.shutdown().expect("shutdown");
}
