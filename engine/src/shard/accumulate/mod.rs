//! The shard's per-partition accumulator: records of many requests become one stored batch.
//!
//! Why: a keyed batch over many partitions used to become one stored batch (one frame, one write,
//! one acknowledgement) per partition it touched; with random keys over 1,000 partitions that is
//! 1.6 records per frame, and ingest collapsed to a few percent of the pre-grouped rate. Like
//! Kafka's producer (`linger.ms`, `batch.size`), records now wait in a per-partition staged batch
//! until it holds `batch_size` bytes or its first record has waited `linger` (and the shard has
//! staged the requests queued at that moment: `flush_expired`); a request with `linger` zero is
//! flushed when the shard finished staging it. While the shard has nothing on its way to the disk,
//! batches holding a quarter of their `batch_size` go early (`idle_flusher`: as in group commit,
//! nothing would share the write by waiting).
//!
//! Cost: staging copies each record once more than a pre-grouped append, so it reads the
//! producer's batch front to back and writes each record to its partition's staged batch
//! (`stage`); reading in partition order jumped through the producer's bytes, a cache miss per
//! record.
//!
//! Tried and measured slower (December 2026): staging by reference, an 8-byte reference per
//! record into the request's own records (a compact copy per shard) and the records gathered
//! from there when the log encodes a staged batch. Staging itself fell from 12.5% to 4% of the
//! samples, but the encoder's reads from hundreds of sources missed the cache instead (its plan
//! pass went from 9% to 21% with prefetching, the copy from 13% to 18%), and answering by record
//! added 7%: with random keys over 4,000 partitions the shards' CPU per million records went
//! from 0.65-0.82 s to 0.93-1.01 s, and the rate from 0.45-0.58 to 0.38-0.41 of the pre-grouped
//! rate (two alternated rounds). Writes to scattered lines (the copy here) cost less than reads.
//!
//! The accumulator lives on the shard (not in the producer), so it needs no lock and producers on
//! any number of threads share it; a producer sends one request per shard, whatever the number of
//! partitions its records route to.
//!
//! Order: only the request loop stages records, and a staged batch is taken and appended in one
//! synchronous step (after the awaits for room), so staged batches of a partition are appended in
//! the order they were filled, and a plain append for a partition first flushes what is staged
//! there. An append from outside the request loop (a Kafka produce, on the same shard) may come
//! while a request's records for a partition are split between the log and a staged batch (a
//! full batch was appended in the middle of them); it first appends that batch, and appends
//! only once none is staged; while a request of the topic is being staged (its parts open across
//! awaits, see `stage`) it waits for that to end (`split_part`, checked after its last await).
//! Records of one
//! request for one partition are therefore contiguous in the log, which is how the producer
//! computes every record's offset from one `BatchAck` per partition.
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
use crate::producer::{prefetch, BatchAck, Payload, ProducerBatch};
use crate::Error;

mod flush;

pub(crate) use flush::*;

/// What a `Request::Stage` carries: records of one topic for partitions of one shard.
pub(crate) struct Stage {
    pub(crate) topic: Arc<str>,
    /// All records of the producer's batch; `indexes` says which are this shard's.
    pub(crate) batch: Arc<ProducerBatch>,
    /// Indexes into `batch` of this shard's records, in batch order (the shard reads the bytes
    /// front to back).
    pub(crate) indexes: Vec<u32>,
    /// The part (an index into `parts`) of each record of `indexes`.
    pub(crate) record_parts: Vec<u32>,
    /// The partition of each part (in order of first appearance in the batch): a part is a
    /// partition's records of this request.
    pub(crate) parts: Vec<u32>,
    /// The records of each part, in `parts` order.
    pub(crate) counts: Vec<u32>,
    pub(crate) durability: Durability,
    pub(crate) linger: Duration,
    pub(crate) batch_size: usize,
    /// One `BatchAck` per part, in `parts` order.
    pub(crate) reply: Reply<Vec<BatchAck>>,
}

