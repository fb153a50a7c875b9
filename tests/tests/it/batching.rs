//! The producer that batches for the user (issue 14): keyed batches over many partitions are
//! accumulated per partition on the shards, every record learns its own offset, `send_to` picks
//! the partition, the accumulator's memory is bounded; and what a partition costs: an idle one
//! holds no write buffer, and an exhausted registered DMA pool is counted.

// Waiting for idle partitions to give their buffers back needs a deadline.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::time::Duration;

use kappa_engine::{Durability, Engine, Error, ProducerBatch, ProducerRecord, Seek, TopicConfig};
use kappa_storage::LogConfig;

fn engine_with(
    dir: &std::path::Path,
    configure: impl FnOnce(&mut kappa_engine::EngineConfig),
) -> Engine {
    let mut config = kappa_engine::EngineConfig::new(dir);
    config.shards = Some(2);
    config.log = LogConfig { segment_size_bytes_max: 1 << 20, ..LogConfig::default() };
    configure(&mut config);
    Engine::builder().config(config).build().expect("engine starts")
}

fn stored_batches(engine: &Engine) -> (u64, u64) {
    let metrics = engine.metrics().expect("metrics");
    (
        metrics.iter().map(|m| m.batches_appended).sum(),
        metrics.iter().map(|m| m.records_appended).sum(),
    )
}

/// A deterministic pseudo-random key per record (xorshift), spread over every partition.
fn key(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    format!("k{x:016x}").into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    format!("record-{i:08}-{}", "v".repeat((i % 50) as usize)).into_bytes()
}

/// Reads a partition from the beginning: offset -> value.
pub(crate) fn read_partition(
    engine: &Engine,
    topic: &str,
    partition: u32,
) -> BTreeMap<u64, Vec<u8>> {
    let end = engine.partition_offsets(topic, partition).expect("offsets").end_offset;
    let mut consumer = engine.consumer(topic, partition, Seek::Beginning).expect("consumer");
    let mut out = BTreeMap::new();
    while consumer.position() < end {
        let batch = consumer
            .next_batch_timeout(Duration::from_secs(10))
            .expect("read")
            .expect("batch in time");
        for record in batch.records() {
            out.insert(record.offset(), record.value().to_vec());
        }
    }
    out
}

/// Random keys over 200 partitions in 20 batches of 500: without the accumulator every batch
/// became about 184 stored batches (one per partition it touched), 3,700 in all; with a linger
/// longer than the sending, each partition's records of all 20 batches share a stored batch.
#[test]
fn keyed_batches_over_many_partitions_are_accumulated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_with(dir.path(), |_| {});
    let partitions = 200;
    engine.create_topic("t", TopicConfig::new(partitions)).expect("topic");
    let producer = engine.producer().with_linger(Duration::from_secs(2)).with_batch_size(1 << 20);
    let mut pending = Vec::new();
    for b in 0..20u64 {
        let mut batch = ProducerBatch::new();
        for i in b * 500..(b + 1) * 500 {
            batch.push(Some(&key(i)), &value(i), None);
        }
        pending.push(producer.submit_each("t", batch).expect("submit"));
    }
    let mut acked = Vec::new();
    for (b, p) in pending.into_iter().enumerate() {
        let acks = p.wait().expect("acks");
        assert_eq!(acks.len(), 500);
        acked.extend((b as u64 * 500..).zip(acks));
    }
    // Requests share staged batches here, so most parts start in the middle of one: every
    // record is where its acknowledgement says.
    let mut stored = BTreeMap::new();
    for (i, ack) in &acked {
        let partition = stored
            .entry(ack.partition)
            .or_insert_with(|| read_partition(&engine, "t", ack.partition));
        assert_eq!(partition.get(&ack.offset), Some(&value(*i)), "record {i} at {ack:?}");
    }
    let (batches, records) = stored_batches(&engine);
    assert_eq!(records, 10_000);
    assert!(
        batches <= 2 * u64::from(partitions),
        "{batches} stored batches for {records} records over {partitions} partitions: not accumulated"
    );
    let flushes: u64 =
        engine.metrics().expect("metrics").iter().map(|m| m.stage_flushes.linger).sum();
    assert!(flushes > 0, "linger flushed the staged batches");
}

