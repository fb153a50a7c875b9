//! The shard's per-partition accumulator: records of many requests become one stored batch.
//!
//! Why: a keyed batch over many partitions used to become one stored batch (one frame, one write,
//! one acknowledgement) per partition it touched; with random keys over 1,000 partitions that is
//! 1.6 records per frame, and ingest collapsed to a few percent of the pre-grouped rate. Like
//! Kafka's producer (`linger.ms`, `batch.size`), records now wait in a per-partition staged batch
//! until it holds `batch_size` bytes or its first record has waited `linger`; a request with
//! `linger` zero is flushed when the shard finished staging it.
//!
//! The accumulator lives on the shard (not in the producer), so it needs no lock and producers on
//! any number of threads share it; a producer sends one request per shard, whatever the number of
//! partitions its records route to.
//!
//! Order: only the request loop stages records, and a staged batch is taken and appended in one
//! synchronous step (after the awaits for room), so staged batches of a partition are appended in
//! the order they were filled, and a plain append for a partition first flushes what is staged
//! there. Records of one request for one partition are therefore contiguous in the log, which is
//! how the producer computes every record's offset from one `BatchAck` per partition.
//!
//! Bounds: staged bytes per shard are at most `EngineConfig::staged_bytes_max` (past it, the
//! oldest staged batches are flushed before more are staged); a flush waits for room in the log's
//! write queue and for an append permit, so a producer faster than the disk stops the request
//! loop, fills the shard's bounded request channel and waits in `send` (`try_send*` get
//! `Error::WouldBlock`). Memory is bounded, nothing is dropped.
//!
//! Durability: a staged batch is appended at the highest durability any of its records asked
//! for, and every record is acknowledged only after its batch reached that level.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use kappa_storage::Durability;

use super::{Reply, Shard};
use crate::producer::{BatchAck, Payload, ProducerBatch};
use crate::Error;

/// What a `Request::Stage` carries: records of one topic for partitions of one shard.
pub(crate) struct Stage {
    pub(crate) topic: Arc<str>,
    /// All records of the producer's batch; `parts` says which go where.
    pub(crate) batch: Arc<ProducerBatch>,
    /// Indexes into `batch` of this shard's records, grouped by partition, in batch order within
    /// a partition.
    pub(crate) indexes: Vec<u32>,
    /// (partition, end of its group in `indexes`) per partition of this shard; a group starts
    /// where the previous one ended.
    pub(crate) parts: Vec<(u32, u32)>,
    pub(crate) durability: Durability,
    pub(crate) linger: Duration,
    pub(crate) batch_size: usize,
    /// One `BatchAck` per part, in `parts` order.
    pub(crate) reply: Reply<Vec<BatchAck>>,
}

/// A request whose records wait in staged batches: answered when the last slice is durable.
struct Pending {
    acks: RefCell<Vec<Option<BatchAck>>>,
    partitions: Vec<u32>,
    remaining: Cell<usize>,
    error: RefCell<Option<Error>>,
    reply: RefCell<Option<Reply<Vec<BatchAck>>>>,
}

impl Pending {
    /// Records `[first, last]` of part `part` are durable (or failed).
    fn settle(&self, part: usize, result: Result<(u64, u64), (&Error, &std::path::Path)>) {
        match result {
            Ok((first, last)) => {
                let mut acks = self.acks.borrow_mut();
                let ack = acks[part].get_or_insert(BatchAck {
                    partition: self.partitions[part],
                    base_offset: first,
                    last_offset: last,
                });
                ack.base_offset = ack.base_offset.min(first);
                ack.last_offset = ack.last_offset.max(last);
            }
            Err((e, dir)) => {
                let mut error = self.error.borrow_mut();
                if error.is_none() {
                    *error = Some(copy_error(e, dir));
                }
            }
        }
        self.finish_one();
    }

    /// One slice (or the staging step itself) is done; the last one answers the request.
    fn finish_one(&self) {
        self.remaining.set(self.remaining.get() - 1);
        if self.remaining.get() == 0 {
            if let Some(reply) = self.reply.borrow_mut().take() {
                let result = match self.error.borrow_mut().take() {
                    Some(e) => Err(e),
                    None => Ok(self.acks.borrow().iter().map(|a| a.expect("settled")).collect()),
                };
                let _ = reply.send(result);
            }
        }
    }
}

/// A waiter's share of a staged batch: its records at positions `[start, end)`.
struct Slice {
    pending: Rc<Pending>,
    part: usize,
    start: u32,
    end: u32,
}

