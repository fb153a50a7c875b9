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
            while let Some((topic, partition, generation)) = staging.order.pop_front() {
                if staging.is_current(&topic, partition, generation) {
                    oldest = Some((topic, partition));
                    break;
                }
            }
            oldest
        };
        match oldest {
            Some((topic, partition)) => flush(shard, &topic, partition, Cause::Memory).await,
            None => return,
        }
    }
}

/// Whether the batch staged for a partition holds the rest of a request's records for it whose
/// first records are in the log (or on their way) already. An append that does not come through
/// the request loop (a Kafka produce) must not go ahead of it: it would land inside the request's
/// records, whose offsets the producer derives from the first (module doc).
///
/// While a request of the topic is being staged, any of its partitions may hold an open part: a
/// part's records are staged in batch order, across the awaits for other partitions' full batches,
/// and one of its staged batches may already be in the log (appended when full, or at its linger)
/// while the rest has not arrived in a staged batch yet. Such an append waits for the staging to
/// end (`staging_finished`).
pub(crate) fn split_part(shard: &Shard, topic: &str, partition: u32) -> SplitPart {
    let staging = shard.staging.borrow();
    if staging.staging_topic.as_deref() == Some(topic) {
        SplitPart::Staging
    } else if staging.get(topic, partition).is_some_and(|s| s.continues) {
        SplitPart::Staged
    } else {
        SplitPart::None
    }
}

/// No request is being staged any more (`split_part`).
fn finish_staging(shard: &Shard) {
    let mut staging = shard.staging.borrow_mut();
    if staging.staging_topic.take().is_some() {
        staging.stage_done.notify();
    }
}

/// An append from outside the request loop that waited for a request being staged: counted in
/// `Staging::waiting_appends` until it is dropped (after its append), so the request loop stages
/// nothing more before it has appended.
pub(crate) struct Turn<'a> {
    shard: &'a Shard,
}

impl<'a> Turn<'a> {
    pub(crate) fn new(shard: &'a Shard) -> Self {
        shard.staging.borrow_mut().waiting_appends += 1;
        Turn { shard }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut staging = self.shard.staging.borrow_mut();
        staging.waiting_appends -= 1;
        staging.stage_done.notify();
    }
}

/// What an append from outside the request loop must wait for (`split_part`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SplitPart {
    /// Nothing: it may append now.
    None,
    /// A request of the topic is being staged: wait for `staging_finished`, then look again.
    Staging,
    /// The staged batch holds the rest of a request already partly appended: append it first
    /// (`flush_before_append`), then look again.
    Staged,
}

/// Resolves once no request of `topic` is being staged.
pub(crate) async fn staging_finished(shard: &Shard, topic: &str) {
    let done = shard.staging.borrow().stage_done.clone();
    done.wait_until(|| shard.staging.borrow().staging_topic.as_deref() != Some(topic)).await;
}

/// Fails the records staged for a partition that is closing (its topic deleted, or a failed
/// create undone): their producers get `UnknownTopic`. Left staged, they were appended at their
/// linger to whatever log then had the name: a topic created again under it in the meantime
/// received the deleted topic's records, acknowledged at its offsets.
pub(crate) fn fail_staged(shard: &Shard, topic: &str, partition: u32) {
    let staged = shard.staging.borrow_mut().take(topic, partition);
    if let Some(staged) = staged {
        let error = Error::UnknownTopic { topic: topic.to_string() };
        let dir = kappa_storage::paths::partition_dir(&shard.config.data_dir, topic, partition);
        for pending in staged.waiters {
            pending.fail(&error, &dir);
        }
    }
}

/// Appends what is staged for a partition before a plain append to it (arrival order).
pub(crate) async fn flush_before_append(shard: &Rc<Shard>, topic: &Arc<str>, partition: u32) {
    if shard.staging.borrow().get(topic, partition).is_some() {
        flush(shard, topic, partition, Cause::Request).await;
    }
}

/// Appends every staged batch (shutdown).
pub(crate) async fn flush_all(shard: &Rc<Shard>) {
    let staged: Vec<(Arc<str>, u32)> = {
        let staging = shard.staging.borrow();
        staging
            .topics
            .iter()
            .flat_map(|(topic, slots)| {
                slots
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.is_some())
                    .map(move |(partition, _)| (topic.clone(), partition as u32))
            })
            .collect()
    };
    for (topic, partition) in staged {
        flush(shard, &topic, partition, Cause::Request).await;
    }
}