/// A shard that falls behind stages the records already queued for it before a linger cuts a
/// batch. Here every request sleeps 5 ms on the shard before it is staged (a shard busy with
/// other work), five times the 1 ms linger, and 100 requests of 100 random keys over 10
/// partitions still make about two stored batches per partition. Before, each linger cut its
/// batch while the next requests waited in the queue: about 1,000 stored batches of 10 records,
/// the spiral that took random keys over 1,000 partitions to 27 records per stored batch.
#[test]
fn a_shard_behind_stages_queued_records_before_a_linger_cuts_a_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_with(dir.path(), |config| {
        config.shards = Some(1);
        config.append_delay = Some(Duration::from_millis(5));
    });
    let partitions = 10u64;
    engine.create_topic("t", TopicConfig::new(partitions as u32)).expect("topic");
    let producer = engine.producer().with_linger(Duration::from_millis(1)).with_batch_size(1 << 20);
    // Built first and sent back to back: every request is queued before the first linger runs
    // out (a linger's batch goes once the requests queued at that moment are staged).
    let batches: Vec<ProducerBatch> = (0..100u64)
        .map(|b| {
            let mut batch = ProducerBatch::new();
            for i in b * 100..(b + 1) * 100 {
                batch.push(Some(&key(i)), &value(i), None);
            }
            batch
        })
        .collect();
    let mut pending = Vec::new();
    for batch in batches {
        pending.push(producer.submit_each("t", batch).expect("submit"));
    }
    for p in pending {
        assert_eq!(p.wait().expect("acks").len(), 100);
    }
    let (batches, records) = stored_batches(&engine);
    assert_eq!(records, 10_000);
    assert!(
        batches <= 4 * partitions,
        "{batches} stored batches for {records} records over {partitions} partitions: lingers \
         cut batches while their records waited in the queue"
    );
    let linger: u64 =
        engine.metrics().expect("metrics").iter().map(|m| m.stage_flushes.linger).sum();
    assert!(linger > 0, "the last batches still go at their linger, without a flush");
}

/// A linger bounds how long a staged batch waits even while the shard never catches up: a batch
/// whose linger ran out is appended once the requests queued at that moment are staged, not
/// when the queue is empty. Here each request takes 5 ms on the shard and a new one arrives every
/// 2 ms, so the queue only empties after the last of 80 requests (about 400 ms of staging). The
/// first request's records (1 ms linger) are acknowledged long before that. Before, a lingering
/// batch waited for an empty queue: the first acknowledgement came after every request was
/// staged, and a bulk load put nothing on the disk until it had staged all of it.
#[test]
fn a_linger_is_bounded_while_requests_keep_coming() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_with(dir.path(), |config| {
        config.shards = Some(1);
        config.append_delay = Some(Duration::from_millis(5));
    });
    engine.create_topic("t", TopicConfig::new(4)).expect("topic");
    let producer = engine.producer().with_linger(Duration::from_millis(1)).with_batch_size(1 << 20);
    let requests = 80u64;
    let started = std::time::Instant::now();
    let mut first = None;
    let mut waiters = Vec::new();
    for b in 0..requests {
        let mut batch = ProducerBatch::new();
        for i in b * 10..(b + 1) * 10 {
            batch.push(Some(&key(i)), &value(i), None);
        }
        let pending = producer.submit_each("t", batch).expect("submit");
        if b == 0 {
            first = Some(std::thread::spawn(move || {
                let acks = pending.wait().expect("acks");
                (acks.len(), started.elapsed())
            }));
        } else {
            waiters.push(pending);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let last_submitted = started.elapsed();
    let (acked, first_acked) = first.expect("first").join().expect("waiter");
    assert_eq!(acked, 10);
    for p in waiters {
        assert_eq!(p.wait().expect("acks").len(), 10);
    }
    let all_staged = started.elapsed();
    assert!(
        first_acked < last_submitted,
        "the first request (1 ms linger) was acknowledged after {first_acked:?}, when all 80 \
         requests had been sent ({last_submitted:?}; all acknowledged after {all_staged:?}): \
         its batch waited for the queue to empty"
    );
}

/// Records staged for a topic that is deleted fail with `UnknownTopic`, and a topic created
/// again under the name receives none of them. Fails when the staged batch outlives the delete:
/// at its linger it was appended to the new topic's log and acknowledged at its offsets.
#[test]
fn records_staged_for_a_deleted_topic_fail_and_never_reach_its_successor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_with(dir.path(), |_| {});
    engine.create_topic("t", TopicConfig::new(2)).expect("topic");
    let producer = engine.producer().with_linger(Duration::from_millis(300));
    let mut batch = ProducerBatch::new();
    for i in 0..20u64 {
        batch.push(Some(&key(i)), &value(i), None);
    }
    let pending = producer.submit_each("t", batch).expect("submit");
    engine.delete_topic("t").expect("delete");
    engine.create_topic("t", TopicConfig::new(2)).expect("created again");
    match pending.wait() {
        Err(Error::UnknownTopic { .. }) => {}
        other => panic!("records staged for the deleted topic: {other:?}"),
    }
    std::thread::sleep(Duration::from_millis(600));
    for partition in 0..2 {
        let end = engine.partition_offsets("t", partition).expect("offsets").end_offset;
        assert_eq!(
            end, 0,
            "partition {partition} of the new topic holds the deleted topic's records"
        );
    }
}

