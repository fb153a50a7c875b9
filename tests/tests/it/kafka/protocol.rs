//! The real `kappa serve` driven by a raw Kafka client: every API at the versions real clients
//! use, checked against what was sent (decoded back with `kafka-protocol`).

use std::time::{Duration, Instant};

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kappa_engine::kafka::client::{record_batch, Compression};
use kappa_engine::kafka::SUPPORTED_APIS;
use kappa_engine::storage::{Header, ProducerInfo, Record};

use super::*;
use crate::serve::Server;

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

#[test]
fn api_versions_and_metadata_with_auto_creation() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), "", &[]);
    let mut c = connect(&server);
    let versions: ApiVersionsResponse = c.call(3, &ApiVersionsRequest::default()).expect("v3");
    let advertised: Vec<(i16, i16, i16)> =
        versions.api_keys.iter().map(|k| (k.api_key, k.min_version, k.max_version)).collect();
    assert_eq!(advertised, SUPPORTED_APIS.to_vec());
    // A version we do not know: the v0 layout with UNSUPPORTED_VERSION and the table, so the
    // client can retry (kafka-python does exactly this).
    let v4: ApiVersionsResponse = c.call(4, &ApiVersionsRequest::default()).expect("v4");
    assert_eq!((v4.error_code, v4.api_keys.len()), (0, SUPPORTED_APIS.len()));
    let mut header = bytes::BytesMut::new();
    for v in [0x0012_0009i32, 42] {
        header.extend_from_slice(&v.to_be_bytes());
    }
    header.extend_from_slice(&[0xff, 0xff]); // null client id
    let mut frame = (header.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&header);
    c.send_raw(&frame).expect("ApiVersions v9");
    let mut raw = c.read_frame().expect("frame");
    let _ = raw.split_to(4);
    let v9: ApiVersionsResponse =
        kafka_protocol::protocol::Decodable::decode(&mut raw, 0).expect("v0 layout");
    assert_eq!(v9.error_code, 35, "UNSUPPORTED_VERSION");
    assert_eq!(v9.api_keys.len(), SUPPORTED_APIS.len());

    // Auto-creation on Metadata, at every version clients use.
    for (version, topic) in [(0i16, "auto-v0"), (4, "auto-v4"), (9, "auto-v9"), (12, "auto-v12")] {
        let m = metadata(&mut c, version, Some(&[topic]), true);
        assert_eq!(m.topics.len(), 1, "v{version}");
        assert_eq!(m.topics[0].error_code, 0, "v{version}");
        assert_eq!(m.topics[0].partitions.len(), 1, "v{version}");
        assert_eq!(
            m.brokers[0].port,
            server
                .kafka
                .as_ref()
                .expect("kafka")
                .rsplit(':')
                .next()
                .expect("port")
                .parse::<i32>()
                .expect("port")
        );
    }
    let refused = metadata(&mut c, 12, Some(&["not-created"]), false);
    assert_eq!(refused.topics[0].error_code, 3, "allow_auto_topic_creation = false");
    let invalid = metadata(&mut c, 12, Some(&["bad/name"]), true);
    assert_eq!(invalid.topics[0].error_code, 17);
    let all = metadata(&mut c, 1, None, true);
    let names: Vec<(String, bool)> = all
        .topics
        .iter()
        .map(|t| (t.name.as_ref().expect("name").0.to_string(), t.is_internal))
        .collect();
    assert!(names.contains(&("__consumer_offsets".to_string(), true)), "{names:?}");
    assert!(names.contains(&("auto-v12".to_string(), false)), "{names:?}");
    assert!(!names.iter().any(|(n, _)| n == "not-created"));
    assert_eq!(server.get("/v1/topics/auto-v4").status, 200, "created for real");

    // Switched off in the config: nothing is created.
    let temp2 = tempfile::tempdir().expect("tempdir");
    let off = Server::start(temp2.path(), "[kafka]\nauto_create_topics = false\n", &[]);
    let mut c2 = connect(&off);
    let m = metadata(&mut c2, 9, Some(&["nope"]), true);
    assert_eq!(m.topics[0].error_code, 3);
    assert_eq!(off.get("/v1/topics/nope").status, 404);
}

fn records(n: usize, tag: &str, base_ts: i64) -> Vec<(Vec<u8>, Vec<u8>, i64)> {
    (0..n)
        .map(|i| {
            let value: Vec<u8> = if i % 3 == 0 {
                (0..(i * 7 % 300)).map(|b| (b * 31 + i) as u8).collect() // binary
            } else {
                format!("{{\"tag\":\"{tag}\",\"i\":{i}}}").into_bytes()
            };
            (format!("key-{}", i % 4).into_bytes(), value, base_ts + i as i64)
        })
        .collect()
}

fn batch(
    rs: &[(Vec<u8>, Vec<u8>, i64)],
    producer: ProducerInfo,
    compression: Compression,
) -> Vec<u8> {
    let headers = [Header { key: b"h", value: Some(b"v") }];
    let borrowed: Vec<Record<'_>> = rs
        .iter()
        .enumerate()
        .map(|(i, (k, v, ts))| Record {
            timestamp: *ts,
            key: (i % 5 != 4).then_some(k.as_slice()),
            value: v,
            headers: if i % 2 == 0 { &headers } else { &[] },
        })
        .collect();
    record_batch(&borrowed, producer, compression)
}