fn spawn_linger_timer(
    shard: &Rc<Shard>,
    topic: Arc<str>,
    partition: u32,
    generation: u64,
    linger: Duration,
) {
    let task_shard = shard.clone();
    let task = async move {
        glommio::timer::sleep(linger).await;
        let current = task_shard.staging.borrow().get(&topic, partition).map(|s| s.generation);
        if current != Some(generation) {
            return;
        }
        let queued = task_shard.request_queue.len() as u64;
        if queued == 0 {
            flush(&task_shard, &topic, partition, Cause::Linger).await;
        } else {
            // Requests are queued: records that already arrived, maybe for this partition. The
            // request loop stages them first and then appends this batch (`flush_expired`);
            // requests that arrive later go to the next batch.
            let mut staging = task_shard.staging.borrow_mut();
            let after = staging.taken + queued;
            staging.expired.push_back(Expired { topic, partition, generation, after });
            staging.prune();
        }
    };
    glommio::spawn_local_into(task, shard.live).expect("the live queue exists").detach();
}

/// Appends the staged batches whose linger elapsed while requests were queued, once the request
/// loop has staged the requests that were queued when it elapsed (`has_due`): the request loop
/// calls it between requests.
///
/// Why stage those first: a shard that falls behind (a burst, or a machine busy with other work)
/// otherwise appended each partition's batch as its linger ran out, while the records that would
/// have filled it waited in the request queue. Small stored batches cost the shard more per
/// record, so it fell further behind, and batches shrank further: at 1,000 partitions, 27 records
/// per stored batch and a seventh of the rate of the same records grouped by hand.
///
/// Why not wait for an empty queue (as until December 2026): under a producer that keeps the
/// queue from emptying, a lingering batch then waited for its `batch_size` or the memory bound,
/// without limit, and a bulk load staged every record before the first byte went to the disk
/// (the disk idle while the shard staged, then the shard idle while the disk wrote). A batch now
/// waits at most its linger plus the time to serve the requests queued at that moment (at most
/// `request_queue_max`); records that arrive later go to the next batch, as in Kafka's producer.
pub(crate) async fn flush_expired(shard: &Rc<Shard>) {
    loop {
        let next = {
            let mut staging = shard.staging.borrow_mut();
            if !staging.front_is_due(shard.request_queue.is_empty()) {
                return;
            }
            staging.expired.pop_front()
        };
        let Some(Expired { topic, partition, generation, .. }) = next else { return };
        let current = shard.staging.borrow().get(&topic, partition).map(|s| s.generation);
        if current == Some(generation) {
            flush(shard, &topic, partition, Cause::Linger).await;
        }
    }
}

/// What `flush_idle` hands the log at a time: enough to keep the disk busy for a while, little
/// enough that batches still fill while it writes.
const IDLE_BYTES: usize = 1 << 20;

/// The shard's task that appends staged batches early while the disk has nothing to do: once a
/// staged batch holds a quarter of its `batch_size` (`Staging::ripe`), the shard has no append
/// waiting for its durability and no data write of a log is submitted on the executor
/// (`kappa_storage::writes_drained`: Kafka produces and `Durability::None` appends included;
/// fdatasyncs and a writer's steps before it submits are not counted), up to `IDLE_BYTES` of such
/// batches go, the first to get there first (`flush_idle`). Under `Durability::None` appends
/// count as done at once, so the next look may come as soon as the writers submitted: the
/// logs' write queues (`PartitionLog::reserve`) are then the bound.
///
/// Why: a burst smaller than `batch_size` per partition (a bulk load of a million records over
/// a thousand partitions) was staged whole before its first byte went to the disk, which then
/// wrote it all while the shard had nothing left to do: at 1,000 partitions the last 40% of the
/// burst's time was the disk alone. A batch waits for its `batch_size` or `linger` so that
/// records share a write; while the disk is idle there is nothing to share it with, as in
/// group commit. A quarter of `batch_size` keeps stored batches large (a batch is never appended
/// this way with fewer bytes), and under a load the disk cannot keep up with, batches still fill.
///
/// A task of its own, not a step of the request loop: the loop sleeps while no request comes,
/// and a batch that got large enough while the disk was busy would then wait out its linger. It
/// takes a staged batch as a linger timer does (`flush`: in one synchronous step, a request
/// being staged continues in a new batch), so records of a request stay contiguous.
pub(crate) async fn idle_flusher(shard: Rc<Shard>) {
    let event = shard.staging.borrow().ripe_event.clone();
    loop {
        event
            .wait_until(|| {
                !shard.staging.borrow().ripe.is_empty() && shard.appends_in_flight() == 0
            })
            .await;
        kappa_storage::writes_drained().await;
        if shard.appends_in_flight() > 0 {
            continue;
        }
        flush_idle(&shard).await;
        // The logs' writers take what was handed over (`writes_pending` rises) before the
        // next look.
        glommio::executor().yield_now().await;
    }
}

