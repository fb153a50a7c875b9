//! Per-shard metrics, taken on the shard and handed out as owned snapshots.

pub use crate::shard::replay::ReplayMetrics;

/// A snapshot of one shard's counters and histograms.
#[derive(Debug, Clone)]
pub struct ShardMetrics {
    pub shard: u16,
    pub records_appended: u64,
    /// Key + value + header bytes of appended records.
    pub bytes_appended: u64,
    pub batches_appended: u64,
    /// Appends waiting for their durability right now.
    pub appends_in_flight: u64,
    /// From the shard taking an append to its acknowledgement, in nanoseconds.
    pub append_ack_latency_ns: hdrhistogram::Histogram<u64>,
    /// From the shard taking an append to a consumer at the tail (one that has caught up once)
    /// being handed its records, in nanoseconds (`shard::tail`).
    pub tail_delivery_latency_ns: hdrhistogram::Histogram<u64>,
    /// Replay on this shard and the live-latency controller that paces it.
    pub replay: ReplayMetrics,
    /// How late the shard's stall probe woke, in nanoseconds (`EngineConfig::stall_probe_interval`):
    /// the time the executor could not run a ready live task (a blocked thread, a long task).
    pub executor_stall_ns: hdrhistogram::Histogram<u64>,
    pub fsync_count: u64,
    /// fdatasync latency over all partitions of the shard, in nanoseconds.
    pub fsync_latency_ns: hdrhistogram::Histogram<u64>,
    /// Requests waiting in the shard's channel.
    pub request_queue_len: usize,
    /// Full write buffers waiting for the writers, over all partitions.
    pub write_queue_len: usize,
    pub partitions: Vec<PartitionMetrics>,
    pub consumers: Vec<ConsumerMetrics>,
    /// Every view partition the shard runs.
    pub views: Vec<ViewMetrics>,
    /// The shard's pool of DMA write buffers: buffers in use and idle, reuses, allocations, and
    /// `io_memory_misses` (buffers glommio had to allocate outside the registered DMA pool).
    pub buffer_pool: kappa_storage::PoolStats,
    /// Bytes and partitions of records waiting in the accumulator (`Producer::with_linger`).
    pub staged_bytes: u64,
    pub staged_partitions: u64,
    /// Bytes the accumulator's spare buffers hold (kept for the next staged batches); with
    /// `staged_bytes` within `EngineConfig::staged_bytes_max` once a request is staged.
    pub staged_spare_bytes: u64,
    /// Staged batches appended, by cause.
    pub stage_flushes: crate::shard::FlushCounts,
    /// Times the engine's monitor waited a second or more for the shard to answer its probe:
    /// the shard thread was blocked (a synchronous file write) or its executor slept through a
    /// queued request.
    pub late_probes: u64,
    /// The shard's watchdog counters (see `crate::watchdog`).
    pub watchdog: WatchdogMetrics,
}

/// Where one view partition stands, with its records skipped by cause.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewMetrics {
    pub view: String,
    pub version: u32,
    pub partition: u32,
    pub next_offset: u64,
    pub lag: u64,
    pub live: bool,
    pub counters: crate::view::Counters,
    pub activity: crate::view::Activity,
    /// Times the partition was seen behind and not moving for a second.
    pub stalls: u64,
    /// Why the partition stopped (a poison record: its offset, step and panic message).
    pub failure: Option<crate::view::Failure>,
}

/// What the watchdog saw of one shard since the engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchdogMetrics {
    /// Beats of the shard's pulse so far: it grows while the shard's scheduler runs.
    pub pulse_beats: u64,
    /// Times the shard's pulse stood still for `WatchdogConfig::stall_after`.
    pub stalls: u64,
    /// Kick signals sent to the shard's thread.
    pub kicks: u64,
    /// The longest stall that ended, in milliseconds.
    pub longest_stall_ms: u64,
}

/// Offsets and size of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetrics {
    pub topic: String,
    pub partition: u32,
    pub start_offset: u64,
    /// The offset the next record gets.
    pub end_offset: u64,
    /// Records below this are written and visible to consumers.
    pub readable_end_offset: u64,
    pub size_bytes: u64,
    pub segment_count: usize,
}

/// Position and lag of one consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerMetrics {
    pub topic: String,
    pub partition: u32,
    pub position: u64,
    pub end_offset: u64,
    pub lag: u64,
}
