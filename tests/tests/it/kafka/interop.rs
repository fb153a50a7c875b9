//! Records cross between the Kafka wire protocol and the rest of kappa, byte for byte: produced
//! through Kafka, they feed views and are read over HTTP and by embedded consumers; produced over
//! HTTP or by embedded producers, Kafka consumers fetch them unchanged. The in-process test runs
//! three shards, so requests reach partitions and groups owned by other shards.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use kappa_engine::kafka::client::{record_batch, Client, Compression};
use kappa_engine::kafka::{KafkaConfig, KafkaServer};
use kappa_engine::storage::{Header, ProducerInfo, Record};
use kappa_engine::{Engine, ProducerBatch, Seek, TopicConfig};
use serde_json::json;

use super::*;
use crate::serve::{Server, SENSORS};

/// Record `i`: key `k{i%5}`, a JSON value the `sums` view reads, a header, event time `i*37`.
fn value(i: u64) -> Vec<u8> {
    format!(
        "{{\"m\":{{\"id\":\"s{}\",\"v\":{}}},\"pad\":\"{}\"}}",
        i % 7,
        i % 100,
        "x".repeat((i % 13) as usize)
    )
    .into_bytes()
}

/// (key, value, timestamp) of a record sent.
type Row = (Vec<u8>, Vec<u8>, i64);
/// (timestamp, key, value) of a record sent.
type Stamped = (i64, Vec<u8>, Vec<u8>);

#[test]
fn kafka_records_feed_views_and_http_and_http_records_reach_kafka() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), &format!("[engine]\nshards = 3\n{SENSORS}"), &[]);
    let mut c = connect(&server);
    let n = 600u64;
    let mut sent: BTreeMap<(i32, i64), Row> = BTreeMap::new();
    for chunk in 0..(n / 50) {
        let partition = (chunk % 3) as i32;
        let rows: Vec<(Vec<u8>, Vec<u8>, i64)> = (chunk * 50..chunk * 50 + 50)
            .map(|i| (format!("k{}", i % 5).into_bytes(), value(i), (i * 37) as i64))
            .collect();
        let headers = [Header { key: b"src", value: Some(b"kafka") }];
        let records: Vec<Record<'_>> = rows
            .iter()
            .map(|(k, v, ts)| Record { timestamp: *ts, key: Some(k), value: v, headers: &headers })
            .collect();
        let codec = [Compression::None, Compression::Gzip, Compression::Zstd][(chunk % 3) as usize];
        let (error, base) = produce(
            &mut c,
            9,
            "sensors",
            partition,
            record_batch(&records, ProducerInfo::default(), codec),
            -1,
        );
        assert_eq!(error, 0);
        for (i, row) in rows.into_iter().enumerate() {
            sent.insert((partition, base + i as i64), row);
        }
    }
    // Over HTTP: every record with its key, value, time and header.
    for ((p, o), (k, v, ts)) in sent.iter().step_by(7) {
        let got = server
            .get(&format!("/v1/topics/sensors/partitions/{p}/records?offset={o}&max_records=1"));
        let r = &got.body["records"][0];
        assert_eq!(r["offset"], json!(o));
        assert_eq!(r["key"].as_str().map(str::as_bytes), Some(k.as_slice()));
        assert_eq!(r["value"].as_str().map(str::as_bytes), Some(v.as_slice()));
        assert_eq!(r["timestamp"], json!(ts));
        assert_eq!(r["headers"]["src"], json!("kafka"));
    }
    // The view folds them: sums per id and 1 s window against a reference.
    let mut reference: BTreeMap<(String, i64), f64> = BTreeMap::new();
    for i in 0..n {
        *reference.entry((format!("s{}", i % 7), (i * 37 / 1000 * 1000) as i64)).or_default() +=
            (i % 100) as f64;
    }
    assert!(
        eventually(Duration::from_secs(60), || server.get("/v1/views/sums").body["versions"][0]
            ["consumed"]
            == json!(n)),
        "the view never consumed the Kafka records"
    );
    for id in 0..7 {
        let rows = server.get(&format!("/v1/views/sums/get?key=s{id}")).body["rows"].clone();
        let have: Vec<(i64, f64)> = rows
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                (r["window_start"].as_i64().expect("start"), r["value"].as_f64().expect("value"))
            })
            .collect();
        let want: Vec<(i64, f64)> = reference
            .iter()
            .filter(|((k, _), _)| *k == format!("s{id}"))
            .map(|((_, w), v)| (*w, *v))
            .collect();
        assert_eq!(have, want, "s{id}");
    }

    // Posted over HTTP (text and binary), fetched through Kafka: the same bytes.
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    let posted = server.post_json(
        "/v1/topics/sensors/records?durability=written&per_record=true",
        &json!([
            { "key": "http-1", "value": "plain text", "timestamp": 123, "headers": { "a": "b" } },
            { "key_b64": base64::engine::general_purpose::STANDARD.encode([0u8, 1, 2]), "value_b64": base64::engine::general_purpose::STANDARD.encode(&binary), "timestamp": 456 },
        ]),
    );
    assert_eq!(posted.status, 200, "{posted:?}");
    let places: Vec<(i32, i64)> = posted.body["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| (r["partition"].as_i64().expect("p") as i32, r["offset"].as_i64().expect("o")))
        .collect();
    let expected = [
        (
            Some(b"http-1".to_vec()),
            b"plain text".to_vec(),
            123,
            vec![("a".to_string(), Some(b"b".to_vec()))],
        ),
        (Some(vec![0u8, 1, 2]), binary.clone(), 456, Vec::new()),
    ];
    for ((partition, offset), (key, value, ts, headers)) in places.into_iter().zip(expected) {
        let f = fetch(&mut c, 12, "sensors", partition, offset, 0, 1, 1 << 20);
        let got = decode(&f.records).into_iter().find(|r| r.0 == offset).expect("the record");
        assert_eq!(got, (offset, ts, key, Some(value), headers));
    }
}