/// A staged batch's base offset in the log, set when its append completed: shared by the
/// requests whose parts start in it (`Pending::first`).
type Landed = Rc<Cell<Option<u64>>>;

/// A request whose records wait in staged batches: answered when the last staged batch holding
/// its records is durable.
///
/// Acknowledged by batch, not by slice: a request's records for one partition are contiguous in
/// the log (module doc), so a part's offsets are the base offset of the staged batch holding its
/// first record, plus that record's position there, and its count. Staging writes that
/// (batch, position) once per part, in part order (parts are numbered in order of first
/// appearance, and records are staged in batch order); an append writes its base offset once;
/// the answer reads them. Until December 2026 each append wrote every slice's offsets into its
/// request's acknowledgement array: with random keys over 4,000 partitions one slice per record,
/// each a cache miss in one of a thousand requests' arrays (`settle` was an eighth of the staging
/// shards' time, 85% of it on that one store).
struct Pending {
    /// Per part: the staged batch holding its first record, and that record's position there.
    first: RefCell<Vec<Option<(Landed, u32)>>>,
    counts: Vec<u32>,
    topic: Arc<str>,
    partitions: Vec<u32>,
    /// Staged batches holding records of the request not yet appended, plus one for the staging
    /// step itself.
    remaining: Cell<usize>,
    error: RefCell<Option<Error>>,
    reply: RefCell<Option<Reply<Vec<BatchAck>>>>,
}

impl Pending {
    /// A staged batch holding records of the request failed.
    fn fail(&self, e: &Error, dir: &std::path::Path) {
        {
            let mut error = self.error.borrow_mut();
            if error.is_none() {
                *error = Some(copy_error(e, dir));
            }
        }
        self.finish_one();
    }

    /// A staged batch holding records of the request (or the staging step itself) is done; the
    /// last one answers the request.
    fn finish_one(&self) {
        self.remaining.set(self.remaining.get() - 1);
        if self.remaining.get() == 0 {
            if let Some(reply) = self.reply.borrow_mut().take() {
                let result = match self.error.borrow_mut().take() {
                    Some(e) => Err(e),
                    None => self.acks(),
                };
                let _ = reply.send(result);
            }
        }
    }

    /// One `BatchAck` per part, once every staged batch holding the request's records is in the
    /// log. Each part's first batch holds this request as a waiter, so its base offset is set
    /// before the request's last waiter finishes; a part without one is a bug reported as an
    /// error, not a panic on the shard.
    fn acks(&self) -> Result<Vec<BatchAck>, Error> {
        let first = self.first.borrow();
        let mut acks = Vec::with_capacity(first.len());
        for ((first, &partition), &count) in first.iter().zip(&self.partitions).zip(&self.counts) {
            let base = first.as_ref().and_then(|(landed, position)| {
                landed.get().map(|base| base + u64::from(*position))
            });
            let Some(base) = base else {
                return Err(Error::Io {
                    op: "acknowledge",
                    path: std::path::Path::new(&*self.topic).join(partition.to_string()),
                    source: std::io::Error::other(
                        "a staged part was answered before its batch was appended (a bug)",
                    ),
                });
            };
            acks.push(BatchAck {
                partition,
                base_offset: base,
                last_offset: base + u64::from(count.max(1)) - 1,
            });
        }
        Ok(acks)
    }
}