#[test]
fn produce_and_fetch_every_codec_acks_and_version() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), "[topics.t]\npartitions = 2\n", &[]);
    let mut c = connect(&server);
    let mut expected: Vec<Seen> = Vec::new();
    let codecs = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];
    let mut next = 0i64;
    for (round, codec) in codecs.into_iter().enumerate() {
        for (acks, version) in [(1i16, 3i16), (-1, 7), (1, 9), (-1, 12)] {
            let rs = records(25, &format!("{codec:?}{acks}{version}"), 1_000_000 + next);
            let (error, base) =
                produce(&mut c, version, "t", 1, batch(&rs, ProducerInfo::default(), codec), acks);
            assert_eq!((error, base), (0, next), "{codec:?} acks={acks} v{version} round {round}");
            for (i, (k, v, ts)) in rs.iter().enumerate() {
                let headers = if i % 2 == 0 {
                    vec![("h".to_string(), Some(b"v".to_vec()))]
                } else {
                    Vec::new()
                };
                expected.push((
                    next + i as i64,
                    *ts,
                    (i % 5 != 4).then(|| k.clone()),
                    Some(v.clone()),
                    headers,
                ));
            }
            next += rs.len() as i64;
        }
    }
    // acks=0: no response; the next request's answer is the next frame.
    let rs = records(10, "acks0", 5_000_000);
    let request =
        ProduceRequest::default().with_acks(0).with_timeout_ms(1000).with_topic_data(vec![
            produce_request::TopicProduceData::default().with_name(name("t")).with_partition_data(
                vec![produce_request::PartitionProduceData::default().with_index(1).with_records(
                    Some(batch(&rs, ProducerInfo::default(), Compression::Lz4).into()),
                )],
            ),
        ]);
    c.send(9, &request).expect("acks=0");
    let versions =
        c.call::<ApiVersionsRequest>(3, &ApiVersionsRequest::default()).expect("next answer");
    assert!(!versions.api_keys.is_empty());
    for (i, (k, v, ts)) in rs.iter().enumerate() {
        let headers =
            if i % 2 == 0 { vec![("h".to_string(), Some(b"v".to_vec()))] } else { Vec::new() };
        expected.push((
            next + i as i64,
            *ts,
            (i % 5 != 4).then(|| k.clone()),
            Some(v.clone()),
            headers,
        ));
    }
    next += rs.len() as i64;
    assert!(eventually(Duration::from_secs(10), || fetch(&mut c, 12, "t", 1, 0, 0, 0, 1 << 20)
        .high_watermark
        == next));

    // Fetched back at every version, from the start: every record, bytes intact.
    for version in [4i16, 7, 10, 11, 12] {
        let mut seen = Vec::new();
        let mut offset = 0;
        while offset < next {
            let f = fetch(&mut c, version, "t", 1, offset, 100, 1, 4096);
            assert_eq!(f.error_code, 0, "v{version}");
            assert_eq!(f.high_watermark, next);
            let got = decode(&f.records);
            assert!(!got.is_empty());
            offset = got.last().expect("records").0 + 1;
            seen.extend(got.into_iter().filter(|r| r.0 >= 0));
        }
        assert_eq!(seen, expected, "v{version}");
    }
    // The other partition is untouched.
    let empty = fetch(&mut c, 12, "t", 0, 0, 0, 0, 1 << 20);
    assert_eq!((empty.error_code, empty.high_watermark, empty.records.len()), (0, 0, 0));
}

#[test]
fn fetch_returns_whole_batches_and_at_least_one_over_the_limit() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), "[topics.t]\npartitions = 1\n", &[]);
    let mut c = connect(&server);
    for b in 0..3 {
        let rs = records(10, "b", b * 100);
        assert_eq!(
            produce(&mut c, 9, "t", 0, batch(&rs, ProducerInfo::default(), Compression::None), 1),
            (0, b * 10)
        );
    }
    // From the middle of the second batch: that whole batch comes back first.
    let f = fetch(&mut c, 12, "t", 0, 15, 0, 1, 1 << 20);
    assert_eq!(batch_bases(&f.records), vec![10, 20]);
    assert_eq!(decode(&f.records).first().map(|r| r.0), Some(10));
    // A partition limit of 1 byte still returns one (whole) batch.
    let f = fetch(&mut c, 12, "t", 0, 15, 0, 1, 1);
    assert_eq!(batch_bases(&f.records), vec![10]);
    // ... and the next fetch continues after it.
    let f = fetch(&mut c, 12, "t", 0, 20, 0, 1, 1);
    assert_eq!(batch_bases(&f.records), vec![20]);
    // Out of range: past the end, negative.
    assert_eq!(fetch(&mut c, 12, "t", 0, 31, 0, 1, 1 << 20).error_code, 1);
    assert_eq!(fetch(&mut c, 12, "t", 0, -5, 0, 1, 1 << 20).error_code, 1);
    // At the end: nothing, no error.
    let f = fetch(&mut c, 12, "t", 0, 30, 0, 1, 1 << 20);
    assert_eq!((f.error_code, f.records.len(), f.log_start_offset), (0, 0, 0));
    // Unknown topic and partition.
    assert_eq!(fetch(&mut c, 12, "nope", 0, 0, 0, 1, 1 << 20).error_code, 3);
    assert_eq!(fetch(&mut c, 12, "t", 1, 0, 0, 1, 1 << 20).error_code, 3);
}