/// A Fetch of every partition of `topic` from `offsets` in one request (several shards).
fn fetch_all(c: &mut Client, topic: &str, offsets: &[i64]) -> Vec<Vec<Seen>> {
    let request =
        FetchRequest::default().with_max_wait_ms(0).with_max_bytes(64 << 20).with_topics(vec![
            FetchTopic::default().with_topic(name(topic)).with_partitions(
                offsets
                    .iter()
                    .enumerate()
                    .map(|(p, o)| {
                        FetchPartition::default()
                            .with_partition(p as i32)
                            .with_fetch_offset(*o)
                            .with_partition_max_bytes(1 << 20)
                    })
                    .collect(),
            ),
        ]);
    let response: FetchResponse = c.call(11, &request).expect("fetch");
    response.responses[0]
        .partitions
        .iter()
        .map(|p| {
            assert_eq!(p.error_code, 0);
            decode(&p.records.clone().unwrap_or_default())
        })
        .collect()
}

#[test]
fn embedded_consumers_and_producers_meet_kafka_clients_byte_for_byte() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(
        Engine::builder()
            .data_dir(temp.path())
            .shards(3)
            .io_memory_bytes(4 << 20)
            .build()
            .expect("engine"),
    );
    engine.create_topic("mixed", TopicConfig::new(6)).expect("topic");
    let mut config = KafkaConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.group_initial_rebalance_delay = Duration::ZERO;
    let kafka = KafkaServer::start(&engine, config).expect("kafka");
    let shards: std::collections::BTreeSet<u16> =
        (0..6).map(|p| engine.shard_of("mixed", p).0).collect();
    assert!(shards.len() > 1, "the partitions span shards");
    let mut c = Client::connect(kafka.local_addr()).expect("connect");

    // Kafka -> embedded consumer.
    let mut sent: Vec<Vec<Stamped>> = vec![Vec::new(); 6];
    for p in 0..6i32 {
        let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = (0..40)
            .map(|i| {
                (
                    1000 + i,
                    format!("k{p}-{i}").into_bytes(),
                    (0..(i * 11 % 97)).map(|b| (b as u8) ^ (p as u8)).collect(),
                )
            })
            .collect();
        let records: Vec<Record<'_>> =
            rows.iter().map(|(ts, k, v)| Record::new(*ts, Some(k), v)).collect();
        let (error, base) = produce(
            &mut c,
            9,
            "mixed",
            p,
            record_batch(&records, ProducerInfo::default(), Compression::Snappy),
            1,
        );
        assert_eq!((error, base), (0, 0));
        sent[p as usize] = rows;
    }
    for p in 0..6u32 {
        let mut consumer = engine.consumer("mixed", p, Seek::Beginning).expect("consumer");
        let mut got = Vec::new();
        while got.len() < 40 {
            let batch = consumer
                .next_batch_timeout(Duration::from_secs(30))
                .expect("consumer")
                .expect("a batch within 30 s");
            got.extend(
                batch
                    .records()
                    .map(|r| (r.timestamp(), r.key().expect("key").to_vec(), r.value().to_vec())),
            );
        }
        assert_eq!(got, sent[p as usize], "partition {p}");
    }

    // Embedded producer -> one Kafka fetch across every partition (and so every shard).
    let producer = engine.producer();
    let mut batch = ProducerBatch::new();
    for i in 0..120u32 {
        batch.push(
            Some(format!("emb-{i}").as_bytes()),
            &i.to_be_bytes(),
            Some(5000 + i64::from(i)),
        );
    }
    let acks = producer.send_packed("mixed", batch).expect("send");
    let fetched = fetch_all(&mut c, "mixed", &[40; 6]);
    let mut total = 0;
    for ack in acks {
        let records = &fetched[ack.partition as usize];
        let count = (ack.last_offset - ack.base_offset + 1) as usize;
        assert_eq!(records.len(), count, "partition {}", ack.partition);
        for r in records {
            let i = u32::from_be_bytes(r.3.as_deref().expect("value").try_into().expect("4 bytes"));
            assert_eq!(r.2.as_deref(), Some(format!("emb-{i}").as_bytes()));
            assert_eq!(r.1, 5000 + i64::from(i));
        }
        total += count;
    }
    assert_eq!(total, 120);
    drop(c);
    kafka.stop();
    engine.shutdown().expect("shutdown");
}