/// Records of one partition waiting to be appended together.
///
/// Aligned to a cache line: staging reads it for nearly every record (in one of thousands), and
/// the staging loop asks for its two lines ahead of time (`stage`); unaligned, it spanned three.
#[derive(Default)]
#[repr(align(64))]
struct Staged {
    batch: ProducerBatch,
    /// The requests with records here, one entry per request (their records here are one
    /// contiguous slice: only the request loop stages, one request at a time).
    waiters: Vec<Rc<Pending>>,
    /// Where the batch's base offset goes once appended (`Pending::first`).
    landed: Option<Landed>,
    durability: Option<Durability>,
    /// Tells a linger timer whether the batch it was started for is still the one staged.
    generation: u64,
    /// A quarter of the `batch_size` of the request that started it (`flush_idle`); a later
    /// request with a larger `batch_size` that shares the batch does not move it.
    ripe_at: usize,
    /// In `Staging::ripe`.
    ripe: bool,
    /// Holds the rest of a request's records for the partition whose first records are in a
    /// batch taken for appending already (`split_part`).
    continues: bool,
}

/// A topic's staged batches: one slot per partition number (grown on demand; only this shard's
/// partitions are ever filled).
#[derive(Default)]
struct TopicSlots {
    slots: Vec<Option<Box<Staged>>>,
    /// Slots holding a staged batch.
    staged: usize,
}

/// A shard's staged batches and their bound.
///
/// Why slots: a request with records for hundreds of partitions finds each one's staged batch
/// with one lookup of its topic by `&str` and an index, and clones nothing per partition. A map
/// keyed by `(Arc<str>, u32)` compared topic names at every level and cloned the topic's `Arc`
/// (shared with every producer thread and every shard) several times per partition: atomic
/// increments on one cache line that all shards were hitting.
#[derive(Default)]
pub(crate) struct Staging {
    topics: BTreeMap<Arc<str>, TopicSlots>,
    /// Staged batches in the order they started (stale entries are skipped).
    order: VecDeque<(Arc<str>, u32, u64)>,
    /// Staged batches holding a quarter of their `batch_size`, in the order they got there
    /// (`flush_idle`; stale entries are skipped).
    ripe: VecDeque<(Arc<str>, u32, u64)>,
    /// Notified when `ripe` gets its first entry and when the shard's last append in flight
    /// completes (`idle_flusher`).
    pub(crate) ripe_event: Rc<kappa_storage::Event>,
    /// Staged batches whose linger elapsed while requests were queued, in the order they
    /// expired: each is appended once the request loop has taken the requests queued at its
    /// expiry (`Expired::after`; stale entries are skipped).
    expired: VecDeque<Expired>,
    /// Requests the request loop has taken from the shard's queue (`taken`).
    taken: u64,
    /// The topic of the request `stage` is staging now, across its awaits (`split_part`).
    staging_topic: Option<Arc<str>>,
    /// Appends from outside the request loop that found a request of their topic being staged
    /// and have not appended yet (`KafkaTurn`): the next request is staged only once they have,
    /// so a stream of requests cannot keep them waiting.
    waiting_appends: usize,
    /// Notified when `staging_topic` is cleared and when `waiting_appends` falls.
    stage_done: Rc<kappa_storage::Event>,
    bytes: usize,
    generations: u64,
    /// Emptied staged batches and waiter lists, their buffers kept for the next staged batches:
    /// a fresh staged batch grew its buffers from nothing, copying as it doubled, and a flushed
    /// one gave them back to the allocator, which returned pages to the kernel only to fault them
    /// in again (a sixth of the staging shards' time at 4,000 partitions went to page faults,
    /// zeroing and reallocation).
    ///
    /// Bounded by bytes, not by count: the spares' buffers (`spare_bytes`) and the staged bytes
    /// together stay within `staged_bytes_max` once each request is staged (a spare is kept
    /// only if it fits, and `trim_spares` frees those that staging into existing batches
    /// crowded out), so the accumulator's memory bound is what it was, and the spares only fill
    /// what staging does not use. A count of 32 kept none of the thousands of batches a shard
    /// flushes at once (`Producer::flush`, the memory bound at 4,000 partitions), and each next
    /// staged batch was allocated and grown anew.
    // Boxed: a spare moves into a slot (which holds a `Box`) without a new allocation.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Staged>>,
    spare_waiters: Vec<Vec<Rc<Pending>>>,
    /// What the spares' buffers hold (`Staged::footprint`, `waiters_footprint`).
    spare_bytes: usize,
    pub(crate) flushes: FlushCounts,
    /// What a staged batch of this shard held when it was appended, as a moving average (bytes,
    /// records, waiters): a new staged batch reserves that much up front.
    ///
    /// Why: a staged batch without a spare grew its buffers by doubling, each step a `realloc`
    /// that copied what was staged so far. With thousands of partitions nearly every staged
    /// batch is new (a spare exists for at most `SPARE_MAX`), and the growth, its copies and the
    /// allocator's work on the freed pieces were most of the staging shards' time: random keys
    /// over 4,000 partitions cost the shards 5x the CPU of the same records grouped by hand.
    typical: Typical,
}

