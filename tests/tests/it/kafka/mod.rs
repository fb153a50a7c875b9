//! The Kafka wire protocol, end to end.
//!
//! `protocol`: the real `kappa serve` binary driven by a raw client on `kafka-protocol`
//! (`kappa_engine::kafka::client`), every API at the versions clients use, errors and limits.
//! `hostile`: malformed and oversized input. `interop`: records crossing between Kafka, the HTTP
//! API, views and the embedded API, byte for byte. `clients`: real clients (kcat, confluent-kafka,
//! kafka-python), ignored by default because a newcomer may not have them; `.ci/run` installs
//! them and runs these with `--ignored`, and they fail when a tool is missing.
//!
//! What the broker sends back is decoded with `kafka-protocol`'s own record batch decoder, an
//! implementation independent of ours.

// Waits have wall-clock deadlines (never a speed assertion).
#![allow(clippy::disallowed_methods)]

mod clients;
mod groups;
mod hostile;
mod interop;
mod protocol;

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, MetadataRequest, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use kappa_engine::kafka::client::Client;

use crate::serve::Server;

/// Config for a server whose groups start at once (no initial rebalance delay) and accept short
/// sessions, so group tests do not wait seconds.
pub const FAST_GROUPS: &str = "[kafka]
group_initial_rebalance_delay_ms = 0
group_min_session_timeout_ms = 500
";

pub fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

pub fn connect(server: &Server) -> Client {
    let addr = server.kafka.as_deref().expect("the Kafka listener is on");
    Client::connect(addr).expect("connect to the Kafka listener")
}

/// Produces `batch` (one or more v2 batches) to one partition; returns (error, base offset).
pub fn produce(
    client: &mut Client,
    version: i16,
    topic: &str,
    partition: i32,
    batch: Vec<u8>,
    acks: i16,
) -> (i16, i64) {
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(Bytes::from(batch)))])]);
    let response: ProduceResponse = client.call(version, &request).expect("produce");
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// What a single-partition fetch returned.
#[derive(Debug)]
pub struct Fetched {
    pub error_code: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub records: Bytes,
}

pub fn fetch_request(
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
    min_bytes: i32,
    partition_max: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(64 << 20)
        .with_topics(vec![FetchTopic::default().with_topic(name(topic)).with_partitions(vec![
            FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(partition_max),
        ])])
}

// One argument per field of the request, so each test shows exactly what it asks for.
#[allow(clippy::too_many_arguments)]
pub fn fetch(
    client: &mut Client,
    version: i16,
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
    min_bytes: i32,
    partition_max: i32,
) -> Fetched {
    let response: FetchResponse = client
        .call(
            version,
            &fetch_request(topic, partition, offset, max_wait_ms, min_bytes, partition_max),
        )
        .expect("fetch");
    let p = &response.responses[0].partitions[0];
    Fetched {
        error_code: p.error_code,
        high_watermark: p.high_watermark,
        log_start_offset: p.log_start_offset,
        records: p.records.clone().unwrap_or_default(),
    }
}

/// A record as Kafka consumers see it: (offset, timestamp, key, value, headers).
pub type Seen = (i64, i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Option<Vec<u8>>)>);

/// Decodes fetched batches with `kafka-protocol` (CRC checked there too).
pub fn decode(records: &Bytes) -> Vec<Seen> {
    let mut buf = records.clone();
    let sets = RecordBatchDecoder::decode_all(&mut buf).expect("valid record batches");
    sets.into_iter()
        .flat_map(|set| {
            assert_eq!(set.compression, Compression::None, "kappa stores batches uncompressed");
            set.records
        })
        .map(|r| {
            (
                r.offset,
                r.timestamp,
                r.key.map(|k| k.to_vec()),
                r.value.map(|v| v.to_vec()),
                r.headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.map(|v| v.to_vec())))
                    .collect(),
            )
        })
        .collect()
}

/// Base offsets of the batches in fetched bytes.
pub fn batch_bases(records: &Bytes) -> Vec<i64> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= records.len() {
        out.push(i64::from_be_bytes(records[at..at + 8].try_into().expect("8 bytes")));
        let len = i32::from_be_bytes(records[at + 8..at + 12].try_into().expect("4 bytes"));
        at += 12 + len as usize;
    }
    out
}

/// Polls `check` until it holds (at most `limit`).
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// Metadata for `topics` (None: all) at `version`.
pub fn metadata(
    client: &mut Client,
    version: i16,
    topics: Option<&[&str]>,
    auto_create: bool,
) -> kafka_protocol::messages::MetadataResponse {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    let mut request = MetadataRequest::default().with_topics(topics.map(|t| {
        t.iter().map(|n| MetadataRequestTopic::default().with_name(Some(name(n)))).collect()
    }));
    if version >= 4 {
        request.allow_auto_topic_creation = auto_create;
    }
    client.call(version, &request).expect("metadata")
}