/// Sets its flag when dropped, also when the test's thread panics: a background producer that
/// loops until the flag is set stops, so a failing test fails instead of waiting for it.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One shard (the accumulator and the Kafka append meet on it), small DMA memory, at most
/// `appends_in_flight` appends in flight; with a Kafka listener on a free loopback port and a
/// client connected to it.
fn one_shard_with_kafka(
    dir: &std::path::Path,
    appends_in_flight: Option<usize>,
) -> (Arc<Engine>, KafkaServer, Client) {
    let mut builder = Engine::builder().data_dir(dir).shards(1).io_memory_bytes(4 << 20);
    if let Some(appends) = appends_in_flight {
        builder = builder.appends_in_flight_max(appends);
    }
    let engine = Arc::new(builder.build().expect("engine"));
    let kafka = KafkaServer::start(&engine, KafkaConfig::new("127.0.0.1:0".parse().expect("addr")))
        .expect("kafka");
    let client = Client::connect(kafka.local_addr()).expect("connect");
    (engine, kafka, client)
}

/// Produces one record (`kafka` -> `from-kafka`) through Kafka to `topic`'s `partition`, acks=1.
fn produce_one_kafka_record(c: &mut Client, topic: &str, partition: i32) {
    let records =
        [Record { timestamp: 1, key: Some(b"kafka"), value: b"from-kafka", headers: &[] }];
    let batch = record_batch(&records, ProducerInfo::default(), Compression::None);
    let (error, _) = produce(c, 9, topic, partition, batch, 1);
    assert_eq!(error, 0, "the Kafka produce failed");
}