/// A staged batch whose linger elapsed while requests were queued (`Staging::expired`).
struct Expired {
    topic: Arc<str>,
    partition: u32,
    generation: u64,
    /// Appended once the request loop has taken this many requests: those taken and queued when
    /// the linger elapsed. Never decreases along `expired` (it counts every request enqueued).
    after: u64,
}

/// A moving average of what staged batches held when they were appended (`Staging::typical`).
#[derive(Default, Clone, Copy)]
struct Typical {
    bytes: usize,
    records: usize,
    waiters: usize,
}

impl Typical {
    /// Folds in one appended batch (weight 1/4: a change of load shows within a few batches).
    fn update(&mut self, bytes: usize, records: usize, waiters: usize) {
        let avg = |old: usize, new: usize| if old == 0 { new } else { (3 * old + new) / 4 };
        self.bytes = avg(self.bytes, bytes);
        self.records = avg(self.records, records);
        self.waiters = avg(self.waiters, waiters);
    }
}

/// A spare staged batch (with a spare waiter list), or a new one (see `Staging::spare`).
#[allow(clippy::vec_box)]
fn take_spare(
    spare: &mut Vec<Box<Staged>>,
    spare_waiters: &mut Vec<Vec<Rc<Pending>>>,
    spare_bytes: &mut usize,
) -> Box<Staged> {
    let mut staged = match spare.pop() {
        Some(staged) => {
            *spare_bytes -= staged.batch.footprint();
            staged
        }
        None => Box::default(),
    };
    if staged.waiters.capacity() == 0 {
        if let Some(waiters) = spare_waiters.pop() {
            *spare_bytes -= waiters_footprint(&waiters);
            staged.waiters = waiters;
        }
    }
    staged
}

/// The bytes a waiter list's buffer holds.
fn waiters_footprint(waiters: &Vec<Rc<Pending>>) -> usize {
    waiters.capacity() * std::mem::size_of::<Rc<Pending>>()
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
    /// The shard had nothing on its way to the disk, and the batch held a quarter of its
    /// `batch_size` (`flush_idle`).
    pub idle: u64,
}

impl Staging {
    pub(crate) fn staged_bytes(&self) -> usize {
        self.bytes
    }
    /// What the spare staged batches and waiter lists hold (`spare`).
    pub(crate) fn spare_bytes(&self) -> usize {
        self.spare_bytes
    }
    pub(crate) fn staged_partitions(&self) -> usize {
        self.topics.values().map(|t| t.staged).sum()
    }

    /// Keeps an emptied staged batch for the next one if the bound has room (see `spare`).
    fn keep_spare(&mut self, staged: Box<Staged>, max: usize) {
        let size = staged.batch.footprint();
        if self.bytes + self.spare_bytes + size <= max {
            self.spare_bytes += size;
            self.spare.push(staged);
        }
    }

    /// Keeps an emptied waiter list for the next staged batch if the bound has room.
    fn keep_spare_waiters(&mut self, waiters: Vec<Rc<Pending>>, max: usize) {
        let size = waiters_footprint(&waiters);
        if self.bytes + self.spare_bytes + size <= max {
            self.spare_bytes += size;
            self.spare_waiters.push(waiters);
        }
    }

