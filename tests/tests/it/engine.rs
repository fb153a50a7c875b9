//! The embedded engine across threads and restarts: exactly-once, ordered ingest from eight
//! producer threads; stable routing; backpressure; tail consumers across segment rolls; errors.

// Tests measure that a blocking send really waited: wall time is the thing under test.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kappa_engine::{Durability, Engine, Error, ProducerRecord, Seek, TopicConfig};
use kappa_storage::LogConfig;

fn small_segments() -> LogConfig {
    LogConfig { segment_size_bytes_max: 64 * 1024, ..LogConfig::default() }
}

fn engine(dir: &std::path::Path, shards: usize) -> Engine {
    Engine::builder()
        .data_dir(dir)
        .shards(shards)
        .log_config(small_segments())
        .build()
        .expect("engine starts")
}

/// Value of record `seq` of producer `producer`: both numbers, readable back.
fn value(producer: u32, seq: u32) -> Vec<u8> {
    format!("p{producer:02}-s{seq:06}-{}", "x".repeat((seq % 40) as usize)).into_bytes()
}

fn parse(value: &[u8]) -> (u32, u32) {
    let text = std::str::from_utf8(value).expect("utf-8");
    let producer = text[1..3].parse().expect("producer");
    let seq = text[5..11].parse().expect("seq");
    (producer, seq)
}

/// Reads every partition of `topic` from the beginning: (partition, offset, producer, seq).
fn read_topic(engine: &Engine, topic: &str) -> Vec<(u32, u64, u32, u32)> {
    let partitions = engine.topics()[topic].partitions;
    let mut out = Vec::new();
    for partition in 0..partitions {
        let end = engine.partition_offsets(topic, partition).expect("offsets").end_offset;
        let mut consumer = engine.consumer(topic, partition, Seek::Beginning).expect("consumer");
        while consumer.position() < end {
            let batch = consumer
                .next_batch_timeout(Duration::from_secs(10))
                .expect("read")
                .expect("batch in time");
            for record in batch.records() {
                let (producer, seq) = parse(record.value());
                out.push((partition, record.offset(), producer, seq));
            }
        }
        assert_eq!(consumer.lag(), 0);
    }
    out
}

fn check_exactly_once_in_order(
    records: &[(u32, u64, u32, u32)],
    producers: u32,
    per_producer: u32,
) {
    let mut seen: BTreeMap<(u32, u32), u32> = BTreeMap::new();
    let mut last: BTreeMap<(u32, u32), u32> = BTreeMap::new();
    let mut offsets: BTreeMap<u32, u64> = BTreeMap::new();
    for &(partition, offset, producer, seq) in records {
        *seen.entry((producer, seq)).or_default() += 1;
        if let Some(previous) = last.insert((partition, producer), seq) {
            assert!(
                seq > previous,
                "producer {producer} order broken in partition {partition}: {previous} then {seq}"
            );
        }
        let expected = offsets.entry(partition).or_insert(0);
        assert_eq!(offset, *expected, "dense offsets in partition {partition}");
        *expected += 1;
    }
    assert_eq!(seen.len() as u32, producers * per_producer, "every record stored");
    assert!(seen.values().all(|n| *n == 1), "no record stored twice");
}

