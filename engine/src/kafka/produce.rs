//! Produce: batches checked and appended on the shard that owns each partition.
//!
//! The connection's shard splits the request by owning shard. Its own partitions are appended
//! inline, the others are posted to their shards' job queues, in request order. On the owning
//! shard every Kafka append to a partition passes one FIFO lock (`PartitionSeq::lock`), inside
//! which the idempotence check, the wait for room in the log's write queue, and
//! `PartitionLog::append_now` happen, so appends keep the order in which they arrived even when
//! the log applies backpressure. Only the wait for durability (`acks`) happens after the lock.

use std::rc::Rc;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ApiKey, ProduceRequest};
use kafka_protocol::protocol::StrBytes;
use kappa_storage::{AppendTicket, Durability, Header, PartitionLog, ProducerInfo, Record};

use super::codec::{code, encode_response, Width, Wire};
use super::conn::{Outcome, Reply};
use super::idempotence::{Check, PartitionSeq, ProducerTable};
use super::node::Node;
use super::records::{self, Incoming, Span};

/// One partition's records, bound for its owning shard.
struct Work {
    slot: usize,
    topic: Arc<str>,
    partition: u32,
    records: Bytes,
}

/// The result of one partition (`error_code`, base offset, log start offset, message).
#[derive(Debug, Clone)]
struct PartResult {
    error_code: i16,
    base_offset: i64,
    log_start_offset: i64,
    message: Option<String>,
}

impl PartResult {
    fn error(error_code: i16, message: impl Into<String>) -> Self {
        PartResult {
            error_code,
            base_offset: -1,
            log_start_offset: -1,
            message: Some(message.into()),
        }
    }
}

/// Starts the appends of a Produce request and returns the future of its response.
pub(crate) async fn dispatch(
    node: &Rc<Node>,
    version: i16,
    correlation_id: i32,
    request: ProduceRequest,
) -> Reply {
    let durability = match request.acks {
        0 => Some(Durability::None),
        1 => Some(Durability::Written),
        -1 => Some(Durability::Synced),
        _ => None,
    };
    // Response slots in request order: (topic index, partition index in the response).
    let mut topics: Vec<TopicProduceResponse> = Vec::with_capacity(request.topic_data.len());
    let mut slots: Vec<(usize, usize)> = Vec::new();
    let mut results: Vec<Option<PartResult>> = Vec::new();
    let mut by_shard: std::collections::BTreeMap<usize, Vec<Work>> = Default::default();
    for topic_data in request.topic_data {
        let name = topic_data.name.0.to_string();
        let meta = node.topic(&name);
        let t = topics.len();
        topics.push(TopicProduceResponse::default().with_name(topic_data.name.clone()));
        for data in topic_data.partition_data {
            let slot = results.len();
            slots.push((t, topics[t].partition_responses.len()));
            topics[t]
                .partition_responses
                .push(PartitionProduceResponse::default().with_index(data.index));
            let owner = meta.as_ref().and_then(|m| {
                u32::try_from(data.index).ok().and_then(|p| Node::owner(m, p).map(|s| (m, p, s)))
            });
            let immediate = match (durability, owner, data.records) {
                (None, ..) => Some(PartResult::error(
                    code::INVALID_REQUIRED_ACKS,
                    format!("acks {} is not 0, 1 or -1", request.acks),
                )),
                (_, None, _) => Some(PartResult::error(
                    code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("unknown topic or partition {name}/{}", data.index),
                )),
                (_, _, None) => Some(PartResult::error(code::CORRUPT_MESSAGE, "no records")),
                (Some(_), Some((meta, partition, shard)), Some(bytes)) => {
                    by_shard.entry(shard).or_default().push(Work {
                        slot,
                        topic: meta.name.clone(),
                        partition,
                        records: bytes,
                    });
                    None
                }
            };
            results.push(immediate);
        }
    }
    let durability = durability.unwrap_or(Durability::Written);
    let mut pending: Vec<PendingGroup> = Vec::new();
    for (shard, works) in by_shard {
        let slots_of: Vec<usize> = works.iter().map(|w| w.slot).collect();
        if shard == node.index {
            pending.push(PendingGroup::Local(append_group(node.clone(), works, durability).await));
        } else {
            let posted = node
                .post(shard, move |n| async move { append_group(n, works, durability).await.await })
                .await;
            match posted {
                Ok(rx) => pending.push(PendingGroup::Remote(rx, slots_of)),
                Err(_) => {
                    for slot in slots_of {
                        results[slot] = Some(PartResult::error(
                            code::UNKNOWN_SERVER_ERROR,
                            "shard unavailable",
                        ));
                    }
                }
            }
        }
    }
    let acks = request.acks;
    Box::pin(async move {
        for group in pending {
            let done = match group {
                PendingGroup::Local(future) => future.await,
                PendingGroup::Remote(rx, slots_of) => match rx.recv_async().await {
                    Ok(done) => done,
                    Err(_) => slots_of
                        .into_iter()
                        .map(|s| {
                            (s, PartResult::error(code::UNKNOWN_SERVER_ERROR, "shard stopped"))
                        })
                        .collect(),
                },
            };
            for (slot, result) in done {
                results[slot] = Some(result);
            }
        }
        if acks == 0 {
            // No response; an error closes the connection, the only signal Kafka gives.
            return match results.iter().flatten().find(|r| r.error_code != code::NONE) {
                Some(r) => Outcome::Close(format!(
                    "acks=0 produce failed: error {} ({})",
                    r.error_code,
                    r.message.as_deref().unwrap_or("")
                )),
                None => Outcome::Nothing,
            };
        }
        for (slot, result) in results.into_iter().enumerate() {
            let result = result.unwrap_or(PartResult::error(code::UNKNOWN_SERVER_ERROR, "lost"));
            let (t, p) = slots[slot];
            let response = &mut topics[t].partition_responses[p];
            response.error_code = result.error_code;
            response.base_offset = result.base_offset;
            response.log_append_time_ms = -1;
            if version >= 5 {
                response.log_start_offset = result.log_start_offset;
            }
            if version >= 8 && result.error_code != code::NONE {
                response.error_message = result.message.map(StrBytes::from_string);
            }
        }
        let response = ProduceResponse::default().with_responses(topics);
        Outcome::encoded(encode_response(ApiKey::Produce, version, correlation_id, &response))
    })
}