/// Every record's `Ack` names the offset where a reader finds exactly that record, and one
/// producer's records get increasing offsets per partition, dense from 0.
#[test]
fn offsets_delivered_per_record_are_right_and_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_with(dir.path(), |_| {});
    let partitions = 37;
    engine.create_topic("t", TopicConfig::new(partitions)).expect("topic");
    // Small batches and a linger: records of one request are cut over several stored batches,
    // and records of several requests share one.
    let producer = engine
        .producer()
        .with_linger(Duration::from_millis(20))
        .with_batch_size(700)
        .with_durability(Durability::Synced);
    let mut sent: Vec<(u64, kappa_engine::Ack)> = Vec::new();
    let mut i = 0u64;
    for round in 0..30u64 {
        let mut batch = ProducerBatch::new();
        let n = 1 + round * 7 % 90;
        let first = i;
        for _ in 0..n {
            batch.push(Some(&key(i)), &value(i), None);
            i += 1;
        }
        let acks = producer.send_each("t", batch).expect("send_each");
        assert_eq!(acks.len() as u64, n);
        sent.extend((first..i).zip(acks));
    }
    // Single records through the accumulator, and to a chosen partition.
    for _ in 0..20 {
        let ack = producer.send("t", ProducerRecord::new(value(i)).key(key(i))).expect("send");
        sent.push((i, ack));
        i += 1;
    }
    for _ in 0..10 {
        let ack = producer.send_to("t", 5, ProducerRecord::new(value(i)).key(key(i))).expect("to");
        assert_eq!(ack.partition, 5);
        sent.push((i, ack));
        i += 1;
    }
    let mut per_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (_, ack) in &sent {
        per_partition.entry(ack.partition).or_default().push(ack.offset);
    }
    for (partition, offsets) in &per_partition {
        let expected: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(offsets, &expected, "partition {partition}: offsets in send order");
    }
    for partition in 0..partitions {
        let stored = read_partition(&engine, "t", partition);
        let mine: Vec<_> = sent.iter().filter(|(_, a)| a.partition == partition).collect();
        assert_eq!(stored.len(), mine.len(), "partition {partition}");
        for (record, ack) in mine {
            assert_eq!(stored[&ack.offset], value(*record), "record {record} at {ack:?}");
        }
    }
    let err = producer.send_to("t", partitions, ProducerRecord::new(b"x".to_vec()));
    assert!(
        matches!(err, Err(Error::UnknownPartition { partition, .. }) if partition == partitions)
    );
}