#[test]
fn long_polls_wait_for_records_or_max_wait() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), "[topics.t]\npartitions = 2\n", &[]);
    let addr = server.kafka.clone().expect("kafka");
    let mut c = connect(&server);
    // Nothing arrives: the answer comes after max_wait, empty.
    let started = Instant::now();
    let f = fetch(&mut c, 12, "t", 0, 0, 400, 1, 1 << 20);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!((f.error_code, f.records.len()), (0, 0));
    // A record arrives on another connection mid-wait: the poll answers with it.
    let producer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut p = kappa_engine::kafka::client::Client::connect(addr.as_str()).expect("connect");
        produce(
            &mut p,
            9,
            "t",
            1,
            batch(&records(3, "late", 7), ProducerInfo::default(), Compression::None),
            1,
        )
    });
    let started = Instant::now();
    let f = fetch(&mut c, 12, "t", 1, 0, 20_000, 1, 1 << 20);
    let waited = started.elapsed();
    assert_eq!(producer.join().expect("producer"), (0, 0));
    assert_eq!(decode(&f.records).len(), 3);
    assert!(waited >= Duration::from_millis(250), "answered before the record existed: {waited:?}");
    // min_bytes larger than what is there: wait until max_wait, then answer with what there is.
    let started = Instant::now();
    let f = fetch(&mut c, 12, "t", 1, 0, 500, 1 << 20, 1 << 20);
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(decode(&f.records).len(), 3);
    // min_bytes 0: at once, even when empty.
    let f = fetch(&mut c, 12, "t", 0, 0, 10_000, 0, 1 << 20);
    assert_eq!(f.records.len(), 0);
}

/// A long poll is woken by the produce, not by its `max_wait_ms`: on two shards, whichever one
/// accepted the consumer's connection, one of the two partitions is owned by the other shard (its
/// wait runs there and its wake-up crosses shards) and the other by the same one.
#[test]
fn long_polls_wake_on_records_of_local_and_remote_partitions() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server =
        Server::start(temp.path(), "[engine]\nshards = 2\n[topics.t]\npartitions = 2\n", &[]);
    let addr = server.kafka.clone().expect("kafka");
    let mut c = connect(&server);
    let max_wait = Duration::from_secs(20);
    let mut offsets = [0i64, 0i64];
    for partition in [0usize, 1] {
        let request = FetchRequest::default()
            .with_max_wait_ms(max_wait.as_millis() as i32)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default().with_topic(name("t")).with_partitions(
                (0..2)
                    .map(|p| {
                        FetchPartition::default()
                            .with_partition(p as i32)
                            .with_fetch_offset(offsets[p])
                            .with_partition_max_bytes(1 << 20)
                    })
                    .collect(),
            )]);
        let correlation = c.send(12, &request).expect("send the fetch");
        // The fetch is parked on the server before the record exists (the produce comes later on
        // another connection); the poll must answer when the record arrives.
        std::thread::sleep(Duration::from_millis(300));
        let mut p = kappa_engine::kafka::client::Client::connect(addr.as_str()).expect("connect");
        let tag = format!("wake{partition}");
        let records = batch(&records(3, &tag, 7), ProducerInfo::default(), Compression::None);
        let produced_at = Instant::now();
        assert_eq!(produce(&mut p, 9, "t", partition as i32, records, 1), (0, 0));
        let response: FetchResponse = c.receive::<FetchRequest>(12, correlation).expect("fetch");
        let waited = produced_at.elapsed();
        let parts = &response.responses[0].partitions;
        let got = &parts[partition];
        assert_eq!(got.error_code, 0);
        let seen = decode(&got.records.clone().unwrap_or_default());
        assert_eq!(seen.len(), 3, "partition {partition}: the produced records");
        assert!(
            parts[1 - partition].records.as_ref().is_none_or(|r| r.is_empty()),
            "nothing in the other partition"
        );
        // Generous: well under max_wait (a poll that slept its whole wait would take 20 s).
        assert!(
            waited < max_wait / 4,
            "partition {partition}: the long poll answered {waited:?} after the produce \
             (max_wait {max_wait:?}): it was not woken by the record"
        );
        offsets[partition] = 3;
    }
}

