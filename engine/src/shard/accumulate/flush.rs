//! When staged batches go to the log: full, after their linger, when the shard is idle, before a
//! plain append to their partition, at `Producer::flush`, or to make room under the shard's
//! bound; and the turn-taking with appends from outside the request loop (`split_part`, `Turn`).
//! The staging itself, and what each staged batch carries, is in the parent module.

use super::*;

/// Flushes the oldest staged batches until `incoming` more bytes fit under the shard's bound.
pub(super) async fn make_room(shard: &Rc<Shard>, incoming: usize) {
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
pub(super) fn finish_staging(shard: &Shard) {
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

pub(super) fn spawn_linger_timer(
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
pub(super) async fn flush(shard: &Rc<Shard>, topic: &Arc<str>, partition: u32, cause: Cause) {
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
    let payload = crate::shard::append(
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
pub(super) fn copy_error(e: &Error, dir: &std::path::Path) -> Error {
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