#[test]
fn eight_producer_threads_exactly_once_in_order_and_after_restart() {
    let temp = tempfile::tempdir().expect("tempdir");
    const PRODUCERS: u32 = 8;
    const PER_PRODUCER: u32 = 1500;
    {
        let engine = engine(temp.path(), 2);
        engine.create_topic("clicks", TopicConfig::new(3)).expect("topic");
        engine.create_topic("views", TopicConfig::new(5)).expect("topic");
        std::thread::scope(|scope| {
            for producer in 0..PRODUCERS {
                let engine = &engine;
                scope.spawn(move || {
                    let durability = [Durability::None, Durability::Written, Durability::Synced]
                        [producer as usize % 3];
                    let handle = engine.producer().with_durability(durability);
                    let topic = if producer % 2 == 0 { "clicks" } else { "views" };
                    let mut seq = 0;
                    while seq < PER_PRODUCER {
                        if seq % 3 == 0 {
                            let key = format!("user-{}", (seq * 7 + producer) % 50);
                            handle
                                .send(topic, ProducerRecord::new(value(producer, seq)).key(key))
                                .expect("send");
                            seq += 1;
                        } else {
                            let n = 10.min(PER_PRODUCER - seq);
                            let batch = (seq..seq + n)
                                .map(|s| {
                                    ProducerRecord::new(value(producer, s))
                                        .key(format!("user-{}", s % 50))
                                })
                                .collect();
                            let acks = handle.send_batch(topic, batch).expect("send batch");
                            assert!(!acks.is_empty());
                            seq += n;
                        }
                    }
                });
            }
        });
        let clicks = read_topic(&engine, "clicks");
        let views = read_topic(&engine, "views");
        assert_eq!(clicks.len() + views.len(), (PRODUCERS * PER_PRODUCER) as usize);
        let mut all = clicks;
        all.extend(views.iter().map(|&(p, o, pr, s)| (p + 100, o, pr, s)));
        check_exactly_once_in_order(&all, PRODUCERS, PER_PRODUCER);
        let metrics = engine.metrics().expect("metrics");
        let appended: u64 = metrics.iter().map(|m| m.records_appended).sum();
        assert_eq!(appended, u64::from(PRODUCERS * PER_PRODUCER));
        assert!(metrics.iter().any(|m| m.fsync_count > 0), "synced producers caused fsyncs");
        assert!(metrics.iter().map(|m| m.append_ack_latency_ns.len()).sum::<u64>() > 0);
        engine.shutdown().expect("shutdown");
    }
    // Reopen: every topic comes back with its offsets and records.
    let engine = engine(temp.path(), 2);
    assert_eq!(engine.topics().len(), 2);
    let mut all = read_topic(&engine, "clicks");
    all.extend(read_topic(&engine, "views").iter().map(|&(p, o, pr, s)| (p + 100, o, pr, s)));
    check_exactly_once_in_order(&all, PRODUCERS, PER_PRODUCER);
}

#[test]
fn routing_is_stable_across_restarts_and_shard_counts() {
    let temp = tempfile::tempdir().expect("tempdir");
    let keys: Vec<String> = (0..40).map(|i| format!("sensor-{i}")).collect();
    let place = |engine: &Engine| -> Vec<u32> {
        let producer = engine.producer();
        keys.iter()
            .map(|k| {
                producer
                    .send("t", ProducerRecord::new(b"v".to_vec()).key(k.clone()))
                    .expect("send")
                    .partition
            })
            .collect()
    };
    let first = {
        let engine = engine(temp.path(), 2);
        engine.create_topic("t", TopicConfig::new(6)).expect("topic");
        place(&engine)
    };
    for shards in [2, 1, 3] {
        // A different shard count moves partition ownership, never a key's partition.
        let engine = engine(temp.path(), shards);
        assert_eq!(engine.shard_count(), shards);
        assert_eq!(place(&engine), first, "with {shards} shards");
        let total: u64 =
            (0..6).map(|p| engine.partition_offsets("t", p).expect("offsets").end_offset).sum();
        assert!(total >= 40, "earlier records are still there");
    }
}

#[test]
fn a_flooding_producer_blocks_instead_of_growing_memory() {
    let temp = tempfile::tempdir().expect("tempdir");
    let delay = Duration::from_millis(20);
    let engine = Engine::builder()
        .data_dir(temp.path())
        .shards(1)
        .request_queue_max(4)
        .appends_in_flight_max(2)
        .append_delay(delay)
        .build()
        .expect("engine");
    engine.create_topic("slow", TopicConfig::new(1)).expect("topic");
    let producer = engine.producer();
    let mut pending = Vec::new();
    let error = loop {
        match producer.try_send("slow", ProducerRecord::new(vec![1u8; 100])) {
            Ok(ack) => pending.push(ack),
            Err(e) => break e,
        }
        assert!(pending.len() < 100, "the request queue never filled up");
    };
    assert!(matches!(error, Error::WouldBlock { shard: 0 }), "{error}");
    // The shard holds at most: its queue, the one it is delaying, and nothing else.
    assert!(pending.len() <= 4 + 2, "{} requests accepted", pending.len());
    // A blocking send waits for room rather than failing or dropping.
    let started = Instant::now();
    let ack = producer.send("slow", ProducerRecord::new(vec![2u8; 100])).expect("blocking send");
    assert!(started.elapsed() >= delay, "the blocking send did not wait");
    let acked: Vec<u64> = pending.into_iter().map(|p| p.wait().expect("ack").base_offset).collect();
    assert_eq!(acked, (0..acked.len() as u64).collect::<Vec<_>>(), "nothing dropped, in order");
    assert_eq!(ack.offset, acked.len() as u64);
}