#[test]
fn list_offsets_earliest_latest_by_timestamp_and_max() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), "[topics.t]\npartitions = 1\n", &[]);
    let mut c = connect(&server);
    // Timestamps 1000, 1010, ... with one out-of-order maximum at offset 13.
    let mut rs = records(30, "ts", 1000);
    for (i, r) in rs.iter_mut().enumerate() {
        r.2 = 1000 + 10 * i as i64;
    }
    rs[13].2 = 99_999;
    produce(&mut c, 9, "t", 0, batch(&rs[..20], ProducerInfo::default(), Compression::None), 1);
    produce(&mut c, 9, "t", 0, batch(&rs[20..], ProducerInfo::default(), Compression::None), 1);
    let ask = |c: &mut kappa_engine::kafka::client::Client, version: i16, ts: i64| {
        let request =
            ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![
                ListOffsetsTopic::default().with_name(name("t")).with_partitions(vec![
                    ListOffsetsPartition::default().with_partition_index(0).with_timestamp(ts),
                ]),
            ]);
        let r: ListOffsetsResponse = c.call(version, &request).expect("list offsets");
        let p = &r.topics[0].partitions[0];
        (p.error_code, p.timestamp, p.offset)
    };
    for version in [1i16, 2, 5, 7] {
        assert_eq!(ask(&mut c, version, -2), (0, -1, 0), "v{version} earliest");
        assert_eq!(ask(&mut c, version, -1), (0, -1, 30), "v{version} latest");
        assert_eq!(ask(&mut c, version, 1055), (0, 1060, 6), "v{version} by time");
        assert_eq!(ask(&mut c, version, 1000), (0, 1000, 0));
        assert_eq!(
            ask(&mut c, version, 1250),
            (0, 99_999, 13),
            "v{version}: first at or after, in offset order"
        );
        assert_eq!(ask(&mut c, version, 1_000_000), (0, -1, -1), "v{version}: none that late");
    }
    assert_eq!(ask(&mut c, 7, -3), (0, 99_999, 13), "max timestamp");
    assert_eq!(ask(&mut c, 5, -3).0, 35, "max timestamp needs v7");
}

#[test]
fn errors_clients_understand() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), "[topics.t]\npartitions = 1\n", &[]);
    let mut c = connect(&server);
    let good = batch(&records(3, "e", 0), ProducerInfo::default(), Compression::None);
    assert_eq!(produce(&mut c, 9, "nope", 0, good.clone(), 1).0, 3, "unknown topic");
    assert_eq!(produce(&mut c, 9, "t", 7, good.clone(), 1).0, 3, "unknown partition");
    assert_eq!(produce(&mut c, 9, "t", 0, good.clone(), 2).0, 21, "acks 2");
    let mut crc = good.clone();
    let last = crc.len() - 1;
    crc[last] ^= 1;
    assert_eq!(produce(&mut c, 9, "t", 0, crc, 1).0, 2, "CRC mismatch: CORRUPT_MESSAGE");
    let mut magic = good.clone();
    magic[16] = 1;
    assert_eq!(produce(&mut c, 9, "t", 0, magic, 1).0, 43, "magic 1");
    let big = vec![7u8; (1 << 20) + 1];
    let too_large =
        record_batch(&[Record::new(0, None, &big)], ProducerInfo::default(), Compression::None);
    assert_eq!(produce(&mut c, 9, "t", 0, too_large, 1).0, 10, "MESSAGE_TOO_LARGE");
    // A compressed batch that expands past the limit is refused before it is expanded.
    let zeros = vec![0u8; 100 << 20];
    let bomb =
        record_batch(&[Record::new(0, None, &zeros)], ProducerInfo::default(), Compression::Zstd);
    assert!(bomb.len() < 1 << 20);
    assert_eq!(produce(&mut c, 9, "t", 0, bomb, 1).0, 10, "decompression bomb");
    // None of these appended anything.
    assert_eq!(produce(&mut c, 9, "t", 0, good, 1), (0, 0));

    // Produce v2 (message format v1) is advertised for old librdkafka but refused per partition.
    let mut body = Vec::new();
    body.extend_from_slice(&1i16.to_be_bytes()); // acks
    body.extend_from_slice(&1000i32.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(b"t");
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&0i32.to_be_bytes()); // partition
    body.extend_from_slice(&3i32.to_be_bytes());
    body.extend_from_slice(b"abc");
    let mut frame = Vec::new();
    let header = [0i16.to_be_bytes(), 2i16.to_be_bytes()].concat();
    frame.extend_from_slice(&((header.len() + 4 + 2 + body.len()) as i32).to_be_bytes());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&77i32.to_be_bytes());
    frame.extend_from_slice(&(-1i16).to_be_bytes());
    frame.extend_from_slice(&body);
    c.send_raw(&frame).expect("produce v2");
    let response = c.read_frame().expect("answer");
    assert_eq!(i32::from_be_bytes(response[0..4].try_into().expect("4")), 77);
    // topics[1] -> "t" -> partitions[1] -> (0, error 43, offset -1, append time -1), throttle
    let error = i16::from_be_bytes(response[4 + 4 + 2 + 1 + 4 + 4..][..2].try_into().expect("2"));
    assert_eq!(error, 43);

    // An unsupported version of anything but ApiVersions closes the connection, as Kafka does.
    let mut fetch_v3 = 10i32.to_be_bytes().to_vec();
    fetch_v3.extend_from_slice(&[0, 1, 0, 3, 0, 0, 0, 9, 0xff, 0xff]);
    c.send_raw(&fetch_v3).expect("fetch v3");
    assert!(c.read_frame().is_err(), "the connection is closed");
}