enum PendingGroup {
    Local(super::util::LocalFuture<'static, Vec<(usize, PartResult)>>),
    Remote(flume::Receiver<Vec<(usize, PartResult)>>, Vec<usize>),
}

/// Appends the partitions of one shard in order (on that shard) and returns the future of their
/// results, which resolves once every append reached its durability.
async fn append_group(
    node: Rc<Node>,
    works: Vec<Work>,
    durability: Durability,
) -> super::util::LocalFuture<'static, Vec<(usize, PartResult)>> {
    let mut waiting = Vec::with_capacity(works.len());
    for work in works {
        let slot = work.slot;
        waiting.push((slot, append_partition(&node, work, durability).await));
    }
    Box::pin(async move {
        let mut out = Vec::with_capacity(waiting.len());
        for (slot, wait) in waiting {
            out.push((slot, wait.finish().await));
        }
        out
    })
}

/// An append that has its offsets and waits for its durability.
enum Appended {
    Done(PartResult),
    Waiting { log: Rc<PartitionLog>, tickets: Vec<AppendTicket>, base_offset: Option<u64> },
}

impl Appended {
    async fn finish(self) -> PartResult {
        match self {
            Appended::Done(result) => result,
            Appended::Waiting { log, tickets, base_offset } => {
                let mut base = base_offset;
                for ticket in tickets {
                    match log.wait(ticket).await {
                        Ok(info) => {
                            base.get_or_insert(info.base_offset);
                        }
                        Err(e) => return storage_error(&e),
                    }
                }
                tracing::trace!(base_offset = base, "kafka produce acknowledged");
                PartResult {
                    error_code: code::NONE,
                    base_offset: base.map_or(-1, |b| b as i64),
                    log_start_offset: log.start_offset() as i64,
                    message: None,
                }
            }
        }
    }
}

fn storage_error(e: &kappa_storage::Error) -> PartResult {
    use kappa_storage::Error as E;
    let code = match e {
        E::RecordTooLarge { .. } | E::BatchTooLarge { .. } => code::MESSAGE_TOO_LARGE,
        E::EmptyBatch => code::CORRUPT_MESSAGE,
        E::Closed => code::UNKNOWN_TOPIC_OR_PARTITION,
        _ => code::KAFKA_STORAGE_ERROR,
    };
    PartResult::error(code, e.to_string())
}