#[test]
fn tail_consumer_sees_every_record_in_order_across_segment_rolls() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path(), 2);
    engine.create_topic("tail", TopicConfig::new(1)).expect("topic");
    let mut consumer = engine.consumer("tail", 0, Seek::End).expect("consumer");
    let total = 3000u32;
    let producer = engine.producer().with_durability(Durability::None);
    let writer = std::thread::spawn(move || {
        for seq in 0..total {
            producer.send("tail", ProducerRecord::new(value(0, seq))).expect("send");
        }
    });
    let mut next = 0u32;
    while next < total {
        let batch = consumer
            .next_batch_timeout(Duration::from_secs(10))
            .expect("read")
            .expect("a batch in time");
        for record in batch.records() {
            assert_eq!(record.offset(), u64::from(next));
            assert_eq!(parse(record.value()), (0, next), "no gap or duplicate");
            next += 1;
        }
    }
    writer.join().expect("writer");
    let offsets = engine.partition_offsets("tail", 0).expect("offsets");
    assert!(offsets.segment_count > 2, "the tail crossed segment rolls: {offsets:?}");
    assert_eq!(consumer.lag(), 0);
}

#[test]
fn errors_are_typed() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path(), 1);
    engine.create_topic("t", TopicConfig::new(2)).expect("topic");
    let producer = engine.producer();
    assert!(matches!(
        producer.send("nope", ProducerRecord::new(b"x".to_vec())),
        Err(Error::UnknownTopic { .. })
    ));
    assert!(matches!(
        engine.consumer("t", 2, Seek::Beginning),
        Err(Error::UnknownPartition { partition: 2, .. })
    ));
    assert!(matches!(
        engine.create_topic("t", TopicConfig::new(1)),
        Err(Error::TopicExists { .. })
    ));
    assert!(matches!(
        engine.create_topic("../x", TopicConfig::new(1)),
        Err(Error::BadTopicName { .. })
    ));
    let huge = vec![0u8; 2 << 20];
    match producer.send("t", ProducerRecord::new(huge)) {
        Err(Error::Storage(kappa_storage::Error::RecordTooLarge { .. })) => {}
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    producer
        .send("t", ProducerRecord::new(b"fine".to_vec()))
        .expect("the log is intact after bad input");
    engine.shutdown().expect("shutdown");
    assert!(matches!(producer.send("t", ProducerRecord::new(b"x".to_vec())), Err(Error::ShutDown)));
}

#[test]
fn packed_batches_route_by_key_and_keep_headers() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path(), 2);
    engine.create_topic("packed", TopicConfig::new(4)).expect("topic");
    let producer = engine.producer().with_durability(Durability::Synced);
    let mut batch = kappa_engine::ProducerBatch::new();
    for i in 0..100u32 {
        let key = format!("k{}", i % 9);
        let headers: &[(&str, Option<&[u8]>)] =
            if i % 10 == 0 { &[("trace", Some(b"t")), ("none", None)] } else { &[] };
        batch.push_with_headers(
            Some(key.as_bytes()),
            &value(1, i),
            Some(1_000 + i64::from(i)),
            headers,
        );
    }
    let acks = producer.send_packed("packed", batch).expect("send");
    assert!(acks.len() > 1, "nine keys over four partitions split the batch");
    assert_eq!(acks.iter().map(|a| a.last_offset - a.base_offset + 1).sum::<u64>(), 100);
    let mut seen = 0;
    for partition in 0..4 {
        let end = engine.partition_offsets("packed", partition).expect("offsets").end_offset;
        if end == 0 {
            continue;
        }
        let mut consumer = engine.consumer("packed", partition, Seek::Beginning).expect("consumer");
        let mut last_seq = None;
        while consumer.position() < end {
            let batch =
                consumer.next_batch_timeout(Duration::from_secs(10)).expect("read").expect("batch");
            for record in batch.records() {
                let (_, seq) = parse(record.value());
                let key = record.key().expect("keyed");
                assert_eq!(kappa_engine::router::partition_for_key(key, 4), partition);
                assert_eq!(key, format!("k{}", seq % 9).as_bytes());
                assert_eq!(record.timestamp(), 1_000 + i64::from(seq));
                assert!(last_seq.is_none_or(|l| seq > l), "order within the partition");
                last_seq = Some(seq);
                let headers: Vec<_> = record.headers().collect();
                assert_eq!(headers.len(), if seq % 10 == 0 { 2 } else { 0 });
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 100);
}