#[test]
fn create_describe_and_delete_topics() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), "", &[]);
    let mut c = connect(&server);
    let create = |c: &mut kappa_engine::kafka::client::Client,
                  version: i16,
                  topic: &str,
                  partitions: i32,
                  replication: i16,
                  configs: &[(&str, &str)],
                  validate_only: bool| {
        let t = CreatableTopic::default()
            .with_name(name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(replication)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default().with_name(s(k)).with_value(Some(s(v)))
                    })
                    .collect(),
            );
        let r: CreateTopicsResponse = c
            .call(
                version,
                &CreateTopicsRequest::default()
                    .with_topics(vec![t])
                    .with_timeout_ms(5000)
                    .with_validate_only(validate_only),
            )
            .expect("create");
        (r.topics[0].error_code, r.topics[0].num_partitions)
    };
    assert_eq!(create(&mut c, 5, "made", 3, 1, &[("retention.ms", "3600000")], false), (0, 3));
    let described = server.get("/v1/topics/made");
    assert_eq!(described.body["partitions"], 3, "{described:?}");
    assert_eq!(described.body["retention_ms"], 3_600_000, "{described:?}");
    assert_eq!(create(&mut c, 7, "made", 3, 1, &[], false).0, 36, "exists");
    assert_eq!(create(&mut c, 2, "dflt", -1, -1, &[], false).0, 0, "defaults");
    assert_eq!(create(&mut c, 5, "r3", 1, 3, &[], false).0, 38, "replication 3");
    assert_eq!(create(&mut c, 5, "compacted", 1, 1, &[("cleanup.policy", "compact")], false).0, 40);
    assert_eq!(create(&mut c, 5, "bad name", 1, 1, &[], false).0, 17);
    assert_eq!(create(&mut c, 5, "dry", 2, 1, &[], true).0, 0);
    assert_eq!(server.get("/v1/topics/dry").status, 404, "validate_only creates nothing");

    let describe = |c: &mut kappa_engine::kafka::client::Client,
                    version: i16,
                    kind: i8,
                    resource: &str| {
        let r: DescribeConfigsResponse = c
            .call(
                version,
                &DescribeConfigsRequest::default().with_resources(vec![
                    DescribeConfigsResource::default()
                        .with_resource_type(kind)
                        .with_resource_name(s(resource))
                        .with_configuration_keys(None),
                ]),
            )
            .expect("describe configs");
        let result = &r.results[0];
        let configs: std::collections::BTreeMap<String, String> = result
            .configs
            .iter()
            .map(|e| {
                (e.name.to_string(), e.value.as_ref().map(|v| v.to_string()).unwrap_or_default())
            })
            .collect();
        (result.error_code, configs)
    };
    for version in [1i16, 2, 3, 4] {
        let (error, configs) = describe(&mut c, version, 2, "made");
        assert_eq!(error, 0);
        assert_eq!(configs["retention.ms"], "3600000", "v{version}");
        assert_eq!(configs["cleanup.policy"], "delete");
    }
    assert_eq!(describe(&mut c, 4, 2, "nope").0, 3);
    let (error, broker) = describe(&mut c, 4, 4, "0");
    assert_eq!((error, broker["auto.create.topics.enable"].as_str()), (0, "true"));

    let delete = |c: &mut kappa_engine::kafka::client::Client, version: i16, topic: &str| {
        let mut request = DeleteTopicsRequest::default().with_timeout_ms(5000);
        if version >= 6 {
            request.topics = vec![DeleteTopicState::default().with_name(Some(name(topic)))];
        } else {
            request.topic_names = vec![name(topic)];
        }
        let r: DeleteTopicsResponse = c.call(version, &request).expect("delete");
        r.responses[0].error_code
    };
    assert_eq!(delete(&mut c, 6, "made"), 0);
    assert_eq!(server.get("/v1/topics/made").status, 404);
    assert_eq!(metadata(&mut c, 12, Some(&["made"]), false).topics[0].error_code, 3);
    assert_eq!(delete(&mut c, 4, "dflt"), 0);
    assert_eq!(delete(&mut c, 4, "dflt"), 3, "already gone");
    assert_eq!(delete(&mut c, 6, "__consumer_offsets"), 44, "refused");
    // The name can be used again, empty.
    assert_eq!(create(&mut c, 5, "made", 1, 1, &[], false).0, 0);
    assert_eq!(fetch(&mut c, 12, "made", 0, 0, 0, 0, 1 << 20).high_watermark, 0);
}

fn init_producer_id(
    c: &mut kappa_engine::kafka::client::Client,
    version: i16,
    id: i64,
    epoch: i16,
) -> (i16, i64, i16) {
    let mut request = InitProducerIdRequest::default().with_transaction_timeout_ms(60_000);
    if version >= 3 {
        request.producer_id = ProducerId(id);
        request.producer_epoch = epoch;
    }
    let r: InitProducerIdResponse = c.call(version, &request).expect("init producer id");
    (r.error_code, r.producer_id.0, r.producer_epoch)
}

