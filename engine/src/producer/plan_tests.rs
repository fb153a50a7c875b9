//! `Producer::plan` against a plan made by hand: every record in its partition's part, in order.

use super::*;
use crate::router::partition_for_key;
use std::collections::BTreeMap;
use std::time::Duration;

fn key(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    format!("k{x:016x}").into_bytes()
}

/// Checks a plan against a routing done by hand: each shard's parts unique, on that shard
/// and in order of first appearance; indexes in batch order; ranks dense per partition.
fn check_plan(producer: &Producer, topic: &str, batch: &ProducerBatch, to: Option<u32>) {
    let meta = producer.inner.topic(topic).expect("test setup");
    let kp = meta.config.key_partition_count();
    let (requests, pending) = producer.plan(topic, batch.clone(), to).expect("test setup");
    // global parts in reply order
    let mut global: Vec<u32> = Vec::new();
    let mut last_shard = None;
    for (shard, request) in &requests {
        assert!(last_shard.is_none_or(|l| l < *shard), "shards ascending");
        last_shard = Some(*shard);
        let Request::Stage(stage) = request else { panic!("stage") };
        let mut seen = std::collections::BTreeSet::new();
        for p in &stage.parts {
            assert!(seen.insert(*p), "partition {p} twice in parts");
            assert_eq!(meta.shards[*p as usize], *shard);
        }
        assert_eq!(stage.indexes.len(), stage.record_parts.len());
        assert!(stage.indexes.windows(2).all(|w| w[0] < w[1]), "batch order");
        for (&i, &part) in stage.indexes.iter().zip(&stage.record_parts) {
            let p = stage.parts[part as usize];
            let want = match (to, batch.key(i as usize)) {
                (Some(p), _) => p,
                (None, Some(k)) => partition_for_key(k, kp),
                (None, None) => p, // unkeyed: one round-robin partition, checked below
            };
            assert_eq!(p, want, "record {i}");
        }
        // first-appearance order
        let mut order = Vec::new();
        for &part in &stage.record_parts {
            if !order.contains(&part) {
                order.push(part);
            }
        }
        assert_eq!(order, (0..stage.parts.len() as u32).collect::<Vec<_>>());
        global.extend(&stage.parts);
    }
    assert_eq!(pending.records.len(), batch.len());
    let mut rank: BTreeMap<u32, u32> = BTreeMap::new();
    let mut unkeyed = None;
    for (i, &(part, r)) in pending.records.iter().enumerate() {
        let p = global[part as usize];
        if to.is_none() && batch.key(i).is_none() {
            assert!(unkeyed.is_none_or(|u| u == p), "unkeyed go to one partition");
            unkeyed = Some(p);
        }
        let next = rank.entry(p).or_insert(0);
        assert_eq!(r, *next, "record {i} rank");
        *next += 1;
    }
}

fn read_all(engine: &crate::Engine, topic: &str, partition: u32) -> BTreeMap<u64, Vec<u8>> {
    let end = engine.partition_offsets(topic, partition).expect("test setup").end_offset;
    let mut consumer =
        engine.consumer(topic, partition, crate::Seek::Beginning).expect("test setup");
    let mut out = BTreeMap::new();
    while consumer.position() < end {
        let batch = consumer
            .next_batch_timeout(Duration::from_secs(10))
            .expect("test setup")
            .expect("test setup");
        for record in batch.records() {
            out.insert(record.offset(), record.value().to_vec());
        }
    }
    out
}