    /// Frees spares until they fit under `max` with the staged bytes (after a request is staged:
    /// staging into existing batches grew the staged bytes without taking a spare).
    fn trim_spares(&mut self, max: usize) {
        while self.bytes + self.spare_bytes > max {
            if let Some(waiters) = self.spare_waiters.pop() {
                self.spare_bytes -= waiters_footprint(&waiters);
            } else if let Some(staged) = self.spare.pop() {
                self.spare_bytes -= staged.batch.footprint();
            } else {
                return;
            }
        }
    }

    /// Whether the oldest expired batch may go: the requests queued at its expiry are taken, or
    /// nothing is queued (`flush_expired`).
    fn front_is_due(&self, queue_empty: bool) -> bool {
        self.expired.front().is_some_and(|e| e.after <= self.taken || queue_empty)
    }

    fn get(&self, topic: &str, partition: u32) -> Option<&Staged> {
        self.topics.get(topic)?.slots.get(partition as usize)?.as_deref()
    }

    /// Takes the batch staged for a partition.
    fn take(&mut self, topic: &str, partition: u32) -> Option<Box<Staged>> {
        let slots = self.topics.get_mut(topic)?;
        let staged = slots.slots.get_mut(partition as usize)?.take()?;
        slots.staged -= 1;
        self.bytes -= staged.batch.data_len();
        Some(staged)
    }

    fn is_current(&self, topic: &str, partition: u32, generation: u64) -> bool {
        self.get(topic, partition).is_some_and(|s| s.generation == generation)
    }

    /// Drops the stale entries of `order` and `expired` (batches appended since) once they
    /// outnumber the staged batches: both stay bounded by what is staged, however long the
    /// shard runs without reaching its memory bound (which is what pops `order`).
    fn prune(&mut self) {
        let staged = self.staged_partitions();
        let bound = 2 * staged + 64;
        if self.order.len() > bound {
            let mut order = std::mem::take(&mut self.order);
            order.retain(|(t, p, g)| self.is_current(t, *p, *g));
            self.order = order;
        }
        if self.ripe.len() > bound {
            let mut ripe = std::mem::take(&mut self.ripe);
            ripe.retain(|(t, p, g)| self.is_current(t, *p, *g));
            self.ripe = ripe;
        }
        if self.expired.len() > bound {
            let mut expired = std::mem::take(&mut self.expired);
            expired.retain(|e| self.is_current(&e.topic, e.partition, e.generation));
            self.expired = expired;
        }
    }

    /// Drops a topic's slots once nothing is staged there (its partitions closed on this shard).
    pub(crate) fn forget(&mut self, topic: &str) {
        if self.topics.get(topic).is_some_and(|t| t.staged == 0) {
            self.topics.remove(topic);
        }
    }
}

enum Cause {
    Full,
    Linger,
    Request,
    Memory,
    /// The generation of the ripe batch `flush_idle` picked: a batch staged in its place while
    /// the flush waited for room is left alone (it may hold less than a quarter).
    Idle(u64),
}