#[test]
fn idempotent_producers_are_deduplicated_across_restarts() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config = "[topics.t]\npartitions = 1\n";
    let server = Server::start(temp.path(), config, &[]);
    let mut c = connect(&server);
    let (error, pid, epoch) = init_producer_id(&mut c, 4, -1, -1);
    assert_eq!((error, epoch), (0, 0));
    let idem = |seq: i32, n: usize, epoch: i16| {
        batch(
            &records(n, &format!("s{seq}"), 0),
            ProducerInfo { producer_id: pid, producer_epoch: epoch, base_sequence: seq },
            Compression::Snappy,
        )
    };
    assert_eq!(produce(&mut c, 9, "t", 0, idem(0, 5, 0), -1), (0, 0));
    assert_eq!(produce(&mut c, 9, "t", 0, idem(0, 5, 0), -1), (0, 0), "a retry: same offsets");
    assert_eq!(produce(&mut c, 9, "t", 0, idem(5, 5, 0), -1), (0, 5));
    assert_eq!(produce(&mut c, 9, "t", 0, idem(20, 5, 0), -1).0, 45, "a gap");
    assert_eq!(
        fetch(&mut c, 12, "t", 0, 0, 0, 0, 1 << 20).high_watermark,
        10,
        "nothing appended twice"
    );
    drop(c);
    assert!(server.stop().success());

    let server = Server::start(temp.path(), config, &[]);
    let mut c = connect(&server);
    assert_eq!(produce(&mut c, 9, "t", 0, idem(5, 5, 0), -1), (0, 5), "a retry after a restart");
    assert_eq!(produce(&mut c, 9, "t", 0, idem(0, 5, 0), -1), (0, 0));
    assert_eq!(produce(&mut c, 9, "t", 0, idem(10, 5, 0), -1), (0, 10));
    assert_eq!(fetch(&mut c, 12, "t", 0, 0, 0, 0, 1 << 20).high_watermark, 15);
    // Producer ids are never handed out twice, even across restarts.
    let (_, next, _) = init_producer_id(&mut c, 0, -1, -1);
    assert_ne!(next, pid);
    // An epoch bump (KIP-360) keeps the id; the old epoch is fenced, the new one starts at 0.
    assert_eq!(init_producer_id(&mut c, 3, pid, 0), (0, pid, 1));
    assert_eq!(produce(&mut c, 9, "t", 0, idem(0, 1, 1), -1), (0, 15));
    assert_eq!(produce(&mut c, 9, "t", 0, idem(15, 1, 0), -1).0, 47, "fenced epoch");
    // Transactions are not served.
    let r: InitProducerIdResponse = c
        .call(
            4,
            &InitProducerIdRequest::default().with_transactional_id(Some(TransactionalId(s("tx")))),
        )
        .expect("init");
    assert_eq!(r.error_code, 42);
}