/// Records of one partition waiting to be appended together.
#[derive(Default)]
struct Staged {
    batch: ProducerBatch,
    slices: Vec<Slice>,
    durability: Option<Durability>,
    /// Tells a linger timer whether the batch it was started for is still the one staged.
    generation: u64,
}

type Key = (Arc<str>, u32);

/// A shard's staged batches and their bound.
#[derive(Default)]
pub(crate) struct Staging {
    staged: BTreeMap<Key, Staged>,
    /// Staged batches in the order they started (stale entries are skipped).
    order: VecDeque<(Key, u64)>,
    bytes: usize,
    generations: u64,
    pub(crate) flushes: FlushCounts,
}

/// Why staged batches were appended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushCounts {
    /// `batch_size` reached.
    pub full: u64,
    /// `linger` elapsed.
    pub linger: u64,
    /// A request with `linger` zero ended, or a plain append to the partition came.
    pub request: u64,
    /// The shard's `staged_bytes_max` was reached.
    pub memory: u64,
}

impl Staging {
    pub(crate) fn staged_bytes(&self) -> usize {
        self.bytes
    }
    pub(crate) fn staged_partitions(&self) -> usize {
        self.staged.len()
    }
}

enum Cause {
    Full,
    Linger,
    Request,
    Memory,
}

/// Stages a request's records; flushes what fills up, and at the end what must not linger.
pub(crate) async fn stage(shard: &Rc<Shard>, stage: Stage) {
    let Stage { topic, batch, indexes: all_indexes, parts, durability, linger, batch_size, reply } =
        stage;
    for (partition, _) in &parts {
        if shard.log(&topic, *partition).is_none() {
            let _ = reply.send(Err(Error::UnknownTopic { topic: topic.to_string() }));
            return;
        }
    }
    let incoming = all_indexes.iter().map(|&i| batch.size_of(i as usize)).sum();
    make_room(shard, incoming).await;
    let pending = Rc::new(Pending {
        acks: RefCell::new(vec![None; parts.len()]),
        partitions: parts.iter().map(|(p, _)| *p).collect(),
        remaining: Cell::new(1), // the staging itself, settled below
        error: RefCell::new(None),
        reply: RefCell::new(Some(reply)),
    });
    let limits = shard.config.log.limits;
    let batch_size = batch_size.clamp(1, limits.batch_size_bytes_max as usize);
    let count_max = limits.batch_record_count_max as usize;
    let mut part_start = 0;
    for (part, &(partition, part_end)) in parts.iter().enumerate() {
        let indexes = &all_indexes[part_start as usize..part_end as usize];
        part_start = part_end;
        let key: Key = (topic.clone(), partition);
        let mut i = 0;
        while i < indexes.len() {
            // Stage as many records as fit, synchronously; then flush a full batch (an await).
            let full = {
                let mut staging = shard.staging.borrow_mut();
                let staging = &mut *staging;
                let next_generation = staging.generations + 1;
                let mut fresh = false;
                let staged = staging.staged.entry(key.clone()).or_insert_with(|| {
                    fresh = true;
                    Staged { generation: next_generation, ..Staged::default() }
                });
                if fresh {
                    staging.generations = next_generation;
                    staging.order.push_back((key.clone(), next_generation));
                    if !linger.is_zero() {
                        spawn_linger_timer(shard, key.clone(), next_generation, linger);
                    }
                }
                let start = staged.batch.len() as u32;
                let mut full = false;
                while i < indexes.len() {
                    let index = indexes[i] as usize;
                    let size = batch.size_of(index);
                    if !staged.batch.is_empty()
                        && (staged.batch.data_len() + size > batch_size
                            || staged.batch.len() >= count_max)
                    {
                        full = true;
                        break;
                    }
                    staged.batch.push_from(&batch, index);
                    staging.bytes += size;
                    i += 1;
                }
                let end = staged.batch.len() as u32;
                if end > start {
                    pending.remaining.set(pending.remaining.get() + 1);
                    staged.slices.push(Slice { pending: pending.clone(), part, start, end });
                    staged.durability = staged.durability.max(Some(durability));
                }
                full || staged.batch.data_len() >= batch_size
            };
            if full {
                flush(shard, &key, Cause::Full).await;
            }
        }
        // A request spans up to thousands of partitions: let the writers and acks run.
        if part % 64 == 63 {
            glommio::yield_if_needed().await;
        }
    }
    if linger.is_zero() {
        for (partition, _) in &parts {
            flush(shard, &(topic.clone(), *partition), Cause::Request).await;
        }
    }
    // The staging step is done: from now on only slices keep the request open.
    pending.finish_one();
}