/// Stages a request's records; flushes what fills up, and at the end what must not linger.
///
/// Records are read in batch order and each goes to its partition's staged batch. A request's
/// records for one partition still land contiguously there (only the request loop stages, one
/// request at a time), as one slice per staged batch (the request is one of the batch's
/// `waiters`): the slice starts with the part's first record in that batch and grows with the
/// next ones, so at every await each staged batch holds whole slices, and a part's first slice
/// is where its offsets start (`Pending::first`).
pub(crate) async fn stage(shard: &Rc<Shard>, stage: Stage) {
    let Stage {
        topic,
        batch,
        indexes,
        record_parts,
        parts,
        counts,
        durability,
        linger,
        batch_size,
        reply,
    } = stage;
    // The topic, not each partition: a partition closed meanwhile (the topic being deleted)
    // fails its records when its batch is flushed. A lookup per partition was a fifth of the
    // staging loop's time at 4,000 partitions (cache misses in a map of 2,000 logs).
    if !shard.partitions.borrow().contains_key(&*topic) {
        let _ = reply.send(Err(Error::UnknownTopic { topic: topic.to_string() }));
        return;
    }
    let incoming = indexes.iter().map(|&i| batch.size_of(i as usize)).sum();
    make_room(shard, incoming).await;
    let pending = Rc::new(Pending {
        first: RefCell::new(vec![None; parts.len()]),
        counts,
        topic: topic.clone(),
        partitions: parts,
        remaining: Cell::new(1), // the staging itself, finished below
        error: RefCell::new(None),
        reply: RefCell::new(Some(reply)),
    });
    // The request's partitions, per part: read where the answer needs them, not copied.
    let parts: &[u32] = &pending.partitions;
    let limits = shard.config.log.limits;
    let batch_size = batch_size.clamp(1, limits.batch_size_bytes_max as usize);
    let count_max = limits.batch_record_count_max as usize;
    // Per part: the generation of the staged batch holding its open slice (the last slice there,
    // since no other request stages meanwhile), and whether an earlier slice of it exists.
    let mut open: Vec<(u64, bool)> = vec![(0, false); parts.len()];
    let mut prune_order = false;
    let mut next = 0;
    // Appends that waited for the previous request go first (`Turn`); then, until every record
    // is staged, a part may be open across an await, and appends from outside the request loop
    // to this topic wait (`split_part`). No await between the check and the mark.
    let done = shard.staging.borrow().stage_done.clone();
    done.wait_until(|| shard.staging.borrow().waiting_appends == 0).await;
    shard.staging.borrow_mut().staging_topic = Some(topic.clone());
    while next < indexes.len() {
        // Stage records synchronously until one partition's batch is full; flush it (an await).
        let full = {
            let mut staging = shard.staging.borrow_mut();
            let Staging {
                topics,
                order,
                ripe,
                ripe_event,
                bytes,
                generations,
                typical,
                spare,
                spare_waiters,
                spare_bytes,
                ..
            } = &mut *staging;
            if !topics.contains_key(&*topic) {
                topics.insert(topic.clone(), TopicSlots::default());
            }
            let slots = topics.get_mut(&*topic).expect("inserted above");
            let mut full = None;
            while next < indexes.len() {
                // Ask for what staging a record a few records ahead will touch: nearly every
                // record goes to a staged batch no cache holds (one of thousands), and each of
                // its lines was a miss the loop waited for. Two steps: the staged batch first,
                // then (once it is in cache) where its bytes, entries and waiters end.
                let ahead = |distance: usize| {
                    let j = next + distance;
                    let part = *record_parts.get(j)? as usize;
                    let partition = *parts.get(part)? as usize;
                    slots.slots.get(partition)?.as_deref()
                };
                if let Some(staged) = ahead(PREFETCH_FAR) {
                    // Both lines of it (`Staged` is aligned to a line, and at most two wide: a
                    // test checks).
                    let at = staged as *const Staged as *const u8;
                    prefetch(at);
                    prefetch(at.wrapping_add(64));
                }
                if let Some(staged) = ahead(PREFETCH_NEAR) {
                    staged.batch.prefetch_ends();
                    prefetch(staged.waiters.as_ptr().wrapping_add(staged.waiters.len()));
                    if let Some(landed) = &staged.landed {
                        prefetch(Rc::as_ptr(landed));
                    }
                }
                let index = indexes[next] as usize;
                let part = record_parts[next] as usize;
                let partition = parts[part];
                let slot_index = partition as usize;
                if slots.slots.len() <= slot_index {
                    slots.slots.resize_with(slot_index + 1, || None);
                }
                let slot = &mut slots.slots[slot_index];
                let staged = match slot {
                    Some(staged) => staged,
                    None => {
                        *generations += 1;
                        let generation = *generations;
                        order.push_back((topic.clone(), partition, generation));
                        prune_order |= order.len() > 64;
                        if !linger.is_zero() {
                            spawn_linger_timer(shard, topic.clone(), partition, generation, linger);
                        }
                        slots.staged += 1;
                        let mut staged = take_spare(spare, spare_waiters, spare_bytes);
                        staged.generation = generation;
                        staged.ripe_at = batch_size / 4;
                        staged.ripe = false;
                        staged.landed = Some(Rc::new(Cell::new(None)));
                        staged.continues = false;
                        // Sized to what batches of this shard held lately (capped by what one
                        // may hold): one allocation, not a doubling `realloc` per few records.
                        let typical = *typical;
                        staged
                            .batch
                            .reserve(typical.records.min(count_max), typical.bytes.min(batch_size));
                        staged.waiters.reserve(typical.waiters.min(count_max));
                        slot.insert(staged)
                    }
                };
                let size = batch.size_of(index);
                if !staged.batch.is_empty()
                    && (staged.batch.data_len() + size > batch_size
                        || staged.batch.len() >= count_max)
                {
                    full = Some(partition);
                    break;
                }
                let position = staged.batch.len() as u32;
                staged.batch.push_from(&batch, index);
                *bytes += size;
                let (generation, earlier) = &mut open[part];
                if *generation != staged.generation {
                    // The part's first record in this staged batch: a new slice. If an earlier
                    // slice went to a batch taken for appending, this one holds the rest;
                    // otherwise it is the part's first, and the part's offsets start here.
                    if *earlier {
                        staged.continues = true;
                    } else if let Some(landed) = &staged.landed {
                        pending.first.borrow_mut()[part] = Some((landed.clone(), position));
                    }
                    *earlier = true;
                    *generation = staged.generation;
                    pending.remaining.set(pending.remaining.get() + 1);
                    staged.waiters.push(pending.clone());
                    staged.durability = staged.durability.max(Some(durability));
                }
                next += 1;
                if staged.batch.data_len() >= batch_size {
                    full = Some(partition);
                    break;
                }
                if !staged.ripe && staged.batch.data_len() >= staged.ripe_at {
                    staged.ripe = true;
                    if ripe.is_empty() {
                        ripe_event.notify();
                    }
                    ripe.push_back((topic.clone(), partition, staged.generation));
                }
                // A request spans up to thousands of partitions: let the writers and acks run.
                if next % 4096 == 0 {
                    break;
                }
            }
            full
        };
        if next == indexes.len() {
            // Every record is staged: each part's rest is whole in its staged batch.
            finish_staging(shard);
        }
        match full {
            Some(partition) => flush(shard, &topic, partition, Cause::Full).await,
            None => glommio::yield_if_needed().await,
        }
    }
    finish_staging(shard);
    if linger.is_zero() {
        for partition in parts {
            flush(shard, &topic, *partition, Cause::Request).await;
        }
    }
    {
        let mut staging = shard.staging.borrow_mut();
        if prune_order {
            staging.prune();
        }
        staging.trim_spares(shard.config.staged_bytes_max);
    }
    // The staging step is done: from now on only staged batches keep the request open.
    pending.finish_one();
}

#[cfg(test)]
#[test]
fn a_staged_batch_spans_two_cache_lines_at_most() {
    // The staging loop prefetches two lines of it (`stage`).
    assert!(std::mem::size_of::<Staged>() <= 128, "{}", std::mem::size_of::<Staged>());
    assert_eq!(std::mem::align_of::<Staged>(), 64);
}

/// How many records ahead the staging loop asks for a staged batch's first line, and for where
/// its buffers end (`stage`). 32 and 16 (December 2026) were not better, in alternated rounds
/// whose spread was larger than any difference.
const PREFETCH_FAR: usize = 16;
const PREFETCH_NEAR: usize = 8;