/// The accumulator's bytes per shard are bounded: past `staged_bytes_max`, the oldest staged
/// batches are appended at once instead of waiting out their (here very long) linger.
#[test]
fn staged_bytes_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_with(dir.path(), |c| c.staged_bytes_max = 64 * 1024);
    engine.create_topic("t", TopicConfig::new(64)).expect("topic");
    let producer = engine.producer().with_linger(Duration::from_secs(600));
    let mut pending = Vec::new();
    for b in 0..40u64 {
        let mut batch = ProducerBatch::new();
        for i in b * 100..(b + 1) * 100 {
            batch.push(Some(&key(i)), &[7u8; 200], None);
        }
        pending.push(producer.submit_each("t", batch).expect("submit"));
    }
    let metrics = engine.metrics().expect("metrics");
    for m in &metrics {
        assert!(
            m.staged_bytes <= 64 * 1024 + 100 * 200,
            "shard {}: {} staged",
            m.shard,
            m.staged_bytes
        );
    }
    let memory: u64 = metrics.iter().map(|m| m.stage_flushes.memory).sum();
    assert!(memory > 0, "the bound flushed staged batches");
    // What is still staged is appended at shutdown; every record is acknowledged.
    engine.shutdown().expect("shutdown");
    for p in pending {
        assert_eq!(p.wait().expect("acked").len(), 100);
    }
}

/// An idle partition holds no write buffer: a burst over 300 partitions takes small buffers
/// that come back once the partitions are idle, and after a reopen the shards' pools lend none.
#[test]
fn idle_partitions_hold_no_write_buffer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let partitions = 300;
    {
        let engine = engine_with(dir.path(), |_| {});
        engine.create_topic("t", TopicConfig::new(partitions)).expect("topic");
        let producer = engine.producer();
        let mut batch = ProducerBatch::new();
        for i in 0..3_000 {
            batch.push(Some(&key(i)), &value(i), None);
        }
        producer.send_each("t", batch).expect("send");
        // A burst of small appends to 300 partitions takes small buffers (not 1 MiB each),
        // and once the partitions are idle their tail caches give every buffer back.
        for m in engine.metrics().expect("metrics") {
            let pool = m.buffer_pool;
            assert!(pool.in_use_bytes <= pool.in_use * 64 * 1024, "shard {}: {pool:?}", m.shard);
            assert_eq!(pool.io_memory_misses, 0, "shard {}: {pool:?}", m.shard);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let pools: Vec<_> =
                engine.metrics().expect("metrics").iter().map(|m| m.buffer_pool).collect();
            if pools.iter().all(|p| p.in_use == 0) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "idle partitions keep buffers: {pools:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let engine = engine_with(dir.path(), |_| {});
    for m in engine.metrics().expect("metrics") {
        assert_eq!(m.buffer_pool.in_use, 0, "shard {} lends buffers to idle partitions", m.shard);
        assert_eq!(m.buffer_pool.allocations, 0, "shard {}: {:?}", m.shard, m.buffer_pool);
    }
    let total: u64 = (0..partitions)
        .map(|p| engine.partition_offsets("t", p).expect("offsets").end_offset)
        .sum();
    assert_eq!(total, 3_000);
}

/// A registered DMA pool too small for the write buffers: every buffer glommio places outside it
/// is counted, not silent.
#[test]
fn io_memory_exhaustion_is_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_with(dir.path(), |c| c.io_memory_bytes = 512 * 1024);
    engine.create_topic("t", TopicConfig::new(4)).expect("topic");
    let producer = engine.producer();
    for p in 0..4 {
        // A 600 KB record needs a 1 MiB buffer, more than all of io_memory.
        producer.send_to("t", p, ProducerRecord::new(vec![1u8; 600_000])).expect("send");
    }
    let misses: u64 =
        engine.metrics().expect("metrics").iter().map(|m| m.buffer_pool.io_memory_misses).sum();
    assert!(misses > 0, "1 MiB write buffers cannot come from 512 KiB of io_memory");
}

/// A record a lingering producer left staged is appended before a later plain append to the same
/// partition: arrival order at the shard is offset order.
#[test]
fn staged_records_come_before_a_later_plain_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_with(dir.path(), |_| {});
    engine.create_topic("t", TopicConfig::new(1)).expect("topic");
    let lingering = engine.producer().with_linger(Duration::from_secs(600));
    let staged = lingering.submit("t", ProducerRecord::new(b"first".to_vec())).expect("submit");
    let plain = engine.producer().send("t", ProducerRecord::new(b"second".to_vec())).expect("send");
    assert_eq!(plain.offset, 1, "the staged record went first");
    assert_eq!(staged.wait().expect("acked")[0].offset, 0);
    let stored = read_partition(&engine, "t", 0);
    assert_eq!(stored[&0], b"first".to_vec());
    assert_eq!(stored[&1], b"second".to_vec());
}

