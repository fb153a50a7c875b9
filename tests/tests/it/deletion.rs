//! Topic and view deletion in the embedded engine: what producers and consumers see, the files,
//! reuse of the name, refusal while views read a topic, and a deletion interrupted by a crash
//! (the durable marker) finished at the next start.

// Waits have wall-clock deadlines (never a speed assertion).
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use kappa_engine::{Engine, Error, ProducerRecord, Seek, TopicConfig, ViewDef};

fn engine(dir: &std::path::Path) -> Engine {
    Engine::builder().data_dir(dir).shards(2).build().expect("engine starts")
}

fn produce(engine: &Engine, topic: &str, n: u32) {
    let producer = engine.producer();
    for i in 0..n {
        producer
            .send(topic, ProducerRecord::new(format!("v{i}")).key(format!("k{}", i % 5)))
            .expect("send");
    }
}

#[test]
fn a_deleted_topic_is_gone_and_its_name_reusable() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path());
    engine.create_topic("t", TopicConfig::new(3)).expect("create");
    produce(&engine, "t", 300);
    // A consumer following the tail of partition 0.
    let mut follower = engine.consumer("t", 0, Seek::End).expect("consumer");
    engine.delete_topic("t").expect("delete");
    assert!(matches!(
        engine.producer().send("t", ProducerRecord::new("x")),
        Err(Error::UnknownTopic { .. })
    ));
    assert!(matches!(engine.consumer("t", 0, Seek::Beginning), Err(Error::UnknownTopic { .. })));
    assert!(matches!(engine.delete_topic("t"), Err(Error::UnknownTopic { .. })));
    // The follower's stream ends instead of hanging.
    let ended = follower.next_batch_timeout(Duration::from_secs(10));
    assert!(
        !matches!(ended, Ok(None)),
        "the follower still waits: {:?}",
        ended.map(|b| b.map(|b| b.first_offset()))
    );
    assert!(!temp.path().join("topics/t").exists(), "partition files remain");
    assert!(!temp.path().join("meta/topics/t.json").exists(), "the definition remains");
    // The name is free again: a new topic starts empty, and stays so after a restart.
    engine.create_topic("t", TopicConfig::new(1)).expect("create again");
    assert_eq!(engine.partition_offsets("t", 0).expect("offsets").end_offset, 0);
    produce(&engine, "t", 7);
    drop(engine);
    let engine = self::engine(temp.path());
    assert_eq!(engine.topics()["t"].partitions, 1);
    assert_eq!(engine.partition_offsets("t", 0).expect("offsets").end_offset, 7);
}

#[test]
fn views_block_deletion_until_they_are_deleted() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path());
    engine.create_topic("t", TopicConfig::new(2)).expect("create");
    produce(&engine, "t", 100);
    let view = engine.create_view("counts", ViewDef::new("t").checkpoint_every(10)).expect("view");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !view.progress().expect("progress").caught_up() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    match engine.delete_topic("t") {
        Err(Error::TopicInUse { views, .. }) => assert_eq!(views, ["counts"]),
        other => panic!("deletion was not refused: {other:?}"),
    }
    assert_eq!(engine.views().get("counts").map(String::as_str), Some("t"));
    engine.delete_view("counts").expect("delete view");
    assert!(engine.view("counts").is_err());
    assert!(!temp.path().join("views/counts").exists(), "the view's checkpoints remain");
    engine.delete_topic("t").expect("now the topic goes");
    // A new view of the same name starts from nothing (no stale checkpoint is resumed).
    engine.create_topic("t", TopicConfig::new(2)).expect("create");
    produce(&engine, "t", 3);
    let view = engine.create_view("counts", ViewDef::new("t")).expect("view");
    while !view.progress().expect("progress").caught_up() {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(view.version(), 2, "a new number: the deleted view's is never taken again");
    let total: f64 = view.rows().expect("rows").iter().map(|r| r.value).sum();
    assert_eq!(total, 3.0);
}

#[test]
fn a_deletion_interrupted_by_a_crash_finishes_at_the_next_start() {
    let temp = tempfile::tempdir().expect("tempdir");
    {
        let engine = engine(temp.path());
        engine.create_topic("t", TopicConfig::new(2)).expect("create");
        engine.create_topic("keep", TopicConfig::new(1)).expect("create");
        produce(&engine, "t", 50);
        produce(&engine, "keep", 5);
    }
    // What a crash right after the marker leaves: marker, definition and files all there.
    std::fs::write(temp.path().join("meta/topics/t.deleting"), b"").expect("marker");
    let engine = engine(temp.path());
    assert!(!engine.topics().contains_key("t"), "the deleted topic came back");
    assert!(!temp.path().join("topics/t").exists());
    assert!(!temp.path().join("meta/topics/t.deleting").exists());
    assert_eq!(engine.partition_offsets("keep", 0).expect("offsets").end_offset, 5);
    // Without the marker's finishing, a new `t` would adopt the old partition files.
    engine.create_topic("t", TopicConfig::new(2)).expect("create");
    let ends: u64 =
        (0..2).map(|p| engine.partition_offsets("t", p).expect("offsets").end_offset).sum();
    assert_eq!(ends, 0);
}