#[test]
fn consumer_group_protocol_with_durable_offsets() {
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    let temp = tempfile::tempdir().expect("tempdir");
    let config = format!("{FAST_GROUPS}[topics.t]\npartitions = 2\n");
    let server = Server::start(temp.path(), &config, &[]);
    let mut a = connect(&server);
    let mut b = connect(&server);
    let group = GroupId(s("g"));
    for version in [0i16, 3, 4] {
        let mut request = FindCoordinatorRequest::default();
        if version >= 4 {
            request.coordinator_keys = vec![s("g")];
        } else {
            request.key = s("g");
        }
        let r: FindCoordinatorResponse = a.call(version, &request).expect("find coordinator");
        let (error, port) = if version >= 4 {
            (r.coordinators[0].error_code, r.coordinators[0].port)
        } else {
            (r.error_code, r.port)
        };
        assert_eq!(error, 0);
        assert!(server.kafka.as_ref().expect("kafka").ends_with(&format!(":{port}")));
    }
    let join = |c: &mut kappa_engine::kafka::client::Client, member: &str| {
        let request = JoinGroupRequest::default()
            .with_group_id(group.clone())
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(s(member))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(bytes::Bytes::from_static(b"md"))]);
        c.send(5, &request).expect("join")
    };
    // A joins alone: generation 1, leader.
    let ja = join(&mut a, "");
    let ra: JoinGroupResponse = a.receive::<JoinGroupRequest>(5, ja).expect("joined");
    assert_eq!((ra.error_code, ra.generation_id, ra.members.len()), (0, 1, 1));
    let me_a = ra.member_id.to_string();
    let sync = |c: &mut kappa_engine::kafka::client::Client,
                member: &str,
                generation: i32,
                assignments: Vec<(String, &'static [u8])>| {
        let request = SyncGroupRequest::default()
            .with_group_id(group.clone())
            .with_generation_id(generation)
            .with_member_id(s(member))
            .with_assignments(
                assignments
                    .into_iter()
                    .map(|(m, a)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(s(&m))
                            .with_assignment(bytes::Bytes::from_static(a))
                    })
                    .collect(),
            );
        c.send(3, &request).expect("sync")
    };
    let sa = sync(&mut a, &me_a, 1, vec![(me_a.clone(), b"all")]);
    let r: SyncGroupResponse = a.receive::<SyncGroupRequest>(3, sa).expect("synced");
    assert_eq!((r.error_code, &r.assignment[..]), (0, &b"all"[..]));
    let heartbeat = |c: &mut kappa_engine::kafka::client::Client, member: &str, generation: i32| {
        let r: HeartbeatResponse = c
            .call(
                3,
                &HeartbeatRequest::default()
                    .with_group_id(group.clone())
                    .with_generation_id(generation)
                    .with_member_id(s(member)),
            )
            .expect("heartbeat");
        r.error_code
    };
    assert_eq!(heartbeat(&mut a, &me_a, 1), 0);
    // B joins: A hears of the rebalance, rejoins, both get generation 2.
    let jb = join(&mut b, "");
    assert_eq!(heartbeat(&mut a, &me_a, 1), 27, "REBALANCE_IN_PROGRESS");
    let ja = join(&mut a, &me_a);
    let ra: JoinGroupResponse = a.receive::<JoinGroupRequest>(5, ja).expect("a rejoined");
    let rb: JoinGroupResponse = b.receive::<JoinGroupRequest>(5, jb).expect("b joined");
    assert_eq!((ra.generation_id, rb.generation_id), (2, 2));
    assert_eq!(ra.leader.to_string(), me_a, "the leader stays");
    assert_eq!((ra.members.len(), rb.members.len()), (2, 0));
    let me_b = rb.member_id.to_string();
    let sb = sync(&mut b, &me_b, 2, Vec::new());
    let sa = sync(&mut a, &me_a, 2, vec![(me_a.clone(), b"p0"), (me_b.clone(), b"p1")]);
    assert_eq!(&a.receive::<SyncGroupRequest>(3, sa).expect("a").assignment[..], b"p0");
    assert_eq!(&b.receive::<SyncGroupRequest>(3, sb).expect("b").assignment[..], b"p1");

    // Commits: checked against membership, durable, and fetched back.
    let commit = |c: &mut kappa_engine::kafka::client::Client,
                  version: i16,
                  member: &str,
                  generation: i32,
                  partition: i32,
                  offset: i64| {
        let request = OffsetCommitRequest::default()
            .with_group_id(group.clone())
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(s(member))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(name("t"))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(partition)
                    .with_committed_offset(offset)
                    .with_committed_metadata(Some(s("meta")))])]);
        let r: OffsetCommitResponse = c.call(version, &request).expect("commit");
        r.topics[0].partitions[0].error_code
    };
    assert_eq!(commit(&mut a, 8, &me_a, 2, 0, 42), 0);
    assert_eq!(commit(&mut b, 2, &me_b, 2, 1, 7), 0);
    assert_eq!(commit(&mut b, 7, &me_b, 1, 1, 8), 22, "ILLEGAL_GENERATION");
    assert_eq!(commit(&mut b, 7, "stranger", 2, 1, 8), 25, "UNKNOWN_MEMBER_ID");
    assert_eq!(commit(&mut b, 7, "", -1, 1, 8), 25, "a simple commit into a group with members");
    let fetch_offsets = |c: &mut kappa_engine::kafka::client::Client, version: i16, all: bool| {
        let topics = (!all).then(|| {
            vec![OffsetFetchRequestTopic::default()
                .with_name(name("t"))
                .with_partition_indexes(vec![0, 1])]
        });
        let r: OffsetFetchResponse = c
            .call(
                version,
                &OffsetFetchRequest::default().with_group_id(group.clone()).with_topics(topics),
            )
            .expect("offset fetch");
        let mut got: Vec<(i32, i64, String)> = r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    (
                        p.partition_index,
                        p.committed_offset,
                        p.metadata.as_ref().map(|m| m.to_string()).unwrap_or_default(),
                    )
                })
            })
            .collect();
        got.sort();
        got
    };
    let expected = vec![(0, 42, "meta".to_string()), (1, 7, "meta".to_string())];
    assert_eq!(fetch_offsets(&mut a, 1, false), expected);
    assert_eq!(fetch_offsets(&mut a, 7, true), expected);

    let described: DescribeGroupsResponse = a
        .call(
            5,
            &DescribeGroupsRequest::default().with_groups(vec![group.clone(), GroupId(s("ghost"))]),
        )
        .expect("describe");
    assert_eq!(described.groups[0].group_state.to_string(), "Stable");
    assert_eq!(described.groups[0].members.len(), 2);
    assert_eq!(described.groups[1].group_state.to_string(), "Dead");
    let listed: ListGroupsResponse = a.call(4, &ListGroupsRequest::default()).expect("list");
    assert_eq!(
        listed
            .groups
            .iter()
            .map(|g| (g.group_id.0.to_string(), g.group_state.to_string()))
            .collect::<Vec<_>>(),
        vec![("g".to_string(), "Stable".to_string())]
    );

    // B leaves: A's next heartbeat learns of the rebalance.
    let left: LeaveGroupResponse = b
        .call(
            4,
            &LeaveGroupRequest::default().with_group_id(group.clone()).with_members(vec![
                leave_group_request::MemberIdentity::default().with_member_id(s(&me_b)),
            ]),
        )
        .expect("leave");
    assert_eq!((left.error_code, left.members[0].error_code), (0, 0));
    assert_eq!(heartbeat(&mut a, &me_a, 2), 27);
    drop((a, b));
    assert!(server.stop().success());

    // After a restart the group is empty but its offsets are there.
    let server = Server::start(temp.path(), &config, &[]);
    let mut c = connect(&server);
    assert_eq!(fetch_offsets(&mut c, 5, false), expected);
    assert_eq!(commit(&mut c, 8, "", -1, 0, 50), 0, "simple commit into an empty group");
    assert_eq!(fetch_offsets(&mut c, 7, true)[0], (0, 50, "meta".to_string()));
}