/// `Producer::flush` appends what lingers now (Kafka's `flush()`): with a linger of a minute,
/// the records are readable and acknowledged at once after it.
#[test]
fn flush_appends_what_lingers_without_waiting_for_the_linger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_with(dir.path(), |_| {});
    engine.create_topic("t", TopicConfig::new(50)).expect("topic");
    let producer = engine.producer().with_linger(Duration::from_secs(60));
    let mut batch = ProducerBatch::new();
    for i in 0..500 {
        batch.push(Some(&key(i)), &value(i), None);
    }
    let pending = producer.submit_each("t", batch).expect("submit");
    producer.flush().expect("flush");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let readable = || -> u64 {
        engine.topic_offsets("t").expect("offsets").iter().map(|o| o.readable_end_offset).sum()
    };
    while readable() < 500 {
        assert!(std::time::Instant::now() < deadline, "flushed records are not readable");
        std::thread::sleep(Duration::from_millis(5));
    }
    let acks = pending.wait().expect("acks");
    assert_eq!(acks.len(), 500);
}

/// While the shard has nothing on its way to the disk, staged batches holding a quarter of their
/// `batch_size` are appended without waiting for their linger (`accumulate::idle_flusher`), and a
/// smaller one keeps waiting. Partition 1's batch gets large enough while partition 0's append is
/// still on its way, and no request comes after it: it goes once that append is done. Without the
/// idle flusher, a burst smaller than `batch_size` per partition was staged whole before its first
/// byte went to the disk.
#[test]
fn an_idle_shard_appends_large_staged_batches_before_their_linger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_with(dir.path(), |config| config.shards = Some(1));
    engine.create_topic("t", TopicConfig::new(3)).expect("topic");
    // `synced`: partition 0's append stays in flight for an fdatasync, long past the staging of
    // partition 1's request.
    let producer = engine
        .producer()
        .with_linger(Duration::from_secs(60))
        .with_batch_size(64 * 1024)
        .with_durability(Durability::Synced);
    let key_of = |partition: u32| {
        (0u64..)
            .map(key)
            .find(|k| kappa_engine::router::partition_for_key(k, 3) == partition)
            .expect("a key")
    };
    // Partitions 0 and 1: 20 KiB each (past a quarter of 64 KiB), sent back to back; partition 2:
    // 2 KiB.
    let batch_for = |partition: u32, kib: usize| {
        let k = key_of(partition);
        let mut batch = ProducerBatch::new();
        for _ in 0..kib {
            batch.push(Some(&k), &[b'a'; 1024], None);
        }
        batch
    };
    // The small one first; partition 1's request once partition 0's batch went (its append then
    // waits for an fdatasync: partition 1's batch gets large while it is in flight).
    let small = producer.submit_each("t", batch_for(2, 2)).expect("submit");
    let first = producer.submit_each("t", batch_for(0, 20)).expect("submit");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let idle_flushes =
        || -> u64 { engine.metrics().expect("metrics").iter().map(|m| m.stage_flushes.idle).sum() };
    while idle_flushes() < 1 {
        assert!(std::time::Instant::now() < deadline, "partition 0's batch did not go");
        std::thread::sleep(Duration::from_millis(1));
    }
    let second = producer.submit_each("t", batch_for(1, 20)).expect("submit");
    let readable = |partition: u32| {
        engine.partition_offsets("t", partition).expect("offsets").readable_end_offset
    };
    while readable(0) < 20 || readable(1) < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "staged batches of 20 KiB waited for their linger on an idle shard ({} and {} \
             readable)",
            readable(0),
            readable(1)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(first.wait().expect("acks").len(), 20);
    assert_eq!(second.wait().expect("acks").len(), 20);
    // The small one is still staged (a quarter of its batch size not reached).
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(readable(2), 0, "a staged batch of 2 KiB did not wait for its linger");
    assert_eq!(idle_flushes(), 2);
    producer.flush().expect("flush");
    assert_eq!(small.wait().expect("acks").len(), 2);
}

