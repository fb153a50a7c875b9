//! The shard's request loop (`serve`): each `Request` from outside the engine, in arrival order,
//! and the work it starts: appends (offsets assigned synchronously, durability awaited in a task
//! of its own), partition opens and consumer subscriptions. The shard's state and its lifecycle
//! (start, upkeep tasks, shutdown) are in the parent module.

use super::*;

pub(super) async fn serve(shard: Rc<Shard>) {
    loop {
        // A yield point between requests: when requests keep coming (the next one queued
        // before this loop looks), `recv_async` is always ready and this task would serve them
        // all in one poll, so glommio, which preempts only between polls, never weighs the
        // live queue's shares against replay's (replay's minimum rate) or the maintenance
        // queue's. `serve_tests::a_request_loop_that_never_runs_dry_leaves_replay_its_share`.
        glommio::yield_if_needed().await;
        // Staged batches whose linger ran out go once the requests queued at that moment are
        // staged (`accumulate::flush_expired`).
        if accumulate::has_due(&shard) {
            accumulate::flush_expired(&shard).await;
            continue;
        }
        let Ok(request) = shard.request_queue.recv_async().await else { break };
        accumulate::took_request(&shard);
        match request {
            Request::Append { sent, topic, partition, payload, durability, reply } => {
                shard.replay_control.record_queue(sent.elapsed().as_nanos() as u64);
                let Some(log) = shard.log(&topic, partition) else {
                    let _ = reply.send(Err(Error::UnknownTopic { topic: topic.to_string() }));
                    continue;
                };
                if let Some(delay) = shard.config.append_delay {
                    glommio::timer::sleep(delay).await;
                }
                accumulate::flush_before_append(&shard, &topic, partition).await;
                log.reserve().await;
                let Ok(permit) = shard.append_permits.clone().acquire_static_permit(1).await else {
                    break;
                };
                let done = Box::new(move |result| {
                    let _ = reply.send(result);
                });
                drop(append(&shard, log, &topic, partition, payload, durability, permit, done));
            }
            Request::Stage(stage) => {
                if let Some(delay) = shard.config.append_delay {
                    glommio::timer::sleep(delay).await;
                }
                accumulate::stage(&shard, stage).await;
            }
            Request::Flush { reply } => {
                accumulate::flush_all(&shard).await;
                let _ = reply.send(Ok(()));
            }
            Request::Open { topic, partition, config, reply } => {
                // Opens run in parallel (a reopen of thousands of partitions is mostly waiting
                // for small reads and fsyncs), at most `open_concurrency` at once.
                let Ok(permit) = shard.opens.clone().acquire_static_permit(1).await else {
                    break;
                };
                let task_shard = shard.clone();
                let task = async move {
                    let result = open_partition(&task_shard, topic, partition, config).await;
                    let _ = reply.send(result);
                    drop(permit);
                };
                glommio::spawn_local_into(task, shard.live)
                    .expect("the live queue exists")
                    .detach();
            }
            Request::Subscribe { topic, partition, seek, sink, state, reply } => {
                let Some(log) = shard.log(&topic, partition) else {
                    let _ = reply.send(Err(Error::UnknownTopic { topic: topic.to_string() }));
                    continue;
                };
                match log.reader(seek) {
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                    Ok(reader) => {
                        state.start(reader.next_offset(), log.readable_end_offset());
                        shard.subscriptions.borrow_mut().push(state.clone());
                        let marks = shard
                            .tail_marks
                            .borrow_mut()
                            .entry(topic.clone())
                            .or_default()
                            .entry(partition)
                            .or_default()
                            .clone();
                        let task = subscription(shard.clone(), log, reader, sink, state, marks);
                        glommio::spawn_local_into(task, shard.live)
                            .expect("the live queue exists")
                            .detach();
                        let _ = reply.send(Ok(()));
                    }
                }
            }
            Request::Offsets { topic, partition, reply } => {
                let result = match shard.log(&topic, partition) {
                    Some(log) => Ok(partition_metrics(&topic, partition, &log)),
                    None => Err(Error::UnknownTopic { topic: topic.to_string() }),
                };
                let _ = reply.send(result);
            }
            Request::Close { topic, partition, reply } => {
                let log = {
                    let mut partitions = shard.partitions.borrow_mut();
                    let log = partitions.get_mut(&*topic).and_then(|p| p.remove(&partition));
                    accumulate::fail_staged(&shard, &topic, partition);
                    if partitions.get(&*topic).is_some_and(BTreeMap::is_empty) {
                        partitions.remove(&*topic);
                        shard.staging.borrow_mut().forget(&topic);
                    }
                    log
                };
                let result = match log {
                    // Tail subscriptions wake up on `closing` and end.
                    Some(log) => {
                        let closed = log.close().await.map_err(Error::from);
                        shard.counters.borrow_mut().closed_fsync_count += log.stats().fsync_count;
                        closed
                    }
                    None => Ok(()),
                };
                let _ = reply.send(result);
            }
            Request::Run(job) => {
                let future = job(shard.clone());
                glommio::spawn_local_into(future, shard.live)
                    .expect("the live queue exists")
                    .detach();
            }
            Request::Metrics { reply } => {
                let _ = reply.send(Ok(metrics(&shard)));
            }
            Request::Watch { reply } => {
                views::watch_views(&shard);
                let _ = reply.send(Ok(()));
            }
            Request::StartView { version, partition, reply } => {
                let _ = reply.send(views::start_view(&shard, version, partition).await);
            }
            Request::Retention { reply } => {
                let _ = reply.send(apply_retention(&shard).await);
            }
            Request::QueryView { view, version, partition, query, reply } => {
                let result = match shard.views.borrow().get(&(view.clone(), version, partition)) {
                    Some((vp, _)) => Ok(query.run(&vp.state.borrow())),
                    None => Err(Error::UnknownView { view: view.to_string(), version }),
                };
                let _ = reply.send(result);
            }
            Request::ViewProgress { view, version, partition, digest, reply } => {
                let result = match shard.views.borrow().get(&(view.clone(), version, partition)) {
                    Some((vp, log)) => {
                        let progress = vp.progress(log, shard.replay_control.metrics());
                        let digest = digest.then(|| {
                            probe!(vp.version, p => p.digest());
                            vp.state.borrow().digest()
                        });
                        Ok((progress, digest))
                    }
                    None => Err(Error::UnknownView { view: view.to_string(), version }),
                };
                let _ = reply.send(result);
            }
            Request::DropView { view, version, reply } => {
                let mut dropped = Vec::new();
                {
                    let mut views = shard.views.borrow_mut();
                    let doomed: Vec<_> = views
                        .keys()
                        .filter(|(v, n, _)| *v == view && *n == version)
                        .cloned()
                        .collect();
                    for key in doomed {
                        if let Some((vp, _)) = views.remove(&key) {
                            vp.stopped.set(true);
                            vp.activity.set(view_runner::Activity::Stopped);
                            dropped.push(vp);
                        }
                    }
                }
                // A checkpoint being written in the background finishes before the reply, and
                // none starts after it (the slot's unit is taken for good): the caller removes
                // the version's directory next, and a late checkpoint would bring it back, for
                // a later version of the same number to resume from.
                glommio::spawn_local(async move {
                    for vp in &dropped {
                        let _ = vp.checkpoint_slot.acquire(1).await;
                    }
                    let _ = reply.send(Ok(()));
                    // Freeing a large state (hundreds of thousands of groups, each its own
                    // allocations) took 8 ms of the live queue in `kappa-bench mixed`: the
                    // groups are freed on the blocking pool instead. The version is stopped and
                    // its checkpoints are done, so nothing reads them any more.
                    let groups: Vec<_> = dropped
                        .iter()
                        .map(|vp| std::mem::take(&mut vp.state.borrow_mut().groups))
                        .collect();
                    if groups.iter().any(|g| !g.is_empty()) {
                        #[cfg(any(test, feature = "test-hooks"))]
                        let (probes, shard_thread) = (
                            dropped.iter().map(|vp| vp.version.probes.clone()).collect::<Vec<_>>(),
                            std::thread::current().id(),
                        );
                        let _ = glommio::executor()
                            .spawn_blocking(move || {
                                drop(groups);
                                #[cfg(any(test, feature = "test-hooks"))]
                                probes.iter().for_each(|p| p.record_freed(shard_thread));
                            })
                            .await;
                    }
                })
                .detach();
            }
            Request::Shutdown { reply } => {
                let result = shutdown(&shard).await;
                let _ = reply.send(result);
                return;
            }
            #[cfg(feature = "fault-injection")]
            Request::Panic { message } => panic!("{message}"),
        }
    }
    // Every sender is gone without a Shutdown (the engine was dropped): close cleanly anyway.
    let _ = shutdown(&shard).await;
}