/// The append state of a partition this shard owns (new when the topic was re-created).
fn partition_seq(
    node: &Node,
    topic: &Arc<str>,
    partition: u32,
    log: &Rc<PartitionLog>,
) -> Rc<PartitionSeq> {
    let mut sequences = node.sequences.borrow_mut();
    let key = (topic.clone(), partition);
    match sequences.get(&key) {
        Some(seq) if Rc::ptr_eq(&seq.log, log) => seq.clone(),
        _ => {
            let seq = Rc::new(PartitionSeq::new(log.clone()));
            sequences.insert(key, seq.clone());
            seq
        }
    }
}

/// The ordered half of one partition's append (see the module doc).
async fn append_partition(node: &Rc<Node>, work: Work, durability: Durability) -> Appended {
    let Some(log) = node.shard.log(&work.topic, work.partition) else {
        return Appended::Done(PartResult::error(
            code::UNKNOWN_TOPIC_OR_PARTITION,
            format!("unknown partition {}/{}", work.topic, work.partition),
        ));
    };
    let batches = match records::split(&work.records) {
        Ok(batches) => batches,
        Err(e) => return Appended::Done(PartResult::error(e.code(), e.to_string())),
    };
    let seq = partition_seq(node, &work.topic, work.partition, &log);
    let Ok(_permit) = seq.lock.acquire_permit(1).await else {
        return Appended::Done(PartResult::error(code::UNKNOWN_SERVER_ERROR, "closing"));
    };
    let idempotent = batches.iter().any(|b| b.is_idempotent());
    if idempotent && seq.table.borrow().is_none() {
        match ProducerTable::load(&log, node.config().producer_state_scan_bytes).await {
            Ok(table) => *seq.table.borrow_mut() = Some(table),
            Err(e) => return Appended::Done(storage_error(&e)),
        }
    }
    // Check every batch before appending any, so a refused request appends nothing.
    let mut checks = Vec::with_capacity(batches.len());
    {
        let table = seq.table.borrow();
        for batch in &batches {
            let check = match (&*table, batch.is_idempotent()) {
                (Some(table), true) => table.check(
                    batch.producer_id,
                    batch.producer_epoch,
                    batch.base_sequence,
                    batch.record_count,
                ),
                _ => Check::Append,
            };
            if let Check::Refuse(code, why) = check {
                return Appended::Done(PartResult::error(code, why));
            }
            checks.push(check);
        }
    }
    let now_ms = node.now_ms();
    let limit = node.config().decompressed_batch_bytes_max;
    let mut tickets = Vec::with_capacity(batches.len());
    let mut base_offset = None;
    for (batch, check) in batches.iter().zip(checks) {
        if let Check::Duplicate(done) = check {
            base_offset.get_or_insert(done.base_offset);
            continue;
        }
        // Per batch: one allocation each, never one per record.
        let mut scratch = Vec::new();
        let mut spans: Vec<Span<'_>> = Vec::new();
        let mut headers: Vec<Header<'_>> = Vec::new();
        let section = match records::section(batch, &mut scratch, limit) {
            Ok(section) => section,
            Err(e) => return Appended::Done(PartResult::error(e.code(), e.to_string())),
        };
        let stored_form =
            match records::read_records(batch, section, now_ms, &mut spans, &mut headers) {
                Ok(stored_form) => stored_form,
                Err(e) => return Appended::Done(PartResult::error(e.code(), e.to_string())),
            };
        let borrowed: Vec<Record<'_>> = spans
            .iter()
            .map(|&(timestamp, key, value, start, end)| Record {
                timestamp,
                key,
                value,
                headers: &headers[start..end],
            })
            .collect();
        // An embedded request's records for this partition split over staged batches stay
        // contiguous (its producer derives each record's offset from the first): a request of
        // the topic being staged finishes first, and its staged rest goes first. Checked after
        // the last await, so nothing splits before the append below. Once it has waited, the
        // request loop stages nothing more until it appended (`turn`, dropped after the append).
        let mut turn = None;
        loop {
            log.reserve().await;
            match crate::shard::split_part(&node.shard, &work.topic, work.partition) {
                crate::shard::SplitPart::None => break,
                crate::shard::SplitPart::Staging => {
                    turn.get_or_insert_with(|| crate::shard::Turn::new(&node.shard));
                    crate::shard::staging_finished(&node.shard, &work.topic).await
                }
                crate::shard::SplitPart::Staged => {
                    crate::shard::flush_staged(&node.shard, &work.topic, work.partition).await
                }
            }
        }
        let producer = ProducerInfo {
            producer_id: batch.producer_id,
            producer_epoch: batch.producer_epoch,
            base_sequence: batch.base_sequence,
        };
        // A batch in the stored form is stored as it arrived (its CRC was checked in
        // `records::split`); the log checks its header and length against the records, which
        // refuses a compressed one (its attributes name the codec) and encodes those instead.
        let incoming = Incoming { records: &borrowed, encoded: stored_form.then_some(batch.bytes) };
        let ticket = match log.append_records(&incoming, producer, durability, now_ms) {
            Ok(ticket) => ticket,
            Err(e) => return Appended::Done(storage_error(&e)),
        };
        if batch.is_idempotent() {
            if let Some(table) = seq.table.borrow_mut().as_mut() {
                table.record(
                    batch.producer_id,
                    batch.producer_epoch,
                    batch.base_sequence,
                    batch.record_count,
                    ticket.info.base_offset,
                );
            }
        }
        // Stage events (`KAPPA_LOG=kappa_engine::kafka=trace`), with the log's own.
        tracing::trace!(base_offset = ticket.info.base_offset, "kafka produce appended");
        base_offset.get_or_insert(ticket.info.base_offset);
        tickets.push(ticket);
    }
    Appended::Waiting { log, tickets, base_offset }
}