/// The CPU time so far of thread `tid` of this process (utime + stime, clock ticks of 10 ms).
fn thread_cpu(tid: i64) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("stat");
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat").1.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// The idle flusher sleeps while it has nothing to do: with a staged batch too small to go early
/// (and one that went), the shard's thread uses next to no CPU over a second. A flusher that
/// looked again without waiting for a batch to get large enough (or for the disk) would keep its
/// thread busy for all of it.
#[test]
fn the_idle_flusher_sleeps_while_nothing_is_large_enough() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_with(dir.path(), |config| config.shards = Some(1));
    engine.create_topic("t", TopicConfig::new(2)).expect("topic");
    let producer =
        engine.producer().with_linger(Duration::from_secs(60)).with_batch_size(64 * 1024);
    let batch_for = |partition: u32, kib: usize| {
        let k = (0u64..)
            .map(key)
            .find(|k| kappa_engine::router::partition_for_key(k, 2) == partition)
            .expect("a key");
        let mut batch = ProducerBatch::new();
        for _ in 0..kib {
            batch.push(Some(&k), &[b'a'; 1024], None);
        }
        batch
    };
    let went = producer.submit_each("t", batch_for(0, 20)).expect("submit");
    assert_eq!(went.wait().expect("acks").len(), 20);
    let waits = producer.submit_each("t", batch_for(1, 2)).expect("submit");
    // The shard's thread, read from /proc from here on (a busy shard could not answer).
    let tid = engine
        .run_on_partition("t", 0, |_| async {
            // SAFETY: gettid has no preconditions.
            unsafe { libc::syscall(libc::SYS_gettid) }
        })
        .expect("run on the shard");
    let before = thread_cpu(tid);
    std::thread::sleep(Duration::from_secs(1));
    let used = thread_cpu(tid) - before;
    assert!(used < Duration::from_millis(300), "the shard's thread used {used:?} of 1 s idle");
    producer.flush().expect("flush");
    assert_eq!(waits.wait().expect("acks").len(), 2);
}

/// A staged batch that gets large enough while another append is on its way to the disk goes
/// once that append completes, though no request comes after it (`accumulate::idle_flusher` is
/// woken by the shard's last append in flight completing). On a simulated disk whose writes take
/// 300 ms, partition 1's request is sent only once partition 0's batch went to the disk, and
/// nothing is sent after it. With the idle flush as a step of the request loop (before the
/// flusher task), or without the wake, partition 1's batch waits out its 60 s linger.
#[test]
fn a_batch_ripe_while_the_disk_is_busy_goes_when_the_disk_is_done() {
    use kappa_storage::io::{Disk, FaultOptions, SimDisk};
    let sim = SimDisk::new(25);
    let engine = engine_with(std::path::Path::new("/data"), |config| {
        config.shards = Some(1);
        config.log.disk = Disk::Sim(sim.clone());
    });
    engine.create_topic("t", TopicConfig::new(2)).expect("topic");
    sim.set_faults(FaultOptions {
        write_latency: Duration::from_millis(300),
        ..FaultOptions::default()
    });
    let producer =
        engine.producer().with_linger(Duration::from_secs(60)).with_batch_size(64 * 1024);
    let batch_for = |partition: u32| {
        let k = (0u64..)
            .map(key)
            .find(|k| kappa_engine::router::partition_for_key(k, 2) == partition)
            .expect("a key");
        let mut batch = ProducerBatch::new();
        for _ in 0..20 {
            batch.push(Some(&k), &[b'a'; 1024], None);
        }
        batch
    };
    let idle_flushes =
        || -> u64 { engine.metrics().expect("metrics").iter().map(|m| m.stage_flushes.idle).sum() };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let first = producer.submit_each("t", batch_for(0)).expect("submit");
    while idle_flushes() < 1 {
        assert!(std::time::Instant::now() < deadline, "partition 0's batch did not go");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Partition 0's write takes 300 ms: partition 1's batch is ripe while it is in flight. From
    // here on nothing is sent to the shard until partition 1's records are acknowledged (a
    // request would wake a request loop that looks for idle batches between requests).
    let second = producer.submit_each("t", batch_for(1)).expect("submit");
    let (acked, acks) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = acked.send(second.wait().map(|a| a.len()));
    });
    match acks.recv_timeout(Duration::from_secs(10)) {
        Ok(result) => assert_eq!(result.expect("acks"), 20),
        Err(_) => panic!("a batch that got large while the disk was busy waited for its linger"),
    }
    assert_eq!(first.wait().expect("acks").len(), 20);
    assert_eq!(idle_flushes(), 2);
    sim.set_faults(FaultOptions::default());
}

