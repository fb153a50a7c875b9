//! A replay split into range tasks meets a record its user code panics on exactly as a serial
//! fold does: under `OnError::Fail` the version fails at that partition and offset, with the
//! state a serial fold leaves (everything up to and including the record consumed); under
//! `OnError::Skip` the record is counted in `panicked` and the state equals the serial one byte
//! for byte. The serial reference is a version created before the records, folding them live.

use std::time::Duration;

use kappa_engine::operator::Aggregate;
use kappa_engine::{
    Engine, Error, OnError, ProducerBatch, RecordRef, ReplayConfig, TopicConfig, ViewDef,
};
use kappa_storage::LogConfig;

const HANG: Duration = Duration::from_secs(120);
const RECORDS: u64 = 6_000;
/// In the sealed middle of the history: a range task, not the owner's tail, meets it.
const POISON_AT: u64 = 2_500;

fn engine(dir: &std::path::Path) -> Engine {
    // Two shards even on one CPU (they share it): the split needs somewhere to go.
    Engine::builder()
        .data_dir(dir)
        .shards(2)
        .log_config(LogConfig { segment_size_bytes_max: 16 * 1024, ..LogConfig::default() })
        .replay(ReplayConfig { task_records_min: 300, tasks_per_shard: 3, ..Default::default() })
        .build()
        .expect("engine")
}

/// Sums the record's number per key; its map panics on the value `poison`.
fn poisonous(on_error: OnError) -> ViewDef {
    ViewDef::new("events")
        .map(|r: &RecordRef<'_>| {
            if r.value() == b"poison" {
                panic!("boom: a poison record");
            }
            std::str::from_utf8(r.value()).ok()?.parse::<f64>().ok()
        })
        .aggregate(Aggregate::Sum)
        .on_error(on_error)
}

/// One partition, `RECORDS` records in batches of 50, the one at `POISON_AT` poison.
fn produce(engine: &Engine) {
    let producer = engine.producer();
    let mut batch = ProducerBatch::new();
    for i in 0..RECORDS {
        let value = if i == POISON_AT { "poison".to_string() } else { format!("{}", i % 97) };
        let key = format!("k{}", i % 13);
        batch.push(Some(key.as_bytes()), value.as_bytes(), Some(10_000 + i as i64));
        if batch.len() == 50 {
            producer.send_packed("events", std::mem::take(&mut batch)).expect("send");
        }
    }
    assert!(batch.is_empty());
}

fn tasks_done(engine: &Engine) -> u64 {
    engine.metrics().expect("metrics").iter().map(|m| m.replay.tasks_done).sum()
}

#[test]
fn a_split_replay_fails_on_a_poison_record_where_a_serial_fold_does() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path());
    engine.create_topic("events", TopicConfig::new(1)).expect("topic");
    let serial = engine.create_view("serial", poisonous(OnError::Fail)).expect("view");
    produce(&engine);
    let end = serial.log_end().expect("end");
    let before = tasks_done(&engine);
    let split = engine.create_view("split", poisonous(OnError::Fail)).expect("view");
    for view in [&serial, &split] {
        match view.wait_for(end.clone(), HANG) {
            Err(Error::Poisoned { partition, offset, stage, .. }) => {
                assert_eq!((partition, offset, stage.as_str()), (0, POISON_AT, "map"));
            }
            other => panic!("expected a poisoned version, got {other:?}"),
        }
        let progress = view.progress_of(1).expect("progress of a failed version");
        let p = &progress.partitions[0];
        let failure = p.failure.as_ref().expect("the partition says why");
        assert_eq!((failure.partition, failure.offset), (0, Some(POISON_AT)));
        // A serial fold consumed every record up to and including the poison one.
        assert_eq!(p.counters.consumed, POISON_AT + 1, "{p:?}");
        assert_eq!(p.next_offset, POISON_AT + 1, "{p:?}");
    }
    assert!(tasks_done(&engine) > before, "the split view replayed as range tasks");
    // Recorded as a serial fold's failure is: the stored view names the record, so a restart
    // does not run it again. The record is written on the blocking pool after the version
    // failed; wait for it (without a deadline: a lost write hangs the test, not passes it).
    loop {
        let stored = kappa_engine::stored_view(&kappa_storage::io::Disk::Dma, temp.path(), "split")
            .expect("read")
            .expect("stored");
        if let Some(failure) = stored.failed.get(&1) {
            assert_eq!((failure.partition, failure.offset), (0, Some(POISON_AT)));
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    engine.shutdown().expect("shutdown");
}

#[test]
fn a_split_replay_skips_a_poison_record_as_a_serial_fold_does() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path());
    engine.create_topic("events", TopicConfig::new(1)).expect("topic");
    let serial = engine.create_view("serial", poisonous(OnError::Skip)).expect("view");
    produce(&engine);
    let end = serial.log_end().expect("end");
    let before = tasks_done(&engine);
    let split = engine.create_view("split", poisonous(OnError::Skip)).expect("view");
    serial.wait_for(end.clone(), HANG).expect("skips and goes on");
    split.wait_for(end, HANG).expect("skips and goes on");
    assert!(tasks_done(&engine) > before, "the split view replayed as range tasks");
    for view in [&serial, &split] {
        let progress = view.progress_of(1).expect("progress");
        let c = progress.partitions[0].counters;
        assert_eq!((c.consumed, c.panicked, c.applied), (RECORDS, 1, RECORDS - 1), "{c:?}");
    }
    assert_eq!(split.digests_of(1).expect("digests"), serial.digests_of(1).expect("digests"));
    engine.shutdown().expect("shutdown");
}