/// Appends up to `IDLE_BYTES` of the batches in `Staging::ripe` that are still staged.
async fn flush_idle(shard: &Rc<Shard>) {
    let mut handed = 0;
    while handed < IDLE_BYTES {
        let next = {
            let mut staging = shard.staging.borrow_mut();
            let Some((topic, partition, generation)) = staging.ripe.pop_front() else { return };
            let size = staging
                .get(&topic, partition)
                .filter(|s| s.generation == generation)
                .map(|s| s.batch.data_len());
            size.map(|size| (topic, partition, size, generation))
        };
        if let Some((topic, partition, size, generation)) = next {
            handed += size;
            flush(shard, &topic, partition, Cause::Idle(generation)).await;
        }
    }
}

/// True when a batch waits for `flush_expired` and its turn has come: the requests queued at its
/// expiry are staged, or nothing is queued.
pub(crate) fn has_due(shard: &Shard) -> bool {
    shard.staging.borrow().front_is_due(shard.request_queue.is_empty())
}

/// The request loop took one more request from the shard's queue.
pub(crate) fn took_request(shard: &Shard) {
    shard.staging.borrow_mut().taken += 1;
}

/// Waits for room in the partition's log and for an append permit, then takes what is staged
/// there now and appends it, in one synchronous step (see the module doc on order).
async fn flush(shard: &Rc<Shard>, topic: &Arc<str>, partition: u32, cause: Cause) {
    let Some(log) = shard.log(topic, partition) else {
        // The partition closed (topic deleted): fail its waiters.
        fail_staged(shard, topic, partition);
        shard.staging.borrow_mut().forget(topic);
        return;
    };
    log.reserve().await;
    let Ok(permit) = shard.append_permits.clone().acquire_static_permit(1).await else {
        return;
    };
    if let Cause::Idle(generation) = cause {
        if !shard.staging.borrow().is_current(topic, partition, generation) {
            return;
        }
    }
    let Some(staged) = shard.staging.borrow_mut().take(topic, partition) else { return };
    {
        let mut staging = shard.staging.borrow_mut();
        staging.typical.update(staged.batch.data_len(), staged.batch.len(), staged.waiters.len());
        let counts = &mut staging.flushes;
        match cause {
            Cause::Full => counts.full += 1,
            Cause::Linger => counts.linger += 1,
            Cause::Request => counts.request += 1,
            Cause::Memory => counts.memory += 1,
            Cause::Idle(_) => counts.idle += 1,
        }
    }
    let mut staged = staged;
    let batch = std::mem::take(&mut staged.batch);
    let mut waiters = std::mem::take(&mut staged.waiters);
    let landed = staged.landed.take();
    let durability = staged.durability.take().unwrap_or(Durability::Written);
    // The log, for its directory in an error (no path copied per append).
    let dir = log.clone();
    let ack_shard = shard.clone();
    let payload = super::append(
        shard,
        log,
        topic,
        partition,
        Payload::Batch(batch),
        durability,
        permit,
        Box::new(move |result: Result<BatchAck, Error>| {
            // The base offset first: a waiter's answer reads it (`Pending::acks`).
            match &result {
                Ok(ack) => {
                    if let Some(landed) = &landed {
                        landed.set(Some(ack.base_offset));
                    }
                    waiters.drain(..).for_each(|pending| pending.finish_one());
                }
                Err(e) => waiters.drain(..).for_each(|pending| pending.fail(e, dir.dir())),
            }
            let max = ack_shard.config.staged_bytes_max;
            ack_shard.staging.borrow_mut().keep_spare_waiters(waiters, max);
        }),
    );
    // The log copied the records: the batch's buffers serve a later staged batch.
    if let Payload::Batch(mut batch) = payload {
        batch.clear();
        staged.batch = batch;
        shard.staging.borrow_mut().keep_spare(staged, shard.config.staged_bytes_max);
    }
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