/// A staged batch whose append fails answers every request waiting on it with the append's
/// error, also a request whose records for another partition landed; nothing waits forever, and
/// the records that landed are readable. Here partition 0's writes fail (EIO on the simulated
/// disk) and two requests share its staged batch with records for partition 1.
#[test]
fn a_failed_staged_append_fails_every_request_waiting_on_it() {
    use kappa_storage::io::{Disk, FaultOptions, SimDisk};
    let data = std::path::Path::new("/data");
    let sim = SimDisk::new(26);
    let engine = engine_with(data, |config| {
        config.shards = Some(1);
        config.log.disk = Disk::Sim(sim.clone());
    });
    engine.create_topic("t", TopicConfig::new(2)).expect("topic");
    sim.set_faults(FaultOptions {
        write_eio_probability: 1.0,
        only_under: Some(data.join("topics").join("t").join("0")),
        ..FaultOptions::default()
    });
    // A linger far past the test: both requests share each partition's staged batch, appended by
    // the flush below.
    let producer = engine.producer().with_linger(Duration::from_secs(60));
    let key_of = |partition: u32| {
        (0u64..)
            .map(key)
            .find(|k| kappa_engine::router::partition_for_key(k, 2) == partition)
            .expect("a key")
    };
    let (k0, k1) = (key_of(0), key_of(1));
    let mut pending = Vec::new();
    for r in 0..2u64 {
        let mut batch = ProducerBatch::new();
        for i in 0..10 {
            batch.push(Some(&k0), &value(r * 100 + i), None);
            batch.push(Some(&k1), &value(r * 100 + 50 + i), None);
        }
        pending.push(producer.submit_each("t", batch).expect("submit"));
    }
    let _ = producer.flush();
    let (answered, answers) = std::sync::mpsc::channel();
    for (r, p) in pending.into_iter().enumerate() {
        let answered = answered.clone();
        std::thread::spawn(move || {
            let _ = answered.send((r, p.wait()));
        });
    }
    for _ in 0..2 {
        match answers.recv_timeout(Duration::from_secs(10)) {
            Ok((_, Err(Error::Io { op: "append", .. }))) => {}
            Ok((r, other)) => {
                panic!("request {r}: expected the failed append's error, got {other:?}")
            }
            Err(_) => panic!("a request waiting on a failed staged append was never answered"),
        }
    }
    let (batches, _) = stored_batches(&engine);
    assert_eq!(batches, 2, "both requests' records in one staged batch per partition");
    sim.set_faults(FaultOptions::default());
    let stored = read_partition(&engine, "t", 1);
    assert_eq!(stored.len(), 20, "partition 1's records landed");
}

/// Keys keep their partition when a topic grows, through the accumulator as through a plain
/// send: both route over the partition count before the first growth.
#[test]
fn keys_route_the_same_through_the_accumulator_after_the_topic_grew() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_with(dir.path(), |_| {});
    engine.create_topic("t", TopicConfig::new(4)).expect("topic");
    engine.add_partitions("t", 8).expect("grow");
    let plain = engine.producer();
    let staged = engine.producer().with_linger(Duration::from_millis(1));
    let mut batch = ProducerBatch::new();
    for i in 0..200 {
        batch.push(Some(&key(i)), &value(i), None);
    }
    let acks = staged.send_each("t", batch).expect("send_each");
    for (i, ack) in acks.iter().enumerate() {
        let i = i as u64;
        let direct = plain.send("t", ProducerRecord::new(value(i)).key(key(i))).expect("send");
        assert!(ack.partition < 4, "record {i} went to new partition {}", ack.partition);
        assert_eq!(ack.partition, direct.partition, "record {i}");
    }
}