/// What to do with an append's acknowledgement once its durability is reached.
pub(crate) type AppendDone = Box<dyn FnOnce(Result<BatchAck, Error>)>;

/// Assigns offsets now (arrival order), then waits for durability in its own task. Returns the
/// payload, whose bytes the log has copied (the accumulator reuses its buffers).
#[allow(clippy::too_many_arguments)] // One call's worth of context, used once each.
pub(super) fn append(
    shard: &Rc<Shard>,
    log: Rc<PartitionLog>,
    topic: &str,
    partition: u32,
    payload: Payload,
    durability: Durability,
    permit: glommio::sync::StaticPermit,
    done: AppendDone,
) -> Payload {
    #[allow(clippy::disallowed_methods)] // Ack latency is observability, never a decision.
    let started = std::time::Instant::now();
    let now_ms = shard.config.clock.now_ms();
    // The payload is read in place: its bytes are copied once, into the log's write buffer.
    let producer = ProducerInfo::default();
    let (appended, records, bytes) = match &payload {
        Payload::Records(records) => (
            log.append_records(
                &Stamped { records: &records[..], now_ms },
                producer,
                durability,
                now_ms,
            ),
            records.len() as u64,
            records
                .iter()
                .map(|r| {
                    r.key.as_ref().map_or(0, Vec::len)
                        + r.value.len()
                        + r.headers
                            .iter()
                            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                            .sum::<usize>()
                })
                .sum::<usize>() as u64,
        ),
        Payload::Batch(batch) => (
            log.append_records(&Stamped { records: batch, now_ms }, producer, durability, now_ms),
            batch.len() as u64,
            batch.data_len() as u64,
        ),
    };
    let ticket = match appended {
        Ok(ticket) => ticket,
        Err(e) => {
            done(Err(e.into()));
            return payload;
        }
    };
    // A followed partition remembers when the shard took this append (`tail`).
    if let Some(marks) = shard.tail_marks.borrow().get(topic).and_then(|t| t.get(&partition)) {
        let info = ticket.info;
        marks.borrow_mut().push(info.base_offset, info.last_offset + 1, started);
    }
    {
        let mut counters = shard.counters.borrow_mut();
        counters.records_appended += records;
        counters.bytes_appended += bytes;
        counters.batches_appended += 1;
        counters.appends_in_flight += 1;
    }
    let live = shard.live;
    let shard = shard.clone();
    let task = async move {
        let result = log.wait(ticket).await;
        {
            let mut counters = shard.counters.borrow_mut();
            counters.appends_in_flight -= 1;
            if counters.appends_in_flight == 0 {
                // The idle flusher waits for this (`accumulate::idle_flusher`).
                shard.staging.borrow().ripe_event.notify();
            }
            let ns = started.elapsed().as_nanos() as u64;
            counters.append_ack_latency_ns.saturating_record(ns);
            shard.replay_control.record_live(ns);
        }
        let ack = result
            .map(|info| BatchAck {
                partition,
                base_offset: info.base_offset,
                last_offset: info.last_offset,
            })
            .map_err(Error::from);
        done(ack);
        drop(permit);
    };
    glommio::spawn_local_into(task, live).expect("the live queue exists").detach();
    payload
}

