//! Fetches of history through a real listener: whole batches in order whatever the limits and
//! the starting offset, with the read-ahead of the next fetch (`read.rs`) running between them,
//! and the read-ahead kept to memory the shard's budget can spare.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kappa_storage::{ProducerInfo, Record};

use super::read::READ_AHEAD_BATCHES;
use crate::kafka::client::{record_batch, Client, Compression};
use crate::kafka::{KafkaConfig, KafkaServer};
use crate::{Engine, TopicConfig};

const BATCHES: u64 = 30;
const RECORDS: u64 = 20;

/// Fields drop in this order (a failing test must not hang on the listener or lose the dir first).
struct Setup {
    client: Client,
    kafka: KafkaServer,
    engine: Arc<Engine>,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// One shard, topic `t` of one partition holding `BATCHES` batches of `RECORDS` records
    /// of different sizes (about 20-45 KiB a batch).
    fn start(config: impl FnOnce(&mut KafkaConfig)) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine =
            Arc::new(Engine::builder().data_dir(dir.path()).shards(1).build().expect("engine"));
        engine.create_topic("t", TopicConfig::new(1)).expect("topic");
        let mut kafka_config = KafkaConfig::new("127.0.0.1:0".parse().expect("address"));
        config(&mut kafka_config);
        let kafka = KafkaServer::start(&engine, kafka_config).expect("listener");
        let mut client = Client::connect(kafka.local_addr()).expect("connect");
        for b in 0..BATCHES {
            let value = vec![b as u8; 1000 + 37 * b as usize];
            let records: Vec<Record<'_>> =
                (0..RECORDS).map(|_| Record::new(b as i64, None, &value)).collect();
            let batch =
                Bytes::from(record_batch(&records, ProducerInfo::default(), Compression::None));
            let request = ProduceRequest::default()
                .with_acks(1)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch))])]);
            let response = client.call(9, &request).expect("produce");
            let p = &response.responses[0].partition_responses[0];
            assert_eq!((p.error_code, p.base_offset), (0, (b * RECORDS) as i64));
        }
        Setup { client, kafka, engine, _dir: dir }
    }

    /// The batches (base offset, bytes) of one fetch of `t`/0.
    fn fetch(&mut self, offset: u64, partition_max: i32) -> Vec<(u64, Bytes)> {
        let request = FetchRequest::default()
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(64 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(offset as i64)
                    .with_partition_max_bytes(partition_max)])]);
        let response: FetchResponse = self.client.call(12, &request).expect("fetch");
        let p = &response.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch at {offset}");
        let records = p.records.clone().unwrap_or_default();
        let mut batches = Vec::new();
        let mut at = 0;
        while at < records.len() {
            let base = u64::from_be_bytes(records[at..at + 8].try_into().expect("8 bytes"));
            let length = u32::from_be_bytes(records[at + 8..at + 12].try_into().expect("4 bytes"));
            let end = at + 12 + length as usize;
            batches.push((base, records.slice(at..end)));
            at = end;
        }
        assert_eq!(at, records.len(), "a fetch returned part of a batch");
        batches
    }

    fn stop(self) {
        drop(self.client);
        self.kafka.stop();
        Arc::try_unwrap(self.engine)
            .ok()
            .expect("the engine is not shared")
            .shutdown()
            .expect("shutdown");
    }
}

/// Fetches from `offset` to the end with `partition_max`, one after the other as a consumer does;
/// checks each starts with the batch holding its offset; returns every batch in order.
fn fetch_all(setup: &mut Setup, mut offset: u64, partition_max: i32) -> Vec<(u64, Bytes)> {
    let mut all = Vec::new();
    while offset < BATCHES * RECORDS {
        let batches = setup.fetch(offset, partition_max);
        let (first, _) = batches.first().expect("at least one batch while behind");
        assert_eq!(*first, offset - offset % RECORDS, "the batch holding {offset} first");
        offset = batches.last().expect("one").0 + RECORDS;
        all.extend(batches);
    }
    all
}

/// The read-ahead changes how soon batches are read, never which ones a fetch returns, and it
/// is used only while the shard's budget can spare it. One test, not two: the read-ahead counter
/// is the process's.
#[test]
fn fetches_of_history_read_ahead_and_return_the_same_whole_batches() {
    // A budget of two largest fetch responses: while a fetch holds one, a read-ahead would
    // leave less than a largest response free, so none starts (a response's reservation would
    // wait on it).
    let mut tight = Setup::start(|c| {
        c.request_bytes_max = 1 << 20;
        c.fetch_bytes_max = 1 << 20;
        c.buffered_bytes_per_shard = 2 << 20;
    });
    let before = READ_AHEAD_BATCHES.load(Ordering::Relaxed);
    let reference = fetch_all(&mut tight, 0, 64 << 10);
    assert_eq!(READ_AHEAD_BATCHES.load(Ordering::Relaxed), before, "read ahead on a full budget");
    assert_eq!(reference.len(), BATCHES as usize);
    tight.stop();

    let mut setup = Setup::start(|_| {});
    let before = READ_AHEAD_BATCHES.load(Ordering::Relaxed);
    // About two batches per fetch: each fetch ends at the partition limit, and the next starts
    // with what the read-ahead read.
    assert_eq!(fetch_all(&mut setup, 0, 64 << 10), reference);
    let read_ahead = READ_AHEAD_BATCHES.load(Ordering::Relaxed) - before;
    assert!(read_ahead >= BATCHES / 6, "only {read_ahead} batches were read ahead");

    // A fetch from the middle of a batch, then its next fetches with other limits: a limit
    // smaller than a batch still gets one whole batch, a larger one takes what was read
    // ahead and more, in order.
    let middle = 7 * RECORDS + 5;
    let one = setup.fetch(middle, 64 << 10);
    assert_eq!(one.first().map(|b| b.0), Some(7 * RECORDS));
    let mut offset = one.last().expect("one").0 + RECORDS;
    let mut seen = one;
    for partition_max in [1, 1 << 20, 1, 100 << 10, 64 << 20] {
        if offset >= BATCHES * RECORDS {
            break;
        }
        let batches = setup.fetch(offset, partition_max);
        assert_eq!(batches.first().map(|b| b.0), Some(offset));
        if partition_max == 1 {
            assert_eq!(batches.len(), 1, "a 1-byte limit takes exactly one batch");
        }
        offset = batches.last().expect("one").0 + RECORDS;
        seen.extend(batches);
    }
    assert_eq!(offset, BATCHES * RECORDS, "the last fetch reached the end");
    assert_eq!(seen, reference[7..].to_vec());
    // At the end: nothing, and no error.
    assert!(setup.fetch(BATCHES * RECORDS, 64 << 10).is_empty());
    setup.stop();
}
