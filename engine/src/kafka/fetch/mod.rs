//! Fetch: long polls over partitions spread across shards, answered with the stored batches.
//!
//! The connection's shard drives the request: a read pass asks each owning shard in turn for
//! whole batches from each partition's fetch offset (`read.rs`), within what is left of the
//! response's byte limit; when fewer than `min_bytes` came back and `max_wait_ms` has not passed,
//! it waits until one of the partitions gets new records (on every owning shard at once; the
//! shards' waits are cancelled when the first one fires) and reads again. The response is then
//! encoded around the batches without copying them again (`encode.rs`).
//!
//! Memory: the response's `max_bytes` is reserved from the shard's budget only while a read pass
//! runs, then shrunk to what was read, so idle long polls hold nothing.

mod encode;
mod read;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use kafka_protocol::messages::FetchRequest;

use super::codec::code;
use super::conn::{Outcome, Reply, Response};
use super::node::Node;
use super::util::{self, first, Held, LocalFuture};
use encode::{PartitionOut, TopicOut};
use read::{ReadItem, ReadOut};

pub(crate) use read::ReaderCache;

/// One requested partition and what the fetch found for it so far.
struct Part {
    topic: usize,
    /// `None`: unknown topic or partition.
    owner: Option<(Arc<str>, u32, usize)>,
    offset: u64,
    partition_max: usize,
    out: PartitionOut,
    bytes: usize,
}

pub(crate) fn handle(
    node: Rc<Node>,
    version: i16,
    correlation_id: i32,
    request: FetchRequest,
) -> Reply {
    Box::pin(fetch(node, version, correlation_id, request))
}

async fn fetch(
    node: Rc<Node>,
    version: i16,
    correlation_id: i32,
    request: FetchRequest,
) -> Outcome {
    let config = node.config();
    if version >= 7 && request.session_id != 0 {
        // We never create fetch sessions (we answer session id 0), so a client naming one is
        // confused; Kafka's answer makes it start over with a full fetch.
        let frames = encode::encode(
            version,
            correlation_id,
            code::FETCH_SESSION_ID_NOT_FOUND,
            0,
            Vec::new(),
        );
        return Outcome::Send(Response { frames, hold: None });
    }
    let wait = std::time::Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0))
        .min(config.fetch_wait_max);
    let deadline = util::now() + wait;
    let max_bytes = usize::try_from(request.max_bytes)
        .ok()
        .filter(|b| *b > 0)
        .unwrap_or(config.fetch_bytes_max)
        .min(config.fetch_bytes_max);
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);

    let mut topics: Vec<TopicOut> = Vec::with_capacity(request.topics.len());
    let mut parts: Vec<Part> = Vec::new();
    for topic in request.topics {
        let name = topic.topic.0.to_string();
        let meta = node.topic(&name);
        let t = topics.len();
        topics.push(TopicOut { name, partitions: Vec::new() });
        for p in topic.partitions {
            let owner = meta.as_ref().and_then(|m| {
                let partition = u32::try_from(p.partition).ok()?;
                Some((m.name.clone(), partition, Node::owner(m, partition)?))
            });
            let error_code = if owner.is_some() && p.fetch_offset >= 0 {
                code::NONE
            } else if owner.is_some() {
                code::OFFSET_OUT_OF_RANGE
            } else {
                code::UNKNOWN_TOPIC_OR_PARTITION
            };
            parts.push(Part {
                topic: t,
                owner,
                offset: u64::try_from(p.fetch_offset).unwrap_or(0),
                partition_max: usize::try_from(p.partition_max_bytes).unwrap_or(0),
                out: PartitionOut {
                    partition: p.partition,
                    error_code,
                    high_watermark: -1,
                    last_stable_offset: -1,
                    log_start_offset: -1,
                    batches: Vec::new(),
                },
                bytes: 0,
            });
        }
    }

    let mut total = 0usize;
    let mut hold: Option<Held> = None;
    loop {
        let reservation = node.budget.reserve(max_bytes.saturating_sub(total)).await;
        let got = read_pass(&node, &mut parts, max_bytes.saturating_sub(total), total == 0).await;
        // Stage events (`KAPPA_LOG=kappa_engine::kafka=trace`).
        tracing::trace!(bytes = got, "kafka fetch read");
        total += got;
        match &hold {
            Some(h) => {
                h.resize(total);
                drop(reservation);
            }
            None if total > 0 => {
                reservation.resize(total);
                hold = Some(reservation);
            }
            None => drop(reservation),
        }
        let failed = parts.iter().any(|p| p.out.error_code != code::NONE);
        if total >= min_bytes
            || total >= max_bytes
            || failed
            || util::now() >= deadline
            || node.is_closing()
        {
            break;
        }
        wait_for_data(&node, &parts, deadline).await;
        tracing::trace!("kafka fetch woken");
    }

    for part in parts {
        topics[part.topic].partitions.push(part.out);
    }
    let frames = encode::encode(version, correlation_id, code::NONE, 0, topics);
    Outcome::Send(Response { frames, hold })
}