/// Flushes the oldest staged batches until `incoming` more bytes fit under the shard's bound.
async fn make_room(shard: &Rc<Shard>, incoming: usize) {
    let max = shard.config.staged_bytes_max;
    loop {
        let oldest = {
            let mut staging = shard.staging.borrow_mut();
            if staging.bytes == 0 || staging.bytes + incoming <= max {
                return;
            }
            let mut oldest = None;
            while let Some((key, generation)) = staging.order.pop_front() {
                if staging.staged.get(&key).is_some_and(|s| s.generation == generation) {
                    oldest = Some(key);
                    break;
                }
            }
            oldest
        };
        match oldest {
            Some(key) => flush(shard, &key, Cause::Memory).await,
            None => return,
        }
    }
}

/// Appends what is staged for a partition before a plain append to it (arrival order).
pub(crate) async fn flush_before_append(shard: &Rc<Shard>, topic: &Arc<str>, partition: u32) {
    let key: Key = (topic.clone(), partition);
    if shard.staging.borrow().staged.contains_key(&key) {
        flush(shard, &key, Cause::Request).await;
    }
}

/// Appends every staged batch (shutdown).
pub(crate) async fn flush_all(shard: &Rc<Shard>) {
    let keys: Vec<Key> = shard.staging.borrow().staged.keys().cloned().collect();
    for key in keys {
        flush(shard, &key, Cause::Request).await;
    }
}

fn spawn_linger_timer(shard: &Rc<Shard>, key: Key, generation: u64, linger: Duration) {
    let task_shard = shard.clone();
    let task = async move {
        glommio::timer::sleep(linger).await;
        let current = task_shard.staging.borrow().staged.get(&key).map(|s| s.generation);
        if current == Some(generation) {
            flush(&task_shard, &key, Cause::Linger).await;
        }
    };
    glommio::spawn_local_into(task, shard.live).expect("the live queue exists").detach();
}

/// Waits for room in the partition's log and for an append permit, then takes what is staged
/// there now and appends it, in one synchronous step (see the module doc on order).
async fn flush(shard: &Rc<Shard>, key: &Key, cause: Cause) {
    let Some(log) = shard.log(&key.0, key.1) else {
        // The partition closed (topic deleted): fail its waiters.
        if let Some(staged) = take(shard, key) {
            let error = Error::UnknownTopic { topic: key.0.to_string() };
            let dir = kappa_storage::paths::partition_dir(&shard.config.data_dir, &key.0, key.1);
            for slice in staged.slices {
                slice.pending.settle(slice.part, Err((&error, &dir)));
            }
        }
        return;
    };
    log.reserve().await;
    let Ok(permit) = shard.append_permits.clone().acquire_static_permit(1).await else {
        return;
    };
    let Some(staged) = take(shard, key) else { return };
    {
        let mut staging = shard.staging.borrow_mut();
        let counts = &mut staging.flushes;
        match cause {
            Cause::Full => counts.full += 1,
            Cause::Linger => counts.linger += 1,
            Cause::Request => counts.request += 1,
            Cause::Memory => counts.memory += 1,
        }
    }
    let Staged { batch, slices, durability, .. } = staged;
    let durability = durability.unwrap_or(Durability::Written);
    let dir = log.dir().to_path_buf();
    super::append(
        shard,
        log,
        &key.0,
        key.1,
        Payload::Batch(batch),
        durability,
        permit,
        Box::new(move |result: Result<BatchAck, Error>| {
            for slice in slices {
                match &result {
                    Ok(ack) => slice.pending.settle(
                        slice.part,
                        Ok((
                            ack.base_offset + u64::from(slice.start),
                            ack.base_offset + u64::from(slice.end) - 1,
                        )),
                    ),
                    Err(e) => slice.pending.settle(slice.part, Err((e, &dir))),
                }
            }
        }),
    );
}

fn take(shard: &Rc<Shard>, key: &Key) -> Option<Staged> {
    let mut staging = shard.staging.borrow_mut();
    let staged = staging.staged.remove(key)?;
    staging.bytes -= staged.batch.data_len();
    Some(staged)
}

/// The engine's error for every waiter of a failed batch of the partition in `dir` (errors are
/// not `Clone`: the message is kept, and whether the disk is full, as the error kind).
fn copy_error(e: &Error, dir: &std::path::Path) -> Error {
    match e {
        Error::UnknownTopic { topic } => Error::UnknownTopic { topic: topic.clone() },
        Error::ShutDown => Error::ShutDown,
        other => Error::Io {
            op: "append",
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                if other.is_disk_full() {
                    std::io::ErrorKind::StorageFull
                } else {
                    std::io::ErrorKind::Other
                },
                other.to_string(),
            ),
        },
    }
}