/// A Kafka produce to a topic that embedded producers keep busy finishes: three threads keep
/// the shard's queue full of requests to the topic (16 in flight each, a linger, 1 KiB batches,
/// one append in flight, so every request waits inside its staging), and 20 Kafka produces to it
/// each finish within seconds. Fails without `shard::Turn`: the Kafka append, woken when a
/// request's staging ends, only ever ran while the next request was being staged (the request
/// loop goes from one to the next without suspending), saw `SplitPart::Staging` and waited again,
/// until the producers stopped (a produce took 20.0 s, twice, with the wait for `Turn` taken out
/// of `stage`).
#[test]
fn a_kafka_produce_gets_its_turn_beside_busy_embedded_producers() {
    let temp = tempfile::tempdir().expect("tempdir");
    let (engine, kafka, mut c) = one_shard_with_kafka(temp.path(), Some(1));
    engine.create_topic("busy", TopicConfig::new(2)).expect("topic");
    let done = std::sync::atomic::AtomicBool::new(false);
    let slowest = std::thread::scope(|s| {
        for t in 0..3u64 {
            let (engine, done) = (&engine, &done);
            s.spawn(move || {
                // A linger, so staging ends with no await (a request with none flushes its
                // parts after its staging, and the waiting append runs then); batches of 1 KiB,
                // so each request waits mid-staging for full batches to append; 16 requests in
                // flight per thread, so the shard's queue never empties between requests.
                let producer =
                    engine.producer().with_linger(Duration::from_secs(1)).with_batch_size(1024);
                let mut in_flight = std::collections::VecDeque::new();
                let mut i = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut batch = ProducerBatch::new();
                    for _ in 0..200 {
                        let key = format!("key-{t}-{}", i % 7);
                        batch.push(Some(key.as_bytes()), &[b'v'; 60], None);
                        i += 1;
                    }
                    in_flight.push_back(producer.submit_each("busy", batch).expect("submitted"));
                    if in_flight.len() > 16 {
                        in_flight.pop_front().map(|p| p.wait().expect("acked"));
                    }
                }
                for pending in in_flight {
                    pending.wait().expect("acked");
                }
            });
        }
        // A starved produce is not a hang: the producers stop after 20 s at the latest, and
        // the produce that waited that long fails the assertion below.
        s.spawn(|| {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if std::time::Instant::now() > deadline {
                    done.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let _stop = StopOnDrop(&done);
        std::thread::sleep(Duration::from_millis(200));
        let mut slowest = Duration::ZERO;
        for _ in 0..20 {
            let started = std::time::Instant::now();
            produce_one_kafka_record(&mut c, "busy", 0);
            slowest = slowest.max(started.elapsed());
        }
        slowest
    });
    assert!(slowest < Duration::from_secs(5), "a Kafka produce took {slowest:?}");
    drop(c);
    kafka.stop();
    engine.shutdown().expect("shutdown");
}

/// The same over two partitions, the request's records alternating between them: the shard
/// stages them in batch order, so a partition's part of the request stays open while the shard
/// waits to append the other partition's full batch (here it always waits: one append in flight
/// at a time). A Kafka producer appending to the first partition all along never lands between
/// the request's records there. Fails when a Kafka append may go while a part is open (the
/// first version of batch-order staging): records after it are acknowledged at offsets that hold
/// other records.
#[test]
fn a_kafka_produce_never_lands_inside_an_embedded_request_over_two_partitions() {
    let temp = tempfile::tempdir().expect("tempdir");
    let (engine, kafka, mut c) = one_shard_with_kafka(temp.path(), Some(1));
    engine.create_topic("split2", TopicConfig::new(2)).expect("topic");
    // A key for each partition.
    let key_of = |p: u32| {
        (0u32..)
            .map(|i| format!("key-{i}").into_bytes())
            .find(|k| kappa_engine::router::partition_for_key(k, 2) == p)
            .expect("a key")
    };
    let keys = [key_of(0), key_of(1)];
    let producer = engine.producer().with_linger(Duration::from_secs(5)).with_batch_size(1024);
    let rounds = 5;
    let records = 400u64;
    let values: Vec<Vec<u8>> = (0..rounds * records)
        .map(|i| format!("embedded-{i:05}-{}", "v".repeat(40)).into_bytes())
        .collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut acks = Vec::new();
    let kafka_appends = std::thread::scope(|s| {
        let hammer = s.spawn(|| {
            let mut n = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                produce_one_kafka_record(&mut c, "split2", 0);
                n += 1;
            }
            n
        });
        let stop = StopOnDrop(&done);
        for round in 0..rounds {
            let mut batch = ProducerBatch::new();
            for i in round * records..(round + 1) * records {
                batch.push(Some(&keys[(i % 2) as usize]), &values[i as usize], None);
            }
            acks.extend(producer.send_each("split2", batch).expect("acked"));
        }
        drop(stop);
        hammer.join().expect("the Kafka producer")
    });
    assert!(kafka_appends > 0, "the Kafka producer appended nothing");
    for partition in 0..2u32 {
        let stored = crate::batching::read_partition(&engine, "split2", partition);
        for (i, ack) in acks.iter().enumerate().filter(|(_, a)| a.partition == partition) {
            assert_eq!(
                stored.get(&ack.offset),
                Some(&values[i]),
                "record {i} acknowledged at partition {partition} offset {}",
                ack.offset
            );
        }
    }
    drop(c);
    kafka.stop();
    engine.shutdown().expect("shutdown");
}

/// An embedded request learns every record's offset from one acknowledgement per partition, so
/// its records for a partition must be contiguous in the log, also when they fill several staged
/// batches. A Kafka produce to that partition while the request's last staged batch lingers (its
/// first batches already appended) goes after that batch. Fails with Kafka's append going ahead
/// of it: the request's last records are then acknowledged at offsets that hold the Kafka record
/// and the request's own records shifted by one.
#[test]
fn a_kafka_produce_never_lands_inside_an_embedded_request() {
    let temp = tempfile::tempdir().expect("tempdir");
    let (engine, kafka, mut c) = one_shard_with_kafka(temp.path(), None);
    engine.create_topic("split", TopicConfig::new(1)).expect("topic");
    // Staged batches of 1 KiB: 200 records of ~60 bytes fill about a dozen, appended as they
    // fill; the last one lingers for 5 s.
    let producer = engine.producer().with_linger(Duration::from_secs(5)).with_batch_size(1024);
    let values: Vec<Vec<u8>> =
        (0..200u64).map(|i| format!("embedded-{i:04}-{}", "v".repeat(40)).into_bytes()).collect();
    let mut batch = ProducerBatch::new();
    for v in &values {
        batch.push(Some(b"k"), v, None);
    }
    let acks = std::thread::scope(|s| {
        let sending = s.spawn(move || producer.send_each("split", batch).expect("acked"));
        // Once the request's first staged batches are in the log ...
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while engine.partition_offsets("split", 0).expect("offsets").end_offset == 0 {
            assert!(std::time::Instant::now() < deadline, "no staged batch was appended");
            std::thread::sleep(Duration::from_millis(2));
        }
        // ... a Kafka client produces to the same partition.
        produce_one_kafka_record(&mut c, "split", 0);
        sending.join().expect("the embedded producer")
    });
    let end = engine.partition_offsets("split", 0).expect("offsets").end_offset;
    assert_eq!(end, 201, "every record stored once");
    let stored = crate::batching::read_partition(&engine, "split", 0);
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(
            stored.get(&ack.offset),
            Some(&values[i]),
            "record {i} at offset {}",
            ack.offset
        );
    }
    drop(c);
    kafka.stop();
    engine.shutdown().expect("shutdown");
}
