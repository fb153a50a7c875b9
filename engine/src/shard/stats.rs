//! A shard's metrics snapshot (`Request::Metrics`): per partition, per view and for the shard,
//! read from its state on its own thread.

use super::*;

pub(super) fn partition_metrics(
    topic: &str,
    partition: u32,
    log: &PartitionLog,
) -> PartitionMetrics {
    PartitionMetrics {
        topic: topic.to_string(),
        partition,
        start_offset: log.start_offset(),
        end_offset: log.end_offset(),
        readable_end_offset: log.readable_end_offset(),
        size_bytes: log.size_bytes(),
        segment_count: log.segments().len(),
    }
}

pub(super) fn metrics(shard: &Shard) -> ShardMetrics {
    let counters = shard.counters.borrow();
    // Closed logs' fsyncs count too: the counter is monotonic for the life of the shard. The
    // latency histogram is this thread's, every log's syncs (closed ones' included).
    let fsync_latency_ns = kappa_storage::fsync_latency_ns().unwrap_or_else(|| {
        hdrhistogram::Histogram::new_with_bounds(1_000, 60_000_000_000, 2)
            .expect("static histogram bounds are valid")
    });
    let mut fsync_count = counters.closed_fsync_count;
    let mut write_queue_len = 0;
    let mut partitions = Vec::new();
    let owned = shard.partitions.borrow();
    for (topic, partition, log) in
        owned.iter().flat_map(|(t, ps)| ps.iter().map(move |(p, l)| (t, p, l)))
    {
        let stats = log.stats();
        fsync_count += stats.fsync_count;
        write_queue_len += stats.write_queue_len;
        partitions.push(partition_metrics(topic, *partition, log));
    }
    let consumers = shard.subscriptions.borrow().iter().map(|s| s.metrics()).collect();
    ShardMetrics {
        shard: shard.id.0,
        records_appended: counters.records_appended,
        bytes_appended: counters.bytes_appended,
        batches_appended: counters.batches_appended,
        appends_in_flight: counters.appends_in_flight,
        append_ack_latency_ns: counters.append_ack_latency_ns.clone(),
        tail_delivery_latency_ns: counters.tail_delivery_latency_ns.clone(),
        replay: shard.replay_control.metrics(),
        executor_stall_ns: counters.executor_stall_ns.clone(),
        fsync_count,
        fsync_latency_ns,
        request_queue_len: shard.request_queue.len(),
        write_queue_len,
        partitions,
        consumers,
        views: shard
            .views
            .borrow()
            .iter()
            .map(|((view, version, partition), (vp, log))| {
                let st = vp.state.borrow();
                ViewMetrics {
                    view: view.to_string(),
                    version: *version,
                    partition: *partition,
                    next_offset: st.next_offset,
                    lag: log.readable_end_offset().saturating_sub(st.next_offset),
                    live: vp.caught_up_at.get().is_some(),
                    counters: st.counters,
                    activity: vp.activity.get(),
                    stalls: vp.stalls.get(),
                    failure: vp.failure.borrow().clone(),
                }
            })
            .collect(),
        buffer_pool: kappa_storage::pool::stats(),
        staged_bytes: shard.staging.borrow().staged_bytes() as u64,
        staged_partitions: shard.staging.borrow().staged_partitions() as u64,
        staged_spare_bytes: shard.staging.borrow().spare_bytes() as u64,
        stage_flushes: shard.staging.borrow().flushes,
        late_probes: 0,
        watchdog: Default::default(), // filled in by `Engine::metrics`
    }
}