/// Produce v0-2 carry message formats v0/v1, which kappa does not store. They are advertised
/// only because old librdkafka needs to see v0 (see `codec::SUPPORTED_APIS`); a request in
/// those versions gets `UNSUPPORTED_FOR_MESSAGE_FORMAT` for every partition. The codec crate has
/// no schema below v3, so request and response are read and written here (`None`: malformed).
pub(crate) fn refuse_legacy(version: i16, correlation_id: i32, mut body: Bytes) -> Option<Bytes> {
    fn string(b: &mut Bytes) -> Option<Bytes> {
        if b.remaining() < 2 {
            return None;
        }
        let len = usize::try_from(b.get_i16()).ok()?;
        (b.remaining() >= len).then(|| b.split_to(len))
    }
    // The rest of request header v1: the client id (a nullable string).
    if body.remaining() < 2 {
        return None;
    }
    let client_id_len = body.get_i16();
    if client_id_len > 0 {
        let len = client_id_len as usize;
        if body.remaining() < len {
            return None;
        }
        body.advance(len);
    }
    if body.remaining() < 10 {
        return None;
    }
    body.advance(6); // acks, timeout
    let topic_count = usize::try_from(body.get_i32()).ok()?;
    let mut topics = Vec::new();
    for _ in 0..topic_count {
        let name = string(&mut body)?;
        if body.remaining() < 4 {
            return None;
        }
        let partition_count = usize::try_from(body.get_i32()).ok()?;
        let mut partitions = Vec::new();
        for _ in 0..partition_count {
            if body.remaining() < 8 {
                return None;
            }
            partitions.push(body.get_i32());
            let len = usize::try_from(body.get_i32()).unwrap_or(0);
            if body.remaining() < len {
                return None;
            }
            body.advance(len);
        }
        topics.push((name, partitions));
    }
    let mut out = BytesMut::new();
    let mut w = Wire { buf: &mut out, flexible: false };
    w.i32(0);
    w.i32(correlation_id);
    w.len(Some(topics.len()), Width::I32);
    for (name, partitions) in &topics {
        w.len(Some(name.len()), Width::I16);
        w.buf.put_slice(name);
        w.len(Some(partitions.len()), Width::I32);
        for &p in partitions {
            w.i32(p);
            w.i16(code::UNSUPPORTED_FOR_MESSAGE_FORMAT);
            w.i64(-1);
            if version >= 2 {
                w.i64(-1);
            }
        }
    }
    if version >= 1 {
        w.i32(0);
    }
    let size = (out.len() - 4) as i32;
    out[0..4].copy_from_slice(&size.to_be_bytes());
    Some(out.freeze())
}