#[test]
fn connections_and_request_sizes_are_bounded() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), "[kafka]\nmax_connections = 2\nmax_request_bytes = 4096\nbuffer_mib_per_shard = 64\nmax_fetch_bytes = 65536\n", &[]);
    let mut a = connect(&server);
    let _b = connect(&server);
    let mut third = connect(&server);
    third.stream().set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let _ = third.send(3, &ApiVersionsRequest::default());
    assert!(third.read_frame().is_err(), "the third connection is closed at once");
    a.call::<ApiVersionsRequest>(3, &ApiVersionsRequest::default()).expect("the first still works");
    // A frame over max_request_bytes closes the connection before it is read.
    let mut frame = 100_000i32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0u8; 64]);
    a.send_raw(&frame).expect("send");
    assert!(a.read_frame().is_err());
    drop(a);
    drop(third);
    // Slots free up when connections close.
    assert!(eventually(Duration::from_secs(10), || {
        let mut c = connect(&server);
        c.call::<ApiVersionsRequest>(3, &ApiVersionsRequest::default()).is_ok()
    }));
}

/// One record of `hand_batch`: (record attributes, key, value).
type HandRecord<'a> = (u8, &'a [u8], Option<&'a [u8]>);

/// A v2 batch written by hand: what a client library would not send, with a valid CRC.
fn hand_batch(records: &[HandRecord<'_>]) -> Vec<u8> {
    let varint = |out: &mut Vec<u8>, v: i64| {
        let mut zz = ((v << 1) ^ (v >> 63)) as u64;
        while zz >= 0x80 {
            out.push(zz as u8 | 0x80);
            zz >>= 7;
        }
        out.push(zz as u8);
    };
    let mut section = Vec::new();
    for (i, (attributes, key, value)) in records.iter().enumerate() {
        let mut body = vec![*attributes];
        varint(&mut body, 0);
        varint(&mut body, i as i64);
        varint(&mut body, key.len() as i64);
        body.extend_from_slice(key);
        match value {
            Some(v) => {
                varint(&mut body, v.len() as i64);
                body.extend_from_slice(v);
            }
            None => varint(&mut body, -1),
        }
        varint(&mut body, 0);
        varint(&mut section, body.len() as i64);
        section.extend_from_slice(&body);
    }
    let mut b = Vec::new();
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((61 - 12 + section.len()) as i32).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes()); // leader epoch
    b.push(2); // magic
    b.extend_from_slice(&[0; 4]); // CRC, below
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(records.len() as i32 - 1).to_be_bytes());
    b.extend_from_slice(&1_000i64.to_be_bytes());
    b.extend_from_slice(&1_000i64.to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&(records.len() as i32).to_be_bytes());
    b.extend_from_slice(&section);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// A producer's batch that is valid Kafka but not in the stored form (a record attribute set, a
/// null value) is re-encoded, not copied as it arrived: a fetch returns record attributes 0 and
/// the null value as the empty value kappa stores (what views and embedded consumers read).
/// Fails when produce offers every uncompressed batch to the log as it is (`Incoming::encoded`
/// without `read_records`' answer): the batch's header and length are the stored form's.
#[test]
fn a_batch_not_in_the_stored_form_is_fetched_as_kappa_stores_it() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), "[topics.t]\npartitions = 1\n", &[]);
    let mut c = connect(&server);
    let sent = hand_batch(&[(0, b"k0", Some(b"v0")), (1, b"k1", Some(b"v1")), (0, b"k2", None)]);
    assert_eq!(produce(&mut c, 9, "t", 0, sent.clone(), 1), (0, 0));
    let f = fetch(&mut c, 12, "t", 0, 0, 0, 0, 1 << 20);
    let values: Vec<_> = decode(&f.records).into_iter().map(|r| r.3).collect();
    assert_eq!(values, [Some(b"v0".to_vec()), Some(b"v1".to_vec()), Some(Vec::new())]);
    // Record attributes: each record is 1 length byte, then its attributes (records this short).
    let bytes = &f.records[..];
    let mut at = 61;
    for index in 0..3 {
        assert_eq!(bytes[at + 1], 0, "record {index}'s attributes");
        at += 1 + usize::from(bytes[at] >> 1);
    }
    assert_eq!(at, bytes.len(), "one batch of three records");
    assert_ne!(bytes[17..21], sent[17..21], "re-encoded: its own CRC");
}