#[test]
fn plan_routes_and_acks_right_across_shards_growth_and_wrap() {
    let dir = tempfile::tempdir().expect("test setup");
    let engine =
        crate::Engine::builder().data_dir(dir.path()).shards(3).build().expect("test setup");
    engine.create_topic("t", crate::TopicConfig::new(7)).expect("test setup");
    engine.create_topic("u", crate::TopicConfig::new(3)).expect("test setup");
    let producer = engine.producer();
    let lingering = engine.producer().with_linger(Duration::from_millis(3)).with_batch_size(300);
    let mut sent: Vec<(String, Vec<u8>, Ack)> = Vec::new();
    let mut n = 0u64;
    for round in 0..60u64 {
        if round == 20 {
            engine.add_partitions("t", 61).expect("test setup");
        }
        if round == 40 {
            // The plan number wraps in the next plans.
            PART_OF.with(|t| t.borrow_mut().0 = u32::MAX - 3);
        }
        let topic = if round % 5 == 4 { "u" } else { "t" };
        let mut batch = ProducerBatch::new();
        let len = 1 + (round * 37) % 300;
        let mut values = Vec::new();
        for j in 0..len {
            let v = format!("v{n}").into_bytes();
            n += 1;
            let k = if (round % 7 == 3) || (round % 3 == 1 && j % 4 == 0) {
                None
            } else {
                Some(key(n))
            };
            batch.push(k.as_deref(), &v, None);
            values.push(v);
        }
        let to = (round % 11 == 5).then_some((round as u32) % 3);
        check_plan(&producer, topic, &batch, to);
        let p = if round % 2 == 0 { &producer } else { &lingering };
        let acks = match to {
            Some(to) => p
                .submit_routed(topic, batch, Some(to), Mode::Block)
                .expect("test setup")
                .wait()
                .expect("test setup"),
            None => p.submit_each(topic, batch).expect("test setup").wait().expect("test setup"),
        };
        assert_eq!(acks.len(), values.len());
        for (v, a) in values.into_iter().zip(acks) {
            sent.push((topic.to_string(), v, a));
        }
    }
    let mut stored: BTreeMap<(String, u32), BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
    for (topic, value, ack) in &sent {
        let s = stored
            .entry((topic.clone(), ack.partition))
            .or_insert_with(|| read_all(&engine, topic, ack.partition));
        assert_eq!(s.get(&ack.offset), Some(value), "{topic} {ack:?}");
    }
    let total: usize = stored.values().map(|s| s.len()).sum();
    assert_eq!(total, sent.len());
    assert!(PART_OF.with(|t| t.borrow().0) < 100, "wrapped");
    engine.shutdown().expect("test setup");
}

#[test]
fn the_part_table_grows_and_shrinks_back() {
    let mut table = Vec::new();
    fit_part_of(&mut table, 1_000_000);
    assert_eq!(table.len(), 1_000_000);
    fit_part_of(&mut table, 300_000);
    assert_eq!(table.len(), 1_000_000, "within 4x: kept");
    fit_part_of(&mut table, 10);
    assert_eq!(table.len(), 10);
    assert!(table.capacity() < 4096, "{}", table.capacity());
    fit_part_of(&mut table, 5_000);
    assert_eq!(table.len(), 5_000);
    assert!(table.iter().all(|&(plan, _)| plan == 0));
}

/// A producer used from a thread-local's destructor, after its thread's `PART_OF` is gone
/// (thread-locals are destroyed in the reverse order of their first use): it plans with a
/// table of its own. With `PART_OF.with` this panicked, and a panic in a thread-local's
/// destructor aborts the process.
#[test]
fn a_producer_plans_in_a_thread_local_destructor() {
    struct SendsOnDrop(Option<(Producer, std::sync::mpsc::Sender<usize>)>);
    impl Drop for SendsOnDrop {
        fn drop(&mut self) {
            if let Some((producer, done)) = self.0.take() {
                let mut batch = ProducerBatch::new();
                for i in 0..10u64 {
                    batch.push(Some(&key(i)), b"v", None);
                }
                let pending = producer.submit_each("t", batch).expect("test setup");
                let _ = done.send(pending.len());
            }
        }
    }
    thread_local! {
        static GUARD: std::cell::RefCell<SendsOnDrop> =
            const { std::cell::RefCell::new(SendsOnDrop(None)) };
    }
    let dir = tempfile::tempdir().expect("test setup");
    let engine =
        crate::Engine::builder().data_dir(dir.path()).shards(2).build().expect("test setup");
    engine.create_topic("t", crate::TopicConfig::new(5)).expect("test setup");
    let producer = engine.producer();
    let (done, planned) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // First use of GUARD, then of PART_OF: PART_OF is destroyed first.
        GUARD.with(|g| g.borrow_mut().0 = Some((producer.clone(), done)));
        producer.submit_each("t", ProducerBatch::new()).expect("test setup");
        assert!(PART_OF.try_with(|_| ()).is_ok());
    })
    .join()
    .expect("the thread exits cleanly");
    assert_eq!(planned.recv_timeout(Duration::from_secs(10)), Ok(10));
    engine.shutdown().expect("test setup");
}
