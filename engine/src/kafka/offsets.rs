//! ListOffsets: the earliest offset, the latest (the high watermark: everything written), the
//! first offset at or after a timestamp, and (v7+) the record with the largest timestamp.
//! Each partition is answered by the shard that owns it.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kappa_storage::{PartitionLog, Seek};

use super::codec::{code, LEADER_EPOCH};
use super::node::Node;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

/// (error, timestamp, offset) of one partition.
type Found = (i16, i64, i64);

/// One partition's lookup: (topic index, partition index) in the request, topic, partition, timestamp.
type Lookup = ((usize, usize), Arc<str>, u32, i64);

pub(crate) async fn list_offsets(
    node: Rc<Node>,
    version: i16,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    // (topic index, partition index) -> work per shard.
    let mut by_shard: BTreeMap<usize, Vec<Lookup>> = BTreeMap::new();
    for (t, topic) in request.topics.into_iter().enumerate() {
        let meta = node.topic(topic.name.0.as_str());
        let mut response = ListOffsetsTopicResponse::default().with_name(topic.name.clone());
        for (p, partition) in topic.partitions.into_iter().enumerate() {
            let mut out = ListOffsetsPartitionResponse::default()
                .with_partition_index(partition.partition_index)
                .with_timestamp(-1)
                .with_offset(-1);
            let owner = meta.as_ref().and_then(|m| {
                let index = u32::try_from(partition.partition_index).ok()?;
                Some((m.name.clone(), index, Node::owner(m, index)?))
            });
            match owner {
                None => out.error_code = code::UNKNOWN_TOPIC_OR_PARTITION,
                Some(_) if partition.timestamp == MAX_TIMESTAMP && version < 7 => {
                    out.error_code = code::UNSUPPORTED_VERSION;
                }
                Some(_) if partition.timestamp < MAX_TIMESTAMP => {
                    out.error_code = code::INVALID_REQUEST;
                }
                Some((name, index, shard)) => {
                    by_shard.entry(shard).or_default().push((
                        (t, p),
                        name,
                        index,
                        partition.timestamp,
                    ));
                }
            }
            response.partitions.push(out);
        }
        topics.push(response);
    }
    for (shard, work) in by_shard {
        let slots: Vec<(usize, usize)> = work.iter().map(|w| w.0).collect();
        let found = node
            .call(shard, move |n| async move {
                let mut out = Vec::with_capacity(work.len());
                for (slot, topic, partition, timestamp) in work {
                    let found = match n.shard.log(&topic, partition) {
                        Some(log) => lookup(&log, timestamp).await,
                        None => (code::UNKNOWN_TOPIC_OR_PARTITION, -1, -1),
                    };
                    out.push((slot, found));
                }
                out
            })
            .await;
        match found {
            Ok(found) => {
                for ((t, p), (error, timestamp, offset)) in found {
                    let out = &mut topics[t].partitions[p];
                    out.error_code = error;
                    out.timestamp = timestamp;
                    out.offset = offset;
                    if version >= 4 && error == code::NONE {
                        out.leader_epoch = LEADER_EPOCH;
                    }
                }
            }
            Err(_) => {
                for (t, p) in slots {
                    topics[t].partitions[p].error_code = code::UNKNOWN_SERVER_ERROR;
                }
            }
        }
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// Answers one partition on its shard.
async fn lookup(log: &PartitionLog, timestamp: i64) -> Found {
    match timestamp {
        LATEST => (code::NONE, -1, log.readable_end_offset() as i64),
        EARLIEST => (code::NONE, -1, log.start_offset() as i64),
        MAX_TIMESTAMP => match max_timestamp(log).await {
            Ok(found) => found,
            Err(e) => storage_failure(&e),
        },
        ts => match first_at_or_after(log, ts).await {
            Ok(found) => found,
            Err(e) => storage_failure(&e),
        },
    }
}

fn storage_failure(e: &kappa_storage::Error) -> Found {
    tracing::warn!(error = %e, "Kafka ListOffsets failed");
    (code::KAFKA_STORAGE_ERROR, -1, -1)
}

/// The first record (in offset order) whose timestamp is at or after `ts`; -1/-1 when none.
async fn first_at_or_after(log: &PartitionLog, ts: i64) -> Result<Found, kappa_storage::Error> {
    let mut reader = log.reader(Seek::Timestamp(ts))?;
    while let Some(read) = reader.next_batch().await? {
        if let Some(record) = read.records().find(|r| r.timestamp() >= ts) {
            return Ok((code::NONE, record.timestamp(), record.offset() as i64));
        }
    }
    Ok((code::NONE, -1, -1))
}

/// The record with the largest timestamp (the first of equals), found in the segment whose
/// newest record is newest.
async fn max_timestamp(log: &PartitionLog) -> Result<Found, kappa_storage::Error> {
    let segments = log.segments();
    let Some(best) = segments
        .iter()
        .filter(|s| s.next_offset > s.base_offset)
        .max_by_key(|s| (s.max_timestamp, std::cmp::Reverse(s.base_offset)))
    else {
        return Ok((code::NONE, -1, -1));
    };
    let start = best.base_offset.max(log.start_offset());
    let mut reader = log.reader(Seek::Offset(start))?;
    let mut found: Option<(i64, u64)> = None;
    while let Some(read) = reader.next_batch().await? {
        if read.batch.base_offset() >= best.next_offset {
            break;
        }
        for record in read.records() {
            if found.is_none_or(|(ts, _)| record.timestamp() > ts) {
                found = Some((record.timestamp(), record.offset()));
            }
        }
        glommio::yield_if_needed().await;
    }
    Ok(found.map_or((code::NONE, -1, -1), |(ts, offset)| (code::NONE, ts, offset as i64)))
}