/// The accumulator's spare buffers count against `staged_bytes_max` with the staged bytes: a
/// burst of small staged batches (each reserving what this shard's batches usually hold) leaves
/// its buffers as spares at the flush, and staging into one batch afterwards crowds spares out.
/// Without the bound the spares of one burst alone hold several times `staged_bytes_max`.
#[test]
fn spare_buffers_stay_within_the_staged_bound() {
    let max = 256 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_with(dir.path(), |c| c.staged_bytes_max = max);
    engine.create_topic("t", TopicConfig::new(64)).expect("topic");
    let producer = engine.producer().with_linger(Duration::from_secs(600));
    let within_bound = |when: &str| {
        for m in engine.metrics().expect("metrics") {
            assert!(
                m.staged_bytes + m.staged_spare_bytes <= max as u64,
                "{when}: shard {}: {} staged + {} spare > {max}",
                m.shard,
                m.staged_bytes,
                m.staged_spare_bytes
            );
        }
    };
    // Batches of about 20 KB: what a staged batch reserves from now on.
    for p in 0..32u64 {
        let mut batch = ProducerBatch::new();
        for _ in 0..20 {
            batch.push(Some(format!("p{p}").as_bytes()), &[1u8; 1000], None);
        }
        producer.submit_each("t", batch).expect("submit");
    }
    producer.flush().expect("flush");
    within_bound("after the first flush");
    // A burst of tiny records over every partition: 64 staged batches of a few hundred bytes,
    // each reserving about 20 KB; the flush makes them spares.
    let mut batch = ProducerBatch::new();
    for i in 0..2_000 {
        batch.push(Some(&key(i)), b"tiny", None);
    }
    let acks = producer.submit_each("t", batch).expect("submit");
    within_bound("after the burst is staged");
    producer.flush().expect("flush");
    acks.wait().expect("acked");
    within_bound("after the burst is flushed");
    let spares: u64 = engine.metrics().expect("metrics").iter().map(|m| m.staged_spare_bytes).sum();
    assert!(spares > 0, "the flushes kept spares");
    // Staging 200 KB into one batch crowds the spares out.
    let big = engine.producer().with_linger(Duration::from_secs(600)).with_batch_size(1 << 20);
    let mut batch = ProducerBatch::new();
    for _ in 0..200 {
        batch.push(Some(b"big"), &[2u8; 1000], None);
    }
    let acks = big.submit_each("t", batch).expect("submit");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while engine.metrics().expect("metrics").iter().all(|m| m.staged_bytes < 200_000) {
        assert!(std::time::Instant::now() < deadline, "the big batch was never staged");
        std::thread::sleep(Duration::from_millis(10));
    }
    within_bound("after the big batch is staged");
    engine.shutdown().expect("shutdown");
    acks.wait().expect("acked");
}

/// One request's records for one partition fill several staged batches (a `batch_size` of
/// 1 KiB): every record still learns its own offset. The part's offsets start in the first of
/// those staged batches (the shard records where, at staging).
#[test]
fn a_request_over_several_staged_batches_learns_every_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_with(dir.path(), |_| {});
    engine.create_topic("t", TopicConfig::new(4)).expect("topic");
    let producer = engine.producer().with_linger(Duration::from_millis(5)).with_batch_size(1024);
    let mut batch = ProducerBatch::new();
    for i in 0..200u64 {
        batch.push(Some(b"one-key"), &value(i), None);
    }
    let acks = producer.send_each("t", batch).expect("acked");
    let partition = acks[0].partition;
    let stored = read_partition(&engine, "t", partition);
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack.partition, partition, "record {i}");
        assert_eq!(stored.get(&ack.offset), Some(&value(i as u64)), "record {i}");
    }
    let (batches, _) = stored_batches(&engine);
    assert!(batches > 1, "the request filled one staged batch only");
    engine.shutdown().expect("shutdown");
}