/// One read over every readable partition, shard after shard; returns the bytes read.
async fn read_pass(
    node: &Rc<Node>,
    parts: &mut [Part],
    mut budget: usize,
    mut empty: bool,
) -> usize {
    let mut by_shard: BTreeMap<usize, Vec<ReadItem>> = BTreeMap::new();
    let mut order: Vec<usize> = Vec::new();
    for (slot, part) in parts.iter().enumerate() {
        let Some((topic, partition, shard)) = &part.owner else { continue };
        if part.out.error_code != code::NONE || part.bytes >= part.partition_max {
            continue;
        }
        if !by_shard.contains_key(shard) {
            order.push(*shard);
        }
        by_shard.entry(*shard).or_default().push(ReadItem {
            slot,
            topic: topic.clone(),
            partition: *partition,
            offset: part.offset,
            partition_max: part.partition_max - part.bytes,
        });
    }
    let mut got = 0;
    for shard in order {
        let Some(items) = by_shard.remove(&shard) else { continue };
        let slots: Vec<usize> = items.iter().map(|i| i.slot).collect();
        let results: Vec<ReadOut> = match node
            .call(shard, move |n| async move { read::read(&n, items, budget, empty).await })
            .await
        {
            Ok(results) => results,
            Err(_) => {
                for slot in slots {
                    parts[slot].out.error_code = code::UNKNOWN_SERVER_ERROR;
                }
                continue;
            }
        };
        for result in results {
            let part = &mut parts[result.slot];
            part.out.error_code = result.error_code;
            part.out.high_watermark = result.high_watermark;
            part.out.last_stable_offset = result.high_watermark;
            part.out.log_start_offset = result.log_start_offset;
            part.offset = result.next_offset;
            part.bytes += result.bytes;
            part.out.batches.extend(result.batches);
            got += result.bytes;
            budget = budget.saturating_sub(result.bytes);
            empty &= result.bytes == 0;
        }
    }
    got
}

/// Waits until a partition of the request has records past its fetch position, or `deadline`.
async fn wait_for_data(node: &Rc<Node>, parts: &[Part], deadline: Instant) {
    let mut by_shard: BTreeMap<usize, Vec<(Arc<str>, u32, u64)>> = BTreeMap::new();
    for part in parts {
        if let Some((topic, partition, shard)) = &part.owner {
            by_shard.entry(*shard).or_default().push((topic.clone(), *partition, part.offset));
        }
    }
    if by_shard.is_empty() {
        util::sleep_until(deadline).await;
        return;
    }
    let mut waits: Vec<LocalFuture<'_, ()>> = Vec::new();
    // Dropped when this wait ends: the other shards' waits end with it.
    let (_cancel, cancelled) = flume::bounded::<()>(1);
    for (shard, items) in by_shard {
        if shard == node.index {
            let node = node.clone();
            waits.push(Box::pin(async move { read::wait_any(&node, items, deadline, None).await }));
        } else {
            let cancelled = cancelled.clone();
            let posted = node
                .post(shard, move |n| async move {
                    read::wait_any(&n, items, deadline, Some(cancelled)).await
                })
                .await;
            match posted {
                Ok(rx) => waits.push(Box::pin(async move {
                    let _ = rx.recv_async().await;
                })),
                Err(_) => return,
            }
        }
    }
    waits.push(Box::pin(util::sleep_until(deadline)));
    waits.push(Box::pin(node.until_closing()));
    first(waits).await;
}