async fn open_partition(
    shard: &Rc<Shard>,
    topic: Arc<str>,
    partition: u32,
    config: LogConfig,
) -> Result<kappa_storage::RecoveryReport, Error> {
    if shard.log(&topic, partition).is_some() {
        return Ok(kappa_storage::RecoveryReport::default());
    }
    let dir = kappa_storage::paths::partition_dir(&shard.config.data_dir, &topic, partition);
    let log = PartitionLog::open(&dir, config).await?;
    let recovery = log.recovery().clone();
    tracing::debug!(
        shard = shard.id.0, topic = %topic, partition, end_offset = log.end_offset(),
        segments = recovery.segment_count, truncated_bytes = recovery.truncated_bytes,
        "partition opened"
    );
    shard.partitions.borrow_mut().entry(topic).or_default().insert(partition, Rc::new(log));
    Ok(recovery)
}

/// Follows a partition for one consumer: reads zero-copy on the shard, sends each batch as one
/// owned copy, and sleeps on the log's readable event when caught up (woken, not polled). Once it
/// has caught up, each batch handed to the consumer is a tail-delivery latency sample (`tail`).
async fn subscription(
    shard: Rc<Shard>,
    log: Rc<PartitionLog>,
    mut reader: kappa_storage::LogReader,
    sink: flume::Sender<Result<OwnedBatch, Error>>,
    state: Arc<SubscriptionState>,
    marks: Rc<RefCell<tail::TailMarks>>,
) {
    let mut at_tail = false;
    loop {
        let next = match reader.next_batch().await {
            Ok(Some(read)) => {
                Some((Ok(OwnedBatch::copy_of(&read.batch, read.first_offset)), read.first_offset))
            }
            Ok(None) => None,
            Err(e) => Some((Err(Error::from(e)), 0)),
        };
        state.publish_end(log.readable_end_offset());
        match next {
            Some((item, first_offset)) => {
                let failed = item.is_err();
                if sink.send_async(item).await.is_err() || failed {
                    break;
                }
                if let Some(taken) = marks.borrow().taken_at(first_offset).filter(|_| at_tail) {
                    let ns = taken.elapsed().as_nanos() as u64;
                    let mut counters = shard.counters.borrow_mut();
                    counters.tail_delivery_latency_ns.saturating_record(ns);
                    shard.replay_control.record_tail(ns);
                }
            }
            None => {
                at_tail = true;
                if shard.stopping.get() || log.wait_readable(reader.next_offset()).await.is_err() {
                    break;
                }
            }
        }
        if sink.is_disconnected() {
            break;
        }
    }
    shard.subscriptions.borrow_mut().retain(|s| !Arc::ptr_eq(s, &state));
    // The last follower of the partition takes its marks away (the map holds the other count).
    if Rc::strong_count(&marks) == 2 {
        let mut all = shard.tail_marks.borrow_mut();
        if let Some(topic) = all.get_mut(&*state.topic) {
            if topic.get(&state.partition).is_some_and(|m| Rc::ptr_eq(m, &marks)) {
                topic.remove(&state.partition);
            }
            if topic.is_empty() {
                all.remove(&*state.topic);
            }
        }
    }
}
